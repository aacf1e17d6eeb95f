//! (e) Cold-sync requests: the corpus of [`Shape::COLD`] (11 repositories, 16 tags sharing base
//! layers, one two-platform index) synced to a fresh, empty registry by ferry (and by a baseline
//! ferry build, and by ocync, when named), each destination's requests counted **from its own
//! access log** by route and status, next to the floor.
//!
//! The floor is what any tool must send to an empty destination it does not know to be empty, one
//! request per decision: per tag a manifest `HEAD` (is it there?) and a `PUT`; per child of an
//! index a `HEAD` by digest and a `PUT`; per blob the first time it reaches the registry a `HEAD`
//! and an upload (`POST` + `PUT`), and in every further repository one mount `POST` (a mount of a
//! blob already there answers `201` too). Nothing else: the registries here are anonymous (no
//! token requests), and a manifest `PUT`'s answer carries the digest it stored.
use std::collections::{BTreeMap, BTreeSet};

use ferry_testkit::access_log::{route_counts, Route};
use ferry_testkit::RegistryOptions;

use super::*;

/// Requests by route and status.
type Counts = BTreeMap<(Route, u16), usize>;

/// One tool's cold sync: its destination's requests.
struct Run {
    tool: String,
    counts: Counts,
    secs: f64,
}

pub(super) async fn requests_runs(args: &Args, dir: &Path) -> Result<()> {
    eprintln!("(e) generating the corpus...");
    let corpus = build_corpus(&dir.join("layout"), Shape::COLD)?;
    // TLS everywhere: ocync's `sync` speaks HTTPS only.
    let src = Registry::start_with(RegistryOptions {
        tls: true,
        ..RegistryOptions::default()
    })
    .await?;
    push_all(&corpus, &src.host()).await?;
    let mut runs = Vec::new();
    let mut ferries = vec![("ferry".to_string(), args.ferry.clone())];
    if let Some(b) = &args.baseline {
        ferries.insert(0, ("ferry (baseline)".to_string(), b.clone()));
    }
    for (tool, binary) in ferries {
        eprintln!("(e) cold sync: {tool}...");
        let dst = logged_registry().await?;
        let cfg = write_ferry_config(dir, "cold", &src, &dst, "bench/**", Upload::Default)?;
        let from = log_len(&dst)?;
        let m = ferry_sync(&binary, &cfg).await?;
        runs.push(finish(&corpus, &src, dst, from, tool, m.secs).await?);
    }
    if let Some(ocync) = &args.ocync {
        eprintln!("(e) cold sync: ocync...");
        let dst = logged_registry().await?;
        let from = log_len(&dst)?;
        let repos: BTreeSet<&str> = corpus.pushed.iter().map(|p| p.repo.as_str()).collect();
        let secs = ferry_testkit::ocync::sync(ocync, dir, repos, &src, &dst)
            .await?
            .secs;
        runs.push(finish(&corpus, &src, dst, from, "ocync".into(), secs).await?);
    }
    print_requests(&corpus, &runs);
    Ok(())
}

/// An empty registry serving TLS and writing one access-log line per request.
async fn logged_registry() -> Result<Registry> {
    Registry::start_with(RegistryOptions {
        log_level: "info",
        tls: true,
        ..RegistryOptions::default()
    })
    .await
}

/// Where the registry's log ends now: what follows is the sync's (before it, the start-up
/// probe's `GET /v2/`).
fn log_len(r: &Registry) -> Result<usize> {
    Ok(std::fs::metadata(r.log_path())?.len() as usize)
}

/// Reads the destination's requests from log offset `from` (before anything else asks it), then
/// checks every tag arrived with the source's digest.
async fn finish(
    corpus: &Corpus,
    src: &Registry,
    dst: Registry,
    from: usize,
    tool: String,
    secs: f64,
) -> Result<Run> {
    let log = std::fs::read_to_string(dst.log_path())?;
    let counts = route_counts(log.get(from..).unwrap_or_default());
    anyhow::ensure!(
        result_exact(corpus, src, &dst, |r| r).await?,
        "{tool}'s destination differs from the source"
    );
    Ok(Run { tool, counts, secs })
}

/// What the corpus makes a tool write: blobs per repository, and manifests.
struct Needs {
    /// `(repository, blob digest)` pairs: every blob in every repository whose graph needs it.
    placements: usize,
    unique_blobs: usize,
    /// Tags plus index children.
    manifests: usize,
    floor: BTreeMap<Route, usize>,
}

