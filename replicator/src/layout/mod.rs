//! Air-gapped sites: an OCI image layout (a directory, or a `.tar` of one) as the far side of a
//! policy. `ferry export` writes what a policy covers on its source registry into a layout
//! ([`export`]); `ferry import` replicates a layout into the policy's destinations
//! ([`import`]) through the same engine as `ferry sync` — the layout is a
//! [`crate::transfer::Source`] ([`LayoutSource`]), so skipping (`HEAD`), cross-repository mounts,
//! uploads and the digest check of every byte are the ones every registry-to-registry copy uses.
//!
//! # Format
//! The [OCI image layout](https://github.com/opencontainers/image-spec/blob/main/image-layout.md):
//! `oci-layout`, `index.json` and `blobs/sha256/<hex>` (manifests are blobs too). Each entry of
//! `index.json` is a top manifest with annotations saying where it belongs:
//!
//! | annotation | on | value |
//! |---|---|---|
//! | `org.opencontainers.image.ref.name` | tags | the tag, alone (`v1`) |
//! | `dev.ferry.repository` | every entry | the source repository (`platform/app`) |
//! | `dev.ferry.referrer-of` | referrers found through the referrers API | the subject's digest |
//!
//! Referrers published under the tag scheme (`sha256-<hex>.sig`) are ordinary tag entries.
//! **Why this choice:** the image spec (and skopeo's and oras's `oci:` layouts, and umoci) read
//! `ref.name` as a bare tag, so a one-repository export stays usable with `skopeo copy
//! oci:DIR:v1 …`; skopeo has no notion of several repositories in one layout, containerd puts a full
//! registry reference in `io.containerd.image.name` (which names a host a far-side registry does
//! not have), and regclient/oras keep one repository per layout. A separate repository annotation
//! keeps `ref.name` standard and the repository exact (the policy's `dest_namespace` rewrite is
//! applied at import, as for `ferry sync`).
//!
//! `index.json`'s own annotations carry the export's id (`dev.ferry.export.id`: the sha256 of the
//! tag list) and, for an incremental export, the id it follows (`dev.ferry.export.since`).
//! `ferry-export.json` (ignored by other tools) records, per repository, every digest this export
//! and the ones before it carried: `--since` reads it to leave out what the far side already has.
//!
//! # Incremental exports
//! `ferry export --since PREVIOUS` (the previous export's directory or tar) lists every covered
//! tag in `index.json` as usual, but writes only the blobs and manifests the previous exports did
//! not carry *for that repository* (a layer shared with another repository is carried again, once,
//! so the far side never depends on a mount source it may not have). Import of an incremental
//! layout reads a tag's manifest only when the destination differs, and a blob only when the
//! destination lacks it; content absent from both is an error naming the digest and the export
//! that carried it ([`LayoutError::Missing`]).
//!
//! # Trust
//! A layout is hostile input: every manifest is re-hashed when read ([`LayoutError::Tampered`]),
//! every blob is verified by the transfer as it streams to the destination (the last byte is
//! held back until the digest matched, so a tampered blob never completes an upload and its tag is
//! never pushed). A tar is never unpacked: its entries are scanned for their offsets and read in
//! place, and an entry that is not a regular file or directory, or a path that is absolute or
//! climbs (`..`), refuses the whole archive. `index.json` and `ferry-export.json` have size
//! limits; digests, repositories and tags follow the one grammar ([`crate::policy`]).
//!
//! # Layout
//! - this file: the annotations, [`LayoutError`], the index model ([`Index`], [`Entry`]) and the
//!   export record ([`ExportRecord`]).
//! - `read`: [`LayoutSource`], a layout (directory or tar) read as a transfer source.
//! - `archive`: tar files — scanning entries (hostile-path checks) and packing a directory.
//! - `write`: [`LayoutWriter`], blobs and the index written into a directory, atomically per file.
//! - [`export`]: registry → layout; [`import`]: layout → registries.
mod archive;
pub mod export;
pub mod import;
mod read;
mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::oci::digest::{self, Digest};
use crate::policy::{check_repository, check_tag};

