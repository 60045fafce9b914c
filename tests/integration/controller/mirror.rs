//! A BundleMirror through the whole `bundlecopy controller` process, against the fake API server
//! and real registries: the source repository holds releases, a pre-release and a non-version
//! tag, listed through a proxy that pages the tag list two at a time (as the distribution API
//! allows). The mirror must own one BundleCopy per selected tag (owner reference, label, tag
//! annotation, inherited settings), which the same process copies; report Ready with the counts;
//! pick up a new upstream tag on the next interval; delete the child of a tag that leaves the
//! selection without touching the destination; and carry a spec change to every child.

use std::time::Duration;

use serde_json::{Value, json};

use bundlecopy_engine::{EndpointOptions, Progress, copy_bundle};
use http::Method;

use crate::faults::{copy_request, fast_settings};
use crate::support::fake_api::{ApiState, ControllerProcess, FakeApiServer};
use crate::support::{
    BundleSpec, Fault, FaultProxy, PathKind, PushedBundle, RegistryKind, Rule, TestRegistry,
    copies_in_flight, push_bundle,
};

const NAMESPACE: &str = "bc-mirror";
const MIRROR: &str = "app";

fn children(api: &FakeApiServer) -> Vec<(String, Value)> {
    let state = api.state.lock().unwrap();
    state
        .objects
        .iter()
        .filter(|(_, object)| object["metadata"]["labels"]["bundlecopy.dev/mirror"] == MIRROR)
        .map(|(name, object)| (name.clone(), object.clone()))
        .collect()
}

fn child_tags(api: &FakeApiServer) -> Vec<String> {
    let mut tags: Vec<String> = children(api)
        .iter()
        .filter_map(|(_, c)| {
            c["metadata"]["annotations"]["bundlecopy.dev/tag"]
                .as_str()
                .map(String::from)
        })
        .collect();
    tags.sort();
    tags
}

fn mirror_status(api: &FakeApiServer) -> Value {
    api.state.lock().unwrap().mirrors[MIRROR]["status"].clone()
}

