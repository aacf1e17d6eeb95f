//! Harbor webhooks (the "http" notify type) → [`Event`]s, in both payload formats a Harbor
//! webhook policy can choose (`payload_format`, Harbor ≥ 2.8):
//!
//! - **Default** (`Content-Type: application/json`): `{"type": "PUSH_ARTIFACT", "occur_at": <unix
//!   seconds>, "operator", "event_data": {...}}`.
//! - **CloudEvents** (`Content-Type: application/cloudevents+json`): `{"specversion": "1.0", "id",
//!   "requestid", "source", "type": "harbor.artifact.pushed", "datacontenttype":
//!   "application/json", "time": <RFC 3339>, "data": {...}, "operator"}`.
//!
//! Both carry the same data, `{"resources": [{"digest", "tag", "resource_url"}], "repository":
//! {"name", "namespace", "repo_full_name", "repo_type"}}` (Harbor's `src/pkg/notifier/formats`:
//! the CloudEvents formatter wraps the Default payload's `event_data` as `data`). The format is
//! told by the body — a `specversion` member means CloudEvents — so either content type carries
//! either format; the envelope is read per format ([`Format`]), the data by one reader.
//!
//! # Normalization
//! - `PUSH_ARTIFACT` / `harbor.artifact.pushed` → one push event per resource, `DELETE_ARTIFACT` /
//!   `harbor.artifact.deleted` → one delete event per resource; the repository is
//!   `repo_full_name` (else `namespace/name`).
//! - `SCANNING_COMPLETED` / `harbor.scan.completed` → one push event **by digest** per resource
//!   (Harbor names no tag; the id ends in `-scan`): its job re-evaluates the covered tags at that
//!   digest for policies with a `max_severity` gate (`crate::replicate::gates`).
//! - Every other type (pull, failed or stopped scan, quota, replication, tag retention, ...) is
//!   ignored as a whole
//!   (one ignored notification, its type named in the debug log), validated no further, and the
//!   endpoint still answers 2xx.
//! - Harbor writes the digest into `tag` for a push by digest; such a "tag" (anything starting with
//!   `sha256:`/`sha512:` or equal to the digest) is dropped, leaving a digest-only event.
//! - When [`HarborOptions::ignore_operator`] names Ferry's robot account, events it caused are
//!   ignored (echo suppression; Harbor does not pass the User-Agent on).
//! - The event id is a hash of (kind, time, repository, digest, tag), the same in both formats and
//!   for a redelivery (CloudEvents' `id` is one UUID for all resources of a delivery).
//! - A missing or invalid `occur_at` / `time` becomes the time of receipt.
//! - [`senders`] reads the hosts a body names (`resource_url`, `harbor.example/library/app:v1`),
//!   for recognising the sending registry when the webhook URL has no `?registry=`.
//!
//! # Invariants
//! Every problem is an [`IngestError`] naming its JSON path (`data.resources[0].digest`); no
//! input panics; unknown fields are ignored (Harbor adds fields between versions); repositories,
//! tags and digests follow the one grammar of [`crate::policy::namespace`]; at most
//! [`super::MAX_EVENTS_PER_REQUEST`] resources.
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::json::{self, index, join};
use super::{kind_label, Batch, IgnoreReason, Ignored, IngestError};
use crate::event::{Event, EventKind};
use crate::policy::{check_digest, check_repository, check_tag};

/// Content type of the Default format.
pub const CONTENT_TYPE_DEFAULT: &str = "application/json";
/// Content type of the CloudEvents format (structured mode).
pub const CONTENT_TYPE_CLOUDEVENTS: &str = "application/cloudevents+json";
/// Every content type the Harbor endpoint accepts.
pub const CONTENT_TYPES: &[&str] = &[CONTENT_TYPE_DEFAULT, CONTENT_TYPE_CLOUDEVENTS];

/// Harbor's type of a finished scan in the Default format.
const SCANNING_COMPLETED: &str = "SCANNING_COMPLETED";

/// The CloudEvents version Harbor sends (and the only one there is).
const CLOUDEVENTS_VERSION: &str = "1.0";

