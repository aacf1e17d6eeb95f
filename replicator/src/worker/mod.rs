//! Workers: take jobs from the queue and make destinations match the source, one job at a time per
//! slot, up to `concurrency` slots.
//!
//! Invariants:
//! - **Level-triggered**: a push job re-reads the source when it runs
//!   ([`replicate_reference`](crate::replicate::replicate_reference)), so
//!   a stale, duplicated or reordered job can never roll a destination back; a delete job deletes a
//!   destination manifest only if it still holds the deleted digest *and* the source no longer
//!   has it, and never when a tag the policy does not cover points at it (reported instead).
//! - **Ack after confirmation**: a job is acked only after every destination verified the digest;
//!   failures go back to the queue (`fail`: retried with backoff or dead-lettered), and on shutdown
//!   unfinished jobs are released without counting an attempt.
//! - **Leases are kept alive**: a heartbeat renews the lease every third of its length while the job
//!   runs; if the lease is lost (another worker reclaimed it) the job is cancelled at once.
//! - Every task is owned by a `JoinSet`; nothing is detached.
//!
//! # Layout
//! - this file: the worker, its claim loop, and one leased job from claim to record.
//! - `lease.rs`: the lease heartbeat. `pause.rs`: the cache of paused policies. `stop.rs`: the
//!   watch for a stopped run. `settle.rs`: ack, fail or release with the queue (a pure verdict).
//! - `execute.rs`: one job against every destination. `record.rs`: the history records of jobs
//!   and tasks. `metrics.rs`: the worker's Prometheus metrics.
//! - Elsewhere: the guarded delete in [`crate::replicate::delete`], the conflict rule in [`crate::regions::conflict`],
//!   the policy set in [`crate::replicate::policies`].
mod execute;
mod lease;
mod metrics;
mod pause;
mod record;
mod settle;
mod stop;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use self::execute::NOT_VISIBLE_ATTEMPTS;
use self::lease::heartbeat;
pub use self::metrics::WorkerMetrics;
use self::pause::PauseCache;
pub use self::pause::PAUSED_TTL;
pub use self::record::finish_run_if_done;
use crate::catalog::Current;
use crate::clock::now_ms;
use crate::config::{Config, Region};
use crate::replicate::delete::DeleteOutcome;
use crate::replicate::policies::Policies;
use crate::replicate::{Registries, SyncError, TagOutcome};
use crate::runtime::hostname;
use crate::store::history::{ExecutionState, History, Task, WorkerInfo};
use crate::store::ledger::{MemoryTagLedger, TagLedger};
use crate::store::queue::{JobQueue, Lease, Pauses};
use crate::store::Store;
use crate::throttle::{SharedSpeed, SharedSpeedSlot};
use crate::transfer::{
    BlobLeases, BlobLedger, Checkpoints, ManifestLeases, TransferError, TransferStats,
};

/// Knobs of a worker process.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Queue consumer name; unique per worker process (host + pid is a good default).
    pub consumer: String,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Lease per job; renewed every third of it while the job runs.
    pub lease: Duration,
    /// Pause between empty polls of the queue.
    pub poll_interval: Duration,
    /// On shutdown, how long running jobs may take before they are cancelled and released.
    pub grace: Duration,
    /// Blobs of one manifest copied concurrently.
    pub blob_parallelism: usize,
    /// How often the worker announces itself in the history (listed as live for 3 periods).
    pub heartbeat: Duration,
    /// This worker's region: shown in the worker list, and recorded as where a tag write was
    /// made when the job does not say.
    pub region: Region,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            consumer: format!("worker-{}", std::process::id()),
            concurrency: 4,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
            grace: Duration::from_secs(20),
            blob_parallelism: 8,
            heartbeat: Duration::from_secs(5),
            region: Region::single_site(),
        }
    }
}

/// What one job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Per destination: the outcome of the push reconcile.
    Pushed(Vec<(String, TagOutcome)>),
    /// Per destination: what the delete did.
    Deleted(Vec<(String, DeleteOutcome)>),
}

