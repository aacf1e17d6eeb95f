//! The batch pass over the events [`read`](super::read) kept: joins the manifest and tag events of
//! one delete request, drops tagless pushes a tagged push of the same batch covers (an index's
//! children), and emits the rest in body order.
//!
//! Invariants: only a delete group of exactly one manifest event and at least one tag event is
//! joined (one event per tag, carrying the digest); anything else stays as sent; a dropped child
//! push is recorded as [`IgnoreReason::ChildManifest`], never lost silently; the ignored list ends
//! sorted by body position.
use std::collections::{HashMap, HashSet};

use super::Raw;
use crate::event::{Event, EventKind};
use crate::ingest::{Batch, IgnoreReason, Ignored};

/// Joins deletes, drops child-manifest pushes, and emits events in body order.
pub(super) fn normalize(raws: Vec<Raw>, registry: &str, batch: &mut Batch) {
    let (consumed, mut joined_digest) = join_deletes(&raws);
    let child_pushes = child_pushes(&raws);

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

/// Pairs the deletes of one request and repository: returns the positions of the manifest events
/// folded into their tag events, and the digest each of those tag events gets.
fn join_deletes(raws: &[Raw]) -> (HashSet<usize>, HashMap<usize, String>) {
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
    (consumed, joined_digest)
}

/// Positions of the tagless pushes whose digest a tagged push of this batch covers (itself or
/// among its references): an index's children.
fn child_pushes(raws: &[Raw]) -> HashSet<usize> {
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
    raws.iter()
        .enumerate()
        .filter(|(_, r)| {
            r.kind == EventKind::Push
                && r.tag.is_none()
                && r.digest.as_deref().is_some_and(|d| covered.contains(d))
        })
        .map(|(k, _)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::*;
    use super::*;
    use crate::oci::manifest;

    fn raw(kind: EventKind, request_id: &str, tag: Option<&str>, digest: Option<&str>) -> Raw {
        Raw {
            index: 0,
            id: String::new(),
            kind,
            repository: "team/app".into(),
            tag: tag.map(str::to_string),
            digest: digest.map(str::to_string),
            media_type: None,
            references: Vec::new(),
            occurred_at_ms: 0,
            request_id: Some(request_id.into()),
        }
    }

    #[test]
    fn deletes_of_two_manifests_in_one_request_are_not_joined() {
        let raws = [
            raw(EventKind::Delete, "r1", None, Some(AMD64_DIGEST)),
            raw(EventKind::Delete, "r1", None, Some(ARM64_DIGEST)),
            raw(EventKind::Delete, "r1", Some("v1"), None),
        ];
        let (consumed, joined) = join_deletes(&raws);
        assert!(consumed.is_empty() && joined.is_empty());
    }

    #[test]
    fn tag_deletes_of_one_request_get_the_digest_of_its_manifest_delete() {
        let raws = [
            raw(EventKind::Delete, "r1", Some("v1"), None),
            raw(EventKind::Delete, "r1", None, Some(INDEX_DIGEST)),
            raw(EventKind::Delete, "r2", Some("v2"), None),
        ];
        let (consumed, joined) = join_deletes(&raws);
        assert_eq!(consumed, HashSet::from([1]));
        assert_eq!(joined, HashMap::from([(0, INDEX_DIGEST.to_string())]));
    }

    #[test]
    fn a_tagless_push_is_a_child_only_when_a_tagged_push_covers_its_digest() {
        let mut index = raw(EventKind::Push, "r1", Some("v1"), Some(INDEX_DIGEST));
        index.references = vec![AMD64_DIGEST.to_string()];
        let raws = [
            raw(EventKind::Push, "r1", None, Some(AMD64_DIGEST)),
            raw(EventKind::Push, "r1", None, Some(ARM64_DIGEST)),
            index,
        ];
        assert_eq!(child_pushes(&raws), HashSet::from([0]));
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
}
