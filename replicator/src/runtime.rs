//! Process plumbing shared by Ferry's binaries (`ferry`, `ferry-agent`): logging (and OTLP trace)
//! setup, the shutdown signal, and connecting to the queue while Redis may still be starting.
//!
//! Invariant: every long-running binary stops on SIGINT or SIGTERM through [`shutdown_signal`], and
//! never waits on Redis longer than the caller allows.
use std::time::{Duration, Instant};

use crate::queue::{QueueError, RedisQueue, RetryPolicy};
pub use crate::telemetry::Telemetry;

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

/// Why the queue could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach the queue at {url} within {seconds} s: {source}")]
    GaveUp {
        url: String,
        seconds: u64,
        #[source]
        source: QueueError,
    },
    #[error("interrupted while connecting to the queue")]
    Interrupted,
}

/// Connects to Redis/Valkey, retrying every `retry_every` while it is not up yet (it may start
/// after Ferry), for at most `give_up_after`; a shutdown signal ends the wait.
pub async fn connect_queue(
    url: &str,
    prefix: &str,
    give_up_after: Duration,
    retry_every: Duration,
) -> Result<RedisQueue, ConnectError> {
    let started = Instant::now();
    loop {
        match RedisQueue::connect(url, prefix, RetryPolicy::default()).await {
            Ok(queue) => return Ok(queue),
            Err(e) if started.elapsed() < give_up_after => {
                tracing::warn!(error = %e, "queue not reachable yet; retrying");
                tokio::select! {
                    () = tokio::time::sleep(retry_every) => {}
                    () = shutdown_signal() => return Err(ConnectError::Interrupted),
                }
            }
            Err(source) => {
                return Err(ConnectError::GaveUp {
                    url: redact_url(url),
                    seconds: give_up_after.as_secs(),
                    source,
                })
            }
        }
    }
}

/// A Redis URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact_url("redis://:s3cret@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            super::redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
