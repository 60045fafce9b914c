//! `controller::run` as a process, the way `bundlecopy controller` runs it: a kubeconfig pointing
//! at a small fake API server on loopback (real HTTP), leader election on, real registries
//! behind the copy, SIGTERM at the end. The test re-runs its own binary with one test selected
//! (`controller_run_child`) so that the child has its own signal handlers and environment.
//! `cargo test --test integration controller::process`

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use bundlecopy::operator::args::ControllerArgs;

use crate::support::fake_api::{ResponseBody, json_response, not_found};
use crate::support::process::{spawn_tied_to_test_process, terminate};
use crate::support::registry::free_port;
use crate::support::{BundleSpec, RegistryKind, TestRegistry, assert_bundle_copied, push_bundle};

const NAMESPACE: &str = "bc-run";
const CHILD_ENV: &str = "BUNDLECOPY_TEST_CONTROLLER_ARGS";

#[derive(Parser)]
struct ChildCli {
    #[command(flatten)]
    args: ControllerArgs,
}

/// Runs only when the parent test starts this binary with `CHILD_ENV` set: the controller itself.
#[tokio::test]
async fn controller_run_child() {
    let Ok(argv) = std::env::var(CHILD_ENV) else {
        return;
    };
    let argv: Vec<String> = serde_json::from_str(&argv).unwrap();
    let cli =
        ChildCli::try_parse_from(std::iter::once("controller".to_string()).chain(argv)).unwrap();
    bundlecopy::operator::run(cli.args)
        .await
        .expect("the controller ends cleanly");
}

/// What the fake API server holds and saw.
#[derive(Default)]
struct ApiState {
    bundle_copy: Value,
    lease: Option<Value>,
    status_patches: Vec<Value>,
    events: Vec<Value>,
    lease_writes: Vec<Value>,
    unexpected: Vec<String>,
    /// Every request, as `METHOD path?query`, in order.
    requests: Vec<String>,
}

async fn handle(
    request: Request<Incoming>,
    state: Arc<Mutex<ApiState>>,
) -> Result<Response<ResponseBody>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let watching = query.contains("watch=true") || query.contains("watch=1");
    let mut state = state.lock().unwrap();
    state.requests.push(format!("{method} {path}?{query}"));

    let bundle_copies =
        format!("/apis/bundlecopy.dev/v1alpha1/namespaces/{NAMESPACE}/bundlecopies");
    let secrets = format!("/api/v1/namespaces/{NAMESPACE}/secrets");
    let events = format!("/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events");
    let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases");
    let lease = format!("{leases}/bundlecopy-operator");
    let bundle_mirrors =
        format!("/apis/bundlecopy.dev/v1alpha1/namespaces/{NAMESPACE}/bundlemirrors");

    let response = match (method.clone(), path.as_str()) {
        (Method::GET, p)
            if (p == bundle_copies || p == secrets || p == bundle_mirrors) && watching =>
        {
            // A watch that stays open and quiet: nothing changes in this test's cluster.
            let quiet = futures_util::stream::pending::<Result<Frame<Bytes>, Infallible>>();
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(StreamBody::new(quiet).boxed_unsync())
                .unwrap()
        }
        // No BundleMirrors here; the mirror controller (on by default) lists and watches them,
        // and lists the BundleCopies they own (none).
        (Method::GET, p) if p == bundle_mirrors => json_response(
            StatusCode::OK,
            &json!({"apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleMirrorList",
                    "metadata": {"resourceVersion": "100"}, "items": []}),
        ),
        (Method::GET, p) if p == bundle_copies && query.contains("labelSelector") => json_response(
            StatusCode::OK,
            &json!({"apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopyList",
                    "metadata": {"resourceVersion": "100"}, "items": []}),
        ),
        (Method::GET, p) if p == bundle_copies => json_response(
            StatusCode::OK,
            &json!({"apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopyList",
                    "metadata": {"resourceVersion": "100"}, "items": [state.bundle_copy]}),
        ),
        (Method::GET, p) if p == secrets => json_response(
            StatusCode::OK,
            &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                    "metadata": {"resourceVersion": "100"}, "items": []}),
        ),
        (Method::PATCH, p) if p == format!("{bundle_copies}/hello/status") => {
            state.status_patches.push(body.clone());
            state.bundle_copy["status"] = body["status"].clone();
            json_response(StatusCode::OK, &state.bundle_copy)
        }
        (Method::POST, p) if p == events => {
            state.events.push(body.clone());
            json_response(StatusCode::CREATED, &body)
        }
        (Method::PATCH, p) if p.starts_with(&format!("{events}/")) => {
            state.events.push(body.clone());
            json_response(StatusCode::OK, &body)
        }
        (Method::GET, p) if p == lease => match &state.lease {
            Some(current) => json_response(StatusCode::OK, current),
            None => not_found("leases \"bundlecopy-operator\""),
        },
        (Method::POST, p) if p == leases => {
            let mut created = body.clone();
            created["metadata"]["resourceVersion"] = json!("1");
            state.lease = Some(created.clone());
            state.lease_writes.push(body.clone());
            json_response(StatusCode::CREATED, &created)
        }
        (Method::PUT, p) if p == lease => {
            let version: u64 = state
                .lease
                .as_ref()
                .and_then(|l| l["metadata"]["resourceVersion"].as_str()?.parse().ok())
                .unwrap_or(0);
            let mut written = body.clone();
            written["metadata"]["resourceVersion"] = json!((version + 1).to_string());
            state.lease = Some(written.clone());
            state.lease_writes.push(body.clone());
            json_response(StatusCode::OK, &written)
        }
        _ => {
            state.unexpected.push(format!("{method} {path}?{query}"));
            not_found(&path)
        }
    };
    Ok(response)
}

