//! Compiles `ferry/v1/*.proto` with `protox` (pure Rust), so building Ferry never needs `protoc`,
//! and writes the file descriptor set that gRPC server reflection serves.
//!
//! The admin API's answers also derive `serde::Serialize`: that is the JSON `ferry admin -o json`
//! prints (the proto's field names; enums as lowercase names without prefix; policy and registry
//! documents embedded as JSON — see `src/json.rs`).
use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["ferry/v1/events.proto", "ferry/v1/admin.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ferry_v1_descriptor.bin"), fds.encode_to_vec())?;
    let mut build = tonic_prost_build::configure();
    for message in SERIALIZED {
        build = build.message_attribute(
            format!(".ferry.v1.{message}"),
            "#[derive(serde::Serialize)]",
        );
    }
    for (field, enumeration) in ENUM_FIELDS {
        let with = format!("crate::json::serialize_enum::<crate::v1::{enumeration}, _>");
        build = build.field_attribute(
            format!(".ferry.v1.{field}"),
            format!("#[serde(serialize_with = \"{with}\")]"),
        );
    }
    for field in DOCUMENT_FIELDS {
        build = build.field_attribute(
            format!(".ferry.v1.{field}"),
            "#[serde(serialize_with = \"crate::json::document\")]",
        );
    }
    build.compile_fds(fds)?;
    Ok(())
}

/// The messages `ferry admin -o json` prints (answers of the admin API and what they embed).
const SERIALIZED: &[&str] = &[
    "Policy",
    "ListPoliciesResponse",
    "Registry",
    "ListRegistriesResponse",
    "PingRegistryResponse",
    "Origin",
    "TaskCounts",
    "Execution",
    "Task",
    "ListExecutionsResponse",
    "ListTasksResponse",
    "ExecutionProgress",
    "DriftEntry",
    "QueueStats",
    "Job",
    "ListDeadLettersResponse",
    "PurgeDeadLettersResponse",
    "WorkerInfo",
    "ListWorkersResponse",
];

/// The enum fields of [`SERIALIZED`] messages (prost stores them as `i32`) and their enum: they
/// print as the enum's lowercase name.
const ENUM_FIELDS: &[(&str, &str)] = &[
    ("Policy.source", "Source"),
    ("Registry.source", "Source"),
    ("Origin.kind", "EventKind"),
    ("Execution.trigger", "Trigger"),
    ("Execution.state", "ExecutionState"),
    ("Task.kind", "EventKind"),
    ("Task.state", "TaskState"),
    ("DriftEntry.kind", "DriftKind"),
    ("Job.kind", "EventKind"),
];

/// Fields holding a JSON document as a string: printed as the document.
const DOCUMENT_FIELDS: &[&str] = &["Policy.json", "Registry.json"];
