//! The real-cluster suite. Given `KUBECONFIG` (a test cluster: it installs the CRD and creates
//! and deletes a namespace), it starts loopback registries, pushes a bundle, runs
//! `bundlecopy controller` out of cluster against them, applies every file of `examples/` (hosts
//! substituted, Secrets filled in) and waits for Ready as `kubectl wait --for=condition=Ready`
//! does. Without `KUBECONFIG` it says why it skips and passes.
//! `KUBECONFIG=~/.kube/config cargo test --test integration e2e -- --nocapture`
//!
//! This module holds what the scenarios share (the cluster lock, the controller process, applying
//! and waiting, the chart's RBAC objects) and the entry points (`cluster`); the scenarios are in
//! `examples` (examples, BundleMirror, the CRD's rules), `rbac` (the chart's RBAC) and `leader`
//! (leader election, a signed bundle).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::Value;

use bundlecopy::operator::crd::{BundleCopy, BundleCopySpec, BundleCopyStatus};
use bundlecopy::operator::mirror::api::BundleMirror;
use bundlecopy::operator::validate::validate;

use crate::support::process::{kill_and_reap, spawn_tied_to_test_process, terminate};
use crate::support::registry::{TEST_PASSWORD, TEST_USERNAME, free_port};
use crate::support::{
    BundleSpec, Fault, FaultProxy, PathKind, PushedBundle, RegistryKind, Rule, TestRegistry,
    assert_bundle_copied, push_bundle,
};

mod examples;
mod leader;
mod rbac;

const FIELD_MANAGER: &str = "bundlecopy-e2e";
const CRD_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crds/bundlecopies.bundlecopy.dev.yaml"
);
const MIRROR_CRD_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crds/bundlemirrors.bundlecopy.dev.yaml"
);
const EXAMPLES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
/// Placeholders in `examples/`, in the order of `Registries::hosts`.
const PLACEHOLDERS: [&str; 3] = ["localhost:5001", "localhost:5002", "localhost:5003"];
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const SOURCE_REPO: &str = "examples/hello";

/// The YAML documents of an example with the placeholder hosts replaced and `namespace` set.
fn example_documents(file: &str, hosts: &[String; 3], namespace: &str) -> Vec<Value> {
    let mut text = std::fs::read_to_string(Path::new(EXAMPLES_DIR).join(file))
        .unwrap_or_else(|e| panic!("read examples/{file}: {e}"));
    for (placeholder, host) in PLACEHOLDERS.iter().zip(hosts) {
        text = text.replace(placeholder, host);
    }
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            let mut value: Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("examples/{file}: {e}"));
            value["metadata"]["namespace"] = Value::String(namespace.to_string());
            value
        })
        .filter(|value| !value["kind"].is_null())
        .collect()
}

/// The cluster tests run one at a time: one of them runs a controller over all namespaces, which
/// would reconcile the BundleCopies of the others.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A client for the cluster of `KUBECONFIG`, with the guard that runs cluster tests one at a
/// time; `None`, after saying why, without a cluster.
async fn cluster() -> Option<(tokio::sync::MutexGuard<'static, ()>, Client)> {
    if std::env::var_os("KUBECONFIG").is_none() {
        println!(
            "skipped: KUBECONFIG is not set — point it at a disposable test cluster to run the e2e \
             suite (it installs the BundleCopy CRD, creates and deletes a namespace and RBAC objects); \
             see docs/operator.md"
        );
        return None;
    }
    let guard = CLUSTER.lock().await;
    bundlecopy_engine::install_crypto_provider();
    let client = Client::try_default()
        .await
        .expect("a client for the cluster in KUBECONFIG");
    Some((guard, client))
}

/// `bundlecopy controller`, run out of cluster; stopped with SIGTERM (killed on drop).
struct ControllerProcess {
    child: Option<Child>,
    log: PathBuf,
    metrics_addr: String,
}

/// How to start one controller process besides its own flags.
#[derive(Default)]
struct ProcessSettings<'a> {
    /// Replaces `KUBECONFIG` (e.g. one that authenticates as the chart's ServiceAccount).
    kubeconfig: Option<&'a Path>,
    /// `POD_NAME`: the `reportingInstance` of the Events this process writes.
    pod_name: Option<&'a str>,
}

