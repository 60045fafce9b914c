//! The controller at scale: the real `bundlecopy controller` process against the fake API server
//! of `support::fake_api` holding 1,000 BundleCopies that are all up to date (each status is
//! exactly what the controller writes after a copy, and each destination tag holds the bundle).
//! One resync pass (the startup list) must make no status patch and send no Event, at most one
//! manifest HEAD per resource at the destination and nothing at all to the source (the source
//! tags are not due for a re-check), and the process's peak RSS must stay within 100 MiB.
//! A second scenario puts the destination behind bearer-token auth with a credentials Secret.
//! A third scenario creates BundleCopies at once that were never copied (100 in the suite, 1,000
//! from `bench/controller-scale.sh`), all into one destination registry, and follows them until
//! all are Ready (at most 2 status patches each, copies in flight at the destination within the
//! per-registry cap, peak RSS within 64 MiB), then restarts the controller: the new process
//! writes nothing and sends one HEAD per resource.
//! The figures are printed (`--nocapture`); `bench/controller-scale.sh` runs these tests and
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
    BundleSpec, DockerConfig, FaultProxy, ImageFormat, PathKind, PushedBundle, RegistryKind,
    TestRegistry, copies_in_flight, push_bundle,
};

const NAMESPACE: &str = "bc-scale";
const DEFAULT_RESOURCES: usize = 1000;
const DEFAULT_FRESH_RESOURCES: usize = 100;
const PEAK_RSS_LIMIT_KIB: u64 = 100 * 1024;
/// Issue 15: 1,000 copies created at once stay within 64 MiB.
const FRESH_PEAK_RSS_LIMIT_KIB: u64 = 64 * 1024;
/// The controller's `--max-concurrent-copies` in the fresh-copies scenario (its default).
const MAX_CONCURRENT_COPIES: usize = 4;
/// Its `--max-copies-per-registry` (the default): the cap the destination must see.
const MAX_COPIES_PER_REGISTRY: usize = 2;

fn resources() -> usize {
    scale_resources().unwrap_or(DEFAULT_RESOURCES)
}

/// New BundleCopies in the fresh-copies scenario: every one is a real copy, so the suite makes
/// fewer than the benchmark (`bench/controller-scale.sh` sets `BUNDLECOPY_SCALE_RESOURCES`).
fn fresh_resources() -> usize {
    scale_resources().unwrap_or(DEFAULT_FRESH_RESOURCES)
}

