//! `skopeo` (1.9) as the independent client of the tests: it pushes fixture
//! layouts to registries and reads back what Ferry replicated, so a test never
//! checks Ferry's output with Ferry's own OCI client.
//!
//! Every call runs isolated: a fresh temp dir holds skopeo's temporary files
//! (`TMPDIR`, `--tmpdir`), a signature `policy.json` accepting anything
//! (`--policy`), its XDG config/runtime dirs (so no auth file or per-user
//! `registries.conf` leaks in) and — the important part — its **blob-info
//! cache**. skopeo remembers which registry/repository already holds which blob
//! and uses that for cross-repository mounts; a cache shared between tests
//! would make one test's uploads depend on what another pushed before. skopeo
//! has no flag for the cache location: containers/image puts it in
//! `/var/lib/containers/cache` for euid 0 and in
//! `$XDG_DATA_HOME/containers/cache` otherwise, where "euid" can be overridden
//! with `_CONTAINERS_ROOTLESS_UID` (containers/image `internal/rootless`). So each
//! call sets `_CONTAINERS_ROOTLESS_UID=1000` and `XDG_DATA_HOME=<temp>`, giving
//! it a private, empty cache. A unit test guards that this still holds.
//!
//! Verified against docker-registry 2.8: `copy --all --preserve-digests`
//! pushes raw (non-tar) layers, multi-arch indexes and OCI 1.1 artifacts
//! (`artifactType`, empty config, `subject`) byte for byte, and `inspect --raw`
//! returns bytes hashing to the pushed digest, so no HTTP push fallback is needed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;
use tokio::process::Command;

use crate::fixtures::{sha256_file, REF_NAME_ANNOTATION};

/// Upper bound for one skopeo run (pushes of gigabyte layouts included).
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(600);

/// Pushes `ref_name` from the OCI layout at `layout` to
/// `docker://<host>/<repo_tag>` over plain HTTP, keeping every digest
/// (`copy --all --preserve-digests --dest-tls-verify=false`).
pub async fn push_layout(
    layout: &Path,
    ref_name: &str,
    host: &str,
    repo_tag: &str,
) -> anyhow::Result<()> {
    let layout = layout.to_str().context("layout path is not UTF-8")?;
    anyhow::ensure!(
        !layout.contains(':'),
        "layout path {layout} contains ':', which the oci: transport cannot express"
    );
    run([
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{layout}:{ref_name}"),
        &format!("docker://{host}/{repo_tag}"),
    ])
    .await
    .map(drop)
}

/// The exact manifest bytes `docker://<host>/<reference>` serves, where
/// `reference` is `repo:tag` or `repo@sha256:<hex>`.
pub async fn inspect_raw(host: &str, reference: &str) -> anyhow::Result<Vec<u8>> {
    run([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{host}/{reference}"),
    ])
    .await
}

/// Pulls `docker://<host>/<reference>` with every platform into a temporary
/// OCI layout, then re-hashes every blob file and checks its name is the
/// sha256 of its content (and, for `repo@digest`, that the pulled top-level
/// manifest has that digest). Returns how many blobs were verified.
pub async fn pull_and_verify(host: &str, reference: &str) -> anyhow::Result<usize> {
    let dest = tempfile::Builder::new()
        .prefix("ferry-pull-")
        .tempdir()
        .context("creating the pull destination")?;
    let layout = dest.path().join("layout");
    let layout_str = layout.to_str().context("temp path is not UTF-8")?;
    run([
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        &format!("docker://{host}/{reference}"),
        &format!("oci:{layout_str}:pulled"),
    ])
    .await?;

    let blobs = layout.join("blobs").join("sha256");
    let mut verified = 0;
    for entry in
        std::fs::read_dir(&blobs).with_context(|| format!("listing {}", blobs.display()))?
    {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let actual = sha256_file(&path)?;
        anyhow::ensure!(
            actual == format!("sha256:{name}"),
            "blob {name} pulled from {host}/{reference} has content digest {actual}"
        );
        verified += 1;
    }

    if let Some((_, digest)) = reference.split_once('@') {
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(layout.join("index.json")).context("reading the pulled index.json")?,
        )
        .context("parsing the pulled index.json")?;
        let pulled = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["annotations"][REF_NAME_ANNOTATION] == "pulled")
            .and_then(|d| d["digest"].as_str())
            .context("pulled index.json names no manifest 'pulled'")?;
        anyhow::ensure!(
            pulled == digest,
            "pulled {host}/{reference} but got manifest {pulled}"
        );
    }
    Ok(verified)
}

/// The tags of `docker://<host>/<repo>` (`skopeo list-tags`).
pub async fn tags(host: &str, repo: &str) -> anyhow::Result<Vec<String>> {
    let out = run([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{host}/{repo}"),
    ])
    .await?;
    #[derive(serde::Deserialize)]
    struct TagList {
        #[serde(rename = "Tags")]
        tags: Option<Vec<String>>,
    }
    let list: TagList = serde_json::from_slice(&out).with_context(|| {
        format!(
            "parsing list-tags output: {}",
            String::from_utf8_lossy(&out)
        )
    })?;
    Ok(list.tags.unwrap_or_default())
}

