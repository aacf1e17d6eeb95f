//! Every listener of `ferry serve` survives hostile clients (issue 9, row 5): hundreds of stalled
//! connections neither keep valid requests from being answered nor stay open past the
//! header-read timeout; the connection cap holds; `/metrics` can require a token; webhook bodies
//! are bounded.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const TOKEN: &str = "listener-test-token";
const ADMIN_TOKEN: &str = "listener-admin-token";
/// Stalled connections per test: far more than the cap the tests set, well under `ulimit -n`.
const STALLED: usize = 300;
/// How long a served request or a closed connection may take: generous, the property is that it
/// happens.
const DEADLINE: Duration = Duration::from_secs(90);

/// A config with two (never contacted) registries and an event-based policy.
fn config(dir: &std::path::Path) -> std::path::PathBuf {
    write_config(
        dir,
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        json!({"trigger": {"type": "event_based"}}),
    )
}

/// Opens `n` connections to `addr`: half send `prefix` and then the next byte of `trickle` every
/// 500 ms (a slowloris), half send nothing. Returns how many of them the server has closed so
/// far (a counter that grows).
async fn stall(
    addr: &str,
    n: usize,
    prefix: &'static [u8],
    trickle: &'static [u8],
) -> Arc<AtomicUsize> {
    let closed = Arc::new(AtomicUsize::new(0));
    for i in 0..n {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect (queued in the backlog at worst)");
        let closed = closed.clone();
        tokio::spawn(async move {
            let (mut reader, mut writer) = stream.into_split();
            let slow = i % 2 == 0;
            let writing = async move {
                if !slow {
                    return std::future::pending::<()>().await;
                }
                if writer.write_all(prefix).await.is_err() {
                    return std::future::pending().await;
                }
                for byte in trickle.iter().cycle() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if writer.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                }
                std::future::pending().await
            };
            let reading = async {
                let mut buf = [0u8; 1024];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            };
            tokio::select! {
                () = writing => {}
                () = reading => {}
            }
            closed.fetch_add(1, Ordering::SeqCst);
        });
    }
    closed
}

/// `ferry serve` on a free address with the test config, extra flags `args` and environment
/// `env`; returns it, its `--listen` address and its temp dir (which must outlive it).
async fn serve(args: &[&str], env: &[(&str, &str)]) -> (Serve, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_local_addr();
    let log = dir.path().join("serve.log");
    let serve = Serve::start_with(&config(dir.path()), &listen, TOKEN, args, env, log).await;
    (serve, listen, dir)
}

/// Asserts that `what` was `answered` while the connections counted by `closed` stalled, and that
/// the server then closes every one of them.
async fn assert_answered_and_stalled_closed(
    answered: bool,
    what: &str,
    serve: &Serve,
    closed: &AtomicUsize,
) {
    assert!(
        answered,
        "no answer to {what} while connections stall:\n{}",
        serve.log()
    );
    let all = eventually(DEADLINE, || async {
        closed.load(Ordering::SeqCst) == STALLED
    })
    .await;
    assert!(
        all,
        "only {} of {STALLED} stalled connections were closed",
        closed.load(Ordering::SeqCst)
    );
}

/// This machine's IPv4 TCP sockets bound to local port `port`: `(state, rx_queue)` from
/// `/proc/net/tcp` (state `0A` is LISTEN, whose `rx_queue` is the number of connections waiting
/// to be accepted).
fn sockets_on(port: u16) -> Vec<(u8, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
            let rx_queue = u64::from_str_radix(fields.get(4)?.split(':').nth(1)?, 16).ok()?;
            (local_port == port).then_some((state, rx_queue))
        })
        .collect()
}

/// Connections waiting to be accepted on the listener at `port` (`None` when nothing listens).
fn accept_queue(port: u16) -> Option<u64> {
    sockets_on(port)
        .into_iter()
        .find(|(state, _)| *state == 0x0A)
        .map(|(_, queued)| queued)
}

/// Server-side connections of the listener at `port` that are open or not yet closed by the
/// server (ESTABLISHED or CLOSE_WAIT): the ones that can hold one of its slots.
fn server_connections(port: u16) -> usize {
    sockets_on(port)
        .into_iter()
        .filter(|(state, _)| matches!(state, 0x01 | 0x08))
        .count()
}

/// Sends an empty distribution notification; its status (0 when no answer came in time).
async fn webhook(listen: &str) -> u16 {
    webhook_with(listen, json!({"events": []}).to_string()).await
}

