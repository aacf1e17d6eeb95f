//! CNCF distribution notifications → [`Event`]s.
//!
//! Distribution 2.x posts `application/vnd.docker.distribution.events.v1+json`, 3.x
//! `…events.v2+json`; both carry the same envelope, `{"events": [...]}`, each event with `id`,
//! `timestamp`, `action`, `target` (`mediaType`, `digest`, `size`, `repository`, `url`, `tag`,
//! `references`), `request` (`id`, `addr`, `host`, `method`, `useragent`), `actor` and `source`.
//!
//! # Normalization
//! - `push` → [`EventKind::Push`], `delete` → [`EventKind::Delete`]; `pull` and unknown actions
//!   are ignored, and so are blob events (`mount`, media type `application/octet-stream`, layer or
//!   config media types, a `/blobs/` URL, or a tagless target with a non-manifest media type).
//! - Events whose `request.useragent` starts with `ferry/` are Ferry's own writes: ignored, so
//!   bidirectional replication does not echo.
//! - **Deletes are joined**: one `DELETE /v2/<repo>/manifests/<digest>` yields a manifest event
//!   (digest, no tag) and one tag event per removed tag (tag, no digest), all with the same
//!   `request.id`. When they arrive in one batch they become one delete event per tag carrying
//!   that tag *and* the digest (one event in the common one-tag case); otherwise they stay
//!   digest-only / tag-only deletes.
//! - **Index pushes**: the child manifests are pushed by digest (no tag) before the tagged index.
//!   A tagless push whose digest a tagged push of the same batch references (`target.references`,
//!   sent with `notifications.events.includereferences: true`) or is, is ignored: the tagged job
//!   copies it. Any other tagless push is kept (a push by digest, e.g. a referrer), and its job's
//!   reference is the digest.
//!
//! Note on batching, observed with distribution 2.8.2: the notifier sends **one event per POST**,
//! so in practice the joins above only happen for senders that batch; a lone child-manifest or
//! manifest-delete event is kept as a digest-only event. Both are safe (jobs are level-triggered and
//! deletes check the destination digest), just more jobs.
//!
//! # Invariants
//! - Every problem is an [`IngestError`] naming its JSON path; no input panics.
//! - Ignored events are validated only as far as needed to decide that they are ignored, so a
//!   malformed `pull` event never blocks the registry's (head-of-line) delivery queue.
//! - A missing or invalid `timestamp` becomes "now" (logged at debug level); a missing or unusable
//!   `id` (control characters, longer than [`crate::event::MAX_EVENT_ID_LEN`]) a hash of the event.
//! - Repositories, tags and digests follow the one grammar of [`crate::policy::namespace`]; at most
//!   [`super::MAX_EVENTS_PER_REQUEST`] events per body.
//! - [`senders`] reads the hosts a body names (`target.url`, `request.host`), for recognising the
//!   sending registry when the webhook URL has no `?registry=` ([`super::origin`]).
//!
//! # Layout
//! - this file (`distribution/mod.rs`): the content types, [`parse`] (envelope → events, in two
//!   passes) and the whole-body tests with the fixtures every test here shares.
//! - `read`: one notification → a validated push or delete, or the reason it is ignored (actions,
//!   blobs, Ferry's own writes); ids, timestamps and names checked.
//! - `normalize`: the batch pass — deletes of one request joined, child manifests of a tagged
//!   index push dropped, events emitted in body order.
mod normalize;
mod read;

use serde_json::Value;

use super::json;
use super::{Batch, Ignored, IngestError};
#[cfg(doc)]
use crate::event::Event;
use crate::event::EventKind;

pub use read::is_manifest_media_type;

use normalize::normalize;
use read::read_event;

/// Content type of distribution 2.x notifications.
pub const CONTENT_TYPE_V1: &str = "application/vnd.docker.distribution.events.v1+json";
/// Content type of distribution 3.x notifications.
pub const CONTENT_TYPE_V2: &str = "application/vnd.docker.distribution.events.v2+json";
/// Every content type the distribution endpoint accepts.
pub const CONTENT_TYPES: &[&str] = &[CONTENT_TYPE_V1, CONTENT_TYPE_V2, "application/json"];

/// Parses a notification body from the registry configured as `registry`.
pub fn parse(body: &[u8], registry: &str) -> Result<Batch, IngestError> {
    parse_with_clock(body, registry, crate::clock::now_ms)
}

/// [`parse`] with an injectable clock (used when an event has no usable timestamp).
pub fn parse_with_clock(
    body: &[u8],
    registry: &str,
    now_ms: impl Fn() -> i64,
) -> Result<Batch, IngestError> {
    parse_document(&json::parse(body)?, registry, now_ms)
}

