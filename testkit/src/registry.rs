//! Real servers as child processes: [`Registry`] runs the Debian
//! `docker-registry` (CNCF distribution 2.8) and [`RedisServer`] runs
//! `redis-server` (or whatever `FERRY_REDIS_SERVER` names, e.g. `valkey-server`).
//!
//! Each server owns a [`TempDir`] holding its config, data and log file, and
//! listens on a free `127.0.0.1` port picked just before start (retried when
//! another process takes the port first). `start` returns only once the server
//! answers (`GET /v2/` → 200, `PING` → `+PONG`, or for a TLS-only Redis the log's
//! `Ready to accept connections`); a failed start reports the
//! tail of the server's log. Dropping a server SIGKILLs it; `restart` keeps the
//! port and the data, which is what chaos tests need to model a crash.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Child;

use crate::process::{self, Managed, StartError, START_ATTEMPTS};

/// How long a server may take to answer its readiness probe.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Options for [`Registry::start_with`]. `Default` gives a quiet registry
/// without notifications.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Where the registry POSTs its notification events (e.g. Ferry's agent
    /// webhook). No `notifications` block is written when `None`.
    pub notifications_url: Option<String>,
    /// Sent as `Authorization: Bearer <token>` with every notification.
    pub notifications_token: Option<String>,
    /// distribution's `log.level`: `error` (default) keeps the log short;
    /// `info` writes one access-log line per request, handy for counting PUTs.
    pub log_level: &'static str,
    /// Serve HTTPS with a leaf certificate (SAN `IP:127.0.0.1`) signed by a throwaway CA made with
    /// `openssl`; [`Registry::ca_path`] is the CA to trust.
    pub tls: bool,
    /// Where the registry runs (default: this machine's loopback).
    pub host: crate::Host,
    /// distribution's `http.host` as `<scheme>://<addr>`: the registry builds the URLs it answers
    /// (upload `Location`s) with this scheme instead of the request's, like a registry behind a
    /// misconfigured TLS-terminating proxy. `None`: URLs follow the request.
    pub advertised_scheme: Option<&'static str>,
    /// Keep the storage root on a tmpfs of this many bytes (needs root), so a test can fill the
    /// registry's disk ([`Registry::fill_disk`]) and free it again ([`Registry::free_disk`]).
    pub storage_tmpfs: Option<u64>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            notifications_url: None,
            notifications_token: None,
            log_level: "error",
            tls: false,
            host: crate::Host::loopback(),
            advertised_scheme: None,
            storage_tmpfs: None,
        }
    }
}

