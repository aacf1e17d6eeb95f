//! OIDC bearer JWTs for the admin API (SSO): verifies a token an identity provider (Keycloak,
//! Dex, Entra ID, …) issued, and maps one of its claims to a [`Role`].
//!
//! # How a token is checked
//! 1. At most [`MAX_TOKEN_BYTES`]; three base64url parts; the header's `alg` must be `RS256` or
//!    `ES256` — `none` and every HMAC algorithm are refused before any key is looked at, so a
//!    public key is never used as an HMAC secret.
//! 2. The key is the issuer's JWKS key with the header's `kid` (a token without `kid` only when
//!    the JWKS has one key for its algorithm), and the key's own type fixes the algorithm: an
//!    RSA key verifies RS256 only, a P-256 key ES256 only.
//! 3. `iss` must equal the configured issuer, `aud` contain the audience; `exp` is required and
//!    `nbf` checked when present, both with [`OidcConfig::leeway`].
//! 4. The claim at [`OidcConfig::claim`] (a dot path such as `groups` or `realm_access.roles`; a
//!    string or a list of strings) decides the role: any operator value → operator, else any
//!    viewer value → viewer, else the token is valid but grants nothing.
//!
//! # JWKS
//! The JWKS URL is the configured one, or the discovery document's `jwks_uri`
//! (`<issuer>/.well-known/openid-configuration`, whose `issuer` must match), fetched on the first
//! token. Keys are cached; a token with an unknown `kid` refetches them — at most once per
//! [`OidcConfig::min_refresh_interval`], and concurrent refreshes share one fetch — so a flood of
//! made-up kids cannot hammer the issuer. A failed refresh keeps the old keys.
//!
//! # Invariants
//! Everything from the issuer and in the token is hostile: bodies are capped
//! ([`MAX_DOCUMENT_BYTES`]), requests time out, redirects are not followed, only `https://` URLs
//! (or `http://` to a loopback address) are fetched, and no input panics. Errors never contain
//! the token or a signature.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use url::Url;

use super::roles::Role;

/// Longest token accepted (Keycloak's, with many groups, are a few KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest discovery document or JWKS read.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Most keys kept from one JWKS.
const MAX_KEYS: usize = 64;
/// Default of [`OidcConfig::min_refresh_interval`].
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Default of [`OidcConfig::leeway`].
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// Bound of one request to the issuer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Which tokens are accepted and how their claim maps to roles.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The `iss` every token must carry, e.g. `https://sso.example/realms/ferry`.
    pub issuer: String,
    /// A value `aud` must contain (the client ID for Keycloak).
    pub audience: String,
    /// Where the keys are; `None`: the discovery document's `jwks_uri`.
    pub jwks_url: Option<Url>,
    /// Dot path of the claim holding groups or roles (`groups`, `realm_access.roles`).
    pub claim: String,
    /// Claim values granting [`Role::Viewer`].
    pub viewer_values: Vec<String>,
    /// Claim values granting [`Role::Operator`].
    pub operator_values: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Shortest time between two JWKS fetches caused by unknown `kid`s.
    pub min_refresh_interval: Duration,
    /// PEM CA bundle trusted for the issuer's `https://` URLs besides the Mozilla roots (an
    /// in-house Keycloak).
    pub ca_file: Option<std::path::PathBuf>,
}

/// Why the OIDC settings are unusable (checked at start, before anything is served).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OidcConfigError {
    #[error("--admin-oidc-issuer {0:?} is not a URL")]
    IssuerNotUrl(String),
    #[error("{flag} {url}: only https:// (or http:// to a loopback address) is allowed")]
    Insecure { flag: &'static str, url: String },
    #[error("--admin-oidc-audience is required with --admin-oidc-issuer")]
    NoAudience,
    #[error(
        "--admin-oidc-claim must be a dot path such as groups or realm_access.roles, not {0:?}"
    )]
    BadClaim(String),
    #[error(
        "no claim value maps to a role: pass --admin-oidc-viewer and/or --admin-oidc-operator"
    )]
    NoRoleValues,
    #[error("--admin-oidc-ca-file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("cannot build the HTTP client for the issuer: {0}")]
    HttpClient(String),
}

impl OidcConfig {
    /// Checks the settings; every error names its flag.
    pub fn validate(&self) -> Result<(), OidcConfigError> {
        let issuer = Url::parse(&self.issuer)
            .map_err(|_| OidcConfigError::IssuerNotUrl(self.issuer.clone()))?;
        fetchable(&issuer, "--admin-oidc-issuer")?;
        if let Some(jwks) = &self.jwks_url {
            fetchable(jwks, "--admin-oidc-jwks-url")?;
        }
        if self.audience.trim().is_empty() {
            return Err(OidcConfigError::NoAudience);
        }
        if self.claim.split('.').any(|s| s.trim().is_empty()) {
            return Err(OidcConfigError::BadClaim(self.claim.clone()));
        }
        if self.viewer_values.is_empty() && self.operator_values.is_empty() {
            return Err(OidcConfigError::NoRoleValues);
        }
        Ok(())
    }
}

