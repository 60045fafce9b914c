//! One registry endpoint: transport choice, authentication, and the blob and manifest operations
//! of the distribution API that a copy needs. Requests are retried on transient failures;
//! credentials are only ever sent to the registry's own origin (never to a redirect target).

pub mod auth;
pub mod transport;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use sha2::Digest as _;
use url::Url;

use crate::bundle::{MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
use crate::copy::{EndpointOptions, EngineSettings};
use crate::credentials::Credential;
use crate::error::{CopyError, Side};
use crate::reference::Reference;
use auth::{Challenge, TokenResponse, parse_challenge};
use transport::{Transport, build_client, choose_transport, classify, error_chain};

/// A manifest as read from a registry: exact bytes, media type and digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: String,
}

/// Result of a cross-repository mount request.
pub enum Mount {
    Mounted,
    /// The registry opened an ordinary upload session instead (HTTP 202).
    Upload(Url),
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    basic: Option<HeaderValue>,
    tokens: HashMap<String, HeaderValue>,
    /// The credential candidate that last worked (refused ones are not tried again first).
    preferred: usize,
}

/// A connected registry endpoint.
pub struct Registry {
    side: Side,
    /// The registry as the reference names it (for messages).
    name: String,
    base: Url,
    transport: Transport,
    http: reqwest::Client,
    settings: EngineSettings,
    candidates: Vec<Credential>,
    state: Mutex<AuthState>,
}

const MAX_REDIRECTS: usize = 5;
const MAX_ERROR_BODY: usize = 4096;

impl Registry {
    /// Choose the transport, then ping `/v2/` to learn how the registry authenticates. For Basic
    /// authentication the credential candidates are tried in turn until one is accepted.
    pub async fn connect(
        side: Side,
        reference: &Reference,
        endpoint: &EndpointOptions,
        settings: &EngineSettings,
    ) -> Result<Registry, CopyError> {
        let host = reference.api_host().to_string();
        let transport = choose_transport(side, &host, endpoint, settings).await?;
        let http = build_client(side, transport, endpoint, settings)?;
        let base = Url::parse(&format!("{}://{host}/", transport.scheme())).map_err(|e| {
            CopyError::InvalidSpec(format!("registry host {host:?} cannot form a URL: {e}"))
        })?;
        let candidates = endpoint
            .credentials
            .lookup(reference.registry(), reference.repository());
        let registry = Registry {
            side,
            name: reference.registry().to_string(),
            base,
            transport,
            http,
            settings: settings.clone(),
            candidates,
            state: Mutex::new(AuthState::default()),
        };
        tracing::debug!(side = %side, registry = %registry.name, transport = transport.describe(),
            credentials = registry.candidates.len(), "connecting");
        registry.ping().await?;
        Ok(registry)
    }

