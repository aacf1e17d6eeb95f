//! Manual and scheduled runs: a full reconciliation of one policy as an execution whose tasks
//! (one per source tag and destination) are ordinary queue jobs, so every worker of the region
//! shares the work.
//!
//! # Invariants
//! - The execution and all its tasks (state `pending`) are recorded **before** the first job is
//!   enqueued, so the task counts always have their final total and a run can never look finished
//!   while jobs are still being enqueued.
//! - A run's jobs carry its execution id: they never collapse into an event's pending job (or
//!   another run's), and workers record their tasks under the run
//!   ([`crate::worker::finish_run_if_done`] ends it when the last task is final).
//! - A dry run only plans: it diffs, records what each task would do, and ends at once; nothing
//!   is enqueued and no registry is written to.
use std::collections::HashSet;

use crate::clock::now_ms;
use crate::event::EventKind;
use crate::oci::RegistryError;
use crate::replicate::drift::diff_policy;
use crate::replicate::{is_referrer_tag, list_source, PreparedPolicy};
use crate::store::history::{Execution, ExecutionState, History, Task, TaskState};
use crate::store::queue::{new_job_id, Job, JobQueue};
use crate::store::{StartedBy, StoreError};

/// Tasks recorded per history call (a run may have many thousands).
const RECORD_CHUNK: usize = 500;

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("policy {policy}: cannot list the source: {source}")]
    Source {
        policy: String,
        #[source]
        source: RegistryError,
    },
    #[error(transparent)]
    Queue(#[from] StoreError),
}

fn task(run: &str, policy: &str, destination: &str, repository: &str, tag: &str, now: i64) -> Task {
    Task {
        id: Task::id_for(destination, repository, tag),
        execution_id: run.to_string(),
        policy: policy.to_string(),
        kind: EventKind::Push,
        repository: repository.to_string(),
        reference: tag.to_string(),
        destination: destination.to_string(),
        state: TaskState::Pending,
        attempts: 0,
        digest: None,
        outcome: None,
        blobs_copied: 0,
        blobs_mounted: 0,
        blobs_skipped: 0,
        bytes: 0,
        bytes_total: 0,
        started_at_ms: now,
        ended_at_ms: None,
        error: None,
        lag_ms: None,
    }
}

/// Starts a run of `prepared`'s policy and returns its execution as recorded.
pub async fn start_run(
    prepared: &PreparedPolicy,
    trigger: StartedBy,
    dry_run: bool,
    queue: &dyn JobQueue,
    history: &dyn History,
) -> Result<Execution, RunError> {
    let policy = &prepared.policy;
    let source_err = |source| RunError::Source {
        policy: policy.name.clone(),
        source,
    };
    let now = now_ms();
    let id = new_job_id();
    let mut execution = Execution::new(&id, &policy.name, trigger, now);
    execution.attempts = 1;
    execution.dry_run = dry_run;
    // A bidirectional policy runs both ways; each direction's tasks name the side it writes.
    let reversed = prepared.reversed();
    let mut tasks = Vec::new();
    let mut jobs: Vec<(Option<String>, String, String)> = Vec::new();
    let mut to_copy: HashSet<String> = HashSet::new();
    for direction in std::iter::once(prepared).chain(reversed.as_ref()) {
        let repos = list_source(&direction.src, &direction.policy, &direction.selector)
            .await
            .map_err(source_err)?;
        let refs: Vec<(String, String)> = repos
            .iter()
            .flat_map(|r| {
                r.tags
                    .iter()
                    .filter(|t| !is_referrer_tag(t))
                    .map(move |t| (r.repository.clone(), t.clone()))
            })
            .collect();
        for (repo, tag) in &refs {
            for dst in &direction.dsts {
                tasks.push(task(&id, &policy.name, dst.name(), repo, tag, now));
            }
        }
        if dry_run {
            let report = diff_policy(direction).await.map_err(source_err)?;
            // A bidirectional run fills missing tags only (events settle the different ones).
            let different = if direction.job_source().is_some() {
                &[][..]
            } else {
                &report.different[..]
            };
            to_copy.extend(
                report
                    .missing
                    .iter()
                    .chain(different.iter())
                    .map(|d| Task::id_for(&d.destination, &d.repository, &d.tag)),
            );
        }
        let source = direction.job_source();
        jobs.extend(refs.into_iter().map(|(r, t)| (source.clone(), r, t)));
    }
    if dry_run {
        for t in &mut tasks {
            t.state = TaskState::Succeeded;
            t.ended_at_ms = Some(now_ms());
            t.outcome = Some(
                if to_copy.contains(&t.id) {
                    "would copy"
                } else {
                    "unchanged"
                }
                .into(),
            );
        }
    }
    if dry_run || tasks.is_empty() {
        execution.state = ExecutionState::Succeeded;
        execution.ended_at_ms = Some(now_ms());
    }
    let mut chunks = tasks.chunks(RECORD_CHUNK);
    history
        .record(&execution, chunks.next().unwrap_or_default())
        .await?;
    for chunk in chunks {
        history.record_tasks(&id, chunk).await?;
    }
    if !execution.state.is_final() {
        for (source, repo, tag) in jobs {
            let job = Job {
                event_time_ms: now,
                trigger,
                execution_id: Some(id.clone()),
                source,
                ..Job::new(&policy.name, EventKind::Push, &repo, &tag)
            };
            queue.enqueue(job).await?;
        }
    }
    Ok(history.execution(&id).await?.unwrap_or(execution))
}

/// Why a run could not be stopped.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("no execution {0:?}")]
    NotFound(String),
    #[error("execution {id} is event-driven (a single job that retries on its own); only manual and scheduled runs can be stopped")]
    NotARun { id: String },
    #[error(transparent)]
    Queue(#[from] StoreError),
}

/// Stops a run: the execution ends `stopped` now and its open tasks with it; workers skip its
/// queued jobs and cancel its running ones (they check every half second). Stopping a finished
/// execution changes nothing and returns it as it is.
pub async fn stop_run(history: &dyn History, id: &str) -> Result<Execution, StopError> {
    let mut e = history
        .execution(id)
        .await?
        .ok_or_else(|| StopError::NotFound(id.to_string()))?;
    if e.state.is_final() {
        return Ok(e);
    }
    if !matches!(e.trigger, StartedBy::Manual | StartedBy::Scheduled) {
        return Err(StopError::NotARun { id: id.to_string() });
    }
    let now = now_ms();
    e.state = ExecutionState::Stopped;
    e.ended_at_ms = Some(now);
    let open: Vec<Task> = history
        .tasks(id, usize::MAX)
        .await?
        .into_iter()
        .filter(|t| !t.state.is_final())
        .map(|mut t| {
            t.state = TaskState::Stopped;
            t.outcome = Some("stopped".into());
            t.ended_at_ms = Some(now);
            t
        })
        .collect();
    history.record(&e, &[]).await?;
    for chunk in open.chunks(RECORD_CHUNK) {
        history.record_tasks(id, chunk).await?;
    }
    Ok(history.execution(id).await?.unwrap_or(e))
}
