//! The receiving end of forwarding: `ferry.v1.Events/Forward`, served by the agent on
//! `--forward-listen` with a bearer token (and TLS/mTLS in production).
//!
//! A batch is checked whole first (an unusable event is `INVALID_ARGUMENT` naming
//! `events[i].field`, and nothing of the batch is taken). Then each event, in order: skipped if
//! its id was accepted before, else matched against this region's policies (only jobs that run
//! here, never a further forward), its jobs enqueued, and its id remembered. The answer lists the
//! ids now durable here; when the queue fails the call is `UNAVAILABLE` and the sender retries
//! (events already taken are then skipped as duplicates).
use std::sync::Arc;

use tonic::{Request, Response, Status};

use ferry_proto::v1 as pb;

use super::{ForwardMetrics, Outbox};
use crate::catalog::{Current, Reload};
use crate::config::Config;
use crate::ingest::Matcher;
use crate::queue::new_job_id;
use crate::queue::{EnqueueOutcome, JobQueue, QueueError};
use crate::sync::Registries;
use crate::tokens::TokenSet;

/// Largest batch a peer may send.
pub const MAX_BATCH: usize = 1000;

/// The `Events` service of one region.
#[derive(Clone)]
pub struct ForwardService {
    inner: Arc<Inner>,
}

struct Inner {
    region: String,
    matcher: Current<Matcher>,
    queue: Arc<dyn JobQueue>,
    outbox: Arc<dyn Outbox>,
    tokens: TokenSet,
    metrics: ForwardMetrics,
}

impl ForwardService {
    /// The service of `region`, matching `config`'s policies. `tokens` must not be empty: the
    /// endpoint is never anonymous.
    pub fn new(
        region: &str,
        config: &Config,
        queue: Arc<dyn JobQueue>,
        outbox: Arc<dyn Outbox>,
        tokens: Vec<String>,
        metrics: ForwardMetrics,
    ) -> Result<ForwardService, String> {
        if tokens.is_empty() || tokens.iter().any(String::is_empty) {
            return Err(format!(
                "no forward token: set {} or --forward-token-file (the Forward endpoint is never anonymous)",
                super::TOKEN_ENV
            ));
        }
        let matcher = Matcher::for_region(config, Some(region)).map_err(|e| e.to_string())?;
        Ok(ForwardService {
            inner: Arc::new(Inner {
                region: region.to_string(),
                matcher: Current::new(matcher),
                queue,
                outbox,
                tokens: TokenSet::new(tokens),
                metrics,
            }),
        })
    }

    /// The tonic service, token check included.
    pub fn into_server(self) -> pb::events_server::EventsServer<ForwardService> {
        pb::events_server::EventsServer::new(self)
    }
}

impl Reload for ForwardService {
    fn what(&self) -> &'static str {
        "forwarded event matching"
    }

    fn reload(&self, config: &Config, _registries: &Registries) -> Result<(), String> {
        let matcher =
            Matcher::for_region(config, Some(&self.inner.region)).map_err(|e| e.to_string())?;
        self.inner.matcher.set(matcher);
        Ok(())
    }
}

fn unavailable(e: &QueueError) -> Status {
    Status::unavailable(format!("this region's queue cannot store the events: {e}"))
}

#[tonic::async_trait]
impl pb::events_server::Events for ForwardService {
    async fn forward(
        &self,
        request: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        let inner = &self.inner;
        crate::admin::auth::authorize(&inner.tokens, &request, "forward")?;
        let events = request.into_inner().events;
        if events.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "events: {} events in one call; send at most {MAX_BATCH}",
                events.len()
            )));
        }
        let entries = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                super::from_proto(e)
                    .map_err(|m| Status::invalid_argument(format!("events[{i}].{m}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let matcher = inner.matcher.get();
        let mut accepted = Vec::with_capacity(entries.len());
        for entry in entries {
            let (event, origin) = (&entry.event, entry.origin_region.as_str());
            if inner
                .outbox
                .accepted(&event.id)
                .await
                .map_err(|e| unavailable(&e))?
            {
                inner.metrics.received(origin, "duplicate");
                accepted.push(event.id.clone());
                continue;
            }
            let jobs = matcher.forwarded_jobs(event, origin);
            let outcome = if jobs.is_empty() {
                "unmatched"
            } else {
                "enqueued"
            };
            for mut job in jobs {
                job.id = new_job_id();
                let policy = job.policy.clone();
                match inner.queue.enqueue(job).await {
                    Ok(EnqueueOutcome::Enqueued | EnqueueOutcome::Collapsed) => tracing::info!(
                        origin_region = origin,
                        policy = %policy,
                        registry = %event.registry,
                        repository = %event.repository,
                        tag = event.tag.as_deref(),
                        digest = event.digest.as_deref(),
                        event_id = %event.id,
                        "forwarded event enqueued"
                    ),
                    Err(e) => {
                        inner.metrics.received(origin, "queue_unavailable");
                        return Err(unavailable(&e));
                    }
                }
            }
            inner
                .outbox
                .mark_accepted(&event.id)
                .await
                .map_err(|e| unavailable(&e))?;
            inner.metrics.received(origin, outcome);
            accepted.push(event.id.clone());
        }
        Ok(Response::new(pb::ForwardResponse {
            accepted_ids: accepted,
        }))
    }
}
