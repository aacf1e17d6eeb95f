//! The pause cache: which policies are paused, read from the queue at most every [`PAUSED_TTL`].
//!
//! Invariants: a pause takes effect on every worker within [`PAUSED_TTL`] (the admin API's
//! PausePolicy waits that long before it answers); a queue error counts as "not paused", so the
//! job runs.
use super::Worker;
use std::time::Duration;

/// How long a worker trusts its list of paused policies: a pause takes effect on every worker
/// within this time (the admin API's PausePolicy answers only after it).
pub const PAUSED_TTL: Duration = Duration::from_secs(1);

impl Worker {
    /// Whether `policy` is paused, from a list read at most every [`PAUSED_TTL`] (a queue error
    /// counts as "not paused": the job runs).
    pub(super) async fn is_paused(&self, policy: &str) -> bool {
        let fresh = {
            let cached = crate::locks::lock(&self.paused);
            cached
                .as_ref()
                .filter(|(at, _)| at.elapsed() < PAUSED_TTL)
                .map(|(_, set)| set.contains(policy))
        };
        if let Some(paused) = fresh {
            return paused;
        }
        match self.queue.paused().await {
            Ok(set) => {
                let paused = set.contains(policy);
                *crate::locks::lock(&self.paused) = Some((tokio::time::Instant::now(), set));
                paused
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the paused policies; running the job");
                false
            }
        }
    }
}
