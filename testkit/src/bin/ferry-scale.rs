//! `ferry-scale`: how Ferry's cost grows with the number of tags (issue "Performance at scale").
//!
//! For each point (default 1 000, 10 000 and 100 000 tags, 100 tags per repository) it seeds two
//! real `docker-registry` processes with the same catalog of tiny images
//! ([`ferry_testkit::catalog`]: written straight into the source's storage, not pushed, and
//! hard-linked into the destination's) and measures a
//! no-op `ferry sync` and a `ferry diff` between them — wall time, peak RSS, CPU, and the
//! requests both registries served per tag (from their access logs, not from Ferry) — and, at the
//! points given to `--skopeo-at`, `skopeo sync` of the same no-op for comparison. Then the
//! daemons' passes over the same catalog (`--daemons`, on by default): `ferry-agent`'s safety-net
//! pass at start and its tag poller's baseline and steady passes (each with a real `valkey-server`
//! queue, whose `used_memory` is read after the pass), and `ferry serve`'s start-up until
//! `/healthz` answers and until its first safety-net pass is done. Prints figures, never asserts
//! them.
//!
//! Usage: `cargo build --release --workspace && target/release/ferry-scale [--ferry PATH]
//! [--points 1000,10000,100000] [--tags-per-repo 100] [--skopeo-at 1000] [--no-daemons]
//! [--queue-server valkey-server]` (skopeo takes about 0.1 s per tag for a no-op, so 10 000 tags
//! cost it about 15 minutes).
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ferry_testkit::catalog::{repository, seed_catalog};
use ferry_testkit::measure::{run_measured, Measured};
use ferry_testkit::{skopeo, Registry, RegistryOptions};
use serde_json::json;

struct Args {
    ferry: PathBuf,
    points: Vec<usize>,
    tags_per_repo: usize,
    skopeo_at: Vec<usize>,
    daemons: bool,
    queue_server: String,
    /// ocync's binary and the points it runs at (the registries then serve TLS: ocync speaks
    /// HTTPS only).
    ocync: Option<PathBuf>,
    ocync_at: Vec<usize>,
}

