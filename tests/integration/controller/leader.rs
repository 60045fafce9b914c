//! Leader election when the leader's link to the API server goes silent: two real
//! `bundlecopy controller` processes, `a` and `b`, elect a leader through the shared fake API
//! server (`support::fake_api`), while copies whose source blobs a proxy stalls are in flight.
//!
//! The link of the leader (`a`) is then frozen — requests held unanswered on open connections,
//! the way a network that drops packets looks — either inside the fake API server or by a TCP
//! relay in front of it (`support::frozen_link`). The leader must stop leading by its renew
//! deadline plus one retry period, send no write after its deadline, and leave the copies to `b`,
//! which takes over once the lease runs out; a freeze shorter than the renew deadline must change
//! nothing. And a new leader tries an object whose last attempt failed once, not twice.
//!
//! `cargo nextest run --test integration controller::leader`

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;

use crate::support::fake_api::{
    ApiState, ControllerProcess, FakeApiServer, SeenRequest, bundle_copy_object,
};
use crate::support::frozen_link::FrozenLink;
use crate::support::{
    BundleSpec, Fault, FaultProxy, PathKind, PushedBundle, RegistryKind, Rule, TestRegistry,
    assert_bundle_copied, push_bundle,
};

const NAMESPACE: &str = "bc-leader";
const LEASE: &str = "bundlecopy-operator";

/// Slack for a request that left before the deadline to reach the server, and for polling.
const SLACK: Duration = Duration::from_millis(250);

#[derive(Clone, Copy)]
struct Timing {
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

/// Short enough for a test, with the production proportions.
const SHORT: Timing = Timing {
    lease_duration: Duration::from_secs(6),
    renew_deadline: Duration::from_secs(4),
    retry_period: Duration::from_secs(1),
};

/// The defaults (client-go's): what users run.
const DEFAULT: Timing = Timing {
    lease_duration: Duration::from_secs(15),
    renew_deadline: Duration::from_secs(10),
    retry_period: Duration::from_secs(2),
};

impl Timing {
    fn args(&self, identity: &str) -> Vec<String> {
        let millis = |duration: Duration| format!("{}ms", duration.as_millis());
        vec![
            "--leader-election".into(),
            "--leader-election-namespace".into(),
            NAMESPACE.into(),
            "--leader-election-identity".into(),
            identity.into(),
            "--leader-election-lease-duration".into(),
            millis(self.lease_duration),
            "--leader-election-renew-deadline".into(),
            millis(self.renew_deadline),
            "--leader-election-retry-period".into(),
            millis(self.retry_period),
        ]
    }
}

/// Two controllers, `a` leading and `b` standing by, with copies in flight under `a`.
struct Scene {
    api: FakeApiServer,
    a: ControllerProcess,
    b: ControllerProcess,
    source: TestRegistry,
    destination: TestRegistry,
    /// In front of the source: stalls every blob GET until its rules are cleared.
    source_proxy: FaultProxy,
    bundles: Vec<(String, PushedBundle)>,
    /// Between `a` and the API server, when the freeze is in the network.
    link: Option<FrozenLink>,
    _dir: tempfile::TempDir,
}

/// Where the leader's link is frozen.
#[derive(Clone, Copy, PartialEq)]
enum Freeze {
    /// Inside the fake API server: requests from `a` are held there.
    AtTheApiServer,
    /// In a TCP relay between `a` and the API server.
    InTheNetwork,
}

/// Starts the scene; with `Freeze::InTheNetwork`, `a` reaches the API server through a relay.
async fn start_scene(timing: Timing, blob_stall: Duration, freeze: Freeze) -> Scene {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    let source_proxy = FaultProxy::start(&source);
    source_proxy.add_rule(
        Rule::new(Fault::Stall {
            duration: blob_stall,
        })
        .method(Method::GET)
        .kind(PathKind::Blob),
    );
    let mut state = ApiState::default();
    let mut bundles = Vec::new();
    for index in 0..2u32 {
        let name = format!("app-{index}");
        let mut spec = BundleSpec::new(&name, "0.1.0");
        spec.seed = u64::from(index) + 40;
        let pushed = push_bundle(&source, &name, "v1", &spec).await;
        let copy_spec = json!({
            "source": {"reference": format!("{}/{name}:v1", source_proxy.host())},
            "destination": {"reference": format!("{}/mirror", destination.host())},
        });
        state.objects.insert(
            name.clone(),
            bundle_copy_object(NAMESPACE, &name, index + 1, copy_spec, None),
        );
        bundles.push((name, pushed));
    }
    let api = FakeApiServer::start(NAMESPACE, state).await;
    let dir = tempfile::tempdir().unwrap();
    let link = match freeze {
        Freeze::InTheNetwork => {
            Some(FrozenLink::start(api.url.trim_start_matches("http://")).await)
        }
        Freeze::AtTheApiServer => None,
    };
    let kubeconfig_a = match &link {
        Some(link) => api.write_kubeconfig_via(dir.path(), "a", &link.url()),
        None => api.write_kubeconfig_for(dir.path(), "a"),
    };
    let kubeconfig_b = api.write_kubeconfig_for(dir.path(), "b");
    let start = |kubeconfig: &std::path::Path, identity: &str| {
        let args = timing.args(identity);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ControllerProcess::start(
            kubeconfig,
            NAMESPACE,
            dir.path(),
            &format!("{identity}.log"),
            &args,
        )
    };
    let mut a = start(&kubeconfig_a, "a");
    wait_for_answer(
        &mut a,
        "/leaderz",
        (200, "leader\n"),
        Duration::from_secs(60),
    )
    .await;
    let mut b = start(&kubeconfig_b, "b");
    wait_for_answer(
        &mut b,
        "/readyz",
        (200, "standby\n"),
        Duration::from_secs(60),
    )
    .await;
    // Copies in flight under `a`: its blob GETs are held at the source proxy.
    a.wait_until(
        Duration::from_secs(30),
        || source_proxy.count(&Method::GET, PathKind::Blob) >= 1,
        || "no blob GET reached the source".to_string(),
    )
    .await;
    Scene {
        api,
        a,
        b,
        source,
        destination,
        source_proxy,
        bundles,
        link,
        _dir: dir,
    }
}

/// One of the two controllers.
#[derive(Clone, Copy, Debug)]
enum Controller {
    A,
    B,
}

impl Scene {
    /// Freezes `a`'s link, where the scene cuts it; returns when the freeze began.
    fn freeze_a(&self) -> Instant {
        match &self.link {
            Some(link) => link.freeze(),
            None => self.api.freeze("a"),
        }
    }

