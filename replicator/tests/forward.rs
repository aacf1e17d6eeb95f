//! `ferry.v1.Events/Forward` end to end over mTLS, with a real `redis-server`: region `a`'s outbox
//! delivered by the forwarder to region `b`'s service, which enqueues before acknowledging; bad
//! tokens (checked before the body is decoded), missing client certificates, malformed events,
//! names outside the grammar and unknown regions are refused with a reason naming the field; event
//! times are clamped; a redelivered event makes no second job, and the remembered ids are bounded.
mod common;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use common::*;
use ferry_proto::v1 as pb;
use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::clock::{duration_ms, now_ms};
use ferry_replicator::config::{Config, RegionConfig};
use ferry_replicator::event::{Event, EventKind, MAX_EVENT_AGE};
use ferry_replicator::regions::{self, ForwardMetrics, ForwardService, ForwardTls, Forwarder};
use ferry_replicator::store::ledger::{MemoryTagLedger, RedisTagLedger, TagLedger, TagWrite};
use ferry_replicator::store::outbox::{Forwarded, Outbox, RedisOutbox};
use ferry_replicator::store::queue::{JobQueue, RedisQueue};
use ferry_testkit::RedisServer;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

const TOKEN: &str = "forward-test-token";
/// `--max-clock-skew-seconds` of region b's Forward service.
const SKEW: Duration = Duration::from_secs(90);
const DIGEST: &str = "sha256:77d686e3e38b6ab19b76850261e0879edb760b1e9b603136d411c574862981cc";

fn config(forward_url: &str) -> Config {
    let value = json!({
        "regions": [
            {"name": "a", "forward_url": "https://127.0.0.1:1"},
            {"name": "b", "forward_url": forward_url}
        ],
        "registries": [
            {"name": "ra", "url": "https://ra.example", "region": "a"},
            {"name": "rb", "url": "https://rb.example", "region": "b"}
        ],
        "policies": [{
            "name": "pull", "mode": "pull", "src_registry": {"name": "ra"},
            "dest_registry": {"name": "rb"}, "trigger": {"type": "event_based"},
            "replicate_deletion": true
        }]
    });
    let config = Config::from_slice(&serde_json::to_vec(&value).unwrap(), "test").unwrap();
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    config
}

/// The time of the fixtures' events: a minute ago, inside the believable range (not clamped).
static EVENT_TIME: LazyLock<i64> = LazyLock::new(|| now_ms() - 60_000);

fn entry(id: &str, tag: &str) -> Forwarded {
    Forwarded {
        event: Event {
            id: id.into(),
            registry: "ra".into(),
            repository: "app/api".into(),
            tag: Some(tag.into()),
            digest: Some(DIGEST.into()),
            media_type: None,
            kind: EventKind::Push,
            occurred_at_ms: *EVENT_TIME,
            request_id: None,
        },
        origin_region: "a".into(),
    }
}

struct Harness {
    /// Region b's queue.
    queue_b: Arc<RedisQueue>,
    outbox_a: Arc<RedisOutbox>,
    certs: ferry_testkit::tls::Certificates,
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    _redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Region b's Forward service on an mTLS listener; region a's outbox (another key prefix of
    /// the same server stands for a's own Redis).
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let certs = ferry_testkit::make_certificates(dir.path()).unwrap();
        let redis = RedisServer::start(false).await.unwrap();
        let queue_b = Arc::new(
            RedisQueue::connect(&redis.url(), "b", RetryPolicy::default())
                .await
                .unwrap(),
        );
        let queue_a = RedisQueue::connect(&redis.url(), "a", RetryPolicy::default())
            .await
            .unwrap();
        let outbox_a = Arc::new(RedisOutbox::new(&queue_a));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = ForwardService::new(
            "b",
            &config(&format!("https://{addr}")),
            queue_b.clone(),
            Arc::new(RedisOutbox::new(queue_b.as_ref())),
            vec![TOKEN.to_string()],
            ForwardMetrics::default(),
        )
        .unwrap()
        .with_max_clock_skew(SKEW);
        let tls = ferry_replicator::control::admin::tls_config(
            "forward",
            &certs.cert,
            &certs.key,
            Some(&certs.ca),
        )
        .unwrap();
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(service.into_server())
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    shutdown.cancelled_owned(),
                )
                .await
                .unwrap();
        });
        Harness {
            queue_b,
            outbox_a,
            certs,
            addr,
            stop,
            _redis: redis,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A raw client, with or without a client certificate.
    async fn client(
        &self,
        with_cert: bool,
    ) -> Result<pb::events_client::EventsClient<tonic::transport::Channel>, String> {
        let ca = std::fs::read(&self.certs.ca).unwrap();
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if with_cert {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(&self.certs.client_cert).unwrap(),
                std::fs::read(&self.certs.client_key).unwrap(),
            ));
        }
        let channel = Endpoint::from_shared(self.url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(pb::events_client::EventsClient::new(channel))
    }

    async fn depth_b(&self) -> u64 {
        self.queue_b.stats().await.unwrap().depth
    }
}

