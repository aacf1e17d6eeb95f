//! The tag poller: events for source registries that cannot send webhooks (Docker Hub, cloud
//! registries, anything the agent cannot reach it from).
//!
//! Every `poll_interval_seconds` (a registry setting) a pass lists the repositories the
//! registry's event-based policies cover and their tags, resolves each covered tag's digest with
//! a **`HEAD`** (never a `GET`: registries like Docker Hub count manifest GETs against pull
//! limits), and compares with what the previous pass saw. A new or moved tag becomes a push
//! [`Event`], a vanished tag a delete event carrying the digest it last had. Events then take the
//! webhook path: [`Matcher`] → one job per policy → the queue.
//!
//! # Invariants
//! - **Nothing is lost**: a tag's new state is remembered only after its jobs are durably
//!   enqueued; if the queue is unavailable the pass stops and the next pass sees the change again.
//! - **No invented deletes**: a tag counts as deleted only when its repository's tag list was read
//!   successfully without it (or the repository is reported unknown). Listing or HEAD errors never
//!   produce deletes.
//! - **Rate-limit aware**: HEADs run at most `concurrency` at a time; when the registry announces
//!   `RateLimit-Remaining` at or below the reserve, the pass stops early (the rest of the quota is
//!   left to the workers' copies), and a `429` that outlasts the client's retries ends the pass;
//!   both are retried next interval.
//! - The first pass after start only records the current state (a baseline): what changed while
//!   the agent was down is repaired by the safety-net reconciliation that runs at start.
//! - Names a registry lists are untrusted: a repository, tag or digest outside the grammar of
//!   [`crate::policy::namespace`] is skipped with a warning, never turned into an event.
//! - Repositories come from the catalog, except for policies whose `name` filter is a plain name
//!   or one `{a,b}` alternation of names (`library/{nginx,redis}`): those are polled by name, so
//!   registries without a catalog API (Docker Hub) work.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use tokio_util::sync::CancellationToken;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::matcher::Matcher;
use super::EventSink;
use crate::clock::now_ms;
use crate::config::Config;
use crate::event::{Event, EventKind};
use crate::labels::EventLabels;
use crate::locks::lock;
use crate::oci::{RegistryClient, RegistryError};
use crate::policy::{
    check_digest, check_repository, check_tag, Decoration, FilterKind, Mode, NameError, Policy,
    Selector, TriggerKind,
};
use crate::replicate::{is_referrer_tag, Registries, SyncError};
use crate::runtime::background::{Next, Routine, Supervisor};
use crate::store::queue::EnqueueOutcome;
use crate::store::StoreError;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    registry: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryLabel {
    registry: String,
}

/// `ferry_poll_passes_total{registry,outcome}`, `ferry_poll_events_total{registry,kind,outcome}`
/// and `ferry_poll_heads_total{registry}` (the poller's share of a registry's request quota).
#[derive(Debug, Clone, Default)]
pub struct PollMetrics {
    passes: Family<PassLabels, Counter>,
    events: Family<EventLabels, Counter>,
    heads: Family<RegistryLabel, Counter>,
}

impl PollMetrics {
    pub fn register(registry: &mut Registry) -> PollMetrics {
        let m = PollMetrics::default();
        registry.register(
            "ferry_poll_passes",
            "Tag poller passes, by registry and outcome (ok, rate_limited, registry_error, queue_error)",
            m.passes.clone(),
        );
        registry.register(
            "ferry_poll_events",
            "Changes the tag poller found, by registry, kind and outcome (matched, unmatched, queue_unavailable)",
            m.events.clone(),
        );
        registry.register(
            "ferry_poll_heads",
            "Manifest HEAD requests the tag poller sent",
            m.heads.clone(),
        );
        m
    }

    fn pass(&self, registry: &str, outcome: &str) {
        self.passes
            .get_or_create(&PassLabels {
                registry: registry.into(),
                outcome: outcome.into(),
            })
            .inc();
    }
}

/// Knobs of one registry's poller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollOptions {
    pub interval: Duration,
    /// HEAD requests in flight at once.
    pub concurrency: usize,
    /// Stop a pass when the announced remaining quota falls to this fraction of the limit (or to
    /// this many requests when no limit is announced, times 100).
    pub reserve: f64,
}