/// `https://`, or `http://` to a loopback address (a local issuer, tests).
fn fetchable(url: &Url, flag: &'static str) -> Result<(), OidcConfigError> {
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(OidcConfigError::Insecure {
            flag,
            url: url.to_string(),
        }),
    }
}

/// Why a token was refused. The message is safe to return to the caller: it names the problem,
/// never the token, a signature or a key.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("alg `none` is refused: tokens must be signed")]
    AlgNone,
    #[error("alg {0} (HMAC) is refused: only RS256 and ES256 from the issuer's JWKS are accepted")]
    Hmac(String),
    #[error("alg {0} is not supported: only RS256 and ES256")]
    UnsupportedAlg(String),
    #[error("no key with kid {0:?} in the issuer's JWKS")]
    UnknownKid(String),
    #[error("the token has no kid and the issuer's JWKS has no single {0} key")]
    NoKid(&'static str),
    #[error("the signature does not verify with the issuer's key")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's audience does not include the configured one")]
    WrongAudience,
    #[error("the token's issuer is not the configured one")]
    WrongIssuer,
    #[error("the token lacks the required claim {0:?}")]
    MissingClaim(String),
    #[error("the token's claims are malformed")]
    BadClaims,
    #[error("cannot get the issuer's keys: {0}")]
    Jwks(#[from] FetchError),
    /// Valid, but not for Ferry: the claim holds none of the mapped values.
    #[error("the token's {claim:?} claim grants no admin role")]
    NoRole { claim: String },
}

impl TokenError {
    /// The gRPC status of the refusal: `PERMISSION_DENIED` for a valid token without a role,
    /// `UNAVAILABLE` when the issuer's keys cannot be had, else `UNAUTHENTICATED`.
    pub fn status(&self) -> tonic::Status {
        let message = format!("invalid admin token: {self}");
        match self {
            TokenError::NoRole { .. } => tonic::Status::permission_denied(self.to_string()),
            TokenError::Jwks(_) => tonic::Status::unavailable(message),
            _ => tonic::Status::unauthenticated(message),
        }
    }
}

/// Why the discovery document or JWKS could not be fetched or used.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: the body exceeds {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("GET {url}: not a valid {what}: {message}")]
    Invalid {
        url: String,
        what: &'static str,
        message: String,
    },
    #[error("{0}")]
    Config(#[from] OidcConfigError),
    #[error("the JWKS fetched at {0:?} has no RS256 or ES256 signing key")]
    NoKeys(String),
    #[error("the last attempt to fetch the JWKS was moments ago; not refetching yet")]
    RateLimited,
}

/// A verification key and the one algorithm it verifies.
struct Key {
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys as last fetched.
#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<Key>>,
    /// Keys without a `kid` (usable only by tokens without one).
    anonymous: Vec<Arc<Key>>,
    /// When the last fetch (successful or not) started.
    fetched_at: Option<Instant>,
    /// The JWKS URL (configured or discovered).
    jwks_url: Option<Url>,
}

impl Keys {
    fn is_empty(&self) -> bool {
        self.by_kid.is_empty() && self.anonymous.is_empty()
    }
}

/// Verifies OIDC tokens. Cheap to share behind an [`Arc`].
pub struct OidcVerifier {
    config: OidcConfig,
    http: reqwest::Client,
    keys: tokio::sync::RwLock<Keys>,
    /// Held while fetching, so concurrent unknown kids share one fetch.
    refresh: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.config.issuer)
            .field("audience", &self.config.audience)
            .finish_non_exhaustive()
    }
}

/// The JOSE header fields Ferry reads, parsed leniently so that `none` and HMAC get their own
/// errors.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// Reads `url` (JSON, at most [`MAX_DOCUMENT_BYTES`]).
async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &Url,
    what: &'static str,
) -> Result<T, FetchError> {
    let shown = url.to_string();
    let http_error = |e: reqwest::Error| FetchError::Http {
        url: shown.clone(),
        message: crate::errors::error_chain(&e),
    };
    let mut response = http
        .get(url.clone())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(http_error)?;
    if !response.status().is_success() {
        return Err(FetchError::Status {
            url: shown,
            status: response.status().as_u16(),
        });
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(FetchError::TooLarge { url: shown });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(http_error)? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(FetchError::TooLarge { url: shown });
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| FetchError::Invalid {
        url: shown,
        what,
        message: e.to_string(),
    })
}

