//! The `ferry` command line: flag parsing, logging setup and exit codes.
//!
//! Exit codes are a contract for scripts: 0 success, 1 "the answer is no" (drift found, destination
//! not converged, invalid policy file), 2 usage or runtime errors, 130 interrupted.
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use ferry_replicator::replicate::{SyncReport, TagResult, TagSink};
use ferry_replicator::runtime::listener::ListenFlags;
use ferry_replicator::runtime::{block_on_exit, init_logging, LogFormat, RedisFlags};

mod admin;
mod airgap;
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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// One-shot full reconciliation: make every destination match the source (no Redis needed).
    Sync(SyncArgs),
    /// Report drift by digest: missing, different and extra tags. Exit 1 on drift.
    Diff(DiffArgs),
    /// Write what a policy covers on its source registry into an OCI image layout (directory or
    /// .tar), for an air-gapped site. Exit 1 when a tag could not be exported.
    Export(ExportArgs),
    /// Replicate an OCI image layout written by `ferry export` into a policy's destinations.
    /// Exit 1 when a destination does not match the layout.
    Import(ImportArgs),
    /// Run replication jobs from the Redis/Valkey queue (fed by `ferry-agent`).
    Worker(WorkerArgs),
    /// All in one process: webhooks, workers and the safety net, with an in-process queue unless
    /// a Redis URL is given (--redis, --redis-url-file or FERRY_REDIS_URL).
    Serve(ServeArgs),
    /// Work with policy and config files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Client of the gRPC admin API (`ferry serve`/`ferry worker --admin-listen`).
    Admin(admin::AdminArgs),
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

/// How tags and blobs move, and how progress shows (shared by sync, export and import).
#[derive(clap::Args, Debug)]
pub struct RunFlags {
    /// Tags handled concurrently.
    #[arg(long, default_value_t = 16)]
    pub tag_parallelism: usize,
    /// Blobs of one manifest moved concurrently.
    #[arg(long, default_value_t = 8)]
    pub blob_parallelism: usize,
    /// Progress display: auto (bars on a terminal), bars, or plain log lines.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Config file with registries and policies (only the policy's source registry is contacted).
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// The policy whose source content is exported.
    #[arg(long, short = 'p')]
    pub policy: String,
    /// The layout to write: a directory (blobs it holds are not written again), or a file ending
    /// in .tar (replaced when complete).
    #[arg(long)]
    pub to: PathBuf,
    /// A previous export (directory or .tar): write only what it, and those before it, did not
    /// carry (an incremental export).
    #[arg(long)]
    pub since: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunFlags,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The layout written by `ferry export`: a directory or a .tar file.
    #[arg(long)]
    pub from: PathBuf,
    /// Config file with registries and policies (the policy's source registry is never contacted).
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// The policy whose destinations, namespace rewrite, filters and override apply.
    #[arg(long, short = 'p')]
    pub policy: String,
    #[command(flatten)]
    pub run: RunFlags,
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

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// Config file with registries and policies.
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    #[command(flatten)]
    pub redis: RedisFlags,
    #[command(flatten)]
    pub queue: QueueFlags,
    /// Address for /metrics and /healthz, e.g. 0.0.0.0:9090.
    #[arg(long)]
    pub listen: Option<String>,
    #[command(flatten)]
    pub admin: AdminFlags,
    #[command(flatten)]
    pub limits: ListenFlags,
    #[command(flatten)]
    pub jobs: JobFlags,
}

