//! The ingest router over real HTTP: webhooks in, jobs in a real [`MemoryQueue`], every rejection
//! path (names outside the grammar, oversized batches), event times clamped on the way to the jobs
//! and the conflict ledger, health and metrics; Harbor's documented payloads in both formats
//! (`tests/fixtures/harbor/`); the sender recognised without `?registry=`; and end-to-end runs
//! with real `docker-registry`s whose notifications point at the router.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::clock::{duration_ms, now_ms};
use ferry_replicator::config::Config;
use ferry_replicator::event::{EventKind, MAX_EVENT_AGE};
use ferry_replicator::ingest::{self, EventSink, IngestState};
use ferry_replicator::regions::restore::{PushRestorer, Restored};
use ferry_replicator::replicate::Registries;
use ferry_replicator::store::ledger::{MemoryTagLedger, TagLedger, TagWrite};
use ferry_replicator::store::queue::{
    EnqueueOutcome, FailOutcome, Job, JobQueue, Lease, MemoryQueue, QueueStats,
};
use ferry_replicator::store::StoreError;
use ferry_testkit::{skopeo, LayerSpec, LayoutBuilder, Registry, RegistryOptions};
use serde_json::{json, Value};

const TOKEN: &str = "s3cret-token";
const V1: &str = "application/vnd.docker.distribution.events.v1+json";
const INDEX_DIGEST: &str =
    "sha256:d37b0ec44dc5a0fef706f747a65f1bceb391d871c39d0567208e6faa547caa20";
const CHILD_DIGEST: &str =
    "sha256:56f73201a4b1b9a5f6b0c3f0b6a8b3a4f1fc0f3d0c9f1a2d6c7b1e0e3f4a5b6c";
const LAYER_DIGEST: &str =
    "sha256:a93adf04e197fc8bd8e41981db73d0b37edfd535f473b2987b1530005f9852dd";

/// A [`MemoryQueue`] that can be switched off: every call then fails with `Unavailable`, as a
/// Redis outage does.
struct SwitchableQueue {
    inner: MemoryQueue,
    down: AtomicBool,
}

impl SwitchableQueue {
    fn new() -> Arc<SwitchableQueue> {
        Arc::new(SwitchableQueue {
            inner: MemoryQueue::new(RetryPolicy::default()),
            down: AtomicBool::new(false),
        })
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("switched off by the test".into()))
        } else {
            Ok(())
        }
    }

    /// Every waiting job (claims them).
    async fn take_all(&self) -> Vec<Job> {
        self.inner
            .claim("test", 1000, Duration::from_secs(600))
            .await
            .expect("claim")
            .into_iter()
            .map(|lease| lease.job)
            .collect()
    }
}

#[async_trait::async_trait]
impl JobQueue for SwitchableQueue {
    async fn enqueue(&self, job: Job) -> Result<EnqueueOutcome, StoreError> {
        self.check()?;
        self.inner.enqueue(job).await
    }

    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Lease>, StoreError> {
        self.check()?;
        self.inner.claim(consumer, max, lease).await
    }

    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<(), StoreError> {
        self.check()?;
        self.inner.renew(lease, lease_for).await
    }

    async fn ack(&self, lease: &Lease) -> Result<(), StoreError> {
        self.check()?;
        self.inner.ack(lease).await
    }

    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        retryable: bool,
    ) -> Result<FailOutcome, StoreError> {
        self.check()?;
        self.inner.fail(lease, error, retryable).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.check()?;
        self.inner.release(lease).await
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        self.check()?;
        self.inner.stats().await
    }
}

/// Registries `src` and `dst`, an event-based policy `mirror` for `team/**` with deletes, and a
/// manual policy that must never match.
fn config() -> Config {
    let doc = json!({
        "registries": [
            {"name": "src", "url": "http://127.0.0.1:9", "insecure": true},
            {"name": "dst", "url": "http://127.0.0.1:9", "insecure": true}
        ],
        "policies": [
            {
                "name": "mirror",
                "src_registry": {"name": "src"},
                "dest_registry": {"name": "dst"},
                "trigger": {"type": "event_based"},
                "filters": [{"type": "name", "value": "team/**"}],
                "replicate_deletion": true
            },
            {
                "name": "nightly",
                "src_registry": {"name": "src"},
                "dest_registry": {"name": "dst"},
                "trigger": {"type": "manual"}
            }
        ]
    });
    Config::from_slice(&serde_json::to_vec(&doc).unwrap(), "test").expect("valid config")
}

/// A running router; the server task ends with the test's runtime.
struct Agent {
    base: String,
    queue: Arc<SwitchableQueue>,
    http: reqwest::Client,
}

async fn start_agent() -> Agent {
    let queue = SwitchableQueue::new();
    let state = IngestState::builder(config(), queue.clone())
        .token(TOKEN)
        .build()
        .expect("state");
    start_with(state, queue).await
}

async fn start_with(state: IngestState, queue: Arc<SwitchableQueue>) -> Agent {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, state, queue)
}

/// An agent on `listener` (bound before the config was known: registries that notify it must be
/// started with its address first).
fn serve_on(
    listener: tokio::net::TcpListener,
    state: IngestState,
    queue: Arc<SwitchableQueue>,
) -> Agent {
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, ingest::router(state)).await.unwrap();
    });
    Agent {
        base: format!("http://{addr}"),
        queue,
        http: reqwest::Client::new(),
    }
}

/// An agent for `config` with the test token.
async fn start_for(config: Config) -> Agent {
    let queue = SwitchableQueue::new();
    let state = IngestState::builder(config, queue.clone())
        .token(TOKEN)
        .build()
        .expect("state");
    start_with(state, queue).await
}

struct Answer {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

impl Agent {
    async fn post(
        &self,
        path: &str,
        content_type: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let authorization = token.map(|t| format!("Bearer {t}"));
        self.post_authorized(path, content_type, authorization.as_deref(), body)
            .await
    }

    /// [`Agent::post`] with this `Authorization` value as it is.
    async fn post_authorized(
        &self,
        path: &str,
        content_type: &str,
        authorization: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"));
        Answer {
            status,
            body,
            headers,
        }
    }

