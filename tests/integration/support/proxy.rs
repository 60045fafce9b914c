//! A fault-injecting HTTP/1.1 proxy in front of a real registry, programmable per request.
//!
//! Clients talk plain HTTP to the proxy; the proxy talks to the registry (HTTP, or HTTPS with the
//! test CA). Without rules it passes everything through, rewriting `Location` headers that point
//! at the registry so clients keep talking to the proxy. Rules inject faults: status answers
//! (429 with `Retry-After`, 5xx), dropped connections, responses cut after N body bytes, stalls,
//! corrupted or truncated bodies, 307 redirects of blob GETs to a second listener (a "blob
//! storage" host) that serves the blob and records whether the client sent `Authorization`, and
//! a file of the registry's storage emptied while a request is served.
//!
//! Like the token server, it runs on its own thread and runtime, so a test may block (on the CLI,
//! say) while the proxy keeps serving.
//!
//! It can also serve the OCI 1.1 referrers API, which distribution 2.8 lacks and no registry
//! installable here has (`FaultProxy::serve_referrers_api`): `GET /v2/<name>/referrers/<digest>`
//! is answered from the registry's own storage (every manifest revision of the repository whose
//! `subject` is the digest), and a manifest PUT that names a `subject` is answered with the
//! `OCI-Subject` header, as a registry with the API does. Everything else stays the registry's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::registry::TestRegistry;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why the proxy ended a connection without a response (an injected fault or a dead upstream).
#[derive(Debug)]
pub struct ProxyError(String);

impl std::fmt::Display for ProxyError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for ProxyError {}

/// What a request path addresses, for rules and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathKind {
    /// `/v2/`
    Ping,
    /// `/v2/<name>/manifests/<ref>`
    Manifest,
    /// `/v2/<name>/blobs/<digest>`
    Blob,
    /// `/v2/<name>/blobs/uploads/...` (POST start, PATCH chunk, PUT finish, GET status)
    Upload,
    /// `/v2/<name>/tags/list`
    Tags,
    /// `/v2/<name>/referrers/<digest>`
    Referrers,
    Other,
}

impl PathKind {
    pub fn of(path: &str) -> PathKind {
        if path == "/v2/" || path == "/v2" {
            PathKind::Ping
        } else if path.contains("/blobs/uploads") {
            PathKind::Upload
        } else if path.contains("/blobs/") {
            PathKind::Blob
        } else if path.contains("/manifests/") {
            PathKind::Manifest
        } else if path.ends_with("/tags/list") {
            PathKind::Tags
        } else if path.contains("/referrers/") {
            PathKind::Referrers
        } else {
            PathKind::Other
        }
    }
}

/// A fault to inject into a matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (and `Retry-After: N` if given) without asking the registry.
    Status {
        status: u16,
        retry_after_seconds: Option<u64>,
    },
    /// Close the connection without any response.
    Disconnect,
    /// Forward, send the headers, then cut the connection after `bytes` body bytes.
    ResetAfter { bytes: u64 },
    /// Hold the request this long before forwarding it.
    Stall { duration: Duration },
    /// Forward, then hold the body after `bytes` bytes for `duration`.
    StallBodyAfter { bytes: u64, duration: Duration },
    /// Forward, flipping every bit of the body byte at offset `at` (same length).
    Corrupt { at: u64 },
    /// Forward only the first `keep` body bytes, with a matching (short) Content-Length.
    Truncate { keep: u64 },
    /// Answer a blob GET with a 307 to the blob storage host, which serves the bytes.
    RedirectToStorage,
    /// Answer with the referrers API's index, computed from the registry's storage (the
    /// `path_contains` of the rule is usually `/referrers/`). Set by `serve_referrers_api`.
    ReferrersApi,
    /// Empty the file at `path` (in the upstream registry's storage) while the request is
    /// forwarded, and write its bytes back once the answer has come: the state distribution
    /// 2.8's filesystem storage leaves a link file in while another request links the same
    /// blob (it opens the file, truncates it, then writes), so a request that reads the link
    /// meanwhile meets what it meets in that race.
    EmptyFileWhileForwarded { path: std::path::PathBuf },
    /// Serve `tags/list` in pages of at most `page` (fewer when the query's `n` says so) after `last`, with a
    /// `Link: <…>; rel="next"` header while more remain — the distribution API's pagination,
    /// which distribution 2.8 itself does not do. The tags come from the registry.
    PaginateTags { page: usize },
}

