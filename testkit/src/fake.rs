//! [`FakeRegistry`]: a deliberately misbehaving in-memory registry (axum) for
//! the error paths a real `docker-registry` will not produce on demand:
//! corrupted blob bytes, Basic and Bearer auth challenges, blanket denials,
//! 429s with `Retry-After`, rejected manifest media types, tags that vanish
//! between listing and fetching, mounts answered with an upload session, blob
//! downloads cut off mid-body, `Range` requests ignored, a failing chunk
//! `PATCH`, garbled upload `Range` headers, upload `Location`s, pagination
//! `Link`s, blob redirects and token realms naming another origin, careless
//! token lifetimes, and endless, looping or oversized list pages. It also plays Harbor's
//! projects ([`HarborSetup`], `fake/harbor.rs`), which no real server here has.
//!
//! Apart from the [`Behavior`] it is told to show, it behaves like a real
//! registry (distribution 2.8 / OCI distribution spec): pagination with `n`,
//! `last` and `Link`; manifests by tag or digest with `Docker-Content-Digest`;
//! manifests rejected while their blobs or child manifests are missing
//! (`MANIFEST_BLOB_UNKNOWN`); GETs refused when `Accept` excludes the stored
//! media type; digest-verified monolithic and chunked uploads with
//! `Content-Range` ordering checks; cross-repository mounts; deletes by digest
//! only (a tag delete answers 400 `DIGEST_INVALID`, as distribution 2.8 does).
//!
//! Repository names contain slashes, so one fallback handler parses
//! `/v2/<name>/(manifests|blobs|tags)/…` itself instead of router patterns.
//! Every request, including `/token`, is recorded in [`FakeRegistry::request_log`]
//! (with its `Authorization` header in [`FakeRegistry::authorization_log`])
//! before any behavior applies.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use base64::Engine as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::fixtures::sha256_digest;

mod harbor;
pub use harbor::HarborSetup;

/// What a Bearer-protected fake demands: `GET /token` with these Basic
/// credentials (an empty `username` allows anonymous token requests) and
/// this `service`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BearerSetup {
    pub username: String,
    pub password: String,
    /// The `service` named in the challenge and checked on `/token`.
    pub service: String,
}

/// How the fake misbehaves. `Default` is a well-behaved anonymous registry.
/// Set at most one of `require_basic` and `require_bearer`.
#[derive(Clone, Debug, Default)]
pub struct Behavior {
    /// Blob (and manifest) digests whose GET serves wrong bytes: same length,
    /// first byte flipped; headers still name the true digest.
    pub corrupt_blobs: HashSet<String>,
    /// `/v2/` requests need `Authorization: Basic` with these credentials,
    /// else 401 with `WWW-Authenticate: Basic realm="fake"`.
    pub require_basic: Option<(String, String)>,
    /// `/v2/` requests need `Authorization: Bearer <token from /token>`, else
    /// 401 with `WWW-Authenticate: Bearer realm="<url>/token",service=…,scope=…`.
    pub require_bearer: Option<BearerSetup>,
    /// Every `/v2/` request answers this status with an OCI error envelope
    /// `{"errors":[{"code":…,"message":…}]}` (checked before everything else).
    pub deny: Option<(u16, String, String)>,
    /// Manifest PUTs with one of these `Content-Type`s → 400 `MANIFEST_INVALID`.
    pub reject_manifest_media_types: HashSet<String>,
    /// Tags that `tags/list` lists but whose manifest GET/HEAD answers 404
    /// `MANIFEST_UNKNOWN` (deleted between listing and fetching), in any repo.
    pub vanish_after_list: HashSet<String>,
    /// The next `count` `/v2/` requests answer 429 `TOOMANYREQUESTS` with
    /// `Retry-After: value` (seconds or an HTTP date); later ones succeed.
    /// The count restarts whenever [`FakeRegistry::set_behavior`] changes this.
    pub retry_after: Option<(u32, String)>,
    /// Cross-repository mounts answer 202 with an upload session even when
    /// the blob exists (as some registries do), instead of 201.
    pub mount_answers_202: bool,
    /// The next `n` GET/HEAD `/v2/…` requests answer 500 `UNKNOWN` "invalid checksum digest format",
    /// as distribution 2.8 does when a read races a non-atomic link-file write. Counts down.
    pub transient_500s: u32,
    /// Answer `Location` headers with paths (`/v2/…`) instead of absolute URLs.
    pub relative_locations: bool,
    /// Announce a request quota on every `/v2/` answer, Docker Hub style:
    /// `RateLimit-Limit: <limit>;w=21600` and `RateLimit-Remaining: <remaining>;w=21600`.
    pub rate_limit: Option<(u64, u64)>,
    /// Accept an index whose child manifests are not in the repository (a "sparse index"), as
    /// some registries do; by default children must exist, as on distribution 2.8.
    pub accept_sparse_indexes: bool,
    /// `DELETE /v2/<name>/manifests/<tag>` removes the tag alone (OCI 1.1); by default it answers
    /// 400 `DIGEST_INVALID`, as distribution 2.8 does.
    pub tag_deletes: bool,
    /// Upload `PATCH`es answer 405 `UNSUPPORTED` (a registry that takes monolithic uploads only).
    pub refuse_patch: bool,
    /// Each upload `PATCH` is logged and its body received, but answered only once the test adds
    /// a permit here (one per answer): a slow registry whose answer the test holds.
    pub hold_patches: Option<Arc<tokio::sync::Semaphore>>,
    /// Serve the OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`): an index of the
    /// repository's manifests whose `subject` is that digest. Off: 404, as distribution 2.8.
    pub referrers_api: bool,
    /// Serve Harbor's artifact API (`GET /api/v2.0/projects/<p>/repositories/<r>/artifacts/<ref>`,
    /// the repository percent-encoded twice) with these labels per `repo:tag`; `None`: no Harbor
    /// API (404).
    pub harbor_labels: Option<HashMap<String, Vec<String>>>,
    /// Play Harbor's projects: its project and repository API, `_catalog` for administrators
    /// only, no repository outside an existing project, quota and immutable-tag refusals
    /// (`fake/harbor.rs`); `None`: a plain registry.
    pub harbor: Option<HarborSetup>,
    /// Harbor's `scan_overview` per artifact, keyed `repo@digest` (Harbor scans artifacts, not
    /// tags), served on the artifact API when asked `with_scan_overview=true`: an object keyed by
    /// report MIME type whose values use Harbor's swagger names (`NativeReportSummary`:
    /// `report_id`, `scan_status`, `severity`, `duration`, `summary` {`total`, `fixable`,
    /// `summary`}, `start_time`, `end_time`, `complete_percent`, `scanner`); see
    /// [`harbor_scan_overview`]. Setting it (even empty) serves Harbor's artifact API.
    pub harbor_scans: Option<HashMap<String, serde_json::Value>>,
    /// `(n, bytes)`: the next `n` blob GETs whose body is longer than `bytes`
    /// send only `bytes` bytes of it (announcing the full `Content-Length`),
    /// then drop the connection, as a reset link does. Counts down.
    pub cut_blob_reads: Option<(u32, usize)>,
    /// Blob GETs ignore `Range` and answer 200 with the whole blob.
    pub ignore_range: bool,
    /// The next upload `PATCH` whose chunk starts at this offset answers 500
    /// without storing its bytes (once: then it is cleared).
    pub fail_patch_at: Option<usize>,
    /// Upload status answers (`GET` on a session) carry this `Range` value
    /// instead of the true one.
    pub upload_status_range: Option<String>,
    /// Upload `PATCH` answers carry this `Range` value instead of the true one.
    pub patch_range: Option<String>,
    /// The `expires_in` of `/token` answers (default 300), e.g. `u64::MAX` from a careless token
    /// server.
    pub token_expires_in: Option<u64>,
    /// Manifest `PUT` answers carry no `Docker-Content-Digest` (registries that do not say what
    /// they stored).
    pub silent_manifest_puts: bool,
    /// The Bearer challenge names this token realm instead of `<url>/token` (a token server on
    /// another origin).
    pub token_realm: Option<String>,
    /// Upload session `Location`s (answers to the `POST` that opens a session and to `PATCH`es)
    /// name this origin (`scheme://host:port`) instead of the fake's own.
    pub upload_location_origin: Option<String>,
    /// Pagination `Link`s of `_catalog` and `tags/list` (and of Harbor's lists) name this origin
    /// (absolute URLs) instead of being paths.
    pub link_origin: Option<String>,
    /// `_catalog` and `tags/list` pages hold at most this many entries, whatever `n` asks (as
    /// registries that cap `n` do).
    pub max_page_size: Option<usize>,
    /// Blob `GET`s answer `307 Temporary Redirect` to the same path on this origin, as registries
    /// serving blobs from object storage do.
    pub redirect_blob_gets_to: Option<String>,
    /// `_catalog` and `tags/list` (and Harbor's lists) answer pages no sane registry sends.
    pub hostile_lists: Option<HostileList>,
    /// Blob digests whose `HEAD`/`GET` answers 500 `UNKNOWN` "invalid checksum digest format" in
    /// every repository until an upload of that digest completes, as distribution 2.8 does for
    /// good when a full disk left the repository's link file of the blob empty (an upload rewrites
    /// it).
    pub broken_blob_links: HashSet<String>,
    /// Repositories whose `tags/list` answers 403 `DENIED` (a repository the credential may not
    /// list, while the catalog names it).
    pub deny_tag_lists: HashSet<String>,
}

