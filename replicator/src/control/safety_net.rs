//! The safety net: a periodic full diff of every enabled `event_based` policy that turns drift into
//! ordinary jobs, so whatever an outage swallowed (a registry restart losing its notification
//! queue, a partition, a bug) is repaired.
//!
//! Invariants:
//! - It only **enqueues** (push jobs for missing and different tags); workers do the copying with
//!   the usual level-triggered rules, `override: false` included. Jobs collapse with pending ones.
//! - A tag a gate (`only_signed`, `max_severity`) held back is not enqueued again while a worker's
//!   decision about that source digest is remembered (6 h, `replicate::gates::BLOCKED_MEMO`), and
//!   is not counted in `ferry_drift_tags`: it is missing on purpose. After that it is enqueued
//!   once more (a signature or scan whose event was lost is noticed then).
//! - A tag whose push was dead-lettered within [`crate::store::queue::DEAD_LETTER_MEMO`] (a worker
//!   remembered it) is counted in `ferry_drift_tags` but not enqueued again: a failure no retry
//!   repairs would add a dead letter every pass. Its next event, or a retry of the dead letter,
//!   runs it.
//! - Extra destination tags are reported (`ferry_drift_tags`), never deleted: from the source alone a
//!   swallowed delete cannot be told apart from content someone else put there.
//! - A bidirectional policy is reconciled in both directions, each by the region that writes that
//!   side; its jobs fill missing tags, and the worker never settles a *different* tag without an
//!   event (see `crate::regions::conflict`).
//! - One pass per policy per interval across all processes sharing a queue: a pass takes a named
//!   lease in the queue (the blob-lease primitive, keyed `reconcile/<policy>`) for most of the
//!   interval.
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::catalog::Current;
use crate::clock::now_ms;
use crate::config::{Config, Region};
use crate::event::EventKind;
use crate::labels::PolicyLabel;
use crate::policy::TriggerKind;
use crate::replicate::drift::diff_policy;
use crate::replicate::gates::blocked_key;
use crate::replicate::{PreparedPolicy, Registries, SyncError};
use crate::runtime::background::{Next, Routine};
use crate::store::queue::{dead_letter_key, EnqueueOutcome, Job, JobQueue, RegionLock};
use crate::store::StartedBy;

/// `ferry_drift_tags{policy}` and `ferry_reconcile_repairs_total{policy}`.
#[derive(Debug, Clone, Default)]
pub struct ReconcileMetrics {
    drift: Family<PolicyLabel, Gauge>,
    repairs: Family<PolicyLabel, Counter>,
}

impl ReconcileMetrics {
    pub fn register(registry: &mut Registry) -> ReconcileMetrics {
        let m = ReconcileMetrics::default();
        registry.register("ferry_drift_tags", "Tags that differ between a policy's source and destinations at the last reconciliation", m.drift.clone());
        registry.register(
            "ferry_reconcile_repairs",
            "Jobs the safety-net reconciliation enqueued to repair drift",
            m.repairs.clone(),
        );
        m
    }
}

/// What one pass over one policy found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyPass {
    pub policy: String,
    pub missing: usize,
    pub different: usize,
    pub extra: usize,
    /// Jobs enqueued (new) and collapsed into pending ones.
    pub enqueued: usize,
    pub collapsed: usize,
    /// Missing tags not enqueued: a gate held that source digest back recently (a worker
    /// remembered the decision for [`crate::replicate::gates::BLOCKED_MEMO`]).
    pub held_back: usize,
    /// Missing or different tags not enqueued: a push of the tag was dead-lettered recently (a
    /// worker remembered it for [`crate::store::queue::DEAD_LETTER_MEMO`]). Still drift.
    pub dead_lettered: usize,
}

/// Runs the safety net for the event-based policies of a config.
pub struct Reconciler {
    /// Replaced as a whole by [`Reconciler::reload`].
    policies: Current<Vec<Arc<PreparedPolicy>>>,
    queue: Arc<dyn JobQueue>,
    /// The per-policy lock that lets one process of the region run each pass.
    lock: RegionLock,
    metrics: ReconcileMetrics,
    /// This process's region: only policies that run here are reconciled here.
    region: Region,
}

