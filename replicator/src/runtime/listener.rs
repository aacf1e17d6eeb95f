//! Every socket a Ferry daemon listens on — webhooks, `/metrics` and `/healthz`, the gRPC admin API
//! and `ferry.v1.Events/Forward` — is bound, accepted and served here, so that all of them survive
//! the same hostile clients (DESIGN.md "Trust boundaries": idle or slow sockets on every listener).
//! `ferry-agent`, `ferry serve` and `ferry worker` take the same flags ([`ListenFlags`]).
//!
//! # Limits (per listener)
//! - **Connection cap** (`--max-connections`, default [`DEFAULT_MAX_CONNECTIONS`]). The accept loop
//!   takes a slot *before* it accepts, so a connection past the cap waits in the kernel's listen
//!   backlog — it costs the process no file descriptor — and is served as soon as a slot frees.
//!   A valid client is delayed, not refused; and clients alone cannot run the process out of
//!   descriptors as long as the cap stays below its `LimitNOFILE`.
//! - **Header-read timeout** (`--header-read-timeout`, default [`DEFAULT_HEADER_READ_TIMEOUT`] s).
//!   HTTP/1: the request line and headers must arrive within it, counted from the moment the
//!   connection is ready for a request — so it is also how long an idle keep-alive connection
//!   stays open. gRPC: a connection's first call (TLS handshake included) must arrive within it.
//! - **Idle timeout** (`--idle-timeout`, default [`DEFAULT_IDLE_TIMEOUT`] s), gRPC: a connection
//!   with no call in flight for that long is closed; HTTP/2 keep-alive pings close connections
//!   whose peer stopped answering while calls are in flight.
//! - Per connection: HTTP/1 serves one request at a time; gRPC runs at most
//!   [`GRPC_CALLS_PER_CONNECTION`] calls at once and decodes messages up to tonic's default 4 MiB.
//!   Webhook bodies are bounded by `--max-body-bytes` (see [`crate::ingest::http`]).
//! - An accept error (EMFILE when the process is out of descriptors anyway) pauses accepting for
//!   [`ACCEPT_BACKOFF`] instead of spinning; the connections already open keep being served.
//!
//! `/metrics` requires `Authorization: Bearer <token>` when a metrics token is configured
//! (`--metrics-token-file` or [`METRICS_TOKEN_ENV`]); `/healthz` stays open for probes.
//!
//! # Invariants
//! - A slot is released exactly when its connection's socket is dropped (the permit lives in
//!   [`Conn`]).
//! - On the shutdown token the listening socket closes, open connections finish the requests in
//!   flight (HTTP/1 closes after the current response, gRPC sends GOAWAY), and the serve function
//!   returns when the last one is gone.
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tonic::transport::ServerTlsConfig;
use tower_layer::{Identity, Stack};

use crate::tokens::TokenSet;

/// Default `--max-connections`: connections open at once on each listener.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Default `--header-read-timeout`, in seconds.
pub const DEFAULT_HEADER_READ_TIMEOUT: u64 = 10;
/// Default `--idle-timeout`, in seconds.
pub const DEFAULT_IDLE_TIMEOUT: u64 = 300;
/// Calls one gRPC connection may run at once (more wait for one to finish).
pub const GRPC_CALLS_PER_CONNECTION: usize = 32;
/// HTTP/2 keep-alive: a PING every interval; no answer within the timeout closes the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause after an accept error such as EMFILE, so that the loop does not spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Env var holding the `/metrics` bearer token when no `--metrics-token-file` is given.
pub const METRICS_TOKEN_ENV: &str = "FERRY_METRICS_TOKEN";

/// The limits of one listener; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

