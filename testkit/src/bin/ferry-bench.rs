//! `ferry-bench`: measures `ferry sync` against `skopeo sync` and a raw parallel curl copy, in the
//! same run, on the same machine, between real `docker-registry` processes.
//!
//! Prints figures, never asserts them: (a) a full sync of a generated corpus to an empty
//! destination (ferry vs skopeo vs raw GET→PUT of the unique blobs, the practical limit); (b) a
//! no-op resync (ferry vs skopeo); (c) peak RSS of `ferry sync` copying one 1 GiB layer; (d) the
//! same layer streaming (one `PUT`) vs chunked (resumable `PATCH`es, the default above
//! 256 MiB), each to a fresh registry, several rounds in alternating order: MiB/s of each, their
//! ratio per round, and the CPU time ferry and both registries spent; (e) with `--requests`, the
//! requests a cold sync of a small corpus makes on the destination, by route, for ferry, for
//! ocync when `--ocync PATH` names its binary, and the floor (module `cold`).
//!
//! Usage: `cargo build --release --workspace && target/release/ferry-bench [--ferry PATH]
//! [--quick] [--no-gib] [--only-gib] [--rounds N] [--requests [--ocync PATH] [--baseline FERRY]]`. `--quick` shrinks
//! the corpus and the layer (256 MiB) for a smoke run; `--only-gib` skips (a) and (b); `--rounds`
//! sets (d)'s rounds (default 3); `--chunk-mib` the destination's `chunk_size` there (default 16);
//! `--strace-fsync` traces the destination registry's `fsync` calls during (d) with `strace` (a
//! diagnostic that slows the copies: read its counts and times, not its speeds); `--requests` runs
//! (e) alone (`--baseline` adds another ferry build's column, e.g. the one before a change).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_testkit::measure::{cpu_seconds, run_measured, Measured};
use ferry_testkit::{skopeo, Blob, LayerSpec, LayoutBuilder, Registry};
use serde_json::json;

// (e), in its own file: a crate root's `mod` would look for `src/bin/cold.rs`, which cargo would
// take for another binary.
#[path = "ferry-bench/cold.rs"]
mod cold;

const MIB: u64 = 1024 * 1024;

