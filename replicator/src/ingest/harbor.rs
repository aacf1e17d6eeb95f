//! Harbor webhooks (the "http" notify type, `application/json`) → [`Event`]s.
//!
//! Payload: `{"type": "PUSH_ARTIFACT", "occur_at": <unix seconds>, "operator": "...",
//! "event_data": {"resources": [{"digest", "tag", "resource_url"}], "repository": {"name",
//! "namespace", "repo_full_name", "repo_type"}}}`.
//!
//! # Normalization
//! - `PUSH_ARTIFACT` → one push event per resource, `DELETE_ARTIFACT` → one delete event per
//!   resource; the repository is `repo_full_name` (else `namespace/name`).
//! - Every other type (`PULL_ARTIFACT`, `SCANNING_*`, `QUOTA_*`, `REPLICATION`, ...) is ignored as
//!   a whole (one ignored notification), and the endpoint still answers 2xx.
//! - Harbor writes the digest into `tag` for a push by digest; such a "tag" (anything starting with
//!   `sha256:`/`sha512:` or equal to the digest) is dropped, leaving a digest-only event.
//! - When [`HarborOptions::ignore_operator`] names Ferry's robot account, events it caused are
//!   ignored (echo suppression; Harbor does not pass the User-Agent on).
//! - Harbor sends no event id; the id is a hash of (type, time, repository, digest, tag), so a
//!   redelivery gets the same id.
//!
//! # Invariants
//! Every problem is an [`IngestError`] naming its JSON path; no input panics; unknown fields are
//! ignored (Harbor adds fields between versions); repositories, tags and digests follow the one
//! grammar of [`crate::policy::namespace`]; at most [`super::MAX_EVENTS_PER_REQUEST`] resources.
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::json::{self, index, join};
use super::{kind_label, Batch, IgnoreReason, Ignored, IngestError};
use crate::event::{Event, EventKind};
use crate::policy::{check_digest, check_repository, check_tag};

/// Every content type the Harbor endpoint accepts.
pub const CONTENT_TYPES: &[&str] = &["application/json"];

/// Options of the Harbor parser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HarborOptions {
    /// Harbor user (robot account) Ferry writes as, e.g. `robot$ferry`: events whose `operator` is
    /// this name are Ferry's own writes and ignored. `None` keeps every event.
    pub ignore_operator: Option<String>,
}

/// Parses a Harbor webhook body from the registry configured as `registry`.
pub fn parse(body: &[u8], registry: &str, options: &HarborOptions) -> Result<Batch, IngestError> {
    parse_with_clock(body, registry, options, crate::clock::now_ms)
}

/// [`parse`] with an injectable clock (used when `occur_at` is missing or invalid).
pub fn parse_with_clock(
    body: &[u8],
    registry: &str,
    options: &HarborOptions,
    now_ms: impl Fn() -> i64,
) -> Result<Batch, IngestError> {
    let document = json::parse(body)?;
    let root = json::object(&document, "$")?;
    let event_type = json::req_str(root, "type", "")?;
    let kind = match event_type {
        "PUSH_ARTIFACT" => EventKind::Push,
        "DELETE_ARTIFACT" => EventKind::Delete,
        other => {
            tracing::debug!(registry, event_type = other, "harbor event type ignored");
            return Ok(all_ignored(1, other, IgnoreReason::Action));
        }
    };

    let data = json::req_object(root, "event_data", "")?;
    let resources = super::bounded_events(
        json::req_array(data, "resources", "event_data")?,
        "event_data.resources",
    )?;
    let operator = json::opt_str(root, "operator", "")?;
    if let (Some(operator), Some(ours)) = (operator, options.ignore_operator.as_deref()) {
        if operator == ours {
            tracing::debug!(registry, operator, "harbor event caused by ferry ignored");
            return Ok(all_ignored(
                resources.len(),
                event_type,
                IgnoreReason::OwnWrite,
            ));
        }
    }

    let repository = read_repository(data)?;
    let occur_at = root.get("occur_at");
    let occurred_at_ms = occur_at_ms(occur_at).unwrap_or_else(|| {
        tracing::debug!(registry, occur_at = ?occur_at, "harbor event has no valid occur_at; using the time of receipt");
        now_ms()
    });

    let mut batch = Batch {
        received: resources.len(),
        ..Batch::default()
    };
    for (j, item) in resources.iter().enumerate() {
        let (digest, tag) = read_resource(item, &index("event_data.resources", j))?;
        batch.events.push(Event {
            id: event_id(event_type, occur_at, &repository, digest, tag),
            registry: registry.to_string(),
            repository: repository.clone(),
            tag: tag.map(str::to_string),
            digest: digest.map(str::to_string),
            media_type: None,
            kind,
            occurred_at_ms,
            request_id: None,
        });
    }
    Ok(batch)
}

