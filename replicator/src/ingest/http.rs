//! The agent's HTTP surface: registry webhooks in, durable jobs out; plus health and metrics.
//!
//! # Routes
//! - `POST /v1/events/distribution[?registry=<name>]`: CNCF distribution notifications
//!   (`application/vnd.docker.distribution.events.v1+json`, `…v2+json`, or `application/json`).
//! - `POST /v1/events/harbor[?registry=<name>]`: Harbor webhooks, Default (`application/json`) or
//!   CloudEvents (`application/cloudevents+json`) payload format, either with a charset.
//! - `GET /healthz`: `200 ok` while the queue answers [`JobQueue::stats`], 503 otherwise.
//! - `GET /metrics`: Prometheus/OpenMetrics text (see [`super::metrics`]).
//!
//! `registry` names the configured registry (config `registries[].name`) the webhook comes from.
//! It may be omitted: the sender is then recognised from the hosts the body names
//! ([`super::origin`]: distribution's `target.url` and `request.host`, Harbor's `resource_url`,
//! matched against the registries' URLs; else the only registry that can be a source). When that
//! is ambiguous or unknown the answer is a 400 naming the candidates — unless the body holds no
//! event to act on (only pulls, blobs, scans...), which is acknowledged anyway so that a
//! registry's (head-of-line) delivery queue never blocks on it. A `registry` naming no configured
//! registry is always a 400. Configure distribution with:
//!
//! ```yaml
//! notifications:
//!   events: {includereferences: true}      # lets Ferry fold an index's child manifests
//!   endpoints:
//!     - name: ferry
//!       url: http://ferry-agent:8080/v1/events/distribution?registry=eu
//!       headers: {Authorization: [Bearer <token>]}
//!       timeout: 5s
//!       threshold: 5
//!       backoff: 1s
//!       ignoredmediatypes: [application/octet-stream]   # blob events: not needed
//! ```
//!
//! and a Harbor webhook policy with notify type `http`, endpoint
//! `http://ferry-agent:8080/v1/events/harbor?registry=harbor-eu`, auth header `Bearer <token>`
//! (or the bare token: Harbor sends its "Auth Header" field verbatim as `Authorization`).
//!
//! # Answers
//! - 200 `{"received", "events", "ignored", "jobs", "enqueued", "collapsed"}` **only after every
//!   job of the batch is durably enqueued** ([`JobQueue::enqueue`] returned `Ok`);
//! - 401 without a valid token (compared in constant time): `Authorization: Bearer <token>` on
//!   the distribution route — distribution's `headers` are written by the operator, so the scheme
//!   stays strict there — and `Bearer <token>` or the bare `<token>` on the Harbor route;
//! - 400 for an unknown `registry` parameter, a sender that cannot be recognised without one
//!   (`{"error", "param": "registry", "candidates"}`), or a body that does not parse (`{"error",
//!   "path"}` names the JSON path, also for a repository, tag or digest outside the grammar of
//!   [`crate::policy::namespace`]); 413 over the body limit (default 1 MiB) or over
//!   [`super::MAX_EVENTS_PER_REQUEST`] events (`path` names the array); 415 for another content
//!   type;
//! - 503 when the queue is unavailable, 500 for other queue errors: the registry re-sends, and
//!   jobs enqueued before the failure collapse with the re-sent ones.
//!
//! Note: distribution's notifier retries a failed POST forever, in order (head-of-line), while the
//! registry process lives; a body that Ferry rejects with 400 blocks that endpoint's queue until
//! the registry restarts or the agent accepts it. That is why ignored events are validated only as
//! far as needed to ignore them.
//!
//! Event times are clamped ([`TimeClamp`], `--max-clock-skew-seconds`) before anything reads them.
//!
//! # Tracing
//! Each request runs in a `webhook` span (a child of the request's `traceparent` header, if any);
//! every job it enqueues carries that span's W3C trace context ([`crate::runtime::telemetry`]).
//!
//! # Invariants
//! An [`IngestState`] cannot be built without a token unless unauthenticated access was asked for
//! explicitly; no request body makes a handler panic; no secret is ever logged.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Current;
use crate::tokens::TokenSet;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::StreamExt as _;
use serde_json::{json, Value};
use tracing::Instrument as _;