impl Fault {
    /// 429 with `Retry-After: 1`.
    pub fn rate_limited() -> Fault {
        Fault::Status {
            status: 429,
            retry_after_seconds: Some(1),
        }
    }

    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            retry_after_seconds: None,
        }
    }
}

/// Which requests a fault applies to, and how many times.
#[derive(Debug, Clone)]
pub struct Rule {
    pub method: Option<Method>,
    pub kind: Option<PathKind>,
    pub path_contains: Option<String>,
    pub fault: Fault,
    /// None: every matching request; Some(k): the next k matching requests.
    pub remaining: Option<usize>,
}

impl Rule {
    /// A rule for every request, every time; narrow it with the builder methods.
    pub fn new(fault: Fault) -> Rule {
        Rule {
            method: None,
            kind: None,
            path_contains: None,
            fault,
            remaining: None,
        }
    }

    pub fn method(mut self, method: Method) -> Rule {
        self.method = Some(method);
        self
    }

    pub fn kind(mut self, kind: PathKind) -> Rule {
        self.kind = Some(kind);
        self
    }

    pub fn path_contains(mut self, fragment: &str) -> Rule {
        self.path_contains = Some(fragment.to_owned());
        self
    }

    pub fn times(mut self, count: usize) -> Rule {
        self.remaining = Some(count);
        self
    }

    pub fn once(self) -> Rule {
        self.times(1)
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.remaining != Some(0)
            && self.method.as_ref().is_none_or(|wanted| wanted == method)
            && self.kind.is_none_or(|wanted| wanted == PathKind::of(path))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|fragment| path.contains(fragment))
    }
}

/// One request the blob storage host received.
#[derive(Debug, Clone)]
pub struct StorageRequest {
    pub path: String,
    pub had_authorization: bool,
}

/// A request the proxy received, and the fault it got (if any).
#[derive(Debug, Clone)]
pub struct ProxiedRequest {
    pub method: Method,
    pub path_and_query: String,
    pub kind: PathKind,
    pub fault: Option<Fault>,
}

/// The most copies that were in flight at once at a registry, from the requests it received in
/// order: a copy into `…/manifests/TAG` starts with its first request naming the tag (the HEAD
/// that checks the destination) and ends with the PUT of the tag.
pub fn copies_in_flight(requests: &[ProxiedRequest]) -> usize {
    let mut open = HashSet::new();
    let mut finished = HashSet::new();
    let mut most = 0;
    for request in requests {
        let Some((_, tag)) = request.path_and_query.rsplit_once("/manifests/") else {
            continue;
        };
        if tag.starts_with("sha256:") || finished.contains(tag) {
            continue;
        }
        if request.method == Method::PUT {
            open.remove(tag);
            finished.insert(tag.to_string());
        } else {
            open.insert(tag.to_string());
            most = most.max(open.len());
        }
    }
    most
}

struct Redirected {
    path: String,
    authorization: Option<HeaderValue>,
}

struct ProxyState {
    upstream_base: String,
    proxy_base: String,
    storage_base: String,
    upstream: reqwest::Client,
    rules: Mutex<Vec<Rule>>,
    requests: Mutex<Vec<ProxiedRequest>>,
    storage_requests: Mutex<Vec<StorageRequest>>,
    redirects: Mutex<HashMap<u64, Redirected>>,
    next_redirect: AtomicU64,
    /// The registry's storage root, when the proxy serves the referrers API.
    referrers_storage: Mutex<Option<std::path::PathBuf>>,
}

