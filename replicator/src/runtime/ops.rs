//! The operator endpoints every Ferry process serves: `GET /healthz` (200 while the queue answers,
//! 503 otherwise) and `GET /metrics` (every metric of the process, OpenMetrics text; the queue
//! gauges, the live worker count and the process's own resources — resident memory, open file
//! descriptors, live async tasks — refreshed on each scrape).
//!
//! `/metrics` can require a bearer token ([`protect_metrics`]); `/healthz` stays open because
//! kubelet and load balancers probe it without credentials, and it reveals only "ok" or the
//! queue's outage.
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::store::history::History;
use crate::store::queue::{JobQueue, QueueStats};
use crate::tokens::TokenSet;

/// Content type of [`ProcessMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The process's metrics registry, closed for registration: every part of the daemon registered
/// its families in it while it was built. Adds the queue gauges, refreshed from
/// [`JobQueue::stats`] on every scrape: `ferry_queue_depth`, `ferry_queue_oldest_seconds`,
/// `ferry_dead_letters`; and, in a daemon ([`ProcessMetrics::with_workers`]), `ferry_live_workers`.
/// The process's resources are read on every scrape too ([`ProcessMetrics::refresh_process`]):
/// `ferry_process_resident_bytes`, `ferry_process_open_fds`, `ferry_runtime_alive_tasks` — what a
/// leak would grow (the chaos soak samples them).
pub struct ProcessMetrics {
    registry: Registry,
    queue_depth: Gauge,
    queue_oldest_seconds: Gauge<f64, AtomicU64>,
    dead_letters: Gauge,
    resident_bytes: Gauge,
    open_fds: Gauge,
    alive_tasks: Gauge,
    /// `ferry_live_workers` and where it is counted: the region's worker heartbeats.
    live_workers: Option<(Gauge, Arc<dyn History>)>,
}

impl std::fmt::Debug for ProcessMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessMetrics")
            .field("registry", &self.registry)
            .field("counts_live_workers", &self.live_workers.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        ProcessMetrics::new(Registry::default())
    }
}

