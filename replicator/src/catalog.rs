//! Policies stored through the admin API, next to the config file's.
//!
//! The effective policy set of a region is the config file's policies (read-only; only their
//! `enabled` flag can be overridden through the API) plus the policies stored through the API in
//! the region's Redis/Valkey (in process for `ferry serve` without `--redis`). Every change bumps a
//! revision; long-running processes poll it and rebuild what depends on the policies.
//!
//! # Invariants
//! - A stored policy never shadows a config-file policy (the API refuses the name).
//! - Stored policies are validated against the merged set before they are stored (the admin API
//!   does that), so every process sees only valid policies; a stored document that no longer
//!   parses (e.g. after a downgrade) is skipped with an error, never fatal.
//! - The revision only grows.
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::policy::Policy;
use crate::replicate::Registries;
use crate::store::redis::{bounded, RedisStore};
use crate::store::StoreError;

/// Where a policy is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    ConfigFile,
    Api,
}

/// What the store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// Name → policy JSON.
    pub policies: BTreeMap<String, String>,
    /// Name → `enabled` override (config-file and stored policies alike).
    pub enabled: BTreeMap<String, bool>,
    /// Name → registry JSON (credentials by reference only).
    pub registries: BTreeMap<String, String>,
    pub revision: u64,
}

/// Policies stored through the API. Object-safe; binaries pick the backend at run time.
#[async_trait::async_trait]
pub trait PolicyStore: Send + Sync + 'static {
    async fn load(&self) -> Result<Stored, StoreError>;
    async fn revision(&self) -> Result<u64, StoreError>;
    /// Creates or replaces a policy (already validated).
    async fn put_policy(&self, name: &str, json: &str) -> Result<(), StoreError>;
    /// False when there was none.
    async fn delete_policy(&self, name: &str) -> Result<bool, StoreError>;
    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), StoreError>;
    /// Creates or replaces a registry (already validated).
    async fn put_registry(&self, name: &str, json: &str) -> Result<(), StoreError>;
    /// False when there was none.
    async fn delete_registry(&self, name: &str) -> Result<bool, StoreError>;
}

/// The effective config and where each policy and registry is defined.
#[derive(Debug, Clone)]
pub struct Effective {
    pub config: Config,
    pub policies: BTreeMap<String, PolicySource>,
    pub registries: BTreeMap<String, PolicySource>,
}

/// The effective config: the file's registries and policies (with `enabled` overrides) plus the
/// stored registries and policies, and where each comes from.
pub fn effective(file: &Config, stored: &Stored) -> Effective {
    let mut config = file.clone();
    let mut registries: BTreeMap<String, PolicySource> = file
        .registries
        .iter()
        .map(|r| (r.name.clone(), PolicySource::ConfigFile))
        .collect();
    for (name, json) in &stored.registries {
        if registries.contains_key(name) {
            tracing::error!(registry = %name, "a stored registry has the name of a config-file registry; ignoring the stored one");
            continue;
        }
        match serde_json::from_str::<crate::config::RegistryConfig>(json) {
            Ok(r) if &r.name == name => {
                registries.insert(name.clone(), PolicySource::Api);
                config.registries.push(r);
            }
            Ok(_) => {
                tracing::error!(registry = %name, "a stored registry's document names another registry; ignoring it")
            }
            Err(e) => {
                tracing::error!(registry = %name, error = %e, "a stored registry no longer parses; ignoring it")
            }
        }
    }
    let mut sources: BTreeMap<String, PolicySource> = file
        .policies
        .iter()
        .map(|p| (p.name.clone(), PolicySource::ConfigFile))
        .collect();
    for (name, json) in &stored.policies {
        if sources.contains_key(name) {
            tracing::error!(policy = %name, "a stored policy has the name of a config-file policy; ignoring the stored one");
            continue;
        }
        match serde_json::from_str::<Policy>(json) {
            Ok(p) if &p.name == name => {
                sources.insert(name.clone(), PolicySource::Api);
                config.policies.push(p);
            }
            Ok(p) => {
                tracing::error!(policy = %name, found = %p.name, "a stored policy's document names another policy; ignoring it")
            }
            Err(e) => {
                tracing::error!(policy = %name, error = %e, "a stored policy no longer parses; ignoring it")
            }
        }
    }
    for p in &mut config.policies {
        if let Some(enabled) = stored.enabled.get(&p.name) {
            p.enabled = *enabled;
        }
    }
    Effective {
        config,
        policies: sources,
        registries,
    }
}

