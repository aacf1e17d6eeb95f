//! Replication gates (README "Gates: signed-only and scan-gated replication"): `only_signed`
//! against real registries with cosign-format signatures made by `ferry_testkit::cosign` (no
//! cosign binary here), `max_severity` against the fake registry's Harbor artifact API, and the
//! timing of both: a signature or a scan arriving after the push releases the held-back tag.
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::clock::now_ms;
use ferry_replicator::config::Config;
use ferry_replicator::event::EventKind;
use ferry_replicator::replicate::{PreparedPolicy, Registries, TagOutcome};
use ferry_replicator::store::history::{MemoryHistory, Retention};
use ferry_replicator::store::queue::memory::MemoryQueue;
use ferry_replicator::store::queue::{Job, RegionLock};
use ferry_replicator::store::Store;
use ferry_replicator::worker::{JobOutcome, Worker, WorkerOptions};
use ferry_testkit::api::put_manifest;
use ferry_testkit::cosign::{
    referrers_index, signature_manifest, Signer, COSIGN_SIGNATURE_TYPE, NOTATION_SIGNATURE_TYPE,
};
use ferry_testkit::{
    harbor_scan_overview, skopeo, Behavior, Blob, FakeRegistry, LayerSpec, LayoutBuilder, Registry,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Pushes `img` as `team/app:v1` and `referrer` (a manifest with `img` as subject) by digest,
/// listed in `img`'s referrers fallback tag index ([`push_referrer`]).
async fn push_with_referrer(
    mut b: LayoutBuilder,
    src: &Registry,
    img: &Blob,
    referrer: (&str, &Blob, &str),
) {
    let (layout_ref, blob, artifact_type) = referrer;
    let index = referrers_index(&mut b, "referrers", &[(blob, artifact_type)]).unwrap();
    let layout = b.finish().unwrap();
    push(&layout, &src.host(), &[]).await;
    push_referrer(&layout, src, img, layout_ref, &index).await;
}

/// Pushes the referrer at `layout_ref` of `layout` by digest, listed in `img`'s referrers fallback
/// tag index (`sha256-<hex>`, the layout's `index`), as clients do on a registry without the
/// referrers API (distribution 2.8). The referrer travels with skopeo under the fallback tag
/// first; the index then replaces it there, `PUT` as its bytes (skopeo will not push an index
/// whose entries carry `artifactType`).
async fn push_referrer(layout: &Path, src: &Registry, img: &Blob, layout_ref: &str, index: &Blob) {
    let fallback = format!("sha256-{}", img.hex());
    skopeo::push_layout(
        layout,
        layout_ref,
        &src.host(),
        &format!("team/app:{fallback}"),
    )
    .await
    .unwrap();
    let bytes = std::fs::read(ferry_testkit::fixtures::blob_path(layout, &index.digest)).unwrap();
    put_manifest(&src.url(), "team/app", &fallback, &index.media_type, bytes)
        .await
        .unwrap();
}

/// Pushes a fresh image (from `seed`) as `team/app:v1` with a notation signature as its referrer.
async fn push_notation_signed(dir: &Path, src: &Registry, seed: u64) -> Blob {
    let (mut b, img) = image_layout(dir, seed);
    let notation = b
        .artifact(
            "notation",
            NOTATION_SIGNATURE_TYPE,
            b"{\"payload\":\"jws\"}",
            "application/jose+json",
            Some(&img),
        )
        .unwrap();
    push_with_referrer(
        b,
        src,
        &img,
        ("notation", &notation, NOTATION_SIGNATURE_TYPE),
    )
    .await;
    img
}

/// A layout holding one small image (`img`), to which signatures are added.
fn image_layout(dir: &Path, seed: u64) -> (LayoutBuilder, Blob) {
    let mut b = LayoutBuilder::new(&dir.join(format!("layout-{seed}"))).unwrap();
    let img = b.image("img", &[LayerSpec { seed, size: 8192 }]).unwrap();
    (b, img)
}

/// [`image_layout`] with a cosign signature of its image by `signer` (identity `team/app`) at
/// layout ref `sig`.
fn signed_image(dir: &Path, seed: u64, signer: &Signer) -> (LayoutBuilder, Blob) {
    let (mut b, img) = image_layout(dir, seed);
    let sig = signer.sign("team/app", &img.digest).unwrap();
    signature_manifest(&mut b, "sig", &[sig], None).unwrap();
    (b, img)
}

/// cosign's legacy signature tag of `image`.
fn sig_tag(image: &Blob) -> String {
    format!("sha256-{}.sig", image.hex())
}

/// The `only_signed` policy fields, with `signer`'s public key written to `dir` when given.
fn only_signed(dir: &Path, signer: Option<&Signer>) -> Value {
    match signer {
        Some(s) => {
            let key = s.write_public_key(dir, "cosign.pub").unwrap();
            json!({"only_signed": true, "signature_public_key_file": key})
        }
        None => json!({"only_signed": true}),
    }
}

/// The one tag result of `tag` in a sync report.
fn result<'a>(report: &'a Value, tag: &str) -> &'a Value {
    report["tags"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["tag"] == tag))
        .unwrap_or_else(|| panic!("no result for {tag}: {report:#}"))
}

