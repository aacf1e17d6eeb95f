//! `ferry admin run POLICY`, `ferry admin executions …` and `ferry admin tasks EXECUTION`:
//! start manual runs, list, show, stop and watch executions, and list their tasks.
//!
//! Invariant: `--watch` and `executions watch` exit 0 only when the execution succeeded (see
//! `watch`); the other commands exit 0 on any answer.
use clap::Subcommand;
use ferry_proto::v1;

use super::connection::Ctx;
use super::enums::{enum_arg, EXECUTION_STATES, TASK_STATES, TRIGGERS};
use super::output::{align, or_dash, out, reference, row, table, yes, Failure, Format};
use super::time::{ago, duration_ms, span, when};
use super::watch::watch_execution;
use ferry_proto::json::enum_name;
use indicatif::HumanBytes;

// The flags of `ferry admin run` (the command's help is its variant's doc comment).
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    policy: String,
    /// Only plan: report what would be copied.
    #[arg(long)]
    dry_run: bool,
    /// Follow the run until it ends; exit 1 unless it succeeds.
    #[arg(long)]
    watch: bool,
}

// The flags of `ferry admin tasks`.
#[derive(clap::Args, Debug)]
pub struct TasksArgs {
    execution_id: String,
    /// Only tasks in this state.
    #[arg(long, value_parser = enum_arg(TASK_STATES, v1::TaskState::from_str_name))]
    state: Option<v1::TaskState>,
    /// At most this many tasks (server default 1000).
    #[arg(long)]
    limit: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub enum ExecutionsCommand {
    /// Newest first.
    List {
        /// Only executions of this policy.
        #[arg(long)]
        policy: Option<String>,
        /// Only executions in this state.
        #[arg(long, value_parser = enum_arg(EXECUTION_STATES, v1::ExecutionState::from_str_name))]
        state: Option<v1::ExecutionState>,
        /// Only executions started this way.
        #[arg(long, value_parser = enum_arg(TRIGGERS, v1::Trigger::from_str_name))]
        trigger: Option<v1::Trigger>,
        /// Page size (server default 50, at most 1000).
        #[arg(long)]
        limit: Option<u32>,
        /// Only executions started before this time (Unix ms; the next page's cursor).
        #[arg(long)]
        before_ms: Option<i64>,
    },
    /// One execution: state, timings, attempts, origin event, task counts.
    Get { id: String },
    /// Cancel the execution's transfers; it ends stopped.
    Stop { id: String },
    /// Follow an execution until it ends; exit 1 unless it succeeds.
    Watch { id: String },
}

/// `StartExecution`; with `--watch`, follows the run until it ends.
pub async fn start(ctx: &Ctx, args: RunArgs) -> Result<u8, Failure> {
    let RunArgs {
        policy,
        dry_run,
        watch,
    } = args;
    let req = v1::StartExecutionRequest {
        policy: policy.clone(),
        dry_run,
    };
    let what = format!("start a run of policy {policy}");
    let e = ctx
        .call(&what, ctx.executions().await?.start_execution(req))
        .await?;
    if watch {
        if ctx.output == Format::Table {
            out(&format!("started execution {} of policy {policy}", e.id));
        }
        return watch_execution(ctx, &e.id).await;
    }
    ctx.emit(&e, || {
        format!("started execution {} of policy {policy}", e.id)
    });
    Ok(0)
}

/// `ListTasks` of one execution.
pub async fn tasks(ctx: &Ctx, args: TasksArgs) -> Result<u8, Failure> {
    let TasksArgs {
        execution_id,
        state,
        limit,
    } = args;
    let req = v1::ListTasksRequest {
        execution_id: execution_id.clone(),
        state: state.unwrap_or_default().into(),
        limit: limit.unwrap_or(0),
    };
    let what = format!("list the tasks of execution {execution_id}");
    let r = ctx
        .call(&what, ctx.executions().await?.list_tasks(req))
        .await?;
    ctx.emit(&r, || tasks_table(&r.tasks));
    Ok(0)
}

pub async fn run(ctx: &Ctx, command: ExecutionsCommand) -> Result<u8, Failure> {
    let (verb, e) = match command {
        ExecutionsCommand::List {
            policy,
            state,
            trigger,
            limit,
            before_ms,
        } => {
            let req = v1::ListExecutionsRequest {
                policy: policy.unwrap_or_default(),
                state: state.unwrap_or_default().into(),
                trigger: trigger.unwrap_or_default().into(),
                limit: limit.unwrap_or(0),
                before_ms: before_ms.unwrap_or(0),
            };
            let r = ctx
                .call(
                    "list executions",
                    ctx.executions().await?.list_executions(req),
                )
                .await?;
            ctx.emit(&r, || {
                let mut t = executions_table(&r.executions);
                if r.next_before_ms != 0 {
                    t.push_str(&format!("\n(more: --before-ms {})", r.next_before_ms));
                }
                t
            });
            return Ok(0);
        }
        ExecutionsCommand::Get { id } => {
            let req = v1::GetExecutionRequest { id: id.clone() };
            let what = format!("get execution {id}");
            (
                None,
                ctx.call(&what, ctx.executions().await?.get_execution(req))
                    .await?,
            )
        }
        ExecutionsCommand::Stop { id } => {
            let req = v1::StopExecutionRequest { id: id.clone() };
            let what = format!("stop execution {id}");
            (
                Some("stopped"),
                ctx.call(&what, ctx.executions().await?.stop_execution(req))
                    .await?,
            )
        }
        ExecutionsCommand::Watch { id } => return watch_execution(ctx, &id).await,
    };
    ctx.emit(&e, || match verb {
        Some(verb) => format!(
            "execution {} {verb}: {}",
            e.id,
            enum_name::<v1::ExecutionState>(e.state)
        ),
        None => execution_details(&e),
    });
    Ok(0)
}

fn executions_table(executions: &[v1::Execution]) -> String {
    let header = [
        "ID", "POLICY", "TRIGGER", "STATE", "STARTED", "DURATION", "TASKS", "ORIGIN",
    ];
    let rows = executions.iter().map(|e| {
        let c = e.counts.unwrap_or_default();
        let total = c.pending + c.running + c.succeeded + c.failed + c.stopped;
        let origin = e.origin.as_ref().map_or_else(String::new, |o| {
            format!(
                "{} {}",
                enum_name::<v1::EventKind>(o.kind),
                reference(&o.repository, &o.reference)
            )
        });
        vec![
            e.id.clone(),
            e.policy.clone(),
            enum_name::<v1::Trigger>(e.trigger),
            enum_name::<v1::ExecutionState>(e.state),
            ago(e.started_at_ms),
            span(e.started_at_ms, e.ended_at_ms),
            format!("{}/{total} ok, {} failed", c.succeeded, c.failed),
            origin,
        ]
    });
    table(&header, rows)
}

fn execution_details(e: &v1::Execution) -> String {
    let c = e.counts.unwrap_or_default();
    let mut rows = vec![
        row(["id", &e.id]),
        row(["policy", &e.policy]),
        row(["trigger", &enum_name::<v1::Trigger>(e.trigger)]),
        row(["state", &enum_name::<v1::ExecutionState>(e.state)]),
        row(["dry run", &yes(e.dry_run)]),
        row(["started", &when(e.started_at_ms)]),
        row(["ended", &when(e.ended_at_ms)]),
        row(["duration", &span(e.started_at_ms, e.ended_at_ms)]),
        row(["attempts", &e.attempts.to_string()]),
        row(["next try", &when(e.next_try_at_ms)]),
        row(["worker", or_dash(&e.worker)]),
        row([
            "tasks",
            &format!(
                "{} succeeded, {} failed, {} running, {} pending, {} stopped",
                c.succeeded, c.failed, c.running, c.pending, c.stopped
            ),
        ]),
    ];
    if let Some(o) = &e.origin {
        let event = format!(
            "{} {} ({}, event {})",
            enum_name::<v1::EventKind>(o.kind),
            reference(&o.repository, &o.reference),
            or_dash(&o.digest),
            or_dash(&o.event_id)
        );
        rows.push(row(["origin", &event]));
        rows.push(row(["event time", &when(o.event_time_ms)]));
    }
    if !e.error.is_empty() {
        rows.push(row(["error", &e.error]));
    }
    align(rows)
}

fn tasks_table(tasks: &[v1::Task]) -> String {
    let header = [
        "REFERENCE",
        "DESTINATION",
        "KIND",
        "STATE",
        "OUTCOME",
        "BLOBS C/M/S",
        "BYTES",
        "DURATION",
        "LAG",
        "ERROR",
    ];
    let rows = tasks.iter().map(|t| {
        vec![
            reference(&t.repository, &t.reference),
            t.destination.clone(),
            enum_name::<v1::EventKind>(t.kind),
            enum_name::<v1::TaskState>(t.state),
            t.outcome.clone(),
            format!("{}/{}/{}", t.blobs_copied, t.blobs_mounted, t.blobs_skipped),
            HumanBytes(t.bytes_done).to_string(),
            span(t.started_at_ms, t.ended_at_ms),
            if t.lag_ms == 0 {
                "-".into()
            } else {
                duration_ms(t.lag_ms)
            },
            t.error.clone(),
        ]
    });
    table(&header, rows)
}
