//! One distribution notification → a validated push or delete ([`Raw`]), or the reason it is
//! ignored: an action Ferry does not replicate, a blob event, or Ferry's own write.
//!
//! Invariants: an ignored event is validated only as far as needed to decide that it is ignored
//! (a malformed `pull` never blocks the registry's delivery queue); a kept event's repository, tag
//! and digest follow the one grammar of [`crate::policy::namespace`], and every problem is an
//! [`IngestError`] naming its JSON path; an id that is missing or cannot travel becomes a hash of
//! the event (stable across redeliveries), and a missing or invalid timestamp the time of receipt.
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::{Raw, Read};
use crate::event::{check_event_id, EventKind};
use crate::ingest::json::{self, index, join};
use crate::ingest::{kind_label, IgnoreReason, Ignored, IngestError, FERRY_USER_AGENT_PREFIX};
use crate::oci::manifest;
use crate::policy::{check_digest, check_repository, check_tag};

/// Reads `events[i]`: a push or delete to keep, or the reason it is ignored.
pub(super) fn read_event(
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

    let Some(target) = read_target(event, &path)? else {
        return ignored(IgnoreReason::Blob);
    };
    let id = read_id(event, item, &path)?;
    let occurred_at_ms = occurred_at_ms(event, registry, i, now_ms);

    Ok(Read::Event(Raw {
        index: i,
        id,
        kind,
        repository: target.repository.to_string(),
        tag: target.tag.map(str::to_string),
        digest: target.digest.map(str::to_string),
        media_type: target.media_type.map(str::to_string),
        references: target.references,
        occurred_at_ms,
        request_id: request_id.map(str::to_string),
    }))
}

/// The manifest an event's `target` names, checked.
#[derive(Debug, PartialEq)]
struct Target<'a> {
    repository: &'a str,
    media_type: Option<&'a str>,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
    /// Digests of `target.references`.
    references: Vec<String>,
}

/// The `target` of the event at `path`; `None` for a blob, which is validated no further.
fn read_target<'a>(
    event: &'a Map<String, Value>,
    path: &str,
) -> Result<Option<Target<'a>>, IngestError> {
    let target_path = join(path, "target");
    let target = json::req_object(event, "target", path)?;
    let repository = json::req_str(target, "repository", &target_path)?;
    check_repository(repository).map_err(IngestError::name_at(join(&target_path, "repository")))?;
    let media_type = json::opt_str(target, "mediaType", &target_path)?;
    let tag = json::opt_str(target, "tag", &target_path)?;
    let url = json::opt_str(target, "url", &target_path)?;
    if is_blob(media_type, url, tag.is_some()) {
        return Ok(None);
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
    Ok(Some(Target {
        repository,
        media_type,
        tag,
        digest,
        references,
    }))
}

/// The event's `id`, or a hash of `item` when it has none that can travel.
fn read_id(event: &Map<String, Value>, item: &Value, path: &str) -> Result<String, IngestError> {
    // An id that cannot travel (control characters, oversized) is replaced like a missing one.
    Ok(match json::opt_str(event, "id", path)? {
        Some(id) if check_event_id(id).is_ok() => id.to_string(),
        _ => synthesized_id(item),
    })
}

/// The event's RFC 3339 `timestamp` in Unix ms, else the time of receipt.
fn occurred_at_ms(
    event: &Map<String, Value>,
    registry: &str,
    i: usize,
    now_ms: &impl Fn() -> i64,
) -> i64 {
    let occurred_at_ms = match event.get("timestamp") {
        Some(Value::String(s)) => crate::clock::parse_rfc3339_ms(s),
        _ => None,
    };
    occurred_at_ms.unwrap_or_else(|| {
        tracing::debug!(
            registry,
            index = i,
            timestamp = ?event.get("timestamp"),
            "event has no valid rfc 3339 timestamp; using the time of receipt"
        );
        now_ms()
    })
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::*;
    use super::*;
    use crate::event::Event;

    #[test]
    fn a_blob_target_is_ignored_before_its_tag_and_digest_are_checked() {
        let event = json!({"target": {
            "repository": "team/app",
            "url": "https://r.example/v2/team/app/blobs/sha256:1",
            "digest": "not a digest",
        }});
        let event = event.as_object().unwrap();
        assert_eq!(read_target(event, "events[0]").unwrap(), None);
    }

    #[test]
    fn a_manifest_target_keeps_its_reference_digests() {
        let event = json!({"target": {
            "repository": "team/app",
            "mediaType": manifest::OCI_INDEX,
            "tag": "v1",
            "references": [{"digest": IMAGE_DIGEST}, {"mediaType": "x"}],
        }});
        let event = event.as_object().unwrap();
        assert_eq!(
            read_target(event, "events[0]").unwrap(),
            Some(Target {
                repository: "team/app",
                media_type: Some(manifest::OCI_INDEX),
                tag: Some("v1"),
                digest: None,
                references: vec![IMAGE_DIGEST.to_string()],
            })
        );
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
}
