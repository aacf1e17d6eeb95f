//! One conformance suite for every [`JobQueue`] backend (the Quickwit `storage_test_suite` idea):
//! each case is an `async fn(Backend)` written against `Arc<dyn QueueBackend>`, and the `suite!`
//! macro instantiates it for the in-memory queue, `RedisQueue` on `redis-server` and `RedisQueue`
//! on `valkey-server` (modules `memory_backend`, `redis_server`, `valkey_server`), on both
//! through a user restricted by the documented ACL rule (`redis_acl`, `valkey_acl`), and on a
//! server the operator names (`other_server`). Cases that need a server (corrupt data written
//! behind the queue's back, other prefixes) run for the server backends only, and cases that kill
//! and restart it only where the harness started it.
//!
//! # Another Redis-protocol server (`other_server`)
//! - `FERRY_CONFORMANCE_SERVER=/usr/bin/keydb-server`: the harness starts that binary per case,
//!   as it starts `redis-server` (same flags: `--port --bind --dir --appendonly yes --appendfsync
//!   everysec --save ''`), so every case runs, restarts included.
//! - `FERRY_CONFORMANCE_URL=redis://[user:password@]host:port[/db]`: a server already running
//!   (Dragonfly in a container, a managed service). Each case works under its own random key
//!   prefix and deletes its keys afterwards; nothing else on the server is touched. The cases that
//!   kill and restart the server are **ignored** (listed as skipped with the reason), since the
//!   harness cannot restart it.
//!
//! Which cases are ignored is decided when the tests are compiled (`build.rs` sets a `cfg` per
//! variable; cargo rebuilds when one changes): with neither variable, every `other_server` case
//! is ignored — skipped, never an empty pass — and run on purpose without one
//! (`--run-ignored all`) it fails saying what to set. Run:
//! `FERRY_CONFORMANCE_URL=redis://127.0.0.1:6379/0 cargo nextest run -p ferry-replicator --test
//! queue_conformance --status-level skip other_server`.
//!
//! Every server case started by the harness gets its own server on a free port with `appendonly
//! yes`, so cases are independent and run in parallel. `valkey-server` missing is a failure, never
//! a skip (CI installs it from bookworm-backports; a skipped variant would count as passed).
//!
//! Timing: a check that something is *not yet* expired or due uses a lease, TTL or backoff of
//! seconds ([`HOLDS`], or a 10 s retry backoff), which no pause between two calls on a loaded
//! machine reaches; a check that something *has* expired or come due polls for it with a generous
//! deadline ([`PATIENCE`]) and then checks the clock, so a slow machine only makes a case take
//! longer. Fixed sleeps remain only where more elapsed time cannot change the outcome (waiting past
//! a short lease or the largest backoff of [`fast`] before a claim).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::catalog::{PolicyStore, RedisPolicyStore};
use ferry_replicator::clock::now_ms;
use ferry_replicator::event::{Event, EventKind};
use ferry_replicator::oci::gate::SharedGate;
use ferry_replicator::store::history::{
    Execution, ExecutionQuery, ExecutionState, History, MemoryHistory, RedisHistory, Retention,
    Task, TaskState, WorkerInfo,
};
use ferry_replicator::store::ledger::{RedisTagLedger, TagLedger, TagWrite};
use ferry_replicator::store::limits::RedisLimits;
use ferry_replicator::store::outbox::{Forwarded, Outbox, RedisOutbox};
use ferry_replicator::store::queue::{
    BlobLeases, EnqueueOutcome, FailOutcome, Job, JobQueue, Lease, MemoryQueue, QueueBackend,
    QueueStats, RedisQueue, UploadCheckpoint,
};
use ferry_replicator::store::redis::OP_TIMEOUT;
use ferry_replicator::store::{acl_rule, StartedBy, StoreError};
use ferry_replicator::throttle::SharedSpeed;
use ferry_testkit::RedisServer;

/// The key prefix of cases on a server the harness started (a server of their own).
const PREFIX: &str = "ferry-test";

/// The operator's server binary for `other_server` (started per case).
const SERVER_ENV: &str = "FERRY_CONFORMANCE_SERVER";
/// The operator's running server for `other_server`.
const URL_ENV: &str = "FERRY_CONFORMANCE_URL";

/// The user and password `redis_acl` cases connect as.
const ACL_USER: &str = "ferry";
const ACL_PASSWORD: &str = "conformance-secret";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Memory,
    Redis,
    Valkey,
    /// `redis-server`, the queue connected as a user holding only [`acl_rule`].
    RedisAcl,
    /// The same on `valkey-server`.
    ValkeyAcl,
    /// What [`SERVER_ENV`] or [`URL_ENV`] names.
    Other,
}

struct Harness {
    queue: Arc<dyn QueueBackend>,
    /// The Redis queue behind `queue` (its history lives next to it); `None` for memory.
    redis: Option<RedisQueue>,
    /// The server the harness started; `None` for memory and a [`URL_ENV`] server.
    server: Option<RedisServer>,
    /// A URL with every right, for commands behind the queue's back; `None` for memory.
    admin_url: Option<String>,
    /// The queue's key prefix: [`PREFIX`], or a random one on a shared server.
    prefix: String,
}

/// Where the `other_server` cases run, from the environment.
enum OtherServer {
    Binary(String),
    Url(String),
}

impl OtherServer {
    fn from_env() -> OtherServer {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        match (var(SERVER_ENV), var(URL_ENV)) {
            (Some(binary), None) => OtherServer::Binary(binary),
            (None, Some(url)) => OtherServer::Url(url),
            (Some(_), Some(_)) => panic!("set one of {SERVER_ENV} and {URL_ENV}, not both"),
            (None, None) => panic!(
                "the other_server cases need {SERVER_ENV}=/path/to/server-binary or \
                 {URL_ENV}=redis://host:port/db (see this file's docs)"
            ),
        }
    }
}

impl Harness {
    /// The queue under test with `policy`; a missing server binary fails the test.
    async fn start(backend: Backend, policy: RetryPolicy) -> Harness {
        let binary = match backend {
            Backend::Memory => {
                return Harness {
                    queue: Arc::new(MemoryQueue::new(policy)),
                    redis: None,
                    server: None,
                    admin_url: None,
                    prefix: PREFIX.into(),
                };
            }
            Backend::Redis | Backend::RedisAcl => "redis-server".to_owned(),
            Backend::Valkey | Backend::ValkeyAcl => "valkey-server".to_owned(),
            Backend::Other => match OtherServer::from_env() {
                OtherServer::Binary(binary) => binary,
                OtherServer::Url(url) => return Harness::on_running_server(url, policy).await,
            },
        };
        assert!(
            on_path(&binary),
            "`{binary}` is not on PATH. Install it (valkey: `apt-get install -t bookworm-backports \
             valkey-server`; `bash .ci/run` installs everything)"
        );
        let server = RedisServer::start_binary(&binary, true)
            .await
            .expect("start the server");
        let admin_url = server.url();
        let info = raw_command(&admin_url, redis::cmd("INFO").arg("server")).await;
        let info = String::from_utf8_lossy(&info);
        match backend {
            Backend::Other => eprintln!("{binary}: {}", server_version(&info)),
            _ => assert_eq!(
                info.contains("server_name:valkey"),
                matches!(backend, Backend::Valkey | Backend::ValkeyAcl),
                "{binary} is not what it claims: {info}"
            ),
        }
        let queue_url = if matches!(backend, Backend::RedisAcl | Backend::ValkeyAcl) {
            restricted_user(&admin_url, PREFIX).await
        } else {
            admin_url.clone()
        };
        let queue = RedisQueue::connect(&queue_url, PREFIX, policy)
            .await
            .expect("connect");
        Harness {
            queue: Arc::new(queue.clone()),
            redis: Some(queue),
            server: Some(server),
            admin_url: Some(admin_url),
            prefix: PREFIX.into(),
        }
    }

    /// The queue on the operator's running server under a prefix of its own (cases run in
    /// parallel on it), removed when the case ends.
    async fn on_running_server(url: String, policy: RetryPolicy) -> Harness {
        let info = raw_command(&url, redis::cmd("INFO").arg("server")).await;
        eprintln!(
            "{URL_ENV}: {}",
            server_version(&String::from_utf8_lossy(&info))
        );
        let prefix = format!("ferry-conformance-{:016x}", rand::random::<u64>());
        let queue = RedisQueue::connect(&url, &prefix, policy)
            .await
            .expect("connect to FERRY_CONFORMANCE_URL");
        Harness {
            queue: Arc::new(queue.clone()),
            redis: Some(queue),
            server: None,
            admin_url: Some(url),
            prefix,
        }
    }

    /// The backend's history with `retention`.
    fn history(&self, retention: Retention) -> Arc<dyn History> {
        match &self.redis {
            Some(q) => Arc::new(RedisHistory::new(q, retention)),
            None => Arc::new(MemoryHistory::new(retention)),
        }
    }

    /// A URL with every right on the server (not the ACL user's).
    fn url(&self) -> String {
        self.admin_url.clone().expect("a server backend")
    }

    /// The server the harness started, to kill or restart it.
    fn own_server(&mut self) -> &mut RedisServer {
        self.server
            .as_mut()
            .expect("a case that restarts the server runs only on one the harness started")
    }

    /// `{prefix}:{name}`, a key of the queue under test.
    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }
}

