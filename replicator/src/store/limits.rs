//! Limits shared by the processes of a region through its Redis/Valkey:
//! - registry pauses (see [`crate::oci::gate`]): one key per registry, `<prefix>:pause:<registry>`,
//!   holding the Unix ms the pause ends, expiring with it. A pause only grows: a Lua script keeps
//!   the later end.
//! - policy bandwidth timelines (see [`crate::throttle`]): `<prefix>:speed:<policy>` holds the
//!   next free instant in the server's clock (µs, from `TIME`, so hosts' clocks do not matter).
use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::oci::gate::SharedGate;
use crate::store::redis::{bounded, RedisStore};
use crate::throttle::SharedSpeed;

/// Sets the pause end unless a later one is set; the key expires when the pause ends.
static PAUSE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new > cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[1])
end
return 1
",
    )
});

/// Reserves `ARGV[1]` µs on the timeline (an idle one banks at most `ARGV[2]` µs); returns the
/// µs to wait before the reservation may be used (its end, less the burst, minus now).
static SPEED_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local nxt = tonumber(redis.call('GET', KEYS[1]) or '0')
local start = math.max(nxt, now - burst)
local done = start + cost
redis.call('SET', KEYS[1], string.format('%.0f', done), 'PX', 3600000)
local wait = done - burst - now
if wait < 0 then wait = 0 end
return wait
",
    )
});

/// The region's shared limits in Redis/Valkey: [`SharedGate`] (registry pauses) and
/// [`SharedSpeed`] (policy bandwidth timelines).
#[derive(Clone)]
pub struct RedisLimits {
    redis: RedisStore,
}

impl std::fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimits")
            .field("prefix", &self.redis.prefix())
            .finish_non_exhaustive()
    }
}

impl RedisLimits {
    /// On `redis` (the region's shared connection and key prefix).
    pub fn new(redis: &impl AsRef<RedisStore>) -> RedisLimits {
        RedisLimits {
            redis: redis.as_ref().clone(),
        }
    }

    fn pause_key(&self, registry: &str) -> String {
        self.redis.key(&format!("pause:{registry}"))
    }
}

#[async_trait::async_trait]
impl SharedSpeed for RedisLimits {
    async fn reserve(
        &self,
        policy: &str,
        cost: Duration,
        burst: Duration,
    ) -> Result<Duration, String> {
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let mut con = self.redis.connection();
        let wait: i64 = bounded(
            SPEED_SCRIPT
                .key(self.redis.key(&format!("speed:{policy}")))
                .arg(micros(cost))
                .arg(micros(burst))
                .invoke_async(&mut con),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(Duration::from_micros(u64::try_from(wait).unwrap_or(0)))
    }
}

#[async_trait::async_trait]
impl SharedGate for RedisLimits {
    async fn paused_until(&self, registry: &str) -> Result<i64, String> {
        let mut con = self.redis.connection();
        let v: Option<i64> = bounded(
            redis::cmd("GET")
                .arg(self.pause_key(registry))
                .query_async(&mut con),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(v.unwrap_or(0))
    }

    async fn pause(&self, registry: &str, until_ms: i64) -> Result<(), String> {
        let mut con = self.redis.connection();
        bounded(
            PAUSE_SCRIPT
                .key(self.pause_key(registry))
                .arg(until_ms)
                .invoke_async::<i64>(&mut con),
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
    }
}
