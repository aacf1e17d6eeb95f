//! In-process [`JobQueue`] for `ferry serve` without `--redis` (and for tests of the layers above
//! the queue). Nothing survives the process: an agent that answers a registry 2xx after an
//! in-memory enqueue promises only as much as the process lifetime.
//!
//! # Model (mirrors [`super::redis::RedisQueue`] one to one, so the conformance suite holds both)
//! - `fresh`: new jobs, FIFO (the Redis `jobs` stream).
//! - `ready`: retries whose time has come and released jobs, FIFO (the Redis `retries` stream).
//! - `delayed`: failed jobs waiting for `next_try_at_ms` (the Redis `delayed` sorted set).
//! - `in_flight`: claimed jobs with owner and lease deadline (the Redis consumer-group PEL plus the
//!   `leases` sorted set).
//! - `pending`: idempotency key → token of the *fresh, unclaimed* job collapsing duplicates.
//! - `checkpoints`: job id → its upload checkpoints (the Redis `checkpoints:{job id}` hash), kept
//!   until the job is acked or dead-lettered.
//!
//! # Invariants
//! - A job is in exactly one of `fresh`, `ready`, `delayed`, `in_flight`, `dead`.
//! - `pending[key]` names a job in `fresh`; the claim that takes it removes the entry.
//! - A lease is valid while `in_flight[token].consumer` is its consumer; an expired lease stays
//!   valid until another claim takes the job over (same as Redis).
//! - `claim` order: expired leases (earliest deadline first), then `ready`, then `fresh`.
//!
//! Lease deadlines and blob-lease expiry use the monotonic tokio clock; retry times are Unix ms
//! because they are stored on the job (`next_try_at_ms`). The lock is a `std::sync::Mutex` held
//! only for in-memory work, never across an `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::lifecycle::{prepare_enqueue, record_failure, reset_dead_letter};
use super::{
    BlobLeases, Checkpoints, DeadLetters, EnqueueOutcome, FailOutcome, Job, JobQueue, Lease,
    ManifestLeases, Pauses, QueueStats, UploadCheckpoint,
};
use crate::backoff::RetryPolicy;
use crate::clock::now_ms;
use crate::store::StoreError;

/// Leases longer than this are clamped (an `Instant` cannot hold "forever").
const MAX_LEASE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The in-process queue. Cheap to share behind an `Arc`.
pub struct MemoryQueue {
    policy: RetryPolicy,
    state: Mutex<State>,
}

/// A waiting job and the token its lease will carry.
struct Entry {
    token: String,
    job: Job,
}

struct InFlight {
    job: Job,
    consumer: String,
    deadline: Instant,
}

#[derive(Default)]
struct State {
    /// Source of unique tokens (never reused, so a stale lease cannot match a later claim).
    next_seq: u64,
    fresh: VecDeque<Entry>,
    ready: VecDeque<Entry>,
    /// `(next_try_at_ms, seq)` keeps equal times in failure order.
    delayed: BTreeMap<(i64, u64), Job>,
    in_flight: HashMap<String, InFlight>,
    /// Idempotency key → token of the fresh job it collapses into.
    pending: HashMap<String, String>,
    /// Oldest first.
    dead: VecDeque<Job>,
    /// `(destination, digest)` → `(holder, expiry)`.
    blobs: Leases,
    /// `(destination, repository@digest)` → `(holder, expiry)`.
    manifests: Leases,
    paused: std::collections::BTreeSet<String>,
    /// Policy → jobs parked while it is paused.
    parked: HashMap<String, Vec<Job>>,
    /// Job id → `(destination, digest)` → its upload checkpoint.
    checkpoints: HashMap<String, BTreeMap<(String, String), UploadCheckpoint>>,
}

impl State {
    fn token(&mut self) -> String {
        self.next_seq += 1;
        format!("mem-{}", self.next_seq)
    }

    fn push_fresh(&mut self, job: Job) -> EnqueueOutcome {
        let key = job.idempotency_key();
        if self.pending.contains_key(&key) {
            return EnqueueOutcome::Collapsed;
        }
        let token = self.token();
        self.pending.insert(key, token.clone());
        self.fresh.push_back(Entry { token, job });
        EnqueueOutcome::Enqueued
    }

