//! Regions that share nothing but gRPC: each has its own Redis, registry, agent and workers, and
//! events travel between them only through `ferry.v1.Events/Forward`, behind a fault proxy.
//!
//! Every scenario asserts what a platform engineer would check from outside: which region's
//! workers did the copy, that the destination holds the source's digest, that a cut link delays
//! but loses nothing, that bidirectional replication writes each image once per side and settles
//! conflicts on one digest.
use std::time::{Duration, Instant};

use ferry_chaos_tests::mesh::{Mesh, MeshOptions};
use ferry_chaos_tests::{oci, wait_for};
use ferry_testkit::{skopeo, LayerSpec, LayoutBuilder, Link};
use serde_json::{json, Value};

const KIB: u64 = 1024;

fn check(result: anyhow::Result<()>) {
    if let Err(e) = result {
        panic!("{e:#}");
    }
}

fn fixtures() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ferry-mesh-fixtures-")
        .tempdir()
        .expect("creating the fixtures dir")
}

/// Pushes a one-layer image (content from `seed`) to `host/repo_tag`; returns its digest.
async fn push(
    root: &std::path::Path,
    seed: u64,
    host: &str,
    repo_tag: &str,
) -> anyhow::Result<String> {
    let image = oci::image(
        &root.join(format!("img-{seed}")),
        &[LayerSpec {
            seed,
            size: 64 * KIB,
        }],
    )?;
    skopeo::push_layout(&image.layout, "img", host, repo_tag).await?;
    Ok(image.manifest.digest)
}

/// Pushes a cosign-style signature of `subject` (the image [`push`] made from `seed`) to
/// `host/repo`, under the tag scheme (`sha256-<hex>.sig`); returns the tag and the signature's
/// digest.
async fn push_signature(
    root: &std::path::Path,
    seed: u64,
    subject: &str,
    host: &str,
    repo: &str,
) -> anyhow::Result<(String, String)> {
    let mut b = LayoutBuilder::new(&root.join(format!("sig-{seed}")))?;
    let image = b.image(
        "img",
        &[LayerSpec {
            seed,
            size: 64 * KIB,
        }],
    )?;
    let sig = b.artifact(
        "sig",
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        format!("signature of {}", image.digest).as_bytes(),
        "application/vnd.dev.cosign.simplesigning.v1+json",
        Some(&image),
    )?;
    anyhow::ensure!(
        image.digest == subject,
        "seed {seed} does not rebuild {subject}"
    );
    let layout = b.finish()?;
    let tag = format!("sha256-{}.sig", image.hex());
    skopeo::push_layout(&layout, "sig", host, &format!("{repo}:{tag}")).await?;
    Ok((tag, sig.digest))
}

