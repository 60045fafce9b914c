//! The real-cluster suite. Given `KUBECONFIG` (a test cluster: it installs the CRD and creates
//! and deletes a namespace), it starts loopback registries, pushes a bundle, runs
//! `bundlecopy controller` out of cluster against them, applies every file of `examples/` (hosts
//! substituted, Secrets filled in) and waits for Ready as `kubectl wait --for=condition=Ready`
//! does. Without `KUBECONFIG` it says why it skips and passes.
//! `KUBECONFIG=~/.kube/config cargo test --test integration e2e -- --nocapture`

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

/// One example: its file, the BundleCopy it creates and where the copy must land.
struct ExpectedCopy {
    file: &'static str,
    name: &'static str,
    /// Index into `Registries::all()`.
    registry: usize,
    repo: &'static str,
    tag: &'static str,
}

const EXAMPLES: [ExpectedCopy; 4] = [
    ExpectedCopy {
        file: "plain-http.yaml",
        name: "hello-plain-http",
        registry: 0,
        repo: "mirror/hello",
        tag: "v1",
    },
    ExpectedCopy {
        file: "insecure-tls.yaml",
        name: "hello-insecure-tls",
        registry: 1,
        repo: "insecure/hello",
        tag: "v1",
    },
    ExpectedCopy {
        file: "ca-secret.yaml",
        name: "hello-ca-secret",
        registry: 1,
        repo: "verified/hello",
        tag: "v1",
    },
    ExpectedCopy {
        file: "authenticated.yaml",
        name: "hello-authenticated",
        registry: 2,
        repo: "team/hello",
        tag: "v1",
    },
];

