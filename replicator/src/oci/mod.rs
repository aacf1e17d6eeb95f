//! A client for the OCI distribution API, as registries really implement it.
//!
//! # Layout
//! - [`client`]: [`RegistryClient`], one per configured registry: manifests, blobs, uploads, mounts,
//!   tag lists and the catalog, with retries that honor `Retry-After`.
//! - [`auth`]: `WWW-Authenticate` challenges, basic auth and the bearer-token flow, tokens cached per
//!   scope until they expire.
//! - [`manifest`]: manifests kept as their exact bytes plus the graph edges parsed out of them.
//! - [`digest`]: digests and streaming verification.
//! - [`error`]: [`RegistryError`], which always names the registry and the URL.
//! - [`metrics`]: `ferry_registry_requests_total` and `ferry_registry_request_duration_seconds`,
//!   counted where every request of a client goes out.
//!
//! Invariant: manifest bytes are never re-serialized; whatever is read is verified against its digest
//! before anyone can use it.

pub mod auth;
pub mod client;
pub mod digest;
pub mod error;
pub mod gate;
pub mod manifest;
pub mod metrics;

pub use client::{
    BlobUpload, HarborArtifact, MountOutcome, RegistryClient, RemoteDescriptor, TagDelete,
};
pub use digest::{Digest, DigestVerifier};
pub use error::{HarborRefusal, RegistryError};
pub use manifest::{Manifest, ManifestGraph};
pub use metrics::RegistryMetrics;
