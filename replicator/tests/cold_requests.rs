//! What a copy asks the destination, as the destination registry's own access log shows: one
//! request per decision. A blob another repository of the destination received in the same run
//! is mounted without a `HEAD` first, a repository the process has seen holding a blob is not
//! asked about it again, and a tag whose `PUT` answer names its digest is not `HEAD`ed after it
//! (one whose answer does not, is).
//! What the process remembers is only "present": a blob deleted behind its back costs one refused
//! manifest, and the retry uploads it again.
//!
//! The copies run one after another through the library (`replicate_reference`, what a worker
//! runs per job) with one ledger, as the tags of one `ferry sync` or the jobs of one worker
//! share it, so the order of the requests is known.
mod common;

use std::sync::Arc;

use common::*;
use ferry_replicator::config::Config;
use ferry_replicator::replicate::{replicate_reference, PreparedPolicy, Registries, TagOutcome};
use ferry_replicator::transfer::{BlobLedger, TransferContext};
use ferry_testkit::access_log::{logged_requests, Route};
use ferry_testkit::{skopeo, Behavior, Blob, FakeRegistry, LayerSpec, LayoutBuilder, Registry};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The layer every image of these tests shares.
const BASE: LayerSpec = LayerSpec {
    seed: 7,
    size: 512 * 1024,
};

/// Pushes `repo:tag`, an image of the base layer and a small layer of its own (`seed`), to `src`.
async fn push(dir: &std::path::Path, src: &Registry, seed: u64, repo: &str, tag: &str) {
    let mut b = LayoutBuilder::new(&dir.join(format!("layout-{seed}"))).expect("layout");
    b.image(
        "img",
        &[
            BASE,
            LayerSpec {
                seed,
                size: 64 * 1024,
            },
        ],
    )
    .expect("image");
    let layout = b.finish().expect("finish layout");
    skopeo::push_layout(&layout, "img", &src.host(), &format!("{repo}:{tag}"))
        .await
        .expect("skopeo push");
}

/// The base layer's descriptor.
fn base_blob(dir: &std::path::Path) -> Blob {
    LayoutBuilder::new(&dir.join("base"))
        .expect("layout")
        .layer(&BASE)
        .expect("layer")
}

/// A policy from `src` to `dst` and the transfer context its jobs run with: one ledger for all.
struct Copier {
    prepared: PreparedPolicy,
    ctx: TransferContext,
}

impl Copier {
    fn new(src: &str, dst: &str, dir: &std::path::Path) -> Copier {
        let cfg = write_config(dir, src, dst, json!({}));
        let config = Config::load(&cfg).expect("config");
        let registries = Registries::from_config(&config).expect("registries");
        let prepared = PreparedPolicy::new(&config.policies[0], &registries).expect("policy");
        let ctx = prepared.transfer_context(
            &prepared.dsts[0],
            Arc::new(BlobLedger::default()),
            Arc::default(),
            None,
            CancellationToken::new(),
            8,
        );
        Copier { prepared, ctx }
    }

    async fn copy(&self, repo: &str, tag: &str) -> Result<TagOutcome, String> {
        replicate_reference(&self.prepared, &self.ctx, repo, tag, None, None)
            .await
            .map(|(outcome, _)| outcome)
            .map_err(|e| format!("{e} (retryable: {})", e.is_retryable()))
    }
}

/// The destination's requests in `repo` about blob `digest` (its `HEAD`s, `GET`s, mounts and the
/// `PUT` completing its upload), by route, in log order.
fn about_blob(dst: &Registry, repo: &str, digest: &str) -> Vec<Route> {
    let log = std::fs::read_to_string(dst.log_path()).expect("registry log");
    let hex = digest.trim_start_matches("sha256:");
    logged_requests(&log)
        .into_iter()
        .filter(|r| r.path.starts_with(&format!("/v2/{repo}/")))
        .filter(|r| r.path.contains(hex) || r.query.contains(hex))
        .map(|r| r.route())
        .collect()
}

/// The destination holds `reference` (`repo:tag`) under the source's digest.
async fn assert_same_digest(src: &Registry, dst: &Registry, reference: &str) {
    assert_eq!(
        raw_digest(&dst.host(), reference).await,
        raw_digest(&src.host(), reference).await,
        "{reference}"
    );
}

/// Removes `digest` from `repo` on `dst` behind Ferry's back, as another client would.
async fn delete_blob(dst: &Registry, repo: &str, digest: &str) {
    let deleted = reqwest::Client::new()
        .delete(format!("{}/v2/{repo}/blobs/{digest}", dst.url()))
        .send()
        .await
        .expect("DELETE blob");
    assert_eq!(deleted.status().as_u16(), 202, "blob deleted");
}