use super::harbor::HarborOptions;
use super::matcher::{Matcher, MatcherError};
use super::metrics::IngestMetrics;
use crate::runtime::ops::ProcessMetrics;
use crate::store::history::History;
// Assigned here (not by the queue) so that the webhook's log line names the job.
use super::origin::{Senders, Unrecognised};
use super::{distribution, harbor, json as body_json, Batch, EventSink, IngestError};
use crate::config::Config;
use crate::event::{Event, TimeClamp};
use crate::store::queue::{new_job_id, EnqueueOutcome};
use crate::store::StoreError;

/// Default request body limit: 1 MiB (a distribution batch is a few KiB per event).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// How long a client may take to send its body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an [`IngestState`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("no webhook token configured; set one (FERRY_WEBHOOK_TOKEN or --webhook-token-file) or allow unauthenticated webhooks explicitly")]
    NoToken,
    #[error("a webhook token is empty")]
    EmptyToken,
    #[error("the config is invalid:\n{0}")]
    InvalidConfig(String),
    #[error(transparent)]
    Matcher(#[from] MatcherError),
    #[error("{0}")]
    Tokens(String),
}

/// Everything the ingest routes share. Cheap to clone.
#[derive(Clone)]
pub struct IngestState {
    inner: Arc<Inner>,
}

struct Inner {
    /// Configured registries (the valid values of `?registry=`) and the sources of the current
    /// policies: who a webhook without `?registry=` comes from. Replaced with the matcher.
    senders: Current<Senders>,
    /// Replaced as a whole by [`IngestState::reload_policies`].
    matcher: Current<Matcher>,
    sink: EventSink,
    /// Accepted tokens (hashed, compared in constant time). Empty only when unauthenticated access
    /// was allowed.
    tokens: TokenSet,
    body_limit: usize,
    harbor: HarborOptions,
    /// Clamps event times before they reach the matcher, the ledger and the outbox.
    times: TimeClamp,
    metrics: Arc<IngestMetrics>,
    /// The process's registry (ingest's families and every other part's) for `/metrics`.
    process_metrics: Arc<ProcessMetrics>,
}

impl std::fmt::Debug for IngestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestState")
            .field(
                "registries",
                &self.inner.senders.get().names().collect::<Vec<_>>(),
            )
            .field("tokens", &self.inner.tokens.len())
            .field("body_limit", &self.inner.body_limit)
            .finish_non_exhaustive()
    }
}

/// Builds an [`IngestState`]; see [`IngestState::builder`].
pub struct IngestStateBuilder {
    config: Config,
    sink: EventSink,
    tokens: Vec<String>,
    allow_unauthenticated: bool,
    body_limit: usize,
    harbor: HarborOptions,
    times: TimeClamp,
    metrics_registry: Option<prometheus_client::registry::Registry>,
    /// Where `/metrics` counts the region's live workers (a daemon's history).
    live_workers: Option<Arc<dyn History>>,
}

impl IngestState {
    /// Starts building the state for `config` (registries and policies) and where accepted events
    /// go (a queue, or a region's queue, outbox and ledger).
    pub fn builder(config: Config, sink: impl Into<EventSink>) -> IngestStateBuilder {
        IngestStateBuilder {
            config,
            sink: sink.into(),
            tokens: Vec::new(),
            allow_unauthenticated: false,
            body_limit: DEFAULT_BODY_LIMIT,
            harbor: HarborOptions::default(),
            times: TimeClamp::default(),
            metrics_registry: None,
            live_workers: None,
        }
    }

    /// Matches events against `config`'s policies from now on (policies changed through the admin
    /// API); on error the old policies stay.
    pub fn reload_policies(&self, config: &Config) -> Result<(), MatcherError> {
        let matcher = Matcher::for_region(config, self.inner.sink.region())?;
        self.inner
            .senders
            .set(Senders::new(config, matcher.sources()));
        self.inner.matcher.set(matcher);
        Ok(())
    }

    /// The metrics the routes update (to register more or read them in tests).
    pub fn metrics(&self) -> &IngestMetrics {
        &self.inner.metrics
    }
}

