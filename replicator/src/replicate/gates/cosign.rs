//! Cosign signatures checked against a cosign public key: the key file (`cosign.pub`, an ECDSA
//! P-256 SubjectPublicKeyInfo in PEM, as `cosign generate-key-pair` writes it) and one signature
//! layer of a signature manifest (cosign's `specs/SIGNATURE_SPEC.md`): the layer's blob is a
//! *simple signing* payload (`application/vnd.dev.cosign.simplesigning.v1+json`), the layer
//! annotation `dev.cosignproject.cosign/signature` holds the base64 of an ASN.1 DER ECDSA
//! signature over the payload bytes (SHA-256), and the payload's
//! `critical.image.docker-manifest-digest` names the signed image.
//!
//! Invariants: pure (no I/O but reading the key file); every input is hostile — bad base64, bad
//! DER, a payload that is not JSON or names another digest are [`SignatureError`]s, never panics;
//! a signature counts only when it verifies **and** its payload names the image's digest.
use base64::Engine as _;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use serde::Deserialize;

use crate::oci::digest::Digest;

/// Media type of a cosign simple signing payload layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of a cosign image signature payload.
const COSIGN_PAYLOAD_TYPE: &str = "cosign container image signature";
/// Largest key file read (a P-256 PEM is under 200 bytes).
const MAX_KEY_FILE: u64 = 64 * 1024;

/// DER prefix of a P-256 SubjectPublicKeyInfo with an uncompressed point: SEQUENCE {
/// SEQUENCE { OID id-ecPublicKey, OID prime256v1 }, BIT STRING (65 bytes, no unused bits) }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// DER of the id-ecPublicKey OID (to tell "EC, another curve" from "not EC").
const EC_PUBLIC_KEY_OID: [u8; 9] = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// A cosign public key, and the file it came from (for messages).
#[derive(Clone, PartialEq, Eq)]
pub struct CosignKey {
    file: String,
    /// The uncompressed point `04 || X || Y` (65 bytes), as ring takes it.
    point: Vec<u8>,
}

impl std::fmt::Debug for CosignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CosignKey")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Why a key file cannot be used. The message names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signature public key file {file}: {message}")]
pub struct KeyError {
    pub file: String,
    pub message: String,
}

/// Why one signature does not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature annotation is not base64")]
    NotBase64,
    #[error("the signature is not an ASN.1 DER ECDSA signature")]
    NotDer,
    #[error("the signature does not verify against the key in {file}")]
    DoesNotVerify { file: String },
    #[error("the signed payload is not a cosign simple signing JSON document: {0}")]
    NotPayload(String),
    #[error("the signed payload names {signed}, not the image's digest {image}")]
    WrongDigest { signed: String, image: String },
}

impl CosignKey {
    /// Reads and parses `file` (see [`CosignKey::from_pem`]).
    pub fn load(file: &str) -> Result<CosignKey, KeyError> {
        let err = |message: String| KeyError {
            file: file.to_string(),
            message,
        };
        let meta = std::fs::metadata(file).map_err(|e| err(format!("cannot read it: {e}")))?;
        if meta.len() > MAX_KEY_FILE {
            return Err(err(format!(
                "{} bytes is too large for a public key file",
                meta.len()
            )));
        }
        let text = std::fs::read(file).map_err(|e| err(format!("cannot read it: {e}")))?;
        let text = String::from_utf8(text).map_err(|_| err("not PEM text (not UTF-8)".into()))?;
        CosignKey::from_pem(&text, file)
    }

