//! A CNCF distribution notification body, as any client of the webhook listener can send it:
//! parsing never panics, and every event it accepts names a repository of the strict grammar.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(batch) = ferry_replicator::ingest::distribution::parse(body, "fuzz") {
        for event in &batch.events {
            assert!(!event.repository.is_empty());
        }
    }
});
