//! `ferry admin`: the command-line client of the gRPC admin API (`ferry.v1`, served by
//! `ferry serve --admin-listen` and `ferry worker --admin-listen`).
//!
//! Every command is one RPC (or one per document for `apply`). The answer prints as an aligned
//! table, or with `-o json` as exactly one JSON document on stdout: the response message with the
//! proto's field names (times stay Unix milliseconds, enums are lowercase names without their
//! prefix, policy and registry documents are embedded as JSON), and a stream (`diff`, `watch`)
//! as one array. Errors print one line `error: <what> (<grpc code>): <server message>` on stderr;
//! INVALID_ARGUMENT prints the server's message as is on the following lines (one field violation
//! per line).
//!
//! # Exit codes
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | the answer is no: drift found (`diff`), a watched execution ended failed or stopped, a pinged registry is unreachable or rejects its credentials |
//! | 2 | usage or any other error (bad flags or files, INVALID_ARGUMENT, UNIMPLEMENTED, timeouts, …) |
//! | 3 | UNAUTHENTICATED or PERMISSION_DENIED: missing or wrong admin token |
//! | 4 | NOT_FOUND: no such policy, registry, execution or dead letter |
//! | 5 | UNAVAILABLE: the endpoint cannot be reached, or the server cannot reach its Redis/Valkey |
//!
//! # Layout
//! - [`AdminArgs`] and the command enums: flags (the global ones may follow the subcommand).
//! - [`Ctx`]: one lazily connected channel, the bearer-token interceptor, per-call timeouts, and
//!   the mapping of a `tonic::Status` to a [`Failure`] with its exit code.
//! - Command handlers, one per command group.
//! - `*_json`: one conversion to `serde_json::Value` per proto message (prost types have no serde).
//! - Formatting: aligned tables, times, durations, enum names.
//!
//! Invariant: no input (flags, files, server answers) makes it panic; output to a closed pipe is
//! dropped silently.
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Subcommand, ValueEnum};
use ferry_proto::v1;
use ferry_proto::v1::drift_client::DriftClient;
use ferry_proto::v1::executions_client::ExecutionsClient;
use ferry_proto::v1::operations_client::OperationsClient;
use ferry_proto::v1::policies_client::PoliciesClient;
use ferry_proto::v1::registries_client::RegistriesClient;
use ferry_replicator::clock::{now_ms, rfc3339};
use ferry_replicator::errors::error_chain;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the answer is no: drift found (diff), a watched execution ended failed or stopped,
     a pinged registry is unreachable or rejects its credentials
  2  usage or other errors (bad flags or files, INVALID_ARGUMENT, UNIMPLEMENTED, timeouts)
  3  UNAUTHENTICATED or PERMISSION_DENIED (missing or wrong admin token)
  4  NOT_FOUND (no such policy, registry, execution or dead letter)
  5  UNAVAILABLE (endpoint unreachable, or the server cannot reach its Redis/Valkey)";

/// Talk to a Ferry admin API (`ferry serve`/`ferry worker --admin-listen`).
#[derive(clap::Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub struct AdminArgs {
    /// Admin API endpoint, e.g. http://127.0.0.1:9443 or https://ferry.region-a:9443 (`host:port`
    /// means http://).
    #[arg(long, env = "FERRY_ADMIN_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// File with the bearer token (its first non-empty line). Default: FERRY_ADMIN_TOKEN.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle that signed the server's certificate (https:// endpoints).
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that require one (mTLS); needs --key.
    #[arg(long, global = true, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM key of --cert.
    #[arg(long, global = true, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Output format: aligned tables, or one JSON document on stdout.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
    /// Seconds to wait for each call (and for the connection); watches and streams are not limited.
    #[arg(long, default_value_t = 30, global = true,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Replication policies.
    Policies {
        #[command(subcommand)]
        command: PoliciesCommand,
    },
    /// Registries and their reachability.
    Registries {
        #[command(subcommand)]
        command: RegistriesCommand,
    },
    /// Start a manual run (a full reconciliation) of a policy.
    Run {
        policy: String,
        /// Only plan: report what would be copied.
        #[arg(long)]
        dry_run: bool,
        /// Follow the run until it ends; exit 1 unless it succeeds.
        #[arg(long)]
        watch: bool,
    },
    /// Executions: replication runs of a policy (one per event, or manual/scheduled runs).
    Executions {
        #[command(subcommand)]
        command: ExecutionsCommand,
    },
    /// The tasks of an execution (one per reference and destination).
    Tasks {
        execution_id: String,
        /// Only tasks in this state.
        #[arg(long, value_parser = enum_arg(TASK_STATES, v1::TaskState::from_str_name, v1::TaskState::as_str_name))]
        state: Option<v1::TaskState>,
        /// At most this many tasks (server default 1000).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Drift report of a policy by digest; exit 1 when anything drifts.
    Diff { policy: String },
    /// Queue depth, delayed and in-flight jobs, dead letters.
    Queue,
    /// Jobs that failed their last attempt.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Live workers and their last heartbeat.
    Workers,
}

