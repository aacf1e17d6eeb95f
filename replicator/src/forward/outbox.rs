//! The durable outbox of events other regions must act on, and the receiver's record of the
//! events it already accepted.
//!
//! In Redis/Valkey: one stream per destination region, `<prefix>:outbox:<region>`, appended by
//! the agent before it answers the registry and trimmed by the forwarder only after the other
//! region acknowledged (so a partition only delays forwarding). Entries are read in stream order,
//! which keeps every repository's events in order. `<prefix>:forwarded:<event id>` marks an event
//! this region accepted from another (forwarding is at-least-once; the mark makes it idempotent).
//! `<prefix>:outbox:<region>:forwarder` is the lease that lets one forwarder per region deliver.
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::event::{duration_ms, Event};
use crate::queue::redis::{bounded, RedisQueue};
use crate::queue::QueueError;

/// How long an accepted event id is remembered (a redelivery after that makes duplicate jobs,
/// which the level-triggered workers absorb).
pub const ACCEPTED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

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
    async fn append(&self, region: &str, entry: &Forwarded) -> Result<(), QueueError>;

    /// The oldest `limit` entries of `region`'s outbox, in order, with their ids.
    async fn pending(
        &self,
        region: &str,
        limit: usize,
    ) -> Result<Vec<(String, Forwarded)>, QueueError>;

    /// Removes delivered entries.
    async fn remove(&self, region: &str, ids: &[String]) -> Result<(), QueueError>;

    /// Entries waiting for `region`.
    async fn depth(&self, region: &str) -> Result<u64, QueueError>;

    /// Takes or renews the lease of `region`'s forwarder for `holder`; false when another holds it.
    async fn lease_forwarder(
        &self,
        region: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, QueueError>;

    /// Whether an event with this id was accepted from another region already.
    async fn accepted(&self, event_id: &str) -> Result<bool, QueueError>;

    /// Remembers that the event's jobs are in this region's queue.
    async fn mark_accepted(&self, event_id: &str) -> Result<(), QueueError>;
}

/// The outbox in the region's Redis/Valkey (see the module docs for the keys).
#[derive(Clone)]
pub struct RedisOutbox {
    con: ConnectionManager,
    prefix: String,
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

type StreamEntries = Vec<(String, Vec<(String, String)>)>;

impl RedisOutbox {
    pub fn new(queue: &RedisQueue) -> RedisOutbox {
        RedisOutbox {
            con: queue.connection(),
            prefix: queue.prefix().to_string(),
        }
    }

    fn stream(&self, region: &str) -> String {
        format!("{}:outbox:{region}", self.prefix)
    }
}

#[async_trait::async_trait]
impl Outbox for RedisOutbox {
    async fn append(&self, region: &str, entry: &Forwarded) -> Result<(), QueueError> {
        let json = serde_json::to_string(entry).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let mut con = self.con.clone();
        bounded(
            redis::cmd("XADD")
                .arg(self.stream(region))
                .arg("*")
                .arg("entry")
                .arg(json)
                .query_async::<String>(&mut con),
        )
        .await
        .map(drop)
    }

    async fn pending(
        &self,
        region: &str,
        limit: usize,
    ) -> Result<Vec<(String, Forwarded)>, QueueError> {
        let mut con = self.con.clone();
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

    async fn remove(&self, region: &str, ids: &[String]) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut con = self.con.clone();
        bounded(
            redis::cmd("XDEL")
                .arg(self.stream(region))
                .arg(ids)
                .query_async::<u64>(&mut con),
        )
        .await
        .map(drop)
    }

    async fn depth(&self, region: &str) -> Result<u64, QueueError> {
        let mut con = self.con.clone();
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
    ) -> Result<bool, QueueError> {
        let mut con = self.con.clone();
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

    async fn accepted(&self, event_id: &str) -> Result<bool, QueueError> {
        let mut con = self.con.clone();
        let n: i64 = bounded(
            redis::cmd("EXISTS")
                .arg(format!("{}:forwarded:{event_id}", self.prefix))
                .query_async(&mut con),
        )
        .await?;
        Ok(n == 1)
    }

    async fn mark_accepted(&self, event_id: &str) -> Result<(), QueueError> {
        let mut con = self.con.clone();
        bounded(
            redis::cmd("SET")
                .arg(format!("{}:forwarded:{event_id}", self.prefix))
                .arg(1)
                .arg("PX")
                .arg(duration_ms(ACCEPTED_TTL))
                .query_async::<()>(&mut con),
        )
        .await
    }
}
