//! The bottom layer of the registry client: one registry origin, its HTTP client, and requests
//! sent with the retry policy (`retry`). It knows nothing of credentials; `auth` is the layer
//! above.

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::response::{error_detail, retry_after};
use super::retry::RetryPolicy;
use super::transport::{Transport, classify, proxy_authentication_detail};
use crate::error::{CopyError, ProxyProblem, Side};
use crate::proxy::Proxies;

/// One registry origin.
pub struct Endpoint {
    pub side: Side,
    /// The registry as the reference names it (for messages).
    pub name: String,
    pub base: Url,
    pub transport: Transport,
    pub http: reqwest::Client,
    /// The proxies `http` sends through (for messages).
    pub proxies: Proxies,
    /// The retry policy of single requests.
    pub policy: RetryPolicy,
}

impl Endpoint {
    pub fn url(&self, path: &str) -> Result<Url, CopyError> {
        self.base
            .join(path)
            .map_err(|e| self.registry_error(None, format!("bad URL path {path:?}: {e}")))
    }

    pub fn registry_error(&self, status: Option<u16>, detail: String) -> CopyError {
        CopyError::Registry {
            side: self.side,
            registry: self.name.clone(),
            status,
            detail,
        }
    }

    pub fn auth_error(&self, detail: String) -> CopyError {
        CopyError::AuthenticationFailed {
            side: self.side,
            registry: self.name.clone(),
            detail,
        }
    }

    pub fn rate_limited(&self, response: &Response) -> CopyError {
        CopyError::RateLimited {
            side: self.side,
            registry: self.name.clone(),
            retry_after: retry_after(response),
        }
    }

    /// A failed request in the engine's terms.
    pub fn classify(&self, error: &reqwest::Error) -> CopyError {
        classify(self.side, &self.name, self.transport, &self.proxies, error)
    }

    /// A 407 answer: the proxy a forwarded (plain HTTP) request went through wants other
    /// credentials. (A tunnelled request's 407 is a connection error, see `classify`.)
    pub fn proxy_refusal(&self, response: &Response) -> Option<CopyError> {
        if response.status() != StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            return None;
        }
        let route = self.proxies.route(response.url())?;
        Some(CopyError::Proxy {
            side: self.side,
            registry: self.name.clone(),
            detail: proxy_authentication_detail(&route),
            proxy: route.address,
            origin: route.origin,
            problem: ProxyProblem::AuthenticationFailed,
        })
    }

    /// Whether `url` is the registry's own origin (the only one credentials are sent to).
    pub fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    /// One request, with transient failures (connection errors, 5xx, 429) retried as `policy`
    /// says. A 429 that is not retried is `RateLimited`; other statuses are the caller's.
    pub async fn send(
        &self,
        policy: &RetryPolicy,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response, CopyError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let wait = match request.send().await {
                Ok(response) => {
                    if let Some(refusal) = self.proxy_refusal(&response) {
                        return Err(refusal);
                    }
                    let status = response.status();
                    match policy.wait_after_status(attempt, status, retry_after(&response)) {
                        Some(wait) => wait,
                        None if status == StatusCode::TOO_MANY_REQUESTS => {
                            return Err(self.rate_limited(&response));
                        }
                        None => return Ok(response),
                    }
                }
                Err(e) => {
                    let error = self.classify(&e);
                    match policy.wait_after_error(attempt, &error) {
                        Some(wait) => wait,
                        None => return Err(error),
                    }
                }
            };
            tracing::debug!(side = %self.side, registry = %self.name, attempt, ?wait, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Turn an unexpected response into an error, with the registry's own message.
    pub async fn status_error(&self, response: Response, what: &str) -> CopyError {
        if let Some(refusal) = self.proxy_refusal(&response) {
            return refusal;
        }
        let status = response.status();
        // A forwarding proxy (plain HTTP) writes its own refusals and gateway errors.
        let forwarded = response.url().scheme() == "http"
            && (status == StatusCode::FORBIDDEN || status.is_server_error());
        let via = match self.proxies.route(response.url()) {
            Some(route) if forwarded => format!(
                " (answered through the proxy {}, which may have written this answer itself)",
                route.address
            ),
            _ => String::new(),
        };
        let detail = format!("{}{via}", error_detail(response).await);
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                self.auth_error(format!("{what}: access denied ({detail})"))
            }
            _ => self.registry_error(
                Some(status.as_u16()),
                format!("{what} failed with {status}: {detail}"),
            ),
        }
    }
}
