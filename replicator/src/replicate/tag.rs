//! Replicates one tag to one destination, level-triggered: `HEAD` both sides (or take what the
//! caller's `HEAD`s just learned, [`KnownHeads`]), and only when the destination differs `GET` the source manifest, filter it, judge it by the policy's gates
//! ([`super::gates`]), move its graph ([`crate::transfer`]), push it by tag and confirm with a
//! `HEAD`; then its referrers ([`super::referrers`]). For a gated policy, a signature or a scan
//! arriving later re-evaluates the tags at its digest ([`replicate_gated_tags`]).
//!
//! Invariants: whatever the source holds *now* is what the destination gets, so re-running a tag
//! or running it on a stale event is always safe; a tag is `Copied` only after the destination
//! answered the source digest; `override: false` never overwrites a differing destination tag; a
//! tag a gate holds back is `Blocked`, never an error.
use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;

use crate::oci::digest::Digest;
use crate::oci::{Manifest, ManifestGraph, RegistryError};
use crate::transfer::{self, Source, TransferContext, TransferError};

use super::gates::{Gate, HarborLookup};
use super::plan::{is_referrer_tag, referrer_tag_subject, PreparedPolicy, SourceRepo};
use super::referrers::copy_referrers;

/// What happened to one tag on one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TagOutcome {
    Copied {
        digest: String,
    },
    Unchanged {
        digest: String,
    },
    /// `override: false` and the destination holds other content under this tag.
    Kept {
        source_digest: String,
        destination_digest: String,
    },
    Skipped {
        reason: String,
    },
    /// A gate (`only_signed`, `max_severity`) held the image back: a decision, not an error (not
    /// retried; re-evaluated by the next full sync, or when the image's signature or scan arrives).
    Blocked {
        /// The source digest held back.
        digest: String,
        gate: Gate,
        reason: String,
    },
    Failed {
        error: String,
    },
}

/// Skip reason of a tag the source no longer has.
pub const TAG_GONE: &str = "tag disappeared from the source during the sync";

/// When a tag's referrers are looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Referrers {
    /// Also for unchanged tags (full reconciliations catch referrers pushed while events were lost).
    Always,
    /// Only after the tag was copied (event-driven jobs: a later referrer has its own event).
    OnCopy,
}

/// Explains a destination's `MANIFEST_BLOB_UNKNOWN` for a manifest whose graph this transfer has
/// just made present: for an index whose children a platform filter thinned out, the registry
/// requires every child (distribution 2.x does; permanent); otherwise a child another worker is
/// copying at the same time is not visible yet (retryable).
fn refused_incomplete(
    e: TransferError,
    sparse: bool,
    registry: &str,
    repository: &str,
    reference: &str,
) -> TransferError {
    let refused = matches!(
        &e,
        TransferError::Registry(r) if r.status() == Some(400) && r.has_code("MANIFEST_BLOB_UNKNOWN")
    );
    match e {
        TransferError::Registry(source) if refused && !sparse => TransferError::NotYetComplete {
            registry: registry.to_string(),
            repository: repository.to_string(),
            reference: reference.to_string(),
            source: Box::new(source),
        },
        e if refused => TransferError::Policy(format!(
            "registry {registry} refuses a sparse index (the platform filter left children out; it wants every child present): {e}. Remove the platform filter for this destination, or use a registry that accepts sparse indexes"
        )),
        e => e,
    }
}

/// What a caller learned about a tag on both sides just before the copy (a bidirectional job's
/// arbitration `HEAD`s both): [`copy_tag`] decides from it instead of asking again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHeads {
    /// The digest the source's tag resolves to.
    pub source: Digest,
    /// The digest the destination's tag resolves to; `None` when it has no such tag.
    pub destination: Option<Digest>,
}

