//! The fake as a Harbor 2.x ([`HarborSetup`]): Harbor's project and repository API, its
//! `_catalog` that answers system administrators only, its `/v2/` that knows no repository outside
//! an existing project, and its quota and immutable-tag refusals.
//!
//! No real Harbor runs on these machines. Everything here is written from Harbor's published
//! swagger (`api/v2.0/swagger.yaml`: `Project` with `project_id`, `name`, `metadata.public`,
//! `repo_count`; `ProjectReq` with `project_name` and `metadata`; `Repository` with `id`,
//! `project_id`, `name` as `project/repo`, `artifact_count`, `pull_count`; `page`/`page_size`
//! with `page_size` at most 100, `X-Total-Count` and `Link` headers) and from the answers Harbor's
//! sources build (goharbor/harbor): `src/server/middleware/v2auth` (401 `UNAUTHORIZED` for a
//! repository whose project does not exist, and "unauthorized to list catalog" for anyone but a
//! system administrator), `src/controller/quota` (403 `DENIED` "Quota exceeded when processing
//! the request of …"), `src/server/middleware/immutable` (412 `PRECONDITION` "Failed to process
//! request due to '<repo>:<tag>' configured as immutable."), `src/server/v2.0/handler/base.go`
//! (`Link: <path?page=n&page_size=s>; rel="next"`, links joined by " , ").
//!
//! Projects live in memory (name → id); repositories are the fake's own, grouped by their first
//! path segment.
use std::collections::{BTreeMap, HashSet};

use axum::http::{header, Method, StatusCode};
use axum::response::Response;

use super::{empty, insert, json, oci_error, HostileList, Inner, Req};

/// How the fake plays Harbor (see the module doc). `Default`: Harbor with no project yet, whose
/// robot may create projects, with `_catalog` refused as Harbor refuses it to a robot account.
#[derive(Clone, Debug)]
pub struct HarborSetup {
    /// Projects that exist from the start (besides those created through the API).
    pub projects: Vec<String>,
    /// `POST /api/v2.0/projects` answers 403 `FORBIDDEN`: the robot account lacks the system
    /// permission to create projects.
    pub refuse_project_creation: bool,
    /// `GET /v2/_catalog` answers as Harbor does to anyone but a system administrator: 401
    /// `UNAUTHORIZED` "unauthorized to list catalog".
    pub catalog_disabled: bool,
    /// Projects whose storage quota is used up: upload `POST`s, blob `PUT`s and manifest `PUT`s
    /// into them answer Harbor's 403 `DENIED` "Quota exceeded …".
    pub quota_exceeded: HashSet<String>,
    /// `repository:tag`s an immutability rule matches: a manifest `PUT` onto such a tag while it
    /// exists answers Harbor's 412 `PRECONDITION` "… configured as immutable.".
    pub immutable_tags: HashSet<String>,
    /// Pages of the project and repository lists hold at most this many entries, whatever
    /// `page_size` asks (Harbor: 100).
    pub max_page_size: usize,
}

impl Default for HarborSetup {
    fn default() -> Self {
        HarborSetup {
            projects: Vec::new(),
            refuse_project_creation: false,
            catalog_disabled: true,
            quota_exceeded: HashSet::new(),
            immutable_tags: HashSet::new(),
            max_page_size: 100,
        }
    }
}

/// Projects by name, with their ids.
#[derive(Default)]
pub(super) struct Projects {
    by_name: BTreeMap<String, u64>,
}

impl Projects {
    pub(super) fn create(&mut self, name: &str) -> u64 {
        let next = self.by_name.len() as u64 + 1;
        *self.by_name.entry(name.to_owned()).or_insert(next)
    }

    pub(super) fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }
}