fn needs(corpus: &Corpus) -> Needs {
    let mut floor = BTreeMap::new();
    let mut add = |r: Route, n: usize| *floor.entry(r).or_insert(0) += n;
    let mut placed = BTreeSet::new();
    let mut anywhere = BTreeSet::new();
    let mut manifests = 0;
    for p in &corpus.pushed {
        add(Route::ManifestHead, 1 + p.children.len());
        add(Route::ManifestPut, 1 + p.children.len());
        manifests += 1 + p.children.len();
        for b in &p.blobs {
            if !placed.insert((p.repo.as_str(), b.digest.as_str())) {
                continue;
            }
            if anywhere.insert(b.digest.as_str()) {
                add(Route::BlobHead, 1);
                add(Route::UploadPost, 1);
                add(Route::UploadPut, 1);
            } else {
                add(Route::MountPost, 1);
            }
        }
    }
    Needs {
        placements: placed.len(),
        unique_blobs: anywhere.len(),
        manifests,
        floor,
    }
}

/// A cell: the count, and its statuses when they say something (`404: 22`, `201: 5`).
fn cell(counts: &Counts, route: Route) -> String {
    let statuses: Vec<(u16, usize)> = counts
        .iter()
        .filter(|((r, _), _)| *r == route)
        .map(|((_, s), n)| (*s, *n))
        .collect();
    let total: usize = statuses.iter().map(|(_, n)| n).sum();
    match statuses.as_slice() {
        [] => "–".into(),
        [(s, _)] if (200..300).contains(s) => total.to_string(),
        _ => format!(
            "{total} ({})",
            statuses
                .iter()
                .map(|(s, n)| format!("{s}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn total(counts: &Counts, keep: impl Fn(Route) -> bool) -> usize {
    counts
        .iter()
        .filter(|((r, _), _)| keep(*r))
        .map(|(_, n)| n)
        .sum()
}

fn print_requests(corpus: &Corpus, runs: &[Run]) {
    let n = needs(corpus);
    let repos: BTreeSet<&str> = corpus.pushed.iter().map(|p| p.repo.as_str()).collect();
    let floor: Counts = n.floor.iter().map(|(r, c)| ((*r, 200), *c)).collect();
    println!("## ferry-bench (e): cold-sync requests on the destination\n");
    println!("Machine: {}\n", machine());
    println!(
        "Corpus: {} repositories, {} tags (one a two-platform index), {} unique blobs in {} (repository, blob) placements, {} manifests (tags and index children). Each tool syncs it to its own empty `docker-registry`; requests counted from that registry's access log.\n",
        repos.len(),
        corpus.pushed.len(),
        n.unique_blobs,
        n.placements,
        n.manifests
    );
    let mut routes: BTreeSet<Route> = n.floor.keys().copied().collect();
    for r in runs {
        routes.extend(r.counts.keys().map(|(route, _)| *route));
    }
    let header: Vec<&str> = runs.iter().map(|r| r.tool.as_str()).collect();
    println!("| request | {} | floor |", header.join(" | "));
    println!("|---|{}---|", "---|".repeat(runs.len()));
    for route in &routes {
        let cells: Vec<String> = runs.iter().map(|r| cell(&r.counts, *route)).collect();
        println!(
            "| {} | {} | {} |",
            route.label(),
            cells.join(" | "),
            cell(&floor, *route)
        );
    }
    let line = |name: &str, keep: &dyn Fn(Route) -> bool, per: Option<usize>| {
        let fmt = |c: &Counts| {
            let t = total(c, keep);
            match per {
                Some(d) => format!("{:.2}", t as f64 / d as f64),
                None => format!("**{t}**"),
            }
        };
        let cells: Vec<String> = runs.iter().map(|r| fmt(&r.counts)).collect();
        println!("| {name} | {} | {} |", cells.join(" | "), fmt(&floor));
    };
    line("**total**", &|_| true, None);
    line(
        "blob requests per placement",
        &|r: Route| r.is_blob(),
        Some(n.placements),
    );
    line(
        "blob requests per unique blob",
        &|r: Route| r.is_blob(),
        Some(n.unique_blobs),
    );
    line(
        "manifest requests per manifest",
        &|r: Route| r.is_manifest(),
        Some(n.manifests),
    );
    let secs: Vec<String> = runs.iter().map(|r| format!("{:.2} s", r.secs)).collect();
    println!("| wall time | {} | |", secs.join(" | "));
}
