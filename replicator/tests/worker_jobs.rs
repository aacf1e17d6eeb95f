//! Workers running queued jobs against real registries: level-triggered pushes, duplicate jobs,
//! guarded deletes, and a graceful stop.
mod common;

use ferry_testkit::access_log::{blob_upload_puts, manifest_puts};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::clock::now_ms;
use ferry_replicator::config::Config;
use ferry_replicator::event::EventKind;
use ferry_replicator::replicate::delete::DeleteOutcome;
use ferry_replicator::replicate::{Registries, TagOutcome};
use ferry_replicator::store::history::{
    ExecutionQuery, ExecutionState, History, MemoryHistory, Retention, TaskState,
};
use ferry_replicator::store::queue::memory::MemoryQueue;
use ferry_replicator::store::queue::{DeadLetters, Job, JobQueue, RegionLock};
use ferry_replicator::store::{StartedBy, Store};
use ferry_replicator::worker::{JobOutcome, Worker, WorkerOptions};
use ferry_testkit::{skopeo, LayerSpec, LayoutBuilder, Registry};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn job(kind: EventKind, repository: &str, reference: &str, digest: Option<&str>) -> Job {
    Job {
        digest: digest.map(str::to_string),
        event_time_ms: now_ms(),
        ..Job::new("test", kind, repository, reference)
    }
}

struct Setup {
    src: Registry,
    dst: Registry,
    _dir: tempfile::TempDir,
    queue: Arc<MemoryQueue>,
    history: Arc<MemoryHistory>,
    worker: Arc<Worker>,
    config: Config,
    registries: Registries,
}

async fn setup(policy_extra: serde_json::Value) -> Setup {
    let (src, dst, dir) = two_registries().await;
    let cfg = write_config(dir.path(), &src.url(), &dst.url(), policy_extra);
    let config = Config::load(&cfg).expect("config");
    let registries = Registries::from_config(&config).expect("registries");
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
            &config,
            &registries,
            &Store::new(queue.clone(), history.clone()),
            opts,
        )
        .expect("worker"),
    );
    Setup {
        src,
        dst,
        _dir: dir,
        queue,
        history,
        worker,
        config,
        registries,
    }
}

/// A worker over an in-process queue and history, with default options (for `execute` calls).
fn memory_worker(config: &Config, registries: &Registries) -> Worker {
    Worker::new(
        config,
        registries,
        &Store::new(
            Arc::new(MemoryQueue::new(RetryPolicy::default())),
            Arc::new(MemoryHistory::new(Retention::default())),
        ),
        WorkerOptions::default(),
    )
    .expect("worker")
}

