//! The files in `policies/`: every example validates, `schema.json` is the schema generated from
//! the Rust types, and malformed documents are reported problem by problem with exact JSON paths.
//!
//! Regenerate the schema with
//! `cargo nextest run -p ferry-replicator --test policy_files --run-ignored only regenerate_schema_json`.
use std::path::{Path, PathBuf};

use ferry_replicator::config::{json_schema, Config, Problem};

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn problems(json: &str) -> Vec<Problem> {
    match Config::from_slice(json.as_bytes(), "test.json") {
        Ok(_) => Vec::new(),
        Err(e) => {
            assert_eq!(e.source_name, "test.json");
            e.problems
        }
    }
}

fn paths(json: &str) -> Vec<String> {
    problems(json).into_iter().map(|p| p.path).collect()
}

fn generated_schema() -> String {
    let mut generated = serde_json::to_string_pretty(&json_schema()).expect("schema serializes");
    generated.push('\n');
    generated
}

#[test]
fn schema_json_is_fresh() {
    let on_disk = std::fs::read_to_string(policies_dir().join("schema.json")).unwrap_or_default();
    assert!(
        on_disk == generated_schema(),
        "policies/schema.json is stale: run `cargo nextest run -p ferry-replicator --test policy_files --run-ignored only regenerate_schema_json`"
    );
}

/// Not a check: writes `policies/schema.json` from the types (reported as skipped in a normal run).
#[test]
#[ignore = "rewrites policies/schema.json; run it on purpose to regenerate the schema"]
fn regenerate_schema_json() {
    std::fs::write(policies_dir().join("schema.json"), generated_schema())
        .expect("write policies/schema.json");
}

#[test]
fn every_example_validates() {
    let mut examples: Vec<PathBuf> = std::fs::read_dir(policies_dir())
        .expect("policies/ exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "schema.json"))
        .collect();
    examples.sort();
    let names: Vec<String> = examples
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for expected in [
        "bidirectional.json",
        "local-demo.json",
        "pull-from-hub.json",
        "push-eu-to-us.json",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    for example in &examples {
        let config = Config::load(example).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.validate(), Vec::new(), "{}", example.display());
        assert!(!config.registries.is_empty() && !config.policies.is_empty());
        for policy in &config.policies {
            ferry_replicator::policy::Selector::new(policy)
                .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
        }
    }
}

#[test]
fn local_demo_is_what_the_scripts_expect() {
    let config =
        Config::load(&policies_dir().join("local-demo.json")).unwrap_or_else(|e| panic!("{e}"));
    let src = config.registry("src").expect("src registry");
    let dst = config.registry("dst").expect("dst registry");
    assert_eq!(
        (src.url.as_str(), src.insecure),
        ("http://127.0.0.1:5001", true)
    );
    assert_eq!(
        (dst.url.as_str(), dst.insecure),
        ("http://127.0.0.1:5002", true)
    );
    assert!(src.credential.is_none() && dst.credential.is_none());
    let demo = config.policy("demo").expect("demo policy");
    assert_eq!(demo.mode, ferry_replicator::policy::Mode::Push);
    assert_eq!(
        demo.trigger.kind,
        ferry_replicator::policy::TriggerKind::Manual
    );
    assert!(demo.filters.is_empty());
}

const REGISTRIES: &str = r#"[{"name": "eu", "url": "https://registry.eu.example"},
                             {"name": "us", "url": "https://registry.us.example"}]"#;

fn config(policy: &str) -> String {
    format!(r#"{{"registries": {REGISTRIES}, "policies": [{policy}]}}"#)
}

#[test]
fn unknown_field_inside_a_filter() {
    let json = config(
        r#"{"name": "p", "src_registry": {"name": "eu"}, "dest_registry": {"name": "us"},
            "filters": [{"type": "name", "value": "a/**", "bogus": true}]}"#,
    );
    let p = problems(&json);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].path, "policies[0].filters[0].bogus");
    assert_eq!(p[0].message, "unknown field `bogus`");
    assert_eq!(
        p[0].hint.as_deref(),
        Some("allowed fields: decoration, type, value")
    );
}

#[test]
fn unknown_registry() {
    let json = config(
        r#"{"name": "p", "src_registry": {"name": "eu"}, "dest_registry": {"name": "asia"}}"#,
    );
    let p = problems(&json);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].path, "policies[0].dest_registry.name");
    assert_eq!(p[0].message, r#"unknown registry "asia""#);
    assert_eq!(p[0].hint.as_deref(), Some("declared registries: eu, us"));
}

