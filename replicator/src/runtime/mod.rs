//! Runtime: what every long-running process of Ferry runs on, below the daemon assembly
//! ([`crate::app`]) and used by every part of it.
//!
//! - [`background`]: long-running routines under one supervisor (cancellation, backoff, status).
//! - [`listener`]: every listening socket and its limits (connections, header and idle timeouts).
//! - [`ops`]: `/healthz` and `/metrics` (the process's one metrics registry, [`ops::ProcessMetrics`]);
//!   [`telemetry`]: OTLP traces.
//! - this file: logging (and OTLP trace) setup, the shutdown signal, where the Redis URL comes
//!   from ([`RedisFlags`]; connecting is [`crate::store::redis`]'s), and this host's name
//!   ([`hostname`]).
//!
//! Invariants: every long-running binary stops on SIGINT or SIGTERM through [`shutdown_signal`]
//! (which also ends a wait for Redis at start-up). The three daemons (`ferry-agent`,
//! `ferry worker`, `ferry serve`) resolve their Redis URL with [`RedisFlags::target`] only, and no
//! message shows a Redis password ([`redact_url`]).
pub mod background;
pub mod listener;
pub mod ops;
pub mod telemetry;

use std::path::{Path, PathBuf};

pub use crate::runtime::telemetry::Telemetry;
use crate::store::redis::{redact_url, RedisTarget};

/// Log line format on stderr (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr; `FERRY_LOG` (an `EnvFilter` directive) overrides `default_level`. When
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, also exports spans by OTLP as `service_name` (unless
/// `OTEL_SERVICE_NAME` says otherwise; see [`Telemetry::from_env`]); a bad OTel setting is logged
/// as a warning and the process runs without export.
///
/// Keep the returned guard until the process exits: dropping it flushes the pending spans.
pub fn init_logging(format: LogFormat, default_level: &str, service_name: &str) -> Telemetry {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};
    let filter =
        EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    // The filter is the log layer's own: the trace layer exports spans whatever the log level.
    let fmt = match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
    };
    let (telemetry, problem) = match Telemetry::from_env(service_name) {
        Ok(telemetry) => (telemetry, None),
        Err(problem) => (Telemetry::disabled(), Some(problem)),
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(telemetry.layer())
        .init();
    if let Some(problem) = problem {
        tracing::warn!(error = %problem, "OpenTelemetry disabled: traces are not exported");
    }
    telemetry
}

/// Runs `main` on a multi-threaded tokio runtime and returns its exit code; exit 2 when the
/// runtime itself cannot start.
pub fn block_on_exit<F: std::future::Future<Output = u8>>(main: F) -> std::process::ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => std::process::ExitCode::from(rt.block_on(main)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// The environment variable holding the Redis URL when neither `--redis` nor `--redis-url-file`
/// is given.
pub const REDIS_URL_ENV: &str = "FERRY_REDIS_URL";

/// Where a daemon's Redis/Valkey is and how to trust it. The URL (with its password) comes from
/// `--redis`, `--redis-url-file` or `FERRY_REDIS_URL`, in that order; prefer the last two, since
/// every local user can read a process's command line in `/proc`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RedisFlags {
    /// Redis/Valkey URL of this region's queue, e.g. redis://127.0.0.1:6379/0 or
    /// rediss://:PASSWORD@valkey:6380/0 (TLS), or redis+sentinel://s1:26379,s2:26379/MASTER (the
    /// primary a Sentinel setup names, followed through failovers). Any local user can read it in /proc: put a URL with a
    /// password in --redis-url-file or FERRY_REDIS_URL instead. Default: FERRY_REDIS_URL.
    #[arg(long = "redis", value_name = "URL", conflicts_with = "redis_url_file")]
    pub url: Option<String>,
    /// File whose first line is the Redis/Valkey URL (e.g. a mounted Secret or a systemd
    /// credential); keeps the password off the command line.
    #[arg(long, value_name = "FILE")]
    pub redis_url_file: Option<PathBuf>,
    /// PEM CA certificate(s) that signed the server's TLS certificate (rediss:// URLs); without it
    /// the public web roots are trusted.
    #[arg(long, value_name = "FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// Replicas that must confirm (Redis `WAIT`, up to 1 s) every job and forwarded event before
    /// the sender gets its answer, so that a primary's death loses no acknowledged event once
    /// Sentinel promotes a replica; too few confirmations answer 503 and the sender re-sends.
    /// 0 (default): asynchronous replication, as Redis does by default.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub redis_wait_replicas: u32,
}

