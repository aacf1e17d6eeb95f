//! Bad answers from registries: each must end in a clear error (or a correct recovery), never a
//! panic, and never a partial commit on the destination.
mod common;

use std::collections::HashSet;

use common::*;
use ferry_testkit::{sha256_digest, BearerSetup, Behavior, FakeRegistry, Registry};
use serde_json::json;

/// Stores a one-layer image in a fake registry; returns (manifest digest, layer digest).
async fn blob_on(url: &str, repo: &str, digest: &str) -> u16 {
    reqwest::Client::new()
        .head(format!("{url}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn manifest_on(url: &str, repo: &str, tag: &str) -> u16 {
    reqwest::Client::new()
        .head(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_source_blob_fails_loudly_and_commits_nothing() {
    let fake = FakeRegistry::start(Behavior::default()).await.unwrap();
    let (_, layer) = seed_image(&fake, "team/app", "v1", vec![7u8; 3 * 1024 * 1024]);
    fake.set_behavior(|b| b.corrupt_blobs = HashSet::from([layer.clone()]));
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &fake.url(), &dst.url(), json!({}));
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let error = report["tags"][0]["error"].as_str().unwrap();
    assert!(
        error.contains(&layer)
            && error.contains("refusing corrupt data")
            && error.contains("registry src"),
        "{error}"
    );
    assert_eq!(
        blob_on(&dst.url(), "team/app", &layer).await,
        404,
        "no corrupt blob on the destination"
    );
    assert_eq!(
        manifest_on(&dst.url(), "team/app", "v1").await,
        404,
        "no tag on the destination"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunked_upload_is_cancelled_too() {
    let fake = FakeRegistry::start(Behavior::default()).await.unwrap();
    let (_, layer) = seed_image(&fake, "team/app", "v1", vec![9u8; 300 * 1024]);
    fake.set_behavior(|b| b.corrupt_blobs = HashSet::from([layer.clone()]));
    let dst = FakeRegistry::start(Behavior::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut dst_reg = registry("dst", &dst.url());
    dst_reg["chunk_size"] = json!(64 * 1024);
    let cfg = write_config_with(
        dir.path(),
        vec![registry("src", &fake.url()), dst_reg],
        policy(json!({"copy_by_chunk": true})),
    );
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 1);
    assert!(
        report["tags"][0]["error"]
            .as_str()
            .unwrap()
            .contains("refusing corrupt data"),
        "{report:#}"
    );
    assert!(!dst.has_blob(&layer));
    assert!(dst.manifest("team/app", "v1").is_none());
    let log = dst.request_log();
    assert!(
        log.iter()
            .any(|(m, p)| m == "DELETE" && p.contains("/blobs/uploads/")),
        "upload session cancelled: {log:?}"
    );
    let corrupt_put = format!("digest={}", layer.replace(':', "%3A"));
    assert!(
        !log.iter()
            .any(|(m, p)| m == "PUT" && p.contains(&corrupt_put)),
        "the corrupt upload never completed: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_registry_message_is_shown() {
    let fake = FakeRegistry::start(Behavior {
        deny: Some((
            403,
            "DENIED".into(),
            "robot account disabled by admin".into(),
        )),
        ..Default::default()
    })
    .await
    .unwrap();
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &fake.url(), &dst.url(), json!({}));
    let out = sync_plain(&cfg).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("registry src")
            && out
                .stderr
                .contains("DENIED: robot account disabled by admin")
            && out.stderr.contains("403"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_and_bearer_auth_flows() {
    for behavior in [
        Behavior {
            require_basic: Some(("robot".into(), "s3cret".into())),
            ..Default::default()
        },
        Behavior {
            require_bearer: Some(BearerSetup {
                username: "robot".into(),
                password: "s3cret".into(),
                service: "fake".into(),
            }),
            ..Default::default()
        },
    ] {
        let fake = FakeRegistry::start(behavior).await.unwrap();
        let (digest, _) = seed_image(&fake, "team/app", "v1", vec![1u8; 2048]);
        let dst = Registry::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let mut src = registry("src", &fake.url());
        src["credential"] = json!({"type": "basic", "username": "robot", "password_file": pw});
        let cfg = write_config_with(
            dir.path(),
            vec![src.clone(), registry("dst", &dst.url())],
            policy(json!({})),
        );
        let (out, report) = sync(&cfg).await;
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        assert_eq!(report["tags"][0]["digest"], digest);

        // Wrong password: refused, with the registry named and no secret in the message.
        std::fs::write(&pw, "wrong").unwrap();
        let out = sync_plain(&cfg).await;
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(out.stderr.contains("registry src"), "{}", out.stderr);
        assert!(
            !out.stderr.contains("wrong"),
            "secret leaked: {}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_manifest_is_refused() {
    let fake = FakeRegistry::start(Behavior::default()).await.unwrap();
    let huge = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": [], "annotations": {"pad": "x".repeat(5 * 1024 * 1024)}});
    fake.put_manifest(
        "team/app",
        Some("v1"),
        OCI_MANIFEST,
        serde_json::to_vec(&huge).unwrap(),
    );
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &fake.url(), &dst.url(), json!({}));
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 1);
    let e = report["tags"][0]["error"].as_str().unwrap();
    assert!(
        e.contains("over the 4194304-byte limit") && e.contains("team/app:v1"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_vanishing_mid_sync_is_skipped_not_failed() {
    let fake = FakeRegistry::start(Behavior::default()).await.unwrap();
    seed_image(&fake, "team/app", "v1", vec![1u8; 100]);
    seed_image(&fake, "team/app", "gone", vec![2u8; 100]);
    fake.set_behavior(|b| b.vanish_after_list = HashSet::from(["gone".to_string()]));
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &fake.url(), &dst.url(), json!({}));
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(outcomes(&report, "copied"), 1);
    let skipped: Vec<_> = report["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["outcome"] == "skipped")
        .collect();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0]["reason"]
        .as_str()
        .unwrap()
        .contains("disappeared"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_rejecting_a_media_type_fails_that_tag_with_its_message() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    seed_image(&src, "team/app", "v1", vec![3u8; 100]);
    let dst = FakeRegistry::start(Behavior {
        reject_manifest_media_types: HashSet::from([OCI_MANIFEST.to_string()]),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &src.url(), &dst.url(), json!({}));
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 1);
    let e = report["tags"][0]["error"].as_str().unwrap();
    assert!(
        e.contains("registry dst") && e.contains("MANIFEST_INVALID") && e.contains("400"),
        "{e}"
    );
    assert!(dst.manifest("team/app", "v1").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_with_retry_after_is_honored() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let (digest, _) = seed_image(&src, "team/app", "v1", vec![4u8; 100]);
    src.set_behavior(|b| b.retry_after = Some((2, "1".into())));
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &src.url(), &dst.url(), json!({}));
    let started = std::time::Instant::now();
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(report["tags"][0]["digest"], digest);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "two 429s with Retry-After: 1 must wait ~2 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_answered_with_202_falls_back_to_upload() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let layer = vec![5u8; 4096];
    let layer_digest = sha256_digest(&layer);
    seed_image(&src, "team/a", "v1", layer.clone());
    seed_image(&src, "team/b", "v1", layer);
    let dst = FakeRegistry::start(Behavior {
        mount_answers_202: true,
        relative_locations: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &src.url(), &dst.url(), json!({}));
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(outcomes(&report, "copied"), 2);
    assert!(dst.has_blob(&layer_digest));
    assert!(dst.manifest("team/b", "v1").is_some() && dst.manifest("team/a", "v1").is_some());
}

#[tokio::test]
async fn malformed_policy_file_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"registries": [], "policies": [{"name": "x", "src_registry": {"name": "nowhere"}, "dest_registry": {"name": "us"}, "bogus": 1}]}"#).unwrap();
    let out = ferry(&["policy", "validate", bad.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("policies[0].bogus"), "{}", out.stdout);
    let out = ferry(&["sync", "--config", bad.to_str().unwrap()]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("policies[0].bogus"), "{}", out.stderr);
    let out = ferry(&["sync"]).await;
    assert_eq!(out.code, 2, "usage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_500_on_reads_is_retried() {
    // distribution 2.8 answers 500 when a HEAD races a concurrent link-file write.
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let (digest, _) = seed_image(&src, "team/app", "v1", vec![6u8; 100]);
    let dst = FakeRegistry::start(Behavior {
        transient_500s: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &src.url(), &dst.url(), json!({}));
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(report["tags"][0]["digest"], digest);
    let heads = dst
        .request_log()
        .iter()
        .filter(|(m, p)| m == "HEAD" && p.ends_with("/manifests/v1"))
        .count();
    assert!(
        heads >= 4,
        "the 500s were retried, not skipped: {heads} HEADs"
    );
}

/// `label` filters read the source's labels from Harbor's artifact API: a labelled tag is copied,
/// an unlabelled one is skipped saying why, and a source without Harbor's API is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_filters_read_harbor_labels() {
    let labels: std::collections::HashMap<String, Vec<String>> = [(
        "team/sub/app:v1".to_string(),
        vec!["release".to_string(), "env=prod".to_string()],
    )]
    .into_iter()
    .collect();
    let src = FakeRegistry::start(Behavior {
        harbor_labels: Some(labels),
        ..Behavior::default()
    })
    .await
    .unwrap();
    seed_image(&src, "team/sub/app", "v1", vec![7u8; 100]);
    seed_image(&src, "team/sub/app", "v2", vec![8u8; 100]);
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let filters = json!({"filters": [{"type": "label", "value": "release"}]});
    let cfg = write_config(dir.path(), &src.url(), &dst.url(), filters.clone());
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let outcome = |tag: &str| {
        report["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tag"] == tag)
            .map(|t| (t["outcome"].clone(), t["reason"].clone()))
            .unwrap()
    };
    assert_eq!(outcome("v1").0, "copied", "{report:#}");
    assert_eq!(outcome("v2").0, "skipped", "{report:#}");
    assert_eq!(manifest_on(&dst.url(), "team/sub/app", "v1").await, 200);
    assert_eq!(manifest_on(&dst.url(), "team/sub/app", "v2").await, 404);
    assert!(
        src.request_log()
            .iter()
            .any(|(_, p)| p
                .contains("/api/v2.0/projects/team/repositories/sub%252Fapp/artifacts/v1")),
        "the repository is encoded twice, as Harbor wants"
    );

    // Not a Harbor: a clear error naming the registry and what label filters need.
    let plain = FakeRegistry::start(Behavior::default()).await.unwrap();
    seed_image(&plain, "team/sub/app", "v1", vec![9u8; 100]);
    let cfg = write_config(dir.path(), &plain.url(), &dst.url(), filters);
    let (out, report) = sync(&cfg).await;
    assert_ne!(out.code, 0);
    let error = report["tags"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("label filters need a Harbor source registry"),
        "{report:#}"
    );
}

/// A destination that refuses chunked uploads (405 `UNSUPPORTED` on `PATCH`) gets the blobs in one
/// `PUT` each instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_refusing_chunks_gets_monolithic_uploads() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let (a, layer_a) = seed_image(&src, "team/a", "v1", vec![1u8; 300_000]);
    let (b, layer_b) = seed_image(&src, "team/b", "v1", vec![2u8; 300_000]);
    let dst = FakeRegistry::start(Behavior {
        refuse_patch: true,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({"copy_by_chunk": true}),
    );
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(outcomes(&report, "copied"), 2, "{report:#}");
    assert!(dst.has_blob(&layer_a) && dst.has_blob(&layer_b));
    assert_eq!(
        dst.manifest("team/a", "v1").map(|(_, m)| sha256_digest(&m)),
        Some(a)
    );
    assert_eq!(
        dst.manifest("team/b", "v1").map(|(_, m)| sha256_digest(&m)),
        Some(b)
    );
    let patches = dst
        .request_log()
        .iter()
        .filter(|(m, _)| m == "PATCH")
        .count();
    assert!(patches >= 1, "the chunked upload was tried first");
}

/// A referrer found through the source's referrers API goes to a destination without that API
/// (distribution 2.8) by digest, and is listed in the subject's fallback tag `sha256-<hex>` there
/// (an OCI index), so clients can find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_from_the_api_are_listed_in_the_fallback_tag_of_a_destination_without_it() {
    let src = FakeRegistry::start(Behavior {
        referrers_api: true,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let (subject, _) = seed_image(&src, "team/app", "v1", vec![5u8; 1000]);
    let empty = src.put_blob(b"{}".to_vec());
    let sbom_blob = src.put_blob(br#"{"spdxVersion":"SPDX-2.3"}"#.to_vec());
    let subject_size = src.manifest("team/app", "v1").unwrap().1.len();
    let sbom = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/spdx+json", "digest": sbom_blob, "size": 26}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_size}
    }))
    .unwrap();
    let sbom_digest = src.put_manifest("team/app", None, OCI_MANIFEST, sbom);
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &src.url(), &dst.url(), json!({}));
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        manifest_on(&dst.url(), "team/app", &sbom_digest).await,
        200,
        "{report:#}"
    );
    let fallback = format!("sha256-{}", subject.trim_start_matches("sha256:"));
    let index: serde_json::Value = serde_json::from_slice(
        &ferry_testkit::skopeo::inspect_raw(&dst.host(), &format!("team/app:{fallback}"))
            .await
            .unwrap(),
    )
    .unwrap();
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [sbom_digest.as_str()], "{index:#}");
    assert_eq!(
        index["manifests"][0]["artifactType"],
        "application/spdx+json"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_whose_tag_list_is_refused_is_reported_and_the_others_still_sync() {
    let fake = FakeRegistry::start(Behavior::default()).await.unwrap();
    seed_image(&fake, "team/app", "v1", vec![1u8; 1024]);
    seed_image(&fake, "team/secret", "v1", vec![2u8; 1024]);
    fake.set_behavior(|b| b.deny_tag_lists = HashSet::from(["team/secret".to_string()]));
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &fake.url(), &dst.url(), json!({}));
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 1, "not converged: {}\n{}", out.stdout, out.stderr);
    assert_eq!(
        report["unlisted"][0]["repository"], "team/secret",
        "{report:#}"
    );
    let error = report["unlisted"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("denied"), "{error}");
    assert_eq!(outcomes(&report, "copied"), 1, "{report:#}");
    assert_eq!(manifest_on(&dst.url(), "team/app", "v1").await, 200);
    assert_eq!(manifest_on(&dst.url(), "team/secret", "v1").await, 404);
}

/// Found by the chaos oracle, seed 0x5eed0013 (a destination disk filled up and freed):
/// distribution left the repository's link file of a blob empty and answers its `HEAD` with 500
/// for good. The copy sends the blob again instead of failing, and the upload rewrites the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_5eed0013_a_blob_whose_head_keeps_failing_is_sent_again_which_repairs_it() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let layer_bytes = vec![5u8; 2048];
    let (manifest, layer) = seed_image(&src, "team/app", "v1", layer_bytes.clone());
    let dst = FakeRegistry::start(Behavior::default()).await.unwrap();
    dst.put_blob(layer_bytes);
    dst.set_behavior(|b| b.broken_blob_links = HashSet::from([layer.clone()]));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &src.url(), &dst.url(), json!({}));
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{report:#}\n{}", out.stderr);
    assert_eq!(report["tags"][0]["digest"], manifest);
    assert!(
        dst.request_log()
            .iter()
            .any(|(m, p)| m == "PUT" && p.contains("/blobs/uploads/")),
        "the blob was sent again"
    );
    assert_eq!(
        blob_on(&dst.url(), "team/app", &layer).await,
        200,
        "the link is repaired"
    );
}
