//! A full reconciliation of one policy: list what the policy covers on the source, and make every
//! destination hold the same digest under every tag.
//!
//! Each tag is handled level-triggered: the *current* source state is read (`HEAD`, then `GET` only
//! when the destination differs), so re-running a sync, or running it on a stale event, is always
//! safe. A tag is reported `copied` only after a `HEAD` on the destination returned the source
//! digest. Referrers (signatures, SBOMs) follow their subject: through the OCI 1.1 referrers API when
//! the source has it, and through `sha256-<hex>[.suffix]` tags otherwise.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{stream, StreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Config, Credential, Secret};
use crate::oci::digest::Digest;
use crate::oci::{ManifestGraph, RegistryClient, RegistryError};
use crate::policy::{check_repository, check_tag, rewrite_repository, NameError, Policy, Selector};
use crate::throttle::Throttle;
use crate::transfer::{
    self, BlobLedger, StatsSnapshot, TransferContext, TransferError, TransferStats,
};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("policy {policy}: registry {registry:?} is not defined in the config's registries")]
    UnknownRegistry { policy: String, registry: String },
    #[error("no policy named {0:?} in the config")]
    UnknownPolicy(String),
    #[error("policy {policy}: {message}")]
    Policy { policy: String, message: String },
    #[error(transparent)]
    Credential(#[from] crate::config::CredentialError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// One client per configured registry, built once and shared.
#[derive(Debug, Default, Clone)]
pub struct Registries {
    clients: HashMap<String, Arc<RegistryClient>>,
    /// Where the clients share rate-limit pauses (kept for clients rebuilt from a new config).
    shared_gate: Option<Arc<dyn crate::oci::gate::SharedGate>>,
    /// Which credential references registries stored through the admin API may use (the
    /// strictest rules unless the daemon set the operator's).
    credential_rules: Arc<crate::config::CredentialRules>,
}

impl Registries {
    /// Builds clients for every registry of the config (resolving credentials; no network I/O).
    pub fn from_config(config: &Config) -> Result<Registries, SyncError> {
        let mut clients = HashMap::new();
        for r in &config.registries {
            let secret = match &r.credential {
                Some(c) => Credential::resolve(c, r)?,
                None => Secret::Anonymous,
            };
            clients.insert(r.name.clone(), Arc::new(RegistryClient::new(r, secret)?));
        }
        Ok(Registries {
            clients,
            shared_gate: None,
            credential_rules: Arc::default(),
        })
    }

    /// Holds the operator's rules for the credentials of registries stored through the API
    /// (checked by [`crate::catalog::clients`] and the admin API).
    pub fn with_credential_rules(mut self, rules: crate::config::CredentialRules) -> Registries {
        self.credential_rules = Arc::new(rules);
        self
    }

    pub fn credential_rules(&self) -> &crate::config::CredentialRules {
        &self.credential_rules
    }

    /// Shares every client's rate-limit pauses through `gate` (a region's Redis), so one worker's
    /// 429 slows every worker for that registry.
    pub fn with_shared_gate(mut self, gate: Arc<dyn crate::oci::gate::SharedGate>) -> Registries {
        for c in self.clients.values() {
            c.share_gate(gate.clone());
        }
        self.shared_gate = Some(gate);
        self
    }

    /// Clients for `config` that share pauses like these do.
    pub fn rebuilt(&self, config: &Config) -> Result<Registries, SyncError> {
        let mut fresh = Registries::from_config(config)?;
        fresh.credential_rules = self.credential_rules.clone();
        Ok(match &self.shared_gate {
            Some(g) => fresh.with_shared_gate(g.clone()),
            None => fresh,
        })
    }

    pub fn get(&self, policy: &str, name: &str) -> Result<Arc<RegistryClient>, SyncError> {
        self.clients
            .get(name)
            .cloned()
            .ok_or_else(|| SyncError::UnknownRegistry {
                policy: policy.to_string(),
                registry: name.to_string(),
            })
    }
}

/// Knobs of a run.
#[derive(Clone)]
pub struct SyncOptions {
    pub cancel: CancellationToken,
    /// Tags reconciled concurrently (across repositories).
    pub tag_parallelism: usize,
    /// Blobs of one manifest copied concurrently.
    pub blob_parallelism: usize,
    pub progress: Arc<RunProgress>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            cancel: CancellationToken::new(),
            tag_parallelism: 16,
            blob_parallelism: 8,
            progress: Arc::default(),
        }
    }
}

