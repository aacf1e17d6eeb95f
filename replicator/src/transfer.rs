//! Moves one manifest graph from a source repository to a destination repository, copying only
//! what the destination lacks.
//!
//! For each blob: `HEAD` on the destination (present → skipped); else a cross-repository mount from
//! a destination repository known to hold it (→ mounted); else a streaming `GET` from the source
//! piped into an upload on the destination (→ copied). The stream is hashed as it passes and the
//! **last byte is held back until the digest matched**, so a corrupt source never completes an
//! upload; the session is cancelled (`DELETE`) on any failure. Uploads are monolithic (one streaming
//! `PUT`) unless the policy or registry asks for chunks.
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
//! of the same blob to the same destination transfer it once ([`BlobLedger`]).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::{stream, StreamExt, TryStreamExt};
use oci_spec::image::Descriptor;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::oci::client::BlobUpload;
use crate::oci::digest::{Digest, DigestVerifier};
use crate::oci::manifest::{self, ManifestError, ManifestGraph};
use crate::oci::{Manifest, MountOutcome, RegistryClient, RegistryError};
use crate::policy::Selector;
use crate::store::queue::{Lease, UploadCheckpoint};
use crate::store::StoreError;
use crate::throttle::Throttle;

/// How often one blob read from the source may resume after its body broke off.
pub const READ_RESUMES: u32 = 3;

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
    /// A bidirectional conflict cannot be decided yet: the destination holds content whose push is
    /// not in the ledger (its event is on the way); retryable.
    #[error("registry {registry}: {repository}:{tag} holds {digest}, whose push is not recorded yet; waiting for its event to decide the conflict")]
    ConflictPending {
        registry: String,
        repository: String,
        tag: String,
        digest: String,
    },
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
            TransferError::NotYetVisible { .. } | TransferError::ConflictPending { .. } => true,
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

type Slot = Arc<tokio::sync::Mutex<Option<String>>>;

/// Where blobs are known to live on each destination, and a per-`(destination, digest)` lock so
/// one blob crosses the wire once even when several repositories need it at the same time.
#[derive(Debug, Default)]
pub struct BlobLedger {
    slots: Mutex<HashMap<(String, String), Slot>>,
}

impl BlobLedger {
    fn slot(&self, registry: &str, digest: &Digest) -> Slot {
        let mut map = crate::locks::lock(&self.slots);
        map.entry((registry.to_string(), digest.to_string()))
            .or_default()
            .clone()
    }
}

/// Everything one transfer needs; cheap to clone.
#[derive(Clone)]
pub struct TransferContext {
    pub src: Arc<RegistryClient>,
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
    /// Where interrupted chunked uploads stand (the job's checkpoints, or this process's own).
    pub checkpoints: Arc<Checkpoints>,
}

/// The upload checkpoints of the job a transfer runs for ([`UploadCheckpoint`], one per
/// `(destination, digest)`): read from the queue the first time a blob of the job needs them (so
/// jobs that upload nothing cost no query), saved after every chunk a destination confirmed,
/// cleared once the blob is complete. Without a queue (one-shot syncs) they live in this process
/// only, which still lets an in-process retry continue an upload. Queue trouble never fails a
/// transfer (it only costs resumability), except that a lost lease stops it.
pub struct Checkpoints {
    store: Option<CheckpointStore>,
    /// Set once the job's stored checkpoints were read into `known`.
    loaded: tokio::sync::OnceCell<()>,
    known: Mutex<HashMap<(String, String), UploadCheckpoint>>,
    /// Keys of `known` written by an earlier run of the job, whose bytes this process did not
    /// count as sent (until the first resume from them).
    inherited: Mutex<std::collections::HashSet<(String, String)>>,
}

struct CheckpointStore {
    checkpoints: Arc<dyn crate::store::queue::Checkpoints>,
    lease: Lease,
    /// Fired when the job's lease is lost (by the worker's heartbeat, or here when a write is
    /// refused): the session may be another worker's now.
    lease_lost: CancellationToken,
}

impl Checkpoints {
    /// Checkpoints kept in this process only.
    pub fn local() -> Checkpoints {
        Checkpoints {
            store: None,
            loaded: tokio::sync::OnceCell::new(),
            known: Mutex::default(),
            inherited: Mutex::default(),
        }
    }

    /// The checkpoints stored on `lease`'s job, written back there as the job progresses (no I/O
    /// until a blob needs them).
    pub fn for_lease(
        checkpoints: Arc<dyn crate::store::queue::Checkpoints>,
        lease: Lease,
        lease_lost: CancellationToken,
    ) -> Checkpoints {
        Checkpoints {
            store: Some(CheckpointStore {
                checkpoints,
                lease,
                lease_lost,
            }),
            ..Checkpoints::local()
        }
    }

