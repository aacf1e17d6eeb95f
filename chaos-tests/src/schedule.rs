//! The seeded fault schedule of the chaos oracle, and the executor that injects and heals it over a
//! [`Mesh`] while the workload runs.
//!
//! [`schedule`] turns a seed into timed [`Fault`]s: every kind in [`REQUIRED`] at least once (in a
//! seeded order, on seeded regions), then seeded extras while the run lasts. Faults run one after
//! the other, each held for a seeded time and then healed; [`Chaos::run`] records when each was
//! injected and healed, so the oracle can measure convergence from the last heal.
//!
//! # Faults and why each is safe to check exactly
//! - [`Fault::KillWorker`]: `kill -9` of one of the region's workers, a new one started after the
//!   hold (its running job is reclaimed when its lease expires).
//! - [`Fault::KillAgent`]: `kill -9` of the region's agent, restarted after the hold; meanwhile the
//!   registry re-sends the notifications it could not deliver and peers keep events in their
//!   outboxes.
//! - [`Fault::Partition`]: every link *into* the named regions blackholed at their fault proxies
//!   (one region: one-way, its peers cannot reach it but it reaches them; two regions: both ways
//!   between them).
//! - [`Fault::Latency`]: added latency on every link into a region.
//! - [`Fault::RestartRegistry`]: the workload pauses until the registries hold everything
//!   acknowledged so far (a lost notification of a delete or of a bidirectional tag move is never
//!   repaired: the safety net neither deletes nor decides conflicts), a **canary** image is pushed
//!   under a new tag, and the registry is `kill -9`ed at once and restarted after the hold —
//!   distribution loses its in-memory notification queue, so the canary's event may be lost and
//!   the safety net must copy it. The workload resumes while the registry is down (its pushes
//!   retry until it is back).
//! - [`Fault::RestartRedis`]: the same pause, then `kill -9` of the region's Redis and, after the
//!   hold, a restart from its AOF (`appendfsync everysec` may lose the last second: jobs re-run,
//!   safety-net rounds repeat). The workload resumes as soon as Redis is down: notifications and
//!   forwarded events wait in the registry and the peers' outboxes.
//! - [`Fault::FailOverQueue`]: in a region whose queue runs under a Sentinel
//!   ([`crate::mesh::MeshOptions::sentinel`]), `kill -9` of the queue's primary **under load, with
//!   no pause**: the Sentinel promotes the replica, the region's processes follow it, and the old
//!   primary comes back from its AOF as the new replica after the hold. Every job and forwarded
//!   event was acknowledged only once the replica had it (`--redis-wait-replicas 1`), so nothing
//!   acknowledged may be lost. (A plain Redis restart applies to the other regions.)
//! - [`Fault::RegistryErrors`]: a burst of 429s (with `Retry-After: 1`), 500s or connection resets
//!   from a region's registry, as Ferry's processes see it through the registry's fault proxy
//!   ([`crate::mesh::MeshOptions::registry_proxies`]); the workload's pushes and the oracle's reads
//!   go to the registry directly. Requests retry inside the client, jobs retry with backoff (8
//!   attempts over about 2 minutes, longer than any hold), so nothing may be dead-lettered.
//! - [`Fault::DiskFull`]: a region's registry disk (a tmpfs,
//!   [`crate::mesh::MeshOptions::registry_tmpfs`]) filled to the last byte, then freed: the
//!   registry answers writes with 500s (`no space left on device`), copies into it retry, the
//!   workload's pushes to it retry. Freeing it first removes what writes that hit the full disk
//!   left damaged for good — empty `link` files, manifests cut short — as an operator must
//!   (distribution answers 500 for them until then, and skopeo retries forever;
//!   [`ferry_testkit::Registry::free_disk`]).
//!
//! - [`Fault::Bandwidth`]: the link of a region capped at 2–20 Mbit/s each way with `tc tbf` on its
//!   veth (this kernel has no netem): copies, forwarded events and the workload's pushes slow
//!   down, nothing may fail for good.
//! - [`Fault::BrokenImage`], the one **permanent** fault: while the region's registry answers 503
//!   to Ferry, an image is pushed to a one-way source and its only layer deleted behind the
//!   manifest (`DELETE /v2/<repo>/blobs/<digest>`, as a garbage collection racing a push does).
//!   Its copy fails for good: the oracle expects it on no replica and a dead letter naming it.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_testkit::Link;

use crate::mesh::Mesh;
use crate::oracle::Oracle;
use crate::seeded::Rng;
use crate::workload::Runner;
use crate::Daemon;

