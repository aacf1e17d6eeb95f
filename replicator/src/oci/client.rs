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
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::locks::lock;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use oci_spec::image::{Descriptor, ImageIndex};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use tokio::sync::Semaphore;
use url::Url;

use super::auth::{self, AuthState, Challenge, Scope, TokenResponse};
use super::digest::{self, Digest, DigestVerifier};
use super::error::{parse_error_body, RegistryError, Result};
use super::gate::{self, Gate, SharedGate};
use super::manifest::{self, Manifest, MAX_MANIFEST_BYTES};
use crate::backoff::RetryPolicy;
use crate::config::{RegistryConfig, Secret};

/// `User-Agent` of every request Ferry makes; agents recognize Ferry's own writes by it.
pub const USER_AGENT: &str = concat!("ferry/", env!("CARGO_PKG_VERSION"));

const DEFAULT_TRANSFERS: usize = 8;
const DEFAULT_CHUNK_SIZE: u64 = 16 * 1024 * 1024;
const MAX_ATTEMPTS: u32 = 6;
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
const PAGE_SIZE: usize = 1000;
/// The largest token endpoint answer read (real ones are a few KiB: a JWT or two).
const MAX_TOKEN_RESPONSE_BYTES: u64 = 1024 * 1024;
/// Redirects followed for one request (reqwest's default too); a longer chain is refused.
const MAX_REDIRECTS: usize = 10;

/// Entries one tag list or catalog may hold across all its pages: far more than one repository or
/// catalog holds in practice, while a hostile endless list stays under ~100 MB of memory (the
/// names within [`MAX_LIST_BYTES`] plus a `String` each).
pub const MAX_LIST_ENTRIES: usize = 1_000_000;
/// Bytes of page bodies one tag list or catalog may take across all its pages: a million 60-byte
/// names with JSON quoting; more is a registry sending padding, not names.
pub const MAX_LIST_BYTES: u64 = 64 * 1024 * 1024;
/// Pages one tag list or catalog may take: room for [`MAX_LIST_ENTRIES`] even from a registry that
/// caps `n` at 100 entries a page, so only one answering near-empty pages forever meets it.
pub const MAX_LIST_PAGES: usize = 10_000;

/// What a HEAD on a manifest tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDescriptor {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// An open blob upload session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobUpload {
    pub repository: String,
    pub location: Url,
    /// Bytes the registry has confirmed so far.
    pub offset: u64,
}

/// A blob `GET` that answered: the body starts at byte `start` of the blob.
#[derive(Debug)]
pub struct BlobRead {
    pub response: Response,
    /// The requested offset when the registry honored the `Range` (206), 0 when it ignored it and
    /// sent the whole blob (200): the caller skips `offset - start` bytes.
    pub start: u64,
}

/// Result of a cross-repository mount request.
#[derive(Debug)]
pub enum MountOutcome {
    Mounted,
    /// The registry opened an upload session instead (it could not or would not mount).
    NotMounted(BlobUpload),
}

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
    chunk_threshold: Option<u64>,
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
}

/// Why following a `Location`, `Link` or redirect from `from` to `to` is refused, if it is: a
/// scheme other than http(s), or plain http after https (the blob, the upload session and any
/// token would cross the network in clear text).
fn refusal(from: &Url, to: &Url) -> Option<String> {
    match to.scheme() {
        "https" => None,
        "http" if from.scheme() != "https" => None,
        "http" => Some(format!(
            "{} leaves https for plain http; the registry's external URL (or its proxy's) must keep https",
            redact(to)
        )),
        other => Some(format!(
            "{} has scheme {other:?}; only http and https are followed",
            redact(to)
        )),
    }
}

/// What a refused redirect carries to the caller (inside reqwest's error); see [`refusal`].
#[derive(Debug)]
struct RedirectRefused(String);

impl std::fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedirectRefused {}

/// Ferry's redirect policy: at most [`MAX_REDIRECTS`] hops, none that [`refusal`] refuses. reqwest
/// itself drops `Authorization` when a hop changes host or port (reqwest 0.12
/// `redirect::remove_sensitive_headers`), so a blob `GET` redirected to object storage arrives there
/// without the registry's credentials; with https→http refused here, no hop can carry them in clear
/// text either.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            let e = RedirectRefused(format!("more than {MAX_REDIRECTS} redirects"));
            return attempt.error(e);
        }
        let refused = attempt
            .previous()
            .last()
            .and_then(|from| refusal(from, attempt.url()));
        match refused {
            Some(reason) => attempt.error(RedirectRefused(reason)),
            None => attempt.follow(),
        }
    })
}

/// What a tag-only delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagDelete {
    Deleted,
    /// The tag was not there.
    Missing,
    /// The registry deletes manifests by digest only.
    Unsupported,
}

/// A registry's announced request quota (Docker Hub: `RateLimit-Remaining: 76;w=21600`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: Option<u64>,
    pub remaining: u64,
}

impl RateLimit {
    /// From response headers; `None` when the registry sends no (readable) `RateLimit-Remaining`.
    pub fn from_headers(headers: &reqwest::header::HeaderMap) -> Option<RateLimit> {
        let count = |name: &str| {
            let v = headers.get(name)?.to_str().ok()?;
            v.split(';').next()?.trim().parse::<u64>().ok()
        };
        Some(RateLimit {
            remaining: count("ratelimit-remaining")?,
            limit: count("ratelimit-limit"),
        })
    }
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
            referrers_api: std::sync::OnceLock::new(),
            rate_limit: std::sync::Mutex::new(None),
            warned_realm: AtomicBool::new(false),
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

