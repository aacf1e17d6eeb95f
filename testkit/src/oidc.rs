//! A test OpenID Connect issuer: serves a discovery document and a JWKS on a free loopback port
//! (Keycloak's paths, realm `ferry`), and mints tokens with keys made at test time — ES256 with
//! ring, RS256 from `openssl genpkey` (ring cannot generate RSA keys).
//!
//! It also mints the hostile tokens a verifier must refuse: `alg: none`, HS256 signed with a
//! public key's bytes as the secret, and anything with a hand-made header. The JWKS can be
//! swapped while it serves (key rotation) and its fetches are counted.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::extract::State;
use axum::routing::get;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{json, Value};

enum Pair {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

/// A signing key with its `kid`.
pub struct TestKey {
    kid: String,
    pair: Pair,
}

impl TestKey {
    /// A fresh P-256 key.
    pub fn es256(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generate a P-256 key");
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("a P-256 key");
        TestKey {
            kid: kid.to_string(),
            pair: Pair::Es256(pair),
        }
    }

    /// A fresh 2048-bit RSA key (`openssl`, Debian package `openssl`).
    pub fn rs256(kid: &str) -> anyhow::Result<TestKey> {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-outform",
                "DER",
            ])
            .output()
            .context("running openssl genpkey (Debian package openssl)")?;
        anyhow::ensure!(
            out.status.success(),
            "openssl genpkey: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // OpenSSL 3 writes a DER RSA key as PKCS#1, older versions as PKCS#8.
        let pair = RsaKeyPair::from_der(&out.stdout)
            .or_else(|_| RsaKeyPair::from_pkcs8(&out.stdout))
            .map_err(|e| anyhow::anyhow!("openssl's RSA key: {e}"))?;
        Ok(TestKey {
            kid: kid.to_string(),
            pair: Pair::Rs256(pair),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> &'static str {
        match self.pair {
            Pair::Es256(_) => "ES256",
            Pair::Rs256(_) => "RS256",
        }
    }

    /// The public key as a JWK, as an issuer publishes it.
    pub fn jwk(&self) -> Value {
        match &self.pair {
            Pair::Es256(p) => {
                let point = p.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
                       "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])})
            }
            Pair::Rs256(p) => {
                let public: ring::rsa::PublicKeyComponents<Vec<u8>> = p.public().into();
                json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                       "n": B64.encode(&public.n), "e": B64.encode(&public.e)})
            }
        }
    }

    /// The public key's bytes (uncompressed point, or DER `RSAPublicKey`): what an attacker would
    /// try as an HMAC secret.
    pub fn public_key_bytes(&self) -> Vec<u8> {
        match &self.pair {
            Pair::Es256(p) => p.public_key().as_ref().to_vec(),
            Pair::Rs256(p) => p.public_key().as_ref().to_vec(),
        }
    }

    /// A token with `claims`, signed properly (header `alg` and `kid` of this key).
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    /// A token with any `header`, signed with this key's algorithm.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let rng = SystemRandom::new();
        let signature = match &self.pair {
            Pair::Es256(p) => p
                .sign(&rng, input.as_bytes())
                .expect("ES256 signing")
                .as_ref()
                .to_vec(),
            Pair::Rs256(p) => {
                let mut sig = vec![0; p.public().modulus_len()];
                p.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .expect("RS256 signing");
                sig
            }
        };
        format!("{input}.{}", B64.encode(signature))
    }
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

/// An unsigned token (`alg: none`, empty signature).
pub fn unsigned(kid: &str, claims: &Value) -> String {
    format!(
        "{}.",
        signing_input(&json!({"alg": "none", "typ": "JWT", "kid": kid}), claims)
    )
}

/// A token signed with HS256 using `secret` (e.g. a public key's bytes).
pub fn hs256(kid: &str, secret: &[u8], claims: &Value) -> String {
    let input = signing_input(&json!({"alg": "HS256", "typ": "JWT", "kid": kid}), claims);
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        input.as_bytes(),
    );
    format!("{input}.{}", B64.encode(tag.as_ref()))
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

struct Shared {
    issuer: String,
    jwks: Mutex<Vec<Value>>,
    jwks_fetches: AtomicUsize,
}

/// The issuer, serving until dropped.
pub struct TestIssuer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Path of the realm under the issuer's origin (Keycloak's layout).
const REALM: &str = "/realms/ferry";
/// Path of the JWKS under the realm (Keycloak's).
const CERTS: &str = "/protocol/openid-connect/certs";

impl TestIssuer {
    /// Serves discovery and a JWKS holding `keys` on a free loopback port.
    pub async fn start(keys: &[&TestKey]) -> anyhow::Result<TestIssuer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            issuer: format!("http://{addr}{REALM}"),
            jwks: Mutex::new(keys.iter().map(|k| k.jwk()).collect()),
            jwks_fetches: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route(
                &format!("{REALM}/.well-known/openid-configuration"),
                get(|State(s): State<Arc<Shared>>| async move {
                    Json(json!({"issuer": s.issuer, "jwks_uri": format!("{}{CERTS}", s.issuer)}))
                }),
            )
            .route(
                &format!("{REALM}{CERTS}"),
                get(|State(s): State<Arc<Shared>>| async move {
                    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                    let keys = s.jwks.lock().map(|k| k.clone()).unwrap_or_default();
                    Json(json!({ "keys": keys }))
                }),
            )
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(TestIssuer {
            addr,
            shared,
            server,
        })
    }

    /// The `iss` of its tokens.
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// Where its JWKS is served.
    pub fn jwks_url(&self) -> String {
        format!("http://{}{REALM}{CERTS}", self.addr)
    }

    /// Replaces the published keys (rotation).
    pub fn publish(&self, keys: &[&TestKey]) {
        if let Ok(mut jwks) = self.shared.jwks.lock() {
            *jwks = keys.iter().map(|k| k.jwk()).collect();
        }
    }

    /// How often the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Claims of a token for `audience` carrying `groups`, valid from a minute ago for an hour.
    pub fn claims(&self, audience: &str, groups: &[&str]) -> Value {
        let now = now();
        json!({"iss": self.issuer(), "aud": audience, "sub": "test-user", "iat": now - 60,
               "nbf": now - 60, "exp": now + 3600, "groups": groups})
    }
}