/// The key a JWK describes, if it is an RS256 or ES256 signing key (`None` for other keys, which
/// a JWKS may hold for other uses).
fn key_of(jwk: &Jwk) -> Option<Key> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let (alg, key) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => (
            Algorithm::RS256,
            DecodingKey::from_rsa_components(jwk.n.as_deref()?, jwk.e.as_deref()?).ok()?,
        ),
        ("EC", Some("P-256")) => {
            let (x, y) = (jwk.x.as_deref()?, jwk.y.as_deref()?);
            // ring rejects points that are not on the curve; the lengths are checked here so
            // that a wrong-length coordinate is a skipped key, not a confusing signature error.
            let len = |c: &str| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
            };
            if len(x)?.len() != 32 || len(y)?.len() != 32 {
                return None;
            }
            (
                Algorithm::ES256,
                DecodingKey::from_ec_components(x, y).ok()?,
            )
        }
        _ => return None,
    };
    let expected = match alg {
        Algorithm::RS256 => "RS256",
        _ => "ES256",
    };
    if jwk.alg.as_deref().is_some_and(|a| a != expected) {
        return None;
    }
    Some(Key { alg, key })
}

impl OidcVerifier {
    /// A verifier for `config` (validated here); fetches nothing until the first token.
    pub fn new(config: OidcConfig) -> Result<OidcVerifier, OidcConfigError> {
        config.validate()?;
        let mut http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let ca_error = |message: String| OidcConfigError::CaFile {
                path: path.display().to_string(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ca_error(crate::errors::error_chain(&e)))?;
            if certs.is_empty() {
                return Err(ca_error("holds no PEM certificate".into()));
            }
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http
            .build()
            .map_err(|e| OidcConfigError::HttpClient(crate::errors::error_chain(&e)))?;
        Ok(OidcVerifier {
            keys: tokio::sync::RwLock::new(Keys {
                jwks_url: config.jwks_url.clone(),
                ..Keys::default()
            }),
            config,
            http,
            refresh: tokio::sync::Mutex::new(()),
        })
    }

    /// The role `token` grants, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<Role, TokenError> {
        let header = header(token)?;
        let key = self.key(header.kid.as_deref(), &header.alg).await?;
        let claims = self.decode(token, &key)?;
        self.role(&claims)
    }

    /// The key for `kid` (refreshing the JWKS once if it is unknown) that verifies `alg`.
    async fn key(&self, kid: Option<&str>, alg: &str) -> Result<Arc<Key>, TokenError> {
        if let Some(key) = self.cached(kid, alg).await? {
            return Ok(key);
        }
        if let Err(e) = self.refresh().await {
            if !matches!(e, FetchError::RateLimited) {
                tracing::warn!(error = %e, "cannot refresh the admin OIDC keys");
            }
            if self.keys.read().await.is_empty() {
                return Err(TokenError::Jwks(e));
            }
        }
        match self.cached(kid, alg).await? {
            Some(key) => Ok(key),
            None => Err(match kid {
                Some(kid) => TokenError::UnknownKid(truncate(kid)),
                None => TokenError::NoKid(if alg == "RS256" { "RS256" } else { "ES256" }),
            }),
        }
    }

    /// The cached key for `kid`, if any; an error when it does not verify `alg`.
    async fn cached(&self, kid: Option<&str>, alg: &str) -> Result<Option<Arc<Key>>, TokenError> {
        let keys = self.keys.read().await;
        let found = match kid {
            Some(kid) => keys.by_kid.get(kid).cloned(),
            None => {
                let mut of_alg = keys.anonymous.iter().chain(keys.by_kid.values());
                let only = of_alg.clone().filter(|k| alg_name(k.alg) == alg).count() == 1;
                only.then(|| of_alg.find(|k| alg_name(k.alg) == alg).cloned())
                    .flatten()
            }
        };
        match found {
            Some(key) if alg_name(key.alg) != alg => Err(TokenError::UnsupportedAlg(format!(
                "{alg} with a {} key",
                alg_name(key.alg)
            ))),
            other => Ok(other),
        }
    }