/// How often long-running processes look for policy changes.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Calls `apply` with the effective config at start and after every change of the store, checking
/// its revision every `every`, until `shutdown`. Store errors are logged and retried.
pub async fn watch(
    file: &Config,
    store: &dyn PolicyStore,
    every: Duration,
    shutdown: CancellationToken,
    mut apply: impl FnMut(&Config),
) {
    let mut applied: Option<u64> = None;
    loop {
        match store.revision().await {
            Ok(rev) if Some(rev) != applied => match store.load().await {
                Ok(stored) => {
                    apply(&effective(file, &stored).config);
                    if applied.is_some() {
                        tracing::info!(
                            revision = stored.revision,
                            "policies changed through the admin API: reloaded"
                        );
                    }
                    applied = Some(stored.revision);
                }
                Err(e) => tracing::warn!(error = %e, "cannot load the stored policies; retrying"),
            },
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read the policy revision; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// A value the components replace as a whole when the policies change: readers take the version
/// current when they ask and keep it for what they are doing (a job, a pass, a batch).
pub struct Current<T>(std::sync::RwLock<std::sync::Arc<T>>);

impl<T> Current<T> {
    pub fn new(value: T) -> Current<T> {
        Current(std::sync::RwLock::new(std::sync::Arc::new(value)))
    }

    pub fn get(&self) -> std::sync::Arc<T> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(value);
    }
}

/// A component that rebuilds itself from the region's current policies and registries (the
/// worker, the scheduler, the safety net, webhook matching).
pub trait Reload: Send + Sync {
    /// What it is, for logs.
    fn what(&self) -> &'static str;
    /// Rebuilds from `config`; on error the component keeps its previous policies.
    fn reload(&self, config: &Config, registries: &Registries) -> Result<(), String>;
}

/// Clients for the registries of `effective`: the file's own clients (`file_clients`, with their
/// token caches) while no registry was stored through the API, new ones otherwise. A stored
/// registry whose credential the operator's rules do not allow is refused before anything reads
/// it (the admin API refuses such a registry too; this guards what reached the store otherwise).
pub fn clients(
    effective: &Config,
    file: &Config,
    file_clients: &Registries,
) -> Result<Registries, crate::replicate::SyncError> {
    if effective.registries == file.registries {
        return Ok(file_clients.clone());
    }
    for stored in effective
        .registries
        .iter()
        .filter(|r| file.registry(&r.name) != Some(*r))
    {
        if let Err(problems) = file_clients.credential_rules().check(stored) {
            return Err(crate::config::CredentialError {
                registry: stored.name.clone(),
                message: problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            }
            .into());
        }
    }
    file_clients.rebuilt(effective)
}

/// [`watch`] applying every change to `targets`: registry clients are rebuilt when registries
/// were stored through the API (the file's `registries` are reused otherwise).
pub async fn watch_and_reload(
    file: &Config,
    registries: &Registries,
    store: &dyn PolicyStore,
    targets: &[std::sync::Arc<dyn Reload>],
    shutdown: CancellationToken,
) {
    watch(file, store, WATCH_EVERY, shutdown, |effective| {
        let clients = match clients(effective, file, registries) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build clients for the changed registries; keeping the previous policies");
                return;
            }
        };
        for t in targets {
            if let Err(e) = t.reload(effective, &clients) {
                tracing::error!(component = t.what(), error = %e, "cannot apply the changed policies; keeping the previous ones");
            }
        }
    })
    .await
}

/// The in-process store.
#[derive(Default)]
pub struct MemoryPolicyStore {
    state: Mutex<Stored>,
}

impl MemoryPolicyStore {
    fn with<T>(&self, f: impl FnOnce(&mut Stored) -> T) -> T {
        f(&mut crate::locks::lock(&self.state))
    }
}

#[async_trait::async_trait]
impl PolicyStore for MemoryPolicyStore {
    async fn load(&self) -> Result<Stored, StoreError> {
        Ok(self.with(|s| s.clone()))
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.with(|s| s.revision))
    }

    async fn put_policy(&self, name: &str, json: &str) -> Result<(), StoreError> {
        self.with(|s| {
            s.policies.insert(name.to_string(), json.to_string());
            s.revision += 1;
        });
        Ok(())
    }

    async fn delete_policy(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.with(|s| {
            let removed = s.policies.remove(name).is_some();
            s.enabled.remove(name);
            s.revision += 1;
            removed
        }))
    }

    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), StoreError> {
        self.with(|s| {
            s.enabled.insert(name.to_string(), enabled);
            s.revision += 1;
        });
        Ok(())
    }

    async fn put_registry(&self, name: &str, json: &str) -> Result<(), StoreError> {
        self.with(|s| {
            s.registries.insert(name.to_string(), json.to_string());
            s.revision += 1;
        });
        Ok(())
    }

    async fn delete_registry(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.with(|s| {
            s.revision += 1;
            s.registries.remove(name).is_some()
        }))
    }
}

