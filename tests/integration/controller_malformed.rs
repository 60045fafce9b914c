//! BundleCopies that do not even deserialize (a required field missing, a number where a string
//! belongs), as a non-validating API server (no CRD schema, or an older CRD) could hand them over,
//! listed next to a good one: the `bundlecopy controller` process must not crash, and the good
//! one must still be copied. `cargo test --test integration controller_malformed -- --ignored`
//!
//! Ignored because it fails today: such an object makes the startup probe's list fail (the
//! process exits with "is the CRD installed?") and, past the probe, would make every list of the
//! watcher fail, so no BundleCopy at all is reconciled (kube-rs/kube#774: a typed watcher cannot
//! skip one undeserializable object). With the CRD's structural schema a current API server
//! refuses such objects, so this needs objects stored under an older or missing schema. The fix
//! belongs in `api.rs` / `controller/mod.rs` (a metadata-only startup probe, and a spec that
//! tolerates missing or mistyped fields and reports them as InvalidSpec).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::controller_fake_api::{
    ApiState, ControllerProcess, FakeApiServer, bundle_copy_object, ready_of,
};
use crate::support::{BundleSpec, RegistryKind, TestRegistry, assert_bundle_copied, push_bundle};

const NAMESPACE: &str = "bc-malformed";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fails: one undeserializable BundleCopy stops the controller (kube-rs/kube#774); see the module comment"]
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        controller.assert_running();
        let ready = {
            let state = api.state.lock().unwrap();
            state
                .patches_of("z-good")
                .iter()
                .any(|status| ready_of(status).is_some_and(|(s, _)| s == "True"))
        };
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the good BundleCopy was not copied within 60 s next to malformed ones \
             ({} lists of BundleCopies so far):\n{}",
            api.state.lock().unwrap().bundle_copy_lists,
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_bundle_copied(
        &source,
        "hello",
        &destination,
        "mirror/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
    controller.stop(Duration::from_secs(20)).await;
}
