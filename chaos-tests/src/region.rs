//! One region of Ferry's event-driven deployment, every part a real process: Redis (AOF on),
//! source registry `a` notifying the agent, destination registry `b`, `ferry-agent`, and
//! `ferry worker`s started on demand.
//!
//! Start order matters: the agent's port is picked (and held) first, because registry `a`'s config
//! names it; then Redis and both registries start; then the config and token files are written and
//! the agent starts, ready once its `/healthz` answers (it reaches Redis).
//!
//! The agent runs with `--reconcile-interval 0` unless [`RegionOptions::agent_args`] says
//! otherwise: these tests check the event path, and the safety-net reconciler would hide a lost
//! event.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use ferry_testkit::{RedisServer, Registry, RegistryOptions};
use serde_json::{json, Map, Value};
use tempfile::TempDir;

use crate::process::{binary, serial, tail, Daemon, SerialGuard, StartError};

/// The name of the region's only policy.
pub const POLICY: &str = "a-to-b";

/// How a [`Region`] is set up. `Default`: `a` notifies the agent, both registries log at `error`,
/// the policy has no filters and no speed limit.
#[derive(Clone, Debug)]
pub struct RegionOptions {
    /// Whether registry `a` sends its notifications to the agent (off for tests that deliver
    /// webhooks themselves).
    pub source_notifications: bool,
    /// `log.level` of registry `a`.
    pub source_log_level: &'static str,
    /// `log.level` of registry `b`; `info` writes an access-log line per request (to count PUTs).
    pub dest_log_level: &'static str,
    /// Fields merged into the policy (`filters`, `speed`, `override`, …), overriding the defaults.
    pub policy: Map<String, Value>,
    /// Fields merged into registry `b`'s config entry (`chunk_size`, …).
    pub dest_registry: Map<String, Value>,
    /// Extra `ferry-agent` flags; replaces the default `--reconcile-interval 0`.
    pub agent_args: Vec<String>,
    /// The agent polls registry `a`'s tags every so many seconds (`poll_interval_seconds`).
    pub poll_source_seconds: Option<u64>,
    /// Fields merged into the config file's top level (`regions`, …).
    pub config: Map<String, Value>,
}

impl Default for RegionOptions {
    fn default() -> Self {
        RegionOptions {
            source_notifications: true,
            source_log_level: "error",
            dest_log_level: "error",
            policy: Map::new(),
            dest_registry: Map::new(),
            agent_args: vec!["--reconcile-interval".into(), "0".into()],
            poll_source_seconds: None,
            config: Map::new(),
        }
    }
}

impl RegionOptions {
    /// The policy's `speed` in KiB/s (0 = unlimited).
    pub fn speed(self, kib_per_second: u64) -> Self {
        self.policy_field("speed", json!(kib_per_second))
    }

    /// The policy's `filters` (a JSON array, Harbor's shape).
    pub fn filters(self, filters: Value) -> Self {
        self.policy_field("filters", filters)
    }

    /// Sets any policy field.
    pub fn policy_field(mut self, key: &str, value: Value) -> Self {
        self.policy.insert(key.to_string(), value);
        self
    }

    /// Sets a field of registry `b`'s config entry.
    pub fn dest_registry_field(mut self, key: &str, value: Value) -> Self {
        self.dest_registry.insert(key.to_string(), value);
        self
    }

    /// Registry `b`'s log level.
    pub fn dest_log_level(mut self, level: &'static str) -> Self {
        self.dest_log_level = level;
        self
    }

    /// The agent polls registry `a` every `seconds` instead of receiving its notifications.
    pub fn polled_source(mut self, seconds: u64) -> Self {
        self.poll_source_seconds = Some(seconds);
        self.source_notifications = false;
        self
    }

    /// Sets a top-level field of the config file (e.g. `regions`).
    pub fn config_field(mut self, key: &str, value: Value) -> Self {
        self.config.insert(key.to_string(), value);
        self
    }

    /// Registry `a` does not notify the agent.
    pub fn without_source_notifications(mut self) -> Self {
        self.source_notifications = false;
        self
    }
}

/// Flags of one `ferry worker`. `Default` matches the binary's defaults.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub concurrency: usize,
    pub lease_seconds: u64,
    pub grace_seconds: u64,
}

impl Default for WorkerSpec {
    fn default() -> Self {
        WorkerSpec {
            concurrency: 4,
            lease_seconds: 30,
            grace_seconds: 20,
        }
    }
}