/// A tmpfs mounted on a directory; unmounted on drop (lazily: a process may still hold a file).
struct Tmpfs {
    dir: PathBuf,
    /// Its size as mounted.
    bytes: u64,
    /// When [`Registry::fill_disk`] last shrank it (files written since may be damaged).
    filled_at: std::sync::Mutex<Option<std::time::SystemTime>>,
}

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> anyhow::Result<Tmpfs> {
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes}"),
                "ferry-registry",
            ])
            .arg(dir)
            .output()
            .context("running mount")?;
        anyhow::ensure!(
            out.status.success(),
            "mounting a {bytes}-byte tmpfs on {} failed (root needed): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
            bytes,
            filled_at: std::sync::Mutex::new(None),
        })
    }

    /// Remounts it with another size (not below what it holds).
    fn resize(&self, bytes: u64) -> anyhow::Result<()> {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.dir)
            .output()
            .context("running mount -o remount")?;
        anyhow::ensure!(
            out.status.success(),
            "resizing the tmpfs on {} to {bytes} bytes failed: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// A running `docker-registry` with filesystem storage in a temp dir and
/// deletes enabled.
pub struct Registry {
    /// Not running only between a [`Registry::kill`] and the next restart.
    child: Managed,
    addr: SocketAddr,
    /// `dir/data`, the storage root.
    data: PathBuf,
    /// The tmpfs on `data` ([`RegistryOptions::storage_tmpfs`]); unmounted before `dir` goes.
    tmpfs: Option<Tmpfs>,
    /// Holds `config.yml`, `registry.log` and `data/`; removed on drop.
    dir: TempDir,
    /// The CA certificate clients must trust, when serving HTTPS.
    ca: Option<PathBuf>,
    /// Where it runs (kept for restarts).
    host: crate::Host,
}

impl Registry {
    /// Starts a registry with [`RegistryOptions::default`].
    pub async fn start() -> anyhow::Result<Registry> {
        Registry::start_with(RegistryOptions::default()).await
    }

    /// Starts a registry with `opts` and waits until `GET /v2/` answers 200.
    pub async fn start_with(opts: RegistryOptions) -> anyhow::Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-registry-")
            .tempdir()
            .context("creating the registry's temp dir")?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let tmpfs = opts
            .storage_tmpfs
            .map(|bytes| Tmpfs::mount(&data, bytes))
            .transpose()?;
        let mut tmpfs = Some(tmpfs);
        let tls = if opts.tls {
            Some(crate::tls::make_certificates(dir.path())?)
        } else {
            None
        };
        let ca = tls.as_ref().map(|t| t.ca.clone());

        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = opts.host.free_port()?;
            let addr = SocketAddr::from((opts.host.ip, port));
            let config = registry_config(&opts, &data, addr, tls.as_ref());
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config)
                .with_context(|| format!("writing {}", config_path.display()))?;
            match spawn_registry(&opts.host, dir.path(), addr, ca.as_deref()).await {
                Ok(child) => {
                    return Ok(Registry {
                        child: Managed::new(child),
                        addr,
                        data,
                        tmpfs: tmpfs.take().flatten(),
                        dir,
                        ca,
                        host: opts.host.clone(),
                    })
                }
                Err(StartError::AddrInUse(e)) => last_err = Some(e),
                Err(StartError::Fatal(e)) => return Err(e),
            }
        }
        Err(last_err
            .unwrap_or_else(|| anyhow::anyhow!("no start attempt made"))
            .context(format!(
                "docker-registry lost the race for a free port {START_ATTEMPTS} times"
            )))
    }

    /// `127.0.0.1:PORT`, the form image references use.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT` (`https://` when serving TLS)
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA certificate (PEM) that signed this registry's TLS certificate.
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// The listening address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The storage root (`storage.filesystem.rootdirectory`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The registry process's id while it runs (e.g. to read its CPU time from `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// The file receiving the registry's stdout and stderr (all runs).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The last `lines` lines of the registry's log.
    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.log_path(), lines)
    }

    /// SIGKILLs the registry (queued notifications are lost, as in a crash).
    /// The port and data stay reserved for [`Registry::restart`].
    pub async fn kill(&mut self) {
        self.child.kill().await;
    }

    /// Shrinks the storage tmpfs to what it holds (a remount, no memory taken): every write that
    /// needs a new block fails with `ENOSPC` until [`Registry::free_disk`]. A write landing
    /// between the measure and the remount makes the remount fail (a tmpfs cannot shrink below
    /// what it holds): measured again, up to 20 times.
    pub fn fill_disk(&self) -> anyhow::Result<()> {
        let tmpfs = self
            .tmpfs
            .as_ref()
            .context("the registry was started without storage_tmpfs")?;
        // A write under way when the disk filled may have been cut short a moment before.
        let since = std::time::SystemTime::now() - Duration::from_secs(1);
        *tmpfs
            .filled_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(since);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match tmpfs.resize(self.disk_used()?.max(1)) {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= 20 => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Bytes the storage file system holds now (`stat -f`: blocks in use × block size).
    fn disk_used(&self) -> anyhow::Result<u64> {
        let out = std::process::Command::new("stat")
            .args(["-f", "-c", "%b %f %S"])
            .arg(&self.data)
            .output()
            .context("running stat -f")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let n: Vec<u64> = text
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        let [blocks, free, size] = n[..] else {
            anyhow::bail!(
                "unexpected `stat -f` output for {}: {text:?}",
                self.data.display()
            );
        };
        Ok((blocks - free) * size)
    }

    /// Repairs what the full disk broke, as an operator must, then gives the storage tmpfs its
    /// full size again after [`Registry::fill_disk`]; returns the paths removed. Distribution 2.8
    /// writes files in place, and a write that hit `ENOSPC` leaves them cut short, for good:
    /// - a repository's `link` file left empty: every later `HEAD` of that blob, tag or revision
    ///   in that repository answers 500 (skopeo retries a 500 forever);
    /// - a blob's `data` file (a manifest is written straight into it) cut short: a later push of
    ///   the same content finds the file there and does not write it again (answering 201), and
    ///   every read of it answers 500.
    ///
    /// The damaged files are removed while the disk is still full (nothing new is written over
    /// them meanwhile): `link` files shorter than a digest, and `data` files written since the
    /// disk filled whose bytes do not hash to their name, each found twice 300 ms apart (a file
    /// being rewritten right now is short for an instant).
    pub async fn free_disk(&self) -> anyhow::Result<Vec<PathBuf>> {
        let tmpfs = self
            .tmpfs
            .as_ref()
            .context("the registry was started without storage_tmpfs")?;
        let since = *tmpfs
            .filled_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let root = self.data.join("docker/registry/v2");
        let damaged = |path: &Path| -> bool {
            if path.file_name().is_some_and(|n| n == "link") {
                return link_is_short(path);
            }
            blob_is_damaged(path, since)
        };
        let suspects: Vec<PathBuf> = storage_files(&root)
            .into_iter()
            .filter(|p| damaged(p))
            .collect();
        let mut removed = Vec::new();
        if !suspects.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            for path in suspects {
                if damaged(&path) {
                    std::fs::remove_file(&path).with_context(|| {
                        format!("removing {}, damaged by the full disk", path.display())
                    })?;
                    removed.push(path);
                }
            }
        }
        tmpfs.resize(tmpfs.bytes)?;
        Ok(removed)
    }

    /// Kills the registry if it runs and starts it again on the same port
    /// with the same config and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        let child = spawn_registry(&self.host, self.dir.path(), self.addr, self.ca.as_deref())
            .await
            .map_err(StartError::into_inner)
            .with_context(|| format!("restarting docker-registry on {}", self.addr))?;
        self.child.set(child);
        Ok(())
    }

    /// Kills the registry and removes its temp dir.
    pub async fn stop(mut self) {
        self.kill().await;
    }
}

