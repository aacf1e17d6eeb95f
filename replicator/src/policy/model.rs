//! The policy types as they appear in JSON. `deny_unknown_fields` everywhere; semantic checks
//! live in `crate::config` (its `check` module) so that all problems are reported at once.
//!
//! A policy pastes in as Harbor's API returns it (`GET /api/v2.0/replication/policies/{id}`):
//! Harbor's read-only fields (`id`, `creation_time`, `update_time`, and in an embedded registry
//! `url`, `type`, `credential`, `status`, ...) are accepted and ignored, so only Harbor's documented
//! fields are let through and a typo is still an error. A registry reference may name its registry
//! by Harbor's `id`, and a policy may leave out `src_registry` or `dest_registry` (Harbor's local
//! registry); `crate::config` resolves both to names when the config is loaded, so past loading
//! every reference has a `name`.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One replication policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Unique name; used in metrics, logs and `--policy`.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Which way content flows (see README "Modes").
    #[serde(default)]
    pub mode: Mode,
    /// Registry content is read from (by name or Harbor `id`, from the config's `registries`).
    /// Absent (or `null`): the local registry, as in Harbor, where a policy without a source
    /// pushes from the local Harbor (the registry marked `local` in `registries`).
    #[serde(
        default,
        deserialize_with = "null_as_unset",
        skip_serializing_if = "RegistryRef::is_unset"
    )]
    #[schemars(with = "Option<RegistryRef>")]
    pub src_registry: RegistryRef,
    /// Registry content is written to. At most one of `dest_registry`/`dest_registries`; neither:
    /// the local registry, as in Harbor, where a policy without a destination pulls into the local
    /// Harbor.
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
    /// Propagate deletes (see [`Policy::replicates_deletion`]).
    #[serde(default)]
    pub replicate_deletion: bool,
    /// Harbor's deprecated name of `replicate_deletion`, which its API still returns beside it;
    /// both may be set when they agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("deprecated" = true))]
    pub deletion: Option<bool>,
    /// Overwrite a destination tag that holds different content.
    #[serde(default = "default_true", rename = "override")]
    pub override_: bool,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Bandwidth cap in KiB/s (1024 bytes per second) for this policy; 0 = unlimited (so is
    /// Harbor's `-1`, which its UI sends for "unlimited").
    #[serde(default, deserialize_with = "minus_one_as_unlimited")]
    #[schemars(with = "i64", range(min = -1))]
    pub speed: u64,
    /// Upload blobs in chunks (PATCH + Content-Range) instead of one PUT.
    #[serde(default)]
    pub copy_by_chunk: bool,
    /// Copy referrers (signatures, SBOMs, attestations) of every copied manifest.
    #[serde(default = "default_true")]
    pub copy_referrers: bool,
    /// Ferry's gate: copy an image only when a signature exists for its digest (a cosign
    /// `sha256-<hex>.sig` tag, or an OCI referrer of a cosign or notation signature type); with
    /// `signature_public_key_file`, only when a cosign signature verifies against that key. A tag
    /// it holds back is reported `blocked` (README "Gates").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub only_signed: bool,
    /// With `only_signed`: PEM file of the cosign public key (ECDSA P-256, `cosign.pub`) a cosign
    /// signature must verify against. Read when the config is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_public_key_file: Option<String>,
    /// Ferry's gate (Harbor sources): the highest vulnerability severity Harbor's scan may report
    /// for an image to be copied: `none`, `low`, `medium`, `high` or `critical` (Harbor's levels,
    /// also `unknown` and `negligible`; any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_severity: Option<String>,
    /// With `max_severity`: also copy images Harbor has not scanned, or whose scan has not
    /// finished (default: they are held back until the scan succeeds).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unscanned: bool,
    /// Ferry's: the region whose workers run this policy's jobs. Default: the source registry's
    /// region in push mode, the destination's in pull and bidirectional modes. Naming a third
    /// region relays between two remote registries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Harbor's: skip a scheduled run while the previous one has not ended (Ferry's
    /// `trigger_settings.single_active`; either turns it on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_active_replication: Option<bool>,
    /// Harbor's read-only policy id, as its API returns it: accepted and ignored.
    #[serde(default, skip_serializing)]
    pub id: Option<i64>,
    /// Harbor's read-only creation time: accepted and ignored.
    #[serde(default, skip_serializing)]
    pub creation_time: Option<String>,
    /// Harbor's read-only update time: accepted and ignored.
    #[serde(default, skip_serializing)]
    pub update_time: Option<String>,
}

/// Harbor's `-1` ("unlimited") reads as Ferry's 0; the schema refuses anything below -1.
fn minus_one_as_unlimited<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    i64::deserialize(d).map(|speed| u64::try_from(speed).unwrap_or(0))
}