/// Replicates `tag` of `repo` to `dst_repo` on `ctx.dst`: unchanged, kept (`override: false`),
/// copied or skipped; then, when the policy copies referrers, its referrers (counted in
/// `referrers_copied`). `known`: both sides' digests, `HEAD`ed by the caller just before.
/// A digest reference is checked and written under its manifest lease
/// ([`transfer::hold_manifest`]), so the child of an index that also has its own job is written
/// once.
#[allow(clippy::too_many_arguments)]
pub(super) async fn copy_tag(
    prepared: &PreparedPolicy,
    ctx: &TransferContext,
    repo: &SourceRepo,
    dst_repo: &str,
    tag: &str,
    referrers: Referrers,
    referrers_copied: &mut u64,
    known: Option<&KnownHeads>,
) -> Result<TagOutcome, TransferError> {
    let src_repo = &repo.repository;
    let writer = match crate::oci::digest::parse(tag) {
        Some(d) => transfer::hold_manifest(ctx, dst_repo, &d).await?,
        None => None,
    };
    let (src_digest, dst_digest) = match known {
        Some(k) => (Some(k.source.clone()), k.destination.clone()),
        None => {
            // Both sides at once: a no-op resync costs one round trip per tag.
            let (src_head, dst_head) = tokio::join!(
                ctx.src.head_manifest(src_repo, tag),
                ctx.dst.head_manifest(dst_repo, tag)
            );
            (src_head?.map(|h| h.digest), dst_head?.map(|h| h.digest))
        }
    };
    let Some(src_digest) = src_digest else {
        return Ok(TagOutcome::Skipped {
            reason: TAG_GONE.into(),
        });
    };
    let outcome = match &dst_digest {
        Some(d) if *d == src_digest => TagOutcome::Unchanged {
            digest: d.to_string(),
        },
        Some(d) if !prepared.policy.override_ => {
            tracing::info!(source_digest = %src_digest, destination_digest = %d, "destination tag differs; kept (override: false)");
            return Ok(TagOutcome::Kept {
                source_digest: src_digest.to_string(),
                destination_digest: d.to_string(),
            });
        }
        _ => copy_manifest(prepared, ctx, src_repo, dst_repo, tag).await?,
    };
    // Written (or found): its referrers are other manifests, with leases of their own.
    drop(writer);
    if prepared.policy.copy_referrers {
        *referrers_copied +=
            follow_referrers(prepared, ctx, repo, dst_repo, &outcome, referrers).await?;
    }
    Ok(outcome)
}

/// What the policy makes of a source tag: its manifest (with the graph parsed out of it), or why
/// the tag is skipped.
pub(crate) enum Admitted {
    Manifest(Manifest, Box<ManifestGraph>),
    Skipped(TagOutcome),
}

/// Reads the manifest of `src_repo:tag` from `src`, applies the policy's tag-level filters
/// (labels, resource, artifact_type of a referrer tag) and judges the image by the policy's gates
/// ([`super::gates`]; a held-back image is `TagOutcome::Blocked`). `ferry sync`, jobs and
/// `ferry export` all decide here which tags they carry.
pub(crate) async fn admit_tag(
    prepared: &PreparedPolicy,
    src: &Arc<dyn Source>,
    src_repo: &str,
    tag: &str,
) -> Result<Admitted, TransferError> {
    let skipped = |reason: String| Ok(Admitted::Skipped(TagOutcome::Skipped { reason }));
    // One Harbor artifact request serves the label filter and the scan gate.
    let gates = &prepared.gates;
    let harbor = if prepared.selector.has_label_filters() {
        let artifact = match src.registry() {
            Some(r) => {
                r.harbor_artifact(src_repo, tag, gates.max_severity.is_some())
                    .await?
            }
            None => None,
        };
        match artifact {
            Some(a) => HarborLookup::Found(a),
            None => HarborLookup::Missing,
        }
    } else {
        HarborLookup::NotAsked
    };
    if prepared.selector.has_label_filters() {
        let HarborLookup::Found(artifact) = &harbor else {
            return Err(TransferError::Policy(format!(
                "label filter: {} did not answer Harbor's artifact API for {src_repo}:{tag} (404); label filters need a Harbor source registry",
                src.name()
            )));
        };
        if !prepared.selector.matches_labels(&artifact.labels) {
            return skipped(format!(
                "excluded by the label filter (labels: {:?})",
                artifact.labels
            ));
        }
    }
    let manifest = match src.get_manifest(src_repo, tag).await {
        Ok(m) => m,
        Err(e) if e.is_not_found() => return skipped(TAG_GONE.into()),
        Err(e) => return Err(e),
    };
    let graph = manifest.graph().map_err(|source| TransferError::Manifest {
        registry: src.name().to_string(),
        repository: src_repo.to_string(),
        digest: manifest.digest.to_string(),
        source,
    })?;
    if !prepared.selector.matches_resource(graph.is_image()) {
        return skipped("excluded by the resource filter".into());
    }
    // A referrer pushed under the tag scheme (its own event) follows the artifact_type
    // filter like a referrer found through its subject.
    if is_referrer_tag(tag)
        && !prepared
            .selector
            .matches_artifact_type(manifest.artifact_type().as_deref())
    {
        return skipped("excluded by the artifact_type filter".into());
    }
    // Referrers are not gated (signatures are not signed): a referrer-scheme tag, or a manifest
    // with a subject.
    let is_referrer = is_referrer_tag(tag)
        || matches!(
            &graph,
            ManifestGraph::Index {
                subject: Some(_),
                ..
            } | ManifestGraph::Image {
                subject: Some(_),
                ..
            }
        );
    if gates.any() && !is_referrer {
        if let Some(blocked) = gates
            .check(src, src_repo, tag, &manifest.digest, harbor)
            .await?
        {
            tracing::info!(gate = %blocked.gate, reason = %blocked.reason, digest = %manifest.digest, "tag blocked by a gate");
            return Ok(Admitted::Skipped(TagOutcome::Blocked {
                digest: manifest.digest.to_string(),
                gate: blocked.gate,
                reason: blocked.reason,
            }));
        }
    }
    Ok(Admitted::Manifest(manifest, Box::new(graph)))
}

