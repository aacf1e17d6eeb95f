//! Settling a leased job with the queue: ack, fail (retry or dead letter), or release.
//!
//! Invariants: a job is acked only after every destination confirmed it (or when its run was
//! stopped); a job whose lease was lost is not touched (another worker owns it); a job interrupted
//! by shutdown is released without counting an attempt; any other failure goes to `fail`, which
//! retries it with backoff or dead-letters it.
use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;

use super::record::lag_since;
use super::{JobError, JobOutcome, Worker};
use crate::event::{duration_ms, now_ms};
use crate::queue::{FailOutcome, Lease};
use crate::sync::TagOutcome;
use crate::transfer::TransferError;

/// How a leased job ended with the queue.
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

impl Worker {
    /// Tells the queue how the job ended; `None` when the lease was lost (the job is another
    /// worker's now).
    pub(super) async fn settle(
        &self,
        lease: &Lease,
        result: Result<JobOutcome, JobError>,
        job_cancel: &CancellationToken,
        lease_lost: &CancellationToken,
        run_stopped: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Option<Settled> {
        let job = &lease.job;
        let (r, settled) = match result {
            Ok(outcome) => {
                self.stats.jobs_succeeded.fetch_add(1, Ordering::Relaxed);
                self.metrics.job(&job.policy, job.kind, "succeeded");
                if matches!(&outcome, JobOutcome::Pushed(v) if !v.is_empty() && v.iter().all(|(_, o)| matches!(o, TagOutcome::Unchanged { .. })))
                {
                    // A duplicate event, or the echo of Ferry's own write: counted, nothing moved.
                    self.metrics.noop(&job.policy);
                }
                let copied = matches!(&outcome, JobOutcome::Pushed(v) if v.iter().any(|(_, o)| matches!(o, TagOutcome::Copied { .. })));
                if copied {
                    if let Some(lag_ms) = lag_since(job.event_time_ms) {
                        self.metrics.lag(lag_ms);
                    }
                }
                tracing::info!(outcome = ?outcome, "job done");
                (self.queue.ack(lease).await, Settled::Succeeded)
            }
            Err(_) if lease_lost.is_cancelled() => {
                // Another worker owns it now; touching it would race that worker.
                return None;
            }
            Err(_) if run_stopped.is_cancelled() => {
                self.metrics.job(&job.policy, job.kind, "stopped");
                tracing::info!("job stopped with its run");
                (self.queue.ack(lease).await, Settled::Stopped)
            }
            Err(e)
                if job_cancel.is_cancelled()
                    || (shutdown.is_cancelled()
                        && matches!(
                            e,
                            JobError::Transfer {
                                source: TransferError::Cancelled,
                                ..
                            }
                        )) =>
            {
                self.stats.jobs_released.fetch_add(1, Ordering::Relaxed);
                self.metrics.job(&job.policy, job.kind, "released");
                tracing::info!("job interrupted by shutdown: released for another worker");
                (self.queue.release(lease).await, Settled::Released)
            }
            Err(e) => {
                self.stats.jobs_failed.fetch_add(1, Ordering::Relaxed);
                let retryable = e.is_retryable();
                let r = self.queue.fail(lease, &e.to_string(), retryable).await;
                let (outcome, settled) = match &r {
                    Ok(FailOutcome::DeadLettered) => ("dead_lettered", Settled::DeadLettered),
                    Ok(FailOutcome::Retry { next_try_at_ms }) => (
                        "failed",
                        Settled::Retrying {
                            next_try_at_ms: *next_try_at_ms,
                        },
                    ),
                    // Not rescheduled: the lease expires and the job runs again.
                    Err(_) => (
                        "failed",
                        Settled::Retrying {
                            next_try_at_ms: now_ms().saturating_add(duration_ms(self.opts.lease)),
                        },
                    ),
                };
                self.metrics.job(&job.policy, job.kind, outcome);
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
