//! Ingest: registry notifications in, durable jobs out. The library half of `ferry-agent` (and
//! of the all-in-one `ferry serve`).
//!
//! # Layout
//! - [`distribution`]: the CNCF distribution notification envelope (`{"events": [...]}`) →
//!   [`Event`]s: blob, pull and mount events dropped, Ferry's own writes dropped (echo
//!   suppression), the manifest and tag events of one delete joined, child manifests of an index
//!   push folded into the tagged index event.
//! - [`harbor`]: Harbor's webhook JSON, Default and CloudEvents formats → [`Event`]s.
//! - [`origin`]: which configured registry sent a webhook whose URL has no `?registry=` (the hosts
//!   the body names matched against the registries' URLs).
//! - [`matcher`]: [`Event`] + config → one [`Job`](crate::store::queue::Job) per matching event-based
//!   policy.
//! - [`http`]: the axum router (`POST /v1/events/{distribution,harbor}`, `/healthz`, `/metrics`):
//!   bearer-token auth, body limit, content-type check, and the delivery rule below.
//! - [`metrics`]: the Prometheus metrics the router exports.
//! - [`poll`]: the tag poller, the same events for registries that cannot send webhooks.
//!
//! # Invariants
//! - **Answer 2xx only after every job of a batch is durably enqueued.** The registry's notifier
//!   retries anything else, and the queue collapses the duplicates a retry produces, so an event is
//!   never lost between "the registry sent it" and "a worker will run it".
//! - Parsing is pure (no I/O, no clock except for a missing timestamp) and never panics: every
//!   problem is an [`IngestError`] naming the JSON path (`events[2].target.repository: missing`).
//! - Webhooks are untrusted input: repositories, tags and digests follow the one grammar of
//!   [`crate::policy::namespace`] (a name with a `..` segment is a 400 naming its JSON path, never
//!   a job), a body carries at most [`MAX_EVENTS_PER_REQUEST`] events, and event times are
//!   clamped ([`crate::event::TimeClamp`]) before they reach the matcher, the ledger or the outbox.
//! - Events are hints, not commands: workers re-read the source (level-triggered), so dropping a
//!   redundant event (a child manifest of an index) or accepting a duplicate is always safe.

pub mod distribution;
pub mod harbor;
pub mod http;
mod json;
pub mod matcher;
pub mod metrics;
pub mod origin;
pub mod poll;

pub use http::{router, IngestState, IngestStateBuilder, SetupError};
pub use matcher::{Matcher, Route};

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::Region;
use crate::event::{Event, EventKind};
use crate::policy::NameError;
use crate::regions::restore::PushRestorer;
use crate::store::ledger::{TagLedger, TagWrite};
use crate::store::outbox::{Forwarded, Outbox};
use crate::store::queue::JobQueue;
use crate::store::StoreError;

/// Where accepted events go: this region's queue, the outbox of the regions that run the event's
/// other policies, and the ledger of user pushes that bidirectional conflicts are decided on.
#[derive(Clone)]
pub struct EventSink {
    pub queue: Arc<dyn JobQueue>,
    /// This process's region (`--region`); on a single site nothing is forwarded.
    pub region: Region,
    pub outbox: Option<Arc<dyn Outbox>>,
    pub ledger: Option<Arc<dyn TagLedger>>,
    /// Puts a recorded push back when a copy of an older write overwrote it (with `ledger`).
    pub restorer: Option<Arc<PushRestorer>>,
}

impl From<Arc<dyn JobQueue>> for EventSink {
    /// A single-site sink: the queue only.
    fn from(queue: Arc<dyn JobQueue>) -> EventSink {
        EventSink {
            queue,
            region: Region::single_site(),
            outbox: None,
            ledger: None,
            restorer: None,
        }
    }
}

impl<Q: JobQueue + 'static> From<Arc<Q>> for EventSink {
    /// A single-site sink: the queue only.
    fn from(queue: Arc<Q>) -> EventSink {
        EventSink::from(queue as Arc<dyn JobQueue>)
    }
}

