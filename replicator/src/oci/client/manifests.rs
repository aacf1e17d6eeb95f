//! Manifests through the distribution API: `GET` (verified against the digest asked for and the
//! registry's `Docker-Content-Digest`), `HEAD`, `PUT` of exact bytes, `DELETE` by digest or tag,
//! the OCI 1.1 referrers API, and what Harbor keeps beside an artifact (labels, scan overview).
//!
//! Invariants: a manifest returned was hashed and matched its reference digest (else
//! [`RegistryError::DigestMismatch`]); manifests (and referrers indexes) over
//! [`MAX_MANIFEST_BYTES`] are refused before being buffered; bytes are pushed as they were read,
//! never re-serialized.
use oci_spec::image::{Descriptor, ImageIndex};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::{header_str, read_limited, redact, Body, RegistryClient};
use crate::oci::auth::{self, Scope};
use crate::oci::digest::{self, Digest, DigestVerifier};
use crate::oci::error::{RegistryError, Result};
use crate::oci::manifest::{self, Manifest, MAX_MANIFEST_BYTES};

/// What a HEAD on a manifest tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDescriptor {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// What Harbor's artifact API says about one artifact ([`RegistryClient::harbor_artifact`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HarborArtifact {
    /// The artifact's digest, as Harbor names it.
    pub digest: Option<String>,
    /// Label names.
    pub labels: Vec<String>,
    /// `scan_overview` as Harbor sends it, keyed by report MIME type; `None` when Harbor sent none
    /// (never scanned, or not asked for).
    pub scan_overview: Option<serde_json::Value>,
}

/// The vulnerability report MIME types asked for in `X-Accept-Vulnerabilities` (Harbor's and the
/// scanner adapter's, as Harbor's UI sends them).
pub const HARBOR_VULNERABILITY_REPORTS: &str = "application/vnd.security.vulnerability.report; version=1.1, application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0";

/// What a tag-only delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagDelete {
    Deleted,
    /// The tag was not there.
    Missing,
    /// The registry deletes manifests by digest only.
    Unsupported,
}

impl RegistryClient {
    fn manifest_path(repository: &str, reference: &str) -> String {
        format!("v2/{repository}/manifests/{reference}")
    }

