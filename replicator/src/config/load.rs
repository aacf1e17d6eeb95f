//! Loading config and policy files: reading, the structural walk, and how problems are reported
//! (which kind of document it is: [`super::shape`]; one problem: [`super::Problem`]).
//!
//! A document goes through three phases, each reporting **every** problem it finds with its JSON
//! path and a hint; when the structure has problems inside some registries or policies, the
//! semantics of the others are still checked ([`super::partial`]), so one round shows everything:
//! 1. syntax: serde_json, reported with line and column;
//! 2. structure: the document is walked against the schemars schema of the types
//!    ([`super::schema`]): unknown fields, wrong types, missing fields, bad enum values; then serde
//!    deserializes it;
//! 3. semantics ([`Config::validate`], in [`super::check`]): unique names, registry URLs,
//!    credential references, registry references (Harbor's ids and left-out sides resolved to
//!    names, [`super::references`]), destinations, filters, triggers (cron),
//!    namespaces, regions.
//!
//! Accepted documents: a config `{"registries": [...], "policies": [...]}`, a bare policy object,
//! or an array of policies. The last two are *policy files*: they load as a [`Config`] with no
//! registries, and their registry references are not checked (there is nothing to check them
//! against); their paths start at the policy (`filters[0].value`, `[1].name`).
//!
//! Invariants: no network I/O and no file I/O besides reading the document (credential files and
//! env vars are only read by [`super::Credential::resolve`]); no input makes this module panic; no
//! message ever contains a secret (string values are not echoed where a secret could have been
//! pasted, and credential errors name the env var or file, never its content).
use std::path::Path;

use serde_json::Value;

use super::partial::semantic_problems_of_sound_items;
use super::schema::structural_problems;
pub(super) use super::shape::{deserialize, Shape};
use super::Problem;
use super::{Config, RegistryConfig};
use crate::policy::Policy;

/// A config file that could not be used, with every problem found. Displays one line per problem:
/// `<source>: <path>: <message> (hint: ...)`.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(.source_name, .problems))]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<Problem>,
}

fn render(source_name: &str, problems: &[Problem]) -> String {
    if problems.is_empty() {
        return format!("{source_name}: invalid");
    }
    problems
        .iter()
        .map(|p| format!("{source_name}: {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads, parses and validates a config or policy file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source_name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ConfigError {
            source_name: source_name.clone(),
            problems: vec![Problem::new("", format!("cannot read the file: {e}"))
                .hint("check the path and its permissions")],
        })?;
        Self::from_slice(&bytes, &source_name)
    }

    /// Parses and validates a config document, a bare policy or an array of policies.
    /// `source_name` (usually the file name) prefixes every line of the error.
    pub fn from_slice(bytes: &[u8], source_name: &str) -> Result<Config, ConfigError> {
        let fail = |problems: Vec<Problem>| ConfigError {
            source_name: source_name.to_string(),
            problems,
        };
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| fail(vec![syntax_problem(&e)]))?;
        let shape = Shape::of(&value).map_err(|p| fail(vec![p]))?;
        let mut problems = structural_problems(&value, shape.entry());
        if !problems.is_empty() {
            // Every problem in one round: the sound items are still checked semantically.
            let semantic = semantic_problems_of_sound_items(&value, shape, &problems);
            problems.extend(semantic);
            return Err(fail(problems));
        }
        let config = deserialize(value, shape).map_err(|p| fail(vec![p]))?;
        let (config, problems) = config.check(shape, shape == Shape::Config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(problems))
        }
    }

    /// Semantic checks only (the value is already well-typed): every problem, with JSON paths as in
    /// a config file (`policies[0]...`). Registry references are checked when the config has
    /// registries; a config without registries is a set of standalone policies.
    pub fn validate(&self) -> Vec<Problem> {
        self.resolve().1
    }

    /// This config with every policy's registry references resolved to names (Harbor's `id`s and
    /// left-out sides: the local registry), and its semantic problems as [`Config::validate`]
    /// reports them; a reference that could not be resolved stays as written. A loaded config is
    /// resolved already.
    pub fn resolve(&self) -> (Config, Vec<Problem>) {
        self.check(Shape::Config, !self.registries.is_empty())
    }

    /// The registry called `name`.
    pub fn registry(&self, name: &str) -> Option<&RegistryConfig> {
        self.registries.iter().find(|r| r.name == name)
    }

    /// The policy called `name`.
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }
}

/// A JSON syntax error, with line and column.
fn syntax_problem(error: &serde_json::Error) -> Problem {
    let full = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    let hint = match error.classify() {
        serde_json::error::Category::Eof => {
            "the document ends too early: is a closing `}`, `]` or `\"` missing?"
        }
        _ => "look for a missing or trailing comma, an unquoted key or a missing quote near that position",
    };
    Problem::new(
        "",
        format!(
            "invalid JSON at line {}, column {}: {message}",
            error.line(),
            error.column()
        ),
    )
    .hint(hint)
}