    pub fn side(&self) -> Side {
        self.side
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    fn url(&self, path: &str) -> Result<Url, CopyError> {
        self.base
            .join(path)
            .map_err(|e| self.registry_error(None, format!("bad URL path {path:?}: {e}")))
    }

    fn registry_error(&self, status: Option<u16>, detail: String) -> CopyError {
        CopyError::Registry {
            side: self.side,
            registry: self.name.clone(),
            status,
            detail,
        }
    }

    fn auth_error(&self, detail: String) -> CopyError {
        CopyError::AuthenticationFailed {
            side: self.side,
            registry: self.name.clone(),
            detail,
        }
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AuthState> {
        // A poisoned lock only means another task panicked mid-update; the state is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn ping(&self) -> Result<(), CopyError> {
        let url = self.url("v2/")?;
        let response = self
            .send_raw(Method::GET, &url, HeaderMap::new(), None)
            .await?;
        match response.status() {
            s if s.is_success() => {
                self.lock().challenge = Some(Challenge::None);
                Ok(())
            }
            StatusCode::UNAUTHORIZED => {
                let challenge = challenge_of(&response).ok_or_else(|| {
                    self.auth_error(
                        "the registry answered 401 without a Basic or Bearer challenge".into(),
                    )
                })?;
                self.lock().challenge = Some(challenge.clone());
                if challenge == Challenge::Basic {
                    self.choose_basic_credential(&url).await?;
                }
                Ok(())
            }
            // Some registries do not serve /v2/ itself; the first real request will tell.
            StatusCode::NOT_FOUND => Ok(()),
            // Go's TLS servers answer a plain-HTTP request with 400 "Client sent an HTTP
            // request to an HTTPS server".
            StatusCode::BAD_REQUEST if self.transport == Transport::PlainHttp => Err(CopyError::Tls {
                side: self.side,
                registry: self.name.clone(),
                detail: "the registry serves HTTPS, but it was contacted over plain HTTP (the default for \
                         loopback registries)"
                    .to_string(),
            }),
            status => Err(self.status_error(response, status, "GET /v2/").await),
        }
    }

    async fn choose_basic_credential(&self, ping_url: &Url) -> Result<(), CopyError> {
        let mut refused = 0;
        for credential in &self.candidates {
            let Credential::Basic { username, password } = credential else {
                continue;
            };
            let header = basic_header(username, password);
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, header.clone());
            let response = self.send_raw(Method::GET, ping_url, headers, None).await?;
            if response.status().is_success() {
                self.lock().basic = Some(header);
                return Ok(());
            }
            refused += 1;
        }
        Err(self.auth_error(if refused == 0 {
            format!(
                "the registry requires a username and password and no credentials match {}; add an entry for it to the Docker config",
                self.name
            )
        } else {
            format!("the registry refused the username and password ({refused} tried); check the credentials for {}", self.name)
        }))
    }

    /// One request, with transient failures (connection errors, 5xx, 429) retried. No auth.
    async fn send_raw(
        &self,
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
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if let Some(wait) = self.retry_wait(&response, attempt) {
                        tracing::debug!(side = %self.side, registry = %self.name, %status, ?wait, "retrying");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        return Err(CopyError::RateLimited {
                            side: self.side,
                            registry: self.name.clone(),
                            retry_after: retry_after(&response),
                        });
                    }
                    return Ok(response);
                }
                Err(e) => {
                    let error = classify(self.side, &self.name, self.transport, &e);
                    if error.is_transient() && attempt < self.settings.max_attempts {
                        let wait = backoff(attempt);
                        tracing::debug!(side = %self.side, registry = %self.name, error = %error, ?wait, "retrying");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(error);
                }
            }
        }
    }

    /// How long to wait before retrying a response, or `None` when it is final.
    fn retry_wait(&self, response: &Response, attempt: u32) -> Option<Duration> {
        if attempt >= self.settings.max_attempts {
            return None;
        }
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = retry_after(response).unwrap_or_else(|| backoff(attempt));
            return (wait <= self.settings.max_retry_after).then_some(wait);
        }
        matches!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
                | StatusCode::REQUEST_TIMEOUT
        )
        .then(|| {
            retry_after(response)
                .unwrap_or_else(|| backoff(attempt))
                .min(self.settings.max_retry_after)
        })
    }

    /// A request to the registry with authentication for `scope`: the cached Basic header or
    /// bearer token is attached (only when the URL is the registry's own origin); a 401 with a
    /// Bearer challenge fetches a token and retries once.
    pub async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: Option<Bytes>,
        scope: &str,
    ) -> Result<Response, CopyError> {
        if self.same_origin(url) {
            self.ensure_token(scope).await?;
        }
        let mut refreshed = false;
        loop {
            let mut request_headers = headers.clone();
            if self.same_origin(url)
                && let Some(value) = self.auth_header(scope)
            {
                request_headers.insert(header::AUTHORIZATION, value);
            }
            let response = self
                .send_raw(method.clone(), url, request_headers, body.clone())
                .await?;
            if response.status() != StatusCode::UNAUTHORIZED || !self.same_origin(url) {
                return Ok(response);
            }
            let challenge = challenge_of(&response);
            let detail = error_detail(response).await;
            match challenge {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope: asked,
                }) if !refreshed => {
                    refreshed = true;
                    let wanted = merge_scopes(scope, asked.as_deref());
                    let token = self
                        .fetch_token(&realm, service.as_deref(), &wanted)
                        .await?;
                    self.lock().tokens.insert(scope.to_string(), token);
                }
                Some(Challenge::Basic) if !refreshed && self.lock().basic.is_none() => {
                    refreshed = true;
                    let ping = self.url("v2/")?;
                    self.choose_basic_credential(&ping).await?;
                }
                _ => {
                    return Err(self.auth_error(if self.candidates.is_empty() {
                        format!(
                            "access denied ({detail}) and no credentials match {}",
                            self.name
                        )
                    } else {
                        format!(
                            "access denied with the configured credentials ({detail}) for {scope}"
                        )
                    }));
                }
            }
        }
    }

    /// With a Bearer challenge known from the ping, get the scope's token before the first
    /// request instead of after its 401: one request per operation, not two.
    async fn ensure_token(&self, scope: &str) -> Result<(), CopyError> {
        let (realm, service) = {
            let state = self.lock();
            match &state.challenge {
                Some(Challenge::Bearer { realm, service, .. })
                    if !state.tokens.contains_key(scope) =>
                {
                    (realm.clone(), service.clone())
                }
                _ => return Ok(()),
            }
        };
        let token = self.fetch_token(&realm, service.as_deref(), scope).await?;
        self.lock().tokens.insert(scope.to_string(), token);
        Ok(())
    }

    fn auth_header(&self, scope: &str) -> Option<HeaderValue> {
        let state = self.lock();
        state
            .tokens
            .get(scope)
            .cloned()
            .or_else(|| state.basic.clone())
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<HeaderValue, CopyError> {
        let realm_url = Url::parse(realm)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                self.auth_error(format!(
                    "the registry's token realm {realm:?} is not an http(s) URL"
                ))
            })?;
        let mut get_url = realm_url.clone();
        {
            let mut query = get_url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            for s in scope.split(' ').filter(|s| !s.is_empty()) {
                query.append_pair("scope", s);
            }
        }
        let preferred = self.lock().preferred;
        let order: Vec<usize> = (0..self.candidates.len())
            .map(|i| (i + preferred) % self.candidates.len())
            .collect();
        let mut refused = Vec::new();
        for index in order {
            let credential = &self.candidates[index];
            let request = match credential {
                Credential::RegistryToken(token) => {
                    self.lock().preferred = index;
                    return bearer_header(token).ok_or_else(|| {
                        self.auth_error("the registry token is not a valid header value".into())
                    });
                }
                Credential::Basic { username, password } => self
                    .http
                    .get(get_url.clone())
                    .basic_auth(username, Some(password)),
                Credential::IdentityToken(token) => {
                    let mut form: Vec<(&str, &str)> = vec![
                        ("grant_type", "refresh_token"),
                        ("refresh_token", token),
                        ("client_id", "bundlecopy"),
                    ];
                    if let Some(service) = service {
                        form.push(("service", service));
                    }
                    // OAuth2 takes one space-separated scope parameter.
                    form.push(("scope", scope));
                    let body = form_encode(&form);
                    self.http
                        .post(realm_url.clone())
                        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(body)
                }
            };
            match self.token_request(request).await? {
                Some(token) => {
                    self.lock().preferred = index;
                    return Ok(token);
                }
                None => refused.push(match credential {
                    Credential::Basic { .. } => "username/password",
                    Credential::IdentityToken(_) => "identity token",
                    Credential::RegistryToken(_) => "registry token",
                }),
            }
        }
        if self.candidates.is_empty() {
            let request = self.http.get(get_url.clone());
            if let Some(token) = self.token_request(request).await? {
                return Ok(token);
            }
            return Err(self.auth_error(format!(
                "the registry requires authentication for {scope} and no credentials match {}; add an entry for it to the Docker config",
                self.name
            )));
        }
        Err(self.auth_error(format!(
            "the token server refused the credentials for {} ({}); check them",
            self.name,
            refused.join(", ")
        )))
    }

    /// `Some(token)` when granted, `None` when the credentials were refused.
    async fn token_request(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<HeaderValue>, CopyError> {
        let response = request
            .send()
            .await
            .map_err(|e| classify(self.side, &self.name, self.transport, &e))?;
        let status = response.status();
        if matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST
        ) {
            return Ok(None);
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(CopyError::RateLimited {
                side: self.side,
                registry: self.name.clone(),
                retry_after: retry_after(&response),
            });
        }
        if !status.is_success() {
            return Err(self.registry_error(
                Some(status.as_u16()),
                format!("token server answered {status}"),
            ));
        }
        let body = read_limited(response, 1024 * 1024)
            .await
            .map_err(|e| self.registry_error(None, format!("reading the token failed: {e}")))?;
        let token = serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(TokenResponse::into_token)
            .ok_or_else(|| {
                self.registry_error(
                    Some(status.as_u16()),
                    "the token server's answer holds no token".into(),
                )
            })?;
        bearer_header(&token).map(Some).ok_or_else(|| {
            self.registry_error(
                None,
                "the token server returned a token that is not a valid header value".into(),
            )
        })
    }

    /// Turn an unexpected response into an error, with the registry's own message.
    pub async fn status_error(
        &self,
        response: Response,
        status: StatusCode,
        what: &str,
    ) -> CopyError {
        let detail = error_detail(response).await;
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

    fn manifest_url(&self, repository: &str, reference: &str) -> Result<Url, CopyError> {
        self.url(&format!("v2/{repository}/manifests/{reference}"))
    }

    fn blob_url(&self, repository: &str, digest: &str) -> Result<Url, CopyError> {
        self.url(&format!("v2/{repository}/blobs/{digest}"))
    }

    /// GET or HEAD a manifest: the successful response, `None` when the registry does not have
    /// it, an error (with the registry's own message) otherwise.
    async fn manifest_request(
        &self,
        method: Method,
        repository: &str,
        reference: &str,
        scope: &str,
    ) -> Result<Option<Response>, CopyError> {
        let url = self.manifest_url(repository, reference)?;
        let response = self
            .send(method.clone(), &url, accept_manifests(), None, scope)
            .await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let what = format!("{method} manifest {repository}:{reference}");
            return Err(self.status_error(response, status, &what).await);
        }
        Ok(Some(response))
    }

    /// GET a manifest by tag or digest. `None` when the registry does not have it.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
        scope: &str,
    ) -> Result<Option<Manifest>, CopyError> {
        let Some(response) = self
            .manifest_request(Method::GET, repository, reference, scope)
            .await?
        else {
            return Ok(None);
        };
        let media_type = content_type(response.headers());
        let announced = docker_digest(response.headers());
        let bytes = read_limited(response, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| CopyError::NotABundle {
                reference: format!("{}/{repository}:{reference}", self.name),
                detail: format!("its manifest could not be read: {e}"),
            })?;
        let digest = sha256_digest(&bytes);
        let expected = if reference.contains(':') {
            Some(reference.to_string())
        } else {
            announced
        };
        if let Some(expected) = expected.filter(|d| d.starts_with("sha256:"))
            && expected != digest
        {
            return Err(CopyError::DigestMismatch {
                side: self.side,
                registry: self.name.clone(),
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
    pub async fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
        scope: &str,
    ) -> Result<Option<String>, CopyError> {
        let Some(response) = self
            .manifest_request(Method::HEAD, repository, reference, scope)
            .await?
        else {
            return Ok(None);
        };
        match docker_digest(response.headers()) {
            Some(digest) => Ok(Some(digest)),
            // Registries without Docker-Content-Digest: hash the manifest itself.
            None => Ok(self
                .get_manifest(repository, reference, scope)
                .await?
                .map(|m| m.digest)),
        }
    }

    /// PUT manifest bytes, unchanged, under a tag or digest. Returns the digest the registry reports.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
        scope: &str,
    ) -> Result<Option<String>, CopyError> {
        let url = self.manifest_url(repository, reference)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|_| {
                self.registry_error(
                    None,
                    format!("media type {media_type:?} is not a valid header"),
                )
            })?,
        );
        let response = self
            .send(Method::PUT, &url, headers, Some(bytes), scope)
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(self
                .status_error(
                    response,
                    status,
                    &format!("PUT manifest {repository}:{reference}"),
                )
                .await);
        }
        Ok(docker_digest(response.headers()))
    }

    /// Whether the repository holds a blob.
    pub async fn has_blob(
        &self,
        repository: &str,
        digest: &str,
        scope: &str,
    ) -> Result<bool, CopyError> {
        let url = self.blob_url(repository, digest)?;
        let response = self
            .send(Method::HEAD, &url, HeaderMap::new(), None, scope)
            .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => Err(self
                .status_error(response, status, &format!("HEAD blob {digest}"))
                .await),
        }
    }

    /// GET a blob, following redirects (to blob storage) without credentials.
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &str,
        scope: &str,
    ) -> Result<Response, CopyError> {
        let mut url = self.blob_url(repository, digest)?;
        for _ in 0..=MAX_REDIRECTS {
            let response = self
                .send(Method::GET, &url, HeaderMap::new(), None, scope)
                .await?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        self.registry_error(
                            Some(status.as_u16()),
                            "redirect without a Location".into(),
                        )
                    })?;
                url = url.join(location).map_err(|e| {
                    self.registry_error(
                        Some(status.as_u16()),
                        format!("bad redirect Location: {e}"),
                    )
                })?;
                tracing::debug!(side = %self.side, registry = %self.name, host = url.host_str().unwrap_or_default(), "following blob redirect");
                continue;
            }
            if status == StatusCode::NOT_FOUND {
                return Err(self.registry_error(
                    Some(404),
                    format!("blob {digest} is missing from {repository}"),
                ));
            }
            if !status.is_success() {
                return Err(self
                    .status_error(response, status, &format!("GET blob {digest}"))
                    .await);
            }
            return Ok(response);
        }
        Err(self.registry_error(
            None,
            format!("more than {MAX_REDIRECTS} redirects for blob {digest}"),
        ))
    }

    /// Read a small blob whole, checking its digest (bundle.json).
    pub async fn read_blob(
        &self,
        repository: &str,
        digest: &str,
        limit: usize,
        scope: &str,
    ) -> Result<Bytes, CopyError> {
        let response = self.get_blob(repository, digest, scope).await?;
        let bytes = read_limited(response, limit)
            .await
            .map_err(|e| self.registry_error(None, format!("reading blob {digest} failed: {e}")))?;
        let actual = sha256_digest(&bytes);
        if digest.starts_with("sha256:") && actual != digest {
            return Err(CopyError::DigestMismatch {
                side: self.side,
                registry: self.name.clone(),
                digest: digest.to_string(),
                detail: format!("the bytes hash to {actual}"),
            });
        }
        Ok(bytes)
    }

    /// Ask for a cross-repository mount; a registry that cannot mount opens an upload instead.
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &str,
        from: &str,
        scope: &str,
    ) -> Result<Mount, CopyError> {
        let mut url = self.url(&format!("v2/{repository}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from);
        let response = self
            .send(
                Method::POST,
                &url,
                HeaderMap::new(),
                Some(Bytes::new()),
                scope,
            )
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Upload(self.location(&response)?)),
            status => Err(self
                .status_error(response, status, &format!("mount of {digest}"))
                .await),
        }
    }

    /// Open an upload session.
    pub async fn start_upload(&self, repository: &str, scope: &str) -> Result<Url, CopyError> {
        let url = self.url(&format!("v2/{repository}/blobs/uploads/"))?;
        let response = self
            .send(
                Method::POST,
                &url,
                HeaderMap::new(),
                Some(Bytes::new()),
                scope,
            )
            .await?;
        match response.status() {
            StatusCode::ACCEPTED => self.location(&response),
            status => Err(self
                .status_error(response, status, "starting a blob upload")
                .await),
        }
    }

    /// Finish an upload with one streamed PUT. Not retried here: a stream cannot be replayed,
    /// the caller retries the whole blob.
    pub async fn finish_upload(
        &self,
        location: &Url,
        digest: &str,
        size: u64,
        body: reqwest::Body,
        scope: &str,
    ) -> Result<(), CopyError> {
        let mut url = location.clone();
        url.query_pairs_mut().append_pair("digest", digest);
        let mut request = self
            .http
            .put(url.clone())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size)
            .body(body);
        if self.same_origin(&url)
            && let Some(value) = self.auth_header(scope)
        {
            request = request.header(header::AUTHORIZATION, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| classify(self.side, &self.name, self.transport, &e))?;
        match response.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            StatusCode::TOO_MANY_REQUESTS => Err(CopyError::RateLimited {
                side: self.side,
                registry: self.name.clone(),
                retry_after: retry_after(&response),
            }),
            status => Err(self
                .status_error(response, status, &format!("upload of {digest}"))
                .await),
        }
    }

    fn location(&self, response: &Response) -> Result<Url, CopyError> {
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                self.registry_error(
                    Some(response.status().as_u16()),
                    "upload answer without a Location".into(),
                )
            })?;
        // Location may be absolute or relative to the registry.
        response
            .url()
            .join(location)
            .map_err(|e| self.registry_error(None, format!("bad upload Location: {e}")))
    }
}

