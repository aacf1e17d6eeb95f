//! Prometheus metrics of the requests Ferry sends to registries, counted where every request of a
//! [`RegistryClient`](super::RegistryClient) goes out (`client::RegistryClient::dispatch`):
//!
//! - `ferry_registry_requests_total{registry,method,code}`: HTTP requests by the config's registry
//!   name, HTTP method and outcome — the status code the registry answered (`200`, `404`, `429`,
//!   `503`, …) or, when no answer came, `timeout` (connect or read timeout) or `error` (any other
//!   transport failure: refused connection, reset, TLS, a refused redirect).
//! - `ferry_registry_request_duration_seconds{registry,method}`: time from sending a request to its
//!   answer's headers (or its failure); a blob body streamed afterwards is not part of it.
//!
//! What counts as one request: every attempt, so a `GET` retried after a 503 counts twice (once
//! `503`, once with the status of the retry), and a request answered `401` and repeated with
//! credentials counts twice too. **Token requests** to the registry's bearer-token realm are
//! counted under the registry's name as `GET`s: they are sent on the registry's behalf, and a realm
//! that fails or rate-limits (Docker Hub's `auth.docker.io`) stops replication like the registry
//! itself would. Harbor label lookups (`/api/v2.0/…`) count too.
//!
//! Invariant: labels are bounded — configured registry names, the few methods Ferry sends, status
//! codes and two transport outcomes; never a repository, tag or digest.
//!
//! From start-up, for every configured registry and every method in [`METHODS`], the duration
//! histogram and the counter's `429` and `error` outcomes (what the alert rules watch) are exported
//! at 0; other codes appear when first answered.
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The HTTP methods Ferry sends to registries.
pub const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// `code` of a request that got no answer because it timed out.
pub const TIMEOUT: &str = "timeout";
/// `code` of a request that got no answer for another reason (connection refused or reset, TLS,
/// a refused redirect).
pub const ERROR: &str = "error";

/// `{registry, method, code}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    registry: String,
    method: String,
    code: String,
}

/// `{registry, method}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    registry: String,
    method: String,
}

type DurationFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// Request durations: 5 ms … ~82 s, doubling.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// The registry request metrics. Cheap to clone: clones count into the same families.
#[derive(Debug, Clone)]
pub struct RegistryMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: DurationFamily,
}

impl Default for RegistryMetrics {
    /// Metrics registered nowhere (counted, not exported): clients of one-shot commands and tests.
    fn default() -> Self {
        RegistryMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
        }
    }
}

/// How a request ended, as `code` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The registry answered with this status.
    Status(u16),
    /// No answer: a timeout.
    Timeout,
    /// No answer for another reason.
    Error,
}

impl Outcome {
    /// The outcome of a request that failed with `error` before an answer came.
    pub fn of_error(error: &reqwest::Error) -> Outcome {
        if error.is_timeout() {
            Outcome::Timeout
        } else {
            Outcome::Error
        }
    }

    fn code(self) -> String {
        match self {
            Outcome::Status(status) => status.to_string(),
            Outcome::Timeout => TIMEOUT.to_string(),
            Outcome::Error => ERROR.to_string(),
        }
    }
}

impl RegistryMetrics {
    /// Registers the registry request metrics in the process's `registry`.
    pub fn register(registry: &mut Registry) -> RegistryMetrics {
        let m = RegistryMetrics::default();
        registry.register(
            "ferry_registry_requests",
            "HTTP requests sent to registries (and their token realms), by registry, method and status code (or timeout/error when no answer came)",
            m.requests.clone(),
        );
        registry.register(
            "ferry_registry_request_duration_seconds",
            "Time from sending a registry request to its answer's headers, by registry and method",
            m.durations.clone(),
        );
        m
    }

    /// Exports registry `name`'s series at 0 (see the module doc for which): creating a series
    /// is what exports it.
    pub fn init(&self, name: &str) {
        for method in METHODS {
            self.durations.get_or_create_owned(&MethodLabels {
                registry: name.to_string(),
                method: method.to_string(),
            });
            for outcome in [Outcome::Status(429), Outcome::Error] {
                self.requests.get_or_create_owned(&RequestLabels {
                    registry: name.to_string(),
                    method: method.to_string(),
                    code: outcome.code(),
                });
            }
        }
    }

    /// Counts one request of registry `name` that ended with `outcome` after `elapsed`.
    pub fn request(&self, name: &str, method: &str, outcome: Outcome, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                registry: name.to_string(),
                method: method.to_string(),
                code: outcome.code(),
            })
            .inc();
        self.durations
            .get_or_create(&MethodLabels {
                registry: name.to_string(),
                method: method.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn counts_requests_by_registry_method_and_code_and_times_them_by_method() {
        let mut registry = Registry::default();
        let m = RegistryMetrics::register(&mut registry);
        m.request("eu", "GET", Outcome::Status(200), Duration::from_millis(3));
        m.request("eu", "GET", Outcome::Status(200), Duration::from_millis(30));
        m.request("eu", "PUT", Outcome::Timeout, Duration::from_secs(1));
        let text = encode(&registry);
        for line in [
            r#"ferry_registry_requests_total{registry="eu",method="GET",code="200"} 2"#,
            r#"ferry_registry_requests_total{registry="eu",method="PUT",code="timeout"} 1"#,
            r#"ferry_registry_request_duration_seconds_count{registry="eu",method="GET"} 2"#,
            r#"ferry_registry_request_duration_seconds_bucket{le="0.005",registry="eu",method="GET"} 1"#,
            r#"ferry_registry_request_duration_seconds_count{registry="eu",method="PUT"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn a_configured_registry_exports_its_429_and_error_counts_and_durations_at_zero() {
        let mut registry = Registry::default();
        let m = RegistryMetrics::register(&mut registry);
        m.init("us");
        let text = encode(&registry);
        for method in METHODS {
            for line in [
                format!(
                    r#"ferry_registry_requests_total{{registry="us",method="{method}",code="429"}} 0"#
                ),
                format!(
                    r#"ferry_registry_requests_total{{registry="us",method="{method}",code="error"}} 0"#
                ),
                format!(
                    r#"ferry_registry_request_duration_seconds_count{{registry="us",method="{method}"}} 0"#
                ),
            ] {
                assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
            }
        }
    }
}
