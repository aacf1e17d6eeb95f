//! The policies a worker runs jobs with: every enabled policy of a config, prepared once, in both
//! directions when bidirectional, with its throttle.
//!
//! Invariants: built without network I/O; replaced as a whole on reload (running jobs keep the set
//! they started with); a job names its direction by its source registry (`Job::source`), and a
//! job naming a direction this set does not have finds no policy.
use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::replicate::{PreparedPolicy, Registries, SyncError};
use crate::store::queue::Job;
use crate::throttle::{SharedSpeedSlot, Throttle};

/// The enabled policies of a config, prepared, with their throttles.
pub struct Policies {
    pub by_name: HashMap<String, Arc<PreparedPolicy>>,
    /// Bidirectional policies the other way round: their destination is the source.
    pub reversed: HashMap<String, Arc<PreparedPolicy>>,
    pub throttles: HashMap<String, Arc<Throttle>>,
}

impl Policies {
    pub fn new(
        config: &Config,
        registries: &Registries,
        speed: &SharedSpeedSlot,
    ) -> Result<Policies, SyncError> {
        let mut by_name = HashMap::new();
        let mut reversed = HashMap::new();
        let mut throttles = HashMap::new();
        for p in config.policies.iter().filter(|p| p.enabled) {
            by_name.insert(
                p.name.clone(),
                Arc::new(PreparedPolicy::new(p, registries)?),
            );
            if let Some(back) = p.reversed() {
                reversed.insert(
                    p.name.clone(),
                    Arc::new(PreparedPolicy::new(&back, registries)?),
                );
            }
            if let Some(t) = Throttle::from_kib_per_sec(p.speed) {
                throttles.insert(
                    p.name.clone(),
                    Arc::new(t.shared_as(&p.name, speed.clone())),
                );
            }
        }
        Ok(Policies {
            by_name,
            reversed,
            throttles,
        })
    }

    /// The policy a job runs under, in the direction it names (`Job::source`); `None` when this
    /// worker has no such policy or direction.
    pub fn for_job(&self, job: &Job) -> Option<&Arc<PreparedPolicy>> {
        let forward = self.by_name.get(&job.policy)?;
        let Some(source) = job.source.as_deref() else {
            return Some(forward);
        };
        [Some(forward), self.reversed.get(&job.policy)]
            .into_iter()
            .flatten()
            .find(|p| p.policy.src_registry.name == source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use serde_json::json;

    fn policies() -> Policies {
        let policy = |name: &str, extra: serde_json::Value| {
            let mut p = json!({
                "name": name,
                "src_registry": {"name": "eu"},
                "dest_registry": {"name": "us"},
                "trigger": {"type": "event_based"},
            });
            for (k, v) in extra.as_object().unwrap() {
                p[k] = v.clone();
            }
            p
        };
        let value = json!({
            "registries": [
                {"name": "eu", "url": "https://eu.example"},
                {"name": "us", "url": "https://us.example"}
            ],
            "policies": [
                policy("one-way", json!({})),
                policy("both", json!({"mode": "bidirectional", "speed": 100})),
                policy("off", json!({"enabled": false})),
            ]
        });
        let config = Config::from_slice(&serde_json::to_vec(&value).unwrap(), "test").unwrap();
        let registries = Registries::from_config(&config).unwrap();
        Policies::new(&config, &registries, &SharedSpeedSlot::default()).unwrap()
    }

    fn job(policy: &str, source: Option<&str>) -> Job {
        Job {
            source: source.map(str::to_string),
            ..Job::new(policy, EventKind::Push, "library/app", "v1")
        }
    }

    fn source_of(policies: &Policies, job: &Job) -> Option<String> {
        policies
            .for_job(job)
            .map(|p| p.policy.src_registry.name.clone())
    }

    #[test]
    fn a_job_without_a_source_runs_in_the_policys_own_direction() {
        let p = policies();
        assert_eq!(source_of(&p, &job("one-way", None)).as_deref(), Some("eu"));
        assert_eq!(source_of(&p, &job("both", None)).as_deref(), Some("eu"));
    }

    #[test]
    fn a_job_naming_the_destination_as_source_runs_a_bidirectional_policy_reversed() {
        let p = policies();
        assert_eq!(
            source_of(&p, &job("both", Some("us"))).as_deref(),
            Some("us")
        );
        assert_eq!(
            source_of(&p, &job("both", Some("eu"))).as_deref(),
            Some("eu")
        );
    }

    #[test]
    fn a_job_finds_no_policy_for_a_direction_or_policy_this_set_lacks() {
        let p = policies();
        assert_eq!(source_of(&p, &job("one-way", Some("us"))), None);
        assert_eq!(source_of(&p, &job("off", None)), None);
        assert_eq!(source_of(&p, &job("missing", None)), None);
    }

    #[test]
    fn only_enabled_policies_are_prepared_and_only_those_with_a_speed_are_throttled() {
        let p = policies();
        let mut names: Vec<&String> = p.by_name.keys().collect();
        names.sort_unstable();
        assert_eq!(names, ["both", "one-way"]);
        assert!(p.reversed.contains_key("both") && !p.reversed.contains_key("one-way"));
        assert_eq!(p.throttles.keys().collect::<Vec<_>>(), ["both"]);
    }
}
