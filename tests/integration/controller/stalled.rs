//! Permanent problems through the whole `bundlecopy controller` process, not one reconcile: a
//! missing Secret, a garbage CA Secret, a garbage interval and a source that is not a bundle are
//! each reconciled once, written once (the fake API server echoes every status patch as a
//! MODIFIED watch event, as a real one does) and then left alone: no hot loop. Creating the
//! missing Secret triggers exactly one more reconcile, which copies the bundle.
//! `cargo test --test integration controller::stalled`

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::support::fake_api::{ApiState, ControllerProcess, FakeApiServer, bundle_copy_object};
use crate::support::{
    BundleSpec, RegistryKind, TestRegistry, assert_bundle_copied, push_bundle, push_plain_image,
};

const NAMESPACE: &str = "bc-stalled";
/// How long the controller is watched for further activity once every object has its status.
const SETTLE: Duration = Duration::from_secs(6);

fn secret(name: &str, type_: &str, key: &str, value: &[u8]) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": NAMESPACE, "resourceVersion": "1"},
           "type": type_, "data": {key: STANDARD.encode(value)}})
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_stalled_objects_are_written_once_and_a_new_secret_unblocks_one() {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::TlsBasicAuth)
    );
    let pushed = push_bundle(&source, "hello", "v1", &BundleSpec::new("hello", "0.1.0")).await;
    let image = push_plain_image(&source, "plain/image", "v1").await;
    let ca_pem = destination.ca_pem().unwrap().as_bytes();
    let credentials = destination.docker_config_json();

    let authenticated = |credentials: &str, ca: &str, repository: &str| {
        json!({"source": {"reference": pushed.reference},
               "destination": {"reference": format!("{}/{repository}", destination.host()),
                               "credentials": [{"name": credentials}],
                               "caSecretRef": {"name": ca}}})
    };
    let objects = [
        (
            "missing-secret",
            authenticated("push-creds", "registry-ca", "team"),
            "SecretNotFound",
        ),
        (
            "garbage-ca",
            authenticated("other-creds", "garbage-ca", "other"),
            "InvalidSecret",
        ),
        (
            "banana-interval",
            json!({"source": {"reference": pushed.reference},
                   "destination": {"reference": format!("{}/x", destination.host())},
                   "interval": "banana"}),
            "InvalidSpec",
        ),
        (
            "not-a-bundle",
            json!({"source": {"reference": image.reference},
                   "destination": {"reference": format!("{}/mirror", source.host())}}),
            "NotABundle",
        ),
    ];
    let mut state = ApiState::default();
    for (index, (name, spec, _)) in objects.iter().enumerate() {
        state.objects.insert(
            name.to_string(),
            bundle_copy_object(NAMESPACE, name, index as u32 + 1, spec.clone(), None),
        );
    }
    for secret in [
        secret("registry-ca", "Opaque", "ca.crt", ca_pem),
        secret(
            "other-creds",
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            credentials.as_bytes(),
        ),
        secret(
            "garbage-ca",
            "Opaque",
            "ca.crt",
            b"-----BEGIN CERTIFICATE-----\n%%%\n",
        ),
    ] {
        let name = secret["metadata"]["name"].as_str().unwrap().to_string();
        state.secrets.insert(name, secret);
    }
    let api = FakeApiServer::start(NAMESPACE, state).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());
    let mut controller =
        ControllerProcess::start(&kubeconfig, NAMESPACE, dir.path(), "controller.log", &[]);
    controller.wait_ready(Duration::from_secs(60)).await;

    // Every object ends in its reason.
    let reasons = || {
        let state = api.state.lock().unwrap();
        objects
            .iter()
            .map(|(name, _, _)| {
                state
                    .last_ready(name)
                    .map(|(_, reason)| reason)
                    .unwrap_or_default()
            })
            .collect::<Vec<String>>()
    };
    // The CopyFailed Event follows the status patch, so an object is done when it has both.
    let failure_events = || {
        let state = api.state.lock().unwrap();
        objects
            .iter()
            .filter(|(name, _, _)| state.has_event(name, "CopyFailed"))
            .count()
    };
    let expected: Vec<&str> = objects.iter().map(|(_, _, reason)| *reason).collect();
    controller
        .wait_until(
            Duration::from_secs(60),
            || reasons() == expected && failure_events() == objects.len(),
            || {
                format!(
                    "reasons {:?}, expected {expected:?}; {} of {} CopyFailed Events",
                    reasons(),
                    failure_events(),
                    objects.len()
                )
            },
        )
        .await;

    // Then nothing: no further reconcile, patch or Event while the echoes of our own patches
    // arrive.
    let counts = |api: &FakeApiServer| {
        let state = api.state.lock().unwrap();
        (state.status_patches.len(), state.events.len())
    };
    let settled_at = counts(&api);
    let reconciles_at = controller.metric("bundlecopy_reconciles_total").await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        counts(&api),
        settled_at,
        "the stalled objects kept being written:\n{}",
        controller.log()
    );
    let reconciles = controller.metric("bundlecopy_reconciles_total").await;
    assert_eq!(
        reconciles,
        reconciles_at,
        "no retry loop: no reconcile while the stalled objects wait:\n{}",
        controller.log()
    );
    // One reconcile per object; on a loaded machine kube-runtime may run one object a second
    // time when a watch event lands while its first reconcile is still running.
    let reconciles = reconciles.unwrap_or_default();
    let stalled_reconciles = reconciles;
    assert!(
        reconciles >= objects.len() as f64 && reconciles <= 2.0 * objects.len() as f64,
        "{reconciles} reconciles for {} objects:\n{}",
        objects.len(),
        controller.log()
    );
    {
        let state = api.state.lock().unwrap();
        assert!(
            state.echoes_delivered > 0,
            "the controller's watch saw none of its own patches"
        );
        for (name, _, reason) in &objects {
            let patches = state.patches_of(name);
            // A copy attempt writes Copying first; the others write the failure only.
            let most = if *reason == "NotABundle" { 2 } else { 1 };
            assert!(
                !patches.is_empty() && patches.len() <= most,
                "{name}: {} status patches",
                patches.len()
            );
            let stalled = patches.last().unwrap()["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Stalled")
                .cloned()
                .unwrap();
            assert_eq!(stalled["status"], "True", "{name}: {stalled}");
        }
    }

    // The missing Secret appears: that object, and only it, is reconciled again and copied.
    api.put_secret(secret(
        "push-creds",
        "kubernetes.io/dockerconfigjson",
        ".dockerconfigjson",
        credentials.as_bytes(),
    ));
    // Done when both the Ready patch and the Copied Event that follows it have arrived.
    let copied = || {
        let state = api.state.lock().unwrap();
        state.last_ready("missing-secret") == Some(("True".to_string(), "Copied".to_string()))
            && state.has_event("missing-secret", "Copied")
    };
    controller
        .wait_until(Duration::from_secs(60), copied, || {
            "not copied after the Secret's creation".into()
        })
        .await;
    assert_bundle_copied(
        &source,
        "hello",
        &destination,
        "team/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
    let before_settle = counts(&api);
    tokio::time::sleep(SETTLE).await;
    assert_eq!(counts(&api), before_settle, "writes after the copy settled");
    // One more reconcile, or two when the echo of its Copying patch lands mid-copy (the rerun
    // finds the copy done and writes nothing, as the settled counts above show).
    let more = controller
        .metric("bundlecopy_reconciles_total")
        .await
        .unwrap_or_default()
        - stalled_reconciles;
    assert!(
        (1.0..=2.0).contains(&more),
        "the new Secret triggers the object naming it only: {more} more reconciles:\n{}",
        controller.log()
    );
    controller.stop(Duration::from_secs(20)).await;
    let state = api.state.lock().unwrap();
    assert!(
        state.unexpected.is_empty(),
        "unexpected requests: {:?}",
        state.unexpected
    );
}