/// Pushes `img` as `team/app:v1`, and each `(layout ref, tag)` after it, to `host`.
async fn push(layout: &Path, host: &str, extra: &[(&str, String)]) {
    skopeo::push_layout(layout, "img", host, "team/app:v1")
        .await
        .unwrap();
    for (r, tag) in extra {
        skopeo::push_layout(layout, r, host, &format!("team/app:{tag}"))
            .await
            .unwrap();
    }
}

/// `ferry sync` of a policy with `only_signed` (and `signer`'s key when given), which must succeed;
/// its JSON report.
async fn gated_sync(dir: &Path, src: &Registry, dst: &Registry, signer: Option<&Signer>) -> Value {
    let cfg = write_config(dir, &src.url(), &dst.url(), only_signed(dir, signer));
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    report
}

/// `team/app:v1` was copied, and `dst` holds `img` under it.
async fn assert_copied(report: &Value, dst: &Registry, img: &Blob) {
    assert_eq!(result(report, "v1")["outcome"], "copied", "{report:#}");
    assert_eq!(raw_digest(&dst.host(), "team/app:v1").await, img.digest);
}

/// Asserts `tag` was blocked by `gate` with a reason containing `why`, and is not on `dst`.
async fn assert_blocked(report: &Value, dst: &Registry, gate: &str, why: &str) {
    let r = result(report, "v1");
    assert_eq!(r["outcome"], "blocked", "{report:#}");
    assert_eq!(r["gate"], gate, "{report:#}");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(why), "reason {reason:?} lacks {why:?}");
    assert_eq!(manifest_status(&dst.url(), "team/app", "v1").await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_with_a_cosign_signature_by_the_key_is_copied_with_its_signature() {
    let (src, dst, dir) = two_registries().await;
    let signer = Signer::generate().unwrap();
    let (mut b, img) = image_layout(dir.path(), 60);
    let sig = signer
        .sign(&format!("{}/team/app", src.host()), &img.digest)
        .unwrap();
    signature_manifest(&mut b, "sig", &[sig], None).unwrap();
    let layout = b.finish().unwrap();
    push(&layout, &src.host(), &[("sig", sig_tag(&img))]).await;
    let report = gated_sync(dir.path(), &src, &dst, Some(&signer)).await;
    assert_copied(&report, &dst, &img).await;
    let tags = skopeo::tags(&dst.host(), "team/app").await.unwrap();
    assert!(
        tags.contains(&sig_tag(&img)),
        "the signature followed: {tags:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_image_is_blocked_naming_the_gate() {
    let (src, dst, dir) = two_registries().await;
    let signer = Signer::generate().unwrap();
    let (b, img) = image_layout(dir.path(), 61);
    push(&b.finish().unwrap(), &src.host(), &[]).await;
    let cfg = write_config(
        dir.path(),
        &src.url(),
        &dst.url(),
        only_signed(dir.path(), Some(&signer)),
    );
    let (out, report) = sync(&cfg).await;
    // Held back on purpose: the destination is as the policy wants it.
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_blocked(
        &report,
        &dst,
        "only_signed",
        &format!("no signature for {}", img.digest),
    )
    .await;
    assert_eq!(result(&report, "v1")["digest"], img.digest);
    // The summary on a terminal says it too.
    let plain = sync_plain(&cfg).await;
    assert!(plain.stdout.contains("1 blocked"), "{}", plain.stdout);
    assert!(
        plain.stdout.contains("blocked team/app:v1 by only_signed"),
        "{}",
        plain.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_signed_by_another_key_is_blocked_saying_the_signature_did_not_verify() {
    let (src, dst, dir) = two_registries().await;
    let (trusted, other) = (Signer::generate().unwrap(), Signer::generate().unwrap());
    let (b, img) = signed_image(dir.path(), 62, &other);
    push(&b.finish().unwrap(), &src.host(), &[("sig", sig_tag(&img))]).await;
    let report = gated_sync(dir.path(), &src, &dst, Some(&trusted)).await;
    assert_blocked(&report, &dst, "only_signed", "does not verify against").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_whose_payload_names_another_digest_does_not_count() {
    let (src, dst, dir) = two_registries().await;
    let signer = Signer::generate().unwrap();
    let (mut b, img) = image_layout(dir.path(), 63);
    let other = b
        .image(
            "other",
            &[LayerSpec {
                seed: 64,
                size: 8192,
            }],
        )
        .unwrap();
    // A valid signature of another image, stored under this image's signature tag.
    let sig = signer.sign("team/app", &other.digest).unwrap();
    signature_manifest(&mut b, "sig", &[sig], None).unwrap();
    push(&b.finish().unwrap(), &src.host(), &[("sig", sig_tag(&img))]).await;
    let report = gated_sync(dir.path(), &src, &dst, Some(&signer)).await;
    assert_blocked(
        &report,
        &dst,
        "only_signed",
        &format!(
            "names {}, not the image's digest {}",
            other.digest, img.digest
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_a_cosign_signature_tag_is_enough() {
    let (src, dst, dir) = two_registries().await;
    // Its signature is not checked without a key: only its existence.
    let (b, img) = signed_image(dir.path(), 65, &Signer::generate().unwrap());
    push(&b.finish().unwrap(), &src.host(), &[("sig", sig_tag(&img))]).await;
    let report = gated_sync(dir.path(), &src, &dst, None).await;
    assert_copied(&report, &dst, &img).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_a_notation_signature_referrer_is_enough() {
    let (src, dst, dir) = two_registries().await;
    let img = push_notation_signed(dir.path(), &src, 66).await;
    let report = gated_sync(dir.path(), &src, &dst, None).await;
    assert_copied(&report, &dst, &img).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_key_a_notation_signature_is_blocked_saying_it_cannot_be_verified() {
    let (src, dst, dir) = two_registries().await;
    push_notation_signed(dir.path(), &src, 67).await;
    let signer = Signer::generate().unwrap();
    let report = gated_sync(dir.path(), &src, &dst, Some(&signer)).await;
    assert_blocked(
        &report,
        &dst,
        "only_signed",
        "1 notation signature(s) found, which cannot be verified with a cosign key",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cosign_signature_referrer_that_verifies_lets_the_image_through() {
    let (src, dst, dir) = two_registries().await;
    let signer = Signer::generate().unwrap();
    let (mut b, img) = image_layout(dir.path(), 68);
    let sig = signer.sign("team/app", &img.digest).unwrap();
    let referrer = signature_manifest(&mut b, "sig", &[sig], Some(&img)).unwrap();
    push_with_referrer(b, &src, &img, ("sig", &referrer, COSIGN_SIGNATURE_TYPE)).await;
    let report = gated_sync(dir.path(), &src, &dst, Some(&signer)).await;
    assert_copied(&report, &dst, &img).await;
}

const TOKEN: &str = "gates-test-token";

/// cosign signs after the push: `ferry serve` holds the image back on its push event, and its
/// signature's own event (the `.sig` tag push) releases it — no full sync in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_blocked_on_its_push_event_is_replicated_when_its_signature_is_pushed() {
    let keys = tempfile::tempdir().unwrap();
    let signer = Signer::generate().unwrap();
    let listen = free_local_addr();
    let mut policy = only_signed(keys.path(), Some(&signer));
    policy["trigger"] = json!({"type": "event_based"});
    let RegistryPair {
        src,
        dst,
        dir,
        config,
    } = registry_pair(Some(&listen), TOKEN, policy).await;
    let mut serve = Serve::start(&config, &listen, TOKEN, &[], dir.path().join("serve.log")).await;
    let (b, img) = signed_image(dir.path(), 69, &signer);
    let layout = b.finish().unwrap();

    push(&layout, &src.host(), &[]).await;
    let blocked = eventually(Duration::from_secs(30), || async {
        reqwest::get(format!("http://{listen}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .lines()
            .any(|l| l == r#"ferry_gate_blocked_total{policy="test",gate="only_signed"} 1"#)
    })
    .await;
    assert!(blocked, "the push event was not blocked:\n{}", serve.log());
    assert_eq!(manifest_status(&dst.url(), "team/app", "v1").await, 404);

    skopeo::push_layout(
        &layout,
        "sig",
        &src.host(),
        &format!("team/app:{}", sig_tag(&img)),
    )
    .await
    .unwrap();
    let arrived = eventually(Duration::from_secs(30), || async {
        manifest_status(&dst.url(), "team/app", "v1").await == 200
    })
    .await;
    assert!(
        arrived,
        "the signature did not release the image:\n{}",
        serve.log()
    );
    assert_eq!(raw_digest(&dst.host(), "team/app:v1").await, img.digest);
    let with_signature = eventually(Duration::from_secs(30), || async {
        manifest_status(&dst.url(), "team/app", &sig_tag(&img)).await == 200
    })
    .await;
    assert!(with_signature, "{}", serve.log());
    assert!(serve.terminate().await.success(), "{}", serve.log());
}

/// A fake Harbor source (`team/app:v1`, `team/app:v2`) whose scans are `scans(v1, v2)`.
async fn harbor_source(
    scans: impl FnOnce(&str, &str) -> HashMap<String, Value>,
) -> (FakeRegistry, String, String) {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let (v1, _) = seed_image(&src, "team/app", "v1", vec![1u8; 1000]);
    let (v2, _) = seed_image(&src, "team/app", "v2", vec![2u8; 1000]);
    let overviews = scans(&v1, &v2);
    src.set_behavior(|b| b.harbor_scans = Some(overviews));
    (src, v1, v2)
}

fn scanned(digest: &str, status: &str, severity: &str) -> (String, Value) {
    (
        format!("team/app@{digest}"),
        harbor_scan_overview(status, severity, &[(severity, 2)]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_scanned_above_max_severity_is_blocked_and_one_at_or_below_is_copied() {
    let (src, _, v2) = harbor_source(|v1, v2| {
        HashMap::from([
            scanned(v1, "Success", "High"),
            scanned(v2, "Success", "Medium"),
        ])
    })
    .await;
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({"max_severity": "MEDIUM"}),
    );
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_blocked(
        &report,
        &dst,
        "max_severity",
        "severity high, above max_severity medium (High: 2)",
    )
    .await;
    assert_eq!(result(&report, "v2")["outcome"], "copied", "{report:#}");
    assert_eq!(result(&report, "v2")["digest"], v2);
    assert_eq!(manifest_status(&dst.url(), "team/app", "v2").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unscanned_images_are_blocked_by_default_and_copied_with_allow_unscanned() {
    // v1 never scanned, v2's scan still running.
    let (src, _, _) = harbor_source(|_, v2| HashMap::from([scanned(v2, "Running", "")])).await;
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({"max_severity": "critical"}),
    );
    let (_, report) = sync(&cfg).await;
    assert_blocked(&report, &dst, "max_severity", "Harbor has not scanned it").await;
    let v2 = result(&report, "v2");
    assert_eq!(v2["outcome"], "blocked", "{report:#}");
    assert!(
        v2["reason"]
            .as_str()
            .unwrap()
            .contains("scan has not finished (scan_status Running)"),
        "{report:#}"
    );

    let cfg = write_config(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({"max_severity": "critical", "allow_unscanned": true}),
    );
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(outcomes(&report, "copied"), 2, "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_severity_on_a_source_without_harbors_api_blocks_saying_it_needs_harbor() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    seed_image(&src, "team/app", "v1", vec![3u8; 1000]);
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({"max_severity": "high"}),
    );
    let (_, report) = sync(&cfg).await;
    assert_blocked(
        &report,
        &dst,
        "max_severity",
        "max_severity needs a Harbor source registry",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_harbor_artifact_request_serves_the_label_filter_and_the_scan_gate() {
    let (src, v1, _) = harbor_source(|v1, v2| {
        HashMap::from([scanned(v1, "Success", "Low"), scanned(v2, "Success", "Low")])
    })
    .await;
    src.set_behavior(|b| {
        b.harbor_labels = Some(HashMap::from([(
            "team/app:v1".to_string(),
            vec!["release".to_string()],
        )]))
    });
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({"max_severity": "low", "filters": [{"type": "label", "value": "release"}]}),
    );
    src.clear_request_log();
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(result(&report, "v1")["outcome"], "copied", "{report:#}");
    assert_eq!(result(&report, "v1")["digest"], v1);
    assert_eq!(result(&report, "v2")["outcome"], "skipped", "{report:#}");
    let asked: Vec<String> = src
        .request_log()
        .into_iter()
        .filter(|(_, p)| p.contains("/api/v2.0/") && p.contains("/artifacts/v1"))
        .map(|(_, p)| p)
        .collect();
    assert_eq!(asked.len(), 1, "{asked:?}");
}

/// A worker over an in-process queue and history, and the config it runs.
fn worker_for(
    src: &str,
    dst: &str,
    dir: &Path,
    policy: Value,
) -> (Config, Registries, Arc<MemoryQueue>, Arc<Worker>) {
    let cfg = write_config(dir, src, dst, policy);
    let config = Config::load(&cfg).expect("config");
    let registries = Registries::from_config(&config).expect("registries");
    let queue = Arc::new(MemoryQueue::new(RetryPolicy::default()));
    let worker = Arc::new(
        Worker::new(
            &config,
            &registries,
            &Store::new(
                queue.clone(),
                Arc::new(MemoryHistory::new(Retention::default())),
            ),
            WorkerOptions::default(),
        )
        .expect("worker"),
    );
    (config, registries, queue, worker)
}

fn push_job(repository: &str, reference: &str) -> Job {
    Job {
        event_time_ms: now_ms(),
        ..Job::new("test", EventKind::Push, repository, reference)
    }
}

/// The one destination's outcome of a push job.
async fn run(worker: &Worker, job: &Job) -> TagOutcome {
    match worker
        .execute(job, &CancellationToken::new())
        .await
        .expect("job")
    {
        JobOutcome::Pushed(mut o) if o.len() == 1 => o.remove(0).1,
        other => panic!("{other:?}"),
    }
}

/// Harbor scans after the push: the push's job is blocked (no scan yet), and the job of the
/// `SCANNING_COMPLETED` webhook (a push by the scanned digest) copies the tags at that digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_blocked_before_its_scan_is_copied_by_the_scan_completed_job() {
    let (src, v1, _) = harbor_source(|_, _| HashMap::new()).await;
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = json!({"trigger": {"type": "event_based"}, "max_severity": "high",
                        "filters": [{"type": "tag", "value": "v1"}]});
    let (_, _, _, worker) = worker_for(&src.url(), &dst.url(), dir.path(), policy);
    let outcome = run(&worker, &push_job("team/app", "v1")).await;
    assert!(
        matches!(&outcome, TagOutcome::Blocked { reason, .. } if reason.contains("has not scanned")),
        "{outcome:?}"
    );
    assert_eq!(manifest_status(&dst.url(), "team/app", "v1").await, 404);

    let overview = HashMap::from([scanned(&v1, "Success", "Low")]);
    src.set_behavior(|b| b.harbor_scans = Some(overview));
    let outcome = run(&worker, &push_job("team/app", &v1)).await;
    assert!(
        matches!(&outcome, TagOutcome::Skipped { reason } if reason.contains("v1 copied")),
        "{outcome:?}"
    );
    assert_eq!(manifest_status(&dst.url(), "team/app", "v1").await, 200);
    // v2 is outside the tag filter: the digest job copied only what the policy covers.
    assert_eq!(manifest_status(&dst.url(), "team/app", "v2").await, 404);
}

/// A blocked tag is a decision: the safety net does not enqueue it again while the worker's
/// decision about that digest is remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_safety_net_does_not_enqueue_a_blocked_tag_again() {
    use ferry_replicator::control::safety_net::{ReconcileMetrics, Reconciler};
    let (src, dst, dir) = two_registries().await;
    push_image(dir.path(), 70, &src.host(), "team/app:v1").await;
    let policy = json!({"trigger": {"type": "event_based"}, "only_signed": true});
    let (config, registries, queue, worker) =
        worker_for(&src.url(), &dst.url(), dir.path(), policy);
    let r = Reconciler::new(
        &config,
        &registries,
        queue.clone(),
        RegionLock::new(queue.clone(), "test"),
        ReconcileMetrics::default(),
    )
    .unwrap();
    let prepared = PreparedPolicy::new(&config.policies[0], &registries).unwrap();
    // Before any decision the missing tag is enqueued…
    let pass = r.pass(&prepared).await.unwrap();
    assert_eq!(
        (pass.missing, pass.enqueued, pass.held_back),
        (1, 1, 0),
        "{pass:?}"
    );
    drain_queue(queue.as_ref(), worker.clone()).await;
    assert_eq!(manifest_status(&dst.url(), "team/app", "v1").await, 404);
    // …after the worker blocked it, not again.
    let pass = r.pass(&prepared).await.unwrap();
    assert_eq!(
        (pass.missing, pass.enqueued, pass.held_back),
        (1, 0, 1),
        "{pass:?}"
    );
}

/// A signature stored as an OCI 1.1 referrer arrives as a push by digest (its own event on a
/// registry with the referrers API): its job releases the subject's held-back tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_referrer_pushed_by_digest_releases_its_subjects_tags() {
    let (src, dst, dir) = two_registries().await;
    let (mut b, img) = image_layout(dir.path(), 71);
    let notation = b
        .artifact(
            "notation",
            NOTATION_SIGNATURE_TYPE,
            b"{\"payload\":\"jws\"}",
            "application/jose+json",
            Some(&img),
        )
        .unwrap();
    let index =
        referrers_index(&mut b, "referrers", &[(&notation, NOTATION_SIGNATURE_TYPE)]).unwrap();
    let layout = b.finish().unwrap();
    let policy = json!({"trigger": {"type": "event_based"}, "only_signed": true,
                        "filters": [{"type": "tag", "value": "v*"}]});
    let (_, _, _, worker) = worker_for(&src.url(), &dst.url(), dir.path(), policy);
    push(&layout, &src.host(), &[]).await;
    let outcome = run(&worker, &push_job("team/app", "v1")).await;
    assert!(
        matches!(&outcome, TagOutcome::Blocked { .. }),
        "{outcome:?}"
    );

    push_referrer(&layout, &src, &img, "notation", &index).await;
    run(&worker, &push_job("team/app", &notation.digest)).await;
    assert_eq!(raw_digest(&dst.host(), "team/app:v1").await, img.digest);
    assert_eq!(
        manifest_status(&dst.url(), "team/app", &notation.digest).await,
        200,
        "the signature followed its subject"
    );
}

/// A gated policy that does not copy referrers still hears a signature's tag: its job releases
/// the subject's tags, and the signature itself stays behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_tag_releases_its_subject_under_a_policy_that_does_not_copy_referrers() {
    let (src, dst, dir) = two_registries().await;
    let (b, img) = signed_image(dir.path(), 72, &Signer::generate().unwrap());
    let layout = b.finish().unwrap();
    let policy = json!({"trigger": {"type": "event_based"}, "only_signed": true,
                        "copy_referrers": false, "filters": [{"type": "tag", "value": "v*"}]});
    let (_, _, _, worker) = worker_for(&src.url(), &dst.url(), dir.path(), policy);
    push(&layout, &src.host(), &[]).await;
    let outcome = run(&worker, &push_job("team/app", "v1")).await;
    assert!(
        matches!(&outcome, TagOutcome::Blocked { .. }),
        "{outcome:?}"
    );

    skopeo::push_layout(
        &layout,
        "sig",
        &src.host(),
        &format!("team/app:{}", sig_tag(&img)),
    )
    .await
    .unwrap();
    let outcome = run(&worker, &push_job("team/app", &sig_tag(&img))).await;
    assert!(
        matches!(&outcome, TagOutcome::Skipped { reason } if reason.contains("v1 copied")),
        "{outcome:?}"
    );
    assert_eq!(raw_digest(&dst.host(), "team/app:v1").await, img.digest);
    assert_eq!(
        manifest_status(&dst.url(), "team/app", &sig_tag(&img)).await,
        404
    );
}
