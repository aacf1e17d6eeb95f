//! The three kinds of document a config file may be (a config, a bare policy, an array of
//! policies), how each is recognised, where its policies' paths start, and its deserialization
//! once the structural walk found nothing.
//!
//! Invariant: a policy file (bare policy or array) loads as a [`Config`] without registries.
use serde_json::Value;

use super::schema::{is_policy_field, join_index, Entry};
use super::{Config, Problem};
use crate::policy::Policy;

/// The kind of document that was loaded; decides the paths of policy problems and whether
/// registry references are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    Config,
    Policy,
    Policies,
}

impl Shape {
    /// Detects the shape from the top-level JSON value.
    pub(super) fn of(value: &Value) -> Result<Shape, Problem> {
        match value {
            Value::Array(_) => Ok(Shape::Policies),
            Value::Object(map)
                if map.contains_key("registries") || map.contains_key("policies") =>
            {
                Ok(Shape::Config)
            }
            Value::Object(map) if map.keys().any(|k| is_policy_field(k)) => Ok(Shape::Policy),
            Value::Object(_) => Ok(Shape::Config),
            _ => Err(Problem::new(
                "",
                "expected a config object, a policy object or an array of policies",
            )
            .hint(r#"a config looks like {"registries": [...], "policies": [...]}"#)),
        }
    }

    pub(super) fn entry(self) -> Entry {
        match self {
            Shape::Config => Entry::Config,
            Shape::Policy => Entry::Policy,
            Shape::Policies => Entry::Policies,
        }
    }

    /// Path of the `i`th policy.
    pub(super) fn policy_path(self, i: usize) -> String {
        match self {
            Shape::Config => join_index("policies", i),
            Shape::Policy => String::new(),
            Shape::Policies => join_index("", i),
        }
    }
}

/// serde deserialization of a structurally valid document (a document with structural problems
/// may still fail: the caller reports that without a precise path).
pub(super) fn deserialize(value: Value, shape: Shape) -> Result<Config, Problem> {
    let result = match shape {
        Shape::Config => serde_json::from_value::<Config>(value),
        Shape::Policy => serde_json::from_value::<Policy>(value).map(|p| Config {
            policies: vec![p],
            ..Config::default()
        }),
        Shape::Policies => serde_json::from_value::<Vec<Policy>>(value).map(|policies| Config {
            policies,
            ..Config::default()
        }),
    };
    // Not expected after the structural walk; kept as a safety net without a precise path.
    result.map_err(|e| Problem::new("", e.to_string()))
}