    /// Hands `e` to `consumer` until `deadline`.
    fn lease(&mut self, e: Entry, consumer: &str, deadline: Instant) -> Lease {
        let lease = Lease {
            job: e.job.clone(),
            token: e.token.clone(),
            consumer: consumer.to_owned(),
        };
        self.in_flight.insert(
            e.token,
            InFlight {
                job: e.job,
                consumer: consumer.to_owned(),
                deadline,
            },
        );
        lease
    }

    /// Whether `lease.consumer` still owns the in-flight job behind `lease`.
    fn owns(&self, lease: &Lease) -> Result<(), StoreError> {
        match self.in_flight.get(&lease.token) {
            Some(f) if f.consumer == lease.consumer => Ok(()),
            _ => Err(lease_lost(lease)),
        }
    }

    /// Removes the in-flight job behind `lease` if `lease.consumer` still owns it.
    fn take_owned(&mut self, lease: &Lease) -> Result<InFlight, StoreError> {
        match self.in_flight.get(&lease.token) {
            Some(f) if f.consumer == lease.consumer => Ok(self
                .in_flight
                .remove(&lease.token)
                .expect("present: just looked it up")),
            _ => Err(lease_lost(lease)),
        }
    }
}

fn lease_lost(lease: &Lease) -> StoreError {
    StoreError::LeaseLost {
        job_id: lease.job.id.clone(),
        consumer: lease.consumer.clone(),
    }
}

impl MemoryQueue {
    pub fn new(policy: RetryPolicy) -> MemoryQueue {
        MemoryQueue {
            policy,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way later calls
        // misread (every method finishes its bookkeeping before returning), so poisoning is ignored.
        crate::locks::lock(&self.state)
    }
}

#[async_trait::async_trait]
impl JobQueue for MemoryQueue {
    async fn enqueue(&self, job: Job) -> Result<EnqueueOutcome, StoreError> {
        let job = prepare_enqueue(job, now_ms());
        Ok(self.state().push_fresh(job))
    }

    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Lease>, StoreError> {
        let now = Instant::now();
        let deadline = now + lease.min(MAX_LEASE);
        let now_unix = now_ms();
        let mut st = self.state();
        let mut out: Vec<Lease> = Vec::new();

        // 1. Expired leases, earliest deadline first.
        let mut expired: Vec<(Instant, String)> = st
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(t, f)| (f.deadline, t.clone()))
            .collect();
        expired.sort();
        for (_, token) in expired.into_iter().take(max) {
            let f = st.in_flight.get_mut(&token).expect("collected above");
            f.consumer = consumer.to_owned();
            f.deadline = deadline;
            out.push(Lease {
                job: f.job.clone(),
                token,
                consumer: consumer.to_owned(),
            });
        }

        // 2. Due retries move to `ready` (as many as this claim can take), then `ready` drains.
        let room = max - out.len();
        let due: Vec<(i64, u64)> = st
            .delayed
            .range(..=(now_unix, u64::MAX))
            .map(|(k, _)| *k)
            .take(room)
            .collect();
        for k in due {
            let job = st.delayed.remove(&k).expect("collected above");
            let token = st.token();
            st.ready.push_back(Entry { token, job });
        }
        while out.len() < max {
            let Some(e) = st.ready.pop_front() else { break };
            out.push(st.lease(e, consumer, deadline));
        }

        // 3. New jobs, FIFO; a claimed job no longer collapses later enqueues.
        while out.len() < max {
            let Some(e) = st.fresh.pop_front() else { break };
            let key = e.job.idempotency_key();
            if st.pending.get(&key) == Some(&e.token) {
                st.pending.remove(&key);
            }
            out.push(st.lease(e, consumer, deadline));
        }
        Ok(out)
    }

    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<(), StoreError> {
        let mut st = self.state();
        match st.in_flight.get_mut(&lease.token) {
            Some(f) if f.consumer == lease.consumer => {
                f.deadline = Instant::now() + lease_for.min(MAX_LEASE);
                Ok(())
            }
            _ => Err(lease_lost(lease)),
        }
    }

