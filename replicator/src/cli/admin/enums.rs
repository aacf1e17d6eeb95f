//! Proto enums given as flags (`--state succeeded`), by the lowercase names without prefix that
//! the output prints too (`ferry_proto::json::enum_name`).
//!
//! Invariant: `--help` lists exactly the accepted names; any other value is a usage error.
use clap::builder::{PossibleValuesParser, TypedValueParser};
use ferry_proto::json::{enum_prefix, ProtoEnum};

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
pub fn enum_arg<E: ProtoEnum + Clone + Send + Sync + 'static>(
    names: &'static [&'static str],
    from: fn(&str) -> Option<E>,
) -> impl TypedValueParser<Value = E> {
    PossibleValuesParser::new(names).map(move |s: String| {
        from(&format!("{}{}", enum_prefix::<E>(), s.to_ascii_uppercase())).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::json::enum_name;
    use ferry_proto::v1;

    #[test]
    fn every_accepted_name_is_a_value_that_prints_as_that_name() {
        fn check<E: ProtoEnum + Into<i32>>(names: &[&str], from: fn(&str) -> Option<E>) {
            for name in names {
                let full = format!("{}{}", enum_prefix::<E>(), name.to_ascii_uppercase());
                let value = from(&full).unwrap_or_else(|| panic!("{full}"));
                assert_eq!(enum_name::<E>(value.into()), *name);
            }
        }
        check(EXECUTION_STATES, v1::ExecutionState::from_str_name);
        check(TASK_STATES, v1::TaskState::from_str_name);
        check(TRIGGERS, v1::Trigger::from_str_name);
    }
}
