//! OpenTelemetry tracing: exports Ferry's spans by OTLP (http/protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and carries the
//! W3C trace context from a registry event to the jobs it causes ([`current_traceparent`] when a
//! webhook becomes jobs, [`set_parent`] when a worker runs one), so that a push and its
//! replication are one trace even across processes and a Redis queue.
//!
//! Invariants: without an endpoint (or with `OTEL_SDK_DISABLED=true`) nothing is installed,
//! [`current_traceparent`] returns `None` and [`set_parent`] does nothing; a bad endpoint or
//! protocol never stops the process (the caller logs the [`TelemetryError`] and runs without
//! export); a malformed traceparent is ignored; only Ferry's own `info` spans are exported (never
//! the HTTP client's, so exporting cannot feed itself), whatever `FERRY_LOG` says; dropping the
//! [`Telemetry`] guard flushes the batch of pending spans and shuts the exporter down.
use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The W3C header (and carrier key) holding the trace context.
const TRACEPARENT: &str = "traceparent";
const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const PROTOCOL_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];

/// Why OTLP export could not be set up (the process then runs without it).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{var}={value:?} is not an http(s) URL: {reason}")]
    Endpoint {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("{var}={value:?}: only http/protobuf is supported")]
    Protocol { var: &'static str, value: String },
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The OTLP pipeline, or nothing when export is off. Keep it alive until the process exits:
/// dropping it (or [`Telemetry::shutdown`]) flushes pending spans and stops the exporter.
#[must_use = "dropping the guard stops trace export"]
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// No export.
    pub fn disabled() -> Telemetry {
        Telemetry::default()
    }

    /// Sets up OTLP export from the standard environment variables: the endpoint
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, else `OTEL_EXPORTER_OTLP_ENDPOINT` +
    /// `/v1/traces`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*`,
    /// `OTEL_TRACES_SAMPLER`, `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME`
    /// (`default_service_name` when unset). Disabled when no endpoint is set.
    pub fn from_env(default_service_name: &str) -> Result<Telemetry, TelemetryError> {
        if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(Telemetry::disabled());
        }
        let Some(endpoint) = traces_endpoint(|var| std::env::var(var).ok())? else {
            return Ok(Telemetry::disabled());
        };
        for var in PROTOCOL_VARS {
            match std::env::var(var) {
                Ok(value) if !value.trim().is_empty() && value.trim() != "http/protobuf" => {
                    return Err(TelemetryError::Protocol { var, value });
                }
                _ => {}
            }
        }
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .build()?;
        let detected = opentelemetry_sdk::Resource::builder().build();
        let named = detected
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .is_some_and(|name| name.as_str() != "unknown_service");
        let resource = if named {
            detected
        } else {
            opentelemetry_sdk::Resource::builder()
                .with_service_name(default_service_name.to_string())
                .build()
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(Telemetry {
            provider: Some(provider),
        })
    }

    /// Whether spans are exported.
    pub fn is_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// The `tracing` layer that turns Ferry's spans into OTel spans; `None` when disabled.
    pub fn layer<S>(&self) -> Option<impl Layer<S>>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let tracer = self.provider.as_ref()?.tracer("ferry");
        let only_ferry = tracing_subscriber::filter::Targets::new()
            .with_target("ferry", tracing::Level::INFO)
            .with_target("ferry_replicator", tracing::Level::INFO)
            .with_target("ferry_agent", tracing::Level::INFO);
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(only_ferry),
        )
    }

    /// Flushes pending spans and stops the exporter (also done on drop).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                tracing::warn!(%error, "cannot flush the remaining trace spans");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The traces endpoint from the environment (`env` looks a variable up), `None` when none is set.
fn traces_endpoint(env: impl Fn(&str) -> Option<String>) -> Result<Option<String>, TelemetryError> {
    let set = |var| env(var).filter(|v| !v.trim().is_empty());
    let (var, value, endpoint) = if let Some(value) = set(TRACES_ENDPOINT_VAR) {
        (TRACES_ENDPOINT_VAR, value.clone(), value.trim().to_string())
    } else if let Some(value) = set(ENDPOINT_VAR) {
        let base = value.trim().trim_end_matches('/');
        (ENDPOINT_VAR, value.clone(), format!("{base}/v1/traces"))
    } else {
        return Ok(None);
    };
    let bad = |reason: String| TelemetryError::Endpoint {
        var,
        value: value.clone(),
        reason,
    };
    let url = url::Url::parse(&endpoint).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(bad("expected http://host[:port][/path]".into()));
    }
    // The exporter parses it again as an `http::Uri`; reject here what it would turn into its
    // default endpoint instead.
    endpoint
        .parse::<axum::http::Uri>()
        .map_err(|e| bad(e.to_string()))?;
    Ok(Some(endpoint))
}

