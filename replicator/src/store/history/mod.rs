//! Executions, tasks and live workers: what the admin API shows about replication that ran.
//!
//! An **execution** is one replication run of a policy: one event-driven job (its id is the job id)
//! or one manual, scheduled or reconciliation run. Its **tasks** are the per-destination,
//! per-reference pieces of work with their state, attempts, blobs copied/mounted/skipped, bytes,
//! timings, error and replication lag. Workers also announce themselves here with a heartbeat so
//! operators can list the live ones.
//!
//! # Contract (every backend; `tests/queue_conformance.rs` runs the history cases against all)
//! - [`History::record`] upserts an execution and some of its tasks in one call;
//!   [`History::record_tasks`] adds tasks to an existing execution. A task recorded again replaces
//!   its previous version. Task counts by state ([`Execution::counts`]) always
//!   equal the states of the tasks last recorded, also when several processes record tasks of one
//!   execution concurrently.
//! - **Retention**: at most [`Retention::max_executions`] executions are kept (the oldest by
//!   `started_at_ms` go first) and none older than [`Retention::max_age`]; a trimmed execution
//!   takes its tasks with it. Trimming happens when a new execution is recorded.
//! - Listing is newest first and can be filtered by policy.
//! - A worker is listed until its heartbeat's `ttl` passes without another heartbeat, or until it
//!   deregisters on a graceful shutdown.
//!
//! Recording is best effort for the caller: a job's success never depends on it (the queue is the
//! source of truth for what still has to run), so callers log and go on when it fails.
//!
//! Backends: [`MemoryHistory`] (in-process, for `ferry serve` without `--redis`) and
//! [`RedisHistory`] (the same Redis/Valkey as the queue; its module doc has the key layout).

mod memory;
mod redis;

pub use self::memory::MemoryHistory;
pub use self::redis::RedisHistory;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::EventKind;
use crate::store::{StartedBy, StoreError};

/// Where an execution stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionState {
    /// Waiting in the queue (not yet claimed, or released by a stopping worker).
    Queued,
    Running,
    /// The last attempt failed; another is scheduled (`next_try_at_ms`).
    Retrying,
    Succeeded,
    /// Failed for good (dead-lettered, or a run with failed tasks).
    Failed,
    Stopped,
}

impl ExecutionState {
    /// True once nothing more will happen to the execution.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ExecutionState::Succeeded | ExecutionState::Failed | ExecutionState::Stopped
        )
    }
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Stopped,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Stopped => "stopped",
        }
    }

    /// True once the task will not change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Stopped
        )
    }

    /// The inverse of [`TaskState::as_str`].
    pub fn parse(s: &str) -> Option<TaskState> {
        [
            TaskState::Pending,
            TaskState::Running,
            TaskState::Succeeded,
            TaskState::Failed,
            TaskState::Stopped,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// The event an event-driven execution came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// When the registry saw the change (Unix ms); lag is measured from here.
    pub event_time_ms: i64,
    pub kind: EventKind,
    pub repository: String,
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// One replication run of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    pub id: String,
    pub policy: String,
    pub trigger: StartedBy,
    pub state: ExecutionState,
    /// When it was triggered (Unix ms): the enqueue time of an event-driven job.
    pub started_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<i64>,
    /// Attempts started so far (event-driven executions; a run counts 1).
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_try_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Worker (queue consumer) that ran the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// A plan only: nothing was copied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Tasks by state; filled in by the backend on read (what callers pass is ignored).
    #[serde(default)]
    pub counts: BTreeMap<TaskState, u64>,
}

impl Execution {
    /// A new execution in state `Running`, no tasks yet.
    pub fn new(id: &str, policy: &str, trigger: StartedBy, started_at_ms: i64) -> Execution {
        Execution {
            id: id.to_string(),
            policy: policy.to_string(),
            trigger,
            state: ExecutionState::Running,
            started_at_ms,
            ended_at_ms: None,
            attempts: 0,
            next_try_at_ms: None,
            error: None,
            origin: None,
            worker: None,
            dry_run: false,
            counts: BTreeMap::new(),
        }
    }
}

/// One piece of an execution: a reference on one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Unique within its execution: `<destination>/<repository>:<reference>`.
    pub id: String,
    pub execution_id: String,
    pub policy: String,
    pub kind: EventKind,
    pub repository: String,
    pub reference: String,
    /// Destination registry (config name).
    pub destination: String,
    pub state: TaskState,
    pub attempts: u32,
    /// The manifest digest the task replicated or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// What happened, in words (`copied`, `unchanged`, `kept: …`, `deleted`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default)]
    pub blobs_copied: u64,
    #[serde(default)]
    pub blobs_mounted: u64,
    #[serde(default)]
    pub blobs_skipped: u64,
    /// Blob bytes sent so far.
    #[serde(default)]
    pub bytes: u64,
    /// Bytes of the blobs the destination lacked (grows as uploads start; `bytes` of it are done).
    #[serde(default)]
    pub bytes_total: u64,
    pub started_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Event time → tag visible on this destination, when the task copied content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
}

