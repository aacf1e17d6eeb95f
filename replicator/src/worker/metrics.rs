//! The worker's Prometheus metrics (DESIGN.md "Metrics an operator alerts on"): jobs by outcome,
//! replication lag, bytes and blobs moved, no-op jobs, conflict decisions and tags held back by
//! a gate (`ferry_gate_blocked_total{policy,gate}`).
//!
//! Invariant: labels are bounded — policy names, job kinds and fixed outcomes; never a tag or
//! digest. Every policy the worker starts with is exported at 0 from start-up
//! ([`WorkerMetrics::init_policy`]: every kind and outcome of `ferry_jobs_total`, both outcomes
//! of `ferry_conflicts_total`, …), so that rates and alerts see zeros rather than absent series.
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::event::EventKind;
use crate::labels::{JobLabels, PolicyDirection, PolicyGate, PolicyLabel, PolicyOutcome};
use crate::replicate::gates::Gate;
use crate::transfer::StatsSnapshot;

/// The worker's Prometheus metrics (DESIGN.md "Metrics an operator alerts on"). Labels are
/// bounded: policy names, job kinds and fixed outcomes; never a tag or digest.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    jobs: Family<JobLabels, Counter>,
    lag: Histogram,
    bytes: Family<PolicyDirection, Counter>,
    blobs: Family<PolicyOutcome, Counter>,
    conflicts: Family<PolicyOutcome, Counter>,
    noops: Family<PolicyLabel, Counter>,
    gate_blocked: Family<PolicyGate, Counter>,
}

impl Default for WorkerMetrics {
    /// Metrics that are counted but not exported (tests, embedded use without `/metrics`).
    fn default() -> Self {
        WorkerMetrics {
            jobs: Family::default(),
            lag: Histogram::new(exponential_buckets(0.05, 2.0, 16)),
            bytes: Family::default(),
            blobs: Family::default(),
            conflicts: Family::default(),
            noops: Family::default(),
            gate_blocked: Family::default(),
        }
    }
}

/// How a job ends, as `ferry_jobs_total{outcome}` says it (`settle` counts each).
pub(super) const JOB_OUTCOMES: [&str; 5] = [
    "succeeded",
    "failed",
    "dead_lettered",
    "stopped",
    "released",
];

/// What became of a blob, as `ferry_blobs_total{outcome}` says it.
const BLOB_OUTCOMES: [&str; 3] = ["copied", "mounted", "skipped"];

/// How a bidirectional conflict was decided, as `ferry_conflicts_total{outcome}` says it.
pub(super) const CONFLICT_KEPT: &str = "kept";
pub(super) const CONFLICT_REPLACED: &str = "replaced";
/// A newer push landed on the destination during the copy, which overwrote it; it was put back.
pub(super) const CONFLICT_RESTORED: &str = "restored";

/// Which way bytes moved, as `ferry_bytes_total{direction}` says it.
const TO_DESTINATION: &str = "to_destination";

impl WorkerMetrics {
    /// Registers the worker metrics in `registry`.
    pub fn register(registry: &mut Registry) -> WorkerMetrics {
        // Lag buckets: 50 ms … ~27 min.
        let m = WorkerMetrics::default();
        registry.register(
            "ferry_jobs",
            "Jobs finished, by policy, kind and outcome",
            m.jobs.clone(),
        );
        registry.register(
            "ferry_replication_lag_seconds",
            "Event time to the tag being visible on the destination",
            m.lag.clone(),
        );
        registry.register(
            "ferry_bytes",
            "Blob bytes moved, by policy and direction",
            m.bytes.clone(),
        );
        registry.register(
            "ferry_blobs",
            "Blobs handled, by policy and outcome (skipped, mounted, copied)",
            m.blobs.clone(),
        );
        registry.register(
            "ferry_noop_jobs",
            "Push jobs that found every destination already holding the source digest (duplicate events, echoes of Ferry's own writes)",
            m.noops.clone(),
        );
        registry.register(
            "ferry_conflicts",
            "Bidirectional conflicts decided, by policy and outcome (kept: the destination's newer push stayed; replaced: the incoming newer push won)",
            m.conflicts.clone(),
        );
        registry.register(
            "ferry_gate_blocked",
            "Tags a gate held back (per destination task), by policy and gate (only_signed, max_severity)",
            m.gate_blocked.clone(),
        );
        m
    }

    /// Exports `policy`'s series at 0: jobs of every kind and outcome, bytes, blobs of every
    /// outcome, no-op jobs, conflicts of both outcomes and tags held back by each gate (also for
    /// a policy without gates, as conflicts for one that is not bidirectional: dashboards and
    /// alerts see zeros, and a gate added through the admin API needs no new series).
    pub fn init_policy(&self, policy: &crate::policy::Policy) {
        for gate in Gate::ALL {
            self.gate_blocked.get_or_create_owned(&PolicyGate {
                policy: policy.name.clone(),
                gate: gate.as_str().into(),
            });
        }
        self.init_policy_name(&policy.name);
    }

