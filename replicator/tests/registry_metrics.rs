//! `ferry_registry_requests_total{registry,method,code}` and
//! `ferry_registry_request_duration_seconds{registry,method}` count what the registry really saw: a
//! real `docker-registry` for the ordinary answers, the testkit fake for 429s, 5xx, token requests
//! and answers that never come. Each test compares the exported counts with the requests sent
//! (and, on the fake, with the requests it logged).
use ferry_replicator::config::Config;
use ferry_replicator::oci::{digest, RegistryMetrics};
use ferry_replicator::replicate::Registries;
use ferry_testkit::{BearerSetup, Behavior, FakeRegistry, Registry};
use prometheus_client::registry::Registry as MetricsRegistry;
use serde_json::json;

/// The clients of one registry `r` at `url`, counting into a fresh metrics registry.
fn clients(url: &str) -> (Registries, MetricsRegistry) {
    clients_of(json!({"name": "r", "url": url, "insecure": true}))
}

/// The clients of the one registry `registry` (config JSON) names, counting into a fresh metrics
/// registry.
fn clients_of(registry: serde_json::Value) -> (Registries, MetricsRegistry) {
    let config = Config::from_slice(
        &serde_json::to_vec(&json!({ "registries": [registry] })).unwrap(),
        "test",
    )
    .unwrap();
    let mut metrics = MetricsRegistry::default();
    let registries = Registries::from_config(&config)
        .unwrap()
        .with_metrics(RegistryMetrics::register(&mut metrics));
    (registries, metrics)
}

fn encode(metrics: &MetricsRegistry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, metrics).unwrap();
    text
}

/// The value of `ferry_registry_requests_total{registry="r",method,code}`.
fn requests(text: &str, method: &str, code: &str) -> Option<u64> {
    let prefix = format!(
        r#"ferry_registry_requests_total{{registry="r",method="{method}",code="{code}"}} "#
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

/// The sum of `ferry_registry_requests_total{registry="r"}` over every method and code.
fn all_requests(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(r#"ferry_registry_requests_total{registry="r","#))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// The value of `ferry_registry_request_duration_seconds_count{registry="r",method}`.
fn timed(text: &str, method: &str) -> Option<u64> {
    let prefix = format!(
        r#"ferry_registry_request_duration_seconds_count{{registry="r",method="{method}"}} "#
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_to_a_docker_registry_is_counted_by_method_and_status_and_timed() {
    let registry = Registry::start().await.unwrap();
    let (registries, metrics) = clients(&registry.url());
    let before = encode(&metrics);
    assert_eq!(
        all_requests(&before),
        0,
        "configured, nothing sent:\n{before}"
    );
    assert_eq!(requests(&before, "GET", "429"), Some(0), "{before}");
    assert_eq!(timed(&before, "PUT"), Some(0), "{before}");

    let client = registries.get("p", "r").unwrap();
    client.ping().await.unwrap();
    let blob = b"a blob counted once".to_vec();
    let d = digest::sha256(&blob);
    assert_eq!(client.blob_exists("team/app", &d).await.unwrap(), None);
    let upload = client.start_upload("team/app").await.unwrap();
    client
        .put_blob_stream(&upload, &d, blob.len() as u64, blob.clone().into())
        .await
        .unwrap();
    assert!(client.blob_exists("team/app", &d).await.unwrap().is_some());

    let text = encode(&metrics);
    for (method, code, n) in [
        ("GET", "200", 1),
        ("HEAD", "404", 1),
        ("POST", "202", 1),
        ("PUT", "201", 1),
        ("HEAD", "200", 1),
    ] {
        assert_eq!(
            requests(&text, method, code),
            Some(n),
            "{method} {code}:\n{text}"
        );
    }
    assert_eq!(all_requests(&text), 5, "{text}");
    for (method, n) in [("GET", 1), ("HEAD", 2), ("POST", 1), ("PUT", 1)] {
        assert_eq!(timed(&text, method), Some(n), "{method}:\n{text}");
    }
    for line in text.lines() {
        assert!(
            !line.contains("team/app") && !line.contains("sha256:"),
            "a repository or digest in a label: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_of_a_retried_read_is_counted_with_its_429_or_500() {
    let fake = FakeRegistry::start(Behavior {
        retry_after: Some((1, "0".into())),
        transient_500s: 1,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let (registries, metrics) = clients(&fake.url());
    let client = registries.get("p", "r").unwrap();
    assert_eq!(client.head_digest("team/app", "v1").await.unwrap(), None);

    let text = encode(&metrics);
    assert_eq!(requests(&text, "HEAD", "429"), Some(1), "{text}");
    assert_eq!(requests(&text, "HEAD", "500"), Some(1), "{text}");
    assert_eq!(requests(&text, "HEAD", "404"), Some(1), "{text}");
    assert_eq!(timed(&text, "HEAD"), Some(3), "{text}");
    assert_eq!(
        all_requests(&text),
        fake.request_log().len() as u64,
        "one count per request the registry saw: {:?}\n{text}",
        fake.request_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_502_is_counted_once_as_it_is_not_retried() {
    let fake = FakeRegistry::start(Behavior {
        deny: Some((502, "UNAVAILABLE".into(), "bad gateway".into())),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let (registries, metrics) = clients(&fake.url());
    let client = registries.get("p", "r").unwrap();
    client.start_upload("team/app").await.unwrap_err();

    let text = encode(&metrics);
    assert_eq!(requests(&text, "POST", "502"), Some(1), "{text}");
    assert_eq!(all_requests(&text), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_to_the_bearer_realm_count_as_the_registrys_gets() {
    let fake = FakeRegistry::start(Behavior {
        require_bearer: Some(BearerSetup {
            username: "u".into(),
            password: "p".into(),
            service: "fake".into(),
        }),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "p").unwrap();
    let (registries, metrics) =
        clients_of(json!({"name": "r", "url": fake.url(), "insecure": true,
        "credential": {"type": "basic", "username": "u", "password_file": password}}));
    registries.get("p", "r").unwrap().ping().await.unwrap();

    // GET /v2/ → 401, GET /token → 200, GET /v2/ with the token → 200.
    let log = fake.request_log();
    assert!(
        log.iter().any(|(_, path)| path.starts_with("/token")),
        "{log:?}"
    );
    let text = encode(&metrics);
    assert_eq!(requests(&text, "GET", "401"), Some(1), "{text}");
    assert_eq!(requests(&text, "GET", "200"), Some(2), "{text}");
    assert_eq!(all_requests(&text), log.len() as u64, "{log:?}\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_gets_no_answer_is_counted_as_an_error() {
    // A port nothing listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (registries, metrics) = clients(&format!("http://{closed}"));
    let client = registries.get("p", "r").unwrap();
    // A write is sent once (reads are retried on connection errors, each attempt counted).
    client.start_upload("team/app").await.unwrap_err();

    let text = encode(&metrics);
    assert_eq!(requests(&text, "POST", "error"), Some(1), "{text}");
    assert_eq!(all_requests(&text), 1, "{text}");
}