/// The gRPC admin API a server process offers.
#[derive(clap::Args, Debug)]
pub struct AdminFlags {
    /// Serve the gRPC admin API (with health and reflection) on this address, e.g. 0.0.0.0:9443.
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// File with the admin bearer token(s), one per line. Default: FERRY_ADMIN_TOKEN.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Allow admin calls without a token — only when --admin-listen is a loopback address.
    #[arg(long)]
    pub admin_allow_unauthenticated_loopback: bool,
    /// Serve the admin API over TLS with this PEM certificate (chain); needs --admin-tls-key.
    #[arg(long, requires = "admin_tls_key")]
    pub admin_tls_cert: Option<PathBuf>,
    /// PEM private key of --admin-tls-cert.
    #[arg(long, requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,
    /// Require client certificates signed by this PEM CA (mTLS); needs --admin-tls-cert.
    #[arg(long, requires = "admin_tls_cert")]
    pub admin_client_ca: Option<PathBuf>,
    #[command(flatten)]
    pub oidc: OidcFlags,
    /// Directory whose files registries stored through the admin API may name as `password_file`
    /// or auth file (repeatable). Without it they may use only FERRY_CRED_* environment variables
    /// and the config file's own references, for the same registry origin.
    #[arg(long = "credentials-dir", value_name = "DIR")]
    pub credentials_dirs: Vec<PathBuf>,
}

/// SSO for the admin API: OIDC bearer JWTs besides the static tokens (README "SSO (OIDC)").
#[derive(clap::Args, Debug)]
pub struct OidcFlags {
    /// Also accept OIDC JWTs whose `iss` is this URL, e.g. https://sso.example/realms/ferry.
    #[arg(long, requires = "admin_oidc_audience")]
    pub admin_oidc_issuer: Option<String>,
    /// The audience tokens must carry in `aud` (Keycloak: the client ID, via an audience mapper).
    #[arg(long, requires = "admin_oidc_issuer")]
    pub admin_oidc_audience: Option<String>,
    /// The issuer's JWKS URL. Default: `jwks_uri` of <issuer>/.well-known/openid-configuration.
    #[arg(long, requires = "admin_oidc_issuer")]
    pub admin_oidc_jwks_url: Option<url::Url>,
    /// The claim that holds groups or roles: a dot path to a string or a list of strings
    /// (`groups`; Keycloak realm roles: `realm_access.roles`).
    #[arg(long, default_value = "groups", requires = "admin_oidc_issuer")]
    pub admin_oidc_claim: String,
    /// A claim value that grants the viewer role (read-only RPCs); repeatable.
    #[arg(
        long = "admin-oidc-viewer",
        value_name = "VALUE",
        requires = "admin_oidc_issuer"
    )]
    pub admin_oidc_viewers: Vec<String>,
    /// A claim value that grants the operator role (every RPC); repeatable.
    #[arg(
        long = "admin-oidc-operator",
        value_name = "VALUE",
        requires = "admin_oidc_issuer"
    )]
    pub admin_oidc_operators: Vec<String>,
    /// PEM CA bundle trusted for the issuer's https:// URLs, besides the Mozilla roots.
    #[arg(long, requires = "admin_oidc_issuer")]
    pub admin_oidc_ca_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, default_value_t = ferry_replicator::control::admin::oidc::DEFAULT_LEEWAY.as_secs(), requires = "admin_oidc_issuer")]
    pub admin_oidc_leeway_seconds: u64,
}

/// How a process reaches the queue.
#[derive(clap::Args, Debug)]
pub struct QueueFlags {
    /// Key prefix of the queue in Redis (agents and workers must use the same).
    #[arg(long, default_value = "ferry")]
    pub queue_prefix: String,
    /// Give up if Redis cannot be reached for this many seconds at startup.
    #[arg(long, default_value_t = 60)]
    pub redis_connect_timeout: u64,
    /// Executions kept in the history (the oldest are dropped first).
    #[arg(long, default_value_t = 10_000)]
    pub history_max_executions: usize,
    /// Executions older than this many hours are dropped from the history.
    #[arg(long, default_value_t = 168)]
    pub history_max_age_hours: u64,
}

impl QueueFlags {
    /// The history retention these flags ask for.
    pub fn retention(&self) -> ferry_replicator::store::history::Retention {
        ferry_replicator::store::history::Retention {
            max_executions: self.history_max_executions.max(1),
            max_age: std::time::Duration::from_secs(
                self.history_max_age_hours.saturating_mul(3600),
            ),
        }
    }
}