/// A running proxy (and its blob storage host); both stop when dropped.
pub struct FaultProxy {
    address: SocketAddr,
    storage_address: SocketAddr,
    state: Arc<ProxyState>,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy in front of `registry` (HTTP or HTTPS upstream; clients always use HTTP).
    pub fn start(registry: &TestRegistry) -> FaultProxy {
        FaultProxy::start_for(&registry.url_base(), registry.ca_pem())
    }

    /// A proxy in front of `upstream_base` (`http(s)://127.0.0.1:PORT`), trusting `ca_pem`.
    pub fn start_for(upstream_base: &str, ca_pem: Option<&str>) -> FaultProxy {
        bundlecopy_engine::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if let Some(pem) = ca_pem {
            let ca = reqwest::Certificate::from_pem(pem.as_bytes()).expect("parse the test CA");
            builder = builder.tls_certs_only([ca]);
        }
        let upstream = builder.build().expect("build the proxy's upstream client");

        let bind = || {
            let listener =
                std::net::TcpListener::bind("127.0.0.1:0").expect("bind a proxy listener");
            listener
                .set_nonblocking(true)
                .expect("make the proxy listener non-blocking");
            listener
        };
        let proxy_listener = bind();
        let storage_listener = bind();
        let address = proxy_listener.local_addr().expect("proxy address");
        let storage_address = storage_listener.local_addr().expect("storage address");
        let state = Arc::new(ProxyState {
            upstream_base: upstream_base.trim_end_matches('/').to_owned(),
            proxy_base: format!("http://{address}"),
            storage_base: format!("http://{storage_address}"),
            upstream,
            rules: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            storage_requests: Mutex::new(Vec::new()),
            redirects: Mutex::new(HashMap::new()),
            next_redirect: AtomicU64::new(1),
            referrers_storage: Mutex::new(None),
        });
        let (shutdown, shutdown_requested) = tokio::sync::watch::channel(false);
        let serving_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("harness-fault-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(async move {
                    let proxy = serve(
                        proxy_listener,
                        serving_state.clone(),
                        shutdown_requested.clone(),
                        false,
                    );
                    let storage = serve(storage_listener, serving_state, shutdown_requested, true);
                    tokio::join!(proxy, storage);
                });
            })
            .expect("start the proxy thread");
        FaultProxy {
            address,
            storage_address,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        self.address.to_string()
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn url_base(&self) -> String {
        self.state.proxy_base.clone()
    }

    /// `http://127.0.0.1:PORT` of the blob storage host.
    pub fn storage_url_base(&self) -> String {
        format!("http://{}", self.storage_address)
    }

    /// A raw test client talking to the proxy with `registry`'s credentials.
    pub fn client(&self, registry: &TestRegistry) -> super::client::RegistryClient {
        let credentials = registry
            .requires_auth()
            .then_some((registry.username(), registry.password()));
        super::client::RegistryClient::new(&self.url_base(), None, credentials)
    }

    /// Serve the OCI 1.1 referrers API in front of `registry` (whose storage it reads), and
    /// answer manifest PUTs that name a subject with `OCI-Subject`.
    pub fn serve_referrers_api(&self, registry: &TestRegistry) {
        *lock(&self.state.referrers_storage) = Some(registry.storage_dir());
    }

    /// Add a rule; rules are tried in the order added and the first match applies.
    pub fn add_rule(&self, rule: Rule) {
        lock(&self.state.rules).push(rule);
    }

    pub fn clear_rules(&self) {
        lock(&self.state.rules).clear();
    }

    /// How many matching requests each rule still applies to (None: unlimited).
    pub fn remaining_rule_counts(&self) -> Vec<Option<usize>> {
        lock(&self.state.rules)
            .iter()
            .map(|rule| rule.remaining)
            .collect()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        lock(&self.state.requests).clone()
    }

    /// Requests received with this method and path kind.
    pub fn count(&self, method: &Method, kind: PathKind) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|request| request.method == *method && request.kind == kind)
            .count()
    }

    /// Request counts keyed `"METHOD Kind"` (for example `"GET Blob"`).
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for request in lock(&self.state.requests).iter() {
            *counts
                .entry(format!("{} {:?}", request.method, request.kind))
                .or_insert(0) += 1;
        }
        counts
    }

    /// Requests that got a fault.
    pub fn faults_injected(&self) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|request| request.fault.is_some())
            .count()
    }

    /// Requests the blob storage host received.
    pub fn storage_requests(&self) -> Vec<StorageRequest> {
        lock(&self.state.storage_requests).clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<ProxyState>,
    mut shutdown_requested: tokio::sync::watch::Receiver<bool>,
    is_storage: bool,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("fault proxy: cannot use its socket: {error}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown_requested.changed() => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                let mut connection_shutdown = shutdown_requested.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move {
                            if is_storage {
                                serve_storage(state, request).await
                            } else {
                                serve_proxy(state, request).await
                            }
                        }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    // Connections end with the proxy, even a stalled one.
                    tokio::select! {
                        _ = connection => {}
                        _ = connection_shutdown.changed() => {}
                    }
                });
            }
        }
    }
}