impl PollOptions {
    pub fn every(interval: Duration) -> PollOptions {
        PollOptions {
            interval,
            concurrency: 4,
            reserve: 0.1,
        }
    }
}

/// What one pass saw and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub repositories: usize,
    pub tags: usize,
    pub heads: usize,
    pub pushes: usize,
    pub deletes: usize,
    pub enqueued: usize,
    pub collapsed: usize,
    /// True for the first pass, which only records the current state.
    pub baseline: bool,
    /// The pass stopped early because the registry's quota is nearly used up.
    pub rate_limited: bool,
}

/// Why a pass stopped; the state seen so far is kept and the next pass continues.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("registry {registry}: {source}")]
    Registry {
        registry: String,
        #[source]
        source: RegistryError,
    },
    #[error("cannot enqueue the jobs of a polled change (it is picked up again next pass): {0}")]
    Queue(#[from] StoreError),
}

/// A policy's view of the polled registry.
struct Covered {
    policy: Policy,
    selector: Selector,
    /// Literal repository names when every `name` filter is one; `None` = use the catalog.
    literal_repositories: Option<Vec<String>>,
}

/// What a registry's passes saw: repository → tag → digest, and whether the baseline is done.
#[derive(Debug, Default)]
struct PollState {
    seen: HashMap<String, BTreeMap<String, String>>,
    baseline_done: bool,
}

/// A registry's shared poll state.
type SharedState = Arc<tokio::sync::Mutex<PollState>>;

/// The running generation of pollers: its supervisor (stopped on the next reload) and each
/// registry's state.
type Generation = (Supervisor, HashMap<String, SharedState>);

/// The pollers of a process, rebuilt when the region's policies or registries change (admin
/// API). A registry polled before and after a change keeps what its passes saw, so no change
/// falls between two generations of pollers.
pub struct PollerSet {
    sink: EventSink,
    metrics: PollMetrics,
    /// Runs every generation (each under a child of its own).
    supervisor: Supervisor,
    /// The running generation.
    current: std::sync::Mutex<Generation>,
    /// The first generation, built but not started yet ([`PollerSet::begin`]).
    pending: std::sync::Mutex<Vec<Poller>>,
}

impl PollerSet {
    /// Starts polling `config`'s polled registries until `shutdown`.
    pub fn start(
        config: &Config,
        registries: &Registries,
        sink: impl Into<EventSink>,
        metrics: PollMetrics,
        shutdown: CancellationToken,
    ) -> Result<Arc<PollerSet>, SyncError> {
        let set =
            PollerSet::supervised(config, registries, sink, metrics, Supervisor::new(shutdown))?;
        set.begin();
        Ok(set)
    }

    /// The pollers of `config`'s polled registries, run by `supervisor` from
    /// [`PollerSet::begin`] on (no network I/O until then).
    pub fn supervised(
        config: &Config,
        registries: &Registries,
        sink: impl Into<EventSink>,
        metrics: PollMetrics,
        supervisor: Supervisor,
    ) -> Result<Arc<PollerSet>, SyncError> {
        let set = Arc::new(PollerSet {
            sink: sink.into(),
            metrics,
            current: std::sync::Mutex::new((supervisor.child(), HashMap::new())),
            supervisor,
            pending: std::sync::Mutex::default(),
        });
        *lock(&set.pending) = set.next_generation(config, registries)?.1;
        Ok(set)
    }

    /// Starts the pollers built by [`PollerSet::supervised`].
    pub fn begin(&self) {
        let generation = lock(&self.current).0.clone();
        for p in std::mem::take(&mut *lock(&self.pending)) {
            p.spawn(&generation);
        }
    }

    /// Stops the running pollers and starts those of `config`, handing each registry's state over.
    fn replace(&self, config: &Config, registries: &Registries) -> Result<(), SyncError> {
        let (generation, pollers) = self.next_generation(config, registries)?;
        for p in pollers {
            p.spawn(&generation);
        }
        Ok(())
    }

