//! Registry pauses shared through the region's Redis/Valkey (see [`crate::oci::gate`]): one key
//! per registry, `<prefix>:pause:<registry>`, holding the Unix ms the pause ends, expiring with
//! it. A pause only grows: a Lua script keeps the later end.
use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::Script;

use crate::oci::gate::SharedGate;
use crate::queue::redis::{bounded, RedisQueue};

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

/// [`SharedGate`] in Redis/Valkey.
#[derive(Clone)]
pub struct RedisGate {
    con: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisGate")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisGate {
    pub fn new(queue: &RedisQueue) -> RedisGate {
        RedisGate {
            con: queue.connection(),
            prefix: queue.prefix().to_string(),
        }
    }

    fn key(&self, registry: &str) -> String {
        format!("{}:pause:{registry}", self.prefix)
    }
}

#[async_trait::async_trait]
impl SharedGate for RedisGate {
    async fn paused_until(&self, registry: &str) -> Result<i64, String> {
        let mut con = self.con.clone();
        let v: Option<i64> = bounded(
            redis::cmd("GET")
                .arg(self.key(registry))
                .query_async(&mut con),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(v.unwrap_or(0))
    }

    async fn pause(&self, registry: &str, until_ms: i64) -> Result<(), String> {
        let mut con = self.con.clone();
        bounded(
            PAUSE_SCRIPT
                .key(self.key(registry))
                .arg(until_ms)
                .invoke_async::<i64>(&mut con),
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
    }
}
