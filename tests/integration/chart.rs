//! The Helm chart in charts/bundlecopy-operator: lint, render, validate the rendered objects against the
//! Kubernetes 1.33 schemas, and check RBAC and pod security by reading what Helm renders.
//!
//! Needs helm 3 and kubernetes-validate: `scripts/install-test-tools.sh` puts them in `.tools/bin`; the
//! `HELM` and `KUBERNETES_VALIDATE` environment variables override those paths. A missing tool fails the
//! test: a green run must never hide an uninstalled tool.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_yaml::Value;

pub(crate) const CHART_DIR: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/charts/bundlecopy-operator");
const RELEASE_NAME: &str = "rel";
pub(crate) const RELEASE_NAMESPACE: &str = "bundlecopy-system";
const SERVICE_ACCOUNT: &str = "rel-bundlecopy-operator";
const KUBERNETES_VERSION: &str = "1.33.0";
/// Kinds that kubernetes-validate has no schema for (they come from other operators' CRDs).
const KINDS_WITHOUT_SCHEMA: &[&str] = &["ServiceMonitor"];

/// Every toggle on at once: leader election through two replicas, namespace scoping, ServiceMonitor,
/// and an extra CA from a ConfigMap.
pub(crate) const ALL_TOGGLES: &[&str] = &[
    "replicaCount=2",
    "watchNamespaces={team-a,team-b}",
    "metrics.serviceMonitor.enabled=true",
    "extraCA.configMap.name=corporate-ca",
    "extraCA.configMap.key=bundle.pem",
    "proxy.httpsProxy=http://proxy.corp.example:3128",
    "proxy.noProxy=10.0.0.0/8",
    "proxy.fromSecret=corp-proxy-env",
    "azureWorkloadIdentity=true",
    "serviceAccount.annotations.azure\\.workload\\.identity/client-id=00000000-1111-2222-3333-444444444444",
];

/// The value sets rendered by the validation and security tests.
const SCENARIOS: &[(&str, &[&str])] = &[
    ("defaults", &[]),
    ("all toggles", ALL_TOGGLES),
    (
        "extra CA from a Secret",
        &[
            "extraCA.secret.name=corporate-ca",
            "extraCA.secret.key=ca.pem",
        ],
    ),
    (
        "leader election asked for",
        &["leaderElection.enabled=true"],
    ),
    ("one watched namespace", &["watchNamespaces={team-a}"]),
];

// ---------------------------------------------------------------------------------------------
// Tools

fn find_tool(env_var: &str, file_name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{env_var}={} does not name a file; unset it or point it at {file_name}",
            path.display()
        );
        return path;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/bin")
        .join(file_name);
    assert!(
        path.is_file(),
        "{file_name} is not installed: run scripts/install-test-tools.sh (it installs into .tools/), \
         or set {env_var} to the {file_name} binary"
    );
    path
}

fn helm() -> Command {
    let mut command = Command::new(find_tool("HELM", "helm"));
    // Keep helm away from the user's config and caches, and from the network: none of these commands needs either.
    let helm_home = std::env::temp_dir().join("bundlecopy-chart-tests-helm");
    for (variable, dir) in [
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ] {
        command.env(variable, helm_home.join(dir));
    }
    command
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
}

fn stdout_and_stderr(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// Rendering

fn set_arguments(command: &mut Command, overrides: &[&str]) {
    for value in overrides {
        command.arg("--set").arg(value);
    }
}

/// `helm template` output as text; panics with helm's message when rendering fails.
fn render_text(overrides: &[&str], include_crds: bool) -> String {
    let output = try_render(overrides, include_crds);
    assert!(
        output.status.success(),
        "helm template with {overrides:?} failed: {}",
        stdout_and_stderr(&output)
    );
    String::from_utf8(output.stdout).expect("helm prints UTF-8")
}

fn try_render(overrides: &[&str], include_crds: bool) -> Output {
    try_render_release(RELEASE_NAME, RELEASE_NAMESPACE, overrides, include_crds)
}

fn try_render_release(
    release: &str,
    release_namespace: &str,
    overrides: &[&str],
    include_crds: bool,
) -> Output {
    let mut command = helm();
    command
        .args([
            "template",
            release,
            CHART_DIR,
            "--namespace",
            release_namespace,
        ])
        .args(["--kube-version", KUBERNETES_VERSION]);
    if include_crds {
        command.arg("--include-crds");
    }
    set_arguments(&mut command, overrides);
    run(&mut command)
}

fn parse_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).expect("helm renders valid YAML"))
        .filter(|document| !document.is_null())
        .collect()
}

/// The objects the chart renders with these `--set` overrides (templates only, no CRDs).
pub(crate) fn render(overrides: &[&str]) -> Vec<Value> {
    parse_documents(&render_text(overrides, false))
}

/// The objects of release `release` in `release_namespace` (templates only, no CRDs); the e2e suite
/// applies the RBAC part of it to a real cluster.
pub(crate) fn render_release(
    release: &str,
    release_namespace: &str,
    overrides: &[&str],
) -> Vec<Value> {
    let output = try_render_release(release, release_namespace, overrides, false);
    assert!(
        output.status.success(),
        "helm template {release} -n {release_namespace} with {overrides:?} failed: {}",
        stdout_and_stderr(&output)
    );
    parse_documents(&String::from_utf8(output.stdout).expect("helm prints UTF-8"))
}