    /// Blob size from which uploads are chunked, when configured.
    pub fn chunk_threshold(&self) -> Option<u64> {
        self.chunk_threshold
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

    // ---- auth -------------------------------------------------------------------------------

    /// Whether `url` is on the registry's own origin (scheme, host and port of its configured
    /// URL): the only place its credentials go.
    fn is_own_origin(&self, url: &Url) -> bool {
        url.origin() == self.base.origin()
    }

    /// Whether a token realm may be sent the registry's credentials: on the registry's own origin,
    /// or over https elsewhere (a plain-http realm on another host could be anyone on the path).
    fn realm_gets_credentials(&self, realm: &Url) -> bool {
        self.is_own_origin(realm) || realm.scheme() == "https"
    }

    /// A URL the registry pointed a request at `from` to (`what`: an upload `Location`, a
    /// pagination `Link`), resolved against `from`; refused as [`refusal`] says.
    fn follow(&self, from: &Url, what: &'static str, target: &str) -> Result<Url> {
        let url = from
            .join(target)
            .map_err(|e| self.invalid(from, format!("bad {what} {target:?}: {e}")))?;
        match refusal(from, &url) {
            Some(reason) => Err(RegistryError::Refused {
                registry: self.name.clone(),
                url: redact(from),
                what,
                reason,
            }),
            None => Ok(url),
        }
    }

    /// The `Authorization` for a request to `url` in `scope`: the registry's credentials on its
    /// own origin, none anywhere else.
    async fn authorization_for(&self, url: &Url, scope: &Scope) -> Result<Option<String>> {
        if !self.is_own_origin(url) {
            tracing::debug!(registry = %self.name, url = %redact(url), "another origin: sending no credentials");
            return Ok(None);
        }
        self.authorization(scope).await
    }

    async fn authorization(&self, scope: &Scope) -> Result<Option<String>> {
        let challenge = lock(&self.auth).challenge.clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(auth::basic_header(&self.secret)),
            Some(Challenge::Bearer {
                realm,
                service,
                scope: challenge_scope,
            }) => {
                let mut scopes = scope.clone();
                if let Some(cs) = challenge_scope {
                    if scopes.0.is_empty() && !cs.is_empty() {
                        scopes.0.push(cs);
                    }
                }
                let key = scopes.key();
                if let Some(t) = lock(&self.auth).cached_token(&key) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let (token, ttl) = self
                    .fetch_token(&realm, service.as_deref(), &scopes)
                    .await?;
                lock(&self.auth).store_token(&key, token.clone(), ttl);
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &Scope,
    ) -> Result<(String, Duration)> {
        let auth_err = |message: String| RegistryError::Auth {
            registry: self.name.clone(),
            message,
        };
        let mut url = Url::parse(realm)
            .map_err(|e| auth_err(format!("token realm {realm:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(auth_err(format!(
                "token realm {} is not an http(s) URL",
                redact(&url)
            )));
        }
        let credentials = if self.realm_gets_credentials(&url) {
            auth::basic_header(&self.secret)
        } else {
            if !matches!(self.secret, Secret::Anonymous)
                && !self.warned_realm.swap(true, Ordering::Relaxed)
            {
                tracing::warn!(registry = %self.name, realm = %redact(&url), "token realm is plain http on another origin; asking it for tokens without the registry's credentials (serve the realm over https to use them)");
            }
            None
        };
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in &scope.0 {
                q.append_pair("scope", s);
            }
        }
        let mut req = self.http.get(url.clone());
        if let Some(h) = credentials {
            req = req.header(AUTHORIZATION, h);
        }
        let resp = req.send().await.map_err(|e| self.transport(&url, e))?;
        let status = resp.status();
        let body = read_limited(resp, MAX_TOKEN_RESPONSE_BYTES)
            .await
            .map_err(|e| self.transport(&url, e))?;
        if body.len() as u64 > MAX_TOKEN_RESPONSE_BYTES {
            return Err(auth_err(format!(
                "token endpoint {} answered more than {MAX_TOKEN_RESPONSE_BYTES} bytes",
                redact(&url)
            )));
        }
        if !status.is_success() {
            let detail = parse_error_body(&body)
                .into_iter()
                .map(|e| format!("{} {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(auth_err(format!(
                "token endpoint {} answered {status}{}{}",
                redact(&url),
                if detail.trim().is_empty() { "" } else { ": " },
                detail.trim()
            )));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            auth_err(format!(
                "token endpoint {} sent invalid JSON: {e}",
                redact(&url)
            ))
        })?;
        parsed
            .into_token()
            .ok_or_else(|| auth_err(format!("token endpoint {} sent no token", redact(&url))))
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
            Challenge::Basic => changed && !matches!(self.secret, Secret::Anonymous),
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

    // ---- request core -------------------------------------------------------------------

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
        let mut auth_retries = 0;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let authz = self.authorization_for(&url, scope).await?;
            self.gate.wait(&self.name).await;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(a) = &authz {
                req = req.header(AUTHORIZATION, a);
            }
            req = match &body {
                Body::Empty => req,
                Body::Bytes(b) => req.body(b.clone()),
            };
            let started = std::time::Instant::now();
            let resp = match req.send().await {
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
                && self.learn_challenge(resp.headers(), scope, authz.is_some())
            {
                auth_retries += 1;
                continue;
            }
            // 500 is retried for reads: distribution 2.8 answers it when a read races a concurrent
            // non-atomic write of a link file ("invalid checksum digest format").
            let retryable = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE
                || (idempotent
                    && matches!(
                        status,
                        StatusCode::INTERNAL_SERVER_ERROR
                            | StatusCode::BAD_GATEWAY
                            | StatusCode::GATEWAY_TIMEOUT
                    ));
            if retryable {
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
                let d = retry_delay(retry_after, attempt);
                tracing::info!(registry = %self.name, url = %redact(&url), status = status.as_u16(), delay_ms = d.as_millis() as u64, "registry asked us to slow down");
                if status == StatusCode::TOO_MANY_REQUESTS {
                    // Every worker of the region waits too; the next attempt waits at the gate.
                    let until = crate::clock::now_ms() + crate::clock::duration_ms(d);
                    self.gate
                        .pause(&self.name, until, "429 Too Many Requests")
                        .await;
                } else {
                    tokio::time::sleep(d).await;
                }
                continue;
            }
            return Ok(resp);
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

    // ---- API ------------------------------------------------------------------------------

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

    fn manifest_path(repository: &str, reference: &str) -> String {
        format!("v2/{repository}/manifests/{reference}")
    }

    fn accept_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT,
            HeaderValue::from_str(&manifest::ACCEPT.join(", ")).expect("static header"),
        );
        h
    }

    /// `GET` a manifest by tag or digest; the bytes are verified against the digest.
    pub async fn get_manifest(&self, repository: &str, reference: &str) -> Result<Manifest> {
        let (url, resp) = self
            .request(
                Method::GET,
                &Self::manifest_path(repository, reference),
                &Scope::pull(repository),
                Self::accept_headers(),
                Body::Empty,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::GET, &url, resp).await);
        }
        let too_large = |size| RegistryError::ManifestTooLarge {
            registry: self.name.clone(),
            repository: repository.to_string(),
            reference: reference.to_string(),
            size,
            limit: MAX_MANIFEST_BYTES,
        };
        if let Some(len) = resp.content_length().filter(|l| *l > MAX_MANIFEST_BYTES) {
            return Err(too_large(len));
        }
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        let header_digest = header_str(resp.headers(), "docker-content-digest");
        let bytes = match read_limited(resp, MAX_MANIFEST_BYTES + 1).await {
            Ok(b) if b.len() as u64 > MAX_MANIFEST_BYTES => return Err(too_large(b.len() as u64)),
            Ok(b) => b,
            Err(e) => return Err(self.transport(&url, e)),
        };
        let media_type = manifest::effective_media_type(content_type.as_deref(), &bytes);
        // The digest to trust: the one we asked for, else the registry's header, else our hash.
        let requested = digest::parse(reference);
        let claimed = requested
            .clone()
            .or_else(|| header_digest.as_deref().and_then(digest::parse));
        let computed = digest::sha256(&bytes);
        let digest = match claimed {
            Some(expected) => {
                self.verify_bytes(repository, &expected, &bytes)?;
                if let (Some(req), Some(hd)) =
                    (&requested, header_digest.as_deref().and_then(digest::parse))
                {
                    if req.algorithm() == hd.algorithm() && req != &hd {
                        return Err(RegistryError::DigestMismatch {
                            registry: self.name.clone(),
                            repository: repository.to_string(),
                            expected: req.to_string(),
                            actual: hd.to_string(),
                        });
                    }
                }
                expected
            }
            None => computed,
        };
        Ok(Manifest {
            media_type,
            digest,
            bytes,
        })
    }

    fn verify_bytes(&self, repository: &str, expected: &Digest, bytes: &[u8]) -> Result<()> {
        let mismatch = |actual: String| RegistryError::DigestMismatch {
            registry: self.name.clone(),
            repository: repository.to_string(),
            expected: expected.to_string(),
            actual,
        };
        let mut v = DigestVerifier::new(expected)
            .ok_or_else(|| mismatch(format!("<unsupported algorithm {}>", expected.algorithm())))?;
        v.update(bytes);
        v.finish().map_err(mismatch)
    }

    /// The successful answer to a manifest `HEAD` (with the same `Accept` as a `GET`, or the
    /// digest could differ); `None` on 404.
    async fn head_manifest_response(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(Url, Response)>> {
        let (url, resp) = self
            .request(
                Method::HEAD,
                &Self::manifest_path(repository, reference),
                &Scope::pull(repository),
                Self::accept_headers(),
                Body::Empty,
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::HEAD, &url, resp).await);
        }
        Ok(Some((url, resp)))
    }

    /// `HEAD` a manifest: `None` when it does not exist.
    pub async fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<RemoteDescriptor>> {
        let Some((_, resp)) = self.head_manifest_response(repository, reference).await? else {
            return Ok(None);
        };
        let media_type = header_str(resp.headers(), CONTENT_TYPE.as_str()).unwrap_or_default();
        let size = resp.content_length().unwrap_or(0);
        match header_str(resp.headers(), "docker-content-digest")
            .as_deref()
            .and_then(digest::parse)
        {
            Some(digest) => Ok(Some(RemoteDescriptor {
                digest,
                media_type,
                size,
            })),
            // Some registries omit the header on HEAD: fall back to GET and hash.
            None => {
                let m = self.get_manifest(repository, reference).await?;
                Ok(Some(RemoteDescriptor {
                    size: m.bytes.len() as u64,
                    digest: m.digest,
                    media_type: m.media_type,
                }))
            }
        }
    }

    /// The digest `repository:reference` resolves to, by `HEAD` only (never a `GET`, which some
    /// registries count against pull limits): `Ok(None)` when it does not exist, an error when the
    /// registry does not send `Docker-Content-Digest`.
    pub async fn head_digest(&self, repository: &str, reference: &str) -> Result<Option<Digest>> {
        let Some((url, resp)) = self.head_manifest_response(repository, reference).await? else {
            return Ok(None);
        };
        match header_str(resp.headers(), "docker-content-digest")
            .as_deref()
            .and_then(digest::parse)
        {
            Some(d) => Ok(Some(d)),
            None => Err(RegistryError::InvalidResponse {
                registry: self.name.clone(),
                url: redact(&url),
                message: "HEAD of a manifest answered without a valid Docker-Content-Digest header"
                    .into(),
            }),
        }
    }

    /// `PUT` a manifest (exact bytes) under a tag or its digest.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        m: &Manifest,
    ) -> Result<()> {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(&m.media_type).map_err(|_| {
                self.invalid(
                    &self.base,
                    format!("media type {:?} is not a valid header", m.media_type),
                )
            })?,
        );
        let (url, resp) = self
            .request(
                Method::PUT,
                &Self::manifest_path(repository, reference),
                &Scope::push(repository),
                h,
                Body::Bytes(m.bytes.clone()),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::PUT, &url, resp).await);
        }
        if let Some(d) = header_str(resp.headers(), "docker-content-digest")
            .as_deref()
            .and_then(digest::parse)
        {
            if d.algorithm() == m.digest.algorithm() && d != m.digest {
                return Err(RegistryError::DigestMismatch {
                    registry: self.name.clone(),
                    repository: repository.to_string(),
                    expected: m.digest.to_string(),
                    actual: d.to_string(),
                });
            }
        }
        Ok(())
    }

    /// `DELETE` a manifest by digest. Returns false when it was already gone.
    pub async fn delete_manifest(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let (url, resp) = self
            .request(
                Method::DELETE,
                &Self::manifest_path(repository, digest.as_ref()),
                &Scope::push(repository),
                HeaderMap::new(),
                Body::Empty,
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(&Method::DELETE, &url, resp).await),
        }
    }

    /// `DELETE /v2/<repo>/manifests/<tag>`: removes the tag alone, where the registry supports it
    /// (OCI distribution 1.1 allows it; distribution 2.8 answers 400 and deletes only by digest).
    pub async fn delete_tag(&self, repository: &str, tag: &str) -> Result<TagDelete> {
        let (url, resp) = self
            .request(
                Method::DELETE,
                &Self::manifest_path(repository, tag),
                &Scope::push(repository),
                HeaderMap::new(),
                Body::Empty,
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(TagDelete::Deleted),
            StatusCode::NOT_FOUND => Ok(TagDelete::Missing),
            StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => Ok(TagDelete::Unsupported),
            _ => Err(self.status_error(&Method::DELETE, &url, resp).await),
        }
    }

    /// The label names of `repository:reference` through Harbor's API
    /// (`/api/v2.0/projects/<project>/repositories/<rest>/artifacts/<ref>?with_label=true`, the
    /// rest of the path percent-encoded twice, as Harbor wants); `None` when that answers 404 (no
    /// such artifact, or not a Harbor).
    pub async fn harbor_labels(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Vec<String>>> {
        #[derive(serde::Deserialize)]
        struct Artifact {
            #[serde(default)]
            labels: Option<Vec<Label>>,
        }
        #[derive(serde::Deserialize)]
        struct Label {
            name: String,
        }
        let (project, rest) = repository.split_once('/').ok_or_else(|| {
            self.invalid(
                &self.base,
                format!(
                    "repository {repository:?} has no project (Harbor paths are <project>/<name>)"
                ),
            )
        })?;
        let url = self.url(&format!(
            "api/v2.0/projects/{project}/repositories/{}/artifacts/{reference}?with_label=true",
            rest.replace('/', "%252F")
        ))?;
        self.gate.wait(&self.name).await;
        let mut req = self
            .http
            .get(url.clone())
            .header(ACCEPT, "application/json");
        if let Some(h) = auth::basic_header(&self.secret) {
            req = req.header(AUTHORIZATION, h);
        }
        let resp = req.send().await.map_err(|e| self.transport(&url, e))?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let body = read_limited(resp, 4 * 1024 * 1024)
                    .await
                    .map_err(|e| self.transport(&url, e))?;
                let artifact: Artifact = serde_json::from_slice(&body)
                    .map_err(|e| self.invalid(&url, format!("Harbor artifact JSON: {e}")))?;
                Ok(Some(
                    artifact
                        .labels
                        .unwrap_or_default()
                        .into_iter()
                        .map(|l| l.name)
                        .collect(),
                ))
            }
            _ => Err(self.status_error(&Method::GET, &url, resp).await),
        }
    }

    /// `HEAD` a blob: its size when present, `None` when absent.
    pub async fn blob_exists(&self, repository: &str, digest: &Digest) -> Result<Option<u64>> {
        let (url, resp) = self
            .request(
                Method::HEAD,
                &format!("v2/{repository}/blobs/{digest}"),
                &Scope::pull(repository),
                HeaderMap::new(),
                Body::Empty,
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp.content_length().unwrap_or(0))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.status_error(&Method::HEAD, &url, resp).await),
        }
    }

    /// Streaming `GET` of a blob from `offset` (a `Range` request when non-zero). A registry may
    /// ignore the `Range` and send the whole blob: [`BlobRead::start`] says where the body starts.
    /// The caller verifies the digest while consuming the body.
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobRead> {
        let mut h = HeaderMap::new();
        if offset > 0 {
            h.insert(
                reqwest::header::RANGE,
                HeaderValue::from_str(&format!("bytes={offset}-")).expect("ascii"),
            );
        }
        let (url, resp) = self
            .request(
                Method::GET,
                &format!("v2/{repository}/blobs/{digest}"),
                &Scope::pull(repository),
                h,
                Body::Empty,
            )
            .await?;
        if resp.status() == StatusCode::PARTIAL_CONTENT {
            let value = header_str(resp.headers(), "content-range").unwrap_or_default();
            let (start, _, _) = parse_content_range(&value).map_err(|reason| {
                self.bad_range(repository, digest, &url, "Content-Range", &value, reason)
            })?;
            if start != offset {
                return Err(self.bad_range(
                    repository,
                    digest,
                    &url,
                    "Content-Range",
                    &value,
                    format!("asked for the bytes from {offset}"),
                ));
            }
            return Ok(BlobRead {
                response: resp,
                start,
            });
        }
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::GET, &url, resp).await);
        }
        Ok(BlobRead {
            response: resp,
            start: 0,
        })
    }

    /// The session URL an upload answer names (`Location`, resolved against the base URL).
    fn upload_location(&self, url: &Url, resp: &Response) -> Result<Url> {
        let loc = header_str(resp.headers(), LOCATION.as_str())
            .ok_or_else(|| self.invalid(url, "upload answer has no Location header"))?;
        self.follow(url, "an upload Location", &loc)
    }

    /// A session that was just opened (it holds no bytes).
    fn new_upload(&self, repository: &str, url: &Url, resp: &Response) -> Result<BlobUpload> {
        Ok(BlobUpload {
            repository: repository.to_string(),
            location: self.upload_location(url, resp)?,
            offset: 0,
        })
    }

    /// Opens an upload session.
    pub async fn start_upload(&self, repository: &str) -> Result<BlobUpload> {
        let (url, resp) = self
            .request(
                Method::POST,
                &format!("v2/{repository}/blobs/uploads/"),
                &Scope::push(repository),
                content_length_zero(),
                Body::Empty,
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(&Method::POST, &url, resp).await);
        }
        self.new_upload(repository, &url, &resp)
    }

    /// Cross-repository mount of `digest` from `from` into `repository`.
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<MountOutcome> {
        let path = format!("v2/{repository}/blobs/uploads/?mount={digest}&from={from}");
        let (url, resp) = self
            .request(
                Method::POST,
                &path,
                &Scope::mount(repository, from),
                content_length_zero(),
                Body::Empty,
            )
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(MountOutcome::Mounted),
            StatusCode::ACCEPTED => Ok(MountOutcome::NotMounted(
                self.new_upload(repository, &url, &resp)?,
            )),
            _ => Err(self.status_error(&Method::POST, &url, resp).await),
        }
    }

    /// Makes sure the next request in `scope` carries valid credentials (so a streaming request,
    /// which cannot be replayed after a 401, goes out authorized).
    pub async fn prepare_push(&self, repository: &str) -> Result<Option<String>> {
        self.authorization(&Scope::push(repository)).await
    }

    /// Completes an upload with the whole blob as a streaming body (one `PUT`, sent once).
    pub async fn put_blob_stream(
        &self,
        upload: &BlobUpload,
        digest: &Digest,
        size: u64,
        body: reqwest::Body,
    ) -> Result<()> {
        let mut url = upload.location.clone();
        url.query_pairs_mut().append_pair("digest", digest.as_ref());
        let mut req = self
            .http
            .put(url.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body);
        let scope = Scope::push(&upload.repository);
        if let Some(a) = self.authorization_for(&url, &scope).await? {
            req = req.header(AUTHORIZATION, a);
        }
        self.gate.wait(&self.name).await;
        let resp = req.send().await.map_err(|e| self.transport(&url, e))?;
        self.note_rate_limit(resp.headers()).await;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(self.status_error(&Method::PUT, &url, resp).await);
        }
        Ok(())
    }

    /// Sends one chunk of blob `digest` (`PATCH` with `Content-Range`); returns the session with its
    /// new location and the offset the registry confirmed.
    pub async fn patch_chunk(
        &self,
        upload: &BlobUpload,
        digest: &Digest,
        chunk: Bytes,
    ) -> Result<BlobUpload> {
        let url = upload.location.clone();
        let end = upload
            .offset
            .checked_add(chunk.len() as u64)
            .ok_or_else(|| {
                self.invalid(
                    &url,
                    format!(
                        "upload offset {} overflows with the next chunk",
                        upload.offset
                    ),
                )
            })?;
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from(chunk.len() as u64));
        if !chunk.is_empty() {
            h.insert(
                "content-range",
                HeaderValue::from_str(&format!("{}-{}", upload.offset, end - 1)).expect("ascii"),
            );
        }
        let resp = self
            .send(
                Method::PATCH,
                url.clone(),
                &Scope::push(&upload.repository),
                h,
                Body::Bytes(chunk),
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(&Method::PATCH, &url, resp).await);
        }
        let location = self.upload_location(&url, &resp)?;
        // Some registries omit Range; trust our count only if they said nothing.
        if let Some(value) = header_str(resp.headers(), "range") {
            let bad = |reason: String| {
                self.bad_range(&upload.repository, digest, &url, "Range", &value, reason)
            };
            let confirmed = parse_upload_range(&value).map_err(bad)?;
            if confirmed != end {
                return Err(bad(format!(
                    "the registry confirms {confirmed} bytes after a chunk ending at {end}"
                )));
            }
        }
        Ok(BlobUpload {
            repository: upload.repository.clone(),
            location,
            offset: end,
        })
    }

    /// Finishes a chunked upload (`PUT ?digest=` with an empty body).
    pub async fn finish_upload(&self, upload: &BlobUpload, digest: &Digest) -> Result<()> {
        let mut url = upload.location.clone();
        url.query_pairs_mut().append_pair("digest", digest.as_ref());
        let resp = self
            .send(
                Method::PUT,
                url.clone(),
                &Scope::push(&upload.repository),
                content_length_zero(),
                Body::Empty,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::PUT, &url, resp).await);
        }
        Ok(())
    }

    /// Asks the registry how many bytes of an upload of blob `digest` it holds (`GET` on the
    /// session: `204` with `Range: 0-<last>`). Returns the session as the registry describes it now
    /// (its new `Location` if it sent one). A session the registry no longer knows is a 404-style
    /// status error; a missing or unreadable `Range` is [`RegistryError::InvalidRange`].
    pub async fn upload_status(&self, upload: &BlobUpload, digest: &Digest) -> Result<BlobUpload> {
        let url = upload.location.clone();
        let resp = self
            .send(
                Method::GET,
                url.clone(),
                &Scope::push(&upload.repository),
                HeaderMap::new(),
                Body::Empty,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::GET, &url, resp).await);
        }
        let value = header_str(resp.headers(), "range").unwrap_or_default();
        let offset = parse_upload_range(&value).map_err(|reason| {
            self.bad_range(&upload.repository, digest, &url, "Range", &value, reason)
        })?;
        let location = match header_str(resp.headers(), LOCATION.as_str()) {
            Some(_) => self.upload_location(&url, &resp)?,
            None => upload.location.clone(),
        };
        Ok(BlobUpload {
            repository: upload.repository.clone(),
            location,
            offset,
        })
    }

    /// Cancels an upload session; best effort (a session left behind expires on the registry).
    /// distribution 2.8 answers 404 to the `DELETE` of a session whose streaming `PUT` was aborted
    /// and keeps its partial data until its upload purger runs (`storage.maintenance.uploadpurging`,
    /// by default files older than a week, checked daily): nothing a client can do about it.
    pub async fn cancel_upload(&self, upload: &BlobUpload) {
        let url = upload.location.clone();
        match self
            .send(
                Method::DELETE,
                url.clone(),
                &Scope::push(&upload.repository),
                HeaderMap::new(),
                Body::Empty,
            )
            .await
        {
            Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {}
            Ok(r) => {
                tracing::debug!(registry = %self.name, url = %redact(&url), status = r.status().as_u16(), "upload cancel refused")
            }
            Err(e) => tracing::debug!(registry = %self.name, error = %e, "upload cancel failed"),
        }
    }

    /// All tags of a repository (following `Link` pagination). A repository that does not exist has
    /// no tags.
    pub async fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        self.paginate(
            &format!("v2/{repository}/tags/list?n={PAGE_SIZE}"),
            &Scope::pull(repository),
            List::Tags(repository),
        )
        .await
    }

    /// All repositories (`/v2/_catalog` with pagination).
    pub async fn catalog(&self) -> Result<Vec<String>> {
        self.paginate(
            &format!("v2/_catalog?n={PAGE_SIZE}"),
            &Scope::catalog(),
            List::Catalog,
        )
        .await
    }

    /// The entries of a paginated list, page after page along `rel="next"` `Link`s, within
    /// [`MAX_LIST_PAGES`], [`MAX_LIST_BYTES`] and [`MAX_LIST_ENTRIES`]. A `Link` back to a page
    /// already read ends the list: every page of that cycle has been read.
    async fn paginate(&self, first: &str, scope: &Scope, list: List<'_>) -> Result<Vec<String>> {
        let mut url = self.url(first)?;
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        let mut bytes_left = MAX_LIST_BYTES;
        let too_large = |url: &Url, limit: String| RegistryError::ListTooLarge {
            registry: self.name.clone(),
            list: list.to_string(),
            url: redact(url),
            limit,
        };
        loop {
            if seen.len() >= MAX_LIST_PAGES {
                return Err(too_large(&url, format!("{MAX_LIST_PAGES} pages")));
            }
            seen.insert(url.clone());
            let resp = self
                .send(
                    Method::GET,
                    url.clone(),
                    scope,
                    HeaderMap::new(),
                    Body::Empty,
                )
                .await?;
            // A repository that does not exist has no tags (its first page is a 404).
            let first_tags_page = matches!(list, List::Tags(_)) && seen.len() == 1;
            if resp.status() == StatusCode::NOT_FOUND && first_tags_page {
                return Ok(entries);
            }
            if !resp.status().is_success() {
                return Err(self.status_error(&Method::GET, &url, resp).await);
            }
            let next = header_str(resp.headers(), "link").and_then(|l| parse_next_link(&l));
            let body = read_limited(resp, bytes_left)
                .await
                .map_err(|e| self.transport(&url, e))?;
            bytes_left = bytes_left
                .checked_sub(body.len() as u64)
                .ok_or_else(|| too_large(&url, format!("{MAX_LIST_BYTES} bytes")))?;
            let parsed = serde::de::DeserializeSeed::deserialize(
                ListPage {
                    field: list.field(),
                    entries: &mut entries,
                },
                &mut serde_json::Deserializer::from_slice(&body),
            );
            if entries.len() > MAX_LIST_ENTRIES {
                return Err(too_large(&url, format!("{MAX_LIST_ENTRIES} entries")));
            }
            if let Err(e) = parsed {
                return Err(self.invalid(&url, format!("{list} is not valid JSON: {e}")));
            }
            let Some(next) = next else {
                return Ok(entries);
            };
            url = self.follow(&url, "a pagination Link", &next)?;
            if seen.contains(&url) {
                tracing::warn!(registry = %self.name, url = %redact(&url), "{list} pagination links back to a page already read; the list ends there");
                return Ok(entries);
            }
        }
    }

    /// The OCI 1.1 referrers API. `Ok(None)` when the registry does not implement it.
    pub async fn referrers(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>> {
        if self.referrers_api.get() == Some(&false) {
            return Ok(None);
        }
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(manifest::OCI_INDEX));
        let (url, resp) = self
            .request(
                Method::GET,
                &format!("v2/{repository}/referrers/{digest}"),
                &Scope::pull(repository),
                h,
                Body::Empty,
            )
            .await?;
        match resp.status() {
            StatusCode::OK => {
                let ct = header_str(resp.headers(), CONTENT_TYPE.as_str()).unwrap_or_default();
                let body = read_limited(resp, MAX_MANIFEST_BYTES)
                    .await
                    .map_err(|e| self.transport(&url, e))?;
                if body.len() as u64 > MAX_MANIFEST_BYTES {
                    return Err(self.invalid(
                        &url,
                        format!("referrers index is over the {MAX_MANIFEST_BYTES}-byte limit"),
                    ));
                }
                if !ct.starts_with(manifest::OCI_INDEX) {
                    let _ = self.referrers_api.set(false);
                    return Ok(None);
                }
                let index: ImageIndex = serde_json::from_slice(&body)
                    .map_err(|e| self.invalid(&url, format!("referrers index: {e}")))?;
                let _ = self.referrers_api.set(true);
                Ok(Some(index.manifests().clone()))
            }
            // A registry with the API answers 200 with an empty index for unknown subjects, so a
            // 404 (or 400/405) means it has no such API.
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => {
                let _ = self.referrers_api.set(false);
                Ok(None)
            }
            _ => Err(self.status_error(&Method::GET, &url, resp).await),
        }
    }
}

