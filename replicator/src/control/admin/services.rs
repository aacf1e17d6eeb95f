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
use crate::catalog::{effective, PolicySource, WATCH_EVERY};
use crate::control::runs::{start_run, stop_run, RunError, StopError};
use crate::replicate::drift::diff_policy;
use crate::replicate::{PreparedPolicy, Registries};
use crate::store::history::{Execution, ExecutionQuery, Task};
use crate::store::StartedBy;

type Result<T> = std::result::Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

/// Whether `client`'s registry has the OCI 1.1 referrers API and accepts chunked uploads, probed in
/// `repository` (a five-byte chunk in an upload session that is cancelled; distribution answers
/// `Range: 0-0` to a one-byte chunk and to none, so one byte would prove nothing); what the probes could
/// not tell goes to `notes`.
async fn probe_capabilities(
    client: &crate::oci::RegistryClient,
    repository: &str,
    notes: &mut Vec<String>,
) -> (bool, bool) {
    let zero = crate::oci::digest::parse(&format!("sha256:{}", "0".repeat(64)))
        .expect("a well-formed digest");
    let referrers = match client.referrers(repository, &zero).await {
        Ok(found) => found.is_some(),
        Err(e) => {
            notes.push(format!("referrers API: cannot tell ({e})"));
            false
        }
    };
    let chunked = match client.start_upload(repository).await {
        Ok(upload) => {
            let r = client
                .patch_chunk(
                    &upload,
                    &crate::oci::digest::sha256(b"ferry"),
                    bytes::Bytes::from_static(b"ferry"),
                )
                .await;
            client.cancel_upload(&upload).await;
            match r {
                Ok(_) => true,
                Err(e) => {
                    notes.push(format!("chunked upload refused: {e}"));
                    false
                }
            }
        }
        Err(e) => {
            notes.push(format!("chunked upload: cannot tell, opening an upload session in {repository} failed ({e})"));
            false
        }
    };
    (referrers, chunked)
}

/// The problems found at or below the JSON path `prefix` of a merged config (`policies[3]`), as
/// lines with paths relative to that entry (`filters[0].value: …`): what a document sent to the API
/// did wrong, in its own terms.
fn problems_under(problems: Vec<crate::config::Problem>, prefix: &str) -> Vec<String> {
    problems
        .into_iter()
        .filter_map(|mut p| {
            let rest = p.path.strip_prefix(prefix)?;
            // `policies[1]` must not claim `policies[12]`.
            let rest = match rest.strip_prefix('.') {
                Some(r) => r.to_string(),
                None if rest.is_empty() || rest.starts_with('[') => rest.to_string(),
                None => return None,
            };
            p.path = rest;
            Some(p.to_string())
        })
        .collect()
}

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

/// Waits until every process of the region applied a policy change (they check the store every
/// [`WATCH_EVERY`]), so that a run started right after the answer finds the policy everywhere.
async fn until_applied() {
    tokio::time::sleep(WATCH_EVERY + Duration::from_millis(500)).await;
}

/// The region's policies as of one call: the effective set (config file + stored), where each
/// comes from, and which are paused.
struct Snapshot {
    config: crate::config::Config,
    sources: std::collections::BTreeMap<String, PolicySource>,
    registry_sources: std::collections::BTreeMap<String, PolicySource>,
    paused: std::collections::BTreeSet<String>,
}

impl Snapshot {
    fn find(&self, name: &str) -> std::result::Result<&crate::policy::Policy, AdminError> {
        if name.is_empty() {
            return Err(AdminError::required("name"));
        }
        self.config
            .policy(name)
            .ok_or_else(|| AdminError::NotFound {
                kind: "policy",
                name: name.to_string(),
                known: self
                    .config
                    .policies
                    .iter()
                    .map(|p| p.name.clone())
                    .collect(),
            })
    }

    fn find_registry(
        &self,
        name: &str,
    ) -> std::result::Result<&crate::config::RegistryConfig, AdminError> {
        if name.is_empty() {
            return Err(AdminError::required("name"));
        }
        self.config
            .registry(name)
            .ok_or_else(|| AdminError::NotFound {
                kind: "registry",
                name: name.to_string(),
                known: self
                    .config
                    .registries
                    .iter()
                    .map(|r| r.name.clone())
                    .collect(),
            })
    }

    /// A registry as the API shows it.
    fn registry_view(&self, r: &crate::config::RegistryConfig) -> pb::Registry {
        let source = match self.registry_sources.get(&r.name) {
            Some(PolicySource::Api) => pb::Source::Api,
            _ => pb::Source::Config,
        };
        pb::Registry {
            source: source as i32,
            ..convert::registry(r)
        }
    }

