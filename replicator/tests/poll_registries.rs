//! The tag poller against registries: a fake registry where requests can be counted (HEADs, never
//! manifest GETs), quotas announced and 429s answered, and hostile names listed (skipped by the
//! poller and by full reconciliations); a real docker-registry where skopeo pushes
//! and a delete are seen through HEADs; a real redis-server that goes away mid-pass.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::config::Config;
use ferry_replicator::event::EventKind;
use ferry_replicator::ingest::poll::{PollError, PollMetrics, PollOptions, Poller};
use ferry_replicator::oci::RegistryError;
use ferry_replicator::policy::Selector;
use ferry_replicator::replicate::{list_source, Registries};
use ferry_replicator::store::queue::{Job, JobQueue, MemoryQueue, RedisQueue};
use ferry_testkit::{Behavior, FakeRegistry, RedisServer, Registry};
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A config whose `src` registry is polled, with an event-based policy `test` using `filters`.
fn poll_config(dir: &std::path::Path, src_url: &str, filters: Value) -> Config {
    let mut src = registry("src", src_url);
    src["poll_interval_seconds"] = json!(1);
    let path = write_config_with(
        dir,
        vec![src, registry("dst", "http://127.0.0.1:9")],
        policy(json!({
            "trigger": {"type": "event_based"},
            "replicate_deletion": true,
            "filters": filters,
        })),
    );
    Config::load(&path).expect("config")
}

fn poller(config: &Config, queue: Arc<dyn JobQueue>) -> Poller {
    let registries = Registries::from_config(config).expect("registries");
    let mut pollers =
        Poller::from_config(config, &registries, queue, PollMetrics::default()).expect("pollers");
    assert_eq!(pollers.len(), 1, "one polled source registry");
    pollers.remove(0).with_options(PollOptions {
        concurrency: 2,
        ..PollOptions::every(Duration::from_secs(1))
    })
}

/// A distinct tiny manifest (the fake does not validate manifests).
fn manifest(n: u32) -> Vec<u8> {
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "n": n})).unwrap()
}

/// Every job waiting in the queue, as (kind, repository, reference, digest), sorted.
async fn drain_jobs(queue: &dyn JobQueue) -> Vec<(EventKind, String, String, Option<String>)> {
    let mut out = Vec::new();
    loop {
        let leases = queue
            .claim("test", 100, Duration::from_secs(30))
            .await
            .unwrap();
        if leases.is_empty() {
            break;
        }
        for l in leases {
            let Job {
                kind,
                repository,
                reference,
                digest,
                ..
            } = l.job.clone();
            out.push((kind, repository, reference, digest));
            queue.ack(&l).await.unwrap();
        }
    }
    out.sort_by(|a, b| (&a.1, &a.2).cmp(&(&b.1, &b.2)));
    out
}