fn request(events: Vec<pb::Event>, token: &str) -> tonic::Request<pb::ForwardRequest> {
    let mut r = tonic::Request::new(pb::ForwardRequest { events });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test]
async fn the_forwarder_delivers_the_outbox_over_mtls_and_redelivery_is_idempotent() {
    let h = Harness::start().await;
    for (id, tag) in [("e1", "v1"), ("e2", "v2"), ("e3", "v3")] {
        h.outbox_a.append("b", &entry(id, tag)).await.unwrap();
    }
    assert_eq!(h.outbox_a.depth("b").await.unwrap(), 3);
    let peer = RegionConfig {
        name: "b".into(),
        forward_url: h.url(),
    };
    let tls = ForwardTls {
        ca: Some(h.certs.ca.clone()),
        identity: Some((h.certs.client_cert.clone(), h.certs.client_key.clone())),
    };
    let forwarder = Forwarder::new(
        "a",
        &peer,
        h.outbox_a.clone(),
        TOKEN,
        &tls,
        ForwardMetrics::default(),
        "agent-a-1",
    )
    .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(forwarder.run(stop.clone()));
    assert!(
        eventually(Duration::from_secs(10), || async { h.depth_b().await == 3 }).await,
        "3 jobs in region b's queue"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            h.outbox_a.depth("b").await.unwrap() == 0
        })
        .await,
        "a's outbox to drain"
    );
    let leases = h
        .queue_b
        .claim("w", 10, Duration::from_secs(30))
        .await
        .unwrap();
    let mut tags: Vec<_> = leases.iter().map(|l| l.job.reference.clone()).collect();
    tags.sort();
    assert_eq!(tags, ["v1", "v2", "v3"]);
    for l in &leases {
        assert_eq!(l.job.policy, "pull");
        assert_eq!(l.job.origin_region.as_deref(), Some("a"));
        assert_eq!(l.job.event_time_ms, *EVENT_TIME);
        h.queue_b.ack(l).await.unwrap();
    }

    // The same event again (a forwarder that died before trimming): accepted, no new job.
    h.outbox_a.append("b", &entry("e2", "v2")).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            h.outbox_a.depth("b").await.unwrap() == 0
        })
        .await,
        "the redelivered event to leave a's outbox"
    );
    assert_eq!(
        h.depth_b().await,
        0,
        "a redelivered event made a second job"
    );
    stop.cancel();
    running.await.unwrap();
    h.stop.cancel();
}

