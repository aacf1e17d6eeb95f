//! The wall clock as Ferry stores it: Unix milliseconds in `i64` fields, and RFC 3339 text at the
//! edges (registry event timestamps in, times shown to operators out), both through `chrono`.
//!
//! Invariants: nothing here panics, whatever the clock or the input says; a time before 1970 reads
//! as 0 from [`now_ms`]; durations saturate at `i64::MAX` milliseconds; parsing truncates to the
//! millisecond (distribution sends nanoseconds).
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat};

/// Current time in Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ms)
}

/// A duration in whole milliseconds as stored in Unix-ms fields (saturating).
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Unix milliseconds of an RFC 3339 date-time (`2024-05-01T12:34:56.123456789Z`,
/// `2024-05-01T14:34:56+02:00`; Go's `time.Time` marshals to exactly this form, which is what
/// distribution sends), or `None` if `s` is not one. Sub-millisecond digits are truncated; a leap
/// second (`:60`) counts as the next second's start.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    // chrono also reads a few forms RFC 3339 does not have; keep to the strict grammar: an offset
    // is `Z` or `±hh:mm`, and a `.` has digits after it.
    let b = s.as_bytes();
    let offset_ok = match b.last()? {
        b'Z' | b'z' => true,
        _ => b.len() >= 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':',
    };
    if !offset_ok || s.contains(".Z") || s.contains(".z") || s.contains(".+") || s.contains(".-") {
        return None;
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// `ms` as UTC RFC 3339 with second precision (`2024-05-01T12:34:56Z`); a time chrono cannot
/// represent (beyond ±262 000 years) is shown as its raw milliseconds.
pub fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms}ms since 1970"),
        |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

#[cfg(test)]
mod tests {
    use super::{parse_rfc3339_ms as parse_ms, rfc3339};

    #[test]
    fn distribution_and_offset_timestamps_parse_to_unix_milliseconds() {
        assert_eq!(parse_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        // `date -u -d 2026-11-23T11:36:33Z +%s` = 1795433793
        assert_eq!(
            parse_ms("2026-11-23T11:36:33.776681309Z"),
            Some(1_795_433_793_776)
        );
        assert_eq!(
            parse_ms("2026-11-23T13:36:33.776+02:00"),
            Some(1_795_433_793_776)
        );
        assert_eq!(
            parse_ms("2026-11-23T10:06:33.776-01:30"),
            Some(1_795_433_793_776)
        );
        assert_eq!(parse_ms("2000-02-29T00:00:00z"), Some(951_782_400_000));
        assert_eq!(parse_ms("1969-12-31T23:59:59Z"), Some(-1000));
    }

    #[test]
    fn anything_but_a_strict_rfc3339_date_time_is_refused() {
        for s in [
            "",
            "2024-01-01",
            "2024-01-01T00:00:00",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+0100",
            "2024-01-01T00:00:00Zjunk",
            "2024-01-01X00:00:00Z",
            "２０２４-01-01T00:00:00Z",
            "2024-01-01T00:00:00+99:00",
        ] {
            assert_eq!(parse_ms(s), None, "{s}");
        }
    }

    #[test]
    fn times_are_shown_in_utc_to_the_second() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_714_566_896_123), "2024-05-01T12:34:56Z");
        assert_eq!(rfc3339(-1000), "1969-12-31T23:59:59Z");
        rfc3339(i64::MAX);
        rfc3339(i64::MIN);
    }
}
