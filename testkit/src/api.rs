//! Writes through the distribution API itself, for what skopeo will not push: skopeo refuses an
//! OCI index whose entries carry `artifactType` (a referrers fallback index) when asked to keep
//! digests, so such a manifest is `PUT` as its exact bytes here.
use anyhow::Context as _;

/// `PUT <url>/v2/<repo>/manifests/<reference>` with these exact bytes; the manifests and blobs
/// it names must be on the registry already.
pub async fn put_manifest(
    url: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: Vec<u8>,
) -> anyhow::Result<()> {
    let target = format!("{url}/v2/{repo}/manifests/{reference}");
    let resp = reqwest::Client::new()
        .put(&target)
        .header("content-type", media_type)
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("PUT {target}"))?;
    let status = resp.status();
    anyhow::ensure!(
        status.is_success(),
        "PUT {target}: {status}: {}",
        resp.text().await.unwrap_or_default()
    );
    Ok(())
}
