//! Harbor's replication policy JSON as Harbor has it: the seeds' policy (`policies/harbor-seed.json`)
//! and a policy exactly as `GET /api/v2.0/replication/policies/{id}` returns it paste in unchanged
//! and resolve to the right registries; what Harbor's API would never send is still an error naming
//! the file and the field.
use std::path::{Path, PathBuf};

use ferry_replicator::config::{Config, ConfigError};
use ferry_replicator::policy::Policy;
use serde_json::{json, Value};

fn seed_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/harbor-seed.json")
}

fn seed() -> Value {
    let text = std::fs::read_to_string(seed_path()).expect("policies/harbor-seed.json");
    serde_json::from_str(&text).expect("the seed is JSON")
}

/// The seed's config (its regions and two Harbors) around `policy`.
fn around(policy: Value) -> Value {
    let mut config = seed();
    config["policies"] = json!([policy]);
    config
}

fn load(config: &Value) -> Result<Config, ConfigError> {
    Config::from_slice(config.to_string().as_bytes(), "harbor.json")
}

fn sides(policy: &Policy) -> (&str, Vec<&str>) {
    let dests = policy.destinations().map(|d| d.name.as_str()).collect();
    (policy.src_registry.name.as_str(), dests)
}

/// A registry as Harbor's API embeds it in a policy (`convertRegistry`): read-only fields, secret
/// masked.
fn harbor_registry(id: i64, name: &str, url: &str) -> Value {
    json!({
        "id": id, "name": name, "type": "harbor", "url": url, "insecure": id == 0,
        "description": "", "status": "healthy",
        "credential": {"type": if id == 0 { "secret" } else { "basic" },
                       "access_key": if id == 0 { "" } else { "robot$replicator" },
                       "access_secret": "*****"},
        "creation_time": "2025-03-01T10:00:00.000Z", "update_time": "2025-03-01T10:00:00.000Z"
    })
}

/// The local Harbor as its API shows itself in a policy (`getLocalRegistry`): id 0, "Local".
fn harbor_local() -> Value {
    let mut local = harbor_registry(0, "Local", "http://core:8080");
    local["creation_time"] = json!("0001-01-01T00:00:00.000Z");
    local["update_time"] = json!("0001-01-01T00:00:00.000Z");
    local
}

/// A policy exactly as Harbor 2.x's `GET /api/v2.0/replication/policies/{id}` returns it.
fn harbor_get(src: Value, dest: Value) -> Value {
    json!({
        "id": 3,
        "name": "library-to-region2",
        "description": "as Harbor's API returns it",
        "src_registry": src,
        "dest_registry": dest,
        "dest_namespace": "",
        "dest_namespace_replace_count": -1,
        "trigger": {"type": "scheduled", "trigger_settings": {"cron": "0 0 */6 * * *"}},
        "filters": [{"type": "name", "value": "library/**"},
                    {"type": "tag", "value": "v*", "decoration": "matches"}],
        "replicate_deletion": true,
        "deletion": true,
        "override": true,
        "enabled": true,
        "speed": 0,
        "copy_by_chunk": false,
        "single_active_replication": true,
        "creation_time": "2025-03-01T10:05:00.000Z",
        "update_time": "2025-03-02T08:00:00.000Z"
    })
}

#[test]
fn the_seed_validates_and_pushes_from_region1s_harbor_to_region2s() {
    let config = Config::load(&seed_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.validate(), Vec::new());
    let policy = &config.policies[0];
    assert_eq!(sides(policy), ("harbor-region1", vec!["harbor-region2"]));
    assert!(policy.replicate_deletion, "Harbor's `deletion: true`");
    assert_eq!(policy.speed, 0, "Harbor's -1 is unlimited");
}

#[test]
fn ferry_policy_validate_accepts_the_seed() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["policy", "validate"])
        .arg(seed_path())
        .output()
        .expect("ferry runs");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_push_policy_as_harbors_get_returns_it_resolves_local_to_region2() {
    let policy = harbor_get(
        harbor_local(),
        harbor_registry(1, "harbor-region2", "https://harbor.region2.example"),
    );
    let config = load(&around(policy)).unwrap_or_else(|e| panic!("{e}"));
    let policy = &config.policies[0];
    assert_eq!(sides(policy), ("harbor-region1", vec!["harbor-region2"]));
    assert!(policy.replicates_deletion() && policy.single_active());
}

