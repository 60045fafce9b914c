//! Reading registry answers: headers the distribution API defines, bodies with a size limit, and
//! the registry's own error messages.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::Response;
use reqwest::header::{self, HeaderMap};

use super::transport::error_chain;

/// Largest error body read for its message.
const MAX_ERROR_BODY: usize = 4096;

/// The media type of a response, without parameters.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_string())
        .unwrap_or_default()
}

/// `Docker-Content-Digest`, when present and a valid digest.
pub fn docker_digest(headers: &HeaderMap) -> Option<String> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| crate::digest::validate(v).is_ok())
}

/// `Retry-After` in seconds (the HTTP-date form is read as one second).
pub fn retry_after(response: &Response) -> Option<Duration> {
    let value = response
        .headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    Some(match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => Duration::from_secs(1),
    })
}

/// Read a body up to `limit` bytes; more is an error (a registry must not make us hold more).
pub async fn read_limited(response: Response, limit: usize) -> Result<Bytes, String> {
    if let Some(length) = response.content_length()
        && length > limit as u64
    {
        return Err(format!(
            "it is {length} bytes, more than the {limit} byte limit"
        ));
    }
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| error_chain(&e))?;
        if buffer.len() + chunk.len() > limit {
            return Err(format!("it is more than the {limit} byte limit"));
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buffer))
}

/// The errors a registry sent in its body (`{"errors":[{"code","message","detail"}]}`).
#[derive(Debug, Default, serde::Deserialize)]
pub struct RegistryErrors {
    #[serde(default)]
    errors: Vec<RegistryErrorItem>,
}

#[derive(Debug, serde::Deserialize)]
struct RegistryErrorItem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    detail: serde_json::Value,
}

impl RegistryErrors {
    /// Read and parse an error body (at most a few KiB); anything else gives no errors.
    pub async fn read(response: Response) -> RegistryErrors {
        let body = read_limited(response, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        RegistryErrors::parse(&body)
    }

    pub fn parse(body: &[u8]) -> RegistryErrors {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// The digests a manifest PUT was refused for as unknown blobs (`MANIFEST_BLOB_UNKNOWN`,
    /// whose detail is the digest).
    pub fn unknown_blobs(&self) -> Vec<String> {
        self.errors
            .iter()
            .filter(|e| e.code == "MANIFEST_BLOB_UNKNOWN")
            .filter_map(|e| e.detail.as_str())
            .filter(|d| crate::digest::validate(d).is_ok())
            .map(str::to_string)
            .collect()
    }

    /// `CODE: message; …`, or `None` when the body held no errors.
    pub fn describe(&self) -> Option<String> {
        let joined: Vec<String> = self
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect();
        (!joined.is_empty()).then(|| joined.join("; "))
    }
}

/// The registry's own error message (`{"errors":[{"code","message"}]}`), or the status text.
pub async fn error_detail(response: Response) -> String {
    let status = response.status();
    RegistryErrors::read(response)
        .await
        .describe()
        .unwrap_or_else(|| status.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_blobs_are_read_from_distributions_refusal() {
        // What distribution 2.8 answers when a manifest PUT finds an empty link file.
        let body = br#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"},{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"}]}"#;
        let errors = RegistryErrors::parse(body);
        assert_eq!(
            errors.unknown_blobs(),
            ["sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"]
        );
        assert_eq!(
            errors.describe().unwrap(),
            "DIGEST_INVALID: provided digest did not match uploaded content; MANIFEST_BLOB_UNKNOWN: blob unknown to registry"
        );
        let other = RegistryErrors::parse(
            br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","detail":{"x":1}}]}"#,
        );
        assert!(other.unknown_blobs().is_empty());
        assert!(RegistryErrors::parse(b"not json").describe().is_none());
    }
}
