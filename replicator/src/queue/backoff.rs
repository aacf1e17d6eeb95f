//! Retry delays: capped exponential backoff with "equal jitter".
//!
//! After the `n`-th failed attempt (`n >= 1`) the ceiling is `min(max, base * 2^(n-1))` and the
//! delay is drawn uniformly from `[ceiling / 2, ceiling]`.
//!
//! # Invariants
//! - never more than `policy.max` (nor less than half of it once the cap is reached);
//! - the lower bound of attempt `n + 1` equals the upper bound of attempt `n` until the cap, so
//!   delays never shrink from one attempt to the next;
//! - jitter spreads the retries of jobs that failed together (a registry outage) instead of
//!   hammering the registry in lockstep;
//! - no overflow for any attempt number or policy (saturates at `max`).
//!
//! A pure function of its inputs and the random source, so both backends compute retry times the
//! same way and tests can seed the randomness.

use std::time::Duration;

use rand::Rng;

use super::RetryPolicy;

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

/// The delay before the next try after failed attempt `attempt` (1-based), drawn from `rng`.
pub fn delay_with<R: Rng + ?Sized>(policy: &RetryPolicy, attempt: u32, rng: &mut R) -> Duration {
    let ceiling = ceiling(policy, attempt);
    let half = ceiling / 2;
    let spread = ceiling - half;
    // Nanosecond resolution is pointless here and u64 nanos overflow after ~584 years: jitter in
    // microseconds, saturating.
    let spread_us = u64::try_from(spread.as_micros()).unwrap_or(u64::MAX);
    let jitter = Duration::from_micros(rng.random_range(0..=spread_us));
    half.saturating_add(jitter).min(ceiling)
}

/// [`delay_with`] using the thread-local random generator.
pub fn delay(policy: &RetryPolicy, attempt: u32) -> Duration {
    delay_with(policy, attempt, &mut rand::rng())
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

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
        let mut rng = StdRng::seed_from_u64(7);
        let mut prev_max = Duration::ZERO;
        for attempt in 1..=40 {
            let c = ceiling(&p, attempt);
            let samples: Vec<Duration> = (0..500)
                .map(|_| delay_with(&p, attempt, &mut rng))
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
        let mut rng = StdRng::seed_from_u64(1);
        let samples: std::collections::BTreeSet<Duration> =
            (0..100).map(|_| delay_with(&p, 3, &mut rng)).collect();
        assert!(samples.len() > 50, "only {} distinct delays", samples.len());
        // The unseeded convenience function stays in bounds too.
        let d = delay(&p, 3);
        assert!(
            d >= Duration::from_secs(2) && d <= Duration::from_secs(4),
            "{d:?}"
        );
    }

    #[test]
    fn extreme_policies_do_not_overflow() {
        let huge = RetryPolicy {
            max_attempts: u32::MAX,
            base: Duration::MAX,
            max: Duration::MAX,
        };
        let mut rng = StdRng::seed_from_u64(3);
        for attempt in [0, 1, 2, 64, 1_000, u32::MAX] {
            let d = delay_with(&huge, attempt, &mut rng);
            assert!(d >= Duration::MAX / 2 - Duration::from_secs(1));
        }
        let zero = policy(0, 0);
        assert_eq!(delay_with(&zero, 5, &mut rng), Duration::ZERO);
        // base above max: capped from the first attempt.
        let inverted = policy(10_000, 100);
        assert!(delay_with(&inverted, 1, &mut rng) <= Duration::from_millis(100));
    }
}
