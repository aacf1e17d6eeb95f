//! Resource sampling of a chaos run (the soak): every process of a [`Mesh`] sampled at an interval
//! while the workload and the faults run, and a check that nothing grows beyond a stated bound.
//!
//! What is sampled, per region ([`Probe::sample`]):
//! - each Ferry process (agent, workers): resident memory and open file descriptors from
//!   `/proc/<pid>`, live async tasks from its own `/metrics` (`ferry_runtime_alive_tasks`);
//! - each Redis/Valkey (and Sentinel) process: resident memory and descriptors from `/proc`, and
//!   the server's own `used_memory` (`INFO memory`);
//! - each registry: resident memory and descriptors.
//!
//! Processes are found by their command lines (`--config <the mesh's config>`, the registries'
//! config paths, the Redis addresses), so a process restarted by a fault is found again under the
//! same series; several processes of one series (a worker and its replacement) count as their
//! maximum.
//!
//! # The growth check ([`Samples::growth`])
//! The run is cut in quarters. The first quarter is warm-up (connection pools, the blob ledger,
//! the execution history filling up to its retention); the **baseline** of a series is its
//! maximum over the second quarter, its **end** the maximum over the last quarter. A series
//! grew beyond its bound when `end > baseline × 1.25 + slack`, the slack being 16 MiB of memory,
//! 32 descriptors or 64 tasks ([`Kind::slack`]). A leak of one object per job or per fault shows
//! over an hour; the noise of a busy moment does not.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::mesh::Mesh;

/// What a series measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Resident memory, MiB.
    RssMib,
    /// Open file descriptors.
    Fds,
    /// Live async tasks of a Ferry process.
    Tasks,
    /// Redis/Valkey `used_memory`, MiB.
    RedisMib,
}

impl Kind {
    fn unit(self) -> &'static str {
        match self {
            Kind::RssMib => "RSS MiB",
            Kind::Fds => "fds",
            Kind::Tasks => "tasks",
            Kind::RedisMib => "used_memory MiB",
        }
    }

    /// The absolute part of the growth bound.
    pub fn slack(self) -> f64 {
        match self {
            Kind::RssMib | Kind::RedisMib => 16.0,
            Kind::Fds => 32.0,
            Kind::Tasks => 64.0,
        }
    }
}

/// A series: a process role (`agent a`, `registry b`, …) and what is measured of it.
pub type Series = (String, Kind);

/// One sample of every series found, `at` from the start of sampling.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub at: Duration,
    pub values: BTreeMap<Series, f64>,
}

impl Sample {
    fn put(&mut self, series: Series, value: f64) {
        let v = self.values.entry(series).or_insert(value);
        *v = v.max(value);
    }
}

/// Where the mesh's processes are: built once from a started mesh ([`Probe::of`]).
#[derive(Clone, Debug)]
pub struct Probe {
    /// The mesh's Ferry config: every agent and worker of the mesh runs with `--config` it.
    config: PathBuf,
    /// Registry config path → region.
    registries: BTreeMap<PathBuf, String>,
    /// Redis/Valkey/Sentinel `IP:PORT` → role (`redis a`, `sentinel b`, …).
    redis: BTreeMap<String, String>,
    http: reqwest::Client,
}

impl Probe {
    pub fn of(mesh: &Mesh) -> anyhow::Result<Probe> {
        let mut registries = BTreeMap::new();
        let mut redis = BTreeMap::new();
        for (name, r) in &mesh.regions {
            if let Some(dir) = r.registry.data_dir().parent() {
                registries.insert(dir.join("config.yml"), name.clone());
            }
            redis.insert(r.redis.host(), format!("redis {name}"));
            if let Some(replica) = &r.replica {
                redis.insert(replica.host(), format!("redis {name} (replica at start)"));
            }
            if let Some(sentinel) = &r.sentinel {
                redis.insert(sentinel.host(), format!("sentinel {name}"));
            }
        }
        Ok(Probe {
            config: mesh.config_path().to_path_buf(),
            registries,
            redis,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()?,
        })
    }