impl ProcessMetrics {
    /// Takes the process's `registry` (holding every other family) and adds the queue gauges.
    pub fn new(mut registry: Registry) -> ProcessMetrics {
        let queue_depth = Gauge::default();
        let queue_oldest_seconds = Gauge::<f64, AtomicU64>::default();
        let dead_letters = Gauge::default();
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
        let (resident_bytes, open_fds, alive_tasks) =
            (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register(
            "ferry_process_resident_bytes",
            "Resident memory of this process (VmRSS, read on each scrape)",
            resident_bytes.clone(),
        );
        registry.register(
            "ferry_process_open_fds",
            "File descriptors this process holds open (sockets included, counted on each scrape)",
            open_fds.clone(),
        );
        registry.register(
            "ferry_runtime_alive_tasks",
            "Async tasks alive in this process's runtime (counted on each scrape)",
            alive_tasks.clone(),
        );
        ProcessMetrics {
            registry,
            queue_depth,
            queue_oldest_seconds,
            dead_letters,
            resident_bytes,
            open_fds,
            alive_tasks,
            live_workers: None,
        }
    }

    /// Adds `ferry_live_workers`: the worker processes whose heartbeat in `history` (the region's
    /// shared state, so every process of the region sees them all) is live, counted on every
    /// scrape. Exported by every daemon, the agent included, so that "no live worker" can be
    /// alerted on from a process that is not a worker.
    pub fn with_workers(mut self, history: Arc<dyn History>) -> ProcessMetrics {
        let gauge = Gauge::default();
        self.registry.register(
            "ferry_live_workers",
            "Worker processes of the region with a live heartbeat (counted on each scrape)",
            gauge.clone(),
        );
        self.live_workers = Some((gauge, history));
        self
    }

    /// Refreshes `ferry_live_workers` (when exported); on an error it keeps its last value.
    pub async fn refresh_workers(&self) {
        let Some((gauge, history)) = &self.live_workers else {
            return;
        };
        match history.workers().await {
            Ok(workers) => {
                gauge.set(i64::try_from(workers.len()).unwrap_or(i64::MAX));
            }
            Err(error) => tracing::debug!(error = %error, "metrics: live workers unavailable"),
        }
    }

    /// Refreshes the process gauges from `/proc/self` (Linux; elsewhere they keep 0) and the
    /// runtime this is called on.
    pub fn refresh_process(&self) {
        if let Some(kib) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| vm_rss_kib(&status))
        {
            self.resident_bytes
                .set(i64::try_from(kib.saturating_mul(1024)).unwrap_or(i64::MAX));
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds
                .set(i64::try_from(fds.count()).unwrap_or(i64::MAX));
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.alive_tasks
                .set(i64::try_from(runtime.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
        }
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

    /// Every metric of the process in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String cannot fail; a metric's own encoder might.
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

type OpsState = (Arc<dyn JobQueue>, Arc<ProcessMetrics>);

/// `/healthz` and `/metrics` for a process whose metrics live in `metrics`' registry.
pub fn router(queue: Arc<dyn JobQueue>, metrics: Arc<ProcessMetrics>) -> Router {
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
    metrics.refresh_workers().await;
    metrics.refresh_process();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode()).into_response()
}

/// The `VmRSS:` line of a `/proc/<pid>/status`, in KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the family `name` (no labels) in `text`.
    fn gauge(text: &str, name: &str) -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scrape_reads_the_processs_memory_descriptors_and_live_tasks() {
        let m = ProcessMetrics::default();
        let before = m.encode();
        assert_eq!(
            gauge(&before, "ferry_runtime_alive_tasks"),
            0,
            "not read before a scrape"
        );
        let (stop, wait) = tokio::sync::oneshot::channel::<()>();
        let sleepers: Vec<_> = (0..5)
            .map(|_| tokio::spawn(async {}))
            .chain(std::iter::once(tokio::spawn(async move {
                let _ = wait.await;
            })))
            .collect();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        m.refresh_process();
        let text = m.encode();
        assert!(
            gauge(&text, "ferry_process_resident_bytes") > 1024 * 1024,
            "{text}"
        );
        let fds = gauge(&text, "ferry_process_open_fds");
        assert!(fds >= 4, "stdio and the file opened above: {text}");
        assert!(gauge(&text, "ferry_runtime_alive_tasks") >= 1, "{text}");
        drop(file);
        m.refresh_process();
        assert!(gauge(&m.encode(), "ferry_process_open_fds") < fds);
        let _ = stop.send(());
        for s in sleepers {
            s.await.unwrap();
        }
    }

    #[test]
    fn the_resident_size_is_read_from_the_vmrss_line() {
        let status = "Name:\tferry\nVmPeak:\t  9000 kB\nVmRSS:\t   18432 kB\nThreads:\t4\n";
        assert_eq!(vm_rss_kib(status), Some(18432));
        assert_eq!(vm_rss_kib("Name:\tferry\n"), None);
        assert_eq!(vm_rss_kib("VmRSS:\t lots kB\n"), None);
    }

    #[test]
    fn exports_the_queue_gauges_with_every_family_of_the_process() {
        let mut registry = Registry::default();
        let other = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register(
            "ferry_other",
            "A family another part registered",
            other.clone(),
        );
        other.inc();
        let m = ProcessMetrics::new(registry);
        m.set_queue(&QueueStats {
            depth: 3,
            in_flight: 1,
            delayed: 0,
            dead_letters: 2,
            oldest_age_ms: 1500,
        });
        let text = m.encode();
        for line in [
            "ferry_other_total 1",
            "ferry_queue_depth 3",
            "ferry_queue_oldest_seconds 1.5",
            "ferry_dead_letters 2",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    #[tokio::test]
    async fn counts_the_workers_with_a_live_heartbeat_on_each_scrape() {
        use crate::store::history::{MemoryHistory, Retention, WorkerInfo};
        use std::time::Duration;
        let history = Arc::new(MemoryHistory::new(Retention::default()));
        let m = ProcessMetrics::new(Registry::default()).with_workers(history.clone());
        assert!(
            m.encode().lines().any(|l| l == "ferry_live_workers 0"),
            "exported at 0 before any worker:\n{}",
            m.encode()
        );
        for id in ["w1", "w2"] {
            let worker = WorkerInfo {
                id: id.into(),
                host: "host".into(),
                region: String::new(),
                pid: 1,
                version: "test".into(),
                started_at_ms: crate::clock::now_ms(),
                last_seen_ms: crate::clock::now_ms(),
                concurrency: 1,
                in_flight: 0,
                jobs_succeeded: 0,
                jobs_failed: 0,
                policies: Vec::new(),
            };
            history
                .heartbeat(&worker, Duration::from_secs(60))
                .await
                .unwrap();
        }
        m.refresh_workers().await;
        assert!(m.encode().lines().any(|l| l == "ferry_live_workers 2"));
        history.deregister("w1").await.unwrap();
        m.refresh_workers().await;
        assert!(m.encode().lines().any(|l| l == "ferry_live_workers 1"));
    }
}