/// A paginated list: what errors call it and the JSON field holding its entries.
#[derive(Clone, Copy)]
enum List<'a> {
    Catalog,
    Tags(&'a str),
}

impl List<'_> {
    fn field(self) -> &'static str {
        match self {
            List::Catalog => "repositories",
            List::Tags(_) => "tags",
        }
    }
}

impl std::fmt::Display for List<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            List::Catalog => f.write_str("the catalog"),
            List::Tags(repository) => write!(f, "the tag list of {repository}"),
        }
    }
}

/// One list page (`{"<field>": ["a", …], …}`, the field absent or `null` when empty), its entries
/// appended to `entries` as they are parsed, stopping one past [`MAX_LIST_ENTRIES`]: a page of
/// millions of empty strings never becomes millions of `String`s.
struct ListPage<'a> {
    field: &'static str,
    entries: &'a mut Vec<String>,
}

impl<'de> serde::de::DeserializeSeed<'de> for ListPage<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ListPage<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an object with a {:?} list", self.field)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == self.field {
                map.next_value_seed(ListEntries(&mut *self.entries))?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The entries of a [`ListPage`]: an array of strings, or `null`.
struct ListEntries<'a>(&'a mut Vec<String>);

impl<'de> serde::de::DeserializeSeed<'de> for ListEntries<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ListEntries<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of names")
    }

    fn visit_none<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        while let Some(entry) = seq.next_element::<String>()? {
            self.0.push(entry);
            if self.0.len() > MAX_LIST_ENTRIES {
                return Err(serde::de::Error::custom("too many entries"));
            }
        }
        Ok(())
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