/// A running region. Fields drop in order: agent, registries, Redis, log dir, and last the
/// [`serial`] lock.
pub struct Region {
    pub agent: Daemon,
    /// The source registry (`a` in the config), notifying the agent.
    pub a: Registry,
    /// The destination registry (`b` in the config).
    pub b: Registry,
    pub redis: RedisServer,
    /// Config, token file and the Ferry processes' logs.
    dir: TempDir,
    config: PathBuf,
    token: String,
    workers_started: AtomicUsize,
    _serial: SerialGuard,
}

impl Region {
    /// Starts a region (waiting for the other chaos scenarios first, see [`serial`]).
    pub async fn start(opts: RegionOptions) -> anyhow::Result<Region> {
        let serial = serial().await?;
        let ferry_agent = binary("ferry-agent")?;
        binary("ferry")?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-chaos-")
            .tempdir()
            .context("creating the region's temp dir")?;

        // Held until the agent starts, so no server started meanwhile is handed this port.
        let agent_port = TcpListener::bind("127.0.0.1:0").context("picking the agent's port")?;
        let agent_addr = agent_port.local_addr()?;
        let token = format!(
            "chaos-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );

        let redis = RedisServer::start(true).await.context("starting Redis")?;
        let a = Registry::start_with(RegistryOptions {
            notifications_url: opts
                .source_notifications
                .then(|| format!("http://{agent_addr}/v1/events/distribution?registry=a")),
            notifications_token: Some(token.clone()),
            log_level: opts.source_log_level,
            ..RegistryOptions::default()
        })
        .await
        .context("starting registry a")?;
        let b = Registry::start_with(RegistryOptions {
            log_level: opts.dest_log_level,
            ..RegistryOptions::default()
        })
        .await
        .context("starting registry b")?;

        let config = dir.path().join("ferry.json");
        write_config(
            &config,
            &a.url(),
            &b.url(),
            &opts.policy,
            &opts.dest_registry,
            opts.poll_source_seconds,
            &opts.config,
        )?;
        let token_file = dir.path().join("webhook-token");
        std::fs::write(&token_file, format!("{token}\n")).context("writing the token file")?;

        let mut args: Vec<String> = vec![
            "--config".into(),
            path_arg(&config)?,
            "--redis".into(),
            redis.url(),
            "--listen".into(),
            agent_addr.to_string(),
            "--webhook-token-file".into(),
            path_arg(&token_file)?,
        ];
        args.extend(opts.agent_args.iter().cloned());
        drop(agent_port);
        let agent = Daemon::start(
            "agent",
            &ferry_agent,
            &args,
            &dir.path().join("agent.log"),
            agent_addr,
        )
        .await
        .map_err(StartError::into_inner)?;

        Ok(Region {
            agent,
            a,
            b,
            redis,
            dir,
            config,
            token,
            workers_started: AtomicUsize::new(0),
            _serial: serial,
        })
    }

    /// Starts `ferry worker` number n (`worker-n`, consumer `worker-n`, log `worker-n.log`) with
    /// `/metrics` and `/healthz` on a free port; ready once its `/healthz` answers 200.
    pub async fn start_worker(&self, spec: WorkerSpec) -> anyhow::Result<Daemon> {
        self.start_worker_with(spec, &[]).await
    }

    /// A worker that also serves the admin API; returns it and the API's address. The token is
    /// [`Region::admin_token`].
    pub async fn start_admin_worker(
        &self,
        spec: WorkerSpec,
    ) -> anyhow::Result<(Daemon, SocketAddr)> {
        let token_file = self.dir.path().join("admin-token");
        std::fs::write(&token_file, format!("{}\n", self.admin_token()))
            .context("writing the admin token file")?;
        // Held until the worker binds it (the worker starts after this drops it).
        let admin = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let extra = [
            "--admin-listen".to_string(),
            admin.to_string(),
            "--admin-token-file".to_string(),
            path_arg(&token_file)?,
        ];
        Ok((self.start_worker_with(spec, &extra).await?, admin))
    }

    /// The admin API token of workers started with [`Region::start_admin_worker`].
    pub fn admin_token(&self) -> String {
        format!("admin-{}", self.token)
    }

    async fn start_worker_with(
        &self,
        spec: WorkerSpec,
        extra: &[String],
    ) -> anyhow::Result<Daemon> {
        let n = self.workers_started.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("worker-{n}");
        let ferry = binary("ferry")?;
        let mut last = None;
        for _ in 0..3 {
            let listen: SocketAddr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let mut args: Vec<String> = vec![
                "worker".into(),
                "--config".into(),
                path_arg(&self.config)?,
                "--redis".into(),
                self.redis.url(),
                "--listen".into(),
                listen.to_string(),
                "--concurrency".into(),
                spec.concurrency.to_string(),
                "--lease-seconds".into(),
                spec.lease_seconds.to_string(),
                "--grace-seconds".into(),
                spec.grace_seconds.to_string(),
                "--consumer".into(),
                name.clone(),
            ];
            args.extend(extra.iter().cloned());
            let log = self.dir.path().join(format!("{name}.log"));
            match Daemon::start(&name, &ferry, &args, &log, listen).await {
                Ok(d) => return Ok(d),
                Err(StartError::AddrInUse(e)) => last = Some(e),
                Err(StartError::Fatal(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no start attempt")))
    }

    /// The webhook token registry `a` sends (`Authorization: Bearer <token>`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The agent's distribution webhook for registry `a`.
    pub fn webhook_url(&self) -> String {
        format!("{}/v1/events/distribution?registry=a", self.agent.url())
    }

    /// The config file the agent and workers read.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Where the Ferry processes' logs are.
    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until `repo:tag` on `b` resolves to `digest`; returns how long that took.
    pub async fn wait_on_b(
        &self,
        repo: &str,
        tag: &str,
        digest: &str,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        crate::oci::wait_for_digest(&self.b.host(), repo, tag, digest, timeout).await
    }

    /// The tail of every log of the region: registries, Redis, agent and workers.
    pub fn diagnostics(&self, lines: usize) -> String {
        let mut out = String::new();
        // Registry access-log lines carry long upload states: keep each line readable.
        let mut section = |title: &str, body: String| {
            out.push_str(&format!("===== {title} =====\n"));
            for line in body.lines() {
                match line.char_indices().nth(300) {
                    Some((cut, _)) => out.push_str(&format!("{} …\n", &line[..cut])),
                    None => out.push_str(&format!("{line}\n")),
                }
            }
        };
        section("registry a", self.a.log_tail(lines));
        section("registry b", self.b.log_tail(lines));
        section("redis", self.redis.log_tail(lines));
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        logs.sort();
        for log in logs {
            let text = std::fs::read(&log)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            section(&log.display().to_string(), tail(&text, lines));
        }
        out
    }
}

/// Set (to anything) to keep every region's log dir, also when its test passes.
pub const KEEP_LOGS_ENV: &str = "FERRY_CHAOS_KEEP_LOGS";

impl Drop for Region {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            eprintln!("{}", self.diagnostics(40));
        }
        if failed || std::env::var_os(KEEP_LOGS_ENV).is_some() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "(Ferry logs and config kept in {})",
                self.dir.path().display()
            );
        }
    }
}

/// Writes the region's config: registries `a` and `b` (plain HTTP; `b` with `b_extra` merged in),
/// policy [`POLICY`], and `config_extra` merged into the top level.
pub fn write_config(
    path: &Path,
    a_url: &str,
    b_url: &str,
    policy_extra: &Map<String, Value>,
    b_extra: &Map<String, Value>,
    poll_a_seconds: Option<u64>,
    config_extra: &Map<String, Value>,
) -> anyhow::Result<()> {
    let mut policy = json!({
        "name": POLICY,
        "mode": "push",
        "src_registry": {"name": "a"},
        "dest_registry": {"name": "b"},
        "trigger": {"type": "event_based"},
        "replicate_deletion": true,
        "override": true,
        "enabled": true,
    });
    if let Some(p) = policy.as_object_mut() {
        p.extend(policy_extra.clone());
    }
    let mut a = json!({"name": "a", "url": a_url, "insecure": true});
    if let Some(seconds) = poll_a_seconds {
        a["poll_interval_seconds"] = json!(seconds);
    }
    let mut b = json!({"name": "b", "url": b_url, "insecure": true});
    if let Some(entry) = b.as_object_mut() {
        entry.extend(b_extra.clone());
    }
    let mut config = json!({
        "registries": [a, b],
        "policies": [policy],
    });
    if let Some(top) = config.as_object_mut() {
        top.extend(config_extra.clone());
    }
    std::fs::write(path, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn path_arg(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
