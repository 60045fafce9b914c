//! BundleCopies that do not even deserialize (a required field missing, a number where a string
//! belongs, an empty spec), as an API server without the CRD's schema (an older CRD, or none)
//! would hand them over, listed next to a good one: the `bundlecopy controller` process must not
//! crash or stall its watch (kube-rs/kube#774); each malformed object gets Ready False /
//! InvalidSpec naming what is wrong, written once (a restarted controller reads the stored status
//! and writes nothing); the good one is copied; a malformed one whose spec is fixed is copied.
//! `cargo test --test integration controller::malformed`

use std::time::Duration;

use serde_json::json;

use crate::support::fake_api::{
    ApiState, ControllerProcess, FakeApiServer, bundle_copy_object, ready_of,
};
use crate::support::{BundleSpec, RegistryKind, TestRegistry, assert_bundle_copied, push_bundle};

const NAMESPACE: &str = "bc-malformed";

#[tokio::test(flavor = "multi_thread")]
async fn controller_malformed_objects_do_not_block_a_good_one() {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    let pushed = push_bundle(&source, "hello", "v1", &BundleSpec::new("hello", "0.1.0")).await;
    let mut state = ApiState::default();
    let good_spec = json!({"source": {"reference": pushed.reference},
                           "destination": {"reference": format!("{}/mirror", destination.host())}});
    let broken = [
        (
            "a-no-destination-reference",
            json!({"source": {"reference": pushed.reference}, "destination": {}}),
        ),
        (
            "b-numeric-interval",
            json!({"source": {"reference": pushed.reference},
                   "destination": {"reference": format!("{}/other", destination.host())},
                   "interval": 5}),
        ),
        ("c-no-spec-fields", json!({})),
    ];
    for (index, (name, spec)) in broken.iter().enumerate() {
        state.objects.insert(
            name.to_string(),
            bundle_copy_object(NAMESPACE, name, index as u32 + 10, spec.clone(), None),
        );
    }
    state.objects.insert(
        "z-good".to_string(),
        bundle_copy_object(NAMESPACE, "z-good", 1, good_spec, None),
    );
    let api = FakeApiServer::start(NAMESPACE, state).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());

    let mut controller =
        ControllerProcess::start(&kubeconfig, NAMESPACE, dir.path(), "controller.log", &[]);
    controller.wait_ready(Duration::from_secs(60)).await;
    let expected_problems = [
        "spec.destination: missing field `reference`",
        "spec.interval: invalid type: integer `5`, expected a string",
        "spec: missing field `source`",
    ];
    // Done when the good one is Ready and each malformed one has its InvalidSpec status and the
    // CopyFailed Event that follows it.
    let done = |api: &FakeApiServer| {
        let state = api.state.lock().unwrap();
        let good = state
            .patches_of("z-good")
            .iter()
            .any(|status| ready_of(status).is_some_and(|(s, _)| s == "True"));
        good && broken.iter().all(|(name, _)| {
            state.last_ready(name) == Some(("False".into(), "InvalidSpec".into()))
                && state.has_event(name, "CopyFailed")
        })
    };
    controller
        .wait_until(
            Duration::from_secs(60),
            || done(&api),
            || {
                format!(
                    "not every object reached its state ({} lists of BundleCopies so far)",
                    api.state.lock().unwrap().bundle_copy_lists
                )
            },
        )
        .await;
    assert_bundle_copied(
        &source,
        "hello",
        &destination,
        "mirror/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
    {
        let state = api.state.lock().unwrap();
        for ((name, _), problem) in broken.iter().zip(expected_problems) {
            let patches = state.patches_of(name);
            assert_eq!(patches.len(), 1, "{name}: {patches:#?}");
            let conditions = patches[0]["conditions"].as_array().unwrap();
            let condition = |type_: &str| {
                conditions
                    .iter()
                    .find(|c| c["type"] == type_)
                    .cloned()
                    .unwrap_or_else(|| panic!("{name}: no {type_} in {conditions:#?}"))
            };
            let message = condition("Ready")["message"].as_str().unwrap().to_string();
            assert!(
                message.contains(problem) && message.contains("kubectl explain bundlecopy.spec"),
                "{name}: {message}"
            );
            assert_eq!(condition("Stalled")["status"], "True", "{name}");
            assert_eq!(patches[0]["observedGeneration"], 1, "{name}");
        }
        assert_eq!(
            state.bundle_copy_reads,
            broken.len(),
            "one GET per malformed object, to learn its stored status"
        );
        assert!(state.unexpected.is_empty(), "{:?}", state.unexpected);
    }
    controller.stop(Duration::from_secs(20)).await;

    // A restarted controller finds the failures already written: no patch, no Event.
    let (patches, events) = {
        let state = api.state.lock().unwrap();
        (state.status_patches.len(), state.events.len())
    };
    let mut controller =
        ControllerProcess::start(&kubeconfig, NAMESPACE, dir.path(), "restarted.log", &[]);
    controller.wait_ready(Duration::from_secs(60)).await;
    controller
        .wait_until(
            Duration::from_secs(30),
            || api.state.lock().unwrap().bundle_copy_reads >= 2 * broken.len(),
            || "the restarted controller did not look at the malformed objects".into(),
        )
        .await;
    // The reconciles that follow those reads would write within this time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    {
        let state = api.state.lock().unwrap();
        assert_eq!(
            (state.status_patches.len(), state.events.len()),
            (patches, events),
            "the restart rewrote unchanged statuses:\n{}",
            controller.log()
        );
    }

    // Fixing one malformed spec makes it copy.
    api.put_spec(
        broken[0].0,
        json!({"source": {"reference": pushed.reference},
               "destination": {"reference": format!("{}/fixed", destination.host())}}),
    );
    let fixed = || {
        api.state.lock().unwrap().last_ready(broken[0].0) == Some(("True".into(), "Copied".into()))
    };
    controller
        .wait_until(Duration::from_secs(60), fixed, || {
            "the fixed object was not copied".into()
        })
        .await;
    assert_bundle_copied(
        &source,
        "hello",
        &destination,
        "fixed/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
    controller.stop(Duration::from_secs(20)).await;
}
