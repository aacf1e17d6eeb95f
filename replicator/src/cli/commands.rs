//! The commands behind `ferry sync`, `ferry diff` and `ferry policy validate`.
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use ferry_replicator::catalog::{
    watch_and_reload, MemoryPolicyStore, PolicyStore, RedisPolicyStore, Reload,
};
use ferry_replicator::config::{Config, CredentialRules};
use ferry_replicator::conflict::{MemoryTagLedger, RedisTagLedger, TagLedger};
use ferry_replicator::diff::{diff_policy, DriftReport};
use ferry_replicator::history::{History, MemoryHistory, RedisHistory};
use ferry_replicator::ingest::metrics::IngestMetrics;
use ferry_replicator::ingest::poll::{PollMetrics, PollerSet};
use ferry_replicator::ingest::{EventSink, IngestState};
use ferry_replicator::listener::ListenFlags;
use ferry_replicator::pauses::RedisLimits;
use ferry_replicator::policy::Policy;
use ferry_replicator::queue::redis::RedisTarget;
use ferry_replicator::queue::{JobQueue, MemoryQueue, RetryPolicy};
use ferry_replicator::reconcile::{ReconcileMetrics, Reconciler};
use ferry_replicator::runtime::{connect_queue, shutdown_signal};
use ferry_replicator::schedule::{ScheduleMetrics, Scheduler};
use ferry_replicator::sync::{
    sync_policy, PreparedPolicy, Registries, RunProgress, SyncOptions, SyncReport, TagOutcome,
};
use ferry_replicator::throttle::SharedSpeed;
use ferry_replicator::worker::{Worker, WorkerMetrics, WorkerOptions};
use indicatif::HumanBytes;
use tokio_util::sync::CancellationToken;

use super::{
    progress, AdminFlags, DiffArgs, JobFlags, QueueFlags, ServeArgs, SyncArgs, Target, WorkerArgs,
};
use ferry_replicator::admin;

const OK: u8 = 0;
const NO: u8 = 1;
const ERROR: u8 = 2;
const INTERRUPTED: u8 = 130;

/// Loads and validates the config and builds the selected policies; prints every problem on
/// failure.
fn load_target(target: &Target) -> Option<Vec<PreparedPolicy>> {
    let config = match Config::load(&target.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return None;
        }
    };
    match prepare(&config, target.policy.as_deref()) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("error: {e:#}");
            None
        }
    }
}

/// The policies a command runs on: the named one, or every enabled one.
fn selected<'a>(config: &'a Config, name: Option<&str>) -> anyhow::Result<Vec<&'a Policy>> {
    match name {
        Some(n) => {
            let p = config.policy(n).with_context(|| {
                let names: Vec<&str> = config.policies.iter().map(|p| p.name.as_str()).collect();
                format!(
                    "no policy named {n:?} in the config (policies: {})",
                    names.join(", ")
                )
            })?;
            Ok(vec![p])
        }
        None => {
            let enabled: Vec<&Policy> = config.policies.iter().filter(|p| p.enabled).collect();
            anyhow::ensure!(
                !enabled.is_empty(),
                "the config has no enabled policy; name one with --policy"
            );
            Ok(enabled)
        }
    }
}

fn prepare(config: &Config, policy: Option<&str>) -> anyhow::Result<Vec<PreparedPolicy>> {
    let registries = Registries::from_config(config)?;
    selected(config, policy)?
        .into_iter()
        .map(|p| Ok(PreparedPolicy::new(p, &registries)?))
        .collect()
}

/// Cancels `token` on Ctrl-C / SIGTERM.
fn cancel_on_signal(token: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown_signal() => {},
            () = token.cancelled() => return,
        }
        tracing::warn!("interrupted: stopping");
        token.cancel();
    })
}

