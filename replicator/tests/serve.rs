//! `ferry serve`: one process (webhooks + worker + safety net, in-process queue) replicating pushes
//! and deletes between two real registries, driven by the registry's own notifications.
mod common;

use std::time::{Duration, Instant};

use common::*;
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
