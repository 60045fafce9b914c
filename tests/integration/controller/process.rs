//! `controller::run` as a process, the way `bundlecopy controller` runs it: a kubeconfig pointing
//! at the shared fake API server (`support::fake_api`, real HTTP on loopback), leader election on, real registries
//! behind the copy, SIGTERM at the end. The test re-runs its own binary with one test selected
//! (`controller_run_child`) so that the child has its own signal handlers and environment.
//! `cargo test --test integration controller::process`

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

use bundlecopy::operator::args::ControllerArgs;

use crate::support::fake_api::{ApiState, FakeApiServer, bundle_copy_object};
use crate::support::process::{spawn_tied_to_test_process, terminate};
use crate::support::registry::free_port;
use crate::support::{
    BundleSpec, PushedBundle, RegistryKind, TestRegistry, assert_bundle_copied, push_bundle,
};

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

/// The shared fake API server holding one BundleCopy `hello` (uid ending in `uid_suffix`) and,
/// if given, the operator's Lease.
async fn hello_api(uid_suffix: u32, spec: Value, lease: Option<Value>) -> FakeApiServer {
    let mut state = ApiState::default();
    state.objects.insert(
        "hello".into(),
        bundle_copy_object(NAMESPACE, "hello", uid_suffix, spec, None),
    );
    if let Some(lease) = lease {
        state.leases.insert("bundlecopy-operator".into(), lease);
    }
    FakeApiServer::start(NAMESPACE, state).await
}

/// Waits (60 s at most) for a status patch setting Ready True, then checks that the destination
/// holds the bundle.
async fn wait_until_copied(
    api: &FakeApiServer,
    (source, destination): (&TestRegistry, &TestRegistry),
    pushed: &PushedBundle,
    log_tail: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready_true_written(&api.state.lock().unwrap()) {
        assert!(
            Instant::now() < deadline,
            "no Ready status within 60 s:\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_bundle_copied(
        source,
        "hello",
        destination,
        "mirror/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
}

/// SIGTERM: the controller exits cleanly within 20 s, having sent nothing the fake did not expect.
async fn stop_cleanly(
    child: &mut std::process::Child,
    api: &FakeApiServer,
    log_tail: &dyn Fn() -> String,
) {
    let status = terminate(child, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no exit within 20 s of SIGTERM:\n{}", log_tail()));
    assert!(status.success(), "exit {status}:\n{}", log_tail());
    let state = api.state.lock().unwrap();
    assert!(
        state.unexpected.is_empty(),
        "unexpected requests: {:?}",
        state.unexpected
    );
}

/// Whether a status patch set Ready True.
fn ready_true_written(state: &ApiState) -> bool {
    state.status_patches.iter().any(|(_, status)| {
        status["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    })
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
    let api = hello_api(
        3,
        json!({"source": {"reference": pushed.reference},
               "destination": {"reference": format!("{}/mirror", destination.host())}}),
        None,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());
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
    wait_until_copied(&api, (&source, &destination), &pushed, &log_tail).await;
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
    stop_cleanly(&mut child, &api, &log_tail).await;
    let state = api.state.lock().unwrap();
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
                        if patch.1["conditions"].to_string().contains("\"Copying\"") {
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
    let api = hello_api(
        4,
        json!({"source": {"reference": pushed.reference},
               "destination": {"reference": format!("{}/mirror", destination.host())}}),
        Some(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "bundlecopy-operator", "namespace": NAMESPACE, "resourceVersion": "5"},
            "spec": {"holderIdentity": "other-replica", "leaseDurationSeconds": 15,
                     "renewTime": now_micro_time(), "leaseTransitions": 0},
        })),
    )
    .await;
    // The other replica renews every second, as a live leader does, until `released` is set.
    let (release, released) = tokio::sync::watch::channel(false);
    let renewer = {
        let state = api.state.clone();
        let mut released = released.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = released.wait_for(|r| *r) => return,
                }
                let mut state = state.lock().unwrap();
                if let Some(lease) = state.leases.get_mut("bundlecopy-operator") {
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
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());
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
        let state = api.state.lock().unwrap();
        let requests: Vec<String> = state.requests.iter().map(|r| r.to_string()).collect();
        let bundle_copy_requests: Vec<&String> = requests
            .iter()
            .filter(|r| r.contains("/bundlecopies"))
            .collect();
        assert_eq!(
            bundle_copy_requests.len(),
            1,
            "a standby only checks once that BundleCopies are listable: {bundle_copy_requests:?}"
        );
        assert!(
            bundle_copy_requests[0].starts_with("anonymous GET ")
                && bundle_copy_requests[0].contains("limit=1")
                && !bundle_copy_requests[0].contains("watch"),
            "{bundle_copy_requests:?}"
        );
        let others: Vec<&String> = requests
            .iter()
            .filter(|r| !r.contains("/bundlecopies") && !r.contains("/leases/bundlecopy-operator"))
            .collect();
        assert!(others.is_empty(), "a standby touched {others:?}");
        let lease_reads = requests
            .iter()
            .filter(|r| {
                r.starts_with("anonymous GET ") && r.contains("/leases/bundlecopy-operator")
            })
            .count();
        assert!(
            lease_reads >= 3,
            "the standby keeps contending: {requests:?}"
        );
        assert!(state.lease_writes.is_empty(), "{:?}", state.lease_writes);
        assert!(state.status_patches.is_empty() && state.events.is_empty());
    }

    // The holder lets the Lease go, as a leader stopping on SIGTERM does: the standby takes over.
    release.send(true).unwrap();
    renewer.await.unwrap();
    {
        let mut state = api.state.lock().unwrap();
        let lease = state.leases.get_mut("bundlecopy-operator").unwrap();
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
    wait_until_copied(&api, (&source, &destination), &pushed, &log_tail).await;
    let scraped = probe(&metrics_url).await.1;
    assert!(
        scraped.lines().any(|l| l == "bundlecopy_leader 1"),
        "{scraped}"
    );

    stop_cleanly(&mut child, &api, &log_tail).await;
    let state = api.state.lock().unwrap();
    assert_eq!(state.lease_writes[0]["spec"]["holderIdentity"], "child-2");
    assert_eq!(state.lease_writes[0]["spec"]["leaseTransitions"], 1);
}

/// Before the API server answers, the process is alive but not ready: `/healthz` 200,
/// `/readyz` and `/leaderz` 503 `starting`, `bundlecopy_leader 0`; and SIGTERM then ends it at once
/// and cleanly, without waiting for the API server's timeouts.
#[tokio::test]
async fn controller_run_is_starting_until_the_api_server_answers() {
    bundlecopy_engine::install_crypto_provider();
    // An API server that accepts connections and never answers: the fake, frozen from the start.
    let api = FakeApiServer::start(NAMESPACE, ApiState::default()).await;
    api.freeze("anonymous");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());
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
    let state = api.state.lock().unwrap();
    assert!(
        state.requests.iter().all(|request| request.held),
        "nothing was answered"
    );
}