    async fn distribution(&self, body: Vec<u8>) -> Answer {
        self.post(
            "/v1/events/distribution?registry=src",
            V1,
            Some(TOKEN),
            body,
        )
        .await
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        (
            response.status().as_u16(),
            response.text().await.expect("body"),
        )
    }

    /// The server still answers and the queue is reachable.
    async fn assert_healthy(&self) {
        assert_eq!(self.get("/healthz").await, (200, "ok\n".to_string()));
    }
}

/// The event time of the fixtures: a minute ago (as RFC 3339 with nanoseconds, and in Unix ms),
/// well inside the believable range, so it reaches the jobs unclamped.
static EVENT_TIME: LazyLock<(String, i64)> = LazyLock::new(|| {
    let at = chrono::Utc::now() - chrono::Duration::seconds(60);
    (
        at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        at.timestamp_millis(),
    )
});

/// One event as distribution 2.8.2 sends it.
fn event(action: &str, target: Value, request_id: &str) -> Value {
    json!({
        "id": format!("{request_id}-{}", target.get("tag").or(target.get("digest")).and_then(Value::as_str).unwrap_or("")),
        "timestamp": EVENT_TIME.0,
        "action": action,
        "target": target,
        "request": {"id": request_id, "addr": "127.0.0.1:46802", "host": "127.0.0.1:5001", "method": "PUT", "useragent": "skopeo/1.9.3"},
        "actor": {},
        "source": {"addr": "vm:5001", "instanceID": "ad4f3875-3286-4f9d-83f5-78e7a2662cf6"}
    })
}

fn manifest(
    repository: &str,
    media_type: &str,
    digest: &str,
    tag: Option<&str>,
    references: &[&str],
) -> Value {
    let mut t = json!({
        "mediaType": media_type, "size": 500, "digest": digest, "length": 500,
        "repository": repository,
        "url": format!("http://127.0.0.1:5001/v2/{repository}/manifests/{digest}"),
        "references": references.iter().map(|d| json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": 400})).collect::<Vec<_>>(),
    });
    if let Some(tag) = tag {
        t["tag"] = json!(tag);
    }
    t
}

/// `team/app:v1`, an index, in request `request_id`.
fn index_v1(action: &str, request_id: &str) -> Value {
    event(
        action,
        manifest(
            "team/app",
            "application/vnd.oci.image.index.v1+json",
            INDEX_DIGEST,
            Some("v1"),
            &[],
        ),
        request_id,
    )
}

/// An index push as one batch: a blob event, a child manifest by digest, the tagged index.
fn index_push_batch(repository: &str, tag: &str) -> Vec<u8> {
    let blob = json!({
        "mediaType": "application/octet-stream", "size": 101, "digest": LAYER_DIGEST, "length": 101,
        "repository": repository, "url": format!("http://127.0.0.1:5001/v2/{repository}/blobs/{LAYER_DIGEST}")
    });
    let events = vec![
        event("push", blob, "r1"),
        event(
            "push",
            manifest(
                repository,
                "application/vnd.oci.image.manifest.v1+json",
                CHILD_DIGEST,
                None,
                &[LAYER_DIGEST],
            ),
            "r2",
        ),
        event(
            "push",
            manifest(
                repository,
                "application/vnd.oci.image.index.v1+json",
                INDEX_DIGEST,
                Some(tag),
                &[CHILD_DIGEST],
            ),
            "r3",
        ),
    ];
    serde_json::to_vec(&json!({ "events": events })).unwrap()
}

#[tokio::test]
async fn good_batch_is_enqueued_and_a_duplicate_delivery_collapses() {
    let agent = start_agent().await;
    let answer = agent.distribution(index_push_batch("team/app", "v1")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"received": 3, "events": 1, "ignored": 2, "jobs": 1, "enqueued": 1, "collapsed": 0})
    );

    // The registry re-sends (e.g. our answer was lost): folded into the pending job.
    let again = agent.distribution(index_push_batch("team/app", "v1")).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["enqueued"], 0);
    assert_eq!(again.body["collapsed"], 1);

    let jobs = agent.queue.take_all().await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = &jobs[0];
    assert_eq!(
        (
            job.policy.as_str(),
            job.kind,
            job.repository.as_str(),
            job.reference.as_str(),
            job.digest.as_deref()
        ),
        (
            "mirror",
            EventKind::Push,
            "team/app",
            "v1",
            Some(INDEX_DIGEST)
        )
    );
    assert_eq!(job.event_time_ms, EVENT_TIME.1);
    assert_eq!(job.event_id.as_deref(), Some("r3-v1"));
    assert!(!job.id.is_empty());

    // Not covered by any event-based policy: accepted, no job.
    let other = agent.distribution(index_push_batch("tools/x", "v1")).await;
    assert_eq!((other.status, other.body["jobs"].clone()), (200, json!(0)));
    agent.assert_healthy().await;
}

#[tokio::test]
async fn delete_joins_into_one_job_and_empty_batches_are_fine() {
    let agent = start_agent().await;
    let events = vec![
        event(
            "delete",
            json!({"repository": "team/app", "digest": INDEX_DIGEST}),
            "d1",
        ),
        event(
            "delete",
            json!({"repository": "team/app", "tag": "v1"}),
            "d1",
        ),
    ];
    let answer = agent
        .distribution(serde_json::to_vec(&json!({ "events": events })).unwrap())
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["events"], 1);
    let jobs = agent.queue.take_all().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (
            jobs[0].kind,
            jobs[0].reference.as_str(),
            jobs[0].digest.as_deref()
        ),
        (EventKind::Delete, "v1", Some(INDEX_DIGEST))
    );

    let empty = agent.distribution(br#"{"events": []}"#.to_vec()).await;
    assert_eq!(
        (empty.status, empty.body.clone()),
        (
            200,
            json!({"received": 0, "events": 0, "ignored": 0, "jobs": 0, "enqueued": 0, "collapsed": 0})
        )
    );
}

