//! What a distribution registry's access log (`log.level: info`, one combined-log-format line per
//! request) says it received: blob upload `PUT`s, manifest `PUT`s and `HEAD`s and every request on an upload
//! session with the offset its `_state` token carries. Tests use it as evidence Ferry does not
//! produce itself ("the layer crossed once", "a resync pushed nothing").
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
