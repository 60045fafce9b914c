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

/// The registry's own error message (`{"errors":[{"code","message"}]}`), or the status text.
pub async fn error_detail(response: Response) -> String {
    let status = response.status();
    let body = read_limited(response, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(errors) = serde_json::from_slice::<Errors>(&body) {
        let joined: Vec<String> = errors
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect();
        if !joined.is_empty() {
            return joined.join("; ");
        }
    }
    status.to_string()
}
