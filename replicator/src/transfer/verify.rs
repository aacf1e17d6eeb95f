//! The source's bytes on their way to the destination: [`source_bytes`] reads a blob from the
//! transfer's [`super::Source`] ([`registry_bytes`] is a registry's: it resumes a body that broke
//! off with `Range`); [`VerifiedStream`] counts, throttles, makes cancellable and verifies them for
//! a monolithic upload.
//!
//! Invariants: the final chunk of a [`VerifiedStream`] is released only after size and digest
//! matched, so a corrupt source never completes an upload; a stream failure leaves its real cause
//! in the failure slot (the HTTP body only sees [`StreamFailure`]); [`source_bytes`] ends where the
//! source's body ends — sizes and digests are its consumer's to check.
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{stream, StreamExt};

use crate::oci::digest::{Digest, DigestVerifier};
use crate::oci::{RegistryClient, RegistryError};

use super::{Result, TransferContext, TransferError};

/// How often one blob read from the source may resume after its body broke off.
pub const READ_RESUMES: u32 = 3;

/// The bytes of blob `digest` (`size` bytes) in `src_repo` on the transfer's source, from `from` to
/// the end; sizes and digests are the consumer's to check.
pub(super) fn source_bytes(
    ctx: &TransferContext,
    src_repo: &str,
    digest: &Digest,
    from: u64,
    size: u64,
) -> impl futures_util::Stream<Item = Result<Bytes>> + Send + Unpin + 'static {
    ctx.src.clone().blob_bytes(src_repo, digest, from, size)
}

/// The bytes of blob `digest` (`size` bytes) in `src_repo` on registry `src`, from `from` to the
/// end. A body that breaks off (connection reset, timeout) is requested again with `Range` from the
/// first byte not received yet, at most [`READ_RESUMES`] times; a source that ignores `Range` (200
/// instead of 206) sends the whole blob and the bytes before the wanted offset are dropped. Ends
/// where the source's body ends: sizes and digests are the consumer's to check.
pub(super) fn registry_bytes(
    src: Arc<RegistryClient>,
    src_repo: &str,
    digest: &Digest,
    from: u64,
    size: u64,
) -> impl futures_util::Stream<Item = Result<Bytes>> + Send + Unpin + 'static {
    let read = BlobRead {
        src,
        repository: src_repo.to_string(),
        digest: digest.clone(),
        size,
        pos: from,
        body: None,
        skip: 0,
        resumes_left: READ_RESUMES,
        done: from >= size && size > 0,
    };
    Box::pin(stream::unfold(read, |mut r| async move {
        loop {
            if r.done {
                return None;
            }
            let body = match r.body().await {
                Ok(body) => body,
                Err(e) => {
                    r.done = true;
                    return Some((Err(e.into()), r));
                }
            };
            match body.next().await {
                None => return None,
                Some(Ok(chunk)) => {
                    let Some(chunk) = drop_skipped(chunk, &mut r.skip) else {
                        continue;
                    };
                    r.pos += chunk.len() as u64;
                    return Some((Ok(chunk), r));
                }
                Some(Err(e)) if r.resumes_left > 0 && r.pos < r.size => {
                    r.resumes_left -= 1;
                    tracing::info!(registry = %r.src.name(), repository = %r.repository, digest = %r.digest, offset = r.pos, error = %e, "blob download broke off; resuming from the last byte received");
                    r.body = None;
                }
                Some(Err(cause)) => {
                    r.done = true;
                    let e = RegistryError::Transport {
                        registry: r.src.name().to_string(),
                        url: format!("blob {}", r.digest),
                        cause,
                    };
                    return Some((Err(e.into()), r));
                }
            }
        }
    }))
}

/// The state of one [`source_bytes`] read.
struct BlobRead {
    src: Arc<RegistryClient>,
    repository: String,
    digest: Digest,
    size: u64,
    /// The next byte to deliver.
    pos: u64,
    body: Option<stream::BoxStream<'static, reqwest::Result<Bytes>>>,
    /// Bytes of the current body to drop (it started before `pos`).
    skip: u64,
    resumes_left: u32,
    done: bool,
}

impl BlobRead {
    /// The body being read, else a new `GET` of the blob from `pos` (noting the bytes to drop when
    /// the source ignored `Range`).
    async fn body(
        &mut self,
    ) -> std::result::Result<&mut stream::BoxStream<'static, reqwest::Result<Bytes>>, RegistryError>
    {
        let body = match self.body.take() {
            Some(body) => body,
            None => {
                let got = self
                    .src
                    .get_blob(&self.repository, &self.digest, self.pos)
                    .await?;
                self.skip = self.pos - got.start.min(self.pos);
                if self.skip > 0 {
                    tracing::debug!(registry = %self.src.name(), repository = %self.repository, digest = %self.digest, offset = self.pos, "the source ignored the Range request; dropping the bytes before the offset");
                }
                got.response.bytes_stream().boxed()
            }
        };
        Ok(self.body.insert(body))
    }
}

