//! The gRPC admin API served by real processes sharing one real redis-server: `ferry serve` runs
//! the webhooks and a worker, a separate `ferry worker --admin-listen` answers the API — and sees
//! everything the other process recorded (one region, one shared state). Real registries, real
//! registry notifications, skopeo pushes. Each behaviour is its own test over its own
//! [`SharedRegion`].
mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use ferry_proto::v1 as pb;
use ferry_testkit::{RedisServer, Registry};
use serde_json::json;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const WEBHOOK_TOKEN: &str = "admin-test-webhook";
const ADMIN_TOKEN: &str = "admin-test-s3cret";

/// Sends `authorization: Bearer <token>`.
#[derive(Clone, Copy)]
struct Auth(&'static str);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.0).parse().unwrap(),
        );
        Ok(req)
    }
}

type Authed = tonic::service::interceptor::InterceptedService<Channel, Auth>;

fn with_token(token: &'static str) -> Auth {
    Auth(token)
}

async fn channel(addr: &str) -> Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    // Generous: several processes start at once on a loaded machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(c) = endpoint.connect().await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("admin API at {addr} did not come up within 30 s");
}

struct Clients {
    policies: pb::policies_client::PoliciesClient<Authed>,
    registries: pb::registries_client::RegistriesClient<Authed>,
    executions: pb::executions_client::ExecutionsClient<Authed>,
    drift: pb::drift_client::DriftClient<Authed>,
    operations: pb::operations_client::OperationsClient<Authed>,
}