#[tokio::test]
async fn harbor_webhook_enqueues_and_ignores_other_types() {
    let agent = start_agent().await;
    let occur_at = EVENT_TIME.1 / 1000;
    let push = json!({
        "type": "PUSH_ARTIFACT", "occur_at": occur_at, "operator": "admin",
        "event_data": {
            "resources": [{"digest": INDEX_DIGEST, "tag": "3.19", "resource_url": "harbor.example/team/alpine:3.19"}],
            "repository": {"date_created": 1_680_501_893, "name": "alpine", "namespace": "team", "repo_full_name": "team/alpine", "repo_type": "private"}
        }
    });
    let url = "/v1/events/harbor?registry=src";
    let answer = agent
        .post(
            url,
            "application/json",
            Some(TOKEN),
            serde_json::to_vec(&push).unwrap(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["enqueued"], 1);
    let scan =
        json!({"type": "SCANNING_FAILED", "occur_at": 1, "operator": "auto", "event_data": {}});
    let answer = agent
        .post(
            url,
            "application/json; charset=utf-8",
            Some(TOKEN),
            serde_json::to_vec(&scan).unwrap(),
        )
        .await;
    assert_eq!(
        (answer.status, answer.body["ignored"].clone()),
        (200, json!(1))
    );
    // Distribution's content type is not Harbor's.
    let answer = agent
        .post(url, V1, Some(TOKEN), serde_json::to_vec(&push).unwrap())
        .await;
    assert_eq!(answer.status, 415);

    let jobs = agent.queue.take_all().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].repository.as_str(), jobs[0].reference.as_str()),
        ("team/alpine", "3.19")
    );
    assert_eq!(jobs[0].event_time_ms, occur_at * 1000);
}

#[tokio::test]
async fn rejections_leave_the_queue_untouched_and_the_server_serving() {
    let agent = start_agent().await;
    let good = index_push_batch("team/app", "v1");
    let url = "/v1/events/distribution?registry=src";

    // No token, wrong token, wrong scheme.
    for token in [None, Some("wrong")] {
        let answer = agent.post(url, V1, token, good.clone()).await;
        assert_eq!(answer.status, 401, "{token:?}");
        assert!(
            answer.body["error"].as_str().unwrap().contains("token"),
            "{}",
            answer.body
        );
        assert_eq!(
            answer.headers["www-authenticate"],
            r#"Bearer realm="ferry""#
        );
    }
    let basic = agent
        .http
        .post(format!("{}{url}", agent.base))
        .header("content-type", V1)
        .header("authorization", format!("Basic {TOKEN}"))
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status().as_u16(), 401);

    // A registry parameter naming no configured registry.
    let answer = agent
        .post(
            "/v1/events/distribution?registry=nowhere",
            V1,
            Some(TOKEN),
            good.clone(),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["param"], "registry");
    assert!(
        answer.body["error"]
            .as_str()
            .unwrap()
            .contains("\"nowhere\" is not a configured registry (one of: src, dst)"),
        "{}",
        answer.body
    );

    // Content type.
    let answer = agent
        .post(url, "text/plain", Some(TOKEN), good.clone())
        .await;
    assert_eq!(answer.status, 415);
    assert!(answer.body["error"]
        .as_str()
        .unwrap()
        .contains("text/plain"));
    // Version 2 of the envelope and plain JSON are fine.
    for ct in [
        "application/vnd.docker.distribution.events.v2+json",
        "application/json",
    ] {
        let answer = agent
            .post(url, ct, Some(TOKEN), br#"{"events": []}"#.to_vec())
            .await;
        assert_eq!(answer.status, 200, "{ct}");
    }

    // Over the 1 MiB default limit.
    let huge = format!(
        r#"{{"events": [], "pad": "{}"}}"#,
        "x".repeat(1024 * 1024 + 1)
    );
    let answer = agent.post(url, V1, Some(TOKEN), huge.into_bytes()).await;
    assert_eq!(answer.status, 413);
    assert!(answer.body["error"].as_str().unwrap().contains("limit"));

    // The same without Content-Length (chunked): cut off while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b' '; 700 * 1024]), Ok(vec![b' '; 700 * 1024])];
    let chunked = agent
        .http
        .post(format!("{}{url}", agent.base))
        .header("content-type", V1)
        .bearer_auth(TOKEN)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status().as_u16(), 413);

    // Truncated JSON: the reason and where.
    let answer = agent
        .post(url, V1, Some(TOKEN), good[..good.len() / 2].to_vec())
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["path"], "$");
    assert!(
        answer.body["error"]
            .as_str()
            .unwrap()
            .starts_with("body is not valid JSON (line 1, column"),
        "{}",
        answer.body
    );

    // A missing field: the JSON path.
    let mut doc: Value = serde_json::from_slice(&good).unwrap();
    doc["events"][2]["target"]
        .as_object_mut()
        .unwrap()
        .remove("repository");
    let answer = agent
        .post(url, V1, Some(TOKEN), serde_json::to_vec(&doc).unwrap())
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.body,
        json!({"error": "events[2].target.repository: missing", "path": "events[2].target.repository"})
    );
    let answer = agent
        .post(url, V1, Some(TOKEN), br#"{"events": {"0": {}}}"#.to_vec())
        .await;
    assert_eq!(
        (answer.status, answer.body["path"].clone()),
        (400, json!("events"))
    );

    assert!(agent.queue.take_all().await.is_empty());
    // Still serving, and still accepting good batches.
    agent.assert_healthy().await;
    assert_eq!(agent.distribution(good).await.status, 200);
    assert_eq!(agent.queue.take_all().await.len(), 1);
}

#[tokio::test]
async fn repositories_with_dot_or_empty_segments_are_refused_naming_the_field_and_make_no_job() {
    let agent = start_agent().await;
    // `team/**` covers the first as a string, and a URL resolves it to `/v2/_catalog`.
    for repository in [
        "team/../../v2/_catalog",
        "team/./app",
        "team//app",
        "team/App",
    ] {
        let answer = agent.distribution(index_push_batch(repository, "v1")).await;
        assert_eq!(answer.status, 400, "{repository}: {}", answer.body);
        assert_eq!(
            answer.body["path"], "events[0].target.repository",
            "{}",
            answer.body
        );
        assert!(
            answer.body["error"]
                .as_str()
                .unwrap()
                .starts_with("events[0].target.repository: repository "),
            "{}",
            answer.body
        );
    }
    let harbor = json!({
        "type": "PUSH_ARTIFACT", "occur_at": EVENT_TIME.1 / 1000, "operator": "admin",
        "event_data": {
            "resources": [{"digest": INDEX_DIGEST, "tag": "v1"}],
            "repository": {"name": "x", "namespace": "team", "repo_full_name": "team/../../v2/_catalog"}
        }
    });
    let answer = agent
        .post(
            "/v1/events/harbor?registry=src",
            "application/json",
            Some(TOKEN),
            serde_json::to_vec(&harbor).unwrap(),
        )
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.body["path"], "event_data.repository.repo_full_name");
    assert!(agent.queue.take_all().await.is_empty());
}