impl IngestStateBuilder {
    /// Accepts `Authorization: Bearer <token>`. May be called several times (token rotation).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.tokens.push(token.into());
        self
    }

    /// Accepts webhooks without a token when none is configured. Off by default: without tokens,
    /// [`IngestStateBuilder::build`] fails.
    pub fn allow_unauthenticated(mut self, allow: bool) -> Self {
        self.allow_unauthenticated = allow;
        self
    }

    /// Largest accepted request body in bytes (default [`DEFAULT_BODY_LIMIT`]).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Options of the Harbor endpoint (Ferry's robot account to ignore).
    pub fn harbor_options(mut self, options: HarborOptions) -> Self {
        self.harbor = options;
        self
    }

    /// How far ahead of this process's clock an event time may be before it is clamped (default
    /// [`crate::event::DEFAULT_MAX_CLOCK_SKEW`]; see [`TimeClamp`]).
    pub fn max_clock_skew(mut self, skew: Duration) -> Self {
        self.times = TimeClamp::new(skew);
        self
    }

    /// Registers the ingest metrics in this registry instead of a fresh one, so that `/metrics`
    /// also exports what else the process registered there.
    pub fn metrics_registry(mut self, registry: prometheus_client::registry::Registry) -> Self {
        self.metrics_registry = Some(registry);
        self
    }

    /// Exports `ferry_live_workers` at `/metrics`, counted from the worker heartbeats in `history`
    /// (see [`ProcessMetrics::with_workers`]).
    pub fn live_workers(mut self, history: Arc<dyn History>) -> Self {
        self.live_workers = Some(history);
        self
    }

    pub fn build(self) -> Result<IngestState, SetupError> {
        if self.tokens.iter().any(String::is_empty) {
            return Err(SetupError::EmptyToken);
        }
        if self.tokens.is_empty() && !self.allow_unauthenticated {
            return Err(SetupError::NoToken);
        }
        let problems = self.config.validate();
        if !problems.is_empty() {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(SetupError::InvalidConfig(lines.join("\n")));
        }
        let matcher = Matcher::for_region(&self.config, self.sink.region())?;
        let mut registry = self.metrics_registry.unwrap_or_default();
        let metrics = IngestMetrics::register(&mut registry);
        let mut process_metrics = ProcessMetrics::new(registry);
        if let Some(history) = self.live_workers {
            process_metrics = process_metrics.with_workers(history);
        }
        Ok(IngestState {
            inner: Arc::new(Inner {
                senders: Current::new(Senders::new(&self.config, matcher.sources())),
                matcher: Current::new(matcher),
                sink: self.sink,
                tokens: TokenSet::new(&self.tokens),
                body_limit: self.body_limit,
                harbor: self.harbor,
                times: self.times,
                metrics: Arc::new(metrics),
                process_metrics: Arc::new(process_metrics),
            }),
        })
    }
}

/// Env var holding the webhook token when no token file is given.
pub const TOKEN_ENV: &str = "FERRY_WEBHOOK_TOKEN";

/// Webhook tokens from a file (one per line, blank lines ignored; several allow rotation) or, with
/// no file, from [`TOKEN_ENV`]. Empty when neither holds one.
pub fn load_tokens(file: Option<&std::path::Path>) -> Result<Vec<String>, SetupError> {
    crate::tokens::load(file, TOKEN_ENV, "webhook").map_err(SetupError::Tokens)
}

/// The ingest routes: webhooks, plus `/healthz` and `/metrics` ([`crate::runtime::ops::router`]).
pub fn router(state: IngestState) -> Router {
    let ops = crate::runtime::ops::router(
        state.inner.sink.queue.clone(),
        state.inner.process_metrics.clone(),
    );
    Router::new()
        .route("/v1/events/distribution", post(distribution_webhook))
        .route("/v1/events/harbor", post(harbor_webhook))
        .with_state(state)
        .merge(ops)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Distribution,
    Harbor,
}

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Endpoint::Distribution => "distribution",
            Endpoint::Harbor => "harbor",
        }
    }

    fn content_types(self) -> &'static [&'static str] {
        match self {
            Endpoint::Distribution => distribution::CONTENT_TYPES,
            Endpoint::Harbor => harbor::CONTENT_TYPES,
        }
    }

    /// The token an `Authorization` value presents: `Bearer <token>` on both routes, and on the
    /// Harbor route also the bare token (Harbor sends its "Auth Header" field verbatim).
    fn presented_token(self, authorization: &str) -> Option<&str> {
        match self {
            Endpoint::Distribution => crate::tokens::bearer(authorization),
            Endpoint::Harbor => crate::tokens::bearer_or_bare(authorization),
        }
    }

    fn token_hint(self) -> &'static str {
        match self {
            Endpoint::Distribution => "missing `Authorization: Bearer <token>` header",
            Endpoint::Harbor => "missing `Authorization` header: set the Harbor webhook's Auth Header to `Bearer <token>` (or the bare token)",
        }
    }

    /// The hosts a body names (see [`super::origin`]).
    fn senders(self, document: &Value) -> Vec<&str> {
        match self {
            Endpoint::Distribution => distribution::senders(document),
            Endpoint::Harbor => harbor::senders(document),
        }
    }
}

