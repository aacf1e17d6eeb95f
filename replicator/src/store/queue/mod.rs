//! The job queue between agents and workers.
//!
//! One trait per concern, so each part of Ferry depends only on what it uses: [`JobQueue`] (jobs:
//! enqueue, claim, renew, ack, fail, release, stats), [`DeadLetters`], [`BlobLeases`],
//! [`ManifestLeases`], [`Pauses`] (paused policies and parked jobs) and [`Checkpoints`] (upload
//! checkpoints). Every backend implements all six on one struct ([`QueueBackend`]), so they share
//! one state.
//!
//! # Contract (every backend; `tests/queue_conformance.rs` runs one suite against all)
//! - **Durable enqueue**: [`JobQueue::enqueue`] returns only after the job is stored (Redis: the
//!   write is acknowledged; AOF makes it survive a restart). An agent answers a registry 2xx only
//!   after it returned `Ok`.
//! - **Collapsing**: while a job with the same [`Job::idempotency_key`] is pending (enqueued, not yet
//!   claimed), another enqueue of that key is collapsed into it. Once claimed, a new enqueue creates
//!   a new job (the running one may have read the source before the change).
//! - **At-least-once, leased**: [`JobQueue::claim`] hands a job to one consumer with a lease. A job
//!   whose lease expires (worker died or hung) is handed out again. [`JobQueue::ack`] removes it
//!   for good — only after the destination confirmed.
//! - **Retries**: [`JobQueue::fail`] with a retryable error reschedules the job after a capped,
//!   jittered exponential backoff, recording `attempt`, `last_error` and `next_try_at_ms` on it;
//!   after `max_attempts` (or a permanent error) it moves to the dead-letter list.
//! - **Blob leases**: [`BlobLeases::lease_blob`] makes one holder the mover of a `(destination,
//!   digest)` so concurrent jobs move a shared layer once.
//! - **Manifest leases**: [`ManifestLeases::lease_manifest`] makes one holder the writer of a
//!   `(destination, repository, digest)` manifest (exclusive, expiring, renewed and released by its
//!   holder only), so an index's child that also has its own job is `PUT` once.
//! - **Upload checkpoints**: [`Checkpoints::checkpoint`] stores, per `(destination, digest)`, where
//!   a chunked upload of the job stands ([`UploadCheckpoint`]: session URL, confirmed offset, hash
//!   state). Only the lease holder writes; checkpoints stay with the job through lease expiry and
//!   reclaim, retries, release and parking, and are deleted when the job is acked or dead-lettered.
//! - **Pausing**: while a policy is paused ([`Pauses::set_paused`]), workers [`Pauses::park`]
//!   its jobs instead of running them; parking checks the flag in the same atomic step, so a job
//!   is never parked after the policy was resumed, and [`Pauses::unpark`] (called on resume,
//!   after the flag is cleared) moves every parked job back to the queue, collapsing duplicates.
//!
//! Backends: [`MemoryQueue`] (in-process, for `ferry serve` without `--redis`) and [`RedisQueue`]
//! (Redis/Valkey Streams with a consumer group; its module doc has the key layout and lease
//! semantics). [`crate::backoff`] computes retry delays for both.
//! [`crate::store::Store`] hands the five views of one backend to the parts that need them.

mod lifecycle;
pub use lifecycle::new_job_id;
pub mod memory;
pub mod redis;

pub use self::memory::MemoryQueue;
pub use self::redis::RedisQueue;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::EventKind;
use crate::store::{StartedBy, StoreError};

/// One unit of work: make `repository:reference` on the policy's destinations match the source
/// (or apply a delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Unique id, assigned by the queue on enqueue when empty.
    #[serde(default)]
    pub id: String,
    pub policy: String,
    pub kind: EventKind,
    /// Source repository.
    pub repository: String,
    /// Tag or digest.
    pub reference: String,
    /// For deletes: the digest that was deleted (the destination is touched only if it still holds
    /// this digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Event time (Unix ms) of the change that caused this job; lag is measured from it.
    pub event_time_ms: i64,
    /// Id of the event that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Attempts made so far (0 before the first run).
    #[serde(default)]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Not runnable before this time (Unix ms); 0 = now.
    #[serde(default)]
    pub next_try_at_ms: i64,
    /// When it was first enqueued (Unix ms).
    #[serde(default)]
    pub enqueued_at_ms: i64,
    /// W3C trace context carried from the event to the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// What caused the job (recorded on its execution).
    #[serde(default)]
    pub trigger: StartedBy,
    /// The run this job is a task of (manual and scheduled runs); `None`: the job is an execution
    /// of its own, with the job id as execution id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// Registry the job reads from when it is not the policy's `src_registry`: the destination of
    /// a bidirectional policy, whose changes flow back to the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Region whose agent accepted the event (conflicts between regions tie-break on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_region: Option<String>,
    /// The job belongs to a bidirectional policy, in either direction: it is decided by its event
    /// (`crate::regions::conflict`), so it never collapses with a job announcing another digest
    /// or none ([`Job::idempotency_key`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bidirectional: bool,
}

