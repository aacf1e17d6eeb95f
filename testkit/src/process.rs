//! Shared plumbing for the child processes in [`crate::registry`]: free-port
//! picking, log files, and the "wait until ready or explain why not" loop.
//!
//! Invariant: every child's stdout and stderr go to one append-mode log file,
//! and every start failure carries that log's tail, so a test failure says
//! why the server did not come up.

use std::fs::OpenOptions;
use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// How many times a server start is retried when its port was taken between
/// picking it and the server binding it.
pub(crate) const START_ATTEMPTS: usize = 3;

/// Written to the log before each start, so one run's lines can be told from the last's.
const START_MARKER: &str = "--- ferry-testkit: starting";

/// A free loopback port: [`Host::free_port`](crate::Host::free_port) on
/// [`Host::loopback`](crate::Host::loopback).
///
/// Racy by nature (another process may take the port before the child binds
/// it): callers retry on "address already in use".
pub fn free_port() -> anyhow::Result<u16> {
    crate::Host::loopback().free_port()
}

/// The last `max_lines` lines of a log file (or a note saying why there are none).
pub(crate) fn log_tail(path: &Path, max_lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(max_lines);
            let tail = lines[start..].join("\n");
            if tail.trim().is_empty() {
                format!("(log {} is empty)", path.display())
            } else {
                tail
            }
        }
        Err(e) => format!("(cannot read log {}: {e})", path.display()),
    }
}

/// Spawns `cmd` with stdout and stderr appended to `log` and `kill_on_drop`.
pub(crate) fn spawn_logged(cmd: &mut Command, what: &str, log: &Path) -> anyhow::Result<Child> {
    use std::io::Write as _;
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening log file {}", log.display()))?;
    // Marks each (re)start so a tail after a restart shows which run said what.
    writeln!(file, "{START_MARKER} {what} ---").ok();
    let stderr = file
        .try_clone()
        .context("duplicating the log file handle")?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    cmd.spawn().with_context(|| format!("spawning {what}"))
}

/// Why a start attempt failed.
pub(crate) enum StartError {
    /// The port was taken by someone else: pick another one and retry.
    AddrInUse(anyhow::Error),
    /// Anything else: give up.
    Fatal(anyhow::Error),
}

impl StartError {
    pub(crate) fn into_inner(self) -> anyhow::Error {
        match self {
            StartError::AddrInUse(e) | StartError::Fatal(e) => e,
        }
    }
}

/// Polls `probe` until it answers `true`, the child exits, or `timeout` passes.
///
/// A probe can be answered by *another* server that won the race for the
/// port, so after the first success the child is given a moment and checked
/// again: a child that lost the race exits right after failing to bind.
pub(crate) async fn wait_ready<F, Fut>(
    child: &mut Child,
    what: &str,
    log: &Path,
    timeout: Duration,
    mut probe: F,
) -> Result<(), StartError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if let Some(err) = exited(child, what, log) {
            return Err(err);
        }
        if probe().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(err) = exited(child, what, log) {
                return Err(err);
            }
            return Ok(());
        }
        if started.elapsed() > timeout {
            let _ = child.start_kill();
            return Err(StartError::Fatal(anyhow::anyhow!(
                "{what} did not become ready within {timeout:?}; log tail:\n{}",
                log_tail(log, 30)
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The lines of `log` written since the last start: the log is appended to across restarts.
pub(crate) fn this_run(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.rsplit(START_MARKER)
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `Some(error)` if the child has exited (or cannot be polled).
fn exited(child: &mut Child, what: &str, log: &Path) -> Option<StartError> {
    match child.try_wait() {
        Ok(None) => None,
        Ok(Some(status)) => {
            let tail = log_tail(log, 30);
            let err = anyhow::anyhow!("{what} exited during startup ({status}); log tail:\n{tail}");
            if this_run(log)
                .to_ascii_lowercase()
                .contains("address already in use")
            {
                Some(StartError::AddrInUse(err))
            } else {
                Some(StartError::Fatal(err))
            }
        }
        Err(e) => Some(StartError::Fatal(anyhow::anyhow!("polling {what}: {e}"))),
    }
}

/// Kills the child (SIGKILL) and reaps it, waiting at most 5 s.
pub(crate) async fn kill_and_reap(child: &mut Child) {
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}

/// A server's child process: killed and reaped on [`Managed::kill`], killed when dropped, so no
/// test leaves a server behind.
#[derive(Default)]
pub(crate) struct Managed(Option<Child>);

impl Managed {
    pub(crate) fn new(child: Child) -> Self {
        Managed(Some(child))
    }

    /// Kills the process if it runs and waits for it to exit.
    pub(crate) async fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            kill_and_reap(&mut child).await;
        }
    }

    /// The process id while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.0.as_ref().and_then(Child::id)
    }

    /// Takes ownership of a (re)started process.
    pub(crate) fn set(&mut self, child: Child) {
        self.0 = Some(child);
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.start_kill();
        }
    }
}