    /// Builds the pollers of `config` with the states of the registries polled now, and makes
    /// them the current generation (stopping the running one).
    fn next_generation(
        &self,
        config: &Config,
        registries: &Registries,
    ) -> Result<(Supervisor, Vec<Poller>), SyncError> {
        let mut pollers =
            Poller::from_config(config, registries, self.sink.clone(), self.metrics.clone())?;
        let generation = self.supervisor.child();
        let mut current = lock(&self.current);
        let mut states = HashMap::new();
        for p in &mut pollers {
            if let Some(state) = current.1.get(&p.registry) {
                p.state = state.clone();
            }
            states.insert(p.registry.clone(), p.state.clone());
        }
        current.0.stop();
        *current = (generation.clone(), states);
        Ok((generation, pollers))
    }

    /// The registries polled now.
    pub fn registries(&self) -> Vec<String> {
        lock(&self.current).1.keys().cloned().collect()
    }

    /// Waits until every poller stopped (after `shutdown`).
    pub async fn wait(&self) {
        self.supervisor.wait().await;
    }
}

impl crate::catalog::Reload for PollerSet {
    fn what(&self) -> &'static str {
        "tag pollers"
    }

    fn reload(&self, config: &Config, registries: &Registries) -> Result<(), String> {
        self.replace(config, registries).map_err(|e| e.to_string())
    }
}

/// A poller as a [`Routine`]: a pass, then the registry's interval; after a failed pass the
/// interval too, or the later time a 429 named.
impl Routine for Poller {
    type Error = PollError;

    fn name(&self) -> String {
        format!("poller/{}", self.registry)
    }

    async fn step(&mut self) -> Result<Next, PollError> {
        let pass = self.pass().await;
        let outcome = match &pass {
            Ok(r) if r.rate_limited => "rate_limited",
            Ok(_) => "ok",
            Err(PollError::Registry { .. }) => "registry_error",
            Err(PollError::Queue(_)) => "queue_error",
        };
        self.metrics.pass(&self.registry, outcome);
        match pass? {
            r if r.pushes + r.deletes > 0 => tracing::info!(
                registry = %self.registry, pushes = r.pushes, deletes = r.deletes,
                enqueued = r.enqueued, collapsed = r.collapsed, "poll found changes"
            ),
            r if r.rate_limited => tracing::warn!(
                registry = %self.registry, heads = r.heads,
                "poll stopped early: the registry's rate limit is nearly used up"
            ),
            r => {
                tracing::debug!(registry = %self.registry, tags = r.tags, heads = r.heads, baseline = r.baseline, "poll: no change")
            }
        }
        Ok(Next::After(self.opts.interval))
    }

    fn retry_in(&self, _failures: u32, error: &PollError) -> Duration {
        match error {
            PollError::Registry {
                source:
                    RegistryError::RateLimited {
                        retry_after: Some(later),
                        ..
                    },
                ..
            } => self.opts.interval.max(*later),
            _ => self.opts.interval,
        }
    }
}

/// Polls one source registry.
pub struct Poller {
    registry: String,
    client: Arc<RegistryClient>,
    covered: Vec<Covered>,
    matcher: Matcher,
    sink: EventSink,
    metrics: PollMetrics,
    opts: PollOptions,
    /// Repository → tag → digest, as of the last pass.
    /// What the passes saw, shared with the poller of the same registry after a reload.
    state: SharedState,
}