#[tokio::test]
async fn a_body_with_more_events_than_the_limit_is_refused_with_413_naming_the_limit() {
    let agent = start_agent().await;
    let pull = index_v1("pull", "p");
    let body = |n: usize| serde_json::to_vec(&json!({ "events": vec![pull.clone(); n] })).unwrap();
    let limit = ingest::MAX_EVENTS_PER_REQUEST;
    let answer = agent.distribution(body(limit)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = agent.distribution(body(limit + 1)).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert_eq!(answer.body["path"], "events");
    assert!(
        answer.body["error"].as_str().unwrap().contains(&format!(
            "{} events in one request, more than the limit of {limit}",
            limit + 1
        )),
        "{}",
        answer.body
    );
}

/// `src` and `dst` kept alike both ways: pushes to either are recorded in the conflict ledger.
fn bidirectional_config() -> Config {
    let doc = json!({
        "registries": [
            {"name": "src", "url": "http://127.0.0.1:9", "insecure": true},
            {"name": "dst", "url": "http://127.0.0.1:9", "insecure": true}
        ],
        "policies": [{
            "name": "both", "mode": "bidirectional",
            "src_registry": {"name": "src"}, "dest_registry": {"name": "dst"},
            "trigger": {"type": "event_based"},
            "filters": [{"type": "name", "value": "team/**"}]
        }]
    });
    let config = Config::from_slice(&serde_json::to_vec(&doc).unwrap(), "test").expect("config");
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    config
}

#[tokio::test]
async fn event_times_are_clamped_before_they_reach_the_jobs_and_the_conflict_ledger() {
    let queue = SwitchableQueue::new();
    let ledger = Arc::new(MemoryTagLedger::default());
    let skew = Duration::from_secs(120);
    let sink = EventSink {
        queue: queue.clone() as Arc<dyn JobQueue>,
        region: ferry_replicator::config::Region::single_site(),
        outbox: None,
        ledger: Some(ledger.clone() as Arc<dyn TagLedger>),
        restorer: None,
    };
    let state = IngestState::builder(bidirectional_config(), sink)
        .token(TOKEN)
        .max_clock_skew(skew)
        .build()
        .unwrap();
    let agent = start_with(state, queue).await;
    let harbor = |tag: &str, occur_at: i64| {
        json!({
            "type": "PUSH_ARTIFACT", "occur_at": occur_at, "operator": "admin",
            "event_data": {
                "resources": [{"digest": INDEX_DIGEST, "tag": tag}],
                "repository": {"name": "app", "namespace": "team", "repo_full_name": "team/app"}
            }
        })
    };

    let before = now_ms();
    // A registry clock in the year 9999, Harbor's in 2100, and Harbor's at the epoch.
    let mut far_future = index_v1("push", "r1");
    far_future["timestamp"] = json!("9999-12-31T23:59:59.999Z");
    let answer = agent
        .distribution(serde_json::to_vec(&json!({ "events": [far_future] })).unwrap())
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    for (tag, occur_at) in [("v2", 4_102_444_800), ("v3", 1)] {
        let answer = agent
            .post(
                "/v1/events/harbor?registry=src",
                "application/json",
                Some(TOKEN),
                serde_json::to_vec(&harbor(tag, occur_at)).unwrap(),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let after = now_ms();

    let ahead = duration_ms(skew);
    let behind = duration_ms(MAX_EVENT_AGE);
    let recorded = |tag: &'static str| {
        let ledger = ledger.clone();
        async move {
            ledger
                .last_write("src", "team/app", tag)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("no ledger entry for {tag}"))
                .at_ms
        }
    };
    for tag in ["v1", "v2"] {
        let at = recorded(tag).await;
        assert!(
            (before + ahead..=after + ahead).contains(&at),
            "{tag}: {at} is not now + {ahead} ms ({before}..{after})"
        );
    }
    let at = recorded("v3").await;
    assert!(
        (before - behind..=after - behind).contains(&at),
        "v3: {at} is not now - {behind} ms"
    );
    let jobs = agent.queue.take_all().await;
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    for job in &jobs {
        assert!(
            (before - behind..=after + ahead).contains(&job.event_time_ms),
            "{job:?}"
        );
    }
}

#[tokio::test]
async fn queue_outage_answers_503_until_the_queue_is_back() {
    let agent = start_agent().await;
    agent.queue.set_down(true);
    let answer = agent.distribution(index_push_batch("team/app", "v1")).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.body["error"]
        .as_str()
        .unwrap()
        .contains("unavailable"));
    let (status, text) = agent.get("/healthz").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("queue unavailable"));

    // Back: the registry's retry goes through, and nothing was acknowledged before.
    agent.queue.set_down(false);
    assert!(agent.queue.take_all().await.is_empty());
    let answer = agent.distribution(index_push_batch("team/app", "v1")).await;
    assert_eq!(
        (answer.status, answer.body["enqueued"].clone()),
        (200, json!(1))
    );
    assert_eq!(agent.queue.take_all().await.len(), 1);
    agent.assert_healthy().await;
}