async fn start_fake_api_server(state: Arc<Mutex<ApiState>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| handle(request, state.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{address}")
}

fn write_kubeconfig(dir: &Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
         users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {NAMESPACE}\n\
         current-context: fake\n"
    );
    std::fs::write(&path, config).unwrap();
    path
}

/// Starts this test binary as the controller (`controller_run_child`) with leader election on,
/// logging to `log_path`.
fn spawn_controller(
    kubeconfig: &Path,
    metrics_addr: &str,
    identity: &str,
    log_path: &Path,
) -> std::process::Child {
    let args = json!([
        "--namespace",
        NAMESPACE,
        "--metrics-addr",
        metrics_addr,
        "--log-level",
        "info,bundlecopy=debug",
        "--leader-election",
        "--leader-election-namespace",
        NAMESPACE,
        "--leader-election-identity",
        identity,
    ]);
    let log = std::fs::File::create(log_path).unwrap();
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "controller::process::controller_run_child",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, args.to_string())
        .env("KUBECONFIG", kubeconfig)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    spawn_tied_to_test_process(command).unwrap()
}

#[tokio::test]
async fn controller_run_copies_and_stops_on_sigterm() {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    let pushed = push_bundle(&source, "hello", "v1", &BundleSpec::new("hello", "0.1.0")).await;
    let state = Arc::new(Mutex::new(ApiState {
        bundle_copy: json!({
            "apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopy",
            "metadata": {"name": "hello", "namespace": NAMESPACE, "uid": "7e57c0de-0000-4000-8000-000000000003",
                         "generation": 1, "resourceVersion": "100"},
            "spec": {"source": {"reference": pushed.reference},
                     "destination": {"reference": format!("{}/mirror", destination.host())}},
        }),
        ..Default::default()
    }));
    let server = start_fake_api_server(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), &server);
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let log_path = dir.path().join("controller.log");
    let mut child = spawn_controller(&kubeconfig, &metrics_addr, "child-1", &log_path);
    let log_tail = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Ready once it leads; then the listed BundleCopy is copied.
    let ready_url = format!("http://{metrics_addr}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the controller exited early ({status}):\n{}", log_tail());
        }
        if reqwest::get(&ready_url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready within 60 s:\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let copied = || {
        let state = state.lock().unwrap();
        state.status_patches.iter().any(|patch| {
            patch["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !copied() {
        assert!(
            Instant::now() < deadline,
            "no Ready status within 60 s:\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_bundle_copied(
        &source,
        "hello",
        &destination,
        "mirror/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("bundlecopy_copy_duration_seconds_count 1"),
        "{metrics}"
    );

    // SIGTERM: a clean exit, and the lease is handed back.
    let status = terminate(&mut child, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no exit within 20 s of SIGTERM:\n{}", log_tail()));
    assert!(status.success(), "exit {status}:\n{}", log_tail());

    let state = state.lock().unwrap();
    assert!(
        state.unexpected.is_empty(),
        "unexpected requests: {:?}",
        state.unexpected
    );
    let reasons: Vec<&str> = state
        .events
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(reasons, ["CopyStarted", "Copied"]);
    let first = &state.lease_writes[0];
    assert_eq!(first["spec"]["holderIdentity"], "child-1");
    let last = state.lease_writes.last().unwrap();
    assert!(
        last["spec"]
            .get("holderIdentity")
            .is_none_or(Value::is_null),
        "the lease was released: {last}"
    );
    let by_type: BTreeMap<&str, usize> =
        state
            .status_patches
            .iter()
            .fold(BTreeMap::new(), |mut counts, patch| {
                *counts
                    .entry(
                        if patch["status"]["conditions"]
                            .to_string()
                            .contains("\"Copying\"")
                        {
                            "copying"
                        } else {
                            "done"
                        },
                    )
                    .or_default() += 1;
                counts
            });
    assert_eq!(by_type.get("done"), Some(&1), "{:?}", state.status_patches);
}

/// Status code and body of a GET on the controller's HTTP port (0 when it does not answer).
async fn probe(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(response) => {
            let code = response.status().as_u16();
            (code, response.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

fn now_micro_time() -> Value {
    serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ))
    .unwrap()
}

/// A second replica while another identity holds the Lease: it is Ready as `standby` (so a rollout
/// completes), `/leaderz` says 503, `bundlecopy_leader` is 0, and it neither watches nor lists
/// BundleCopies (beyond the one start-up check that the CRD is listable), writes no status, no
/// Event and no Lease. Once the holder lets the Lease go it takes over and copies.
#[tokio::test]
async fn controller_run_standby_does_not_reconcile_until_it_takes_over() {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    let pushed = push_bundle(&source, "hello", "v1", &BundleSpec::new("hello", "0.1.0")).await;
    let state = Arc::new(Mutex::new(ApiState {
        bundle_copy: json!({
            "apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopy",
            "metadata": {"name": "hello", "namespace": NAMESPACE, "uid": "7e57c0de-0000-4000-8000-000000000004",
                         "generation": 1, "resourceVersion": "100"},
            "spec": {"source": {"reference": pushed.reference},
                     "destination": {"reference": format!("{}/mirror", destination.host())}},
        }),
        lease: Some(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "bundlecopy-operator", "namespace": NAMESPACE, "resourceVersion": "5"},
            "spec": {"holderIdentity": "other-replica", "leaseDurationSeconds": 15,
                     "renewTime": now_micro_time(), "leaseTransitions": 0},
        })),
        ..Default::default()
    }));
    // The other replica renews every second, as a live leader does, until `released` is set.
    let (release, released) = tokio::sync::watch::channel(false);
    let renewer = {
        let state = state.clone();
        let mut released = released.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = released.wait_for(|r| *r) => return,
                }
                let mut state = state.lock().unwrap();
                if let Some(lease) = state.lease.as_mut() {
                    lease["spec"]["renewTime"] = now_micro_time();
                    let version: u64 = lease["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    lease["metadata"]["resourceVersion"] = json!((version + 1).to_string());
                }
            }
        })
    };
    let server = start_fake_api_server(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), &server);
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let log_path = dir.path().join("controller.log");
    let mut child = spawn_controller(&kubeconfig, &metrics_addr, "child-2", &log_path);
    let log_tail = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let readyz = format!("http://{metrics_addr}/readyz");
    let leaderz = format!("http://{metrics_addr}/leaderz");
    let metrics_url = format!("http://{metrics_addr}/metrics");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the controller exited early ({status}):\n{}", log_tail());
        }
        if probe(&readyz).await == (200, "standby\n".to_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready as a standby within 60 s:\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(probe(&leaderz).await, (503, "standby\n".to_string()));
    let scraped = probe(&metrics_url).await.1;
    assert!(
        scraped.lines().any(|l| l == "bundlecopy_leader 0"),
        "{scraped}"
    );

    // Several retry rounds (one every 2 s) as a standby: only Lease reads reach the API server.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(probe(&readyz).await, (200, "standby\n".to_string()));
    {
        let state = state.lock().unwrap();
        let bundle_copy_requests: Vec<&String> = state
            .requests
            .iter()
            .filter(|r| r.contains("/bundlecopies"))
            .collect();
        assert_eq!(
            bundle_copy_requests.len(),
            1,
            "a standby only checks once that BundleCopies are listable: {bundle_copy_requests:?}"
        );
        assert!(
            bundle_copy_requests[0].starts_with("GET ")
                && bundle_copy_requests[0].contains("limit=1")
                && !bundle_copy_requests[0].contains("watch"),
            "{bundle_copy_requests:?}"
        );
        let others: Vec<&String> = state
            .requests
            .iter()
            .filter(|r| !r.contains("/bundlecopies") && !r.contains("/leases/bundlecopy-operator"))
            .collect();
        assert!(others.is_empty(), "a standby touched {others:?}");
        let lease_reads = state
            .requests
            .iter()
            .filter(|r| r.starts_with("GET ") && r.contains("/leases/bundlecopy-operator"))
            .count();
        assert!(
            lease_reads >= 3,
            "the standby keeps contending: {:?}",
            state.requests
        );
        assert!(state.lease_writes.is_empty(), "{:?}", state.lease_writes);
        assert!(state.status_patches.is_empty() && state.events.is_empty());
    }

    // The holder lets the Lease go, as a leader stopping on SIGTERM does: the standby takes over.
    release.send(true).unwrap();
    renewer.await.unwrap();
    {
        let mut state = state.lock().unwrap();
        let lease = state.lease.as_mut().unwrap();
        lease["spec"]["holderIdentity"] = Value::Null;
        lease["spec"]["renewTime"] = Value::Null;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while probe(&leaderz).await != (200, "leader\n".to_string()) {
        assert!(
            Instant::now() < deadline,
            "no take-over within 20 s:\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(probe(&readyz).await, (200, "leader\n".to_string()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let copied = state.lock().unwrap().status_patches.iter().any(|patch| {
            patch["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        });
        if copied {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Ready status within 60 s of the take-over:\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_bundle_copied(
        &source,
        "hello",
        &destination,
        "mirror/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
    let scraped = probe(&metrics_url).await.1;
    assert!(
        scraped.lines().any(|l| l == "bundlecopy_leader 1"),
        "{scraped}"
    );

    let status = terminate(&mut child, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no exit within 20 s of SIGTERM:\n{}", log_tail()));
    assert!(status.success(), "exit {status}:\n{}", log_tail());
    let state = state.lock().unwrap();
    assert!(
        state.unexpected.is_empty(),
        "unexpected requests: {:?}",
        state.unexpected
    );
    assert_eq!(state.lease_writes[0]["spec"]["holderIdentity"], "child-2");
    assert_eq!(state.lease_writes[0]["spec"]["leaseTransitions"], 1);
}

/// Before the API server answers, the process is alive but not ready: `/healthz` 200,
/// `/readyz` and `/leaderz` 503 `starting`, `bundlecopy_leader 0`; and SIGTERM then ends it at once
/// and cleanly, without waiting for the API server's timeouts.
#[tokio::test]
async fn controller_run_is_starting_until_the_api_server_answers() {
    bundlecopy_engine::install_crypto_provider();
    // An API server that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), &server);
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let log_path = dir.path().join("controller.log");
    let mut child = spawn_controller(&kubeconfig, &metrics_addr, "child-3", &log_path);
    let log_tail = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(60);
    while probe(&format!("http://{metrics_addr}/healthz")).await.0 != 200 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the controller exited early ({status}):\n{}", log_tail());
        }
        assert!(
            Instant::now() < deadline,
            "no /healthz within 60 s:\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for path in ["/readyz", "/leaderz"] {
        assert_eq!(
            probe(&format!("http://{metrics_addr}{path}")).await,
            (503, "starting\n".to_string()),
            "{path}"
        );
    }
    let scraped = probe(&format!("http://{metrics_addr}/metrics")).await.1;
    assert!(
        scraped.lines().any(|l| l == "bundlecopy_leader 0"),
        "{scraped}"
    );

    let status = terminate(&mut child, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| {
            panic!(
                "no exit within 10 s of SIGTERM while starting:\n{}",
                log_tail()
            )
        });
    assert!(status.success(), "exit {status}:\n{}", log_tail());
    silent.abort();
}
