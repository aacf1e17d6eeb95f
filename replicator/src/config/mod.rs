//! The config file: registries, the policies between them, and regions.
//!
//! Loading is two-phase so that a user sees **every** problem at once, each with its JSON path:
//! structural problems (syntax, unknown fields, wrong types) and semantic ones (unknown registry
//! names, bad globs, invalid namespaces, duplicate names). No network I/O happens here; secrets are
//! only referenced (env var, file, auth file) and resolved by [`Credential::resolve`].
//!
//! # Layout
//! - `model`: the types, as they appear in JSON.
//! - `schema`: the JSON Schema generated from those types, and the structural walk against it.
//! - `load`: reading a file, detecting its shape (config, policy, array of policies), the three
//!   phases, and how a [`Problem`] and a [`ConfigError`] are shown.
//! - `check`: the semantic checks, one file per concern (registries, policies, regions).
//! - `references`: registry references as Harbor writes them (by `id`, or left out for the local
//!   registry), resolved to names.
//! - `credentials`: resolving credential references, and which ones an API registry may use.

mod check;
mod credentials;
mod load;
mod model;
mod partial;
mod problem;
mod references;
mod region;
mod schema;
mod shape;

pub use credentials::{CredentialError, CredentialRules, CredentialsDirError, API_ENV_PREFIX};
pub use load::ConfigError;
pub use model::*;
pub use problem::Problem;
pub use references::{HARBOR_LOCAL_ID, HARBOR_LOCAL_NAME};
pub use region::Region;
pub use schema::json_schema;
