//! Errors of the distribution client. Every variant names the registry (its config name) and, where
//! one exists, the URL, so an operator can reproduce the request with curl.
use std::time::Duration;

use serde::Deserialize;

use crate::errors::error_chain;

/// One entry of the OCI error envelope `{"errors":[{"code","message","detail"}]}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ErrorEntry {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

/// Parses a registry error body; falls back to the first line of the text when it is not an envelope.
pub fn parse_error_body(body: &[u8]) -> Vec<ErrorEntry> {
    if let Ok(env) = serde_json::from_slice::<Envelope>(body) {
        if !env.errors.is_empty() {
            return env.errors;
        }
    }
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        Vec::new()
    } else {
        vec![ErrorEntry {
            code: String::new(),
            message: line.chars().take(300).collect(),
        }]
    }
}

fn describe(errors: &[ErrorEntry]) -> String {
    if errors.is_empty() {
        return "no error details in the response".to_string();
    }
    errors
        .iter()
        .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
            (false, false) => format!("{}: {}", e.code, e.message),
            (false, true) => e.code.clone(),
            _ => e.message.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The whole cause chain is in the message (reqwest's top-level text alone, "error sending
    /// request", hides whether DNS, TCP, or a certificate failed).
    #[error("registry {registry}: cannot reach {url}: {}", error_chain(.cause))]
    Transport {
        registry: String,
        url: String,
        cause: reqwest::Error,
    },
    #[error("registry {registry}: {method} {url} answered {status}: {}", describe(.errors))]
    Status {
        registry: String,
        method: String,
        url: String,
        status: u16,
        errors: Vec<ErrorEntry>,
    },
    #[error(
        "registry {registry}: {method} {url} was refused ({status}): {}; check the credential configured for this registry",
        describe(.errors)
    )]
    Denied {
        registry: String,
        method: String,
        url: String,
        status: u16,
        errors: Vec<ErrorEntry>,
    },
    #[error("registry {registry}: authentication failed: {message}")]
    Auth { registry: String, message: String },
    #[error(
        "registry {registry}: {repository}@{expected}: content hashes to {actual}; refusing corrupt data"
    )]
    DigestMismatch {
        registry: String,
        repository: String,
        expected: String,
        actual: String,
    },
    #[error(
        "registry {registry}: {repository}@{digest}: expected {expected} bytes, got {actual}; refusing truncated or padded data"
    )]
    SizeMismatch {
        registry: String,
        repository: String,
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("registry {registry}: manifest {repository}:{reference} is {size} bytes, over the {limit}-byte limit")]
    ManifestTooLarge {
        registry: String,
        repository: String,
        reference: String,
        size: u64,
        limit: u64,
    },
    /// A `Range`/`Content-Range` header that cannot be read, or that contradicts what was asked;
    /// `message` names the header, its value and what is wrong with it.
    #[error("registry {registry}: {repository}@{digest}: {message} (answer from {url})")]
    InvalidRange {
        registry: String,
        repository: String,
        digest: String,
        url: String,
        message: String,
    },
    #[error("registry {registry}: unexpected answer from {url}: {message}")]
    InvalidResponse {
        registry: String,
        url: String,
        message: String,
    },
    /// The registry pointed a request somewhere Ferry does not go: an upload `Location`, a
    /// pagination `Link` or a redirect leaving https for plain http or http(s) for another scheme,
    /// or a chain of more than ten redirects. `reason` names the target (without its query).
    #[error("registry {registry}: refusing to follow {what} from {url}: {reason}")]
    Refused {
        registry: String,
        url: String,
        what: &'static str,
        reason: String,
    },
    /// A tag list or catalog past one of the client's limits (`limit`, e.g. "1000000 entries").
    #[error(
        "registry {registry}: {list} is over the limit of {limit} (at {url}); refusing to read more: check the registry, whose list pagination is broken or hostile unless the list is really this long"
    )]
    ListTooLarge {
        registry: String,
        list: String,
        url: String,
        limit: String,
    },
    #[error("registry {registry}: still rate limited after {attempts} attempts on {url} (last Retry-After {retry_after:?})")]
    RateLimited {
        registry: String,
        url: String,
        attempts: u32,
        retry_after: Option<Duration>,
    },
    /// Harbor refused a request for a reason no retry fixes until an operator acts (a project
    /// Ferry may not create, a project's quota, an immutability rule); recognised from Harbor's
    /// exact answers in `oci::client::harbor`.
    #[error("registry {registry}: {refusal}")]
    Harbor {
        registry: String,
        refusal: HarborRefusal,
    },
    #[error("registry {registry}: bad configuration: {message}")]
    Config { registry: String, message: String },
    #[error("operation cancelled")]
    Cancelled,
}