/// One start attempt of `docker-registry serve DIR/config.yml`.
async fn spawn_registry(
    host: &crate::Host,
    dir: &Path,
    addr: SocketAddr,
    ca: Option<&Path>,
) -> Result<Child, StartError> {
    let log = dir.join("registry.log");
    let what = format!("docker-registry on {addr}");
    let mut cmd = host.command("docker-registry");
    cmd.arg("serve")
        .arg(dir.join("config.yml"))
        .current_dir(dir);
    // distribution lets REGISTRY_* variables override any config key; a stray
    // one in a developer's shell must not change the test registry.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REGISTRY_") {
            cmd.env_remove(key);
        }
    }
    let mut child = process::spawn_logged(&mut cmd, &what, &log).map_err(|e| {
        StartError::Fatal(
            e.context("is /usr/bin/docker-registry installed (Debian package docker-registry)?"),
        )
    })?;
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(500));
    let scheme = match ca {
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| StartError::Fatal(e.into()))?;
            let cert =
                reqwest::Certificate::from_pem(&pem).map_err(|e| StartError::Fatal(e.into()))?;
            builder = builder.add_root_certificate(cert);
            "https"
        }
        None => "http",
    };
    let client = builder.build().map_err(|e| StartError::Fatal(e.into()))?;
    let url = format!("{scheme}://{addr}/v2/");
    process::wait_ready(&mut child, &what, &log, READY_TIMEOUT, || async {
        matches!(client.get(&url).send().await, Ok(r) if r.status() == reqwest::StatusCode::OK)
    })
    .await?;
    Ok(child)
}

