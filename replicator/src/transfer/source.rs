//! Where a transfer reads from: [`Source`], the narrow read side of a registry — manifests as
//! exact bytes, blobs as streams, tag lists and referrers — that a registry
//! ([`RegistryClient`]) and an OCI image layout on disk ([`crate::layout::LayoutSource`]) both
//! provide, so the decision whether a blob is skipped, mounted or copied, and the verification of
//! every byte on its way, stay in one place (`transfer/mod.rs`, `transfer::verify`) whatever the
//! source is.
//!
//! Invariants: a manifest a source returns hashes to its digest (each implementation checks);
//! blob bytes are *not* trusted — the transfer verifies size and digest as they stream past;
//! features only a registry has (Harbor's artifact API) are reached through
//! [`Source::registry`], which an on-disk source answers with `None`.
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use oci_spec::image::Descriptor;
use tokio::sync::Semaphore;

use crate::oci::digest::Digest;
use crate::oci::{Manifest, RegistryClient, RegistryError, RemoteDescriptor};

use super::{Result, TransferError};

/// The read side of a transfer.
#[async_trait::async_trait]
pub trait Source: Send + Sync + std::fmt::Debug {
    /// The name errors and logs use (a registry's config name; `layout <path>` for a layout).
    fn name(&self) -> &str;
    /// `HEAD` of `repository:reference` (tag or digest): `None` when it does not exist.
    async fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<RemoteDescriptor>>;
    /// The digest `repository:reference` resolves to, without reading a manifest where the source
    /// can (a registry's `HEAD`, which pull limits do not count).
    async fn head_digest(&self, repository: &str, reference: &str) -> Result<Option<Digest>> {
        Ok(self
            .head_manifest(repository, reference)
            .await?
            .map(|d| d.digest))
    }
    /// The manifest's exact bytes, verified against its digest.
    async fn get_manifest(&self, repository: &str, reference: &str) -> Result<Manifest>;
    /// Blob `digest` (`size` bytes) of `repository` from byte `from` to its end; unverified (the
    /// consumer checks size and digest).
    fn blob_bytes(
        self: Arc<Self>,
        repository: &str,
        digest: &Digest,
        from: u64,
        size: u64,
    ) -> BoxStream<'static, Result<Bytes>>;
    /// The error for blob `digest` of `repository` whose bytes from this source hash to `actual`
    /// (a registry's names the registry; a layout's names the file).
    fn corrupt(&self, repository: &str, digest: &Digest, actual: String) -> TransferError {
        RegistryError::DigestMismatch {
            registry: self.name().to_string(),
            repository: repository.to_string(),
            expected: digest.to_string(),
            actual,
        }
        .into()
    }
    /// The referrers of `subject` (OCI 1.1 referrers API); `None` when the source has no such API.
    async fn referrers(
        &self,
        repository: &str,
        subject: &Digest,
    ) -> Result<Option<Vec<Descriptor>>>;
    /// Every tag of `repository`.
    async fn list_tags(&self, repository: &str) -> Result<Vec<String>>;
    /// The slots bounding concurrent transfers from this source (a registry's `concurrency`);
    /// `None` when reads cost nothing worth bounding.
    fn transfer_slots(&self) -> Option<&Arc<Semaphore>>;
    /// The registry behind this source, for registry-only features (Harbor labels); `None` for a
    /// source on disk.
    fn registry(&self) -> Option<&RegistryClient>;
}

#[async_trait::async_trait]
impl Source for RegistryClient {
    fn name(&self) -> &str {
        RegistryClient::name(self)
    }

    async fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<RemoteDescriptor>> {
        Ok(RegistryClient::head_manifest(self, repository, reference).await?)
    }

    async fn head_digest(&self, repository: &str, reference: &str) -> Result<Option<Digest>> {
        Ok(RegistryClient::head_digest(self, repository, reference).await?)
    }

    async fn get_manifest(&self, repository: &str, reference: &str) -> Result<Manifest> {
        Ok(RegistryClient::get_manifest(self, repository, reference).await?)
    }

    fn blob_bytes(
        self: Arc<Self>,
        repository: &str,
        digest: &Digest,
        from: u64,
        size: u64,
    ) -> BoxStream<'static, Result<Bytes>> {
        Box::pin(super::verify::registry_bytes(
            self, repository, digest, from, size,
        ))
    }

    async fn referrers(
        &self,
        repository: &str,
        subject: &Digest,
    ) -> Result<Option<Vec<Descriptor>>> {
        Ok(RegistryClient::referrers(self, repository, subject).await?)
    }

    async fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        Ok(RegistryClient::list_tags(self, repository).await?)
    }

    fn transfer_slots(&self) -> Option<&Arc<Semaphore>> {
        Some(RegistryClient::transfer_slots(self))
    }

    fn registry(&self) -> Option<&RegistryClient> {
        Some(self)
    }
}

impl TransferError {
    /// The source does not hold what was asked for (a registry's 404, a layout without it).
    pub fn is_not_found(&self) -> bool {
        match self {
            TransferError::Registry(e) => e.is_not_found(),
            TransferError::Layout(e) => e.is_not_found(),
            _ => false,
        }
    }
}