fn empty_body() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn full_body(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn plain_response(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full_body(text.to_owned()));
    *response.status_mut() = status;
    response
}

/// Headers that belong to one connection and must not be forwarded.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

fn forwardable_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in incoming.iter() {
        if !is_hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

fn take_fault(state: &ProxyState, method: &Method, path: &str) -> Option<Fault> {
    let mut rules = lock(&state.rules);
    let rule = rules.iter_mut().find(|rule| rule.matches(method, path))?;
    if let Some(remaining) = rule.remaining.as_mut() {
        *remaining -= 1;
    }
    Some(rule.fault.clone())
}

async fn serve_proxy(
    state: Arc<ProxyState>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|value| value.as_str().to_owned())
        .unwrap_or_else(|| path.clone());
    let referrers_storage = lock(&state.referrers_storage).clone();
    let fault = take_fault(&state, &method, &path).or_else(|| {
        (referrers_storage.is_some() && PathKind::of(&path) == PathKind::Referrers)
            .then_some(Fault::ReferrersApi)
    });
    lock(&state.requests).push(ProxiedRequest {
        method: method.clone(),
        path_and_query: path_and_query.clone(),
        kind: PathKind::of(&path),
        fault: fault.clone(),
    });

    match &fault {
        Some(Fault::Status {
            status,
            retry_after_seconds,
        }) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = plain_response(
                status,
                "{\"errors\":[{\"code\":\"INJECTED\",\"message\":\"fault injected by the test proxy\"}]}",
            );
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some(seconds) = retry_after_seconds {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
            }
            return Ok(response);
        }
        Some(Fault::Disconnect) => {
            return Err(ProxyError("fault proxy: injected disconnect".into()));
        }
        Some(Fault::Stall { duration }) => tokio::time::sleep(*duration).await,
        Some(Fault::PaginateTags { page }) if method == Method::GET => {
            return paginate_tags(&state, request, &path, *page).await;
        }
        Some(Fault::ReferrersApi) => {
            return Ok(match &referrers_storage {
                Some(storage) if method == Method::GET => referrers_answer(storage, &path),
                _ => plain_response(StatusCode::NOT_FOUND, "404 page not found"),
            });
        }
        None if referrers_storage.is_some()
            && method == Method::PUT
            && PathKind::of(&path) == PathKind::Manifest =>
        {
            return put_noting_subject(&state, request, &path_and_query).await;
        }
        Some(Fault::RedirectToStorage) if method == Method::GET => {
            // Like real registries, check access before redirecting: a 401 (with its
            // challenge) or 404 comes from the registry itself.
            let check = state
                .upstream
                .head(format!("{}{path_and_query}", state.upstream_base))
                .headers(forwardable_headers(request.headers()))
                .send()
                .await
                .map_err(|error| ProxyError(format!("fault proxy: upstream HEAD: {error}")))?;
            if check.status() != reqwest::StatusCode::OK {
                let mut response = relay(&state, check, None);
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
                return Ok(response);
            }
            let id = state.next_redirect.fetch_add(1, Ordering::SeqCst);
            let authorization = request.headers().get(header::AUTHORIZATION).cloned();
            lock(&state.redirects).insert(
                id,
                Redirected {
                    path: path_and_query.clone(),
                    authorization,
                },
            );
            let digest = path.rsplit('/').next().unwrap_or("blob");
            let location = format!(
                "{}/storage/{digest}?X-Test-Signature={id}",
                state.storage_base
            );
            let mut response = plain_response(StatusCode::TEMPORARY_REDIRECT, "");
            response.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&location)
                    .map_err(|error| ProxyError(format!("bad redirect location: {error}")))?,
            );
            return Ok(response);
        }
        _ => {}
    }

    if let Some(Fault::EmptyFileWhileForwarded { path: file }) = &fault {
        let kept = std::fs::read(file).map_err(|error| {
            ProxyError(format!("fault proxy: read {}: {error}", file.display()))
        })?;
        std::fs::write(file, b"").map_err(|error| {
            ProxyError(format!("fault proxy: empty {}: {error}", file.display()))
        })?;
        let forwarded = forward(&state, request, &path_and_query).await;
        std::fs::write(file, kept).map_err(|error| {
            ProxyError(format!("fault proxy: restore {}: {error}", file.display()))
        })?;
        return Ok(relay(&state, forwarded?, None));
    }
    let upstream_response = forward(&state, request, &path_and_query).await?;
    Ok(relay(&state, upstream_response, fault.as_ref()))
}