/// Pages of `_catalog` and `tags/list` from a hostile or broken registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostileList {
    /// Every page holds `per_page` new entries and a `Link` to yet another page, forever.
    Endless { per_page: usize },
    /// The true entries, with a `Link` back to the first page (the request without `last`).
    LinkToFirst,
    /// One page of about `bytes` bytes: a single entry padded to that length.
    Oversized { bytes: usize },
}

/// A running fake registry on a free loopback port. Dropping it shuts the
/// server down.
pub struct FakeRegistry {
    pub addr: SocketAddr,
    state: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

struct Shared {
    /// `http://127.0.0.1:PORT`, for absolute `Location`s and the token realm.
    base_url: String,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    behavior: Behavior,
    /// 429s still to serve from `behavior.retry_after`.
    throttled_left: u32,
    /// Content-addressed and shared by all repositories (so any blob can be
    /// mounted from anywhere).
    blobs: HashMap<String, Bytes>,
    repos: BTreeMap<String, Repo>,
    uploads: HashMap<String, Upload>,
    tokens: HashSet<String>,
    log: Vec<(String, String)>,
    /// The `Authorization` header of every request in `log`, in the same order.
    authorizations: Vec<Option<String>>,
    /// The `Range` header of every blob GET, in order (`None`: no `Range`).
    blob_ranges: Vec<Option<String>>,
    /// Harbor's projects, when [`Behavior::harbor`] plays Harbor.
    harbor_projects: harbor::Projects,
}

#[derive(Default)]
struct Repo {
    /// tag → manifest digest
    tags: BTreeMap<String, String>,
    /// digest → (media type, exact bytes)
    manifests: HashMap<String, (String, Bytes)>,
}

struct Upload {
    repo: String,
    data: Vec<u8>,
}

impl FakeRegistry {
    /// Starts the fake on `127.0.0.1:<free port>`.
    pub async fn start(behavior: Behavior) -> anyhow::Result<FakeRegistry> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fake registry to 127.0.0.1:0")?;
        let addr = listener
            .local_addr()
            .context("reading the fake registry's address")?;
        let throttled_left = behavior.retry_after.as_ref().map_or(0, |(n, _)| *n);
        let mut harbor_projects = harbor::Projects::default();
        for project in behavior.harbor.iter().flat_map(|h| &h.projects) {
            harbor_projects.create(project);
        }
        let state = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            inner: Mutex::new(Inner {
                behavior,
                throttled_left,
                harbor_projects,
                ..Inner::default()
            }),
        });
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(state.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(FakeRegistry {
            addr,
            state,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        self.state.base_url.clone()
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Stores a manifest directly (no validation), tagging it if `tag` is
    /// given, and returns its digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> String {
        let digest = sha256_digest(&bytes);
        let mut inner = self.lock();
        let r = inner.repos.entry(repo.to_owned()).or_default();
        r.manifests
            .insert(digest.clone(), (media_type.to_owned(), Bytes::from(bytes)));
        if let Some(tag) = tag {
            r.tags.insert(tag.to_owned(), digest.clone());
        }
        digest
    }

    /// Stores a blob directly and returns its digest.
    pub fn put_blob(&self, bytes: Vec<u8>) -> String {
        let digest = sha256_digest(&bytes);
        self.lock().blobs.insert(digest.clone(), Bytes::from(bytes));
        digest
    }

    /// Changes the behavior of a running fake.
    pub fn set_behavior(&self, f: impl FnOnce(&mut Behavior)) {
        let mut inner = self.lock();
        let before = inner.behavior.retry_after.clone();
        f(&mut inner.behavior);
        if inner.behavior.retry_after != before {
            inner.throttled_left = inner.behavior.retry_after.as_ref().map_or(0, |(n, _)| *n);
        }
    }

    /// Every request so far as (method, path and query), in arrival order.
    pub fn request_log(&self) -> Vec<(String, String)> {
        self.lock().log.clone()
    }

    /// Every request so far as (method, path and query, its `Authorization` header), in arrival
    /// order: which requests carried credentials.
    pub fn authorization_log(&self) -> Vec<(String, String, Option<String>)> {
        let inner = self.lock();
        inner
            .log
            .iter()
            .zip(&inner.authorizations)
            .map(|((m, p), a)| (m.clone(), p.clone(), a.clone()))
            .collect()
    }

    /// The `Range` header of every blob `GET` so far, in order (`None`: none).
    pub fn blob_ranges(&self) -> Vec<Option<String>> {
        self.lock().blob_ranges.clone()
    }

    /// Forgets the requests so far (e.g. after test setup).
    pub fn clear_request_log(&self) {
        let mut inner = self.lock();
        inner.log.clear();
        inner.authorizations.clear();
    }

    /// The Harbor projects that exist (see [`Behavior::harbor`]), sorted.
    pub fn harbor_projects(&self) -> Vec<String> {
        self.lock().harbor_projects.names()
    }

    /// Whether a blob with this digest is stored (blobs are shared by all repos).
    pub fn has_blob(&self, digest: &str) -> bool {
        self.lock().blobs.contains_key(digest)
    }

    /// (media type, exact bytes) of a manifest by tag or digest.
    pub fn manifest(&self, repo: &str, reference: &str) -> Option<(String, Vec<u8>)> {
        let inner = self.lock();
        let r = inner.repos.get(repo)?;
        let digest = resolve(r, reference)?;
        r.manifests
            .get(&digest)
            .map(|(mt, bytes)| (mt.clone(), bytes.to_vec()))
    }

    /// Removes a tag (its manifest stays, reachable by digest); false if it did not exist.
    pub fn remove_tag(&self, repo: &str, tag: &str) -> bool {
        self.lock()
            .repos
            .get_mut(repo)
            .is_some_and(|r| r.tags.remove(tag).is_some())
    }

    /// The tags of `repo`, sorted (empty for an unknown repo).
    pub fn tags(&self, repo: &str) -> Vec<String> {
        self.lock()
            .repos
            .get(repo)
            .map(|r| r.tags.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Shuts the server down and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.state.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The tag or digest `reference` as a digest stored in `repo`.
fn resolve(repo: &Repo, reference: &str) -> Option<String> {
    if reference.contains(':') {
        repo.manifests
            .contains_key(reference)
            .then(|| reference.to_owned())
    } else {
        repo.tags.get(reference).cloned()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::PATCH {
        let hold = {
            let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
            let held = inner.behavior.hold_patches.clone();
            if held.is_some() {
                let path_and_query = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
                inner
                    .log
                    .push((format!("{method} (held)"), path_and_query.to_owned()));
                inner.authorizations.push(None);
            }
            held
        };
        if let Some(hold) = hold {
            if let Ok(permit) = hold.acquire().await {
                permit.forget();
            }
        }
    }
    // Everything below is synchronous: the lock is never held across an await.
    let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    let req = Req {
        method: &method,
        path: uri.path(),
        query: parse_query(uri.query().unwrap_or("")),
        headers: &headers,
        body,
    };
    let path_and_query = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    inner
        .log
        .push((method.to_string(), path_and_query.to_owned()));
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    inner.authorizations.push(authorization);
    dispatch(&shared, &mut inner, req)
}

struct Req<'a> {
    method: &'a Method,
    path: &'a str,
    query: HashMap<String, String>,
    headers: &'a HeaderMap,
    body: Bytes,
}

impl Req<'_> {
    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A parsed `/v2/…` path.
enum Route {
    Base,
    Catalog,
    Tags { name: String },
    Referrers { name: String, digest: String },
    Manifest { name: String, reference: String },
    Blob { name: String, digest: String },
    UploadStart { name: String },
    Upload { name: String, id: String },
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let rest = path.strip_prefix("/v2")?;
        if rest.is_empty() || rest == "/" {
            return Some(Route::Base);
        }
        let rest = rest.strip_prefix('/')?;
        if rest == "_catalog" {
            return Some(Route::Catalog);
        }
        let segs: Vec<String> = rest.split('/').map(percent_decode).collect();
        let n = segs.len();
        let name = |k: usize| segs[..n - k].join("/");
        if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
            return Some(if segs[n - 1].is_empty() {
                Route::UploadStart { name: name(3) }
            } else {
                Route::Upload {
                    name: name(3),
                    id: segs[n - 1].clone(),
                }
            });
        }
        if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
            return Some(Route::UploadStart { name: name(2) });
        }
        if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
            return Some(Route::Tags { name: name(2) });
        }
        if n >= 3 && segs[n - 2] == "referrers" {
            return Some(Route::Referrers {
                name: name(2),
                digest: segs[n - 1].clone(),
            });
        }
        if n >= 3 && segs[n - 2] == "manifests" {
            return Some(Route::Manifest {
                name: name(2),
                reference: segs[n - 1].clone(),
            });
        }
        if n >= 3 && segs[n - 2] == "blobs" {
            return Some(Route::Blob {
                name: name(2),
                digest: segs[n - 1].clone(),
            });
        }
        None
    }

    fn name(&self) -> Option<&str> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags { name }
            | Route::Referrers { name, .. }
            | Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::UploadStart { name }
            | Route::Upload { name, .. } => Some(name),
        }
    }
}