/// distribution's YAML config (see shared/REGISTRY-FACTS.md).
fn registry_config(
    opts: &RegistryOptions,
    data: &Path,
    addr: SocketAddr,
    tls: Option<&crate::tls::Certificates>,
) -> String {
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: {level}\n\
         storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\n\
         http:\n  addr: {addr}\n  secret: ferry-testkit\n",
        level = opts.log_level,
        data = yaml_str(&data.to_string_lossy()),
    );
    if let Some(scheme) = opts.advertised_scheme {
        yaml.push_str(&format!(
            "  host: {}\n",
            yaml_str(&format!("{scheme}://{addr}"))
        ));
    }
    if let Some(t) = tls {
        yaml.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            yaml_str(&t.cert.to_string_lossy()),
            yaml_str(&t.key.to_string_lossy())
        ));
    }
    if let Some(url) = &opts.notifications_url {
        yaml.push_str(&format!(
            "notifications:\n  events:\n    includereferences: true\n  endpoints:\n    - name: ferry\n      url: {}\n",
            yaml_str(url)
        ));
        if let Some(token) = &opts.notifications_token {
            yaml.push_str(&format!(
                "      headers:\n        Authorization: [{}]\n",
                yaml_str(&format!("Bearer {token}"))
            ));
        }
        yaml.push_str(
            "      timeout: 1s\n      threshold: 5\n      backoff: 1s\n      ignoredmediatypes:\n        - application/octet-stream\n",
        );
    }
    yaml
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// A running `redis-server` (or `$FERRY_REDIS_SERVER`, e.g. `valkey-server`).
pub struct RedisServer {
    /// Not running only between a [`RedisServer::kill`] and the next restart.
    child: Managed,
    port: u16,
    appendonly: bool,
    /// The server binary (`redis-server`, `valkey-server`, ...), kept so a restart runs the same one.
    binary: String,
    /// Holds `redis.log` and the server's `--dir` (RDB/AOF files).
    dir: TempDir,
    /// Where it runs.
    host: crate::Host,
    /// TLS and password, when started with [`RedisServer::start_tls`].
    security: Security,
}

/// How a [`RedisServer`] protects itself, as a production deployment would.
#[derive(Clone, Debug, Default)]
struct Security {
    /// Serve TLS only (no plaintext port) with this leaf, signed by its CA.
    tls: Option<crate::tls::Certificates>,
    /// `requirepass`.
    password: Option<String>,
    /// `replicaof`: a replica of this primary (for Sentinel failovers).
    replica_of: Option<std::net::SocketAddr>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    /// `appendonly` turns on the AOF with `appendfsync everysec` (RDB
    /// snapshots are always off), so a [`RedisServer::restart`] after
    /// [`RedisServer::kill`] models a crash of a durable deployment.
    pub async fn start(appendonly: bool) -> anyhow::Result<RedisServer> {
        RedisServer::start_binary(&redis_binary(), appendonly).await
    }

    /// Like [`RedisServer::start`], but runs `binary` (a name on `PATH` or a
    /// path) instead of `$FERRY_REDIS_SERVER`, so one test run can cover both
    /// `redis-server` and `valkey-server`.
    pub async fn start_binary(binary: &str, appendonly: bool) -> anyhow::Result<RedisServer> {
        RedisServer::start_on(&crate::Host::loopback(), binary, appendonly).await
    }

