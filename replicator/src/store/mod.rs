//! The store: every piece of state a region's processes share, and the one place that knows how
//! it is kept — in this process (`ferry serve` without `--redis`, lost on exit) or in the
//! region's Redis/Valkey (agents and workers of the region see the same state).
//!
//! - [`queue`]: the job queue contract and its backends: jobs, dead letters, blob leases, policy
//!   pauses and upload checkpoints.
//! - [`history`]: executions, tasks and live workers.
//! - [`limits`]: registry pauses and policy bandwidth shared by a region's processes.
//! - [`ledger`]: the last write of each tag, for bidirectional conflicts.
//! - [`outbox`]: events waiting for other regions, and the events accepted from them.
//! - [`redis`]: the one Redis/Valkey connection every Redis-backed part shares ([`RedisStore`]),
//!   which server to trust ([`redis::RedisTarget`]) and the bound on every operation.
//!
//! # Invariants
//! - Every failure to read or write stored state is a [`StoreError`]: `Unavailable` (the backend
//!   did not answer in time; callers answer 503 or retry), `Corrupt` (stored data that does not
//!   parse, named by its key) or `LeaseLost`.
//! - No operation waits on Redis longer than [`redis::OP_TIMEOUT`].
//! - The store imports no part of Ferry that reads or writes it (no runtime, worker, ingest or
//!   admin code): they depend on it, never the other way round.
//!
//! # Redis key layout (`{p}` is the key prefix, `--queue-prefix`, e.g. `ferry`)
//! | keys | owner | layout |
//! |---|---|---|
//! | `{p}:jobs`, `{p}:retries`, `{p}:delayed`, `{p}:leases`, `{p}:pending:*`, `{p}:dead`, `{p}:corrupt`, `{p}:blob:*`, `{p}:paused`, `{p}:parked:*`, `{p}:checkpoints:*` | [`queue::RedisQueue`] | its module doc |
//! | `{p}:execs`, `{p}:execs:policy:*`, `{p}:exec:*`, `{p}:workers` | [`history::RedisHistory`] | its module doc |
//! | `{p}:pause:{registry}`, `{p}:speed:{policy}` | [`limits::RedisLimits`] | its module doc |
//! | `{p}:catalog:*` | `catalog::RedisPolicyStore` | policies and registries stored through the admin API |
//! | `{p}:tagwrite:{registry}:{repository}:{tag}` | [`ledger::RedisTagLedger`] | the last write of each tag (its module doc) |
//! | `{p}:outbox:{region}`, `{p}:forwarded` | [`outbox::RedisOutbox`] | events waiting for other regions, event ids already accepted (its module doc) |

pub mod history;
pub mod ledger;
pub mod limits;
pub mod outbox;
pub mod queue;
pub mod redis;

pub use self::redis::RedisStore;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use self::history::History;
use self::queue::{BlobLeases, Checkpoints, DeadLetters, JobQueue, Pauses, QueueBackend};

/// One backend's state as the narrow views the parts of a daemon take (each part gets only the
/// ones it uses: the transfer gets `leases` and `checkpoints`, the agent `jobs`). Built once per
/// backend (`app::backend`); clones share the backend.
#[derive(Clone)]
pub struct Store {
    pub jobs: Arc<dyn JobQueue>,
    pub dead_letters: Arc<dyn DeadLetters>,
    pub leases: Arc<dyn BlobLeases>,
    pub checkpoints: Arc<dyn Checkpoints>,
    pub pauses: Arc<dyn Pauses>,
    pub history: Arc<dyn History>,
}

impl Store {
    /// The views of `queue` (every view is the same backend) and `history`.
    pub fn new<Q: QueueBackend>(queue: Arc<Q>, history: Arc<dyn History>) -> Store {
        Store {
            jobs: queue.clone(),
            dead_letters: queue.clone(),
            leases: queue.clone(),
            checkpoints: queue.clone(),
            pauses: queue,
            history,
        }
    }
}

/// Why stored state could not be read or written. Wording names the queue, where most of it
/// lives, as operators know it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend did not answer (in time); what failed and why.
    #[error("queue backend unavailable: {0}")]
    Unavailable(String),
    /// Stored data that does not parse: the key (or record) and why.
    #[error("queue data is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "lease of job {job_id} is no longer held by {consumer} (it expired and was reclaimed)"
    )]
    LeaseLost { job_id: String, consumer: String },
}

/// What started an execution or queued a job (Harbor's trigger names, plus Ferry's safety net).
///
/// Not [`crate::policy::TriggerKind`], which says how a *policy* may fire: a policy's kind
/// defaults to `manual` (Harbor's default), while a job defaults to having been started by an
/// event; and a reconciliation starts executions no policy trigger names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartedBy {
    /// A registry event (webhook or poller).
    #[default]
    EventBased,
    Manual,
    Scheduled,
    /// The periodic safety-net reconciliation repairing drift.
    Reconcile,
}

impl StartedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            StartedBy::EventBased => "event_based",
            StartedBy::Manual => "manual",
            StartedBy::Scheduled => "scheduled",
            StartedBy::Reconcile => "reconcile",
        }
    }
}
