//! Headers a registry (or its token server) controls: `WWW-Authenticate` challenges and
//! `RateLimit-*` quotas. Parsing never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = ferry_replicator::oci::auth::parse_challenge(text);
    }
    if let Ok(value) = reqwest::header::HeaderValue::from_bytes(input) {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("ratelimit-remaining", value.clone());
        headers.insert("ratelimit-limit", value);
        let _ = ferry_replicator::oci::client::RateLimit::from_headers(&headers);
    }
});
