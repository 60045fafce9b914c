//! Reconcile scenarios: the real `reconcile` against the shared fake API server and REAL
//! loopback registries behind the copy. Each test asserts the exact API requests: Secret reads,
//! status patches (server-side apply) and Event posts, in order, and that nothing else is sent.
//! `cargo test --test integration controller::reconcile`

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::Method;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use bundlecopy::operator::context::Context;
use bundlecopy::operator::crd::{BundleCopy, BundleCopyStatus};
use bundlecopy::operator::metrics::Metrics;
use bundlecopy::operator::reconcile::reconcile;
use bundlecopy_engine::EngineSettings;

use crate::support::fake_api::{ApiState, FakeApiServer, SeenRequest};
use crate::support::{
    BundleSpec, PushedBundle, RegistryKind, TestRegistry, assert_bundle_copied, push_bundle,
};

const NAMESPACE: &str = "team-a";
const NAME: &str = "hello";
/// How long one expected request may take to arrive (a copy runs before some of them).
const REQUEST_WAIT: Duration = Duration::from_secs(90);

/// The shared fake API server, and a cursor over the requests it logged: each `expect_*` checks
/// the next request a reconcile sent, in order.
struct ApiServer {
    fake: FakeApiServer,
    next: usize,
}

impl ApiServer {
    async fn start() -> ApiServer {
        ApiServer {
            fake: FakeApiServer::start(NAMESPACE, ApiState::default()).await,
            next: 0,
        }
    }

    /// The next logged request, waiting for it.
    async fn next(&mut self, expected: &str) -> SeenRequest {
        let deadline = tokio::time::Instant::now() + REQUEST_WAIT;
        loop {
            if let Some(request) = self.fake.state.lock().unwrap().requests.get(self.next) {
                self.next += 1;
                return request.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no request within {REQUEST_WAIT:?}; expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A GET of a Secret in the resource's namespace, which the server answered with `secret`
    /// (as `run_reconcile` put it there) or a 404.
    async fn expect_secret_get(&mut self, name: &str, secret: Option<&Secret>) {
        let received = self.next(&format!("GET Secret {name}")).await;
        assert_eq!(
            received.method,
            Method::GET,
            "expected GET of Secret {name}"
        );
        assert_eq!(
            received.path,
            format!("/api/v1/namespaces/{NAMESPACE}/secrets/{name}"),
            "Secrets are read only from the resource's namespace"
        );
        let held = self.fake.state.lock().unwrap().secrets.get(name).cloned();
        assert_eq!(
            held,
            secret.map(|s| serde_json::to_value(s).unwrap()),
            "the Secret {name} the server held"
        );
    }

    /// A server-side apply of the status; returns the status.
    async fn expect_status_patch(&mut self, object: &BundleCopy) -> BundleCopyStatus {
        let received = self.next("a status patch").await;
        let name = object.metadata.name.as_deref().unwrap_or_default();
        assert_eq!(
            (received.method.clone(), received.path.as_str()),
            (
                Method::PATCH,
                format!("/apis/bundlecopy.dev/v1alpha1/namespaces/{NAMESPACE}/bundlecopies/{name}/status").as_str()
            ),
            "expected a status patch, got {} {} {}",
            received.method,
            received.path,
            received.body
        );
        assert_eq!(
            received.content_type, "application/apply-patch+yaml",
            "server-side apply"
        );
        assert!(
            received.query.contains("fieldManager=bundlecopy-operator")
                && received.query.contains("force=true"),
            "{}",
            received.query
        );
        assert_eq!(received.body["apiVersion"], "bundlecopy.dev/v1alpha1");
        assert_eq!(received.body["kind"], "BundleCopy");
        assert!(
            received.body.get("spec").is_none(),
            "a status patch carries no spec"
        );
        serde_json::from_value(received.body["status"].clone()).unwrap()
    }

    /// A new Event about the resource; returns it.
    /// What the API server sees of a copy that runs to its end: the Copying status patch,
    /// CopyStarted, the final status patch and the Copied Event; the last two.
    async fn expect_a_whole_copy(&mut self, object: &BundleCopy) -> (BundleCopyStatus, Value) {
        self.expect_status_patch(object).await;
        self.expect_event("CopyStarted").await;
        let copied = self.expect_status_patch(object).await;
        let event = self.expect_event("Copied").await;
        (copied, event)
    }

    async fn expect_event(&mut self, reason: &str) -> Value {
        self.expect_event_as(reason, false).await
    }

    /// An Event about the resource; `repeat`: the Recorder folds a repeat of the same event
    /// into a series, a PATCH of the first one.
    async fn expect_event_as(&mut self, reason: &str, repeat: bool) -> Value {
        let received = self.next(&format!("an Event {reason}")).await;
        let events = format!("/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events");
        let expected_method = if repeat { Method::PATCH } else { Method::POST };
        assert!(
            received.method == expected_method
                && (received.path == events
                    || (repeat && received.path.starts_with(&format!("{events}/")))),
            "expected the Event {reason} ({expected_method}), got {} {} {}",
            received.method,
            received.path,
            received.body
        );
        let event = received.body;
        assert_eq!(event["reason"], reason, "{event}");
        assert_eq!(event["regarding"]["kind"], "BundleCopy");
        assert_eq!(event["regarding"]["name"], NAME);
        assert_eq!(event["reportingController"], "bundlecopy-operator");
        event
    }

    /// Nothing more is sent.
    async fn expect_silence(&mut self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let requests = self.fake.state.lock().unwrap().requests.clone();
        if let Some(request) = requests.get(self.next) {
            panic!("unexpected request {request}");
        }
    }
}

async fn new_context() -> (Arc<Context>, ApiServer) {
    let api = ApiServer::start().await;
    let mut context = Context::new(
        api.fake.client(),
        Arc::new(Metrics::new()),
        EngineSettings::default(),
        2,
    );
    // Loopback copies finish long before this: no progress patches interleave.
    context.progress_every = Duration::from_secs(3600);
    (Arc::new(context), api)
}

fn bundle_copy(generation: i64, spec: Value, status: Option<&BundleCopyStatus>) -> BundleCopy {
    let mut object: BundleCopy = serde_json::from_value(json!({
        "apiVersion": "bundlecopy.dev/v1alpha1",
        "kind": "BundleCopy",
        "metadata": {
            "name": NAME, "namespace": NAMESPACE, "uid": "6f1c1b1e-0000-4000-8000-000000000001",
            "generation": generation, "resourceVersion": "100",
        },
        "spec": spec,
    }))
    .unwrap();
    object.status = status.cloned();
    object
}

fn docker_config_secret(name: &str, config_json: &str) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": STANDARD.encode(config_json)},
    }))
    .unwrap()
}

