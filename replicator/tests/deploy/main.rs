//! The shipped deployment files (`deploy/`), each tried with the real tool that consumes it:
//! the Kubernetes overlays rendered by `kubectl kustomize` ([`kubernetes`]), the queue's manifest
//! and URLs against a real `valkey-server` ([`redis`]), the systemd units checked by
//! `systemd-analyze` ([`systemd`]). One test binary: they share the file helpers below.

mod kubernetes;
mod redis;
mod systemd;

use std::path::{Path, PathBuf};

/// `deploy/<path>` in this checkout.
pub fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// The text of `deploy/<path>`.
pub fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("read deploy/{path}: {e}"))
}