#[tokio::test]
async fn forward_refuses_bad_tokens_missing_client_certificates_and_bad_events() {
    let h = Harness::start().await;
    let good = regions::to_proto(&entry("e1", "v1"));

    let mut client = h.client(true).await.unwrap();
    let err = client
        .forward(request(vec![good.clone()], "wrong"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(err.message(), "invalid forward token");
    let err = client
        .forward(tonic::Request::new(pb::ForwardRequest {
            events: vec![good.clone()],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // One bad event refuses the whole batch, naming it; nothing is enqueued.
    let mut bad = good.clone();
    bad.digest = "sha256:nothex".into();
    let err = client
        .forward(request(vec![good.clone(), bad], TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("events[1].digest: "),
        "{}",
        err.message()
    );
    assert_eq!(h.depth_b().await, 0);

    let ok = client
        .forward(request(vec![good], TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.accepted_ids, ["e1"]);
    assert_eq!(h.depth_b().await, 1);

    // mTLS: without a client certificate the handshake (or the first call) fails.
    let refused = match h.client(false).await {
        Err(_) => true,
        Ok(mut c) => c
            .forward(request(vec![regions::to_proto(&entry("e9", "v9"))], TOKEN))
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    assert_eq!(h.depth_b().await, 1);
    h.stop.cancel();
}

#[tokio::test]
async fn a_wrong_token_is_refused_before_the_message_is_decoded() {
    let h = Harness::start().await;
    let mut client = h.client(true).await.unwrap();
    // Over the decoding limit: decoding it first would answer OUT_OF_RANGE, not UNAUTHENTICATED.
    let mut huge = regions::to_proto(&entry("e1", "v1"));
    huge.repository = "a".repeat(regions::server::MAX_MESSAGE_BYTES + 1024);
    let err = client
        .forward(request(vec![huge.clone()], "wrong"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(err.message(), "invalid forward token");
    // A message just under the limit, unauthenticated: refused the same way.
    huge.repository = "a".repeat(regions::server::MAX_MESSAGE_BYTES - 1024);
    let err = client
        .forward(request(vec![huge.clone()], "wrong"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // With the token it is decoded, and then refused for what it says.
    let err = client
        .forward(request(vec![huge], TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("events[0].repository: "),
        "{}",
        err.message()
    );
    assert!(
        err.message().len() < 400,
        "the error quotes a bounded part of the name"
    );
    assert_eq!(h.depth_b().await, 0);
    h.stop.cancel();
}

#[tokio::test]
async fn a_peer_with_a_valid_token_cannot_enqueue_names_outside_the_grammar_or_unknown_regions() {
    let h = Harness::start().await;
    let mut client = h.client(true).await.unwrap();
    let good = regions::to_proto(&entry("e1", "v1"));
    type Spoil = fn(&mut pb::Event);
    let cases: [(Spoil, &str); 9] = [
        (
            |e| e.repository = "Platform/../../UPPER?x=1".into(),
            "events[1].repository: ",
        ),
        (
            |e| e.repository = "app/../../v2/_catalog".into(),
            "events[1].repository: ",
        ),
        (|e| e.tag = "v1|x".into(), "events[1].tag: "),
        (|e| e.tag = "v1\nx".into(), "events[1].tag: "),
        (
            |e| e.origin_region = "zz".into(),
            "events[1].origin_region: \"zz\" is not a configured region",
        ),
        (
            |e| e.origin_region = "b".into(),
            "events[1].origin_region: \"b\" is this region",
        ),
        (
            |e| e.registry = "elsewhere".into(),
            "events[1].registry: \"elsewhere\" is not a configured registry",
        ),
        (|e| e.id = "e\n2".into(), "events[1].id: "),
        (|e| e.digest = "sha384:00".into(), "events[1].digest: "),
    ];
    for (spoil, expected) in cases {
        let mut bad = regions::to_proto(&entry("e2", "v2"));
        spoil(&mut bad);
        let err = client
            .forward(request(vec![good.clone(), bad], TOKEN))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().starts_with(expected),
            "{} / {expected}",
            err.message()
        );
    }
    assert_eq!(h.depth_b().await, 0, "nothing of a refused batch is taken");
    h.stop.cancel();
}

#[tokio::test]
async fn peer_event_times_are_clamped_before_they_decide_anything() {
    let h = Harness::start().await;
    let mut client = h.client(true).await.unwrap();
    let at = |id: &str, tag: &str, occurred_at_ms: i64| {
        let mut e = regions::to_proto(&entry(id, tag));
        e.occurred_at_ms = occurred_at_ms;
        e
    };
    let before = now_ms();
    client
        .forward(request(
            vec![
                at("e1", "v1", i64::MAX),
                at("e2", "v2", i64::MIN),
                at("e3", "v3", 0),
            ],
            TOKEN,
        ))
        .await
        .unwrap();
    let after = now_ms();
    let leases = h
        .queue_b
        .claim("w", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(leases.len(), 3);
    // The job's event time is the time its copy records in the conflict ledger.
    let skew = duration_ms(SKEW);
    let age = duration_ms(MAX_EVENT_AGE);
    for l in &leases {
        let t = l.job.event_time_ms;
        match l.job.reference.as_str() {
            "v1" => assert!((before + skew..=after + skew).contains(&t), "{t}"),
            _ => assert!((before - age..=after - age).contains(&t), "{t}"),
        }
    }
    h.stop.cancel();
}

#[tokio::test]
async fn remembered_forward_ids_are_bounded_to_the_newest() {
    let redis = RedisServer::start(false).await.unwrap();
    let queue = RedisQueue::connect(&redis.url(), "ids", RetryPolicy::default())
        .await
        .unwrap();
    let outbox = RedisOutbox::new(&queue).remember_at_most(3);
    for i in 0..6 {
        outbox.mark_accepted(&format!("e{i}")).await.unwrap();
    }
    assert_eq!(outbox.remembered().await.unwrap(), 3);
    for i in 0..3 {
        assert!(
            !outbox.accepted(&format!("e{i}")).await.unwrap(),
            "e{i} forgotten"
        );
    }
    for i in 3..6 {
        assert!(
            outbox.accepted(&format!("e{i}")).await.unwrap(),
            "e{i} remembered"
        );
    }
    // Marking a remembered id again keeps it (newest) and the set at the bound.
    outbox.mark_accepted("e3").await.unwrap();
    outbox.mark_accepted("e6").await.unwrap();
    assert_eq!(outbox.remembered().await.unwrap(), 3);
    assert!(outbox.accepted("e3").await.unwrap());
    assert!(!outbox.accepted("e4").await.unwrap());
}

/// The outbox contract (redis-server and valkey-server): order, trimming, the forwarder lease and
/// the accepted-id record.
async fn outbox_contract(outbox: &dyn Outbox) {
    for i in 0..5 {
        outbox
            .append("b", &entry(&format!("e{i}"), &format!("v{i}")))
            .await
            .unwrap();
    }
    outbox.append("c", &entry("other", "x")).await.unwrap();
    assert_eq!(outbox.depth("b").await.unwrap(), 5);
    assert_eq!(outbox.depth("nowhere").await.unwrap(), 0);
    let first = outbox.pending("b", 3).await.unwrap();
    let ids: Vec<_> = first.iter().map(|(_, e)| e.event.id.as_str()).collect();
    assert_eq!(ids, ["e0", "e1", "e2"], "oldest first, in order");
    let trim: Vec<String> = first.iter().take(2).map(|(id, _)| id.clone()).collect();
    outbox.remove("b", &trim).await.unwrap();
    let rest: Vec<_> = outbox
        .pending("b", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.event.id)
        .collect();
    assert_eq!(rest, ["e2", "e3", "e4"]);
    assert_eq!(outbox.depth("c").await.unwrap(), 1);

    // Held for seconds: the checks below run well within it, however loaded the machine.
    let ttl = Duration::from_secs(3);
    assert!(outbox.lease_forwarder("b", "one", ttl).await.unwrap());
    assert!(
        outbox.lease_forwarder("b", "one", ttl).await.unwrap(),
        "renewal"
    );
    assert!(!outbox.lease_forwarder("b", "two", ttl).await.unwrap());
    assert!(
        outbox.lease_forwarder("c", "two", ttl).await.unwrap(),
        "per region"
    );
    // A renewal for 300 ms: the lease expires after that (not before), and another takes it.
    let short = Duration::from_millis(300);
    let renewed = std::time::Instant::now();
    assert!(outbox.lease_forwarder("b", "one", short).await.unwrap());
    let taken = eventually(Duration::from_secs(30), || async {
        outbox.lease_forwarder("b", "two", ttl).await.unwrap()
    })
    .await;
    assert!(taken, "after expiry");
    assert!(
        // Redis expires keys to the millisecond: allow one step.
        renewed.elapsed() + Duration::from_millis(2) >= short,
        "a {short:?} lease taken over after {:?}",
        renewed.elapsed()
    );

    assert!(!outbox.accepted("e7").await.unwrap());
    outbox.mark_accepted("e7").await.unwrap();
    assert!(outbox.accepted("e7").await.unwrap());
}

/// The tag-write ledger of bidirectional conflicts: last write wins per (registry, repo, tag), and
/// recording one returns the write it replaced.
async fn ledger_contract(ledger: &dyn TagLedger) {
    let w = |digest: &str, at_ms| TagWrite {
        digest: digest.into(),
        at_ms,
        region: "a".into(),
    };
    assert_eq!(
        ledger.last_write("ra", "app/api", "v1").await.unwrap(),
        None
    );
    assert_eq!(
        ledger
            .record_write("ra", "app/api", "v1", &w("sha256:1", 1))
            .await
            .unwrap(),
        None,
        "the first write replaces nothing"
    );
    assert_eq!(
        ledger
            .record_write("ra", "app/api", "v1", &w("sha256:2", 2))
            .await
            .unwrap(),
        Some(w("sha256:1", 1)),
        "recording returns the write it replaced"
    );
    assert_eq!(
        ledger
            .record_write("rb", "app/api", "v1", &w("sha256:3", 3))
            .await
            .unwrap(),
        None,
        "another registry's tag is another entry"
    );
    assert_eq!(
        ledger.last_write("ra", "app/api", "v1").await.unwrap(),
        Some(w("sha256:2", 2))
    );
    assert_eq!(
        ledger.last_write("rb", "app/api", "v1").await.unwrap(),
        Some(w("sha256:3", 3))
    );
    assert_eq!(
        ledger.last_write("ra", "app/api", "v2").await.unwrap(),
        None
    );
}

async fn redis_contracts(binary: &str) {
    let redis = RedisServer::start_binary(binary, false)
        .await
        .unwrap_or_else(|e| {
            panic!("{binary} must be installed (valkey: apt-get install -t bookworm-backports valkey-server): {e:#}")
        });
    let queue = RedisQueue::connect(&redis.url(), "ob", RetryPolicy::default())
        .await
        .unwrap();
    outbox_contract(&RedisOutbox::new(&queue)).await;
    ledger_contract(&RedisTagLedger::new(&queue)).await;
}

#[tokio::test]
async fn outbox_and_ledger_contracts_in_redis_server() {
    redis_contracts("redis-server").await;
}

#[tokio::test]
async fn outbox_and_ledger_contracts_in_valkey_server() {
    redis_contracts("valkey-server").await;
}

#[tokio::test]
async fn ledger_contract_in_memory() {
    ledger_contract(&MemoryTagLedger::default()).await;
}