fn scale_resources() -> Option<usize> {
    std::env::var("BUNDLECOPY_SCALE_RESOURCES")
        .ok()
        .and_then(|n| n.parse().ok())
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

/// `fresh_resources()` BundleCopies created at once, none copied yet, all into one repository of
/// an empty destination registry: the controller copies every one (the first ones upload the
/// blobs and manifests, at once; later ones find them and push their tag), each gets at most 2 status patches
/// (Copying, then Ready), the copies in flight at the destination — counted there, from a copy's
/// first request naming its tag to the PUT of that tag — never exceed the per-registry cap, and
/// peak RSS stays within 64 MiB. Then the controller is restarted: the new process finds all of
/// them up to date, writes nothing and sends one manifest HEAD each.
#[tokio::test(flavor = "multi_thread")]
async fn controller_scale_fresh_copies_into_one_registry_then_a_restart() {
    let count = fresh_resources();
    let ScaleSetup {
        destination,
        source_proxy,
        destination_proxy,
        source_reference,
        _source,
        ..
    } = ScaleSetup::start(RegistryKind::Plain).await;
    // The destination starts empty: the first copies upload the same blobs into one repository
    // at once, which distribution 2.8 can answer with a refused manifest PUT (the engine checks
    // and sends it again: tests/integration/upload_race.rs).
    let mut state = ApiState::default();
    for index in 0..count {
        let name = format!("app-{index:04}");
        let spec = json!({
            "source": {"reference": source_reference},
            "destination": {"reference": format!("{}/mirror/app:t{index}", destination_proxy.host())},
            "interval": "1h",
        });
        state.objects.insert(
            name.clone(),
            bundle_copy_object(NAMESPACE, &name, index as u32, spec, None),
        );
    }
    let api = FakeApiServer::start(NAMESPACE, state).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());

    let started = Instant::now();
    let cap = MAX_CONCURRENT_COPIES.to_string();
    let per_registry = MAX_COPIES_PER_REGISTRY.to_string();
    let mut controller = ControllerProcess::start(
        &kubeconfig,
        NAMESPACE,
        dir.path(),
        "controller-copies.log",
        &[
            "--max-concurrent-copies",
            &cap,
            "--max-copies-per-registry",
            &per_registry,
        ],
    );
    controller.wait_ready(Duration::from_secs(60)).await;
    // A guard against a hang, not a timing target: a debug build on a loaded 2-core machine took
    // 0.2 s per copy alone, 0.6 s per copy beside the rest of the suite.
    let within = Duration::from_secs(60 + 2 * count as u64);
    wait_for_all(
        &mut controller,
        count,
        within,
        "BundleCopies Ready",
        async |_| {
            let state = api.state.lock().unwrap();
            state
                .objects
                .keys()
                .filter(|name| {
                    state
                        .last_ready(name)
                        .is_some_and(|(status, _)| status == "True")
                })
                .count()
        },
    )
    .await;
    let all_ready = started.elapsed();
    let peak_rss_kib = controller.peak_rss_kib();
    let cpu = controller.cpu_time();
    controller.stop(Duration::from_secs(20)).await;

    let requests = destination_proxy.requests();
    let in_flight = copies_in_flight(&requests);
    let (most_patches, patches, failed) = {
        let state = api.state.lock().unwrap();
        let most = state
            .objects
            .keys()
            .map(|name| state.patches_of(name).len())
            .max()
            .unwrap_or(0);
        let failed: Vec<_> = state
            .objects
            .keys()
            .filter(|name| {
                state
                    .last_ready(name)
                    .is_none_or(|(status, _)| status != "True")
            })
            .cloned()
            .collect();
        (most, state.status_patches.len(), failed)
    };
    eprintln!(
        "scale: {count} new BundleCopies into one registry: all Ready {:.1} s from process start, \
         {:.1} s of CPU, peak RSS {:.1} MiB (VmHWM); {patches} status patches (at most \
         {most_patches} per object); at most {in_flight} copies in flight at the destination \
         (cap {MAX_COPIES_PER_REGISTRY} per registry); {} destination and {} source requests",
        all_ready.as_secs_f64(),
        cpu.as_secs_f64(),
        peak_rss_kib as f64 / 1024.0,
        requests.len(),
        source_proxy.requests().len(),
    );
    assert!(failed.is_empty(), "not Ready: {failed:?}");
    assert!(
        most_patches <= 2,
        "at most 2 status patches per copy (Copying, Ready); one object had {most_patches}"
    );
    assert!(
        in_flight <= MAX_COPIES_PER_REGISTRY,
        "{in_flight} copies in flight at the destination, over the cap of {MAX_COPIES_PER_REGISTRY}"
    );
    assert!(
        peak_rss_kib <= FRESH_PEAK_RSS_LIMIT_KIB,
        "peak RSS {peak_rss_kib} KiB is over {FRESH_PEAK_RSS_LIMIT_KIB} KiB"
    );

    let registries = Registries {
        source_proxy: &source_proxy,
        destination_proxy: &destination_proxy,
        destination: &destination,
    };
    let label = format!("the same {count} BundleCopies after a restart");
    quiet_pass(&api, dir.path(), count, &registries, 1, &label).await;
}

