//! `ferry admin queue`, `ferry admin dead-letters …` and `ferry admin workers`: the state of the
//! job queue and of the workers that drain it (the `Operations` service).
//!
//! Invariant: read-only except `dead-letters retry|purge`, which say what they changed.
use clap::Subcommand;
use ferry_proto::v1;
use serde_json::json;

use super::connection::Ctx;
use super::output::{align, or_dash, reference, row, table, Failure};
use super::time::{ago, duration_ms, span};
use ferry_proto::json::enum_name;
use ferry_replicator::clock::now_ms;

#[derive(Subcommand, Debug)]
pub enum DeadLettersCommand {
    /// Dead-lettered jobs with their last error.
    List {
        /// At most this many jobs (server default 100).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Put a dead-lettered job back on the queue.
    Retry { job_id: String },
    /// Drop every dead letter.
    Purge,
}

/// `GetQueueStats`: depth, delayed, in flight, dead letters and the oldest waiting job's age.
pub async fn queue(ctx: &Ctx) -> Result<u8, Failure> {
    let req = v1::GetQueueStatsRequest {};
    let q = ctx
        .call(
            "get the queue stats",
            ctx.operations().await?.get_queue_stats(req),
        )
        .await?;
    ctx.emit(&q, || {
        let oldest = if q.depth == 0 {
            "-".into()
        } else {
            duration_ms(q.oldest_age_ms)
        };
        align(vec![
            row(["depth", &q.depth.to_string()]),
            row(["delayed", &q.delayed.to_string()]),
            row(["in flight", &q.in_flight.to_string()]),
            row(["dead letters", &q.dead_letters.to_string()]),
            row(["oldest waiting", &oldest]),
        ])
    });
    Ok(0)
}

/// `ListWorkers`: the live workers and their last heartbeat.
pub async fn workers(ctx: &Ctx) -> Result<u8, Failure> {
    let req = v1::ListWorkersRequest {};
    let r = ctx
        .call(
            "list the workers",
            ctx.operations().await?.list_workers(req),
        )
        .await?;
    ctx.emit(&r, || workers_table(&r.workers));
    Ok(0)
}

pub async fn dead_letters(ctx: &Ctx, command: DeadLettersCommand) -> Result<u8, Failure> {
    match command {
        DeadLettersCommand::List { limit } => {
            let req = v1::ListDeadLettersRequest {
                limit: limit.unwrap_or(0),
            };
            let r = ctx
                .call(
                    "list dead letters",
                    ctx.operations().await?.list_dead_letters(req),
                )
                .await?;
            ctx.emit(&r, || jobs_table(&r.jobs));
        }
        DeadLettersCommand::Retry { job_id } => {
            let req = v1::RetryDeadLetterRequest {
                job_id: job_id.clone(),
            };
            let what = format!("retry dead letter {job_id}");
            ctx.call(&what, ctx.operations().await?.retry_dead_letter(req))
                .await?;
            ctx.emit(&json!({"retried": job_id}), || {
                format!("job {job_id} is back on the queue")
            });
        }
        DeadLettersCommand::Purge => {
            let req = v1::PurgeDeadLettersRequest {};
            let r = ctx
                .call(
                    "purge dead letters",
                    ctx.operations().await?.purge_dead_letters(req),
                )
                .await?;
            ctx.emit(&r, || format!("purged {} dead letters", r.purged));
        }
    }
    Ok(0)
}

fn jobs_table(jobs: &[v1::Job]) -> String {
    let header = [
        "ID",
        "POLICY",
        "KIND",
        "REFERENCE",
        "ATTEMPT",
        "ENQUEUED",
        "LAST ERROR",
    ];
    let rows = jobs.iter().map(|j| {
        vec![
            j.id.clone(),
            j.policy.clone(),
            enum_name::<v1::EventKind>(j.kind),
            reference(&j.repository, &j.reference),
            j.attempt.to_string(),
            ago(j.enqueued_at_ms),
            j.last_error.clone(),
        ]
    });
    table(&header, rows)
}

fn workers_table(workers: &[v1::WorkerInfo]) -> String {
    let header = [
        "ID",
        "HOST",
        "REGION",
        "PID",
        "VERSION",
        "CONCURRENCY",
        "IN FLIGHT",
        "SUCCEEDED",
        "FAILED",
        "UP",
        "LAST HEARTBEAT",
        "POLICIES",
    ];
    let now = now_ms();
    let rows = workers.iter().map(|w| {
        let heartbeat = if w.last_seen_ms == 0 {
            "-".into()
        } else {
            format!("{}s ago", now.saturating_sub(w.last_seen_ms).max(0) / 1000)
        };
        vec![
            w.id.clone(),
            w.host.clone(),
            or_dash(&w.region).to_string(),
            w.pid.to_string(),
            w.version.clone(),
            w.concurrency.to_string(),
            w.in_flight.to_string(),
            w.jobs_succeeded.to_string(),
            w.jobs_failed.to_string(),
            span(w.started_at_ms, 0),
            heartbeat,
            if w.policies.is_empty() {
                "all".into()
            } else {
                w.policies.join(",")
            },
        ]
    });
    table(&header, rows)
}
