//! A region's shared state as one daemon sees it: the job queue, the execution history, the
//! policies stored through the admin API, the tag ledger of bidirectional policies and the limits
//! the region's processes share — all in Redis/Valkey, or all in this process.
//!
//! Invariant: every part of a daemon reads and writes the same [`Backend`]; a Redis backend is
//! shared with every other process of the region that uses the same URL and key prefix.
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::RetryPolicy;
use crate::catalog::{MemoryPolicyStore, PolicyStore, RedisPolicyStore};
use crate::replicate::Registries;
use crate::runtime::shutdown_signal;
use crate::store::history::{MemoryHistory, RedisHistory, Retention};
use crate::store::ledger::{MemoryTagLedger, RedisTagLedger, TagLedger};
use crate::store::limits::RedisLimits;
use crate::store::outbox::{Outbox, RedisOutbox};
use crate::store::queue::{MemoryQueue, RedisQueue};
use crate::store::redis::{connect_waiting, ConnectError, RedisStore, RedisTarget};
use crate::store::Store;

/// Pause between attempts to reach Redis at startup.
const CONNECT_RETRY: Duration = Duration::from_secs(2);

/// Where a daemon keeps the region's shared state.
#[derive(Clone)]
pub enum QueueOptions {
    /// Redis/Valkey, shared with the region's other processes (`--redis`, `--redis-url-file` or
    /// `FERRY_REDIS_URL`): every daemon but `ferry serve` without a URL.
    Redis {
        target: Box<RedisTarget>,
        /// `--queue-prefix`: agents and workers of a region must use the same.
        prefix: String,
        /// `--redis-connect-timeout`: Redis may start after Ferry.
        connect_timeout: Duration,
        retention: Retention,
    },
    /// In this process only (`ferry serve` without a Redis URL): lost on exit.
    InProcess { retention: Retention },
}

/// The region's shared state.
#[derive(Clone)]
pub struct Backend {
    /// Jobs, dead letters, blob leases, pauses, upload checkpoints and history: each part takes
    /// the views it uses.
    pub store: Store,
    /// Policies and registries stored through the admin API.
    pub policies: Arc<dyn PolicyStore>,
    /// Last writes of tags, for bidirectional conflicts (shared by the region's writers).
    pub tag_ledger: Arc<dyn TagLedger>,
    /// Events waiting for other regions; `None` in process (nothing is forwarded).
    pub outbox: Option<Arc<dyn Outbox>>,
    /// Limits shared by the region's processes (registry pauses after 429s and low quotas, policy
    /// bandwidth); `None` in process.
    pub limits: Option<Arc<RedisLimits>>,
}

impl Backend {
    /// Connects (waiting for Redis up to its connect timeout) or creates the in-process state.
    pub async fn open(options: &QueueOptions) -> Result<Backend, ConnectError> {
        match options {
            QueueOptions::Redis {
                target,
                prefix,
                connect_timeout,
                retention,
            } => {
                let open = || async {
                    let redis = RedisStore::connect_to(target, prefix).await?;
                    let queue = RedisQueue::open(&redis, RetryPolicy::default()).await?;
                    Ok((redis, queue))
                };
                let (redis, queue) = connect_waiting(
                    target,
                    *connect_timeout,
                    CONNECT_RETRY,
                    shutdown_signal(),
                    open,
                )
                .await?;
                Ok(Backend {
                    store: Store::new(
                        Arc::new(queue),
                        Arc::new(RedisHistory::new(&redis, *retention)),
                    ),
                    policies: Arc::new(RedisPolicyStore::new(&redis)),
                    tag_ledger: Arc::new(RedisTagLedger::new(&redis)),
                    outbox: Some(Arc::new(RedisOutbox::new(&redis))),
                    limits: Some(Arc::new(RedisLimits::new(&redis))),
                })
            }
            QueueOptions::InProcess { retention } => Ok(Backend {
                store: Store::new(
                    Arc::new(MemoryQueue::new(RetryPolicy::default())),
                    Arc::new(MemoryHistory::new(*retention)),
                ),
                policies: Arc::new(MemoryPolicyStore::default()),
                tag_ledger: Arc::new(MemoryTagLedger::default()),
                outbox: None,
                limits: None,
            }),
        }
    }

    /// `registries` sharing this backend's registry pauses (a 429 seen by one process pauses the
    /// registry for all of the region's).
    pub fn share_pauses(&self, registries: Registries) -> Registries {
        match &self.limits {
            Some(l) => registries.with_shared_gate(l.clone()),
            None => registries,
        }
    }

    /// Names the kind of backend in logs.
    pub fn kind(&self) -> &'static str {
        if self.limits.is_some() {
            "redis"
        } else {
            "in-process"
        }
    }
}
