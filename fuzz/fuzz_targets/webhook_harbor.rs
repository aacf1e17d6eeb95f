//! A Harbor webhook body (Default or CloudEvents format): parsing never panics, and every event
//! it accepts names a repository.
#![no_main]
use ferry_replicator::ingest::harbor::{parse, HarborOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let options = HarborOptions {
        ignore_operator: Some("robot$ferry".into()),
    };
    if let Ok(batch) = parse(body, "fuzz", &options) {
        for event in &batch.events {
            assert!(!event.repository.is_empty());
        }
    }
});
