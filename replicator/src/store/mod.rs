//! The store: every piece of state a region's processes share, and the one place that knows how
//! it is kept — in this process (`ferry serve` without `--redis`, lost on exit) or in the
//! region's Redis/Valkey (agents and workers of the region see the same state).
//!
//! - [`queue`]: the job queue contract and its backends: jobs, dead letters, blob and manifest
//!   leases, policy pauses and upload checkpoints.
//! - [`history`]: executions, tasks and live workers.
//! - [`limits`]: registry pauses and policy bandwidth shared by a region's processes.
//! - [`ledger`]: the last write of each tag, for bidirectional conflicts.
//! - [`outbox`]: events waiting for other regions, and the events accepted from them.
//! - [`redis`]: the one Redis/Valkey connection every Redis-backed part shares ([`RedisStore`]),
//!   which server to trust ([`redis::RedisTarget`]) and the bound on every operation;
//!   [`sentinel`]: the primary a Sentinel setup names, followed through failovers.
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
//! | `{p}:jobs`, `{p}:retries`, `{p}:delayed`, `{p}:leases`, `{p}:pending:*`, `{p}:dead`, `{p}:corrupt`, `{p}:blob:*`, `{p}:manifest:*`, `{p}:paused`, `{p}:parked:*`, `{p}:checkpoints:*` | [`queue::RedisQueue`] | its module doc |
//! | `{p}:execs`, `{p}:execs:policy:*`, `{p}:exec:*`, `{p}:workers` | [`history::RedisHistory`] | its module doc |
//! | `{p}:pause:{registry}`, `{p}:speed:{policy}` | [`limits::RedisLimits`] | its module doc |
//! | `{p}:catalog:*` | `catalog::RedisPolicyStore` | policies and registries stored through the admin API |
//! | `{p}:tagwrite:{registry}:{repository}:{tag}` | [`ledger::RedisTagLedger`] | the last write of each tag (its module doc) |
//! | `{p}:outbox:{region}`, `{p}:forwarded` | [`outbox::RedisOutbox`] | events waiting for other regions, event ids already accepted (its module doc) |
//!
//! # Queue servers: what Ferry asks of Redis/Valkey
//! The README's "Queue servers" section summarises this; this list is the source. It covers every
//! command Ferry sends (`grep -rn 'redis::cmd\|\.cmd(\|Script::new\|redis.call' replicator/src`:
//! the store's modules and `catalog.rs`), inside Lua scripts or not; a test
//! (`the_acl_rule_grants_exactly_the_commands_the_store_sends`) fails when the sources send a
//! command [`ACL_COMMANDS`] does not grant, or it grants one they do not send.
//!
//! **Server version: Redis ≥ 6.2** (or a server compatible with it), by the versions Redis documents
//! for the commands used (nothing older than 7.0 is tested). The newest features used:
//! `SET … PXAT` (6.2, the registry pause in [`limits`]), `SET … GET` (6.2, the tag ledger in
//! [`ledger`]); Streams with consumer groups (5.0:
//! `XADD`, `XRANGE`, `XDEL`, `XLEN`, `XACK`, `XCLAIM` incl. `JUSTID`, `XREADGROUP`, the extended
//! form `XPENDING key group start end count`, `XGROUP CREATE … MKSTREAM`, `XINFO GROUPS`); scripts
//! that write after calling `TIME` (effects replication, the default since 5.0 and the only mode
//! since 7.0). `XAUTOCLAIM` (6.2) is **not** used: leases are deadlines in a sorted set, taken over
//! with `XCLAIM` (see [`queue::RedisQueue`]). Tested: redis-server 7.0 and valkey-server 8.0
//! (`tests/queue_conformance.rs`); any other server with the env vars described there.
//!
//! **Commands** (ACL names; `|` is a subcommand):
//! - sent directly: `evalsha`, `script|load` (how the client runs scripts: `EVALSHA`, and on
//!   `NOSCRIPT` `SCRIPT LOAD` then `EVALSHA` again — never `EVAL` or `FUNCTION`), `multi`, `exec`
//!   (the policy catalog's changes), `xgroup|create`, `xadd`, `xrange`, `xdel`, `xlen`, `get`,
//!   `set` (`NX PX` for blob and manifest leases, `PX GET` for the tag ledger), `incr`, `lrange`, `rpush`, `lrem`,
//!   `sadd`, `srem`, `smembers`, `hset`, `hdel`, `hgetall`, `hvals`, `zcard`, `zrevrangebyscore`,
//!   and `wait` (only with `--redis-wait-replicas`: after enqueueing a job and appending to an
//!   outbox, see [`redis::RedisStore::confirm_replicated`]);
//! - inside scripts only: `exists`, `del`, `pexpire`, `time`, `xpending`, `xclaim`, `xreadgroup`,
//!   `xack`, `xinfo|groups`, `llen`, `sismember`, `hget`, `hexists`, `hincrby`, `zadd`, `zrem`,
//!   `zrange`, `zrangebyscore`, `zcount`, `zscore`, `zremrangebyscore`, `zremrangebyrank`, and
//!   `set … PXAT`/`PX`.
//! - on connecting (the `redis` crate): `AUTH` with the URL's user and password (always allowed),
//!   `SELECT` only when the URL names a database other than 0, and `CLIENT SETINFO`, whose refusal
//!   the client ignores. Nothing else: no `INFO`, `KEYS`, `SCAN`, `CONFIG`, pub/sub or blocking
//!   reads (workers poll).
//!
//! **Lua** (5.1 as in Redis): `redis.call` only (one Lua `pcall(redis.call, 'XRANGE', …)` in
//! enqueue tolerates a pending key that holds no valid stream id); no `redis.pcall`, `cjson`,
//! `cmsgpack`, `bit`, `redis.replicate_commands` or `redis.set_repl`; plain `string`, `math`,
//! `table` functions. Two scripts call `TIME` and then write (the policy bandwidth timeline in
//! [`limits`], remembering a forwarded event in [`outbox`]; a third reads `TIME` only), which
//! needs effects replication (default since Redis 5, the only mode since 7; Redis < 5 refuses
//! such writes).
//!
//! **Keys**: every key is `{p}:…` (the prefix, `--queue-prefix`). Scripts touch only the keys
//! passed in `KEYS`, except two: the queue's claim (`GET`/`DEL` of the pending key
//! `{p}:pending:*` named in a stream entry's `pending` field) and the history's record (its
//! retention deletes the `{p}:exec:*` hashes and `{p}:execs:policy:*` members of trimmed
//! executions, named from `ARGV`). A server that requires declared keys (Dragonfly, by default)
//! must allow undeclared ones (`--default_lua_flags=allow-undeclared-keys`, per its docs; not
//! tested here). Keys carry no hash tags, the keys of one script map to different Redis Cluster
//! slots, and the client holds one plain connection (no `MOVED`/`ASK` handling): **Redis Cluster
//! is not supported**; use a standalone server (with replicas and Sentinel for failover:
//! [`sentinel`]; sentinels are sent only `SENTINEL GET-MASTER-ADDR-BY-NAME`).
//!
//! **Persistence**: `appendonly yes` with `appendfsync everysec` (a crash loses at most about one
//! second of acknowledged writes; registries re-send what they got no 2xx for, and the safety net
//! repairs the rest), or `appendfsync always` to close that window. Without persistence a restart
//! loses every queued job and lease.
//!
//! **ACL**: [`acl_rule`] is the rule for a Ferry user (tested against redis-server 7.0 and
//! valkey-server 8.0 with the queue, history, limits, tag ledger, outbox and policy catalog
//! working through it, and commands and keys outside it refused: `tests/queue_conformance.rs`,
//! modules `redis_acl` and `valkey_acl`):
//! ```text
//! ACL SETUSER ferry on >PASSWORD resetkeys ~ferry:* resetchannels -@all +evalsha +script|load +multi +exec +xgroup|create +xadd +xrange +xdel +xlen +xpending +xclaim +xreadgroup +xack +xinfo|groups +get +set +incr +del +exists +pexpire +time +lrange +rpush +lrem +llen +sadd +srem +smembers +sismember +hset +hdel +hget +hgetall +hvals +hexists +hincrby +zadd +zrem +zcard +zcount +zscore +zrange +zrangebyscore +zrevrangebyscore +zremrangebyscore +zremrangebyrank +wait
//! ```
//! (`~ferry:*` is the default prefix's pattern: use `~<prefix>:*` with `--queue-prefix`; add
//! `+select` for a URL naming a database other than 0.) Scripts' commands are checked against the
//! user's ACL too, so the commands used only inside scripts must be granted as well.