#[derive(Subcommand, Debug)]
pub enum PoliciesCommand {
    /// Every policy, from the config file and stored through the API.
    List,
    /// One policy with its JSON document.
    Get { name: String },
    /// Create or replace policies from a JSON file: one policy, an array, or a config file.
    Apply {
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Delete a policy stored through the API.
    Delete { name: String },
    /// Set the policy's `enabled` field.
    Enable { name: String },
    /// Clear the policy's `enabled` field.
    Disable { name: String },
    /// Jobs of the policy wait instead of running.
    Pause { name: String },
    /// Let a paused policy's jobs run again.
    Resume { name: String },
}

#[derive(Subcommand, Debug)]
pub enum RegistriesCommand {
    /// Every registry (credentials by reference only).
    List,
    /// One registry entry.
    Get { name: String },
    /// Check reachability, credentials, API version and referrers support; exit 1 when the
    /// registry is unreachable or rejects the credentials.
    Ping {
        name: String,
        /// Repository to probe the referrers API and chunked uploads in (needs push permission
        /// for the latter; nothing stays). Default: ferry-probe.
        #[arg(long)]
        repository: Option<String>,
    },
    /// Create or replace registries from a JSON file: one entry, an array, or a config file.
    Apply {
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Delete a registry stored through the API.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum ExecutionsCommand {
    /// Newest first.
    List {
        /// Only executions of this policy.
        #[arg(long)]
        policy: Option<String>,
        /// Only executions in this state.
        #[arg(long, value_parser = enum_arg(EXECUTION_STATES, v1::ExecutionState::from_str_name, v1::ExecutionState::as_str_name))]
        state: Option<v1::ExecutionState>,
        /// Only executions started this way.
        #[arg(long, value_parser = enum_arg(TRIGGERS, v1::Trigger::from_str_name, v1::Trigger::as_str_name))]
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

const EXECUTION_STATES: &[&str] = &[
    "queued",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "stopped",
];
const TASK_STATES: &[&str] = &["pending", "running", "succeeded", "failed", "stopped"];
const TRIGGERS: &[&str] = &["event_based", "manual", "scheduled", "reconcile"];

/// A clap parser for a proto enum given by its lowercase name (`succeeded` →
/// `EXECUTION_STATE_SUCCEEDED`); `names` are the accepted values shown in `--help`.
fn enum_arg<E: Default + Clone + Send + Sync + 'static>(
    names: &'static [&'static str],
    from: fn(&str) -> Option<E>,
    name: fn(&E) -> &'static str,
) -> impl TypedValueParser<Value = E> {
    PossibleValuesParser::new(names).map(move |s: String| {
        from(&format!("{}{}", enum_prefix(name), s.to_ascii_uppercase())).unwrap_or_default()
    })
}

/// `EXECUTION_STATE_` for `ExecutionState`: its zero value's name without `UNSPECIFIED`.
fn enum_prefix<E: Default>(name: fn(&E) -> &'static str) -> &'static str {
    name(&E::default()).trim_end_matches("UNSPECIFIED")
}

/// A proto enum field as a lowercase name without prefix (`event_based`); unknown values as
/// their number.
fn lower<E: TryFrom<i32> + Default>(value: i32, name: fn(&E) -> &'static str) -> String {
    match E::try_from(value) {
        Ok(e) => {
            let full = name(&e);
            full.strip_prefix(enum_prefix(name))
                .unwrap_or(full)
                .to_ascii_lowercase()
        }
        Err(_) => value.to_string(),
    }
}

pub async fn run(args: AdminArgs) -> u8 {
    match execute(args).await {
        Ok(code) => code,
        Err(failure) => {
            failure.report();
            failure.exit
        }
    }
}

async fn execute(args: AdminArgs) -> Result<u8, Failure> {
    let ctx = Ctx::new(&args)?;
    match args.command {
        AdminCommand::Policies { command } => policies(&ctx, command).await,
        AdminCommand::Registries { command } => registries(&ctx, command).await,
        AdminCommand::Run {
            policy,
            dry_run,
            watch,
        } => {
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
                return watch_execution(&ctx, &e.id).await;
            }
            ctx.emit(execution_json(&e), || {
                format!("started execution {} of policy {policy}", e.id)
            });
            Ok(0)
        }
        AdminCommand::Executions { command } => executions(&ctx, command).await,
        AdminCommand::Tasks {
            execution_id,
            state,
            limit,
        } => {
            let req = v1::ListTasksRequest {
                execution_id: execution_id.clone(),
                state: state.unwrap_or_default().into(),
                limit: limit.unwrap_or(0),
            };
            let what = format!("list the tasks of execution {execution_id}");
            let r = ctx
                .call(&what, ctx.executions().await?.list_tasks(req))
                .await?;
            ctx.emit(json!({"tasks": list(&r.tasks, task_json)}), || {
                tasks_table(&r.tasks)
            });
            Ok(0)
        }
        AdminCommand::Diff { policy } => diff(&ctx, &policy).await,
        AdminCommand::Queue => {
            let req = v1::GetQueueStatsRequest {};
            let q = ctx
                .call(
                    "get the queue stats",
                    ctx.operations().await?.get_queue_stats(req),
                )
                .await?;
            ctx.emit(queue_json(&q), || {
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
        AdminCommand::DeadLetters { command } => dead_letters(&ctx, command).await,
        AdminCommand::Workers => {
            let req = v1::ListWorkersRequest {};
            let r = ctx
                .call(
                    "list the workers",
                    ctx.operations().await?.list_workers(req),
                )
                .await?;
            ctx.emit(json!({"workers": list(&r.workers, worker_json)}), || {
                workers_table(&r.workers)
            });
            Ok(0)
        }
    }
}

async fn policies(ctx: &Ctx, command: PoliciesCommand) -> Result<u8, Failure> {
    let (what, p) = match command {
        PoliciesCommand::List => {
            let req = v1::ListPoliciesRequest {};
            let r = ctx
                .call("list policies", ctx.policies().await?.list_policies(req))
                .await?;
            ctx.emit(json!({"policies": list(&r.policies, policy_json)}), || {
                policies_table(&r.policies)
            });
            return Ok(0);
        }
        PoliciesCommand::Get { name } => {
            let req = v1::GetPolicyRequest { name: name.clone() };
            let what = format!("get policy {name}");
            let p = ctx
                .call(&what, ctx.policies().await?.get_policy(req))
                .await?;
            ctx.emit(policy_json(&p), || policy_details(&p));
            return Ok(0);
        }
        PoliciesCommand::Apply { file } => return apply(ctx, &file, Kind::Policy).await,
        PoliciesCommand::Delete { name } => {
            let req = v1::DeletePolicyRequest { name: name.clone() };
            let what = format!("delete policy {name}");
            ctx.call(&what, ctx.policies().await?.delete_policy(req))
                .await?;
            ctx.emit(json!({"deleted": name}), || {
                format!("deleted policy {name}")
            });
            return Ok(0);
        }
        PoliciesCommand::Enable { name } => {
            let req = v1::SetPolicyEnabledRequest {
                name: name.clone(),
                enabled: true,
            };
            let what = format!("enable policy {name}");
            (
                "enabled",
                ctx.call(&what, ctx.policies().await?.set_policy_enabled(req))
                    .await?,
            )
        }
        PoliciesCommand::Disable { name } => {
            let req = v1::SetPolicyEnabledRequest {
                name: name.clone(),
                enabled: false,
            };
            let what = format!("disable policy {name}");
            (
                "disabled",
                ctx.call(&what, ctx.policies().await?.set_policy_enabled(req))
                    .await?,
            )
        }
        PoliciesCommand::Pause { name } => {
            let req = v1::PausePolicyRequest { name: name.clone() };
            let what = format!("pause policy {name}");
            (
                "paused",
                ctx.call(&what, ctx.operations().await?.pause_policy(req))
                    .await?,
            )
        }
        PoliciesCommand::Resume { name } => {
            let req = v1::ResumePolicyRequest { name: name.clone() };
            let what = format!("resume policy {name}");
            (
                "resumed",
                ctx.call(&what, ctx.operations().await?.resume_policy(req))
                    .await?,
            )
        }
    };
    ctx.emit(policy_json(&p), || format!("policy {} {what}", p.name));
    Ok(0)
}

async fn registries(ctx: &Ctx, command: RegistriesCommand) -> Result<u8, Failure> {
    match command {
        RegistriesCommand::List => {
            let req = v1::ListRegistriesRequest {};
            let r = ctx
                .call(
                    "list registries",
                    ctx.registries().await?.list_registries(req),
                )
                .await?;
            ctx.emit(
                json!({"registries": list(&r.registries, registry_json)}),
                || registries_table(&r.registries),
            );
        }
        RegistriesCommand::Get { name } => {
            let req = v1::GetRegistryRequest { name: name.clone() };
            let what = format!("get registry {name}");
            let r = ctx
                .call(&what, ctx.registries().await?.get_registry(req))
                .await?;
            ctx.emit(registry_json(&r), || registry_details(&r));
        }
        RegistriesCommand::Ping { name, repository } => {
            let req = v1::PingRegistryRequest {
                name: name.clone(),
                repository: repository.clone().unwrap_or_default(),
            };
            let what = format!("ping registry {name}");
            let p = ctx
                .call(&what, ctx.registries().await?.ping_registry(req))
                .await?;
            ctx.emit(ping_json(&name, &p), || ping_details(&name, &p));
            return Ok(if p.reachable && p.authenticated { 0 } else { 1 });
        }
        RegistriesCommand::Apply { file } => return apply(ctx, &file, Kind::Registry).await,
        RegistriesCommand::Delete { name } => {
            let req = v1::DeleteRegistryRequest { name: name.clone() };
            let what = format!("delete registry {name}");
            ctx.call(&what, ctx.registries().await?.delete_registry(req))
                .await?;
            ctx.emit(json!({"deleted": name}), || {
                format!("deleted registry {name}")
            });
        }
    }
    Ok(0)
}

async fn executions(ctx: &Ctx, command: ExecutionsCommand) -> Result<u8, Failure> {
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
            ctx.emit(
                json!({
                    "executions": list(&r.executions, execution_json),
                    "next_before_ms": r.next_before_ms,
                }),
                || {
                    let mut t = executions_table(&r.executions);
                    if r.next_before_ms != 0 {
                        t.push_str(&format!("\n(more: --before-ms {})", r.next_before_ms));
                    }
                    t
                },
            );
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
    ctx.emit(execution_json(&e), || match verb {
        Some(verb) => format!(
            "execution {} {verb}: {}",
            e.id,
            lower(e.state, v1::ExecutionState::as_str_name)
        ),
        None => execution_details(&e),
    });
    Ok(0)
}

async fn dead_letters(ctx: &Ctx, command: DeadLettersCommand) -> Result<u8, Failure> {
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
            ctx.emit(json!({"jobs": list(&r.jobs, job_json)}), || {
                jobs_table(&r.jobs)
            });
        }
        DeadLettersCommand::Retry { job_id } => {
            let req = v1::RetryDeadLetterRequest {
                job_id: job_id.clone(),
            };
            let what = format!("retry dead letter {job_id}");
            ctx.call(&what, ctx.operations().await?.retry_dead_letter(req))
                .await?;
            ctx.emit(json!({"retried": job_id}), || {
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
            ctx.emit(json!({"purged": r.purged}), || {
                format!("purged {} dead letters", r.purged)
            });
        }
    }
    Ok(0)
}

/// What `apply` creates.
#[derive(Clone, Copy)]
enum Kind {
    Policy,
    Registry,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Policy => "policy",
            Kind::Registry => "registry",
        }
    }

    /// The config file's key holding this kind's entries.
    fn key(self) -> &'static str {
        match self {
            Kind::Policy => "policies",
            Kind::Registry => "registries",
        }
    }
}

/// Sends every policy (or registry) of `file` to Put*; the other documents are still sent when
/// one fails. Exit code: that of the first failure, else 0.
async fn apply(ctx: &Ctx, file: &Path, kind: Kind) -> Result<u8, Failure> {
    let docs = documents(file, kind)?;
    let mut results = Vec::new();
    let mut lines = Vec::new();
    let mut exit = 0;
    for (i, doc) in docs.iter().enumerate() {
        let name = doc.get("name").and_then(Value::as_str).map_or_else(
            || format!("#{} of {}", i + 1, file.display()),
            str::to_string,
        );
        let what = format!("apply {} {name}", kind.noun());
        let json = doc.to_string();
        let answer = match kind {
            Kind::Policy => {
                let req = v1::PutPolicyRequest { json };
                ctx.call(&what, ctx.policies().await?.put_policy(req))
                    .await
                    .map(|p| policy_json(&p))
            }
            Kind::Registry => {
                let req = v1::PutRegistryRequest { json };
                ctx.call(&what, ctx.registries().await?.put_registry(req))
                    .await
                    .map(|r| registry_json(&r))
            }
        };
        match answer {
            Ok(v) => {
                lines.push(format!("applied {} {name}", kind.noun()));
                results.push(json!({"name": name, "applied": true, (kind.noun()): v}));
            }
            Err(f) => {
                // An unreachable server fails every document alike: stop at the first.
                if f.code.is_none() || f.code == Some(Code::Unavailable) {
                    return Err(f);
                }
                f.report();
                if exit == 0 {
                    exit = f.exit;
                }
                results.push(json!({
                    "name": name,
                    "applied": false,
                    "error": {"code": f.code.map(code_name), "message": f.message},
                }));
            }
        }
    }
    ctx.emit(Value::Array(results), || lines.join("\n"));
    Ok(exit)
}

/// The policy (or registry) documents of a JSON file: one object, an array of them, or a
/// config file (`{"policies": [...], "registries": [...]}`).
fn documents(file: &Path, kind: Kind) -> Result<Vec<Value>, Failure> {
    let what = format!("read {}", file.display());
    let text = std::fs::read_to_string(file).map_err(|e| Failure::other(&what, e.to_string()))?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| Failure::other(&what, format!("not JSON: {e}")))?;
    let is_config = doc
        .as_object()
        .is_some_and(|o| o.contains_key("policies") || o.contains_key("registries"));
    let docs = match doc {
        Value::Array(items) => items,
        Value::Object(mut o) if is_config => match o.remove(kind.key()) {
            Some(Value::Array(items)) => items,
            None => Vec::new(),
            Some(_) => {
                let problem = format!("`{}` is not an array", kind.key());
                return Err(Failure::other(&what, problem));
            }
        },
        doc @ Value::Object(_) => vec![doc],
        _ => {
            let problem = format!(
                "expected a {} object, an array or a config file",
                kind.noun()
            );
            return Err(Failure::other(&what, problem));
        }
    };
    if docs.is_empty() {
        return Err(Failure::other(&what, format!("it holds no {}", kind.key())));
    }
    Ok(docs)
}

/// `Drift.Diff`: the entries as they stream in, shown at the end; exit 1 when there was any.
async fn diff(ctx: &Ctx, policy: &str) -> Result<u8, Failure> {
    let what = format!("diff policy {policy}");
    let req = v1::DiffRequest {
        policy: policy.to_string(),
    };
    let mut stream = ctx
        .drift()
        .await?
        .diff(req)
        .await
        .map_err(|s| Failure::status(&what, &s))?
        .into_inner();
    let mut entries = Vec::new();
    while let Some(entry) = stream
        .message()
        .await
        .map_err(|s| Failure::status(&what, &s))?
    {
        entries.push(entry);
    }
    ctx.emit(Value::Array(list(&entries, drift_json)), || {
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
                lower(d.kind, v1::DriftKind::as_str_name),
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

/// Follows `WatchExecution` until the stream ends; exit 0 when the execution succeeded, 1 when
/// it failed or was stopped.
async fn watch_execution(ctx: &Ctx, id: &str) -> Result<u8, Failure> {
    let what = format!("watch execution {id}");
    let req = v1::WatchExecutionRequest {
        id: id.to_string(),
        interval_ms: 0,
    };
    let mut stream = ctx
        .executions()
        .await?
        .watch_execution(req)
        .await
        .map_err(|s| Failure::status(&what, &s))?
        .into_inner();
    let mut view = WatchView::new(ctx.output);
    let mut snapshots = Vec::new();
    let mut last = None;
    let ended = loop {
        match stream.message().await {
            Ok(Some(p)) => {
                view.update(&p);
                if ctx.output == Format::Json {
                    snapshots.push(progress_json(&p));
                }
                last = p.execution.or(last);
            }
            Ok(None) => break Ok(()),
            Err(s) => break Err(Failure::status(&what, &s)),
        }
    };
    let shown = view.finish();
    ended?;
    let Some(e) = last else {
        return Err(Failure::other(
            &what,
            "the stream ended without a snapshot".into(),
        ));
    };
    let state = v1::ExecutionState::try_from(e.state).unwrap_or_default();
    ctx.emit(Value::Array(snapshots), || {
        if shown {
            String::new()
        } else {
            summary_line(&e)
        }
    });
    match state {
        v1::ExecutionState::Succeeded => Ok(0),
        v1::ExecutionState::Failed | v1::ExecutionState::Stopped => Ok(1),
        _ => Err(Failure::other(
            &what,
            format!(
                "the stream ended while the execution was {}",
                lower(e.state, v1::ExecutionState::as_str_name)
            ),
        )),
    }
}

/// A running task's bar: `team/app:v1 → us ████░░ 1.2 MiB/3.0 MiB blobs 1 copied, …`.
const TASK_BAR: &str = "  {prefix} {bar:25} {bytes}/{total_bytes} {msg}";

/// A watched execution's progress: one bar per running task on a terminal (stderr), plain lines
/// on stdout otherwise (table output only: JSON output keeps stdout for the document).
struct WatchView {
    multi: Option<MultiProgress>,
    header: Option<ProgressBar>,
    bars: HashMap<String, ProgressBar>,
    plain: bool,
    /// Tasks whose end was shown: a finished task may come in two snapshots.
    ended: HashSet<String>,
    state: i32,
}

impl WatchView {
    fn new(output: Format) -> WatchView {
        let tty = std::io::stderr().is_terminal();
        let multi = tty.then(MultiProgress::new);
        let header = multi.as_ref().map(|m| {
            let b = m.add(ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        WatchView {
            multi,
            header,
            bars: HashMap::new(),
            plain: !tty && output == Format::Table,
            ended: HashSet::new(),
            state: 0,
        }
    }

    /// Shows the tasks that ended, then the execution's state (the order they happened in).
    fn update(&mut self, p: &v1::ExecutionProgress) {
        for t in &p.tasks {
            match v1::TaskState::try_from(t.state).unwrap_or_default() {
                v1::TaskState::Running => {
                    let Some(multi) = &self.multi else { continue };
                    let bar = self.bars.entry(t.id.clone()).or_insert_with(|| {
                        let b = multi.add(ProgressBar::new(0));
                        b.set_style(
                            ProgressStyle::with_template(TASK_BAR)
                                .unwrap_or_else(|_| ProgressStyle::default_bar()),
                        );
                        b.set_prefix(task_label(t));
                        b
                    });
                    bar.set_length(t.bytes_total.max(t.bytes_done));
                    bar.set_position(t.bytes_done);
                    bar.set_message(blobs(t));
                }
                v1::TaskState::Succeeded | v1::TaskState::Failed | v1::TaskState::Stopped => {
                    if !self.ended.insert(t.id.clone()) {
                        continue;
                    }
                    if let Some(bar) = self.bars.remove(&t.id) {
                        bar.finish_and_clear();
                    }
                    let line = task_end_line(t);
                    match &self.multi {
                        Some(m) => {
                            let _ = m.println(line);
                        }
                        None if self.plain => out(&line),
                        None => {}
                    }
                }
                _ => {}
            }
        }
        if let Some(e) = &p.execution {
            if let Some(h) = &self.header {
                h.set_message(summary_line(e));
            }
            if e.state != self.state && self.plain {
                out(&summary_line(e));
            }
            self.state = e.state;
        }
    }

    /// Clears the bars; true when plain lines already showed the final state.
    fn finish(self) -> bool {
        for bar in self.bars.values() {
            bar.finish_and_clear();
        }
        if let Some(h) = self.header {
            h.finish_and_clear();
        }
        self.plain
    }
}

/// `execution ID (policy P): running, tasks 3 succeeded, 0 failed, 2 running, 1 pending`.
fn summary_line(e: &v1::Execution) -> String {
    let c = e.counts.unwrap_or_default();
    let mut s = format!(
        "execution {} (policy {}): {}, tasks {} succeeded, {} failed, {} running, {} pending",
        e.id,
        e.policy,
        lower(e.state, v1::ExecutionState::as_str_name),
        c.succeeded,
        c.failed,
        c.running,
        c.pending
    );
    if c.stopped > 0 {
        s.push_str(&format!(", {} stopped", c.stopped));
    }
    if e.ended_at_ms > 0 {
        s.push_str(&format!(", took {}", span(e.started_at_ms, e.ended_at_ms)));
    }
    if !e.error.is_empty() {
        s.push_str(&format!(": {}", one_line(&e.error)));
    }
    s
}

fn task_label(t: &v1::Task) -> String {
    format!(
        "{} → {}",
        reference(&t.repository, &t.reference),
        t.destination
    )
}

fn blobs(t: &v1::Task) -> String {
    format!(
        "blobs {} copied, {} mounted, {} skipped",
        t.blobs_copied, t.blobs_mounted, t.blobs_skipped
    )
}

fn task_end_line(t: &v1::Task) -> String {
    let mut s = format!(
        "{}: {} ({}), {}, {}",
        task_label(t),
        lower(t.state, v1::TaskState::as_str_name),
        t.outcome,
        HumanBytes(t.bytes_done),
        blobs(t)
    );
    if !t.error.is_empty() {
        s.push_str(&format!(": {}", one_line(&t.error)));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Connection and errors

type Svc = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every call (nothing when no token is configured).
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// TLS settings of an https:// endpoint from `--ca-file`, `--cert` and `--key`.
fn client_tls(args: &AdminArgs) -> Result<tonic::transport::ClientTlsConfig, Failure> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| Failure::other(&format!("{flag} {}", path.display()), e.to_string()))
    };
    let Some(ca) = &args.ca_file else {
        let problem =
            "an https:// endpoint needs --ca-file with the CA that signed the server's certificate"
                .to_string();
        return Err(Failure::other("admin TLS", problem));
    };
    let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(read("--ca-file", ca)?),
    );
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            read("--cert", cert)?,
            read("--key", key)?,
        ));
    }
    Ok(tls)
}

/// What every command needs: the channel (connected on first use, so file errors come first),
/// the token, the per-call timeout and the output format.
struct Ctx {
    url: String,
    endpoint: Endpoint,
    channel: tokio::sync::OnceCell<Channel>,
    auth: Bearer,
    timeout: Duration,
    output: Format,
}

impl Ctx {
    fn new(args: &AdminArgs) -> Result<Ctx, Failure> {
        let Some(url) = args.endpoint.as_deref().map(str::trim) else {
            let problem = "pass --endpoint URL or set FERRY_ADMIN_ENDPOINT".to_string();
            return Err(Failure::other("no admin endpoint", problem));
        };
        let url = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let what = format!("admin endpoint {url}");
        let timeout = Duration::from_secs(args.timeout);
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Failure::other(&what, error_chain(&e)))?
            .connect_timeout(timeout);
        if url.starts_with("https://") {
            endpoint = endpoint
                .tls_config(client_tls(args)?)
                .map_err(|e| Failure::other(&what, error_chain(&e)))?;
        } else if args.ca_file.is_some() || args.cert.is_some() {
            let problem = "--ca-file/--cert apply to https:// endpoints only".to_string();
            return Err(Failure::other(&what, problem));
        }
        let tokens = ferry_replicator::tokens::load(
            args.token_file.as_deref(),
            "FERRY_ADMIN_TOKEN",
            "admin",
        )
        .map_err(|e| Failure::other("admin token", e))?;
        let auth = match tokens.first() {
            Some(t) => {
                let mut v = MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                    let problem = "it holds characters not allowed in a header".to_string();
                    Failure::other("admin token", problem)
                })?;
                v.set_sensitive(true);
                Bearer(Some(v))
            }
            None => Bearer(None),
        };
        Ok(Ctx {
            url,
            endpoint,
            channel: tokio::sync::OnceCell::new(),
            auth,
            timeout,
            output: args.output,
        })
    }