/// One page of the registry's tag list, as `Fault::PaginateTags` describes.
async fn paginate_tags(
    state: &ProxyState,
    request: Request<Incoming>,
    path: &str,
    default_page: usize,
) -> Result<Response<ProxyBody>, ProxyError> {
    let query: BTreeMap<String, String> = request
        .uri()
        .query()
        .map(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    // A registry may answer with fewer than `n`.
    let page = query
        .get("n")
        .and_then(|n| n.parse().ok())
        .map_or(default_page, |asked: usize| asked.min(default_page));
    let upstream = forward(state, request, path).await?;
    if upstream.status() != reqwest::StatusCode::OK {
        return Ok(relay(state, upstream, None));
    }
    let bytes = upstream
        .bytes()
        .await
        .map_err(|error| ProxyError(format!("fault proxy: tag list: {error}")))?;
    let listed: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|error| ProxyError(format!("fault proxy: tag list: {error}")))?;
    let mut tags: Vec<String> = listed["tags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    let start = query
        .get("last")
        .map_or(0, |last| tags.partition_point(|tag| tag <= last));
    let chunk: Vec<&String> = tags.iter().skip(start).take(page).collect();
    let body = serde_json::json!({"name": listed["name"], "tags": chunk}).to_string();
    let mut response = plain_response(StatusCode::OK, &body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if start + chunk.len() < tags.len()
        && let Some(last) = chunk.last()
    {
        let link = format!("<{path}?n={page}&last={last}>; rel=\"next\"");
        response.headers_mut().insert(
            header::LINK,
            HeaderValue::from_str(&link)
                .map_err(|error| ProxyError(format!("bad Link header: {error}")))?,
        );
    }
    Ok(response)
}

/// The referrers API's answer for `/v2/<name>/referrers/<digest>`, from the registry's storage:
/// every manifest revision of the repository whose `subject` is the digest.
fn referrers_answer(storage: &std::path::Path, path: &str) -> Response<ProxyBody> {
    let Some((name, digest)) = path
        .strip_prefix("/v2/")
        .and_then(|rest| rest.split_once("/referrers/"))
    else {
        return plain_response(StatusCode::BAD_REQUEST, "bad referrers path");
    };
    let v2 = storage.join("docker/registry/v2");
    let revisions = v2.join(format!("repositories/{name}/_manifests/revisions/sha256"));
    let mut manifests = Vec::new();
    for revision in std::fs::read_dir(&revisions)
        .into_iter()
        .flatten()
        .flatten()
    {
        let hex = revision.file_name().to_string_lossy().into_owned();
        let data = v2.join(format!(
            "blobs/sha256/{}/{hex}/data",
            &hex[..2.min(hex.len())]
        ));
        let Ok(bytes) = std::fs::read(&data) else {
            continue;
        };
        let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if manifest.pointer("/subject/digest").and_then(|d| d.as_str()) != Some(digest) {
            continue;
        }
        let artifact_type = manifest
            .get("artifactType")
            .or_else(|| manifest.pointer("/config/mediaType"))
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let mut descriptor = serde_json::json!({
            "mediaType": manifest["mediaType"],
            "digest": format!("sha256:{hex}"),
            "size": bytes.len(),
            "artifactType": artifact_type,
        });
        if let Some(annotations) = manifest.get("annotations") {
            descriptor["annotations"] = annotations.clone();
        }
        manifests.push(descriptor);
    }
    manifests.sort_by_key(|d| d["digest"].as_str().unwrap_or_default().to_owned());
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    })
    .to_string();
    let mut response = plain_response(StatusCode::OK, &body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
    );
    response
}