    /// Reads the job's stored checkpoints, once. A queue that cannot answer costs only fresh
    /// uploads (logged).
    async fn load(&self) {
        let Some(store) = &self.store else {
            return;
        };
        self.loaded
            .get_or_init(|| async {
                let stored = match store.checkpoints.checkpoints(&store.lease.job.id).await {
                    Ok(stored) => stored,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the job's upload checkpoints; interrupted uploads start over");
                        Vec::new()
                    }
                };
                let mut known = crate::locks::lock(&self.known);
                let mut inherited = crate::locks::lock(&self.inherited);
                for c in stored {
                    let key = (c.destination.clone(), c.digest.clone());
                    inherited.insert(key.clone());
                    known.insert(key, c);
                }
            })
            .await;
    }

    /// The checkpoint of `digest`'s upload to `destination`, if any.
    pub async fn get(&self, destination: &str, digest: &str) -> Option<UploadCheckpoint> {
        self.load().await;
        crate::locks::lock(&self.known)
            .get(&(destination.to_string(), digest.to_string()))
            .cloned()
    }

    /// True (once) when the checkpoint of `digest`'s upload to `destination` comes from an earlier
    /// run of the job: the bytes it covers were sent, but not counted, by another process.
    fn take_inherited(&self, destination: &str, digest: &str) -> bool {
        crate::locks::lock(&self.inherited).remove(&(destination.to_string(), digest.to_string()))
    }

    /// True once the job's lease is known to be lost.
    fn lease_lost(&self) -> bool {
        self.store
            .as_ref()
            .is_some_and(|s| s.lease_lost.is_cancelled())
    }

    /// Records `checkpoint` (replacing the previous one of its blob). `Err(LeaseLost)` when the
    /// job belongs to another worker now: the upload must stop.
    async fn save(&self, checkpoint: UploadCheckpoint) -> Result<()> {
        self.load().await;
        crate::locks::lock(&self.known).insert(
            (checkpoint.destination.clone(), checkpoint.digest.clone()),
            checkpoint.clone(),
        );
        let Some(store) = &self.store else {
            return Ok(());
        };
        if store.lease_lost.is_cancelled() {
            return Err(TransferError::LeaseLost);
        }
        match store
            .checkpoints
            .checkpoint(&store.lease, &checkpoint)
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::LeaseLost { .. }) => {
                store.lease_lost.cancel();
                Err(TransferError::LeaseLost)
            }
            Err(e) => {
                tracing::warn!(digest = %checkpoint.digest, offset = checkpoint.offset, error = %e, "cannot checkpoint the upload; a crash from here restarts it");
                Ok(())
            }
        }
    }

    /// Forgets the checkpoint of `digest`'s upload to `destination` (no-op when there is none).
    async fn clear(&self, destination: &str, digest: &str) {
        self.load().await;
        self.take_inherited(destination, digest);
        let had = crate::locks::lock(&self.known)
            .remove(&(destination.to_string(), digest.to_string()))
            .is_some();
        let Some(store) = self.store.as_ref().filter(|_| had) else {
            return;
        };
        match store
            .checkpoints
            .clear_checkpoint(&store.lease, destination, digest)
            .await
        {
            Ok(()) => {}
            Err(StoreError::LeaseLost { .. }) => store.lease_lost.cancel(),
            // A leftover checkpoint is harmless: its session is checked before any use.
            Err(e) => tracing::debug!(%digest, error = %e, "cannot clear the upload checkpoint"),
        }
    }
}

/// Makes one process the uploader of a `(destination, digest)` among all workers of a queue.
pub struct BlobLeases {
    pub leases: Arc<dyn crate::store::queue::BlobLeases>,
    /// This process's name (the queue consumer).
    pub holder: String,
    /// Lease length; renewed every third of it while the upload runs, so a crashed holder blocks
    /// others for at most this long.
    pub ttl: std::time::Duration,
}

/// What coordinating with other workers decided for one blob.
enum Coordinated {
    /// This process uploads (holding the lease when `Some`).
    Upload(Option<String>),
    /// Another worker's upload made it available here.
    Done(BlobOutcome),
}