fn dispatch(shared: &Shared, inner: &mut Inner, req: Req<'_>) -> Response {
    if req.path == "/token" {
        return token(inner, &req);
    }
    if let Some(resp) = harbor::intercept(inner, &req) {
        return resp;
    }
    if let Some(rest) = req.path.strip_prefix("/api/v2.0/projects/") {
        return harbor_artifact(inner, rest, &req.query);
    }
    if req.path != "/v2" && !req.path.starts_with("/v2/") {
        return plain(StatusCode::NOT_FOUND, "not a registry path");
    }
    if let Some((status, code, message)) = &inner.behavior.deny {
        let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return oci_error(status, code, message);
    }
    if inner.behavior.transient_500s > 0 && matches!(*req.method, Method::GET | Method::HEAD) {
        inner.behavior.transient_500s -= 1;
        return oci_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            "unknown error: invalid checksum digest format",
        );
    }
    if matches!(*req.method, Method::GET | Method::HEAD)
        && req.path.contains("/blobs/")
        && inner
            .behavior
            .broken_blob_links
            .iter()
            .any(|d| req.path.ends_with(&format!("/blobs/{d}")))
    {
        return oci_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            "unknown error: invalid checksum digest format",
        );
    }
    if inner.throttled_left > 0 {
        inner.throttled_left -= 1;
        let value = inner
            .behavior
            .retry_after
            .as_ref()
            .map_or("1", |(_, v)| v.as_str());
        let mut resp = oci_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            "slow down",
        );
        insert(&mut resp, header::RETRY_AFTER, value);
        return resp;
    }
    let Some(route) = Route::parse(req.path) else {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown registry path");
    };
    if let Some(challenge) = authorize(shared, inner, &req, &route) {
        return challenge;
    }
    if let Some(name) = route.name() {
        if !valid_repo_name(name) {
            return oci_error(
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
                &format!("invalid repository name {name:?}"),
            );
        }
    }
    let mut resp = match (req.method.clone(), route) {
        (Method::GET | Method::HEAD, Route::Base) => json(StatusCode::OK, serde_json::json!({})),
        (Method::GET, Route::Catalog) => catalog(inner, &req),
        (Method::GET, Route::Tags { name }) => tags_list(inner, &req, &name),
        (Method::GET, Route::Blob { .. }) if inner.behavior.redirect_blob_gets_to.is_some() => {
            let origin = inner
                .behavior
                .redirect_blob_gets_to
                .as_deref()
                .unwrap_or_default();
            let mut resp = empty(StatusCode::TEMPORARY_REDIRECT);
            insert(
                &mut resp,
                header::LOCATION,
                &format!("{origin}{}", req.path),
            );
            resp
        }
        (Method::GET, Route::Referrers { name, digest }) if inner.behavior.referrers_api => {
            referrers(inner, &name, &digest)
        }
        (Method::GET | Method::HEAD, Route::Manifest { name, reference }) => {
            get_manifest(inner, &req, &name, &reference)
        }
        (Method::PUT, Route::Manifest { name, reference }) => {
            put_manifest(shared, inner, &req, &name, &reference)
        }
        (Method::DELETE, Route::Manifest { name, reference }) => {
            delete_manifest(inner, &name, &reference)
        }
        (Method::GET | Method::HEAD, Route::Blob { digest, .. }) => {
            if *req.method == Method::GET {
                let range = req.header(header::RANGE).map(str::to_owned);
                inner.blob_ranges.push(range);
            }
            get_blob(inner, &req, &digest)
        }
        (Method::DELETE, Route::Blob { digest, .. }) => {
            if inner.blobs.remove(&digest).is_some() {
                empty(StatusCode::ACCEPTED)
            } else {
                oci_error(
                    StatusCode::NOT_FOUND,
                    "BLOB_UNKNOWN",
                    "blob unknown to registry",
                )
            }
        }
        (Method::POST, Route::UploadStart { name }) => start_upload(shared, inner, &req, &name),
        (Method::PATCH, Route::Upload { .. }) if inner.behavior.refuse_patch => oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "chunked uploads are not supported; upload the blob in one PUT",
        ),
        (Method::PATCH, Route::Upload { name, id }) => {
            let at = inner.uploads.get(&id).map(|u| u.data.len());
            if at.is_some() && inner.behavior.fail_patch_at == at {
                inner.behavior.fail_patch_at = None;
                oci_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "unknown error: the fake fails this PATCH",
                )
            } else {
                let mut resp = patch_upload(shared, inner, &req, &name, &id);
                if let Some(range) = &inner.behavior.patch_range {
                    if resp.status() == StatusCode::ACCEPTED {
                        insert(&mut resp, header::RANGE, range);
                    }
                }
                resp
            }
        }
        (Method::PUT, Route::Upload { name, id }) => finish_upload(shared, inner, &req, &name, &id),
        (Method::GET, Route::Upload { name, id }) => match inner.uploads.get(&id) {
            Some(up) if up.repo == name => {
                let mut resp = empty(StatusCode::NO_CONTENT);
                upload_headers(shared, inner, &mut resp, &name, &id);
                if let Some(range) = &inner.behavior.upload_status_range {
                    insert(&mut resp, header::RANGE, range);
                }
                resp
            }
            _ => upload_unknown(),
        },
        (Method::DELETE, Route::Upload { name, id }) => match inner.uploads.get(&id) {
            Some(up) if up.repo == name => {
                inner.uploads.remove(&id);
                empty(StatusCode::NO_CONTENT)
            }
            _ => upload_unknown(),
        },
        _ => oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "method not allowed here",
        ),
    };
    insert(&mut resp, "docker-distribution-api-version", "registry/2.0");
    if let Some((limit, remaining)) = inner.behavior.rate_limit {
        insert(&mut resp, "ratelimit-limit", &format!("{limit};w=21600"));
        insert(
            &mut resp,
            "ratelimit-remaining",
            &format!("{remaining};w=21600"),
        );
    }
    resp
}

