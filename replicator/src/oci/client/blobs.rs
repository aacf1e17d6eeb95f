//! Reading blobs: `HEAD` for presence and size, a streaming `GET` from an offset, and a small blob
//! read whole ([`RegistryClient::get_small_blob`], verified here: signature payloads).
//!
//! Invariants: a `206` answer's `Content-Range` must start at the offset asked for (else
//! [`RegistryError::InvalidRange`]); a registry that ignores `Range` is reported through
//! [`BlobRead::start`], never silently; the body is not verified here — its consumer hashes it.
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};

use super::{header_str, parse_content_range, read_limited, Body, RegistryClient};
use crate::oci::auth::Scope;
use crate::oci::digest::Digest;
#[cfg(doc)]
use crate::oci::error::RegistryError;
use crate::oci::error::Result;

/// A blob `GET` that answered: the body starts at byte `start` of the blob.
#[derive(Debug)]
pub struct BlobRead {
    pub response: Response,
    /// The requested offset when the registry honored the `Range` (206), 0 when it ignored it and
    /// sent the whole blob (200): the caller skips `offset - start` bytes.
    pub start: u64,
}

impl RegistryClient {
    /// `HEAD` a blob: its size when present, `None` when absent.
    pub async fn blob_exists(&self, repository: &str, digest: &Digest) -> Result<Option<u64>> {
        let (url, resp) = self
            .request(
                Method::HEAD,
                &format!("v2/{repository}/blobs/{digest}"),
                &Scope::pull(repository),
                HeaderMap::new(),
                Body::Empty,
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp.content_length().unwrap_or(0))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.status_error(&Method::HEAD, &url, resp).await),
        }
    }

    /// Streaming `GET` of a blob from `offset` (a `Range` request when non-zero). A registry may
    /// ignore the `Range` and send the whole blob: [`BlobRead::start`] says where the body starts.
    /// The caller verifies the digest while consuming the body.
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobRead> {
        let mut h = HeaderMap::new();
        if offset > 0 {
            h.insert(
                reqwest::header::RANGE,
                HeaderValue::from_str(&format!("bytes={offset}-")).expect("ascii"),
            );
        }
        let (url, resp) = self
            .request(
                Method::GET,
                &format!("v2/{repository}/blobs/{digest}"),
                &Scope::pull(repository),
                h,
                Body::Empty,
            )
            .await?;
        if resp.status() == StatusCode::PARTIAL_CONTENT {
            let value = header_str(resp.headers(), "content-range").unwrap_or_default();
            let (start, _, _) = parse_content_range(&value).map_err(|reason| {
                self.bad_range(repository, digest, &url, "Content-Range", &value, reason)
            })?;
            if start != offset {
                return Err(self.bad_range(
                    repository,
                    digest,
                    &url,
                    "Content-Range",
                    &value,
                    format!("asked for the bytes from {offset}"),
                ));
            }
            return Ok(BlobRead {
                response: resp,
                start,
            });
        }
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::GET, &url, resp).await);
        }
        Ok(BlobRead {
            response: resp,
            start: 0,
        })
    }

    /// `GET` a small blob whole (a signature payload): at most `limit` bytes, else
    /// [`RegistryError::InvalidResponse`]; the bytes are verified against `digest` here.
    pub async fn get_small_blob(
        &self,
        repository: &str,
        digest: &Digest,
        limit: u64,
    ) -> Result<bytes::Bytes> {
        let read = self.get_blob(repository, digest, 0).await?;
        let url = read.response.url().clone();
        let body = read_limited(read.response, limit)
            .await
            .map_err(|e| self.transport(&url, e))?;
        if body.len() as u64 > limit {
            return Err(self.invalid(
                &url,
                format!("blob {digest} is over the {limit}-byte limit for this read"),
            ));
        }
        self.verify_bytes(repository, digest, &body)?;
        Ok(body)
    }
}
