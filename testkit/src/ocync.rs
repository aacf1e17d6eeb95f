//! ocync (a Rust registry sync tool), the peer the benchmarks measure Ferry against: it is not
//! packaged, so a benchmark runs it only when given the path of a build (`--ocync PATH`; the
//! README says how it was built here). Its `sync` speaks HTTPS only: the registries must serve TLS.
use anyhow::Context as _;
use std::path::Path;

use crate::measure::{run_measured, Measured};
use crate::Registry;

/// `ocync sync` of `repositories` (every tag) from `src` to `dst`, anonymous on both sides, with an
/// empty cache of its own under `dir`, trusting both registries' CAs (`SSL_CERT_FILE`, which its
/// platform verifier reads on Linux); its wall time, peak RSS and CPU.
pub async fn sync<'a>(
    ocync: &Path,
    dir: &Path,
    repositories: impl IntoIterator<Item = &'a str>,
    src: &Registry,
    dst: &Registry,
) -> anyhow::Result<Measured> {
    let cache = dir.join("ocync-cache");
    let mut yaml = format!(
        "global:\n  cache_dir: {}\nregistries:\n  src:\n    url: {}\n    auth_type: anonymous\n  dst:\n    url: {}\n    auth_type: anonymous\ndefaults:\n  source: src\n  targets: dst\n  tags:\n    glob: \"*\"\nmappings:\n",
        cache.display(),
        src.url(),
        dst.url()
    );
    for r in repositories {
        yaml.push_str(&format!("  - from: {r}\n    to: {r}\n"));
    }
    let cfg = dir.join("ocync.yaml");
    std::fs::write(&cfg, yaml)?;
    let bundle = dir.join("ocync-cas.pem");
    let mut pem = Vec::new();
    for r in [src, dst] {
        pem.extend(std::fs::read(r.ca_path().context(
            "ocync needs TLS registries: start them with tls: true",
        )?)?);
    }
    std::fs::write(&bundle, pem)?;
    let mut cmd = tokio::process::Command::new(ocync);
    cmd.args(["sync", "-c"])
        .arg(&cfg)
        .env("HOME", dir)
        .env("SSL_CERT_FILE", &bundle);
    run_measured(&mut cmd)
        .await
        .with_context(|| format!("ocync sync ({})", ocync.display()))
}