/// A batch of `received` notifications of type `event_type`, every one ignored for `reason`.
fn all_ignored(received: usize, event_type: &str, reason: IgnoreReason) -> Batch {
    Batch {
        received,
        events: Vec::new(),
        ignored: (0..received)
            .map(|index| Ignored {
                index,
                kind: kind_label(event_type),
                reason,
            })
            .collect(),
    }
}

/// `occur_at` (Unix seconds, whole or fractional) in Unix ms; `None` when missing or invalid.
fn occur_at_ms(occur_at: Option<&Value>) -> Option<i64> {
    occur_at
        .and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
        })
        .and_then(|secs| secs.checked_mul(1000))
}

/// The `(digest, tag)` of the resource at `path`, each checked; a "tag" that is a digest (Harbor
/// writes one for a push by digest) is dropped, and one of the two must remain.
fn read_resource<'a>(
    item: &'a Value,
    path: &str,
) -> Result<(Option<&'a str>, Option<&'a str>), IngestError> {
    let resource = json::object(item, path)?;
    let digest = json::opt_str(resource, "digest", path)?;
    if let Some(d) = digest {
        check_digest(d).map_err(IngestError::name_at(join(path, "digest")))?;
    }
    let tag = json::opt_str(resource, "tag", path)?
        .filter(|t| Some(*t) != digest && !t.starts_with("sha256:") && !t.starts_with("sha512:"));
    if let Some(t) = tag {
        check_tag(t).map_err(IngestError::name_at(join(path, "tag")))?;
    }
    if tag.is_none() && digest.is_none() {
        return Err(IngestError::invalid(
            path.to_string(),
            "neither `tag` nor `digest` is set",
        ));
    }
    Ok((digest, tag))
}

/// `event_data.repository.repo_full_name`, else `namespace/name`.
fn read_repository(data: &serde_json::Map<String, Value>) -> Result<String, IngestError> {
    let path = "event_data.repository";
    let repo = json::req_object(data, "repository", "event_data")?;
    let full = match json::opt_str(repo, "repo_full_name", path)? {
        Some(full) => full.to_string(),
        None => {
            let namespace = json::opt_str(repo, "namespace", path)?;
            let name = json::opt_str(repo, "name", path)?;
            match (namespace, name) {
                (Some(ns), Some(name)) => format!("{ns}/{name}"),
                _ => return Err(IngestError::missing(join(path, "repo_full_name"))),
            }
        }
    };
    check_repository(&full).map_err(IngestError::name_at(join(path, "repo_full_name")))?;
    Ok(full)
}

