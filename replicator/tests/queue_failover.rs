//! The queue behind Redis/Valkey Sentinel (README "Queue servers"): Ferry connects to the primary
//! the sentinels name, and when that primary dies (`kill -9`) and Sentinel promotes its replica,
//! Ferry follows: writes work again, and every job acknowledged and replicated before the kill is
//! still there. Runs against `redis-server` and `valkey-server`, each started as primary, replica
//! and sentinel (`--sentinel`) on this machine.
use std::time::{Duration, Instant};

use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::event::EventKind;
use ferry_replicator::store::queue::{Job, JobQueue, RedisQueue};
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
