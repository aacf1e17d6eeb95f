//! Library types → `ferry.v1` messages. One function per message; no logic beyond mapping.
use ferry_proto::v1 as pb;

use crate::config::{Credential, RegistryConfig};
use crate::event::EventKind;
use crate::policy::Policy;
use crate::replicate::drift::Drift;
use crate::store::history::{Execution, ExecutionState, Task, TaskState, WorkerInfo};
use crate::store::queue::{Job, QueueStats};
use crate::store::StartedBy;

/// A serde enum's JSON name (`push`, `event_based`).
fn name_of<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn event_kind(k: EventKind) -> i32 {
    match k {
        EventKind::Push => pb::EventKind::Push as i32,
        EventKind::Delete => pb::EventKind::Delete as i32,
    }
}

pub fn policy(p: &Policy) -> pb::Policy {
    pb::Policy {
        name: p.name.clone(),
        json: serde_json::to_string_pretty(p).unwrap_or_default(),
        source: pb::Source::Config as i32,
        enabled: p.enabled,
        paused: false,
        mode: name_of(&p.mode),
        trigger: name_of(&p.trigger.kind),
        src_registry: p.src_registry.name.clone(),
        dest_registries: p.destinations().map(|d| d.name.clone()).collect(),
        description: p.description.clone(),
        cron: p
            .trigger
            .trigger_settings
            .as_ref()
            .map(|s| s.cron.clone())
            .unwrap_or_default(),
    }
}

pub fn registry(r: &RegistryConfig) -> pb::Registry {
    let (credential_type, credential_ref) = match &r.credential {
        None => ("none".to_string(), String::new()),
        Some(Credential::Basic {
            password_env,
            password_file,
            ..
        }) => (
            "basic".to_string(),
            password_env
                .as_ref()
                .map(|e| format!("env:{e}"))
                .or_else(|| {
                    password_file
                        .as_ref()
                        .map(|f| format!("file:{}", f.display()))
                })
                .unwrap_or_default(),
        ),
        Some(Credential::AuthFile { path }) => {
            ("auth_file".to_string(), format!("file:{}", path.display()))
        }
    };
    pb::Registry {
        name: r.name.clone(),
        url: r.url.clone(),
        insecure: r.insecure,
        credential_type,
        credential_ref,
        source: pb::Source::Config as i32,
        // The config entry holds secrets by reference only, so it can be shown as is.
        json: serde_json::to_string_pretty(r).unwrap_or_default(),
        poll_interval_seconds: r.poll_interval_seconds.unwrap_or(0),
    }
}

pub fn trigger(t: StartedBy) -> i32 {
    (match t {
        StartedBy::EventBased => pb::Trigger::EventBased,
        StartedBy::Manual => pb::Trigger::Manual,
        StartedBy::Scheduled => pb::Trigger::Scheduled,
        StartedBy::Reconcile => pb::Trigger::Reconcile,
    }) as i32
}

pub fn execution_state(s: ExecutionState) -> i32 {
    (match s {
        ExecutionState::Queued => pb::ExecutionState::Queued,
        ExecutionState::Running => pb::ExecutionState::Running,
        ExecutionState::Retrying => pb::ExecutionState::Retrying,
        ExecutionState::Succeeded => pb::ExecutionState::Succeeded,
        ExecutionState::Failed => pb::ExecutionState::Failed,
        ExecutionState::Stopped => pb::ExecutionState::Stopped,
    }) as i32
}

pub fn task_state(s: TaskState) -> i32 {
    (match s {
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Stopped => pb::TaskState::Stopped,
    }) as i32
}

pub fn execution(e: &Execution) -> pb::Execution {
    let count = |s| e.counts.get(&s).copied().unwrap_or(0);
    pb::Execution {
        id: e.id.clone(),
        policy: e.policy.clone(),
        trigger: trigger(e.trigger),
        state: execution_state(e.state),
        started_at_ms: e.started_at_ms,
        ended_at_ms: e.ended_at_ms.unwrap_or(0),
        attempts: e.attempts,
        next_try_at_ms: e.next_try_at_ms.unwrap_or(0),
        error: e.error.clone().unwrap_or_default(),
        origin: e.origin.as_ref().map(|o| pb::Origin {
            event_id: o.event_id.clone().unwrap_or_default(),
            event_time_ms: o.event_time_ms,
            kind: event_kind(o.kind),
            repository: o.repository.clone(),
            reference: o.reference.clone(),
            digest: o.digest.clone().unwrap_or_default(),
        }),
        worker: e.worker.clone().unwrap_or_default(),
        counts: Some(pb::TaskCounts {
            pending: count(TaskState::Pending),
            running: count(TaskState::Running),
            succeeded: count(TaskState::Succeeded),
            failed: count(TaskState::Failed),
            stopped: count(TaskState::Stopped),
        }),
        dry_run: e.dry_run,
    }
}

pub fn task(t: &Task) -> pb::Task {
    pb::Task {
        id: t.id.clone(),
        execution_id: t.execution_id.clone(),
        policy: t.policy.clone(),
        kind: event_kind(t.kind),
        repository: t.repository.clone(),
        reference: t.reference.clone(),
        destination: t.destination.clone(),
        state: task_state(t.state),
        attempts: t.attempts,
        digest: t.digest.clone().unwrap_or_default(),
        outcome: t.outcome.clone().unwrap_or_default(),
        blobs_copied: t.blobs_copied,
        blobs_mounted: t.blobs_mounted,
        blobs_skipped: t.blobs_skipped,
        bytes_done: t.bytes,
        bytes_total: t.bytes_total,
        started_at_ms: t.started_at_ms,
        ended_at_ms: t.ended_at_ms.unwrap_or(0),
        error: t.error.clone().unwrap_or_default(),
        lag_ms: t.lag_ms.unwrap_or(0),
    }
}

pub fn drift(kind: pb::DriftKind, d: &Drift) -> pb::DriftEntry {
    pb::DriftEntry {
        kind: kind as i32,
        destination: d.destination.clone(),
        repository: d.repository.clone(),
        destination_repository: d.destination_repository.clone(),
        tag: d.tag.clone(),
        source_digest: d.source_digest.clone().unwrap_or_default(),
        destination_digest: d.destination_digest.clone().unwrap_or_default(),
    }
}

pub fn queue_stats(s: &QueueStats) -> pb::QueueStats {
    pb::QueueStats {
        depth: s.depth,
        delayed: s.delayed,
        in_flight: s.in_flight,
        dead_letters: s.dead_letters,
        oldest_age_ms: s.oldest_age_ms,
    }
}

pub fn job(j: &Job) -> pb::Job {
    pb::Job {
        id: j.id.clone(),
        policy: j.policy.clone(),
        kind: event_kind(j.kind),
        repository: j.repository.clone(),
        reference: j.reference.clone(),
        digest: j.digest.clone().unwrap_or_default(),
        attempt: j.attempt,
        last_error: j.last_error.clone().unwrap_or_default(),
        event_time_ms: j.event_time_ms,
        enqueued_at_ms: j.enqueued_at_ms,
    }
}

pub fn worker(w: &WorkerInfo) -> pb::WorkerInfo {
    pb::WorkerInfo {
        id: w.id.clone(),
        host: w.host.clone(),
        region: w.region.clone(),
        pid: w.pid,
        version: w.version.clone(),
        started_at_ms: w.started_at_ms,
        last_seen_ms: w.last_seen_ms,
        concurrency: w.concurrency,
        in_flight: w.in_flight,
        jobs_succeeded: w.jobs_succeeded,
        jobs_failed: w.jobs_failed,
        policies: w.policies.clone(),
    }
}
