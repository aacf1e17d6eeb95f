//! `bench-events`: the event-driven path measured with real processes — a source `docker-registry`
//! whose notifications go to a real `ferry-agent`, a real `redis-server` (AOF on), a real
//! `ferry worker`, and a destination registry.
//!
//! Prints figures, never asserts them:
//! - push → replica lag (p50/p95/p99) over N small-image pushes (paced at 10/s), with a worker of
//!   concurrency 1 and of concurrency 4. Lag is measured by this program: from the moment the
//!   manifest PUT on the source returned to the first successful `HEAD` of the tag on the
//!   destination (polled every 10 ms).
//! - sustained no-op jobs/s: jobs for tags the destination already has (each is a `HEAD` on both
//!   sides, a tag list and a referrers probe), enqueued straight into Redis.
//! - RSS of the agent and the worker at rest and at their peak (VmHWM).
//! - Footprint (README "Footprint"): RSS and CPU of the agent, the worker (concurrency 4) and the
//!   queue server, idle for 10 s and under the concurrency-4 lag run, from `/proc`.
//!
//! With `--storm-minutes M` it runs the sustained storm instead (README "Sustained storm"; see
//! `storm.rs`): `--rate-per-min R` pushes a minute for M minutes, optionally with the destination
//! down for the first `--dest-down-secs S` seconds.
//!
//! Usage: `cargo build --release --workspace && cargo run --release -p ferry-replicator --example
//! bench-events [-- --pushes N] [--bin-dir target/release] [--queue-server redis-server]`
//! (the queue is `valkey-server` by default, with AOF on).
//!
//! Layout: `rig.rs` = the region (processes, config, image pushes, `/proc` readings) both modes
//! share; `storm.rs` = the storm; this file = flags and the default measurements.
mod rig;
mod storm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::event::EventKind;
use ferry_replicator::store::queue::{Job, JobQueue, RedisQueue};
use ferry_testkit::measure::cpu_seconds;
use ferry_testkit::RegistryOptions;

use rig::{percentile, push_image, status_mib, Binaries, Region};

const REPO: &str = "bench/lag";
/// The layer of each image the default mode pushes.
const LAYER_LEN: usize = 32 * 1024;

struct Args {
    pushes: usize,
    bins: Binaries,
    /// `Some` runs the storm instead of the default measurements.
    storm: Option<storm::StormArgs>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        pushes: 200,
        bins: Binaries {
            bin_dir: PathBuf::from("target/release"),
            queue_server: "valkey-server".into(),
        },
        storm: None,
    };
    let mut storm = storm::StormArgs::default();
    let mut storm_asked = false;
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{x} needs {name}"));
        match x.as_str() {
            "--pushes" => a.pushes = value("N")?.parse()?,
            "--bin-dir" => a.bins.bin_dir = value("DIR")?.into(),
            "--queue-server" => a.bins.queue_server = value("BINARY")?,
            other => {
                if !storm.parse_flag(other, &mut value)? {
                    bail!("unknown argument {other:?}");
                }
                storm_asked = true;
            }
        }
    }
    if storm_asked {
        anyhow::ensure!(
            storm.minutes > 0,
            "storm flags need --storm-minutes M (M > 0)"
        );
        a.storm = Some(storm);
    }
    a.bins.check()?;
    Ok(a)
}

/// What one process used over a window: average CPU (cores) and the largest RSS sampled.
#[derive(Clone, Copy, Default)]
struct Usage {
    cpu_cores: f64,
    rss_max_mib: f64,
}

