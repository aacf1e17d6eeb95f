//! The lease heartbeat: while a job runs, its lease is renewed every third of its length, so no
//! other worker reclaims it.
//!
//! Invariants: a renewal the queue refuses because the lease is gone (`StoreError::LeaseLost`)
//! cancels the job at once and is the only way [`heartbeat`] returns; a queue that is briefly
//! unreachable only logs (the next renewal may succeed); once the job ends the heartbeat stays
//! pending and renews nothing more.
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::queue::{JobQueue, Lease};
use crate::store::StoreError;

/// Renews `lease` every third of its length until the job ends (`job_cancel` fired by the job's
/// owner) — then stays pending. Returns only when the lease was lost, after cancelling the job.
pub(super) async fn heartbeat(
    queue: Arc<dyn JobQueue>,
    lease: Lease,
    lease_for: Duration,
    job_cancel: CancellationToken,
    lease_lost: CancellationToken,
) {
    let period = (lease_for / 3).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {},
            _ = job_cancel.cancelled() => return std::future::pending().await,
        }
        match queue.renew(&lease, lease_for).await {
            Ok(()) => {}
            Err(StoreError::LeaseLost { .. }) => {
                tracing::warn!("lease lost (reclaimed by another worker): cancelling this run");
                lease_lost.cancel();
                job_cancel.cancel();
                return;
            }
            // The queue briefly unreachable: keep working; the next renewal may succeed.
            Err(e) => tracing::warn!(error = %e, "cannot renew lease"),
        }
    }
}
