//! The one fake Kubernetes API server of the controller tests (every module of `controller`, and
//! the controller rows of `bad_input`): a small API server on loopback (real HTTP) holding any
//! number of BundleCopies in one namespace; in-process controller code reaches it through
//! `client()`, the real `bundlecopy controller` binary through `write_kubeconfig`. Every request
//! is logged with its body, so a test can check a reconcile's requests in order.
//!
//! The server lists BundleCopies and Secret metadata, serves Secret GETs, applies status patches
//! to the objects it holds (so a restarted controller sees what the previous one wrote), records
//! patches and Events, and keeps watches open: like a real API server it sends a MODIFIED event
//! for every status patch (same generation, new resourceVersion) and an event for every Secret
//! a test puts (`put_secret`). It holds Leases (create, read, replace with optimistic
//! concurrency), so several controllers can elect a leader through it. Anything else is answered
//! 404 and recorded as unexpected.
//!
//! Each controller may have its own identity (a bearer token in its kubeconfig,
//! `write_kubeconfig_for`): every request is logged with its arrival time and client, and one
//! client's link can be frozen (`freeze`) — its requests are held unanswered on open connections
//! and its watch streams go quiet, as when the network silently drops its packets. What a frozen
//! link sent is never applied: on `unfreeze` those connections are closed.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::support::bundlecopy_bin;
use crate::support::process::{kill_and_reap, spawn_tied_to_test_process, terminate};
use crate::support::registry::free_port;

/// One request as it arrived (before any freeze held it).
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub at: Instant,
    /// The bearer token of the kubeconfig it came with (`write_kubeconfig_for`), or `anonymous`.
    pub client: String,
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    /// The body, parsed as JSON or YAML (`Null` when empty or neither).
    pub body: Value,
    /// Whether it arrived while its client's link was frozen (and so was never applied).
    pub held: bool,
}

impl SeenRequest {
    /// A request that changes something: status, Events, BundleCopies, Leases.
    pub fn is_write(&self) -> bool {
        !matches!(self.method, Method::GET | Method::HEAD | Method::OPTIONS)
    }

    pub fn is_lease(&self) -> bool {
        self.path.contains("/leases")
    }
}

impl std::fmt::Display for SeenRequest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{} {} {}{}{}",
            self.client,
            self.method,
            self.path,
            if self.query.is_empty() { "" } else { "?" },
            self.query
        )?;
        if self.held {
            formatter.write_str(" (held)")?;
        }
        Ok(())
    }
}

/// What the fake API server holds and saw.
pub struct ApiState {
    /// BundleCopies by name, with the status last applied.
    pub objects: BTreeMap<String, Value>,
    /// Secrets by name.
    pub secrets: BTreeMap<String, Value>,
    /// `(name, status)` of every status patch, in order.
    pub status_patches: Vec<(String, Value)>,
    pub events: Vec<Value>,
    /// GETs of single Secrets.
    pub secret_reads: usize,
    /// GETs of single BundleCopies.
    pub bundle_copy_reads: usize,
    /// Non-watch lists of BundleCopies (startup probe and watcher relists).
    pub bundle_copy_lists: usize,
    pub unexpected: Vec<String>,
    /// Status-patch echoes sent to at least one open BundleCopy watch.
    pub echoes_delivered: usize,
    /// Leases by name.
    pub leases: BTreeMap<String, Value>,
    /// The body of every Lease create or replace that was applied, in order.
    pub lease_writes: Vec<Value>,
    /// How long a (non-watch) list of Secrets takes to answer: on a real API server the Secret
    /// listing may arrive well after the first reconciles have run.
    pub secret_list_delay: Duration,
    /// Every request, in order of arrival.
    pub requests: Vec<SeenRequest>,
    /// BundleMirrors by name, with the status last applied.
    pub mirrors: BTreeMap<String, Value>,
    /// `(name, status)` of every BundleMirror status patch, in order.
    pub mirror_status_patches: Vec<(String, Value)>,
    /// `(name, object)` of every server-side apply of a BundleCopy (not its status), in order.
    pub applied: Vec<(String, Value)>,
    /// Names of the BundleCopies deleted, in order.
    pub deleted: Vec<String>,
    /// resourceVersion of the last write.
    resource_version: u64,
    /// Clients whose link is frozen.
    frozen: tokio::sync::watch::Sender<BTreeSet<String>>,
    /// Watch events (`{"type", "object"}`) for open BundleCopy and Secret watches.
    bundle_copy_watch: tokio::sync::broadcast::Sender<Value>,
    secret_watch: tokio::sync::broadcast::Sender<Value>,
    mirror_watch: tokio::sync::broadcast::Sender<Value>,
}

