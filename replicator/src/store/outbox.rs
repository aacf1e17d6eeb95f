//! The durable outbox of events other regions must act on, and the receiver's record of the
//! events it already accepted.
//!
//! In Redis/Valkey: one stream per destination region, `<prefix>:outbox:<region>`, appended by
//! the agent before it answers the registry and trimmed by the forwarder only after the other
//! region acknowledged (so a partition only delays forwarding). Entries are read in stream order,
//! which keeps every repository's events in order. `<prefix>:outbox:<region>:forwarder` is the
//! lease that lets one forwarder per region deliver.
//!
//! `<prefix>:forwarded` remembers the events this region accepted from others (forwarding is
//! at-least-once; remembering makes it idempotent): a sorted set of event ids scored by the Redis
//! server's time of acceptance in microseconds. It is **bounded** whatever peers send: every
//! `mark_accepted` drops ids older than [`ACCEPTED_TTL`] and then all but the newest
//! [`ACCEPTED_MAX`] (so a peer flooding new ids evicts old ones instead of growing Redis); ids
//! are at most [`crate::event::MAX_EVENT_ID_LEN`] bytes (checked on receipt). A redelivery of a
//! forgotten id makes duplicate jobs, which the level-triggered workers absorb. (Ids remembered
//! by an older version as `<prefix>:forwarded:<id>` strings simply expire.)
use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};

use crate::clock::duration_ms;
use crate::event::Event;
use crate::store::redis::{bounded, RedisStore};
use crate::store::StoreError;

/// How long an accepted event id is remembered (a redelivery after that makes duplicate jobs,
/// which the level-triggered workers absorb).
pub const ACCEPTED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How many accepted event ids are remembered at most (the newest). Redeliveries come within
/// seconds or after a partition, long before this many newer events were accepted.
pub const ACCEPTED_MAX: usize = 200_000;

/// One outbox entry: the event and the region that accepted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    pub event: Event,
    pub origin_region: String,
}

/// Events waiting to be delivered to other regions, and the events accepted from them.
#[async_trait::async_trait]
pub trait Outbox: Send + Sync {
    /// Appends `entry` to `region`'s outbox; returns once it is durable.
    async fn append(&self, region: &str, entry: &Forwarded) -> Result<(), StoreError>;

    /// The oldest `limit` entries of `region`'s outbox, in order, with their ids.
    async fn pending(
        &self,
        region: &str,
        limit: usize,
    ) -> Result<Vec<(String, Forwarded)>, StoreError>;

    /// Removes delivered entries.
    async fn remove(&self, region: &str, ids: &[String]) -> Result<(), StoreError>;

    /// Entries waiting for `region`.
    async fn depth(&self, region: &str) -> Result<u64, StoreError>;

    /// Takes or renews the lease of `region`'s forwarder for `holder`; false when another holds it.
    async fn lease_forwarder(
        &self,
        region: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Whether an event with this id was accepted from another region already.
    async fn accepted(&self, event_id: &str) -> Result<bool, StoreError>;

    /// Remembers that the event's jobs are in this region's queue.
    async fn mark_accepted(&self, event_id: &str) -> Result<(), StoreError>;
}

/// The outbox in the region's Redis/Valkey (see the module docs for the keys).
#[derive(Clone)]
pub struct RedisOutbox {
    redis: RedisStore,
    /// [`ACCEPTED_MAX`] unless a test lowers it.
    accepted_max: usize,
}

/// Takes the lease when free, renews it when `holder` has it.
static LEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});

/// Remembers an accepted id, then forgets what is too old or too much. KEYS: the set. ARGV: id,
/// TTL in microseconds, how many to keep.
static MARK_ACCEPTED_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- '%d': Lua's default number format keeps 14 digits, too few for microseconds.
redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now - tonumber(ARGV[2])))
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[2]) / 1000))
return 1
",
    )
});

/// Whether an id is remembered and not older than the TTL. KEYS: the set. ARGV: id, TTL in
/// microseconds.
static ACCEPTED_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if tonumber(score) < now - tonumber(ARGV[2]) then return 0 end
return 1
",
    )
});

type StreamEntries = Vec<(String, Vec<(String, String)>)>;

impl RedisOutbox {
    /// On `redis` (the region's shared connection and key prefix).
    pub fn new(redis: &impl AsRef<RedisStore>) -> RedisOutbox {
        RedisOutbox {
            redis: redis.as_ref().clone(),
            accepted_max: ACCEPTED_MAX,
        }
    }

