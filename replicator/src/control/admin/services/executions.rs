//! The `Executions` service (start and stop runs, list executions and their tasks, watch one as it
//! progresses) and the `Drift` report of a policy.
//!
//! Invariants: only an enabled, unpaused policy can be started; list pages are bounded (at most
//! `MAX_PAGE`, filters applied over a bounded number of history pages); a watch stream fails up
//! front when the execution is unknown, sends only the tasks that changed, and is owned by the
//! server's task tracker, ending with the client, the execution or the server.
use std::collections::HashMap;
use std::time::Duration;

use ferry_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use super::{convert, ok, Admin, AdminError, BoxStream, Result, MAX_PAGE};
use crate::control::runs::{start_run, stop_run, RunError, StopError};
use crate::replicate::drift::diff_policy;
use crate::replicate::PreparedPolicy;
use crate::store::history::{Execution, ExecutionQuery, Task};
use crate::store::StartedBy;

impl Admin {
    async fn execution(&self, id: &str) -> std::result::Result<Execution, AdminError> {
        if id.is_empty() {
            return Err(AdminError::required("id"));
        }
        self.state
            .history
            .execution(id)
            .await?
            .ok_or_else(|| AdminError::NotFound {
                kind: "execution",
                name: id.to_string(),
                known: Vec::new(),
            })
    }
}

#[tonic::async_trait]
impl pb::executions_server::Executions for Admin {
    type WatchExecutionStream = BoxStream<pb::ExecutionProgress>;

    async fn start_execution(
        &self,
        req: Request<pb::StartExecutionRequest>,
    ) -> Result<pb::Execution> {
        let r = req.get_ref();
        let (policy, snapshot) = self.policy(&r.policy).await?;
        let policy = &policy;
        if !policy.enabled {
            return Err(AdminError::FailedPrecondition(format!(
                "policy {:?} is disabled; enable it (`\"enabled\": true`) before running it",
                policy.name
            ))
            .into());
        }
        if snapshot.paused.contains(&policy.name) {
            return Err(AdminError::FailedPrecondition(format!(
                "policy {:?} is paused; resume it before running it",
                policy.name
            ))
            .into());
        }
        let prepared = PreparedPolicy::new(policy, &snapshot.clients(&self.state)?)
            .map_err(|e| AdminError::FailedPrecondition(e.to_string()))?;
        let execution = start_run(
            &prepared,
            StartedBy::Manual,
            r.dry_run,
            self.state.queue.as_ref(),
            self.state.history.as_ref(),
        )
        .await
        .map_err(|e| match e {
            RunError::Queue(q) => AdminError::from(q),
            other => AdminError::FailedPrecondition(other.to_string()),
        })?;
        ok(convert::execution(&execution))
    }

    async fn stop_execution(
        &self,
        req: Request<pb::StopExecutionRequest>,
    ) -> Result<pb::Execution> {
        let id = &req.get_ref().id;
        if id.is_empty() {
            return Err(AdminError::required("id").into());
        }
        let e = stop_run(self.state.history.as_ref(), id)
            .await
            .map_err(|e| match e {
                StopError::NotFound(name) => AdminError::NotFound {
                    kind: "execution",
                    name,
                    known: Vec::new(),
                },
                StopError::NotARun { .. } => AdminError::FailedPrecondition(e.to_string()),
                StopError::Queue(q) => AdminError::from(q),
            })?;
        ok(convert::execution(&e))
    }

    async fn list_executions(
        &self,
        req: Request<pb::ListExecutionsRequest>,
    ) -> Result<pb::ListExecutionsResponse> {
        let r = req.get_ref();
        let limit = match r.limit {
            0 => 50,
            n => (n as usize).min(MAX_PAGE),
        };
        let mut query = ExecutionQuery {
            policy: (!r.policy.is_empty()).then(|| r.policy.clone()),
            before_ms: (r.before_ms > 0).then_some(r.before_ms),
            limit,
        };
        let wanted = |e: &pb::Execution| {
            (r.state == 0 || e.state == r.state) && (r.trigger == 0 || e.trigger == r.trigger)
        };
        // State and trigger filters apply after reading: read pages until the page is full or
        // the history ends (bounded, so a rare state cannot make one call scan everything).
        let mut out = Vec::new();
        let mut exhausted = false;
        for _ in 0..20 {
            let page = self
                .state
                .history
                .executions(&query)
                .await
                .map_err(AdminError::from)?;
            exhausted = page.len() < query.limit;
            if let Some(last) = page.last() {
                query.before_ms = Some(last.started_at_ms);
            }
            out.extend(page.iter().map(convert::execution).filter(wanted));
            if exhausted || out.len() >= limit {
                break;
            }
        }
        out.truncate(limit);
        let next_before_ms = if exhausted && out.len() < limit {
            0
        } else {
            out.last()
                .map_or(query.before_ms.unwrap_or(0), |e| e.started_at_ms)
        };
        ok(pb::ListExecutionsResponse {
            executions: out,
            next_before_ms,
        })
    }

