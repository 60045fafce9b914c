//! Blob operations of the distribution API and the transfer of one blob from a source registry to
//! this one. A transfer is one unit for the retry policy: its requests are sent once each per
//! attempt (a streamed body cannot be replayed), and the unit is attempted again as a whole.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use futures_util::TryStreamExt;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::client::Registry;
use super::response::{read_limited, retry_after};
use super::retry::RetryPolicy;
use super::transport::error_chain;
use crate::digest;
use crate::error::CopyError;
use crate::verify::{BlobStream, StreamProblem, Verification};

const MAX_REDIRECTS: usize = 5;

/// One blob to move: its digest and the size its manifest gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
}

/// What a transfer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobAction {
    /// Streamed from the source.
    Copied,
    /// Mounted from another repository of this registry.
    Mounted,
    /// Already present.
    Skipped,
}

/// What is known, before a transfer, of the blob at the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Nothing: the transfer asks first (HEAD).
    Unknown,
    /// A HEAD just found it there: nothing to transfer.
    Present,
    /// A HEAD just found it missing.
    Absent,
}

impl Presence {
    /// What a transfer's attempt knows: after a failed attempt the blob may have arrived after
    /// all (an answer lost on the way back), so later attempts look again.
    fn at_attempt(self, attempt: u32) -> Presence {
        if attempt == 1 {
            self
        } else {
            Presence::Unknown
        }
    }
}

/// Result of a cross-repository mount request.
enum Mount {
    Mounted,
    /// The registry opened an ordinary upload session instead (HTTP 202).
    Upload(Url),
}

impl Registry {
    fn blob_url(&self, digest: &str) -> Result<Url, CopyError> {
        let repository = &self.repository;
        self.endpoint()
            .url(&format!("v2/{repository}/blobs/{digest}"))
    }

    fn upload_url(&self) -> Result<Url, CopyError> {
        self.endpoint()
            .url(&format!("v2/{}/blobs/uploads/", self.repository))
    }

    /// One request of a blob unit: authenticated, not retried on its own.
    async fn send_once(
        &self,
        method: Method,
        url: &Url,
        body: Option<Bytes>,
    ) -> Result<Response, CopyError> {
        self.auth
            .send(&RetryPolicy::ONCE, method, url, HeaderMap::new(), body)
            .await
    }

