//! Prometheus metrics of the ingest path, exported at `/metrics` in the OpenMetrics text format.
//!
//! - `ferry_events_total{registry,kind,outcome}`: notifications by outcome — `matched` (every job
//!   of the event is enqueued), `unmatched` (no policy covers it), `queue_unavailable` (the batch
//!   failed and will be re-sent), or an [`IgnoreReason`](super::IgnoreReason) (`ignored_action`,
//!   `ignored_blob`, `ignored_own_write`, `ignored_child_manifest`).
//! - `ferry_webhook_requests_total{endpoint,code}`: webhook requests by endpoint
//!   (`distribution`/`harbor`) and HTTP status.
//! - `ferry_queue_depth`, `ferry_queue_oldest_seconds`, `ferry_dead_letters`: gauges refreshed from
//!   [`JobQueue::stats`](crate::queue::JobQueue::stats) on every scrape.
//!
//! Invariant: label values come from bounded sets (configured registry names, fixed kinds and
//! outcomes, status codes); never a tag, digest or repository.
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::labels::EventLabels;
use crate::queue::QueueStats;

/// Content type of [`IngestMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    code: String,
}

/// The ingest metrics and the registry that exports them.
#[derive(Debug)]
pub struct IngestMetrics {
    registry: Registry,
    events: Family<EventLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    queue_depth: Gauge,
    queue_oldest_seconds: Gauge<f64, AtomicU64>,
    dead_letters: Gauge,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        IngestMetrics::new(Registry::default())
    }
}

impl IngestMetrics {
    /// Registers the ingest metrics in `registry` (which may already hold other metrics of the
    /// process; `/metrics` exports all of them).
    pub fn new(mut registry: Registry) -> IngestMetrics {
        let events = Family::<EventLabels, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let queue_depth = Gauge::default();
        let queue_oldest_seconds = Gauge::<f64, AtomicU64>::default();
        let dead_letters = Gauge::default();
        registry.register(
            "ferry_events",
            "Registry notifications received, by outcome",
            events.clone(),
        );
        registry.register(
            "ferry_webhook_requests",
            "Webhook requests, by endpoint and HTTP status",
            requests.clone(),
        );
        registry.register(
            "ferry_queue_depth",
            "Jobs waiting in the queue (ready or delayed, not claimed)",
            queue_depth.clone(),
        );
        registry.register(
            "ferry_queue_oldest_seconds",
            "Age of the oldest waiting job",
            queue_oldest_seconds.clone(),
        );
        registry.register(
            "ferry_dead_letters",
            "Jobs in the dead-letter list",
            dead_letters.clone(),
        );
        IngestMetrics {
            registry,
            events,
            requests,
            queue_depth,
            queue_oldest_seconds,
            dead_letters,
        }
    }

    /// Counts one notification.
    pub fn event(&self, registry: &str, kind: &str, outcome: &str) {
        self.events
            .get_or_create(&EventLabels {
                registry: registry.to_string(),
                kind: kind.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts one webhook request.
    pub fn request(&self, endpoint: &str, code: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    /// Refreshes the queue gauges.
    pub fn set_queue(&self, stats: &QueueStats) {
        self.queue_depth
            .set(i64::try_from(stats.depth).unwrap_or(i64::MAX));
        self.queue_oldest_seconds
            .set(stats.oldest_age_ms as f64 / 1000.0);
        self.dead_letters
            .set(i64::try_from(stats.dead_letters).unwrap_or(i64::MAX));
    }

    /// Every metric of the registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String cannot fail; a metric's own encoder might.
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_operator_metrics() {
        let m = IngestMetrics::default();
        m.event("eu", "push", "matched");
        m.event("eu", "push", "matched");
        m.request("distribution", 200);
        m.set_queue(&QueueStats {
            depth: 3,
            in_flight: 1,
            delayed: 0,
            dead_letters: 2,
            oldest_age_ms: 1500,
        });
        let text = m.encode();
        for line in [
            r#"ferry_events_total{registry="eu",kind="push",outcome="matched"} 2"#,
            r#"ferry_webhook_requests_total{endpoint="distribution",code="200"} 1"#,
            "ferry_queue_depth 3",
            "ferry_queue_oldest_seconds 1.5",
            "ferry_dead_letters 2",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
