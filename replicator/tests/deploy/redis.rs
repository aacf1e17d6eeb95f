//! The shipped deployment files (`deploy/`) keep the queue's password where it belongs: the
//! Valkey manifest's start command (run here with the local `valkey-server`) requires the Secret's
//! password, the URL the Ferry pods build from that Secret opens it, the NetworkPolicy admits only
//! the Ferry pods, and no systemd unit or manifest puts a Redis URL on a command line.
//!
//! The base manifests are read as text: the lines checked here are flow sequences of double-quoted
//! strings, which are JSON (the rendered overlays are parsed in [`super::kubernetes`]).

use std::time::Duration;

use ferry_replicator::backoff::RetryPolicy;
use ferry_replicator::store::queue::{JobQueue, RedisQueue};
use ferry_replicator::store::redis::{connect_waiting, RedisTarget};

use super::read;

/// The JSON value after `key` on the first line of `text` holding `marker`.
fn value_on_line(text: &str, marker: &str, key: &str) -> serde_json::Value {
    let line = text
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no line with {marker:?}"));
    let start = line.find(key).expect("key on the line") + key.len();
    let mut stream = serde_json::Deserializer::from_str(&line[start..]).into_iter();
    stream
        .next()
        .expect("a value")
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// `FERRY_REDIS_URL` as the agent or worker manifest builds it.
fn manifest_url(file: &str) -> String {
    let value = value_on_line(&read(file), "name: FERRY_REDIS_URL", "value: ");
    value.as_str().expect("a string").to_string()
}

#[tokio::test]
async fn the_valkey_manifest_requires_the_secret_password_that_the_ferry_pods_use() {
    let valkey = read("kubernetes/base/valkey.yaml");
    let command: Vec<String> =
        serde_json::from_value(value_on_line(&valkey, "command: [\"sh\"", "command: ")).unwrap();
    assert_eq!(command[..2], ["sh", "-c"], "{command:?}");
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let password = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let _server = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir.path())
        .args(["--appendonly", "no", "--save", ""])
        .env("VALKEY_PASSWORD", password)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run the manifest's valkey command (valkey-server on PATH)");

    let url = manifest_url("kubernetes/base/agent.yaml");
    assert_eq!(url, manifest_url("kubernetes/base/worker.yaml"));
    let url = url
        .replace("$(VALKEY_PASSWORD)", password)
        .replace("valkey:6379", &format!("127.0.0.1:{port}"));
    let target = RedisTarget::new(&url).unwrap();
    let queue = connect_waiting(
        &target,
        Duration::from_secs(10),
        Duration::from_millis(50),
        std::future::pending(),
        || RedisQueue::connect_to(&target, "ferry", RetryPolicy::default()),
    )
    .await
    .expect("the URL built from the Secret opens the manifest's Valkey");
    queue.stats().await.unwrap();

    let anonymous = RedisQueue::connect(
        &format!("redis://127.0.0.1:{port}"),
        "ferry",
        RetryPolicy::default(),
    )
    .await
    .err()
    .expect("a client without the password is refused");
    assert!(anonymous.to_string().contains("NOAUTH"), "{anonymous}");
}

#[test]
fn the_valkey_network_policy_admits_only_the_ferry_pods() {
    let valkey = read("kubernetes/base/valkey.yaml");
    assert!(valkey.contains("kind: NetworkPolicy"));
    let admitted: Vec<String> =
        serde_json::from_value(value_on_line(&valkey, "operator: In", "values: ")).unwrap();
    let app = |file: &str| {
        let text = read(file);
        let line = text
            .lines()
            .find(|l| l.contains("matchLabels: {app: "))
            .unwrap();
        line.split("app: ")
            .nth(1)
            .unwrap()
            .trim_end_matches('}')
            .to_string()
    };
    assert_eq!(
        admitted,
        [
            app("kubernetes/base/agent.yaml"),
            app("kubernetes/base/worker.yaml")
        ]
    );
}

#[test]
fn no_shipped_unit_or_manifest_puts_a_redis_url_on_the_command_line() {
    for file in [
        "systemd/ferry-agent.service",
        "systemd/ferry-worker@.service",
        "kubernetes/base/agent.yaml",
        "kubernetes/base/worker.yaml",
    ] {
        let text = read(file);
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let on_argv = line.contains("ExecStart=") || line.contains("args: [");
            assert!(
                !(on_argv && (line.contains("--redis ") || line.contains("\"--redis\""))),
                "deploy/{file}: {line}"
            );
        }
        if file.starts_with("systemd/") {
            assert!(
                text.contains("LoadCredential=redis-url:/etc/ferry/redis-url"),
                "{file}"
            );
            assert!(text.contains("--redis-url-file %d/redis-url"), "{file}");
        }
    }
}
