//! Interrupted transfers continue instead of starting over: source downloads cut off mid-body
//! resume with `Range`; a chunked upload checkpointed on its job continues on the destination
//! (distribution 2.8) from the confirmed offset when another worker reclaims the job, and starts
//! over — with a correct blob — when the destination cannot continue the session.
//!
//! Sources are the fake registry (cut-offs, ignored `Range`, and a log of every `Range` asked
//! for); destinations are real `docker-registry` processes where their exact behaviour matters
//! (signed session state, refusal of a session whose data moved past it), the fake elsewhere.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::clock::now_ms;
use ferry_replicator::config::Config;
use ferry_replicator::event::EventKind;
use ferry_replicator::oci::{BlobUpload, Digest, DigestVerifier, RegistryClient};
use ferry_replicator::replicate::Registries;
use ferry_replicator::store::history::{MemoryHistory, Retention};
use ferry_replicator::store::queue::{Checkpoints, Job, JobQueue, MemoryQueue, UploadCheckpoint};
use ferry_replicator::store::Store;
use ferry_replicator::transfer::READ_RESUMES;
use ferry_replicator::worker::{Worker, WorkerOptions};
use ferry_testkit::{sha256_digest, Behavior, FakeRegistry, Registry, RegistryOptions};
use serde_json::json;
use tokio::io::AsyncWriteExt;

const MIB: usize = 1024 * 1024;
/// Not a multiple of the chunk size (nor of a hash block).
const LAYER_SIZE: usize = 5 * MIB + 12_345;

