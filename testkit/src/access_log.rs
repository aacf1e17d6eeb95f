//! What a distribution registry's access log (`log.level: info`, one combined-log-format line per
//! request) says it received: blob upload `PUT`s, manifest `PUT`s and `HEAD`s, every request on an
//! upload session with the offset its `_state` token carries, every request by its route kind
//! ([`Route`]: blob `HEAD`, mount `POST`, manifest `PUT`…), and when each request completed (to
//! the nanosecond, from the registry's own `response completed` lines). Tests and benchmarks use it
//! as evidence Ferry does not produce itself ("the layer crossed once", "a resync pushed nothing",
//! "a cold sync made this many requests"); benchmarks also time replication with the completion
//! times instead of polling the registry.
use std::collections::BTreeMap;

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
    logged_requests(log)
        .into_iter()
        .filter_map(|r| {
            let (_, uuid) = r.path.split_once("/blobs/uploads/")?;
            Some(UploadRequest {
                uuid: uuid.to_string(),
                status: r.status,
                offset: upload_state_offset(r.param("_state")?)?,
                digest: r
                    .param("digest")
                    .map(|d| d.replace("%3A", ":").replace("%3a", ":")),
                method: r.method,
            })
        })
        .filter(|u| !u.uuid.is_empty())
        .collect()
}

/// One request of the registry API (`/v2/…`) from a distribution access-log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string, without `?` (empty when there is none).
    pub query: String,
    pub status: u16,
}

impl LoggedRequest {
    /// The value of query parameter `name`, as sent (not URL-decoded).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
    }

    /// What the request does.
    pub fn route(&self) -> Route {
        Route::of(&self.method, &self.path, &self.query)
    }
}

/// Every request of the registry API in a distribution access log (`log.level: info`), in log
/// order; the log's other lines (start-up, `msg="…"` lines) are left out.
pub fn logged_requests(log: &str) -> Vec<LoggedRequest> {
    log.lines()
        .filter_map(|line| {
            // `127.0.0.1 - - [date] "PATCH /v2/r/blobs/uploads/<uuid>?_state=… HTTP/1.1" 202 0 "" "ua"`
            let (_, request) = line.split_once('"')?;
            let (request, rest) = request.split_once('"')?;
            let mut words = request.split_whitespace();
            let (method, target) = (words.next()?, words.next()?);
            if !words.next()?.starts_with("HTTP/") || !target.starts_with("/v2/") {
                return None;
            }
            let status = rest.split_whitespace().next()?.parse().ok()?;
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            Some(LoggedRequest {
                method: method.to_string(),
                path: path.to_string(),
                query: query.to_string(),
                status,
            })
        })
        .collect()
}

/// What a registry request does, by method and route of the distribution API. The order is the
/// order of a table of them (discovery, manifests, blobs, uploads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    /// `GET /v2/`: the version check, or a client learning how to authenticate.
    Base,
    Catalog,
    TagList,
    Referrers,
    ManifestHead,
    ManifestGet,
    ManifestPut,
    ManifestDelete,
    BlobHead,
    BlobGet,
    BlobDelete,
    /// `POST …/blobs/uploads/?mount=…`: a cross-repository mount (`201`), or a session instead (`202`).
    MountPost,
    /// `POST …/blobs/uploads/`: a new upload session.
    UploadPost,
    UploadPatch,
    /// `PUT …/blobs/uploads/<uuid>?digest=…`: completes an upload.
    UploadPut,
    /// `GET …/blobs/uploads/<uuid>`: a session's status.
    UploadGet,
    UploadDelete,
    Other,
}

impl Route {
    /// The route of `method path?query` on the distribution API.
    pub fn of(method: &str, path: &str, query: &str) -> Route {
        let rest = path.strip_prefix("/v2/").unwrap_or(path);
        if rest.is_empty() {
            return if method == "GET" {
                Route::Base
            } else {
                Route::Other
            };
        }
        if rest == "_catalog" {
            return Route::Catalog;
        }
        // The last route keyword wins: repository names may contain `blobs` or `manifests`.
        let kind = [
            "/manifests/",
            "/blobs/uploads",
            "/blobs/",
            "/tags/list",
            "/referrers/",
        ]
        .into_iter()
        .filter_map(|k| rest.rfind(k).map(|at| (at, k)))
        .max_by_key(|(at, k)| (*at, k.len()));
        match (kind.map(|(_, k)| k), method) {
            (Some("/manifests/"), "HEAD") => Route::ManifestHead,
            (Some("/manifests/"), "GET") => Route::ManifestGet,
            (Some("/manifests/"), "PUT") => Route::ManifestPut,
            (Some("/manifests/"), "DELETE") => Route::ManifestDelete,
            (Some("/blobs/uploads"), "POST")
                if query.split('&').any(|p| p.starts_with("mount=")) =>
            {
                Route::MountPost
            }
            (Some("/blobs/uploads"), "POST") => Route::UploadPost,
            (Some("/blobs/uploads"), "PATCH") => Route::UploadPatch,
            (Some("/blobs/uploads"), "PUT") => Route::UploadPut,
            (Some("/blobs/uploads"), "GET") => Route::UploadGet,
            (Some("/blobs/uploads"), "DELETE") => Route::UploadDelete,
            (Some("/blobs/"), "HEAD") => Route::BlobHead,
            (Some("/blobs/"), "GET") => Route::BlobGet,
            (Some("/blobs/"), "DELETE") => Route::BlobDelete,
            (Some("/tags/list"), "GET") => Route::TagList,
            (Some("/referrers/"), "GET") => Route::Referrers,
            _ => Route::Other,
        }
    }

