//! Settling a leased job with the queue: ack, fail (retry or dead letter), or release.
//!
//! Invariants: a job is acked only after every destination confirmed it (or when its run was
//! stopped); a job whose lease was lost is not touched (another worker owns it); a job interrupted
//! by shutdown is released without counting an attempt; any other failure goes to `fail`, which
//! retries it with backoff or dead-letters it. [`verdict`] and [`after_fail`] are pure; `settle`
//! only carries them out.
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::record::lag_since;
use super::{JobError, JobOutcome, JobSignals, Worker};
use crate::clock::{duration_ms, now_ms};
use crate::event::EventKind;
use crate::store::history::ExecutionState;
use crate::store::queue::{dead_letter_key, FailOutcome, Job, Lease, DEAD_LETTER_MEMO};
use crate::store::StoreError;
use crate::transfer::TransferError;

/// How a leased job ended with the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    Succeeded,
    /// Its run was stopped: acked without finishing.
    Stopped,
    Retrying {
        next_try_at_ms: i64,
    },
    DeadLettered,
    Released,
}

impl Settled {
    /// The state its execution is recorded in, and when it is tried next.
    pub(super) fn recorded_as(self) -> (ExecutionState, Option<i64>) {
        match self {
            Settled::Succeeded => (ExecutionState::Succeeded, None),
            Settled::Retrying { next_try_at_ms } => {
                (ExecutionState::Retrying, Some(next_try_at_ms))
            }
            Settled::DeadLettered => (ExecutionState::Failed, None),
            Settled::Released => (ExecutionState::Queued, None),
            Settled::Stopped => (ExecutionState::Stopped, None),
        }
    }
}

/// What became of the job's interruptions when it ended.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Interrupts {
    /// Another worker reclaimed the lease.
    pub lease_lost: bool,
    /// The job's run was stopped.
    pub run_stopped: bool,
    /// The job was cancelled (grace period over, lease lost or run stopped).
    pub cancelled: bool,
    /// The worker is shutting down.
    pub shutting_down: bool,
}

/// What to tell the queue about a job's result.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Every destination confirmed: ack.
    Ack(JobOutcome),
    /// The lease was lost: touch nothing (another worker owns the job).
    Leave,
    /// Its run was stopped: ack without finishing.
    AckStopped,
    /// Interrupted by shutdown: release without counting an attempt.
    Release,
    /// Failed: retry with backoff or dead-letter, as the error says.
    Fail(JobError),
}

/// Decides how a job's `result` settles, given what interrupted it.
pub(super) fn verdict(result: Result<JobOutcome, JobError>, i: Interrupts) -> Verdict {
    match result {
        Ok(outcome) => Verdict::Ack(outcome),
        Err(_) if i.lease_lost => Verdict::Leave,
        Err(_) if i.run_stopped => Verdict::AckStopped,
        Err(e)
            if i.cancelled
                || (i.shutting_down
                    && matches!(
                        e,
                        JobError::Transfer {
                            source: TransferError::Cancelled,
                            ..
                        }
                    )) =>
        {
            Verdict::Release
        }
        Err(e) => Verdict::Fail(e),
    }
}

/// The `ferry_jobs` outcome and the settled state after `fail` answered `r`; a job the queue could
/// not reschedule runs again when its lease (`lease`) expires.
pub(super) fn after_fail(
    r: &Result<FailOutcome, StoreError>,
    lease: Duration,
    now_ms: i64,
) -> (&'static str, Settled) {
    match r {
        Ok(FailOutcome::DeadLettered) => ("dead_lettered", Settled::DeadLettered),
        Ok(FailOutcome::Retry { next_try_at_ms }) => (
            "failed",
            Settled::Retrying {
                next_try_at_ms: *next_try_at_ms,
            },
        ),
        Err(_) => (
            "failed",
            Settled::Retrying {
                next_try_at_ms: now_ms.saturating_add(duration_ms(lease)),
            },
        ),
    }
}

impl Worker {
    /// Tells the queue how the job ended; `None` when the lease was lost (the job is another
    /// worker's now).
    pub(super) async fn settle(
        &self,
        lease: &Lease,
        result: Result<JobOutcome, JobError>,
        signals: &JobSignals,
    ) -> Option<Settled> {
        let job = &lease.job;
        let (r, settled) = match verdict(result, signals.interrupts()) {
            Verdict::Ack(outcome) => {
                self.stats.jobs_succeeded.fetch_add(1, Ordering::Relaxed);
                self.metrics.job(&job.policy, job.kind, "succeeded");
                if outcome.is_noop() {
                    // A duplicate event, or the echo of Ferry's own write: counted, nothing moved.
                    self.metrics.noop(&job.policy);
                }
                if outcome.copied() {
                    if let Some(lag_ms) = lag_since(job.event_time_ms) {
                        self.metrics.lag(lag_ms);
                    }
                }
                tracing::info!(outcome = ?outcome, "job done");
                (self.queue.ack(lease).await, Settled::Succeeded)
            }
            // Touching it would race the worker that owns it now.
            Verdict::Leave => return None,
            Verdict::AckStopped => {
                self.metrics.job(&job.policy, job.kind, "stopped");
                tracing::info!("job stopped with its run");
                (self.queue.ack(lease).await, Settled::Stopped)
            }
            Verdict::Release => {
                self.stats.jobs_released.fetch_add(1, Ordering::Relaxed);
                self.metrics.job(&job.policy, job.kind, "released");
                tracing::info!("job interrupted by shutdown: released for another worker");
                (self.queue.release(lease).await, Settled::Released)
            }
            Verdict::Fail(e) => {
                self.stats.jobs_failed.fetch_add(1, Ordering::Relaxed);
                let retryable = e.is_retryable();
                let r = self.queue.fail(lease, &e.to_string(), retryable).await;
                let (outcome, settled) = after_fail(&r, self.opts.lease, now_ms());
                self.metrics.job(&job.policy, job.kind, outcome);
                if matches!(settled, Settled::DeadLettered) {
                    self.remember_dead_letter(job).await;
                }
                match &r {
                    Ok(outcome) => tracing::warn!(error = %e, retryable, ?outcome, "job failed"),
                    Err(qe) => {
                        tracing::error!(error = %e, queue_error = %qe, "job failed and could not be rescheduled; its lease will expire and it will run again")
                    }
                }
                (r.map(|_| ()), settled)
            }
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot settle job with the queue; it will be handed out again when its lease expires");
        }
        Some(settled)
    }
}