pub async fn sync(args: SyncArgs) -> u8 {
    let Some(prepared) = load_target(&args.target) else {
        return ERROR;
    };
    let cancel = CancellationToken::new();
    let signals = cancel_on_signal(cancel.clone());
    let progress = Arc::new(RunProgress::default());
    let opts = SyncOptions {
        cancel: cancel.clone(),
        tag_parallelism: args.tag_parallelism,
        blob_parallelism: args.blob_parallelism,
        progress: progress.clone(),
    };
    let display_done = CancellationToken::new();
    let display = progress::spawn(progress, args.progress, display_done.clone());
    let mut reports = Vec::new();
    let mut code = OK;
    for p in &prepared {
        match sync_policy(p, &opts).await {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("error: policy {}: {e}", p.policy.name);
                code = ERROR;
            }
        }
    }
    display_done.cancel();
    let _ = display.await;
    let interrupted = cancel.is_cancelled();
    cancel.cancel();
    let _ = signals.await;
    if args.target.json {
        match serde_json::to_string_pretty(&reports) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot encode the report: {e}"),
        }
    } else {
        for r in &reports {
            print_sync_summary(r);
        }
    }
    if interrupted {
        return INTERRUPTED;
    }
    if code == OK && !reports.iter().all(SyncReport::converged) {
        code = NO;
    }
    code
}

fn print_sync_summary(r: &SyncReport) {
    let n = |f: fn(&TagOutcome) -> bool| r.count(f);
    println!(
        "policy {}: tags {} copied, {} unchanged, {} kept, {} skipped, {} failed",
        r.policy,
        n(|o| matches!(o, TagOutcome::Copied { .. })),
        n(|o| matches!(o, TagOutcome::Unchanged { .. })),
        n(|o| matches!(o, TagOutcome::Kept { .. })),
        n(|o| matches!(o, TagOutcome::Skipped { .. })),
        n(|o| matches!(o, TagOutcome::Failed { .. })),
    );
    let s = r.stats;
    let rate = if r.seconds > 0.0 {
        s.bytes_copied as f64 / r.seconds
    } else {
        0.0
    };
    println!(
        "  blobs {} copied, {} mounted, {} skipped; {} moved in {:.1} s ({}/s)",
        s.blobs_copied,
        s.blobs_mounted,
        s.blobs_skipped,
        HumanBytes(s.bytes_copied),
        r.seconds,
        HumanBytes(rate as u64)
    );
    for t in &r.tags {
        match &t.outcome {
            TagOutcome::Failed { error } => println!("  FAILED {}/{}:{}: {error}", t.destination, t.destination_repository, t.tag),
            TagOutcome::Kept { source_digest, destination_digest } => println!(
                "  kept {}/{}:{} (override: false): destination has {destination_digest}, source has {source_digest}",
                t.destination, t.destination_repository, t.tag
            ),
            TagOutcome::Skipped { reason } => println!("  skipped {}:{}: {reason}", t.repository, t.tag),
            _ => {}
        }
    }
}

pub async fn diff(args: DiffArgs) -> u8 {
    let Some(prepared) = load_target(&args.target) else {
        return ERROR;
    };
    let mut reports = Vec::new();
    for p in &prepared {
        match diff_policy(p).await {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("error: policy {}: {e}", p.policy.name);
                return ERROR;
            }
        }
    }
    if args.target.json {
        match serde_json::to_string_pretty(&reports) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: cannot encode the report: {e}");
                return ERROR;
            }
        }
    } else {
        for r in &reports {
            print_drift(r);
        }
    }
    if reports.iter().any(DriftReport::has_drift) {
        NO
    } else {
        OK
    }
}

fn print_drift(r: &DriftReport) {
    println!(
        "policy {}: {} tags checked, {} missing, {} different, {} extra",
        r.policy,
        r.checked,
        r.missing.len(),
        r.different.len(),
        r.extra.len()
    );
    let short = |d: &Option<String>| {
        d.as_deref()
            .map(|s| s.chars().take(19).collect::<String>())
            .unwrap_or_else(|| "-".into())
    };
    for (kind, list) in [
        ("missing", &r.missing),
        ("different", &r.different),
        ("extra", &r.extra),
    ] {
        for d in list {
            println!(
                "  {kind:<9} {}/{}:{}  source {}  destination {}",
                d.destination,
                d.destination_repository,
                d.tag,
                short(&d.source_digest),
                short(&d.destination_digest)
            );
        }
    }
}

pub fn validate(files: &[PathBuf]) -> u8 {
    let mut code = OK;
    for f in files {
        match Config::load(f) {
            Ok(c) => println!(
                "{}: ok ({} registries, {} policies)",
                f.display(),
                c.registries.len(),
                c.policies.len()
            ),
            Err(e) => {
                println!("{e}");
                code = NO;
            }
        }
    }
    code
}

pub async fn worker(args: WorkerArgs) -> u8 {
    exit_code(run_worker(args).await)
}

