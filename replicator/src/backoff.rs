//! Retry delays: capped exponential backoff with "equal jitter", computed by [`backon`] — the one
//! backoff of Ferry: queued jobs ([`RetryPolicy`] on the queue), registry requests, background
//! routines and forwarding between regions all draw their delays here.
//!
//! After the `n`-th failed attempt (`n >= 1`) the ceiling is `min(max, base * 2^(n-1))` and the
//! delay is drawn uniformly from `[ceiling / 2, ceiling]`.
//!
//! `backon` (the maintained successor of the unmaintained `backoff` crate, RUSTSEC-2025-0012)
//! yields delays `d` growing from `min_delay` by `factor` up to `max_delay`, and with jitter
//! `d + rand[0, 1) * d`. Asking it for `min_delay = base / 2` and `max_delay = max / 2` gives
//! exactly the range above; the `n`-th delay of its iterator is the delay after attempt `n`.
//! Jobs are retried by the queue at a stored time (`next_try_at_ms`), not by a retry loop around
//! a future, so only backon's delay schedule is used, not its `Retryable` driver.
//!
//! # Invariants
//! - never more than `policy.max` (nor less than half of it once the cap is reached);
//! - the lower bound of attempt `n + 1` equals the upper bound of attempt `n` until the cap, so
//!   delays never shrink from one attempt to the next;
//! - jitter spreads the retries of jobs that failed together (a registry outage) instead of
//!   hammering the registry in lockstep;
//! - no overflow or panic for any attempt number or policy (saturates at `max`).
//!
//! A pure function of its inputs and the seed, so both backends compute retry times the same way
//! and tests can seed the randomness.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Retry policy: capped, jittered exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

/// Beyond this many doublings every delay is capped anyway (`base * 2^64` exceeds any `Duration`).
const MAX_STEPS: u32 = 64;

/// The ceiling for the delay after failed attempt `attempt` (1-based): `min(max, base * 2^(attempt-1))`.
pub fn ceiling(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(63);
    let factor = 1u64 << exponent;
    let grown = u32::try_from(factor)
        .ok()
        .and_then(|f| policy.base.checked_mul(f))
        .unwrap_or(Duration::MAX);
    grown.min(policy.max)
}

/// The delay before the next try after failed attempt `attempt` (1-based), jittered from `seed`.
pub fn delay_seeded(policy: &RetryPolicy, attempt: u32, seed: u64) -> Duration {
    let base = policy.base.min(policy.max);
    let mut delays = ExponentialBuilder::new()
        .with_min_delay(base / 2)
        .with_max_delay(policy.max / 2)
        .with_factor(2.0)
        .with_jitter()
        .with_jitter_seed(seed)
        .without_max_times()
        .build();
    let steps = attempt.clamp(1, MAX_STEPS);
    delays
        .nth(steps as usize - 1)
        .unwrap_or(policy.max)
        .min(ceiling(policy, attempt))
}

/// [`delay_seeded`] with a random seed.
pub fn delay(policy: &RetryPolicy, attempt: u32) -> Duration {
    delay_seeded(policy, attempt, rand::random())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(base_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(base_ms),
            max: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let p = policy(100, 1_000);
        let got: Vec<u64> = (1..=7).map(|a| ceiling(&p, a).as_millis() as u64).collect();
        assert_eq!(got, [100, 200, 400, 800, 1_000, 1_000, 1_000]);
        // Attempt 0 (never happens: fail increments first) is treated like attempt 1.
        assert_eq!(ceiling(&p, 0), Duration::from_millis(100));
    }

    #[test]
    fn delays_stay_within_bounds_and_never_shrink() {
        let p = policy(50, 200);
        let mut prev_max = Duration::ZERO;
        for attempt in 1..=40 {
            let c = ceiling(&p, attempt);
            let samples: Vec<Duration> = (0..500u64)
                .map(|seed| delay_seeded(&p, attempt, seed))
                .collect();
            let lo = *samples.iter().min().unwrap();
            let hi = *samples.iter().max().unwrap();
            assert!(lo >= c / 2, "attempt {attempt}: {lo:?} below {:?}", c / 2);
            assert!(
                hi <= c && hi <= p.max,
                "attempt {attempt}: {hi:?} above {c:?}"
            );
            // Grows: every delay of this attempt is at least every delay of the previous one
            // (until the cap, where both ranges are [max/2, max]).
            if c < p.max {
                assert!(
                    lo >= prev_max,
                    "attempt {attempt}: {lo:?} < previous {prev_max:?}"
                );
            }
            prev_max = hi;
        }
    }

    #[test]
    fn delays_are_jittered() {
        let p = policy(1_000, 60_000);
        let samples: std::collections::BTreeSet<Duration> =
            (0..100u64).map(|seed| delay_seeded(&p, 3, seed)).collect();
        assert!(samples.len() > 50, "only {} distinct delays", samples.len());
        // The unseeded convenience function stays in bounds too.
        let d = delay(&p, 3);
        assert!(
            d >= Duration::from_secs(2) && d <= Duration::from_secs(4),
            "{d:?}"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_delay() {
        let p = policy(100, 10_000);
        assert_eq!(delay_seeded(&p, 4, 9), delay_seeded(&p, 4, 9));
    }

    #[test]
    fn extreme_policies_do_not_overflow() {
        let huge = RetryPolicy {
            max_attempts: u32::MAX,
            base: Duration::MAX,
            max: Duration::MAX,
        };
        for attempt in [0, 1, 2, 64, 1_000, u32::MAX] {
            let d = delay_seeded(&huge, attempt, 3);
            assert!(d >= Duration::MAX / 2 - Duration::from_secs(1));
        }
        let zero = policy(0, 0);
        assert_eq!(delay_seeded(&zero, 5, 3), Duration::ZERO);
        // base above max: capped from the first attempt.
        let inverted = policy(10_000, 100);
        assert!(delay_seeded(&inverted, 1, 3) <= Duration::from_millis(100));
    }
}
