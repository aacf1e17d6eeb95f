//! The registry clients of a config: one [`RegistryClient`] per configured registry, built once
//! (credentials resolved, no network I/O) and shared by every job, run and report.
//!
//! Invariants: clients rebuilt for a new config keep the shared rate-limit gate, the process's
//! registry request metrics and the operator's credential rules; a policy naming a registry the config does not define is an error naming both.
use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, Credential, Secret};
use crate::oci::{RegistryClient, RegistryMetrics};

use super::SyncError;

/// One client per configured registry, built once and shared.
#[derive(Debug, Default, Clone)]
pub struct Registries {
    clients: HashMap<String, Arc<RegistryClient>>,
    /// Where the clients share rate-limit pauses (kept for clients rebuilt from a new config).
    shared_gate: Option<Arc<dyn crate::oci::gate::SharedGate>>,
    /// Where the clients count their requests (kept for clients rebuilt from a new config).
    metrics: Option<RegistryMetrics>,
    /// Which credential references registries stored through the admin API may use (the
    /// strictest rules unless the daemon set the operator's).
    credential_rules: Arc<crate::config::CredentialRules>,
}

impl Registries {
    /// Builds clients for every registry of the config (resolving credentials; no network I/O).
    pub fn from_config(config: &Config) -> Result<Registries, SyncError> {
        let mut clients = HashMap::new();
        for r in &config.registries {
            let secret = match &r.credential {
                Some(c) => Credential::resolve(c, r)?,
                None => Secret::Anonymous,
            };
            clients.insert(r.name.clone(), Arc::new(RegistryClient::new(r, secret)?));
        }
        Ok(Registries {
            clients,
            shared_gate: None,
            metrics: None,
            credential_rules: Arc::default(),
        })
    }

    /// Holds the operator's rules for the credentials of registries stored through the API
    /// (checked by [`crate::catalog::clients`] and the admin API).
    pub fn with_credential_rules(mut self, rules: crate::config::CredentialRules) -> Registries {
        self.credential_rules = Arc::new(rules);
        self
    }

    pub fn credential_rules(&self) -> &crate::config::CredentialRules {
        &self.credential_rules
    }

    /// Shares every client's rate-limit pauses through `gate` (a region's Redis), so one worker's
    /// 429 slows every worker for that registry.
    pub fn with_shared_gate(mut self, gate: Arc<dyn crate::oci::gate::SharedGate>) -> Registries {
        for c in self.clients.values() {
            c.share_gate(gate.clone());
        }
        self.shared_gate = Some(gate);
        self
    }

    /// Counts every client's requests in `metrics` (the process's registry request metrics), and
    /// exports each configured registry's series at 0.
    pub fn with_metrics(mut self, metrics: RegistryMetrics) -> Registries {
        for c in self.clients.values() {
            c.export_metrics(&metrics);
        }
        self.metrics = Some(metrics);
        self
    }

    /// Clients for `config` that share pauses and count requests like these do.
    pub fn rebuilt(&self, config: &Config) -> Result<Registries, SyncError> {
        let mut fresh = Registries::from_config(config)?;
        fresh.credential_rules = self.credential_rules.clone();
        if let Some(m) = &self.metrics {
            fresh = fresh.with_metrics(m.clone());
        }
        Ok(match &self.shared_gate {
            Some(g) => fresh.with_shared_gate(g.clone()),
            None => fresh,
        })
    }

    /// The configured registries' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.clients.keys().map(String::as_str)
    }

    /// The client of the registry called `name`, if configured.
    pub fn client(&self, name: &str) -> Option<Arc<RegistryClient>> {
        self.clients.get(name).cloned()
    }

    /// The client of a registry `policy` names; an error naming both when it is not configured.
    pub fn get(&self, policy: &str, name: &str) -> Result<Arc<RegistryClient>, SyncError> {
        self.client(name).ok_or_else(|| SyncError::UnknownRegistry {
            policy: policy.to_string(),
            registry: name.to_string(),
        })
    }
}
