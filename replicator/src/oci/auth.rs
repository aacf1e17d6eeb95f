//! Registry authentication: `WWW-Authenticate` challenges, basic auth and the bearer-token flow.
//!
//! The first 401 teaches the client which scheme a registry uses; after that, credentials (or a
//! token for the request's scope) are attached up front, so streaming uploads — which cannot be
//! replayed — are never the request that discovers a challenge. Tokens are cached per scope until
//! shortly before they expire. Secrets never appear in errors or logs.
//!
//! A token server's `expires_in` is whatever number it likes: lifetimes are read leniently
//! (integers, floats, negatives, absurdly large), clamped to [`MIN_TOKEN_TTL`]..[`MAX_TOKEN_TTL`],
//! and expiry instants are computed without overflow.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

use crate::config::Secret;

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Basic realm="x"` or `Bearer realm="…",service="…",scope="…"`. Parameter values may be
/// quoted (with commas inside quotes) or bare tokens.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.insert(key, value);
    }
    out
}

/// `Authorization: Basic …` value for a secret, if it has credentials.
pub fn basic_header(secret: &Secret) -> Option<String> {
    match secret {
        Secret::Basic { username, password } => Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
        )),
        Secret::Anonymous => None,
    }
}

/// The longest a token is cached, whatever `expires_in` says: a day bounds how long a revoked
/// or leaked token can keep working from Ferry's cache, and keeps `Instant + ttl` far from overflow.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The shortest lifetime assumed (the spec's minimum is 60 s; some servers send 0 or less).
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(10);

/// What the token endpoint answers (`token` per the Docker spec, `access_token` per OAuth2).
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    /// Seconds, as any JSON number (servers send floats, negatives and `u64::MAX`).
    #[serde(default)]
    pub expires_in: Option<serde_json::Number>,
}

impl TokenResponse {
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        // The spec's default lifetime is 60 s. `f64 as u64` saturates (negatives and NaN give 0).
        let secs = self.expires_in.map_or(60, |n| {
            n.as_u64()
                .unwrap_or_else(|| n.as_f64().map_or(0, |f| f as u64))
        });
        let ttl = Duration::from_secs(secs).clamp(MIN_TOKEN_TTL, MAX_TOKEN_TTL);
        // Renew a little early.
        Some((token, ttl.saturating_sub(Duration::from_secs(5))))
    }
}

/// The auth state learned for one registry.
#[derive(Debug, Default)]
pub struct AuthState {
    /// Scheme learned from the last challenge; `None` until the registry asked for auth.
    pub challenge: Option<Challenge>,
    tokens: HashMap<String, (String, Instant)>,
}

impl AuthState {
    pub fn cached_token(&self, scope: &str) -> Option<String> {
        self.tokens
            .get(scope)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(t, _)| t.clone())
    }

    pub fn store_token(&mut self, scope: &str, token: String, ttl: Duration) {
        // Bound the cache: scopes are per repository, and a long catalog sync touches many.
        if self.tokens.len() > 1024 {
            let now = Instant::now();
            self.tokens.retain(|_, (_, until)| *until > now);
        }
        // `checked_add`: a lifetime that cannot be represented is treated as already expired.
        let now = Instant::now();
        let until = now.checked_add(ttl.min(MAX_TOKEN_TTL)).unwrap_or(now);
        self.tokens.insert(scope.to_string(), (token, until));
    }
}

/// The scope a request needs, in token-request form (`repository:name:pull,push`), several joined
/// by spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope(pub Vec<String>);

impl Scope {
    pub fn registry() -> Scope {
        Scope(Vec::new())
    }
    pub fn catalog() -> Scope {
        Scope(vec!["registry:catalog:*".to_string()])
    }
    pub fn pull(repository: &str) -> Scope {
        Scope(vec![format!("repository:{repository}:pull")])
    }
    pub fn push(repository: &str) -> Scope {
        Scope(vec![format!("repository:{repository}:pull,push")])
    }
    /// Pushing to `repository` while mounting from `from`.
    pub fn mount(repository: &str, from: &str) -> Scope {
        Scope(vec![
            format!("repository:{repository}:pull,push"),
            format!("repository:{from}:pull"),
        ])
    }
    pub fn key(&self) -> String {
        self.0.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_with_commas_in_scope() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into())
            }
        );
    }

    #[test]
    fn parses_basic_and_rejects_unknown() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(
            parse_challenge("Bearer service=x"),
            None,
            "bearer without realm is unusable"
        );
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn unquoted_params() {
        let c = parse_challenge("bearer realm=https://a/t, service=svc").unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://a/t".into(),
                service: Some("svc".into()),
                scope: None
            }
        );
    }

    #[test]
    fn token_cache_expires() {
        let mut s = AuthState::default();
        s.store_token("x", "t".into(), Duration::from_secs(30));
        assert_eq!(s.cached_token("x").as_deref(), Some("t"));
        s.store_token("y", "t".into(), Duration::ZERO);
        assert_eq!(s.cached_token("y"), None);
    }

    #[test]
    fn token_response_forms() {
        let t: TokenResponse =
            serde_json::from_str(r#"{"access_token":"a","expires_in":300}"#).unwrap();
        assert_eq!(t.into_token().unwrap().0, "a");
        let t: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert!(t.into_token().is_none());
    }

    #[test]
    fn a_token_lifetime_is_clamped_to_a_day_whatever_the_server_says() {
        let ttl = |expires_in: &str| {
            let t: TokenResponse =
                serde_json::from_str(&format!(r#"{{"token":"t","expires_in":{expires_in}}}"#))
                    .unwrap();
            t.into_token().unwrap().1
        };
        let day = MAX_TOKEN_TTL - Duration::from_secs(5);
        assert_eq!(ttl("18446744073709551615"), day);
        assert_eq!(ttl("1e300"), day);
        assert_eq!(ttl("300"), Duration::from_secs(295));
        assert_eq!(ttl("300.5"), Duration::from_secs(295));
        assert_eq!(ttl("-1"), MIN_TOKEN_TTL - Duration::from_secs(5));
        assert_eq!(
            ttl("-18446744073709551615"),
            MIN_TOKEN_TTL - Duration::from_secs(5)
        );
    }

    #[test]
    fn storing_a_token_with_an_unrepresentable_lifetime_does_not_panic() {
        let mut s = AuthState::default();
        s.store_token("x", "t".into(), Duration::MAX);
        assert_eq!(
            s.cached_token("x").as_deref(),
            Some("t"),
            "capped, not dropped"
        );
    }

    #[test]
    fn basic_header_never_for_anonymous() {
        assert_eq!(basic_header(&Secret::Anonymous), None);
        let h = basic_header(&Secret::Basic {
            username: "u".into(),
            password: "p".into(),
        })
        .unwrap();
        assert_eq!(h, "Basic dTpw");
    }
}