    /// Clients of the snapshot's registries (the process's own when none was stored).
    fn clients(&self, state: &AdminState) -> std::result::Result<Registries, AdminError> {
        crate::catalog::clients(&self.config, &state.config, &state.registries)
            .map_err(|e| AdminError::FailedPrecondition(e.to_string()))
    }

    /// A policy as the API shows it.
    fn view(&self, policy: &crate::policy::Policy) -> pb::Policy {
        let source = match self.sources.get(&policy.name) {
            Some(PolicySource::Api) => pb::Source::Api,
            _ => pb::Source::Config,
        };
        pb::Policy {
            paused: self.paused.contains(&policy.name),
            source: source as i32,
            ..convert::policy(policy)
        }
    }
}

impl Admin {
    async fn snapshot(&self) -> std::result::Result<Snapshot, AdminError> {
        let stored = self.state.store.load().await?;
        let e = effective(&self.state.config, &stored);
        let paused = self.state.pauses.paused().await?;
        Ok(Snapshot {
            config: e.config,
            sources: e.policies,
            registry_sources: e.registries,
            paused,
        })
    }

    /// One policy (effective definition) and the snapshot it was read from.
    async fn policy(
        &self,
        name: &str,
    ) -> std::result::Result<(crate::policy::Policy, Snapshot), AdminError> {
        let snapshot = self.snapshot().await?;
        let policy = snapshot.find(name)?.clone();
        Ok((policy, snapshot))
    }

    /// Validates one policy document against the region's registries and other policies; every
    /// problem is reported with its path in the document.
    fn check_new_policy(
        &self,
        snapshot: &Snapshot,
        json: &str,
    ) -> std::result::Result<crate::policy::Policy, AdminError> {
        let invalid = |violations: Vec<String>| AdminError::InvalidArgument { violations };
        // Structural problems (JSON, types, unknown fields) come from the file validator with
        // their paths; a well-formed policy is then checked against the region's registries and
        // policies, which reports its semantic problems and the cross-references together.
        let policy = match crate::config::Config::from_slice(json.as_bytes(), "policy") {
            Ok(parsed) => match parsed.policies.as_slice() {
                [policy] if parsed.registries.is_empty() => policy.clone(),
                _ => {
                    return Err(invalid(vec![
                        "$: send exactly one policy object (not an array or a config file)".into(),
                    ]))
                }
            },
            Err(e) => serde_json::from_str::<crate::policy::Policy>(json)
                .map_err(|_| invalid(e.problems.iter().map(ToString::to_string).collect()))?,
        };
        let policy = &policy;
        if self.state.config.policy(&policy.name).is_some() {
            return Err(AdminError::FailedPrecondition(format!(
                "policy {:?} is defined in the config file, which the API cannot change (only its `enabled` flag); edit the file or choose another name",
                policy.name
            )));
        }
        let mut merged = snapshot.config.clone();
        merged.policies.retain(|p| p.name != policy.name);
        merged.policies.push(policy.clone());
        let prefix = format!("policies[{}]", merged.policies.len() - 1);
        let problems = problems_under(merged.validate(), &prefix);
        if problems.is_empty() {
            Ok(policy.clone())
        } else {
            Err(invalid(problems))
        }
    }