fn copied(outcome: &Result<TagOutcome, String>) -> bool {
    matches!(outcome, Ok(TagOutcome::Copied { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_another_repository_received_in_the_run_is_mounted_without_a_head_first() {
    let (src, dst, dir) = two_registries().await;
    push(dir.path(), &src, 11, "team/a", "v1").await;
    push(dir.path(), &src, 12, "team/b", "v1").await;
    let base = base_blob(dir.path());
    let copier = Copier::new(&src.url(), &dst.url(), dir.path());

    for repo in ["team/a", "team/b"] {
        let outcome = copier.copy(repo, "v1").await;
        assert!(copied(&outcome), "{repo}: {outcome:?}");
    }
    assert_eq!(
        about_blob(&dst, "team/a", &base.digest),
        [Route::BlobHead, Route::UploadPut],
        "the first repository asks, then uploads"
    );
    assert_eq!(
        about_blob(&dst, "team/b", &base.digest),
        [Route::MountPost],
        "the second mounts from the first, with no HEAD before"
    );
    assert_same_digest(&src, &dst, "team/b:v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_a_blob_was_mounted_into_is_not_asked_about_it_again() {
    let (src, dst, dir) = two_registries().await;
    push(dir.path(), &src, 21, "team/a", "v1").await;
    push(dir.path(), &src, 22, "team/b", "v1").await;
    push(dir.path(), &src, 23, "team/b", "v2").await;
    let base = base_blob(dir.path());
    let copier = Copier::new(&src.url(), &dst.url(), dir.path());

    for (repo, tag) in [("team/a", "v1"), ("team/b", "v1"), ("team/b", "v2")] {
        let outcome = copier.copy(repo, tag).await;
        assert!(copied(&outcome), "{repo}:{tag}: {outcome:?}");
    }
    assert_eq!(
        about_blob(&dst, "team/b", &base.digest),
        [Route::MountPost],
        "team/b:v2 needs the base layer team/b:v1 mounted: nothing more is asked"
    );
    assert_same_digest(&src, &dst, "team/b:v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_whose_put_answer_names_its_digest_is_not_headed_after_the_put() {
    let (src, dst, dir) = two_registries().await;
    push(dir.path(), &src, 31, "team/a", "v1").await;
    let copier = Copier::new(&src.url(), &dst.url(), dir.path());

    let outcome = copier.copy("team/a", "v1").await;
    assert!(copied(&outcome), "{outcome:?}");
    let log = std::fs::read_to_string(dst.log_path()).expect("registry log");
    assert_eq!(
        ferry_testkit::access_log::manifest_heads(&log, "team/a", "v1"),
        1,
        "one HEAD before the copy (is it there?), none after the PUT answered the digest"
    );
    assert_same_digest(&src, &dst, "team/a:v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_whose_put_answer_names_no_digest_is_headed_to_confirm_it() {
    let (src, _, dir) = two_registries().await;
    push(dir.path(), &src, 51, "team/a", "v1").await;
    let dst = FakeRegistry::start(Behavior {
        silent_manifest_puts: true,
        ..Behavior::default()
    })
    .await
    .expect("fake registry");
    let copier = Copier::new(&src.url(), &dst.url(), dir.path());

    let outcome = copier.copy("team/a", "v1").await;
    assert!(copied(&outcome), "{outcome:?}");
    let heads = dst
        .request_log()
        .into_iter()
        .filter(|(m, p)| m == "HEAD" && p == "/v2/team/a/manifests/v1")
        .count();
    assert_eq!(heads, 2, "before the copy, and after the PUT to confirm it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_deleted_after_the_process_saw_it_is_uploaded_again_on_the_retry() {
    let (src, dst, dir) = two_registries().await;
    push(dir.path(), &src, 41, "team/a", "v1").await;
    push(dir.path(), &src, 42, "team/a", "v2").await;
    let base = base_blob(dir.path());
    let copier = Copier::new(&src.url(), &dst.url(), dir.path());
    let outcome = copier.copy("team/a", "v1").await;
    assert!(copied(&outcome), "{outcome:?}");

    // Someone else removes the base layer from the repository the process saw it in.
    delete_blob(&dst, "team/a", &base.digest).await;

    // The first attempt may trust what it saw and be refused; the retry (as a worker retries a
    // retryable job) asks again and uploads.
    let first = copier.copy("team/a", "v2").await;
    if !copied(&first) {
        let message = first.as_ref().expect_err("not copied: an error");
        assert!(message.contains("retryable: true"), "{message}");
        let retry = copier.copy("team/a", "v2").await;
        assert!(copied(&retry), "{retry:?}");
    }
    assert_same_digest(&src, &dst, "team/a:v2").await;
    assert!(
        skopeo::pull_and_verify(&dst.host(), "team/a:v2")
            .await
            .is_ok(),
        "every blob of team/a:v2 is there and re-hashes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_from_a_repository_that_lost_the_blob_falls_back_to_an_upload() {
    let (src, dst, dir) = two_registries().await;
    push(dir.path(), &src, 61, "team/a", "v1").await;
    push(dir.path(), &src, 62, "team/b", "v1").await;
    push(dir.path(), &src, 63, "team/c", "v1").await;
    let base = base_blob(dir.path());
    let copier = Copier::new(&src.url(), &dst.url(), dir.path());
    let outcome = copier.copy("team/a", "v1").await;
    assert!(copied(&outcome), "{outcome:?}");
    delete_blob(&dst, "team/a", &base.digest).await;

    for repo in ["team/b", "team/c"] {
        let outcome = copier.copy(repo, "v1").await;
        assert!(copied(&outcome), "{repo}: {outcome:?}");
    }
    assert_eq!(
        about_blob(&dst, "team/b", &base.digest),
        [Route::MountPost, Route::BlobHead, Route::UploadPut],
        "the mount opens a session instead (dropped), then the blob is asked for and uploaded"
    );
    assert_eq!(
        about_blob(&dst, "team/c", &base.digest),
        [Route::MountPost],
        "team/c mounts from team/b, not from team/a any more"
    );
    assert!(
        skopeo::pull_and_verify(&dst.host(), "team/c:v1")
            .await
            .is_ok(),
        "every blob of team/c:v1 is there and re-hashes"
    );
}
