//! STUB (to be replaced): loading and validation of config files.
use std::path::Path;

use super::{Config, Credential, RegistryConfig, Secret};
use crate::policy::Policy;

/// One problem in a config or policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// JSON path, e.g. `policies[0].filters[1].value`.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

/// A config file that could not be used, with every problem found.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {} problem(s)", problems.len())]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<Problem>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|e| ConfigError {
            source_name: path.display().to_string(),
            problems: vec![Problem { path: String::new(), message: e.to_string(), hint: None }],
        })?;
        Self::from_slice(&bytes, &path.display().to_string())
    }

    pub fn from_slice(bytes: &[u8], source_name: &str) -> Result<Config, ConfigError> {
        serde_json::from_slice(bytes).map_err(|e| ConfigError {
            source_name: source_name.to_string(),
            problems: vec![Problem { path: String::new(), message: e.to_string(), hint: None }],
        })
    }

    pub fn validate(&self) -> Vec<Problem> {
        Vec::new()
    }

    pub fn registry(&self, name: &str) -> Option<&RegistryConfig> {
        self.registries.iter().find(|r| r.name == name)
    }

    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }
}

/// A credential reference that could not be resolved.
#[derive(Debug, thiserror::Error)]
#[error("registry {registry}: {message}")]
pub struct CredentialError {
    pub registry: String,
    pub message: String,
}

impl Credential {
    pub fn resolve(&self, registry: &RegistryConfig) -> Result<Secret, CredentialError> {
        let _ = registry;
        Ok(Secret::Anonymous)
    }
}
