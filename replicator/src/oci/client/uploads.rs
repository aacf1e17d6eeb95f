//! Writing blobs: upload sessions (`POST`), cross-repository mounts, the monolithic streaming
//! `PUT`, `PATCH` chunks, the session's status (`GET`), completion and cancellation.
//!
//! Invariants: a session URL is followed only as [`RegistryClient`]'s credential rules allow; the
//! offset a session reports comes from the registry's `Range`, checked against the bytes sent (a
//! `Range` that contradicts them is [`RegistryError::InvalidRange`]); a streaming body is sent
//! once, after the credentials are settled; cancelling is best effort and never fails.
use bytes::Bytes;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::{content_length_zero, header_str, parse_upload_range, redact, Body, RegistryClient};
use crate::oci::auth::Scope;
use crate::oci::digest::Digest;
#[cfg(doc)]
use crate::oci::error::RegistryError;
use crate::oci::error::Result;

/// An open blob upload session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobUpload {
    pub repository: String,
    pub location: Url,
    /// Bytes the registry has confirmed so far.
    pub offset: u64,
}

/// Result of a cross-repository mount request.
#[derive(Debug)]
pub enum MountOutcome {
    Mounted,
    /// The registry opened an upload session instead (it could not or would not mount).
    NotMounted(BlobUpload),
}

impl RegistryClient {
    /// The session URL an upload answer names (`Location`, resolved against the base URL).
    fn upload_location(&self, url: &Url, resp: &Response) -> Result<Url> {
        let loc = header_str(resp.headers(), LOCATION.as_str())
            .ok_or_else(|| self.invalid(url, "upload answer has no Location header"))?;
        self.follow(url, "an upload Location", &loc)
    }

    /// A session that was just opened (it holds no bytes).
    fn new_upload(&self, repository: &str, url: &Url, resp: &Response) -> Result<BlobUpload> {
        Ok(BlobUpload {
            repository: repository.to_string(),
            location: self.upload_location(url, resp)?,
            offset: 0,
        })
    }