    /// How a table names it.
    pub fn label(self) -> &'static str {
        match self {
            Route::Base => "GET /v2/ (version check, auth probe)",
            Route::Catalog => "catalog GET",
            Route::TagList => "tag list GET",
            Route::Referrers => "referrers GET",
            Route::ManifestHead => "manifest HEAD",
            Route::ManifestGet => "manifest GET",
            Route::ManifestPut => "manifest PUT",
            Route::ManifestDelete => "manifest DELETE",
            Route::BlobHead => "blob HEAD",
            Route::BlobGet => "blob GET",
            Route::BlobDelete => "blob DELETE",
            Route::MountPost => "blob mount POST",
            Route::UploadPost => "upload POST",
            Route::UploadPatch => "upload PATCH",
            Route::UploadPut => "upload PUT",
            Route::UploadGet => "upload status GET",
            Route::UploadDelete => "upload DELETE",
            Route::Other => "other",
        }
    }

    /// Requests about blobs: presence, reads, mounts and uploads.
    pub fn is_blob(self) -> bool {
        matches!(
            self,
            Route::BlobHead
                | Route::BlobGet
                | Route::BlobDelete
                | Route::MountPost
                | Route::UploadPost
                | Route::UploadPatch
                | Route::UploadPut
                | Route::UploadGet
                | Route::UploadDelete
        )
    }

    /// Requests about manifests (by tag or digest).
    pub fn is_manifest(self) -> bool {
        matches!(
            self,
            Route::ManifestHead | Route::ManifestGet | Route::ManifestPut | Route::ManifestDelete
        )
    }
}

/// How many requests of each route and status an access log shows.
pub fn route_counts(log: &str) -> BTreeMap<(Route, u16), usize> {
    let mut counts = BTreeMap::new();
    for r in logged_requests(log) {
        *counts.entry((r.route(), r.status)).or_default() += 1;
    }
    counts
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

    fn line(method: &str, target: &str, status: u16) -> String {
        format!(
            "127.0.0.1 - - [05/Dec/2026:09:00:00 +0000] \"{method} {target} HTTP/1.1\" {status} 0 \"\" \"ferry/0.1.0\""
        )
    }

    #[test]
    fn requests_are_classified_by_method_and_route() {
        let cases = [
            ("GET", "/v2/", Route::Base),
            ("GET", "/v2/_catalog?n=100", Route::Catalog),
            ("GET", "/v2/a/b/tags/list", Route::TagList),
            ("HEAD", "/v2/a/manifests/v1", Route::ManifestHead),
            ("PUT", "/v2/a/manifests/sha256:ab", Route::ManifestPut),
            ("HEAD", "/v2/a/blobs/sha256:ab", Route::BlobHead),
            (
                "POST",
                "/v2/a/blobs/uploads/?mount=sha256:ab&from=b",
                Route::MountPost,
            ),
            ("POST", "/v2/a/blobs/uploads/", Route::UploadPost),
            (
                "PATCH",
                "/v2/a/blobs/uploads/u?_state=x",
                Route::UploadPatch,
            ),
            (
                "PUT",
                "/v2/a/blobs/uploads/u?_state=x&digest=sha256%3Aab",
                Route::UploadPut,
            ),
            ("GET", "/v2/a/referrers/sha256:ab", Route::Referrers),
            // A repository named like a route keyword.
            ("HEAD", "/v2/manifests/blobs/sha256:ab", Route::BlobHead),
            ("GET", "/v2/blobs/tags/list", Route::TagList),
        ];
        let log: String = cases
            .iter()
            .map(|(m, t, _)| line(m, t, 200) + "\n")
            .chain(["time=\"x\" level=info msg=\"response completed\"\n".to_string()])
            .collect();
        let got: Vec<Route> = logged_requests(&log).iter().map(|r| r.route()).collect();
        let want: Vec<Route> = cases.iter().map(|(_, _, r)| *r).collect();
        assert_eq!(got, want);
        assert_eq!(route_counts(&log)[&(Route::BlobHead, 200)], 2);
    }

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