/// [`parse_with_clock`] of a body already parsed as JSON.
pub(crate) fn parse_document(
    document: &Value,
    registry: &str,
    now_ms: impl Fn() -> i64,
) -> Result<Batch, IngestError> {
    let root = json::object(document, "$")?;
    let items = super::bounded_events(json::req_array(root, "events", "")?, "events")?;

    let mut batch = Batch {
        received: items.len(),
        ..Batch::default()
    };
    let mut raws = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match read_event(item, i, registry, &now_ms)? {
            Read::Event(raw) => raws.push(raw),
            Read::Ignored(ignored) => {
                tracing::debug!(
                    registry,
                    index = i,
                    kind = ignored.kind,
                    reason = ignored.reason.as_str(),
                    "notification ignored"
                );
                batch.ignored.push(ignored);
            }
        }
    }
    normalize(raws, registry, &mut batch);
    Ok(batch)
}

/// The hosts a notification body names, for recognising the sending registry when the webhook
/// URL has no `?registry=`: every event's `target.url` (built by the registry from the request's
/// host) and `request.host` (the `Host` the client used). Read leniently — what is missing or not
/// a string is skipped; [`parse`] reports it.
pub fn senders(document: &Value) -> Vec<&str> {
    document
        .get("events")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|event| {
            [
                event.get("target").and_then(|t| t.get("url")),
                event.get("request").and_then(|r| r.get("host")),
            ]
        })
        .filter_map(|v| v.and_then(Value::as_str))
        .collect()
}

/// A push or delete event that passed validation.
#[derive(Debug)]
struct Raw {
    index: usize,
    id: String,
    kind: EventKind,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
    media_type: Option<String>,
    /// Digests of `target.references` (children of an index, layers of an image).
    references: Vec<String>,
    occurred_at_ms: i64,
    request_id: Option<String>,
}

enum Read {
    Event(Raw),
    Ignored(Ignored),
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::ingest::IgnoreReason;
    use crate::oci::manifest;

    pub(crate) const INDEX_DIGEST: &str =
        "sha256:d37b0ec44dc5a0fef706f747a65f1bceb391d871c39d0567208e6faa547caa20";
    pub(crate) const AMD64_DIGEST: &str =
        "sha256:56f73201a4b1b9a5f6b0c3f0b6a8b3a4f1fc0f3d0c9f1a2d6c7b1e0e3f4a5b6c";
    pub(crate) const ARM64_DIGEST: &str =
        "sha256:0a15c05e8b8e2f7a3d4c5b6a79808f1e2d3c4b5a69788796a5b4c3d2e1f00112";
    pub(crate) const IMAGE_DIGEST: &str =
        "sha256:77d686e3e38b6ab19b76850261e0879edb760b1e9b603136d411c574862981cc";
    pub(super) const LAYER_DIGEST: &str =
        "sha256:a93adf04e197fc8bd8e41981db73d0b37edfd535f473b2987b1530005f9852dd";
    pub(super) const CONFIG_DIGEST: &str =
        "sha256:4dd83887e0ea3c2d0c7a2b1f3e6d5c4b3a29181706f5e4d3c2b1a09f8e7d6c5b";
    pub(super) const NOW: i64 = 1_700_000_000_000;

    /// One event as distribution 2.8.2 sends it (shape copied from a captured notification).
    pub(crate) fn event(action: &str, target: Value, request_id: &str, user_agent: &str) -> Value {
        json!({
            "id": format!("{action}-{request_id}-{}", target.get("tag").or(target.get("digest")).and_then(Value::as_str).unwrap_or("")),
            "timestamp": "2026-11-23T11:36:33.776681309Z",
            "action": action,
            "target": target,
            "request": {
                "id": request_id,
                "addr": "127.0.0.1:46802",
                "host": "127.0.0.1:5001",
                "method": match action { "push" => "PUT", "delete" => "DELETE", _ => "GET" },
                "useragent": user_agent
            },
            "actor": {},
            "source": {"addr": "vm:5001", "instanceID": "ad4f3875-3286-4f9d-83f5-78e7a2662cf6"}
        })
    }

    pub(crate) fn manifest_target(
        media_type: &str,
        digest: &str,
        tag: Option<&str>,
        references: &[&str],
    ) -> Value {
        let mut t = json!({
            "mediaType": media_type,
            "size": 1234,
            "digest": digest,
            "length": 1234,
            "repository": "team/app",
            "url": format!("http://127.0.0.1:5001/v2/team/app/manifests/{digest}"),
        });
        if let Some(tag) = tag {
            t["tag"] = json!(tag);
        }
        if !references.is_empty() {
            t["references"] = Value::Array(
                references
                    .iter()
                    .map(|d| json!({"mediaType": manifest::OCI_MANIFEST, "digest": d, "size": 100}))
                    .collect(),
            );
        }
        t
    }

    pub(super) fn blob_target(digest: &str) -> Value {
        json!({
            "mediaType": "application/octet-stream",
            "size": 101,
            "digest": digest,
            "length": 101,
            "repository": "team/app",
            "url": format!("http://127.0.0.1:5001/v2/team/app/blobs/{digest}"),
        })
    }

