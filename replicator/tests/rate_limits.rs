//! Rate limits shared by a region's workers through a real `redis-server`: one worker's `429` with
//! `Retry-After` pauses every worker for that registry, a nearly exhausted `RateLimit-Remaining`
//! pauses the registry before it answers 429s, and nothing fails meanwhile.
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::clock::now_ms;
use ferry_replicator::config::Config;
use ferry_replicator::oci::gate::{SharedGate, SHARED_REFRESH};
use ferry_replicator::replicate::Registries;
use ferry_replicator::store::limits::RedisLimits;
use ferry_replicator::store::queue::RedisQueue;
use ferry_testkit::{Behavior, FakeRegistry, RedisServer};
use serde_json::json;

/// Two "workers": separate clients (as in two processes) sharing pauses through one Redis.
async fn two_workers(
    fake: &FakeRegistry,
    redis: &RedisServer,
) -> (Registries, Registries, RedisLimits) {
    let config = Config::from_slice(
        &serde_json::to_vec(&json!({
            "registries": [{"name": "src", "url": fake.url(), "insecure": true}]
        }))
        .unwrap(),
        "test",
    )
    .unwrap();
    let queue = RedisQueue::connect(&redis.url(), "rl", RetryPolicy::default())
        .await
        .unwrap();
    let gate = RedisLimits::new(&queue);
    let one = Registries::from_config(&config)
        .unwrap()
        .with_shared_gate(Arc::new(gate.clone()));
    let two = Registries::from_config(&config)
        .unwrap()
        .with_shared_gate(Arc::new(gate.clone()));
    (one, two, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_worker_pauses_every_worker_of_the_region() {
    let fake = FakeRegistry::start(Behavior::default()).await.unwrap();
    let redis = RedisServer::start(false).await.unwrap();
    let (one, two, gate) = two_workers(&fake, &redis).await;
    let (a, b) = (one.get("p", "src").unwrap(), two.get("p", "src").unwrap());
    // Both have talked to the registry (and read the shared pause) before the 429.
    a.head_digest("team/app", "v1").await.unwrap();
    b.head_digest("team/app", "v1").await.unwrap();
    fake.clear_request_log();
    fake.set_behavior(|b| b.retry_after = Some((1, "2".into())));

    let first = tokio::spawn(async move { a.head_digest("team/app", "v1").await });
    // Worker one publishes the pause as soon as it reads the 429.
    let deadline = Instant::now() + Duration::from_secs(5);
    let until = loop {
        let until = gate.paused_until("src").await.unwrap();
        if until > now_ms() {
            break until;
        }
        assert!(Instant::now() < deadline, "worker one never shared a pause");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // A pause reaches every worker within one refresh of the shared state.
    tokio::time::sleep(SHARED_REFRESH + Duration::from_millis(20)).await;
    let asked = now_ms();
    // Asked while the 2 s pause still runs (200 ms after it was seen): else nothing is tested.
    assert!(
        asked < until,
        "worker two asked {} ms after the pause ended",
        asked - until
    );
    b.head_digest("team/app", "v1").await.unwrap();
    let answered = now_ms();
    first.await.unwrap().unwrap();
    eprintln!(
        "worker two asked {} ms before the shared pause ended and was answered {} ms after its end",
        until - asked,
        answered - until
    );
    assert!(
        answered >= until - 20,
        "worker two went ahead {} ms before the pause ended",
        until - answered
    );
    // One 429, then one retry each: nothing failed, no second 429.
    assert_eq!(fake.request_log().len(), 3, "{:?}", fake.request_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_exhausted_quota_pauses_the_registry_for_every_worker() {
    let fake = FakeRegistry::start(Behavior {
        rate_limit: Some((100, 2)),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let redis = RedisServer::start(false).await.unwrap();
    let (one, two, gate) = two_workers(&fake, &redis).await;
    one.get("p", "src")
        .unwrap()
        .head_digest("team/app", "v1")
        .await
        .unwrap();
    let until = gate.paused_until("src").await.unwrap();
    assert!(
        until >= now_ms() + 50_000,
        "RateLimit-Remaining 2 of 100 must pause the registry for about a minute (until {until})"
    );
    fake.clear_request_log();
    let two = two.get("p", "src").unwrap();
    let held =
        tokio::time::timeout(Duration::from_secs(2), two.head_digest("team/app", "v1")).await;
    assert!(
        held.is_err(),
        "worker two sent a request to a paused registry"
    );
    assert!(fake.request_log().is_empty(), "{:?}", fake.request_log());
}

#[tokio::test]
async fn pauses_are_shared_and_only_grow_in_redis_and_valkey() {
    for binary in ["redis-server", "valkey-server"] {
        let redis = RedisServer::start_binary(binary, false).await.unwrap();
        let queue = RedisQueue::connect(&redis.url(), "rl", RetryPolicy::default())
            .await
            .unwrap();
        let gate = RedisLimits::new(&queue);
        assert_eq!(gate.paused_until("hub").await.unwrap(), 0);
        let until = now_ms() + 60_000;
        gate.pause("hub", until).await.unwrap();
        gate.pause("hub", until - 30_000).await.unwrap();
        assert_eq!(gate.paused_until("hub").await.unwrap(), until, "{binary}");
        assert_eq!(gate.paused_until("other").await.unwrap(), 0, "{binary}");
        // The key ends with the pause.
        gate.pause("soon", now_ms() + 200).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(gate.paused_until("soon").await.unwrap(), 0, "{binary}");
    }
}

/// Two processes' throttles of one policy sharing a timeline in Redis: together they hold the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_of_a_policy_share_its_speed() {
    use ferry_replicator::throttle::{SharedSpeed, SharedSpeedSlot, Throttle};
    use tokio_util::sync::CancellationToken;
    for binary in ["redis-server", "valkey-server"] {
        let redis = RedisServer::start_binary(binary, false).await.unwrap();
        let queue = RedisQueue::connect(&redis.url(), "sp", RetryPolicy::default())
            .await
            .unwrap();
        let store: Arc<dyn SharedSpeed> = Arc::new(RedisLimits::new(&queue));
        let worker = || {
            let slot = SharedSpeedSlot::default();
            slot.set(store.clone()).unwrap();
            Arc::new(
                Throttle::from_kib_per_sec(512)
                    .unwrap()
                    .shared_as("p", slot),
            )
        };
        let (one, two) = (worker(), worker());
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let mut runs = Vec::new();
        for t in [one, two] {
            let cancel = cancel.clone();
            runs.push(tokio::spawn(async move {
                // 512 KiB each, in 16 KiB chunks: 1 MiB in all at 512 KiB/s.
                for _ in 0..32 {
                    assert!(t.consume(16 * 1024, &cancel).await);
                }
            }));
        }
        for r in runs {
            r.await.unwrap();
        }
        let took = started.elapsed();
        eprintln!("{binary}: 1 MiB through two throttles sharing 512 KiB/s took {took:?}");
        // Two seconds, less the burst allowance and the grant still in hand at the end. Only the
        // lower bound is the property (unshared, the two would take ~1 s); a loaded machine can
        // only make it slower, so there is no upper bound.
        assert!(took >= Duration::from_millis(1500), "{binary}: {took:?}");
    }
}