    /// Whether the repository holds a blob (HEAD, sent as `policy` says).
    pub(super) async fn has_blob(
        &self,
        digest: &str,
        policy: &RetryPolicy,
    ) -> Result<bool, CopyError> {
        let url = self.blob_url(digest)?;
        let response = self
            .auth
            .send(policy, Method::HEAD, &url, HeaderMap::new(), None)
            .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self
                .endpoint()
                .status_error(response, &format!("HEAD blob {digest}"))
                .await),
        }
    }

    /// GET a blob, following redirects (to blob storage) without credentials.
    async fn get_blob(&self, digest: &str) -> Result<Response, CopyError> {
        let endpoint = self.endpoint();
        let mut url = self.blob_url(digest)?;
        for _ in 0..=MAX_REDIRECTS {
            let response = self.send_once(Method::GET, &url, None).await?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        endpoint.registry_error(
                            Some(status.as_u16()),
                            "redirect without a Location".into(),
                        )
                    })?;
                url = url.join(location).map_err(|e| {
                    endpoint.registry_error(
                        Some(status.as_u16()),
                        format!("bad redirect Location: {e}"),
                    )
                })?;
                tracing::debug!(side = %endpoint.side, registry = %endpoint.name, host = url.host_str().unwrap_or_default(), "following blob redirect");
                continue;
            }
            if status == StatusCode::NOT_FOUND {
                return Err(endpoint.registry_error(
                    Some(404),
                    format!("blob {digest} is missing from {}", self.repository),
                ));
            }
            if !status.is_success() {
                return Err(endpoint
                    .status_error(response, &format!("GET blob {digest}"))
                    .await);
            }
            return Ok(response);
        }
        Err(endpoint.registry_error(
            None,
            format!("more than {MAX_REDIRECTS} redirects for blob {digest}"),
        ))
    }

    /// A blob's bytes as the registry serves them (one attempt; the receiving side retries the
    /// whole transfer), after checking that its length is the size the manifest gives.
    pub async fn open_blob(&self, blob: &BlobRef) -> Result<BlobStream, CopyError> {
        let response = self.get_blob(&blob.digest).await?;
        self.blob_stream(blob, response)
    }

    fn blob_stream(&self, blob: &BlobRef, response: Response) -> Result<BlobStream, CopyError> {
        if let Some(length) = response.content_length().filter(|l| *l != blob.size) {
            return Err(self.mismatch(
                &blob.digest,
                format!(
                    "the source sent {length} bytes where the manifest says {}",
                    blob.size
                ),
            ));
        }
        Ok(Box::pin(
            response
                .bytes_stream()
                .map_err(|e| std::io::Error::other(error_chain(&e))),
        ))
    }

    /// This registry served bytes that are not the blob `digest` names.
    pub fn mismatch(&self, digest: &str, detail: String) -> CopyError {
        CopyError::DigestMismatch {
            side: self.endpoint().side,
            registry: self.name().to_string(),
            digest: digest.to_string(),
            detail,
        }
    }

    /// A problem a verified stream of one of this registry's blobs found.
    pub fn stream_problem(&self, digest: &str, problem: StreamProblem) -> CopyError {
        match problem {
            StreamProblem::Mismatch(detail) => self.mismatch(digest, detail),
            StreamProblem::Source(detail) => CopyError::Unreachable {
                side: self.endpoint().side,
                registry: self.name().to_string(),
                detail: format!("reading blob {digest} failed: {detail}"),
            },
        }
    }

    /// Read a small blob whole (bundle.json), checking its digest; retried as a unit.
    pub async fn read_blob(&self, digest: &str, limit: usize) -> Result<Bytes, CopyError> {
        self.policy()
            .run(&format!("reading blob {digest}"), |_| async move {
                let response = self.get_blob(digest).await?;
                let bytes = read_limited(response, limit).await.map_err(|e| {
                    self.endpoint()
                        .registry_error(None, format!("reading blob {digest} failed: {e}"))
                })?;
                let actual = digest::compute(digest::Algorithm::of(digest), &bytes);
                if actual != digest {
                    return Err(self.mismatch(digest, format!("the bytes hash to {actual}")));
                }
                Ok(bytes)
            })
            .await
    }

    /// Ask for a cross-repository mount; a registry that cannot mount opens an upload instead.
    async fn mount_blob(&self, digest: &str, from: &str) -> Result<Mount, CopyError> {
        let mut url = self.upload_url()?;
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from);
        let response = self
            .send_once(Method::POST, &url, Some(Bytes::new()))
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Upload(self.location(&response)?)),
            _ => Err(self
                .endpoint()
                .status_error(response, &format!("mount of {digest}"))
                .await),
        }
    }

    /// Open an upload session.
    async fn start_upload(&self) -> Result<Url, CopyError> {
        let url = self.upload_url()?;
        let response = self
            .send_once(Method::POST, &url, Some(Bytes::new()))
            .await?;
        match response.status() {
            StatusCode::ACCEPTED => self.location(&response),
            _ => Err(self
                .endpoint()
                .status_error(response, "starting a blob upload")
                .await),
        }
    }

    /// Finish an upload with one streamed PUT.
    async fn finish_upload(
        &self,
        location: &Url,
        blob: &BlobRef,
        body: reqwest::Body,
    ) -> Result<(), CopyError> {
        let endpoint = self.endpoint();
        let mut url = location.clone();
        url.query_pairs_mut().append_pair("digest", &blob.digest);
        let mut request = endpoint
            .http
            .put(url.clone())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, blob.size)
            .body(body);
        if let Some(value) = self.auth.authorization(&url) {
            request = request.header(header::AUTHORIZATION, value);
        }
        let response = request.send().await.map_err(|e| endpoint.classify(&e))?;
        match response.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            StatusCode::TOO_MANY_REQUESTS => Err(CopyError::RateLimited {
                side: endpoint.side,
                registry: endpoint.name.clone(),
                retry_after: retry_after(&response),
            }),
            _ => Err(endpoint
                .status_error(response, &format!("upload of {}", blob.digest))
                .await),
        }
    }

    fn location(&self, response: &Response) -> Result<Url, CopyError> {
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                self.endpoint().registry_error(
                    Some(response.status().as_u16()),
                    "upload answer without a Location".into(),
                )
            })?;
        // Location may be absolute or relative to the registry.
        response.url().join(location).map_err(|e| {
            self.endpoint()
                .registry_error(None, format!("bad upload Location: {e}"))
        })
    }

    /// Whether the repository holds a blob: one HEAD (retried as a single request).
    pub async fn holds_blob(&self, digest: &str) -> Result<bool, CopyError> {
        self.has_blob(digest, self.policy()).await
    }

    /// Whether an attempt finds `blob` here already: asked unless `presence` says.
    async fn present(&self, blob: &BlobRef, presence: Presence) -> Result<bool, CopyError> {
        match presence {
            Presence::Present => Ok(true),
            Presence::Absent => Ok(false),
            Presence::Unknown => self.has_blob(&blob.digest, &RetryPolicy::ONCE).await,
        }
    }

    /// Bring `blob` from `source` into this registry's repository: nothing when it is already
    /// here (asked unless `presence` says), a mount when this client mounts from the source
    /// repository, else a verified stream. `bytes` counts the bytes streamed (what a failed
    /// attempt counted is taken back).
    pub async fn transfer_blob(
        &self,
        source: &Registry,
        blob: &BlobRef,
        presence: Presence,
        bytes: &Arc<AtomicU64>,
    ) -> Result<BlobAction, CopyError> {
        self.policy()
            .run(&format!("copying blob {}", blob.digest), |attempt| {
                self.transfer_once(source, blob, presence.at_attempt(attempt), bytes)
            })
            .await
    }

    async fn transfer_once(
        &self,
        source: &Registry,
        blob: &BlobRef,
        presence: Presence,
        bytes: &Arc<AtomicU64>,
    ) -> Result<BlobAction, CopyError> {
        if self.present(blob, presence).await? {
            return Ok(BlobAction::Skipped);
        }
        let (location, response) = match &self.mount_from {
            Some(from) => {
                let location = match self.mount_blob(&blob.digest, from).await {
                    Ok(Mount::Mounted) => return Ok(BlobAction::Mounted),
                    Ok(Mount::Upload(location)) => location,
                    // Credentials that may push here but not read the source repository cannot
                    // mount: upload instead.
                    Err(CopyError::AuthenticationFailed { .. }) => self.start_upload().await?,
                    Err(e) => return Err(e),
                };
                (location, source.get_blob(&blob.digest).await?)
            }
            // Open the upload and start reading the source at once: one round trip less per
            // blob, which is most of the cost of small blobs.
            None => tokio::try_join!(self.start_upload(), source.get_blob(&blob.digest))?,
        };
        let stream = source.blob_stream(blob, response)?;
        self.stream_blob(blob, location, stream, bytes, |problem| {
            source.stream_problem(&blob.digest, problem)
        })
        .await
        .map(|()| BlobAction::Copied)
    }

    /// Bring `blob` into this repository from a source that is not a registry (a layout or an
    /// archive), or from bytes already read: nothing when it is already here (asked unless
    /// `presence` says), else a verified stream of what `open` serves. `problem` phrases what
    /// the stream found wrong in the source's terms.
    pub async fn upload_blob<Open, Opened>(
        &self,
        blob: &BlobRef,
        presence: Presence,
        open: Open,
        problem: impl Fn(StreamProblem) -> CopyError,
        bytes: &Arc<AtomicU64>,
    ) -> Result<BlobAction, CopyError>
    where
        Open: Fn() -> Opened,
        Opened: Future<Output = Result<BlobStream, CopyError>>,
    {
        let (open, problem) = (&open, &problem);
        self.policy()
            .run(
                &format!("copying blob {}", blob.digest),
                |attempt| async move {
                    if self.present(blob, presence.at_attempt(attempt)).await? {
                        return Ok(BlobAction::Skipped);
                    }
                    let (location, stream) = tokio::try_join!(self.start_upload(), open())?;
                    self.stream_blob(blob, location, stream, bytes, problem)
                        .await
                        .map(|()| BlobAction::Copied)
                },
            )
            .await
    }

    async fn stream_blob(
        &self,
        blob: &BlobRef,
        location: Url,
        stream: BlobStream,
        bytes: &Arc<AtomicU64>,
        problem: impl FnOnce(StreamProblem) -> CopyError,
    ) -> Result<(), CopyError> {
        let (stream, verification) = Verification::start(stream, &blob.digest, blob.size, bytes);
        let result = self
            .finish_upload(&location, blob, reqwest::Body::wrap_stream(stream))
            .await;
        verification.finish(result, problem)
    }
}
