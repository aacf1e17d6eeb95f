//! The `ferry.v1` admin services over an [`AdminState`]. Read paths answer from the config (policies,
//! registries) and the region's queue and history (executions, tasks, dead letters, workers), so
//! every instance answers for the whole region.
use std::collections::HashMap;
use std::pin::Pin;
use std::time::{Duration, Instant};

use ferry_proto::v1 as pb;
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert;
use super::status::AdminError;
use super::AdminState;
use crate::diff::diff_policy;
use crate::history::{Execution, ExecutionQuery, Task, Trigger};
use crate::runs::{start_run, stop_run, RunError, StopError};
use crate::sync::PreparedPolicy;

type Result<T> = std::result::Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

/// Longest page of executions or tasks one call returns.
const MAX_PAGE: usize = 1000;

/// The admin services (one value implements all of them; clones share the state).
#[derive(Clone)]
pub struct Admin {
    pub(super) state: std::sync::Arc<AdminState>,
}

fn ok<T>(v: T) -> Result<T> {
    Ok(Response::new(v))
}

fn not_implemented(what: &str) -> Status {
    AdminError::Unimplemented(format!(
        "{what} is not available yet in this version: policies and registries come from the config file, and runs from events, the safety net or `ferry sync`"
    ))
    .into()
}

impl Admin {
    fn policy(&self, name: &str) -> std::result::Result<&crate::policy::Policy, AdminError> {
        if name.is_empty() {
            return Err(AdminError::required("name"));
        }
        self.state
            .config
            .policy(name)
            .ok_or_else(|| AdminError::NotFound {
                kind: "policy",
                name: name.to_string(),
                known: self
                    .state
                    .config
                    .policies
                    .iter()
                    .map(|p| p.name.clone())
                    .collect(),
            })
    }

    fn registry(
        &self,
        name: &str,
    ) -> std::result::Result<&crate::config::RegistryConfig, AdminError> {
        if name.is_empty() {
            return Err(AdminError::required("name"));
        }
        self.state
            .config
            .registries
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| AdminError::NotFound {
                kind: "registry",
                name: name.to_string(),
                known: self
                    .state
                    .config
                    .registries
                    .iter()
                    .map(|r| r.name.clone())
                    .collect(),
            })
    }

    /// A policy as the API shows it: its definition plus whether it is paused.
    async fn view(
        &self,
        policy: &crate::policy::Policy,
    ) -> std::result::Result<pb::Policy, AdminError> {
        let paused = self.state.queue.paused().await?;
        Ok(pb::Policy {
            paused: paused.contains(&policy.name),
            ..convert::policy(policy)
        })
    }

    /// Pauses or resumes a policy; resuming moves its parked jobs back to the queue.
    async fn set_paused(&self, name: &str, paused: bool) -> Result<pb::Policy> {
        let policy = self.policy(name)?;
        let queue = &self.state.queue;
        queue
            .set_paused(name, paused)
            .await
            .map_err(AdminError::from)?;
        if !paused {
            let moved = queue.unpark(name).await.map_err(AdminError::from)?;
            tracing::info!(
                policy = name,
                jobs = moved,
                "policy resumed: parked jobs are queued again"
            );
        } else {
            // Workers trust their list of paused policies for PAUSED_TTL: once that has passed,
            // none of them starts a job of this policy any more.
            tokio::time::sleep(crate::worker::PAUSED_TTL + Duration::from_millis(100)).await;
            tracing::info!(policy = name, "policy paused: workers park its jobs");
        }
        ok(self.view(policy).await?)
    }

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
impl pb::policies_server::Policies for Admin {
    async fn list_policies(
        &self,
        _: Request<pb::ListPoliciesRequest>,
    ) -> Result<pb::ListPoliciesResponse> {
        let paused = self.state.queue.paused().await.map_err(AdminError::from)?;
        ok(pb::ListPoliciesResponse {
            policies: self
                .state
                .config
                .policies
                .iter()
                .map(|p| pb::Policy {
                    paused: paused.contains(&p.name),
                    ..convert::policy(p)
                })
                .collect(),
        })
    }

    async fn get_policy(&self, req: Request<pb::GetPolicyRequest>) -> Result<pb::Policy> {
        ok(self.view(self.policy(&req.get_ref().name)?).await?)
    }

    async fn put_policy(&self, _: Request<pb::PutPolicyRequest>) -> Result<pb::Policy> {
        Err(not_implemented("storing policies through the API"))
    }

    async fn delete_policy(
        &self,
        _: Request<pb::DeletePolicyRequest>,
    ) -> Result<pb::DeletePolicyResponse> {
        Err(not_implemented("deleting policies through the API"))
    }

    async fn set_policy_enabled(
        &self,
        _: Request<pb::SetPolicyEnabledRequest>,
    ) -> Result<pb::Policy> {
        Err(not_implemented(
            "enabling or disabling policies through the API",
        ))
    }
}

#[tonic::async_trait]
impl pb::registries_server::Registries for Admin {
    async fn list_registries(
        &self,
        _: Request<pb::ListRegistriesRequest>,
    ) -> Result<pb::ListRegistriesResponse> {
        ok(pb::ListRegistriesResponse {
            registries: self
                .state
                .config
                .registries
                .iter()
                .map(convert::registry)
                .collect(),
        })
    }

