//! Each manifest is written once per destination, as the destination registry's own access log
//! shows: distribution 2.8 notifies a multi-arch push as one job per child manifest (by digest)
//! plus the tagged index's job, and those jobs run at the same time on several workers sharing a
//! queue (redis-server) — the manifest lease makes one of them the writer of each child. And a
//! bidirectional job `HEAD`s its tag once per side before the copy (and not after its `PUT`, whose
//! answer names the digest it stored). End to end: skopeo pushes to a registry that notifies a running `ferry serve`.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::clock::now_ms;
use ferry_replicator::config::Config;
use ferry_replicator::event::EventKind;
use ferry_replicator::replicate::Registries;
use ferry_replicator::store::history::{MemoryHistory, Retention};
use ferry_replicator::store::queue::{Job, JobQueue, RedisQueue};
use ferry_replicator::store::Store;
use ferry_replicator::worker::{Worker, WorkerOptions};
use ferry_testkit::access_log::{all_manifest_puts, manifest_heads, manifest_puts};
use ferry_testkit::{LayerSpec, LayoutBuilder, RedisServer, Registry, RegistryOptions};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Rounds of the race: each a fresh multi-arch image whose child jobs and index job run at once.
const ROUNDS: u64 = 4;

/// A registry that logs every request (the evidence of what it received).
async fn logged_registry() -> Registry {
    Registry::start_with(RegistryOptions {
        log_level: "info",
        ..RegistryOptions::default()
    })
    .await
    .expect("start registry")
}

fn read_log(r: &Registry) -> String {
    std::fs::read_to_string(r.log_path()).expect("registry log")
}

/// A three-platform image (its layers from `seed`) pushed with skopeo to `host/repo:tag`:
/// the index digest and its children's digests.
async fn push_multi_arch(
    dir: &std::path::Path,
    seed: u64,
    host: &str,
    repo: &str,
    tag: &str,
) -> (String, Vec<String>) {
    let mut b = LayoutBuilder::new(&dir.join(format!("multi-{seed}"))).expect("layout");
    let mut children = Vec::new();
    for (i, (arch, variant)) in [("amd64", None), ("arm64", Some("v8")), ("s390x", None)]
        .into_iter()
        .enumerate()
    {
        let layers = [LayerSpec {
            seed: seed * 10 + i as u64,
            size: 512 * 1024,
        }];
        let child = b
            .image_for_platform("linux", arch, variant, &layers)
            .expect("child");
        children.push((child, arch, variant));
    }
    let index = b
        .index(
            "multi",
            &children
                .iter()
                .map(|(c, arch, variant)| (c.clone(), "linux", *arch, *variant))
                .collect::<Vec<_>>(),
        )
        .expect("index");
    let layout = b.finish().expect("finish layout");
    ferry_testkit::skopeo::push_layout(&layout, "multi", host, &format!("{repo}:{tag}"))
        .await
        .expect("skopeo push");
    (
        index.digest.clone(),
        children.into_iter().map(|(c, _, _)| c.digest).collect(),
    )
}

/// The jobs distribution 2.8's notifications of a multi-arch push become: one per child by
/// digest, then the tagged index (`source`: the side it was pushed to, for the reverse direction of
/// a bidirectional policy).
fn push_jobs(
    repo: &str,
    tag: &str,
    index: &str,
    children: &[String],
    source: Option<&str>,
) -> Vec<Job> {
    let job = |reference: &str, digest: &str| Job {
        digest: Some(digest.to_string()),
        event_time_ms: now_ms(),
        source: source.map(str::to_string),
        ..Job::new("test", EventKind::Push, repo, reference)
    };
    let mut jobs: Vec<Job> = children.iter().map(|c| job(c, c)).collect();
    jobs.push(job(tag, index));
    jobs
}

/// Two workers (as two processes would be: their own consumer names and in-process state) on one
/// redis-server queue, each running several jobs at once.
struct Workers {
    _redis: RedisServer,
    queue: Arc<RedisQueue>,
    stop: CancellationToken,
    runs: Vec<tokio::task::JoinHandle<()>>,
}

