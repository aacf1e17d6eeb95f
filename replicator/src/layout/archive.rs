//! Tar files of layouts: [`scan`] lists a tar's files and where their bytes start, refusing any
//! hostile entry; [`pack`] writes a layout directory into a tar.
//!
//! Invariants: a tar is never unpacked — its files are read in place at the offsets [`scan`]
//! found, so no entry can write anywhere; an entry that is not a regular file or a directory
//! (symlink, hard link, device, sparse file…), a path that is absolute or climbs (`..`), a path
//! listed twice, or more than [`MAX_ENTRIES`] entries refuse the whole archive with the entry's
//! name.
use std::collections::HashMap;
use std::path::{Component, Path};

use super::{layout_name, LayoutError};

/// More entries than this refuse a tar (a layout of that many blobs is not one Ferry wrote).
pub const MAX_ENTRIES: usize = 1_000_000;

/// Where one file's bytes are in a tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub size: u64,
}

/// The regular files of the tar at `path`, by their normalized path (`blobs/sha256/<hex>`).
/// Blocking: run it off the async runtime.
pub fn scan(path: &Path) -> Result<HashMap<String, Span>, LayoutError> {
    let layout = layout_name(path);
    let file = std::fs::File::open(path).map_err(|e| LayoutError::io(&layout, "", e))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| LayoutError::invalid(&layout, "", format!("not a tar file: {e}")))?;
    let mut files = HashMap::new();
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(LayoutError::invalid(
                &layout,
                "",
                format!("more than {MAX_ENTRIES} entries; refusing it"),
            ));
        }
        let entry = entry.map_err(|e| {
            LayoutError::invalid(&layout, format!("entry {n}"), format!("unreadable: {e}"))
        })?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = normalize(&raw).ok_or_else(|| {
            LayoutError::invalid(
                &layout,
                &raw,
                "the path is absolute or leaves the layout (`..`); refusing the archive",
            )
        })?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            other => {
                return Err(LayoutError::invalid(
                    &layout,
                    &raw,
                    format!("is a {other:?} entry, not a regular file; refusing the archive"),
                ))
            }
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| LayoutError::invalid(&layout, &raw, format!("bad size: {e}")))?;
        let span = Span {
            offset: entry.raw_file_position(),
            size,
        };
        if files.insert(name, span).is_some() {
            return Err(LayoutError::invalid(
                &layout,
                &raw,
                "is in the archive twice; refusing it",
            ));
        }
    }
    Ok(files)
}

/// `raw` as a relative path of plain components joined by `/` (`./` dropped); `None` when it is
/// absolute, climbs, or is empty.
fn normalize(raw: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Opens `path` at `span`: a reader of exactly its bytes. Blocking.
#[cfg(test)]
pub fn open_span(path: &Path, span: Span) -> std::io::Result<std::io::Take<std::fs::File>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(span.offset))?;
    Ok(f.take(span.size))
}

/// Writes the layout directory `dir` as the tar `to` (files in a stable order, relative paths,
/// no owner or time metadata beyond the files' own). Blocking.
pub fn pack(dir: &Path, to: &Path) -> Result<(), LayoutError> {
    let layout = layout_name(to);
    let file = std::fs::File::create(to).map_err(|e| LayoutError::io(&layout, "", e))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    builder.follow_symlinks(false);
    let mut files = Vec::new();
    collect(dir, dir, &mut files).map_err(|e| LayoutError::io(&layout, dir.display(), e))?;
    files.sort();
    for rel in files {
        let src = dir.join(&rel);
        builder
            .append_path_with_name(&src, &rel)
            .map_err(|e| LayoutError::io(&layout, &rel, e))?;
    }
    let out = builder
        .into_inner()
        .map_err(|e| LayoutError::io(&layout, "", e))?;
    let file = out
        .into_inner()
        .map_err(|e| LayoutError::io(&layout, "", e.into_error()))?;
    file.sync_all().map_err(|e| LayoutError::io(&layout, "", e))
}

/// Every regular file under `dir`, relative to `root`.
fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        let p = e.path();
        if t.is_dir() {
            collect(root, &p, out)?;
        } else if t.is_file() {
            if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_and_climbing_ones_refused() {
        assert_eq!(
            normalize("./blobs/sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalize("index.json").as_deref(), Some("index.json"));
        assert_eq!(normalize("../etc/passwd"), None);
        assert_eq!(normalize("blobs/../../x"), None);
        assert_eq!(normalize("/etc/passwd"), None);
        assert_eq!(normalize("."), None);
    }

    fn tar_with(
        dir: &Path,
        build: impl FnOnce(&mut tar::Builder<std::fs::File>),
    ) -> std::path::PathBuf {
        let p = dir.join("x.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&p).unwrap());
        build(&mut b);
        b.finish().unwrap();
        p
    }

    fn file_header(size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h
    }

    #[test]
    fn a_tar_is_scanned_for_the_offsets_of_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = tar_with(dir.path(), |b| {
            let mut h = file_header(5);
            b.append_data(&mut h, "./oci-layout", &b"hello"[..])
                .unwrap();
        });
        let files = scan(&p).unwrap();
        let span = files["oci-layout"];
        let mut s = String::new();
        std::io::Read::read_to_string(&mut open_span(&p, span).unwrap(), &mut s).unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn a_symlink_entry_refuses_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let p = tar_with(dir.path(), |b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "index.json", "/etc/passwd").unwrap();
        });
        let e = scan(&p).unwrap_err();
        assert!(e.to_string().contains("index.json"), "{e}");
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn a_climbing_path_refuses_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let p = tar_with(dir.path(), |b| {
            let mut h = file_header(1);
            // `append_data` refuses `..` itself: write the name into the header directly.
            h.as_old_mut().name[..12].copy_from_slice(b"../evil.json");
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
        });
        let e = scan(&p).unwrap_err();
        assert!(e.to_string().contains("../evil.json"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_a_tar_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.tar");
        std::fs::write(&p, vec![0x5a; 1500]).unwrap();
        assert!(scan(&p).is_err());
    }
}