#[test]
fn a_pull_policy_as_harbors_get_returns_it_resolves_region2_into_local() {
    let policy = harbor_get(
        harbor_registry(1, "harbor-region2", "https://harbor.region2.example"),
        harbor_local(),
    );
    let config = load(&around(policy)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        sides(&config.policies[0]),
        ("harbor-region2", vec!["harbor-region1"])
    );
}

#[test]
fn a_resolved_policy_serializes_without_harbors_read_only_fields() {
    let policy = harbor_get(
        harbor_local(),
        harbor_registry(1, "harbor-region2", "https://harbor.region2.example"),
    );
    let config = load(&around(policy)).unwrap_or_else(|e| panic!("{e}"));
    let stored = serde_json::to_value(&config.policies[0]).expect("serializes");
    assert_eq!(stored["src_registry"], json!({"name": "harbor-region1"}));
    assert_eq!(stored["dest_registry"], json!({"name": "harbor-region2"}));
    for read_only in ["id", "creation_time", "update_time"] {
        assert!(stored.get(read_only).is_none(), "{read_only} in {stored}");
    }
    let reloaded: Policy = serde_json::from_value(stored).expect("reloads");
    assert_eq!(sides(&reloaded), ("harbor-region1", vec!["harbor-region2"]));
}

#[test]
fn an_unknown_field_in_an_embedded_harbor_registry_names_the_file_and_field() {
    let mut dest = harbor_registry(1, "harbor-region2", "https://harbor.region2.example");
    dest["colour"] = json!("blue");
    let err = load(&around(harbor_get(harbor_local(), dest))).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("harbor.json: policies[0].dest_registry.colour: unknown field `colour`"),
        "{text}"
    );
}

#[test]
fn an_unknown_field_at_the_top_of_a_harbor_policy_is_still_an_error() {
    let mut policy = harbor_get(
        harbor_local(),
        harbor_registry(1, "harbor-region2", "https://h2"),
    );
    policy["creation_tme"] = json!("2025-03-01T10:05:00.000Z");
    let text = load(&around(policy)).unwrap_err().to_string();
    assert!(
        text.contains("harbor.json: policies[0].creation_tme: unknown field")
            && text.contains("did you mean `creation_time`?"),
        "{text}"
    );
}

#[test]
fn an_id_the_config_gives_another_registry_names_both_registries() {
    let mut config = around(harbor_get(
        harbor_local(),
        harbor_registry(1, "harbor-region2", "https://harbor.region2.example"),
    ));
    config["registries"][0]["id"] = json!(1);
    config["registries"][1]["id"] = json!(2);
    let text = load(&config).unwrap_err().to_string();
    assert!(
        text.contains(
            r#"harbor.json: policies[0].dest_registry.id: `name` "harbor-region2" and `id` 1 disagree: id 1 is registry "harbor-region1""#
        ),
        "{text}"
    );
}

#[test]
fn a_policy_with_neither_registry_names_the_policy_and_the_field() {
    let mut policy = seed()["policies"][0].clone();
    policy
        .as_object_mut()
        .expect("an object")
        .remove("dest_registry");
    let text = load(&around(policy)).unwrap_err().to_string();
    assert!(
        text.contains(r#"harbor.json: policies[0].src_registry: policy "replicate-to-region2" names neither `src_registry` nor `dest_registry`"#),
        "{text}"
    );
}

#[test]
fn the_seed_policy_without_a_local_registry_says_what_to_add() {
    let mut config = seed();
    for registry in config["registries"].as_array_mut().expect("registries") {
        registry.as_object_mut().expect("an object").remove("local");
    }
    let text = load(&config).unwrap_err().to_string();
    assert!(
        text.contains(r#"harbor.json: policies[0].src_registry: policy "replicate-to-region2" has no `src_registry`"#)
            && text.contains(r#"add "local": true"#),
        "{text}"
    );
}
