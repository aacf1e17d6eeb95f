//! `ferry-agent`: the per-region daemon that turns registry webhooks into replication jobs.
//!
//! Only wiring lives here (flags, logging, config, queue connection, serving, shutdown); the
//! webhook parsing, policy matching and HTTP routes are `ferry_replicator::ingest`.
//!
//! Exit codes: 0 after a graceful shutdown (SIGTERM/SIGINT), 2 on usage, config or startup errors.
#![forbid(unsafe_code)]
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ferry_replicator::catalog::{watch_and_reload, RedisPolicyStore, Reload};
use ferry_replicator::config::{Config, CredentialRules, RegionConfig};
use ferry_replicator::conflict::{RedisTagLedger, TagLedger};
use ferry_replicator::forward::{
    self, ForwardMetrics, ForwardService, ForwardTls, Forwarder, Outbox, RedisOutbox,
};
use ferry_replicator::ingest::harbor::HarborOptions;
use ferry_replicator::ingest::poll::{PollMetrics, PollerSet};
use ferry_replicator::ingest::EventSink;
use ferry_replicator::ingest::{self, IngestState};
use ferry_replicator::listener::{self, ListenFlags};
use ferry_replicator::pauses::RedisLimits;
use ferry_replicator::policy::TriggerKind;
use ferry_replicator::queue::JobQueue;
use ferry_replicator::reconcile::{ReconcileMetrics, Reconciler};
use ferry_replicator::runtime::{
    block_on_exit, connect_queue, init_logging, shutdown_signal, LogFormat, RedisFlags,
};
use ferry_replicator::sync::Registries;

