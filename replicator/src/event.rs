//! Registry change events, normalized from distribution/Harbor webhooks or the tag poller.
//!
//! An [`Event`] says *that* something changed, never what the destination must become: workers
//! re-read the source when they run (level-triggered), so a stale, duplicated or reordered event can
//! never roll a destination back.
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Push,
    Delete,
}

impl EventKind {
    /// `push` or `delete`: the serialized name, also used in metric labels and job keys.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Push => "push",
            EventKind::Delete => "delete",
        }
    }
}

/// One normalized registry event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id (the registry's event id when it has one); forwarding is idempotent on it.
    pub id: String,
    /// Config name of the registry where the change happened.
    pub registry: String,
    pub repository: String,
    /// Tag, when the event names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Manifest digest, when the event names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub kind: EventKind,
    /// When the registry saw the change (Unix ms); replication lag is measured from here.
    pub occurred_at_ms: i64,
    /// Registry request id: joins the tag and manifest events of one delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Event {
    /// The reference a job acts on: the tag when known, else the digest.
    pub fn reference(&self) -> Option<&str> {
        self.tag.as_deref().or(self.digest.as_deref())
    }
}

/// A duration in whole milliseconds as stored in Unix-ms fields (saturating).
pub fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Current time in Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