impl JobOutcome {
    /// A push that found every destination already holding the source digest (a duplicate event,
    /// or the echo of Ferry's own write): nothing moved.
    pub fn is_noop(&self) -> bool {
        matches!(self, JobOutcome::Pushed(v) if !v.is_empty() && v.iter().all(|(_, o)| matches!(o, TagOutcome::Unchanged { .. })))
    }

    /// A push that copied the tag to at least one destination.
    pub fn copied(&self) -> bool {
        matches!(self, JobOutcome::Pushed(v) if v.iter().any(|(_, o)| matches!(o, TagOutcome::Copied { .. })))
    }
}

/// What one job did on one destination.
enum DestOutcome {
    Push(TagOutcome),
    Delete(DeleteOutcome),
}

/// The destination a job is working on now, its live counters and when it started there.
type LiveTask = std::sync::Mutex<Option<(String, Arc<TransferStats>, i64)>>;

/// Counters for metrics and status.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub jobs_succeeded: AtomicU64,
    pub jobs_failed: AtomicU64,
    pub jobs_released: AtomicU64,
    pub in_flight: AtomicU64,
    pub transfer: Arc<TransferStats>,
}

/// Why a job failed; `retryable` decides between a retry and the dead-letter list.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("policy {0:?} is not in this worker's config (enabled policies only); the job cannot run here")]
    UnknownPolicy(String),
    #[error("policy {policy:?} does not read from registry {source_registry:?} (the job says it does); the job cannot run here")]
    UnknownSource {
        policy: String,
        source_registry: String,
    },
    #[error("destination {destination}: {source}")]
    Transfer {
        destination: String,
        #[source]
        source: TransferError,
    },
}

impl JobError {
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::UnknownPolicy(_) | JobError::UnknownSource { .. } => false,
            JobError::Transfer { source, .. } => source.is_retryable(),
        }
    }
}

/// A worker: policies prepared once, a queue, and the run loop.
pub struct Worker {
    queue: Arc<dyn JobQueue>,
    /// Paused policies, and where the jobs of one wait.
    pauses: Arc<dyn Pauses>,
    /// Where a job's chunked uploads stand (handed to the transfer with the job's lease).
    checkpoints: Arc<dyn crate::store::queue::Checkpoints>,
    history: Arc<dyn History>,
    started_at_ms: i64,
    /// The enabled policies, replaced as a whole by [`Worker::reload`].
    prepared: Current<Policies>,
    ledger: Arc<BlobLedger>,
    /// Last writes of the tags this region writes (bidirectional conflicts).
    tag_writes: Arc<dyn TagLedger>,
    /// Where policies' `speed` timelines are shared with the region's other workers.
    shared_speed: SharedSpeedSlot,
    opts: WorkerOptions,
    pub stats: Arc<WorkerStats>,
    metrics: WorkerMetrics,
    /// Shared with every other worker of the queue: one uploader per (destination, blob).
    blob_leases: Arc<BlobLeases>,
    /// Shared with every other worker of the queue: one writer per manifest pushed by digest.
    manifest_leases: Arc<ManifestLeases>,
    /// Paused policies as last read, and when (read at most every [`PAUSED_TTL`]).
    paused: PauseCache,
}

impl Worker {
    /// Prepares every enabled policy of `config` (no network I/O). Takes jobs, pauses, blob leases
    /// and upload checkpoints from `store`; executions, tasks and this worker's heartbeat are
    /// recorded in its history.
    pub fn new(
        config: &Config,
        registries: &Registries,
        store: &Store,
        opts: WorkerOptions,
    ) -> Result<Worker, SyncError> {
        let shared_speed = SharedSpeedSlot::default();
        let prepared = Current::new(Policies::new(config, registries, &shared_speed)?);
        // A dead worker's blob and manifest leases expire when its job leases do.
        let blob_leases = Arc::new(BlobLeases {
            leases: store.leases.clone(),
            holder: opts.consumer.clone(),
            ttl: opts.lease,
        });
        let manifest_leases = Arc::new(ManifestLeases {
            leases: store.manifest_leases.clone(),
            holder: opts.consumer.clone(),
            ttl: opts.lease,
        });
        Ok(Worker {
            queue: store.jobs.clone(),
            pauses: store.pauses.clone(),
            checkpoints: store.checkpoints.clone(),
            history: store.history.clone(),
            started_at_ms: now_ms(),
            prepared,
            ledger: Arc::default(),
            tag_writes: Arc::new(MemoryTagLedger::default()),
            shared_speed,
            opts,
            stats: Arc::default(),
            metrics: WorkerMetrics::default(),
            blob_leases,
            manifest_leases,
            paused: PauseCache::default(),
        })
    }