    async fn service(&self) -> Result<Svc, Failure> {
        let channel = self
            .channel
            .get_or_try_init(|| async {
                self.endpoint.connect().await.map_err(|e| Failure {
                    exit: 5,
                    what: format!("cannot connect to {}", self.url),
                    code: Some(Code::Unavailable),
                    message: error_chain(&e),
                })
            })
            .await?;
        Ok(InterceptedService::new(channel.clone(), self.auth.clone()))
    }

    async fn policies(&self) -> Result<PoliciesClient<Svc>, Failure> {
        Ok(PoliciesClient::new(self.service().await?))
    }

    async fn registries(&self) -> Result<RegistriesClient<Svc>, Failure> {
        Ok(RegistriesClient::new(self.service().await?))
    }

    async fn executions(&self) -> Result<ExecutionsClient<Svc>, Failure> {
        Ok(ExecutionsClient::new(self.service().await?))
    }

    async fn drift(&self) -> Result<DriftClient<Svc>, Failure> {
        Ok(DriftClient::new(self.service().await?))
    }

    async fn operations(&self) -> Result<OperationsClient<Svc>, Failure> {
        Ok(OperationsClient::new(self.service().await?))
    }

    /// One unary call within the timeout; `what` names it in errors.
    async fn call<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Failure::status(what, &status)),
            Err(_) => Err(Failure {
                exit: 2,
                what: what.to_string(),
                code: Some(Code::DeadlineExceeded),
                message: format!("no answer from {} within {:?}", self.url, self.timeout),
            }),
        }
    }

    /// Prints the answer: `json` with `-o json`, else the table `table` makes.
    fn emit(&self, json: Value, table: impl FnOnce() -> String) {
        match self.output {
            Format::Json => out(&serde_json::to_string_pretty(&json).unwrap_or_default()),
            Format::Table => {
                let t = table();
                if !t.is_empty() {
                    out(&t);
                }
            }
        }
    }
}