/// Live counters of a run, for progress displays.
#[derive(Debug, Default)]
pub struct RunProgress {
    pub tags_total: AtomicU64,
    pub tags_done: AtomicU64,
    pub stats: Arc<TransferStats>,
}

/// What happened to one tag on one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TagOutcome {
    Copied {
        digest: String,
    },
    Unchanged {
        digest: String,
    },
    /// `override: false` and the destination holds other content under this tag.
    Kept {
        source_digest: String,
        destination_digest: String,
    },
    Skipped {
        reason: String,
    },
    Failed {
        error: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct TagResult {
    pub destination: String,
    pub repository: String,
    pub destination_repository: String,
    pub tag: String,
    #[serde(flatten)]
    pub outcome: TagOutcome,
    /// Referrers (signatures, SBOMs…) pushed for this tag's manifest.
    pub referrers_copied: u64,
}

/// The result of syncing one policy.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub policy: String,
    pub tags: Vec<TagResult>,
    pub stats: StatsSnapshot,
    pub seconds: f64,
}

impl SyncReport {
    pub fn count(&self, f: impl Fn(&TagOutcome) -> bool) -> usize {
        self.tags.iter().filter(|t| f(&t.outcome)).count()
    }
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, TagOutcome::Failed { .. }))
    }
    /// True when every covered tag holds the source digest on every destination.
    pub fn converged(&self) -> bool {
        self.tags.iter().all(|t| {
            matches!(
                t.outcome,
                TagOutcome::Copied { .. }
                    | TagOutcome::Unchanged { .. }
                    | TagOutcome::Skipped { .. }
            )
        })
    }
}

/// Skip reason of a tag the source no longer has.
pub const TAG_GONE: &str = "tag disappeared from the source during the sync";

/// When a tag's referrers are looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Referrers {
    /// Also for unchanged tags (full reconciliations catch referrers pushed while events were lost).
    Always,
    /// Only after the tag was copied (event-driven jobs: a later referrer has its own event).
    OnCopy,
}

/// Is `tag` a tag of the OCI referrers tag scheme (`sha256-<hex>`, optionally with a suffix such as
/// cosign's `.sig`/`.att`/`.sbom`)?
pub fn is_referrer_tag(tag: &str) -> bool {
    let Some(rest) = tag
        .strip_prefix("sha256-")
        .map(|r| (r, 64))
        .or_else(|| tag.strip_prefix("sha512-").map(|r| (r, 128)))
    else {
        return false;
    };
    let (hex, len) = rest;
    hex.len() >= len
        && hex.as_bytes()[..len]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        && (hex.len() == len || hex.as_bytes()[len] == b'.')
}

/// One source repository and the tags the policy covers.
#[derive(Debug, Clone)]
pub struct SourceRepo {
    pub repository: String,
    /// Tags to reconcile.
    pub tags: Vec<String>,
    /// Every tag of the repository (referrer tags are found here).
    pub all_tags: Vec<String>,
}

/// Whether a name a registry listed (or a digest it answered) follows the grammar of
/// [`crate::policy::namespace`]; one that does not is skipped with a warning, never turned into a
/// job or an event (its error quotes the offending value, shortened; `in_repository` is an
/// already checked name).
pub(crate) fn listed_name(
    registry: &str,
    in_repository: Option<&str>,
    checked: Result<(), NameError>,
) -> bool {
    match checked {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(registry, repository = in_repository, error = %e, "the registry listed a name outside the grammar; skipped");
            false
        }
    }
}