    /// The policies jobs run with now.
    fn policies(&self) -> Arc<Policies> {
        self.prepared.get()
    }

    /// Replaces the worker's policies (policies stored or changed through the admin API); jobs
    /// already running keep the policy they started with. On error the old set stays.
    pub fn reload(&self, config: &Config, registries: &Registries) -> Result<(), SyncError> {
        self.prepared
            .set(Policies::new(config, registries, &self.shared_speed)?);
        Ok(())
    }

    /// Decides bidirectional conflicts with the region's shared ledger (the default is this
    /// process's own, right only when one process writes the registries).
    pub fn with_tag_ledger(mut self, ledger: Arc<dyn TagLedger>) -> Self {
        self.tag_writes = ledger;
        self
    }

    /// Holds each policy's `speed` across every worker sharing `speed` (the region's Redis) instead
    /// of per process (`None`: per process).
    pub fn with_shared_speed(self, speed: Option<Arc<dyn SharedSpeed>>) -> Self {
        if let Some(speed) = speed {
            let _ = self.shared_speed.set(speed);
        }
        self
    }

    /// Exports this worker's metrics through `metrics` (see [`WorkerMetrics::register`]).
    pub fn with_metrics(mut self, metrics: WorkerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Claims and runs jobs until `shutdown` fires; then stops claiming, lets running jobs finish
    /// within the grace period, and cancels and releases the rest. Announces the worker in the
    /// history while it runs and deregisters it at the end.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let stop_announcing = CancellationToken::new();
        let jobs = async {
            self.clone().run_jobs(shutdown).await;
            stop_announcing.cancel();
        };
        tokio::join!(jobs, self.announce(stop_announcing.clone()));
        if let Err(e) = self.history.deregister(&self.opts.consumer).await {
            tracing::warn!(error = %e, "cannot deregister this worker; it drops off the worker list when its heartbeat expires");
        }
    }

