//! Webhook bodies shaped exactly like distribution 2.8.2's notifications (one event per POST,
//! `application/vnd.docker.distribution.events.v1+json`), and a small client that posts them to
//! the agent and returns its answer.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};

/// The content type distribution 2.x sends.
pub const CONTENT_TYPE_V1: &str = "application/vnd.docker.distribution.events.v1+json";

/// The envelope distribution 2.8 POSTs after a manifest `PUT` of `repo:tag` on `registry_host`:
/// `manifest` is the exact manifest bytes (their sha256 is the digest); `references` lists the
/// config and layers, as with `notifications.events.includereferences: true`.
pub fn distribution_push(
    registry_host: &str,
    repo: &str,
    tag: &str,
    manifest: &[u8],
    request_id: &str,
) -> anyhow::Result<Value> {
    let parsed: Value = serde_json::from_slice(manifest).context("parsing the manifest")?;
    let digest = ferry_testkit::sha256_digest(manifest);
    let media_type = parsed["mediaType"]
        .as_str()
        .context("the manifest has no mediaType")?;
    let references: Vec<Value> = std::iter::once(&parsed["config"])
        .chain(parsed["layers"].as_array().into_iter().flatten())
        .map(|d| json!({"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"]}))
        .collect();
    Ok(json!({"events": [{
        "id": format!("{request_id}-event"),
        "timestamp": "2026-11-23T11:36:33.776681309Z",
        "action": "push",
        "target": {
            "mediaType": media_type,
            "size": manifest.len(),
            "digest": digest,
            "length": manifest.len(),
            "repository": repo,
            "url": format!("http://{registry_host}/v2/{repo}/manifests/{digest}"),
            "tag": tag,
            "references": references,
        },
        "request": {
            "id": request_id,
            "addr": "127.0.0.1:46802",
            "host": registry_host,
            "method": "PUT",
            "useragent": "skopeo/1.9.3",
        },
        "actor": {},
        "source": {"addr": "chaos:5000", "instanceID": "ad4f3875-3286-4f9d-83f5-78e7a2662cf6"},
    }]}))
}

/// The agent's answer to one POST.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Answer {
    /// The body as JSON (an error naming the status and body when it is not).
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("answer {} is not JSON: {:?}", self.status, self.body))
    }
}

/// POSTs `body` to `url` with `content_type` and, when given, `Authorization: Bearer <token>`.
pub async fn post(
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> anyhow::Result<Answer> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut request = client
        .post(url)
        .header("content-type", content_type)
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.text().await.unwrap_or_default();
    Ok(Answer {
        status,
        content_type,
        body,
    })
}

/// How [`post_oversized`] sends a body larger than the agent's limit.
#[derive(Clone, Copy, Debug)]
pub enum Oversized {
    /// Declares `Content-Length: n` with `Expect: 100-continue` (what curl does for large bodies)
    /// and sends nothing more unless the server asks for the body with `100 Continue`.
    DeclaredLength(u64),
    /// `Transfer-Encoding: chunked`, no declared length: after `100 Continue`, sends exactly
    /// `limit` bytes and then one more, and waits for the answer.
    ChunkedPast { limit: usize },
}

/// POSTs an oversized body over a raw HTTP/1.1 connection and returns the answer.
///
/// Why not reqwest: a server that rejects a body it has not read closes the connection with
/// unread bytes in its socket, which makes the kernel send a reset; a client still writing the
/// body (reqwest does) then often loses the answer. Sending only what the server has asked for
/// (and read) keeps the exchange deterministic, so the test sees the agent's real answer.
pub async fn post_oversized(
    url: &str,
    token: &str,
    content_type: &str,
    mode: Oversized,
) -> anyhow::Result<Answer> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let parsed = reqwest::Url::parse(url).with_context(|| format!("parsing {url}"))?;
    let host = parsed.host_str().context("the URL has no host")?;
    let port = parsed
        .port_or_known_default()
        .context("the URL has no port")?;
    let target = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_string(),
    };
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let framing = match mode {
        Oversized::DeclaredLength(n) => format!("Content-Length: {n}"),
        Oversized::ChunkedPast { .. } => "Transfer-Encoding: chunked".to_string(),
    };
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {content_type}\r\nExpect: 100-continue\r\nConnection: close\r\n{framing}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;

    let mut received = Vec::new();
    let read_timeout = Duration::from_secs(10);
    // Reads until `received` holds a complete response head (and returns its length).
    async fn read_head(
        stream: &mut tokio::net::TcpStream,
        received: &mut Vec<u8>,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(end + 4);
            }
            let mut buf = [0u8; 8192];
            let n = tokio::time::timeout(timeout, stream.read(&mut buf))
                .await
                .context("no answer in time")??;
            anyhow::ensure!(
                n > 0,
                "connection closed before a complete response head: {:?}",
                String::from_utf8_lossy(received)
            );
            received.extend_from_slice(&buf[..n]);
        }
    }

    let mut head_len = read_head(&mut stream, &mut received, read_timeout).await?;
    if received.starts_with(b"HTTP/1.1 100") {
        let Oversized::ChunkedPast { limit } = mode else {
            anyhow::bail!("the agent asked for a body whose declared length is over its limit");
        };
        received.drain(..head_len);
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < limit {
            let n = chunk.len().min(limit - sent);
            stream.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            stream.write_all(&chunk[..n]).await?;
            stream.write_all(b"\r\n").await?;
            sent += n;
        }
        stream.write_all(b"1\r\n \r\n").await?;
        head_len = read_head(&mut stream, &mut received, read_timeout).await?;
    }

    let head = String::from_utf8_lossy(&received[..head_len]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let length: Option<usize> = header("content-length").and_then(|v| v.parse().ok());
    let mut body = received[head_len..].to_vec();
    loop {
        if length.is_some_and(|n| body.len() >= n) {
            break;
        }
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(read_timeout, stream.read(&mut buf))
            .await
            .context("the answer's body did not arrive in time")??;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Ok(Answer {
        status,
        content_type: header("content-type").unwrap_or_default(),
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