    /// One sample of every process of the mesh alive now (a process between a kill and its
    /// restart is simply absent).
    pub async fn sample(&self, at: Duration) -> Sample {
        let mut sample = Sample {
            at,
            ..Sample::default()
        };
        for (pid, args) in processes() {
            let Some(role) = self.role(&args) else {
                continue;
            };
            if let Some(rss) = rss_mib(pid) {
                sample.put((role.clone(), Kind::RssMib), rss);
            }
            if let Some(fds) = open_fds(pid) {
                sample.put((role.clone(), Kind::Fds), fds as f64);
            }
            if let Some(listen) = flag(&args, "--listen") {
                if args[0].contains("ferry") {
                    if let Some(tasks) = self.tasks(listen).await {
                        sample.put((role.clone(), Kind::Tasks), tasks);
                    }
                }
            }
        }
        for (addr, role) in &self.redis {
            if role.starts_with("sentinel") {
                continue;
            }
            if let Ok(info) = crate::mesh::redis_command(addr, &["INFO", "memory"]).await {
                if let Some(bytes) = info_field(&info, "used_memory") {
                    sample.put((role.clone(), Kind::RedisMib), bytes / MIB);
                }
            }
        }
        sample
    }

    /// The series name of a process of this mesh, from its command line; `None` for others.
    fn role(&self, args: &[String]) -> Option<String> {
        let program = args.first()?;
        if program.ends_with("ferry-agent") || program.ends_with("/ferry") {
            if flag(args, "--config").map(PathBuf::from) != Some(self.config.clone()) {
                return None;
            }
            let region = flag(args, "--region")?;
            let what = if program.ends_with("ferry-agent") {
                "agent"
            } else {
                args.get(1).map(String::as_str).unwrap_or("ferry")
            };
            return Some(format!("{what} {region}"));
        }
        if program.ends_with("docker-registry") {
            let config = PathBuf::from(args.get(2)?);
            return self
                .registries
                .get(&config)
                .map(|region| format!("registry {region}"));
        }
        if program.starts_with("redis-server") || program.starts_with("valkey-server") {
            // The process title: `redis-server IP:PORT [sentinel]`.
            let addr = program
                .split_whitespace()
                .nth(1)
                .or(args.get(1).map(String::as_str))?;
            return self.redis.get(addr).cloned();
        }
        None
    }

    /// `ferry_runtime_alive_tasks` of the Ferry process serving `/metrics` on `listen`.
    async fn tasks(&self, listen: &str) -> Option<f64> {
        let text = crate::metrics::scrape(&self.http, &format!("http://{listen}/metrics")).await?;
        crate::metrics::sum(&text, "ferry_runtime_alive_tasks", &[])
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Every process's pid and command line (`/proc/<pid>/cmdline`, NUL-separated; a process title
/// set by the program itself arrives as one argument).
fn processes() -> Vec<(u32, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (!args.is_empty()).then_some((pid, args))
        })
        .collect()
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// A numeric field of an `INFO` answer (`name:value` lines).
fn info_field(info: &str, name: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().parse().ok())
}

/// Samples taken over a run.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    pub samples: Vec<Sample>,
}

/// How one series moved between the baseline and the end of a run (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Growth {
    pub series: Series,
    pub baseline: f64,
    pub end: f64,
    pub max: f64,
    /// `baseline × 1.25 + slack`.
    pub bound: f64,
}

impl Growth {
    pub fn within_bound(&self) -> bool {
        self.end <= self.bound
    }
}