impl Job {
    /// A new job (not yet enqueued) with no history.
    pub fn new(policy: &str, kind: EventKind, repository: &str, reference: &str) -> Job {
        Job {
            id: String::new(),
            policy: policy.to_string(),
            kind,
            repository: repository.to_string(),
            reference: reference.to_string(),
            digest: None,
            event_time_ms: 0,
            event_id: None,
            attempt: 0,
            last_error: None,
            next_try_at_ms: 0,
            enqueued_at_ms: 0,
            traceparent: None,
            trigger: StartedBy::EventBased,
            execution_id: None,
            source: None,
            origin_region: None,
            bidirectional: false,
        }
    }

    /// The execution this job's work is recorded under.
    pub fn execution(&self) -> &str {
        self.execution_id.as_deref().unwrap_or(&self.id)
    }

    /// `policy|kind|repository|reference` (plus `|from=<registry>` for the jobs of a bidirectional
    /// policy flowing back from its destination, `|digest=<announced digest>` for a bidirectional
    /// job whose event names one, and `|execution` for a run's jobs, which must not fold into an
    /// event's job or another run's): duplicate pending jobs collapse on it.
    ///
    /// Unambiguous by construction: every part is escaped with [`key_part`] (`%`, `|`, `=` and
    /// control characters become `%XX`), so a part can never contain a separator or pass for the
    /// `from=` part, and two different jobs never share a key whatever their names hold. Ordinary
    /// names contain none of those characters and read unchanged.
    pub fn idempotency_key(&self) -> String {
        let kind = self.kind.as_str();
        let mut key = format!(
            "{}|{kind}|{}|{}",
            key_part(&self.policy),
            key_part(&self.repository),
            key_part(&self.reference)
        );
        if let Some(source) = &self.source {
            key = format!("{key}|from={}", key_part(source));
        }
        // A bidirectional job is decided by its event — the digest it announces and its time
        // (`regions::conflict`) — so two events announcing different contents are two decisions:
        // folded into one, the later event was lost (found by the chaos oracle, seed 0x2a, in
        // both directions) and so would be an event folded into a safety-net job, which has none.
        if self.bidirectional {
            if let Some(digest) = &self.digest {
                key = format!("{key}|digest={}", key_part(digest));
            }
        }
        match &self.execution_id {
            Some(run) => format!("{key}|{}", key_part(run)),
            None => key,
        }
    }
}

