//! Recording jobs in the history: a job's own execution, or its tasks under the run it belongs to,
//! and the task record of each destination.
//!
//! Invariants: recording is best effort (a history error is logged, the job's outcome does not
//! depend on it); a failed attempt that will be retried leaves its run's tasks `pending`; whoever
//! writes a run's last open task ends the run ([`finish_run_if_done`]).
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{DestOutcome, LiveTask, Worker};
use crate::clock::now_ms;
use crate::replicate::delete::DeleteOutcome;
use crate::replicate::TagOutcome;
use crate::store::history::{Execution, ExecutionState, History, Origin, Task, TaskState};
use crate::store::queue::Job;
use crate::store::StoreError;
use crate::transfer::{StatsSnapshot, TransferError};

/// Replication lag (ms) of a copy caused by an event at `event_time_ms`; `None` when the job has
/// no event time.
pub(super) fn lag_since(event_time_ms: i64) -> Option<u64> {
    (event_time_ms > 0).then(|| now_ms().saturating_sub(event_time_ms).max(0) as u64)
}

/// How often a running job's progress (bytes and blobs per destination) is recorded.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A job running longer than this is recorded as `running` in the history.
const RUNNING_NOTE_AFTER: Duration = Duration::from_millis(500);

impl Worker {
    /// A job still running after [`RUNNING_NOTE_AFTER`] is recorded as running, then its progress
    /// every [`PROGRESS_EVERY`] until `finished` (quick jobs, most of them, only get their final
    /// record). Returns before the final record is written, which waits for it.
    pub(super) async fn note_progress(
        &self,
        job: &Job,
        live: &LiveTask,
        finished: &CancellationToken,
    ) {
        tokio::select! {
            () = tokio::time::sleep(RUNNING_NOTE_AFTER) => {}
            () = finished.cancelled() => return,
        }
        loop {
            let progress: Vec<Task> = crate::locks::lock(live)
                .as_ref()
                .map(|(dst, stats, started)| running_task(job, dst, *started, &stats.snapshot()))
                .into_iter()
                .collect();
            self.record(job, ExecutionState::Running, None, &progress)
                .await;
            tokio::select! {
                () = tokio::time::sleep(PROGRESS_EVERY) => {}
                () = finished.cancelled() => return,
            }
        }
    }

    /// Records the job's execution (its own, or its tasks under a run's execution). Best effort.
    pub(super) async fn record(
        &self,
        job: &Job,
        state: ExecutionState,
        next_try_at_ms: Option<i64>,
        tasks: &[Task],
    ) {
        self.record_with(job, state, next_try_at_ms, None, tasks)
            .await
    }

    pub(super) async fn record_with(
        &self,
        job: &Job,
        state: ExecutionState,
        next_try_at_ms: Option<i64>,
        error: Option<String>,
        tasks: &[Task],
    ) {
        let r = match &job.execution_id {
            Some(run) => self.record_run(run, job, state, error, tasks).await,
            None => {
                let mut e = Execution::new(&job.id, &job.policy, job.trigger, job.enqueued_at_ms);
                e.state = state;
                e.ended_at_ms = state.is_final().then(now_ms);
                e.attempts = job.attempt + 1;
                e.next_try_at_ms = next_try_at_ms;
                e.error = error;
                e.worker = Some(self.opts.consumer.clone());
                e.origin = Some(Origin {
                    event_id: job.event_id.clone(),
                    event_time_ms: job.event_time_ms,
                    kind: job.kind,
                    repository: job.repository.clone(),
                    reference: job.reference.clone(),
                    digest: job.digest.clone(),
                });
                self.history.record(&e, tasks).await
            }
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot record the execution in the history");
        }
    }

    /// Records a job's tasks under the manual or scheduled run it belongs to, and ends the run
    /// when this was its last open task.
    ///
    /// A failed attempt that will be retried leaves its tasks `pending` (a run is never shown as
    /// failed while retries run); a dead-lettered job fails every open task of its reference, also
    /// those of destinations it never reached.
    pub(super) async fn record_run(
        &self,
        run: &str,
        job: &Job,
        state: ExecutionState,
        error: Option<String>,
        tasks: &[Task],
    ) -> Result<(), StoreError> {
        let mut tasks = tasks.to_vec();
        match state {
            ExecutionState::Running if tasks.is_empty() => return Ok(()),
            ExecutionState::Running => {}
            ExecutionState::Retrying | ExecutionState::Queued => {
                for t in tasks.iter_mut().filter(|t| t.state != TaskState::Succeeded) {
                    t.state = TaskState::Pending;
                }
            }
            ExecutionState::Failed => {
                let recorded: std::collections::HashSet<String> =
                    tasks.iter().map(|t| t.id.clone()).collect();
                let open = self.history.tasks(run, usize::MAX).await?;
                for mut t in open.into_iter().filter(|t| {
                    !t.state.is_final()
                        && t.repository == job.repository
                        && t.reference == job.reference
                        && !recorded.contains(&t.id)
                }) {
                    t.state = TaskState::Failed;
                    t.attempts = job.attempt + 1;
                    t.error = error.clone();
                    t.outcome = Some("failed".into());
                    t.ended_at_ms = Some(now_ms());
                    tasks.push(t);
                }
            }
            ExecutionState::Succeeded | ExecutionState::Stopped => {}
        }
        self.history.record_tasks(run, &tasks).await?;
        if state.is_final() {
            finish_run_if_done(self.history.as_ref(), run).await?;
        }
        Ok(())
    }
}

