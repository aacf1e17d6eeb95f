//! The operator endpoints every Ferry process serves: `GET /healthz` (200 while the queue answers,
//! 503 otherwise) and `GET /metrics` (every metric of the process, OpenMetrics text; queue gauges
//! refreshed on each scrape).
//!
//! `/metrics` can require a bearer token ([`protect_metrics`]); `/healthz` stays open because
//! kubelet and load balancers probe it without credentials, and it reveals only "ok" or the
//! queue's outage.
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::ingest::metrics::{IngestMetrics, CONTENT_TYPE};
use crate::queue::JobQueue;
use crate::tokens::TokenSet;

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

/// `router` with `GET /metrics` answering 401 unless it carries `Authorization: Bearer <token>`
/// with one of `tokens` (compared in constant time); unchanged when `tokens` is empty. Other
/// routes are not affected.
pub fn protect_metrics(router: Router, tokens: TokenSet) -> Router {
    if tokens.is_empty() {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(
        Arc::new(tokens),
        require_metrics_token,
    ))
}

async fn require_metrics_token(
    State(tokens): State<Arc<TokenSet>>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = request.uri().path() != "/metrics"
        || request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::tokens::bearer)
            .is_some_and(|token| tokens.accepts(token));
    if allowed {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="ferry-metrics""#),
        )],
        "/metrics needs `Authorization: Bearer <metrics token>`\n",
    )
        .into_response()
}
