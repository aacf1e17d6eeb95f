//! The sustained storm (issue 12): `--rate-per-min R` image pushes a minute for `--storm-minutes M`
//! minutes through the region of `rig.rs`, optionally with the destination registry down (killed,
//! then restarted on the same port and storage) for the first `--dest-down-secs S` seconds.
//!
//! What it measures, printed, never asserted:
//! - **Lag** per push: from the source's manifest `PUT` returning to this program, to the
//!   destination registry *finishing* the `PUT` of that tag's manifest, as the destination's own
//!   log says (`response completed` lines, nanosecond timestamps; the registry runs at log level
//!   `info`). Both clocks are this machine's wall clock. Nothing polls the destination, so the
//!   measurement adds no load beyond the registry writing its log. Per minute of push time and
//!   overall: p50/p99/max, and the pushes not replicated when the run ends.
//! - **Queue** every 2 s from Redis (`JobQueue::stats`): depth (waiting + delayed), in flight,
//!   delayed, dead letters; Redis `used_memory`; the agent's and worker's RSS; the load average.
//! - **Memory** of every process (VmRSS and VmHWM from `/proc`) after the warm-up and at the end;
//!   Redis `used_memory`, its key count by family and the execution history's size at the end.
//! - With the destination down: **drain time**, from the restarted destination answering to the
//!   last push made while it was down being replicated, and the lag of pushes made after.
//! - At the end every pushed tag is checked on the destination with a `HEAD` (its digest must be
//!   the one pushed): the independent count of what did not arrive.
//!
//! Pushes are open-loop: push `i` starts at `i × 60/R` s (at most [`PUSHERS`] at once, so a slow
//! source shows up as a lower achieved rate, which is printed). Push `i` goes to repository
//! `storm/r{i mod --repos}` (default 50), tag `s{i}`, as one unique image: a `--layer-kib` (default
//! 1) layer and a config, both derived from `i`.
use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::store::queue::{JobQueue, RedisQueue};
use ferry_testkit::access_log::completed_requests;
use ferry_testkit::RegistryOptions;
use tokio::sync::Semaphore;

use crate::rig::{percentile, push_image, status_mib, Binaries, Region};

/// Pushes in flight at once at most.
const PUSHERS: usize = 64;
/// How often the queue, Redis memory and RSS are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Warm-up pushes (paced at 10/s, fully replicated) before the "start" memory readings.
const WARMUP: usize = 20;

/// The storm's flags.
pub struct StormArgs {
    pub minutes: u64,
    pub rate_per_min: u64,
    /// The destination is down for the first this many seconds of the storm (0: up throughout).
    pub dest_down_secs: u64,
    pub repos: usize,
    pub layer_kib: usize,
    /// The worker's `--concurrency`.
    pub concurrency: usize,
    /// The worker's `--history-max-executions`.
    pub history_max_executions: usize,
    /// How long after the last push to wait for every push to be replicated.
    pub drain_timeout_secs: u64,
}

impl Default for StormArgs {
    fn default() -> Self {
        StormArgs {
            minutes: 0,
            rate_per_min: 1000,
            dest_down_secs: 0,
            repos: 50,
            layer_kib: 1,
            concurrency: 4,
            history_max_executions: 2000,
            drain_timeout_secs: 600,
        }
    }
}

