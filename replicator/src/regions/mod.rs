//! Regions: cross-region coordination (DESIGN.md "Topology"): events one region's agent accepted that
//! another region must act on travel over gRPC (`ferry.v1.Events/Forward`), never through a
//! shared Redis.
//!
//! # Layout
//! - [`crate::store::outbox`] (stored with the rest of the region's state): the durable per-region outbox the agent writes before answering the registry,
//!   and the receiver's record of accepted event ids.
//! - [`server`]: the `Events` service: matches forwarded events against this region's policies
//!   and answers only after their jobs are in the local queue.
//! - [`conflict`]: bidirectional conflicts between regions: the later write wins, decided from
//!   the ledger of tag writes every region records; [`restore`]: the agent puts a user's push
//!   back when a copy of an older write overwrote it.
//! - [`client`]: the forwarder: one delivery loop per peer region, in outbox order, with
//!   backoff while the peer is unreachable.
//!
//! # Invariants
//! - Nothing is acknowledged that is not stored: the registry gets its 2xx after the outbox
//!   append, the forwarder trims the outbox after the peer's answer, and the peer answers after
//!   its enqueue. A partition only delays.
//! - Delivery is at-least-once and idempotent: the receiver skips event ids it accepted before,
//!   and duplicate pending jobs collapse in its queue.
//! - Per peer region there is one delivery loop at a time (a lease in Redis), reading the outbox
//!   in order: events of one repository arrive in the order they were accepted.
//! - A forwarded event is never forwarded again (see `ingest::matcher`).
pub mod client;
pub mod conflict;
pub mod restore;
pub mod server;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use ferry_proto::v1 as pb;

use crate::event::{check_event_id, Event, EventKind};
use crate::policy::{check_digest, check_repository, check_tag};
use crate::store::outbox::Forwarded;

pub use client::{ForwardTls, Forwarder};
pub use server::ForwardService;

/// Env var holding the token regions present to each other's Forward endpoints.
pub const TOKEN_ENV: &str = "FERRY_FORWARD_TOKEN";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabels {
    region: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    region: String,
    outcome: String,
}

/// Metrics of forwarding, on both ends.
///
/// - `ferry_forward_outbox_depth{region}`: events waiting for a peer region (alert when it grows:
///   the link or the peer is down).
/// - `ferry_forward_events_total{region,outcome}`: events sent to a peer (`delivered`), and
///   failed delivery attempts (`failed`).
/// - `ferry_forward_received_total{region,outcome}`: events received from a peer region:
///   `enqueued`, `unmatched` (no local policy), `duplicate` (accepted before), `queue_unavailable`.
#[derive(Debug, Clone, Default)]
pub struct ForwardMetrics {
    outbox_depth: Family<RegionLabels, Gauge>,
    sent: Family<OutcomeLabels, Counter>,
    received: Family<OutcomeLabels, Counter>,
}

impl ForwardMetrics {
    pub fn register(registry: &mut Registry) -> ForwardMetrics {
        let m = ForwardMetrics::default();
        registry.register(
            "ferry_forward_outbox_depth",
            "Events waiting in the outbox for a peer region",
            m.outbox_depth.clone(),
        );
        registry.register(
            "ferry_forward_events",
            "Events forwarded to a peer region, by outcome",
            m.sent.clone(),
        );
        registry.register(
            "ferry_forward_received",
            "Events received from a peer region, by outcome",
            m.received.clone(),
        );
        m
    }