pub use read::LayoutSource;
pub use write::LayoutWriter;

/// The tag of an `index.json` entry (image spec).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The source repository of an `index.json` entry.
pub const REPOSITORY: &str = "dev.ferry.repository";
/// On a referrer's entry: the digest of its subject.
pub const REFERRER_OF: &str = "dev.ferry.referrer-of";
/// On `index.json`: this export's id.
pub const EXPORT_ID: &str = "dev.ferry.export.id";
/// On `index.json` of an incremental export: the id of the export it follows.
pub const EXPORT_SINCE: &str = "dev.ferry.export.since";
/// The export record's file name.
pub const RECORD_FILE: &str = "ferry-export.json";

/// Larger `index.json` files are refused (about 100 000 entries).
pub const MAX_INDEX_BYTES: u64 = 32 * 1024 * 1024;
/// Larger export records are refused.
pub const MAX_RECORD_BYTES: u64 = 256 * 1024 * 1024;

/// `oci-layout`'s content.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{layout}: {file}: {source}")]
    Io {
        layout: String,
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Unreadable or hostile content: bad JSON, a bad digest or name, an entry that is not a file.
    #[error("{layout}: {file}: {message}")]
    Invalid {
        layout: String,
        file: String,
        message: String,
    },
    #[error("{layout}: {file} hashes to {actual}, not {expected}: the layout was altered or damaged; refusing it (export it again)")]
    Tampered {
        layout: String,
        file: String,
        expected: String,
        actual: String,
    },
    /// Content an incremental export left out (the destination has to have it already).
    #[error("{layout}: {what} of {repository} is not in this layout{hint}")]
    Missing {
        layout: String,
        what: String,
        repository: String,
        hint: String,
    },
    /// The layout has no such tag (or manifest) in this repository.
    #[error("{layout}: no {repository}:{reference}")]
    NotFound {
        layout: String,
        repository: String,
        reference: String,
    },
}

impl LayoutError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, LayoutError::NotFound { .. })
    }

    pub(crate) fn io(layout: &str, file: impl std::fmt::Display, source: std::io::Error) -> Self {
        LayoutError::Io {
            layout: layout.to_string(),
            file: file.to_string(),
            source,
        }
    }

    pub(crate) fn invalid(
        layout: &str,
        file: impl std::fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        LayoutError::Invalid {
            layout: layout.to_string(),
            file: file.to_string(),
            message: message.into(),
        }
    }
}

/// The name a layout goes by in errors and logs.
pub fn layout_name(path: &Path) -> String {
    format!("layout {}", path.display())
}

/// Whether `path` names a tar file (by its extension) rather than a directory.
pub fn is_tar(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "tar")
}

/// Where a blob lives in a layout.
pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm(), digest.digest())
}

/// A descriptor as `index.json` holds it (the fields Ferry reads and writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawDescriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIndex {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<RawDescriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// One top manifest of a layout and where it belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub repository: String,
    /// `None` for a referrer found through the referrers API.
    pub tag: Option<String>,
    /// Set for a referrer found through the referrers API.
    pub referrer_of: Option<Digest>,
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub artifact_type: Option<String>,
}

impl Entry {
    fn raw(&self) -> RawDescriptor {
        let mut annotations = BTreeMap::new();
        annotations.insert(REPOSITORY.to_string(), self.repository.clone());
        if let Some(t) = &self.tag {
            annotations.insert(REF_NAME.to_string(), t.clone());
        }
        if let Some(s) = &self.referrer_of {
            annotations.insert(REFERRER_OF.to_string(), s.to_string());
        }
        RawDescriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.to_string(),
            size: self.size,
            artifact_type: self.artifact_type.clone(),
            annotations,
        }
    }
}

/// A layout's `index.json`, checked: every entry has a valid digest, repository and tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    pub entries: Vec<Entry>,
    pub id: Option<String>,
    pub since: Option<String>,
}

