//! The chart's RBAC on a real cluster: the operator runs as the chart's ServiceAccount with only
//! the chart's roles; and the checks of those objects that need no cluster.

use super::*;

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
pub(super) async fn e2e_chart_rbac_is_enough_on_a_real_cluster() {
    let Some((_one_at_a_time, client)) = cluster().await else {
        return;
    };
    let registry = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_hello(&registry, "v1").await;
    let namespace = crd_and_fresh_namespace(&client).await;
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
