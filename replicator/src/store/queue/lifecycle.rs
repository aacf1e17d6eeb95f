//! Job state transitions shared by every backend, so they cannot drift apart: what enqueue fills
//! in, what a failure records and decides, what a dead-letter retry resets.
//!
//! # Invariants
//! - `attempt` counts finished attempts: `fail` increments it; `release` and lease expiry do not.
//! - A job with `attempt >= max_attempts` after a failure, or a non-retryable failure, is dead.
//! - `next_try_at_ms` is a Unix time taken from the clock of the process that called `fail`.

use super::{FailOutcome, Job};
use crate::backoff::{self, RetryPolicy};

/// A fresh job id: 128 random bits as 32 hex digits.
pub fn new_job_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Fills `id` and `enqueued_at_ms` when the caller left them empty/zero.
pub fn prepare_enqueue(mut job: Job, now_ms: i64) -> Job {
    if job.id.is_empty() {
        job.id = new_job_id();
    }
    if job.enqueued_at_ms == 0 {
        job.enqueued_at_ms = now_ms;
    }
    job
}

/// Records a failed attempt on `job` and decides its fate: the returned job is what the backend
/// stores (in the retry schedule or the dead-letter list).
pub fn record_failure(
    mut job: Job,
    error: &str,
    retryable: bool,
    policy: &RetryPolicy,
    now_ms: i64,
) -> (Job, FailOutcome) {
    job.attempt = job.attempt.saturating_add(1);
    job.last_error = Some(error.to_owned());
    if !retryable || job.attempt >= policy.max_attempts {
        job.next_try_at_ms = 0;
        return (job, FailOutcome::DeadLettered);
    }
    let delay = backoff::delay(policy, job.attempt);
    let delay_ms = crate::clock::duration_ms(delay);
    job.next_try_at_ms = now_ms.saturating_add(delay_ms);
    let next_try_at_ms = job.next_try_at_ms;
    (job, FailOutcome::Retry { next_try_at_ms })
}

/// A dead letter going back to the queue: a fresh start (attempts, error and schedule reset),
/// same id and enqueue time.
pub fn reset_dead_letter(mut job: Job) -> Job {
    job.attempt = 0;
    job.last_error = None;
    job.next_try_at_ms = 0;
    job
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::event::EventKind;

    fn job() -> Job {
        Job {
            event_time_ms: 1,
            ..Job::new("p", EventKind::Push, "r", "t")
        }
    }

    #[test]
    fn enqueue_fills_only_missing_fields() {
        let j = prepare_enqueue(job(), 42);
        assert_eq!(j.id.len(), 32);
        assert_eq!(j.enqueued_at_ms, 42);
        let kept = prepare_enqueue(
            Job {
                id: "x".into(),
                enqueued_at_ms: 7,
                ..job()
            },
            42,
        );
        assert_eq!((kept.id.as_str(), kept.enqueued_at_ms), ("x", 7));
        assert_ne!(new_job_id(), new_job_id());
    }

    #[test]
    fn failures_retry_until_exhausted() {
        let policy = RetryPolicy {
            max_attempts: 2,
            base: Duration::from_millis(100),
            max: Duration::from_millis(100),
        };
        let (j, out) = record_failure(job(), "e1", true, &policy, 1_000);
        assert_eq!(j.attempt, 1);
        assert_eq!(j.last_error.as_deref(), Some("e1"));
        assert!(
            matches!(out, FailOutcome::Retry { next_try_at_ms } if (1_050..=1_100).contains(&next_try_at_ms))
        );
        assert_eq!(
            out,
            FailOutcome::Retry {
                next_try_at_ms: j.next_try_at_ms
            }
        );
        let (j, out) = record_failure(j, "e2", true, &policy, 2_000);
        assert_eq!((j.attempt, out), (2, FailOutcome::DeadLettered));
        let (j, out) = record_failure(job(), "bad", false, &policy, 0);
        assert_eq!((j.attempt, out), (1, FailOutcome::DeadLettered));
        let j = reset_dead_letter(j);
        assert_eq!((j.attempt, j.last_error, j.next_try_at_ms), (0, None, 0));
    }
}
