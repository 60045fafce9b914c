//! A blob on its way from a source to a destination (a registry, a layout directory, an archive),
//! or read back to check it: hashed, counted and checked against its digest and size as it
//! passes. Sources hand over a `BlobStream`; `Verification` wraps it and tells afterwards what was
//! wrong, if anything.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::digest::Hasher;
use crate::error::CopyError;

/// A blob's bytes as a source serves them; an error ends the stream.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

/// Why a stream stopped.
#[derive(Debug)]
pub enum StreamProblem {
    /// The bytes are not the blob the manifest names.
    Mismatch(String),
    /// Reading the source failed.
    Source(String),
}

/// What the stream found, read after the writer ends.
#[derive(Clone, Default)]
struct Verdict(Arc<Mutex<Option<StreamProblem>>>);

impl Verdict {
    fn set(&self, problem: StreamProblem) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(problem);
    }

    fn take(&self) -> Option<StreamProblem> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Passes a blob from source to destination, hashing and counting on the way. It holds back the
/// last chunk until the whole blob is verified, so the destination never receives all the bytes
/// of a blob whose digest does not match.
pub struct VerifyingStream {
    inner: BlobStream,
    hasher: Hasher,
    expected: String,
    size: u64,
    seen: u64,
    held: Option<Bytes>,
    /// The copy's byte counter.
    bytes: Arc<AtomicU64>,
    /// Bytes this stream added to `bytes`, to take back if the attempt fails.
    counted: Arc<AtomicU64>,
    verdict: Verdict,
    done: bool,
}

impl VerifyingStream {
    fn new(
        inner: BlobStream,
        digest: &str,
        size: u64,
        bytes: Arc<AtomicU64>,
        counted: Arc<AtomicU64>,
        verdict: Verdict,
    ) -> VerifyingStream {
        VerifyingStream {
            inner,
            hasher: Hasher::for_digest(digest),
            expected: digest.to_string(),
            size,
            seen: 0,
            held: None,
            bytes,
            counted,
            verdict,
            done: false,
        }
    }

    fn fail(&mut self, problem: StreamProblem) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        let message = match &problem {
            StreamProblem::Mismatch(m) | StreamProblem::Source(m) => m.clone(),
        };
        self.verdict.set(problem);
        self.done = true;
        self.held = None;
        Poll::Ready(Some(Err(std::io::Error::other(message))))
    }

    /// Take in one chunk; what to pass on, if anything yet.
    fn accept(&mut self, chunk: Bytes) -> Result<Option<Bytes>, StreamProblem> {
        self.seen += chunk.len() as u64;
        if self.seen > self.size {
            return Err(StreamProblem::Mismatch(format!(
                "the source sent more than the {} bytes the manifest names",
                self.size
            )));
        }
        self.hasher.update(&chunk);
        self.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        self.counted
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok(self.held.replace(chunk))
    }

    /// The source ended: check size and digest.
    fn finish(&mut self) -> Result<(), StreamProblem> {
        if self.seen != self.size {
            return Err(StreamProblem::Mismatch(format!(
                "the source sent {} of {} bytes",
                self.seen, self.size
            )));
        }
        let actual = self.hasher.finish();
        if actual != self.expected {
            return Err(StreamProblem::Mismatch(format!(
                "the bytes hash to {actual}"
            )));
        }
        Ok(())
    }
}

impl Stream for VerifyingStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match self.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    return self.fail(StreamProblem::Source(e.to_string()));
                }
                Poll::Ready(Some(Ok(chunk))) if chunk.is_empty() => {}
                Poll::Ready(Some(Ok(chunk))) => match self.accept(chunk) {
                    Ok(Some(previous)) => return Poll::Ready(Some(Ok(previous))),
                    Ok(None) => {}
                    Err(problem) => return self.fail(problem),
                },
                Poll::Ready(None) => {
                    if let Err(problem) = self.finish() {
                        return self.fail(problem);
                    }
                    self.done = true;
                    return Poll::Ready(self.held.take().map(Ok));
                }
            }
        }
    }
}