/// The newest executions in the worker's history (up to 10).
async fn recent_executions(s: &Setup) -> Vec<ferry_replicator::store::history::Execution> {
    s.history
        .executions(&ExecutionQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// The safety net over the setup's queue, and its first policy prepared for [`Reconciler::pass`].
fn reconciler(
    s: &Setup,
) -> (
    ferry_replicator::control::safety_net::Reconciler,
    ferry_replicator::replicate::PreparedPolicy,
) {
    use ferry_replicator::control::safety_net::{ReconcileMetrics, Reconciler};
    let r = Reconciler::new(
        &s.config,
        &s.registries,
        s.queue.clone(),
        RegionLock::new(s.queue.clone(), "test"),
        ReconcileMetrics::default(),
    )
    .unwrap();
    let prepared =
        ferry_replicator::replicate::PreparedPolicy::new(&s.config.policies[0], &s.registries)
            .unwrap();
    (r, prepared)
}

/// Runs the worker until the queue has nothing waiting or running, then stops it.
async fn drain(s: &Setup) {
    drain_queue(s.queue.as_ref(), s.worker.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_jobs_replicate_and_duplicates_move_bytes_once() {
    let s = setup(json!({"trigger": {"type": "event_based"}})).await;
    let d = push_image(s._dir.path(), 1, &s.src.host(), "team/app:v1").await;
    for _ in 0..5 {
        s.queue
            .enqueue(job(EventKind::Push, "team/app", "v1", Some(&d)))
            .await
            .unwrap();
    }
    drain(&s).await;
    assert_eq!(raw_digest(&s.dst.host(), "team/app:v1").await, d);
    let t = s.worker.stats.transfer.snapshot();
    assert!(t.bytes_copied >= 256 * 1024, "the layer was copied: {t:?}");
    assert!(
        t.bytes_copied < 2 * 256 * 1024,
        "five deliveries of one event move the layer once: {t:?}"
    );
    // The destination's own record: one upload per blob (layer and config), one manifest PUT.
    let log = std::fs::read_to_string(s.dst.log_path()).unwrap();
    assert_eq!(
        blob_upload_puts(&log),
        2,
        "blob uploads the destination received"
    );
    assert_eq!(manifest_puts(&log, "team/app", "v1"), 1);
    assert_eq!(s.worker.stats.jobs_failed.load(Ordering::Relaxed), 0);

    // One execution per job that ran (duplicates collapsed into one), with its task on the
    // destination: what was moved and the lag.
    let execs = recent_executions(&s).await;
    assert_eq!(execs.len(), 1, "{execs:?}");
    let e = &execs[0];
    assert_eq!(e.state, ExecutionState::Succeeded, "{e:?}");
    assert_eq!(e.trigger, StartedBy::EventBased);
    assert_eq!(e.policy, "test");
    assert_eq!(e.attempts, 1);
    assert!(e.ended_at_ms.is_some_and(|t| t >= e.started_at_ms), "{e:?}");
    let origin = e.origin.as_ref().expect("origin event");
    assert_eq!(
        (origin.repository.as_str(), origin.reference.as_str()),
        ("team/app", "v1")
    );
    assert_eq!(e.counts.get(&TaskState::Succeeded), Some(&1), "{e:?}");
    let tasks = s.history.tasks(&e.id, 10).await.unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let t = &tasks[0];
    assert_eq!(t.destination, "dst");
    assert_eq!(t.outcome.as_deref(), Some("copied"));
    assert_eq!(t.digest.as_deref(), Some(d.as_str()));
    assert!(t.bytes >= 256 * 1024 && t.blobs_copied >= 2, "{t:?}");
    assert!(t.lag_ms.is_some(), "a copy records its lag: {t:?}");
    // The worker announced itself while running and deregistered when it stopped.
    assert!(s.history.workers().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_is_listed_with_its_counters() {
    let s = setup(json!({})).await;
    let stop = CancellationToken::new();
    let run = tokio::spawn(s.worker.clone().run(stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let w = s.history.workers().await.unwrap();
        if !w.is_empty() || tokio::time::Instant::now() > deadline {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, "w1");
    assert_eq!(listed[0].pid, std::process::id());
    assert_eq!(listed[0].policies, ["test"]);
    assert!(listed[0].last_seen_ms <= now_ms());
    stop.cancel();
    run.await.unwrap();
    assert!(
        s.history.workers().await.unwrap().is_empty(),
        "deregistered on stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_push_job_copies_the_current_source_state() {
    let s = setup(json!({})).await;
    let old = push_image(s._dir.path(), 2, &s.src.host(), "team/app:v1").await;
    let new = push_image(s._dir.path(), 3, &s.src.host(), "team/app:v1").await;
    assert_ne!(old, new);
    // The job names the old digest (a late, reordered event); the destination gets what is current.
    s.queue
        .enqueue(job(EventKind::Push, "team/app", "v1", Some(&old)))
        .await
        .unwrap();
    drain(&s).await;
    assert_eq!(raw_digest(&s.dst.host(), "team/app:v1").await, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_guarded() {
    let s = setup(json!({"replicate_deletion": true, "filters": [{"type": "tag", "value": "v*"}]}))
        .await;
    let dir = s._dir.path();
    let gone = push_image(dir, 4, &s.src.host(), "team/app:v1").await;
    let keep = push_image(dir, 5, &s.src.host(), "team/app:v2").await;
    let shared = push_image(dir, 6, &s.src.host(), "team/app:v3").await;
    for t in ["v1", "v2", "v3"] {
        s.queue
            .enqueue(job(EventKind::Push, "team/app", t, None))
            .await
            .unwrap();
    }
    drain(&s).await;
    // On the destination, an uncovered tag also points at v3's manifest.
    push_image(dir, 6, &s.dst.host(), "team/app:scratch").await;
    // The destination got newer content under v2 than the one the source deletes.
    let newer = push_image(dir, 7, &s.dst.host(), "team/app:v2").await;

    let http = reqwest::Client::new();
    for d in [&gone, &keep, &shared] {
        let r = http
            .delete(format!("{}/v2/team/app/manifests/{d}", s.src.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
    }
    let deleting = |t: &str, d: &str| job(EventKind::Delete, "team/app", t, Some(d));
    let outcomes = [
        s.worker
            .execute(&deleting("v1", &gone), &CancellationToken::new())
            .await
            .unwrap(),
        s.worker
            .execute(&deleting("v2", &keep), &CancellationToken::new())
            .await
            .unwrap(),
        s.worker
            .execute(&deleting("v3", &shared), &CancellationToken::new())
            .await
            .unwrap(),
    ];
    let single = |o: &JobOutcome| match o {
        JobOutcome::Deleted(v) => v[0].1.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        single(&outcomes[0]),
        DeleteOutcome::Deleted {
            digest: gone.clone()
        }
    );
    assert!(
        matches!(single(&outcomes[1]), DeleteOutcome::Kept { reason } if reason.contains("holds")),
        "{:?}",
        outcomes[1]
    );
    assert!(
        matches!(single(&outcomes[2]), DeleteOutcome::Kept { reason } if reason.contains("scratch")),
        "{:?}",
        outcomes[2]
    );

    let head = |t: &'static str| {
        let http = http.clone();
        let url = s.dst.url();
        async move {
            http.head(format!("{url}/v2/team/app/manifests/{t}"))
                .header("accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(head("v1").await, 404, "deleted");
    assert_eq!(
        raw_digest(&s.dst.host(), "team/app:v2").await,
        newer,
        "newer destination content kept"
    );
    assert_eq!(
        head("v3").await,
        200,
        "kept because an uncovered tag points at it"
    );

    // A delete whose content the source holds again (re-pushed) is stale: nothing is deleted.
    let again = push_image(dir, 8, &s.src.host(), "team/app:v4").await;
    s.queue
        .enqueue(job(EventKind::Push, "team/app", "v4", None))
        .await
        .unwrap();
    drain(&s).await;
    let o = s
        .worker
        .execute(&deleting("v4", &again), &CancellationToken::new())
        .await
        .unwrap();
    assert!(
        matches!(single(&o), DeleteOutcome::Kept { reason } if reason.contains("the source tag v4 now points at")),
        "{o:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrunnable_jobs_are_dead_lettered_and_missing_tags_skipped() {
    let s = setup(json!({})).await;
    // A policy that is not in the worker's config cannot run anywhere: dead-lettered at once.
    let mut j = job(EventKind::Push, "team/app", "v1", None);
    j.policy = "removed-policy".into();
    s.queue.enqueue(j).await.unwrap();
    // A tag that does not exist is skipped, not failed (the source is the truth).
    s.queue
        .enqueue(job(EventKind::Push, "team/nothing", "v1", None))
        .await
        .unwrap();
    drain(&s).await;
    let dead = s.queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("removed-policy"),
        "{dead:?}"
    );
    assert_eq!(s.worker.stats.jobs_succeeded.load(Ordering::Relaxed), 1);

    // The dead-lettered job's execution failed with the reason; the skipped tag's succeeded.
    let execs = recent_executions(&s).await;
    let failed: Vec<_> = execs
        .iter()
        .filter(|e| e.state == ExecutionState::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{execs:?}");
    assert_eq!(failed[0].policy, "removed-policy");
    assert!(
        failed[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("removed-policy"),
        "{failed:?}"
    );
    let skipped = execs
        .iter()
        .find(|e| e.state == ExecutionState::Succeeded)
        .expect("the skipped tag's execution");
    let tasks = s.history.tasks(&skipped.id, 10).await.unwrap();
    assert!(
        tasks[0]
            .outcome
            .as_deref()
            .unwrap_or("")
            .starts_with("skipped"),
        "{tasks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_safety_net_repairs_what_events_missed_and_only_reports_extras() {
    let s = setup(json!({"trigger": {"type": "event_based"}})).await;
    let dir = s._dir.path();
    // Pushed while no agent was listening: no event, no job.
    let a = push_image(dir, 20, &s.src.host(), "team/app:v1").await;
    let b = push_image(dir, 21, &s.src.host(), "team/tool:v2").await;
    push_image(dir, 22, &s.dst.host(), "team/app:extra").await;
    let (r, prepared) = reconciler(&s);
    let pass = r.pass(&prepared).await.unwrap();
    assert_eq!(
        (pass.missing, pass.different, pass.extra, pass.enqueued),
        (2, 0, 1, 2),
        "{pass:?}"
    );
    drain(&s).await;
    assert_eq!(raw_digest(&s.dst.host(), "team/app:v1").await, a);
    assert_eq!(raw_digest(&s.dst.host(), "team/tool:v2").await, b);
    let pass = r.pass(&prepared).await.unwrap();
    assert_eq!(
        (pass.missing, pass.different, pass.enqueued),
        (0, 0, 0),
        "{pass:?}"
    );
    assert_eq!(pass.extra, 1, "the extra tag is reported");
    assert!(
        skopeo::tags(&s.dst.host(), "team/app")
            .await
            .unwrap()
            .contains(&"extra".to_string()),
        "and never deleted"
    );
}

/// A source that lost a layer behind its manifest (a garbage collection racing a push): the copy
/// fails for good and is dead-lettered, naming the repository. The safety net still counts the tag
/// as drift but does not enqueue it again while the dead letter is remembered — otherwise every
/// pass would add another dead letter for the same failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_5eed0013_a_tag_whose_push_was_dead_lettered_is_not_enqueued_again_by_the_safety_net()
{
    let s = setup(json!({"trigger": {"type": "event_based"}})).await;
    let mut b = LayoutBuilder::new(&s._dir.path().join("broken")).unwrap();
    let spec = LayerSpec {
        seed: 31,
        size: 64 * 1024,
    };
    let layer = b.layer(&spec).unwrap();
    b.image("img", &[spec]).unwrap();
    let layout = b.finish().unwrap();
    skopeo::push_layout(&layout, "img", &s.src.host(), "team/app:v1")
        .await
        .unwrap();
    let url = format!("http://{}/v2/team/app/blobs/{}", s.src.host(), layer.digest);
    let deleted = reqwest::Client::new().delete(&url).send().await.unwrap();
    assert_eq!(deleted.status().as_u16(), 202, "DELETE {url}");

    let (r, prepared) = reconciler(&s);
    let pass = r.pass(&prepared).await.unwrap();
    assert_eq!((pass.missing, pass.enqueued), (1, 1), "{pass:?}");
    drain(&s).await;
    let dead = s.queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let reason = dead[0].last_error.as_deref().unwrap_or("");
    assert!(
        reason.contains("team/app") && reason.contains(&layer.digest),
        "the reason names the repository and the blob: {reason}"
    );

    let pass = r.pass(&prepared).await.unwrap();
    assert_eq!(
        (pass.missing, pass.enqueued, pass.dead_lettered),
        (1, 0, 1),
        "{pass:?}"
    );
    drain(&s).await;
    assert_eq!(s.queue.dead_letters(10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_image_brings_its_signature() {
    let s = setup(json!({})).await;
    let mut b = LayoutBuilder::new(&s._dir.path().join("signed")).unwrap();
    let img = b
        .image(
            "img",
            &[LayerSpec {
                seed: 30,
                size: 4096,
            }],
        )
        .unwrap();
    b.artifact(
        "sig",
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        b"sig",
        "application/vnd.dev.cosign.simplesigning.v1+json",
        Some(&img),
    )
    .unwrap();
    let layout = b.finish().unwrap();
    let sig_tag = format!("sha256-{}.sig", img.hex());
    skopeo::push_layout(&layout, "img", &s.src.host(), "team/app:v1")
        .await
        .unwrap();
    skopeo::push_layout(
        &layout,
        "sig",
        &s.src.host(),
        &format!("team/app:{sig_tag}"),
    )
    .await
    .unwrap();
    s.queue
        .enqueue(job(EventKind::Push, "team/app", "v1", None))
        .await
        .unwrap();
    drain(&s).await;
    assert_eq!(raw_digest(&s.dst.host(), "team/app:v1").await, img.digest);
    let tags = skopeo::tags(&s.dst.host(), "team/app").await.unwrap();
    assert!(
        tags.contains(&sig_tag),
        "the signature followed its image: {tags:?}"
    );
}

/// A source (the fake registry) holding a manifest stored by digest only, in `team/app`, as
/// distribution has it between announcing a push and linking its tag (or after the tag moved on
/// to content deleted since), and a worker replicating `team/app` to a real registry. Returns the
/// source, the destination, the config's directory, the worker, the digest and the manifest.
async fn unlinked_manifest() -> (
    ferry_testkit::FakeRegistry,
    Registry,
    tempfile::TempDir,
    Worker,
    String,
    Vec<u8>,
) {
    use ferry_testkit::{Behavior, FakeRegistry};
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layer = vec![3u8; 1000];
    let config_blob =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let (config_len, layer_len) = (config_blob.len(), layer.len());
    let config_d = src.put_blob(config_blob);
    let layer_d = src.put_blob(layer);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config_len},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d, "size": layer_len}]
    }))
    .unwrap();
    // Stored by digest only: the tag is not linked yet.
    let digest = src.put_manifest(
        "team/app",
        None,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.clone(),
    );
    let cfg = write_config(dir.path(), &src.url(), &dst.url(), json!({}));
    let config = Config::load(&cfg).unwrap();
    let registries = Registries::from_config(&config).unwrap();
    let queue = Arc::new(MemoryQueue::new(RetryPolicy::default()));
    let history = Arc::new(MemoryHistory::new(Retention::default()));
    let worker = Worker::new(
        &config,
        &registries,
        &Store::new(queue, history),
        WorkerOptions::default(),
    )
    .unwrap();

    (src, dst, dir, worker, digest, manifest)
}

/// distribution announces a push before it links the tag: a job that finds the tag missing while
/// the announced manifest exists must wait for it (or retry), not skip it (until its last such
/// attempt, below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_announced_before_its_tag_is_linked_is_not_lost() {
    use ferry_replicator::worker::JobError;
    let (src, dst, _dir, worker, digest, manifest) = unlinked_manifest().await;

    // The tag never appears: a retryable error, not a silent skip.
    let j = job(EventKind::Push, "team/app", "v1", Some(&digest));
    let e = worker
        .execute(&j, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, JobError::Transfer { .. }) && e.is_retryable(),
        "{e}"
    );

    // The tag appears while the job waits: copied.
    let linker = {
        let src_url = src.url();
        let manifest = manifest.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let r = reqwest::Client::new()
                .put(format!("{src_url}/v2/team/app/manifests/v1"))
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .body(manifest)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        })
    };
    let outcome = worker.execute(&j, &CancellationToken::new()).await.unwrap();
    linker.await.unwrap();
    assert!(
        matches!(&outcome, JobOutcome::Pushed(v) if matches!(&v[0].1, ferry_replicator::replicate::TagOutcome::Copied { .. })),
        "{outcome:?}"
    );
    assert_eq!(raw_digest(&dst.host(), "team/app:v1").await, digest);
}

/// A push whose tag stays missing while its announced manifest is there is retried as not
/// linked yet, then skipped on its last such attempt: the tag moved to content deleted since (seed
/// `0x50a4`: `app/api:sha256-….sig` moved twice and deleted within 20 s, its push job
/// dead-lettered after 8 attempts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_0x50a4_a_push_whose_tag_never_points_at_its_announced_manifest_is_skipped_not_dead_lettered(
) {
    use ferry_replicator::worker::NOT_VISIBLE_ATTEMPTS;
    let (_src, dst, _dir, worker, digest, _) = unlinked_manifest().await;
    let mut j = job(EventKind::Push, "team/app", "v1", Some(&digest));
    j.attempt = NOT_VISIBLE_ATTEMPTS - 2;
    let e = worker
        .execute(&j, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");

    j.attempt = NOT_VISIBLE_ATTEMPTS - 1;
    let outcome = worker.execute(&j, &CancellationToken::new()).await.unwrap();
    assert!(
        matches!(&outcome, JobOutcome::Pushed(v) if matches!(&v[0].1, ferry_replicator::replicate::TagOutcome::Skipped { reason } if reason.contains("never pointed at it"))),
        "{outcome:?}"
    );
    assert!(
        ferry_testkit::skopeo::inspect_raw(&dst.host(), "team/app:v1")
            .await
            .is_err(),
        "nothing is copied"
    );
}

/// A tag deleted alone on the source (its manifest stays, another tag keeps pointing at it): the
/// destination loses that tag alone where it can delete tags, and keeps it — saying why — where
/// deletes go by digest only (distribution 2.8), since a manifest delete would take every tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_deleted_alone_is_deleted_alone_or_reported() {
    use ferry_testkit::{Behavior, FakeRegistry};
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let layer = vec![6u8; 64];
    let (digest, _) = seed_image(&src, "team/app", "latest", layer.clone());

    for tag_deletes in [true, false] {
        seed_image(&src, "team/app", "v1", layer.clone());
        let dst = FakeRegistry::start(Behavior {
            tag_deletes,
            ..Behavior::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(
            dir.path(),
            &src.url(),
            &dst.url(),
            json!({"replicate_deletion": true}),
        );
        let config = Config::load(&cfg).unwrap();
        let registries = Registries::from_config(&config).unwrap();
        let worker = memory_worker(&config, &registries);
        let cancel = CancellationToken::new();
        for t in ["v1", "latest"] {
            let pushed = worker
                .execute(&job(EventKind::Push, "team/app", t, None), &cancel)
                .await
                .unwrap();
            assert!(
                matches!(&pushed, JobOutcome::Pushed(v) if matches!(v[0].1, TagOutcome::Copied { .. } | TagOutcome::Unchanged { .. })),
                "{pushed:?}"
            );
        }
        src.remove_tag("team/app", "v1");
        let outcome = worker
            .execute(
                &job(EventKind::Delete, "team/app", "v1", Some(&digest)),
                &cancel,
            )
            .await
            .unwrap();
        let JobOutcome::Deleted(v) = outcome else {
            panic!("{outcome:?}")
        };
        let mut tags = dst.tags("team/app");
        tags.sort();
        if tag_deletes {
            assert!(matches!(v[0].1, DeleteOutcome::Deleted { .. }), "{v:?}");
            assert_eq!(tags, ["latest"], "only the deleted tag goes");
        } else {
            match &v[0].1 {
                DeleteOutcome::Kept { reason } => {
                    assert!(
                        reason.contains("deletes manifests by digest only"),
                        "{reason}"
                    )
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(tags, ["latest", "v1"], "nothing is deleted");
        }
        assert!(dst.manifest("team/app", &digest).is_some());
    }
}

/// Referrers pushed *after* their subject arrive with their own event; the `artifact_type` filter
/// decides which kinds follow (here: SBOMs yes, cosign signatures no).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_pushed_after_the_subject_follow_and_artifact_type_filters_them() {
    let s = setup(json!({"filters": [
        {"type": "artifact_type", "value": "application/vnd.dev.cosign*", "decoration": "excludes"}
    ]}))
    .await;
    let dir = s._dir.path();
    let mut b = LayoutBuilder::new(&dir.join("layout")).unwrap();
    let img = b
        .image(
            "img",
            &[LayerSpec {
                seed: 31,
                size: 4096,
            }],
        )
        .unwrap();
    let sbom = b
        .artifact(
            "sbom",
            "application/spdx+json",
            br#"{"spdxVersion":"SPDX-2.3"}"#,
            "application/spdx+json",
            Some(&img),
        )
        .unwrap();
    b.artifact(
        "sig",
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        b"sig",
        "application/vnd.dev.cosign.simplesigning.v1+json",
        Some(&img),
    )
    .unwrap();
    let layout = b.finish().unwrap();
    skopeo::push_layout(&layout, "img", &s.src.host(), "team/app:v1")
        .await
        .unwrap();
    s.queue
        .enqueue(job(EventKind::Push, "team/app", "v1", None))
        .await
        .unwrap();
    drain(&s).await;
    assert_eq!(raw_digest(&s.dst.host(), "team/app:v1").await, img.digest);

    // Later: an SBOM and a signature, each under the tag scheme, each its own event.
    let (sbom_tag, sig_tag) = (
        format!("sha256-{}.sbom", img.hex()),
        format!("sha256-{}.sig", img.hex()),
    );
    for (name, tag) in [("sbom", &sbom_tag), ("sig", &sig_tag)] {
        skopeo::push_layout(&layout, name, &s.src.host(), &format!("team/app:{tag}"))
            .await
            .unwrap();
        s.queue
            .enqueue(job(EventKind::Push, "team/app", tag, None))
            .await
            .unwrap();
    }
    drain(&s).await;
    assert_eq!(
        raw_digest(&s.dst.host(), &format!("team/app:{sbom_tag}")).await,
        sbom.digest,
        "the SBOM pushed after its image arrived"
    );
    let tags = skopeo::tags(&s.dst.host(), "team/app").await.unwrap();
    assert!(
        !tags.contains(&sig_tag),
        "the signature is excluded by its artifact type: {tags:?}"
    );
}

/// The safety net of a bidirectional policy fills what is missing on either side, and leaves a tag
/// that differs between the sides alone (only events, with their times, settle conflicts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_safety_net_of_a_bidirectional_policy_fills_both_sides_and_settles_no_conflict() {
    let s = setup(json!({"trigger": {"type": "event_based"}, "mode": "bidirectional"})).await;
    let dir = s._dir.path();
    let only_src = push_image(dir, 40, &s.src.host(), "team/a:v1").await;
    let only_dst = push_image(dir, 41, &s.dst.host(), "team/b:v1").await;
    let on_src = push_image(dir, 42, &s.src.host(), "team/c:v1").await;
    let on_dst = push_image(dir, 43, &s.dst.host(), "team/c:v1").await;
    let (r, _) = reconciler(&s);
    let passes: Vec<_> = r.pass_all().await.into_iter().map(Result::unwrap).collect();
    assert_eq!(passes.len(), 2, "one pass per direction: {passes:?}");
    drain(&s).await;
    assert_eq!(raw_digest(&s.dst.host(), "team/a:v1").await, only_src);
    assert_eq!(raw_digest(&s.src.host(), "team/b:v1").await, only_dst);
    assert_eq!(
        raw_digest(&s.src.host(), "team/c:v1").await,
        on_src,
        "no event, no decision"
    );
    assert_eq!(
        raw_digest(&s.dst.host(), "team/c:v1").await,
        on_dst,
        "no event, no decision"
    );
}

/// A push that lands on the destination while a bidirectional job copies the other side's older
/// push is overwritten by the copy; once its write is in the ledger (its webhook came), the job
/// puts it back instead of recording its own, so the two sides cannot end up swapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_push_overwritten_during_a_bidirectional_copy_is_put_back() {
    use ferry_replicator::store::ledger::{TagLedger, TagWrite};
    let (src, dst, dir, worker, ledger) = ledger_worker().await;

    let older = push_image(dir.path(), 60, &src.host(), "team/c:v1").await;
    // The destination's newer push: its manifest is in the repository (under another tag here;
    // in the race, under v1 until the copy replaced it), and its webhook is in the ledger.
    let newer = push_image(dir.path(), 61, &dst.host(), "team/c:pushed-meanwhile").await;
    let job = job(EventKind::Push, "team/c", "v1", Some(&older));
    let newer_write = TagWrite {
        digest: newer.clone(),
        at_ms: job.event_time_ms + 1_000,
        region: "b".into(),
    };
    ledger
        .record_write("dst", "team/c", "v1", &newer_write)
        .await
        .unwrap();

    let outcome = worker
        .execute(&job, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        raw_digest(&dst.host(), "team/c:v1").await,
        newer,
        "the newer push holds the tag again: {outcome:?}"
    );
    assert_eq!(
        ledger.last_write("dst", "team/c", "v1").await.unwrap(),
        Some(newer_write),
        "the ledger keeps the newer write"
    );
    let JobOutcome::Pushed(outcomes) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        matches!(&outcomes[..], [(d, TagOutcome::Skipped { reason })] if d == "dst" && reason.contains("put back")),
        "{outcomes:?}"
    );
}

/// A bidirectional worker with an in-memory tag ledger, for the conflict cases below.
async fn ledger_worker() -> (
    Registry,
    Registry,
    tempfile::TempDir,
    Worker,
    Arc<ferry_replicator::store::ledger::MemoryTagLedger>,
) {
    let (src, dst, dir) = two_registries().await;
    let cfg = write_config(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({"trigger": {"type": "event_based"}, "mode": "bidirectional"}),
    );
    let config = Config::load(&cfg).unwrap();
    let registries = Registries::from_config(&config).unwrap();
    let ledger = Arc::new(ferry_replicator::store::ledger::MemoryTagLedger::default());
    let worker = memory_worker(&config, &registries).with_tag_ledger(ledger.clone());
    (src, dst, dir, worker, ledger)
}

/// Found by the chaos oracle, seed 0x5eed0013: the ledger's newer write of a tag named content
/// that a replicated delete had removed from the destination since; the copy tried to put that
/// content back, got 404 and was dead-lettered, again at every safety-net pass. Nothing is left
/// to put back: the copy stands and is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_5eed0013_a_copy_whose_newer_ledger_write_was_deleted_since_stands() {
    use ferry_replicator::store::ledger::{TagLedger, TagWrite};
    let (src, dst, dir, worker, ledger) = ledger_worker().await;
    let older = push_image(dir.path(), 62, &src.host(), "team/c:v1").await;
    let job = job(EventKind::Push, "team/c", "v1", Some(&older));
    let deleted = TagWrite {
        digest: format!("sha256:{}", "d".repeat(64)),
        at_ms: job.event_time_ms + 1_000,
        region: "b".into(),
    };
    ledger
        .record_write("dst", "team/c", "v1", &deleted)
        .await
        .unwrap();

    let outcome = worker.execute(&job, &CancellationToken::new()).await;
    let Ok(JobOutcome::Pushed(outcomes)) = &outcome else {
        panic!("the job must not fail: {outcome:?}")
    };
    assert!(
        matches!(&outcomes[..], [(d, TagOutcome::Copied { digest })] if d == "dst" && *digest == older),
        "{outcomes:?}"
    );
    assert_eq!(raw_digest(&dst.host(), "team/c:v1").await, older);
    assert_eq!(
        ledger
            .last_write("dst", "team/c", "v1")
            .await
            .unwrap()
            .map(|w| w.digest),
        Some(older),
        "the copy is the tag's last write now"
    );
}

/// Found by the chaos oracle, seed 0x5eed0013 with region c's clock 403 s ahead: a safety-net job
/// filling a tag was recorded with the time its (fast) agent made it, so for minutes it won
/// against every real push of that tag. A write without an event is recorded as the oldest: the
/// other side's later push replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_5eed0013_a_safety_net_fill_stamped_by_a_fast_clock_loses_to_a_later_push() {
    use ferry_replicator::store::ledger::TagLedger;
    use ferry_replicator::store::StartedBy;
    let (src, dst, dir, worker, ledger) = ledger_worker().await;
    let filled = push_image(dir.path(), 63, &src.host(), "team/c:v1").await;
    let fill = Job {
        trigger: StartedBy::Reconcile,
        event_id: Some("reconcile".into()),
        // The agent that found the drift runs ten minutes fast.
        event_time_ms: now_ms() + 600_000,
        ..Job::new("test", EventKind::Push, "team/c", "v1")
    };
    worker
        .execute(&fill, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(raw_digest(&dst.host(), "team/c:v1").await, filled);
    assert_eq!(
        ledger
            .last_write("dst", "team/c", "v1")
            .await
            .unwrap()
            .map(|w| w.at_ms),
        Some(0),
        "a fill is recorded as the oldest write"
    );

    let pushed = push_image(dir.path(), 64, &src.host(), "team/c:v1").await;
    let outcome = worker
        .execute(
            &job(EventKind::Push, "team/c", "v1", Some(&pushed)),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        raw_digest(&dst.host(), "team/c:v1").await,
        pushed,
        "the later push replaces the fill: {outcome:?}"
    );
}

/// Each destination is its own task: one refusing destination does not keep the others from
/// getting the tag, and the job still fails (and retries) for the one that refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_destination_does_not_hold_back_the_others() {
    use ferry_testkit::{Behavior, FakeRegistry};
    let (src, good, dir) = two_registries().await;
    let bad = FakeRegistry::start(Behavior {
        deny: Some((403, "DENIED".into(), "robot lacks push access".into())),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let mut p = policy(json!({}));
    p.as_object_mut().unwrap().remove("dest_registry");
    p["dest_registries"] = json!([{"name": "bad"}, {"name": "good"}]);
    let cfg = write_config_with(
        dir.path(),
        vec![
            registry("src", &src.url()),
            registry("bad", &bad.url()),
            registry("good", &good.url()),
        ],
        p,
    );
    let config = Config::load(&cfg).unwrap();
    let registries = Registries::from_config(&config).unwrap();
    let worker = memory_worker(&config, &registries);
    let digest = push_image(dir.path(), 50, &src.host(), "team/app:v1").await;
    let err = worker
        .execute(
            &job(EventKind::Push, "team/app", "v1", None),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("destination bad: "), "{err}");
    assert_eq!(raw_digest(&good.host(), "team/app:v1").await, digest);
}

/// A manual run of a bidirectional policy runs both ways: it fills what each side lacks (a dry run
/// says so first) and leaves a tag that differs between the sides alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_a_bidirectional_policy_fills_both_sides() {
    use ferry_replicator::control::runs::start_run;
    use ferry_replicator::store::history::ExecutionState;
    use ferry_replicator::store::StartedBy;
    let s = setup(json!({"mode": "bidirectional"})).await;
    let dir = s._dir.path();
    let only_src = push_image(dir, 60, &s.src.host(), "team/a:v1").await;
    let only_dst = push_image(dir, 61, &s.dst.host(), "team/b:v1").await;
    let on_src = push_image(dir, 62, &s.src.host(), "team/c:v1").await;
    let on_dst = push_image(dir, 63, &s.dst.host(), "team/c:v1").await;
    let prepared =
        ferry_replicator::replicate::PreparedPolicy::new(&s.config.policies[0], &s.registries)
            .unwrap();

    let plan = start_run(
        &prepared,
        StartedBy::Manual,
        true,
        s.queue.as_ref(),
        s.history.as_ref(),
    )
    .await
    .unwrap();
    let tasks = s.history.tasks(&plan.id, 100).await.unwrap();
    let mut would: Vec<(String, String)> = tasks
        .iter()
        .filter(|t| t.outcome.as_deref() == Some("would copy"))
        .map(|t| (t.destination.clone(), t.repository.clone()))
        .collect();
    would.sort();
    assert_eq!(
        would,
        [
            ("dst".to_string(), "team/a".to_string()),
            ("src".to_string(), "team/b".to_string())
        ],
        "{tasks:#?}"
    );

    let run = start_run(
        &prepared,
        StartedBy::Manual,
        false,
        s.queue.as_ref(),
        s.history.as_ref(),
    )
    .await
    .unwrap();
    drain(&s).await;
    assert_eq!(raw_digest(&s.dst.host(), "team/a:v1").await, only_src);
    assert_eq!(raw_digest(&s.src.host(), "team/b:v1").await, only_dst);
    assert_eq!(raw_digest(&s.src.host(), "team/c:v1").await, on_src);
    assert_eq!(raw_digest(&s.dst.host(), "team/c:v1").await, on_dst);
    let done = s.history.execution(&run.id).await.unwrap().unwrap();
    assert_eq!(done.state, ExecutionState::Succeeded, "{done:#?}");
}
