//! One daemon assembly for `ferry-agent`, `ferry worker` and `ferry serve`: each binary parses
//! its flags into [`DaemonOptions`], then [`Daemon::build`] → [`Daemon::spawn`] →
//! [`Running::drain`]. The differences between the three daemons are the options, and each option
//! says who sets it and why.
//!
//! | part | `ferry-agent` | `ferry worker` | `ferry serve` |
//! |---|---|---|---|
//! | queue and shared state ([`QueueOptions`]) | Redis | Redis | Redis, or in process |
//! | `--listen` ([`DaemonOptions::listen`]) | webhooks, `/metrics`, `/healthz` | `/metrics`, `/healthz` (optional) | webhooks, `/metrics`, `/healthz` |
//! | job workers ([`DaemonOptions::jobs`]) | – | yes | yes |
//! | cron scheduler ([`DaemonOptions::scheduler`]) | – | yes | yes |
//! | safety net ([`DaemonOptions::safety_net`]) | yes, this region's policies | – | yes, every policy |
//! | tag pollers ([`DaemonOptions::pollers`]) | yes | – | yes |
//! | regions: outbox, Forward endpoint, forwarders ([`DaemonOptions::regions`]) | yes | – | – |
//! | admin API ([`DaemonOptions::admin`]) | – | optional | optional |
//! | shutdown ([`DaemonOptions::intake_grace`]) | webhooks first, then the rest | all at once | all at once |
//!
//! # Invariants
//! - **One cancellation token** per process ([`Daemon::shutdown`]); every task stops on it. The
//!   listeners that take work in (webhooks, `/metrics`) watch a child of it, so that a daemon with
//!   an intake grace stops them first.
//! - **One metrics registry** per process: every part registers its families in it while the
//!   daemon is built, before the first scrape; `/metrics` on `--listen` exports all of them.
//! - **Nothing runs before everything is built**: flags, tokens, TLS material and listen
//!   addresses are checked, and every listener bound, in [`Daemon::build`]; a problem is an error
//!   there (the binaries exit 2) and no task has started.
//! - **One policy watch**: policies stored through the admin API reach every part that matches,
//!   polls, schedules, reconciles, forwards or runs jobs (each a [`Reload`] target).
pub mod backend;
mod forwarding;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use backend::{Backend, QueueOptions};

use crate::catalog::{watch_and_reload, Reload};
use crate::config::{Config, CredentialRules, CredentialsDirError, Region};
use crate::control::safety_net::{ReconcileMetrics, Reconciler};
use crate::control::schedule::{ScheduleMetrics, Scheduler};
use crate::ingest::harbor::HarborOptions;
use crate::ingest::http::SetupError;
use crate::ingest::poll::{PollMetrics, PollerSet};
use crate::ingest::{EventSink, IngestState};
use crate::oci::RegistryMetrics;
use crate::policy::TriggerKind;
use crate::regions::restore::PushRestorer;
use crate::regions::{ForwardMetrics, ForwardTls};
use crate::replicate::{Registries, SyncError};
use crate::runtime::background::{Statuses, Supervisor};
use crate::runtime::listener::{HttpListener, ListenError, ListenFlags};
use crate::runtime::ops::ProcessMetrics;
use crate::runtime::shutdown_signal;
use crate::store::queue::RegionLock;
use crate::store::redis::ConnectError;
use crate::throttle::SharedSpeed;
use crate::worker::{Worker, WorkerMetrics, WorkerOptions};