impl Task {
    /// The task id for `reference` of `repository` on `destination`.
    pub fn id_for(destination: &str, repository: &str, reference: &str) -> String {
        format!("{destination}/{repository}:{reference}")
    }
}

/// A live worker process, as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Queue consumer name (unique per process).
    pub id: String,
    pub host: String,
    /// Region the worker runs in (`--region`), empty when not set.
    #[serde(default)]
    pub region: String,
    pub pid: u32,
    pub version: String,
    pub started_at_ms: i64,
    pub last_seen_ms: i64,
    pub concurrency: u32,
    pub in_flight: u64,
    pub jobs_succeeded: u64,
    pub jobs_failed: u64,
    /// Policies this worker can run.
    #[serde(default)]
    pub policies: Vec<String>,
}

/// How much history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_executions: usize,
    pub max_age: Duration,
}

impl Default for Retention {
    /// 10 000 executions, at most 7 days old.
    fn default() -> Self {
        Retention {
            max_executions: 10_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A page of executions, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionQuery {
    pub policy: Option<String>,
    /// Only executions started strictly before this time (Unix ms): the paging cursor.
    pub before_ms: Option<i64>,
    pub limit: usize,
}

/// Execution, task and worker records. Object-safe so binaries pick the backend at run time.
#[async_trait::async_trait]
pub trait History: Send + Sync + 'static {
    /// Upserts `execution` (its `counts` are ignored) and `tasks` (all of that execution).
    async fn record(&self, execution: &Execution, tasks: &[Task]) -> Result<(), StoreError>;

    /// Upserts tasks of an execution someone else owns (a worker running one job of a manual or
    /// scheduled run). Tasks of an unknown (never recorded, or trimmed) execution are dropped.
    async fn record_tasks(&self, execution_id: &str, tasks: &[Task]) -> Result<(), StoreError>;

    /// One execution with its task counts.
    async fn execution(&self, id: &str) -> Result<Option<Execution>, StoreError>;

    /// Executions newest first (see [`ExecutionQuery`]).
    async fn executions(&self, query: &ExecutionQuery) -> Result<Vec<Execution>, StoreError>;

    /// Up to `limit` tasks of an execution, ordered by id.
    async fn tasks(&self, execution_id: &str, limit: usize) -> Result<Vec<Task>, StoreError>;

    /// Announces (or refreshes) a worker for `ttl`.
    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> Result<(), StoreError>;

    /// Removes a worker that is shutting down.
    async fn deregister(&self, worker_id: &str) -> Result<(), StoreError>;

    /// Workers whose last heartbeat has not expired, ordered by id.
    async fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError>;
}

/// Counts tasks by state (the memory backend, and the reference the Redis counters must match).
fn count_states<'a>(tasks: impl Iterator<Item = &'a Task>) -> BTreeMap<TaskState, u64> {
    let mut counts = BTreeMap::new();
    for t in tasks {
        *counts.entry(t.state).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_states_round_trip_through_their_names() {
        for s in [
            TaskState::Pending,
            TaskState::Running,
            TaskState::Succeeded,
            TaskState::Failed,
            TaskState::Stopped,
        ] {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(TaskState::parse("done"), None);
    }

    #[test]
    fn counts_serialize_as_a_map_by_state_name() {
        let mut e = Execution::new("x", "p", StartedBy::Manual, 1);
        e.counts.insert(TaskState::Succeeded, 2);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["counts"]["succeeded"], 2);
        assert_eq!(v["trigger"], "manual");
        assert_eq!(v["state"], "running");
    }
}