pub async fn serve(args: ServeArgs) -> u8 {
    exit_code(run_serve(args).await)
}

fn exit_code(r: anyhow::Result<()>) -> u8 {
    match r {
        Ok(()) => OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            ERROR
        }
    }
}

fn worker_options(flags: &JobFlags) -> WorkerOptions {
    let consumer = flags.consumer.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        format!(
            "{}-{}",
            if host.is_empty() { "worker" } else { &host },
            std::process::id()
        )
    });
    WorkerOptions {
        consumer,
        concurrency: flags.concurrency.max(1),
        lease: Duration::from_secs(flags.lease_seconds.max(1)),
        grace: Duration::from_secs(flags.grace_seconds),
        region: flags.region.clone(),
        ..WorkerOptions::default()
    }
}

/// A region's shared state: the queue, the history and the stored policies.
#[derive(Clone)]
struct Backend {
    queue: Arc<dyn JobQueue>,
    history: Arc<dyn History>,
    store: Arc<dyn PolicyStore>,
    /// Last writes of tags, for bidirectional conflicts (shared by the region's writers).
    tag_ledger: Arc<dyn TagLedger>,
    /// Limits shared by the region's processes (registry pauses after 429s and low quotas, policy
    /// bandwidth); `None` in process.
    limits: Option<Arc<RedisLimits>>,
}

impl Backend {
    /// `registries` sharing this backend's registry pauses.
    fn share_pauses(&self, registries: Registries) -> Registries {
        match &self.limits {
            Some(l) => registries.with_shared_gate(l.clone()),
            None => registries,
        }
    }

    /// In Redis/Valkey, shared by every process of the region.
    async fn redis(target: &RedisTarget, flags: &QueueFlags) -> anyhow::Result<Backend> {
        let q = connect_queue(
            target,
            &flags.queue_prefix,
            Duration::from_secs(flags.redis_connect_timeout),
            Duration::from_secs(2),
        )
        .await?;
        Ok(Backend {
            history: Arc::new(RedisHistory::new(&q, flags.retention())),
            store: Arc::new(RedisPolicyStore::new(&q)),
            tag_ledger: Arc::new(RedisTagLedger::new(&q)),
            limits: Some(Arc::new(RedisLimits::new(&q))),
            queue: Arc::new(q),
        })
    }

    /// In this process only (`ferry serve` without `--redis`).
    fn memory(flags: &QueueFlags) -> Backend {
        Backend {
            queue: Arc::new(MemoryQueue::new(RetryPolicy::default())),
            history: Arc::new(MemoryHistory::new(flags.retention())),
            store: Arc::new(MemoryPolicyStore::default()),
            tag_ledger: Arc::new(MemoryTagLedger::default()),
            limits: None,
        }
    }
}

/// Keeps `targets` on the region's current policies: the config file's plus those stored through
/// the admin API.
fn spawn_policy_watch(
    tasks: &mut tokio::task::JoinSet<()>,
    config: &Config,
    registries: &Registries,
    backend: &Backend,
    targets: Vec<Arc<dyn Reload>>,
    shutdown: &CancellationToken,
) {
    let (config, registries, store, stop) = (
        config.clone(),
        registries.clone(),
        backend.store.clone(),
        shutdown.clone(),
    );
    tasks.spawn(async move {
        watch_and_reload(&config, &registries, store.as_ref(), &targets, stop).await
    });
}