/// One fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    KillWorker { region: String },
    KillAgent { region: String },
    Partition { into: Vec<String> },
    Latency { region: String, millis: u64 },
    RestartRegistry { region: String },
    RestartRedis { region: String },
    RegistryErrors { region: String, answer: Link },
    DiskFull { region: String },
    FailOverQueue { region: String },
    Bandwidth { region: String, kbit: u64 },
    BrokenImage { region: String },
}

/// The kinds every schedule holds at least once (when its [`Topology`] allows them).
pub const REQUIRED: [&str; 11] = [
    "kill_worker",
    "kill_agent",
    "partition",
    "latency",
    "bandwidth",
    "restart_registry",
    "restart_redis",
    "registry_errors",
    "disk_full",
    "queue_failover",
    "broken_image",
];

/// Where faults can go.
#[derive(Clone, Copy, Debug)]
pub struct Topology<'a> {
    pub regions: &'a [String],
    /// Regions whose queue runs under a Sentinel: queue failovers go there, plain Redis restarts
    /// to the others.
    pub sentinel: &'a [String],
    /// Regions whose images flow one way only: a broken image pushed there is dead-lettered where
    /// it is copied, and nowhere decides a conflict about it.
    pub one_way_sources: &'a [String],
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::KillWorker { .. } => "kill_worker",
            Fault::KillAgent { .. } => "kill_agent",
            Fault::Partition { .. } => "partition",
            Fault::Latency { .. } => "latency",
            Fault::RestartRegistry { .. } => "restart_registry",
            Fault::RestartRedis { .. } => "restart_redis",
            Fault::RegistryErrors { .. } => "registry_errors",
            Fault::DiskFull { .. } => "disk_full",
            Fault::FailOverQueue { .. } => "queue_failover",
            Fault::Bandwidth { .. } => "bandwidth",
            Fault::BrokenImage { .. } => "broken_image",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::KillWorker { region } => write!(f, "kill -9 a worker of {region}"),
            Fault::KillAgent { region } => write!(f, "kill -9 agent {region}"),
            Fault::Partition { into } if into.len() == 1 => {
                write!(f, "partition: links into {} cut (one-way)", into[0])
            }
            Fault::Partition { into } => {
                write!(
                    f,
                    "partition: links into {} cut (both ways)",
                    into.join(" and ")
                )
            }
            Fault::Latency { region, millis } => {
                write!(f, "+{millis} ms on links into {region}")
            }
            Fault::RestartRegistry { region } => write!(f, "kill -9 + restart registry {region}"),
            Fault::RestartRedis { region } => write!(f, "kill -9 + restart Redis of {region}"),
            Fault::RegistryErrors { region, answer } => match answer {
                Link::Answer(status) => write!(f, "registry {region} answers {status} to Ferry"),
                _ => write!(f, "registry {region} resets Ferry's connections"),
            },
            Fault::DiskFull { region } => write!(f, "registry {region}'s disk full"),
            Fault::FailOverQueue { region } => {
                write!(
                    f,
                    "kill -9 of {region}'s queue primary; Sentinel fails over"
                )
            }
            Fault::Bandwidth { region, kbit } => {
                write!(f, "link of {region} capped at {kbit} kbit/s (tc tbf)")
            }
            Fault::BrokenImage { region } => {
                write!(f, "an image in {region} loses its layer (permanent)")
            }
        }
    }
}

/// A fault, when it starts (from the start of the run) and how long it is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub at: Duration,
    pub hold: Duration,
    pub fault: Fault,
}

