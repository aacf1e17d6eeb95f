//! Destination repository names: Harbor's `dest_namespace` / `dest_namespace_replace_count` table.
//!
//! With `dest_namespace = "n"` and source repository `a/b/c`:
//!
//! | replace count | destination |
//! |---------------|-------------|
//! | `-1` (flatten all) | `n/c` |
//! | `0` (prefix) | `n/a/b/c` |
//! | `1` | `n/b/c` |
//! | `2` | `n/c` |
//! | `3` or more | error (see below) |
//!
//! An empty `dest_namespace` keeps the source path unchanged, whatever the count. The last path
//! component (the image name) is always kept; as in Harbor 2.x (`replaceNamespace`), a count larger
//! than the number of leading components is an error for that repository (its tags fail with a
//! message saying so) rather than a silent rename: the policy says to strip components that the
//! repository does not have.
//!
//! Invariants: the function is pure; whatever it returns is a valid distribution repository name
//! (lowercase path components `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`, at most
//! [`MAX_REPOSITORY_LEN`] characters), otherwise it returns a [`NamespaceError`] naming the problem.

/// Longest repository name the distribution registry accepts.
pub const MAX_REPOSITORY_LEN: usize = 255;

/// Why a destination repository name could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NamespaceError {
    pub message: String,
}

impl NamespaceError {
    fn new(message: impl Into<String>) -> Self {
        NamespaceError {
            message: message.into(),
        }
    }
}

/// The destination repository for `repository` under Harbor's namespace rules (see the module
/// documentation for the table).
pub fn rewrite_repository(
    repository: &str,
    dest_namespace: &str,
    replace_count: i32,
) -> Result<String, NamespaceError> {
    if replace_count < -1 {
        return Err(NamespaceError::new(format!(
            "dest_namespace_replace_count must be -1 or more, got {replace_count}"
        )));
    }
    check_repository(repository).map_err(|m| {
        NamespaceError::new(format!("source repository {repository:?} is invalid: {m}"))
    })?;
    if dest_namespace.is_empty() {
        return Ok(repository.to_string());
    }
    check_repository(dest_namespace).map_err(|m| {
        NamespaceError::new(format!("dest_namespace {dest_namespace:?} is invalid: {m}"))
    })?;

    let segments: Vec<&str> = repository.split('/').collect();
    // `check_repository` guarantees at least one segment; the last one (the image name) is kept.
    let leading = segments.len().saturating_sub(1);
    let strip = match usize::try_from(replace_count) {
        Ok(count) if count > leading => {
            return Err(NamespaceError::new(format!(
                "source repository {repository:?} has only {leading} path component(s) before its \
                 name, but dest_namespace_replace_count is {count}; lower the count or narrow the \
                 policy's name filter"
            )))
        }
        Ok(count) => count,
        Err(_) => leading, // -1: flatten all
    };
    let rest = segments.get(strip..).unwrap_or_default().join("/");
    let result = format!("{dest_namespace}/{rest}");
    if result.len() > MAX_REPOSITORY_LEN {
        return Err(NamespaceError::new(format!(
            "destination repository for {repository:?} would be {} characters long, more than the \
             {MAX_REPOSITORY_LEN} a registry accepts",
            result.len()
        )));
    }
    Ok(result)
}

/// Checks a repository path (or a namespace, which has the same grammar). Returns a message
/// describing the first problem.
pub(crate) fn check_repository(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("it is empty".to_string());
    }
    if path.len() > MAX_REPOSITORY_LEN {
        return Err(format!(
            "it is {} characters long, more than {MAX_REPOSITORY_LEN}",
            path.len()
        ));
    }
    for (i, component) in path.split('/').enumerate() {
        check_component(component).map_err(|m| format!("path component {} {m}", i + 1))?;
    }
    Ok(())
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` (the distribution reference grammar).
fn check_component(component: &str) -> Result<(), String> {
    if component.is_empty() {
        return Err("is empty (leading, trailing or doubled `/`)".to_string());
    }
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if let Some(bad) = component
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{component:?} contains {bad:?}; only lowercase letters, digits and `.`, `_`, `-` are allowed"
        ));
    }
    let (first, last) = (bytes[0], bytes[bytes.len() - 1]);
    if !alnum(first) || !alnum(last) {
        return Err(format!(
            "{component:?} must start and end with a lowercase letter or digit"
        ));
    }
    // Separators between alphanumeric runs: `.`, `_`, `__` or any number of `-`.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(format!(
                "{component:?} has the separator {sep:?}; use a single `.`, `_` or `__`, or dashes"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(repo: &str, ns: &str, count: i32) -> String {
        rewrite_repository(repo, ns, count).unwrap_or_else(|e| panic!("{repo} {ns} {count}: {e}"))
    }

    #[test]
    fn harbor_table() {
        assert_eq!(rw("a/b/c", "n", -1), "n/c");
        assert_eq!(rw("a/b/c", "n", 0), "n/a/b/c");
        assert_eq!(rw("a/b/c", "n", 1), "n/b/c");
        assert_eq!(rw("a/b/c", "n", 2), "n/c");
        for count in [3, 100] {
            let e = rewrite_repository("a/b/c", "n", count).unwrap_err();
            assert!(e.message.contains("only 2 path component(s)"), "{e}");
        }
    }

    #[test]
    fn empty_namespace_keeps_the_path_whatever_the_count() {
        for count in [-1, 0, 1, 2, 3, 50] {
            assert_eq!(rw("a/b/c", "", count), "a/b/c");
        }
    }

    #[test]
    fn single_segment_repository() {
        assert_eq!(rw("c", "n", -1), "n/c");
        assert_eq!(rw("c", "n", 0), "n/c");
        assert!(rewrite_repository("c", "n", 1).is_err());
    }

    #[test]
    fn multi_segment_namespace() {
        assert_eq!(
            rw("library/nginx", "mirror/hub", 0),
            "mirror/hub/library/nginx"
        );
        assert_eq!(rw("library/nginx", "mirror/hub", -1), "mirror/hub/nginx");
        assert_eq!(rw("platform/team/api", "us", 1), "us/team/api");
    }

    #[test]
    fn invalid_inputs_are_errors() {
        assert!(rewrite_repository("a/b", "n", -2).is_err());
        assert!(rewrite_repository("a//b", "n", 0).is_err());
        assert!(rewrite_repository("", "n", 0).is_err());
        assert!(rewrite_repository("a/B", "n", 0).is_err());
        let e = rewrite_repository("a/b", "Bad Ns", 0).unwrap_err();
        assert!(e.message.contains("dest_namespace"), "{e}");
        assert!(rewrite_repository("a", "n/", 0).is_err());
        assert!(rewrite_repository("a", "-n", 0).is_err());
    }

    #[test]
    fn too_long_result_is_an_error() {
        let ns = "n".repeat(190);
        let repo = format!("{}/{}", "a".repeat(10), "r".repeat(60));
        let e = rewrite_repository(&repo, &ns, 0).unwrap_err();
        assert!(e.message.contains("255"), "{e}");
        // Flattening keeps it short enough.
        assert!(rewrite_repository(&repo, &ns, -1).is_ok());
    }

    #[test]
    fn component_grammar() {
        for ok in ["a", "a.b", "a_b", "a__b", "a-b", "a---b", "0abc", "a.b-c_d"] {
            assert!(check_repository(ok).is_ok(), "{ok}");
        }
        for bad in [
            "A", "a..b", "a___b", "a.-b", ".a", "a.", "a b", "a/", "/a", "é",
        ] {
            assert!(check_repository(bad).is_err(), "{bad}");
        }
    }
}