impl Workers {
    async fn start(config: &Config, registries: &Registries) -> Workers {
        let redis = RedisServer::start(false).await.expect("redis-server");
        let queue = Arc::new(
            RedisQueue::connect(&redis.url(), "once", RetryPolicy::default())
                .await
                .expect("queue"),
        );
        let stop = CancellationToken::new();
        let mut runs = Vec::new();
        for consumer in ["w1", "w2"] {
            let store = Store::new(
                queue.clone(),
                Arc::new(MemoryHistory::new(Retention::default())),
            );
            let opts = WorkerOptions {
                consumer: consumer.into(),
                concurrency: 4,
                lease: Duration::from_secs(10),
                poll_interval: Duration::from_millis(10),
                ..Default::default()
            };
            let worker = Arc::new(Worker::new(config, registries, &store, opts).expect("worker"));
            runs.push(tokio::spawn(worker.run(stop.clone())));
        }
        Workers {
            _redis: redis,
            queue,
            stop,
            runs,
        }
    }

    /// Enqueues `jobs` and waits until the queue has nothing waiting or running.
    async fn run(&self, jobs: Vec<Job>) {
        for job in jobs {
            self.queue.enqueue(job).await.expect("enqueue");
        }
        let drained = eventually(Duration::from_secs(60), || async {
            let st = self.queue.stats().await.expect("queue stats");
            st.depth == 0 && st.in_flight == 0
        })
        .await;
        let st = self.queue.stats().await.expect("queue stats");
        assert!(drained, "the jobs did not finish: {st:?}");
        assert_eq!(st.dead_letters, 0, "no job failed for good");
    }

    async fn stop(self) {
        self.stop.cancel();
        for run in self.runs {
            run.await.expect("worker task");
        }
    }
}

/// The manifest `PUT`s of `repo` in `log`: the tag and each child, once each.
fn assert_written_once(log: &str, repo: &str, tag: &str, children: &[String], side: &str) {
    for (reference, what) in children
        .iter()
        .map(|c| (c.as_str(), "child"))
        .chain([(tag, "tagged index")])
    {
        assert_eq!(
            manifest_puts(log, repo, reference),
            1,
            "{side}: PUTs of the {what} {repo}:{reference} in its access log"
        );
    }
}

/// The race of issue 12: a multi-arch push's child jobs and its index job running at once on two
/// workers. Without the manifest lease, the index job and a child's own job both find the child
/// missing and both `PUT` it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_arch_push_writes_each_manifest_once_when_its_jobs_race() {
    let (src, dst, dir) = two_registries().await;
    let cfg = write_config(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({"trigger": {"type": "event_based"}}),
    );
    let config = Config::load(&cfg).expect("config");
    let registries = Registries::from_config(&config).expect("registries");
    let workers = Workers::start(&config, &registries).await;
    let mut pushed = Vec::new();
    for round in 0..ROUNDS {
        let repo = format!("team/multi{round}");
        let (index, children) =
            push_multi_arch(dir.path(), round + 1, &src.host(), &repo, "v1").await;
        workers
            .run(push_jobs(&repo, "v1", &index, &children, None))
            .await;
        pushed.push((repo, index, children));
    }
    workers.stop().await;

    let log = read_log(&dst);
    for (repo, index, children) in &pushed {
        assert_eq!(
            raw_digest(&dst.host(), &format!("{repo}:v1")).await,
            *index,
            "the destination serves the index"
        );
        assert_written_once(&log, repo, "v1", children, "destination");
    }
    assert_eq!(
        all_manifest_puts(&log),
        pushed.iter().map(|(_, _, c)| c.len() + 1).sum::<usize>(),
        "no other manifest was written"
    );
}