/// Polls `done` until it reaches `count`; fails with the controller's log if the process exits or
/// `within` passes first.
async fn wait_for_all(
    controller: &mut ControllerProcess,
    count: usize,
    within: Duration,
    what: &str,
    mut done: impl AsyncFnMut(&ControllerProcess) -> usize,
) {
    let deadline = Instant::now() + within;
    loop {
        controller.assert_running();
        let done = done(controller).await;
        if done >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {count} {what} within {within:?}:\n{}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Builds `resources()` up-to-date BundleCopies whose destination is a `destination_kind`
/// registry, runs one resync pass of the real controller, prints the figures and asserts them.
/// `heads_per_check`: manifest HEADs on the wire for one check of a destination tag.
async fn resync_pass(destination_kind: RegistryKind, heads_per_check: usize) {
    let count = resources();
    let ScaleSetup {
        destination,
        pushed,
        source_proxy,
        destination_proxy,
        source_reference,
        _source,
    } = ScaleSetup::start(destination_kind).await;

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
    let registries = Registries {
        source_proxy: &source_proxy,
        destination_proxy: &destination_proxy,
        destination: &destination,
    };
    let label = format!("{count} up-to-date BundleCopies, {destination_kind:?} destination");
    quiet_pass(
        &api,
        dir.path(),
        count,
        &registries,
        heads_per_check,
        &label,
    )
    .await;
    eprintln!(
        "scale: seeding {count} tags took {:.1} s",
        seeding.as_secs_f64()
    );
}

/// A source registry holding a small bundle, a destination registry, and a counting proxy in
/// front of each.
struct ScaleSetup {
    /// Kept running for the scenario: bind it (`_source`), do not drop it with `..`.
    _source: TestRegistry,
    destination: TestRegistry,
    pushed: PushedBundle,
    source_proxy: FaultProxy,
    destination_proxy: FaultProxy,
    /// The bundle's reference through the source proxy.
    source_reference: String,
}

impl ScaleSetup {
    async fn start(destination_kind: RegistryKind) -> ScaleSetup {
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
        ScaleSetup {
            _source: source,
            destination,
            pushed,
            source_proxy,
            destination_proxy,
            source_reference,
        }
    }
}

/// The registries of a scale scenario, each reached through a counting proxy.
struct Registries<'a> {
    source_proxy: &'a FaultProxy,
    destination_proxy: &'a FaultProxy,
    destination: &'a TestRegistry,
}

/// Runs one resync pass of a new controller process over `count` BundleCopies that the API
/// server holds as up to date, prints its figures and asserts that it wrote nothing: no status
/// patch, no Event, `heads_per_check` manifest HEADs per resource at the destination and nothing
/// else but pings, nothing at the source, peak RSS within the limit.
async fn quiet_pass(
    api: &FakeApiServer,
    dir: &std::path::Path,
    count: usize,
    registries: &Registries<'_>,
    heads_per_check: usize,
    label: &str,
) {
    let Registries {
        source_proxy,
        destination_proxy,
        destination,
    } = registries;
    let with_credentials = destination.requires_auth();
    let kubeconfig = api.write_kubeconfig(dir);
    let (patches_mark, events_mark, secret_reads_mark) = {
        let state = api.state.lock().unwrap();
        (
            state.status_patches.len(),
            state.events.len(),
            state.secret_reads,
        )
    };
    let source_mark = source_proxy.requests().len();
    let destination_mark = destination_proxy.requests().len();
    let tokens_mark = destination.token_server().map_or(0, |t| t.tokens_issued());

    let started = Instant::now();
    let mut controller =
        ControllerProcess::start(&kubeconfig, NAMESPACE, dir, "controller-resync.log", &[]);
    controller.wait_ready(Duration::from_secs(60)).await;
    let within = Duration::from_secs(300);
    wait_for_all(
        &mut controller,
        count,
        within,
        "reconciles",
        async |controller| {
            controller
                .metric("bundlecopy_reconciles_total")
                .await
                .unwrap_or(0.0) as usize
        },
    )
    .await;
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
    let patches = state.status_patches.len() - patches_mark;
    let events = state.events.len() - events_mark;
    let secret_reads = state.secret_reads - secret_reads_mark;
    eprintln!(
        "scale: {label}; one resync \
         pass: {reconciles} reconciles, {patches} status patches, {events} Events, \
         {manifest_heads} destination manifest HEADs, {pings} destination pings (GET /v2/), {} \
         destination requests in all, {tokens} tokens issued, {secret_reads} Secret reads, {} \
         source requests; pass {:.1} s from process start, {:.1} s of CPU; peak RSS {:.1} MiB (VmHWM)",
        destination_requests.len(),
        source_requests.len(),
        pass.as_secs_f64(),
        cpu.as_secs_f64(),
        peak_rss_kib as f64 / 1024.0,
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
        state.status_patches.get(patches_mark)
    );
    assert_eq!(events, 0, "no Events: {:?}", state.events.get(events_mark));
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