/// The 401 challenge to answer, unless the request carries the credentials
/// the behavior demands.
fn authorize(shared: &Shared, inner: &Inner, req: &Req<'_>, route: &Route) -> Option<Response> {
    let auth = req.header(header::AUTHORIZATION).unwrap_or("");
    if let Some((user, pass)) = &inner.behavior.require_basic {
        if basic_credentials(auth) != Some((user.clone(), pass.clone())) {
            let mut resp = oci_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required",
            );
            insert(&mut resp, header::WWW_AUTHENTICATE, "Basic realm=\"fake\"");
            return Some(resp);
        }
    }
    if let Some(setup) = &inner.behavior.require_bearer {
        let ok = auth
            .strip_prefix("Bearer ")
            .is_some_and(|t| inner.tokens.contains(t.trim()));
        if !ok {
            let realm = inner
                .behavior
                .token_realm
                .clone()
                .unwrap_or_else(|| format!("{}/token", shared.base_url));
            let mut challenge = format!("Bearer realm=\"{realm}\",service=\"{}\"", setup.service);
            let write = !matches!(*req.method, Method::GET | Method::HEAD);
            match route {
                Route::Base => {}
                Route::Catalog => challenge.push_str(",scope=\"registry:catalog:*\""),
                _ => {
                    let name = route.name().unwrap_or_default();
                    let actions = if write { "pull,push" } else { "pull" };
                    challenge.push_str(&format!(",scope=\"repository:{name}:{actions}\""));
                }
            }
            let mut resp = oci_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required",
            );
            insert(&mut resp, header::WWW_AUTHENTICATE, &challenge);
            return Some(resp);
        }
    }
    None
}