/// Options of the Harbor parser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HarborOptions {
    /// Harbor user (robot account) Ferry writes as, e.g. `robot$ferry`: events whose `operator` is
    /// this name are Ferry's own writes and ignored. `None` keeps every event.
    pub ignore_operator: Option<String>,
}

/// A Harbor webhook policy's `payload_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Default,
    CloudEvents,
}

impl Format {
    /// The format of a body: CloudEvents when it has a `specversion` member.
    pub fn of(root: &Map<String, Value>) -> Format {
        if root.contains_key("specversion") {
            Format::CloudEvents
        } else {
            Format::Default
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Default => "Default",
            Format::CloudEvents => "CloudEvents",
        }
    }

    /// Where the resources and the repository are.
    fn data_key(self) -> &'static str {
        match self {
            Format::Default => "event_data",
            Format::CloudEvents => "data",
        }
    }

    /// The kind of event a Harbor type of this format becomes; `None`: ignored.
    fn kind(self, event_type: &str) -> Option<EventKind> {
        match (self, event_type) {
            (Format::Default, "PUSH_ARTIFACT")
            | (Format::CloudEvents, "harbor.artifact.pushed") => Some(EventKind::Push),
            (Format::Default, "DELETE_ARTIFACT")
            | (Format::CloudEvents, "harbor.artifact.deleted") => Some(EventKind::Delete),
            // A finished scan can release an image the `max_severity` gate held back: a push
            // event by the scanned digest (Harbor sends no tag), whose job re-evaluates the
            // covered tags at that digest.
            (Format::Default, SCANNING_COMPLETED)
            | (Format::CloudEvents, "harbor.scan.completed") => Some(EventKind::Push),
            _ => None,
        }
    }

    /// The event time in Unix ms (`occur_at` in seconds, or `time` in RFC 3339); `None` when
    /// missing or invalid.
    fn time_ms(self, root: &Map<String, Value>) -> Option<i64> {
        match self {
            Format::Default => occur_at_ms(root.get("occur_at")),
            Format::CloudEvents => root
                .get("time")
                .and_then(Value::as_str)
                .and_then(crate::clock::parse_rfc3339_ms),
        }
    }
}

/// Parses a Harbor webhook body (either format) from the registry configured as `registry`.
pub fn parse(body: &[u8], registry: &str, options: &HarborOptions) -> Result<Batch, IngestError> {
    parse_with_clock(body, registry, options, crate::clock::now_ms)
}

/// [`parse`] with an injectable clock (used when the event time is missing or invalid).
pub fn parse_with_clock(
    body: &[u8],
    registry: &str,
    options: &HarborOptions,
    now_ms: impl Fn() -> i64,
) -> Result<Batch, IngestError> {
    parse_document(&json::parse(body)?, registry, options, now_ms)
}

