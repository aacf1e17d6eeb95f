//! The harness against the real binaries: fixtures pushed to a real
//! `docker-registry` with skopeo come back byte for byte; the registry's
//! notification config delivers events; Redis starts, answers and survives a
//! restart; and skopeo accepts the fake registry as a registry.

use std::time::Duration;

use ferry_testkit::fixtures::{media_types, Blob};
use ferry_testkit::{
    sha256_digest, skopeo, BearerSetup, Behavior, FakeRegistry, LayerSpec, LayoutBuilder,
    RedisServer, Registry, RegistryOptions,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

struct Fixture {
    _dir: tempfile::TempDir,
    layout: std::path::PathBuf,
    image: Blob,
    index: Blob,
    sbom: Blob,
}

/// An image (a shared base layer + its own), a two-platform index whose
/// children share the same base, and an SBOM artifact about the image.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut b = LayoutBuilder::new(dir.path()).unwrap();
    let base = LayerSpec {
        seed: 1,
        size: 256 * 1024,
    };
    let image = b
        .image(
            "img",
            &[
                base,
                LayerSpec {
                    seed: 2,
                    size: 64 * 1024,
                },
            ],
        )
        .unwrap();
    let amd64 = b
        .image_for_platform(
            "linux",
            "amd64",
            None,
            &[
                base,
                LayerSpec {
                    seed: 3,
                    size: 1000,
                },
            ],
        )
        .unwrap();
    let arm64 = b
        .image_for_platform(
            "linux",
            "arm64",
            Some("v8"),
            &[
                base,
                LayerSpec {
                    seed: 4,
                    size: 1000,
                },
            ],
        )
        .unwrap();
    let index = b
        .index(
            "multi",
            &[
                (amd64, "linux", "amd64", None),
                (arm64, "linux", "arm64", Some("v8")),
            ],
        )
        .unwrap();
    let sbom = b
        .artifact(
            "sbom",
            "application/vnd.example.sbom.v1",
            br#"{"spdxVersion":"SPDX-2.3"}"#,
            "application/spdx+json",
            Some(&image),
        )
        .unwrap();
    let layout = b.finish().unwrap();
    Fixture {
        _dir: dir,
        layout,
        image,
        index,
        sbom,
    }
}

/// The referrers tag-scheme tag for `subject` (`sha256-<hex>`), where
/// registries without the referrers API keep artifacts.
fn referrers_tag(subject: &Blob) -> String {
    subject.digest.replace(':', "-")
}

