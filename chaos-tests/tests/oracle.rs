//! The seeded multi-region chaos oracle (issue 13): a workload of pushes, re-tags, tag moves,
//! signatures and deletes in three regions at once, a fault schedule from the same seed, and one
//! oracle that reads every registry directly once the faults healed.
//!
//! Regions `a`, `b`, `c` (each in its own network namespace, with its own registry, queue server —
//! Redis under a Sentinel in `b`, Valkey in `c` — agent and worker): policy `app-a-to-b` pulls `app/**` from `a` into `b` (events forwarded to `b`, whose
//! workers copy), policy `shared-b-c` replicates `shared/**` both ways between `b` and `c`. `a`
//! also writes `private/keys` and `c` writes `local/scratch`, which no policy covers.
//!
//! The seed is printed first; replay a run with
//! `FERRY_CHAOS_SEED=<seed> cargo nextest run -p ferry-chaos-tests --test oracle`, and run the
//! long profile by hand with `FERRY_CHAOS_DURATION_SECS=600` (and any seed), the soak with
//! `FERRY_CHAOS_DURATION_SECS=3600`: every process's memory, descriptors and tasks are sampled
//! every 10 s in any run, and a run of 30 minutes or more fails when one grew beyond its bound
//! (`ferry_chaos_tests::soak`).
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_chaos_tests::mesh::{Mesh, MeshOptions};
use ferry_chaos_tests::oracle::{Flow, Oracle};
use ferry_chaos_tests::schedule::{self, Chaos};
use ferry_chaos_tests::seeded::{duration_from_env, seed_from_env, DURATION_ENV, SEED_ENV};
use ferry_chaos_tests::soak::{Probe, Samples};
use ferry_chaos_tests::workload::{self, RegionLoad, Runner, WorkloadOptions};
use serde_json::{json, Value};

/// The short profile's fixed seed (CI): issue 13's.
const SHORT_SEED: u64 = 0x5EED_0013;
/// The short profile's workload duration; faults are spread over it.
const SHORT_DURATION: Duration = Duration::from_secs(90);
/// Each registry's disk: a tmpfs (memory only for what is written) the disk-full fault shrinks
/// to what it holds; room for an hour-long run's images.
const REGISTRY_DISK: u64 = 4 << 30;
/// The region whose queue runs under a Sentinel (primary, replica, `--redis-wait-replicas 1`): its
/// Redis faults are failovers; the others' are plain restarts from the AOF.
const SENTINEL_REGION: &str = "b";
/// The region whose queue server is Valkey (its faults are plain restarts from the AOF); the
/// others run Redis.
const VALKEY_REGION: &str = "c";
/// Where the permanent fault goes: a broken image in a repository of `a` that `app-a-to-b` copies
/// (its dead letter is expected in `b`, whose workers run that pull policy).
const BROKEN_IMAGE: (&str, &str) = ("a", "app/api");
/// How often every process's memory, descriptors and tasks are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// A run at least this long is a soak: its resources must stay within the bounds of
/// `ferry_chaos_tests::soak` (shorter runs report them).
const SOAK: Duration = Duration::from_secs(1800);
/// Ops per second in each region.
const OPS_PER_SECOND: f64 = 0.5;
/// One fault per this much of the run (the short profile gets exactly the required five).
const FAULT_EVERY: Duration = Duration::from_secs(12);
/// The agents' safety-net interval: what a registry restart's lost notifications wait for.
const RECONCILE_SECONDS: u64 = 10;
/// The workers' `--history-max-executions`: a tenth of the default, so that in a soak the
/// bidirectional pair (about 70 executions a minute) fills its execution history within the
/// warm-up quarter and the queue server's memory must then stay flat, retention trimming as fast
/// as jobs record (with the default 10 000 an hour fills less than half of it).
const HISTORY_MAX_EXECUTIONS: &str = "1000";
/// How long the oracle waits for convergence, and a gate for deletes: generous for a loaded
/// 2-core machine (a killed worker's job waits for its 10 s lease; Redis was seen to stall 40 s).
const WAIT: Duration = Duration::from_secs(300);

fn policy(name: &str, mode: &str, src: &str, dest: &str, repos: &str) -> Value {
    json!({
        "name": name,
        "mode": mode,
        "src_registry": {"name": src},
        "dest_registry": {"name": dest},
        "trigger": {"type": "event_based"},
        "filters": [{"type": "name", "value": repos}],
        "replicate_deletion": true,
    })
}