    /// Validates one registry document against the region (structure, name, URL, credentials
    /// resolvable on this host); every problem is reported with its path in the document.
    fn check_new_registry(
        &self,
        snapshot: &Snapshot,
        json: &str,
    ) -> std::result::Result<crate::config::RegistryConfig, AdminError> {
        let invalid = |violations: Vec<String>| AdminError::InvalidArgument { violations };
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| invalid(vec![format!("$: not valid JSON: {e}")]))?;
        let wrapped = serde_json::json!({ "registries": [value] }).to_string();
        let registry = match crate::config::Config::from_slice(wrapped.as_bytes(), "registry") {
            Ok(c) => c
                .registries
                .into_iter()
                .next()
                .ok_or_else(|| invalid(vec!["$: send one registry object".into()]))?,
            Err(e) => {
                let problems = problems_under(e.problems, "registries[0]");
                return Err(invalid(if problems.is_empty() {
                    vec!["$: send one registry object".into()]
                } else {
                    problems
                }));
            }
        };
        if self.state.config.registry(&registry.name).is_some() {
            return Err(AdminError::FailedPrecondition(format!(
                "registry {:?} is defined in the config file, which the API cannot change; edit the file or choose another name",
                registry.name
            )));
        }
        let mut merged = snapshot.config.clone();
        merged.registries.retain(|r| r.name != registry.name);
        merged.registries.push(registry.clone());
        let prefix = format!("registries[{}]", merged.registries.len() - 1);
        let problems = problems_under(merged.validate(), &prefix);
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        // Only the references the operator allowed; then they must resolve here (env var set,
        // file readable).
        self.state
            .registries
            .credential_rules()
            .check(&registry)
            .map_err(|problems| invalid(problems.iter().map(ToString::to_string).collect()))?;
        Registries::from_config(&merged).map_err(|e| invalid(vec![format!("credential: {e}")]))?;
        Ok(registry)
    }

    /// Pauses or resumes a policy; resuming moves its parked jobs back to the queue.
    async fn set_paused(&self, name: &str, paused: bool) -> Result<pb::Policy> {
        let (policy, mut snapshot) = self.policy(name).await?;
        let pauses = &self.state.pauses;
        pauses
            .set_paused(name, paused)
            .await
            .map_err(AdminError::from)?;
        if !paused {
            let moved = pauses.unpark(name).await.map_err(AdminError::from)?;
            tracing::info!(
                policy = name,
                jobs = moved,
                "policy resumed: parked jobs are queued again"
            );
            snapshot.paused.remove(name);
        } else {
            // Workers trust their list of paused policies for PAUSED_TTL: once that has passed,
            // none of them starts a job of this policy any more.
            tokio::time::sleep(crate::worker::PAUSED_TTL + Duration::from_millis(100)).await;
            tracing::info!(policy = name, "policy paused: workers park its jobs");
            snapshot.paused.insert(name.to_string());
        }
        ok(snapshot.view(&policy))
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
        let snapshot = self.snapshot().await?;
        ok(pb::ListPoliciesResponse {
            policies: snapshot
                .config
                .policies
                .iter()
                .map(|p| snapshot.view(p))
                .collect(),
        })
    }

    async fn get_policy(&self, req: Request<pb::GetPolicyRequest>) -> Result<pb::Policy> {
        let (policy, snapshot) = self.policy(&req.get_ref().name).await?;
        ok(snapshot.view(&policy))
    }

    async fn put_policy(&self, req: Request<pb::PutPolicyRequest>) -> Result<pb::Policy> {
        let snapshot = self.snapshot().await?;
        let policy = self.check_new_policy(&snapshot, &req.get_ref().json)?;
        let json = serde_json::to_string(&policy)
            .map_err(|e| AdminError::Internal(format!("cannot serialize the policy: {e}")))?;
        self.state
            .store
            .put_policy(&policy.name, &json)
            .await
            .map_err(AdminError::from)?;
        tracing::info!(policy = %policy.name, "policy stored through the API");
        until_applied().await;
        let (policy, snapshot) = self.policy(&policy.name).await?;
        ok(snapshot.view(&policy))
    }

    async fn delete_policy(
        &self,
        req: Request<pb::DeletePolicyRequest>,
    ) -> Result<pb::DeletePolicyResponse> {
        let name = &req.get_ref().name;
        let (_, snapshot) = self.policy(name).await?;
        if snapshot.sources.get(name) != Some(&PolicySource::Api) {
            return Err(AdminError::FailedPrecondition(format!(
                "policy {name:?} is defined in the config file, which the API cannot change; remove it there (or disable it)"
            ))
            .into());
        }
        self.state
            .store
            .delete_policy(name)
            .await
            .map_err(AdminError::from)?;
        tracing::info!(policy = %name, "policy deleted through the API");
        until_applied().await;
        ok(pb::DeletePolicyResponse {})
    }

    async fn set_policy_enabled(
        &self,
        req: Request<pb::SetPolicyEnabledRequest>,
    ) -> Result<pb::Policy> {
        let r = req.get_ref();
        self.policy(&r.name).await?;
        self.state
            .store
            .set_enabled(&r.name, r.enabled)
            .await
            .map_err(AdminError::from)?;
        until_applied().await;
        let (policy, snapshot) = self.policy(&r.name).await?;
        ok(snapshot.view(&policy))
    }
}

#[tonic::async_trait]
impl pb::registries_server::Registries for Admin {
    async fn list_registries(
        &self,
        _: Request<pb::ListRegistriesRequest>,
    ) -> Result<pb::ListRegistriesResponse> {
        let snapshot = self.snapshot().await?;
        ok(pb::ListRegistriesResponse {
            registries: snapshot
                .config
                .registries
                .iter()
                .map(|r| snapshot.registry_view(r))
                .collect(),
        })
    }

