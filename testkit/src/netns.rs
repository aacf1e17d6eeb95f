//! Test hosts with their own network addresses: Linux network namespaces joined to this machine
//! by veth pairs, so that each region of a multi-region test runs on its own addresses and what
//! crosses "the network" really crosses an interface.
//!
//! [`Netns::create`] makes namespace `name` with interface `lo` up and a veth pair: the root end
//! gets `10.233.<index>.1/24`, the namespace end `10.233.<index>.2/24` with a default route to the
//! root end; IPv4 forwarding is turned on so namespaces reach each other through the root (where
//! the fault proxies listen). Dropping a [`Netns`] deletes the namespace (and with it the pair).
//! [`Host`] says where a child process runs: [`Host::loopback`], or inside a namespace at its
//! address ([`Netns::host`]).
//!
//! Needs root and `ip` (Debian's iproute2); [`Netns::available`] tells whether this machine can.
use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context as _;
use tokio::process::Command;

/// Where a child process runs and which address it serves on.
#[derive(Clone, Debug)]
pub struct Host {
    /// The network namespace, or `None` for this machine's own.
    pub netns: Option<String>,
    /// The address servers bind and clients use.
    pub ip: IpAddr,
}

impl Default for Host {
    fn default() -> Self {
        Host::loopback()
    }
}

impl Host {
    /// This machine, `127.0.0.1`.
    pub fn loopback() -> Host {
        Host {
            netns: None,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// A port free on this host, held by the returned listener until it is dropped: bound to
    /// `ip:0` by the host's own network stack. A port free on this machine's loopback says
    /// nothing about a namespace, whose ports are its own: picked there, it may be one a server
    /// in the namespace already listens on, and a readiness probe of the new server would be
    /// answered by the old one. In a namespace the bind runs on a thread of its own that joins
    /// the namespace first (`setns`; the listener stays in it). Racy like any port pick once
    /// dropped: starts retry on "address already in use".
    pub fn hold_port(&self) -> anyhow::Result<(std::net::TcpListener, u16)> {
        let listener = self.bind(0)?;
        let port = listener
            .local_addr()
            .context("reading the picked port")?
            .port();
        Ok((listener, port))
    }

    /// A listener on `ip:port` in this host's network stack (port 0: any free one).
    pub fn bind(&self, port: u16) -> anyhow::Result<std::net::TcpListener> {
        let addr = std::net::SocketAddr::from((self.ip, port));
        match &self.netns {
            None => std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}")),
            Some(ns) => {
                let ns = ns.clone();
                std::thread::spawn(move || bind_in_netns(&ns, addr))
                    .join()
                    .map_err(|_| anyhow::anyhow!("the thread binding in a namespace panicked"))?
            }
        }
    }

    /// A port free on this host ([`Host::hold_port`], released at once: the caller's server binds
    /// it next, and retries on "address already in use").
    pub fn free_port(&self) -> anyhow::Result<u16> {
        self.hold_port().map(|(_, port)| port)
    }

    /// A command running `program` on this host (`ip netns exec <ns> program` in a namespace;
    /// `ip` execs the program, so the child's pid and signals are the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.arg("netns").arg("exec").arg(ns).arg(program);
                cmd
            }
        }
    }
}

/// Binds `addr` from inside namespace `ns` (`/run/netns/<ns>`, where `ip netns add` puts it).
/// Joins the namespace with `setns`, which moves only the calling thread: call it on a thread that
/// ends afterwards.
fn bind_in_netns(ns: &str, addr: std::net::SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
    use std::os::fd::AsFd as _;
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
        .with_context(|| format!("joining network namespace {ns} (setns; needs root)"))?;
    std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr} in namespace {ns}"))
}

