//! The worker's Prometheus metrics (DESIGN.md "Metrics an operator alerts on"): jobs by outcome,
//! replication lag, bytes and blobs moved, no-op jobs and conflict decisions.
//!
//! Invariant: labels are bounded — policy names, job kinds and fixed outcomes; never a tag or
//! digest.
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::event::EventKind;
use crate::labels::{JobLabels, PolicyDirection, PolicyLabel, PolicyOutcome};
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
        }
    }
}

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
        m
    }

    pub(super) fn conflict(&self, policy: &str, outcome: &str) {
        self.conflicts
            .get_or_create(&PolicyOutcome {
                policy: policy.into(),
                outcome: outcome.into(),
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
                direction: "to_destination".into(),
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
