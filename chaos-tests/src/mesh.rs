//! Several regions of Ferry, each with its own Redis, registry, `ferry-agent` and workers, that
//! coordinate only over gRPC (`ferry.v1.Events/Forward`) — through a [`FaultProxy`] in front of
//! every region's Forward endpoint, so a test can cut or blackhole the link to a region.
//!
//! Region `x` has registry `x` (notifying `x`'s agent), Redis, agent (`--region x`, Forward on a
//! free port behind the proxy), and workers started on demand with `--region x`. Optionally a
//! `hub` registry without webhooks, polled every second by one region's agent. All processes read
//! one config file (the regions, the registries with their region, and the test's policies).
//!
//! Agents run with `--reconcile-interval 0`: these tests check the event path, and the safety
//! net would hide a lost event.
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
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
}

/// One region of a [`Mesh`]. Fields drop in order: processes first, the namespace last.
pub struct MeshRegion {
    pub name: String,
    pub agent: Daemon,
    pub registry: Registry,
    pub redis: RedisServer,
    /// In front of this region's Forward endpoint; other regions reach it only through here.
    pub proxy: FaultProxy,
    /// Where the region's processes run: its own network namespace and address when the machine
    /// allows it, else this machine's loopback.
    pub host: Host,
    _netns: Option<Netns>,
}

/// Running regions. Fields drop in order: regions (agents first), hub, temp dir, serial lock.
pub struct Mesh {
    pub regions: BTreeMap<String, MeshRegion>,
    pub hub: Option<Registry>,
    _hub_netns: Option<Netns>,
    dir: TempDir,
    config: PathBuf,
    workers: std::sync::atomic::AtomicUsize,
    /// The throwaway CA and peer certificates, when the mesh runs Forward over mTLS.
    certs: Option<ferry_testkit::Certificates>,
    _serial: SerialGuard,
}

/// A port picked now and held until the process that uses it starts (on `host`'s address; a
/// namespace's ports are all free, so only loopback ports need holding).
fn hold_port(host: &Host) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").context("picking a port")?;
    let port = l.local_addr()?.port();
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
    redis: RedisServer,
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
            let redis = RedisServer::start_on(&host, &redis_binary, true)
                .await
                .with_context(|| format!("starting region {name}'s Redis"))?;
            let registry = Registry::start_with(RegistryOptions {
                notifications_url: Some(format!(
                    "http://{}/v1/events/distribution?registry={name}",
                    agent.1
                )),
                notifications_token: Some(TOKEN.to_string()),
                log_level,
                tls: false,
                host: host.clone(),
                ..RegistryOptions::default()
            })
            .await
            .with_context(|| format!("starting region {name}'s registry"))?;
            planned.push(Planned {
                name,
                netns,
                host,
                agent,
                forward,
                proxy,
                redis,
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
                json!({"name": p.name, "url": p.registry.url(), "insecure": true, "region": p.name})
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
                redis,
                registry,
            } = p;
            let mut args: Vec<String> = [
                "--config",
                path_str(&config)?,
                "--redis",
                &redis.url(),
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
                "0",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
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
            let agent = Daemon::start_on(
                &host,
                &format!("agent-{name}"),
                &agent_bin,
                &args,
                &dir.path().join(format!("agent-{name}.log")),
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
                    proxy,
                    host,
                    _netns: netns,
                },
            );
        }
        Ok(Mesh {
            regions,
            hub,
            _hub_netns: hub_netns,
            dir,
            config,
            workers: std::sync::atomic::AtomicUsize::new(0),
            certs,
            _serial: serial,
        })
    }

    pub fn region(&self, name: &str) -> &MeshRegion {
        &self.regions[name]
    }

    /// Starts a `ferry worker --region <region>` on that region's Redis.
    pub async fn start_worker(&self, region: &str) -> anyhow::Result<Daemon> {
        let r = self.region(region);
        let n = self
            .workers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let name = format!("worker-{region}-{n}");
        let ferry = binary("ferry")?;
        let mut last = None;
        for _ in 0..3 {
            let listen = hold_port(&r.host)?.1;
            let args: Vec<String> = [
                "worker",
                "--config",
                path_str(&self.config)?,
                "--redis",
                &r.redis.url(),
                "--listen",
                &listen.to_string(),
                "--region",
                region,
                "--consumer",
                &name,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let log = self.dir.path().join(format!("{name}.log"));
            match Daemon::start_on(&r.host, &name, &ferry, &args, &log, listen).await {
                Ok(d) => return Ok(d),
                Err(StartError::AddrInUse(e)) => last = Some(e),
                Err(StartError::Fatal(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no start attempt")))
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

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics(40));
        }
    }
}

fn path_str(path: &std::path::Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