async fn distribution_webhook(
    State(state): State<IngestState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    webhook(&state, Endpoint::Distribution, query, &headers, body).await
}

async fn harbor_webhook(
    State(state): State<IngestState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    webhook(&state, Endpoint::Harbor, query, &headers, body).await
}

/// A rejected request: status plus a JSON body.
struct Reject {
    status: StatusCode,
    body: Value,
}

impl Reject {
    fn new(status: StatusCode, error: impl std::fmt::Display) -> Reject {
        Reject {
            status,
            body: json!({ "error": error.to_string() }),
        }
    }

    fn with(mut self, key: &str, value: Value) -> Reject {
        if let Some(map) = self.body.as_object_mut() {
            map.insert(key.to_string(), value);
        }
        self
    }
}

impl From<IngestError> for Reject {
    fn from(error: IngestError) -> Reject {
        let status = match &error {
            IngestError::TooLarge { .. } | IngestError::TooManyEvents { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngestError::ContentType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::Json { .. }
            | IngestError::Missing { .. }
            | IngestError::Invalid { .. }
            | IngestError::Body(_) => StatusCode::BAD_REQUEST,
        };
        let reject = Reject::new(status, &error);
        match error.path() {
            Some(path) => reject.with("path", json!(path)),
            None => reject,
        }
    }
}

async fn webhook(
    state: &IngestState,
    endpoint: Endpoint,
    query: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    // One span per request: its trace context is what the jobs carry to the workers.
    let span = tracing::info_span!(
        "webhook",
        endpoint = endpoint.label(),
        status = tracing::field::Empty
    );
    if let Some(traceparent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        crate::runtime::telemetry::set_parent(&span, traceparent);
    }
    let handled = handle(state, endpoint, query, headers, body)
        .instrument(span.clone())
        .await;
    let (status, body, extra_headers) = match handled {
        Ok(summary) => (StatusCode::OK, summary, None),
        Err(reject) => {
            let www_authenticate = (reject.status == StatusCode::UNAUTHORIZED)
                .then(|| HeaderValue::from_static(r#"Bearer realm="ferry""#));
            (reject.status, reject.body, www_authenticate)
        }
    };
    span.record("status", status.as_u16());
    state
        .inner
        .metrics
        .request(endpoint.label(), status.as_u16());
    if !status.is_success() {
        tracing::debug!(endpoint = endpoint.label(), status = status.as_u16(), reason = %body, "webhook rejected");
    }
    let mut response = (status, Json(body)).into_response();
    if let Some(value) = extra_headers {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

async fn handle(
    state: &IngestState,
    endpoint: Endpoint,
    query: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, Reject> {
    let inner = &state.inner;
    authenticate(inner, endpoint, headers)?;
    let senders = inner.senders.get();
    let named = registry_param(&senders, query.as_deref())?;
    check_content_type(headers, endpoint.content_types())?;
    let bytes = read_body(headers, body, inner.body_limit).await?;
    let document = body_json::parse(&bytes)?;
    let (registry, mut batch) = read_batch(inner, &senders, endpoint, named, &document)?;
    for event in &mut batch.events {
        inner.times.apply(event);
    }
    enqueue_batch(inner, &registry, batch).await
}

/// The sending registry (named by `?registry=`, else recognised from the body) and the body's
/// batch. A sender that cannot be recognised is a 400 only when the batch holds events to act on:
/// the body is parsed first, so a malformed body is answered with its JSON path either way.
fn read_batch(
    inner: &Inner,
    senders: &Senders,
    endpoint: Endpoint,
    named: Option<String>,
    document: &Value,
) -> Result<(String, Batch), Reject> {
    let sender = match named {
        Some(name) => Ok(name),
        None => recognise(senders, endpoint, document),
    };
    let label = sender.as_deref().unwrap_or(UNRECOGNISED);
    let now = crate::clock::now_ms;
    let batch = match endpoint {
        Endpoint::Distribution => distribution::parse_document(document, label, now)?,
        Endpoint::Harbor => harbor::parse_document(document, label, &inner.harbor, now)?,
    };
    match sender {
        Ok(registry) => Ok((registry, batch)),
        // Nothing to act on: acknowledged, so the registry's delivery queue moves on.
        Err(_) if batch.events.is_empty() => Ok((UNRECOGNISED.to_string(), batch)),
        Err(reject) => Err(reject),
    }
}

fn authenticate(inner: &Inner, endpoint: Endpoint, headers: &HeaderMap) -> Result<(), Reject> {
    if inner.tokens.is_empty() {
        return Ok(());
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| endpoint.presented_token(v))
        .ok_or_else(|| Reject::new(StatusCode::UNAUTHORIZED, endpoint.token_hint()))?;
    if inner.tokens.accepts(presented) {
        Ok(())
    } else {
        Err(Reject::new(
            StatusCode::UNAUTHORIZED,
            "invalid bearer token",
        ))
    }
}

/// The registry `?registry=` names: `None` when absent (the sender is then recognised from the
/// body), a 400 when it names no configured registry.
fn registry_param(senders: &Senders, query: Option<&str>) -> Result<Option<String>, Reject> {
    let value = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "registry")
            .map(|(_, v)| v.into_owned())
    });
    match value {
        Some(name) if !senders.contains(&name) => Err(Reject::new(
            StatusCode::BAD_REQUEST,
            format!(
                "query parameter `registry`: {name:?} is not a configured registry (one of: {})",
                senders.names().collect::<Vec<_>>().join(", ")
            ),
        )
        .with("param", json!("registry"))),
        other => Ok(other),
    }
}

/// `registry` label of what arrived without `?registry=` from a sender that could not be
/// recognised (acknowledged only when it holds nothing to act on).
const UNRECOGNISED: &str = "unrecognised";

/// The registry that sent `document`, recognised from the hosts it names; a 400 naming the
/// candidates otherwise.
fn recognise(senders: &Senders, endpoint: Endpoint, document: &Value) -> Result<String, Reject> {
    match senders.recognise(endpoint.senders(document)) {
        Ok(recognised) => {
            tracing::debug!(
                endpoint = endpoint.label(),
                registry = recognised.registry(),
                by = recognised.how(),
                "webhook without `registry` parameter; sender recognised"
            );
            Ok(recognised.registry().to_string())
        }
        Err(unrecognised) => Err(unrecognised_reject(&unrecognised)),
    }
}

fn unrecognised_reject(unrecognised: &Unrecognised) -> Reject {
    Reject::new(StatusCode::BAD_REQUEST, unrecognised)
        .with("param", json!("registry"))
        .with("candidates", json!(unrecognised.candidates()))
}

fn check_content_type(headers: &HeaderMap, accepted: &[&str]) -> Result<(), IngestError> {
    let found = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let essence = found
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if accepted.contains(&essence.as_str()) {
        Ok(())
    } else {
        Err(IngestError::ContentType {
            found,
            expected: accepted.join(", "),
        })
    }
}

/// Reads the body up to `limit` bytes.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, IngestError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngestError::TooLarge { limit });
    }
    let read = async {
        let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| IngestError::Body(e.to_string()))?;
            if buf.len() + chunk.len() > limit {
                return Err(IngestError::TooLarge { limit });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    tokio::time::timeout(BODY_READ_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err(IngestError::Body(format!(
                "not received within {} s",
                BODY_READ_TIMEOUT.as_secs()
            )))
        })
}

/// The answer when part of a batch could not be stored (the registry re-sends the batch).
fn store_failed(
    inner: &Inner,
    registry: &str,
    kind: &str,
    error: &StoreError,
    stored_before: u64,
) -> Reject {
    inner.metrics.event(registry, kind, "queue_unavailable");
    let status = match error {
        StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        StoreError::Corrupt(_) | StoreError::LeaseLost { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Reject::new(status, error).with("enqueued_before_failure", json!(stored_before))
}

/// How many jobs a batch produced, and what the queue did with them.
#[derive(Default)]
struct Tally {
    jobs: u64,
    enqueued: u64,
    collapsed: u64,
}

impl Tally {
    /// Jobs the queue holds so far (enqueued or collapsed into a pending one).
    fn stored(&self) -> u64 {
        self.enqueued + self.collapsed
    }
}

/// Matches every event, enqueues every job, stores what other regions need, and summarizes;
/// fails on the first queue error.
async fn enqueue_batch(inner: &Inner, registry: &str, batch: Batch) -> Result<Value, Reject> {
    let metrics = &inner.metrics;
    for ignored in &batch.ignored {
        metrics.event(registry, ignored.kind, ignored.reason.as_str());
    }
    let mut tally = Tally::default();
    let traceparent = crate::runtime::telemetry::current_traceparent();
    // One policy set for the whole batch.
    let matcher = inner.matcher.get();
    for event in &batch.events {
        let kind = event.kind.as_str();
        let route = matcher.route(event);
        if route.jobs.is_empty() && route.forward.is_empty() {
            tracing::debug!(
                registry,
                repository = %event.repository,
                tag = event.tag.as_deref(),
                digest = event.digest.as_deref(),
                kind,
                "event matches no policy"
            );
            metrics.event(registry, kind, "unmatched");
            continue;
        }
        for mut job in route.jobs {
            tally.jobs += 1;
            job.id = new_job_id();
            job.traceparent.clone_from(&traceparent);
            let job_id = job.id.clone();
            let policy = job.policy.clone();
            let outcome = inner.sink.queue.enqueue(job).await;
            record_enqueue(
                inner, registry, event, &policy, &job_id, outcome, &mut tally,
            )?;
        }
        relay_event(inner, registry, &matcher, event, &route.forward, &tally).await?;
        metrics.event(registry, kind, "matched");
    }
    tracing::debug!(
        registry,
        received = batch.received,
        events = batch.events.len(),
        ignored = batch.ignored.len(),
        jobs = tally.jobs,
        enqueued = tally.enqueued,
        collapsed = tally.collapsed,
        "webhook batch accepted"
    );
    Ok(json!({
        "received": batch.received,
        "events": batch.events.len(),
        "ignored": batch.ignored.len(),
        "jobs": tally.jobs,
        "enqueued": tally.enqueued,
        "collapsed": tally.collapsed,
    }))
}

/// Logs and counts what the queue did with one job of `event`; a queue error becomes the answer.
fn record_enqueue(
    inner: &Inner,
    registry: &str,
    event: &Event,
    policy: &str,
    job_id: &str,
    outcome: Result<EnqueueOutcome, StoreError>,
    tally: &mut Tally,
) -> Result<(), Reject> {
    let kind = event.kind.as_str();
    match outcome {
        Ok(EnqueueOutcome::Enqueued) => {
            tally.enqueued += 1;
            tracing::info!(
                registry,
                policy = %policy,
                repository = %event.repository,
                tag = event.tag.as_deref(),
                digest = event.digest.as_deref(),
                job_id = %job_id,
                kind,
                "job enqueued"
            );
            Ok(())
        }
        Ok(EnqueueOutcome::Collapsed) => {
            tally.collapsed += 1;
            tracing::debug!(
                registry,
                policy = %policy,
                repository = %event.repository,
                tag = event.tag.as_deref(),
                digest = event.digest.as_deref(),
                kind,
                "job collapsed into a pending one"
            );
            Ok(())
        }
        Err(error) => {
            tracing::warn!(
                registry,
                policy = %policy,
                repository = %event.repository,
                tag = event.tag.as_deref(),
                digest = event.digest.as_deref(),
                error = %error,
                "cannot enqueue job; the registry will re-send the batch"
            );
            Err(store_failed(inner, registry, kind, &error, tally.stored()))
        }
    }
}

/// Stores what other regions (and the tag ledger) need of `event`; a queue error becomes the
/// answer.
async fn relay_event(
    inner: &Inner,
    registry: &str,
    matcher: &Matcher,
    event: &Event,
    forward: &BTreeSet<String>,
    tally: &Tally,
) -> Result<(), Reject> {
    if let Err(error) = inner.sink.relay(matcher, event, forward).await {
        tracing::warn!(
            registry,
            repository = %event.repository,
            tag = event.tag.as_deref(),
            digest = event.digest.as_deref(),
            regions = ?forward,
            error = %error,
            "cannot store the event for other regions; the registry will re-send the batch"
        );
        return Err(store_failed(
            inner,
            registry,
            event.kind.as_str(),
            &error,
            tally.stored(),
        ));
    }
    if !forward.is_empty() {
        tracing::info!(
            registry,
            repository = %event.repository,
            tag = event.tag.as_deref(),
            digest = event.digest.as_deref(),
            regions = ?forward,
            "event queued for forwarding"
        );
    }
    Ok(())
}

impl crate::catalog::Reload for IngestState {
    fn what(&self) -> &'static str {
        "webhook matching"
    }

    fn reload(&self, config: &Config, _: &crate::replicate::Registries) -> Result<(), String> {
        self.reload_policies(config).map_err(|e| e.to_string())
    }
}
