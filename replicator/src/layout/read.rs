//! [`LayoutSource`]: an OCI image layout — a directory or a tar of one — read as a transfer
//! source (`ferry import`), and as the previous export `ferry export --since` compares with.
//!
//! Invariants: `index.json` is checked once at open ([`super::Index::parse`]); a manifest is
//! returned only after its bytes hashed to its digest; blob bytes are streamed from disk in chunks
//! (never a whole blob in memory) and verified by the transfer that consumes them; in a
//! directory, a file or blob folder that is a symlink is refused; a tar is read in place.
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, BoxStream};
use oci_spec::image::{Descriptor, MediaType};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::Semaphore;

use crate::oci::digest::{self, Digest};
use crate::oci::manifest::{effective_media_type, MAX_MANIFEST_BYTES};
use crate::oci::{Manifest, RegistryClient, RemoteDescriptor};
use crate::transfer::{Source, TransferError};

use super::archive::{self, Span};
use super::{
    blob_path, layout_name, ExportRecord, Index, LayoutError, MAX_INDEX_BYTES, MAX_RECORD_BYTES,
    RECORD_FILE,
};

/// Bytes read from disk at a time.
const CHUNK: usize = 256 * 1024;

/// Where a layout's files are.
#[derive(Debug)]
enum Storage {
    Dir,
    /// The tar's regular files and where their bytes are.
    Tar(HashMap<String, Span>),
}

/// An OCI image layout read as a [`Source`].
#[derive(Debug)]
pub struct LayoutSource {
    name: String,
    path: PathBuf,
    storage: Storage,
    index: Index,
    record: Option<ExportRecord>,
}

impl LayoutSource {
    /// Opens the layout at `path` (a directory, or a `.tar` file): checks `oci-layout`, reads and
    /// checks `index.json` and the export record.
    pub async fn open(path: &Path) -> Result<LayoutSource, LayoutError> {
        let path = path.to_path_buf();
        let name = layout_name(&path);
        // A file is read as a tar whatever its name; anything else must be a layout directory.
        let storage = if path.is_file() {
            let p = path.clone();
            let files = tokio::task::spawn_blocking(move || archive::scan(&p))
                .await
                .map_err(|e| LayoutError::invalid(&name, "", format!("scan aborted: {e}")))??;
            Storage::Tar(files)
        } else {
            for d in ["", "blobs", "blobs/sha256"] {
                let p = path.join(d);
                // The layout itself may be reached through a symlink (a mount point); inside it,
                // nothing may be one.
                let meta = if d.is_empty() {
                    std::fs::metadata(&p)
                } else {
                    std::fs::symlink_metadata(&p)
                };
                match meta {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(LayoutError::invalid(
                            &name,
                            if d.is_empty() { "." } else { d },
                            "is not a directory (symlinks are refused)",
                        ))
                    }
                    Err(e) => {
                        return Err(LayoutError::io(
                            &name,
                            if d.is_empty() { "." } else { d },
                            e,
                        ))
                    }
                }
            }
            Storage::Dir
        };
        let mut layout = LayoutSource {
            name,
            path,
            storage,
            index: Index::default(),
            record: None,
        };
        let version = layout
            .read_small("oci-layout", 4096)
            .await?
            .ok_or_else(|| {
                layout.invalid("oci-layout", "missing: this is not an OCI image layout")
            })?;
        #[derive(serde::Deserialize)]
        struct Version {
            #[serde(rename = "imageLayoutVersion")]
            image_layout_version: String,
        }
        let v: Version = serde_json::from_slice(&version)
            .map_err(|e| layout.invalid("oci-layout", e.to_string()))?;
        if !v.image_layout_version.starts_with("1.") {
            return Err(layout.invalid(
                "oci-layout",
                format!(
                    "imageLayoutVersion {} is not supported (1.x is)",
                    v.image_layout_version
                ),
            ));
        }
        let index = layout
            .read_small("index.json", MAX_INDEX_BYTES)
            .await?
            .ok_or_else(|| layout.invalid("index.json", "missing"))?;
        layout.index = Index::parse(&layout.name, &index)?;
        layout.record = match layout.read_small(RECORD_FILE, MAX_RECORD_BYTES).await? {
            Some(b) => Some(ExportRecord::parse(&layout.name, &b)?),
            None => None,
        };
        Ok(layout)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// What this export (and those before it) carried; `None` for a layout Ferry did not write.
    pub fn record(&self) -> Option<&ExportRecord> {
        self.record.as_ref()
    }