/// Why a command failed, with its exit code.
#[derive(Debug)]
struct Failure {
    exit: u8,
    /// What was attempted: `get policy x`.
    what: String,
    /// The gRPC status code, when the server (or the transport) gave one.
    code: Option<Code>,
    message: String,
}

impl Failure {
    fn status(what: &str, status: &Status) -> Failure {
        let exit = match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => 3,
            Code::NotFound => 4,
            Code::Unavailable => 5,
            _ => 2,
        };
        let mut message = status.message().to_string();
        if let Some(source) = std::error::Error::source(status) {
            let chain = error_chain(source);
            if !message.contains(&chain) {
                message = if message.is_empty() {
                    chain
                } else {
                    format!("{message}: {chain}")
                };
            }
        }
        if message.is_empty() {
            message = status.code().description().to_string();
        }
        Failure {
            exit,
            what: what.to_string(),
            code: Some(status.code()),
            message,
        }
    }

    /// A usage or local error (exit 2).
    fn other(what: &str, message: String) -> Failure {
        Failure {
            exit: 2,
            what: what.to_string(),
            code: None,
            message,
        }
    }

    fn report(&self) {
        let _ = writeln!(std::io::stderr().lock(), "error: {self}");
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            // The server lists every field violation, one per line: keep them as they are.
            Some(Code::InvalidArgument) if self.message.contains('\n') => {
                write!(f, "{} (INVALID_ARGUMENT):\n{}", self.what, self.message)
            }
            Some(code) => write!(
                f,
                "{} ({}): {}",
                self.what,
                code_name(code),
                one_line(&self.message)
            ),
            None => write!(f, "{}: {}", self.what, one_line(&self.message)),
        }
    }
}

