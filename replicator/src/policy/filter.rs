//! STUB (to be replaced): compiled policy filters.
use super::Policy;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SelectorError {
    pub path: String,
    pub message: String,
}

/// A policy's filters, compiled once.
#[derive(Debug, Clone)]
pub struct Selector {}

impl Selector {
    pub fn new(policy: &Policy) -> Result<Selector, SelectorError> {
        let _ = policy;
        Ok(Selector {})
    }
    pub fn matches_repository(&self, repository: &str) -> bool {
        let _ = repository;
        true
    }
    pub fn matches_tag(&self, tag: &str) -> bool {
        let _ = tag;
        true
    }
    /// `resource` filter: `is_image` is false for artifacts (config media type is not an image config).
    pub fn matches_resource(&self, is_image: bool) -> bool {
        let _ = is_image;
        true
    }
    pub fn has_platform_filter(&self) -> bool {
        false
    }
    pub fn matches_platform(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        let _ = (os, architecture, variant);
        true
    }
}
