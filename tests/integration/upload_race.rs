//! Copies of bundles that share layers, into one repository at once. Distribution 2.8's
//! filesystem storage rewrites a repository's link file in place (open, truncate, write) each
//! time it links a blob (an upload, a mount) or a manifest (a PUT), and a manifest PUT reads the
//! links of the blobs it names: one that reads while another copy links the same blob finds an
//! empty file, and the registry refuses it with 400 DIGEST_INVALID + MANIFEST_BLOB_UNKNOWN
//! although the blob is there. The engine then checks the named blobs with HEAD and, when they
//! are all there, sends the PUT again.
//!
//! The race itself is a window of microseconds, so one test runs concurrent copies for real
//! (and must see every one succeed, whether or not the window was hit), and the others force it:
//! the fault proxy empties the link file while the PUT is served, which is the state the race
//! leaves it in, and the real registry answers as it does in the race.
//! `cargo test --test integration upload_race_`

use std::path::PathBuf;

use bundlecopy_engine::{CopyError, CopyOutcome, EndpointOptions, Progress, copy_bundle};
use reqwest::{Method, StatusCode};

use crate::faults::{bounded, copy_request, fast_settings, proxied, requests_of};
use crate::support::{
    BundleSpec, Fault, FaultProxy, ImageFormat, PathKind, PushedBundle, RegistryKind, Rule,
    TestRegistry, assert_bundle_copied, push_bundle,
};

/// Bundles that differ in name (so in bundle.json, config manifest and index) and share every
/// image: the same layers, configs and image manifests.
fn sharing_bundle(name: &str) -> BundleSpec {
    BundleSpec::new(name, "1.0.0")
        .with_invocation(ImageFormat::Docker, &[3000, 4000, 5000, 6000, 7000, 8000])
        .with_component(
            "web",
            ImageFormat::Oci,
            &[2000, 2500, 3500, 4500, 5500, 6500],
        )
        .with_component("db", ImageFormat::Docker, &[1500, 2200, 3300, 4400])
        .with_shared_layer(9000)
}

/// Where distribution keeps a repository's link to a layer (`_layers`) or to a manifest
/// revision (`_manifests/revisions`).
fn link_file(registry: &TestRegistry, repo: &str, kind: &str, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    registry
        .storage_dir()
        .join("docker/registry/v2/repositories")
        .join(repo)
        .join(kind)
        .join("sha256")
        .join(hex)
        .join("link")
}

/// Several bundles sharing all their images, copied at once into one fresh repository, a few
/// rounds: every copy must succeed and every tag hold its bundle. Before the engine sent such a
/// PUT again, the controller scale scenario lost 2 of 100 copies this way.
#[tokio::test(flavor = "multi_thread")]
async fn upload_race_concurrent_copies_of_bundles_sharing_layers_into_one_repository() {
    const COPIES: usize = 4;
    const ROUNDS: usize = 3;
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    let mut bundles = Vec::new();
    for index in 0..COPIES {
        let name = format!("app{index}");
        bundles
            .push(push_bundle(&src, &format!("race/{name}"), "v1", &sharing_bundle(&name)).await);
    }
    for round in 0..ROUNDS {
        let repo = format!("round{round}/app");
        let copies = bundles.iter().enumerate().map(|(index, pushed)| {
            let request = copy_request(
                pushed.reference.clone(),
                format!("{}/{repo}:t{index}", dst.host()),
                EndpointOptions::default(),
                EndpointOptions::default(),
                fast_settings(),
            );
            async move { copy_bundle(&request, &Progress::default()).await }
        });
        let outcomes = bounded(
            "the concurrent copies",
            futures_util::future::join_all(copies),
        )
        .await;
        for (index, outcome) in outcomes.into_iter().enumerate() {
            if let Err(error) = outcome {
                panic!("round {round}: copy {index} into {repo} failed: {error}");
            }
        }
        for (index, pushed) in bundles.iter().enumerate() {
            assert_bundle_copied(
                &src,
                &pushed.repo,
                &dst,
                &repo,
                &format!("t{index}"),
                &pushed.index_digest,
            )
            .await;
        }
    }
}

