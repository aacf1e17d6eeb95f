//! OCI image layouts generated in Rust: images, multi-arch indexes and OCI 1.1
//! artifacts, written as `oci-layout`, `index.json` and `blobs/sha256/<hex>`
//! so that `skopeo copy oci:DIR:REF …` can push them.
//!
//! Invariants:
//! - Layer content is a function of [`LayerSpec`] alone (a ChaCha8 stream
//!   seeded with `seed`, truncated to `size`), so the same spec always gives
//!   the same digest: that is how fixtures share base layers across images,
//!   repositories and test runs. Layers are streamed to disk in 1 MiB chunks
//!   while hashed, so a 1 GiB layer takes seconds and constant memory.
//! - Every manifest and config is serialized once, and those exact bytes are
//!   both hashed and written, so a descriptor's digest is the digest of the
//!   file on disk (and of what a registry serves after a digest-preserving push).
//! - Layers are raw random bytes with media type
//!   `application/vnd.oci.image.layer.v1.tar`: registries do not look inside,
//!   and since they are "uncompressed", `rootfs.diff_ids` equal layer digests.
//! - Content is deterministic: two images with the same platform and layers
//!   have the same digest, whatever their `ref_name`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rand::{RngCore as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Media types the fixtures write.
pub mod media_types {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
}

/// Digest of the OCI empty descriptor's content `{}`.
pub const EMPTY_JSON_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// The annotation by which `index.json` names an image for `oci:DIR:REF`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

const CHUNK: usize = 1 << 20;

/// A content descriptor: what a manifest says about a blob it references.
/// Serializes as an OCI descriptor (`mediaType`, `digest`, `size`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Blob {
    /// `sha256:<hex>` of the exact bytes.
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

impl Blob {
    /// The hex part of the digest (the file name under `blobs/sha256/`).
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }
}

/// A generated layer: `size` bytes from a ChaCha8 stream seeded with `seed`.
/// Equal specs give equal bytes, hence equal digests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LayerSpec {
    pub seed: u64,
    pub size: u64,
}

/// A descriptor as it appears inside a manifest, index or `index.json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, &'a str>,
}

impl<'a> Descriptor<'a> {
    fn of(blob: &'a Blob) -> Self {
        Descriptor {
            media_type: &blob.media_type,
            digest: &blob.digest,
            size: blob.size,
            platform: None,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }
}

#[derive(Serialize)]
struct Platform<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'a str>,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Descriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageIndex<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
struct ImageConfig<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    config: serde_json::Map<String, serde_json::Value>,
    rootfs: RootFs<'a>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: Vec<&'a str>,
}

/// Writes an OCI image layout into a directory.
///
/// Blobs are written as they are created; `index.json` is written by
/// [`LayoutBuilder::finish`] and lists every tagged manifest (a later entry
/// with the same `ref_name` replaces an earlier one).
pub struct LayoutBuilder {
    dir: PathBuf,
    /// `index.json` entries: (ref name, manifest descriptor).
    refs: Vec<(String, Blob)>,
    /// Layers already generated by this builder, so shared layers are made once.
    layers: HashMap<LayerSpec, Blob>,
}

