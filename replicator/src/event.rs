//! Registry change events, normalized from distribution/Harbor webhooks or the tag poller.
//!
//! An [`Event`] says *that* something changed, never what the destination must become: workers
//! re-read the source when they run (level-triggered), so a stale, duplicated or reordered event can
//! never roll a destination back.
//!
//! Event times come from outside (a registry's clock, a peer region's claim) and decide bidirectional
//! conflicts (`crate::regions::conflict`: the later write wins) and the lag metric, so every place an event
//! enters clamps its time with [`TimeClamp`] before anything reads it: a time far in the future
//! would otherwise win every conflict on its tag for as long as the ledger remembers it.
use std::time::Duration;

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

/// Longest event id accepted (ids become Redis keys and log fields; a poller id is
/// `poll:<registry>:<repository>:<tag>:<digest>:<kind>`, well under this).
pub const MAX_EVENT_ID_LEN: usize = 1024;

/// Checks an event id: 1 to [`MAX_EVENT_ID_LEN`] bytes, no control characters (no line breaks in
/// log lines).
pub fn check_event_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        Err("missing".to_string())
    } else if id.len() > MAX_EVENT_ID_LEN {
        Err(format!(
            "{} bytes long, more than {MAX_EVENT_ID_LEN}",
            id.len()
        ))
    } else if id.chars().any(char::is_control) {
        Err("contains a control character".to_string())
    } else {
        Ok(())
    }
}

use crate::clock::{duration_ms, now_ms};

/// Default of `--max-clock-skew-seconds`: how far ahead of this process's clock an event time may
/// be (registry and agent clocks disagree by this much at most when NTP works).
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// How far behind this process's clock an event time may be. Not the skew: an event may
/// legitimately be old (it waited in a registry's retry queue while the agent was down, or in an
/// outbox during a partition), and a forwarded write must keep the time its origin region recorded
/// so that both regions decide its conflicts alike. The conflict ledger remembers a write exactly this
/// long (`store::ledger::LEDGER_TTL`): an older event decides nothing anyway.
pub const MAX_EVENT_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The believable range of event times, `[now − MAX_EVENT_AGE, now + max skew]`, and the clamp into
/// it that every entry point applies (webhooks, Harbor events, `Events/Forward`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeClamp {
    max_skew_ms: i64,
}

impl Default for TimeClamp {
    fn default() -> TimeClamp {
        TimeClamp::new(DEFAULT_MAX_CLOCK_SKEW)
    }
}

impl TimeClamp {
    /// Event times at most `max_skew` ahead of the local clock.
    pub fn new(max_skew: Duration) -> TimeClamp {
        TimeClamp {
            max_skew_ms: duration_ms(max_skew),
        }
    }

    /// `at_ms` moved into `[now_ms − MAX_EVENT_AGE, now_ms + max skew]`.
    pub fn clamp(&self, at_ms: i64, now_ms: i64) -> i64 {
        let earliest = now_ms.saturating_sub(duration_ms(MAX_EVENT_AGE));
        let latest = now_ms.saturating_add(self.max_skew_ms);
        at_ms.clamp(earliest, latest.max(earliest))
    }

    /// Clamps `event`'s time against the clock now, logging (at debug level) a time it moved.
    pub fn apply(&self, event: &mut Event) {
        let clamped = self.clamp(event.occurred_at_ms, now_ms());
        if clamped != event.occurred_at_ms {
            tracing::debug!(
                event_id = %event.id,
                registry = %event.registry,
                occurred_at_ms = event.occurred_at_ms,
                clamped_to_ms = clamped,
                "event time outside the believable range; clamped"
            );
            event.occurred_at_ms = clamped;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn times_are_clamped_to_the_skew_ahead_and_the_ledger_age_behind() {
        let clamp = TimeClamp::new(Duration::from_secs(300));
        assert_eq!(clamp.clamp(NOW, NOW), NOW);
        assert_eq!(clamp.clamp(NOW + 299_000, NOW), NOW + 299_000);
        assert_eq!(clamp.clamp(NOW + 301_000, NOW), NOW + 300_000);
        assert_eq!(clamp.clamp(i64::MAX, NOW), NOW + 300_000);
        let week = duration_ms(MAX_EVENT_AGE);
        assert_eq!(clamp.clamp(NOW - week + 1, NOW), NOW - week + 1);
        assert_eq!(clamp.clamp(0, NOW), NOW - week);
        assert_eq!(clamp.clamp(i64::MIN, NOW), NOW - week);
        // Extreme clocks do not overflow.
        assert_eq!(clamp.clamp(5, i64::MAX), i64::MAX - week);
        assert_eq!(clamp.clamp(5, i64::MIN), i64::MIN + 300_000);
        assert_eq!(TimeClamp::new(Duration::MAX).clamp(i64::MAX, NOW), i64::MAX);
    }

    #[test]
    fn event_ids_are_bounded_and_printable() {
        assert!(check_event_id("ad4f3875-3286-4f9d-83f5-78e7a2662cf6").is_ok());
        assert!(check_event_id("poll:hub:library/nginx:1.25:sha256:ab:push").is_ok());
        assert_eq!(check_event_id("").unwrap_err(), "missing");
        assert!(check_event_id("a\nb").is_err());
        assert!(check_event_id(&"x".repeat(MAX_EVENT_ID_LEN)).is_ok());
        assert!(check_event_id(&"x".repeat(MAX_EVENT_ID_LEN + 1)).is_err());
    }

    #[test]
    fn the_default_skew_is_five_minutes() {
        assert_eq!(
            TimeClamp::default().clamp(i64::MAX, NOW),
            NOW + 5 * 60 * 1000
        );
    }
}
