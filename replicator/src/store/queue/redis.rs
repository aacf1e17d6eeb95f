//! [`JobQueue`] on Redis or Valkey Streams with a consumer group: the queue shared by agents and
//! workers of one region.
//!
//! # Layout (`{p}` is the prefix given to [`RedisQueue::connect`], e.g. `ferry`)
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:jobs` | stream, group `{p}:workers` | new jobs: fields `job` (JSON of [`Job`]) and `pending` (the job's pending key) |
//! | `{p}:retries` | stream, group `{p}:workers` | jobs runnable again: due retries and released jobs (field `job`) |
//! | `{p}:delayed` | sorted set | failed jobs waiting for their retry; score `next_try_at_ms`, member the job JSON |
//! | `{p}:leases` | sorted set | one member per claimed job, the lease token `jobs/<entry id>` or `retries/<entry id>`; score = lease deadline (Unix ms) |
//! | `{p}:pending:{idempotency key}` | string | entry id of the unclaimed job in `{p}:jobs` that collapses duplicates |
//! | `{p}:dead` | list | dead-lettered job JSON, oldest first |
//! | `{p}:corrupt` | list | raw payloads of stream entries that were not a valid job (quarantined) |
//! | `{p}:blob:{destination}:{digest}` | string with PX expiry | holder of a blob lease |
//! | `{p}:manifest:{destination}:{repository}@{digest}` | string with PX expiry | holder of a manifest lease (the one writer of that manifest) |
//! | `{p}:paused` | set | paused policies |
//! | `{p}:parked:{policy}` | list | job JSON parked while the policy is paused, oldest first |
//! | `{p}:checkpoints:{job id}` | hash with PX expiry | the job's upload checkpoints: field `{digest}\|{destination}`, value the JSON of an [`UploadCheckpoint`]; expires [`CHECKPOINT_TTL`] after the last write |
//!
//! Every state change is one Lua script, so a job is always in exactly one place (unread in a
//! stream, claimed = in the group's PEL with a `{p}:leases` member, in `{p}:delayed`, in `{p}:dead`)
//! even when a client dies mid-call. Scripts touch keys they compute (pending keys), so this needs
//! a standalone Redis/Valkey (or a replica set with failover), not Redis Cluster.
//!
//! # Claims and leases
//! [`JobQueue::claim`] is one script, in this order: (1) jobs whose lease deadline passed
//! (`ZRANGEBYSCORE {p}:leases -inf now`), taken over with `XCLAIM` (the PEL owner changes, so the
//! previous holder's later `renew`/`ack`/`fail`/`release` get [`StoreError::LeaseLost`]); (2) due
//! retries move from `{p}:delayed` to `{p}:retries` and `XREADGROUP … {p}:retries >` reads them;
//! (3) `XREADGROUP … {p}:jobs >` reads new jobs FIFO and deletes each one's pending key if it
//! still names that entry, so a later event enqueues a new job. Claims never block (`BLOCK` is
//! not available in scripts anyway); workers poll.
//!
//! Lease expiry is tracked by deadline in `{p}:leases`, not by `XAUTOCLAIM`'s min-idle-time:
//! with min-idle-time the lease would be whatever the *reclaiming* consumer passes, and
//! `renew(lease, lease_for)` could not honour `lease_for`. Here the lease of a job is exactly the
//! `lease` of the claim that took it, and a renew sets a new deadline `now + lease_for`; consumers
//! may use different lease lengths. Renew also resets the entry's PEL idle time (`XCLAIM … JUSTID`)
//! so `XPENDING` stays meaningful to an operator. Ownership is always checked against the PEL
//! (`XPENDING {stream} {group} id id 1`). An expired lease stays usable by its holder until
//! another claim takes the job over. Deadlines use the clock of the calling process: keep hosts
//! NTP-synced (a skew of `s` shortens or lengthens leases by `s`).
//!
//! # Release and failure
//! `release` acks and deletes the entry and appends the lease's job (unchanged attempt, with any
//! checkpoint fields the caller set) to `{p}:retries`, so it runs again before new jobs but after
//! expired leases, and its old token is void. `fail` acks and deletes the entry, then either adds
//! the job (attempt + 1, `last_error`, `next_try_at_ms` from [`crate::backoff`]) to
//! `{p}:delayed` or appends it to `{p}:dead` when attempts are exhausted or the error is permanent.
//! A released or retried job does not take a pending key: only never-claimed jobs collapse
//! duplicates (see the contract in [`super`]). `retry_dead_letter` re-enqueues like `enqueue`
//! (collapsing into an identical pending job if one exists).
//!
//! # Upload checkpoints
//! `checkpoint` and `clear_checkpoint` are scripts that check ownership in the PEL first (so a
//! worker whose lease was reclaimed cannot overwrite the new owner's progress). The hash is keyed
//! by job id, which a reclaim (`XCLAIM` of the same entry), a retry, a release and parking all
//! keep, so whoever runs the job next finds it; FINISH deletes it when the job is acked or
//! dead-lettered. The expiry bounds what a job that never ends that way leaves behind (a parked
//! job that collapsed into a duplicate on resume): upload sessions do not outlive it either
//! (distribution purges them after a week by default).
//!
//! # Corrupt data
//! A stream entry whose `job` field is missing or not a valid [`Job`] is never handed out: the
//! claim that reads it moves the raw payload to `{p}:corrupt` (acked and deleted from the stream)
//! and logs an error; the claim returns the valid jobs. Unparsable dead letters are skipped by
//! `dead_letters`/`retry_dead_letter` (logged) and removed by `purge_dead_letters`.
//!
//! # Failures and durability
//! Every Redis error, and any operation not finished within [`OP_TIMEOUT`], is
//! [`StoreError::Unavailable`] (agents answer 503, so the registry retries the webhook). A timed-out
//! enqueue may still have been applied; the retry then collapses into it. Connections go through
//! the shared [`RedisStore`] connection, which reconnects in the background after a failure. With
//! `appendonly yes` + `appendfsync everysec` (the recommended deployment setting; the tests use it) a crash of the
//! Redis host loses at most about one second of acknowledged writes; `appendfsync always` closes
//! that window at a throughput cost.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::lifecycle::{prepare_enqueue, record_failure, reset_dead_letter};
use super::{
    BlobLeases, Checkpoints, DeadLetters, EnqueueOutcome, FailOutcome, Job, JobQueue, Lease,
    ManifestLeases, Pauses, QueueStats, UploadCheckpoint,
};
use crate::backoff::RetryPolicy;
use crate::clock::{duration_ms, now_ms};
use crate::store::redis::{bounded, RedisStore, RedisTarget};
use crate::store::StoreError;

/// How long a job's upload checkpoints outlive their last write.
pub const CHECKPOINT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Lua helpers shared by the scripts.
const PRELUDE: &str = r#"
local function ensure_group(stream, group)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  end
end
local function owner(stream, group, id)
  if redis.call('EXISTS', stream) == 0 then return false end
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  if #p == 0 then return false end
  return p[1][2]
end
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return false
end
-- Adds a never-claimed job unless an unclaimed job with the same pending key exists.
local function enqueue_fresh(jobs, group, pkey, json)
  ensure_group(jobs, group)
  local cur = redis.call('GET', pkey)
  if cur then
    local ok, e = pcall(redis.call, 'XRANGE', jobs, cur, cur)
    if ok and #e > 0 then return 0 end
  end
  local id = redis.call('XADD', jobs, '*', 'job', json, 'pending', pkey)
  redis.call('SET', pkey, id)
  return 1
end
"#;

/// KEYS: jobs, pending key. ARGV: group, job JSON. Returns 1 enqueued, 0 collapsed.
const ENQUEUE: &str = r#"
return enqueue_fresh(KEYS[1], ARGV[1], KEYS[2], ARGV[2])
"#;

/// KEYS: jobs, retries, delayed, leases. ARGV: group, consumer, max, now ms, deadline ms.
/// Returns a flat list: token, job JSON ('' when the field is missing), token, job JSON, ...
const CLAIM: &str = r#"
local jobs, retries, delayed, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer = ARGV[1], ARGV[2]
local max, now, deadline = tonumber(ARGV[3]), ARGV[4], ARGV[5]
ensure_group(jobs, group)
ensure_group(retries, group)
local out, n = {}, 0
local function take(token, fields)
  redis.call('ZADD', leases, deadline, token)
  out[#out + 1] = token
  out[#out + 1] = field(fields, 'job') or ''
  n = n + 1
end
-- 1. Expired leases, earliest deadline first.
if max > 0 then
  for _, token in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, max)) do
    local slash = string.find(token, '/', 1, true)
    local stream = jobs
    if slash and string.sub(token, 1, slash - 1) == 'retries' then stream = retries end
    local id = slash and string.sub(token, slash + 1) or token
    local got = redis.call('XCLAIM', stream, group, consumer, 0, id)
    if got[1] and got[1][2] then
      take(token, got[1][2])
    else
      -- The entry is gone (or no longer pending): nothing left to hand out.
      redis.call('ZREM', leases, token)
    end
  end
end
-- 2. Due retries become readable, as many as this claim can take.
if max - n > 0 then
  for _, raw in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, max - n)) do
    redis.call('XADD', retries, '*', 'job', raw)
    redis.call('ZREM', delayed, raw)
  end
end
local function read(stream, tag, fresh)
  if max - n <= 0 then return end
  local res = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', max - n, 'STREAMS', stream, '>')
  if not res then return end
  for _, e in ipairs(res[1][2]) do
    if fresh then
      local pkey = field(e[2], 'pending')
      if pkey and redis.call('GET', pkey) == e[1] then redis.call('DEL', pkey) end
    end
    take(tag .. '/' .. e[1], e[2])
  end
end
-- 3. Retries and released jobs, then new jobs.
read(retries, 'retries', false)
read(jobs, 'jobs', true)
return out
"#;

/// KEYS: stream, leases. ARGV: group, entry id, consumer, token, new deadline ms.
const RENEW: &str = r#"
if owner(KEYS[1], ARGV[1], ARGV[2]) ~= ARGV[3] then return 0 end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"#;

/// Ends a lease. KEYS: stream, leases, target, the job's checkpoints. ARGV: group, entry id,
/// consumer, token, mode, payload, score. Modes: `ack` (target unused), `retry` (ZADD target score
/// payload), `dead` and `corrupt` (RPUSH target payload), `release` (XADD payload to the target
/// stream); `ack` and `dead` also delete the job's checkpoints.
/// Returns 1, or 0 when `consumer` does not own the entry (nothing changed).
const FINISH: &str = r#"
if owner(KEYS[1], ARGV[1], ARGV[2]) ~= ARGV[3] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[4])
local mode = ARGV[5]
if mode == 'ack' or mode == 'dead' then redis.call('DEL', KEYS[4]) end
if mode == 'retry' then
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[6])
elseif mode == 'dead' or mode == 'corrupt' then
  redis.call('RPUSH', KEYS[3], ARGV[6])
elseif mode == 'release' then
  ensure_group(KEYS[3], ARGV[1])
  redis.call('XADD', KEYS[3], '*', 'job', ARGV[6])
end
return 1
"#;

/// KEYS: stream, leases, paused, parked. ARGV: group, entry id, consumer, token, policy, job JSON.
/// Returns 1 parked, 2 not paused (lease kept), 0 not the owner.
const PARK: &str = r#"
if owner(KEYS[1], ARGV[1], ARGV[2]) ~= ARGV[3] then return 0 end
if redis.call('SISMEMBER', KEYS[3], ARGV[5]) == 0 then return 2 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('RPUSH', KEYS[4], ARGV[6])
return 1
"#;

/// KEYS: jobs, retries, delayed, leases, dead. ARGV: group, now ms.
/// Returns depth, in flight, delayed (not yet due), dead letters, JSON of the oldest unclaimed new
/// job ('' when none).
const STATS: &str = r#"
local jobs, retries, delayed, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, now = ARGV[1], ARGV[2]
ensure_group(jobs, group)
ensure_group(retries, group)
local unread = redis.call('XLEN', jobs) + redis.call('XLEN', retries)
  - redis.call('XPENDING', jobs, group)[1] - redis.call('XPENDING', retries, group)[1]
local expired = redis.call('ZCOUNT', leases, '-inf', now)
local live = redis.call('ZCOUNT', leases, '(' .. now, '+inf')
local head = ''
for _, g in ipairs(redis.call('XINFO', 'GROUPS', jobs)) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  if name == group and last then
    local e = redis.call('XRANGE', jobs, '(' .. last, '+', 'COUNT', 1)
    if #e > 0 then head = field(e[1][2], 'job') or '' end
  end
end
return {unread + redis.call('ZCARD', delayed) + expired, live,
  redis.call('ZCOUNT', delayed, '(' .. now, '+inf'), redis.call('LLEN', KEYS[5]), head}
"#;

/// KEYS: dead, jobs, pending key. ARGV: group, stored JSON, new JSON. 1 when moved back.
const RETRY_DEAD: &str = r#"
if redis.call('LREM', KEYS[1], 1, ARGV[2]) == 0 then return 0 end
enqueue_fresh(KEYS[2], ARGV[1], KEYS[3], ARGV[3])
return 1
"#;

/// KEYS: stream, the job's checkpoints. ARGV: group, entry id, consumer, field, JSON (empty:
/// delete the field), ttl ms. Returns 1, or 0 when `consumer` does not own the entry.
const CHECKPOINT: &str = r#"
if owner(KEYS[1], ARGV[1], ARGV[2]) ~= ARGV[3] then return 0 end
if ARGV[5] == '' then
  redis.call('HDEL', KEYS[2], ARGV[4])
else
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
return 1
"#;

/// KEYS: dead. Returns how many were deleted.
const PURGE: &str = r#"
local n = redis.call('LLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
"#;

/// KEYS: blob lease. ARGV: holder. Compare-and-delete.
const RELEASE_BLOB: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// KEYS: blob lease. ARGV: holder, ttl ms. Compare-and-extend.
const RENEW_BLOB: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

static ENQUEUE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(ENQUEUE));
static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(CLAIM));
static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(RENEW));
static FINISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(FINISH));
static STATS_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(STATS));
static PARK_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(PARK));
static RETRY_DEAD_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(RETRY_DEAD));
static CHECKPOINT_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(CHECKPOINT));
static PURGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PURGE));
static RELEASE_BLOB_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_BLOB));
static RENEW_BLOB_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_BLOB));

/// The Redis/Valkey queue. Clones share one connection.
#[derive(Clone)]
pub struct RedisQueue {
    redis: RedisStore,
    policy: RetryPolicy,
    keys: Keys,
}

/// Key names, computed once from the prefix.
#[derive(Clone)]
struct Keys {
    prefix: String,
    group: String,
    jobs: String,
    retries: String,
    delayed: String,
    leases: String,
    dead: String,
    corrupt: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            group: format!("{prefix}:workers"),
            jobs: format!("{prefix}:jobs"),
            retries: format!("{prefix}:retries"),
            delayed: format!("{prefix}:delayed"),
            leases: format!("{prefix}:leases"),
            dead: format!("{prefix}:dead"),
            corrupt: format!("{prefix}:corrupt"),
        }
    }

    fn pending(&self, job: &Job) -> String {
        format!("{}:pending:{}", self.prefix, job.idempotency_key())
    }

    fn paused(&self) -> String {
        format!("{}:paused", self.prefix)
    }

    fn parked(&self, policy: &str) -> String {
        format!("{}:parked:{policy}", self.prefix)
    }

    fn blob(&self, destination: &str, digest: &str) -> String {
        format!("{}:blob:{destination}:{digest}", self.prefix)
    }

    /// Unambiguous read from the right: the digest follows the last `@`, and a repository holds
    /// neither `@` nor `:` (the one name grammar).
    fn manifest(&self, destination: &str, repository: &str, digest: &str) -> String {
        format!(
            "{}:manifest:{destination}:{repository}@{digest}",
            self.prefix
        )
    }

    fn checkpoints(&self, job_id: &str) -> String {
        format!("{}:checkpoints:{job_id}", self.prefix)
    }

    /// The stream key and entry id a lease token names, if it is one of ours.
    fn parse_token<'t>(&self, token: &'t str) -> Option<(&str, &'t str)> {
        let (stream, id) = token.split_once('/')?;
        let stream = match stream {
            "jobs" => &self.jobs,
            "retries" => &self.retries,
            _ => return None,
        };
        let (ms, seq) = id.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        (digits(ms) && digits(seq)).then_some((stream.as_str(), id))
    }

    /// The stream and entry id of a lease this queue handed out; a token it could not have
    /// issued means the lease is not (or no longer) this consumer's.
    fn lease_entry<'l>(&self, lease: &'l Lease) -> Result<(&str, &'l str), StoreError> {
        self.parse_token(&lease.token)
            .ok_or_else(|| lease_lost(lease))
    }
}

fn lease_lost(lease: &Lease) -> StoreError {
    StoreError::LeaseLost {
        job_id: lease.job.id.clone(),
        consumer: lease.consumer.clone(),
    }
}

fn to_json(job: &Job) -> String {
    serde_json::to_string(job).expect("a Job always serializes to JSON")
}

/// How a lease ends (the `mode` of the FINISH script).
enum Finish<'a> {
    Ack,
    Retry { json: String, at_ms: i64 },
    Dead { json: String },
    Release { json: String },
    Corrupt { raw: &'a [u8] },
}

impl RedisQueue {
    /// Connects (failing with `Unavailable` if the server does not answer within a few seconds)
    /// and creates the consumer group on both streams if missing.
    pub async fn connect(
        url: &str,
        prefix: &str,
        policy: RetryPolicy,
    ) -> Result<RedisQueue, StoreError> {
        RedisQueue::open(&RedisStore::connect(url, prefix).await?, policy).await
    }

    /// [`RedisQueue::connect`] to a [`RedisTarget`] (TLS with a private CA, for instance).
    pub async fn connect_to(
        target: &RedisTarget,
        prefix: &str,
        policy: RetryPolicy,
    ) -> Result<RedisQueue, StoreError> {
        RedisQueue::open(&RedisStore::connect_to(target, prefix).await?, policy).await
    }

    /// The queue on `redis` (its connection and prefix), creating the consumer group on both
    /// streams if missing.
    pub async fn open(redis: &RedisStore, policy: RetryPolicy) -> Result<RedisQueue, StoreError> {
        let queue = RedisQueue {
            redis: redis.clone(),
            policy,
            keys: Keys::new(redis.prefix()),
        };
        for stream in [&queue.keys.jobs, &queue.keys.retries] {
            let mut con = queue.redis.connection();
            let created = bounded(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(stream)
                    .arg(&queue.keys.group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async::<()>(&mut con),
            )
            .await;
            match created {
                Ok(()) => {}
                Err(StoreError::Unavailable(msg)) if msg.contains("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(queue)
    }

    /// The key prefix this queue uses.
    pub fn prefix(&self) -> &str {
        &self.keys.prefix
    }
}

/// The queue's connection, shared by the history, limits and records kept next to it.
impl AsRef<RedisStore> for RedisQueue {
    fn as_ref(&self) -> &RedisStore {
        &self.redis
    }
}

impl RedisQueue {
    /// Ends the lease behind `lease`; `LeaseLost` when its consumer no longer owns the entry.
    async fn finish(&self, lease: &Lease, how: Finish<'_>) -> Result<(), StoreError> {
        if self
            .finish_token(&lease.token, &lease.consumer, Some(&lease.job.id), how)
            .await?
        {
            Ok(())
        } else {
            Err(lease_lost(lease))
        }
    }

    /// Runs the FINISH script; false when `consumer` does not own the entry `token` names.
    /// `job_id` names the job's checkpoints (`None` for an entry that is not a valid job).
    async fn finish_token(
        &self,
        token: &str,
        consumer: &str,
        job_id: Option<&str>,
        how: Finish<'_>,
    ) -> Result<bool, StoreError> {
        let Some((stream, id)) = self.keys.parse_token(token) else {
            return Ok(false);
        };
        let (mode, target, payload, score): (&str, &str, &[u8], i64) = match &how {
            Finish::Ack => ("ack", stream, b"", 0),
            Finish::Retry { json, at_ms } => ("retry", &self.keys.delayed, json.as_bytes(), *at_ms),
            Finish::Dead { json } => ("dead", &self.keys.dead, json.as_bytes(), 0),
            Finish::Release { json } => ("release", &self.keys.retries, json.as_bytes(), 0),
            Finish::Corrupt { raw } => ("corrupt", &self.keys.corrupt, raw, 0),
        };
        let mut con = self.redis.connection();
        let done: i64 = bounded(
            FINISH_SCRIPT
                .key(stream)
                .key(&self.keys.leases)
                .key(target)
                .key(self.keys.checkpoints(job_id.unwrap_or_default()))
                .arg(&self.keys.group)
                .arg(id)
                .arg(consumer)
                .arg(token)
                .arg(mode)
                .arg(payload)
                .arg(score)
                .invoke_async(&mut con),
        )
        .await?;
        Ok(done == 1)
    }
}

#[async_trait::async_trait]
impl JobQueue for RedisQueue {
    async fn enqueue(&self, job: Job) -> Result<EnqueueOutcome, StoreError> {
        let job = prepare_enqueue(job, now_ms());
        let mut con = self.redis.connection();
        let added: i64 = bounded(
            ENQUEUE_SCRIPT
                .key(&self.keys.jobs)
                .key(self.keys.pending(&job))
                .arg(&self.keys.group)
                .arg(to_json(&job))
                .invoke_async(&mut con),
        )
        .await?;
        self.redis
            .confirm_replicated(&mut con, &format!("job {}", job.id))
            .await?;
        Ok(if added == 1 {
            EnqueueOutcome::Enqueued
        } else {
            EnqueueOutcome::Collapsed
        })
    }

    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Lease>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut con = self.redis.connection();
        let flat: Vec<Vec<u8>> = bounded(
            CLAIM_SCRIPT
                .key(&self.keys.jobs)
                .key(&self.keys.retries)
                .key(&self.keys.delayed)
                .key(&self.keys.leases)
                .arg(&self.keys.group)
                .arg(consumer)
                .arg(max)
                .arg(now)
                .arg(now.saturating_add(duration_ms(lease)))
                .invoke_async(&mut con),
        )
        .await?;
        let mut leases = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            let token = String::from_utf8_lossy(&pair[0]).into_owned();
            match serde_json::from_slice::<Job>(&pair[1]) {
                Ok(job) => leases.push(Lease {
                    job,
                    token,
                    consumer: consumer.to_owned(),
                }),
                Err(e) => {
                    tracing::error!(
                        token = %token,
                        error = %e,
                        key = %self.keys.corrupt,
                        "queue entry is not a valid job; moved to the corrupt list"
                    );
                    // Not owned any more would mean another claim quarantines it: fine either way.
                    self.finish_token(&token, consumer, None, Finish::Corrupt { raw: &pair[1] })
                        .await?;
                }
            }
        }
        Ok(leases)
    }

    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<(), StoreError> {
        let (stream, id) = self.keys.lease_entry(lease)?;
        let mut con = self.redis.connection();
        let renewed: i64 = bounded(
            RENEW_SCRIPT
                .key(stream)
                .key(&self.keys.leases)
                .arg(&self.keys.group)
                .arg(id)
                .arg(&lease.consumer)
                .arg(&lease.token)
                .arg(now_ms().saturating_add(duration_ms(lease_for)))
                .invoke_async(&mut con),
        )
        .await?;
        if renewed == 1 {
            Ok(())
        } else {
            Err(lease_lost(lease))
        }
    }

    async fn ack(&self, lease: &Lease) -> Result<(), StoreError> {
        self.finish(lease, Finish::Ack).await
    }

    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        retryable: bool,
    ) -> Result<FailOutcome, StoreError> {
        let (job, outcome) =
            record_failure(lease.job.clone(), error, retryable, &self.policy, now_ms());
        let json = to_json(&job);
        let how = match outcome {
            FailOutcome::Retry { next_try_at_ms } => Finish::Retry {
                json,
                at_ms: next_try_at_ms,
            },
            FailOutcome::DeadLettered => Finish::Dead { json },
        };
        self.finish(lease, how).await?;
        Ok(outcome)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.finish(
            lease,
            Finish::Release {
                json: to_json(&lease.job),
            },
        )
        .await
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let now = now_ms();
        let mut con = self.redis.connection();
        let (depth, in_flight, delayed, dead, head): (i64, i64, i64, i64, Vec<u8>) = bounded(
            STATS_SCRIPT
                .key(&self.keys.jobs)
                .key(&self.keys.retries)
                .key(&self.keys.delayed)
                .key(&self.keys.leases)
                .key(&self.keys.dead)
                .arg(&self.keys.group)
                .arg(now)
                .invoke_async(&mut con),
        )
        .await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let oldest_age_ms = serde_json::from_slice::<Job>(&head)
            .map_or(0, |j| count(now.saturating_sub(j.enqueued_at_ms)));
        Ok(QueueStats {
            depth: count(depth),
            in_flight: count(in_flight),
            delayed: count(delayed),
            dead_letters: count(dead),
            oldest_age_ms,
        })
    }
}

#[async_trait::async_trait]
impl DeadLetters for RedisQueue {
    async fn dead_letters(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let end = isize::try_from(limit).map_or(-1, |l| l - 1);
        let mut con = self.redis.connection();
        let raw: Vec<Vec<u8>> = bounded(
            redis::cmd("LRANGE")
                .arg(&self.keys.dead)
                .arg(0)
                .arg(end)
                .query_async(&mut con),
        )
        .await?;
        Ok(raw.iter().filter_map(|r| self.parse_dead(r)).collect())
    }

    async fn retry_dead_letter(&self, job_id: &str) -> Result<bool, StoreError> {
        let mut con = self.redis.connection();
        let raw: Vec<Vec<u8>> = bounded(
            redis::cmd("LRANGE")
                .arg(&self.keys.dead)
                .arg(0)
                .arg(-1)
                .query_async(&mut con),
        )
        .await?;
        let Some((stored, job)) = raw.iter().find_map(|r| {
            self.parse_dead(r)
                .filter(|j| j.id == job_id)
                .map(|j| (r, j))
        }) else {
            return Ok(false);
        };
        let job = reset_dead_letter(job);
        let moved: i64 = bounded(
            RETRY_DEAD_SCRIPT
                .key(&self.keys.dead)
                .key(&self.keys.jobs)
                .key(self.keys.pending(&job))
                .arg(&self.keys.group)
                .arg(stored.as_slice())
                .arg(to_json(&job))
                .invoke_async(&mut con),
        )
        .await?;
        // 0: a concurrent retry or purge took it first.
        Ok(moved == 1)
    }

    async fn purge_dead_letters(&self) -> Result<u64, StoreError> {
        let mut con = self.redis.connection();
        let n: i64 = bounded(PURGE_SCRIPT.key(&self.keys.dead).invoke_async(&mut con)).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// Leases with expiry on one key each (blob and manifest leases): `SET NX PX` takes one, scripts
/// renew and release it only for its holder.
impl RedisQueue {
    async fn take_lease(
        &self,
        key: String,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut con = self.redis.connection();
        let set: Option<String> = bounded(
            redis::cmd("SET")
                .arg(key)
                .arg(holder)
                .arg("NX")
                .arg("PX")
                .arg(duration_ms(ttl).max(1))
                .query_async(&mut con),
        )
        .await?;
        Ok(set.is_some())
    }

    async fn renew_lease(
        &self,
        key: String,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut con = self.redis.connection();
        let extended: i64 = bounded(
            RENEW_BLOB_SCRIPT
                .key(key)
                .arg(holder)
                .arg(duration_ms(ttl).max(1))
                .invoke_async(&mut con),
        )
        .await?;
        Ok(extended == 1)
    }

    async fn release_lease(&self, key: String, holder: &str) -> Result<(), StoreError> {
        let mut con = self.redis.connection();
        let _: i64 = bounded(
            RELEASE_BLOB_SCRIPT
                .key(key)
                .arg(holder)
                .invoke_async(&mut con),
        )
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl BlobLeases for RedisQueue {
    async fn lease_blob(
        &self,
        destination: &str,
        digest: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.take_lease(self.keys.blob(destination, digest), holder, ttl)
            .await
    }

    async fn renew_blob(
        &self,
        destination: &str,
        digest: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.renew_lease(self.keys.blob(destination, digest), holder, ttl)
            .await
    }

    async fn blob_lease_holder(
        &self,
        destination: &str,
        digest: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut con = self.redis.connection();
        bounded(
            redis::cmd("GET")
                .arg(self.keys.blob(destination, digest))
                .query_async(&mut con),
        )
        .await
    }

    async fn release_blob(
        &self,
        destination: &str,
        digest: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        self.release_lease(self.keys.blob(destination, digest), holder)
            .await
    }
}

#[async_trait::async_trait]
impl ManifestLeases for RedisQueue {
    async fn lease_manifest(
        &self,
        destination: &str,
        repository: &str,
        digest: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.take_lease(
            self.keys.manifest(destination, repository, digest),
            holder,
            ttl,
        )
        .await
    }

    async fn renew_manifest(
        &self,
        destination: &str,
        repository: &str,
        digest: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.renew_lease(
            self.keys.manifest(destination, repository, digest),
            holder,
            ttl,
        )
        .await
    }

    async fn release_manifest(
        &self,
        destination: &str,
        repository: &str,
        digest: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        self.release_lease(self.keys.manifest(destination, repository, digest), holder)
            .await
    }
}

#[async_trait::async_trait]
impl Pauses for RedisQueue {
    async fn set_paused(&self, policy: &str, paused: bool) -> Result<(), StoreError> {
        let mut con = self.redis.connection();
        // Each command spelled out, so a search for the commands Ferry sends finds both.
        let mut cmd = if paused {
            redis::cmd("SADD")
        } else {
            redis::cmd("SREM")
        };
        bounded(
            cmd.arg(self.keys.paused())
                .arg(policy)
                .query_async::<i64>(&mut con),
        )
        .await?;
        Ok(())
    }

    async fn paused(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let mut con = self.redis.connection();
        bounded(
            redis::cmd("SMEMBERS")
                .arg(self.keys.paused())
                .query_async(&mut con),
        )
        .await
    }

    async fn park(&self, lease: &Lease) -> Result<bool, StoreError> {
        let (stream, id) = self.keys.lease_entry(lease)?;
        let mut con = self.redis.connection();
        let r: i64 = bounded(
            PARK_SCRIPT
                .key(stream)
                .key(&self.keys.leases)
                .key(self.keys.paused())
                .key(self.keys.parked(&lease.job.policy))
                .arg(&self.keys.group)
                .arg(id)
                .arg(&lease.consumer)
                .arg(&lease.token)
                .arg(&lease.job.policy)
                .arg(to_json(&lease.job))
                .invoke_async(&mut con),
        )
        .await?;
        match r {
            1 => Ok(true),
            2 => Ok(false),
            _ => Err(lease_lost(lease)),
        }
    }

    async fn unpark(&self, policy: &str) -> Result<u64, StoreError> {
        let key = self.keys.parked(policy);
        let mut con = self.redis.connection();
        let raw: Vec<Vec<u8>> = bounded(
            redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut con),
        )
        .await?;
        let mut moved = 0;
        for entry in raw {
            // Enqueue first, then remove: a crash in between leaves the job parked (it is moved
            // again on the next resume, and collapses if it is still pending).
            match serde_json::from_slice::<Job>(&entry) {
                Ok(job) => {
                    self.enqueue(job).await?;
                    moved += 1;
                }
                Err(e) => {
                    tracing::error!(policy, error = %e, "quarantining an unreadable parked job");
                    bounded(
                        redis::cmd("RPUSH")
                            .arg(&self.keys.corrupt)
                            .arg(entry.as_slice())
                            .query_async::<i64>(&mut con),
                    )
                    .await?;
                }
            }
            bounded(
                redis::cmd("LREM")
                    .arg(&key)
                    .arg(1)
                    .arg(entry.as_slice())
                    .query_async::<i64>(&mut con),
            )
            .await?;
        }
        Ok(moved)
    }
}

#[async_trait::async_trait]
impl Checkpoints for RedisQueue {
    async fn checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &UploadCheckpoint,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(checkpoint)
            .expect("an UploadCheckpoint always serializes to JSON");
        let field = checkpoint_field(&checkpoint.destination, &checkpoint.digest);
        self.write_checkpoint(lease, &field, &json).await
    }

    async fn clear_checkpoint(
        &self,
        lease: &Lease,
        destination: &str,
        digest: &str,
    ) -> Result<(), StoreError> {
        self.write_checkpoint(lease, &checkpoint_field(destination, digest), "")
            .await
    }

    async fn checkpoints(&self, job_id: &str) -> Result<Vec<UploadCheckpoint>, StoreError> {
        let key = self.keys.checkpoints(job_id);
        let mut con = self.redis.connection();
        let raw: Vec<Vec<u8>> =
            bounded(redis::cmd("HVALS").arg(&key).query_async(&mut con)).await?;
        let mut out: Vec<UploadCheckpoint> = raw
            .iter()
            .filter_map(|r| match serde_json::from_slice::<UploadCheckpoint>(r) {
                Ok(c) => Some(c),
                Err(e) => {
                    // Losing a checkpoint only costs a fresh upload.
                    tracing::warn!(key = %key, error = %e, "ignoring an unreadable upload checkpoint");
                    None
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.destination, &a.digest).cmp(&(&b.destination, &b.digest)));
        Ok(out)
    }
}

/// The field of a checkpoint in the job's hash (a digest never contains `|`).
fn checkpoint_field(destination: &str, digest: &str) -> String {
    format!("{digest}|{destination}")
}

impl RedisQueue {
    /// Runs the CHECKPOINT script: stores `json` under `field` (deletes it when `json` is empty).
    async fn write_checkpoint(
        &self,
        lease: &Lease,
        field: &str,
        json: &str,
    ) -> Result<(), StoreError> {
        let (stream, id) = self.keys.lease_entry(lease)?;
        let mut con = self.redis.connection();
        let done: i64 = bounded(
            CHECKPOINT_SCRIPT
                .key(stream)
                .key(self.keys.checkpoints(&lease.job.id))
                .arg(&self.keys.group)
                .arg(id)
                .arg(&lease.consumer)
                .arg(field)
                .arg(json)
                .arg(duration_ms(CHECKPOINT_TTL))
                .invoke_async(&mut con),
        )
        .await?;
        if done == 1 {
            Ok(())
        } else {
            Err(lease_lost(lease))
        }
    }

    fn parse_dead(&self, raw: &[u8]) -> Option<Job> {
        match serde_json::from_slice::<Job>(raw) {
            Ok(job) => Some(job),
            Err(e) => {
                tracing::warn!(key = %self.keys.dead, error = %e, "skipping a dead letter that is not a valid job");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_only_when_well_formed() {
        let k = Keys::new("ferry");
        assert_eq!(k.parse_token("jobs/1712-0"), Some(("ferry:jobs", "1712-0")));
        assert_eq!(
            k.parse_token("retries/1-12"),
            Some(("ferry:retries", "1-12"))
        );
        for bad in [
            "",
            "jobs",
            "jobs/",
            "jobs/12",
            "jobs/a-1",
            "other/1-0",
            "jobs/1-0-1",
            "mem-3",
        ] {
            assert_eq!(k.parse_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn key_names() {
        let k = Keys::new("ferry");
        assert_eq!(k.group, "ferry:workers");
        assert_eq!(k.blob("us", "sha256:ab"), "ferry:blob:us:sha256:ab");
        assert_eq!(k.checkpoints("j1"), "ferry:checkpoints:j1");
        assert_eq!(checkpoint_field("us", "sha256:ab"), "sha256:ab|us");
    }
}
