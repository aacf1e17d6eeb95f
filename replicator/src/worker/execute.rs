//! Running one job against every destination of its policy: a push is a level-triggered copy
//! (arbitrated first when the policy is bidirectional), a delete is a guarded delete.
//!
//! Invariants: every destination is tried and gets its own task record, even after another one
//! failed (the job then fails with the first error and retries); a cancellation ends the job at
//! once; a tag write is recorded in the conflict ledger only after the copy happened. A
//! bidirectional job `HEAD`s the tag once per side: the copy decides from what arbitration read
//! ([`KnownHeads`]), and only the confirming `HEAD` after a `PUT` asks the destination again.
//! A push whose tag is missing while its announced manifest exists is retried as not linked yet
//! for [`NOT_VISIBLE_ATTEMPTS`] attempts, then skipped: never a dead letter.
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::metrics::{CONFLICT_KEPT, CONFLICT_REPLACED, CONFLICT_RESTORED};
use super::record::task_record;
use super::{DestOutcome, JobError, JobOutcome, LiveTask, Worker};
use crate::clock::now_ms;
use crate::event::EventKind;
use crate::oci::digest;
use crate::policy::Mode;
use crate::regions::conflict::{self, Decision, Heads};
use crate::replicate::delete::guarded_delete;
use crate::replicate::gates::{blocked_key, BLOCKED_MEMO};
use crate::replicate::{
    replicate_gated_tags, replicate_reference, GateRecheck, KnownHeads, PreparedPolicy, TagOutcome,
    TAG_GONE,
};
use crate::store::history::Task;
use crate::store::ledger::TagWrite;
use crate::store::queue::Job;
use crate::transfer::{Checkpoints, TransferContext, TransferError, TransferStats};

/// Attempts of a push job whose tag is missing at the source while the manifest it announced is
/// there (distribution announces before it links the tag, by milliseconds): retried as not linked
/// yet until then, skipped from that attempt on. By then (seconds later) the tag was moved to
/// other content which was deleted since (distribution removes a tag no other way), so there is
/// nothing to copy, nothing an operator can do, and a later push of the tag has its own event
/// (seed `0x50a4`: such a job was dead-lettered after 8 attempts).
pub const NOT_VISIBLE_ATTEMPTS: u32 = 3;

impl Worker {
    fn context(
        &self,
        prepared: &PreparedPolicy,
        dst: &Arc<crate::oci::RegistryClient>,
        cancel: &CancellationToken,
        stats: &Arc<TransferStats>,
        checkpoints: &Arc<Checkpoints>,
    ) -> TransferContext {
        let mut ctx = prepared.transfer_context(
            dst,
            self.ledger.clone(),
            stats.clone(),
            self.policies()
                .throttles
                .get(&prepared.policy.name)
                .cloned(),
            cancel.clone(),
            self.opts.blob_parallelism,
        );
        ctx.leases = Some(self.blob_leases.clone());
        ctx.manifest_leases = Some(self.manifest_leases.clone());
        ctx.checkpoints = checkpoints.clone();
        ctx
    }

    /// Runs a job against every destination of its policy, accounting what it moved. Interrupted
    /// uploads are checkpointed in this call only (a leased job keeps them in the queue).
    pub async fn execute(
        &self,
        job: &Job,
        cancel: &CancellationToken,
    ) -> Result<JobOutcome, JobError> {
        let checkpoints = Arc::new(Checkpoints::local());
        self.execute_recorded(job, cancel, &LiveTask::default(), checkpoints)
            .await
            .0
    }

    /// [`Worker::execute`], plus one task record per destination it reached; `live` names the
    /// destination being worked on, for progress records; `checkpoints` are the job's upload
    /// checkpoints.
    pub(super) async fn execute_recorded(
        &self,
        job: &Job,
        cancel: &CancellationToken,
        live: &LiveTask,
        checkpoints: Arc<Checkpoints>,
    ) -> (Result<JobOutcome, JobError>, Vec<Task>) {
        let mut tasks = Vec::new();
        let result = self
            .execute_with(job, cancel, &mut tasks, live, &checkpoints)
            .await;
        (result, tasks)
    }

