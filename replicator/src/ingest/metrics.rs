//! Prometheus metrics of the ingest path, registered in the process's registry (exported at
//! `/metrics` by [`crate::runtime::ops`]).
//!
//! - `ferry_events_total{registry,kind,outcome}`: notifications by outcome — `matched` (every job
//!   of the event is enqueued), `unmatched` (no policy covers it), `queue_unavailable` (the batch
//!   failed and will be re-sent), or an [`IgnoreReason`](super::IgnoreReason) (`ignored_action`,
//!   `ignored_blob`, `ignored_own_write`, `ignored_child_manifest`).
//! - `ferry_webhook_requests_total{endpoint,code}`: webhook requests by endpoint
//!   (`distribution`/`harbor`) and HTTP status.
//!
//! Invariant: label values come from bounded sets (configured registry names — or
//! `unrecognised` for a body without `?registry=` whose sender was not recognised and that held
//! nothing to act on —, fixed kinds and outcomes, status codes); never a tag, digest, host or
//! repository.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::labels::EventLabels;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    code: String,
}

/// The ingest metrics.
#[derive(Debug, Clone)]
pub struct IngestMetrics {
    events: Family<EventLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
}

impl Default for IngestMetrics {
    /// Metrics registered nowhere (counted, not exported).
    fn default() -> Self {
        IngestMetrics::register(&mut Registry::default())
    }
}

impl IngestMetrics {
    /// Registers the ingest metrics in the process's `registry`.
    pub fn register(registry: &mut Registry) -> IngestMetrics {
        let events = Family::<EventLabels, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
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
        IngestMetrics { events, requests }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_operator_metrics() {
        let mut registry = Registry::default();
        let m = IngestMetrics::register(&mut registry);
        m.event("eu", "push", "matched");
        m.event("eu", "push", "matched");
        m.request("distribution", 200);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"ferry_events_total{registry="eu",kind="push",outcome="matched"} 2"#,
            r#"ferry_webhook_requests_total{endpoint="distribution",code="200"} 1"#,
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