/// A network namespace joined to this machine by a veth pair; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    root_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
    /// The veth's ends: in the root namespace and in this one.
    root_if: String,
    ns_if: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (Debian package iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Runs `tc ARGS` (in namespace `netns` when given) and returns its stdout.
fn tc_output(netns: Option<&str>, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, "tc"]);
            c
        }
        None => std::process::Command::new("tc"),
    };
    let out = cmd
        .args(args)
        .output()
        .context("running `tc` (Debian package iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "tc {}{}: {}",
        args.join(" "),
        netns
            .map(|n| format!(" (in namespace {n})"))
            .unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tc(netns: Option<&str>, args: &[&str]) -> anyhow::Result<()> {
    tc_output(netns, args).map(drop)
}

/// Turns IPv4 forwarding on (namespaces reach each other through this machine); fine when it is
/// already on, even if it cannot be written.
fn enable_forwarding() -> anyhow::Result<()> {
    const KNOB: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(KNOB).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(KNOB, "1").context("enabling IPv4 forwarding between namespaces")
}

impl Netns {
    /// Whether namespaces can be made and joined here (root, `ip` present, IPv4 forwarding on or
    /// allowed): probes with a throwaway namespace.
    pub fn available() -> bool {
        let probe = format!("ferry-probe-{}", std::process::id());
        let ok = ip(&["netns", "add", &probe]).is_ok();
        if ok {
            let _ = ip(&["netns", "del", &probe]);
        }
        ok && enable_forwarding().is_ok()
    }

    /// Creates namespace `name` with the subnet `10.233.<index>.0/24` (index 1..=250), replacing a
    /// leftover of the same name.
    pub fn create(name: &str, index: u8) -> anyhow::Result<Netns> {
        anyhow::ensure!(
            (1..=250).contains(&index),
            "netns index {index} is not in 1..=250"
        );
        let _ = ip(&["netns", "del", name]);
        let root_if = format!("fr{index}r");
        let ns_if = format!("fr{index}n");
        let _ = ip(&["link", "del", &root_if]);
        let root_ip = Ipv4Addr::new(10, 233, index, 1);
        let ns_ip = Ipv4Addr::new(10, 233, index, 2);
        ip(&["netns", "add", name])?;
        let netns = Netns {
            name: name.to_string(),
            root_ip,
            ns_ip,
            root_if: root_if.clone(),
            ns_if: ns_if.clone(),
        };
        let root_cidr = format!("{root_ip}/24");
        let ns_cidr = format!("{ns_ip}/24");
        let root_gw = root_ip.to_string();
        ip(&["netns", "exec", name, "ip", "link", "set", "lo", "up"])?;
        ip(&[
            "link", "add", &root_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", name])?;
        ip(&["addr", "add", &root_cidr, "dev", &root_if])?;
        ip(&["link", "set", &root_if, "up"])?;
        ip(&[
            "netns", "exec", name, "ip", "addr", "add", &ns_cidr, "dev", &ns_if,
        ])?;
        ip(&["netns", "exec", name, "ip", "link", "set", &ns_if, "up"])?;
        ip(&[
            "netns", "exec", name, "ip", "route", "add", "default", "via", &root_gw,
        ])?;
        enable_forwarding()?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Caps the link between this machine and the namespace at `kbit` kbit/s each way: a `tc
    /// tbf` qdisc on both ends of the veth (this kernel has no netem, but token buckets work),
    /// queueing at most 500 ms before dropping. Replaces an earlier cap.
    pub fn limit_bandwidth(&self, kbit: u64) -> anyhow::Result<()> {
        anyhow::ensure!(kbit > 0, "a bandwidth cap of 0 kbit/s is a partition");
        let rate = format!("{kbit}kbit");
        // The bucket must hold at least one tick's worth of tokens and a full-size packet.
        let burst = format!("{}", (kbit * 1000 / 8 / 100).max(16 * 1024));
        let tbf = [
            "root", "tbf", "rate", &rate, "burst", &burst, "latency", "500ms",
        ];
        let root: Vec<&str> = ["qdisc", "replace", "dev", &self.root_if]
            .into_iter()
            .chain(tbf)
            .collect();
        tc(None, &root)?;
        let inside: Vec<&str> = ["qdisc", "replace", "dev", &self.ns_if]
            .into_iter()
            .chain(tbf)
            .collect();
        tc(Some(&self.name), &inside)
    }

    /// Lifts [`Netns::limit_bandwidth`]'s cap (fine when there is none).
    pub fn clear_bandwidth(&self) -> anyhow::Result<()> {
        for (netns, dev) in [
            (None, &self.root_if),
            (Some(self.name.as_str()), &self.ns_if),
        ] {
            let shown = tc_output(netns, &["qdisc", "show", "dev", dev])?;
            if shown.contains("tbf") {
                tc(netns, &["qdisc", "del", "dev", dev, "root"])?;
            }
        }
        Ok(())
    }

    /// The root end's address: where this machine (and a fault proxy for this host) listens.
    pub fn root_ip(&self) -> IpAddr {
        IpAddr::V4(self.root_ip)
    }

    /// Processes inside the namespace, serving on its address.
    pub fn host(&self) -> Host {
        Host {
            netns: Some(self.name.clone()),
            ip: IpAddr::V4(self.ns_ip),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
