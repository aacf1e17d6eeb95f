//! `ferry import`: an OCI image layout replicated into a policy's destinations — `ferry sync` with
//! the layout as its source. The policy decides as it does for a sync: its repository and tag
//! filters pick the layout's tags, `dest_namespace` names the destination repositories,
//! `override` guards differing tags, `copy_referrers` and `artifact_type` decide the referrers;
//! the engine `HEAD`s before it reads, mounts what another repository on the destination holds,
//! and verifies every manifest and blob read from the layout.
//!
//! Invariant: the policy's source registry is never contacted.
use std::sync::Arc;
use std::time::Instant;

use crate::replicate::{sync_repos, PreparedPolicy, SourceRepo, SyncOptions, SyncReport};

use super::LayoutSource;

/// What the policy covers in `layout`: its repository filters, then its tag filters (referrer
/// tags left to their subject when it copies referrers).
pub fn covered(prepared: &PreparedPolicy, layout: &LayoutSource) -> Vec<SourceRepo> {
    layout
        .repositories()
        .into_iter()
        .filter(|(r, _)| prepared.selector.matches_repository(r))
        .map(|(r, tags)| SourceRepo::covered(&prepared.policy, &prepared.selector, r, tags))
        .collect()
}

/// Replicates what the policy covers in `layout` to every destination of the policy.
pub async fn import_policy(
    prepared: &PreparedPolicy,
    layout: Arc<LayoutSource>,
    opts: &SyncOptions,
) -> SyncReport {
    let started = Instant::now();
    let repos = covered(prepared, &layout);
    sync_repos(
        prepared,
        layout,
        futures_util::stream::iter(repos.into_iter().map(Ok)),
        started,
        opts,
    )
    .await
}
