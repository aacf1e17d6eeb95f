//! SSO for the admin API against a real `ferry serve --admin-listen`: an OIDC issuer served by the
//! test ([`ferry_testkit::oidc::TestIssuer`], Keycloak's paths, discovery on), tokens minted with
//! keys made at test time, the role the `groups` claim grants, and `ferry admin` passing a JWT
//! through from `FERRY_ADMIN_TOKEN` or `--token-file` unchanged. Each behaviour starts its own
//! process.
mod common;

use std::path::PathBuf;

use common::*;
use ferry_proto::v1 as pb;
use ferry_testkit::oidc::{hs256, now, unsigned, TestIssuer, TestKey};
use serde_json::json;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const WEBHOOK_TOKEN: &str = "oidc-test-webhook";
const STATIC_TOKEN: &str = "oidc-test-static-admin-token";
const AUDIENCE: &str = "ferry-admin";

/// `ferry serve` accepting the issuer's tokens (`groups`: `ferry-viewers` → viewer,
/// `ferry-operators` → operator) next to the static token [`STATIC_TOKEN`].
struct Sso {
    serve: Serve,
    issuer: TestIssuer,
    key: TestKey,
    admin: String,
    dir: tempfile::TempDir,
}

impl Sso {
    async fn start() -> Sso {
        let key = TestKey::rs256("rsa-1").unwrap();
        let issuer = TestIssuer::start(&[&key]).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Registries that are never contacted: no test here runs a job.
        let config = write_config(
            dir.path(),
            "http://127.0.0.1:9",
            "http://127.0.0.1:9",
            json!({}),
        );
        let (listen, admin) = (free_local_addr(), free_local_addr());
        let issuer_url = issuer.issuer();
        let serve = Serve::start_with(
            &config,
            &listen,
            WEBHOOK_TOKEN,
            &[
                "--admin-listen",
                &admin,
                "--admin-oidc-issuer",
                &issuer_url,
                "--admin-oidc-audience",
                AUDIENCE,
                "--admin-oidc-viewer",
                "ferry-viewers",
                "--admin-oidc-operator",
                "ferry-operators",
            ],
            &[("FERRY_ADMIN_TOKEN", STATIC_TOKEN)],
            dir.path().join("serve.log"),
        )
        .await;
        Sso {
            serve,
            issuer,
            key,
            admin,
            dir,
        }
    }

    /// A valid token whose `groups` claim is `groups`.
    fn token(&self, groups: &[&str]) -> String {
        self.key.sign(&self.issuer.claims(AUDIENCE, groups))
    }

    async fn clients(&self, token: &str) -> Clients {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", self.admin))
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("admin API: {e}\n{}", self.serve.log()));
        Clients::new(ch, token)
    }
}

/// Sends `authorization: Bearer <token>`.
#[derive(Clone)]
struct Auth(String);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let value = format!("Bearer {}", self.0).parse().unwrap();
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

type Authed = tonic::service::interceptor::InterceptedService<Channel, Auth>;

struct Clients {
    policies: pb::policies_client::PoliciesClient<Authed>,
    executions: pb::executions_client::ExecutionsClient<Authed>,
    operations: pb::operations_client::OperationsClient<Authed>,
}

impl Clients {
    fn new(ch: Channel, token: &str) -> Clients {
        let auth = Auth(token.to_string());
        Clients {
            policies: pb::policies_client::PoliciesClient::with_interceptor(
                ch.clone(),
                auth.clone(),
            ),
            executions: pb::executions_client::ExecutionsClient::with_interceptor(
                ch.clone(),
                auth.clone(),
            ),
            operations: pb::operations_client::OperationsClient::with_interceptor(ch, auth),
        }
    }

    async fn list(&mut self) -> Result<usize, Status> {
        let r = self
            .policies
            .list_policies(pb::ListPoliciesRequest {})
            .await?;
        Ok(r.into_inner().policies.len())
    }

    async fn stop(&mut self) -> Status {
        let req = pb::StopExecutionRequest {
            id: "no-such-execution".into(),
        };
        self.executions.stop_execution(req).await.unwrap_err()
    }