impl Worker {
    /// Remembers in the region that a push of a tag was dead-lettered, so the safety net does not
    /// enqueue it again for [`DEAD_LETTER_MEMO`] (each time, a new dead letter). Best effort.
    async fn remember_dead_letter(&self, job: &Job) {
        if job.kind != EventKind::Push || crate::oci::digest::parse(&job.reference).is_some() {
            return;
        }
        let key = dead_letter_key(&job.policy, &job.repository, &job.reference);
        if let Err(e) = self
            .blob_leases
            .leases
            .lease_blob("ferry", &key, &self.opts.consumer, DEAD_LETTER_MEMO)
            .await
        {
            tracing::warn!(error = %e, "cannot remember the dead letter; the safety net may enqueue the tag again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::TagOutcome;

    fn done() -> JobOutcome {
        JobOutcome::Pushed(vec![(
            "dst".into(),
            TagOutcome::Copied {
                digest: "sha256:a".into(),
            },
        )])
    }

    fn cancelled() -> JobError {
        JobError::Transfer {
            destination: "dst".into(),
            source: TransferError::Cancelled,
        }
    }

    fn broken() -> JobError {
        JobError::UnknownPolicy("p".into())
    }

    #[test]
    fn a_confirmed_job_is_acked_whatever_interrupted_it_afterwards() {
        let all = Interrupts {
            lease_lost: true,
            run_stopped: true,
            cancelled: true,
            shutting_down: true,
        };
        assert!(matches!(verdict(Ok(done()), all), Verdict::Ack(_)));
    }

    #[test]
    fn a_job_whose_lease_was_lost_is_left_to_its_new_owner() {
        let i = Interrupts {
            lease_lost: true,
            run_stopped: true,
            cancelled: true,
            ..Interrupts::default()
        };
        assert!(matches!(verdict(Err(cancelled()), i), Verdict::Leave));
    }

    #[test]
    fn a_job_of_a_stopped_run_is_acked_as_stopped() {
        let i = Interrupts {
            run_stopped: true,
            cancelled: true,
            ..Interrupts::default()
        };
        assert!(matches!(verdict(Err(cancelled()), i), Verdict::AckStopped));
    }

    #[test]
    fn a_job_cancelled_or_interrupted_by_shutdown_is_released() {
        let hard = Interrupts {
            cancelled: true,
            ..Interrupts::default()
        };
        assert!(matches!(verdict(Err(broken()), hard), Verdict::Release));
        let shutdown = Interrupts {
            shutting_down: true,
            ..Interrupts::default()
        };
        assert!(matches!(
            verdict(Err(cancelled()), shutdown),
            Verdict::Release
        ));
    }

    #[test]
    fn a_failure_during_shutdown_that_is_not_a_cancellation_still_counts_as_a_failure() {
        let shutdown = Interrupts {
            shutting_down: true,
            ..Interrupts::default()
        };
        assert!(matches!(
            verdict(Err(broken()), shutdown),
            Verdict::Fail(JobError::UnknownPolicy(_))
        ));
        assert!(matches!(
            verdict(Err(broken()), Interrupts::default()),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn a_failed_job_is_retried_when_the_queue_says_so_and_otherwise_dead_lettered() {
        let lease = Duration::from_secs(30);
        assert_eq!(
            after_fail(&Ok(FailOutcome::DeadLettered), lease, 0),
            ("dead_lettered", Settled::DeadLettered)
        );
        assert_eq!(
            after_fail(&Ok(FailOutcome::Retry { next_try_at_ms: 7 }), lease, 0),
            ("failed", Settled::Retrying { next_try_at_ms: 7 })
        );
    }

    #[test]
    fn a_failed_job_the_queue_could_not_reschedule_retries_when_its_lease_expires() {
        let unreachable = Err(StoreError::Corrupt("down".into()));
        assert_eq!(
            after_fail(&unreachable, Duration::from_secs(30), 1_000),
            (
                "failed",
                Settled::Retrying {
                    next_try_at_ms: 31_000
                }
            )
        );
    }

    #[test]
    fn each_settlement_is_recorded_in_its_execution_state() {
        assert_eq!(
            Settled::Retrying { next_try_at_ms: 5 }.recorded_as(),
            (ExecutionState::Retrying, Some(5))
        );
        assert_eq!(
            Settled::DeadLettered.recorded_as(),
            (ExecutionState::Failed, None)
        );
        assert_eq!(
            Settled::Released.recorded_as(),
            (ExecutionState::Queued, None)
        );
        assert_eq!(
            Settled::Stopped.recorded_as(),
            (ExecutionState::Stopped, None)
        );
        assert_eq!(
            Settled::Succeeded.recorded_as(),
            (ExecutionState::Succeeded, None)
        );
    }
}
