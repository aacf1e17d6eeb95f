//! Registries of `"type": "harbor"`, against the fake Harbor (`ferry_testkit::HarborSetup`, written
//! from Harbor's swagger and sources — no real Harbor runs here) and a real `docker-registry` on
//! the other side: a missing project is created once before the first push into it, Harbor's
//! refusals (project creation, quota, immutable tags) fail the task once with a clear reason, and
//! a Harbor source is listed through its projects API when `_catalog` is refused.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::clock::now_ms;
use ferry_replicator::config::{Config, RegistryConfig, Secret};
use ferry_replicator::event::EventKind;
use ferry_replicator::oci::client::MAX_LIST_PAGES;
use ferry_replicator::oci::{RegistryClient, RegistryError};
use ferry_replicator::replicate::Registries;
use ferry_replicator::store::history::{MemoryHistory, Retention};
use ferry_replicator::store::queue::memory::MemoryQueue;
use ferry_replicator::store::queue::{DeadLetters, Job, JobQueue};
use ferry_replicator::store::Store;
use ferry_replicator::worker::{Worker, WorkerOptions};
use ferry_testkit::{Behavior, FakeRegistry, HarborSetup, HostileList, Registry};
use serde_json::{json, Value};

/// Harbor robot accounts are named `robot$<name>`.
const USER: &str = "robot$ferry";
const PASSWORD: &str = "s3cret";

