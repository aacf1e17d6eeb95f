//! Making sure one blob crosses the wire once per destination: within a process ([`BlobLedger`],
//! a lock per `(destination, digest)` that also remembers which repositories hold the blob) and
//! among the workers sharing a queue ([`BlobLeases`], a lease per `(destination, digest)` whose
//! holder value names the repository it uploads into). And that one manifest pushed by digest is
//! written once per destination repository ([`ManifestLeases`]).
//!
//! Invariants: a worker that waited for another's upload mounts or skips the blob instead of
//! sending it again; a held lease is renewed while the upload runs and released after it; queue
//! trouble never fails a transfer — it only costs a duplicate upload. The [`BlobLedger`] of a
//! long-running worker stays bounded: it remembers at most twice [`LEDGER_CAPACITY`] blobs and
//! then forgets the least recently used ones down to that capacity, never a blob a transfer is
//! using. Forgetting a blob's location costs at most one upload that could have been a mount.
//!
//! # Why a manifest lease (and not a hold on digest-only events)
//! Distribution 2.8 notifies a multi-arch push one request at a time: each child manifest by
//! digest, then the tagged index. The child's own job and the index's job then both `HEAD` the
//! child on the destination, find it missing and both `PUT` it. Two cures were possible:
//! - *hold digest-only events* for a while, hoping the tagged event covers them: it adds that
//!   delay to every push by digest (referrers and untagged pushes are pushed that way), and it is
//!   still a race — the hold ends while the index job is copying, or the index event comes late;
//! - *a manifest lease* per `(destination, repository, digest)`, taken **before** the `HEAD` that
//!   decides whether to write and released after the `PUT`: whoever takes it second waits, then
//!   `HEAD`s and finds the manifest present. This is what [`hold_manifest`] does. It holds across
//!   workers and processes (the lease lives in the region's Redis, like [`BlobLeases`]; all jobs
//!   writing one registry run in that registry's region) and costs the common, uncontended case
//!   two sub-millisecond queue round trips (take, release) and no extra registry request.
//!
//! The lease is taken before the `HEAD`, not after: taken after a `HEAD` that found nothing, the
//! second writer would also need a second `HEAD` (its first one can predate the other's `PUT`).
//! Leases are taken parent before child (the index job holds a child's lease while it copies that
//! child, never the other way round), so two jobs cannot wait for each other. A holder renews its
//! lease every third of its ttl (the job lease), so a crashed holder's lease expires with its job
//! lease; a waiter gives up after twenty ttls and writes anyway (a duplicate `PUT`, never a lost
//! one), and queue trouble never fails a transfer. Level-triggering is untouched: the writer
//! still reads the source when it holds the lease. Tags are not leased: a tag is written by the
//! one job of that tag (duplicate pending jobs collapse in the queue).
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::oci::digest::Digest;
use crate::oci::MountOutcome;

use super::{BlobOutcome, Result, TransferContext, TransferError};

type Slot = Arc<tokio::sync::Mutex<Holders>>;

/// The repositories of one destination this process has seen holding one blob: it `HEAD`ed it
/// there, uploaded it there or mounted it there. Only "present" is remembered — a `HEAD` that
/// found nothing is not, so nothing here can suppress a copy — and a repository is forgotten when
/// the registry contradicts it (a mount from it answered with a session, or a manifest `PUT` in it
/// refused for a missing blob, [`BlobLedger::forget_repository`]).
#[derive(Debug, Default)]
pub(crate) struct Holders {
    repos: BTreeSet<String>,
    /// The latest repository added: the one to mount from.
    latest: Option<String>,
}

impl Holders {
    pub(crate) fn holds(&self, repository: &str) -> bool {
        self.repos.contains(repository)
    }

    pub(crate) fn add(&mut self, repository: &str) {
        self.repos.insert(repository.to_string());
        self.latest = Some(repository.to_string());
    }

    pub(crate) fn forget(&mut self, repository: &str) {
        self.repos.remove(repository);
        if self.latest.as_deref() == Some(repository) {
            self.latest = self.repos.iter().next_back().cloned();
        }
    }

    /// A repository to mount the blob into `repository` from: another one known to hold it.
    pub(crate) fn mount_source(&self, repository: &str) -> Option<String> {
        match &self.latest {
            Some(r) if r != repository => Some(r.clone()),
            _ => self.repos.iter().find(|r| *r != repository).cloned(),
        }
    }
}