    async fn put_policy(&mut self, name: &str) -> Result<pb::Policy, Status> {
        let json = policy(json!({"name": name})).to_string();
        let r = self
            .policies
            .put_policy(pb::PutPolicyRequest { json })
            .await?;
        Ok(r.into_inner())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_lists_but_is_denied_stop_and_put_policy_naming_the_operator_role() {
    let sso = Sso::start().await;
    let mut c = sso.clients(&sso.token(&["ferry-viewers"])).await;
    assert_eq!(c.list().await.unwrap(), 1);
    c.operations
        .get_queue_stats(pb::GetQueueStatsRequest {})
        .await
        .unwrap();
    let stop = c.stop().await;
    assert_eq!(stop.code(), Code::PermissionDenied, "{stop:?}");
    assert!(stop.message().contains("operator role"), "{stop:?}");
    let put = c.put_policy("from-a-viewer").await.unwrap_err();
    assert_eq!(put.code(), Code::PermissionDenied, "{put:?}");
    assert!(
        put.message().contains("PutPolicy needs the operator role"),
        "{put:?}"
    );
    assert_eq!(c.list().await.unwrap(), 1, "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_may_stop_and_put_policies() {
    let sso = Sso::start().await;
    let mut c = sso.clients(&sso.token(&["ferry-operators"])).await;
    let stored = c.put_policy("from-an-operator").await.unwrap();
    assert_eq!(stored.name, "from-an-operator");
    assert_eq!(c.list().await.unwrap(), 2);
    // Past authorization: the execution simply does not exist.
    assert_eq!(c.stop().await.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_tokens_keep_operator_access_next_to_oidc() {
    let sso = Sso::start().await;
    let mut c = sso.clients(STATIC_TOKEN).await;
    assert_eq!(c.stop().await.code(), Code::NotFound);
    c.put_policy("from-the-static-token").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_unauthenticated_with_a_reason_that_does_not_echo_them() {
    let sso = Sso::start().await;
    let claims = sso.issuer.claims(AUDIENCE, &["ferry-operators"]);
    let mut expired = claims.clone();
    expired["exp"] = json!(now() - 3600);
    let mut early = claims.clone();
    early["nbf"] = json!(now() + 3600);
    let mut other_issuer = claims.clone();
    other_issuer["iss"] = json!("https://evil.example/realms/ferry");
    let key = &sso.key;
    let cases = [
        ("expired", key.sign(&expired)),
        ("not valid yet", key.sign(&early)),
        (
            "audience",
            key.sign(&sso.issuer.claims("another-client", &["ferry-operators"])),
        ),
        ("issuer", key.sign(&other_issuer)),
        ("alg `none`", unsigned(key.kid(), &claims)),
        (
            "(HMAC) is refused",
            hs256(key.kid(), &key.public_key_bytes(), &claims),
        ),
        (
            "no key with kid",
            TestKey::es256("unpublished").sign(&claims),
        ),
        ("malformed", "not.a.jwt-at-all".to_string()),
        ("invalid admin token", "a-guessed-static-token".to_string()),
    ];
    for (reason, token) in cases {
        let mut c = sso.clients(&token).await;
        let status = c.list().await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{reason}: {status:?}");
        assert!(status.message().contains(reason), "{reason}: {status:?}");
        assert!(!status.message().contains(&token), "{reason}: echoed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_admin_passes_a_jwt_from_the_env_or_a_token_file_unchanged() {
    let sso = Sso::start().await;
    let endpoint = format!("http://{}", sso.admin);
    let run = |args: &[&str], env_token: Option<String>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.args(["admin", "--endpoint", &endpoint])
            .args(args)
            .env_remove("FERRY_ADMIN_TOKEN")
            .env("FERRY_LOG", "warn");
        if let Some(t) = env_token {
            cmd.env("FERRY_ADMIN_TOKEN", t);
        }
        async move { cmd.output().await.unwrap() }
    };
    let viewer = sso.token(&["ferry-viewers"]);
    let out = run(&["policies", "list"], Some(viewer.clone())).await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("test"));
    let out = run(&["executions", "stop", "x"], Some(viewer)).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PERMISSION_DENIED") && stderr.contains("operator"),
        "{stderr}"
    );
    let file: PathBuf = sso.dir.path().join("operator.jwt");
    std::fs::write(&file, format!("{}\n", sso.token(&["ferry-operators"]))).unwrap();
    let out = run(
        &[
            "--token-file",
            file.to_str().unwrap(),
            "executions",
            "stop",
            "x",
        ],
        None,
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NOT_FOUND"), "past authorization: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_oidc_settings_stop_serve_at_start_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        json!({}),
    );
    let config = config.to_str().unwrap();
    let (listen, admin) = (free_local_addr(), free_local_addr());
    let serve = |oidc: &'static [&'static str]| {
        let mut args = vec![
            "serve",
            "--config",
            config,
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
            "--allow-unauthenticated",
        ];
        args.extend_from_slice(oidc);
        async move { ferry(&args).await }
    };
    let plain = serve(&[
        "--admin-oidc-issuer",
        "http://sso.example/realms/ferry",
        "--admin-oidc-audience",
        AUDIENCE,
        "--admin-oidc-viewer",
        "v",
    ])
    .await;
    assert_eq!(plain.code, 2, "{}", plain.stderr);
    assert!(
        plain.stderr.contains("--admin-oidc-issuer") && plain.stderr.contains("https://"),
        "{}",
        plain.stderr
    );
    let no_roles = serve(&[
        "--admin-oidc-issuer",
        "https://sso.example/realms/ferry",
        "--admin-oidc-audience",
        AUDIENCE,
    ])
    .await;
    assert_eq!(no_roles.code, 2, "{}", no_roles.stderr);
    assert!(
        no_roles.stderr.contains("--admin-oidc-operator"),
        "{}",
        no_roles.stderr
    );
    let no_audience = serve(&["--admin-oidc-issuer", "https://sso.example/realms/ferry"]).await;
    assert_eq!(no_audience.code, 2, "{}", no_audience.stderr);
    assert!(
        no_audience.stderr.contains("--admin-oidc-audience"),
        "{}",
        no_audience.stderr
    );
}