/// Copies the source's manifest of `tag` (its graph first) unless a filter excludes it, pushes it
/// by tag and confirms the destination stored its digest (the `PUT`'s `Docker-Content-Digest`, or
/// a `HEAD` of the tag when the answer does not name one).
async fn copy_manifest(
    prepared: &PreparedPolicy,
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    tag: &str,
) -> Result<TagOutcome, TransferError> {
    let (manifest, graph) = match admit_tag(prepared, &ctx.src, src_repo, tag).await? {
        Admitted::Manifest(m, g) => (m, g),
        Admitted::Skipped(outcome) => return Ok(outcome),
    };
    transfer::ensure_graph(ctx, src_repo, dst_repo, &manifest, &prepared.selector).await?;
    let sparse =
        matches!(*graph, ManifestGraph::Index { .. }) && prepared.selector.has_platform_filter();
    let confirmed = transfer::push_manifest(ctx, dst_repo, tag, &manifest)
        .await
        .map_err(|e| refused_incomplete(e, sparse, ctx.dst.name(), dst_repo, tag))?;
    // The `PUT`'s answer naming the digest is the registry's confirmation; only a registry that
    // does not say is asked.
    if !confirmed {
        verify_tag(ctx, dst_repo, tag, &manifest.digest).await?;
    }
    Ok(TagOutcome::Copied {
        digest: manifest.digest.to_string(),
    })
}

/// Copies the referrers of a copied tag's manifest (and of an unchanged one's when `referrers`
/// says `Always`). Returns how many were pushed.
async fn follow_referrers(
    prepared: &PreparedPolicy,
    ctx: &TransferContext,
    repo: &SourceRepo,
    dst_repo: &str,
    outcome: &TagOutcome,
    referrers: Referrers,
) -> Result<u64, TransferError> {
    let subject = match (outcome, referrers) {
        (TagOutcome::Copied { digest }, _)
        | (TagOutcome::Unchanged { digest }, Referrers::Always) => digest.parse::<Digest>().ok(),
        _ => None,
    };
    let Some(subject) = subject else {
        return Ok(0);
    };
    // Referrer tags are found in the repository's tag list; a job listed none up front.
    let listed;
    let repo = if repo.all_tags.is_empty() {
        listed = SourceRepo {
            all_tags: ctx.src.list_tags(&repo.repository).await?,
            ..repo.clone()
        };
        &listed
    } else {
        repo
    };
    copy_referrers(prepared, ctx, repo, dst_repo, &subject, 0).await
}

