//! Replication gates: policy options that hold an image back, decided just before it would be
//! copied (after the filters, in `super::tag`), for every run — event-driven jobs, `ferry sync`,
//! scheduled and manual runs, the safety net's repairs.
//!
//! - **`only_signed`** ([`Gate::OnlySigned`]): a signature must exist for the image's digest —
//!   cosign's `sha256-<hex>.sig` tag, or an OCI 1.1 referrer whose artifact type is a cosign
//!   (`application/vnd.dev.cosign.artifact.sig.v1+json`) or notation
//!   (`application/vnd.cncf.notary.signature`) signature, found through the referrers API or the
//!   `sha256-<hex>` fallback tag index. With `signature_public_key_file`, a cosign signature must
//!   verify against that key ([`cosign`]); notation signatures then do not count (they cannot be
//!   checked with a cosign key, and the reason says so).
//! - **`max_severity`** ([`Gate::MaxSeverity`], Harbor sources): Harbor's scan overview must
//!   report nothing above the limit ([`scan`]); an image never scanned, or whose scan has not
//!   finished, is held back unless `allow_unscanned`. A source without Harbor's API holds every
//!   image back, saying the gate needs a Harbor source.
//!
//! Invariants: a gate decision is an outcome ([`Blocked`] → `TagOutcome::Blocked`), never an
//! error: it is not retried and never dead-lettered; a registry error while looking is an error
//! (retried as usual). Referrers (a manifest with a `subject`, or a referrer-scheme tag) are never
//! gated: signatures are not signed. Gates are about the source only, so one decision holds for
//! every destination.
pub mod cosign;
pub mod scan;

use oci_spec::image::Descriptor;
use serde::Serialize;

use crate::oci::digest::Digest;
use std::sync::Arc;

use crate::oci::digest::DigestVerifier;
use crate::oci::HarborArtifact;
use crate::policy::Policy;
use crate::transfer::{Source, TransferError};

use cosign::{CosignKey, KeyError, SIGNATURE_ANNOTATION, SIMPLE_SIGNING};
use scan::Severity;

/// Artifact type of a cosign signature stored as an OCI 1.1 referrer.
pub const COSIGN_SIGNATURE_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// Artifact type of a notation (Notary Project) signature.
pub const NOTATION_SIGNATURE_TYPE: &str = "application/vnd.cncf.notary.signature";
/// Largest simple signing payload read (cosign's are a few hundred bytes).
const MAX_PAYLOAD_BYTES: u64 = 256 * 1024;
/// Signature manifests whose layers are checked, at most (a hostile source could list many).
const MAX_SIGNATURE_MANIFESTS: usize = 16;
/// Signature layers checked per manifest, at most (each costs a blob read).
const MAX_SIGNATURE_LAYERS: usize = 16;

/// How long a gate's decision about a tag's digest keeps the safety net from enqueueing that tag
/// again (`crate::control::safety_net`): a signature or scan that arrives has its own event; this
/// bounds how late one whose event was lost is noticed.
pub const BLOCKED_MEMO: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// The name under which a region remembers that a gate held `repository:tag` at `digest` back
/// (a lease on the pseudo-destination `ferry`, like the region's locks, expiring after
/// [`BLOCKED_MEMO`]).
pub fn blocked_key(policy: &str, repository: &str, tag: &str, digest: &str) -> String {
    format!("gate-blocked/{policy}/{repository}:{tag}@{digest}")
}

/// Which gate held a tag back; its name is the `gate` label of `ferry_gate_blocked_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    OnlySigned,
    MaxSeverity,
}

impl Gate {
    pub const ALL: [Gate; 2] = [Gate::OnlySigned, Gate::MaxSeverity];

    pub fn as_str(self) -> &'static str {
        match self {
            Gate::OnlySigned => "only_signed",
            Gate::MaxSeverity => "max_severity",
        }
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A gate's decision to hold an image back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub gate: Gate,
    pub reason: String,
}

/// A policy's gates, compiled once (the key file read and parsed).
#[derive(Debug, Clone, Default)]
pub struct Gates {
    pub only_signed: bool,
    pub key: Option<CosignKey>,
    pub max_severity: Option<Severity>,
    pub allow_unscanned: bool,
}

/// A policy's gate settings that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateConfigError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("max_severity: {0}")]
    Severity(String),
}

/// What Harbor's artifact API answered before the gates ran (the label filter may have asked).
#[derive(Debug, Clone)]
pub enum HarborLookup {
    /// Not asked yet.
    NotAsked,
    /// 404: no such artifact, or not a Harbor.
    Missing,
    Found(HarborArtifact),
}

