//! A config file or policy document (also what `ferry admin policies apply` sends): loading and
//! validation never panic, and a document that loads validates without problems.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|document: &[u8]| {
    if let Ok(config) = ferry_replicator::config::Config::from_slice(document, "fuzz") {
        assert!(config.validate().is_empty());
    }
});