/// Helpers shared by the tests of loading and of every semantic check.
#[cfg(test)]
pub(super) mod testing {
    use super::{Config, Problem};

    /// Every problem `json` has when loaded (none when it loads).
    pub(crate) fn problems(json: &str) -> Vec<Problem> {
        match Config::from_slice(json.as_bytes(), "test.json") {
            Ok(_) => Vec::new(),
            Err(e) => e.problems,
        }
    }

    /// The paths of [`problems`].
    pub(crate) fn paths(json: &str) -> Vec<String> {
        problems(json).into_iter().map(|p| p.path).collect()
    }

    pub(crate) const REGISTRIES: &str = r#"[
        {"name": "eu", "url": "https://registry.eu.example"},
        {"name": "us", "url": "https://registry.us.example:5000/"},
        {"name": "ap", "url": "https://registry.ap.example"}]"#;

    /// A config with the three registries of [`REGISTRIES`] and one policy.
    pub(crate) fn config_with_policy(policy: &str) -> String {
        format!(r#"{{"registries": {REGISTRIES}, "policies": [{policy}]}}"#)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{config_with_policy, paths, problems, REGISTRIES};
    use super::*;

    #[test]
    fn valid_config_loads() {
        let json = config_with_policy(
            r#"{"name": "eu-to-us", "src_registry": {"name": "eu"}, "dest_registry": {"name": "us"},
                "trigger": {"type": "scheduled", "trigger_settings": {"cron": "0 */5 * * * MON-FRI"}},
                "filters": [{"type": "name", "value": "platform/**"},
                            {"type": "platform", "value": "linux/arm64/v8"}],
                "dest_namespace": "mirror/eu", "dest_namespace_replace_count": 1, "deletion": true}"#,
        );
        let config = Config::from_slice(json.as_bytes(), "t").unwrap_or_else(|e| panic!("{e}"));
        assert!(config.validate().is_empty());
        assert!(config
            .policy("eu-to-us")
            .is_some_and(|p| p.replicates_deletion()));
        assert_eq!(
            config.registry("us").map(|r| r.url.as_str()),
            Some("https://registry.us.example:5000/")
        );
        assert!(config.registry("nope").is_none());
    }

    #[test]
    fn schema_and_reference_problems_come_out_in_one_round() {
        let json = format!(
            r#"{{"registries": {REGISTRIES}, "policies": [
                {{"name": "a", "src_registry": {{"name": "eu"}}, "dest_registry": {{"name": "us"}}, "bogus": 1}},
                {{"name": "b", "src_registry": {{"name": "eu"}}, "dest_registry": {{"name": "nowhere"}}}},
                {{"name": "b", "src_registry": {{"name": "eu"}}, "dest_registry": {{"name": "ap"}}}}]}}"#
        );
        let problems = problems(&json);
        let shown: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.path.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(shown[0].0, "policies[0].bogus");
        assert!(
            shown.contains(&(
                "policies[1].dest_registry.name",
                r#"unknown registry "nowhere""#
            )),
            "{shown:?}"
        );
        let duplicate = problems
            .iter()
            .find(|p| p.path == "policies[2].name")
            .unwrap_or_else(|| panic!("no duplicate reported: {shown:?}"));
        assert!(
            duplicate
                .hint
                .as_deref()
                .is_some_and(|h| h.contains("policies[1]")),
            "{duplicate:?}"
        );
    }

    #[test]
    fn a_registry_with_a_schema_problem_still_counts_as_declared() {
        let json = r#"{"registries": [
                {"name": "eu", "url": "https://registry.eu.example", "bogus": true},
                {"name": "us", "url": "https://registry.us.example"}],
            "policies": [{"name": "p", "src_registry": {"name": "eu"}, "dest_registry": {"name": "us"}}]}"#;
        assert_eq!(paths(json), ["registries[0].bogus"]);
    }

    #[test]
    fn a_policy_array_reports_schema_and_semantic_problems_of_different_items_together() {
        let json = r#"[{"name": "p", "src_registry": {"name": "a"}, "dest_registry": {"name": "b"}, "bogus": 1},
                       {"name": "q", "src_registry": {"name": "a"}, "dest_registry": {"name": "b"},
                        "trigger": {"type": "scheduled", "trigger_settings": {"cron": "not a cron"}}}]"#;
        let paths = paths(json);
        assert_eq!(paths[0], "[0].bogus");
        assert!(
            paths.iter().any(|p| p.starts_with("[1].trigger")),
            "{paths:?}"
        );
    }

    #[test]
    fn a_problem_outside_the_item_lists_leaves_semantics_for_the_next_round() {
        let json = format!(
            r#"{{"registries": {REGISTRIES}, "bogus": 1, "policies": [
                {{"name": "b", "src_registry": {{"name": "eu"}}, "dest_registry": {{"name": "nowhere"}}}}]}}"#
        );
        assert_eq!(paths(&json), ["bogus"]);
    }

    #[test]
    fn bare_policy_and_policy_arrays_skip_registry_checks() {
        let policy = r#"{"name": "p", "src_registry": {"name": "anywhere"}, "dest_registry": {"name": "else"},
                         "filters": [{"type": "tag", "value": "v*", "bogus": 1}]}"#;
        assert_eq!(paths(policy), ["filters[0].bogus"]);
        let fixed = policy.replace(r#", "bogus": 1"#, "");
        let config = Config::from_slice(fixed.as_bytes(), "t").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.policies.len(), 1);
        assert!(config.registries.is_empty());
        assert!(
            config.validate().is_empty(),
            "standalone policies are not checked against registries"
        );

        let array = format!("[{fixed}, {fixed}]");
        let problems = problems(&array);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "[1].name");
        assert!(problems[0].message.contains("duplicate policy name"));
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let p = problems("{\n  \"registries\": [,]\n}");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "");
        assert!(
            p[0].message
                .starts_with("invalid JSON at line 2, column 18"),
            "{}",
            p[0].message
        );
        let eof = problems("{\"policies\": [");
        assert!(eof[0]
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("ends too early")));
        assert_eq!(problems("")[0].path, "");
        assert_eq!(
            problems("\u{feff}{}").len(),
            1,
            "a BOM is a syntax error, not a panic"
        );
        assert_eq!(paths("42"), [""]);
        assert!(problems("{}").is_empty());
    }

    #[test]
    fn display_lists_every_problem_on_its_own_line() {
        let err = Config::from_slice(
            br#"{"registries": [{"name": "a"}], "bogus": 1}"#,
            "cfg.json",
        )
        .unwrap_err();
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "cfg.json: bogus: unknown field `bogus` (hint: allowed fields: policies, regions, registries)",
                "cfg.json: registries[0].url: missing required field `url` (hint: Base URL, `https://host[:port]` (or `http://` with `insecure: true`).)",
            ]
        );
        let syntax = Config::from_slice(b"{", "x.json").unwrap_err().to_string();
        assert!(
            syntax.starts_with("x.json: $: invalid JSON at line 1, column 1"),
            "{syntax}"
        );
    }

    #[test]
    fn harbors_deprecated_deletion_turns_on_replicate_deletion() {
        let base = r#"{"name": "p", "src_registry": {"name": "a"}, "dest_registry": {"name": "b"}"#;
        let config = Config::from_slice(format!(r#"{base}, "deletion": true}}"#).as_bytes(), "t")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            config.policies[0].replicate_deletion,
            "folded at load, so every reader of the field sees it"
        );
    }

    #[test]
    fn deletion_and_replicate_deletion_may_both_be_set_when_they_agree() {
        let base = r#"{"name": "p", "src_registry": {"name": "a"}, "dest_registry": {"name": "b"}"#;
        assert!(problems(&format!(
            r#"{base}, "deletion": true, "replicate_deletion": true}}"#
        ))
        .is_empty());
        let disagree = problems(&format!(
            r#"{base}, "deletion": false, "replicate_deletion": true}}"#
        ));
        assert_eq!(disagree.len(), 1, "{disagree:?}");
        assert_eq!(disagree[0].path, "deletion");
    }

    #[test]
    fn load_reports_unreadable_files() {
        let err = Config::load(Path::new("/nonexistent/ferry.json")).unwrap_err();
        assert_eq!(err.source_name, "/nonexistent/ferry.json");
        assert_eq!(err.problems.len(), 1);
        assert!(err.problems[0].message.starts_with("cannot read the file"));
    }

    #[test]
    fn hostile_inputs_are_refused_with_a_problem_and_no_panic() {
        let many_types = r#"{"registries": {"a": 1}, "policies": "x"}"#;
        assert_eq!(paths(many_types), ["policies", "registries"]);
        let deep = "[".repeat(10_000);
        for (name, bytes) in [
            ("deep", deep.as_bytes()),
            ("mixed", br#"[1, "a", null, {"name": 5}]"#.as_slice()),
            ("huge-number", br#"{"policies": [{"name": "p", "src_registry": {"name": "a"}, "dest_namespace_replace_count": 99999999999999999999}]}"#.as_slice()),
            ("binary", [0xff, 0xfe, 0x00].as_slice()),
        ] {
            let err = Config::from_slice(bytes, name)
                .err()
                .unwrap_or_else(|| panic!("{name}: accepted"));
            assert_eq!(err.source_name, name);
            assert!(!err.problems.is_empty(), "{name}: refused without a problem");
        }
    }
}