/// Deterministic bytes that differ from chunk to chunk.
fn layer_bytes() -> Vec<u8> {
    (0..LAYER_SIZE as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

struct Image {
    manifest: String,
    layer: String,
    config_size: u64,
}

/// Stores a one-layer image in the fake as `team/app:v1`.
fn seed(fake: &FakeRegistry, layer: Vec<u8>) -> Image {
    let (manifest, layer) = seed_image(fake, "team/app", "v1", layer);
    Image {
        manifest,
        layer,
        config_size: IMAGE_CONFIG.len() as u64,
    }
}

/// The blob as a real registry serves it, hashed here.
async fn blob_digest_on(registry: &Registry, digest: &str) -> Option<String> {
    let resp = reqwest::get(format!("{}/v2/team/app/blobs/{digest}", registry.url()))
        .await
        .unwrap();
    if !resp.status().is_success() {
        return None;
    }
    Some(sha256_digest(&resp.bytes().await.unwrap()))
}

/// The `Range`s the source was asked for (blob GETs without one are left out).
fn ranges(fake: &FakeRegistry) -> Vec<String> {
    fake.blob_ranges().into_iter().flatten().collect()
}

/// A config: fake source `src`, destination `dst` with 1 MiB chunks, policy `test` (`extra`).
fn config_for(dir: &std::path::Path, src: &str, dst: &str, extra: serde_json::Value) -> Config {
    let mut dst_reg = registry("dst", dst);
    dst_reg["chunk_size"] = json!(MIB);
    let path = write_config_with(dir, vec![registry("src", src), dst_reg], policy(extra));
    Config::load(&path).expect("config")
}

// ---------------------------------------------------------------------------------------------
// Downloads

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_off_mid_body_resumes_from_the_last_byte_received() {
    for chunked in [false, true] {
        let fake = FakeRegistry::start(Behavior::default()).await.unwrap();
        let image = seed(&fake, layer_bytes());
        // The first read breaks after 1 MiB, the resumed one after 1 MiB more.
        fake.set_behavior(|b| b.cut_blob_reads = Some((2, MIB)));
        let dst = Registry::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(
            dir.path(),
            &fake.url(),
            &dst.url(),
            json!({"copy_by_chunk": chunked}),
        );
        let (out, report) = sync(&cfg).await;
        assert_eq!(out.code, 0, "chunked {chunked}: {report:#}\n{}", out.stderr);
        assert_eq!(
            ranges(&fake),
            [format!("bytes={MIB}-"), format!("bytes={}-", 2 * MIB)],
            "chunked {chunked}: each read continues where the previous one broke off"
        );
        assert_eq!(
            blob_digest_on(&dst, &image.layer).await.as_deref(),
            Some(image.layer.as_str())
        );
        assert_eq!(report["stats"]["blobs_copied"], 2, "{report:#}");
        assert_eq!(
            report["stats"]["bytes_copied"],
            json!(LAYER_SIZE as u64 + image.config_size),
            "every byte crossed once: {report:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_ignores_range_is_read_again_and_the_prefix_dropped() {
    let fake = FakeRegistry::start(Behavior {
        ignore_range: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let image = seed(&fake, layer_bytes());
    fake.set_behavior(|b| b.cut_blob_reads = Some((1, 3 * MIB)));
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &fake.url(), &dst.url(), json!({}));
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{report:#}\n{}", out.stderr);
    assert_eq!(ranges(&fake), [format!("bytes={}-", 3 * MIB)]);
    assert_eq!(
        blob_digest_on(&dst, &image.layer).await.as_deref(),
        Some(image.layer.as_str())
    );
    assert_eq!(
        report["stats"]["bytes_copied"],
        json!(LAYER_SIZE as u64 + image.config_size),
        "the dropped prefix is not sent twice: {report:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_keeps_breaking_fails_cleanly() {
    let fake = FakeRegistry::start(Behavior::default()).await.unwrap();
    let image = seed(&fake, layer_bytes());
    fake.set_behavior(|b| b.cut_blob_reads = Some((1000, MIB / 2)));
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &fake.url(), &dst.url(), json!({}));
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 1, "{report:#}\n{}", out.stderr);
    let error = report["tags"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("registry src") && error.contains(&image.layer),
        "{error}"
    );
    // Three attempts of the blob (the transfer's own retries), each resuming READ_RESUMES times.
    assert_eq!(
        ranges(&fake).len(),
        3 * READ_RESUMES as usize,
        "{:?}",
        ranges(&fake)
    );
    assert_eq!(blob_digest_on(&dst, &image.layer).await, None);
}

// ---------------------------------------------------------------------------------------------
// Uploads

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_chunk_is_continued_from_the_confirmed_offset_in_the_same_session() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let image = seed(&src, layer_bytes());
    // The layer's 3rd chunk fails (the config blob's one chunk starts at 0).
    let dst = FakeRegistry::start(Behavior {
        fail_patch_at: Some(2 * MIB),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut dst_reg = registry("dst", &dst.url());
    dst_reg["chunk_size"] = json!(MIB);
    let cfg = write_config_with(
        dir.path(),
        vec![registry("src", &src.url()), dst_reg],
        policy(json!({"copy_by_chunk": true})),
    );
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{report:#}\n{}", out.stderr);
    assert!(dst.has_blob(&image.layer));
    let log = dst.request_log();
    let sessions: Vec<&String> = log
        .iter()
        .filter(|(m, _)| m == "POST")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        sessions.len(),
        2,
        "one session per blob, none restarted: {log:?}"
    );
    let status_checks = log
        .iter()
        .filter(|(m, p)| m == "GET" && p.contains("/blobs/uploads/"))
        .count();
    assert_eq!(status_checks, 1, "{log:?}");
    // Two chunks were confirmed before the failure: the retry reads the source from there.
    assert_eq!(ranges(&src), [format!("bytes={}-", 2 * MIB)]);
    assert_eq!(
        report["stats"]["bytes_copied"],
        json!(LAYER_SIZE as u64 + MIB as u64 + image.config_size),
        "the failed chunk is the only one sent twice: {report:#}"
    );
}

/// A worker on a memory queue with the config's policies (`w1`, short polls).
struct WorkerSetup {
    queue: Arc<MemoryQueue>,
    worker: Arc<Worker>,
    registries: Registries,
}

fn worker_for(config: &Config) -> WorkerSetup {
    let registries = Registries::from_config(config).expect("registries");
    let queue = Arc::new(MemoryQueue::new(RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(50),
        max: Duration::from_millis(200),
    }));
    let opts = WorkerOptions {
        consumer: "w1".into(),
        lease: Duration::from_secs(5),
        poll_interval: Duration::from_millis(20),
        ..Default::default()
    };
    let history = Arc::new(MemoryHistory::new(Retention::default()));
    let worker = Arc::new(
        Worker::new(
            config,
            &registries,
            &Store::new(queue.clone(), history),
            opts,
        )
        .expect("worker"),
    );
    WorkerSetup {
        queue,
        worker,
        registries,
    }
}

/// Runs the worker until the queue is empty.
async fn drain(s: &WorkerSetup) {
    drain_queue(s.queue.as_ref(), s.worker.clone()).await;
}

/// What a worker that died mid-upload leaves: a session on `dst` holding the first `chunks` MiB of
/// the layer, and its job — lease expired — with the checkpoint of that session.
async fn dead_worker_left(
    s: &WorkerSetup,
    image: &Image,
    layer: &[u8],
    chunks: usize,
) -> (Job, BlobUpload) {
    let dst: Arc<RegistryClient> = s.registries.get("test", "dst").unwrap();
    let digest: Digest = image.layer.parse().unwrap();
    let mut upload = dst.start_upload("team/app").await.unwrap();
    let mut hasher = DigestVerifier::new(&digest).unwrap();
    for chunk in layer[..chunks * MIB].chunks(MIB) {
        hasher.update(chunk);
        upload = dst
            .patch_chunk(&upload, &digest, bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    assert_eq!(upload.offset, (chunks * MIB) as u64);
    let job = Job {
        digest: Some(image.manifest.clone()),
        event_time_ms: now_ms(),
        ..Job::new("test", EventKind::Push, "team/app", "v1")
    };
    s.queue.enqueue(job).await.unwrap();
    let lease = s
        .queue
        .claim("dead-worker", 1, Duration::from_millis(100))
        .await
        .unwrap()
        .remove(0);
    s.queue
        .checkpoint(
            &lease,
            &UploadCheckpoint {
                destination: "dst".into(),
                repository: "team/app".into(),
                digest: image.layer.clone(),
                size: layer.len() as u64,
                location: upload.location.to_string(),
                offset: upload.offset,
                hash_state: hasher.save(),
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    (lease.job, upload)
}

/// The upload session id in a session URL (`…/blobs/uploads/<id>?…`).
fn session_id(url: &str) -> String {
    let path = url.split('?').next().unwrap();
    path.rsplit('/').next().unwrap().to_string()
}

/// The completing `PUT`s of `digest` in a distribution access log: their session ids.
fn completing_sessions(log: &str, digest: &str) -> Vec<String> {
    let hex = digest.trim_start_matches("sha256:");
    log.lines()
        .filter(|l| l.contains("\"PUT /v2/") && l.contains("/blobs/uploads/") && l.contains(hex))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/v2/")))
        .map(session_id)
        .collect()
}

/// A fake source holding a one-layer image, a real distribution destination logging every
/// request, and a chunked, event-based policy's worker between them.
struct OnDistribution {
    src: FakeRegistry,
    layer: Vec<u8>,
    image: Image,
    dst: Registry,
    _dir: tempfile::TempDir,
    s: WorkerSetup,
}

async fn on_distribution() -> OnDistribution {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let layer = layer_bytes();
    let image = seed(&src, layer.clone());
    let dst = Registry::start_with(RegistryOptions {
        log_level: "info",
        ..RegistryOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({"copy_by_chunk": true, "trigger": {"type": "event_based"}}),
    );
    let s = worker_for(&config);
    OnDistribution {
        src,
        layer,
        image,
        dst,
        _dir: dir,
        s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaimed_job_continues_the_checkpointed_upload_on_distribution() {
    let OnDistribution {
        src,
        layer,
        image,
        dst,
        _dir,
        s,
    } = on_distribution().await;
    let (job, session) = dead_worker_left(&s, &image, &layer, 3).await;

    drain(&s).await;
    assert_eq!(
        raw_digest(&dst.host(), "team/app:v1").await,
        image.manifest,
        "the tag is on the destination"
    );
    assert_eq!(
        blob_digest_on(&dst, &image.layer).await.as_deref(),
        Some(image.layer.as_str())
    );
    assert_eq!(
        ranges(&src),
        [format!("bytes={}-", 3 * MIB)],
        "only the part after the checkpoint was read"
    );
    let moved = s.worker.stats.transfer.snapshot();
    assert_eq!(
        moved.bytes_copied,
        (LAYER_SIZE - 3 * MIB) as u64 + image.config_size,
        "only the part after the checkpoint was sent: {moved:?}"
    );
    assert_eq!(
        moved.bytes_planned, moved.bytes_copied,
        "progress counts what this run moves"
    );
    let log = std::fs::read_to_string(dst.log_path()).unwrap();
    assert_eq!(
        completing_sessions(&log, &image.layer),
        [session_id(session.location.as_str())],
        "completed in the session the dead worker opened"
    );
    assert!(
        s.queue.checkpoints(&job.id).await.unwrap().is_empty(),
        "the acked job took its checkpoint along"
    );
}

/// Sends a `PATCH` of `len` bytes to `session` but only `sent` of them, then drops the connection:
/// a worker killed while its chunk was on the wire.
async fn cut_patch(session: &BlobUpload, len: usize, sent: usize) {
    let url = &session.location;
    let host = format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap()
    );
    let mut tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let head = format!(
        "PATCH {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Range: {}-{}\r\nContent-Length: {len}\r\n\r\n",
        session.offset,
        session.offset + len as u64 - 1
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&vec![7u8; sent]).await.unwrap();
    tcp.flush().await.unwrap();
    // Let the registry take the bytes in before the connection goes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(tcp);
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_mid_chunk_starts_over_with_a_correct_blob_on_distribution() {
    let OnDistribution {
        src,
        layer,
        image,
        dst,
        _dir,
        s,
    } = on_distribution().await;
    let (_, session) = dead_worker_left(&s, &image, &layer, 2).await;
    // The dead worker's next chunk was cut off mid-body: the registry's data moved past the
    // checkpointed session state, and distribution refuses that session from now on.
    cut_patch(&session, MIB, 300_000).await;

    drain(&s).await;
    assert_eq!(raw_digest(&dst.host(), "team/app:v1").await, image.manifest);
    assert_eq!(
        blob_digest_on(&dst, &image.layer).await.as_deref(),
        Some(image.layer.as_str()),
        "never a blob with the wrong digest"
    );
    assert!(
        ranges(&src).is_empty(),
        "started over from the first byte: {:?}",
        ranges(&src)
    );
    assert_eq!(
        s.worker.stats.transfer.snapshot().bytes_copied,
        LAYER_SIZE as u64 + image.config_size
    );
    let log = std::fs::read_to_string(dst.log_path()).unwrap();
    let old = session_id(session.location.as_str());
    assert!(
        log.lines().any(
            |l| l.contains(&format!("\"GET /v2/team/app/blobs/uploads/{old}?"))
                && l.contains("HTTP/1.1\" 404 ")
        ),
        "the registry refused the session's status"
    );
    let completed = completing_sessions(&log, &image.layer);
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_ne!(completed[0], old, "a new session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_status_that_disagrees_or_is_garbled_starts_over() {
    for garbled in [false, true] {
        let src = FakeRegistry::start(Behavior::default()).await.unwrap();
        let layer = layer_bytes();
        let image = seed(&src, layer.clone());
        let dst = FakeRegistry::start(Behavior::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = config_for(
            dir.path(),
            &src.url(),
            &dst.url(),
            json!({"copy_by_chunk": true, "trigger": {"type": "event_based"}}),
        );
        let s = worker_for(&config);
        let (job, session) = dead_worker_left(&s, &image, &layer, 2).await;
        if garbled {
            dst.set_behavior(|b| b.upload_status_range = Some("0-2097151x".into()));
        } else {
            // The checkpoint claims one chunk less than the session holds.
            let lease = s
                .queue
                .claim("dead-worker-2", 1, Duration::from_millis(100))
                .await
                .unwrap()
                .remove(0);
            let mut hasher = DigestVerifier::new(&image.layer.parse().unwrap()).unwrap();
            hasher.update(&layer[..MIB]);
            let mut cp = s.queue.checkpoints(&job.id).await.unwrap().remove(0);
            cp.offset = MIB as u64;
            cp.hash_state = hasher.save();
            s.queue.checkpoint(&lease, &cp).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        dst.clear_request_log();

        drain(&s).await;
        assert!(dst.has_blob(&image.layer), "garbled {garbled}");
        assert!(
            dst.manifest("team/app", "v1").is_some(),
            "garbled {garbled}"
        );
        assert!(ranges(&src).is_empty(), "garbled {garbled}: started over");
        let old = session_id(session.location.as_str());
        let log = dst.request_log();
        let on_old: Vec<&str> = log
            .iter()
            .filter(|(_, p)| p.contains(&old))
            .map(|(m, _)| m.as_str())
            .collect();
        assert_eq!(
            on_old,
            ["GET", "DELETE"],
            "garbled {garbled}: status asked, then the old session cancelled: {log:?}"
        );
    }
}
