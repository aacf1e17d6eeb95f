//! Independent checks of what the registries hold, never through Ferry's own client: manifest
//! `HEAD`/`DELETE` over plain HTTP, manifest digests hashed from skopeo's raw bytes, upload counts
//! and the byte ranges of upload requests from a registry's access log, uploads in progress from
//! its storage directory; plus fixture images.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
pub use ferry_testkit::access_log::{
    blob_upload_puts, blob_upload_puts_of, manifest_puts, upload_requests, upload_state_offset,
    UploadRequest,
};
use ferry_testkit::{skopeo, Blob, LayerSpec, LayoutBuilder};

/// Every manifest media type, so a `HEAD` returns the digest of the stored bytes whatever they are.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building an HTTP client")
}

/// The digest `host` serves for `repo:reference` (`Docker-Content-Digest` of a `HEAD`), `None` on
/// 404. `host` is `127.0.0.1:PORT` of a plain-HTTP registry.
pub async fn manifest_digest(
    host: &str,
    repo: &str,
    reference: &str,
) -> anyhow::Result<Option<String>> {
    let url = format!("http://{host}/v2/{repo}/manifests/{reference}");
    let response = client()?
        .head(&url)
        .header("accept", MANIFEST_ACCEPT)
        .send()
        .await
        .with_context(|| format!("HEAD {url}"))?;
    match response.status().as_u16() {
        200 => Ok(Some(
            response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .with_context(|| format!("HEAD {url}: no Docker-Content-Digest"))?
                .to_string(),
        )),
        404 => Ok(None),
        code => anyhow::bail!("HEAD {url} answered {code}"),
    }
}

/// `DELETE /v2/<repo>/manifests/<digest>` on `host`, expecting 202 (distribution removes every
/// tag pointing at the digest).
pub async fn delete_manifest(host: &str, repo: &str, digest: &str) -> anyhow::Result<()> {
    let url = format!("http://{host}/v2/{repo}/manifests/{digest}");
    let response = client()?
        .delete(&url)
        .send()
        .await
        .with_context(|| format!("DELETE {url}"))?;
    let status = response.status();
    anyhow::ensure!(
        status.as_u16() == 202,
        "DELETE {url} answered {status}: {}",
        response.text().await.unwrap_or_default()
    );
    Ok(())
}

/// sha256 of the exact manifest bytes `skopeo inspect --raw docker://host/reference` returns.
pub async fn skopeo_digest(host: &str, reference: &str) -> anyhow::Result<String> {
    Ok(ferry_testkit::sha256_digest(
        &skopeo::inspect_raw(host, reference).await?,
    ))
}

/// Waits until `repo:tag` on registry `host` resolves to `digest`; returns how long that took.
pub async fn wait_for_digest(
    host: &str,
    repo: &str,
    tag: &str,
    digest: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<std::time::Duration> {
    crate::wait_for(
        &format!("{repo}:{tag} = {digest} on {host}"),
        timeout,
        || async move {
            manifest_digest(host, repo, tag)
                .await
                .ok()
                .flatten()
                .as_deref()
                == Some(digest)
        },
    )
    .await
}

/// What a series of upload requests sent, by byte range of the blob.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkBytes {
    /// Bytes of accepted `PATCH`es.
    pub sent: u64,
    /// Of those, bytes below `before` (bytes a destination had received already).
    pub below: u64,
}

/// The bytes the accepted (2xx) `PATCH`es of `requests` carried, and how many of them lie below
/// offset `before`. A `PATCH` spans from its own offset to the offset of the session's next
/// request (the state after it); one with no later request counts up to `size`.
pub fn chunk_bytes(requests: &[UploadRequest], before: u64, size: u64) -> ChunkBytes {
    let mut out = ChunkBytes::default();
    for (i, r) in requests.iter().enumerate() {
        if r.method != "PATCH" || !(200..300).contains(&r.status) {
            continue;
        }
        let end = requests[i + 1..]
            .iter()
            .find(|n| n.uuid == r.uuid)
            .map_or(size, |n| n.offset)
            .max(r.offset);
        out.sent += end - r.offset;
        out.below += end.min(before).saturating_sub(r.offset);
    }
    out
}

/// An upload in progress in a distribution storage root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadInProgress {
    /// The upload's UUID: the `<uuid>` of `/v2/<repo>/blobs/uploads/<uuid>` URLs.
    pub uuid: String,
    /// Bytes received so far (the size of its `data` file).
    pub bytes: u64,
}

