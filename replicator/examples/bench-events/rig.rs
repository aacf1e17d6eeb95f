//! The region both modes of `bench-events` measure, and what they share: a source
//! `docker-registry` whose notifications go to a real `ferry-agent`, a queue server with AOF, a
//! destination registry, `ferry worker`s started on demand; tiny images pushed straight over HTTP;
//! memory read from `/proc`.
//!
//! Every child is killed when its handle drops, so a failed run leaves no process behind; the
//! working directory (config, agent and worker logs) is the caller's.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_testkit::{RedisServer, Registry, RegistryOptions};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// The webhook token the source registry sends and the agent expects.
pub const TOKEN: &str = "bench-token";

/// Where the binaries are and which queue server to run.
pub struct Binaries {
    pub bin_dir: PathBuf,
    pub queue_server: String,
}

impl Binaries {
    /// Fails early, with the command that builds them, when the release binaries are missing.
    pub fn check(&self) -> Result<()> {
        for b in ["ferry", "ferry-agent"] {
            anyhow::ensure!(
                self.bin_dir.join(b).exists(),
                "{} missing: cargo build --release --workspace",
                self.bin_dir.join(b).display()
            );
        }
        Ok(())
    }
}

/// One region: queue server, source registry → agent, destination registry, and the config the
/// agent and workers read (one event-based policy, every repository from `src` to `dst`).
pub struct Region {
    pub redis: RedisServer,
    pub src: Registry,
    pub dst: Registry,
    pub agent: Proc,
    config: PathBuf,
    bin_dir: PathBuf,
    dir: PathBuf,
}

impl Region {
    /// Starts everything but the workers; `dst` is started with `dst_options` (e.g. log level
    /// `info`, whose lines time the destination's manifest `PUT`s). The agent's safety net is off,
    /// so every replication measured comes from an event.
    pub async fn start(
        bins: &Binaries,
        dir: &Path,
        dst_options: RegistryOptions,
    ) -> Result<Region> {
        let redis = RedisServer::start_binary(&bins.queue_server, true).await?;
        let agent_addr = format!("127.0.0.1:{}", free_port()?);
        let src = Registry::start_with(RegistryOptions {
            notifications_url: Some(format!(
                "http://{agent_addr}/v1/events/distribution?registry=src"
            )),
            notifications_token: Some(TOKEN.into()),
            ..Default::default()
        })
        .await?;
        let dst = Registry::start_with(dst_options).await?;
        let config = dir.join("ferry.json");
        std::fs::write(
            &config,
            serde_json::to_vec(&json!({
                "registries": [{"name": "src", "url": src.url(), "insecure": true}, {"name": "dst", "url": dst.url(), "insecure": true}],
                "policies": [{"name": "bench", "src_registry": {"name": "src"}, "dest_registry": {"name": "dst"}, "trigger": {"type": "event_based"}}]
            }))?,
        )?;
        let config_s = config.to_str().context("utf8")?;
        let agent = Proc::spawn(
            "agent",
            &bins.bin_dir.join("ferry-agent"),
            &[
                "--config",
                config_s,
                "--redis",
                &redis.url(),
                "--listen",
                &agent_addr,
                "--reconcile-interval",
                "0",
            ],
            dir,
        )?;
        wait_healthy(&format!("http://{agent_addr}/healthz"), &agent).await?;
        Ok(Region {
            redis,
            src,
            dst,
            agent,
            config,
            bin_dir: bins.bin_dir.clone(),
            dir: dir.to_path_buf(),
        })
    }

    /// Starts `ferry worker --concurrency N` (plus `extra` flags) on the region's queue and waits
    /// until it is healthy.
    pub async fn start_worker(&self, concurrency: usize, extra: &[&str]) -> Result<Proc> {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let concurrency = concurrency.to_string();
        let redis = self.redis.url();
        let mut args = vec![
            "worker",
            "--config",
            self.config.to_str().context("utf8")?,
            "--redis",
            &redis,
            "--concurrency",
            &concurrency,
            "--listen",
            &listen,
        ];
        args.extend_from_slice(extra);
        let worker = Proc::spawn("worker", &self.bin_dir.join("ferry"), &args, &self.dir)?;
        wait_healthy(&format!("http://{listen}/healthz"), &worker).await?;
        Ok(worker)
    }
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Uploads a blob monolithically (POST, then PUT with the bytes).
async fn put_blob(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    bytes: Vec<u8>,
) -> Result<String> {
    let d = digest(&bytes);
    let r = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "blob upload POST: {}", r.status());
    let loc = r
        .headers()
        .get("location")
        .context("no Location")?
        .to_str()?
        .to_string();
    let url = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = http
        .put(format!("{url}{sep}digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "blob upload: {}", r.status());
    Ok(d)
}

/// Pushes a small unique image (one `layer_len`-byte layer derived from `seed`, and a config
/// naming the layer) as `repo:tag`; returns the manifest's digest once the manifest PUT returned.
pub async fn push_image(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    seed: u64,
    layer_len: usize,
) -> Result<String> {
    let mut layer = vec![0u8; layer_len.max(8)];
    for (i, b) in layer.iter_mut().enumerate() {
        *b = (seed.wrapping_mul(2654435761).wrapping_add(i as u64 * 31) >> 3) as u8;
    }
    layer[..8].copy_from_slice(&seed.to_le_bytes());
    let layer_len = layer.len();
    let layer_d = put_blob(http, base, repo, layer).await?;
    let config = serde_json::to_vec(
        &json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer_d]}}),
    )?;
    let config_len = config.len();
    let config_d = put_blob(http, base, repo, config).await?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config_len},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d, "size": layer_len}]
    }))?;
    let manifest_d = digest(&manifest);
    let r = http
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "manifest PUT: {}", r.status());
    Ok(manifest_d)
}

/// A child process that is killed when dropped.
pub struct Proc {
    child: tokio::process::Child,
    name: &'static str,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, bin: &Path, args: &[&str], dir: &Path) -> Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let child = tokio::process::Command::new(bin)
            .args(args)
            .env("FERRY_WEBHOOK_TOKEN", TOKEN)
            .env("FERRY_LOG", "info")
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        Ok(Proc { child, name, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn rss_mib(&self) -> f64 {
        status_mib(self.pid(), "VmRSS:")
    }

    pub fn peak_mib(&self) -> f64 {
        status_mib(self.pid(), "VmHWM:")
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// A field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`) in MiB (0 once the process is gone).
pub fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))
            })
        })
        .unwrap_or(0u64) as f64
        / 1024.0
}

async fn wait_healthy(url: &str, p: &Proc) -> Result<()> {
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} did not become healthy: {}",
        p.name,
        std::fs::read_to_string(&p.log).unwrap_or_default()
    )
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The value at quantile `p` (0..=1) of sorted values (nearest rank); the default when empty.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
