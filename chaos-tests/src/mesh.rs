//! Several regions of Ferry, each with its own Redis, registry, `ferry-agent` and workers, that
//! coordinate only over gRPC (`ferry.v1.Events/Forward`) — through a [`FaultProxy`] in front of
//! every region's Forward endpoint, so a test can cut or blackhole the link to a region.
//!
//! Region `x` has registry `x` (notifying `x`'s agent), Redis, agent (`--region x`, Forward on a
//! free port behind the proxy), and workers started on demand with `--region x`. Optionally a
//! `hub` registry without webhooks, polled every second by one region's agent. All processes read
//! one config file (the regions, the registries with their region, and the test's policies).
//! The namespaces have machine-wide names and subnets, so a mesh holds a machine-wide lock while
//! they exist: meshes of different checkouts take turns.
//!
//! Agents run with `--reconcile-interval 0` unless [`MeshOptions::reconcile_interval`] says
//! otherwise: these tests check the event path, and the safety net would hide a lost event (the
//! chaos oracle turns it on, since its registry restarts lose notifications by design). Workers
//! also serve the admin API (the mesh token), so a test can read its region's queue
//! ([`Mesh::queue_stats`]). [`Mesh::restart_agent`] and [`Mesh::kill_worker`] are the `kill -9`s
//! of the chaos oracle's fault schedule.
//!
//! # Quiescence
//! An absence ("nothing echoed back", "no flip-flop") is checked only once nothing more can
//! happen without a new push: [`Mesh::wait_quiescent`] waits until every notification a registry
//! logged was handled by its agent, every outbox is empty and every queue has nothing waiting or
//! running, with no counter of work moving while it looked. The outboxes are read in each
//! region's Redis ([`Mesh::outbox_len`]): the agents' `ferry_forward_outbox_depth` gauge is set
//! only when a forwarding round starts, so it can miss an event appended since.
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_testkit::sentinel::Sentinel;
use ferry_testkit::{FaultProxy, Host, Netns, RedisServer, Registry, RegistryOptions};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::process::{binary, serial, Daemon, SerialGuard, StartError};

/// How a [`Mesh`] is set up.
#[derive(Clone, Debug, Default)]
pub struct MeshOptions {
    /// Region names; each gets a registry of the same name.
    pub regions: Vec<&'static str>,
    /// The policies of the config.
    pub policies: Vec<Value>,
    /// Start a `hub` registry without webhooks, polled by this region's agent.
    pub hub_polled_by: Option<&'static str>,
    /// `log.level` of the regions' registries (`info` logs every request, to count writes).
    pub registry_log_level: &'static str,
    /// Forward over mTLS (every agent presents one two-way certificate of a test CA).
    pub tls: bool,
    /// The agents' `--reconcile-interval` in seconds: 0 (the default) turns the safety net off,
    /// so a lost event is not hidden; the oracle turns it on, since a registry restart loses
    /// notifications by design and the safety net must repair what they announced.
    pub reconcile_interval: u64,
    /// Extra flags of every worker (e.g. `--lease-seconds 10`, so a job of a killed worker is
    /// reclaimed sooner).
    pub worker_args: Vec<String>,
    /// Ferry's processes reach each region's registry through a [`FaultProxy`]
    /// ([`MeshRegion::registry_proxy`]), so a test can make the registry answer 429 or 500 or
    /// reset connections; the test's own pushes and reads go to the registry directly.
    pub registry_proxies: bool,
    /// `(region, seconds)`: that region's agent and workers run with their wall clock off by
    /// `seconds` (either way), through libfaketime (Debian package `faketime`); registries,
    /// Redis and the other regions keep the true time.
    pub clock_skew: Option<(String, i64)>,
    /// Each region's registry stores on a tmpfs of this many bytes (needs root), so a test can
    /// fill its disk (`Registry::fill_disk`).
    pub registry_tmpfs: Option<u64>,
    /// Each region's queue is a Redis primary with a replica (both with AOF) and a Sentinel; the
    /// region's processes follow the primary the Sentinel names (`redis+sentinel://`) and wait for
    /// the replica to confirm every job and forwarded event (`--redis-wait-replicas 1`), so a
    /// `kill -9` of the primary loses nothing acknowledged ([`Mesh::fail_over_queue`]). For the
    /// regions named here; the others' queue is one Redis with AOF.
    pub sentinel: Vec<&'static str>,
    /// Regions whose queue server is `valkey-server` (Debian bookworm-backports) rather than
    /// `redis-server` (or `FERRY_REDIS_SERVER`): the same protocol, a different server.
    pub valkey: Vec<&'static str>,
}

/// Where Debian's `faketime` package puts the multithreaded preload library.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The environment that runs a process with its wall clock `seconds` off (monotonic clocks, which
/// timers and timeouts use, stay true).
fn skewed_clock(seconds: i64) -> anyhow::Result<Vec<(String, String)>> {
    anyhow::ensure!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's `faketime` package (deploy/local/setup.sh does)"
    );
    Ok(vec![
        ("LD_PRELOAD".into(), LIBFAKETIME.into()),
        ("FAKETIME".into(), format!("{seconds:+}s")),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        // Read FAKETIME once: the offset never changes during a run.
        ("FAKETIME_NO_CACHE".into(), "0".into()),
    ])
}