/// One part of an idempotency key: `%`, `|`, `=` and control characters percent-escaped (`%25`,
/// `%7C`, `%3D`, `%0A`, …); everything else as is.
fn key_part(part: &str) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| matches!(c, '%' | '|' | '=') || c.is_control();
    if !part.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(part);
    }
    let mut out = String::with_capacity(part.len() + 8);
    for c in part.chars() {
        if escaped(c) {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Where a job's chunked upload of one blob to one destination stands, so whoever runs the job next
/// (this worker after a transient error, another one after a crash) continues the upload instead
/// of starting over. Saved after every chunk the destination confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadCheckpoint {
    /// Destination registry (its config name).
    pub destination: String,
    /// Destination repository the upload session belongs to.
    pub repository: String,
    /// The blob being uploaded.
    pub digest: String,
    /// The blob's size (a checkpoint is used only for the same blob).
    pub size: u64,
    /// The upload session URL as the destination last returned it (`Location`, which may carry
    /// the registry's signed session state).
    pub location: String,
    /// Bytes the destination confirmed (`Range` of its last `PATCH` answer).
    pub offset: u64,
    /// The blob hash over those `offset` bytes ([`crate::oci::DigestVerifier::save`]), so the final
    /// digest check covers the whole blob without reading the prefix again.
    pub hash_state: String,
}

/// A claimed job and the proof of the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job: Job,
    /// Backend-specific handle (Redis: the stream entry id).
    pub token: String,
    pub consumer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueOutcome {
    Enqueued,
    /// An identical pending job exists; this one was folded into it.
    Collapsed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailOutcome {
    /// Will run again at this time (Unix ms).
    Retry {
        next_try_at_ms: i64,
    },
    DeadLettered,
}

/// What an operator alerts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Jobs waiting (ready or delayed), not claimed.
    pub depth: u64,
    /// Jobs claimed and not yet acked.
    pub in_flight: u64,
    /// Of `depth`, those waiting for a retry time.
    pub delayed: u64,
    pub dead_letters: u64,
    /// Age of the oldest waiting job (ms), 0 when none.
    pub oldest_age_ms: u64,
}

/// The jobs themselves: enqueue, claim under a lease, settle. Object-safe so binaries pick the
/// backend at run time.
#[async_trait::async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Stores a job durably (see the module contract for collapsing). Assigns `id` and
    /// `enqueued_at_ms` when empty/zero.
    async fn enqueue(&self, job: Job) -> Result<EnqueueOutcome, StoreError>;

    /// Up to `max` runnable jobs for `consumer`, each leased for `lease`: expired leases of other
    /// consumers first, then due retries, then new jobs. Returns quickly (may be empty); callers poll.
    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Lease>, StoreError>;

    /// Extends a lease (heartbeat of a long transfer). `LeaseLost` if it was reclaimed meanwhile.
    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<(), StoreError>;

    /// The job is done: remove it for good.
    async fn ack(&self, lease: &Lease) -> Result<(), StoreError>;

    /// The job failed: reschedule with backoff (`retryable` and attempts left) or dead-letter it.
    /// A rescheduled job keeps its upload checkpoints ([`Checkpoints::checkpoint`]) for the next
    /// attempt; a dead-lettered one loses them.
    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        retryable: bool,
    ) -> Result<FailOutcome, StoreError>;

    /// Gives a job back without counting an attempt (graceful shutdown).
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;

    async fn stats(&self) -> Result<QueueStats, StoreError>;
}

/// Jobs that failed for good, as the admin API shows and retries them.
#[async_trait::async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    /// Dead-lettered jobs, oldest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// Moves a dead-lettered job back to the queue with its attempts reset. False if unknown.
    async fn retry_dead_letter(&self, job_id: &str) -> Result<bool, StoreError>;

    /// Deletes all dead letters; returns how many.
    async fn purge_dead_letters(&self) -> Result<u64, StoreError>;
}