/// [`parse_with_clock`] of a body already parsed as JSON.
pub(crate) fn parse_document(
    document: &Value,
    registry: &str,
    options: &HarborOptions,
    now_ms: impl Fn() -> i64,
) -> Result<Batch, IngestError> {
    let root = json::object(document, "$")?;
    let format = Format::of(root);
    if format == Format::CloudEvents {
        check_specversion(root)?;
    }
    let event_type = json::req_str(root, "type", "")?;
    let Some(kind) = format.kind(event_type) else {
        tracing::debug!(
            registry,
            event_type,
            format = format.as_str(),
            "harbor event type ignored"
        );
        return Ok(all_ignored(1, event_type, IgnoreReason::Action));
    };

    let data_key = format.data_key();
    let data = json::req_object(root, data_key, "")?;
    let resources_path = join(data_key, "resources");
    let resources = super::bounded_events(
        json::req_array(data, "resources", data_key)?,
        &resources_path,
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

    let repository = read_repository(data, data_key)?;
    let time_ms = format.time_ms(root);
    let occurred_at_ms = time_ms.unwrap_or_else(|| {
        tracing::debug!(
            registry,
            format = format.as_str(),
            "harbor event has no valid time; using the time of receipt"
        );
        now_ms()
    });

    let mut batch = Batch {
        received: resources.len(),
        ..Batch::default()
    };
    for (j, item) in resources.iter().enumerate() {
        let (digest, tag) = read_resource(item, &index(&resources_path, j))?;
        let id = event_id(kind, time_ms, &repository, digest, tag);
        batch.events.push(Event {
            // A scan of a digest is not its push: another id, or forwarding would drop it.
            id: if is_scan(format, event_type) {
                format!("{id}-scan")
            } else {
                id
            },
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

/// The hosts a Harbor body names: the `resource_url` of every resource (`host[:port]/repo:tag`,
/// Harbor's external URL without its scheme), read leniently — what is missing or not a string
/// is skipped; [`parse`] reports it.
pub fn senders(document: &Value) -> Vec<&str> {
    let Some(root) = document.as_object() else {
        return Vec::new();
    };
    root.get(Format::of(root).data_key())
        .and_then(|data| data.get("resources"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("resource_url").and_then(Value::as_str))
        .collect()
}

/// Whether `event_type` is a finished scan.
fn is_scan(format: Format, event_type: &str) -> bool {
    matches!(
        (format, event_type),
        (Format::Default, SCANNING_COMPLETED) | (Format::CloudEvents, "harbor.scan.completed")
    )
}

/// A CloudEvents body must say `"specversion": "1.0"`.
fn check_specversion(root: &Map<String, Value>) -> Result<(), IngestError> {
    let version = json::req_str(root, "specversion", "")?;
    if version == CLOUDEVENTS_VERSION {
        Ok(())
    } else {
        Err(IngestError::invalid(
            "specversion",
            format!("CloudEvents version {version:?} is not supported (Harbor sends {CLOUDEVENTS_VERSION:?})"),
        ))
    }
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

/// `<data>.repository.repo_full_name`, else `namespace/name`.
fn read_repository(data: &Map<String, Value>, data_key: &str) -> Result<String, IngestError> {
    let path = join(data_key, "repository");
    let repo = json::req_object(data, "repository", data_key)?;
    let full = match json::opt_str(repo, "repo_full_name", &path)? {
        Some(full) => full.to_string(),
        None => {
            let namespace = json::opt_str(repo, "namespace", &path)?;
            let name = json::opt_str(repo, "name", &path)?;
            match (namespace, name) {
                (Some(ns), Some(name)) => format!("{ns}/{name}"),
                _ => return Err(IngestError::missing(join(&path, "repo_full_name"))),
            }
        }
    };
    check_repository(&full).map_err(IngestError::name_at(join(&path, "repo_full_name")))?;
    Ok(full)
}

/// A stable id: the same event in either format, or delivered again, gets the same id.
fn event_id(
    kind: EventKind,
    time_ms: Option<i64>,
    repository: &str,
    digest: Option<&str>,
    tag: Option<&str>,
) -> String {
    let time = time_ms.map(|t| t.to_string()).unwrap_or_default();
    let key = format!(
        "{}\n{time}\n{repository}\n{}\n{}",
        kind.as_str(),
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

    /// Harbor's documented payload `name` (`tests/fixtures/harbor/README.md`).
    fn documented(name: &str) -> &'static str {
        macro_rules! fixtures {
            ($($file:literal),*) => {
                match name {
                    $($file => include_str!(concat!("../../tests/fixtures/harbor/", $file, ".json")),)*
                    other => panic!("no fixture {other}"),
                }
            };
        }
        fixtures!(
            "default-push",
            "cloudevents-push",
            "default-delete",
            "cloudevents-delete",
            "default-pull",
            "cloudevents-pull",
            "default-scan-completed",
            "cloudevents-scan-completed",
            "default-scan-stopped",
            "cloudevents-scan-stopped",
            "default-scan-failed",
            "cloudevents-scan-failed",
            "default-quota-exceeded",
            "cloudevents-quota-exceeded",
            "default-quota-warning",
            "cloudevents-quota-warning",
            "default-replication",
            "cloudevents-replication",
            "default-tag-retention",
            "cloudevents-tag-retention"
        )
    }

    fn parse_documented(name: &str) -> Batch {
        super::parse_with_clock(
            documented(name).as_bytes(),
            "harbor",
            &HarborOptions::default(),
            || NOW,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn the_documented_push_is_one_push_by_digest_in_both_formats() {
        let default = parse_documented("default-push");
        let cloudevents = parse_documented("cloudevents-push");
        let e = &default.events[0];
        assert_eq!(
            (
                e.kind,
                e.repository.as_str(),
                e.tag.as_deref(),
                e.digest.as_deref()
            ),
            (
                EventKind::Push,
                "harbor/alpine",
                None,
                Some("sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4")
            )
        );
        // `occur_at` 1680501893 is the Default event's time; CloudEvents says 06:04:46Z.
        assert_eq!(e.occurred_at_ms, 1_680_501_893_000);
        assert_eq!(cloudevents.events.len(), 1);
        let c = &cloudevents.events[0];
        assert_eq!(c.occurred_at_ms, 1_680_501_886_000);
        assert_eq!(
            (c.kind, &c.repository, &c.tag, &c.digest),
            (e.kind, &e.repository, &e.tag, &e.digest)
        );
    }

    #[test]
    fn the_documented_delete_is_one_delete_of_the_tag_in_both_formats() {
        for name in ["default-delete", "cloudevents-delete"] {
            let batch = parse_documented(name);
            let got: Vec<_> = batch
                .events
                .iter()
                .map(|e| {
                    (
                        e.kind,
                        e.repository.as_str(),
                        e.tag.as_deref(),
                        e.digest.as_deref(),
                    )
                })
                .collect();
            assert_eq!(
                got,
                vec![(
                    EventKind::Delete,
                    "harbor/alpine",
                    Some("3.8"),
                    Some("sha256:2bb501e6173d9d006e56de5bce2720eb06396803300fe1687b58a7ff32bf4c14")
                )],
                "{name}"
            );
        }
    }

    #[test]
    fn the_documented_scanning_completed_is_a_push_by_the_scanned_digest_in_both_formats() {
        let digest = "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4";
        for name in ["default-scan-completed", "cloudevents-scan-completed"] {
            let batch = parse_documented(name);
            let e = &batch.events[..];
            assert_eq!(e.len(), 1, "{name}");
            assert_eq!(
                (
                    e[0].kind,
                    e[0].repository.as_str(),
                    e[0].tag.as_deref(),
                    e[0].digest.as_deref()
                ),
                (EventKind::Push, "harbor/alpine", None, Some(digest)),
                "{name}"
            );
            assert!(e[0].id.ends_with("-scan"), "{name}: {}", e[0].id);
            // 2023-04-03T06:12:55Z
            assert_eq!(e[0].occurred_at_ms, 1_680_502_375_000, "{name}");
        }
        // The same scan in either format is one event.
        assert_eq!(
            parse_documented("default-scan-completed").events[0].id,
            parse_documented("cloudevents-scan-completed").events[0].id
        );
    }

    #[test]
    fn a_scanning_completed_job_is_one_push_job_by_digest_for_a_gated_policy() {
        let config = crate::config::Config::from_slice(
            br#"{"registries": [{"name": "harbor", "url": "https://harbor.example"},
                               {"name": "us", "url": "https://us.example"}],
                 "policies": [{"name": "scanned", "src_registry": {"name": "harbor"},
                   "dest_registry": {"name": "us"}, "trigger": {"type": "event_based"},
                   "filters": [{"type": "tag", "value": "v*"}], "max_severity": "high"}]}"#,
            "test",
        )
        .unwrap();
        let matcher = crate::ingest::matcher::Matcher::new(&config).unwrap();
        let jobs = matcher.jobs(&parse_documented("default-scan-completed").events[0]);
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            (
                jobs[0].kind,
                jobs[0].repository.as_str(),
                jobs[0].reference.as_str()
            ),
            (
                EventKind::Push,
                "harbor/alpine",
                "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4"
            )
        );
    }

    #[test]
    fn one_event_in_either_format_gets_the_same_id() {
        // The samples are one delete: `occur_at` 1680502598 is `time` 2023-04-03T06:16:38Z.
        let default = parse_documented("default-delete");
        let cloudevents = parse_documented("cloudevents-delete");
        assert_eq!(default.events[0].id, cloudevents.events[0].id);
    }

    #[test]
    fn every_other_documented_type_is_ignored_in_both_formats() {
        for kind in [
            "pull",
            "scan-stopped",
            "scan-failed",
            "quota-exceeded",
            "quota-warning",
            "replication",
            "tag-retention",
        ] {
            for format in ["default", "cloudevents"] {
                let name = format!("{format}-{kind}");
                let batch = parse_documented(&name);
                assert!(batch.events.is_empty(), "{name}");
                assert_eq!(batch.received, 1, "{name}");
                assert_eq!(batch.ignored[0].reason, IgnoreReason::Action, "{name}");
                let label = if kind == "pull" { "pull" } else { "other" };
                assert_eq!(batch.ignored[0].kind, label, "{name}");
            }
        }
    }

    #[test]
    fn the_format_is_told_by_specversion() {
        for (name, format) in [
            ("default-push", Format::Default),
            ("cloudevents-push", Format::CloudEvents),
        ] {
            let value: Value = serde_json::from_str(documented(name)).unwrap();
            assert_eq!(Format::of(value.as_object().unwrap()), format, "{name}");
        }
    }

    #[test]
    fn a_cloudevents_body_of_another_version_is_refused_naming_specversion() {
        let mut body: Value = serde_json::from_str(documented("cloudevents-push")).unwrap();
        body["specversion"] = json!("0.3");
        let err = parse(&body, &HarborOptions::default()).unwrap_err();
        assert_eq!(err.path(), Some("specversion"));
        assert!(
            err.to_string().contains("\"0.3\" is not supported"),
            "{err}"
        );
        body["specversion"] = json!(1);
        let err = parse(&body, &HarborOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "specversion: expected a string, found a number"
        );
    }

    #[test]
    fn a_cloudevents_time_missing_or_invalid_is_now() {
        let mut body: Value = serde_json::from_str(documented("cloudevents-push")).unwrap();
        for time in [json!("yesterday"), json!(1_680_501_886), Value::Null] {
            body["time"] = time.clone();
            let batch = parse(&body, &HarborOptions::default()).unwrap();
            assert_eq!(batch.events[0].occurred_at_ms, NOW, "{time}");
        }
    }

    #[test]
    fn malformed_cloudevents_bodies_name_the_path_under_data() {
        let opts = HarborOptions::default();
        let body = |edit: &dyn Fn(&mut Value)| {
            let mut body: Value = serde_json::from_str(documented("cloudevents-delete")).unwrap();
            edit(&mut body);
            parse(&body, &opts).unwrap_err().to_string()
        };
        assert_eq!(
            body(&|b| {
                b["data"].as_object_mut().unwrap().remove("resources");
            }),
            "data.resources: missing"
        );
        assert_eq!(
            body(&|b| b["data"]["resources"] = json!("sha256:ab")),
            "data.resources: expected an array, found a string"
        );
        assert_eq!(
            body(&|b| b["data"] = json!([])),
            "data: expected an object, found an array"
        );
        assert_eq!(
            body(&|b| {
                b.as_object_mut().unwrap().remove("data");
            }),
            "data: missing"
        );
        assert_eq!(
            body(&|b| b["data"]["resources"][0]["tag"] = json!(["3.8"])),
            "data.resources[0].tag: expected a string, found an array"
        );
        assert!(
            body(&|b| b["data"]["resources"][0]["digest"] = json!("sha256:XYZ"))
                .starts_with("data.resources[0].digest: ")
        );
        assert_eq!(
            body(&|b| b["type"] = json!(7)),
            "type: expected a string, found a number"
        );
        assert_eq!(
            body(&|b| b["data"]["repository"] = json!({"name": "alpine"})),
            "data.repository.repo_full_name: missing"
        );
    }

    #[test]
    fn senders_are_the_resource_urls_in_both_formats() {
        for name in [
            "default-delete",
            "cloudevents-delete",
            "default-quota-exceeded",
        ] {
            let value: Value = serde_json::from_str(documented(name)).unwrap();
            let expected: Vec<&str> = if name.contains("quota") {
                vec![]
            } else {
                vec!["localhost/harbor/alpine:3.8"]
            };
            assert_eq!(senders(&value), expected, "{name}");
        }
        assert!(senders(&json!([1])).is_empty());
        assert!(senders(
            &json!({"data": {"resources": [{"resource_url": 5}]}, "specversion": "1.0"})
        )
        .is_empty());
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