/// Replicates one `repository:reference` (tag or digest) on `ctx.dst`, level-triggered: whatever
/// the source holds *now* is what the destination gets. Used by workers for event-driven jobs.
/// `known`: both sides' digests of the tag as the caller `HEAD`ed them just before (a
/// bidirectional job's arbitration), used by the first attempt instead of asking again.
/// Returns the outcome and the number of referrers copied; errors keep their retryability.
pub async fn replicate_reference(
    prepared: &PreparedPolicy,
    ctx: &TransferContext,
    repository: &str,
    reference: &str,
    event_digest: Option<&str>,
    known: Option<KnownHeads>,
) -> Result<(TagOutcome, u64), TransferError> {
    let mut known = known;
    let dst_repo = prepared
        .dest_repository(repository)
        .map_err(TransferError::Policy)?;
    // The tag list (for referrer tags) is fetched only if something is copied: a referrer pushed
    // later arrives as its own event, so an unchanged tag needs no referrer check here.
    let repo = SourceRepo {
        repository: repository.to_string(),
        tags: vec![reference.to_string()],
        all_tags: Vec::new(),
    };
    // distribution announces a push from its manifest store *before* it links the tag, so a fast
    // worker can find the tag missing while the pushed manifest exists: wait briefly for the tag,
    // then hand the job back as retryable. (A delete removes the manifest too: then it is gone.)
    let mut waits = [50u64, 100, 200, 400, 800].into_iter();
    loop {
        let mut referrers = 0;
        let outcome = copy_tag(
            prepared,
            ctx,
            &repo,
            &dst_repo,
            reference,
            Referrers::OnCopy,
            &mut referrers,
            known.take().as_ref(),
        )
        .await?;
        let announced = match (&outcome, event_digest) {
            (TagOutcome::Skipped { reason }, Some(d)) if reason == TAG_GONE && d != reference => {
                ctx.src.head_manifest(repository, d).await?.is_some()
            }
            _ => false,
        };
        if !announced {
            return Ok((outcome, referrers));
        }
        match waits.next() {
            Some(ms) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
            None => {
                return Err(TransferError::NotYetVisible {
                    registry: ctx.src.name().to_string(),
                    repository: repository.to_string(),
                    reference: reference.to_string(),
                })
            }
        }
    }
}

/// What an event about a signature or a scan changes under a gated policy
/// ([`replicate_gated_tags`]).
#[derive(Debug, Clone, Default)]
pub struct GateRecheck {
    /// The digest whose covered tags were re-evaluated: a signature's subject, or the scanned
    /// image; `None` when the reference is an ordinary tag (its own job decides it).
    pub digest: Option<Digest>,
    /// The reference is a referrer (a referrer-scheme tag, or a manifest with a subject): it is
    /// copied as usual after its subject's tags, when the policy copies referrers.
    pub is_referrer: bool,
    /// Each covered tag pointing at `digest`, and what became of it on this destination.
    pub tags: Vec<(String, TagOutcome)>,
}