impl EventSink {
    /// This process's region, given to matchers.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Everything but the local jobs: records a user's push of a tag of a bidirectional policy's
    /// registry in the ledger (and puts it back if a copy of an older write overwrote it:
    /// [`crate::regions::restore`]), and appends the event to the outbox of every region in
    /// `forward`. Returns once all of it is durable; the caller answers the registry only then.
    pub async fn relay(
        &self,
        matcher: &Matcher,
        event: &Event,
        forward: &BTreeSet<String>,
    ) -> Result<(), StoreError> {
        if let (Some(ledger), EventKind::Push, Some(tag), Some(digest)) =
            (&self.ledger, event.kind, &event.tag, &event.digest)
        {
            if matcher.records_writes(&event.registry) {
                let write = TagWrite {
                    digest: digest.clone(),
                    at_ms: event.occurred_at_ms,
                    region: self.region.recorded(),
                };
                let previous = ledger
                    .record_write(&event.registry, &event.repository, tag, &write)
                    .await?;
                if let Some(restorer) = &self.restorer {
                    restorer
                        .after_push(event, tag, &write, previous.as_ref())
                        .await;
                }
            }
        }
        if forward.is_empty() {
            return Ok(());
        }
        let Some(outbox) = &self.outbox else {
            return Err(StoreError::Unavailable(format!(
                "the event must be forwarded to region(s) {} but this process has no outbox",
                forward.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        let entry = Forwarded {
            event: event.clone(),
            origin_region: self.region.recorded(),
        };
        for region in forward {
            outbox.append(region, &entry).await?;
        }
        Ok(())
    }
}

/// Most notifications one webhook body may carry (distribution `events`, Harbor
/// `event_data.resources`): distribution 2.8 sends one per request, and a bound keeps one request
/// from turning into an unbounded number of queue writes.
pub const MAX_EVENTS_PER_REQUEST: usize = 1000;

/// `items` of the array at `path`, refused when there are more than [`MAX_EVENTS_PER_REQUEST`].
pub(crate) fn bounded_events<'a>(
    items: &'a [serde_json::Value],
    path: &str,
) -> Result<&'a [serde_json::Value], IngestError> {
    if items.len() > MAX_EVENTS_PER_REQUEST {
        return Err(IngestError::TooManyEvents {
            path: path.to_string(),
            found: items.len(),
            limit: MAX_EVENTS_PER_REQUEST,
        });
    }
    Ok(items)
}

/// User-Agent prefix of Ferry's own registry writes (`ferry/<version>`); events those writes cause
/// are dropped so that bidirectional replication does not echo.
pub const FERRY_USER_AGENT_PREFIX: &str = "ferry/";

/// A notification body that cannot be used. `Display` is one line; [`IngestError::path`] is the
/// JSON path of the offending value when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The body is not JSON at all (or is truncated).
    #[error("body is not valid JSON (line {line}, column {column}): {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// A required field is absent or `null`.
    #[error("{path}: missing")]
    Missing { path: String },
    /// A field has the wrong type or an unusable value.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// The request's `Content-Type` is not one this endpoint accepts.
    #[error("content type {found:?} is not accepted here; expected one of: {expected}")]
    ContentType { found: String, expected: String },
    /// The body is larger than the configured limit.
    #[error("body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// More events (or Harbor resources) in one body than [`MAX_EVENTS_PER_REQUEST`].
    #[error("{path}: {found} events in one request, more than the limit of {limit}; send them in smaller batches")]
    TooManyEvents {
        path: String,
        found: usize,
        limit: usize,
    },
    /// The body could not be read (client went away, broken chunked encoding).
    #[error("cannot read the request body: {0}")]
    Body(String),
}

impl IngestError {
    /// JSON path of the offending value (`events[0].target.tag`), `$` for the whole document, or
    /// `None` when the problem is not in the document (content type, size, transport).
    pub fn path(&self) -> Option<&str> {
        match self {
            IngestError::Missing { path }
            | IngestError::Invalid { path, .. }
            | IngestError::TooManyEvents { path, .. } => Some(path),
            IngestError::Json { .. } => Some("$"),
            IngestError::ContentType { .. }
            | IngestError::TooLarge { .. }
            | IngestError::Body(_) => None,
        }
    }

    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> IngestError {
        IngestError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Turns a name outside the grammar ([`crate::policy::namespace`]) into an error at `path`.
    pub(crate) fn name_at(path: impl Into<String>) -> impl FnOnce(NameError) -> IngestError {
        move |e| IngestError::invalid(path, e.to_string())
    }

    pub(crate) fn missing(path: impl Into<String>) -> IngestError {
        IngestError::Missing { path: path.into() }
    }
}

/// Why a notification produced no event. `as_str` is the `outcome` label of `ferry_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// An action Ferry does not replicate: `pull`, `mount`, Harbor's `PULL_ARTIFACT`,
    /// `SCANNING_*`, unknown actions.
    Action,
    /// An event about a blob (layer, config), not a manifest.
    Blob,
    /// Caused by Ferry's own write (User-Agent `ferry/…`, or Harbor's configured robot operator).
    OwnWrite,
    /// A tagless manifest push referenced by a tagged push of the same batch (an index's child):
    /// the tagged event's job copies it.
    ChildManifest,
}

impl IgnoreReason {
    pub fn as_str(self) -> &'static str {
        match self {
            IgnoreReason::Action => "ignored_action",
            IgnoreReason::Blob => "ignored_blob",
            IgnoreReason::OwnWrite => "ignored_own_write",
            IgnoreReason::ChildManifest => "ignored_child_manifest",
        }
    }
}

