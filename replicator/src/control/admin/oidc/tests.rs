//! The verifier against a real issuer served by the test ([`ferry_testkit::oidc`]): tokens
//! minted with keys made at test time, and the hostile ones a verifier must refuse.
use std::time::Duration;

use ferry_testkit::oidc::{hs256, now, unsigned, TestIssuer, TestKey};
use serde_json::{json, Value};

use super::*;

const AUDIENCE: &str = "ferry-admin";

fn config(issuer: &TestIssuer) -> OidcConfig {
    OidcConfig {
        issuer: issuer.issuer(),
        audience: AUDIENCE.into(),
        jwks_url: None,
        claim: "groups".into(),
        viewer_values: vec!["ferry-viewers".into()],
        operator_values: vec!["ferry-operators".into()],
        leeway: Duration::from_secs(30),
        min_refresh_interval: Duration::ZERO,
        ca_file: None,
    }
}

fn verifier(config: OidcConfig) -> OidcVerifier {
    OidcVerifier::new(config).expect("valid OIDC settings")
}

/// An issuer publishing one ES256 key, the key, and a verifier of its tokens.
async fn es256_issuer() -> (TestIssuer, TestKey, OidcVerifier) {
    let key = TestKey::es256("es-1");
    let issuer = TestIssuer::start(&[&key]).await.unwrap();
    let v = verifier(config(&issuer));
    (issuer, key, v)
}

fn with(mut claims: Value, field: &str, value: Value) -> Value {
    claims[field] = value;
    claims
}

#[tokio::test]
async fn an_rs256_token_with_an_operator_group_grants_operator() {
    let key = TestKey::rs256("rsa-1").unwrap();
    let issuer = TestIssuer::start(&[&key]).await.unwrap();
    let v = verifier(config(&issuer));
    let token = key.sign(&issuer.claims(AUDIENCE, &["staff", "ferry-operators"]));
    assert_eq!(v.verify(&token).await.unwrap(), Role::Operator);
}

#[tokio::test]
async fn an_es256_token_with_a_viewer_group_grants_viewer() {
    let (issuer, key, v) = es256_issuer().await;
    let token = key.sign(&issuer.claims(AUDIENCE, &["ferry-viewers"]));
    assert_eq!(v.verify(&token).await.unwrap(), Role::Viewer);
}

#[tokio::test]
async fn operator_wins_when_the_claim_holds_both_values() {
    let (issuer, key, v) = es256_issuer().await;
    let token = key.sign(&issuer.claims(AUDIENCE, &["ferry-viewers", "ferry-operators"]));
    assert_eq!(v.verify(&token).await.unwrap(), Role::Operator);
}