/// For a gated policy: a signature arriving after its image (cosign's `sha256-<hex>.sig` tag, a
/// referrer-scheme tag, or a referrer pushed by digest) or Harbor's scan finishing (an event by
/// the image's digest) can release tags a gate held back. Re-evaluates the covered tags of
/// `repository` that point at that digest (a tag listing and a `HEAD` per covered tag; nothing
/// when the destination already has the digest), each like the tag of a push event (its
/// referrers follow when it is copied).
pub async fn replicate_gated_tags(
    prepared: &PreparedPolicy,
    ctx: &TransferContext,
    repository: &str,
    reference: &str,
) -> Result<GateRecheck, TransferError> {
    let mut recheck = GateRecheck::default();
    let digest = if is_referrer_tag(reference) {
        recheck.is_referrer = true;
        referrer_tag_subject(reference)
    } else if let Some(d) = crate::oci::digest::parse(reference) {
        let manifest = match ctx.src.get_manifest(repository, reference).await {
            Ok(m) => m,
            Err(e) if e.is_not_found() => return Ok(recheck),
            Err(e) => return Err(e),
        };
        match manifest.graph() {
            Ok(ManifestGraph::Index {
                subject: Some(s), ..
            })
            | Ok(ManifestGraph::Image {
                subject: Some(s), ..
            }) => {
                recheck.is_referrer = true;
                Some(s.digest().clone())
            }
            _ => Some(d),
        }
    } else {
        None
    };
    let Some(digest) = digest else {
        return Ok(recheck);
    };
    recheck.digest = Some(digest.clone());
    let dst_repo = prepared
        .dest_repository(repository)
        .map_err(TransferError::Policy)?;
    if ctx
        .dst
        .head_manifest(&dst_repo, digest.as_ref())
        .await?
        .is_some()
    {
        return Ok(recheck);
    }
    let all_tags: Vec<String> = ctx
        .src
        .list_tags(repository)
        .await?
        .into_iter()
        .filter(|t| {
            super::listed_name(
                ctx.src.name(),
                Some(repository),
                crate::policy::check_tag(t),
            )
        })
        .collect();
    // Futures built in a loop (not a closure) keep concrete lifetimes, so workers can spawn this.
    let mut heads = Vec::new();
    for t in all_tags
        .iter()
        .filter(|t| prepared.selector.matches_tag(t) && !is_referrer_tag(t))
    {
        heads.push(async move {
            Ok::<_, TransferError>((t.clone(), ctx.src.head_digest(repository, t).await?))
        });
    }
    let heads: Vec<(String, Option<Digest>)> = futures_util::stream::iter(heads)
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let mut at: Vec<String> = heads
        .into_iter()
        .filter(|(_, d)| d.as_ref() == Some(&digest))
        .map(|(t, _)| t)
        .collect();
    at.sort();
    let repo = SourceRepo {
        repository: repository.to_string(),
        tags: at.clone(),
        all_tags,
    };
    for tag in at {
        let mut referrers = 0;
        let outcome = copy_tag(
            prepared,
            ctx,
            &repo,
            &dst_repo,
            &tag,
            Referrers::OnCopy,
            &mut referrers,
            None,
        )
        .await?;
        tracing::info!(tag = %tag, %digest, outcome = ?outcome, "tag re-evaluated after its signature or scan arrived");
        recheck.tags.push((tag, outcome));
    }
    Ok(recheck)
}

/// Confirms the destination tag resolves to `digest`.
async fn verify_tag(
    ctx: &TransferContext,
    dst_repo: &str,
    tag: &str,
    digest: &Digest,
) -> Result<(), TransferError> {
    match ctx.dst.head_manifest(dst_repo, tag).await? {
        Some(d) if &d.digest == digest => Ok(()),
        other => Err(RegistryError::InvalidResponse {
            registry: ctx.dst.name().to_string(),
            url: format!("{}v2/{dst_repo}/manifests/{tag}", ctx.dst.base_url()),
            message: format!(
                "after the push the tag resolves to {}, not {digest}",
                other
                    .map(|d| d.digest.to_string())
                    .unwrap_or_else(|| "nothing".into())
            ),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::error::ErrorEntry;

    fn put_refused(code: &str) -> TransferError {
        TransferError::Registry(RegistryError::Status {
            registry: "dst".into(),
            method: "PUT".into(),
            url: "http://dst/v2/app/manifests/v1".into(),
            status: 400,
            errors: vec![ErrorEntry {
                code: code.into(),
                message: "blob unknown to registry".into(),
            }],
        })
    }

    #[test]
    fn an_index_refused_for_a_child_not_visible_yet_is_retried() {
        let e = refused_incomplete(
            put_refused("MANIFEST_BLOB_UNKNOWN"),
            false,
            "dst",
            "app",
            "v1",
        );
        assert!(matches!(e, TransferError::NotYetComplete { .. }), "{e:?}");
        assert!(e.is_retryable());
        assert!(e.to_string().contains("app:v1"), "{e}");
    }

    #[test]
    fn a_sparse_index_refused_for_its_left_out_children_is_a_policy_error() {
        let e = refused_incomplete(
            put_refused("MANIFEST_BLOB_UNKNOWN"),
            true,
            "dst",
            "app",
            "v1",
        );
        assert!(matches!(e, TransferError::Policy(_)), "{e:?}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn other_refusals_are_left_as_they_are() {
        let e = refused_incomplete(put_refused("MANIFEST_INVALID"), false, "dst", "app", "v1");
        assert!(matches!(e, TransferError::Registry(_)), "{e:?}");
        assert!(!e.is_retryable());
    }
}
