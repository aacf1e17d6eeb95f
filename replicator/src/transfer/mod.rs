//! Moves one manifest graph from a source repository to a destination repository, copying only
//! what the destination lacks.
//!
//! For each blob: nothing when this process saw it in the destination repository already (→
//! skipped); else a cross-repository mount from a destination repository known to hold it, without
//! a `HEAD` first (→ mounted); else `HEAD` on the destination (present → skipped); else a streaming
//! `GET` from the source piped into an upload on the destination (→ copied). What the process saw
//! *present* is remembered ([`BlobLedger`]), never what it saw missing, so a concurrent delete
//! costs at most a refused manifest and a retry, never a skipped copy. The stream is hashed as it
//! passes and the **last byte is held back until the digest matched**, so a corrupt source never
//! completes an upload; the session is cancelled (`DELETE`) on any failure. Uploads are monolithic
//! (one streaming `PUT`) below the destination's chunk threshold (`chunk_threshold`, default
//! 256 MiB) and chunked from there, or always with the policy's `copy_by_chunk`; a registry
//! refusing chunks gets `PUT`s.
//!
//! **Resuming.** A chunked upload checkpoints its session URL, the offset the destination
//! confirmed and the hash state over those bytes on the job ([`Checkpoints`]) after every chunk.
//! Whoever runs the job next (this process after a transient error, another worker after a crash)
//! asks the destination for the session's status; when it holds exactly the checkpointed bytes the
//! upload continues there, reading the source from that offset (`Range`) and hashing only the rest,
//! so the final digest check still covers the whole blob. A session that is gone or holds other
//! bytes starts a new upload (logged). A retryable failure keeps a checkpointed session for the
//! retry; any other failure cancels it. Source reads that break off mid-body resume with `Range`
//! from the first byte not received ([`READ_RESUMES`] times per read).
//!
//! Invariants: child manifests are pushed (by digest) before their parent; the caller pushes the top
//! manifest (by tag) only after [`ensure_graph`] returned `Ok`; within one process, concurrent copies
//! of the same blob to the same destination transfer it once ([`BlobLedger`]); among workers, a
//! manifest pushed by digest is checked and written under its lease ([`hold_manifest`]), so two
//! jobs needing the same child write it once.
//!
//! # Layout
//! - this file (`transfer/mod.rs`): the entry points ([`ensure_graph`], [`push_manifest`],
//!   [`copy_blob`]), [`TransferContext`], [`TransferError`] and the run's [`TransferStats`] — and
//!   **the file that decides whether a blob is skipped, mounted or copied** (`copy_blob_locked`).
//! - `coordinate`: [`BlobLedger`] (one upload per blob within a process), [`BlobLeases`] (one
//!   uploader per blob among the workers of a queue) and [`ManifestLeases`] (one writer per
//!   manifest pushed by digest; its docs say why a lease and not a hold on digest-only events).
//! - `checkpoints`: [`Checkpoints`], where interrupted chunked uploads stand.
//! - `source`: [`Source`], what a transfer reads from — a registry, or an OCI image layout on disk
//!   (`ferry import`, [`crate::layout`]).
//! - `upload`: one blob's upload — monolithic or chunked, retries, and whether a checkpointed
//!   session can be continued.
//! - `verify`: the source's bytes — read with `Range` resumes, and verified on their way so the
//!   last byte is released only after size and digest matched.
mod checkpoints;
mod coordinate;
mod source;
mod upload;
mod verify;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::{stream, StreamExt, TryStreamExt};
use oci_spec::image::Descriptor;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::oci::client::BlobUpload;
use crate::oci::digest::Digest;
use crate::oci::manifest::{self, ManifestError, ManifestGraph};
use crate::oci::{Manifest, MountOutcome, RegistryClient, RegistryError};
use crate::policy::Selector;
use crate::throttle::Throttle;

pub use checkpoints::Checkpoints;
pub use coordinate::{hold_manifest, BlobLeases, BlobLedger, ManifestHold, ManifestLeases};
pub use source::Source;
pub use verify::{StreamFailure, READ_RESUMES};

