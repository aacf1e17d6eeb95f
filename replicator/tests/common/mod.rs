//! Shared helpers of the replicator's integration tests: config files for test registries, running
//! the real `ferry` binary, and a standard corpus of OCI fixtures.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

use ferry_testkit::{Blob, LayerSpec, LayoutBuilder};
use serde_json::{json, Value};

/// A registry entry for a plain-HTTP test registry.
pub fn registry(name: &str, url: &str) -> Value {
    json!({"name": name, "url": url, "insecure": true})
}

/// A push policy `test` from `src` to `dst` with extra fields merged in.
pub fn policy(extra: Value) -> Value {
    let mut p = json!({
        "name": "test",
        "mode": "push",
        "src_registry": {"name": "src"},
        "dest_registry": {"name": "dst"},
        "trigger": {"type": "manual"},
    });
    if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            p.insert(k.clone(), v.clone());
        }
    }
    p
}

/// Writes a config file with `src` and `dst` registries and one policy.
pub fn write_config(dir: &Path, src_url: &str, dst_url: &str, policy_extra: Value) -> PathBuf {
    write_config_with(
        dir,
        vec![registry("src", src_url), registry("dst", dst_url)],
        policy(policy_extra),
    )
}

pub fn write_config_with(dir: &Path, registries: Vec<Value>, policy: Value) -> PathBuf {
    let path = dir.join("ferry.json");
    let cfg = json!({"registries": registries, "policies": [policy]});
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("write config");
    path
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs the real `ferry` binary.
pub async fn ferry(args: &[&str]) -> Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_LOG", "warn")
        .output()
        .await
        .expect("run ferry");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `ferry sync` with log-line progress (error-path tests read its stderr).
pub async fn sync_plain(config: &Path) -> Output {
    ferry(&[
        "sync",
        "--config",
        config.to_str().expect("utf8"),
        "--progress",
        "plain",
    ])
    .await
}

/// Two fresh registries and a temp dir for the test's files.
pub async fn two_registries() -> (
    ferry_testkit::Registry,
    ferry_testkit::Registry,
    tempfile::TempDir,
) {
    let src = ferry_testkit::Registry::start()
        .await
        .expect("start source registry");
    let dst = ferry_testkit::Registry::start()
        .await
        .expect("start destination registry");
    (src, dst, tempfile::tempdir().expect("temp dir"))
}

/// `ferry sync --json` and the single policy report it prints.
pub async fn sync(config: &Path) -> (Output, Value) {
    let out = ferry(&[
        "sync",
        "--config",
        config.to_str().expect("utf8"),
        "--json",
        "--progress",
        "plain",
    ])
    .await;
    let report = out.json()[0].clone();
    (out, report)
}

/// Count of tags with `outcome` in a sync report.
pub fn outcomes(report: &Value, outcome: &str) -> usize {
    report["tags"]
        .as_array()
        .map(|t| t.iter().filter(|t| t["outcome"] == outcome).count())
        .unwrap_or(0)
}

/// The standard corpus: what a real platform registry holds.
pub struct Corpus {
    pub layout: PathBuf,
    /// `(layout ref, repository, tag, manifest digest)`
    pub refs: Vec<(String, String, String, String)>,
    pub app_v1: Blob,
    pub base_layer: Blob,
}

/// Builds a layout with: two app versions and a CLI sharing a base layer, a two-platform index,
/// a non-image SBOM artifact, and a cosign-style signature referring to `app:v1`.
pub fn build_corpus(dir: &Path) -> Corpus {
    let mut b = LayoutBuilder::new(dir).expect("layout");
    let base = LayerSpec {
        seed: 1,
        size: 2 * 1024 * 1024,
    };
    let base_layer = b.layer(&base).expect("layer");
    let app_v1 = b
        .image(
            "app-v1",
            &[
                base,
                LayerSpec {
                    seed: 2,
                    size: 300 * 1024,
                },
            ],
        )
        .expect("image");
    let app_v2 = b
        .image(
            "app-v2",
            &[
                base,
                LayerSpec {
                    seed: 3,
                    size: 200 * 1024,
                },
            ],
        )
        .expect("image");
    let cli = b
        .image(
            "cli",
            &[
                base,
                LayerSpec {
                    seed: 4,
                    size: 64 * 1024,
                },
            ],
        )
        .expect("image");
    let amd = b
        .image_for_platform(
            "linux",
            "amd64",
            None,
            &[LayerSpec {
                seed: 5,
                size: 100 * 1024,
            }],
        )
        .expect("img");
    let arm = b
        .image_for_platform(
            "linux",
            "arm64",
            Some("v8"),
            &[LayerSpec {
                seed: 6,
                size: 100 * 1024,
            }],
        )
        .expect("img");
    let index = b
        .index(
            "multi",
            &[
                (amd, "linux", "amd64", None),
                (arm, "linux", "arm64", Some("v8")),
            ],
        )
        .expect("index");
    let sbom = b
        .artifact(
            "sbom",
            "application/vnd.example.sbom.v1+json",
            br#"{"packages":[]}"#,
            "application/json",
            None,
        )
        .expect("artifact");
    let sig = b
        .artifact(
            "sig",
            "application/vnd.dev.cosign.artifact.sig.v1+json",
            b"signature",
            "application/vnd.dev.cosign.simplesigning.v1+json",
            Some(&app_v1),
        )
        .expect("sig");
    let layout = b.finish().expect("finish");
    let sig_tag = format!("sha256-{}.sig", app_v1.hex());
    let refs = vec![
        (
            "app-v1".into(),
            "platform/app".into(),
            "v1".into(),
            app_v1.digest.clone(),
        ),
        (
            "app-v2".into(),
            "platform/app".into(),
            "v2".into(),
            app_v2.digest.clone(),
        ),
        (
            "sig".into(),
            "platform/app".into(),
            sig_tag,
            sig.digest.clone(),
        ),
        (
            "cli".into(),
            "platform/tools/cli".into(),
            "latest".into(),
            cli.digest.clone(),
        ),
        (
            "multi".into(),
            "platform/multi".into(),
            "1.0".into(),
            index.digest.clone(),
        ),
        (
            "sbom".into(),
            "supply/sbom".into(),
            "1".into(),
            sbom.digest.clone(),
        ),
    ];
    Corpus {
        layout,
        refs,
        app_v1,
        base_layer,
    }
}

/// Pushes the corpus to a registry with skopeo (the independent client).
pub async fn push_corpus(corpus: &Corpus, host: &str) {
    for (r, repo, tag, _) in &corpus.refs {
        ferry_testkit::skopeo::push_layout(&corpus.layout, r, host, &format!("{repo}:{tag}"))
            .await
            .expect("skopeo push");
    }
}

/// sha256 of the exact manifest bytes skopeo reads.
pub async fn raw_digest(host: &str, reference: &str) -> String {
    let bytes = ferry_testkit::skopeo::inspect_raw(host, reference)
        .await
        .expect("inspect");
    ferry_testkit::sha256_digest(&bytes)
}
