//! Workers: take jobs from the queue and make destinations match the source, one job at a time per
//! slot, up to `concurrency` slots.
//!
//! Invariants:
//! - **Level-triggered**: a push job re-reads the source when it runs ([`reconcile_reference`]), so
//!   a stale, duplicated or reordered job can never roll a destination back; a delete job deletes a
//!   destination manifest only if it still holds the deleted digest *and* the source no longer
//!   has it, and never when a tag the policy does not cover points at it (reported instead).
//! - **Ack after confirmation**: a job is acked only after every destination verified the digest;
//!   failures go back to the queue (`fail`: retried with backoff or dead-lettered), and on shutdown
//!   unfinished jobs are released without counting an attempt.
//! - **Leases are kept alive**: a heartbeat renews the lease every third of its length while the job
//!   runs; if the lease is lost (another worker reclaimed it) the job is cancelled at once.
//! - Every task is owned by a `JoinSet`; nothing is detached.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::catalog::Current;
use crate::config::Config;
use crate::conflict::{self, Decision, MemoryTagLedger, TagLedger, TagWrite};
use crate::event::{duration_ms, now_ms, EventKind};
use crate::history::{Execution, ExecutionState, History, Origin, Task, TaskState, WorkerInfo};
use crate::oci::digest;
use crate::oci::TagDelete;
use crate::policy::{Mode, Policy};
use crate::queue::{FailOutcome, Job, JobQueue, Lease, QueueError};
use crate::sync::{reconcile_reference, PreparedPolicy, Registries, SyncError, TagOutcome};
use crate::throttle::{SharedSpeed, SharedSpeedSlot, Throttle};
use crate::transfer::{
    BlobLeases, BlobLedger, Checkpoints, StatsSnapshot, TransferContext, TransferError,
    TransferStats,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// How long a worker trusts its list of paused policies: a pause takes effect on every worker
/// within this time (the admin API's PausePolicy answers only after it).
pub const PAUSED_TTL: Duration = Duration::from_secs(1);

/// How often a run's job checks whether the run was stopped (a stop takes effect within this plus
/// the time to cancel the transfer).
const STOP_POLL: Duration = Duration::from_millis(500);

/// How often a running job's progress (bytes and blobs per destination) is recorded.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The destination a job is working on now, its live counters and when it started there.
type LiveTask = std::sync::Mutex<Option<(String, Arc<TransferStats>, i64)>>;

/// A job running longer than this is recorded as `running` in the history.
const RUNNING_NOTE_AFTER: Duration = Duration::from_millis(500);

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
    /// Region name shown in the worker list.
    pub region: String,
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
            region: String::new(),
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted {
        digest: String,
    },
    /// Nothing deleted, and why (already gone, holds other content, source still has it, an
    /// uncovered tag points at it…).
    Kept {
        reason: String,
    },
}

/// Counters for metrics and status.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub jobs_succeeded: AtomicU64,
    pub jobs_failed: AtomicU64,
    pub jobs_released: AtomicU64,
    pub in_flight: AtomicU64,
    pub transfer: Arc<TransferStats>,
}

/// Replication lag (ms) of a copy caused by an event at `event_time_ms`; `None` when the job has
/// no event time.
fn lag_since(event_time_ms: i64) -> Option<u64> {
    (event_time_ms > 0).then(|| now_ms().saturating_sub(event_time_ms).max(0) as u64)
}

