//! The `bundlecopy controller` process SIGKILLed in the middle of a copy and started again: the
//! second process finishes the copy, HEAD-skipping every blob the first one had already put at
//! the destination (no re-upload, no re-download), and the destination ends up holding the whole
//! bundle. Real registries behind fault proxies (the source's blob bodies are stalled so the copy
//! is slow enough to interrupt; the proxies count requests), the fake API server of
//! `support::fake_api`. `cargo test --test integration controller::restart`

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;

use crate::support::fake_api::{
    ApiState, ControllerProcess, FakeApiServer, bundle_copy_object, ready_of,
};
use crate::support::{
    BundleSpec, Fault, FaultProxy, ImageFormat, PathKind, RegistryKind, Rule, TestRegistry,
    assert_bundle_copied, push_bundle,
};

const NAMESPACE: &str = "bc-restart";
const NAME: &str = "big";
/// Layers at least this big are the "large" ones whose arrival is watched.
const LARGE: u64 = 1 << 20;

/// The hex part of `sha256:HEX` (how it shows up in a path or a URL-encoded query).
fn hex_of(digest: &str) -> &str {
    digest.rsplit(':').next().unwrap_or(digest)
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_restart_after_sigkill_mid_copy_skips_blobs_already_copied() {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    // 12 large layers: more than the engine copies at once (8), so they arrive in waves.
    let layers = [1_200_000u64, 1_300_000, 1_400_000];
    let mut spec = BundleSpec::new("big", "1.0.0");
    for component in ["c1", "c2", "c3", "c4"] {
        spec = spec.with_component(component, ImageFormat::Oci, &layers);
    }
    let pushed = push_bundle(&source, "big/app", "v1", &spec).await;
    let large: Vec<String> = pushed
        .blobs
        .iter()
        .filter(|(_, size)| *size >= LARGE)
        .map(|(digest, _)| digest.clone())
        .collect();
    assert_eq!(large.len(), 12, "{:?}", pushed.blobs);

    let source_proxy = FaultProxy::start(&source);
    let destination_proxy = FaultProxy::start(&destination);
    // Every large blob body stalls for 3 s after its first 256 KiB: a copy takes two waves of
    // about 3 s, and the kill lands between them.
    source_proxy.add_rule(
        Rule::new(Fault::StallBodyAfter {
            bytes: 256 * 1024,
            duration: Duration::from_secs(3),
        })
        .method(Method::GET)
        .kind(PathKind::Blob),
    );

    let source_reference = format!("{}/big/app:v1", source_proxy.host());
    let object = bundle_copy_object(
        NAMESPACE,
        NAME,
        1,
        json!({"source": {"reference": source_reference},
               "destination": {"reference": format!("{}/mirror", destination_proxy.host())}}),
        None,
    );
    let mut state = ApiState::default();
    state.objects.insert(NAME.to_string(), object);
    let api = FakeApiServer::start(NAMESPACE, state).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());

    // First controller: kill it as soon as some, not all, large layers are at the destination.
    let mut first = ControllerProcess::start(&kubeconfig, NAMESPACE, dir.path(), "first.log", &[]);
    first.wait_ready(Duration::from_secs(60)).await;
    let direct = destination.client();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        first.assert_running();
        let mut arrived = false;
        for digest in &large {
            if direct.head_blob("mirror/app", digest).await {
                arrived = true;
                break;
            }
        }
        if arrived {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no large layer reached the destination within 90 s:\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill_hard();
    let killed_at = Instant::now();

    // What the first process left behind, read after its death. An upload whose body had fully
    // arrived is still committed by the registry after the client died, so read until two
    // readings half a second apart agree.
    let read_present = || async {
        let mut present = BTreeSet::new();
        for (digest, _) in &pushed.blobs {
            if direct.head_blob("mirror/app", digest).await {
                present.insert(digest.clone());
            }
        }
        present
    };
    let mut present_all = read_present().await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let again = read_present().await;
        if again == present_all {
            break;
        }
        present_all = again;
    }
    let present_large: BTreeSet<String> = large
        .iter()
        .filter(|d| present_all.contains(*d))
        .cloned()
        .collect();
    assert!(
        !present_large.is_empty() && present_large.len() < large.len(),
        "the kill should land mid-copy: {} of {} large layers were there",
        present_large.len(),
        large.len()
    );
    assert!(
        direct.head_manifest("mirror/app", "v1").await.is_none(),
        "the tag must not exist before the copy finished"
    );
    let first_patches = api.state.lock().unwrap().patches_of(NAME).len();
    assert!(first_patches >= 1, "the first controller reported the copy");

    // Second controller, fast registries: it must finish the copy.
    source_proxy.clear_rules();
    let source_mark = source_proxy.requests().len();
    let destination_mark = destination_proxy.requests().len();
    let mut second =
        ControllerProcess::start(&kubeconfig, NAMESPACE, dir.path(), "second.log", &[]);
    second.wait_ready(Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let final_status = loop {
        second.assert_running();
        let done = {
            let state = api.state.lock().unwrap();
            state.patches_of(NAME)[first_patches..]
                .iter()
                .rev()
                .find(|status| ready_of(status).is_some_and(|(s, _)| s == "True"))
                .map(|status| (*status).clone())
        };
        if let Some(status) = done {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the second controller did not finish within 90 s:\n{}",
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let restart_to_ready = killed_at.elapsed();
    assert_eq!(
        ready_of(&final_status),
        Some(("True".to_string(), "Copied".to_string()))
    );
    assert_bundle_copied(
        &source,
        "big/app",
        &destination,
        "mirror/app",
        "v1",
        &pushed.index_digest,
    )
    .await;

    // Blobs the first process had put: HEAD-skipped, neither uploaded nor read again.
    let destination_requests = destination_proxy.requests()[destination_mark..].to_vec();
    let source_requests = source_proxy.requests()[source_mark..].to_vec();
    let uploaded = |digest: &str| {
        destination_requests.iter().any(|r| {
            r.method == Method::PUT
                && r.kind == PathKind::Upload
                && r.path_and_query.contains(hex_of(digest))
        })
    };
    let headed = |digest: &str| {
        destination_requests.iter().any(|r| {
            r.method == Method::HEAD
                && r.kind == PathKind::Blob
                && r.path_and_query.contains(hex_of(digest))
        })
    };
    let downloaded = |digest: &str| {
        source_requests.iter().any(|r| {
            r.method == Method::GET
                && r.kind == PathKind::Blob
                && r.path_and_query.contains(hex_of(digest))
        })
    };
    for digest in &present_all {
        assert!(headed(digest), "{digest} was not checked by HEAD");
        assert!(!uploaded(digest), "{digest} was uploaded again");
        assert!(
            !downloaded(digest),
            "{digest} was read from the source again"
        );
    }
    let missing: Vec<&String> = pushed
        .blobs
        .iter()
        .map(|(digest, _)| digest)
        .filter(|d| !present_all.contains(*d))
        .collect();
    for digest in &missing {
        assert!(uploaded(digest), "{digest} was missing and not uploaded");
    }
    let progress = &final_status["progress"];
    assert_eq!(
        progress["skipped"].as_u64(),
        Some(present_all.len() as u64),
        "{final_status}"
    );
    assert_eq!(
        progress["copied"].as_u64(),
        Some(missing.len() as u64),
        "{final_status}"
    );
    second.stop(Duration::from_secs(20)).await;
    let state = api.state.lock().unwrap();
    assert!(
        state.unexpected.is_empty(),
        "unexpected requests: {:?}",
        state.unexpected
    );
    eprintln!(
        "restart: {} blobs in the bundle ({} large); at the kill {} were at the destination \
         ({} large); after the restart {} were HEAD-skipped and {} uploaded; Ready {:?} after the restart",
        pushed.blobs.len(),
        large.len(),
        present_all.len(),
        present_large.len(),
        progress["skipped"],
        progress["copied"],
        restart_to_ready
    );
}