/// The unfinished uploads in a distribution storage root (the `data` files under
/// `docker/registry/v2/repositories/**/_uploads/<uuid>/`): what clients have streamed into
/// uploads that are not complete yet. Largest first.
pub fn uploads_in_progress(storage_root: &Path) -> Vec<UploadInProgress> {
    fn walk(dir: &Path, found: &mut Vec<UploadInProgress>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name() == "_uploads" {
                for upload in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    if let Ok(meta) = std::fs::metadata(upload.path().join("data")) {
                        found.push(UploadInProgress {
                            uuid: upload.file_name().to_string_lossy().into_owned(),
                            bytes: meta.len(),
                        });
                    }
                }
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(
        &storage_root.join("docker/registry/v2/repositories"),
        &mut found,
    );
    found.sort_by_key(|u| std::cmp::Reverse(u.bytes));
    found
}

/// The size of the largest upload in progress (see [`uploads_in_progress`]), 0 when none.
pub fn largest_upload_in_progress(storage_root: &Path) -> u64 {
    uploads_in_progress(storage_root)
        .first()
        .map_or(0, |u| u.bytes)
}

/// A fixture image written by [`image`].
pub struct Image {
    /// The OCI layout directory (for [`skopeo::push_layout`]), the image tagged `img`.
    pub layout: PathBuf,
    /// The image manifest's descriptor.
    pub manifest: Blob,
    /// The layers' descriptors, in manifest order.
    pub layers: Vec<Blob>,
}

/// An OCI layout in `dir` holding one linux/amd64 image, tagged `img`, with `layers`.
pub fn image(dir: &Path, layers: &[LayerSpec]) -> anyhow::Result<Image> {
    let mut builder = LayoutBuilder::new(dir)?;
    let layer_blobs = layers
        .iter()
        .map(|spec| builder.layer(spec))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let manifest = builder.image("img", layers)?;
    Ok(Image {
        layout: builder.finish()?,
        manifest,
        layers: layer_blobs,
    })
}

/// One request as distribution's own log records it when the response is done (`msg="response
/// completed"`, `log.level: info`): nanosecond times, unlike the access log's whole seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletedRequest {
    pub method: String,
    /// Path and query as requested.
    pub uri: String,
    pub status: u16,
    /// When the request began and when its response was done, in seconds since the Unix epoch
    /// (`time` minus `http.response.duration`, and `time`).
    pub start: f64,
    pub end: f64,
}

/// Every `response completed` line of a registry's log, in log order.
pub fn completed_requests(log: &str) -> Vec<CompletedRequest> {
    log.lines()
        .filter(|l| l.contains("msg=\"response completed\""))
        .filter_map(|l| {
            let fields = logfmt_fields(l);
            let field = |k: &str| {
                fields
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
            };
            let end = rfc3339_seconds(field("time")?)?;
            Some(CompletedRequest {
                method: field("http.request.method")?.to_string(),
                uri: field("http.request.uri")?.to_string(),
                status: field("http.response.status")?.parse().ok()?,
                start: end - go_duration_seconds(field("http.response.duration")?)?,
                end,
            })
        })
        .collect()
}

/// The `key=value` pairs of a logrus text line (values may be double-quoted with `\` escapes).
fn logfmt_fields(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ').is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ' ')).collect();
        if key.is_empty() || chars.next_if_eq(&'=').is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ' ')));
        }
        out.push((key, value));
    }
}

/// Seconds since the Unix epoch of an RFC 3339 time (`2026-12-05T01:00:10.734219008Z`, or with
/// a `±HH:MM` offset).
fn rfc3339_seconds(t: &str) -> Option<f64> {
    let (date, rest) = t.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (clock, offset) = match rest.strip_suffix('Z') {
        Some(clock) => (clock, 0),
        None => {
            let at = rest.rfind(['+', '-'])?;
            let (clock, off) = rest.split_at(at);
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let (h, min) = off[1..].split_once(':')?;
            (
                clock,
                sign * (h.parse::<i64>().ok()? * 3600 + min.parse::<i64>().ok()? * 60),
            )
        }
    };
    let mut hms = clock.splitn(3, ':');
    let (h, min) = (
        hms.next()?.parse::<i64>().ok()?,
        hms.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = hms.next()?.parse().ok()?;
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60 - offset) as f64 + sec)
}

