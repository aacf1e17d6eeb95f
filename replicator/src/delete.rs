//! Replicating a delete to one destination, guarded (DESIGN.md "Delete semantics").
//!
//! Invariants: a destination manifest is deleted only if it still holds the deleted digest *and*
//! the source no longer has it; never when a tag the policy does not cover points at it (reported
//! instead); a tag deleted alone on the source is deleted alone on the destination, or kept when
//! the registry deletes manifests by digest only. Every "not deleting" says why.
use crate::oci::digest;
use crate::oci::TagDelete;
use crate::policy::Policy;
use crate::queue::Job;
use crate::sync::PreparedPolicy;
use crate::transfer::{TransferContext, TransferError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted {
        digest: String,
    },
    /// Nothing deleted, and why (already gone, holds other content, source still has it, an
    /// uncovered tag points at it…).
    Kept {
        reason: String,
    },
}

/// DESIGN.md "Delete semantics": delete on the destination only what is still the deleted digest,
/// only when the source no longer has it, and never when a tag the policy does not cover points at
/// it.
pub async fn guarded_delete(
    policy: &Policy,
    prepared: &PreparedPolicy,
    ctx: &TransferContext,
    job: &Job,
) -> Result<DeleteOutcome, TransferError> {
    let kept = |reason: String| Ok(DeleteOutcome::Kept { reason });
    if !policy.replicate_deletion {
        return kept("the policy does not replicate deletions".into());
    }
    let Some(deleted) = job
        .digest
        .as_deref()
        .and_then(digest::parse)
        .or_else(|| digest::parse(&job.reference))
    else {
        return kept("the event names no digest, so the destination's content cannot be checked; not deleting".into());
    };
    let dst_repo = prepared
        .dest_repository(&job.repository)
        .map_err(TransferError::Policy)?;
    let is_tag = digest::parse(&job.reference).is_none();
    // Level-triggered: if the source has the content again (re-pushed), the delete is stale —
    // unless only a tag was deleted and the manifest stayed (handled below).
    let source_holds = ctx
        .src
        .head_manifest(&job.repository, deleted.as_ref())
        .await?
        .is_some();
    if source_holds && !is_tag {
        return kept(format!("the source holds {deleted} again"));
    }
    if is_tag {
        if let Some(cur) = ctx
            .src
            .head_manifest(&job.repository, &job.reference)
            .await?
        {
            return kept(format!(
                "the source tag {} now points at {}",
                job.reference, cur.digest
            ));
        }
        match ctx.dst.head_manifest(&dst_repo, &job.reference).await? {
            None => return kept("the destination tag is already gone".into()),
            Some(d) if d.digest != deleted => {
                return kept(format!(
                    "the destination tag holds {} (not the deleted {deleted}); keeping it",
                    d.digest
                ));
            }
            Some(_) => {}
        }
        if source_holds {
            // The source removed the tag alone: remove the tag alone, or say why not.
            return match ctx.dst.delete_tag(&dst_repo, &job.reference).await? {
                TagDelete::Deleted | TagDelete::Missing => Ok(DeleteOutcome::Deleted {
                    digest: deleted.to_string(),
                }),
                TagDelete::Unsupported => kept(format!(
                    "the source deleted only the tag {} ({deleted} stays there); registry {} deletes manifests by digest only, which would remove every tag of it, so the destination keeps the tag",
                    job.reference,
                    ctx.dst.name()
                )),
            };
        }
    } else if ctx
        .dst
        .head_manifest(&dst_repo, deleted.as_ref())
        .await?
        .is_none()
    {
        return kept("the destination does not have it".into());
    }
    // Deleting a manifest on distribution removes every tag pointing at it: refuse when one of those
    // tags is outside the policy (someone else's content).
    let selector = &prepared.selector;
    let tags = ctx.dst.list_tags(&dst_repo).await?;
    let mut pointing = Vec::new();
    for chunk in tags.chunks(8) {
        // A plain loop, not a closure: closure-made futures lose their concrete lifetimes and the
        // spawned job future would no longer be `Send`.
        let mut futs = Vec::with_capacity(chunk.len());
        for t in chunk {
            futs.push(ctx.dst.head_manifest(&dst_repo, t));
        }
        let heads = futures_util::future::join_all(futs).await;
        for (t, h) in chunk.iter().zip(heads) {
            if h?.is_some_and(|d| d.digest == deleted) {
                pointing.push(t.clone());
            }
        }
    }
    if let Some(uncovered) = pointing.iter().find(|t| !selector.matches_tag(t)) {
        return kept(format!("destination tag {uncovered} is not covered by the policy and points at {deleted}; not deleting"));
    }
    ctx.dst.delete_manifest(&dst_repo, &deleted).await?;
    Ok(DeleteOutcome::Deleted {
        digest: deleted.to_string(),
    })
}