/// How a process runs jobs.
#[derive(clap::Args, Debug)]
pub struct JobFlags {
    /// Jobs run at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Lease of a job in seconds; renewed while it runs, reclaimed by another worker if this one dies.
    #[arg(long, default_value_t = 30)]
    pub lease_seconds: u64,
    /// On SIGTERM, seconds running jobs may take before they are cancelled and released.
    #[arg(long, default_value_t = 20)]
    pub grace_seconds: u64,
    /// Consumer name in the queue (default: hostname-pid).
    #[arg(long)]
    pub consumer: Option<String>,
    /// This region's name, shown in the admin API's worker list.
    #[arg(long, env = "FERRY_REGION", default_value = "")]
    pub region: String,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Config file with registries and policies.
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// Without a Redis URL (--redis, --redis-url-file or FERRY_REDIS_URL) the queue is in-process
    /// (single-process installs).
    #[command(flatten)]
    pub redis: RedisFlags,
    #[command(flatten)]
    pub queue: QueueFlags,
    /// Address for webhooks (/v1/events/distribution, /v1/events/harbor), /metrics and /healthz.
    #[arg(long)]
    pub listen: String,
    #[command(flatten)]
    pub webhooks: ferry_replicator::app::WebhookOptions,
    /// Seconds between safety-net reconciliations of every event_based policy; 0 disables.
    #[arg(long, default_value_t = 600)]
    pub reconcile_interval: u64,
    /// How far (in seconds) a webhook's event time may be ahead of this process's clock; later
    /// times are clamped to it before they decide conflicts or lag.
    #[arg(long, env = "FERRY_MAX_CLOCK_SKEW_SECONDS", default_value_t = ferry_replicator::event::DEFAULT_MAX_CLOCK_SKEW.as_secs())]
    pub max_clock_skew_seconds: u64,
    #[command(flatten)]
    pub admin: AdminFlags,
    #[command(flatten)]
    pub limits: ListenFlags,
    #[command(flatten)]
    pub jobs: JobFlags,
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
    let quiet_logs = match &cli.command {
        Command::Sync(a) => progress::use_bars(a.progress),
        Command::Export(a) => progress::use_bars(a.run.progress),
        Command::Import(a) => progress::use_bars(a.run.progress),
        _ => false,
    };
    // Kept until exit: dropping it flushes the spans not yet exported.
    let _telemetry = init_logging(
        cli.log_format,
        if quiet_logs { "warn" } else { "info" },
        "ferry",
    );
    block_on_exit(async {
        match cli.command {
            Command::Sync(args) => commands::sync(args).await,
            Command::Diff(args) => commands::diff(args).await,
            Command::Export(args) => airgap::export(args).await,
            Command::Import(args) => airgap::import(args).await,
            Command::Worker(args) => commands::worker(args).await,
            Command::Serve(args) => commands::serve(args).await,
            Command::Policy {
                command: PolicyCommand::Validate { files },
            } => commands::validate(&files),
            Command::Admin(args) => admin::run(args).await,
        }
    })
}

/// `--json` of the runs that replicate (`ferry sync`, `ferry import`): a JSON array with one object
/// per policy — `{"policy", "tags": [...], "counts", "unlisted", "stats", "seconds"}`, or `"error"`
/// when the policy could not start — whose tags are written as they finish, in that order, so a
/// run over 100 000 tags never holds its report in memory.
pub(crate) struct JsonRuns {
    out: std::sync::Mutex<JsonOut>,
}

struct JsonOut {
    w: std::io::BufWriter<std::io::Stdout>,
    policies: usize,
    tags: usize,
    error: Option<std::io::Error>,
}

