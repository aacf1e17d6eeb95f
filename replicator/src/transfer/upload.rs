//! One blob's upload to the destination: monolithic (one streaming `PUT` of the verified source
//! stream) or chunked (`PATCH`es checkpointed on the job, then `PUT ?digest=`), with a few retries
//! of transient failures, and the decision whether a checkpointed session can be continued.
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
    let chunked = (ctx.copy_by_chunk
        || ctx.dst.chunk_threshold().is_some_and(|t| desc.size() >= t))
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
    let result = upload_chunked(ctx, src_repo, desc, &mut upload, hasher).await;
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
/// already; the source is read from there. The chunk that completes the blob is sent only after
/// size and digest matched, and the session is completed only then; after every confirmed chunk
/// the session, offset and hash state are checkpointed. `upload` follows the session as it moves
/// (each answer may name a new location).
async fn upload_chunked(
    ctx: &TransferContext,
    src_repo: &str,
    desc: &Descriptor,
    upload: &mut BlobUpload,
    mut hasher: DigestVerifier,
) -> Result<()> {
    let digest = desc.digest();
    let size = desc.size();
    let chunk_size = usize::try_from(ctx.dst.chunk_size()).unwrap_or(usize::MAX);
    let mut read = upload.offset;
    let mut source = source_bytes(ctx, src_repo, digest, upload.offset, size);
    let mut ended = upload.offset >= size;
    let mut buf = BytesMut::new();
    loop {
        if !ended {
            let next = tokio::select! {
                n = source.next() => n,
                _ = ctx.cancel.cancelled() => return Err(TransferError::Cancelled),
            };
            match next {
                Some(Ok(b)) => {
                    read += b.len() as u64;
                    if read > size {
                        return Err(size_mismatch(ctx, src_repo, desc, read));
                    }
                    if let Some(t) = &ctx.throttle {
                        if !t.consume(b.len() as u64, &ctx.cancel).await {
                            return Err(TransferError::Cancelled);
                        }
                    }
                    buf.extend_from_slice(&b);
                }
                Some(Err(e)) => return Err(e),
                None if read != size => return Err(size_mismatch(ctx, src_repo, desc, read)),
                None => ended = true,
            }
        }
        while buf.len() >= chunk_size || (ended && !buf.is_empty()) {
            let chunk = buf.split_to(buf.len().min(chunk_size)).freeze();
            hasher.update(&chunk);
            if hasher.len() == size {
                hasher
                    .clone()
                    .finish()
                    .map_err(|actual| digest_mismatch(ctx, src_repo, digest, actual))?;
            }
            ctx.stats
                .bytes_copied
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            *upload = ctx.dst.patch_chunk(upload, digest, chunk).await?;
            ctx.checkpoints
                .save(UploadCheckpoint {
                    destination: ctx.dst.name().to_string(),
                    repository: upload.repository.clone(),
                    digest: digest.to_string(),
                    size,
                    location: upload.location.to_string(),
                    offset: upload.offset,
                    hash_state: hasher.save(),
                })
                .await?;
        }
        if ended {
            break;
        }
    }
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
}
