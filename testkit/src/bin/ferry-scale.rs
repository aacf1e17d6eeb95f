//! `ferry-scale`: how Ferry's cost grows with the number of tags (issue "Performance at scale").
//!
//! For each point (default 1 000, 10 000 and 100 000 tags, 100 tags per repository) it seeds two
//! real `docker-registry` processes with the same catalog of tiny images
//! ([`ferry_testkit::catalog`]: written straight into the source's storage, not pushed, and
//! hard-linked into the destination's) and measures a
//! no-op `ferry sync` and a `ferry diff` between them — wall time, peak RSS, CPU, and the
//! requests both registries served per tag (from their access logs, not from Ferry) — and, at the
//! points given to `--skopeo-at`, `skopeo sync` of the same no-op for comparison. Prints figures,
//! never asserts them.
//!
//! Usage: `cargo build --release --workspace && target/release/ferry-scale [--ferry PATH]
//! [--points 1000,10000,100000] [--tags-per-repo 100] [--skopeo-at 1000]` (skopeo takes about
//! 0.1 s per tag for a no-op, so 10 000 tags cost it about 15 minutes).
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
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--ferry" => args.ferry = value()?.into(),
            "--points" => args.points = list(&value()?)?,
            "--tags-per-repo" => args.tags_per_repo = value()?.parse()?,
            "--skopeo-at" => args.skopeo_at = list(&value()?)?,
            "-h" | "--help" => {
                println!("ferry-scale [--ferry PATH] [--points 1000,10000,100000] [--tags-per-repo 100] [--skopeo-at 1000]");
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

async fn seeded_pair(tags: usize, per_repo: usize) -> Result<Pair> {
    let repos = tags.div_ceil(per_repo);
    let per_repo = tags / repos;
    let opts = || RegistryOptions {
        log_level: "info",
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
    fn config(&self) -> Result<PathBuf> {
        let path = self.dir.path().join("ferry.json");
        let cfg = json!({
            "registries": [
                {"name": "src", "url": self.src.url(), "insecure": true},
                {"name": "dst", "url": self.dst.url(), "insecure": true}
            ],
            "policies": [{
                "name": "scale", "src_registry": {"name": "src"}, "dest_registry": {"name": "dst"},
                "trigger": {"type": "manual"}, "filters": [{"type": "name", "value": "scale/**"}]
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
    skopeo::sync_yaml(&yaml, &pair.dst.host()).await?;
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
        let pair = seeded_pair(tags, args.tags_per_repo).await?;
        let config = pair.config()?;
        let sync = measure(&pair, &mut ferry(&args.ferry, "sync", &config)).await?;
        println!("{}", row("ferry sync (no-op)", pair.tags, &sync));
        let diff = measure(&pair, &mut ferry(&args.ferry, "diff", &config)).await?;
        println!("{}", row("ferry diff", pair.tags, &diff));
        if args.skopeo_at.contains(&tags) {
            let skopeo = skopeo_noop(&pair).await?;
            println!("{}", row("skopeo sync (no-op)", pair.tags, &skopeo));
        }
    }
    Ok(())
}