impl ControllerProcess {
    fn start(namespace: &str, log_dir: &Path) -> ControllerProcess {
        Self::spawn(
            &["--namespace", namespace, "--max-concurrent-copies", "2"],
            ProcessSettings::default(),
            log_dir.join("controller.log"),
        )
    }

    /// `bundlecopy controller ARGS` with its HTTP server on a free loopback port, logging at
    /// debug level to `log`.
    fn spawn(args: &[&str], settings: ProcessSettings, log: PathBuf) -> ControllerProcess {
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let log_file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_bundlecopy"));
        command
            .arg("controller")
            .args(args)
            .args(["--metrics-addr", &metrics_addr])
            .args(["--log-level", "info,bundlecopy=debug"])
            // Out of cluster: nothing may come from a pod's environment but what is set here.
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        if let Some(kubeconfig) = settings.kubeconfig {
            command.env("KUBECONFIG", kubeconfig);
        }
        if let Some(pod_name) = settings.pod_name {
            command.env("POD_NAME", pod_name);
        }
        let child = spawn_tied_to_test_process(command).expect("start bundlecopy controller");
        ControllerProcess {
            child: Some(child),
            log,
            metrics_addr,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    /// Panics (with the log) when the process has exited.
    fn assert_running(&mut self, while_doing: &str) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "bundlecopy controller exited ({status}) while {while_doing}:\n{}",
                self.log_tail()
            );
        }
    }

    /// Status code and body of `GET path` on its HTTP port; 0 when it does not answer.
    async fn get(&self, path: &str) -> (u16, String) {
        match reqwest::get(format!("http://{}{path}", self.metrics_addr)).await {
            Ok(response) => {
                let code = response.status().as_u16();
                (code, response.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }

    /// Whether `/leaderz` answers 200.
    async fn leads(&self) -> bool {
        self.get("/leaderz").await.0 == 200
    }

    /// Waits for `/readyz`; fails early if the process exits.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.assert_running("waiting for /readyz");
            if self.get("/readyz").await.0 == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the controller was not ready within 60 s:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .expect("scrape /metrics")
            .text()
            .await
            .unwrap()
    }

    /// Sends `signal` (SIGSTOP freezes the whole process, clocks and all; SIGCONT resumes it).
    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("a running process");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // SAFETY: kill(2) with the pid of our own child process.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill({pid}, {signal})");
    }

    /// SIGTERM, then up to 20 s for a graceful exit; returns whether it exited successfully.
    async fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        terminate(&mut child, Duration::from_secs(20))
            .await
            .is_some_and(|status| status.success())
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

/// Clean up whatever happened: the controller first (it would react to the deletion), then the
/// namespace with everything in it (the CRD stays: other resources may use it); then a failure
/// of `outcome` is raised again after the controller's log, and the controller must have exited
/// cleanly on SIGTERM.
async fn finish_with_one_controller(
    client: &Client,
    namespace: &str,
    mut controller: Option<ControllerProcess>,
    outcome: std::thread::Result<()>,
) {
    let graceful = match controller.as_mut() {
        Some(controller) => controller.stop().await,
        None => false,
    };
    if let Err(error) = Api::<Namespace>::all(client.clone())
        .delete(namespace, &DeleteParams::background())
        .await
    {
        eprintln!("could not delete namespace {namespace}: {error}");
    }
    let log_tail = controller
        .as_ref()
        .map(ControllerProcess::log_tail)
        .unwrap_or_default();
    if let Err(panic) = outcome {
        eprintln!("controller log (last lines):\n{log_tail}");
        std::panic::resume_unwind(panic);
    }
    assert!(
        graceful,
        "the controller did not exit cleanly on SIGTERM:\n{log_tail}"
    );
}

/// Server-side applies each document (Secrets and BundleCopies), retrying while the freshly
/// installed CRD is not yet served.
async fn apply_all(client: &Client, namespace: &str, documents: &[Value]) {
    for document in documents {
        let resource = match document["kind"].as_str() {
            Some("Secret") => ApiResource::erase::<Secret>(&()),
            Some("BundleCopy") => ApiResource::erase::<BundleCopy>(&()),
            Some("BundleMirror") => ApiResource::erase::<BundleMirror>(&()),
            other => {
                panic!("examples hold only Secrets, BundleCopies and BundleMirrors, not {other:?}")
            }
        };
        let object: DynamicObject = serde_json::from_value(document.clone()).unwrap();
        let name = object.name_any();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match api
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&object),
                )
                .await
            {
                Ok(_) => break,
                Err(kube::Error::Api(status))
                    if status.code == 404 && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(error) => panic!("applying {} {name}: {error}", resource.kind),
            }
        }
    }
}

