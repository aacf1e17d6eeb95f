//! [`RegistryClient`]: the distribution API of one registry.
//!
//! Invariants:
//! - every manifest returned was hashed and matched its reference digest and the registry's
//!   `Docker-Content-Digest` (else [`RegistryError::DigestMismatch`]); manifests over
//!   [`MAX_MANIFEST_BYTES`] are refused before being buffered;
//! - requests with replayable bodies are retried on `429`/`503` (honoring `Retry-After`, in seconds
//!   or HTTP-date form) and idempotent ones also on `500`/`502`/`504` and connection errors, with
//!   capped jittered backoff;
//!   streaming uploads are sent once, after auth is settled;
//! - concurrent blob transfers per registry are bounded by [`RegistryClient::transfer_slots`];
//!   connections are pooled and reused;
//! - every registry answer is hostile until checked. Credentials (`Authorization`, basic or
//!   bearer) go only to the registry's own origin (scheme, host and port of its configured URL):
//!   an upload `Location`, a pagination `Link` or a redirect naming another origin is followed
//!   without them, and one leaving https for plain http (or for another scheme) is refused
//!   ([`RegistryError::Refused`]). Tag lists and catalogs are cut off at [`MAX_LIST_ENTRIES`],
//!   [`MAX_LIST_BYTES`] and [`MAX_LIST_PAGES`]; no header, size or lifetime a registry sends can
//!   make the client panic or overflow.
//!
//! # Layout
//! - this file (`client/mod.rs`): the [`RegistryClient`] struct, its construction and settings,
//!   the errors it builds, and the request core — the credentials a request gets, `401`
//!   challenges, rate limits and the retries of `send` (with the backoff), and `dispatch`, the one
//!   place every request (token requests included) goes out and is counted
//!   ([`crate::oci::metrics`]).
//! - `credentials`: where the registry's credentials may go (its own origin only; the redirect
//!   policy and the `Location`/`Link` targets followed) and the bearer-token flow.
//! - `manifests`: manifests as exact, verified bytes (`GET`, `HEAD`, `PUT`, `DELETE`), tag deletes,
//!   the referrers API and Harbor labels.
//! - `blobs`: blob `HEAD` and streaming `GET` (with `Range`).
//! - `uploads`: upload sessions — start, mount, monolithic `PUT`, `PATCH` chunks, status, finish,
//!   cancel.
//! - `lists`: tag lists and the catalog, paginated and bounded.
//! - `harbor`: Harbor's own API for `type: harbor` registries — projects created before the first
//!   write into them, repositories listed without `_catalog`, and the refusals (project creation,
//!   quota, immutable tags) no retry fixes.
//! - `headers`: parsing the headers a registry controls (`Retry-After`, `Range`, `Content-Range`,
//!   `Link`, `RateLimit-*`).
//!
//! [`MAX_MANIFEST_BYTES`]: super::manifest::MAX_MANIFEST_BYTES
mod blobs;
mod credentials;
mod harbor;
mod headers;
mod lists;
mod manifests;
mod uploads;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use crate::locks::lock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use tokio::sync::Semaphore;
use url::Url;

use super::auth::{self, AuthState, Challenge, Scope};
use super::digest::Digest;
use super::error::{parse_error_body, RegistryError, Result};
use super::gate::{self, Gate, SharedGate};
use super::metrics::{Outcome, RegistryMetrics};
use crate::backoff::RetryPolicy;
use crate::config::{RegistryConfig, RegistryKind, Secret};

pub use blobs::BlobRead;
pub use headers::{
    parse_content_range, parse_next_link, parse_retry_after, parse_upload_range, RateLimit,
};
pub use lists::{MAX_LIST_BYTES, MAX_LIST_ENTRIES, MAX_LIST_PAGES};
pub use manifests::{HarborArtifact, RemoteDescriptor, TagDelete};
pub use uploads::{BlobUpload, MountOutcome};

use credentials::redirect_policy;
use harbor::HarborRead;

/// `User-Agent` of every request Ferry makes; agents recognize Ferry's own writes by it.
pub const USER_AGENT: &str = concat!("ferry/", env!("CARGO_PKG_VERSION"));