#[tokio::test]
async fn a_valid_token_whose_claim_maps_to_no_role_is_permission_denied() {
    let (issuer, key, v) = es256_issuer().await;
    let token = key.sign(&issuer.claims(AUDIENCE, &["payroll"]));
    let e = v.verify(&token).await.unwrap_err();
    assert!(matches!(e, TokenError::NoRole { .. }), "{e}");
    assert_eq!(e.status().code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn keycloak_realm_roles_are_read_from_a_dot_path_and_a_single_string_counts() {
    let (issuer, key, _) = es256_issuer().await;
    let v = verifier(OidcConfig {
        claim: "realm_access.roles".into(),
        ..config(&issuer)
    });
    let claims = with(
        issuer.claims(AUDIENCE, &[]),
        "realm_access",
        json!({"roles": ["offline_access", "ferry-operators"]}),
    );
    assert_eq!(v.verify(&key.sign(&claims)).await.unwrap(), Role::Operator);
    let v = verifier(OidcConfig {
        claim: "role".into(),
        ..config(&issuer)
    });
    let claims = with(issuer.claims(AUDIENCE, &[]), "role", json!("ferry-viewers"));
    assert_eq!(v.verify(&key.sign(&claims)).await.unwrap(), Role::Viewer);
}

#[tokio::test]
async fn an_expired_token_is_refused_but_skew_within_the_leeway_is_not() {
    let (issuer, key, v) = es256_issuer().await;
    let claims = issuer.claims(AUDIENCE, &["ferry-viewers"]);
    let expired = key.sign(&with(claims.clone(), "exp", json!(now() - 120)));
    let e = v.verify(&expired).await.unwrap_err();
    assert!(matches!(e, TokenError::Expired), "{e}");
    assert_eq!(e.status().code(), tonic::Code::Unauthenticated);
    let just_expired = key.sign(&with(claims, "exp", json!(now() - 5)));
    assert_eq!(v.verify(&just_expired).await.unwrap(), Role::Viewer);
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let (issuer, key, v) = es256_issuer().await;
    let claims = with(
        issuer.claims(AUDIENCE, &["ferry-viewers"]),
        "nbf",
        json!(now() + 600),
    );
    let e = v.verify(&key.sign(&claims)).await.unwrap_err();
    assert!(matches!(e, TokenError::NotYetValid), "{e}");
}

#[tokio::test]
async fn a_token_without_exp_is_refused() {
    let (issuer, key, v) = es256_issuer().await;
    let mut claims = issuer.claims(AUDIENCE, &["ferry-viewers"]);
    claims.as_object_mut().unwrap().remove("exp");
    let e = v.verify(&key.sign(&claims)).await.unwrap_err();
    assert!(
        matches!(e, TokenError::MissingClaim(ref c) if c == "exp"),
        "{e}"
    );
}

#[tokio::test]
async fn a_token_for_another_audience_or_from_another_issuer_is_refused() {
    let (issuer, key, v) = es256_issuer().await;
    let other_aud = key.sign(&issuer.claims("some-other-client", &["ferry-operators"]));
    let e = v.verify(&other_aud).await.unwrap_err();
    assert!(matches!(e, TokenError::WrongAudience), "{e}");
    let claims = with(
        issuer.claims(AUDIENCE, &["ferry-operators"]),
        "iss",
        json!("https://evil.example/realms/ferry"),
    );
    let e = v.verify(&key.sign(&claims)).await.unwrap_err();
    assert!(matches!(e, TokenError::WrongIssuer), "{e}");
}

#[tokio::test]
async fn an_audience_list_containing_ours_is_accepted() {
    let (issuer, key, v) = es256_issuer().await;
    let claims = with(
        issuer.claims(AUDIENCE, &["ferry-viewers"]),
        "aud",
        json!(["account", AUDIENCE]),
    );
    assert_eq!(v.verify(&key.sign(&claims)).await.unwrap(), Role::Viewer);
}

#[tokio::test]
async fn an_unknown_kid_refreshes_the_jwks_and_finds_the_rotated_key() {
    let (issuer, old, v) = es256_issuer().await;
    let claims = issuer.claims(AUDIENCE, &["ferry-operators"]);
    assert_eq!(v.verify(&old.sign(&claims)).await.unwrap(), Role::Operator);
    assert_eq!(issuer.jwks_fetches(), 1);
    let new = TestKey::rs256("rsa-2").unwrap();
    issuer.publish(&[&old, &new]);
    assert_eq!(v.verify(&new.sign(&claims)).await.unwrap(), Role::Operator);
    assert_eq!(issuer.jwks_fetches(), 2, "one refresh for the new kid");
    assert_eq!(v.verify(&old.sign(&claims)).await.unwrap(), Role::Operator);
    assert_eq!(
        issuer.jwks_fetches(),
        2,
        "known kids are served from the cache"
    );
}

#[tokio::test]
async fn a_kid_still_unknown_after_the_refresh_is_refused() {
    let (issuer, _, v) = es256_issuer().await;
    let stranger = TestKey::es256("not-published");
    let e = v
        .verify(&stranger.sign(&issuer.claims(AUDIENCE, &["ferry-operators"])))
        .await
        .unwrap_err();
    assert!(
        matches!(e, TokenError::UnknownKid(ref k) if k == "not-published"),
        "{e}"
    );
    assert_eq!(e.status().code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_the_jwks_at_most_once_per_interval() {
    let key = TestKey::es256("es-1");
    let issuer = TestIssuer::start(&[&key]).await.unwrap();
    let v = Arc::new(verifier(OidcConfig {
        min_refresh_interval: Duration::from_secs(3600),
        ..config(&issuer)
    }));
    let claims = issuer.claims(AUDIENCE, &["ferry-operators"]);
    assert_eq!(v.verify(&key.sign(&claims)).await.unwrap(), Role::Operator);
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..50 {
        let token = key.sign_with_header(
            &json!({"alg": "ES256", "kid": format!("made-up-{i}")}),
            &claims,
        );
        let v = v.clone();
        flood.spawn(async move { v.verify(&token).await });
    }
    while let Some(result) = flood.join_next().await {
        let e = result.unwrap().unwrap_err();
        assert!(matches!(e, TokenError::UnknownKid(_)), "{e}");
    }
    assert_eq!(issuer.jwks_fetches(), 1);
}

#[tokio::test]
async fn concurrent_first_tokens_share_one_jwks_fetch() {
    let key = TestKey::es256("es-1");
    let issuer = TestIssuer::start(&[&key]).await.unwrap();
    let v = Arc::new(verifier(config(&issuer)));
    let token = key.sign(&issuer.claims(AUDIENCE, &["ferry-viewers"]));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (v, token) = (v.clone(), token.clone());
        calls.spawn(async move { v.verify(&token).await });
    }
    while let Some(result) = calls.join_next().await {
        assert_eq!(result.unwrap().unwrap(), Role::Viewer);
    }
    assert_eq!(issuer.jwks_fetches(), 1);
}

#[tokio::test]
async fn alg_none_is_refused_even_with_a_known_kid() {
    let (issuer, key, v) = es256_issuer().await;
    let token = unsigned(key.kid(), &issuer.claims(AUDIENCE, &["ferry-operators"]));
    let e = v.verify(&token).await.unwrap_err();
    assert!(matches!(e, TokenError::AlgNone), "{e}");
    assert_eq!(
        issuer.jwks_fetches(),
        0,
        "refused before any key is fetched"
    );
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_as_secret_is_refused() {
    for key in [TestKey::es256("k"), TestKey::rs256("k").unwrap()] {
        let issuer = TestIssuer::start(&[&key]).await.unwrap();
        let v = verifier(config(&issuer));
        let claims = issuer.claims(AUDIENCE, &["ferry-operators"]);
        let token = hs256(key.kid(), &key.public_key_bytes(), &claims);
        let e = v.verify(&token).await.unwrap_err();
        assert!(matches!(e, TokenError::Hmac(_)), "{e}");
        let jwk_text = hs256(key.kid(), key.jwk().to_string().as_bytes(), &claims);
        assert!(matches!(
            v.verify(&jwk_text).await,
            Err(TokenError::Hmac(_))
        ));
    }
}

#[tokio::test]
async fn a_header_claiming_another_algorithm_than_its_key_is_refused() {
    let (issuer, key, v) = es256_issuer().await;
    let claims = issuer.claims(AUDIENCE, &["ferry-operators"]);
    let token = key.sign_with_header(&json!({"alg": "RS256", "kid": key.kid()}), &claims);
    let e = v.verify(&token).await.unwrap_err();
    assert!(matches!(e, TokenError::UnsupportedAlg(_)), "{e}");
    let token = key.sign_with_header(&json!({"alg": "ES384", "kid": key.kid()}), &claims);
    assert!(matches!(
        v.verify(&token).await,
        Err(TokenError::UnsupportedAlg(_))
    ));
}

#[tokio::test]
async fn a_tampered_payload_fails_the_signature() {
    let (issuer, key, v) = es256_issuer().await;
    let token = key.sign(&issuer.claims(AUDIENCE, &["ferry-viewers"]));
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(issuer.claims(AUDIENCE, &["ferry-operators"]).to_string());
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
    let e = v.verify(&tampered).await.unwrap_err();
    assert!(matches!(e, TokenError::BadSignature), "{e}");
}

#[tokio::test]
async fn malformed_tokens_are_refused_without_panicking_or_echoing_them() {
    let (issuer, key, v) = es256_issuer().await;
    let good = key.sign(&issuer.claims(AUDIENCE, &["ferry-viewers"]));
    let (head, rest) = good.split_once('.').unwrap();
    let cases = [
        String::new(),
        "secret-looking-garbage".into(),
        "a.b".into(),
        format!("{good}.extra"),
        format!("!!!.{rest}"),
        format!(
            "{}.{rest}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("[1,2]")
        ),
        format!("{head}.%%%.sig"),
        format!(
            "{head}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("not json")
        ),
        "x".repeat(MAX_TOKEN_BYTES + 1),
        "é.é.é".into(),
    ];
    for token in cases {
        let e = v.verify(&token).await.unwrap_err();
        let status = e.status();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{e}");
        if token.len() > 8 {
            assert!(!status.message().contains(&token), "echoed: {e}");
        }
    }
}

/// A hostile "issuer": answers every path with `body` (and `status`).
async fn hostile_server(status: u16, body: Vec<u8>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { (http::StatusCode::from_u16(status).unwrap(), body) }
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn a_hostile_jwks_endpoint_gives_clear_errors() {
    let key = TestKey::es256("es-1");
    let issuer = TestIssuer::start(&[&key]).await.unwrap();
    let token = key.sign(&issuer.claims(AUDIENCE, &["ferry-viewers"]));
    let huge = format!("{{\"keys\": [\"{}\"]}}", "x".repeat(MAX_DOCUMENT_BYTES));
    let cases: [(u16, Vec<u8>, &str); 4] = [
        (200, huge.into_bytes(), "exceeds"),
        (200, b"<html>login</html>".to_vec(), "not a valid JWKS"),
        (500, b"{}".to_vec(), "HTTP 500"),
        (
            200,
            br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}, {"kty": "EC", "crv": "P-256", "kid": "es-1", "x": "AA", "y": "AA"}]}"#.to_vec(),
            "no RS256 or ES256 signing key",
        ),
    ];
    for (status, body, expected) in cases {
        let (url, server) = hostile_server(status, body).await;
        let v = verifier(OidcConfig {
            jwks_url: Some(Url::parse(&format!("{url}/certs")).unwrap()),
            ..config(&issuer)
        });
        let e = v.verify(&token).await.unwrap_err();
        assert!(e.to_string().contains(expected), "{expected}: {e}");
        assert_eq!(e.status().code(), tonic::Code::Unavailable, "{e}");
        server.abort();
    }
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_refused() {
    let key = TestKey::es256("es-1");
    let issuer = TestIssuer::start(&[&key]).await.unwrap();
    let doc = json!({"issuer": "https://evil.example", "jwks_uri": issuer.jwks_url()});
    let (url, _server) = hostile_server(200, doc.to_string().into_bytes()).await;
    let v = verifier(OidcConfig {
        issuer: url.clone(),
        ..config(&issuer)
    });
    let claims = with(
        issuer.claims(AUDIENCE, &["ferry-viewers"]),
        "iss",
        json!(url),
    );
    let e = v.verify(&key.sign(&claims)).await.unwrap_err();
    assert!(e.to_string().contains("is not"), "{e}");
    assert_eq!(issuer.jwks_fetches(), 0);
}

#[tokio::test]
async fn a_configured_jwks_url_is_used_without_discovery() {
    let key = TestKey::es256("es-1");
    let issuer = TestIssuer::start(&[&key]).await.unwrap();
    let v = verifier(OidcConfig {
        jwks_url: Some(Url::parse(&issuer.jwks_url()).unwrap()),
        ..config(&issuer)
    });
    let token = key.sign(&issuer.claims(AUDIENCE, &["ferry-viewers"]));
    assert_eq!(v.verify(&token).await.unwrap(), Role::Viewer);
}

#[test]
fn settings_are_checked_and_errors_name_the_flag() {
    let base = OidcConfig {
        issuer: "https://sso.example/realms/ferry".into(),
        audience: AUDIENCE.into(),
        jwks_url: None,
        claim: "groups".into(),
        viewer_values: vec![],
        operator_values: vec!["ops".into()],
        leeway: DEFAULT_LEEWAY,
        min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
        ca_file: None,
    };
    assert_eq!(base.validate(), Ok(()));
    let plain = OidcConfig {
        issuer: "http://sso.example/realms/ferry".into(),
        ..base.clone()
    };
    assert!(plain
        .validate()
        .unwrap_err()
        .to_string()
        .contains("--admin-oidc-issuer"));
    let local = OidcConfig {
        issuer: "http://127.0.0.1:8080/realms/ferry".into(),
        ..base.clone()
    };
    assert_eq!(local.validate(), Ok(()));
    let jwks = OidcConfig {
        jwks_url: Some(Url::parse("http://sso.example/certs").unwrap()),
        ..base.clone()
    };
    assert!(jwks
        .validate()
        .unwrap_err()
        .to_string()
        .contains("--admin-oidc-jwks-url"));
    let no_roles = OidcConfig {
        operator_values: vec![],
        ..base.clone()
    };
    assert_eq!(no_roles.validate(), Err(OidcConfigError::NoRoleValues));
    let bad_claim = OidcConfig {
        claim: "realm_access..roles".into(),
        ..base.clone()
    };
    assert!(matches!(
        bad_claim.validate(),
        Err(OidcConfigError::BadClaim(_))
    ));
    let no_aud = OidcConfig {
        audience: " ".into(),
        ..base
    };
    assert_eq!(no_aud.validate(), Err(OidcConfigError::NoAudience));
}

#[test]
fn an_unreadable_or_empty_ca_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = OidcConfig {
        issuer: "https://sso.example/realms/ferry".into(),
        audience: AUDIENCE.into(),
        jwks_url: None,
        claim: "groups".into(),
        viewer_values: vec!["v".into()],
        operator_values: vec![],
        leeway: DEFAULT_LEEWAY,
        min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
        ca_file: Some(dir.path().join("missing.pem")),
    };
    let e = OidcVerifier::new(base.clone()).unwrap_err().to_string();
    assert!(
        e.contains("--admin-oidc-ca-file") && e.contains("missing.pem"),
        "{e}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let e = OidcVerifier::new(OidcConfig {
        ca_file: Some(empty),
        ..base
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("empty.pem") && e.contains("no PEM certificate"),
        "{e}"
    );
}