impl Default for ApiState {
    fn default() -> Self {
        ApiState {
            objects: BTreeMap::new(),
            secrets: BTreeMap::new(),
            status_patches: Vec::new(),
            events: Vec::new(),
            bundle_copy_lists: 0,
            secret_reads: 0,
            bundle_copy_reads: 0,
            unexpected: Vec::new(),
            echoes_delivered: 0,
            leases: BTreeMap::new(),
            lease_writes: Vec::new(),
            secret_list_delay: Duration::ZERO,
            requests: Vec::new(),
            mirrors: BTreeMap::new(),
            mirror_status_patches: Vec::new(),
            applied: Vec::new(),
            deleted: Vec::new(),
            resource_version: 100,
            frozen: tokio::sync::watch::channel(BTreeSet::new()).0,
            bundle_copy_watch: tokio::sync::broadcast::channel(4096).0,
            secret_watch: tokio::sync::broadcast::channel(64).0,
            mirror_watch: tokio::sync::broadcast::channel(64).0,
        }
    }
}

impl ApiState {
    /// Statuses of the patches to `name`, in order.
    pub fn patches_of(&self, name: &str) -> Vec<&Value> {
        self.status_patches
            .iter()
            .filter(|(patched, _)| patched == name)
            .map(|(_, status)| status)
            .collect()
    }

    /// The Ready condition `(status, reason)` of the last status patch to `name`.
    pub fn last_ready(&self, name: &str) -> Option<(String, String)> {
        self.patches_of(name)
            .last()
            .and_then(|status| ready_of(status))
    }

    /// The requests `client` sent, in order.
    pub fn requests_of(&self, client: &str) -> Vec<&SeenRequest> {
        self.requests
            .iter()
            .filter(|request| request.client == client)
            .collect()
    }

    /// Whether an Event with `reason` regarding `name` was written.
    pub fn has_event(&self, name: &str, reason: &str) -> bool {
        self.events
            .iter()
            .any(|event| event["regarding"]["name"] == name && event["reason"] == reason)
    }
}

/// A running fake API server for one namespace.
pub struct FakeApiServer {
    pub state: Arc<Mutex<ApiState>>,
    pub url: String,
    namespace: String,
}

pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

pub fn json_response(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())).boxed_unsync())
        .unwrap()
}

pub fn not_found(what: &str) -> Response<ResponseBody> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": "NotFound", "code": 404, "message": format!("{what} not found")}),
    )
}

