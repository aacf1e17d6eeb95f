//! Where interrupted chunked uploads stand: [`Checkpoints`], one [`UploadCheckpoint`] per
//! `(destination, digest)` of the job a transfer runs for, kept on the job in the queue (or in
//! this process for one-shot syncs).
//!
//! Invariants: a checkpoint is saved only after the destination confirmed its chunk and names the
//! hash state over exactly the bytes it holds; it is cleared once its blob is complete or its
//! session abandoned; queue trouble never fails a transfer (it only costs resumability), except
//! that a lost lease stops it ([`TransferError::LeaseLost`]).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::store::queue::{Lease, UploadCheckpoint};
use crate::store::StoreError;

use super::{Result, TransferError};

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
    pub(super) fn take_inherited(&self, destination: &str, digest: &str) -> bool {
        crate::locks::lock(&self.inherited).remove(&(destination.to_string(), digest.to_string()))
    }

    /// True once the job's lease is known to be lost.
    pub(super) fn lease_lost(&self) -> bool {
        self.store
            .as_ref()
            .is_some_and(|s| s.lease_lost.is_cancelled())
    }

    /// Records `checkpoint` (replacing the previous one of its blob). `Err(LeaseLost)` when the
    /// job belongs to another worker now: the upload must stop.
    pub(super) async fn save(&self, checkpoint: UploadCheckpoint) -> Result<()> {
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
    pub(super) async fn clear(&self, destination: &str, digest: &str) {
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
