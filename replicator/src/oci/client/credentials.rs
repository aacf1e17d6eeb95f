//! Where the registry's credentials may go, and how they are obtained.
//!
//! Invariants: `Authorization` (basic or bearer) is sent only to the registry's own origin
//! (scheme, host and port of its configured URL); an upload `Location`, a pagination `Link` or a
//! redirect naming another origin is followed without credentials, and one leaving https for
//! plain http (or for another scheme) is refused ([`RegistryError::Refused`]); a token realm gets
//! the credentials only on the registry's own origin or over https; bearer tokens are cached per
//! scope until they expire, and a token endpoint's answer is read within a bound.
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use url::Url;

use super::{read_limited, redact, RegistryClient};
use crate::config::Secret;
use crate::locks::lock;
use crate::oci::auth::{self, Challenge, Scope, TokenResponse};
use crate::oci::error::{parse_error_body, RegistryError, Result};

/// The largest token endpoint answer read (real ones are a few KiB: a JWT or two).
const MAX_TOKEN_RESPONSE_BYTES: u64 = 1024 * 1024;

/// Redirects followed for one request (reqwest's default too); a longer chain is refused.
const MAX_REDIRECTS: usize = 10;

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
pub(super) fn redirect_policy() -> reqwest::redirect::Policy {
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

impl RegistryClient {
    /// Whether `url` is on the registry's own origin (scheme, host and port of its configured
    /// URL): the only place its credentials go.
    pub(super) fn is_own_origin(&self, url: &Url) -> bool {
        url.origin() == self.base.origin()
    }

    /// Whether a token realm may be sent the registry's credentials: on the registry's own origin,
    /// or over https elsewhere (a plain-http realm on another host could be anyone on the path).
    fn realm_gets_credentials(&self, realm: &Url) -> bool {
        self.is_own_origin(realm) || realm.scheme() == "https"
    }

    /// A URL the registry pointed a request at `from` to (`what`: an upload `Location`, a
    /// pagination `Link`), resolved against `from`; refused as [`refusal`] says.
    pub(super) fn follow(&self, from: &Url, what: &'static str, target: &str) -> Result<Url> {
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

    pub(super) async fn authorization(&self, scope: &Scope) -> Result<Option<String>> {
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
        let resp = self
            .dispatch(req)
            .await
            .map_err(|e| self.transport(&url, e))?;
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::client_for;
    use super::*;
    use crate::config::Secret;

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
}
