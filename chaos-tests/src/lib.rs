//! Harness of Ferry's process-level chaos tests: one **region** made of real processes, driven and
//! observed only from the outside (HTTP, skopeo, signals, log files).
//!
//! A [`Region`] is: a real `redis-server` with the AOF on; registry `a` (Debian's `docker-registry`,
//! CNCF distribution 2.8) whose notifications go to the agent; registry `b`, the destination; a real
//! `ferry-agent` process; and, started on demand, any number of real `ferry worker` processes
//! ([`Region::start_worker`]). The config names one policy, `a-to-b`: push, `event_based`,
//! `replicate_deletion: true`, no filters unless [`RegionOptions`] adds some.
//!
//! Needs the workspace binaries built first (`cargo build --workspace`: integration tests of this
//! package cannot make Cargo build another package's binaries), and `docker-registry`, `skopeo` and
//! `redis-server` on `PATH` (`FERRY_REDIS_SERVER` picks another Redis binary, e.g. `valkey-server`).
//!
//! # Layout
//! - [`process`]: [`Daemon`], a Ferry child process with its log file, health/metrics probes and
//!   signals; [`binary`] finds `ferry`/`ferry-agent` next to the test executable; [`serial`] is the
//!   cross-process lock that runs scenarios one at a time.
//! - [`region`]: [`Region`], [`RegionOptions`], [`WorkerSpec`] and the config writer.
//! - [`mesh`]: several regions, each with its own Redis, coordinating over gRPC through fault
//!   proxies; their queues through the workers' admin API, their outboxes read in Redis, and
//!   [`mesh::Mesh::wait_quiescent`], the wait that precedes every "nothing more happened" check.
//! - [`oci`]: independent registry checks (manifest `HEAD`/`DELETE` over plain HTTP, skopeo digests),
//!   counting uploads in a registry's access log and the bytes its upload requests carried (read
//!   from distribution's signed session state), request spans to the nanosecond from its
//!   `response completed` lines, uploads in progress on its disk, fixture images.
//! - [`webhook`]: notification bodies shaped exactly like distribution 2.8's, a client for the
//!   agent's webhook, and a raw HTTP/1.1 client for bodies over the agent's size limit.
//! - [`metrics`]: reading one value out of a Prometheus/OpenMetrics text page (`ferry_testkit`'s).
//! - [`prometheus`]: a real `prometheus` server scraping the region, `promtool`, and the PromQL of
//!   `deploy/observability/` (dashboard expressions, the metric names they read).
//! - [`tcp`]: bytes still on their way between local processes, from `/proc/net/tcp`.
//! - The seeded chaos oracle (`tests/oracle.rs`): [`seeded`] (the seed, from `FERRY_CHAOS_SEED`,
//!   and its generator), [`workload`] (images pushed, re-tagged, moved and deleted in every region
//!   at once, and the ledger of what was acknowledged), [`schedule`] (faults over the mesh: kill -9
//!   of workers, agents, registries and Redis, partitions, latency), [`oracle`] (the registries
//!   read directly and compared with the ledger and the policies), [`soak`] (every process's
//!   memory, descriptors and tasks sampled over the run, and their growth).
//!
//! # Invariants
//! - Every child process is killed when its owner is dropped (`kill_on_drop`), so a failing test
//!   leaks nothing; its stdout and stderr go to a log file in the region's temp dir.
//! - When a test panics while a [`Region`] is alive, the region prints the tail of every log
//!   (registries, Redis, agent, workers) and keeps its log dir for inspection (set
//!   `FERRY_CHAOS_KEEP_LOGS=1` to keep it after a passing test too).
//! - Waiting is polling ([`wait_for`]) with a generous timeout, never a fixed sleep before an
//!   assertion: tests assert behaviour, and print (not assert) timings. An absence is asserted
//!   only after proof that it would have shown by then (a quiescent mesh, a failed delivery).
#![forbid(unsafe_code)]

pub mod mesh;
pub use ferry_testkit::metrics;
pub mod oci;
pub mod oracle;
pub mod process;
pub mod prometheus;
pub mod region;
pub mod schedule;
pub mod seeded;
pub mod soak;
pub mod tcp;
pub mod webhook;
pub mod workload;

use std::future::Future;
use std::time::{Duration, Instant};

pub use process::{binary, serial, Daemon, SerialGuard};
pub use region::{Region, RegionOptions, WorkerSpec, KEEP_LOGS_ENV, POLICY};

/// Pause between two evaluations of a [`wait_for`] condition (also the resolution of measured lags).
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `condition` every [`POLL`] until it is true (returns how long that took) or `timeout`
/// passes (an error naming `what`).
pub async fn wait_for<F, Fut>(
    what: &str,
    timeout: Duration,
    mut condition: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}
