//! One blob's upload to the destination: monolithic (one streaming `PUT` of the verified source
//! stream) or chunked (`PATCH`es checkpointed on the job, then `PUT ?digest=`), with a few retries
//! of transient failures, and the decision whether a checkpointed session can be continued.
//!
//! A chunked upload reads the source one chunk ahead: chunk N+1 is read and hashed while chunk N's
//! `PATCH` is on the wire, so at most two chunks are in memory per upload.
//!
//! Invariants: an upload holds a transfer slot on both registries, taken in name order; a session
//! is completed only after size and digest matched; a checkpointed session is continued only when
//! the destination holds exactly the checkpointed bytes; on failure a session is kept for the
//! retry when the error is retryable and a checkpoint names it, left alone when the job's lease was
//! lost, and cancelled otherwise.
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use futures_util::StreamExt;
use oci_spec::image::Descriptor;
use url::Url;

use crate::oci::client::BlobUpload;
use crate::oci::digest::{Digest, DigestVerifier};
use crate::oci::RegistryError;
use crate::store::queue::UploadCheckpoint;

use super::verify::{source_bytes, VerifiedStream};
use super::{Result, TransferContext, TransferError};

/// Streams one blob, retrying transient failures a few times.
pub(super) async fn upload_with_retries(
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    desc: &Descriptor,
) -> Result<()> {
    let digest = desc.digest();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match stream_blob(ctx, src_repo, dst_repo, desc).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && attempt < 3 => {
                let d = crate::oci::client::backoff(attempt);
                tracing::info!(repository = dst_repo, %digest, error = %e, attempt, "blob transfer failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(d) => {},
                    _ = ctx.cancel.cancelled() => return Err(TransferError::Cancelled),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Holds a transfer slot on both registries, acquired in name order so two opposite transfers
/// (A→B and B→A) can never wait on each other.
async fn transfer_permits(ctx: &TransferContext) -> Result<Vec<tokio::sync::OwnedSemaphorePermit>> {
    // Owned handles: borrowed ones held across the awaits below make the future's `Send` bound
    // lifetime-specific, which breaks spawning it.
    // A source on disk has no slots: only the destination's bound the upload.
    let mut regs: Vec<(String, Arc<tokio::sync::Semaphore>)> = ctx
        .src
        .transfer_slots()
        .map(|s| (ctx.src.name().to_string(), s.clone()))
        .into_iter()
        .chain([(ctx.dst.name().to_string(), ctx.dst.transfer_slots().clone())])
        .collect();
    regs.sort_by(|a, b| a.0.cmp(&b.0));
    regs.dedup_by(|a, b| Arc::ptr_eq(&a.1, &b.1));
    let mut permits = Vec::with_capacity(2);
    for (_, slots) in regs {
        let p = tokio::select! {
            p = slots.acquire_owned() => p.map_err(|_| TransferError::Cancelled)?,
            _ = ctx.cancel.cancelled() => return Err(TransferError::Cancelled),
        };
        permits.push(p);
    }
    Ok(permits)
}

/// One copy attempt: chunked (resumable) or one streaming `PUT`.
async fn stream_blob(
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    desc: &Descriptor,
) -> Result<()> {
    let _permits = transfer_permits(ctx).await?;
    let chunked = (ctx.copy_by_chunk || desc.size() >= ctx.dst.chunk_threshold())
        && !ctx.dst.refuses_chunks();
    if !chunked {
        return stream_monolithic(ctx, src_repo, dst_repo, desc).await;
    }
    match stream_chunked(ctx, src_repo, dst_repo, desc).await {
        Err(e) if refuses_chunks(&e) => {
            tracing::warn!(registry = ctx.dst.name(), error = %e, "the registry refuses chunked uploads; uploading in one PUT from now on");
            ctx.dst.mark_refuses_chunks();
            stream_monolithic(ctx, src_repo, dst_repo, desc).await
        }
        other => other,
    }
}

/// A registry's answer meaning "no chunked uploads here": 405/501, or an `UNSUPPORTED` error code
/// on a `PATCH`.
fn refuses_chunks(e: &TransferError) -> bool {
    matches!(
        e,
        TransferError::Registry(RegistryError::Status { method, status, errors, .. })
            if method == "PATCH"
                && (matches!(status, 405 | 501) || errors.iter().any(|x| x.code == "UNSUPPORTED"))
    )
}

fn verifier(ctx: &TransferContext, src_repo: &str, digest: &Digest) -> Result<DigestVerifier> {
    DigestVerifier::new(digest).ok_or_else(|| TransferError::UnsupportedDigest {
        registry: ctx.src.name().to_string(),
        repository: src_repo.to_string(),
        digest: digest.to_string(),
    })
}

fn digest_mismatch(
    ctx: &TransferContext,
    src_repo: &str,
    digest: &Digest,
    actual: String,
) -> TransferError {
    ctx.src.corrupt(src_repo, digest, actual)
}

fn size_mismatch(
    ctx: &TransferContext,
    src_repo: &str,
    desc: &Descriptor,
    actual: u64,
) -> TransferError {
    TransferError::Registry(RegistryError::SizeMismatch {
        registry: ctx.src.name().to_string(),
        repository: src_repo.to_string(),
        digest: desc.digest().to_string(),
        expected: desc.size(),
        actual,
    })
}

/// One `PUT` with the verified source stream as its body; cancels the session on any failure.
async fn stream_monolithic(
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    desc: &Descriptor,
) -> Result<()> {
    let digest = desc.digest().clone();
    let verifier = verifier(ctx, src_repo, &digest)?;
    let upload = ctx.dst.start_upload(dst_repo).await?;
    let result = async {
        let failure = Arc::new(Mutex::new(None::<TransferError>));
        let verified = VerifiedStream {
            ctx: ctx.clone(),
            registry: ctx.src.name().to_string(),
            repository: src_repo.to_string(),
            digest: digest.clone(),
            expected: desc.size(),
            verifier: Some(verifier),
            failure: failure.clone(),
        }
        .into_stream(source_bytes(ctx, src_repo, &digest, 0, desc.size()));
        let sent = ctx
            .dst
            .put_blob_stream(
                &upload,
                &digest,
                desc.size(),
                reqwest::Body::wrap_stream(verified),
            )
            .await
            .map_err(TransferError::from);
        // A failure inside the stream (corruption, cancel) explains a failed request better than
        // the request error itself.
        let cause = crate::locks::lock(&failure).take();
        match cause {
            Some(cause) => Err(cause),
            None => sent,
        }
    }
    .await;
    if result.is_err() {
        ctx.dst.cancel_upload(&upload).await;
    }
    result
}

/// A chunked upload: continues the job's checkpointed session when the destination still holds
/// exactly its bytes, else opens a new one. On failure the session is kept for the next attempt
/// when the error is retryable and a checkpoint names it, left alone when the job's lease was lost
/// (its new owner may be continuing it), and cancelled otherwise.
async fn stream_chunked(
    ctx: &TransferContext,
    src_repo: &str,
    dst_repo: &str,
    desc: &Descriptor,
) -> Result<()> {
    let digest = desc.digest();
    let (mut upload, hasher) = match resume_point(ctx, dst_repo, desc).await? {
        Some(resumed) => resumed,
        None => {
            let hasher = verifier(ctx, src_repo, digest)?;
            (ctx.dst.start_upload(dst_repo).await?, hasher)
        }
    };
    let source = source_bytes(ctx, src_repo, digest, upload.offset, desc.size());
    let result = upload_chunked(ctx, src_repo, desc, &mut upload, hasher, source).await;
    let dst = ctx.dst.name();
    match &result {
        Ok(()) => ctx.checkpoints.clear(dst, digest.as_ref()).await,
        Err(_) if ctx.checkpoints.lease_lost() => {}
        Err(e) if e.is_retryable() && ctx.checkpoints.get(dst, digest.as_ref()).await.is_some() => {
            tracing::info!(registry = dst, repository = dst_repo, %digest, offset = upload.offset, error = %e, "upload interrupted; its session is kept for the next attempt to continue");
        }
        Err(_) => {
            ctx.dst.cancel_upload(&upload).await;
            ctx.checkpoints.clear(dst, digest.as_ref()).await;
        }
    }
    result
}

/// What to do with a checkpointed upload, given the destination's answer to the status request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resume {
    /// The destination holds exactly the checkpointed bytes: continue from this offset.
    At(u64),
    /// Start a new upload, for this reason.
    Restart(String),
    /// The destination cannot answer now (transient): fail this attempt, keep the checkpoint.
    Later,
}

/// Decides from the checkpointed offset, the blob size and the destination's upload status (the
/// offset its `Range` names, or why there is none).
fn resume_decision(
    checkpoint: u64,
    size: u64,
    status: std::result::Result<u64, &RegistryError>,
) -> Resume {
    match status {
        Err(e) if e.is_retryable() => Resume::Later,
        Err(e) if e.is_not_found() => Resume::Restart(format!(
            "the destination no longer has the session, or refuses it because its data moved past the checkpoint: {e}"
        )),
        Err(e) => Resume::Restart(format!(
            "the destination's upload status is unusable: {e}"
        )),
        Ok(_) if checkpoint > size => Resume::Restart(format!(
            "the checkpoint ({checkpoint} bytes) is beyond the blob's end ({size} bytes)"
        )),
        Ok(held) if held == checkpoint => Resume::At(checkpoint),
        Ok(held) => Resume::Restart(format!(
            "the destination holds {held} bytes of the session, the checkpoint says {checkpoint}"
        )),
    }
}

/// Where a checkpointed upload of `desc` can continue: the session (as the destination describes
/// it now) and the hash state over the bytes it holds. `None` when there is no checkpoint or it
/// cannot be used (logged; its session is cancelled), so a new upload starts. Costs one `GET` of
/// the session's status.
async fn resume_point(
    ctx: &TransferContext,
    dst_repo: &str,
    desc: &Descriptor,
) -> Result<Option<(BlobUpload, DigestVerifier)>> {
    let digest = desc.digest();
    let dst = ctx.dst.name();
    let Some(cp) = ctx.checkpoints.get(dst, digest.as_ref()).await else {
        return Ok(None);
    };
    let local = (|| {
        if cp.repository != dst_repo {
            return Err(format!(
                "the checkpoint is for repository {}",
                cp.repository
            ));
        }
        if cp.size != desc.size() {
            return Err(format!("the checkpoint is for a blob of {} bytes", cp.size));
        }
        let location = Url::parse(&cp.location)
            .map_err(|e| format!("the checkpointed session URL is not a URL: {e}"))?;
        let hasher = DigestVerifier::resume(digest, &cp.hash_state)
            .map_err(|e| format!("the checkpointed hash state is unusable: {e}"))?;
        if hasher.len() != cp.offset {
            return Err(format!(
                "the checkpointed hash state covers {} bytes, not {}",
                hasher.len(),
                cp.offset
            ));
        }
        Ok((
            BlobUpload {
                repository: cp.repository.clone(),
                location,
                offset: cp.offset,
            },
            hasher,
        ))
    })();
    let (session, hasher) = match local {
        Ok(found) => found,
        Err(reason) => {
            abandon_checkpoint(ctx, dst_repo, digest, cp.offset, &reason, None).await;
            return Ok(None);
        }
    };
    let status = ctx.dst.upload_status(&session, digest).await;
    match resume_decision(cp.offset, desc.size(), status.as_ref().map(|s| s.offset)) {
        Resume::At(offset) => {
            let resumed = status.expect("an offset comes from a status");
            tracing::info!(registry = dst, repository = dst_repo, %digest, offset, size = desc.size(), "continuing an interrupted upload");
            if ctx.checkpoints.take_inherited(dst, digest.as_ref()) {
                // Sent by an earlier run: progress counts what this run still moves. (The blob's
                // size was planned just before; an in-process retry already counted its bytes.)
                ctx.stats
                    .bytes_planned
                    .fetch_sub(offset.min(desc.size()), Ordering::Relaxed);
            }
            Ok(Some((resumed, hasher)))
        }
        Resume::Later => Err(status.expect_err("Later comes from an error").into()),
        Resume::Restart(reason) => {
            abandon_checkpoint(ctx, dst_repo, digest, cp.offset, &reason, Some(&session)).await;
            Ok(None)
        }
    }
}

/// Gives up on a checkpointed upload (logged with `reason`): cancels its session, when known, and
/// forgets the checkpoint.
async fn abandon_checkpoint(
    ctx: &TransferContext,
    dst_repo: &str,
    digest: &Digest,
    offset: u64,
    reason: &str,
    session: Option<&BlobUpload>,
) {
    let dst = ctx.dst.name();
    tracing::warn!(registry = dst, repository = dst_repo, %digest, offset, reason, "cannot continue the interrupted upload; starting a new one");
    if let Some(session) = session {
        ctx.dst.cancel_upload(session).await;
    }
    ctx.checkpoints.clear(dst, digest.as_ref()).await;
}

/// Streams the rest of blob `desc` into the open session `upload` in chunks (`PATCH`), then
/// completes it (`PUT ?digest=`). `hasher` covers the `upload.offset` bytes the destination holds
/// already; `source` yields the blob from there. The source is read one chunk ahead: chunk N+1 is read
/// (and hashed) while chunk N is on the wire, so at most two chunks are in memory. The chunk that
/// completes the blob is sent only after size and digest matched, and the session is completed
/// only then; after every confirmed chunk the session, offset and hash state over exactly the
/// confirmed bytes are checkpointed. `upload` follows the session as it moves (each answer may name
/// a new location).
async fn upload_chunked<S>(
    ctx: &TransferContext,
    src_repo: &str,
    desc: &Descriptor,
    upload: &mut BlobUpload,
    hasher: DigestVerifier,
    source: S,
) -> Result<()>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes>> + Unpin,
{
    let digest = desc.digest();
    let size = desc.size();
    let mut reader = ChunkReader {
        ctx,
        src_repo,
        desc,
        chunk_size: usize::try_from(ctx.dst.chunk_size()).unwrap_or(usize::MAX),
        source,
        read: upload.offset,
        carry: None,
        hasher,
    };
    let mut next = reader.next_chunk().await?;
    while let Some(chunk) = next {
        // The read of the next chunk runs while this one is sent and checkpointed; a failed send
        // drops it (the source is read again on retry), a failed read waits for the send, so the
        // confirmed chunk is checkpointed before the read's error ends the attempt.
        let send = send_chunk(ctx, desc, upload, chunk);
        let read = reader.next_chunk();
        tokio::pin!(send, read);
        let mut read_ahead = None;
        let sent = loop {
            tokio::select! {
                sent = &mut send => break sent,
                n = &mut read, if read_ahead.is_none() => read_ahead = Some(n),
            }
        };
        sent?;
        next = match read_ahead {
            Some(n) => n?,
            None => read.await?,
        };
    }
    let hasher = reader.hasher;
    // Also covers uploads resumed after their last chunk, and empty blobs.
    if hasher.len() != size {
        return Err(size_mismatch(ctx, src_repo, desc, hasher.len()));
    }
    hasher
        .finish()
        .map_err(|actual| digest_mismatch(ctx, src_repo, digest, actual))?;
    ctx.dst.finish_upload(upload, digest).await?;
    Ok(())
}

/// One chunk read from the source, ready to be sent.
struct Chunk {
    bytes: bytes::Bytes,
    /// The hash state over the blob up to this chunk's end (checkpointed once it is confirmed).
    hashed: String,
}

/// Sends one chunk (`PATCH`) and checkpoints it once the destination confirmed it; cancellable.
async fn send_chunk(
    ctx: &TransferContext,
    desc: &Descriptor,
    upload: &mut BlobUpload,
    chunk: Chunk,
) -> Result<()> {
    let digest = desc.digest();
    ctx.stats
        .bytes_copied
        .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
    *upload = tokio::select! {
        sent = ctx.dst.patch_chunk(upload, digest, chunk.bytes) => sent?,
        _ = ctx.cancel.cancelled() => return Err(TransferError::Cancelled),
    };
    ctx.checkpoints
        .save(UploadCheckpoint {
            destination: ctx.dst.name().to_string(),
            repository: upload.repository.clone(),
            digest: digest.to_string(),
            size: desc.size(),
            location: upload.location.to_string(),
            offset: upload.offset,
            hash_state: chunk.hashed,
        })
        .await
}

/// Cuts the source's bytes into chunks of the destination's `chunk_size`, hashing, counting and
/// throttling them as they arrive; the chunk that ends the blob is released only after size and
/// digest matched.
struct ChunkReader<'a, S> {
    ctx: &'a TransferContext,
    src_repo: &'a str,
    desc: &'a Descriptor,
    chunk_size: usize,
    source: S,
    /// Bytes of the blob read so far (from its start, including the resumed prefix).
    read: u64,
    /// Bytes the source delivered past the end of the last chunk, for the next one.
    carry: Option<bytes::Bytes>,
    /// The hash state over the first `read` bytes.
    hasher: DigestVerifier,
}

impl<S> ChunkReader<'_, S>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes>> + Unpin,
{
    /// The next chunk; `None` once the blob was read to its end.
    async fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        let size = self.desc.size();
        if self.hasher.len() >= size {
            return Ok(None);
        }
        let want = (self.chunk_size as u64).min(size - self.hasher.len());
        let mut buf = BytesMut::with_capacity(usize::try_from(want).unwrap_or(self.chunk_size));
        while (buf.len() as u64) < want {
            let piece = match self.carry.take() {
                Some(piece) => piece,
                None => self.pull().await?,
            };
            let room = usize::try_from(want).unwrap_or(usize::MAX) - buf.len();
            if piece.len() > room {
                buf.extend_from_slice(&piece[..room]);
                self.carry = Some(piece.slice(room..));
            } else {
                buf.extend_from_slice(&piece);
            }
        }
        let bytes = buf.freeze();
        self.hasher.update(&bytes);
        if self.hasher.len() == size {
            self.hasher.clone().finish().map_err(|actual| {
                digest_mismatch(self.ctx, self.src_repo, self.desc.digest(), actual)
            })?;
        }
        Ok(Some(Chunk {
            bytes,
            hashed: self.hasher.save(),
        }))
    }

    /// The next piece of the source's body; an error when it is cut short, runs past the blob's
    /// size, or the transfer is cancelled.
    async fn pull(&mut self) -> Result<bytes::Bytes> {
        let (ctx, size) = (self.ctx, self.desc.size());
        let next = tokio::select! {
            n = self.source.next() => n,
            _ = ctx.cancel.cancelled() => return Err(TransferError::Cancelled),
        };
        match next {
            Some(Ok(piece)) => {
                self.read += piece.len() as u64;
                if self.read > size {
                    return Err(size_mismatch(ctx, self.src_repo, self.desc, self.read));
                }
                if let Some(t) = &ctx.throttle {
                    if !t.consume(piece.len() as u64, &ctx.cancel).await {
                        return Err(TransferError::Cancelled);
                    }
                }
                Ok(piece)
            }
            Some(Err(e)) => Err(e),
            None => Err(size_mismatch(ctx, self.src_repo, self.desc, self.read)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, error: &str) -> RegistryError {
        RegistryError::Status {
            registry: "us".into(),
            method: "GET".into(),
            url: "http://r/v2/team/app/blobs/uploads/u1".into(),
            status: code,
            errors: vec![crate::oci::error::ErrorEntry {
                code: error.into(),
                message: String::new(),
            }],
        }
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn resumes_only_where_the_destination_holds_exactly_the_checkpoint() {
        assert_eq!(
            resume_decision(160 * MIB, 200 * MIB, Ok(160 * MIB)),
            Resume::At(160 * MIB)
        );
        // All bytes confirmed before the crash: only the completing PUT is left.
        assert_eq!(
            resume_decision(200 * MIB, 200 * MIB, Ok(200 * MIB)),
            Resume::At(200 * MIB)
        );
        for (held, why) in [
            (144 * MIB, "holds 150994944 bytes"),
            (170 * MIB, "holds 178257920 bytes"),
            (0, "holds 0 bytes"),
        ] {
            match resume_decision(160 * MIB, 200 * MIB, Ok(held)) {
                Resume::Restart(reason) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{held}: {other:?}"),
            }
        }
        match resume_decision(300 * MIB, 200 * MIB, Ok(300 * MIB)) {
            Resume::Restart(reason) => {
                assert!(reason.contains("beyond the blob's end"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_gone_or_garbled_session_restarts_and_a_struggling_registry_waits() {
        // distribution answers 404 BLOB_UPLOAD_INVALID when its data moved past the session state
        // (a PATCH cut off mid-body), and 404 BLOB_UPLOAD_UNKNOWN once the session is purged.
        for e in [
            status(404, "BLOB_UPLOAD_INVALID"),
            status(404, "BLOB_UPLOAD_UNKNOWN"),
        ] {
            match resume_decision(MIB, 2 * MIB, Err(&e)) {
                Resume::Restart(reason) => {
                    assert!(reason.contains("no longer has the session"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
        let garbled = RegistryError::InvalidRange {
            registry: "us".into(),
            repository: "team/app".into(),
            digest: "sha256:ab".into(),
            url: "http://r/v2/team/app/blobs/uploads/u1".into(),
            message: "unusable Range header \"0-x\": \"x\" is not a byte position".into(),
        };
        for e in [status(400, "BLOB_UPLOAD_INVALID"), garbled] {
            match resume_decision(MIB, 2 * MIB, Err(&e)) {
                Resume::Restart(reason) => assert!(reason.contains("unusable"), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        for e in [
            status(503, "UNAVAILABLE"),
            status(500, "UNKNOWN"),
            status(429, "TOOMANYREQUESTS"),
        ] {
            assert_eq!(resume_decision(MIB, 2 * MIB, Err(&e)), Resume::Later, "{e}");
        }
    }

    // ---------------------------------------------------------------------------------------
    // Chunked uploads against the fake registry (it can hold PATCH answers and logs requests).

    use std::sync::atomic::{AtomicBool, AtomicU64};

    use ferry_testkit::{Behavior, FakeRegistry};
    use oci_spec::image::MediaType;
    use tokio_util::sync::CancellationToken;

    use crate::config::{RegistryConfig, Secret};
    use crate::oci::RegistryClient;
    use crate::transfer::{BlobLedger, Checkpoints, TransferStats};

    const KIB: usize = 1024;
    /// The smallest chunk size a registry can be given.
    const CHUNK: usize = 64 * KIB;

    fn client(fake: &FakeRegistry, name: &str) -> RegistryClient {
        let cfg: RegistryConfig = serde_json::from_value(serde_json::json!({
            "name": name, "url": fake.url(), "insecure": true, "chunk_size": CHUNK
        }))
        .unwrap();
        RegistryClient::new(&cfg, Secret::Anonymous).unwrap()
    }

    fn context(src: RegistryClient, dst: RegistryClient) -> TransferContext {
        TransferContext {
            src: Arc::new(src),
            dst: Arc::new(dst),
            ledger: Arc::new(BlobLedger::default()),
            stats: Arc::new(TransferStats::default()),
            throttle: None,
            cancel: CancellationToken::new(),
            copy_by_chunk: false,
            blob_parallelism: 1,
            leases: None,
            manifest_leases: None,
            checkpoints: Arc::new(Checkpoints::local()),
        }
    }

    /// Deterministic bytes that differ from chunk to chunk.
    fn blob(size: usize) -> Vec<u8> {
        (0..size as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    fn descriptor(bytes: &[u8]) -> Descriptor {
        Descriptor::new(
            MediaType::ImageLayerGzip,
            bytes.len() as u64,
            crate::oci::digest::sha256(bytes),
        )
    }

    /// The requests the fake logged with this method (e.g. `PATCH`, `PATCH (held)`, `PUT`).
    fn requests(fake: &FakeRegistry, method: &str) -> usize {
        fake.request_log()
            .iter()
            .filter(|(m, _)| m == method)
            .count()
    }

    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !f() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_chunk_is_read_while_the_previous_patch_awaits_its_answer_and_no_further() {
        let hold = Arc::new(tokio::sync::Semaphore::new(0));
        let dst = FakeRegistry::start(Behavior {
            hold_patches: Some(hold.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
        let bytes = blob(4 * CHUNK + 1000);
        let desc = descriptor(&bytes);
        let size = bytes.len() as u64;
        let ctx = context(client(&dst, "src"), client(&dst, "dst"));
        // The source hands out 16 KiB pieces, counting what was pulled; pulling the first byte of
        // a chunk more than one ahead of the answered PATCHes breaks the two-chunk bound.
        let pulled = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(AtomicU64::new(0));
        let beyond_bound = Arc::new(AtomicBool::new(false));
        let pieces: Vec<bytes::Bytes> = bytes
            .chunks(16 * KIB)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        let source = futures_util::stream::iter(pieces).map({
            let (pulled, answered, beyond_bound) =
                (pulled.clone(), answered.clone(), beyond_bound.clone());
            move |piece| {
                let start = pulled.fetch_add(piece.len() as u64, Ordering::SeqCst);
                if start >= (answered.load(Ordering::SeqCst) + 2) * CHUNK as u64 {
                    beyond_bound.store(true, Ordering::SeqCst);
                }
                Ok(piece)
            }
        });
        let mut upload = ctx.dst.start_upload("team/app").await.unwrap();
        let hasher = DigestVerifier::new(desc.digest()).unwrap();
        let copy = tokio::spawn({
            let (ctx, desc) = (ctx.clone(), desc.clone());
            async move { upload_chunked(&ctx, "team/app", &desc, &mut upload, hasher, source).await }
        });
        for n in 0..5u64 {
            eventually(&format!("PATCH {n} reaches the registry"), || {
                requests(&dst, "PATCH (held)") as u64 == n + 1
            })
            .await;
            let ahead = ((n + 2) * CHUNK as u64).min(size);
            eventually(
                &format!("the source is read to {ahead} while PATCH {n} awaits its answer"),
                || pulled.load(Ordering::SeqCst) >= ahead,
            )
            .await;
            answered.fetch_add(1, Ordering::SeqCst);
            hold.add_permits(1);
        }
        copy.await.unwrap().unwrap();
        assert!(
            !beyond_bound.load(Ordering::SeqCst),
            "the source was read more than one chunk ahead of the answered PATCHes"
        );
        assert!(dst.has_blob(desc.digest().as_ref()));
        assert_eq!(requests(&dst, "PATCH"), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registry_without_chunk_threshold_gets_blobs_above_the_default_in_chunks() {
        let (src, dst) = (
            FakeRegistry::start(Behavior::default()).await.unwrap(),
            FakeRegistry::start(Behavior::default()).await.unwrap(),
        );
        let (large, small) = (blob(3 * CHUNK + 7), blob(CHUNK));
        for b in [&large, &small] {
            src.put_blob(b.clone());
        }
        // The registry's config sets no chunk_threshold; 128 KiB stands in for the default.
        let ctx = context(
            client(&src, "src"),
            client(&dst, "dst").with_default_chunk_threshold(2 * CHUNK as u64),
        );
        upload_with_retries(&ctx, "team/app", "team/app", &descriptor(&large))
            .await
            .unwrap();
        assert_eq!(
            requests(&dst, "PATCH"),
            4,
            "above the default: 64 KiB chunks: {:?}",
            dst.request_log()
        );
        dst.clear_request_log();
        upload_with_retries(&ctx, "team/app", "team/app", &descriptor(&small))
            .await
            .unwrap();
        assert_eq!(
            (requests(&dst, "PATCH"), requests(&dst, "PUT")),
            (0, 1),
            "below the default: one streaming PUT: {:?}",
            dst.request_log()
        );
        for b in [&large, &small] {
            assert!(dst.has_blob(crate::oci::digest::sha256(b).as_ref()));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registry_refusing_chunks_gets_blobs_above_the_default_in_one_put() {
        let (src, dst) = (
            FakeRegistry::start(Behavior::default()).await.unwrap(),
            FakeRegistry::start(Behavior {
                refuse_patch: true,
                ..Default::default()
            })
            .await
            .unwrap(),
        );
        let large = blob(3 * CHUNK + 7);
        src.put_blob(large.clone());
        let ctx = context(
            client(&src, "src"),
            client(&dst, "dst").with_default_chunk_threshold(2 * CHUNK as u64),
        );
        upload_with_retries(&ctx, "team/app", "team/app", &descriptor(&large))
            .await
            .unwrap();
        assert!(dst.has_blob(crate::oci::digest::sha256(&large).as_ref()));
        assert!(ctx.dst.refuses_chunks());
        assert_eq!(
            requests(&dst, "PUT"),
            1,
            "one streaming PUT after the refused PATCH: {:?}",
            dst.request_log()
        );
    }
}