/// Where a mesh worker answers: `/metrics` and the admin API.
#[derive(Clone, Debug)]
struct WorkerEndpoints {
    region: String,
    listen: SocketAddr,
    admin: SocketAddr,
}

/// One region of a [`Mesh`]. Fields drop in order: processes first, the namespace last.
pub struct MeshRegion {
    pub name: String,
    pub agent: Daemon,
    pub registry: Registry,
    /// The queue's primary (after a failover: the promoted replica).
    pub redis: RedisServer,
    /// With [`MeshOptions::sentinel`]: the primary's replica and the Sentinel watching them.
    pub replica: Option<RedisServer>,
    pub sentinel: Option<Sentinel>,
    /// In front of this region's Forward endpoint; other regions reach it only through here.
    pub proxy: FaultProxy,
    /// In front of this region's registry for Ferry's processes, with
    /// [`MeshOptions::registry_proxies`].
    pub registry_proxy: Option<FaultProxy>,
    /// The environment of this region's agent and workers (a skewed clock,
    /// [`MeshOptions::clock_skew`]).
    pub env: Vec<(String, String)>,
    /// Where the region's processes run: its own network namespace and address when the machine
    /// allows it, else this machine's loopback.
    pub host: Host,
    /// How the agent was started, for [`Mesh::restart_agent`].
    agent_start: AgentStart,
    netns: Option<Netns>,
}

impl MeshRegion {
    /// Caps the link between this machine and the region at `kbit` kbit/s each way (`tc tbf` on
    /// its veth, [`Netns::limit_bandwidth`]): every byte into and out of the region — Ferry's
    /// copies, forwarded events, the workload's pushes — shares it. `kbit` `None` lifts the cap.
    /// An error when the region runs on this machine's loopback.
    pub fn set_bandwidth(&self, kbit: Option<u64>) -> anyhow::Result<()> {
        let netns = self.netns.as_ref().with_context(|| {
            format!(
                "region {} runs without a network namespace: no link to cap",
                self.name
            )
        })?;
        match kbit {
            Some(k) => netns.limit_bandwidth(k),
            None => netns.clear_bandwidth(),
        }
    }
}

/// The flags, log and address of a region's agent.
struct AgentStart {
    args: Vec<String>,
    log: PathBuf,
    addr: SocketAddr,
}

/// Running regions. Fields drop in order: regions (agents first), hub, temp dir, serial lock.
pub struct Mesh {
    pub regions: BTreeMap<String, MeshRegion>,
    pub hub: Option<Registry>,
    _hub_netns: Option<Netns>,
    /// Held while this mesh's namespaces exist (see [`lock_namespaces`]); released after them.
    _netns_lock: Option<std::fs::File>,
    dir: TempDir,
    config: PathBuf,
    /// `log.level` of the regions' registries ([`Mesh::wait_quiescent`] reads their access logs).
    registry_log_level: &'static str,
    workers: std::sync::atomic::AtomicUsize,
    /// Every worker alive, for [`Mesh::queue_stats`] and [`Mesh::wait_quiescent`].
    worker_endpoints: Mutex<Vec<WorkerEndpoints>>,
    /// [`MeshOptions::worker_args`].
    worker_args: Vec<String>,
    /// The throwaway CA and peer certificates, when the mesh runs Forward over mTLS.
    certs: Option<ferry_testkit::Certificates>,
    _serial: SerialGuard,
}

/// A port picked now by `host`'s own network stack ([`Host::hold_port`]) and held until the
/// process that uses it starts.
fn hold_port(host: &Host) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let (l, port) = host.hold_port()?;
    Ok((l, SocketAddr::from((host.ip, port))))
}

/// The shared token of webhooks, forwarding and everything else in a mesh.
pub const TOKEN: &str = "chaos-mesh-token";

/// A region's own network namespace (index `i` picks its subnet), or `None` on loopback.
fn region_netns(name: &str, index: u8, use_netns: bool) -> anyhow::Result<Option<Netns>> {
    if !use_netns {
        return Ok(None);
    }
    Netns::create(&format!("ferry-mesh-{name}"), index)
        .map(Some)
        .with_context(|| format!("creating region {name}'s network namespace"))
}

/// What is started for a region before its agent (whose flags name all of it).
struct Planned {
    name: &'static str,
    netns: Option<Netns>,
    host: Host,
    agent: (TcpListener, SocketAddr),
    forward: (TcpListener, SocketAddr),
    proxy: FaultProxy,
    registry_proxy: Option<FaultProxy>,
    redis: RedisServer,
    replica: Option<RedisServer>,
    sentinel: Option<Sentinel>,
    registry: Registry,
}