/// A bundle at a source registry and an empty destination behind the fault proxy, with one
/// image manifest of the bundle and its first layer (that layer is in no other image).
struct Race {
    src: TestRegistry,
    dst: TestRegistry,
    proxy: FaultProxy,
    pushed: PushedBundle,
    manifest: String,
    manifest_bytes: Vec<u8>,
    manifest_type: String,
    layer: String,
}

impl Race {
    async fn start() -> Race {
        let src = TestRegistry::start(RegistryKind::Plain).await;
        let dst = TestRegistry::start(RegistryKind::Plain).await;
        let proxy = FaultProxy::start(&dst);
        let pushed = push_bundle(&src, "race/app", "v1", &sharing_bundle("app")).await;
        let client = src.client();
        for (digest, _) in &pushed.manifests {
            if *digest == pushed.config_manifest_digest {
                continue;
            }
            let (bytes, media_type, _) = client
                .get_manifest(&pushed.repo, digest)
                .await
                .expect("the source serves the manifest");
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            if let Some(layer) = json["layers"][0]["digest"].as_str() {
                return Race {
                    manifest: digest.clone(),
                    manifest_bytes: bytes,
                    manifest_type: media_type,
                    layer: layer.to_owned(),
                    src,
                    dst,
                    proxy,
                    pushed,
                };
            }
        }
        panic!("the bundle has no image manifest with layers");
    }

    /// Copy the bundle to `race/app:v1` through the proxy.
    async fn copy(&self) -> Result<CopyOutcome, CopyError> {
        let request = copy_request(
            self.pushed.reference.clone(),
            format!("{}/race/app:v1", self.proxy.host()),
            EndpointOptions::default(),
            proxied(&self.proxy, &self.dst),
            fast_settings(),
        );
        bounded("the copy", copy_bundle(&request, &Progress::default())).await
    }

    /// Empty `file` while the next PUT of a manifest whose path contains `fragment` is served.
    fn empty_during_put(&self, file: PathBuf, fragment: &str) {
        self.proxy.add_rule(
            Rule::new(Fault::EmptyFileWhileForwarded { path: file })
                .method(Method::PUT)
                .kind(PathKind::Manifest)
                .path_contains(fragment)
                .once(),
        );
    }

    /// HEADs of the layer say it is there, `times` times (None: always); the copy then does
    /// not upload it.
    fn claim_layer_present(&self, times: Option<usize>) {
        let rule = Rule::new(Fault::status(200))
            .method(Method::HEAD)
            .kind(PathKind::Blob)
            .path_contains(&self.layer);
        self.proxy.add_rule(match times {
            Some(times) => rule.times(times),
            None => rule,
        });
    }

    /// PUTs of the manifest `reference` (a digest or the tag) the proxy received.
    fn puts_of(&self, reference: &str) -> usize {
        requests_of(
            &self.proxy,
            &Method::PUT,
            &format!("/manifests/{reference}"),
        )
    }

    async fn assert_copied(&self) {
        assert_bundle_copied(
            &self.src,
            "race/app",
            &self.dst,
            "race/app",
            "v1",
            &self.pushed.index_digest,
        )
        .await;
    }
}