/// `GET /token?service=&scope=`: a token for Basic credentials (or anyone,
/// when the setup's username is empty).
fn token(inner: &mut Inner, req: &Req<'_>) -> Response {
    let Some(setup) = inner.behavior.require_bearer.clone() else {
        return plain(StatusCode::NOT_FOUND, "this fake does not issue tokens");
    };
    if *req.method != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET /token");
    }
    if req
        .query
        .get("service")
        .is_some_and(|s| *s != setup.service)
    {
        return oci_error(StatusCode::BAD_REQUEST, "UNAUTHORIZED", "unknown service");
    }
    if !setup.username.is_empty() {
        let creds = basic_credentials(req.header(header::AUTHORIZATION).unwrap_or(""));
        if creds != Some((setup.username.clone(), setup.password.clone())) {
            let mut resp = oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "bad credentials");
            insert(
                &mut resp,
                header::WWW_AUTHENTICATE,
                "Basic realm=\"fake-token\"",
            );
            return resp;
        }
    }
    let token = format!("fake-{:032x}", rand::random::<u128>());
    inner.tokens.insert(token.clone());
    json(
        StatusCode::OK,
        serde_json::json!({ "token": token, "expires_in": inner.behavior.token_expires_in.unwrap_or(300) }),
    )
}

fn catalog(inner: &Inner, req: &Req<'_>) -> Response {
    let names: Vec<&String> = inner.repos.keys().collect();
    list_page(inner, req, "/v2/_catalog", "repositories", None, &names)
}

/// The referrers index of `digest` in `name`: descriptors of the manifests whose `subject` it is.
fn referrers(inner: &Inner, name: &str, digest: &str) -> Response {
    let manifests: Vec<serde_json::Value> = inner
        .repos
        .get(name)
        .into_iter()
        .flat_map(|r| r.manifests.iter())
        .filter_map(|(d, (media_type, bytes))| {
            let m: serde_json::Value = serde_json::from_slice(bytes).ok()?;
            (m["subject"]["digest"].as_str() == Some(digest)).then(|| {
                let artifact_type = m["artifactType"]
                    .as_str()
                    .or(m["config"]["mediaType"].as_str())
                    .unwrap_or_default();
                serde_json::json!({"mediaType": media_type, "digest": d, "size": bytes.len(), "artifactType": artifact_type})
            })
        })
        .collect();
    let mut resp = json(
        StatusCode::OK,
        serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}),
    );
    insert(
        &mut resp,
        header::CONTENT_TYPE,
        "application/vnd.oci.image.index.v1+json",
    );
    resp
}

fn tags_list(inner: &Inner, req: &Req<'_>, name: &str) -> Response {
    if inner.behavior.deny_tag_lists.contains(name) {
        return oci_error(
            StatusCode::FORBIDDEN,
            "DENIED",
            "requested access to the resource is denied",
        );
    }
    let Some(repo) = inner.repos.get(name) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository name not known to registry",
        );
    };
    let tags: Vec<&String> = repo.tags.keys().collect();
    list_page(
        inner,
        req,
        &format!("/v2/{name}/tags/list"),
        "tags",
        Some(name),
        &tags,
    )
}

/// One page of a list answered at `path` (`_catalog`: `repositories`; `tags/list`: `name` and
/// `tags`), with a `Link` to the next one; or what [`Behavior::hostile_lists`] says instead.
fn list_page(
    inner: &Inner,
    req: &Req<'_>,
    path: &str,
    field: &str,
    name: Option<&str>,
    items: &[&String],
) -> Response {
    let b = &inner.behavior;
    let n = req.query.get("n").cloned().unwrap_or_default();
    let link_to = |query: String| {
        let origin = b.link_origin.as_deref().unwrap_or_default();
        format!("<{origin}{path}?{query}>; rel=\"next\"")
    };
    let answer = |entries: serde_json::Value, link: Option<String>| {
        let mut body = serde_json::json!({ field: entries });
        if let Some(name) = name {
            body["name"] = name.into();
        }
        let mut resp = json(StatusCode::OK, body);
        if let Some(link) = link {
            insert(&mut resp, header::LINK, &link);
        }
        resp
    };
    match &b.hostile_lists {
        Some(HostileList::Endless { per_page }) => {
            let page: u64 = req
                .query
                .get("last")
                .and_then(|l| l.strip_prefix('p')?.parse().ok())
                .unwrap_or(0);
            let entries: Vec<String> = (0..*per_page).map(|i| format!("p{page}-{i}")).collect();
            let next = link_to(format!("last=p{}&n={n}", page + 1));
            return answer(entries.into(), Some(next));
        }
        Some(HostileList::Oversized { bytes }) => {
            return answer(vec!["x".repeat(*bytes)].into(), None);
        }
        Some(HostileList::LinkToFirst) => {
            let entries: Vec<&String> = items.to_vec();
            return answer(serde_json::json!(entries), Some(link_to(format!("n={n}"))));
        }
        None => {}
    }
    match paginate(items, req, b.max_page_size) {
        Ok((page, more)) => {
            let link = more
                .then(|| page.last())
                .flatten()
                .filter(|_| !n.is_empty())
                .map(|last| link_to(format!("last={last}&n={n}")));
            answer(serde_json::json!(page), link)
        }
        Err(resp) => *resp,
    }
}

