//! An OCI image layout's `index.json` and export record (`ferry import`, `ferry export --since`):
//! parsing never panics, and an index that parses is written back to bytes that parse to the same
//! entries.
#![no_main]
use ferry_replicator::layout::{ExportRecord, Index};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(index) = Index::parse("fuzz", bytes) {
        let again = Index::parse("fuzz", &index.to_bytes()).expect("a written index parses");
        let mut a = index.entries.clone();
        let mut b = again.entries.clone();
        a.sort_by_key(|e| format!("{e:?}"));
        a.dedup();
        b.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(a, b);
    }
    let _ = ExportRecord::parse("fuzz", bytes);
});
