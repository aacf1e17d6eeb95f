//! Proto enums as operators type and read them: lowercase names without the enum's prefix
//! (`succeeded` for `EXECUTION_STATE_SUCCEEDED`), in flags and in output alike.
//!
//! Invariant: every value prints; one the client does not know prints as its number.
use clap::builder::{PossibleValuesParser, TypedValueParser};

pub const EXECUTION_STATES: &[&str] = &[
    "queued",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "stopped",
];
pub const TASK_STATES: &[&str] = &["pending", "running", "succeeded", "failed", "stopped"];
pub const TRIGGERS: &[&str] = &["event_based", "manual", "scheduled", "reconcile"];

/// A clap parser for a proto enum given by its lowercase name (`succeeded` →
/// `EXECUTION_STATE_SUCCEEDED`); `names` are the accepted values shown in `--help`.
pub fn enum_arg<E: Default + Clone + Send + Sync + 'static>(
    names: &'static [&'static str],
    from: fn(&str) -> Option<E>,
    name: fn(&E) -> &'static str,
) -> impl TypedValueParser<Value = E> {
    PossibleValuesParser::new(names).map(move |s: String| {
        from(&format!("{}{}", enum_prefix(name), s.to_ascii_uppercase())).unwrap_or_default()
    })
}

/// `EXECUTION_STATE_` for `ExecutionState`: its zero value's name without `UNSPECIFIED`.
fn enum_prefix<E: Default>(name: fn(&E) -> &'static str) -> &'static str {
    name(&E::default()).trim_end_matches("UNSPECIFIED")
}

/// A proto enum field as a lowercase name without prefix (`event_based`); unknown values as
/// their number.
pub fn lower<E: TryFrom<i32> + Default>(value: i32, name: fn(&E) -> &'static str) -> String {
    match E::try_from(value) {
        Ok(e) => {
            let full = name(&e);
            full.strip_prefix(enum_prefix(name))
                .unwrap_or(full)
                .to_ascii_lowercase()
        }
        Err(_) => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::v1;

    #[test]
    fn enum_names_without_prefix() {
        assert_eq!(lower(4, v1::ExecutionState::as_str_name), "succeeded");
        assert_eq!(lower(1, v1::Trigger::as_str_name), "event_based");
        assert_eq!(lower(1, v1::DriftKind::as_str_name), "missing");
        assert_eq!(lower(99, v1::DriftKind::as_str_name), "99");
    }
}
