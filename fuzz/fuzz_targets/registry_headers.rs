//! Headers a registry (or its token server) controls: `WWW-Authenticate` challenges, `Link`
//! pagination, `Retry-After`, upload `Range`, `Content-Range` and `RateLimit-*` quotas. Parsing
//! never panics, and what it accepts is consistent.
#![no_main]
use ferry_replicator::oci::{auth, client};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = auth::parse_challenge(text);
        let _ = client::parse_next_link(text);
        if let Some(wait) = client::parse_retry_after(text) {
            let _ = std::time::Instant::now().checked_add(wait);
        }
        let _ = client::parse_upload_range(text);
        if let Ok((first, last, total)) = client::parse_content_range(text) {
            assert!(first <= last, "{text:?} gave a backwards range");
            if let Some(total) = total {
                assert!(last < total, "{text:?} ends past its total");
            }
        }
    }
    if let Ok(value) = reqwest::header::HeaderValue::from_bytes(input) {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("ratelimit-remaining", value.clone());
        headers.insert("ratelimit-limit", value);
        let _ = client::RateLimit::from_headers(&headers);
    }
});
