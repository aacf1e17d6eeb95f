//! `ferry serve`: one process (webhooks + worker + safety net, in-process queue) replicating pushes
//! and deletes between two real registries, driven by the registry's own notifications; its
//! `--max-clock-skew-seconds` clamping a webhook's event time; and the metrics it exports before
//! its first job.
mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_proto::v1 as pb;
use ferry_testkit::{skopeo, LayerSpec, LayoutBuilder};
use serde_json::json;

const TOKEN: &str = "serve-test-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_replicates_pushes_and_deletes_from_registry_notifications() {
    let listen = free_local_addr();
    let RegistryPair {
        src,
        dst,
        dir,
        config: cfg,
    } = registry_pair(
        Some(&listen),
        TOKEN,
        json!({"trigger": {"type": "event_based"}, "replicate_deletion": true}),
    )
    .await;
    let mut serve = Serve::start(&cfg, &listen, TOKEN, &[], dir.path().join("serve.log")).await;

    let mut b = LayoutBuilder::new(&dir.path().join("layout")).unwrap();
    let img = b
        .image(
            "img",
            &[
                LayerSpec {
                    seed: 50,
                    size: 1024 * 1024,
                },
                LayerSpec {
                    seed: 51,
                    size: 4096,
                },
            ],
        )
        .unwrap();
    let layout = b.finish().unwrap();
    let pushed = Instant::now();
    skopeo::push_layout(&layout, "img", &src.host(), "team/app:v1")
        .await
        .unwrap();
    let arrived = eventually(Duration::from_secs(30), || async {
        manifest_status(&dst.url(), "team/app", "v1").await == 200
    })
    .await;
    assert!(
        arrived,
        "the push did not reach the destination:\n{}",
        serve.log()
    );
    eprintln!(
        "push → visible on the destination: {:?} (includes skopeo's push)",
        pushed.elapsed()
    );
    assert_eq!(raw_digest(&dst.host(), "team/app:v1").await, img.digest);

    // A delete by digest on the source propagates (the destination still holds that digest).
    let r = reqwest::Client::new()
        .delete(format!(
            "{}/v2/team/app/manifests/{}",
            src.url(),
            img.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let gone = eventually(Duration::from_secs(30), || async {
        manifest_status(&dst.url(), "team/app", &img.digest).await == 404
    })
    .await;
    assert!(
        gone,
        "the delete did not reach the destination:\n{}",
        serve.log()
    );

    // SIGTERM: a clean exit.
    let status = serve.terminate().await;
    assert!(status.success(), "{status}\n{}", serve.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_clamps_webhook_event_times_to_max_clock_skew_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        json!({"trigger": {"type": "event_based"}}),
    );
    let (listen, admin) = (free_local_addr(), free_local_addr());
    let _serve = Serve::start_with(
        &cfg,
        &listen,
        TOKEN,
        &["--max-clock-skew-seconds", "7", "--admin-listen", &admin],
        &[("FERRY_ADMIN_TOKEN", "serve-admin-token")],
        dir.path().join("serve.log"),
    )
    .await;
    // A registry whose clock says 9999.
    let event = json!({"events": [{
        "id": "far-future-1", "timestamp": "9999-12-31T23:59:59Z", "action": "push",
        "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "repository": "team/app", "tag": "v1",
                   "digest": format!("sha256:{}", "a".repeat(64))},
        "request": {"id": "r1", "useragent": "skopeo/1.9.3"}
    }]});
    let before = ferry_replicator::clock::now_ms();
    let answer = reqwest::Client::new()
        .post(format!(
            "http://{listen}/v1/events/distribution?registry=src"
        ))
        .header(
            "content-type",
            "application/vnd.docker.distribution.events.v1+json",
        )
        .bearer_auth(TOKEN)
        .body(serde_json::to_vec(&event).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let after = ferry_replicator::clock::now_ms();

    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{admin}")).unwrap();
    let mut channel = endpoint.connect().await;
    for _ in 0..100 {
        if channel.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        channel = endpoint.connect().await;
    }
    let channel = channel.expect("the admin API comes up");
    let mut executions = pb::executions_client::ExecutionsClient::new(channel);
    // The job fails (nothing listens at the registries' address); its execution records the time.
    let deadline = Instant::now() + Duration::from_secs(20);
    let event_time = loop {
        let mut request = tonic::Request::new(pb::ListExecutionsRequest::default());
        request
            .metadata_mut()
            .insert("authorization", "Bearer serve-admin-token".parse().unwrap());
        let recorded = executions
            .list_executions(request)
            .await
            .ok()
            .and_then(|r| {
                r.into_inner()
                    .executions
                    .iter()
                    .find_map(|e| e.origin.as_ref().map(|o| o.event_time_ms))
            });
        if recorded.is_some() || Instant::now() > deadline {
            break recorded;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(event_time.is_some(), "no execution recorded");
    let at = event_time.unwrap();
    assert!(
        (before + 7_000..=after + 7_000).contains(&at),
        "event time {at} is not now + 7 s ({before}..{after})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exports_registry_requests_jobs_and_its_live_worker_before_the_first_job() {
    let listen = free_local_addr();
    let RegistryPair {
        src: _src,
        dst: _dst,
        dir,
        config: cfg,
    } = registry_pair(
        Some(&listen),
        TOKEN,
        json!({"trigger": {"type": "event_based"}}),
    )
    .await;
    let mut serve = Serve::start(&cfg, &listen, TOKEN, &[], dir.path().join("serve.log")).await;
    let page = || async {
        reqwest::get(format!("http://{listen}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // Its worker announces itself with its first heartbeat.
    let live = eventually(Duration::from_secs(30), || async {
        page().await.lines().any(|l| l == "ferry_live_workers 1")
    })
    .await;
    let text = page().await;
    assert!(live, "no live worker counted:\n{text}\n{}", serve.log());
    for line in [
        r#"ferry_registry_requests_total{registry="src",method="GET",code="429"} 0"#,
        r#"ferry_registry_requests_total{registry="dst",method="PUT",code="error"} 0"#,
        r#"ferry_registry_request_duration_seconds_count{registry="dst",method="PATCH"} 0"#,
        r#"ferry_jobs_total{policy="test",kind="push",outcome="dead_lettered"} 0"#,
        r#"ferry_conflicts_total{policy="test",outcome="replaced"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    let status = serve.terminate().await;
    assert!(status.success(), "{status}\n{}", serve.log());
}