/// How long to wait before retrying after a 429/503: what the registry's `Retry-After` asks, at
/// most [`MAX_RETRY_DELAY`] (any number it sends is fine), else the backoff of `attempt`.
fn retry_delay(retry_after: Option<Duration>, attempt: u32) -> Duration {
    retry_after
        .map(|d| d.min(MAX_RETRY_DELAY))
        .unwrap_or_else(|| backoff(attempt))
}

/// `Retry-After`: delta seconds or an HTTP-date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A decimal byte position: digits only (no sign, no spaces inside), within `u64`.
fn parse_position(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a byte position"));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is out of range for a byte position"))
}

/// The `Range` of an upload answer (`0-1048575`, optionally `bytes=0-1048575`) → the next offset
/// the upload expects (1048576). Upload ranges always start at 0. `0-0` reads as 0 bytes: it is
/// what distribution sends for an empty session (it would also be its answer after exactly one
/// byte, which chunk sizes of 64 KiB and more never leave).
pub fn parse_upload_range(value: &str) -> Result<u64, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err("missing".to_string());
    }
    let v = v.strip_prefix("bytes=").unwrap_or(v);
    let (start, end) = v
        .split_once('-')
        .ok_or_else(|| "no '-' between first and last byte".to_string())?;
    let (start, end) = (parse_position(start)?, parse_position(end)?);
    if start != 0 {
        return Err(format!("an upload range starts at 0, this one at {start}"));
    }
    if end == 0 {
        return Ok(0);
    }
    end.checked_add(1)
        .ok_or_else(|| "last byte position overflows".to_string())
}

