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

use crate::oci::client::BlobUpload;
use crate::oci::digest::{Digest, DigestVerifier};
use crate::oci::manifest::{self, ManifestError, ManifestGraph};
use crate::oci::{Manifest, MountOutcome, RegistryClient, RegistryError};
use crate::policy::Selector;
use crate::throttle::Throttle;

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
        let mut map = self.slots.lock().expect("ledger lock");
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
}

/// Makes one process the uploader of a `(destination, digest)` among all workers of a queue.
pub struct BlobLeases {
    pub queue: Arc<dyn crate::queue::JobQueue>,
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
    loop {
        match leases
            .queue
            .lease_blob(ctx.dst.name(), digest.as_ref(), &me, leases.ttl)
            .await
        {
            Ok(true) => return Ok(Coordinated::Upload(Some(me))),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(%digest, error = %e, "blob lease unavailable; uploading without it");
                return Ok(Coordinated::Upload(None));
            }
        }
        let other_repo = leases
            .queue
            .blob_lease_holder(ctx.dst.name(), digest.as_ref())
            .await
            .ok()
            .flatten()
            .and_then(|h| h.split_once('|').map(|(_, r)| r.to_string()));
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {},
            _ = ctx.cancel.cancelled() => return Err(TransferError::Cancelled),
        }
        if ctx.dst.blob_exists(dst_repo, digest).await?.is_some() {
            return Ok(Coordinated::Done(BlobOutcome::Skipped));
        }
        if let Some(from) = other_repo.filter(|r| r != dst_repo) {
            if ctx.dst.blob_exists(&from, digest).await?.is_some() {
                match ctx.dst.mount_blob(dst_repo, digest, &from).await? {
                    MountOutcome::Mounted => return Ok(Coordinated::Done(BlobOutcome::Mounted)),
                    MountOutcome::NotMounted(upload) => ctx.dst.cancel_upload(&upload).await,
                }
            }
        }
        if tokio::time::Instant::now() > give_up {
            tracing::warn!(%digest, "another worker holds this blob's lease for too long; uploading too");
            return Ok(Coordinated::Upload(None));
        }
    }
}

/// Renews a held blob lease until dropped (raced against the upload).
async fn keep_lease(ctx: &TransferContext, leases: &BlobLeases, digest: &Digest, holder: &str) {
    loop {
        tokio::time::sleep(leases.ttl / 3).await;
        match leases
            .queue
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
    let counter = match outcome {
        Ok(BlobOutcome::Skipped) => &ctx.stats.blobs_skipped,
        Ok(BlobOutcome::Mounted) => &ctx.stats.blobs_mounted,
        Ok(BlobOutcome::Copied) => &ctx.stats.blobs_copied,
        Err(_) => return outcome,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    outcome
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
            .queue
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

/// One streaming copy attempt; cancels the destination session on any failure.
async fn stream_blob(
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    desc: &Descriptor,
) -> Result<()> {
    let _permits = transfer_permits(ctx).await?;
    let digest = desc.digest().clone();
    let verifier =
        DigestVerifier::new(&digest).ok_or_else(|| TransferError::UnsupportedDigest {
            registry: ctx.src.name().to_string(),
            repository: src_repo.to_string(),
            digest: digest.to_string(),
        })?;
    let upload = ctx.dst.start_upload(dst_repo).await?;
    let result = async {
        let resp = ctx.src.get_blob(src_repo, &digest, 0).await?;
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
        .into_stream(resp.bytes_stream());
        let chunked =
            ctx.copy_by_chunk || ctx.dst.chunk_threshold().is_some_and(|t| desc.size() >= t);
        let sent = if chunked {
            upload_chunked(ctx, upload.clone(), &digest, verified).await
        } else {
            ctx.dst
                .put_blob_stream(
                    &upload,
                    &digest,
                    desc.size(),
                    reqwest::Body::wrap_stream(verified),
                )
                .await
                .map_err(TransferError::from)
        };
        // A failure inside the stream (corruption, cancel) explains a failed request better than
        // the request error itself.
        let cause = failure.lock().expect("failure lock").take();
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

async fn upload_chunked(
    ctx: &TransferContext,
    mut upload: BlobUpload,
    digest: &Digest,
    mut data: impl futures_util::Stream<Item = std::result::Result<Bytes, StreamFailure>> + Unpin,
) -> Result<()> {
    let chunk_size = ctx.dst.chunk_size() as usize;
    let mut buf = BytesMut::with_capacity(chunk_size);
    loop {
        let next = data.next().await;
        let end = match next {
            Some(Ok(b)) => {
                buf.extend_from_slice(&b);
                false
            }
            // The failure slot holds the cause; the caller reports it.
            Some(Err(_)) => return Err(TransferError::Cancelled),
            None => true,
        };
        while buf.len() >= chunk_size || (end && !buf.is_empty()) {
            let take = buf.len().min(chunk_size);
            let chunk = buf.split_to(take).freeze();
            upload = ctx.dst.patch_chunk(&upload, chunk).await?;
        }
        if end {
            break;
        }
    }
    ctx.dst.finish_upload(&upload, digest).await?;
    Ok(())
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
        *self.failure.lock().expect("failure lock") = Some(e);
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
        S: futures_util::Stream<Item = reqwest::Result<Bytes>> + Send + Unpin + 'static,
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
                    Some(Err(source)) => {
                        let e = RegistryError::Transport {
                            registry: st.registry.clone(),
                            url: format!("blob {}", st.digest),
                            cause: source,
                        };
                        let e = st.fail(e.into());
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