/// The sorted `items` after `last`, at most `n` of them, and whether more follow.
fn paginate<'a>(
    items: &[&'a String],
    req: &Req<'_>,
    max_page_size: Option<usize>,
) -> Result<(Vec<&'a String>, bool), Box<Response>> {
    let after: Vec<&String> = match req.query.get("last") {
        Some(last) => items
            .iter()
            .copied()
            .filter(|i| i.as_str() > last.as_str())
            .collect(),
        None => items.to_vec(),
    };
    match req.query.get("n") {
        None => Ok((after, false)),
        Some(n) => {
            let n: usize = n.parse().map_err(|_| {
                Box::new(oci_error(
                    StatusCode::BAD_REQUEST,
                    "PAGINATION_NUMBER_INVALID",
                    "invalid number of results requested",
                ))
            })?;
            let n = max_page_size.map_or(n, |max| n.min(max));
            let more = after.len() > n;
            Ok((after.into_iter().take(n).collect(), more))
        }
    }
}

fn get_manifest(inner: &Inner, req: &Req<'_>, name: &str, reference: &str) -> Response {
    let unknown = || {
        oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
        )
    };
    let Some(repo) = inner.repos.get(name) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository name not known to registry",
        );
    };
    if !reference.contains(':') && inner.behavior.vanish_after_list.contains(reference) {
        return unknown();
    }
    let Some(digest) = resolve(repo, reference) else {
        return unknown();
    };
    let Some((media_type, bytes)) = repo.manifests.get(&digest) else {
        return unknown();
    };
    // Like distribution: a manifest whose type the client does not accept is
    // reported as unknown. No Accept header at all is taken as "anything".
    let accepted: Vec<String> = req
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if !accepted.is_empty() && !accepted.iter().any(|t| t == media_type || t == "*/*") {
        return oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            &format!("manifest is {media_type}, which the Accept header does not allow"),
        );
    }
    let body = if inner.behavior.corrupt_blobs.contains(&digest) {
        corrupt(bytes)
    } else {
        bytes.clone()
    };
    let mut resp = Response::new(Body::from(body));
    insert(&mut resp, header::CONTENT_TYPE, media_type);
    insert(&mut resp, "docker-content-digest", &digest);
    insert(&mut resp, header::CONTENT_LENGTH, &bytes.len().to_string());
    resp
}

fn put_manifest(
    shared: &Shared,
    inner: &mut Inner,
    req: &Req<'_>,
    name: &str,
    reference: &str,
) -> Response {
    let invalid = |msg: &str| oci_error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", msg);
    let parsed: serde_json::Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => return invalid(&format!("manifest is not JSON: {e}")),
    };
    let declared = parsed["mediaType"].as_str();
    let content_type = req
        .header(header::CONTENT_TYPE)
        .map(|ct| ct.split(';').next().unwrap_or("").trim().to_owned())
        .filter(|ct| !ct.is_empty());
    let Some(media_type) = content_type.or(declared.map(str::to_owned)) else {
        return invalid("no Content-Type and no mediaType field");
    };
    if inner
        .behavior
        .reject_manifest_media_types
        .contains(&media_type)
    {
        return invalid(&format!(
            "manifest media type {media_type} is not accepted here"
        ));
    }
    if let Some(declared) = declared {
        if declared != media_type {
            return invalid(&format!(
                "mediaType {declared} does not match Content-Type {media_type}"
            ));
        }
    }
    let digest = sha256_digest(&req.body);
    if reference.contains(':') && reference != digest {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            &format!("manifest digest {digest} does not match reference {reference}"),
        );
    }
    // Referenced content must be there first (`subject` need not be).
    let repo = inner.repos.get(name);
    let blob_refs = parsed["config"].as_object().into_iter().chain(
        parsed["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_object()),
    );
    for d in blob_refs.filter_map(|d| d.get("digest").and_then(|d| d.as_str())) {
        if !inner.blobs.contains_key(d) {
            return oci_error(
                StatusCode::BAD_REQUEST,
                "MANIFEST_BLOB_UNKNOWN",
                &format!("blob unknown to registry: {d}"),
            );
        }
    }
    for d in parsed["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["digest"].as_str())
    {
        if !inner.behavior.accept_sparse_indexes
            && !repo.is_some_and(|r| r.manifests.contains_key(d))
        {
            return oci_error(
                StatusCode::BAD_REQUEST,
                "MANIFEST_BLOB_UNKNOWN",
                &format!("child manifest unknown to repository: {d}"),
            );
        }
    }
    let repo = inner.repos.entry(name.to_owned()).or_default();
    repo.manifests
        .insert(digest.clone(), (media_type, req.body.clone()));
    if !reference.contains(':') {
        repo.tags.insert(reference.to_owned(), digest.clone());
    }
    let mut resp = empty(StatusCode::CREATED);
    insert(
        &mut resp,
        header::LOCATION,
        &location(shared, inner, &format!("/v2/{name}/manifests/{digest}")),
    );
    if !inner.behavior.silent_manifest_puts {
        insert(&mut resp, "docker-content-digest", &digest);
    }
    resp
}

fn delete_manifest(inner: &mut Inner, name: &str, reference: &str) -> Response {
    if !reference.contains(':') && inner.behavior.tag_deletes {
        return match inner
            .repos
            .get_mut(name)
            .and_then(|r| r.tags.remove(reference))
        {
            Some(_) => empty(StatusCode::ACCEPTED),
            None => oci_error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                "manifest unknown",
            ),
        };
    }
    if !reference.contains(':') {
        // distribution 2.8 behavior; see shared/REGISTRY-FACTS.md.
        return oci_error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "provided digest did not match uploaded content",
        );
    }
    let Some(repo) = inner.repos.get_mut(name) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository name not known to registry",
        );
    };
    if repo.manifests.remove(reference).is_none() {
        return oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
        );
    }
    repo.tags.retain(|_, d| d != reference);
    empty(StatusCode::ACCEPTED)
}