/// Lists the source repositories and tags a policy covers (names outside the grammar skipped).
pub async fn list_source(
    src: &RegistryClient,
    policy: &Policy,
    selector: &Selector,
) -> Result<Vec<SourceRepo>, RegistryError> {
    let repos: Vec<String> = src
        .catalog()
        .await?
        .into_iter()
        .filter(|r| listed_name(src.name(), None, check_repository(r)))
        .filter(|r| selector.matches_repository(r))
        .collect();
    let listed: Vec<Result<SourceRepo, RegistryError>> = stream::iter(repos)
        .map(|repository| async move {
            let all_tags: Vec<String> = src
                .list_tags(&repository)
                .await?
                .into_iter()
                .filter(|t| listed_name(src.name(), Some(&repository), check_tag(t)))
                .collect();
            let tags = all_tags
                .iter()
                .filter(|t| {
                    selector.matches_tag(t) && !(policy.copy_referrers && is_referrer_tag(t))
                })
                .cloned()
                .collect();
            Ok(SourceRepo {
                repository,
                tags,
                all_tags,
            })
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut out = listed.into_iter().collect::<Result<Vec<_>, _>>()?;
    out.sort_by(|a, b| a.repository.cmp(&b.repository));
    Ok(out)
}

/// Explains a destination's `MANIFEST_BLOB_UNKNOWN` for an index whose children a platform filter
/// thinned out: the registry requires every child (distribution 2.x does).
fn refused_sparse_index(e: TransferError, sparse: bool, registry: &str) -> TransferError {
    let refused = matches!(
        &e,
        TransferError::Registry(RegistryError::Status { status: 400, errors, .. })
            if errors.iter().any(|x| x.code == "MANIFEST_BLOB_UNKNOWN")
    );
    if sparse && refused {
        TransferError::Policy(format!(
            "registry {registry} refuses a sparse index (the platform filter left children out; it wants every child present): {e}. Remove the platform filter for this destination, or use a registry that accepts sparse indexes"
        ))
    } else {
        e
    }
}

/// A policy compiled for running: its selector and destination names.
pub struct PreparedPolicy {
    pub policy: Policy,
    pub selector: Selector,
    pub src: Arc<RegistryClient>,
    pub dsts: Vec<Arc<RegistryClient>>,
}

impl PreparedPolicy {
    pub fn new(policy: &Policy, registries: &Registries) -> Result<PreparedPolicy, SyncError> {
        let selector = Selector::new(policy).map_err(|e| SyncError::Policy {
            policy: policy.name.clone(),
            message: e.to_string(),
        })?;
        let src = registries.get(&policy.name, &policy.src_registry.name)?;
        let dsts = policy
            .destinations()
            .map(|d| registries.get(&policy.name, &d.name))
            .collect::<Result<Vec<_>, _>>()?;
        if dsts.is_empty() {
            return Err(SyncError::Policy {
                policy: policy.name.clone(),
                message: "no dest_registry".into(),
            });
        }
        Ok(PreparedPolicy {
            policy: policy.clone(),
            selector,
            src,
            dsts,
        })
    }

    /// A bidirectional policy the other way round, with the same clients; `None` for other modes.
    pub fn reversed(&self) -> Option<PreparedPolicy> {
        let policy = self.policy.reversed()?;
        Some(PreparedPolicy {
            policy,
            selector: self.selector.clone(),
            src: self.dsts.first()?.clone(),
            dsts: vec![self.src.clone()],
        })
    }

    /// The registry a bidirectional policy's jobs in this direction read from (`Job::source`);
    /// `None` for other modes.
    pub fn job_source(&self) -> Option<String> {
        (self.policy.mode == crate::policy::Mode::Bidirectional)
            .then(|| self.policy.src_registry.name.clone())
    }

    /// Everything a transfer from this policy's source to `dst` needs.
    pub fn transfer_context(
        &self,
        dst: &Arc<RegistryClient>,
        ledger: Arc<BlobLedger>,
        stats: Arc<TransferStats>,
        throttle: Option<Arc<Throttle>>,
        cancel: CancellationToken,
        blob_parallelism: usize,
    ) -> TransferContext {
        TransferContext {
            src: self.src.clone(),
            dst: dst.clone(),
            ledger,
            stats,
            throttle,
            cancel,
            copy_by_chunk: self.policy.copy_by_chunk,
            blob_parallelism,
            leases: None,
            checkpoints: Arc::new(transfer::Checkpoints::local()),
        }
    }

    /// The destination repository for a source repository.
    pub fn dest_repository(&self, repository: &str) -> Result<String, String> {
        rewrite_repository(
            repository,
            &self.policy.dest_namespace,
            self.policy.dest_namespace_replace_count,
        )
        .map_err(|e| e.to_string())
    }
}

/// Runs a full reconciliation of one policy.
pub async fn sync_policy(
    prepared: &PreparedPolicy,
    opts: &SyncOptions,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let policy = &prepared.policy;
    let repos = list_source(&prepared.src, policy, &prepared.selector).await?;
    let ledger = Arc::new(BlobLedger::default());
    let throttle = Throttle::from_kib_per_sec(policy.speed).map(Arc::new);
    let mut work = Vec::new();
    for dst in &prepared.dsts {
        let ctx = prepared.transfer_context(
            dst,
            ledger.clone(),
            opts.progress.stats.clone(),
            throttle.clone(),
            opts.cancel.clone(),
            opts.blob_parallelism,
        );
        for repo in &repos {
            for tag in &repo.tags {
                work.push((ctx.clone(), repo, tag.clone()));
            }
        }
    }
    opts.progress
        .tags_total
        .fetch_add(work.len() as u64, Ordering::Relaxed);
    let results: Vec<TagResult> = stream::iter(work)
        .map(|(ctx, repo, tag)| {
            let span = tracing::info_span!("tag", policy = %policy.name, destination = %ctx.dst.name(), repository = %repo.repository, tag = %tag);
            async move {
                let r = reconcile_tag(prepared, &ctx, repo, &tag).await;
                opts.progress.tags_done.fetch_add(1, Ordering::Relaxed);
                r
            }
            .instrument(span)
        })
        .buffer_unordered(opts.tag_parallelism.max(1))
        .collect()
        .await;
    let mut tags = results;
    tags.sort_by(|a, b| {
        (&a.destination, &a.repository, &a.tag).cmp(&(&b.destination, &b.repository, &b.tag))
    });
    Ok(SyncReport {
        policy: policy.name.clone(),
        tags,
        stats: opts.progress.stats.snapshot(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn reconcile_tag(
    prepared: &PreparedPolicy,
    ctx: &TransferContext,
    repo: &SourceRepo,
    tag: &str,
) -> TagResult {
    let mut result = TagResult {
        destination: ctx.dst.name().to_string(),
        repository: repo.repository.clone(),
        destination_repository: String::new(),
        tag: tag.to_string(),
        outcome: TagOutcome::Skipped {
            reason: String::new(),
        },
        referrers_copied: 0,
    };
    let dst_repo = match prepared.dest_repository(&repo.repository) {
        Ok(r) => r,
        Err(e) => {
            result.outcome = TagOutcome::Failed { error: e };
            return result;
        }
    };
    result.destination_repository = dst_repo.clone();
    let outcome = copy_tag(
        prepared,
        ctx,
        repo,
        &dst_repo,
        tag,
        Referrers::Always,
        &mut result.referrers_copied,
    )
    .await;
    result.outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "tag failed");
            TagOutcome::Failed {
                error: e.to_string(),
            }
        }
    };
    if let TagOutcome::Copied { digest } = &result.outcome {
        tracing::info!(%digest, destination_repository = %dst_repo, "tag copied");
    }
    result
}

async fn copy_tag(
    prepared: &PreparedPolicy,
    ctx: &TransferContext,
    repo: &SourceRepo,
    dst_repo: &str,
    tag: &str,
    referrers: Referrers,
    referrers_copied: &mut u64,
) -> Result<TagOutcome, TransferError> {
    let src_repo = &repo.repository;
    // Both sides at once: a no-op resync costs one round trip per tag.
    let (src_head, dst_head) = tokio::join!(
        ctx.src.head_manifest(src_repo, tag),
        ctx.dst.head_manifest(dst_repo, tag)
    );
    let Some(src_head) = src_head? else {
        return Ok(TagOutcome::Skipped {
            reason: TAG_GONE.into(),
        });
    };
    let dst_head = dst_head?;
    let outcome = match &dst_head {
        Some(d) if d.digest == src_head.digest => TagOutcome::Unchanged {
            digest: d.digest.to_string(),
        },
        Some(d) if !prepared.policy.override_ => {
            tracing::info!(source_digest = %src_head.digest, destination_digest = %d.digest, "destination tag differs; kept (override: false)");
            return Ok(TagOutcome::Kept {
                source_digest: src_head.digest.to_string(),
                destination_digest: d.digest.to_string(),
            });
        }
        _ => {
            if prepared.selector.has_label_filters() {
                let labels = ctx.src.harbor_labels(src_repo, tag).await?.ok_or_else(|| {
                    TransferError::Policy(format!(
                        "label filter: registry {} did not answer Harbor's artifact API for {src_repo}:{tag} (404); label filters need a Harbor source registry",
                        ctx.src.name()
                    ))
                })?;
                if !prepared.selector.matches_labels(&labels) {
                    return Ok(TagOutcome::Skipped {
                        reason: format!("excluded by the label filter (labels: {labels:?})"),
                    });
                }
            }
            let manifest = match ctx.src.get_manifest(src_repo, tag).await {
                Ok(m) => m,
                Err(e) if e.is_not_found() => {
                    return Ok(TagOutcome::Skipped {
                        reason: TAG_GONE.into(),
                    })
                }
                Err(e) => return Err(e.into()),
            };
            let graph = manifest.graph().map_err(|source| TransferError::Manifest {
                registry: ctx.src.name().to_string(),
                repository: src_repo.clone(),
                digest: manifest.digest.to_string(),
                source,
            })?;
            if !prepared.selector.matches_resource(graph.is_image()) {
                return Ok(TagOutcome::Skipped {
                    reason: "excluded by the resource filter".into(),
                });
            }
            // A referrer pushed under the tag scheme (its own event) follows the artifact_type
            // filter like a referrer found through its subject.
            if is_referrer_tag(tag)
                && !prepared
                    .selector
                    .matches_artifact_type(manifest.artifact_type().as_deref())
            {
                return Ok(TagOutcome::Skipped {
                    reason: "excluded by the artifact_type filter".into(),
                });
            }
            transfer::ensure_graph(ctx, src_repo, dst_repo, &manifest, &prepared.selector).await?;
            let sparse = matches!(graph, ManifestGraph::Index { .. })
                && prepared.selector.has_platform_filter();
            transfer::push_manifest(ctx, dst_repo, tag, &manifest)
                .await
                .map_err(|e| refused_sparse_index(e, sparse, ctx.dst.name()))?;
            verify_tag(ctx, dst_repo, tag, &manifest.digest).await?;
            TagOutcome::Copied {
                digest: manifest.digest.to_string(),
            }
        }
    };
    if prepared.policy.copy_referrers {
        let subject = match (&outcome, referrers) {
            (TagOutcome::Copied { digest }, _)
            | (TagOutcome::Unchanged { digest }, Referrers::Always) => {
                digest.parse::<Digest>().ok()
            }
            _ => None,
        };
        if let Some(subject) = subject {
            // Referrer tags are found in the repository's tag list; a job listed none up front.
            let listed;
            let repo = if repo.all_tags.is_empty() {
                listed = SourceRepo {
                    all_tags: ctx.src.list_tags(&repo.repository).await?,
                    ..repo.clone()
                };
                &listed
            } else {
                repo
            };
            *referrers_copied += copy_referrers(prepared, ctx, repo, dst_repo, &subject, 0).await?;
        }
    }
    Ok(outcome)
}

/// Reconciles one `repository:reference` (tag or digest) on `ctx.dst`, level-triggered: whatever
/// the source holds *now* is what the destination gets. Used by workers for event-driven jobs.
/// Returns the outcome and the number of referrers copied; errors keep their retryability.
pub async fn reconcile_reference(
    prepared: &PreparedPolicy,
    ctx: &TransferContext,
    repository: &str,
    reference: &str,
    event_digest: Option<&str>,
) -> Result<(TagOutcome, u64), TransferError> {
    let dst_repo = prepared
        .dest_repository(repository)
        .map_err(TransferError::Policy)?;
    // The tag list (for referrer tags) is fetched only if something is copied: a referrer pushed
    // later arrives as its own event, so an unchanged tag needs no referrer check here.
    let repo = SourceRepo {
        repository: repository.to_string(),
        tags: vec![reference.to_string()],
        all_tags: Vec::new(),
    };
    // distribution announces a push from its manifest store *before* it links the tag, so a fast
    // worker can find the tag missing while the pushed manifest exists: wait briefly for the tag,
    // then hand the job back as retryable. (A delete removes the manifest too: then it is gone.)
    let mut waits = [50u64, 100, 200, 400, 800].into_iter();
    loop {
        let mut referrers = 0;
        let outcome = copy_tag(
            prepared,
            ctx,
            &repo,
            &dst_repo,
            reference,
            Referrers::OnCopy,
            &mut referrers,
        )
        .await?;
        let announced = match (&outcome, event_digest) {
            (TagOutcome::Skipped { reason }, Some(d)) if reason == TAG_GONE && d != reference => {
                ctx.src.head_manifest(repository, d).await?.is_some()
            }
            _ => false,
        };
        if !announced {
            return Ok((outcome, referrers));
        }
        match waits.next() {
            Some(ms) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
            None => {
                return Err(TransferError::NotYetVisible {
                    registry: ctx.src.name().to_string(),
                    repository: repository.to_string(),
                    reference: reference.to_string(),
                })
            }
        }
    }
}

/// Confirms the destination tag resolves to `digest`.
async fn verify_tag(
    ctx: &TransferContext,
    dst_repo: &str,
    tag: &str,
    digest: &Digest,
) -> Result<(), TransferError> {
    match ctx.dst.head_manifest(dst_repo, tag).await? {
        Some(d) if &d.digest == digest => Ok(()),
        other => Err(RegistryError::InvalidResponse {
            registry: ctx.dst.name().to_string(),
            url: format!("{}v2/{dst_repo}/manifests/{tag}", ctx.dst.base_url()),
            message: format!(
                "after the push the tag resolves to {}, not {digest}",
                other
                    .map(|d| d.digest.to_string())
                    .unwrap_or_else(|| "nothing".into())
            ),
        }
        .into()),
    }
}

/// Copies the referrers of `subject` (and, to a small depth, theirs). Returns how many were pushed.
async fn copy_referrers(
    prepared: &PreparedPolicy,
    ctx: &TransferContext,
    repo: &SourceRepo,
    dst_repo: &str,
    subject: &Digest,
    depth: u32,
) -> Result<u64, TransferError> {
    if depth > 3 {
        return Ok(0);
    }
    let src_repo = &repo.repository;
    // (reference on the source, reference to push on the destination)
    let mut refs: BTreeMap<String, String> = BTreeMap::new();
    // `None` when the registry has no referrers API (learned once per registry).
    let listed = ctx
        .src
        .referrers(src_repo, subject)
        .await?
        .unwrap_or_default();
    for d in &listed {
        refs.insert(d.digest().to_string(), d.digest().to_string());
    }
    let prefix = format!("{}-{}", subject.algorithm(), subject.digest());
    for t in repo
        .all_tags
        .iter()
        .filter(|t| t.starts_with(&prefix) && is_referrer_tag(t))
    {
        refs.insert(t.clone(), t.clone());
    }
    let mut pushed = 0;
    let mut copied = Vec::new();
    for (src_ref, dst_ref) in refs {
        let Some(src_head) = ctx.src.head_manifest(src_repo, &src_ref).await? else {
            continue;
        };
        let unchanged = ctx
            .dst
            .head_manifest(dst_repo, &dst_ref)
            .await?
            .is_some_and(|d| d.digest == src_head.digest);
        if !unchanged {
            let m = ctx.src.get_manifest(src_repo, &src_ref).await?;
            let artifact_type = m.artifact_type();
            if !prepared
                .selector
                .matches_artifact_type(artifact_type.as_deref())
            {
                tracing::debug!(referrer = %src_ref, ?artifact_type, "referrer excluded by the artifact_type filter");
                continue;
            }
            transfer::ensure_graph(ctx, src_repo, dst_repo, &m, &prepared.selector).await?;
            transfer::push_manifest(ctx, dst_repo, &dst_ref, &m).await?;
            pushed += 1;
            tracing::info!(referrer = %src_ref, %subject, "referrer copied");
        }
        if let Some(d) = listed.iter().find(|d| d.digest().to_string() == src_ref) {
            copied.push(d.clone());
        }
        pushed += Box::pin(copy_referrers(
            prepared,
            ctx,
            repo,
            dst_repo,
            &src_head.digest,
            depth + 1,
        ))
        .await?;
    }
    if !copied.is_empty() && ctx.dst.referrers(dst_repo, subject).await?.is_none() {
        pushed += update_referrers_tag(ctx, dst_repo, subject, &copied).await?;
    }
    Ok(pushed)
}

/// On a destination without the referrers API, lists `referrers` in the subject's fallback tag
/// (`<alg>-<hex>`, an OCI index), as the distribution spec tells clients to, so they can be found
/// there. Returns 1 when the index was written, 0 when it already listed them all.
async fn update_referrers_tag(
    ctx: &TransferContext,
    dst_repo: &str,
    subject: &Digest,
    referrers: &[oci_spec::image::Descriptor],
) -> Result<u64, TransferError> {
    let tag = format!("{}-{}", subject.algorithm(), subject.digest());
    let mut manifests: Vec<oci_spec::image::Descriptor> =
        match ctx.dst.head_manifest(dst_repo, &tag).await? {
            Some(_) => {
                let current = ctx.dst.get_manifest(dst_repo, &tag).await?;
                match current.graph() {
                    Ok(crate::oci::ManifestGraph::Index { children, .. }) => {
                        children.into_iter().map(|c| c.descriptor).collect()
                    }
                    // Something else holds the tag: leave it alone.
                    _ => return Ok(0),
                }
            }
            None => Vec::new(),
        };
    let before = manifests.len();
    for d in referrers {
        if !manifests.iter().any(|m| m.digest() == d.digest()) {
            manifests.push(d.clone());
        }
    }
    if manifests.len() == before {
        return Ok(0);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::oci::manifest::OCI_INDEX,
        "manifests": manifests,
    });
    let bytes = serde_json::to_vec(&index).map_err(|e| TransferError::Policy(e.to_string()))?;
    let manifest = crate::oci::Manifest {
        media_type: crate::oci::manifest::OCI_INDEX.to_string(),
        digest: crate::oci::digest::sha256(&bytes),
        bytes: bytes.into(),
    };
    ctx.dst.put_manifest(dst_repo, &tag, &manifest).await?;
    tracing::info!(%subject, tag, referrers = manifests.len(), "referrers tag index written (the destination has no referrers API)");
    Ok(1)
}