/// One mover per `(destination, digest)` among every worker of a region (also a lock with expiry:
/// the scheduler's tick and the safety net take a lease on a key of their own).
#[async_trait::async_trait]
pub trait BlobLeases: Send + Sync + 'static {
    /// Tries to become the one mover of `digest` to `destination` for `ttl`. True when acquired.
    async fn lease_blob(
        &self,
        destination: &str,
        digest: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Extends a blob lease `holder` still holds, to `ttl` from now. False when it expired or is
    /// someone else's (a long transfer renews its lease while it runs).
    async fn renew_blob(
        &self,
        destination: &str,
        digest: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Who holds the lease of `(destination, digest)`, if anyone (a waiting job learns where the
    /// blob is being uploaded, to mount it from there).
    async fn blob_lease_holder(
        &self,
        destination: &str,
        digest: &str,
    ) -> Result<Option<String>, StoreError>;

    /// Releases a blob lease held by `holder` (no-op if it expired or is someone else's).
    async fn release_blob(
        &self,
        destination: &str,
        digest: &str,
        holder: &str,
    ) -> Result<(), StoreError>;
}

/// One writer per manifest `(destination, repository, digest)` among every worker of a region, so
/// a manifest two jobs need at once (an index's child that also has its own event) is written
/// once: the holder checks the destination and writes, the other waits, then finds it present.
/// Same semantics as [`BlobLeases`] (exclusive, not re-entrant, expiring, renewed and released
/// only by their holder); the namespaces are separate.
#[async_trait::async_trait]
pub trait ManifestLeases: Send + Sync + 'static {
    /// Tries to become the one writer of `repository@digest` on `destination` for `ttl`. True
    /// when acquired.
    async fn lease_manifest(
        &self,
        destination: &str,
        repository: &str,
        digest: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Extends a manifest lease `holder` still holds, to `ttl` from now. False when it expired or
    /// is someone else's.
    async fn renew_manifest(
        &self,
        destination: &str,
        repository: &str,
        digest: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Releases a manifest lease held by `holder` (no-op if it expired or is someone else's).
    async fn release_manifest(
        &self,
        destination: &str,
        repository: &str,
        digest: &str,
        holder: &str,
    ) -> Result<(), StoreError>;
}

/// How long a dead-lettered push keeps the safety net from enqueueing its tag again
/// (`crate::control::safety_net`): a failure no retry repairs (a source that lost a layer behind
/// its manifest, a destination that refuses the content) would otherwise come back as a new dead
/// letter every pass. A new event for the tag still enqueues a job, and retrying the dead letter
/// runs it at once; this bounds how late the safety net tries again on its own.
pub const DEAD_LETTER_MEMO: Duration = Duration::from_secs(3600);

/// The name under which a region remembers that a push of `repository:tag` under `policy` was
/// dead-lettered (a lease on the pseudo-destination `ferry`, like the region's locks, expiring
/// after [`DEAD_LETTER_MEMO`]).
pub fn dead_letter_key(policy: &str, repository: &str, tag: &str) -> String {
    format!("dead-lettered/{policy}/{repository}:{tag}")
}

/// A lock with expiry that one process of a region holds at a time, taken as a blob lease on the
/// pseudo-destination `ferry`: the scheduler takes one per tick, the safety net one per pass.
#[derive(Clone)]
pub struct RegionLock {
    leases: std::sync::Arc<dyn BlobLeases>,
    /// This process's name in the lease.
    holder: String,
}

impl RegionLock {
    pub fn new(leases: std::sync::Arc<dyn BlobLeases>, holder: &str) -> RegionLock {
        RegionLock {
            leases,
            holder: holder.to_string(),
        }
    }

    /// Tries to take `key` for `ttl`; false when another process holds it.
    pub async fn try_take(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.leases
            .lease_blob("ferry", key, &self.holder, ttl)
            .await
    }

    /// Whether some process holds `key` now (e.g. a worker's remembered gate decision).
    pub async fn is_held(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.leases.blob_lease_holder("ferry", key).await?.is_some())
    }
}

/// Paused policies and the jobs parked while they are paused.
#[async_trait::async_trait]
pub trait Pauses: Send + Sync + 'static {
    /// Pauses (`true`) or resumes a policy. Resuming does not move parked jobs: call [`Pauses::unpark`].
    async fn set_paused(&self, policy: &str, paused: bool) -> Result<(), StoreError>;

    /// The paused policies.
    async fn paused(&self) -> Result<std::collections::BTreeSet<String>, StoreError>;

    /// Ends the lease by parking the job until its policy is resumed. `Ok(false)` (and the lease
    /// kept) when the policy is not paused (any more): run the job.
    async fn park(&self, lease: &Lease) -> Result<bool, StoreError>;

    /// Moves every parked job of `policy` back to the queue; returns how many.
    async fn unpark(&self, policy: &str) -> Result<u64, StoreError>;
}

/// Where a job's chunked uploads stand, kept with the job (see [`UploadCheckpoint`]).
#[async_trait::async_trait]
pub trait Checkpoints: Send + Sync + 'static {
    /// Stores `checkpoint` on the leased job, replacing the one for the same `(destination,
    /// digest)`. `LeaseLost` (nothing stored) when `lease` is no longer the job's owner.
    async fn checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &UploadCheckpoint,
    ) -> Result<(), StoreError>;

    /// Deletes the job's checkpoint for `(destination, digest)` (no-op when there is none).
    /// `LeaseLost` when `lease` is no longer the job's owner.
    async fn clear_checkpoint(
        &self,
        lease: &Lease,
        destination: &str,
        digest: &str,
    ) -> Result<(), StoreError>;

    /// The checkpoints stored on job `job_id`, in `(destination, digest)` order.
    async fn checkpoints(&self, job_id: &str) -> Result<Vec<UploadCheckpoint>, StoreError>;
}

/// Every queue concern at once: what one backend ([`MemoryQueue`], [`RedisQueue`]) implements, and
/// what the conformance suite and [`crate::store::Store::new`] take. Consumers take only the narrow
/// traits they use.
pub trait QueueBackend:
    JobQueue + DeadLetters + BlobLeases + ManifestLeases + Pauses + Checkpoints
{
}

