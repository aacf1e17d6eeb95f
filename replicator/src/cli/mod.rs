//! The `ferry` command line: flag parsing, logging setup and exit codes.
//!
//! Exit codes are a contract for scripts: 0 success, 1 "the answer is no" (drift found, destination
//! not converged, invalid policy file), 2 usage or runtime errors, 130 interrupted.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod commands;
mod progress;

/// Ferry keeps container registries in several regions identical, digest for digest.
#[derive(Parser, Debug)]
#[command(name = "ferry", version, propagate_version = true)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// One-shot full reconciliation: make every destination match the source (no Redis needed).
    Sync(SyncArgs),
    /// Report drift by digest: missing, different and extra tags. Exit 1 on drift.
    Diff(DiffArgs),
    /// Work with policy and config files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(clap::Args, Debug)]
pub struct SyncArgs {
    #[command(flatten)]
    pub target: Target,
    /// Tags reconciled concurrently.
    #[arg(long, default_value_t = 16)]
    pub tag_parallelism: usize,
    /// Blobs of one manifest copied concurrently (per-registry `concurrency` bounds the total).
    #[arg(long, default_value_t = 8)]
    pub blob_parallelism: usize,
    /// Progress display: auto (bars on a terminal), bars, or plain log lines.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ProgressMode {
    Auto,
    Bars,
    Plain,
}

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    pub target: Target,
}

/// Which config and policies a command works on, and how it reports.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// Config file with registries and policies.
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// Only this policy (default: every enabled policy).
    #[arg(long, short = 'p')]
    pub policy: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate config or policy files; every problem is printed with its JSON path.
    Validate {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet_logs = matches!(&cli.command, Command::Sync(a) if progress::use_bars(a.progress));
    init_logging(cli.log_format, if quiet_logs { "warn" } else { "info" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Sync(args) => commands::sync(args).await,
            Command::Diff(args) => commands::diff(args).await,
            Command::Policy {
                command: PolicyCommand::Validate { files },
            } => commands::validate(&files),
        }
    });
    ExitCode::from(code)
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{default_level},ferry_replicator={default_level},ferry={default_level}"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}