fn accept_manifests() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
    headers
}

fn challenge_of(response: &Response) -> Option<Challenge> {
    response
        .headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(parse_challenge)
        // Prefer Bearer when a registry offers both.
        .max_by_key(|c| matches!(c, Challenge::Bearer { .. }))
}

/// Scopes we need plus the one the registry named, without duplicates.
fn merge_scopes(ours: &str, asked: Option<&str>) -> String {
    let mut scopes: Vec<&str> = ours.split(' ').filter(|s| !s.is_empty()).collect();
    if let Some(asked) = asked {
        for s in asked.split(' ').filter(|s| !s.is_empty()) {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
    }
    scopes.join(" ")
}

fn basic_header(username: &str, password: &str) -> HeaderValue {
    use base64::Engine as _;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

fn bearer_header(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_string())
        .unwrap_or_default()
}

fn docker_digest(headers: &HeaderMap) -> Option<String> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| crate::bundle::validate_digest(v).is_ok())
}

/// `Retry-After` in seconds (the HTTP-date form is read as one second).
fn retry_after(response: &Response) -> Option<Duration> {
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

/// Capped exponential backoff: 250 ms, 500 ms, 1 s, ... up to 8 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.saturating_sub(1).min(5)))
        .min(Duration::from_secs(8))
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Read a body up to `limit` bytes; more is an error (a registry must not make us hold more).
async fn read_limited(response: Response, limit: usize) -> Result<Bytes, String> {
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
async fn error_detail(response: Response) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(30), Duration::from_secs(8));
    }

    #[test]
    fn scopes_merge_without_duplicates() {
        assert_eq!(
            merge_scopes("repository:a:pull", Some("repository:a:pull")),
            "repository:a:pull"
        );
        assert_eq!(
            merge_scopes(
                "repository:a:pull,push repository:b:pull",
                Some("repository:c:pull")
            ),
            "repository:a:pull,push repository:b:pull repository:c:pull"
        );
    }

    #[test]
    fn auth_headers_are_sensitive() {
        assert!(basic_header("u", "p").is_sensitive());
        assert!(bearer_header("t").unwrap().is_sensitive());
        assert!(bearer_header("bad\ntoken").is_none());
    }
}