fn count(log: &[(String, String)], method: &str, path_part: &str) -> usize {
    log.iter()
        .filter(|(m, p)| m == method && p.contains(path_part))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_become_events_through_heads_only() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let v1 = src.put_manifest("team/app", Some("v1"), OCI_MANIFEST, manifest(1));
    src.put_manifest("team/app", Some("v2"), OCI_MANIFEST, manifest(2));
    // Not covered by the tag filter: never HEADed.
    src.put_manifest("team/app", Some("dev"), OCI_MANIFEST, manifest(9));
    let config = poll_config(
        dir.path(),
        &src.url(),
        json!([{"type": "name", "value": "team/**"}, {"type": "tag", "value": "v*"}]),
    );
    let queue = Arc::new(MemoryQueue::new(RetryPolicy::default()));
    let mut p = poller(&config, queue.clone());

    // The first pass records a baseline and emits nothing.
    let r = p.pass().await.unwrap();
    assert!(r.baseline, "{r:?}");
    assert_eq!(
        (r.repositories, r.tags, r.heads, r.enqueued),
        (1, 2, 2, 0),
        "{r:?}"
    );
    assert!(drain_jobs(queue.as_ref()).await.is_empty());

    // v2 moves, v3 appears, v1 is deleted.
    let v2b = src.put_manifest("team/app", Some("v2"), OCI_MANIFEST, manifest(22));
    let v3 = src.put_manifest("team/app", Some("v3"), OCI_MANIFEST, manifest(3));
    assert!(src.remove_tag("team/app", "v1"));
    src.clear_request_log();
    let r = p.pass().await.unwrap();
    assert!(!r.baseline);
    assert_eq!((r.pushes, r.deletes, r.enqueued), (2, 1, 3), "{r:?}");
    let jobs = drain_jobs(queue.as_ref()).await;
    let s = |v: &str| v.to_string();
    assert_eq!(
        jobs,
        [
            (EventKind::Delete, s("team/app"), s("v1"), Some(v1.clone())),
            (EventKind::Push, s("team/app"), s("v2"), Some(v2b)),
            (EventKind::Push, s("team/app"), s("v3"), Some(v3)),
        ]
    );
    let log = src.request_log();
    assert_eq!(
        count(&log, "GET", "/manifests/"),
        0,
        "never a manifest GET: {log:?}"
    );
    assert_eq!(
        count(&log, "HEAD", "/manifests/"),
        2,
        "one HEAD per covered tag: {log:?}"
    );
    assert_eq!(count(&log, "HEAD", "/manifests/dev"), 0, "{log:?}");

    // Nothing changed: nothing to do.
    let r = p.pass().await.unwrap();
    assert_eq!((r.pushes, r.deletes, r.enqueued), (0, 0, 0), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literal_repository_names_are_polled_without_the_catalog() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    src.put_manifest("library/nginx", Some("1.27"), OCI_MANIFEST, manifest(1));
    src.put_manifest("library/other", Some("1"), OCI_MANIFEST, manifest(2));
    let config = poll_config(
        dir.path(),
        &src.url(),
        json!([{"type": "name", "value": "library/nginx"}]),
    );
    let queue = Arc::new(MemoryQueue::new(RetryPolicy::default()));
    let mut p = poller(&config, queue.clone());
    let r = p.pass().await.unwrap();
    assert_eq!((r.repositories, r.heads), (1, 1), "{r:?}");
    let log = src.request_log();
    assert_eq!(count(&log, "GET", "/_catalog"), 0, "{log:?}");
    assert_eq!(count(&log, "GET", "/library/other/"), 0, "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_the_registry_lists_outside_the_grammar_never_become_events() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    src.put_manifest("team/app", Some("v1"), OCI_MANIFEST, manifest(1));
    let config = poll_config(
        dir.path(),
        &src.url(),
        json!([{"type": "name", "value": "team/**"}]),
    );
    let queue = Arc::new(MemoryQueue::new(RetryPolicy::default()));
    let mut p = poller(&config, queue.clone());
    assert!(p.pass().await.unwrap().baseline);

    // A hostile catalog and tag list: only `team/app:v2` follows the grammar.
    let v2 = src.put_manifest("team/app", Some("v2"), OCI_MANIFEST, manifest(2));
    src.put_manifest("team/App", Some("v1"), OCI_MANIFEST, manifest(3));
    src.put_manifest("team/a..b", Some("v1"), OCI_MANIFEST, manifest(4));
    src.put_manifest("team/app", Some("v2|x"), OCI_MANIFEST, manifest(5));
    src.put_manifest("team/app", Some(".v2"), OCI_MANIFEST, manifest(6));
    src.clear_request_log();
    let r = p.pass().await.unwrap();
    assert_eq!((r.repositories, r.tags, r.pushes), (1, 2, 1), "{r:?}");
    let s = |v: &str| v.to_string();
    assert_eq!(
        drain_jobs(queue.as_ref()).await,
        [(EventKind::Push, s("team/app"), s("v2"), Some(v2))]
    );
    let log = src.request_log();
    assert_eq!(count(&log, "GET", "/team/App/"), 0, "never listed: {log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_reconciliations_skip_listed_names_outside_the_grammar() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    src.put_manifest("team/app", Some("v1"), OCI_MANIFEST, manifest(1));
    src.put_manifest("team/app", Some("v1|x"), OCI_MANIFEST, manifest(2));
    src.put_manifest("team/App", Some("v1"), OCI_MANIFEST, manifest(3));
    let config = poll_config(
        dir.path(),
        &src.url(),
        json!([{"type": "name", "value": "team/**"}]),
    );
    let policy = &config.policies[0];
    let client = Registries::from_config(&config)
        .unwrap()
        .get(&policy.name, "src")
        .unwrap();
    let listed = list_source(&client, policy, &Selector::new(policy).unwrap())
        .await
        .unwrap();
    let names: Vec<_> = listed
        .iter()
        .map(|r| (r.repository.as_str(), r.tags.clone(), r.all_tags.clone()))
        .collect();
    assert_eq!(
        names,
        [("team/app", vec!["v1".to_string()], vec!["v1".to_string()])]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_used_quota_stops_the_pass_and_429s_delete_nothing() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for repo in ["a/one", "a/two"] {
        for t in 0..3 {
            src.put_manifest(repo, Some(&format!("t{t}")), OCI_MANIFEST, manifest(t));
        }
    }
    let config = poll_config(
        dir.path(),
        &src.url(),
        json!([{"type": "name", "value": "a/*"}]),
    );
    let queue = Arc::new(MemoryQueue::new(RetryPolicy::default()));
    let mut p = poller(&config, queue.clone());
    assert!(p.pass().await.unwrap().baseline);

    // 5 of 100 left (reserve 10%): the pass stops after the first repository's HEADs.
    src.set_behavior(|b| b.rate_limit = Some((100, 5)));
    let r = p.pass().await.unwrap();
    assert!(r.rate_limited, "{r:?}");
    assert_eq!(r.heads, 3, "only the first repository was checked: {r:?}");

    // A 429 that outlasts the client's retries ends the pass with an error…
    src.set_behavior(|b| {
        b.rate_limit = None;
        b.retry_after = Some((1_000, "0".into()));
    });
    let e = p.pass().await.unwrap_err();
    assert!(
        matches!(
            &e,
            PollError::Registry {
                source: RegistryError::RateLimited { .. },
                ..
            }
        ),
        "{e}"
    );
    // …and once the registry answers again, nothing is reported deleted or changed.
    src.set_behavior(|b| b.retry_after = None);
    let r = p.pass().await.unwrap();
    assert_eq!((r.pushes, r.deletes), (0, 0), "{r:?}");
    assert!(drain_jobs(queue.as_ref()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_seen_while_the_queue_is_down_is_enqueued_on_the_next_pass() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(true).await.unwrap();
    let queue: Arc<dyn JobQueue> = Arc::new(
        RedisQueue::connect(&redis.url(), "poll-test", RetryPolicy::default())
            .await
            .unwrap(),
    );
    src.put_manifest("team/app", Some("v1"), OCI_MANIFEST, manifest(1));
    let config = poll_config(dir.path(), &src.url(), json!([]));
    let mut p = poller(&config, queue.clone());
    assert!(p.pass().await.unwrap().baseline);

    let v2 = src.put_manifest("team/app", Some("v2"), OCI_MANIFEST, manifest(2));
    redis.kill().await;
    let e = p.pass().await.unwrap_err();
    assert!(matches!(e, PollError::Queue(_)), "{e}");
    redis.restart().await.unwrap();
    // The connection manager reconnects in the background; the pass retries the change.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let r = loop {
        match p.pass().await {
            Ok(r) => break r,
            Err(PollError::Queue(e)) if tokio::time::Instant::now() < deadline => {
                eprintln!("queue not back yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!((r.pushes, r.enqueued), (1, 1), "{r:?}");
    let jobs = drain_jobs(queue.as_ref()).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].3.as_deref(), Some(v2.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_deletes_on_a_real_registry_are_seen() {
    let src = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = poll_config(dir.path(), &src.url(), json!([]));
    let queue = Arc::new(MemoryQueue::new(RetryPolicy::default()));
    let mut p = poller(&config, queue.clone());
    let r = p.pass().await.unwrap();
    assert!(
        r.baseline && r.repositories == 0,
        "an empty registry: {r:?}"
    );

    let d = push_image(dir.path(), 7, &src.host(), "team/app:v1").await;
    let r = p.pass().await.unwrap();
    assert_eq!((r.pushes, r.enqueued), (1, 1), "{r:?}");
    let jobs = drain_jobs(queue.as_ref()).await;
    assert_eq!(
        jobs,
        [(
            EventKind::Push,
            "team/app".to_string(),
            "v1".to_string(),
            Some(d.clone())
        )]
    );

    // Deleting the manifest removes the tag; the repository stays (empty tag list).
    let registries = Registries::from_config(&config).unwrap();
    let client = registries.get("test", "src").unwrap();
    let digest = ferry_replicator::oci::digest::parse(&d).unwrap();
    assert!(client.delete_manifest("team/app", &digest).await.unwrap());
    let r = p.pass().await.unwrap();
    assert_eq!((r.pushes, r.deletes), (0, 1), "{r:?}");
    let jobs = drain_jobs(queue.as_ref()).await;
    assert_eq!(jobs[0].0, EventKind::Delete);
    assert_eq!(jobs[0].3.as_deref(), Some(d.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_what_the_pollers_saw() {
    use ferry_replicator::catalog::Reload as _;
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    src.put_manifest("team/app", Some("v1"), OCI_MANIFEST, manifest(1));
    let config = poll_config(dir.path(), &src.url(), json!([]));
    let registries = Registries::from_config(&config).unwrap();
    let queue = Arc::new(MemoryQueue::new(RetryPolicy::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let set = ferry_replicator::ingest::poll::PollerSet::start(
        &config,
        &registries,
        queue.clone(),
        PollMetrics::default(),
        stop.clone(),
    )
    .unwrap();
    assert_eq!(set.registries(), ["src"]);
    // The first pass (a baseline) has run once the registry was asked for its tags.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(&src.request_log(), "HEAD", "/manifests/v1") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no first pass");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A reload (policies changed through the API) replaces the pollers; the new one must not
    // start from a fresh baseline, or the change below would be swallowed.
    set.reload(&config, &registries).unwrap();
    let v2 = src.put_manifest("team/app", Some("v2"), OCI_MANIFEST, manifest(2));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let jobs = loop {
        let jobs = drain_jobs(queue.as_ref()).await;
        if !jobs.is_empty() || tokio::time::Instant::now() > deadline {
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        jobs,
        [(
            EventKind::Push,
            "team/app".to_string(),
            "v2".to_string(),
            Some(v2)
        )]
    );
    stop.cancel();
    set.wait().await;
}
