//! The forwarder: delivers one peer region's outbox to that region's `Events/Forward` endpoint.
//!
//! One loop per peer region and agent; a lease in Redis ([`Outbox::lease_forwarder`]) lets only
//! one agent of the region deliver at a time, so the outbox is read in order by one reader. Each
//! round sends the oldest [`BATCH`] entries and trims those the peer acknowledged. A failed round
//! (peer down, link cut, peer's queue unavailable) is retried after a capped, jittered backoff
//! (the supervisor's, [`crate::runtime::background`]) and leaves the outbox untouched.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use ferry_proto::v1 as pb;

use super::{to_proto, ForwardMetrics};
use crate::backoff::RetryPolicy;
use crate::config::RegionConfig;
use crate::runtime::background::{supervise, Next, Routine, Statuses, Supervisor};
use crate::store::outbox::Outbox;

/// Entries per call.
pub const BATCH: usize = 100;
/// Pause between looks at an empty outbox.
pub const IDLE: Duration = Duration::from_millis(100);
/// Lease of the delivery loop of one peer region.
pub const LEASE: Duration = Duration::from_secs(10);
/// Longest a call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Backoff between failed rounds: from 200 ms, doubling, capped at 5 s.
const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base: Duration::from_millis(200),
    max: Duration::from_secs(5),
};

/// TLS of outgoing calls: the CA that signed the peers' certificates, and this region's own
/// certificate and key for mTLS.
#[derive(Debug, Clone, Default)]
pub struct ForwardTls {
    pub ca: Option<PathBuf>,
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Delivers one peer region's outbox.
pub struct Forwarder {
    local: String,
    peer: RegionConfig,
    outbox: Arc<dyn Outbox>,
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    client: pb::events_client::EventsClient<Channel>,
    metrics: ForwardMetrics,
    holder: String,
}

impl Forwarder {
    /// A forwarder from region `local` to `peer`, holding the delivery lease as `holder`. Fails
    /// (naming the file or URL) when the URL or TLS material is unusable; connects lazily.
    pub fn new(
        local: &str,
        peer: &RegionConfig,
        outbox: Arc<dyn Outbox>,
        token: &str,
        tls: &ForwardTls,
        metrics: ForwardMetrics,
        holder: &str,
    ) -> Result<Forwarder, String> {
        let what = format!("region {:?} forward_url {:?}", peer.name, peer.forward_url);
        let mut endpoint = Endpoint::from_shared(peer.forward_url.clone())
            .map_err(|e| format!("{what}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT);
        if peer.forward_url.starts_with("https://") {
            let read = |path: &PathBuf, role: &str| {
                std::fs::read(path)
                    .map_err(|e| format!("cannot read the forward {role} {}: {e}", path.display()))
            };
            let mut config = ClientTlsConfig::new();
            match &tls.ca {
                Some(ca) => config = config.ca_certificate(Certificate::from_pem(read(ca, "CA")?)),
                None => {
                    return Err(format!(
                        "{what}: an https forward_url needs --forward-ca (the CA that signed the peers' certificates)"
                    ))
                }
            }
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(
                    read(cert, "TLS certificate")?,
                    read(key, "TLS key")?,
                ));
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| format!("{what}: {e}"))?;
        }
        let authorization = format!("Bearer {token}").parse().map_err(|_| {
            "the forward token contains characters not allowed in a header".to_string()
        })?;
        Ok(Forwarder {
            local: local.to_string(),
            peer: peer.clone(),
            outbox,
            authorization,
            client: pb::events_client::EventsClient::new(endpoint.connect_lazy()),
            metrics,
            holder: holder.to_string(),
        })
    }

    /// Delivers until `cancel` fires (an entry being delivered then is sent again later).
    pub async fn run(self, cancel: CancellationToken) {
        let region = self.peer.name.clone();
        tracing::info!(peer_region = %region, url = %self.peer.forward_url, "forwarding events");
        supervise(self, Statuses::default(), cancel).await;
        tracing::info!(peer_region = %region, "forwarder stopped");
    }

    /// Delivers under `supervisor` until it stops.
    pub fn supervised(self, supervisor: &Supervisor) {
        tracing::info!(peer_region = %self.peer.name, url = %self.peer.forward_url, "forwarding events");
        supervisor.spawn(self);
    }

    /// One round: the number of entries delivered.
    async fn round(&mut self) -> Result<usize, Round> {
        let region = self.peer.name.clone();
        let store = |e: crate::store::StoreError| Round::Failed(format!("outbox: {e}"));
        if !self
            .outbox
            .lease_forwarder(&region, &self.holder, LEASE)
            .await
            .map_err(store)?
        {
            return Err(Round::NotLeader);
        }
        let pending = self.outbox.pending(&region, BATCH).await.map_err(store)?;
        // A short read is the whole outbox; only a full batch needs the length asked for.
        let depth = if pending.len() < BATCH {
            pending.len() as u64
        } else {
            self.outbox.depth(&region).await.map_err(store)?
        };
        self.metrics.depth(&region, depth);
        if pending.is_empty() {
            return Ok(0);
        }
        let mut request = tonic::Request::new(pb::ForwardRequest {
            events: pending.iter().map(|(_, e)| to_proto(e)).collect(),
        });
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        let accepted = self
            .client
            .forward(request)
            .await
            .map_err(|s| Round::Failed(format!("{}: {}", s.code(), s.message())))?
            .into_inner()
            .accepted_ids;
        let delivered: Vec<String> = pending
            .iter()
            .filter(|(_, e)| accepted.contains(&e.event.id))
            .map(|(id, _)| id.clone())
            .collect();
        self.outbox
            .remove(&region, &delivered)
            .await
            .map_err(store)?;
        self.metrics
            .sent(&region, "delivered", delivered.len() as u64);
        tracing::debug!(
            from_region = %self.local,
            peer_region = %region,
            delivered = delivered.len(),
            "events forwarded"
        );
        if delivered.len() < pending.len() {
            return Err(Round::Failed(format!(
                "the peer acknowledged {} of {} events",
                delivered.len(),
                pending.len()
            )));
        }
        Ok(delivered.len())
    }
}

enum Round {
    /// Another agent of this region delivers to that peer.
    NotLeader,
    Failed(String),
}

/// Why a round failed; the events stay in the outbox.
#[derive(Debug, thiserror::Error)]
#[error("cannot forward events to region {region} at {url}; they stay in the outbox: {message}")]
pub struct ForwardFailed {
    region: String,
    url: String,
    message: String,
}

/// A forwarder as a [`Routine`]: a round, then at once while the outbox is full, [`IDLE`] when it
/// is empty, or a third of the lease when another agent holds it.
impl Routine for Forwarder {
    type Error = ForwardFailed;

    fn name(&self) -> String {
        format!("forwarder/{}", self.peer.name)
    }

    /// A round runs to its end, so that what the peer acknowledged leaves the outbox.
    fn interruptible(&self) -> bool {
        false
    }

    fn retry(&self) -> RetryPolicy {
        RETRY
    }

    async fn step(&mut self) -> Result<Next, ForwardFailed> {
        match self.round().await {
            Ok(0) => Ok(Next::After(IDLE)),
            Ok(_) => Ok(Next::Now),
            Err(Round::NotLeader) => Ok(Next::After(LEASE / 3)),
            Err(Round::Failed(message)) => {
                self.metrics.sent(&self.peer.name, "failed", 1);
                Err(ForwardFailed {
                    region: self.peer.name.clone(),
                    url: self.peer.forward_url.clone(),
                    message,
                })
            }
        }
    }
}
