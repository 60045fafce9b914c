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
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::Value;

use bundlecopy::api::{BundleCopy, BundleCopySpec};
use bundlecopy::controller::reconcile::validate;

use crate::support::process::spawn_tied_to_test_process;
use crate::support::registry::{TEST_PASSWORD, TEST_USERNAME, free_port};
use crate::support::{
    BundleSpec, PushedBundle, RegistryKind, TestRegistry, assert_bundle_copied, push_bundle,
};

const FIELD_MANAGER: &str = "bundlecopy-e2e";
const CRD_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crds/bundlecopies.bundlecopy.dev.yaml"
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
    use kube::CustomResourceExt;
    let text = std::fs::read_to_string(CRD_FILE).unwrap();
    let committed: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
    assert_eq!(committed, BundleCopy::crd());
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

/// `bundlecopy controller`, run out of cluster; stopped with SIGTERM (killed on drop).
struct ControllerProcess {
    child: Option<Child>,
    log: PathBuf,
    metrics_addr: String,
}

impl ControllerProcess {
    fn start(namespace: &str, log_dir: &Path) -> ControllerProcess {
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let log = log_dir.join("controller.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_bundlecopy"));
        command
            .args([
                "controller",
                "--namespace",
                namespace,
                "--metrics-addr",
                &metrics_addr,
            ])
            .args([
                "--log-level",
                "info,bundlecopy=debug",
                "--max-concurrent-copies",
                "2",
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        let child = spawn_tied_to_test_process(command).expect("start bundlecopy controller");
        ControllerProcess {
            child: Some(child),
            log,
            metrics_addr,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    /// Waits for `/readyz`; fails early if the process exits.
    async fn wait_ready(&mut self) {
        let url = format!("http://{}/readyz", self.metrics_addr);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "bundlecopy controller exited ({status}) before it was ready:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(response) = reqwest::get(&url).await
                && response.status().is_success()
            {
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

    /// SIGTERM, then up to 20 s for a graceful exit; returns whether it exited successfully.
    async fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn e2e_examples_on_a_real_cluster() {
    if std::env::var_os("KUBECONFIG").is_none() {
        println!(
            "skipped: KUBECONFIG is not set — point it at a disposable test cluster to run the e2e \
             suite (it installs the BundleCopy CRD and creates and deletes a namespace); see docs/operator.md"
        );
        return;
    }
    bundlecopy::install_crypto_provider();
    let client = Client::try_default()
        .await
        .expect("a client for the cluster in KUBECONFIG");

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

    // Clean up whatever happened: the controller first (it would react to the deletion), then
    // the namespace with everything in it. The CRD stays: other resources may use it.
    let graceful = match controller.as_mut() {
        Some(controller) => controller.stop().await,
        None => false,
    };
    if let Err(error) = Api::<Namespace>::all(client.clone())
        .delete(&namespace, &DeleteParams::background())
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
            other => panic!("examples hold only Secrets and BundleCopies, not {other:?}"),
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

async fn apply_crd(client: &Client) {
    let text = std::fs::read_to_string(CRD_FILE).expect("read the committed CRD");
    let crd: CustomResourceDefinition =
        serde_yaml::from_str(&text).expect("the committed CRD parses");
    let name = crd.name_any();
    assert_eq!(name, "bundlecopies.bundlecopy.dev");
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
            bundlecopy::controller::secrets::registry_credentials(&as_secret(push), "test")
                .unwrap();
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
        let pem =
            bundlecopy::controller::secrets::ca_certificates(&as_secret(ca), "ca.crt", "test")
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
