//! The stop watch: a job of a manual or scheduled run checks whether its run was stopped.
//!
//! Invariants: a stop takes effect within [`STOP_POLL`] plus the time to cancel the transfer; a
//! history error counts as "not stopped" (the job runs); the watch never returns on its own.
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::store::history::ExecutionState;
use crate::store::queue::Job;

/// How often a run's job checks whether the run was stopped (a stop takes effect within this plus
/// the time to cancel the transfer).
const STOP_POLL: Duration = Duration::from_millis(500);

impl Worker {
    /// Whether the run `run` was stopped (a history error counts as "not stopped": the job runs).
    pub(super) async fn run_is_stopped(&self, run: &str) -> bool {
        matches!(
            self.history.execution(run).await,
            Ok(Some(e)) if e.state == ExecutionState::Stopped
        )
    }

    /// For a run's job: checks every [`STOP_POLL`] whether the run was stopped, and if so cancels
    /// the job (`run_stopped` tells why). Never returns.
    pub(super) async fn watch_run_stop(
        &self,
        job: &Job,
        job_cancel: &CancellationToken,
        run_stopped: &CancellationToken,
    ) {
        if let Some(run) = &job.execution_id {
            loop {
                tokio::time::sleep(STOP_POLL).await;
                if self.run_is_stopped(run).await {
                    tracing::info!(execution = %run, "run stopped: cancelling the job");
                    run_stopped.cancel();
                    job_cancel.cancel();
                    break;
                }
            }
        }
        std::future::pending().await
    }
}