/// A case on a shared server leaves nothing behind: its keys go when it ends, passed or failed.
impl Drop for Harness {
    fn drop(&mut self) {
        if self.server.is_some() || self.prefix == PREFIX {
            return;
        }
        let Some(url) = &self.admin_url else { return };
        let Ok(mut con) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) else {
            return;
        };
        // `*`, not `:*`: also the keys of the other prefixes a case derives from its own.
        let pattern = format!("{}*", self.prefix);
        let keys: Vec<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut con)
            .map(|it| it.filter_map(Result::ok).collect())
            .unwrap_or_default();
        for key in keys {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(key).query(&mut con);
        }
    }
}

/// `redis_version`, and `server_name` where the server reports one, from `INFO server`.
fn server_version(info: &str) -> String {
    info.lines()
        .filter(|l| {
            l.starts_with("redis_version:")
                || l.starts_with("server_name:")
                || l.starts_with("valkey_version:")
                || l.starts_with("dragonfly_version:")
        })
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Creates [`ACL_USER`] with only [`acl_rule`] for `prefix` on the server at `admin_url`; returns
/// the URL that connects as that user.
async fn restricted_user(admin_url: &str, prefix: &str) -> String {
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg(ACL_USER)
        .arg("reset")
        .arg("on")
        .arg(format!(">{ACL_PASSWORD}"));
    for part in acl_rule(prefix).split_whitespace() {
        setuser.arg(part);
    }
    let ok = raw_command(admin_url, &mut setuser).await;
    assert_eq!(ok, b"ok", "ACL SETUSER {}", acl_rule(prefix));
    acl_user_url(admin_url)
}

/// `admin_url` as [`ACL_USER`].
fn acl_user_url(admin_url: &str) -> String {
    admin_url.replacen("://", &format!("://{ACL_USER}:{ACL_PASSWORD}@"), 1)
}

fn on_path(binary: &str) -> bool {
    if binary.contains('/') {
        return std::path::Path::new(binary).is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
        .unwrap_or(false)
}

/// Runs one command on a fresh connection (behind the queue's back) and returns the raw reply.
async fn raw_command(url: &str, cmd: &mut redis::Cmd) -> Vec<u8> {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let value: redis::Value = cmd.query_async(&mut con).await.unwrap();
    match value {
        redis::Value::BulkString(b) => b,
        redis::Value::VerbatimString { text, .. } => text.into_bytes(),
        redis::Value::Int(n) => n.to_string().into_bytes(),
        other => format!("{other:?}").into_bytes(),
    }
}

/// Retries, collapsing and dead-lettering fast: 3 attempts, 50 ms base, 200 ms cap.
fn fast() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(50),
        max: Duration::from_millis(200),
    }
}

fn job(reference: &str) -> Job {
    Job {
        event_time_ms: 1_700_000_000_000,
        ..Job::new("eu-to-us", EventKind::Push, "platform/api", reference)
    }
}

fn refs(leases: &[Lease]) -> Vec<&str> {
    leases.iter().map(|l| l.job.reference.as_str()).collect()
}

const LONG: Duration = Duration::from_secs(30);

/// A lease or TTL that outlasts any pause between two calls, even on a loaded machine: checks that
/// it still holds right after it was taken cannot race. Cases that then wait for it to expire poll.
const HOLDS: Duration = Duration::from_secs(3);

/// How long a case polls for something that must happen (an expiry, a due retry) before failing.
const PATIENCE: Duration = Duration::from_secs(30);

/// The resolution of the backends' deadlines: Redis keeps them in whole milliseconds of the wall
/// clock, so "not before the lease ended" is checked to within one step of it (a lease measured
/// on `Instant` can end up to a millisecond early).
const CLOCK_STEP: Duration = Duration::from_millis(2);

/// Polls `condition` every 20 ms until it holds; fails the case naming `what` after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(
            start.elapsed() < PATIENCE,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Claims until at least one job comes back (retries become due), at most `within`.