impl StormArgs {
    /// Takes `flag` (reading its value with `value`) if it is a storm flag; `false` otherwise.
    pub fn parse_flag(
        &mut self,
        flag: &str,
        value: &mut dyn FnMut(&str) -> Result<String>,
    ) -> Result<bool> {
        let n = |v: String| -> Result<u64> { v.parse().with_context(|| format!("{flag} {v:?}")) };
        match flag {
            "--storm-minutes" => self.minutes = n(value("MINUTES")?)?,
            "--rate-per-min" => self.rate_per_min = n(value("PUSHES")?)?.max(1),
            "--dest-down-secs" => self.dest_down_secs = n(value("SECONDS")?)?,
            "--repos" => self.repos = n(value("N")?)?.max(1) as usize,
            "--layer-kib" => self.layer_kib = n(value("KIB")?)?.max(1) as usize,
            "--concurrency" => self.concurrency = n(value("N")?)?.max(1) as usize,
            "--history-max-executions" => self.history_max_executions = n(value("N")?)? as usize,
            "--drain-timeout-secs" => self.drain_timeout_secs = n(value("SECONDS")?)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// One acknowledged push.
struct Pushed {
    index: usize,
    repo: String,
    tag: String,
    digest: String,
    /// When the source's manifest PUT returned (wall clock).
    acked: DateTime<Utc>,
}

/// One sample of the queue, Redis and the daemons, every [`SAMPLE_EVERY`].
#[derive(Clone, Default)]
struct Sample {
    at_secs: f64,
    depth: u64,
    in_flight: u64,
    delayed: u64,
    dead: u64,
    redis_used: u64,
    agent_rss: f64,
    worker_rss: f64,
    load1: f64,
}

/// Reads the destination registry's log as it grows and keeps, per `repository:tag`, when the
/// registry first finished a successful `PUT` of its manifest.
struct DestLog {
    path: PathBuf,
    offset: u64,
    partial: String,
    first_put: HashMap<(String, String), DateTime<Utc>>,
}

impl DestLog {
    fn new(path: PathBuf) -> Self {
        DestLog {
            path,
            offset: 0,
            partial: String::new(),
            first_put: HashMap::new(),
        }
    }

    /// Reads what was appended since the last call (the registry appends across restarts).
    fn poll(&mut self) -> Result<()> {
        let mut f = std::fs::File::open(&self.path)
            .with_context(|| format!("open {}", self.path.display()))?;
        f.seek(std::io::SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        // Keep the last, unfinished line for the next call.
        let complete = match self.partial.rfind('\n') {
            Some(i) => self.partial.drain(..=i).collect::<String>(),
            None => return Ok(()),
        };
        for r in completed_requests(&complete) {
            if r.method != "PUT" || !(200..300).contains(&r.status) {
                continue;
            }
            if let Some((repo, reference)) = r.manifest() {
                self.first_put
                    .entry((repo.to_string(), reference.to_string()))
                    .or_insert(r.at);
            }
        }
        Ok(())
    }

    fn replicated_at(&self, p: &Pushed) -> Option<DateTime<Utc>> {
        self.first_put
            .get(&(p.repo.clone(), p.tag.clone()))
            .copied()
    }

    /// Lag of `p` in ms (None while not replicated).
    fn lag_ms(&self, p: &Pushed) -> Option<i64> {
        self.replicated_at(p)
            .map(|at| (at - p.acked).num_microseconds().unwrap_or(i64::MAX) / 1000)
    }
}

fn repo_of(i: usize, repos: usize) -> String {
    format!("storm/r{:02}", i % repos)
}

async fn redis_info(con: &mut redis::aio::MultiplexedConnection, field: &str) -> Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(con).await?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("INFO memory has no {field}"))
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The processes whose memory is reported: (name, pid).
fn processes(region: &Region, worker_pid: u32) -> Vec<(&'static str, u32)> {
    vec![
        ("ferry-agent", region.agent.pid()),
        ("ferry worker", worker_pid),
        ("queue server", region.redis.pid().unwrap_or(0)),
        ("source docker-registry", region.src.pid().unwrap_or(0)),
        ("destination docker-registry", region.dst.pid().unwrap_or(0)),
    ]
}

/// (VmRSS, VmHWM) in MiB per process.
fn memory(procs: &[(&'static str, u32)]) -> Vec<(f64, f64)> {
    procs
        .iter()
        .map(|(_, pid)| (status_mib(*pid, "VmRSS:"), status_mib(*pid, "VmHWM:")))
        .collect()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub async fn run(bins: &Binaries, args: &StormArgs, dir: &Path) -> Result<()> {
    let http = reqwest::Client::new();
    let mut region = Region::start(
        bins,
        dir,
        RegistryOptions {
            log_level: "info",
            ..Default::default()
        },
    )
    .await?;
    let history = args.history_max_executions.to_string();
    let worker = region
        .start_worker(
            args.concurrency,
            &["--history-max-executions", history.as_str()],
        )
        .await?;
    let (src, redis_url) = (region.src.url(), region.redis.url());
    let mut dest_log = DestLog::new(region.dst.log_path());
    let queue = RedisQueue::connect(&redis_url, "ferry", RetryPolicy::default()).await?;
    let mut con = redis::Client::open(redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let layer_len = args.layer_kib * 1024;

    // Warm-up: a few pushes replicated end to end, so the "start" memory is a running daemon's.
    eprintln!("warm-up: {WARMUP} pushes...");
    let mut warm = Vec::new();
    for i in 0..WARMUP {
        let (repo, tag) = (repo_of(i, args.repos), format!("w{i}"));
        let digest = push_image(&http, &src, &repo, &tag, 1 << 40 | i as u64, layer_len).await?;
        warm.push(Pushed {
            index: i,
            repo,
            tag,
            digest,
            acked: Utc::now(),
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        dest_log.poll()?;
        if warm.iter().all(|p| dest_log.replicated_at(p).is_some()) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the warm-up pushes were not replicated within 60 s (see the logs in {})",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let procs_start = processes(&region, worker.pid());
    let mem_start = memory(&procs_start);
    let redis_start = redis_info(&mut con, "used_memory").await?;

    let total = (args.minutes * args.rate_per_min) as usize;
    let interval = Duration::from_secs_f64(60.0 / args.rate_per_min as f64);
    if args.dest_down_secs > 0 {
        eprintln!("destination down for {} s", args.dest_down_secs);
        region.dst.kill().await;
    }
    eprintln!(
        "storm: {total} pushes over {} min ({} a minute) into {} repositories...",
        args.minutes, args.rate_per_min, args.repos
    );
    let start = Instant::now();
    let pushed: Arc<Mutex<Vec<Pushed>>> = Arc::default();
    let push_errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let pusher = {
        let (http, src, pushed, push_errors, repos) = (
            http.clone(),
            src.clone(),
            pushed.clone(),
            push_errors.clone(),
            args.repos,
        );
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(PUSHERS));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..total {
                tokio::time::sleep_until((start + interval * i as u32).into()).await;
                let permit = slots.clone().acquire_owned().await?;
                let (http, src, pushed, push_errors) = (
                    http.clone(),
                    src.clone(),
                    pushed.clone(),
                    push_errors.clone(),
                );
                tasks.spawn(async move {
                    let _permit = permit;
                    let (repo, tag) = (repo_of(i, repos), format!("s{i}"));
                    match push_image(&http, &src, &repo, &tag, i as u64, layer_len).await {
                        Ok(digest) => pushed.lock().expect("pushed").push(Pushed {
                            index: i,
                            repo,
                            tag,
                            digest,
                            acked: Utc::now(),
                        }),
                        Err(e) => push_errors
                            .lock()
                            .expect("errors")
                            .push(format!("{repo}:{tag}: {e:#}")),
                    }
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
            anyhow::Ok(start.elapsed())
        })
    };
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampler = {
        let (samples, agent_pid, worker_pid) = (samples.clone(), region.agent.pid(), worker.pid());
        let mut con = con.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                let Ok(stats) = queue.stats().await else {
                    continue;
                };
                let sample = Sample {
                    at_secs: start.elapsed().as_secs_f64(),
                    depth: stats.depth,
                    in_flight: stats.in_flight,
                    delayed: stats.delayed,
                    dead: stats.dead_letters,
                    redis_used: redis_info(&mut con, "used_memory").await.unwrap_or(0),
                    agent_rss: status_mib(agent_pid, "VmRSS:"),
                    worker_rss: status_mib(worker_pid, "VmRSS:"),
                    load1: load_average(),
                };
                samples.lock().expect("samples").push(sample);
            }
        })
    };

    // The destination comes back after `dest_down_secs`.
    let mut returned: Option<(f64, DateTime<Utc>)> = None;
    if args.dest_down_secs > 0 {
        tokio::time::sleep_until((start + Duration::from_secs(args.dest_down_secs)).into()).await;
        region.dst.restart().await?;
        returned = Some((start.elapsed().as_secs_f64(), Utc::now()));
        eprintln!(
            "destination back after {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
    let push_secs = pusher.await??.as_secs_f64();
    eprintln!("pushes done after {push_secs:.1} s; waiting for the last replications...");

    // Wait until every acknowledged push is on the destination (or the drain timeout).
    let deadline = Instant::now() + Duration::from_secs(args.drain_timeout_secs);
    let waiting = loop {
        dest_log.poll()?;
        let waiting = {
            let pushed = pushed.lock().expect("pushed");
            pushed
                .iter()
                .filter(|p| dest_log.replicated_at(p).is_none())
                .count()
        };
        if waiting == 0 || Instant::now() > deadline {
            break waiting;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let all_done_secs = start.elapsed().as_secs_f64();
    // A few more samples with the queue empty, then the end readings.
    tokio::time::sleep(Duration::from_secs(5)).await;
    sampler.abort();
    let procs_end = processes(&region, worker.pid());
    let mem_end = memory(&procs_end);
    let redis_end = redis_info(&mut con, "used_memory").await?;
    let keys = key_families(&mut con).await?;
    let execs: u64 = redis::cmd("ZCARD")
        .arg("ferry:execs")
        .query_async(&mut con)
        .await?;
    let aof = dir_size(&region.redis.data_dir().join("appendonlydir"));

    let mut pushed = std::mem::take(&mut *pushed.lock().expect("pushed"));
    pushed.sort_by_key(|p| p.index);
    eprintln!(
        "checking all {} tags on the destination with HEAD...",
        pushed.len()
    );
    let missing = check_destination(&http, &region.dst.url(), &pushed).await;
    let samples = std::mem::take(&mut *samples.lock().expect("samples"));
    let push_errors = std::mem::take(&mut *push_errors.lock().expect("errors"));

    // ---- report ----
    let minutes = args.minutes as usize;
    println!("## bench-events storm results\n");
    println!(
        "{} pushes asked over {} min ({} a minute) into {} repositories, one unique image each ({} KiB layer + config); worker concurrency {}, history kept to {} executions, queue `{}` with AOF; {}.\n",
        total, args.minutes, args.rate_per_min, args.repos, args.layer_kib, args.concurrency,
        args.history_max_executions, bins.queue_server,
        match args.dest_down_secs {
            0 => "destination up throughout".to_string(),
            s => format!("destination down for the first {s} s"),
        }
    );
    println!(
        "Pushed: {} acknowledged, {} failed; achieved {:.0} pushes/min (last push acknowledged after {push_secs:.1} s).",
        pushed.len(),
        push_errors.len(),
        pushed.len() as f64 / (push_secs / 60.0)
    );
    for e in push_errors.iter().take(5) {
        println!("  push failed: {e}");
    }
    println!(
        "Not replicated at the end (destination log, {} s after the last push): **{waiting}**; by HEAD on the destination (missing or another digest): **{}**.\n",
        args.drain_timeout_secs,
        missing.len()
    );
    for m in missing.iter().take(5) {
        println!("  not on the destination: {m}");
    }
    println!("Lag = source manifest PUT returned → destination finished the tag's manifest PUT (its log). Per minute of the storm (pushes by the minute they were scheduled in); queue and memory columns are the samples (every {} s) taken in that minute, the memory ones its last sample; `after` = the samples once the storm's pushes were over:\n", SAMPLE_EVERY.as_secs());
    println!("| minute | pushes | lag p50 | p99 | max | not replicated | queue depth max | in flight max | delayed max | Redis used_memory | agent RSS | worker RSS | load avg (1 min) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut all = Vec::new();
    // Pushes by the minute they were scheduled in; samples by when they were taken. The last row
    // holds the samples after the storm's last minute (the queue draining), with no pushes.
    for m in 0..=minutes {
        let last_row = m == minutes;
        let in_minute = |at: f64| at >= m as f64 * 60.0 && (last_row || at < (m + 1) as f64 * 60.0);
        let these: Vec<&Pushed> = pushed
            .iter()
            .filter(|p| p.index / args.rate_per_min as usize == m)
            .collect();
        let s: Vec<&Sample> = samples.iter().filter(|s| in_minute(s.at_secs)).collect();
        if last_row && s.is_empty() && these.is_empty() {
            break;
        }
        let mut lags: Vec<i64> = these.iter().filter_map(|p| dest_log.lag_ms(p)).collect();
        lags.sort_unstable();
        all.extend_from_slice(&lags);
        let max = |f: fn(&Sample) -> u64| s.iter().map(|x| f(x)).max().unwrap_or(0);
        let last = s.last().copied().cloned().unwrap_or_default();
        let (lag_cells, label) = if these.is_empty() {
            ("– | – | –".to_string(), "after".to_string())
        } else {
            (
                format!(
                    "{} ms | {} ms | {} ms",
                    percentile(&lags, 0.5),
                    percentile(&lags, 0.99),
                    lags.last().copied().unwrap_or(0)
                ),
                (m + 1).to_string(),
            )
        };
        println!(
            "| {label} | {} | {lag_cells} | {} | {} | {} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} |",
            these.len(),
            these.len() - lags.len(),
            max(|x| x.depth),
            max(|x| x.in_flight),
            max(|x| x.delayed),
            mib(last.redis_used),
            last.agent_rss,
            last.worker_rss,
            last.load1
        );
    }
    all.sort_unstable();
    println!(
        "\nOverall lag: p50 {} ms, p99 {} ms, max {} ms over {} replicated pushes.",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(0),
        all.len()
    );
    let loads: Vec<f64> = samples.iter().map(|s| s.load1).collect();
    println!(
        "Load average (1 min) during the run: {:.2}–{:.2}; dead letters at the end: {}.",
        loads.iter().copied().fold(f64::INFINITY, f64::min),
        loads.iter().copied().fold(0.0, f64::max),
        samples.last().map_or(0, |s| s.dead)
    );
    if let Some((back_secs, back_at)) = returned {
        let during: Vec<&Pushed> = pushed.iter().filter(|p| p.acked < back_at).collect();
        let last = during
            .iter()
            .filter_map(|p| dest_log.replicated_at(p))
            .max();
        let drained = during.iter().all(|p| dest_log.replicated_at(p).is_some());
        let mut after: Vec<i64> = pushed
            .iter()
            .filter(|p| p.acked >= back_at)
            .filter_map(|p| dest_log.lag_ms(p))
            .collect();
        after.sort_unstable();
        match last {
            Some(last) if drained => println!(
                "\nDestination back {back_secs:.1} s into the storm; the {} pushes made while it was down were all on it **{:.1} s** after it returned (drain time).",
                during.len(),
                (last - back_at).num_milliseconds() as f64 / 1000.0
            ),
            _ => println!(
                "\nDestination back {back_secs:.1} s into the storm; of the {} pushes made while it was down, {} never arrived.",
                during.len(),
                during.iter().filter(|p| dest_log.replicated_at(p).is_none()).count()
            ),
        }
        // The backlog is gone once the queue holds no more than 2 s of pushes again.
        let level = (args.rate_per_min / 30).max(1);
        match samples
            .iter()
            .find(|s| s.at_secs > back_secs && s.depth <= level)
        {
            Some(s) => println!(
                "Queue depth back under {level} (2 s of pushes) **{:.0} s** after it returned (sampled every {} s).",
                s.at_secs - back_secs,
                SAMPLE_EVERY.as_secs()
            ),
            None => println!("Queue depth never came back under {level} (2 s of pushes) in the run."),
        }
        println!(
            "Pushes made after it returned: lag p50 {} ms, p99 {} ms, max {} ms ({} pushes).",
            percentile(&after, 0.5),
            percentile(&after, 0.99),
            after.last().copied().unwrap_or(0),
            after.len()
        );
    }
    println!("\nMemory after the warm-up ({WARMUP} pushes) and at the end ({:.0} s after the storm started, every push settled):\n", all_done_secs + 5.0);
    println!("| process | VmRSS start | VmRSS end | VmHWM start | VmHWM end |");
    println!("|---|---|---|---|---|");
    for (i, (name, pid)) in procs_end.iter().enumerate() {
        let restarted = if *pid != procs_start[i].1 {
            " (restarted in the run)"
        } else {
            ""
        };
        println!(
            "| {name}{restarted} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            mem_start[i].0, mem_end[i].0, mem_start[i].1, mem_end[i].1
        );
    }
    println!(
        "\nRedis used_memory: {:.1} MiB after the warm-up, {:.1} MiB at the end; AOF {:.1} MiB; {execs} executions in the history (kept: {}).",
        mib(redis_start),
        mib(redis_end),
        mib(aof),
        args.history_max_executions
    );
    println!("Keys at the end by family: {keys}");
    Ok(())
}

/// The keys under `ferry:` counted by family (`ferry:exec:*:tasks` → `exec:*:tasks`).
async fn key_families(con: &mut redis::aio::MultiplexedConnection) -> Result<String> {
    let mut cursor: u64 = 0;
    let mut families: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("ferry:*")
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await?;
        for k in keys {
            let parts: Vec<&str> = k.split(':').collect();
            let family = match parts.as_slice() {
                [_, "exec", _, rest @ ..] => format!(
                    "exec:*{}",
                    rest.iter().map(|r| format!(":{r}")).collect::<String>()
                ),
                [_, first, ..] if parts.len() > 2 => format!("{first}:*"),
                [_, first] => first.to_string(),
                _ => k.clone(),
            };
            *families.entry(family).or_default() += 1;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(families
        .iter()
        .map(|(f, n)| format!("`{f}` {n}"))
        .collect::<Vec<_>>()
        .join(", "))
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `repo:tag` of every push the destination does not hold with the pushed digest (`HEAD`, 8 at
/// once).
async fn check_destination(http: &reqwest::Client, dst: &str, pushed: &[Pushed]) -> Vec<String> {
    use futures_util::StreamExt as _;
    futures_util::stream::iter(pushed)
        .map(|p| async move {
            let r = http
                .head(format!("{dst}/v2/{}/manifests/{}", p.repo, p.tag))
                .header("accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .await;
            let found = r.ok().and_then(|r| {
                r.status()
                    .is_success()
                    .then(|| {
                        r.headers()
                            .get("docker-content-digest")?
                            .to_str()
                            .ok()
                            .map(str::to_owned)
                    })
                    .flatten()
            });
            (found.as_deref() != Some(p.digest.as_str())).then(|| format!("{}:{}", p.repo, p.tag))
        })
        .buffer_unordered(8)
        .filter_map(|x| async move { x })
        .collect()
        .await
}
