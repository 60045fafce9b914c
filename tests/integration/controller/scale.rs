//! The controller at scale: the real `bundlecopy controller` process against the fake API server
//! of `support::fake_api` holding 1,000 BundleCopies that are all up to date (each status is
//! exactly what the controller writes after a copy, and each destination tag holds the bundle).
//! One resync pass (the startup list) must make no status patch and send no Event, at most one
//! manifest HEAD per resource at the destination and nothing at all to the source (the source
//! tags are not due for a re-check), and the process's peak RSS must stay within 100 MiB.
//! A second scenario puts the destination behind bearer-token auth with a credentials Secret.
//! The figures are printed (`--nocapture`); `bench/controller-scale.sh` runs this test and
//! reports them. `BUNDLECOPY_SCALE_RESOURCES` changes the number of resources.
//! `cargo test --test integration controller::scale`

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use http::Method;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use bundlecopy::operator::crd::BundleCopySpec;
use bundlecopy::operator::status::{Phase, next_status};
use bundlecopy::operator::validate::validate;
use bundlecopy_engine::{EndpointOptions, Progress, copy_bundle};

use crate::faults::{copy_request, fast_settings, proxied};
use crate::support::fake_api::{ApiState, ControllerProcess, FakeApiServer, bundle_copy_object};
use crate::support::{
    BundleSpec, DockerConfig, FaultProxy, ImageFormat, PathKind, RegistryKind, TestRegistry,
    push_bundle,
};

const NAMESPACE: &str = "bc-scale";
const DEFAULT_RESOURCES: usize = 1000;
const PEAK_RSS_LIMIT_KIB: u64 = 100 * 1024;

