//! What a distribution registry's access log (`log.level: info`, one combined-log-format line per
//! request) says it received: blob upload `PUT`s, manifest `PUT`s and `HEAD`s and every request on an upload
//! session with the offset its `_state` token carries, and when each request completed (to the
//! nanosecond, from the registry's own `response completed` lines). Tests use it as evidence Ferry
//! does not produce itself ("the layer crossed once", "a resync pushed nothing"); benchmarks use
//! the completion times to time replication without polling the registry.
use base64::Engine as _;

/// How many blob upload `PUT`s (the request that completes an upload) a registry's access log
/// shows. Needs the registry at `log_level: "info"`, which writes one combined-log-format line
/// per request: `127.0.0.1 - - [...] "PUT /v2/<repo>/blobs/uploads/<uuid>?...digest=... HTTP/1.1" 201 ...`.
pub fn blob_upload_puts(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("\"PUT /v2/") && l.contains("/blobs/uploads/"))
        .count()
}

/// How many upload-completing `PUT`s of blob `digest` a registry's access log shows (the digest
/// parameter may be URL-encoded, `sha256%3A<hex>`, so the hex part is matched).
pub fn blob_upload_puts_of(log: &str, digest: &str) -> usize {
    let hex = digest.trim_start_matches("sha256:");
    log.lines()
        .filter(|l| l.contains("\"PUT /v2/") && l.contains("/blobs/uploads/") && l.contains(hex))
        .count()
}

/// How many manifest `PUT`s of `repo:reference` a registry's access log shows (log level `info`).
pub fn manifest_puts(log: &str, repo: &str, reference: &str) -> usize {
    let request = format!("\"PUT /v2/{repo}/manifests/{reference} ");
    log.lines().filter(|l| l.contains(&request)).count()
}

/// How many manifest `HEAD`s of `repo:reference` a registry's access log shows (log level `info`).
pub fn manifest_heads(log: &str, repo: &str, reference: &str) -> usize {
    let request = format!("\"HEAD /v2/{repo}/manifests/{reference} ");
    log.lines().filter(|l| l.contains(&request)).count()
}

/// How many manifest `PUT`s (any repository, tag or digest) a registry's access log shows.
pub fn all_manifest_puts(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("\"PUT /v2/") && l.contains("/manifests/"))
        .count()
}

/// One request on an upload session, from a distribution access-log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadRequest {
    pub method: String,
    /// The session's UUID.
    pub uuid: String,
    pub status: u16,
    /// The upload offset the request's `_state` token carries: where a `PATCH` starts, the bytes a
    /// `GET`/`PUT`/`DELETE` finds.
    pub offset: u64,
    /// The `digest` query parameter (completing `PUT`s), URL-decoded.
    pub digest: Option<String>,
}

/// The upload offset in distribution's `_state` token: URL-escaped base64url of a 32-byte HMAC
/// followed by `{"Name":…,"UUID":…,"Offset":N,"StartedAt":…}`. `None` when it is not one.
pub fn upload_state_offset(state: &str) -> Option<u64> {
    let unescaped = state.replace("%3D", "=").replace("%3d", "=");
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(unescaped.as_bytes())
        .ok()?;
    let json: serde_json::Value = serde_json::from_slice(raw.get(32..)?).ok()?;
    json["Offset"].as_u64()
}

/// Every request on an upload session (`/v2/<repo>/blobs/uploads/<uuid>?_state=…`) in a
/// distribution access log (`log.level: info`), in log order.
pub fn upload_requests(log: &str) -> Vec<UploadRequest> {
    log.lines()
        .filter_map(|line| {
            // `… "PATCH /v2/r/blobs/uploads/<uuid>?_state=…&digest=… HTTP/1.1" 202 0 "" "ua"`
            let (_, request) = line.split_once('"')?;
            let (request, rest) = request.split_once('"')?;
            let mut words = request.split_whitespace();
            let (method, target) = (words.next()?, words.next()?);
            let status = rest.split_whitespace().next()?.parse().ok()?;
            let (path, query) = target.split_once('?')?;
            let (_, uuid) = path.split_once("/blobs/uploads/")?;
            let param = |name: &str| {
                query
                    .split('&')
                    .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
            };
            Some(UploadRequest {
                method: method.to_string(),
                uuid: uuid.to_string(),
                status,
                offset: upload_state_offset(param("_state")?)?,
                digest: param("digest").map(|d| d.replace("%3A", ":").replace("%3a", ":")),
            })
        })
        .collect()
}