impl FakeApiServer {
    pub async fn start(namespace: &str, state: ApiState) -> FakeApiServer {
        let state = Arc::new(Mutex::new(state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shared = state.clone();
        let served_namespace = namespace.to_string();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                let namespace = served_namespace.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        answer_unless_frozen(request, namespace.clone(), state.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApiServer {
            state,
            url: format!("http://{address}"),
            namespace: namespace.to_string(),
        }
    }

    /// Creates or replaces a Secret and tells the Secret watches, as a `kubectl apply` would.
    pub fn put_secret(&self, mut secret: Value) {
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        secret["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        let name = secret["metadata"]["name"].as_str().unwrap().to_string();
        let kind = if state.secrets.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let event = json!({"type": kind, "object": {"apiVersion": "v1", "kind": "PartialObjectMetadata",
                                                  "metadata": secret["metadata"]}});
        state.secrets.insert(name, secret);
        let _ = state.secret_watch.send(event);
    }

    /// Replaces a BundleCopy's spec, bumps its generation and tells the watches, as a
    /// `kubectl apply` of a changed spec would.
    pub fn put_spec(&self, name: &str, spec: Value) {
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        let version = state.resource_version.to_string();
        let object = state.objects.get_mut(name).unwrap();
        object["spec"] = spec;
        let generation = object["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        object["metadata"]["generation"] = json!(generation);
        object["metadata"]["resourceVersion"] = json!(version);
        let event = json!({"type": "MODIFIED", "object": object.clone()});
        let _ = state.bundle_copy_watch.send(event);
    }

    /// Creates or replaces a BundleMirror's spec (a new generation) and tells the watches, as a
    /// `kubectl apply` would.
    pub fn put_mirror(&self, name: &str, spec: Value) {
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        let version = state.resource_version.to_string();
        let namespace = self.namespace.clone();
        let existed = state.mirrors.contains_key(name);
        let object = state.mirrors.entry(name.to_string()).or_insert_with(|| {
            json!({"apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleMirror",
                   "metadata": {"name": name, "namespace": namespace,
                                "uid": format!("m1770000-0000-4000-8000-{:012}", name.len()),
                                "generation": 0}})
        });
        object["spec"] = spec;
        let generation = object["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        object["metadata"]["generation"] = json!(generation);
        object["metadata"]["resourceVersion"] = json!(version);
        let event =
            json!({"type": if existed { "MODIFIED" } else { "ADDED" }, "object": object.clone()});
        let _ = state.mirror_watch.send(event);
    }

    /// A client of this server, for controller code run in the test process.
    pub fn client(&self) -> kube::Client {
        bundlecopy_engine::install_crypto_provider();
        let mut config = kube::Config::new(self.url.parse().unwrap());
        config.default_namespace = self.namespace.clone();
        kube::Client::try_from(config).unwrap()
    }

    /// A kubeconfig (in `dir`) pointing at this server, with the namespace as default.
    pub fn write_kubeconfig(&self, dir: &std::path::Path) -> PathBuf {
        self.write_kubeconfig_to(dir.join("kubeconfig"), "user: {}", &self.url)
    }

    /// A kubeconfig (in `dir`) for one of several controllers: its requests are logged as
    /// `client`, and `freeze(client)` freezes its link.
    pub fn write_kubeconfig_for(&self, dir: &std::path::Path, client: &str) -> PathBuf {
        self.write_kubeconfig_via(dir, client, &self.url)
    }

    /// As `write_kubeconfig_for`, reaching this server through `server` (a relay in between).
    pub fn write_kubeconfig_via(
        &self,
        dir: &std::path::Path,
        client: &str,
        server: &str,
    ) -> PathBuf {
        let path = dir.join(format!("kubeconfig-{client}"));
        self.write_kubeconfig_to(path, &format!("user:\n    token: {client}"), server)
    }

    fn write_kubeconfig_to(&self, path: PathBuf, user: &str, server: &str) -> PathBuf {
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
             users:\n- name: fake\n  {user}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {}\n\
             current-context: fake\n",
            self.namespace
        );
        std::fs::write(&path, config).unwrap();
        path
    }

    /// From now on `client`'s requests get no answer and its watches go quiet; the connections
    /// stay open. Returns when the freeze began.
    pub fn freeze(&self, client: &str) -> Instant {
        let state = self.state.lock().unwrap();
        state.frozen.send_modify(|frozen| {
            frozen.insert(client.to_string());
        });
        Instant::now()
    }

    /// Ends the freeze: what `client` sent meanwhile is dropped with its connections (the
    /// packets were lost), its watches deliver again, and new requests are answered.
    pub fn unfreeze(&self, client: &str) {
        let state = self.state.lock().unwrap();
        state.frozen.send_modify(|frozen| {
            frozen.remove(client);
        });
    }
}

/// Why a frozen client's connection was closed: what it sent is lost.
#[derive(Debug)]
struct LinkWasFrozen;

impl std::fmt::Display for LinkWasFrozen {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("the link was frozen; the request was dropped")
    }
}

impl std::error::Error for LinkWasFrozen {}

/// Logs the request, holds it while its client's link is frozen (then drops it), and otherwise
/// answers it.
async fn answer_unless_frozen(
    request: Request<Incoming>,
    namespace: String,
    state: Arc<Mutex<ApiState>>,
) -> Result<Response<ResponseBody>, LinkWasFrozen> {
    let client = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("anonymous")
        .to_string();
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body)
        .or_else(|_| serde_yaml::from_slice(&body))
        .unwrap_or(Value::Null);
    let seen = SeenRequest {
        at: Instant::now(),
        client: client.clone(),
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body,
        held: false,
    };
    let mut frozen = {
        let mut state = state.lock().unwrap();
        let frozen = state.frozen.subscribe();
        let held = frozen.borrow().contains(&client);
        state.requests.push(SeenRequest {
            held,
            ..seen.clone()
        });
        frozen
    };
    if frozen.borrow().contains(&client) {
        let _ = frozen.wait_for(|frozen| !frozen.contains(&client)).await;
        return Err(LinkWasFrozen);
    }
    let Ok(response) = handle(seen, namespace, state, frozen).await;
    Ok(response)
}

async fn handle(
    request: SeenRequest,
    namespace: String,
    state: Arc<Mutex<ApiState>>,
    frozen: tokio::sync::watch::Receiver<BTreeSet<String>>,
) -> Result<Response<ResponseBody>, Infallible> {
    let SeenRequest {
        client,
        method,
        path,
        query,
        body,
        ..
    } = request;
    let watching = query.contains("watch=true") || query.contains("watch=1");

    let bundle_copies =
        format!("/apis/bundlecopy.dev/v1alpha1/namespaces/{namespace}/bundlecopies");
    let secrets = format!("/api/v1/namespaces/{namespace}/secrets");
    let events = format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events");
    let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases");
    let bundle_mirrors =
        format!("/apis/bundlecopy.dev/v1alpha1/namespaces/{namespace}/bundlemirrors");

    let selector = label_selector(&query);
    if method == Method::GET
        && (path == bundle_copies || path == secrets || path == bundle_mirrors)
        && watching
    {
        let receiver = {
            let state = state.lock().unwrap();
            if path == bundle_copies {
                state.bundle_copy_watch.subscribe()
            } else if path == bundle_mirrors {
                state.mirror_watch.subscribe()
            } else {
                state.secret_watch.subscribe()
            }
        };
        // Open until the test ends; one JSON line per event (those the label selector lets
        // through), none while the link is frozen.
        let watcher = (receiver, frozen, client, selector);
        let events = futures_util::stream::unfold(
            watcher,
            |(mut receiver, mut frozen, client, selector)| async move {
                loop {
                    match receiver.recv().await {
                        Ok(event) if !selects(selector.as_deref(), &event["object"]) => continue,
                        Ok(event) => {
                            let _ = frozen.wait_for(|frozen| !frozen.contains(&client)).await;
                            let mut line = serde_json::to_vec(&event).unwrap();
                            line.push(b'\n');
                            return Some((
                                Ok::<_, Infallible>(Frame::data(Bytes::from(line))),
                                (receiver, frozen, client, selector),
                            ));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        );
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody::new(events).boxed_unsync())
            .unwrap());
    }

    if method == Method::GET && path == secrets {
        let delay = state.lock().unwrap().secret_list_delay;
        tokio::time::sleep(delay).await;
    }
    let mut state = state.lock().unwrap();
    let response = match (method.clone(), path.as_str()) {
        (Method::GET, p) if p == bundle_copies && selector.is_some() => {
            // A mirror's children (the mirror controller's own list and watch).
            let items: Vec<&Value> = state
                .objects
                .values()
                .filter(|object| selects(selector.as_deref(), object))
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopyList",
                        "metadata": {"resourceVersion": state.resource_version.to_string()}, "items": items}),
            )
        }
        (Method::GET, p) if p == bundle_mirrors => {
            let items: Vec<&Value> = state.mirrors.values().collect();
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleMirrorList",
                        "metadata": {"resourceVersion": "100"}, "items": items}),
            )
        }
        (Method::PATCH, p)
            if p.starts_with(&format!("{bundle_mirrors}/")) && p.ends_with("/status") =>
        {
            let name = p[bundle_mirrors.len() + 1..p.len() - "/status".len()].to_string();
            state.resource_version += 1;
            let version = state.resource_version.to_string();
            match state.mirrors.get_mut(&name) {
                Some(object) => {
                    object["status"] = body["status"].clone();
                    object["metadata"]["resourceVersion"] = json!(version);
                    let object = object.clone();
                    state
                        .mirror_status_patches
                        .push((name, body["status"].clone()));
                    let _ = state
                        .mirror_watch
                        .send(json!({"type": "MODIFIED", "object": object}));
                    json_response(StatusCode::OK, &object)
                }
                None => {
                    state.unexpected.push(format!("{method} {path}"));
                    not_found(&format!("bundlemirrors {name:?}"))
                }
            }
        }
        (Method::PATCH, p)
            if p.starts_with(&format!("{bundle_copies}/")) && !p.ends_with("/status") =>
        {
            // Server-side apply of a whole BundleCopy (a mirror's child): create or update.
            let name = p[bundle_copies.len() + 1..].to_string();
            state.applied.push((name.clone(), body.clone()));
            state.resource_version += 1;
            let version = state.resource_version.to_string();
            let existed = state.objects.contains_key(&name);
            let object = state.objects.entry(name.clone()).or_insert_with(|| {
                json!({"apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopy",
                       "metadata": {"name": name, "namespace": namespace,
                                    "uid": format!("c0c0c0c0-0000-4000-8000-{:012}", version.len() * 1000 + name.len()),
                                    "generation": 0}})
            });
            let spec_changed = object["spec"] != body["spec"];
            for field in ["labels", "annotations", "ownerReferences"] {
                if !body["metadata"][field].is_null() {
                    object["metadata"][field] = body["metadata"][field].clone();
                }
            }
            object["spec"] = body["spec"].clone();
            if spec_changed {
                let generation = object["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                object["metadata"]["generation"] = json!(generation);
            }
            object["metadata"]["resourceVersion"] = json!(version);
            let object = object.clone();
            let kind = if existed { "MODIFIED" } else { "ADDED" };
            let _ = state
                .bundle_copy_watch
                .send(json!({"type": kind, "object": object}));
            json_response(StatusCode::OK, &object)
        }
        (Method::DELETE, p) if p.starts_with(&format!("{bundle_copies}/")) => {
            let name = p[bundle_copies.len() + 1..].to_string();
            match state.objects.remove(&name) {
                Some(object) => {
                    state.deleted.push(name);
                    let _ = state
                        .bundle_copy_watch
                        .send(json!({"type": "DELETED", "object": object}));
                    json_response(
                        StatusCode::OK,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                    )
                }
                None => not_found(&format!("bundlecopies {name:?}")),
            }
        }
        (Method::GET, p) if p == bundle_copies => {
            state.bundle_copy_lists += 1;
            // The startup probe asks for one; the watcher gets everything in one page.
            let limit_one = query.split('&').any(|pair| pair == "limit=1");
            let items: Vec<&Value> = state
                .objects
                .values()
                .take(if limit_one { 1 } else { usize::MAX })
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopyList",
                        "metadata": {"resourceVersion": "100"}, "items": items}),
            )
        }
        (Method::GET, p) if p == secrets => {
            let items: Vec<Value> = state
                .secrets
                .values()
                .map(|secret| {
                    json!({"apiVersion": "v1", "kind": "PartialObjectMetadata",
                           "metadata": secret["metadata"]})
                })
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                        "metadata": {"resourceVersion": "100"}, "items": items}),
            )
        }
        (Method::GET, p)
            if p.starts_with(&format!("{bundle_copies}/")) && !p.ends_with("/status") =>
        {
            let name = &p[bundle_copies.len() + 1..];
            state.bundle_copy_reads += 1;
            match state.objects.get(name) {
                Some(object) => json_response(StatusCode::OK, object),
                None => not_found(&format!("bundlecopies {name:?}")),
            }
        }
        (Method::GET, p) if p.starts_with(&format!("{secrets}/")) => {
            let name = &p[secrets.len() + 1..];
            state.secret_reads += 1;
            match state.secrets.get(name) {
                Some(secret) => json_response(StatusCode::OK, secret),
                None => not_found(&format!("secrets {name:?}")),
            }
        }
        (Method::PATCH, p)
            if p.starts_with(&format!("{bundle_copies}/")) && p.ends_with("/status") =>
        {
            let name = p[bundle_copies.len() + 1..p.len() - "/status".len()].to_string();
            if state.objects.contains_key(&name) {
                state
                    .status_patches
                    .push((name.clone(), body["status"].clone()));
                state.resource_version += 1;
                let version = state.resource_version.to_string();
                let object = state.objects.get_mut(&name).unwrap();
                object["status"] = body["status"].clone();
                object["metadata"]["resourceVersion"] = json!(version);
                let object = object.clone();
                if state
                    .bundle_copy_watch
                    .send(json!({"type": "MODIFIED", "object": object}))
                    .is_ok()
                {
                    state.echoes_delivered += 1;
                }
                json_response(StatusCode::OK, &object)
            } else {
                state.unexpected.push(format!("{method} {path}"));
                not_found(&format!("bundlecopies {name:?}"))
            }
        }
        (Method::POST, p) if p == events => {
            state.events.push(body.clone());
            json_response(StatusCode::CREATED, &body)
        }
        (Method::PATCH, p) if p.starts_with(&format!("{events}/")) => {
            state.events.push(body.clone());
            json_response(StatusCode::OK, &body)
        }
        (Method::GET, p) if p.starts_with(&format!("{leases}/")) => {
            match state.leases.get(&p[leases.len() + 1..]) {
                Some(lease) => json_response(StatusCode::OK, lease),
                None => not_found(&format!("leases {:?}", &p[leases.len() + 1..])),
            }
        }
        (Method::POST, p) if p == leases => {
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if state.leases.contains_key(&name) {
                conflict("AlreadyExists", &format!("leases {name:?} already exists"))
            } else {
                state.resource_version += 1;
                let mut lease = body.clone();
                lease["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
                lease["metadata"]["namespace"] = json!(namespace);
                state.leases.insert(name, lease.clone());
                state.lease_writes.push(body.clone());
                json_response(StatusCode::CREATED, &lease)
            }
        }
        (Method::PUT, p) if p.starts_with(&format!("{leases}/")) => {
            let name = p[leases.len() + 1..].to_string();
            let current = state
                .leases
                .get(&name)
                .map(|lease| lease["metadata"]["resourceVersion"].clone());
            match current {
                None => not_found(&format!("leases {name:?}")),
                // Optimistic concurrency: a replace must carry the version it read.
                Some(version) if version != body["metadata"]["resourceVersion"] => conflict(
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on leases {name:?}: the object has been modified"
                    ),
                ),
                Some(_) => {
                    state.resource_version += 1;
                    let mut lease = body.clone();
                    lease["metadata"]["resourceVersion"] =
                        json!(state.resource_version.to_string());
                    state.leases.insert(name, lease.clone());
                    state.lease_writes.push(body.clone());
                    json_response(StatusCode::OK, &lease)
                }
            }
        }
        _ => {
            state.unexpected.push(format!("{method} {path}?{query}"));
            not_found(&path)
        }
    };
    Ok(response)
}