struct Args {
    ferry: PathBuf,
    quick: bool,
    gib: bool,
    /// Skip (a) and (b).
    only_gib: bool,
    /// Rounds of (d), streaming vs chunked.
    rounds: usize,
    /// Trace the destination registry's `fsync`s during (d) (diagnostic: slows it down).
    strace: bool,
    /// The destination's `chunk_size` in (d), MiB.
    chunk_mib: u64,
    /// Run (e) alone: the requests of a cold sync.
    requests: bool,
    /// ocync's binary, the peer of (e).
    ocync: Option<PathBuf>,
    /// Another ferry binary (e.g. an older build) measured next to `ferry` in (e).
    baseline: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        ferry: PathBuf::from("target/release/ferry"),
        quick: false,
        gib: true,
        only_gib: false,
        rounds: 3,
        strace: false,
        chunk_mib: 16,
        requests: false,
        ocync: None,
        baseline: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ferry" => args.ferry = it.next().context("--ferry needs a path")?.into(),
            "--quick" => args.quick = true,
            "--no-gib" => args.gib = false,
            "--only-gib" => args.only_gib = true,
            "--strace-fsync" => args.strace = true,
            "--requests" => args.requests = true,
            "--ocync" => args.ocync = Some(it.next().context("--ocync needs a path")?.into()),
            "--baseline" => {
                args.baseline = Some(it.next().context("--baseline needs a path")?.into())
            }
            "--chunk-mib" => {
                args.chunk_mib = it
                    .next()
                    .context("--chunk-mib needs a number")?
                    .parse::<u64>()
                    .context("--chunk-mib needs a number")?
                    .max(1)
            }
            "--rounds" => {
                args.rounds = it
                    .next()
                    .context("--rounds needs a number")?
                    .parse::<usize>()
                    .context("--rounds needs a number")?
                    .max(1)
            }
            "-h" | "--help" => {
                println!(
                    "ferry-bench [--ferry PATH] [--quick] [--no-gib] [--only-gib] [--rounds N] [--chunk-mib N] [--strace-fsync] [--requests [--ocync PATH] [--baseline FERRY]]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    anyhow::ensure!(
        args.ferry.exists(),
        "{} not found: build it with `cargo build --release --workspace`",
        args.ferry.display()
    );
    for o in args.ocync.iter().chain(&args.baseline) {
        anyhow::ensure!(o.exists(), "{} not found", o.display());
    }
    Ok(args)
}

/// One pushed tag and what its graph needs.
struct Pushed {
    layout_ref: String,
    repo: String,
    tag: String,
    /// Every blob of the graph (an index's: its children's layers and configs), each once.
    blobs: Vec<Blob>,
    /// The child manifests of an index (pushed by digest before it), none for an image.
    children: Vec<Blob>,
}

struct Corpus {
    layout: PathBuf,
    pushed: Vec<Pushed>,
}

/// What a corpus holds: `repos` repositories of `tags` tags each, sharing 3 base layers; `big`
/// repositories of one tag with a layer of `big_size` of their own; one two-platform index.
#[derive(Clone, Copy)]
struct Shape {
    repos: usize,
    tags: usize,
    big: usize,
    big_size: u64,
}

impl Shape {
    /// (a) and (b): 34 repositories, 94 tags, three 120 MiB layers.
    const FULL: Shape = Shape {
        repos: 30,
        tags: 3,
        big: 3,
        big_size: 120 * MIB,
    };
    /// `--quick`.
    const QUICK: Shape = Shape {
        repos: 6,
        tags: 2,
        big: 1,
        big_size: 120 * MIB,
    };
    /// (e): 11 repositories, 16 tags; the sizes do not change the requests (all below the chunk
    /// threshold), so the "big" layers are small.
    const COLD: Shape = Shape {
        repos: 5,
        tags: 2,
        big: 5,
        big_size: 2 * MIB,
    };
}

fn build_corpus(dir: &Path, shape: Shape) -> Result<Corpus> {
    let mut b = LayoutBuilder::new(dir)?;
    let Shape {
        repos,
        tags,
        big,
        big_size,
    } = shape;
    let bases = [
        LayerSpec {
            seed: 1,
            size: 24 * MIB,
        },
        LayerSpec {
            seed: 2,
            size: 12 * MIB,
        },
        LayerSpec {
            seed: 3,
            size: 6 * MIB,
        },
    ];
    let base_blobs: Vec<Blob> = bases.iter().map(|s| b.layer(s)).collect::<Result<_>>()?;
    let mut pushed = Vec::new();
    let mut seed = 100;
    let mut image = |b: &mut LayoutBuilder,
                     name: String,
                     repo: String,
                     tag: String,
                     layers: Vec<LayerSpec>|
     -> Result<()> {
        let m = b.image(&name, &layers)?;
        let mut blobs: Vec<Blob> = layers.iter().map(|l| b.layer(l)).collect::<Result<_>>()?;
        blobs.push(config_of(b, &m)?);
        pushed.push(Pushed {
            layout_ref: name,
            repo,
            tag,
            blobs,
            children: Vec::new(),
        });
        Ok(())
    };
    for r in 0..repos {
        for t in 0..tags {
            seed += 1;
            let app = LayerSpec {
                seed,
                size: MIB + (seed % 4) * 700 * 1024,
            };
            image(
                &mut b,
                format!("svc-{r:02}-{t}"),
                format!("bench/svc-{r:02}"),
                format!("v1.{t}"),
                vec![bases[r % 3], app],
            )?;
        }
    }
    for i in 0..big {
        seed += 1;
        image(
            &mut b,
            format!("big-{i}"),
            format!("bench/big-{i}"),
            "v1".into(),
            vec![
                bases[0],
                LayerSpec {
                    seed,
                    size: big_size,
                },
            ],
        )?;
    }
    let amd = b.image_for_platform(
        "linux",
        "amd64",
        None,
        &[
            bases[1],
            LayerSpec {
                seed: 900,
                size: 3 * MIB,
            },
        ],
    )?;
    let arm = b.image_for_platform(
        "linux",
        "arm64",
        Some("v8"),
        &[LayerSpec {
            seed: 901,
            size: 3 * MIB,
        }],
    )?;
    b.index(
        "multi",
        &[
            (amd.clone(), "linux", "amd64", None),
            (arm.clone(), "linux", "arm64", Some("v8")),
        ],
    )?;
    // The index's blobs are copied by every tool: its children's layers and configs.
    let mut multi_blobs = vec![
        config_of(&b, &amd)?,
        config_of(&b, &arm)?,
        base_blobs[1].clone(),
        b.layer(&LayerSpec {
            seed: 900,
            size: 3 * MIB,
        })?,
        b.layer(&LayerSpec {
            seed: 901,
            size: 3 * MIB,
        })?,
    ];
    multi_blobs.dedup();
    pushed.push(Pushed {
        layout_ref: "multi".into(),
        repo: "bench/multi".into(),
        tag: "1.0".into(),
        blobs: multi_blobs,
        children: vec![amd, arm],
    });
    Ok(Corpus {
        layout: b.finish()?,
        pushed,
    })
}

/// The config blob of an image manifest written by the layout builder.
fn config_of(b: &LayoutBuilder, manifest: &Blob) -> Result<Blob> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.blob_path(&manifest.digest))?)?;
    Ok(serde_json::from_value(m["config"].clone())?)
}

