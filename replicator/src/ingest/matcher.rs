//! Which policies an [`Event`] concerns, the [`Job`] each of them gets, and which regions must
//! hear about it.
//!
//! A policy matches an event when it is enabled, its `trigger.type` is `event_based`, the event's
//! registry is the side content flows from (its `src_registry`; for a `bidirectional` policy also
//! its `dest_registry`, and the job then flows back, `Job::source` naming the registry it reads),
//! its selector covers the repository and — for an event with an ordinary tag — the tag. Deletes
//! match only policies with `replicate_deletion: true`. Digest-only events (a push by digest, a
//! manifest delete) are matched on the repository alone (a push by digest only by policies without
//! tag filters, or with a gate); so are referrer-scheme tags
//! (`sha256-<hex>[.sig]`) when the policy copies referrers (`copy_referrers`), since they belong to
//! a subject the tag filter already decided about. Every match yields one job (the worker fans
//! out to the destinations).
//!
//! # Regions (README "Regions")
//! A matched policy runs in one region: its `region` when set, else the source registry's region
//! in push mode and the destination registry's region in pull and bidirectional modes (the
//! region that writes a registry is the one it belongs to). [`Matcher::route`] splits an event's
//! matches into the jobs this region runs and the regions it must forward the event to; an event
//! that arrives forwarded only yields local jobs ([`Matcher::forwarded_jobs`]), so forwarding
//! never loops. A registry or policy without a region, or a process without `--region`, is local
//! to everyone: one site needs no region at all.
//!
//! Invariants: matching is pure and never panics; selectors are compiled once, in
//! [`Matcher::new`], so a policy whose filters do not compile is rejected up front.
use std::collections::{BTreeSet, HashMap};

use crate::config::{Config, Region};
use crate::event::{Event, EventKind};
use crate::policy::{FilterKind, Mode, Policy, Selector, SelectorError, TriggerKind};
use crate::store::queue::Job;

use super::is_referrer_tag;

/// Event-based policies of a config, with their selectors compiled, and where each runs.
#[derive(Debug, Clone)]
pub struct Matcher {
    policies: Vec<(Policy, Selector)>,
    /// Region of every registry that names one.
    regions: HashMap<String, String>,
    /// This process's region; on a single site every job is local.
    local: Region,
}

/// A policy whose filters do not compile (the config was not validated).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {policy:?}: {source}")]
pub struct MatcherError {
    pub policy: String,
    #[source]
    pub source: SelectorError,
}

/// Where an event goes: jobs for this region's queue, and the regions it is forwarded to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    pub jobs: Vec<Job>,
    pub forward: BTreeSet<String>,
}

impl Matcher {
    /// Compiles the selectors of every enabled event-based policy of `config` (which should have
    /// passed [`Config::validate`]); every job is local.
    pub fn new(config: &Config) -> Result<Matcher, MatcherError> {
        Matcher::for_region(config, &Region::single_site())
    }