    /// Opens an upload session.
    pub async fn start_upload(&self, repository: &str) -> Result<BlobUpload> {
        let (url, resp) = self
            .request(
                Method::POST,
                &format!("v2/{repository}/blobs/uploads/"),
                &Scope::push(repository),
                content_length_zero(),
                Body::Empty,
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(&Method::POST, &url, resp).await);
        }
        self.new_upload(repository, &url, &resp)
    }

    /// Cross-repository mount of `digest` from `from` into `repository`.
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<MountOutcome> {
        let path = format!("v2/{repository}/blobs/uploads/?mount={digest}&from={from}");
        let (url, resp) = self
            .request(
                Method::POST,
                &path,
                &Scope::mount(repository, from),
                content_length_zero(),
                Body::Empty,
            )
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(MountOutcome::Mounted),
            StatusCode::ACCEPTED => Ok(MountOutcome::NotMounted(
                self.new_upload(repository, &url, &resp)?,
            )),
            _ => Err(self.status_error(&Method::POST, &url, resp).await),
        }
    }

    /// Makes sure the next request in `scope` carries valid credentials (so a streaming request,
    /// which cannot be replayed after a 401, goes out authorized).
    pub async fn prepare_push(&self, repository: &str) -> Result<Option<String>> {
        self.authorization(&Scope::push(repository)).await
    }

    /// Completes an upload with the whole blob as a streaming body (one `PUT`, sent once).
    pub async fn put_blob_stream(
        &self,
        upload: &BlobUpload,
        digest: &Digest,
        size: u64,
        body: reqwest::Body,
    ) -> Result<()> {
        let mut url = upload.location.clone();
        url.query_pairs_mut().append_pair("digest", digest.as_ref());
        let mut req = self
            .http
            .put(url.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body);
        let scope = Scope::push(&upload.repository);
        if let Some(a) = self.authorization_for(&url, &scope).await? {
            req = req.header(AUTHORIZATION, a);
        }
        self.gate.wait(&self.name).await;
        let resp = self
            .dispatch(req)
            .await
            .map_err(|e| self.transport(&url, e))?;
        self.note_rate_limit(resp.headers()).await;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(self.status_error(&Method::PUT, &url, resp).await);
        }
        Ok(())
    }

    /// Sends one chunk of blob `digest` (`PATCH` with `Content-Range`); returns the session with its
    /// new location and the offset the registry confirmed.
    pub async fn patch_chunk(
        &self,
        upload: &BlobUpload,
        digest: &Digest,
        chunk: Bytes,
    ) -> Result<BlobUpload> {
        let url = upload.location.clone();
        let end = upload
            .offset
            .checked_add(chunk.len() as u64)
            .ok_or_else(|| {
                self.invalid(
                    &url,
                    format!(
                        "upload offset {} overflows with the next chunk",
                        upload.offset
                    ),
                )
            })?;
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from(chunk.len() as u64));
        if !chunk.is_empty() {
            h.insert(
                "content-range",
                HeaderValue::from_str(&format!("{}-{}", upload.offset, end - 1)).expect("ascii"),
            );
        }
        let resp = self
            .send(
                Method::PATCH,
                url.clone(),
                &Scope::push(&upload.repository),
                h,
                Body::Bytes(chunk),
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(&Method::PATCH, &url, resp).await);
        }
        let location = self.upload_location(&url, &resp)?;
        // Some registries omit Range; trust our count only if they said nothing.
        if let Some(value) = header_str(resp.headers(), "range") {
            let bad = |reason: String| {
                self.bad_range(&upload.repository, digest, &url, "Range", &value, reason)
            };
            let confirmed = parse_upload_range(&value).map_err(bad)?;
            if confirmed != end {
                return Err(bad(format!(
                    "the registry confirms {confirmed} bytes after a chunk ending at {end}"
                )));
            }
        }
        Ok(BlobUpload {
            repository: upload.repository.clone(),
            location,
            offset: end,
        })
    }

    /// Finishes a chunked upload (`PUT ?digest=` with an empty body).
    pub async fn finish_upload(&self, upload: &BlobUpload, digest: &Digest) -> Result<()> {
        let mut url = upload.location.clone();
        url.query_pairs_mut().append_pair("digest", digest.as_ref());
        let resp = self
            .send(
                Method::PUT,
                url.clone(),
                &Scope::push(&upload.repository),
                content_length_zero(),
                Body::Empty,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::PUT, &url, resp).await);
        }
        Ok(())
    }

    /// Asks the registry how many bytes of an upload of blob `digest` it holds (`GET` on the
    /// session: `204` with `Range: 0-<last>`). Returns the session as the registry describes it now
    /// (its new `Location` if it sent one). A session the registry no longer knows is a 404-style
    /// status error; a missing or unreadable `Range` is [`RegistryError::InvalidRange`].
    pub async fn upload_status(&self, upload: &BlobUpload, digest: &Digest) -> Result<BlobUpload> {
        let url = upload.location.clone();
        let resp = self
            .send(
                Method::GET,
                url.clone(),
                &Scope::push(&upload.repository),
                HeaderMap::new(),
                Body::Empty,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::GET, &url, resp).await);
        }
        let value = header_str(resp.headers(), "range").unwrap_or_default();
        let offset = parse_upload_range(&value).map_err(|reason| {
            self.bad_range(&upload.repository, digest, &url, "Range", &value, reason)
        })?;
        let location = match header_str(resp.headers(), LOCATION.as_str()) {
            Some(_) => self.upload_location(&url, &resp)?,
            None => upload.location.clone(),
        };
        Ok(BlobUpload {
            repository: upload.repository.clone(),
            location,
            offset,
        })
    }

    /// Cancels an upload session; best effort (a session left behind expires on the registry).
    /// distribution 2.8 answers 404 to the `DELETE` of a session whose streaming `PUT` was aborted
    /// and keeps its partial data until its upload purger runs (`storage.maintenance.uploadpurging`,
    /// by default files older than a week, checked daily): nothing a client can do about it.
    pub async fn cancel_upload(&self, upload: &BlobUpload) {
        let url = upload.location.clone();
        match self
            .send(
                Method::DELETE,
                url.clone(),
                &Scope::push(&upload.repository),
                HeaderMap::new(),
                Body::Empty,
            )
            .await
        {
            Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {}
            Ok(r) => {
                tracing::debug!(registry = %self.name, url = %redact(&url), status = r.status().as_u16(), "upload cancel refused")
            }
            Err(e) => tracing::debug!(registry = %self.name, error = %e, "upload cancel failed"),
        }
    }
}
