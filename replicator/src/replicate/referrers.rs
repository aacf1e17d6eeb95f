//! Referrers (signatures, SBOMs, attestations) follow their subject: found through the OCI 1.1
//! referrers API when the source has it and through `sha256-<hex>[.suffix]` tags otherwise, copied
//! to a small depth, and listed in the subject's fallback tag index on a destination without the
//! referrers API.
//!
//! Invariant: a referrer outside the policy's `artifact_type` filter is never copied.
use std::collections::BTreeSet;

use oci_spec::image::Descriptor;

use crate::oci::digest::Digest;
use crate::transfer::{self, Source, TransferContext, TransferError};

use super::plan::{is_referrer_tag, PreparedPolicy, SourceRepo};

/// Copies the referrers of `subject` (and, to a small depth, theirs). Returns how many were pushed.
pub(super) async fn copy_referrers(
    prepared: &PreparedPolicy,
    ctx: &TransferContext,
    repo: &SourceRepo,
    dst_repo: &str,
    subject: &Digest,
    depth: u32,
) -> Result<u64, TransferError> {
    if depth > 3 {
        return Ok(0);
    }
    let src_repo = &repo.repository;
    let (listed, refs) = find_referrers(ctx.src.as_ref(), repo, subject).await?;
    let mut pushed = 0;
    let mut copied = Vec::new();
    for src_ref in refs {
        let dst_ref = &src_ref;
        let Some(src_head) = ctx.src.head_manifest(src_repo, &src_ref).await? else {
            continue;
        };
        let unchanged = ctx
            .dst
            .head_manifest(dst_repo, dst_ref)
            .await?
            .is_some_and(|d| d.digest == src_head.digest);
        if !unchanged {
            let m = ctx.src.get_manifest(src_repo, &src_ref).await?;
            let artifact_type = m.artifact_type();
            if !prepared
                .selector
                .matches_artifact_type(artifact_type.as_deref())
            {
                tracing::debug!(referrer = %src_ref, ?artifact_type, "referrer excluded by the artifact_type filter");
                continue;
            }
            transfer::ensure_graph(ctx, src_repo, dst_repo, &m, &prepared.selector).await?;
            transfer::push_manifest(ctx, dst_repo, dst_ref, &m).await?;
            pushed += 1;
            tracing::info!(referrer = %src_ref, %subject, "referrer copied");
        }
        if let Some(d) = listed.iter().find(|d| d.digest().to_string() == src_ref) {
            copied.push(d.clone());
        }
        pushed += Box::pin(copy_referrers(
            prepared,
            ctx,
            repo,
            dst_repo,
            &src_head.digest,
            depth + 1,
        ))
        .await?;
    }
    if !copied.is_empty() && ctx.dst.referrers(dst_repo, subject).await?.is_none() {
        pushed += update_referrers_tag(ctx, dst_repo, subject, &copied).await?;
    }
    Ok(pushed)
}

/// The referrers of `subject` on `src`: what its referrers API lists (`None` from a source without
/// one counts as none), and every reference to read them by — those digests plus the repository's
/// `<alg>-<hex>[.suffix]` tags — each once, in order.
pub(crate) async fn find_referrers(
    src: &dyn Source,
    repo: &SourceRepo,
    subject: &Digest,
) -> Result<(Vec<Descriptor>, Vec<String>), TransferError> {
    let listed = src
        .referrers(&repo.repository, subject)
        .await?
        .unwrap_or_default();
    let mut refs: BTreeSet<String> = listed.iter().map(|d| d.digest().to_string()).collect();
    let prefix = format!("{}-{}", subject.algorithm(), subject.digest());
    refs.extend(
        repo.all_tags
            .iter()
            .filter(|t| t.starts_with(&prefix) && is_referrer_tag(t))
            .cloned(),
    );
    Ok((listed, refs.into_iter().collect()))
}

/// On a destination without the referrers API, lists `referrers` in the subject's fallback tag
/// (`<alg>-<hex>`, an OCI index), as the distribution spec tells clients to, so they can be found
/// there. Returns 1 when the index was written, 0 when it already listed them all.
async fn update_referrers_tag(
    ctx: &TransferContext,
    dst_repo: &str,
    subject: &Digest,
    referrers: &[Descriptor],
) -> Result<u64, TransferError> {
    let tag = format!("{}-{}", subject.algorithm(), subject.digest());
    let mut manifests: Vec<Descriptor> = match ctx.dst.head_manifest(dst_repo, &tag).await? {
        Some(_) => {
            let current = ctx.dst.get_manifest(dst_repo, &tag).await?;
            match current.graph() {
                Ok(crate::oci::ManifestGraph::Index { children, .. }) => {
                    children.into_iter().map(|c| c.descriptor).collect()
                }
                // Something else holds the tag: leave it alone.
                _ => return Ok(0),
            }
        }
        None => Vec::new(),
    };
    let before = manifests.len();
    for d in referrers {
        if !manifests.iter().any(|m| m.digest() == d.digest()) {
            manifests.push(d.clone());
        }
    }
    if manifests.len() == before {
        return Ok(0);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::oci::manifest::OCI_INDEX,
        "manifests": manifests,
    });
    let bytes = serde_json::to_vec(&index).map_err(|e| TransferError::Policy(e.to_string()))?;
    let manifest = crate::oci::Manifest {
        media_type: crate::oci::manifest::OCI_INDEX.to_string(),
        digest: crate::oci::digest::sha256(&bytes),
        bytes: bytes.into(),
    };
    ctx.dst.put_manifest(dst_repo, &tag, &manifest).await?;
    tracing::info!(%subject, tag, referrers = manifests.len(), "referrers tag index written (the destination has no referrers API)");
    Ok(1)
}