    /// Remembers at most `n` accepted ids instead of [`ACCEPTED_MAX`] (tests).
    pub fn remember_at_most(mut self, n: usize) -> RedisOutbox {
        self.accepted_max = n.max(1);
        self
    }

    /// How many accepted ids are remembered now.
    pub async fn remembered(&self) -> Result<u64, StoreError> {
        let mut con = self.redis.connection();
        bounded(
            redis::cmd("ZCARD")
                .arg(self.accepted_key())
                .query_async(&mut con),
        )
        .await
    }

    fn accepted_key(&self) -> String {
        self.redis.key("forwarded")
    }

    fn stream(&self, region: &str) -> String {
        self.redis.key(&format!("outbox:{region}"))
    }
}

#[async_trait::async_trait]
impl Outbox for RedisOutbox {
    async fn append(&self, region: &str, entry: &Forwarded) -> Result<(), StoreError> {
        let json = serde_json::to_string(entry).map_err(|e| {
            StoreError::Corrupt(format!(
                "outbox entry for region {region} (event {}) does not serialize: {e}",
                entry.event.id
            ))
        })?;
        let mut con = self.redis.connection();
        bounded(
            redis::cmd("XADD")
                .arg(self.stream(region))
                .arg("*")
                .arg("entry")
                .arg(json)
                .query_async::<String>(&mut con),
        )
        .await?;
        self.redis
            .confirm_replicated(
                &mut con,
                &format!(
                    "outbox entry for region {region} (event {})",
                    entry.event.id
                ),
            )
            .await
    }

    async fn pending(
        &self,
        region: &str,
        limit: usize,
    ) -> Result<Vec<(String, Forwarded)>, StoreError> {
        let mut con = self.redis.connection();
        let entries: StreamEntries = bounded(
            redis::cmd("XRANGE")
                .arg(self.stream(region))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut con),
        )
        .await?;
        let mut out = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            let raw = fields
                .iter()
                .find(|(k, _)| k == "entry")
                .map(|(_, v)| v.as_str())
                .unwrap_or_default();
            match serde_json::from_str::<Forwarded>(raw) {
                Ok(entry) => out.push((id, entry)),
                Err(e) => {
                    // Dropping it is the only way forward; say what was lost.
                    tracing::error!(region, entry_id = %id, raw, error = %e, "outbox entry is not valid JSON; removed");
                    self.remove(region, std::slice::from_ref(&id)).await?;
                }
            }
        }
        Ok(out)
    }

    async fn remove(&self, region: &str, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut con = self.redis.connection();
        bounded(
            redis::cmd("XDEL")
                .arg(self.stream(region))
                .arg(ids)
                .query_async::<u64>(&mut con),
        )
        .await
        .map(drop)
    }

    async fn depth(&self, region: &str) -> Result<u64, StoreError> {
        let mut con = self.redis.connection();
        bounded(
            redis::cmd("XLEN")
                .arg(self.stream(region))
                .query_async(&mut con),
        )
        .await
    }

    async fn lease_forwarder(
        &self,
        region: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut con = self.redis.connection();
        let got: i64 = bounded(
            LEASE_SCRIPT
                .key(format!("{}:forwarder", self.stream(region)))
                .arg(holder)
                .arg(duration_ms(ttl))
                .invoke_async(&mut con),
        )
        .await?;
        Ok(got == 1)
    }

    async fn accepted(&self, event_id: &str) -> Result<bool, StoreError> {
        let mut con = self.redis.connection();
        let n: i64 = bounded(
            ACCEPTED_SCRIPT
                .key(self.accepted_key())
                .arg(event_id)
                .arg(ttl_us())
                .invoke_async(&mut con),
        )
        .await?;
        Ok(n == 1)
    }

    async fn mark_accepted(&self, event_id: &str) -> Result<(), StoreError> {
        let mut con = self.redis.connection();
        bounded(
            MARK_ACCEPTED_SCRIPT
                .key(self.accepted_key())
                .arg(event_id)
                .arg(ttl_us())
                .arg(self.accepted_max)
                .invoke_async::<i64>(&mut con),
        )
        .await
        .map(drop)
    }
}

/// [`ACCEPTED_TTL`] in microseconds (the unit of the set's scores).
fn ttl_us() -> i64 {
    duration_ms(ACCEPTED_TTL).saturating_mul(1000)
}