    fn unfreeze_a(&self) {
        match &self.link {
            Some(link) => link.unfreeze(),
            None => self.api.unfreeze("a"),
        }
    }

    /// Waits until every BundleCopy is Ready True, watching `by` (the one expected to copy).
    async fn wait_until_all_ready(&mut self, by: Controller) {
        let Scene {
            api, a, b, bundles, ..
        } = self;
        let process = match by {
            Controller::A => a,
            Controller::B => b,
        };
        process
            .wait_until(
                Duration::from_secs(60),
                || all_ready(api, bundles),
                || format!("not every copy Ready under {by:?}"),
            )
            .await;
    }
}

/// Polls `path` on `process` until it answers `expected`.
async fn wait_for_answer(
    process: &mut ControllerProcess,
    path: &str,
    expected: (u16, &str),
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        process.assert_running();
        let (status, body) = process.probe(path).await;
        if (status, body.as_str()) == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{path} still says {status} {body:?}, not {expected:?}, after {within:?}:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(holderIdentity, leaseTransitions)` of the lease.
fn lease_holder(api: &FakeApiServer) -> (String, i64) {
    let state = api.state.lock().unwrap();
    let spec = &state.leases[LEASE]["spec"];
    (
        spec["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        spec["leaseTransitions"].as_i64().unwrap_or(0),
    )
}

fn all_ready(api: &FakeApiServer, scene_bundles: &[(String, PushedBundle)]) -> bool {
    let state = api.state.lock().unwrap();
    scene_bundles.iter().all(|(name, _)| {
        state
            .last_ready(name)
            .is_some_and(|(status, _)| status == "True")
    })
}

/// The leader's link goes silent while copies are in flight: it stops leading by its renew
/// deadline plus one retry period, sends no status patch, Event, Lease or other write after
/// its deadline (its in-flight copies are dropped), and `b` takes over once the lease runs out
/// and copies everything. Resumed, `a` stands by and writes nothing.
async fn a_frozen_leader_hands_over(timing: Timing, freeze: Freeze, blob_stall: Duration) {
    let mut scene = start_scene(timing, blob_stall, freeze).await;
    let (_, transitions_before) = lease_holder(&scene.api);

    let frozen_at = scene.freeze_a();
    // From now on the source answers at once: only leadership decides who copies.
    scene.source_proxy.clear_rules();

    let step_down_bound = timing.renew_deadline + timing.retry_period;
    let stepped_down = wait_for_answer(
        &mut scene.a,
        "/leaderz",
        (503, "standby\n"),
        step_down_bound,
    )
    .await;
    let gauge = scene.a.metric("bundlecopy_leader").await;
    assert_eq!(gauge, Some(0.0), "bundlecopy_leader once stepped down");

    let take_over_bound = timing.lease_duration + timing.retry_period + Duration::from_secs(1);
    let taken_over = wait_for_answer(&mut scene.b, "/leaderz", (200, "leader\n"), take_over_bound)
        .await
        + stepped_down;
    eprintln!(
        "freeze → a stepped down after {stepped_down:?} (bound {step_down_bound:?}); \
         b leads after {taken_over:?} (bound {take_over_bound:?})"
    );
    assert!(
        taken_over > stepped_down,
        "b led before a stepped down: {taken_over:?} vs {stepped_down:?}"
    );
    scene.wait_until_all_ready(Controller::B).await;
    for (name, pushed) in &scene.bundles {
        assert_bundle_copied(
            &scene.source,
            name,
            &scene.destination,
            &format!("mirror/{name}"),
            "v1",
            &pushed.index_digest,
        )
        .await;
    }

    // The link comes back: `a` learns that `b` leads, stands by, and writes nothing.
    let unfrozen_at = Instant::now();
    scene.unfreeze_a();
    tokio::time::sleep(timing.retry_period * 3).await;
    scene.a.assert_running();
    assert_eq!(scene.a.probe("/leaderz").await, (503, "standby\n".into()));
    assert_eq!(scene.a.probe("/readyz").await, (200, "standby\n".into()));
    let (holder, transitions) = lease_holder(&scene.api);
    assert_eq!(holder, "b");
    assert_eq!(transitions, transitions_before + 1);

    let deadline = frozen_at + timing.renew_deadline + SLACK;
    let state = scene.api.state.lock().unwrap();
    // What `a` sent, as seen where it was cut off.
    let late_writes: Vec<String> = match &scene.link {
        Some(link) => link
            .sent()
            .into_iter()
            .filter(|request| request.is_write() && request.at > deadline)
            .map(|request| request.line)
            .collect(),
        None => state
            .requests_of("a")
            .into_iter()
            .filter(|request| request.is_write() && request.at > deadline)
            .map(SeenRequest::to_string)
            .collect(),
    };
    assert!(
        late_writes.is_empty(),
        "a sent writes after its renew deadline: {late_writes:?}\n{}",
        scene.a.log()
    );
    // What reached the API server from `a` after the freeze began: no write at all.
    let arrived_writes: Vec<String> = state
        .requests_of("a")
        .into_iter()
        .filter(|request| request.is_write() && !request.held && request.at > frozen_at + SLACK)
        .map(SeenRequest::to_string)
        .collect();
    assert!(arrived_writes.is_empty(), "{arrived_writes:?}");
    // `a` is a candidate again (it did not exit): it reads the lease once resumed.
    assert!(
        state.requests_of("a").iter().any(|request| {
            request.is_lease() && request.method == Method::GET && request.at > unfrozen_at
        }),
        "a stopped contending for the lease:\n{}",
        scene.a.log()
    );
    assert!(state.unexpected.is_empty(), "{:?}", state.unexpected);
}

#[tokio::test]
async fn controller_leader_frozen_at_the_api_server_steps_down_and_the_standby_copies() {
    a_frozen_leader_hands_over(SHORT, Freeze::AtTheApiServer, Duration::from_secs(10)).await;
}

/// The same through a real TCP relay, with the default timing users run.
#[tokio::test]
async fn controller_leader_frozen_in_the_network_steps_down_with_the_default_timing() {
    a_frozen_leader_hands_over(DEFAULT, Freeze::InTheNetwork, Duration::from_secs(20)).await;
}

/// A freeze shorter than the renew deadline changes nothing: `a` leads throughout (its
/// `/leaderz` never fails), the lease keeps its holder and transition count, `b` writes nothing,
/// and `a` finishes the copies.
async fn a_short_freeze_keeps_the_leader(freeze: Freeze) {
    let timing = SHORT;
    let mut scene = start_scene(timing, Duration::from_secs(3), freeze).await;
    let before = lease_holder(&scene.api);
    assert_eq!(before.0, "a");

    let outage = timing.renew_deadline / 2;
    let frozen_at = scene.freeze_a();
    scene.source_proxy.clear_rules();
    while frozen_at.elapsed() < outage {
        assert_eq!(
            scene.a.probe("/leaderz").await,
            (200, "leader\n".into()),
            "{:?} into a {outage:?} outage",
            frozen_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unfrozen_at = Instant::now();
    scene.unfreeze_a();
    scene.wait_until_all_ready(Controller::A).await;
    tokio::time::sleep(timing.lease_duration).await;
    assert_eq!(scene.a.probe("/leaderz").await, (200, "leader\n".into()));
    assert_eq!(scene.b.probe("/leaderz").await, (503, "standby\n".into()));
    assert_eq!(
        lease_holder(&scene.api),
        before,
        "(holder, leaseTransitions)"
    );
    let state = scene.api.state.lock().unwrap();
    let renewed = state.requests_of("a").iter().any(|request| {
        request.is_lease()
            && request.method == Method::PUT
            && !request.held
            && request.at > unfrozen_at
    });
    assert!(renewed, "a renewed the lease once the link was back");
    let writes_by_b: Vec<String> = state
        .requests_of("b")
        .into_iter()
        .filter(|request| request.is_write())
        .map(SeenRequest::to_string)
        .collect();
    assert!(writes_by_b.is_empty(), "the standby wrote {writes_by_b:?}");
    assert!(state.unexpected.is_empty(), "{:?}", state.unexpected);
}

#[tokio::test]
async fn controller_leader_keeps_leading_through_a_freeze_shorter_than_the_renew_deadline() {
    a_short_freeze_keeps_the_leader(Freeze::AtTheApiServer).await;
}

#[tokio::test]
async fn controller_leader_keeps_leading_through_a_short_network_freeze() {
    a_short_freeze_keeps_the_leader(Freeze::InTheNetwork).await;
}

/// A new leader (here: a controller starting) finds an object whose last attempt failed and
/// whose spec names a Secret: it tries the copy once, then waits its backoff. The Secret watch's
/// first listing used to trigger a second attempt right after the first.
#[tokio::test]
async fn controller_leader_a_new_leader_tries_a_failed_object_once() {
    use base64::Engine as _;
    // Nothing listens here: every attempt fails with Unreachable.
    let unreachable = format!("127.0.0.1:{}", crate::support::registry::free_port());
    let failed_status = json!({
        "observedGeneration": 1,
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "Unreachable", "observedGeneration": 1,
             "message": "earlier leader", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Stalled", "status": "False", "reason": "Unreachable", "observedGeneration": 1,
             "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ],
    });
    let spec = json!({
        "source": {"reference": format!("{unreachable}/app:v1"), "insecure": true,
                   "credentials": [{"name": "pull"}]},
        "destination": {"reference": format!("{unreachable}/mirror"), "insecure": true},
    });
    let mut state = ApiState::default();
    state.objects.insert(
        "flaky".into(),
        bundle_copy_object(NAMESPACE, "flaky", 1, spec, Some(failed_status)),
    );
    let config = base64::engine::general_purpose::STANDARD
        .encode(r#"{"auths":{"elsewhere.example":{"auth":"dTpw"}}}"#);
    state.secrets.insert(
        "pull".into(),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "pull", "namespace": NAMESPACE, "resourceVersion": "1"},
               "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": config}}),
    );
    // The Secrets are listed after the first attempt has failed, as a real API server may.
    state.secret_list_delay = Duration::from_secs(2);
    let api = FakeApiServer::start(NAMESPACE, state).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());
    let mut controller =
        ControllerProcess::start(&kubeconfig, NAMESPACE, dir.path(), "controller.log", &[]);
    let count = |reason: &str| {
        let state = api.state.lock().unwrap();
        state
            .events
            .iter()
            .filter(|event| event["regarding"]["name"] == "flaky" && event["reason"] == reason)
            .count()
    };
    controller
        .wait_until(
            Duration::from_secs(60),
            || count("CopyFailed") >= 1,
            || "no CopyFailed".to_string(),
        )
        .await;
    // Past the Secret listing, well inside the first backoff (5 s): one attempt only.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        (count("CopyStarted"), count("CopyFailed")),
        (1, 1),
        "attempts at start-up:\n{}",
        controller.log()
    );
    let (ready, reason) = api.state.lock().unwrap().last_ready("flaky").unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "Unreachable"));
}