/// What a daemon runs and how. Each binary fills it from its flags; see the module's table.
pub struct DaemonOptions {
    /// Names the daemon in logs (`ferry-agent`, `ferry worker`, `ferry serve`).
    pub name: &'static str,
    /// The config file's registries and policies; policies stored through the admin API are added
    /// by the policy watch.
    pub config: Config,
    /// The config file's path, for messages.
    pub config_path: PathBuf,
    pub queue: QueueOptions,
    /// `--credentials-dir`: files that registries stored through the admin API may name. Every
    /// daemon of a region must use the same.
    pub credentials_dirs: Vec<PathBuf>,
    /// Names this process in the region's leases (cron ticks, safety-net passes, forwarding): the
    /// worker's consumer name in `ferry worker` and `ferry serve`, `agent-<host>-<pid>` in the agent.
    pub holder: String,
    /// Connection limits and the `/metrics` token of every listener (the same flags on all three).
    pub listen_flags: ListenFlags,
    /// `--listen`: webhooks (when [`DaemonOptions::webhooks`] is set), `/metrics` and `/healthz`.
    /// Required by the agent and `serve`; optional in `ferry worker`, which has no webhooks.
    pub listen: Option<String>,
    /// Accept registry webhooks on `--listen` (the agent and `serve`).
    pub webhooks: Option<WebhookOptions>,
    /// Run queued jobs (`ferry worker` and `serve`; the agent only enqueues).
    pub jobs: Option<WorkerOptions>,
    /// Fire the cron ticks of scheduled policies (`ferry worker` and `serve`: the processes that
    /// hold the execution history). One process of the region fires each tick.
    pub scheduler: bool,
    /// The safety net (a periodic full diff whose drift becomes jobs) every this often, the first
    /// pass at start; `Some(Duration::ZERO)` when `--reconcile-interval 0` turned it off (its
    /// metrics are still exported). `None` in `ferry worker`, which does not ingest events. The
    /// agent reconciles only the policies that run in its `--region`; `serve` has no region and
    /// reconciles every event-based policy.
    pub safety_net: Option<Duration>,
    /// Poll the tags of registries with `poll_interval_seconds` (the processes that ingest events:
    /// the agent and `serve`).
    pub pollers: bool,
    /// Serve the gRPC admin API (`--admin-listen` of `ferry worker` and `serve`; the agent has no
    /// execution history to show).
    pub admin: Option<AdminOptions>,
    /// This process's region and its links to the others (the agent only): events that run
    /// elsewhere go to the outbox, forwarders deliver it, and `--forward-listen` receives.
    pub regions: Option<RegionOptions>,
    /// How far an event time (a webhook's, or a peer region's) may be ahead of this clock.
    pub max_clock_skew: Duration,
    /// On a shutdown signal, stop the webhook listener first and let its requests finish for up
    /// to this long while everything else keeps running (the agent: the forwarders keep
    /// delivering what the last webhooks enqueued; registries re-send what is cut off). `None`
    /// stops everything at once (`ferry worker` and `serve`, whose workers have their own
    /// `--grace-seconds`).
    pub intake_grace: Option<Duration>,
}

/// How webhooks are accepted: the same flags on `ferry-agent` and `ferry serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WebhookOptions {
    /// File with the webhook bearer token(s), one per line (several allow rotation). Default: the
    /// FERRY_WEBHOOK_TOKEN environment variable.
    #[arg(long = "webhook-token-file", value_name = "WEBHOOK_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Accept webhooks without a token when none is configured (trusted networks only).
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// Largest accepted webhook body, in bytes.
    #[arg(long = "max-body-bytes", value_name = "MAX_BODY_BYTES", default_value_t = crate::ingest::http::DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// Harbor user Ferry writes as, whose events are ignored: `--harbor-operator`, a flag of the
    /// agent only (set after parsing). `serve` has no such flag (see the README's open questions).
    #[arg(skip)]
    pub harbor_operator: Option<String>,
}

/// The gRPC admin API (`--admin-*` flags of `ferry worker` and `ferry serve`).
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// `--admin-listen`.
    pub listen: String,
    /// `--admin-token-file`; without it `FERRY_ADMIN_TOKEN`.
    pub token_file: Option<PathBuf>,
    /// `--admin-allow-unauthenticated-loopback`.
    pub allow_unauthenticated_loopback: bool,
    /// `--admin-tls-cert` and `--admin-tls-key`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `--admin-client-ca`: require client certificates (mTLS).
    pub client_ca: Option<PathBuf>,
    /// `--admin-oidc-*`: also accept OIDC JWTs from this issuer, their claim mapped to roles.
    pub oidc: Option<crate::control::admin::oidc::OidcConfig>,
}

/// This process's region and how it talks to the others (`ferry-agent`).
#[derive(Debug, Clone, Default)]
pub struct RegionOptions {
    /// `--region`; a single site, where every event is handled here, without it.
    pub region: Region,
    /// `--forward-listen`: where other regions deliver their events.
    pub forward_listen: Option<String>,
    /// `--forward-token-file`; without it `FERRY_FORWARD_TOKEN`.
    pub token_file: Option<PathBuf>,
    /// `--forward-ca`, `--forward-tls-cert` and `--forward-tls-key`: verify peers, present this
    /// region's certificate, and serve `--forward-listen` over (m)TLS.
    pub tls: ForwardTls,
}