impl Gates {
    /// The gates `policy` asks for; reads the key file.
    pub fn new(policy: &Policy) -> Result<Gates, GateConfigError> {
        let key = match (&policy.signature_public_key_file, policy.only_signed) {
            (Some(file), true) => Some(CosignKey::load(file)?),
            _ => None,
        };
        let max_severity = policy
            .max_severity
            .as_deref()
            .map(str::parse::<Severity>)
            .transpose()
            .map_err(GateConfigError::Severity)?;
        Ok(Gates {
            only_signed: policy.only_signed,
            key,
            max_severity,
            allow_unscanned: policy.allow_unscanned,
        })
    }

    /// Whether any gate is on.
    pub fn any(&self) -> bool {
        self.only_signed || self.max_severity.is_some()
    }

    /// Decides whether `repository@image` (read as `reference`) may be copied from `src`:
    /// `Ok(None)` when every gate lets it through. `harbor` is what a label filter already read.
    pub async fn check(
        &self,
        src: &Arc<dyn Source>,
        repository: &str,
        reference: &str,
        image: &Digest,
        harbor: HarborLookup,
    ) -> Result<Option<Blocked>, TransferError> {
        if let Some(max) = self.max_severity {
            let artifact = match harbor {
                HarborLookup::Found(a) if a.digest.as_deref() == Some(image.as_ref()) => Some(a),
                HarborLookup::Missing => None,
                // Not asked yet, or the tag moved between Harbor's answer and the manifest read:
                // ask about the digest being copied.
                // A layout (`ferry import`) has no scan overview: the export judged the images.
                _ => match src.registry() {
                    Some(r) => r.harbor_artifact(repository, image.as_ref(), true).await?,
                    None => None,
                },
            };
            let Some(artifact) = artifact else {
                return Ok(Some(Blocked {
                    gate: Gate::MaxSeverity,
                    reason: format!(
                        "{} did not answer Harbor's artifact API for {repository}:{reference} (404); max_severity needs a Harbor source registry",
                        src.name()
                    ),
                }));
            };
            if let Some(reason) =
                scan::judge(artifact.scan_overview.as_ref(), max, self.allow_unscanned)
            {
                return Ok(Some(Blocked {
                    gate: Gate::MaxSeverity,
                    reason: format!("{reason} for {image}"),
                }));
            }
        }
        if self.only_signed {
            if let Some(reason) = self.unsigned(src, repository, image).await? {
                return Ok(Some(Blocked {
                    gate: Gate::OnlySigned,
                    reason,
                }));
            }
        }
        Ok(None)
    }

    /// Why `image` does not count as signed, or `None` when it does.
    async fn unsigned(
        &self,
        src: &Arc<dyn Source>,
        repository: &str,
        image: &Digest,
    ) -> Result<Option<String>, TransferError> {
        let found = find_signatures(src, repository, image).await?;
        let sig_tag = cosign_tag(image);
        if found.cosign.is_empty() && found.notation == 0 {
            return Ok(Some(format!(
                "no signature for {image} (no cosign tag {sig_tag}, no OCI referrer of a signature type)"
            )));
        }
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let mut failures = Vec::new();
        for reference in found.cosign.iter().take(MAX_SIGNATURE_MANIFESTS) {
            match verify_manifest(src, repository, reference, image, key).await? {
                Ok(()) => return Ok(None),
                Err(why) => failures.push(format!("{reference}: {why}")),
            }
        }
        let mut reason = if failures.is_empty() {
            format!(
                "no cosign signature for {image} to verify against {}",
                key.file()
            )
        } else {
            format!(
                "no cosign signature for {image} verified against {} ({})",
                key.file(),
                failures.join("; ")
            )
        };
        if found.notation > 0 {
            reason.push_str(&format!(
                "; {} notation signature(s) found, which cannot be verified with a cosign key",
                found.notation
            ));
        }
        Ok(Some(reason))
    }
}

/// cosign's tag for the signatures of `image`: `<alg>-<hex>.sig`.
pub fn cosign_tag(image: &Digest) -> String {
    format!("{}-{}.sig", image.algorithm(), image.digest())
}

/// Signatures found for one image.
#[derive(Debug, Default)]
struct Signatures {
    /// References (the `.sig` tag, referrer digests) of cosign signature manifests.
    cosign: Vec<String>,
    /// Notation signature referrers.
    notation: usize,
}