fn string_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |node, key| node.get(*key))
        .and_then(Value::as_str)
}

fn kind(object: &Value) -> &str {
    string_at(object, &["kind"]).unwrap_or("")
}

fn name(object: &Value) -> &str {
    string_at(object, &["metadata", "name"]).unwrap_or("")
}

fn namespace(object: &Value) -> Option<&str> {
    string_at(object, &["metadata", "namespace"])
}

fn of_kind<'a>(objects: &'a [Value], wanted: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|object| kind(object) == wanted)
        .collect()
}

fn only_one<'a>(objects: &'a [Value], wanted: &str) -> &'a Value {
    let found = of_kind(objects, wanted);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {wanted}, found {}",
        found.len()
    );
    found[0]
}

pub(crate) fn controller_container(objects: &[Value]) -> &Value {
    let deployment = only_one(objects, "Deployment");
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("the Deployment has containers");
    assert_eq!(containers.len(), 1, "one container, the controller");
    &containers[0]
}

pub(crate) fn container_args(objects: &[Value]) -> Vec<String> {
    controller_container(objects)["args"]
        .as_sequence()
        .expect("the controller container has args")
        .iter()
        .map(|argument| argument.as_str().expect("args are strings").to_owned())
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_str().expect("a list of strings").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// helm lint

#[test]
fn helm_lint_strict_passes_with_defaults_and_with_every_toggle() {
    for (scenario, overrides) in SCENARIOS {
        let mut command = helm();
        command.args([
            "lint",
            "--strict",
            CHART_DIR,
            "--namespace",
            RELEASE_NAMESPACE,
        ]);
        set_arguments(&mut command, overrides);
        let output = run(&mut command);
        assert!(
            output.status.success(),
            "helm lint --strict ({scenario}) failed: {}",
            stdout_and_stderr(&output)
        );
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            printed.contains("1 chart(s) linted, 0 chart(s) failed"),
            "unexpected helm lint output ({scenario}): {printed}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Schema validation of the rendered objects

/// What kubernetes-validate said about one rendered manifest.
struct Validation {
    succeeded: bool,
    passed: Vec<String>,
    warnings: Vec<String>,
    output: String,
}

fn kubernetes_validate(manifest: &str) -> Validation {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, manifest).expect("write rendered manifest");
    let output = run(
        Command::new(find_tool("KUBERNETES_VALIDATE", "kubernetes-validate"))
            .args(["-k", KUBERNETES_VERSION, "--strict"])
            .arg(&file),
    );
    let text = stdout_and_stderr(&output);
    let lines_with = |marker: &str| -> Vec<String> {
        text.lines()
            .filter(|line| line.contains(marker))
            .map(str::to_owned)
            .collect()
    };
    Validation {
        succeeded: output.status.success(),
        passed: lines_with(" passed for resource "),
        warnings: lines_with("WARN"),
        output: text,
    }
}

#[test]
fn rendered_objects_validate_strictly_against_kubernetes_1_33() {
    for (scenario, overrides) in SCENARIOS {
        let text = render_text(overrides, true);
        let objects = parse_documents(&text);
        let validation = kubernetes_validate(&text);
        assert!(
            validation.succeeded,
            "kubernetes-validate rejected the chart ({scenario}): {}",
            validation.output
        );
        let without_schema: Vec<&Value> = objects
            .iter()
            .filter(|object| KINDS_WITHOUT_SCHEMA.contains(&kind(object)))
            .collect();
        let validatable = objects.len() - without_schema.len();
        assert_eq!(
            validation.passed.len(),
            validatable,
            "every object except {KINDS_WITHOUT_SCHEMA:?} must be validated ({scenario}): {}",
            validation.output
        );
        for warning in &validation.warnings {
            assert!(
                KINDS_WITHOUT_SCHEMA
                    .iter()
                    .any(|kind| warning.contains(&format!("Couldn't find schema for kind {kind} "))),
                "unexpected warning ({scenario}): {warning}"
            );
        }
        assert_eq!(
            validation.warnings.len(),
            without_schema.len(),
            "{}",
            validation.output
        );
        // The CRD comes in with --include-crds and is validated like the rest.
        assert!(
            validation
                .passed
                .iter()
                .any(|line| line.contains("customresourcedefinition/bundlecopies.bundlecopy.dev")),
            "the CRD was not validated ({scenario}): {}",
            validation.output
        );
    }
}

#[test]
fn kubernetes_validate_strict_rejects_an_unknown_field() {
    // Guards the test above: a validator that passes everything would prove nothing.
    let mut objects = render(&[]);
    let deployment = objects
        .iter_mut()
        .find(|object| kind(object) == "Deployment")
        .expect("a Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0]["bogusField"] = Value::from("x");
    let manifest = serde_yaml::to_string(deployment).expect("serialize");
    let validation = kubernetes_validate(&manifest);
    assert!(
        !validation.succeeded && validation.output.contains("bogusField"),
        "kubernetes-validate --strict accepted an unknown field: {}",
        validation.output
    );
}

// ---------------------------------------------------------------------------------------------
// RBAC

/// The only (API group, resource) pairs the controller may be granted, with the verbs allowed on each.
fn allowed_grants() -> BTreeMap<(&'static str, &'static str), BTreeSet<&'static str>> {
    let verbs = |list: &[&'static str]| list.iter().copied().collect::<BTreeSet<_>>();
    BTreeMap::from([
        // create, update and delete: a BundleMirror's children (mirrors.enabled).
        (
            ("bundlecopy.dev", "bundlecopies"),
            verbs(&[
                "get", "list", "watch", "patch", "create", "update", "delete",
            ]),
        ),
        (
            ("bundlecopy.dev", "bundlecopies/status"),
            verbs(&["get", "patch"]),
        ),
        (
            ("bundlecopy.dev", "bundlemirrors"),
            verbs(&["get", "list", "watch"]),
        ),
        (
            ("bundlecopy.dev", "bundlemirrors/status"),
            verbs(&["get", "patch"]),
        ),
        (("", "secrets"), verbs(&["get", "list", "watch"])),
        (("events.k8s.io", "events"), verbs(&["create", "patch"])),
        (("", "events"), verbs(&["create", "patch"])),
        (
            ("coordination.k8s.io", "leases"),
            verbs(&["get", "create", "update"]),
        ),
    ])
}

/// Grants as (API group, resource, verb) triples: the unit that allowed_grants() is checked against.
type Grant = (String, String, String);

fn rules_of(role: &Value) -> Vec<Grant> {
    let rules = role["rules"].as_sequence().expect("a Role has rules");
    let mut grants = Vec::new();
    for rule in rules {
        assert!(
            rule.get("nonResourceURLs").is_none(),
            "{} {} grants nonResourceURLs",
            kind(role),
            name(role)
        );
        let groups = strings(&rule["apiGroups"]);
        let resources = strings(&rule["resources"]);
        let verbs = strings(&rule["verbs"]);
        for list in [&groups, &resources, &verbs] {
            assert!(
                !list.iter().any(|item| item.contains('*')),
                "{} {} has a wildcard: {rule:?}",
                kind(role),
                name(role)
            );
        }
        for group in &groups {
            for resource in &resources {
                for verb in &verbs {
                    grants.push((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    grants
}

fn assert_only_allowed(role: &Value, grants: &[Grant]) {
    let allowed = allowed_grants();
    for (group, resource, verb) in grants {
        let verbs = allowed.get(&(group.as_str(), resource.as_str())).unwrap_or_else(|| {
            panic!(
                "{} {} grants {resource:?} in API group {group:?}, which the controller does not need",
                kind(role),
                name(role)
            )
        });
        assert!(
            verbs.contains(verb.as_str()),
            "{} {} grants {verb:?} on {group:?}/{resource}; allowed: {verbs:?}",
            kind(role),
            name(role)
        );
    }
}

fn grants_resource(grants: &[Grant], wanted_group: &str, wanted_resource: &str) -> bool {
    grants
        .iter()
        .any(|(group, resource, _)| group == wanted_group && resource == wanted_resource)
}

/// The grants a watch scope (cluster or one namespace) must hold: everything except leases.
fn watch_grants() -> BTreeSet<Grant> {
    allowed_grants()
        .into_iter()
        .filter(|((group, _), _)| *group != "coordination.k8s.io")
        .flat_map(|((group, resource), verbs)| {
            verbs
                .into_iter()
                .map(move |verb| (group.to_owned(), resource.to_owned(), verb.to_owned()))
        })
        .collect()
}

fn assert_bound_to_service_account(objects: &[Value], binding_kind: &str, role: &Value) {
    let role_namespace = namespace(role);
    let binding = objects
        .iter()
        .find(|object| {
            kind(object) == binding_kind
                && namespace(object) == role_namespace
                && string_at(object, &["roleRef", "name"]) == Some(name(role))
        })
        .unwrap_or_else(|| panic!("no {binding_kind} for {} {}", kind(role), name(role)));
    assert_eq!(string_at(binding, &["roleRef", "kind"]), Some(kind(role)));
    let subjects = binding["subjects"].as_sequence().expect("subjects");
    assert_eq!(
        subjects.len(),
        1,
        "bound to the operator's ServiceAccount only"
    );
    assert_eq!(string_at(&subjects[0], &["kind"]), Some("ServiceAccount"));
    assert_eq!(string_at(&subjects[0], &["name"]), Some(SERVICE_ACCOUNT));
    assert_eq!(
        string_at(&subjects[0], &["namespace"]),
        Some(RELEASE_NAMESPACE)
    );
}

/// Checks RBAC for one rendering: least privilege everywhere, the right scope, leases only with leader election.
fn assert_rbac(objects: &[Value], watch_namespaces: &[&str], leader_election: bool) {
    let cluster_roles = of_kind(objects, "ClusterRole");
    let roles = of_kind(objects, "Role");
    for role in cluster_roles.iter().chain(roles.iter()) {
        assert_only_allowed(role, &rules_of(role));
    }

    let lease_roles: Vec<&&Value> = roles
        .iter()
        .filter(|role| grants_resource(&rules_of(role), "coordination.k8s.io", "leases"))
        .collect();
    for cluster_role in &cluster_roles {
        assert!(
            !grants_resource(&rules_of(cluster_role), "coordination.k8s.io", "leases"),
            "leases must be granted in the release namespace only, not by ClusterRole {}",
            name(cluster_role)
        );
    }
    if leader_election {
        assert_eq!(
            lease_roles.len(),
            1,
            "one Role grants leases when leader election is on"
        );
        let lease_role = lease_roles[0];
        assert_eq!(
            namespace(lease_role),
            Some(RELEASE_NAMESPACE),
            "the Lease lives in the release namespace"
        );
        assert!(
            !grants_resource(&rules_of(lease_role), "", "secrets"),
            "the leader-election Role must not grant Secrets"
        );
        let lease_verbs: BTreeSet<String> = rules_of(lease_role)
            .into_iter()
            .filter(|(group, resource, _)| group == "coordination.k8s.io" && resource == "leases")
            .map(|(_, _, verb)| verb)
            .collect();
        assert_eq!(
            lease_verbs,
            BTreeSet::from(["create", "get", "update"].map(String::from))
        );
        // Only create (which cannot name an object that does not exist yet) reaches other Leases.
        for rule in lease_role["rules"].as_sequence().expect("rules") {
            if strings(&rule["verbs"]) != ["create"] {
                assert_eq!(
                    strings(&rule["resourceNames"]),
                    ["bundlecopy-operator"],
                    "lease rule {rule:?} is not limited to the operator's Lease"
                );
            }
        }
        assert_bound_to_service_account(objects, "RoleBinding", lease_role);
    } else {
        assert!(
            lease_roles.is_empty(),
            "leases are granted although leader election is off"
        );
    }

    if watch_namespaces.is_empty() {
        assert_eq!(
            cluster_roles.len(),
            1,
            "watching all namespaces takes one ClusterRole"
        );
        let cluster_role = cluster_roles[0];
        let granted: BTreeSet<Grant> = rules_of(cluster_role).into_iter().collect();
        assert_eq!(
            granted,
            watch_grants(),
            "the ClusterRole grants exactly what the controller needs"
        );
        assert_bound_to_service_account(objects, "ClusterRoleBinding", cluster_role);
        let watch_roles = roles
            .iter()
            .filter(|role| !lease_roles.contains(role))
            .count();
        assert_eq!(
            watch_roles, 0,
            "no namespaced watch Roles when watching all namespaces"
        );
    } else {
        assert!(
            cluster_roles.is_empty() && of_kind(objects, "ClusterRoleBinding").is_empty(),
            "watchNamespaces is set: no cluster-wide grants at all (no ClusterRole that could read Secrets)"
        );
        for role in &roles {
            if grants_resource(&rules_of(role), "", "secrets") {
                let role_namespace = namespace(role).unwrap_or("");
                assert!(
                    watch_namespaces.contains(&role_namespace),
                    "Role {} grants Secrets in {role_namespace:?}, which is not watched",
                    name(role)
                );
            }
        }
        for watched in watch_namespaces {
            let in_namespace: Vec<&&Value> = roles
                .iter()
                .filter(|role| namespace(role) == Some(watched) && !lease_roles.contains(role))
                .collect();
            assert_eq!(
                in_namespace.len(),
                1,
                "one watch Role in namespace {watched}"
            );
            let granted: BTreeSet<Grant> = rules_of(in_namespace[0]).into_iter().collect();
            assert_eq!(
                granted,
                watch_grants(),
                "the Role in {watched} grants exactly what the controller needs"
            );
            assert_bound_to_service_account(objects, "RoleBinding", in_namespace[0]);
        }
    }
}

#[test]
fn rbac_by_default_is_one_cluster_role_without_leases() {
    assert_rbac(&render(&[]), &[], false);
}

#[test]
fn rbac_with_every_toggle_is_namespaced_with_a_lease_role() {
    assert_rbac(&render(ALL_TOGGLES), &["team-a", "team-b"], true);
}

#[test]
fn rbac_with_watch_namespaces_and_one_replica_has_no_lease_role() {
    assert_rbac(&render(&["watchNamespaces={team-a}"]), &["team-a"], false);
}

#[test]
fn rbac_grants_leases_when_leader_election_is_asked_for() {
    assert_rbac(&render(&["leaderElection.enabled=true"]), &[], true);
}

#[test]
fn rbac_create_false_renders_no_rbac_objects() {
    let objects = render(&["rbac.create=false", "replicaCount=2"]);
    for rbac_kind in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        assert!(
            of_kind(&objects, rbac_kind).is_empty(),
            "{rbac_kind} rendered with rbac.create=false"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The Deployment

fn assert_locked_down(scenario: &str, objects: &[Value]) {
    let pod = &only_one(objects, "Deployment")["spec"]["template"]["spec"];
    let pod_security = &pod["securityContext"];
    assert_eq!(
        pod_security["runAsNonRoot"],
        Value::Bool(true),
        "{scenario}: pod runAsNonRoot"
    );
    assert_eq!(
        pod_security["runAsUser"],
        Value::from(65532),
        "{scenario}: distroless nonroot uid"
    );
    assert_eq!(
        string_at(pod_security, &["seccompProfile", "type"]),
        Some("RuntimeDefault"),
        "{scenario}: pod seccomp"
    );

    let container = controller_container(objects);
    let security = &container["securityContext"];
    assert_eq!(
        security["runAsNonRoot"],
        Value::Bool(true),
        "{scenario}: runAsNonRoot"
    );
    assert_eq!(
        security["allowPrivilegeEscalation"],
        Value::Bool(false),
        "{scenario}"
    );
    assert_eq!(
        security["readOnlyRootFilesystem"],
        Value::Bool(true),
        "{scenario}"
    );
    assert_ne!(security["privileged"], Value::Bool(true), "{scenario}");
    assert_eq!(
        strings(&security["capabilities"]["drop"]),
        vec!["ALL"],
        "{scenario}: drop ALL"
    );
    assert!(
        security["capabilities"].get("add").is_none(),
        "{scenario}: no added capabilities"
    );
    assert_eq!(
        string_at(security, &["seccompProfile", "type"]),
        Some("RuntimeDefault"),
        "{scenario}: container seccomp"
    );

    // The binary writes nothing to disk, so nothing writable is mounted either.
    for mount in container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        assert_eq!(
            mount["readOnly"],
            Value::Bool(true),
            "{scenario}: writable mount {mount:?}"
        );
    }
    for volume in pod["volumes"].as_sequence().into_iter().flatten() {
        assert!(
            volume.get("configMap").is_some() || volume.get("secret").is_some(),
            "{scenario}: only ConfigMap/Secret volumes expected, got {volume:?}"
        );
    }
    assert!(
        pod.get("hostNetwork").is_none() && pod.get("hostPID").is_none(),
        "{scenario}"
    );

    let resources = &container["resources"];
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !resources[bound][resource].is_null(),
                "{scenario}: resources.{bound}.{resource} is unset"
            );
        }
    }
}

#[test]
fn every_scenario_runs_non_root_read_only_without_capabilities() {
    for (scenario, overrides) in SCENARIOS {
        assert_locked_down(scenario, &render(overrides));
    }
}

#[test]
fn probes_hit_healthz_and_readyz_on_the_metrics_port() {
    let objects = render(&["metrics.port=9090"]);
    let container = controller_container(&objects);
    let ports = container["ports"].as_sequence().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(string_at(&ports[0], &["name"]), Some("metrics"));
    assert_eq!(ports[0]["containerPort"], Value::from(9090));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(
            string_at(&container[probe], &["httpGet", "path"]),
            Some(path),
            "{probe}"
        );
        assert_eq!(
            string_at(&container[probe], &["httpGet", "port"]),
            Some("metrics"),
            "{probe}"
        );
    }
    assert!(container_args(&objects).contains(&"--metrics-addr=0.0.0.0:9090".to_owned()));
}

#[test]
fn without_mirrors_nothing_is_granted_on_bundle_mirrors_or_on_creating_bundle_copies() {
    let with = render(&[]);
    let without = render(&["mirrors.enabled=false"]);
    let grants = |objects: &[Value]| -> Vec<Grant> {
        of_kind(objects, "ClusterRole")
            .iter()
            .flat_map(|role| rules_of(role))
            .collect()
    };
    let mirror_grant = |grants: &[Grant]| {
        grants.iter().any(|(group, resource, verb)| {
            group == "bundlecopy.dev"
                && (resource.starts_with("bundlemirrors")
                    || (resource == "bundlecopies" && verb == "create"))
        })
    };
    assert!(mirror_grant(&grants(&with)));
    assert!(!mirror_grant(&grants(&without)), "{:?}", grants(&without));
    assert!(container_args(&without).contains(&"--mirrors=false".to_owned()));
}

#[test]
fn default_arguments_run_the_controller_for_all_namespaces_without_leader_election() {
    let objects = render(&[]);
    let args = container_args(&objects);
    assert_eq!(
        args,
        [
            "controller",
            "--metrics-addr=0.0.0.0:8080",
            "--max-concurrent-copies=4",
            "--max-copies-per-registry=2",
            "--log-level=info",
            "--log-format=json",
            "--mirrors=true",
        ]
    );
    let deployment = only_one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], Value::from(1));
    let image = string_at(controller_container(&objects), &["image"]).expect("image");
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(CHART_DIR).join("Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    let app_version = string_at(&chart, &["appVersion"]).expect("appVersion");
    assert_eq!(
        image,
        format!("ghcr.io/bundlecopy/bundlecopy:{app_version}"),
        "tag defaults to appVersion"
    );
}

#[test]
fn every_toggle_reaches_the_controller_arguments() {
    let objects = render(ALL_TOGGLES);
    let args = container_args(&objects);
    for expected in [
        "--namespace=team-a",
        "--namespace=team-b",
        "--leader-election",
        &format!("--leader-election-namespace={RELEASE_NAMESPACE}"),
        "--leader-election-lease-name=bundlecopy-operator",
        "--leader-election-lease-duration=15s",
        "--leader-election-renew-deadline=10s",
        "--leader-election-retry-period=2s",
        "--extra-ca-file=/etc/bundlecopy/extra-ca/ca.crt",
    ] {
        assert!(
            args.iter().any(|arg| arg == expected),
            "{expected} missing from {args:?}"
        );
    }
    assert_eq!(
        only_one(&objects, "Deployment")["spec"]["replicas"],
        Value::from(2)
    );

    // Leader identity comes from the downward API.
    let env = controller_container(&objects)["env"]
        .as_sequence()
        .expect("env");
    for (variable, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let entry = env
            .iter()
            .find(|entry| string_at(entry, &["name"]) == Some(variable))
            .unwrap_or_else(|| panic!("{variable} not set"));
        assert_eq!(
            string_at(entry, &["valueFrom", "fieldRef", "fieldPath"]),
            Some(field)
        );
    }
}

#[test]
fn one_replica_without_the_flag_runs_without_leader_election() {
    let args = container_args(&render(&["watchNamespaces={team-a}"]));
    assert!(
        !args.iter().any(|arg| arg.starts_with("--leader-election")),
        "{args:?}"
    );
}

#[test]
fn extra_ca_is_mounted_read_only_from_a_config_map_or_a_secret() {
    for (source, overrides) in [
        (
            "configMap",
            [
                "extraCA.configMap.name=corporate-ca",
                "extraCA.configMap.key=bundle.pem",
            ],
        ),
        (
            "secret",
            [
                "extraCA.secret.name=corporate-ca",
                "extraCA.secret.key=bundle.pem",
            ],
        ),
    ] {
        let objects = render(&overrides);
        let pod = &only_one(&objects, "Deployment")["spec"]["template"]["spec"];
        let volumes = pod["volumes"].as_sequence().expect("volumes");
        assert_eq!(volumes.len(), 1, "{source}");
        let volume = &volumes[0][source];
        let object_name = if source == "secret" {
            "secretName"
        } else {
            "name"
        };
        assert_eq!(
            string_at(volume, &[object_name]),
            Some("corporate-ca"),
            "{source}"
        );
        assert_eq!(
            string_at(&volume["items"][0], &["key"]),
            Some("bundle.pem"),
            "{source}"
        );
        assert_eq!(
            string_at(&volume["items"][0], &["path"]),
            Some("ca.crt"),
            "{source}"
        );
        let mounts = controller_container(&objects)["volumeMounts"]
            .as_sequence()
            .expect("volumeMounts");
        assert_eq!(mounts.len(), 1);
        assert_eq!(
            string_at(&mounts[0], &["mountPath"]),
            Some("/etc/bundlecopy/extra-ca")
        );
        assert_eq!(mounts[0]["readOnly"], Value::Bool(true));
        assert!(
            container_args(&objects)
                .contains(&"--extra-ca-file=/etc/bundlecopy/extra-ca/ca.crt".to_owned())
        );
    }

    let without = render(&[]);
    assert!(controller_container(&without).get("volumeMounts").is_none());
    assert!(
        !container_args(&without)
            .iter()
            .any(|arg| arg.starts_with("--extra-ca-file"))
    );
}

#[test]
fn proxy_values_become_the_controller_environment() {
    let environment = |objects: &[Value]| -> Vec<(String, String)> {
        controller_container(objects)["env"]
            .as_sequence()
            .expect("env")
            .iter()
            .filter_map(|entry| {
                Some((
                    string_at(entry, &["name"])?.to_string(),
                    string_at(entry, &["value"])?.to_string(),
                ))
            })
            .collect()
    };
    let objects = render(&[
        "proxy.httpsProxy=http://proxy.corp.example:3128",
        "proxy.httpProxy=http://proxy.corp.example:3129",
        "proxy.noProxy=10.0.0.0/8",
        "proxy.fromSecret=corp-proxy-env",
    ]);
    let env = environment(&objects);
    for (name, value) in [
        ("HTTPS_PROXY", "http://proxy.corp.example:3128"),
        ("HTTP_PROXY", "http://proxy.corp.example:3129"),
        ("NO_PROXY", "10.0.0.0/8"),
    ] {
        assert!(
            env.contains(&(name.to_string(), value.to_string())),
            "{name}: {env:?}"
        );
    }
    assert_eq!(
        string_at(
            &controller_container(&objects)["envFrom"][0],
            &["secretRef", "name"]
        ),
        Some("corp-proxy-env")
    );

    let without = render(&[]);
    assert!(
        !environment(&without)
            .iter()
            .any(|(name, _)| name.ends_with("PROXY")),
        "{:?}",
        environment(&without)
    );
    assert!(controller_container(&without).get("envFrom").is_none());
}

#[test]
fn cloud_identity_values_label_the_pod_and_annotate_the_service_account() {
    let objects = render(&[
        "azureWorkloadIdentity=true",
        "serviceAccount.annotations.azure\\.workload\\.identity/client-id=00000000-1111-2222-3333-444444444444",
    ]);
    let labels = &only_one(&objects, "Deployment")["spec"]["template"]["metadata"]["labels"];
    assert_eq!(
        string_at(labels, &["azure.workload.identity/use"]),
        Some("true")
    );
    assert_eq!(
        string_at(
            &only_one(&objects, "ServiceAccount")["metadata"]["annotations"],
            &["azure.workload.identity/client-id"]
        ),
        Some("00000000-1111-2222-3333-444444444444")
    );
    let without = render(&[]);
    let labels = &only_one(&without, "Deployment")["spec"]["template"]["metadata"]["labels"];
    assert!(
        labels.get("azure.workload.identity/use").is_none(),
        "{labels:?}"
    );
}

#[test]
fn metrics_service_and_service_monitor_select_the_controller_pods() {
    assert!(
        of_kind(&render(&[]), "ServiceMonitor").is_empty(),
        "ServiceMonitor is off by default"
    );
    assert!(of_kind(&render(&["metrics.service.enabled=false"]), "Service").is_empty());

    let objects = render(&[
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=prom",
    ]);
    let pod_labels = &only_one(&objects, "Deployment")["spec"]["template"]["metadata"]["labels"];
    let service = only_one(&objects, "Service");
    let selector = service["spec"]["selector"]
        .as_mapping()
        .expect("Service selector");
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(
            &pod_labels[key], value,
            "Service selector {key:?} does not match the pod"
        );
    }
    assert_eq!(
        string_at(&service["spec"]["ports"][0], &["targetPort"]),
        Some("metrics")
    );

    let monitor = only_one(&objects, "ServiceMonitor");
    assert_eq!(
        string_at(monitor, &["metadata", "labels", "release"]),
        Some("prom")
    );
    let monitor_selector = monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels");
    for (key, value) in monitor_selector {
        assert_eq!(
            &service["metadata"]["labels"][key], value,
            "ServiceMonitor selector {key:?}"
        );
    }
    assert_eq!(
        string_at(&monitor["spec"]["endpoints"][0], &["port"]),
        Some("metrics")
    );
    assert_eq!(
        string_at(&monitor["spec"]["endpoints"][0], &["path"]),
        Some("/metrics")
    );
}

#[test]
fn every_object_carries_the_standard_labels() {
    for object in render(ALL_TOGGLES) {
        let labels = &object["metadata"]["labels"];
        for label in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ] {
            assert!(
                labels.get(label).is_some(),
                "{} {} lacks label {label}",
                kind(&object),
                name(&object)
            );
        }
        assert_eq!(
            string_at(labels, &["app.kubernetes.io/instance"]),
            Some(RELEASE_NAME)
        );
    }
}

#[test]
fn values_schema_and_templates_reject_bad_values() {
    for (overrides, expected_message) in [
        (
            vec!["replicaCounts=2"],
            "Additional property replicaCounts is not allowed",
        ),
        (
            vec!["extraCA.configMap.name=a", "extraCA.secret.name=b"],
            "extraCA",
        ),
        (vec!["log.format=yaml"], "log.format"),
        (vec!["watchNamespaces={Team_A}"], "watchNamespaces"),
        (
            vec![
                "metrics.service.enabled=false",
                "metrics.serviceMonitor.enabled=true",
            ],
            "needs metrics.service.enabled",
        ),
    ] {
        let output = try_render(&overrides, false);
        let printed = stdout_and_stderr(&output);
        assert!(!output.status.success(), "helm accepted {overrides:?}");
        assert!(
            printed.contains(expected_message),
            "{overrides:?}: {printed}"
        );
    }
}

#[test]
fn chart_crds_are_byte_identical_to_the_generated_crds() {
    for file in [
        "bundlecopies.bundlecopy.dev.yaml",
        "bundlemirrors.bundlecopy.dev.yaml",
    ] {
        let generated = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crds")
            .join(file);
        let in_chart = Path::new(CHART_DIR).join("crds").join(file);
        let generated_bytes = std::fs::read(&generated).unwrap_or_else(|error| {
            panic!(
                "cannot read {} ({error}): the CRDs are generated with `make crd`",
                generated.display()
            )
        });
        let chart_bytes = std::fs::read(&in_chart).expect("the chart's CRD");
        assert!(
            generated_bytes == chart_bytes,
            "{} differs from {}: run `make crd`",
            in_chart.display(),
            generated.display()
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

#[test]
fn notes_show_how_to_create_and_watch_a_bundle_copy() {
    // `helm template` skips NOTES.txt and `helm install --dry-run` needs a cluster, so render a copy of
    // the chart in which NOTES.txt is also an ordinary template.
    let dir = tempfile::tempdir().expect("temp dir");
    let chart = dir.path().join("bundlecopy-operator");
    copy_dir(Path::new(CHART_DIR), &chart);
    let notes_template =
        std::fs::read_to_string(chart.join("templates/NOTES.txt")).expect("read NOTES.txt");
    let wrapped = format!(
        "{{{{- define \"test.notes\" }}}}\n{notes_template}\n{{{{- end }}}}\nnotes: |\n{{{{ include \"test.notes\" . | indent 2 }}}}\n"
    );
    std::fs::write(chart.join("templates/notes-as-template.yaml"), wrapped)
        .expect("write notes template");
    let mut command = helm();
    command
        .args(["template", RELEASE_NAME])
        .arg(&chart)
        .args([
            "--namespace",
            RELEASE_NAMESPACE,
            "--show-only",
            "templates/notes-as-template.yaml",
        ])
        .args(["--set", "watchNamespaces={team-a}"]);
    let output = run(&mut command);
    assert!(output.status.success(), "{}", stdout_and_stderr(&output));
    let rendered: Value = serde_yaml::from_slice(&output.stdout).expect("rendered notes are YAML");
    let notes = string_at(&rendered, &["notes"]).expect("notes");
    for expected in [
        "kind: BundleCopy",
        "apiVersion: bundlecopy.dev/v1alpha1",
        "kubectl apply -n team-a -f -",
        "kubectl -n team-a wait --for=condition=Ready bundlecopy/hello",
        "kubectl -n team-a get bundlecopies -w",
        "kubectl apply --server-side -f",
        "only in: team-a",
    ] {
        assert!(
            notes.contains(expected),
            "NOTES lack {expected:?}:\n{notes}"
        );
    }
}

fn leaf_paths(value: &Value, prefix: &str, paths: &mut Vec<String>) {
    match value.as_mapping() {
        Some(mapping) if !mapping.is_empty() => {
            for (key, child) in mapping {
                let key = key.as_str().expect("values keys are strings");
                let path = if prefix.is_empty() {
                    key.to_owned()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_paths(child, &path, paths);
            }
        }
        _ => paths.push(prefix.to_owned()),
    }
}

#[test]
fn install_docs_describe_every_value() {
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(CHART_DIR).join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml parses");
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/install.md"))
            .expect("docs/install.md");
    let mut paths = Vec::new();
    leaf_paths(&values, "", &mut paths);
    assert!(
        paths.len() > 20,
        "values.yaml has more values than {paths:?}"
    );
    // A value is documented in a table row of its own, or by its parent (e.g. `resources` as a whole).
    let undocumented: Vec<&String> = paths
        .iter()
        .filter(|path| {
            let segments: Vec<&str> = path.split('.').collect();
            !(1..=segments.len())
                .any(|length| docs.contains(&format!("| `{}` |", segments[..length].join("."))))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/install.md's values table lacks {undocumented:?}"
    );
}

#[test]
fn pod_scheduling_and_metadata_values_reach_the_pod() {
    let objects = render(&[
        "podAnnotations.example\\.com/team=copy",
        "podLabels.tier=ops",
        "priorityClassName=high",
        "nodeSelector.kubernetes\\.io/os=linux",
        "tolerations[0].key=dedicated",
        "tolerations[0].operator=Exists",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=zone",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
        "imagePullSecrets[0].name=pull",
        "image.tag=v9.9.9",
        "image.pullPolicy=Always",
        "maxConcurrentCopies=7",
        "maxCopiesPerRegistry=3",
        "log.level=debug",
        "log.format=text",
        "serviceAccount.name=copier",
    ]);
    let template = &only_one(&objects, "Deployment")["spec"]["template"];
    let pod = &template["spec"];
    assert_eq!(
        string_at(template, &["metadata", "annotations", "example.com/team"]),
        Some("copy")
    );
    assert_eq!(
        string_at(template, &["metadata", "labels", "tier"]),
        Some("ops")
    );
    assert_eq!(string_at(pod, &["priorityClassName"]), Some("high"));
    assert_eq!(
        string_at(pod, &["nodeSelector", "kubernetes.io/os"]),
        Some("linux")
    );
    assert_eq!(
        string_at(&pod["tolerations"][0], &["key"]),
        Some("dedicated")
    );
    assert!(!pod["affinity"]["nodeAffinity"].is_null());
    assert_eq!(
        string_at(&pod["imagePullSecrets"][0], &["name"]),
        Some("pull")
    );
    assert_eq!(string_at(pod, &["serviceAccountName"]), Some("copier"));
    assert_eq!(
        string_at(only_one(&objects, "ServiceAccount"), &["metadata", "name"]),
        Some("copier")
    );
    let container = controller_container(&objects);
    assert_eq!(
        string_at(container, &["image"]),
        Some("ghcr.io/bundlecopy/bundlecopy:v9.9.9")
    );
    assert_eq!(string_at(container, &["imagePullPolicy"]), Some("Always"));
    let args = container_args(&objects);
    for expected in [
        "--max-concurrent-copies=7",
        "--max-copies-per-registry=3",
        "--log-level=debug",
        "--log-format=text",
    ] {
        assert!(
            args.iter().any(|arg| arg == expected),
            "{expected} missing from {args:?}"
        );
    }
    let binding = only_one(&objects, "ClusterRoleBinding");
    assert_eq!(
        string_at(&binding["subjects"][0], &["name"]),
        Some("copier")
    );
}