impl<Q: JobQueue + DeadLetters + BlobLeases + ManifestLeases + Pauses + Checkpoints> QueueBackend
    for Q
{
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(policy: &str, repository: &str, reference: &str) -> Job {
        Job::new(policy, EventKind::Push, repository, reference)
    }

    #[test]
    fn ordinary_keys_read_as_before() {
        assert_eq!(
            job("mirror", "team/app", "v1").idempotency_key(),
            "mirror|push|team/app|v1"
        );
        let mut back = job("sync", "team/app", "v1");
        back.source = Some("us".into());
        back.execution_id = Some("run-7".into());
        assert_eq!(
            back.idempotency_key(),
            "sync|push|team/app|v1|from=us|run-7"
        );
    }

    /// Found by the chaos oracle, seed 0x2a (600 s): `b` pushed `shared/tools:t1`, then `c` pushed
    /// other content under it 5 s later. In `b`, the job for `c`'s event folded into a pending job
    /// for an earlier event of `c`; that job found the source moved on ("superseded") and left the
    /// decision to the newer event — the one folded into it. The two regions stayed apart.
    #[test]
    fn seed_0x2a_bidirectional_jobs_announcing_different_digests_never_collapse() {
        let bidirectional = |digest: Option<&str>| {
            let mut j = job("bidi", "shared/tools", "t1");
            j.source = Some("c".into());
            j.bidirectional = true;
            j.digest = digest.map(str::to_string);
            j
        };
        let (first, newer) = (
            bidirectional(Some("sha256:1")),
            bidirectional(Some("sha256:2")),
        );
        assert_ne!(first.idempotency_key(), newer.idempotency_key());
        assert_eq!(
            newer.idempotency_key(),
            "bidi|push|shared/tools|t1|from=c|digest=sha256:2"
        );
        // Nor into a safety-net or run job, which announces nothing.
        assert_ne!(
            bidirectional(None).idempotency_key(),
            newer.idempotency_key()
        );
        // The same event delivered twice still collapses; one-way jobs still fold re-pushes.
        assert_eq!(
            bidirectional(Some("sha256:2")).idempotency_key(),
            newer.idempotency_key()
        );
        let mut one_way = job("mirror", "team/app", "v1");
        one_way.digest = Some("sha256:1".into());
        assert_eq!(one_way.idempotency_key(), "mirror|push|team/app|v1");
    }

    /// Found by the chaos oracle, seed 0x2a again (long run, after the fix above): the same loss in
    /// the other direction. `b` (the policy's `src_registry`, so its jobs carry no `from=`) moved
    /// `shared/base:t1` while the registry in `c` answered 500s; in `c`, the job for `b`'s event
    /// folded into a pending safety-net job for that tag, which announces nothing and so may not
    /// settle a conflict. `c` kept its own older push; the regions stayed apart for good.
    #[test]
    fn seed_0x2a_bidirectional_events_from_the_source_side_never_fold_into_a_safety_net_job() {
        let forward = |digest: Option<&str>| {
            let mut j = job("bidi", "shared/base", "t1");
            j.bidirectional = true;
            j.digest = digest.map(str::to_string);
            j
        };
        let event = forward(Some("sha256:d251"));
        assert_eq!(
            event.idempotency_key(),
            "bidi|push|shared/base|t1|digest=sha256:d251"
        );
        assert_ne!(forward(None).idempotency_key(), event.idempotency_key());
        assert_ne!(
            forward(Some("sha256:554c")).idempotency_key(),
            event.idempotency_key()
        );
    }

    /// Jobs in the queue before `bidirectional` existed read as one-way jobs (and collapse as
    /// before); the field is written only when set.
    #[test]
    fn the_bidirectional_mark_defaults_to_off_and_is_written_only_when_set() {
        let old: Job = serde_json::from_str(
            r#"{"policy":"p","kind":"push","repository":"r","reference":"t","event_time_ms":0}"#,
        )
        .unwrap();
        assert!(!old.bidirectional);
        assert!(!serde_json::to_string(&old)
            .unwrap()
            .contains("bidirectional"));
        let mut marked = old;
        marked.bidirectional = true;
        assert!(serde_json::to_string(&marked)
            .unwrap()
            .contains(r#""bidirectional":true"#));
    }

    #[test]
    fn separators_inside_parts_cannot_make_two_jobs_share_a_key() {
        // Without escaping, both would be `a|push|b|c|d`.
        let one = job("a", "b|c", "d");
        let two = job("a", "b", "c|d");
        assert_ne!(one.idempotency_key(), two.idempotency_key());
        assert_eq!(one.idempotency_key(), "a|push|b%7Cc|d");
        // A run id that looks like the `from=` part, and the `from=` part itself.
        let mut from = job("p", "r", "t");
        from.source = Some("x".into());
        let mut run = job("p", "r", "t");
        run.execution_id = Some("from=x".into());
        assert_ne!(from.idempotency_key(), run.idempotency_key());
        // Escapes are escaped too, and control characters never reach a Redis key.
        let percent = job("p", "r", "a%7Cb");
        let pipe = job("p", "r", "a|b");
        assert_ne!(percent.idempotency_key(), pipe.idempotency_key());
        assert_eq!(job("p", "r\nx", "t").idempotency_key(), "p|push|r%0Ax|t");
    }
}