fn resources() -> usize {
    std::env::var("BUNDLECOPY_SCALE_RESOURCES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_RESOURCES)
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_scale_one_resync_of_up_to_date_resources_patches_nothing() {
    resync_pass(RegistryKind::Plain, 1).await;
}

/// The same against a destination that wants bearer tokens, each resource naming a credentials
/// Secret: one Secret read and one token per reconcile come on top, and still one HEAD per
/// check (the engine fetches the token from the ping's Bearer challenge before the HEAD).
#[tokio::test(flavor = "multi_thread")]
async fn controller_scale_one_resync_with_credentials_and_tokens() {
    resync_pass(RegistryKind::Token, 1).await;
}

/// Builds `resources()` up-to-date BundleCopies whose destination is a `destination_kind`
/// registry, runs one resync pass of the real controller, prints the figures and asserts them.
/// `heads_per_check`: manifest HEADs on the wire for one check of a destination tag.
async fn resync_pass(destination_kind: RegistryKind, heads_per_check: usize) {
    let count = resources();
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(destination_kind)
    );
    let pushed = push_bundle(
        &source,
        "scale/app",
        "v1",
        &BundleSpec::new("scale", "1.0.0").with_component("db", ImageFormat::Oci, &[4096]),
    )
    .await;
    let source_proxy = FaultProxy::start(&source);
    let destination_proxy = FaultProxy::start(&destination);
    let source_reference = format!("{}/scale/app:v1", source_proxy.host());

    // One real copy; the other destination tags point at the same index.
    let first_destination = format!("{}/mirror/app:t0", destination_proxy.host());
    let request = copy_request(
        source_reference.clone(),
        first_destination,
        EndpointOptions::default(),
        proxied(&destination_proxy, &destination),
        fast_settings(),
    );
    let outcome = copy_bundle(&request, &Progress::default()).await.unwrap();
    let direct = destination.client();
    let seeded = Instant::now();
    let tags: Vec<String> = (1..count).map(|index| format!("t{index}")).collect();
    futures_util::stream::iter(&tags)
        .for_each_concurrent(16, |tag| {
            let direct = &direct;
            let pushed = &pushed;
            async move {
                direct
                    .put_manifest(
                        "mirror/app",
                        tag,
                        &pushed.index_bytes,
                        &pushed.index_media_type,
                    )
                    .await;
            }
        })
        .await;
    let seeding = seeded.elapsed();

    // Each resource's status: what the controller itself writes after copying it.
    let now = Timestamp::now();
    let mut state = ApiState::default();
    let with_credentials = destination.requires_auth();
    if with_credentials {
        let config = DockerConfig::new()
            .with_host_as(&destination_proxy.host(), &destination)
            .json();
        state.secrets.insert(
            "push-creds".to_string(),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "push-creds", "namespace": NAMESPACE, "resourceVersion": "1"},
                   "type": "kubernetes.io/dockerconfigjson",
                   "data": {".dockerconfigjson": STANDARD.encode(config)}}),
        );
    }
    for index in 0..count {
        let name = format!("app-{index:04}");
        let mut spec = json!({
            "source": {"reference": source_reference},
            "destination": {"reference": format!("{}/mirror/app:t{index}", destination_proxy.host())},
            "interval": "1h",
        });
        if with_credentials {
            spec["destination"]["credentials"] = json!([{"name": "push-creds"}]);
        }
        let typed: BundleCopySpec = serde_json::from_value(spec.clone()).unwrap();
        let valid = validate(&typed).unwrap();
        let mut copied = outcome.clone();
        copied.destination = valid.destination.clone();
        let status = next_status(
            &Default::default(),
            1,
            Some(&valid.destination),
            Phase::Copied { outcome: &copied },
            now,
        );
        let status = serde_json::to_value(&status).unwrap();
        state.objects.insert(
            name.clone(),
            bundle_copy_object(NAMESPACE, &name, index as u32, spec, Some(status)),
        );
    }
    let api = FakeApiServer::start(NAMESPACE, state).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());
    let source_mark = source_proxy.requests().len();
    let destination_mark = destination_proxy.requests().len();
    let tokens_mark = destination.token_server().map_or(0, |t| t.tokens_issued());

    let started = Instant::now();
    let mut controller =
        ControllerProcess::start(&kubeconfig, NAMESPACE, dir.path(), "controller.log", &[]);
    controller.wait_ready(Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        controller.assert_running();
        let reconciles = controller
            .metric("bundlecopy_reconciles_total")
            .await
            .unwrap_or(0.0);
        if reconciles >= count as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {reconciles} of {count} reconciles within 300 s:\n{}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pass = started.elapsed();
    // Anything a reconcile still had in flight arrives now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak_rss_kib = controller.peak_rss_kib();
    let cpu = controller.cpu_time();
    let reconciles = controller
        .metric("bundlecopy_reconciles_total")
        .await
        .unwrap_or(0.0);
    controller.stop(Duration::from_secs(20)).await;

    let destination_requests = destination_proxy.requests()[destination_mark..].to_vec();
    let source_requests = source_proxy.requests()[source_mark..].to_vec();
    let count_of = |method: Method, kind: PathKind| {
        destination_requests
            .iter()
            .filter(|r| r.method == method && r.kind == kind)
            .count()
    };
    let manifest_heads = count_of(Method::HEAD, PathKind::Manifest);
    let pings = count_of(Method::GET, PathKind::Ping);
    let tokens = destination
        .token_server()
        .map_or(0, |t| t.tokens_issued() - tokens_mark);
    let state = api.state.lock().unwrap();
    let patches = state.status_patches.len();
    let events = state.events.len();
    let secret_reads = state.secret_reads;
    eprintln!(
        "scale: {count} up-to-date BundleCopies, {destination_kind:?} destination; one resync \
         pass: {reconciles} reconciles, {patches} status patches, {events} Events, \
         {manifest_heads} destination manifest HEADs, {pings} destination pings (GET /v2/), {} \
         destination requests in all, {tokens} tokens issued, {secret_reads} Secret reads, {} \
         source requests; pass {:.1} s from process start, {:.1} s of CPU; peak RSS {:.1} MiB (VmHWM); seeding {} tags \
         took {:.1} s",
        destination_requests.len(),
        source_requests.len(),
        pass.as_secs_f64(),
        cpu.as_secs_f64(),
        peak_rss_kib as f64 / 1024.0,
        count,
        seeding.as_secs_f64(),
    );
    assert!(
        state.unexpected.is_empty(),
        "unexpected API requests: {:?}",
        &state.unexpected[..state.unexpected.len().min(10)]
    );
    assert_eq!(
        reconciles, count as f64,
        "one reconcile per resource, no more"
    );
    assert_eq!(
        patches,
        0,
        "an up-to-date resource must not be patched; first: {:?}",
        state.status_patches.first()
    );
    assert_eq!(events, 0, "no Events: {:?}", state.events.first());
    assert_eq!(
        manifest_heads,
        count * heads_per_check,
        "each resource checks its destination once ({heads_per_check} HEAD(s) on the wire per check)"
    );
    if with_credentials {
        assert_eq!(secret_reads, count, "one read of the Secret per reconcile");
        assert_eq!(tokens, count, "one token per reconcile");
    }
    let other: Vec<_> = destination_requests
        .iter()
        .filter(|r| {
            !matches!(
                (&r.method, r.kind),
                (&Method::GET, PathKind::Ping) | (&Method::HEAD, PathKind::Manifest)
            )
        })
        .take(5)
        .collect();
    assert!(other.is_empty(), "only pings and manifest HEADs: {other:?}");
    assert!(
        source_requests.is_empty(),
        "the source is not re-resolved before its interval: {:?}",
        &source_requests[..source_requests.len().min(5)]
    );
    assert!(
        peak_rss_kib <= PEAK_RSS_LIMIT_KIB,
        "peak RSS {peak_rss_kib} KiB is over {PEAK_RSS_LIMIT_KIB} KiB"
    );
}
