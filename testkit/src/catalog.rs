//! Large catalogs of tiny images, written straight into distribution's filesystem storage, so a
//! scale benchmark can have 100 000 tags in seconds instead of hours of pushes.
//!
//! Every tag is its own image: one shared 1 KiB layer (uncompressed tar media type, so its diff id
//! is its digest) and a config naming the repository and tag, hence a distinct manifest digest per
//! tag. The files are exactly what `docker-registry` 2.8 writes for a push
//! (`docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data`, and under
//! `docker/registry/v2/repositories/<name>/` the `_layers`, `_manifests/revisions` and
//! `_manifests/tags/<tag>/{current,index}` links), so the registry serves them as if pushed:
//! catalog, tag lists, `HEAD`/`GET` of manifests and blobs. Write into a registry's
//! [`crate::Registry::data_dir`] before anything reads it (its blob descriptor cache is empty
//! then); [`seed_catalog`] is deterministic, so two registries seeded alike hold the same digests.
use std::path::Path;

use anyhow::Context;
use serde_json::json;

use crate::fixtures::sha256_digest;

/// What [`seed_catalog`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeded {
    pub repositories: usize,
    pub tags: usize,
    /// Bytes of blob files written (layer, configs and manifests).
    pub bytes: u64,
}

/// The repository names of a seeded catalog: `scale/r00000` …
pub fn repository(index: usize) -> String {
    format!("scale/r{index:05}")
}

/// The tag names of each repository: `t0000` …
pub fn tag(index: usize) -> String {
    format!("t{index:04}")
}

/// Writes `repositories` × `tags_per_repository` tiny images into the filesystem storage rooted at
/// `root` (distribution's `storage.filesystem.rootdirectory`).
pub fn seed_catalog(
    root: &Path,
    repositories: usize,
    tags_per_repository: usize,
) -> anyhow::Result<Seeded> {
    let v2 = root.join("docker/registry/v2");
    let mut bytes = 0u64;
    let layer: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    let layer_digest = sha256_digest(&layer);
    bytes += write_blob(&v2, &layer_digest, &layer)?;
    for r in 0..repositories {
        let repo = repository(r);
        let repo_dir = v2.join("repositories").join(&repo);
        link(&repo_dir.join("_layers"), &layer_digest)?;
        for t in 0..tags_per_repository {
            let tag = tag(t);
            let config = serde_json::to_vec(&json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"dev.ferry.scale": format!("{repo}:{tag}")}},
                "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            }))?;
            let config_digest = sha256_digest(&config);
            bytes += write_blob(&v2, &config_digest, &config)?;
            link(&repo_dir.join("_layers"), &config_digest)?;
            let manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
            }))?;
            let manifest_digest = sha256_digest(&manifest);
            bytes += write_blob(&v2, &manifest_digest, &manifest)?;
            link(&repo_dir.join("_manifests/revisions"), &manifest_digest)?;
            let tag_dir = repo_dir.join("_manifests/tags").join(&tag);
            write_link(&tag_dir.join("current/link"), &manifest_digest)?;
            link(&tag_dir.join("index"), &manifest_digest)?;
        }
    }
    Ok(Seeded {
        repositories,
        tags: repositories * tags_per_repository,
        bytes,
    })
}

/// `blobs/sha256/<2 hex>/<hex>/data`; returns the bytes written.
fn write_blob(v2: &Path, digest: &str, bytes: &[u8]) -> anyhow::Result<u64> {
    let hex = digest.trim_start_matches("sha256:");
    let dir = v2.join("blobs/sha256").join(&hex[..2]).join(hex);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("data"), bytes)?;
    Ok(bytes.len() as u64)
}

/// `<dir>/sha256/<hex>/link` holding `digest`.
fn link(dir: &Path, digest: &str) -> anyhow::Result<()> {
    let hex = digest.trim_start_matches("sha256:");
    write_link(&dir.join("sha256").join(hex).join("link"), digest)
}

fn write_link(path: &Path, digest: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, digest).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_seeded_catalog_is_served_by_a_real_registry_as_if_pushed() {
        let registry = crate::Registry::start().await.unwrap();
        let seeded = seed_catalog(registry.data_dir(), 3, 4).unwrap();
        assert_eq!(seeded.tags, 12);
        let mut tags = crate::skopeo::tags(&registry.host(), &repository(2))
            .await
            .unwrap();
        tags.sort();
        assert_eq!(tags, ["t0000", "t0001", "t0002", "t0003"]);
        // skopeo pulls it, re-hashing every blob.
        crate::skopeo::pull_and_verify(&registry.host(), &format!("{}:t0003", repository(1)))
            .await
            .unwrap();
        let a = crate::skopeo::inspect_raw(&registry.host(), &format!("{}:t0000", repository(0)))
            .await
            .unwrap();
        let b = crate::skopeo::inspect_raw(&registry.host(), &format!("{}:t0001", repository(0)))
            .await
            .unwrap();
        assert_ne!(
            sha256_digest(&a),
            sha256_digest(&b),
            "every tag is its own image"
        );
    }
}
