//! Manifest operations of the distribution API, by tag or digest, in the client's repository.
//! Manifests are kept as the exact bytes the registry served, so a copy is byte for byte.

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};

use super::client::Registry;
use super::response::{RegistryErrors, content_type, docker_digest, read_limited};
use crate::bundle::{MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, is_index_type};
use crate::digest::{self, Algorithm};
use crate::error::CopyError;

/// A manifest as read from a registry: exact bytes, media type and digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: String,
}

impl Registry {
    fn manifest_url(&self, reference: &str) -> Result<url::Url, CopyError> {
        let repository = &self.repository;
        self.endpoint()
            .url(&format!("v2/{repository}/manifests/{reference}"))
    }

    /// GET or HEAD a manifest: the successful response, `None` when the registry does not have
    /// it, an error (with the registry's own message) otherwise.
    async fn manifest_request(
        &self,
        method: Method,
        reference: &str,
    ) -> Result<Option<Response>, CopyError> {
        let repository = &self.repository;
        let url = self.manifest_url(reference)?;
        let mut accept = HeaderMap::new();
        accept.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let response = self
            .auth
            .send(self.policy(), method.clone(), &url, accept, None)
            .await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let what = format!("{method} manifest {repository}:{reference}");
            return Err(self.endpoint().status_error(response, &what).await);
        }
        Ok(Some(response))
    }

    /// GET a manifest by tag or digest. `None` when the registry does not have it. The bytes
    /// must hash to the digest asked for (or announced, for a tag), in that digest's algorithm.
    pub async fn get_manifest(&self, reference: &str) -> Result<Option<Manifest>, CopyError> {
        let Some(response) = self.manifest_request(Method::GET, reference).await? else {
            return Ok(None);
        };
        let media_type = content_type(response.headers());
        let announced = docker_digest(response.headers());
        let bytes = read_limited(response, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| CopyError::NotABundle {
                reference: format!("{}/{}:{reference}", self.name(), self.repository),
                detail: format!("its manifest could not be read: {e}"),
            })?;
        let expected = if reference.contains(':') {
            Some(reference.to_string())
        } else {
            announced
        };
        let algorithm = expected
            .as_deref()
            .map(Algorithm::of)
            .unwrap_or(Algorithm::Sha256);
        let digest = digest::compute(algorithm, &bytes);
        if let Some(expected) = expected.filter(|d| digest::validate(d).is_ok())
            && expected != digest
        {
            return Err(CopyError::DigestMismatch {
                side: self.endpoint().side,
                registry: self.name().to_string(),
                digest: expected,
                detail: format!("the manifest's bytes hash to {digest}"),
            });
        }
        Ok(Some(Manifest {
            bytes,
            media_type,
            digest,
        }))
    }

    /// HEAD a manifest: its digest, or `None` when absent.
    pub async fn head_manifest(&self, reference: &str) -> Result<Option<String>, CopyError> {
        let Some(response) = self.manifest_request(Method::HEAD, reference).await? else {
            return Ok(None);
        };
        match docker_digest(response.headers()) {
            Some(digest) => Ok(Some(digest)),
            // Registries without Docker-Content-Digest: hash the manifest itself.
            None => Ok(self.get_manifest(reference).await?.map(|m| m.digest)),
        }
    }

    /// PUT manifest bytes, unchanged, under a tag or digest. Returns the digest the registry
    /// reports.
    pub async fn put_manifest(
        &self,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<Option<String>, CopyError> {
        Ok(self.put(reference, bytes, media_type).await?.digest)
    }

    /// PUT a manifest that names a `subject`, by digest: the digest the registry reports and the
    /// `OCI-Subject` header, which a registry with the referrers API sends when it has indexed
    /// the manifest as a referrer of its subject.
    pub async fn put_referrer(
        &self,
        digest: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<Pushed, CopyError> {
        self.put(digest, bytes, media_type).await
    }

    async fn put(
        &self,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<Pushed, CopyError> {
        let repository = &self.repository;
        let url = self.manifest_url(reference)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|_| {
                self.endpoint().registry_error(
                    None,
                    format!("media type {media_type:?} is not a valid header"),
                )
            })?,
        );
        let what = format!("PUT manifest {repository}:{reference}");
        let response = self
            .send_put(&url, headers, bytes, media_type, &what)
            .await?;
        if !response.status().is_success() {
            return Err(self.endpoint().status_error(response, &what).await);
        }
        let subject = response
            .headers()
            .get("oci-subject")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string());
        Ok(Pushed {
            digest: docker_digest(response.headers()),
            subject,
        })
    }

    /// Send a manifest PUT. Distribution 2.8's filesystem storage rewrites a repository's link
    /// file in place (truncate, then write) each time it links a blob (an upload, a mount) or
    /// a manifest (a PUT), so a PUT that checks a blob while another request links the same
    /// blob can read an empty link and be refused with 400 DIGEST_INVALID +
    /// MANIFEST_BLOB_UNKNOWN although the blob is there: copies of bundles sharing layers into
    /// one repository meet this. So the blobs (child manifests, for an index) such a refusal
    /// names are looked up with HEAD: when all are there, the PUT is sent again
    /// (`RetryPolicy::wait_after_contradiction`); otherwise the refusal is the error, naming
    /// what is missing.
    async fn send_put(
        &self,
        url: &url::Url,
        headers: HeaderMap,
        bytes: Bytes,
        media_type: &str,
        what: &str,
    ) -> Result<Response, CopyError> {
        let mut refusals = 0;
        loop {
            let response = self
                .auth
                .send(
                    self.policy(),
                    Method::PUT,
                    url,
                    headers.clone(),
                    Some(bytes.clone()),
                )
                .await?;
            if response.status() != StatusCode::BAD_REQUEST {
                return Ok(response);
            }
            let errors = RegistryErrors::read(response).await;
            let detail = errors
                .describe()
                .unwrap_or_else(|| StatusCode::BAD_REQUEST.to_string());
            let refused = |detail: String| {
                self.endpoint().registry_error(
                    Some(400),
                    format!("{what} failed with {}: {detail}", StatusCode::BAD_REQUEST),
                )
            };
            let unknown = errors.unknown_blobs();
            if unknown.is_empty() {
                return Err(refused(detail));
            }
            if let Some(missing) = self.first_missing(&unknown, media_type).await? {
                return Err(refused(format!(
                    "{detail} ({missing} is not in {})",
                    self.repository
                )));
            }
            refusals += 1;
            let Some(wait) = self.policy().wait_after_contradiction(refusals) else {
                return Err(refused(format!(
                    "{detail}, although a HEAD finds each blob it names ({refusals} refusals)"
                )));
            };
            tracing::warn!(side = %self.endpoint().side, registry = %self.name(), %what, blobs = ?unknown, ?wait,
                "the registry refused a manifest for blobs it holds; sending it again");
            tokio::time::sleep(wait).await;
        }
    }

    /// The first of `digests` this repository does not hold: blobs, or manifests when
    /// `media_type` is an index's.
    async fn first_missing(
        &self,
        digests: &[String],
        media_type: &str,
    ) -> Result<Option<String>, CopyError> {
        for digest in digests {
            let present = if is_index_type(media_type) {
                self.head_manifest(digest).await?.is_some()
            } else {
                self.has_blob(digest, self.policy()).await?
            };
            if !present {
                return Ok(Some(digest.clone()));
            }
        }
        Ok(None)
    }
}

/// What a registry answered to a manifest PUT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pushed {
    /// `Docker-Content-Digest`, when sent and valid.
    pub digest: Option<String>,
    /// `OCI-Subject`, when sent.
    pub subject: Option<String>,
}