/// How every listener of a daemon serves its clients (the same flags on all three daemons).
#[derive(Debug, Clone, clap::Args)]
pub struct ListenFlags {
    /// Connections open at once on each listener; more wait in the kernel's backlog until one
    /// closes. Keep it well below the process's open-file limit.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Seconds a client may take to send a request's headers (HTTP; also the keep-alive idle time)
    /// or its first call (gRPC) before the connection is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_HEADER_READ_TIMEOUT, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout: u64,
    /// Seconds a gRPC connection with no call in flight stays open.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_IDLE_TIMEOUT, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,
    /// File with the bearer token(s) `/metrics` requires, one per line. Default: the
    /// FERRY_METRICS_TOKEN environment variable; with neither, `/metrics` is open.
    #[arg(long)]
    pub metrics_token_file: Option<PathBuf>,
}

impl ListenFlags {
    /// The limits these flags ask for.
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections as usize,
            header_read_timeout: Duration::from_secs(self.header_read_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
        }
    }

    /// Binds `addr` (`flag` names it in messages) for `router` — webhooks and/or `/metrics` and
    /// `/healthz` — with these limits and `/metrics` behind the metrics token when one is set.
    pub async fn bind_http(
        &self,
        flag: &str,
        addr: &str,
        router: axum::Router,
    ) -> Result<HttpListener, ListenError> {
        let tokens = crate::tokens::load(
            self.metrics_token_file.as_deref(),
            METRICS_TOKEN_ENV,
            "metrics",
        )
        .map_err(ListenError::Tokens)?;
        let listener = Listener::bind(flag, addr, self.limits()).await?;
        Ok(HttpListener {
            listener,
            router: crate::runtime::ops::protect_metrics(router, TokenSet::new(&tokens)),
        })
    }

    /// Binds `addr` (`flag` names it in messages) for a gRPC server ([`grpc_server`]).
    pub async fn bind_grpc(&self, flag: &str, addr: &str) -> Result<Listener, ListenError> {
        Listener::bind(flag, addr, self.limits()).await
    }
}

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Bind {
        flag: String,
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Tokens(String),
}

/// A bound socket with a connection cap.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    /// One permit per open connection.
    slots: Arc<Semaphore>,
    limits: Limits,
}

