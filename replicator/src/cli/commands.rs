//! The commands behind `ferry sync`, `ferry diff`, `ferry policy validate`, and the flags of
//! `ferry worker` and `ferry serve` turned into the daemon assembly's options ([`ferry_replicator::app`]).
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use ferry_replicator::app::{AdminOptions, Daemon, DaemonOptions, QueueOptions};
use ferry_replicator::config::{Config, Region};
use ferry_replicator::control::admin::oidc::{OidcConfig, DEFAULT_MIN_REFRESH_INTERVAL};
use ferry_replicator::policy::Policy;
use ferry_replicator::replicate::drift::{diff_policy, DriftReport};
use ferry_replicator::replicate::{
    sync_policy, PreparedPolicy, Registries, RunProgress, SyncOptions, SyncReport, TagOutcome,
};
use ferry_replicator::runtime::shutdown_signal;
use ferry_replicator::store::redis::RedisTarget;
use ferry_replicator::worker::WorkerOptions;
use indicatif::HumanBytes;
use tokio_util::sync::CancellationToken;

use super::{
    progress, AdminFlags, DiffArgs, JobFlags, JsonRuns, OidcFlags, ProgressMode, QueueFlags,
    ServeArgs, SyncArgs, Target, WorkerArgs,
};

pub(super) const OK: u8 = 0;
pub(super) const NO: u8 = 1;
pub(super) const ERROR: u8 = 2;
pub(super) const INTERRUPTED: u8 = 130;

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
pub(super) fn selected<'a>(
    config: &'a Config,
    name: Option<&str>,
) -> anyhow::Result<Vec<&'a Policy>> {
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
pub(super) fn cancel_on_signal(token: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown_signal() => {},
            () = token.cancelled() => return,
        }
        tracing::warn!("interrupted: stopping");
        token.cancel();
    })
}

/// Runs `work` with signals turning into cancellation and the progress display on; `true` with
/// its output when it was interrupted.
pub(super) async fn with_progress<T>(
    mode: ProgressMode,
    work: impl AsyncFnOnce(CancellationToken, Arc<RunProgress>) -> T,
) -> (T, bool) {
    let cancel = CancellationToken::new();
    let signals = cancel_on_signal(cancel.clone());
    let run_progress = Arc::new(RunProgress::default());
    let display_done = CancellationToken::new();
    let display = progress::spawn(run_progress.clone(), mode, display_done.clone());
    let out = work(cancel.clone(), run_progress).await;
    display_done.cancel();
    let _ = display.await;
    let interrupted = cancel.is_cancelled();
    cancel.cancel();
    let _ = signals.await;
    (out, interrupted)
}

pub async fn sync(args: SyncArgs) -> u8 {
    let Some(prepared) = load_target(&args.target) else {
        return ERROR;
    };
    // With --json every tag is written as it finishes; otherwise each policy's summary follows it.
    let json = args.target.json.then(JsonRuns::start);
    let ((code, converged), interrupted) =
        with_progress(args.progress, async |cancel, progress| {
            let opts = SyncOptions {
                cancel,
                tag_parallelism: args.tag_parallelism,
                blob_parallelism: args.blob_parallelism,
                progress,
                tag_sink: json.as_ref().map(JsonRuns::sink),
            };
            let (mut code, mut converged) = (OK, true);
            for p in &prepared {
                if let Some(j) = &json {
                    j.begin(&p.policy.name);
                }
                match sync_policy(p, &opts).await {
                    Ok(r) => {
                        converged &= r.converged();
                        match &json {
                            Some(j) => j.end(&r),
                            None => print_sync_summary(&r),
                        }
                    }
                    Err(e) => {
                        eprintln!("error: policy {}: {e}", p.policy.name);
                        if let Some(j) = &json {
                            j.end_failed(&e.to_string());
                        }
                        code = ERROR;
                    }
                }
            }
            (code, converged)
        })
        .await;
    if let Some(j) = &json {
        if !j.finish() {
            return ERROR;
        }
    }
    if interrupted {
        INTERRUPTED
    } else if code == OK && !converged {
        NO
    } else {
        code
    }
}

