//! Drift between a policy's source and its destinations, by digest.
//!
//! Read-only: only `HEAD`s and tag lists, never a manifest `GET`, so a diff is cheap on rate-limited
//! registries. A tag is `missing` when the source has it and a destination does not, `different`
//! when the digests differ, and `extra` when a destination repository that the policy maps to holds a
//! covered tag that the source does not have.
use std::collections::HashSet;

use futures_util::{stream, StreamExt};
use serde::Serialize;

use crate::oci::RegistryError;
use crate::sync::{is_referrer_tag, list_source, PreparedPolicy};

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
    let repos = list_source(&prepared.src, policy, &prepared.selector).await?;
    let mut report = DriftReport {
        policy: policy.name.clone(),
        ..Default::default()
    };
    for dst in &prepared.dsts {
        for repo in &repos {
            let dst_repo = match prepared.dest_repository(&repo.repository) {
                Ok(r) => r,
                Err(message) => {
                    return Err(RegistryError::Config {
                        registry: dst.name().to_string(),
                        message,
                    });
                }
            };
            let checks: Vec<Result<TagCheck, RegistryError>> = stream::iter(repo.tags.iter())
                .map(|tag| {
                    let dst_repo = dst_repo.clone();
                    async move {
                        let s = prepared.src.head_manifest(&repo.repository, tag).await?;
                        let d = dst.head_manifest(&dst_repo, tag).await?;
                        Ok((
                            tag.clone(),
                            s.map(|x| x.digest.to_string()),
                            d.map(|x| x.digest.to_string()),
                        ))
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            let entry = |tag: &str, s: Option<String>, d: Option<String>| Drift {
                destination: dst.name().to_string(),
                repository: repo.repository.clone(),
                destination_repository: dst_repo.clone(),
                tag: tag.to_string(),
                source_digest: s,
                destination_digest: d,
            };
            for c in checks {
                let (tag, s, d) = c?;
                report.checked += 1;
                match (s, d) {
                    // Deleted from the source since it was listed: not drift of this run.
                    (None, _) => {}
                    (Some(s), None) => report.missing.push(entry(&tag, Some(s), None)),
                    (Some(s), Some(d)) if s != d => {
                        report.different.push(entry(&tag, Some(s), Some(d)))
                    }
                    _ => {}
                }
            }
            let source_tags: HashSet<&String> = repo.all_tags.iter().collect();
            for tag in dst.list_tags(&dst_repo).await? {
                let covered = prepared.selector.matches_tag(&tag)
                    && !(policy.copy_referrers && is_referrer_tag(&tag));
                if covered && !source_tags.contains(&tag) {
                    let d = dst
                        .head_manifest(&dst_repo, &tag)
                        .await?
                        .map(|x| x.digest.to_string());
                    report.extra.push(entry(&tag, None, d));
                }
            }
        }
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