impl Reconciler {
    /// Prepares every enabled `event_based` policy (no network I/O); each pass of a policy takes
    /// `lock` first.
    pub fn new(
        config: &Config,
        registries: &Registries,
        queue: Arc<dyn JobQueue>,
        lock: RegionLock,
        metrics: ReconcileMetrics,
    ) -> Result<Reconciler, SyncError> {
        Ok(Reconciler {
            policies: Current::new(event_policies(config, registries, &Region::single_site())?),
            queue,
            lock,
            metrics,
            region: Region::single_site(),
        })
    }

    /// Reconciles only the policies whose jobs run in `region` (README "Regions").
    pub fn in_region(
        mut self,
        region: Region,
        config: &Config,
        registries: &Registries,
    ) -> Result<Reconciler, SyncError> {
        self.region = region;
        self.reload(config, registries)?;
        Ok(self)
    }

    /// Reconciles `config`'s event-based policies from the next pass on (policies changed through
    /// the admin API); on error the old set stays.
    pub fn reload(&self, config: &Config, registries: &Registries) -> Result<(), SyncError> {
        self.policies
            .set(event_policies(config, registries, &self.region)?);
        Ok(())
    }

    /// One pass over one policy: diff, then enqueue push jobs for what is missing or different.
    pub async fn pass(&self, prepared: &PreparedPolicy) -> Result<PolicyPass, String> {
        let policy = &prepared.policy.name;
        let report = diff_policy(prepared).await.map_err(|e| e.to_string())?;
        let mut pass = PolicyPass {
            policy: policy.clone(),
            missing: report.missing.len(),
            different: report.different.len(),
            extra: report.extra.len(),
            ..Default::default()
        };
        // One job per source tag: a job covers every destination of the policy.
        let mut refs: Vec<(&str, &str, Option<&str>)> = report
            .missing
            .iter()
            .chain(report.different.iter())
            .map(|d| {
                (
                    d.repository.as_str(),
                    d.tag.as_str(),
                    d.source_digest.as_deref(),
                )
            })
            .collect();
        refs.sort_unstable();
        refs.dedup_by(|a, b| (a.0, a.1) == (b.0, b.1));
        // A tag a gate held back stays missing on purpose: it is not enqueued again while the
        // decision about its digest is remembered (its signature or scan has its own event).
        if prepared.policy.has_gates() {
            let mut kept = Vec::with_capacity(refs.len());
            for r in refs {
                let (repository, tag, digest) = r;
                let key = blocked_key(policy, repository, tag, digest.unwrap_or_default());
                if digest.is_some() && self.lock.is_held(&key).await.map_err(|e| e.to_string())? {
                    pass.held_back += 1;
                } else {
                    kept.push(r);
                }
            }
            refs = kept;
        }
        // A tag whose push was dead-lettered recently stays drift, but is not enqueued again:
        // every pass would add a dead letter for a failure no retry repairs.
        let mut kept = Vec::with_capacity(refs.len());
        for r in refs {
            let key = dead_letter_key(policy, r.0, r.1);
            if self.lock.is_held(&key).await.map_err(|e| e.to_string())? {
                pass.dead_lettered += 1;
            } else {
                kept.push(r);
            }
        }
        let refs = kept;
        self.metrics
            .drift
            .get_or_create(&PolicyLabel {
                policy: policy.clone(),
            })
            .set((pass.missing + pass.different + pass.extra - pass.held_back) as i64);
        for (repository, tag, _) in refs {
            let job = Job {
                // Lag is measured from when the drift was found; the real event time is unknown.
                event_time_ms: now_ms(),
                event_id: Some("reconcile".to_string()),
                trigger: StartedBy::Reconcile,
                source: prepared.job_source(),
                ..Job::new(policy, EventKind::Push, repository, tag)
            };
            match self.queue.enqueue(job).await.map_err(|e| e.to_string())? {
                EnqueueOutcome::Enqueued => pass.enqueued += 1,
                EnqueueOutcome::Collapsed => pass.collapsed += 1,
            }
        }
        self.metrics
            .repairs
            .get_or_create(&PolicyLabel {
                policy: policy.clone(),
            })
            .inc_by(pass.enqueued as u64);
        Ok(pass)
    }