    async fn get_registry(&self, req: Request<pb::GetRegistryRequest>) -> Result<pb::Registry> {
        ok(convert::registry(self.registry(&req.get_ref().name)?))
    }

    async fn put_registry(&self, _: Request<pb::PutRegistryRequest>) -> Result<pb::Registry> {
        Err(not_implemented("storing registries through the API"))
    }

    async fn delete_registry(
        &self,
        _: Request<pb::DeleteRegistryRequest>,
    ) -> Result<pb::DeleteRegistryResponse> {
        Err(not_implemented("deleting registries through the API"))
    }

    async fn ping_registry(
        &self,
        req: Request<pb::PingRegistryRequest>,
    ) -> Result<pb::PingRegistryResponse> {
        let name = &req.get_ref().name;
        self.registry(name)?;
        let client = self
            .state
            .registries
            .get("", name)
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        let started = Instant::now();
        let answer = client.ping().await;
        let latency_ms = started.elapsed().as_millis() as u64;
        ok(match answer {
            Ok(info) => pb::PingRegistryResponse {
                reachable: true,
                authenticated: true,
                api_version: info.api_version.unwrap_or_default(),
                auth_scheme: info.auth.unwrap_or_default(),
                referrers_api: false,
                latency_ms,
                error: String::new(),
            },
            Err(e) => pb::PingRegistryResponse {
                // An HTTP answer (even 401/403) means the registry is there.
                reachable: e.status().is_some()
                    || matches!(e, crate::oci::RegistryError::Auth { .. }),
                authenticated: false,
                latency_ms,
                error: e.to_string(),
                ..Default::default()
            },
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
        let policy = self.policy(&r.policy)?;
        if !policy.enabled {
            return Err(AdminError::FailedPrecondition(format!(
                "policy {:?} is disabled; enable it (`\"enabled\": true`) before running it",
                policy.name
            ))
            .into());
        }
        if self.view(policy).await?.paused {
            return Err(AdminError::FailedPrecondition(format!(
                "policy {:?} is paused; resume it before running it",
                policy.name
            ))
            .into());
        }
        let prepared = PreparedPolicy::new(policy, &self.state.registries)
            .map_err(|e| AdminError::FailedPrecondition(e.to_string()))?;
        let execution = start_run(
            &prepared,
            Trigger::Manual,
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
                    Ok::<_, crate::queue::QueueError>((e, tasks))
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
        let policy = self.policy(&req.get_ref().policy)?;
        let prepared = PreparedPolicy::new(policy, &self.state.registries)
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

#[tonic::async_trait]
impl pb::operations_server::Operations for Admin {
    async fn get_queue_stats(
        &self,
        _: Request<pb::GetQueueStatsRequest>,
    ) -> Result<pb::QueueStats> {
        let s = self.state.queue.stats().await.map_err(AdminError::from)?;
        ok(convert::queue_stats(&s))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<pb::ListDeadLettersResponse> {
        let limit = match req.get_ref().limit {
            0 => 100,
            n => (n as usize).min(MAX_PAGE),
        };
        let jobs = self
            .state
            .queue
            .dead_letters(limit)
            .await
            .map_err(AdminError::from)?;
        ok(pb::ListDeadLettersResponse {
            jobs: jobs.iter().map(convert::job).collect(),
        })
    }

    async fn retry_dead_letter(
        &self,
        req: Request<pb::RetryDeadLetterRequest>,
    ) -> Result<pb::RetryDeadLetterResponse> {
        let id = &req.get_ref().job_id;
        if id.is_empty() {
            return Err(AdminError::required("job_id").into());
        }
        if self
            .state
            .queue
            .retry_dead_letter(id)
            .await
            .map_err(AdminError::from)?
        {
            ok(pb::RetryDeadLetterResponse {})
        } else {
            Err(AdminError::NotFound {
                kind: "dead letter",
                name: id.clone(),
                known: Vec::new(),
            }
            .into())
        }
    }

    async fn purge_dead_letters(
        &self,
        _: Request<pb::PurgeDeadLettersRequest>,
    ) -> Result<pb::PurgeDeadLettersResponse> {
        let purged = self
            .state
            .queue
            .purge_dead_letters()
            .await
            .map_err(AdminError::from)?;
        ok(pb::PurgeDeadLettersResponse { purged })
    }

    async fn list_workers(
        &self,
        _: Request<pb::ListWorkersRequest>,
    ) -> Result<pb::ListWorkersResponse> {
        let workers = self
            .state
            .history
            .workers()
            .await
            .map_err(AdminError::from)?;
        ok(pb::ListWorkersResponse {
            workers: workers.iter().map(convert::worker).collect(),
        })
    }

    async fn pause_policy(&self, req: Request<pb::PausePolicyRequest>) -> Result<pb::Policy> {
        self.set_paused(&req.get_ref().name, true).await
    }

    async fn resume_policy(&self, req: Request<pb::ResumePolicyRequest>) -> Result<pb::Policy> {
        self.set_paused(&req.get_ref().name, false).await
    }
}
