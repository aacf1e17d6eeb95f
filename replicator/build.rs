//! Turns the conformance suite's optional backend on or off at build time.
//!
//! `tests/queue_conformance.rs` runs its `other_server` cases only when the operator names a
//! server: `FERRY_CONFORMANCE_SERVER` (a Redis-protocol server binary the harness starts, as it
//! starts `redis-server`) or `FERRY_CONFORMANCE_URL` (a server already running). Whether a case is
//! `#[ignore]`d must be known when the test is compiled, so this script sets a `cfg` per variable
//! and cargo rebuilds when either changes. Without them those cases are ignored — listed as
//! skipped, never run as an empty pass.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ferry_conformance_server)");
    println!("cargo::rustc-check-cfg=cfg(ferry_conformance_url)");
    for (var, cfg) in [
        ("FERRY_CONFORMANCE_SERVER", "ferry_conformance_server"),
        ("FERRY_CONFORMANCE_URL", "ferry_conformance_url"),
    ] {
        println!("cargo::rerun-if-env-changed={var}");
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
