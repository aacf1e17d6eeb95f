//! `ferry-agent`: the per-region daemon that turns registry webhooks into replication jobs.
//!
//! Only flags live here: they become [`DaemonOptions`] and `ferry_replicator::app` builds, runs and
//! drains the daemon (the same assembly as `ferry worker` and `ferry serve`); the webhook parsing,
//! policy matching and HTTP routes are `ferry_replicator::ingest`.
//!
//! Exit codes: 0 after a graceful shutdown (SIGTERM/SIGINT), 2 on usage, config or startup errors.
#![forbid(unsafe_code)]
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ferry_replicator::app::{Daemon, DaemonOptions, QueueOptions, RegionOptions, WebhookOptions};
use ferry_replicator::config::{Config, Region};
use ferry_replicator::regions::ForwardTls;
use ferry_replicator::runtime::listener::ListenFlags;
use ferry_replicator::runtime::{block_on_exit, init_logging, LogFormat, RedisFlags};

/// How long requests in flight may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Ferry's per-region agent: registry webhooks -> events -> replication jobs in the queue.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Config file with registries and policies.
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    redis: RedisFlags,
    /// Key prefix of the queue in Redis (workers must use the same).
    #[arg(long, default_value = "ferry")]
    queue_prefix: String,
    /// Address for webhooks, /metrics and /healthz, e.g. 0.0.0.0:8080.
    #[arg(long)]
    listen: String,
    #[command(flatten)]
    webhooks: WebhookOptions,
    /// Directory whose files registries stored through the admin API may name as `password_file`
    /// or auth file (repeatable); see `ferry serve --help`. Must match the workers' setting.
    #[arg(long = "credentials-dir", value_name = "DIR")]
    credentials_dirs: Vec<PathBuf>,
    /// Harbor user Ferry writes as (e.g. `robot$ferry`): Harbor events it caused are ignored.
    #[arg(long)]
    harbor_operator: Option<String>,
    /// Give up if Redis cannot be reached for this many seconds at startup.
    #[arg(long, default_value_t = 60)]
    redis_connect_timeout: u64,
    /// This region's name (as in the config's `regions`): events whose policies run in another
    /// region are forwarded there. Without it every event is handled here (one site).
    #[arg(long, env = "FERRY_REGION", default_value = "")]
    region: String,
    /// Address for `ferry.v1.Events/Forward`, where other regions deliver their events, e.g.
    /// 0.0.0.0:9444. Needs --region and a forward token.
    #[arg(long, requires = "region")]
    forward_listen: Option<String>,
    /// File with the forward token(s), one per line: the first is sent to other regions, all are
    /// accepted from them. Default: the FERRY_FORWARD_TOKEN environment variable.
    #[arg(long)]
    forward_token_file: Option<PathBuf>,
    /// PEM certificate of this region's agent: served on --forward-listen and presented to other
    /// regions (mTLS).
    #[arg(long, requires = "forward_tls_key")]
    forward_tls_cert: Option<PathBuf>,
    /// PEM key of --forward-tls-cert.
    #[arg(long, requires = "forward_tls_cert")]
    forward_tls_key: Option<PathBuf>,
    /// PEM CA that signed the regions' certificates: verifies the peers' servers and, on
    /// --forward-listen with TLS, requires their client certificates (mTLS).
    #[arg(long)]
    forward_ca: Option<PathBuf>,
    /// Seconds between safety-net reconciliations of every event_based policy (a full diff whose
    /// drift becomes jobs); the first runs at startup. 0 disables it.
    #[arg(long, default_value_t = 600)]
    reconcile_interval: u64,
    /// How far (in seconds) an event time (webhook, Harbor, or a peer region's) may be ahead of
    /// this process's clock; later times are clamped to it before they decide conflicts or lag.
    #[arg(long, env = "FERRY_MAX_CLOCK_SKEW_SECONDS", default_value_t = ferry_replicator::event::DEFAULT_MAX_CLOCK_SKEW.as_secs())]
    max_clock_skew_seconds: u64,
    #[command(flatten)]
    limits: ListenFlags,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _telemetry = init_logging(args.log_format, "info", "ferry-agent");
    block_on_exit(async {
        match run(args).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e:#}");
                2
            }
        }
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Config problems are printed one per line, each with its JSON path.
    let config = Config::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(
        !config.registries.is_empty(),
        "{}: the agent needs a config file with `registries` (a bare policy file has none)",
        args.config.display()
    );
    let daemon = Daemon::build(DaemonOptions {
        name: "ferry-agent",
        config,
        config_path: args.config,
        queue: QueueOptions::Redis {
            target: Box::new(args.redis.required_target()?),
            prefix: args.queue_prefix,
            connect_timeout: Duration::from_secs(args.redis_connect_timeout),
            retention: Default::default(),
        },
        credentials_dirs: args.credentials_dirs,
        holder: format!(
            "agent-{}-{}",
            ferry_replicator::runtime::hostname(),
            std::process::id()
        ),
        listen_flags: args.limits,
        listen: Some(args.listen),
        webhooks: Some(WebhookOptions {
            harbor_operator: args.harbor_operator,
            ..args.webhooks
        }),
        jobs: None,
        scheduler: false,
        safety_net: Some(Duration::from_secs(args.reconcile_interval)),
        pollers: true,
        admin: None,
        regions: Some(RegionOptions {
            region: Region::new(&args.region),
            forward_listen: args.forward_listen,
            token_file: args.forward_token_file,
            tls: ForwardTls {
                ca: args.forward_ca,
                identity: args.forward_tls_cert.zip(args.forward_tls_key),
            },
        }),
        max_clock_skew: Duration::from_secs(args.max_clock_skew_seconds),
        intake_grace: Some(SHUTDOWN_GRACE),
    })
    .await?;
    daemon.spawn().drain().await;
    Ok(())
}
