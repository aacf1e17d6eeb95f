//! A full sync of one policy (`ferry sync`, manual and scheduled runs): list what the policy
//! covers on the source and replicate every tag to every destination, concurrently, reporting
//! each tag's outcome.
//!
//! Invariant: a full sync also looks for referrers of unchanged tags (it catches referrers pushed
//! while events were lost); an event-driven job does not ([`super::tag::replicate_reference`]).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{stream, StreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::throttle::Throttle;
use crate::transfer::{BlobLedger, Source, StatsSnapshot, TransferContext, TransferStats};

use super::plan::{list_source, PreparedPolicy, SourceRepo};
use super::tag::{copy_tag, Referrers, TagOutcome};
use super::SyncError;

/// Knobs of a run.
#[derive(Clone)]
pub struct SyncOptions {
    pub cancel: CancellationToken,
    /// Tags reconciled concurrently (across repositories).
    pub tag_parallelism: usize,
    /// Blobs of one manifest copied concurrently.
    pub blob_parallelism: usize,
    pub progress: Arc<RunProgress>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            cancel: CancellationToken::new(),
            tag_parallelism: 16,
            blob_parallelism: 8,
            progress: Arc::default(),
        }
    }
}

/// Live counters of a run, for progress displays.
#[derive(Debug, Default)]
pub struct RunProgress {
    pub tags_total: AtomicU64,
    pub tags_done: AtomicU64,
    pub stats: Arc<TransferStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TagResult {
    pub destination: String,
    pub repository: String,
    pub destination_repository: String,
    pub tag: String,
    #[serde(flatten)]
    pub outcome: TagOutcome,
    /// Referrers (signatures, SBOMs…) pushed for this tag's manifest.
    pub referrers_copied: u64,
}

/// The result of syncing one policy.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub policy: String,
    pub tags: Vec<TagResult>,
    pub stats: StatsSnapshot,
    pub seconds: f64,
}

impl SyncReport {
    pub fn count(&self, f: impl Fn(&TagOutcome) -> bool) -> usize {
        self.tags.iter().filter(|t| f(&t.outcome)).count()
    }
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, TagOutcome::Failed { .. }))
    }
    /// True when every covered tag holds the source digest on every destination (or was skipped
    /// or held back by a gate, as the policy asks).
    pub fn converged(&self) -> bool {
        self.tags.iter().all(|t| {
            matches!(
                t.outcome,
                TagOutcome::Copied { .. }
                    | TagOutcome::Unchanged { .. }
                    | TagOutcome::Skipped { .. }
                    | TagOutcome::Blocked { .. }
            )
        })
    }
}

/// Runs a full sync of one policy.
pub async fn sync_policy(
    prepared: &PreparedPolicy,
    opts: &SyncOptions,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let repos = list_source(&prepared.src, &prepared.policy, &prepared.selector).await?;
    Ok(sync_repos(prepared, prepared.src.clone(), &repos, started, opts).await)
}