#[tokio::test]
async fn fixtures_round_trip_through_a_real_registry() {
    let registry = Registry::start().await.unwrap();
    let host = registry.host();
    let f = fixture();
    let sbom_tag = referrers_tag(&f.image);

    skopeo::push_layout(&f.layout, "img", &host, "team/app:v1")
        .await
        .unwrap();
    skopeo::push_layout(&f.layout, "multi", &host, "team/app:multi")
        .await
        .unwrap();
    skopeo::push_layout(&f.layout, "sbom", &host, &format!("team/app:{sbom_tag}"))
        .await
        .unwrap();

    for (reference, blob) in [
        ("team/app:v1".to_owned(), &f.image),
        ("team/app:multi".to_owned(), &f.index),
        (format!("team/app:{sbom_tag}"), &f.sbom),
        (format!("team/app@{}", f.index.digest), &f.index),
    ] {
        let raw = skopeo::inspect_raw(&host, &reference).await.unwrap();
        assert_eq!(sha256_digest(&raw), blob.digest, "{reference}");
        assert_eq!(raw.len() as u64, blob.size, "{reference}");
    }
    let sbom: serde_json::Value = serde_json::from_slice(
        &skopeo::inspect_raw(&host, &format!("team/app:{sbom_tag}"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sbom["artifactType"], "application/vnd.example.sbom.v1");
    assert_eq!(sbom["config"]["mediaType"], media_types::OCI_EMPTY);
    assert_eq!(sbom["subject"]["digest"], f.image.digest.as_str());

    // index + 2 manifests + 2 configs + shared base + 2 own layers.
    assert_eq!(
        skopeo::pull_and_verify(&host, "team/app:multi")
            .await
            .unwrap(),
        8
    );
    let by_digest = format!("team/app@{}", f.image.digest);
    assert_eq!(skopeo::pull_and_verify(&host, &by_digest).await.unwrap(), 4);

    let mut tags = skopeo::tags(&host, "team/app").await.unwrap();
    tags.sort();
    let mut want = vec!["multi".to_owned(), sbom_tag, "v1".to_owned()];
    want.sort();
    assert_eq!(tags, want);

    // The data survives a crash and restart on the same port.
    let mut registry = registry;
    registry.kill().await;
    assert!(skopeo::inspect_raw(&host, "team/app:v1").await.is_err());
    registry.restart().await.unwrap();
    let raw = skopeo::inspect_raw(&host, "team/app:v1").await.unwrap();
    assert_eq!(sha256_digest(&raw), f.image.digest);
    assert!(registry
        .data_dir()
        .join("docker/registry/v2/repositories/team/app")
        .is_dir());
    registry.stop().await;
}

#[tokio::test]
async fn registry_delivers_notifications_with_the_token() {
    // A bare-bones webhook: one request per connection, answers 200.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let webhook = format!(
        "http://{}/v1/events/distribution",
        listener.local_addr().unwrap()
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Read until the body is complete (Content-Length).
                loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                }
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
            });
        }
    });

    let registry = Registry::start_with(RegistryOptions {
        notifications_url: Some(webhook),
        notifications_token: Some("t0ken".into()),
        ..RegistryOptions::default()
    })
    .await
    .unwrap();
    let f = fixture();
    skopeo::push_layout(&f.layout, "img", &registry.host(), "notify/me:v1")
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let request = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no manifest push event within 10 s")
            .unwrap();
        let lower = request.to_ascii_lowercase();
        assert!(lower.contains("authorization: bearer t0ken"), "{request}");
        let body = request.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let envelope: serde_json::Value = serde_json::from_str(body).unwrap();
        let events = envelope["events"].as_array().unwrap();
        assert!(
            events
                .iter()
                .all(|e| e["target"]["mediaType"] != "application/octet-stream"),
            "blob events must be ignored: {body}"
        );
        if events.iter().any(|e| {
            e["action"] == "push"
                && e["target"]["digest"] == f.image.digest.as_str()
                && e["target"]["tag"] == "v1"
        }) {
            break;
        }
    }
}

#[tokio::test]
async fn registry_start_failure_reports_its_log() {
    let err = Registry::start_with(RegistryOptions {
        log_level: "shouting",
        ..RegistryOptions::default()
    })
    .await
    .err()
    .expect("a bogus log level must fail")
    .to_string();
    assert!(err.contains("docker-registry"), "{err}");
    assert!(
        err.contains("shouting"),
        "the log tail should say why: {err}"
    );
}

async fn ping(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn redis_starts_answers_and_restarts() {
    let mut redis = RedisServer::start(true).await.unwrap();
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
    assert_eq!(ping(redis.port()).await, "+PONG\r\n");

    // A write, fsynced to the AOF, survives kill -9.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", redis.port()))
        .await
        .unwrap();
    s.write_all(b"SET ferry ok\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"+OK\r\n");
    tokio::time::sleep(Duration::from_millis(1200)).await; // appendfsync everysec
    redis.kill().await;
    redis.restart().await.unwrap();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", redis.port()))
        .await
        .unwrap();
    s.write_all(b"GET ferry\r\n").await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"$2\r\nok\r\n");
    assert!(redis.data_dir().join("appendonlydir").is_dir());
    redis.stop().await;
}

#[tokio::test]
async fn skopeo_treats_the_fake_as_a_registry() {
    let fake = FakeRegistry::start(Behavior::default()).await.unwrap();
    let host = fake.host();
    let f = fixture();
    skopeo::push_layout(&f.layout, "multi", &host, "fake/app:multi")
        .await
        .unwrap();
    skopeo::push_layout(&f.layout, "sbom", &host, "fake/app:sbom")
        .await
        .unwrap();
    assert_eq!(
        sha256_digest(&skopeo::inspect_raw(&host, "fake/app:multi").await.unwrap()),
        f.index.digest
    );
    assert_eq!(
        fake.manifest("fake/app", "sbom")
            .map(|(_, b)| sha256_digest(&b)),
        Some(f.sbom.digest.clone())
    );
    assert_eq!(
        skopeo::pull_and_verify(&host, "fake/app:multi")
            .await
            .unwrap(),
        8
    );
    assert_eq!(
        skopeo::tags(&host, "fake/app").await.unwrap(),
        vec!["multi", "sbom"]
    );

    // A corrupted layer is caught by skopeo's own digest check.
    let index: serde_json::Value =
        serde_json::from_slice(&fake.manifest("fake/app", "multi").unwrap().1).unwrap();
    let child = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fake.manifest("fake/app", child).unwrap().1).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    fake.set_behavior(|b| {
        b.corrupt_blobs.insert(layer.clone());
    });
    let err = skopeo::pull_and_verify(&host, "fake/app:multi")
        .await
        .unwrap_err()
        .to_string();
    // skopeo's own verdict, naming the corrupted layer (the echoed command holds neither).
    assert!(err.contains("did not match"), "{err}");
    assert!(err.contains(&layer), "{err}");
}

