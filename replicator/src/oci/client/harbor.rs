//! Harbor's own API, for registries of `type: harbor` (README "Harbor"): a project is created
//! before the first write into it, repositories are listed through the projects API instead of
//! `_catalog`, and Harbor's refusals that no retry fixes (project creation, quota, immutable tags)
//! are named.
//!
//! Invariants:
//! - every request goes out through the client's request core (`send`: retries, pauses, metrics);
//!   Harbor's API gets the registry's credential as basic auth (it takes no registry token) and
//!   only on the registry's own origin, and a pagination `Link` of its listings naming another
//!   origin is refused ([`RegistryError::Refused`]), never followed;
//! - a project known to exist is never looked up again: one `HEAD` (and at most one `POST`) per
//!   project per process, whatever the number of pushes into it; only a project not known yet is
//!   looked up again (after a failed lookup or creation, or a read Harbor refused);
//! - only writes (`POST`, `PUT`, `PATCH` under `/v2/<project>/…`) create projects; a read in a
//!   project that does not exist — Harbor answers it 401 — is answered like a read of a missing
//!   repository (404), so `ferry diff` never creates anything;
//! - what Harbor's listings hold is hostile: bounded like every list (`lists`), project names
//!   outside Harbor's grammar and repositories outside their project are skipped with a warning.
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::lists::{List, MAX_LIST_ENTRIES};
use super::{redact, Body, RegistryClient};
use crate::config::RegistryKind;
use crate::locks::lock;
use crate::oci::auth::Scope;
use crate::oci::error::{ErrorEntry, HarborRefusal, RegistryError, Result};

/// Entries per page of Harbor's listings: the most Harbor's swagger allows (`page_size`,
/// `maximum: 100`).
pub(super) const HARBOR_PAGE_SIZE: usize = 100;

impl RegistryClient {
    /// Whether this registry is configured as `type: harbor`.
    pub(super) fn is_harbor(&self) -> bool {
        self.kind == RegistryKind::Harbor
    }

    /// Whether `url` is Harbor's REST API on this registry's own origin.
    pub(super) fn is_harbor_api(&self, url: &Url) -> bool {
        self.is_harbor() && self.is_own_origin(url) && url.path().starts_with("/api/v2.0/")
    }