/// Replicates every tag of `repos` from `src` (the policy's source registry, or a layout on disk
/// for `ferry import`) to every destination of the policy, concurrently; `started` is when the
/// run began (its listing included).
pub async fn sync_repos(
    prepared: &PreparedPolicy,
    src: Arc<dyn Source>,
    repos: &[SourceRepo],
    started: Instant,
    opts: &SyncOptions,
) -> SyncReport {
    let policy = &prepared.policy;
    let ledger = Arc::new(BlobLedger::default());
    let throttle = Throttle::from_kib_per_sec(policy.speed).map(Arc::new);
    let contexts: Vec<TransferContext> = prepared
        .dsts
        .iter()
        .map(|dst| {
            prepared.transfer_context_from(
                src.clone(),
                dst,
                ledger.clone(),
                opts.progress.stats.clone(),
                throttle.clone(),
                opts.cancel.clone(),
                opts.blob_parallelism,
            )
        })
        .collect();
    let covered: usize = repos.iter().map(|r| r.tags.len()).sum();
    opts.progress
        .tags_total
        .fetch_add((covered * contexts.len()) as u64, Ordering::Relaxed);
    // Work items are made as the stream pulls them: nothing per tag is held up front.
    let work = contexts.iter().flat_map(|ctx| {
        repos
            .iter()
            .flat_map(move |repo| repo.tags.iter().map(move |tag| (ctx, repo, tag)))
    });
    let results: Vec<TagResult> = stream::iter(work)
        .map(|(ctx, repo, tag)| {
            let span = tracing::info_span!("tag", policy = %policy.name, destination = %ctx.dst.name(), repository = %repo.repository, tag = %tag);
            async move {
                let r = sync_tag(prepared, ctx, repo, tag).await;
                opts.progress.tags_done.fetch_add(1, Ordering::Relaxed);
                r
            }
            .instrument(span)
        })
        .buffer_unordered(opts.tag_parallelism.max(1))
        .collect()
        .await;
    let mut tags = results;
    tags.sort_by(|a, b| {
        (&a.destination, &a.repository, &a.tag).cmp(&(&b.destination, &b.repository, &b.tag))
    });
    SyncReport {
        policy: policy.name.clone(),
        tags,
        stats: opts.progress.stats.snapshot(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

async fn sync_tag(
    prepared: &PreparedPolicy,
    ctx: &TransferContext,
    repo: &SourceRepo,
    tag: &str,
) -> TagResult {
    let mut result = TagResult {
        destination: ctx.dst.name().to_string(),
        repository: repo.repository.clone(),
        destination_repository: String::new(),
        tag: tag.to_string(),
        outcome: TagOutcome::Skipped {
            reason: String::new(),
        },
        referrers_copied: 0,
    };
    let dst_repo = match prepared.dest_repository(&repo.repository) {
        Ok(r) => r,
        Err(e) => {
            result.outcome = TagOutcome::Failed { error: e };
            return result;
        }
    };
    result.destination_repository = dst_repo.clone();
    let outcome = copy_tag(
        prepared,
        ctx,
        repo,
        &dst_repo,
        tag,
        Referrers::Always,
        &mut result.referrers_copied,
        None,
    )
    .await;
    result.outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "tag failed");
            TagOutcome::Failed {
                error: e.to_string(),
            }
        }
    };
    if let TagOutcome::Copied { digest } = &result.outcome {
        tracing::info!(%digest, destination_repository = %dst_repo, "tag copied");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcomes: Vec<TagOutcome>) -> SyncReport {
        SyncReport {
            policy: "p".into(),
            tags: outcomes
                .into_iter()
                .map(|outcome| TagResult {
                    destination: "d".into(),
                    repository: "r".into(),
                    destination_repository: "r".into(),
                    tag: "t".into(),
                    outcome,
                    referrers_copied: 0,
                })
                .collect(),
            stats: StatsSnapshot::default(),
            seconds: 0.0,
        }
    }

    #[test]
    fn a_sync_converged_when_every_tag_is_copied_unchanged_or_skipped() {
        let r = report(vec![
            TagOutcome::Copied { digest: "a".into() },
            TagOutcome::Unchanged { digest: "b".into() },
            TagOutcome::Skipped {
                reason: "gone".into(),
            },
        ]);
        assert!(r.converged());
        assert_eq!(r.failed(), 0);
    }

    #[test]
    fn a_failed_or_kept_tag_means_the_sync_did_not_converge() {
        let failed = report(vec![TagOutcome::Failed { error: "x".into() }]);
        assert!(!failed.converged());
        assert_eq!(failed.failed(), 1);
        let kept = report(vec![TagOutcome::Kept {
            source_digest: "a".into(),
            destination_digest: "b".into(),
        }]);
        assert!(!kept.converged());
        assert_eq!(kept.failed(), 0);
    }
}