/// Starts the gRPC admin API when `--admin-listen` is given (fails before serving anything when
/// its tokens or address are unusable).
async fn start_admin(
    tasks: &mut tokio::task::JoinSet<()>,
    flags: &AdminFlags,
    limits: &ListenFlags,
    config: &Config,
    registries: &Registries,
    backend: &Backend,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(listen) = &flags.admin_listen else {
        return Ok(());
    };
    let tokens = ferry_replicator::tokens::load(
        flags.admin_token_file.as_deref(),
        admin::auth::TOKEN_ENV,
        "admin",
    )
    .map_err(anyhow::Error::msg)?;
    let listener = limits.bind_grpc("--admin-listen", listen).await?;
    let addr = listener.local_addr()?;
    let auth = admin::AdminAuth::new(tokens, flags.admin_allow_unauthenticated_loopback, addr)
        .map_err(anyhow::Error::msg)?;
    let tls = match (&flags.admin_tls_cert, &flags.admin_tls_key) {
        (Some(cert), Some(key)) => Some(
            admin::tls_config("admin", cert, key, flags.admin_client_ca.as_deref())
                .map_err(anyhow::Error::msg)?,
        ),
        _ => None,
    };
    let state = admin::AdminState {
        config: config.clone(),
        store: backend.store.clone(),
        registries: registries.clone(),
        queue: backend.queue.clone(),
        history: backend.history.clone(),
        shutdown: shutdown.clone(),
        tasks: tokio_util::task::TaskTracker::new(),
    };
    tracing::info!(listen = %addr, tls = tls.is_some(), mtls = flags.admin_client_ca.is_some(), "admin API listening (gRPC, health, reflection)");
    tasks.spawn(async move {
        if let Err(e) = admin::serve(listener, state, auth, tls).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    Ok(())
}

/// The scheduler of the config's scheduled policies, its metrics registered in `registry`.
fn scheduler(
    config: &Config,
    registries: &Registries,
    backend: &Backend,
    holder: &str,
    registry: &mut prometheus_client::registry::Registry,
) -> anyhow::Result<Arc<Scheduler>> {
    Ok(Arc::new(Scheduler::new(
        config,
        registries,
        backend.queue.clone(),
        backend.history.clone(),
        holder,
        ScheduleMetrics::register(registry),
    )?))
}

/// Runs the scheduler until `shutdown` (policies added through the admin API may be scheduled).
fn spawn_scheduler(
    tasks: &mut tokio::task::JoinSet<()>,
    scheduler: &Arc<Scheduler>,
    shutdown: &CancellationToken,
) {
    let (scheduler, stop) = (scheduler.clone(), shutdown.clone());
    tasks.spawn(async move { scheduler.run(stop).await });
}

/// Binds `listen` (`flag`) for `router` with the listener limits and serves it until `shutdown`.
async fn spawn_server(
    tasks: &mut tokio::task::JoinSet<()>,
    limits: &ListenFlags,
    flag: &str,
    listen: &str,
    router: axum::Router,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let listener = limits.bind_http(flag, listen, router).await?;
    tracing::info!(listen = %listener.local_addr().map_or_else(|_| listen.to_string(), |a| a.to_string()), "listening");
    tasks.spawn(listener.serve(shutdown.clone()));
    Ok(())
}

async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let registries = Registries::from_config(&config)?
        .with_credential_rules(CredentialRules::new(&config, &args.admin.credentials_dirs)?);
    let backend = Backend::redis(&args.redis.required_target()?, &args.queue).await?;
    let registries = backend.share_pauses(registries);
    let (queue, history) = (backend.queue.clone(), backend.history.clone());
    let opts = worker_options(&args.jobs);
    let mut registry = prometheus_client::registry::Registry::default();
    let worker_metrics = WorkerMetrics::register(&mut registry);
    let scheduler = scheduler(
        &config,
        &registries,
        &backend,
        &opts.consumer,
        &mut registry,
    )?;
    let metrics = Arc::new(IngestMetrics::new(registry));
    let worker = Arc::new(
        Worker::new(
            &config,
            &registries,
            queue.clone(),
            history.clone(),
            opts.clone(),
        )?
        .with_metrics(worker_metrics)
        .with_tag_ledger(backend.tag_ledger.clone())
        .with_shared_speed(backend.limits.clone().map(|l| l as Arc<dyn SharedSpeed>)),
    );

    let shutdown = CancellationToken::new();
    let signals = cancel_on_signal(shutdown.clone());
    let mut tasks = tokio::task::JoinSet::new();
    start_admin(
        &mut tasks,
        &args.admin,
        &args.limits,
        &config,
        &registries,
        &backend,
        &shutdown,
    )
    .await?;
    if let Some(listen) = &args.listen {
        spawn_server(
            &mut tasks,
            &args.limits,
            "--listen",
            listen,
            ferry_replicator::ops::router(queue.clone(), metrics),
            &shutdown,
        )
        .await?;
    }
    spawn_scheduler(&mut tasks, &scheduler, &shutdown);
    spawn_policy_watch(
        &mut tasks,
        &config,
        &registries,
        &backend,
        vec![worker.clone(), scheduler.clone()],
        &shutdown,
    );
    tracing::info!(consumer = %opts.consumer, concurrency = opts.concurrency, "ferry worker running");
    worker.run(shutdown.clone()).await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    let _ = signals.await;
    tracing::info!("ferry worker stopped");
    Ok(())
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let registries = Registries::from_config(&config)?
        .with_credential_rules(CredentialRules::new(&config, &args.admin.credentials_dirs)?);
    let tokens = ferry_replicator::ingest::http::load_tokens(args.webhook_token_file.as_deref())?;
    anyhow::ensure!(
        !tokens.is_empty() || args.allow_unauthenticated,
        "no webhook token: set {} or --webhook-token-file (or pass --allow-unauthenticated on a trusted network)",
        ferry_replicator::ingest::http::TOKEN_ENV
    );
    let redis = args.redis.target()?;
    let backend = match &redis {
        Some(target) => Backend::redis(target, &args.queue).await?,
        None => Backend::memory(&args.queue),
    };
    let registries = backend.share_pauses(registries);
    let (queue, history) = (backend.queue.clone(), backend.history.clone());
    let opts = worker_options(&args.jobs);
    let mut registry = prometheus_client::registry::Registry::default();
    let worker_metrics = WorkerMetrics::register(&mut registry);
    let reconcile_metrics = ReconcileMetrics::register(&mut registry);
    let scheduler = scheduler(
        &config,
        &registries,
        &backend,
        &opts.consumer,
        &mut registry,
    )?;
    let poll_metrics = PollMetrics::register(&mut registry);
    let worker = Arc::new(
        Worker::new(
            &config,
            &registries,
            queue.clone(),
            history.clone(),
            opts.clone(),
        )?
        .with_metrics(worker_metrics)
        .with_tag_ledger(backend.tag_ledger.clone())
        .with_shared_speed(backend.limits.clone().map(|l| l as Arc<dyn SharedSpeed>)),
    );
    let reconciler = (args.reconcile_interval > 0)
        .then(|| {
            Reconciler::new(
                &config,
                &registries,
                queue.clone(),
                &opts.consumer,
                reconcile_metrics,
            )
            .map(Arc::new)
        })
        .transpose()?;
    let admin_config = config.clone();
    let sink = EventSink {
        ledger: Some(backend.tag_ledger.clone()),
        ..EventSink::from(queue.clone())
    };
    let mut builder = IngestState::builder(config, sink.clone())
        .metrics_registry(registry)
        .allow_unauthenticated(args.allow_unauthenticated)
        .max_clock_skew(Duration::from_secs(args.max_clock_skew_seconds))
        .body_limit(args.max_body_bytes);
    for t in tokens {
        builder = builder.token(t);
    }
    let state = builder.build()?;
    let ingest_state = state.clone();

    let shutdown = CancellationToken::new();
    let signals = cancel_on_signal(shutdown.clone());
    let mut tasks = tokio::task::JoinSet::new();
    start_admin(
        &mut tasks,
        &args.admin,
        &args.limits,
        &admin_config,
        &registries,
        &backend,
        &shutdown,
    )
    .await?;
    spawn_server(
        &mut tasks,
        &args.limits,
        "--listen",
        &args.listen,
        ferry_replicator::ingest::router(state),
        &shutdown,
    )
    .await?;
    if let Some(r) = reconciler.clone() {
        let (stop, every) = (
            shutdown.clone(),
            Duration::from_secs(args.reconcile_interval),
        );
        tasks.spawn(async move { r.run(every, stop).await });
    }
    let pollers = PollerSet::start(
        &admin_config,
        &registries,
        sink.clone(),
        poll_metrics,
        shutdown.clone(),
    )?;
    spawn_scheduler(&mut tasks, &scheduler, &shutdown);
    let mut targets: Vec<Arc<dyn Reload>> = vec![
        worker.clone(),
        scheduler.clone(),
        Arc::new(ingest_state),
        pollers.clone(),
    ];
    if let Some(r) = &reconciler {
        targets.push(r.clone());
    }
    spawn_policy_watch(
        &mut tasks,
        &admin_config,
        &registries,
        &backend,
        targets,
        &shutdown,
    );
    tracing::info!(
        queue = if redis.is_some() {
            "redis"
        } else {
            "in-process"
        },
        concurrency = opts.concurrency,
        "ferry serve running"
    );
    worker.run(shutdown.clone()).await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    pollers.wait().await;
    let _ = signals.await;
    tracing::info!("ferry serve stopped");
    Ok(())
}