/// Ends a running run whose tasks are all final: `failed` if any failed, else `succeeded`. Each
/// recorder calls it after its own write, so whoever writes the last open task sees it closed.
pub async fn finish_run_if_done(history: &dyn History, run: &str) -> Result<(), StoreError> {
    let Some(mut e) = history.execution(run).await? else {
        return Ok(());
    };
    let open = |s| e.counts.get(&s).copied().unwrap_or(0);
    if e.state != ExecutionState::Running || open(TaskState::Pending) + open(TaskState::Running) > 0
    {
        return Ok(());
    }
    e.state = if open(TaskState::Failed) > 0 {
        ExecutionState::Failed
    } else {
        ExecutionState::Succeeded
    };
    e.ended_at_ms = Some(now_ms());
    history.record(&e, &[]).await
}

/// The task record of `job` on `destination`.
pub(super) fn task_record(
    job: &Job,
    destination: &str,
    started_at_ms: i64,
    moved: &StatsSnapshot,
    result: &Result<DestOutcome, TransferError>,
) -> Task {
    let (state, digest, outcome, error) = match result {
        Ok(DestOutcome::Push(o)) => match o {
            TagOutcome::Copied { digest } => (TaskState::Succeeded, Some(digest.clone()), "copied".to_string(), None),
            TagOutcome::Unchanged { digest } => (TaskState::Succeeded, Some(digest.clone()), "unchanged".to_string(), None),
            TagOutcome::Kept { source_digest, destination_digest } => (
                TaskState::Succeeded,
                Some(source_digest.clone()),
                format!("kept: the destination holds {destination_digest} and the policy does not override"),
                None,
            ),
            TagOutcome::Skipped { reason } => (TaskState::Succeeded, None, format!("skipped: {reason}"), None),
            // A gate's decision: the task is done (not retried), its outcome says which gate and why.
            TagOutcome::Blocked { digest, gate, reason } => (TaskState::Succeeded, Some(digest.clone()), format!("blocked by {gate}: {reason}"), None),
            TagOutcome::Failed { error } => (TaskState::Failed, None, "failed".to_string(), Some(error.clone())),
        },
        Ok(DestOutcome::Delete(o)) => match o {
            DeleteOutcome::Deleted { digest } => (TaskState::Succeeded, Some(digest.clone()), "deleted".to_string(), None),
            DeleteOutcome::Kept { reason } => (TaskState::Succeeded, job.digest.clone(), format!("kept: {reason}"), None),
        },
        Err(TransferError::Cancelled) => (TaskState::Stopped, None, "stopped".to_string(), None),
        Err(e) => (TaskState::Failed, None, "failed".to_string(), Some(e.to_string())),
    };
    let copied = matches!(result, Ok(DestOutcome::Push(TagOutcome::Copied { .. })));
    Task {
        state,
        digest,
        outcome: Some(outcome),
        ended_at_ms: Some(now_ms()),
        error,
        lag_ms: if copied {
            lag_since(job.event_time_ms)
        } else {
            None
        },
        ..running_task(job, destination, started_at_ms, moved)
    }
}