/// `skopeo sync --all --preserve-digests` of the images a YAML source file lists to the plain-HTTP
/// registry `dest_host` (a fresh blob-info cache, as every call here: a cold start for skopeo),
/// given up after `timeout` (a no-op over 10 000 tags takes skopeo about a quarter of an hour).
pub async fn sync_yaml(
    yaml: &std::path::Path,
    dest_host: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    run_within(
        timeout,
        [
            "sync".into(),
            "--all".into(),
            "--preserve-digests".into(),
            "--src".into(),
            "yaml".into(),
            "--dest".into(),
            "docker".into(),
            "--dest-tls-verify=false".into(),
            yaml.as_os_str().to_owned(),
            std::ffi::OsString::from(dest_host),
        ],
    )
    .await
}

/// Runs `skopeo <args>` isolated as described in the module docs, and
/// returns its stdout. A non-zero exit is an error carrying stderr.
/// For what the helpers above do not cover (copies with `--src-creds`…).
pub async fn run<I, S>(args: I) -> anyhow::Result<Vec<u8>>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    run_within(SKOPEO_TIMEOUT, args).await
}

/// [`run`], given up after `timeout` instead of the default 10 minutes.
pub async fn run_within<I, S>(timeout: Duration, args: I) -> anyhow::Result<Vec<u8>>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let iso = Isolation::new()?;
    let mut cmd = iso.command();
    cmd.args(&args);
    let output = tokio::time::timeout(timeout, cmd.output())
        .await
        .with_context(|| format!("`skopeo {shown}` timed out after {timeout:?}"))?
        .with_context(|| format!("spawning `skopeo {shown}` (is skopeo installed?)"))?;
    if !output.status.success() {
        anyhow::bail!(
            "`skopeo {shown}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

/// Deletes skopeo's machine-wide blob-info cache (root's
/// `/var/lib/containers/cache` and the user's
/// `$XDG_DATA_HOME/containers/cache`), for benchmarks that run skopeo (or
/// other containers/image tools) outside [`run`] and want a cold start.
/// Missing files are fine.
pub fn wipe_blob_info_cache() -> anyhow::Result<()> {
    let mut dirs = vec![PathBuf::from("/var/lib/containers/cache")];
    if let Some(data) = std::env::var_os("XDG_DATA_HOME") {
        dirs.push(PathBuf::from(data).join("containers/cache"));
    } else if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".local/share/containers/cache"));
    }
    for dir in dirs {
        // boltdb in skopeo 1.9; newer containers/image uses sqlite.
        for name in ["blob-info-cache-v1.boltdb", "blob-info-cache-v1.sqlite"] {
            let path = dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
        }
    }
    Ok(())
}

/// A private directory tree for one skopeo run.
struct Isolation {
    dir: TempDir,
}

impl Isolation {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-skopeo-")
            .tempdir()
            .context("creating skopeo's temp dir")?;
        for sub in ["tmp", "data", "config", "run"] {
            std::fs::create_dir(dir.path().join(sub))
                .with_context(|| format!("creating skopeo's {sub} dir"))?;
        }
        std::fs::write(
            dir.path().join("policy.json"),
            br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .context("writing skopeo's policy.json")?;
        Ok(Isolation { dir })
    }

    fn command(&self) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new("skopeo");
        cmd.arg("--policy")
            .arg(d.join("policy.json"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .env("TMPDIR", d.join("tmp"))
            .env("XDG_DATA_HOME", d.join("data"))
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("XDG_RUNTIME_DIR", d.join("run"))
            .env("_CONTAINERS_ROOTLESS_UID", "1000")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    #[cfg(test)]
    fn cache_file(&self) -> PathBuf {
        self.dir
            .path()
            .join("data/containers/cache/blob-info-cache-v1.boltdb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the env-variable trick of the module docs: if skopeo stops
    /// honouring it, the blob-info cache is shared again and this fails.
    #[tokio::test]
    async fn blob_info_cache_is_private() {
        let layout_dir = tempfile::tempdir().unwrap();
        let mut b = crate::LayoutBuilder::new(layout_dir.path()).unwrap();
        b.image("x", &[crate::LayerSpec { seed: 1, size: 64 }])
            .unwrap();
        let layout = b.finish().unwrap();
        let dest = tempfile::tempdir().unwrap();

        let iso = Isolation::new().unwrap();
        let mut cmd = iso.command();
        cmd.args(["copy", "--all", "--preserve-digests"])
            .arg(format!("oci:{}:x", layout.display()))
            .arg(format!("oci:{}:y", dest.path().display()));
        let out = cmd.output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            iso.cache_file().exists(),
            "skopeo wrote its blob-info cache elsewhere"
        );
    }

    #[tokio::test]
    async fn errors_carry_stderr() {
        let err = run(["inspect", "--raw", "oci:/nonexistent/ferry-testkit:x"])
            .await
            .unwrap_err()
            .to_string();
        // Words only skopeo's own stderr holds (the command line is echoed too, so its
        // arguments prove nothing).
        assert!(err.contains("exit status: 1"), "{err}");
        assert!(err.contains("Error parsing image name"), "{err}");
    }
}
