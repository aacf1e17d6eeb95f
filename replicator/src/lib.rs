//! Ferry's replication engine.
//!
//! # Layout
//! Grouped by the data flow: an event comes in, a policy decides, a job is queued, a worker runs
//! it against the registries, operators watch and steer.
//!
//! **In — events from registries and peer regions**
//! - [`ingest`]: webhooks to events to jobs (`ingest::distribution` parses CNCF distribution
//!   notifications, **`ingest::harbor` turns a Harbor webhook into events**, `ingest::origin`
//!   recognises the sending registry without `?registry=`, `ingest::poll`
//!   polls registries without webhooks, `ingest::matcher` turns events into jobs,
//!   `ingest::http` serves the routes).
//! - [`event`]: the normalized event, and clamping the times outsiders send.
//! - [`regions`]: events between regions (forwarder, `Events/Forward` server; the durable outbox
//!   is `store::outbox`) and bidirectional conflicts (`regions::conflict`: the later write wins,
//!   from the tag ledger in `store::ledger`; `regions::restore`: the agent puts back a push an
//!   older copy overwrote).
//! - [`tokens`]: the bearer tokens webhooks, peers and the admin API accept.
//!
//! **Decide — what the operator asked for**
//! - [`config`] and [`policy`]: the config file and Harbor-compatible policies, validated before
//!   any network I/O; the one repository/tag grammar and the one cron grammar live in `policy`.
//! - [`catalog`]: policies and registries stored through the admin API merged with the file's,
//!   and the policy watch (`catalog::Current`, `catalog::Reload`) every long-running part follows.
//!
//! **Store — a region's shared state (memory or Redis/Valkey)**
//! - [`store`]: everything a region's processes share and how it is kept: the job queue
//!   (`store::queue`: one narrow trait per concern — jobs, dead letters, blob and manifest
//!   leases, pauses, upload checkpoints), executions and tasks (`store::history`), registry
//!   pauses and policy speed (`store::limits`), the tag ledger (`store::ledger`), the regions outbox
//!   (`store::outbox`), the one Redis connection (`store::redis`), [`store::Store`] (a backend's
//!   views, handed to each part) and [`store::StoreError`]; its module doc has the Redis key
//!   layout. It imports none of the parts that use it.
//! - [`throttle`]: policy speed; [`backoff`]: the one capped, jittered retry backoff (jobs,
//!   registry requests, background routines, forwarding).
//!
//! **Run a job — against the registries**
//! - [`worker`]: claims queued jobs and runs them under a lease (heartbeat, pause cache, stop
//!   watch, settle), recording each in the history.
//! - [`replicate`]: the per-job algorithm: one tag to one destination (`replicate::tag`),
//!   referrers, the gates that hold an image back (`replicate::gates`: `only_signed`,
//!   `max_severity`), digest-guarded deletes, a full sync of a policy, drift by digest.
//! - [`transfer`]: moves one manifest graph — **`transfer/mod.rs` is the file that decides
//!   whether a blob is skipped, mounted or copied**; `transfer::upload` how an upload resumes.
//! - [`layout`]: air-gapped sites — an OCI image layout (directory or tar) as the far side of a
//!   policy: `layout::export` writes what a policy covers on its source into one, and
//!   `layout::import` replicates one into the destinations through `replicate`/`transfer`, the
//!   layout being a `transfer::Source` like a registry.
//! - [`oci`]: the distribution-spec client (auth, manifests as exact bytes, blobs, mounts; for
//!   `type: harbor` registries Harbor's projects API in `oci::client::harbor`), and
//!   `oci::metrics`: every request it sends counted by registry, method and status.
//!
//! **Control — operators**
//! - [`control`]: the gRPC admin API (`control::admin`; who may call what: `admin::auth`, the
//!   RPC→role table `admin::roles`, SSO tokens `admin::oidc`), manual and scheduled runs
//!   (`control::runs`, `control::schedule`), and the safety net that turns drift into jobs
//!   (`control::safety_net`).
//!
//! **Process — what every binary shares**
//! - [`app`]: one daemon assembly (`ferry-agent`, `ferry worker`, `ferry serve`): options →
//!   build → spawn → drain. It sits on top: nothing below imports it.
//! - [`runtime`]: what every part runs on: `runtime::background` runs routines under one
//!   supervisor; `runtime::listener` owns every listening socket and its limits; `runtime::ops`
//!   serves `/healthz` and `/metrics` from the process's one metrics registry; logging, shutdown
//!   signal, Redis URL, hostname; `runtime::telemetry` OTLP traces. Operators' dashboard and
//!   alert rules over these metrics: `deploy/observability/`.
//! - [`labels`]: shared metric label sets; [`locks`]: mutexes that never panic on poison;
//!   [`clock`]: Unix ms and RFC 3339; [`errors`]: an error and its causes on one line.
//!
//! The invariant every module keeps: bytes are never re-serialized, so every manifest and blob
//! arrives on the destination under the digest it had on the source, or the operation fails.
#![forbid(unsafe_code)]

pub mod app;
pub mod backoff;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod control;
pub mod errors;
pub mod event;
pub mod ingest;
pub mod labels;
pub mod layout;
pub mod locks;
pub mod oci;
pub mod policy;
pub mod regions;
pub mod replicate;
pub mod runtime;
pub mod store;
pub mod throttle;
pub mod tokens;
pub mod transfer;
pub mod worker;
