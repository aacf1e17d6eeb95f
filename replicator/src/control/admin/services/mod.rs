//! The `ferry.v1` admin services over an [`AdminState`]. Read paths answer from the config (policies,
//! registries) and the region's queue and history (executions, tasks, dead letters, workers), so
//! every instance answers for the whole region.
//!
//! # Layout
//! - this file (`services/mod.rs`): [`Admin`] (one value implements every service; clones share
//!   the state) and the [`Snapshot`] of the region's policies and registries each call reads.
//! - `catalog`: the `Policies` and `Registries` services — documents checked against the region
//!   before they are stored, and the registry ping with its capability probes.
//! - `executions`: the `Executions` service (start, stop, list, watch runs and their tasks) and the
//!   `Drift` report.
//! - `operations`: the `Operations` service — queue stats, dead letters, workers, pausing and
//!   resuming policies.
//!
//! Invariants: every call reads the effective policies (config file + stored) afresh through one
//! [`Snapshot`]; errors leave through [`AdminError`] (mapped to gRPC codes in
//! [`super::status`]); pages are bounded by `MAX_PAGE`.
mod catalog;
mod executions;
mod operations;

use std::pin::Pin;

use ferry_proto::v1 as pb;
use futures_util::Stream;
use tonic::{Response, Status};

use super::convert;
use super::status::AdminError;
use super::AdminState;
use crate::catalog::{effective, PolicySource};
use crate::replicate::Registries;

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
}
