//! The tag ledger of bidirectional policies: the last write of each tag of the registries a
//! region writes (digest, event time, region), which `regions::conflict` compares to decide which
//! of two concurrent pushes wins. This module only stores writes; the rule is the conflict
//! module's.
//!
//! Invariants: a write is remembered for [`LEDGER_TTL`] (as long as an event time is believed) and
//! then forgotten; a stored write that does not parse is [`StoreError::Corrupt`] naming the tag.
//! Redis layout: one JSON string per tag, `{p}:tagwrite:{registry}:{repository}:{tag}`, with a
//! PX expiry of [`LEDGER_TTL`].
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

    async fn record_write(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        write: &TagWrite,
    ) -> Result<(), StoreError>;
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
    ) -> Result<(), StoreError> {
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        writes.insert(
            (registry.into(), repository.into(), tag.into()),
            write.clone(),
        );
        Ok(())
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
        raw.map(|raw| {
            serde_json::from_str(&raw).map_err(|e| {
                StoreError::Corrupt(format!(
                    "tag write of {registry}/{repository}:{tag} is not valid JSON: {e}"
                ))
            })
        })
        .transpose()
    }

    async fn record_write(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        write: &TagWrite,
    ) -> Result<(), StoreError> {
        let raw = serde_json::to_string(write).map_err(|e| {
            StoreError::Corrupt(format!(
                "tag write of {registry}/{repository}:{tag} does not serialize: {e}"
            ))
        })?;
        let mut con = self.redis.connection();
        bounded(
            redis::cmd("SET")
                .arg(self.key(registry, repository, tag))
                .arg(raw)
                .arg("PX")
                .arg(crate::clock::duration_ms(LEDGER_TTL))
                .query_async::<()>(&mut con),
        )
        .await
    }
}