    pub(crate) fn envelope(events: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({ "events": events })).unwrap()
    }

    pub(super) fn parse(body: &[u8]) -> Result<Batch, IngestError> {
        parse_with_clock(body, "eu", || NOW)
    }

    pub(super) fn reasons(batch: &Batch) -> Vec<(usize, IgnoreReason)> {
        batch.ignored.iter().map(|i| (i.index, i.reason)).collect()
    }

    /// `team/app:v2`, an image, from request `r` by user agent `x`.
    pub(super) fn image_v2(action: &str) -> Value {
        event(
            action,
            manifest_target(manifest::OCI_MANIFEST, IMAGE_DIGEST, Some("v2"), &[]),
            "r",
            "x",
        )
    }

    fn error(body: &[u8]) -> String {
        parse(body).unwrap_err().to_string()
    }

    #[test]
    fn empty_events_is_an_empty_batch() {
        let batch = parse(br#"{"events": []}"#).unwrap();
        assert_eq!(batch, Batch::default());
    }

    #[test]
    fn more_events_than_the_limit_are_refused_naming_the_limit() {
        let one = image_v2("pull");
        let at_limit = envelope(vec![one.clone(); crate::ingest::MAX_EVENTS_PER_REQUEST]);
        assert_eq!(
            parse(&at_limit).unwrap().received,
            crate::ingest::MAX_EVENTS_PER_REQUEST
        );
        let over = envelope(vec![one; crate::ingest::MAX_EVENTS_PER_REQUEST + 1]);
        let err = parse(&over).unwrap_err();
        assert!(matches!(
            err,
            IngestError::TooManyEvents {
                found: 1001,
                limit: 1000,
                ..
            }
        ));
        assert_eq!(err.path(), Some("events"));
        assert!(err.to_string().contains("limit of 1000"), "{err}");
    }

    #[test]
    fn malformed_bodies_name_the_path() {
        let good = image_v2("push");
        let full = envelope(vec![good.clone()]);
        let truncated = &full[..full.len() / 2];
        assert!(
            error(truncated).starts_with("body is not valid JSON (line 1, column"),
            "{}",
            error(truncated)
        );
        assert!(matches!(parse(b"").unwrap_err(), IngestError::Json { .. }));
        assert_eq!(error(b"[]"), "$: expected an object, found an array");
        assert_eq!(
            error(br#"{"events": {}}"#),
            "events: expected an array, found an object"
        );
        assert_eq!(error(br#"{"nothing": 1}"#), "events: missing");
        assert_eq!(
            error(br#"{"events": [7]}"#),
            "events[0]: expected an object, found a number"
        );
        assert_eq!(
            error(br#"{"events": [{"target": {}}]}"#),
            "events[0].action: missing"
        );
        assert_eq!(
            error(br#"{"events": [{"action": 3}]}"#),
            "events[0].action: expected a string, found a number"
        );

        let mut no_repo = good.clone();
        no_repo["target"]
            .as_object_mut()
            .unwrap()
            .remove("repository");
        assert_eq!(
            error(&envelope(vec![good.clone(), good.clone(), no_repo])),
            "events[2].target.repository: missing"
        );
        let mut bad_tag = good.clone();
        bad_tag["target"]["tag"] = json!(17);
        assert_eq!(
            error(&envelope(vec![bad_tag])),
            "events[0].target.tag: expected a string, found a number"
        );
        let mut bad_tag = good.clone();
        bad_tag["target"]["tag"] = json!("no spaces");
        assert!(
            error(&envelope(vec![bad_tag])).starts_with("events[0].target.tag: tag \"no spaces\"")
        );
        let mut bad_digest = good.clone();
        bad_digest["target"]["digest"] = json!("sha256:nothex");
        assert!(error(&envelope(vec![bad_digest])).starts_with("events[0].target.digest: "));
        let mut bad_repo = good.clone();
        bad_repo["target"]["repository"] = json!("Team/App");
        assert!(error(&envelope(vec![bad_repo])).starts_with("events[0].target.repository: "));
        let mut no_target = good.clone();
        no_target.as_object_mut().unwrap().remove("target");
        assert_eq!(
            error(&envelope(vec![no_target])),
            "events[0].target: missing"
        );
        let mut bare = good.clone();
        bare["target"] = json!({"repository": "team/app", "mediaType": manifest::OCI_MANIFEST});
        assert_eq!(
            error(&envelope(vec![bare])),
            "events[0].target: neither `tag` nor `digest` is set"
        );
        let mut bad_request = good.clone();
        bad_request["request"] = json!("x");
        assert_eq!(
            error(&envelope(vec![bad_request])),
            "events[0].request: expected an object, found a string"
        );
        let mut bad_refs = good;
        bad_refs["target"]["references"] = json!([{"digest": 1}]);
        assert_eq!(
            error(&envelope(vec![bad_refs])),
            "events[0].target.references[0].digest: expected a string, found a number"
        );
    }

    #[test]
    fn deeply_nested_or_odd_json_does_not_panic() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse(deep.as_bytes()).is_err());
        assert!(parse(b"\xff\xfe").is_err());
        assert!(parse(br#"{"events": null}"#).is_err());
        assert!(parse(
            br#"{"events": [{"action": "push", "target": {"repository": "a", "tag": ""}}]}"#
        )
        .is_err());
    }
}
