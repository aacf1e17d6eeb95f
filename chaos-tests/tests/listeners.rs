//! `ferry-agent`'s webhook listener under a slowloris (issue 9, row 5): with 256 file descriptors
//! and 400 connections that send a request line and then one header byte every 2 s, a valid
//! webhook is still answered, and every stalled connection is closed by the header-read timeout
//! (the agent's defaults: `--header-read-timeout 10`, `--max-connections 1024`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_chaos_tests::{wait_for, webhook, Region, RegionOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const STALLED: usize = 400;
/// Generous: the property is that it happens.
const DEADLINE: Duration = Duration::from_secs(180);

/// Opens `n` connections to `addr` at once, each sending a request line and then one header byte
/// every 2 s; returns how many of them the server has closed so far (a connection the kernel
/// refused counts as closed too).
fn slowloris(addr: &str, n: usize) -> Arc<AtomicUsize> {
    let closed = Arc::new(AtomicUsize::new(0));
    for _ in 0..n {
        let (addr, closed) = (addr.to_string(), closed.clone());
        tokio::spawn(async move {
            if let Ok(stream) = TcpStream::connect(&addr).await {
                let (mut reader, mut writer) = stream.into_split();
                let writing = async move {
                    let head =
                        b"POST /v1/events/distribution?registry=a HTTP/1.1\r\nHost: agent\r\nX-";
                    if writer.write_all(head).await.is_ok() {
                        loop {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            if writer.write_all(b"a").await.is_err() {
                                break;
                            }
                        }
                    }
                    std::future::pending::<()>().await
                };
                let reading = async {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = reader.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                };
                tokio::select! {
                    () = writing => {}
                    () = reading => {}
                }
            }
            closed.fetch_add(1, Ordering::SeqCst);
        });
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_answers_webhooks_while_400_slowloris_connections_hold_its_256_descriptors() {
    let region = Region::start(RegionOptions::default().without_source_notifications())
        .await
        .expect("starting the region");
    if let Err(e) = scenario(&region).await {
        panic!("{e:#}");
    }
}

async fn scenario(region: &Region) -> anyhow::Result<()> {
    let pid = region.agent.pid().expect("the agent runs").to_string();
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=256:256"])
        .status()?;
    anyhow::ensure!(limited.success(), "prlimit failed: {limited}");

    let agent = region.agent.url();
    let addr = agent.trim_start_matches("http://").to_string();
    let closed = slowloris(&addr, STALLED);
    // The storm takes the agent's descriptors before the valid webhook is tried (answered before
    // the storm, it would prove nothing): wait until the agent holds nearly all 256.
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let filled = wait_for(
        "the storm to take the agent's descriptors",
        DEADLINE,
        || {
            let n = open_fds();
            async move { n >= 240 }
        },
    )
    .await?;
    eprintln!(
        "the agent held {} of its 256 descriptors {filled:?} into the storm",
        open_fds()
    );
    let empty = serde_json::json!({"events": []}).to_string();
    let took = wait_for("a valid webhook answered with 200", DEADLINE, || async {
        webhook::post(
            &region.webhook_url(),
            Some(region.token()),
            webhook::CONTENT_TYPE_V1,
            empty.clone(),
        )
        .await
        .is_ok_and(|answer| answer.status == 200)
    })
    .await?;
    eprintln!("valid webhook answered after {took:?} with {STALLED} slowloris connections");
    wait_for("every slowloris connection closed", DEADLINE, || async {
        closed.load(Ordering::SeqCst) == STALLED
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {} of {STALLED} closed", closed.load(Ordering::SeqCst)))?;
    anyhow::ensure!(
        region.agent.healthz().await == Some(200),
        "the agent is not healthy after the storm"
    );
    Ok(())
}
