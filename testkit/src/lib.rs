//! `ferry-testkit`: the harness behind Ferry's integration tests, chaos tests
//! and benchmarks.
//!
//! Ferry's tests run against **real** servers, never mocks of them: this crate
//! starts the Debian `docker-registry` (CNCF distribution 2.8) and
//! `redis-server`/`valkey-server` binaries as child processes on free loopback
//! ports, generates OCI image layouts on disk with deterministic content, and
//! drives `skopeo` as an independent client to push fixtures and to check what
//! Ferry replicated. The one exception is [`fake::FakeRegistry`], a deliberately
//! misbehaving in-memory registry for error paths a real registry will not
//! produce on demand (corrupt blobs, 429s, auth challenges, vanishing tags…).
//!
//! # Layout
//! - [`registry`]: [`Registry`] and [`RedisServer`] child processes, each owning
//!   a temporary directory that holds its config, data and log.
//! - [`sentinel`]: a Redis/Valkey Sentinel watching a [`RedisServer`] primary, for failovers.
//! - [`catalog`]: large catalogs of tiny images written straight into a registry's storage (scale
//!   benchmarks).
//! - [`measure`]: a command's wall time, peak RSS and CPU, for benchmarks.
//! - [`metrics`]: sums of samples read from the text a Ferry `/metrics` serves.
//! - [`fixtures`]: [`LayoutBuilder`] writes OCI image layouts (images,
//!   multi-arch indexes, OCI 1.1 artifacts) whose layer content is derived
//!   from a seed, streamed to disk so gigabyte layers cost constant memory.
//! - [`skopeo`]: push a layout, read raw manifests, pull and re-hash, list
//!   tags; each call gets its own skopeo blob-info cache.
//! - [`fake`]: the misbehaving in-memory registry.
//! - [`netns`]: network namespaces joined by veth pairs, so each test region has its own
//!   addresses; [`Host`] says where a child process runs.
//! - [`fault`]: a userspace TCP fault proxy (blackhole, reset, latency) for links between regions.
//! - [`api`]: a manifest `PUT` as exact bytes, for what skopeo refuses to push.
//! - [`cosign`]: cosign-format signatures (P-256 key, simple signing payload, signature
//!   manifest) made without a cosign binary.
//! - [`oidc`]: a test OpenID Connect issuer (discovery, JWKS, rotation) and token minting.
//!
//! Errors are `anyhow` (this is test code) and always say what failed, with
//! the tail of the child's log or skopeo's stderr where there is one.
//!
//! Binaries: `docker-registry`, `skopeo` and `redis-server` must be on `PATH`;
//! `FERRY_REDIS_SERVER` overrides the Redis binary (CI also runs `valkey-server`).
#![forbid(unsafe_code)]

pub mod access_log;
pub mod api;
pub mod catalog;
pub mod cosign;
pub mod fake;
pub mod fault;
pub mod fixtures;
pub mod measure;
pub mod metrics;
pub mod netns;
pub mod ocync;
pub mod oidc;
pub mod registry;
pub mod sentinel;
pub mod skopeo;
pub mod tls;

mod process;

pub use fake::{
    harbor_scan_overview, BearerSetup, Behavior, FakeRegistry, HarborSetup, HostileList,
};
pub use fault::{FaultProxy, Link};
pub use fixtures::{sha256_digest, sha256_file, Blob, LayerSpec, LayoutBuilder};
pub use netns::{Host, Netns};
pub use process::free_port;
pub use registry::{RedisServer, Registry, RegistryOptions};
pub use tls::{make_certificates, Certificates};
