//! How the admin API's messages serialize with serde (the derives are added in `build.rs`): the
//! JSON document `ferry admin -o json` prints.
//!
//! Invariants: field names are the proto's; an enum field prints as its value's name, lowercase,
//! without the enum's prefix (`succeeded` for `EXECUTION_STATE_SUCCEEDED`), and a value this
//! build does not know prints as its number in a string (`"7"`); a field holding a JSON document
//! (a policy's, a registry's) prints as that document, or as the string when it is not JSON.
use serde::{Serialize, Serializer};

/// A proto enum as prost generates it: `i32` on the wire, names from the `.proto` file.
pub trait ProtoEnum: TryFrom<i32> + Default {
    /// The value's name in the `.proto` file (`EXECUTION_STATE_SUCCEEDED`).
    fn proto_name(&self) -> &'static str;
}

macro_rules! proto_enums {
    ($($e:ident),*) => {$(
        impl ProtoEnum for crate::v1::$e {
            fn proto_name(&self) -> &'static str {
                self.as_str_name()
            }
        }
    )*};
}
proto_enums!(
    Source,
    EventKind,
    Trigger,
    ExecutionState,
    TaskState,
    DriftKind
);

/// The prefix of `E`'s value names: its zero value's name without `UNSPECIFIED`
/// (`EXECUTION_STATE_`).
pub fn enum_prefix<E: ProtoEnum>() -> &'static str {
    E::default().proto_name().trim_end_matches("UNSPECIFIED")
}

/// `value` as a lowercase name without prefix (`event_based`); unknown values as their number.
pub fn enum_name<E: ProtoEnum>(value: i32) -> String {
    match E::try_from(value) {
        Ok(e) => {
            let full = e.proto_name();
            full.strip_prefix(enum_prefix::<E>())
                .unwrap_or(full)
                .to_ascii_lowercase()
        }
        Err(_) => value.to_string(),
    }
}

/// `serialize_with` of an enum field: [`enum_name`].
pub fn serialize_enum<E: ProtoEnum, S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&enum_name::<E>(*value))
}

/// `serialize_with` of a field holding a JSON document: the document, or the string as it is
/// when it is not JSON.
pub fn document<S: Serializer>(doc: &str, s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<serde_json::Value>(doc) {
        Ok(v) => v.serialize(s),
        Err(_) => s.serialize_str(doc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    #[test]
    fn enum_names_without_prefix() {
        assert_eq!(enum_name::<v1::ExecutionState>(4), "succeeded");
        assert_eq!(enum_name::<v1::Trigger>(1), "event_based");
        assert_eq!(enum_name::<v1::DriftKind>(1), "missing");
        assert_eq!(enum_name::<v1::DriftKind>(99), "99");
    }
}
