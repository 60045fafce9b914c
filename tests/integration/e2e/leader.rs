//! Leader election on a real cluster: hand-over, a leader frozen with SIGSTOP, and a signed
//! bundle copied by the elected operator.

use super::*;

/// Two operators with leader election on one Lease, both with the chart's RBAC: one leads, the
/// other is Ready as a standby. A copy is asked for while its source registry is down (so it
/// cannot finish under the first leader); the leader is stopped with SIGTERM, the standby takes
/// the Lease within the lease duration and, once the source is back, finishes the copy: Ready
/// True, the destination holds the digest, and the `Copied` Event comes from the new leader.
/// A cluster test: run by `e2e::cluster::e2e_leader_election_hands_over_on_a_real_cluster` when KUBECONFIG is set.
pub(super) async fn e2e_leader_election_hands_over_on_a_real_cluster() {
    run_two_operators(LeaderScenario::HandOver).await;
}

/// The two-operator scenarios on a real cluster.
#[derive(Clone, Copy)]
enum LeaderScenario {
    /// `hand_over`: the leader stops with SIGTERM while its source registry is down.
    HandOver,
    /// `freeze_the_leader`: the leader is frozen with SIGSTOP mid-copy.
    Freeze,
}

/// A plain-HTTP source holding the hello bundle at `SOURCE_REPO:v1`, and a plain-HTTP
/// destination.
async fn plain_registries_with_hello() -> (TestRegistry, TestRegistry, PushedBundle) {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    let pushed = push_hello(&source, "v1").await;
    (source, destination, pushed)
}

/// Pushes a bundle, makes a namespace and runs `scenario` with two operators there, cleaning up
/// (namespace, processes, the release's RBAC) whatever the outcome.
async fn run_two_operators(scenario: LeaderScenario) {
    let Some((_one_at_a_time, client)) = cluster().await else {
        return;
    };
    let (source, destination, pushed) = plain_registries_with_hello().await;
    let namespace = crd_and_fresh_namespace(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let mut processes: Vec<ControllerProcess> = Vec::new();
    let registries = (&source, &destination);
    let (release, outcome) = match scenario {
        LeaderScenario::HandOver => {
            source.stop();
            let release = unique_release("le");
            let run = hand_over(
                &client,
                &namespace,
                &release,
                registries,
                &pushed,
                dir.path(),
                &mut processes,
            );
            let outcome = AssertUnwindSafe(run).catch_unwind().await;
            (release, outcome)
        }
        LeaderScenario::Freeze => {
            let release = unique_release("fz");
            let run = freeze_the_leader(
                &client,
                &namespace,
                &release,
                registries,
                &pushed,
                dir.path(),
                &mut processes,
            );
            let outcome = AssertUnwindSafe(run).catch_unwind().await;
            (release, outcome)
        }
    };
    clean_up(&client, &namespace, &mut processes, &[&release], outcome).await;
}

/// How long a Lease holder that stopped renewing keeps it (`LeaseSettings::duration`).
const LEASE_DURATION: Duration = Duration::from_secs(15);

/// A BundleCopy between two plain-HTTP registries.
fn plain_http_copy(namespace: &str, name: &str, source: &str, destination: &str) -> Value {
    serde_json::json!({
        "apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"reference": source, "insecure": true},
            "destination": {"reference": destination, "insecure": true},
        },
    })
}