use coordinate::{coordinate, keep_lease, Coordinated, Holders};
use upload::upload_with_retries;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("registry {registry}: manifest {repository}@{digest}: {source}")]
    Manifest {
        registry: String,
        repository: String,
        digest: String,
        #[source]
        source: ManifestError,
    },
    #[error("registry {registry}: {repository}@{digest}: digest algorithm not supported")]
    UnsupportedDigest {
        registry: String,
        repository: String,
        digest: String,
    },
    /// The event announced content the source does not show yet (a tag not linked yet); retryable.
    #[error("registry {registry}: {repository}:{reference} was announced but is not visible on the source yet")]
    NotYetVisible {
        registry: String,
        repository: String,
        reference: String,
    },
    /// The destination refused a manifest because content it references is not there yet, after
    /// this transfer found (or made) all of it present: another worker's copy of the same child is
    /// still being written (distribution answers `MANIFEST_BLOB_UNKNOWN`); retryable.
    #[error("registry {registry}: {repository}:{reference} references content the registry does not show yet (another copy of it may still be in flight): {source}")]
    NotYetComplete {
        registry: String,
        repository: String,
        reference: String,
        source: Box<crate::oci::RegistryError>,
    },
    /// A bidirectional conflict cannot be decided yet: the destination holds content whose push is
    /// not in the ledger (its event is on the way); retryable.
    #[error("registry {registry}: {repository}:{tag} holds {digest}, whose push is not recorded yet; waiting for its event to decide the conflict")]
    ConflictPending {
        registry: String,
        repository: String,
        tag: String,
        digest: String,
    },
    /// An OCI image layout (`ferry import`) is unreadable, tampered with or lacks content; permanent.
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),
    /// The policy cannot be applied to this content (e.g. its namespace rule); permanent.
    #[error("{0}")]
    Policy(String),
    #[error("cancelled")]
    Cancelled,
    /// The job's lease was reclaimed by another worker while this one was uploading: it stops
    /// without touching the upload session, which the new owner may be continuing.
    #[error("the job's lease was lost to another worker")]
    LeaseLost,
}

impl TransferError {
    /// Errors a later retry may fix (network, 5xx, rate limits).
    pub fn is_retryable(&self) -> bool {
        match self {
            TransferError::Registry(e) => e.is_retryable(),
            TransferError::NotYetVisible { .. }
            | TransferError::NotYetComplete { .. }
            | TransferError::ConflictPending { .. } => true,
            _ => false,
        }
    }
}

type Result<T, E = TransferError> = std::result::Result<T, E>;

/// Counters of one run; shared by every transfer of it (and read by progress displays).
#[derive(Debug, Default)]
pub struct TransferStats {
    pub blobs_copied: AtomicU64,
    pub blobs_mounted: AtomicU64,
    pub blobs_skipped: AtomicU64,
    pub manifests_pushed: AtomicU64,
    /// Blob bytes sent to destinations (counted as they stream).
    pub bytes_copied: AtomicU64,
    /// Sizes of the blobs that had to be uploaded (known as each upload starts): with
    /// `bytes_copied`, the byte progress of a transfer.
    pub bytes_planned: AtomicU64,
}