impl Poller {
    /// Pollers for every registry with `poll_interval_seconds` that is a source of an enabled
    /// event-based policy (either side of a bidirectional one) and belongs to the sink's region
    /// (or to none). No network I/O.
    pub fn from_config(
        config: &Config,
        registries: &Registries,
        sink: impl Into<EventSink>,
        metrics: PollMetrics,
    ) -> Result<Vec<Poller>, SyncError> {
        let sink = sink.into();
        let matcher =
            Matcher::for_region(config, sink.region()).map_err(|e| SyncError::Policy {
                policy: e.policy.clone(),
                message: e.source.to_string(),
            })?;
        let mut pollers = Vec::new();
        for r in &config.registries {
            let Some(secs) = r.poll_interval_seconds else {
                continue;
            };
            if r.region
                .as_deref()
                .is_some_and(|theirs| !sink.region().runs(theirs))
            {
                // Its own region polls it.
                continue;
            }
            let mut covered = Vec::new();
            for p in config.policies.iter().filter(|p| {
                p.enabled
                    && p.trigger.kind == TriggerKind::EventBased
                    && (p.src_registry.name == r.name
                        || (p.mode == Mode::Bidirectional
                            && p.destinations().any(|d| d.name == r.name)))
            }) {
                let selector = Selector::new(p).map_err(|e| SyncError::Policy {
                    policy: p.name.clone(),
                    message: e.to_string(),
                })?;
                covered.push(Covered {
                    literal_repositories: literal_repositories(p),
                    policy: p.clone(),
                    selector,
                });
            }
            if covered.is_empty() {
                tracing::warn!(registry = %r.name, "poll_interval_seconds is set but no enabled event_based policy has this registry as its source; not polling it");
                continue;
            }
            pollers.push(Poller {
                registry: r.name.clone(),
                client: registries.get(&covered[0].policy.name, &r.name)?,
                covered,
                matcher: matcher.clone(),
                sink: sink.clone(),
                metrics: metrics.clone(),
                opts: PollOptions::every(Duration::from_secs(secs.max(1))),
                state: Arc::default(),
            });
        }
        Ok(pollers)
    }

