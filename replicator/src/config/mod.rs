//! The config file: registries and the policies between them.
//!
//! Loading is two-phase so that a user sees **every** problem at once, each with its JSON path:
//! structural problems (syntax, unknown fields, wrong types) and semantic ones (unknown registry
//! names, bad globs, invalid namespaces, duplicate names). No network I/O happens here; secrets are
//! only referenced (env var, file, auth file) and resolved by [`Credential::resolve`].

mod credentials;
mod model;
mod schema;
mod validate;

pub use credentials::{CredentialError, CredentialRules, CredentialsDirError, API_ENV_PREFIX};
pub use model::*;
pub use schema::json_schema;
pub use validate::{ConfigError, Problem};
