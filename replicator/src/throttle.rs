//! Bandwidth limits (`speed` in a policy, KiB/s).
//!
//! A [`Throttle`] is shared by every transfer of one policy. Each chunk reserves its slot on a
//! virtual timeline (`next_free`), so concurrent transfers split the rate between them instead of
//! each getting it; a short burst allowance keeps small chunks from sleeping for microseconds.
//! Waiting is cancellable, so a stop request never waits behind a throttled stream.
//!
//! With a [`SharedSpeed`] (the region's Redis/Valkey), the timeline lives there instead, keyed by
//! policy, so all the policy's workers together stay within `speed`: a process reserves
//! [`quantum`]-sized grants (one round trip each, about 10 per second at most) and spends them
//! locally. If the store cannot be reached, the process falls back to its own timeline for that
//! grant (the limit then holds per process) and says so.
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How far ahead of the timeline a consumer may run before it sleeps.
const BURST: Duration = Duration::from_millis(200);

/// A policy's bandwidth timeline shared by the processes of a region.
#[async_trait::async_trait]
pub trait SharedSpeed: Send + Sync + std::fmt::Debug {
    /// Reserves `cost` of transfer time on `policy`'s timeline (an idle timeline banks at most
    /// `burst`); returns how long the caller must wait before using it.
    async fn reserve(
        &self,
        policy: &str,
        cost: Duration,
        burst: Duration,
    ) -> Result<Duration, String>;
}

/// Where a worker's throttles share their timelines, once known (set after the policies were
/// prepared; read on each grant).
pub type SharedSpeedSlot = Arc<OnceLock<Arc<dyn SharedSpeed>>>;

/// Bytes one shared grant covers: a tenth of a second of the rate, at least 64 KiB.
pub fn quantum(bytes_per_sec: u64) -> u64 {
    (bytes_per_sec / 10).max(64 * 1024)
}

#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: u64,
    next_free: Mutex<Instant>,
    /// The policy's timeline in the region's store, and the bytes granted but not yet spent.
    shared: Option<(String, SharedSpeedSlot)>,
    credit: Mutex<u64>,
}

impl Throttle {
    /// A throttle for `kib_per_sec` KiB/s; `None` when 0 (unlimited).
    pub fn from_kib_per_sec(kib_per_sec: u64) -> Option<Throttle> {
        (kib_per_sec > 0).then(|| Throttle {
            bytes_per_sec: kib_per_sec.saturating_mul(1024),
            next_free: Mutex::new(Instant::now()),
            shared: None,
            credit: Mutex::new(0),
        })
    }

    /// Shares the timeline of `policy` through `slot` once it holds a store.
    pub fn shared_as(mut self, policy: &str, slot: SharedSpeedSlot) -> Throttle {
        self.shared = Some((policy.to_string(), slot));
        self
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    fn cost(&self, bytes: u64) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64)
    }

    /// Accounts `bytes` and waits until the rate allows them. Returns false when cancelled.
    pub async fn consume(&self, bytes: u64, cancel: &CancellationToken) -> bool {
        let shared = self
            .shared
            .as_ref()
            .and_then(|(policy, slot)| Some((policy, slot.get()?)));
        match shared {
            Some((policy, store)) => {
                self.consume_shared(policy, store.as_ref(), bytes, cancel)
                    .await
            }
            None => self.consume_local(bytes, cancel).await,
        }
    }

    async fn consume_shared(
        &self,
        policy: &str,
        store: &dyn SharedSpeed,
        bytes: u64,
        cancel: &CancellationToken,
    ) -> bool {
        // Local consumers queue here while a grant is being waited for: they share the rate. A
        // stopped transfer leaves the queue at once.
        let mut credit = tokio::select! {
            c = self.credit.lock() => c,
            _ = cancel.cancelled() => return false,
        };
        while *credit < bytes {
            let grant = quantum(self.bytes_per_sec).max(bytes - *credit);
            match store.reserve(policy, self.cost(grant), BURST).await {
                Ok(wait) if !wait.is_zero() => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => return false,
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(policy, error = %e, "cannot reach the shared bandwidth limit; limiting this process alone");
                    if !self.consume_local(grant, cancel).await {
                        return false;
                    }
                }
            }
            *credit += grant;
        }
        *credit -= bytes;
        !cancel.is_cancelled()
    }

    async fn consume_local(&self, bytes: u64, cancel: &CancellationToken) -> bool {
        let deadline = {
            let mut next = self.next_free.lock().await;
            let now = Instant::now();
            // An idle throttle does not bank unused time beyond the burst allowance.
            let start = (*next).max(now.checked_sub(BURST).unwrap_or(now));
            *next = start + self.cost(bytes);
            *next
        };
        let wake = deadline.checked_sub(BURST).unwrap_or(deadline);
        if wake <= Instant::now() {
            return !cancel.is_cancelled();
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => true,
            _ = cancel.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate_across_consumers() {
        let t = std::sync::Arc::new(Throttle::from_kib_per_sec(100).unwrap());
        let cancel = CancellationToken::new();
        let start = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..4 {
            let (t, c) = (t.clone(), cancel.clone());
            handles.push(tokio::spawn(async move {
                for _ in 0..25 {
                    assert!(t.consume(1024, &c).await);
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        // 100 KiB at 100 KiB/s: one second, less the burst allowance.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(790) && took <= Duration::from_millis(1010),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_interrupts_a_long_wait() {
        let t = Throttle::from_kib_per_sec(1).unwrap();
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c2.cancel();
        });
        let start = Instant::now();
        assert!(!t.consume(10 * 1024 * 1024, &cancel).await);
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    /// A shared timeline that always asks for a long wait.
    #[derive(Debug)]
    struct Backlogged;

    #[async_trait::async_trait]
    impl SharedSpeed for Backlogged {
        async fn reserve(&self, _: &str, _: Duration, _: Duration) -> Result<Duration, String> {
            Ok(Duration::from_secs(60))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_transfer_leaves_the_queue_behind_another_jobs_shared_wait() {
        let slot = SharedSpeedSlot::default();
        slot.set(std::sync::Arc::new(Backlogged)).unwrap();
        let t = std::sync::Arc::new(
            Throttle::from_kib_per_sec(100)
                .unwrap()
                .shared_as("p", slot),
        );
        // Job A holds the grant queue, waiting out its (long) reservation; job B queues behind it.
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        let (ta, tb) = (t.clone(), t.clone());
        let job_a = tokio::spawn({
            let a = a.clone();
            async move { ta.consume(1024, &a).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let job_b = tokio::spawn({
            let b = b.clone();
            async move { tb.consume(1024, &b).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        b.cancel();
        assert!(!job_b.await.unwrap(), "the stopped job reports the stop");
        assert!(
            start.elapsed() < Duration::from_millis(10),
            "{:?}",
            start.elapsed()
        );
        assert!(
            !job_a.is_finished(),
            "the other job still waits for its grant"
        );
        job_a.abort();
    }

    #[test]
    fn zero_means_unlimited() {
        assert!(Throttle::from_kib_per_sec(0).is_none());
    }
}