/// A request a distribution registry answered, from its `response completed` line (log level
/// `info`; logrus text format with RFC 3339 nanosecond timestamps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedRequest {
    /// When the registry finished answering (its `time=` field).
    pub at: chrono::DateTime<chrono::Utc>,
    pub method: String,
    /// The request target (`http.request.uri`), e.g. `/v2/team/app/manifests/v1`.
    pub uri: String,
    pub status: u16,
}

impl CompletedRequest {
    /// `(repository, reference)` when this is a request on `/v2/<repository>/manifests/<reference>`.
    pub fn manifest(&self) -> Option<(&str, &str)> {
        let path = self.uri.split('?').next()?.strip_prefix("/v2/")?;
        let (repository, reference) = path.rsplit_once("/manifests/")?;
        (!repository.is_empty() && !reference.is_empty()).then_some((repository, reference))
    }
}

/// Every `response completed` line of a distribution log, in log order. Lines of another kind
/// (the combined-format access lines, errors) and lines cut short are skipped, so a benchmark may
/// read a log that is still being written.
pub fn completed_requests(log: &str) -> Vec<CompletedRequest> {
    log.lines().filter_map(completed_request).collect()
}

/// One `time="…" level=info msg="response completed" … http.request.method=PUT
/// http.request.uri=/v2/… http.response.status=201 …` line.
fn completed_request(line: &str) -> Option<CompletedRequest> {
    if !line.contains("msg=\"response completed\"") {
        return None;
    }
    let at = chrono::DateTime::parse_from_rfc3339(logrus_field(line, "time")?).ok()?;
    Some(CompletedRequest {
        at: at.with_timezone(&chrono::Utc),
        method: logrus_field(line, "http.request.method")?.to_string(),
        uri: logrus_field(line, "http.request.uri")?.to_string(),
        status: logrus_field(line, "http.response.status")?.parse().ok()?,
    })
}

/// The value of `key=value` or `key="value"` in a logrus text line (values with `"` inside are
/// not unescaped: none of the fields read here has one).
fn logrus_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = line;
    loop {
        let at = rest.find(key)?;
        let before = rest[..at].chars().next_back();
        let after = &rest[at + key.len()..];
        if matches!(before, None | Some(' ')) {
            if let Some(value) = after.strip_prefix('=') {
                return match value.strip_prefix('"') {
                    Some(quoted) => quoted.split('"').next(),
                    None => value.split(' ').next(),
                };
            }
        }
        rest = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"time="2026-12-05T09:25:07.860018111Z" level=info msg="response completed" go.version=go1.19.8 http.request.contenttype=application/vnd.oci.image.manifest.v1+json http.request.host="127.0.0.1:5871" http.request.id=a54f0d4b http.request.method=PUT http.request.remoteaddr="127.0.0.1:58208" http.request.uri=/v2/a/b/manifests/t1 http.request.useragent=curl/7.88.1 http.response.duration=13.227503ms http.response.status=201 http.response.written=0"#;

    #[test]
    fn a_response_completed_line_gives_time_method_uri_and_status() {
        let log = format!(
            "{LINE}\n127.0.0.1 - - [05/Dec/2026:09:25:07 +0000] \"PUT /v2/a/b/manifests/t1 HTTP/1.1\" 201 0 \"\" \"curl/7.88.1\"\n{}",
            &LINE[..60]
        );
        let requests = completed_requests(&log);
        assert_eq!(
            requests.len(),
            1,
            "the access line and the cut line are skipped"
        );
        let r = &requests[0];
        assert_eq!(r.method, "PUT");
        assert_eq!(r.status, 201);
        assert_eq!(r.manifest(), Some(("a/b", "t1")));
        assert_eq!(
            r.at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "2026-12-05T09:25:07.860018111Z"
        );
    }

    #[test]
    fn quoted_values_and_blob_requests_are_read_but_are_not_manifests() {
        let line = LINE
            .replace("http.request.method=PUT", "http.request.method=HEAD")
            .replace(
                "http.request.uri=/v2/a/b/manifests/t1",
                r#"http.request.uri="/v2/a/b/blobs/sha256:ab?x=1 2""#,
            );
        let r = completed_request(&line).expect("parsed");
        assert_eq!(r.method, "HEAD");
        assert_eq!(r.uri, "/v2/a/b/blobs/sha256:ab?x=1 2");
        assert_eq!(r.manifest(), None);
    }
}
