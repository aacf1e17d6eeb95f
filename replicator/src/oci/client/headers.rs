//! The headers a registry controls, parsed: `Retry-After`, an upload's `Range`, a `206`'s
//! `Content-Range`, a `Link`'s `rel="next"` and the `RateLimit-*` quota.
//!
//! Invariants: parsing is pure and never panics or overflows whatever a registry sends (fuzzed by
//! `fuzz/fuzz_targets/registry_headers.rs`); what it accepts is consistent (a `Content-Range`'s
//! first byte is never after its last, nor its last beyond its total); an unreadable value is an
//! error naming why, never a guess.
use std::time::{Duration, SystemTime};

/// A registry's announced request quota (Docker Hub: `RateLimit-Remaining: 76;w=21600`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: Option<u64>,
    pub remaining: u64,
}

impl RateLimit {
    /// From response headers; `None` when the registry sends no (readable) `RateLimit-Remaining`.
    pub fn from_headers(headers: &reqwest::header::HeaderMap) -> Option<RateLimit> {
        let count = |name: &str| {
            let v = headers.get(name)?.to_str().ok()?;
            v.split(';').next()?.trim().parse::<u64>().ok()
        };
        Some(RateLimit {
            remaining: count("ratelimit-remaining")?,
            limit: count("ratelimit-limit"),
        })
    }
}

/// `Retry-After`: delta seconds or an HTTP-date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A decimal byte position: digits only (no sign, no spaces inside), within `u64`.
fn parse_position(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a byte position"));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is out of range for a byte position"))
}

/// The `Range` of an upload answer (`0-1048575`, optionally `bytes=0-1048575`) → the next offset
/// the upload expects (1048576). Upload ranges always start at 0. `0-0` reads as 0 bytes: it is
/// what distribution sends for an empty session (it would also be its answer after exactly one
/// byte, which chunk sizes of 64 KiB and more never leave).
pub fn parse_upload_range(value: &str) -> Result<u64, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err("missing".to_string());
    }
    let v = v.strip_prefix("bytes=").unwrap_or(v);
    let (start, end) = v
        .split_once('-')
        .ok_or_else(|| "no '-' between first and last byte".to_string())?;
    let (start, end) = (parse_position(start)?, parse_position(end)?);
    if start != 0 {
        return Err(format!("an upload range starts at 0, this one at {start}"));
    }
    if end == 0 {
        return Ok(0);
    }
    end.checked_add(1)
        .ok_or_else(|| "last byte position overflows".to_string())
}

/// A `206` answer's `Content-Range: bytes <first>-<last>/<total or *>` → (first, last, total).
pub fn parse_content_range(value: &str) -> Result<(u64, u64, Option<u64>), String> {
    let v = value.trim();
    if v.is_empty() {
        return Err("missing from a 206 answer".to_string());
    }
    let v = v
        .strip_prefix("bytes ")
        .ok_or_else(|| "does not start with \"bytes \"".to_string())?;
    let (range, total) = v
        .split_once('/')
        .ok_or_else(|| "no '/' before the total length".to_string())?;
    let (first, last) = range
        .split_once('-')
        .ok_or_else(|| "no '-' between first and last byte".to_string())?;
    let (first, last) = (parse_position(first)?, parse_position(last)?);
    if last < first {
        return Err(format!("last byte {last} is before first byte {first}"));
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(parse_position(t)?),
    };
    if total.is_some_and(|t| last >= t) {
        return Err(format!("last byte {last} is beyond the total length"));
    }
    Ok((first, last, total))
}

/// The `rel="next"` target of a `Link` header.
pub fn parse_next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let part = part.trim();
        let (target, params) = part.split_once(';')?;
        if params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        }) {
            Some(
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string(),
            )
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn next_link_forms() {
        assert_eq!(
            parse_next_link(r#"</v2/_catalog?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/_catalog?last=b&n=2")
        );
        assert_eq!(
            parse_next_link(r#"<https://x/v2/a/tags/list?n=1&last=v1>; rel=next"#).as_deref(),
            Some("https://x/v2/a/tags/list?n=1&last=v1")
        );
        assert_eq!(parse_next_link(r#"</x>; rel="prev""#), None);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&future).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn upload_ranges() {
        assert_eq!(parse_upload_range("0-1048575"), Ok(1_048_576));
        assert_eq!(parse_upload_range(" 0-1023 "), Ok(1024));
        assert_eq!(parse_upload_range("0-0"), Ok(0));
        assert_eq!(parse_upload_range("bytes=0-9"), Ok(10));
        for (bad, why) in [
            ("", "missing"),
            ("junk", "no '-'"),
            ("0-", "not a byte position"),
            ("-5", "not a byte position"),
            ("0-x", "not a byte position"),
            ("0-+5", "not a byte position"),
            ("0--5", "not a byte position"),
            ("5-10", "this one at 5"),
            ("0-99999999999999999999", "out of range"),
            ("0-18446744073709551615", "overflows"),
        ] {
            let e = parse_upload_range(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Ok((100, 199, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Ok((0, 0, None)));
        for (bad, why) in [
            ("", "missing"),
            ("100-199/1000", "\"bytes \""),
            ("bytes 100-199", "no '/'"),
            ("bytes 100/1000", "no '-'"),
            ("bytes 199-100/1000", "before first"),
            ("bytes 100-1000/1000", "beyond"),
            ("bytes a-b/1000", "not a byte position"),
            ("bytes 1-2/x", "not a byte position"),
        ] {
            let e = parse_content_range(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
