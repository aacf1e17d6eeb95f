//! Registries stored through the admin API may only use the credential references the operator
//! allowed at start-up (`--credentials-dir`, `FERRY_CRED_*`, the config file's own references for
//! their own origin): an admin token is not worth the process's secrets. Each test runs a real
//! `ferry serve` and a listener of an attacker's that records every byte it is sent; a refused
//! registry must never make Ferry connect there.
mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;

const WEBHOOK_TOKEN: &str = "credentials-test-webhook";
const ADMIN_TOKEN: &str = "credentials-test-admin";
/// The password of the config file's registry, in the environment of `ferry serve`.
const SRC_PASSWORD: &str = "config-registry-s3cret";

/// A TCP listener that records everything sent to it (and answers nothing useful).
struct Trap {
    addr: String,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Trap {
    async fn start() -> Trap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            while let Ok((mut socket, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        sink.lock().unwrap().extend_from_slice(&buf[..n]);
                        let _ = socket
                            .write_all(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"trap\"\r\nContent-Length: 0\r\n\r\n")
                            .await;
                    }
                });
            }
        });
        Trap { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }
}

/// `ferry serve` with an admin API, a config whose one registry `src` authenticates with
/// `FERRY_SRC_PASSWORD`, and `--credentials-dir <dir>/allowed`.
struct Fixture {
    dir: tempfile::TempDir,
    admin: String,
    src_url: String,
    _serve: Serve,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(allowed.join("robot-password"), "allowed-s3cret\n").unwrap();
        std::fs::write(dir.path().join("outside-secret"), "outside-s3cret\n").unwrap();
        let src_url = format!("http://{}", free_local_addr());
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            json!({"registries": [{"name": "src", "url": src_url, "insecure": true,
                "credential": {"type": "basic", "username": "robot", "password_env": "FERRY_SRC_PASSWORD"}}],
                "policies": []})
            .to_string(),
        )
        .unwrap();
        let (listen, admin) = (free_local_addr(), free_local_addr());
        let serve = Serve::start_with(
            &config,
            &listen,
            WEBHOOK_TOKEN,
            &[
                "--admin-listen",
                &admin,
                "--credentials-dir",
                allowed.to_str().unwrap(),
            ],
            &[
                ("FERRY_ADMIN_TOKEN", ADMIN_TOKEN),
                ("FERRY_SRC_PASSWORD", SRC_PASSWORD),
                ("FERRY_CRED_ROBOT", "env-s3cret"),
            ],
            dir.path().join("serve.log"),
        )
        .await;
        Fixture {
            dir,
            admin,
            src_url,
            _serve: serve,
        }
    }

    fn allowed(&self) -> PathBuf {
        self.dir.path().join("allowed")
    }

    /// Runs `ferry admin <args>` against the fixture's admin API.
    async fn admin(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["admin", "--endpoint", &format!("http://{}", self.admin)])
            .args(args)
            .env("FERRY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("FERRY_LOG", "warn")
            .output()
            .await
            .unwrap()
    }

    /// `ferry admin registries apply` of one registry named `name` at `url` with `credential`.
    async fn apply(&self, name: &str, url: &str, credential: serde_json::Value) -> Applied {
        let file = self.dir.path().join(format!("{name}.json"));
        std::fs::write(
            &file,
            json!({"name": name, "url": url, "insecure": true, "credential": credential})
                .to_string(),
        )
        .unwrap();
        let out = self
            .admin(&["registries", "apply", "-f", file.to_str().unwrap()])
            .await;
        Applied {
            accepted: out.status.success(),
            said: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// `ferry admin registries ping <name>`'s output.
    async fn ping(&self, name: &str) -> String {
        let out = self.admin(&["registries", "ping", name]).await;
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

struct Applied {
    accepted: bool,
    said: String,
}

fn basic_file(path: &Path) -> serde_json::Value {
    json!({"type": "basic", "username": "robot", "password_file": path})
}

fn basic_env(var: &str) -> serde_json::Value {
    json!({"type": "basic", "username": "robot", "password_env": var})
}

/// Applies a registry at the attacker's `trap` with `credential` and asserts it was refused naming
/// `field` and `rule`, was not stored, and made Ferry send the trap nothing.
async fn assert_refused(
    f: &Fixture,
    trap: &Trap,
    credential: serde_json::Value,
    field: &str,
    rule: &str,
) {
    let applied = f.apply("attacker", &trap.url(), credential).await;
    assert!(!applied.accepted, "accepted: {}", applied.said);
    assert!(
        applied.said.contains("INVALID_ARGUMENT") || applied.said.contains("invalid"),
        "{}",
        applied.said
    );
    assert!(
        applied.said.contains(field),
        "names {field}: {}",
        applied.said
    );
    assert!(
        applied.said.contains(rule),
        "names the rule: {}",
        applied.said
    );
    let ping = f.ping("attacker").await;
    assert!(
        ping.contains("not found") || ping.contains("NOT_FOUND") || ping.contains("unknown"),
        "the refused registry was not stored: {ping}"
    );
    assert_eq!(trap.received(), "", "Ferry sent the attacker something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_file_outside_the_credentials_dir_is_refused_and_never_sent() {
    let (f, trap) = (Fixture::start().await, Trap::start().await);
    let outside = f.dir.path().join("outside-secret");
    assert_refused(
        &f,
        &trap,
        basic_file(&outside),
        "credential.password_file",
        "--credentials-dir",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_environment_in_proc_is_never_a_credential() {
    let (f, trap) = (Fixture::start().await, Trap::start().await);
    assert_refused(
        &f,
        &trap,
        basic_file(Path::new("/proc/self/environ")),
        "credential.password_file",
        "never read",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_climbs_out_of_the_credentials_dir_is_refused() {
    let (f, trap) = (Fixture::start().await, Trap::start().await);
    let climbing = f.allowed().join("../outside-secret");
    assert_refused(
        &f,
        &trap,
        basic_file(&climbing),
        "credential.password_file",
        "--credentials-dir",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_in_the_credentials_dir_to_a_file_outside_is_refused() {
    let (f, trap) = (Fixture::start().await, Trap::start().await);
    let link = f.allowed().join("link-to-outside");
    std::os::unix::fs::symlink(f.dir.path().join("outside-secret"), &link).unwrap();
    assert_refused(
        &f,
        &trap,
        basic_file(&link),
        "credential.password_file",
        "--credentials-dir",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_token_variable_is_not_a_credential_for_an_api_registry() {
    let (f, trap) = (Fixture::start().await, Trap::start().await);
    assert_refused(
        &f,
        &trap,
        basic_env("FERRY_WEBHOOK_TOKEN"),
        "credential.password_env",
        "FERRY_CRED_",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_registrys_credential_cannot_be_pointed_at_another_origin() {
    let (f, trap) = (Fixture::start().await, Trap::start().await);
    assert_refused(
        &f,
        &trap,
        basic_env("FERRY_SRC_PASSWORD"),
        "credential.password_env",
        "FERRY_CRED_",
    )
    .await;
    // The same reference for the config registry's own origin is the operator's to give.
    let own = f
        .apply("src-again", &f.src_url, basic_env("FERRY_SRC_PASSWORD"))
        .await;
    assert!(own.accepted, "{}", own.said);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_references_are_stored_and_sent_to_their_registry_only() {
    let (f, trap) = (Fixture::start().await, Trap::start().await);
    let file = f
        .apply(
            "by-file",
            &trap.url(),
            basic_file(&f.allowed().join("robot-password")),
        )
        .await;
    assert!(file.accepted, "{}", file.said);
    let env = f
        .apply("by-env", &trap.url(), basic_env("FERRY_CRED_ROBOT"))
        .await;
    assert!(env.accepted, "{}", env.said);
    // The registry the operator's reference was stored for does get it, as Basic auth.
    f.ping("by-file").await;
    let expected = base64_basic("robot", "allowed-s3cret");
    assert!(
        eventually(Duration::from_secs(10), || async {
            trap.received().contains(&expected)
        })
        .await,
        "the stored registry authenticated with its allowed password file: {:?}",
        trap.received()
    );
    assert!(!trap
        .received()
        .contains(&base64_basic("robot", SRC_PASSWORD)));
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}
