//! Path-aware access to a parsed JSON document, so that every problem names where it is
//! (`events[2].target.repository`). Webhook payloads are read leniently where it is safe (unknown
//! fields are ignored: registries add fields over time) and strictly where Ferry depends on a
//! value (wrong types are errors, never silently skipped).
use serde_json::{Map, Value};

use super::IngestError;

/// Parses the body, reporting syntax errors with line and column.
pub(crate) fn parse(body: &[u8]) -> Result<Value, IngestError> {
    serde_json::from_slice(body).map_err(|e| IngestError::Json {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

/// `parent.key`, or `key` at the root.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[i]`.
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// A JSON type name for messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `value` as an object.
pub(crate) fn object<'a>(
    value: &'a Value,
    path: &str,
) -> Result<&'a Map<String, Value>, IngestError> {
    value.as_object().ok_or_else(|| {
        IngestError::invalid(
            path,
            format!("expected an object, found {}", type_name(value)),
        )
    })
}

/// Field `key` of `map`, treating `null` as absent.
fn field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

/// Required object field.
pub(crate) fn req_object<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<&'a Map<String, Value>, IngestError> {
    let path = join(parent, key);
    match field(map, key) {
        None => Err(IngestError::missing(path)),
        Some(v) => object(v, &path),
    }
}

/// Optional object field.
pub(crate) fn opt_object<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<Option<&'a Map<String, Value>>, IngestError> {
    field(map, key)
        .map(|v| object(v, &join(parent, key)))
        .transpose()
}

/// Required array field.
pub(crate) fn req_array<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<&'a [Value], IngestError> {
    let path = join(parent, key);
    match field(map, key) {
        None => Err(IngestError::missing(path)),
        Some(Value::Array(items)) => Ok(items),
        Some(v) => Err(IngestError::invalid(
            path,
            format!("expected an array, found {}", type_name(v)),
        )),
    }
}

/// Optional array field.
pub(crate) fn opt_array<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<Option<&'a [Value]>, IngestError> {
    match field(map, key) {
        None => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(v) => Err(IngestError::invalid(
            join(parent, key),
            format!("expected an array, found {}", type_name(v)),
        )),
    }
}

/// Optional string field; an empty string counts as absent (distribution omits, Harbor blanks).
pub(crate) fn opt_str<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<Option<&'a str>, IngestError> {
    match field(map, key) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(IngestError::invalid(
            join(parent, key),
            format!("expected a string, found {}", type_name(v)),
        )),
    }
}

/// Required, non-empty string field.
pub(crate) fn req_str<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<&'a str, IngestError> {
    opt_str(map, key, parent)?.ok_or_else(|| IngestError::missing(join(parent, key)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_and_types() {
        let v = json!({"a": {"b": 1, "s": "", "n": null, "arr": [1]}});
        let root = object(&v, "").unwrap();
        let a = req_object(root, "a", "").unwrap();
        assert_eq!(
            req_str(a, "b", "a").unwrap_err().to_string(),
            "a.b: expected a string, found a number"
        );
        assert_eq!(
            req_str(a, "s", "a").unwrap_err().to_string(),
            "a.s: missing"
        );
        assert_eq!(
            req_str(a, "n", "a").unwrap_err().to_string(),
            "a.n: missing"
        );
        assert_eq!(opt_str(a, "zz", "a").unwrap(), None);
        assert_eq!(req_array(a, "arr", "a").unwrap().len(), 1);
        assert!(req_array(a, "b", "a").is_err());
        assert!(opt_object(a, "b", "a").is_err());
        assert_eq!(index("events", 3), "events[3]");
    }

    #[test]
    fn syntax_errors_carry_position() {
        match parse(b"{\n  \"events\": [").unwrap_err() {
            IngestError::Json { line, column, .. } => {
                assert_eq!(line, 2);
                assert!(column > 0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
