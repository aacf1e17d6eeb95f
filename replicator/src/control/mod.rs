//! Control: what operators drive and watch.
//!
//! - [`admin`]: the gRPC admin API (policies, registries, runs, executions, pauses, workers).
//! - [`runs`]: manual and scheduled runs: a full sync of one policy as an execution whose tasks are
//!   ordinary queue jobs.
//! - [`schedule`]: cron ticks, each fired once per region.
//! - [`safety_net`]: the periodic diff that turns drift into jobs.
//!
//! Invariant: control only decides and records; every byte is moved by workers running queued
//! jobs ([`crate::worker`]), under the same rules as event-driven jobs.
pub mod admin;
pub mod runs;
pub mod safety_net;
pub mod schedule;