    /// One pass over every policy (and direction) this process reconciles, without leases.
    pub async fn pass_all(&self) -> Vec<Result<PolicyPass, String>> {
        let mut out = Vec::new();
        for prepared in self.policies.get().iter() {
            out.push(self.pass(prepared).await);
        }
        out
    }

    /// One pass per policy this process reconciles, each taken by one process only (a lease for
    /// 90% of `interval`): what failed, by policy.
    pub async fn sweep(&self, interval: Duration) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        for prepared in self.policies.get().iter() {
            let policy = &prepared.policy.name;
            let lease_key = match prepared.job_source() {
                Some(from) => format!("reconcile/{policy}/from-{from}"),
                None => format!("reconcile/{policy}"),
            };
            let ttl = interval.mul_f64(0.9).max(Duration::from_secs(1));
            match self.lock.try_take(&lease_key, ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(policy = %policy, "reconciliation taken by another process");
                    continue;
                }
                Err(e) => {
                    failed.push((
                        policy.clone(),
                        format!("cannot take the reconciliation lease: {e}"),
                    ));
                    continue;
                }
            }
            match self.pass(prepared).await {
                Ok(p) if p.enqueued + p.collapsed > 0 || p.extra > 0 || p.dead_lettered > 0 => {
                    tracing::warn!(
                        policy = %p.policy, missing = p.missing, different = p.different, extra = p.extra,
                        enqueued = p.enqueued, dead_lettered = p.dead_lettered,
                        "reconciliation found drift; repair jobs enqueued (extra tags are only \
                         reported; tags whose push was dead-lettered within the hour wait for an \
                         event or a retry of their dead letter)"
                    )
                }
                Ok(p) => tracing::info!(policy = %p.policy, "reconciliation: no drift"),
                Err(e) => failed.push((policy.clone(), e)),
            }
        }
        failed
    }

    /// The safety net's loop, to run under [`crate::runtime::background::supervise`]: a sweep now and
    /// then every `interval`.
    pub fn every(self: &Arc<Self>, interval: Duration) -> SafetyNet {
        SafetyNet {
            reconciler: self.clone(),
            interval,
        }
    }
}

/// The safety net as a [`Routine`]: a sweep, then `interval`, whether the sweep failed or not (a
/// policy that failed is retried on the next sweep, the others are not repeated early).
pub struct SafetyNet {
    reconciler: Arc<Reconciler>,
    interval: Duration,
}

/// The policies a sweep could not reconcile.
#[derive(Debug)]
pub struct SweepFailed(Vec<(String, String)>);

impl std::fmt::Display for SweepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let failed: Vec<String> = self
            .0
            .iter()
            .map(|(p, e)| format!("policy {p}: {e}"))
            .collect();
        write!(
            f,
            "reconciliation failed ({}); retrying next interval",
            failed.join("; ")
        )
    }
}

impl Routine for SafetyNet {
    type Error = SweepFailed;

    fn name(&self) -> String {
        "safety-net".into()
    }

    async fn step(&mut self) -> Result<Next, SweepFailed> {
        let failed = self.reconciler.sweep(self.interval).await;
        if failed.is_empty() {
            Ok(Next::After(self.interval))
        } else {
            Err(SweepFailed(failed))
        }
    }

    fn retry_in(&self, _failures: u32, _error: &SweepFailed) -> Duration {
        self.interval
    }
}

/// The enabled event-based policies of `config`, prepared (no network I/O).
/// The event-based policies this region reconciles; a bidirectional policy once per direction
/// (each in the region that writes that side).
fn event_policies(
    config: &Config,
    registries: &Registries,
    region: &Region,
) -> Result<Vec<Arc<PreparedPolicy>>, SyncError> {
    config
        .policies
        .iter()
        .filter(|p| p.enabled && p.trigger.kind == TriggerKind::EventBased)
        .flat_map(|p| std::iter::once(p.clone()).chain(p.reversed()))
        .filter(|p| crate::ingest::matcher::runs_here(config, p, region))
        .map(|p| PreparedPolicy::new(&p, registries).map(Arc::new))
        .collect()
}

impl crate::catalog::Reload for Reconciler {
    fn what(&self) -> &'static str {
        "safety net"
    }

    fn reload(&self, config: &Config, registries: &Registries) -> Result<(), String> {
        Reconciler::reload(self, config, registries).map_err(|e| e.to_string())
    }
}