    async fn get_registry(&self, req: Request<pb::GetRegistryRequest>) -> Result<pb::Registry> {
        let snapshot = self.snapshot().await?;
        ok(snapshot.registry_view(snapshot.find_registry(&req.get_ref().name)?))
    }

    async fn put_registry(&self, req: Request<pb::PutRegistryRequest>) -> Result<pb::Registry> {
        let snapshot = self.snapshot().await?;
        let registry = self.check_new_registry(&snapshot, &req.get_ref().json)?;
        let json = serde_json::to_string(&registry)
            .map_err(|e| AdminError::Internal(format!("cannot serialize the registry: {e}")))?;
        self.state
            .store
            .put_registry(&registry.name, &json)
            .await
            .map_err(AdminError::from)?;
        tracing::info!(registry = %registry.name, "registry stored through the API");
        until_applied().await;
        let snapshot = self.snapshot().await?;
        ok(snapshot.registry_view(snapshot.find_registry(&registry.name)?))
    }

    async fn delete_registry(
        &self,
        req: Request<pb::DeleteRegistryRequest>,
    ) -> Result<pb::DeleteRegistryResponse> {
        let name = &req.get_ref().name;
        let snapshot = self.snapshot().await?;
        snapshot.find_registry(name)?;
        if snapshot.registry_sources.get(name) != Some(&PolicySource::Api) {
            return Err(AdminError::FailedPrecondition(format!(
                "registry {name:?} is defined in the config file, which the API cannot change"
            ))
            .into());
        }
        let users: Vec<&str> = snapshot
            .config
            .policies
            .iter()
            .filter(|p| p.src_registry.name == *name || p.destinations().any(|d| d.name == *name))
            .map(|p| p.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(AdminError::FailedPrecondition(format!(
                "registry {name:?} is used by policies {}; delete or change them first",
                users.join(", ")
            ))
            .into());
        }
        self.state
            .store
            .delete_registry(name)
            .await
            .map_err(AdminError::from)?;
        until_applied().await;
        ok(pb::DeleteRegistryResponse {})
    }

    async fn ping_registry(
        &self,
        req: Request<pb::PingRegistryRequest>,
    ) -> Result<pb::PingRegistryResponse> {
        let name = &req.get_ref().name;
        // Checked before any request: the probe opens an upload session in this repository.
        let repository = match req.get_ref().repository.trim() {
            "" => "ferry-probe",
            r => r,
        };
        crate::policy::check_repository(repository).map_err(|e| AdminError::InvalidArgument {
            violations: vec![format!("repository: {e}")],
        })?;
        let snapshot = self.snapshot().await?;
        snapshot.find_registry(name)?;
        let client = snapshot
            .clients(&self.state)?
            .get("", name)
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        let started = Instant::now();
        let answer = client.ping().await;
        let latency_ms = started.elapsed().as_millis() as u64;
        let info = match answer {
            Ok(info) => info,
            Err(e) => {
                return ok(pb::PingRegistryResponse {
                    // An HTTP answer (even 401/403) means the registry is there.
                    reachable: e.status().is_some()
                        || matches!(e, crate::oci::RegistryError::Auth { .. }),
                    authenticated: false,
                    latency_ms,
                    error: e.to_string(),
                    ..Default::default()
                });
            }
        };

        let mut notes = Vec::new();
        let (referrers_api, chunked_upload) =
            probe_capabilities(&client, repository, &mut notes).await;
        ok(pb::PingRegistryResponse {
            reachable: true,
            authenticated: true,
            api_version: info.api_version.unwrap_or_default(),
            auth_scheme: info.auth.unwrap_or_default(),
            referrers_api,
            latency_ms,
            error: String::new(),
            chunked_upload,
            notes,
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
            .dead_letters
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
            .dead_letters
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
            .dead_letters
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

#[cfg(test)]
mod tests {
    use super::problems_under;
    use crate::config::Problem;

    fn problem(path: &str) -> Problem {
        Problem {
            path: path.into(),
            message: "bad".into(),
            hint: None,
        }
    }

    #[test]
    fn problems_are_kept_only_under_the_entry_and_made_relative() {
        let all = vec![
            problem("policies[1].filters[0].value"),
            problem("policies[1]"),
            problem("policies[12].name"),
            problem("policies[0].name"),
            problem("registries[1].url"),
        ];
        assert_eq!(
            problems_under(all, "policies[1]"),
            ["filters[0].value: bad", "$: bad"]
        );
    }
}