/// Turns `seed` into a fault schedule over `topology` spread over `duration`: every
/// [`REQUIRED`] kind the topology allows once in a seeded order, then one extra fault per further
/// `every` of the run.
pub fn schedule(
    seed: u64,
    topology: Topology<'_>,
    duration: Duration,
    every: Duration,
) -> Vec<Planned> {
    let Topology {
        regions,
        sentinel,
        one_way_sources,
    } = topology;
    let mut rng = Rng::new(seed).fork(0xFA017);
    let standalone: Vec<String> = regions
        .iter()
        .filter(|r| !sentinel.contains(r))
        .cloned()
        .collect();
    let possible = |kind: &&str| match *kind {
        "queue_failover" => !sentinel.is_empty(),
        "restart_redis" => !standalone.is_empty(),
        "broken_image" => !one_way_sources.is_empty(),
        _ => true,
    };
    let mut kinds: Vec<&str> = REQUIRED.iter().copied().filter(possible).collect();
    rng.shuffle(&mut kinds);
    let extra = (duration.as_secs() / every.as_secs().max(1)).saturating_sub(kinds.len() as u64);
    // Extras repeat the transient kinds; one broken image per run is enough to check the dead
    // letters (each one stays behind as a dead letter for good).
    let all: Vec<&str> = REQUIRED
        .into_iter()
        .filter(|k| *k != "broken_image")
        .filter(possible)
        .collect();
    for _ in 0..extra {
        kinds.push(*rng.pick(&all));
    }
    let slot = duration / kinds.len().max(1) as u32;
    kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            let region = match *kind {
                "queue_failover" => rng.pick(sentinel).clone(),
                "restart_redis" => rng.pick(&standalone).clone(),
                "broken_image" => rng.pick(one_way_sources).clone(),
                _ => rng.pick(regions).clone(),
            };
            let fault = match *kind {
                "kill_worker" => Fault::KillWorker { region },
                "kill_agent" => Fault::KillAgent { region },
                "partition" => {
                    let mut into = vec![region];
                    if regions.len() > 1 && rng.chance(50) {
                        let other = loop {
                            let o = rng.pick(regions);
                            if *o != into[0] {
                                break o.clone();
                            }
                        };
                        into.push(other);
                    }
                    Fault::Partition { into }
                }
                "latency" => Fault::Latency {
                    region,
                    millis: rng.between(50, 400),
                },
                "restart_registry" => Fault::RestartRegistry { region },
                "disk_full" => Fault::DiskFull { region },
                "queue_failover" => Fault::FailOverQueue { region },
                "bandwidth" => Fault::Bandwidth {
                    region,
                    kbit: rng.between(2_000, 20_000),
                },
                "broken_image" => Fault::BrokenImage { region },
                "registry_errors" => Fault::RegistryErrors {
                    region,
                    answer: *rng.pick(&[Link::Answer(429), Link::Answer(500), Link::Reset]),
                },
                _ => Fault::RestartRedis { region },
            };
            // Leave room to heal inside the slot.
            let hold =
                Duration::from_millis(rng.between(2000, (slot.as_millis() as u64 / 2).max(2000)));
            let jitter = Duration::from_millis(rng.below((slot.as_millis() as u64 / 4).max(1)));
            Planned {
                at: slot * i as u32 + jitter,
                hold,
                fault,
            }
        })
        .collect()
}

/// The region whose agent and workers run with a skewed wall clock for the whole run, and by how
/// many seconds (2–10 minutes, either way): conflict decisions of bidirectional policies must still
/// agree on both sides ([`crate::mesh::MeshOptions::clock_skew`]).
pub fn clock_skew(seed: u64, regions: &[String]) -> (String, i64) {
    let mut rng = Rng::new(seed).fork(0xC10C);
    let region = rng.pick(regions).clone();
    let seconds = rng.between(120, 600) as i64;
    (region, if rng.chance(50) { seconds } else { -seconds })
}

/// A fault as it happened.
#[derive(Clone, Debug)]
pub struct Injected {
    pub fault: Fault,
    pub injected: Instant,
    pub healed: Instant,
}

/// Injects a schedule into a mesh. Owns the mesh's workers (a killed one is replaced).
pub struct Chaos<'a> {
    pub mesh: &'a mut Mesh,
    pub workers: BTreeMap<String, Vec<Daemon>>,
    pub runner: Runner,
    pub oracle: Oracle,
    /// Per region, the repository the canary of a registry restart goes to (one a policy covers).
    pub canary_repo: BTreeMap<String, String>,
    /// Per region of [`Topology::one_way_sources`], the repository a broken image goes to (one a
    /// one-way policy covers).
    pub broken_repo: BTreeMap<String, String>,
    pub seed: u64,
    /// How long a gate may wait for deletes to be applied.
    pub gate_timeout: Duration,
}

