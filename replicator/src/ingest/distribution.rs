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
use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::json::{self, index, join};
use super::{kind_label, Batch, IgnoreReason, Ignored, IngestError, FERRY_USER_AGENT_PREFIX};
use crate::event::{check_event_id, Event, EventKind};
use crate::oci::manifest;
use crate::policy::{check_digest, check_repository, check_tag};

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
    let document = json::parse(body)?;
    let root = json::object(&document, "$")?;
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

fn read_event(
    item: &Value,
    i: usize,
    registry: &str,
    now_ms: &impl Fn() -> i64,
) -> Result<Read, IngestError> {
    let path = index("events", i);
    let event = json::object(item, &path)?;
    let action = json::req_str(event, "action", &path)?;
    let ignored = |reason| {
        Ok(Read::Ignored(Ignored {
            index: i,
            kind: kind_label(action),
            reason,
        }))
    };
    let kind = match action {
        "push" => EventKind::Push,
        "delete" => EventKind::Delete,
        "mount" => return ignored(IgnoreReason::Blob),
        _ => return ignored(IgnoreReason::Action),
    };

    let request = json::opt_object(event, "request", &path)?;
    let request_path = join(&path, "request");
    let user_agent = match request {
        Some(r) => json::opt_str(r, "useragent", &request_path)?,
        None => None,
    };
    if user_agent.is_some_and(|ua| ua.starts_with(FERRY_USER_AGENT_PREFIX)) {
        return ignored(IgnoreReason::OwnWrite);
    }
    let request_id = match request {
        Some(r) => json::opt_str(r, "id", &request_path)?,
        None => None,
    };

    let target_path = join(&path, "target");
    let target = json::req_object(event, "target", &path)?;
    let repository = json::req_str(target, "repository", &target_path)?;
    check_repository(repository).map_err(IngestError::name_at(join(&target_path, "repository")))?;
    let media_type = json::opt_str(target, "mediaType", &target_path)?;
    let tag = json::opt_str(target, "tag", &target_path)?;
    let url = json::opt_str(target, "url", &target_path)?;
    if is_blob(media_type, url, tag.is_some()) {
        return ignored(IgnoreReason::Blob);
    }
    let digest = json::opt_str(target, "digest", &target_path)?;
    if let Some(d) = digest {
        check_digest(d).map_err(IngestError::name_at(join(&target_path, "digest")))?;
    }
    if let Some(t) = tag {
        check_tag(t).map_err(IngestError::name_at(join(&target_path, "tag")))?;
    }
    if tag.is_none() && digest.is_none() {
        return Err(IngestError::invalid(
            target_path,
            "neither `tag` nor `digest` is set",
        ));
    }
    let references = read_references(target, &target_path)?;

    // An id that cannot travel (control characters, oversized) is replaced like a missing one.
    let id = match json::opt_str(event, "id", &path)? {
        Some(id) if check_event_id(id).is_ok() => id.to_string(),
        _ => synthesized_id(item),
    };
    let occurred_at_ms = match event.get("timestamp") {
        Some(Value::String(s)) => crate::clock::parse_rfc3339_ms(s),
        _ => None,
    };
    let occurred_at_ms = occurred_at_ms.unwrap_or_else(|| {
        tracing::debug!(
            registry,
            index = i,
            timestamp = ?event.get("timestamp"),
            "event has no valid rfc 3339 timestamp; using the time of receipt"
        );
        now_ms()
    });

    Ok(Read::Event(Raw {
        index: i,
        id,
        kind,
        repository: repository.to_string(),
        tag: tag.map(str::to_string),
        digest: digest.map(str::to_string),
        media_type: media_type.map(str::to_string),
        references,
        occurred_at_ms,
        request_id: request_id.map(str::to_string),
    }))
}

/// Digests listed in `target.references` (each `{"mediaType", "digest", "size"}`).
fn read_references(
    target: &Map<String, Value>,
    target_path: &str,
) -> Result<Vec<String>, IngestError> {
    let Some(items) = json::opt_array(target, "references", target_path)? else {
        return Ok(Vec::new());
    };
    let list_path = join(target_path, "references");
    let mut digests = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let path = index(&list_path, j);
        let reference = json::object(item, &path)?;
        if let Some(d) = json::opt_str(reference, "digest", &path)? {
            digests.push(d.to_string());
        }
    }
    Ok(digests)
}