fn ca_secret(name: &str, pem: &str) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "type": "Opaque",
        "data": {"ca.crt": STANDARD.encode(pem)},
    }))
    .unwrap()
}

fn condition<'a>(status: &'a BundleCopyStatus, type_: &str) -> (&'a str, &'a str, i64) {
    let condition = status
        .condition(type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:#?}"));
    (
        condition.status.as_str(),
        condition.reason.as_str(),
        condition.observed_generation.unwrap_or(-1),
    )
}

/// `status` as a fresh process finds it `minutes` after the copy: only lastCopyTime tells when
/// the source was last resolved.
fn copied_minutes_ago(status: &BundleCopyStatus, minutes: i64) -> BundleCopyStatus {
    BundleCopyStatus {
        last_copy_time: Some(Time(Timestamp::now() - SignedDuration::from_mins(minutes))),
        ..status.clone()
    }
}

/// Starts a reconcile of `object` with `secrets` in its namespace (the API server holds exactly
/// these, and the object as given).
async fn run_reconcile(
    api: &ApiServer,
    object: BundleCopy,
    context: &Arc<Context>,
    secrets: &[&Secret],
) -> tokio::task::JoinHandle<Action> {
    {
        let mut state = api.fake.state.lock().unwrap();
        state.secrets = secrets
            .iter()
            .map(|secret| {
                (
                    secret.metadata.name.clone().unwrap(),
                    serde_json::to_value(secret).unwrap(),
                )
            })
            .collect();
        state
            .objects
            .insert(NAME.to_string(), serde_json::to_value(&object).unwrap());
    }
    let context = context.clone();
    tokio::spawn(async move {
        reconcile(Arc::new(DeserializeGuard(Ok(object))), context)
            .await
            .expect("reconcile reports registry and Secret problems in the status, not as errors")
    })
}

/// A destination behind TLS and basic auth: credentials and CA come from Secrets.
struct AuthenticatedCopy {
    source: TestRegistry,
    destination: TestRegistry,
    pushed: PushedBundle,
    spec: Value,
    credentials: Secret,
    ca: Secret,
}

impl AuthenticatedCopy {
    async fn new() -> Self {
        let (source, destination) = tokio::join!(
            TestRegistry::start(RegistryKind::Plain),
            TestRegistry::start(RegistryKind::TlsBasicAuth)
        );
        let pushed = push_bundle(
            &source,
            "examples/hello",
            "v1",
            &BundleSpec::new("hello", "0.1.0").with_component(
                "db",
                crate::support::ImageFormat::Oci,
                &[3000],
            ),
        )
        .await;
        let spec = json!({
            "source": {"reference": pushed.reference},
            "destination": {
                "reference": format!("{}/team", destination.host()),
                "credentials": [{"name": "push-creds"}],
                "caSecretRef": {"name": "registry-ca"},
            },
        });
        let credentials = docker_config_secret("push-creds", &destination.docker_config_json());
        let ca = ca_secret("registry-ca", destination.ca_pem().unwrap());
        AuthenticatedCopy {
            source,
            destination,
            pushed,
            spec,
            credentials,
            ca,
        }
    }

    fn destination_reference(&self) -> String {
        format!("{}/team/hello:v1", self.destination.host())
    }
}

#[tokio::test]
async fn controller_first_copy_then_a_no_op() {
    let setup = AuthenticatedCopy::new().await;
    let (context, mut api) = new_context().await;
    let object = bundle_copy(1, setup.spec.clone(), None);

    let reconciling = run_reconcile(
        &api,
        object.clone(),
        &context,
        &[&setup.credentials, &setup.ca],
    )
    .await;
    api.expect_secret_get("push-creds", Some(&setup.credentials))
        .await;
    api.expect_secret_get("registry-ca", Some(&setup.ca)).await;
    let copying = api.expect_status_patch(&object).await;
    assert_eq!(condition(&copying, "Reconciling"), ("True", "Copying", 1));
    assert!(
        copying.condition("Ready").is_none(),
        "no Ready verdict before the first copy ends"
    );
    assert_eq!(copying.observed_generation, Some(1));
    assert_eq!(
        copying.destination.as_deref(),
        Some(setup.destination_reference().as_str())
    );
    let started = api.expect_event("CopyStarted").await;
    assert_eq!(started["type"], "Normal");
    assert!(
        started["note"]
            .as_str()
            .unwrap()
            .contains(&setup.pushed.reference),
        "{started}"
    );

    let copied = api.expect_status_patch(&object).await;
    assert_eq!(condition(&copied, "Ready"), ("True", "Copied", 1));
    assert_eq!(condition(&copied, "Reconciling"), ("False", "Copied", 1));
    assert_eq!(condition(&copied, "Stalled"), ("False", "Copied", 1));
    assert_eq!(
        copied.source_digest.as_deref(),
        Some(setup.pushed.index_digest.as_str())
    );
    assert_eq!(
        copied.destination_digest.as_deref(),
        Some(setup.pushed.index_digest.as_str())
    );
    assert_eq!(
        copied.short_digest.as_deref(),
        Some(&setup.pushed.index_digest[..19])
    );
    let bundle = copied.bundle.clone().unwrap();
    assert_eq!(
        (bundle.name.as_str(), bundle.version.as_str()),
        ("hello", "0.1.0")
    );
    let destination_repo = format!("{}/team/hello@", setup.destination.host());
    let mut names: Vec<&str> = copied.images.iter().map(|i| i.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["db", "invocation"]);
    for image in &copied.images {
        let original = setup
            .pushed
            .original_image_refs
            .get(&image.name)
            .map(String::as_str);
        assert!(
            image.relocated.starts_with(&destination_repo),
            "{} relocated to {}",
            image.name,
            image.relocated
        );
        assert!(
            original.is_some(),
            "{} is not an image of bundle.json",
            image.name
        );
    }
    let progress = copied.progress.unwrap();
    assert!(
        progress.blobs > 0
            && progress.copied + progress.mounted + progress.skipped == progress.blobs,
        "{progress:?}"
    );
    assert!(progress.bytes > 0);
    assert!(copied.last_copy_time.is_some());
    let done = api.expect_event("Copied").await;
    assert!(
        done["note"]
            .as_str()
            .unwrap()
            .contains(&setup.pushed.index_digest)
    );
    assert!(
        !done.to_string().contains(setup.destination.password()),
        "an Event leaks the password"
    );
    assert!(
        !serde_json::to_string(&copied)
            .unwrap()
            .contains(setup.destination.password())
    );

    assert_eq!(
        reconciling.await.unwrap(),
        Action::await_change(),
        "no interval: no requeue"
    );
    api.expect_silence().await;
    assert_bundle_copied(
        &setup.source,
        "examples/hello",
        &setup.destination,
        "team/hello",
        "v1",
        &setup.pushed.index_digest,
    )
    .await;
    let metrics = context.metrics.encode();
    assert!(
        metrics.contains("bundlecopy_reconciles_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bundlecopy_copy_duration_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bundlecopy_copies_in_flight 0"),
        "{metrics}"
    );

    // The controller sees its own status: same generation, same digest, destination holds it.
    let object = bundle_copy(1, setup.spec.clone(), Some(&copied));
    let again = run_reconcile(&api, object, &context, &[&setup.credentials, &setup.ca]).await;
    api.expect_secret_get("push-creds", Some(&setup.credentials))
        .await;
    api.expect_secret_get("registry-ca", Some(&setup.ca)).await;
    assert_eq!(again.await.unwrap(), Action::await_change());
    api.expect_silence().await;
    let metrics = context.metrics.encode();
    assert!(
        metrics.contains("bundlecopy_copy_duration_seconds_count 1"),
        "no second copy:\n{metrics}"
    );
}

#[tokio::test]
async fn controller_missing_secret_is_secret_not_found_and_stalled() {
    let setup = AuthenticatedCopy::new().await;
    let (context, mut api) = new_context().await;
    let object = bundle_copy(3, setup.spec.clone(), None);

    let reconciling = run_reconcile(&api, object.clone(), &context, &[&setup.ca]).await;
    api.expect_secret_get("push-creds", None).await;
    let status = api.expect_status_patch(&object).await;
    assert_eq!(condition(&status, "Ready"), ("False", "SecretNotFound", 3));
    assert_eq!(condition(&status, "Stalled"), ("True", "SecretNotFound", 3));
    assert_eq!(
        condition(&status, "Reconciling"),
        ("False", "SecretNotFound", 3)
    );
    let message = &status.condition("Ready").unwrap().message;
    assert!(
        message.contains("\"push-creds\"") && message.contains("spec.destination.credentials"),
        "{message}"
    );
    let event = api.expect_event("CopyFailed").await;
    assert_eq!(event["type"], "Warning");
    assert!(
        event["note"].as_str().unwrap().contains("SecretNotFound"),
        "{event}"
    );
    assert_eq!(
        reconciling.await.unwrap(),
        Action::requeue(Duration::from_secs(600)),
        "slow retry"
    );
    api.expect_silence().await;
    assert!(
        setup
            .destination
            .client()
            .head_manifest("team/hello", "v1")
            .await
            .is_none(),
        "nothing was copied"
    );
    assert!(
        context
            .metrics
            .encode()
            .contains("bundlecopy_reconcile_failures_total{reason=\"SecretNotFound\"} 1")
    );

    // A rerun before the cache has our write (same resourceVersion, no status yet), as when a
    // watch event lands mid-reconcile: it starts from what was written, so it writes nothing.
    let rerun = run_reconcile(&api, object.clone(), &context, &[&setup.ca]).await;
    api.expect_secret_get("push-creds", None).await;
    api.expect_silence().await;
    assert_eq!(
        rerun.await.unwrap(),
        Action::requeue(Duration::from_secs(600))
    );
}

#[tokio::test]
async fn controller_malformed_secrets_are_invalid_secret() {
    let setup = AuthenticatedCopy::new().await;
    let (context, mut api) = new_context().await;

    // An Opaque Secret where a registry credential is expected.
    let mut opaque = setup.credentials.clone();
    opaque.type_ = Some("Opaque".into());
    let object = bundle_copy(1, setup.spec.clone(), None);
    let reconciling = run_reconcile(&api, object.clone(), &context, &[&opaque, &setup.ca]).await;
    api.expect_secret_get("push-creds", Some(&opaque)).await;
    let status = api.expect_status_patch(&object).await;
    assert_eq!(condition(&status, "Ready"), ("False", "InvalidSecret", 1));
    assert_eq!(condition(&status, "Stalled"), ("True", "InvalidSecret", 1));
    let message = status.condition("Ready").unwrap().message.clone();
    assert!(
        message.contains("has type Opaque") && message.contains("kubernetes.io/dockerconfigjson"),
        "{message}"
    );
    api.expect_event("CopyFailed").await;
    assert_eq!(
        reconciling.await.unwrap(),
        Action::requeue(Duration::from_secs(600))
    );
    api.expect_silence().await;

    // Garbage in the CA Secret, with good credentials: the same reason, naming the CA Secret.
    let garbage_ca = ca_secret(
        "registry-ca",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    let object = bundle_copy(2, setup.spec.clone(), Some(&status));
    let reconciling = run_reconcile(
        &api,
        object.clone(),
        &context,
        &[&setup.credentials, &garbage_ca],
    )
    .await;
    api.expect_secret_get("push-creds", Some(&setup.credentials))
        .await;
    api.expect_secret_get("registry-ca", Some(&garbage_ca))
        .await;
    let status = api.expect_status_patch(&object).await;
    assert_eq!(condition(&status, "Ready"), ("False", "InvalidSecret", 2));
    let message = &status.condition("Ready").unwrap().message;
    assert!(
        message.contains("\"registry-ca\"") && message.contains("spec.destination.caSecretRef"),
        "{message}"
    );
    // Same reason again within minutes: one Event series, not a second Event.
    let repeat = api.expect_event_as("CopyFailed", true).await;
    assert_eq!(repeat["series"]["count"], 2, "{repeat}");
    reconciling.await.unwrap();
    api.expect_silence().await;
}

#[tokio::test]
async fn controller_wrong_password_is_authentication_failed() {
    let setup = AuthenticatedCopy::new().await;
    let (context, mut api) = new_context().await;
    let wrong = docker_config_secret(
        "push-creds",
        &setup.destination.docker_config_json().replace(
            &STANDARD.encode(format!(
                "{}:{}",
                setup.destination.username(),
                setup.destination.password()
            )),
            &STANDARD.encode(format!("{}:not-the-password", setup.destination.username())),
        ),
    );
    let object = bundle_copy(1, setup.spec.clone(), None);

    let reconciling = run_reconcile(&api, object.clone(), &context, &[&wrong, &setup.ca]).await;
    api.expect_secret_get("push-creds", Some(&wrong)).await;
    api.expect_secret_get("registry-ca", Some(&setup.ca)).await;
    let copying = api.expect_status_patch(&object).await;
    assert_eq!(condition(&copying, "Reconciling"), ("True", "Copying", 1));
    api.expect_event("CopyStarted").await;
    let failed = api.expect_status_patch(&object).await;
    assert_eq!(
        condition(&failed, "Ready"),
        ("False", "AuthenticationFailed", 1)
    );
    assert_eq!(
        condition(&failed, "Stalled"),
        ("True", "AuthenticationFailed", 1)
    );
    assert_eq!(
        condition(&failed, "Reconciling"),
        ("False", "AuthenticationFailed", 1)
    );
    let message = &failed.condition("Ready").unwrap().message;
    assert!(
        message.contains("spec.destination.credentials"),
        "{message}"
    );
    assert!(
        !message.contains("not-the-password"),
        "the message leaks the password: {message}"
    );
    let event = api.expect_event("CopyFailed").await;
    assert!(!event.to_string().contains("not-the-password"));
    assert_eq!(
        reconciling.await.unwrap(),
        Action::requeue(Duration::from_secs(600))
    );
    api.expect_silence().await;
}

#[tokio::test]
async fn controller_a_different_bundle_at_the_destination_is_destination_exists() {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    let pushed = push_bundle(&source, "hello", "v1", &BundleSpec::new("hello", "0.1.0")).await;
    let occupant = push_bundle(
        &destination,
        "team/hello",
        "v1",
        &BundleSpec::new("other", "9.9.9").with_seed(7),
    )
    .await;
    assert_ne!(pushed.index_digest, occupant.index_digest);
    let (context, mut api) = new_context().await;
    let spec = json!({
        "source": {"reference": pushed.reference},
        "destination": {"reference": format!("{}/team", destination.host())},
    });
    let object = bundle_copy(1, spec, None);

    let reconciling = run_reconcile(&api, object.clone(), &context, &[]).await;
    api.expect_status_patch(&object).await;
    api.expect_event("CopyStarted").await;
    let failed = api.expect_status_patch(&object).await;
    assert_eq!(
        condition(&failed, "Ready"),
        ("False", "DestinationExists", 1)
    );
    assert_eq!(
        condition(&failed, "Stalled"),
        ("True", "DestinationExists", 1)
    );
    let message = &failed.condition("Ready").unwrap().message;
    assert!(
        message.contains("force"),
        "the message says how to fix it: {message}"
    );
    api.expect_event("CopyFailed").await;
    assert_eq!(
        reconciling.await.unwrap(),
        Action::requeue(Duration::from_secs(600))
    );
    api.expect_silence().await;
    let (_, _, still) = destination
        .client()
        .get_manifest("team/hello", "v1")
        .await
        .unwrap();
    assert_eq!(
        still, occupant.index_digest,
        "the occupant was not overwritten"
    );
}

#[tokio::test]
async fn controller_suspend_reads_nothing_and_contacts_no_registry() {
    let registry = TestRegistry::start(RegistryKind::Plain).await;
    let host = registry.host();
    // A stopped registry: any registry traffic would end in Unreachable, not Suspended.
    registry.stop();
    let (context, mut api) = new_context().await;
    let spec = json!({
        "source": {"reference": format!("{host}/hello:v1"), "credentials": [{"name": "pull"}]},
        "destination": {"reference": format!("{host}/team")},
        "suspend": true,
    });
    let object = bundle_copy(4, spec, None);

    let reconciling = run_reconcile(&api, object.clone(), &context, &[]).await;
    let status = api.expect_status_patch(&object).await;
    assert_eq!(condition(&status, "Ready"), ("False", "Suspended", 4));
    assert_eq!(condition(&status, "Stalled"), ("False", "Suspended", 4));
    assert_eq!(reconciling.await.unwrap(), Action::await_change());
    api.expect_silence().await;

    // Suspended again: the status already says so, nothing is written.
    let object = bundle_copy(
        4,
        serde_json::to_value(&object.spec).unwrap(),
        Some(&status),
    );
    assert_eq!(
        run_reconcile(&api, object, &context, &[])
            .await
            .await
            .unwrap(),
        Action::await_change()
    );
    api.expect_silence().await;
}

#[tokio::test]
async fn controller_a_moved_source_tag_is_copied_again_at_the_interval() {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    let first = push_bundle(&source, "hello", "v1", &BundleSpec::new("hello", "0.1.0")).await;
    let spec = json!({
        "source": {"reference": first.reference},
        "destination": {"reference": format!("{}/team", destination.host())},
        "interval": "10m",
    });
    let (context, mut api) = new_context().await;
    let object = bundle_copy(1, spec.clone(), None);
    let reconciling = run_reconcile(&api, object.clone(), &context, &[]).await;
    let (copied, _) = api.expect_a_whole_copy(&object).await;
    assert_eq!(
        reconciling.await.unwrap(),
        Action::requeue(Duration::from_secs(600)),
        "requeue at the interval"
    );
    assert_eq!(
        copied.source_digest.as_deref(),
        Some(first.index_digest.as_str())
    );

    // The tag moves, but the interval has not passed: the source is not looked at.
    let second = push_bundle(
        &source,
        "hello",
        "v1",
        &BundleSpec::new("hello", "0.2.0").with_seed(2),
    )
    .await;
    assert_ne!(first.index_digest, second.index_digest);
    let object = bundle_copy(1, spec.clone(), Some(&copied));
    let action = run_reconcile(&api, object, &context, &[])
        .await
        .await
        .unwrap();
    api.expect_silence().await;
    assert_ne!(
        action,
        Action::await_change(),
        "requeued for the rest of the interval"
    );

    // Eleven minutes later (a fresh process, so only lastCopyTime tells when the source was
    // resolved): the moved tag is found and copied.
    let earlier = copied_minutes_ago(&copied, 11);
    let (context, mut api) = new_context().await;
    let object = bundle_copy(1, spec, Some(&earlier));
    let reconciling = run_reconcile(&api, object.clone(), &context, &[]).await;
    let copying = api.expect_status_patch(&object).await;
    assert_eq!(condition(&copying, "Reconciling"), ("True", "Copying", 1));
    assert!(
        copying
            .condition("Reconciling")
            .unwrap()
            .message
            .contains("source tag moved")
    );
    assert_eq!(
        condition(&copying, "Ready"),
        ("True", "Copied", 1),
        "the old copy is still in place"
    );
    api.expect_event("CopyStarted").await;
    let recopied = api.expect_status_patch(&object).await;
    assert_eq!(condition(&recopied, "Ready"), ("True", "Copied", 1));
    assert_eq!(
        recopied.source_digest.as_deref(),
        Some(second.index_digest.as_str())
    );
    assert_eq!(
        recopied.destination_digest.as_deref(),
        Some(second.index_digest.as_str())
    );
    assert_eq!(recopied.bundle.as_ref().unwrap().version, "0.2.0");
    api.expect_event("Copied").await;
    assert_eq!(
        reconciling.await.unwrap(),
        Action::requeue(Duration::from_secs(600))
    );
    api.expect_silence().await;
    assert_bundle_copied(
        &source,
        "hello",
        &destination,
        "team/hello",
        "v1",
        &second.index_digest,
    )
    .await;
}

#[tokio::test]
async fn controller_an_sbom_added_upstream_arrives_at_the_next_interval() {
    use crate::support::referrers::{
        Subject, add_to_tag_index, push_notation_signature, push_sbom,
    };
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    let pushed = push_bundle(&source, "hello", "v1", &BundleSpec::new("hello", "0.1.0")).await;
    let client = source.client();
    let index = Subject::new(
        &pushed.index_media_type,
        &pushed.index_digest,
        &pushed.index_bytes,
    );
    let signature = push_notation_signature(&client, "hello", &index, "release").await;
    add_to_tag_index(&client, "hello", &pushed.index_digest, &[&signature]).await;
    let spec = json!({
        "source": {"reference": pushed.reference},
        "destination": {"reference": format!("{}/team", destination.host())},
        "interval": "10m",
    });
    let (context, mut api) = new_context().await;
    let object = bundle_copy(1, spec.clone(), None);
    let reconciling = run_reconcile(&api, object.clone(), &context, &[]).await;
    let (copied, event) = api.expect_a_whole_copy(&object).await;
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("and 1 signatures/attestations"),
        "{event}"
    );
    assert_eq!(
        reconciling.await.unwrap(),
        Action::requeue(Duration::from_secs(600))
    );
    let referrers = copied.referrers.clone().unwrap();
    assert_eq!(referrers.count, 1);
    assert_eq!(referrers.items[0].digest, signature.digest);
    assert_eq!(referrers.items[0].subject, pushed.index_digest);
    assert_eq!(
        referrers.items[0].artifact_type,
        "application/vnd.cncf.notary.signature"
    );
    assert_eq!(referrers.items[0].found_by, "TagSchema");
    let ready = copied.condition("Ready").unwrap();
    assert!(
        ready.message.ends_with("and 1 signatures/attestations"),
        "{}",
        ready.message
    );

    // An SBOM is attested after release; the bundle's digest does not move.
    let sbom = push_sbom(&client, "hello", &index, "after release").await;
    add_to_tag_index(&client, "hello", &pushed.index_digest, &[&sbom]).await;
    let object = bundle_copy(1, spec.clone(), Some(&copied));
    run_reconcile(&api, object, &context, &[])
        .await
        .await
        .unwrap();
    api.expect_silence().await;

    // At the next check it is found and copied.
    let earlier = copied_minutes_ago(&copied, 11);
    let (context, mut api) = new_context().await;
    let object = bundle_copy(1, spec.clone(), Some(&earlier));
    let reconciling = run_reconcile(&api, object.clone(), &context, &[]).await;
    let copying = api.expect_status_patch(&object).await;
    let reconciling_message = &copying.condition("Reconciling").unwrap().message;
    assert!(
        reconciling_message.contains("signatures, attestations or SBOMs that were not copied"),
        "{reconciling_message}"
    );
    api.expect_event("CopyStarted").await;
    let recopied = api.expect_status_patch(&object).await;
    assert_eq!(condition(&recopied, "Ready"), ("True", "UpToDate", 1));
    assert!(
        recopied
            .condition("Ready")
            .unwrap()
            .message
            .ends_with("and 2 signatures/attestations")
    );
    assert_eq!(recopied.referrers.as_ref().unwrap().count, 2);
    let event = api.expect_event("Copied").await;
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("and 2 signatures/attestations"),
        "{event}"
    );
    assert_eq!(
        reconciling.await.unwrap(),
        Action::requeue(Duration::from_secs(600))
    );
    api.expect_silence().await;
    let copied_sbom = destination
        .client()
        .get_manifest("team/hello", &sbom.digest)
        .await
        .expect("the SBOM is at the destination");
    assert_eq!(copied_sbom.0, sbom.bytes);

    // The check after that finds nothing new: nothing is written.
    let earlier = copied_minutes_ago(&recopied, 11);
    let (context, mut api) = new_context().await;
    let object = bundle_copy(1, spec, Some(&earlier));
    assert_eq!(
        run_reconcile(&api, object, &context, &[])
            .await
            .await
            .unwrap(),
        Action::requeue(Duration::from_secs(600))
    );
    api.expect_silence().await;
}

