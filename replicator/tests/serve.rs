//! `ferry serve`: one process (webhooks + worker + safety net, in-process queue) replicating pushes
//! and deletes between two real registries, driven by the registry's own notifications.
mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_testkit::{skopeo, LayerSpec, LayoutBuilder, Registry, RegistryOptions};
use serde_json::json;

const TOKEN: &str = "serve-test-token";

/// Polls `f` until it is true or `timeout` passes.
async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn manifest_status(url: &str, repo: &str, reference: &str) -> u16 {
    reqwest::Client::new()
        .head(format!("{url}/v2/{repo}/manifests/{reference}"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_replicates_pushes_and_deletes_from_registry_notifications() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let src = Registry::start_with(RegistryOptions {
        notifications_url: Some(format!(
            "http://{listen}/v1/events/distribution?registry=src"
        )),
        notifications_token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &src.url(),
        &dst.url(),
        json!({"trigger": {"type": "event_based"}, "replicate_deletion": true}),
    );
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            &listen,
            "--reconcile-interval",
            "0",
        ])
        .env("FERRY_WEBHOOK_TOKEN", TOKEN)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let up = eventually(Duration::from_secs(10), || async {
        reqwest::get(format!("http://{listen}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let log_tail = || std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    assert!(up, "ferry serve did not become healthy:\n{}", log_tail());

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
        log_tail()
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
        log_tail()
    );

    // SIGTERM: a clean exit.
    let pid = serve.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(30), serve.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}\n{}", log_tail());
}