/// How many blobs a [`BlobLedger`] keeps remembering after it forgets (it forgets once it holds
/// twice as many). About 250 bytes each; enough to keep the shared base layers of a busy region's
/// recent pushes, which are what make mounts instead of uploads.
pub const LEDGER_CAPACITY: usize = 4096;

/// Where blobs are known to live on each destination, and a per-`(destination, digest)` lock so
/// one blob crosses the wire once even when several repositories need it at the same time.
///
/// Bounded (see the module's invariants): a worker lives for weeks and sees every blob pushed in
/// its region, so an entry per blob ever seen would grow without end.
#[derive(Debug)]
pub struct BlobLedger {
    inner: Mutex<LedgerSlots>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct LedgerSlots {
    /// `(destination, digest)` → the slot and when it was last asked for (a `tick`).
    slots: HashMap<(String, String), (Slot, u64)>,
    /// Counts `slot` calls: the clock of "least recently used".
    tick: u64,
}

impl Default for BlobLedger {
    fn default() -> Self {
        BlobLedger::with_capacity(LEDGER_CAPACITY)
    }
}

impl BlobLedger {
    /// A ledger that forgets down to `capacity` blobs once it holds twice as many.
    pub fn with_capacity(capacity: usize) -> Self {
        BlobLedger {
            inner: Mutex::default(),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn slot(&self, registry: &str, digest: &Digest) -> Slot {
        let mut inner = crate::locks::lock(&self.inner);
        inner.tick += 1;
        let tick = inner.tick;
        let (slot, used) = inner
            .slots
            .entry((registry.to_string(), digest.to_string()))
            .or_default();
        *used = tick;
        let slot = slot.clone();
        if inner.slots.len() > 2 * self.capacity {
            inner.forget_least_recent(self.capacity);
        }
        slot
    }

    /// How many blobs it remembers now.
    pub fn remembered(&self) -> usize {
        crate::locks::lock(&self.inner).slots.len()
    }

    /// Forgets that `repository` on `registry` holds any blob: the registry refused a manifest
    /// there for a missing blob (deleted since this process saw it), so the next copy asks again.
    /// Slots in use right now are left to their user, who is settling them anyway.
    pub fn forget_repository(&self, registry: &str, repository: &str) {
        let slots: Vec<Slot> = crate::locks::lock(&self.inner)
            .slots
            .iter()
            .filter(|((r, _), _)| r == registry)
            .map(|(_, (slot, _))| slot.clone())
            .collect();
        for slot in slots {
            if let Ok(mut holders) = slot.try_lock() {
                holders.forget(repository);
            }
        }
    }
}

impl LedgerSlots {
    /// Forgets the least recently used blobs until `keep` remain, skipping those in use (a
    /// transfer holds or waits for their slot: the map's is then not the only reference).
    fn forget_least_recent(&mut self, keep: usize) {
        let mut idle: Vec<(u64, (String, String))> = self
            .slots
            .iter()
            .filter(|(_, (slot, _))| Arc::strong_count(slot) == 1)
            .map(|(key, (_, used))| (*used, key.clone()))
            .collect();
        idle.sort_unstable_by_key(|(used, _)| *used);
        let excess = self.slots.len().saturating_sub(keep);
        for (_, key) in idle.into_iter().take(excess) {
            self.slots.remove(&key);
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

/// Makes one job the writer of a manifest `(destination, repository, digest)` among all workers of
/// a queue (see the module docs for why).
pub struct ManifestLeases {
    pub leases: Arc<dyn crate::store::queue::ManifestLeases>,
    /// This process's name (the queue consumer); each hold adds a number of its own, so two jobs
    /// of one process exclude each other too.
    pub holder: String,
    /// Lease length (the job lease); renewed every third of it while held.
    pub ttl: std::time::Duration,
}

/// Tells holds of one process apart.
static HOLDS: AtomicU64 = AtomicU64::new(0);

/// How often a job waiting for another's manifest lease asks again.
const MANIFEST_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// A held manifest lease: renewed in the background while it lives, released when dropped.
pub struct ManifestHold {
    _release: tokio_util::sync::DropGuard,
}

/// Waits until this job is the one writer of `dst_repo@digest` on `ctx.dst`, and holds that until
/// the returned hold is dropped: check the destination and write under it. `None` without
/// coordination (a one-shot sync, queue trouble, or a holder that takes too long: then the
/// manifest may be written twice, never not at all).
pub async fn hold_manifest(
    ctx: &TransferContext,
    dst_repo: &str,
    digest: &Digest,
) -> Result<Option<ManifestHold>> {
    let Some(leases) = ctx.manifest_leases.clone() else {
        return Ok(None);
    };
    let me = format!(
        "{}|{}",
        leases.holder,
        HOLDS.fetch_add(1, Ordering::Relaxed)
    );
    let (dst, repo, d) = (
        ctx.dst.name().to_string(),
        dst_repo.to_string(),
        digest.to_string(),
    );
    let give_up = tokio::time::Instant::now() + leases.ttl * 20;
    loop {
        match leases
            .leases
            .lease_manifest(&dst, &repo, &d, &me, leases.ttl)
            .await
        {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(repository = %repo, digest = %d, error = %e, "manifest lease unavailable; writing without it");
                return Ok(None);
            }
        }
        if tokio::time::Instant::now() > give_up {
            tracing::warn!(repository = %repo, digest = %d, "another worker holds this manifest's lease for too long; writing too");
            return Ok(None);
        }
        tokio::select! {
            _ = tokio::time::sleep(MANIFEST_POLL) => {},
            _ = ctx.cancel.cancelled() => return Err(TransferError::Cancelled),
        }
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let release = stop.clone().drop_guard();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(leases.ttl / 3) => {
                    match leases.leases.renew_manifest(&dst, &repo, &d, &me, leases.ttl).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(repository = %repo, digest = %d, "manifest lease lost while writing; another worker may write it too"),
                        Err(e) => tracing::debug!(repository = %repo, digest = %d, error = %e, "cannot renew the manifest lease"),
                    }
                }
                _ = stop.cancelled() => break,
            }
        }
        if let Err(e) = leases.leases.release_manifest(&dst, &repo, &d, &me).await {
            tracing::debug!(repository = %repo, digest = %d, error = %e, "cannot release the manifest lease; it expires by itself");
        }
    });
    Ok(Some(ManifestHold { _release: release }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_mounted_from_the_latest_repository_seen_holding_it_and_never_from_its_target() {
        let mut h = Holders::default();
        assert_eq!(h.mount_source("a"), None, "nothing seen: ask the registry");
        h.add("a");
        assert!(h.holds("a"));
        assert_eq!(
            h.mount_source("a"),
            None,
            "never from the repository itself"
        );
        assert_eq!(h.mount_source("b").as_deref(), Some("a"));
        h.add("b");
        assert_eq!(h.mount_source("c").as_deref(), Some("b"));
        assert_eq!(h.mount_source("b").as_deref(), Some("a"));
    }

    #[test]
    fn a_forgotten_repository_is_neither_trusted_nor_mounted_from() {
        let mut h = Holders::default();
        h.add("a");
        h.add("b");
        h.forget("b");
        assert!(!h.holds("b"));
        assert_eq!(h.mount_source("c").as_deref(), Some("a"));
        h.forget("a");
        assert_eq!(h.mount_source("c"), None);
    }

    fn digest(i: usize) -> Digest {
        crate::oci::digest::sha256(i.to_string().as_bytes())
    }

    #[tokio::test]
    async fn the_ledger_forgets_the_least_recently_used_blobs_beyond_twice_its_capacity() {
        let ledger = BlobLedger::with_capacity(4);
        ledger.slot("dst", &digest(0)).lock().await.add("team/base");
        for i in 1..=7 {
            ledger.slot("dst", &digest(i));
            // Blob 0 is used all along: it stays the most recently used of the early ones.
            ledger.slot("dst", &digest(0));
            assert_eq!(
                ledger.remembered(),
                i + 1,
                "nothing is forgotten up to 2 × capacity"
            );
        }
        ledger.slot("dst", &digest(8));
        assert_eq!(ledger.remembered(), 4, "forgotten down to the capacity");
        assert!(
            ledger
                .slot("dst", &digest(0))
                .lock()
                .await
                .holds("team/base"),
            "the recently used blob's location is kept"
        );
        assert_eq!(
            ledger
                .slot("dst", &digest(1))
                .lock()
                .await
                .mount_source("x"),
            None,
            "an old, unused blob was forgotten"
        );
        for i in 9..1000 {
            ledger.slot("dst", &digest(i));
            assert!(ledger.remembered() <= 8);
        }
    }

    #[tokio::test]
    async fn a_blob_a_transfer_is_using_is_never_forgotten() {
        let ledger = BlobLedger::with_capacity(2);
        let held = ledger.slot("dst", &digest(0));
        let _locked = held.lock().await;
        for i in 1..100 {
            ledger.slot("dst", &digest(i));
        }
        assert!(
            Arc::ptr_eq(&held, &ledger.slot("dst", &digest(0))),
            "a second job for the blob must wait on the same lock"
        );
    }
}