/// One signed bundle on a real cluster: a Notation-style signature of the bundle index, kept
/// with the referrers tag schema, arrives with the bundle; the BundleCopy's status counts and
/// lists it, Ready says so, and the Copied Event too.
/// A cluster test: run by `e2e::cluster::e2e_signed_bundle_on_a_real_cluster` when KUBECONFIG
/// is set.
pub(super) async fn e2e_signed_bundle_on_a_real_cluster() {
    use crate::support::referrers::{
        Subject, add_to_tag_index, push_notation_signature, tag_index_digests,
    };
    let Some((_one_at_a_time, client)) = cluster().await else {
        return;
    };
    let (source, destination, pushed) = plain_registries_with_hello().await;
    let index = Subject::new(
        &pushed.index_media_type,
        &pushed.index_digest,
        &pushed.index_bytes,
    );
    let signature = push_notation_signature(&source.client(), SOURCE_REPO, &index, "release").await;
    add_to_tag_index(
        &source.client(),
        SOURCE_REPO,
        &pushed.index_digest,
        &[&signature],
    )
    .await;
    let namespace = crd_and_fresh_namespace(&client).await;
    let log_dir = tempfile::tempdir().unwrap();
    let mut controller: Option<ControllerProcess> = None;
    let outcome = AssertUnwindSafe(async {
        let started = controller.insert(ControllerProcess::start(&namespace, log_dir.path()));
        started.wait_ready().await;
        let name = "hello-signed";
        let document = plain_http_copy(
            &namespace,
            name,
            &pushed.reference,
            &format!("{}/signed", destination.host()),
        );
        apply_all(&client, &namespace, &[document]).await;
        let api: Api<BundleCopy> = Api::namespaced(client.clone(), &namespace);
        let copied = wait_for_status(&api, name, "Ready", READY_TIMEOUT, |status| {
            ready_reason(status).is_some_and(|(ready, _)| ready == "True")
        })
        .await;
        let status = copied.status.unwrap();
        let referrers = status.referrers.clone().expect("status.referrers");
        assert_eq!(referrers.count, 1, "{status:?}");
        assert_eq!(referrers.items[0].digest, signature.digest);
        assert_eq!(referrers.items[0].found_by, "TagSchema");
        let ready = status.condition("Ready").unwrap();
        assert!(
            ready.message.ends_with("and 1 signatures/attestations"),
            "{}",
            ready.message
        );
        let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
        let copied_events = wait_for_event_reasons(&events, name, &["Copied"]).await;
        assert!(
            copied_events.iter().any(|event| event
                .note
                .as_deref()
                .is_some_and(|note| note.contains("and 1 signatures/attestations"))),
            "{copied_events:?}"
        );
        assert_bundle_copied(
            &source,
            SOURCE_REPO,
            &destination,
            "signed/hello",
            "v1",
            &pushed.index_digest,
        )
        .await;
        let (bytes, _, _) = destination
            .client()
            .get_manifest("signed/hello", &signature.digest)
            .await
            .expect("the signature is at the destination");
        assert_eq!(bytes, signature.bytes);
        assert_eq!(
            tag_index_digests(&destination.client(), "signed/hello", &pushed.index_digest).await,
            [signature.digest.as_str()]
        );
    })
    .catch_unwind()
    .await;
    finish_with_one_controller(&client, &namespace, controller, outcome).await;
}

/// Two operators started by `elect_one_of_two`: which one leads.
struct Elected {
    identities: [String; 2],
    leader: usize,
    standby: usize,
}