impl Mesh {
    /// Calls `Events/Forward` (an empty batch, no token) on `region`'s Forward endpoint over TLS
    /// that trusts the mesh CA, presenting the peer certificate when `with_certificate`. The
    /// gRPC status the endpoint answered; `Err` when the connection or the call failed below gRPC
    /// (as when a TLS server requiring a client certificate refuses the handshake).
    pub async fn forward_call(
        &self,
        region: &str,
        with_certificate: bool,
    ) -> anyhow::Result<Result<tonic::Code, String>> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let certs = self
            .certs
            .as_ref()
            .context("the mesh was started without TLS")?;
        let addr = self.region(region).proxy.addr();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&certs.ca)?))
            .domain_name(addr.ip().to_string());
        if with_certificate {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(&certs.peer_cert)?,
                std::fs::read(&certs.peer_key)?,
            ));
        }
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect_timeout(std::time::Duration::from_secs(10));
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return Ok(Err(format!("connect: {e:?}"))),
        };
        let mut client = ferry_proto::v1::events_client::EventsClient::new(channel);
        Ok(
            match client
                .forward(ferry_proto::v1::ForwardRequest { events: vec![] })
                .await
            {
                Ok(_) => Ok(tonic::Code::Ok),
                // How tonic reports a connection the server tore down (no gRPC answer).
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled
                    ) =>
                {
                    Err(format!("{status:?}"))
                }
                Err(status) => Ok(status.code()),
            },
        )
    }

    /// Starts the regions — each in its own network namespace (`10.233.<i>.2`, reached through
    /// the machine at `10.233.<i>.1`, where its fault proxy listens) when this machine allows
    /// namespaces (root and iproute2), else on loopback with a note on stderr.
    pub async fn start(opts: MeshOptions) -> anyhow::Result<Mesh> {
        let serial = serial().await?;
        let agent_bin = binary("ferry-agent")?;
        binary("ferry")?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-mesh-")
            .tempdir()
            .context("creating the mesh's temp dir")?;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n"))?;
        let certs = if opts.tls {
            Some(ferry_testkit::make_certificates(dir.path())?)
        } else {
            None
        };
        let scheme = if opts.tls { "https" } else { "http" };
        let log_level = if opts.registry_log_level.is_empty() {
            "error"
        } else {
            opts.registry_log_level
        };
        let use_netns = Netns::available();
        if !use_netns {
            eprintln!("mesh: network namespaces are not available here (root and iproute2 needed); the regions share loopback");
        }
        let netns_lock = if use_netns {
            Some(lock_namespaces().await?)
        } else {
            None
        };
        let redis_binary =
            std::env::var("FERRY_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string());

        // Addresses first: registries name their agent, the config names the proxies.
        let mut planned = Vec::new();
        for (i, name) in opts.regions.iter().enumerate() {
            let netns = region_netns(name, i as u8 + 1, use_netns)?;
            let host = netns.as_ref().map_or_else(Host::loopback, Netns::host);
            let proxy_ip = netns
                .as_ref()
                .map_or(std::net::Ipv4Addr::LOCALHOST.into(), Netns::root_ip);
            let agent = hold_port(&host)?;
            let forward = hold_port(&host)?;
            let proxy = FaultProxy::start_on(proxy_ip, forward.1).await?;
            let binary = match opts.valkey.contains(name) {
                true => "valkey-server",
                false => redis_binary.as_str(),
            };
            let redis = RedisServer::start_on(&host, binary, true)
                .await
                .with_context(|| format!("starting region {name}'s queue server {binary}"))?;
            let (replica, sentinel) = if opts.sentinel.contains(name) {
                let replica = RedisServer::start_replica(&redis)
                    .await
                    .with_context(|| format!("starting region {name}'s Redis replica"))?;
                let sentinel = Sentinel::start(&redis, &format!("ferry-{name}"))
                    .await
                    .with_context(|| format!("starting region {name}'s Sentinel"))?;
                sentinel.wait_for_replica(&replica).await?;
                (Some(replica), Some(sentinel))
            } else {
                (None, None)
            };
            let registry = Registry::start_with(RegistryOptions {
                notifications_url: Some(format!(
                    "http://{}/v1/events/distribution?registry={name}",
                    agent.1
                )),
                notifications_token: Some(TOKEN.to_string()),
                log_level,
                tls: false,
                host: host.clone(),
                storage_tmpfs: opts.registry_tmpfs,
                ..RegistryOptions::default()
            })
            .await
            .with_context(|| format!("starting region {name}'s registry"))?;
            let registry_proxy = if opts.registry_proxies {
                Some(FaultProxy::start_on(proxy_ip, registry.addr()).await?)
            } else {
                None
            };
            planned.push(Planned {
                name,
                netns,
                host,
                agent,
                forward,
                proxy,
                registry_proxy,
                redis,
                replica,
                sentinel,
                registry,
            });
        }
        let hub_netns = match opts.hub_polled_by {
            Some(_) => region_netns("hub", 9, use_netns)?,
            None => None,
        };
        let hub = match opts.hub_polled_by {
            Some(_) => Some(
                Registry::start_with(RegistryOptions {
                    log_level,
                    host: hub_netns.as_ref().map_or_else(Host::loopback, Netns::host),
                    ..RegistryOptions::default()
                })
                .await
                .context("starting the hub registry")?,
            ),
            None => None,
        };

        let mut registries: Vec<Value> = planned
            .iter()
            .map(|p| {
                let url = p.registry_proxy.as_ref().map_or_else(
                    || p.registry.url(),
                    |proxy| format!("http://{}", proxy.addr()),
                );
                json!({"name": p.name, "url": url, "insecure": true, "region": p.name})
            })
            .collect();
        if let (Some(hub), Some(region)) = (&hub, opts.hub_polled_by) {
            registries.push(json!({
                "name": "hub", "url": hub.url(), "insecure": true, "region": region,
                "poll_interval_seconds": 1
            }));
        }
        let regions: Vec<Value> = planned
            .iter()
            .map(|p| json!({"name": p.name, "forward_url": format!("{scheme}://{}", p.proxy.addr())}))
            .collect();
        let config = dir.path().join("ferry.json");
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&json!({
                "regions": regions,
                "registries": registries,
                "policies": opts.policies,
            }))?,
        )?;

        let mut regions = BTreeMap::new();
        for p in planned {
            let Planned {
                name,
                netns,
                host,
                agent: (agent_hold, agent_addr),
                forward: (forward_hold, forward_addr),
                proxy,
                registry_proxy,
                redis,
                replica,
                sentinel,
                registry,
            } = p;
            let queue_url = queue_url(&redis, sentinel.as_ref());
            let mut args: Vec<String> = [
                "--config",
                path_str(&config)?,
                "--redis",
                &queue_url,
                "--listen",
                &agent_addr.to_string(),
                "--webhook-token-file",
                path_str(&token_file)?,
                "--forward-token-file",
                path_str(&token_file)?,
                "--region",
                name,
                "--forward-listen",
                &forward_addr.to_string(),
                "--reconcile-interval",
                &opts.reconcile_interval.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if sentinel.is_some() {
                args.extend(["--redis-wait-replicas".to_string(), "1".to_string()]);
            }
            if let Some(c) = &certs {
                for (flag, path) in [
                    ("--forward-tls-cert", &c.peer_cert),
                    ("--forward-tls-key", &c.peer_key),
                    ("--forward-ca", &c.ca),
                ] {
                    args.push(flag.to_string());
                    args.push(path_str(path)?.to_string());
                }
            }
            drop((agent_hold, forward_hold));
            let agent_start = AgentStart {
                args,
                log: dir.path().join(format!("agent-{name}.log")),
                addr: agent_addr,
            };
            let env = match &opts.clock_skew {
                Some((region, seconds)) if region == name => skewed_clock(*seconds)?,
                _ => Vec::new(),
            };
            let agent = Daemon::start_on(
                &host,
                &format!("agent-{name}"),
                &agent_bin,
                &agent_start.args,
                &env,
                &agent_start.log,
                agent_addr,
            )
            .await
            .map_err(StartError::into_inner)?;
            regions.insert(
                name.to_string(),
                MeshRegion {
                    name: name.to_string(),
                    agent,
                    registry,
                    redis,
                    replica,
                    sentinel,
                    proxy,
                    registry_proxy,
                    env,
                    host,
                    agent_start,
                    netns,
                },
            );
        }
        Ok(Mesh {
            regions,
            hub,
            _hub_netns: hub_netns,
            _netns_lock: netns_lock,
            dir,
            config,
            registry_log_level: log_level,
            workers: std::sync::atomic::AtomicUsize::new(0),
            worker_endpoints: Mutex::new(Vec::new()),
            worker_args: opts.worker_args,
            certs,
            _serial: serial,
        })
    }

    pub fn region(&self, name: &str) -> &MeshRegion {
        &self.regions[name]
    }

    /// `kill -9` of `region`'s agent, `down` later the same agent again (same flags, address, log
    /// file; the log says where each start began). Ready once its `/healthz` answers.
    pub async fn restart_agent(&mut self, region: &str, down: Duration) -> anyhow::Result<()> {
        let r = self
            .regions
            .get_mut(region)
            .with_context(|| format!("no region {region} in the mesh"))?;
        r.agent.sigkill().await?;
        tokio::time::sleep(down).await;
        let agent_bin = binary("ferry-agent")?;
        let mut last = None;
        // The agent's port is free once it died, but another process may take it meanwhile.
        for _ in 0..3 {
            match Daemon::start_on(
                &r.host,
                &format!("agent-{region}"),
                &agent_bin,
                &r.agent_start.args,
                &r.env,
                &r.agent_start.log,
                r.agent_start.addr,
            )
            .await
            {
                Ok(d) => {
                    r.agent = d;
                    return Ok(());
                }
                Err(StartError::AddrInUse(e)) => last = Some(e),
                Err(StartError::Fatal(e)) => return Err(e),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no restart attempt")))
    }

    /// `kill -9` of `region`'s queue primary (with [`MeshOptions::sentinel`]): waits until the
    /// Sentinel promoted the replica, restarts the old primary from its AOF after `down` (the
    /// Sentinel makes it a replica of the new one), and swaps the two, so that
    /// [`MeshRegion::redis`] is the primary again.
    pub async fn fail_over_queue(&mut self, region: &str, down: Duration) -> anyhow::Result<()> {
        let r = self
            .regions
            .get_mut(region)
            .with_context(|| format!("no region {region}"))?;
        let (Some(sentinel), Some(replica)) = (&r.sentinel, &mut r.replica) else {
            anyhow::bail!("region {region}'s queue has no Sentinel (MeshOptions::sentinel)");
        };
        // A failover needs a replica in sync to promote.
        sentinel.wait_for_replica(replica).await?;
        r.redis.kill().await;
        let promoted = replica.port();
        let deadline = Instant::now() + Duration::from_secs(60);
        while sentinel.primary_port().await.ok() != Some(promoted) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the Sentinel of region {region} promoted no replica within 60 s:\n{}",
                sentinel.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(down).await;
        r.redis.restart().await?;
        std::mem::swap(&mut r.redis, replica);
        Ok(())
    }

    /// `kill -9` of a worker this mesh started; it is no longer asked for queue stats or counters.
    pub async fn kill_worker(&self, worker: &mut Daemon) -> anyhow::Result<()> {
        worker.sigkill().await?;
        self.worker_endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|w| w.listen != worker.listen());
        Ok(())
    }

    /// Starts a `ferry worker --region <region>` on that region's Redis, serving the admin API with
    /// the mesh token.
    pub async fn start_worker(&self, region: &str) -> anyhow::Result<Daemon> {
        let r = self.region(region);
        let n = self
            .workers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let name = format!("worker-{region}-{n}");
        let ferry = binary("ferry")?;
        let mut last = None;
        let token_file = self.dir.path().join("token");
        for _ in 0..3 {
            let (listen_hold, listen) = hold_port(&r.host)?;
            let (admin_hold, admin) = hold_port(&r.host)?;
            let args: Vec<String> = [
                "worker",
                "--config",
                path_str(&self.config)?,
                "--redis",
                &queue_url(&r.redis, r.sentinel.as_ref()),
                "--listen",
                &listen.to_string(),
                "--region",
                region,
                "--consumer",
                &name,
                "--admin-listen",
                &admin.to_string(),
                "--admin-token-file",
                path_str(&token_file)?,
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(self.worker_args.iter().cloned())
            .chain(
                r.sentinel
                    .iter()
                    .flat_map(|_| ["--redis-wait-replicas".to_string(), "1".to_string()]),
            )
            .collect();
            let log = self.dir.path().join(format!("{name}.log"));
            drop((listen_hold, admin_hold));
            match Daemon::start_on(&r.host, &name, &ferry, &args, &r.env, &log, listen).await {
                Ok(d) => {
                    self.worker_endpoints
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(WorkerEndpoints {
                            region: region.to_string(),
                            listen,
                            admin,
                        });
                    return Ok(d);
                }
                Err(StartError::AddrInUse(e)) => last = Some(e),
                Err(StartError::Fatal(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no start attempt")))
    }

    /// The queue of `region` as its first worker's admin API reports it (`GetQueueStats`: one read
    /// of the region's Redis, counting waiting, delayed and running jobs). `None` when the region
    /// runs no worker: then nothing can run its jobs, and its agent's `ferry_queue_depth` says
    /// what waits.
    pub async fn queue_stats(
        &self,
        region: &str,
    ) -> anyhow::Result<Option<ferry_proto::v1::QueueStats>> {
        let Some(mut ops) = self.operations(region).await? else {
            return Ok(None);
        };
        let stats = ops
            .get_queue_stats(authorized(ferry_proto::v1::GetQueueStatsRequest {})?)
            .await
            .with_context(|| format!("GetQueueStats of region {region}"))?
            .into_inner();
        Ok(Some(stats))
    }

    /// The dead letters of `region`'s queue (`ListDeadLetters`, up to `limit`, oldest first), as
    /// its first worker's admin API lists them; `None` when the region runs no worker.
    pub async fn dead_letters(
        &self,
        region: &str,
        limit: u32,
    ) -> anyhow::Result<Option<Vec<ferry_proto::v1::Job>>> {
        let Some(mut ops) = self.operations(region).await? else {
            return Ok(None);
        };
        let list = ops
            .list_dead_letters(authorized(ferry_proto::v1::ListDeadLettersRequest {
                limit,
            })?)
            .await
            .with_context(|| format!("ListDeadLetters of region {region}"))?
            .into_inner();
        Ok(Some(list.jobs))
    }

    /// A client of the `Operations` admin service of `region`'s first worker; `None` when the
    /// region runs no worker.
    async fn operations(
        &self,
        region: &str,
    ) -> anyhow::Result<
        Option<ferry_proto::v1::operations_client::OperationsClient<tonic::transport::Channel>>,
    > {
        let admin = self
            .worker_endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|w| w.region == region)
            .map(|w| w.admin);
        let Some(admin) = admin else {
            return Ok(None);
        };
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("connecting to region {region}'s admin API at {admin}"))?;
        Ok(Some(
            ferry_proto::v1::operations_client::OperationsClient::new(channel),
        ))
    }

    /// How many events `region`'s agent holds in its durable outbox for `peer`: the length of the
    /// stream `ferry:outbox:<peer>` in the region's Redis (the layout in `forward/outbox.rs`),
    /// asked over RESP. The stream outlives its last entry, so once `region` delivered anything
    /// to `peer` a missing key means the layout changed — an error, never a silent 0.
    pub async fn outbox_len(&self, region: &str, peer: &str) -> anyhow::Result<u64> {
        let r = self.region(region);
        let key = format!("ferry:outbox:{peer}");
        let addr = r.redis.host();
        match redis_command(&addr, &["TYPE", &key]).await?.as_str() {
            "stream" => {}
            "none" => {
                let delivered = r
                    .agent
                    .metric_if_present(
                        "ferry_forward_events_total",
                        &[("region", peer), ("outcome", "delivered")],
                    )
                    .await?
                    .unwrap_or(0.0);
                anyhow::ensure!(
                    delivered == 0.0,
                    "region {region} delivered {delivered} events to {peer}, yet its Redis has \
                     no {key}: the outbox layout changed"
                );
                return Ok(0);
            }
            other => anyhow::bail!("{key} in region {region}'s Redis is a {other}, not a stream"),
        }
        let len = redis_command(&addr, &["XLEN", &key]).await?;
        len.parse()
            .with_context(|| format!("XLEN {key} answered {len:?}"))
    }

    /// Waits until nothing more can happen in the mesh without a new push, so that an absence
    /// checked afterwards is not a race against a slow echo; returns how long that took.
    ///
    /// Quiescent means, in two consecutive looks with no counter of work moving during them:
    /// every manifest write (`PUT` or `DELETE`, 2xx) a region's registry logged has been handled
    /// by its agent (`ferry_events_total`, outcomes other than `ignored_blob`/`ignored_action`),
    /// every outbox is empty ([`Mesh::outbox_len`]), and every region's queue has nothing waiting,
    /// delayed or running ([`Mesh::queue_stats`]; the agent's `ferry_queue_depth` where no worker
    /// runs). The counters — writes in the access logs, notifications, forwarded and received
    /// events, tag-poller events, jobs finished by every worker — rule out work that moved from
    /// one place to another between two reads.
    ///
    /// Needs `registry_log_level: "info"` (the access logs) and every started worker alive. A
    /// notification the registry re-sent after a timeout is counted twice by its agent, which can
    /// only make the wait end one notification early; the tests' echo checks would then still
    /// see an echo of any other write.
    pub async fn wait_quiescent(&self, timeout: Duration) -> anyhow::Result<Duration> {
        anyhow::ensure!(
            self.registry_log_level == "info",
            "wait_quiescent reads the registries' access logs: start the mesh with \
             registry_log_level \"info\", not {:?}",
            self.registry_log_level
        );
        let started = Instant::now();
        let mut previous: Option<Vec<u64>> = None;
        let mut last_state = String::new();
        loop {
            match self.look().await {
                Ok(Look::Quiet(counters)) => {
                    if previous.as_ref() == Some(&counters) {
                        return Ok(started.elapsed());
                    }
                    previous = Some(counters);
                }
                Ok(Look::Busy(why)) => {
                    previous = None;
                    last_state = why;
                }
                Err(e) => {
                    previous = None;
                    last_state = format!("{e:#}");
                }
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "the mesh did not become quiescent within {timeout:?}: {last_state}"
            );
            tokio::time::sleep(crate::POLL).await;
        }
    }

    /// One look for [`Mesh::wait_quiescent`]: the counters before, the work in progress, the
    /// counters after.
    async fn look(&self) -> anyhow::Result<Look> {
        let before = self.work_counters().await?;
        for (name, r) in &self.regions {
            let writes = manifest_writes(&std::fs::read_to_string(r.registry.log_path())?);
            let metrics = r.agent.metrics().await?;
            let handled = handled_notifications(&metrics, name);
            if handled < writes {
                return Ok(Look::Busy(format!(
                    "agent {name} handled {handled} of the {writes} manifest writes registry \
                     {name} logged"
                )));
            }
            for peer in self.regions.keys().filter(|p| *p != name) {
                let held = self.outbox_len(name, peer).await?;
                if held > 0 {
                    return Ok(Look::Busy(format!(
                        "region {name} holds {held} events for {peer}"
                    )));
                }
            }
            match self.queue_stats(name).await? {
                Some(q) if q.depth > 0 || q.in_flight > 0 => {
                    return Ok(Look::Busy(format!(
                        "region {name}'s queue: {} waiting, {} running",
                        q.depth, q.in_flight
                    )));
                }
                Some(_) => {}
                None => {
                    let depth = crate::metrics::sum(&metrics, "ferry_queue_depth", &[])
                        .context("the agent exports no ferry_queue_depth")?;
                    if depth > 0.0 {
                        return Ok(Look::Busy(format!(
                            "region {name}'s queue: {depth} waiting"
                        )));
                    }
                }
            }
        }
        let after = self.work_counters().await?;
        if before == after {
            Ok(Look::Quiet(after))
        } else {
            Ok(Look::Busy("work moved while looking".to_string()))
        }
    }

    /// Counters that move whenever work moves (see [`Mesh::wait_quiescent`]).
    async fn work_counters(&self) -> anyhow::Result<Vec<u64>> {
        let mut out = Vec::new();
        for r in self.regions.values() {
            out.push(manifest_writes(&std::fs::read_to_string(
                r.registry.log_path(),
            )?));
            let metrics = r.agent.metrics().await?;
            for name in [
                "ferry_events_total",
                "ferry_forward_events_total",
                "ferry_forward_received_total",
                "ferry_poll_events_total",
            ] {
                out.push(crate::metrics::sum(&metrics, name, &[]).unwrap_or(0.0) as u64);
            }
        }
        let workers = self
            .worker_endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        for w in workers {
            let url = format!("http://{}/metrics", w.listen);
            let text = http
                .get(&url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .with_context(|| format!("GET {url} (a worker of region {})", w.region))?
                .text()
                .await?;
            out.push(crate::metrics::sum(&text, "ferry_jobs_total", &[]).unwrap_or(0.0) as u64);
        }
        Ok(out)
    }

    /// Waits until `repo:tag` on registry `host` resolves to `digest`.
    pub async fn wait_for_tag(
        &self,
        host: &str,
        repo: &str,
        tag: &str,
        digest: &str,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        crate::oci::wait_for_digest(host, repo, tag, digest, timeout).await
    }

    /// Every log of the mesh (agents, workers, registries, Redis), tails only.
    pub fn diagnostics(&self, lines: usize) -> String {
        let mut out = String::new();
        for r in self.regions.values() {
            out.push_str(&format!(
                "--- agent-{} ---\n{}\n--- registry {} ---\n{}\n",
                r.name,
                r.agent.log_tail(lines),
                r.name,
                r.registry.log_tail(lines)
            ));
        }
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("worker-") {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
                    out.push_str(&format!("--- {name} ---\n"));
                    for l in tail.into_iter().rev() {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }
}

impl Mesh {
    /// The Ferry config every process of the mesh runs with.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// Keeps every log of the mesh for inspection after it is dropped: the agents' and workers'
    /// logs stay in the mesh's directory, where each registry's access log is copied
    /// (`registry-<region>.log`; their data is not kept). Returns the directory. Called on a
    /// failure the test reports after the mesh is gone (the oracle's verdict), and on drop with
    /// [`crate::KEEP_LOGS_ENV`] set.
    pub fn keep_logs(&mut self) -> PathBuf {
        for r in self.regions.values() {
            let to = self.dir.path().join(format!("registry-{}.log", r.name));
            if let Err(e) = std::fs::copy(r.registry.log_path(), &to) {
                eprintln!("(could not keep registry {}'s log: {e})", r.name);
            }
        }
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            eprintln!("{}", self.diagnostics(40));
        }
        if failed || std::env::var_os(crate::KEEP_LOGS_ENV).is_some() {
            let dir = self.keep_logs();
            eprintln!("(mesh logs kept in {})", dir.display());
        }
    }
}

/// `message` with the admin token the mesh's processes accept.
fn authorized<T>(message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse()?);
    Ok(request)
}

/// Waits for the machine-wide lock of the mesh namespaces. Their names (`ferry-mesh-<region>`)
/// and subnets (`10.233.<i>.0/24`) are fixed, and creating one deletes any namespace of that name:
/// two meshes at once — from two checkouts, whose [`serial`] locks are separate — would cut each
/// other's regions off their own Redis (seen as minutes of "queue backend unavailable").
async fn lock_namespaces() -> anyhow::Result<std::fs::File> {
    let path = std::env::temp_dir().join("ferry-mesh-netns.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .context("the lock task panicked")?
        .with_context(|| format!("locking {}", path.display()))
}

fn path_str(path: &std::path::Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// The outcome of one look at the mesh.
enum Look {
    /// Nothing in progress; the work counters.
    Quiet(Vec<u64>),
    /// What is still going on.
    Busy(String),
}

/// Manifest `PUT`s and `DELETE`s a registry answered with 2xx, from its access log (one
/// combined-log-format line per request at `log.level: info`): each one queued a notification.
fn manifest_writes(log: &str) -> u64 {
    log.lines()
        .filter(|l| {
            // `… [date] "METHOD /path HTTP/1.1" STATUS SIZE "referer" "user agent"`
            let Some((request, rest)) = l.split_once(" \"").and_then(|(_, r)| r.split_once("\" "))
            else {
                return false;
            };
            let is_write = request.starts_with("PUT /v2/") || request.starts_with("DELETE /v2/");
            is_write && request.contains("/manifests/") && rest.starts_with('2')
        })
        .count() as u64
}

/// Notifications of manifest pushes and deletes on registry `registry` that its agent handled
/// (matched, unmatched or dropped as Ferry's own write or an index child) — every outcome but
/// blob and pull events and batches that failed (the registry re-sends those).
fn handled_notifications(metrics: &str, registry: &str) -> u64 {
    let mut n = 0.0;
    for kind in ["push", "delete"] {
        for outcome in [
            "matched",
            "unmatched",
            "ignored_own_write",
            "ignored_child_manifest",
        ] {
            n += crate::metrics::sum(
                metrics,
                "ferry_events_total",
                &[("registry", registry), ("kind", kind), ("outcome", outcome)],
            )
            .unwrap_or(0.0);
        }
    }
    n as u64
}

/// What a region's processes take as `--redis`: the Sentinel's URL when there is one.
fn queue_url(redis: &RedisServer, sentinel: Option<&Sentinel>) -> String {
    sentinel.map_or_else(|| redis.url(), Sentinel::url)
}

/// Sends one command to the Redis at `addr` (`IP:PORT`, no TLS, no password) and returns its
/// reply: a simple string, an integer or a bulk string (`INFO`). Enough for `TYPE`, `XLEN` and
/// `INFO`.
pub(crate) async fn redis_command(addr: &str, args: &[&str]) -> anyhow::Result<String> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    let talk = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut reader = tokio::io::BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let len = line
            .trim_end()
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(len) = len.filter(|n| *n <= 1 << 20) {
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).await?;
            return anyhow::Ok(format!("+{}", String::from_utf8_lossy(&body)));
        }
        anyhow::Ok(line)
    };
    let line = tokio::time::timeout(Duration::from_secs(10), talk)
        .await
        .with_context(|| format!("no answer from Redis at {addr} to {args:?}"))?
        .with_context(|| format!("asking Redis at {addr} {args:?}"))?;
    let line = line.trim_end();
    match line.split_at_checked(1) {
        Some(("+" | ":", value)) => Ok(value.to_string()),
        _ => anyhow::bail!("Redis at {addr} answered {args:?} with {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_writes_count_successful_manifest_puts_and_deletes_only() {
        let log = r#"10.0.0.1 - - [05/Dec/2025:00:03:12 +0000] "PUT /v2/app/x/manifests/v1 HTTP/1.1" 201 0 "" "skopeo/1.9"
10.0.0.1 - - [05/Dec/2025:00:03:12 +0000] "PUT /v2/app/x/blobs/uploads/u?digest=sha256%3Aab HTTP/1.1" 201 0 "" "ferry/0.1.0"
10.0.0.1 - - [05/Dec/2025:00:03:13 +0000] "HEAD /v2/app/x/manifests/v1 HTTP/1.1" 200 0 "" "ferry/0.1.0"
10.0.0.1 - - [05/Dec/2025:00:03:13 +0000] "PUT /v2/app/y/manifests/sha256:ab HTTP/1.1" 400 0 "" "ferry/0.1.0"
10.0.0.1 - - [05/Dec/2025:00:03:14 +0000] "DELETE /v2/app/x/manifests/sha256:ab HTTP/1.1" 202 0 "" "curl"
time="2025-12-05T00:03:14Z" level=info msg="response completed" http.request.method=PUT http.request.uri="/v2/app/x/manifests/v1"
"#;
        assert_eq!(manifest_writes(log), 2);
    }

    #[test]
    fn handled_notifications_leave_out_blob_and_pull_events_and_failed_batches() {
        let metrics = "ferry_events_total{registry=\"a\",kind=\"push\",outcome=\"matched\"} 2\n\
                       ferry_events_total{registry=\"a\",kind=\"push\",outcome=\"ignored_own_write\"} 1\n\
                       ferry_events_total{registry=\"a\",kind=\"delete\",outcome=\"unmatched\"} 1\n\
                       ferry_events_total{registry=\"a\",kind=\"push\",outcome=\"ignored_blob\"} 5\n\
                       ferry_events_total{registry=\"a\",kind=\"pull\",outcome=\"ignored_action\"} 3\n\
                       ferry_events_total{registry=\"a\",kind=\"push\",outcome=\"queue_unavailable\"} 4\n\
                       ferry_events_total{registry=\"b\",kind=\"push\",outcome=\"matched\"} 7\n";
        assert_eq!(handled_notifications(metrics, "a"), 4);
        assert_eq!(handled_notifications(metrics, "c"), 0);
    }
}
