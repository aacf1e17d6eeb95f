//! When a registry may be sent the next request: pauses after a `429`/`Retry-After` or a nearly
//! exhausted quota, shared by every worker of a region, and an optional request rate.
//!
//! A [`Gate`] belongs to one [`RegistryClient`](super::RegistryClient). Before each request the
//! client waits at the gate ([`Gate::wait`]): until the registry's pause ends, then for its turn
//! under `requests_per_second`. A `429` (or a `RateLimit-Remaining` at or below
//! [`low_quota_reserve`]) pauses the registry ([`Gate::pause`]) — in this process at once, and
//! through the [`SharedGate`] (Redis) for every other process, which reads the shared pause at
//! most every [`SHARED_REFRESH`]. So one worker's `429` slows every worker of the region.
//!
//! Invariants: a pause only ever grows (the later end wins); a shared store that cannot be read
//! or written never blocks or fails a request (the local pause still applies); waiting is bounded
//! by the pause itself.
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::clock::{duration_ms, now_ms};

/// How often a process re-reads a registry's shared pause.
pub const SHARED_REFRESH: Duration = Duration::from_millis(200);
/// How long a nearly exhausted quota pauses a registry before a request tries again.
pub const LOW_QUOTA_PAUSE: Duration = Duration::from_secs(60);

/// A store of registry pauses shared by the processes of a region.
#[async_trait::async_trait]
pub trait SharedGate: Send + Sync + std::fmt::Debug {
    /// When `registry`'s pause ends (Unix ms); 0 or past: not paused.
    async fn paused_until(&self, registry: &str) -> Result<i64, String>;
    /// Pauses `registry` until `until_ms` unless a later pause is already set.
    async fn pause(&self, registry: &str, until_ms: i64) -> Result<(), String>;
}

/// Requests left at or below which a registry is paused: 2% of the announced limit, at least 1.
pub fn low_quota_reserve(limit: Option<u64>) -> u64 {
    limit.map_or(1, |l| (l / 50).max(1))
}

/// The gate of one registry (see the module docs).
#[derive(Debug, Default)]
pub struct Gate {
    shared: OnceLock<Arc<dyn SharedGate>>,
    /// Local view of the pause end (Unix ms).
    until_ms: AtomicI64,
    /// When the shared pause was last read (Unix ms).
    checked_ms: AtomicI64,
    /// Minimum spacing of request starts, and the next free start.
    pace: Option<(Duration, tokio::sync::Mutex<tokio::time::Instant>)>,
}

impl Gate {
    /// A gate limiting request starts to `requests_per_second` (`None`: unlimited).
    pub fn new(requests_per_second: Option<f64>) -> Gate {
        let pace = requests_per_second
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| {
                (
                    Duration::from_secs_f64(1.0 / r),
                    tokio::sync::Mutex::new(tokio::time::Instant::now()),
                )
            });
        Gate {
            pace,
            ..Gate::default()
        }
    }

    /// Shares pauses through `shared` from now on (set once; later calls are ignored).
    pub fn share(&self, shared: Arc<dyn SharedGate>) {
        let _ = self.shared.set(shared);
    }

    /// When the registry's pause ends as this process knows it (Unix ms).
    pub fn paused_until(&self) -> i64 {
        self.until_ms.load(Ordering::Relaxed)
    }

    /// Waits until `registry` may be sent a request.
    pub async fn wait(&self, registry: &str) {
        let mut announced = false;
        loop {
            let now = now_ms();
            if let Some(shared) = self.shared.get() {
                if now - self.checked_ms.load(Ordering::Relaxed) >= duration_ms(SHARED_REFRESH) {
                    self.checked_ms.store(now, Ordering::Relaxed);
                    match shared.paused_until(registry).await {
                        Ok(until) => {
                            self.until_ms.fetch_max(until, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::debug!(registry, error = %e, "cannot read the shared rate-limit pause")
                        }
                    }
                }
            }
            let until = self.until_ms.load(Ordering::Relaxed);
            if until <= now {
                break;
            }
            if !announced {
                announced = true;
                tracing::info!(
                    registry,
                    wait_ms = until - now,
                    "registry paused (rate limit); waiting before the next request"
                );
            }
            let left = Duration::from_millis(u64::try_from(until - now).unwrap_or(0));
            tokio::time::sleep(left.min(SHARED_REFRESH)).await;
        }
        if let Some((interval, next)) = &self.pace {
            let start = {
                let mut next = next.lock().await;
                let start = (*next).max(tokio::time::Instant::now());
                *next = start + *interval;
                start
            };
            tokio::time::sleep_until(start).await;
        }
    }

    /// Pauses `registry` until `until_ms` here and, when shared, everywhere.
    pub async fn pause(&self, registry: &str, until_ms: i64, reason: &str) {
        let before = self.until_ms.fetch_max(until_ms, Ordering::Relaxed);
        if before >= until_ms {
            return;
        }
        tracing::warn!(
            registry,
            pause_ms = until_ms - now_ms(),
            reason,
            "pausing requests to the registry"
        );
        if let Some(shared) = self.shared.get() {
            if let Err(e) = shared.pause(registry, until_ms).await {
                tracing::warn!(registry, error = %e, "cannot share the rate-limit pause; other workers will find out by themselves");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Store(std::sync::Mutex<i64>);

    #[async_trait::async_trait]
    impl SharedGate for Store {
        async fn paused_until(&self, _: &str) -> Result<i64, String> {
            Ok(*self.0.lock().unwrap())
        }
        async fn pause(&self, _: &str, until_ms: i64) -> Result<(), String> {
            let mut v = self.0.lock().unwrap();
            *v = (*v).max(until_ms);
            Ok(())
        }
    }

    #[test]
    fn reserve_is_two_percent_at_least_one() {
        assert_eq!(low_quota_reserve(Some(100)), 2);
        assert_eq!(low_quota_reserve(Some(10)), 1);
        assert_eq!(low_quota_reserve(Some(5000)), 100);
        assert_eq!(low_quota_reserve(None), 1);
    }

    #[tokio::test]
    async fn one_gates_pause_holds_the_other_gate() {
        let store: Arc<dyn SharedGate> = Arc::new(Store::default());
        let (one, two) = (Gate::new(None), Gate::new(None));
        one.share(store.clone());
        two.share(store);
        // Let `two` read the (empty) shared state first, so its next read is a refresh.
        two.wait("r").await;
        let paused_until = now_ms() + 1500;
        one.pause("r", paused_until, "test").await;
        // A pause reaches the other gate at its next refresh: `two` then waits it out, however
        // late this task wakes (a loaded machine only makes the wait shorter, never early).
        tokio::time::sleep(SHARED_REFRESH).await;
        two.wait("r").await;
        let early_ms = paused_until - now_ms();
        assert!(
            early_ms <= 0,
            "the other gate let a request go {early_ms} ms before the pause ended"
        );
        // A shorter pause does not shorten a longer one.
        let until = one.paused_until();
        one.pause("r", until - 500, "test").await;
        assert_eq!(one.paused_until(), until);
    }

    #[tokio::test]
    async fn requests_are_paced() {
        let gate = Gate::new(Some(20.0));
        let started = std::time::Instant::now();
        for _ in 0..5 {
            gate.wait("r").await;
        }
        // The first goes at once, then one every 50 ms.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(190), "{took:?}");
    }
}
