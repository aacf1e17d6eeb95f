//! Bearer tokens shared by the webhook endpoints, the Forward endpoint and the admin API: loading them from a file or
//! an env var, and checking a presented token.
//!
//! Invariants: tokens are kept only as SHA-256 hashes; a presented token is compared against every
//! known one in constant time without short-circuiting, so neither the match nor its position leaks
//! through timing; an empty set accepts nothing.
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Hashes of the accepted tokens.
#[derive(Clone, Default)]
pub struct TokenSet {
    hashes: Vec<[u8; 32]>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet({} tokens)", self.hashes.len())
    }
}

impl TokenSet {
    pub fn new<S: AsRef<str>>(tokens: impl IntoIterator<Item = S>) -> TokenSet {
        TokenSet {
            hashes: tokens
                .into_iter()
                .map(|t| Sha256::digest(t.as_ref().as_bytes()).into())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True when `presented` is one of the tokens.
    pub fn accepts(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let valid = self
            .hashes
            .iter()
            .fold(subtle::Choice::from(0), |acc, t| acc | t.ct_eq(&presented));
        bool::from(valid)
    }
}

/// The token of an `Authorization: Bearer <token>` header value, if it is one.
pub fn bearer(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The token of an `Authorization` value that is `Bearer <token>` or the bare `<token>` (Harbor
/// sends its webhook's "Auth Header" field verbatim, and users type either). Only for senders
/// that cannot choose a scheme: a bare value is compared whole, like any presented token.
pub fn bearer_or_bare(header_value: &str) -> Option<&str> {
    bearer(header_value).or_else(|| Some(header_value.trim()).filter(|t| !t.is_empty()))
}

/// Tokens from `file` (one per line, blank lines ignored; several allow rotation) or, with no
/// file, from the env var `env`. Empty when neither holds one. `what` names them in errors
/// ("webhook", "admin").
pub fn load(file: Option<&std::path::Path>, env: &str, what: &str) -> Result<Vec<String>, String> {
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!("cannot read the {what} token file {}: {e}", path.display())
            })?;
            let tokens: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            if tokens.is_empty() {
                return Err(format!(
                    "the {what} token file {} holds no token",
                    path.display()
                ));
            }
            Ok(tokens)
        }
        None => Ok(std::env::var(env)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .into_iter()
            .collect()),
    }
}

/// Checks a gRPC call's `authorization: Bearer <token>` against `tokens`; `UNAUTHENTICATED` otherwise, naming
/// `what` kind of token was expected.
pub fn authorize<T>(
    tokens: &TokenSet,
    req: &tonic::Request<T>,
    what: &str,
) -> Result<(), tonic::Status> {
    let presented = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .ok_or_else(|| {
            tonic::Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
        })?;
    if tokens.accepts(presented) {
        Ok(())
    } else {
        Err(tonic::Status::unauthenticated(format!(
            "invalid {what} token"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_known_tokens() {
        let set = TokenSet::new(["old", "new"]);
        assert!(set.accepts("old") && set.accepts("new"));
        assert!(!set.accepts("ne") && !set.accepts("") && !set.accepts("new "));
        assert!(
            !TokenSet::default().accepts(""),
            "an empty set accepts nothing"
        );
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }

    #[test]
    fn a_harbor_auth_header_is_a_bearer_token_or_the_bare_token() {
        assert_eq!(bearer_or_bare("Bearer abc"), Some("abc"));
        assert_eq!(bearer_or_bare("bearer abc "), Some("abc"));
        assert_eq!(bearer_or_bare(" abc "), Some("abc"));
        assert_eq!(bearer_or_bare("Basic abc"), Some("Basic abc"));
        assert_eq!(bearer_or_bare("  "), None);
    }

    #[test]
    fn files_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "\n one \n\ntwo\n").unwrap();
        assert_eq!(
            load(Some(&f), "UNSET_FERRY_VAR", "admin").unwrap(),
            ["one", "two"]
        );
        std::fs::write(&f, "\n \n").unwrap();
        assert!(load(Some(&f), "X", "admin")
            .unwrap_err()
            .contains("holds no token"));
        let e = load(Some(&dir.path().join("missing")), "X", "admin").unwrap_err();
        assert!(
            e.contains("admin token file") && e.contains("missing"),
            "{e}"
        );
        assert!(load(None, "UNSET_FERRY_VAR_42", "admin")
            .unwrap()
            .is_empty());
    }
}
