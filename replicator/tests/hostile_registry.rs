//! A registry's answers are hostile until checked: credentials stay on the registry's own origin
//! (scheme, host and port of its configured URL) whatever `Location`, `Link`, redirect or token
//! realm it names; nothing it sends (token lifetimes, `Range`s, descriptor sizes) makes Ferry
//! panic; and no list it answers can grow without bound.
mod common;

use common::*;
use ferry_replicator::config::{RegistryConfig, Secret};
use ferry_replicator::oci::client::{MAX_LIST_BYTES, MAX_LIST_ENTRIES, MAX_LIST_PAGES};
use ferry_replicator::oci::{RegistryClient, RegistryError};
use ferry_testkit::{BearerSetup, Behavior, FakeRegistry, HostileList, Registry, RegistryOptions};
use serde_json::{json, Value};

const USER: &str = "robot";
const PASSWORD: &str = "s3cret";

/// `registry(name, url)` with the Basic credential `robot`/`s3cret` read from a file in `dir`.
fn with_credential(dir: &std::path::Path, name: &str, url: &str) -> Value {
    let pw = dir.join(format!("{name}.pw"));
    std::fs::write(&pw, PASSWORD).unwrap();
    let mut r = registry(name, url);
    r["credential"] = json!({"type": "basic", "username": USER, "password_file": pw});
    r
}

fn basic_required() -> Behavior {
    Behavior {
        require_basic: Some((USER.into(), PASSWORD.into())),
        ..Default::default()
    }
}

/// A fresh docker-registry `dst` and, in the returned directory, `ferry.json` syncing `src` (read
/// with the robot credential) into it.
async fn credentialed_source(src: &FakeRegistry) -> (Registry, tempfile::TempDir) {
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config_with(
        dir.path(),
        vec![
            with_credential(dir.path(), "src", &src.url()),
            registry("dst", &dst.url()),
        ],
        policy(json!({})),
    );
    (dst, dir)
}

/// The requests `fake` received that carried an `Authorization` header.
fn authorized(fake: &FakeRegistry) -> Vec<(String, String, Option<String>)> {
    fake.authorization_log()
        .into_iter()
        .filter(|(_, _, a)| a.is_some())
        .collect()
}

/// A client for `fake`, anonymous, as the library builds them.
fn client(fake: &FakeRegistry) -> RegistryClient {
    let cfg: RegistryConfig =
        serde_json::from_value(json!({"name": "src", "url": fake.url(), "insecure": true}))
            .unwrap();
    RegistryClient::new(&cfg, Secret::Anonymous).unwrap()
}

