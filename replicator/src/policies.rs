//! The policies a worker runs jobs with: every enabled policy of a config, prepared once, in both
//! directions when bidirectional, with its throttle.
//!
//! Invariants: built without network I/O; replaced as a whole on reload (running jobs keep the set
//! they started with); a job names its direction by its source registry (`Job::source`), and a
//! job naming a direction this set does not have finds no policy.
use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::queue::Job;
use crate::sync::{PreparedPolicy, Registries, SyncError};
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