/// A `206` answer's `Content-Range: bytes <first>-<last>/<total or *>` → (first, last, total).
pub fn parse_content_range(value: &str) -> Result<(u64, u64, Option<u64>), String> {
    let v = value.trim();
    if v.is_empty() {
        return Err("missing from a 206 answer".to_string());
    }
    let v = v
        .strip_prefix("bytes ")
        .ok_or_else(|| "does not start with \"bytes \"".to_string())?;
    let (range, total) = v
        .split_once('/')
        .ok_or_else(|| "no '/' before the total length".to_string())?;
    let (first, last) = range
        .split_once('-')
        .ok_or_else(|| "no '-' between first and last byte".to_string())?;
    let (first, last) = (parse_position(first)?, parse_position(last)?);
    if last < first {
        return Err(format!("last byte {last} is before first byte {first}"));
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(parse_position(t)?),
    };
    if total.is_some_and(|t| last >= t) {
        return Err(format!("last byte {last} is beyond the total length"));
    }
    Ok((first, last, total))
}

/// The `rel="next"` target of a `Link` header.
pub fn parse_next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let part = part.trim();
        let (target, params) = part.split_once(';')?;
        if params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        }) {
            Some(
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string(),
            )
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_forms() {
        assert_eq!(
            parse_next_link(r#"</v2/_catalog?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/_catalog?last=b&n=2")
        );
        assert_eq!(
            parse_next_link(r#"<https://x/v2/a/tags/list?n=1&last=v1>; rel=next"#).as_deref(),
            Some("https://x/v2/a/tags/list?n=1&last=v1")
        );
        assert_eq!(parse_next_link(r#"</x>; rel="prev""#), None);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&future).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn upload_ranges() {
        assert_eq!(parse_upload_range("0-1048575"), Ok(1_048_576));
        assert_eq!(parse_upload_range(" 0-1023 "), Ok(1024));
        assert_eq!(parse_upload_range("0-0"), Ok(0));
        assert_eq!(parse_upload_range("bytes=0-9"), Ok(10));
        for (bad, why) in [
            ("", "missing"),
            ("junk", "no '-'"),
            ("0-", "not a byte position"),
            ("-5", "not a byte position"),
            ("0-x", "not a byte position"),
            ("0-+5", "not a byte position"),
            ("0--5", "not a byte position"),
            ("5-10", "this one at 5"),
            ("0-99999999999999999999", "out of range"),
            ("0-18446744073709551615", "overflows"),
        ] {
            let e = parse_upload_range(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Ok((100, 199, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Ok((0, 0, None)));
        for (bad, why) in [
            ("", "missing"),
            ("100-199/1000", "\"bytes \""),
            ("bytes 100-199", "no '/'"),
            ("bytes 100/1000", "no '-'"),
            ("bytes 199-100/1000", "before first"),
            ("bytes 100-1000/1000", "beyond"),
            ("bytes a-b/1000", "not a byte position"),
            ("bytes 1-2/x", "not a byte position"),
        ] {
            let e = parse_content_range(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

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

    #[test]
    fn following_refuses_https_to_http_and_other_schemes() {
        let url = |s: &str| Url::parse(s).unwrap();
        let https = url("https://r.example/v2/a/blobs/uploads/");
        let http = url("http://r.example/v2/a/blobs/uploads/");
        assert_eq!(refusal(&https, &url("https://s3.example/x?sig=1")), None);
        assert_eq!(refusal(&http, &url("http://other:5000/x")), None);
        assert_eq!(refusal(&http, &url("https://r.example/x")), None);
        let e = refusal(&https, &url("http://r.example/x?_state=secret")).unwrap();
        assert!(e.contains("plain http") && !e.contains("secret"), "{e}");
        let e = refusal(&http, &url("file:///etc/passwd")).unwrap();
        assert!(e.contains("\"file\""), "{e}");
    }

    fn client_for(name: &str, url: &str, secret: Secret) -> RegistryClient {
        let cfg: crate::config::RegistryConfig =
            serde_json::from_value(serde_json::json!({"name": name, "url": url, "insecure": true}))
                .unwrap();
        RegistryClient::new(&cfg, secret).unwrap()
    }

    #[test]
    fn only_the_configured_origin_is_the_registrys_own() {
        let c = client_for("src", "http://127.0.0.1:5000/prefix", Secret::Anonymous);
        let own = |s: &str| c.is_own_origin(&Url::parse(s).unwrap());
        assert!(own("http://127.0.0.1:5000/v2/x"));
        assert!(!own("http://127.0.0.1:5001/v2/x"), "another port");
        assert!(!own("https://127.0.0.1:5000/v2/x"), "another scheme");
        assert!(!own("http://localhost:5000/v2/x"), "another host");
    }

    #[test]
    fn a_token_realm_gets_credentials_on_the_own_origin_or_over_https_only() {
        let c = client_for("src", "http://127.0.0.1:5000", Secret::Anonymous);
        let gets = |s: &str| c.realm_gets_credentials(&Url::parse(s).unwrap());
        assert!(gets("http://127.0.0.1:5000/token"), "own origin");
        assert!(gets("https://auth.example/token"), "https elsewhere");
        assert!(!gets("http://auth.example/token"), "plain http elsewhere");
        assert!(
            !gets("http://127.0.0.1:5001/token"),
            "plain http, another port"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poisoned_auth_lock_does_not_take_the_registry_down() {
        use ferry_testkit::{BearerSetup, Behavior, FakeRegistry};
        let fake = FakeRegistry::start(Behavior {
            require_bearer: Some(BearerSetup {
                username: "u".into(),
                password: "p".into(),
                service: "fake".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        let c = client_for(
            "src",
            &fake.url(),
            Secret::Basic {
                username: "u".into(),
                password: "p".into(),
            },
        );
        c.ping().await.unwrap();
        let poisoned = std::thread::scope(|s| {
            s.spawn(|| {
                let _held = c.auth.lock();
                panic!("a panic while holding the auth lock");
            })
            .join()
        });
        assert!(poisoned.is_err() && c.auth.is_poisoned());
        let info = c.ping().await.unwrap();
        assert_eq!(info.auth.as_deref(), Some("bearer"));
        c.list_tags("team/app").await.unwrap();
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