impl Listener {
    /// Binds `addr`; `flag` names it in the error.
    pub async fn bind(flag: &str, addr: &str, limits: Limits) -> Result<Listener, ListenError> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| ListenError::Bind {
                flag: flag.to_string(),
                addr: addr.to_string(),
                source,
            })?;
        Ok(Listener::new(tcp, limits))
    }

    /// Serves an already bound socket with `limits`.
    pub fn new(tcp: TcpListener, limits: Limits) -> Listener {
        Listener {
            tcp,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Waits for a free slot, then for a connection; `watched` connections close themselves after
    /// the gRPC first-call and idle deadlines.
    async fn accept(&self, watched: bool) -> Conn {
        // The semaphore is never closed, so this waits until a connection closes.
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return std::future::pending().await;
        };
        let mut failing = false;
        loop {
            match self.tcp.accept().await {
                Ok((stream, _)) => {
                    if failing {
                        tracing::info!("accepting connections again");
                    }
                    let watchdog = watched.then(|| Watchdog::new(self.limits));
                    return Conn {
                        stream,
                        _slot: slot,
                        watchdog,
                    };
                }
                // The peer gave up between SYN and accept: nothing to wait for.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // Once per streak: EMFILE lasts until connections close.
                    if !failing {
                        tracing::warn!(error = %e, "cannot accept connections; retrying every {} ms (is --max-connections above the open-file limit?)", ACCEPT_BACKOFF.as_millis());
                        failing = true;
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

/// A bound HTTP listener and what it serves; see [`ListenFlags::bind_http`].
pub struct HttpListener {
    listener: Listener,
    router: axum::Router,
}

impl HttpListener {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves HTTP/1 until `shutdown`, then lets the requests in flight finish.
    pub async fn serve(self, shutdown: CancellationToken) {
        let HttpListener { listener, router } = self;
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(listener.limits.header_read_timeout);
        let connections = TaskTracker::new();
        loop {
            let conn = tokio::select! {
                () = shutdown.cancelled() => break,
                conn = listener.accept(false) => conn,
            };
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(conn), service);
            let stop = shutdown.clone();
            connections.spawn(async move {
                let mut connection = std::pin::pin!(connection);
                let mut stopping = false;
                loop {
                    tokio::select! {
                        served = connection.as_mut() => {
                            if let Err(e) = served {
                                tracing::debug!(error = %e, "HTTP connection closed");
                            }
                            break;
                        }
                        () = stop.cancelled(), if !stopping => {
                            stopping = true;
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
            });
        }
        drop(listener);
        connections.close();
        connections.wait().await;
    }
}

/// A tonic server builder with the listener limits that tonic applies itself (calls per
/// connection, HTTP/2 keep-alive) and the layer that lets [`serve_grpc`] see calls, plus `tls`.
pub fn grpc_server(tls: Option<ServerTlsConfig>) -> Result<GrpcServer, tonic::transport::Error> {
    let mut server = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(GRPC_CALLS_PER_CONNECTION)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    Ok(server.layer(TrackCalls))
}

/// What [`grpc_server`] returns.
pub type GrpcServer = tonic::transport::Server<Stack<TrackCalls, Identity>>;

/// Serves `router` on `listener` (cap, first-call and idle deadlines) until `shutdown`, then waits
/// for the connections to close.
pub async fn serve_grpc(
    router: tonic::transport::server::Router<Stack<TrackCalls, Identity>>,
    listener: Listener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        let conn = listener.accept(true).await;
        Some((Ok::<_, io::Error>(conn), listener))
    });
    router
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}

/// An accepted connection holding its slot.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// gRPC only: closes the connection at its deadline.
    watchdog: Option<Watchdog>,
}

/// The calls of one gRPC connection, shared between the connection and [`TrackCalls`].
#[derive(Debug)]
pub struct Activity(Mutex<ActivityState>);

#[derive(Debug)]
struct ActivityState {
    /// Calls whose response has not ended yet.
    calls: usize,
    /// Whether a call ever arrived (then the idle timeout applies, before it the first-call one).
    called: bool,
    /// Since when no call has been in flight (the accept time at first).
    quiet_since: Instant,
    /// The connection's reader, woken when the last call ends so that it re-arms its deadline.
    waker: Option<Waker>,
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        crate::locks::lock(&self.0)
    }

    fn begin(self: &Arc<Self>) -> Call {
        let mut state = self.lock();
        state.calls += 1;
        state.called = true;
        Call(self.clone())
    }
}

/// One call in flight; ends when dropped (with the response body, or the call's future).
#[derive(Debug)]
struct Call(Arc<Activity>);

impl Drop for Call {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.calls = state.calls.saturating_sub(1);
        if state.calls == 0 {
            state.quiet_since = Instant::now();
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
    }
}

#[derive(Debug)]
struct Watchdog {
    activity: Arc<Activity>,
    limits: Limits,
    timer: Pin<Box<Sleep>>,
}

impl Watchdog {
    fn new(limits: Limits) -> Watchdog {
        let now = Instant::now();
        Watchdog {
            activity: Arc::new(Activity(Mutex::new(ActivityState {
                calls: 0,
                called: false,
                quiet_since: now,
                waker: None,
            }))),
            limits,
            timer: Box::pin(tokio::time::sleep_until(now + limits.header_read_timeout)),
        }
    }

    /// True once the connection has been quiet past its deadline; otherwise arranges to be woken
    /// at the deadline (or when the last call ends).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = {
            let mut state = self.activity.lock();
            state.waker = Some(cx.waker().clone());
            if state.calls > 0 {
                return false;
            }
            let allowed = if state.called {
                self.limits.idle_timeout
            } else {
                self.limits.header_read_timeout
            };
            state.quiet_since + allowed
        };
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(watchdog) = &mut this.watchdog {
            if watchdog.expired(cx) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no call within the listener's deadline",
                )));
            }
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// What tonic puts in each request's extensions for a [`Conn`] (wrapped in [`TlsConnectInfo`]
/// with TLS).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    activity: Option<Arc<Activity>>,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            tcp: self.stream.connect_info(),
            activity: self.watchdog.as_ref().map(|w| w.activity.clone()),
        }
    }
}

