//! `ferry admin` (the gRPC admin client) against a real `ferry serve --admin-listen` replicating
//! between two real registries: tables and JSON output, drift, exit codes for every failure class.
mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WEBHOOK_TOKEN: &str = "admin-cli-webhook-token";
const ADMIN_TOKEN: &str = "admin-cli-admin-token";

/// `ferry admin --endpoint http://ENDPOINT --token-file TOKEN_FILE ARGS...`.
async fn admin(endpoint: &str, token_file: &Path, args: &[&str]) -> Output {
    let endpoint = format!("http://{endpoint}");
    let mut all = vec![
        "admin",
        "--endpoint",
        &endpoint,
        "--token-file",
        token_file.to_str().expect("utf8"),
    ];
    all.extend_from_slice(args);
    ferry(&all).await
}

fn describe(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.code, out.stdout, out.stderr
    )
}

/// The succeeded event-based execution of `team/app`, once the history shows it.
async fn succeeded_execution(endpoint: &str, token: &Path) -> Option<Value> {
    let out = admin(endpoint, token, &["executions", "list", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    let list = out.json()["executions"].as_array().cloned()?;
    list.into_iter().find(|e| {
        e["policy"] == "test"
            && e["state"] == "succeeded"
            && e["trigger"] == "event_based"
            && e["origin"]["repository"] == "team/app"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_against_ferry_serve() {
    let listen = free_local_addr();
    let endpoint = free_local_addr();
    let RegistryPair {
        src,
        dst,
        dir,
        config: cfg,
    } = registry_pair(
        Some(&listen),
        WEBHOOK_TOKEN,
        json!({"trigger": {"type": "event_based"}}),
    )
    .await;
    // The client reads the first non-empty line, trimmed.
    let token = dir.path().join("admin.token");
    std::fs::write(&token, format!("\n  {ADMIN_TOKEN} \nignored\n")).unwrap();
    let wrong_token = dir.path().join("wrong.token");
    std::fs::write(&wrong_token, "not-the-token\n").unwrap();

    let mut serve = Serve::start_with(
        &cfg,
        &listen,
        WEBHOOK_TOKEN,
        &["--admin-listen", &endpoint],
        &[("FERRY_ADMIN_TOKEN", ADMIN_TOKEN)],
        dir.path().join("serve.log"),
    )
    .await;
    let up = eventually(Duration::from_secs(10), || async {
        admin(&endpoint, &token, &["queue"]).await.code == 0
    })
    .await;
    assert!(up, "the admin API did not answer:\n{}", serve.log());

    // Replicate one image through the registry's own notification.
    let digest = push_image(dir.path(), 71, &src.host(), "team/app:v1").await;
    let arrived = eventually(Duration::from_secs(30), || async {
        manifest_status(&dst.url(), "team/app", "v1").await == 200
    })
    .await;
    assert!(arrived, "not replicated:\n{}", serve.log());

    // Policies: the table and the JSON document.
    let out = admin(&endpoint, &token, &["policies", "list"]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("test "))
        .unwrap_or_default();
    assert!(
        row.contains("event_based") && row.contains("src") && row.contains("dst"),
        "{}",
        describe(&out)
    );
    let out = admin(
        &endpoint,
        &token,
        &["policies", "get", "test", "-o", "json"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    let p = out.json();
    assert_eq!(p["trigger"], "event_based");
    assert_eq!(p["source"], "config");
    assert_eq!(p["json"]["src_registry"]["name"], "src", "{p}");
    let out = admin(&endpoint, &token, &["policies", "get", "NOPE"]).await;
    assert_eq!(out.code, 4, "{}", describe(&out));
    assert!(
        out.stderr
            .starts_with("error: get policy NOPE (NOT_FOUND): "),
        "{}",
        describe(&out)
    );

    // Registries.
    let out = admin(&endpoint, &token, &["registries", "ping", "src"]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    assert!(
        out.stdout
            .lines()
            .any(|l| l.split_whitespace().eq(["reachable", "yes"])),
        "{}",
        describe(&out)
    );
    let out = admin(&endpoint, &token, &["registries", "list", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    assert_eq!(out.json()["registries"].as_array().map(Vec::len), Some(2));

    // Executions and tasks: the job that copied the image.
    let mut execution = None;
    for _ in 0..150 {
        execution = succeeded_execution(&endpoint, &token).await;
        if execution.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        execution.is_some(),
        "no succeeded execution listed:\n{}",
        serve.log()
    );
    let id = execution.unwrap()["id"].as_str().unwrap().to_string();
    let out = admin(&endpoint, &token, &["executions", "get", &id]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    assert!(
        out.stdout
            .lines()
            .any(|l| l.split_whitespace().eq(["state", "succeeded"])),
        "{}",
        describe(&out)
    );
    let out = admin(&endpoint, &token, &["tasks", &id, "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    let tasks = out.json()["tasks"].as_array().cloned().unwrap_or_default();
    assert!(
        tasks.iter().any(|t| t["outcome"] == "copied"
            && t["state"] == "succeeded"
            && t["destination"] == "dst"
            && t["digest"] == digest.as_str()
            && t["bytes_done"].as_u64() > Some(0)),
        "{}",
        describe(&out)
    );
    let out = admin(
        &endpoint,
        &token,
        &["executions", "get", "no-such-execution"],
    )
    .await;
    assert_eq!(out.code, 4, "{}", describe(&out));

    // Drift: none, then a tag deleted on the destination behind Ferry's back.
    let out = admin(&endpoint, &token, &["diff", "test"]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    assert!(out.stdout.contains("no drift"), "{}", describe(&out));
    let deleted = reqwest::Client::new()
        .delete(format!("{}/v2/team/app/manifests/{digest}", dst.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 202);
    let out = admin(&endpoint, &token, &["diff", "test"]).await;
    assert_eq!(out.code, 1, "{}", describe(&out));
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("missing") && l.contains("team/app")),
        "{}",
        describe(&out)
    );
    let out = admin(&endpoint, &token, &["diff", "test", "-o", "json"]).await;
    assert_eq!(out.code, 1, "{}", describe(&out));
    let entries = out.json();
    assert_eq!(entries.as_array().map(Vec::len), Some(1), "{entries}");
    assert_eq!(entries[0]["kind"], "missing");
    assert_eq!(entries[0]["tag"], "v1");
    assert_eq!(entries[0]["source_digest"], digest.as_str());

    // Operations.
    let out = admin(&endpoint, &token, &["queue", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    assert_eq!(out.json()["depth"], 0, "{}", describe(&out));
    let out = admin(&endpoint, &token, &["workers"]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    assert_eq!(
        out.stdout.lines().count(),
        2,
        "header + one worker:\n{}",
        describe(&out)
    );
    assert!(out.stdout.contains("s ago"), "{}", describe(&out));
    let out = admin(&endpoint, &token, &["dead-letters", "list", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    assert_eq!(out.json()["jobs"], json!([]));

    // An invalid policy is refused with the server's message (exit 2).
    let bad = dir.path().join("bad-policy.json");
    std::fs::write(&bad, r#"[{"name": "bad", "mode": "sideways"}]"#).unwrap();
    let out = admin(
        &endpoint,
        &token,
        &["policies", "apply", "-f", bad.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.code, 2, "{}", describe(&out));
    assert!(
        out.stderr.starts_with("error: apply policy bad ("),
        "{}",
        describe(&out)
    );
    // A valid policy file is applied, listed as stored through the API, and deleted again.
    let good = dir.path().join("good-policy.json");
    std::fs::write(
        &good,
        json!({"name": "from-cli", "src_registry": {"name": "src"}, "dest_registry": {"name": "dst"}})
            .to_string(),
    )
    .unwrap();
    let out = admin(
        &endpoint,
        &token,
        &["policies", "apply", "-f", good.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    let out = admin(
        &endpoint,
        &token,
        &["policies", "get", "from-cli", "-o", "json"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    assert_eq!(out.json()["source"], "api", "{}", describe(&out));
    let out = admin(&endpoint, &token, &["policies", "delete", "from-cli"]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    // The config-file policy can be disabled and enabled again (its file stays read-only).
    let out = admin(&endpoint, &token, &["policies", "disable", "test"]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    let out = admin(
        &endpoint,
        &token,
        &["policies", "get", "test", "-o", "json"],
    )
    .await;
    assert_eq!(out.json()["enabled"], false, "{}", describe(&out));
    let out = admin(&endpoint, &token, &["policies", "delete", "test"]).await;
    assert_eq!(out.code, 2, "read-only: {}", describe(&out));
    let out = admin(&endpoint, &token, &["policies", "enable", "test"]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));

    // A watched manual run repairs the drift and exits 0.
    let out = admin(&endpoint, &token, &["run", "test", "--watch"]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(
        last.contains("(policy test): succeeded, tasks 1 succeeded, 0 failed"),
        "{}",
        describe(&out)
    );
    let out = admin(&endpoint, &token, &["diff", "test"]).await;
    assert_eq!(
        out.code,
        0,
        "the run repaired the drift:\n{}",
        describe(&out)
    );
    // Started, then watched as JSON: one array of snapshots, the last one final.
    let out = admin(&endpoint, &token, &["run", "test", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    let run = out.json();
    assert_eq!(run["trigger"], "manual", "{run}");
    let id = run["id"].as_str().unwrap_or_default();
    let out = admin(
        &endpoint,
        &token,
        &["executions", "watch", id, "-o", "json"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    let snapshots = out.json();
    let last = snapshots
        .as_array()
        .and_then(|s| s.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["execution"]["state"], "succeeded", "{snapshots}");

    // Authentication.
    let out = admin(&endpoint, &wrong_token, &["policies", "list"]).await;
    assert_eq!(out.code, 3, "{}", describe(&out));
    assert!(
        out.stderr.contains("(UNAUTHENTICATED)"),
        "{}",
        describe(&out)
    );

    let status = serve.terminate().await;
    assert!(status.success(), "{status}\n{}", serve.log());
}

#[tokio::test]
async fn admin_cli_local_failures() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "t\n").unwrap();

    // Nothing listens: UNAVAILABLE, naming the endpoint.
    let nobody = free_local_addr();
    let out = admin(&nobody, &token, &["policies", "list"]).await;
    assert_eq!(out.code, 5, "{}", describe(&out));
    assert!(
        out.stderr.starts_with(&format!(
            "error: cannot connect to http://{nobody} (UNAVAILABLE): "
        )),
        "{}",
        describe(&out)
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", describe(&out));

    // A missing token file is named, before any connection.
    let missing = dir.path().join("missing.token");
    let out = admin(&nobody, &missing, &["queue"]).await;
    assert_eq!(out.code, 2, "{}", describe(&out));
    assert!(
        out.stderr.contains(missing.to_str().unwrap()),
        "{}",
        describe(&out)
    );

    // A bad apply file is reported before any connection.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let out = admin(
        &nobody,
        &token,
        &["policies", "apply", "-f", bad.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.code, 2, "{}", describe(&out));
    assert!(
        out.stderr.contains("bad.json: not JSON"),
        "{}",
        describe(&out)
    );

    // Usage errors, and the exit codes documented in --help.
    let out = ferry(&[
        "admin",
        "--endpoint",
        &nobody,
        "executions",
        "list",
        "--state",
        "done",
    ])
    .await;
    assert_eq!(out.code, 2, "{}", describe(&out));
    let out = ferry(&["admin", "--help"]).await;
    assert_eq!(out.code, 0, "{}", describe(&out));
    assert!(out.stdout.contains("Exit codes:") && out.stdout.contains("5  UNAVAILABLE"));
}