/// Waits as `kubectl wait --for=condition=Ready` does: the Ready condition has the wanted status
/// and describes the current generation.
async fn wait_for_ready(
    api: &Api<BundleCopy>,
    name: &str,
    wanted: impl Fn(&str) -> bool,
) -> BundleCopy {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(object) = api.get_opt(name).await.expect("get the BundleCopy") {
            let generation = object.metadata.generation;
            let current = object.status.as_ref().and_then(|status| {
                let ready = status.condition("Ready")?;
                let observed = ready.observed_generation.or(status.observed_generation);
                (observed.is_some() && observed == generation && wanted(&ready.status))
                    .then_some(())
            });
            if current.is_some() {
                return object;
            }
            last = Some(object);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let status = last
        .and_then(|o| o.status)
        .map(|s| serde_json::to_string_pretty(&s).unwrap());
    panic!(
        "BundleCopy {name} did not reach the wanted Ready status within {READY_TIMEOUT:?}; status: {status:?}"
    );
}

async fn wait_for_events(events: &Api<Event>, names: &[&str]) -> BTreeMap<String, Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for event in events
            .list(&ListParams::default())
            .await
            .expect("list Events")
        {
            let regarding = event.regarding.as_ref();
            if regarding.and_then(|r| r.kind.as_deref()) != Some("BundleCopy") {
                continue;
            }
            if let (Some(name), Some(reason)) =
                (regarding.and_then(|r| r.name.clone()), event.reason.clone())
            {
                reasons.entry(name).or_default().push(reason);
            }
        }
        if names.iter().all(|name| reasons.contains_key(*name)) || Instant::now() >= deadline {
            return reasons;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Applies both committed CRDs (the operator runs its mirror controller by default) and waits
/// until they are Established.
async fn apply_crd(client: &Client) {
    for (file, expected) in [
        (CRD_FILE, "bundlecopies.bundlecopy.dev"),
        (MIRROR_CRD_FILE, "bundlemirrors.bundlecopy.dev"),
    ] {
        apply_one_crd(client, file, expected).await;
    }
}

async fn apply_one_crd(client: &Client, file: &str, expected: &str) {
    let text = std::fs::read_to_string(file).expect("read the committed CRD");
    let crd: CustomResourceDefinition =
        serde_yaml::from_str(&text).expect("the committed CRD parses");
    let name = crd.name_any();
    assert_eq!(name, expected);
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("server-side apply of the CRD (needs cluster-admin-like rights)");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let current = api.get(&name).await.expect("read the CRD back");
        let established = current
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the CRD was not Established within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The hello bundle (`hello` 0.1.0) pushed to `registry` as `SOURCE_REPO:tag`.
async fn push_hello(registry: &TestRegistry, tag: &str) -> PushedBundle {
    push_bundle(
        registry,
        SOURCE_REPO,
        tag,
        &BundleSpec::new("hello", "0.1.0"),
    )
    .await
}

/// The CRDs applied and a new namespace created for one scenario; its name.
async fn crd_and_fresh_namespace(client: &Client) -> String {
    apply_crd(client).await;
    let namespace = unique_namespace();
    create_namespace(client, &namespace).await;
    namespace
}

fn unique_namespace() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("bundlecopy-e2e-{}-{nanos:x}", std::process::id())
}

async fn create_namespace(client: &Client, name: &str) {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/created-by".to_string(),
                "bundlecopy-e2e".to_string(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// A Helm release name unique to this run; it names the release's cluster-scoped objects too.
fn unique_release(scenario: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("bce2e-{}-{nanos:x}-{scenario}", std::process::id())
}

/// The chart's ServiceAccount and RBAC of one release, applied to the cluster, and a kubeconfig
/// that authenticates as that ServiceAccount with a token from the TokenRequest API.
struct OperatorAccount {
    kubeconfig: PathBuf,
    /// What was applied, as `Kind/name`.
    applied: Vec<String>,
}

/// Renders the chart as release `release` in `namespace` with `overrides`, server-side applies its
/// ServiceAccount, Roles or ClusterRole and bindings (not the Deployment: the operator runs out of
/// cluster), and writes a kubeconfig for the ServiceAccount into `dir`. With `lease`, also waits
/// until the ServiceAccount may read that Lease in `namespace`.
async fn install_operator_account(
    client: &Client,
    release: &str,
    namespace: &str,
    overrides: &[&str],
    lease: Option<&str>,
    dir: &Path,
) -> OperatorAccount {
    let mut applied = Vec::new();
    let mut service_account = None;
    for (resource, namespaced, object) in chart_rbac_objects(release, namespace, overrides) {
        let kind = resource.kind.clone();
        let name = object.name_any();
        let api: Api<DynamicObject> = if namespaced {
            let object_namespace = object
                .namespace()
                .unwrap_or_else(|| panic!("the chart's {kind} {name} has no namespace"));
            Api::namespaced_with(client.clone(), &object_namespace, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("applying the chart's {kind} {name}: {e}"));
        if kind == "ServiceAccount" {
            service_account = Some(name.clone());
        }
        applied.push(format!("{kind}/{name}"));
    }
    let service_account = service_account.expect("the chart renders a ServiceAccount");
    let token = service_account_token(client, namespace, &service_account).await;
    let kubeconfig = dir.join(format!("{release}.kubeconfig"));
    let current = kube::config::Kubeconfig::read().expect("read the kubeconfig of KUBECONFIG");
    std::fs::write(
        &kubeconfig,
        service_account_kubeconfig(&current, &token, namespace),
    )
    .unwrap();
    wait_until_allowed(&kubeconfig, namespace, &service_account, lease).await;
    OperatorAccount {
        kubeconfig,
        applied,
    }
}

/// The objects of the chart that the suite applies: its ServiceAccount, Roles or ClusterRole and
/// bindings, each with its API and whether it is namespaced. The Deployment, Service and
/// ServiceMonitor are left out: the operator runs as a process instead.
fn chart_rbac_objects(
    release: &str,
    namespace: &str,
    overrides: &[&str],
) -> Vec<(ApiResource, bool, DynamicObject)> {
    crate::chart::render_release(release, namespace, overrides)
        .into_iter()
        .filter_map(|object| {
            let object: Value =
                serde_json::to_value(&object).expect("a YAML object converts to JSON");
            let (resource, namespaced) = match object["kind"].as_str().unwrap_or_default() {
                "ServiceAccount" => (ApiResource::erase::<ServiceAccount>(&()), true),
                "Role" => (ApiResource::erase::<Role>(&()), true),
                "RoleBinding" => (ApiResource::erase::<RoleBinding>(&()), true),
                "ClusterRole" => (ApiResource::erase::<ClusterRole>(&()), false),
                "ClusterRoleBinding" => (ApiResource::erase::<ClusterRoleBinding>(&()), false),
                "Deployment" | "Service" | "ServiceMonitor" => return None,
                other => panic!("the chart renders a {other:?}, which this test does not know"),
            };
            let object: DynamicObject =
                serde_json::from_value(object).expect("a rendered object is a Kubernetes object");
            Some((resource, namespaced, object))
        })
        .collect()
}

/// A bearer token for the ServiceAccount (the `serviceaccounts/token` subresource), valid for an hour.
async fn service_account_token(client: &Client, namespace: &str, name: &str) -> String {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for ServiceAccount {namespace}/{name}: {e}"));
    issued
        .status
        .expect("a TokenRequest answer carries the token")
        .token
}

/// A kubeconfig with the cluster of `current`'s current context (server, CA, TLS settings) and
/// `token` as its only user.
fn service_account_kubeconfig(
    current: &kube::config::Kubeconfig,
    token: &str,
    namespace: &str,
) -> String {
    let context_name = current
        .current_context
        .clone()
        .expect("the kubeconfig has a current-context");
    let context = current
        .contexts
        .iter()
        .find(|named| named.name == context_name)
        .and_then(|named| named.context.clone())
        .unwrap_or_else(|| panic!("the kubeconfig has no context {context_name}"));
    // `read` and `read_from` made a certificate-authority file path absolute, so it still works
    // from another directory.
    let cluster = current
        .clusters
        .iter()
        .find(|named| named.name == context.cluster)
        .and_then(|named| named.cluster.clone())
        .unwrap_or_else(|| panic!("the kubeconfig has no cluster {}", context.cluster));
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator",
                      "context": {"cluster": "e2e", "user": "operator", "namespace": namespace}}],
        "current-context": "operator",
    });
    // JSON is YAML.
    serde_json::to_string_pretty(&config).unwrap()
}

/// Waits until the ServiceAccount may list BundleCopies in `namespace` and, with `lease`, read
/// that Lease there (RBAC reaches the authorizer within moments), so that the operator's start-up
/// checks do not race it: a refusal then stops the operator.
async fn wait_until_allowed(
    kubeconfig: &Path,
    namespace: &str,
    service_account: &str,
    lease: Option<&str>,
) {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await
            .expect("the ServiceAccount kubeconfig loads");
    let client = Client::try_from(config).expect("a client for the ServiceAccount kubeconfig");
    let bundle_copies: Api<BundleCopy> = Api::namespaced(client.clone(), namespace);
    let leases: Api<Lease> = Api::namespaced(client, namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut refused = bundle_copies
            .list(&ListParams::default().limit(1))
            .await
            .err()
            .map(|error| format!("list BundleCopies: {error}"));
        if refused.is_none()
            && let Some(lease) = lease
        {
            // Absent is fine (the operator creates it); only a refusal is not.
            refused = leases
                .get_opt(lease)
                .await
                .err()
                .map(|error| format!("get Lease {lease}: {error}"));
        }
        let Some(refused) = refused else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "ServiceAccount {service_account} still may not {refused} in {namespace} 30 s after the \
             chart's RBAC was applied"
        );
        eprintln!("ServiceAccount {service_account} may not {refused} yet");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes the cluster-scoped objects of a release (its namespaced ones go with the namespace).
async fn delete_cluster_rbac(client: &Client, release: &str) {
    let selector = format!("app.kubernetes.io/instance={release}");
    let params = ListParams::default().labels(&selector);
    let deleted = [
        Api::<ClusterRoleBinding>::all(client.clone())
            .delete_collection(&DeleteParams::default(), &params)
            .await
            .map(|_| ()),
        Api::<ClusterRole>::all(client.clone())
            .delete_collection(&DeleteParams::default(), &params)
            .await
            .map(|_| ()),
    ];
    for result in deleted {
        if let Err(error) = result {
            eprintln!("could not delete the cluster RBAC of release {release}: {error}");
        }
    }
}

/// The Events about BundleCopy `name`, once every reason in `reasons` is among them (up to 30 s).
async fn wait_for_event_reasons(events: &Api<Event>, name: &str, reasons: &[&str]) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found: Vec<Event> = events
            .list(&ListParams::default())
            .await
            .expect("list Events")
            .items
            .into_iter()
            .filter(|event| {
                event.regarding.as_ref().is_some_and(|regarding| {
                    regarding.kind.as_deref() == Some("BundleCopy")
                        && regarding.name.as_deref() == Some(name)
                })
            })
            .collect();
        if reasons
            .iter()
            .all(|reason| found.iter().any(|e| e.reason.as_deref() == Some(*reason)))
        {
            return found;
        }
        let seen: Vec<(Option<String>, Option<String>)> = found
            .iter()
            .map(|e| (e.reason.clone(), e.reporting_instance.clone()))
            .collect();
        assert!(
            Instant::now() < deadline,
            "Events about {name} lack one of {reasons:?} after 30 s; (reason, reportingInstance): {seen:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until the status of BundleCopy `name` satisfies `accept`.
async fn wait_for_status(
    api: &Api<BundleCopy>,
    name: &str,
    what: &str,
    timeout: Duration,
    accept: impl Fn(&BundleCopyStatus) -> bool,
) -> BundleCopy {
    let deadline = Instant::now() + timeout;
    loop {
        let object = api.get_opt(name).await.expect("get the BundleCopy");
        if let Some(object) = &object
            && object.status.as_ref().is_some_and(&accept)
        {
            return object.clone();
        }
        assert!(
            Instant::now() < deadline,
            "BundleCopy {name} did not reach {what} within {timeout:?}; status: {:?}",
            object.and_then(|o| o.status)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn ready_reason(status: &BundleCopyStatus) -> Option<(&str, &str)> {
    status
        .condition("Ready")
        .map(|ready| (ready.status.as_str(), ready.reason.as_str()))
}

async fn lease_holder(client: &Client, namespace: &str, name: &str) -> (Option<String>, i32) {
    let lease = Api::<Lease>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("get Lease {namespace}/{name}: {e}"));
    let spec = lease.spec.unwrap_or_default();
    (
        spec.holder_identity,
        spec.lease_transitions.unwrap_or_default(),
    )
}

/// Polls until `process` answers `path` with `wanted` (code, body).
async fn wait_for_answer(
    process: &mut ControllerProcess,
    path: &str,
    wanted: (u16, &str),
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        process.assert_running(&format!("waiting for {path} to answer {wanted:?}"));
        let (code, body) = process.get(path).await;
        if (code, body.trim_end()) == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} answered {code} {body:?}, not {wanted:?}, within {timeout:?}:\n{}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// After a cluster test, whatever happened: stops the operators, deletes the namespace and the
/// cluster-scoped RBAC of `releases`, then re-raises a failure after printing the operators' logs.
async fn clean_up(
    client: &Client,
    namespace: &str,
    processes: &mut [ControllerProcess],
    releases: &[&str],
    outcome: std::thread::Result<()>,
) {
    for process in processes.iter_mut() {
        process.stop().await;
    }
    if let Err(error) = Api::<Namespace>::all(client.clone())
        .delete(namespace, &DeleteParams::background())
        .await
    {
        eprintln!("could not delete namespace {namespace}: {error}");
    }
    for release in releases {
        delete_cluster_rbac(client, release).await;
    }
    if let Err(panic) = outcome {
        for process in processes.iter() {
            eprintln!(
                "log of {} (last lines):\n{}",
                process.log.display(),
                process.log_tail()
            );
        }
        std::panic::resume_unwind(panic);
    }
}

/// The tests that need a real cluster (KUBECONFIG). nextest's `ci` profile leaves this module out,
/// so that without a cluster they are reported as skipped, not passed (.config/nextest.toml).
mod cluster {
    #[tokio::test]
    async fn e2e_examples_on_a_real_cluster() {
        super::examples::e2e_examples_on_a_real_cluster().await;
    }

    #[tokio::test]
    async fn e2e_api_server_enforces_the_crd_rules() {
        super::examples::e2e_api_server_enforces_the_crd_rules().await;
    }

    #[tokio::test]
    async fn e2e_chart_rbac_is_enough_on_a_real_cluster() {
        super::rbac::e2e_chart_rbac_is_enough_on_a_real_cluster().await;
    }

    #[tokio::test]
    async fn e2e_leader_election_hands_over_on_a_real_cluster() {
        super::leader::e2e_leader_election_hands_over_on_a_real_cluster().await;
    }

    #[tokio::test]
    async fn e2e_leader_frozen_with_sigstop_is_replaced_and_writes_nothing_once_resumed() {
        super::leader::e2e_leader_frozen_with_sigstop_is_replaced_and_writes_nothing_once_resumed()
            .await;
    }

    #[tokio::test]
    async fn e2e_mirror_on_a_real_cluster() {
        super::examples::e2e_mirror_on_a_real_cluster().await;
    }

    #[tokio::test]
    async fn e2e_signed_bundle_on_a_real_cluster() {
        super::leader::e2e_signed_bundle_on_a_real_cluster().await;
    }
}
