//! The receiving end of forwarding: `ferry.v1.Events/Forward`, served by the agent on
//! `--forward-listen` with a bearer token (and TLS/mTLS in production).
//!
//! A peer's events are untrusted input like a webhook's: a valid token proves the peer, not its
//! data.
//! - The token is checked by an interceptor ([`ForwardAuth`]) on the request headers, **before the
//!   body is read or decoded**: an unauthenticated caller costs no decoding, whatever it sends.
//!   Messages are decoded up to [`MAX_MESSAGE_BYTES`].
//! - A batch (at most [`MAX_BATCH`] events) is checked whole first: every field against the one
//!   grammar ([`super::from_proto`]), `registry` a configured registry, `origin_region` a
//!   configured region other than this one. An unusable event is `INVALID_ARGUMENT` naming
//!   `events[i].field`, and nothing of the batch is taken.
//! - Event times are clamped ([`TimeClamp`]) before matching, so a peer's clock (or lie) cannot
//!   win the conflicts of the tags it names.
//!
//! Then each event, in order: skipped if its id was accepted before, else matched against this
//! region's policies (only jobs that run here, never a further forward), its jobs enqueued, and
//! its id remembered. The answer lists the ids now durable here; when the queue fails the call is
//! `UNAVAILABLE` and the sender retries (events already taken are then skipped as duplicates).
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::{Request, Response, Status};

use ferry_proto::v1 as pb;

use super::ForwardMetrics;
use crate::catalog::{Current, Reload};
use crate::config::{Config, Region};
use crate::event::TimeClamp;
use crate::ingest::Matcher;
use crate::policy::quoted;
use crate::replicate::Registries;
use crate::store::outbox::{Forwarded, Outbox};
use crate::store::queue::new_job_id;
use crate::store::queue::{EnqueueOutcome, JobQueue};
use crate::store::StoreError;
use crate::tokens::TokenSet;

/// Largest batch a peer may send.
pub const MAX_BATCH: usize = 1000;

/// Largest message decoded (after the token check): [`MAX_BATCH`] events of the largest valid size
/// fit in half of it.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// What a batch is checked against, replaced as a whole on reload.
struct Accepting {
    matcher: Matcher,
    /// Configured regions other than this one: the valid `origin_region`s.
    peers: BTreeSet<String>,
    /// Configured registries: the valid `registry`s.
    registries: BTreeSet<String>,
}

impl Accepting {
    fn new(region: &str, config: &Config) -> Result<Accepting, String> {
        Ok(Accepting {
            matcher: Matcher::for_region(config, &Region::new(region))
                .map_err(|e| e.to_string())?,
            peers: config
                .regions
                .iter()
                .filter(|r| r.name != region)
                .map(|r| r.name.clone())
                .collect(),
            registries: config.registries.iter().map(|r| r.name.clone()).collect(),
        })
    }

    /// Event `i` of a batch, checked field by field; the error names `events[i].field`.
    fn check(&self, region: &str, i: usize, event: pb::Event) -> Result<Forwarded, Status> {
        let invalid = |m: String| Status::invalid_argument(format!("events[{i}].{m}"));
        let entry = super::from_proto(event).map_err(invalid)?;
        let known = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
        if !self.registries.contains(&entry.event.registry) {
            return Err(invalid(format!(
                "registry: {} is not a configured registry (configured: {})",
                quoted(&entry.event.registry),
                known(&self.registries)
            )));
        }
        if entry.origin_region == region {
            return Err(invalid(format!(
                "origin_region: {region:?} is this region; only other regions forward here"
            )));
        }
        if !self.peers.contains(&entry.origin_region) {
            return Err(invalid(format!(
                "origin_region: {} is not a configured region (other regions: {})",
                quoted(&entry.origin_region),
                known(&self.peers)
            )));
        }
        Ok(entry)
    }
}

/// The token check of `Events/Forward`, run on the request headers before the body is read.
#[derive(Clone)]
pub struct ForwardAuth {
    tokens: TokenSet,
}

impl Interceptor for ForwardAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        crate::tokens::authorize(&self.tokens, &req, "forward")?;
        Ok(req)
    }
}

/// The `Events` service of one region.
#[derive(Clone)]
pub struct ForwardService {
    inner: Arc<Inner>,
    /// Clamps the times of received events.
    times: TimeClamp,
}

struct Inner {
    region: String,
    accepting: Current<Accepting>,
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
        Ok(ForwardService {
            inner: Arc::new(Inner {
                region: region.to_string(),
                accepting: Current::new(Accepting::new(region, config)?),
                queue,
                outbox,
                tokens: TokenSet::new(tokens),
                metrics,
            }),
            times: TimeClamp::default(),
        })
    }

    /// Clamps event times to at most `skew` ahead of this process's clock (default
    /// [`crate::event::DEFAULT_MAX_CLOCK_SKEW`]; see [`TimeClamp`]).
    pub fn with_max_clock_skew(mut self, skew: Duration) -> ForwardService {
        self.times = TimeClamp::new(skew);
        self
    }

    /// The tonic service: the token check ([`ForwardAuth`]) runs before the body is decoded.
    pub fn into_server(
        self,
    ) -> InterceptedService<pb::events_server::EventsServer<ForwardService>, ForwardAuth> {
        let auth = ForwardAuth {
            tokens: self.inner.tokens.clone(),
        };
        let server =
            pb::events_server::EventsServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES);
        InterceptedService::new(server, auth)
    }
}

impl Reload for ForwardService {
    fn what(&self) -> &'static str {
        "forwarded event matching"
    }

    fn reload(&self, config: &Config, _registries: &Registries) -> Result<(), String> {
        let accepting = Accepting::new(&self.inner.region, config)?;
        self.inner.accepting.set(accepting);
        Ok(())
    }
}

fn unavailable(e: &StoreError) -> Status {
    Status::unavailable(format!("this region's queue cannot store the events: {e}"))
}

#[tonic::async_trait]
impl pb::events_server::Events for ForwardService {
    async fn forward(
        &self,
        request: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        let inner = &self.inner;
        // The token was checked by `ForwardAuth` before the body was decoded.
        let events = request.into_inner().events;
        if events.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "events: {} events in one call; send at most {MAX_BATCH}",
                events.len()
            )));
        }
        let accepting = inner.accepting.get();
        let mut entries = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| accepting.check(&inner.region, i, e))
            .collect::<Result<Vec<_>, _>>()?;
        for entry in &mut entries {
            self.times.apply(&mut entry.event);
        }
        let matcher = &accepting.matcher;
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