impl JsonOut {
    fn write(
        &mut self,
        f: impl FnOnce(&mut std::io::BufWriter<std::io::Stdout>) -> std::io::Result<()>,
    ) {
        if self.error.is_none() {
            if let Err(e) = f(&mut self.w) {
                self.error = Some(e);
            }
        }
    }
}

impl JsonRuns {
    /// Opens the array on stdout.
    pub(crate) fn start() -> Arc<JsonRuns> {
        let runs = Arc::new(JsonRuns {
            out: std::sync::Mutex::new(JsonOut {
                w: std::io::BufWriter::new(std::io::stdout()),
                policies: 0,
                tags: 0,
                error: None,
            }),
        });
        runs.with(|o| o.write(|w| w.write_all(b"[")));
        runs
    }

    fn with(&self, f: impl FnOnce(&mut JsonOut)) {
        f(&mut ferry_replicator::locks::lock(&self.out));
    }

    /// Opens one policy's object; its tags follow through [`JsonRuns::sink`].
    pub(crate) fn begin(&self, policy: &str) {
        self.with(|o| {
            let comma = if o.policies > 0 { "," } else { "" };
            o.policies += 1;
            o.tags = 0;
            o.write(|w| {
                write!(w, "{comma}\n{{\"policy\":")?;
                serde_json::to_writer(&mut *w, policy)?;
                w.write_all(b",\"tags\":[")
            });
        });
    }

    /// Where a run's tags go: each written as one line of the open policy's `tags`.
    pub(crate) fn sink(self: &Arc<Self>) -> TagSink {
        let runs = self.clone();
        Arc::new(move |t: &TagResult| {
            runs.with(|o| {
                let comma = if o.tags > 0 { "," } else { "" };
                o.tags += 1;
                o.write(|w| {
                    writeln!(w, "{comma}")?;
                    serde_json::to_writer(&mut *w, t).map_err(std::io::Error::from)
                });
            });
        })
    }

    /// Closes the open policy's object with its totals.
    pub(crate) fn end(&self, report: &SyncReport) {
        let unlisted: Vec<serde_json::Value> = report
            .unlisted
            .iter()
            .map(|u| serde_json::json!({"repository": u.repository, "error": u.error.to_string()}))
            .collect();
        let tail = serde_json::json!({
            "counts": report.counts,
            "unlisted": unlisted,
            "stats": report.stats,
            "seconds": report.seconds,
        });
        self.close(tail);
    }

    /// Closes the open policy's object with the error that stopped it.
    pub(crate) fn end_failed(&self, error: &str) {
        self.close(serde_json::json!({ "error": error }));
    }

    /// `],` then `tail`'s fields, then `}`.
    fn close(&self, tail: serde_json::Value) {
        self.with(|o| {
            o.write(|w| {
                w.write_all(b"\n]")?;
                if let serde_json::Value::Object(fields) = &tail {
                    for (k, v) in fields {
                        write!(w, ",{}:{v}", serde_json::Value::String(k.clone()))?;
                    }
                }
                w.write_all(b"}")
            });
        });
    }

    /// Closes the array and flushes; `false`, with the error on stderr, when stdout failed.
    pub(crate) fn finish(&self) -> bool {
        let mut ok = true;
        self.with(|o| {
            o.write(|w| {
                w.write_all(b"\n]\n")?;
                w.flush()
            });
            if let Some(e) = &o.error {
                eprintln!("error: cannot write the report: {e}");
                ok = false;
            }
        });
        ok
    }
}

/// Writes `value` to stdout as pretty JSON, streamed (a report of 100 000 tags is never held as
/// one string); `false`, with the error on stderr, when it cannot be written.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> bool {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = serde_json::to_writer_pretty(&mut out, value)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            writeln!(out)
                .and_then(|()| out.flush())
                .map_err(|e| e.to_string())
        });
    match written {
        Ok(()) => true,
        Err(e) => {
            eprintln!("error: cannot write the report: {e}");
            false
        }
    }
}