/// The store in the queue's Redis/Valkey: hashes `{p}:catalog:policies` (name → JSON) and
/// `{p}:catalog:enabled` (name → `true`/`false`), `{p}:catalog:registries` (name → JSON), counter
/// `{p}:catalog:rev`. Each change is one
/// `MULTI`/`EXEC` with the revision bump.
#[derive(Clone)]
pub struct RedisPolicyStore {
    redis: RedisStore,
}

impl RedisPolicyStore {
    /// On `redis` (the region's shared connection and key prefix).
    pub fn new(redis: &impl AsRef<RedisStore>) -> RedisPolicyStore {
        RedisPolicyStore {
            redis: redis.as_ref().clone(),
        }
    }

    fn key(&self, what: &str) -> String {
        self.redis.key(&format!("catalog:{what}"))
    }

    /// Runs `pipe` (atomic) with the revision bump.
    async fn change(&self, mut pipe: redis::Pipeline) -> Result<Vec<i64>, StoreError> {
        pipe.atomic().cmd("INCR").arg(self.key("rev"));
        let mut con = self.redis.connection();
        bounded(pipe.query_async(&mut con)).await
    }
}

#[async_trait::async_trait]
impl PolicyStore for RedisPolicyStore {
    async fn load(&self) -> Result<Stored, StoreError> {
        let mut con = self.redis.connection();
        let (policies, enabled, registries, revision): (
            BTreeMap<String, String>,
            BTreeMap<String, String>,
            BTreeMap<String, String>,
            Option<u64>,
        ) = bounded(
            redis::pipe()
                .atomic()
                .cmd("HGETALL")
                .arg(self.key("policies"))
                .cmd("HGETALL")
                .arg(self.key("enabled"))
                .cmd("HGETALL")
                .arg(self.key("registries"))
                .cmd("GET")
                .arg(self.key("rev"))
                .query_async(&mut con),
        )
        .await?;
        Ok(Stored {
            policies,
            registries,
            enabled: enabled.into_iter().map(|(k, v)| (k, v == "true")).collect(),
            revision: revision.unwrap_or(0),
        })
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let mut con = self.redis.connection();
        let rev: Option<u64> =
            bounded(redis::cmd("GET").arg(self.key("rev")).query_async(&mut con)).await?;
        Ok(rev.unwrap_or(0))
    }

    async fn put_policy(&self, name: &str, json: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(self.key("policies"))
            .arg(name)
            .arg(json);
        self.change(pipe).await.map(drop)
    }

    async fn delete_policy(&self, name: &str) -> Result<bool, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL").arg(self.key("policies")).arg(name);
        pipe.cmd("HDEL").arg(self.key("enabled")).arg(name);
        Ok(self.change(pipe).await?.first().copied().unwrap_or(0) == 1)
    }

    async fn put_registry(&self, name: &str, json: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(self.key("registries"))
            .arg(name)
            .arg(json);
        self.change(pipe).await.map(drop)
    }

    async fn delete_registry(&self, name: &str) -> Result<bool, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL").arg(self.key("registries")).arg(name);
        Ok(self.change(pipe).await?.first().copied().unwrap_or(0) == 1)
    }

    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(self.key("enabled"))
            .arg(name)
            .arg(if enabled { "true" } else { "false" });
        self.change(pipe).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(name: &str) -> serde_json::Value {
        json!({"name": name, "src_registry": {"name": "a"}, "dest_registry": {"name": "b"}})
    }

    #[tokio::test]
    async fn effective_merges_overrides_and_skips_bad_entries() {
        let file: Config = serde_json::from_value(json!({
            "registries": [{"name": "a", "url": "https://a"}, {"name": "b", "url": "https://b"}],
            "policies": [policy("from-file")],
        }))
        .unwrap();
        let store = MemoryPolicyStore::default();
        store
            .put_policy("api", &policy("api").to_string())
            .await
            .unwrap();
        store.put_policy("broken", "{not json").await.unwrap();
        store
            .put_policy("from-file", &policy("from-file").to_string())
            .await
            .unwrap();
        store
            .put_policy("renamed", &policy("other").to_string())
            .await
            .unwrap();
        store.set_enabled("from-file", false).await.unwrap();
        let stored = store.load().await.unwrap();
        assert_eq!(stored.revision, 5);
        let Effective {
            config,
            policies: sources,
            ..
        } = effective(&file, &stored);
        let names: Vec<_> = config
            .policies
            .iter()
            .map(|p| (p.name.as_str(), p.enabled))
            .collect();
        assert_eq!(names, [("from-file", false), ("api", true)]);
        assert_eq!(sources["api"], PolicySource::Api);
        assert_eq!(sources["from-file"], PolicySource::ConfigFile);
        assert!(store.delete_policy("api").await.unwrap());
        assert!(!store.delete_policy("api").await.unwrap());
    }
}