/// Harbor's answer to `req`, when Harbor answers it differently from a plain registry; `None`
/// lets the fake's registry handle it.
pub(super) fn intercept(inner: &mut Inner, req: &Req<'_>) -> Option<Response> {
    let setup = inner.behavior.harbor.clone()?;
    if req.path == "/api/v2.0/projects" {
        return Some(authorized(inner, req).unwrap_or_else(|| projects(inner, req, &setup)));
    }
    if let Some(project) = req
        .path
        .strip_prefix("/api/v2.0/projects/")
        .and_then(|rest| rest.strip_suffix("/repositories"))
    {
        return Some(
            authorized(inner, req).unwrap_or_else(|| repositories(inner, req, &setup, project)),
        );
    }
    if req.path == "/v2/_catalog" && setup.catalog_disabled {
        return Some(unauthorized("unauthorized to list catalog"));
    }
    let rest = req.path.strip_prefix("/v2/")?;
    let (project, _) = rest.split_once('/')?;
    if !inner.harbor_projects.by_name.contains_key(project) {
        // v2auth: the project lookup fails, answered as 401 with an empty challenge.
        let mut resp = unauthorized(&format!("project {project} not found"));
        insert(&mut resp, header::WWW_AUTHENTICATE, "");
        return Some(resp);
    }
    let writes_content = matches!(*req.method, Method::POST | Method::PUT)
        && (rest.contains("/blobs/uploads") || rest.contains("/manifests/"));
    if writes_content && setup.quota_exceeded.contains(project) {
        return Some(oci_error(
            StatusCode::FORBIDDEN,
            "DENIED",
            "Quota exceeded when processing the request of adding 1.0 MiB of storage resource, which when updated to current usage of 10.0 MiB will exceed the configured upper limit of 10.0 MiB.",
        ));
    }
    if *req.method == Method::PUT {
        if let Some((repository, tag)) = rest.rsplit_once("/manifests/") {
            let exists = inner
                .repos
                .get(repository)
                .is_some_and(|r| r.tags.contains_key(tag));
            if exists
                && setup
                    .immutable_tags
                    .contains(&format!("{repository}:{tag}"))
            {
                let short = repository.split_once('/').map_or(repository, |(_, r)| r);
                return Some(oci_error(
                    StatusCode::PRECONDITION_FAILED,
                    "PRECONDITION",
                    &format!(
                        "Failed to process request due to '{short}:{tag}' configured as immutable."
                    ),
                ));
            }
        }
    }
    None
}

/// Harbor's API takes the credentials [`super::Behavior::require_basic`] names as basic auth.
fn authorized(inner: &Inner, req: &Req<'_>) -> Option<Response> {
    let (user, pass) = inner.behavior.require_basic.as_ref()?;
    let given = super::basic_credentials(req.header(header::AUTHORIZATION).unwrap_or(""));
    (given != Some((user.clone(), pass.clone()))).then(|| unauthorized("unauthorized"))
}

fn unauthorized(message: &str) -> Response {
    oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
}

/// `HEAD ?project_name=`, `GET` (paginated list) and `POST` (create) on `/api/v2.0/projects`.
fn projects(inner: &mut Inner, req: &Req<'_>, setup: &HarborSetup) -> Response {
    match *req.method {
        Method::HEAD => {
            let name = req.query.get("project_name").cloned().unwrap_or_default();
            if inner.harbor_projects.by_name.contains_key(&name) {
                empty(StatusCode::OK)
            } else {
                empty(StatusCode::NOT_FOUND)
            }
        }
        Method::GET => {
            let items: Vec<serde_json::Value> = inner
                .harbor_projects
                .by_name
                .iter()
                .map(|(name, id)| {
                    let repo_count = inner
                        .repos
                        .keys()
                        .filter(|r| r.split('/').next() == Some(name))
                        .count();
                    serde_json::json!({
                        "project_id": id, "name": name, "owner_id": 1, "owner_name": "admin",
                        "registry_id": 0, "repo_count": repo_count, "deleted": false,
                        "togglable": true, "current_user_role_id": 0,
                        "metadata": {"public": "false"},
                        "creation_time": "2026-01-01T00:00:00.000Z",
                        "update_time": "2026-01-01T00:00:00.000Z",
                    })
                })
                .collect();
            page(inner, req, setup, "/api/v2.0/projects", items)
        }
        Method::POST => {
            if setup.refuse_project_creation {
                return oci_error(StatusCode::FORBIDDEN, "FORBIDDEN", "forbidden");
            }
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let Some(name) = body["project_name"].as_str() else {
                return oci_error(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    "project_name in body is required",
                );
            };
            if !super::valid_repo_name(name) || name.contains('/') {
                return oci_error(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    &format!("project name {name:?} is invalid"),
                );
            }
            if inner.harbor_projects.by_name.contains_key(name) {
                return oci_error(
                    StatusCode::CONFLICT,
                    "CONFLICT",
                    &format!("The project named {name} already exists"),
                );
            }
            let id = inner.harbor_projects.create(name);
            let mut resp = empty(StatusCode::CREATED);
            insert(
                &mut resp,
                header::LOCATION,
                &format!("/api/v2.0/projects/{id}"),
            );
            resp
        }
        _ => oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "method not allowed",
        ),
    }
}

