//! What the gates read from a registry or a file: a cosign simple signing payload, a signature
//! annotation checked against a key, a key file, and Harbor's `scan_overview`. Never a panic, and
//! a hostile signature never verifies (the key's private half is not in the input).
#![no_main]
use ferry_replicator::replicate::gates::cosign::{signed_digest, CosignKey};
use ferry_replicator::replicate::gates::scan::{judge, Severity};
use libfuzzer_sys::fuzz_target;

/// A P-256 public key (cosign.pub) whose private key was thrown away (`openssl ecparam -name
/// prime256v1 -genkey | openssl ec -pubout`).
const KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE+cYqkqLwAQucvGPxhJH6QVTjCSrn
1IfMNGC1qwIUam9kVAMQyxspWlVpChY2L3Q4p17uXxw64qB4sOzDdbVkLw==
-----END PUBLIC KEY-----";

fuzz_target!(|input: &[u8]| {
    let _ = signed_digest(input);
    let text = String::from_utf8_lossy(input);
    let _ = CosignKey::from_pem(&text, "fuzz.pub");
    if let Ok(key) = CosignKey::from_pem(KEY, "cosign.pub") {
        // The input split into an annotation and a payload.
        let (sig, payload) = text.split_once('\n').unwrap_or((&text, ""));
        let image = "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4"
            .parse()
            .expect("a digest");
        assert!(key.verify(payload.as_bytes(), sig, &image).is_err());
    }
    if let Ok(overview) = serde_json::from_slice::<serde_json::Value>(input) {
        let _ = judge(Some(&overview), Severity::High, false);
    }
});
