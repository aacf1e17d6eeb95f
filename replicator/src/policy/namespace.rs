//! STUB (to be replaced): Harbor's destination namespace table.

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NamespaceError {
    pub message: String,
}

pub fn rewrite_repository(
    repository: &str,
    dest_namespace: &str,
    replace_count: i32,
) -> Result<String, NamespaceError> {
    let _ = replace_count;
    if dest_namespace.is_empty() {
        Ok(repository.to_string())
    } else {
        Ok(format!("{dest_namespace}/{repository}"))
    }
}