/// The task record of `job` on `destination` while it runs, with what it moved so far.
pub(super) fn running_task(
    job: &Job,
    destination: &str,
    started_at_ms: i64,
    moved: &StatsSnapshot,
) -> Task {
    Task {
        id: Task::id_for(destination, &job.repository, &job.reference),
        execution_id: job.execution().to_string(),
        policy: job.policy.clone(),
        kind: job.kind,
        repository: job.repository.clone(),
        reference: job.reference.clone(),
        destination: destination.to_string(),
        state: TaskState::Running,
        attempts: job.attempt + 1,
        digest: None,
        outcome: None,
        blobs_copied: moved.blobs_copied,
        blobs_mounted: moved.blobs_mounted,
        blobs_skipped: moved.blobs_skipped,
        bytes: moved.bytes_copied,
        bytes_total: moved.bytes_planned,
        started_at_ms,
        ended_at_ms: None,
        error: None,
        lag_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn job() -> Job {
        Job {
            digest: Some("sha256:d".into()),
            ..Job::new("p", EventKind::Push, "library/app", "v1")
        }
    }

    fn moved() -> StatsSnapshot {
        StatsSnapshot {
            blobs_copied: 2,
            bytes_copied: 10,
            ..StatsSnapshot::default()
        }
    }

    fn record(result: Result<DestOutcome, TransferError>) -> Task {
        task_record(&job(), "dst", 1, &moved(), &result)
    }

    #[test]
    fn a_copied_tag_is_a_succeeded_task_with_its_digest_and_what_moved() {
        let t = record(Ok(DestOutcome::Push(TagOutcome::Copied {
            digest: "sha256:c".into(),
        })));
        assert_eq!(t.state, TaskState::Succeeded);
        assert_eq!(t.digest.as_deref(), Some("sha256:c"));
        assert_eq!(t.outcome.as_deref(), Some("copied"));
        assert_eq!((t.blobs_copied, t.bytes), (2, 10));
        assert_eq!((t.destination.as_str(), t.started_at_ms), ("dst", 1));
        assert!(t.ended_at_ms.is_some());
    }

    #[test]
    fn a_tag_a_gate_held_back_is_a_finished_task_naming_the_gate_the_reason_and_the_digest() {
        let t = record(Ok(DestOutcome::Push(TagOutcome::Blocked {
            digest: "sha256:b".into(),
            gate: crate::replicate::gates::Gate::OnlySigned,
            reason: "no signature for sha256:b".into(),
        })));
        // A decision, not a failure: nothing to retry.
        assert_eq!(t.state, TaskState::Succeeded);
        assert_eq!(t.digest.as_deref(), Some("sha256:b"));
        assert_eq!(
            t.outcome.as_deref(),
            Some("blocked by only_signed: no signature for sha256:b")
        );
        assert_eq!(t.error, None);
    }

    #[test]
    fn only_a_copy_caused_by_an_event_records_a_lag() {
        let copied = DestOutcome::Push(TagOutcome::Copied {
            digest: "sha256:c".into(),
        });
        let with_event = Job {
            event_time_ms: now_ms() - 1_000,
            ..job()
        };
        let t = task_record(&with_event, "dst", 1, &moved(), &Ok(copied));
        assert!(t.lag_ms.is_some_and(|l| l >= 1_000));
        let unchanged = DestOutcome::Push(TagOutcome::Unchanged {
            digest: "sha256:c".into(),
        });
        let t = task_record(&with_event, "dst", 1, &moved(), &Ok(unchanged));
        assert_eq!(t.lag_ms, None);
        assert_eq!(lag_since(0), None);
    }

    #[test]
    fn a_kept_delete_succeeds_and_names_the_deleted_digest_and_why() {
        let t = record(Ok(DestOutcome::Delete(DeleteOutcome::Kept {
            reason: "gone".into(),
        })));
        assert_eq!(t.state, TaskState::Succeeded);
        assert_eq!(t.digest.as_deref(), Some("sha256:d"));
        assert_eq!(t.outcome.as_deref(), Some("kept: gone"));
    }

    #[test]
    fn a_cancelled_destination_is_a_stopped_task() {
        let t = record(Err(TransferError::Cancelled));
        assert_eq!(t.state, TaskState::Stopped);
        assert_eq!(t.outcome.as_deref(), Some("stopped"));
        assert_eq!(t.error, None);
    }

    #[test]
    fn a_failed_destination_is_a_failed_task_with_the_error() {
        let t = record(Err(TransferError::Policy("bad".into())));
        assert_eq!(t.state, TaskState::Failed);
        assert_eq!(t.outcome.as_deref(), Some("failed"));
        assert!(t.error.is_some_and(|e| e.contains("bad")));
    }

    #[test]
    fn a_running_task_counts_its_attempt_and_its_progress() {
        let t = running_task(
            &Job {
                attempt: 2,
                ..job()
            },
            "dst",
            1,
            &moved(),
        );
        assert_eq!(t.state, TaskState::Running);
        assert_eq!(t.attempts, 3);
        assert_eq!(t.id, Task::id_for("dst", "library/app", "v1"));
        assert_eq!((t.outcome, t.ended_at_ms), (None, None));
    }
}
