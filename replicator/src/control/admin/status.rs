//! Every admin error and its gRPC code, in one place.
//!
//! Invariant: messages say what is wrong and what to do, name the policy, registry, execution or
//! job concerned, and never contain a secret.
use tonic::{Code, Status};

use crate::store::StoreError;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no {kind} named {name:?}{}", known_list(.known))]
    NotFound {
        kind: &'static str,
        name: String,
        known: Vec<String>,
    },
    /// Every problem, one `path: problem` per line.
    #[error("{}", .violations.join("\n"))]
    InvalidArgument { violations: Vec<String> },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("the region's queue is unreachable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (known: {})", known.join(", "))
    }
}

impl AdminError {
    pub fn code(&self) -> Code {
        match self {
            AdminError::NotFound { .. } => Code::NotFound,
            AdminError::InvalidArgument { .. } => Code::InvalidArgument,
            AdminError::FailedPrecondition(_) => Code::FailedPrecondition,
            AdminError::Unavailable(_) => Code::Unavailable,
            AdminError::Unimplemented(_) => Code::Unimplemented,
            AdminError::Internal(_) => Code::Internal,
        }
    }

    /// An argument that must not be empty.
    pub fn required(field: &str) -> AdminError {
        AdminError::InvalidArgument {
            violations: vec![format!("{field}: required")],
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => AdminError::Unavailable(m),
            other => AdminError::Internal(other.to_string()),
        }
    }
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let nf = AdminError::NotFound {
            kind: "policy",
            name: "x".into(),
            known: vec!["a".into(), "b".into()],
        };
        let s = Status::from(nf);
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "no policy named \"x\" (known: a, b)");
        let s = Status::from(AdminError::from(StoreError::Unavailable("down".into())));
        assert_eq!(s.code(), Code::Unavailable);
        let s = Status::from(AdminError::InvalidArgument {
            violations: vec!["a: bad".into(), "b: worse".into()],
        });
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "a: bad\nb: worse")
        );
    }
}