/// A fake Harbor whose `/v2/` and API take the robot's basic credentials.
async fn harbor(setup: HarborSetup) -> FakeRegistry {
    FakeRegistry::start(Behavior {
        harbor: Some(setup),
        require_basic: Some((USER.into(), PASSWORD.into())),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// `registry(name, url)` as `"type": "harbor"` with the robot's credential (from a file in `dir`).
fn harbor_registry(dir: &std::path::Path, name: &str, url: &str) -> Value {
    let pw = dir.join(format!("{name}.pw"));
    std::fs::write(&pw, PASSWORD).unwrap();
    let mut r = registry(name, url);
    r["type"] = json!("harbor");
    r["credential"] = json!({"type": "basic", "username": USER, "password_file": pw});
    r
}

/// `ferry.json` syncing `src` into the Harbor `dst`, in a fresh directory.
fn into_harbor(src: &str, dst: &FakeRegistry, policy_extra: Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_config_with(
        dir.path(),
        vec![
            registry("src", src),
            harbor_registry(dir.path(), "dst", &dst.url()),
        ],
        policy(policy_extra),
    );
    dir
}

fn config_path(dir: &tempfile::TempDir) -> String {
    dir.path().join("ferry.json").display().to_string()
}

/// How many requests `fake` received with this method and a path containing `part`.
fn count(fake: &FakeRegistry, method: &str, part: &str) -> usize {
    fake.request_log()
        .iter()
        .filter(|(m, p)| m == method && p.contains(part))
        .count()
}

/// A `type: harbor` client of `fake` with the robot's credential, as the library builds them.
fn harbor_client(fake: &FakeRegistry) -> RegistryClient {
    let cfg: RegistryConfig = serde_json::from_value(
        json!({"name": "harbor", "url": fake.url(), "insecure": true, "type": "harbor"}),
    )
    .unwrap();
    let secret = Secret::Basic {
        username: USER.into(),
        password: PASSWORD.into(),
    };
    RegistryClient::new(&cfg, secret).unwrap()
}

// ---- Harbor as destination ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_project_is_created_once_before_the_first_push_into_it() {
    let src = Registry::start().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let repos = ["team/app", "team/web", "team/db", "tools/cli"];
    for (seed, repo) in repos.iter().enumerate() {
        push_image(
            work.path(),
            seed as u64 + 1,
            &src.host(),
            &format!("{repo}:v1"),
        )
        .await;
    }
    let dst = harbor(HarborSetup::default()).await;
    let dir = into_harbor(&src.url(), &dst, json!({}));
    let (out, report) = sync(dir.path().join("ferry.json").as_path()).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(outcomes(&report, "copied"), 4, "{report:#}");
    assert_eq!(dst.harbor_projects(), ["team", "tools"]);
    assert_eq!(
        count(&dst, "POST", "/api/v2.0/projects"),
        2,
        "one creation per project, however many repositories go into it: {:?}",
        dst.request_log()
    );
    for repo in repos {
        assert!(dst.manifest(repo, "v1").is_some(), "{repo}:v1 was pushed");
    }
    let creations: Vec<_> = dst
        .authorization_log()
        .into_iter()
        .filter(|(m, p, _)| m == "POST" && p == "/api/v2.0/projects")
        .collect();
    assert!(
        creations
            .iter()
            .all(|(_, _, a)| a.as_deref().is_some_and(|a| a.starts_with("Basic "))),
        "the project API gets the robot's own credential: {creations:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diff_against_a_harbor_without_the_project_reports_drift_and_creates_nothing() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    seed_image(&src, "team/app", "v1", vec![1u8; 512]);
    let dst = harbor(HarborSetup::default()).await;
    let dir = into_harbor(&src.url(), &dst, json!({}));
    let out = ferry(&["diff", "--config", &config_path(&dir), "--json"]).await;
    assert_eq!(
        out.code, 1,
        "drift, not an error: {}\n{}",
        out.stdout, out.stderr
    );
    assert!(out.stdout.contains("team/app"), "{}", out.stdout);
    assert!(dst.harbor_projects().is_empty());
    assert_eq!(count(&dst, "POST", ""), 0, "{:?}", dst.request_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_that_may_not_create_projects_fails_the_task_once_naming_project_and_permission() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    seed_image(&src, "team/app", "v1", vec![2u8; 512]);
    let dst = harbor(HarborSetup {
        refuse_project_creation: true,
        ..Default::default()
    })
    .await;
    let dir = into_harbor(&src.url(), &dst, json!({}));
    let (out, report) = sync(dir.path().join("ferry.json").as_path()).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let error = report["tags"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("registry dst")
            && error.contains("project team does not exist")
            && error.contains("permission to create projects"),
        "{error}"
    );
    assert_eq!(
        count(&dst, "POST", "/api/v2.0/projects"),
        1,
        "not retried: {:?}",
        dst.request_log()
    );
    assert_eq!(count(&dst, "POST", "/blobs/uploads"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_project_quota_fails_the_task_naming_the_project_without_retrying() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    seed_image(&src, "team/app", "v1", vec![3u8; 512]);
    let dst = harbor(HarborSetup {
        projects: vec!["team".into()],
        quota_exceeded: ["team".to_string()].into(),
        ..Default::default()
    })
    .await;
    let dir = into_harbor(&src.url(), &dst, json!({}));
    let (out, report) = sync(dir.path().join("ferry.json").as_path()).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let error = report["tags"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("project team: storage quota exceeded")
            && error.contains("configured upper limit"),
        "{error}"
    );
    // The image has two blobs (config and layer): at most one refused upload each, no retry loop.
    let uploads = count(&dst, "POST", "/v2/team/app/blobs/uploads");
    assert!(
        (1..=2).contains(&uploads),
        "{uploads} upload starts: {:?}",
        dst.request_log()
    );
    assert_eq!(count(&dst, "PUT", "/manifests/"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_tag_fails_the_task_naming_tag_and_rule() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    seed_image(&src, "team/app", "v1", vec![4u8; 512]);
    let dst = harbor(HarborSetup {
        projects: vec!["team".into()],
        immutable_tags: ["team/app:v1".to_string()].into(),
        ..Default::default()
    })
    .await;
    let (held, _) = seed_image(&dst, "team/app", "v1", vec![5u8; 512]);
    let dir = into_harbor(&src.url(), &dst, json!({"override": true}));
    let (out, report) = sync(dir.path().join("ferry.json").as_path()).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let error = report["tags"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("tag v1 in project team is immutable")
            && error.contains("immutability rule matches team/app:v1"),
        "{error}"
    );
    assert_eq!(count(&dst, "PUT", "/v2/team/app/manifests/v1"), 1);
    let (_, bytes) = dst.manifest("team/app", "v1").unwrap();
    assert_eq!(
        ferry_testkit::sha256_digest(&bytes),
        held,
        "the tag kept its content"
    );
}

/// Runs a worker over an in-process queue (3 attempts) on `dir`'s config until a push job for
/// `team/app:v1` is settled; returns the dead letters.
async fn run_push_job(dir: &tempfile::TempDir, digest: &str) -> Vec<Job> {
    let config = Config::load(&dir.path().join("ferry.json")).expect("config");
    let registries = Registries::from_config(&config).expect("registries");
    let queue = Arc::new(MemoryQueue::new(RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(50),
        max: Duration::from_millis(200),
    }));
    let history = Arc::new(MemoryHistory::new(Retention::default()));
    let worker = Worker::new(
        &config,
        &registries,
        &Store::new(queue.clone(), history),
        WorkerOptions {
            consumer: "w1".into(),
            lease: Duration::from_secs(5),
            poll_interval: Duration::from_millis(20),
            ..Default::default()
        },
    )
    .expect("worker");
    queue
        .enqueue(Job {
            digest: Some(digest.to_string()),
            event_time_ms: now_ms(),
            ..Job::new("test", EventKind::Push, "team/app", "v1")
        })
        .await
        .unwrap();
    drain_queue(queue.as_ref(), Arc::new(worker)).await;
    queue.dead_letters(10).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_job_into_a_harbor_destination_creates_the_project_and_pushes() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let (digest, _) = seed_image(&src, "team/app", "v1", vec![6u8; 512]);
    let dst = harbor(HarborSetup::default()).await;
    let dir = into_harbor(
        &src.url(),
        &dst,
        json!({"trigger": {"type": "event_based"}}),
    );
    let dead = run_push_job(&dir, &digest).await;
    assert!(dead.is_empty(), "{dead:?}");
    let (_, bytes) = dst.manifest("team/app", "v1").expect("pushed");
    assert_eq!(ferry_testkit::sha256_digest(&bytes), digest);
    assert_eq!(dst.harbor_projects(), ["team"]);
    assert_eq!(count(&dst, "POST", "/api/v2.0/projects"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_job_refused_by_a_full_quota_is_dead_lettered_on_its_first_attempt() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let (digest, _) = seed_image(&src, "team/app", "v1", vec![7u8; 512]);
    let dst = harbor(HarborSetup {
        projects: vec!["team".into()],
        quota_exceeded: ["team".to_string()].into(),
        ..Default::default()
    })
    .await;
    let dir = into_harbor(
        &src.url(),
        &dst,
        json!({"trigger": {"type": "event_based"}}),
    );
    let dead = run_push_job(&dir, &digest).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].attempt, 1, "not retried: {dead:?}");
    let error = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("project team: storage quota exceeded"),
        "{error}"
    );
}

// ---- Harbor as source ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harbor_source_without_catalog_is_listed_through_its_projects_page_by_page() {
    let src = harbor(HarborSetup {
        projects: vec!["alpha".into(), "beta".into(), "gamma".into()],
        max_page_size: 2,
        ..Default::default()
    })
    .await;
    let repos = ["alpha/a1", "alpha/a2", "alpha/nested/a3", "beta/b1"];
    for (i, repo) in repos.iter().enumerate() {
        seed_image(&src, repo, "v1", vec![i as u8 + 10; 512]);
    }
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_with(
        dir.path(),
        vec![
            harbor_registry(dir.path(), "src", &src.url()),
            registry("dst", &dst.url()),
        ],
        policy(json!({})),
    );
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(outcomes(&report, "copied"), 4, "{report:#}");
    for repo in repos {
        assert_eq!(manifest_status(&dst.url(), repo, "v1").await, 200, "{repo}");
    }
    assert_eq!(
        count(&src, "GET", "/v2/_catalog"),
        0,
        "{:?}",
        src.request_log()
    );
    assert_eq!(count(&src, "GET", "/api/v2.0/projects?page=2"), 1);
    assert_eq!(
        count(&src, "GET", "/api/v2.0/projects/alpha/repositories?page=2"),
        1
    );
    let api = src
        .authorization_log()
        .into_iter()
        .filter(|(_, p, _)| p.starts_with("/api/"))
        .collect::<Vec<_>>();
    assert!(
        !api.is_empty() && api.iter().all(|(_, _, a)| a.is_some()),
        "every API request carries the robot's credential: {api:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harbor_pagination_link_to_another_host_is_refused_without_going_there() {
    let src = harbor(HarborSetup {
        projects: vec!["alpha".into(), "beta".into()],
        max_page_size: 1,
        ..Default::default()
    })
    .await;
    seed_image(&src, "alpha/app", "v1", vec![20u8; 512]);
    let elsewhere = FakeRegistry::start(Behavior::default()).await.unwrap();
    src.set_behavior(|b| b.link_origin = Some(elsewhere.url()));
    let e = harbor_client(&src).catalog().await.unwrap_err();
    assert!(
        matches!(e, RegistryError::Refused { .. })
            && e.to_string()
                .contains("refusing to follow a pagination Link")
            && e.to_string().contains("another origin"),
        "{e}"
    );
    assert_eq!(elsewhere.request_log(), vec![], "nothing was sent there");

    // `ferry sync` fails the same way, with a clear message.
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_with(
        dir.path(),
        vec![
            harbor_registry(dir.path(), "src", &src.url()),
            registry("dst", &dst.url()),
        ],
        policy(json!({})),
    );
    let out = sync_plain(&cfg).await;
    assert_ne!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("refusing to follow a pagination Link"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(elsewhere.request_log(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harbor_project_names_outside_the_grammar_are_skipped_not_requested() {
    let src = harbor(HarborSetup {
        projects: vec!["team".into(), "Bad..Name".into(), "x?y".into()],
        ..Default::default()
    })
    .await;
    seed_image(&src, "team/app", "v1", vec![21u8; 64]);
    let repositories = harbor_client(&src).catalog().await.unwrap();
    assert_eq!(repositories, ["team/app"]);
    let asked: Vec<_> = src
        .request_log()
        .into_iter()
        .filter(|(_, p)| p.contains("/repositories"))
        .collect();
    assert_eq!(asked.len(), 1, "{asked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_harbor_project_list_is_cut_off_at_the_page_limit() {
    let src = harbor(HarborSetup::default()).await;
    src.set_behavior(|b| b.hostile_lists = Some(HostileList::Endless { per_page: 0 }));
    let e = harbor_client(&src).catalog().await.unwrap_err();
    assert!(
        matches!(e, RegistryError::ListTooLarge { .. })
            && e.to_string().contains("Harbor's project list")
            && e.to_string().contains(&format!("{MAX_LIST_PAGES} pages")),
        "{e}"
    );
    assert_eq!(src.request_log().len(), MAX_LIST_PAGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_harbor_source_without_catalog_is_listed_through_its_projects() {
    use ferry_replicator::ingest::poll::{PollMetrics, PollOptions, Poller};
    let src = harbor(HarborSetup {
        projects: vec!["alpha".into(), "beta".into()],
        max_page_size: 1,
        ..Default::default()
    })
    .await;
    seed_image(&src, "alpha/app", "v1", vec![30u8; 64]);
    seed_image(&src, "beta/web", "v1", vec![31u8; 64]);
    let dir = tempfile::tempdir().unwrap();
    let mut polled = harbor_registry(dir.path(), "src", &src.url());
    polled["poll_interval_seconds"] = json!(1);
    let path = write_config_with(
        dir.path(),
        vec![polled, registry("dst", "http://127.0.0.1:9")],
        policy(json!({"trigger": {"type": "event_based"}})),
    );
    let config = Config::load(&path).expect("config");
    let registries = Registries::from_config(&config).expect("registries");
    let queue = Arc::new(MemoryQueue::new(RetryPolicy::default()));
    let mut poller =
        Poller::from_config(&config, &registries, queue.clone(), PollMetrics::default())
            .expect("pollers")
            .remove(0)
            .with_options(PollOptions::every(Duration::from_secs(1)));
    let baseline = poller.pass().await.unwrap();
    assert_eq!(
        (baseline.repositories, baseline.tags),
        (2, 2),
        "{baseline:?}"
    );
    seed_image(&src, "beta/web", "v2", vec![32u8; 64]);
    let pass = poller.pass().await.unwrap();
    assert_eq!((pass.pushes, pass.enqueued), (1, 1), "{pass:?}");
    assert_eq!(
        count(&src, "GET", "/v2/_catalog"),
        0,
        "{:?}",
        src.request_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_harbor_page_is_cut_off_at_the_byte_limit() {
    use ferry_replicator::oci::client::MAX_LIST_BYTES;
    let src = harbor(HarborSetup::default()).await;
    let bytes = MAX_LIST_BYTES as usize + 1024;
    src.set_behavior(|b| b.hostile_lists = Some(HostileList::Oversized { bytes }));
    let e = harbor_client(&src).catalog().await.unwrap_err();
    assert!(
        matches!(e, RegistryError::ListTooLarge { .. })
            && e.to_string().contains(&format!("{MAX_LIST_BYTES} bytes")),
        "{e}"
    );
}
