//! The examples of `examples/`, the BundleMirror and the CRD's rules on a real cluster, and the
//! checks of the example files that need no cluster.

use super::*;

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

/// A cluster test: run by `e2e::cluster::e2e_examples_on_a_real_cluster` when KUBECONFIG is set.
pub(super) async fn e2e_examples_on_a_real_cluster() {
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

    let namespace = crd_and_fresh_namespace(&client).await;
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

/// `examples/mirror/hello-releases.yaml` on a real cluster: a mirror of three releases and a
/// release candidate becomes Ready with one owned BundleCopy per selected release (the release
/// candidate excluded), each copied; deleting the mirror garbage-collects its children (owner
/// references) and leaves the destination registry as it was.
/// A cluster test: run by `e2e::cluster::e2e_mirror_on_a_real_cluster` when KUBECONFIG is set.
pub(super) async fn e2e_mirror_on_a_real_cluster() {
    let Some((_one_at_a_time, client)) = cluster().await else {
        return;
    };
    let registry = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_hello(&registry, "0.1.0").await;
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
    let namespace = crd_and_fresh_namespace(&client).await;
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
pub(super) async fn e2e_api_server_enforces_the_crd_rules() {
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