#[tokio::test]
async fn skopeo_logs_in_to_a_bearer_protected_fake() {
    let fake = FakeRegistry::start(Behavior {
        require_bearer: Some(BearerSetup {
            username: "ci".into(),
            password: "pw".into(),
            service: "fake".into(),
        }),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let f = fixture();
    let layout = format!("oci:{}:img", f.layout.display());
    let dest = format!("docker://{}/locked/app:v1", fake.host());
    let err = skopeo::run([
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &layout,
        &dest,
    ])
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("401") || err.to_lowercase().contains("unauthorized"),
        "{err}"
    );
    skopeo::run([
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        "ci:pw",
        &layout,
        &dest,
    ])
    .await
    .unwrap();
    assert_eq!(
        fake.manifest("locked/app", "v1")
            .map(|(_, b)| sha256_digest(&b)),
        Some(f.image.digest.clone())
    );
    assert!(fake
        .request_log()
        .iter()
        .any(|(_, p)| p.starts_with("/token?")));
}

/// `storage_tmpfs`: a filled disk refuses pushes until it is freed, then the same push succeeds.
#[tokio::test]
async fn a_registry_on_a_filled_tmpfs_refuses_pushes_until_it_is_freed() {
    let Some(registry) = tmpfs_registry().await else {
        return;
    };
    let f = fixture();
    registry.fill_disk().unwrap();
    let refused = skopeo::push_layout(&f.layout, "img", &registry.host(), "team/app:v1").await;
    assert!(refused.is_err(), "a push to a full disk succeeded");
    registry.free_disk().await.unwrap();
    skopeo::push_layout(&f.layout, "img", &registry.host(), "team/app:v1")
        .await
        .unwrap();
    let raw = skopeo::inspect_raw(&registry.host(), "team/app:v1")
        .await
        .unwrap();
    assert_eq!(sha256_digest(&raw), f.image.digest);
}

/// A layer `link` left empty by a write that hit the full disk (seen in the chaos oracle, seed
/// 0x2a) makes distribution answer 500 to every `HEAD` of that blob in that repository, so a
/// retrying client never gets through; freeing the disk removes it, and the push goes through.
#[tokio::test]
async fn seed_0x2a_freeing_a_filled_disk_removes_the_empty_links_it_left() {
    let Some(mut registry) = tmpfs_registry().await else {
        return;
    };
    let f = fixture();
    skopeo::push_layout(&f.layout, "img", &registry.host(), "team/app:v1")
        .await
        .unwrap();
    let layers = registry
        .data_dir()
        .join("docker/registry/v2/repositories/team/app/_layers/sha256");
    let hex = std::fs::read_dir(&layers)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let layer = format!("sha256:{}", hex.to_string_lossy());
    let link = layers.join(&hex).join("link");
    std::fs::write(&link, b"").unwrap();
    // A restart forgets the blob descriptors distribution caches in memory.
    registry.restart().await.unwrap();
    let url = format!("http://{}/v2/team/app/blobs/{layer}", registry.host());
    let head = |url: String| async move {
        reqwest::Client::new()
            .head(url)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(
        head(url.clone()).await,
        500,
        "an empty link did not break the blob"
    );
    registry.fill_disk().unwrap();
    let removed = registry.free_disk().await.unwrap();
    assert_eq!(removed, vec![link]);
    assert_eq!(head(url).await, 404);
    skopeo::push_layout(&f.layout, "img", &registry.host(), "team/app:v2")
        .await
        .unwrap();
}

/// A registry whose storage is a 64 MiB tmpfs; `None` (the test skipped) unless root.
async fn tmpfs_registry() -> Option<Registry> {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return None;
    }
    Some(
        Registry::start_with(RegistryOptions {
            storage_tmpfs: Some(64 * 1024 * 1024),
            ..RegistryOptions::default()
        })
        .await
        .unwrap(),
    )
}

/// Whether this process runs as root (`id -u` is 0).
fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `Netns::limit_bandwidth` puts a token bucket of the given rate on both ends of the veth, and
/// `clear_bandwidth` removes both (this kernel has no netem; `tbf` is what caps links).
#[test]
fn a_bandwidth_cap_is_a_token_bucket_on_both_ends_of_the_veth_until_cleared() {
    let Some(ns) = netns_or_skip("ferry-tbf-test", 249) else {
        return;
    };
    let qdiscs = |inside: bool| {
        let mut cmd = std::process::Command::new("ip");
        if inside {
            cmd.args([
                "netns",
                "exec",
                "ferry-tbf-test",
                "tc",
                "qdisc",
                "show",
                "dev",
                "fr249n",
            ]);
        } else {
            cmd = std::process::Command::new("tc");
            cmd.args(["qdisc", "show", "dev", "fr249r"]);
        }
        String::from_utf8(cmd.output().unwrap().stdout).unwrap()
    };
    ns.limit_bandwidth(2000).unwrap();
    for inside in [false, true] {
        let shown = qdiscs(inside);
        assert!(
            shown.contains("tbf") && shown.contains("rate 2Mbit"),
            "{shown}"
        );
    }
    ns.limit_bandwidth(8000).unwrap();
    assert!(
        qdiscs(false).contains("rate 8Mbit"),
        "a second cap replaces the first"
    );
    ns.clear_bandwidth().unwrap();
    for inside in [false, true] {
        assert!(!qdiscs(inside).contains("tbf"), "{}", qdiscs(inside));
    }
    ns.clear_bandwidth().unwrap();
    assert!(ns.limit_bandwidth(0).is_err());
}

/// A manifest cut short by the full disk (seen in the chaos oracle, seed 0x5eed0013): a later push
/// of the same content finds the file and answers 201 without writing it again, and reads answer
/// 500. Freeing the disk removes it, so the next push writes it whole.
#[tokio::test]
async fn seed_5eed0013_freeing_a_filled_disk_removes_the_blobs_it_cut_short() {
    let Some(registry) = tmpfs_registry().await else {
        return;
    };
    let f = fixture();
    skopeo::push_layout(&f.layout, "img", &registry.host(), "team/app:v1")
        .await
        .unwrap();
    let hex = f.image.digest.trim_start_matches("sha256:");
    let data = registry
        .data_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let whole = std::fs::read(&data).unwrap();
    registry.fill_disk().unwrap();
    std::fs::write(&data, &whole[..whole.len() / 2]).unwrap();
    let removed = registry.free_disk().await.unwrap();
    assert_eq!(removed, vec![data.clone()]);
    skopeo::push_layout(&f.layout, "img", &registry.host(), "team/app:v2")
        .await
        .unwrap();
    assert_eq!(std::fs::read(&data).unwrap(), whole);
    let raw = skopeo::inspect_raw(&registry.host(), "team/app:v2")
        .await
        .unwrap();
    assert_eq!(sha256_digest(&raw), f.image.digest);
}

/// A port held for a host in a network namespace is picked by that namespace's own network stack,
/// so no server in the namespace can take it meanwhile (picked on this machine's loopback instead,
/// a worker was once given the port its region's agent already listened on, and the agent answered
/// the worker's readiness probe: `bidirectional_regions_converge_without_echo_and_settle_conflicts`
/// waited in vain); released, it is free there.
#[test]
fn a_port_held_for_a_namespace_host_is_taken_inside_that_namespace() {
    let Some(ns) = netns_or_skip("ferry-port-test", 248) else {
        return;
    };
    let host = ns.host();
    let (held, port) = host.hold_port().unwrap();
    let err = host
        .bind(port)
        .expect_err("the held port is taken inside the namespace");
    let kind = err.downcast_ref::<std::io::Error>().map(|e| e.kind());
    assert_eq!(kind, Some(std::io::ErrorKind::AddrInUse), "{err:#}");
    drop(held);
    host.bind(port)
        .expect("released, the port is free inside the namespace");
}

/// A fresh namespace `name` (subnet `index`), or `None` (the test is skipped) without root.
fn netns_or_skip(name: &str, index: u8) -> Option<ferry_testkit::Netns> {
    if !ferry_testkit::Netns::available() {
        eprintln!("skipped: network namespaces need root");
        return None;
    }
    Some(ferry_testkit::Netns::create(name, index).unwrap())
}
