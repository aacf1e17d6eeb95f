//! A full sync of one policy (`ferry sync`, manual and scheduled runs): list what the policy
//! covers on the source and replicate every tag to every destination, concurrently, reporting
//! each tag's outcome.
//!
//! Invariants:
//! - A full sync also looks for referrers of unchanged tags (it catches referrers pushed while
//!   events were lost); an event-driven job does not ([`super::tag::replicate_reference`]).
//! - **Memory does not grow with the tag count**: the source is listed one repository at a time as
//!   the work is pulled ([`super::plan::source_repos`]), each tag's result goes to the run's
//!   [`TagSink`] as soon as it is known, and the [`SyncReport`] keeps counts plus at most
//!   [`NOTABLE_KEPT`] tags that need a look (failed, kept, skipped, blocked).
//! - A repository whose tag list cannot be read is reported ([`SyncReport::unlisted`]) and the run
//!   goes on with the others; the run has not converged.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{stream, Stream, StreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::throttle::Throttle;
use crate::transfer::{BlobLedger, Source, StatsSnapshot, TransferContext, TransferStats};

use super::plan::{source_repos, PreparedPolicy, SourceRepo, Unlisted};
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
    /// Where every tag's result goes as soon as it is known (`ferry sync --json` streams them).
    pub tag_sink: Option<TagSink>,
}

/// Receives each tag's result of a run, in the order they finish.
pub type TagSink = Arc<dyn Fn(&TagResult) + Send + Sync>;

/// Tags needing a look that a [`SyncReport`] keeps for its summary; the rest are only counted.
pub const NOTABLE_KEPT: usize = 1000;

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            cancel: CancellationToken::new(),
            tag_parallelism: 16,
            blob_parallelism: 8,
            progress: Arc::default(),
            tag_sink: None,
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

/// How many tags of a run ended in each outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    pub copied: usize,
    pub unchanged: usize,
    pub kept: usize,
    pub skipped: usize,
    pub blocked: usize,
    pub failed: usize,
}

impl OutcomeCounts {
    fn add(&mut self, outcome: &TagOutcome) {
        let n = match outcome {
            TagOutcome::Copied { .. } => &mut self.copied,
            TagOutcome::Unchanged { .. } => &mut self.unchanged,
            TagOutcome::Kept { .. } => &mut self.kept,
            TagOutcome::Skipped { .. } => &mut self.skipped,
            TagOutcome::Blocked { .. } => &mut self.blocked,
            TagOutcome::Failed { .. } => &mut self.failed,
        };
        *n += 1;
    }
}

/// The result of syncing one policy: counts, not every tag (those went to the run's
/// [`TagSink`]).
#[derive(Debug)]
pub struct SyncReport {
    pub policy: String,
    pub counts: OutcomeCounts,
    /// Up to [`NOTABLE_KEPT`] tags that need a look: failed, kept, skipped or blocked.
    pub notable: Vec<TagResult>,
    /// Notable tags beyond [`NOTABLE_KEPT`], counted only.
    pub notable_dropped: usize,
    pub unlisted: Vec<Unlisted>,
    pub stats: StatsSnapshot,
    pub seconds: f64,
}

impl SyncReport {
    fn new(policy: &str) -> SyncReport {
        SyncReport {
            policy: policy.to_string(),
            counts: OutcomeCounts::default(),
            notable: Vec::new(),
            notable_dropped: 0,
            unlisted: Vec::new(),
            stats: StatsSnapshot::default(),
            seconds: 0.0,
        }
    }

    fn record(&mut self, tag: TagResult) {
        self.counts.add(&tag.outcome);
        if matches!(
            tag.outcome,
            TagOutcome::Copied { .. } | TagOutcome::Unchanged { .. }
        ) {
            return;
        }
        if self.notable.len() < NOTABLE_KEPT {
            self.notable.push(tag);
        } else {
            self.notable_dropped += 1;
        }
    }

    pub fn failed(&self) -> usize {
        self.counts.failed
    }

    /// True when every covered tag holds the source digest on every destination (or was skipped
    /// or held back by a gate, as the policy asks), and every repository was listed.
    pub fn converged(&self) -> bool {
        self.counts.failed == 0 && self.counts.kept == 0 && self.unlisted.is_empty()
    }
}

/// Runs a full sync of one policy.
pub async fn sync_policy(
    prepared: &PreparedPolicy,
    opts: &SyncOptions,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let repos = source_repos(&prepared.src, &prepared.policy, &prepared.selector).await?;
    Ok(sync_repos(prepared, prepared.src.clone(), repos, started, opts).await)
}

/// One unit of a run: a tag of a listed repository to one destination, or a repository whose
/// listing failed.
enum Work<'c> {
    Tag(&'c TransferContext, Arc<SourceRepo>, usize),
    Unlisted(Unlisted),
}

/// Replicates every tag of `repos` from `src` (the policy's source registry, or a layout on disk
/// for `ferry import`) to every destination of the policy, concurrently, pulling `repos` only as
/// the work needs it; `started` is when the run began (its listing included).
pub async fn sync_repos(
    prepared: &PreparedPolicy,
    src: Arc<dyn Source>,
    repos: impl Stream<Item = Result<SourceRepo, Unlisted>>,
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
    let contexts = &contexts;
    // Work items are made one repository at a time, as the stream pulls them.
    let work = repos.flat_map(|listed| {
        let items: Vec<Work<'_>> = match listed {
            Ok(repo) => {
                opts.progress
                    .tags_total
                    .fetch_add((repo.tags.len() * contexts.len()) as u64, Ordering::Relaxed);
                let repo = Arc::new(repo);
                contexts
                    .iter()
                    .flat_map(|ctx| (0..repo.tags.len()).map(move |i| (ctx, i)))
                    .map(|(ctx, i)| Work::Tag(ctx, repo.clone(), i))
                    .collect()
            }
            Err(e) => vec![Work::Unlisted(e)],
        };
        stream::iter(items)
    });
    let mut report = SyncReport::new(&policy.name);
    let done = work
        .map(|w| async move {
            match w {
                Work::Tag(ctx, repo, i) => {
                    let tag = &repo.tags[i];
                    let span = tracing::info_span!("tag", policy = %policy.name, destination = %ctx.dst.name(), repository = %repo.repository, tag = %tag);
                    let r = sync_tag(prepared, ctx, &repo, tag).instrument(span).await;
                    opts.progress.tags_done.fetch_add(1, Ordering::Relaxed);
                    Ok(r)
                }
                Work::Unlisted(e) => Err(e),
            }
        })
        .buffer_unordered(opts.tag_parallelism.max(1));
    let mut done = std::pin::pin!(done);
    while let Some(finished) = done.next().await {
        match finished {
            Ok(tag) => {
                if let Some(sink) = &opts.tag_sink {
                    sink(&tag);
                }
                report.record(tag);
            }
            Err(e) => {
                tracing::warn!(policy = %policy.name, repository = %e.repository, error = %e.error, "cannot list the repository's tags; its tags are not reconciled this run");
                report.unlisted.push(e);
            }
        }
    }
    report.stats = opts.progress.stats.snapshot();
    report.seconds = started.elapsed().as_secs_f64();
    report
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
        let mut r = SyncReport::new("p");
        for outcome in outcomes {
            r.record(TagResult {
                destination: "d".into(),
                repository: "r".into(),
                destination_repository: "r".into(),
                tag: "t".into(),
                outcome,
                referrers_copied: 0,
            });
        }
        r
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