/// The canonical gRPC name of a status code.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

// ---------------------------------------------------------------------------------------------
// JSON: one conversion per message type

fn list<T>(items: &[T], f: fn(&T) -> Value) -> Vec<Value> {
    items.iter().map(f).collect()
}

/// A policy or registry document: parsed, or as the string it is when it is not JSON.
fn document(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

fn policy_json(p: &v1::Policy) -> Value {
    json!({
        "name": p.name,
        "source": lower(p.source, v1::Source::as_str_name),
        "enabled": p.enabled,
        "paused": p.paused,
        "mode": p.mode,
        "trigger": p.trigger,
        "src_registry": p.src_registry,
        "dest_registries": p.dest_registries,
        "description": p.description,
        "cron": p.cron,
        "json": document(&p.json),
    })
}

fn registry_json(r: &v1::Registry) -> Value {
    json!({
        "name": r.name,
        "url": r.url,
        "insecure": r.insecure,
        "credential_type": r.credential_type,
        "credential_ref": r.credential_ref,
        "source": lower(r.source, v1::Source::as_str_name),
        "poll_interval_seconds": r.poll_interval_seconds,
        "json": document(&r.json),
    })
}

fn ping_json(name: &str, p: &v1::PingRegistryResponse) -> Value {
    json!({
        "name": name,
        "reachable": p.reachable,
        "authenticated": p.authenticated,
        "api_version": p.api_version,
        "auth_scheme": p.auth_scheme,
        "referrers_api": p.referrers_api,
        "chunked_upload": p.chunked_upload,
        "latency_ms": p.latency_ms,
        "error": p.error,
        "notes": p.notes,
    })
}

fn origin_json(o: &v1::Origin) -> Value {
    json!({
        "event_id": o.event_id,
        "event_time_ms": o.event_time_ms,
        "kind": lower(o.kind, v1::EventKind::as_str_name),
        "repository": o.repository,
        "reference": o.reference,
        "digest": o.digest,
    })
}

fn counts_json(c: &v1::TaskCounts) -> Value {
    json!({
        "pending": c.pending,
        "running": c.running,
        "succeeded": c.succeeded,
        "failed": c.failed,
        "stopped": c.stopped,
    })
}

fn execution_json(e: &v1::Execution) -> Value {
    json!({
        "id": e.id,
        "policy": e.policy,
        "trigger": lower(e.trigger, v1::Trigger::as_str_name),
        "state": lower(e.state, v1::ExecutionState::as_str_name),
        "started_at_ms": e.started_at_ms,
        "ended_at_ms": e.ended_at_ms,
        "attempts": e.attempts,
        "next_try_at_ms": e.next_try_at_ms,
        "error": e.error,
        "origin": e.origin.as_ref().map(origin_json),
        "worker": e.worker,
        "counts": e.counts.as_ref().map(counts_json),
        "dry_run": e.dry_run,
    })
}

fn task_json(t: &v1::Task) -> Value {
    json!({
        "id": t.id,
        "execution_id": t.execution_id,
        "policy": t.policy,
        "kind": lower(t.kind, v1::EventKind::as_str_name),
        "repository": t.repository,
        "reference": t.reference,
        "destination": t.destination,
        "state": lower(t.state, v1::TaskState::as_str_name),
        "attempts": t.attempts,
        "digest": t.digest,
        "outcome": t.outcome,
        "blobs_copied": t.blobs_copied,
        "blobs_mounted": t.blobs_mounted,
        "blobs_skipped": t.blobs_skipped,
        "bytes_done": t.bytes_done,
        "bytes_total": t.bytes_total,
        "started_at_ms": t.started_at_ms,
        "ended_at_ms": t.ended_at_ms,
        "error": t.error,
        "lag_ms": t.lag_ms,
    })
}

fn progress_json(p: &v1::ExecutionProgress) -> Value {
    json!({
        "execution": p.execution.as_ref().map(execution_json),
        "tasks": list(&p.tasks, task_json),
    })
}

fn drift_json(d: &v1::DriftEntry) -> Value {
    json!({
        "kind": lower(d.kind, v1::DriftKind::as_str_name),
        "destination": d.destination,
        "repository": d.repository,
        "destination_repository": d.destination_repository,
        "tag": d.tag,
        "source_digest": d.source_digest,
        "destination_digest": d.destination_digest,
    })
}

fn queue_json(q: &v1::QueueStats) -> Value {
    json!({
        "depth": q.depth,
        "delayed": q.delayed,
        "in_flight": q.in_flight,
        "dead_letters": q.dead_letters,
        "oldest_age_ms": q.oldest_age_ms,
    })
}

fn job_json(j: &v1::Job) -> Value {
    json!({
        "id": j.id,
        "policy": j.policy,
        "kind": lower(j.kind, v1::EventKind::as_str_name),
        "repository": j.repository,
        "reference": j.reference,
        "digest": j.digest,
        "attempt": j.attempt,
        "last_error": j.last_error,
        "event_time_ms": j.event_time_ms,
        "enqueued_at_ms": j.enqueued_at_ms,
    })
}

fn worker_json(w: &v1::WorkerInfo) -> Value {
    json!({
        "id": w.id,
        "host": w.host,
        "region": w.region,
        "pid": w.pid,
        "version": w.version,
        "started_at_ms": w.started_at_ms,
        "last_seen_ms": w.last_seen_ms,
        "concurrency": w.concurrency,
        "in_flight": w.in_flight,
        "jobs_succeeded": w.jobs_succeeded,
        "jobs_failed": w.jobs_failed,
        "policies": w.policies,
    })
}

// ---------------------------------------------------------------------------------------------
// Tables

fn policies_table(policies: &[v1::Policy]) -> String {
    let header = [
        "NAME",
        "MODE",
        "TRIGGER",
        "FROM",
        "TO",
        "ENABLED",
        "PAUSED",
        "DEFINED IN",
    ];
    let rows = policies.iter().map(|p| {
        vec![
            p.name.clone(),
            p.mode.clone(),
            p.trigger.clone(),
            p.src_registry.clone(),
            p.dest_registries.join(","),
            yes(p.enabled),
            yes(p.paused),
            lower(p.source, v1::Source::as_str_name),
        ]
    });
    table(&header, rows)
}

fn policy_details(p: &v1::Policy) -> String {
    let doc = serde_json::from_str::<Value>(&p.json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| p.json.clone());
    let fields = align(vec![
        row(["name", &p.name]),
        row(["description", or_dash(&p.description)]),
        row(["mode", &p.mode]),
        row(["trigger", &p.trigger]),
        row(["cron", or_dash(&p.cron)]),
        row(["from", &p.src_registry]),
        row(["to", &p.dest_registries.join(", ")]),
        row(["enabled", &yes(p.enabled)]),
        row(["paused", &yes(p.paused)]),
        row(["defined in", &lower(p.source, v1::Source::as_str_name)]),
    ]);
    format!("{fields}\n\n{doc}")
}

fn registries_table(registries: &[v1::Registry]) -> String {
    let header = [
        "NAME",
        "URL",
        "INSECURE",
        "CREDENTIAL",
        "POLL",
        "DEFINED IN",
    ];
    let rows = registries.iter().map(|r| {
        vec![
            r.name.clone(),
            r.url.clone(),
            yes(r.insecure),
            credential(r),
            poll(r.poll_interval_seconds),
            lower(r.source, v1::Source::as_str_name),
        ]
    });
    table(&header, rows)
}

fn registry_details(r: &v1::Registry) -> String {
    align(vec![
        row(["name", &r.name]),
        row(["url", &r.url]),
        row(["insecure", &yes(r.insecure)]),
        row(["credential", &credential(r)]),
        row(["polled every", &poll(r.poll_interval_seconds)]),
        row(["defined in", &lower(r.source, v1::Source::as_str_name)]),
    ])
}

fn credential(r: &v1::Registry) -> String {
    match (r.credential_type.as_str(), r.credential_ref.as_str()) {
        ("", _) => "none".into(),
        (t, "") => t.into(),
        (t, reference) => format!("{t} ({reference})"),
    }
}

fn poll(seconds: u64) -> String {
    if seconds == 0 {
        "-".into()
    } else {
        format!("{seconds}s")
    }
}

fn ping_details(name: &str, p: &v1::PingRegistryResponse) -> String {
    let mut rows = vec![
        row(["registry", name]),
        row(["reachable", &yes(p.reachable)]),
        row(["authenticated", &yes(p.authenticated)]),
        row(["api version", &p.api_version]),
        row(["auth scheme", or_dash(&p.auth_scheme)]),
        row(["referrers api", &yes(p.referrers_api)]),
        row(["chunked upload", &yes(p.chunked_upload)]),
        row(["latency", &format!("{} ms", p.latency_ms)]),
    ];
    if !p.error.is_empty() {
        rows.push(row(["error", &p.error]));
    }
    for note in &p.notes {
        rows.push(row(["note", note]));
    }
    align(rows)
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
                lower(o.kind, v1::EventKind::as_str_name),
                reference(&o.repository, &o.reference)
            )
        });
        vec![
            e.id.clone(),
            e.policy.clone(),
            lower(e.trigger, v1::Trigger::as_str_name),
            lower(e.state, v1::ExecutionState::as_str_name),
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
        row(["trigger", &lower(e.trigger, v1::Trigger::as_str_name)]),
        row(["state", &lower(e.state, v1::ExecutionState::as_str_name)]),
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
            lower(o.kind, v1::EventKind::as_str_name),
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
            lower(t.kind, v1::EventKind::as_str_name),
            lower(t.state, v1::TaskState::as_str_name),
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
            lower(j.kind, v1::EventKind::as_str_name),
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

// ---------------------------------------------------------------------------------------------
// Formatting

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut all = vec![header.iter().map(|c| c.to_string()).collect()];
    all.extend(rows);
    align(all)
}