    /// Before a request goes out: a write into `/v2/<project>/…` of a Harbor needs its project.
    pub(super) async fn harbor_before(&self, method: &Method, url: &Url) -> Result<()> {
        if !self.is_harbor() || !matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            return Ok(());
        }
        match v2_target(url).and_then(|t| project_of(t.repository)) {
            Some(project) if self.is_own_origin(url) => self.ensure_harbor_project(project).await,
            _ => Ok(()),
        }
    }

    /// After a 401 to a read of `/v2/<project>/…` on a Harbor: whether its project exists (Harbor
    /// answers reads in a project that does not exist 401 "project … not found"). A missing one
    /// gets the answer a missing repository gets on any registry — 404 `NAME_UNKNOWN` — so callers
    /// see "missing", not "denied".
    pub(super) async fn harbor_read_refused(&self, url: &Url) -> Result<HarborRead> {
        let project = v2_target(url).and_then(|t| project_of(t.repository));
        let Some(project) = project.filter(|_| self.is_harbor()) else {
            return Ok(HarborRead::NotHarbor);
        };
        if self.harbor_project_known(project) || self.harbor_project_exists(project).await? {
            return Ok(HarborRead::ProjectExists);
        }
        let body = serde_json::json!({"errors": [{
            "code": "NAME_UNKNOWN",
            "message": format!("project {project} does not exist on this Harbor (it answered 401)"),
        }]});
        let answer = http::Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header(CONTENT_TYPE, "application/json")
            .body(Bytes::from(body.to_string()))
            .map_err(|e| self.invalid(url, format!("cannot build the 404 answer: {e}")))?;
        Ok(HarborRead::ProjectMissing(Response::from(answer)))
    }

    /// Makes sure `project` exists on this Harbor, creating it (private) when it does not; at
    /// most one lookup per project per client. A concurrent creation (409) is success; a refused
    /// one (401/403) is [`HarborRefusal::ProjectCreation`].
    pub async fn ensure_harbor_project(&self, project: &str) -> Result<()> {
        // One cell per project: concurrent first writes into a project wait for one lookup
        // instead of each creating it, writes into other projects do not wait; a failed lookup
        // leaves the cell empty for the next write to try again.
        let cell = lock(&self.harbor_projects)
            .entry(project.to_string())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            if !self.harbor_project_exists(project).await? {
                self.create_harbor_project(project).await?;
            }
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// The Harbor project a write into `repository` would create first: `Some(project)` on a
    /// `type: harbor` registry where it does not exist, `None` otherwise (not a Harbor, no
    /// project in the name, or it exists). For probes that must not create anything.
    pub async fn harbor_project_to_create(&self, repository: &str) -> Result<Option<String>> {
        let Some(project) = project_of(repository).filter(|_| self.is_harbor()) else {
            return Ok(None);
        };
        if self.harbor_project_known(project) || self.harbor_project_exists(project).await? {
            return Ok(None);
        }
        Ok(Some(project.to_string()))
    }

    /// Whether `project` is known to exist (looked up or created by this client).
    fn harbor_project_known(&self, project: &str) -> bool {
        lock(&self.harbor_projects)
            .get(project)
            .is_some_and(|cell| cell.initialized())
    }

    /// `HEAD /api/v2.0/projects?project_name=<project>`: 200 exists, 404 does not.
    async fn harbor_project_exists(&self, project: &str) -> Result<bool> {
        let mut url = self.url("api/v2.0/projects")?;
        url.query_pairs_mut().append_pair("project_name", project);
        let resp = self.harbor_api(Method::HEAD, &url, Body::Empty).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(&Method::HEAD, &url, resp).await),
        }
    }

    /// `POST /api/v2.0/projects` `{"project_name": …, "metadata": {"public": "false"}}`.
    async fn create_harbor_project(&self, project: &str) -> Result<()> {
        let url = self.url("api/v2.0/projects")?;
        let body = serde_json::json!({"project_name": project, "metadata": {"public": "false"}});
        let resp = self
            .harbor_api(
                Method::POST,
                &url,
                Body::Bytes(Bytes::from(body.to_string())),
            )
            .await?;
        match resp.status() {
            StatusCode::CREATED | StatusCode::OK => {
                tracing::info!(registry = %self.name, project, "created the Harbor project");
                Ok(())
            }
            // Another worker created it between our lookup and our request.
            StatusCode::CONFLICT => Ok(()),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let status = resp.status().as_u16();
                let errors = match self.status_error(&Method::POST, &url, resp).await {
                    RegistryError::Denied { errors, .. } => errors,
                    _ => Vec::new(),
                };
                Err(RegistryError::Harbor {
                    registry: self.name.clone(),
                    refusal: HarborRefusal::ProjectCreation {
                        project: project.to_string(),
                        status,
                        errors,
                    },
                })
            }
            _ => Err(self.status_error(&Method::POST, &url, resp).await),
        }
    }

    /// One request to Harbor's API, through the request core.
    async fn harbor_api(&self, method: Method, url: &Url, body: Body) -> Result<Response> {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        if matches!(body, Body::Bytes(_)) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        // Boxed: `send` comes here (a write ensures its project first), and here goes to `send`.
        Box::pin(self.send(method, url.clone(), &Scope::registry(), headers, body)).await
    }

    /// Every repository of this Harbor the credential may see: the projects
    /// (`/api/v2.0/projects`), then each project's repositories
    /// (`/api/v2.0/projects/<name>/repositories`), page after page; names as `project/repo`.
    pub(super) async fn harbor_repositories(&self) -> Result<Vec<String>> {
        let first =
            format!("api/v2.0/projects?page=1&page_size={HARBOR_PAGE_SIZE}&with_detail=false");
        let projects = self
            .paginate(&first, &Scope::registry(), List::HarborProjects)
            .await?;
        let mut repositories = Vec::new();
        for project in projects {
            if !is_project_name(&project) {
                tracing::warn!(registry = %self.name, project = %project.escape_debug(), "Harbor listed a project name outside its grammar; skipping it");
                continue;
            }
            let first = format!(
                "api/v2.0/projects/{project}/repositories?page=1&page_size={HARBOR_PAGE_SIZE}"
            );
            let names = self
                .paginate(
                    &first,
                    &Scope::registry(),
                    List::HarborRepositories(&project),
                )
                .await?;
            let prefix = format!("{project}/");
            for name in names {
                if name.starts_with(&prefix) {
                    repositories.push(name);
                } else {
                    tracing::warn!(registry = %self.name, project, repository = %name.escape_debug(), "Harbor listed a repository outside the project it was asked for; skipping it");
                }
            }
            if repositories.len() > MAX_LIST_ENTRIES {
                return Err(RegistryError::ListTooLarge {
                    registry: self.name.clone(),
                    list: "the repositories of Harbor's projects".into(),
                    url: redact(&self.base),
                    limit: format!("{MAX_LIST_ENTRIES} entries"),
                });
            }
        }
        repositories.sort();
        repositories.dedup();
        Ok(repositories)
    }
}

