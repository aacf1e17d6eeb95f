//! Replicating a delete to one destination, guarded (DESIGN.md "Delete semantics").
//!
//! Invariants: a destination manifest is deleted only if it still holds the deleted digest *and*
//! the source no longer has it; never when a tag the policy does not cover points at it (reported
//! instead); a tag deleted alone on the source is deleted alone on the destination, or kept when
//! the registry deletes manifests by digest only. Every "not deleting" says why.
use crate::oci::digest::{self, Digest};
use crate::oci::TagDelete;
use crate::replicate::PreparedPolicy;
use crate::store::queue::Job;
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
    prepared: &PreparedPolicy,
    ctx: &TransferContext,
    job: &Job,
) -> Result<DeleteOutcome, TransferError> {
    let kept = |reason: String| Ok(DeleteOutcome::Kept { reason });
    if !prepared.policy.replicates_deletion() {
        return kept("the policy does not replicate deletions".into());
    }
    let Some(deleted) = deleted_digest(job) else {
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
        if let Some(outcome) = delete_tag(ctx, job, &dst_repo, &deleted, source_holds).await? {
            return Ok(outcome);
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
    let pointing = tags_pointing_at(ctx, &dst_repo, &deleted).await?;
    if let Some(uncovered) = pointing.iter().find(|t| !prepared.selector.matches_tag(t)) {
        return kept(format!("destination tag {uncovered} is not covered by the policy and points at {deleted}; not deleting"));
    }
    ctx.dst.delete_manifest(&dst_repo, &deleted).await?;
    Ok(DeleteOutcome::Deleted {
        digest: deleted.to_string(),
    })
}

/// The digest a delete job removes: the one its event names, else its reference when that is a
/// digest; `None` when neither is (a tag delete whose event names no digest).
fn deleted_digest(job: &Job) -> Option<Digest> {
    job.digest
        .as_deref()
        .and_then(digest::parse)
        .or_else(|| digest::parse(&job.reference))
}

/// Why a destination tag is kept when the source deleted it as `deleted`: it is already gone, or
/// holds other content (`destination`: what the tag holds there now); `None` when it still holds
/// the deleted digest.
fn destination_tag_kept(destination: Option<&Digest>, deleted: &Digest) -> Option<String> {
    match destination {
        None => Some("the destination tag is already gone".into()),
        Some(d) if d != deleted => Some(format!(
            "the destination tag holds {d} (not the deleted {deleted}); keeping it"
        )),
        Some(_) => None,
    }
}

/// A tag deleted on the source: the outcome when the tag decides it (the source tag points at new
/// content, the destination tag is gone or holds other content, or only the tag was deleted);
/// `None` when the manifest itself is to be deleted.
async fn delete_tag(
    ctx: &TransferContext,
    job: &Job,
    dst_repo: &str,
    deleted: &Digest,
    source_holds: bool,
) -> Result<Option<DeleteOutcome>, TransferError> {
    let kept = |reason: String| Ok(Some(DeleteOutcome::Kept { reason }));
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
    let destination = ctx.dst.head_manifest(dst_repo, &job.reference).await?;
    if let Some(reason) = destination_tag_kept(destination.map(|d| d.digest).as_ref(), deleted) {
        return kept(reason);
    }
    if !source_holds {
        return Ok(None);
    }
    // The source removed the tag alone: remove the tag alone, or say why not.
    match ctx.dst.delete_tag(dst_repo, &job.reference).await? {
        TagDelete::Deleted | TagDelete::Missing => Ok(Some(DeleteOutcome::Deleted {
            digest: deleted.to_string(),
        })),
        TagDelete::Unsupported => kept(format!(
            "the source deleted only the tag {} ({deleted} stays there); registry {} deletes manifests by digest only, which would remove every tag of it, so the destination keeps the tag",
            job.reference,
            ctx.dst.name()
        )),
    }
}

/// The tags of `dst_repo` on the destination that point at `deleted` (eight heads at a time).
async fn tags_pointing_at(
    ctx: &TransferContext,
    dst_repo: &str,
    deleted: &Digest,
) -> Result<Vec<String>, TransferError> {
    let tags = ctx.dst.list_tags(dst_repo).await?;
    let mut pointing = Vec::new();
    for chunk in tags.chunks(8) {
        // A plain loop, not a closure: closure-made futures lose their concrete lifetimes and the
        // spawned job future would no longer be `Send`.
        let mut futs = Vec::with_capacity(chunk.len());
        for t in chunk {
            futs.push(ctx.dst.head_manifest(dst_repo, t));
        }
        let heads = futures_util::future::join_all(futs).await;
        for (t, h) in chunk.iter().zip(heads) {
            if h?.is_some_and(|d| d.digest == *deleted) {
                pointing.push(t.clone());
            }
        }
    }
    Ok(pointing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn delete(reference: &str, digest: Option<&str>) -> Job {
        Job {
            digest: digest.map(str::to_string),
            ..Job::new("p", EventKind::Delete, "library/app", reference)
        }
    }

    #[test]
    fn the_deleted_digest_is_the_events_else_the_reference() {
        let a = digest::parse(A);
        assert_eq!(deleted_digest(&delete("v1", Some(A))), a);
        assert_eq!(deleted_digest(&delete(A, None)), a);
        assert_eq!(deleted_digest(&delete(B, Some(A))), a);
    }

    #[test]
    fn a_tag_delete_without_a_digest_deletes_nothing() {
        assert_eq!(deleted_digest(&delete("v1", None)), None);
        assert_eq!(deleted_digest(&delete("v1", Some("not-a-digest"))), None);
    }

    #[test]
    fn a_destination_tag_is_deleted_only_while_it_holds_the_deleted_digest() {
        let (a, b) = (digest::parse(A).unwrap(), digest::parse(B).unwrap());
        assert_eq!(destination_tag_kept(Some(&a), &a), None);
        assert_eq!(
            destination_tag_kept(Some(&b), &a).as_deref(),
            Some(
                format!("the destination tag holds {B} (not the deleted {A}); keeping it").as_str()
            )
        );
        assert_eq!(
            destination_tag_kept(None, &a).as_deref(),
            Some("the destination tag is already gone")
        );
    }
}
