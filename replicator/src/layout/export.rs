//! `ferry export`: what a policy covers on its source registry, written into an OCI image layout
//! (a directory, or a tar packed from one) — tags (through the same filters as `ferry sync`:
//! [`crate::replicate::tag`]'s admission), their graphs (index children by the platform filter,
//! config and distributable layers), and their referrers when the policy copies them.
//!
//! Invariants: a blob file appears only complete and verified ([`LayoutWriter`]); a manifest's
//! blob is written after everything it references, so a layout interrupted midway never holds a
//! manifest whose graph is incomplete; a blob the layout already holds is not written again (an
//! unchanged re-export into the same directory writes no file); with `--since`, content an earlier
//! export carried for the same repository is left out; a tag that failed is left out of
//! `index.json` (and of the record), so the next incremental export carries it.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{stream, StreamExt, TryStreamExt};
use oci_spec::image::Descriptor;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::oci::digest::Digest;
use crate::oci::{Manifest, ManifestGraph, RegistryError};
use crate::replicate::referrers::find_referrers;
use crate::replicate::tag::{admit_tag, Admitted};
use crate::replicate::{list_source, PreparedPolicy, RunProgress, SourceRepo, TagOutcome};
use crate::transfer::{self, BlobLedger, Source, StatsSnapshot, TransferError};

use super::{
    archive, is_tar, layout_name, Entry, ExportRecord, Index, LayoutError, LayoutSource,
    LayoutWriter, RECORD_FILE,
};

/// How deep referrers of referrers are followed (as `ferry sync` does).
const REFERRER_DEPTH: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("policy {policy}: {message}")]
    Policy { policy: String, message: String },
}

/// Knobs of an export.
#[derive(Clone)]
pub struct ExportOptions {
    /// The layout to write: a directory, or a file ending in `.tar`.
    pub to: PathBuf,
    /// A previous export (directory or tar): leave out what it and those before it carried.
    pub since: Option<PathBuf>,
    pub cancel: CancellationToken,
    pub tag_parallelism: usize,
    pub blob_parallelism: usize,
    pub progress: Arc<RunProgress>,
}

/// One tag of an export.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedTag {
    pub repository: String,
    pub tag: String,
    /// `copied`: its manifest was written now; `unchanged`: the layout or an earlier export
    /// already carried it.
    #[serde(flatten)]
    pub outcome: TagOutcome,
    /// Referrers (signatures, SBOMs…) exported with it.
    pub referrers: u64,
}

/// The result of exporting one policy.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub policy: String,
    pub layout: String,
    /// This export's id (`dev.ferry.export.id`).
    pub id: String,
    /// The export it follows (`--since`).
    pub since: Option<String>,
    pub tags: Vec<ExportedTag>,
    /// `blobs_copied`/`manifests_pushed`: written now; `blobs_skipped`: already in the layout or
    /// carried by an earlier export.
    pub stats: StatsSnapshot,
    pub seconds: f64,
}

impl ExportReport {
    pub fn failed(&self) -> usize {
        self.tags
            .iter()
            .filter(|t| matches!(t.outcome, TagOutcome::Failed { .. }))
            .count()
    }
}

