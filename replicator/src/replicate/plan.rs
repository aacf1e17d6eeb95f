//! What a policy covers and where it goes: the policy compiled for running ([`PreparedPolicy`]:
//! selector, source and destination clients, destination repository), and the listing of the
//! source repositories and tags it covers.
//!
//! Invariants: names a registry lists outside the grammar of [`crate::policy::namespace`] are
//! skipped with a warning, never turned into work; referrer tags (`sha256-<hex>[.suffix]`) are left
//! to their subject when the policy copies referrers.
use std::sync::Arc;

use futures_util::stream::BoxStream;
use futures_util::{stream, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::oci::{RegistryClient, RegistryError};
use crate::policy::{check_repository, check_tag, rewrite_repository, NameError, Policy, Selector};
use crate::throttle::Throttle;
use crate::transfer::{self, BlobLedger, Source, TransferContext, TransferStats};

use super::gates::Gates;
use super::{Registries, SyncError};

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

/// The subject digest a referrer-scheme tag names: `sha256-<hex>[.suffix]` → `sha256:<hex>`.
pub fn referrer_tag_subject(tag: &str) -> Option<crate::oci::Digest> {
    if !is_referrer_tag(tag) {
        return None;
    }
    let (alg, rest) = tag.split_once('-')?;
    let hex = rest.split('.').next()?;
    crate::oci::digest::parse(&format!("{alg}:{hex}"))
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

impl SourceRepo {
    /// `repository` with the tags of `all_tags` the policy covers: its tag filters, and referrer
    /// tags left to their subject when the policy copies referrers.
    pub fn covered(
        policy: &Policy,
        selector: &Selector,
        repository: String,
        all_tags: Vec<String>,
    ) -> SourceRepo {
        let tags = all_tags
            .iter()
            .filter(|t| selector.matches_tag(t) && !(policy.copy_referrers && is_referrer_tag(t)))
            .cloned()
            .collect();
        SourceRepo {
            repository,
            tags,
            all_tags,
        }
    }
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

/// Tag lists a [`source_repos`] stream reads ahead of the repository being worked on.
pub const LIST_AHEAD: usize = 8;

/// A stream of source repositories, each with its covered tags, as [`source_repos`] yields them.
pub type RepoStream<'a> = BoxStream<'a, Result<SourceRepo, Unlisted>>;

/// A source repository whose tag list could not be read.
#[derive(Debug, thiserror::Error)]
#[error("repository {repository}: {error}")]
pub struct Unlisted {
    pub repository: String,
    #[source]
    pub error: RegistryError,
}

/// The source repositories a policy covers, in name order, **listed as the stream is pulled**: the
/// catalog first (its error is this function's), then each repository's tag list, at most
/// [`LIST_AHEAD`] ahead of the consumer. A run over 100k tags so holds the tags of a few
/// repositories at a time, never the whole catalog's; names outside the grammar are skipped.
pub async fn source_repos<'a>(
    src: &'a RegistryClient,
    policy: &'a Policy,
    selector: &'a Selector,
) -> Result<RepoStream<'a>, RegistryError> {
    let mut repos: Vec<String> = src
        .catalog()
        .await?
        .into_iter()
        .filter(|r| listed_name(src.name(), None, check_repository(r)))
        .filter(|r| selector.matches_repository(r))
        .collect();
    repos.sort_unstable();
    Ok(stream::iter(repos)
        .map(move |repository| async move {
            let all_tags: Vec<String> = match src.list_tags(&repository).await {
                Ok(tags) => tags,
                Err(error) => return Err(Unlisted { repository, error }),
            };
            let all_tags: Vec<String> = all_tags
                .into_iter()
                .filter(|t| listed_name(src.name(), Some(&repository), check_tag(t)))
                .collect();
            Ok(SourceRepo::covered(policy, selector, repository, all_tags))
        })
        .buffered(LIST_AHEAD)
        .boxed())
}

/// Lists the source repositories and tags a policy covers, all at once (names outside the grammar
/// skipped); long runs use [`source_repos`] instead.
pub async fn list_source(
    src: &RegistryClient,
    policy: &Policy,
    selector: &Selector,
) -> Result<Vec<SourceRepo>, RegistryError> {
    source_repos(src, policy, selector)
        .await?
        .map_err(|u| u.error)
        .try_collect()
        .await
}

/// A policy compiled for running: its selector and destination names.
pub struct PreparedPolicy {
    pub policy: Policy,
    pub selector: Selector,
    /// `only_signed` and `max_severity`, the key file read.
    pub gates: Gates,
    pub src: Arc<RegistryClient>,
    pub dsts: Vec<Arc<RegistryClient>>,
}

impl PreparedPolicy {
    pub fn new(policy: &Policy, registries: &Registries) -> Result<PreparedPolicy, SyncError> {
        let selector = Selector::new(policy).map_err(|e| SyncError::Policy {
            policy: policy.name.clone(),
            message: e.to_string(),
        })?;
        let gates = Gates::new(policy).map_err(|e| SyncError::Policy {
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
            gates,
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
            gates: self.gates.clone(),
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
        self.transfer_context_from(
            self.src.clone(),
            dst,
            ledger,
            stats,
            throttle,
            cancel,
            blob_parallelism,
        )
    }

    /// Everything a transfer from `src` (the policy's source registry, or a layout on disk for
    /// `ferry import`) to `dst` needs.
    #[allow(clippy::too_many_arguments)]
    pub fn transfer_context_from(
        &self,
        src: Arc<dyn Source>,
        dst: &Arc<RegistryClient>,
        ledger: Arc<BlobLedger>,
        stats: Arc<TransferStats>,
        throttle: Option<Arc<Throttle>>,
        cancel: CancellationToken,
        blob_parallelism: usize,
    ) -> TransferContext {
        TransferContext {
            src,
            dst: dst.clone(),
            ledger,
            stats,
            throttle,
            cancel,
            copy_by_chunk: self.policy.copy_by_chunk,
            blob_parallelism,
            leases: None,
            manifest_leases: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referrer_tags_are_an_algorithm_a_full_hex_digest_and_an_optional_suffix() {
        let hex = "a".repeat(64);
        assert!(is_referrer_tag(&format!("sha256-{hex}")));
        assert!(is_referrer_tag(&format!("sha256-{hex}.sig")));
        assert!(is_referrer_tag(&format!("sha512-{}", "b".repeat(128))));
    }

    #[test]
    fn a_referrer_tag_names_its_subject_and_other_tags_name_none() {
        let hex = "a".repeat(64);
        for tag in [
            format!("sha256-{hex}"),
            format!("sha256-{hex}.sig"),
            format!("sha256-{hex}.att"),
        ] {
            assert_eq!(
                referrer_tag_subject(&tag).map(|d| d.to_string()),
                Some(format!("sha256:{hex}")),
                "{tag}"
            );
        }
        assert_eq!(referrer_tag_subject("v1"), None);
        assert_eq!(referrer_tag_subject("sha256-short.sig"), None);
    }

    #[test]
    fn tags_that_only_look_like_referrer_tags_are_ordinary_tags() {
        assert!(!is_referrer_tag("sha256-short"));
        assert!(!is_referrer_tag(&format!("sha256-{}", "A".repeat(64))));
        assert!(!is_referrer_tag(&format!("sha256-{}x", "a".repeat(64))));
        assert!(!is_referrer_tag(&format!("md5-{}", "a".repeat(64))));
        assert!(!is_referrer_tag("latest"));
    }
}