fn mirror_ready(api: &FakeApiServer) -> (String, String) {
    let status = mirror_status(api);
    status["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == "Ready"))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default()
}

/// Two registries; the source's `vendor/app` holds one bundle as `1.0.0` and under `more_tags`.
async fn releases(more_tags: &[String]) -> (TestRegistry, TestRegistry, PushedBundle) {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    let pushed = push_bundle(
        &source,
        "vendor/app",
        "1.0.0",
        &BundleSpec::new("app", "1.0.0"),
    )
    .await;
    let client = source.client();
    for tag in more_tags {
        client
            .put_manifest(
                "vendor/app",
                tag,
                &pushed.index_bytes,
                &pushed.index_media_type,
            )
            .await;
    }
    (source, destination, pushed)
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_mirror_owns_one_copy_per_selected_tag_and_follows_the_repository() {
    let tags = ["v1.1.0", "1.2.0-rc.1", "2.0.0", "latest"].map(String::from);
    let (source, destination, pushed) = releases(&tags).await;
    let client = source.client();
    let proxy = FaultProxy::start(&source);
    proxy.add_rule(Rule::new(Fault::PaginateTags { page: 2 }).kind(PathKind::Tags));
    let spec = |semver: &str, force: bool| {
        json!({"source": {"repository": format!("{}/vendor/app", proxy.host())},
               "destination": {"reference": format!("{}/mirror", destination.host())},
               "tags": {"semver": semver},
               "interval": "3s", "force": force})
    };
    let api = FakeApiServer::start(NAMESPACE, ApiState::default()).await;
    api.put_mirror(MIRROR, spec(">=1.0.0 <2.0.0", false));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());
    let mut controller = ControllerProcess::start(
        &kubeconfig,
        NAMESPACE,
        dir.path(),
        "controller.log",
        &["--mirror-min-interval", "1s"],
    );

    // Two tags chosen (the pre-release, 2.0.0 and latest are not): two children, both copied.
    controller
        .wait_until(
            Duration::from_secs(90),
            || child_tags(&api) == ["1.0.0", "v1.1.0"] && mirror_ready(&api).0 == "True",
            || {
                format!(
                    "children {:?}, mirror {:?}",
                    child_tags(&api),
                    mirror_status(&api)
                )
            },
        )
        .await;
    let mirror_uid = api.state.lock().unwrap().mirrors[MIRROR]["metadata"]["uid"].clone();
    for (name, child) in children(&api) {
        assert!(name.len() <= 63 && name.starts_with("app-"), "{name}");
        let owner = &child["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "BundleMirror");
        assert_eq!(owner["uid"], mirror_uid);
        assert_eq!(owner["controller"], true);
        let tag = child["metadata"]["annotations"]["bundlecopy.dev/tag"]
            .as_str()
            .unwrap();
        assert_eq!(
            child["spec"]["source"]["reference"],
            format!("{}/vendor/app:{tag}", proxy.host())
        );
        // The mirror's interval, but never below a BundleCopy's minimum.
        assert_eq!(child["spec"]["interval"], "1m");
        assert_eq!(child["spec"]["force"], false);
    }
    let status = mirror_status(&api);
    assert_eq!(
        (status["selected"].as_i64(), status["ready"].as_i64()),
        (Some(2), Some(2))
    );
    assert_eq!(mirror_ready(&api), ("True".into(), "Mirrored".into()));
    assert_eq!(status["tags"][0]["tag"], "v1.1.0", "highest version first");
    assert_eq!(status["tags"][0]["digest"], pushed.index_digest);
    let dst = destination.client();
    for tag in ["1.0.0", "v1.1.0"] {
        assert_eq!(
            dst.head_manifest("mirror/app", tag)
                .await
                .map(|(_, digest, _)| digest)
                .as_deref(),
            Some(pushed.index_digest.as_str()),
            "{tag} at the destination"
        );
    }
    let pages: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.kind == PathKind::Tags)
        .map(|r| r.path_and_query)
        .collect();
    assert!(
        pages.iter().any(|p| p.contains("last=")),
        "the listing followed the pages: {pages:?}"
    );

    // A new release upstream: a new child on the next interval.
    client
        .put_manifest(
            "vendor/app",
            "1.3.0",
            &pushed.index_bytes,
            &pushed.index_media_type,
        )
        .await;
    controller
        .wait_until(
            Duration::from_secs(30),
            || {
                child_tags(&api) == ["1.0.0", "1.3.0", "v1.1.0"]
                    && mirror_status(&api)["ready"] == 3
            },
            || {
                format!(
                    "children {:?}, mirror {:?}",
                    child_tags(&api),
                    mirror_status(&api)
                )
            },
        )
        .await;

    // The selection narrows and force is turned on: 1.0.0's child goes (its copy stays at the
    // destination), the others carry force.
    api.put_mirror(MIRROR, spec(">=1.1.0 <2.0.0", true));
    controller
        .wait_until(
            Duration::from_secs(30),
            || {
                child_tags(&api) == ["1.3.0", "v1.1.0"]
                    && children(&api)
                        .iter()
                        .all(|(_, c)| c["spec"]["force"] == true)
            },
            || format!("children {:?}", children(&api)),
        )
        .await;
    assert_eq!(
        dst.head_manifest("mirror/app", "1.0.0")
            .await
            .map(|(_, digest, _)| digest)
            .as_deref(),
        Some(pushed.index_digest.as_str()),
        "deleting a child leaves the destination as it was"
    );
    let state = api.state.lock().unwrap();
    assert_eq!(state.deleted.len(), 1, "{:?}", state.deleted);
    assert!(state.unexpected.is_empty(), "{:?}", state.unexpected);
}

/// Twenty selected versions, one destination registry: the children share
/// `--max-concurrent-copies 8`, but `--max-copies-per-registry 2` lets at most two of them copy
/// into that registry at once — counted at the registry, from the first request naming a tag to
/// the PUT of that tag. Manifest PUTs are held 200 ms there, so that without the cap the copies
/// would overlap eight deep; the test also asserts that two did overlap, so a cap of one (or no
/// concurrency at all) fails it too.
#[tokio::test(flavor = "multi_thread")]
async fn controller_mirror_children_never_exceed_the_per_registry_cap() {
    const VERSIONS: usize = 20;
    const PER_REGISTRY: usize = 2;
    let tags: Vec<String> = (1..VERSIONS).map(|minor| format!("1.{minor}.0")).collect();
    let (source, destination, _) = releases(&tags).await;
    // The destination holds the bundle under another tag already: the children push tags, and
    // the test counts copies, not first uploads of shared blobs.
    let seed = copy_request(
        format!("{}/vendor/app:1.0.0", source.host()),
        format!("{}/mirror/app:seed", destination.host()),
        EndpointOptions::default(),
        EndpointOptions::default(),
        fast_settings(),
    );
    copy_bundle(&seed, &Progress::default()).await.unwrap();
    let destination_proxy = FaultProxy::start(&destination);
    destination_proxy.add_rule(
        Rule::new(Fault::Stall {
            duration: Duration::from_millis(200),
        })
        .kind(PathKind::Manifest)
        .method(Method::PUT),
    );

    let api = FakeApiServer::start(NAMESPACE, ApiState::default()).await;
    api.put_mirror(
        MIRROR,
        json!({"source": {"repository": format!("{}/vendor/app", source.host())},
               "destination": {"reference": format!("{}/mirror", destination_proxy.host())},
               "tags": {"semver": ">=1.0.0"},
               "interval": "1h"}),
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());
    let per_registry = PER_REGISTRY.to_string();
    let mut controller = ControllerProcess::start(
        &kubeconfig,
        NAMESPACE,
        dir.path(),
        "controller.log",
        &[
            "--max-concurrent-copies",
            "8",
            "--max-copies-per-registry",
            &per_registry,
        ],
    );
    controller
        .wait_until(
            Duration::from_secs(120),
            || mirror_status(&api)["ready"] == VERSIONS && mirror_ready(&api).0 == "True",
            || format!("mirror {:?}", mirror_status(&api)),
        )
        .await;
    controller.stop(Duration::from_secs(20)).await;

    let requests = destination_proxy.requests();
    let tag_puts = requests
        .iter()
        .filter(|r| {
            r.method == Method::PUT
                && r.kind == PathKind::Manifest
                && !r.path_and_query.contains("/manifests/sha256:")
        })
        .count();
    assert_eq!(tag_puts, VERSIONS, "one tag written per selected version");
    assert_eq!(
        copies_in_flight(&requests),
        PER_REGISTRY,
        "copies in flight at once at the destination registry: the cap, reached but never passed"
    );
}
