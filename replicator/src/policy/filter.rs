//! A policy's filters, compiled once into a [`Selector`] that answers "does this policy cover
//! that repository / tag / resource / platform?".
//!
//! Semantics (Harbor-compatible, doublestar globs):
//! - `name` globs match the repository path, `tag` globs match tags. `*` and `?` never cross `/`,
//!   `**` does (as a whole path component: `platform/**` matches `platform/a/b`), `{a,b}`
//!   alternates and `[..]` is a character class. Matching is case-sensitive.
//! - Filters of the same type AND together; `decoration: excludes` negates a filter. A type with
//!   no filter matches everything.
//! - **Exception, `platform`:** several `matches` platform filters are OR'ed (they list the
//!   platforms to copy; ANDing distinct platforms could never match), and every `excludes`
//!   platform filter removes one. `os/arch` without a variant matches every variant; the usual
//!   aliases and default variants are normalized (`aarch64` = `arm64`, `arm64` = `arm64/v8`,
//!   `x86_64` = `amd64`, `arm` = `arm/v7`).
//! - `resource`: `image` matches images, `artifact` matches everything else (Helm charts, WASM,
//!   signatures...).
//! - `artifact_type` (Ferry's): globs over a referrer's OCI artifact type (`artifactType`, else its
//!   config media type), deciding which referrers follow their subject; they AND together like
//!   `tag`. A referrer without a type is matched as the empty string.
//! - `label`: labels live in Harbor (its API, not the distribution API), so the worker reads a
//!   source artifact's labels from Harbor only when the policy has label filters
//!   ([`Selector::matches_labels`]).
//!
//! Invariants: compiling reports every bad filter with its path relative to the policy
//! (`filters[1].value`); matching is pure and never panics.
use globset::{GlobBuilder, GlobMatcher};

use super::{Decoration, Filter, FilterKind, Policy};

/// A filter that could not be compiled. `path` is relative to the policy, e.g. `filters[1].value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SelectorError {
    pub path: String,
    pub message: String,
}

/// A policy's filters, compiled once.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    names: Vec<(GlobMatcher, Decoration)>,
    tags: Vec<(GlobMatcher, Decoration)>,
    resources: Vec<(bool, Decoration)>,
    platforms_included: Vec<PlatformFilter>,
    platforms_excluded: Vec<PlatformFilter>,
    labels: Vec<LabelFilter>,
    artifact_types: Vec<(GlobMatcher, Decoration)>,
}

/// A `label` filter: `key` or `key=value`. Stored for sources that have labels (Harbor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelFilter {
    pub key: String,
    /// `None` for a bare `key` filter (any value).
    pub value: Option<String>,
    pub decoration: Decoration,
}

/// A normalized `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl Platform {
    fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let os = os.to_ascii_lowercase();
        let architecture = architecture.to_ascii_lowercase();
        let variant = variant
            .filter(|v| !v.is_empty())
            .map(str::to_ascii_lowercase);
        let (architecture, variant) = match (architecture.as_str(), variant) {
            ("x86_64" | "x86-64", v) => ("amd64".to_string(), v),
            ("aarch64" | "arm64", None) => ("arm64".to_string(), Some("v8".to_string())),
            ("aarch64", v) => ("arm64".to_string(), v),
            ("armhf", None) => ("arm".to_string(), Some("v7".to_string())),
            ("armel", None) => ("arm".to_string(), Some("v6".to_string())),
            ("arm", None) => ("arm".to_string(), Some("v7".to_string())),
            ("i386" | "i686", v) => ("386".to_string(), v),
            (_, v) => (architecture, v),
        };
        Platform {
            os,
            architecture,
            variant,
        }
    }
}

/// A `platform` filter value, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlatformFilter {
    platform: Platform,
    /// Whether the filter named a variant; without one it covers every variant of the architecture.
    written_variant: bool,
}