impl Chaos<'_> {
    /// Runs the schedule (each fault at its time, or after the previous one healed).
    pub async fn run(
        &mut self,
        plan: &[Planned],
        started: Instant,
    ) -> anyhow::Result<Vec<Injected>> {
        let mut done = Vec::new();
        for (i, p) in plan.iter().enumerate() {
            tokio::time::sleep_until((started + p.at).into()).await;
            let injected = Instant::now();
            eprintln!(
                "chaos: +{:.1}s fault #{i}: {} (held {:.1}s)",
                started.elapsed().as_secs_f64(),
                p.fault,
                p.hold.as_secs_f64()
            );
            self.inject(i, p)
                .await
                .with_context(|| format!("fault #{i}: {}", p.fault))?;
            let healed = Instant::now();
            eprintln!(
                "chaos: +{:.1}s fault #{i} healed",
                started.elapsed().as_secs_f64()
            );
            done.push(Injected {
                fault: p.fault.clone(),
                injected,
                healed,
            });
        }
        Ok(done)
    }

    async fn inject(&mut self, index: usize, p: &Planned) -> anyhow::Result<()> {
        match &p.fault {
            Fault::KillWorker { region } => {
                let workers = self
                    .workers
                    .get_mut(region)
                    .with_context(|| format!("region {region} has no workers"))?;
                anyhow::ensure!(!workers.is_empty(), "region {region} has no workers");
                let mut victim = workers.remove(0);
                self.mesh.kill_worker(&mut victim).await?;
                tokio::time::sleep(p.hold).await;
                let fresh = self.mesh.start_worker(region).await?;
                self.workers.entry(region.clone()).or_default().push(fresh);
            }
            Fault::KillAgent { region } => {
                self.mesh.restart_agent(region, p.hold).await?;
            }
            Fault::Partition { into } => {
                for r in into {
                    self.mesh.region(r).proxy.set_link(Link::Blackhole);
                }
                tokio::time::sleep(p.hold).await;
                for r in into {
                    self.mesh.region(r).proxy.set_link(Link::Up);
                }
            }
            Fault::RegistryErrors { region, answer } => {
                let proxy = self.registry_proxy(region)?;
                proxy.set_link(*answer);
                tokio::time::sleep(p.hold).await;
                proxy.set_link(Link::Up);
            }
            Fault::FailOverQueue { region } => {
                self.mesh.fail_over_queue(region, p.hold).await?;
            }
            Fault::DiskFull { region } => {
                let registry = &self.mesh.region(region).registry;
                registry.fill_disk()?;
                tokio::time::sleep(p.hold).await;
                for path in registry.free_disk().await? {
                    eprintln!(
                        "chaos: registry {region}'s full disk damaged {}: removed",
                        path.display()
                    );
                }
            }
            Fault::Bandwidth { region, kbit } => {
                let r = self.mesh.region(region);
                r.set_bandwidth(Some(*kbit))?;
                tokio::time::sleep(p.hold).await;
                r.set_bandwidth(None)?;
            }
            Fault::BrokenImage { region } => {
                let repo = self
                    .broken_repo
                    .get(region)
                    .with_context(|| format!("no repository for a broken image in {region}"))?;
                let proxy = self.registry_proxy(region)?;
                // Ferry must not read the image before its layer is gone: its processes get 503s
                // (retried) until then.
                proxy.set_link(Link::Answer(503));
                let tag = format!("broken-{index}");
                let pushed = self
                    .runner
                    .push_broken(region, repo, &tag, self.seed ^ ((index as u64) << 8))
                    .await;
                tokio::time::sleep(p.hold).await;
                proxy.set_link(Link::Up);
                let digest = pushed?;
                eprintln!("chaos: {repo}:{tag} = {digest} pushed to {region}, its layer deleted");
            }
            Fault::Latency { region, millis } => {
                let proxy = &self.mesh.region(region).proxy;
                proxy.set_latency(Duration::from_millis(*millis));
                tokio::time::sleep(p.hold).await;
                proxy.set_latency(Duration::ZERO);
            }
            Fault::RestartRegistry { region } => {
                let paused = self.gate().await?;
                let repo = self
                    .canary_repo
                    .get(region)
                    .with_context(|| format!("no canary repository for region {region}"))?;
                let canary = self
                    .runner
                    .push_extra(
                        region,
                        repo,
                        &format!("canary-{index}"),
                        self.seed ^ index as u64,
                    )
                    .await?;
                eprintln!("chaos: canary {repo}:canary-{index} = {canary} pushed to {region}");
                let registry = &mut self
                    .mesh
                    .regions
                    .get_mut(region)
                    .context("no such region")?
                    .registry;
                registry.kill().await;
                // Writes resume against a dead registry: the workload retries until it is back.
                drop(paused);
                tokio::time::sleep(p.hold).await;
                registry.restart().await?;
            }
            Fault::RestartRedis { region } => {
                let paused = self.gate().await?;
                let redis = &mut self
                    .mesh
                    .regions
                    .get_mut(region)
                    .context("no such region")?
                    .redis;
                redis.kill().await;
                drop(paused);
                tokio::time::sleep(p.hold).await;
                redis.restart().await?;
            }
        }
        Ok(())
    }

    /// The fault proxy in front of `region`'s registry, through which Ferry's processes reach it.
    fn registry_proxy(&self, region: &str) -> anyhow::Result<&ferry_testkit::FaultProxy> {
        self.mesh
            .region(region)
            .registry_proxy
            .as_ref()
            .context("the mesh was started without registry proxies")
    }

    /// Pauses every region's workload and waits until the registries hold everything
    /// acknowledged so far ([`Oracle::state_findings`] finds nothing): a fault that loses
    /// notifications or queued work then puts at risk only what it injects itself.
    async fn gate(&self) -> anyhow::Result<crate::workload::Paused> {
        let paused = self.runner.gates.pause_all().await;
        let acked = self.runner.acked();
        let last = std::sync::Mutex::new(String::new());
        let waited = crate::wait_for(
            "the registries to hold everything acknowledged before a fault that can lose work",
            self.gate_timeout,
            || async {
                let left = match self.oracle.state_findings(&acked).await {
                    Ok(f) if f.is_empty() => return true,
                    Ok(f) => f.to_string(),
                    Err(e) => format!("{e:#}"),
                };
                let mut last = last
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *last != left {
                    eprintln!("chaos: waiting for the registries to settle:\n{left}");
                    *last = left;
                }
                false
            },
        )
        .await
        .with_context(|| {
            format!(
                "still:\n{}",
                last.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            )
        })?;
        eprintln!("chaos: registries settled after {waited:?}; injecting");
        Ok(paused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Vec<String> {
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    }

    fn names(of: &[&str]) -> Vec<String> {
        of.iter().map(|s| s.to_string()).collect()
    }

    /// Three regions, `b` under a Sentinel, `a` a one-way source.
    fn plan(seed: u64, duration: Duration) -> Vec<Planned> {
        let (regions, sentinel, one_way) = (regions(), names(&["b"]), names(&["a"]));
        let topology = Topology {
            regions: &regions,
            sentinel: &sentinel,
            one_way_sources: &one_way,
        };
        schedule(seed, topology, duration, Duration::from_secs(12))
    }

    #[test]
    fn a_schedule_holds_every_required_kind_in_order_and_within_the_run() {
        let d = Duration::from_secs(60);
        let s = plan(5, d);
        for kind in REQUIRED {
            assert!(
                s.iter().any(|p| p.fault.kind() == kind),
                "{kind} missing: {s:?}"
            );
        }
        for w in s.windows(2) {
            assert!(
                w[0].at + w[0].hold <= w[1].at + Duration::from_secs(2),
                "{s:?}"
            );
        }
        assert!(s.iter().all(|p| p.at < d));
        assert_eq!(s, plan(5, d));
    }

    #[test]
    fn the_clock_skew_is_minutes_either_way_in_one_seeded_region() {
        let skews: Vec<(String, i64)> = (0..40).map(|seed| clock_skew(seed, &regions())).collect();
        assert!(skews
            .iter()
            .all(|(r, s)| regions().contains(r) && (120..=600).contains(&s.abs())));
        assert!(skews.iter().any(|(_, s)| *s > 0) && skews.iter().any(|(_, s)| *s < 0));
        assert_eq!(clock_skew(7, &regions()), clock_skew(7, &regions()));
    }

    #[test]
    fn a_longer_run_gets_extra_faults_on_the_regions_each_kind_needs() {
        let s = plan(5, Duration::from_secs(600));
        assert_eq!(s.len(), 50);
        for p in &s {
            match &p.fault {
                Fault::FailOverQueue { region } => assert_eq!(region, "b"),
                Fault::RestartRedis { region } => assert_ne!(region, "b"),
                Fault::BrokenImage { region } => assert_eq!(region, "a"),
                Fault::Bandwidth { kbit, .. } => assert!((2_000..=20_000).contains(kbit)),
                _ => {}
            }
        }
        assert_eq!(
            s.iter()
                .filter(|p| p.fault.kind() == "broken_image")
                .count(),
            1,
            "one permanent fault per run"
        );
    }

    #[test]
    fn a_topology_without_one_way_sources_gets_no_broken_image() {
        let (regions, sentinel) = (regions(), names(&["b"]));
        let s = schedule(
            9,
            Topology {
                regions: &regions,
                sentinel: &sentinel,
                one_way_sources: &[],
            },
            Duration::from_secs(300),
            Duration::from_secs(12),
        );
        assert!(s.iter().all(|p| p.fault.kind() != "broken_image"));
        assert_eq!(s.len(), 25);
    }
}