    async fn ack(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut st = self.state();
        st.take_owned(lease)?;
        st.checkpoints.remove(&lease.job.id);
        Ok(())
    }

    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        retryable: bool,
    ) -> Result<FailOutcome, StoreError> {
        let now = now_ms();
        let mut st = self.state();
        st.take_owned(lease)?;
        // The caller's copy of the job carries its checkpoint fields.
        let (job, outcome) = record_failure(lease.job.clone(), error, retryable, &self.policy, now);
        match outcome {
            FailOutcome::Retry { next_try_at_ms } => {
                st.next_seq += 1;
                let seq = st.next_seq;
                st.delayed.insert((next_try_at_ms, seq), job);
            }
            FailOutcome::DeadLettered => {
                st.checkpoints.remove(&job.id);
                st.dead.push_back(job);
            }
        }
        Ok(outcome)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut st = self.state();
        st.take_owned(lease)?;
        let token = st.token();
        st.ready.push_back(Entry {
            token,
            job: lease.job.clone(),
        });
        Ok(())
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let now = Instant::now();
        let now_unix = now_ms();
        let st = self.state();
        let expired = st.in_flight.values().filter(|f| f.deadline <= now).count() as u64;
        let delayed_total = st.delayed.len() as u64;
        let delayed_future = st.delayed.keys().filter(|(at, _)| *at > now_unix).count() as u64;
        Ok(QueueStats {
            depth: (st.fresh.len() + st.ready.len()) as u64 + delayed_total + expired,
            in_flight: st.in_flight.len() as u64 - expired,
            delayed: delayed_future,
            dead_letters: st.dead.len() as u64,
            oldest_age_ms: st.fresh.front().map_or(0, |e| {
                u64::try_from(now_unix - e.job.enqueued_at_ms).unwrap_or(0)
            }),
        })
    }
}

#[async_trait::async_trait]
impl DeadLetters for MemoryQueue {
    async fn dead_letters(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
        Ok(self.state().dead.iter().take(limit).cloned().collect())
    }

    async fn retry_dead_letter(&self, job_id: &str) -> Result<bool, StoreError> {
        let mut st = self.state();
        let Some(pos) = st.dead.iter().position(|j| j.id == job_id) else {
            return Ok(false);
        };
        let job = st.dead.remove(pos).expect("position is in range");
        // Collapses into an identical pending job if there is one: that job does the same work.
        st.push_fresh(reset_dead_letter(job));
        Ok(true)
    }

    async fn purge_dead_letters(&self) -> Result<u64, StoreError> {
        let mut st = self.state();
        let n = st.dead.len() as u64;
        st.dead.clear();
        Ok(n)
    }
}

/// Leases with expiry by key (blob and manifest leases): `key` → `(holder, expiry)`.
type Leases = HashMap<(String, String), (String, Instant)>;

fn take_lease(leases: &mut Leases, key: (String, String), holder: &str, ttl: Duration) -> bool {
    let now = Instant::now();
    leases.retain(|_, (_, expiry)| *expiry > now);
    if leases.contains_key(&key) {
        return false;
    }
    leases.insert(key, (holder.to_owned(), now + ttl.min(MAX_LEASE)));
    true
}

fn renew_lease(leases: &mut Leases, key: &(String, String), holder: &str, ttl: Duration) -> bool {
    let now = Instant::now();
    match leases.get_mut(key) {
        Some((h, expiry)) if h == holder && *expiry > now => {
            *expiry = now + ttl.min(MAX_LEASE);
            true
        }
        _ => false,
    }
}

fn release_lease(leases: &mut Leases, key: &(String, String), holder: &str) {
    if leases
        .get(key)
        .is_some_and(|(h, expiry)| h == holder && *expiry > Instant::now())
    {
        leases.remove(key);
    }
}

fn blob_key(destination: &str, digest: &str) -> (String, String) {
    (destination.to_owned(), digest.to_owned())
}

fn manifest_key(destination: &str, repository: &str, digest: &str) -> (String, String) {
    (destination.to_owned(), format!("{repository}@{digest}"))
}