/// Why the `--redis*` flags do not name a usable server. No variant holds a password.
#[derive(Debug, thiserror::Error)]
pub enum RedisFlagsError {
    #[error("no Redis URL: set {REDIS_URL_ENV} or pass --redis-url-file FILE (or --redis URL)")]
    Missing,
    #[error("cannot read --redis-url-file {path}: {source}")]
    ReadUrlFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--redis-url-file {path} holds no URL: write the redis://, rediss:// or redis+sentinel:// URL on its first line")]
    EmptyUrlFile { path: PathBuf },
    #[error("cannot read --redis-ca-file {path}: {source}")]
    ReadCaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--redis-ca-file needs a TLS URL: the Redis URL from {origin} ({url}) does not start with rediss://")]
    CaWithoutTls { origin: &'static str, url: String },
    #[error("the Redis URL from {origin} ({url}) is not usable{ca}: {source}")]
    Invalid {
        origin: &'static str,
        url: String,
        /// Names the CA file when the problem may be in it.
        ca: String,
        #[source]
        source: redis::RedisError,
    },
}

impl RedisFlags {
    /// The server these flags name, `None` when none is given (`ferry serve` then keeps its queue
    /// in process). Reads the URL and CA files and `FERRY_REDIS_URL`; warns when a URL with a
    /// password came on the command line.
    pub fn target(&self) -> Result<Option<RedisTarget>, RedisFlagsError> {
        let env = std::env::var(REDIS_URL_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty());
        Ok(self
            .target_from(env)?
            .map(|t| t.with_wait_replicas(self.redis_wait_replicas)))
    }

    /// Like [`RedisFlags::target`], for daemons that cannot run without Redis.
    pub fn required_target(&self) -> Result<RedisTarget, RedisFlagsError> {
        self.target()?.ok_or(RedisFlagsError::Missing)
    }

    /// [`RedisFlags::target`] with `env` as the value of `FERRY_REDIS_URL`.
    fn target_from(&self, env: Option<String>) -> Result<Option<RedisTarget>, RedisFlagsError> {
        let (url, origin) = match (&self.url, &self.redis_url_file, env) {
            (Some(url), _, _) => {
                if redact_url(url) != *url {
                    tracing::warn!(
                        url = %redact_url(url),
                        "the --redis URL carries a password, which every local user can read in /proc; pass it with --redis-url-file or {REDIS_URL_ENV} instead"
                    );
                }
                (url.trim().to_string(), "--redis")
            }
            (None, Some(path), _) => (read_url_file(path)?, "--redis-url-file"),
            (None, None, Some(url)) => (url.trim().to_string(), REDIS_URL_ENV),
            (None, None, None) if self.redis_ca_file.is_some() => {
                return Err(RedisFlagsError::Missing)
            }
            (None, None, None) => return Ok(None),
        };
        let invalid = |ca: String| {
            let url = redact_url(&url);
            move |source| RedisFlagsError::Invalid {
                origin,
                url,
                ca,
                source,
            }
        };
        let Some(ca_path) = &self.redis_ca_file else {
            return RedisTarget::new(&url)
                .map(Some)
                .map_err(invalid(String::new()));
        };
        if !url.starts_with("rediss://") {
            return Err(RedisFlagsError::CaWithoutTls {
                origin,
                url: redact_url(&url),
            });
        }
        let pem = std::fs::read(ca_path).map_err(|source| RedisFlagsError::ReadCaFile {
            path: ca_path.clone(),
            source,
        })?;
        RedisTarget::with_ca(&url, pem)
            .map(Some)
            .map_err(invalid(format!(
                " with --redis-ca-file {}",
                ca_path.display()
            )))
    }
}

/// The first non-blank line of `path`, trimmed.
fn read_url_file(path: &Path) -> Result<String, RedisFlagsError> {
    let text = std::fs::read_to_string(path).map_err(|source| RedisFlagsError::ReadUrlFile {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| RedisFlagsError::EmptyUrlFile {
            path: path.to_path_buf(),
        })
}

/// This host's name, for the worker list (`HOSTNAME`, else `/etc/hostname`).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(url: Option<&str>, file: Option<&Path>, ca: Option<&Path>) -> RedisFlags {
        RedisFlags {
            url: url.map(str::to_string),
            redis_url_file: file.map(Path::to_path_buf),
            redis_ca_file: ca.map(Path::to_path_buf),
            redis_wait_replicas: 0,
        }
    }