    /// Like [`Matcher::new`] for a process of `region`: jobs that run elsewhere are forwarded.
    pub fn for_region(config: &Config, region: &Region) -> Result<Matcher, MatcherError> {
        let policies = config
            .policies
            .iter()
            .filter(|p| p.enabled && p.trigger.kind == TriggerKind::EventBased)
            .map(|p| {
                Selector::new(p)
                    .map(|s| (p.clone(), s))
                    .map_err(|source| MatcherError {
                        policy: p.name.clone(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        let regions = config
            .registries
            .iter()
            .filter_map(|r| Some((r.name.clone(), r.region.clone()?)))
            .collect();
        Ok(Matcher {
            policies,
            regions,
            local: region.clone(),
        })
    }

    /// Names of the policies this matcher considers (enabled and event-based).
    pub fn policy_names(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().map(|(p, _)| p.name.as_str())
    }

    /// The jobs this region runs for a local event, in config order.
    pub fn jobs(&self, event: &Event) -> Vec<Job> {
        self.route(event).jobs
    }

    /// Jobs this region runs for `event`, and the regions whose policies it also concerns.
    pub fn route(&self, event: &Event) -> Route {
        let mut route = Route::default();
        for (policy, source) in self.matching(event) {
            match self.runs_in(policy, source) {
                Some(region) if !self.is_local(region) => {
                    route.forward.insert(region.to_string());
                }
                _ => route
                    .jobs
                    .push(self.job(policy, source, event, self.local.name())),
            }
        }
        route
    }

    /// Jobs this region runs for an event forwarded by region `origin`. Never forwards again.
    pub fn forwarded_jobs(&self, event: &Event, origin: &str) -> Vec<Job> {
        self.matching(event)
            .filter(|(policy, source)| {
                self.runs_in(policy, source)
                    .is_none_or(|r| self.is_local(r))
            })
            .map(|(policy, source)| self.job(policy, source, event, Some(origin)))
            .collect()
    }

    /// Whether `registry` is a side of a bidirectional policy: its pushes are recorded so that a
    /// conflicting push from the other side can be decided (see `crate::regions::conflict`).
    pub fn records_writes(&self, registry: &str) -> bool {
        self.policies.iter().any(|(p, _)| {
            p.mode == Mode::Bidirectional
                && (p.src_registry.name == registry || p.destinations().any(|d| d.name == registry))
        })
    }

    /// Registries content flows from under these policies (every `src_registry`, and both sides
    /// of a bidirectional policy): where a webhook that matters can come from.
    pub fn sources(&self) -> BTreeSet<&str> {
        self.policies
            .iter()
            .flat_map(|(p, _)| {
                let both = p.mode == Mode::Bidirectional;
                std::iter::once(p.src_registry.name.as_str()).chain(
                    p.destinations()
                        .filter(move |_| both)
                        .map(|d| d.name.as_str()),
                )
            })
            .collect()
    }

    /// Policies that `event` concerns, each with the registry content flows from.
    fn matching<'a>(&'a self, event: &'a Event) -> impl Iterator<Item = (&'a Policy, &'a str)> {
        self.policies.iter().filter_map(move |(policy, selector)| {
            let source = flows_from(policy, &event.registry)?;
            matches(policy, selector, event).then_some((policy, source))
        })
    }

    /// The region that runs `policy`'s jobs for content flowing from `source`; `None`: anywhere.
    fn runs_in<'a>(&'a self, policy: &'a Policy, source: &str) -> Option<&'a str> {
        runs_in(policy, source, |name| {
            self.regions.get(name).map(String::as_str)
        })
    }

    fn is_local(&self, region: &str) -> bool {
        self.local.runs(region)
    }

    fn job(&self, policy: &Policy, source: &str, event: &Event, origin: Option<&str>) -> Job {
        let reference = event.reference().unwrap_or_default();
        Job {
            digest: event.digest.clone(),
            event_time_ms: event.occurred_at_ms,
            event_id: Some(event.id.clone()),
            source: (source != policy.src_registry.name).then(|| source.to_string()),
            origin_region: origin.map(str::to_string),
            bidirectional: policy.mode == Mode::Bidirectional,
            ..Job::new(&policy.name, event.kind, &event.repository, reference)
        }
    }
}

/// The region that runs `policy`'s jobs for content flowing from registry `source` (see the module
/// docs), given each registry's region; `None`: any region.
pub fn runs_in<'a>(
    policy: &'a Policy,
    source: &str,
    region_of: impl Fn(&str) -> Option<&'a str>,
) -> Option<&'a str> {
    if let Some(region) = &policy.region {
        return Some(region);
    }
    match policy.mode {
        Mode::Push => region_of(source),
        Mode::Pull => policy.destinations().find_map(|d| region_of(&d.name)),
        // The other side is written.
        Mode::Bidirectional if source == policy.src_registry.name => {
            policy.destinations().find_map(|d| region_of(&d.name))
        }
        Mode::Bidirectional => region_of(&policy.src_registry.name),
    }
}

/// Whether a process of `region` runs `policy`'s jobs for content flowing from its
/// `src_registry` — what a full reconciliation of the policy does.
pub fn runs_here(config: &Config, policy: &Policy, region: &Region) -> bool {
    runs_in(policy, &policy.src_registry.name, |name| {
        config.registry(name)?.region.as_deref()
    })
    .is_none_or(|r| region.runs(r))
}

/// The registry content flows from when `registry` changed: itself when it is the policy's
/// source, or a bidirectional policy's destination; `None` when the policy does not read it.
fn flows_from<'a>(policy: &'a Policy, registry: &str) -> Option<&'a str> {
    if policy.src_registry.name == registry {
        return Some(&policy.src_registry.name);
    }
    if policy.mode == Mode::Bidirectional {
        return policy
            .destinations()
            .find(|d| d.name == registry)
            .map(|d| d.name.as_str());
    }
    None
}

