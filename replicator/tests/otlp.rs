//! OTLP traces from the real `ferry serve`: a registry push notification and the replication job
//! it causes arrive at an OTLP/HTTP collector as spans of one trace (the job a child of the
//! webhook request), flushed on SIGTERM.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::json;

const TOKEN: &str = "otlp-test-token";

type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

/// A fake OTLP/HTTP collector: decodes every `POST /v1/traces` (http/protobuf) it receives.
async fn start_collector() -> (String, Received) {
    async fn traces(
        State(received): State<Received>,
        headers: axum::http::HeaderMap,
        body: Bytes,
    ) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert_eq!(content_type, "application/x-protobuf");
        let request =
            ExportTraceServiceRequest::decode(body).expect("an ExportTraceServiceRequest");
        received.lock().unwrap().push(request);
        // An empty ExportTraceServiceResponse: full success.
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            Vec::new(),
        )
    }
    let received = Received::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(traces))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

/// Every span received, with the `service.name` of its resource.
fn spans(received: &Received) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for request in received.lock().unwrap().iter() {
        for resource_spans in &request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| attribute(&r.attributes, "service.name"))
                .unwrap_or_default()
                .to_string();
            for scope_spans in &resource_spans.scope_spans {
                for span in &scope_spans.spans {
                    out.push((service.clone(), span.clone()));
                }
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_webhook_and_its_job_are_one_trace() {
    let (collector, received) = start_collector().await;
    let listen = free_local_addr();
    let RegistryPair {
        src,
        dst,
        dir,
        config: cfg,
    } = registry_pair(
        Some(&listen),
        TOKEN,
        json!({"trigger": {"type": "event_based"}}),
    )
    .await;
    let mut serve = Serve::start(
        &cfg,
        &listen,
        TOKEN,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
            // No scheduled export while the test runs: the spans arrive only if SIGTERM flushes.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            // Logs at `warn` do not turn traces off.
            ("FERRY_LOG", "warn"),
        ],
        dir.path().join("serve.log"),
    )
    .await;

    push_image(dir.path(), 70, &src.host(), "team/app:v1").await;
    let arrived = eventually(Duration::from_secs(30), || async {
        manifest_status(&dst.url(), "team/app", "v1").await == 200
    })
    .await;
    assert!(
        arrived,
        "the push did not reach the destination:\n{}",
        serve.log()
    );
    assert!(
        spans(&received).is_empty(),
        "spans were exported before the shutdown flush"
    );

    let status = serve.terminate().await;
    assert!(status.success(), "{status}\n{}", serve.log());

    let spans = spans(&received);
    let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    let (service, job) = spans
        .iter()
        .find(|(_, s)| {
            s.name == "job"
                && attribute(&s.attributes, "repository") == Some("team/app")
                && attribute(&s.attributes, "reference") == Some("v1")
        })
        .unwrap_or_else(|| {
            panic!(
                "no job span for team/app:v1 among {names:?}\n{}",
                serve.log()
            )
        });
    assert_eq!(service, "ferry");
    assert_eq!(attribute(&job.attributes, "policy"), Some("test"));
    let webhook = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "webhook" && s.span_id == job.parent_span_id)
        .unwrap_or_else(|| {
            panic!(
                "the job's parent {} is not a received webhook span; spans: {names:?}",
                hex(&job.parent_span_id)
            )
        });
    assert_eq!(
        hex(&webhook.trace_id),
        hex(&job.trace_id),
        "webhook and job are one trace"
    );
    assert_eq!(job.trace_id.len(), 16);
    assert!(job.trace_id.iter().any(|b| *b != 0));
    assert_eq!(
        attribute(&webhook.attributes, "endpoint"),
        Some("distribution")
    );
}
