//! Config file types.
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::Policy;

/// A config file: `{"registries": [...], "policies": [...]}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub registries: Vec<RegistryConfig>,
    #[serde(default)]
    pub policies: Vec<Policy>,
}

/// One registry Ferry talks to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Name used by policies (`src_registry.name`) and in metrics.
    pub name: String,
    /// Base URL, `https://host[:port]` (or `http://` with `insecure: true`).
    pub url: String,
    /// Allow plain HTTP and skip TLS verification.
    #[serde(default)]
    pub insecure: bool,
    /// PEM file with extra CA certificates to trust for this registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
    /// Concurrent blob transfers to/from this registry (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Blob size in bytes above which uploads are chunked (default 64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_threshold: Option<u64>,
    /// Chunk size in bytes for chunked uploads (default 16 MiB; GHCR needs <= 4 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
}

/// How to authenticate. Secrets are never inline: they come from env vars, files, or a
/// docker/podman auth file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Credential {
    /// Username + password (or token) for basic auth and the bearer-token flow.
    Basic {
        username: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_env: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_file: Option<PathBuf>,
    },
    /// A docker/podman `auth.json`/`config.json`; the entry for this registry's host is used.
    AuthFile { path: PathBuf },
}

/// Resolved secret material, ready for the client. Never logged (Debug redacts).
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Secret {
    #[default]
    Anonymous,
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Anonymous => f.write_str("Anonymous"),
            Secret::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
        }
    }
}
