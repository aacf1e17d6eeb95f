//! Redis/Valkey as production runs it: TLS only (`rediss://`) with a certificate signed by a
//! private CA, and a password (`requirepass`). Each case starts its own TLS-only server
//! ([`RedisServer::start_tls`], a throwaway CA made with `openssl`); the queue cases run on both
//! `redis-server` and `valkey-server`, the daemon cases start the real `ferry` binary and read
//! its log, which must never show the password.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{free_local_addr, Serve};
use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::event::EventKind;
use ferry_replicator::runtime::RedisFlags;
use ferry_replicator::store::queue::{EnqueueOutcome, Job, JobQueue, RedisQueue};
use ferry_replicator::store::redis::{connect_waiting, RedisTarget};
use ferry_testkit::RedisServer;

const PASSWORD: &str = "pw-3f9c1a7e-never-logged";
const PREFIX: &str = "ferry-tls-test";

async fn tls_server(binary: &str) -> RedisServer {
    RedisServer::start_tls(binary, Some(PASSWORD))
        .await
        .expect("start a TLS-only server")
}

/// `rediss://:PASSWORD@127.0.0.1:PORT/0` of `server`.
fn url_with_password(server: &RedisServer) -> String {
    format!("rediss://:{PASSWORD}@{}/0", server.host())
}

fn ca(server: &RedisServer) -> &Path {
    server.ca_path().expect("a TLS server has a CA")
}

/// Enqueue → claim → ack over TLS, with the URL and CA resolved the way the daemons do it.
async fn queue_basics_over_tls_with_the_private_ca(binary: &str) {
    let server = tls_server(binary).await;
    let flags = RedisFlags {
        url: Some(url_with_password(&server)),
        redis_url_file: None,
        redis_ca_file: Some(ca(&server).to_path_buf()),
        redis_wait_replicas: 0,
    };
    let target = flags.required_target().expect("the flags name a server");
    let queue = RedisQueue::connect_to(&target, PREFIX, RetryPolicy::default())
        .await
        .expect("connect over TLS with the CA and the password");
    let job = Job::new("eu-to-us", EventKind::Push, "platform/api", "v1");
    assert_eq!(queue.enqueue(job).await.unwrap(), EnqueueOutcome::Enqueued);
    let leases = queue
        .claim("w1", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].job.reference, "v1");
    queue.ack(&leases[0]).await.unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.depth, stats.in_flight), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn the_queue_works_over_tls_with_a_private_ca_on_redis_server() {
    queue_basics_over_tls_with_the_private_ca("redis-server").await;
}

#[tokio::test]
async fn the_queue_works_over_tls_with_a_private_ca_on_valkey_server() {
    queue_basics_over_tls_with_the_private_ca("valkey-server").await;
}

/// `text` says each of `wanted` and shows none of `secrets`.
fn assert_says(text: &str, wanted: &[&str], secrets: &[&str]) {
    for w in wanted {
        assert!(text.contains(w), "missing {w:?} in:\n{text}");
    }
    for s in secrets {
        assert!(!text.contains(s), "shows a password in:\n{text}");
    }
}

#[tokio::test]
async fn a_server_certificate_from_an_unknown_ca_is_refused_with_a_certificate_error() {
    let server = tls_server("redis-server").await;
    // Without --redis-ca-file only the public roots are trusted.
    let target = RedisTarget::new(&url_with_password(&server)).unwrap();
    let e = connect_waiting(
        &target,
        Duration::ZERO,
        Duration::from_millis(10),
        std::future::pending(),
        || RedisQueue::connect_to(&target, PREFIX, RetryPolicy::default()),
    )
    .await
    .err()
    .expect("an untrusted certificate must not connect");
    // The hint says what to do.
    assert_says(
        &format!("{e:#} {e:?}"),
        &["certificate", "--redis-ca-file"],
        &[PASSWORD],
    );
}

#[tokio::test]
async fn a_wrong_password_is_refused_without_showing_it() {
    let server = tls_server("redis-server").await;
    let wrong = "wrong-pw-5d2e8b";
    let target = RedisTarget::with_ca(
        &format!("rediss://:{wrong}@{}/0", server.host()),
        std::fs::read(ca(&server)).unwrap(),
    )
    .unwrap();
    let e = RedisQueue::connect_to(&target, PREFIX, RetryPolicy::default())
        .await
        .err()
        .expect("a wrong password must not connect");
    assert_says(&format!("{e} {e:?} {target:?}"), &[], &[wrong, PASSWORD]);
}