/// Takes the blob's lease, or waits while another worker uploads it and then mounts it from the
/// repository that worker uploads into (named in the lease's holder value `consumer|repository`).
/// Queue trouble never fails a transfer: it only costs a duplicate upload.
async fn coordinate(
    ctx: &TransferContext,
    leases: &BlobLeases,
    dst_repo: &str,
    digest: &Digest,
) -> Result<Coordinated> {
    let me = format!("{}|{dst_repo}", leases.holder);
    let give_up = tokio::time::Instant::now() + leases.ttl * 20;
    // The repository the last holder uploaded into, once this process has waited for one.
    let mut waited_for: Option<String> = None;
    loop {
        match leases
            .leases
            .lease_blob(ctx.dst.name(), digest.as_ref(), &me, leases.ttl)
            .await
        {
            Ok(true) => {
                // The holder this process waited for just released the lease, most likely because
                // its upload finished: use that upload rather than sending the blob again.
                if let Some(from) = &waited_for {
                    if let Some(outcome) = made_available(ctx, dst_repo, digest, from).await? {
                        if let Err(e) = leases
                            .leases
                            .release_blob(ctx.dst.name(), digest.as_ref(), &me)
                            .await
                        {
                            tracing::debug!(%digest, error = %e, "cannot release the blob lease; it expires by itself");
                        }
                        return Ok(Coordinated::Done(outcome));
                    }
                }
                return Ok(Coordinated::Upload(Some(me)));
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(%digest, error = %e, "blob lease unavailable; uploading without it");
                return Ok(Coordinated::Upload(None));
            }
        }
        let other_repo = leases
            .leases
            .blob_lease_holder(ctx.dst.name(), digest.as_ref())
            .await
            .ok()
            .flatten()
            .and_then(|h| h.split_once('|').map(|(_, r)| r.to_string()));
        if let Some(repo) = other_repo {
            waited_for = Some(repo);
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {},
            _ = ctx.cancel.cancelled() => return Err(TransferError::Cancelled),
        }
        let from = waited_for.as_deref().unwrap_or(dst_repo);
        if let Some(outcome) = made_available(ctx, dst_repo, digest, from).await? {
            return Ok(Coordinated::Done(outcome));
        }
        if tokio::time::Instant::now() > give_up {
            tracing::warn!(%digest, "another worker holds this blob's lease for too long; uploading too");
            return Ok(Coordinated::Upload(None));
        }
    }
}

/// Whether another worker's upload (into `from`) already put `digest` where `dst_repo` can have
/// it: present in `dst_repo` (skipped), or mounted from `from` now.
async fn made_available(
    ctx: &TransferContext,
    dst_repo: &str,
    digest: &Digest,
    from: &str,
) -> Result<Option<BlobOutcome>> {
    if ctx.dst.blob_exists(dst_repo, digest).await?.is_some() {
        return Ok(Some(BlobOutcome::Skipped));
    }
    if from != dst_repo && ctx.dst.blob_exists(from, digest).await?.is_some() {
        match ctx.dst.mount_blob(dst_repo, digest, from).await? {
            MountOutcome::Mounted => return Ok(Some(BlobOutcome::Mounted)),
            MountOutcome::NotMounted(upload) => ctx.dst.cancel_upload(&upload).await,
        }
    }
    Ok(None)
}