    /// Parses a PEM `PUBLIC KEY` block holding an ECDSA P-256 SubjectPublicKeyInfo.
    pub fn from_pem(text: &str, file: &str) -> Result<CosignKey, KeyError> {
        let err = |message: &str| KeyError {
            file: file.to_string(),
            message: message.to_string(),
        };
        let begin = "-----BEGIN PUBLIC KEY-----";
        let end = "-----END PUBLIC KEY-----";
        let body = text
            .split_once(begin)
            .and_then(|(_, rest)| rest.split_once(end))
            .map(|(body, _)| body)
            .ok_or_else(|| err("not PEM: no `-----BEGIN PUBLIC KEY-----` … `-----END PUBLIC KEY-----` block (cosign writes its public key as `cosign.pub` in this form)"))?;
        let b64: String = body.split_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|_| err("the PEM block is not valid base64"))?;
        if der.len() == P256_SPKI_PREFIX.len() + 65
            && der[..P256_SPKI_PREFIX.len()] == P256_SPKI_PREFIX
            && der[P256_SPKI_PREFIX.len()] == 0x04
        {
            return Ok(CosignKey {
                file: file.to_string(),
                point: der[P256_SPKI_PREFIX.len()..].to_vec(),
            });
        }
        let is_ec = der
            .windows(EC_PUBLIC_KEY_OID.len())
            .any(|w| w == EC_PUBLIC_KEY_OID);
        Err(err(if is_ec {
            "an EC key, but not on P-256 with an uncompressed point; Ferry verifies cosign's default ECDSA P-256 keys"
        } else {
            "not an ECDSA P-256 public key (RSA, Ed25519 and other key types are not supported); Ferry verifies cosign's default ECDSA P-256 keys"
        }))
    }

    /// The file the key came from.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Checks one cosign signature of `image`: `signature_b64` (the layer annotation) over
    /// `payload` (the layer's blob), and the payload naming `image`.
    pub fn verify(
        &self,
        payload: &[u8],
        signature_b64: &str,
        image: &Digest,
    ) -> Result<(), SignatureError> {
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature_b64.trim().as_bytes())
            .map_err(|_| SignatureError::NotBase64)?;
        if !looks_like_der_signature(&signature) {
            return Err(SignatureError::NotDer);
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.point)
            .verify(payload, &signature)
            .map_err(|_| SignatureError::DoesNotVerify {
                file: self.file.clone(),
            })?;
        let signed = signed_digest(payload)?;
        if signed != image.to_string() {
            return Err(SignatureError::WrongDigest {
                signed,
                image: image.to_string(),
            });
        }
        Ok(())
    }
}

/// A DER `SEQUENCE` whose short-form length covers the rest: the shape of a P-256 ECDSA signature
/// (at most 72 bytes). ring checks the two INTEGERs.
fn looks_like_der_signature(sig: &[u8]) -> bool {
    sig.len() >= 8 && sig[0] == 0x30 && sig[1] < 0x80 && usize::from(sig[1]) == sig.len() - 2
}