/// Exports one policy into `opts.to`.
pub async fn export_policy(
    prepared: &PreparedPolicy,
    opts: &ExportOptions,
) -> Result<ExportReport, ExportError> {
    let started = Instant::now();
    let previous = match &opts.since {
        Some(p) => Some(previous_export(p).await?),
        None => None,
    };
    let target = Target::new(&opts.to)?;
    let writer = LayoutWriter::create(target.dir())?;
    let repos = list_source(&prepared.src, &prepared.policy, &prepared.selector).await?;
    let run = Run {
        prepared,
        src: prepared.src.clone(),
        writer,
        previous: previous.as_ref().map(|(_, r)| r),
        ledger: BlobLedger::default(),
        progress: opts.progress.clone(),
        cancel: opts.cancel.clone(),
        blob_parallelism: opts.blob_parallelism.max(1),
    };
    let work: Vec<(&SourceRepo, &String)> = repos
        .iter()
        .flat_map(|r| r.tags.iter().map(move |t| (r, t)))
        .collect();
    opts.progress
        .tags_total
        .fetch_add(work.len() as u64, Ordering::Relaxed);
    let results: Vec<(ExportedTag, Option<Done>)> = stream::iter(work)
        .map(|(repo, tag)| {
            let span = tracing::info_span!("export", policy = %prepared.policy.name, repository = %repo.repository, tag = %tag);
            let run = &run;
            async move {
                let r = run.export_tag(repo, tag).await;
                run.progress.tags_done.fetch_add(1, Ordering::Relaxed);
                r
            }
            .instrument(span)
        })
        .buffer_unordered(opts.tag_parallelism.max(1))
        .collect()
        .await;
    if opts.cancel.is_cancelled() {
        return Err(ExportError::Policy {
            policy: prepared.policy.name.clone(),
            message: "interrupted; the layout was left as it was before this export".into(),
        });
    }
    let mut tags = Vec::with_capacity(results.len());
    let mut record = ExportRecord {
        carried: previous
            .as_ref()
            .map(|(_, r)| r.carried.clone())
            .unwrap_or_default(),
        since: previous.as_ref().map(|(_, r)| r.id.clone()),
        ..ExportRecord::default()
    };
    let mut index = Index {
        since: record.since.clone(),
        ..Index::default()
    };
    for (tag, done) in results {
        if let Some(done) = done {
            index.entries.extend(done.entries);
            record
                .carried
                .entry(tag.repository.clone())
                .or_default()
                .extend(done.carried);
        }
        tags.push(tag);
    }
    tags.sort_by(|a, b| (&a.repository, &a.tag).cmp(&(&b.repository, &b.tag)));
    let id = index.compute_id();
    index.id = Some(id.clone());
    record.id = id.clone();
    run.writer
        .write_file("index.json", &index.to_bytes())
        .await?;
    run.writer
        .write_file(RECORD_FILE, &record.to_bytes())
        .await?;
    target.finish().await?;
    Ok(ExportReport {
        policy: prepared.policy.name.clone(),
        layout: opts.to.display().to_string(),
        id,
        since: record.since,
        tags,
        stats: opts.progress.stats.snapshot(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The previous export `--since` names: its layout and its record.
async fn previous_export(path: &Path) -> Result<(LayoutSource, ExportRecord), ExportError> {
    let layout = LayoutSource::open(path).await?;
    let record = layout.record().cloned().ok_or_else(|| {
        LayoutError::invalid(
            &layout_name(path),
            RECORD_FILE,
            "missing: --since needs a layout written by ferry export",
        )
    })?;
    Ok((layout, record))
}

/// Where the layout is written: the directory itself, or a staging directory packed into the tar
/// at the end (replacing the file atomically).
enum Target {
    Dir(PathBuf),
    Tar {
        staging: tempfile::TempDir,
        to: PathBuf,
    },
}

impl Target {
    fn new(to: &Path) -> Result<Target, LayoutError> {
        if !is_tar(to) || to.is_dir() {
            return Ok(Target::Dir(to.to_path_buf()));
        }
        let parent = match to.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let staging = tempfile::Builder::new()
            .prefix(".ferry-export-")
            .tempdir_in(&parent)
            .map_err(|e| LayoutError::io(&layout_name(to), parent.display(), e))?;
        Ok(Target::Tar {
            staging,
            to: to.to_path_buf(),
        })
    }

    fn dir(&self) -> &Path {
        match self {
            Target::Dir(d) => d,
            Target::Tar { staging, .. } => staging.path(),
        }
    }

    async fn finish(self) -> Result<(), LayoutError> {
        let Target::Tar { staging, to } = self else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || {
            let mut partial = to.clone().into_os_string();
            partial.push(".partial");
            let partial = PathBuf::from(partial);
            let packed = archive::pack(staging.path(), &partial).and_then(|()| {
                std::fs::rename(&partial, &to)
                    .map_err(|e| LayoutError::io(&layout_name(&to), "", e))
            });
            if packed.is_err() {
                let _ = std::fs::remove_file(&partial);
            }
            packed
        })
        .await
        .map_err(|e| LayoutError::invalid("", "", format!("packing aborted: {e}")))?
    }
}

/// What one exported tag adds to the index and the record.
struct Done {
    entries: Vec<Entry>,
    /// Every digest of its graph (and its referrers').
    carried: BTreeSet<String>,
}

/// One export run.
struct Run<'a> {
    prepared: &'a PreparedPolicy,
    src: Arc<crate::oci::RegistryClient>,
    writer: LayoutWriter,
    previous: Option<&'a ExportRecord>,
    /// One writer per blob within the run.
    ledger: BlobLedger,
    progress: Arc<RunProgress>,
    cancel: CancellationToken,
    blob_parallelism: usize,
}

impl Run<'_> {
    fn stats(&self) -> &transfer::TransferStats {
        &self.progress.stats
    }

    fn carried_before(&self, repository: &str, digest: &Digest) -> bool {
        self.previous.is_some_and(|r| r.carried(repository, digest))
    }

    async fn export_tag(&self, repo: &SourceRepo, tag: &str) -> (ExportedTag, Option<Done>) {
        let mut result = ExportedTag {
            repository: repo.repository.clone(),
            tag: tag.to_string(),
            outcome: TagOutcome::Skipped {
                reason: String::new(),
            },
            referrers: 0,
        };
        let mut done = Done {
            entries: Vec::new(),
            carried: BTreeSet::new(),
        };
        match self
            .export_tag_inner(repo, tag, &mut done, &mut result.referrers)
            .await
        {
            Ok(outcome) => {
                let ok = !matches!(outcome, TagOutcome::Skipped { .. });
                result.outcome = outcome;
                (result, ok.then_some(done))
            }
            Err(e) => {
                tracing::warn!(error = %e, "tag not exported");
                result.outcome = TagOutcome::Failed {
                    error: e.to_string(),
                };
                (result, None)
            }
        }
    }

    async fn export_tag_inner(
        &self,
        repo: &SourceRepo,
        tag: &str,
        done: &mut Done,
        referrers: &mut u64,
    ) -> Result<TagOutcome, TransferError> {
        self.check_cancel()?;
        let (manifest, graph) = match admit_tag(
            self.prepared,
            &(self.src.clone() as Arc<dyn Source>),
            &repo.repository,
            tag,
        )
        .await?
        {
            Admitted::Manifest(m, g) => (m, g),
            Admitted::Skipped(outcome) => return Ok(outcome),
        };
        let written = self
            .export_manifest(&repo.repository, &manifest, *graph, &mut done.carried)
            .await?;
        done.entries.push(Entry {
            repository: repo.repository.clone(),
            tag: Some(tag.to_string()),
            referrer_of: None,
            media_type: manifest.media_type.clone(),
            digest: manifest.digest.clone(),
            size: manifest.bytes.len() as u64,
            artifact_type: None,
        });
        if self.prepared.policy.copy_referrers {
            *referrers += self
                .export_referrers(repo, &manifest.digest, done, 0)
                .await?;
        }
        let digest = manifest.digest.to_string();
        Ok(if written {
            tracing::info!(%digest, "tag exported");
            TagOutcome::Copied { digest }
        } else {
            TagOutcome::Unchanged { digest }
        })
    }

    /// Writes `m`'s graph, then `m`, unless carried before; true when `m` itself was written.
    async fn export_manifest(
        &self,
        repository: &str,
        m: &Manifest,
        graph: ManifestGraph,
        carried: &mut BTreeSet<String>,
    ) -> Result<bool, TransferError> {
        carried.insert(m.digest.to_string());
        if self.carried_before(repository, &m.digest) {
            // An earlier export carried this manifest, so its whole graph too.
            self.stats().blobs_skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        match graph {
            ManifestGraph::Index { children, .. } => {
                for child in children
                    .iter()
                    .filter(|c| transfer::wanted_child(&self.prepared.selector, c))
                {
                    self.check_cancel()?;
                    let d = child.descriptor.digest();
                    if self.carried_before(repository, d) {
                        carried.insert(d.to_string());
                        continue;
                    }
                    let cm = self.src.get_manifest(repository, d.as_ref()).await?;
                    let cg = cm.graph().map_err(|source| TransferError::Manifest {
                        registry: self.src.name().to_string(),
                        repository: repository.to_string(),
                        digest: cm.digest.to_string(),
                        source,
                    })?;
                    Box::pin(self.export_manifest(repository, &cm, cg, carried)).await?;
                }
            }
            ManifestGraph::Image { blobs, .. } => {
                let blobs: Vec<Descriptor> =
                    blobs.into_iter().filter(transfer::distributable).collect();
                let mut writes = Vec::new();
                for d in &blobs {
                    carried.insert(d.digest().to_string());
                    writes.push(self.export_blob(repository, d));
                }
                stream::iter(writes)
                    .buffer_unordered(self.blob_parallelism)
                    .try_collect::<Vec<_>>()
                    .await?;
            }
        }
        self.write_manifest(repository, m).await
    }

    /// Writes one blob unless an earlier export carried it or the layout holds it.
    async fn export_blob(&self, repository: &str, d: &Descriptor) -> Result<(), TransferError> {
        self.check_cancel()?;
        let digest = d.digest();
        if self.carried_before(repository, digest) {
            self.stats().blobs_skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let slot = self.ledger.slot("layout", digest);
        let _held = slot.lock().await;
        if self.writer.has_blob(digest, d.size()) {
            self.stats().blobs_skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.stats()
            .bytes_planned
            .fetch_add(d.size(), Ordering::Relaxed);
        let src: Arc<dyn Source> = self.src.clone();
        let bytes = src
            .blob_bytes(repository, digest, 0, d.size())
            .take_until(self.cancel.clone().cancelled_owned());
        let stats = &self.progress.stats;
        let written = self
            .writer
            .write_blob(
                repository,
                self.src.name(),
                digest,
                d.size(),
                Box::pin(bytes),
                |n| {
                    stats.bytes_copied.fetch_add(n, Ordering::Relaxed);
                },
            )
            .await;
        self.check_cancel()?;
        written?;
        self.stats().blobs_copied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes a manifest's bytes as a blob unless the layout holds it; true when written.
    async fn write_manifest(&self, repository: &str, m: &Manifest) -> Result<bool, TransferError> {
        let size = m.bytes.len() as u64;
        let slot = self.ledger.slot("layout", &m.digest);
        let _held = slot.lock().await;
        if self.writer.has_blob(&m.digest, size) {
            return Ok(false);
        }
        let bytes = m.bytes.clone();
        self.writer
            .write_blob(
                repository,
                self.src.name(),
                &m.digest,
                size,
                stream::iter([Ok(bytes)]),
                |_| {},
            )
            .await?;
        self.stats()
            .manifests_pushed
            .fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Exports the referrers of `subject` (and, to a small depth, theirs), through the filters
    /// `ferry sync` applies. Returns how many were exported.
    async fn export_referrers(
        &self,
        repo: &SourceRepo,
        subject: &Digest,
        done: &mut Done,
        depth: u32,
    ) -> Result<u64, TransferError> {
        if depth > REFERRER_DEPTH {
            return Ok(0);
        }
        let src: &dyn Source = self.src.as_ref();
        let (listed, refs) = find_referrers(src, repo, subject).await?;
        let mut count = 0;
        for r in refs {
            self.check_cancel()?;
            let m = match src.get_manifest(&repo.repository, &r).await {
                Ok(m) => m,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let artifact_type = m.artifact_type();
            if !self
                .prepared
                .selector
                .matches_artifact_type(artifact_type.as_deref())
            {
                tracing::debug!(referrer = %r, ?artifact_type, "referrer excluded by the artifact_type filter");
                continue;
            }
            let graph = m.graph().map_err(|source| TransferError::Manifest {
                registry: src.name().to_string(),
                repository: repo.repository.clone(),
                digest: m.digest.to_string(),
                source,
            })?;
            self.export_manifest(&repo.repository, &m, graph, &mut done.carried)
                .await?;
            let via_api = listed.iter().any(|d| d.digest().to_string() == r);
            done.entries.push(Entry {
                repository: repo.repository.clone(),
                tag: (!via_api).then(|| r.clone()),
                referrer_of: via_api.then(|| subject.clone()),
                media_type: m.media_type.clone(),
                digest: m.digest.clone(),
                size: m.bytes.len() as u64,
                artifact_type: if via_api { artifact_type } else { None },
            });
            count += 1;
            count += Box::pin(self.export_referrers(repo, &m.digest, done, depth + 1)).await?;
        }
        Ok(count)
    }

    fn check_cancel(&self) -> Result<(), TransferError> {
        if self.cancel.is_cancelled() {
            Err(TransferError::Cancelled)
        } else {
            Ok(())
        }
    }
}