/// An id for an event that came without one: a hash of the event, so a redelivery gets the same id.
fn synthesized_id(item: &Value) -> String {
    let hash = Sha256::digest(item.to_string().as_bytes());
    format!("sha256-{}", hex::encode(&hash[..16]))
}

/// Is this a blob event rather than a manifest event?
fn is_blob(media_type: Option<&str>, url: Option<&str>, tagged: bool) -> bool {
    if url.is_some_and(|u| u.contains("/blobs/")) {
        return true;
    }
    let Some(media_type) = media_type else {
        return false;
    };
    let base = media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if is_manifest_media_type(&base) {
        return false;
    }
    base == "application/octet-stream"
        || base.contains(".layer.")
        || base.contains(".config.")
        || manifest::IMAGE_CONFIG_TYPES.contains(&base.as_str())
        // Only manifests have tags; a tagless target of an unknown type is a blob.
        || !tagged
}

/// Manifest media types distribution stores and tags.
pub fn is_manifest_media_type(media_type: &str) -> bool {
    [
        manifest::OCI_INDEX,
        manifest::OCI_MANIFEST,
        manifest::OCI_ARTIFACT,
        manifest::DOCKER_LIST,
        manifest::DOCKER_MANIFEST,
        manifest::DOCKER_SCHEMA1,
        manifest::DOCKER_SCHEMA1_SIGNED,
    ]
    .contains(&media_type)
}

