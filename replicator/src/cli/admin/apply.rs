//! `ferry admin policies apply -f FILE` and `ferry admin registries apply -f FILE`: send every
//! document of a file (one object, an array, or a config file) to `PutPolicy`/`PutRegistry`.
//!
//! Invariants: the file is read and parsed before any connection; one refused document does not
//! stop the others (each failure is reported, the exit code is the first failure's), but an
//! unreachable server stops at the first document.
use std::path::Path;

use ferry_proto::v1;
use serde_json::{json, Value};
use tonic::Code;

use super::connection::Ctx;
use super::output::{code_name, to_json, Failure};

/// What `apply` creates.
#[derive(Clone, Copy)]
pub enum Kind {
    Policy,
    Registry,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Policy => "policy",
            Kind::Registry => "registry",
        }
    }

    /// The config file's key holding this kind's entries.
    fn key(self) -> &'static str {
        match self {
            Kind::Policy => "policies",
            Kind::Registry => "registries",
        }
    }
}

/// Sends every policy (or registry) of `file` to Put*; the other documents are still sent when
/// one fails. Exit code: that of the first failure, else 0.
pub async fn apply(ctx: &Ctx, file: &Path, kind: Kind) -> Result<u8, Failure> {
    let docs = documents(file, kind)?;
    let mut results = Vec::new();
    let mut lines = Vec::new();
    let mut exit = 0;
    for (i, doc) in docs.iter().enumerate() {
        let name = doc.get("name").and_then(Value::as_str).map_or_else(
            || format!("#{} of {}", i + 1, file.display()),
            str::to_string,
        );
        let what = format!("apply {} {name}", kind.noun());
        let json = doc.to_string();
        let answer = match kind {
            Kind::Policy => {
                let req = v1::PutPolicyRequest { json };
                ctx.call(&what, ctx.policies().await?.put_policy(req))
                    .await
                    .map(|p| to_json(&p))
            }
            Kind::Registry => {
                let req = v1::PutRegistryRequest { json };
                ctx.call(&what, ctx.registries().await?.put_registry(req))
                    .await
                    .map(|r| to_json(&r))
            }
        };
        match answer {
            Ok(v) => {
                lines.push(format!("applied {} {name}", kind.noun()));
                results.push(json!({"name": name, "applied": true, (kind.noun()): v}));
            }
            Err(f) => {
                // An unreachable server fails every document alike: stop at the first.
                if f.code.is_none() || f.code == Some(Code::Unavailable) {
                    return Err(f);
                }
                f.report();
                if exit == 0 {
                    exit = f.exit;
                }
                results.push(json!({
                    "name": name,
                    "applied": false,
                    "error": {"code": f.code.map(code_name), "message": f.message},
                }));
            }
        }
    }
    ctx.emit(&results, || lines.join("\n"));
    Ok(exit)
}

/// The policy (or registry) documents of a JSON file: one object, an array of them, or a
/// config file (`{"policies": [...], "registries": [...]}`).
fn documents(file: &Path, kind: Kind) -> Result<Vec<Value>, Failure> {
    let what = format!("read {}", file.display());
    let text = std::fs::read_to_string(file).map_err(|e| Failure::other(&what, e.to_string()))?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| Failure::other(&what, format!("not JSON: {e}")))?;
    let is_config = doc
        .as_object()
        .is_some_and(|o| o.contains_key("policies") || o.contains_key("registries"));
    let docs = match doc {
        Value::Array(items) => items,
        Value::Object(mut o) if is_config => match o.remove(kind.key()) {
            Some(Value::Array(items)) => items,
            None => Vec::new(),
            Some(_) => {
                let problem = format!("`{}` is not an array", kind.key());
                return Err(Failure::other(&what, problem));
            }
        },
        doc @ Value::Object(_) => vec![doc],
        _ => {
            let problem = format!(
                "expected a {} object, an array or a config file",
                kind.noun()
            );
            return Err(Failure::other(&what, problem));
        }
    };
    if docs.is_empty() {
        return Err(Failure::other(&what, format!("it holds no {}", kind.key())));
    }
    Ok(docs)
}