/// One notification that was dropped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// Position in the body (`events[index]`, or the Harbor resource index).
    pub index: usize,
    /// Bounded action label for metrics: `push`, `delete`, `pull`, `mount` or `other`.
    pub kind: &'static str,
    pub reason: IgnoreReason,
}

/// The result of parsing one notification body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// Notifications in the body (distribution events, or Harbor resources).
    pub received: usize,
    /// Normalized events to match against policies, in body order. Joined deletes count once.
    pub events: Vec<Event>,
    /// Notifications dropped, with their reason.
    pub ignored: Vec<Ignored>,
}

/// Bounded `kind` label for an action or Harbor event type (Default or CloudEvents format).
pub(crate) fn kind_label(action: &str) -> &'static str {
    match action {
        "push" | "PUSH_ARTIFACT" | "harbor.artifact.pushed" => "push",
        "delete" | "DELETE_ARTIFACT" | "harbor.artifact.deleted" => "delete",
        "pull" | "PULL_ARTIFACT" | "harbor.artifact.pulled" => "pull",
        "mount" => "mount",
        _ => "other",
    }
}

pub use crate::replicate::is_referrer_tag;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referrer_tags() {
        let hex = "a".repeat(64);
        assert!(is_referrer_tag(&format!("sha256-{hex}")));
        assert!(is_referrer_tag(&format!("sha256-{hex}.sig")));
        assert!(is_referrer_tag(&format!("sha512-{}", "0".repeat(128))));
        assert!(!is_referrer_tag("sha256-abc"));
        assert!(!is_referrer_tag(&format!("sha256-{}", "A".repeat(64))));
        assert!(!is_referrer_tag(&format!("sha256-{hex}x")));
        assert!(!is_referrer_tag("v1"));
        assert!(!is_referrer_tag("sha256-é"));
    }

    #[test]
    fn error_paths() {
        assert_eq!(
            IngestError::missing("events[2].target.repository").to_string(),
            "events[2].target.repository: missing"
        );
        assert_eq!(
            IngestError::missing("events[0].action").path(),
            Some("events[0].action")
        );
        assert_eq!(IngestError::TooLarge { limit: 1 }.path(), None);
    }
}
