//! Faults injected by the in-test proxy between the engine and real registries: resets, a
//! destination that dies and comes back, 429 and 5xx answers, stalls, wrong or short bytes,
//! redirects to blob storage, and manifests too big or too deep to parse.
//!
//! Every case checks the outcome and that the destination never holds a tag pointing at an
//! incomplete bundle: after a failure the tag is absent, after a success the whole bundle is
//! there (`assert_bundle_copied`). Every copy is bounded by a timeout, so a hang fails the test.
//! `cargo test --test integration faults_`

use std::future::Future;
use std::time::{Duration, Instant};

use bundlecopy_engine::credentials::DockerConfig as EngineDockerConfig;
use bundlecopy_engine::{CopyError, ErrorKind};
use bundlecopy_engine::{
    CopyOutcome, CopyRequest, EndpointOptions, EngineSettings, Progress, copy_bundle,
};
use reqwest::Method;

use crate::support::{
    BundleSpec, DockerConfig, Fault, FaultProxy, ImageFormat, PathKind, PushedBundle, RegistryKind,
    Rule, TestRegistry, assert_bundle_copied, push_bundle,
};

/// No copy in these tests may take longer than this; reaching it means something hangs.
pub(crate) const COPY_BOUND: Duration = Duration::from_secs(90);

/// Fast retries: the engine's backoff starts at 250 ms, so three attempts cost under a second.
pub(crate) fn fast_settings() -> EngineSettings {
    EngineSettings {
        connect_timeout: Duration::from_secs(2),
        io_timeout: Duration::from_secs(5),
        max_attempts: 3,
        max_retry_after: Duration::from_secs(5),
        ..EngineSettings::default()
    }
}

/// The engine's view of a test registry reached directly: its CA and its credentials.
pub(crate) fn direct(registry: &TestRegistry) -> EndpointOptions {
    EndpointOptions {
        insecure: false,
        ca_pem: registry.ca_pem().map(|pem| pem.as_bytes().to_vec()),
        credentials: engine_config(&DockerConfig::new().with_registry(registry)),
        proxy: None,
        provider: Default::default(),
    }
}

/// The engine's view of a registry reached through `proxy` (plain HTTP on loopback), with the
/// registry's credentials filed under the proxy's address.
pub(crate) fn proxied(proxy: &FaultProxy, registry: &TestRegistry) -> EndpointOptions {
    EndpointOptions {
        insecure: false,
        ca_pem: None,
        credentials: engine_config(&DockerConfig::new().with_host_as(&proxy.host(), registry)),
        proxy: None,
        provider: Default::default(),
    }
}

pub(crate) fn engine_config(config: &DockerConfig) -> EngineDockerConfig {
    EngineDockerConfig::parse_config_json(config.json().as_bytes()).unwrap()
}

pub(crate) fn copy_request(
    source: String,
    destination: String,
    source_endpoint: EndpointOptions,
    destination_endpoint: EndpointOptions,
    settings: EngineSettings,
) -> CopyRequest {
    bundlecopy_engine::install_crypto_provider();
    CopyRequest {
        source,
        destination,
        source_endpoint,
        destination_endpoint,
        force: false,
        referrers: Default::default(),
        settings,
        layouts: false,
    }
}

/// Run a future, failing the test if it does not finish within `COPY_BOUND`.
pub(crate) async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(COPY_BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {COPY_BOUND:?}: it hangs"))
}

async fn run_copy(request: &CopyRequest, progress: &Progress) -> Result<CopyOutcome, CopyError> {
    bounded("the copy", copy_bundle(request, progress)).await
}

/// Several layers of different sizes (the biggest is 150 kB), one shared blob, two images.
fn faulty_bundle() -> BundleSpec {
    BundleSpec::new("faulty", "1.0.0")
        .with_component("db", ImageFormat::Oci, &[150_000, 30_000])
        .with_shared_layer(5_000)
}

/// Requests with `method` the proxy saw for a path containing `fragment`.
pub(crate) fn requests_of(proxy: &FaultProxy, method: &Method, fragment: &str) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.method == *method && r.path_and_query.contains(fragment))
        .count()
}