/// Joins deletes, drops child-manifest pushes, and emits events in body order.
fn normalize(raws: Vec<Raw>, registry: &str, batch: &mut Batch) {
    // Deletes of one request and repository: one manifest event plus its tag events.
    let mut groups: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (k, raw) in raws.iter().enumerate() {
        if raw.kind == EventKind::Delete {
            if let Some(request_id) = raw.request_id.as_deref() {
                groups
                    .entry((request_id, raw.repository.as_str()))
                    .or_default()
                    .push(k);
            }
        }
    }
    let mut consumed = HashSet::new();
    let mut joined_digest: HashMap<usize, String> = HashMap::new();
    for members in groups.values() {
        let manifests: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&k| raws[k].tag.is_none() && raws[k].digest.is_some())
            .collect();
        let tags: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&k| raws[k].tag.is_some() && raws[k].digest.is_none())
            .collect();
        // One DELETE removes one manifest; anything else is not ours to pair up.
        let ([manifest], false) = (manifests.as_slice(), tags.is_empty()) else {
            continue;
        };
        if let Some(digest) = raws[*manifest].digest.clone() {
            consumed.insert(*manifest);
            for k in tags {
                joined_digest.insert(k, digest.clone());
            }
        }
    }

    // Digests a tagged push of this batch covers.
    let covered: HashSet<&str> = raws
        .iter()
        .filter(|r| r.kind == EventKind::Push && r.tag.is_some())
        .flat_map(|r| {
            r.references
                .iter()
                .map(String::as_str)
                .chain(r.digest.as_deref())
        })
        .collect();
    let child_pushes: HashSet<usize> = raws
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.kind == EventKind::Push
                && r.tag.is_none()
                && r.digest.as_deref().is_some_and(|d| covered.contains(d))
        })
        .map(|(k, _)| k)
        .collect();

    for (k, raw) in raws.into_iter().enumerate() {
        if consumed.contains(&k) {
            continue;
        }
        if child_pushes.contains(&k) {
            tracing::debug!(
                registry,
                repository = %raw.repository,
                digest = raw.digest.as_deref(),
                "child manifest push covered by a tagged push of the same batch"
            );
            batch.ignored.push(Ignored {
                index: raw.index,
                kind: "push",
                reason: IgnoreReason::ChildManifest,
            });
            continue;
        }
        let digest = raw.digest.or_else(|| joined_digest.remove(&k));
        batch.events.push(Event {
            id: raw.id,
            registry: registry.to_string(),
            repository: raw.repository,
            tag: raw.tag,
            digest,
            media_type: raw.media_type,
            kind: raw.kind,
            occurred_at_ms: raw.occurred_at_ms,
            request_id: raw.request_id,
        });
    }
    batch.ignored.sort_by_key(|i| i.index);
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;

    pub(crate) const INDEX_DIGEST: &str =
        "sha256:d37b0ec44dc5a0fef706f747a65f1bceb391d871c39d0567208e6faa547caa20";
    pub(crate) const AMD64_DIGEST: &str =
        "sha256:56f73201a4b1b9a5f6b0c3f0b6a8b3a4f1fc0f3d0c9f1a2d6c7b1e0e3f4a5b6c";
    pub(crate) const ARM64_DIGEST: &str =
        "sha256:0a15c05e8b8e2f7a3d4c5b6a79808f1e2d3c4b5a69788796a5b4c3d2e1f00112";
    pub(crate) const IMAGE_DIGEST: &str =
        "sha256:77d686e3e38b6ab19b76850261e0879edb760b1e9b603136d411c574862981cc";
    const LAYER_DIGEST: &str =
        "sha256:a93adf04e197fc8bd8e41981db73d0b37edfd535f473b2987b1530005f9852dd";
    const CONFIG_DIGEST: &str =
        "sha256:4dd83887e0ea3c2d0c7a2b1f3e6d5c4b3a29181706f5e4d3c2b1a09f8e7d6c5b";
    const NOW: i64 = 1_700_000_000_000;

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

    fn blob_target(digest: &str) -> Value {
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

    fn parse(body: &[u8]) -> Result<Batch, IngestError> {
        parse_with_clock(body, "eu", || NOW)
    }

    fn reasons(batch: &Batch) -> Vec<(usize, IgnoreReason)> {
        batch.ignored.iter().map(|i| (i.index, i.reason)).collect()
    }

    #[test]
    fn image_push_with_its_blob_events() {
        let body = envelope(vec![
            event("push", blob_target(LAYER_DIGEST), "r1", "skopeo/1.9.3"),
            event("push", blob_target(CONFIG_DIGEST), "r2", "skopeo/1.9.3"),
            event(
                "push",
                manifest_target(
                    manifest::OCI_MANIFEST,
                    IMAGE_DIGEST,
                    Some("v2"),
                    &[CONFIG_DIGEST, LAYER_DIGEST],
                ),
                "r3",
                "skopeo/1.9.3",
            ),
        ]);
        let batch = parse(&body).unwrap();
        assert_eq!(batch.received, 3);
        assert_eq!(
            reasons(&batch),
            vec![(0, IgnoreReason::Blob), (1, IgnoreReason::Blob)]
        );
        assert_eq!(
            batch.events,
            vec![Event {
                id: "push-r3-v2".to_string(),
                registry: "eu".into(),
                repository: "team/app".into(),
                tag: Some("v2".into()),
                digest: Some(IMAGE_DIGEST.into()),
                media_type: Some(manifest::OCI_MANIFEST.into()),
                kind: EventKind::Push,
                occurred_at_ms: 1_795_433_793_776,
                request_id: Some("r3".into()),
            }]
        );
    }

    #[test]
    fn index_push_keeps_only_the_tagged_index() {
        let body = envelope(vec![
            event(
                "push",
                manifest_target(manifest::OCI_MANIFEST, AMD64_DIGEST, None, &[LAYER_DIGEST]),
                "r1",
                "skopeo/1.9.3",
            ),
            event(
                "push",
                manifest_target(manifest::OCI_MANIFEST, ARM64_DIGEST, None, &[CONFIG_DIGEST]),
                "r2",
                "skopeo/1.9.3",
            ),
            event(
                "push",
                manifest_target(
                    manifest::OCI_INDEX,
                    INDEX_DIGEST,
                    Some("v1"),
                    &[AMD64_DIGEST, ARM64_DIGEST],
                ),
                "r3",
                "skopeo/1.9.3",
            ),
        ]);
        let batch = parse(&body).unwrap();
        assert_eq!(
            reasons(&batch),
            vec![
                (0, IgnoreReason::ChildManifest),
                (1, IgnoreReason::ChildManifest)
            ]
        );
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].tag.as_deref(), Some("v1"));
        assert_eq!(batch.events[0].digest.as_deref(), Some(INDEX_DIGEST));
    }

    #[test]
    fn push_by_digest_not_covered_by_a_tag_is_kept() {
        // A referrer pushed by digest, next to an unrelated tagged push.
        let body = envelope(vec![
            event(
                "push",
                manifest_target(manifest::OCI_MANIFEST, AMD64_DIGEST, None, &[]),
                "r1",
                "oras/1.2",
            ),
            event(
                "push",
                manifest_target(manifest::OCI_MANIFEST, IMAGE_DIGEST, Some("v2"), &[]),
                "r2",
                "oras/1.2",
            ),
        ]);
        let batch = parse(&body).unwrap();
        assert!(batch.ignored.is_empty());
        assert_eq!(batch.events.len(), 2);
        assert_eq!(batch.events[0].tag, None);
        assert_eq!(batch.events[0].reference(), Some(AMD64_DIGEST));
    }

    #[test]
    fn delete_by_digest_joins_manifest_and_tag_events() {
        let tag_target = |tag: &str| json!({"repository": "team/app", "tag": tag});
        let body = envelope(vec![
            event(
                "delete",
                json!({"repository": "team/app", "digest": IMAGE_DIGEST}),
                "del-1",
                "curl/8.0",
            ),
            event("delete", tag_target("v2"), "del-1", "curl/8.0"),
            // Another request: a lone tag delete (distribution 3.x deletes tags).
            event("delete", tag_target("old"), "del-2", "curl/8.0"),
        ]);
        let batch = parse(&body).unwrap();
        assert!(batch.ignored.is_empty());
        assert_eq!(batch.received, 3);
        let got: Vec<_> = batch
            .events
            .iter()
            .map(|e| {
                (
                    e.kind,
                    e.tag.as_deref(),
                    e.digest.as_deref(),
                    e.request_id.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    EventKind::Delete,
                    Some("v2"),
                    Some(IMAGE_DIGEST),
                    Some("del-1")
                ),
                (EventKind::Delete, Some("old"), None, Some("del-2")),
            ]
        );
    }

    #[test]
    fn delete_of_a_manifest_with_two_tags_gives_one_event_per_tag() {
        let body = envelope(vec![
            event(
                "delete",
                json!({"repository": "team/app", "digest": IMAGE_DIGEST}),
                "d",
                "curl/8.0",
            ),
            event(
                "delete",
                json!({"repository": "team/app", "tag": "v2"}),
                "d",
                "curl/8.0",
            ),
            event(
                "delete",
                json!({"repository": "team/app", "tag": "v3"}),
                "d",
                "curl/8.0",
            ),
        ]);
        let batch = parse(&body).unwrap();
        let got: Vec<_> = batch
            .events
            .iter()
            .map(|e| (e.tag.as_deref(), e.digest.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some("v2"), Some(IMAGE_DIGEST)),
                (Some("v3"), Some(IMAGE_DIGEST))
            ]
        );
    }

    #[test]
    fn lone_manifest_delete_stays_digest_only() {
        let body = envelope(vec![event(
            "delete",
            json!({"repository": "team/app", "digest": IMAGE_DIGEST}),
            "d",
            "curl/8.0",
        )]);
        let batch = parse(&body).unwrap();
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].tag, None);
        assert_eq!(batch.events[0].digest.as_deref(), Some(IMAGE_DIGEST));
    }

    #[test]
    fn pulls_mounts_and_unknown_actions_are_ignored() {
        let mut mount = blob_target(LAYER_DIGEST);
        mount["fromRepository"] = json!("other/app");
        let body = envelope(vec![
            event(
                "pull",
                manifest_target(manifest::OCI_INDEX, INDEX_DIGEST, Some("v1"), &[]),
                "p1",
                "skopeo/1.9.3",
            ),
            event("pull", blob_target(LAYER_DIGEST), "p2", "skopeo/1.9.3"),
            event("mount", mount, "m1", "skopeo/1.9.3"),
            // Malformed, but ignored before anything else is read.
            json!({"action": "pull", "target": 5}),
            json!({"action": "rename"}),
        ]);
        let batch = parse(&body).unwrap();
        assert!(batch.events.is_empty());
        assert_eq!(
            reasons(&batch),
            vec![
                (0, IgnoreReason::Action),
                (1, IgnoreReason::Action),
                (2, IgnoreReason::Blob),
                (3, IgnoreReason::Action),
                (4, IgnoreReason::Action),
            ]
        );
        let kinds: Vec<_> = batch.ignored.iter().map(|i| i.kind).collect();
        assert_eq!(kinds, vec!["pull", "pull", "mount", "pull", "other"]);
    }

    #[test]
    fn blob_detection() {
        let layer = "application/vnd.oci.image.layer.v1.tar+gzip";
        assert!(is_blob(Some("application/octet-stream"), None, false));
        assert!(is_blob(Some(layer), None, false));
        assert!(is_blob(
            Some("application/vnd.docker.container.image.v1+json"),
            None,
            false
        ));
        assert!(is_blob(
            Some("application/vnd.oci.image.config.v1+json"),
            None,
            false
        ));
        assert!(is_blob(Some("application/x-unknown"), None, false));
        assert!(is_blob(None, Some("http://r/v2/a/blobs/sha256:00"), false));
        assert!(!is_blob(Some(manifest::DOCKER_LIST), None, false));
        assert!(!is_blob(
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
            None,
            false
        ));
        assert!(!is_blob(Some("application/x-unknown"), None, true));
        assert!(!is_blob(None, None, false));
    }

    #[test]
    fn ferry_own_writes_are_ignored() {
        let body = envelope(vec![
            event(
                "push",
                manifest_target(manifest::OCI_MANIFEST, IMAGE_DIGEST, Some("v2"), &[]),
                "f1",
                "ferry/0.1.0",
            ),
            event(
                "delete",
                json!({"repository": "team/app", "digest": IMAGE_DIGEST}),
                "f2",
                "ferry/0.1.0 (worker eu-1)",
            ),
            event(
                "push",
                manifest_target(manifest::OCI_MANIFEST, IMAGE_DIGEST, Some("v3"), &[]),
                "s1",
                "ferryman/1.0",
            ),
        ]);
        let batch = parse(&body).unwrap();
        assert_eq!(
            reasons(&batch),
            vec![(0, IgnoreReason::OwnWrite), (1, IgnoreReason::OwnWrite)]
        );
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].tag.as_deref(), Some("v3"));
    }

    #[test]
    fn empty_events_is_an_empty_batch() {
        let batch = parse(br#"{"events": []}"#).unwrap();
        assert_eq!(batch, Batch::default());
    }

    #[test]
    fn timestamps_missing_or_invalid_fall_back_to_now() {
        let mut e = image_v2("push");
        e["timestamp"] = json!("yesterday");
        let mut f = e.clone();
        f.as_object_mut().unwrap().remove("timestamp");
        f.as_object_mut().unwrap().remove("id");
        let batch = parse(&envelope(vec![e, f.clone()])).unwrap();
        assert_eq!(batch.events[0].occurred_at_ms, NOW);
        assert_eq!(batch.events[1].occurred_at_ms, NOW);
        // A synthesized id is stable across redeliveries.
        let again = parse(&envelope(vec![f])).unwrap();
        assert_eq!(batch.events[1].id, again.events[0].id);
        assert!(again.events[0].id.starts_with("sha256-"));
    }

    /// `team/app:v2`, an image, from request `r` by user agent `x`.
    fn image_v2(action: &str) -> Value {
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
    fn ids_with_control_characters_or_oversized_are_replaced_by_a_hash() {
        let good = image_v2("push");
        for bad in [
            "a\nb".to_string(),
            "x".repeat(crate::event::MAX_EVENT_ID_LEN + 1),
        ] {
            let mut e = good.clone();
            e["id"] = json!(bad);
            let batch = parse(&envelope(vec![e])).unwrap();
            assert!(batch.events[0].id.starts_with("sha256-"), "{bad:?}");
        }
    }

    #[test]
    fn repositories_with_dot_or_empty_segments_are_refused_naming_the_field() {
        for repository in [
            "apps/../../v2/_catalog",
            "apps/./x",
            "apps//x",
            "Platform/x?y=1",
        ] {
            let mut e = image_v2("push");
            e["target"]["repository"] = json!(repository);
            let err = parse(&envelope(vec![e])).unwrap_err();
            assert_eq!(err.path(), Some("events[0].target.repository"), "{err}");
        }
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