fn get_blob(inner: &mut Inner, req: &Req<'_>, digest: &str) -> Response {
    let Some(bytes) = inner.blobs.get(digest) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "blob unknown to registry",
        );
    };
    let body = if inner.behavior.corrupt_blobs.contains(digest) {
        corrupt(bytes)
    } else {
        bytes.clone()
    };
    // `Range: bytes=START-[END]`, for clients resuming a download.
    let range = req
        .header(header::RANGE)
        .filter(|_| !inner.behavior.ignore_range)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(s, e)| {
            let start: usize = s.parse().ok()?;
            let end: usize = if e.is_empty() {
                body.len().checked_sub(1)?
            } else {
                e.parse().ok()?
            };
            (start <= end && end < body.len()).then_some((start, end))
        });
    let (status, body) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, body.slice(start..=end)),
        None => (StatusCode::OK, body),
    };
    let len = body.len();
    let cut = match &mut inner.behavior.cut_blob_reads {
        Some((n, after)) if *n > 0 && *req.method == Method::GET && *after < len => {
            *n -= 1;
            Some(*after)
        }
        _ => None,
    };
    let mut resp = match cut {
        // The announced length stays the full one, so the client sees a body that breaks off.
        Some(after) => {
            let parts: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(body.slice(..after)),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "the fake cuts this download",
                )),
            ];
            Response::new(Body::from_stream(futures_util::stream::iter(parts)))
        }
        _ => Response::new(Body::from(body)),
    };
    *resp.status_mut() = status;
    if let Some((start, end)) = range {
        insert(
            &mut resp,
            header::CONTENT_RANGE,
            &format!("bytes {start}-{end}/{}", bytes.len()),
        );
    }
    insert(&mut resp, header::CONTENT_TYPE, "application/octet-stream");
    insert(&mut resp, "docker-content-digest", digest);
    insert(&mut resp, header::CONTENT_LENGTH, &len.to_string());
    resp
}

fn start_upload(shared: &Shared, inner: &mut Inner, req: &Req<'_>, name: &str) -> Response {
    if let Some(mount) = req.query.get("mount") {
        if inner.blobs.contains_key(mount) && !inner.behavior.mount_answers_202 {
            let mut resp = empty(StatusCode::CREATED);
            insert(
                &mut resp,
                header::LOCATION,
                &location(shared, inner, &format!("/v2/{name}/blobs/{mount}")),
            );
            insert(&mut resp, "docker-content-digest", mount);
            return resp;
        }
        // Otherwise fall through: an upload session, as the spec allows.
    } else if let Some(digest) = req.query.get("digest") {
        return store_blob(shared, inner, name, digest, req.body.to_vec());
    }
    let id = format!("{:032x}", rand::random::<u128>());
    inner.uploads.insert(
        id.clone(),
        Upload {
            repo: name.to_owned(),
            data: Vec::new(),
        },
    );
    let mut resp = empty(StatusCode::ACCEPTED);
    upload_headers(shared, inner, &mut resp, name, &id);
    resp
}

fn patch_upload(
    shared: &Shared,
    inner: &mut Inner,
    req: &Req<'_>,
    name: &str,
    id: &str,
) -> Response {
    let Some(upload) = inner.uploads.get_mut(id).filter(|u| u.repo == name) else {
        return upload_unknown();
    };
    if let Some(range) = req.header(header::CONTENT_RANGE) {
        let range = range
            .trim()
            .trim_start_matches("bytes")
            .trim_start_matches([' ', '=']);
        let range = range.split('/').next().unwrap_or("");
        let parsed = range.split_once('-').and_then(|(s, e)| {
            Some((
                s.trim().parse::<usize>().ok()?,
                e.trim().parse::<usize>().ok()?,
            ))
        });
        let Some((start, end)) = parsed else {
            return oci_error(
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                "unparsable Content-Range",
            );
        };
        if start != upload.data.len() {
            let mut resp = oci_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UPLOAD_INVALID",
                &format!(
                    "chunk starts at {start}, upload has {} bytes",
                    upload.data.len()
                ),
            );
            let have = upload.data.len().saturating_sub(1);
            insert(&mut resp, header::RANGE, &format!("0-{have}"));
            return resp;
        }
        if end + 1 != start + req.body.len() {
            return oci_error(
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                &format!(
                    "Content-Range {start}-{end} does not match a {}-byte body",
                    req.body.len()
                ),
            );
        }
    }
    upload.data.extend_from_slice(&req.body);
    let mut resp = empty(StatusCode::ACCEPTED);
    upload_headers(shared, inner, &mut resp, name, id);
    resp
}

fn finish_upload(
    shared: &Shared,
    inner: &mut Inner,
    req: &Req<'_>,
    name: &str,
    id: &str,
) -> Response {
    if inner.uploads.get(id).is_none_or(|u| u.repo != name) {
        return upload_unknown();
    }
    let mut upload = inner.uploads.remove(id).expect("checked above");
    upload.data.extend_from_slice(&req.body);
    let Some(digest) = req.query.get("digest") else {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "digest query parameter missing",
        );
    };
    store_blob(shared, inner, name, digest, upload.data)
}