pub(super) fn print_sync_summary(r: &SyncReport) {
    let c = r.counts;
    println!(
        "policy {}: tags {} copied, {} unchanged, {} kept, {} skipped, {} blocked, {} failed",
        r.policy, c.copied, c.unchanged, c.kept, c.skipped, c.blocked, c.failed,
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
    for u in &r.unlisted {
        println!("  FAILED listing {}: {}", u.repository, u.error);
    }
    for t in &r.notable {
        match &t.outcome {
            TagOutcome::Failed { error } => println!("  FAILED {}/{}:{}: {error}", t.destination, t.destination_repository, t.tag),
            TagOutcome::Kept { source_digest, destination_digest } => println!(
                "  kept {}/{}:{} (override: false): destination has {destination_digest}, source has {source_digest}",
                t.destination, t.destination_repository, t.tag
            ),
            TagOutcome::Skipped { reason } => println!("  skipped {}:{}: {reason}", t.repository, t.tag),
            TagOutcome::Blocked { gate, reason, .. } => println!("  blocked {}:{} by {gate}: {reason}", t.repository, t.tag),
            _ => {}
        }
    }
    if r.notable_dropped > 0 {
        println!(
            "  … and {} more tags failed, kept, skipped or blocked (--json lists every tag)",
            r.notable_dropped
        );
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
        if !super::print_json(&reports) {
            return ERROR;
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
        region: Region::new(&flags.region),
        ..WorkerOptions::default()
    }
}

/// The `--admin-*` flags as the assembly's options (`None` without `--admin-listen`).
fn admin_options(flags: &AdminFlags) -> Option<AdminOptions> {
    Some(AdminOptions {
        listen: flags.admin_listen.clone()?,
        token_file: flags.admin_token_file.clone(),
        allow_unauthenticated_loopback: flags.admin_allow_unauthenticated_loopback,
        tls: flags
            .admin_tls_cert
            .clone()
            .zip(flags.admin_tls_key.clone()),
        client_ca: flags.admin_client_ca.clone(),
        oidc: oidc_config(&flags.oidc),
    })
}

/// The `--admin-oidc-*` flags (`None` without `--admin-oidc-issuer`); checked when the daemon is
/// built.
fn oidc_config(flags: &OidcFlags) -> Option<OidcConfig> {
    Some(OidcConfig {
        issuer: flags.admin_oidc_issuer.clone()?,
        audience: flags.admin_oidc_audience.clone().unwrap_or_default(),
        jwks_url: flags.admin_oidc_jwks_url.clone(),
        claim: flags.admin_oidc_claim.clone(),
        viewer_values: flags.admin_oidc_viewers.clone(),
        operator_values: flags.admin_oidc_operators.clone(),
        leeway: Duration::from_secs(flags.admin_oidc_leeway_seconds),
        min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
        ca_file: flags.admin_oidc_ca_file.clone(),
    })
}

/// The queue these flags name: Redis at `target`, or in this process without one.
fn queue_options(target: Option<RedisTarget>, flags: &QueueFlags) -> QueueOptions {
    match target {
        Some(target) => QueueOptions::Redis {
            target: Box::new(target),
            prefix: flags.queue_prefix.clone(),
            connect_timeout: Duration::from_secs(flags.redis_connect_timeout),
            retention: flags.retention(),
        },
        None => QueueOptions::InProcess {
            retention: flags.retention(),
        },
    }
}

/// `ferry worker`: job workers and the scheduler on the region's Redis, `/metrics` and `/healthz`
/// on `--listen` and the admin API when asked.
async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let jobs = worker_options(&args.jobs);
    let daemon = Daemon::build(DaemonOptions {
        name: "ferry worker",
        config,
        config_path: args.config,
        queue: queue_options(Some(args.redis.required_target()?), &args.queue),
        credentials_dirs: args.admin.credentials_dirs.clone(),
        holder: jobs.consumer.clone(),
        listen_flags: args.limits,
        listen: args.listen,
        webhooks: None,
        jobs: Some(jobs),
        scheduler: true,
        safety_net: None,
        pollers: false,
        admin: admin_options(&args.admin),
        regions: None,
        max_clock_skew: ferry_replicator::event::DEFAULT_MAX_CLOCK_SKEW,
        intake_grace: None,
    })
    .await?;
    daemon.spawn().drain().await;
    Ok(())
}

/// `ferry serve`: everything of a one-site install in one process (webhooks, pollers, safety net,
/// workers, scheduler, admin API), on Redis or in process.
async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let jobs = worker_options(&args.jobs);
    let daemon = Daemon::build(DaemonOptions {
        name: "ferry serve",
        config,
        config_path: args.config,
        queue: queue_options(args.redis.target()?, &args.queue),
        credentials_dirs: args.admin.credentials_dirs.clone(),
        holder: jobs.consumer.clone(),
        listen_flags: args.limits,
        listen: Some(args.listen),
        webhooks: Some(args.webhooks),
        jobs: Some(jobs),
        scheduler: true,
        safety_net: Some(Duration::from_secs(args.reconcile_interval)),
        pollers: true,
        admin: admin_options(&args.admin),
        regions: None,
        max_clock_skew: Duration::from_secs(args.max_clock_skew_seconds),
        intake_grace: None,
    })
    .await?;
    daemon.spawn().drain().await;
    Ok(())
}
