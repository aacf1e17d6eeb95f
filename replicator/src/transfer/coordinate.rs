//! Making sure one blob crosses the wire once per destination: within a process ([`BlobLedger`],
//! a lock per `(destination, digest)` that also remembers which repository holds the blob) and
//! among the workers sharing a queue ([`BlobLeases`], a lease per `(destination, digest)` whose
//! holder value names the repository it uploads into).
//!
//! Invariants: a worker that waited for another's upload mounts or skips the blob instead of
//! sending it again; a held lease is renewed while the upload runs and released after it; queue
//! trouble never fails a transfer — it only costs a duplicate upload.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::oci::digest::Digest;
use crate::oci::MountOutcome;

use super::{BlobOutcome, Result, TransferContext, TransferError};

type Slot = Arc<tokio::sync::Mutex<Option<String>>>;

/// Where blobs are known to live on each destination, and a per-`(destination, digest)` lock so
/// one blob crosses the wire once even when several repositories need it at the same time.
#[derive(Debug, Default)]
pub struct BlobLedger {
    slots: Mutex<HashMap<(String, String), Slot>>,
}

impl BlobLedger {
    pub(crate) fn slot(&self, registry: &str, digest: &Digest) -> Slot {
        let mut map = crate::locks::lock(&self.slots);
        map.entry((registry.to_string(), digest.to_string()))
            .or_default()
            .clone()
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
pub(super) enum Coordinated {
    /// This process uploads (holding the lease when `Some`).
    Upload(Option<String>),
    /// Another worker's upload made it available here.
    Done(BlobOutcome),
}

/// Takes the blob's lease, or waits while another worker uploads it and then mounts it from the
/// repository that worker uploads into (named in the lease's holder value `consumer|repository`).
/// Queue trouble never fails a transfer: it only costs a duplicate upload.
pub(super) async fn coordinate(
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
pub(super) async fn keep_lease(
    ctx: &TransferContext,
    leases: &BlobLeases,
    digest: &Digest,
    holder: &str,
) {
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
