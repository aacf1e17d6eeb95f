//! `ferry sync` / `ferry diff` between two real `docker-registry` processes, checked with skopeo.
mod common;

use common::*;
use ferry_testkit::access_log::{all_manifest_puts, blob_upload_puts, blob_upload_puts_of};
use ferry_testkit::{
    sha256_digest, skopeo, Behavior, FakeRegistry, LayerSpec, LayoutBuilder, Registry,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_corpus_digest_exact_and_resync_moves_nothing() {
    let (src, dst, dir) = two_registries().await;
    let dst_log = || std::fs::read_to_string(dst.log_path()).unwrap_or_default();
    let corpus = build_corpus(&dir.path().join("layout"));
    push_corpus(&corpus, &src.host()).await;
    let cfg = write_config(dir.path(), &src.url(), &dst.url(), json!({}));
    let cfg_s = cfg.to_str().unwrap();

    // Drift before: every tag but the signature (a referrer, reported with its subject) is missing.
    let before = ferry(&["diff", "--config", cfg_s, "--json"]).await;
    assert_eq!(
        before.code, 1,
        "diff must exit 1 on drift: {}",
        before.stderr
    );
    assert_eq!(
        before.json()[0]["missing"].as_array().unwrap().len(),
        5,
        "{}",
        before.stdout
    );

    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "sync failed:\n{}\n{}", out.stdout, out.stderr);
    assert_eq!(outcomes(&report, "copied"), 5, "{report:#}");
    let sig_referrers: u64 = report["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["referrers_copied"].as_u64().unwrap())
        .sum();
    assert_eq!(
        sig_referrers, 1,
        "the cosign-style signature follows app:v1"
    );
    // The base layer is shared by three images in two repositories: it crosses the wire once and
    // is mounted (or found) for the others.
    let stats = &report["stats"];
    assert!(stats["blobs_mounted"].as_u64().unwrap() >= 1, "{stats}");

    // Independent check: skopeo reads the same bytes under every tag, and every blob re-hashes.
    for (_, repo, tag, digest) in &corpus.refs {
        let reference = format!("{repo}:{tag}");
        assert_eq!(
            &raw_digest(&dst.host(), &reference).await,
            digest,
            "{reference}"
        );
        assert!(
            skopeo::pull_and_verify(&dst.host(), &reference)
                .await
                .unwrap()
                >= 1,
            "{reference}"
        );
    }
    let log = dst_log();
    assert_eq!(
        blob_upload_puts_of(&log, &corpus.base_layer.digest),
        1,
        "the destination received the shared base layer once"
    );
    let (blob_puts, manifest_puts) = (blob_upload_puts(&log), all_manifest_puts(&log));
    let copied_bytes = stats["bytes_copied"].as_u64().unwrap();
    assert!(copied_bytes >= corpus.base_layer.size, "{stats}");
    assert!(
        copied_bytes < 2 * corpus.base_layer.size,
        "the base layer must not cross twice: {stats}"
    );

    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&report, "unchanged"), 5, "{report:#}");
    assert_eq!(
        report["stats"]["bytes_copied"], 0,
        "a resync moves no blob bytes"
    );
    assert_eq!(report["stats"]["manifests_pushed"], 0);
    let log = dst_log();
    assert_eq!(
        (blob_upload_puts(&log), all_manifest_puts(&log)),
        (blob_puts, manifest_puts),
        "the resync sent the destination no blob and no manifest"
    );

    let after = ferry(&["diff", "--config", cfg_s]).await;
    assert_eq!(after.code, 0, "no drift after sync:\n{}", after.stdout);
    assert!(
        after.stdout.contains("0 missing, 0 different, 0 extra"),
        "{}",
        after.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_false_keeps_different_destination_tag_and_reports_it() {
    let (src, dst, dir) = two_registries().await;
    let mut b = LayoutBuilder::new(&dir.path().join("layout")).unwrap();
    let ours = b
        .image(
            "ours",
            &[LayerSpec {
                seed: 10,
                size: 1000,
            }],
        )
        .unwrap();
    let theirs = b
        .image(
            "theirs",
            &[LayerSpec {
                seed: 11,
                size: 1000,
            }],
        )
        .unwrap();
    let layout = b.finish().unwrap();
    skopeo::push_layout(&layout, "ours", &src.host(), "team/app:v1")
        .await
        .unwrap();
    skopeo::push_layout(&layout, "theirs", &dst.host(), "team/app:v1")
        .await
        .unwrap();

    let cfg = write_config(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({"override": false}),
    );
    let (out, report) = sync(&cfg).await;
    assert_eq!(
        out.code, 1,
        "a kept tag means the destination does not match"
    );
    assert_eq!(outcomes(&report, "kept"), 1, "{report:#}");
    assert_eq!(report["tags"][0]["destination_digest"], theirs.digest);
    assert_eq!(
        raw_digest(&dst.host(), "team/app:v1").await,
        theirs.digest,
        "destination untouched"
    );

    let diff = ferry(&["diff", "--config", cfg.to_str().unwrap(), "--json"]).await;
    assert_eq!(diff.code, 1);
    assert_eq!(diff.json()[0]["different"][0]["source_digest"], ours.digest);

    // With override (the default) the source wins.
    let cfg = write_config(dir.path(), &src.url(), &dst.url(), json!({}));
    let (out, _) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(raw_digest(&dst.host(), "team/app:v1").await, ours.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_namespaces_and_extra_tags() {
    let (src, dst, dir) = two_registries().await;
    let mut b = LayoutBuilder::new(&dir.path().join("layout")).unwrap();
    b.image(
        "img",
        &[LayerSpec {
            seed: 20,
            size: 4096,
        }],
    )
    .unwrap();
    let layout = b.finish().unwrap();
    for target in [
        "platform/a/web:v1",
        "platform/a/web:latest",
        "platform/a/web:dev",
        "other/x:v1",
    ] {
        skopeo::push_layout(&layout, "img", &src.host(), target)
            .await
            .unwrap();
    }
    let cfg = write_config(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({
            "dest_namespace": "mirror",
            "dest_namespace_replace_count": 1,
            "filters": [
                {"type": "name", "value": "platform/**"},
                {"type": "tag", "value": "{v*,latest}"}
            ]
        }),
    );
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(outcomes(&report, "copied"), 2, "{report:#}");
    // replace_count 1 strips `platform`, then prefixes `mirror`.
    let mut tags = skopeo::tags(&dst.host(), "mirror/a/web").await.unwrap();
    tags.sort();
    assert_eq!(tags, vec!["latest", "v1"]);
    assert!(
        skopeo::tags(&dst.host(), "mirror/x").await.is_err(),
        "excluded repository must not exist"
    );

    // A covered tag on the destination that the source lacks is extra; an uncovered one is not.
    skopeo::push_layout(&layout, "img", &dst.host(), "mirror/a/web:v9")
        .await
        .unwrap();
    skopeo::push_layout(&layout, "img", &dst.host(), "mirror/a/web:scratch")
        .await
        .unwrap();
    let diff = ferry(&["diff", "--config", cfg.to_str().unwrap(), "--json"]).await;
    assert_eq!(diff.code, 1);
    let extra = diff.json()[0]["extra"].clone();
    assert_eq!(extra.as_array().unwrap().len(), 1, "{extra}");
    assert_eq!(extra[0]["tag"], "v9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_copies_large_blob_exactly() {
    let (src, dst, dir) = two_registries().await;
    let mut b = LayoutBuilder::new(&dir.path().join("layout")).unwrap();
    // Not a multiple of the chunk size, so the last chunk is short.
    let img = b
        .image(
            "big",
            &[LayerSpec {
                seed: 30,
                size: 5 * 1024 * 1024 + 123,
            }],
        )
        .unwrap();
    let layout = b.finish().unwrap();
    skopeo::push_layout(&layout, "big", &src.host(), "big/one:v1")
        .await
        .unwrap();
    let mut dst_reg = registry("dst", &dst.url());
    dst_reg["chunk_size"] = json!(1024 * 1024);
    let cfg = write_config_with(
        dir.path(),
        vec![registry("src", &src.url()), dst_reg],
        policy(json!({"copy_by_chunk": true})),
    );
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(outcomes(&report, "copied"), 1);
    assert_eq!(raw_digest(&dst.host(), "big/one:v1").await, img.digest);
    assert!(
        skopeo::pull_and_verify(&dst.host(), "big/one:v1")
            .await
            .unwrap()
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_registry_is_a_clear_error() {
    let src = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("http://{closed}"),
        &src.url(),
        json!({}),
    );
    let out = sync_plain(&cfg).await;
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("registry src") && out.stderr.contains("cannot reach"),
        "{}",
        out.stderr
    );
    let out = ferry(&["diff", "--config", cfg.to_str().unwrap()]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_with_a_custom_ca() {
    let src = Registry::start_with(ferry_testkit::RegistryOptions {
        tls: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let dst = Registry::start().await.unwrap();
    assert!(src.url().starts_with("https://"));
    let dir = tempfile::tempdir().unwrap();
    let mut b = LayoutBuilder::new(&dir.path().join("layout")).unwrap();
    let img = b
        .image(
            "img",
            &[LayerSpec {
                seed: 40,
                size: 4096,
            }],
        )
        .unwrap();
    let layout = b.finish().unwrap();
    skopeo::push_layout(&layout, "img", &src.host(), "secure/app:v1")
        .await
        .unwrap();

    // Without the CA, the certificate is refused and the error names the registry.
    let cfg = write_config_with(
        dir.path(),
        vec![
            json!({"name": "src", "url": src.url()}),
            registry("dst", &dst.url()),
        ],
        policy(json!({})),
    );
    let out = sync_plain(&cfg).await;
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("registry src") && out.stderr.contains("certificate"),
        "{}",
        out.stderr
    );

    // With `ca_file`, TLS is verified against that CA.
    let cfg = write_config_with(
        dir.path(),
        vec![
            json!({"name": "src", "url": src.url(), "ca_file": src.ca_path().unwrap()}),
            registry("dst", &dst.url()),
        ],
        policy(json!({})),
    );
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(report["tags"][0]["digest"], img.digest);
    assert_eq!(raw_digest(&dst.host(), "secure/app:v1").await, img.digest);
}

/// With a platform filter only the matching children are copied and the index keeps its digest.
/// A registry that accepts such a sparse index (the fake) gets it; distribution 2.8 refuses it
/// (`MANIFEST_BLOB_UNKNOWN`), which Ferry reports as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_filter_copies_only_matching_children_and_keeps_the_index_digest() {
    let (src, dst, dir) = two_registries().await;
    let corpus = build_corpus(&dir.path().join("layout"));
    let (r, repo, tag, index_digest) = corpus
        .refs
        .iter()
        .find(|(r, ..)| r == "multi")
        .cloned()
        .unwrap();
    skopeo::push_layout(&corpus.layout, &r, &src.host(), &format!("{repo}:{tag}"))
        .await
        .unwrap();
    let index: serde_json::Value = serde_json::from_slice(
        &skopeo::inspect_raw(&src.host(), &format!("{repo}:{tag}"))
            .await
            .unwrap(),
    )
    .unwrap();
    let children: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["platform"]["architecture"].as_str().unwrap().to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let filter = json!({"filters": [{"type": "platform", "value": "linux/amd64"}]});
    let present = |url: String| {
        let (repo, children) = (repo.clone(), children.clone());
        async move {
            let mut present = Vec::new();
            for (arch, digest) in &children {
                present.push((arch.clone(), manifest_status(&url, &repo, digest).await));
            }
            present.sort();
            present
        }
    };
    let only_amd64 = vec![("amd64".to_string(), 200), ("arm64".to_string(), 404)];

    // A destination that accepts sparse indexes.
    let sparse = FakeRegistry::start(Behavior {
        accept_sparse_indexes: true,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let cfg = write_config(dir.path(), &src.url(), &sparse.url(), filter.clone());
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(outcomes(&report, "copied"), 1, "{report:#}");
    let (_, bytes) = sparse
        .manifest(&repo, &tag)
        .expect("the index on the destination");
    assert_eq!(
        sha256_digest(&bytes),
        index_digest,
        "the index keeps its digest"
    );
    assert_eq!(present(sparse.url()).await, only_amd64);

    // distribution 2.8 wants every child: a clear failure, the tag is not created.
    let cfg = write_config(dir.path(), &src.url(), &dst.url(), filter);
    let (out, report) = sync(&cfg).await;
    assert_ne!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let error = report["tags"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("refuses a sparse index"), "{report:#}");
    assert_eq!(present(dst.url()).await, only_amd64);
    assert_eq!(manifest_status(&dst.url(), &repo, &tag).await, 404);
}

/// A signature pushed after its image was replicated, whose event was lost: the image is in sync,
/// so no repair of the image would bring the signature. The diff (and so the safety net) reports
/// it missing on its own, and a sync copies it. A signature whose subject no covered tag holds
/// stays out, like its subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_0x2a_a_signature_of_an_image_already_in_sync_is_drift_of_its_own() {
    let (src, dst, dir) = two_registries().await;
    let corpus = build_corpus(&dir.path().join("layout"));
    let (sigs, images): (Vec<_>, Vec<_>) = corpus.refs.iter().partition(|r| r.0 == "sig");
    for (r, repo, tag, _) in &images {
        skopeo::push_layout(&corpus.layout, r, &src.host(), &format!("{repo}:{tag}"))
            .await
            .unwrap();
    }
    let cfg = write_config(dir.path(), &src.url(), &dst.url(), json!({}));
    let cfg_s = cfg.to_str().unwrap();
    let (out, _) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    let (_, repo, sig_tag, sig_digest) = sigs[0];
    skopeo::push_layout(
        &corpus.layout,
        "sig",
        &src.host(),
        &format!("{repo}:{sig_tag}"),
    )
    .await
    .unwrap();
    // The same signature where no tag holds its subject: not this policy's business.
    skopeo::push_layout(
        &corpus.layout,
        "sig",
        &src.host(),
        &format!("platform/tools/cli:{sig_tag}"),
    )
    .await
    .unwrap();
    let diff = ferry(&["diff", "--config", cfg_s, "--json"]).await;
    assert_eq!(diff.code, 1, "{}\n{}", diff.stdout, diff.stderr);
    let missing = diff.json()[0]["missing"].clone();
    assert_eq!(missing.as_array().unwrap().len(), 1, "{missing}");
    assert_eq!(
        (
            &missing[0]["repository"],
            &missing[0]["tag"],
            &missing[0]["source_digest"]
        ),
        (&json!(repo), &json!(sig_tag), &json!(sig_digest)),
        "{missing}"
    );

    let (out, _) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        &raw_digest(&dst.host(), &format!("{repo}:{sig_tag}")).await,
        sig_digest
    );
    let after = ferry(&["diff", "--config", cfg_s]).await;
    assert_eq!(after.code, 0, "{}", after.stdout);
}