// ---- credentials stay on their origin ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_location_on_another_origin_gets_neither_credentials_nor_a_login() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    seed_image(&src, "team/app", "v1", vec![1u8; 4096]);
    let elsewhere = FakeRegistry::start(Behavior::default()).await.unwrap();
    let dst = FakeRegistry::start(Behavior {
        upload_location_origin: Some(elsewhere.url()),
        ..basic_required()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_with(
        dir.path(),
        vec![
            registry("src", &src.url()),
            with_credential(dir.path(), "dst", &dst.url()),
        ],
        policy(json!({})),
    );
    let (out, _) = sync(&cfg).await;
    assert_ne!(out.code, 101, "no panic: {}", out.stderr);
    assert!(
        elsewhere
            .request_log()
            .iter()
            .any(|(_, p)| p.contains("/blobs/uploads/")),
        "the session on the other origin was used: {:?}",
        elsewhere.request_log()
    );
    assert_eq!(
        authorized(&elsewhere),
        vec![],
        "the other origin never sees the destination's credentials"
    );
    assert!(
        authorized(&dst)
            .iter()
            .any(|(m, p, _)| m == "POST" && p.contains("/blobs/uploads/")),
        "the destination itself still gets them: {:?}",
        dst.authorization_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pagination_link_to_another_origin_is_followed_without_credentials() {
    let src = FakeRegistry::start(Behavior {
        max_page_size: Some(1),
        ..basic_required()
    })
    .await
    .unwrap();
    let elsewhere = FakeRegistry::start(Behavior::default()).await.unwrap();
    for fake in [&src, &elsewhere] {
        seed_image(fake, "team/app", "v1", vec![1u8; 100]);
        seed_image(fake, "team/app", "v2", vec![2u8; 100]);
    }
    src.set_behavior(|b| b.link_origin = Some(elsewhere.url()));
    let (_dst, dir) = credentialed_source(&src).await;
    let cfg = dir.path().join("ferry.json");
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(outcomes(&report, "copied"), 2, "{report:#}");
    assert!(
        elsewhere
            .request_log()
            .iter()
            .any(|(_, p)| p.contains("/tags/list")),
        "the Link was followed: {:?}",
        elsewhere.request_log()
    );
    assert_eq!(authorized(&elsewhere), vec![]);
    assert!(!authorized(&src).is_empty(), "the source still gets them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_redirected_to_another_origin_is_fetched_there_without_credentials() {
    let src = FakeRegistry::start(basic_required()).await.unwrap();
    let storage = FakeRegistry::start(Behavior::default()).await.unwrap();
    let (digest, layer) = seed_image(&src, "team/app", "v1", vec![3u8; 64 * 1024]);
    seed_image(&storage, "team/app", "v1", vec![3u8; 64 * 1024]);
    src.set_behavior(|b| b.redirect_blob_gets_to = Some(storage.url()));
    let (_dst, dir) = credentialed_source(&src).await;
    let cfg = dir.path().join("ferry.json");
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(report["tags"][0]["digest"], digest);
    assert!(
        storage
            .request_log()
            .iter()
            .any(|(m, p)| m == "GET" && p.ends_with(&format!("/blobs/{layer}"))),
        "the blob came from the redirect target: {:?}",
        storage.request_log()
    );
    assert_eq!(authorized(&storage), vec![]);
}

/// The redirect policy is Ferry's own (the https→http case is unit-tested in `oci::client`, the
/// fake serves no TLS): a redirect to a scheme other than http(s), or a chain longer than ten hops,
/// fails the tag with a refusal naming the registry, not a transport error to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_scheme_or_in_circles_is_refused() {
    for (target, expected) in [
        (None, "more than 10 redirects"),
        (Some("ftp://127.0.0.1:1"), "scheme \"ftp\""),
    ] {
        let src = FakeRegistry::start(Behavior::default()).await.unwrap();
        seed_image(&src, "team/app", "v1", vec![11u8; 1024]);
        let target = target.map_or_else(|| src.url(), str::to_owned);
        src.set_behavior(|b| b.redirect_blob_gets_to = Some(target));
        let dst = FakeRegistry::start(Behavior::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &src.url(), &dst.url(), json!({}));
        let (out, report) = sync(&cfg).await;
        assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
        let error = report["tags"][0]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("registry src")
                && error.contains("refusing to follow a redirect")
                && error.contains(expected),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_location_leaving_https_for_plain_http_is_refused() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let (_, layer) = seed_image(&src, "team/app", "v1", vec![4u8; 4096]);
    // A TLS registry whose external URL says http (a proxy misconfiguration, or an attacker's
    // answer): its upload Locations name http://.
    let dst = Registry::start_with(RegistryOptions {
        tls: true,
        advertised_scheme: Some("http"),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_with(
        dir.path(),
        vec![
            registry("src", &src.url()),
            json!({"name": "dst", "url": dst.url(), "ca_file": dst.ca_path().unwrap()}),
        ],
        policy(json!({})),
    );
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let error = report["tags"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("registry dst")
            && error.contains("refusing to follow an upload Location")
            && error.contains("plain http")
            && !error.contains("_state"),
        "{error}"
    );
    let log = dst.log_tail(200);
    assert!(
        !log.contains(&format!("digest={layer}")) && !log.contains(&layer.replace(':', "%3A")),
        "the blob was never sent to the session: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_realm_on_another_plain_http_origin_is_asked_without_credentials() {
    let tokens = FakeRegistry::start(Behavior {
        require_bearer: Some(BearerSetup {
            username: String::new(),
            password: String::new(),
            service: "fake".into(),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let src = FakeRegistry::start(Behavior {
        require_bearer: Some(BearerSetup {
            username: USER.into(),
            password: PASSWORD.into(),
            service: "fake".into(),
        }),
        token_realm: Some(format!("{}/token", tokens.url())),
        ..Default::default()
    })
    .await
    .unwrap();
    seed_image(&src, "team/app", "v1", vec![5u8; 100]);
    let (_dst, dir) = credentialed_source(&src).await;
    let cfg = dir.path().join("ferry.json");
    let out = sync_plain(&cfg).await;
    assert_ne!(out.code, 101, "no panic: {}", out.stderr);
    let asked: Vec<_> = tokens
        .authorization_log()
        .into_iter()
        .filter(|(_, p, _)| p.starts_with("/token"))
        .collect();
    assert!(!asked.is_empty(), "the realm was asked for a token");
    assert!(
        asked.iter().all(|(_, _, a)| a.is_none()),
        "no credentials to a plain-http realm elsewhere: {asked:?}"
    );
    assert_eq!(
        out.stderr
            .matches("token realm is plain http on another origin")
            .count(),
        1,
        "warned once per registry: {}",
        out.stderr
    );
}

// ---- nothing a registry sends makes Ferry panic ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_in_u64_max_is_used_and_capped_without_panicking() {
    let src = FakeRegistry::start(Behavior {
        require_bearer: Some(BearerSetup {
            username: USER.into(),
            password: PASSWORD.into(),
            service: "fake".into(),
        }),
        token_expires_in: Some(u64::MAX),
        ..Default::default()
    })
    .await
    .unwrap();
    let (digest, _) = seed_image(&src, "team/app", "v1", vec![6u8; 100]);
    let (_dst, dir) = credentialed_source(&src).await;
    let cfg = dir.path().join("ferry.json");
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(report["tags"][0]["digest"], digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_range_past_u64_max_fails_the_tag_naming_the_registry() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    seed_image(&src, "team/app", "v1", vec![7u8; 200 * 1024]);
    let dst = FakeRegistry::start(Behavior {
        patch_range: Some("0-18446744073709551615".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut dst_reg = registry("dst", &dst.url());
    dst_reg["chunk_size"] = json!(64 * 1024);
    let cfg = write_config_with(
        dir.path(),
        vec![registry("src", &src.url()), dst_reg],
        policy(json!({"copy_by_chunk": true})),
    );
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let error = report["tags"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("registry dst") && error.contains("overflows"),
        "{error}"
    );
    assert!(dst.manifest("team/app", "v1").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_descriptor_of_u64_max_bytes_fails_the_tag_without_panicking() {
    let src = FakeRegistry::start(Behavior::default()).await.unwrap();
    let config = src.put_blob(IMAGE_CONFIG.to_vec());
    let layer = src.put_blob(vec![8u8; 1000]);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": IMAGE_CONFIG.len()},
        "layers": [{"mediaType": LAYER, "digest": layer, "size": u64::MAX}]
    });
    src.put_manifest(
        "team/app",
        Some("v1"),
        OCI_MANIFEST,
        serde_json::to_vec(&manifest).unwrap(),
    );
    let dst = FakeRegistry::start(Behavior::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &src.url(), &dst.url(), json!({}));
    let (out, report) = sync(&cfg).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let error = report["tags"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("registry src") && error.contains(&layer),
        "{error}"
    );
    assert!(!dst.has_blob(&layer) && dst.manifest("team/app", "v1").is_none());
}

// ---- lists are bounded -----------------------------------------------------------------------

fn list_too_large(r: Result<Vec<String>, RegistryError>) -> String {
    match r {
        Err(e @ RegistryError::ListTooLarge { .. }) => e.to_string(),
        other => panic!("expected ListTooLarge, got {other:?}"),
    }
}

/// A fake answering `list` for `_catalog` and `tags/list`, holding `team/app:v1`, and a client.
async fn hostile(list: HostileList) -> (FakeRegistry, RegistryClient) {
    let fake = FakeRegistry::start(Behavior {
        hostile_lists: Some(list),
        ..Default::default()
    })
    .await
    .unwrap();
    seed_image(&fake, "team/app", "v1", vec![9u8; 10]);
    let client = client(&fake);
    (fake, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_tag_list_is_cut_off_at_a_million_entries() {
    let (fake, client) = hostile(HostileList::Endless { per_page: 1000 }).await;
    let e = list_too_large(client.list_tags("team/app").await);
    assert!(
        e.contains("registry src")
            && e.contains("the tag list of team/app")
            && e.contains(&format!("{MAX_LIST_ENTRIES} entries")),
        "{e}"
    );
    let pages = fake.request_log().len();
    assert!(pages <= MAX_LIST_ENTRIES / 1000 + 1, "{pages} pages read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_catalog_of_empty_pages_is_cut_off_at_the_page_limit() {
    let (fake, client) = hostile(HostileList::Endless { per_page: 0 }).await;
    let e = list_too_large(client.catalog().await);
    assert!(
        e.contains("registry src")
            && e.contains("the catalog")
            && e.contains(&format!("{MAX_LIST_PAGES} pages")),
        "{e}"
    );
    assert_eq!(fake.request_log().len(), MAX_LIST_PAGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_tag_list_page_is_cut_off_at_the_byte_limit() {
    let bytes = MAX_LIST_BYTES as usize + 1024;
    let (_fake, client) = hostile(HostileList::Oversized { bytes }).await;
    let e = list_too_large(client.list_tags("team/app").await);
    assert!(
        e.contains("registry src") && e.contains(&format!("{MAX_LIST_BYTES} bytes")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_list_linking_back_to_its_first_page_ends_there() {
    let (fake, client) = hostile(HostileList::LinkToFirst).await;
    seed_image(&fake, "team/app", "v2", vec![10u8; 10]);
    fake.clear_request_log();
    let tags = client.list_tags("team/app").await.unwrap();
    assert_eq!(tags, vec!["v1", "v2"]);
    assert_eq!(fake.request_log().len(), 1, "the first page is read once");
}
