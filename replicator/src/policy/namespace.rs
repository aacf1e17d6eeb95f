//! Repository names, tags and digests: the **one grammar** every name that enters Ferry is checked
//! against (distribution webhooks, Harbor events, the names a polled registry lists, events from
//! peer regions, admin API requests), and Harbor's `dest_namespace` /
//! `dest_namespace_replace_count` table that builds destination names.
//!
//! # Grammar (the distribution spec's)
//! - repository: path components `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`, at most
//!   [`MAX_REPOSITORY_LEN`] characters ([`check_repository`]). Empty, `.` and `..` components are
//!   refused, so a name can never step out of `/v2/<name>/` once a URL resolves it.
//! - tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}` ([`check_tag`]).
//! - digest: `algorithm:hex` for the algorithms Ferry can verify, `sha256:<64 hex>` and
//!   `sha512:<128 hex>`, lowercase ([`check_digest`]).
//!
//! # Namespace rewrite
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
//! Invariants: every function is pure and never panics, whatever the input; whatever
//! [`rewrite_repository`] returns passes [`check_repository`], otherwise it returns a
//! [`NamespaceError`] naming the problem; a [`NameError`] quotes at most [`SHOWN_CHARS`]
//! characters of the offending value (it may be hostile and megabytes long).

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
    check_repository(repository).map_err(|e| NamespaceError::new(format!("source {e}")))?;
    if dest_namespace.is_empty() {
        return Ok(repository.to_string());
    }
    check_repository(dest_namespace)
        .map_err(|e| NamespaceError::new(format!("dest_namespace is invalid: {e}")))?;

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

/// Longest tag the distribution registry accepts.
pub const MAX_TAG_LEN: usize = 128;

/// How many characters of an offending value a [`NameError`] quotes.
pub const SHOWN_CHARS: usize = 64;

/// A repository name, tag or digest outside the grammar (see the module documentation). `Display`
/// reads `repository "apps/../x": path component 2 ".." must start and end with a lowercase
/// letter or digit`; callers prefix the field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value}: {problem}")]
pub struct NameError {
    /// `repository`, `tag` or `digest`.
    pub kind: &'static str,
    /// The offending value, quoted, cut to [`SHOWN_CHARS`] characters.
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
}

impl NameError {
    fn new(kind: &'static str, value: &str, problem: impl Into<String>) -> NameError {
        NameError {
            kind,
            value: quoted(value),
            problem: problem.into(),
        }
    }
}

/// `value` quoted for a message about untrusted input: escaped like `{:?}` and cut to
/// [`SHOWN_CHARS`] characters (`"aaaa…"… (4194304 bytes)` when longer).
pub fn quoted(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
        None => format!("{value:?}"),
    }
}

/// Checks a repository path (or a namespace, which has the same grammar).
pub fn check_repository(path: &str) -> Result<(), NameError> {
    let error = |problem: String| NameError::new("repository", path, problem);
    if path.is_empty() {
        return Err(error("it is empty".to_string()));
    }
    if path.len() > MAX_REPOSITORY_LEN {
        return Err(error(format!(
            "it is {} characters long, more than {MAX_REPOSITORY_LEN}",
            path.len()
        )));
    }
    for (i, component) in path.split('/').enumerate() {
        check_component(component).map_err(|m| error(format!("path component {} {m}", i + 1)))?;
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

/// Checks a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<(), NameError> {
    let error = |problem: &str| Err(NameError::new("tag", tag, problem));
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let bytes = tag.as_bytes();
    match bytes.first() {
        None => error("it is empty"),
        Some(_) if bytes.len() > MAX_TAG_LEN => error(&format!(
            "it is {} bytes long, more than {MAX_TAG_LEN}",
            bytes.len()
        )),
        Some(first) if !word(first) => error("it must start with a letter, digit or `_`"),
        Some(_) if !bytes.iter().all(|b| word(b) || *b == b'.' || *b == b'-') => {
            error("it may only contain letters, digits, `_`, `.` and `-`")
        }
        Some(_) => Ok(()),
    }
}

/// Checks `sha256:<64 hex>` or `sha512:<128 hex>` (lowercase): the digests Ferry can verify.
pub fn check_digest(digest: &str) -> Result<(), NameError> {
    let hex = match digest.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 => Some(hex),
        Some(("sha512", hex)) if hex.len() == 128 => Some(hex),
        _ => None,
    };
    match hex {
        Some(hex) if hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => Ok(()),
        _ => Err(NameError::new(
            "digest",
            digest,
            "it is not `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`",
        )),
    }
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

    #[test]
    fn dot_segments_and_empty_segments_are_not_repositories() {
        for bad in [
            "apps/../../v2/_catalog",
            "apps/..",
            "../apps",
            "apps/./x",
            ".",
            "..",
            "apps//x",
            "Platform/../../UPPER?x=1",
            "team/app?x=1",
            "team/app#x",
            "team/app%2F..",
            "team/app\nx",
        ] {
            let e = check_repository(bad).unwrap_err();
            assert_eq!(e.kind, "repository", "{bad}");
        }
        let e = check_repository("apps/../../v2/_catalog").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"repository "apps/../../v2/_catalog": path component 2 ".." must start and end with a lowercase letter or digit"#
        );
        assert!(check_repository(&"a".repeat(256)).is_err());
        assert!(check_repository(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn tag_grammar() {
        for ok in ["v1.2.3-rc_1", "_", "latest", "A", &"a".repeat(128)] {
            assert!(check_tag(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a b",
            "v1|x",
            "v1\nx",
            "v1:x",
            "v1/x",
            "é",
            &"a".repeat(129),
        ] {
            assert_eq!(check_tag(bad).unwrap_err().kind, "tag", "{bad:?}");
        }
    }

    #[test]
    fn digest_grammar() {
        assert!(check_digest(&format!("sha256:{}", "0".repeat(64))).is_ok());
        assert!(check_digest(&format!("sha512:{}", "f".repeat(128))).is_ok());
        for bad in [
            "sha256:xyz".to_string(),
            "md5:abc".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "0".repeat(63)),
            format!("sha512:{}", "0".repeat(64)),
            format!("sha256:{}|x", "0".repeat(62)),
            "sha256".to_string(),
            String::new(),
        ] {
            assert_eq!(check_digest(&bad).unwrap_err().kind, "digest", "{bad:?}");
        }
    }

    #[test]
    fn errors_quote_a_bounded_part_of_a_huge_value() {
        let huge = format!("{}é{}", "A".repeat(63), "x".repeat(4 << 20));
        let e = check_repository(&huge).unwrap_err();
        assert!(e.to_string().len() < 300, "{}", e.to_string().len());
        assert!(
            e.value.ends_with(&format!("… ({} bytes)", huge.len())),
            "{}",
            e.value
        );
        let e = check_tag(&huge).unwrap_err();
        assert!(e.to_string().len() < 300);
    }
}
