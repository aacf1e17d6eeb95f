//! A userspace TCP fault proxy: what `tc netem` would do, on a kernel without netem.
//!
//! [`FaultProxy`] listens on a free loopback port and relays every connection to a target. Its
//! [`Link`] state applies to new *and* open connections at once:
//! - [`Link::Up`]: bytes flow (optionally after a fixed added latency per chunk).
//! - [`Link::Blackhole`]: nothing flows either way and nothing is refused, as when a route
//!   vanishes: open connections stall with their bytes held in the kernel's buffers, new ones are
//!   accepted and never answered. When the link comes back, stalled connections resume where they
//!   stopped (as TCP does after retransmits).
//! - [`Link::Reset`]: open connections are reset (`SO_LINGER 0`) and new ones are accepted and
//!   reset at once.
//! - [`Link::Answer`]: an HTTP server in trouble (a registry's 429 or 500 burst): open connections
//!   are reset, so clients reconnect, and each new connection's first request is read and answered
//!   with that status (an OCI error body; `Retry-After: 1` on a 429), then closed.
//!
//! Invariant: the proxy never alters, drops or reorders bytes of a connection it relays.
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The state of the proxied link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Up,
    Blackhole,
    Reset,
    /// Answer every new connection's first HTTP request with this status, then close it.
    Answer(u16),
}

/// A running proxy; stops (closing every connection) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    link: watch::Sender<Link>,
    latency: watch::Sender<Duration>,
    _tasks: JoinSet<()>,
}

impl FaultProxy {
    /// Relays `127.0.0.1:<free port>` to `target`, link up.
    pub async fn start(target: SocketAddr) -> anyhow::Result<FaultProxy> {
        FaultProxy::start_on(std::net::Ipv4Addr::LOCALHOST.into(), target).await
    }

    /// Relays `<ip>:<free port>` (e.g. the root end of a namespace's veth) to `target`.
    pub async fn start_on(ip: std::net::IpAddr, target: SocketAddr) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let (link, link_rx) = watch::channel(Link::Up);
        let (latency, latency_rx) = watch::channel(Duration::ZERO);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, target, link_rx, latency_rx));
        Ok(FaultProxy {
            addr,
            link,
            latency,
            _tasks: tasks,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_link(&self, link: Link) {
        self.link.send_replace(link);
    }

    pub fn link(&self) -> Link {
        *self.link.borrow()
    }

    /// Adds `latency` before each relayed chunk, both ways.
    pub fn set_latency(&self, latency: Duration) {
        self.latency.send_replace(latency);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    link: watch::Receiver<Link>,
    latency: watch::Receiver<Duration>,
) {
    // Connection tasks end with the accept loop (dropped with the proxy).
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                connections.spawn(relay(client, target, link.clone(), latency.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Waits until the link is up; `false` when it is reset.
async fn wait_up(link: &mut watch::Receiver<Link>) -> bool {
    loop {
        let state = *link.borrow_and_update();
        match state {
            Link::Up => return true,
            Link::Reset | Link::Answer(_) => return false,
            Link::Blackhole => {
                if link.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn relay(
    client: TcpStream,
    target: SocketAddr,
    mut link: watch::Receiver<Link>,
    latency: watch::Receiver<Duration>,
) {
    let state = *link.borrow();
    if let Link::Answer(status) = state {
        answer(client, status).await;
        return;
    }
    if !wait_up(&mut link).await {
        reset(&client);
        return;
    }
    let Ok(upstream) = TcpStream::connect(target).await else {
        reset(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let mut pumps = JoinSet::new();
    pumps.spawn(pump(cr, uw, link.clone(), latency.clone()));
    pumps.spawn(pump(ur, cw, link.clone(), latency));
    // Either direction ending (EOF, error or reset) ends the connection.
    let halves = pumps.join_next().await;
    drop(halves);
    pumps.abort_all();
}

/// Reads one HTTP request head (up to 16 KiB, 5 s) and answers `status` with an OCI error body,
/// then closes the connection (a request body is not read: the client may see a reset while
/// sending it, as from a registry that gave up on it).
async fn answer(mut client: TcpStream, status: u16) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(5), read_head).await,
        Ok(true)
    ) {
        reset(&client);
        return;
    }
    let (reason, code, retry_after) = match status {
        429 => ("Too Many Requests", "TOOMANYREQUESTS", "Retry-After: 1\r\n"),
        503 => ("Service Unavailable", "UNAVAILABLE", ""),
        _ => ("Internal Server Error", "UNKNOWN", ""),
    };
    let body =
        format!(r#"{{"errors":[{{"code":"{code}","message":"injected by the fault proxy"}}]}}"#);
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{retry_after}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// Copies `from` → `to` while the link is up; on reset, resets `to`'s socket.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
    latency: watch::Receiver<Duration>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Holding the read while the link is down keeps the bytes in the kernel's buffers.
        if !wait_up(&mut link).await {
            let _ = to.as_ref().set_zero_linger();
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let delay = *latency.borrow();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if !wait_up(&mut link).await {
            let _ = to.as_ref().set_zero_linger();
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(within, s.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf)
    }

    #[tokio::test]
    async fn latency_delays_every_chunk() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        proxy.set_latency(Duration::from_millis(150));
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let started = std::time::Instant::now();
        let echoed = round_trip(&mut s, b"hi", Duration::from_secs(2)).await;
        assert_eq!(echoed.as_deref(), Some(&b"hi"[..]));
        // Once on the way there, once on the way back.
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(proxy.link(), Link::Up);
    }

    #[tokio::test]
    async fn blackhole_stalls_then_resumes_and_reset_cuts() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let second = Duration::from_secs(1);
        assert_eq!(
            round_trip(&mut s, b"one", second).await.as_deref(),
            Some(&b"one"[..])
        );

        proxy.set_link(Link::Blackhole);
        assert_eq!(
            round_trip(&mut s, b"two", Duration::from_millis(300)).await,
            None
        );
        // A new connection is accepted but not answered either.
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut fresh, b"new", Duration::from_millis(300)).await,
            None
        );

        proxy.set_link(Link::Up);
        // The stalled bytes arrive after the link is back, in order.
        let mut buf = [0u8; 3];
        tokio::time::timeout(second, s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"two");
        let mut buf = [0u8; 3];
        tokio::time::timeout(second, fresh.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"new");

        proxy.set_link(Link::Reset);
        let mut buf = [0u8; 8];
        let cut = tokio::time::timeout(second, async {
            let _ = s.write_all(b"x").await;
            s.read(&mut buf).await
        })
        .await
        .unwrap();
        assert!(matches!(cut, Ok(0) | Err(_)), "{cut:?}");
    }

    #[tokio::test]
    async fn answer_resets_open_connections_and_answers_new_requests_until_the_link_is_up() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let second = Duration::from_secs(1);
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut open, b"one", second).await.is_some());

        proxy.set_link(Link::Answer(429));
        let mut buf = [0u8; 8];
        let cut = tokio::time::timeout(second, async {
            let _ = open.write_all(b"x").await;
            open.read(&mut buf).await
        })
        .await
        .unwrap();
        assert!(matches!(cut, Ok(0) | Err(_)), "{cut:?}");
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        fresh
            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: r\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(second, fresh.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
        assert!(answer.contains("Retry-After: 1\r\n"), "{answer}");
        assert!(
            answer.ends_with(
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"injected by the fault proxy"}]}"#
            ),
            "{answer}"
        );

        proxy.set_link(Link::Up);
        let mut after = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut after, b"two", second).await.as_deref(),
            Some(&b"two"[..])
        );
    }
}