    /// Refetches the JWKS unless another caller just did (then waits for that fetch instead).
    async fn refresh(&self) -> Result<(), FetchError> {
        let started = Instant::now();
        let _one_at_a_time = self.refresh.lock().await;
        let (last, url) = {
            let keys = self.keys.read().await;
            (keys.fetched_at, keys.jwks_url.clone())
        };
        if let Some(last) = last {
            if last >= started {
                // Another caller fetched while this one waited: use its keys.
                return Ok(());
            }
            if last.elapsed() < self.config.min_refresh_interval {
                return Err(FetchError::RateLimited);
            }
        }
        self.keys.write().await.fetched_at = Some(Instant::now());
        let url = match url {
            Some(url) => url,
            None => self.discover().await?,
        };
        let jwks: Jwks = get_json(&self.http, &url, "JWKS").await?;
        let mut fresh = Keys {
            fetched_at: Some(Instant::now()),
            jwks_url: Some(url.clone()),
            ..Keys::default()
        };
        for value in jwks.keys.into_iter().take(MAX_KEYS) {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            let Some(key) = key_of(&jwk).map(Arc::new) else {
                continue;
            };
            match jwk.kid {
                Some(kid) => {
                    fresh.by_kid.insert(kid, key);
                }
                None => fresh.anonymous.push(key),
            }
        }
        if fresh.is_empty() {
            return Err(FetchError::NoKeys(url.to_string()));
        }
        tracing::info!(jwks = %url, keys = fresh.by_kid.len() + fresh.anonymous.len(), "admin OIDC keys fetched");
        *self.keys.write().await = fresh;
        Ok(())
    }

    /// The JWKS URL of the issuer's discovery document (which must name the same issuer).
    async fn discover(&self) -> Result<Url, FetchError> {
        let base = self.config.issuer.trim_end_matches('/');
        let url = Url::parse(&format!("{base}/.well-known/openid-configuration"))
            .map_err(|_| OidcConfigError::IssuerNotUrl(self.config.issuer.clone()))?;
        let doc: Discovery = get_json(&self.http, &url, "OpenID configuration").await?;
        let invalid = |message: String| FetchError::Invalid {
            url: url.to_string(),
            what: "OpenID configuration",
            message,
        };
        if doc.issuer != self.config.issuer {
            return Err(invalid(format!(
                "its issuer {:?} is not {:?}",
                truncate(&doc.issuer),
                self.config.issuer
            )));
        }
        let jwks = Url::parse(&doc.jwks_uri).map_err(|_| {
            invalid(format!(
                "jwks_uri {:?} is not a URL",
                truncate(&doc.jwks_uri)
            ))
        })?;
        fetchable(&jwks, "the discovered jwks_uri")?;
        self.keys.write().await.jwks_url = Some(jwks.clone());
        Ok(jwks)
    }

    /// Verifies the signature with `key` and the registered claims; the claims as JSON.
    fn decode(&self, token: &str, key: &Key) -> Result<serde_json::Value, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let mut validation = Validation::new(key.alg);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation)
            .map_err(|e| match e.into_kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c),
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm => TokenError::UnsupportedAlg(alg_name(key.alg).into()),
                ErrorKind::Json(_) | ErrorKind::Utf8(_) => TokenError::BadClaims,
                _ => TokenError::Malformed("it does not decode as a signed JWT"),
            })?;
        Ok(data.claims)
    }

    /// The role the configured claim grants.
    fn role(&self, claims: &serde_json::Value) -> Result<Role, TokenError> {
        let values = claim_values(claims, &self.config.claim);
        let any = |wanted: &[String]| values.iter().any(|v| wanted.iter().any(|w| w == v));
        if any(&self.config.operator_values) {
            Ok(Role::Operator)
        } else if any(&self.config.viewer_values) {
            Ok(Role::Viewer)
        } else {
            Err(TokenError::NoRole {
                claim: self.config.claim.clone(),
            })
        }
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "another algorithm",
    }
}

/// At most 64 characters of an untrusted string, for messages.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The token's header, after the checks that need no key: size, shape and algorithm.
fn header(token: &str) -> Result<RawHeader, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("a JWT has three dot-separated parts"));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed("the header is not base64url"))?;
    let header: RawHeader = serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::Malformed("the header is not a JOSE header"))?;
    match header.alg.as_str() {
        "RS256" | "ES256" => Ok(header),
        a if a.eq_ignore_ascii_case("none") => Err(TokenError::AlgNone),
        a if a.starts_with("HS") => Err(TokenError::Hmac(truncate(a))),
        a => Err(TokenError::UnsupportedAlg(truncate(a))),
    }
}

/// The strings at dot path `path` of `claims`: one string, or the strings of a list.
fn claim_values<'a>(claims: &'a serde_json::Value, path: &str) -> Vec<&'a str> {
    let found = path
        .split('.')
        .try_fold(claims, |v, segment| v.get(segment));
    match found {
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(items)) => {
            items.iter().filter_map(serde_json::Value::as_str).collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