/// Forward a manifest PUT; when the registry stored it and it names a subject, say so with
/// `OCI-Subject` as a registry with the referrers API does.
async fn put_noting_subject(
    state: &ProxyState,
    request: Request<Incoming>,
    path_and_query: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, body) = request.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|error| ProxyError(format!("fault proxy: manifest body: {error}")))?
        .to_bytes();
    let subject = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|m| {
            m.pointer("/subject/digest")
                .and_then(|d| d.as_str())
                .map(str::to_owned)
        });
    let url = format!("{}{path_and_query}", state.upstream_base);
    let upstream = state
        .upstream
        .put(&url)
        .headers(forwardable_headers(&parts.headers))
        .body(bytes)
        .send()
        .await
        .map_err(|error| ProxyError(format!("fault proxy: upstream {url}: {error}")))?;
    let stored = upstream.status().is_success();
    let mut response = relay(state, upstream, None);
    if stored
        && let Some(subject) = subject
        && let Ok(value) = HeaderValue::from_str(&subject)
    {
        response.headers_mut().insert("oci-subject", value);
    }
    Ok(response)
}

async fn forward(
    state: &ProxyState,
    request: Request<Incoming>,
    path_and_query: &str,
) -> Result<reqwest::Response, ProxyError> {
    let (parts, body) = request.into_parts();
    let headers = forwardable_headers(&parts.headers);
    let has_body = parts.headers.contains_key(header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|length| length != "0");
    let url = format!("{}{path_and_query}", state.upstream_base);
    let mut upstream_request = state
        .upstream
        .request(parts.method.clone(), &url)
        .headers(headers);
    if has_body {
        upstream_request =
            upstream_request.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    upstream_request
        .send()
        .await
        .map_err(|error| ProxyError(format!("fault proxy: upstream {url}: {error}")))
}

/// Copy an upstream response to the client, applying body faults and rewriting Location.
fn relay(
    state: &ProxyState,
    upstream_response: reqwest::Response,
    fault: Option<&Fault>,
) -> Response<ProxyBody> {
    let status = upstream_response.status();
    let mut headers = HeaderMap::new();
    for (name, value) in upstream_response.headers() {
        if is_hop_by_hop(name) {
            continue;
        }
        if name == header::LOCATION
            && let Ok(location) = value.to_str()
            && let Some(rest) = location.strip_prefix(&state.upstream_base)
            && let Ok(rewritten) = HeaderValue::from_str(&format!("{}{rest}", state.proxy_base))
        {
            headers.append(name.clone(), rewritten);
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if let Some(Fault::Truncate { keep }) = fault {
        let declared: u64 = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .unwrap_or(u64::MAX);
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from((*keep).min(declared)),
        );
    }
    let body_fault = match fault {
        Some(
            fault @ (Fault::ResetAfter { .. }
            | Fault::StallBodyAfter { .. }
            | Fault::Corrupt { .. }
            | Fault::Truncate { .. }),
        ) => Some(fault.clone()),
        _ => None,
    };
    let body = faulty_body(upstream_response.bytes_stream(), body_fault);
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

struct BodyState {
    upstream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    sent: u64,
    fault: Option<Fault>,
    /// Set once the fault has cut the body: the next poll errors (reset) or ends (truncate).
    cut: Option<bool>,
}

/// The upstream body with `fault` applied on the way through.
fn faulty_body(
    upstream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    fault: Option<Fault>,
) -> ProxyBody {
    let start = BodyState {
        upstream: Box::pin(upstream),
        sent: 0,
        fault,
        cut: None,
    };
    let frames = futures_util::stream::unfold(start, |mut body| async move {
        match body.cut {
            Some(true) => {
                body.cut = Some(false);
                // Let hyper flush what was sent (it flushes when the body is pending), so the
                // client really receives the bytes before the connection drops.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let error: BoxError = "fault proxy: injected connection reset".into();
                return Some((Err(error), body));
            }
            Some(false) => return None,
            None => {}
        }
        let mut chunk = match body.upstream.next().await? {
            Ok(chunk) => chunk,
            Err(error) => return Some((Err(Box::new(error) as BoxError), body)),
        };
        let start = body.sent;
        let end = start + chunk.len() as u64;
        match body.fault.clone() {
            Some(Fault::ResetAfter { bytes }) | Some(Fault::Truncate { keep: bytes })
                if end >= bytes =>
            {
                let resets = matches!(body.fault, Some(Fault::ResetAfter { .. }));
                chunk.truncate((bytes - start) as usize);
                // After the cut: an error (the connection drops) or a clean end.
                body.cut = Some(resets);
                body.fault = None;
            }
            Some(Fault::StallBodyAfter { bytes, duration }) if end >= bytes => {
                let before = (bytes - start) as usize;
                if before > 0 {
                    // Send what precedes the stall point first.
                    let rest = chunk.split_off(before);
                    body.fault = Some(Fault::StallBodyAfter { bytes, duration });
                    body.upstream = Box::pin(
                        futures_util::stream::once(async move { Ok(rest) }).chain(body.upstream),
                    );
                } else {
                    tokio::time::sleep(duration).await;
                    body.fault = None;
                }
            }
            Some(Fault::Corrupt { at }) if (start..end).contains(&at) => {
                let mut bytes = chunk.to_vec();
                bytes[(at - start) as usize] ^= 0xff;
                chunk = Bytes::from(bytes);
                body.fault = None;
            }
            _ => {}
        }
        body.sent += chunk.len() as u64;
        Some((Ok(Frame::data(chunk)), body))
    });
    StreamBody::new(frames).boxed_unsync()
}

async fn serve_storage(
    state: Arc<ProxyState>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let path = request
        .uri()
        .path_and_query()
        .map(|value| value.as_str().to_owned())
        .unwrap_or_default();
    lock(&state.storage_requests).push(StorageRequest {
        path: path.clone(),
        had_authorization: request.headers().contains_key(header::AUTHORIZATION),
    });
    let id: Option<u64> = path
        .split("X-Test-Signature=")
        .nth(1)
        .and_then(|value| value.split('&').next())
        .and_then(|value| value.parse().ok());
    let redirected = id.and_then(|id| lock(&state.redirects).remove(&id));
    let Some(redirected) = redirected else {
        return Ok(plain_response(
            StatusCode::FORBIDDEN,
            "unknown or already used signature",
        ));
    };
    // The storage host fetches the blob itself, with the credentials of the original request.
    let mut upstream_request = state
        .upstream
        .get(format!("{}{}", state.upstream_base, redirected.path));
    if let Some(authorization) = redirected.authorization {
        upstream_request = upstream_request.header(header::AUTHORIZATION, authorization);
    }
    let upstream_response = upstream_request
        .send()
        .await
        .map_err(|error| ProxyError(format!("blob storage: upstream: {error}")))?;
    if request.method() == Method::HEAD {
        let mut response = relay(&state, upstream_response, None);
        *response.body_mut() = empty_body();
        return Ok(response);
    }
    Ok(relay(&state, upstream_response, None))
}