/// What a 401 to a read on a Harbor means ([`RegistryClient::harbor_read_refused`]).
pub(super) enum HarborRead {
    /// Not a Harbor, or not a repository's URL: the 401 is what it says.
    NotHarbor,
    /// The project exists (now: another task may have created it since the read was refused).
    ProjectExists,
    /// The project does not exist: the answer a missing repository gets.
    ProjectMissing(Response),
}

/// The repository (and, for a manifest, its reference) a `/v2/<name>/…` URL addresses.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct V2Target<'a> {
    pub repository: &'a str,
    pub manifest: Option<&'a str>,
}

/// The target of `/v2/<name>/manifests/<ref>`, `/v2/<name>/blobs/<digest>`,
/// `/v2/<name>/blobs/uploads/[<id>]`, `/v2/<name>/tags/list` or `/v2/<name>/referrers/<digest>`.
pub(super) fn v2_target(url: &Url) -> Option<V2Target<'_>> {
    let rest = url.path().strip_prefix("/v2/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    let name_before = |k: usize| {
        let end = segments[..n - k].iter().map(|s| s.len() + 1).sum::<usize>() - 1;
        &rest[..end]
    };
    if n >= 4 && segments[n - 3] == "blobs" && segments[n - 2] == "uploads" {
        return Some(V2Target {
            repository: name_before(3),
            manifest: None,
        });
    }
    if n >= 3
        && matches!(
            segments[n - 2],
            "manifests" | "blobs" | "tags" | "referrers"
        )
    {
        return Some(V2Target {
            repository: name_before(2),
            manifest: (segments[n - 2] == "manifests").then_some(segments[n - 1]),
        });
    }
    None
}

/// A repository's Harbor project: its first path segment (Harbor's repositories are always
/// `project/name`; a name of one segment has none).
fn project_of(repository: &str) -> Option<&str> {
    repository.split_once('/').map(|(project, _)| project)
}