/// Rows as columns padded to their widest cell, two spaces apart; newlines in cells become
/// spaces.
fn align(rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.into_iter().map(|c| one_line(&c)).collect())
        .collect();
    let mut widths: Vec<usize> = Vec::new();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            let w = c.chars().count();
            match widths.get_mut(i) {
                Some(max) => *max = (*max).max(w),
                None => widths.push(w),
            }
        }
    }
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                line.push_str(c);
                if i + 1 < r.len() {
                    let pad = widths[i] - c.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line.trim_end().to_string()
        })
        .collect();
    lines.join("\n")
}

/// Writes a line to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(s: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{s}");
}

fn one_line(s: &str) -> String {
    s.trim().replace(['\r', '\n'], " ")
}

fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// `repo:tag` or `repo@sha256:…`.
fn reference(repository: &str, reference: &str) -> String {
    if reference.contains(':') {
        format!("{repository}@{reference}")
    } else {
        format!("{repository}:{reference}")
    }
}

/// `sha256:0123456789ab` (12 hex digits are enough to tell digests apart in a table).
fn short_digest(d: &str) -> String {
    if d.is_empty() {
        return "-".into();
    }
    d.char_indices()
        .nth(d.find(':').map_or(12, |i| i + 13))
        .map_or_else(|| d.to_string(), |(i, _)| d[..i].to_string())
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago` (`-` for 0, "not set").
fn ago(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = now_ms().saturating_sub(ms) / 1000;
    match secs {
        s if s < 0 => format!("in {}", duration_ms(s.unsigned_abs().saturating_mul(1000))),
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// `2024-05-01T12:34:56Z (5m ago)`, `-` for 0.
fn when(ms: i64) -> String {
    if ms == 0 {
        "-".into()
    } else {
        format!("{} ({})", rfc3339(ms), ago(ms))
    }
}

/// From `start` to `end` (to now while `end` is 0); `-` when it never started.
fn span(start: i64, end: i64) -> String {
    if start == 0 {
        return "-".into();
    }
    let end = if end == 0 { now_ms() } else { end };
    duration_ms(end.saturating_sub(start).max(0).unsigned_abs())
}

/// `850ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`.
fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        ms if ms < 1000 => format!("{ms}ms"),
        ms if ms < 60_000 => format!("{}.{}s", s, (ms % 1000) / 100),
        _ if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_without_prefix() {
        assert_eq!(lower(4, v1::ExecutionState::as_str_name), "succeeded");
        assert_eq!(lower(1, v1::Trigger::as_str_name), "event_based");
        assert_eq!(lower(1, v1::DriftKind::as_str_name), "missing");
        assert_eq!(lower(99, v1::DriftKind::as_str_name), "99");
    }

    #[test]
    fn aligned_columns() {
        let t = table(
            &["A", "BB"],
            [row(["xyz", "1"]), row(["q", ""])].into_iter(),
        );
        assert_eq!(t, "A    BB\nxyz  1\nq");
    }

    #[test]
    fn short_digests() {
        assert_eq!(
            short_digest("sha256:0123456789abcdef0123"),
            "sha256:0123456789ab"
        );
        assert_eq!(short_digest("sha256:01"), "sha256:01");
        assert_eq!(short_digest(""), "-");
    }

    #[test]
    fn status_lines_and_exit_codes() {
        let f = Failure::status("get policy x", &Status::not_found("no policy named \"x\""));
        assert_eq!(f.exit, 4);
        assert_eq!(
            f.to_string(),
            "get policy x (NOT_FOUND): no policy named \"x\""
        );
        let f = Failure::status(
            "apply policy p",
            &Status::invalid_argument("a: bad\nb.c: bad"),
        );
        assert_eq!(f.exit, 2);
        assert_eq!(
            f.to_string(),
            "apply policy p (INVALID_ARGUMENT):\na: bad\nb.c: bad"
        );
        let codes = [
            (Code::Unauthenticated, 3),
            (Code::PermissionDenied, 3),
            (Code::Unavailable, 5),
            (Code::Unimplemented, 2),
            (Code::FailedPrecondition, 2),
        ];
        for (code, exit) in codes {
            assert_eq!(
                Failure::status("x", &Status::new(code, "m")).exit,
                exit,
                "{code:?}"
            );
        }
        let f = Failure::status("x", &Status::new(Code::Internal, ""));
        assert!(f.to_string().starts_with("x (INTERNAL): "), "{f}");
    }

    #[test]
    fn bar_template_is_valid() {
        assert!(ProgressStyle::with_template(TASK_BAR).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms(850), "850ms");
        assert_eq!(duration_ms(12_345), "12.3s");
        assert_eq!(duration_ms(245_000), "4m05s");
        assert!(duration_ms(u64::MAX).ends_with('h'));
    }
}
