//! Independent checks of what the registries hold, never through Ferry's own client: manifest
//! `HEAD`/`DELETE` over plain HTTP, manifest digests hashed from skopeo's raw bytes, upload counts
//! from a registry's access log, uploads in progress from its storage directory; plus fixture
//! images.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use ferry_testkit::{skopeo, Blob, LayerSpec, LayoutBuilder};

/// Every manifest media type, so a `HEAD` returns the digest of the stored bytes whatever they are.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building an HTTP client")
}

/// The digest `host` serves for `repo:reference` (`Docker-Content-Digest` of a `HEAD`), `None` on
/// 404. `host` is `127.0.0.1:PORT` of a plain-HTTP registry.
pub async fn manifest_digest(
    host: &str,
    repo: &str,
    reference: &str,
) -> anyhow::Result<Option<String>> {
    let url = format!("http://{host}/v2/{repo}/manifests/{reference}");
    let response = client()?
        .head(&url)
        .header("accept", MANIFEST_ACCEPT)
        .send()
        .await
        .with_context(|| format!("HEAD {url}"))?;
    match response.status().as_u16() {
        200 => Ok(Some(
            response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .with_context(|| format!("HEAD {url}: no Docker-Content-Digest"))?
                .to_string(),
        )),
        404 => Ok(None),
        code => anyhow::bail!("HEAD {url} answered {code}"),
    }
}

/// `DELETE /v2/<repo>/manifests/<digest>` on `host`, expecting 202 (distribution removes every
/// tag pointing at the digest).
pub async fn delete_manifest(host: &str, repo: &str, digest: &str) -> anyhow::Result<()> {
    let url = format!("http://{host}/v2/{repo}/manifests/{digest}");
    let response = client()?
        .delete(&url)
        .send()
        .await
        .with_context(|| format!("DELETE {url}"))?;
    let status = response.status();
    anyhow::ensure!(
        status.as_u16() == 202,
        "DELETE {url} answered {status}: {}",
        response.text().await.unwrap_or_default()
    );
    Ok(())
}

/// sha256 of the exact manifest bytes `skopeo inspect --raw docker://host/reference` returns.
pub async fn skopeo_digest(host: &str, reference: &str) -> anyhow::Result<String> {
    Ok(ferry_testkit::sha256_digest(
        &skopeo::inspect_raw(host, reference).await?,
    ))
}

/// How many blob upload `PUT`s (the request that completes an upload) a registry's access log
/// shows. Needs the registry at `log_level: "info"`, which writes one combined-log-format line
/// per request: `127.0.0.1 - - [...] "PUT /v2/<repo>/blobs/uploads/<uuid>?...digest=... HTTP/1.1" 201 ...`.
pub fn blob_upload_puts(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("\"PUT /v2/") && l.contains("/blobs/uploads/"))
        .count()
}

/// How many upload-completing `PUT`s of blob `digest` a registry's access log shows (the digest
/// parameter may be URL-encoded, `sha256%3A<hex>`, so the hex part is matched).
pub fn blob_upload_puts_of(log: &str, digest: &str) -> usize {
    let hex = digest.trim_start_matches("sha256:");
    log.lines()
        .filter(|l| l.contains("\"PUT /v2/") && l.contains("/blobs/uploads/") && l.contains(hex))
        .count()
}

/// How many manifest `PUT`s of `repo:reference` a registry's access log shows (log level `info`).
pub fn manifest_puts(log: &str, repo: &str, reference: &str) -> usize {
    let request = format!("\"PUT /v2/{repo}/manifests/{reference} ");
    log.lines().filter(|l| l.contains(&request)).count()
}

/// An upload in progress in a distribution storage root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadInProgress {
    /// The upload's UUID: the `<uuid>` of `/v2/<repo>/blobs/uploads/<uuid>` URLs.
    pub uuid: String,
    /// Bytes received so far (the size of its `data` file).
    pub bytes: u64,
}

/// The unfinished uploads in a distribution storage root (the `data` files under
/// `docker/registry/v2/repositories/**/_uploads/<uuid>/`): what clients have streamed into
/// uploads that are not complete yet. Largest first.
pub fn uploads_in_progress(storage_root: &Path) -> Vec<UploadInProgress> {
    fn walk(dir: &Path, found: &mut Vec<UploadInProgress>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name() == "_uploads" {
                for upload in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    if let Ok(meta) = std::fs::metadata(upload.path().join("data")) {
                        found.push(UploadInProgress {
                            uuid: upload.file_name().to_string_lossy().into_owned(),
                            bytes: meta.len(),
                        });
                    }
                }
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(
        &storage_root.join("docker/registry/v2/repositories"),
        &mut found,
    );
    found.sort_by_key(|u| std::cmp::Reverse(u.bytes));
    found
}

/// The size of the largest upload in progress (see [`uploads_in_progress`]), 0 when none.
pub fn largest_upload_in_progress(storage_root: &Path) -> u64 {
    uploads_in_progress(storage_root)
        .first()
        .map_or(0, |u| u.bytes)
}

/// A fixture image written by [`image`].
pub struct Image {
    /// The OCI layout directory (for [`skopeo::push_layout`]), the image tagged `img`.
    pub layout: PathBuf,
    /// The image manifest's descriptor.
    pub manifest: Blob,
    /// The layers' descriptors, in manifest order.
    pub layers: Vec<Blob>,
}

/// An OCI layout in `dir` holding one linux/amd64 image, tagged `img`, with `layers`.
pub fn image(dir: &Path, layers: &[LayerSpec]) -> anyhow::Result<Image> {
    let mut builder = LayoutBuilder::new(dir)?;
    let layer_blobs = layers
        .iter()
        .map(|spec| builder.layer(spec))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let manifest = builder.image("img", layers)?;
    Ok(Image {
        layout: builder.finish()?,
        manifest,
        layers: layer_blobs,
    })
}