/// A daemon's config (the registries are never contacted).
fn write_config(dir: &Path) -> std::path::PathBuf {
    common::write_config_with(
        dir,
        vec![
            common::registry("src", "http://127.0.0.1:9"),
            common::registry("dst", "http://127.0.0.1:9"),
        ],
        common::policy(serde_json::json!({})),
    )
}

/// How a `ferry worker` run ended.
struct WorkerRun {
    /// `/healthz` answered 200 (it does only while the queue answers); `None` when the worker
    /// exited first, with this code.
    exit_code: Option<i32>,
    log: String,
}

/// Runs `ferry worker` with `args` (plus `--listen`) against `server`'s CA until its `/healthz`
/// answers 200 or it exits, then kills it.
async fn run_worker(server: &RedisServer, args: &[&str]) -> WorkerRun {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let (listen, log) = (free_local_addr(), dir.path().join("worker.log"));
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "worker",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &listen,
        ])
        .arg("--redis-ca-file")
        .arg(ca(server))
        .args(args)
        .env_remove("FERRY_REDIS_URL")
        .env("FERRY_LOG", "debug")
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start ferry worker");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit_code = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break Some(status.code().unwrap_or(-1));
        }
        let healthz = reqwest::get(format!("http://{listen}/healthz")).await;
        if healthz.is_ok_and(|r| r.status().is_success()) {
            worker.kill().await.unwrap();
            break None;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "neither healthy nor exited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    WorkerRun {
        exit_code,
        log: std::fs::read_to_string(&log).unwrap(),
    }
}

/// A file holding `url`, kept as long as the returned directory.
fn url_file(url: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redis-url");
    std::fs::write(&path, format!("{url}\n")).unwrap();
    (dir, path.to_str().unwrap().to_string())
}

#[tokio::test]
async fn a_worker_reads_the_url_with_its_password_from_redis_url_file_and_never_logs_it() {
    let server = tls_server("redis-server").await;
    let (_dir, file) = url_file(&url_with_password(&server));
    let run = run_worker(&server, &["--redis-url-file", &file]).await;
    assert_eq!(
        run.exit_code, None,
        "healthy while the queue answers:\n{}",
        run.log
    );
    // No warning about /proc for a URL from a file.
    assert_says(&run.log, &[], &[PASSWORD, "/proc"]);
}

#[tokio::test]
async fn a_password_on_the_command_line_is_warned_about_without_being_logged() {
    let server = tls_server("redis-server").await;
    let run = run_worker(&server, &["--redis", &url_with_password(&server)]).await;
    assert_eq!(run.exit_code, None, "{}", run.log);
    assert_says(&run.log, &["/proc", "--redis-url-file"], &[PASSWORD]);
}

#[tokio::test]
async fn a_worker_that_cannot_authenticate_exits_without_showing_the_password() {
    let server = tls_server("redis-server").await;
    let wrong = "wrong-pw-71c0aa";
    let (_dir, file) = url_file(&format!("rediss://:{wrong}@{}/0", server.host()));
    let args = ["--redis-url-file", &file, "--redis-connect-timeout", "0"];
    let run = run_worker(&server, &args).await;
    assert_eq!(run.exit_code, Some(2), "{}", run.log);
    assert_says(
        &run.log,
        &["cannot reach the queue at rediss://:***@"],
        &[wrong, PASSWORD],
    );
}

#[tokio::test]
async fn serve_takes_its_redis_url_from_ferry_redis_url() {
    let server = tls_server("valkey-server").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let url = url_with_password(&server);
    let mut serve = Serve::start_with(
        &config,
        &free_local_addr(),
        "webhook-token",
        &["--redis-ca-file", ca(&server).to_str().unwrap()],
        &[("FERRY_REDIS_URL", url.as_str())],
        dir.path().join("serve.log"),
    )
    .await;
    serve.terminate().await;
    assert_says(&serve.log(), &["queue=\"redis\""], &[PASSWORD]);
}
