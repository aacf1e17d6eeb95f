//! The queue behind Redis/Valkey Sentinel (README "Queue servers"): Ferry connects to the primary
//! the sentinels name, and when that primary dies (`kill -9`) and Sentinel promotes its replica,
//! Ferry follows: writes work again, and every job acknowledged and replicated before the kill is
//! still there. With `--redis-wait-replicas` a job counts as enqueued only once a replica confirmed
//! it: one no replica confirms is refused, and every acknowledged one survives a `kill -9` of the
//! primary right after its acknowledgement. Runs against `redis-server` and `valkey-server`, each
//! started as primary, replica and sentinel (`--sentinel`) on this machine.
use std::time::{Duration, Instant};

use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::event::EventKind;
use ferry_replicator::store::queue::{Job, JobQueue, RedisQueue};
use ferry_replicator::store::redis::RedisTarget;
use ferry_replicator::store::StoreError;
use ferry_testkit::sentinel::Sentinel;
use ferry_testkit::RedisServer;

/// How long the queue may stay unwritable after the primary's death: Sentinel needs 1 s to call
/// it down and a few more to promote (the test's sentinel settings), Ferry up to half a second to
/// ask again; generous for a loaded machine.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(60);

fn job(reference: &str) -> Job {
    Job {
        event_time_ms: 1_700_000_000_000,
        ..Job::new("eu-to-us", EventKind::Push, "platform/api", reference)
    }
}

