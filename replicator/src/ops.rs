//! The operator endpoints every Ferry process serves: `GET /healthz` (200 while the queue answers,
//! 503 otherwise) and `GET /metrics` (every metric of the process, OpenMetrics text; queue gauges
//! refreshed on each scrape).
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::ingest::metrics::{IngestMetrics, CONTENT_TYPE};
use crate::queue::JobQueue;

type OpsState = (Arc<dyn JobQueue>, Arc<IngestMetrics>);

/// `/healthz` and `/metrics` for a process whose metrics live in `metrics`' registry.
pub fn router(queue: Arc<dyn JobQueue>, metrics: Arc<IngestMetrics>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_handler))
        .with_state((queue, metrics))
}

async fn healthz(State((queue, metrics)): State<OpsState>) -> Response {
    match queue.stats().await {
        Ok(stats) => {
            metrics.set_queue(&stats);
            (StatusCode::OK, "ok\n").into_response()
        }
        Err(error) => {
            tracing::warn!(error = %error, "health check: queue unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("queue unavailable: {error}\n"),
            )
                .into_response()
        }
    }
}

async fn metrics_handler(State((queue, metrics)): State<OpsState>) -> Response {
    match queue.stats().await {
        Ok(stats) => metrics.set_queue(&stats),
        // The gauges keep their last values; /healthz reports the outage.
        Err(error) => tracing::debug!(error = %error, "metrics: queue stats unavailable"),
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode()).into_response()
}