/// Sends `body` as a distribution notification; its status (0 when no answer came in time).
async fn webhook_with(listen: &str, body: String) -> u16 {
    reqwest::Client::new()
        .post(format!(
            "http://{listen}/v1/events/distribution?registry=src"
        ))
        .bearer_auth(TOKEN)
        .header(
            "content-type",
            "application/vnd.docker.distribution.events.v1+json",
        )
        .body(body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_answered_while_hundreds_of_connections_stall_and_the_stalled_ones_are_closed_after_the_header_read_timeout(
) {
    let (serve, listen, _dir) = serve(
        &["--max-connections", "64", "--header-read-timeout", "1"],
        &[],
    )
    .await;

    let closed = stall(
        &listen,
        STALLED,
        b"POST /v1/events/distribution?registry=src HTTP/1.1\r\nHost: ferry\r\nX-",
        b"a",
    )
    .await;
    let answered = eventually(DEADLINE, || async { webhook(&listen).await == 200 }).await;
    assert_answered_and_stalled_closed(answered, "a valid webhook", &serve, &closed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_until_one_closes_and_are_then_served() {
    let (serve, listen, _dir) = serve(
        &["--max-connections", "2", "--header-read-timeout", "600"],
        &[],
    )
    .await;
    let port: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
    // Serve::start's health check may still hold a keep-alive connection: wait until the server
    // holds none.
    let released = eventually(DEADLINE, || async { server_connections(port) == 0 }).await;
    assert!(released, "the health check's connection stays open");
    let idle: Vec<TcpStream> =
        futures_util::future::join_all((0..2).map(|_| TcpStream::connect(&listen)))
            .await
            .into_iter()
            .map(|c| c.expect("connect"))
            .collect();
    // Both taken by the server (its accept queue empty again): they hold the two slots, idle
    // (the header-read timeout is long).
    let accepted = eventually(DEADLINE, || async { accept_queue(port) == Some(0) }).await;
    assert!(accepted, "the two idle connections were not accepted");
    let target = listen.clone();
    let request = tokio::spawn(async move { webhook(&target).await });
    // The webhook's connection waits in the accept queue: the server, which took the two before
    // it at once, leaves it there while the cap is reached.
    let settled = eventually(DEADLINE, || async {
        accept_queue(port) == Some(1) || request.is_finished()
    })
    .await;
    assert!(
        settled,
        "the third connection never reached the accept queue"
    );
    assert!(
        !request.is_finished(),
        "a third connection was served past a cap of 2"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        accept_queue(port) == Some(1) && !request.is_finished(),
        "a third connection was served past a cap of 2"
    );
    drop(idle);
    assert_eq!(
        request.await.unwrap(),
        200,
        "the waiting webhook was not served once a slot freed:\n{}",
        serve.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_while_hundreds_of_connections_stall_and_closes_them_after_the_header_read_timeout(
) {
    let admin = free_local_addr();
    let (serve, _listen, _dir) = serve(
        &[
            "--admin-listen",
            &admin,
            "--max-connections",
            "64",
            "--header-read-timeout",
            "1",
        ],
        &[("FERRY_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
    .await;

    // Half of them send the HTTP/2 preface one byte at a time.
    let closed = stall(&admin, STALLED, b"", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(20))
        .timeout(Duration::from_secs(20));
    let answered = eventually(DEADLINE, || async {
        let Ok(channel) = endpoint.connect().await else {
            return false;
        };
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok()
    })
    .await;
    assert_answered_and_stalled_closed(answered, "an admin health check", &serve, &closed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_metrics_token_when_one_is_set_and_healthz_stays_open() {
    let (_serve, listen, _dir) = serve(&[], &[("FERRY_METRICS_TOKEN", "scrape-me")]).await;
    let client = reqwest::Client::new();
    let url = format!("http://{listen}/metrics");
    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let wrong = client.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(
        wrong.status().as_u16(),
        401,
        "the webhook token is not the metrics token"
    );
    let scraped = client
        .get(&url)
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status().as_u16(), 200);
    assert!(scraped.text().await.unwrap().contains("ferry_"));
    let health = client
        .get(format!("http://{listen}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(webhook(&listen).await, 200, "webhooks keep their own token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_rejects_webhook_bodies_over_max_body_bytes() {
    let (_serve, listen, _dir) = serve(&["--max-body-bytes", "64"], &[]).await;
    let padded = json!({"events": [], "padding": "x".repeat(100)}).to_string();
    assert_eq!(webhook_with(&listen, padded).await, 413);
    assert_eq!(
        webhook(&listen).await,
        200,
        "a small body is still accepted"
    );
}

/// Connects to `addr` for a tonic channel and counts the connections it opened.
#[derive(Clone)]
struct CountingConnector {
    addr: String,
    connects: Arc<AtomicUsize>,
}

impl tonic::codegen::Service<tonic::codegen::http::Uri> for CountingConnector {
    type Response = hyper_util::rt::TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Uri) -> Self::Future {
        let (addr, connects) = (self.addr.clone(), self.connects.clone());
        Box::pin(async move {
            connects.fetch_add(1, Ordering::SeqCst);
            Ok(hyper_util::rt::TokioIo::new(
                TcpStream::connect(addr).await?,
            ))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_connection_that_made_a_call_outlives_the_header_read_timeout() {
    let admin = free_local_addr();
    let (_serve, _listen, _dir) = serve(
        &["--admin-listen", &admin, "--header-read-timeout", "1"],
        &[("FERRY_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
    .await;
    let connects = Arc::new(AtomicUsize::new(0));
    let channel = tonic::transport::Endpoint::from_static("http://ferry-admin")
        .connect_with_connector(CountingConnector {
            addr: admin,
            connects: connects.clone(),
        })
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = || tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    health.check(check()).await.unwrap();
    // Past the first-call deadline (1 s), well within the idle timeout (300 s by default).
    tokio::time::sleep(Duration::from_secs(3)).await;
    health.check(check()).await.unwrap();
    assert_eq!(
        connects.load(Ordering::SeqCst),
        1,
        "the connection was closed although it had made a call"
    );
}