/// The worker's Prometheus metrics (DESIGN.md "Metrics an operator alerts on"). Labels are
/// bounded: policy names, job kinds and fixed outcomes; never a tag or digest.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    jobs: Family<JobLabels, Counter>,
    lag: Histogram,
    bytes: Family<PolicyDirection, Counter>,
    blobs: Family<PolicyOutcome, Counter>,
    conflicts: Family<PolicyOutcome, Counter>,
    noops: Family<PolicyLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    policy: String,
    kind: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyDirection {
    policy: String,
    direction: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyOutcome {
    policy: String,
    outcome: String,
}

impl Default for WorkerMetrics {
    /// Metrics that are counted but not exported (tests, embedded use without `/metrics`).
    fn default() -> Self {
        WorkerMetrics {
            jobs: Family::default(),
            lag: Histogram::new(exponential_buckets(0.05, 2.0, 16)),
            bytes: Family::default(),
            blobs: Family::default(),
            conflicts: Family::default(),
            noops: Family::default(),
        }
    }
}

impl WorkerMetrics {
    /// Registers the worker metrics in `registry`.
    pub fn register(registry: &mut Registry) -> WorkerMetrics {
        // Lag buckets: 50 ms … ~27 min.
        let m = WorkerMetrics::default();
        registry.register(
            "ferry_jobs",
            "Jobs finished, by policy, kind and outcome",
            m.jobs.clone(),
        );
        registry.register(
            "ferry_replication_lag_seconds",
            "Event time to the tag being visible on the destination",
            m.lag.clone(),
        );
        registry.register(
            "ferry_bytes",
            "Blob bytes moved, by policy and direction",
            m.bytes.clone(),
        );
        registry.register(
            "ferry_blobs",
            "Blobs handled, by policy and outcome (skipped, mounted, copied)",
            m.blobs.clone(),
        );
        registry.register(
            "ferry_noop_jobs",
            "Push jobs that found every destination already holding the source digest (duplicate events, echoes of Ferry's own writes)",
            m.noops.clone(),
        );
        registry.register(
            "ferry_conflicts",
            "Bidirectional conflicts decided, by policy and outcome (kept: the destination's newer push stayed; replaced: the incoming newer push won)",
            m.conflicts.clone(),
        );
        m
    }

    fn conflict(&self, policy: &str, outcome: &str) {
        self.conflicts
            .get_or_create(&PolicyOutcome {
                policy: policy.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    fn job(&self, policy: &str, kind: EventKind, outcome: &str) {
        let kind = kind.as_str();
        self.jobs
            .get_or_create(&JobLabels {
                policy: policy.into(),
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    fn transfer(&self, policy: &str, t: &StatsSnapshot) {
        let p = |o: &str| PolicyOutcome {
            policy: policy.into(),
            outcome: o.into(),
        };
        self.bytes
            .get_or_create(&PolicyDirection {
                policy: policy.into(),
                direction: "to_destination".into(),
            })
            .inc_by(t.bytes_copied);
        self.blobs
            .get_or_create(&p("copied"))
            .inc_by(t.blobs_copied);
        self.blobs
            .get_or_create(&p("mounted"))
            .inc_by(t.blobs_mounted);
        self.blobs
            .get_or_create(&p("skipped"))
            .inc_by(t.blobs_skipped);
    }
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
    /// Paused policies as last read, and when (read at most every [`PAUSED_TTL`]).
    paused: std::sync::Mutex<Option<(tokio::time::Instant, std::collections::BTreeSet<String>)>>,
}

impl Worker {
    /// Prepares every enabled policy of `config` (no network I/O). Executions, tasks and this
    /// worker's heartbeat are recorded in `history`.
    pub fn new(
        config: &Config,
        registries: &Registries,
        queue: Arc<dyn JobQueue>,
        history: Arc<dyn History>,
        opts: WorkerOptions,
    ) -> Result<Worker, SyncError> {
        let shared_speed = SharedSpeedSlot::default();
        let prepared = Current::new(Policies::new(config, registries, &shared_speed)?);
        // A dead worker's blob leases expire when its job leases do.
        let blob_leases = Arc::new(BlobLeases {
            queue: queue.clone(),
            holder: opts.consumer.clone(),
            ttl: opts.lease,
        });
        Ok(Worker {
            queue,
            history,
            started_at_ms: now_ms(),
            prepared,
            ledger: Arc::default(),
            tag_writes: Arc::new(MemoryTagLedger::default()),
            shared_speed,
            opts,
            stats: Arc::default(),
            metrics: WorkerMetrics::default(),
            blob_leases,
            paused: std::sync::Mutex::new(None),
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
            region: self.opts.region.clone(),
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
            crate::telemetry::set_parent(&span, traceparent);
        }
        async {
            if self.is_paused(&job.policy).await {
                match self.queue.park(&lease).await {
                    Ok(true) => {
                        tracing::info!("policy paused: job parked until it is resumed");
                        self.record_with(job, ExecutionState::Queued, None, Some("the policy is paused; the job runs when it is resumed".into()), &[]).await;
                        return;
                    }
                    // Resumed meanwhile: run it.
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot park the job of a paused policy; it will be handed out again");
                        return;
                    }
                }
            }
            if let Some(run) = &job.execution_id {
                if self.run_is_stopped(run).await {
                    tracing::info!(execution = %run, "the run was stopped: skipping its job");
                    if let Err(e) = self.queue.ack(&lease).await {
                        tracing::warn!(error = %e, "cannot drop the job of a stopped run; it will be skipped again");
                    }
                    return;
                }
            }
            self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let job_cancel = hard_stop.child_token();
            let run_stopped = CancellationToken::new();
            let lease_lost = CancellationToken::new();
            // Both arms own their data: borrowed captures make the spawned future's `Send` bound
            // lifetime-specific.
            let heartbeat = heartbeat(
                self.queue.clone(),
                lease.clone(),
                self.opts.lease,
                job_cancel.clone(),
                lease_lost.clone(),
            );
            let live: Arc<LiveTask> = Arc::default();
            // Where this job's chunked uploads stood when it last ran (on any worker).
            let checkpoints = Arc::new(Checkpoints::for_lease(
                self.queue.clone(),
                lease.clone(),
                lease_lost.clone(),
            ));
            let work = {
                let (me, job, cancel, live) = (self.clone(), lease.job.clone(), job_cancel.clone(), live.clone());
                async move { me.execute_recorded(&job, &cancel, &live, checkpoints).await }
            };
            let finished = CancellationToken::new();
            let stop_watch = self.watch_run_stop(job, &job_cancel, &run_stopped);
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
            // A job still running after RUNNING_NOTE_AFTER is recorded as running, then its
            // progress every PROGRESS_EVERY (quick jobs, most of them, only get their final
            // record). These notes are written before the final record, which waits for them.
            let note = async {
                tokio::select! {
                    () = tokio::time::sleep(RUNNING_NOTE_AFTER) => {}
                    () = finished.cancelled() => return,
                }
                loop {
                    let progress: Vec<Task> = crate::locks::lock(&live)
                        .as_ref()
                        .map(|(dst, stats, started)| running_task(job, dst, *started, &stats.snapshot()))
                        .into_iter()
                        .collect();
                    self.record(job, ExecutionState::Running, None, &progress).await;
                    tokio::select! {
                        () = tokio::time::sleep(PROGRESS_EVERY) => {}
                        () = finished.cancelled() => return,
                    }
                }
            };
            let ((), (result, tasks)) = tokio::join!(note, work);
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            if result.is_ok() {
                // The destination confirmed: the record does not depend on the ack, so both go
                // out together.
                tokio::join!(
                    self.settle(&lease, result, &job_cancel, &lease_lost, &run_stopped, &shutdown),
                    self.record(job, ExecutionState::Succeeded, None, &tasks)
                );
                return;
            }
            let error = result.as_ref().err().map(|e| e.to_string());
            let settled = self
                .settle(&lease, result, &job_cancel, &lease_lost, &run_stopped, &shutdown)
                .await;
            let (state, next_try) = match settled {
                // Another worker owns the job now; its records are that worker's to write.
                None => return,
                Some(Settled::Succeeded) => (ExecutionState::Succeeded, None),
                Some(Settled::Retrying { next_try_at_ms }) => {
                    (ExecutionState::Retrying, Some(next_try_at_ms))
                }
                Some(Settled::DeadLettered) => (ExecutionState::Failed, None),
                Some(Settled::Released) => (ExecutionState::Queued, None),
                Some(Settled::Stopped) => (ExecutionState::Stopped, None),
            };
            self.record_with(job, state, next_try, error, &tasks).await;
        }
        .instrument(span)
        .await
    }

    /// Records the job's execution (its own, or its tasks under a run's execution). Best effort.
    async fn record(
        &self,
        job: &Job,
        state: ExecutionState,
        next_try_at_ms: Option<i64>,
        tasks: &[Task],
    ) {
        self.record_with(job, state, next_try_at_ms, None, tasks)
            .await
    }

    async fn record_with(
        &self,
        job: &Job,
        state: ExecutionState,
        next_try_at_ms: Option<i64>,
        error: Option<String>,
        tasks: &[Task],
    ) {
        let r = match &job.execution_id {
            Some(run) => self.record_run(run, job, state, error, tasks).await,
            None => {
                let mut e = Execution::new(&job.id, &job.policy, job.trigger, job.enqueued_at_ms);
                e.state = state;
                e.ended_at_ms = state.is_final().then(now_ms);
                e.attempts = job.attempt + 1;
                e.next_try_at_ms = next_try_at_ms;
                e.error = error;
                e.worker = Some(self.opts.consumer.clone());
                e.origin = Some(Origin {
                    event_id: job.event_id.clone(),
                    event_time_ms: job.event_time_ms,
                    kind: job.kind,
                    repository: job.repository.clone(),
                    reference: job.reference.clone(),
                    digest: job.digest.clone(),
                });
                self.history.record(&e, tasks).await
            }
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot record the execution in the history");
        }
    }

    /// Whether `policy` is paused, from a list read at most every [`PAUSED_TTL`] (a queue error
    /// counts as "not paused": the job runs).
    async fn is_paused(&self, policy: &str) -> bool {
        let fresh = {
            let cached = crate::locks::lock(&self.paused);
            cached
                .as_ref()
                .filter(|(at, _)| at.elapsed() < PAUSED_TTL)
                .map(|(_, set)| set.contains(policy))
        };
        if let Some(paused) = fresh {
            return paused;
        }
        match self.queue.paused().await {
            Ok(set) => {
                let paused = set.contains(policy);
                *crate::locks::lock(&self.paused) = Some((tokio::time::Instant::now(), set));
                paused
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the paused policies; running the job");
                false
            }
        }
    }

    /// Whether the run `run` was stopped (a history error counts as "not stopped": the job runs).
    async fn run_is_stopped(&self, run: &str) -> bool {
        matches!(
            self.history.execution(run).await,
            Ok(Some(e)) if e.state == ExecutionState::Stopped
        )
    }

    /// For a run's job: checks every [`STOP_POLL`] whether the run was stopped, and if so cancels
    /// the job (`run_stopped` tells why). Never returns.
    async fn watch_run_stop(
        &self,
        job: &Job,
        job_cancel: &CancellationToken,
        run_stopped: &CancellationToken,
    ) {
        if let Some(run) = &job.execution_id {
            loop {
                tokio::time::sleep(STOP_POLL).await;
                if self.run_is_stopped(run).await {
                    tracing::info!(execution = %run, "run stopped: cancelling the job");
                    run_stopped.cancel();
                    job_cancel.cancel();
                    break;
                }
            }
        }
        std::future::pending().await
    }

    /// Records a job's tasks under the manual or scheduled run it belongs to, and ends the run
    /// when this was its last open task.
    ///
    /// A failed attempt that will be retried leaves its tasks `pending` (a run is never shown as
    /// failed while retries run); a dead-lettered job fails every open task of its reference, also
    /// those of destinations it never reached.
    async fn record_run(
        &self,
        run: &str,
        job: &Job,
        state: ExecutionState,
        error: Option<String>,
        tasks: &[Task],
    ) -> Result<(), QueueError> {
        let mut tasks = tasks.to_vec();
        match state {
            ExecutionState::Running if tasks.is_empty() => return Ok(()),
            ExecutionState::Running => {}
            ExecutionState::Retrying | ExecutionState::Queued => {
                for t in tasks.iter_mut().filter(|t| t.state != TaskState::Succeeded) {
                    t.state = TaskState::Pending;
                }
            }
            ExecutionState::Failed => {
                let recorded: std::collections::HashSet<String> =
                    tasks.iter().map(|t| t.id.clone()).collect();
                let open = self.history.tasks(run, usize::MAX).await?;
                for mut t in open.into_iter().filter(|t| {
                    !t.state.is_final()
                        && t.repository == job.repository
                        && t.reference == job.reference
                        && !recorded.contains(&t.id)
                }) {
                    t.state = TaskState::Failed;
                    t.attempts = job.attempt + 1;
                    t.error = error.clone();
                    t.outcome = Some("failed".into());
                    t.ended_at_ms = Some(now_ms());
                    tasks.push(t);
                }
            }
            ExecutionState::Succeeded | ExecutionState::Stopped => {}
        }
        self.history.record_tasks(run, &tasks).await?;
        if state.is_final() {
            finish_run_if_done(self.history.as_ref(), run).await?;
        }
        Ok(())
    }

    /// Tells the queue how the job ended; `None` when the lease was lost (the job is another
    /// worker's now).
    async fn settle(
        &self,
        lease: &Lease,
        result: Result<JobOutcome, JobError>,
        job_cancel: &CancellationToken,
        lease_lost: &CancellationToken,
        run_stopped: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Option<Settled> {
        let job = &lease.job;
        let (r, settled) = match result {
            Ok(outcome) => {
                self.stats.jobs_succeeded.fetch_add(1, Ordering::Relaxed);
                self.metrics.job(&job.policy, job.kind, "succeeded");
                if matches!(&outcome, JobOutcome::Pushed(v) if !v.is_empty() && v.iter().all(|(_, o)| matches!(o, TagOutcome::Unchanged { .. })))
                {
                    // A duplicate event, or the echo of Ferry's own write: counted, nothing moved.
                    self.metrics
                        .noops
                        .get_or_create(&PolicyLabel {
                            policy: job.policy.clone(),
                        })
                        .inc();
                }
                let copied = matches!(&outcome, JobOutcome::Pushed(v) if v.iter().any(|(_, o)| matches!(o, TagOutcome::Copied { .. })));
                if copied {
                    if let Some(lag_ms) = lag_since(job.event_time_ms) {
                        self.metrics.lag.observe(lag_ms as f64 / 1000.0);
                    }
                }
                tracing::info!(outcome = ?outcome, "job done");
                (self.queue.ack(lease).await, Settled::Succeeded)
            }
            Err(_) if lease_lost.is_cancelled() => {
                // Another worker owns it now; touching it would race that worker.
                return None;
            }
            Err(_) if run_stopped.is_cancelled() => {
                self.metrics.job(&job.policy, job.kind, "stopped");
                tracing::info!("job stopped with its run");
                (self.queue.ack(lease).await, Settled::Stopped)
            }
            Err(e)
                if job_cancel.is_cancelled()
                    || (shutdown.is_cancelled()
                        && matches!(
                            e,
                            JobError::Transfer {
                                source: TransferError::Cancelled,
                                ..
                            }
                        )) =>
            {
                self.stats.jobs_released.fetch_add(1, Ordering::Relaxed);
                self.metrics.job(&job.policy, job.kind, "released");
                tracing::info!("job interrupted by shutdown: released for another worker");
                (self.queue.release(lease).await, Settled::Released)
            }
            Err(e) => {
                self.stats.jobs_failed.fetch_add(1, Ordering::Relaxed);
                let retryable = e.is_retryable();
                let r = self.queue.fail(lease, &e.to_string(), retryable).await;
                let (outcome, settled) = match &r {
                    Ok(FailOutcome::DeadLettered) => ("dead_lettered", Settled::DeadLettered),
                    Ok(FailOutcome::Retry { next_try_at_ms }) => (
                        "failed",
                        Settled::Retrying {
                            next_try_at_ms: *next_try_at_ms,
                        },
                    ),
                    // Not rescheduled: the lease expires and the job runs again.
                    Err(_) => (
                        "failed",
                        Settled::Retrying {
                            next_try_at_ms: now_ms().saturating_add(duration_ms(self.opts.lease)),
                        },
                    ),
                };
                self.metrics.job(&job.policy, job.kind, outcome);
                match &r {
                    Ok(outcome) => tracing::warn!(error = %e, retryable, ?outcome, "job failed"),
                    Err(qe) => {
                        tracing::error!(error = %e, queue_error = %qe, "job failed and could not be rescheduled; its lease will expire and it will run again")
                    }
                }
                (r.map(|_| ()), settled)
            }
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot settle job with the queue; it will be handed out again when its lease expires");
        }
        Some(settled)
    }

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
    async fn execute_recorded(
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
                EventKind::Delete => guarded_delete(&prepared.policy, prepared, &ctx, job)
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
}

impl Worker {
    /// A push job on one destination: the level-triggered copy, arbitrated first when the policy
    /// is bidirectional.
    async fn push(
        &self,
        prepared: &PreparedPolicy,
        ctx: &TransferContext,
        job: &Job,
    ) -> Result<DestOutcome, TransferError> {
        let incoming = if prepared.policy.mode == Mode::Bidirectional {
            match self.arbitrate(prepared, ctx, job).await? {
                Arbitration::Copy(write) => write,
                Arbitration::Skip(outcome) => return Ok(DestOutcome::Push(outcome)),
            }
        } else {
            None
        };
        let (outcome, _) = reconcile_reference(
            prepared,
            ctx,
            &job.repository,
            &job.reference,
            job.digest.as_deref(),
        )
        .await?;
        if let (Some(write), TagOutcome::Copied { .. } | TagOutcome::Unchanged { .. }) =
            (incoming, &outcome)
        {
            // The copy happened; a lost ledger write only weakens a later conflict decision.
            if let Err(e) = self
                .tag_writes
                .record_write(ctx.dst.name(), &job.repository, &job.reference, &write)
                .await
            {
                tracing::warn!(error = %e, "cannot record the tag write in the ledger");
            }
        }
        Ok(DestOutcome::Push(outcome))
    }

    /// Whether a bidirectional job may write its tag to `ctx.dst` (see [`crate::conflict`]).
    async fn arbitrate(
        &self,
        prepared: &PreparedPolicy,
        ctx: &TransferContext,
        job: &Job,
    ) -> Result<Arbitration, TransferError> {
        let (repository, tag) = (&job.repository, &job.reference);
        if digest::parse(tag).is_some() {
            // By digest: content-addressed, nothing to conflict on.
            return Ok(Arbitration::Copy(None));
        }
        let Some(source) = ctx.src.head_digest(repository, tag).await? else {
            return Ok(Arbitration::Copy(None));
        };
        let destination = ctx.dst.head_digest(repository, tag).await?;
        let source = source.to_string();
        let destination = destination.map(|d| d.to_string());
        let skip = |reason: String| Ok(Arbitration::Skip(TagOutcome::Skipped { reason }));
        match (&job.digest, destination.as_deref()) {
            (_, Some(d)) if d == source => return Ok(Arbitration::Copy(None)),
            // A newer change of the source has its own event, which decides.
            (Some(announced), _) if *announced != source => {
                return skip(format!(
                    "superseded: the source now holds {source}, not the announced {announced}"
                ))
            }
            // A run or safety-net job knows no event time: it only fills missing tags.
            (None, Some(d)) => {
                return skip(format!(
                    "both sides hold the tag with different content ({source} here, {d} there); only events decide bidirectional conflicts"
                ))
            }
            _ => {}
        }
        let incoming = TagWrite {
            digest: source,
            at_ms: job.event_time_ms,
            region: job
                .origin_region
                .clone()
                .unwrap_or_else(|| self.opts.region.clone()),
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
                    self.metrics.conflict(policy, "replaced");
                    tracing::info!(
                        destination = ctx.dst.name(),
                        winner = %incoming,
                        loser = %lost,
                        "conflict: the incoming push is newer; replacing the destination's"
                    );
                }
                Ok(Arbitration::Copy(Some(incoming)))
            }
            Decision::Keep { kept } => {
                self.metrics.conflict(policy, "kept");
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

/// What arbitration allows a bidirectional job.
enum Arbitration {
    /// Copy, and record this write in the ledger once done (`None`: nothing to record).
    Copy(Option<TagWrite>),
    Skip(TagOutcome),
}

/// Ends a running run whose tasks are all final: `failed` if any failed, else `succeeded`. Each
/// recorder calls it after its own write, so whoever writes the last open task sees it closed.
pub async fn finish_run_if_done(history: &dyn History, run: &str) -> Result<(), QueueError> {
    let Some(mut e) = history.execution(run).await? else {
        return Ok(());
    };
    let open = |s| e.counts.get(&s).copied().unwrap_or(0);
    if e.state != ExecutionState::Running || open(TaskState::Pending) + open(TaskState::Running) > 0
    {
        return Ok(());
    }
    e.state = if open(TaskState::Failed) > 0 {
        ExecutionState::Failed
    } else {
        ExecutionState::Succeeded
    };
    e.ended_at_ms = Some(now_ms());
    history.record(&e, &[]).await
}

/// The enabled policies of a config, prepared, with their throttles.
struct Policies {
    by_name: HashMap<String, Arc<PreparedPolicy>>,
    /// Bidirectional policies the other way round: their destination is the source.
    reversed: HashMap<String, Arc<PreparedPolicy>>,
    throttles: HashMap<String, Arc<Throttle>>,
}

impl Policies {
    fn new(
        config: &Config,
        registries: &Registries,
        speed: &SharedSpeedSlot,
    ) -> Result<Policies, SyncError> {
        let mut by_name = HashMap::new();
        let mut reversed = HashMap::new();
        let mut throttles = HashMap::new();
        for p in config.policies.iter().filter(|p| p.enabled) {
            by_name.insert(
                p.name.clone(),
                Arc::new(PreparedPolicy::new(p, registries)?),
            );
            if let Some(back) = p.reversed() {
                reversed.insert(
                    p.name.clone(),
                    Arc::new(PreparedPolicy::new(&back, registries)?),
                );
            }
            if let Some(t) = Throttle::from_kib_per_sec(p.speed) {
                throttles.insert(
                    p.name.clone(),
                    Arc::new(t.shared_as(&p.name, speed.clone())),
                );
            }
        }
        Ok(Policies {
            by_name,
            reversed,
            throttles,
        })
    }

    /// The policy a job runs under, in the direction it names (`Job::source`); `None` when this
    /// worker has no such policy or direction.
    fn for_job(&self, job: &Job) -> Option<&Arc<PreparedPolicy>> {
        let forward = self.by_name.get(&job.policy)?;
        let Some(source) = job.source.as_deref() else {
            return Some(forward);
        };
        [Some(forward), self.reversed.get(&job.policy)]
            .into_iter()
            .flatten()
            .find(|p| p.policy.src_registry.name == source)
    }
}

/// How a leased job ended with the queue.
enum Settled {
    Succeeded,
    /// Its run was stopped: acked without finishing.
    Stopped,
    Retrying {
        next_try_at_ms: i64,
    },
    DeadLettered,
    Released,
}

/// What one job did on one destination.
enum DestOutcome {
    Push(TagOutcome),
    Delete(DeleteOutcome),
}

/// The task record of `job` on `destination`.
fn task_record(
    job: &Job,
    destination: &str,
    started_at_ms: i64,
    moved: &StatsSnapshot,
    result: &Result<DestOutcome, TransferError>,
) -> Task {
    let (state, digest, outcome, error) = match result {
        Ok(DestOutcome::Push(o)) => match o {
            TagOutcome::Copied { digest } => (TaskState::Succeeded, Some(digest.clone()), "copied".to_string(), None),
            TagOutcome::Unchanged { digest } => (TaskState::Succeeded, Some(digest.clone()), "unchanged".to_string(), None),
            TagOutcome::Kept { source_digest, destination_digest } => (
                TaskState::Succeeded,
                Some(source_digest.clone()),
                format!("kept: the destination holds {destination_digest} and the policy does not override"),
                None,
            ),
            TagOutcome::Skipped { reason } => (TaskState::Succeeded, None, format!("skipped: {reason}"), None),
            TagOutcome::Failed { error } => (TaskState::Failed, None, "failed".to_string(), Some(error.clone())),
        },
        Ok(DestOutcome::Delete(o)) => match o {
            DeleteOutcome::Deleted { digest } => (TaskState::Succeeded, Some(digest.clone()), "deleted".to_string(), None),
            DeleteOutcome::Kept { reason } => (TaskState::Succeeded, job.digest.clone(), format!("kept: {reason}"), None),
        },
        Err(TransferError::Cancelled) => (TaskState::Stopped, None, "stopped".to_string(), None),
        Err(e) => (TaskState::Failed, None, "failed".to_string(), Some(e.to_string())),
    };
    let copied = matches!(result, Ok(DestOutcome::Push(TagOutcome::Copied { .. })));
    Task {
        state,
        digest,
        outcome: Some(outcome),
        ended_at_ms: Some(now_ms()),
        error,
        lag_ms: if copied {
            lag_since(job.event_time_ms)
        } else {
            None
        },
        ..running_task(job, destination, started_at_ms, moved)
    }
}

/// The task record of `job` on `destination` while it runs, with what it moved so far.
fn running_task(job: &Job, destination: &str, started_at_ms: i64, moved: &StatsSnapshot) -> Task {
    Task {
        id: Task::id_for(destination, &job.repository, &job.reference),
        execution_id: job.execution().to_string(),
        policy: job.policy.clone(),
        kind: job.kind,
        repository: job.repository.clone(),
        reference: job.reference.clone(),
        destination: destination.to_string(),
        state: TaskState::Running,
        attempts: job.attempt + 1,
        digest: None,
        outcome: None,
        blobs_copied: moved.blobs_copied,
        blobs_mounted: moved.blobs_mounted,
        blobs_skipped: moved.blobs_skipped,
        bytes: moved.bytes_copied,
        bytes_total: moved.bytes_planned,
        started_at_ms,
        ended_at_ms: None,
        error: None,
        lag_ms: None,
    }
}

/// This host's name, for the worker list (`HOSTNAME`, else `/etc/hostname`).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// DESIGN.md "Delete semantics": delete on the destination only what is still the deleted digest,
/// only when the source no longer has it, and never when a tag the policy does not cover points at
/// it.
async fn guarded_delete(
    policy: &Policy,
    prepared: &PreparedPolicy,
    ctx: &TransferContext,
    job: &Job,
) -> Result<DeleteOutcome, TransferError> {
    let kept = |reason: String| Ok(DeleteOutcome::Kept { reason });
    if !policy.replicate_deletion {
        return kept("the policy does not replicate deletions".into());
    }
    let Some(deleted) = job
        .digest
        .as_deref()
        .and_then(digest::parse)
        .or_else(|| digest::parse(&job.reference))
    else {
        return kept("the event names no digest, so the destination's content cannot be checked; not deleting".into());
    };
    let dst_repo = prepared
        .dest_repository(&job.repository)
        .map_err(TransferError::Policy)?;
    let is_tag = digest::parse(&job.reference).is_none();
    // Level-triggered: if the source has the content again (re-pushed), the delete is stale —
    // unless only a tag was deleted and the manifest stayed (handled below).
    let source_holds = ctx
        .src
        .head_manifest(&job.repository, deleted.as_ref())
        .await?
        .is_some();
    if source_holds && !is_tag {
        return kept(format!("the source holds {deleted} again"));
    }
    if is_tag {
        if let Some(cur) = ctx
            .src
            .head_manifest(&job.repository, &job.reference)
            .await?
        {
            return kept(format!(
                "the source tag {} now points at {}",
                job.reference, cur.digest
            ));
        }
        match ctx.dst.head_manifest(&dst_repo, &job.reference).await? {
            None => return kept("the destination tag is already gone".into()),
            Some(d) if d.digest != deleted => {
                return kept(format!(
                    "the destination tag holds {} (not the deleted {deleted}); keeping it",
                    d.digest
                ));
            }
            Some(_) => {}
        }
        if source_holds {
            // The source removed the tag alone: remove the tag alone, or say why not.
            return match ctx.dst.delete_tag(&dst_repo, &job.reference).await? {
                TagDelete::Deleted | TagDelete::Missing => Ok(DeleteOutcome::Deleted {
                    digest: deleted.to_string(),
                }),
                TagDelete::Unsupported => kept(format!(
                    "the source deleted only the tag {} ({deleted} stays there); registry {} deletes manifests by digest only, which would remove every tag of it, so the destination keeps the tag",
                    job.reference,
                    ctx.dst.name()
                )),
            };
        }
    } else if ctx
        .dst
        .head_manifest(&dst_repo, deleted.as_ref())
        .await?
        .is_none()
    {
        return kept("the destination does not have it".into());
    }
    // Deleting a manifest on distribution removes every tag pointing at it: refuse when one of those
    // tags is outside the policy (someone else's content).
    let selector = &prepared.selector;
    let tags = ctx.dst.list_tags(&dst_repo).await?;
    let mut pointing = Vec::new();
    for chunk in tags.chunks(8) {
        // A plain loop, not a closure: closure-made futures lose their concrete lifetimes and the
        // spawned job future would no longer be `Send`.
        let mut futs = Vec::with_capacity(chunk.len());
        for t in chunk {
            futs.push(ctx.dst.head_manifest(&dst_repo, t));
        }
        let heads = futures_util::future::join_all(futs).await;
        for (t, h) in chunk.iter().zip(heads) {
            if h?.is_some_and(|d| d.digest == deleted) {
                pointing.push(t.clone());
            }
        }
    }
    if let Some(uncovered) = pointing.iter().find(|t| !selector.matches_tag(t)) {
        return kept(format!("destination tag {uncovered} is not covered by the policy and points at {deleted}; not deleting"));
    }
    ctx.dst.delete_manifest(&dst_repo, &deleted).await?;
    Ok(DeleteOutcome::Deleted {
        digest: deleted.to_string(),
    })
}

/// Renews `lease` every third of its length until the job ends (`job_cancel` fired by the job's
/// owner) — then stays pending. Returns only when the lease was lost, after cancelling the job.
async fn heartbeat(
    queue: Arc<dyn JobQueue>,
    lease: Lease,
    lease_for: Duration,
    job_cancel: CancellationToken,
    lease_lost: CancellationToken,
) {
    let period = (lease_for / 3).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {},
            _ = job_cancel.cancelled() => return std::future::pending().await,
        }
        match queue.renew(&lease, lease_for).await {
            Ok(()) => {}
            Err(QueueError::LeaseLost { .. }) => {
                tracing::warn!("lease lost (reclaimed by another worker): cancelling this run");
                lease_lost.cancel();
                job_cancel.cancel();
                return;
            }
            // The queue briefly unreachable: keep working; the next renewal may succeed.
            Err(e) => tracing::warn!(error = %e, "cannot renew lease"),
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