#[tokio::test]
async fn metrics_count_events_requests_and_queue() {
    let agent = start_agent().await;
    agent.distribution(index_push_batch("team/app", "v1")).await;
    agent
        .post("/v1/events/distribution?registry=src", V1, None, vec![])
        .await;
    let (status, text) = agent.get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"ferry_events_total{registry="src",kind="push",outcome="matched"} 1"#,
        r#"ferry_events_total{registry="src",kind="push",outcome="ignored_blob"} 1"#,
        r#"ferry_events_total{registry="src",kind="push",outcome="ignored_child_manifest"} 1"#,
        r#"ferry_webhook_requests_total{endpoint="distribution",code="200"} 1"#,
        r#"ferry_webhook_requests_total{endpoint="distribution",code="401"} 1"#,
        "ferry_queue_depth 1",
        "ferry_dead_letters 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("ferry_queue_oldest_seconds ")),
        "{text}"
    );
    assert!(!text.contains("v1\""), "no tag labels:\n{text}");
}

#[tokio::test]
async fn no_token_needs_an_explicit_opt_in() {
    let queue = SwitchableQueue::new();
    let err = IngestState::builder(config(), queue.clone())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("no webhook token"), "{err}");
    assert!(IngestState::builder(config(), queue.clone())
        .token("")
        .build()
        .is_err());
    let state = IngestState::builder(config(), queue.clone())
        .allow_unauthenticated(true)
        .build()
        .unwrap();
    let agent = start_with(state, queue).await;
    let answer = agent
        .post(
            "/v1/events/distribution?registry=src",
            V1,
            None,
            index_push_batch("team/app", "v1"),
        )
        .await;
    assert_eq!(answer.status, 200);
}

/// Jobs taken from the queue until `done` says so (at most 10 s).
async fn wait_for_jobs(
    agent: &Agent,
    registry: &Registry,
    done: impl Fn(&[Job]) -> bool,
) -> Vec<Job> {
    let started = Instant::now();
    let mut jobs = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        jobs.extend(agent.queue.take_all().await);
        if done(&jobs) {
            return jobs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "expected jobs did not arrive within 10 s; got {jobs:?}; registry log:\n{}",
        registry.log_tail(30)
    );
}