/// The `labelSelector` of a request, decoded.
fn label_selector(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "labelSelector")
        .map(|(_, value)| value.into_owned())
}

/// Whether `object` matches a selector of the forms `key` (the label exists) and `key=value`,
/// comma-separated; no selector matches everything.
fn selects(selector: Option<&str>, object: &Value) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels = &object["metadata"]["labels"];
    selector.split(',').all(|term| match term.split_once('=') {
        Some((key, value)) => labels[key.trim_end_matches('=')] == value,
        None => !labels[term].is_null(),
    })
}

fn conflict(reason: &str, message: &str) -> Response<ResponseBody> {
    json_response(
        StatusCode::CONFLICT,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": reason, "code": 409, "message": message}),
    )
}

/// The real `bundlecopy controller` binary, against a kubeconfig; killed when dropped.
pub struct ControllerProcess {
    child: Child,
    pub metrics_addr: String,
    log_path: PathBuf,
}

impl ControllerProcess {
    /// Starts `bundlecopy controller --namespace NAMESPACE ...` with its log in `dir`
    /// (`log_name`), at log level `info` unless `extra_args` names one.
    pub fn start(
        kubeconfig: &std::path::Path,
        namespace: &str,
        dir: &std::path::Path,
        log_name: &str,
        extra_args: &[&str],
    ) -> ControllerProcess {
        ControllerProcess::start_with_env(kubeconfig, namespace, dir, log_name, extra_args, &[])
    }