impl LayoutBuilder {
    /// Creates `dir` (if needed), `dir/blobs/sha256` and `dir/oci-layout`.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        let marker = dir.join("oci-layout");
        std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .with_context(|| format!("writing {}", marker.display()))?;
        Ok(LayoutBuilder {
            dir: dir.to_path_buf(),
            refs: Vec::new(),
            layers: HashMap::new(),
        })
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the blob file for `digest` (`sha256:<hex>`) in this layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.dir, digest)
    }

    /// Writes `bytes` as a blob (once; an existing blob is left alone).
    pub fn write_blob(&mut self, media_type: &str, bytes: &[u8]) -> anyhow::Result<Blob> {
        let blob = Blob {
            digest: sha256_digest(bytes),
            size: bytes.len() as u64,
            media_type: media_type.to_owned(),
        };
        let path = self.blob_path(&blob.digest);
        if !path.exists() {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("renaming to {}", path.display()))?;
        }
        Ok(blob)
    }

    /// Generates (or reuses) the layer blob for `spec`, streaming it to disk.
    pub fn layer(&mut self, spec: &LayerSpec) -> anyhow::Result<Blob> {
        if let Some(blob) = self.layers.get(spec) {
            return Ok(blob.clone());
        }
        let tmp = self
            .dir
            .join("blobs")
            .join("sha256")
            .join(format!("layer-{}-{}.tmp", spec.seed, spec.size));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = BufWriter::with_capacity(CHUNK, file);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut left = spec.size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            let chunk = &mut buf[..n];
            rng.fill_bytes(chunk);
            hasher.update(&*chunk);
            out.write_all(chunk)
                .with_context(|| format!("writing {}", tmp.display()))?;
            left -= n as u64;
        }
        out.flush()
            .with_context(|| format!("flushing {}", tmp.display()))?;
        drop(out);
        let blob = Blob {
            digest: format!("sha256:{}", hex::encode(hasher.finalize())),
            size: spec.size,
            media_type: media_types::OCI_LAYER_TAR.to_owned(),
        };
        let path = self.blob_path(&blob.digest);
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        self.layers.insert(*spec, blob.clone());
        Ok(blob)
    }

    /// A linux/amd64 image manifest with `layers`, tagged `ref_name` in `index.json`.
    pub fn image(&mut self, ref_name: &str, layers: &[LayerSpec]) -> anyhow::Result<Blob> {
        let blob = self.image_for_platform("linux", "amd64", None, layers)?;
        self.tag(ref_name, &blob);
        Ok(blob)
    }

    /// An image manifest for one platform (its config names `os`, `arch`,
    /// `variant`), not added to `index.json`: use it as an [`LayoutBuilder::index`] child.
    pub fn image_for_platform(
        &mut self,
        os: &str,
        arch: &str,
        variant: Option<&str>,
        layers: &[LayerSpec],
    ) -> anyhow::Result<Blob> {
        let layer_blobs = layers
            .iter()
            .map(|spec| self.layer(spec))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let config = ImageConfig {
            architecture: arch,
            os,
            variant,
            config: serde_json::Map::new(),
            rootfs: RootFs {
                kind: "layers",
                // Layers are uncompressed, so each diff ID is the layer digest.
                diff_ids: layer_blobs.iter().map(|b| b.digest.as_str()).collect(),
            },
        };
        let config_bytes = serde_json::to_vec(&config).context("serializing image config")?;
        let config_blob = self.write_blob(media_types::OCI_CONFIG, &config_bytes)?;
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: media_types::OCI_MANIFEST,
            artifact_type: None,
            config: Descriptor::of(&config_blob),
            layers: layer_blobs.iter().map(Descriptor::of).collect(),
            subject: None,
        };
        let bytes = serde_json::to_vec(&manifest).context("serializing image manifest")?;
        self.write_blob(media_types::OCI_MANIFEST, &bytes)
    }

    /// An OCI image index over `children` (manifest, os, arch, variant),
    /// tagged `ref_name` in `index.json`.
    pub fn index(
        &mut self,
        ref_name: &str,
        children: &[(Blob, &str, &str, Option<&str>)],
    ) -> anyhow::Result<Blob> {
        let index = ImageIndex {
            schema_version: 2,
            media_type: media_types::OCI_INDEX,
            manifests: children
                .iter()
                .map(|(blob, os, arch, variant)| Descriptor {
                    platform: Some(Platform {
                        architecture: arch,
                        os,
                        variant: *variant,
                    }),
                    ..Descriptor::of(blob)
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&index).context("serializing image index")?;
        let blob = self.write_blob(media_types::OCI_INDEX, &bytes)?;
        self.tag(ref_name, &blob);
        Ok(blob)
    }

    /// A non-image artifact: an OCI 1.1 image manifest with `artifactType`,
    /// the empty config (`{}`), one layer holding `payload`, and optionally a
    /// `subject` (the manifest it refers to, e.g. the image an SBOM describes).
    /// Tagged `ref_name` in `index.json`.
    pub fn artifact(
        &mut self,
        ref_name: &str,
        artifact_type: &str,
        payload: &[u8],
        payload_media_type: &str,
        subject: Option<&Blob>,
    ) -> anyhow::Result<Blob> {
        let empty = self.write_blob(media_types::OCI_EMPTY, b"{}")?;
        debug_assert_eq!(empty.digest, EMPTY_JSON_DIGEST);
        let layer = self.write_blob(payload_media_type, payload)?;
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: media_types::OCI_MANIFEST,
            artifact_type: Some(artifact_type),
            config: Descriptor::of(&empty),
            layers: vec![Descriptor::of(&layer)],
            subject: subject.map(Descriptor::of),
        };
        let bytes = serde_json::to_vec(&manifest).context("serializing artifact manifest")?;
        let blob = self.write_blob(media_types::OCI_MANIFEST, &bytes)?;
        self.tag(ref_name, &blob);
        Ok(blob)
    }

    /// A manifest written as given (e.g. a cosign signature manifest, a referrers fallback index),
    /// tagged `ref_name` in `index.json`; its blobs must be written already.
    pub fn raw_manifest(
        &mut self,
        ref_name: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> anyhow::Result<Blob> {
        let blob = self.write_blob(media_type, bytes)?;
        self.tag(ref_name, &blob);
        Ok(blob)
    }

    /// Names `manifest` `ref_name` in `index.json` (replacing an earlier entry).
    pub fn tag(&mut self, ref_name: &str, manifest: &Blob) {
        self.refs.retain(|(name, _)| name != ref_name);
        self.refs.push((ref_name.to_owned(), manifest.clone()));
    }

    /// Writes `index.json` and returns the layout directory.
    pub fn finish(self) -> anyhow::Result<PathBuf> {
        let index = ImageIndex {
            schema_version: 2,
            media_type: media_types::OCI_INDEX,
            manifests: self
                .refs
                .iter()
                .map(|(name, blob)| Descriptor {
                    annotations: BTreeMap::from([(REF_NAME_ANNOTATION, name.as_str())]),
                    ..Descriptor::of(blob)
                })
                .collect(),
        };
        let path = self.dir.join("index.json");
        let bytes = serde_json::to_vec(&index).context("serializing index.json")?;
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(self.dir)
    }
}

/// `blobs/sha256/<hex>` under the layout `dir`.
pub fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    dir.join("blobs").join("sha256").join(hex)
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `sha256:<hex>` of a file's content, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_json(path: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn empty_json_digest_matches_spec() {
        assert_eq!(sha256_digest(b"{}"), EMPTY_JSON_DIGEST);
    }

    #[test]
    fn same_spec_same_digest_across_builders() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let spec = LayerSpec {
            seed: 7,
            size: 3 * CHUNK as u64 + 17,
        };
        let la = LayoutBuilder::new(a.path()).unwrap().layer(&spec).unwrap();
        let lb = LayoutBuilder::new(b.path()).unwrap().layer(&spec).unwrap();
        assert_eq!(la, lb);
        assert_eq!(la.size, spec.size);
        let other = LayoutBuilder::new(b.path())
            .unwrap()
            .layer(&LayerSpec { seed: 8, ..spec })
            .unwrap();
        assert_ne!(la.digest, other.digest);
        assert_eq!(
            sha256_file(&blob_path(a.path(), &la.digest)).unwrap(),
            la.digest
        );
    }

    #[test]
    fn zero_sized_layer_is_the_empty_digest() {
        let dir = tempfile::tempdir().unwrap();
        let blob = LayoutBuilder::new(dir.path())
            .unwrap()
            .layer(&LayerSpec { seed: 1, size: 0 })
            .unwrap();
        assert_eq!(blob.digest, sha256_digest(b""));
    }

    #[test]
    fn layout_files_hash_to_their_names_and_index_lists_refs() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = LayoutBuilder::new(dir.path()).unwrap();
        let base = LayerSpec {
            seed: 1,
            size: 1000,
        };
        let img = b
            .image("img", &[base, LayerSpec { seed: 2, size: 10 }])
            .unwrap();
        let amd = b
            .image_for_platform("linux", "amd64", None, &[base])
            .unwrap();
        let arm = b
            .image_for_platform("linux", "arm64", Some("v8"), &[base])
            .unwrap();
        let idx = b
            .index(
                "multi",
                &[
                    (amd.clone(), "linux", "amd64", None),
                    (arm, "linux", "arm64", Some("v8")),
                ],
            )
            .unwrap();
        let art = b
            .artifact(
                "sbom",
                "application/vnd.example.sbom.v1",
                b"{}",
                "application/spdx+json",
                Some(&img),
            )
            .unwrap();
        let out = b.finish().unwrap();

        for entry in std::fs::read_dir(out.join("blobs/sha256")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            assert_eq!(sha256_file(&path).unwrap(), format!("sha256:{name}"));
        }

        let index = read_json(&out.join("index.json"));
        let names: Vec<_> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["annotations"][REF_NAME_ANNOTATION]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                    d["digest"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("img".to_owned(), img.digest.clone()),
                ("multi".to_owned(), idx.digest.clone()),
                ("sbom".to_owned(), art.digest.clone())
            ]
        );

        let manifest = read_json(&blob_path(&out, &img.digest));
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            media_types::OCI_LAYER_TAR
        );
        let config = read_json(&blob_path(
            &out,
            manifest["config"]["digest"].as_str().unwrap(),
        ));
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            manifest["layers"][0]["digest"]
        );
        assert_eq!(config["architecture"], "amd64");

        let index_json = read_json(&blob_path(&out, &idx.digest));
        assert_eq!(index_json["manifests"][1]["platform"]["variant"], "v8");
        assert_eq!(index_json["manifests"][0]["digest"], amd.digest.as_str());

        let artifact = read_json(&blob_path(&out, &art.digest));
        assert_eq!(artifact["artifactType"], "application/vnd.example.sbom.v1");
        assert_eq!(artifact["config"]["digest"], EMPTY_JSON_DIGEST);
        assert_eq!(artifact["config"]["size"], 2);
        assert_eq!(artifact["subject"]["digest"], img.digest.as_str());
    }

    /// A 1 GiB layer (the resume tests' size) is written whole and under its own digest.
    /// `cargo test -p ferry-testkit -- --ignored a_gib_layer`; its speed is the benchmark's
    /// business (`ferry-bench`), not this test's.
    #[test]
    #[ignore = "writes 1 GiB to the temp dir"]
    fn a_gib_layer_is_written_whole_under_its_digest() {
        use sha2::Digest as _;
        use std::io::Read as _;
        let dir = tempfile::tempdir().unwrap();
        let blob = LayoutBuilder::new(dir.path())
            .unwrap()
            .layer(&LayerSpec {
                seed: 42,
                size: 1 << 30,
            })
            .unwrap();
        assert_eq!(blob.size, 1 << 30);
        let mut file = std::fs::File::open(blob_path(dir.path(), &blob.digest)).unwrap();
        let (mut hasher, mut buf, mut total) = (sha2::Sha256::new(), vec![0u8; 1 << 20], 0u64);
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        assert_eq!(total, 1 << 30);
        assert_eq!(
            format!("sha256:{}", hex::encode(hasher.finalize())),
            blob.digest
        );
    }
}
