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
//! Usage: `cargo build --release --workspace && cargo run --release -p ferry-replicator --example
//! bench-events [-- --pushes N] [--bin-dir target/release] [--queue-server redis-server]`
//! (the queue is `valkey-server` by default, with AOF on).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::event::EventKind;
use ferry_replicator::store::queue::{Job, JobQueue, RedisQueue};
use ferry_testkit::{RedisServer, Registry, RegistryOptions};
use serde_json::json;
use sha2::{Digest as _, Sha256};

const TOKEN: &str = "bench-token";
const REPO: &str = "bench/lag";

struct Args {
    pushes: usize,
    bin_dir: PathBuf,
    queue_server: String,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        pushes: 200,
        bin_dir: PathBuf::from("target/release"),
        queue_server: "valkey-server".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--pushes" => a.pushes = it.next().context("--pushes N")?.parse()?,
            "--bin-dir" => a.bin_dir = it.next().context("--bin-dir DIR")?.into(),
            "--queue-server" => a.queue_server = it.next().context("--queue-server BINARY")?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    for b in ["ferry", "ferry-agent"] {
        anyhow::ensure!(
            a.bin_dir.join(b).exists(),
            "{} missing: cargo build --release --workspace",
            a.bin_dir.join(b).display()
        );
    }
    Ok(a)
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Uploads a blob monolithically (POST, then PUT with the bytes).
async fn put_blob(http: &reqwest::Client, base: &str, bytes: Vec<u8>) -> Result<String> {
    let d = digest(&bytes);
    let r = http
        .post(format!("{base}/v2/{REPO}/blobs/uploads/"))
        .send()
        .await?;
    let loc = r
        .headers()
        .get("location")
        .context("no Location")?
        .to_str()?
        .to_string();
    let url = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = http
        .put(format!("{url}{sep}digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "blob upload: {}", r.status());
    Ok(d)
}

/// Pushes a small unique image (one 32 KiB layer) as `REPO:tag`; returns when the manifest PUT
/// returned.
async fn push_image(http: &reqwest::Client, base: &str, seed: u64, tag: &str) -> Result<()> {
    let mut layer = vec![0u8; 32 * 1024];
    for (i, b) in layer.iter_mut().enumerate() {
        *b = (seed.wrapping_mul(2654435761).wrapping_add(i as u64 * 31) >> 3) as u8;
    }
    layer[..8].copy_from_slice(&seed.to_le_bytes());
    let layer_len = layer.len();
    let layer_d = put_blob(http, base, layer).await?;
    let config = serde_json::to_vec(
        &json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer_d]}}),
    )?;
    let config_len = config.len();
    let config_d = put_blob(http, base, config).await?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config_len},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d, "size": layer_len}]
    }))?;
    let r = http
        .put(format!("{base}/v2/{REPO}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "manifest PUT: {}", r.status());
    Ok(())
}

/// A child process that is killed when dropped.
struct Proc {
    child: tokio::process::Child,
    name: &'static str,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, bin: &Path, args: &[&str], dir: &Path) -> Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let child = tokio::process::Command::new(bin)
            .args(args)
            .env("FERRY_WEBHOOK_TOKEN", TOKEN)
            .env("FERRY_LOG", "info")
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        Ok(Proc { child, name, log })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    fn rss_mib(&self) -> f64 {
        status_kib(self.pid(), "VmRSS:") as f64 / 1024.0
    }

    fn peak_mib(&self) -> f64 {
        status_kib(self.pid(), "VmHWM:") as f64 / 1024.0
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// A field of `/proc/PID/status` in KiB (0 once the process is gone).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

/// User + system CPU time of the whole process (all threads), from `/proc/PID/stat` (fields 14
/// and 15, in USER_HZ = 100 ticks per second on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces: count from the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
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
    let cpu_before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let mut rss_max = vec![0.0f64; pids.len()];
    let sample = |rss_max: &mut Vec<f64>| {
        for (max, pid) in rss_max.iter_mut().zip(pids) {
            *max = max.max(status_kib(*pid, "VmRSS:") as f64 / 1024.0);
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
            cpu_cores: (cpu_seconds(*pid) - before) / wall,
            rss_max_mib,
        })
        .collect();
    Ok((out, usage))
}

async fn wait_healthy(http: &reqwest::Client, url: &str, p: &Proc) -> Result<()> {
    for _ in 0..200 {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} did not become healthy: {}",
        p.name,
        std::fs::read_to_string(&p.log).unwrap_or_default()
    )
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
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
                push_image(&http, &src, (round * 100_000 + i) as u64, &tag).await?;
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
    // Kept on failure (process logs are in it); removed after a successful run.
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench-events-")
        .tempdir()?;
    eprintln!("working directory (logs): {}", dir.path().display());
    let result = run(&args, dir.path()).await;
    if result.is_ok() {
        dir.close()?;
    } else {
        let _ = dir.keep();
    }
    result
}

async fn run(args: &Args, dir: &Path) -> Result<()> {
    let http = reqwest::Client::new();
    let redis = RedisServer::start_binary(&args.queue_server, true).await?;
    let agent_port = free_port()?;
    let agent_addr = format!("127.0.0.1:{agent_port}");
    let src = Registry::start_with(RegistryOptions {
        notifications_url: Some(format!(
            "http://{agent_addr}/v1/events/distribution?registry=src"
        )),
        notifications_token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await?;
    let dst = Registry::start().await?;
    let cfg = dir.join("ferry.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec(&json!({
            "registries": [{"name": "src", "url": src.url(), "insecure": true}, {"name": "dst", "url": dst.url(), "insecure": true}],
            "policies": [{"name": "bench", "src_registry": {"name": "src"}, "dest_registry": {"name": "dst"}, "trigger": {"type": "event_based"}}]
        }))?,
    )?;
    let cfg_s = cfg.to_str().context("utf8")?;
    let agent = Proc::spawn(
        "agent",
        &args.bin_dir.join("ferry-agent"),
        &[
            "--config",
            cfg_s,
            "--redis",
            &redis.url(),
            "--listen",
            &agent_addr,
            "--reconcile-interval",
            "0",
        ],
        dir,
    )?;
    wait_healthy(&http, &format!("http://{agent_addr}/healthz"), &agent).await?;

    let mut rows = Vec::new();
    let mut noop: Vec<(usize, usize, f64)> = Vec::new();
    let mut worker_rest = 0.0;
    let mut worker_peak: f64 = 0.0;
    // (idle, under events) for agent, worker, queue server; from the concurrency-4 round.
    let mut footprint: Option<(Vec<Usage>, Vec<Usage>)> = None;
    for (round, concurrency) in [(1usize, 1usize), (2, 4), (3, 16)] {
        let wport = free_port()?;
        let worker = Proc::spawn(
            "worker",
            &args.bin_dir.join("ferry"),
            &[
                "worker",
                "--config",
                cfg_s,
                "--redis",
                &redis.url(),
                "--concurrency",
                &concurrency.to_string(),
                "--listen",
                &format!("127.0.0.1:{wport}"),
            ],
            dir,
        )?;
        wait_healthy(&http, &format!("http://127.0.0.1:{wport}/healthz"), &worker).await?;
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
    agent.stop().await;

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
        println!("\nFootprint (worker concurrency 4, queue {}): idle = 10 s with nothing to do; under events = the {} pushes at 10/s above. CPU in cores (1.0 = one core busy), RSS the largest sampled every 100 ms:\n", args.queue_server, args.pushes);
        println!("| process | idle RSS | idle CPU | under events RSS | under events CPU |");
        println!("|---|---|---|---|---|");
        for (i, name) in ["ferry-agent", "ferry worker", args.queue_server.as_str()]
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