fn loads() -> Vec<RegionLoad> {
    [
        ("a", vec!["app/web", "app/api", "private/keys"]),
        ("b", vec!["shared/base", "shared/tools"]),
        ("c", vec!["shared/base", "shared/tools", "local/scratch"]),
    ]
    .into_iter()
    .map(|(r, repos)| RegionLoad {
        region: r.to_string(),
        repos: repos.into_iter().map(str::to_string).collect(),
    })
    .collect()
}

fn flows() -> Vec<Flow> {
    vec![
        Flow::OneWay {
            from: "a".into(),
            to: "b".into(),
            prefix: "app/".into(),
        },
        Flow::Bidirectional {
            x: "b".into(),
            y: "c".into(),
            prefix: "shared/".into(),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeded_pushes_moves_and_deletes_across_regions_under_faults_converge_with_nothing_lost() {
    let seed = seed_from_env(SHORT_SEED).expect("reading the seed");
    let duration = duration_from_env(SHORT_DURATION).expect("reading the duration");
    // First line of the output, so a failure anywhere below replays with one command.
    eprintln!(
        "oracle: seed {seed:#x}, workload {}s; replay: {SEED_ENV}={seed:#x} {DURATION_ENV}={} \
         cargo nextest run -p ferry-chaos-tests --test oracle",
        duration.as_secs(),
        duration.as_secs()
    );
    if let Err(e) = scenario(seed, duration).await {
        panic!(
            "{e:#}\nreplay: {SEED_ENV}={seed:#x} {DURATION_ENV}={} cargo nextest run -p \
             ferry-chaos-tests --test oracle",
            duration.as_secs()
        );
    }
}

async fn scenario(seed: u64, duration: Duration) -> anyhow::Result<()> {
    let loads = loads();
    let plan = workload::plan(
        seed,
        &WorkloadOptions {
            regions: loads.clone(),
            ops_per_second: OPS_PER_SECOND,
            duration,
            tags_per_repo: 4,
        },
    );
    let region_names: Vec<String> = loads.iter().map(|l| l.region.clone()).collect();
    let sentinel = [SENTINEL_REGION.to_string()];
    let one_way_sources = [BROKEN_IMAGE.0.to_string()];
    let faults = schedule::schedule(
        seed,
        schedule::Topology {
            regions: &region_names,
            sentinel: &sentinel,
            one_way_sources: &one_way_sources,
        },
        duration,
        FAULT_EVERY,
    );
    let skew = schedule::clock_skew(seed, &region_names);
    eprintln!(
        "oracle: region {}'s agent and workers run with their clock {:+} s off, all run long",
        skew.0, skew.1
    );
    for f in &faults {
        eprintln!(
            "oracle: planned +{:.1}s {} (held {:.1}s)",
            f.at.as_secs_f64(),
            f.fault,
            f.hold.as_secs_f64()
        );
    }

    let mut mesh = Mesh::start(MeshOptions {
        regions: vec!["a", "b", "c"],
        policies: vec![
            policy("app-a-to-b", "pull", "a", "b", "app/**"),
            policy("shared-b-c", "bidirectional", "b", "c", "shared/**"),
        ],
        registry_log_level: "info",
        reconcile_interval: RECONCILE_SECONDS,
        worker_args: vec![
            "--lease-seconds".into(),
            "10".into(),
            "--history-max-executions".into(),
            HISTORY_MAX_EXECUTIONS.into(),
        ],
        registry_proxies: true,
        clock_skew: Some(skew.clone()),
        registry_tmpfs: Some(REGISTRY_DISK),
        sentinel: vec![SENTINEL_REGION],
        valkey: vec![VALKEY_REGION],
        ..MeshOptions::default()
    })
    .await?;
    let outcome = exercise(&mut mesh, seed, duration, plan, &faults, skew, &loads).await;
    if outcome.is_err() {
        // The verdict panics after the mesh is gone: keep its logs for the diagnosis.
        let dir = mesh.keep_logs();
        eprintln!("oracle: the mesh's logs are kept in {}", dir.display());
    }
    outcome
}

/// Runs the workload and the faults over a started mesh, then the oracle.
async fn exercise(
    mesh: &mut Mesh,
    seed: u64,
    duration: Duration,
    plan: workload::Plan,
    faults: &[schedule::Planned],
    skew: (String, i64),
    loads: &[RegionLoad],
) -> anyhow::Result<()> {
    let region_names: Vec<String> = loads.iter().map(|l| l.region.clone()).collect();
    let mut workers = BTreeMap::new();
    for r in &region_names {
        workers.insert(r.clone(), vec![mesh.start_worker(r).await?]);
    }
    let hosts: BTreeMap<String, String> = mesh
        .regions
        .iter()
        .map(|(name, r)| (name.clone(), r.registry.host()))
        .collect();
    let writes = loads
        .iter()
        .map(|l| (l.region.clone(), l.repos.clone()))
        .collect();
    let oracle = Oracle::new(hosts.clone(), writes, flows())?;
    let runner = Runner::new(plan, hosts)?;
    let canary_repo = [
        ("a", "app/web"),
        ("b", "shared/base"),
        ("c", "shared/tools"),
    ]
    .into_iter()
    .map(|(r, repo)| (r.to_string(), repo.to_string()))
    .collect();

    // The soak: every process's memory, descriptors and tasks, sampled until the oracle is done.
    let probe = Probe::of(mesh)?;
    let (stop_sampling, sampling_stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        Samples::collect(&probe, SAMPLE_EVERY, async {
            let _ = sampling_stopped.await;
        })
        .await
    });

    let started = Instant::now();
    let mut chaos = Chaos {
        mesh: &mut *mesh,
        workers,
        runner: runner.clone(),
        oracle: oracle.clone(),
        canary_repo,
        broken_repo: [(BROKEN_IMAGE.0.to_string(), BROKEN_IMAGE.1.to_string())].into(),
        seed,
        gate_timeout: WAIT,
    };
    // The first failure ends both: a fault that failed stops the workload (its pushes are
    // aborted) rather than leaving it to run out its time.
    let ran = tokio::try_join!(runner.run(started), chaos.run(faults, started));
    let ((), injected) = match ran {
        Ok(ran) => ran,
        Err(e) => {
            // What the processes used until the failure: a failed soak still tells its story.
            let _ = stop_sampling.send(());
            if let Ok(samples) = sampler.await {
                eprintln!(
                    "oracle: resources until the failure ({} samples):\n\n{}",
                    samples.samples.len(),
                    samples.table()
                );
            }
            return Err(e);
        }
    };
    // The workers stay alive until the oracle is done.
    let _workers = std::mem::take(&mut chaos.workers);
    drop(chaos);
    let acked = runner.acked();
    let last_heal = injected
        .iter()
        .map(|i| i.healed)
        .chain(acked.last_ack)
        .max()
        .unwrap_or(started);
    eprintln!(
        "oracle: workload and faults done after {:.1}s; verifying",
        started.elapsed().as_secs_f64()
    );

    let verifying = Instant::now();
    let verdict = oracle.verify(mesh, &acked, WAIT).await;
    let convergence = verdict
        .convergence
        .map(|c| (verifying + c).saturating_duration_since(last_heal));
    let images: u64 = acked.regions.values().map(|l| l.images).sum();
    let bytes: u64 = acked.regions.values().map(|l| l.bytes).sum();
    let (pushes, retags, deletes) = acked.regions.values().fold((0, 0, 0), |s, l| {
        (s.0 + l.pushes, s.1 + l.retags, s.2 + l.deletes)
    });
    let mut dead_letters = 0;
    for r in &region_names {
        if let Some(q) = mesh.queue_stats(r).await? {
            dead_letters += q.dead_letters;
        }
    }
    let broken: usize = acked.regions.values().map(|l| l.broken.len()).sum();
    let f = &verdict.findings;
    let profile = if seed == SHORT_SEED && duration == SHORT_DURATION {
        "short"
    } else {
        "by hand"
    };
    let row = format!(
        "| {profile}: 3 regions, pull + bidirectional | `{seed:#x}` | {}s | {} ({}; clock of {} {:+} s all run) | {images} images ({pushes} pushes, {retags} re-tags, {deletes} deletes), {:.1} MiB | {} | {} | {} | {} | {dead_letters} (of {broken} broken images) | {} |",
        duration.as_secs(),
        injected.len(),
        injected
            .iter()
            .map(|i| i.fault.kind())
            .collect::<Vec<_>>()
            .join(", "),
        skew.0,
        skew.1,
        bytes as f64 / (1024.0 * 1024.0),
        f.lost.len() + f.source.len(),
        f.kept_by_guard.len(),
        f.corrupt.len(),
        oracle.duplicate_writes(mesh, &acked),
        convergence.map_or("never".to_string(), |c| format!("{:.1}", c.as_secs_f64())),
    );
    let table = format!(
        "| scenario | seed | workload | faults injected | images and bytes | lost | kept by the digest guard | corrupt | duplicate writes | dead letters | convergence (s after last heal) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n{row}\n"
    );
    for k in &f.kept_by_guard {
        eprintln!("oracle: kept by the digest guard (not a failure): {k}");
    }
    let _ = stop_sampling.send(());
    let samples = sampler.await?;
    let growth = samples.table();
    let soak = duration >= SOAK;
    let table = format!(
        "{table}\nResources over the run ({} samples, one per {}s; {}):\n\n{growth}",
        samples.samples.len(),
        SAMPLE_EVERY.as_secs(),
        if soak {
            "a soak: the bounds are checked"
        } else {
            "shorter than a soak: reported, not checked"
        }
    );
    eprintln!(
        "oracle: {} manifests and blobs re-hashed\n{table}",
        verdict.rehashed
    );
    if let Ok(ferry) = ferry_chaos_tests::binary("ferry") {
        if let Some(dir) = ferry.parent() {
            let out = dir.join("chaos-oracle-results.md");
            if std::fs::write(&out, &table).is_ok() {
                eprintln!("oracle: results table written to {}", out.display());
            }
        }
    }
    if soak {
        let grown: Vec<String> = samples
            .growth()
            .into_iter()
            .filter(|g| !g.within_bound())
            .map(|g| format!("{g:?}"))
            .collect();
        anyhow::ensure!(
            grown.is_empty(),
            "the soak (seed {seed:#x}) saw growth beyond the bounds:\n{}",
            grown.join("\n")
        );
    }
    anyhow::ensure!(
        verdict.findings.is_empty(),
        "the oracle found (seed {seed:#x}):\n{}",
        verdict.findings
    );
    anyhow::ensure!(
        verdict.rehashed > 0,
        "the oracle re-hashed nothing: the registries were not read"
    );
    oracle_sees_writes_behind_ferrys_back(mesh, &oracle, &acked).await
}

/// The oracle can fail: once it passed, an image pushed where no policy writes (`private/rogue` on
/// `c`) fails it, and a tag pushed straight into a one-way replica (`app/web:rogue` on `b`, which
/// Ferry never deletes: the safety net only reports extra tags) is seen — as kept by the digest
/// guard, since its source never held, let alone deleted, that digest.
async fn oracle_sees_writes_behind_ferrys_back(
    mesh: &Mesh,
    oracle: &Oracle,
    acked: &workload::Acked,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("ferry-oracle-rogue-")
        .tempdir()?;
    let image = ferry_chaos_tests::oci::image(
        dir.path(),
        &[ferry_testkit::LayerSpec {
            seed: 0xB0605,
            size: 4096,
        }],
    )?;
    for (region, repo_tag) in [("c", "private/rogue:v1"), ("b", "app/web:rogue")] {
        ferry_testkit::skopeo::push_layout(
            &image.layout,
            "img",
            &mesh.region(region).registry.host(),
            repo_tag,
        )
        .await?;
    }
    let f = oracle.state_findings(acked).await?;
    eprintln!("oracle: after writes behind Ferry's back:\n{f}");
    anyhow::ensure!(
        f.outside.iter().any(|s| s.contains("private/rogue")),
        "the oracle missed an image in a repository no policy writes:\n{f}"
    );
    anyhow::ensure!(
        !f.is_empty(),
        "the oracle passed a registry holding an image outside every policy"
    );
    anyhow::ensure!(
        f.kept_by_guard.iter().any(|s| s.contains("app/web:rogue")),
        "the oracle missed a tag on a replica that its source lacks:\n{f}{:?}",
        f.kept_by_guard
    );
    Ok(())
}