/// The race, forced: while the PUT of an image manifest is served, the link of one of its
/// layers is empty. The registry refuses the PUT as distribution does in the race (checked
/// first without the engine); the engine finds the layer with a HEAD and pushes the manifest
/// again, and the copy is whole.
#[tokio::test(flavor = "multi_thread")]
async fn upload_race_a_manifest_refused_while_its_layer_is_relinked_is_pushed_again() {
    let race = Race::start().await;
    let (manifest, layer) = (&race.manifest, &race.layer);

    // What the registry answers in the race: a repository that holds the layer, its link empty.
    let probe = copy_request(
        race.pushed.reference.clone(),
        format!("{}/probe/app:v1", race.dst.host()),
        EndpointOptions::default(),
        EndpointOptions::default(),
        fast_settings(),
    );
    bounded("the probe copy", copy_bundle(&probe, &Progress::default()))
        .await
        .expect("the probe copy");
    let link = link_file(&race.dst, "probe/app", "_layers", layer);
    let kept = std::fs::read(&link).expect("the layer's link file");
    std::fs::write(&link, b"").unwrap();
    let refused = race
        .dst
        .client()
        .try_put_manifest(
            "probe/app",
            manifest,
            &race.manifest_bytes,
            &race.manifest_type,
        )
        .await;
    let status = refused.status();
    let body = refused.text().await.unwrap_or_default();
    std::fs::write(&link, kept).unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("DIGEST_INVALID") && body.contains("MANIFEST_BLOB_UNKNOWN"),
        "{body}"
    );
    assert!(
        body.contains(layer.as_str()),
        "the refusal names the layer: {body}"
    );

    // The copy meets it once.
    race.empty_during_put(link_file(&race.dst, "race/app", "_layers", layer), manifest);
    race.copy().await.expect("the copy succeeds");
    assert_eq!(race.proxy.faults_injected(), 1, "the race was forced");
    assert_eq!(race.puts_of(manifest), 2, "refused once, then pushed again");
    let requests = race.proxy.requests();
    let puts: Vec<usize> = requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r.method == Method::PUT && r.path_and_query.ends_with(manifest.as_str()))
        .map(|(position, _)| position)
        .collect();
    assert!(
        requests[puts[0]..puts[1]]
            .iter()
            .any(|r| r.method == Method::HEAD && r.path_and_query.ends_with(layer.as_str())),
        "the layer was looked up between the two PUTs"
    );
    race.assert_copied().await;
}

/// The same race on the index: while the tag's PUT is served, the link of an image manifest
/// it names is empty; the engine finds the manifest with a HEAD and pushes the index again.
#[tokio::test(flavor = "multi_thread")]
async fn upload_race_an_index_refused_while_a_child_manifest_is_relinked_is_pushed_again() {
    let race = Race::start().await;
    race.empty_during_put(
        link_file(
            &race.dst,
            "race/app",
            "_manifests/revisions",
            &race.manifest,
        ),
        "/manifests/v1",
    );
    race.copy().await.expect("the copy succeeds");
    assert_eq!(race.proxy.faults_injected(), 1, "the race was forced");
    assert_eq!(race.puts_of("v1"), 2, "refused once, then pushed again");
    race.assert_copied().await;
}

/// A refusal the registry means stays an error. A HEAD of the layer that wrongly says it is
/// there (once: the copy then skips its upload) leaves the repository without it; the PUT is
/// refused, the engine's own HEAD finds the layer missing, and the error names it, with no
/// second PUT.
#[tokio::test(flavor = "multi_thread")]
async fn upload_race_a_blob_that_is_really_missing_is_named_in_the_error() {
    let race = Race::start().await;
    race.claim_layer_present(Some(1));
    let error = race.copy().await.expect_err("the layer is missing");
    let message = error.to_string();
    assert!(
        message.contains("MANIFEST_BLOB_UNKNOWN")
            && message.contains(&format!("{} is not in race/app", race.layer)),
        "{message}"
    );
    assert!(!error.is_transient(), "{message}");
    assert_eq!(race.puts_of(&race.manifest), 1, "not pushed again");
}

/// A registry that keeps refusing a PUT although a HEAD finds every blob it names gets the
/// PUT at most `max_attempts` times (3 here), then the refusal is the error.
#[tokio::test(flavor = "multi_thread")]
async fn upload_race_a_refusal_that_persists_is_sent_at_most_max_attempts_times() {
    let race = Race::start().await;
    race.claim_layer_present(None);
    let error = race.copy().await.expect_err("the registry keeps refusing");
    let message = error.to_string();
    assert!(
        message.contains("MANIFEST_BLOB_UNKNOWN") && message.contains("3 refusals"),
        "{message}"
    );
    assert_eq!(
        race.puts_of(&race.manifest),
        fast_settings().max_attempts as usize
    );
}