    /// Every repository of the layout with all its tags, sorted.
    pub fn repositories(&self) -> Vec<(String, Vec<String>)> {
        let mut repos: std::collections::BTreeMap<&str, BTreeSet<&str>> = Default::default();
        for e in &self.index.entries {
            let tags = repos.entry(&e.repository).or_default();
            if let Some(t) = &e.tag {
                tags.insert(t);
            }
        }
        repos
            .into_iter()
            .map(|(r, t)| (r.to_string(), t.into_iter().map(str::to_string).collect()))
            .collect()
    }

    /// Every blob (manifests included) the layout holds.
    pub fn blobs(&self) -> Result<BTreeSet<String>, LayoutError> {
        let parse = |rel: &str| {
            rel.strip_prefix("blobs/sha256/")
                .map(|hex| format!("sha256:{hex}"))
                .filter(|d| digest::parse(d).is_some())
        };
        match &self.storage {
            Storage::Tar(files) => Ok(files.keys().filter_map(|k| parse(k)).collect()),
            Storage::Dir => {
                let dir = self.path.join("blobs/sha256");
                let mut out = BTreeSet::new();
                for e in std::fs::read_dir(&dir).map_err(|e| self.io("blobs/sha256", e))? {
                    let e = e.map_err(|e| self.io("blobs/sha256", e))?;
                    if let Some(d) =
                        parse(&format!("blobs/sha256/{}", e.file_name().to_string_lossy()))
                    {
                        out.insert(d);
                    }
                }
                Ok(out)
            }
        }
    }

    fn invalid(&self, file: &str, message: impl Into<String>) -> LayoutError {
        LayoutError::invalid(&self.name, file, message)
    }

    fn io(&self, file: &str, e: std::io::Error) -> LayoutError {
        LayoutError::io(&self.name, file, e)
    }

    /// Why content is absent, for an error: an incremental export names the one it follows.
    fn missing(&self, what: String, repository: &str) -> LayoutError {
        let hint = match &self.index.since {
            Some(since) => format!(
                " (an incremental export following export {since}) nor on the destination: import that export, and any before it, first"
            ),
            None => " nor on the destination: the layout is incomplete; export it again".into(),
        };
        LayoutError::Missing {
            layout: self.name.clone(),
            what,
            repository: repository.to_string(),
            hint,
        }
    }