    /// `start`, with extra environment variables (a cloud identity's, say).
    pub fn start_with_env(
        kubeconfig: &std::path::Path,
        namespace: &str,
        dir: &std::path::Path,
        log_name: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> ControllerProcess {
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let log_path = dir.join(log_name);
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(bundlecopy_bin());
        command.args([
            "controller",
            "--namespace",
            namespace,
            "--metrics-addr",
            &metrics_addr,
        ]);
        if !extra_args.contains(&"--log-level") {
            command.args(["--log-level", "info"]);
        }
        // Proxy variables of the test's environment would route the fake API server's and the
        // registries' traffic elsewhere.
        for variable in super::forward_proxy::PROXY_VARIABLES {
            command.env_remove(variable);
        }
        command
            .args(extra_args)
            .envs(env.iter().copied())
            .env("KUBECONFIG", kubeconfig)
            .env_remove("RUST_LOG")
            .env_remove("BUNDLECOPY_NAMESPACE")
            .env_remove("BUNDLECOPY_LEADER_ELECTION")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = spawn_tied_to_test_process(command).unwrap();
        ControllerProcess {
            child,
            metrics_addr,
            log_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the controller exited ({status}):\n{}", self.log());
        }
    }

    /// `(status code, body)` of a GET of `path` on the health server; `(0, "")` when it does not
    /// answer.
    pub async fn probe(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.metrics_addr);
        match reqwest::get(&url).await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }

    /// Polls `condition` until it holds; panics with `what` (called for the message) and the
    /// log when `within` passes or the process exits first.
    pub async fn wait_until(
        &mut self,
        within: Duration,
        mut condition: impl FnMut() -> bool,
        what: impl Fn() -> String,
    ) {
        let deadline = Instant::now() + within;
        while !condition() {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} within {within:?}:\n{}",
                what(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for `/readyz`.
    pub async fn wait_ready(&mut self, within: Duration) {
        let url = format!("http://{}/readyz", self.metrics_addr);
        let deadline = Instant::now() + within;
        loop {
            self.assert_running();
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready within {within:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of an unlabelled metric from `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Peak resident set size so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in /proc/{}/status", self.pid()))
    }

    /// User plus system CPU time used so far (`/proc/PID/stat`, in clock ticks of 1/100 s).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill_hard(&mut self) {
        kill_and_reap(&mut self.child);
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(&mut self, within: Duration) {
        match terminate(&mut self.child, within).await {
            Some(status) => assert!(status.success(), "exit {status}:\n{}", self.log()),
            None => panic!("no exit within {within:?} of SIGTERM:\n{}", self.log()),
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// A BundleCopy object as the API server would return it.
pub fn bundle_copy_object(
    namespace: &str,
    name: &str,
    uid_suffix: u32,
    spec: Value,
    status: Option<Value>,
) -> Value {
    let mut object = json!({
        "apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopy",
        "metadata": {"name": name, "namespace": namespace,
                     "uid": format!("5ca1e000-0000-4000-8000-{uid_suffix:012}"),
                     "generation": 1, "resourceVersion": "100"},
        "spec": spec,
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    object
}

/// The Ready condition of a status as `(status, reason)`, if any.
pub fn ready_of(status: &Value) -> Option<(String, String)> {
    condition_of(status, "Ready").map(|(status, reason, _)| (status, reason))
}

/// A condition of a status as `(status, reason, message)`, if there is one of that type.
pub fn condition_of(status: &Value, type_: &str) -> Option<(String, String, String)> {
    status["conditions"].as_array()?.iter().find_map(|c| {
        (c["type"] == type_).then(|| {
            let text = |key: &str| c[key].as_str().unwrap_or_default().to_string();
            (text("status"), text("reason"), text("message"))
        })
    })
}