/// Harbor's project name grammar (`^[a-z0-9]+(?:[._-][a-z0-9]+)*$`, at most 255 characters): a
/// name that can go into an API path as it is.
pub(super) fn is_project_name(name: &str) -> bool {
    name.len() <= 255
        && !name.is_empty()
        && name.split(['.', '_', '-']).all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Harbor's refusals that no retry fixes, recognised from the exact answers Harbor 2.x sends
/// (read in goharbor/harbor):
/// - **quota**: `src/controller/quota/controller.go` (`reserveResources`) fails with
///   `errors.DeniedError(err).WithMessagef("Quota exceeded when processing the request of %v",
///   err)`; `src/server/error/error.go` maps code `DENIED` to **403** and writes
///   `{"errors":[{"code":"DENIED","message":"Quota exceeded when processing the request of adding
///   … of storage resource, which when updated to current usage of … will exceed the configured
///   upper limit of …"}]}` (the overflow text from `src/pkg/quota/errors.go`). The quota
///   middlewares send it on the upload `POST`, the blob `PUT` and the manifest `PUT`.
/// - **immutable tag**: `src/server/middleware/immutable/pushmf.go` answers a manifest `PUT` onto
///   an existing immutable tag with `errors.New(ErrImmutable).WithCode(errors.PreconditionCode)`:
///   **412**, code `PRECONDITION`, message `Failed to process request due to '<repo>:<tag>'
///   configured as immutable.` (`immutable/error.go`).
///
/// The project, repository and tag come from the request's own URL, not from the message.
pub(super) fn refusal(url: &Url, status: u16, errors: &[ErrorEntry]) -> Option<HarborRefusal> {
    let target = v2_target(url)?;
    let project = project_of(target.repository)
        .unwrap_or(target.repository)
        .to_string();
    let quota = errors
        .iter()
        .find(|e| e.code == "DENIED" && e.message.starts_with("Quota exceeded"));
    if status == 403 {
        if let Some(e) = quota {
            return Some(HarborRefusal::QuotaExceeded {
                project,
                message: e.message.chars().take(500).collect(),
            });
        }
    }
    let immutable = errors
        .iter()
        .any(|e| e.code == "PRECONDITION" && e.message.contains("configured as immutable"));
    if status == 412 && immutable {
        return Some(HarborRefusal::ImmutableTag {
            project,
            repository: target.repository.to_string(),
            tag: target.manifest.unwrap_or("?").to_string(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(path: &str) -> Url {
        Url::parse(&format!("https://harbor.example{path}")).unwrap()
    }

    #[test]
    fn the_repository_of_every_v2_path_ferry_sends() {
        for (path, repository, manifest) in [
            ("/v2/p/app/manifests/v1", "p/app", Some("v1")),
            ("/v2/p/a/b/manifests/sha256:ab", "p/a/b", Some("sha256:ab")),
            ("/v2/p/blobs/x/blobs/sha256:ab", "p/blobs/x", None),
            ("/v2/p/app/blobs/uploads/", "p/app", None),
            ("/v2/p/app/blobs/uploads/3f2a", "p/app", None),
            ("/v2/p/app/tags/list", "p/app", None),
            ("/v2/p/app/referrers/sha256:ab", "p/app", None),
        ] {
            assert_eq!(
                v2_target(&url(path)),
                Some(V2Target {
                    repository,
                    manifest
                }),
                "{path}"
            );
        }
        for path in ["/v2/", "/v2/_catalog", "/api/v2.0/projects", "/v2/app"] {
            assert_eq!(v2_target(&url(path)), None, "{path}");
        }
    }

    #[test]
    fn harbor_project_names_follow_harbors_grammar() {
        for good in ["library", "team-a", "a.b_c", "123"] {
            assert!(is_project_name(good), "{good}");
        }
        for bad in [
            "",
            "Team",
            "a/b",
            "a..b",
            "-a",
            "a-",
            "../x",
            "a?b",
            &"a".repeat(256),
        ] {
            assert!(!is_project_name(bad), "{bad}");
        }
    }

    fn entry(code: &str, message: &str) -> Vec<ErrorEntry> {
        vec![ErrorEntry {
            code: code.into(),
            message: message.into(),
        }]
    }

    #[test]
    fn harbors_quota_refusal_names_the_project_and_is_not_retried() {
        let message = "Quota exceeded when processing the request of adding 1.0 MiB of storage resource, which when updated to current usage of 9.5 MiB will exceed the configured upper limit of 10.0 MiB.";
        let refusal = refusal(
            &url("/v2/team/app/blobs/uploads/"),
            403,
            &entry("DENIED", message),
        )
        .expect("a quota refusal");
        let e = RegistryError::Harbor {
            registry: "harbor".into(),
            refusal,
        };
        let text = e.to_string();
        assert!(
            text.contains("project team: storage quota exceeded") && text.contains("10.0 MiB"),
            "{text}"
        );
        assert!(!e.is_retryable());
        // The same status with another reason stays a plain denial.
        assert_eq!(
            super::refusal(
                &url("/v2/team/app/blobs/uploads/"),
                403,
                &entry("DENIED", "requested access to the resource is denied")
            ),
            None
        );
    }

    #[test]
    fn harbors_immutable_tag_refusal_names_tag_project_and_rule() {
        let refusal = refusal(
            &url("/v2/team/app/manifests/v1"),
            412,
            &entry(
                "PRECONDITION",
                "Failed to process request due to 'app:v1' configured as immutable.",
            ),
        )
        .expect("an immutable-tag refusal");
        let text = RegistryError::Harbor {
            registry: "harbor".into(),
            refusal,
        }
        .to_string();
        assert!(
            text.contains("tag v1 in project team is immutable (an immutability rule matches"),
            "{text}"
        );
        assert_eq!(
            super::refusal(
                &url("/v2/team/app/manifests/v1"),
                412,
                &entry("PRECONDITION", "something else")
            ),
            None
        );
    }
}