    async fn execute_with(
        &self,
        job: &Job,
        cancel: &CancellationToken,
        tasks: &mut Vec<Task>,
        live: &LiveTask,
        checkpoints: &Arc<Checkpoints>,
    ) -> Result<JobOutcome, JobError> {
        let policies = self.policies();
        let prepared = policies.for_job(job).ok_or_else(|| match &job.source {
            Some(source) if policies.by_name.contains_key(&job.policy) => JobError::UnknownSource {
                policy: job.policy.clone(),
                source_registry: source.clone(),
            },
            _ => JobError::UnknownPolicy(job.policy.clone()),
        })?;
        let mut pushed = Vec::new();
        let mut deleted = Vec::new();
        let mut failed = None;
        for dst in prepared.dsts.clone() {
            let stats = Arc::new(TransferStats::default());
            let ctx = self.context(prepared, &dst, cancel, &stats, checkpoints);
            let started = now_ms();
            *crate::locks::lock(live) = Some((dst.name().to_string(), stats.clone(), started));
            let result = match job.kind {
                EventKind::Push => self.push(prepared, &ctx, job).await,
                EventKind::Delete => guarded_delete(prepared, &ctx, job)
                    .await
                    .map(DestOutcome::Delete),
            };
            let t = stats.snapshot();
            self.stats.transfer.add(&t);
            self.metrics.transfer(&job.policy, &t);
            tasks.push(task_record(job, dst.name(), started, &t, &result));
            let destination = dst.name().to_string();
            match result {
                Ok(DestOutcome::Push(o)) => pushed.push((destination, o)),
                Ok(DestOutcome::Delete(o)) => {
                    tracing::info!(destination = %destination, outcome = ?o, "delete handled");
                    deleted.push((destination, o));
                }
                // A stop ends the job at once; another failure leaves the other destinations
                // to be tried (each destination is its own task), and the job retries afterwards.
                Err(TransferError::Cancelled) => {
                    return Err(JobError::Transfer {
                        destination,
                        source: TransferError::Cancelled,
                    })
                }
                Err(source) => {
                    tracing::warn!(destination = %destination, error = %source, "destination failed; trying the others");
                    failed.get_or_insert(JobError::Transfer {
                        destination,
                        source,
                    });
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(match job.kind {
            EventKind::Push => JobOutcome::Pushed(pushed),
            EventKind::Delete => JobOutcome::Deleted(deleted),
        })
    }

    /// Counts a tag a gate held back, and remembers the decision in the region (so the safety net
    /// does not enqueue the same tag and digest again for [`BLOCKED_MEMO`]). Best effort.
    async fn note_blocked(&self, policy: &str, repository: &str, tag: &str, outcome: &TagOutcome) {
        let TagOutcome::Blocked { digest, gate, .. } = outcome else {
            return;
        };
        self.metrics.gate_blocked(policy, *gate);
        let key = blocked_key(policy, repository, tag, digest);
        if let Err(e) = self
            .blob_leases
            .leases
            .lease_blob("ferry", &key, &self.opts.consumer, BLOCKED_MEMO)
            .await
        {
            tracing::warn!(error = %e, "cannot remember the gate decision; the safety net may enqueue the tag again");
        }
    }

    /// A push job on one destination: the level-triggered copy, arbitrated first when the policy
    /// is bidirectional.
    async fn push(
        &self,
        prepared: &PreparedPolicy,
        ctx: &TransferContext,
        job: &Job,
    ) -> Result<DestOutcome, TransferError> {
        let (incoming, known) = if prepared.policy.mode == Mode::Bidirectional {
            match self.arbitrate(prepared, ctx, job).await? {
                Arbitration::Copy { write, heads } => (write, heads),
                Arbitration::Skip(outcome) => return Ok(DestOutcome::Push(outcome)),
            }
        } else {
            (None, None)
        };
        // A gated policy: a signature or a scan arriving can release tags a gate held back
        // (their subject's, or the scanned image's), replicated first.
        let recheck = if prepared.policy.has_gates() {
            let r = replicate_gated_tags(prepared, ctx, &job.repository, &job.reference).await?;
            for (tag, o) in &r.tags {
                self.note_blocked(&prepared.policy.name, &job.repository, tag, o)
                    .await;
            }
            Some(r)
        } else {
            None
        };
        let outcome = match &recheck {
            // A push by digest of an image (not a referrer: a scan finished, an index child): a
            // gated policy copies images only through the tags the gates judge, so the digest
            // itself is not copied (an index's children come with it). Nor is a referrer when
            // the policy does not copy referrers (it was matched for its subject's sake).
            Some(r)
                if r.digest.is_some() && (!r.is_referrer || !prepared.policy.copy_referrers) =>
            {
                TagOutcome::Skipped {
                    reason: recheck_summary(r),
                }
            }
            _ => {
                match replicate_reference(
                    prepared,
                    ctx,
                    &job.repository,
                    &job.reference,
                    job.digest.as_deref(),
                    // What arbitration `HEAD`ed on both sides just now: not asked again. (A gated
                    // re-evaluation above may have written the tag since: then ask again.)
                    known.filter(|_| recheck.as_ref().is_none_or(|r| r.tags.is_empty())),
                )
                .await
                {
                    Ok((outcome, _)) => outcome,
                    Err(TransferError::NotYetVisible { .. })
                        if job.attempt + 1 >= NOT_VISIBLE_ATTEMPTS =>
                    {
                        TagOutcome::Skipped {
                            reason: format!(
                                "{TAG_GONE}: the announced manifest is still there but the tag \
                                 never pointed at it in {NOT_VISIBLE_ATTEMPTS} attempts (moved \
                                 to content deleted since)"
                            ),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        self.note_blocked(
            &prepared.policy.name,
            &job.repository,
            &job.reference,
            &outcome,
        )
        .await;
        let outcome = match (incoming, outcome) {
            (Some(write), outcome @ (TagOutcome::Copied { .. } | TagOutcome::Unchanged { .. })) => {
                self.settle_write(prepared, ctx, job, write, outcome)
                    .await?
            }
            (_, outcome) => outcome,
        };
        Ok(DestOutcome::Push(outcome))
    }

    /// After a bidirectional copy: records its write in the ledger, unless a newer push of the tag
    /// reached the destination during the copy (its write is in the ledger by now), in which case
    /// the copy overwrote it and the newer content is put back (see [`crate::regions::conflict`]).
    async fn settle_write(
        &self,
        prepared: &PreparedPolicy,
        ctx: &TransferContext,
        job: &Job,
        write: TagWrite,
        outcome: TagOutcome,
    ) -> Result<TagOutcome, TransferError> {
        let (repository, tag) = (&job.repository, &job.reference);
        let last = match self
            .tag_writes
            .last_write(ctx.dst.name(), repository, tag)
            .await
        {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the tag ledger after the copy");
                None
            }
        };
        if let Some(newer) = conflict::overtaken_by(&write, last.as_ref()) {
            let digest = digest::parse(&newer.digest).ok_or_else(|| {
                TransferError::Policy(format!(
                    "the tag ledger of {}/{repository}:{tag} holds a malformed digest {:?}",
                    ctx.dst.name(),
                    newer.digest
                ))
            })?;
            let manifest = match ctx.dst.get_manifest(repository, digest.as_ref()).await {
                Ok(m) => Some(m),
                // The newer content was deleted from the destination since it was written (a
                // replicated delete): there is nothing to put back, and the copy stands.
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            };
            let Some(manifest) = manifest else {
                tracing::info!(
                    destination = ctx.dst.name(),
                    gone = %newer,
                    kept = %write,
                    "conflict: the newer write of the tag was deleted since; the copy stands"
                );
                self.record_write(ctx, repository, tag, &write).await;
                return Ok(outcome);
            };
            ctx.dst.put_manifest(repository, tag, &manifest).await?;
            self.metrics
                .conflict(&prepared.policy.name, CONFLICT_RESTORED);
            tracing::warn!(
                destination = ctx.dst.name(),
                winner = %newer,
                loser = %write,
                "conflict: a newer push reached the destination during the copy; put it back"
            );
            return Ok(TagOutcome::Skipped {
                reason: format!("conflict: {newer} reached the destination during the copy of {write} and was put back"),
            });
        }
        self.record_write(ctx, repository, tag, &write).await;
        Ok(outcome)
    }

    /// Records a copy's write in the ledger. The copy happened; a lost ledger write only weakens
    /// a later conflict decision, so a failure is logged, not returned.
    async fn record_write(
        &self,
        ctx: &TransferContext,
        repository: &str,
        tag: &str,
        write: &TagWrite,
    ) {
        if let Err(e) = self
            .tag_writes
            .record_write(ctx.dst.name(), repository, tag, write)
            .await
        {
            tracing::warn!(error = %e, "cannot record the tag write in the ledger");
        }
    }

    /// Whether a bidirectional job may write its tag to `ctx.dst` (see [`crate::regions::conflict`]).
    async fn arbitrate(
        &self,
        prepared: &PreparedPolicy,
        ctx: &TransferContext,
        job: &Job,
    ) -> Result<Arbitration, TransferError> {
        let (repository, tag) = (&job.repository, &job.reference);
        let copy = |write: Option<TagWrite>, heads: Option<KnownHeads>| {
            Ok(Arbitration::Copy { write, heads })
        };
        if digest::parse(tag).is_some() {
            // By digest: content-addressed, nothing to conflict on.
            return copy(None, None);
        }
        let Some(source_head) = ctx.src.head_digest(repository, tag).await? else {
            return copy(None, None);
        };
        let destination_head = ctx.dst.head_digest(repository, tag).await?;
        let heads = KnownHeads {
            source: source_head.clone(),
            destination: destination_head.clone(),
        };
        let source = source_head.to_string();
        let destination = destination_head.map(|d| d.to_string());
        let skip = |reason: String| Ok(Arbitration::Skip(TagOutcome::Skipped { reason }));
        match conflict::compare_heads(job.digest.as_deref(), &source, destination.as_deref()) {
            Heads::Same => return copy(None, Some(heads)),
            Heads::Skip(reason) => return skip(reason),
            Heads::Contested => {}
        }
        let incoming = TagWrite {
            digest: source,
            at_ms: conflict::write_time(job.trigger, job.event_time_ms),
            region: job
                .origin_region
                .clone()
                .unwrap_or_else(|| self.opts.region.recorded()),
        };
        let last = self
            .tag_writes
            .last_write(ctx.dst.name(), repository, tag)
            .await
            .map_err(|e| TransferError::Policy(format!("cannot read the tag ledger: {e}")))?;
        let policy = &prepared.policy.name;
        match conflict::decide(&incoming, destination.as_deref(), last.as_ref(), now_ms()) {
            Decision::Copy { replaces } => {
                if let Some(lost) = &replaces {
                    self.metrics.conflict(policy, CONFLICT_REPLACED);
                    tracing::info!(
                        destination = ctx.dst.name(),
                        winner = %incoming,
                        loser = %lost,
                        "conflict: the incoming push is newer; replacing the destination's"
                    );
                }
                copy(Some(incoming), Some(heads))
            }
            Decision::Keep { kept } => {
                self.metrics.conflict(policy, CONFLICT_KEPT);
                tracing::warn!(
                    destination = ctx.dst.name(),
                    winner = %kept,
                    loser = %incoming,
                    "conflict: the destination's push is newer; keeping it"
                );
                skip(format!("conflict: kept {kept}, newer than {incoming}"))
            }
            Decision::Wait => Err(TransferError::ConflictPending {
                registry: ctx.dst.name().to_string(),
                repository: repository.clone(),
                tag: tag.clone(),
                digest: destination.unwrap_or_default(),
            }),
        }
    }
}

/// The outcome text of a by-digest job that only re-evaluated the covered tags at its digest.
fn recheck_summary(r: &GateRecheck) -> String {
    let digest = r.digest.as_ref().map(|d| d.to_string()).unwrap_or_default();
    if r.tags.is_empty() {
        return format!("no covered tag at {digest} to re-evaluate");
    }
    let tags: Vec<String> = r
        .tags
        .iter()
        .map(|(t, o)| match o {
            TagOutcome::Copied { .. } => format!("{t} copied"),
            TagOutcome::Unchanged { .. } => format!("{t} unchanged"),
            TagOutcome::Blocked { gate, .. } => format!("{t} blocked by {gate}"),
            TagOutcome::Kept { .. } => format!("{t} kept"),
            TagOutcome::Skipped { .. } => format!("{t} skipped"),
            TagOutcome::Failed { .. } => format!("{t} failed"),
        })
        .collect();
    format!("covered tags at {digest} re-evaluated: {}", tags.join(", "))
}

/// What arbitration allows a bidirectional job.
enum Arbitration {
    /// Copy, and record `write` in the ledger once done (`None`: nothing to record); `heads`: both
    /// sides' digests as arbitration `HEAD`ed them, so the copy does not ask again.
    Copy {
        write: Option<TagWrite>,
        heads: Option<KnownHeads>,
    },
    Skip(TagOutcome),
}