/// Why Harbor refused a write, when a retry cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HarborRefusal {
    /// `POST /api/v2.0/projects` answered 401/403: the robot account may not create projects.
    #[error(
        "project {project} does not exist and Harbor refused to create it ({status}: {}): give the robot account the permission to create projects (a system robot account with \"project: create\", covering all projects), or create the project in Harbor",
        describe(.errors)
    )]
    ProjectCreation {
        project: String,
        status: u16,
        errors: Vec<ErrorEntry>,
    },
    /// The project's quota has no room for the blob or manifest (Harbor: 403 `DENIED` "Quota
    /// exceeded …").
    #[error(
        "project {project}: {} exceeded ({message}); raise the project's quota in Harbor or free space in the project, then run again",
        quota_kind(.message)
    )]
    QuotaExceeded { project: String, message: String },
    /// A tag immutability rule of the project matches the tag being overwritten (Harbor: 412
    /// `PRECONDITION` "… configured as immutable").
    #[error(
        "tag {tag} in project {project} is immutable (an immutability rule matches {repository}:{tag}): Harbor refuses to overwrite it; change the project's immutability rules in Harbor, or exclude the tag from the policy"
    )]
    ImmutableTag {
        project: String,
        repository: String,
        tag: String,
    },
}

/// "storage quota" when Harbor's message says the storage resource overflowed (Harbor 2.x has
/// no other quota, older versions also counted artifacts), else "quota".
fn quota_kind(message: &str) -> &'static str {
    if message.contains("storage resource") {
        "storage quota"
    } else {
        "quota"
    }
}

impl RegistryError {
    /// HTTP status of the registry's answer, if the error is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Status { status, .. } | RegistryError::Denied { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// True when the registry's answer carried the OCI error `code` (e.g. `MANIFEST_BLOB_UNKNOWN`).
    pub fn has_code(&self, code: &str) -> bool {
        matches!(self, RegistryError::Status { errors, .. } if errors.iter().any(|e| e.code == code))
    }

    /// True for 404-style answers (unknown manifest, blob or repository).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// True when trying again later may succeed (network trouble, 5xx, rate limits); false for
    /// errors that a retry cannot fix (denied, corrupt content, bad requests).
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Transport { .. } | RegistryError::RateLimited { .. } => true,
            RegistryError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            _ => false,
        }
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oci_envelope() {
        let e = parse_error_body(
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#,
        );
        assert_eq!(
            e,
            vec![ErrorEntry {
                code: "MANIFEST_UNKNOWN".into(),
                message: "manifest unknown".into()
            }]
        );
    }

    #[test]
    fn falls_back_to_text_and_empty() {
        assert_eq!(
            parse_error_body(b"<html>bad gateway</html>\nmore")[0].message,
            "<html>bad gateway</html>"
        );
        assert!(parse_error_body(b"").is_empty());
        assert!(parse_error_body(b"{\"errors\":[]}")[0]
            .message
            .starts_with('{'));
    }

    #[test]
    fn denied_message_names_registry_and_hint() {
        let e = RegistryError::Denied {
            registry: "eu".into(),
            method: "GET".into(),
            url: "https://r/v2/".into(),
            status: 401,
            errors: vec![ErrorEntry {
                code: "UNAUTHORIZED".into(),
                message: "authentication required".into(),
            }],
        };
        let s = e.to_string();
        assert!(
            s.contains("registry eu")
                && s.contains("UNAUTHORIZED: authentication required")
                && s.contains("credential"),
            "{s}"
        );
        assert!(!e.is_retryable());
    }
}