#[tokio::test]
async fn real_registry_push_and_delete_become_jobs() {
    let agent = start_agent().await;
    let registry = Registry::start_with(RegistryOptions {
        notifications_url: Some(format!(
            "{}/v1/events/distribution?registry=src",
            agent.base
        )),
        notifications_token: Some(TOKEN.to_string()),
        ..Default::default()
    })
    .await
    .expect("registry");

    let dir = tempfile::tempdir().unwrap();
    let mut layout = LayoutBuilder::new(&dir.path().join("layout")).unwrap();
    let image = layout
        .image(
            "img",
            &[LayerSpec {
                seed: 7,
                size: 4096,
            }],
        )
        .unwrap();
    let layout = layout.finish().unwrap();
    let started = Instant::now();
    skopeo::push_layout(&layout, "img", &registry.host(), "team/app:v1")
        .await
        .expect("push");
    let jobs = wait_for_jobs(&agent, &registry, |jobs| {
        jobs.iter().any(|j| j.reference == "v1")
    })
    .await;
    println!("skopeo push to job in the queue: {:?}", started.elapsed());
    let pushes: Vec<&Job> = jobs.iter().filter(|j| j.reference == "v1").collect();
    assert_eq!(pushes.len(), 1, "{jobs:?}");
    assert_eq!(
        (
            pushes[0].policy.as_str(),
            pushes[0].kind,
            pushes[0].repository.as_str(),
            pushes[0].digest.as_deref()
        ),
        (
            "mirror",
            EventKind::Push,
            "team/app",
            Some(image.digest.as_str())
        )
    );

    // Delete by digest: distribution 2.8 posts the manifest event and the tag event separately
    // (one event per POST), so they stay a digest-only and a tag-only delete.
    let deleted = reqwest::Client::new()
        .delete(format!(
            "{}/v2/team/app/manifests/{}",
            registry.url(),
            image.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 202);
    let jobs = wait_for_jobs(&agent, &registry, |jobs| {
        jobs.iter().filter(|j| j.kind == EventKind::Delete).count() >= 2
    })
    .await;
    let mut deletes: Vec<(&str, Option<&str>)> = jobs
        .iter()
        .filter(|j| j.kind == EventKind::Delete)
        .map(|j| (j.reference.as_str(), j.digest.as_deref()))
        .collect();
    deletes.sort();
    assert_eq!(
        deletes,
        vec![
            (image.digest.as_str(), Some(image.digest.as_str())),
            ("v1", None)
        ],
        "{jobs:?}"
    );
    registry.stop().await;
}

/// Harbor's documented payload `name`, byte for byte (`tests/fixtures/harbor/README.md`).
fn harbor_documented(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/harbor/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const CLOUDEVENTS: &str = "application/cloudevents+json";

/// Harbor `harbor` at `https://localhost` (the host of the documented `resource_url`s), a second
/// source `other` and `dst`; `from-harbor` copies `harbor/**` with deletes, `from-other` all of
/// `other`. Two sources: a webhook without `?registry=` is recognised only by its host.
fn harbor_config() -> Config {
    let doc = json!({
        "registries": [
            {"name": "harbor", "url": "https://localhost"},
            {"name": "other", "url": "https://other.example"},
            {"name": "dst", "url": "https://dst.example"}
        ],
        "policies": [
            {
                "name": "from-harbor",
                "src_registry": {"name": "harbor"}, "dest_registry": {"name": "dst"},
                "trigger": {"type": "event_based"},
                "filters": [{"type": "name", "value": "harbor/**"}],
                "replicate_deletion": true
            },
            {
                "name": "from-other",
                "src_registry": {"name": "other"}, "dest_registry": {"name": "dst"},
                "trigger": {"type": "event_based"},
                "replicate_deletion": true
            }
        ]
    });
    let config = Config::from_slice(&serde_json::to_vec(&doc).unwrap(), "test").expect("config");
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    config
}

const HARBOR_URL: &str = "/v1/events/harbor?registry=harbor";

/// `(policy, kind, repository, reference, digest)` of every job, deletes first.
fn job_summaries(jobs: &[Job]) -> Vec<(String, EventKind, String, String, Option<String>)> {
    let mut got: Vec<_> = jobs
        .iter()
        .map(|j| {
            (
                j.policy.clone(),
                j.kind,
                j.repository.clone(),
                j.reference.clone(),
                j.digest.clone(),
            )
        })
        .collect();
    got.sort_by(|a, b| (a.1.as_str(), &a.3).cmp(&(b.1.as_str(), &b.3)));
    got
}

#[tokio::test]
async fn harbor_documented_pushes_and_deletes_become_jobs_in_both_formats() {
    let agent = start_for(harbor_config()).await;
    for (name, content_type) in [
        ("default-push", "application/json"),
        ("cloudevents-push", CLOUDEVENTS),
        ("default-delete", "application/json; charset=utf-8"),
        (
            "cloudevents-delete",
            "application/cloudevents+json; charset=UTF-8",
        ),
    ] {
        let answer = agent
            .post(
                HARBOR_URL,
                content_type,
                Some(TOKEN),
                harbor_documented(name),
            )
            .await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
        assert_eq!(
            (answer.body["events"].clone(), answer.body["jobs"].clone()),
            (json!(1), json!(1)),
            "{name}: {}",
            answer.body
        );
    }
    let pushed = "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4";
    let deleted = "sha256:2bb501e6173d9d006e56de5bce2720eb06396803300fe1687b58a7ff32bf4c14";
    // Each format's event collapsed into the other's pending job: one push, one delete.
    assert_eq!(
        job_summaries(&agent.queue.take_all().await),
        vec![
            (
                "from-harbor".into(),
                EventKind::Delete,
                "harbor/alpine".into(),
                "3.8".into(),
                Some(deleted.into())
            ),
            (
                "from-harbor".into(),
                EventKind::Push,
                "harbor/alpine".into(),
                pushed.into(),
                Some(pushed.into())
            ),
        ]
    );
}

#[tokio::test]
async fn harbor_documented_pulls_failed_scans_quotas_replications_and_retentions_are_acknowledged_without_jobs(
) {
    // A completed scan is a push by digest (the `max_severity` gate): `ingest::harbor` tests it.
    let agent = start_for(harbor_config()).await;
    for kind in [
        "pull",
        "scan-stopped",
        "scan-failed",
        "quota-exceeded",
        "quota-warning",
        "replication",
        "tag-retention",
    ] {
        for (format, content_type) in [
            ("default", "application/json"),
            ("cloudevents", CLOUDEVENTS),
        ] {
            let name = format!("{format}-{kind}");
            let answer = agent
                .post(
                    HARBOR_URL,
                    content_type,
                    Some(TOKEN),
                    harbor_documented(&name),
                )
                .await;
            assert_eq!(
                (answer.status, answer.body.clone()),
                (
                    200,
                    json!({"received": 1, "events": 0, "ignored": 1, "jobs": 0, "enqueued": 0, "collapsed": 0})
                ),
                "{name}"
            );
        }
    }
    assert!(agent.queue.take_all().await.is_empty());
}

#[tokio::test]
async fn harbor_auth_header_is_accepted_with_or_without_bearer_and_distribution_keeps_bearer() {
    let agent = start_for(harbor_config()).await;
    let push = || harbor_documented("cloudevents-push");
    for authorization in [
        format!("Bearer {TOKEN}"),
        TOKEN.to_string(),
        format!("  {TOKEN} "),
    ] {
        let answer = agent
            .post_authorized(HARBOR_URL, CLOUDEVENTS, Some(&authorization), push())
            .await;
        assert_eq!(answer.status, 200, "{authorization:?}: {}", answer.body);
    }
    for authorization in ["wrong", "Bearer wrong", "Basic s3cret-token"] {
        let answer = agent
            .post_authorized(HARBOR_URL, CLOUDEVENTS, Some(authorization), push())
            .await;
        assert_eq!(answer.status, 401, "{authorization:?}");
    }
    let answer = agent
        .post_authorized(HARBOR_URL, CLOUDEVENTS, None, push())
        .await;
    assert_eq!(answer.status, 401);
    assert!(
        answer.body["error"]
            .as_str()
            .unwrap()
            .contains("Auth Header"),
        "{}",
        answer.body
    );
    // The distribution route: `Bearer` only.
    let answer = agent
        .post_authorized(
            "/v1/events/distribution?registry=harbor",
            V1,
            Some(TOKEN),
            br#"{"events": []}"#.to_vec(),
        )
        .await;
    assert_eq!(answer.status, 401, "{}", answer.body);
}

#[tokio::test]
async fn harbor_bodies_of_another_content_type_are_refused_with_415() {
    let agent = start_for(harbor_config()).await;
    for content_type in ["text/plain", V1, "application/cloudevents-batch+json"] {
        let answer = agent
            .post(
                HARBOR_URL,
                content_type,
                Some(TOKEN),
                harbor_documented("cloudevents-push"),
            )
            .await;
        assert_eq!(answer.status, 415, "{content_type}");
        assert!(
            answer.body["error"]
                .as_str()
                .unwrap()
                .contains("application/json, application/cloudevents+json"),
            "{}",
            answer.body
        );
    }
}

#[tokio::test]
async fn hostile_harbor_bodies_get_a_4xx_naming_the_field_and_make_no_job() {
    let agent = start_for(harbor_config()).await;
    let edited = |name: &str, edit: &dyn Fn(&mut Value)| {
        let mut body: Value = serde_json::from_slice(&harbor_documented(name)).unwrap();
        edit(&mut body);
        serde_json::to_vec(&body).unwrap()
    };
    let resource = |b: &Value, data: &str| b[data]["resources"][0].clone();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            edited("cloudevents-push", &|b| {
                b["data"].as_object_mut().unwrap().remove("resources");
            }),
            400,
            "data.resources",
        ),
        (
            edited("default-push", &|b| {
                b["event_data"].as_object_mut().unwrap().remove("resources");
            }),
            400,
            "event_data.resources",
        ),
        (
            edited("cloudevents-push", &|b| b["data"]["resources"] = json!({})),
            400,
            "data.resources",
        ),
        (
            edited("cloudevents-delete", &|b| {
                b["data"]["resources"][0]["tag"] = json!(3.8)
            }),
            400,
            "data.resources[0].tag",
        ),
        (
            edited("cloudevents-push", &|b| {
                b["data"]["resources"][0]["digest"] = json!("sha256:not-hex")
            }),
            400,
            "data.resources[0].digest",
        ),
        (
            edited("default-delete", &|b| {
                b["event_data"]["repository"]["repo_full_name"] = json!("harbor/../../v2/_catalog")
            }),
            400,
            "event_data.repository.repo_full_name",
        ),
        (
            edited("cloudevents-push", &|b| b["specversion"] = json!("0.3")),
            400,
            "specversion",
        ),
        (
            edited("cloudevents-push", &|b| b["type"] = Value::Null),
            400,
            "type",
        ),
        (
            edited("cloudevents-push", &|b| {
                let one = resource(b, "data");
                b["data"]["resources"] = json!(vec![one; ingest::MAX_EVENTS_PER_REQUEST + 1]);
            }),
            413,
            "data.resources",
        ),
    ];
    for (body, status, path) in cases {
        let answer = agent.post(HARBOR_URL, CLOUDEVENTS, Some(TOKEN), body).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        assert_eq!(answer.body["path"], path, "{}", answer.body);
        assert!(
            answer.body["error"].as_str().unwrap().starts_with(path),
            "{}",
            answer.body
        );
    }
    // Larger than the body limit: refused before it is read.
    let mut huge = harbor_documented("cloudevents-push");
    huge.truncate(huge.len() - 2);
    huge.extend_from_slice(format!(r#", "pad": "{}"}}"#, "x".repeat(1024 * 1024)).as_bytes());
    let answer = agent.post(HARBOR_URL, CLOUDEVENTS, Some(TOKEN), huge).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert!(agent.queue.take_all().await.is_empty());
    agent.assert_healthy().await;
}

#[tokio::test]
async fn a_harbor_webhook_without_registry_parameter_is_recognised_by_its_resource_url() {
    let agent = start_for(harbor_config()).await;
    for (name, content_type) in [
        ("default-delete", "application/json"),
        ("cloudevents-push", CLOUDEVENTS),
    ] {
        let answer = agent
            .post(
                "/v1/events/harbor",
                content_type,
                Some(TOKEN),
                harbor_documented(name),
            )
            .await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
    }
    let jobs = agent.queue.take_all().await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(jobs.iter().all(|j| j.policy == "from-harbor"), "{jobs:?}");
}

#[tokio::test]
async fn a_notification_from_an_unrecognised_sender_is_refused_naming_the_candidates() {
    let agent = start_for(harbor_config()).await;
    // Hosts 127.0.0.1:5001 match no registry, and two registries are sources.
    let answer = agent
        .post(
            "/v1/events/distribution",
            V1,
            Some(TOKEN),
            index_push_batch("team/app", "v1"),
        )
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.body["param"], "registry");
    assert_eq!(answer.body["candidates"], json!(["harbor", "other"]));
    let error = answer.body["error"].as_str().unwrap();
    assert!(
        error.contains("127.0.0.1:5001")
            && error.contains("add `?registry=NAME` to the notification endpoint URL"),
        "{error}"
    );
    // The same body with the parameter goes through; one with nothing to act on needs none.
    let answer = agent
        .post(
            "/v1/events/distribution?registry=other",
            V1,
            Some(TOKEN),
            index_push_batch("team/app", "v1"),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let pulls = serde_json::to_vec(&json!({"events": [index_v1("pull", "p1")]})).unwrap();
    let answer = agent
        .post("/v1/events/distribution", V1, Some(TOKEN), pulls)
        .await;
    assert_eq!(
        (answer.status, answer.body["ignored"].clone()),
        (200, json!(1)),
        "{}",
        answer.body
    );
    let jobs = agent.queue.take_all().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].policy, "from-other");
}

