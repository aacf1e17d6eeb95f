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

#[cfg(test)]
mod tests {
    use super::*;

    fn execution() -> v1::Execution {
        v1::Execution {
            id: "e1".into(),
            policy: "eu-to-us".into(),
            trigger: v1::Trigger::EventBased.into(),
            state: v1::ExecutionState::Succeeded.into(),
            started_at_ms: 1_714_566_896_123,
            ended_at_ms: 1_714_566_900_000,
            attempts: 2,
            next_try_at_ms: 0,
            error: "".into(),
            origin: Some(v1::Origin {
                event_id: "ev1".into(),
                event_time_ms: 1_714_566_890_000,
                kind: v1::EventKind::Push.into(),
                repository: "team/app".into(),
                reference: "v1".into(),
                digest: "sha256:abc".into(),
            }),
            worker: "w1".into(),
            counts: Some(v1::TaskCounts {
                pending: 1,
                running: 2,
                succeeded: 3,
                failed: 4,
                stopped: 5,
            }),
            dry_run: true,
        }
    }

    fn task() -> v1::Task {
        v1::Task {
            id: "t1".into(),
            execution_id: "e1".into(),
            policy: "eu-to-us".into(),
            kind: v1::EventKind::Delete.into(),
            repository: "team/app".into(),
            reference: "sha256:def".into(),
            destination: "us".into(),
            state: 77,
            attempts: 1,
            digest: "sha256:def".into(),
            outcome: "copied".into(),
            blobs_copied: 3,
            blobs_mounted: 1,
            blobs_skipped: 2,
            bytes_done: u64::MAX,
            bytes_total: 9,
            started_at_ms: -5,
            ended_at_ms: i64::MAX,
            error: "boom\nline".into(),
            lag_ms: 42,
        }
    }

    /// One of every document the CLI prints, every field set, some enums unknown to the client.
    fn documents() -> Vec<Value> {
        let p = v1::Policy {
            name: "eu-to-us".into(),
            json: r#"{"name":"eu-to-us","filters":[{"type":"name","value":"a/**"}]}"#.into(),
            source: v1::Source::Api.into(),
            enabled: true,
            paused: false,
            mode: "push".into(),
            trigger: "event_based".into(),
            src_registry: "eu".into(),
            dest_registries: vec!["us".into(), "ap".into()],
            description: "d".into(),
            cron: "".into(),
        };
        let r = v1::Registry {
            name: "eu".into(),
            url: "https://eu".into(),
            insecure: true,
            credential_type: "basic".into(),
            credential_ref: "env X".into(),
            source: 9,
            json: "not json {".into(),
            poll_interval_seconds: 30,
        };
        let ping = v1::PingRegistryResponse {
            reachable: true,
            authenticated: false,
            api_version: "registry/2.0".into(),
            auth_scheme: "bearer".into(),
            referrers_api: true,
            latency_ms: 12,
            error: "e".into(),
            chunked_upload: true,
            notes: vec!["n1".into()],
        };
        let mut bare = execution();
        bare.origin = None;
        bare.counts = None;
        bare.trigger = 0;
        let d = v1::DriftEntry {
            kind: v1::DriftKind::Missing.into(),
            destination: "us".into(),
            repository: "a".into(),
            destination_repository: "b/a".into(),
            tag: "v1".into(),
            source_digest: "sha256:1".into(),
            destination_digest: "".into(),
        };
        let q = v1::QueueStats {
            depth: 1,
            delayed: 2,
            in_flight: 3,
            dead_letters: 4,
            oldest_age_ms: 5,
        };
        let j = v1::Job {
            id: "j".into(),
            policy: "p".into(),
            kind: v1::EventKind::Push.into(),
            repository: "r".into(),
            reference: "t".into(),
            digest: "sha256:2".into(),
            attempt: 3,
            last_error: "x".into(),
            event_time_ms: 6,
            enqueued_at_ms: 7,
        };
        let w = v1::WorkerInfo {
            id: "w".into(),
            host: "h".into(),
            region: "eu".into(),
            pid: 4,
            version: "0.1".into(),
            started_at_ms: 8,
            last_seen_ms: 9,
            concurrency: 10,
            in_flight: 11,
            jobs_succeeded: 12,
            jobs_failed: 13,
            policies: vec!["p".into()],
        };
        let progress = v1::ExecutionProgress {
            execution: Some(execution()),
            tasks: vec![task()],
        };
        vec![
            policy_json(&p),
            registry_json(&r),
            ping_json("eu", &ping),
            execution_json(&bare),
            progress_json(&progress),
            drift_json(&d),
            queue_json(&q),
            job_json(&j),
            worker_json(&w),
        ]
    }

    /// `json.golden` holds the documents as `-o json` printed them when they were written by hand
    /// (before serde on the prost types): field names, key order, enum names, embedded documents.
    #[test]
    fn every_document_prints_byte_for_byte_as_the_golden_file() {
        let printed: String = documents()
            .iter()
            .map(|v| format!("{}\n=====\n", serde_json::to_string_pretty(v).unwrap()))
            .collect();
        assert_eq!(printed, include_str!("json.golden"));
    }
}
