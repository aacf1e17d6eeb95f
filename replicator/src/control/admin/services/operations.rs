//! The `Operations` service: queue statistics, dead letters (list, retry, purge), the region's
//! workers, and pausing or resuming a policy.
//!
//! Invariants: a pause is answered only once no worker starts a job of the policy any more (their
//! cached list of paused policies expired); resuming moves the policy's parked jobs back to the
//! queue; dead-letter pages are bounded by `MAX_PAGE`.
use std::time::Duration;

use ferry_proto::v1 as pb;
use tonic::Request;

use super::{convert, ok, Admin, AdminError, Result, MAX_PAGE};

impl Admin {
    /// Pauses or resumes a policy; resuming moves its parked jobs back to the queue.
    async fn set_paused(&self, name: &str, paused: bool) -> Result<pb::Policy> {
        let (policy, mut snapshot) = self.policy(name).await?;
        let pauses = &self.state.pauses;
        pauses
            .set_paused(name, paused)
            .await
            .map_err(AdminError::from)?;
        if !paused {
            let moved = pauses.unpark(name).await.map_err(AdminError::from)?;
            tracing::info!(
                policy = name,
                jobs = moved,
                "policy resumed: parked jobs are queued again"
            );
            snapshot.paused.remove(name);
        } else {
            // Workers trust their list of paused policies for PAUSED_TTL: once that has passed,
            // none of them starts a job of this policy any more.
            tokio::time::sleep(crate::worker::PAUSED_TTL + Duration::from_millis(100)).await;
            tracing::info!(policy = name, "policy paused: workers park its jobs");
            snapshot.paused.insert(name.to_string());
        }
        ok(snapshot.view(&policy))
    }
}

#[tonic::async_trait]
impl pb::operations_server::Operations for Admin {
    async fn get_queue_stats(
        &self,
        _: Request<pb::GetQueueStatsRequest>,
    ) -> Result<pb::QueueStats> {
        let s = self.state.queue.stats().await.map_err(AdminError::from)?;
        ok(convert::queue_stats(&s))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<pb::ListDeadLettersResponse> {
        let limit = match req.get_ref().limit {
            0 => 100,
            n => (n as usize).min(MAX_PAGE),
        };
        let jobs = self
            .state
            .dead_letters
            .dead_letters(limit)
            .await
            .map_err(AdminError::from)?;
        ok(pb::ListDeadLettersResponse {
            jobs: jobs.iter().map(convert::job).collect(),
        })
    }

    async fn retry_dead_letter(
        &self,
        req: Request<pb::RetryDeadLetterRequest>,
    ) -> Result<pb::RetryDeadLetterResponse> {
        let id = &req.get_ref().job_id;
        if id.is_empty() {
            return Err(AdminError::required("job_id").into());
        }
        if self
            .state
            .dead_letters
            .retry_dead_letter(id)
            .await
            .map_err(AdminError::from)?
        {
            ok(pb::RetryDeadLetterResponse {})
        } else {
            Err(AdminError::NotFound {
                kind: "dead letter",
                name: id.clone(),
                known: Vec::new(),
            }
            .into())
        }
    }

    async fn purge_dead_letters(
        &self,
        _: Request<pb::PurgeDeadLettersRequest>,
    ) -> Result<pb::PurgeDeadLettersResponse> {
        let purged = self
            .state
            .dead_letters
            .purge_dead_letters()
            .await
            .map_err(AdminError::from)?;
        ok(pb::PurgeDeadLettersResponse { purged })
    }

    async fn list_workers(
        &self,
        _: Request<pb::ListWorkersRequest>,
    ) -> Result<pb::ListWorkersResponse> {
        let workers = self
            .state
            .history
            .workers()
            .await
            .map_err(AdminError::from)?;
        ok(pb::ListWorkersResponse {
            workers: workers.iter().map(convert::worker).collect(),
        })
    }

    async fn pause_policy(&self, req: Request<pb::PausePolicyRequest>) -> Result<pb::Policy> {
        self.set_paused(&req.get_ref().name, true).await
    }

    async fn resume_policy(&self, req: Request<pb::ResumePolicyRequest>) -> Result<pb::Policy> {
        self.set_paused(&req.get_ref().name, false).await
    }
}