/// Looks for signatures of `image`: cosign's `.sig` tag, and referrers of a signature type (the
/// referrers API, else the `<alg>-<hex>` fallback tag index).
async fn find_signatures(
    src: &Arc<dyn Source>,
    repository: &str,
    image: &Digest,
) -> Result<Signatures, TransferError> {
    let mut found = Signatures::default();
    let sig_tag = cosign_tag(image);
    if src.head_manifest(repository, &sig_tag).await?.is_some() {
        found.cosign.push(sig_tag);
    }
    let referrers = match src.referrers(repository, image).await? {
        Some(list) => list,
        None => fallback_referrers(src, repository, image).await?,
    };
    for d in referrers {
        match d.artifact_type().as_ref().map(|t| t.to_string()).as_deref() {
            Some(COSIGN_SIGNATURE_TYPE) => found.cosign.push(d.digest().to_string()),
            Some(NOTATION_SIGNATURE_TYPE) => found.notation += 1,
            _ => {}
        }
    }
    Ok(found)
}

/// The referrers listed in the `<alg>-<hex>` fallback tag index of a registry without the
/// referrers API; none when the tag is absent or holds something else.
async fn fallback_referrers(
    src: &Arc<dyn Source>,
    repository: &str,
    image: &Digest,
) -> Result<Vec<Descriptor>, TransferError> {
    let tag = format!("{}-{}", image.algorithm(), image.digest());
    if src.head_manifest(repository, &tag).await?.is_none() {
        return Ok(Vec::new());
    }
    let index = src.get_manifest(repository, &tag).await?;
    Ok(match index.graph() {
        Ok(crate::oci::ManifestGraph::Index { children, .. }) => {
            children.into_iter().map(|c| c.descriptor).collect()
        }
        _ => Vec::new(),
    })
}

/// Blob `digest` of `repository` read whole from `src` (a signature payload): `Ok(Err(why))` when
/// it is over `limit` bytes or does not hash to `digest` (a bad signature, not a reason to retry).
async fn small_blob(
    src: &Arc<dyn Source>,
    repository: &str,
    digest: &Digest,
    limit: u64,
) -> Result<Result<Vec<u8>, String>, TransferError> {
    use futures_util::StreamExt;
    let Some(mut verifier) = DigestVerifier::new(digest) else {
        return Ok(Err(format!(
            "digest algorithm of {digest} is not supported"
        )));
    };
    let mut body = Vec::new();
    let mut stream = src.clone().blob_bytes(repository, digest, 0, limit);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Ok(Err(format!(
                "over the {limit}-byte limit for a signature payload"
            )));
        }
        verifier.update(&chunk);
        body.extend_from_slice(&chunk);
    }
    Ok(verifier
        .finish()
        .map(|()| body)
        .map_err(|actual| format!("its bytes hash to {actual}")))
}

/// Whether one cosign signature manifest holds a signature of `image` by `key`: `Ok(Err(why))`
/// when it does not (a malformed manifest included), `Err` on a registry error.
async fn verify_manifest(
    src: &Arc<dyn Source>,
    repository: &str,
    reference: &str,
    image: &Digest,
    key: &CosignKey,
) -> Result<Result<(), String>, TransferError> {
    let manifest = match src.get_manifest(repository, reference).await {
        Ok(m) => m,
        Err(e) if e.is_not_found() => return Ok(Err("gone".into())),
        Err(e) => return Err(e),
    };
    let layers = match manifest.graph() {
        Ok(crate::oci::ManifestGraph::Image { blobs, .. }) => blobs,
        Ok(_) => return Ok(Err("not an image manifest".into())),
        Err(e) => return Ok(Err(e.to_string())),
    };
    let mut why = Vec::new();
    for layer in layers
        .iter()
        .filter(|l| l.media_type().to_string() == SIMPLE_SIGNING)
        .take(MAX_SIGNATURE_LAYERS)
    {
        let Some(signature) = layer
            .annotations()
            .as_ref()
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
        else {
            why.push(format!(
                "layer {} has no {SIGNATURE_ANNOTATION} annotation",
                layer.digest()
            ));
            continue;
        };
        // A payload that is too large or not what its digest says is a bad signature, not a
        // reason to retry.
        let payload = match small_blob(src, repository, layer.digest(), MAX_PAYLOAD_BYTES).await {
            Ok(Ok(p)) => p,
            Ok(Err(bad)) => {
                why.push(format!("payload {}: {bad}", layer.digest()));
                continue;
            }
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => {
                why.push(format!("payload {}: {e}", layer.digest()));
                continue;
            }
        };
        match key.verify(&payload, signature, image) {
            Ok(()) => return Ok(Ok(())),
            Err(e) => why.push(e.to_string()),
        }
    }
    if why.is_empty() {
        why.push(format!("no {SIMPLE_SIGNING} layer"));
    }
    Ok(Err(why.join(", ")))
}