    async fn get_execution(&self, req: Request<pb::GetExecutionRequest>) -> Result<pb::Execution> {
        ok(convert::execution(
            &self.execution(&req.get_ref().id).await?,
        ))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<pb::ListTasksResponse> {
        let r = req.get_ref();
        self.execution(&r.execution_id).await?;
        let limit = match r.limit {
            0 => MAX_PAGE,
            n => n as usize,
        };
        let tasks = self
            .state
            .history
            .tasks(&r.execution_id, usize::MAX)
            .await
            .map_err(AdminError::from)?;
        ok(pb::ListTasksResponse {
            tasks: tasks
                .iter()
                .map(convert::task)
                .filter(|t| r.state == 0 || t.state == r.state)
                .take(limit)
                .collect(),
        })
    }

    async fn watch_execution(
        &self,
        req: Request<pb::WatchExecutionRequest>,
    ) -> Result<Self::WatchExecutionStream> {
        let r = req.into_inner();
        // Fails now (NOT_FOUND, UNAVAILABLE) rather than as the stream's first item.
        self.execution(&r.id).await?;
        let interval = Duration::from_millis(match r.interval_ms {
            0 => 500,
            n => u64::from(n).max(100),
        });
        let (tx, rx) = mpsc::channel(4);
        let state = self.state.clone();
        let stop = self.state.shutdown.clone();
        // Owned by the stream: it ends when the client goes away (send fails), the execution ends,
        // or the server shuts down.
        self.state.tasks.spawn(async move {
            let mut last: HashMap<String, Task> = HashMap::new();
            loop {
                let snapshot = async {
                    let e = state.history.execution(&r.id).await?;
                    let tasks = state.history.tasks(&r.id, usize::MAX).await?;
                    Ok::<_, crate::store::StoreError>((e, tasks))
                };
                let item = match snapshot.await {
                    Ok((Some(e), tasks)) => {
                        let changed: Vec<pb::Task> = tasks
                            .iter()
                            .filter(|t| !t.state.is_final() || last.get(&t.id) != Some(t))
                            .map(convert::task)
                            .collect();
                        last = tasks.into_iter().map(|t| (t.id.clone(), t)).collect();
                        let done = e.state.is_final();
                        Ok((
                            pb::ExecutionProgress {
                                execution: Some(convert::execution(&e)),
                                tasks: changed,
                            },
                            done,
                        ))
                    }
                    Ok((None, _)) => Err(Status::from(AdminError::NotFound {
                        kind: "execution",
                        name: r.id.clone(),
                        known: Vec::new(),
                    })),
                    Err(e) => Err(Status::from(AdminError::from(e))),
                };
                let done = match item {
                    Ok((progress, done)) => tx.send(Ok(progress)).await.is_err() || done,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        true
                    }
                };
                if done {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.cancelled() => return,
                    _ = tx.closed() => return,
                }
            }
        });
        ok(Box::pin(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl pb::drift_server::Drift for Admin {
    type DiffStream = BoxStream<pb::DriftEntry>;

    async fn diff(&self, req: Request<pb::DiffRequest>) -> Result<Self::DiffStream> {
        let (policy, snapshot) = self.policy(&req.get_ref().policy).await?;
        let policy = &policy;
        let prepared = PreparedPolicy::new(policy, &snapshot.clients(&self.state)?)
            .map_err(|e| AdminError::FailedPrecondition(e.to_string()))?;
        let report = diff_policy(&prepared).await.map_err(|e| {
            AdminError::FailedPrecondition(format!("cannot diff policy {:?}: {e}", policy.name))
        })?;
        let entries: Vec<_> = report
            .missing
            .iter()
            .map(|d| convert::drift(pb::DriftKind::Missing, d))
            .chain(
                report
                    .different
                    .iter()
                    .map(|d| convert::drift(pb::DriftKind::Different, d)),
            )
            .chain(
                report
                    .extra
                    .iter()
                    .map(|d| convert::drift(pb::DriftKind::Extra, d)),
            )
            .map(Ok)
            .collect();
        ok(Box::pin(tokio_stream::iter(entries)))
    }
}