const DEFAULT_TRANSFERS: usize = 8;
const DEFAULT_CHUNK_SIZE: u64 = 16 * 1024 * 1024;
/// Blob size from which uploads are chunked (so resumable) when a registry sets no
/// `chunk_threshold`: 256 MiB, so every large blob can resume after a crash. (The source is read one
/// chunk ahead while the previous one is sent; what a chunked upload still costs against one `PUT`
/// is the registry's own work per `PATCH`: README, Benchmark (d).)
pub const DEFAULT_CHUNK_THRESHOLD: u64 = 256 * 1024 * 1024;
const MAX_ATTEMPTS: u32 = 6;
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Registry facts a ping reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiInfo {
    pub api_version: Option<String>,
    pub auth: Option<String>,
}

/// One registry's distribution API.
pub struct RegistryClient {
    name: String,
    base: Url,
    http: reqwest::Client,
    secret: Secret,
    auth: Mutex<AuthState>,
    transfers: Arc<Semaphore>,
    chunk_size: u64,
    /// The registry's `chunk_threshold`, when configured.
    chunk_threshold: Option<u64>,
    /// The threshold without one: [`DEFAULT_CHUNK_THRESHOLD`] (smaller in tests).
    default_chunk_threshold: u64,
    /// Whether the registry implements the OCI 1.1 referrers API, once learned (it never changes
    /// while the process runs), so later lookups skip the probe.
    referrers_api: std::sync::OnceLock<bool>,
    /// The last `RateLimit-Limit`/`RateLimit-Remaining` the registry announced.
    rate_limit: std::sync::Mutex<Option<RateLimit>>,
    /// Pauses after 429s and low quotas (shared by the region's workers) and the request rate.
    gate: Gate,
    /// Set once the registry refused a chunked upload: blobs then go up in one `PUT`.
    refuses_chunks: std::sync::atomic::AtomicBool,
    /// Set once the warning about a plain-http token realm on another origin was logged (it would
    /// repeat on every token fetch otherwise).
    warned_realm: AtomicBool,
    /// Where requests are counted once the process exports them ([`RegistryClient::export_metrics`]).
    metrics: OnceLock<RegistryMetrics>,
    /// The registry's `type`: a Harbor gets its projects made and is listed through its API.
    kind: RegistryKind,
    /// Harbor projects looked up (and created) once per process, each set once it is known to
    /// exist (`harbor`).
    harbor_projects: Mutex<std::collections::HashMap<String, Arc<tokio::sync::OnceCell<()>>>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("name", &self.name)
            .field("base", &self.base.as_str())
            .finish()
    }
}

enum Body {
    Empty,
    Bytes(Bytes),
}