impl TransferStats {
    /// Adds another run's counts (e.g. one job's) to these.
    pub fn add(&self, s: &StatsSnapshot) {
        self.blobs_copied
            .fetch_add(s.blobs_copied, Ordering::Relaxed);
        self.blobs_mounted
            .fetch_add(s.blobs_mounted, Ordering::Relaxed);
        self.blobs_skipped
            .fetch_add(s.blobs_skipped, Ordering::Relaxed);
        self.manifests_pushed
            .fetch_add(s.manifests_pushed, Ordering::Relaxed);
        self.bytes_copied
            .fetch_add(s.bytes_copied, Ordering::Relaxed);
        self.bytes_planned
            .fetch_add(s.bytes_planned, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            blobs_copied: self.blobs_copied.load(Ordering::Relaxed),
            blobs_mounted: self.blobs_mounted.load(Ordering::Relaxed),
            blobs_skipped: self.blobs_skipped.load(Ordering::Relaxed),
            manifests_pushed: self.manifests_pushed.load(Ordering::Relaxed),
            bytes_copied: self.bytes_copied.load(Ordering::Relaxed),
            bytes_planned: self.bytes_planned.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub blobs_copied: u64,
    pub blobs_mounted: u64,
    pub blobs_skipped: u64,
    pub manifests_pushed: u64,
    pub bytes_copied: u64,
    pub bytes_planned: u64,
}

/// What happened to one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    Skipped,
    Mounted,
    Copied,
}

/// Everything one transfer needs; cheap to clone.
#[derive(Clone)]
pub struct TransferContext {
    /// Where manifests and blobs are read: a registry, or a layout on disk (`ferry import`).
    pub src: Arc<dyn Source>,
    pub dst: Arc<RegistryClient>,
    pub ledger: Arc<BlobLedger>,
    pub stats: Arc<TransferStats>,
    pub throttle: Option<Arc<Throttle>>,
    pub cancel: CancellationToken,
    /// Upload every blob in chunks (the policy's `copy_by_chunk`).
    pub copy_by_chunk: bool,
    /// Blobs copied in parallel within one manifest (the per-registry slots bound the total).
    pub blob_parallelism: usize,
    /// Cross-process coordination of blob uploads (workers sharing a queue); `None` for one-shot
    /// syncs, where the in-process [`BlobLedger`] is enough.
    pub leases: Option<Arc<BlobLeases>>,
    /// Cross-process coordination of manifest writes by digest (workers sharing a queue): one
    /// writer per `(destination, repository, digest)`; `None` for one-shot syncs.
    pub manifest_leases: Option<Arc<ManifestLeases>>,
    /// Where interrupted chunked uploads stand (the job's checkpoints, or this process's own).
    pub checkpoints: Arc<Checkpoints>,
}

/// Makes sure everything `manifest` references exists in `dst_repo` on the destination: child
/// manifests (pushed by digest) and blobs. Does not push `manifest` itself.
pub async fn ensure_graph(
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    manifest: &Manifest,
    selector: &Selector,
) -> Result<()> {
    let graph = parse_graph(ctx, src_repo, manifest)?;
    match graph {
        ManifestGraph::Index { children, .. } => {
            for child in children.iter().filter(|c| wanted_child(selector, c)) {
                copy_child_manifest(ctx, src_repo, dst_repo, child.descriptor.digest(), selector)
                    .await?;
            }
            Ok(())
        }
        ManifestGraph::Image { blobs, .. } => {
            let blobs: Vec<Descriptor> = blobs.into_iter().filter(distributable).collect();
            // Futures built in a loop (not a closure) keep concrete lifetimes, so callers can spawn.
            let mut copies = Vec::with_capacity(blobs.len());
            for d in &blobs {
                copies.push(copy_blob(ctx, src_repo, dst_repo, d));
            }
            stream::iter(copies)
                .buffer_unordered(ctx.blob_parallelism.max(1))
                .try_collect::<Vec<_>>()
                .await?;
            Ok(())
        }
    }
}

/// Whether an index's child is part of what the policy copies (its platform filter; children
/// without a platform, such as attestations, follow the index).
pub fn wanted_child(selector: &Selector, child: &manifest::Child) -> bool {
    match (&child.platform, selector.has_platform_filter()) {
        (_, false) => true,
        (Some((os, arch, variant)), true) => {
            selector.matches_platform(os, arch, variant.as_deref())
        }
        (None, true) => true,
    }
}

/// Whether a blob may be pushed to another registry (foreign/non-distributable layers are not).
pub fn distributable(desc: &Descriptor) -> bool {
    !manifest::is_non_distributable(desc)
}

/// Copies a child manifest (and its graph) by digest, unless the destination has it already;
/// under the manifest's lease, so a child that also has its own job is written once.
async fn copy_child_manifest(
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    digest: &Digest,
    selector: &Selector,
) -> Result<()> {
    check_cancel(ctx)?;
    let _writer = hold_manifest(ctx, dst_repo, digest).await?;
    if ctx
        .dst
        .head_manifest(dst_repo, digest.as_ref())
        .await?
        .is_some()
    {
        return Ok(());
    }
    let child = ctx.src.get_manifest(src_repo, digest.as_ref()).await?;
    Box::pin(ensure_graph(ctx, src_repo, dst_repo, &child, selector)).await?;
    push_manifest(ctx, dst_repo, digest.as_ref(), &child).await?;
    Ok(())
}

/// Pushes a manifest's exact bytes under `reference` (a tag or its digest). Returns whether the
/// registry's answer confirmed the digest ([`RegistryClient::put_manifest`]). A refusal for a
/// missing blob means a blob this process saw in `dst_repo` is gone (deleted since): the ledger
/// forgets the repository, so a retry asks the registry again instead of skipping it.
pub async fn push_manifest(
    ctx: &TransferContext,
    dst_repo: &str,
    reference: &str,
    m: &Manifest,
) -> Result<bool> {
    check_cancel(ctx)?;
    let confirmed = match ctx.dst.put_manifest(dst_repo, reference, m).await {
        Ok(confirmed) => confirmed,
        Err(e) => {
            if e.has_code("MANIFEST_BLOB_UNKNOWN") {
                ctx.ledger.forget_repository(ctx.dst.name(), dst_repo);
            }
            return Err(e.into());
        }
    };
    ctx.stats.manifests_pushed.fetch_add(1, Ordering::Relaxed);
    Ok(confirmed)
}

fn parse_graph(ctx: &TransferContext, src_repo: &str, m: &Manifest) -> Result<ManifestGraph> {
    m.graph().map_err(|source| TransferError::Manifest {
        registry: ctx.src.name().to_string(),
        repository: src_repo.to_string(),
        digest: m.digest.to_string(),
        source,
    })
}

fn check_cancel(ctx: &TransferContext) -> Result<()> {
    if ctx.cancel.is_cancelled() {
        Err(TransferError::Cancelled)
    } else {
        Ok(())
    }
}

/// Ensures one blob exists in `dst_repo`: skipped, mounted or copied.
pub async fn copy_blob(
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    desc: &Descriptor,
) -> Result<BlobOutcome> {
    check_cancel(ctx)?;
    let digest = desc.digest();
    let slot = ctx.ledger.slot(ctx.dst.name(), digest);
    let mut known = slot.lock().await;
    let outcome = copy_blob_locked(ctx, src_repo, dst_repo, desc, &mut known).await;
    drop(known);
    if matches!(outcome, Ok(BlobOutcome::Skipped | BlobOutcome::Mounted)) {
        drop_stale_upload(ctx, digest).await;
    }
    let counter = match outcome {
        Ok(BlobOutcome::Skipped) => &ctx.stats.blobs_skipped,
        Ok(BlobOutcome::Mounted) => &ctx.stats.blobs_mounted,
        Ok(BlobOutcome::Copied) => &ctx.stats.blobs_copied,
        Err(_) => return outcome,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    outcome
}

/// The blob reached the destination another way (it was there, or mounted): an interrupted upload
/// of it the job had checkpointed is moot, so its session is cancelled and the checkpoint dropped.
async fn drop_stale_upload(ctx: &TransferContext, digest: &Digest) {
    let Some(cp) = ctx.checkpoints.get(ctx.dst.name(), digest.as_ref()).await else {
        return;
    };
    if let Ok(location) = Url::parse(&cp.location) {
        ctx.dst
            .cancel_upload(&BlobUpload {
                repository: cp.repository.clone(),
                location,
                offset: cp.offset,
            })
            .await;
    }
    ctx.checkpoints.clear(ctx.dst.name(), digest.as_ref()).await;
}

/// Skip, mount or copy, one request per decision where it can: a repository this run already saw
/// holding the blob costs nothing; a blob another repository of the destination holds is mounted
/// straight away (no `HEAD` first: a mount answers `201` when the blob is already there too);
/// otherwise a `HEAD`, then an upload.
async fn copy_blob_locked(
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    desc: &Descriptor,
    known: &mut Holders,
) -> Result<BlobOutcome> {
    let digest = desc.digest();
    if known.holds(dst_repo) {
        return Ok(BlobOutcome::Skipped);
    }
    if let Some(from) = known.mount_source(dst_repo) {
        match ctx.dst.mount_blob(dst_repo, digest, &from).await {
            Ok(MountOutcome::Mounted) => {
                tracing::debug!(repository = dst_repo, %digest, from = %from, "blob mounted");
                known.add(dst_repo);
                return Ok(BlobOutcome::Mounted);
            }
            Ok(MountOutcome::NotMounted(upload)) => {
                // The registry opened a session instead of mounting (`from` lost the blob, or the
                // registry does not mount): drop it, stop counting on `from`, ask and upload.
                ctx.dst.cancel_upload(&upload).await;
                known.forget(&from);
            }
            Err(e) => {
                tracing::debug!(repository = dst_repo, %digest, error = %e, "mount failed; uploading")
            }
        }
    }
    match ctx.dst.blob_exists(dst_repo, digest).await {
        Ok(Some(_)) => {
            known.add(dst_repo);
            return Ok(BlobOutcome::Skipped);
        }
        Ok(None) => {}
        // Still a server error after the client's retries: distribution answers a blob `HEAD`
        // with 500 for good when the repository's link file of the blob was left empty (its disk
        // filled up mid-write). That proves neither absence nor presence; sending the blob again
        // is safe (content-addressed) and rewrites the link.
        Err(e) if e.status().is_some_and(|s| s >= 500) => {
            tracing::warn!(registry = ctx.dst.name(), repository = dst_repo, %digest, error = %e, "the destination cannot say whether it holds the blob; sending it again");
        }
        Err(e) => return Err(e.into()),
    }
    let held = match &ctx.leases {
        Some(leases) => match coordinate(ctx, leases, dst_repo, digest).await? {
            Coordinated::Done(outcome) => {
                known.add(dst_repo);
                return Ok(outcome);
            }
            Coordinated::Upload(held) => held,
        },
        None => None,
    };
    ctx.stats
        .bytes_planned
        .fetch_add(desc.size(), Ordering::Relaxed);
    let uploaded = match (&ctx.leases, &held) {
        (Some(leases), Some(holder)) => {
            tokio::select! {
                r = upload_with_retries(ctx, src_repo, dst_repo, desc) => r,
                () = keep_lease(ctx, leases, digest, holder) => unreachable!("keep_lease never returns"),
            }
        }
        _ => upload_with_retries(ctx, src_repo, dst_repo, desc).await,
    };
    if let (Some(leases), Some(holder)) = (&ctx.leases, &held) {
        if let Err(e) = leases
            .leases
            .release_blob(ctx.dst.name(), digest.as_ref(), holder)
            .await
        {
            tracing::debug!(%digest, error = %e, "cannot release the blob lease; it expires by itself");
        }
    }
    uploaded?;
    known.add(dst_repo);
    Ok(BlobOutcome::Copied)
}
