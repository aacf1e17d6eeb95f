//! The `-o json` documents. Every answer of the admin API prints as its proto message through
//! serde (`ferry_proto::json`: the proto's field names, times as Unix milliseconds, enums as
//! lowercase names without prefix, policy and registry documents embedded as JSON); this module
//! holds the one document that adds to a message, and the golden test of them all.
//!
//! Invariant: `-o json` prints what it printed when these documents were written by hand:
//! `json.golden` pins it byte for byte.
use ferry_proto::v1;
use serde::Serialize;

/// `registries ping NAME -o json`: the answer, with the name of the registry it is about.
#[derive(Serialize)]
pub struct Ping<'a> {
    name: &'a str,
    #[serde(flatten)]
    answer: &'a v1::PingRegistryResponse,
}

impl<'a> Ping<'a> {
    pub fn new(name: &'a str, answer: &'a v1::PingRegistryResponse) -> Ping<'a> {
        Ping { name, answer }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    use super::super::output::to_json;

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

    fn policy() -> v1::Policy {
        v1::Policy {
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
        }
    }

    fn registry() -> v1::Registry {
        v1::Registry {
            name: "eu".into(),
            url: "https://eu".into(),
            insecure: true,
            credential_type: "basic".into(),
            credential_ref: "env X".into(),
            source: 9,
            json: "not json {".into(),
            poll_interval_seconds: 30,
        }
    }

    fn ping() -> v1::PingRegistryResponse {
        v1::PingRegistryResponse {
            reachable: true,
            authenticated: false,
            api_version: "registry/2.0".into(),
            auth_scheme: "bearer".into(),
            referrers_api: true,
            latency_ms: 12,
            error: "e".into(),
            chunked_upload: true,
            notes: vec!["n1".into()],
        }
    }

    fn drift_entry() -> v1::DriftEntry {
        v1::DriftEntry {
            kind: v1::DriftKind::Missing.into(),
            destination: "us".into(),
            repository: "a".into(),
            destination_repository: "b/a".into(),
            tag: "v1".into(),
            source_digest: "sha256:1".into(),
            destination_digest: "".into(),
        }
    }

    fn queue() -> v1::QueueStats {
        v1::QueueStats {
            depth: 1,
            delayed: 2,
            in_flight: 3,
            dead_letters: 4,
            oldest_age_ms: 5,
        }
    }

    fn job() -> v1::Job {
        v1::Job {
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
        }
    }

    fn worker() -> v1::WorkerInfo {
        v1::WorkerInfo {
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
        }
    }

    /// One of every document the CLI prints, every field set, some enums unknown to the client.
    fn documents() -> Vec<Value> {
        let p = policy();
        let r = registry();
        let ping = ping();
        let mut bare = execution();
        bare.origin = None;
        bare.counts = None;
        bare.trigger = 0;
        let d = drift_entry();
        let q = queue();
        let j = job();
        let w = worker();
        let progress = v1::ExecutionProgress {
            execution: Some(execution()),
            tasks: vec![task()],
        };
        vec![
            to_json(&p),
            to_json(&r),
            to_json(&Ping::new("eu", &ping)),
            to_json(&bare),
            to_json(&progress),
            to_json(&d),
            to_json(&q),
            to_json(&j),
            to_json(&w),
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

    /// The list answers print as `{"<field>": [documents…]}` under the proto's field names, as
    /// they did by hand.
    #[test]
    fn a_list_answer_prints_its_documents_under_the_proto_field_name() {
        let executions = v1::ListExecutionsResponse {
            executions: vec![execution()],
            next_before_ms: 5,
        };
        let expected = serde_json::json!({
            "executions": [to_json(&execution())],
            "next_before_ms": 5,
        });
        assert_eq!(to_json(&executions), expected);
        let tasks = v1::ListTasksResponse {
            tasks: vec![task()],
        };
        assert_eq!(
            to_json(&tasks),
            serde_json::json!({"tasks": [to_json(&task())]})
        );
        let purged = v1::PurgeDeadLettersResponse { purged: 3 };
        assert_eq!(to_json(&purged), serde_json::json!({"purged": 3}));
        let empty = [
            to_json(&v1::ListPoliciesResponse::default()),
            to_json(&v1::ListRegistriesResponse::default()),
            to_json(&v1::ListDeadLettersResponse::default()),
            to_json(&v1::ListWorkersResponse::default()),
        ];
        let keys =
            ["policies", "registries", "jobs", "workers"].map(|k| serde_json::json!({k: []}));
        assert_eq!(empty, keys);
    }
}