#[tokio::test]
async fn controller_transient_failures_back_off_without_stalling() {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    let pushed = push_bundle(&source, "hello", "v1", &BundleSpec::new("hello", "0.1.0")).await;
    // The source goes away: Unreachable is transient.
    source.stop();
    let (mut context, mut api) = new_context().await;
    // Fail fast instead of retrying inside the engine.
    let engine = EngineSettings {
        max_attempts: 1,
        connect_timeout: Duration::from_secs(2),
        ..EngineSettings::default()
    };
    Arc::get_mut(&mut context).unwrap().engine = engine;
    let spec = json!({
        "source": {"reference": pushed.reference},
        "destination": {"reference": format!("{}/team", destination.host())},
    });
    let object = bundle_copy(1, spec.clone(), None);

    let reconciling = run_reconcile(&api, object.clone(), &context, &[]).await;
    api.expect_status_patch(&object).await;
    api.expect_event("CopyStarted").await;
    let failed = api.expect_status_patch(&object).await;
    assert_eq!(condition(&failed, "Ready"), ("False", "Unreachable", 1));
    assert_eq!(
        condition(&failed, "Stalled"),
        ("False", "Unreachable", 1),
        "transient: not stalled"
    );
    api.expect_event("CopyFailed").await;
    assert_eq!(
        reconciling.await.unwrap(),
        Action::requeue(Duration::from_secs(5))
    );
    api.expect_silence().await;

    // The retry fails the same way: the wait doubles and the unchanged status is not rewritten
    // (only Reconciling flips for the copy and back).
    let object = bundle_copy(1, spec.clone(), Some(&failed));
    let reconciling = run_reconcile(&api, object.clone(), &context, &[]).await;
    let copying = api.expect_status_patch(&object).await;
    assert_eq!(condition(&copying, "Reconciling"), ("True", "Copying", 1));
    assert_eq!(condition(&copying, "Ready"), ("False", "Unreachable", 1));
    api.expect_event_as("CopyStarted", true).await;
    let failed_again = api.expect_status_patch(&object).await;
    assert_eq!(
        condition(&failed_again, "Ready"),
        ("False", "Unreachable", 1)
    );
    assert_eq!(
        failed_again
            .condition("Ready")
            .unwrap()
            .last_transition_time,
        failed.condition("Ready").unwrap().last_transition_time,
        "Ready stayed False: its transition time stays"
    );
    api.expect_event_as("CopyFailed", true).await;
    assert_eq!(
        reconciling.await.unwrap(),
        Action::requeue(Duration::from_secs(10))
    );
    api.expect_silence().await;

    // The registry is back: the copy succeeds and the backoff is forgotten.
    source.start_again().await;
    let object = bundle_copy(1, spec, Some(&failed_again));
    let reconciling = run_reconcile(&api, object.clone(), &context, &[]).await;
    api.expect_status_patch(&object).await;
    api.expect_event_as("CopyStarted", true).await;
    let copied = api.expect_status_patch(&object).await;
    assert_eq!(condition(&copied, "Ready"), ("True", "Copied", 1));
    assert_eq!(condition(&copied, "Stalled"), ("False", "Copied", 1));
    api.expect_event("Copied").await;
    assert_eq!(reconciling.await.unwrap(), Action::await_change());
    api.expect_silence().await;
    let metrics = context.metrics.encode();
    assert!(
        metrics.contains("bundlecopy_reconcile_failures_total{reason=\"Unreachable\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn controller_reports_progress_during_a_copy_and_metrics_are_scraped() {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    let spec = BundleSpec::new("big", "1.0.0").with_component(
        "data",
        crate::support::ImageFormat::Oci,
        &[24 << 20, 16 << 20],
    );
    let pushed = push_bundle(&source, "big", "v1", &spec).await;
    let (mut context, mut api) = new_context().await;
    Arc::get_mut(&mut context).unwrap().progress_every = Duration::from_millis(1);
    let object = bundle_copy(
        1,
        json!({
            "source": {"reference": pushed.reference},
            "destination": {"reference": format!("{}/mirror", destination.host())},
        }),
        None,
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let app = bundlecopy::operator::health::router(
        context.metrics.clone(),
        bundlecopy::operator::health::Readiness::default(),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let reconciling = run_reconcile(&api, object.clone(), &context, &[]).await;
    let first = api.expect_status_patch(&object).await;
    assert_eq!(condition(&first, "Reconciling"), ("True", "Copying", 1));
    api.expect_event("CopyStarted").await;
    let mut progress_patches = Vec::new();
    let last = loop {
        let status = api.expect_status_patch(&object).await;
        if status.condition("Ready").is_some() {
            break status;
        }
        assert_eq!(condition(&status, "Reconciling"), ("True", "Copying", 1));
        progress_patches.push(status.progress.unwrap());
    };
    assert!(
        !progress_patches.is_empty(),
        "a 40 MiB copy reports progress at least once"
    );
    for pair in progress_patches.windows(2) {
        assert!(
            pair[1].bytes >= pair[0].bytes,
            "progress goes forward: {progress_patches:?}"
        );
    }
    let done = last.progress.unwrap();
    assert!(done.bytes >= 40 << 20, "{done:?}");
    api.expect_event("Copied").await;
    reconciling.await.unwrap();

    let scraped = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> u64 {
        scraped
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{scraped}"))
    };
    assert_eq!(value("bundlecopy_reconciles_total"), 1);
    assert_eq!(value("bundlecopy_copy_duration_seconds_count"), 1);
    assert!(value("bundlecopy_copied_bytes_total") >= 40 << 20);
    assert_eq!(
        value("bundlecopy_blobs_total{action=\"copied\"}"),
        done.copied as u64
    );
    assert_eq!(value("bundlecopy_copies_in_flight"), 0);
    server.abort();
}