#[tokio::test]
async fn a_notification_without_registry_parameter_comes_from_the_only_source() {
    // `config()`: `src` (127.0.0.1:9) is the only source; the batch names 127.0.0.1:5001.
    let agent = start_agent().await;
    let answer = agent
        .post(
            "/v1/events/distribution",
            V1,
            Some(TOKEN),
            index_push_batch("team/app", "v1"),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let jobs = agent.queue.take_all().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].policy, "mirror");
}

/// Pushes `repository:tag` (a fresh one-layer image) to `registry`; returns its digest.
async fn push_image(registry: &Registry, seed: u64, reference: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut layout = LayoutBuilder::new(&dir.path().join("layout")).unwrap();
    let image = layout
        .image("img", &[LayerSpec { seed, size: 2048 }])
        .unwrap();
    let layout = layout.finish().unwrap();
    skopeo::push_layout(&layout, "img", &registry.host(), reference)
        .await
        .expect("push");
    image.digest
}

#[tokio::test]
async fn real_registries_on_one_host_without_the_registry_parameter_are_told_apart_by_port() {
    // The agent's address first: the registries are configured to notify it, and the agent's
    // config names the registries' URLs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let webhook = format!(
        "http://{}/v1/events/distribution",
        listener.local_addr().unwrap()
    );
    let start = || {
        Registry::start_with(RegistryOptions {
            notifications_url: Some(webhook.clone()),
            notifications_token: Some(TOKEN.to_string()),
            ..Default::default()
        })
    };
    let (a, b) = (
        start().await.expect("registry a"),
        start().await.expect("registry b"),
    );
    assert_eq!(a.addr().ip(), b.addr().ip());
    let policies: Vec<Value> = ["a", "b"]
        .iter()
        .map(|src| {
            json!({
                "name": format!("from-{src}"),
                "src_registry": {"name": src}, "dest_registry": {"name": "dst"},
                "trigger": {"type": "event_based"}
            })
        })
        .collect();
    let doc = json!({
        "registries": [
            // Scheme and trailing slash differ from what the registries send: still a match.
            {"name": "a", "url": format!("{}/", a.url()), "insecure": true},
            {"name": "b", "url": b.url().replace("http://", "https://"), "insecure": true},
            {"name": "dst", "url": "http://127.0.0.1:9", "insecure": true}
        ],
        "policies": policies
    });
    let config = Config::from_slice(&serde_json::to_vec(&doc).unwrap(), "test").expect("config");
    let queue = SwitchableQueue::new();
    let state = IngestState::builder(config, queue.clone())
        .token(TOKEN)
        .build()
        .expect("state");
    let agent = serve_on(listener, state, queue);

    let in_a = push_image(&a, 11, "team/app:v1").await;
    let in_b = push_image(&b, 12, "team/app:v2").await;
    let jobs = wait_for_jobs(&agent, &a, |jobs| {
        ["v1", "v2"]
            .iter()
            .all(|t| jobs.iter().any(|j| j.reference == *t))
    })
    .await;
    let mut got: Vec<_> = jobs
        .iter()
        .map(|j| (j.policy.as_str(), j.reference.as_str(), j.digest.as_deref()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("from-a", "v1", Some(in_a.as_str())),
            ("from-b", "v2", Some(in_b.as_str()))
        ],
        "registry b log:\n{}",
        b.log_tail(30)
    );
    a.stop().await;
    b.stop().await;
}