#[test]
fn bad_glob() {
    let json = config(
        r#"{"name": "p", "src_registry": {"name": "eu"}, "dest_registry": {"name": "us"},
            "filters": [{"type": "name", "value": "a/**"}, {"type": "tag", "value": "v[0-9"}]}"#,
    );
    let p = problems(&json);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].path, "policies[0].filters[1].value");
    assert!(p[0].message.contains("invalid glob"), "{}", p[0].message);
}

#[test]
fn several_structural_problems_are_all_reported() {
    let json = r#"{
      "registries": [{"name": "eu", "url": "https://eu", "insecure": "no"},
                     {"url": "https://us"}],
      "policies": [{"name": "p", "mode": "mirror", "src_registry": {"name": "eu"},
                    "trigger": {"type": "event_based", "cron": "* * * * *"},
                    "filters": [{"type": "tag", "value": "v*", "decoration": "exclude"},
                                {"type": "name", "value": "a", "bogus": 1}]}]
    }"#;
    assert_eq!(
        paths(json),
        [
            "policies[0].filters[0].decoration",
            "policies[0].filters[1].bogus",
            "policies[0].mode",
            "policies[0].trigger.cron",
            "registries[0].insecure",
            "registries[1].name",
        ]
    );
}

#[test]
fn several_semantic_problems_are_all_reported() {
    let json = r#"{
      "registries": [{"name": "eu", "url": "http://eu"}, {"name": "eu", "url": "https://eu2/v2"}],
      "policies": [{"name": "a b", "src_registry": {"name": "eu"}, "dest_registry": {"name": "us"},
                    "trigger": {"type": "scheduled", "trigger_settings": {"cron": "0 0 * *"}},
                    "dest_namespace": "UP/case",
                    "filters": [{"type": "platform", "value": "linux"}, {"type": "resource", "value": "chart"}]}]
    }"#;
    let p = problems(json);
    let got: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        got,
        [
            "registries[0].url",
            "registries[1].name",
            "registries[1].url",
            "policies[0].name",
            "policies[0].dest_registry.name",
            "policies[0].dest_namespace",
            "policies[0].trigger.trigger_settings.cron",
            "policies[0].filters[0].value",
            "policies[0].filters[1].value",
        ],
        "{p:#?}"
    );
    assert!(p.iter().all(|p| p.hint.is_some()), "{p:#?}");
    let err = Config::from_slice(json.as_bytes(), "bad.json").unwrap_err();
    let text = err.to_string();
    assert_eq!(text.lines().count(), p.len(), "{text}");
    assert!(text.lines().all(|l| l.starts_with("bad.json: ")), "{text}");
}

#[test]
fn syntax_error_has_line_and_column() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("broken.json");
    std::fs::write(
        &file,
        "{\n  \"registries\": [],\n  \"policies\": [\n    {\"name\": \"p\",}\n  ]\n}\n",
    )
    .expect("write");
    let err = Config::load(&file).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    let message = &err.problems[0].message;
    assert!(
        message.starts_with("invalid JSON at line 4, column 18"),
        "{message}"
    );
    assert!(err
        .to_string()
        .starts_with(&format!("{}: $: invalid JSON at line 4", file.display())));
}

#[test]
fn bare_policy_and_array_of_policies() {
    let policy =
        r#"{"name": "p", "src_registry": {"name": "anything"}, "dest_registry": {"name": "else"}}"#;
    let config = Config::from_slice(policy.as_bytes(), "p.json").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.policies.len(), 1);
    let array = format!("[{policy}, {}]", policy.replace(r#""p""#, r#""q""#));
    let config = Config::from_slice(array.as_bytes(), "ps.json").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.policies.len(), 2);
    assert_eq!(
        paths(
            r#"[{"name": "p", "src_registry": {"name": "a"}, "dest_registry": {"name": "b"}, "filters": [{"type": "nam", "value": "x"}]}]"#
        ),
        ["[0].filters[0].type"]
    );
    // Harbor's pull into the local registry: resolved once the policy is in a config.
    assert_eq!(
        paths(r#"{"name": "p", "src_registry": {"name": "a"}}"#),
        Vec::<String>::new()
    );
    assert_eq!(paths(r#"{"name": "p"}"#), ["src_registry"]);
}

#[test]
fn harbor_deletion_alias() {
    let base = r#"{"name": "p", "src_registry": {"name": "eu"}, "dest_registry": {"name": "us"}"#;
    let json = config(&format!(r#"{base}, "deletion": true}}"#));
    let config_ok = Config::from_slice(json.as_bytes(), "t").unwrap_or_else(|e| panic!("{e}"));
    assert!(config_ok.policies[0].replicates_deletion());
    let both = config(&format!(
        r#"{base}, "deletion": true, "replicate_deletion": false}}"#
    ));
    assert_eq!(paths(&both), ["policies[0].deletion"]);
}
