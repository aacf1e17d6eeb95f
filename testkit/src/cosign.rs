//! Cosign signatures made without cosign (no cosign binary here): a P-256 key pair, its public key
//! as `cosign.pub` (PEM SubjectPublicKeyInfo, what `cosign generate-key-pair` writes), and
//! signature manifests in the format cosign pushes (its `specs/SIGNATURE_SPEC.md`), written into
//! an OCI layout for skopeo to push.
//!
//! What [`Signer::signature_manifest`] produces, as cosign does:
//! - **payload** (a blob, `application/vnd.dev.cosign.simplesigning.v1+json`): the simple signing
//!   document `{"critical": {"identity": {"docker-reference": R}, "image":
//!   {"docker-manifest-digest": D}, "type": "cosign container image signature"}, "optional":
//!   null}`;
//! - **signature**: ECDSA P-256 over the payload bytes (SHA-256), ASN.1 DER, base64, in the layer
//!   annotation `dev.cosignproject.cosign/signature`;
//! - **manifest**: an OCI image manifest whose config is cosign's placeholder image config (empty
//!   `os`/`architecture`, the payload as its one diff id) and whose layers are the payloads. Stored
//!   under cosign's tag `sha256-<hex>.sig` (the legacy scheme), or, with a `subject`, as an OCI
//!   1.1 referrer with `artifactType` `application/vnd.dev.cosign.artifact.sig.v1+json`
//!   (cosign's `--registry-referrers-mode=oci-1-1`).
use anyhow::Context as _;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde_json::json;

use crate::fixtures::{Blob, LayoutBuilder};

/// Media type of a simple signing payload layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Artifact type of a cosign signature stored as an OCI 1.1 referrer.
pub const COSIGN_SIGNATURE_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// Artifact type of a notation signature.
pub const NOTATION_SIGNATURE_TYPE: &str = "application/vnd.cncf.notary.signature";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// DER prefix of a P-256 SubjectPublicKeyInfo with an uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A cosign-style signing key (ECDSA P-256), generated per test.
pub struct Signer {
    pair: EcdsaKeyPair,
}

/// One signature: the payload bytes and the base64 DER signature over them.
#[derive(Debug, Clone)]
pub struct Signature {
    pub payload: Vec<u8>,
    pub signature: String,
}

impl Signer {
    pub fn generate() -> anyhow::Result<Signer> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("generating a P-256 key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("loading the P-256 key"))?;
        Ok(Signer { pair })
    }

    /// The public key as `cosign.pub` holds it.
    pub fn public_pem(&self) -> String {
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    /// Writes the public key to `dir/<name>` and returns its path.
    pub fn write_public_key(
        &self,
        dir: &std::path::Path,
        name: &str,
    ) -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, self.public_pem())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Signs a simple signing payload naming `image_digest` (`docker_reference` is informative,
    /// as in cosign).
    pub fn sign(&self, docker_reference: &str, image_digest: &str) -> anyhow::Result<Signature> {
        let payload = serde_json::to_vec(&json!({
            "critical": {
                "identity": {"docker-reference": docker_reference},
                "image": {"docker-manifest-digest": image_digest},
                "type": "cosign container image signature"
            },
            "optional": null
        }))?;
        let sig = self
            .pair
            .sign(&SystemRandom::new(), &payload)
            .map_err(|_| anyhow::anyhow!("signing"))?;
        Ok(Signature {
            payload,
            signature: base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
        })
    }
}

/// Writes a cosign signature manifest holding `signatures` into `layout`, tagged `ref_name`; with
/// `subject` an OCI 1.1 referrer of it (`artifactType` cosign's signature type).
pub fn signature_manifest(
    layout: &mut LayoutBuilder,
    ref_name: &str,
    signatures: &[Signature],
    subject: Option<&Blob>,
) -> anyhow::Result<Blob> {
    let mut layers = Vec::new();
    for s in signatures {
        let blob = layout.write_blob(SIMPLE_SIGNING, &s.payload)?;
        layers.push(json!({
            "mediaType": SIMPLE_SIGNING,
            "size": blob.size,
            "digest": blob.digest,
            "annotations": {"dev.cosignproject.cosign/signature": s.signature}
        }));
    }
    let diff_ids: Vec<&str> = layers.iter().filter_map(|l| l["digest"].as_str()).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "", "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}], "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "config": {}
    }))?;
    let config = layout.write_blob(OCI_CONFIG, &config)?;
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": config.size, "digest": config.digest},
        "layers": layers
    });
    if let Some(subject) = subject {
        manifest["artifactType"] = json!(COSIGN_SIGNATURE_TYPE);
        manifest["subject"] = json!({"mediaType": subject.media_type, "size": subject.size, "digest": subject.digest});
    }
    layout.raw_manifest(ref_name, OCI_MANIFEST, &serde_json::to_vec(&manifest)?)
}

/// The referrers fallback tag index (`sha256-<hex>` of the subject) listing `referrers` with their
/// artifact types, as clients write it on a registry without the referrers API (OCI distribution
/// spec, "Pushing Manifests with Subject"). Tagged `ref_name` in `layout`.
pub fn referrers_index(
    layout: &mut LayoutBuilder,
    ref_name: &str,
    referrers: &[(&Blob, &str)],
) -> anyhow::Result<Blob> {
    let manifests: Vec<serde_json::Value> = referrers
        .iter()
        .map(|(b, artifact_type)| {
            json!({"mediaType": b.media_type, "size": b.size, "digest": b.digest, "artifactType": artifact_type})
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    layout.raw_manifest(ref_name, OCI_INDEX, &serde_json::to_vec(&index)?)
}
