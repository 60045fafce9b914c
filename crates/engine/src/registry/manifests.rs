//! Manifest operations of the distribution API, by tag or digest, in the client's repository.
//! Manifests are kept as the exact bytes the registry served, so a copy is byte for byte.

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};

use super::client::Registry;
use super::response::{content_type, docker_digest, read_limited};
use crate::bundle::{MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
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
        let response = self
            .auth
            .send(self.policy(), Method::PUT, &url, headers, Some(bytes))
            .await?;
        if !response.status().is_success() {
            let what = format!("PUT manifest {repository}:{reference}");
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
}

/// What a registry answered to a manifest PUT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pushed {
    /// `Docker-Content-Digest`, when sent and valid.
    pub digest: Option<String>,
    /// `OCI-Subject`, when sent.
    pub subject: Option<String>,
}
