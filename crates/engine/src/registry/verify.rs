//! A blob on its way from source to destination: hashed, counted and checked against its digest
//! and size as it passes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use super::transport::error_chain;
use crate::digest::Hasher;

/// Why a stream stopped.
pub enum StreamProblem {
    /// The bytes are not the blob the manifest names.
    Mismatch(String),
    /// Reading the source failed.
    Source(String),
}

/// What the stream found, read after the upload ends.
#[derive(Clone, Default)]
pub struct Verdict(Arc<Mutex<Option<StreamProblem>>>);

impl Verdict {
    fn set(&self, problem: StreamProblem) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(problem);
    }

    pub fn take(&self) -> Option<StreamProblem> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

type Source = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Passes a blob from source to destination, hashing and counting on the way. It holds back the
/// last chunk until the whole blob is verified, so the destination never receives all the bytes
/// of a blob whose digest does not match.
pub struct VerifyingStream {
    inner: Source,
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
    pub fn new(
        inner: Source,
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
                    return self.fail(StreamProblem::Source(error_chain(&e)));
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