    fn accept_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT,
            HeaderValue::from_str(&manifest::ACCEPT.join(", ")).expect("static header"),
        );
        h
    }

    /// `GET` a manifest by tag or digest; the bytes are verified against the digest.
    pub async fn get_manifest(&self, repository: &str, reference: &str) -> Result<Manifest> {
        let (url, resp) = self
            .request(
                Method::GET,
                &Self::manifest_path(repository, reference),
                &Scope::pull(repository),
                Self::accept_headers(),
                Body::Empty,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::GET, &url, resp).await);
        }
        let too_large = |size| RegistryError::ManifestTooLarge {
            registry: self.name.clone(),
            repository: repository.to_string(),
            reference: reference.to_string(),
            size,
            limit: MAX_MANIFEST_BYTES,
        };
        if let Some(len) = resp.content_length().filter(|l| *l > MAX_MANIFEST_BYTES) {
            return Err(too_large(len));
        }
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        let header_digest = header_str(resp.headers(), "docker-content-digest");
        let bytes = match read_limited(resp, MAX_MANIFEST_BYTES + 1).await {
            Ok(b) if b.len() as u64 > MAX_MANIFEST_BYTES => return Err(too_large(b.len() as u64)),
            Ok(b) => b,
            Err(e) => return Err(self.transport(&url, e)),
        };
        let media_type = manifest::effective_media_type(content_type.as_deref(), &bytes);
        // The digest to trust: the one we asked for, else the registry's header, else our hash.
        let requested = digest::parse(reference);
        let claimed = requested
            .clone()
            .or_else(|| header_digest.as_deref().and_then(digest::parse));
        let computed = digest::sha256(&bytes);
        let digest = match claimed {
            Some(expected) => {
                self.verify_bytes(repository, &expected, &bytes)?;
                if let (Some(req), Some(hd)) =
                    (&requested, header_digest.as_deref().and_then(digest::parse))
                {
                    if req.algorithm() == hd.algorithm() && req != &hd {
                        return Err(RegistryError::DigestMismatch {
                            registry: self.name.clone(),
                            repository: repository.to_string(),
                            expected: req.to_string(),
                            actual: hd.to_string(),
                        });
                    }
                }
                expected
            }
            None => computed,
        };
        Ok(Manifest {
            media_type,
            digest,
            bytes,
        })
    }

    fn verify_bytes(&self, repository: &str, expected: &Digest, bytes: &[u8]) -> Result<()> {
        let mismatch = |actual: String| RegistryError::DigestMismatch {
            registry: self.name.clone(),
            repository: repository.to_string(),
            expected: expected.to_string(),
            actual,
        };
        let mut v = DigestVerifier::new(expected)
            .ok_or_else(|| mismatch(format!("<unsupported algorithm {}>", expected.algorithm())))?;
        v.update(bytes);
        v.finish().map_err(mismatch)
    }

    /// The successful answer to a manifest `HEAD` (with the same `Accept` as a `GET`, or the
    /// digest could differ); `None` on 404.
    async fn head_manifest_response(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(Url, Response)>> {
        let (url, resp) = self
            .request(
                Method::HEAD,
                &Self::manifest_path(repository, reference),
                &Scope::pull(repository),
                Self::accept_headers(),
                Body::Empty,
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::HEAD, &url, resp).await);
        }
        Ok(Some((url, resp)))
    }

    /// `HEAD` a manifest: `None` when it does not exist.
    pub async fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<RemoteDescriptor>> {
        let Some((_, resp)) = self.head_manifest_response(repository, reference).await? else {
            return Ok(None);
        };
        let media_type = header_str(resp.headers(), CONTENT_TYPE.as_str()).unwrap_or_default();
        let size = resp.content_length().unwrap_or(0);
        match header_str(resp.headers(), "docker-content-digest")
            .as_deref()
            .and_then(digest::parse)
        {
            Some(digest) => Ok(Some(RemoteDescriptor {
                digest,
                media_type,
                size,
            })),
            // Some registries omit the header on HEAD: fall back to GET and hash.
            None => {
                let m = self.get_manifest(repository, reference).await?;
                Ok(Some(RemoteDescriptor {
                    size: m.bytes.len() as u64,
                    digest: m.digest,
                    media_type: m.media_type,
                }))
            }
        }
    }

    /// The digest `repository:reference` resolves to, by `HEAD` only (never a `GET`, which some
    /// registries count against pull limits): `Ok(None)` when it does not exist, an error when the
    /// registry does not send `Docker-Content-Digest`.
    pub async fn head_digest(&self, repository: &str, reference: &str) -> Result<Option<Digest>> {
        let Some((url, resp)) = self.head_manifest_response(repository, reference).await? else {
            return Ok(None);
        };
        match header_str(resp.headers(), "docker-content-digest")
            .as_deref()
            .and_then(digest::parse)
        {
            Some(d) => Ok(Some(d)),
            None => Err(RegistryError::InvalidResponse {
                registry: self.name.clone(),
                url: redact(&url),
                message: "HEAD of a manifest answered without a valid Docker-Content-Digest header"
                    .into(),
            }),
        }
    }

    /// `PUT` a manifest (exact bytes) under a tag or its digest. Returns whether the registry
    /// confirmed the digest it stored (`Docker-Content-Digest` in its answer equals `m.digest`); an
    /// answer naming another digest is [`RegistryError::DigestMismatch`], one naming none (or one
    /// of another algorithm) leaves the check to the caller (`false`).
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        m: &Manifest,
    ) -> Result<bool> {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(&m.media_type).map_err(|_| {
                self.invalid(
                    &self.base,
                    format!("media type {:?} is not a valid header", m.media_type),
                )
            })?,
        );
        let (url, resp) = self
            .request(
                Method::PUT,
                &Self::manifest_path(repository, reference),
                &Scope::push(repository),
                h,
                Body::Bytes(m.bytes.clone()),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::PUT, &url, resp).await);
        }
        if let Some(d) = header_str(resp.headers(), "docker-content-digest")
            .as_deref()
            .and_then(digest::parse)
        {
            if d.algorithm() == m.digest.algorithm() && d != m.digest {
                return Err(RegistryError::DigestMismatch {
                    registry: self.name.clone(),
                    repository: repository.to_string(),
                    expected: m.digest.to_string(),
                    actual: d.to_string(),
                });
            }
            return Ok(d == m.digest);
        }
        Ok(false)
    }

    /// `DELETE` a manifest by digest. Returns false when it was already gone.
    pub async fn delete_manifest(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let (url, resp) = self
            .request(
                Method::DELETE,
                &Self::manifest_path(repository, digest.as_ref()),
                &Scope::push(repository),
                HeaderMap::new(),
                Body::Empty,
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(&Method::DELETE, &url, resp).await),
        }
    }

    /// `DELETE /v2/<repo>/manifests/<tag>`: removes the tag alone, where the registry supports it
    /// (OCI distribution 1.1 allows it; distribution 2.8 answers 400 and deletes only by digest).
    pub async fn delete_tag(&self, repository: &str, tag: &str) -> Result<TagDelete> {
        let (url, resp) = self
            .request(
                Method::DELETE,
                &Self::manifest_path(repository, tag),
                &Scope::push(repository),
                HeaderMap::new(),
                Body::Empty,
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(TagDelete::Deleted),
            StatusCode::NOT_FOUND => Ok(TagDelete::Missing),
            StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => Ok(TagDelete::Unsupported),
            _ => Err(self.status_error(&Method::DELETE, &url, resp).await),
        }
    }

    /// What Harbor's API says about `repository:reference`
    /// (`/api/v2.0/projects/<project>/repositories/<rest>/artifacts/<ref>?with_label=true`, the
    /// rest of the path percent-encoded twice, as Harbor wants): its digest, label names and — with
    /// `scan_overview` (`&with_scan_overview=true`, one request serving both) — its
    /// `scan_overview` as Harbor sends it (keyed by report MIME type; read by
    /// `crate::replicate::gates`). `None` when that answers 404 (no such artifact, or not a
    /// Harbor).
    pub async fn harbor_artifact(
        &self,
        repository: &str,
        reference: &str,
        scan_overview: bool,
    ) -> Result<Option<HarborArtifact>> {
        #[derive(serde::Deserialize)]
        struct Artifact {
            #[serde(default)]
            digest: Option<String>,
            #[serde(default)]
            labels: Option<Vec<Label>>,
            #[serde(default)]
            scan_overview: Option<serde_json::Value>,
        }
        #[derive(serde::Deserialize)]
        struct Label {
            name: String,
        }
        let (project, rest) = repository.split_once('/').ok_or_else(|| {
            self.invalid(
                &self.base,
                format!(
                    "repository {repository:?} has no project (Harbor paths are <project>/<name>)"
                ),
            )
        })?;
        let url = self.url(&format!(
            "api/v2.0/projects/{project}/repositories/{}/artifacts/{reference}?with_label=true{}",
            rest.replace('/', "%252F"),
            if scan_overview {
                "&with_scan_overview=true"
            } else {
                ""
            }
        ))?;
        self.gate.wait(&self.name).await;
        let mut req = self
            .http
            .get(url.clone())
            .header(ACCEPT, "application/json");
        if scan_overview {
            // Harbor returns only the reports of the MIME types a client names here.
            req = req.header("X-Accept-Vulnerabilities", HARBOR_VULNERABILITY_REPORTS);
        }
        if let Some(h) = auth::basic_header(&self.secret) {
            req = req.header(AUTHORIZATION, h);
        }
        let resp = self
            .dispatch(req)
            .await
            .map_err(|e| self.transport(&url, e))?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let body = read_limited(resp, 4 * 1024 * 1024)
                    .await
                    .map_err(|e| self.transport(&url, e))?;
                let artifact: Artifact = serde_json::from_slice(&body)
                    .map_err(|e| self.invalid(&url, format!("Harbor artifact JSON: {e}")))?;
                Ok(Some(HarborArtifact {
                    digest: artifact.digest,
                    labels: artifact
                        .labels
                        .unwrap_or_default()
                        .into_iter()
                        .map(|l| l.name)
                        .collect(),
                    scan_overview: artifact.scan_overview.filter(|v| !v.is_null()),
                }))
            }
            _ => Err(self.status_error(&Method::GET, &url, resp).await),
        }
    }

    /// The OCI 1.1 referrers API. `Ok(None)` when the registry does not implement it.
    pub async fn referrers(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>> {
        if self.referrers_api.get() == Some(&false) {
            return Ok(None);
        }
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(manifest::OCI_INDEX));
        let (url, resp) = self
            .request(
                Method::GET,
                &format!("v2/{repository}/referrers/{digest}"),
                &Scope::pull(repository),
                h,
                Body::Empty,
            )
            .await?;
        match resp.status() {
            StatusCode::OK => {
                let ct = header_str(resp.headers(), CONTENT_TYPE.as_str()).unwrap_or_default();
                let body = read_limited(resp, MAX_MANIFEST_BYTES)
                    .await
                    .map_err(|e| self.transport(&url, e))?;
                if body.len() as u64 > MAX_MANIFEST_BYTES {
                    return Err(self.invalid(
                        &url,
                        format!("referrers index is over the {MAX_MANIFEST_BYTES}-byte limit"),
                    ));
                }
                if !ct.starts_with(manifest::OCI_INDEX) {
                    let _ = self.referrers_api.set(false);
                    return Ok(None);
                }
                let index: ImageIndex = serde_json::from_slice(&body)
                    .map_err(|e| self.invalid(&url, format!("referrers index: {e}")))?;
                let _ = self.referrers_api.set(true);
                Ok(Some(index.manifests().clone()))
            }
            // A registry with the API answers 200 with an empty index for unknown subjects, so a
            // 404 (or 400/405) means it has no such API.
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => {
                let _ = self.referrers_api.set(false);
                Ok(None)
            }
            _ => Err(self.status_error(&Method::GET, &url, resp).await),
        }
    }
}