impl PlatformFilter {
    fn covers(&self, other: &Platform) -> bool {
        self.platform.os == other.os
            && self.platform.architecture == other.architecture
            && (!self.written_variant || self.platform.variant == other.variant)
    }
}

/// Parses `os/arch[/variant]`.
fn parse_platform(value: &str) -> Result<PlatformFilter, String> {
    let parts: Vec<&str> = value.split('/').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(format!(
            "platform {value:?} is not `os/arch` or `os/arch/variant`"
        ));
    }
    for part in &parts {
        let valid = !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            return Err(format!(
                "platform {value:?} has an invalid component {part:?} (letters, digits, `.`, `_`, `-`)"
            ));
        }
    }
    let variant = parts.get(2).copied();
    Ok(PlatformFilter {
        platform: Platform::new(parts[0], parts[1], variant),
        written_variant: variant.is_some(),
    })
}

/// A `label` filter value: `key` or `key=value`.
fn parse_label(value: &str) -> Result<(String, Option<String>), String> {
    let (key, val) = match value.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (value, None),
    };
    if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "label {value:?} needs a non-empty key without spaces (`key` or `key=value`)"
        ));
    }
    Ok((key.to_string(), val.map(str::to_string)))
}

/// Compiles a doublestar glob.
fn compile_glob(pattern: &str) -> Result<GlobMatcher, String> {
    if pattern.is_empty() {
        return Err("empty pattern matches nothing; remove the filter or use `**`".to_string());
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .empty_alternates(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("invalid glob {pattern:?}: {}", e.kind()))
}

impl Selector {
    /// Compiles the policy's filters; fails on the first bad one (see [`Selector::check`] for all).
    pub fn new(policy: &Policy) -> Result<Selector, SelectorError> {
        Self::compile(&policy.filters).map_err(|errors| {
            errors.into_iter().next().unwrap_or_else(|| SelectorError {
                path: "filters".to_string(),
                message: "invalid filters".to_string(),
            })
        })
    }

    /// Every problem in the policy's filters (empty when [`Selector::new`] succeeds).
    pub fn check(policy: &Policy) -> Vec<SelectorError> {
        Self::compile(&policy.filters).err().unwrap_or_default()
    }

    /// Checks one filter on its own; the message says what is wrong with its `value`.
    pub fn check_filter(filter: &Filter) -> Result<(), String> {
        Selector::default().add(filter)
    }

    /// Compiles all filters, collecting every error. `Err` is never empty.
    fn compile(filters: &[Filter]) -> Result<Selector, Vec<SelectorError>> {
        let mut selector = Selector::default();
        let errors: Vec<SelectorError> = filters
            .iter()
            .enumerate()
            .filter_map(|(j, filter)| {
                selector.add(filter).err().map(|message| SelectorError {
                    path: format!("filters[{j}].value"),
                    message,
                })
            })
            .collect();
        if errors.is_empty() {
            Ok(selector)
        } else {
            Err(errors)
        }
    }

    /// Compiles one filter into this selector.
    fn add(&mut self, filter: &Filter) -> Result<(), String> {
        let value = filter.value.as_str();
        let decoration = filter.decoration;
        match filter.kind {
            FilterKind::Name => self.names.push((compile_glob(value)?, decoration)),
            FilterKind::Tag => self.tags.push((compile_glob(value)?, decoration)),
            FilterKind::Resource => {
                let is_image = match value {
                    "image" => true,
                    "artifact" => false,
                    other => {
                        return Err(format!("resource {other:?} is not `image` or `artifact`"))
                    }
                };
                self.resources.push((is_image, decoration));
            }
            FilterKind::Platform => {
                let platform = parse_platform(value)?;
                match decoration {
                    Decoration::Matches => self.platforms_included.push(platform),
                    Decoration::Excludes => self.platforms_excluded.push(platform),
                }
            }
            FilterKind::ArtifactType => {
                self.artifact_types.push((compile_glob(value)?, decoration))
            }
            FilterKind::Label => {
                let (key, value) = parse_label(value)?;
                self.labels.push(LabelFilter {
                    key,
                    value,
                    decoration,
                });
            }
        }
        Ok(())
    }

    /// Is the repository (full path, e.g. `platform/api`) covered by the `name` filters?
    pub fn matches_repository(&self, repository: &str) -> bool {
        all_globs(&self.names, repository)
    }

    /// Is a referrer of this artifact type covered by the `artifact_type` filters?
    pub fn matches_artifact_type(&self, artifact_type: Option<&str>) -> bool {
        all_globs(&self.artifact_types, artifact_type.unwrap_or_default())
    }

    /// Is the tag covered by the `tag` filters?
    pub fn matches_tag(&self, tag: &str) -> bool {
        all_globs(&self.tags, tag)
    }

    /// `resource` filter: `is_image` is false for artifacts (config media type is not an image config).
    pub fn matches_resource(&self, is_image: bool) -> bool {
        self.resources
            .iter()
            .all(|(image, decoration)| (*image == is_image) == (*decoration == Decoration::Matches))
    }

    /// Does the policy restrict platforms? When false, every platform of an index is copied.
    pub fn has_platform_filter(&self) -> bool {
        !self.platforms_included.is_empty() || !self.platforms_excluded.is_empty()
    }

    /// Is this platform (from an image index entry) covered? Included platforms are OR'ed, excluded
    /// ones removed; see the module documentation.
    pub fn matches_platform(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        let platform = Platform::new(os, architecture, variant);
        let included = self.platforms_included.is_empty()
            || self.platforms_included.iter().any(|f| f.covers(&platform));
        let excluded = self.platforms_excluded.iter().any(|f| f.covers(&platform));
        included && !excluded
    }

    /// The policy's `label` filters.
    pub fn label_filters(&self) -> &[LabelFilter] {
        &self.labels
    }

    /// Does the policy filter on labels (so its source's labels must be read)?
    pub fn has_label_filters(&self) -> bool {
        !self.labels.is_empty()
    }

    /// Are these labels (Harbor label names) covered by the `label` filters? A `key` filter
    /// matches a label named `key` or `key=<anything>`; `key=value` matches the label named
    /// exactly that. `matches` requires such a label, `excludes` forbids it; filters AND together.
    pub fn matches_labels(&self, labels: &[String]) -> bool {
        self.labels.iter().all(|f| {
            let present = labels.iter().any(|l| match &f.value {
                Some(v) => l.split_once('=') == Some((f.key.as_str(), v.as_str())),
                None => l == &f.key || l.split_once('=').is_some_and(|(k, _)| k == f.key),
            });
            present == (f.decoration == Decoration::Matches)
        })
    }
}

/// AND of glob filters; `excludes` negates. No filter = match.
fn all_globs(filters: &[(GlobMatcher, Decoration)], candidate: &str) -> bool {
    filters
        .iter()
        .all(|(glob, decoration)| glob.is_match(candidate) == (*decoration == Decoration::Matches))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(filters: &[(FilterKind, &str, Decoration)]) -> Policy {
        let mut policy: Policy = serde_json::from_value(serde_json::json!({
            "name": "p", "src_registry": {"name": "a"}, "dest_registry": {"name": "b"}
        }))
        .expect("a minimal policy");
        policy.filters = filters
            .iter()
            .map(|(kind, value, decoration)| Filter {
                kind: *kind,
                value: value.to_string(),
                decoration: *decoration,
            })
            .collect();
        policy
    }

    fn selector(filters: &[(FilterKind, &str, Decoration)]) -> Selector {
        Selector::new(&policy(filters)).expect("filters compile")
    }

    use Decoration::{Excludes as X, Matches as M};
    use FilterKind::{Label, Name, Platform as Plat, Resource, Tag};

    #[test]
    fn no_filters_match_everything() {
        let s = selector(&[]);
        assert!(s.matches_repository("a/b/c"));
        assert!(s.matches_tag("anything"));
        assert!(s.matches_resource(true) && s.matches_resource(false));
        assert!(!s.has_platform_filter());
        assert!(s.matches_platform("linux", "s390x", None));
    }

    #[test]
    fn doublestar_crosses_slashes_single_star_does_not() {
        let deep = selector(&[(Name, "platform/**", M)]);
        assert!(deep.matches_repository("platform/a"));
        assert!(deep.matches_repository("platform/a/b"));
        assert!(!deep.matches_repository("other/a"));
        let shallow = selector(&[(Name, "platform/*", M)]);
        assert!(shallow.matches_repository("platform/a"));
        assert!(!shallow.matches_repository("platform/a/b"));
        let q = selector(&[(Name, "platform/ap?", M)]);
        assert!(q.matches_repository("platform/api"));
        assert!(!q.matches_repository("platform/ap/"));
        let leading = selector(&[(Name, "**/nginx", M)]);
        assert!(leading.matches_repository("library/nginx"));
        assert!(leading.matches_repository("a/b/nginx"));
    }

    #[test]
    fn alternation_and_classes() {
        let s = selector(&[(Tag, "{v*,latest}", M)]);
        assert!(s.matches_tag("v1.2.3"));
        assert!(s.matches_tag("latest"));
        assert!(!s.matches_tag("dev"));
        assert!(!s.matches_tag("latest-rc"));
        let c = selector(&[(Tag, "v[0-9].*", M)]);
        assert!(c.matches_tag("v1.0"));
        assert!(!c.matches_tag("vx.0"));
    }

    #[test]
    fn label_filters_require_or_forbid_labels() {
        let s = Selector::new(&policy(&[
            (FilterKind::Label, "release", Decoration::Matches),
            (FilterKind::Label, "env=dev", Decoration::Excludes),
        ]))
        .unwrap();
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(s.has_label_filters());
        assert!(s.matches_labels(&l(&["release"])));
        assert!(s.matches_labels(&l(&["release=2024", "env=prod"])));
        assert!(!s.matches_labels(&l(&["release", "env=dev"])));
        assert!(!s.matches_labels(&l(&["env=prod"])));
        assert!(!s.matches_labels(&[]));
        assert!(Selector::default().matches_labels(&[]));
        assert!(!Selector::default().has_label_filters());
    }

    #[test]
    fn artifact_type_globs_select_referrers() {
        let cosign = "application/vnd.dev.cosign.artifact.sig.v1+json";
        let s = Selector::new(&policy(&[(
            FilterKind::ArtifactType,
            "application/vnd.dev.cosign*",
            Decoration::Excludes,
        )]))
        .unwrap();
        assert!(!s.matches_artifact_type(Some(cosign)));
        assert!(s.matches_artifact_type(Some("application/spdx+json")));
        assert!(s.matches_artifact_type(None));
        let only_sboms = Selector::new(&policy(&[(
            FilterKind::ArtifactType,
            "application/{spdx,vnd.cyclonedx}+json",
            Decoration::Matches,
        )]))
        .unwrap();
        assert!(only_sboms.matches_artifact_type(Some("application/spdx+json")));
        assert!(only_sboms.matches_artifact_type(Some("application/vnd.cyclonedx+json")));
        assert!(!only_sboms.matches_artifact_type(Some(cosign)));
        assert!(!only_sboms.matches_artifact_type(None));
        assert!(Selector::default().matches_artifact_type(Some(cosign)));
    }

    #[test]
    fn same_type_filters_and_together_and_excludes_negate() {
        let s = selector(&[
            (Name, "platform/**", M),
            (Name, "platform/internal/**", X),
            (Tag, "v*", M),
            (Tag, "*-rc*", X),
        ]);
        assert!(s.matches_repository("platform/api"));
        assert!(!s.matches_repository("platform/internal/db"));
        assert!(!s.matches_repository("team/api"));
        assert!(s.matches_tag("v1"));
        assert!(!s.matches_tag("v2-rc1"));
        assert!(!s.matches_tag("latest"));
        let only_excludes = selector(&[(Tag, "*-dev", X)]);
        assert!(only_excludes.matches_tag("v1"));
        assert!(!only_excludes.matches_tag("feature-dev"));
    }

    #[test]
    fn resource_filter() {
        let images = selector(&[(Resource, "image", M)]);
        assert!(images.matches_resource(true));
        assert!(!images.matches_resource(false));
        let artifacts = selector(&[(Resource, "artifact", M)]);
        assert!(!artifacts.matches_resource(true));
        assert!(artifacts.matches_resource(false));
        let not_artifacts = selector(&[(Resource, "artifact", X)]);
        assert!(not_artifacts.matches_resource(true));
        assert!(!not_artifacts.matches_resource(false));
    }

    #[test]
    fn platform_matches_are_ored_and_excludes_remove() {
        let s = selector(&[(Plat, "linux/amd64", M), (Plat, "linux/arm64/v8", M)]);
        assert!(s.has_platform_filter());
        assert!(s.matches_platform("linux", "amd64", None));
        assert!(s.matches_platform("linux", "arm64", Some("v8")));
        assert!(
            s.matches_platform("linux", "arm64", None),
            "arm64 defaults to v8"
        );
        assert!(!s.matches_platform("linux", "arm", Some("v7")));
        assert!(!s.matches_platform("windows", "amd64", None));

        let any_arm = selector(&[(Plat, "linux/arm", M)]);
        assert!(any_arm.matches_platform("linux", "arm", Some("v6")));
        assert!(any_arm.matches_platform("linux", "arm", Some("v7")));

        let all_but_arm_v6 = selector(&[(Plat, "linux/arm/v6", X)]);
        assert!(all_but_arm_v6.has_platform_filter());
        assert!(all_but_arm_v6.matches_platform("linux", "amd64", None));
        assert!(all_but_arm_v6.matches_platform("linux", "arm", Some("v7")));
        assert!(!all_but_arm_v6.matches_platform("linux", "arm", Some("v6")));

        let aliases = selector(&[(Plat, "linux/x86_64", M), (Plat, "linux/aarch64", M)]);
        assert!(aliases.matches_platform("linux", "amd64", None));
        assert!(aliases.matches_platform("linux", "arm64", Some("v8")));
    }

    #[test]
    fn labels_are_parsed_into_key_and_value() {
        let s = selector(&[(Label, "env=prod", M), (Label, "deprecated", X)]);
        assert_eq!(s.label_filters().len(), 2);
        assert_eq!(s.label_filters()[0].key, "env");
        assert_eq!(s.label_filters()[0].value.as_deref(), Some("prod"));
        assert_eq!(s.label_filters()[1].value, None);
        assert!(s.matches_repository("x") && s.matches_tag("y"));
    }

    #[test]
    fn every_bad_filter_is_reported_with_its_path() {
        let p = policy(&[
            (Name, "ok/**", M),
            (Name, "[unclosed", M),
            (Tag, "{v1,v2", M),
            (Resource, "chart", M),
            (Plat, "linux", M),
            (Plat, "linux/amd64/v1/extra", M),
            (Label, "=x", M),
            (Tag, "", M),
        ]);
        let errors = Selector::check(&p);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "filters[1].value",
                "filters[2].value",
                "filters[3].value",
                "filters[4].value",
                "filters[5].value",
                "filters[6].value",
                "filters[7].value"
            ]
        );
        let first = Selector::new(&p).unwrap_err();
        assert_eq!(first.path, "filters[1].value");
        assert!(first.message.contains("[unclosed"), "{first}");
        assert!(Selector::check(&policy(&[(Name, "a/**", M)])).is_empty());
    }
}
