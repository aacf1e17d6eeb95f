//! The pause cache: which policies are paused, read from the queue at most every [`PAUSED_TTL`].
//!
//! Invariants: a pause takes effect on every worker within [`PAUSED_TTL`] (the admin API's
//! PausePolicy waits that long before it answers); a queue error counts as "not paused", so the
//! job runs.
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::queue::Pauses;

/// How long a worker trusts its list of paused policies: a pause takes effect on every worker
/// within this time (the admin API's PausePolicy answers only after it).
pub const PAUSED_TTL: Duration = Duration::from_secs(1);

/// The paused policies as last read from the queue, and when.
#[derive(Debug, Default)]
pub(super) struct PauseCache {
    read: Mutex<Option<(Instant, BTreeSet<String>)>>,
}

impl PauseCache {
    /// Whether `policy` is paused, from a list read from `queue` at most every [`PAUSED_TTL`] (a
    /// queue error counts as "not paused": the job runs).
    pub(super) async fn is_paused(&self, queue: &dyn Pauses, policy: &str) -> bool {
        let fresh = {
            let cached = crate::locks::lock(&self.read);
            cached
                .as_ref()
                .filter(|(at, _)| at.elapsed() < PAUSED_TTL)
                .map(|(_, set)| set.contains(policy))
        };
        if let Some(paused) = fresh {
            return paused;
        }
        match queue.paused().await {
            Ok(set) => {
                let paused = set.contains(policy);
                *crate::locks::lock(&self.read) = Some((Instant::now(), set));
                paused
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the paused policies; running the job");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::RetryPolicy;
    use crate::store::queue::MemoryQueue;

    #[tokio::test(start_paused = true)]
    async fn a_pause_is_seen_once_the_cached_list_expires() {
        let queue = MemoryQueue::new(RetryPolicy::default());
        let cache = PauseCache::default();
        assert!(!cache.is_paused(&queue, "p").await);
        queue.set_paused("p", true).await.unwrap();
        // Still trusting the list read a moment ago.
        tokio::time::advance(PAUSED_TTL / 2).await;
        assert!(!cache.is_paused(&queue, "p").await);
        tokio::time::advance(PAUSED_TTL / 2).await;
        assert!(cache.is_paused(&queue, "p").await);
        assert!(!cache.is_paused(&queue, "other").await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resume_is_seen_once_the_cached_list_expires() {
        let queue = MemoryQueue::new(RetryPolicy::default());
        queue.set_paused("p", true).await.unwrap();
        let cache = PauseCache::default();
        assert!(cache.is_paused(&queue, "p").await);
        queue.set_paused("p", false).await.unwrap();
        assert!(cache.is_paused(&queue, "p").await);
        tokio::time::advance(PAUSED_TTL).await;
        assert!(!cache.is_paused(&queue, "p").await);
    }
}