/// Verifies `data` against `digest` and stores it: 201, or 400 `DIGEST_INVALID`.
fn store_blob(
    shared: &Shared,
    inner: &mut Inner,
    name: &str,
    digest: &str,
    data: Vec<u8>,
) -> Response {
    if !valid_digest(digest) {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            &format!("unsupported or malformed digest {digest:?}"),
        );
    }
    let actual = sha256_digest(&data);
    if actual != digest {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            &format!("provided digest {digest} did not match uploaded content ({actual})"),
        );
    }
    inner.behavior.broken_blob_links.remove(&actual);
    inner.blobs.insert(actual, Bytes::from(data));
    let mut resp = empty(StatusCode::CREATED);
    insert(
        &mut resp,
        header::LOCATION,
        &location(shared, inner, &format!("/v2/{name}/blobs/{digest}")),
    );
    insert(&mut resp, "docker-content-digest", digest);
    resp
}

fn upload_headers(shared: &Shared, inner: &Inner, resp: &mut Response, name: &str, id: &str) {
    let len = inner.uploads.get(id).map_or(0, |u| u.data.len());
    let path = format!("/v2/{name}/blobs/uploads/{id}");
    let location = match &inner.behavior.upload_location_origin {
        Some(origin) => format!("{origin}{path}"),
        None => location(shared, inner, &path),
    };
    insert(resp, header::LOCATION, &location);
    insert(resp, "docker-upload-uuid", id);
    insert(resp, header::RANGE, &format!("0-{}", len.saturating_sub(1)));
}

fn upload_unknown() -> Response {
    oci_error(
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
        "blob upload unknown to registry",
    )
}

fn location(shared: &Shared, inner: &Inner, path: &str) -> String {
    if inner.behavior.relative_locations {
        path.to_owned()
    } else {
        format!("{}{path}", shared.base_url)
    }
}

/// Same length, first byte flipped.
fn corrupt(bytes: &Bytes) -> Bytes {
    let mut v = bytes.to_vec();
    if let Some(b) = v.first_mut() {
        *b ^= 0xff;
    }
    Bytes::from(v)
}

fn basic_credentials(auth: &str) -> Option<(String, String)> {
    let encoded = auth.strip_prefix("Basic ")?.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

fn valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The distribution name grammar: `/`-separated components of lowercase
/// alphanumerics joined by `.`, `_`, `__` or runs of `-`.
fn valid_repo_name(name: &str) -> bool {
    fn component(c: &str) -> bool {
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let bytes = c.as_bytes();
        if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &c[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
            if !ok {
                return false;
            }
        }
        true
    }
    !name.is_empty() && name.len() <= 255 && name.split('/').all(component)
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Harbor's `…/projects/<p>/repositories/<r>/artifacts/<ref>` with the artifact's labels and, when
/// asked `with_scan_overview=true`, its scan overview.
fn harbor_artifact(inner: &Inner, rest: &str, query: &HashMap<String, String>) -> Response {
    if inner.behavior.harbor_labels.is_none() && inner.behavior.harbor_scans.is_none() {
        return plain(StatusCode::NOT_FOUND, "404 page not found");
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let [project, "repositories", repo, "artifacts", reference] = segs.as_slice() else {
        return plain(StatusCode::NOT_FOUND, "404 page not found");
    };
    let name = format!("{project}/{}", percent_decode(&percent_decode(repo)));
    let reference = percent_decode(reference);
    let not_found = || {
        json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"errors": [{"code": "NOT_FOUND", "message": format!("artifact {name}:{reference} not found")}]}),
        )
    };
    let Some(digest) = inner.repos.get(&name).and_then(|r| resolve(r, &reference)) else {
        return not_found();
    };
    let names = inner
        .behavior
        .harbor_labels
        .as_ref()
        .and_then(|l| l.get(&format!("{name}:{reference}")))
        .cloned()
        .unwrap_or_default();
    let labels: Vec<serde_json::Value> = names
        .iter()
        .map(|n| serde_json::json!({"name": n, "scope": "g"}))
        .collect();
    let mut artifact = serde_json::json!({"digest": digest, "labels": if labels.is_empty() { serde_json::Value::Null } else { labels.into() }});
    if query.get("with_scan_overview").map(String::as_str) == Some("true") {
        if let Some(overview) = inner
            .behavior
            .harbor_scans
            .as_ref()
            .and_then(|s| s.get(&format!("{name}@{digest}")))
        {
            artifact["scan_overview"] = overview.clone();
        }
    }
    json(StatusCode::OK, artifact)
}

/// A `scan_overview` as Harbor's artifact API and `SCANNING_COMPLETED` webhook carry it (one
/// Trivy report; Harbor's swagger `NativeReportSummary`): `scan_status` (`Success`, `Running`,
/// `Pending`, `Error`, …), `severity` (`None`, `Low`, `Medium`, `High`, `Critical`, …) and the
/// per-severity counts in `summary.summary`.
pub fn harbor_scan_overview(
    scan_status: &str,
    severity: &str,
    counts: &[(&str, u64)],
) -> serde_json::Value {
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let summary: serde_json::Map<String, serde_json::Value> = counts
        .iter()
        .map(|(k, n)| ((*k).to_string(), serde_json::Value::from(*n)))
        .collect();
    serde_json::json!({
        "application/vnd.security.vulnerability.report; version=1.1": {
            "report_id": "af0546c1-67dc-4e9d-927e-372900ead0df",
            "scan_status": scan_status,
            "severity": severity,
            "duration": 8,
            "summary": {"total": total, "fixable": 0, "summary": summary},
            "start_time": "2023-04-03T06:12:47Z",
            "end_time": "2023-04-03T06:12:55Z",
            "scanner": {"name": "Trivy", "vendor": "Aqua Security", "version": "v0.37.2"},
            "complete_percent": if scan_status == "Success" { 100 } else { 50 }
        }
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn insert(resp: &mut Response, name: impl header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

fn empty(status: StatusCode) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp
}

fn plain(status: StatusCode, text: &str) -> Response {
    let mut resp = Response::new(Body::from(text.to_owned()));
    *resp.status_mut() = status;
    insert(&mut resp, header::CONTENT_TYPE, "text/plain");
    resp
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    let mut resp = Response::new(Body::from(value.to_string()));
    *resp.status_mut() = status;
    insert(&mut resp, header::CONTENT_TYPE, "application/json");
    resp
}

/// The OCI error envelope.
fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    json(
        status,
        serde_json::json!({ "errors": [{ "code": code, "message": message }] }),
    )
}

#[cfg(test)]
mod tests;