/// Seconds in a Go duration string (`26.152238ms`, `509.616µs`, `1m2.5s`).
fn go_duration_seconds(d: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut rest = d;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let number: f64 = number.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += number * scale;
        rest = after;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_request_spans_from_response_completed_lines() {
        let log = r#"127.0.0.1 - - [05/Dec/2026:01:00:10 +0000] "PUT /v2/app/x/manifests/v1 HTTP/1.1" 201 0 "" "ferry/0.1.0"
time="2026-12-05T01:00:10.734219008Z" level=info msg="response completed" go.version=go1.19.8 http.request.host="10.233.1.2:46845" http.request.method=PUT http.request.uri=/v2/app/x/manifests/v1 http.request.useragent=skopeo/1.9.3 http.response.duration=26.152238ms http.response.status=201 http.response.written=0
time="2026-12-05T01:00:11.046260202Z" level=info msg="response completed" http.request.method=GET http.request.uri="/v2/app/y/manifests/sha256:61" http.request.useragent="a \"quoted\" agent" http.response.duration="509.616µs" http.response.status=200
time="2026-12-05T02:00:11+01:00" level=info msg="response completed" http.request.method=PATCH http.request.uri=/v2/t/blobs/uploads/u http.response.duration=1m2.5s http.response.status=202
time="2026-12-05T01:00:12Z" level=info msg="something else" http.request.method=PUT"#;
        let got = completed_requests(log);
        let summary: Vec<(&str, &str, u16)> = got
            .iter()
            .map(|r| (r.method.as_str(), r.uri.as_str(), r.status))
            .collect();
        assert_eq!(
            summary,
            [
                ("PUT", "/v2/app/x/manifests/v1", 201),
                ("GET", "/v2/app/y/manifests/sha256:61", 200),
                ("PATCH", "/v2/t/blobs/uploads/u", 202)
            ]
        );
        // 2026-12-05T01:00:10Z is 1_796_432_410 s after the epoch.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(got[0].end, 1_796_432_410.734_219), "{:?}", got[0]);
        assert!(
            close(got[0].end - got[0].start, 0.026_152_238),
            "{:?}",
            got[0]
        );
        assert!(
            close(got[1].end - got[1].start, 0.000_509_616),
            "{:?}",
            got[1]
        );
        assert!(close(got[2].end, 1_796_432_411.0), "{:?}", got[2]);
        assert!(close(got[2].end - got[2].start, 62.5), "{:?}", got[2]);
    }

    /// Lines written by Debian's docker-registry 2.8.2 (chunks of 1 MiB; the second `PATCH` was
    /// cut off by its client).
    const LOG: &str = r#"127.0.0.1 - - [23/Nov/2026:16:00:12 +0000] "POST /v2/t/blobs/uploads/ HTTP/1.1" 202 0 "" "curl/7.88.1"
127.0.0.1 - - [23/Nov/2026:16:00:12 +0000] "PATCH /v2/t/blobs/uploads/1ee7e6a6-ae16-4ca6-b9d2-acfecbbea7f0?_state=OUFz4zvEmRrivId5SvsvX_JKzLJf69Dcfz9uFPuSX117Ik5hbWUiOiJ0IiwiVVVJRCI6IjFlZTdlNmE2LWFlMTYtNGNhNi1iOWQyLWFjZmVjYmJlYTdmMCIsIk9mZnNldCI6MCwiU3RhcnRlZEF0IjoiMjAyNi0xMS0yM1QxNjowMDoxMi41MTI0NzI4MjFaIn0%3D HTTP/1.1" 202 0 "" "curl/7.88.1"
time="2026-11-23T16:00:12.561614446Z" level=info msg="response completed" http.request.method=PATCH
127.0.0.1 - - [23/Nov/2026:16:00:12 +0000] "GET /v2/t/blobs/uploads/1ee7e6a6-ae16-4ca6-b9d2-acfecbbea7f0?_state=BsQKogoTz9Awgw-Ayew9wWTd7fQQfOAHoo4BEOPJ55x7Ik5hbWUiOiJ0IiwiVVVJRCI6IjFlZTdlNmE2LWFlMTYtNGNhNi1iOWQyLWFjZmVjYmJlYTdmMCIsIk9mZnNldCI6MTA0ODU3NiwiU3RhcnRlZEF0IjoiMjAyNi0xMS0yM1QxNjowMDoxMloifQ%3D%3D HTTP/1.1" 204 0 "" "curl/7.88.1"
127.0.0.1 - - [23/Nov/2026:16:00:15 +0000] "PATCH /v2/t/blobs/uploads/1ee7e6a6-ae16-4ca6-b9d2-acfecbbea7f0?_state=BsQKogoTz9Awgw-Ayew9wWTd7fQQfOAHoo4BEOPJ55x7Ik5hbWUiOiJ0IiwiVVVJRCI6IjFlZTdlNmE2LWFlMTYtNGNhNi1iOWQyLWFjZmVjYmJlYTdmMCIsIk9mZnNldCI6MTA0ODU3NiwiU3RhcnRlZEF0IjoiMjAyNi0xMS0yM1QxNjowMDoxMloifQ%3D%3D HTTP/1.1" 500 89 "" ""
127.0.0.1 - - [23/Nov/2026:16:00:16 +0000] "GET /v2/t/blobs/uploads/1ee7e6a6-ae16-4ca6-b9d2-acfecbbea7f0?_state=BsQKogoTz9Awgw-Ayew9wWTd7fQQfOAHoo4BEOPJ55x7Ik5hbWUiOiJ0IiwiVVVJRCI6IjFlZTdlNmE2LWFlMTYtNGNhNi1iOWQyLWFjZmVjYmJlYTdmMCIsIk9mZnNldCI6MTA0ODU3NiwiU3RhcnRlZEF0IjoiMjAyNi0xMS0yM1QxNjowMDoxMloifQ%3D%3D HTTP/1.1" 404 76 "" "curl/7.88.1""#;

    const UUID: &str = "1ee7e6a6-ae16-4ca6-b9d2-acfecbbea7f0";

    #[test]
    fn reads_offsets_from_distribution_upload_states() {
        let got = upload_requests(LOG);
        let summary: Vec<(&str, u16, u64)> = got
            .iter()
            .map(|r| (r.method.as_str(), r.status, r.offset))
            .collect();
        assert_eq!(
            summary,
            [
                ("PATCH", 202, 0),
                ("GET", 204, 1_048_576),
                ("PATCH", 500, 1_048_576),
                ("GET", 404, 1_048_576)
            ]
        );
        assert!(got.iter().all(|r| r.uuid == UUID && r.digest.is_none()));
        assert_eq!(upload_state_offset("not-base64!"), None);
        assert_eq!(upload_state_offset("QUJD"), None, "too short for an HMAC");
    }

    fn request(method: &str, uuid: &str, status: u16, offset: u64) -> UploadRequest {
        UploadRequest {
            method: method.into(),
            uuid: uuid.into(),
            status,
            offset,
            digest: None,
        }
    }

    #[test]
    fn counts_accepted_chunk_bytes_and_those_sent_before() {
        // The rejected PATCH carried nothing the registry kept.
        assert_eq!(
            chunk_bytes(&upload_requests(LOG), 1_048_576, 3_000_000),
            ChunkBytes {
                sent: 1_048_576,
                below: 1_048_576
            }
        );
        // Resumed at 160 of 200: nothing below 160 again.
        let resumed = [
            request("GET", "u1", 204, 160),
            request("PATCH", "u1", 202, 160),
            request("PATCH", "u1", 202, 176),
            request("PATCH", "u1", 202, 192),
            request("PUT", "u1", 201, 200),
        ];
        assert_eq!(
            chunk_bytes(&resumed, 160, 200),
            ChunkBytes { sent: 40, below: 0 }
        );
        // Started over in a new session: everything below 160 again (other sessions interleave).
        let restarted = [
            request("PATCH", "u2", 202, 0),
            request("PATCH", "other", 202, 0),
            request("PATCH", "u2", 202, 100),
            request("PUT", "u2", 201, 200),
            request("PUT", "other", 201, 7),
        ];
        assert_eq!(
            chunk_bytes(&restarted, 160, 200),
            ChunkBytes {
                sent: 207,
                below: 167
            }
        );
        // A last PATCH without a follower counts to the end.
        let open = [request("PATCH", "u3", 202, 150)];
        assert_eq!(
            chunk_bytes(&open, 160, 200),
            ChunkBytes {
                sent: 50,
                below: 10
            }
        );
    }
}