/// `WAIT 1`: every write the primary acknowledged so far is on its replica.
async fn wait_replicated(primary: &RedisServer) {
    let client = redis::Client::open(primary.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let replicas: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(10_000)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(replicas, 1, "the replica confirmed the writes");
}

async fn the_queue_follows_a_promoted_replica(binary: &str) {
    let mut primary = RedisServer::start_binary(binary, false).await.unwrap();
    let replica = RedisServer::start_replica(&primary).await.unwrap();
    let sentinel = Sentinel::start(&primary, "ferry-main").await.unwrap();
    sentinel.wait_for_replica(&replica).await.unwrap();
    let queue = RedisQueue::connect(&sentinel.url(), "ferry", RetryPolicy::default())
        .await
        .unwrap();
    let before: Vec<String> = (0..20).map(|i| format!("before-{i}")).collect();
    for reference in &before {
        queue.enqueue(job(reference)).await.unwrap();
    }
    wait_replicated(&primary).await;

    primary.kill().await;
    let killed = Instant::now();
    let writable = loop {
        match queue.enqueue(job("after-failover")).await {
            Ok(_) => break killed.elapsed(),
            Err(e) if killed.elapsed() < FAILOVER_PATIENCE => {
                tracing::debug!(error = %e, "not writable yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!(
                "the queue is still not writable {FAILOVER_PATIENCE:?} after the primary died: {e}\nsentinel log:\n{}",
                sentinel.log_tail(30)
            ),
        }
    };
    println!("{binary}: the queue took writes again {writable:?} after kill -9 of the primary");
    assert_eq!(
        sentinel.primary_port().await.unwrap(),
        replica.port(),
        "the sentinel promoted the replica"
    );
    let claimed = queue
        .claim("worker-1", 100, Duration::from_secs(60))
        .await
        .unwrap();
    let mut refs: Vec<&str> = claimed.iter().map(|l| l.job.reference.as_str()).collect();
    refs.sort_unstable();
    let mut expected: Vec<&str> = before.iter().map(String::as_str).collect();
    expected.push("after-failover");
    expected.sort_unstable();
    assert_eq!(
        refs, expected,
        "every replicated job survived, and the new one is there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_the_queue_follows_a_replica_sentinel_promotes_after_kill_9_of_the_primary() {
    the_queue_follows_a_promoted_replica("redis-server").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_the_queue_follows_a_replica_sentinel_promotes_after_kill_9_of_the_primary() {
    the_queue_follows_a_promoted_replica("valkey-server").await;
}

/// Sends `signal` (`STOP`, `CONT`) to a server: a stopped replica confirms nothing.
fn signal(server: &RedisServer, signal: &str) {
    let pid = server.pid().expect("the server runs");
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_a_job_no_replica_confirms_is_refused_and_accepted_once_it_does() {
    let primary = RedisServer::start_binary("redis-server", false)
        .await
        .unwrap();
    let replica = RedisServer::start_replica(&primary).await.unwrap();
    let target = RedisTarget::new(&primary.url())
        .unwrap()
        .with_wait_replicas(1);
    let queue = RedisQueue::connect_to(&target, "ferry", RetryPolicy::default())
        .await
        .unwrap();
    // The replica's link may still be syncing: the first job waits for it like any other.
    let patience = Instant::now();
    while let Err(e) = queue.enqueue(job("linked")).await {
        assert!(
            patience.elapsed() < FAILOVER_PATIENCE,
            "the replica never confirmed: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    signal(&replica, "STOP");
    let refused = queue.enqueue(job("unconfirmed")).await;
    signal(&replica, "CONT");
    match refused {
        Err(StoreError::Unavailable(message)) => assert!(
            message.contains("0 of the 1 replica(s) --redis-wait-replicas asks for confirmed it"),
            "{message}"
        ),
        other => panic!("a job no replica confirmed was acknowledged: {other:?}"),
    }
    // The sender re-sends; the job written before the refusal collapses with it.
    let patience = Instant::now();
    while let Err(e) = queue.enqueue(job("unconfirmed")).await {
        assert!(
            patience.elapsed() < FAILOVER_PATIENCE,
            "the replica never came back: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let claimed = queue.claim("w", 10, Duration::from_secs(60)).await.unwrap();
    let mut refs: Vec<&str> = claimed.iter().map(|l| l.job.reference.as_str()).collect();
    refs.sort_unstable();
    assert_eq!(refs, ["linked", "unconfirmed"]);
}

/// Jobs enqueued while the replica lags (here: stopped) are what asynchronous replication loses
/// when the primary dies then; with `--redis-wait-replicas 1` they are refused instead of
/// acknowledged, so every acknowledged job is on the replica Sentinel promotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_every_acknowledged_job_survives_kill_9_of_the_primary_while_the_replica_lags(
) {
    let mut primary = RedisServer::start_binary("valkey-server", false)
        .await
        .unwrap();
    let replica = RedisServer::start_replica(&primary).await.unwrap();
    let sentinel = Sentinel::start(&primary, "ferry-main").await.unwrap();
    sentinel.wait_for_replica(&replica).await.unwrap();
    let target = RedisTarget::new(&sentinel.url())
        .unwrap()
        .with_wait_replicas(1);
    let queue = RedisQueue::connect_to(&target, "ferry", RetryPolicy::default())
        .await
        .unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let reference = format!("confirmed-{i}");
        queue.enqueue(job(&reference)).await.unwrap();
        acknowledged.push(reference);
    }
    signal(&replica, "STOP");
    let mut refused = 0;
    for i in 0..3 {
        let reference = format!("while-lagging-{i}");
        match queue.enqueue(job(&reference)).await {
            Ok(_) => acknowledged.push(reference),
            Err(_) => refused += 1,
        }
    }
    primary.kill().await;
    signal(&replica, "CONT");
    let killed = Instant::now();
    let claimed = loop {
        match queue.claim("worker-1", 100, Duration::from_secs(60)).await {
            Ok(claimed) => break claimed,
            Err(e) if killed.elapsed() < FAILOVER_PATIENCE => {
                tracing::debug!(error = %e, "not readable yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!(
                "no primary {FAILOVER_PATIENCE:?} after the kill: {e}\nsentinel log:\n{}",
                sentinel.log_tail(30)
            ),
        }
    };
    let held: Vec<&str> = claimed.iter().map(|l| l.job.reference.as_str()).collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|r| !held.contains(&r.as_str()))
        .collect();
    println!(
        "valkey-server, --redis-wait-replicas 1: {} acknowledged, {refused} refused while the replica lagged, {} lost; the promoted replica answered {:?} after kill -9",
        acknowledged.len(),
        lost.len(),
        killed.elapsed()
    );
    assert!(lost.is_empty(), "acknowledged jobs lost: {lost:?}");
    assert_eq!(refused, 3, "the jobs no replica confirmed were refused");
}