    /// The file `rel` of a directory layout, refusing anything but a regular file.
    fn dir_file(&self, rel: &str) -> Result<Option<(PathBuf, u64)>, LayoutError> {
        let p = self.path.join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => Ok(Some((p, m.len()))),
            Ok(_) => Err(self.invalid(rel, "is not a regular file (symlinks are refused)")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(rel, e)),
        }
    }

    /// Where `rel` is: the file to open, where its bytes start and how many there are.
    fn locate(&self, rel: &str) -> Result<Option<(PathBuf, Span)>, LayoutError> {
        match &self.storage {
            Storage::Dir => Ok(self
                .dir_file(rel)?
                .map(|(p, size)| (p, Span { offset: 0, size }))),
            Storage::Tar(files) => Ok(files.get(rel).map(|s| (self.path.clone(), *s))),
        }
    }

    /// Whether the layout holds blob `digest`.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        matches!(self.locate(&blob_path(digest)), Ok(Some(_)))
    }

    /// A small file's bytes (`None` when absent); over `limit` bytes is an error.
    async fn read_small(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>, LayoutError> {
        let Some((path, span)) = self.locate(rel)? else {
            return Ok(None);
        };
        if span.size > limit {
            return Err(self.invalid(
                rel,
                format!(
                    "is {} bytes, over the {limit}-byte limit; refusing it",
                    span.size
                ),
            ));
        }
        let mut f = open_at(&path, span.offset)
            .await
            .map_err(|e| self.io(rel, e))?
            .take(span.size);
        let mut buf = Vec::with_capacity(span.size as usize);
        f.read_to_end(&mut buf).await.map_err(|e| self.io(rel, e))?;
        Ok(Some(buf))
    }

    /// The verified manifest `digest` of `repository`; `media_type` when the index gives one.
    async fn manifest(
        &self,
        repository: &str,
        digest: &Digest,
        media_type: Option<&str>,
    ) -> Result<Manifest, LayoutError> {
        let rel = blob_path(digest);
        let bytes = self
            .read_small(&rel, MAX_MANIFEST_BYTES)
            .await?
            .ok_or_else(|| self.missing(format!("manifest {digest}"), repository))?;
        let actual = digest::sha256(&bytes);
        if &actual != digest {
            return Err(LayoutError::Tampered {
                layout: self.name.clone(),
                file: rel,
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        let media_type = match media_type {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => effective_media_type(None, &bytes),
        };
        Ok(Manifest {
            media_type,
            digest: digest.clone(),
            bytes: bytes.into(),
        })
    }

    /// The index entry a reference names in `repository` (a tag, or a digest one entry has).
    fn entry(&self, repository: &str, reference: &str) -> Option<&super::Entry> {
        match digest::parse(reference) {
            Some(d) => self
                .index
                .entries
                .iter()
                .find(|e| e.repository == repository && e.digest == d),
            None => self.index.tag(repository, reference),
        }
    }
}

/// `path` opened and positioned at `offset`.
async fn open_at(path: &Path, offset: u64) -> std::io::Result<tokio::fs::File> {
    let mut f = tokio::fs::File::open(path).await?;
    if offset > 0 {
        f.seek(std::io::SeekFrom::Start(offset)).await?;
    }
    Ok(f)
}

/// One blob read from disk, chunk by chunk.
struct BlobRead {
    layout: String,
    file: String,
    path: PathBuf,
    /// Where the wanted bytes start in `path`, and how many there are.
    offset: u64,
    len: u64,
    reader: Option<tokio::io::Take<tokio::fs::File>>,
}

#[async_trait::async_trait]
impl Source for LayoutSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<RemoteDescriptor>, TransferError> {
        if let Some(e) = self.entry(repository, reference) {
            return Ok(Some(RemoteDescriptor {
                digest: e.digest.clone(),
                media_type: e.media_type.clone(),
                size: e.size,
            }));
        }
        // A child manifest, by digest: present when the layout holds it.
        let Some(d) = digest::parse(reference) else {
            return Ok(None);
        };
        if !self.has_blob(&d) {
            return Ok(None);
        }
        let m = self.manifest(repository, &d, None).await?;
        Ok(Some(RemoteDescriptor {
            size: m.bytes.len() as u64,
            digest: m.digest,
            media_type: m.media_type,
        }))
    }

    async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Manifest, TransferError> {
        if let Some(e) = self.entry(repository, reference) {
            return Ok(self
                .manifest(repository, &e.digest, Some(&e.media_type))
                .await?);
        }
        match digest::parse(reference) {
            Some(d) => Ok(self.manifest(repository, &d, None).await?),
            None => Err(LayoutError::NotFound {
                layout: self.name.clone(),
                repository: repository.to_string(),
                reference: reference.to_string(),
            }
            .into()),
        }
    }

    fn blob_bytes(
        self: Arc<Self>,
        repository: &str,
        digest: &Digest,
        from: u64,
        size: u64,
    ) -> BoxStream<'static, Result<Bytes, TransferError>> {
        let file = blob_path(digest);
        let located = match self.locate(&file) {
            Ok(Some(l)) => l,
            Ok(None) => {
                let e = self.missing(format!("blob {digest}"), repository);
                return Box::pin(stream::once(async move { Err(e.into()) }));
            }
            Err(e) => return Box::pin(stream::once(async move { Err(e.into()) })),
        };
        let (path, span) = located;
        // A file longer than the descriptor says yields its extra bytes too: the transfer's size
        // check refuses them.
        let from = from.min(span.size);
        let _ = size;
        let read = BlobRead {
            layout: self.name.clone(),
            file,
            path,
            offset: span.offset + from,
            len: span.size - from,
            reader: None,
        };
        Box::pin(stream::unfold(Some(read), |state| async move {
            let mut r = state?;
            if r.reader.is_none() {
                match open_at(&r.path, r.offset).await {
                    Ok(f) => r.reader = Some(f.take(r.len)),
                    Err(e) => {
                        let e = LayoutError::io(&r.layout, &r.file, e);
                        return Some((Err(e.into()), None));
                    }
                }
            }
            let reader = r.reader.as_mut()?;
            let mut buf = BytesMut::with_capacity(CHUNK);
            match reader.read_buf(&mut buf).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(buf.freeze()), Some(r))),
                Err(e) => {
                    let e = LayoutError::io(&r.layout, &r.file, e);
                    Some((Err(e.into()), None))
                }
            }
        }))
    }

    fn corrupt(&self, _repository: &str, digest: &Digest, actual: String) -> TransferError {
        LayoutError::Tampered {
            layout: self.name.clone(),
            file: blob_path(digest),
            expected: digest.to_string(),
            actual,
        }
        .into()
    }

    async fn referrers(
        &self,
        repository: &str,
        subject: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, TransferError> {
        let found = self
            .index
            .entries
            .iter()
            .filter(|e| e.repository == repository && e.referrer_of.as_ref() == Some(subject))
            .map(|e| {
                let mut d = Descriptor::new(
                    MediaType::from(e.media_type.as_str()),
                    e.size,
                    e.digest.clone(),
                );
                d.set_artifact_type(e.artifact_type.as_deref().map(MediaType::from));
                d
            })
            .collect();
        Ok(Some(found))
    }

    async fn list_tags(&self, repository: &str) -> Result<Vec<String>, TransferError> {
        Ok(self
            .index
            .entries
            .iter()
            .filter(|e| e.repository == repository)
            .filter_map(|e| e.tag.clone())
            .collect())
    }

    fn transfer_slots(&self) -> Option<&Arc<Semaphore>> {
        None
    }

    fn registry(&self) -> Option<&RegistryClient> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout_dir(index: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(dir.path().join("oci-layout"), super::super::OCI_LAYOUT).unwrap();
        std::fs::write(dir.path().join("index.json"), index).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_huge_index_is_refused_before_it_is_read() {
        let dir = layout_dir(b"");
        // Sparse: costs no disk, but says its size.
        let f = std::fs::File::options()
            .write(true)
            .open(dir.path().join("index.json"))
            .unwrap();
        f.set_len(MAX_INDEX_BYTES + 1).unwrap();
        let e = LayoutSource::open(dir.path()).await.unwrap_err();
        assert!(e.to_string().contains("index.json"), "{e}");
        assert!(e.to_string().contains("limit"), "{e}");
    }

    #[tokio::test]
    async fn a_symlinked_blob_is_refused() {
        let hex = "a".repeat(64);
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{hex}","size":10,"annotations":{{"dev.ferry.repository":"a","org.opencontainers.image.ref.name":"v1"}}}}]}}"#
        );
        let dir = layout_dir(index.as_bytes());
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("blobs/sha256").join(&hex))
            .unwrap();
        let layout = LayoutSource::open(dir.path()).await.unwrap();
        let e = layout.get_manifest("a", "v1").await.unwrap_err();
        assert!(e.to_string().contains("symlinks are refused"), "{e}");
    }

    #[tokio::test]
    async fn referrers_found_through_the_api_are_answered_from_their_entries() {
        let (subject, referrer) = ("a".repeat(64), "b".repeat(64));
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{subject}","size":10,"annotations":{{"dev.ferry.repository":"app","org.opencontainers.image.ref.name":"v1"}}}},
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{referrer}","size":20,"artifactType":"application/vnd.example.sbom","annotations":{{"dev.ferry.repository":"app","dev.ferry.referrer-of":"sha256:{subject}"}}}}]}}"#
        );
        let dir = layout_dir(index.as_bytes());
        let layout = LayoutSource::open(dir.path()).await.unwrap();
        let subject: Digest = format!("sha256:{subject}").parse().unwrap();
        let found = layout.referrers("app", &subject).await.unwrap().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].digest().to_string(), format!("sha256:{referrer}"));
        assert_eq!(
            found[0]
                .artifact_type()
                .as_ref()
                .map(|m| m.to_string())
                .as_deref(),
            Some("application/vnd.example.sbom")
        );
        assert!(layout
            .referrers("other", &subject)
            .await
            .unwrap()
            .unwrap()
            .is_empty());
        assert_eq!(
            layout.list_tags("app").await.unwrap(),
            vec!["v1".to_string()]
        );
    }

    #[tokio::test]
    async fn a_tag_the_layout_does_not_hold_is_not_found() {
        let dir = layout_dir(br#"{"schemaVersion":2,"manifests":[]}"#);
        let layout = LayoutSource::open(dir.path()).await.unwrap();
        assert!(layout.head_manifest("a", "v1").await.unwrap().is_none());
        assert!(layout
            .get_manifest("a", "v1")
            .await
            .unwrap_err()
            .is_not_found());
    }
}
