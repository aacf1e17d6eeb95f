//! Shared helpers of the replicator's integration tests: config files for test registries, running
//! the real `ferry` binary, and a standard corpus of OCI fixtures.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    // The destination logs every request: its access log is the tests' evidence of what crossed.
    let dst = ferry_testkit::Registry::start_with(ferry_testkit::RegistryOptions {
        log_level: "info",
        ..ferry_testkit::RegistryOptions::default()
    })
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

/// Pushes a fresh one-layer image (256 KiB layer) built from `seed` to `host/target` with skopeo;
/// returns its manifest digest.
pub async fn push_image(dir: &Path, seed: u64, host: &str, target: &str) -> String {
    let mut b = LayoutBuilder::new(&dir.join(format!("layout-{seed}"))).unwrap();
    let m = b
        .image(
            "img",
            &[LayerSpec {
                seed,
                size: 256 * 1024,
            }],
        )
        .unwrap();
    let layout = b.finish().unwrap();
    ferry_testkit::skopeo::push_layout(&layout, "img", host, target)
        .await
        .unwrap();
    m.digest
}

/// Polls `f` until it is true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Status of a `HEAD` on a manifest (0 when the registry does not answer).
pub async fn manifest_status(url: &str, repo: &str, reference: &str) -> u16 {
    reqwest::Client::new()
        .head(format!("{url}/v2/{repo}/manifests/{reference}"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// A `127.0.0.1:<port>` address that is free now (for a server that must be named before it
/// starts, e.g. in a registry's notification config).
pub fn free_local_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("local addr")
        .port();
    format!("127.0.0.1:{port}")
}

/// A running `ferry serve` (in-process queue, no safety net) whose stderr goes to a log file.
pub struct Serve {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Serve {
    /// Starts `ferry serve` on `listen` with webhook token `token` and extra environment `env`,
    /// logging to `log`, and waits until `/healthz` answers.
    pub async fn start(
        config: &Path,
        listen: &str,
        token: &str,
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Serve {
        Serve::start_with(config, listen, token, &[], env, log).await
    }

    /// [`Serve::start`] with extra flags (`--admin-listen`, `--redis`, …).
    pub async fn start_with(
        config: &Path,
        listen: &str,
        token: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Serve {
        let stderr = std::fs::File::create(&log).expect("create the serve log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                "serve",
                "--config",
                config.to_str().expect("utf8"),
                "--listen",
                listen,
                "--reconcile-interval",
                "0",
            ])
            .args(extra_args)
            .env("FERRY_WEBHOOK_TOKEN", token)
            .envs(env.iter().copied())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start ferry serve");
        let serve = Serve { child, log };
        let up = eventually(Duration::from_secs(10), || async {
            reqwest::get(format!("http://{listen}/healthz"))
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(up, "ferry serve did not become healthy:\n{}", serve.log());
        serve
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and returns the exit status (it must exit within 30 s).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("still running").to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill")
            .success());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .expect("wait for ferry serve")
    }
}

/// Two registries, a temp dir and a config with one `test` policy between them (see
/// [`write_config`]).
pub struct RegistryPair {
    pub src: ferry_testkit::Registry,
    pub dst: ferry_testkit::Registry,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// A [`RegistryPair`]; with `notify`, the source sends its notifications to a Ferry webhook
/// endpoint on that address (as registry `src`, with bearer `token`).
pub async fn registry_pair(notify: Option<&str>, token: &str, policy_extra: Value) -> RegistryPair {
    let src = ferry_testkit::Registry::start_with(ferry_testkit::RegistryOptions {
        notifications_url: notify
            .map(|listen| format!("http://{listen}/v1/events/distribution?registry=src")),
        notifications_token: Some(token.into()),
        ..Default::default()
    })
    .await
    .expect("start source registry");
    let dst = ferry_testkit::Registry::start()
        .await
        .expect("start destination registry");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &src.url(), &dst.url(), policy_extra);
    RegistryPair {
        src,
        dst,
        dir,
        config,
    }
}

pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The image config [`seed_image`] stores.
pub const IMAGE_CONFIG: &[u8] =
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;

/// Stores a one-layer OCI image in the fake under `repo:tag`; returns the manifest and layer
/// digests. The same layer gives the same manifest (so it can tag it again).
pub fn seed_image(
    fake: &ferry_testkit::FakeRegistry,
    repo: &str,
    tag: &str,
    layer: Vec<u8>,
) -> (String, String) {
    let config_digest = fake.put_blob(IMAGE_CONFIG.to_vec());
    let layer_size = layer.len();
    let layer_digest = fake.put_blob(layer);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": IMAGE_CONFIG.len()},
        "layers": [{"mediaType": LAYER, "digest": layer_digest, "size": layer_size}]
    });
    let digest = fake.put_manifest(
        repo,
        Some(tag),
        OCI_MANIFEST,
        serde_json::to_vec(&manifest).expect("json"),
    );
    (digest, layer_digest)
}

/// Runs `worker` until `queue` has nothing waiting or running (30 s at most), then stops it.
pub async fn drain_queue(
    queue: &dyn ferry_replicator::store::queue::JobQueue,
    worker: std::sync::Arc<ferry_replicator::worker::Worker>,
) {
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = queue.stats().await.expect("queue stats");
        if st.depth == 0 && st.in_flight == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue did not drain: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    run.await.expect("worker task");
}