/// One verified pass of a blob: `start` gives the stream to hand to the writer, `finish` what the
/// pass came to once the writer is done.
pub struct Verification {
    verdict: Verdict,
    /// Bytes this pass added to the copy's counter.
    counted: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Verification {
    /// Check `inner` against `digest` and `size` as it passes, adding to `bytes`.
    pub fn start(
        inner: BlobStream,
        digest: &str,
        size: u64,
        bytes: &Arc<AtomicU64>,
    ) -> (VerifyingStream, Verification) {
        let verdict = Verdict::default();
        let counted = Arc::new(AtomicU64::new(0));
        let stream = VerifyingStream::new(
            inner,
            digest,
            size,
            bytes.clone(),
            counted.clone(),
            verdict.clone(),
        );
        let verification = Verification {
            verdict,
            counted,
            bytes: bytes.clone(),
        };
        (stream, verification)
    }

    /// The pass's outcome from the writer's `result`: a problem the stream found comes first (the
    /// writer failed because the stream did), phrased by `problem`. A failed pass takes back the
    /// bytes it counted, since the blob will be sent again or not at all.
    pub fn finish<T>(
        self,
        result: Result<T, CopyError>,
        problem: impl FnOnce(StreamProblem) -> CopyError,
    ) -> Result<T, CopyError> {
        let found = self.verdict.take();
        if result.is_err() || found.is_some() {
            self.bytes
                .fetch_sub(self.counted.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        match found {
            Some(found) => Err(problem(found)),
            None => result,
        }
    }
}

/// Read a whole blob and check it, keeping nothing: what `bundlecopy verify` does with each blob.
pub async fn check(
    inner: BlobStream,
    digest: &str,
    size: u64,
    bytes: &Arc<AtomicU64>,
) -> Result<(), StreamProblem> {
    let (mut stream, verification) = Verification::start(inner, digest, size, bytes);
    while let Some(chunk) = stream.next().await {
        if chunk.is_err() {
            break;
        }
    }
    drop(stream);
    match verification.verdict.take() {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest;

    fn stream_of(chunks: &[&'static [u8]]) -> BlobStream {
        let chunks: Vec<Result<Bytes, io::Error>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Box::pin(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_blob_passes_only_with_its_size_and_digest() {
        let digest = digest::sha256(b"hello world");
        let bytes = Arc::new(AtomicU64::new(0));
        check(stream_of(&[b"hello ", b"world"]), &digest, 11, &bytes)
            .await
            .unwrap();
        assert_eq!(bytes.load(Ordering::Relaxed), 11);
        for (chunks, size, why) in [
            (&[b"hello ".as_slice(), b"werld"][..], 11, "hash to"),
            (&[b"hello ".as_slice()][..], 11, "6 of 11"),
            (&[b"hello ".as_slice(), b"world!"][..], 11, "more than"),
        ] {
            let problem = check(stream_of(chunks), &digest, size, &bytes)
                .await
                .unwrap_err();
            match problem {
                StreamProblem::Mismatch(detail) => assert!(detail.contains(why), "{detail}"),
                StreamProblem::Source(detail) => panic!("not a mismatch: {detail}"),
            }
        }
    }

    #[tokio::test]
    async fn a_failed_pass_takes_back_what_it_counted() {
        let digest = digest::sha256(b"abc");
        let bytes = Arc::new(AtomicU64::new(100));
        let (mut stream, verification) =
            Verification::start(stream_of(&[b"ab", b"d"]), &digest, 3, &bytes);
        while stream.next().await.is_some() {}
        assert_eq!(bytes.load(Ordering::Relaxed), 103);
        let error = verification
            .finish(Ok(()), |p| match p {
                StreamProblem::Mismatch(d) | StreamProblem::Source(d) => CopyError::InvalidSpec(d),
            })
            .unwrap_err();
        assert!(error.to_string().contains("hash to"), "{error}");
        assert_eq!(bytes.load(Ordering::Relaxed), 100);
    }
}