/// The digest `reference` resolves to on `host`, from skopeo's raw manifest.
async fn digest_on(host: &str, reference: &str) -> String {
    let raw = skopeo::inspect_raw(host, reference).await.expect("inspect");
    ferry_replicator::oci::digest::sha256(&raw).to_string()
}

/// A bidirectional pair whose `src` side is the real `registry`; the put-back of overwritten
/// pushes for it.
fn restoring_sink(registry: &Registry) -> (Config, Arc<MemoryTagLedger>, EventSink) {
    let doc = json!({
        "registries": [
            {"name": "src", "url": registry.url(), "insecure": true},
            {"name": "dst", "url": "http://127.0.0.1:9", "insecure": true}
        ],
        "policies": [{
            "name": "both", "mode": "bidirectional",
            "src_registry": {"name": "src"}, "dest_registry": {"name": "dst"},
            "trigger": {"type": "event_based"}
        }]
    });
    let config = Config::from_slice(&serde_json::to_vec(&doc).unwrap(), "test").expect("config");
    let registries = Registries::from_config(&config).unwrap();
    let restorer = PushRestorer::new(
        &registries,
        &mut prometheus_client::registry::Registry::default(),
    );
    let ledger = Arc::new(MemoryTagLedger::default());
    let sink = EventSink {
        queue: SwitchableQueue::new() as Arc<dyn JobQueue>,
        region: ferry_replicator::config::Region::single_site(),
        outbox: None,
        ledger: Some(ledger.clone() as Arc<dyn TagLedger>),
        restorer: Some(Arc::new(restorer)),
    };
    (config, ledger, sink)
}

/// A copy's write of `digest` to `src`'s `team/app:v1`, recorded a minute before [`EVENT_TIME`].
fn older_copy(digest: &str) -> TagWrite {
    TagWrite {
        digest: digest.to_string(),
        at_ms: EVENT_TIME.1 - 60_000,
        region: "other".into(),
    }
}

/// The race a worker cannot see: a copy of the other side's older push overwrote a user's push of
/// `team/app:v1`, and the push's webhook arrives only after the copy was recorded. The agent puts
/// the push back before the event goes on, so the other side copies the push, not the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_overwritten_by_an_older_copy_recorded_before_its_webhook_is_put_back() {
    let registry = Registry::start().await.expect("registry");
    let host = registry.host();
    let pushed = push_image(&registry, 71, "team/app:v1").await;
    // The copy's PUT lands after the push, and its write is recorded before the push's webhook.
    let copied = push_image(&registry, 72, "team/app:v1").await;
    let (config, ledger, sink) = restoring_sink(&registry);
    ledger
        .record_write("src", "team/app", "v1", &older_copy(&copied))
        .await
        .unwrap();
    let queue = SwitchableQueue::new();
    let state = IngestState::builder(config, sink)
        .token(TOKEN)
        .build()
        .unwrap();
    let agent = start_with(state, queue).await;

    let target = manifest(
        "team/app",
        "application/vnd.oci.image.manifest.v1+json",
        &pushed,
        Some("v1"),
        &[],
    );
    let body = serde_json::to_vec(&json!({"events": [event("push", target, "p1")]})).unwrap();
    let answer = agent
        .post(
            "/v1/events/distribution?registry=src",
            V1,
            Some(TOKEN),
            body,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        digest_on(&host, "team/app:v1").await,
        pushed,
        "the user's push holds the tag again"
    );
    assert_eq!(
        ledger
            .last_write("src", "team/app", "v1")
            .await
            .unwrap()
            .map(|w| w.digest),
        Some(pushed),
        "the ledger holds the push"
    );
}

/// A tag that holds something other than the older recorded write (the push itself, or a third
/// digest) was not overwritten by that write: nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_not_holding_the_older_recorded_write_is_left_alone() {
    let registry = Registry::start_with(RegistryOptions {
        log_level: "info",
        ..RegistryOptions::default()
    })
    .await
    .expect("registry");
    let pushed = push_image(&registry, 73, "team/app:v1").await;
    let older = push_image(&registry, 74, "team/app:older").await;
    let (_, _, sink) = restoring_sink(&registry);
    let restorer = sink.restorer.unwrap();
    let write = TagWrite {
        digest: pushed.clone(),
        at_ms: EVENT_TIME.1,
        region: String::new(),
    };
    let event = ferry_replicator::event::Event {
        id: "e".into(),
        registry: "src".into(),
        repository: "team/app".into(),
        tag: Some("v1".into()),
        digest: Some(pushed.clone()),
        media_type: None,
        kind: EventKind::Push,
        occurred_at_ms: EVENT_TIME.1,
        request_id: None,
    };
    assert_eq!(
        restorer
            .after_push(&event, "v1", &write, Some(&older_copy(&older)))
            .await,
        Restored::Intact,
        "the tag holds the push"
    );
    let third = push_image(&registry, 75, "team/app:v1").await;
    assert_eq!(
        restorer
            .after_push(&event, "v1", &write, Some(&older_copy(&older)))
            .await,
        Restored::Intact,
        "the tag moved on to a third digest"
    );
    assert_eq!(digest_on(&registry.host(), "team/app:v1").await, third);
    let log = std::fs::read_to_string(registry.log_path()).unwrap();
    assert_eq!(
        ferry_testkit::access_log::manifest_puts(&log, "team/app", "v1"),
        2,
        "only the two pushes of the test wrote the tag"
    );
}