/// Runs `work` while sampling the processes' RSS every 100 ms; returns each one's usage over it.
async fn measure_usage<T>(
    pids: &[u32],
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<(T, Vec<Usage>)> {
    let start = Instant::now();
    let cpu = |pid: u32| cpu_seconds(pid).unwrap_or(0.0);
    let cpu_before: Vec<f64> = pids.iter().map(|p| cpu(*p)).collect();
    let mut rss_max = vec![0.0f64; pids.len()];
    let sample = |rss_max: &mut Vec<f64>| {
        for (max, pid) in rss_max.iter_mut().zip(pids) {
            *max = max.max(status_mib(*pid, "VmRSS:"));
        }
    };
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let out = loop {
        tokio::select! {
            out = &mut work => break out?,
            _ = tick.tick() => sample(&mut rss_max),
        }
    };
    sample(&mut rss_max);
    let wall = start.elapsed().as_secs_f64();
    let usage = pids
        .iter()
        .zip(cpu_before)
        .zip(rss_max)
        .map(|((pid, before), rss_max_mib)| Usage {
            cpu_cores: (cpu(*pid) - before) / wall,
            rss_max_mib,
        })
        .collect();
    Ok((out, usage))
}

/// Pushes `n` images paced at 10/s, polling the destination; returns each tag's lag.
async fn measure_lag(
    http: &reqwest::Client,
    src: &str,
    dst: &str,
    n: usize,
    round: usize,
) -> Result<Vec<Duration>> {
    let pushed: Arc<tokio::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let pusher = {
        let (http, src, pushed) = (http.clone(), src.to_string(), pushed.clone());
        async move {
            for i in 0..n {
                let tag = format!("r{round}-{i}");
                let next = Instant::now() + Duration::from_millis(100);
                push_image(
                    &http,
                    &src,
                    REPO,
                    &tag,
                    (round * 100_000 + i) as u64,
                    LAYER_LEN,
                )
                .await?;
                pushed.lock().await.insert(tag, Instant::now());
                tokio::time::sleep_until(next.into()).await;
            }
            anyhow::Ok(())
        }
    };
    let poller = {
        let (http, dst, pushed) = (http.clone(), dst.to_string(), pushed.clone());
        async move {
            let mut lags = Vec::with_capacity(n);
            let deadline = Instant::now() + Duration::from_secs(n as u64 / 10 + 120);
            while lags.len() < n {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "only {} of {n} tags arrived",
                    lags.len()
                );
                let waiting: Vec<(String, Instant)> = pushed
                    .lock()
                    .await
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                for (tag, at) in waiting {
                    let r = http
                        .head(format!("{dst}/v2/{REPO}/manifests/{tag}"))
                        .header("accept", "application/vnd.oci.image.manifest.v1+json")
                        .send()
                        .await?;
                    if r.status().is_success() {
                        lags.push(at.elapsed());
                        pushed.lock().await.remove(&tag);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(lags)
        }
    };
    let (p, lags) = tokio::join!(pusher, poller);
    p?;
    let mut lags = lags?;
    lags.sort();
    Ok(lags)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    // Kept on failure (process logs are in it) and after a storm (its logs are the evidence);
    // removed after a successful default run.
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench-events-")
        .tempdir()?;
    eprintln!("working directory (logs): {}", dir.path().display());
    let result = match &args.storm {
        Some(storm) => storm::run(&args.bins, storm, dir.path()).await,
        None => run(&args, dir.path()).await,
    };
    if result.is_ok() && args.storm.is_none() {
        dir.close()?;
    } else {
        let _ = dir.keep();
    }
    result
}

async fn run(args: &Args, dir: &Path) -> Result<()> {
    let http = reqwest::Client::new();
    let region = Region::start(&args.bins, dir, RegistryOptions::default()).await?;
    let (redis, src, dst, agent) = (&region.redis, &region.src, &region.dst, &region.agent);

    let mut rows = Vec::new();
    let mut noop: Vec<(usize, usize, f64)> = Vec::new();
    let mut worker_rest = 0.0;
    let mut worker_peak: f64 = 0.0;
    // (idle, under events) for agent, worker, queue server; from the concurrency-4 round.
    let mut footprint: Option<(Vec<Usage>, Vec<Usage>)> = None;
    for (round, concurrency) in [(1usize, 1usize), (2, 4), (3, 16)] {
        let worker = region.start_worker(concurrency, &[]).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        worker_rest = worker.rss_mib();
        // Lag with 1 and 4 workers; the 16-worker round only measures no-op throughput on the
        // tags of round 2.
        let tags_round = if concurrency <= 4 {
            eprintln!(
                "lag: {} pushes with a worker of concurrency {concurrency}...",
                args.pushes
            );
            let (src_url, dst_url) = (src.url(), dst.url());
            let lag_run = measure_lag(&http, &src_url, &dst_url, args.pushes, round);
            let lags = if concurrency == 4 {
                let pids = [
                    agent.pid(),
                    worker.pid(),
                    redis.pid().context("queue server pid")?,
                ];
                eprintln!("footprint: 10 s idle...");
                let ((), idle) = measure_usage(&pids, async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok(())
                })
                .await?;
                let (lags, busy) = measure_usage(&pids, lag_run).await?;
                footprint = Some((idle, busy));
                lags
            } else {
                lag_run.await?
            };
            worker_peak = worker_peak.max(worker.peak_mib());
            rows.push((
                concurrency,
                percentile(&lags, 0.5),
                percentile(&lags, 0.95),
                percentile(&lags, 0.99),
                *lags.last().unwrap_or(&Duration::ZERO),
            ));
            round
        } else {
            2
        };
        if concurrency >= 4 {
            // No-op throughput: jobs for tags the destination already holds.
            eprintln!("no-op jobs/s with concurrency {concurrency}...");
            let queue = RedisQueue::connect(&redis.url(), "ferry", RetryPolicy::default()).await?;
            let tags: Vec<String> = (0..args.pushes)
                .map(|i| format!("r{tags_round}-{i}"))
                .collect();
            let rounds = 5;
            let start = Instant::now();
            for _ in 0..rounds {
                for t in &tags {
                    queue
                        .enqueue(Job::new("bench", EventKind::Push, REPO, t))
                        .await?;
                }
                loop {
                    let s = queue.stats().await?;
                    if s.depth == 0 && s.in_flight == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            noop.push((
                concurrency,
                rounds * tags.len(),
                start.elapsed().as_secs_f64(),
            ));
            worker_peak = worker_peak.max(worker.peak_mib());
        }
        worker.stop().await;
    }
    let agent_rest = agent.rss_mib();
    let agent_peak = agent.peak_mib();
    region.agent.stop().await;

    println!("## bench-events results\n");
    println!("{} pushes of a one-layer (32 KiB) image per run, paced at 10/s; lag = manifest PUT on the source returned → tag visible on the destination (polled every 10 ms).\n", args.pushes);
    println!("| worker concurrency | lag p50 | p95 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (c, p50, p95, p99, max) in &rows {
        println!(
            "| {c} | {} ms | {} ms | {} ms | {} ms |",
            p50.as_millis(),
            p95.as_millis(),
            p99.as_millis(),
            max.as_millis()
        );
    }
    println!("\nNo-op jobs (the tag is already on the destination: one HEAD on each side), Redis queue, enqueued in rounds of {} and drained:\n", args.pushes);
    println!("| worker concurrency | jobs/s | jobs | seconds |");
    println!("|---|---|---|---|");
    for (c, jobs, secs) in &noop {
        println!("| {c} | {:.0} | {jobs} | {secs:.2} |", *jobs as f64 / secs);
    }
    println!("\nRSS: agent {agent_rest:.1} MiB at rest after the runs, peak {agent_peak:.1} MiB; worker {worker_rest:.1} MiB at rest, peak {worker_peak:.1} MiB.");
    if let Some((idle, busy)) = footprint {
        println!("\nFootprint (worker concurrency 4, queue {}): idle = 10 s with nothing to do; under events = the {} pushes at 10/s above. CPU in cores (1.0 = one core busy), RSS the largest sampled every 100 ms:\n", args.bins.queue_server, args.pushes);
        println!("| process | idle RSS | idle CPU | under events RSS | under events CPU |");
        println!("|---|---|---|---|---|");
        for (i, name) in [
            "ferry-agent",
            "ferry worker",
            args.bins.queue_server.as_str(),
        ]
        .iter()
        .enumerate()
        {
            println!(
                "| {name} | {:.1} MiB | {:.3} | {:.1} MiB | {:.3} |",
                idle[i].rss_max_mib, idle[i].cpu_cores, busy[i].rss_max_mib, busy[i].cpu_cores
            );
        }
    }
    Ok(())
}