impl Samples {
    /// Samples `probe` every `interval` until `stop` resolves.
    pub async fn collect(
        probe: &Probe,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Samples {
        let started = Instant::now();
        let mut samples = Samples::default();
        let mut stop = std::pin::pin!(stop);
        loop {
            samples.samples.push(probe.sample(started.elapsed()).await);
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
        samples
    }

    /// Every series' baseline (second-quarter maximum), end (last-quarter maximum) and bound;
    /// empty with fewer than 8 samples.
    pub fn growth(&self) -> Vec<Growth> {
        let Some(last) = self.samples.last() else {
            return Vec::new();
        };
        if self.samples.len() < 8 {
            return Vec::new();
        }
        let span = last.at.as_secs_f64().max(f64::EPSILON);
        let quarter = |s: &Sample| ((s.at.as_secs_f64() / span) * 4.0).floor().min(3.0) as usize;
        let mut by_series: BTreeMap<&Series, [Option<f64>; 5]> = BTreeMap::new();
        for s in &self.samples {
            let q = quarter(s);
            for (series, v) in &s.values {
                let slots = by_series.entry(series).or_insert([None; 5]);
                for i in [q, 4] {
                    slots[i] = Some(slots[i].map_or(*v, |m: f64| m.max(*v)));
                }
            }
        }
        by_series
            .into_iter()
            .filter_map(|(series, slots)| {
                let (baseline, end, max) = (slots[1]?, slots[3]?, slots[4]?);
                Some(Growth {
                    series: series.clone(),
                    baseline,
                    end,
                    max,
                    bound: baseline * 1.25 + series.1.slack(),
                })
            })
            .collect()
    }

    /// The growth of every series as a Markdown table.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| process | measure | baseline (2nd quarter max) | end (last quarter max) | max | bound | within |\n|---|---|---|---|---|---|---|\n",
        );
        for g in self.growth() {
            out.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n",
                g.series.0,
                g.series.1.unit(),
                g.baseline,
                g.end,
                g.max,
                g.bound,
                if g.within_bound() { "yes" } else { "**no**" }
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: &[f64]) -> Samples {
        Samples {
            samples: values
                .iter()
                .enumerate()
                .map(|(i, v)| Sample {
                    at: Duration::from_secs(i as u64 * 10),
                    values: [(("worker a".to_string(), Kind::RssMib), *v)].into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_flat_series_after_warm_up_is_within_its_bound() {
        let s = samples(&[
            5.0, 12.0, 20.0, 20.5, 20.1, 20.8, 20.2, 20.6, 20.4, 20.9, 20.3, 20.7,
        ]);
        let g = &s.growth()[0];
        assert_eq!((g.baseline, g.end, g.max), (20.8, 20.9, 20.9));
        assert!(g.within_bound(), "{g:?}");
    }

    #[test]
    fn a_series_that_keeps_growing_exceeds_its_bound() {
        let s = samples(&(0..40).map(|i| 20.0 + i as f64 * 2.0).collect::<Vec<_>>());
        let g = &s.growth()[0];
        assert!(!g.within_bound(), "{g:?}");
        assert!(s.table().contains("**no**"));
    }

    #[test]
    fn too_few_samples_give_no_verdict() {
        assert!(samples(&[1.0, 2.0, 3.0]).growth().is_empty());
    }

    #[test]
    fn a_process_is_known_by_its_command_line() {
        let probe = Probe {
            config: PathBuf::from("/tmp/m/ferry.json"),
            registries: [(PathBuf::from("/tmp/r1/config.yml"), "b".to_string())].into(),
            redis: [("10.0.0.2:6379".to_string(), "redis c".to_string())].into(),
            http: reqwest::Client::new(),
        };
        let args = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            probe.role(&args(
                "/x/ferry worker --config /tmp/m/ferry.json --region a"
            )),
            Some("worker a".into())
        );
        assert_eq!(
            probe.role(&args(
                "/x/ferry-agent --config /tmp/m/ferry.json --region b"
            )),
            Some("agent b".into())
        );
        assert_eq!(
            probe.role(&args(
                "/x/ferry worker --config /tmp/other/ferry.json --region a"
            )),
            None,
            "another test's process"
        );
        assert_eq!(
            probe.role(&args("docker-registry serve /tmp/r1/config.yml")),
            Some("registry b".into())
        );
        assert_eq!(
            probe.role(&["redis-server 10.0.0.2:6379".to_string()]),
            Some("redis c".into())
        );
        assert_eq!(probe.role(&args("sshd -D")), None);
    }

    #[test]
    fn info_fields_are_read_by_name() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n";
        assert_eq!(info_field(info, "used_memory"), Some(1048576.0));
        assert_eq!(info_field(info, "used_memory_rss"), None);
    }
}
