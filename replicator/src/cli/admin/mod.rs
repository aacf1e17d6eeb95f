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
//! - this file: [`AdminArgs`] (the global flags, which may follow the subcommand), the command
//!   tree, the exit-code table of `--help`, and the dispatch to the command groups.
//! - Command groups, each with its own flags (the subcommand enum), its RPCs and its tables, so
//!   that adding a command touches one file: [`policies`], [`registries`], `apply` (shared by
//!   both), [`executions`] (runs, executions, tasks), `watch` (following an execution),
//!   [`drift`], [`operations`] (queue, dead letters, workers).
//! - `connection`: the endpoint, TLS, the bearer token and the lazily connected channel; one
//!   unary call within the timeout, or a server stream.
//! - `output`: `-o table|json`, errors and their exit codes, aligned tables and cell helpers.
//! - `json`: the `-o json` documents: every answer prints as its proto message through serde
//!   (the derives and serializers are `ferry_proto::json`); this holds the one document that adds
//!   to a message, and the golden test of them all.
//! - `enums`: proto enums given as flags, by the lowercase names the output prints.
//! - `time`: times and durations as people read them.
//!
//! Invariant: no input (flags, files, server answers) makes it panic; output to a closed pipe is
//! dropped silently.
mod apply;
mod connection;
mod drift;
mod enums;
mod executions;
mod json;
mod operations;
mod output;
mod policies;
mod registries;
mod time;
mod watch;

use clap::Subcommand;

use connection::{ConnectionFlags, Ctx};
use output::{Failure, Format};

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
    #[command(flatten)]
    pub connection: ConnectionFlags,
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

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Replication policies.
    Policies {
        #[command(subcommand)]
        command: policies::PoliciesCommand,
    },
    /// Registries and their reachability.
    Registries {
        #[command(subcommand)]
        command: registries::RegistriesCommand,
    },
    /// Start a manual run (a full reconciliation) of a policy.
    Run(executions::RunArgs),
    /// Executions: replication runs of a policy (one per event, or manual/scheduled runs).
    Executions {
        #[command(subcommand)]
        command: executions::ExecutionsCommand,
    },
    /// The tasks of an execution (one per reference and destination).
    Tasks(executions::TasksArgs),
    /// Drift report of a policy by digest; exit 1 when anything drifts.
    Diff { policy: String },
    /// Queue depth, delayed and in-flight jobs, dead letters.
    Queue,
    /// Jobs that failed their last attempt.
    DeadLetters {
        #[command(subcommand)]
        command: operations::DeadLettersCommand,
    },
    /// Live workers and their last heartbeat.
    Workers,
}

/// Runs one command; the exit code of the table above.
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
    let ctx = Ctx::new(&args.connection, args.timeout, args.output)?;
    match args.command {
        AdminCommand::Policies { command } => policies::run(&ctx, command).await,
        AdminCommand::Registries { command } => registries::run(&ctx, command).await,
        AdminCommand::Run(run) => executions::start(&ctx, run).await,
        AdminCommand::Executions { command } => executions::run(&ctx, command).await,
        AdminCommand::Tasks(tasks) => executions::tasks(&ctx, tasks).await,
        AdminCommand::Diff { policy } => drift::diff(&ctx, &policy).await,
        AdminCommand::Queue => operations::queue(&ctx).await,
        AdminCommand::DeadLetters { command } => operations::dead_letters(&ctx, command).await,
        AdminCommand::Workers => operations::workers(&ctx).await,
    }
}
