//! The scheduler: `scheduled` policies start a run (see [`crate::control::runs`]) on every tick of their
//! cron, exactly once across all the processes of a region.
//!
//! Cron expressions are Harbor's 6-field form with seconds first (`0 0 */6 * * *`) or the classic
//! 5-field form, evaluated in UTC (parsed by [`crate::policy::cron::parse`], the parser validation
//! uses too).
//!
//! # Invariants
//! - **One firing per tick**: a process fires tick `T` of policy `P` only after taking the
//!   queue lease `schedule/P/T` (the blob-lease primitive: Redis `SET NX PX`). The key names the
//!   tick, so it is its own fencing token: a process that wakes late for a tick another one fired
//!   finds the key taken, and a later tick can never be fired under an earlier tick's lease.
//! - **`single_active`** (`trigger_settings.single_active`, or Harbor's policy-level
//!   `single_active_replication`): a tick is skipped, and logged and
//!   counted as such, while an earlier run of the policy has not ended.
//! - Ticks missed while no process was running are not replayed (the next tick runs a full
//!   reconciliation anyway).
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::catalog::Current;
use crate::config::Config;
use crate::control::runs::start_run;
use crate::labels::PolicyOutcome;
use crate::policy::TriggerKind;
use crate::replicate::{PreparedPolicy, Registries, SyncError};
use crate::runtime::background::{Next, Routine};
use crate::store::history::{ExecutionQuery, History};
use crate::store::queue::{JobQueue, RegionLock};
use crate::store::StartedBy;

/// Longest sleep of the scheduler loop (how soon a policy added through the API is scheduled).
const RECHECK: Duration = Duration::from_secs(5);

/// How long the lease of one tick is kept (longer than any clock skew between processes).
const TICK_LEASE: Duration = Duration::from_secs(3600);

/// `ferry_schedule_ticks_total{policy,outcome}` with outcome `fired`, `taken` (another process
/// fired it), `skipped_active` or `failed`.
#[derive(Debug, Clone, Default)]
pub struct ScheduleMetrics {
    ticks: Family<PolicyOutcome, Counter>,
}

impl ScheduleMetrics {
    pub fn register(registry: &mut Registry) -> ScheduleMetrics {
        let m = ScheduleMetrics::default();
        registry.register(
            "ferry_schedule_ticks",
            "Cron ticks of scheduled policies, by policy and outcome (fired, taken, skipped_active, failed)",
            m.ticks.clone(),
        );
        m
    }
}

/// What one tick did in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickOutcome {
    /// This process started the run with this execution id.
    Fired(String),
    /// Another process fired this tick.
    Taken,
    /// `single_active` and this run has not ended yet.
    SkippedActive(String),
    Failed(String),
}

impl TickOutcome {
    fn label(&self) -> &'static str {
        match self {
            TickOutcome::Fired(_) => "fired",
            TickOutcome::Taken => "taken",
            TickOutcome::SkippedActive(_) => "skipped_active",
            TickOutcome::Failed(_) => "failed",
        }
    }
}

/// One scheduled policy.
pub struct Entry {
    pub prepared: Arc<PreparedPolicy>,
    cron: Cron,
    single_active: bool,
}

impl Entry {
    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: &DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(after, false).ok()
    }
}

/// Fires the scheduled policies of a config.
pub struct Scheduler {
    /// Replaced as a whole by [`Scheduler::reload`].
    entries: Current<Vec<Entry>>,
    queue: Arc<dyn JobQueue>,
    history: Arc<dyn History>,
    /// The lock that lets one process of the region fire each tick.
    lock: RegionLock,
    metrics: ScheduleMetrics,
}

impl Scheduler {
    /// Every enabled `scheduled` policy of `config` (no network I/O); each tick takes `lock` first.
    pub fn new(
        config: &Config,
        registries: &Registries,
        queue: Arc<dyn JobQueue>,
        history: Arc<dyn History>,
        lock: RegionLock,
        metrics: ScheduleMetrics,
    ) -> Result<Scheduler, SyncError> {
        Ok(Scheduler {
            entries: Current::new(entries(config, registries)?),
            queue,
            history,
            lock,
            metrics,
        })
    }

    /// The scheduled policies now.
    pub fn entries(&self) -> Arc<Vec<Entry>> {
        self.entries.get()
    }

    /// Replaces the scheduled policies (changed through the admin API); on error the old set
    /// stays. The next tick is computed from the new set.
    pub fn reload(&self, config: &Config, registries: &Registries) -> Result<(), SyncError> {
        self.entries.set(entries(config, registries)?);
        Ok(())
    }

