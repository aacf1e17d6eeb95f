//! Which policies an [`Event`] concerns, and the [`Job`] each of them gets.
//!
//! A policy matches an event when it is enabled, its `trigger.type` is `event_based`, its
//! `src_registry` is the registry the event came from, its selector covers the repository and —
//! for an event with an ordinary tag — the tag. Deletes match only policies with
//! `replicate_deletion: true`. Digest-only events (a push by digest, a manifest delete) are
//! matched on the repository alone; so are referrer-scheme tags (`sha256-<hex>[.sig]`) when the
//! policy copies referrers (`copy_referrers`), since they belong to a subject the tag filter
//! already decided about. Every match yields one job (the worker fans out to the destinations).
//!
//! Modes: `push` and `pull` policies match on `src_registry` alike (in pull mode the destination
//! region's workers run the job). `bidirectional` policies are skipped for now — TODO(issue 5):
//! match them when the event registry is either side, with the job's direction reversed when it is
//! the destination.
//!
//! Invariants: matching is pure and never panics; selectors are compiled once, in
//! [`Matcher::new`], so a policy whose filters do not compile is rejected up front.
use crate::config::Config;
use crate::event::{Event, EventKind};
use crate::policy::{FilterKind, Mode, Policy, Selector, SelectorError, TriggerKind};
use crate::queue::Job;

use super::is_referrer_tag;

/// Event-based policies of a config, with their selectors compiled.
#[derive(Debug, Clone)]
pub struct Matcher {
    policies: Vec<(Policy, Selector)>,
}

/// A policy whose filters do not compile (the config was not validated).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {policy:?}: {source}")]
pub struct MatcherError {
    pub policy: String,
    #[source]
    pub source: SelectorError,
}

impl Matcher {
    /// Compiles the selectors of every enabled event-based policy of `config` (which should have
    /// passed [`Config::validate`]).
    pub fn new(config: &Config) -> Result<Matcher, MatcherError> {
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
        Ok(Matcher { policies })
    }

    /// Names of the policies this matcher considers (enabled and event-based).
    pub fn policy_names(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().map(|(p, _)| p.name.as_str())
    }

    /// One job per policy that `event` concerns, in config order.
    pub fn jobs(&self, event: &Event) -> Vec<Job> {
        let Some(reference) = event.reference() else {
            return Vec::new();
        };
        self.policies
            .iter()
            .filter(|(policy, selector)| matches(policy, selector, event))
            .map(|(policy, _)| Job {
                digest: event.digest.clone(),
                event_time_ms: event.occurred_at_ms,
                event_id: Some(event.id.clone()),
                ..Job::new(&policy.name, event.kind, &event.repository, reference)
            })
            .collect()
    }
}

fn matches(policy: &Policy, selector: &Selector, event: &Event) -> bool {
    match policy.mode {
        Mode::Push | Mode::Pull => {}
        // TODO(issue 5): bidirectional policies (event registry on either side).
        Mode::Bidirectional => return false,
    }
    if policy.src_registry.name != event.registry {
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
        None if event.kind == EventKind::Push => {
            !policy.filters.iter().any(|f| f.kind == FilterKind::Tag)
        }
        None => true,
        Some(tag) if policy.copy_referrers && is_referrer_tag(tag) => true,
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
        assert_eq!(names(&m.jobs(&push)), vec!["event", "pull", "all"]);
        // Tag not covered.
        let dev = event(EventKind::Push, "platform/api", Some("dev-1"), Some(DIGEST));
        assert_eq!(names(&m.jobs(&dev)), vec!["all"]);
        // Repository not covered.
        let other = event(EventKind::Push, "tools/api", Some("v1"), Some(DIGEST));
        assert_eq!(names(&m.jobs(&other)), vec!["all"]);
        // Another registry.
        let mut us = push.clone();
        us.registry = "us".into();
        assert_eq!(names(&m.jobs(&us)), vec!["from-us"]);
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
