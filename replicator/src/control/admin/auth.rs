//! Authentication and authorization of admin calls: [`Authorized`] wraps each admin service,
//! finds the caller's [`Role`] from `authorization: Bearer <token>` and lets the call through only
//! when the role may call that RPC ([`super::roles`]).
//!
//! A token is, in this order: one of the static admin tokens (role operator, as before roles
//! existed), or with OIDC configured a JWT from the issuer ([`super::oidc`]; its claim decides
//! the role).
//!
//! # Invariants
//! - Without static tokens and without OIDC, calls are refused unless anonymous access was
//!   explicitly allowed — and [`AdminAuth::new`] allows that only for a loopback listen address.
//! - A missing or bad token is `UNAUTHENTICATED` with a reason that contains no secret; a valid
//!   token whose role is too weak is `PERMISSION_DENIED` naming the role needed.
//! - Health and reflection are not wrapped, so they stay open (they reveal no data).
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::Status;

use super::oidc::OidcVerifier;
use super::roles::{self, Role};
use crate::tokens::{bearer, TokenSet};

/// Who may call the admin API.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    tokens: TokenSet,
    oidc: Option<Arc<OidcVerifier>>,
    anonymous: bool,
}

/// Env var holding the admin token when no token file is given.
pub const TOKEN_ENV: &str = "FERRY_ADMIN_TOKEN";

impl AdminAuth {
    /// `tokens` may be empty with `oidc`, or with `allow_anonymous_loopback` and a loopback
    /// `listen` address.
    pub fn new(
        tokens: Vec<String>,
        oidc: Option<OidcVerifier>,
        allow_anonymous_loopback: bool,
        listen: SocketAddr,
    ) -> Result<AdminAuth, String> {
        let anonymous = tokens.is_empty() && oidc.is_none();
        if anonymous {
            if !allow_anonymous_loopback {
                return Err(format!(
                    "no admin token: set {TOKEN_ENV}, --admin-token-file or --admin-oidc-issuer (or pass --admin-allow-unauthenticated-loopback with a loopback --admin-listen)"
                ));
            }
            if !listen.ip().is_loopback() {
                return Err(format!(
                    "--admin-allow-unauthenticated-loopback needs a loopback --admin-listen address, not {listen}"
                ));
            }
        }
        Ok(AdminAuth {
            anonymous,
            tokens: TokenSet::new(tokens),
            oidc: oidc.map(Arc::new),
        })
    }

    /// The role of the caller whose `authorization` header is `authorization`.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Role, Status> {
        if self.anonymous {
            return Ok(Role::Operator);
        }
        let presented = authorization.and_then(bearer).ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
        })?;
        if self.tokens.accepts(presented) {
            return Ok(Role::Operator);
        }
        match &self.oidc {
            Some(oidc) => oidc.verify(presented).await.map_err(|e| e.status()),
            None => Err(Status::unauthenticated("invalid admin token")),
        }
    }

    /// Authenticates the caller and checks its role against the RPC at `path`.
    pub async fn check(&self, authorization: Option<&str>, path: &str) -> Result<Role, Status> {
        let role = self.authenticate(authorization).await?;
        roles::check(role, path)?;
        Ok(role)
    }
}

/// An admin service that runs only calls [`AdminAuth`] lets through; the caller's [`Role`] is put
/// in the request's extensions.
#[derive(Debug, Clone)]
pub struct Authorized<S> {
    inner: S,
    auth: AdminAuth,
}

impl<S> Authorized<S> {
    pub fn new(inner: S, auth: AdminAuth) -> Authorized<S> {
        Authorized { inner, auth }
    }
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Authorized<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The ready service handles this call; the clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let authorization = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match auth.check(authorization, req.uri().path()).await {
                Ok(role) => {
                    req.extensions_mut().insert(role);
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    const LIST: &str = "/ferry.v1.Policies/ListPolicies";
    const STOP: &str = "/ferry.v1.Executions/StopExecution";

    async fn check(auth: &AdminAuth, header: Option<&str>) -> Result<Role, Code> {
        auth.check(header, STOP).await.map_err(|s| s.code())
    }

    #[tokio::test]
    async fn static_tokens_are_required_checked_and_grant_operator() {
        let addr: SocketAddr = "0.0.0.0:9443".parse().unwrap();
        let auth = AdminAuth::new(vec!["s3cret".into()], None, false, addr).unwrap();
        assert_eq!(
            check(&auth, Some("Bearer s3cret")).await,
            Ok(Role::Operator)
        );
        assert_eq!(
            check(&auth, Some("Bearer wrong")).await,
            Err(Code::Unauthenticated)
        );
        assert_eq!(check(&auth, None).await, Err(Code::Unauthenticated));
        assert_eq!(
            check(&auth, Some("Basic s3cret")).await,
            Err(Code::Unauthenticated)
        );
    }

    #[tokio::test]
    async fn anonymous_only_on_loopback_and_only_when_asked() {
        let lo: SocketAddr = "127.0.0.1:9443".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9443".parse().unwrap();
        assert!(AdminAuth::new(vec![], None, false, lo)
            .unwrap_err()
            .contains("no admin token"));
        assert!(AdminAuth::new(vec![], None, true, any)
            .unwrap_err()
            .contains("loopback"));
        let auth = AdminAuth::new(vec![], None, true, lo).unwrap();
        assert_eq!(check(&auth, None).await, Ok(Role::Operator));
        assert_eq!(auth.check(None, LIST).await.ok(), Some(Role::Operator));
    }
}