async fn push_all(corpus: &Corpus, host: &str) -> Result<()> {
    let mut set = tokio::task::JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    for p in &corpus.pushed {
        let (layout, r, target, host, sem) = (
            corpus.layout.clone(),
            p.layout_ref.clone(),
            format!("{}:{}", p.repo, p.tag),
            host.to_string(),
            sem.clone(),
        );
        set.spawn(async move {
            let _permit = sem.acquire().await;
            skopeo::push_layout(&layout, &r, &host, &target).await
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// How the destination takes blobs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Upload {
    /// As configured by default: chunked from `chunk_threshold`'s default (256 MiB), else one
    /// streaming `PUT`.
    Default,
    /// One streaming `PUT` whatever the size (`chunk_threshold` above every blob).
    Streaming,
    /// As `Default`, with this `chunk_size` (MiB).
    ChunkMib(u64),
}

/// A config's registry entry: verified against its CA when it serves TLS, plain HTTP otherwise.
fn registry_entry(name: &str, r: &Registry) -> serde_json::Value {
    match r.ca_path() {
        Some(ca) => json!({"name": name, "url": r.url(), "ca_file": ca}),
        None => json!({"name": name, "url": r.url(), "insecure": true}),
    }
}

/// An HTTP client trusting the CAs of `registries` that serve TLS.
fn client_for(registries: &[&Registry]) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder();
    for ca in registries.iter().filter_map(|r| r.ca_path()) {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?);
    }
    Ok(b.build()?)
}

fn write_ferry_config(
    dir: &Path,
    name: &str,
    src: &Registry,
    dst: &Registry,
    repo_filter: &str,
    upload: Upload,
) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.json"));
    let mut dst_reg = registry_entry("dst", dst);
    match upload {
        Upload::Streaming => dst_reg["chunk_threshold"] = json!(u64::MAX / 2),
        Upload::ChunkMib(mib) => dst_reg["chunk_size"] = json!(mib * MIB),
        Upload::Default => {}
    }
    let cfg = json!({
        "registries": [registry_entry("src", src), dst_reg],
        "policies": [{
            "name": name, "src_registry": {"name": "src"}, "dest_registry": {"name": "dst"},
            "filters": [{"type": "name", "value": repo_filter}]
        }]
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    Ok(path)
}

async fn ferry_sync(ferry: &Path, config: &Path) -> Result<Measured> {
    run_measured(
        tokio::process::Command::new(ferry)
            .args(["sync", "--progress", "plain", "--config"])
            .arg(config)
            .env("FERRY_LOG", "warn"),
    )
    .await
}

async fn skopeo_sync(yaml: &Path, dst: &Registry) -> Result<f64> {
    let start = Instant::now();
    skopeo::sync_yaml(yaml, &dst.host(), std::time::Duration::from_secs(600)).await?;
    Ok(start.elapsed().as_secs_f64())
}

/// GET→PUT of every unique blob with curl, 8 in parallel: the practical limit of these registries.
async fn raw_copy(
    dir: &Path,
    src: &Registry,
    dst: &Registry,
    blobs: &BTreeMap<String, String>,
) -> Result<f64> {
    let list = dir.join("raw-blobs.txt");
    std::fs::write(
        &list,
        blobs
            .iter()
            .map(|(d, repo)| format!("{repo} {d}\n"))
            .collect::<String>(),
    )?;
    let script = dir.join("raw-copy.sh");
    std::fs::write(
        &script,
        r#"#!/usr/bin/env bash
set -euo pipefail
copy() {
  repo=$1; digest=$2
  loc=$(curl -sS -f -D - -o /dev/null -X POST "$DST/v2/$repo/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  curl -sS -f "$SRC/v2/$repo/blobs/$digest" | curl -sS -f -o /dev/null -X PUT -T - -H 'Content-Type: application/octet-stream' "$loc&digest=$digest"
}
export -f copy
xargs -P 8 -n 2 bash -c 'copy "$0" "$1"' < "$1"
"#,
    )?;
    let start = Instant::now();
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(&list)
        .env("SRC", src.url())
        .env("DST", dst.url())
        .output()
        .await?;
    if !out.status.success() {
        bail!("raw copy failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(start.elapsed().as_secs_f64())
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The manifest digest a registry gives for `repo:tag` (`HEAD`), if any.
async fn head_digest(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
) -> Result<Option<String>> {
    let r = http
        .head(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("accept", ACCEPT)
        .send()
        .await?;
    Ok(r.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string))
}

/// The floor of a no-op resync: the minimal requests any tool must make (catalog, every tag list,
/// a `HEAD` per tag on both sides), sent by a bare client with ferry's parallelism (16).
async fn raw_noop(src: &Registry, dst: &Registry) -> Result<f64> {
    use futures_util::{StreamExt, TryStreamExt};
    let http = reqwest::Client::new();
    let start = Instant::now();
    let catalog: serde_json::Value = serde_json::from_slice(
        &http
            .get(format!("{}/v2/_catalog?n=1000", src.url()))
            .send()
            .await?
            .bytes()
            .await?,
    )?;
    let repos: Vec<String> = serde_json::from_value(catalog["repositories"].clone())?;
    let lists: Vec<(String, Vec<String>)> = futures_util::stream::iter(repos)
        .map(|repo| {
            let http = &http;
            async move {
                let t: serde_json::Value = serde_json::from_slice(
                    &http
                        .get(format!("{}/v2/{repo}/tags/list?n=1000", src.url()))
                        .send()
                        .await?
                        .bytes()
                        .await?,
                )?;
                anyhow::Ok((repo, serde_json::from_value(t["tags"].clone())?))
            }
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    let (src_url, dst_url) = (src.url(), dst.url());
    let pairs = lists
        .iter()
        .flat_map(|(r, tags)| tags.iter().map(move |t| (r, t)));
    let heads: Vec<bool> = futures_util::stream::iter(pairs)
        .map(|(repo, tag)| {
            let (http, src_url, dst_url) = (&http, &src_url, &dst_url);
            async move {
                let (a, b) = tokio::join!(
                    head_digest(http, src_url, repo, tag),
                    head_digest(http, dst_url, repo, tag)
                );
                anyhow::Ok(a? == b?)
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    anyhow::ensure!(heads.iter().all(|x| *x), "raw no-op found drift");
    Ok(start.elapsed().as_secs_f64())
}

/// True when every pushed tag has the source digest on `dst`, in the repository `rename` makes of
/// the source's.
async fn result_exact(
    corpus: &Corpus,
    src: &Registry,
    dst: &Registry,
    rename: fn(&str) -> &str,
) -> Result<bool> {
    let http = client_for(&[src, dst])?;
    for p in &corpus.pushed {
        let a = head_digest(&http, &src.url(), &p.repo, &p.tag).await?;
        let b = head_digest(&http, &dst.url(), rename(&p.repo), &p.tag).await?;
        if a.is_none() || a != b {
            eprintln!(
                "skopeo result differs for {}:{}: {a:?} vs {b:?}",
                p.repo, p.tag
            );
            return Ok(false);
        }
    }
    Ok(true)
}

fn unique_blobs(corpus: &Corpus) -> (BTreeMap<String, String>, u64) {
    let mut map = BTreeMap::new();
    let mut bytes = 0;
    for p in &corpus.pushed {
        for b in &p.blobs {
            if !map.contains_key(&b.digest) {
                bytes += b.size;
                map.insert(b.digest.clone(), p.repo.clone());
            }
        }
    }
    (map, bytes)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1024
                    / 1024
            })
        })
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {mem} GiB RAM, Debian docker-registry 2.8 ×2 on loopback, filesystem storage")
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

/// One copy of the large layer by `ferry sync`, with the CPU time of ferry and of both registries.
struct Copy {
    secs: f64,
    peak_rss: u64,
    ferry_cpu: f64,
    src_cpu: f64,
    dst_cpu: f64,
    /// With `--strace-fsync`: the destination's `fsync` calls and the seconds spent in them.
    fsyncs: Option<(usize, f64)>,
}

/// Attaches `strace` to `pid`, recording its `fsync`/`fdatasync` calls with their durations.
fn trace_fsyncs(pid: u32, out: &Path) -> Result<std::process::Child> {
    let child = std::process::Command::new("strace")
        .args(["-f", "-T", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(out)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("strace (apt-get install strace)")?;
    // strace attaches asynchronously; give it a moment before the copy starts.
    std::thread::sleep(Duration::from_millis(500));
    Ok(child)
}

/// Count and total seconds of the calls in an strace `-T` log (`... = 0 <0.012345>`; a call cut in
/// two by another thread ends on its `resumed` line).
fn fsync_totals(log: &str) -> (usize, f64) {
    log.lines()
        .filter_map(|l| l.rsplit_once('<')?.1.strip_suffix('>')?.parse::<f64>().ok())
        .fold((0, 0.0), |(n, t), d| (n + 1, t + d))
}

/// Copies `bench/huge` from `src` to a fresh registry with `upload`, measuring both registries' CPU.
async fn copy_layer(
    args: &Args,
    dir: &Path,
    src: &Registry,
    upload: Upload,
    name: &str,
) -> Result<Copy> {
    let dst = Registry::start().await?;
    let cfg = write_ferry_config(dir, name, src, &dst, "bench/huge", upload)?;
    let cpu = |r: &Registry| r.pid().and_then(cpu_seconds).unwrap_or(0.0);
    let (src0, dst0) = (cpu(src), cpu(&dst));
    let trace_log = dir.join(format!("{name}.strace"));
    let mut tracer = match (args.strace, dst.pid()) {
        (true, Some(pid)) => Some(trace_fsyncs(pid, &trace_log)?),
        _ => None,
    };
    let m = ferry_sync(&args.ferry, &cfg).await?;
    let fsyncs = match tracer.as_mut() {
        Some(t) => {
            // SIGINT detaches strace cleanly; it flushes its log on the way out.
            let _ = std::process::Command::new("kill")
                .args(["-INT", &t.id().to_string()])
                .status();
            let _ = t.wait();
            Some(fsync_totals(
                &std::fs::read_to_string(&trace_log).unwrap_or_default(),
            ))
        }
        None => None,
    };
    Ok(Copy {
        fsyncs,
        secs: m.secs,
        peak_rss: m.peak_rss,
        ferry_cpu: m.cpu_secs,
        src_cpu: cpu(src) - src0,
        dst_cpu: cpu(&dst) - dst0,
    })
}

/// The large-layer measurements: (c) streaming vs raw curl, (d) rounds of streaming vs chunked.
struct Gib {
    size: u64,
    chunk_mib: u64,
    raw_secs: f64,
    /// (streaming, chunked) per round.
    rounds: Vec<(Copy, Copy)>,
}

async fn gib_runs(args: &Args, dir: &Path) -> Result<Gib> {
    eprintln!("(c) large layer: generating and pushing...");
    let (src, dst_raw) = (Registry::start().await?, Registry::start().await?);
    let mut b = LayoutBuilder::new(&dir.join("gib"))?;
    let size = if args.quick { 256 * MIB } else { 1024 * MIB };
    let layer = b.layer(&LayerSpec { seed: 77, size })?;
    let m = b.image("huge", &[LayerSpec { seed: 77, size }])?;
    let config = config_of(&b, &m)?;
    let layout = b.finish()?;
    skopeo::push_layout(&layout, "huge", &src.host(), "bench/huge:v1").await?;
    // The layout is on the source now; its copy on disk is not needed.
    let _ = std::fs::remove_dir_all(dir.join("gib"));
    let raw: BTreeMap<String, String> = [
        (layer.digest, "bench/huge".to_string()),
        (config.digest, "bench/huge".to_string()),
    ]
    .into();
    eprintln!("(c) large layer: raw curl...");
    let raw_secs = raw_copy(dir, &src, &dst_raw, &raw).await?;
    drop(dst_raw);
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        // Alternate which goes first, so neither always meets a warmer page cache.
        let order = if round % 2 == 0 {
            [Upload::Streaming, Upload::ChunkMib(args.chunk_mib)]
        } else {
            [Upload::ChunkMib(args.chunk_mib), Upload::Streaming]
        };
        let (mut streaming, mut chunked) = (None, None);
        for upload in order {
            eprintln!("(d) round {}/{}: {upload:?}...", round + 1, args.rounds);
            let name = format!("gib-{round}-{}", upload == Upload::Streaming);
            let c = copy_layer(args, dir, &src, upload, &name).await?;
            match upload {
                Upload::Streaming => streaming = Some(c),
                _ => chunked = Some(c),
            }
        }
        rounds.push((
            streaming.context("streaming round")?,
            chunked.context("chunked round")?,
        ));
    }
    Ok(Gib {
        size,
        chunk_mib: args.chunk_mib,
        raw_secs,
        rounds,
    })
}

fn print_gib(g: &Gib) {
    let size = mib(g.size);
    let (s, _) = &g.rounds[0];
    println!("\n| measurement | ferry | raw curl GET→PUT | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| (c) one {size:.0} MiB layer, one streaming PUT | {:.1} s ({:.0} MiB/s), peak RSS {:.1} MiB | {:.1} s | {:.0}% of raw |",
        s.secs,
        size / s.secs,
        mib(s.peak_rss),
        g.raw_secs,
        100.0 * g.raw_secs / s.secs
    );
    println!(
        "\n(d) The same layer streaming (one PUT) vs chunked ({} MiB PATCHes, resumable: the default from 256 MiB), each to a fresh registry, alternating which goes first. CPU-seconds: ferry / source registry / destination registry.\n",
        g.chunk_mib
    );
    println!("| round | streaming | chunked | chunked/streaming | CPU streaming | CPU chunked | peak RSS streaming / chunked |");
    println!("|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for (i, (s, c)) in g.rounds.iter().enumerate() {
        let ratio = s.secs / c.secs;
        ratios.push(ratio);
        println!(
            "| {} | {:.2} s ({:.0} MiB/s) | {:.2} s ({:.0} MiB/s) | **{:.0}%** | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} MiB |",
            i + 1,
            s.secs,
            size / s.secs,
            c.secs,
            size / c.secs,
            100.0 * ratio,
            s.ferry_cpu,
            s.src_cpu,
            s.dst_cpu,
            c.ferry_cpu,
            c.src_cpu,
            c.dst_cpu,
            mib(s.peak_rss),
            mib(c.peak_rss)
        );
    }
    for (i, (s, c)) in g.rounds.iter().enumerate() {
        if let (Some((sn, st)), Some((cn, ct))) = (s.fsyncs, c.fsyncs) {
            println!(
                "\nround {}: destination fsync calls (strace): streaming {sn} taking {st:.2} s, chunked {cn} taking {ct:.2} s ({:.0} ms per PATCH)",
                i + 1,
                1000.0 * ct / g.size.div_ceil(g.chunk_mib * MIB) as f64
            );
        }
    }
    ratios.sort_by(f64::total_cmp);
    let total = |f: fn(&(Copy, Copy)) -> f64| g.rounds.iter().map(f).sum::<f64>();
    println!(
        "\nchunked/streaming over {} rounds: min {:.0}%, median {:.0}%, max {:.0}%; all rounds together {:.0}% ({:.1} s streaming, {:.1} s chunked).",
        ratios.len(),
        100.0 * ratios[0],
        100.0 * ratios[ratios.len() / 2],
        100.0 * ratios[ratios.len() - 1],
        100.0 * total(|r| r.0.secs) / total(|r| r.1.secs),
        total(|r| r.0.secs),
        total(|r| r.1.secs),
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    if args.requests {
        return cold::requests_runs(&args, dir).await;
    }
    if !args.only_gib {
        corpus_runs(&args, dir).await?;
    }
    if args.gib {
        let g = gib_runs(&args, dir).await?;
        if args.only_gib {
            println!("## ferry-bench results\n");
            println!("Machine: {}", machine());
        }
        print_gib(&g);
    }
    Ok(())
}

/// (a) and (b): the corpus, full sync and no-op resync.
async fn corpus_runs(args: &Args, dir: &Path) -> Result<()> {
    eprintln!("generating corpus...");
    let shape = if args.quick {
        Shape::QUICK
    } else {
        Shape::FULL
    };
    let corpus = build_corpus(&dir.join("layout"), shape)?;
    let (unique, unique_bytes) = unique_blobs(&corpus);
    let repos: std::collections::BTreeSet<&str> =
        corpus.pushed.iter().map(|p| p.repo.as_str()).collect();
    let src = Registry::start().await?;
    eprintln!(
        "pushing {} tags in {} repositories ({:.0} MiB unique) with skopeo...",
        corpus.pushed.len(),
        repos.len(),
        mib(unique_bytes)
    );
    push_all(&corpus, &src.host()).await?;
    let (dst_ferry, dst_skopeo, dst_raw) = (
        Registry::start().await?,
        Registry::start().await?,
        Registry::start().await?,
    );

    let yaml = dir.join("skopeo-sync.yml");
    let mut y = format!("{}:\n  tls-verify: false\n  images:\n", src.host());
    for r in &repos {
        y.push_str(&format!("    {r}: []\n"));
    }
    std::fs::write(&yaml, y)?;
    let cfg = write_ferry_config(dir, "bench", &src, &dst_ferry, "bench/**", Upload::Default)?;

    eprintln!("(a) full sync: ferry...");
    let full = ferry_sync(&args.ferry, &cfg).await?;
    let ferry_full = full.secs;
    eprintln!("(a) full sync: skopeo...");
    let skopeo_full = skopeo_sync(&yaml, &dst_skopeo).await?;
    eprintln!("(a) full sync: raw curl...");
    let raw_full = raw_copy(dir, &src, &dst_raw, &unique).await?;

    // Both tools must have produced the same content.
    let diff = tokio::process::Command::new(&args.ferry)
        .args(["diff", "--config"])
        .arg(&cfg)
        .output()
        .await?;
    anyhow::ensure!(
        diff.status.success(),
        "ferry's destination differs from the source:\n{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    // `skopeo sync` (without `--scoped`, broken for `host:port` sources) writes
    // `DEST/<last path component>`.
    let skopeo_exact = result_exact(&corpus, &src, &dst_skopeo, |r| {
        r.rsplit('/').next().unwrap_or(r)
    })
    .await?;

    eprintln!("(b) no-op resync: ferry...");
    let ferry_noop = ferry_sync(&args.ferry, &cfg).await?.secs;
    eprintln!("(b) no-op resync: skopeo...");
    let skopeo_noop = skopeo_sync(&yaml, &dst_skopeo).await?;
    eprintln!("(b) no-op resync: raw floor...");
    let raw_noop = raw_noop(&src, &dst_ferry).await?;

    println!("## ferry-bench results\n");
    println!("Machine: {}\n", machine());
    println!(
        "Corpus: {} repositories, {} tags (one a two-platform index), {:.0} MiB in {} unique blobs (3 shared base layers, {} layers of 120 MiB).\n",
        repos.len(),
        corpus.pushed.len(),
        mib(unique_bytes),
        unique.len(),
        shape.big
    );
    println!("| measurement | ferry | skopeo sync --all | raw curl GET→PUT (8 parallel) | ratio |");
    println!("|---|---|---|---|---|");
    println!(
        "| (a) full sync to an empty registry | {ferry_full:.1} s ({:.0} MiB/s) | {skopeo_full:.1} s | {raw_full:.1} s | {:.1}× faster than skopeo; {:.0}% of raw |",
        mib(unique_bytes) / ferry_full,
        skopeo_full / ferry_full,
        100.0 * raw_full / ferry_full
    );
    println!(
        "| (b) no-op resync | {ferry_noop:.2} s | {skopeo_noop:.2} s | {raw_noop:.2} s (catalog, tag lists, 2 HEADs per tag; no process start) | {:.1}× faster than skopeo; raw floor is {:.1}× skopeo |",
        skopeo_noop / ferry_noop,
        skopeo_noop / raw_noop
    );
    println!(
        "\nDuring (a) ferry used {:.1} CPU-seconds (of {:.1} s × 2 cores; the rest is the registries) and peaked at {:.1} MiB RSS. \
         skopeo's destination digest-identical to the source: {skopeo_exact}.",
        full.cpu_secs,
        full.secs,
        mib(full.peak_rss)
    );
    Ok(())
}
