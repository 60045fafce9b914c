//! Bad input, table-driven, through the engine API and the CLI: malformed references (source and
//! destination), broken Docker configs, garbage CA files, sources that are not bundles. Each row
//! must give its reason (engine) and exit code 1 with exactly one `error:` line naming the key
//! fact (CLI), quickly (no hot loop), and never a panic.
//!
//! The controller rows (bad Secrets, CA Secrets, intervals, references, non-bundles as a
//! BundleCopy meets them) are the second table below, `bad_input_controller_rows_...`: each is one
//! reconcile against the fake API server and must end in its Ready reason, a message naming the
//! Secret or field and the fix (never a secret value), Stalled True and the slow retry.
//! `cargo test --test integration bad_input`

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bundlecopy::operator::context::Context;
use bundlecopy::operator::crd::BundleCopy;
use bundlecopy::operator::decide::{PERMANENT_RETRY, TRANSIENT_BACKOFF_BASE};
use bundlecopy::operator::metrics::Metrics;
use bundlecopy::operator::reason::Reason;
use bundlecopy::operator::reconcile::reconcile;
use bundlecopy_engine::CopyError;
use bundlecopy_engine::credentials::DockerConfig as EngineDockerConfig;
use bundlecopy_engine::{EndpointOptions, EngineSettings, Progress, copy_bundle};
use k8s_openapi::api::core::v1::Secret;
use kube::core::DeserializeGuard;

use crate::faults::{bounded, copy_request, direct, fast_settings};
use crate::support::check::run_cli_with;
use crate::support::fake_api::{ApiState, FakeApiServer, bundle_copy_object, condition_of};
use crate::support::{
    BundleSpec, ImageFormat, PushedBundle, PushedImage, RegistryKind, TestRegistry, push_bundle,
    push_plain_image,
};

/// A CLI run must end well within this; a row that reaches it loops or hangs.
const CLI_BOUND: Duration = Duration::from_secs(30);

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// One malformed reference: which side it is on, the text, and a fragment the message must hold.
struct BadReference {
    side: &'static str,
    input: String,
    fact: &'static str,
}

fn bad_references() -> Vec<BadReference> {
    let source = |input: &str, fact| BadReference {
        side: "source",
        input: input.to_string(),
        fact,
    };
    let destination = |input: &str, fact| BadReference {
        side: "destination",
        input: input.to_string(),
        fact,
    };
    vec![
        source("", "empty"),
        source("   ", "empty"),
        source("127.0.0.1:5000/App:v1", "lowercase"),
        source("127.0.0.1:5000/app:", "tag"),
        source("127.0.0.1:5000/app:-v1", "tag"),
        source(&format!("127.0.0.1:5000/app:{}", "t".repeat(129)), "tag"),
        source("127.0.0.1:5000/app@sha256:abc", "digest"),
        source(
            &format!("127.0.0.1:5000/app@md5:{}", "0".repeat(32)),
            "digest",
        ),
        source(
            &format!("127.0.0.1:5000/app@sha256:{}", "G".repeat(64)),
            "digest",
        ),
        source("127.0.0.1:5000//app:v1", "repository"),
        source("127.0.0.1:5000/app/:v1", "repository"),
        source("127.0.0.1:5000/a___b:v1", "repository"),
        source("127.0.0.1:port/app:v1", "port"),
        source("https://127.0.0.1:5000/app:v1", "invalid reference"),
        source("127.0.0.1:5000/app:v1:v2", "invalid reference"),
        source("127.0.0.1:5000/app v1", "invalid reference"),
        source("127.0.0.1:5000/äpp:v1", "invalid reference"),
        source(
            &format!("127.0.0.1:5000/{}:v1", "a".repeat(300)),
            "characters",
        ),
        source(&"0123456789abcdef".repeat(4), "image ID"),
        // Nothing to derive a destination tag from.
        source("127.0.0.1:5000/app", "neither a tag nor a digest"),
        source(&format!("127.0.0.1:5000/app@{DIGEST}"), "tagged reference"),
        destination("", "empty"),
        destination("127.0.0.1:5000/Mirror", "lowercase"),
        destination("127.0.0.1:5000/mirror/app:", "tag"),
        destination("https://127.0.0.1:5000/mirror", "invalid reference"),
        destination("127.0.0.1:5000/mirror/app@sha256:short", "digest"),
        destination("127.0.0.1:5000/mirror/", "repository"),
        destination("127.0.0.1:5000/mir..ror", "repository"),
        destination(
            &format!("127.0.0.1:5000/{}", "org/".repeat(62) + "o"),
            "characters",
        ),
    ]
}

/// The one `error:` line of a failed CLI run; asserts exit code 1, no panic, a single line.
fn single_error_line(what: &str, code: i32, stderr: &str) -> String {
    assert!(!stderr.contains("panicked"), "{what}: panic: {stderr}");
    assert_eq!(code, 1, "{what}: exit code {code}; stderr: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{what}: not one error line: {stderr}");
    errors[0].to_string()
}