/// Renews a held blob lease until dropped (raced against the upload).
async fn keep_lease(ctx: &TransferContext, leases: &BlobLeases, digest: &Digest, holder: &str) {
    loop {
        tokio::time::sleep(leases.ttl / 3).await;
        match leases
            .leases
            .renew_blob(ctx.dst.name(), digest.as_ref(), holder, leases.ttl)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(%digest, "blob lease lost during the upload; another worker may upload it too")
            }
            Err(e) => tracing::debug!(%digest, error = %e, "cannot renew the blob lease"),
        }
    }
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
            let wanted = children.into_iter().filter(|c| {
                match (&c.platform, selector.has_platform_filter()) {
                    (_, false) => true,
                    (Some((os, arch, variant)), true) => {
                        selector.matches_platform(os, arch, variant.as_deref())
                    }
                    // Children without a platform (attestations, etc.) follow the index.
                    (None, true) => true,
                }
            });
            for child in wanted {
                copy_child_manifest(ctx, src_repo, dst_repo, child.descriptor.digest(), selector)
                    .await?;
            }
            Ok(())
        }
        ManifestGraph::Image { blobs, .. } => {
            let blobs: Vec<Descriptor> = blobs
                .into_iter()
                .filter(|d| !manifest::is_non_distributable(d))
                .collect();
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

/// Copies a child manifest (and its graph) by digest, unless the destination has it already.
async fn copy_child_manifest(
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    digest: &Digest,
    selector: &Selector,
) -> Result<()> {
    check_cancel(ctx)?;
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
    push_manifest(ctx, dst_repo, digest.as_ref(), &child).await
}

/// Pushes a manifest's exact bytes under `reference` (a tag or its digest).
pub async fn push_manifest(
    ctx: &TransferContext,
    dst_repo: &str,
    reference: &str,
    m: &Manifest,
) -> Result<()> {
    check_cancel(ctx)?;
    ctx.dst.put_manifest(dst_repo, reference, m).await?;
    ctx.stats.manifests_pushed.fetch_add(1, Ordering::Relaxed);
    Ok(())
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

async fn copy_blob_locked(
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    desc: &Descriptor,
    known: &mut Option<String>,
) -> Result<BlobOutcome> {
    let digest = desc.digest();
    if known.as_deref() == Some(dst_repo) {
        return Ok(BlobOutcome::Skipped);
    }
    if ctx.dst.blob_exists(dst_repo, digest).await?.is_some() {
        *known = Some(dst_repo.to_string());
        return Ok(BlobOutcome::Skipped);
    }
    if let Some(from) = known.clone() {
        match ctx.dst.mount_blob(dst_repo, digest, &from).await {
            Ok(MountOutcome::Mounted) => {
                tracing::debug!(repository = dst_repo, %digest, from = %from, "blob mounted");
                return Ok(BlobOutcome::Mounted);
            }
            Ok(MountOutcome::NotMounted(upload)) => {
                // The registry opened a session instead of mounting: drop it and upload normally.
                ctx.dst.cancel_upload(&upload).await;
            }
            Err(e) => {
                tracing::debug!(repository = dst_repo, %digest, error = %e, "mount failed; uploading")
            }
        }
    }
    let held = match &ctx.leases {
        Some(leases) => match coordinate(ctx, leases, dst_repo, digest).await? {
            Coordinated::Done(outcome) => {
                *known = Some(dst_repo.to_string());
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
    *known = Some(dst_repo.to_string());
    Ok(BlobOutcome::Copied)
}

/// Streams one blob, retrying transient failures a few times.
async fn upload_with_retries(
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    desc: &Descriptor,
) -> Result<()> {
    let digest = desc.digest();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match stream_blob(ctx, src_repo, dst_repo, desc).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && attempt < 3 => {
                let d = crate::oci::client::backoff(attempt);
                tracing::info!(repository = dst_repo, %digest, error = %e, attempt, "blob transfer failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(d) => {},
                    _ = ctx.cancel.cancelled() => return Err(TransferError::Cancelled),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Holds a transfer slot on both registries, acquired in name order so two opposite transfers
/// (A→B and B→A) can never wait on each other.
async fn transfer_permits(ctx: &TransferContext) -> Result<Vec<tokio::sync::OwnedSemaphorePermit>> {
    // Owned handles: borrowed ones held across the awaits below make the future's `Send` bound
    // lifetime-specific, which breaks spawning it.
    let mut regs = vec![ctx.src.clone(), ctx.dst.clone()];
    regs.sort_by(|a, b| a.name().cmp(b.name()));
    regs.dedup_by(|a, b| Arc::ptr_eq(a, b));
    let mut permits = Vec::with_capacity(2);
    for r in regs {
        let p = tokio::select! {
            p = r.transfer_slots().clone().acquire_owned() => p.map_err(|_| TransferError::Cancelled)?,
            _ = ctx.cancel.cancelled() => return Err(TransferError::Cancelled),
        };
        permits.push(p);
    }
    Ok(permits)
}

/// One copy attempt: chunked (resumable) or one streaming `PUT`.
async fn stream_blob(
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    desc: &Descriptor,
) -> Result<()> {
    let _permits = transfer_permits(ctx).await?;
    let chunked = (ctx.copy_by_chunk
        || ctx.dst.chunk_threshold().is_some_and(|t| desc.size() >= t))
        && !ctx.dst.refuses_chunks();
    if !chunked {
        return stream_monolithic(ctx, src_repo, dst_repo, desc).await;
    }
    match stream_chunked(ctx, src_repo, dst_repo, desc).await {
        Err(e) if refuses_chunks(&e) => {
            tracing::warn!(registry = ctx.dst.name(), error = %e, "the registry refuses chunked uploads; uploading in one PUT from now on");
            ctx.dst.mark_refuses_chunks();
            stream_monolithic(ctx, src_repo, dst_repo, desc).await
        }
        other => other,
    }
}

/// A registry's answer meaning "no chunked uploads here": 405/501, or an `UNSUPPORTED` error code
/// on a `PATCH`.
fn refuses_chunks(e: &TransferError) -> bool {
    matches!(
        e,
        TransferError::Registry(RegistryError::Status { method, status, errors, .. })
            if method == "PATCH"
                && (matches!(status, 405 | 501) || errors.iter().any(|x| x.code == "UNSUPPORTED"))
    )
}

fn verifier(ctx: &TransferContext, src_repo: &str, digest: &Digest) -> Result<DigestVerifier> {
    DigestVerifier::new(digest).ok_or_else(|| TransferError::UnsupportedDigest {
        registry: ctx.src.name().to_string(),
        repository: src_repo.to_string(),
        digest: digest.to_string(),
    })
}

fn digest_mismatch(
    ctx: &TransferContext,
    src_repo: &str,
    digest: &Digest,
    actual: String,
) -> TransferError {
    TransferError::Registry(RegistryError::DigestMismatch {
        registry: ctx.src.name().to_string(),
        repository: src_repo.to_string(),
        expected: digest.to_string(),
        actual,
    })
}

fn size_mismatch(
    ctx: &TransferContext,
    src_repo: &str,
    desc: &Descriptor,
    actual: u64,
) -> TransferError {
    TransferError::Registry(RegistryError::SizeMismatch {
        registry: ctx.src.name().to_string(),
        repository: src_repo.to_string(),
        digest: desc.digest().to_string(),
        expected: desc.size(),
        actual,
    })
}

/// One `PUT` with the verified source stream as its body; cancels the session on any failure.
async fn stream_monolithic(
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    desc: &Descriptor,
) -> Result<()> {
    let digest = desc.digest().clone();
    let verifier = verifier(ctx, src_repo, &digest)?;
    let upload = ctx.dst.start_upload(dst_repo).await?;
    let result = async {
        let failure = Arc::new(Mutex::new(None::<TransferError>));
        let verified = VerifiedStream {
            ctx: ctx.clone(),
            registry: ctx.src.name().to_string(),
            repository: src_repo.to_string(),
            digest: digest.clone(),
            expected: desc.size(),
            verifier: Some(verifier),
            failure: failure.clone(),
        }
        .into_stream(source_bytes(ctx, src_repo, &digest, 0, desc.size()));
        let sent = ctx
            .dst
            .put_blob_stream(
                &upload,
                &digest,
                desc.size(),
                reqwest::Body::wrap_stream(verified),
            )
            .await
            .map_err(TransferError::from);
        // A failure inside the stream (corruption, cancel) explains a failed request better than
        // the request error itself.
        let cause = crate::locks::lock(&failure).take();
        match cause {
            Some(cause) => Err(cause),
            None => sent,
        }
    }
    .await;
    if result.is_err() {
        ctx.dst.cancel_upload(&upload).await;
    }
    result
}

/// A chunked upload: continues the job's checkpointed session when the destination still holds
/// exactly its bytes, else opens a new one. On failure the session is kept for the next attempt
/// when the error is retryable and a checkpoint names it, left alone when the job's lease was lost
/// (its new owner may be continuing it), and cancelled otherwise.
async fn stream_chunked(
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    desc: &Descriptor,
) -> Result<()> {
    let digest = desc.digest();
    let (mut upload, hasher) = match resume_point(ctx, dst_repo, desc).await? {
        Some(resumed) => resumed,
        None => {
            let hasher = verifier(ctx, src_repo, digest)?;
            (ctx.dst.start_upload(dst_repo).await?, hasher)
        }
    };
    let result = upload_chunked(ctx, src_repo, desc, &mut upload, hasher).await;
    let dst = ctx.dst.name();
    match &result {
        Ok(()) => ctx.checkpoints.clear(dst, digest.as_ref()).await,
        Err(_) if ctx.checkpoints.lease_lost() => {}
        Err(e) if e.is_retryable() && ctx.checkpoints.get(dst, digest.as_ref()).await.is_some() => {
            tracing::info!(registry = dst, repository = dst_repo, %digest, offset = upload.offset, error = %e, "upload interrupted; its session is kept for the next attempt to continue");
        }
        Err(_) => {
            ctx.dst.cancel_upload(&upload).await;
            ctx.checkpoints.clear(dst, digest.as_ref()).await;
        }
    }
    result
}

/// What to do with a checkpointed upload, given the destination's answer to the status request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resume {
    /// The destination holds exactly the checkpointed bytes: continue from this offset.
    At(u64),
    /// Start a new upload, for this reason.
    Restart(String),
    /// The destination cannot answer now (transient): fail this attempt, keep the checkpoint.
    Later,
}

/// Decides from the checkpointed offset, the blob size and the destination's upload status (the
/// offset its `Range` names, or why there is none).
fn resume_decision(
    checkpoint: u64,
    size: u64,
    status: std::result::Result<u64, &RegistryError>,
) -> Resume {
    match status {
        Err(e) if e.is_retryable() => Resume::Later,
        Err(e) if e.is_not_found() => Resume::Restart(format!(
            "the destination no longer has the session, or refuses it because its data moved past the checkpoint: {e}"
        )),
        Err(e) => Resume::Restart(format!(
            "the destination's upload status is unusable: {e}"
        )),
        Ok(_) if checkpoint > size => Resume::Restart(format!(
            "the checkpoint ({checkpoint} bytes) is beyond the blob's end ({size} bytes)"
        )),
        Ok(held) if held == checkpoint => Resume::At(checkpoint),
        Ok(held) => Resume::Restart(format!(
            "the destination holds {held} bytes of the session, the checkpoint says {checkpoint}"
        )),
    }
}

/// Where a checkpointed upload of `desc` can continue: the session (as the destination describes
/// it now) and the hash state over the bytes it holds. `None` when there is no checkpoint or it
/// cannot be used (logged; its session is cancelled), so a new upload starts. Costs one `GET` of
/// the session's status.
async fn resume_point(
    ctx: &TransferContext,
    dst_repo: &str,
    desc: &Descriptor,
) -> Result<Option<(BlobUpload, DigestVerifier)>> {
    let digest = desc.digest();
    let dst = ctx.dst.name();
    let Some(cp) = ctx.checkpoints.get(dst, digest.as_ref()).await else {
        return Ok(None);
    };
    let local = (|| {
        if cp.repository != dst_repo {
            return Err(format!(
                "the checkpoint is for repository {}",
                cp.repository
            ));
        }
        if cp.size != desc.size() {
            return Err(format!("the checkpoint is for a blob of {} bytes", cp.size));
        }
        let location = Url::parse(&cp.location)
            .map_err(|e| format!("the checkpointed session URL is not a URL: {e}"))?;
        let hasher = DigestVerifier::resume(digest, &cp.hash_state)
            .map_err(|e| format!("the checkpointed hash state is unusable: {e}"))?;
        if hasher.len() != cp.offset {
            return Err(format!(
                "the checkpointed hash state covers {} bytes, not {}",
                hasher.len(),
                cp.offset
            ));
        }
        Ok((
            BlobUpload {
                repository: cp.repository.clone(),
                location,
                offset: cp.offset,
            },
            hasher,
        ))
    })();
    let (session, hasher) = match local {
        Ok(found) => found,
        Err(reason) => {
            abandon_checkpoint(ctx, dst_repo, digest, cp.offset, &reason, None).await;
            return Ok(None);
        }
    };
    let status = ctx.dst.upload_status(&session, digest).await;
    match resume_decision(cp.offset, desc.size(), status.as_ref().map(|s| s.offset)) {
        Resume::At(offset) => {
            let resumed = status.expect("an offset comes from a status");
            tracing::info!(registry = dst, repository = dst_repo, %digest, offset, size = desc.size(), "continuing an interrupted upload");
            if ctx.checkpoints.take_inherited(dst, digest.as_ref()) {
                // Sent by an earlier run: progress counts what this run still moves. (The blob's
                // size was planned just before; an in-process retry already counted its bytes.)
                ctx.stats
                    .bytes_planned
                    .fetch_sub(offset.min(desc.size()), Ordering::Relaxed);
            }
            Ok(Some((resumed, hasher)))
        }
        Resume::Later => Err(status.expect_err("Later comes from an error").into()),
        Resume::Restart(reason) => {
            abandon_checkpoint(ctx, dst_repo, digest, cp.offset, &reason, Some(&session)).await;
            Ok(None)
        }
    }
}

/// Gives up on a checkpointed upload (logged with `reason`): cancels its session, when known, and
/// forgets the checkpoint.
async fn abandon_checkpoint(
    ctx: &TransferContext,
    dst_repo: &str,
    digest: &Digest,
    offset: u64,
    reason: &str,
    session: Option<&BlobUpload>,
) {
    let dst = ctx.dst.name();
    tracing::warn!(registry = dst, repository = dst_repo, %digest, offset, reason, "cannot continue the interrupted upload; starting a new one");
    if let Some(session) = session {
        ctx.dst.cancel_upload(session).await;
    }
    ctx.checkpoints.clear(dst, digest.as_ref()).await;
}

/// Streams the rest of blob `desc` into the open session `upload` in chunks (`PATCH`), then
/// completes it (`PUT ?digest=`). `hasher` covers the `upload.offset` bytes the destination holds
/// already; the source is read from there. The chunk that completes the blob is sent only after
/// size and digest matched, and the session is completed only then; after every confirmed chunk
/// the session, offset and hash state are checkpointed. `upload` follows the session as it moves
/// (each answer may name a new location).
async fn upload_chunked(
    ctx: &TransferContext,
    src_repo: &str,
    desc: &Descriptor,
    upload: &mut BlobUpload,
    mut hasher: DigestVerifier,
) -> Result<()> {
    let digest = desc.digest();
    let size = desc.size();
    let chunk_size = usize::try_from(ctx.dst.chunk_size()).unwrap_or(usize::MAX);
    let mut read = upload.offset;
    let mut source = source_bytes(ctx, src_repo, digest, upload.offset, size);
    let mut ended = upload.offset >= size;
    let mut buf = BytesMut::new();
    loop {
        if !ended {
            let next = tokio::select! {
                n = source.next() => n,
                _ = ctx.cancel.cancelled() => return Err(TransferError::Cancelled),
            };
            match next {
                Some(Ok(b)) => {
                    read += b.len() as u64;
                    if read > size {
                        return Err(size_mismatch(ctx, src_repo, desc, read));
                    }
                    if let Some(t) = &ctx.throttle {
                        if !t.consume(b.len() as u64, &ctx.cancel).await {
                            return Err(TransferError::Cancelled);
                        }
                    }
                    buf.extend_from_slice(&b);
                }
                Some(Err(e)) => return Err(e),
                None if read != size => return Err(size_mismatch(ctx, src_repo, desc, read)),
                None => ended = true,
            }
        }
        while buf.len() >= chunk_size || (ended && !buf.is_empty()) {
            let chunk = buf.split_to(buf.len().min(chunk_size)).freeze();
            hasher.update(&chunk);
            if hasher.len() == size {
                hasher
                    .clone()
                    .finish()
                    .map_err(|actual| digest_mismatch(ctx, src_repo, digest, actual))?;
            }
            ctx.stats
                .bytes_copied
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            *upload = ctx.dst.patch_chunk(upload, digest, chunk).await?;
            ctx.checkpoints
                .save(UploadCheckpoint {
                    destination: ctx.dst.name().to_string(),
                    repository: upload.repository.clone(),
                    digest: digest.to_string(),
                    size,
                    location: upload.location.to_string(),
                    offset: upload.offset,
                    hash_state: hasher.save(),
                })
                .await?;
        }
        if ended {
            break;
        }
    }
    // Also covers uploads resumed after their last chunk, and empty blobs.
    if hasher.len() != size {
        return Err(size_mismatch(ctx, src_repo, desc, hasher.len()));
    }
    hasher
        .finish()
        .map_err(|actual| digest_mismatch(ctx, src_repo, digest, actual))?;
    ctx.dst.finish_upload(upload, digest).await?;
    Ok(())
}

/// The bytes of blob `digest` (`size` bytes) in `src_repo` on the source, from `from` to the end.
/// A body that breaks off (connection reset, timeout) is requested again with `Range` from the
/// first byte not received yet, at most [`READ_RESUMES`] times; a source that ignores `Range` (200
/// instead of 206) sends the whole blob and the bytes before the wanted offset are dropped. Ends
/// where the source's body ends: sizes and digests are the consumer's to check.
fn source_bytes(
    ctx: &TransferContext,
    src_repo: &str,
    digest: &Digest,
    from: u64,
    size: u64,
) -> impl futures_util::Stream<Item = Result<Bytes>> + Send + Unpin + 'static {
    struct Read {
        src: Arc<RegistryClient>,
        repository: String,
        digest: Digest,
        size: u64,
        /// The next byte to deliver.
        pos: u64,
        body: Option<stream::BoxStream<'static, reqwest::Result<Bytes>>>,
        /// Bytes of the current body to drop (it started before `pos`).
        skip: u64,
        resumes_left: u32,
        done: bool,
    }
    let read = Read {
        src: ctx.src.clone(),
        repository: src_repo.to_string(),
        digest: digest.clone(),
        size,
        pos: from,
        body: None,
        skip: 0,
        resumes_left: READ_RESUMES,
        done: from >= size && size > 0,
    };
    Box::pin(stream::unfold(read, |mut r| async move {
        loop {
            if r.done {
                return None;
            }
            let body = match &mut r.body {
                Some(body) => body,
                None => match r.src.get_blob(&r.repository, &r.digest, r.pos).await {
                    Ok(got) => {
                        r.skip = r.pos - got.start.min(r.pos);
                        if r.skip > 0 {
                            tracing::debug!(registry = %r.src.name(), repository = %r.repository, digest = %r.digest, offset = r.pos, "the source ignored the Range request; dropping the bytes before the offset");
                        }
                        r.body.insert(got.response.bytes_stream().boxed())
                    }
                    Err(e) => {
                        r.done = true;
                        return Some((Err(e.into()), r));
                    }
                },
            };
            match body.next().await {
                None => return None,
                Some(Ok(mut chunk)) => {
                    if r.skip > 0 {
                        let drop = r.skip.min(chunk.len() as u64);
                        chunk = chunk.slice(drop as usize..);
                        r.skip -= drop;
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    r.pos += chunk.len() as u64;
                    return Some((Ok(chunk), r));
                }
                Some(Err(e)) if r.resumes_left > 0 && r.pos < r.size => {
                    r.resumes_left -= 1;
                    tracing::info!(registry = %r.src.name(), repository = %r.repository, digest = %r.digest, offset = r.pos, error = %e, "blob download broke off; resuming from the last byte received");
                    r.body = None;
                }
                Some(Err(cause)) => {
                    r.done = true;
                    let e = RegistryError::Transport {
                        registry: r.src.name().to_string(),
                        url: format!("blob {}", r.digest),
                        cause,
                    };
                    return Some((Err(e.into()), r));
                }
            }
        }
    }))
}

/// The error a [`VerifiedStream`] yields to the HTTP body; the real cause is in the failure slot.
#[derive(Debug)]
pub struct StreamFailure;

impl std::fmt::Display for StreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("blob stream aborted")
    }
}
impl std::error::Error for StreamFailure {}

/// Source bytes on their way to the destination: counted, throttled, cancellable, and verified —
/// the final chunk is only released after size and digest matched.
struct VerifiedStream {
    ctx: TransferContext,
    registry: String,
    repository: String,
    digest: Digest,
    expected: u64,
    verifier: Option<DigestVerifier>,
    failure: Arc<Mutex<Option<TransferError>>>,
}

impl VerifiedStream {
    fn fail(&self, e: TransferError) -> StreamFailure {
        *crate::locks::lock(&self.failure) = Some(e);
        StreamFailure
    }

    fn mismatch(&self, actual: String) -> TransferError {
        TransferError::Registry(RegistryError::DigestMismatch {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            expected: self.digest.to_string(),
            actual,
        })
    }

    fn size_mismatch(&self, actual: u64) -> TransferError {
        TransferError::Registry(RegistryError::SizeMismatch {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            digest: self.digest.to_string(),
            expected: self.expected,
            actual,
        })
    }

    /// Checks the content once all expected bytes were seen.
    fn finish(&mut self) -> std::result::Result<(), StreamFailure> {
        if let Some(v) = self.verifier.take() {
            if let Err(actual) = v.finish() {
                let e = self.mismatch(actual);
                return Err(self.fail(e));
            }
        }
        Ok(())
    }

    fn into_stream<S>(
        self,
        inner: S,
    ) -> impl futures_util::Stream<Item = std::result::Result<Bytes, StreamFailure>>
           + Send
           + Unpin
           + 'static
    where
        S: futures_util::Stream<Item = Result<Bytes>> + Send + Unpin + 'static,
    {
        Box::pin(stream::unfold(
            (self, inner, false),
            |(mut st, mut inner, done)| async move {
                if done {
                    return None;
                }
                let next = tokio::select! {
                    n = inner.next() => n,
                    _ = st.ctx.cancel.cancelled() => {
                        let e = st.fail(TransferError::Cancelled);
                        return Some((Err(e), (st, inner, true)));
                    }
                };
                match next {
                    None => {
                        let seen = st.verifier.as_ref().map(|v| v.len()).unwrap_or(st.expected);
                        if seen != st.expected {
                            let e = st.size_mismatch(seen);
                            let e = st.fail(e);
                            return Some((Err(e), (st, inner, true)));
                        }
                        // Zero-length blobs end here; others were finished with their last chunk.
                        match st.finish() {
                            Ok(()) => None,
                            Err(e) => Some((Err(e), (st, inner, true))),
                        }
                    }
                    Some(Err(e)) => {
                        let e = st.fail(e);
                        Some((Err(e), (st, inner, true)))
                    }
                    Some(Ok(chunk)) => {
                        let Some(v) = st.verifier.as_mut() else {
                            // Bytes after the verified end: the source sent more than the descriptor said.
                            let e = st.size_mismatch(st.expected + chunk.len() as u64);
                            let e = st.fail(e);
                            return Some((Err(e), (st, inner, true)));
                        };
                        v.update(&chunk);
                        let seen = v.len();
                        if seen > st.expected {
                            let e = st.size_mismatch(seen);
                            let e = st.fail(e);
                            return Some((Err(e), (st, inner, true)));
                        }
                        if seen == st.expected {
                            if let Err(e) = st.finish() {
                                return Some((Err(e), (st, inner, true)));
                            }
                        }
                        if let Some(t) = &st.ctx.throttle {
                            if !t.consume(chunk.len() as u64, &st.ctx.cancel).await {
                                let e = st.fail(TransferError::Cancelled);
                                return Some((Err(e), (st, inner, true)));
                            }
                        }
                        st.ctx
                            .stats
                            .bytes_copied
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        Some((Ok(chunk), (st, inner, false)))
                    }
                }
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, error: &str) -> RegistryError {
        RegistryError::Status {
            registry: "us".into(),
            method: "GET".into(),
            url: "http://r/v2/team/app/blobs/uploads/u1".into(),
            status: code,
            errors: vec![crate::oci::error::ErrorEntry {
                code: error.into(),
                message: String::new(),
            }],
        }
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn resumes_only_where_the_destination_holds_exactly_the_checkpoint() {
        assert_eq!(
            resume_decision(160 * MIB, 200 * MIB, Ok(160 * MIB)),
            Resume::At(160 * MIB)
        );
        // All bytes confirmed before the crash: only the completing PUT is left.
        assert_eq!(
            resume_decision(200 * MIB, 200 * MIB, Ok(200 * MIB)),
            Resume::At(200 * MIB)
        );
        for (held, why) in [
            (144 * MIB, "holds 150994944 bytes"),
            (170 * MIB, "holds 178257920 bytes"),
            (0, "holds 0 bytes"),
        ] {
            match resume_decision(160 * MIB, 200 * MIB, Ok(held)) {
                Resume::Restart(reason) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{held}: {other:?}"),
            }
        }
        match resume_decision(300 * MIB, 200 * MIB, Ok(300 * MIB)) {
            Resume::Restart(reason) => {
                assert!(reason.contains("beyond the blob's end"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_gone_or_garbled_session_restarts_and_a_struggling_registry_waits() {
        // distribution answers 404 BLOB_UPLOAD_INVALID when its data moved past the session state
        // (a PATCH cut off mid-body), and 404 BLOB_UPLOAD_UNKNOWN once the session is purged.
        for e in [
            status(404, "BLOB_UPLOAD_INVALID"),
            status(404, "BLOB_UPLOAD_UNKNOWN"),
        ] {
            match resume_decision(MIB, 2 * MIB, Err(&e)) {
                Resume::Restart(reason) => {
                    assert!(reason.contains("no longer has the session"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
        let garbled = RegistryError::InvalidRange {
            registry: "us".into(),
            repository: "team/app".into(),
            digest: "sha256:ab".into(),
            url: "http://r/v2/team/app/blobs/uploads/u1".into(),
            message: "unusable Range header \"0-x\": \"x\" is not a byte position".into(),
        };
        for e in [status(400, "BLOB_UPLOAD_INVALID"), garbled] {
            match resume_decision(MIB, 2 * MIB, Err(&e)) {
                Resume::Restart(reason) => assert!(reason.contains("unusable"), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        for e in [
            status(503, "UNAVAILABLE"),
            status(500, "UNKNOWN"),
            status(429, "TOOMANYREQUESTS"),
        ] {
            assert_eq!(resume_decision(MIB, 2 * MIB, Err(&e)), Resume::Later, "{e}");
        }
    }
}
