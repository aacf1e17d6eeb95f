//! The policy types as they appear in JSON. `deny_unknown_fields` everywhere; semantic checks
//! live in `crate::config` (its `check` module) so that all problems are reported at once.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One replication policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = add_deprecated_deletion_alias)]
pub struct Policy {
    /// Unique name; used in metrics, logs and `--policy`.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Which way content flows (see README "Modes").
    #[serde(default)]
    pub mode: Mode,
    /// Registry content is read from (by name, from the config's `registries`).
    pub src_registry: RegistryRef,
    /// Registry content is written to. Exactly one of `dest_registry`/`dest_registries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_registry: Option<RegistryRef>,
    /// Ferry extension: several destinations, each its own task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dest_registries: Vec<RegistryRef>,
    /// Destination namespace (Harbor's `dest_namespace`); empty keeps the source path.
    #[serde(default)]
    pub dest_namespace: String,
    /// Harbor's table: -1 flattens all, 0 prefixes, n strips n leading segments.
    #[serde(default = "default_replace_count")]
    #[schemars(range(min = -1))]
    pub dest_namespace_replace_count: i32,
    #[serde(default)]
    pub trigger: Trigger,
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Propagate deletes (Harbor's deprecated `deletion` is accepted as an alias).
    #[serde(default, alias = "deletion")]
    pub replicate_deletion: bool,
    /// Overwrite a destination tag that holds different content.
    #[serde(default = "default_true", rename = "override")]
    pub override_: bool,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Bandwidth cap in KiB/s (1024 bytes per second) for this policy; 0 = unlimited.
    #[serde(default)]
    pub speed: u64,
    /// Upload blobs in chunks (PATCH + Content-Range) instead of one PUT.
    #[serde(default)]
    pub copy_by_chunk: bool,
    /// Copy referrers (signatures, SBOMs, attestations) of every copied manifest.
    #[serde(default = "default_true")]
    pub copy_referrers: bool,
    /// Ferry's: the region whose workers run this policy's jobs. Default: the source registry's
    /// region in push mode, the destination's in pull and bidirectional modes. Naming a third
    /// region relays between two remote registries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// Lists Harbor's deprecated `deletion` (read by serde as an alias of `replicate_deletion`) in
/// the schema, so that editors and the structural check accept it.
fn add_deprecated_deletion_alias(schema: &mut schemars::Schema) {
    if let Some(properties) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        properties.insert(
            "deletion".to_string(),
            serde_json::json!({
                "type": "boolean",
                "deprecated": true,
                "description": "Harbor's deprecated name for `replicate_deletion`; set only one of them."
            }),
        );
    }
}

fn default_replace_count() -> i32 {
    -1
}
fn default_true() -> bool {
    true
}

/// Reference to a registry declared in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryRef {
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Push,
    Pull,
    Bidirectional,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    #[serde(rename = "type", default)]
    pub kind: TriggerKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_settings: Option<TriggerSettings>,
}

// How a policy fires (Harbor's `trigger.type`; absent means `manual`, as in Harbor). What
// actually started one execution is a `crate::store::StartedBy`. (A `//` comment: doc comments
// here would change the generated schema.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    #[default]
    Manual,
    Scheduled,
    EventBased,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSettings {
    /// Cron expression: Harbor's 6-field form (with seconds) or the 5-field form, in UTC.
    #[serde(default)]
    pub cron: String,
    /// Ferry's: skip a tick while the policy's previous run has not ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub single_active: bool,
}

/// One filter. Filters of the same type AND together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(rename = "type")]
    pub kind: FilterKind,
    /// Doublestar glob for `name`/`tag`/`artifact_type`; `image`|`artifact` for `resource`;
    /// `os/arch[/variant]` for `platform`; `key=value` for `label`.
    pub value: String,
    #[serde(default)]
    pub decoration: Decoration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FilterKind {
    Name,
    Tag,
    Label,
    Resource,
    Platform,
    /// Ferry's: which referrers (signatures, SBOMs, attestations) follow their subject, by OCI
    /// artifact type glob (`artifactType`, else the config media type).
    ArtifactType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decoration {
    #[default]
    Matches,
    Excludes,
}

impl Policy {
    /// Why `dest_namespace` is not a valid destination namespace, if it is not. Empty is valid
    /// (it keeps the source paths).
    pub fn dest_namespace_error(&self) -> Option<String> {
        if self.dest_namespace.is_empty() {
            return None;
        }
        super::namespace::check_repository(&self.dest_namespace)
            .err()
            .map(|e| e.to_string())
    }

    /// A bidirectional policy the other way round (its destination as source); `None` for other
    /// modes. Bidirectional policies have one destination and no namespace rewrite (validated).
    pub fn reversed(&self) -> Option<Policy> {
        if self.mode != Mode::Bidirectional {
            return None;
        }
        let dest = self.destinations().next()?.clone();
        Some(Policy {
            src_registry: dest,
            dest_registry: Some(self.src_registry.clone()),
            dest_registries: Vec::new(),
            ..self.clone()
        })
    }

    /// Every destination of this policy (`dest_registry` and `dest_registries`).
    pub fn destinations(&self) -> impl Iterator<Item = &RegistryRef> {
        self.dest_registry.iter().chain(self.dest_registries.iter())
    }
}
