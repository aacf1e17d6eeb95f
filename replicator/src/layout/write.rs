//! [`LayoutWriter`]: blobs, `index.json` and the export record written into a layout directory.
//!
//! Invariants: a blob file appears under its digest only complete and verified (written to a
//! temporary name beside it, hashed on the way, renamed on success, removed on failure); a file
//! whose bytes would not change is not rewritten, so re-running an unchanged export writes no
//! file; the writer never follows a symlink it did not create and never writes outside its
//! directory (every name is a digest or a fixed file name).
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::oci::digest::{Digest, DigestVerifier};
use crate::oci::RegistryError;
use crate::transfer::TransferError;

use super::{blob_path, layout_name, LayoutError, OCI_LAYOUT};

/// A layout directory being written.
#[derive(Debug)]
pub struct LayoutWriter {
    name: String,
    dir: PathBuf,
}

impl LayoutWriter {
    /// Opens (creating it when absent) the layout directory `dir`. An existing non-empty directory
    /// must already be an OCI layout: Ferry does not write into arbitrary folders.
    pub fn create(dir: &Path) -> Result<LayoutWriter, LayoutError> {
        let name = layout_name(dir);
        let io = |file: &str, e| LayoutError::io(&name, file, e);
        // The directory itself may be reached through a symlink (a mount point); inside it, none.
        if let Ok(m) = std::fs::metadata(dir) {
            if !m.is_dir() {
                return Err(LayoutError::invalid(
                    &name,
                    ".",
                    "exists and is not a directory",
                ));
            }
            let empty = std::fs::read_dir(dir)
                .map_err(|e| io(".", e))?
                .next()
                .is_none();
            if !empty && !dir.join("oci-layout").is_file() {
                return Err(LayoutError::invalid(
                    &name,
                    ".",
                    "is a non-empty directory without an oci-layout file; export into a new or empty directory, or into an earlier export",
                ));
            }
        }
        for d in ["blobs", "blobs/sha256"] {
            let p = dir.join(d);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(LayoutError::invalid(
                        &name,
                        d,
                        "is not a directory (symlinks are refused)",
                    ))
                }
                Err(_) => std::fs::create_dir_all(&p).map_err(|e| io(d, e))?,
            }
        }
        let w = LayoutWriter {
            name,
            dir: dir.to_path_buf(),
        };
        w.write_file_sync("oci-layout", OCI_LAYOUT)?;
        Ok(w)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the layout holds blob `digest` with `size` bytes (a regular file).
    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        std::fs::symlink_metadata(self.dir.join(blob_path(digest)))
            .is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Writes `rel` unless it already holds exactly `bytes`; true when it was written.
    fn write_file_sync(&self, rel: &str, bytes: &[u8]) -> Result<bool, LayoutError> {
        let p = self.dir.join(rel);
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            if !m.is_file() {
                return Err(LayoutError::invalid(
                    &self.name,
                    rel,
                    "is not a regular file (symlinks are refused)",
                ));
            }
            if std::fs::read(&p).is_ok_and(|cur| cur == bytes) {
                return Ok(false);
            }
        }
        let tmp = self
            .dir
            .join(format!(".{rel}.partial-{}", std::process::id()));
        let io = |e| LayoutError::io(&self.name, rel, e);
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &p).map_err(io)?;
        Ok(true)
    }

    /// Writes a small top-level file (`index.json`, the export record) unless unchanged.
    pub async fn write_file(&self, rel: &str, bytes: &[u8]) -> Result<bool, LayoutError> {
        self.write_file_sync(rel, bytes)
    }

    /// Writes blob `digest` from `bytes` (`size` of them), verifying size and digest on the way;
    /// `progress` is told every chunk's length. The file appears only when complete and correct.
    pub async fn write_blob<S>(
        &self,
        repository: &str,
        source: &str,
        digest: &Digest,
        size: u64,
        bytes: S,
        progress: impl Fn(u64),
    ) -> Result<(), TransferError>
    where
        S: Stream<Item = Result<Bytes, TransferError>> + Unpin,
    {
        let rel = blob_path(digest);
        let final_path = self.dir.join(&rel);
        let tmp = self.dir.join(format!(
            "blobs/{}/.{}.partial-{}",
            digest.algorithm(),
            digest.digest(),
            std::process::id()
        ));
        let result = self
            .stream_into(&tmp, repository, source, digest, size, bytes, progress)
            .await;
        match result {
            Ok(()) => tokio::fs::rename(&tmp, &final_path)
                .await
                .map_err(|e| LayoutError::io(&self.name, &rel, e).into()),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_into<S>(
        &self,
        tmp: &Path,
        repository: &str,
        source: &str,
        digest: &Digest,
        size: u64,
        mut bytes: S,
        progress: impl Fn(u64),
    ) -> Result<(), TransferError>
    where
        S: Stream<Item = Result<Bytes, TransferError>> + Unpin,
    {
        let rel = blob_path(digest);
        let io = |e| TransferError::from(LayoutError::io(&self.name, &rel, e));
        let mut verifier =
            DigestVerifier::new(digest).ok_or_else(|| TransferError::UnsupportedDigest {
                registry: source.to_string(),
                repository: repository.to_string(),
                digest: digest.to_string(),
            })?;
        let mut f = tokio::fs::File::create(tmp).await.map_err(io)?;
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk?;
            verifier.update(&chunk);
            if verifier.len() > size {
                break;
            }
            f.write_all(&chunk).await.map_err(io)?;
            progress(chunk.len() as u64);
        }
        if verifier.len() != size {
            return Err(RegistryError::SizeMismatch {
                registry: source.to_string(),
                repository: repository.to_string(),
                digest: digest.to_string(),
                expected: size,
                actual: verifier.len(),
            }
            .into());
        }
        verifier
            .finish()
            .map_err(|actual| RegistryError::DigestMismatch {
                registry: source.to_string(),
                repository: repository.to_string(),
                expected: digest.to_string(),
                actual,
            })?;
        f.sync_all().await.map_err(io)?;
        Ok(())
    }
}
