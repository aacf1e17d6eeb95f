//! Ferry's own binaries as child processes: locating them, starting them with their output in a
//! log file, probing `/healthz` and `/metrics`, and stopping them with real signals.
//!
//! Invariants:
//! - A [`Daemon`] is ready only once its `/healthz` answered 200 (for the agent and workers that
//!   means "the queue answers"); a start failure carries the tail of the process's log.
//! - A [`Daemon`] is SIGKILLed when dropped (`kill_on_drop`); [`Daemon::sigkill`] also reaps it.
//! - [`serial`] is an OS file lock (`flock`), so it serializes scenarios across the separate
//!   processes nextest runs each test in, and is released even if a test process dies.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// How long a Ferry process may take to answer `/healthz` after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of the workspace binary `name` (`ferry`, `ferry-agent`) built next to this test
/// executable: `target/<profile>/deps/<test>-<hash>` → `target/<profile>/<name>`.
///
/// Integration tests of this package cannot use `CARGO_BIN_EXE_*` for another package's binaries,
/// so they must be built beforehand (`.ci/run` runs `cargo build --workspace` before the tests).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let mut dir = exe
        .parent()
        .context("the test executable has no parent directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("deps/ has no parent directory")?;
    }
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "the `{name}` binary is missing at {} — build them first: cargo build --workspace",
        path.display()
    );
    Ok(path)
}

/// Held while a scenario runs; dropping it lets the next one start.
pub struct SerialGuard {
    _file: std::fs::File,
}

/// Waits for the cross-process lock that runs the chaos scenarios one at a time (each starts two
/// registries, Redis, an agent and workers; several at once overload a 2-core machine and make
/// their timings meaningless). The lock file lives next to the binaries, so separate checkouts do
/// not wait for each other.
pub async fn serial() -> anyhow::Result<SerialGuard> {
    let path = binary("ferry")
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir)
        .join("ferry-chaos-tests.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .context("the lock task panicked")?
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(SerialGuard { _file: file })
}

/// A running Ferry process (`ferry-agent`, `ferry worker`) that serves `/healthz` and `/metrics`.
pub struct Daemon {
    name: String,
    child: Child,
    listen: SocketAddr,
    log: PathBuf,
    http: reqwest::Client,
    /// Set once the process was seen to exit.
    status: Option<ExitStatus>,
}

/// Why a start failed.
pub(crate) enum StartError {
    /// The listen address was taken: another port may work.
    AddrInUse(anyhow::Error),
    Fatal(anyhow::Error),
}

impl StartError {
    pub(crate) fn into_inner(self) -> anyhow::Error {
        match self {
            StartError::AddrInUse(e) | StartError::Fatal(e) => e,
        }
    }
}

impl Daemon {
    /// Spawns `program args…` with stdout and stderr appended to `log`, then waits until
    /// `http://listen/healthz` answers 200.
    pub(crate) async fn start(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        listen: SocketAddr,
    ) -> Result<Daemon, StartError> {
        Daemon::start_on(
            &ferry_testkit::Host::loopback(),
            name,
            program,
            args,
            &[],
            log,
            listen,
        )
        .await
    }