impl RegistryClient {
    /// Builds a client for a configured registry. `secret` is the resolved credential.
    pub fn new(cfg: &RegistryConfig, secret: Secret) -> Result<Self> {
        let err = |message: String| RegistryError::Config {
            registry: cfg.name.clone(),
            message,
        };
        let mut base = Url::parse(&cfg.url).map_err(|e| err(format!("url {:?}: {e}", cfg.url)))?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(redirect_policy())
            .tcp_nodelay(true);
        if cfg.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &cfg.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| err(format!("ca_file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                err(format!(
                    "ca_file {}: not PEM certificates: {e}",
                    ca.display()
                ))
            })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| err(format!("cannot build HTTP client: {e}")))?;
        Ok(RegistryClient {
            name: cfg.name.clone(),
            base,
            http,
            secret,
            auth: Mutex::new(AuthState::default()),
            transfers: Arc::new(Semaphore::new(
                cfg.concurrency.unwrap_or(DEFAULT_TRANSFERS).max(1),
            )),
            chunk_size: cfg.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE).max(64 * 1024),
            refuses_chunks: std::sync::atomic::AtomicBool::new(false),
            gate: Gate::new(cfg.requests_per_second),
            chunk_threshold: cfg.chunk_threshold,
            default_chunk_threshold: DEFAULT_CHUNK_THRESHOLD,
            referrers_api: std::sync::OnceLock::new(),
            rate_limit: std::sync::Mutex::new(None),
            warned_realm: AtomicBool::new(false),
            metrics: OnceLock::new(),
            kind: cfg.kind,
            harbor_projects: Mutex::default(),
        })
    }

    /// The request quota the registry announced last, if it announces one.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        *lock(&self.rate_limit)
    }

    /// Whether this registry refused a chunked upload (then only monolithic uploads are tried).
    pub fn refuses_chunks(&self) -> bool {
        self.refuses_chunks
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Remembers that this registry takes monolithic uploads only.
    pub fn mark_refuses_chunks(&self) {
        self.refuses_chunks
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts this client's requests in `metrics` (the process's, exported at `/metrics`) from now
    /// on, and exports the registry's series at 0. The first call wins: a client counts into one
    /// process registry.
    pub fn export_metrics(&self, metrics: &RegistryMetrics) {
        if self.metrics.set(metrics.clone()).is_ok() {
            metrics.init(&self.name);
        }
    }

    /// Sends one request — to the registry, a host its answers pointed to, or its token realm —
    /// and counts it with its outcome and the time to its answer's headers. Every request of the
    /// client goes out here, so the counts are complete; retries are the callers' (each attempt is
    /// a request).
    async fn dispatch(
        &self,
        request: reqwest::RequestBuilder,
    ) -> std::result::Result<Response, reqwest::Error> {
        let request = request.build()?;
        let method = request.method().clone();
        let started = std::time::Instant::now();
        let result = self.http.execute(request).await;
        if let Some(metrics) = self.metrics.get() {
            let outcome = match &result {
                Ok(resp) => Outcome::Status(resp.status().as_u16()),
                Err(e) => Outcome::of_error(e),
            };
            metrics.request(&self.name, method.as_str(), outcome, started.elapsed());
        }
        result
    }

    /// Shares this registry's rate-limit pauses with the other processes of the region.
    pub fn share_gate(&self, shared: Arc<dyn SharedGate>) {
        self.gate.share(shared);
    }

    /// Remembers an announced quota; one nearly used up pauses the registry (everywhere) for
    /// [`gate::LOW_QUOTA_PAUSE`] rather than running into 429s.
    async fn note_rate_limit(&self, headers: &HeaderMap) {
        let Some(limit) = RateLimit::from_headers(headers) else {
            return;
        };
        *lock(&self.rate_limit) = Some(limit);
        if limit.remaining <= gate::low_quota_reserve(limit.limit) {
            let until = crate::clock::now_ms() + crate::clock::duration_ms(gate::LOW_QUOTA_PAUSE);
            let reason = format!(
                "RateLimit-Remaining is {} of {}",
                limit.remaining,
                limit.limit.map_or("?".to_string(), |l| l.to_string())
            );
            self.gate.pause(&self.name, until, &reason).await;
        }
    }

    /// The registry's name in the config file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Base URL (`scheme://host[:port]/`).
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Limits concurrent blob transfers touching this registry.
    pub fn transfer_slots(&self) -> &Arc<Semaphore> {
        &self.transfers
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Blob size from which uploads are chunked (the registry's `chunk_threshold`, else
    /// [`DEFAULT_CHUNK_THRESHOLD`]).
    pub fn chunk_threshold(&self) -> u64 {
        self.chunk_threshold.unwrap_or(self.default_chunk_threshold)
    }

    /// The same client with `threshold` standing in for [`DEFAULT_CHUNK_THRESHOLD`] (tests of the
    /// default that cannot move 256 MiB).
    #[cfg(test)]
    pub(crate) fn with_default_chunk_threshold(mut self, threshold: u64) -> Self {
        self.default_chunk_threshold = threshold;
        self
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base
            .join(path)
            .map_err(|e| RegistryError::InvalidResponse {
                registry: self.name.clone(),
                url: format!("{}{path}", self.base),
                message: format!("cannot build URL: {e}"),
            })
    }

    fn transport(&self, url: &Url, source: reqwest::Error) -> RegistryError {
        if source.is_redirect() {
            let reason = std::error::Error::source(&source)
                .map_or_else(|| source.to_string(), |c| c.to_string());
            return RegistryError::Refused {
                registry: self.name.clone(),
                url: redact(url),
                what: "a redirect",
                reason,
            };
        }
        RegistryError::Transport {
            registry: self.name.clone(),
            url: redact(url),
            cause: source,
        }
    }

    /// A `Range`/`Content-Range` that cannot be read or contradicts the request.
    fn bad_range(
        &self,
        repository: &str,
        digest: &Digest,
        url: &Url,
        header: &'static str,
        value: &str,
        reason: impl Into<String>,
    ) -> RegistryError {
        RegistryError::InvalidRange {
            registry: self.name.clone(),
            repository: repository.to_string(),
            digest: digest.to_string(),
            url: redact(url),
            message: format!("unusable {header} header {value:?}: {}", reason.into()),
        }
    }

    fn invalid(&self, url: &Url, message: impl Into<String>) -> RegistryError {
        RegistryError::InvalidResponse {
            registry: self.name.clone(),
            url: redact(url),
            message: message.into(),
        }
    }

    /// Turns a non-success response into an error carrying the OCI error envelope.
    async fn status_error(&self, method: &Method, url: &Url, resp: Response) -> RegistryError {
        let status = resp.status().as_u16();
        let body = read_limited(resp, 64 * 1024).await.unwrap_or_default();
        let errors = parse_error_body(&body);
        if let Some(refusal) = harbor::refusal(url, status, &errors) {
            return RegistryError::Harbor {
                registry: self.name.clone(),
                refusal,
            };
        }
        let (registry, method, url) = (self.name.clone(), method.to_string(), redact(url));
        if status == 401 || status == 403 {
            RegistryError::Denied {
                registry,
                method,
                url,
                status,
                errors,
            }
        } else {
            RegistryError::Status {
                registry,
                method,
                url,
                status,
                errors,
            }
        }
    }

    // ---- request core -------------------------------------------------------------------

    /// The `Authorization` for a request to `url` in `scope`: the registry's credentials on its
    /// own origin, none anywhere else.
    async fn authorization_for(&self, url: &Url, scope: &Scope) -> Result<Option<String>> {
        if !self.is_own_origin(url) {
            tracing::debug!(registry = %self.name, url = %redact(url), "another origin: sending no credentials");
            return Ok(None);
        }
        if self.is_harbor_api(url) {
            // Harbor's API takes the robot's credentials as they are, never a registry token.
            return Ok(auth::basic_header(&self.secret));
        }
        self.authorization(scope).await
    }

    /// Learns from a 401. Returns true when a retry with new credentials makes sense.
    fn learn_challenge(&self, headers: &HeaderMap, scope: &Scope, had_auth: bool) -> bool {
        let Some(ch) = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(auth::parse_challenge)
        else {
            return false;
        };
        let mut st = lock(&self.auth);
        let changed =
            st.challenge.as_ref().map(std::mem::discriminant) != Some(std::mem::discriminant(&ch));
        st.challenge = Some(ch.clone());
        match ch {
            // A request sent before a concurrent one learned the challenge went out without
            // credentials: it is worth another attempt with them too.
            Challenge::Basic => (changed || !had_auth) && !matches!(self.secret, Secret::Anonymous),
            // A bearer challenge: retry when we sent nothing, or our cached token may be stale.
            Challenge::Bearer { .. } => {
                if had_auth {
                    // Force a fresh token next time; retry only once (caller bounds it).
                    st.store_token(&scope.key(), String::new(), Duration::ZERO);
                }
                true
            }
        }
    }

    /// Sends a request with a replayable body, handling auth challenges, rate limits and
    /// transient failures. Returns the response whatever its status (after retries).
    async fn send(
        &self,
        method: Method,
        url: Url,
        scope: &Scope,
        headers: HeaderMap,
        body: Body,
    ) -> Result<Response> {
        let idempotent = matches!(method, Method::GET | Method::HEAD);
        self.harbor_before(&method, &url).await?;
        let mut auth_retries = 0;
        let mut harbor_rechecked = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let authz = self.authorization_for(&url, scope).await?;
            self.gate.wait(&self.name).await;
            let req = self.build_request(&method, &url, &headers, authz.as_ref(), &body);
            let started = std::time::Instant::now();
            let resp = match self.dispatch(req).await {
                Ok(r) => r,
                Err(e)
                    if idempotent
                        && attempt < MAX_ATTEMPTS
                        && (e.is_connect() || e.is_timeout() || e.is_request()) =>
                {
                    let d = backoff(attempt);
                    tracing::debug!(registry = %self.name, url = %redact(&url), error = %e, delay_ms = d.as_millis() as u64, "retrying after transport error");
                    tokio::time::sleep(d).await;
                    continue;
                }
                Err(e) => return Err(self.transport(&url, e)),
            };
            let status = resp.status();
            // Another origin (a redirect target, a foreign Location) speaks for itself, not for
            // the registry: its quotas and challenges are not the registry's.
            let own_answer = self.is_own_origin(resp.url());
            if own_answer {
                self.note_rate_limit(resp.headers()).await;
            }
            tracing::trace!(registry = %self.name, method = %method, url = %redact(&url), status = status.as_u16(), ms = started.elapsed().as_millis() as u64, "registry request");
            if status == StatusCode::UNAUTHORIZED
                && own_answer
                && auth_retries < 2
                && !self.is_harbor_api(&url)
                && self.learn_challenge(resp.headers(), scope, authz.is_some())
            {
                auth_retries += 1;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED
                && own_answer
                && !harbor_rechecked
                && !matches!(method, Method::POST | Method::PUT | Method::PATCH)
            {
                match self.harbor_read_refused(&url).await? {
                    HarborRead::ProjectMissing(answer) => return Ok(answer),
                    // Refused while the project did not exist yet, or refused for good: one more
                    // attempt tells.
                    HarborRead::ProjectExists => {
                        harbor_rechecked = true;
                        continue;
                    }
                    HarborRead::NotHarbor => {}
                }
            }
            if retryable_status(status, idempotent) {
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                if attempt >= MAX_ATTEMPTS {
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        return Err(RegistryError::RateLimited {
                            registry: self.name.clone(),
                            url: redact(&url),
                            attempts: attempt,
                            retry_after,
                        });
                    }
                    return Ok(resp);
                }
                self.wait_to_retry(&url, status, retry_after, attempt).await;
                continue;
            }
            return Ok(resp);
        }
    }

    /// The request of one attempt: `headers`, the credentials `authz` (if any) and a copy of `body`.
    fn build_request(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        authz: Option<&String>,
        body: &Body,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .headers(headers.clone());
        if let Some(a) = authz {
            req = req.header(AUTHORIZATION, a);
        }
        match body {
            Body::Empty => req,
            Body::Bytes(b) => req.body(b.clone()),
        }
    }

    /// Waits before retrying after a retryable `status`: a 429 pauses every worker of the region
    /// at the gate, anything else sleeps here.
    async fn wait_to_retry(
        &self,
        url: &Url,
        status: StatusCode,
        retry_after: Option<Duration>,
        attempt: u32,
    ) {
        let d = retry_delay(retry_after, attempt);
        tracing::info!(registry = %self.name, url = %redact(url), status = status.as_u16(), delay_ms = d.as_millis() as u64, "registry asked us to slow down");
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Every worker of the region waits too; the next attempt waits at the gate.
            let until = crate::clock::now_ms() + crate::clock::duration_ms(d);
            self.gate
                .pause(&self.name, until, "429 Too Many Requests")
                .await;
        } else {
            tokio::time::sleep(d).await;
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        scope: &Scope,
        headers: HeaderMap,
        body: Body,
    ) -> Result<(Url, Response)> {
        let url = self.url(path)?;
        let resp = self.send(method, url.clone(), scope, headers, body).await?;
        Ok((url, resp))
    }

    /// `GET /v2/`: reachability and credentials.
    pub async fn ping(&self) -> Result<ApiInfo> {
        let (url, resp) = self
            .request(
                Method::GET,
                "v2/",
                &Scope::registry(),
                HeaderMap::new(),
                Body::Empty,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::GET, &url, resp).await);
        }
        let api_version = header_str(resp.headers(), "docker-distribution-api-version");
        let auth = lock(&self.auth).challenge.as_ref().map(|c| match c {
            Challenge::Basic => "basic".to_string(),
            Challenge::Bearer { .. } => "bearer".to_string(),
        });
        Ok(ApiInfo { api_version, auth })
    }
}

