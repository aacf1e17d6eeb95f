//! Ferry's replication engine.
//!
//! # Layout
//! - [`oci`]: a distribution-spec client (auth, manifests as exact bytes, blobs streamed, mounts).
//! - [`config`] and [`policy`]: the config file (registries + policies) and Harbor-compatible
//!   replication policies, validated before any network I/O.
//! - [`diff`]: what differs between a policy's source and destination, by digest.
//! - [`transfer`]: moves one manifest graph, copying only the blobs the destination lacks.
//! - [`sync`]: a full reconciliation of a policy (list, filter, diff, transfer, verify).
//! - [`event`] and [`queue`]: normalized registry events and the job queue contract (issue 3).
//! - [`catalog`]: policies stored through the admin API, merged with the config file's.
//! - [`admin`]: the gRPC admin API over the config, queue and history.
//! - [`history`]: executions, tasks and live workers, for the admin API.
//! - [`runs`]: manual and scheduled runs of a policy, as executions whose tasks are queue jobs.
//! - [`schedule`]: cron ticks of scheduled policies, fired once per region.
//! - [`worker`]: claims queued jobs and runs them with leases (heartbeat, pause cache, stop watch,
//!   settle), recording each in the history.
//! - [`delete`]: a delete replicated to one destination, guarded by digest and by the policy's tags.
//! - [`conflict`]: bidirectional conflicts: the later write wins, and the ledger of tag writes.
//! - [`policies`]: the enabled policies a worker runs jobs with, looked up by name and direction.
//! - [`labels`]: Prometheus label sets shared by several subsystems' metrics.
//! - [`runtime`]: process plumbing of the binaries (logging, shutdown signal, Redis URL, hostname).
//! - [`locks`]: taking a mutex without ever panicking on poison.
//! - [`clock`]: Unix milliseconds, and RFC 3339 in and out (via `chrono`).
//! - [`errors`]: an error and its causes on one line, for every layer's error types.
//! - [`listener`]: every listening socket, bound and served with the same limits.
//! - [`app`]: one daemon assembly (`ferry-agent`, `ferry worker`, `ferry serve`): options →
//!   build → spawn → drain.
//! - [`background`]: long-running loops (scheduler, safety net, pollers, forwarders) as
//!   routines under one supervisor that owns their waits, backoff and status.
//! - [`telemetry`]: OTLP trace export and the trace context carried from a webhook to its jobs.
//!
//! The invariant every module keeps: bytes are never re-serialized, so every manifest and blob
//! arrives on the destination under the digest it had on the source, or the operation fails.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod background;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod conflict;
pub mod delete;
pub mod diff;
pub mod errors;
pub mod event;
pub mod forward;
pub mod history;
pub mod ingest;
pub mod labels;
pub mod listener;
pub mod locks;
pub mod oci;
pub mod ops;
pub mod pauses;
pub mod policies;
pub mod policy;
pub mod queue;
pub mod reconcile;
pub mod runs;
pub mod runtime;
pub mod schedule;
pub mod sync;
pub mod telemetry;
pub mod throttle;
pub mod tokens;
pub mod transfer;
pub mod worker;