/// Why a daemon could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("no webhook token: set {} or --webhook-token-file (or pass --allow-unauthenticated on a trusted network)", crate::ingest::http::TOKEN_ENV)]
    NoWebhookToken,
    #[error("--region {region:?} is not declared in {config}'s `regions` (declared: {declared})")]
    UnknownRegion {
        region: String,
        config: String,
        declared: String,
    },
    #[error(
        "region {region:?} forwards to and from other regions: set {} or --forward-token-file",
        crate::regions::TOKEN_ENV
    )]
    NoForwardToken { region: String },
    /// A token file, TLS material or a peer's URL that cannot be used (the message names it).
    #[error("{0}")]
    Unusable(String),
    #[error("forward TLS")]
    ForwardTls(#[source] tonic::transport::Error),
    #[error(transparent)]
    Webhooks(#[from] SetupError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Policies(#[from] SyncError),
    #[error(transparent)]
    CredentialsDir(#[from] CredentialsDirError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A task not started yet.
type Pending = BoxFuture<'static, ()>;

/// A routine not started yet: spawns it under the daemon's supervisor.
type PendingRoutine = Box<dyn FnOnce(&Supervisor) + Send>;

/// A daemon built and bound, nothing running yet.
pub struct Daemon {
    name: &'static str,
    shutdown: CancellationToken,
    /// Child of `shutdown`: the listeners that take work in.
    intake: CancellationToken,
    intake_grace: Option<Duration>,
    /// Stop on `intake`.
    intake_tasks: Vec<Pending>,
    /// Stop on `shutdown`.
    tasks: Vec<Pending>,
    routines: Vec<PendingRoutine>,
    /// Runs the routines and tasks on `shutdown`, and keeps their statuses.
    supervisor: Supervisor,
    pollers: Option<Arc<PollerSet>>,
}

/// The parts every daemon builds its own from: the checked config, the region's state and the
/// process's token and registry.
struct Parts {
    config: Config,
    registries: Registries,
    backend: Backend,
    shutdown: CancellationToken,
    metrics: Registry,
    /// What the policy watch keeps on the current policies.
    reload: Vec<Arc<dyn Reload>>,
    tasks: Vec<Pending>,
    routines: Vec<PendingRoutine>,
    supervisor: Supervisor,
}

impl Daemon {
    /// Checks the options, connects to the queue (waiting for Redis up to its connect timeout),
    /// builds every part the options ask for and binds their listeners.
    pub async fn build(options: DaemonOptions) -> Result<Daemon, AppError> {
        let o = options;
        let registries = Registries::from_config(&o.config)?
            .with_credential_rules(CredentialRules::new(&o.config, &o.credentials_dirs)?);
        let webhook_tokens = o.webhooks.as_ref().map(webhook_tokens).transpose()?;
        let regions = o
            .regions
            .as_ref()
            .map(|r| forwarding::Plan::new(r, &o.config, &o.config_path))
            .transpose()?;
        let backend = Backend::open(&o.queue).await?;
        let shutdown = CancellationToken::new();
        let mut parts = Parts::new(&o.config, registries, backend, &shutdown);
        if let Some(jobs) = &o.jobs {
            parts.jobs(jobs)?;
        }
        if let Some(interval) = o.safety_net {
            parts.safety_net(interval, &o.holder, regions.as_ref())?;
        }
        if o.scheduler {
            parts.scheduler(&o.holder)?;
        }
        // Only a process that takes in events (webhooks or polls) needs a sink.
        let sink = (o.pollers || webhook_tokens.is_some()).then(|| parts.sink(regions.as_ref()));
        let pollers = match (o.pollers, &sink) {
            (true, Some(sink)) => Some(parts.pollers(sink.clone())?),
            _ => None,
        };
        let forward_service = match (&o.regions, regions) {
            (Some(options), Some(plan)) => {
                let metrics = ForwardMetrics::register(&mut parts.metrics);
                let f = forwarding::build(plan, options, &parts, metrics, &o).await?;
                parts.tasks.extend(f.tasks);
                parts.routines.extend(f.routines);
                f.service
            }
            _ => None,
        };
        if let Some(admin) = &o.admin {
            parts.admin(admin, &o.listen_flags).await?;
        }
        let intake = shutdown.child_token();
        let mut intake_tasks = Vec::new();
        let ingest = match &o.listen {
            Some(listen) => {
                let webhooks = sink.zip(webhook_tokens);
                let (server, ingest) = parts
                    .listen(&o, listen, webhooks, pollers.as_deref())
                    .await?;
                intake_tasks.push(server.serve(intake.clone()).boxed());
                ingest
            }
            None => None,
        };
        let mut reload = std::mem::take(&mut parts.reload);
        reload.extend(pollers.clone().map(|p| p as Arc<dyn Reload>));
        reload.extend(forward_service.map(|s| s as Arc<dyn Reload>));
        reload.extend(ingest.map(|s| Arc::new(s) as Arc<dyn Reload>));
        parts.policy_watch(reload);
        tracing::info!(queue = parts.backend.kind(), "{} running", o.name);
        Ok(Daemon {
            name: o.name,
            shutdown,
            intake,
            intake_grace: o.intake_grace,
            intake_tasks,
            tasks: parts.tasks,
            routines: parts.routines,
            supervisor: parts.supervisor,
            pollers,
        })
    }

    /// The process's cancellation token: cancelling it stops the daemon like a signal does.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The statuses of the daemon's background routines (scheduler, safety net, pollers,
    /// forwarders), kept while it runs.
    pub fn statuses(&self) -> Statuses {
        self.supervisor.statuses().clone()
    }

    /// Starts every part.
    pub fn spawn(self) -> Running {
        let intake = TaskTracker::new();
        for task in self.intake_tasks {
            intake.spawn(task);
        }
        intake.close();
        if let Some(pollers) = &self.pollers {
            pollers.begin();
        }
        for routine in self.routines {
            routine(&self.supervisor);
        }
        for task in self.tasks {
            self.supervisor.spawn_task(task);
        }
        Running {
            name: self.name,
            shutdown: self.shutdown,
            intake: self.intake,
            intake_grace: self.intake_grace,
            intake_tasks: intake,
            supervisor: self.supervisor,
        }
    }
}

/// A daemon whose parts run.
pub struct Running {
    name: &'static str,
    shutdown: CancellationToken,
    intake: CancellationToken,
    intake_grace: Option<Duration>,
    intake_tasks: TaskTracker,
    supervisor: Supervisor,
}

impl Running {
    /// Runs until SIGINT/SIGTERM (or the shutdown token), then stops: with an intake grace the
    /// webhook listener first (its requests in flight finish, for up to the grace), then
    /// everything else; returns when every task has stopped.
    pub async fn drain(self) {
        tokio::select! {
            () = shutdown_signal() => {}
            () = self.shutdown.cancelled() => {}
        }
        tracing::info!("shutting down: finishing the work in flight");
        if let Some(grace) = self.intake_grace {
            self.intake.cancel();
            if tokio::time::timeout(grace, self.intake_tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    grace_seconds = grace.as_secs(),
                    "grace period over; exiting with requests in flight (registries will re-send them)"
                );
            }
            self.shutdown.cancel();
        } else {
            self.shutdown.cancel();
            self.intake_tasks.wait().await;
        }
        self.supervisor.wait().await;
        tracing::info!("{} stopped", self.name);
    }
}

/// The webhook tokens, checked before anything waits for Redis.
fn webhook_tokens(options: &WebhookOptions) -> Result<Vec<String>, AppError> {
    let tokens = crate::ingest::http::load_tokens(options.token_file.as_deref())?;
    if tokens.is_empty() && !options.allow_unauthenticated {
        return Err(AppError::NoWebhookToken);
    }
    Ok(tokens)
}

/// What the webhook listener takes, and what it does not.
fn log_webhooks(
    o: &DaemonOptions,
    authenticated: bool,
    addr: std::io::Result<std::net::SocketAddr>,
    pollers: Option<&PollerSet>,
) {
    let registries: Vec<&str> = o
        .config
        .registries
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    let event_policies = o
        .config
        .policies
        .iter()
        .filter(|p| p.enabled && p.trigger.kind == TriggerKind::EventBased)
        .count();
    tracing::info!(
        listen = %addr.map_or_else(|_| o.listen.clone().unwrap_or_default(), |a| a.to_string()),
        registries = %registries.join(","),
        authenticated,
        event_policies,
        polled = %pollers.map(PollerSet::registries).unwrap_or_default().join(","),
        "{} serving webhooks", o.name
    );
    if event_policies == 0 {
        tracing::warn!(
            "no enabled event_based policy: webhooks will be accepted but create no jobs"
        );
    }
    if !authenticated {
        tracing::warn!("webhooks are accepted without a token (--allow-unauthenticated)");
    }
}

impl Parts {
    fn new(
        config: &Config,
        registries: Registries,
        backend: Backend,
        shutdown: &CancellationToken,
    ) -> Parts {
        // The registry clients count their requests first: every daemon sends some.
        let mut metrics = Registry::default();
        let requests = RegistryMetrics::register(&mut metrics);
        Parts {
            registries: backend.share_pauses(registries).with_metrics(requests),
            config: config.clone(),
            backend,
            shutdown: shutdown.clone(),
            metrics,
            reload: Vec::new(),
            tasks: Vec::new(),
            routines: Vec::new(),
            supervisor: Supervisor::new(shutdown.clone()),
        }
    }

    /// The job workers; their metrics first in the registry.
    fn jobs(&mut self, options: &WorkerOptions) -> Result<(), AppError> {
        let metrics = WorkerMetrics::register(&mut self.metrics);
        for policy in &self.config.policies {
            metrics.init_policy(policy);
        }
        let b = &self.backend;
        let worker = Arc::new(
            Worker::new(&self.config, &self.registries, &b.store, options.clone())?
                .with_metrics(metrics)
                .with_tag_ledger(b.tag_ledger.clone())
                .with_shared_speed(b.limits.clone().map(|l| l as Arc<dyn SharedSpeed>)),
        );
        tracing::info!(consumer = %options.consumer, concurrency = options.concurrency, "running jobs");
        self.reload.push(worker.clone());
        self.tasks.push(worker.run(self.shutdown.clone()).boxed());
        Ok(())
    }

    /// The safety net (metrics registered even when `interval` is zero and it does not run).
    fn safety_net(
        &mut self,
        interval: Duration,
        holder: &str,
        regions: Option<&forwarding::Plan>,
    ) -> Result<(), AppError> {
        let metrics = ReconcileMetrics::register(&mut self.metrics);
        if interval.is_zero() {
            return Ok(());
        }
        let region = regions.map_or_else(Region::single_site, |r| r.region.clone());
        let reconciler = Arc::new(
            Reconciler::new(
                &self.config,
                &self.registries,
                self.backend.store.jobs.clone(),
                RegionLock::new(self.backend.store.leases.clone(), holder),
                metrics,
            )?
            .in_region(region, &self.config, &self.registries)?,
        );
        self.reload.push(reconciler.clone());
        let routine = reconciler.every(interval);
        self.routines.push(Box::new(move |s| s.spawn(routine)));
        Ok(())
    }

    /// The cron scheduler (runs even with no scheduled policy: the admin API may add some).
    fn scheduler(&mut self, holder: &str) -> Result<(), AppError> {
        let scheduler = Arc::new(Scheduler::new(
            &self.config,
            &self.registries,
            self.backend.store.jobs.clone(),
            self.backend.store.history.clone(),
            RegionLock::new(self.backend.store.leases.clone(), holder),
            ScheduleMetrics::register(&mut self.metrics),
        )?);
        self.reload.push(scheduler.clone());
        let routine = scheduler.ticks();
        self.routines.push(Box::new(move |s| s.spawn(routine)));
        Ok(())
    }

    /// The tag pollers, built but not started.
    fn pollers(&mut self, sink: EventSink) -> Result<Arc<PollerSet>, AppError> {
        let metrics = PollMetrics::register(&mut self.metrics);
        let supervisor = self.supervisor.clone();
        Ok(PollerSet::supervised(
            &self.config,
            &self.registries,
            sink,
            metrics,
            supervisor,
        )?)
    }

    /// Binds `--listen`: with `webhooks` (where accepted events go and the tokens) the webhook
    /// routes, else `/metrics` and `/healthz` only. Takes the process's metrics registry, so it
    /// comes after every other part.
    async fn listen(
        &mut self,
        o: &DaemonOptions,
        listen: &str,
        webhooks: Option<(EventSink, Vec<String>)>,
        pollers: Option<&PollerSet>,
    ) -> Result<(HttpListener, Option<IngestState>), AppError> {
        let Some((sink, tokens)) = webhooks else {
            let metrics = Arc::new(
                ProcessMetrics::new(std::mem::take(&mut self.metrics))
                    .with_workers(self.backend.store.history.clone()),
            );
            let router = crate::runtime::ops::router(self.backend.store.jobs.clone(), metrics);
            let listener = o.listen_flags.bind_http("--listen", listen, router).await?;
            tracing::info!(listen = %listener.local_addr().map_or_else(|_| listen.to_string(), |a| a.to_string()), "listening");
            return Ok((listener, None));
        };
        let options = o.webhooks.clone().unwrap_or_default();
        let authenticated = !tokens.is_empty();
        let state = self.ingest_state(sink, &options, tokens, o.max_clock_skew)?;
        let router = crate::ingest::router(state.clone());
        let listener = o.listen_flags.bind_http("--listen", listen, router).await?;
        log_webhooks(o, authenticated, listener.local_addr(), pollers);
        Ok((listener, Some(state)))
    }

    /// Where accepted events go: this region's queue and ledger (with the put-back of overwritten
    /// pushes, following the policies), and with regions the outbox.
    fn sink(&mut self, regions: Option<&forwarding::Plan>) -> EventSink {
        let restorer = Arc::new(PushRestorer::new(&self.registries, &mut self.metrics));
        self.reload.push(restorer.clone());
        EventSink {
            queue: self.backend.store.jobs.clone(),
            region: regions.map_or_else(Region::single_site, |r| r.region.clone()),
            outbox: regions.and(self.backend.outbox.clone()),
            ledger: Some(self.backend.tag_ledger.clone()),
            restorer: Some(restorer),
        }
    }

    /// The webhook routes' state; the process's metrics registry moves into it (`/metrics`).
    fn ingest_state(
        &mut self,
        sink: EventSink,
        options: &WebhookOptions,
        tokens: Vec<String>,
        max_clock_skew: Duration,
    ) -> Result<IngestState, AppError> {
        let mut builder = IngestState::builder(self.config.clone(), sink)
            .metrics_registry(std::mem::take(&mut self.metrics))
            .live_workers(self.backend.store.history.clone())
            .allow_unauthenticated(options.allow_unauthenticated)
            .body_limit(options.body_limit)
            .max_clock_skew(max_clock_skew)
            .harbor_options(HarborOptions {
                ignore_operator: options.harbor_operator.clone(),
            });
        for token in tokens {
            builder = builder.token(token);
        }
        Ok(builder.build()?)
    }

    /// Binds the admin API (fails before serving anything when its tokens, TLS material or
    /// address are unusable).
    async fn admin(&mut self, o: &AdminOptions, limits: &ListenFlags) -> Result<(), AppError> {
        use crate::control::admin;
        let tokens = crate::tokens::load(o.token_file.as_deref(), admin::auth::TOKEN_ENV, "admin")
            .map_err(AppError::Unusable)?;
        let listener = limits.bind_grpc("--admin-listen", &o.listen).await?;
        let addr = listener.local_addr()?;
        let oidc = o
            .oidc
            .clone()
            .map(admin::oidc::OidcVerifier::new)
            .transpose()
            .map_err(|e| AppError::Unusable(e.to_string()))?;
        let sso = oidc.is_some();
        let auth = admin::AdminAuth::new(tokens, oidc, o.allow_unauthenticated_loopback, addr)
            .map_err(AppError::Unusable)?;
        let tls = match &o.tls {
            Some((cert, key)) => Some(
                admin::tls_config("admin", cert, key, o.client_ca.as_deref())
                    .map_err(AppError::Unusable)?,
            ),
            None => None,
        };
        let state = admin::AdminState {
            config: self.config.clone(),
            store: self.backend.policies.clone(),
            registries: self.registries.clone(),
            queue: self.backend.store.jobs.clone(),
            dead_letters: self.backend.store.dead_letters.clone(),
            pauses: self.backend.store.pauses.clone(),
            history: self.backend.store.history.clone(),
            shutdown: self.shutdown.clone(),
            tasks: TaskTracker::new(),
        };
        tracing::info!(listen = %addr, tls = tls.is_some(), mtls = o.client_ca.is_some(), oidc = sso, "admin API listening (gRPC, health, reflection)");
        self.tasks.push(
            async move {
                if let Err(e) = admin::serve(listener, state, auth, tls).await {
                    tracing::error!(error = %e, "admin API stopped");
                }
            }
            .boxed(),
        );
        Ok(())
    }

    /// Keeps `targets` on the region's current policies: the config file's plus those stored
    /// through the admin API.
    fn policy_watch(&mut self, targets: Vec<Arc<dyn Reload>>) {
        let (config, registries, store, stop) = (
            self.config.clone(),
            self.registries.clone(),
            self.backend.policies.clone(),
            self.shutdown.clone(),
        );
        self.tasks.push(
            async move {
                watch_and_reload(&config, &registries, store.as_ref(), &targets, stop).await
            }
            .boxed(),
        );
    }
}
