//! Bearer-token authentication of admin calls (a tonic interceptor).
//!
//! Invariant: without tokens, calls are refused unless anonymous access was explicitly allowed —
//! and [`AdminAuth::new`] allows that only for a loopback listen address.
use std::net::SocketAddr;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::tokens::{authorize, TokenSet};

/// Who may call the admin API.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    tokens: TokenSet,
    anonymous: bool,
}

/// Env var holding the admin token when no token file is given.
pub const TOKEN_ENV: &str = "FERRY_ADMIN_TOKEN";

impl AdminAuth {
    /// `tokens` may be empty only with `allow_anonymous_loopback` and a loopback `listen` address.
    pub fn new(
        tokens: Vec<String>,
        allow_anonymous_loopback: bool,
        listen: SocketAddr,
    ) -> Result<AdminAuth, String> {
        if tokens.is_empty() {
            if !allow_anonymous_loopback {
                return Err(format!(
                    "no admin token: set {TOKEN_ENV} or --admin-token-file (or pass --admin-allow-unauthenticated-loopback with a loopback --admin-listen)"
                ));
            }
            if !listen.ip().is_loopback() {
                return Err(format!(
                    "--admin-allow-unauthenticated-loopback needs a loopback --admin-listen address, not {listen}"
                ));
            }
        }
        Ok(AdminAuth {
            anonymous: tokens.is_empty(),
            tokens: TokenSet::new(tokens),
        })
    }
}

impl Interceptor for AdminAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.anonymous {
            return Ok(req);
        }
        authorize(&self.tokens, &req, "admin")?;
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(auth: &mut AdminAuth, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        auth.call(req).map(drop).map_err(|s| s.code())
    }

    #[test]
    fn tokens_are_required_and_checked() {
        let addr: SocketAddr = "0.0.0.0:9443".parse().unwrap();
        let mut auth = AdminAuth::new(vec!["s3cret".into()], false, addr).unwrap();
        assert_eq!(call(&mut auth, Some("Bearer s3cret")), Ok(()));
        assert_eq!(
            call(&mut auth, Some("Bearer wrong")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(call(&mut auth, None), Err(tonic::Code::Unauthenticated));
        assert_eq!(
            call(&mut auth, Some("Basic s3cret")),
            Err(tonic::Code::Unauthenticated)
        );
    }

    #[test]
    fn anonymous_only_on_loopback_and_only_when_asked() {
        let lo: SocketAddr = "127.0.0.1:9443".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9443".parse().unwrap();
        assert!(AdminAuth::new(vec![], false, lo)
            .unwrap_err()
            .contains("no admin token"));
        assert!(AdminAuth::new(vec![], true, any)
            .unwrap_err()
            .contains("loopback"));
        let mut auth = AdminAuth::new(vec![], true, lo).unwrap();
        assert_eq!(call(&mut auth, None), Ok(()));
    }
}