    fn init_policy_name(&self, policy: &str) {
        for kind in [EventKind::Push, EventKind::Delete] {
            for outcome in JOB_OUTCOMES {
                self.jobs.get_or_create_owned(&JobLabels {
                    policy: policy.into(),
                    kind: kind.as_str().into(),
                    outcome: outcome.into(),
                });
            }
        }
        self.bytes.get_or_create_owned(&PolicyDirection {
            policy: policy.into(),
            direction: TO_DESTINATION.into(),
        });
        let outcome = |o: &str| PolicyOutcome {
            policy: policy.into(),
            outcome: o.into(),
        };
        for o in BLOB_OUTCOMES {
            self.blobs.get_or_create_owned(&outcome(o));
        }
        for o in [CONFLICT_KEPT, CONFLICT_REPLACED, CONFLICT_RESTORED] {
            self.conflicts.get_or_create_owned(&outcome(o));
        }
        self.noops.get_or_create_owned(&PolicyLabel {
            policy: policy.into(),
        });
    }

    pub(super) fn conflict(&self, policy: &str, outcome: &str) {
        self.conflicts
            .get_or_create(&PolicyOutcome {
                policy: policy.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A tag a gate held back on one destination.
    pub(super) fn gate_blocked(&self, policy: &str, gate: Gate) {
        self.gate_blocked
            .get_or_create(&PolicyGate {
                policy: policy.into(),
                gate: gate.as_str().into(),
            })
            .inc();
    }

    /// A push job that found every destination already holding the source digest.
    pub(super) fn noop(&self, policy: &str) {
        self.noops
            .get_or_create(&PolicyLabel {
                policy: policy.into(),
            })
            .inc();
    }

    /// The replication lag of a copy, event time to the tag being visible on the destination.
    pub(super) fn lag(&self, lag_ms: u64) {
        self.lag.observe(lag_ms as f64 / 1000.0);
    }

    pub(super) fn job(&self, policy: &str, kind: EventKind, outcome: &str) {
        let kind = kind.as_str();
        self.jobs
            .get_or_create(&JobLabels {
                policy: policy.into(),
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub(super) fn transfer(&self, policy: &str, t: &StatsSnapshot) {
        let p = |o: &str| PolicyOutcome {
            policy: policy.into(),
            outcome: o.into(),
        };
        self.bytes
            .get_or_create(&PolicyDirection {
                policy: policy.into(),
                direction: TO_DESTINATION.into(),
            })
            .inc_by(t.bytes_copied);
        self.blobs
            .get_or_create(&p("copied"))
            .inc_by(t.blobs_copied);
        self.blobs
            .get_or_create(&p("mounted"))
            .inc_by(t.blobs_mounted);
        self.blobs
            .get_or_create(&p("skipped"))
            .inc_by(t.blobs_skipped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_is_exported_at_zero_for_every_kind_and_outcome_before_its_first_job() {
        let mut registry = Registry::default();
        let m = WorkerMetrics::register(&mut registry);
        let policy: crate::policy::Policy = serde_json::from_value(serde_json::json!({
            "name": "eu-to-us", "src_registry": {"name": "eu"}, "dest_registry": {"name": "us"}
        }))
        .unwrap();
        m.init_policy(&policy);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let mut expected = Vec::new();
        for kind in ["push", "delete"] {
            for outcome in JOB_OUTCOMES {
                expected.push(format!(
                    r#"ferry_jobs_total{{policy="eu-to-us",kind="{kind}",outcome="{outcome}"}} 0"#
                ));
            }
        }
        for outcome in [CONFLICT_KEPT, CONFLICT_REPLACED, CONFLICT_RESTORED] {
            expected.push(format!(
                r#"ferry_conflicts_total{{policy="eu-to-us",outcome="{outcome}"}} 0"#
            ));
        }
        for outcome in BLOB_OUTCOMES {
            expected.push(format!(
                r#"ferry_blobs_total{{policy="eu-to-us",outcome="{outcome}"}} 0"#
            ));
        }
        expected.push(
            r#"ferry_bytes_total{policy="eu-to-us",direction="to_destination"} 0"#.to_string(),
        );
        expected.push(r#"ferry_noop_jobs_total{policy="eu-to-us"} 0"#.to_string());
        for gate in ["only_signed", "max_severity"] {
            expected.push(format!(
                r#"ferry_gate_blocked_total{{policy="eu-to-us",gate="{gate}"}} 0"#
            ));
        }
        for line in expected {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