fn policy(name: &str, mode: &str, src: &str, dest: &str, extra: Value) -> Value {
    let mut p = json!({
        "name": name,
        "mode": mode,
        "src_registry": {"name": src},
        "dest_registry": {"name": dest},
        "trigger": {"type": "event_based"},
        "replicate_deletion": true,
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        p[k] = v.clone();
    }
    p
}

/// How long a scenario waits for something that must happen. Generous: on a shared, loaded
/// machine both regions' Redis (AOF, `appendfsync everysec`) were seen to stop answering for 40 s
/// at once while the disk was busy, and a 45 s wait then failed with nothing wrong in Ferry.
const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pull_mode_runs_where_the_destination_is_and_a_cut_link_loses_nothing() {
    let mesh = Mesh::start(MeshOptions {
        regions: vec!["a", "b"],
        policies: vec![
            policy("a-to-b", "pull", "a", "b", json!({})),
            policy("hub-to-b", "pull", "hub", "b", json!({})),
        ],
        hub_polled_by: Some("b"),
        ..MeshOptions::default()
    })
    .await
    .expect("starting regions a and b");
    check(pull_scenario(&mesh).await);
}

async fn pull_scenario(mesh: &Mesh) -> anyhow::Result<()> {
    let dir = fixtures();
    let (a, b) = (mesh.region("a"), mesh.region("b"));
    let (a_host, b_host) = (a.registry.host(), b.registry.host());
    // Only region b has a worker: pull mode runs where the destination is.
    let worker_b = mesh.start_worker("b").await?;

    let started = Instant::now();
    let v1 = push(dir.path(), 1, &a_host, "app/one:v1").await?;
    mesh.wait_for_tag(&b_host, "app/one", "v1", &v1, WAIT)
        .await?;
    eprintln!(
        "a → b over Forward: {:?} after skopeo's push began",
        started.elapsed()
    );
    let delivered = a
        .agent
        .metric(
            "ferry_forward_events_total",
            &[("region", "b"), ("outcome", "delivered")],
        )
        .await?;
    anyhow::ensure!(
        delivered >= 1.0,
        "agent a reports {delivered} events delivered to b"
    );
    let received = b
        .agent
        .metric(
            "ferry_forward_received_total",
            &[("region", "a"), ("outcome", "enqueued")],
        )
        .await?;
    anyhow::ensure!(
        received >= 1.0,
        "agent b reports {received} events received from a"
    );

    // A signature pushed after its image arrived follows it (its own event, forwarded).
    let (sig_tag, sig) = push_signature(dir.path(), 1, &v1, &a_host, "app/one").await?;
    mesh.wait_for_tag(&b_host, "app/one", &sig_tag, &sig, WAIT)
        .await?;

    // A source without webhooks, polled by region b (HEAD only).
    let hub = mesh.hub.as_ref().expect("the hub registry");
    let tool = push(dir.path(), 2, &hub.host(), "tools/lint:v1").await?;
    mesh.wait_for_tag(&b_host, "tools/lint", "v1", &tool, WAIT)
        .await?;

    // Cut the link to b: a keeps accepting events into its outbox.
    let from_a = [("region", "a")];
    let received_before = b
        .agent
        .metric_if_present("ferry_forward_received_total", &from_a)
        .await?
        .unwrap_or(0.0);
    b.proxy.set_link(Link::Blackhole);
    let v2 = push(dir.path(), 3, &a_host, "app/one:v2").await?;
    let v3 = push(dir.path(), 4, &a_host, "app/two:v3").await?;
    oci::delete_manifest(&a_host, "app/one", &v1).await?;
    wait_for("a's outbox for b to hold the 3 events", WAIT, || async {
        a.agent
            .metric("ferry_forward_outbox_depth", &[("region", "b")])
            .await
            .is_ok_and(|v| v >= 3.0)
    })
    .await?;
    // Not a pause but proof that the events were offered: a round that started with all three
    // pending (the depth above is set when a round starts; rounds run one after the other) failed
    // — its call got no answer through the blackhole. A leak would have reached b by then.
    let failed = [("region", "b"), ("outcome", "failed")];
    let failed_before = a
        .agent
        .metric_if_present("ferry_forward_events_total", &failed)
        .await?
        .unwrap_or(0.0);
    let offered = wait_for(
        "a round forwarding the held events to fail",
        WAIT,
        || async {
            a.agent
                .metric_if_present("ferry_forward_events_total", &failed)
                .await
                .is_ok_and(|v| v.unwrap_or(0.0) > failed_before)
        },
    )
    .await?;
    wait_for("region b's queue to be idle", WAIT, || async {
        mesh.queue_stats("b")
            .await
            .is_ok_and(|q| q.is_some_and(|q| q.depth == 0 && q.in_flight == 0))
    })
    .await?;
    eprintln!("a forwarding round failed {offered:?} after the held events were pending");
    let received = b
        .agent
        .metric_if_present("ferry_forward_received_total", &from_a)
        .await?
        .unwrap_or(0.0);
    anyhow::ensure!(
        received == received_before,
        "b received {} events from a through a blackholed link",
        received - received_before
    );
    anyhow::ensure!(
        oci::manifest_digest(&b_host, "app/one", "v2")
            .await?
            .is_none(),
        "v2 reached b through a blackholed link"
    );
    anyhow::ensure!(
        oci::manifest_digest(&b_host, "app/one", "v1")
            .await?
            .as_deref()
            == Some(v1.as_str()),
        "the delete reached b through a blackholed link"
    );

    let healed = Instant::now();
    b.proxy.set_link(Link::Up);
    mesh.wait_for_tag(&b_host, "app/one", "v2", &v2, WAIT)
        .await?;
    mesh.wait_for_tag(&b_host, "app/two", "v3", &v3, WAIT)
        .await?;
    wait_for("the delete of app/one:v1 to reach b", WAIT, || {
        let host = b_host.clone();
        async move {
            oci::manifest_digest(&host, "app/one", "v1")
                .await
                .is_ok_and(|d| d.is_none())
        }
    })
    .await?;
    eprintln!(
        "after the link healed, the held events arrived within {:?}",
        healed.elapsed()
    );
    wait_for("a's outbox for b to drain", WAIT, || async {
        a.agent
            .metric("ferry_forward_outbox_depth", &[("region", "b")])
            .await
            .is_ok_and(|v| v == 0.0)
    })
    .await?;
    wait_for("worker b to log every job done", WAIT, || {
        let done = worker_b.log_lines_with(&["job done"]);
        async move { done >= 5 }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_third_region_relays_between_two_remote_registries() {
    let mesh = Mesh::start(MeshOptions {
        regions: vec!["a", "b", "c"],
        policies: vec![policy("relay", "pull", "a", "b", json!({"region": "c"}))],
        // The production path: Forward over mTLS, set up by the agents' flags.
        tls: true,
        ..MeshOptions::default()
    })
    .await
    .expect("starting regions a, b and c");
    check(relay_scenario(&mesh).await);
}

async fn relay_scenario(mesh: &Mesh) -> anyhow::Result<()> {
    let dir = fixtures();
    let worker_c = mesh.start_worker("c").await?;
    let digest = push(
        dir.path(),
        10,
        &mesh.region("a").registry.host(),
        "app/relay:v1",
    )
    .await?;
    mesh.wait_for_tag(
        &mesh.region("b").registry.host(),
        "app/relay",
        "v1",
        &digest,
        WAIT,
    )
    .await?;
    wait_for("region c's worker to log the job done", WAIT, || {
        let done = worker_c.log_lines_with(&["job done", "app/relay"]);
        async move { done >= 1 }
    })
    .await?;
    let received = mesh
        .region("c")
        .agent
        .metric(
            "ferry_forward_received_total",
            &[("region", "a"), ("outcome", "enqueued")],
        )
        .await?;
    anyhow::ensure!(
        received >= 1.0,
        "agent c reports {received} events received from a"
    );
    anyhow::ensure!(
        mesh.region("c").agent.log_lines_with(&[
            "serving ferry.v1.Events/Forward",
            "tls=true",
            "mtls=true"
        ]) == 1,
        "agent c did not serve Forward over mTLS"
    );
    // A client the CA does not vouch for is refused before any gRPC is spoken; the same call
    // with the peer certificate reaches the token check (no token: UNAUTHENTICATED).
    let without = mesh.forward_call("c", false).await?;
    eprintln!("Forward without a client certificate: {without:?}");
    anyhow::ensure!(
        without.is_err(),
        "a client without a certificate got a gRPC answer: {without:?}"
    );
    let with = mesh.forward_call("c", true).await?;
    anyhow::ensure!(
        with == Ok(tonic::Code::Unauthenticated),
        "a client with the peer certificate and no token: {with:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bidirectional_regions_converge_without_echo_and_settle_conflicts() {
    let mesh = Mesh::start(MeshOptions {
        regions: vec!["a", "b"],
        policies: vec![policy("a-b", "bidirectional", "a", "b", json!({}))],
        registry_log_level: "info",
        ..MeshOptions::default()
    })
    .await
    .expect("starting regions a and b");
    check(bidirectional_scenario(&mesh).await);
}

async fn bidirectional_scenario(mesh: &Mesh) -> anyhow::Result<()> {
    let dir = fixtures();
    let (a, b) = (mesh.region("a"), mesh.region("b"));
    let (a_host, b_host) = (a.registry.host(), b.registry.host());
    let workers = [mesh.start_worker("a").await?, mesh.start_worker("b").await?];

    // One push on each side: each image appears on the other side, written there once.
    let x = push(dir.path(), 20, &a_host, "app/x:v1").await?;
    let y = push(dir.path(), 21, &b_host, "app/y:v1").await?;
    mesh.wait_for_tag(&b_host, "app/x", "v1", &x, WAIT).await?;
    mesh.wait_for_tag(&a_host, "app/y", "v1", &y, WAIT).await?;
    // Count only once every notification of those writes was handled and every job and
    // forwarded event they made has run: an echo, however slow, would have written by then.
    let quiet = mesh.wait_quiescent(WAIT).await?;
    eprintln!("quiescent {quiet:?} after both copies arrived");
    let log = |r: &ferry_chaos_tests::mesh::MeshRegion| {
        std::fs::read_to_string(r.registry.log_path()).unwrap_or_default()
    };
    let writes = [
        ("a", "app/x", oci::manifest_puts(&log(a), "app/x", "v1")),
        ("b", "app/x", oci::manifest_puts(&log(b), "app/x", "v1")),
        ("a", "app/y", oci::manifest_puts(&log(a), "app/y", "v1")),
        ("b", "app/y", oci::manifest_puts(&log(b), "app/y", "v1")),
    ];
    eprintln!("manifest writes (registry, repository, PUTs): {writes:?}");
    anyhow::ensure!(
        writes.iter().all(|(_, _, n)| *n == 1),
        "each image must be written once per side (skopeo's push, then Ferry's copy): {writes:?}"
    );

    // The same image pushed to a again: b's job finds it there already — counted, nothing moved.
    let again = push(dir.path(), 20, &a_host, "app/x:v1").await?;
    anyhow::ensure!(again == x, "the re-push has the same digest");
    wait_for("b's worker to count the no-op job", WAIT, || async {
        workers[1]
            .metric("ferry_noop_jobs_total", &[("policy", "a-b")])
            .await
            .is_ok_and(|v| v >= 1.0)
    })
    .await?;
    anyhow::ensure!(
        oci::manifest_puts(&log(b), "app/x", "v1") == 1,
        "the no-op job wrote to b"
    );

    // A signature pushed on b after its image follows it to a.
    let (sig_tag, sig) = push_signature(dir.path(), 21, &y, &b_host, "app/y").await?;
    mesh.wait_for_tag(&a_host, "app/y", &sig_tag, &sig, WAIT)
        .await?;

    // A delete on b flows back to a (digest guard on a: it still holds what b deleted).
    oci::delete_manifest(&b_host, "app/y", &y).await?;
    wait_for("b's delete of app/y:v1 to reach a", WAIT, || {
        let host = a_host.clone();
        async move {
            oci::manifest_digest(&host, "app/y", "v1")
                .await
                .is_ok_and(|d| d.is_none())
        }
    })
    .await?;

    // The same tag pushed on both sides at once, with different content.
    let (ca, cb) = tokio::join!(
        push(dir.path(), 30, &a_host, "app/conflict:v1"),
        push(dir.path(), 31, &b_host, "app/conflict:v1"),
    );
    let (ca, cb) = (ca?, cb?);
    let settled = wait_for(
        "both sides to hold one digest of app/conflict:v1",
        WAIT,
        || {
            let (a_host, b_host) = (a_host.clone(), b_host.clone());
            async move {
                let on_a = oci::manifest_digest(&a_host, "app/conflict", "v1")
                    .await
                    .ok()
                    .flatten();
                let on_b = oci::manifest_digest(&b_host, "app/conflict", "v1")
                    .await
                    .ok()
                    .flatten();
                on_a.is_some() && on_a == on_b
            }
        },
    )
    .await?;
    // Stays settled: no flip-flop once both sides agree and nothing is left to run.
    mesh.wait_quiescent(WAIT).await?;
    let on_a = oci::manifest_digest(&a_host, "app/conflict", "v1").await?;
    let on_b = oci::manifest_digest(&b_host, "app/conflict", "v1").await?;
    anyhow::ensure!(on_a == on_b, "diverged again: a={on_a:?} b={on_b:?}");
    let winner = on_a.unwrap_or_default();
    anyhow::ensure!(
        winner == ca || winner == cb,
        "settled on {winner}, pushed {ca} and {cb}"
    );
    let mut decisions = 0.0;
    for w in &workers {
        for outcome in ["kept", "replaced", "restored"] {
            // A worker that decided nothing may not have the series; its scrape must answer.
            decisions += w
                .metric_if_present(
                    "ferry_conflicts_total",
                    &[("policy", "a-b"), ("outcome", outcome)],
                )
                .await?
                .unwrap_or(0.0);
        }
    }
    eprintln!(
        "conflict settled on {} ({}) in {settled:?}; {decisions} decisions recorded",
        winner,
        if winner == ca { "a's push" } else { "b's push" }
    );
    anyhow::ensure!(decisions >= 1.0, "no conflict decision was recorded");
    Ok(())
}
