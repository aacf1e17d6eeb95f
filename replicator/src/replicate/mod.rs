//! Replicate: the per-job algorithm, from a policy and a reference to the destination holding the
//! source's digest.
//!
//! - [`plan`]: a policy compiled for running ([`PreparedPolicy`]) and what it covers on the source.
//! - [`tag`]: one tag to one destination, level-triggered (`HEAD` both sides, copy only on
//!   difference, confirm by `HEAD`); the entry point of event-driven jobs is
//!   [`replicate_reference`]; `tag::admit_tag` applies the tag-level filters (`ferry export`
//!   shares it).
//! - [`referrers`]: signatures and SBOMs follow their subject.
//! - [`gates`]: `only_signed` and `max_severity`, which hold an image back before it is copied.
//! - [`delete`]: a delete event becomes a digest-guarded delete on the destination.
//! - [`sync`]: a full sync of one policy (`ferry sync`, runs; [`sync_repos`] from any
//!   [`crate::transfer::Source`], which `ferry import` uses with a layout); [`drift`]: drift by digest
//!   (`ferry diff`, the safety net), `HEAD`s only.
//! - [`registries`]: the configured registries' clients; [`policies`]: the enabled policies a worker
//!   runs jobs with.
//!
//! The blobs themselves move in [`crate::transfer`].
pub mod delete;
pub mod drift;
pub mod gates;
pub mod plan;
pub mod policies;
pub mod referrers;
pub mod registries;
pub mod sync;
pub mod tag;

use crate::oci::RegistryError;

pub(crate) use plan::listed_name;
pub use plan::{
    is_referrer_tag, list_source, referrer_tag_subject, source_repos, PreparedPolicy, SourceRepo,
    Unlisted,
};
pub use registries::Registries;
pub use sync::{
    sync_policy, sync_repos, OutcomeCounts, RunProgress, SyncOptions, SyncReport, TagResult,
    TagSink,
};
pub use tag::{
    replicate_gated_tags, replicate_reference, GateRecheck, KnownHeads, TagOutcome, TAG_GONE,
};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("policy {policy}: registry {registry:?} is not defined in the config's registries")]
    UnknownRegistry { policy: String, registry: String },
    #[error("no policy named {0:?} in the config")]
    UnknownPolicy(String),
    #[error("policy {policy}: {message}")]
    Policy { policy: String, message: String },
    #[error(transparent)]
    Credential(#[from] crate::config::CredentialError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}