async fn claim_soon(q: &dyn JobQueue, consumer: &str, within: Duration) -> Vec<Lease> {
    let start = Instant::now();
    loop {
        let got = q.claim(consumer, 10, LONG).await.unwrap();
        if !got.is_empty() || start.elapsed() > within {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_lease_lost<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    assert!(
        matches!(r, Err(StoreError::LeaseLost { .. })),
        "{what}: expected LeaseLost, got {r:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Cases for every backend

async fn enqueue_claim_ack(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = &h.queue;
    let before = now_ms();
    for r in ["v1", "v2", "v3"] {
        assert_eq!(q.enqueue(job(r)).await.unwrap(), EnqueueOutcome::Enqueued);
    }
    let kept = Job {
        id: "given-id".into(),
        enqueued_at_ms: 42,
        ..job("v4")
    };
    q.enqueue(kept).await.unwrap();
    let after = now_ms();

    let got = q.claim("w1", 10, LONG).await.unwrap();
    assert_eq!(refs(&got), ["v1", "v2", "v3", "v4"], "FIFO");
    for l in &got[..3] {
        assert_eq!(l.job.id.len(), 32, "assigned id");
        assert!((before..=after).contains(&l.job.enqueued_at_ms));
        assert_eq!((l.job.attempt, l.consumer.as_str()), (0, "w1"));
    }
    assert_eq!(
        (got[3].job.id.as_str(), got[3].job.enqueued_at_ms),
        ("given-id", 42)
    );
    let ids: std::collections::HashSet<_> = got.iter().map(|l| &l.job.id).collect();
    assert_eq!(ids.len(), 4);

    assert!(
        q.claim("w2", 10, LONG).await.unwrap().is_empty(),
        "all leased"
    );
    for l in &got {
        q.ack(l).await.unwrap();
    }
    assert_lease_lost(q.ack(&got[0]).await, "double ack");
    assert!(
        q.claim("w2", 10, LONG).await.unwrap().is_empty(),
        "acked jobs are gone"
    );
    assert_eq!(q.stats().await.unwrap(), QueueStats::default());
    assert!(q.claim("w2", 0, LONG).await.unwrap().is_empty());
}

async fn collapses_duplicates_only_while_pending(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = &h.queue;
    assert_eq!(
        q.enqueue(job("v1")).await.unwrap(),
        EnqueueOutcome::Enqueued
    );
    assert_eq!(
        q.enqueue(job("v1")).await.unwrap(),
        EnqueueOutcome::Collapsed
    );
    let other_event = Job {
        event_id: Some("e2".into()),
        event_time_ms: 5,
        ..job("v1")
    };
    assert_eq!(
        q.enqueue(other_event).await.unwrap(),
        EnqueueOutcome::Collapsed
    );
    let delete = Job {
        kind: EventKind::Delete,
        ..job("v1")
    };
    assert_eq!(
        q.enqueue(delete).await.unwrap(),
        EnqueueOutcome::Enqueued,
        "other kind, other key"
    );
    assert_eq!(
        q.enqueue(job("v2")).await.unwrap(),
        EnqueueOutcome::Enqueued
    );
    assert_eq!(q.stats().await.unwrap().depth, 3);

    let got = q.claim("w1", 10, LONG).await.unwrap();
    assert_eq!(refs(&got), ["v1", "v1", "v2"]);
    assert_eq!(
        (got[0].job.kind, got[0].job.event_id.as_ref()),
        (EventKind::Push, None),
        "first one kept"
    );
    assert_eq!(got[1].job.kind, EventKind::Delete);

    // Claimed: the running job may have read the source before this change.
    assert_eq!(
        q.enqueue(job("v1")).await.unwrap(),
        EnqueueOutcome::Enqueued
    );
    assert_eq!(
        q.enqueue(job("v1")).await.unwrap(),
        EnqueueOutcome::Collapsed
    );
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.depth, stats.in_flight), (1, 3));
}

async fn expired_lease_is_reclaimed_and_old_holder_loses_it(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = &h.queue;
    q.enqueue(job("v1")).await.unwrap();
    let claimed = Instant::now();
    let a = q.claim("a", 1, HOLDS).await.unwrap().remove(0);
    assert!(
        q.claim("b", 1, LONG).await.unwrap().is_empty(),
        "lease still valid"
    );
    // Once it expires, a claim takes it over — not before.
    let b = claim_soon(q.as_ref(), "b", PATIENCE).await;
    assert_eq!(b.len(), 1, "expired lease handed out again");
    assert!(
        claimed.elapsed() + CLOCK_STEP >= HOLDS,
        "handed out {:?} into a {HOLDS:?} lease",
        claimed.elapsed()
    );
    let b = &b[0];
    assert_eq!(
        (b.job.id.as_str(), b.consumer.as_str(), b.job.attempt),
        (a.job.id.as_str(), "b", 0)
    );

    assert_lease_lost(q.renew(&a, LONG).await, "renew after reclaim");
    assert_lease_lost(q.ack(&a).await, "ack after reclaim");
    assert_lease_lost(q.fail(&a, "late", true).await, "fail after reclaim");
    assert_lease_lost(q.release(&a).await, "release after reclaim");
    assert!(
        matches!(q.renew(&a, LONG).await, Err(StoreError::LeaseLost { ref job_id, ref consumer })
        if *job_id == a.job.id && consumer == "a")
    );

    q.renew(b, LONG).await.unwrap();
    q.ack(b).await.unwrap();
    assert_eq!(q.stats().await.unwrap(), QueueStats::default());
}

async fn renew_keeps_the_lease(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = &h.queue;
    q.enqueue(job("v1")).await.unwrap();
    let a = q
        .claim("a", 1, Duration::from_millis(300))
        .await
        .unwrap()
        .remove(0);
    // Heartbeats, each renewing for longer than the claim's lease: 4 × 120 ms takes the job past
    // the claim's 300 ms, so only the renewals hold it (and each check runs within a renewal's
    // HOLDS, however loaded the machine).
    for _ in 0..4 {
        q.renew(&a, HOLDS).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(
            q.claim("b", 1, LONG).await.unwrap().is_empty(),
            "renewed lease taken"
        );
    }
    assert_eq!(q.stats().await.unwrap().in_flight, 1);
    // `lease_for` is honoured both ways: renewed for 300 ms, the lease expires after that.
    let renewed = Instant::now();
    q.renew(&a, Duration::from_millis(300)).await.unwrap();
    let b = claim_soon(q.as_ref(), "b", PATIENCE).await;
    assert_eq!(b.len(), 1, "a lease renewed for 300 ms never expired");
    assert!(
        renewed.elapsed() + CLOCK_STEP >= Duration::from_millis(300),
        "lease_for of renew ignored: taken over after {:?}",
        renewed.elapsed()
    );
    assert_eq!(b[0].job.id, a.job.id);
    assert_lease_lost(q.ack(&a).await, "ack after the renewed lease expired");
    q.ack(&b[0]).await.unwrap();
}

async fn claim_order_is_expired_then_retries_then_new(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = &h.queue;
    q.enqueue(job("retry")).await.unwrap();
    q.enqueue(job("expired")).await.unwrap();
    let first = q.claim("a", 2, Duration::from_millis(150)).await.unwrap();
    assert_eq!(refs(&first), ["retry", "expired"]);
    assert!(matches!(
        q.fail(&first[0], "flaky", true).await.unwrap(),
        FailOutcome::Retry { .. }
    ));
    q.enqueue(job("new")).await.unwrap();
    // Past the 150 ms lease and the largest backoff of `fast` (200 ms): more time (a loaded
    // machine) cannot change which jobs are runnable.
    tokio::time::sleep(Duration::from_millis(350)).await;

    let got = q.claim("b", 3, LONG).await.unwrap();
    assert_eq!(refs(&got), ["expired", "retry", "new"]);
    assert_eq!(got[1].job.attempt, 1);
}

async fn retryable_failure_waits_for_backoff(backend: Backend) {
    // A backoff of seconds: the claim right after the failure cannot be late enough to find it due.
    let slow = RetryPolicy {
        max_attempts: 5,
        base: Duration::from_secs(10),
        max: Duration::from_secs(20),
    };
    let h = Harness::start(backend, slow).await;
    let q = &h.queue;
    q.enqueue(job("v1")).await.unwrap();
    let lease = q.claim("a", 1, LONG).await.unwrap().remove(0);
    let before = now_ms();
    let FailOutcome::Retry { next_try_at_ms } =
        q.fail(&lease, "503 from destination", true).await.unwrap()
    else {
        panic!("retryable failure with attempts left must retry")
    };
    let after = now_ms();
    // The backoff was drawn at some instant between `before` and `after`.
    assert!(
        next_try_at_ms - before >= 5_000 && next_try_at_ms - after <= 10_000,
        "first backoff in [base/2, base]: next try {} to {} ms after the failure",
        next_try_at_ms - after,
        next_try_at_ms - before
    );
    assert!(
        q.claim("b", 10, LONG).await.unwrap().is_empty(),
        "claimed before next_try_at"
    );
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (stats.depth, stats.delayed, stats.in_flight),
        (1, 1, 0),
        "{stats:?}"
    );
}

async fn a_due_retry_is_claimed_with_its_attempt_error_and_fields(backend: Backend) {
    let quick = RetryPolicy {
        max_attempts: 5,
        base: Duration::from_millis(400),
        max: Duration::from_secs(2),
    };
    let h = Harness::start(backend, quick).await;
    let q = &h.queue;
    q.enqueue(job("v1")).await.unwrap();
    let mut lease = q.claim("a", 1, LONG).await.unwrap().remove(0);
    // The caller's copy carries checkpoint fields the next attempt needs.
    lease.job.event_id = Some("checkpoint".into());
    let before = now_ms();
    let FailOutcome::Retry { next_try_at_ms } =
        q.fail(&lease, "503 from destination", true).await.unwrap()
    else {
        panic!("retryable failure with attempts left must retry")
    };
    let after = now_ms();
    assert!(
        next_try_at_ms - before >= 200 && next_try_at_ms - after <= 400,
        "first backoff in [base/2, base]: next try {} to {} ms after the failure",
        next_try_at_ms - after,
        next_try_at_ms - before
    );

    // Once due (more time only makes it more so), it is no longer counted as delayed.
    let wait = (next_try_at_ms - now_ms() + 30).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    assert_eq!(
        q.stats().await.unwrap().delayed,
        0,
        "due retries are not `delayed`"
    );
    let again = claim_soon(q.as_ref(), "b", PATIENCE).await;
    assert_eq!(again.len(), 1);
    let j = &again[0].job;
    assert_eq!(j.id, lease.job.id);
    assert_eq!(j.attempt, 1);
    assert_eq!(j.last_error.as_deref(), Some("503 from destination"));
    assert_eq!(j.next_try_at_ms, next_try_at_ms);
    assert_eq!(j.event_id.as_deref(), Some("checkpoint"));
    assert_eq!(j.enqueued_at_ms, lease.job.enqueued_at_ms);
    q.ack(&again[0]).await.unwrap();
}

async fn exhausted_attempts_dead_letter(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = &h.queue;
    q.enqueue(job("v1")).await.unwrap();
    let mut outcomes = Vec::new();
    for attempt in 1..=3 {
        let got = claim_soon(q.as_ref(), "w", Duration::from_secs(3)).await;
        assert_eq!(got.len(), 1, "attempt {attempt} never became claimable");
        assert_eq!(got[0].job.attempt, attempt - 1);
        outcomes.push(q.fail(&got[0], &format!("e{attempt}"), true).await.unwrap());
    }
    assert!(matches!(
        outcomes[..],
        [
            FailOutcome::Retry { .. },
            FailOutcome::Retry { .. },
            FailOutcome::DeadLettered
        ]
    ));
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].attempt, dead[0].last_error.as_deref()),
        (3, Some("e3"))
    );
    // Past the largest backoff of `fast`: a job still scheduled for a retry would be due now.
    tokio::time::sleep(fast().max + Duration::from_millis(50)).await;
    assert!(
        q.claim("w", 10, LONG).await.unwrap().is_empty(),
        "dead letters are not claimable"
    );
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (stats.depth, stats.in_flight, stats.dead_letters),
        (0, 0, 1)
    );
}

async fn non_retryable_failure_dead_letters_at_once(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = &h.queue;
    q.enqueue(job("v1")).await.unwrap();
    let l = q.claim("w", 1, LONG).await.unwrap().remove(0);
    assert_eq!(
        q.fail(&l, "digest mismatch", false).await.unwrap(),
        FailOutcome::DeadLettered
    );
    assert_lease_lost(q.ack(&l).await, "ack after fail");
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id.as_str(), dead[0].attempt),
        (l.job.id.as_str(), 1)
    );
    assert_eq!(dead[0].last_error.as_deref(), Some("digest mismatch"));
    // Past the largest backoff of `fast`: had it been scheduled for a retry, it would be due now.
    tokio::time::sleep(fast().max + Duration::from_millis(50)).await;
    assert!(
        q.claim("w", 10, LONG).await.unwrap().is_empty(),
        "a dead letter is not claimable"
    );
}

async fn dead_letters_retry_and_purge(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = &h.queue;
    for r in ["a", "b", "c"] {
        q.enqueue(job(r)).await.unwrap();
    }
    for l in q.claim("w", 3, LONG).await.unwrap() {
        q.fail(&l, "permanent", false).await.unwrap();
    }
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(
        dead.iter()
            .map(|j| j.reference.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "c"],
        "oldest first"
    );
    assert_eq!(q.dead_letters(2).await.unwrap().len(), 2);
    assert!(q.dead_letters(0).await.unwrap().is_empty());

    assert!(q.retry_dead_letter(&dead[1].id).await.unwrap());
    assert!(
        !q.retry_dead_letter(&dead[1].id).await.unwrap(),
        "already moved"
    );
    assert!(!q.retry_dead_letter("no-such-job").await.unwrap());
    let got = q.claim("w", 10, LONG).await.unwrap();
    assert_eq!(got.len(), 1);
    let j = &got[0].job;
    assert_eq!(
        (j.id.as_str(), j.attempt, j.last_error.as_ref()),
        (dead[1].id.as_str(), 0, None)
    );
    // A re-enqueued dead letter collapses like any new job while pending.
    assert!(q.retry_dead_letter(&dead[0].id).await.unwrap());
    assert_eq!(
        q.enqueue(job("a")).await.unwrap(),
        EnqueueOutcome::Collapsed
    );

    assert_eq!(q.stats().await.unwrap().dead_letters, 1);
    assert_eq!(q.purge_dead_letters().await.unwrap(), 1);
    assert!(q.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(q.purge_dead_letters().await.unwrap(), 0);
    assert_eq!(q.stats().await.unwrap().dead_letters, 0);
}

async fn release_makes_job_claimable_without_counting_an_attempt(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = &h.queue;
    q.enqueue(job("v1")).await.unwrap();
    q.enqueue(job("v2")).await.unwrap();
    let a = q.claim("a", 1, LONG).await.unwrap().remove(0);
    assert_eq!(a.job.reference, "v1");
    q.release(&a).await.unwrap();
    assert_lease_lost(q.ack(&a).await, "ack after release");
    assert_lease_lost(q.renew(&a, LONG).await, "renew after release");

    let got = q.claim("b", 1, LONG).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].job.id.as_str(), got[0].job.attempt),
        (a.job.id.as_str(), 0),
        "released job first, unchanged"
    );
    // It was claimed once: a new event for it is a new job.
    assert_eq!(
        q.enqueue(job("v1")).await.unwrap(),
        EnqueueOutcome::Enqueued
    );
    q.ack(&got[0]).await.unwrap();
    assert_eq!(refs(&q.claim("b", 10, LONG).await.unwrap()), ["v2", "v1"]);
}