impl Index {
    /// Parses and checks `index.json` (`layout` names the layout in errors).
    pub fn parse(layout: &str, bytes: &[u8]) -> Result<Index, LayoutError> {
        let file = "index.json";
        let raw: RawIndex = serde_json::from_slice(bytes)
            .map_err(|e| LayoutError::invalid(layout, file, format!("not an OCI index: {e}")))?;
        if raw.schema_version != 2 {
            return Err(LayoutError::invalid(
                layout,
                file,
                format!("schemaVersion is {}, not 2", raw.schema_version),
            ));
        }
        let mut entries = Vec::with_capacity(raw.manifests.len());
        let mut tags = BTreeSet::new();
        for (i, d) in raw.manifests.into_iter().enumerate() {
            let at = format!("{file}: manifests[{i}]");
            let digest = parse_digest(layout, &at, &d.digest)?;
            let repository = d.annotations.get(REPOSITORY).cloned().ok_or_else(|| {
                LayoutError::invalid(
                    layout,
                    &at,
                    format!("has no {REPOSITORY} annotation (not written by ferry export; which repository it belongs to is unknown)"),
                )
            })?;
            check_repository(&repository)
                .map_err(|e| LayoutError::invalid(layout, &at, e.to_string()))?;
            let tag = d.annotations.get(REF_NAME).cloned();
            if let Some(t) = &tag {
                check_tag(t).map_err(|e| LayoutError::invalid(layout, &at, e.to_string()))?;
                if !tags.insert((repository.clone(), t.clone())) {
                    return Err(LayoutError::invalid(
                        layout,
                        &at,
                        format!("{repository}:{t} is listed twice"),
                    ));
                }
            }
            let referrer_of = d
                .annotations
                .get(REFERRER_OF)
                .map(|s| parse_digest(layout, &at, s))
                .transpose()?;
            if tag.is_none() && referrer_of.is_none() {
                return Err(LayoutError::invalid(
                    layout,
                    &at,
                    format!("has neither a {REF_NAME} nor a {REFERRER_OF} annotation"),
                ));
            }
            if d.size > crate::oci::manifest::MAX_MANIFEST_BYTES {
                return Err(LayoutError::invalid(
                    layout,
                    &at,
                    format!(
                        "a manifest of {} bytes is over the {}-byte limit",
                        d.size,
                        crate::oci::manifest::MAX_MANIFEST_BYTES
                    ),
                ));
            }
            entries.push(Entry {
                repository,
                tag,
                referrer_of,
                media_type: d.media_type,
                digest,
                size: d.size,
                artifact_type: d.artifact_type,
            });
        }
        Ok(Index {
            entries,
            id: raw.annotations.get(EXPORT_ID).cloned(),
            since: raw.annotations.get(EXPORT_SINCE).cloned(),
        })
    }

    /// `index.json`'s bytes: entries sorted, so the same content always gives the same file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut manifests: Vec<RawDescriptor> = self.entries.iter().map(Entry::raw).collect();
        manifests.sort_by(|a, b| {
            (
                a.annotations.get(REPOSITORY),
                a.annotations.get(REF_NAME),
                a.annotations.get(REFERRER_OF),
                &a.digest,
            )
                .cmp(&(
                    b.annotations.get(REPOSITORY),
                    b.annotations.get(REF_NAME),
                    b.annotations.get(REFERRER_OF),
                    &b.digest,
                ))
        });
        manifests.dedup();
        let mut annotations = BTreeMap::new();
        if let Some(id) = &self.id {
            annotations.insert(EXPORT_ID.to_string(), id.clone());
        }
        if let Some(s) = &self.since {
            annotations.insert(EXPORT_SINCE.to_string(), s.clone());
        }
        let raw = RawIndex {
            schema_version: 2,
            media_type: Some(crate::oci::manifest::OCI_INDEX.to_string()),
            manifests,
            annotations,
        };
        let mut bytes = serde_json::to_vec_pretty(&raw).expect("an index serializes");
        bytes.push(b'\n');
        bytes
    }

    /// The entry of `repository:tag`.
    pub fn tag(&self, repository: &str, tag: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.repository == repository && e.tag.as_deref() == Some(tag))
    }

    /// The id of a tag list: sha256 over `repository:tag@digest` lines, sorted.
    pub fn compute_id(&self) -> String {
        let mut lines: Vec<String> = self
            .entries
            .iter()
            .map(|e| {
                format!(
                    "{}:{}@{}",
                    e.repository,
                    e.tag.as_deref().unwrap_or("-"),
                    e.digest
                )
            })
            .collect();
        lines.sort();
        digest::sha256(lines.join("\n").as_bytes()).to_string()
    }
}