/// Installs the chart's RBAC for two replicas (leader election on, the Lease named `release`),
/// starts two operators with it, and waits until one leads and the other is Ready as a standby,
/// with `/leaderz`, `bundlecopy_leader` and the Lease agreeing.
async fn elect_one_of_two(
    client: &Client,
    namespace: &str,
    release: &str,
    dir: &Path,
    processes: &mut Vec<ControllerProcess>,
) -> Elected {
    // Two replicas: the chart turns leader election on and grants the Lease in the namespace.
    let watch_namespaces = format!("watchNamespaces={{{namespace}}}");
    let lease_name = format!("leaderElection.leaseName={release}");
    let account = install_operator_account(
        client,
        release,
        namespace,
        &["replicaCount=2", &watch_namespaces, &lease_name],
        Some(release),
        dir,
    )
    .await;
    let identities = [format!("{release}-a"), format!("{release}-b")];
    for identity in &identities {
        let args = [
            "--namespace",
            namespace,
            "--leader-election",
            "--leader-election-namespace",
            namespace,
            "--leader-election-lease-name",
            release,
            "--leader-election-identity",
            identity,
        ];
        processes.push(ControllerProcess::spawn(
            &args,
            ProcessSettings {
                kubeconfig: Some(&account.kubeconfig),
                pod_name: Some(identity),
            },
            dir.join(format!("{identity}.log")),
        ));
    }

    // One leads; the other is Ready as a standby, so a rollout would complete.
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        for process in processes.iter_mut() {
            process.assert_running("electing a leader");
        }
        match (processes[0].leads().await, processes[1].leads().await) {
            (true, true) => panic!("both operators claim to lead"),
            (true, false) => break 0,
            (false, true) => break 1,
            (false, false) => {}
        }
        assert!(
            Instant::now() < deadline,
            "no leader within 60 s:\n{}\n---\n{}",
            processes[0].log_tail(),
            processes[1].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let standby = 1 - leader;
    wait_for_answer(
        &mut processes[standby],
        "/readyz",
        (200, "standby"),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(processes[standby].get("/leaderz").await.0, 503);
    assert_eq!(processes[leader].get("/readyz").await.0, 200);
    for (index, gauge) in [
        (leader, "bundlecopy_leader 1"),
        (standby, "bundlecopy_leader 0"),
    ] {
        let metrics = processes[index].metrics().await;
        assert!(metrics.lines().any(|l| l == gauge), "{gauge}:\n{metrics}");
    }
    assert_eq!(
        lease_holder(client, namespace, release).await.0.as_deref(),
        Some(identities[leader].as_str())
    );

    Elected {
        identities,
        leader,
        standby,
    }
}

async fn hand_over(
    client: &Client,
    namespace: &str,
    release: &str,
    (source, destination): (&TestRegistry, &TestRegistry),
    pushed: &PushedBundle,
    dir: &Path,
    processes: &mut Vec<ControllerProcess>,
) {
    let Elected {
        identities,
        leader,
        standby,
    } = elect_one_of_two(client, namespace, release, dir, processes).await;

    // A copy that cannot finish yet: its source registry is down, so the leader fails with
    // Unreachable and retries with backoff.
    let copy = plain_http_copy(
        namespace,
        "hello-handover",
        &format!("{}/{SOURCE_REPO}:v1", source.host()),
        &format!("{}/handover", destination.host()),
    );
    apply_all(client, namespace, &[copy]).await;
    let bundle_copies: Api<BundleCopy> = Api::namespaced(client.clone(), namespace);
    wait_for_status(
        &bundle_copies,
        "hello-handover",
        "Ready False Unreachable",
        Duration::from_secs(120),
        |status| ready_reason(status) == Some(("False", "Unreachable")),
    )
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    for event in wait_for_event_reasons(&events, "hello-handover", &[]).await {
        assert_eq!(
            event.reporting_instance.as_deref(),
            Some(identities[leader].as_str()),
            "only the leader acts before the hand-over: {:?}",
            event.reason
        );
    }

    // The leader stops, as in a rolling update: it hands the Lease back and the standby takes it
    // within the lease duration.
    assert!(
        processes[leader].stop().await,
        "the leader did not exit cleanly on SIGTERM:\n{}",
        processes[leader].log_tail()
    );
    let stopped = Instant::now();
    loop {
        processes[standby].assert_running("taking over");
        if processes[standby].leads().await {
            break;
        }
        assert!(
            stopped.elapsed() < LEASE_DURATION,
            "the standby did not take over within {LEASE_DURATION:?} of the leader stopping:\n{}",
            processes[standby].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        processes[standby].get("/readyz").await,
        (200, "leader\n".to_string())
    );
    let (holder, transitions) = lease_holder(client, namespace, release).await;
    assert_eq!(holder.as_deref(), Some(identities[standby].as_str()));
    assert!(transitions >= 1, "leaseTransitions {transitions}");

    // The source comes back: the new leader finishes the copy.
    source.start_again().await;
    let ready = wait_for_ready(&bundle_copies, "hello-handover", |status| status == "True").await;
    let status = ready.status.unwrap_or_default();
    assert_eq!(
        status.source_digest.as_deref(),
        Some(pushed.index_digest.as_str())
    );
    assert_eq!(
        status.destination_digest.as_deref(),
        Some(pushed.index_digest.as_str())
    );
    assert_bundle_copied(
        source,
        SOURCE_REPO,
        destination,
        "handover/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
    let copied: Vec<Event> = wait_for_event_reasons(&events, "hello-handover", &["Copied"])
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Copied"))
        .collect();
    assert!(
        copied
            .iter()
            .all(|e| e.reporting_instance.as_deref() == Some(identities[standby].as_str())),
        "the copy was finished by the new leader: {:?}",
        copied
            .iter()
            .map(|e| e.reporting_instance.clone())
            .collect::<Vec<_>>()
    );
    assert!(
        processes[standby].stop().await,
        "the new leader did not exit cleanly on SIGTERM:\n{}",
        processes[standby].log_tail()
    );
}

/// A leader frozen with SIGSTOP for 30 s while a copy is in flight under it (its source's blob
/// GETs stalled by a proxy): the standby leads within lease duration + retry period and copies.
/// The frozen one, resumed, already reports standby — its fence closed on the monotonic clock
/// while it was stopped — and writes nothing: no Event, no status, no Lease.
/// A cluster test: run by `e2e::cluster::e2e_leader_frozen_with_sigstop_is_replaced_and_writes_nothing_once_resumed` when KUBECONFIG is set.
pub(super) async fn e2e_leader_frozen_with_sigstop_is_replaced_and_writes_nothing_once_resumed() {
    run_two_operators(LeaderScenario::Freeze).await;
}

/// The default retry period: a standby looks at the Lease this often.
const RETRY_PERIOD: Duration = Duration::from_secs(2);

async fn freeze_the_leader(
    client: &Client,
    namespace: &str,
    release: &str,
    (source, destination): (&TestRegistry, &TestRegistry),
    pushed: &PushedBundle,
    dir: &Path,
    processes: &mut Vec<ControllerProcess>,
) {
    let source_proxy = FaultProxy::start(source);
    source_proxy.add_rule(
        Rule::new(Fault::Stall {
            duration: Duration::from_secs(20),
        })
        .method(http::Method::GET)
        .kind(PathKind::Blob),
    );
    let Elected {
        identities,
        leader,
        standby,
    } = elect_one_of_two(client, namespace, release, dir, processes).await;
    let copy = plain_http_copy(
        namespace,
        "hello-frozen",
        &format!("{}/{SOURCE_REPO}:v1", source_proxy.host()),
        &format!("{}/frozen", destination.host()),
    );
    apply_all(client, namespace, &[copy]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while source_proxy.count(&http::Method::GET, PathKind::Blob) == 0 {
        processes[leader].assert_running("starting the copy");
        assert!(
            Instant::now() < deadline,
            "the leader did not start copying within 60 s:\n{}",
            processes[leader].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, transitions_before) = lease_holder(client, namespace, release).await;

    // Freeze the leader mid-copy; from now on the source answers at once.
    processes[leader].signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    source_proxy.clear_rules();
    let bound = LEASE_DURATION + RETRY_PERIOD;
    loop {
        processes[standby].assert_running("taking over");
        if processes[standby].leads().await {
            break;
        }
        assert!(
            frozen_at.elapsed() < bound,
            "the standby did not lead within {bound:?} of the leader freezing:\n{}",
            processes[standby].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("the standby led {:?} after SIGSTOP", frozen_at.elapsed());
    let bundle_copies: Api<BundleCopy> = Api::namespaced(client.clone(), namespace);
    let ready = wait_for_ready(&bundle_copies, "hello-frozen", |status| status == "True").await;
    assert_eq!(
        ready
            .status
            .unwrap_or_default()
            .destination_digest
            .as_deref(),
        Some(pushed.index_digest.as_str())
    );
    assert_bundle_copied(
        source,
        SOURCE_REPO,
        destination,
        "frozen/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let event_names =
        |events: &[Event]| -> Vec<String> { events.iter().map(|event| event.name_any()).collect() };
    let before_resume = wait_for_event_reasons(&events, "hello-frozen", &["Copied"]).await;
    let resource_version = bundle_copies
        .get("hello-frozen")
        .await
        .expect("get the BundleCopy")
        .resource_version();

    // Resume after 30 s of freeze: it knows at once that it does not lead.
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(frozen_at.elapsed())).await;
    processes[leader].signal(libc::SIGCONT);
    let answer = processes[leader].get("/leaderz").await;
    assert_eq!(answer.0, 503, "resumed, the old leader says {answer:?}");
    tokio::time::sleep(RETRY_PERIOD * 3).await;
    processes[leader].assert_running("standing by after the freeze");
    assert_eq!(
        processes[leader].get("/readyz").await,
        (200, "standby\n".to_string())
    );
    assert!(
        processes[standby].leads().await,
        "the new leader still leads"
    );
    let (holder, transitions) = lease_holder(client, namespace, release).await;
    assert_eq!(holder.as_deref(), Some(identities[standby].as_str()));
    assert_eq!(transitions, transitions_before + 1, "leaseTransitions");
    // Nothing written since: no new Event from anyone, the object untouched.
    let after = wait_for_event_reasons(&events, "hello-frozen", &["Copied"]).await;
    let new_events: Vec<(Option<String>, Option<String>)> = after
        .iter()
        .filter(|event| !event_names(&before_resume).contains(&event.name_any()))
        .map(|event| (event.reason.clone(), event.reporting_instance.clone()))
        .collect();
    assert!(
        new_events.is_empty(),
        "Events written after the resume: {new_events:?}"
    );
    let now = bundle_copies
        .get("hello-frozen")
        .await
        .expect("get the BundleCopy");
    assert_eq!(
        now.resource_version(),
        resource_version,
        "the BundleCopy was written after the resume: {:?}",
        now.status
    );
}
