//! Times and durations as people read them in tables: `5m ago`, `2024-05-01T12:34:56Z (5m ago)`,
//! `4m05s`. Times on the wire are Unix milliseconds, 0 meaning "not set".
//!
//! Invariant: total: every i64/u64 prints, and "not set" prints `-`. The clock is the library's
//! (`clock::now_ms`) and dates are `clock::rfc3339` (chrono): the CLI keeps no clock or calendar of
//! its own.

use ferry_replicator::clock::{now_ms, rfc3339};

/// `12s ago`, `5m ago`, `3h ago`, `2d ago` (`-` for 0, "not set").
pub fn ago(ms: i64) -> String {
    ago_at(ms, now_ms())
}

/// [`ago`] seen at `now`.
fn ago_at(ms: i64, now: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        s if s < 0 => format!("in {}", duration_ms(s.unsigned_abs().saturating_mul(1000))),
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// `2024-05-01T12:34:56Z (5m ago)`, `-` for 0.
pub fn when(ms: i64) -> String {
    if ms == 0 {
        "-".into()
    } else {
        format!("{} ({})", rfc3339(ms), ago(ms))
    }
}

/// From `start` to `end` (to now while `end` is 0); `-` when it never started.
pub fn span(start: i64, end: i64) -> String {
    if start == 0 {
        return "-".into();
    }
    let end = if end == 0 { now_ms() } else { end };
    duration_ms(end.saturating_sub(start).max(0).unsigned_abs())
}

/// `850ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`.
pub fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        ms if ms < 1000 => format!("{ms}ms"),
        ms if ms < 60_000 => format!("{}.{}s", s, (ms % 1000) / 100),
        _ if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_past_time_reads_in_its_largest_whole_unit_and_a_future_one_as_a_duration() {
        let now = 1_714_566_896_000;
        assert_eq!(ago_at(0, now), "-");
        assert_eq!(ago_at(now - 12_000, now), "12s ago");
        assert_eq!(ago_at(now - 300_000, now), "5m ago");
        assert_eq!(ago_at(now - 3 * 3_600_000, now), "3h ago");
        assert_eq!(ago_at(now - 2 * 86_400_000, now), "2d ago");
        assert_eq!(ago_at(now + 90_000, now), "in 1m30s");
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms(850), "850ms");
        assert_eq!(duration_ms(12_345), "12.3s");
        assert_eq!(duration_ms(245_000), "4m05s");
        assert!(duration_ms(u64::MAX).ends_with('h'));
    }
}