/// `GET /api/v2.0/projects/<project>/repositories`, paginated.
fn repositories(inner: &Inner, req: &Req<'_>, setup: &HarborSetup, project: &str) -> Response {
    let Some(project_id) = inner.harbor_projects.by_name.get(project) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("project {project} not found"),
        );
    };
    let prefix = format!("{project}/");
    let items: Vec<serde_json::Value> = inner
        .repos
        .iter()
        .filter(|(name, _)| name.starts_with(&prefix))
        .enumerate()
        .map(|(i, (name, repo))| {
            serde_json::json!({
                "id": i + 1, "project_id": project_id, "name": name, "description": "",
                "artifact_count": repo.manifests.len(), "pull_count": 0,
                "creation_time": "2026-01-01T00:00:00.000Z",
                "update_time": "2026-01-01T00:00:00.000Z",
            })
        })
        .collect();
    page(
        inner,
        req,
        setup,
        &format!("/api/v2.0/projects/{project}/repositories"),
        items,
    )
}

/// One page of a Harbor list: `page` (from 1) of `page_size` (default 10, at most the setup's
/// cap), with `X-Total-Count` and the `prev`/`next` `Link`s (on [`super::Behavior::link_origin`]
/// when set); or what [`super::Behavior::hostile_lists`] says instead.
fn page(
    inner: &Inner,
    req: &Req<'_>,
    setup: &HarborSetup,
    path: &str,
    items: Vec<serde_json::Value>,
) -> Response {
    let number = |key: &str, default: usize| {
        req.query
            .get(key)
            .map_or(Some(default), |v| v.parse::<usize>().ok())
    };
    let (Some(page), Some(size)) = (number("page", 1), number("page_size", 10)) else {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "page and page_size must be integers",
        );
    };
    let (page, size) = (page.max(1), size.clamp(1, setup.max_page_size.max(1)));
    let origin = inner.behavior.link_origin.as_deref().unwrap_or_default();
    let link =
        |n: usize, rel: &str| format!("<{origin}{path}?page={n}&page_size={size}>; rel=\"{rel}\"");
    match &inner.behavior.hostile_lists {
        Some(HostileList::Endless { per_page }) => {
            let entries: Vec<serde_json::Value> = (0..*per_page)
                .map(|i| serde_json::json!({"name": format!("p{page}-{i}")}))
                .collect();
            let mut resp = json(StatusCode::OK, entries.into());
            insert(&mut resp, header::LINK, &link(page + 1, "next"));
            return resp;
        }
        Some(HostileList::Oversized { bytes }) => {
            let entries = serde_json::json!([{"name": "x".repeat(*bytes)}]);
            return json(StatusCode::OK, entries);
        }
        Some(HostileList::LinkToFirst) => {
            let mut resp = json(StatusCode::OK, items.into());
            insert(&mut resp, header::LINK, &link(1, "next"));
            return resp;
        }
        None => {}
    }
    let total = items.len();
    let entries: Vec<serde_json::Value> = items
        .into_iter()
        .skip((page - 1) * size)
        .take(size)
        .collect();
    let mut links = Vec::new();
    if page > 1 && (page - 1) * size < total {
        links.push(link(page - 1, "prev"));
    }
    if page * size < total {
        links.push(link(page + 1, "next"));
    }
    let mut resp = json(StatusCode::OK, serde_json::Value::Array(entries));
    insert(&mut resp, "x-total-count", &total.to_string());
    if !links.is_empty() {
        insert(&mut resp, header::LINK, &links.join(" , "));
    }
    resp
}