fn content_length_zero() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
    h
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// URL for messages: no query (upload `_state` tokens are long and may be sensitive).
fn redact(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

/// Reads a body up to `limit` bytes (one more is read to detect an overflow).
async fn read_limited(resp: Response, limit: u64) -> std::result::Result<Bytes, reqwest::Error> {
    let mut buf = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let room = (limit + 1).saturating_sub(buf.len() as u64) as usize;
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() as u64 > limit {
            break;
        }
    }
    Ok(buf.freeze())
}

/// The backoff of a retried request: the queue's capped, jittered exponential backoff
/// ([`crate::backoff`]) from 200 ms, doubling up to 6.4 s (the curve requests always had).
const REQUEST_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: MAX_ATTEMPTS,
    base: Duration::from_millis(200),
    max: Duration::from_millis(6_400),
};

/// The delay before retrying a request after failed attempt `attempt` (1-based): from
/// [`REQUEST_RETRY`], each delay drawn from `[ceiling / 2, ceiling]`.
pub fn backoff(attempt: u32) -> Duration {
    crate::backoff::delay(&REQUEST_RETRY, attempt)
}

/// Whether an answer with `status` is worth another attempt: 429 and 503 always, 500, 502 and
/// 504 only for reads (`idempotent`).
fn retryable_status(status: StatusCode, idempotent: bool) -> bool {
    // 500 is retried for reads: distribution 2.8 answers it when a read races a concurrent
    // non-atomic write of a link file ("invalid checksum digest format").
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::SERVICE_UNAVAILABLE
        || (idempotent
            && matches!(
                status,
                StatusCode::INTERNAL_SERVER_ERROR
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::GATEWAY_TIMEOUT
            ))
}