/// Run `bundlecopy ARGS` in a blocking task; returns `(code, stdout, stderr, elapsed)`.
async fn cli(args: Vec<String>) -> (i32, String, String, Duration) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = run_cli_with(&args, &[], CLI_BOUND);
        (code, stdout, stderr, started.elapsed())
    })
    .await
    .unwrap()
}

fn copy_args(source: &str, destination: &str, config_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "copy",
        "--source",
        source,
        "--destination",
        destination,
        "--docker-config",
        config_dir.to_str().unwrap(),
        "--timeout",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn config_dir(json: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), json).unwrap();
    dir
}

/// What both tables copy from and to.
struct Fixture {
    /// Plain HTTP, holding the three below.
    plain: TestRegistry,
    /// TLS with basic auth.
    auth: TestRegistry,
    /// A good bundle with one component.
    pushed: PushedBundle,
    /// An image that is not a bundle.
    image: PushedImage,
    /// A bundle whose index names a component missing from bundle.json.
    ghost: PushedBundle,
}

impl Fixture {
    async fn start() -> Fixture {
        let plain = TestRegistry::start(RegistryKind::Plain).await;
        let auth = TestRegistry::start(RegistryKind::TlsBasicAuth).await;
        let pushed = push_bundle(
            &plain,
            "good/app",
            "v1",
            &BundleSpec::new("good", "1.0.0").with_component("db", ImageFormat::Oci, &[2000]),
        )
        .await;
        let image = push_plain_image(&plain, "plain/image", "v1").await;
        let ghost = push_bundle(
            &plain,
            "ghost/app",
            "v1",
            &BundleSpec::new("ghost", "1.0.0")
                .with_component("db", ImageFormat::Oci, &[2000])
                .with_component_missing_from_bundle_json("ghost-component"),
        )
        .await;
        Fixture {
            plain,
            auth,
            pushed,
            image,
            ghost,
        }
    }
}