    fn depth(&self, region: &str, depth: u64) {
        self.outbox_depth
            .get_or_create(&RegionLabels {
                region: region.to_string(),
            })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    fn sent(&self, region: &str, outcome: &str, n: u64) {
        self.sent
            .get_or_create(&OutcomeLabels {
                region: region.to_string(),
                outcome: outcome.to_string(),
            })
            .inc_by(n);
    }

    fn received(&self, region: &str, outcome: &str) {
        self.received
            .get_or_create(&OutcomeLabels {
                region: region.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }
}

/// The wire form of an outbox entry.
pub fn to_proto(entry: &Forwarded) -> pb::Event {
    let e = &entry.event;
    pb::Event {
        id: e.id.clone(),
        registry: e.registry.clone(),
        repository: e.repository.clone(),
        tag: e.tag.clone().unwrap_or_default(),
        digest: e.digest.clone().unwrap_or_default(),
        media_type: e.media_type.clone().unwrap_or_default(),
        kind: match e.kind {
            EventKind::Push => pb::EventKind::Push,
            EventKind::Delete => pb::EventKind::Delete,
        } as i32,
        occurred_at_ms: e.occurred_at_ms,
        origin_region: entry.origin_region.clone(),
    }
}

/// Longest media type kept from a received event (it is a hint that decides nothing; a longer one
/// is dropped rather than refused).
const MAX_MEDIA_TYPE_LEN: usize = 255;

/// A received event, checked field by field against the one grammar
/// ([`crate::policy::namespace`]); the error names the field (`repository: …`). Whether
/// `registry` and `origin_region` are configured is the receiver's check.
pub fn from_proto(e: pb::Event) -> Result<Forwarded, String> {
    let required = |value: &str, field: &str| {
        if value.is_empty() {
            Err(format!("{field}: missing"))
        } else {
            Ok(())
        }
    };
    check_event_id(&e.id).map_err(|m| format!("id: {m}"))?;
    required(&e.registry, "registry")?;
    required(&e.repository, "repository")?;
    check_repository(&e.repository).map_err(|m| format!("repository: {m}"))?;
    required(&e.origin_region, "origin_region")?;
    let kind = match pb::EventKind::try_from(e.kind) {
        Ok(pb::EventKind::Push) => EventKind::Push,
        Ok(pb::EventKind::Delete) => EventKind::Delete,
        _ => return Err(format!("kind: {} is not PUSH or DELETE", e.kind)),
    };
    if e.tag.is_empty() && e.digest.is_empty() {
        return Err("tag, digest: the event names neither".to_string());
    }
    if !e.tag.is_empty() {
        check_tag(&e.tag).map_err(|m| format!("tag: {m}"))?;
    }
    if !e.digest.is_empty() {
        check_digest(&e.digest).map_err(|m| format!("digest: {m}"))?;
    }
    let some = |s: String| (!s.is_empty()).then_some(s);
    let media_type = some(e.media_type)
        .filter(|m| m.len() <= MAX_MEDIA_TYPE_LEN && !m.chars().any(char::is_control));
    Ok(Forwarded {
        event: Event {
            id: e.id,
            registry: e.registry,
            repository: e.repository,
            tag: some(e.tag),
            digest: some(e.digest),
            media_type,
            kind,
            occurred_at_ms: e.occurred_at_ms,
            request_id: None,
        },
        origin_region: e.origin_region,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:77d686e3e38b6ab19b76850261e0879edb760b1e9b603136d411c574862981cc";

    fn entry() -> Forwarded {
        Forwarded {
            event: Event {
                id: "ev-1".into(),
                registry: "eu".into(),
                repository: "platform/api".into(),
                tag: Some("v1".into()),
                digest: Some(DIGEST.into()),
                media_type: None,
                kind: EventKind::Delete,
                occurred_at_ms: 42,
                request_id: None,
            },
            origin_region: "eu".into(),
        }
    }

    #[test]
    fn events_round_trip() {
        assert_eq!(from_proto(to_proto(&entry())).unwrap(), entry());
    }

    #[test]
    fn an_unusable_media_type_is_dropped_not_refused() {
        let mut e = to_proto(&entry());
        e.media_type = "x".repeat(MAX_MEDIA_TYPE_LEN + 1);
        assert_eq!(from_proto(e).unwrap().event.media_type, None);
        let mut e = to_proto(&entry());
        e.media_type = "application/vnd.oci.image.manifest.v1+json\n".into();
        assert_eq!(from_proto(e).unwrap().event.media_type, None);
        let mut e = to_proto(&entry());
        e.media_type = "application/vnd.oci.image.manifest.v1+json".into();
        assert!(from_proto(e).unwrap().event.media_type.is_some());
    }

    #[test]
    fn bad_events_name_the_field() {
        let bad = |f: fn(&mut pb::Event)| {
            let mut e = to_proto(&entry());
            f(&mut e);
            from_proto(e).unwrap_err()
        };
        assert_eq!(bad(|e| e.id.clear()), "id: missing");
        assert_eq!(bad(|e| e.origin_region.clear()), "origin_region: missing");
        assert_eq!(bad(|e| e.kind = 0), "kind: 0 is not PUSH or DELETE");
        assert_eq!(bad(|e| e.kind = 99), "kind: 99 is not PUSH or DELETE");
        assert_eq!(
            bad(|e| e.digest = "sha256:zz".into()),
            "digest: digest \"sha256:zz\": it is not `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`"
        );
        assert!(bad(|e| e.repository = "Platform/../../UPPER?x=1".into())
            .starts_with("repository: repository \"Platform/../../UPPER?x=1\": "));
        assert!(bad(|e| e.repository = "apps/../../v2/_catalog".into()).starts_with("repository: "));
        assert!(bad(|e| e.tag = "v1|x".into()).starts_with("tag: tag \"v1|x\": "));
        assert!(bad(|e| e.tag = "v1\nx".into()).starts_with("tag: "));
        assert!(bad(|e| e.id = "a\nb".into()).starts_with("id: "));
        assert!(bad(|e| e.id = "x".repeat(2000)).starts_with("id: 2000 bytes long"));
        assert_eq!(
            bad(|e| {
                e.tag.clear();
                e.digest.clear();
            }),
            "tag, digest: the event names neither"
        );
    }
}
