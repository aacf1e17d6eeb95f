//! Config file types.
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::Policy;

/// A config file: `{"registries": [...], "policies": [...]}`.
///
/// [`Config::from_slice`] also accepts a bare policy object or an array of policies (a "policy
/// file", validated without `registries`); both load as a `Config` with no registries.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Registries the policies refer to by name.
    #[serde(default)]
    pub registries: Vec<RegistryConfig>,
    /// Replication policies between those registries.
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// The regions of a multi-region deployment and where each one receives forwarded events
    /// (README "Regions"). Empty: one site, every event is handled where it arrives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<RegionConfig>,
}

/// One region's stack, as the other regions reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Region name, as given to `--region` / `FERRY_REGION` of that region's processes.
    pub name: String,
    /// The region agent's `ferry.v1.Events/Forward` endpoint (`--forward-listen`), e.g.
    /// `https://ferry-agent.eu.example:9444`; `http://` only on trusted networks.
    pub forward_url: String,
}

/// One registry Ferry talks to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Name used by policies (`src_registry.name`) and in metrics.
    pub name: String,
    /// Harbor's id of this registry (as `GET /api/v2.0/registries` shows it), so that a pasted
    /// Harbor policy's `{"id": n}` reference finds it; unique. Harbor's `0` is the local registry,
    /// which `local` marks instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub id: Option<i64>,
    /// This registry is its region's local registry (the Harbor whose policies are pasted): a
    /// policy without `src_registry` pushes from it, one without `dest_registry` pulls into it, and
    /// a reference with Harbor's `id: 0` names it. At most one per region (per `region`, or one in
    /// a config without regions).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
    /// What kind of registry this is: `distribution` (default: any registry speaking the OCI
    /// distribution API) or `harbor` (README "Harbor": projects are created before the first push
    /// into them, and repositories are listed through Harbor's projects API instead of
    /// `_catalog`).
    #[serde(
        rename = "type",
        default,
        skip_serializing_if = "RegistryKind::is_distribution"
    )]
    pub kind: RegistryKind,
    /// Base URL, `https://host[:port]` (or `http://` with `insecure: true`).
    pub url: String,
    /// Allow plain HTTP and skip TLS verification.
    #[serde(default)]
    pub insecure: bool,
    /// PEM file with extra CA certificates to trust for this registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// How to authenticate; absent = anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
    /// Concurrent blob transfers to/from this registry (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub concurrency: Option<usize>,
    /// Blob size in bytes from which uploads are chunked (and resumable after a crash); smaller
    /// blobs go up in one streaming PUT, unless the policy sets `copy_by_chunk`. Absent: 256 MiB
    /// (268435456). A registry that refuses chunked uploads gets one PUT per blob whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub chunk_threshold: Option<u64>,
    /// Chunk size in bytes for chunked uploads (default 16 MiB; GHCR needs <= 4 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub chunk_size: Option<u64>,
    /// Poll this registry's tags every so many seconds (HEAD requests only) and turn changes into
    /// events, for registries that cannot send webhooks. Absent = webhooks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub poll_interval_seconds: Option<u64>,
    /// Most requests per second this process sends to the registry (a pace between request
    /// starts); absent = unlimited. `concurrency` bounds parallel blob transfers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.001))]
    pub requests_per_second: Option<f64>,
    /// Region whose agent receives this registry's webhooks (or polls it), and whose workers write
    /// to it in pull and bidirectional modes. Absent: every region treats it as its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// The kind of registry behind a [`RegistryConfig`], as its `type` field names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegistryKind {
    /// Any registry speaking the OCI distribution API (distribution, Zot, GHCR, ECR, Harbor used
    /// as a plain registry, ...).
    #[default]
    Distribution,
    /// Harbor 2.x: Ferry creates a missing project (the first path segment) through Harbor's API
    /// before pushing into it, lists repositories through `/api/v2.0/projects` (Harbor answers
    /// `_catalog` to system administrators only), and names Harbor's quota and immutable-tag
    /// refusals.
    Harbor,
}

impl RegistryKind {
    /// True for the default, `distribution` (left out when a config is written back).
    pub fn is_distribution(&self) -> bool {
        *self == RegistryKind::Distribution
    }
}

/// How to authenticate. Secrets are never inline: they come from env vars, files, or a
/// docker/podman auth file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Credential {
    /// Username + password (or token) for basic auth and the bearer-token flow.
    Basic {
        username: String,
        /// Environment variable holding the password. Exactly one of `password_env`/`password_file`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_env: Option<String>,
        /// File holding the password (a trailing newline is ignored).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_file: Option<PathBuf>,
    },
    /// A docker/podman `auth.json`/`config.json`; the entry for this registry's host is used.
    AuthFile {
        /// Path of the auth file; `~` and `$VAR` are not expanded.
        path: PathBuf,
    },
}

/// Resolved secret material, ready for the client. Never logged (Debug redacts).
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Secret {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Anonymous => f.write_str("Anonymous"),
            Secret::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
        }
    }
}