/// After a failed copy: the destination tag does not exist.
pub(crate) async fn assert_tag_absent(dst: &TestRegistry, repo: &str, tag: &str) {
    let found = dst.client().head_manifest(repo, tag).await;
    assert!(
        found.is_none(),
        "{}/{repo}:{tag} exists after a failed copy: {found:?}",
        dst.host()
    );
}

/// After a failed copy: no manifest of the bundle that names `blob` (directly) is at the
/// destination, and neither is the blob.
async fn assert_nothing_references(
    src: &TestRegistry,
    pushed: &PushedBundle,
    dst: &TestRegistry,
    dst_repo: &str,
    blob: &str,
) {
    let src_client = src.client();
    let dst_client = dst.client();
    assert!(
        !dst_client.head_blob(dst_repo, blob).await,
        "the bad blob {blob} reached {}/{dst_repo}",
        dst.host()
    );
    let mut naming = 0;
    for (digest, _) in pushed
        .manifests
        .iter()
        .chain([&(pushed.index_digest.clone(), String::new())])
    {
        let (bytes, _, _) = src_client.get_manifest(&pushed.repo, digest).await.unwrap();
        if String::from_utf8_lossy(&bytes).contains(blob) {
            naming += 1;
            assert!(
                dst_client.head_manifest(dst_repo, digest).await.is_none(),
                "manifest {digest}, which names the bad blob {blob}, reached {}/{dst_repo}",
                dst.host()
            );
        }
    }
    assert!(naming > 0, "no manifest of the bundle names {blob}");
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_connection_reset_in_the_middle_of_a_blob_is_retried() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_bundle(&src, "faults/app", "v1", &faulty_bundle()).await;
    let proxy = FaultProxy::start(&src);
    let (big, size) = pushed.largest_blob();
    proxy.add_rule(
        Rule::new(Fault::ResetAfter { bytes: size / 3 })
            .method(Method::GET)
            .kind(PathKind::Blob)
            .path_contains(&big)
            .once(),
    );

    let progress = Progress::default();
    let request = copy_request(
        format!("{}/faults/app:v1", proxy.host()),
        format!("{}/mirror/app:v1", dst.host()),
        proxied(&proxy, &src),
        direct(&dst),
        fast_settings(),
    );
    let outcome = run_copy(&request, &progress).await.unwrap();

    assert_eq!(outcome.destination_digest, pushed.index_digest);
    assert_eq!(
        proxy.remaining_rule_counts(),
        vec![Some(0)],
        "the reset was never injected"
    );
    assert_eq!(
        requests_of(&proxy, &Method::GET, &big),
        2,
        "the blob cut after {} of {size} bytes was fetched again exactly once",
        size / 3
    );
    let snapshot = progress.snapshot();
    assert_eq!(snapshot.copied, snapshot.blobs, "{snapshot:?}");
    assert_bundle_copied(
        &src,
        "faults/app",
        &dst,
        "mirror/app",
        "v1",
        &pushed.index_digest,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_destination_stopped_mid_copy_then_the_next_attempt_reuses_its_blobs() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_bundle(&src, "faults/app", "v1", &faulty_bundle()).await;
    // Every source blob is held 400 ms, so the copy is still running when the destination dies.
    let proxy = FaultProxy::start(&src);
    proxy.add_rule(
        Rule::new(Fault::Stall {
            duration: Duration::from_millis(400),
        })
        .method(Method::GET)
        .kind(PathKind::Blob),
    );
    let settings = EngineSettings {
        max_concurrent_blobs: 1,
        max_attempts: 2,
        ..fast_settings()
    };
    let request = copy_request(
        format!("{}/faults/app:v1", proxy.host()),
        format!("{}/mirror/app:v1", dst.host()),
        proxied(&proxy, &src),
        direct(&dst),
        settings,
    );

    let first = Progress::default();
    let running = tokio::spawn({
        let (request, progress) = (request.clone(), first.clone());
        async move { copy_bundle(&request, &progress).await }
    });
    bounded("waiting for two blobs to be copied", async {
        while first.snapshot().copied < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    dst.stop();
    let error = bounded("the interrupted copy", running)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unreachable, "{error}");
    let interrupted = first.snapshot();
    assert!(
        interrupted.copied >= 2 && interrupted.copied < interrupted.blobs,
        "{interrupted:?}"
    );

    dst.start_again().await;
    assert_tag_absent(&dst, "mirror/app", "v1").await;
    proxy.clear_rules();
    let second = Progress::default();
    let outcome = run_copy(&request, &second).await.unwrap();
    assert!(!outcome.up_to_date);
    let resumed = second.snapshot();
    assert!(
        resumed.skipped >= interrupted.copied,
        "the blobs uploaded before the stop were uploaded again: {resumed:?} after {interrupted:?}"
    );
    assert_eq!(resumed.skipped + resumed.copied, resumed.blobs);
    assert!(resumed.copied > 0, "{resumed:?}");
    assert_bundle_copied(
        &src,
        "faults/app",
        &dst,
        "mirror/app",
        "v1",
        &pushed.index_digest,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_429_retry_after_is_honoured_and_reported_when_it_persists() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_bundle(&src, "faults/app", "v1", &faulty_bundle()).await;
    let proxy = FaultProxy::start(&src);
    let source = format!("{}/faults/app:v1", proxy.host());

    // One 429 asking for 2 s: the copy waits at least that long, then succeeds.
    proxy.add_rule(
        Rule::new(Fault::Status {
            status: 429,
            retry_after_seconds: Some(2),
        })
        .method(Method::GET)
        .kind(PathKind::Blob)
        .once(),
    );
    let request = copy_request(
        source.clone(),
        format!("{}/mirror/app:v1", dst.host()),
        proxied(&proxy, &src),
        direct(&dst),
        fast_settings(),
    );
    let started = Instant::now();
    run_copy(&request, &Progress::default()).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(proxy.remaining_rule_counts(), vec![Some(0)]);
    assert!(
        elapsed >= Duration::from_secs(2),
        "Retry-After: 2 was not honoured: the copy took {elapsed:?}"
    );
    assert_bundle_copied(
        &src,
        "faults/app",
        &dst,
        "mirror/app",
        "v1",
        &pushed.index_digest,
    )
    .await;

    // A 429 on every request: RateLimited after the attempts, having waited between them.
    proxy.clear_rules();
    proxy.add_rule(Rule::new(Fault::rate_limited()).kind(PathKind::Manifest));
    let request = copy_request(
        source.clone(),
        format!("{}/limited/app:v1", dst.host()),
        proxied(&proxy, &src),
        direct(&dst),
        EngineSettings {
            max_attempts: 2,
            ..fast_settings()
        },
    );
    let started = Instant::now();
    let error = run_copy(&request, &Progress::default()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RateLimited, "{error}");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(error.to_string().contains("rate limiting"), "{error}");
    assert_tag_absent(&dst, "limited/app", "v1").await;

    // A Retry-After longer than the engine will wait: reported at once instead of sleeping.
    proxy.clear_rules();
    proxy.add_rule(
        Rule::new(Fault::Status {
            status: 429,
            retry_after_seconds: Some(3600),
        })
        .kind(PathKind::Manifest),
    );
    let started = Instant::now();
    let error = run_copy(&request, &Progress::default()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RateLimited, "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited {:?} for an hour-long Retry-After",
        started.elapsed()
    );
    assert!(error.to_string().contains("retry after 3600s"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_bursts_of_5xx_and_a_dropped_upload_are_retried() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_bundle(&src, "faults/app", "v1", &faulty_bundle()).await;
    let src_proxy = FaultProxy::start(&src);
    let dst_proxy = FaultProxy::start(&dst);
    src_proxy.add_rule(
        Rule::new(Fault::status(503))
            .method(Method::GET)
            .kind(PathKind::Manifest)
            .times(2),
    );
    src_proxy.add_rule(
        Rule::new(Fault::status(500))
            .method(Method::GET)
            .kind(PathKind::Blob)
            .times(3),
    );
    dst_proxy.add_rule(
        Rule::new(Fault::status(500))
            .method(Method::HEAD)
            .kind(PathKind::Blob)
            .times(2),
    );
    dst_proxy.add_rule(
        Rule::new(Fault::status(503))
            .method(Method::POST)
            .kind(PathKind::Upload)
            .times(2),
    );
    dst_proxy.add_rule(
        Rule::new(Fault::status(502))
            .method(Method::PUT)
            .kind(PathKind::Upload)
            .times(2),
    );
    // A connection dropped while a blob is being uploaded.
    dst_proxy.add_rule(
        Rule::new(Fault::Disconnect)
            .method(Method::PUT)
            .kind(PathKind::Upload)
            .once(),
    );
    dst_proxy.add_rule(
        Rule::new(Fault::status(503))
            .method(Method::PUT)
            .kind(PathKind::Manifest)
            .times(2),
    );
    let request = copy_request(
        format!("{}/faults/app:v1", src_proxy.host()),
        format!("{}/mirror/app:v1", dst_proxy.host()),
        proxied(&src_proxy, &src),
        proxied(&dst_proxy, &dst),
        EngineSettings {
            max_attempts: 4,
            ..fast_settings()
        },
    );
    let progress = Progress::default();
    let outcome = run_copy(&request, &progress).await.unwrap();
    assert_eq!(outcome.destination_digest, pushed.index_digest);
    assert!(
        src_proxy
            .remaining_rule_counts()
            .iter()
            .chain(dst_proxy.remaining_rule_counts().iter())
            .all(|left| *left == Some(0)),
        "some faults were never injected: source {:?}, destination {:?}",
        src_proxy.remaining_rule_counts(),
        dst_proxy.remaining_rule_counts()
    );
    assert_eq!(
        src_proxy.faults_injected() + dst_proxy.faults_injected(),
        14
    );
    assert_bundle_copied(
        &src,
        "faults/app",
        &dst,
        "mirror/app",
        "v1",
        &pushed.index_digest,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_stalled_responses_time_out_instead_of_hanging() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_bundle(&src, "faults/app", "v1", &faulty_bundle()).await;
    let proxy = FaultProxy::start(&src);
    let settings = EngineSettings {
        io_timeout: Duration::from_secs(1),
        max_attempts: 2,
        ..fast_settings()
    };
    let (big, _) = pushed.largest_blob();
    let stalls = [
        (
            "a response that never starts",
            Rule::new(Fault::Stall {
                duration: Duration::from_secs(300),
            })
            .method(Method::GET)
            .kind(PathKind::Manifest),
            "stalled-head",
        ),
        (
            "a blob body that stops half way",
            Rule::new(Fault::StallBodyAfter {
                bytes: 10_000,
                duration: Duration::from_secs(300),
            })
            .method(Method::GET)
            .path_contains(&big),
            "stalled-body",
        ),
        (
            "a destination that never answers an upload",
            Rule::new(Fault::Stall {
                duration: Duration::from_secs(300),
            })
            .method(Method::PUT)
            .kind(PathKind::Upload),
            "stalled-upload",
        ),
    ];
    // Source faults go to the source proxy, upload faults to the destination's.
    let dst_proxy = FaultProxy::start(&dst);
    for (what, rule, repo) in stalls {
        proxy.clear_rules();
        dst_proxy.clear_rules();
        if rule.kind == Some(PathKind::Upload) {
            dst_proxy.add_rule(rule);
        } else {
            proxy.add_rule(rule);
        }
        let request = copy_request(
            format!("{}/faults/app:v1", proxy.host()),
            format!("{}/{repo}:v1", dst_proxy.host()),
            proxied(&proxy, &src),
            proxied(&dst_proxy, &dst),
            settings.clone(),
        );
        let started = Instant::now();
        let error = run_copy(&request, &Progress::default()).await.unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(error.kind(), ErrorKind::Unreachable, "{what}: {error}");
        assert!(
            error.to_string().contains("timed out") || error.to_string().contains("timeout"),
            "{what}: {error}"
        );
        // Two attempts of a 1 s timeout plus a 250 ms backoff, with slack for a loaded machine.
        assert!(
            elapsed < Duration::from_secs(20),
            "{what}: gave up only after {elapsed:?}"
        );
        assert_tag_absent(&dst, repo, "v1").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_wrong_or_short_bytes_are_a_digest_mismatch_and_nothing_references_them() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_bundle(&src, "faults/app", "v1", &faulty_bundle()).await;
    let proxy = FaultProxy::start(&src);
    let (big, size) = pushed.largest_blob();
    let (small, _) = pushed
        .blobs
        .iter()
        .find(|(_, s)| *s == 30_000)
        .cloned()
        .unwrap();
    let cases = [
        (
            "a flipped byte",
            Fault::Corrupt { at: size / 2 },
            &big,
            "corrupt",
        ),
        (
            "the last byte flipped",
            Fault::Corrupt { at: size - 1 },
            &big,
            "corrupt-end",
        ),
        (
            "a truncated body",
            Fault::Truncate { keep: 1_000 },
            &small,
            "truncated",
        ),
    ];
    for (what, fault, blob, repo) in cases {
        proxy.clear_rules();
        proxy.add_rule(
            Rule::new(fault)
                .method(Method::GET)
                .kind(PathKind::Blob)
                .path_contains(blob),
        );
        let request = copy_request(
            format!("{}/faults/app:v1", proxy.host()),
            format!("{}/{repo}:v1", dst.host()),
            proxied(&proxy, &src),
            direct(&dst),
            fast_settings(),
        );
        let error = run_copy(&request, &Progress::default()).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::DigestMismatch, "{what}: {error}");
        assert!(error.to_string().contains(blob.as_str()), "{what}: {error}");
        assert!(proxy.faults_injected() > 0);
        assert_tag_absent(&dst, repo, "v1").await;
        assert_nothing_references(&src, &pushed, &dst, repo, blob).await;
    }

    // Overwriting (force) a tag that holds another bundle: after the failure the tag still
    // points at the old bundle.
    let old = push_bundle(&dst, "forced", "v1", &faulty_bundle().with_seed(2)).await;
    assert_ne!(old.index_digest, pushed.index_digest);
    proxy.clear_rules();
    proxy.add_rule(
        Rule::new(Fault::Corrupt { at: 1 })
            .method(Method::GET)
            .path_contains(&big),
    );
    let mut request = copy_request(
        format!("{}/faults/app:v1", proxy.host()),
        format!("{}/forced:v1", dst.host()),
        proxied(&proxy, &src),
        direct(&dst),
        fast_settings(),
    );
    request.force = true;
    let error = run_copy(&request, &Progress::default()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DigestMismatch, "{error}");
    let (_, tag_digest, _) = dst.client().head_manifest("forced", "v1").await.unwrap();
    assert_eq!(
        tag_digest, old.index_digest,
        "the failed copy moved the tag"
    );
    assert_nothing_references(&src, &pushed, &dst, "forced", &big).await;

    // A manifest whose bytes do not match the digest its parent names.
    let (image_manifest, _) = pushed
        .manifests
        .iter()
        .find(|(digest, _)| *digest != pushed.config_manifest_digest)
        .cloned()
        .unwrap();
    proxy.clear_rules();
    proxy.add_rule(
        Rule::new(Fault::Corrupt { at: 20 })
            .method(Method::GET)
            .path_contains(&image_manifest),
    );
    let request = copy_request(
        format!("{}/faults/app:v1", proxy.host()),
        format!("{}/bad-manifest:v1", dst.host()),
        proxied(&proxy, &src),
        direct(&dst),
        fast_settings(),
    );
    let error = run_copy(&request, &Progress::default()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DigestMismatch, "{error}");
    assert!(error.to_string().contains(&image_manifest), "{error}");
    assert_tag_absent(&dst, "bad-manifest", "v1").await;
    assert!(
        dst.client()
            .head_manifest("bad-manifest", &image_manifest)
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_blob_redirects_are_followed_without_credentials() {
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    for kind in [RegistryKind::TlsBasicAuth, RegistryKind::Token] {
        let src = TestRegistry::start(kind).await;
        let pushed = push_bundle(&src, "faults/app", "v1", &faulty_bundle()).await;
        let proxy = FaultProxy::start(&src);
        proxy.add_rule(
            Rule::new(Fault::RedirectToStorage)
                .method(Method::GET)
                .kind(PathKind::Blob),
        );
        let repo = format!("redirected-{kind:?}").to_lowercase();
        let request = copy_request(
            format!("{}/faults/app:v1", proxy.host()),
            format!("{}/{repo}:v1", dst.host()),
            proxied(&proxy, &src),
            direct(&dst),
            fast_settings(),
        );
        let progress = Progress::default();
        run_copy(&request, &progress)
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));

        let storage = proxy.storage_requests();
        // Every blob came from the storage host, each once: bundle.json when the bundle was
        // read (it is uploaded from those bytes), the others while streamed.
        assert!(
            storage.len() as u64 == progress.snapshot().copied,
            "{kind:?}: {} storage requests for {:?}",
            storage.len(),
            progress.snapshot()
        );
        let leaked: Vec<_> = storage.iter().filter(|r| r.had_authorization).collect();
        assert!(
            leaked.is_empty(),
            "{kind:?}: Authorization sent to the redirect target: {leaked:?}"
        );
        assert_bundle_copied(&src, "faults/app", &dst, &repo, "v1", &pushed.index_digest).await;
    }
}

/// An OCI index carrying `extra` as an unknown member (registries ignore unknown members).
fn index_with(extra: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [],
        "x-extra": extra,
    }))
    .unwrap()
}

/// A stand-in registry for the one thing a real one will not do: distribution refuses to store or
/// serve a manifest over 4 MiB, but a registry without that limit (or a hostile one) would. It
/// answers `/v2/` with 200 and every other GET with `manifest`, announcing its length or not,
/// one request per connection. Stops when the test process ends.
fn serve_oversized_manifest(manifest: Vec<u8>, announce_length: bool) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let head = String::from_utf8_lossy(&request);
            let body: &[u8] = if head.starts_with("GET /v2/ ") {
                b"{}"
            } else {
                &manifest
            };
            let length = if announce_length || body.len() < 10 {
                format!("Content-Length: {}\r\n", body.len())
            } else {
                String::new()
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.index.v1+json\r\n{length}Connection: close\r\n\r\n"
            );
            let _ = stream.write_all(body);
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_huge_or_deeply_nested_manifests_are_refused_clearly() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

    // Over 4 MiB: a real registry refuses to store or serve it, so a stand-in serves it, with
    // and without a Content-Length.
    let huge = index_with(serde_json::Value::String("x".repeat(5 * 1024 * 1024)));
    let refused = src
        .client()
        .try_put_manifest("huge", "v1", &huge, OCI_INDEX)
        .await;
    assert!(!refused.status().is_success());
    for announce_length in [true, false] {
        let host = serve_oversized_manifest(huge.clone(), announce_length);
        let request = copy_request(
            format!("{host}/huge:v1"),
            format!("{}/huge:v1", dst.host()),
            EndpointOptions::default(),
            direct(&dst),
            fast_settings(),
        );
        let error = run_copy(&request, &Progress::default()).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotABundle, "{error}");
        assert!(
            error.to_string().contains("4194304 byte limit"),
            "Content-Length announced: {announce_length}: {error}"
        );
        assert_tag_absent(&dst, "huge", "v1").await;
    }

    // JSON nested 2000 deep (Go's decoder allows 10000): serde_json stops at 128 levels
    // instead of overflowing the stack.
    let deep = {
        let mut text = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_INDEX}\",\"manifests\":[],\"x-extra\":"
        );
        text.push_str(&"[".repeat(2000));
        text.push_str(&"]".repeat(2000));
        text.push('}');
        text.into_bytes()
    };
    let response = src
        .client()
        .try_put_manifest("deep", "v1", &deep, OCI_INDEX)
        .await;
    assert!(
        response.status().is_success(),
        "the registry refused the nested manifest: {}",
        response.text().await.unwrap_or_default()
    );

    {
        let (repo, expected) = ("deep", "recursion limit");
        let request = copy_request(
            format!("{}/{repo}:v1", src.host()),
            format!("{}/{repo}:v1", dst.host()),
            direct(&src),
            direct(&dst),
            fast_settings(),
        );
        let error = run_copy(&request, &Progress::default()).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotABundle, "{repo}: {error}");
        let message = error.to_string();
        assert!(message.contains(expected), "{repo}: {message}");
        assert!(
            message.len() < 500,
            "{repo}: the message is not short: {message}"
        );
        assert_tag_absent(&dst, repo, "v1").await;
    }
}