fn event_id(
    event_type: &str,
    occur_at: Option<&Value>,
    repository: &str,
    digest: Option<&str>,
    tag: Option<&str>,
) -> String {
    let occur_at = occur_at.map(Value::to_string).unwrap_or_default();
    let key = format!(
        "{event_type}\n{occur_at}\n{repository}\n{}\n{}",
        digest.unwrap_or_default(),
        tag.unwrap_or_default()
    );
    let hash = Sha256::digest(key.as_bytes());
    format!("harbor-{}", hex::encode(&hash[..16]))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const DIGEST: &str = "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4";
    const NOW: i64 = 1_700_000_000_000;

    /// A Harbor 2.x webhook as Harbor sends it.
    fn webhook(event_type: &str, tag: &str, operator: &str) -> Value {
        json!({
            "type": event_type,
            "occur_at": 1_680_501_893,
            "operator": operator,
            "event_data": {
                "resources": [{
                    "digest": DIGEST,
                    "tag": tag,
                    "resource_url": format!("harbor.example/library/alpine:{tag}")
                }],
                "repository": {
                    "date_created": 1_680_501_893,
                    "name": "alpine",
                    "namespace": "library",
                    "repo_full_name": "library/alpine",
                    "repo_type": "public"
                }
            }
        })
    }

    fn parse(value: &Value, options: &HarborOptions) -> Result<Batch, IngestError> {
        parse_with_clock(
            &serde_json::to_vec(value).unwrap(),
            "harbor",
            options,
            || NOW,
        )
    }

    #[test]
    fn occur_at_is_whole_or_fractional_seconds_and_anything_else_is_missing() {
        assert_eq!(
            occur_at_ms(Some(&json!(1_680_501_893))),
            Some(1_680_501_893_000)
        );
        assert_eq!(
            occur_at_ms(Some(&json!(1_680_501_893.9))),
            Some(1_680_501_893_000)
        );
        assert_eq!(occur_at_ms(Some(&json!("soon"))), None);
        assert_eq!(occur_at_ms(Some(&json!(i64::MAX))), None);
        assert_eq!(occur_at_ms(None), None);
    }

    #[test]
    fn a_tag_that_is_a_digest_is_no_tag() {
        let other = "sha512:abc";
        for tag in [DIGEST, other] {
            let item = json!({"digest": DIGEST, "tag": tag});
            assert_eq!(
                read_resource(&item, "r").unwrap(),
                (Some(DIGEST), None),
                "{tag}"
            );
        }
        let item = json!({"digest": DIGEST, "tag": "3.19"});
        assert_eq!(
            read_resource(&item, "r").unwrap(),
            (Some(DIGEST), Some("3.19"))
        );
    }

    #[test]
    fn push_artifact() {
        let batch = parse(
            &webhook("PUSH_ARTIFACT", "3.19", "admin"),
            &HarborOptions::default(),
        )
        .unwrap();
        assert_eq!(batch.received, 1);
        assert!(batch.ignored.is_empty());
        let e = &batch.events[0];
        assert_eq!(
            (
                e.kind,
                e.registry.as_str(),
                e.repository.as_str(),
                e.tag.as_deref(),
                e.digest.as_deref()
            ),
            (
                EventKind::Push,
                "harbor",
                "library/alpine",
                Some("3.19"),
                Some(DIGEST)
            )
        );
        assert_eq!(e.occurred_at_ms, 1_680_501_893_000);
        assert!(e.id.starts_with("harbor-"));
        // Same delivery, same id; another tag, another id.
        let again = parse(
            &webhook("PUSH_ARTIFACT", "3.19", "admin"),
            &HarborOptions::default(),
        )
        .unwrap();
        assert_eq!(again.events[0].id, e.id);
        let other = parse(
            &webhook("PUSH_ARTIFACT", "3.20", "admin"),
            &HarborOptions::default(),
        )
        .unwrap();
        assert_ne!(other.events[0].id, e.id);
    }

    #[test]
    fn push_by_digest_has_no_tag() {
        let batch = parse(
            &webhook("PUSH_ARTIFACT", DIGEST, "admin"),
            &HarborOptions::default(),
        )
        .unwrap();
        assert_eq!(batch.events[0].tag, None);
        assert_eq!(batch.events[0].reference(), Some(DIGEST));
    }

    #[test]
    fn delete_artifact_with_two_resources() {
        let mut body = webhook("DELETE_ARTIFACT", "3.19", "admin");
        body["event_data"]["resources"]
            .as_array_mut()
            .unwrap()
            .push(json!({"digest": DIGEST, "tag": "latest"}));
        let batch = parse(&body, &HarborOptions::default()).unwrap();
        let got: Vec<_> = batch
            .events
            .iter()
            .map(|e| (e.kind, e.tag.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (EventKind::Delete, Some("3.19")),
                (EventKind::Delete, Some("latest"))
            ]
        );
    }

    #[test]
    fn other_types_are_ignored() {
        for t in [
            "PULL_ARTIFACT",
            "SCANNING_COMPLETED",
            "SCANNING_FAILED",
            "QUOTA_EXCEED",
            "REPLICATION",
        ] {
            let batch = parse(
                &json!({"type": t, "occur_at": 1, "event_data": {}}),
                &HarborOptions::default(),
            )
            .unwrap();
            assert!(batch.events.is_empty(), "{t}");
            assert_eq!(batch.ignored[0].reason, IgnoreReason::Action);
        }
    }

    #[test]
    fn ferry_robot_is_ignored_when_configured() {
        let options = HarborOptions {
            ignore_operator: Some("robot$ferry".into()),
        };
        let batch = parse(&webhook("PUSH_ARTIFACT", "3.19", "robot$ferry"), &options).unwrap();
        assert!(batch.events.is_empty());
        assert_eq!(batch.ignored[0].reason, IgnoreReason::OwnWrite);
        // Without the option, the same event counts.
        let batch = parse(
            &webhook("PUSH_ARTIFACT", "3.19", "robot$ferry"),
            &HarborOptions::default(),
        )
        .unwrap();
        assert_eq!(batch.events.len(), 1);
        let batch = parse(&webhook("PUSH_ARTIFACT", "3.19", "admin"), &options).unwrap();
        assert_eq!(batch.events.len(), 1);
    }

    #[test]
    fn repository_falls_back_to_namespace_and_name() {
        let mut body = webhook("PUSH_ARTIFACT", "1", "admin");
        body["event_data"]["repository"]
            .as_object_mut()
            .unwrap()
            .remove("repo_full_name");
        let batch = parse(&body, &HarborOptions::default()).unwrap();
        assert_eq!(batch.events[0].repository, "library/alpine");
    }

    #[test]
    fn missing_or_invalid_occur_at_is_now() {
        let mut body = webhook("PUSH_ARTIFACT", "1", "admin");
        body["occur_at"] = json!("soon");
        assert_eq!(
            parse(&body, &HarborOptions::default()).unwrap().events[0].occurred_at_ms,
            NOW
        );
        body["occur_at"] = json!(i64::MAX);
        assert_eq!(
            parse(&body, &HarborOptions::default()).unwrap().events[0].occurred_at_ms,
            NOW
        );
    }

    #[test]
    fn dot_segment_repositories_and_oversized_batches_are_refused() {
        let opts = HarborOptions::default();
        let mut body = webhook("PUSH_ARTIFACT", "1", "admin");
        body["event_data"]["repository"]["repo_full_name"] = json!("library/../../v2/_catalog");
        let err = parse(&body, &opts).unwrap_err();
        assert_eq!(
            err.path(),
            Some("event_data.repository.repo_full_name"),
            "{err}"
        );
        let mut body = webhook("PUSH_ARTIFACT", "1", "admin");
        let resource = body["event_data"]["resources"][0].clone();
        body["event_data"]["resources"] =
            json!(vec![resource; crate::ingest::MAX_EVENTS_PER_REQUEST + 1]);
        let err = parse(&body, &opts).unwrap_err();
        assert!(matches!(err, IngestError::TooManyEvents { .. }), "{err}");
        assert_eq!(err.path(), Some("event_data.resources"));
    }

    #[test]
    fn malformed_bodies_name_the_path() {
        let opts = HarborOptions::default();
        let err = |v: Value| parse(&v, &opts).unwrap_err().to_string();
        assert_eq!(err(json!({"occur_at": 1})), "type: missing");
        assert_eq!(err(json!({"type": "PUSH_ARTIFACT"})), "event_data: missing");
        assert_eq!(
            err(json!({"type": "PUSH_ARTIFACT", "event_data": {"resources": {}}})),
            "event_data.resources: expected an array, found an object"
        );
        let mut body = webhook("PUSH_ARTIFACT", "1", "admin");
        body["event_data"]["repository"] = json!({"name": "alpine"});
        assert_eq!(err(body), "event_data.repository.repo_full_name: missing");
        let mut body = webhook("PUSH_ARTIFACT", "1", "admin");
        body["event_data"]["resources"][0] = json!({"tag": 5});
        assert_eq!(
            err(body),
            "event_data.resources[0].tag: expected a string, found a number"
        );
        let mut body = webhook("PUSH_ARTIFACT", "1", "admin");
        body["event_data"]["resources"][0] = json!({"resource_url": "x"});
        assert_eq!(
            err(body),
            "event_data.resources[0]: neither `tag` nor `digest` is set"
        );
        let mut body = webhook("PUSH_ARTIFACT", "1", "admin");
        body["event_data"]["resources"][0]["digest"] = json!("md5:abc");
        assert!(err(body).starts_with("event_data.resources[0].digest: "));
        let truncated = br#"{"type": "PUSH_ARTIFACT", "event_da"#;
        assert!(matches!(
            super::parse(truncated, "harbor", &opts).unwrap_err(),
            IngestError::Json { line: 1, .. }
        ));
    }
}
