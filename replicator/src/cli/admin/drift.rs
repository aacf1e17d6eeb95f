//! `ferry admin diff POLICY`: the drift report of a policy by digest (`Drift.Diff`).
//!
//! Invariant: exit 1 when any entry drifts, 0 when none; the whole stream is read before
//! anything prints, so `-o json` is one array.
use ferry_proto::v1;

use super::connection::Ctx;
use super::output::{short_digest, table, Failure};
use ferry_proto::json::enum_name;

/// `Drift.Diff`: the entries as they stream in, shown at the end; exit 1 when there was any.
pub async fn diff(ctx: &Ctx, policy: &str) -> Result<u8, Failure> {
    let what = format!("diff policy {policy}");
    let req = v1::DiffRequest {
        policy: policy.to_string(),
    };
    let mut stream = ctx.stream(&what, ctx.drift().await?.diff(req)).await?;
    let mut entries = Vec::new();
    while let Some(entry) = stream
        .message()
        .await
        .map_err(|s| Failure::status(&what, &s))?
    {
        entries.push(entry);
    }
    ctx.emit(&entries, || {
        if entries.is_empty() {
            return format!("no drift: the destinations of policy {policy} match its source");
        }
        let rows = entries.iter().map(|d| {
            let repository = if d.destination_repository.is_empty()
                || d.destination_repository == d.repository
            {
                d.repository.clone()
            } else {
                format!("{} → {}", d.repository, d.destination_repository)
            };
            vec![
                enum_name::<v1::DriftKind>(d.kind),
                d.destination.clone(),
                repository,
                d.tag.clone(),
                short_digest(&d.source_digest),
                short_digest(&d.destination_digest),
            ]
        });
        let header = [
            "KIND",
            "DESTINATION",
            "REPOSITORY",
            "TAG",
            "SOURCE DIGEST",
            "DESTINATION DIGEST",
        ];
        table(&header, rows)
    });
    Ok(if entries.is_empty() { 0 } else { 1 })
}