    /// Like [`RedisServer::start_binary`] (no AOF), but serving **only TLS** on its port, with a
    /// leaf for `127.0.0.1` signed by a throwaway CA ([`RedisServer::ca_path`]; clients need not
    /// present a certificate), and requiring `password` (`requirepass`) when one is given.
    pub async fn start_tls(binary: &str, password: Option<&str>) -> anyhow::Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-redis-")
            .tempdir()
            .context("creating the redis temp dir")?;
        let security = Security {
            tls: Some(crate::tls::make_certificates(dir.path())?),
            password: password.map(str::to_owned),
            replica_of: None,
        };
        RedisServer::start_in(dir, &crate::Host::loopback(), binary, false, security).await
    }

    /// A replica of `primary` (same binary, and an AOF when the primary has one: once promoted
    /// it is as durable as the primary was), for failovers through Sentinel
    /// ([`crate::sentinel::Sentinel`]).
    pub async fn start_replica(primary: &RedisServer) -> anyhow::Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-redis-")
            .tempdir()
            .context("creating the redis temp dir")?;
        let security = Security {
            replica_of: Some(std::net::SocketAddr::from((primary.host.ip, primary.port))),
            ..Security::default()
        };
        RedisServer::start_in(
            dir,
            &primary.host,
            &primary.binary,
            primary.appendonly,
            security,
        )
        .await
    }

    /// Like [`RedisServer::start_binary`], on `host` (e.g. in a network namespace).
    pub async fn start_on(
        host: &crate::Host,
        binary: &str,
        appendonly: bool,
    ) -> anyhow::Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-redis-")
            .tempdir()
            .context("creating the redis temp dir")?;
        RedisServer::start_in(dir, host, binary, appendonly, Security::default()).await
    }

    async fn start_in(
        dir: TempDir,
        host: &crate::Host,
        binary: &str,
        appendonly: bool,
        security: Security,
    ) -> anyhow::Result<RedisServer> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = host.free_port()?;
            match spawn_redis(host, binary, dir.path(), port, appendonly, &security).await {
                Ok(child) => {
                    return Ok(RedisServer {
                        child: Managed::new(child),
                        port,
                        appendonly,
                        binary: binary.to_owned(),
                        dir,
                        host: host.clone(),
                        security,
                    })
                }
                Err(StartError::AddrInUse(e)) => last_err = Some(e),
                Err(StartError::Fatal(e)) => return Err(e),
            }
        }
        Err(last_err
            .unwrap_or_else(|| anyhow::anyhow!("no start attempt made"))
            .context(format!(
                "{binary} lost the race for a free port {START_ATTEMPTS} times"
            )))
    }

    /// `redis://IP:PORT` (`127.0.0.1` unless started on another host), `rediss://…` when started
    /// with [`RedisServer::start_tls`]. Never carries the password.
    pub fn url(&self) -> String {
        let scheme = if self.security.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{}", self.host())
    }

    /// The CA that signed the server's TLS certificate (PEM), when it serves TLS.
    pub fn ca_path(&self) -> Option<&Path> {
        self.security.tls.as_ref().map(|t| t.ca.as_path())
    }

    /// `IP:PORT`
    pub fn host(&self) -> String {
        std::net::SocketAddr::from((self.host.ip, self.port)).to_string()
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// The listening port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's `--dir`, where the AOF (`appendonlydir/`) lives.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.dir.path().join("redis.log"), lines)
    }

    /// SIGKILLs the server: writes not yet fsynced to the AOF are lost.
    pub async fn kill(&mut self) {
        self.child.kill().await;
    }

    /// Kills the server if it runs and starts it again on the same port and
    /// directory (reloading the AOF when `appendonly`).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        let child = spawn_redis(
            &self.host,
            &self.binary,
            self.dir.path(),
            self.port,
            self.appendonly,
            &self.security,
        )
        .await
        .map_err(StartError::into_inner)
        .with_context(|| format!("restarting {} on port {}", self.binary, self.port))?;
        self.child.set(child);
        Ok(())
    }

    /// The server binary this instance runs.
    /// Where it runs.
    pub fn runs_on(&self) -> &crate::Host {
        &self.host
    }

    pub fn binary(&self) -> &str {
        &self.binary
    }

    /// Kills the server and removes its directory.
    pub async fn stop(mut self) {
        self.kill().await;
    }
}

fn redis_binary() -> String {
    std::env::var("FERRY_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// One start attempt of the redis binary.
async fn spawn_redis(
    host: &crate::Host,
    binary: &str,
    dir: &Path,
    port: u16,
    appendonly: bool,
    security: &Security,
) -> Result<Child, StartError> {
    let log = dir.join("redis.log");
    let addr = std::net::SocketAddr::from((host.ip, port));
    let what = format!("{binary} on {addr}");
    let mut cmd = host.command(binary);
    match &security.tls {
        None => cmd.arg("--port").arg(port.to_string()),
        // `--port 0` turns the plaintext listener off.
        Some(tls) => cmd
            .args(["--port", "0", "--tls-port"])
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&tls.cert)
            .arg("--tls-key-file")
            .arg(&tls.key)
            .arg("--tls-ca-cert-file")
            .arg(&tls.ca)
            .args(["--tls-auth-clients", "no"]),
    };
    if let Some(password) = &security.password {
        cmd.arg("--requirepass").arg(password);
    }
    if let Some(primary) = &security.replica_of {
        cmd.arg("--replicaof")
            .arg(primary.ip().to_string())
            .arg(primary.port().to_string());
    }
    cmd.arg("--bind")
        .arg(host.ip.to_string())
        // Off the loopback, protected mode refuses every client of a password-less server.
        .arg("--protected-mode")
        .arg("no")
        .arg("--dir")
        .arg(dir)
        .arg("--appendonly")
        .arg(if appendonly { "yes" } else { "no" })
        .arg("--appendfsync")
        .arg("everysec")
        .arg("--save")
        .arg("")
        .arg("--daemonize")
        .arg("no")
        .current_dir(dir);
    let mut child = process::spawn_logged(&mut cmd, &what, &log)
        .map_err(|e| {
            StartError::Fatal(e.context(format!(
                "is `{binary}` installed? FERRY_REDIS_SERVER names the redis-server/valkey-server binary"
            )))
        })?;
    if security.tls.is_some() {
        // A plaintext PING cannot reach a TLS-only server; both servers log this line once they
        // accept clients (after loading the AOF).
        process::wait_ready(&mut child, &what, &log, READY_TIMEOUT, || async {
            process::this_run(&log).contains("Ready to accept connections")
        })
        .await?;
    } else {
        process::wait_ready(&mut child, &what, &log, READY_TIMEOUT, || ping(addr)).await?;
    }
    Ok(child)
}

/// `true` if the server on `port` answers an inline `PING` with `+PONG`
/// (a server still loading its AOF answers `-LOADING`: not ready).
async fn ping(addr: std::net::SocketAddr) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await?;
        std::io::Result::Ok(buf[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Ok(true))
    )
}

