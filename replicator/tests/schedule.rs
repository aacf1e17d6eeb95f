//! The scheduler with a real redis-server and real registries: every cron tick fires once across
//! schedulers (in one process here, and across two real `ferry worker` processes), and
//! `single_active` skips a tick while the previous run is open.
mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::*;
use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::config::Config;
use ferry_replicator::control::schedule::{ScheduleMetrics, Scheduler, TickOutcome};
use ferry_replicator::replicate::Registries;
use ferry_replicator::store::history::{
    ExecutionQuery, ExecutionState, History, RedisHistory, Retention,
};
use ferry_replicator::store::queue::{RedisQueue, RegionLock};
use ferry_replicator::store::{StartedBy, Store};
use ferry_testkit::RedisServer;
use serde_json::json;

async fn backend(redis: &RedisServer) -> Store {
    let q = RedisQueue::connect(&redis.url(), "sched-test", RetryPolicy::default())
        .await
        .unwrap();
    let h = Arc::new(RedisHistory::new(&q, Retention::default()));
    Store::new(Arc::new(q), h)
}

fn scheduled(dir: &std::path::Path, src: &str, dst: &str, settings: serde_json::Value) -> Config {
    let path = write_config(
        dir,
        src,
        dst,
        json!({"trigger": {"type": "scheduled", "trigger_settings": settings}}),
    );
    Config::load(&path).expect("config")
}

async fn scheduler(config: &Config, redis: &RedisServer, holder: &str) -> Scheduler {
    let store = backend(redis).await;
    let registries = Registries::from_config(config).unwrap();
    Scheduler::new(
        config,
        &registries,
        store.jobs,
        store.history,
        RegionLock::new(store.leases, holder),
        ScheduleMetrics::default(),
    )
    .unwrap()
}

async fn scheduled_runs(history: &dyn History) -> Vec<ferry_replicator::store::history::Execution> {
    history
        .executions(&ExecutionQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.trigger == StartedBy::Scheduled)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tick_fires_once_across_schedulers() {
    let redis = RedisServer::start(true).await.unwrap();
    let (src, dst, dir) = two_registries().await;
    let config = scheduled(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({"cron": "0 */5 * * * *"}),
    );
    let a = scheduler(&config, &redis, "a").await;
    let b = scheduler(&config, &redis, "b").await;
    let entry_a = &a.entries()[0];
    let entry_b = &b.entries()[0];
    let mut at = Utc::now();
    for _ in 0..5 {
        at = entry_a.next_after(&at).unwrap();
        assert_eq!(
            entry_b.next_after(&(at - chrono::Duration::seconds(1))),
            Some(at)
        );
        let (ra, rb) = tokio::join!(a.tick(entry_a, at), b.tick(entry_b, at));
        let fired = [&ra, &rb]
            .iter()
            .filter(|o| matches!(o, TickOutcome::Fired(_)))
            .count();
        assert_eq!(fired, 1, "tick {at}: {ra:?} / {rb:?}");
        assert!(
            matches!(
                (&ra, &rb),
                (TickOutcome::Taken, _) | (_, TickOutcome::Taken)
            ),
            "{ra:?} / {rb:?}"
        );
        // A late wake-up for the same tick does not fire it again.
        assert_eq!(a.tick(entry_a, at).await, TickOutcome::Taken);
    }
    let history = backend(&redis).await.history;
    let runs = scheduled_runs(history.as_ref()).await;
    assert_eq!(runs.len(), 5, "{runs:?}");
    // The source is empty: each run ends at once.
    assert!(
        runs.iter().all(|e| e.state == ExecutionState::Succeeded),
        "{runs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_skips_a_tick_while_the_previous_run_is_open() {
    let redis = RedisServer::start(true).await.unwrap();
    let (src, dst, dir) = two_registries().await;
    push_image(dir.path(), 61, &src.host(), "team/app:v1").await;
    let config = scheduled(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({"cron": "*/10 * * * * *", "single_active": true}),
    );
    // No worker runs: the first run stays open with its task pending.
    let s = scheduler(&config, &redis, "a").await;
    let entry = &s.entries()[0];
    let t1 = entry.next_after(&Utc::now()).unwrap();
    let TickOutcome::Fired(first) = s.tick(entry, t1).await else {
        panic!("the first tick fires");
    };
    let t2 = entry.next_after(&t1).unwrap();
    assert_eq!(
        s.tick(entry, t2).await,
        TickOutcome::SkippedActive(first.clone())
    );

    // Without single_active the next tick starts another run.
    let config = scheduled(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({"cron": "*/10 * * * * *"}),
    );
    let s = scheduler(&config, &redis, "a").await;
    let entry = &s.entries()[0];
    let t3 = entry.next_after(&t2).unwrap();
    assert!(matches!(s.tick(entry, t3).await, TickOutcome::Fired(id) if id != first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_fire_each_tick_once() {
    let redis = RedisServer::start(true).await.unwrap();
    // The registries must outlive the workers: bind them.
    let RegistryPair {
        src: _src,
        dst: _dst,
        dir,
        config: cfg,
    } = registry_pair(
        None,
        "",
        json!({"trigger": {"type": "scheduled", "trigger_settings": {"cron": "* * * * * *"}}}),
    )
    .await;
    let mut workers = Vec::new();
    for name in ["w1", "w2"] {
        workers.push(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args([
                    "worker",
                    "--config",
                    cfg.to_str().unwrap(),
                    "--redis",
                    &redis.url(),
                ])
                .args(["--queue-prefix", "sched-test", "--consumer", name])
                // Debug for the scheduler: each process logs the ticks it lost to the other.
                .env(
                    "FERRY_LOG",
                    "info,ferry_replicator::control::schedule=debug",
                )
                .stderr(std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap())
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    let history = backend(&redis).await.history;
    let enough = eventually(Duration::from_secs(60), || async {
        scheduled_runs(history.as_ref()).await.len() >= 5
    })
    .await;
    drop(workers);
    let log =
        |n: &str| std::fs::read_to_string(dir.path().join(format!("{n}.log"))).unwrap_or_default();
    let (w1, w2) = (log("w1"), log("w2"));
    assert!(
        enough,
        "fewer than 5 scheduled runs in 60 s:\nw1:\n{w1}\nw2:\n{w2}"
    );
    // What each process says it did with each tick.
    let ticks = |log: &str, what: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains(what))
            .filter_map(|l| {
                let rest = l.split_once("tick=")?.1;
                Some(rest.split(" execution=").next()?.trim().to_string())
            })
            .collect()
    };
    let fired: Vec<String> = [&w1, &w2]
        .iter()
        .flat_map(|l| ticks(l, "scheduled run started"))
        .collect();
    let mut unique = fired.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), fired.len(), "a tick fired twice: {fired:?}");
    // Both processes competed: each fired or lost at least one tick to the other.
    for (name, l) in [("w1", &w1), ("w2", &w2)] {
        let seen = ticks(l, "scheduled run started").len()
            + ticks(l, "tick fired by another process").len();
        eprintln!(
            "{name}: fired {}, lost {}",
            ticks(l, "scheduled run started").len(),
            ticks(l, "tick fired by another process").len()
        );
        assert!(seen >= 1, "{name} took part in no tick:\n{l}");
    }
    // Every run recorded is one of the fired ticks (and the history holds nothing else).
    let runs = scheduled_runs(history.as_ref()).await;
    assert!(
        runs.len() <= fired.len() && runs.len() >= 5,
        "{} runs for {} fired ticks",
        runs.len(),
        fired.len()
    );
}