    /// Fires tick `at` of `entry` unless another process did or `single_active` forbids it.
    pub async fn tick(&self, entry: &Entry, at: DateTime<Utc>) -> TickOutcome {
        let policy = &entry.prepared.policy.name;
        let key = format!("schedule/{policy}/{}", at.timestamp());
        let outcome = match self.lock.try_take(&key, TICK_LEASE).await {
            Ok(false) => TickOutcome::Taken,
            Err(e) => TickOutcome::Failed(format!("cannot take the tick lease: {e}")),
            Ok(true) => match self.active_run(policy, entry.single_active).await {
                Err(e) => TickOutcome::Failed(e),
                Ok(Some(active)) => TickOutcome::SkippedActive(active),
                Ok(None) => match start_run(
                    &entry.prepared,
                    StartedBy::Scheduled,
                    false,
                    self.queue.as_ref(),
                    self.history.as_ref(),
                )
                .await
                {
                    Ok(e) => TickOutcome::Fired(e.id),
                    Err(e) => TickOutcome::Failed(e.to_string()),
                },
            },
        };
        self.metrics
            .ticks
            .get_or_create(&PolicyOutcome {
                policy: policy.clone(),
                outcome: outcome.label().into(),
            })
            .inc();
        match &outcome {
            TickOutcome::Fired(id) => {
                tracing::info!(policy = %policy, tick = %at, execution = %id, "scheduled run started")
            }
            TickOutcome::Taken => {
                tracing::debug!(policy = %policy, tick = %at, "tick fired by another process")
            }
            TickOutcome::SkippedActive(id) => {
                tracing::warn!(policy = %policy, tick = %at, running = %id, "tick skipped: the previous run has not ended (single_active)")
            }
            TickOutcome::Failed(e) => {
                tracing::warn!(policy = %policy, tick = %at, error = %e, "scheduled run could not start")
            }
        }
        outcome
    }

    /// With `single_active`, the id of a run of `policy` that has not ended.
    async fn active_run(
        &self,
        policy: &str,
        single_active: bool,
    ) -> Result<Option<String>, String> {
        if !single_active {
            return Ok(None);
        }
        let recent = self
            .history
            .executions(&ExecutionQuery {
                policy: Some(policy.to_string()),
                before_ms: None,
                limit: 50,
            })
            .await
            .map_err(|e| format!("cannot read the policy's executions: {e}"))?;
        Ok(recent
            .into_iter()
            .find(|e| {
                matches!(e.trigger, StartedBy::Manual | StartedBy::Scheduled) && !e.state.is_final()
            })
            .map(|e| e.id))
    }

    /// The scheduler's loop, to run under [`crate::runtime::background::supervise`]: fires ticks as they
    /// come. Runs even with no scheduled policy, since [`Scheduler::reload`] may add some; wakes
    /// at least every [`RECHECK`] to see them.
    pub fn ticks(self: &Arc<Self>) -> Ticks {
        Ticks {
            scheduler: self.clone(),
            after: Utc::now(),
        }
    }
}

/// The scheduler as a [`Routine`]: each step fires the ticks that are due, then waits for the
/// next one (at most [`RECHECK`]).
pub struct Ticks {
    scheduler: Arc<Scheduler>,
    /// Ticks up to this time are done.
    after: DateTime<Utc>,
}

impl Routine for Ticks {
    /// A tick that fails is counted and logged as `failed`; the loop itself does not fail.
    type Error = std::convert::Infallible;

    fn name(&self) -> String {
        "scheduler".into()
    }

    /// A tick runs to its end: one half-fired (lease taken, run not started) would be lost.
    fn interruptible(&self) -> bool {
        false
    }

    async fn step(&mut self) -> Result<Next, Self::Error> {
        let entries = self.scheduler.entries();
        let next = entries
            .iter()
            .filter_map(|e| e.next_after(&self.after))
            .min();
        let now = Utc::now();
        if let Some(at) = next.filter(|at| *at <= now) {
            for entry in entries
                .iter()
                .filter(|e| e.next_after(&self.after) == Some(at))
            {
                self.scheduler.tick(entry, at).await;
            }
            self.after = at;
            return Ok(Next::Now);
        }
        let wait = next.map_or(RECHECK, |at| {
            (at - now).to_std().unwrap_or(Duration::ZERO).min(RECHECK)
        });
        Ok(Next::After(wait))
    }
}

/// The enabled scheduled policies of `config`, prepared (no network I/O).
fn entries(config: &Config, registries: &Registries) -> Result<Vec<Entry>, SyncError> {
    let mut entries = Vec::new();
    for p in config
        .policies
        .iter()
        .filter(|p| p.enabled && p.trigger.kind == TriggerKind::Scheduled)
    {
        let settings = p.trigger.trigger_settings.as_ref();
        let expression = settings.map(|s| s.cron.trim()).unwrap_or_default();
        let cron = crate::policy::cron::parse(expression).map_err(|e| SyncError::Policy {
            policy: p.name.clone(),
            message: format!("trigger_settings.cron {expression:?}: {e}"),
        })?;
        entries.push(Entry {
            prepared: Arc::new(PreparedPolicy::new(p, registries)?),
            cron,
            single_active: p.single_active(),
        });
    }
    Ok(entries)
}

impl crate::catalog::Reload for Scheduler {
    fn what(&self) -> &'static str {
        "scheduler"
    }

    fn reload(&self, config: &Config, registries: &Registries) -> Result<(), String> {
        Scheduler::reload(self, config, registries).map_err(|e| e.to_string())
    }
}