/// How long requests in flight may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Pause between attempts to reach Redis at startup.
const CONNECT_RETRY: Duration = Duration::from_secs(2);

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
    /// File with the webhook bearer token(s), one per line (several allow rotation). Default: the
    /// FERRY_WEBHOOK_TOKEN environment variable.
    #[arg(long)]
    webhook_token_file: Option<PathBuf>,
    /// Directory whose files registries stored through the admin API may name as `password_file`
    /// or auth file (repeatable); see `ferry serve --help`. Must match the workers' setting.
    #[arg(long = "credentials-dir", value_name = "DIR")]
    credentials_dirs: Vec<PathBuf>,
    /// Accept webhooks without a token when none is configured (trusted networks only).
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Largest accepted webhook body, in bytes.
    #[arg(long, default_value_t = ingest::http::DEFAULT_BODY_LIMIT)]
    max_body_bytes: usize,
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
    let tokens = ingest::http::load_tokens(args.webhook_token_file.as_deref())?;
    // Checked again by the builder; here it fails before waiting for Redis.
    anyhow::ensure!(
        !tokens.is_empty() || args.allow_unauthenticated,
        "no webhook token: set {} or --webhook-token-file (or pass --allow-unauthenticated on a trusted network)",
        ingest::http::TOKEN_ENV
    );

    let queue = connect_queue(
        &args.redis.required_target()?,
        &args.queue_prefix,
        Duration::from_secs(args.redis_connect_timeout),
        CONNECT_RETRY,
    )
    .await?;
    let registries: Vec<String> = config.registries.iter().map(|r| r.name.clone()).collect();
    let event_policies = config
        .policies
        .iter()
        .filter(|p| p.enabled && p.trigger.kind == TriggerKind::EventBased)
        .count();
    let store = RedisPolicyStore::new(&queue);
    let region = args.region.trim().to_string();
    if !region.is_empty() && !config.regions.iter().any(|r| r.name == region) {
        let declared: Vec<&str> = config.regions.iter().map(|r| r.name.as_str()).collect();
        anyhow::bail!(
            "--region {region:?} is not declared in {}'s `regions` (declared: {})",
            args.config.display(),
            if declared.is_empty() {
                "none".to_string()
            } else {
                declared.join(", ")
            }
        );
    }
    if region.is_empty() && !config.regions.is_empty() {
        tracing::warn!(
            "the config declares regions but --region (FERRY_REGION) is not set: every event is handled in this region and nothing is forwarded"
        );
    }
    let outbox: Arc<dyn Outbox> = Arc::new(RedisOutbox::new(&queue));
    let tag_ledger: Arc<dyn TagLedger> = Arc::new(RedisTagLedger::new(&queue));
    let shared_gate = Arc::new(RedisLimits::new(&queue));
    let queue: Arc<dyn JobQueue> = Arc::new(queue);
    let sink = EventSink {
        queue: queue.clone(),
        region: region.clone(),
        outbox: Some(outbox.clone()),
        ledger: Some(tag_ledger),
    };
    let peers: Vec<RegionConfig> = config
        .regions
        .iter()
        .filter(|r| !region.is_empty() && r.name != region)
        .cloned()
        .collect();
    let forward_tokens = ferry_replicator::tokens::load(
        args.forward_token_file.as_deref(),
        forward::TOKEN_ENV,
        "forward",
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    anyhow::ensure!(
        !forward_tokens.is_empty() || (peers.is_empty() && args.forward_listen.is_none()),
        "region {region:?} forwards to and from other regions: set {} or --forward-token-file",
        forward::TOKEN_ENV
    );
    let file_config = config.clone();
    let mut metrics_registry = prometheus_client::registry::Registry::default();
    // Pollers pause on a 429 or a low quota with every worker of the region.
    let clients = Registries::from_config(&config)?
        .with_credential_rules(CredentialRules::new(&config, &args.credentials_dirs)?)
        .with_shared_gate(shared_gate);
    // Stops the safety net, the pollers and the policy watch.
    let reconcile_stop = tokio_util::sync::CancellationToken::new();
    let pollers = PollerSet::start(
        &config,
        &clients,
        sink.clone(),
        PollMetrics::register(&mut metrics_registry),
        reconcile_stop.clone(),
    )?;
    let reconciler = if args.reconcile_interval > 0 {
        let registries = &clients;
        let holder = format!("agent-{}", std::process::id());
        let metrics = ReconcileMetrics::register(&mut metrics_registry);
        Some(Arc::new(
            Reconciler::new(&config, registries, queue.clone(), &holder, metrics)?
                .in_region(&region, &config, registries)?,
        ))
    } else {
        None
    };
    let max_clock_skew = Duration::from_secs(args.max_clock_skew_seconds);
    let forward_metrics = ForwardMetrics::register(&mut metrics_registry);
    let forward_service = match &args.forward_listen {
        Some(_) => Some(Arc::new(
            ForwardService::new(
                &region,
                &config,
                queue.clone(),
                outbox.clone(),
                forward_tokens.clone(),
                forward_metrics.clone(),
            )
            .map_err(|e| anyhow::anyhow!(e))?
            .with_max_clock_skew(max_clock_skew),
        )),
        None => None,
    };
    let forward_tls = ForwardTls {
        ca: args.forward_ca.clone(),
        identity: args
            .forward_tls_cert
            .clone()
            .zip(args.forward_tls_key.clone()),
    };
    let holder = format!(
        "agent-{}-{}",
        ferry_replicator::runtime::hostname(),
        std::process::id()
    );
    let forwarders = peers
        .iter()
        .map(|peer| {
            Forwarder::new(
                &region,
                peer,
                outbox.clone(),
                forward_tokens.first().map_or("", String::as_str),
                &forward_tls,
                forward_metrics.clone(),
                &holder,
            )
            .map_err(|e| anyhow::anyhow!(e))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let forward_server = match (&args.forward_listen, &forward_service) {
        (Some(addr), Some(service)) => {
            let listener = args.limits.bind_grpc("--forward-listen", addr).await?;
            let tls = match (&args.forward_tls_cert, &args.forward_tls_key) {
                (Some(cert), Some(key)) => Some(
                    ferry_replicator::admin::tls_config(
                        "forward",
                        cert,
                        key,
                        args.forward_ca.as_deref(),
                    )
                    .map_err(|e| anyhow::anyhow!(e))?,
                ),
                _ => None,
            };
            tracing::info!(
                listen = %listener.local_addr().map_or_else(|_| addr.clone(), |a| a.to_string()),
                region = %region,
                tls = tls.is_some(),
                mtls = tls.is_some() && args.forward_ca.is_some(),
                "serving ferry.v1.Events/Forward"
            );
            let router = listener::grpc_server(tls)
                .context("forward TLS")?
                .add_service((**service).clone().into_server());
            Some((router, listener))
        }
        _ => None,
    };
    let mut builder = IngestState::builder(config, sink)
        .metrics_registry(metrics_registry)
        .allow_unauthenticated(args.allow_unauthenticated)
        .body_limit(args.max_body_bytes)
        .max_clock_skew(max_clock_skew)
        .harbor_options(HarborOptions {
            ignore_operator: args.harbor_operator.clone(),
        });
    let authenticated = !tokens.is_empty();
    for token in tokens {
        builder = builder.token(token);
    }
    let state = builder.build()?;
    let ingest_state = state.clone();

    let listener = args
        .limits
        .bind_http("--listen", &args.listen, ingest::router(state))
        .await?;
    tracing::info!(
        listen = %listener.local_addr().map_or_else(|_| args.listen.clone(), |a| a.to_string()),
        registries = %registries.join(","),
        authenticated,
        event_policies,
        polled = %pollers.registries().join(","),
        "ferry-agent serving webhooks"
    );
    if event_policies == 0 {
        tracing::warn!(
            "no enabled event_based policy: webhooks will be accepted but create no jobs"
        );
    }
    if !authenticated {
        tracing::warn!("webhooks are accepted without a token (--allow-unauthenticated)");
    }

    let http_stop = tokio_util::sync::CancellationToken::new();
    let server = listener.serve(http_stop.clone());
    let stopping = async {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        http_stop.cancel();
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let reconcile = async {
        match &reconciler {
            Some(r) => {
                r.run(
                    Duration::from_secs(args.reconcile_interval),
                    reconcile_stop.clone(),
                )
                .await
            }
            None => std::future::pending::<()>().await,
        }
    };
    let mut polling = tokio::task::JoinSet::new();
    // Policies stored or changed through the admin API are matched, polled and reconciled from
    // the next check on.
    let mut targets: Vec<Arc<dyn Reload>> = vec![Arc::new(ingest_state), pollers.clone()];
    if let Some(r) = &reconciler {
        targets.push(r.clone());
    }
    for forwarder in forwarders {
        polling.spawn(forwarder.run(reconcile_stop.clone()));
    }
    if let Some((router, listener)) = forward_server {
        let stop = reconcile_stop.clone();
        polling.spawn(async move {
            if let Err(e) = listener::serve_grpc(router, listener, stop).await {
                tracing::error!(error = %e, "the Forward endpoint stopped");
            }
        });
    }
    if let Some(service) = &forward_service {
        targets.push(service.clone());
    }
    let watch_stop = reconcile_stop.clone();
    polling.spawn(async move {
        watch_and_reload(&file_config, &clients, &store, &targets, watch_stop).await
    });
    tokio::select! {
        () = server => {}
        () = reconcile => {}
        () = stopping => tracing::warn!(
            grace_seconds = SHUTDOWN_GRACE.as_secs(),
            "grace period over; exiting with requests in flight (registries will re-send them)"
        ),
    }
    reconcile_stop.cancel();
    while polling.join_next().await.is_some() {}
    pollers.wait().await;
    tracing::info!("ferry-agent stopped");
    Ok(())
}