/// A `link` file shorter than a sha256 digest (`sha256:` and 64 hex digits).
fn link_is_short(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() < 71)
}

/// Whether the blob `data` file at `path` (`…/blobs/sha256/<xx>/<hex>/data`), written since
/// `since`, does not hash to the digest its directory names.
fn blob_is_damaged(path: &Path, since: Option<std::time::SystemTime>) -> bool {
    if path.file_name().is_none_or(|n| n != "data") {
        return false;
    }
    let Some(hex) = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
    else {
        return false;
    };
    let in_blobs = path.components().any(|c| c.as_os_str() == "blobs");
    let recent = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|m| since.is_some_and(|s| m >= s));
    if !in_blobs || !recent || hex.len() != 64 {
        return false;
    }
    std::fs::read(path).is_ok_and(|bytes| crate::sha256_digest(&bytes) != format!("sha256:{hex}"))
}

/// Every `link` file of the repositories and `data` file of the blobs under `root` (see
/// [`Registry::free_disk`]).
fn storage_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.join("repositories"), root.join("blobs")];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() && e.file_name() != "_uploads" => todo.push(path),
                Ok(t) if t.is_file() && (e.file_name() == "link" || e.file_name() == "data") => {
                    out.push(path)
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_notifications_only_when_asked() {
        let addr: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let plain = registry_config(&RegistryOptions::default(), Path::new("/tmp/d"), addr, None);
        assert!(!plain.contains("notifications"));
        assert!(plain.contains("addr: 127.0.0.1:5001"));
        assert!(plain.contains("rootdirectory: \"/tmp/d\""));

        let opts = RegistryOptions {
            notifications_url: Some("http://127.0.0.1:9/v1/events".into()),
            notifications_token: Some("s3cret".into()),
            log_level: "info",
            ..RegistryOptions::default()
        };
        let yaml = registry_config(&opts, Path::new("/tmp/d"), addr, None);
        assert!(yaml.contains("url: \"http://127.0.0.1:9/v1/events\""));
        assert!(yaml.contains("Authorization: [\"Bearer s3cret\"]"));
        assert!(yaml.contains("- application/octet-stream"));
        assert!(yaml.contains("level: info"));
    }

    /// The retry path: a start on a taken port is classified as `AddrInUse`.
    #[tokio::test]
    async fn taken_port_is_reported_as_addr_in_use() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let config = registry_config(
            &RegistryOptions::default(),
            &dir.path().join("data"),
            addr,
            None,
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        match spawn_registry(&crate::Host::loopback(), dir.path(), addr, None).await {
            Err(StartError::AddrInUse(e)) => {
                assert!(e.to_string().contains("address already in use"), "{e}")
            }
            Err(StartError::Fatal(e)) => panic!("classified as fatal: {e:#}"),
            Ok(_) => panic!("started on a taken port"),
        }

        let dir = tempfile::tempdir().unwrap();
        match spawn_redis(
            &crate::Host::loopback(),
            &redis_binary(),
            dir.path(),
            addr.port(),
            false,
            &Security::default(),
        )
        .await
        {
            Err(StartError::AddrInUse(_)) => {}
            Err(StartError::Fatal(e)) => panic!("classified as fatal: {e:#}"),
            Ok(_) => panic!("started on a taken port"),
        }
    }
}