/// The image digest a simple signing payload signs (`critical.image.docker-manifest-digest`),
/// after checking it is a cosign image signature (`critical.type`).
pub fn signed_digest(payload: &[u8]) -> Result<String, SignatureError> {
    #[derive(Deserialize)]
    struct Payload {
        critical: Critical,
    }
    #[derive(Deserialize)]
    struct Critical {
        #[serde(rename = "type")]
        kind: String,
        image: Image,
    }
    #[derive(Deserialize)]
    struct Image {
        // cosign writes `docker-manifest-digest`; its spec's example spells it with a capital D.
        #[serde(rename = "docker-manifest-digest", alias = "Docker-manifest-digest")]
        digest: String,
    }
    let p: Payload =
        serde_json::from_slice(payload).map_err(|e| SignatureError::NotPayload(e.to_string()))?;
    if p.critical.kind != COSIGN_PAYLOAD_TYPE {
        return Err(SignatureError::NotPayload(format!(
            "critical.type is {:?}, not {COSIGN_PAYLOAD_TYPE:?}",
            p.critical.kind
        )));
    }
    Ok(p.critical.image.digest)
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};

    use super::*;

    const IMAGE: &str = "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4";
    const OTHER: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    struct Signer(EcdsaKeyPair);

    impl Signer {
        fn new() -> Signer {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
            Signer(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap(),
            )
        }
        fn pem(&self) -> String {
            let mut der = P256_SPKI_PREFIX.to_vec();
            der.extend_from_slice(self.0.public_key().as_ref());
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
                &b64[..64],
                &b64[64..]
            )
        }
        fn key(&self) -> CosignKey {
            CosignKey::from_pem(&self.pem(), "cosign.pub").unwrap()
        }
        fn sign(&self, payload: &[u8]) -> String {
            let sig = self.0.sign(&SystemRandom::new(), payload).unwrap();
            base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
        }
    }

    fn payload(digest: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "critical": {
                "identity": {"docker-reference": "registry.example/app"},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature"
            },
            "optional": null
        }))
        .unwrap()
    }

    fn image() -> Digest {
        crate::oci::digest::parse(IMAGE).unwrap()
    }

    #[test]
    fn a_signature_by_the_key_over_a_payload_naming_the_image_verifies() {
        let s = Signer::new();
        let p = payload(IMAGE);
        assert_eq!(s.key().verify(&p, &s.sign(&p), &image()), Ok(()));
    }

    #[test]
    fn a_signature_by_another_key_does_not_verify() {
        let (s, other) = (Signer::new(), Signer::new());
        let p = payload(IMAGE);
        let e = s.key().verify(&p, &other.sign(&p), &image()).unwrap_err();
        assert!(matches!(e, SignatureError::DoesNotVerify { .. }), "{e}");
        assert!(e.to_string().contains("cosign.pub"), "{e}");
    }

    #[test]
    fn a_signed_payload_naming_another_digest_is_refused_naming_both() {
        let s = Signer::new();
        let p = payload(OTHER);
        let e = s.key().verify(&p, &s.sign(&p), &image()).unwrap_err();
        assert_eq!(
            e,
            SignatureError::WrongDigest {
                signed: OTHER.into(),
                image: IMAGE.into()
            }
        );
    }

    #[test]
    fn a_payload_changed_after_signing_does_not_verify() {
        let s = Signer::new();
        let signature = s.sign(&payload(OTHER));
        let e = s
            .key()
            .verify(&payload(IMAGE), &signature, &image())
            .unwrap_err();
        assert!(matches!(e, SignatureError::DoesNotVerify { .. }), "{e}");
    }

    #[test]
    fn bad_base64_and_bad_der_are_told_apart() {
        let s = Signer::new();
        let p = payload(IMAGE);
        assert_eq!(
            s.key().verify(&p, "not base64 !!", &image()),
            Err(SignatureError::NotBase64)
        );
        let junk = base64::engine::general_purpose::STANDARD.encode([0x30, 0x03, 0x02, 0x01]);
        assert_eq!(
            s.key().verify(&p, &junk, &image()),
            Err(SignatureError::NotDer)
        );
        let empty = base64::engine::general_purpose::STANDARD.encode([]);
        assert_eq!(
            s.key().verify(&p, &empty, &image()),
            Err(SignatureError::NotDer)
        );
        // Well-formed DER that is no ECDSA signature of this payload.
        let zeros = base64::engine::general_purpose::STANDARD
            .encode([0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]);
        assert!(matches!(
            s.key().verify(&p, &zeros, &image()),
            Err(SignatureError::DoesNotVerify { .. })
        ));
    }

    #[test]
    fn a_signed_payload_that_is_not_a_cosign_document_is_refused() {
        let s = Signer::new();
        for p in [
            b"not json".to_vec(),
            b"{}".to_vec(),
            br#"{"critical":{"type":"something else","image":{"docker-manifest-digest":"x"}}}"#
                .to_vec(),
            br#"{"critical":{"type":"cosign container image signature","image":{}}}"#.to_vec(),
        ] {
            let e = s.key().verify(&p, &s.sign(&p), &image()).unwrap_err();
            assert!(matches!(e, SignatureError::NotPayload(_)), "{e}");
        }
    }

    #[test]
    fn the_spec_examples_capitalised_digest_field_is_read() {
        let p = br#"{"critical":{"identity":{"docker-reference":"testing/manifest"},"image":{"Docker-manifest-digest":"sha256:20be"},"type":"cosign container image signature"},"optional":{"creator":"atomic"}}"#;
        assert_eq!(signed_digest(p).unwrap(), "sha256:20be");
    }

    #[test]
    fn key_files_that_are_not_p256_pem_are_refused_naming_the_file() {
        let cases = [
            ("hello", "not PEM"),
            (
                "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----",
                "not valid base64",
            ),
            // An RSA SubjectPublicKeyInfo's start (rsaEncryption OID), truncated.
            (
                "-----BEGIN PUBLIC KEY-----\nMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQ==\n-----END PUBLIC KEY-----",
                "not an ECDSA P-256 public key",
            ),
            // id-ecPublicKey on secp384r1.
            (
                "-----BEGIN PUBLIC KEY-----\nMBAGByqGSM49AgEGBSuBBAAi\n-----END PUBLIC KEY-----",
                "not on P-256",
            ),
        ];
        for (pem, expected) in cases {
            let e = CosignKey::from_pem(pem, "/etc/ferry/cosign.pub").unwrap_err();
            assert_eq!(e.file, "/etc/ferry/cosign.pub");
            assert!(e.to_string().contains(expected), "{pem}: {e}");
            assert!(e.to_string().contains("/etc/ferry/cosign.pub"), "{e}");
        }
    }

    #[test]
    fn a_missing_key_file_is_an_error_naming_it() {
        let e = CosignKey::load("/nonexistent/cosign.pub").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cosign.pub"), "{e}");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn a_generated_key_round_trips_through_pem() {
        let s = Signer::new();
        assert_eq!(s.key().point, s.0.public_key().as_ref());
    }
}