/// The tower layer counting a gRPC connection's calls, so that its [`Conn`] knows when it is idle.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackCalls;

impl<S> tower_layer::Layer<S> for TrackCalls {
    type Service = CallTracker<S>;

    fn layer(&self, inner: S) -> CallTracker<S> {
        CallTracker(inner)
    }
}

/// See [`TrackCalls`].
#[derive(Debug, Clone)]
pub struct CallTracker<S>(S);

impl<S, B> tonic::codegen::Service<http::Request<B>> for CallTracker<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let extensions = request.extensions();
        let call = extensions
            .get::<ConnInfo>()
            .or_else(|| {
                extensions
                    .get::<TlsConnectInfo<ConnInfo>>()
                    .map(TlsConnectInfo::get_ref)
            })
            .and_then(|info| info.activity.as_ref())
            .map(Activity::begin);
        let response = self.0.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match call {
                Some(call) => response.map(|body| tonic::body::Body::new(CallBody { body, call })),
                None => response,
            })
        })
    }
}

/// A response body that keeps its call in flight until it ends.
struct CallBody {
    body: tonic::body::Body,
    #[allow(dead_code)] // held for its Drop
    call: Call,
}

impl http_body::Body for CallBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    fn limits() -> Limits {
        Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }

    /// A watched connection accepted from a fresh listener, and its client end.
    async fn watched() -> (Conn, TcpStream) {
        let listener = Listener::bind("test", "127.0.0.1:0", limits())
            .await
            .unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (listener.accept(true).await, client)
    }

    fn activity(conn: &Conn) -> Arc<Activity> {
        conn.watchdog.as_ref().unwrap().activity.clone()
    }

    /// Reads from `conn` for up to a (virtual) day: the error kind it ended with, if any.
    async fn read_for_a_day(conn: &mut Conn) -> Option<io::ErrorKind> {
        let mut buf = [0u8; 16];
        match tokio::time::timeout(Duration::from_secs(86_400), conn.read(&mut buf)).await {
            Ok(Err(e)) => Some(e.kind()),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_connection_without_a_call_is_closed_at_the_header_read_timeout() {
        let (mut conn, _client) = watched().await;
        let accepted = Instant::now();
        assert_eq!(
            read_for_a_day(&mut conn).await,
            Some(io::ErrorKind::TimedOut)
        );
        assert_eq!(accepted.elapsed(), limits().header_read_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_connection_stays_open_while_a_call_runs_and_closes_after_the_idle_timeout_once_it_ends(
    ) {
        let (mut conn, _client) = watched().await;
        let call = activity(&conn).begin();
        assert_eq!(
            read_for_a_day(&mut conn).await,
            None,
            "closed during a call"
        );
        drop(call);
        let ended = Instant::now();
        assert_eq!(
            read_for_a_day(&mut conn).await,
            Some(io::ErrorKind::TimedOut)
        );
        assert_eq!(ended.elapsed(), limits().idle_timeout);
    }

    #[tokio::test]
    async fn a_slot_frees_when_its_connection_closes() {
        let listener = Listener::bind(
            "test",
            "127.0.0.1:0",
            Limits {
                max_connections: 1,
                ..limits()
            },
        )
        .await
        .unwrap();
        let addr = listener.local_addr().unwrap();
        let _first_client = TcpStream::connect(addr).await.unwrap();
        let first = listener.accept(false).await;
        let _second_client = TcpStream::connect(addr).await.unwrap();
        let past_cap =
            tokio::time::timeout(Duration::from_millis(500), listener.accept(false)).await;
        assert!(past_cap.is_err(), "accepted past the cap");
        drop(first);
        let _second = listener.accept(false).await;
    }
}