/// `null` reads as an unset reference (Harbor's clients send `"src_registry": null` for the local
/// registry).
fn null_as_unset<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RegistryRef, D::Error> {
    Option::<RegistryRef>::deserialize(d).map(Option::unwrap_or_default)
}

fn default_replace_count() -> i32 {
    -1
}
fn default_true() -> bool {
    true
}

/// Reference to a registry declared in the config file: its `name`, or Harbor's `id` for it, or
/// both (they must agree with the config). Harbor's API embeds the whole registry object; its
/// other fields are read-only there and accepted and ignored here (the config's registry decides
/// URL and credentials).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryRef {
    /// The registry's `name` in the config's `registries`; may be left out when `id` is given.
    #[serde(default)]
    pub name: String,
    /// Harbor's registry id: matched against the `id` a config registry declares. `0` is Harbor's
    /// id for itself: the local registry (Harbor's API calls it "Local").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub id: Option<i64>,
    /// Harbor's read-only: the registry's URL as Harbor reaches it. Ignored.
    #[serde(default, skip_serializing)]
    url: Option<String>,
    /// Harbor's read-only: the adapter type (`harbor`, `docker-registry`, ...). Ignored.
    #[serde(default, skip_serializing, rename = "type")]
    kind: Option<String>,
    /// Harbor's read-only. Ignored: the config's registry says.
    #[serde(default, skip_serializing)]
    insecure: Option<bool>,
    /// Harbor's read-only credential, its secret masked (`*****`). An unmasked secret is refused.
    #[serde(default, skip_serializing)]
    credential: Option<HarborCredential>,
    /// Harbor's read-only CA certificate (PEM). Ignored: the config's `ca_file` says.
    #[serde(default, skip_serializing)]
    ca_certificate: Option<String>,
    /// Harbor's read-only description. Ignored.
    #[serde(default, skip_serializing)]
    description: Option<String>,
    /// Harbor's read-only health status. Ignored.
    #[serde(default, skip_serializing)]
    status: Option<String>,
    /// Harbor's read-only creation time. Ignored.
    #[serde(default, skip_serializing)]
    creation_time: Option<String>,
    /// Harbor's read-only update time. Ignored.
    #[serde(default, skip_serializing)]
    update_time: Option<String>,
}

/// A registry's credential as Harbor's API shows it inside a policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HarborCredential {
    /// `basic`, `oauth`, or `secret` (Harbor's own).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The user name.
    #[serde(default)]
    pub access_key: Option<String>,
    /// Masked by Harbor's API (`*****`); Ferry takes secrets only from the config's registries.
    #[serde(default)]
    pub access_secret: Option<String>,
}

/// How Harbor's API masks a secret.
pub const HARBOR_MASKED_SECRET: &str = "*****";

impl RegistryRef {
    /// A reference by name.
    pub fn named(name: impl Into<String>) -> RegistryRef {
        RegistryRef {
            name: name.into(),
            ..RegistryRef::default()
        }
    }

    /// Neither a name nor an id: the policy left the field out (the local registry).
    pub fn is_unset(&self) -> bool {
        self.name.is_empty() && self.id.is_none()
    }

    /// Whether the embedded credential carries a secret that Harbor's API would have masked: a
    /// pasted secret, which Ferry never takes inline.
    pub fn has_inline_secret(&self) -> bool {
        self.credential
            .as_ref()
            .and_then(|c| c.access_secret.as_deref())
            .is_some_and(|s| !s.is_empty() && s != HARBOR_MASKED_SECRET)
    }
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

    /// Moves Harbor's deprecated `deletion` into `replicate_deletion` (loading a config does, so
    /// that every reader of `replicate_deletion` sees it).
    pub fn fold_deletion_alias(&mut self) {
        if let Some(deletion) = self.deletion.take() {
            self.replicate_deletion |= deletion;
        }
    }

    /// Whether deletes are propagated: `replicate_deletion`, or Harbor's deprecated `deletion`.
    pub fn replicates_deletion(&self) -> bool {
        self.replicate_deletion || self.deletion == Some(true)
    }

    /// Whether a scheduled run is skipped while the previous one has not ended: Ferry's
    /// `trigger_settings.single_active` or Harbor's `single_active_replication`.
    pub fn single_active(&self) -> bool {
        self.single_active_replication == Some(true)
            || self
                .trigger
                .trigger_settings
                .as_ref()
                .is_some_and(|s| s.single_active)
    }

    /// Whether a gate (`only_signed`, `max_severity`) may hold a tag back.
    pub fn has_gates(&self) -> bool {
        self.only_signed || self.max_severity.is_some()
    }

    /// Every destination of this policy (`dest_registry` and `dest_registries`).
    pub fn destinations(&self) -> impl Iterator<Item = &RegistryRef> {
        self.dest_registry.iter().chain(self.dest_registries.iter())
    }
}