/// A bidirectional policy: a multi-arch push on either side is written on the other exactly once
/// per manifest, and the tag's job `HEAD`s the tag once on each side (arbitration) — the copy
/// reuses what arbitration read, and the `PUT`'s answer confirms the digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_multi_arch_push_writes_each_manifest_once_per_side_and_heads_its_tag_once()
{
    let (a, b) = (logged_registry().await, logged_registry().await);
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = write_config(
        dir.path(),
        &a.url(),
        &b.url(),
        json!({"trigger": {"type": "event_based"}, "mode": "bidirectional"}),
    );
    let config = Config::load(&cfg).expect("config");
    let registries = Registries::from_config(&config).expect("registries");
    let workers = Workers::start(&config, &registries).await;
    let mut pushed = Vec::new();
    for round in 0..ROUNDS {
        // Even rounds push on `src` (copied to `dst`), odd rounds on `dst` (copied back).
        let (from, to, source) = if round % 2 == 0 {
            (&a, &b, None)
        } else {
            (&b, &a, Some("dst"))
        };
        let repo = format!("team/both{round}");
        let (index, children) =
            push_multi_arch(dir.path(), 100 + round, &from.host(), &repo, "v1").await;
        let (from_before, to_before) = (read_log(from).len(), read_log(to).len());
        workers
            .run(push_jobs(&repo, "v1", &index, &children, source))
            .await;
        let (from_log, to_log) = (read_log(from), read_log(to));
        let (read_side, written_side) = (&from_log[from_before..], &to_log[to_before..]);
        assert_eq!(
            raw_digest(&to.host(), &format!("{repo}:v1")).await,
            index,
            "round {round}: the other side serves the index"
        );
        assert_written_once(written_side, &repo, "v1", &children, "written side");
        assert_eq!(
            all_manifest_puts(read_side),
            0,
            "round {round}: nothing is written back to the side pushed to"
        );
        assert_eq!(
            (
                manifest_heads(read_side, &repo, "v1"),
                manifest_heads(written_side, &repo, "v1")
            ),
            (1, 1),
            "round {round}: HEADs of the tag on the side read and the side written"
        );
        pushed.push(repo);
    }
    workers.stop().await;
}

/// The whole path: skopeo pushes multi-arch images to a registry whose notifications (distribution
/// 2.8: each child by digest, then the tagged index) reach a running `ferry serve` that runs 8
/// jobs at once; the destination's access log shows one `PUT` per manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_pushes_notified_to_a_running_daemon_write_each_manifest_once() {
    const TOKEN: &str = "once-token";
    let listen = free_local_addr();
    let src = Registry::start_with(RegistryOptions {
        notifications_url: Some(format!(
            "http://{listen}/v1/events/distribution?registry=src"
        )),
        notifications_token: Some(TOKEN.into()),
        ..RegistryOptions::default()
    })
    .await
    .expect("start source registry");
    let dst = logged_registry().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = write_config(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({"trigger": {"type": "event_based"}}),
    );
    let serve = Serve::start_with(
        &cfg,
        &listen,
        TOKEN,
        &["--concurrency", "8"],
        &[],
        dir.path().join("serve.log"),
    )
    .await;
    let mut pushed = Vec::new();
    for round in 0..ROUNDS {
        let repo = format!("team/notified{round}");
        let (index, children) =
            push_multi_arch(dir.path(), 200 + round, &src.host(), &repo, "v1").await;
        pushed.push((repo, index, children));
    }
    // Every child's job and every index's job has run (each manifest's event is one job).
    let jobs: usize = pushed.iter().map(|(_, _, c)| c.len() + 1).sum();
    let metrics = format!("http://{listen}/metrics");
    let done = eventually(Duration::from_secs(60), || async {
        succeeded_jobs(&metrics).await >= jobs
    })
    .await;
    assert!(
        done,
        "{} of {jobs} jobs succeeded:\n{}",
        succeeded_jobs(&metrics).await,
        serve.log()
    );
    let log = read_log(&dst);
    for (repo, index, children) in &pushed {
        assert_eq!(
            raw_digest(&dst.host(), &format!("{repo}:v1")).await,
            *index,
            "the destination serves the index"
        );
        assert_written_once(&log, repo, "v1", children, "destination");
    }
}

/// `ferry_jobs_total{outcome="succeeded"}` summed over policies and kinds.
async fn succeeded_jobs(metrics_url: &str) -> usize {
    let Ok(answer) = reqwest::get(metrics_url).await else {
        return 0;
    };
    let text = answer.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("ferry_jobs_total{") && l.contains("outcome=\"succeeded\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as usize
}