fn list(v: &str) -> Result<Vec<usize>> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .with_context(|| format!("{s:?} is not a count"))
        })
        .collect()
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        ferry: PathBuf::from("target/release/ferry"),
        points: vec![1_000, 10_000, 100_000],
        tags_per_repo: 100,
        skopeo_at: vec![1_000],
        daemons: true,
        queue_server: "valkey-server".into(),
        ocync: None,
        ocync_at: vec![10_000],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--ferry" => args.ferry = value()?.into(),
            "--points" => args.points = list(&value()?)?,
            "--tags-per-repo" => args.tags_per_repo = value()?.parse()?,
            "--skopeo-at" => args.skopeo_at = list(&value()?)?,
            "--no-daemons" => args.daemons = false,
            "--queue-server" => args.queue_server = value()?,
            "--ocync" => args.ocync = Some(value()?.into()),
            "--ocync-at" => args.ocync_at = list(&value()?)?,
            "-h" | "--help" => {
                println!("ferry-scale [--ferry PATH] [--points 1000,10000,100000] [--tags-per-repo 100] [--skopeo-at 1000] [--no-daemons] [--queue-server valkey-server] [--ocync PATH [--ocync-at 10000]]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    anyhow::ensure!(args.tags_per_repo > 0, "--tags-per-repo must be at least 1");
    anyhow::ensure!(
        args.ferry.exists(),
        "{} not found: build it with `cargo build --release --workspace`",
        args.ferry.display()
    );
    Ok(args)
}

/// Two registries holding the same seeded catalog, logging every request.
struct Pair {
    src: Registry,
    dst: Registry,
    repos: usize,
    tags: usize,
    dir: tempfile::TempDir,
}

async fn seeded_pair(tags: usize, per_repo: usize, tls: bool) -> Result<Pair> {
    let repos = tags.div_ceil(per_repo);
    let per_repo = tags / repos;
    let opts = || RegistryOptions {
        log_level: "info",
        tls,
        ..RegistryOptions::default()
    };
    let src = Registry::start_with(opts()).await?;
    let dst = Registry::start_with(opts()).await?;
    let started = Instant::now();
    let seeded = seed_catalog(src.data_dir(), repos, per_repo)?;
    // The same files for the destination, as hard links (a registry never rewrites a stored
    // file): seconds instead of writing every file again.
    let status = std::process::Command::new("cp")
        .arg("-al")
        .arg(src.data_dir().join("docker"))
        .arg(dst.data_dir())
        .status()?;
    anyhow::ensure!(
        status.success(),
        "cp -al of the seeded storage failed: {status}"
    );
    eprintln!(
        "seeded {} tags in {} repositories on both registries in {:.1} s",
        seeded.tags,
        repos,
        started.elapsed().as_secs_f64()
    );
    Ok(Pair {
        src,
        dst,
        repos,
        tags: seeded.tags,
        dir: tempfile::tempdir()?,
    })
}

impl Pair {
    /// A config with the one policy `scale` covering the catalog: `manual` for the one-shot
    /// commands, `event_based` for the daemons, the source polled every `poll` seconds if given.
    fn config(&self, file: &str, trigger: &str, poll: Option<u64>) -> Result<PathBuf> {
        let path = self.dir.path().join(file);
        let entry = |name: &str, r: &Registry| {
            let mut e = json!({"name": name, "url": r.url()});
            match r.ca_path() {
                Some(ca) => e["ca_file"] = json!(ca),
                None => e["insecure"] = json!(true),
            }
            e
        };
        let mut src = entry("src", &self.src);
        if let Some(secs) = poll {
            src["poll_interval_seconds"] = json!(secs);
        }
        let cfg = json!({
            "registries": [src, entry("dst", &self.dst)],
            "policies": [{
                "name": "scale", "src_registry": {"name": "src"}, "dest_registry": {"name": "dst"},
                "trigger": {"type": trigger}, "filters": [{"type": "name", "value": "scale/**"}]
            }]
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
        Ok(path)
    }

    /// Requests both registries have logged so far.
    fn requests(&self) -> usize {
        requests(&self.src.log_path()) + requests(&self.dst.log_path())
    }
}

/// Requests in a registry's access log (one line per request at log level `info`).
fn requests(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains("\"HEAD /v2/") || l.contains("\"GET /v2/") || l.contains("\"PUT /v2/")
        })
        .count()
}

/// One measured command: its cost and the requests it caused.
struct Point {
    measured: Measured,
    requests: usize,
}

async fn measure(pair: &Pair, cmd: &mut tokio::process::Command) -> Result<Point> {
    let before = pair.requests();
    let measured = run_measured(cmd).await?;
    Ok(Point {
        measured,
        requests: pair.requests() - before,
    })
}

fn ferry(ferry: &Path, verb: &str, config: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(ferry);
    cmd.args([verb, "--json", "--config"])
        .arg(config)
        .env("FERRY_LOG", "warn");
    cmd
}

/// `skopeo sync` of every seeded repository, as a YAML source (one run, cold blob-info cache).
async fn skopeo_noop(pair: &Pair) -> Result<Point> {
    let yaml = pair.dir.path().join("skopeo.yaml");
    let mut images = String::new();
    for r in 0..pair.repos {
        images.push_str(&format!("      {}: '.*'\n", repository(r)));
    }
    std::fs::write(
        &yaml,
        format!(
            "{}:\n  tls-verify: false\n  images-by-tag-regex:\n{images}",
            pair.src.host()
        ),
    )?;
    let before = pair.requests();
    let started = Instant::now();
    // About 0.1 s per tag: 10 000 tags take a quarter of an hour, more on a loaded machine.
    let timeout = std::time::Duration::from_secs(600 + pair.tags as u64 * 3 / 10);
    skopeo::sync_yaml(&yaml, &pair.dst.host(), timeout).await?;
    Ok(Point {
        measured: Measured {
            secs: started.elapsed().as_secs_f64(),
            peak_rss: 0,
            cpu_secs: 0.0,
        },
        requests: pair.requests() - before,
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn row(what: &str, tags: usize, p: &Point) -> String {
    let rss = if p.measured.peak_rss > 0 {
        format!("{:.1} MiB", mib(p.measured.peak_rss))
    } else {
        "–".into()
    };
    let cpu = if p.measured.cpu_secs > 0.0 {
        format!("{:.2} s", p.measured.cpu_secs)
    } else {
        "–".into()
    };
    format!(
        "| {tags} | {what} | {:.2} s | {:.2} | {rss} | {cpu} |",
        p.measured.secs,
        p.requests as f64 / tags as f64
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    println!("| tags | command | wall | requests per tag (both registries) | peak RSS | CPU |");
    println!("|---|---|---|---|---|---|");
    for &tags in &args.points {
        let pair = seeded_pair(tags, args.tags_per_repo, args.ocync.is_some()).await?;
        let config = pair.config("ferry.json", "manual", None)?;
        let sync = measure(&pair, &mut ferry(&args.ferry, "sync", &config)).await?;
        println!("{}", row("ferry sync (no-op)", pair.tags, &sync));
        let diff = measure(&pair, &mut ferry(&args.ferry, "diff", &config)).await?;
        println!("{}", row("ferry diff", pair.tags, &diff));
        if args.skopeo_at.contains(&tags) {
            let skopeo = skopeo_noop(&pair).await?;
            println!("{}", row("skopeo sync (no-op)", pair.tags, &skopeo));
        }
        if let (Some(ocync), true) = (&args.ocync, args.ocync_at.contains(&tags)) {
            let before = pair.requests();
            let repos: Vec<String> = (0..pair.repos).map(repository).collect();
            let measured = ferry_testkit::ocync::sync(
                ocync,
                pair.dir.path(),
                repos.iter().map(String::as_str),
                &pair.src,
                &pair.dst,
            )
            .await?;
            let point = Point {
                measured,
                requests: pair.requests() - before,
            };
            println!(
                "{}",
                row("ocync sync (no-op, empty cache)", pair.tags, &point)
            );
        }
        if args.daemons {
            daemon_points(&args, &pair).await?;
        }
    }
    Ok(())
}

/// A Ferry daemon under measurement: its `/metrics` scraped until a condition holds.
struct Daemon {
    child: tokio::process::Child,
    pid: u32,
    base: String,
    started: Instant,
    http: reqwest::Client,
}

impl Daemon {
    async fn start(bin: &Path, args: &[&str], config: &Path, log: &Path) -> Result<Daemon> {
        let port = ferry_testkit::free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(log)?;
        let started = Instant::now();
        let child = tokio::process::Command::new(bin)
            .args(args)
            .arg("--config")
            .arg(config)
            .args(["--listen", &listen, "--allow-unauthenticated"])
            .env("FERRY_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Daemon {
            pid: child.id().context("pid")?,
            child,
            base: format!("http://{listen}"),
            started,
            http: reqwest::Client::new(),
        })
    }

    /// The sum of the samples of `name` whose labels include `labels` (`None`: not exported yet).
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text =
            ferry_testkit::metrics::scrape(&self.http, &format!("{}/metrics", self.base)).await?;
        ferry_testkit::metrics::sum(&text, name, labels)
    }

    /// Seconds since start when `ready` first held (checked every 50 ms, up to an hour).
    async fn until(
        &mut self,
        what: &str,
        mut ready: impl AsyncFnMut(&Daemon) -> bool,
    ) -> Result<f64> {
        let deadline = Instant::now() + std::time::Duration::from_secs(3600);
        loop {
            if ready(self).await {
                return Ok(self.started.elapsed().as_secs_f64());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the daemon exited ({status}) before {what}");
            }
            anyhow::ensure!(Instant::now() < deadline, "no {what} within an hour");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Seconds since start when the first safety-net pass over policy `scale` was done (it sets
    /// `ferry_drift_tags`).
    async fn safety_net_passed(&mut self) -> Result<f64> {
        self.until("the safety-net pass", async |d| {
            d.metric("ferry_drift_tags", &[("policy", "scale")])
                .await
                .is_some()
        })
        .await
    }

    fn peak_rss(&self) -> u64 {
        ferry_testkit::measure::peak_rss(self.pid).unwrap_or(0)
    }

    fn cpu(&self) -> f64 {
        ferry_testkit::measure::cpu_seconds(self.pid).unwrap_or(0.0)
    }
}

/// Redis/Valkey `used_memory`, in bytes.
fn used_memory(redis: &ferry_testkit::RedisServer) -> Result<u64> {
    let mut conn = redis::Client::open(redis.url())?.get_connection()?;
    let info: String = redis::cmd("INFO").arg("memory").query(&mut conn)?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no used_memory in INFO memory")
}

/// One daemon figure as a table row: `secs` of wall time, `requests` both registries served.
fn daemon_row(what: &str, tags: usize, secs: f64, requests: usize, d: &Daemon, redis: Option<u64>) {
    let redis = redis.map_or("–".to_string(), |b| format!("{:.1} MiB", mib(b)));
    println!(
        "| {tags} | {what} | {secs:.2} s | {:.2} | {:.1} MiB | {:.2} s | {redis} |",
        requests as f64 / tags as f64,
        mib(d.peak_rss()),
        d.cpu(),
    );
}

/// The agent's safety-net pass, its poller's baseline and steady passes, and `ferry serve`'s
/// start-up, each a fresh process over the same no-op catalog.
async fn daemon_points(args: &Args, pair: &Pair) -> Result<()> {
    let bin = |name: &str| args.ferry.with_file_name(name);
    let tags = pair.tags;
    println!(
        "| tags | daemon pass | wall | requests per tag | peak RSS | CPU | queue used_memory |"
    );
    println!("|---|---|---|---|---|---|---|");

    // Safety net: the agent reconciles at start; the pass is done when it set ferry_drift_tags.
    let redis = ferry_testkit::RedisServer::start_binary(&args.queue_server, true).await?;
    let config = pair.config("agent.json", "event_based", None)?;
    let before = pair.requests();
    let mut agent = Daemon::start(
        &bin("ferry-agent"),
        &["--redis", &redis.url(), "--reconcile-interval", "86400"],
        &config,
        &pair.dir.path().join("agent-reconcile.log"),
    )
    .await?;
    let secs = agent.safety_net_passed().await?;
    let memory = used_memory(&redis)?;
    daemon_row(
        "agent safety-net pass (from start)",
        tags,
        secs,
        pair.requests() - before,
        &agent,
        Some(memory),
    );
    drop(agent);

    // Poller: the first pass records a baseline; the second finds no change.
    let config = pair.config("poller.json", "event_based", Some(1))?;
    let before = pair.requests();
    let mut agent = Daemon::start(
        &bin("ferry-agent"),
        &["--redis", &redis.url(), "--reconcile-interval", "0"],
        &config,
        &pair.dir.path().join("agent-poll.log"),
    )
    .await?;
    let passes = async |d: &Daemon| {
        d.metric("ferry_poll_passes_total", &[("outcome", "ok")])
            .await
            .unwrap_or(0.0)
    };
    let first = agent
        .until("the poller's first pass", async |d| passes(d).await >= 1.0)
        .await?;
    let at_first = pair.requests();
    daemon_row(
        "agent poller baseline pass (from start)",
        tags,
        first,
        at_first - before,
        &agent,
        Some(used_memory(&redis)?),
    );
    let second = agent
        .until("the poller's second pass", async |d| passes(d).await >= 2.0)
        .await?;
    // The second pass began 1 s (the interval) after the first ended.
    daemon_row(
        "agent poller steady pass",
        tags,
        second - first - 1.0,
        pair.requests() - at_first,
        &agent,
        Some(used_memory(&redis)?),
    );
    drop(agent);
    drop(redis);

    // ferry serve (in-process queue): ready, then its first safety-net pass.
    let config = pair.config("serve.json", "event_based", None)?;
    let before = pair.requests();
    let mut serve = Daemon::start(
        &args.ferry,
        &["serve", "--reconcile-interval", "86400"],
        &config,
        &pair.dir.path().join("serve.log"),
    )
    .await?;
    let ready = serve
        .until("/healthz", async |d| {
            d.http
                .get(format!("{}/healthz", d.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await?;
    let ready_requests = pair.requests() - before;
    daemon_row(
        "ferry serve start-up until /healthz",
        tags,
        ready,
        ready_requests,
        &serve,
        None,
    );
    let pass = serve.safety_net_passed().await?;
    daemon_row(
        "ferry serve start-up until its first safety-net pass",
        tags,
        pass,
        pair.requests() - before,
        &serve,
        None,
    );
    Ok(())
}