const MIB: u64 = 1024 * 1024;

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// A checkpoint of `digest`'s upload to `destination` at `offset` (the queue treats the session
/// URL and hash state as opaque text).
fn checkpoint(destination: &str, digest: &str, offset: u64) -> UploadCheckpoint {
    UploadCheckpoint {
        destination: destination.into(),
        repository: "platform/api".into(),
        digest: digest.into(),
        size: 200 * MIB,
        location: format!(
            "https://{destination}.example/v2/platform/api/blobs/uploads/{}?_state=s{offset}",
            &digest[7..15]
        ),
        offset,
        hash_state: format!("v1;sha256;{offset};{};", "ab".repeat(32)),
    }
}

async fn upload_checkpoints_follow_the_job_until_it_is_acked(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = h.queue.as_ref();
    let (d1, d2) = (digest('1'), digest('2'));
    q.enqueue(job("v1")).await.unwrap();
    q.enqueue(job("v2")).await.unwrap();
    let other = q.claim("c", 1, LONG).await.unwrap().remove(0);
    let a = q
        .claim("a", 1, Duration::from_millis(300))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(refs(&[other.clone(), a.clone()]), ["v1", "v2"]);
    assert!(q.checkpoints(&a.job.id).await.unwrap().is_empty());

    q.checkpoint(&a, &checkpoint("us", &d1, 16 * MIB))
        .await
        .unwrap();
    q.checkpoint(&a, &checkpoint("us", &d2, 5)).await.unwrap();
    q.checkpoint(&a, &checkpoint("ap", &d1, 7)).await.unwrap();
    q.checkpoint(&a, &checkpoint("us", &d1, 32 * MIB))
        .await
        .unwrap();
    assert_eq!(
        q.checkpoints(&a.job.id).await.unwrap(),
        [
            checkpoint("ap", &d1, 7),
            checkpoint("us", &d1, 32 * MIB),
            checkpoint("us", &d2, 5)
        ],
        "one per (destination, digest), the latest write wins, in (destination, digest) order"
    );
    q.clear_checkpoint(&a, "us", &d2).await.unwrap();
    q.clear_checkpoint(&a, "us", &digest('9')).await.unwrap();
    let kept = [checkpoint("ap", &d1, 7), checkpoint("us", &d1, 32 * MIB)];
    assert_eq!(q.checkpoints(&a.job.id).await.unwrap(), kept);
    assert!(
        q.checkpoints(&other.job.id).await.unwrap().is_empty(),
        "checkpoints belong to their job"
    );

    // The worker dies: its lease expires and another consumer reclaims the job, checkpoints and all.
    let b = claim_soon(q, "b", PATIENCE).await;
    assert_eq!(b.len(), 1, "the expired lease was not reclaimed");
    let b = b.into_iter().next().unwrap();
    assert_eq!(b.job.id, a.job.id);
    assert_eq!(q.checkpoints(&b.job.id).await.unwrap(), kept);
    // The old holder can neither overwrite nor clear the new owner's progress.
    assert_lease_lost(
        q.checkpoint(&a, &checkpoint("us", &d1, 48 * MIB)).await,
        "checkpoint after reclaim",
    );
    assert_lease_lost(
        q.clear_checkpoint(&a, "us", &d1).await,
        "clear after reclaim",
    );
    assert_eq!(q.checkpoints(&b.job.id).await.unwrap(), kept);
    q.checkpoint(&b, &checkpoint("us", &d1, 48 * MIB))
        .await
        .unwrap();
    let kept = [checkpoint("ap", &d1, 7), checkpoint("us", &d1, 48 * MIB)];

    // A retryable failure keeps them for the next attempt; so does a release.
    assert!(matches!(
        q.fail(&b, "connection reset", true).await.unwrap(),
        FailOutcome::Retry { .. }
    ));
    let c = claim_soon(q, "c2", Duration::from_secs(2)).await.remove(0);
    assert_eq!((c.job.id.as_str(), c.job.attempt), (a.job.id.as_str(), 1));
    assert_eq!(q.checkpoints(&c.job.id).await.unwrap(), kept);
    q.release(&c).await.unwrap();
    let d = q.claim("d", 1, LONG).await.unwrap().remove(0);
    assert_eq!(d.job.id, a.job.id);
    assert_eq!(q.checkpoints(&d.job.id).await.unwrap(), kept);

    // Done: they go with the job.
    q.ack(&d).await.unwrap();
    assert!(q.checkpoints(&a.job.id).await.unwrap().is_empty());
    q.ack(&other).await.unwrap();
    assert_eq!(q.stats().await.unwrap(), QueueStats::default());
}

async fn dead_lettered_jobs_drop_their_checkpoints(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = h.queue.as_ref();
    let d1 = digest('1');
    // A permanent failure.
    q.enqueue(job("v1")).await.unwrap();
    let a = q.claim("a", 1, LONG).await.unwrap().remove(0);
    q.checkpoint(&a, &checkpoint("us", &d1, MIB)).await.unwrap();
    assert_eq!(
        q.fail(&a, "corrupt", false).await.unwrap(),
        FailOutcome::DeadLettered
    );
    assert!(q.checkpoints(&a.job.id).await.unwrap().is_empty());
    assert!(q.retry_dead_letter(&a.job.id).await.unwrap());
    let again = q.claim("a", 1, LONG).await.unwrap().remove(0);
    assert_eq!(again.job.id, a.job.id);
    assert!(
        q.checkpoints(&again.job.id).await.unwrap().is_empty(),
        "a dead letter comes back without its old upload"
    );
    q.ack(&again).await.unwrap();

    // Attempts exhausted (3): kept through the retries, dropped with the last one.
    q.enqueue(job("v2")).await.unwrap();
    let mut lease = q.claim("a", 1, LONG).await.unwrap().remove(0);
    for attempt in 1..=3u64 {
        q.checkpoint(&lease, &checkpoint("us", &d1, attempt * MIB))
            .await
            .unwrap();
        let outcome = q.fail(&lease, "reset", true).await.unwrap();
        if attempt < 3 {
            assert!(matches!(outcome, FailOutcome::Retry { .. }), "{outcome:?}");
            lease = claim_soon(q, "a", Duration::from_secs(2)).await.remove(0);
            assert_eq!(
                q.checkpoints(&lease.job.id).await.unwrap(),
                [checkpoint("us", &d1, attempt * MIB)]
            );
        } else {
            assert_eq!(outcome, FailOutcome::DeadLettered);
        }
    }
    assert!(q.checkpoints(&lease.job.id).await.unwrap().is_empty());
}

