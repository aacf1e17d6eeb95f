//! The tag ledger of bidirectional policies: the last write of each tag of the registries a
//! region writes (digest, event time, region), which `regions::conflict` compares to decide which
//! of two concurrent pushes wins. This module only stores writes; the rule is the conflict
//! module's.
//!
//! Invariants: a write is remembered for [`LEDGER_TTL`] (as long as an event time is believed) and
//! then forgotten; a stored write that does not parse is [`StoreError::Corrupt`] naming the tag.
//! Redis layout: one JSON string per tag, `{p}:tagwrite:{registry}:{repository}:{tag}`, with a
//! PX expiry of [`LEDGER_TTL`]; recording is `SET … PX … GET`, which returns the write it replaced
//! (Redis 6.2).
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::redis::{bounded, RedisStore};
use crate::store::StoreError;

/// How long the ledger remembers a write: as long as an event time is believed
/// ([`crate::event::MAX_EVENT_AGE`]).
pub const LEDGER_TTL: Duration = crate::event::MAX_EVENT_AGE;

/// One write of a tag: what it holds since, when the change happened and in which region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagWrite {
    pub digest: String,
    /// Event time of the change (Unix ms).
    pub at_ms: i64,
    /// Region where the change was made (empty on a single site).
    pub region: String,
}

/// The last write of each tag of the registries this region writes.
#[async_trait::async_trait]
pub trait TagLedger: Send + Sync {
    async fn last_write(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<TagWrite>, StoreError>;

    /// Records `write` as the tag's last write and returns the one it replaced (atomically: two
    /// recorders never both see the same previous write).
    async fn record_write(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        write: &TagWrite,
    ) -> Result<Option<TagWrite>, StoreError>;
}

/// A ledger in this process (`ferry serve` without Redis, tests).
#[derive(Debug, Default)]
pub struct MemoryTagLedger {
    writes: Mutex<HashMap<(String, String, String), TagWrite>>,
}

#[async_trait::async_trait]
impl TagLedger for MemoryTagLedger {
    async fn last_write(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<TagWrite>, StoreError> {
        let writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        Ok(writes
            .get(&(registry.into(), repository.into(), tag.into()))
            .cloned())
    }

    async fn record_write(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        write: &TagWrite,
    ) -> Result<Option<TagWrite>, StoreError> {
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        Ok(writes.insert(
            (registry.into(), repository.into(), tag.into()),
            write.clone(),
        ))
    }
}

/// The ledger in the region's Redis/Valkey: one JSON string per tag,
/// `<prefix>:tagwrite:<registry>:<repository>:<tag>`, expiring after [`LEDGER_TTL`].
#[derive(Clone)]
pub struct RedisTagLedger {
    redis: RedisStore,
}

impl RedisTagLedger {
    /// On `redis` (the region's shared connection and key prefix).
    pub fn new(redis: &impl AsRef<RedisStore>) -> RedisTagLedger {
        RedisTagLedger {
            redis: redis.as_ref().clone(),
        }
    }

    fn key(&self, registry: &str, repository: &str, tag: &str) -> String {
        self.redis
            .key(&format!("tagwrite:{registry}:{repository}:{tag}"))
    }
}

#[async_trait::async_trait]
impl TagLedger for RedisTagLedger {
    async fn last_write(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<TagWrite>, StoreError> {
        let mut con = self.redis.connection();
        let raw: Option<String> = bounded(
            redis::cmd("GET")
                .arg(self.key(registry, repository, tag))
                .query_async(&mut con),
        )
        .await?;
        parse_write(raw, registry, repository, tag)
    }

    async fn record_write(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        write: &TagWrite,
    ) -> Result<Option<TagWrite>, StoreError> {
        let raw = serde_json::to_string(write).map_err(|e| {
            StoreError::Corrupt(format!(
                "tag write of {registry}/{repository}:{tag} does not serialize: {e}"
            ))
        })?;
        let mut con = self.redis.connection();
        let previous: Option<String> = bounded(
            redis::cmd("SET")
                .arg(self.key(registry, repository, tag))
                .arg(raw)
                .arg("PX")
                .arg(crate::clock::duration_ms(LEDGER_TTL))
                .arg("GET")
                .query_async(&mut con),
        )
        .await?;
        parse_write(previous, registry, repository, tag)
    }
}

/// A stored write, read back; one that does not parse is [`StoreError::Corrupt`] naming the tag.
fn parse_write(
    raw: Option<String>,
    registry: &str,
    repository: &str,
    tag: &str,
) -> Result<Option<TagWrite>, StoreError> {
    raw.map(|raw| {
        serde_json::from_str(&raw).map_err(|e| {
            StoreError::Corrupt(format!(
                "tag write of {registry}/{repository}:{tag} is not valid JSON: {e}"
            ))
        })
    })
    .transpose()
}
