//! Drift between a policy's source and its destinations, by digest.
//!
//! Read-only: only `HEAD`s and tag lists, never a manifest `GET`, so a diff is cheap on rate-limited
//! registries. A tag is `missing` when the source has it and a destination does not, `different`
//! when the digests differ, and `extra` when a destination repository that the policy maps to holds a
//! covered tag that the source does not have.
//!
//! Memory holds the drift found and the tags of the few repositories being compared: the source is
//! listed one repository at a time as the diff reaches it (`plan::source_repos`).
use std::collections::HashSet;
use std::sync::Arc;

use futures_util::{stream, StreamExt};
use serde::Serialize;

use crate::oci::{RegistryClient, RegistryError, RemoteDescriptor};
use crate::replicate::{
    is_referrer_tag, referrer_tag_subject, source_repos, PreparedPolicy, SourceRepo,
};

/// `(tag, source digest, destination digest)` of one checked tag.
type TagCheck = (String, Option<String>, Option<String>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub destination: String,
    pub repository: String,
    pub destination_repository: String,
    pub tag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_digest: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DriftReport {
    pub policy: String,
    /// Tags checked (source tags × destinations).
    pub checked: usize,
    pub missing: Vec<Drift>,
    pub different: Vec<Drift>,
    pub extra: Vec<Drift>,
}

impl DriftReport {
    pub fn has_drift(&self) -> bool {
        !(self.missing.is_empty() && self.different.is_empty() && self.extra.is_empty())
    }
}

/// Computes the drift of one policy.
pub async fn diff_policy(prepared: &PreparedPolicy) -> Result<DriftReport, RegistryError> {
    let policy = &prepared.policy;
    // Repositories are listed as the diff reaches them: memory holds the tags of the few being
    // compared and the drift found, never the whole catalog's tags.
    let repos = source_repos(&prepared.src, policy, &prepared.selector).await?;
    let units = repos.flat_map(|listed| {
        // Owned items (a destination's index, not a reference): callers spawn this future.
        let units: Vec<Result<(usize, Arc<SourceRepo>), RegistryError>> = match listed {
            Ok(repo) => {
                let repo = Arc::new(repo);
                (0..prepared.dsts.len())
                    .map(|d| Ok((d, repo.clone())))
                    .collect()
            }
            Err(unlisted) => vec![Err(unlisted.error)],
        };
        stream::iter(units)
    });
    let results = units
        .map(|unit| async move {
            let (dst, repo) = unit?;
            diff_repository(prepared, &prepared.dsts[dst], &repo).await
        })
        .buffer_unordered(8)
        .boxed();
    let mut results = std::pin::pin!(results);
    let mut report = DriftReport {
        policy: policy.name.clone(),
        ..Default::default()
    };
    while let Some(r) = results.next().await {
        let r = r?;
        report.checked += r.checked;
        report.missing.extend(r.missing);
        report.different.extend(r.different);
        report.extra.extend(r.extra);
    }
    for list in [
        &mut report.missing,
        &mut report.different,
        &mut report.extra,
    ] {
        list.sort_by(|a, b| {
            (&a.destination, &a.destination_repository, &a.tag).cmp(&(
                &b.destination,
                &b.destination_repository,
                &b.tag,
            ))
        });
    }
    Ok(report)
}

#[derive(Default)]
struct RepoDrift {
    checked: usize,
    missing: Vec<Drift>,
    different: Vec<Drift>,
    extra: Vec<Drift>,
}

/// Drift of one source repository on one destination. The destination's tag list comes first, so a
/// tag it lacks is known missing without a `HEAD`.
async fn diff_repository(
    prepared: &PreparedPolicy,
    dst: &RegistryClient,
    repo: &SourceRepo,
) -> Result<RepoDrift, RegistryError> {
    let dst_repo = prepared
        .dest_repository(&repo.repository)
        .map_err(|message| RegistryError::Config {
            registry: dst.name().to_string(),
            message,
        })?;
    let dst_tags: HashSet<String> = dst.list_tags(&dst_repo).await?.into_iter().collect();
    let entry = |tag: &str, s: Option<String>, d: Option<String>| Drift {
        destination: dst.name().to_string(),
        repository: repo.repository.clone(),
        destination_repository: dst_repo.clone(),
        tag: tag.to_string(),
        source_digest: s,
        destination_digest: d,
    };
    let digest = |d: Option<RemoteDescriptor>| d.map(|x| x.digest.to_string());
    let mut checks = Vec::with_capacity(repo.tags.len());
    for tag in &repo.tags {
        let present = dst_tags.contains(tag);
        let dst_repo = &dst_repo;
        checks.push(async move {
            let (s, d) = if present {
                let (s, d) = tokio::join!(
                    prepared.src.head_manifest(&repo.repository, tag),
                    dst.head_manifest(dst_repo, tag)
                );
                (s?, d?)
            } else {
                (
                    prepared.src.head_manifest(&repo.repository, tag).await?,
                    None,
                )
            };
            Ok::<TagCheck, RegistryError>((tag.clone(), digest(s), digest(d)))
        });
    }
    let checks: Vec<Result<TagCheck, RegistryError>> =
        stream::iter(checks).buffer_unordered(8).collect().await;
    let mut checked = Vec::with_capacity(checks.len());
    for c in checks {
        checked.push(c?);
    }
    // Referrer tags the policy leaves to their subject (`copy_referrers`) are copied with it: one
    // whose subject is missing or different is reported with the subject (its repair brings
    // them). One whose subject is in sync is checked on its own: its event lost, nothing else
    // would ever copy it. A referrer of content no covered tag holds stays out, like its subject.
    if prepared.policy.copy_referrers {
        let subjects: HashSet<&str> = checked
            .iter()
            .filter(|(_, s, d)| s.is_some() && s == d)
            .filter_map(|(_, s, _)| s.as_deref())
            .collect();
        let mut referrers = Vec::new();
        for tag in repo.all_tags.iter().filter(|t| {
            referrer_tag_subject(t).is_some_and(|d| subjects.contains(d.to_string().as_str()))
        }) {
            let present = dst_tags.contains(tag);
            let dst_repo = &dst_repo;
            referrers.push(async move {
                let (s, d) =
                    tokio::join!(prepared.src.head_manifest(&repo.repository, tag), async {
                        match present {
                            true => dst.head_manifest(dst_repo, tag).await,
                            false => Ok(None),
                        }
                    });
                Ok::<TagCheck, RegistryError>((tag.clone(), digest(s?), digest(d?)))
            });
        }
        let referrers: Vec<Result<TagCheck, RegistryError>> =
            stream::iter(referrers).buffer_unordered(8).collect().await;
        for c in referrers {
            checked.push(c?);
        }
    }
    let mut out = RepoDrift::default();
    for (tag, s, d) in checked {
        out.checked += 1;
        match (s, d) {
            // Deleted from the source since it was listed: not drift of this run.
            (None, _) => {}
            (Some(s), None) => out.missing.push(entry(&tag, Some(s), None)),
            (Some(s), Some(d)) if s != d => out.different.push(entry(&tag, Some(s), Some(d))),
            _ => {}
        }
    }
    let source_tags: HashSet<&String> = repo.all_tags.iter().collect();
    for tag in &dst_tags {
        let covered = prepared.selector.matches_tag(tag)
            && !(prepared.policy.copy_referrers && is_referrer_tag(tag));
        if covered && !source_tags.contains(tag) {
            let d = digest(dst.head_manifest(&dst_repo, tag).await?);
            out.extra.push(entry(tag, None, d));
        }
    }
    Ok(out)
}
