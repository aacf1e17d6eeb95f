//! Bandwidth limits (`speed` in a policy, KiB/s).
//!
//! A [`Throttle`] is shared by every transfer of one policy. Each chunk reserves its slot on a
//! virtual timeline (`next_free`), so concurrent transfers split the rate between them instead of
//! each getting it; a short burst allowance keeps small chunks from sleeping for microseconds.
//! Waiting is cancellable, so a stop request never waits behind a throttled stream.
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How far ahead of the timeline a consumer may run before it sleeps.
const BURST: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: u64,
    next_free: Mutex<Instant>,
}

impl Throttle {
    /// A throttle for `kib_per_sec` KiB/s; `None` when 0 (unlimited).
    pub fn from_kib_per_sec(kib_per_sec: u64) -> Option<Throttle> {
        (kib_per_sec > 0).then(|| Throttle {
            bytes_per_sec: kib_per_sec.saturating_mul(1024),
            next_free: Mutex::new(Instant::now()),
        })
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Accounts `bytes` and waits until the rate allows them. Returns false when cancelled.
    pub async fn consume(&self, bytes: u64, cancel: &CancellationToken) -> bool {
        let deadline = {
            let mut next = self.next_free.lock().await;
            let now = Instant::now();
            // An idle throttle does not bank unused time beyond the burst allowance.
            let start = (*next).max(now.checked_sub(BURST).unwrap_or(now));
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
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

    #[test]
    fn zero_means_unlimited() {
        assert!(Throttle::from_kib_per_sec(0).is_none());
    }
}