/// A digest from a layout: well-formed and sha256 (the only algorithm layouts here hold).
fn parse_digest(layout: &str, at: &str, s: &str) -> Result<Digest, LayoutError> {
    match digest::parse(s) {
        Some(d) if d.algorithm().as_ref() == "sha256" => Ok(d),
        _ => Err(LayoutError::invalid(
            layout,
            at,
            format!(
                "{:?} is not a sha256 digest",
                s.chars().take(80).collect::<String>()
            ),
        )),
    }
}

/// `ferry-export.json`: what this export and the ones before it carried, per repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRecord {
    /// This export's id (also in `index.json`).
    pub id: String,
    /// The export this one follows (`--since`); `None` for a full export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Repository → every digest (manifests and blobs) carried so far.
    pub carried: BTreeMap<String, BTreeSet<String>>,
}

impl ExportRecord {
    pub fn parse(layout: &str, bytes: &[u8]) -> Result<ExportRecord, LayoutError> {
        serde_json::from_slice(bytes)
            .map_err(|e| LayoutError::invalid(layout, RECORD_FILE, e.to_string()))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).expect("a record serializes");
        bytes.push(b'\n');
        bytes
    }

    pub fn carried(&self, repository: &str, digest: &Digest) -> bool {
        self.carried
            .get(repository)
            .is_some_and(|s| s.contains(digest.as_ref() as &str))
    }
}

/// A previous export, as `--since` reads it.
#[derive(Debug, Clone, Default)]
pub struct Previous {
    pub path: PathBuf,
    pub index: Index,
    pub record: ExportRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_json(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":10,"annotations":{{{extra}}}}}]}}"#,
            "a".repeat(64)
        )
    }

    #[test]
    fn an_index_entry_names_its_repository_and_tag() {
        let i = Index::parse(
            "l",
            entry_json(
                r#""dev.ferry.repository":"platform/app","org.opencontainers.image.ref.name":"v1""#,
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(i.entries[0].repository, "platform/app");
        assert_eq!(i.entries[0].tag.as_deref(), Some("v1"));
        assert!(i.tag("platform/app", "v1").is_some());
    }

    #[test]
    fn an_index_written_and_read_back_is_the_same() {
        let i = Index::parse(
            "l",
            entry_json(r#""dev.ferry.repository":"a","org.opencontainers.image.ref.name":"v1""#)
                .as_bytes(),
        )
        .unwrap();
        let again = Index::parse("l", &i.to_bytes()).unwrap();
        assert_eq!(again.entries, i.entries);
    }

    #[test]
    fn an_entry_without_a_repository_is_refused_naming_it() {
        let e = Index::parse(
            "l",
            entry_json(r#""org.opencontainers.image.ref.name":"v1""#).as_bytes(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("manifests[0]"), "{e}");
        assert!(e.to_string().contains(REPOSITORY), "{e}");
    }

    #[test]
    fn a_digest_that_is_not_a_digest_is_refused() {
        let bad = r#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:../../etc/passwd","size":1,"annotations":{"dev.ferry.repository":"a","org.opencontainers.image.ref.name":"v1"}}]}"#;
        let e = Index::parse("l", bad.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("not a sha256 digest"), "{e}");
    }

    #[test]
    fn names_outside_the_grammar_are_refused() {
        let e = Index::parse(
            "l",
            entry_json(r#""dev.ferry.repository":"../x","org.opencontainers.image.ref.name":"v1""#)
                .as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(e, LayoutError::Invalid { .. }), "{e}");
    }

    #[test]
    fn bad_json_is_an_error_naming_the_file() {
        let e = Index::parse("l", b"{not json").unwrap_err();
        assert!(e.to_string().contains("index.json"), "{e}");
    }
}