pub mod history;
pub mod ledger;
pub mod limits;
pub mod outbox;
pub mod queue;
pub mod redis;
pub mod sentinel;

pub use self::redis::RedisStore;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use self::history::History;
use self::queue::{
    BlobLeases, Checkpoints, DeadLetters, JobQueue, ManifestLeases, Pauses, QueueBackend,
};

/// The commands a Ferry user needs (ACL syntax), every one named, nothing by category: see
/// "Queue servers" above for where each is used.
pub const ACL_COMMANDS: &str = "-@all +evalsha +script|load +multi +exec +xgroup|create +xadd \
+xrange +xdel +xlen +xpending +xclaim +xreadgroup +xack +xinfo|groups +get +set +incr +del +exists \
+pexpire +time +lrange +rpush +lrem +llen +sadd +srem +smembers +sismember +hset +hdel +hget \
+hgetall +hvals +hexists +hincrby +zadd +zrem +zcard +zcount +zscore +zrange +zrangebyscore \
+zrevrangebyscore +zremrangebyscore +zremrangebyrank +wait";

/// The ACL rule (the part after `ACL SETUSER <user> on >PASSWORD`) that lets a user do what
/// Ferry does with keys under `prefix` and nothing else: its keys (`~<prefix>:*`), no pub/sub
/// channels, [`ACL_COMMANDS`].
pub fn acl_rule(prefix: &str) -> String {
    format!("resetkeys ~{prefix}:* resetchannels {ACL_COMMANDS}")
}

/// One backend's state as the narrow views the parts of a daemon take (each part gets only the
/// ones it uses: the transfer gets `leases` and `checkpoints`, the agent `jobs`). Built once per
/// backend (`app::backend`); clones share the backend.
#[derive(Clone)]
pub struct Store {
    pub jobs: Arc<dyn JobQueue>,
    pub dead_letters: Arc<dyn DeadLetters>,
    pub leases: Arc<dyn BlobLeases>,
    /// One writer per manifest (see [`queue::ManifestLeases`]).
    pub manifest_leases: Arc<dyn ManifestLeases>,
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
            manifest_leases: queue.clone(),
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