#[async_trait::async_trait]
impl BlobLeases for MemoryQueue {
    async fn lease_blob(
        &self,
        destination: &str,
        digest: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = blob_key(destination, digest);
        Ok(take_lease(&mut self.state().blobs, key, holder, ttl))
    }

    async fn renew_blob(
        &self,
        destination: &str,
        digest: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = blob_key(destination, digest);
        Ok(renew_lease(&mut self.state().blobs, &key, holder, ttl))
    }

    async fn blob_lease_holder(
        &self,
        destination: &str,
        digest: &str,
    ) -> Result<Option<String>, StoreError> {
        let now = Instant::now();
        let st = self.state();
        Ok(st
            .blobs
            .get(&blob_key(destination, digest))
            .filter(|(_, expiry)| *expiry > now)
            .map(|(h, _)| h.clone()))
    }

    async fn release_blob(
        &self,
        destination: &str,
        digest: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        release_lease(
            &mut self.state().blobs,
            &blob_key(destination, digest),
            holder,
        );
        Ok(())
    }
}

#[async_trait::async_trait]
impl ManifestLeases for MemoryQueue {
    async fn lease_manifest(
        &self,
        destination: &str,
        repository: &str,
        digest: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = manifest_key(destination, repository, digest);
        Ok(take_lease(&mut self.state().manifests, key, holder, ttl))
    }

    async fn renew_manifest(
        &self,
        destination: &str,
        repository: &str,
        digest: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = manifest_key(destination, repository, digest);
        Ok(renew_lease(&mut self.state().manifests, &key, holder, ttl))
    }

    async fn release_manifest(
        &self,
        destination: &str,
        repository: &str,
        digest: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        let key = manifest_key(destination, repository, digest);
        release_lease(&mut self.state().manifests, &key, holder);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Pauses for MemoryQueue {
    async fn set_paused(&self, policy: &str, paused: bool) -> Result<(), StoreError> {
        let mut st = self.state();
        if paused {
            st.paused.insert(policy.to_string());
        } else {
            st.paused.remove(policy);
        }
        Ok(())
    }

    async fn paused(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        Ok(self.state().paused.clone())
    }

    async fn park(&self, lease: &Lease) -> Result<bool, StoreError> {
        let mut st = self.state();
        if !st.paused.contains(&lease.job.policy) {
            return Ok(false);
        }
        let f = st.take_owned(lease)?;
        st.parked
            .entry(f.job.policy.clone())
            .or_default()
            .push(f.job);
        Ok(true)
    }

    async fn unpark(&self, policy: &str) -> Result<u64, StoreError> {
        let mut st = self.state();
        let jobs = st.parked.remove(policy).unwrap_or_default();
        let n = jobs.len() as u64;
        for job in jobs {
            st.push_fresh(job);
        }
        Ok(n)
    }
}

#[async_trait::async_trait]
impl Checkpoints for MemoryQueue {
    async fn checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &UploadCheckpoint,
    ) -> Result<(), StoreError> {
        let mut st = self.state();
        st.owns(lease)?;
        st.checkpoints
            .entry(lease.job.id.clone())
            .or_default()
            .insert(
                (checkpoint.destination.clone(), checkpoint.digest.clone()),
                checkpoint.clone(),
            );
        Ok(())
    }

    async fn clear_checkpoint(
        &self,
        lease: &Lease,
        destination: &str,
        digest: &str,
    ) -> Result<(), StoreError> {
        let mut st = self.state();
        st.owns(lease)?;
        if let Some(of_job) = st.checkpoints.get_mut(&lease.job.id) {
            of_job.remove(&(destination.to_owned(), digest.to_owned()));
            if of_job.is_empty() {
                st.checkpoints.remove(&lease.job.id);
            }
        }
        Ok(())
    }

    async fn checkpoints(&self, job_id: &str) -> Result<Vec<UploadCheckpoint>, StoreError> {
        Ok(self
            .state()
            .checkpoints
            .get(job_id)
            .map(|of_job| of_job.values().cloned().collect())
            .unwrap_or_default())
    }
}