/// The W3C `traceparent` of the current span, when it is part of an exported trace; `None` when
/// OTel is not enabled or there is no current span.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the remote span named by `traceparent`. Must be called before the span
/// is first entered. Returns whether the parent was set: `false` for a malformed traceparent,
/// without OTel, or for a span already started.
pub fn set_parent(span: &tracing::Span, traceparent: &str) -> bool {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.trim().to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if !cx.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(cx).is_ok()
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceContextExt as _, TraceId};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Runs `f` with an OTel layer that exports nowhere.
    fn with_otel<T>(f: impl FnOnce() -> T) -> T {
        let telemetry = Telemetry {
            provider: Some(SdkTracerProvider::builder().build()),
        };
        let subscriber = tracing_subscriber::registry().with(telemetry.layer());
        tracing::subscriber::with_default(subscriber, f)
    }

    fn trace_id(span: &tracing::Span) -> TraceId {
        span.context().span().span_context().trace_id()
    }

    #[test]
    fn traceparent_round_trips_from_webhook_span_to_job_span() {
        with_otel(|| {
            let webhook = tracing::info_span!("webhook");
            let traceparent = webhook
                .in_scope(current_traceparent)
                .expect("a traceparent inside an exported span");
            let webhook_trace = trace_id(&webhook);
            assert_ne!(webhook_trace, TraceId::INVALID);
            assert!(
                traceparent.starts_with(&format!("00-{webhook_trace}-")),
                "{traceparent}"
            );

            // A job span created elsewhere (no tracing parent) joins the webhook's trace.
            let job = tracing::info_span!(parent: None, "job");
            assert!(set_parent(&job, &traceparent));
            assert_eq!(trace_id(&job), webhook_trace);
            let job_traceparent = job.in_scope(current_traceparent).unwrap();
            assert_ne!(job_traceparent, traceparent, "the job is a span of its own");

            // Without the traceparent it would have started a trace of its own.
            let other = tracing::info_span!(parent: None, "job");
            assert_ne!(trace_id(&other), webhook_trace);
        });
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        with_otel(|| {
            for bad in [
                "",
                "garbage",
                "00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-00f067aa0ba902b7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra-éé",
            ] {
                let job = tracing::info_span!("job");
                assert!(!set_parent(&job, bad), "{bad:?} was accepted");
                let id = trace_id(&job);
                assert_ne!(id, TraceId::INVALID, "{bad:?}: the span still traces");
                assert_ne!(
                    id.to_string(),
                    "4bf92f3577b34da6a3ce929d0e0e4736",
                    "{bad:?}"
                );
            }
            // A well-formed one is taken (the control for the cases above).
            let job = tracing::info_span!("job");
            assert!(set_parent(
                &job,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            ));
            assert_eq!(
                trace_id(&job).to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
        });
    }

    #[test]
    fn without_otel_nothing_is_carried() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("webhook");
            assert_eq!(span.in_scope(current_traceparent), None);
            assert!(!set_parent(
                &span,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            ));
        });
        assert_eq!(current_traceparent(), None);
    }

    #[test]
    fn endpoints_come_from_the_standard_variables() {
        let resolve = |vars: &[(&str, &str)]| {
            let vars: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            traces_endpoint(|var| vars.get(var).cloned())
        };
        assert_eq!(resolve(&[]).unwrap(), None);
        assert_eq!(resolve(&[(ENDPOINT_VAR, " ")]).unwrap(), None);
        assert_eq!(
            resolve(&[(ENDPOINT_VAR, "http://otel:4318")]).unwrap(),
            Some("http://otel:4318/v1/traces".into())
        );
        assert_eq!(
            resolve(&[(ENDPOINT_VAR, "https://otel.example/prefix/")]).unwrap(),
            Some("https://otel.example/prefix/v1/traces".into())
        );
        assert_eq!(
            resolve(&[
                (ENDPOINT_VAR, "http://ignored:4318"),
                (TRACES_ENDPOINT_VAR, "http://otel:4318/custom")
            ])
            .unwrap(),
            Some("http://otel:4318/custom".into())
        );
        for bad in [
            "otel:4318",
            "localhost",
            "ftp://otel",
            "http://",
            "not a url",
        ] {
            let error = resolve(&[(ENDPOINT_VAR, bad)]).expect_err(bad);
            assert!(error.to_string().contains(ENDPOINT_VAR), "{bad}: {error}");
        }
    }

    #[test]
    fn a_span_already_started_keeps_its_parent() {
        with_otel(|| {
            let job = tracing::info_span!("job");
            let before = job.in_scope(|| trace_id(&tracing::Span::current()));
            assert!(!set_parent(
                &job,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            ));
            assert_eq!(trace_id(&job), before);
        });
    }
}
