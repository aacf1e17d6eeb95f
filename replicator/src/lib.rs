//! Ferry's replication engine.
//!
//! # Layout
//! Grouped by the data flow: an event comes in, a policy decides, a job is queued, a worker runs
//! it against the registries, operators watch and steer.
//!
//! **In — events from registries and peer regions**
//! - [`ingest`]: webhooks to events to jobs (`ingest::distribution` parses CNCF distribution
//!   notifications, **`ingest::harbor` turns a Harbor webhook into events**, `ingest::poll`
//!   polls registries without webhooks, `ingest::http` serves the routes).
//! - [`event`]: the normalized event, and clamping the times outsiders send.
//! - [`forward`]: events between regions (durable outbox, forwarder, `Events/Forward` server).
//! - [`tokens`]: the bearer tokens webhooks and the admin API accept.
//!
//! **Decide — what the operator asked for**
//! - [`config`] and [`policy`]: the config file and Harbor-compatible policies, validated before
//!   any network I/O; the one repository/tag grammar and the one cron grammar live in `policy`.
//! - [`catalog`]: policies and registries stored through the admin API, merged with the file's.
//! - [`policies`]: the enabled policies a worker runs jobs with, looked up by name and direction.
//! - [`conflict`]: bidirectional conflicts: the later write wins, and the ledger of tag writes.
//!
//! **Queue and shared state (memory or Redis/Valkey)**
//! - [`queue`]: the job queue contract and its backends; [`history`]: executions and tasks.
//! - [`pauses`] and [`throttle`]: registry pauses and policy speed, shared by a region.
//!
//! **Run a job — against the registries**
//! - [`worker`]: claims queued jobs and runs them under a lease (heartbeat, pause cache, stop
//!   watch, settle), recording each in the history.
//! - [`sync`]: the per-tag copy (also `ferry sync`'s full reconciliation); [`diff`]: drift by
//!   digest; [`delete`]: digest-guarded deletes.
//! - [`transfer`]: moves one manifest graph — **`transfer/mod.rs` is the file that decides
//!   whether a blob is skipped, mounted or copied**; `transfer::upload` how an upload resumes.
//! - [`oci`]: the distribution-spec client (auth, manifests as exact bytes, blobs, mounts).
//!
//! **Control — operators**
//! - [`admin`]: the gRPC admin API; [`runs`]: manual and scheduled runs; [`schedule`]: cron
//!   ticks fired once per region; [`reconcile`]: the safety net that repairs drift.
//!
//! **Process — what every binary shares**
//! - [`app`]: one daemon assembly (`ferry-agent`, `ferry worker`, `ferry serve`): options →
//!   build → spawn → drain; [`background`]: routines under one supervisor.
//! - [`listener`]: every listening socket and its limits; [`ops`]: `/healthz` and `/metrics`.
//! - [`runtime`]: logging, shutdown signal, Redis URL, hostname; [`telemetry`]: OTLP traces.
//! - [`labels`]: shared metric label sets; [`locks`]: mutexes that never panic on poison;
//!   [`clock`]: Unix ms and RFC 3339; [`errors`]: an error and its causes on one line.
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