/// A row of the report table printed at the end (`--nocapture` shows it).
fn report(rows: &mut Vec<String>, input: &str, reason: Option<Reason>, message: &str) {
    let shown: String = input.chars().take(60).collect();
    let reason = reason.map_or("-".to_string(), |r| r.to_string());
    rows.push(format!("| `{shown:?}` | {reason} | {message} |"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gives_a_reason_and_one_clear_error_line_never_a_panic() {
    let fixture = Fixture::start().await;
    let mut rows = Vec::new();
    malformed_references(&fixture, &mut rows).await;
    unusable_docker_configs(&fixture, &mut rows).await;
    credentials_for_other_hosts(&fixture, &mut rows).await;
    ca_files_that_are_not_certificates(&fixture, &mut rows).await;
    sources_that_are_not_bundles(&fixture, &mut rows).await;
    // Nothing was written by any of the failures.
    assert!(
        fixture
            .plain
            .client()
            .head_manifest("mirror/app", "v1")
            .await
            .is_none()
    );

    eprintln!("| input | reason | CLI error line |\n|---|---|---|");
    for row in rows {
        eprintln!("{row}");
    }
}

/// Malformed references: the engine says InvalidSpec before touching the network.
async fn malformed_references(fixture: &Fixture, rows: &mut Vec<String>) {
    let Fixture { pushed, .. } = fixture;
    let empty_config = config_dir("{}");
    let references = bad_references();
    assert!(references.len() >= 20);
    for row in &references {
        let (source, destination) = match row.side {
            "source" => (row.input.clone(), "127.0.0.1:1/mirror".to_string()),
            _ => (pushed.reference.clone(), row.input.clone()),
        };
        let what = format!("{} {:?}", row.side, row.input);
        let request = copy_request(
            source.clone(),
            destination.clone(),
            EndpointOptions::default(),
            EndpointOptions::default(),
            fast_settings(),
        );
        let error = bounded(&what, copy_bundle(&request, &Progress::default()))
            .await
            .unwrap_err();
        assert_eq!(
            Reason::from(error.kind()),
            Reason::InvalidSpec,
            "{what}: {error}"
        );
        assert!(error.to_string().contains(row.fact), "{what}: {error}");

        let (code, stdout, stderr, elapsed) =
            cli(copy_args(&source, &destination, empty_config.path(), &[])).await;
        let line = single_error_line(&what, code, &stderr);
        assert!(line.contains(row.fact), "{what}: {line}");
        assert!(stdout.is_empty(), "{what}: {stdout}");
        assert!(
            elapsed < Duration::from_secs(10),
            "{what}: took {elapsed:?}"
        );
        report(
            rows,
            &format!("{}: {}", row.side, row.input),
            Some(Reason::from(error.kind())),
            &line,
        );
    }
}

/// Docker configs that cannot be used: refused when loaded, naming the problem but never
/// quoting the (possibly secret) value.
async fn unusable_docker_configs(fixture: &Fixture, rows: &mut Vec<String>) {
    let Fixture {
        plain,
        auth,
        pushed,
        ..
    } = fixture;
    let host = auth.host();
    let secretish = "Bad!Base64*Value";
    let configs = [
        ("invalid JSON", "{\"auths\": {".to_string(), "JSON"),
        ("a JSON array", "[1, 2]".to_string(), "not a JSON object"),
        (
            "invalid base64 in auth",
            format!(r#"{{"auths":{{"{host}":{{"auth":"{secretish}"}}}}}}"#),
            "base64",
        ),
        (
            "auth without a colon",
            format!(
                r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
                STANDARD.encode("no-colon-here")
            ),
            "USERNAME:PASSWORD",
        ),
        (
            "an empty username",
            format!(r#"{{"auths":{{"{host}":{{"username":"","password":"pw-{secretish}"}}}}}}"#),
            "empty username",
        ),
        (
            "a number as password",
            format!(r#"{{"auths":{{"{host}":{{"username":"u","password":12345}}}}}}"#),
            "must be a string",
        ),
    ];
    for (what, json, fact) in &configs {
        let parsed = EngineDockerConfig::parse_config_json(json.as_bytes())
            .expect_err(&format!("{what}: accepted"));
        let error = CopyError::InvalidCredentials(parsed.to_string());
        assert_eq!(Reason::from(error.kind()), Reason::InvalidSecret);
        assert!(error.to_string().contains(fact), "{what}: {error}");
        assert!(!error.to_string().contains(secretish), "{what}: {error}");

        let dir = config_dir(json);
        let (code, _, stderr, _) = cli(copy_args(
            &pushed.reference,
            &format!("{}/mirror", plain.host()),
            dir.path(),
            &[],
        ))
        .await;
        let line = single_error_line(what, code, &stderr);
        assert!(
            line.contains(fact) && line.contains("config.json"),
            "{what}: {line}"
        );
        assert!(!line.contains(secretish), "{what}: {line}");
        report(rows, what, Some(Reason::from(error.kind())), &line);
    }
}

/// Credentials only for other hosts, against a registry that needs them.
async fn credentials_for_other_hosts(fixture: &Fixture, rows: &mut Vec<String>) {
    let Fixture {
        plain,
        auth,
        pushed,
        ..
    } = fixture;
    let others = format!(
        r#"{{"auths":{{"other.example.com":{{"auth":"{0}"}},"127.0.0.1:1":{{"auth":"{0}"}}}}}}"#,
        STANDARD.encode(format!("{}:{}", auth.username(), auth.password()))
    );
    let ca = auth.ca_file().unwrap();
    let destination = format!("{}/mirror", auth.host());
    let mut endpoint = direct(auth);
    endpoint.credentials = EngineDockerConfig::parse_config_json(others.as_bytes()).unwrap();
    let request = copy_request(
        pushed.reference.clone(),
        destination.clone(),
        direct(plain),
        endpoint,
        fast_settings(),
    );
    let error = bounded("others", copy_bundle(&request, &Progress::default()))
        .await
        .unwrap_err();
    assert_eq!(
        Reason::from(error.kind()),
        Reason::AuthenticationFailed,
        "{error}"
    );
    let dir = config_dir(&others);
    let (code, _, stderr, _) = cli(copy_args(
        &pushed.reference,
        &destination,
        dir.path(),
        &["--destination-ca-file", ca.to_str().unwrap()],
    ))
    .await;
    let line = single_error_line("credentials for other hosts", code, &stderr);
    assert!(
        line.contains("no credentials match") && line.contains(&auth.host()),
        "{line}"
    );
    report(
        rows,
        "credentials only for other hosts",
        Some(Reason::from(error.kind())),
        &line,
    );
}

/// CA files that are not certificates, and one that is missing.
async fn ca_files_that_are_not_certificates(fixture: &Fixture, rows: &mut Vec<String>) {
    let Fixture {
        plain,
        auth,
        pushed,
        ..
    } = fixture;
    let empty_config = config_dir("{}");
    let destination = format!("{}/mirror", auth.host());
    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        garbage.path(),
        "-----BEGIN CERTIFICATE-----\nthis is not base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let not_pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_pem.path(), [0u8, 159, 146, 150, 1, 2, 3]).unwrap();
    for (what, path, fact) in [
        (
            "garbage PEM CA",
            garbage.path(),
            "certificate 1 is not valid PEM",
        ),
        ("binary CA file", not_pem.path(), "PEM"),
    ] {
        let mut endpoint = direct(auth);
        endpoint.ca_pem = Some(std::fs::read(path).unwrap());
        let request = copy_request(
            pushed.reference.clone(),
            destination.clone(),
            direct(plain),
            endpoint,
            fast_settings(),
        );
        let error = bounded(what, copy_bundle(&request, &Progress::default()))
            .await
            .unwrap_err();
        assert_eq!(
            Reason::from(error.kind()),
            Reason::InvalidSecret,
            "{what}: {error}"
        );
        let config = auth.docker_config_dir();
        let (code, _, stderr, _) = cli(copy_args(
            &pushed.reference,
            &destination,
            &config,
            &["--destination-ca-file", path.to_str().unwrap()],
        ))
        .await;
        let line = single_error_line(what, code, &stderr);
        assert!(
            line.contains(fact) && line.contains("--destination-ca-file"),
            "{what}: {line}"
        );
        report(rows, what, Some(Reason::from(error.kind())), &line);
    }
    let (code, _, stderr, _) = cli(copy_args(
        &pushed.reference,
        &destination,
        empty_config.path(),
        &["--destination-ca-file", "/nonexistent/ca.pem"],
    ))
    .await;
    let line = single_error_line("missing CA file", code, &stderr);
    assert!(line.contains("/nonexistent/ca.pem"), "{line}");
    report(rows, "missing CA file", None, &line);
}

/// Sources that are not (valid) bundles.
async fn sources_that_are_not_bundles(fixture: &Fixture, rows: &mut Vec<String>) {
    let Fixture {
        plain,
        image,
        ghost,
        ..
    } = fixture;
    let empty_config = config_dir("{}");
    let sources = [
        (
            "a plain image",
            image.reference.clone(),
            "not a CNAB bundle",
        ),
        (
            "an index naming a component missing from bundle.json",
            ghost.reference.clone(),
            "ghost-component",
        ),
    ];
    for (what, source, fact) in sources {
        let request = copy_request(
            source.clone(),
            format!("{}/mirror", plain.host()),
            direct(plain),
            direct(plain),
            fast_settings(),
        );
        let error = bounded(what, copy_bundle(&request, &Progress::default()))
            .await
            .unwrap_err();
        assert_eq!(
            Reason::from(error.kind()),
            Reason::NotABundle,
            "{what}: {error}"
        );
        assert!(error.to_string().contains(fact), "{what}: {error}");
        let (code, _, stderr, _) = cli(copy_args(
            &source,
            &format!("{}/mirror", plain.host()),
            empty_config.path(),
            &[],
        ))
        .await;
        let line = single_error_line(what, code, &stderr);
        assert!(line.contains(fact), "{what}: {line}");
        report(rows, what, Some(Reason::from(error.kind())), &line);
    }
}

// ---------------------------------------------------------------------------------------------
// The controller rows of the bad-input table: one reconcile per row against the fake API server
// (serving the row's BundleCopy and Secrets) and real registries.
// `cargo test --test integration bad_input_controller`
// ---------------------------------------------------------------------------------------------

const NAMESPACE: &str = "team-bad";
const OBJECT_NAME: &str = "bad";
/// In every credential and CA the rows hand over; it must never appear in a status or an Event.
const SECRET_MARKER: &str = "s3cret-Marker";
/// A reconcile of a bad row ends well within this (no copy is long); more means a hang.
const RECONCILE_BOUND: Duration = Duration::from_secs(60);
/// Requests one reconcile of a bad row may send (Secret reads, two patches, two Events); more
/// means it loops.
const MAX_REQUESTS_PER_RECONCILE: usize = 8;

/// One controller row: a BundleCopy spec, the Secrets in its namespace, and what the Ready
/// condition must say.
struct ControllerRow {
    what: &'static str,
    spec: serde_json::Value,
    secrets: Vec<Secret>,
    reason: Reason,
    /// Fragments the Ready message must hold: the Secret or field at fault and the fix.
    facts: Vec<String>,
    /// Permanent (Stalled, slow retry) or transient (backoff, not Stalled).
    permanent: bool,
}

fn secret_of(name: &str, type_: Option<&str>, data: &[(&str, &[u8])]) -> Secret {
    let data: std::collections::BTreeMap<String, k8s_openapi::ByteString> = data
        .iter()
        .map(|(key, value)| (key.to_string(), k8s_openapi::ByteString(value.to_vec())))
        .collect();
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(NAMESPACE.to_string()),
            ..Default::default()
        },
        type_: type_.map(str::to_string),
        data: (!data.is_empty()).then_some(data),
        ..Default::default()
    }
}

fn docker_secret(name: &str, json: &str) -> Secret {
    secret_of(
        name,
        Some("kubernetes.io/dockerconfigjson"),
        &[(".dockerconfigjson", json.as_bytes())],
    )
}

/// What the fake API server saw during one reconcile.
struct Seen {
    requests: usize,
    secret_reads: usize,
    status_patches: Vec<serde_json::Value>,
    events: Vec<serde_json::Value>,
    unexpected: Vec<String>,
}

/// Runs one reconcile of `object` against the fake API server holding it and `secrets`; returns
/// its Action and what the server saw. Panics (naming the row) on a reconcile error, a panic or
/// a hang.
async fn reconcile_row(
    what: &str,
    object: &BundleCopy,
    secrets: &[Secret],
) -> (kube::runtime::controller::Action, Seen) {
    let mut state = ApiState::default();
    state.objects.insert(
        OBJECT_NAME.to_string(),
        serde_json::to_value(object).unwrap(),
    );
    for secret in secrets {
        let name = secret.metadata.name.clone().unwrap();
        state
            .secrets
            .insert(name, serde_json::to_value(secret).unwrap());
    }
    let api = FakeApiServer::start(NAMESPACE, state).await;
    let context = Arc::new(Context::new(
        api.client(),
        Arc::new(Metrics::new()),
        EngineSettings::default(),
        1,
    ));
    let reconciling = tokio::spawn(reconcile(
        Arc::new(DeserializeGuard(Ok(object.clone()))),
        context,
    ));
    let action = tokio::time::timeout(RECONCILE_BOUND, reconciling)
        .await
        .unwrap_or_else(|_| panic!("{what}: the reconcile did not end within {RECONCILE_BOUND:?}"))
        .unwrap_or_else(|panic| panic!("{what}: the reconcile panicked: {panic}"))
        .unwrap_or_else(|error| {
            panic!("{what}: a bad input must end in the status, not in an error: {error}")
        });
    let state = api.state.lock().unwrap();
    let seen = Seen {
        requests: state.requests.len(),
        secret_reads: state.secret_reads,
        status_patches: state
            .status_patches
            .iter()
            .map(|(_, status)| status.clone())
            .collect(),
        events: state.events.clone(),
        unexpected: state.unexpected.clone(),
    };
    (action, seen)
}

fn bundle_copy(spec: &serde_json::Value, status: Option<&serde_json::Value>) -> BundleCopy {
    serde_json::from_value(bundle_copy_object(
        NAMESPACE,
        OBJECT_NAME,
        1,
        spec.clone(),
        status.cloned(),
    ))
    .unwrap()
}

fn condition(status: &serde_json::Value, type_: &str) -> (String, String, String) {
    condition_of(status, type_).unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_controller_rows_end_in_a_reason_a_clear_message_and_a_slow_retry() {
    let fixture = Fixture::start().await;
    let mut rows = secret_and_registry_rows(&fixture);
    rows.extend(invalid_spec_rows(&fixture));
    let mut table = Vec::new();
    for row in &rows {
        table.push(check_controller_row(row, &fixture.auth).await);
    }
    let Fixture { plain, auth, .. } = &fixture;
    // Nothing reached the destinations.
    assert!(
        plain
            .client()
            .head_manifest("mirror/app", "v1")
            .await
            .is_none()
    );
    assert!(
        auth.client()
            .head_manifest("team/app", "v1")
            .await
            .is_none()
    );
    eprintln!("| controller input | Ready reason | Ready message |\n|---|---|---|");
    for line in table {
        eprintln!("{line}");
    }
}

fn facts(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Bad Secrets, CA Secrets and registries, as a BundleCopy meets them.
fn secret_and_registry_rows(fixture: &Fixture) -> Vec<ControllerRow> {
    let Fixture {
        plain,
        auth,
        pushed,
        image,
        ghost,
    } = fixture;
    let host = auth.host();
    let user_and_secret = format!("{}:{SECRET_MARKER}", auth.username());
    let good_ca = secret_of(
        "registry-ca",
        Some("Opaque"),
        &[("ca.crt", auth.ca_pem().unwrap().as_bytes())],
    );
    // The usual shape: credentials and CA for an authenticated TLS destination.
    let authenticated = |extra: serde_json::Value| {
        let mut spec = serde_json::json!({
            "source": {"reference": pushed.reference},
            "destination": {"reference": format!("{host}/team"),
                            "credentials": [{"name": "push-creds"}],
                            "caSecretRef": {"name": "registry-ca"}},
        });
        json_merge(&mut spec, extra);
        spec
    };
    let with_ca = |credentials: Secret| vec![credentials, good_ca.clone()];
    let field = "spec.destination.credentials";
    let named = "\"push-creds\"";
    let kubectl_fix = "kubectl create secret docker-registry";

    let mut rows = vec![
        ControllerRow {
            what: "a Secret that does not exist",
            spec: authenticated(serde_json::json!({})),
            secrets: vec![good_ca.clone()],
            reason: Reason::SecretNotFound,
            facts: facts(&[named, field, "create it or fix the name"]),
            permanent: true,
        },
        ControllerRow {
            what: "a Secret of the wrong type (Opaque)",
            spec: authenticated(serde_json::json!({})),
            secrets: with_ca(secret_of(
                "push-creds",
                Some("Opaque"),
                &[(".dockerconfigjson", auth.docker_config_json().as_bytes())],
            )),
            reason: Reason::InvalidSecret,
            facts: facts(&[named, field, "has type Opaque", kubectl_fix]),
            permanent: true,
        },
        ControllerRow {
            what: "a Secret of the wrong type (basic-auth)",
            spec: authenticated(serde_json::json!({})),
            secrets: with_ca(secret_of(
                "push-creds",
                Some("kubernetes.io/basic-auth"),
                &[
                    ("username", auth.username().as_bytes()),
                    ("password", SECRET_MARKER.as_bytes()),
                ],
            )),
            reason: Reason::InvalidSecret,
            facts: facts(&[named, field, "kubernetes.io/basic-auth", kubectl_fix]),
            permanent: true,
        },
        ControllerRow {
            what: "a dockerconfigjson Secret without its key",
            spec: authenticated(serde_json::json!({})),
            secrets: with_ca(secret_of(
                "push-creds",
                Some("kubernetes.io/dockerconfigjson"),
                &[("config.json", user_and_secret.as_bytes())],
            )),
            reason: Reason::InvalidSecret,
            facts: facts(&[named, field, "has no key .dockerconfigjson", kubectl_fix]),
            permanent: true,
        },
        ControllerRow {
            what: "a dockercfg Secret without any data",
            spec: authenticated(serde_json::json!({})),
            secrets: with_ca(secret_of("push-creds", Some("kubernetes.io/dockercfg"), &[])),
            reason: Reason::InvalidSecret,
            facts: facts(&[named, field, "has no key .dockercfg", kubectl_fix]),
            permanent: true,
        },
        ControllerRow {
            what: "a Secret with invalid JSON",
            spec: authenticated(serde_json::json!({})),
            secrets: with_ca(docker_secret(
                "push-creds",
                &format!(r#"{{"auths": {{"{host}": {{"password": "{SECRET_MARKER}" "username": "u"}}}}}}"#),
            )),
            reason: Reason::InvalidSecret,
            facts: facts(&[named, field, "key .dockerconfigjson", "not valid JSON", "fix the JSON syntax"]),
            permanent: true,
        },
        ControllerRow {
            what: "a Secret with invalid base64 in auth",
            spec: authenticated(serde_json::json!({})),
            secrets: with_ca(docker_secret(
                "push-creds",
                &format!(r#"{{"auths":{{"{host}":{{"auth":"%{SECRET_MARKER}%"}}}}}}"#),
            )),
            reason: Reason::InvalidSecret,
            facts: facts(&[named, field, "not valid base64", "USERNAME:PASSWORD"]),
            permanent: true,
        },
        ControllerRow {
            what: "a Secret whose auth has no colon",
            spec: authenticated(serde_json::json!({})),
            secrets: with_ca(docker_secret(
                "push-creds",
                &format!(r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#, STANDARD.encode(SECRET_MARKER)),
            )),
            reason: Reason::InvalidSecret,
            facts: facts(&[named, field, "USERNAME:PASSWORD"]),
            permanent: true,
        },
        ControllerRow {
            what: "a Secret with an empty username",
            spec: authenticated(serde_json::json!({})),
            secrets: with_ca(docker_secret(
                "push-creds",
                &format!(
                    r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
                    STANDARD.encode(format!(":{SECRET_MARKER}"))
                ),
            )),
            reason: Reason::InvalidSecret,
            facts: facts(&[named, field, "empty username"]),
            permanent: true,
        },
        ControllerRow {
            what: "a Secret with credentials only for other hosts",
            spec: authenticated(serde_json::json!({})),
            secrets: with_ca(docker_secret(
                "push-creds",
                &format!(
                    r#"{{"auths":{{"other.example.com":{{"auth":"{0}"}},"127.0.0.1:1":{{"auth":"{0}"}}}}}}"#,
                    STANDARD.encode(&user_and_secret)
                ),
            )),
            reason: Reason::AuthenticationFailed,
            facts: facts(&[named, field, "no credentials match", &host]),
            permanent: true,
        },
        ControllerRow {
            what: "a source credentials Secret that does not exist",
            spec: authenticated(serde_json::json!({"source": {"credentials": [{"name": "pull-creds"}]}})),
            secrets: with_ca(docker_secret("push-creds", &auth.docker_config_json())),
            reason: Reason::SecretNotFound,
            facts: facts(&["\"pull-creds\"", "spec.source.credentials", "create it or fix the name"]),
            permanent: true,
        },
        ControllerRow {
            what: "a caSecretRef with garbage PEM",
            spec: authenticated(serde_json::json!({})),
            secrets: vec![
                docker_secret("push-creds", &auth.docker_config_json()),
                secret_of(
                    "registry-ca",
                    Some("Opaque"),
                    &[("ca.crt", b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")],
                ),
            ],
            reason: Reason::InvalidSecret,
            facts: facts(&["\"registry-ca\"", "spec.destination.caSecretRef", "key ca.crt", "not valid PEM", "put the registry's CA certificates (PEM) under key ca.crt"]),
            permanent: true,
        },
        ControllerRow {
            what: "a caSecretRef holding no certificate",
            spec: authenticated(serde_json::json!({})),
            secrets: vec![
                docker_secret("push-creds", &auth.docker_config_json()),
                secret_of("registry-ca", Some("Opaque"), &[("ca.crt", SECRET_MARKER.as_bytes())]),
            ],
            reason: Reason::InvalidSecret,
            facts: facts(&["\"registry-ca\"", "spec.destination.caSecretRef", "no PEM certificate", "put the registry's CA certificates (PEM) under key ca.crt"]),
            permanent: true,
        },
        ControllerRow {
            what: "a caSecretRef without its key",
            spec: authenticated(serde_json::json!({})),
            secrets: vec![
                docker_secret("push-creds", &auth.docker_config_json()),
                secret_of(
                    "registry-ca",
                    Some("kubernetes.io/tls"),
                    &[("tls.crt", auth.ca_pem().unwrap().as_bytes())],
                ),
            ],
            reason: Reason::InvalidSecret,
            facts: facts(&["\"registry-ca\"", "spec.destination.caSecretRef", "has no key ca.crt", "or name another key in spec.destination.caSecretRef.key"]),
            permanent: true,
        },
        ControllerRow {
            what: "a caSecretRef naming a missing Secret",
            spec: authenticated(serde_json::json!({})),
            secrets: vec![docker_secret("push-creds", &auth.docker_config_json())],
            reason: Reason::SecretNotFound,
            facts: facts(&["\"registry-ca\"", "spec.destination.caSecretRef", "create it or fix the name"]),
            permanent: true,
        },
        ControllerRow {
            what: "a source that is not a bundle",
            spec: serde_json::json!({"source": {"reference": image.reference},
                                     "destination": {"reference": format!("{}/mirror", plain.host())}}),
            secrets: vec![],
            reason: Reason::NotABundle,
            facts: facts(&["not a CNAB bundle"]),
            permanent: true,
        },
        ControllerRow {
            what: "an index naming a component missing from bundle.json",
            spec: serde_json::json!({"source": {"reference": ghost.reference},
                                     "destination": {"reference": format!("{}/mirror", plain.host())}}),
            secrets: vec![],
            reason: Reason::NotABundle,
            facts: facts(&["ghost-component"]),
            permanent: true,
        },
    ];
    // Not there yet (GitOps applied the BundleCopy before the bundle was published): transient.
    rows.push(ControllerRow {
        what: "a source tag that does not exist yet",
        spec: serde_json::json!({"source": {"reference": format!("{}/not/yet:v9", plain.host())},
                                 "destination": {"reference": format!("{}/mirror", plain.host())}}),
        secrets: vec![],
        reason: Reason::SourceNotFound,
        facts: facts(&["not/yet:v9", "the copy starts when it appears"]),
        permanent: false,
    });
    rows.push(ControllerRow {
        what: "a TLS destination whose CA is not trusted",
        spec: serde_json::json!({"source": {"reference": pushed.reference},
                                 "destination": {"reference": format!("{host}/team")}}),
        secrets: vec![],
        reason: Reason::TLSError,
        facts: facts(&[
            "spec.destination.caSecretRef",
            "spec.destination.insecure: true",
        ]),
        permanent: true,
    });
    rows
}

/// Specs the CRD's CEL rules reject, which a non-validating API server could still hand over.
fn invalid_spec_rows(fixture: &Fixture) -> Vec<ControllerRow> {
    let Fixture { plain, pushed, .. } = fixture;
    let mut rows = Vec::new();
    let spec_rows: [(&'static str, serde_json::Value, &[&str]); 9] = [
        (
            "interval banana",
            serde_json::json!({"interval": "banana"}),
            &["spec.interval", "\"banana\"", "use a number and a unit"],
        ),
        (
            "interval -5m",
            serde_json::json!({"interval": "-5m"}),
            &["spec.interval", "negative"],
        ),
        (
            "interval 10s",
            serde_json::json!({"interval": "10s"}),
            &[
                "spec.interval",
                "shorter than the minimum of 1m",
                "use 1m or more",
            ],
        ),
        (
            "interval 0",
            serde_json::json!({"interval": "0"}),
            &["spec.interval", "shorter than the minimum"],
        ),
        (
            "interval empty",
            serde_json::json!({"interval": ""}),
            &["spec.interval", "empty"],
        ),
        (
            "interval 10 (no unit)",
            serde_json::json!({"interval": "10"}),
            &["spec.interval", "unit"],
        ),
        (
            "empty source reference",
            serde_json::json!({"source": {"reference": ""}}),
            &["spec.source.reference", "empty"],
        ),
        (
            "empty destination reference",
            serde_json::json!({"destination": {"reference": ""}}),
            &["spec.destination.reference", "empty"],
        ),
        (
            "the destination is the source",
            serde_json::json!({"destination": {"reference": pushed.reference}}),
            &["spec.destination.reference", "is the source itself"],
        ),
    ];
    for (what, extra, expected) in spec_rows {
        let mut spec = serde_json::json!({
            "source": {"reference": pushed.reference},
            "destination": {"reference": format!("{}/mirror", plain.host())},
        });
        json_merge(&mut spec, extra);
        rows.push(ControllerRow {
            what,
            spec,
            secrets: vec![],
            reason: Reason::InvalidSpec,
            facts: facts(expected),
            permanent: true,
        });
    }

    rows
}

/// Runs one row's reconcile and checks everything a bad input must give: its Ready reason, a
/// message with the row's facts, Stalled and the retry as the row's kind says, no secret value
/// anywhere written, a CopyFailed Event, and a quiet slow retry. Returns the report line.
async fn check_controller_row(row: &ControllerRow, auth: &TestRegistry) -> String {
    let encoded_marker = STANDARD.encode(format!("{}:{SECRET_MARKER}", auth.username()));
    let what = row.what;
    let object = bundle_copy(&row.spec, None);
    let (action, seen) = reconcile_row(what, &object, &row.secrets).await;
    assert!(
        seen.unexpected.is_empty(),
        "{what}: unexpected requests {:?}",
        seen.unexpected
    );
    assert!(
        seen.requests <= MAX_REQUESTS_PER_RECONCILE,
        "{what}: {} API requests in one reconcile",
        seen.requests
    );
    let status = seen
        .status_patches
        .last()
        .unwrap_or_else(|| panic!("{what}: no status written"));
    let (ready, reason, message) = condition(status, "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", row.reason.as_str()),
        "{what}: {message}"
    );
    for fact in &row.facts {
        assert!(
            message.contains(fact.as_str()),
            "{what}: {fact:?} not in {message:?}"
        );
    }
    // A TLS failure carries one hint, in the resource's own terms: the
    // engine's generic advice is not repeated beside it.
    let hints: &[&str] = if row.reason.as_str() == "TLSError" {
        &["caSecretRef", "insecure", "registry's CA"]
    } else {
        &[]
    };
    for hint in hints {
        assert!(
            message.matches(*hint).count() <= 1,
            "{what}: {hint:?} more than once in {message:?}"
        );
    }
    let (stalled, stalled_reason, _) = condition(status, "Stalled");
    if row.permanent {
        assert_eq!(
            (stalled.as_str(), stalled_reason.as_str()),
            ("True", row.reason.as_str()),
            "{what}: a permanent problem is Stalled"
        );
        assert_eq!(
            action,
            kube::runtime::controller::Action::requeue(PERMANENT_RETRY),
            "{what}: the retry must be the slow one"
        );
    } else {
        assert_eq!(
            stalled, "False",
            "{what}: a transient problem is not Stalled"
        );
        assert_eq!(
            action,
            kube::runtime::controller::Action::requeue(TRANSIENT_BACKOFF_BASE),
            "{what}: the first retry must be the transient backoff's"
        );
    }
    assert!(PERMANENT_RETRY >= Duration::from_secs(600));
    // No secret value anywhere the controller wrote.
    let written = format!("{:?} {:?}", seen.status_patches, seen.events);
    for leak in [SECRET_MARKER, encoded_marker.as_str()] {
        assert!(
            !written.contains(leak),
            "{what}: the status or an Event leaks a secret: {written}"
        );
    }
    assert!(
        seen.events
            .iter()
            .any(|e| e["reason"] == "CopyFailed" && e["type"] == "Warning"),
        "{what}: no CopyFailed Event: {:?}",
        seen.events
    );
    if row.reason == Reason::InvalidSpec {
        assert!(
            seen.secret_reads == 0,
            "{what}: read Secrets for an invalid spec"
        );
    }

    // The slow retry of a problem found before any copy changes nothing: no patch, no Event.
    if matches!(
        row.reason,
        Reason::InvalidSpec | Reason::InvalidSecret | Reason::SecretNotFound
    ) {
        let again = bundle_copy(&row.spec, Some(status));
        let (action, seen_again) = reconcile_row(what, &again, &row.secrets).await;
        assert_eq!(
            action,
            kube::runtime::controller::Action::requeue(PERMANENT_RETRY),
            "{what}"
        );
        assert!(
            seen_again.status_patches.is_empty() && seen_again.events.is_empty(),
            "{what}: a retry with nothing changed wrote {:?} {:?}",
            seen_again.status_patches,
            seen_again.events
        );
    }
    format!("| {what} | {reason} | {message} |")
}

/// Merges `extra` into `target` (objects recursively; other values replace).
fn json_merge(target: &mut serde_json::Value, extra: serde_json::Value) {
    match (target, extra) {
        (serde_json::Value::Object(target), serde_json::Value::Object(extra)) => {
            for (key, value) in extra {
                json_merge(target.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (target, extra) => *target = extra,
    }
}