    /// Changes the options (tests poll faster than a config can say).
    pub fn with_options(mut self, opts: PollOptions) -> Poller {
        self.opts = opts;
        self
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Polls under `supervisor` until it stops: a pass now, then one every interval (longer after
    /// a 429 that named a later time).
    fn spawn(self, supervisor: &Supervisor) {
        tracing::info!(registry = %self.registry, interval_s = self.opts.interval.as_secs_f64(), "polling tags");
        supervisor.spawn(self);
    }

    /// One pass: list, HEAD, compare, enqueue.
    pub async fn pass(&mut self) -> Result<PassReport, PollError> {
        let state = self.state.clone();
        // Held for the whole pass: a poller replaced by a reload finishes (or is dropped) first.
        let mut st = state.lock().await;
        let mut report = PassReport {
            baseline: !st.baseline_done,
            ..Default::default()
        };
        let registry_err = |source| PollError::Registry {
            registry: self.registry.clone(),
            source,
        };
        let wanted = self.wanted_tags().await.map_err(registry_err)?;
        report.repositories = wanted.len();
        for (repo, tags) in wanted {
            let tags = tags.unwrap_or_default();
            report.tags += tags.len();
            let heads = self.head_tags(&repo, &tags).await;
            report.heads += heads.len();
            let current = current_digests(&self.registry, &repo, &tags, st.seen.get(&repo), heads)
                .map_err(registry_err)?;
            let events = if st.baseline_done {
                self.changes(&st, &repo, &current)
            } else {
                Vec::new()
            };
            for event in &events {
                match event.kind {
                    EventKind::Push => report.pushes += 1,
                    EventKind::Delete => report.deletes += 1,
                }
                self.enqueue(event, &mut report).await?;
            }
            if current.is_empty() {
                st.seen.remove(&repo);
            } else {
                st.seen.insert(repo.clone(), current);
            }
            if self.quota_low() {
                report.rate_limited = true;
                break;
            }
        }
        st.baseline_done = true;
        Ok(report)
    }

    /// Repository → tags worth a HEAD (covered by some policy, or a referrer tag); `None` for a
    /// repository that is gone. A repository whose tags cannot be listed is left out this pass.
    async fn wanted_tags(
        &self,
    ) -> Result<BTreeMap<String, Option<BTreeSet<String>>>, RegistryError> {
        let mut wanted: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
        for repo in self.repositories().await? {
            let tags = match self.client.list_tags(&repo).await {
                Ok(tags) => Some(
                    tags.into_iter()
                        .filter(|t| {
                            self.usable(Some(&repo), check_tag(t)) && self.covers_tag(&repo, t)
                        })
                        .collect(),
                ),
                // The repository is gone: every tag it had is deleted.
                Err(e) if e.is_not_found() => None,
                Err(e) => {
                    tracing::warn!(registry = %self.registry, repository = %repo, error = %e, "cannot list tags; skipping this repository this pass");
                    continue;
                }
            };
            wanted.insert(repo, tags);
        }
        Ok(wanted)
    }

    /// HEADs every tag of `repo` (at most `concurrency` at a time) and counts them.
    async fn head_tags(
        &self,
        repo: &str,
        tags: &BTreeSet<String>,
    ) -> Vec<(String, Result<Option<String>, RegistryError>)> {
        let heads: Vec<(String, Result<Option<String>, RegistryError>)> =
            stream::iter(tags.iter().cloned())
                .map(|tag| {
                    let client = &self.client;
                    async move {
                        let d = client
                            .head_digest(repo, &tag)
                            .await
                            .map(|d| d.map(|d| d.to_string()));
                        (tag, d)
                    }
                })
                .buffer_unordered(self.opts.concurrency.max(1))
                .collect()
                .await;
        self.metrics
            .heads
            .get_or_create(&RegistryLabel {
                registry: self.registry.clone(),
            })
            .inc_by(heads.len() as u64);
        heads
    }

    /// Repositories to poll: the literal names of policies that have them, the catalog (filtered
    /// by the policies' selectors) for the others.
    async fn repositories(&self) -> Result<BTreeSet<String>, RegistryError> {
        let mut repos = BTreeSet::new();
        let mut need_catalog = false;
        for c in &self.covered {
            match &c.literal_repositories {
                Some(names) => repos.extend(
                    names
                        .iter()
                        .filter(|n| self.usable(None, check_repository(n)))
                        .cloned(),
                ),
                None => need_catalog = true,
            }
        }
        if need_catalog {
            for r in self.client.catalog().await? {
                if self.usable(None, check_repository(&r))
                    && self.covered.iter().any(|c| {
                        c.literal_repositories.is_none() && c.selector.matches_repository(&r)
                    })
                {
                    repos.insert(r);
                }
            }
        }
        Ok(repos)
    }

    /// [`crate::replicate::listed_name`] for this registry.
    fn usable(&self, in_repository: Option<&str>, checked: Result<(), NameError>) -> bool {
        crate::replicate::listed_name(&self.registry, in_repository, checked)
    }

    fn covers_tag(&self, repo: &str, tag: &str) -> bool {
        is_referrer_tag(tag)
            || self
                .covered
                .iter()
                .any(|c| c.selector.matches_repository(repo) && c.selector.matches_tag(tag))
    }

    /// Events that turn the remembered state of `repo` into `current`.
    fn changes(
        &self,
        st: &PollState,
        repo: &str,
        current: &BTreeMap<String, String>,
    ) -> Vec<Event> {
        let empty = BTreeMap::new();
        let old = st.seen.get(repo).unwrap_or(&empty);
        let now = now_ms();
        let event = |kind: EventKind, tag: &str, digest: &str| Event {
            id: format!(
                "poll:{}:{repo}:{tag}:{digest}:{}",
                self.registry,
                kind.as_str()
            ),
            registry: self.registry.clone(),
            repository: repo.to_string(),
            tag: Some(tag.to_string()),
            digest: Some(digest.to_string()),
            media_type: None,
            kind,
            occurred_at_ms: now,
            request_id: None,
        };
        let mut events = Vec::new();
        for (tag, digest) in current {
            if old.get(tag) != Some(digest) {
                events.push(event(EventKind::Push, tag, digest));
            }
        }
        for (tag, digest) in old {
            if !current.contains_key(tag) {
                events.push(event(EventKind::Delete, tag, digest));
            }
        }
        events
    }

    async fn enqueue(&self, event: &Event, report: &mut PassReport) -> Result<(), StoreError> {
        let kind = event.kind.as_str();
        let route = self.matcher.route(event);
        if route.jobs.is_empty() && route.forward.is_empty() {
            self.count(kind, "unmatched");
            return Ok(());
        }
        if let Err(e) = self.sink.relay(&self.matcher, event, &route.forward).await {
            self.count(kind, "queue_unavailable");
            return Err(e);
        }
        for job in route.jobs {
            match self.sink.queue.enqueue(job).await {
                Ok(EnqueueOutcome::Enqueued) => report.enqueued += 1,
                Ok(EnqueueOutcome::Collapsed) => report.collapsed += 1,
                Err(e) => {
                    self.count(kind, "queue_unavailable");
                    return Err(e);
                }
            }
        }
        self.count(kind, "matched");
        Ok(())
    }

    fn count(&self, kind: &str, outcome: &str) {
        self.metrics
            .events
            .get_or_create(&EventLabels {
                registry: self.registry.clone(),
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// True when the registry announced a remaining quota at or below the reserve.
    fn quota_low(&self) -> bool {
        let Some(limit) = self.client.rate_limit() else {
            return false;
        };
        let reserve = match limit.limit {
            Some(l) => (l as f64 * self.opts.reserve).ceil() as u64,
            None => (self.opts.reserve * 100.0).ceil() as u64,
        };
        limit.remaining <= reserve
    }
}

/// Tag → digest of `repo` after a pass's HEADs of `tags`: a tag that could not be checked (HEAD
/// failed, digest outside the grammar, gone meanwhile) keeps its digest from `old`, so it never
/// counts as deleted; a rate-limited HEAD ends the pass.
fn current_digests(
    registry: &str,
    repo: &str,
    tags: &BTreeSet<String>,
    old: Option<&BTreeMap<String, String>>,
    heads: Vec<(String, Result<Option<String>, RegistryError>)>,
) -> Result<BTreeMap<String, String>, RegistryError> {
    let mut current: BTreeMap<String, String> = BTreeMap::new();
    let mut complete = true;
    for (tag, head) in heads {
        match head {
            Ok(Some(d))
                if crate::replicate::listed_name(registry, Some(repo), check_digest(&d)) =>
            {
                current.insert(tag, d);
            }
            // A digest Ferry cannot verify: as if the HEAD failed.
            Ok(Some(_)) => complete = false,
            // Deleted between the listing and the HEAD: the next listing confirms it.
            Ok(None) => complete = false,
            Err(e @ RegistryError::RateLimited { .. }) => return Err(e),
            Err(e) => {
                complete = false;
                tracing::warn!(registry = %registry, repository = %repo, tag = %tag, error = %e, "cannot HEAD tag; checking it again next pass");
                // Keep the last known digest: not seen is not deleted.
                if let Some(old) = old.and_then(|m| m.get(&tag)) {
                    current.insert(tag, old.clone());
                }
            }
        }
    }
    if !complete {
        // Tags we could not check keep their old state (no delete event for them).
        if let Some(old) = old {
            for (tag, d) in old {
                if tags.contains(tag) {
                    current.entry(tag.clone()).or_insert_with(|| d.clone());
                }
            }
        }
    }
    Ok(current)
}

/// The repository names a policy's one `name` filter allows when it is a plain name or a single
/// `{a,b,…}` alternation of plain names (`library/{nginx,redis}`); `None` when the catalog must be
/// listed (globs, excludes, several name filters, no name filter).
fn literal_repositories(policy: &Policy) -> Option<Vec<String>> {
    let names: Vec<_> = policy
        .filters
        .iter()
        .filter(|f| f.kind == FilterKind::Name)
        .collect();
    let [f] = names.as_slice() else {
        return None;
    };
    if f.decoration == Decoration::Excludes {
        return None;
    }
    let glob = |v: &str| v.contains(['*', '?', '[', ']', '{', '}', ',', '\\']);
    let v = f.value.as_str();
    let Some((prefix, rest)) = v.split_once('{') else {
        return (!glob(v)).then(|| vec![v.to_string()]);
    };
    let (alternatives, suffix) = rest.split_once('}')?;
    if glob(prefix) || glob(suffix) {
        return None;
    }
    alternatives
        .split(',')
        .map(|a| (!a.is_empty() && !glob(a)).then(|| format!("{prefix}{a}{suffix}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(filters: serde_json::Value) -> Policy {
        serde_json::from_value(json!({
            "name": "p", "src_registry": {"name": "hub"}, "dest_registry": {"name": "eu"},
            "trigger": {"type": "event_based"}, "filters": filters
        }))
        .unwrap()
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn tags(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn seen(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(t, d)| (t.to_string(), d.to_string()))
            .collect()
    }

    fn server_error() -> RegistryError {
        RegistryError::Status {
            registry: "hub".into(),
            method: "HEAD".into(),
            url: "https://hub/v2/app/manifests/a".into(),
            status: 500,
            errors: Vec::new(),
        }
    }

    #[test]
    fn a_tag_whose_head_failed_keeps_its_last_known_digest() {
        let old = seen(&[("a", D1), ("b", D1)]);
        let heads = vec![
            ("a".to_string(), Err(server_error())),
            ("b".to_string(), Ok(Some(D2.to_string()))),
        ];
        let current = current_digests("hub", "app", &tags(&["a", "b"]), Some(&old), heads).unwrap();
        assert_eq!(current, seen(&[("a", D1), ("b", D2)]));
    }

    #[test]
    fn an_unchecked_pass_keeps_listed_tags_and_drops_unlisted_ones() {
        let old = seen(&[("a", D1), ("gone", D1)]);
        // Deleted between the listing and the HEAD: unchecked, so the old state stays.
        let heads = vec![("a".to_string(), Ok(None))];
        let current = current_digests("hub", "app", &tags(&["a"]), Some(&old), heads).unwrap();
        assert_eq!(current, seen(&[("a", D1)]));
    }

    #[test]
    fn a_digest_outside_the_grammar_counts_as_an_unchecked_tag() {
        let old = seen(&[("a", D1)]);
        let heads = vec![("a".to_string(), Ok(Some("md5:nope".to_string())))];
        let current = current_digests("hub", "app", &tags(&["a"]), Some(&old), heads).unwrap();
        assert_eq!(current, seen(&[("a", D1)]));
    }

    #[test]
    fn a_complete_pass_forgets_tags_that_were_not_listed() {
        let old = seen(&[("a", D1), ("gone", D1)]);
        let heads = vec![("a".to_string(), Ok(Some(D2.to_string())))];
        let current = current_digests("hub", "app", &tags(&["a"]), Some(&old), heads).unwrap();
        assert_eq!(current, seen(&[("a", D2)]));
    }

    #[test]
    fn a_rate_limited_head_ends_the_pass() {
        let limited = RegistryError::RateLimited {
            registry: "hub".into(),
            url: "https://hub/v2/app/manifests/a".into(),
            attempts: 3,
            retry_after: None,
        };
        let heads = vec![("a".to_string(), Err(limited))];
        let result = current_digests("hub", "app", &tags(&["a"]), None, heads);
        assert!(matches!(result, Err(RegistryError::RateLimited { .. })));
    }

    #[test]
    fn literal_names_skip_the_catalog_and_globs_need_it() {
        assert_eq!(
            literal_repositories(&policy(json!([{"type": "name", "value": "library/nginx"}]))),
            Some(vec!["library/nginx".to_string()])
        );
        assert_eq!(
            literal_repositories(&policy(
                json!([{"type": "name", "value": "library/nginx"}, {"type": "tag", "value": "1.*"}])
            )),
            Some(vec!["library/nginx".to_string()]),
            "tag filters do not matter"
        );
        assert_eq!(
            literal_repositories(&policy(
                json!([{"type": "name", "value": "library/{nginx,redis}"}])
            )),
            Some(vec![
                "library/nginx".to_string(),
                "library/redis".to_string()
            ])
        );
        for globby in [
            json!([{"type": "name", "value": "library/*"}]),
            json!([{"type": "name", "value": "{a,b*}"}]),
            json!([{"type": "name", "value": "{a,{b,c}}"}]),
            json!([{"type": "name", "value": "{a,b}/{c,d}"}]),
            json!([{"type": "name", "value": "{a,}"}]),
            json!([{"type": "name", "value": "a", "decoration": "excludes"}]),
            json!([{"type": "name", "value": "a"}, {"type": "name", "value": "b"}]),
            json!([]),
        ] {
            assert_eq!(
                literal_repositories(&policy(globby.clone())),
                None,
                "{globby}"
            );
        }
    }
}