fn clients(ch: &Channel, token: &'static str) -> Clients {
    Clients {
        policies: pb::policies_client::PoliciesClient::with_interceptor(
            ch.clone(),
            with_token(token),
        ),
        registries: pb::registries_client::RegistriesClient::with_interceptor(
            ch.clone(),
            with_token(token),
        ),
        executions: pb::executions_client::ExecutionsClient::with_interceptor(
            ch.clone(),
            with_token(token),
        ),
        drift: pb::drift_client::DriftClient::with_interceptor(ch.clone(), with_token(token)),
        operations: pb::operations_client::OperationsClient::with_interceptor(
            ch.clone(),
            with_token(token),
        ),
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> (Code, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

async fn drift_entries(c: &mut Clients, policy: &str) -> Vec<pb::DriftEntry> {
    let mut stream = c
        .drift
        .diff(pb::DiffRequest {
            policy: policy.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        out.push(e);
    }
    out
}

/// `ferry serve` with its admin API (admin token [`ADMIN_TOKEN`]) on a real redis-server, taking
/// the source registry's notifications for policy `test` (`src` → `dst`, with `policy`'s fields).
struct Served {
    redis: RedisServer,
    pair: RegistryPair,
    serve: Serve,
    /// The serve process's admin API address.
    admin: String,
}

impl Served {
    async fn start(policy: serde_json::Value) -> Served {
        let redis = RedisServer::start(true).await.unwrap();
        let listen = free_local_addr();
        let pair = registry_pair(Some(&listen), WEBHOOK_TOKEN, policy).await;
        let admin = free_local_addr();
        let serve = Serve::start_with(
            &pair.config,
            &listen,
            WEBHOOK_TOKEN,
            &["--redis", &redis.url(), "--admin-listen", &admin],
            &[("FERRY_ADMIN_TOKEN", ADMIN_TOKEN)],
            pair.dir.path().join("serve.log"),
        )
        .await;
        Served {
            redis,
            pair,
            serve,
            admin,
        }
    }
}

/// One region of two processes sharing one real redis-server: `ferry serve` takes the source
/// registry's notifications and runs a worker; a separate `ferry worker --admin-listen` (consumer
/// `second-worker`, region `eu-west`) answers the admin API the tests call. What that API reports
/// about the serve process's work can only have come through the shared state. Policy `test`
/// replicates `src` → `dst` on events, deletions included.
///
/// Every test starts its own (processes first in the field order, so they stop before the servers
/// they use).
struct SharedRegion {
    _serve: Serve,
    _worker: tokio::process::Child,
    worker_log: PathBuf,
    redis: RedisServer,
    src: Registry,
    dst: Registry,
    dir: tempfile::TempDir,
    /// The worker's admin API, without credentials.
    ch: Channel,
    /// The worker's admin API with the admin token.
    c: Clients,
}

impl SharedRegion {
    async fn start() -> SharedRegion {
        let Served {
            redis,
            pair:
                RegistryPair {
                    src,
                    dst,
                    dir,
                    config: cfg,
                },
            serve,
            admin: _,
        } = Served::start(json!({"trigger": {"type": "event_based"}, "replicate_deletion": true}))
            .await;
        // A second process of the region: a worker whose admin API the tests talk to.
        let worker_admin = free_local_addr();
        let worker_log = dir.path().join("worker.log");
        let worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                "worker",
                "--config",
                cfg.to_str().unwrap(),
                "--redis",
                &redis.url(),
                "--admin-listen",
                &worker_admin,
                "--consumer",
                "second-worker",
                "--region",
                "eu-west",
            ])
            .env("FERRY_ADMIN_TOKEN", ADMIN_TOKEN)
            .stderr(std::fs::File::create(&worker_log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let ch = channel(&worker_admin).await;
        let c = clients(&ch, ADMIN_TOKEN);
        SharedRegion {
            _serve: serve,
            _worker: worker,
            worker_log,
            redis,
            src,
            dst,
            dir,
            ch,
            c,
        }
    }

    /// Purges the region's dead letters through the API; returns how many went.
    async fn purge_dead_letters(&mut self) -> u64 {
        self.c
            .operations
            .purge_dead_letters(pb::PurgeDeadLettersRequest {})
            .await
            .unwrap()
            .into_inner()
            .purged
    }

    /// What the second worker logged so far.
    fn worker_log(&self) -> String {
        std::fs::read_to_string(&self.worker_log).unwrap_or_default()
    }

    /// Pushes `team/app:v1` (one 256 KiB layer) to the source with skopeo and waits until the
    /// worker's API lists a succeeded execution for it (30 s at most); returns the image's digest
    /// and that execution.
    async fn replicate_a_push(&mut self) -> (String, pb::Execution) {
        let digest = push_image(self.dir.path(), 77, &self.src.host(), "team/app:v1").await;
        let seen = eventually(Duration::from_secs(30), || {
            let mut ex = self.c.executions.clone();
            async move {
                ex.list_executions(pb::ListExecutionsRequest {
                    state: pb::ExecutionState::Succeeded as i32,
                    ..Default::default()
                })
                .await
                .is_ok_and(|r| {
                    r.into_inner()
                        .executions
                        .iter()
                        .any(|e| e.origin.as_ref().is_some_and(|o| o.reference == "v1"))
                })
            }
        })
        .await;
        assert!(
            seen,
            "no succeeded execution for team/app:v1; worker log:\n{}",
            self.worker_log()
        );
        let execs = self
            .c
            .executions
            .list_executions(pb::ListExecutionsRequest {
                policy: "test".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let e = execs
            .executions
            .iter()
            .find(|e| {
                e.state == pb::ExecutionState::Succeeded as i32
                    && e.origin.as_ref().is_some_and(|o| o.reference == "v1")
            })
            .unwrap_or_else(|| panic!("policy `test` lists no succeeded v1 run: {execs:?}"))
            .clone();
        (digest, e)
    }

    /// The dead-lettered jobs (10 at most).
    async fn dead_letters(&self) -> Vec<pb::Job> {
        let mut ops = self.c.operations.clone();
        ops.list_dead_letters(pb::ListDeadLettersRequest { limit: 10 })
            .await
            .unwrap()
            .into_inner()
            .jobs
    }

    /// Enqueues, behind the API, a job of policy `removed` (not in the config, so no worker can
    /// run it) and waits until it is the one dead letter (30 s at most); returns it.
    async fn dead_letter_a_job_of_a_removed_policy(&self) -> pb::Job {
        enqueue_behind_the_api(&self.redis, "removed", "team/app", "v9").await;
        assert!(
            eventually(Duration::from_secs(30), || async {
                self.dead_letters().await.len() == 1
            })
            .await,
            "the job was not dead-lettered; worker log:\n{}",
            self.worker_log()
        );
        self.dead_letters().await.remove(0)
    }

    /// The execution `id`, `None` when the API does not know it.
    async fn execution(&self, id: &str) -> Option<pb::Execution> {
        let mut ex = self.c.executions.clone();
        ex.get_execution(pb::GetExecutionRequest { id: id.into() })
            .await
            .map(|e| e.into_inner())
            .ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_without_a_token() {
    let r = SharedRegion::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(r.ch.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ferry.v1.Executions".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let services = reflection_services(r.ch.clone()).await;
    for s in [
        "ferry.v1.Policies",
        "ferry.v1.Registries",
        "ferry.v1.Executions",
        "ferry.v1.Drift",
        "ferry.v1.Operations",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|x| x == s),
            "{s} missing from reflection: {services:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_the_token_or_with_a_wrong_one_is_unauthenticated() {
    let mut r = SharedRegion::start().await;
    let mut anonymous = pb::policies_client::PoliciesClient::new(r.ch.clone());
    assert_eq!(
        code(anonymous.list_policies(pb::ListPoliciesRequest {}).await).0,
        Code::Unauthenticated
    );
    let mut wrong = clients(&r.ch, "not-the-token");
    assert_eq!(
        code(
            wrong
                .policies
                .list_policies(pb::ListPoliciesRequest {})
                .await
        )
        .0,
        Code::Unauthenticated
    );
    // The same call with the token is served: the refusals above were about the token.
    r.c.policies
        .list_policies(pb::ListPoliciesRequest {})
        .await
        .expect("served with the admin token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_policy_is_listed_with_its_trigger_mode_source_and_destination() {
    let mut r = SharedRegion::start().await;
    let policies =
        r.c.policies
            .list_policies(pb::ListPoliciesRequest {})
            .await
            .unwrap()
            .into_inner()
            .policies;
    assert_eq!(policies.len(), 1);
    let p = &policies[0];
    assert_eq!(
        (p.name.as_str(), p.trigger.as_str(), p.mode.as_str()),
        ("test", "event_based", "push")
    );
    assert_eq!(p.source, pb::Source::Config as i32);
    assert_eq!(p.dest_registries, ["dst"]);
    let parsed: serde_json::Value = serde_json::from_str(&p.json).unwrap();
    assert_eq!(parsed["replicate_deletion"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_policy_is_not_found_and_the_answer_names_the_known_ones() {
    let mut r = SharedRegion::start().await;
    let (nf, msg) = code(
        r.c.policies
            .get_policy(pb::GetPolicyRequest {
                name: "nope".into(),
            })
            .await,
    );
    assert_eq!(nf, Code::NotFound);
    assert!(msg.contains("known: test"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_registries_are_listed_in_config_order() {
    let mut r = SharedRegion::start().await;
    let regs =
        r.c.registries
            .list_registries(pb::ListRegistriesRequest {})
            .await
            .unwrap()
            .into_inner()
            .registries;
    let names: Vec<_> = regs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["src", "dst"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_reports_reachability_authentication_api_version_and_upload_features() {
    let mut r = SharedRegion::start().await;
    let ping =
        r.c.registries
            .ping_registry(pb::PingRegistryRequest {
                name: "src".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert!(ping.reachable && ping.authenticated, "{ping:?}");
    assert_eq!(ping.api_version, "registry/2.0");
    // distribution 2.8: chunked uploads yes, OCI 1.1 referrers API no.
    assert!(ping.chunked_upload && !ping.referrers_api, "{ping:?}");
    assert!(ping.notes.is_empty(), "{ping:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinging_an_unknown_registry_is_not_found() {
    let mut r = SharedRegion::start().await;
    assert_eq!(
        code(
            r.c.registries
                .ping_registry(pb::PingRegistryRequest {
                    name: "nope".into(),
                    ..Default::default()
                })
                .await
        )
        .0,
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_probe_repository_stepping_out_of_the_repository_grammar_is_an_invalid_argument() {
    let mut r = SharedRegion::start().await;
    // The probe repository follows the repository grammar: no `..` stepping out of `/v2/<name>/`.
    let (bad, msg) = code(
        r.c.registries
            .ping_registry(pb::PingRegistryRequest {
                name: "src".into(),
                repository: "apps/../../v2/_catalog".into(),
            })
            .await,
    );
    assert_eq!(bad, Code::InvalidArgument, "{msg}");
    assert!(msg.starts_with("repository: "), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_replicated_by_one_instance_is_a_succeeded_execution_on_another() {
    let mut r = SharedRegion::start().await;
    // The serve process takes the notification and copies; the worker's API reports it.
    let (_, e) = r.replicate_a_push().await;
    assert_eq!(e.trigger, pb::Trigger::EventBased as i32);
    assert!(
        e.ended_at_ms >= e.started_at_ms && e.started_at_ms > 0,
        "{e:?}"
    );
    let got =
        r.c.executions
            .get_execution(pb::GetExecutionRequest { id: e.id.clone() })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(got.id, e.id);
    let failed =
        r.c.executions
            .list_executions(pb::ListExecutionsRequest {
                state: pb::ExecutionState::Failed as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert!(failed.executions.is_empty(), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_execution_of_a_replicated_push_lists_its_copied_task_with_digest_bytes_and_lag() {
    let mut r = SharedRegion::start().await;
    let (digest, e) = r.replicate_a_push().await;
    let tasks = tasks_of(&mut r.c, &e.id).await;
    let copied: Vec<_> = tasks.iter().filter(|t| t.outcome == "copied").collect();
    assert_eq!(copied.len(), 1, "{tasks:?}");
    assert_eq!(copied[0].digest, digest);
    assert!(
        copied[0].bytes_done >= 256 * 1024 && copied[0].lag_ms > 0,
        "{:?}",
        copied[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_execution_is_not_found() {
    let mut r = SharedRegion::start().await;
    assert_eq!(
        code(
            r.c.executions
                .get_execution(pb::GetExecutionRequest { id: "nope".into() })
                .await
        )
        .0,
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_a_finished_execution_yields_its_final_state_and_ends() {
    let mut r = SharedRegion::start().await;
    let (_, e) = r.replicate_a_push().await;
    let mut watch =
        r.c.executions
            .watch_execution(pb::WatchExecutionRequest {
                id: e.id.clone(),
                interval_ms: 100,
            })
            .await
            .unwrap()
            .into_inner();
    let first = watch.message().await.unwrap().expect("one snapshot");
    assert_eq!(
        first.execution.unwrap().state,
        pb::ExecutionState::Succeeded as i32
    );
    assert!(
        watch.message().await.unwrap().is_none(),
        "the stream ends with the execution"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_empty_after_replication_and_lists_a_tag_deleted_from_the_destination_as_missing()
{
    let mut r = SharedRegion::start().await;
    let (digest, _) = r.replicate_a_push().await;
    assert!(drift_entries(&mut r.c, "test").await.is_empty());
    // Removed behind Ferry's back on the destination.
    let deleted = reqwest::Client::new()
        .delete(format!("{}/v2/team/app/manifests/{digest}", r.dst.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 202);
    let drift = drift_entries(&mut r.c, "test").await;
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0].kind, pb::DriftKind::Missing as i32);
    assert_eq!(
        (drift[0].repository.as_str(), drift[0].tag.as_str()),
        ("team/app", "v1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_replicated_push_the_queue_is_empty_and_there_are_no_dead_letters() {
    let mut r = SharedRegion::start().await;
    r.replicate_a_push().await;
    // The execution is recorded before the job is acked: wait for the ack, then check the counts.
    let idle = eventually(Duration::from_secs(30), || queue_idle(&r.c)).await;
    assert!(idle, "the job did not leave the queue");
    let q =
        r.c.operations
            .get_queue_stats(pb::GetQueueStatsRequest {})
            .await
            .unwrap()
            .into_inner();
    assert_eq!((q.depth, q.in_flight, q.dead_letters), (0, 0, 0), "{q:?}");
    assert!(r.dead_letters().await.is_empty());
    assert_eq!(r.purge_dead_letters().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_an_unknown_or_unnamed_dead_letter_is_refused() {
    let mut r = SharedRegion::start().await;
    assert_eq!(
        code(
            r.c.operations
                .retry_dead_letter(pb::RetryDeadLetterRequest {
                    job_id: "nope".into()
                })
                .await
        )
        .0,
        Code::NotFound
    );
    assert_eq!(
        code(
            r.c.operations
                .retry_dead_letter(pb::RetryDeadLetterRequest {
                    job_id: String::new()
                })
                .await
        )
        .0,
        Code::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_policy_was_removed_is_dead_lettered_and_its_execution_says_why() {
    let r = SharedRegion::start().await;
    // No worker can run it: it is dead-lettered at once, listed with its error.
    let dead = r.dead_letter_a_job_of_a_removed_policy().await;
    assert_eq!(
        (dead.policy.as_str(), dead.reference.as_str()),
        ("removed", "v9")
    );
    assert!(dead.last_error.contains("removed"), "{dead:?}");
    let failed = r
        .execution(&dead.id)
        .await
        .expect("the dead job's execution");
    assert_eq!(
        failed.state,
        pb::ExecutionState::Failed as i32,
        "{failed:?}"
    );
    assert!(failed.error.contains("removed"), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_dead_letter_runs_again_and_a_purge_removes_it() {
    let mut r = SharedRegion::start().await;
    let dead = r.dead_letter_a_job_of_a_removed_policy().await;
    let first = r
        .execution(&dead.id)
        .await
        .expect("the dead job's execution");
    r.c.operations
        .retry_dead_letter(pb::RetryDeadLetterRequest {
            job_id: dead.id.clone(),
        })
        .await
        .unwrap();
    // It runs again (a later end) and fails again, back in the dead letters.
    let rerun = eventually(Duration::from_secs(30), || {
        let (r, id) = (&r, dead.id.clone());
        async move {
            r.execution(&id).await.is_some_and(|e| {
                e.ended_at_ms > first.ended_at_ms && e.state == pb::ExecutionState::Failed as i32
            }) && r.dead_letters().await.len() == 1
        }
    })
    .await;
    assert!(rerun, "the retried dead letter did not run again");
    assert_eq!(r.purge_dead_letters().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_of_every_instance_are_listed_with_their_region_and_policies() {
    let mut r = SharedRegion::start().await;
    let workers_listed = eventually(Duration::from_secs(30), || {
        let mut ops = r.c.operations.clone();
        async move {
            ops.list_workers(pb::ListWorkersRequest {})
                .await
                .is_ok_and(|r| r.into_inner().workers.len() == 2)
        }
    })
    .await;
    let workers =
        r.c.operations
            .list_workers(pb::ListWorkersRequest {})
            .await
            .unwrap()
            .into_inner()
            .workers;
    assert!(
        workers_listed,
        "both processes' workers are listed: {workers:?}"
    );
    assert!(
        workers
            .iter()
            .any(|w| w.id == "second-worker" && w.policies == ["test"] && w.region == "eu-west"),
        "{workers:?}"
    );
}

/// A policy as Harbor's `GET /api/v2.0/replication/policies/{id}` returns it, between the region's
/// `src` and `dst` (embedded registry objects with ids, masked secrets and times).
fn harbor_shaped_policy(name: &str) -> serde_json::Value {
    let registry = |id: i64, name: &str| {
        json!({"id": id, "name": name, "type": "docker-registry", "url": "http://127.0.0.1:1",
               "insecure": true, "status": "healthy",
               "credential": {"type": "basic", "access_key": "robot", "access_secret": "*****"},
               "creation_time": "2025-03-01T10:00:00.000Z", "update_time": "2025-03-01T10:00:00.000Z"})
    };
    json!({
        "id": 3, "name": name, "description": "pasted from Harbor",
        "src_registry": registry(4, "src"), "dest_registry": registry(5, "dst"),
        "dest_namespace": "", "dest_namespace_replace_count": -1,
        "trigger": {"type": "manual", "trigger_settings": {}},
        "filters": [{"type": "name", "value": "harbor/**"}],
        "replicate_deletion": true, "deletion": true, "override": true, "enabled": true,
        "speed": 0, "copy_by_chunk": false, "single_active_replication": false,
        "creation_time": "2025-03-01T10:05:00.000Z", "update_time": "2025-03-02T08:00:00.000Z"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_shaped_as_harbors_api_returns_it_is_stored_by_registry_name() {
    let mut r = SharedRegion::start().await;
    let stored =
        r.c.policies
            .put_policy(pb::PutPolicyRequest {
                json: harbor_shaped_policy("from-harbor").to_string(),
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(
        (
            stored.src_registry.as_str(),
            stored.dest_registries.as_slice()
        ),
        ("src", &["dst".to_string()][..])
    );
    let document: serde_json::Value = serde_json::from_str(&stored.json).unwrap();
    assert_eq!(
        document["src_registry"],
        json!({"name": "src"}),
        "{document}"
    );
    assert_eq!(
        document["dest_registry"],
        json!({"name": "dst"}),
        "{document}"
    );
    assert!(document.get("creation_time").is_none(), "{document}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harbor_policy_put_through_the_api_meets_the_config_files_rules() {
    let mut r = SharedRegion::start().await;
    let mut typo = harbor_shaped_policy("typo");
    typo["dest_registry"]["statuss"] = json!("healthy");
    let mut pull_into_local = harbor_shaped_policy("pull-into-local");
    pull_into_local
        .as_object_mut()
        .unwrap()
        .remove("dest_registry");
    for (policy, expected) in [
        (typo, "dest_registry.statuss: unknown field"),
        (
            pull_into_local,
            r#"dest_registry: policy "pull-into-local" has no `dest_registry`"#,
        ),
    ] {
        let (invalid, msg) = code(
            r.c.policies
                .put_policy(pb::PutPolicyRequest {
                    json: policy.to_string(),
                })
                .await,
        );
        assert_eq!(invalid, Code::InvalidArgument, "{msg}");
        assert!(msg.contains(expected), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_registry_document_is_refused_naming_every_missing_field() {
    let mut r = SharedRegion::start().await;
    let (invalid, msg) = code(
        r.c.registries
            .put_registry(pb::PutRegistryRequest { json: "{}".into() })
            .await,
    );
    assert_eq!(invalid, Code::InvalidArgument, "{msg}");
    // One line per missing field.
    assert!(
        msg.lines().any(|l| l.starts_with("name:")) && msg.lines().any(|l| l.starts_with("url:")),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_calls_are_unavailable_and_the_server_keeps_serving() {
    let mut r = SharedRegion::start().await;
    r.redis.kill().await;
    let (unavailable, msg) = code(
        r.c.operations
            .get_queue_stats(pb::GetQueueStatsRequest {})
            .await,
    );
    assert_eq!(unavailable, Code::Unavailable, "{msg}");
    // The server itself keeps serving.
    let mut health = tonic_health::pb::health_client::HealthClient::new(r.ch.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// The services listed by the v1 reflection API.
async fn reflection_services(ch: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut client = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}

/// Enqueues a push job straight into the region's queue, as an agent would for an event.
async fn enqueue_behind_the_api(redis: &RedisServer, policy: &str, repository: &str, tag: &str) {
    use ferry_replicator::store::queue::JobQueue as _;
    let queue = ferry_replicator::store::queue::RedisQueue::connect(
        &redis.url(),
        "ferry",
        ferry_replicator::backoff::RetryPolicy::default(),
    )
    .await
    .unwrap();
    let job = ferry_replicator::store::queue::Job::new(
        policy,
        ferry_replicator::event::EventKind::Push,
        repository,
        tag,
    );
    queue.enqueue(job).await.unwrap();
}

/// True when the region's queue has nothing waiting and nothing running.
async fn queue_idle(c: &Clients) -> bool {
    let mut ops = c.operations.clone();
    ops.get_queue_stats(pb::GetQueueStatsRequest {})
        .await
        .is_ok_and(|q| {
            let q = q.into_inner();
            q.depth == 0 && q.in_flight == 0
        })
}

/// Follows an execution with WatchExecution until its stream ends; returns the last snapshot.
async fn watch_to_end(c: &mut Clients, id: &str) -> pb::Execution {
    let mut stream = c
        .executions
        .watch_execution(pb::WatchExecutionRequest {
            id: id.into(),
            interval_ms: 100,
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    let watched = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(p) = stream.message().await.unwrap() {
            last = p.execution;
        }
    })
    .await;
    assert!(
        watched.is_ok(),
        "execution {id} did not end within 60 s: {last:?}"
    );
    last.expect("at least one snapshot")
}

async fn tasks_of(c: &mut Clients, id: &str) -> Vec<pb::Task> {
    c.executions
        .list_tasks(pb::ListTasksRequest {
            execution_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_runs_plan_copy_and_a_stop_cancels_the_running_transfer() {
    let redis = RedisServer::start(true).await.unwrap();
    let src = Registry::start().await.unwrap();
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manual = |name: &str, extra: serde_json::Value| {
        let mut p = policy(json!({"name": name, "trigger": {"type": "manual"}}));
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let cfg = dir.path().join("ferry.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec(&json!({
            "registries": [registry("src", &src.url()), registry("dst", &dst.url())],
            "policies": [
                manual("fast", json!({"filters": [{"type": "tag", "value": "v*"}]})),
                // 1 MiB/s: the 48 MiB layer would take ~48 s.
                manual("slow", json!({"speed": 1024, "filters": [{"type": "tag", "value": "big"}]})),
                manual("off", json!({"enabled": false})),
            ],
        }))
        .unwrap(),
    )
    .unwrap();
    let v1 = push_image(dir.path(), 91, &src.host(), "team/app:v1").await;
    let v2 = push_image(dir.path(), 92, &src.host(), "team/app:v2").await;
    let mut b = ferry_testkit::LayoutBuilder::new(&dir.path().join("big")).unwrap();
    b.image(
        "img",
        &[ferry_testkit::LayerSpec {
            seed: 93,
            size: 48 * 1024 * 1024,
        }],
    )
    .unwrap();
    let layout = b.finish().unwrap();
    ferry_testkit::skopeo::push_layout(&layout, "img", &src.host(), "team/app:big")
        .await
        .unwrap();

    let listen = free_local_addr();
    let admin = free_local_addr();
    let serve = Serve::start_with(
        &cfg,
        &listen,
        WEBHOOK_TOKEN,
        &["--redis", &redis.url(), "--admin-listen", &admin],
        &[("FERRY_ADMIN_TOKEN", ADMIN_TOKEN)],
        dir.path().join("serve.log"),
    )
    .await;
    let mut c = clients(&channel(&admin).await, ADMIN_TOKEN);
    let start = |policy: &str, dry_run: bool| pb::StartExecutionRequest {
        policy: policy.into(),
        dry_run,
    };

    // A dry run plans and ends at once; nothing reaches the destination.
    let plan = c
        .executions
        .start_execution(start("fast", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.state, pb::ExecutionState::Succeeded as i32, "{plan:?}");
    assert!(plan.dry_run && plan.trigger == pb::Trigger::Manual as i32);
    let planned = tasks_of(&mut c, &plan.id).await;
    let outcomes: Vec<_> = planned
        .iter()
        .map(|t| (t.reference.as_str(), t.outcome.as_str()))
        .collect();
    assert_eq!(outcomes, [("v1", "would copy"), ("v2", "would copy")]);
    // Had the plan enqueued anything, it would run before the queue is idle.
    let idle = eventually(Duration::from_secs(30), || queue_idle(&c)).await;
    assert!(idle, "the queue did not drain:\n{}", serve.log());
    assert_eq!(manifest_status(&dst.url(), "team/app", "v1").await, 404);

    // A run: every task pending from the start, then copied by the worker; the run ends itself.
    let run = c
        .executions
        .start_execution(start("fast", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        run.counts
            .as_ref()
            .map(|n| n.pending + n.running + n.succeeded),
        Some(2),
        "{run:?}"
    );
    let done = watch_to_end(&mut c, &run.id).await;
    assert_eq!(
        done.state,
        pb::ExecutionState::Succeeded as i32,
        "{done:?}\n{}",
        serve.log()
    );
    assert_eq!(done.counts.unwrap().succeeded, 2);
    let tasks = tasks_of(&mut c, &run.id).await;
    assert_eq!(tasks.len(), 2, "one task per tag: {tasks:?}");
    assert!(
        tasks
            .iter()
            .all(|t| t.outcome == "copied" && t.bytes_done > 0),
        "{tasks:?}"
    );
    assert_eq!(raw_digest(&dst.host(), "team/app:v1").await, v1);
    assert_eq!(raw_digest(&dst.host(), "team/app:v2").await, v2);
    // Again: nothing left to copy.
    let again = c
        .executions
        .start_execution(start("fast", false))
        .await
        .unwrap()
        .into_inner();
    let again = watch_to_end(&mut c, &again.id).await;
    assert_eq!(again.state, pb::ExecutionState::Succeeded as i32);
    let tasks = tasks_of(&mut c, &again.id).await;
    assert!(!tasks.is_empty(), "the second run recorded no task");
    assert!(tasks.iter().all(|t| t.outcome == "unchanged"), "{tasks:?}");

    // Paused: a run is refused, and a job that arrives anyway (an event, a run started before) is
    // parked, not run; resuming puts it back and it runs.
    let name = |n: &str| n.to_string();
    let paused = c
        .operations
        .pause_policy(pb::PausePolicyRequest { name: name("fast") })
        .await
        .unwrap()
        .into_inner();
    assert!(paused.paused);
    let listed = c
        .policies
        .get_policy(pb::GetPolicyRequest { name: name("fast") })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.paused);
    assert_eq!(
        code(c.executions.start_execution(start("fast", false)).await).0,
        Code::FailedPrecondition
    );
    // Behind the API's back, as an event would: a job for v3.
    let v3 = push_image(dir.path(), 94, &src.host(), "team/app:v3").await;
    enqueue_behind_the_api(&redis, "fast", "team/app", "v3").await;
    let parked = eventually(Duration::from_secs(30), || queue_idle(&c)).await;
    assert!(parked, "the job was not taken:\n{}", serve.log());
    assert_eq!(
        manifest_status(&dst.url(), "team/app", "v3").await,
        404,
        "a paused policy's job ran"
    );
    let resumed = c
        .operations
        .resume_policy(pb::ResumePolicyRequest { name: name("fast") })
        .await
        .unwrap()
        .into_inner();
    assert!(!resumed.paused);
    let arrived = eventually(Duration::from_secs(20), || async {
        manifest_status(&dst.url(), "team/app", "v3").await == 200
    })
    .await;
    assert!(
        arrived,
        "the parked job did not run after resume:\n{}",
        serve.log()
    );
    assert_eq!(raw_digest(&dst.host(), "team/app:v3").await, v3);

    // A disabled policy does not run.
    let (precondition, msg) = code(c.executions.start_execution(start("off", false)).await);
    assert_eq!(precondition, Code::FailedPrecondition, "{msg}");

    // Stop in the middle of a throttled 48 MiB blob.
    let slow = c
        .executions
        .start_execution(start("slow", false))
        .await
        .unwrap()
        .into_inner();
    let streaming = eventually(Duration::from_secs(20), || {
        let mut ops = c.operations.clone();
        async move {
            ops.get_queue_stats(pb::GetQueueStatsRequest {})
                .await
                .is_ok_and(|q| q.into_inner().in_flight == 1)
        }
    })
    .await;
    assert!(
        streaming,
        "the slow run's job never started:\n{}",
        serve.log()
    );
    // Byte-level progress of the running task is visible while the blob streams.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (seen, progress) = loop {
        let task = tasks_of(&mut c, &slow.id).await.first().cloned();
        let running = task
            .as_ref()
            .is_some_and(|t| t.state == pb::TaskState::Running as i32 && t.bytes_done > 0);
        if running || std::time::Instant::now() > deadline {
            break (running, task);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let t = progress.expect("a task");
    assert!(seen, "no progress recorded: {t:?}");
    assert!(
        t.bytes_total >= 48 * 1024 * 1024 && t.bytes_done < t.bytes_total,
        "bytes {} of {}",
        t.bytes_done,
        t.bytes_total
    );
    let asked = std::time::Instant::now();
    let stopped = c
        .executions
        .stop_execution(pb::StopExecutionRequest {
            id: slow.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.state, pb::ExecutionState::Stopped as i32);
    // The policy's speed (1 MiB/s) leaves the 48 MiB transfer ~45 s to go: a job gone within the
    // wait was cancelled, not finished. How fast is a figure, not a bound (the README quotes it).
    let idle = eventually(Duration::from_secs(15), || queue_idle(&c)).await;
    assert!(idle, "the stopped job is still running:\n{}", serve.log());
    eprintln!(
        "stop → transfer cancelled and job gone: {:?}",
        asked.elapsed()
    );
    let after = c
        .executions
        .get_execution(pb::GetExecutionRequest {
            id: slow.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.state, pb::ExecutionState::Stopped as i32, "{after:?}");
    let t = tasks_of(&mut c, &slow.id).await;
    assert!(!t.is_empty(), "the stopped run recorded no task");
    assert!(
        t.iter().all(|t| t.state == pb::TaskState::Stopped as i32),
        "{t:?}"
    );
    assert_eq!(
        manifest_status(&dst.url(), "team/app", "big").await,
        404,
        "no partial tag"
    );
    // Stopping again changes nothing; an unknown execution is NOT_FOUND.
    let twice = c
        .executions
        .stop_execution(pb::StopExecutionRequest {
            id: slow.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(twice.ended_at_ms, after.ended_at_ms);
    assert_eq!(
        code(
            c.executions
                .stop_execution(pb::StopExecutionRequest { id: "nope".into() })
                .await
        )
        .0,
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admits_only_clients_with_a_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs = ferry_testkit::make_certificates(dir.path()).unwrap();
    let (src, dst) = (
        Registry::start().await.unwrap(),
        Registry::start().await.unwrap(),
    );
    let cfg = write_config(dir.path(), &src.url(), &dst.url(), json!({}));
    let listen = free_local_addr();
    let admin = free_local_addr();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let _serve = Serve::start_with(
        &cfg,
        &listen,
        WEBHOOK_TOKEN,
        &[
            "--admin-listen",
            &admin,
            "--admin-tls-cert",
            &path(&certs.cert),
            "--admin-tls-key",
            &path(&certs.key),
            "--admin-client-ca",
            &path(&certs.ca),
        ],
        &[("FERRY_ADMIN_TOKEN", ADMIN_TOKEN)],
        dir.path().join("serve.log"),
    )
    .await;
    let pem = |p: &std::path::Path| std::fs::read(p).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pem(&certs.ca)));
    let endpoint = |tls: Option<tonic::transport::ClientTlsConfig>| {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let e = tonic::transport::Endpoint::from_shared(format!("{scheme}://{admin}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5));
        match tls {
            Some(t) => e.tls_config(t).unwrap(),
            None => e,
        }
    };
    // With the client certificate: served.
    let with_cert = tls.clone().identity(tonic::transport::Identity::from_pem(
        pem(&certs.client_cert),
        pem(&certs.client_key),
    ));
    let ch = endpoint(Some(with_cert))
        .connect()
        .await
        .expect("mTLS handshake");
    let mut c = clients(&ch, ADMIN_TOKEN);
    let names: Vec<_> = c
        .policies
        .list_policies(pb::ListPoliciesRequest {})
        .await
        .unwrap()
        .into_inner()
        .policies
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["test"]);
    // The token is still required on top of the certificate.
    let mut no_token = pb::policies_client::PoliciesClient::new(ch);
    assert_eq!(
        code(no_token.list_policies(pb::ListPoliciesRequest {}).await).0,
        Code::Unauthenticated
    );
    // Without a client certificate, or in plain text: no call gets through.
    for (what, e) in [
        ("TLS without a client certificate", endpoint(Some(tls))),
        ("plain HTTP/2", endpoint(None)),
    ] {
        let refused = match e.connect().await {
            Err(_) => true,
            Ok(ch) => clients(&ch, ADMIN_TOKEN)
                .policies
                .list_policies(pb::ListPoliciesRequest {})
                .await
                .is_err(),
        };
        assert!(refused, "{what} was served");
    }

    // The CLI speaks mTLS too.
    let cli = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.args([
            "admin",
            "--endpoint",
            &format!("https://{admin}"),
            "--ca-file",
            &path(&certs.ca),
        ])
        .args(extra)
        .args(["policies", "list"])
        .env("FERRY_ADMIN_TOKEN", ADMIN_TOKEN);
        cmd.output().unwrap()
    };
    let ok = cli(&[
        "--cert",
        &path(&certs.client_cert),
        "--key",
        &path(&certs.client_key),
    ]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("test"));
    let refused = cli(&[]);
    assert_ne!(
        refused.status.code(),
        Some(0),
        "served without a client certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_stored_through_the_api_are_validated_and_run_like_file_policies() {
    let Served {
        redis: _redis,
        pair: RegistryPair { src, dst, dir, .. },
        serve,
        admin,
    } = Served::start(json!({"trigger": {"type": "manual"}})).await;
    let mut c = clients(&channel(&admin).await, ADMIN_TOKEN);
    let put = |v: serde_json::Value| pb::PutPolicyRequest {
        json: v.to_string(),
    };

    // Every problem of a bad document, with its path in the document.
    let (invalid, msg) = code(
        c.policies
            .put_policy(put(json!({
                "name": "bad",
                "src_registry": {"name": "nowhere"},
                "dest_registry": {"name": "dst"},
                "filters": [{"type": "tag", "value": "[unclosed"}],
            })))
            .await,
    );
    assert_eq!(invalid, Code::InvalidArgument, "{msg}");
    assert!(
        msg.contains("src_registry") && msg.contains("nowhere"),
        "{msg}"
    );
    assert!(msg.contains("filters[0].value"), "{msg}");
    assert!(msg.lines().count() >= 2, "one line per problem: {msg}");
    let (unknown_field, msg) = code(
        c.policies
            .put_policy(put(json!({"name": "x", "src_registry": {"name": "src"}, "dest_registry": {"name": "dst"}, "colour": 1})))
            .await,
    );
    assert_eq!(unknown_field, Code::InvalidArgument);
    assert!(msg.contains("colour"), "{msg}");
    // A config-file policy cannot be replaced or deleted through the API.
    let (read_only, _) = code(
        c.policies
            .put_policy(put(json!({"name": "test", "src_registry": {"name": "src"}, "dest_registry": {"name": "dst"}})))
            .await,
    );
    assert_eq!(read_only, Code::FailedPrecondition);
    assert_eq!(
        code(
            c.policies
                .delete_policy(pb::DeletePolicyRequest {
                    name: "test".into()
                })
                .await
        )
        .0,
        Code::FailedPrecondition
    );

    // An event-based policy stored through the API: webhooks match it, workers run it.
    let stored = c
        .policies
        .put_policy(put(json!({
            "name": "api-events",
            "src_registry": {"name": "src"},
            "dest_registry": {"name": "dst"},
            "trigger": {"type": "event_based"},
            "filters": [{"type": "name", "value": "api/**"}],
        })))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.source, pb::Source::Api as i32);
    let names: Vec<_> = c
        .policies
        .list_policies(pb::ListPoliciesRequest {})
        .await
        .unwrap()
        .into_inner()
        .policies
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["test", "api-events"]);
    let d = push_image(dir.path(), 81, &src.host(), "api/app:v1").await;
    let arrived = eventually(Duration::from_secs(30), || async {
        manifest_status(&dst.url(), "api/app", "v1").await == 200
    })
    .await;
    assert!(
        arrived,
        "the API policy did not replicate the push:\n{}",
        serve.log()
    );
    assert_eq!(raw_digest(&dst.host(), "api/app:v1").await, d);

    // Disabled through the API (also a config-file policy): runs are refused.
    let off = c
        .policies
        .set_policy_enabled(pb::SetPolicyEnabledRequest {
            name: "test".into(),
            enabled: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!off.enabled && off.source == pb::Source::Config as i32);
    let (disabled, _) = code(
        c.executions
            .start_execution(pb::StartExecutionRequest {
                policy: "test".into(),
                dry_run: false,
            })
            .await,
    );
    assert_eq!(disabled, Code::FailedPrecondition);

    // A registry stored through the API, a manual policy to it, a run.
    let extra = Registry::start().await.unwrap();
    let put_registry = |v: serde_json::Value| pb::PutRegistryRequest {
        json: v.to_string(),
    };
    let (bad, msg) = code(
        c.registries
            .put_registry(put_registry(
                json!({"name": "extra", "url": extra.url(), "colour": 1}),
            ))
            .await,
    );
    assert_eq!(bad, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("colour"), "{msg}");
    let (bad, msg) = code(
        c.registries
            .put_registry(put_registry(json!({"name": "extra", "url": extra.url()})))
            .await,
    );
    assert_eq!(
        bad,
        Code::InvalidArgument,
        "plain http without insecure: {msg}"
    );
    assert!(msg.contains("url") && msg.contains("insecure"), "{msg}");
    let (bad, msg) = code(
        c.registries
            .put_registry(put_registry(json!({"name": "extra", "url": extra.url(), "insecure": true,
                "credential": {"type": "basic", "username": "u", "password_env": "FERRY_CRED_TEST_UNSET"}})))
            .await,
    );
    assert_eq!(bad, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("FERRY_CRED_TEST_UNSET"), "{msg}");
    let stored = c
        .registries
        .put_registry(put_registry(
            json!({"name": "extra", "url": extra.url(), "insecure": true}),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.source, pb::Source::Api as i32);
    let ping = c
        .registries
        .ping_registry(pb::PingRegistryRequest {
            name: "extra".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ping.reachable, "{ping:?}");
    c.policies
        .put_policy(put(json!({
            "name": "to-extra",
            "src_registry": {"name": "src"},
            "dest_registry": {"name": "extra"},
            "filters": [{"type": "name", "value": "api/**"}],
        })))
        .await
        .unwrap();
    let run = c
        .executions
        .start_execution(pb::StartExecutionRequest {
            policy: "to-extra".into(),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    let done = watch_to_end(&mut c, &run.id).await;
    assert_eq!(
        done.state,
        pb::ExecutionState::Succeeded as i32,
        "{done:?}\n{}",
        serve.log()
    );
    assert_eq!(raw_digest(&extra.host(), "api/app:v1").await, d);
    // A registry in use, or from the config file, cannot be deleted.
    let del = |n: &str| pb::DeleteRegistryRequest { name: n.into() };
    assert_eq!(
        code(c.registries.delete_registry(del("extra")).await).0,
        Code::FailedPrecondition
    );
    assert_eq!(
        code(c.registries.delete_registry(del("dst")).await).0,
        Code::FailedPrecondition
    );
    c.policies
        .delete_policy(pb::DeletePolicyRequest {
            name: "to-extra".into(),
        })
        .await
        .unwrap();
    c.registries.delete_registry(del("extra")).await.unwrap();
    assert_eq!(
        code(
            c.registries
                .get_registry(pb::GetRegistryRequest {
                    name: "extra".into()
                })
                .await
        )
        .0,
        Code::NotFound
    );

    // Deleted: gone for the API and for webhooks.
    c.policies
        .delete_policy(pb::DeletePolicyRequest {
            name: "api-events".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        code(
            c.policies
                .get_policy(pb::GetPolicyRequest {
                    name: "api-events".into()
                })
                .await
        )
        .0,
        Code::NotFound
    );
    // A marker policy, so that the absence below is checked only once the push was seen: the
    // source delivers its notifications in order, so the marker's copy arriving means the push's
    // notification was handled before it, and an idle queue then means any job it made has run.
    c.policies
        .put_policy(put(json!({
            "name": "marker",
            "src_registry": {"name": "src"},
            "dest_registry": {"name": "dst"},
            "trigger": {"type": "event_based"},
            "filters": [{"type": "name", "value": "marker/**"}],
        })))
        .await
        .unwrap();
    push_image(dir.path(), 82, &src.host(), "api/app:v2").await;
    let marker = push_image(dir.path(), 83, &src.host(), "marker/app:v1").await;
    let marked = eventually(Duration::from_secs(30), || async {
        manifest_status(&dst.url(), "marker/app", "v1").await == 200
    })
    .await;
    assert!(
        marked,
        "the marker push was not replicated; webhooks stopped working:\n{}",
        serve.log()
    );
    assert_eq!(raw_digest(&dst.host(), "marker/app:v1").await, marker);
    let idle = eventually(Duration::from_secs(30), || queue_idle(&c)).await;
    assert!(idle, "the queue did not drain:\n{}", serve.log());
    assert_eq!(
        manifest_status(&dst.url(), "api/app", "v2").await,
        404,
        "a deleted policy still replicates"
    );
}