    /// What the worker list shows about this worker now.
    pub fn info(&self) -> WorkerInfo {
        let mut policies: Vec<String> = self.policies().by_name.keys().cloned().collect();
        policies.sort_unstable();
        WorkerInfo {
            id: self.opts.consumer.clone(),
            host: hostname(),
            region: self.opts.region.recorded(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_ms: self.started_at_ms,
            last_seen_ms: now_ms(),
            concurrency: u32::try_from(self.opts.concurrency).unwrap_or(u32::MAX),
            in_flight: self.stats.in_flight.load(Ordering::Relaxed),
            jobs_succeeded: self.stats.jobs_succeeded.load(Ordering::Relaxed),
            jobs_failed: self.stats.jobs_failed.load(Ordering::Relaxed),
            policies,
        }
    }

    /// Heartbeats into the history every `opts.heartbeat` until `stop`.
    async fn announce(&self, stop: CancellationToken) {
        let period = self.opts.heartbeat.max(Duration::from_millis(10));
        loop {
            if let Err(e) = self.history.heartbeat(&self.info(), period * 3).await {
                tracing::warn!(error = %e, "cannot record the worker heartbeat");
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {},
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn run_jobs(self: Arc<Self>, shutdown: CancellationToken) {
        let hard_stop = CancellationToken::new();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut claim_errors = 0u32;
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let free = self.opts.concurrency.saturating_sub(tasks.len());
            if free == 0 {
                tokio::select! {
                    _ = tasks.join_next() => {},
                    _ = shutdown.cancelled() => {},
                }
                continue;
            }
            match self
                .queue
                .claim(&self.opts.consumer, free, self.opts.lease)
                .await
            {
                Ok(leases) if !leases.is_empty() => {
                    claim_errors = 0;
                    for lease in leases {
                        let me = self.clone();
                        tasks.spawn(me.run_leased(
                            lease,
                            shutdown.clone(),
                            hard_stop.child_token(),
                        ));
                    }
                }
                Ok(_) => {
                    claim_errors = 0;
                    tokio::select! {
                        _ = tokio::time::sleep(self.opts.poll_interval) => {},
                        _ = shutdown.cancelled() => {},
                    }
                }
                Err(e) => {
                    claim_errors += 1;
                    let d = crate::oci::client::backoff(claim_errors);
                    tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "cannot claim jobs");
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {},
                        _ = shutdown.cancelled() => {},
                    }
                }
            }
        }
        tracing::info!(
            running = tasks.len(),
            grace_s = self.opts.grace.as_secs(),
            "worker stopping: finishing running jobs"
        );
        let drained = tokio::time::timeout(self.opts.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                running = tasks.len(),
                "grace period over: cancelling and releasing running jobs"
            );
            hard_stop.cancel();
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Runs one leased job with its heartbeat, then acks, fails or releases it.
    async fn run_leased(
        self: Arc<Self>,
        lease: Lease,
        shutdown: CancellationToken,
        hard_stop: CancellationToken,
    ) {
        let job = &lease.job;
        let span = tracing::info_span!("job", job_id = %job.id, policy = %job.policy, kind = ?job.kind, repository = %job.repository, reference = %job.reference, attempt = job.attempt + 1);
        if let Some(traceparent) = &job.traceparent {
            // Before the span is first entered: the job joins the trace of the event behind it.
            crate::runtime::telemetry::set_parent(&span, traceparent);
        }
        async {
            if !self.admit(&lease).await {
                return;
            }
            self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let signals = JobSignals {
                cancel: hard_stop.child_token(),
                lease_lost: CancellationToken::new(),
                run_stopped: CancellationToken::new(),
                shutdown,
            };
            let (result, tasks) = self.run_watched(&lease, &signals).await;
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.finish(&lease, result, tasks, &signals).await;
        }
        .instrument(span)
        .await
    }

    /// Whether a claimed job runs now: the job of a paused policy is parked until it is resumed,
    /// the job of a stopped run is dropped.
    async fn admit(&self, lease: &Lease) -> bool {
        let job = &lease.job;
        if self
            .paused
            .is_paused(self.pauses.as_ref(), &job.policy)
            .await
        {
            match self.pauses.park(lease).await {
                Ok(true) => {
                    tracing::info!("policy paused: job parked until it is resumed");
                    self.record_with(
                        job,
                        ExecutionState::Queued,
                        None,
                        Some("the policy is paused; the job runs when it is resumed".into()),
                        &[],
                    )
                    .await;
                    return false;
                }
                // Resumed meanwhile: run it.
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot park the job of a paused policy; it will be handed out again");
                    return false;
                }
            }
        }
        if let Some(run) = &job.execution_id {
            if self.run_is_stopped(run).await {
                tracing::info!(execution = %run, "the run was stopped: skipping its job");
                if let Err(e) = self.queue.ack(lease).await {
                    tracing::warn!(error = %e, "cannot drop the job of a stopped run; it will be skipped again");
                }
                return false;
            }
        }
        true
    }

    /// Runs the job while its heartbeat keeps the lease, the stop watch follows its run and its
    /// progress is noted; returns its result and one task record per destination it reached.
    async fn run_watched(
        self: &Arc<Self>,
        lease: &Lease,
        signals: &JobSignals,
    ) -> (Result<JobOutcome, JobError>, Vec<Task>) {
        let job = &lease.job;
        // Both arms own their data: borrowed captures make the spawned future's `Send` bound
        // lifetime-specific.
        let heartbeat = heartbeat(
            self.queue.clone(),
            lease.clone(),
            self.opts.lease,
            signals.cancel.clone(),
            signals.lease_lost.clone(),
        );
        let live: Arc<LiveTask> = Arc::default();
        // Where this job's chunked uploads stood when it last ran (on any worker).
        let checkpoints = Arc::new(Checkpoints::for_lease(
            self.checkpoints.clone(),
            lease.clone(),
            signals.lease_lost.clone(),
        ));
        let work = {
            let (me, job, cancel, live) = (
                self.clone(),
                job.clone(),
                signals.cancel.clone(),
                live.clone(),
            );
            async move { me.execute_recorded(&job, &cancel, &live, checkpoints).await }
        };
        let finished = CancellationToken::new();
        let stop_watch = self.watch_run_stop(job, &signals.cancel, &signals.run_stopped);
        let work = async {
            let r = tokio::select! {
                r = work => r,
                // The heartbeat only returns after cancelling the job (lease lost).
                () = heartbeat => (Err(JobError::Transfer { destination: String::new(), source: TransferError::Cancelled }), Vec::new()),
                // Never returns: a stop cancels the job, which then ends (cancelling its
                // uploads) through `work`.
                () = stop_watch => unreachable!("the stop watch never returns"),
            };
            finished.cancel();
            r
        };
        let ((), r) = tokio::join!(self.note_progress(job, &live, &finished), work);
        r
    }

    /// Settles the job with the queue and records how it ended.
    async fn finish(
        &self,
        lease: &Lease,
        result: Result<JobOutcome, JobError>,
        tasks: Vec<Task>,
        signals: &JobSignals,
    ) {
        let job = &lease.job;
        if result.is_ok() {
            // The destination confirmed: the record does not depend on the ack, so both go
            // out together.
            tokio::join!(
                self.settle(lease, result, signals),
                self.record(job, ExecutionState::Succeeded, None, &tasks)
            );
            return;
        }
        let error = result.as_ref().err().map(|e| e.to_string());
        // `None`: another worker owns the job now; its records are that worker's to write.
        let Some(settled) = self.settle(lease, result, signals).await else {
            return;
        };
        let (state, next_try) = settled.recorded_as();
        self.record_with(job, state, next_try, error, &tasks).await;
    }
}

/// The tokens that end one job early, each telling why.
struct JobSignals {
    /// Cancels the job (a child of the worker's hard stop).
    cancel: CancellationToken,
    /// Fired by the heartbeat when another worker reclaimed the lease.
    lease_lost: CancellationToken,
    /// Fired by the stop watch when the job's run was stopped.
    run_stopped: CancellationToken,
    /// The worker's shutdown.
    shutdown: CancellationToken,
}

impl JobSignals {
    fn interrupts(&self) -> settle::Interrupts {
        settle::Interrupts {
            lease_lost: self.lease_lost.is_cancelled(),
            run_stopped: self.run_stopped.is_cancelled(),
            cancelled: self.cancel.is_cancelled(),
            shutting_down: self.shutdown.is_cancelled(),
        }
    }
}

impl crate::catalog::Reload for Worker {
    fn what(&self) -> &'static str {
        "worker"
    }

    fn reload(&self, config: &Config, registries: &Registries) -> Result<(), String> {
        Worker::reload(self, config, registries).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pushed(outcomes: &[TagOutcome]) -> JobOutcome {
        JobOutcome::Pushed(
            outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| (format!("dst{i}"), o.clone()))
                .collect(),
        )
    }

    fn unchanged() -> TagOutcome {
        TagOutcome::Unchanged {
            digest: "sha256:a".into(),
        }
    }

    fn copied() -> TagOutcome {
        TagOutcome::Copied {
            digest: "sha256:a".into(),
        }
    }

    #[test]
    fn a_push_is_a_noop_only_when_every_destination_already_held_the_digest() {
        assert!(pushed(&[unchanged(), unchanged()]).is_noop());
        assert!(!pushed(&[unchanged(), copied()]).is_noop());
        assert!(!pushed(&[]).is_noop());
        assert!(!JobOutcome::Deleted(Vec::new()).is_noop());
    }

    #[test]
    fn a_push_copied_when_any_destination_received_the_tag() {
        assert!(pushed(&[unchanged(), copied()]).copied());
        assert!(!pushed(&[unchanged()]).copied());
        assert!(!JobOutcome::Deleted(Vec::new()).copied());
    }
}