async fn stats_count_each_state(backend: Backend) {
    let slow = RetryPolicy {
        max_attempts: 5,
        base: Duration::from_secs(10),
        max: Duration::from_secs(10),
    };
    let h = Harness::start(backend, slow).await;
    let q = &h.queue;
    assert_eq!(q.stats().await.unwrap(), QueueStats::default());
    for r in ["a", "b", "c", "d"] {
        q.enqueue(job(r)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    let s = q.stats().await.unwrap();
    assert_eq!(
        (s.depth, s.in_flight, s.delayed, s.dead_letters),
        (4, 0, 0, 0)
    );
    assert!((60..10_000).contains(&s.oldest_age_ms), "{s:?}");

    let ab = q.claim("w", 2, LONG).await.unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!((s.depth, s.in_flight), (2, 2));
    assert!(s.oldest_age_ms >= 60, "{s:?}");

    q.fail(&ab[0], "later", true).await.unwrap();
    q.fail(&ab[1], "never", false).await.unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!(
        (s.depth, s.in_flight, s.delayed, s.dead_letters),
        (3, 0, 1, 1),
        "{s:?}"
    );

    let claimed = Instant::now();
    let cd = q.claim("w", 2, HOLDS).await.unwrap();
    assert_eq!(refs(&cd), ["c", "d"]);
    let s = q.stats().await.unwrap();
    assert_eq!(
        (s.depth, s.in_flight, s.delayed, s.oldest_age_ms),
        (1, 2, 1, 0),
        "{s:?}"
    );
    eventually("expired leases to count as waiting", || async {
        q.stats()
            .await
            .is_ok_and(|s| (s.depth, s.in_flight) == (3, 0))
    })
    .await;
    assert!(
        claimed.elapsed() + CLOCK_STEP >= HOLDS,
        "leases of {HOLDS:?} counted as expired after {:?}",
        claimed.elapsed()
    );
}

async fn blob_leases_renew_and_name_their_holder(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = &h.queue;
    let d = "sha256:cccc";
    assert_eq!(q.blob_lease_holder("us", d).await.unwrap(), None);
    assert!(
        !q.renew_blob("us", d, "job-a", LONG).await.unwrap(),
        "nothing to renew"
    );
    let leased = Instant::now();
    assert!(q.lease_blob("us", d, "job-a|team/x", HOLDS).await.unwrap());
    assert_eq!(
        q.blob_lease_holder("us", d).await.unwrap().as_deref(),
        Some("job-a|team/x")
    );
    assert!(
        !q.renew_blob("us", d, "job-b", LONG).await.unwrap(),
        "only the holder renews"
    );
    assert!(q.renew_blob("us", d, "job-a|team/x", LONG).await.unwrap());
    // Past the first ttl (more time changes nothing while the renewed one runs).
    tokio::time::sleep((HOLDS + Duration::from_millis(200)).saturating_sub(leased.elapsed())).await;
    assert!(
        !q.lease_blob("us", d, "job-b", LONG).await.unwrap(),
        "still held after the first ttl: renewed"
    );
    q.release_blob("us", d, "job-a|team/x").await.unwrap();
    assert_eq!(q.blob_lease_holder("us", d).await.unwrap(), None);
    assert!(
        !q.renew_blob("us", d, "job-a|team/x", LONG).await.unwrap(),
        "released leases are not renewed"
    );
}

async fn blob_leases_are_exclusive_and_expire(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = &h.queue;
    let ttl = HOLDS;
    let d = "sha256:aaaa";
    let leased = Instant::now();
    assert!(q.lease_blob("us", d, "job-a", ttl).await.unwrap());
    assert!(!q.lease_blob("us", d, "job-b", ttl).await.unwrap());
    assert!(
        !q.lease_blob("us", d, "job-a", ttl).await.unwrap(),
        "not re-entrant"
    );
    assert!(
        q.lease_blob("eu", d, "job-b", ttl).await.unwrap(),
        "per destination"
    );
    assert!(
        q.lease_blob("us", "sha256:bbbb", "job-b", ttl)
            .await
            .unwrap(),
        "per digest"
    );

    q.release_blob("us", d, "job-b").await.unwrap();
    assert!(
        !q.lease_blob("us", d, "job-c", ttl).await.unwrap(),
        "released by a non-holder"
    );

    eventually("job-a's blob lease to expire", || async {
        q.lease_blob("us", d, "job-c", LONG).await.unwrap()
    })
    .await;
    assert!(
        leased.elapsed() + CLOCK_STEP >= ttl,
        "a {ttl:?} blob lease taken over after {:?}",
        leased.elapsed()
    );
    q.release_blob("us", d, "job-a").await.unwrap();
    assert!(
        !q.lease_blob("us", d, "job-a", LONG).await.unwrap(),
        "old holder released someone else's"
    );
    q.release_blob("us", d, "job-c").await.unwrap();
    assert!(
        q.lease_blob("us", d, "job-a", LONG).await.unwrap(),
        "released by its holder"
    );
    q.release_blob("us", "sha256:never", "x").await.unwrap();
}

/// One writer per manifest `(destination, repository, digest)`: exclusive (also for the same
/// holder), per destination and per repository, apart from blob leases of the same digest,
/// renewed and released only by its holder, and gone with its ttl when the holder stops renewing
/// (a crashed worker's manifest lease expires like its job lease).
async fn manifest_leases_have_one_writer_and_expire(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = &h.queue;
    let d = "sha256:dddd";
    let leased = Instant::now();
    assert!(q
        .lease_manifest("us", "team/app", d, "w1|1", HOLDS)
        .await
        .unwrap());
    assert!(
        !q.lease_manifest("us", "team/app", d, "w2|1", LONG)
            .await
            .unwrap(),
        "one writer at a time"
    );
    assert!(
        !q.lease_manifest("us", "team/app", d, "w1|1", LONG)
            .await
            .unwrap(),
        "not re-entrant"
    );
    assert!(
        q.lease_manifest("eu", "team/app", d, "w2|1", LONG)
            .await
            .unwrap(),
        "per destination"
    );
    assert!(
        q.lease_manifest("us", "team/other", d, "w2|2", LONG)
            .await
            .unwrap(),
        "per repository"
    );
    assert!(
        q.lease_blob("us", d, "w2|3", LONG).await.unwrap(),
        "blob leases of the same digest are apart"
    );
    assert!(
        !q.renew_manifest("us", "team/app", d, "w2|1", LONG)
            .await
            .unwrap(),
        "only the holder renews"
    );
    q.release_manifest("us", "team/app", d, "w2|1")
        .await
        .unwrap();
    assert!(
        !q.lease_manifest("us", "team/app", d, "w3|1", LONG)
            .await
            .unwrap(),
        "released by a non-holder"
    );
    // Not renewed: gone after its ttl.
    eventually("w1's manifest lease to expire", || async {
        q.lease_manifest("us", "team/app", d, "w3|1", HOLDS)
            .await
            .unwrap()
    })
    .await;
    assert!(
        leased.elapsed() + CLOCK_STEP >= HOLDS,
        "a {HOLDS:?} manifest lease taken over after {:?}",
        leased.elapsed()
    );
    assert!(
        !q.renew_manifest("us", "team/app", d, "w1|1", LONG)
            .await
            .unwrap(),
        "an expired lease is not renewed by its old holder"
    );
    // Renewed: still held past its first ttl.
    let renewed = Instant::now();
    assert!(q
        .renew_manifest("us", "team/app", d, "w3|1", LONG)
        .await
        .unwrap());
    tokio::time::sleep((HOLDS + Duration::from_millis(200)).saturating_sub(renewed.elapsed()))
        .await;
    assert!(
        !q.lease_manifest("us", "team/app", d, "w4|1", LONG)
            .await
            .unwrap(),
        "still held after the first ttl: renewed"
    );
    q.release_manifest("us", "team/app", d, "w3|1")
        .await
        .unwrap();
    assert!(
        q.lease_manifest("us", "team/app", d, "w4|1", LONG)
            .await
            .unwrap(),
        "released by its holder"
    );
    q.release_manifest("us", "team/never", d, "x")
        .await
        .unwrap();
}

async fn concurrent_claimers_never_share_a_job(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = h.queue.clone();
    const JOBS: usize = 200;
    for i in 0..JOBS {
        q.enqueue(job(&format!("t{i}"))).await.unwrap();
    }
    let seen: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    // Every claimer holds its first batch until all four hold one: the claims overlap for sure,
    // however the runtime schedules the tasks on a loaded machine.
    let all_hold_a_batch = Arc::new(tokio::sync::Barrier::new(4));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (q, seen, barrier) = (q.clone(), seen.clone(), all_hold_a_batch.clone());
        workers.push(tokio::spawn(async move {
            let consumer = format!("w{w}");
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut idle_rounds = 0;
            let mut first = true;
            while idle_rounds < 3 && Instant::now() < deadline {
                let got = q.claim(&consumer, 5, LONG).await.unwrap();
                if std::mem::take(&mut first) {
                    barrier.wait().await;
                }
                if got.is_empty() {
                    idle_rounds += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                idle_rounds = 0;
                for l in got {
                    seen.lock()
                        .unwrap()
                        .entry(l.job.id.clone())
                        .or_default()
                        .push(consumer.clone());
                    tokio::task::yield_now().await;
                    q.ack(&l).await.unwrap();
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.len(), JOBS, "every job claimed");
    let twice: Vec<_> = seen.iter().filter(|(_, c)| c.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "claimed twice under valid leases: {twice:?}"
    );
    let per_worker = seen
        .values()
        .fold(HashMap::<&str, usize>::new(), |mut m, c| {
            *m.entry(c[0].as_str()).or_default() += 1;
            m
        });
    assert_eq!(
        per_worker.len(),
        4,
        "each claimer held a batch at once: {per_worker:?}"
    );
    assert_eq!(q.stats().await.unwrap(), QueueStats::default());
}

// ---------------------------------------------------------------------------------------------
// Cases that kill and restart the server (only where the harness started it)

async fn aof_restart_keeps_jobs_and_leases(backend: Backend) {
    let mut h = Harness::start(backend, fast()).await;
    h.own_server(); // fails at once where the harness cannot restart the server
    let q = h.queue.clone();
    for r in ["a", "b", "c"] {
        q.enqueue(job(r)).await.unwrap();
    }
    let a = q.claim("w", 1, LONG).await.unwrap().remove(0);
    let saved = checkpoint("us", &digest('1'), 96 * MIB);
    q.checkpoint(&a, &saved).await.unwrap();
    // Behind the queue's back: the checkpoints expire on their own if the job never ends.
    let ttl = raw_command(
        &h.url(),
        redis::cmd("PTTL").arg(h.key(&format!("checkpoints:{}", a.job.id))),
    )
    .await;
    let ttl: i64 = String::from_utf8_lossy(&ttl).parse().unwrap();
    assert!(
        ttl > 6 * 24 * 3_600_000 && ttl <= 7 * 24 * 3_600_000,
        "checkpoint expiry {ttl} ms"
    );
    // Killed (SIGKILL), the server loses nothing its AOF file holds: wait until no write is left
    // in its AOF buffer (with appendfsync everysec a write can be held there while an fsync runs).
    // An OS crash could still lose the last second, which is not what this models.
    eventually("the writes to reach the AOF file", || async {
        let info = raw_command(&h.url(), redis::cmd("INFO").arg("persistence")).await;
        String::from_utf8_lossy(&info)
            .lines()
            .any(|l| l.trim() == "aof_buffer_length:0")
    })
    .await;
    h.own_server().restart().await.unwrap();

    // Same queue object: the connection manager reconnects.
    let start = Instant::now();
    let stats = loop {
        match q.stats().await {
            Ok(s) => break s,
            Err(StoreError::Unavailable(_)) if start.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no recovery after restart: {e}"),
        }
    };
    assert_eq!((stats.depth, stats.in_flight), (2, 1), "{stats:?}");
    assert_eq!(q.checkpoints(&a.job.id).await.unwrap(), [saved]);
    assert_eq!(refs(&q.claim("w2", 10, LONG).await.unwrap()), ["b", "c"]);
    q.ack(&a).await.unwrap();
    assert_eq!(
        q.enqueue(job("b")).await.unwrap(),
        EnqueueOutcome::Enqueued,
        "pending keys survive too"
    );
}

async fn outage_is_unavailable_quickly_and_recovers(backend: Backend) {
    let mut h = Harness::start(backend, fast()).await;
    h.own_server(); // fails at once where the harness cannot restart the server
    let q = h.queue.clone();
    let url = h.url();
    q.enqueue(job("before")).await.unwrap();
    h.own_server().kill().await;
    // "Quickly": within the queue's operation timeout, plus room for a loaded machine — a call
    // that waits for the server to come back (it does not, here) never gets under this.
    let fails_fast = OP_TIMEOUT + Duration::from_secs(5);

    for round in 0..2 {
        let start = Instant::now();
        let r = q.enqueue(job("during")).await;
        assert!(
            matches!(r, Err(StoreError::Unavailable(_))),
            "round {round}: {r:?}"
        );
        assert!(
            start.elapsed() < fails_fast,
            "round {round} took {:?}",
            start.elapsed()
        );
    }
    let start = Instant::now();
    let r = q.claim("w", 1, LONG).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(
        start.elapsed() < fails_fast,
        "claim took {:?}",
        start.elapsed()
    );
    let start = Instant::now();
    let r = RedisQueue::connect(&url, &h.prefix, fast()).await;
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "connect to a dead server"
    );
    assert!(
        start.elapsed() < fails_fast,
        "connect took {:?}",
        start.elapsed()
    );

    h.own_server().restart().await.unwrap();
    let start = Instant::now();
    loop {
        match q.enqueue(job("after")).await {
            Ok(EnqueueOutcome::Enqueued) => break,
            Ok(other) => panic!("{other:?}"),
            Err(StoreError::Unavailable(_)) if start.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no recovery after restart: {e}"),
        }
    }
    let got = q.claim("w", 10, LONG).await.unwrap();
    assert!(refs(&got).contains(&"after"), "{:?}", refs(&got));
}

// ---------------------------------------------------------------------------------------------
// Cases for the server backends only

async fn corrupt_entries_are_quarantined(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = &h.queue;
    let url = h.url();
    let jobs = h.key("jobs");
    raw_command(
        &url,
        redis::cmd("XADD")
            .arg(&jobs)
            .arg("*")
            .arg("job")
            .arg("{not json"),
    )
    .await;
    q.enqueue(job("good")).await.unwrap();
    raw_command(
        &url,
        redis::cmd("XADD")
            .arg(&jobs)
            .arg("*")
            .arg("other")
            .arg("field"),
    )
    .await;
    raw_command(
        &url,
        redis::cmd("ZADD").arg(h.key("delayed")).arg(0).arg("[1,2]"),
    )
    .await;

    let got = q.claim("w", 10, LONG).await.unwrap();
    assert_eq!(refs(&got), ["good"], "corrupt entries are skipped");
    let corrupt = raw_command(&url, redis::cmd("LLEN").arg(h.key("corrupt"))).await;
    assert_eq!(corrupt, b"3");
    let s = q.stats().await.unwrap();
    assert_eq!((s.depth, s.in_flight), (0, 1), "{s:?}");
    assert!(
        q.claim("w", 10, Duration::ZERO).await.unwrap().is_empty(),
        "quarantined for good"
    );

    // Dead letters: garbage is skipped by readers, removed by purge.
    raw_command(&url, redis::cmd("RPUSH").arg(h.key("dead")).arg("garbage")).await;
    q.fail(&got[0], "permanent", false).await.unwrap();
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(q.stats().await.unwrap().dead_letters, 2);
    assert!(q.retry_dead_letter(&dead[0].id).await.unwrap());
    assert_eq!(q.purge_dead_letters().await.unwrap(), 1);
    // A forged token is a lost lease, not an error.
    let forged = Lease {
        token: "jobs/not-an-id".into(),
        ..got[0].clone()
    };
    assert_lease_lost(q.ack(&forged).await, "forged token");
    assert_lease_lost(q.renew(&forged, LONG).await, "forged token");
}

async fn prefixes_are_isolated(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let other_prefix = format!("{}-other", h.prefix);
    let other = RedisQueue::connect(&h.url(), &other_prefix, fast())
        .await
        .unwrap();
    h.queue.enqueue(job("v1")).await.unwrap();
    assert!(other.claim("w", 10, LONG).await.unwrap().is_empty());
    assert_eq!(
        other.enqueue(job("v1")).await.unwrap(),
        EnqueueOutcome::Enqueued,
        "own pending keys"
    );
    assert!(other.lease_blob("us", "sha256:a", "x", LONG).await.unwrap());
    assert!(h
        .queue
        .lease_blob("us", "sha256:a", "y", LONG)
        .await
        .unwrap());
    assert_eq!(other.prefix(), other_prefix);
}

async fn paused_policies_park_jobs_until_resumed(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let q = h.queue.as_ref();
    q.enqueue(job("v1")).await.unwrap();
    let lease = claim_soon(q, "w1", Duration::from_secs(2)).await.remove(0);
    // Not paused: parking refuses and the lease stays valid.
    assert!(!q.park(&lease).await.unwrap());
    q.renew(&lease, LONG).await.unwrap();

    q.set_paused("eu-to-us", true).await.unwrap();
    q.set_paused("other", true).await.unwrap();
    let paused: Vec<String> = q.paused().await.unwrap().into_iter().collect();
    assert_eq!(paused, ["eu-to-us", "other"]);
    assert!(q.park(&lease).await.unwrap());
    assert_lease_lost(q.ack(&lease).await, "ack after park");
    let st = q.stats().await.unwrap();
    assert_eq!(
        (st.depth, st.in_flight),
        (0, 0),
        "a parked job is neither waiting nor running: {st:?}"
    );
    assert!(q.claim("w1", 10, LONG).await.unwrap().is_empty());

    // Resume: clear the flag, then move the parked jobs back.
    q.set_paused("eu-to-us", false).await.unwrap();
    assert_eq!(q.unpark("eu-to-us").await.unwrap(), 1);
    assert_eq!(q.unpark("eu-to-us").await.unwrap(), 0, "moved once");
    let again = claim_soon(q, "w2", Duration::from_secs(2)).await;
    assert_eq!(refs(&again), ["v1"]);
    assert_eq!(again[0].job.id, lease.job.id, "the same job, not a copy");
    let paused: Vec<String> = q.paused().await.unwrap().into_iter().collect();
    assert_eq!(paused, ["other"]);
}

// ---------------------------------------------------------------------------------------------
// History (executions, tasks, workers): same backends, same suite

fn execution(id: &str, policy: &str, started_at_ms: i64) -> Execution {
    Execution::new(id, policy, StartedBy::Manual, started_at_ms)
}

fn task(execution_id: &str, n: u32, state: TaskState) -> Task {
    Task {
        id: format!("us/platform/api:v{n}"),
        execution_id: execution_id.into(),
        policy: "eu-to-us".into(),
        kind: EventKind::Push,
        repository: "platform/api".into(),
        reference: format!("v{n}"),
        destination: "us".into(),
        state,
        attempts: 1,
        digest: None,
        outcome: None,
        blobs_copied: u64::from(n),
        blobs_mounted: 0,
        blobs_skipped: 0,
        bytes: 1000 * u64::from(n),
        bytes_total: 0,
        started_at_ms: now_ms(),
        ended_at_ms: None,
        error: None,
        lag_ms: None,
    }
}

fn counts(e: &Execution) -> Vec<(TaskState, u64)> {
    e.counts.iter().map(|(s, n)| (*s, *n)).collect()
}

async fn history_records_executions_and_counts_tasks(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let history = h.history(Retention::default());
    let now = now_ms();
    let mut e = execution("run-1", "eu-to-us", now);
    e.counts.insert(TaskState::Failed, 99); // ignored: counts come from the tasks
    history
        .record(
            &e,
            &[
                task("run-1", 1, TaskState::Running),
                task("run-1", 2, TaskState::Pending),
            ],
        )
        .await
        .unwrap();
    let got = history.execution("run-1").await.unwrap().expect("recorded");
    assert_eq!(got.state, ExecutionState::Running);
    assert_eq!(got.trigger, StartedBy::Manual);
    assert_eq!(
        counts(&got),
        [(TaskState::Pending, 1), (TaskState::Running, 1)]
    );

    // Task 1 finishes (twice: recording the same state again must not count twice); task 3 is
    // added by another process through `record_tasks`.
    for _ in 0..2 {
        history
            .record_tasks("run-1", &[task("run-1", 1, TaskState::Succeeded)])
            .await
            .unwrap();
    }
    history
        .record_tasks("run-1", &[task("run-1", 3, TaskState::Failed)])
        .await
        .unwrap();
    e.state = ExecutionState::Failed;
    e.ended_at_ms = Some(now + 5);
    history.record(&e, &[]).await.unwrap();
    let got = history.execution("run-1").await.unwrap().unwrap();
    assert_eq!(got.state, ExecutionState::Failed);
    assert_eq!(got.ended_at_ms, Some(now + 5));
    assert_eq!(
        counts(&got),
        [
            (TaskState::Pending, 1),
            (TaskState::Succeeded, 1),
            (TaskState::Failed, 1)
        ]
    );
    let tasks = history.tasks("run-1", 10).await.unwrap();
    let states: Vec<_> = tasks
        .iter()
        .map(|t| (t.reference.as_str(), t.state))
        .collect();
    assert_eq!(
        states,
        [
            ("v1", TaskState::Succeeded),
            ("v2", TaskState::Pending),
            ("v3", TaskState::Failed)
        ]
    );
    assert_eq!(tasks[2].bytes, 3000);
    assert_eq!(history.tasks("run-1", 2).await.unwrap().len(), 2, "limit");

    // Tasks of an execution nobody recorded are dropped, not turned into a phantom execution.
    history
        .record_tasks("nobody", &[task("nobody", 1, TaskState::Succeeded)])
        .await
        .unwrap();
    assert_eq!(history.execution("nobody").await.unwrap(), None);
    assert!(history.tasks("nobody", 10).await.unwrap().is_empty());
    assert_eq!(history.execution("missing").await.unwrap(), None);
}

async fn history_lists_newest_first_by_policy_with_paging(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let history = h.history(Retention::default());
    let t0 = now_ms() - 10_000;
    for (i, policy) in ["a", "b", "a", "b", "a"].iter().enumerate() {
        let e = execution(&format!("e{i}"), policy, t0 + i as i64 * 100);
        history.record(&e, &[]).await.unwrap();
    }
    let ids = |v: Vec<Execution>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    let all = history
        .executions(&ExecutionQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(all), ["e4", "e3", "e2", "e1", "e0"]);
    let a = history
        .executions(&ExecutionQuery {
            policy: Some("a".into()),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let cursor = a.last().unwrap().started_at_ms;
    assert_eq!(ids(a), ["e4", "e2"]);
    let next = history
        .executions(&ExecutionQuery {
            policy: Some("a".into()),
            before_ms: Some(cursor),
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(ids(next), ["e0"]);
    let none = history
        .executions(&ExecutionQuery {
            policy: Some("zzz".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
}

async fn history_retention_drops_the_oldest_with_their_tasks(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let history = h.history(Retention {
        max_executions: 3,
        max_age: Duration::from_secs(3600),
    });
    let now = now_ms();
    // Older than the age limit: dropped when a new execution is recorded.
    history
        .record(&execution("ancient", "a", now - 7_200_000), &[])
        .await
        .unwrap();
    for i in 0..5 {
        let id = format!("e{i}");
        history
            .record(
                &execution(&id, if i % 2 == 0 { "a" } else { "b" }, now + i),
                &[task(&id, 1, TaskState::Succeeded)],
            )
            .await
            .unwrap();
    }
    let all: Vec<String> = history
        .executions(&ExecutionQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(all, ["e4", "e3", "e2"]);
    for gone in ["ancient", "e0", "e1"] {
        assert_eq!(history.execution(gone).await.unwrap(), None, "{gone}");
        assert!(history.tasks(gone, 10).await.unwrap().is_empty(), "{gone}");
    }
    // The per-policy listing forgets them too.
    let a: Vec<String> = history
        .executions(&ExecutionQuery {
            policy: Some("a".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(a, ["e4", "e2"]);
    // Updating a kept execution does not trim anything.
    history
        .record(&execution("e2", "a", now + 2), &[])
        .await
        .unwrap();
    assert!(history.execution("e2").await.unwrap().is_some());
    assert!(history.execution("e3").await.unwrap().is_some());
}

async fn history_counts_stay_exact_under_concurrent_recorders(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let history = h.history(Retention::default());
    history
        .record(&execution("run", "a", now_ms()), &[])
        .await
        .unwrap();
    // 8 recorders, 25 tasks each, every task going pending → running → succeeded.
    let mut set = tokio::task::JoinSet::new();
    for r in 0..8u32 {
        let history = history.clone();
        set.spawn(async move {
            for n in 0..25u32 {
                let n = r * 100 + n;
                for state in [TaskState::Pending, TaskState::Running, TaskState::Succeeded] {
                    history
                        .record_tasks("run", &[task("run", n, state)])
                        .await
                        .unwrap();
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let got = history.execution("run").await.unwrap().unwrap();
    assert_eq!(counts(&got), [(TaskState::Succeeded, 200)]);
    assert_eq!(history.tasks("run", 1000).await.unwrap().len(), 200);
}

async fn workers_are_listed_until_their_heartbeat_expires(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let history = h.history(Retention::default());
    let worker = |id: &str| WorkerInfo {
        id: id.into(),
        host: "host-a".into(),
        region: "eu".into(),
        pid: 42,
        version: "0.1.0".into(),
        started_at_ms: now_ms(),
        last_seen_ms: now_ms(),
        concurrency: 4,
        in_flight: 1,
        jobs_succeeded: 7,
        jobs_failed: 0,
        policies: vec!["eu-to-us".into()],
    };
    history.heartbeat(&worker("short"), HOLDS).await.unwrap();
    history.heartbeat(&worker("long"), LONG).await.unwrap();
    let listed = history.workers().await.unwrap();
    let ids: Vec<_> = listed.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, ["long", "short"]);
    assert_eq!(listed[0], worker("long").clone_with_times(&listed[0]));
    let ids = || async {
        history
            .workers()
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.id)
            .collect::<Vec<_>>()
    };
    // Its last heartbeat, for 300 ms: listed until that expires, not after.
    let last = Instant::now();
    history
        .heartbeat(&worker("short"), Duration::from_millis(300))
        .await
        .unwrap();
    eventually("the expired heartbeat to be no longer listed", || async {
        ids().await == ["long"]
    })
    .await;
    assert!(
        last.elapsed() + CLOCK_STEP >= Duration::from_millis(300),
        "a 300 ms heartbeat dropped after {:?}",
        last.elapsed()
    );
    // A fresh heartbeat brings it back; deregistering removes it at once.
    history.heartbeat(&worker("short"), LONG).await.unwrap();
    history.deregister("long").await.unwrap();
    assert_eq!(ids().await, ["short"]);
}

/// Compares worker records without their clock fields.
trait CloneWithTimes {
    fn clone_with_times(&self, from: &WorkerInfo) -> WorkerInfo;
}

impl CloneWithTimes for WorkerInfo {
    fn clone_with_times(&self, from: &WorkerInfo) -> WorkerInfo {
        WorkerInfo {
            started_at_ms: from.started_at_ms,
            last_seen_ms: from.last_seen_ms,
            ..self.clone()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cases for the ACL user only: what the queue and history cases do not reach

/// Registry pauses and policy bandwidth ([`RedisLimits`]), the tag ledger, the outbox and the
/// policy catalog work through the ACL user, as the queue and history do in the suite's cases.
async fn the_acl_rule_lets_limits_ledger_outbox_and_catalog_work(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let store = h.redis.as_ref().expect("a server backend");

    let limits = RedisLimits::new(store);
    let until = now_ms() + 60_000;
    limits.pause("hub", until).await.unwrap();
    limits.pause("hub", until - 1_000).await.unwrap();
    assert_eq!(
        limits.paused_until("hub").await.unwrap(),
        until,
        "a pause only grows"
    );
    let cost = Duration::from_secs(10);
    let first = limits
        .reserve("eu-to-us", cost, Duration::ZERO)
        .await
        .unwrap();
    let second = limits
        .reserve("eu-to-us", cost, Duration::ZERO)
        .await
        .unwrap();
    assert!(
        second > first,
        "the second reservation waits behind the first: {first:?}, {second:?}"
    );

    let ledger = RedisTagLedger::new(store);
    let write = TagWrite {
        digest: digest('a'),
        at_ms: 5,
        region: "eu".into(),
    };
    ledger
        .record_write("eu", "platform/api", "v1", &write)
        .await
        .unwrap();
    assert_eq!(
        ledger.last_write("eu", "platform/api", "v1").await.unwrap(),
        Some(write)
    );

    let outbox = RedisOutbox::new(store);
    let entry = Forwarded {
        event: Event {
            id: "e1".into(),
            registry: "eu".into(),
            repository: "platform/api".into(),
            tag: Some("v1".into()),
            digest: Some(digest('a')),
            media_type: None,
            kind: EventKind::Push,
            occurred_at_ms: 5,
            request_id: None,
        },
        origin_region: "eu".into(),
    };
    outbox.append("us", &entry).await.unwrap();
    let pending = outbox.pending("us", 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1, entry);
    outbox.remove("us", &[pending[0].0.clone()]).await.unwrap();
    assert_eq!(outbox.depth("us").await.unwrap(), 0);
    assert!(outbox.lease_forwarder("us", "a", LONG).await.unwrap());
    assert!(!outbox.lease_forwarder("us", "b", LONG).await.unwrap());
    assert!(!outbox.accepted("e1").await.unwrap());
    outbox.mark_accepted("e1").await.unwrap();
    assert!(outbox.accepted("e1").await.unwrap());

    let catalog = RedisPolicyStore::new(store);
    catalog.put_policy("p", r#"{"name":"p"}"#).await.unwrap();
    catalog.set_enabled("p", false).await.unwrap();
    catalog.put_registry("r", r#"{"name":"r"}"#).await.unwrap();
    let stored = catalog.load().await.unwrap();
    assert_eq!(stored.revision, 3);
    assert_eq!(stored.policies["p"], r#"{"name":"p"}"#);
    assert_eq!(stored.enabled.get("p"), Some(&false));
    assert!(catalog.delete_policy("p").await.unwrap());
    assert!(catalog.delete_registry("r").await.unwrap());
    assert_eq!(catalog.revision().await.unwrap(), 5);
}

/// The rule is narrow: commands Ferry never sends, `EVAL` of arbitrary code, and keys outside the
/// prefix (also through a granted script) are refused, while a key under the prefix is not.
async fn the_acl_rule_refuses_commands_and_keys_outside_the_grant(backend: Backend) {
    let h = Harness::start(backend, fast()).await;
    let admin = h.url();
    let client = redis::Client::open(acl_user_url(&admin)).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let allowed: redis::Value = redis::cmd("SET")
        .arg(h.key("probe"))
        .arg(1)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(allowed, redis::Value::Okay, "a key under the prefix");
    // Loaded by the admin: EVALSHA is granted, so only the keys can stop these.
    let load = |body: &'static str| {
        let admin = admin.clone();
        async move {
            let sha = raw_command(&admin, redis::cmd("SCRIPT").arg("LOAD").arg(body)).await;
            String::from_utf8(sha).unwrap()
        }
    };
    let get_declared = load("return redis.call('GET', KEYS[1])").await;
    let get_undeclared = load("return redis.call('GET', ARGV[1])").await;

    let mut refused = Vec::new();
    let cmds: Vec<(&str, redis::Cmd)> = vec![
        ("FLUSHALL", redis::cmd("FLUSHALL")),
        (
            "CONFIG GET",
            redis::cmd("CONFIG").arg("GET").arg("maxmemory").clone(),
        ),
        ("KEYS", redis::cmd("KEYS").arg("*").clone()),
        ("INFO", redis::cmd("INFO").clone()),
        ("SCRIPT FLUSH", redis::cmd("SCRIPT").arg("FLUSH").clone()),
        ("EVAL", redis::cmd("EVAL").arg("return 1").arg(0).clone()),
        (
            "SET outside the prefix",
            redis::cmd("SET").arg("other:x").arg(1).clone(),
        ),
        (
            "GET outside the prefix",
            redis::cmd("GET").arg("other:x").clone(),
        ),
        (
            "a script given a key outside the prefix",
            redis::cmd("EVALSHA")
                .arg(&get_declared)
                .arg(1)
                .arg("other:x")
                .clone(),
        ),
        (
            "a script reaching a key outside the prefix it was not given",
            redis::cmd("EVALSHA")
                .arg(&get_undeclared)
                .arg(0)
                .arg("other:x")
                .clone(),
        ),
    ];
    for (what, cmd) in &cmds {
        match cmd.query_async::<redis::Value>(&mut con).await {
            // NOPERM (the client shows `NoPerm`); a command inside a script fails the script
            // with "The user executing the script can't access …" (Redis 7.0) or "ACL failure in
            // script: No permissions to access a key" (Valkey 8.0).
            Err(e) if acl_refusal(&e.to_string()) => {
                eprintln!("refused, as it must be: {what}: {e}");
                refused.push(*what);
            }
            other => panic!("{what} was not refused by the ACL: {other:?}"),
        }
    }
    assert_eq!(refused.len(), cmds.len());
}

/// Whether a server's error says the ACL refused the command or a key.
fn acl_refusal(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["noperm", "no permissions", "can't access"]
        .iter()
        .any(|s| m.contains(s))
}

/// Every case of the list as a test on `$backend`, each with the `$attr`s (one case at a time: the
/// attributes repeat once per case).
macro_rules! cases {
    ($backend:ident $(#[$attr:meta])* : [$(,)?]) => {};
    ($backend:ident $(#[$attr:meta])* : [$case:ident $(, $rest:ident)* $(,)?]) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $case() {
            super::$case(super::Backend::$backend).await
        }
        cases!($backend $(#[$attr])* : [$($rest),*]);
    };
}

/// `all` cases run on every backend, `servers` on every server, `restarts` where the harness
/// started the server, `acl` on the ACL user only.
macro_rules! suite {
    (all: $all:tt, servers: $srv:tt, restarts: $rst:tt, acl: $acl:tt $(,)?) => {
        mod memory_backend {
            cases!(Memory: $all);
        }
        mod redis_server {
            cases!(Redis: $all);
            cases!(Redis: $srv);
            cases!(Redis: $rst);
        }
        mod valkey_server {
            cases!(Valkey: $all);
            cases!(Valkey: $srv);
            cases!(Valkey: $rst);
        }
        /// The queue and history connected as a user holding only the documented ACL rule.
        mod redis_acl {
            cases!(RedisAcl: $all);
            cases!(RedisAcl: $acl);
        }
        mod valkey_acl {
            cases!(ValkeyAcl: $all);
            cases!(ValkeyAcl: $acl);
        }
        /// The server the operator names (see the module docs); ignored unless named.
        mod other_server {
            cases!(Other
                #[cfg_attr(
                    not(any(ferry_conformance_server, ferry_conformance_url)),
                    ignore = "set FERRY_CONFORMANCE_SERVER=/path/to/server or FERRY_CONFORMANCE_URL=redis://host:port/db"
                )]
                : $all);
            cases!(Other
                #[cfg_attr(
                    not(any(ferry_conformance_server, ferry_conformance_url)),
                    ignore = "set FERRY_CONFORMANCE_SERVER=/path/to/server or FERRY_CONFORMANCE_URL=redis://host:port/db"
                )]
                : $srv);
            cases!(Other
                #[cfg_attr(
                    not(ferry_conformance_server),
                    ignore = "kills and restarts the server: needs FERRY_CONFORMANCE_SERVER (a FERRY_CONFORMANCE_URL server cannot be restarted by the harness)"
                )]
                : $rst);
        }
    };
}

suite! {
    all: [
        enqueue_claim_ack,
        collapses_duplicates_only_while_pending,
        expired_lease_is_reclaimed_and_old_holder_loses_it,
        renew_keeps_the_lease,
        claim_order_is_expired_then_retries_then_new,
        retryable_failure_waits_for_backoff,
        a_due_retry_is_claimed_with_its_attempt_error_and_fields,
        exhausted_attempts_dead_letter,
        non_retryable_failure_dead_letters_at_once,
        dead_letters_retry_and_purge,
        release_makes_job_claimable_without_counting_an_attempt,
        stats_count_each_state,
        blob_leases_are_exclusive_and_expire,
        blob_leases_renew_and_name_their_holder,
        manifest_leases_have_one_writer_and_expire,
        concurrent_claimers_never_share_a_job,
        history_records_executions_and_counts_tasks,
        history_lists_newest_first_by_policy_with_paging,
        history_retention_drops_the_oldest_with_their_tasks,
        history_counts_stay_exact_under_concurrent_recorders,
        workers_are_listed_until_their_heartbeat_expires,
        paused_policies_park_jobs_until_resumed,
        upload_checkpoints_follow_the_job_until_it_is_acked,
        dead_lettered_jobs_drop_their_checkpoints,
    ],
    servers: [
        corrupt_entries_are_quarantined,
        prefixes_are_isolated,
    ],
    restarts: [
        aof_restart_keeps_jobs_and_leases,
        outage_is_unavailable_quickly_and_recovers,
    ],
    acl: [
        the_acl_rule_lets_limits_ledger_outbox_and_catalog_work,
        the_acl_rule_refuses_commands_and_keys_outside_the_grant,
    ],
}

/// The rule the README and `store`'s docs show is the one `redis_acl` grants.
#[test]
fn the_documented_acl_rule_is_the_tested_one() {
    let line = format!("ACL SETUSER ferry on >PASSWORD {}", acl_rule("ferry"));
    for (file, text) in [
        ("README.md", include_str!("../../README.md")),
        (
            "replicator/src/store/mod.rs",
            include_str!("../src/store/mod.rs"),
        ),
    ] {
        assert!(
            text.contains(&line),
            "{file} does not show the tested ACL rule:\n{line}"
        );
    }
}

/// The ACL grant and the code agree: every command the store's sources send (`redis::cmd`,
/// pipelines, `redis.call` in scripts) is granted, and every granted command is sent — so a new
/// command cannot slip past the documented rule, nor an unused grant stay in it.
#[test]
fn the_acl_rule_grants_exactly_the_commands_the_store_sends() {
    let sources = [
        include_str!("../src/store/redis.rs"),
        include_str!("../src/store/queue/redis.rs"),
        include_str!("../src/store/history/redis.rs"),
        include_str!("../src/store/limits.rs"),
        include_str!("../src/store/ledger.rs"),
        include_str!("../src/store/outbox.rs"),
        include_str!("../src/catalog.rs"),
    ]
    .join("\n");
    // What the client sends for us: scripts by SHA (loaded on NOSCRIPT), atomic pipelines.
    let mut sent: std::collections::BTreeSet<String> =
        ["evalsha", "script|load"].map(String::from).into();
    if sources.contains(".atomic()") {
        sent.extend(["multi", "exec"].map(String::from));
    }
    for opener in ["redis.call('", "cmd(\"", "pcall(redis.call, '"] {
        for (i, _) in sources.match_indices(opener) {
            let name = sources[i + opener.len()..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect::<String>()
                .to_ascii_lowercase();
            // Commands used with a subcommand are granted per subcommand.
            sent.insert(match name.as_str() {
                "xgroup" => "xgroup|create".to_owned(),
                "xinfo" => "xinfo|groups".to_owned(),
                _ => name,
            });
        }
    }
    let granted: std::collections::BTreeSet<String> = ferry_replicator::store::ACL_COMMANDS
        .split_whitespace()
        .filter_map(|g| g.strip_prefix('+'))
        .map(String::from)
        .collect();
    assert_eq!(
        sent, granted,
        "sent by the store (left) vs granted by ACL_COMMANDS (right)"
    );
}
