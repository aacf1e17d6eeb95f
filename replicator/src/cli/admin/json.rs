//! The `-o json` document of each proto message: the message's fields under the proto's names,
//! times as Unix milliseconds, enums as lowercase names without prefix, and the policy or registry
//! document embedded as JSON (as a string when it is not JSON).
//!
//! Invariant: keys are printed sorted (serde_json's map), whatever order they are written in.
use ferry_proto::v1;
use serde_json::{json, Value};

use super::enums::lower;

pub fn list<T>(items: &[T], f: fn(&T) -> Value) -> Vec<Value> {
    items.iter().map(f).collect()
}

/// A policy or registry document: parsed, or as the string it is when it is not JSON.
pub fn document(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

pub fn policy_json(p: &v1::Policy) -> Value {
    json!({
        "name": p.name,
        "source": lower(p.source, v1::Source::as_str_name),
        "enabled": p.enabled,
        "paused": p.paused,
        "mode": p.mode,
        "trigger": p.trigger,
        "src_registry": p.src_registry,
        "dest_registries": p.dest_registries,
        "description": p.description,
        "cron": p.cron,
        "json": document(&p.json),
    })
}

pub fn registry_json(r: &v1::Registry) -> Value {
    json!({
        "name": r.name,
        "url": r.url,
        "insecure": r.insecure,
        "credential_type": r.credential_type,
        "credential_ref": r.credential_ref,
        "source": lower(r.source, v1::Source::as_str_name),
        "poll_interval_seconds": r.poll_interval_seconds,
        "json": document(&r.json),
    })
}

pub fn ping_json(name: &str, p: &v1::PingRegistryResponse) -> Value {
    json!({
        "name": name,
        "reachable": p.reachable,
        "authenticated": p.authenticated,
        "api_version": p.api_version,
        "auth_scheme": p.auth_scheme,
        "referrers_api": p.referrers_api,
        "chunked_upload": p.chunked_upload,
        "latency_ms": p.latency_ms,
        "error": p.error,
        "notes": p.notes,
    })
}

pub fn origin_json(o: &v1::Origin) -> Value {
    json!({
        "event_id": o.event_id,
        "event_time_ms": o.event_time_ms,
        "kind": lower(o.kind, v1::EventKind::as_str_name),
        "repository": o.repository,
        "reference": o.reference,
        "digest": o.digest,
    })
}

pub fn counts_json(c: &v1::TaskCounts) -> Value {
    json!({
        "pending": c.pending,
        "running": c.running,
        "succeeded": c.succeeded,
        "failed": c.failed,
        "stopped": c.stopped,
    })
}

pub fn execution_json(e: &v1::Execution) -> Value {
    json!({
        "id": e.id,
        "policy": e.policy,
        "trigger": lower(e.trigger, v1::Trigger::as_str_name),
        "state": lower(e.state, v1::ExecutionState::as_str_name),
        "started_at_ms": e.started_at_ms,
        "ended_at_ms": e.ended_at_ms,
        "attempts": e.attempts,
        "next_try_at_ms": e.next_try_at_ms,
        "error": e.error,
        "origin": e.origin.as_ref().map(origin_json),
        "worker": e.worker,
        "counts": e.counts.as_ref().map(counts_json),
        "dry_run": e.dry_run,
    })
}

pub fn task_json(t: &v1::Task) -> Value {
    json!({
        "id": t.id,
        "execution_id": t.execution_id,
        "policy": t.policy,
        "kind": lower(t.kind, v1::EventKind::as_str_name),
        "repository": t.repository,
        "reference": t.reference,
        "destination": t.destination,
        "state": lower(t.state, v1::TaskState::as_str_name),
        "attempts": t.attempts,
        "digest": t.digest,
        "outcome": t.outcome,
        "blobs_copied": t.blobs_copied,
        "blobs_mounted": t.blobs_mounted,
        "blobs_skipped": t.blobs_skipped,
        "bytes_done": t.bytes_done,
        "bytes_total": t.bytes_total,
        "started_at_ms": t.started_at_ms,
        "ended_at_ms": t.ended_at_ms,
        "error": t.error,
        "lag_ms": t.lag_ms,
    })
}

pub fn progress_json(p: &v1::ExecutionProgress) -> Value {
    json!({
        "execution": p.execution.as_ref().map(execution_json),
        "tasks": list(&p.tasks, task_json),
    })
}

pub fn drift_json(d: &v1::DriftEntry) -> Value {
    json!({
        "kind": lower(d.kind, v1::DriftKind::as_str_name),
        "destination": d.destination,
        "repository": d.repository,
        "destination_repository": d.destination_repository,
        "tag": d.tag,
        "source_digest": d.source_digest,
        "destination_digest": d.destination_digest,
    })
}

pub fn queue_json(q: &v1::QueueStats) -> Value {
    json!({
        "depth": q.depth,
        "delayed": q.delayed,
        "in_flight": q.in_flight,
        "dead_letters": q.dead_letters,
        "oldest_age_ms": q.oldest_age_ms,
    })
}

pub fn job_json(j: &v1::Job) -> Value {
    json!({
        "id": j.id,
        "policy": j.policy,
        "kind": lower(j.kind, v1::EventKind::as_str_name),
        "repository": j.repository,
        "reference": j.reference,
        "digest": j.digest,
        "attempt": j.attempt,
        "last_error": j.last_error,
        "event_time_ms": j.event_time_ms,
        "enqueued_at_ms": j.enqueued_at_ms,
    })
}

pub fn worker_json(w: &v1::WorkerInfo) -> Value {
    json!({
        "id": w.id,
        "host": w.host,
        "region": w.region,
        "pid": w.pid,
        "version": w.version,
        "started_at_ms": w.started_at_ms,
        "last_seen_ms": w.last_seen_ms,
        "concurrency": w.concurrency,
        "in_flight": w.in_flight,
        "jobs_succeeded": w.jobs_succeeded,
        "jobs_failed": w.jobs_failed,
        "policies": w.policies,
    })
}