/// How long to wait before retrying after a 429/503: what the registry's `Retry-After` asks, at
/// most [`MAX_RETRY_DELAY`] (any number it sends is fine), else the backoff of `attempt`.
fn retry_delay(retry_after: Option<Duration>, attempt: u32) -> Duration {
    retry_after
        .map(|d| d.min(MAX_RETRY_DELAY))
        .unwrap_or_else(|| backoff(attempt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest;

    #[test]
    fn a_bad_range_error_names_registry_repository_and_digest() {
        let client = client_for("us", "http://127.0.0.1:9", Secret::Anonymous);
        let digest = digest::sha256(b"layer");
        let url =
            Url::parse("http://127.0.0.1:9/v2/team/app/blobs/uploads/u1?_state=secret").unwrap();
        let e = client.bad_range("team/app", &digest, &url, "Range", "0-x", "not a number");
        let s = e.to_string();
        assert!(
            s.contains("registry us")
                && s.contains(&format!("team/app@{digest}"))
                && s.contains("\"0-x\"")
                && !s.contains("secret"),
            "{s}"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn a_retry_after_of_any_size_waits_at_most_the_cap() {
        let huge = parse_retry_after("18446744073709551615");
        assert_eq!(retry_delay(huge, 1), MAX_RETRY_DELAY);
        let far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(retry_delay(far, 1), MAX_RETRY_DELAY);
        assert_eq!(
            retry_delay(Some(Duration::from_secs(2)), 1),
            Duration::from_secs(2)
        );
    }

    pub(super) fn client_for(name: &str, url: &str, secret: Secret) -> RegistryClient {
        let cfg: crate::config::RegistryConfig =
            serde_json::from_value(serde_json::json!({"name": name, "url": url, "insecure": true}))
                .unwrap();
        RegistryClient::new(&cfg, secret).unwrap()
    }

    #[test]
    fn reads_are_retried_on_server_errors_and_writes_only_on_429_and_503() {
        for status in [
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert!(retryable_status(status, true), "{status}");
            assert!(retryable_status(status, false), "{status}");
        }
        for status in [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::GATEWAY_TIMEOUT,
        ] {
            assert!(retryable_status(status, true), "{status}");
            assert!(!retryable_status(status, false), "{status}");
        }
        for status in [
            StatusCode::OK,
            StatusCode::NOT_FOUND,
            StatusCode::UNAUTHORIZED,
            StatusCode::NOT_IMPLEMENTED,
        ] {
            assert!(!retryable_status(status, true), "{status}");
        }
    }

    #[test]
    fn backoff_is_capped_and_grows() {
        for a in 1..20 {
            assert!(backoff(a) <= Duration::from_secs(10));
        }
        assert!(backoff(1) <= Duration::from_millis(200));
    }

    #[test]
    fn request_backoff_doubles_from_200ms_and_caps_at_6400ms() {
        let ceilings: Vec<u128> = (1..=8)
            .map(|a| crate::backoff::ceiling(&REQUEST_RETRY, a).as_millis())
            .collect();
        assert_eq!(ceilings, [200, 400, 800, 1_600, 3_200, 6_400, 6_400, 6_400]);
        for attempt in 1..=8 {
            let c = crate::backoff::ceiling(&REQUEST_RETRY, attempt);
            let d = backoff(attempt);
            assert!(
                d >= c / 2 && d <= c,
                "attempt {attempt}: {d:?} outside [{:?}, {c:?}]",
                c / 2
            );
        }
    }
}