/// The examples parse, name what the e2e suite expects, and pass the controller's validation.
/// Runs without a cluster.
#[test]
fn e2e_examples_are_valid_resources() {
    let mut files: Vec<String> = std::fs::read_dir(EXAMPLES_DIR)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut expected: Vec<&str> = EXAMPLES.iter().map(|e| e.file).collect();
    expected.sort();
    assert_eq!(
        files, expected,
        "every example is exercised by the e2e suite"
    );
    for example in &EXAMPLES {
        let documents = example_documents(example.file, &PLACEHOLDERS.map(String::from), "ignored");
        let copies: Vec<&Value> = documents
            .iter()
            .filter(|d| d["kind"] == "BundleCopy")
            .collect();
        assert_eq!(copies.len(), 1, "{}", example.file);
        let copy: BundleCopy = serde_json::from_value(copies[0].clone())
            .unwrap_or_else(|e| panic!("{}: {e}", example.file));
        assert_eq!(copy.name_any(), example.name);
        validate(&copy.spec).unwrap_or_else(|e| panic!("{}: {e}", example.file));
        for secret in documents.iter().filter(|d| d["kind"] == "Secret") {
            let secret: Secret = serde_json::from_value(secret.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", example.file));
            assert!(
                secret.string_data.is_some(),
                "{}: Secrets use stringData",
                example.file
            );
        }
        for name in copy_secret_names(&copy.spec) {
            assert!(
                documents
                    .iter()
                    .any(|d| d["kind"] == "Secret" && d["metadata"]["name"] == name),
                "{}: the Secret {name} is in the same file",
                example.file
            );
        }
    }
}

/// What the suite applies as the CRD parses into the CRD the code generates.
#[test]
fn e2e_committed_crd_is_the_generated_one() {
    let text = std::fs::read_to_string(CRD_FILE).unwrap();
    let committed: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
    assert_eq!(committed, bundlecopy::operator::crd::crd());
}

fn copy_secret_names(spec: &BundleCopySpec) -> Vec<String> {
    [&spec.source, &spec.destination]
        .iter()
        .flat_map(|endpoint| {
            endpoint
                .credentials
                .iter()
                .map(|c| c.name.clone())
                .chain(endpoint.ca_secret_ref.iter().map(|r| r.name.clone()))
        })
        .collect()
}

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

struct Registries {
    plain: TestRegistry,
    tls: TestRegistry,
    auth: TestRegistry,
}

impl Registries {
    fn all(&self) -> [&TestRegistry; 3] {
        [&self.plain, &self.tls, &self.auth]
    }
    fn hosts(&self) -> [String; 3] {
        self.all().map(TestRegistry::host)
    }
}

/// Fills the example Secrets with what the test registries need.
fn fill_secret(document: &mut Value, registries: &Registries, password: Option<&str>) {
    if document["kind"] != "Secret" {
        return;
    }
    let string_data = &mut document["stringData"];
    if string_data.get("ca.crt").is_some() {
        let pem = registries.tls.ca_pem().expect("the TLS registry has a CA");
        string_data["ca.crt"] = Value::String(pem.to_string());
    }
    if document["type"] == "kubernetes.io/dockerconfigjson" {
        let mut config = registries.auth.docker_config_json();
        if let Some(password) = password {
            config = config.replace(&base64_auth(TEST_PASSWORD), &base64_auth(password));
            assert!(!config.contains(&base64_auth(TEST_PASSWORD)));
        }
        document["stringData"][".dockerconfigjson"] = Value::String(config);
    }
}

fn base64_auth(password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{TEST_USERNAME}:{password}"))
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

/// A cluster test: run by `e2e::cluster::e2e_examples_on_a_real_cluster` when KUBECONFIG is set.
async fn e2e_examples_on_a_real_cluster() {
    let Some((_one_at_a_time, client)) = cluster().await else {
        return;
    };

    let (plain, tls, auth) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Tls),
        TestRegistry::start(RegistryKind::TlsBasicAuth)
    );
    let registries = Registries { plain, tls, auth };
    let pushed = push_bundle(
        &registries.plain,
        SOURCE_REPO,
        "v1",
        &BundleSpec::new("hello", "0.1.0"),
    )
    .await;

    apply_crd(&client).await;
    let namespace = unique_namespace();
    create_namespace(&client, &namespace).await;
    let log_dir = tempfile::tempdir().unwrap();
    let mut controller: Option<ControllerProcess> = None;

    let outcome = AssertUnwindSafe(async {
        let started = controller.insert(ControllerProcess::start(&namespace, log_dir.path()));
        started.wait_ready().await;
        run_examples(&client, &namespace, &registries, &pushed, started).await;
    })
    .catch_unwind()
    .await;

    finish_with_one_controller(&client, &namespace, controller, outcome).await;
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

/// `examples/mirror/hello-releases.yaml` on a real cluster: a mirror of three releases and a
/// release candidate becomes Ready with one owned BundleCopy per selected release (the release
/// candidate excluded), each copied; deleting the mirror garbage-collects its children (owner
/// references) and leaves the destination registry as it was.
/// A cluster test: run by `e2e::cluster::e2e_mirror_on_a_real_cluster` when KUBECONFIG is set.
async fn e2e_mirror_on_a_real_cluster() {
    let Some((_one_at_a_time, client)) = cluster().await else {
        return;
    };
    let registry = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_bundle(
        &registry,
        SOURCE_REPO,
        "0.1.0",
        &BundleSpec::new("hello", "0.1.0"),
    )
    .await;
    let source = registry.client();
    for tag in ["0.2.0", "0.3.0-rc.1", "1.0.0"] {
        source
            .put_manifest(
                SOURCE_REPO,
                tag,
                &pushed.index_bytes,
                &pushed.index_media_type,
            )
            .await;
    }
    apply_crd(&client).await;
    let namespace = unique_namespace();
    create_namespace(&client, &namespace).await;
    let dir = tempfile::tempdir().unwrap();
    let mut processes = vec![ControllerProcess::start(&namespace, dir.path())];
    let hosts = [registry.host(), registry.host(), registry.host()];

    let outcome = AssertUnwindSafe(async {
        processes[0].wait_ready().await;
        let documents = example_documents("mirror/hello-releases.yaml", &hosts, &namespace);
        apply_all(&client, &namespace, &documents).await;
        let mirrors: Api<BundleMirror> = Api::namespaced(client.clone(), &namespace);
        let copies: Api<BundleCopy> = Api::namespaced(client.clone(), &namespace);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mirror = loop {
            let mirror = mirrors.get("hello-releases").await.expect("get the mirror");
            let ready = mirror
                .status
                .as_ref()
                .and_then(|s| s.condition("Ready"))
                .is_some_and(|c| c.status == "True");
            if ready {
                break mirror;
            }
            assert!(
                Instant::now() < deadline,
                "the mirror was not Ready within {READY_TIMEOUT:?}: {:?}",
                mirror.status
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let status = mirror.status.unwrap_or_default();
        let mut tags: Vec<&str> = status.tags.iter().map(|t| t.tag.as_str()).collect();
        tags.sort_unstable();
        assert_eq!(tags, ["0.1.0", "0.2.0"], "{status:?}");
        assert_eq!((status.selected, status.ready, status.failed), (2, 2, 0));
        let children = copies
            .list(&ListParams::default().labels("bundlecopy.dev/mirror=hello-releases"))
            .await
            .expect("list the children")
            .items;
        assert_eq!(children.len(), 2);
        for child in &children {
            assert_eq!(
                child.owner_references()[0].uid,
                mirror.metadata.uid.clone().unwrap_or_default()
            );
        }
        let destination = registry.client();
        for tag in ["0.1.0", "0.2.0"] {
            assert!(
                destination
                    .head_manifest("mirrored/hello", tag)
                    .await
                    .is_some(),
                "mirrored/hello:{tag}"
            );
        }

        // Deleting the mirror deletes its children (garbage collection), not the copies.
        mirrors
            .delete("hello-releases", &DeleteParams::foreground())
            .await
            .expect("delete the mirror");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = copies
                .list(&ListParams::default().labels("bundlecopy.dev/mirror=hello-releases"))
                .await
                .expect("list the children")
                .items
                .len();
            if left == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{left} children left 120 s after the mirror was deleted"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        for tag in ["0.1.0", "0.2.0"] {
            assert!(
                destination
                    .head_manifest("mirrored/hello", tag)
                    .await
                    .is_some(),
                "mirrored/hello:{tag} is still at the destination"
            );
        }
    })
    .catch_unwind()
    .await;

    clean_up(&client, &namespace, &mut processes, &[], outcome).await;
}

/// The API server enforces the CRD's CEL rules as the CEL interpreter in `crd_rules` evaluates
/// them: each case of its table is sent as a server-side dry-run create (nothing is stored).
/// A cluster test: run by `e2e::cluster::e2e_api_server_enforces_the_crd_rules` when KUBECONFIG is set.
async fn e2e_api_server_enforces_the_crd_rules() {
    let Some((_one_at_a_time, client)) = cluster().await else {
        return;
    };
    apply_crd(&client).await;
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::erase::<BundleCopy>(&()),
    );
    let dry_run = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.to_string()),
    };
    let mut wrong = Vec::new();
    for (index, case) in crate::crd_rules::rule_cases().into_iter().enumerate() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopy",
            "metadata": {"name": format!("e2e-rule-{index}"), "namespace": "default"},
            "spec": case.spec,
        }))
        .unwrap();
        match (api.create(&dry_run, &object).await, case.admitted) {
            (Ok(_), true) => {}
            (Ok(_), false) => wrong.push(format!("{}: admitted, expected a refusal", case.what)),
            (Err(kube::Error::Api(status)), false) => {
                let names_field = status.message.contains(&format!("{}:", case.field));
                let has_message = case
                    .message
                    .is_none_or(|message| status.message.contains(message));
                if status.code != 422 || !names_field || !has_message {
                    wrong.push(format!(
                        "{}: refused with {} {:?}, expected 422 naming {} with {:?}",
                        case.what, status.code, status.message, case.field, case.message
                    ));
                }
            }
            (Err(error), _) => wrong.push(format!("{}: {error}", case.what)),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

async fn run_examples(
    client: &Client,
    namespace: &str,
    registries: &Registries,
    pushed: &PushedBundle,
    controller: &ControllerProcess,
) {
    let hosts = registries.hosts();
    for example in &EXAMPLES {
        let mut documents = example_documents(example.file, &hosts, namespace);
        for document in &mut documents {
            fill_secret(document, registries, None);
        }
        apply_all(client, namespace, &documents).await;
    }

    // A copy of the authenticated example with a wrong password must fail, and say why.
    let mut wrong = example_documents("authenticated.yaml", &hosts, namespace);
    for document in &mut wrong {
        fill_secret(document, registries, Some("not-the-password"));
        match document["metadata"]["name"].as_str() {
            Some("registry-push") => document["metadata"]["name"] = "registry-push-wrong".into(),
            Some("hello-authenticated") => {
                document["metadata"]["name"] = "hello-wrong-password".into();
                document["spec"]["destination"]["credentials"][0]["name"] =
                    "registry-push-wrong".into();
                document["spec"]["destination"]["reference"] =
                    format!("{}/team/wrong:v1", registries.auth.host()).into();
            }
            _ => {}
        }
    }
    apply_all(client, namespace, &wrong).await;

    let bundle_copies: Api<BundleCopy> = Api::namespaced(client.clone(), namespace);
    let all = registries.all();
    for example in &EXAMPLES {
        let ready = wait_for_ready(&bundle_copies, example.name, |status| status == "True").await;
        let status = ready.status.clone().unwrap_or_default();
        let destination = all[example.registry];
        let expected_destination =
            format!("{}/{}:{}", destination.host(), example.repo, example.tag);
        assert_eq!(
            status.destination.as_deref(),
            Some(expected_destination.as_str()),
            "{}",
            example.name
        );
        assert_eq!(
            status.source_digest.as_deref(),
            Some(pushed.index_digest.as_str()),
            "{}",
            example.name
        );
        assert_eq!(
            status.destination_digest.as_deref(),
            Some(pushed.index_digest.as_str()),
            "{}",
            example.name
        );
        let bundle = status.bundle.clone().expect("status.bundle");
        assert_eq!(
            (bundle.name.as_str(), bundle.version.as_str()),
            ("hello", "0.1.0")
        );
        assert!(
            !status.images.is_empty(),
            "{}: the relocation map is empty",
            example.name
        );
        for image in &status.images {
            assert!(
                image.relocated.starts_with(&format!(
                    "{}/{}@sha256:",
                    destination.host(),
                    example.repo
                )),
                "{}: {} relocated to {}",
                example.name,
                image.name,
                image.relocated
            );
        }
        assert!(status.last_copy_time.is_some());
        assert_eq!(status.observed_generation, ready.metadata.generation);
        assert_bundle_copied(
            &registries.plain,
            SOURCE_REPO,
            destination,
            example.repo,
            example.tag,
            &pushed.index_digest,
        )
        .await;
    }

    let failed = wait_for_ready(&bundle_copies, "hello-wrong-password", |status| {
        status == "False"
    })
    .await;
    let status = failed.status.clone().unwrap_or_default();
    let ready = status.condition("Ready").unwrap();
    assert_eq!(ready.reason, "AuthenticationFailed", "{}", ready.message);
    assert!(
        !ready.message.contains("not-the-password"),
        "{}",
        ready.message
    );
    let stalled = status.condition("Stalled").expect("a Stalled condition");
    assert_eq!(stalled.status, "True");
    assert!(
        registries
            .auth
            .client()
            .head_manifest("team/wrong", "v1")
            .await
            .is_none(),
        "nothing was written with the wrong password"
    );

    // Events, as `kubectl describe` shows them.
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let reasons_by_object =
        wait_for_events(&events, &["hello-plain-http", "hello-wrong-password"]).await;
    for reason in ["CopyStarted", "Copied"] {
        assert!(
            reasons_by_object
                .get("hello-plain-http")
                .is_some_and(|r| r.iter().any(|x| x == reason)),
            "no {reason} Event for hello-plain-http: {reasons_by_object:?}"
        );
    }
    assert!(
        reasons_by_object
            .get("hello-wrong-password")
            .is_some_and(|r| r.iter().any(|x| x == "CopyFailed")),
        "no CopyFailed Event: {reasons_by_object:?}"
    );

    let metrics = controller.metrics().await;
    let copies = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("bundlecopy_copy_duration_seconds_count ")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    assert!(copies >= 5, "at least the five copies ran:\n{metrics}");
    assert!(
        metrics.contains("bundlecopy_reconcile_failures_total{reason=\"AuthenticationFailed\"}"),
        "{metrics}"
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

/// The Secrets the e2e suite fills in are what the controller accepts, and the wrong-password
/// variant really carries another password. Runs without a cluster.
#[tokio::test]
async fn e2e_filled_secrets_are_usable() {
    let (plain, tls, auth) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Tls),
        TestRegistry::start(RegistryKind::TlsBasicAuth)
    );
    let registries = Registries { plain, tls, auth };
    let as_secret = |document: &Value| -> Secret {
        // The API server turns stringData into data; do the same.
        let mut secret: Secret = serde_json::from_value(document.clone()).unwrap();
        let string_data = secret.string_data.take().unwrap_or_default();
        secret.data = Some(
            string_data
                .into_iter()
                .map(|(key, value)| (key, k8s_openapi::ByteString(value.into_bytes())))
                .collect(),
        );
        secret
    };
    for password in [None, Some("not-the-password")] {
        let mut documents = example_documents("authenticated.yaml", &registries.hosts(), "ns");
        for document in &mut documents {
            fill_secret(document, &registries, password);
        }
        let push = documents
            .iter()
            .find(|d| d["metadata"]["name"] == "registry-push")
            .unwrap();
        let config =
            bundlecopy::operator::secrets::registry_credentials(&as_secret(push), "test").unwrap();
        let found = config.lookup(&registries.auth.host(), "team/hello");
        assert_eq!(found.len(), 1, "{password:?}");
        let shown = format!("{:?}", push["stringData"][".dockerconfigjson"]);
        assert_eq!(
            shown.contains(&base64_auth(TEST_PASSWORD)),
            password.is_none(),
            "{shown}"
        );
        let ca = documents
            .iter()
            .find(|d| d["metadata"]["name"] == "registry-ca")
            .unwrap();
        let pem = bundlecopy::operator::secrets::ca_certificates(&as_secret(ca), "ca.crt", "test")
            .unwrap();
        assert_eq!(pem, registries.tls.ca_pem().unwrap().as_bytes());
        let copy = documents
            .iter()
            .find(|d| d["kind"] == "BundleCopy")
            .unwrap();
        assert_eq!(
            copy["spec"]["destination"]["reference"],
            format!("{}/team/hello:v1", registries.auth.host())
        );
        assert_eq!(copy["metadata"]["namespace"], "ns");
    }
}

// ---------------------------------------------------------------------------------------------
// The chart's RBAC, and leader election, on a real cluster

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

/// One way to install the chart's RBAC.
struct RbacScenario {
    label: &'static str,
    release: String,
    /// `watchNamespaces` = the test namespace (Roles) or empty (a ClusterRole).
    namespaced: bool,
}

/// The chart's RBAC is all the operator needs: for a namespaced install (`watchNamespaces`) and
/// a cluster-wide one, the rendered ServiceAccount, Roles or ClusterRole and bindings are applied
/// and `bundlecopy controller` runs with a token of that ServiceAccount only — with leader
/// election on, so the Lease rules are exercised too. It must lead, copy a bundle, write its
/// Events and log no refusal; a missing permission fails one of these.
/// A cluster test: run by `e2e::cluster::e2e_chart_rbac_is_enough_on_a_real_cluster` when KUBECONFIG is set.
async fn e2e_chart_rbac_is_enough_on_a_real_cluster() {
    let Some((_one_at_a_time, client)) = cluster().await else {
        return;
    };
    let registry = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_bundle(
        &registry,
        SOURCE_REPO,
        "v1",
        &BundleSpec::new("hello", "0.1.0"),
    )
    .await;
    apply_crd(&client).await;
    let namespace = unique_namespace();
    create_namespace(&client, &namespace).await;
    let dir = tempfile::tempdir().unwrap();
    let scenarios = [
        RbacScenario {
            label: "namespaced",
            release: unique_release("ns"),
            namespaced: true,
        },
        RbacScenario {
            label: "cluster",
            release: unique_release("cl"),
            namespaced: false,
        },
    ];
    let mut processes: Vec<ControllerProcess> = Vec::new();

    let outcome = AssertUnwindSafe(async {
        for scenario in &scenarios {
            run_with_chart_rbac(
                &client,
                &namespace,
                scenario,
                &registry,
                &pushed,
                dir.path(),
                &mut processes,
            )
            .await;
        }
    })
    .catch_unwind()
    .await;

    let releases: Vec<&str> = scenarios.iter().map(|s| s.release.as_str()).collect();
    clean_up(&client, &namespace, &mut processes, &releases, outcome).await;
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

async fn run_with_chart_rbac(
    client: &Client,
    namespace: &str,
    scenario: &RbacScenario,
    registry: &TestRegistry,
    pushed: &PushedBundle,
    dir: &Path,
    processes: &mut Vec<ControllerProcess>,
) {
    let release = scenario.release.as_str();
    let watch_namespaces = format!("watchNamespaces={{{namespace}}}");
    let lease_name = format!("leaderElection.leaseName={release}");
    let mut overrides = vec!["leaderElection.enabled=true", lease_name.as_str()];
    if scenario.namespaced {
        overrides.push(&watch_namespaces);
    }
    let account =
        install_operator_account(client, release, namespace, &overrides, Some(release), dir).await;
    let role_kind = if scenario.namespaced {
        "Role/"
    } else {
        "ClusterRole/"
    };
    assert!(
        account.applied.iter().any(|a| a.starts_with(role_kind)),
        "{}: expected a {role_kind} among {:?}",
        scenario.label,
        account.applied
    );

    let mut args = vec![
        "--leader-election",
        "--leader-election-namespace",
        namespace,
        "--leader-election-lease-name",
        release,
        "--leader-election-identity",
        release,
    ];
    if scenario.namespaced {
        args.extend(["--namespace", namespace]);
    }
    processes.push(ControllerProcess::spawn(
        &args,
        ProcessSettings {
            kubeconfig: Some(&account.kubeconfig),
            pod_name: Some(release),
        },
        dir.join(format!("{release}.log")),
    ));
    let controller = processes.last_mut().expect("just started");
    wait_for_answer(
        controller,
        "/leaderz",
        (200, "leader"),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        lease_holder(client, namespace, release).await.0.as_deref(),
        Some(release),
        "the operator created and holds its Lease"
    );

    // The plain-HTTP example, renamed, into a destination of its own.
    let name = format!("hello-rbac-{}", scenario.label);
    let prefix = format!("rbac-{}", scenario.label);
    let hosts = [registry.host(), registry.host(), registry.host()];
    let mut documents = example_documents("plain-http.yaml", &hosts, namespace);
    for document in &mut documents {
        if document["kind"] == "BundleCopy" {
            document["metadata"]["name"] = name.clone().into();
            document["spec"]["destination"]["reference"] =
                format!("{}/{prefix}", registry.host()).into();
        }
    }
    apply_all(client, namespace, &documents).await;
    let bundle_copies: Api<BundleCopy> = Api::namespaced(client.clone(), namespace);
    let ready = wait_for_ready(&bundle_copies, &name, |status| status == "True").await;
    let status = ready.status.unwrap_or_default();
    assert_eq!(
        status.destination_digest.as_deref(),
        Some(pushed.index_digest.as_str()),
        "{}",
        scenario.label
    );
    assert_bundle_copied(
        registry,
        SOURCE_REPO,
        registry,
        &format!("{prefix}/hello"),
        "v1",
        &pushed.index_digest,
    )
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let written = wait_for_event_reasons(&events, &name, &["CopyStarted", "Copied"]).await;
    assert!(
        written
            .iter()
            .all(|e| e.reporting_instance.as_deref() == Some(release)),
        "{}: Events from another instance",
        scenario.label
    );
    // An RBAC refusal reads `... is forbidden: User "system:serviceaccount:..." cannot VERB ...`.
    // (Other 403s, such as writing into a namespace being deleted by an earlier test, say no
    // `cannot`.)
    let refusals: Vec<String> = controller
        .log_text()
        .lines()
        .filter(|line| line.to_ascii_lowercase().contains("forbidden") && line.contains("cannot "))
        .map(str::to_string)
        .collect();
    assert!(
        refusals.is_empty(),
        "{}: the chart's RBAC lacks a permission the operator used:\n{}",
        scenario.label,
        refusals.join("\n")
    );
    assert!(
        controller.stop().await,
        "{}: the controller did not exit cleanly on SIGTERM:\n{}",
        scenario.label,
        controller.log_tail()
    );
}

/// Two operators with leader election on one Lease, both with the chart's RBAC: one leads, the
/// other is Ready as a standby. A copy is asked for while its source registry is down (so it
/// cannot finish under the first leader); the leader is stopped with SIGTERM, the standby takes
/// the Lease within the lease duration and, once the source is back, finishes the copy: Ready
/// True, the destination holds the digest, and the `Copied` Event comes from the new leader.
/// A cluster test: run by `e2e::cluster::e2e_leader_election_hands_over_on_a_real_cluster` when KUBECONFIG is set.
async fn e2e_leader_election_hands_over_on_a_real_cluster() {
    run_two_operators(LeaderScenario::HandOver).await;
}

/// The two-operator scenarios on a real cluster.
#[derive(Clone, Copy)]
enum LeaderScenario {
    /// `hand_over`: the leader stops with SIGTERM while its source registry is down.
    HandOver,
    /// `freeze_the_leader`: the leader is frozen with SIGSTOP mid-copy.
    Freeze,
}

/// A plain-HTTP source holding the hello bundle at `SOURCE_REPO:v1`, and a plain-HTTP
/// destination.
async fn plain_registries_with_hello() -> (TestRegistry, TestRegistry, PushedBundle) {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    let pushed = push_bundle(
        &source,
        SOURCE_REPO,
        "v1",
        &BundleSpec::new("hello", "0.1.0"),
    )
    .await;
    (source, destination, pushed)
}

/// Pushes a bundle, makes a namespace and runs `scenario` with two operators there, cleaning up
/// (namespace, processes, the release's RBAC) whatever the outcome.
async fn run_two_operators(scenario: LeaderScenario) {
    let Some((_one_at_a_time, client)) = cluster().await else {
        return;
    };
    let (source, destination, pushed) = plain_registries_with_hello().await;
    apply_crd(&client).await;
    let namespace = unique_namespace();
    create_namespace(&client, &namespace).await;
    let dir = tempfile::tempdir().unwrap();
    let mut processes: Vec<ControllerProcess> = Vec::new();
    let registries = (&source, &destination);
    let (release, outcome) = match scenario {
        LeaderScenario::HandOver => {
            source.stop();
            let release = unique_release("le");
            let run = hand_over(
                &client,
                &namespace,
                &release,
                registries,
                &pushed,
                dir.path(),
                &mut processes,
            );
            let outcome = AssertUnwindSafe(run).catch_unwind().await;
            (release, outcome)
        }
        LeaderScenario::Freeze => {
            let release = unique_release("fz");
            let run = freeze_the_leader(
                &client,
                &namespace,
                &release,
                registries,
                &pushed,
                dir.path(),
                &mut processes,
            );
            let outcome = AssertUnwindSafe(run).catch_unwind().await;
            (release, outcome)
        }
    };
    clean_up(&client, &namespace, &mut processes, &[&release], outcome).await;
}

/// How long a Lease holder that stopped renewing keeps it (`LeaseSettings::duration`).
const LEASE_DURATION: Duration = Duration::from_secs(15);

/// A BundleCopy between two plain-HTTP registries.
fn plain_http_copy(namespace: &str, name: &str, source: &str, destination: &str) -> Value {
    serde_json::json!({
        "apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"reference": source, "insecure": true},
            "destination": {"reference": destination, "insecure": true},
        },
    })
}

/// One signed bundle on a real cluster: a Notation-style signature of the bundle index, kept
/// with the referrers tag schema, arrives with the bundle; the BundleCopy's status counts and
/// lists it, Ready says so, and the Copied Event too.
/// A cluster test: run by `e2e::cluster::e2e_signed_bundle_on_a_real_cluster` when KUBECONFIG
/// is set.
async fn e2e_signed_bundle_on_a_real_cluster() {
    use crate::support::referrers::{
        Subject, add_to_tag_index, push_notation_signature, tag_index_digests,
    };
    let Some((_one_at_a_time, client)) = cluster().await else {
        return;
    };
    let (source, destination, pushed) = plain_registries_with_hello().await;
    let index = Subject::new(
        &pushed.index_media_type,
        &pushed.index_digest,
        &pushed.index_bytes,
    );
    let signature = push_notation_signature(&source.client(), SOURCE_REPO, &index, "release").await;
    add_to_tag_index(
        &source.client(),
        SOURCE_REPO,
        &pushed.index_digest,
        &[&signature],
    )
    .await;
    apply_crd(&client).await;
    let namespace = unique_namespace();
    create_namespace(&client, &namespace).await;
    let log_dir = tempfile::tempdir().unwrap();
    let mut controller: Option<ControllerProcess> = None;
    let outcome = AssertUnwindSafe(async {
        let started = controller.insert(ControllerProcess::start(&namespace, log_dir.path()));
        started.wait_ready().await;
        let name = "hello-signed";
        let document = plain_http_copy(
            &namespace,
            name,
            &pushed.reference,
            &format!("{}/signed", destination.host()),
        );
        apply_all(&client, &namespace, &[document]).await;
        let api: Api<BundleCopy> = Api::namespaced(client.clone(), &namespace);
        let copied = wait_for_status(&api, name, "Ready", READY_TIMEOUT, |status| {
            ready_reason(status).is_some_and(|(ready, _)| ready == "True")
        })
        .await;
        let status = copied.status.unwrap();
        let referrers = status.referrers.clone().expect("status.referrers");
        assert_eq!(referrers.count, 1, "{status:?}");
        assert_eq!(referrers.items[0].digest, signature.digest);
        assert_eq!(referrers.items[0].found_by, "TagSchema");
        let ready = status.condition("Ready").unwrap();
        assert!(
            ready.message.ends_with("and 1 signatures/attestations"),
            "{}",
            ready.message
        );
        let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
        let copied_events = wait_for_event_reasons(&events, name, &["Copied"]).await;
        assert!(
            copied_events.iter().any(|event| event
                .note
                .as_deref()
                .is_some_and(|note| note.contains("and 1 signatures/attestations"))),
            "{copied_events:?}"
        );
        assert_bundle_copied(
            &source,
            SOURCE_REPO,
            &destination,
            "signed/hello",
            "v1",
            &pushed.index_digest,
        )
        .await;
        let (bytes, _, _) = destination
            .client()
            .get_manifest("signed/hello", &signature.digest)
            .await
            .expect("the signature is at the destination");
        assert_eq!(bytes, signature.bytes);
        assert_eq!(
            tag_index_digests(&destination.client(), "signed/hello", &pushed.index_digest).await,
            [signature.digest.as_str()]
        );
    })
    .catch_unwind()
    .await;
    finish_with_one_controller(&client, &namespace, controller, outcome).await;
}

/// Two operators started by `elect_one_of_two`: which one leads.
struct Elected {
    identities: [String; 2],
    leader: usize,
    standby: usize,
}

/// Installs the chart's RBAC for two replicas (leader election on, the Lease named `release`),
/// starts two operators with it, and waits until one leads and the other is Ready as a standby,
/// with `/leaderz`, `bundlecopy_leader` and the Lease agreeing.
async fn elect_one_of_two(
    client: &Client,
    namespace: &str,
    release: &str,
    dir: &Path,
    processes: &mut Vec<ControllerProcess>,
) -> Elected {
    // Two replicas: the chart turns leader election on and grants the Lease in the namespace.
    let watch_namespaces = format!("watchNamespaces={{{namespace}}}");
    let lease_name = format!("leaderElection.leaseName={release}");
    let account = install_operator_account(
        client,
        release,
        namespace,
        &["replicaCount=2", &watch_namespaces, &lease_name],
        Some(release),
        dir,
    )
    .await;
    let identities = [format!("{release}-a"), format!("{release}-b")];
    for identity in &identities {
        let args = [
            "--namespace",
            namespace,
            "--leader-election",
            "--leader-election-namespace",
            namespace,
            "--leader-election-lease-name",
            release,
            "--leader-election-identity",
            identity,
        ];
        processes.push(ControllerProcess::spawn(
            &args,
            ProcessSettings {
                kubeconfig: Some(&account.kubeconfig),
                pod_name: Some(identity),
            },
            dir.join(format!("{identity}.log")),
        ));
    }

    // One leads; the other is Ready as a standby, so a rollout would complete.
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        for process in processes.iter_mut() {
            process.assert_running("electing a leader");
        }
        match (processes[0].leads().await, processes[1].leads().await) {
            (true, true) => panic!("both operators claim to lead"),
            (true, false) => break 0,
            (false, true) => break 1,
            (false, false) => {}
        }
        assert!(
            Instant::now() < deadline,
            "no leader within 60 s:\n{}\n---\n{}",
            processes[0].log_tail(),
            processes[1].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let standby = 1 - leader;
    wait_for_answer(
        &mut processes[standby],
        "/readyz",
        (200, "standby"),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(processes[standby].get("/leaderz").await.0, 503);
    assert_eq!(processes[leader].get("/readyz").await.0, 200);
    for (index, gauge) in [
        (leader, "bundlecopy_leader 1"),
        (standby, "bundlecopy_leader 0"),
    ] {
        let metrics = processes[index].metrics().await;
        assert!(metrics.lines().any(|l| l == gauge), "{gauge}:\n{metrics}");
    }
    assert_eq!(
        lease_holder(client, namespace, release).await.0.as_deref(),
        Some(identities[leader].as_str())
    );

    Elected {
        identities,
        leader,
        standby,
    }
}

async fn hand_over(
    client: &Client,
    namespace: &str,
    release: &str,
    (source, destination): (&TestRegistry, &TestRegistry),
    pushed: &PushedBundle,
    dir: &Path,
    processes: &mut Vec<ControllerProcess>,
) {
    let Elected {
        identities,
        leader,
        standby,
    } = elect_one_of_two(client, namespace, release, dir, processes).await;

    // A copy that cannot finish yet: its source registry is down, so the leader fails with
    // Unreachable and retries with backoff.
    let copy = plain_http_copy(
        namespace,
        "hello-handover",
        &format!("{}/{SOURCE_REPO}:v1", source.host()),
        &format!("{}/handover", destination.host()),
    );
    apply_all(client, namespace, &[copy]).await;
    let bundle_copies: Api<BundleCopy> = Api::namespaced(client.clone(), namespace);
    wait_for_status(
        &bundle_copies,
        "hello-handover",
        "Ready False Unreachable",
        Duration::from_secs(120),
        |status| ready_reason(status) == Some(("False", "Unreachable")),
    )
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    for event in wait_for_event_reasons(&events, "hello-handover", &[]).await {
        assert_eq!(
            event.reporting_instance.as_deref(),
            Some(identities[leader].as_str()),
            "only the leader acts before the hand-over: {:?}",
            event.reason
        );
    }

    // The leader stops, as in a rolling update: it hands the Lease back and the standby takes it
    // within the lease duration.
    assert!(
        processes[leader].stop().await,
        "the leader did not exit cleanly on SIGTERM:\n{}",
        processes[leader].log_tail()
    );
    let stopped = Instant::now();
    loop {
        processes[standby].assert_running("taking over");
        if processes[standby].leads().await {
            break;
        }
        assert!(
            stopped.elapsed() < LEASE_DURATION,
            "the standby did not take over within {LEASE_DURATION:?} of the leader stopping:\n{}",
            processes[standby].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        processes[standby].get("/readyz").await,
        (200, "leader\n".to_string())
    );
    let (holder, transitions) = lease_holder(client, namespace, release).await;
    assert_eq!(holder.as_deref(), Some(identities[standby].as_str()));
    assert!(transitions >= 1, "leaseTransitions {transitions}");

    // The source comes back: the new leader finishes the copy.
    source.start_again().await;
    let ready = wait_for_ready(&bundle_copies, "hello-handover", |status| status == "True").await;
    let status = ready.status.unwrap_or_default();
    assert_eq!(
        status.source_digest.as_deref(),
        Some(pushed.index_digest.as_str())
    );
    assert_eq!(
        status.destination_digest.as_deref(),
        Some(pushed.index_digest.as_str())
    );
    assert_bundle_copied(
        source,
        SOURCE_REPO,
        destination,
        "handover/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
    let copied: Vec<Event> = wait_for_event_reasons(&events, "hello-handover", &["Copied"])
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Copied"))
        .collect();
    assert!(
        copied
            .iter()
            .all(|e| e.reporting_instance.as_deref() == Some(identities[standby].as_str())),
        "the copy was finished by the new leader: {:?}",
        copied
            .iter()
            .map(|e| e.reporting_instance.clone())
            .collect::<Vec<_>>()
    );
    assert!(
        processes[standby].stop().await,
        "the new leader did not exit cleanly on SIGTERM:\n{}",
        processes[standby].log_tail()
    );
}

/// A leader frozen with SIGSTOP for 30 s while a copy is in flight under it (its source's blob
/// GETs stalled by a proxy): the standby leads within lease duration + retry period and copies.
/// The frozen one, resumed, already reports standby — its fence closed on the monotonic clock
/// while it was stopped — and writes nothing: no Event, no status, no Lease.
/// A cluster test: run by `e2e::cluster::e2e_leader_frozen_with_sigstop_is_replaced_and_writes_nothing_once_resumed` when KUBECONFIG is set.
async fn e2e_leader_frozen_with_sigstop_is_replaced_and_writes_nothing_once_resumed() {
    run_two_operators(LeaderScenario::Freeze).await;
}

/// The default retry period: a standby looks at the Lease this often.
const RETRY_PERIOD: Duration = Duration::from_secs(2);

async fn freeze_the_leader(
    client: &Client,
    namespace: &str,
    release: &str,
    (source, destination): (&TestRegistry, &TestRegistry),
    pushed: &PushedBundle,
    dir: &Path,
    processes: &mut Vec<ControllerProcess>,
) {
    let source_proxy = FaultProxy::start(source);
    source_proxy.add_rule(
        Rule::new(Fault::Stall {
            duration: Duration::from_secs(20),
        })
        .method(http::Method::GET)
        .kind(PathKind::Blob),
    );
    let Elected {
        identities,
        leader,
        standby,
    } = elect_one_of_two(client, namespace, release, dir, processes).await;
    let copy = plain_http_copy(
        namespace,
        "hello-frozen",
        &format!("{}/{SOURCE_REPO}:v1", source_proxy.host()),
        &format!("{}/frozen", destination.host()),
    );
    apply_all(client, namespace, &[copy]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while source_proxy.count(&http::Method::GET, PathKind::Blob) == 0 {
        processes[leader].assert_running("starting the copy");
        assert!(
            Instant::now() < deadline,
            "the leader did not start copying within 60 s:\n{}",
            processes[leader].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, transitions_before) = lease_holder(client, namespace, release).await;

    // Freeze the leader mid-copy; from now on the source answers at once.
    processes[leader].signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    source_proxy.clear_rules();
    let bound = LEASE_DURATION + RETRY_PERIOD;
    loop {
        processes[standby].assert_running("taking over");
        if processes[standby].leads().await {
            break;
        }
        assert!(
            frozen_at.elapsed() < bound,
            "the standby did not lead within {bound:?} of the leader freezing:\n{}",
            processes[standby].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("the standby led {:?} after SIGSTOP", frozen_at.elapsed());
    let bundle_copies: Api<BundleCopy> = Api::namespaced(client.clone(), namespace);
    let ready = wait_for_ready(&bundle_copies, "hello-frozen", |status| status == "True").await;
    assert_eq!(
        ready
            .status
            .unwrap_or_default()
            .destination_digest
            .as_deref(),
        Some(pushed.index_digest.as_str())
    );
    assert_bundle_copied(
        source,
        SOURCE_REPO,
        destination,
        "frozen/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let event_names =
        |events: &[Event]| -> Vec<String> { events.iter().map(|event| event.name_any()).collect() };
    let before_resume = wait_for_event_reasons(&events, "hello-frozen", &["Copied"]).await;
    let resource_version = bundle_copies
        .get("hello-frozen")
        .await
        .expect("get the BundleCopy")
        .resource_version();

    // Resume after 30 s of freeze: it knows at once that it does not lead.
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(frozen_at.elapsed())).await;
    processes[leader].signal(libc::SIGCONT);
    let answer = processes[leader].get("/leaderz").await;
    assert_eq!(answer.0, 503, "resumed, the old leader says {answer:?}");
    tokio::time::sleep(RETRY_PERIOD * 3).await;
    processes[leader].assert_running("standing by after the freeze");
    assert_eq!(
        processes[leader].get("/readyz").await,
        (200, "standby\n".to_string())
    );
    assert!(
        processes[standby].leads().await,
        "the new leader still leads"
    );
    let (holder, transitions) = lease_holder(client, namespace, release).await;
    assert_eq!(holder.as_deref(), Some(identities[standby].as_str()));
    assert_eq!(transitions, transitions_before + 1, "leaseTransitions");
    // Nothing written since: no new Event from anyone, the object untouched.
    let after = wait_for_event_reasons(&events, "hello-frozen", &["Copied"]).await;
    let new_events: Vec<(Option<String>, Option<String>)> = after
        .iter()
        .filter(|event| !event_names(&before_resume).contains(&event.name_any()))
        .map(|event| (event.reason.clone(), event.reporting_instance.clone()))
        .collect();
    assert!(
        new_events.is_empty(),
        "Events written after the resume: {new_events:?}"
    );
    let now = bundle_copies
        .get("hello-frozen")
        .await
        .expect("get the BundleCopy");
    assert_eq!(
        now.resource_version(),
        resource_version,
        "the BundleCopy was written after the resume: {:?}",
        now.status
    );
}

/// What the RBAC test applies, rendered without a cluster: the namespaced and the cluster-wide
/// forms hold the kinds expected, in the right namespace, with the Lease rule naming the lease,
/// and every cluster-scoped object carries the release label that the cleanup deletes by.
#[test]
fn e2e_chart_rbac_objects_are_what_the_cluster_tests_apply() {
    let release = "bce2e-1-ab-ns";
    let namespace = "bundlecopy-e2e-1-ab";
    let summary = |objects: &[(ApiResource, bool, DynamicObject)]| {
        let mut kinds: Vec<String> = objects
            .iter()
            .map(|(resource, namespaced, object)| {
                format!(
                    "{}{}",
                    resource.kind,
                    if *namespaced {
                        format!(" in {}", object.namespace().unwrap_or_default())
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        kinds.sort();
        kinds
    };
    let watch = format!("watchNamespaces={{{namespace}}}");
    let lease = format!("leaderElection.leaseName={release}");
    let namespaced = chart_rbac_objects(
        release,
        namespace,
        &["leaderElection.enabled=true", &lease, &watch],
    );
    let in_namespace = format!(" in {namespace}");
    assert_eq!(
        summary(&namespaced),
        [
            format!("Role{in_namespace}"),
            format!("Role{in_namespace}"),
            format!("RoleBinding{in_namespace}"),
            format!("RoleBinding{in_namespace}"),
            format!("ServiceAccount{in_namespace}"),
        ]
    );
    let lease_role = namespaced
        .iter()
        .find(|(resource, _, object)| {
            resource.kind == "Role" && object.name_any().ends_with("-leader-election")
        })
        .expect("a Role for the Lease");
    assert!(
        lease_role.2.data["rules"].to_string().contains(release),
        "the Lease rule names the lease: {}",
        lease_role.2.data
    );

    let cluster_release = "bce2e-1-ab-cl";
    let cluster_lease = format!("leaderElection.leaseName={cluster_release}");
    let cluster_wide = chart_rbac_objects(
        cluster_release,
        namespace,
        &["leaderElection.enabled=true", &cluster_lease],
    );
    assert_eq!(
        summary(&cluster_wide),
        [
            "ClusterRole".to_string(),
            "ClusterRoleBinding".to_string(),
            format!("Role{in_namespace}"),
            format!("RoleBinding{in_namespace}"),
            format!("ServiceAccount{in_namespace}"),
        ]
    );
    for (_, namespaced, object) in &cluster_wide {
        if !namespaced {
            assert!(object.name_any().starts_with(cluster_release));
            assert_eq!(
                object
                    .labels()
                    .get("app.kubernetes.io/instance")
                    .map(String::as_str),
                Some(cluster_release),
                "delete_cluster_rbac finds {} by this label",
                object.name_any()
            );
        }
    }
    // The two-replica form the hand-over test uses turns leader election on by itself.
    let two_replicas = chart_rbac_objects(release, namespace, &["replicaCount=2", &lease, &watch]);
    assert_eq!(summary(&two_replicas), summary(&namespaced));
    assert!(
        unique_release("ns").len() <= 53,
        "Helm's limit on release names"
    );
}

/// The kubeconfig written for the ServiceAccount keeps the current context's server and CA file
/// (made absolute), drops the current user, and makes kube send the token: checked against a
/// loopback server that answers the start-up list as an API server would.
#[tokio::test]
async fn e2e_service_account_kubeconfig_authenticates_with_the_token() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    bundlecopy_engine::install_crypto_provider();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let seen = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buffer = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "the client closed before sending a request");
            head.extend_from_slice(&buffer[..read]);
        }
        let body = r#"{"apiVersion":"bundlecopy.dev/v1alpha1","kind":"BundleCopyList","metadata":{"resourceVersion":"1"},"items":[]}"#;
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&head).into_owned()
    });

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ca.pem"),
        &crate::support::registry::test_ca().ca_pem,
    )
    .unwrap();
    let admin = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n\
         - name: other\n  cluster:\n    server: https://127.0.0.1:1\n\
         - name: test\n  cluster:\n    server: {server}\n    certificate-authority: ca.pem\n\
         users:\n- name: admin\n  user:\n    token: admin-token\n\
         contexts:\n\
         - name: elsewhere\n  context:\n    cluster: other\n    user: admin\n\
         - name: here\n  context:\n    cluster: test\n    user: admin\n\
         current-context: here\n"
    );
    let admin_path = dir.path().join("admin-config");
    std::fs::write(&admin_path, admin).unwrap();
    let current = kube::config::Kubeconfig::read_from(&admin_path).unwrap();
    let written = service_account_kubeconfig(&current, "sa-token", "team-a");
    assert!(!written.contains("admin-token"), "{written}");
    let ca_path = dir.path().join("ca.pem");
    let parsed: Value = serde_json::from_str(&written).unwrap();
    assert_eq!(
        parsed["clusters"][0]["cluster"]["certificate-authority"],
        ca_path.to_string_lossy().as_ref(),
        "the CA file is named by its absolute path: {written}"
    );

    let other_dir = tempfile::tempdir().unwrap();
    let kubeconfig = other_dir.path().join("sa.kubeconfig");
    std::fs::write(&kubeconfig, written).unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        wait_until_allowed(&kubeconfig, "team-a", "test-sa", None),
    )
    .await
    .expect("the list answers at once");
    let head = seen.await.unwrap();
    let request_line = head.lines().next().unwrap_or_default();
    assert!(
        request_line
            .starts_with("GET /apis/bundlecopy.dev/v1alpha1/namespaces/team-a/bundlecopies?"),
        "{head}"
    );
    assert!(
        head.lines()
            .any(|line| line.eq_ignore_ascii_case("authorization: Bearer sa-token")),
        "{head}"
    );
}

/// The tests that need a real cluster (KUBECONFIG). nextest's `ci` profile leaves this module out,
/// so that without a cluster they are reported as skipped, not passed (.config/nextest.toml).
mod cluster {
    #[tokio::test]
    async fn e2e_examples_on_a_real_cluster() {
        super::e2e_examples_on_a_real_cluster().await;
    }

    #[tokio::test]
    async fn e2e_api_server_enforces_the_crd_rules() {
        super::e2e_api_server_enforces_the_crd_rules().await;
    }

    #[tokio::test]
    async fn e2e_chart_rbac_is_enough_on_a_real_cluster() {
        super::e2e_chart_rbac_is_enough_on_a_real_cluster().await;
    }

    #[tokio::test]
    async fn e2e_leader_election_hands_over_on_a_real_cluster() {
        super::e2e_leader_election_hands_over_on_a_real_cluster().await;
    }

    #[tokio::test]
    async fn e2e_leader_frozen_with_sigstop_is_replaced_and_writes_nothing_once_resumed() {
        super::e2e_leader_frozen_with_sigstop_is_replaced_and_writes_nothing_once_resumed().await;
    }

    #[tokio::test]
    async fn e2e_mirror_on_a_real_cluster() {
        super::e2e_mirror_on_a_real_cluster().await;
    }

    #[tokio::test]
    async fn e2e_signed_bundle_on_a_real_cluster() {
        super::e2e_signed_bundle_on_a_real_cluster().await;
    }
}
