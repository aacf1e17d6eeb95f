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
use crate::replicate::drift::{diff_policy, DriftReport};
use crate::replicate::{is_referrer_tag, list_source, PreparedPolicy, SourceRepo};
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
    let now = now_ms();
    let id = new_job_id();
    let mut execution = Execution::new(&id, &policy.name, trigger, now);
    execution.attempts = 1;
    execution.dry_run = dry_run;
    let RunPlan {
        mut tasks,
        jobs,
        to_copy,
    } = plan_run(prepared, &id, now, dry_run).await?;
    if dry_run {
        settle_dry_run(&mut tasks, &to_copy);
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

/// What a run of one policy consists of, before anything is recorded.
struct RunPlan {
    /// One pending task per source tag and destination, in both directions.
    tasks: Vec<Task>,
    /// One job per source tag: (source registry if not the policy's, repository, tag).
    jobs: Vec<(Option<String>, String, String)>,
    /// Dry runs: ids of the tasks that would copy.
    to_copy: HashSet<String>,
}

/// Lists the source of each direction of `prepared` (both for a bidirectional policy) and plans
/// the tasks and jobs of run `id`; a dry run also diffs, to know what it would copy.
async fn plan_run(
    prepared: &PreparedPolicy,
    id: &str,
    now: i64,
    dry_run: bool,
) -> Result<RunPlan, RunError> {
    let policy = &prepared.policy;
    let source_err = |source| RunError::Source {
        policy: policy.name.clone(),
        source,
    };
    // A bidirectional policy runs both ways; each direction's tasks name the side it writes.
    let reversed = prepared.reversed();
    let mut plan = RunPlan {
        tasks: Vec::new(),
        jobs: Vec::new(),
        to_copy: HashSet::new(),
    };
    for direction in std::iter::once(prepared).chain(reversed.as_ref()) {
        let repos = list_source(&direction.src, &direction.policy, &direction.selector)
            .await
            .map_err(source_err)?;
        let refs = source_refs(&repos);
        for (repo, tag) in &refs {
            for dst in &direction.dsts {
                plan.tasks
                    .push(task(id, &policy.name, dst.name(), repo, tag, now));
            }
        }
        if dry_run {
            let report = diff_policy(direction).await.map_err(source_err)?;
            let bidirectional = direction.job_source().is_some();
            plan.to_copy.extend(would_copy(&report, bidirectional));
        }
        let source = direction.job_source();
        plan.jobs
            .extend(refs.into_iter().map(|(r, t)| (source.clone(), r, t)));
    }
    Ok(plan)
}

/// Every (repository, tag) of `repos` a run copies: referrer tags follow their subject.
fn source_refs(repos: &[SourceRepo]) -> Vec<(String, String)> {
    repos
        .iter()
        .flat_map(|r| {
            r.tags
                .iter()
                .filter(|t| !is_referrer_tag(t))
                .map(move |t| (r.repository.clone(), t.clone()))
        })
        .collect()
}

/// Ids of the tasks a dry run would copy according to `report`: missing tags, and different ones
/// unless the run is one direction of a bidirectional policy.
fn would_copy(report: &DriftReport, bidirectional: bool) -> impl Iterator<Item = String> + '_ {
    // A bidirectional run fills missing tags only (events settle the different ones).
    let different = if bidirectional {
        &[][..]
    } else {
        &report.different[..]
    };
    report
        .missing
        .iter()
        .chain(different.iter())
        .map(|d| Task::id_for(&d.destination, &d.repository, &d.tag))
}

/// Ends every task of a dry run at once, saying whether it would copy (its id is in `to_copy`).
fn settle_dry_run(tasks: &mut [Task], to_copy: &HashSet<String>) {
    for t in tasks {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::drift::Drift;

    const REFERRER: &str =
        "sha256-954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4.sig";

    fn drift(destination: &str, repository: &str, tag: &str) -> Drift {
        Drift {
            destination: destination.into(),
            repository: repository.into(),
            destination_repository: repository.into(),
            tag: tag.into(),
            source_digest: None,
            destination_digest: None,
        }
    }

    #[test]
    fn a_run_copies_every_source_tag_but_referrer_tags() {
        let repos = [SourceRepo {
            repository: "team/app".into(),
            tags: vec!["1.0".into(), REFERRER.into(), "latest".into()],
            all_tags: Vec::new(),
        }];
        assert_eq!(
            source_refs(&repos),
            [
                ("team/app".to_string(), "1.0".to_string()),
                ("team/app".to_string(), "latest".to_string())
            ]
        );
    }

    #[test]
    fn a_dry_run_would_copy_missing_tags_and_different_ones_unless_bidirectional() {
        let report = DriftReport {
            missing: vec![drift("eu", "app", "1.0")],
            different: vec![drift("eu", "app", "2.0")],
            ..Default::default()
        };
        let missing = Task::id_for("eu", "app", "1.0");
        let different = Task::id_for("eu", "app", "2.0");
        assert_eq!(
            would_copy(&report, false).collect::<Vec<_>>(),
            [missing.clone(), different]
        );
        assert_eq!(would_copy(&report, true).collect::<Vec<_>>(), [missing]);
    }

    #[test]
    fn a_dry_run_ends_every_task_saying_whether_it_would_copy() {
        let mut tasks = vec![
            task("run", "p", "eu", "app", "1.0", 1),
            task("run", "p", "eu", "app", "2.0", 1),
        ];
        let to_copy = HashSet::from([tasks[0].id.clone()]);
        settle_dry_run(&mut tasks, &to_copy);
        let outcomes: Vec<_> = tasks
            .iter()
            .map(|t| (t.state, t.outcome.as_deref(), t.ended_at_ms.is_some()))
            .collect();
        assert_eq!(
            outcomes,
            [
                (TaskState::Succeeded, Some("would copy"), true),
                (TaskState::Succeeded, Some("unchanged"), true)
            ]
        );
    }
}