fn matches(policy: &Policy, selector: &Selector, event: &Event) -> bool {
    if event.reference().is_none() {
        return false;
    }
    if event.kind == EventKind::Delete && !policy.replicate_deletion {
        return false;
    }
    if !selector.matches_repository(&event.repository) {
        return false;
    }
    match event.tag.as_deref() {
        // A push by digest alone is usually a child of an index whose tagged event follows (the
        // tagged job copies the children). Matching it on repository alone would copy children of
        // tags the policy excludes, so it only matches policies without tag filters. Deletes by
        // digest always match: the worker's guard decides.
        // A gated policy hears them all: a referrer pushed by digest or Harbor's finished scan
        // can release tags a gate held back, and its job looks only at the covered tags at
        // that digest (`crate::replicate::replicate_gated_tags`).
        None if event.kind == EventKind::Push => {
            policy.has_gates() || !policy.filters.iter().any(|f| f.kind == FilterKind::Tag)
        }
        None => true,
        // A gated policy hears signatures even when it does not copy referrers: one can release
        // the tags of its subject.
        Some(tag) if (policy.copy_referrers || policy.has_gates()) && is_referrer_tag(tag) => true,
        Some(tag) => selector.matches_tag(tag),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const DIGEST: &str = "sha256:77d686e3e38b6ab19b76850261e0879edb760b1e9b603136d411c574862981cc";

    fn config(policies: serde_json::Value) -> Config {
        let value = json!({
            "registries": [
                {"name": "eu", "url": "https://eu.example"},
                {"name": "us", "url": "https://us.example"}
            ],
            "policies": policies
        });
        let config = Config::from_slice(&serde_json::to_vec(&value).unwrap(), "test").unwrap();
        assert!(config.validate().is_empty());
        config
    }

    fn policy(name: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut p = json!({
            "name": name,
            "src_registry": {"name": "eu"},
            "dest_registry": {"name": "us"},
            "trigger": {"type": "event_based"},
            "filters": [
                {"type": "name", "value": "platform/**"},
                {"type": "tag", "value": "{v*,latest}"}
            ]
        });
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    }

    #[test]
    fn sources_are_the_src_registries_of_enabled_event_based_policies_and_both_sides_of_bidirectional_ones(
    ) {
        let sources = |policies: serde_json::Value| {
            let config = config(policies);
            let matcher = Matcher::new(&config).unwrap();
            matcher
                .sources()
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(sources(json!([policy("p", json!({}))])), ["eu"]);
        assert_eq!(
            sources(json!([policy("p", json!({"mode": "bidirectional"}))])),
            ["eu", "us"]
        );
        assert!(sources(json!([
            policy("manual", json!({"trigger": {"type": "manual"}})),
            policy("off", json!({"enabled": false}))
        ]))
        .is_empty());
    }

    fn event(kind: EventKind, repository: &str, tag: Option<&str>, digest: Option<&str>) -> Event {
        Event {
            id: "ev-1".into(),
            registry: "eu".into(),
            repository: repository.into(),
            tag: tag.map(Into::into),
            digest: digest.map(Into::into),
            media_type: None,
            kind,
            occurred_at_ms: 1234,
            request_id: None,
        }
    }

    fn names(jobs: &[Job]) -> Vec<&str> {
        jobs.iter().map(|j| j.policy.as_str()).collect()
    }

    #[test]
    fn push_with_matching_tag_builds_a_job() {
        let m = Matcher::new(&config(json!([policy("p", json!({}))]))).unwrap();
        let jobs = m.jobs(&event(
            EventKind::Push,
            "platform/api",
            Some("v1.2"),
            Some(DIGEST),
        ));
        assert_eq!(
            jobs,
            vec![Job {
                digest: Some(DIGEST.into()),
                event_time_ms: 1234,
                event_id: Some("ev-1".into()),
                ..Job::new("p", EventKind::Push, "platform/api", "v1.2")
            }]
        );
        assert_eq!(jobs[0].idempotency_key(), "p|push|platform/api|v1.2");
    }

    #[test]
    fn filters_registry_trigger_and_enabled() {
        let m = Matcher::new(&config(json!([
            policy("event", json!({})),
            policy("manual", json!({"trigger": {"type": "manual"}})),
            policy("disabled", json!({"enabled": false})),
            policy(
                "from-us",
                json!({"src_registry": {"name": "us"}, "dest_registry": {"name": "eu"}})
            ),
            policy("pull", json!({"mode": "pull"})),
            policy("bidi", json!({"mode": "bidirectional"})),
            policy("all", json!({"filters": []})),
        ])))
        .unwrap();
        assert_eq!(
            m.policy_names().collect::<Vec<_>>(),
            vec!["event", "from-us", "pull", "bidi", "all"]
        );
        let push = event(
            EventKind::Push,
            "platform/api",
            Some("latest"),
            Some(DIGEST),
        );
        assert_eq!(names(&m.jobs(&push)), vec!["event", "pull", "bidi", "all"]);
        assert!(m.jobs(&push).iter().all(|j| j.source.is_none()));
        // Only the bidirectional policy's job is decided by its event, in both directions.
        let marked = |jobs: Vec<Job>| {
            jobs.into_iter()
                .filter(|j| j.bidirectional)
                .map(|j| j.policy)
                .collect::<Vec<_>>()
        };
        assert_eq!(marked(m.jobs(&push)), vec!["bidi"]);
        // Tag not covered.
        let dev = event(EventKind::Push, "platform/api", Some("dev-1"), Some(DIGEST));
        assert_eq!(names(&m.jobs(&dev)), vec!["all"]);
        // Repository not covered.
        let other = event(EventKind::Push, "tools/api", Some("v1"), Some(DIGEST));
        assert_eq!(names(&m.jobs(&other)), vec!["all"]);
        // Another registry.
        let mut us = push.clone();
        us.registry = "us".into();
        let back = m.jobs(&us);
        assert_eq!(names(&back), vec!["from-us", "bidi"]);
        // A bidirectional policy's destination flows back to its source.
        assert_eq!(back[0].source, None);
        assert_eq!(back[1].source.as_deref(), Some("us"));
        assert_eq!(marked(back.clone()), vec!["bidi"]);
        assert_eq!(
            back[1].idempotency_key(),
            format!("bidi|push|platform/api|latest|from=us|digest={DIGEST}")
        );
        let mut unknown = push;
        unknown.registry = "nowhere".into();
        assert!(m.jobs(&unknown).is_empty());
    }

    #[test]
    fn digest_only_and_referrer_tags_match_on_repository() {
        let m = Matcher::new(&config(json!([
            policy("referrers", json!({})),
            policy("no-referrers", json!({"copy_referrers": false})),
            policy(
                "all-tags",
                json!({"filters": [{"type": "name", "value": "platform/**"}]})
            ),
        ])))
        .unwrap();
        // Pushes by digest only match policies without a tag filter (index children of excluded
        // tags must not leak through).
        let by_digest = event(EventKind::Push, "platform/api", None, Some(DIGEST));
        let jobs = m.jobs(&by_digest);
        assert_eq!(names(&jobs), vec!["all-tags"]);
        assert_eq!(jobs[0].reference, DIGEST);
        let sig = format!("sha256-{}.sig", "a".repeat(64));
        let referrer = event(EventKind::Push, "platform/api", Some(&sig), Some(DIGEST));
        assert_eq!(names(&m.jobs(&referrer)), vec!["referrers", "all-tags"]);
        let elsewhere = event(EventKind::Push, "tools/x", None, Some(DIGEST));
        assert!(m.jobs(&elsewhere).is_empty());
    }

    #[test]
    fn a_push_by_digest_reaches_gated_policies_with_tag_filters() {
        let m = Matcher::new(&config(json!([
            policy("plain", json!({})),
            policy("signed", json!({"only_signed": true})),
            policy("scanned", json!({"max_severity": "high"})),
        ])))
        .unwrap();
        // A signature pushed by digest, or Harbor's scan of an image, can release held-back tags.
        let by_digest = event(EventKind::Push, "platform/api", None, Some(DIGEST));
        assert_eq!(names(&m.jobs(&by_digest)), vec!["signed", "scanned"]);
    }

    #[test]
    fn a_signature_tag_reaches_a_gated_policy_that_does_not_copy_referrers() {
        let m = Matcher::new(&config(json!([
            policy("plain", json!({"copy_referrers": false})),
            policy(
                "signed",
                json!({"copy_referrers": false, "only_signed": true})
            ),
        ])))
        .unwrap();
        let sig = format!("sha256-{}.sig", "a".repeat(64));
        let signature = event(EventKind::Push, "platform/api", Some(&sig), Some(DIGEST));
        assert_eq!(names(&m.jobs(&signature)), vec!["signed"]);
    }

    #[test]
    fn deletes_need_replicate_deletion() {
        let m = Matcher::new(&config(json!([
            policy("keep", json!({})),
            policy("mirror", json!({"replicate_deletion": true})),
        ])))
        .unwrap();
        let joined = event(EventKind::Delete, "platform/api", Some("v1"), Some(DIGEST));
        let jobs = m.jobs(&joined);
        assert_eq!(names(&jobs), vec!["mirror"]);
        assert_eq!(
            (jobs[0].reference.as_str(), jobs[0].digest.as_deref()),
            ("v1", Some(DIGEST))
        );
        assert_eq!(jobs[0].kind, EventKind::Delete);
        let digest_only = event(EventKind::Delete, "platform/api", None, Some(DIGEST));
        assert_eq!(m.jobs(&digest_only)[0].reference, DIGEST);
        let tag_not_covered = event(EventKind::Delete, "platform/api", Some("dev"), None);
        assert!(m.jobs(&tag_not_covered).is_empty());
    }

    #[test]
    fn event_without_reference_yields_nothing() {
        let m = Matcher::new(&config(json!([policy("all", json!({"filters": []}))]))).unwrap();
        assert!(m
            .jobs(&event(EventKind::Push, "platform/api", None, None))
            .is_empty());
    }

    /// eu and us are regions; hub has none (every region may read it).
    fn regional(policies: serde_json::Value) -> Config {
        let value = json!({
            "regions": [
                {"name": "eu", "forward_url": "https://agent.eu:9444"},
                {"name": "us", "forward_url": "https://agent.us:9444"},
                {"name": "ap", "forward_url": "https://agent.ap:9444"}
            ],
            "registries": [
                {"name": "eu", "url": "https://eu.example", "region": "eu"},
                {"name": "us", "url": "https://us.example", "region": "us"},
                {"name": "hub", "url": "https://hub.example"}
            ],
            "policies": policies
        });
        let config = Config::from_slice(&serde_json::to_vec(&value).unwrap(), "test").unwrap();
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        config
    }

    #[test]
    fn events_route_to_the_region_that_runs_the_policy() {
        let config = regional(json!([
            policy("push", json!({"filters": []})),
            policy("pull", json!({"filters": [], "mode": "pull"})),
            policy(
                "relay",
                json!({"filters": [], "mode": "pull", "region": "ap"})
            ),
            policy("bidi", json!({"filters": [], "mode": "bidirectional"})),
            policy(
                "from-hub",
                json!({"filters": [], "mode": "pull", "src_registry": {"name": "hub"}})
            ),
        ]));
        let push = event(EventKind::Push, "platform/api", Some("v1"), Some(DIGEST));
        let eu = Matcher::for_region(&config, &Region::new("eu")).unwrap();
        let route = eu.route(&push);
        assert_eq!(names(&route.jobs), vec!["push"]);
        assert_eq!(route.jobs[0].origin_region.as_deref(), Some("eu"));
        assert_eq!(
            route.forward.iter().map(String::as_str).collect::<Vec<_>>(),
            vec!["ap", "us"]
        );
        // us runs what eu forwarded, with eu as origin, and forwards nothing.
        let us = Matcher::for_region(&config, &Region::new("us")).unwrap();
        let forwarded = us.forwarded_jobs(&push, "eu");
        assert_eq!(names(&forwarded), vec!["pull", "bidi"]);
        assert!(forwarded
            .iter()
            .all(|j| j.origin_region.as_deref() == Some("eu") && j.source.is_none()));
        let ap = Matcher::for_region(&config, &Region::new("ap")).unwrap();
        assert_eq!(names(&ap.forwarded_jobs(&push, "eu")), vec!["relay"]);
        // A push in us flows back to eu through the bidirectional policy, run by eu.
        let mut in_us = push.clone();
        in_us.registry = "us".into();
        let route = us.route(&in_us);
        assert!(route.jobs.is_empty(), "{route:?}");
        assert_eq!(route.forward.iter().collect::<Vec<_>>(), vec!["eu"]);
        let back = eu.forwarded_jobs(&in_us, "us");
        assert_eq!(names(&back), vec!["bidi"]);
        assert_eq!(back[0].source.as_deref(), Some("us"));
        // A registry without region (polled hub) is local to the region that sees its events.
        let mut in_hub = push.clone();
        in_hub.registry = "hub".into();
        assert_eq!(names(&us.route(&in_hub).jobs), vec!["from-hub"]);
        assert_eq!(
            eu.route(&in_hub).forward.iter().collect::<Vec<_>>(),
            vec!["us"]
        );
        // Without --region everything is local, as on one site.
        let anywhere = Matcher::new(&config).unwrap();
        let route = anywhere.route(&push);
        assert_eq!(names(&route.jobs), vec!["push", "pull", "relay", "bidi"]);
        assert!(route.forward.is_empty());
        assert!(eu.records_writes("eu") && eu.records_writes("us") && !eu.records_writes("hub"));
    }

    #[test]
    fn bad_filter_is_rejected_up_front() {
        let mut config = config(json!([policy("p", json!({}))]));
        config.policies[0].filters[0].value = "[".into();
        let err = Matcher::new(&config).unwrap_err();
        assert_eq!(err.policy, "p");
        assert!(err
            .to_string()
            .starts_with("policy \"p\": filters[0].value: "));
    }
}
