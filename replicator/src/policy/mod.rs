//! Replication policies: Harbor-compatible JSON (field names as in Harbor's API), plus Ferry's
//! own additions (`platform` filter, `copy_referrers`, several `dest_registries`).
//!
//! Invariants: a [`Policy`] that passed [`crate::config::Config::validate`] has filters that
//! compile and a valid `dest_namespace` (a repository with fewer path components than
//! `dest_namespace_replace_count` strips is still an error, as in Harbor); all matching is pure
//! (no I/O), so the same policy answers the same way in the agent, the worker and `ferry diff`.

pub mod cron;
mod filter;
mod model;
mod namespace;

pub use filter::{LabelFilter, Selector, SelectorError};
pub use model::*;
pub use namespace::{
    check_digest, check_repository, check_tag, quoted, rewrite_repository, NameError,
    NamespaceError, MAX_REPOSITORY_LEN, MAX_TAG_LEN,
};