/// `chunk` without the `skip` bytes still to drop (counting them off); `None` when nothing of it
/// is left to deliver.
fn drop_skipped(mut chunk: Bytes, skip: &mut u64) -> Option<Bytes> {
    if *skip > 0 {
        let drop = (*skip).min(chunk.len() as u64);
        chunk = chunk.slice(drop as usize..);
        *skip -= drop;
        if chunk.is_empty() {
            return None;
        }
    }
    Some(chunk)
}

/// The error a [`VerifiedStream`] yields to the HTTP body; the real cause is in the failure slot.
#[derive(Debug)]
pub struct StreamFailure;

impl std::fmt::Display for StreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("blob stream aborted")
    }
}
impl std::error::Error for StreamFailure {}

/// Source bytes on their way to the destination: counted, throttled, cancellable, and verified —
/// the final chunk is only released after size and digest matched.
pub(super) struct VerifiedStream {
    pub(super) ctx: TransferContext,
    pub(super) registry: String,
    pub(super) repository: String,
    pub(super) digest: Digest,
    pub(super) expected: u64,
    pub(super) verifier: Option<DigestVerifier>,
    pub(super) failure: Arc<Mutex<Option<TransferError>>>,
}

impl VerifiedStream {
    fn fail(&self, e: TransferError) -> StreamFailure {
        *crate::locks::lock(&self.failure) = Some(e);
        StreamFailure
    }

    fn mismatch(&self, actual: String) -> TransferError {
        self.ctx.src.corrupt(&self.repository, &self.digest, actual)
    }

    fn size_mismatch(&self, actual: u64) -> TransferError {
        TransferError::Registry(RegistryError::SizeMismatch {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            digest: self.digest.to_string(),
            expected: self.expected,
            actual,
        })
    }

    /// Checks the content once all expected bytes were seen.
    fn finish(&mut self) -> std::result::Result<(), StreamFailure> {
        if let Some(v) = self.verifier.take() {
            if let Err(actual) = v.finish() {
                let e = self.mismatch(actual);
                return Err(self.fail(e));
            }
        }
        Ok(())
    }

    pub(super) fn into_stream<S>(
        self,
        inner: S,
    ) -> impl futures_util::Stream<Item = std::result::Result<Bytes, StreamFailure>>
           + Send
           + Unpin
           + 'static
    where
        S: futures_util::Stream<Item = Result<Bytes>> + Send + Unpin + 'static,
    {
        Box::pin(stream::unfold(
            (self, inner, false),
            |(mut st, mut inner, done)| async move {
                if done {
                    return None;
                }
                let next = tokio::select! {
                    n = inner.next() => n,
                    _ = st.ctx.cancel.cancelled() => {
                        let e = st.fail(TransferError::Cancelled);
                        return Some((Err(e), (st, inner, true)));
                    }
                };
                match next {
                    None => {
                        let seen = st.verifier.as_ref().map(|v| v.len()).unwrap_or(st.expected);
                        if seen != st.expected {
                            let e = st.size_mismatch(seen);
                            let e = st.fail(e);
                            return Some((Err(e), (st, inner, true)));
                        }
                        // Zero-length blobs end here; others were finished with their last chunk.
                        match st.finish() {
                            Ok(()) => None,
                            Err(e) => Some((Err(e), (st, inner, true))),
                        }
                    }
                    Some(Err(e)) => {
                        let e = st.fail(e);
                        Some((Err(e), (st, inner, true)))
                    }
                    Some(Ok(chunk)) => {
                        let Some(v) = st.verifier.as_mut() else {
                            // Bytes after the verified end: the source sent more than the descriptor said.
                            let e = st.size_mismatch(st.expected + chunk.len() as u64);
                            let e = st.fail(e);
                            return Some((Err(e), (st, inner, true)));
                        };
                        v.update(&chunk);
                        let seen = v.len();
                        if seen > st.expected {
                            let e = st.size_mismatch(seen);
                            let e = st.fail(e);
                            return Some((Err(e), (st, inner, true)));
                        }
                        if seen == st.expected {
                            if let Err(e) = st.finish() {
                                return Some((Err(e), (st, inner, true)));
                            }
                        }
                        if let Some(t) = &st.ctx.throttle {
                            if !t.consume(chunk.len() as u64, &st.ctx.cancel).await {
                                let e = st.fail(TransferError::Cancelled);
                                return Some((Err(e), (st, inner, true)));
                            }
                        }
                        st.ctx
                            .stats
                            .bytes_copied
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        Some((Ok(chunk), (st, inner, false)))
                    }
                }
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_before_the_offset_are_dropped_across_chunks() {
        let mut skip = 5;
        assert_eq!(drop_skipped(Bytes::from_static(b"abc"), &mut skip), None);
        assert_eq!(skip, 2);
        assert_eq!(
            drop_skipped(Bytes::from_static(b"defgh"), &mut skip),
            Some(Bytes::from_static(b"fgh"))
        );
        assert_eq!(skip, 0);
        assert_eq!(
            drop_skipped(Bytes::from_static(b"ijk"), &mut skip),
            Some(Bytes::from_static(b"ijk"))
        );
    }

    #[test]
    fn an_empty_chunk_is_delivered_when_nothing_is_to_be_dropped() {
        let mut skip = 0;
        assert_eq!(drop_skipped(Bytes::new(), &mut skip), Some(Bytes::new()));
    }
}