    /// [`Daemon::start`] on `host` (inside its network namespace), with `env` added to its
    /// environment.
    pub(crate) async fn start_on(
        host: &ferry_testkit::Host,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
        listen: SocketAddr,
    ) -> Result<Daemon, StartError> {
        use std::io::Write as _;
        let fatal = |e: anyhow::Error| StartError::Fatal(e);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))
            .map_err(fatal)?;
        let shown = format!("{} {}", program.display(), args.join(" "));
        writeln!(file, "--- chaos-tests: starting {name}: {shown}").ok();
        let stderr = file
            .try_clone()
            .context("duplicating the log handle")
            .map_err(fatal)?;
        let child = host
            .command(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {shown}"))
            .map_err(fatal)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .context("building an HTTP client")
            .map_err(fatal)?;
        let mut daemon = Daemon {
            name: name.to_string(),
            child,
            listen,
            log: log.to_path_buf(),
            http,
            status: None,
        };
        let started = std::time::Instant::now();
        let outcome = loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                daemon.status = Some(status);
                break Err(anyhow::anyhow!("{name} exited during startup ({status})"));
            }
            if daemon.healthz().await == Some(200) {
                break Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                break Err(anyhow::anyhow!(
                    "{name} did not answer /healthz with 200 within {READY_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(crate::POLL).await;
        };
        match outcome {
            Ok(()) => Ok(daemon),
            Err(e) => {
                let _ = daemon.child.start_kill();
                let tail = daemon.log_tail(30);
                let err = anyhow::anyhow!("{e}; log tail ({}):\n{tail}", log.display());
                let this_run = daemon
                    .log_text()
                    .rsplit("--- chaos-tests: starting")
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                if this_run.contains("address already in use") || this_run.contains("addrinuse") {
                    Err(StartError::AddrInUse(err))
                } else {
                    Err(StartError::Fatal(err))
                }
            }
        }
    }

    /// The name given at start (`agent`, `worker-1`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:PORT`, where `/healthz`, `/metrics` (and the agent's webhooks) are served.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Where `/healthz` and `/metrics` are served.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The process id, while the process has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The status of `/healthz`, `None` when it does not answer.
    pub async fn healthz(&self) -> Option<u16> {
        self.http
            .get(format!("{}/healthz", self.url()))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// The `/metrics` page.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let response = self
            .http
            .get(format!("{}/metrics", self.url()))
            .send()
            .await
            .with_context(|| format!("GET {}/metrics", self.url()))?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET {}/metrics answered {}",
            self.url(),
            response.status()
        );
        Ok(response.text().await?)
    }

    /// Sum of the samples of metric `name` matching `labels` (see [`crate::metrics::sum`]). An
    /// error when `/metrics` does not answer or no sample matches: a dead process or a renamed
    /// metric must fail the check, never read as 0.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        self.metric_if_present(name, labels)
            .await?
            .with_context(|| format!("{} exports no sample of {name} with {labels:?}", self.url()))
    }

    /// [`Self::metric`] where a series not created yet (a labelled counter before its first
    /// increment) is `None`; still an error when `/metrics` does not answer.
    pub async fn metric_if_present(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Option<f64>> {
        Ok(crate::metrics::sum(&self.metrics().await?, name, labels))
    }

    /// Sends SIGKILL and reaps the process.
    pub async fn sigkill(&mut self) -> anyhow::Result<ExitStatus> {
        let _ = self.child.start_kill();
        self.wait_exit(Duration::from_secs(10)).await
    }

    /// Sends SIGTERM (a graceful stop request) without waiting.
    pub async fn sigterm(&self) -> anyhow::Result<()> {
        self.signal("TERM").await
    }

    /// Freezes the process (SIGSTOP): it keeps its connections but sends nothing more.
    pub async fn sigstop(&self) -> anyhow::Result<()> {
        self.signal("STOP").await
    }

    /// Lets a frozen process run again (SIGCONT).
    pub async fn sigcont(&self) -> anyhow::Result<()> {
        self.signal("CONT").await
    }

    /// `kill -<name> <pid>`.
    async fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} has already exited", self.name))?;
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .await
            .with_context(|| format!("running kill -{name}"))?;
        anyhow::ensure!(status.success(), "kill -{name} {pid} failed ({status})");
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| format!("{} still runs after {timeout:?}", self.name))?
            .with_context(|| format!("waiting for {}", self.name))?;
        self.status = Some(status);
        Ok(status)
    }

    /// `true` while the process runs.
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.status = Some(status);
                false
            }
            Err(_) => false,
        }
    }

    /// The file holding the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_text(), lines)
    }

    /// How many log lines contain every one of `needles`.
    pub fn log_lines_with(&self, needles: &[&str]) -> usize {
        self.log_text()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
