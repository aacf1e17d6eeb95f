//! A Redis/Valkey Sentinel process watching one primary, so that tests can kill the primary and
//! watch a replica take over (`redis-server --sentinel`, or `valkey-server --sentinel`).
//!
//! The sentinel runs where its primary runs (this machine's loopback, or a network namespace's
//! address), with a quorum of 1 and short timeouts (down after 1 s, failover timeout 3 s):
//! a failover takes a few seconds. Its config file lives in its own temporary directory (Sentinel
//! rewrites it); its log is `sentinel.log` there.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tempfile::TempDir;

use crate::process::{self, Managed};
use crate::registry::RedisServer;

/// A running sentinel.
pub struct Sentinel {
    child: Managed,
    /// The address it binds and names the primary by (its primary's host).
    ip: std::net::IpAddr,
    port: u16,
    master: String,
    dir: TempDir,
}

impl Sentinel {
    /// Starts a sentinel (with `primary`'s binary) monitoring `primary` as `master`, and waits
    /// until it answers.
    pub async fn start(primary: &RedisServer, master: &str) -> anyhow::Result<Sentinel> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-sentinel-")
            .tempdir()
            .context("creating the sentinel temp dir")?;
        let host = primary.runs_on();
        let port = host.free_port()?;
        let ip = host.ip;
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind {ip}\ndir {dir}\n\
                 sentinel monitor {master} {ip} {primary} 1\n\
                 sentinel down-after-milliseconds {master} 1000\n\
                 sentinel failover-timeout {master} 3000\n",
                dir = dir.path().display(),
                primary = primary.port(),
            ),
        )?;
        let log = dir.path().join("sentinel.log");
        let what = format!("{} --sentinel on {ip}:{port}", primary.binary());
        let mut cmd = primary.runs_on().command(primary.binary());
        cmd.arg(&conf).arg("--sentinel").current_dir(dir.path());
        let child = process::spawn_logged(&mut cmd, &what, &log)?;
        let sentinel = Sentinel {
            child: Managed::new(child),
            ip,
            port,
            master: master.to_string(),
            dir,
        };
        sentinel
            .wait_until("it answers", Duration::from_secs(20), |s| async move {
                s.query::<String>(&["PING"]).await.is_ok()
            })
            .await?;
        Ok(sentinel)
    }

    /// `IP:PORT` it serves on.
    pub fn host(&self) -> String {
        std::net::SocketAddr::from((self.ip, self.port)).to_string()
    }

    /// `redis+sentinel://IP:PORT/MASTER`: what Ferry's `--redis` takes.
    pub fn url(&self) -> String {
        format!("redis+sentinel://{}:{}/{}", self.ip, self.port, self.master)
    }

    /// The port the primary has now, as this sentinel says.
    pub async fn primary_port(&self) -> anyhow::Result<u16> {
        let answer: Vec<String> = self
            .query(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.master])
            .await?;
        answer
            .get(1)
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("sentinel answered {answer:?}"))
    }

    /// Waits until the sentinel counts `replica` as a healthy replica of the primary (a failover
    /// before that finds no replica to promote).
    pub async fn wait_for_replica(&self, replica: &RedisServer) -> anyhow::Result<()> {
        let port = replica.port().to_string();
        self.wait_until(
            "it counts the replica as healthy",
            Duration::from_secs(30),
            |s| {
                let port = port.clone();
                async move {
                    let Ok(replicas) = s
                        .query::<Vec<Vec<String>>>(&["SENTINEL", "REPLICAS", &s.master])
                        .await
                    else {
                        return false;
                    };
                    replicas.iter().any(|fields| {
                        let field = |name: &str| {
                            fields
                                .chunks(2)
                                .find(|kv| kv[0] == name)
                                .and_then(|kv| kv.get(1))
                                .map(String::as_str)
                        };
                        field("port") == Some(port.as_str())
                            && field("flags") == Some("slave")
                            && field("master-link-status") == Some("ok")
                    })
                }
            },
        )
        .await
    }

    /// The last `lines` lines of the sentinel's log.
    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.log_path(), lines)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("sentinel.log")
    }

    async fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> anyhow::Result<T> {
        let client = redis::Client::open(format!("redis://{}:{}", self.ip, self.port))?;
        let mut con = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await??;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        Ok(tokio::time::timeout(Duration::from_secs(2), cmd.query_async(&mut con)).await??)
    }

    async fn wait_until<'a, F, Fut>(
        &'a self,
        what: &str,
        timeout: Duration,
        mut probe: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut(&'a Sentinel) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        while !probe(self).await {
            if started.elapsed() > timeout {
                anyhow::bail!(
                    "the sentinel on port {} did not show that {what} within {timeout:?}; log tail:\n{}",
                    self.port,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Kills the sentinel.
    pub async fn stop(mut self) {
        self.child.kill().await;
    }
}