    fn refusal(url: Option<&str>, file: Option<&Path>, ca: Option<&Path>) -> RedisFlagsError {
        flags(url, file, ca).target_from(None).unwrap_err()
    }

    fn resolved(flags: &RedisFlags, env: Option<&str>) -> String {
        flags
            .target_from(env.map(str::to_string))
            .unwrap()
            .expect("a target")
            .redacted()
            .to_string()
    }

    #[test]
    fn the_url_comes_from_the_flag_then_the_file_then_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "\n  rediss://:from-file@valkey:6380/0  \n").unwrap();
        let env = Some("redis://env-host:6379");
        assert_eq!(
            resolved(&flags(Some("redis://argv-host:6379"), None, None), env),
            "redis://argv-host:6379"
        );
        assert_eq!(
            resolved(&flags(None, Some(&file), None), env),
            "rediss://:***@valkey:6380/0"
        );
        assert_eq!(
            resolved(&flags(None, None, None), env),
            "redis://env-host:6379"
        );
        assert!(flags(None, None, None).target_from(None).unwrap().is_none());
    }

    #[test]
    fn a_missing_or_empty_url_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n \n").unwrap();
        let e = refusal(None, Some(&empty), None);
        assert!(matches!(e, RedisFlagsError::EmptyUrlFile { .. }), "{e}");
        let e = refusal(None, Some(&dir.path().join("absent")), None);
        assert!(
            e.to_string().starts_with("cannot read --redis-url-file"),
            "{e}"
        );
    }

    #[test]
    fn a_ca_file_needs_a_tls_url_and_a_url_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let e = refusal(Some("redis://:s3cret@valkey:6379"), None, Some(&ca));
        assert!(matches!(e, RedisFlagsError::CaWithoutTls { .. }), "{e}");
        assert!(!format!("{e} {e:?}").contains("s3cret"), "{e}");
        let e = refusal(None, None, Some(&ca));
        assert!(matches!(e, RedisFlagsError::Missing), "{e}");
        let e = refusal(Some("rediss://valkey:6380"), None, Some(&ca));
        assert!(
            e.to_string().starts_with("cannot read --redis-ca-file"),
            "{e}"
        );
    }

    #[test]
    fn a_ca_file_that_is_not_pem_is_refused_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = refusal(Some("rediss://:s3cret@valkey:6380"), None, Some(&ca));
        let message = e.to_string();
        assert!(message.contains("--redis-ca-file"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[test]
    fn an_invalid_url_is_refused_without_showing_its_password() {
        let e = flags(None, None, None)
            .target_from(Some("redis://:s3cret@valkey:6379/notadb".into()))
            .unwrap_err();
        let message = format!("{e} {e:?}");
        assert!(message.contains(REDIS_URL_ENV), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }
}
