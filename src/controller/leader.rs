//! Leader election on a coordination.k8s.io/v1 Lease, as client-go does it: a lease is taken
//! over only after its record (holder, renew time) has not changed for a whole lease duration
//! as seen by this process's clock, so clock skew between replicas does not matter.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

use super::ControllerArgs;

/// Where the lease lives and who we are.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// A holder that has not renewed for this long is presumed gone.
    pub duration: Duration,
    /// How often the holder renews (well inside `duration`).
    pub renew_every: Duration,
    /// How often a candidate tries to take the lease.
    pub retry_every: Duration,
}

impl LeaseSettings {
    pub fn from_args(args: &ControllerArgs) -> Self {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        LeaseSettings {
            name: args.leader_election_lease_name.clone(),
            namespace: args
                .leader_election_namespace
                .clone()
                .or_else(|| env("POD_NAMESPACE"))
                .unwrap_or_else(|| "default".to_string()),
            identity: args
                .leader_election_identity
                .clone()
                .or_else(|| env("POD_NAME"))
                .or_else(|| env("HOSTNAME"))
                .or_else(|| {
                    std::fs::read_to_string("/etc/hostname")
                        .ok()
                        .map(|h| h.trim().to_string())
                })
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| format!("bundlecopy-{}", std::process::id())),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "Lease {namespace}/{name}: {source}; may this account get, create and update leases in that namespace?"
    )]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Holding the lease. Renewal runs in the background until `release` or until it fails for a
/// whole lease duration.
pub struct Leadership {
    lost: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    renewal: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Resolves when the lease is lost.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut lost = self.lost.clone();
        async move {
            let _ = lost.wait_for(|lost| *lost).await;
        }
    }

    /// Stops renewing and gives the lease up so another replica can take it at once.
    pub async fn release(self) {
        let _ = self.stop.send(true);
        let _ = self.renewal.await;
    }
}

/// What this process last saw of the lease record, and when it saw it change.
struct Observation {
    record: Option<(Option<String>, Option<MicroTime>)>,
    changed_at: Instant,
}

enum Attempt {
    Held,
    HeldByOther(String),
}

/// How a candidate that does not hold the lease is doing, for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidacy {
    /// The lease was read: another replica holds it and this one stands by to take over.
    Standby,
    /// The last attempt could not read or write the lease (retried); not able to take over now.
    LeaseUnreachable,
}

/// Errors that retrying cannot fix: the account may not use the lease.
fn is_permanent(error: &LeaderError) -> bool {
    let LeaderError::Api { source, .. } = error;
    matches!(source, kube::Error::Api(status) if status.code == 401 || status.code == 403)
}

/// Waits until this process holds the lease, telling `report` after each failed attempt whether
/// it stands by or cannot reach the lease. Transient API errors are retried; only a refusal
/// (401, 403) ends the wait with an error.
pub async fn acquire(
    client: Client,
    settings: LeaseSettings,
    mut report: impl FnMut(Candidacy) + Send,
) -> Result<Leadership, LeaderError> {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut observed = Observation {
        record: None,
        changed_at: Instant::now(),
    };
    loop {
        match try_hold(&api, &settings, &mut observed).await {
            Ok(Attempt::Held) => break,
            Ok(Attempt::HeldByOther(holder)) => {
                tracing::debug!(%holder, "lease held by another replica");
                report(Candidacy::Standby);
            }
            Err(error) if is_permanent(&error) => return Err(error),
            Err(error) => {
                tracing::warn!(%error, "reading the lease failed; retrying");
                report(Candidacy::LeaseUnreachable);
            }
        }
        tokio::time::sleep(settings.retry_every).await;
    }
    tracing::info!(lease = %settings.name, identity = %settings.identity, "became the leader");
    let (lost_sender, lost) = watch::channel(false);
    let (stop, mut stopped) = watch::channel(false);
    let renewal = tokio::spawn(async move {
        let mut last_renewal = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(settings.renew_every) => {}
                _ = async { let _ = stopped.wait_for(|stop| *stop).await; } => {
                    give_up(&api, &settings).await;
                    return;
                }
            }
            match try_hold(&api, &settings, &mut observed).await {
                Ok(Attempt::Held) => last_renewal = Instant::now(),
                Ok(Attempt::HeldByOther(holder)) => {
                    tracing::error!(%holder, "another replica took the lease");
                    let _ = lost_sender.send(true);
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "renewing the lease failed");
                    if last_renewal.elapsed() >= settings.duration {
                        let _ = lost_sender.send(true);
                        return;
                    }
                }
            }
        }
    });
    Ok(Leadership {
        lost,
        stop,
        renewal,
    })
}

async fn try_hold(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Observation,
) -> Result<Attempt, LeaderError> {
    let api_error = |source| LeaderError::Api {
        namespace: settings.namespace.clone(),
        name: settings.name.clone(),
        source,
    };
    let now = MicroTime(Timestamp::now());
    let duration_seconds = i32::try_from(settings.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&settings.name).await.map_err(api_error)? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Held),
            // Another replica created it first.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Ok(Attempt::HeldByOther(String::new()))
            }
            Err(error) => Err(api_error(error)),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = (holder.clone(), spec.renew_time.clone());
    if observed.record.as_ref() != Some(&record) {
        observed.record = Some(record);
        observed.changed_at = Instant::now();
    }
    let ours = holder.as_deref() == Some(settings.identity.as_str());
    let expired = observed.changed_at.elapsed() >= settings.duration;
    if !ours && holder.is_some() && !expired {
        return Ok(Attempt::HeldByOther(holder.unwrap_or_default()));
    }
    if !ours {
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.holder_identity = Some(settings.identity.clone());
    spec.lease_duration_seconds = Some(duration_seconds);
    spec.renew_time = Some(now);
    // `replace` carries the resourceVersion read above: a concurrent writer makes it fail (409).
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(written) => {
            let spec = written.spec.unwrap_or_default();
            observed.record = Some((spec.holder_identity, spec.renew_time));
            observed.changed_at = Instant::now();
            Ok(Attempt::Held)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            Ok(Attempt::HeldByOther(String::new()))
        }
        Err(error) => Err(api_error(error)),
    }
}

/// Clears the holder so that a standby replica need not wait for the lease to expire.
async fn give_up(api: &Api<Lease>, settings: &LeaseSettings) {
    let Ok(Some(mut lease)) = api.get_opt(&settings.name).await else {
        return;
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!("released the lease"),
        Err(error) => tracing::warn!(%error, "could not release the lease; it expires on its own"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock::Handle;

    fn settings(duration: Duration) -> LeaseSettings {
        LeaseSettings {
            name: "bundlecopy-operator".into(),
            namespace: "ops".into(),
            identity: "me".into(),
            duration,
            renew_every: Duration::from_millis(10),
            retry_every: Duration::from_millis(10),
        }
    }

    fn lease(holder: &str, renewed: &str, transitions: i32) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "bundlecopy-operator", "namespace": "ops", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": renewed, "leaseTransitions": transitions},
        })
    }

    async fn answer(
        handle: &mut Handle<Request<Body>, Response<Body>>,
        method: Method,
        status: u16,
        body: Value,
    ) -> Value {
        let (request, respond) = handle.next_request().await.expect("a request");
        assert_eq!(request.method(), method, "{}", request.uri());
        assert!(
            request
                .uri()
                .path()
                .ends_with("/namespaces/ops/leases/bundlecopy-operator")
                || method == Method::POST,
            "{}",
            request.uri()
        );
        let sent = request.into_body().collect_bytes().await.unwrap();
        let sent: Value = if sent.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&sent).unwrap()
        };
        let reply = if status >= 400 {
            let reason = if status == 404 {
                "NotFound"
            } else {
                "Conflict"
            };
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status, "reason": reason, "message": "x"})
        } else {
            body
        };
        respond.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        sent
    }

    fn api() -> (Api<Lease>, Handle<Request<Body>, Response<Body>>) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Api::namespaced(Client::new(service, "ops"), "ops"), handle)
    }

    fn fresh() -> Observation {
        Observation {
            record: None,
            changed_at: Instant::now(),
        }
    }

    #[tokio::test]
    async fn an_absent_lease_is_created_with_us_as_holder() {
        let (api, mut handle) = api();
        let settings = settings(Duration::from_secs(15));
        let attempt = tokio::spawn(async move {
            try_hold(&api, &settings, &mut fresh())
                .await
                .map(|a| matches!(a, Attempt::Held))
        });
        answer(&mut handle, Method::GET, 404, Value::Null).await;
        let created = answer(
            &mut handle,
            Method::POST,
            201,
            lease("me", "2026-01-01T00:00:00.000000Z", 0),
        )
        .await;
        assert_eq!(created["spec"]["holderIdentity"], "me");
        assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
        assert!(attempt.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn a_live_lease_of_another_is_left_alone_until_it_goes_stale() {
        let (api, mut handle) = api();
        let settings = settings(Duration::from_millis(200));
        let task = tokio::spawn(async move {
            let mut observed = fresh();
            let first = try_hold(&api, &settings, &mut observed).await.unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
            let second = try_hold(&api, &settings, &mut observed).await.unwrap();
            (
                matches!(first, Attempt::HeldByOther(ref h) if h == "them"),
                matches!(second, Attempt::Held),
            )
        });
        // First look: held by "them", just seen: no write.
        answer(
            &mut handle,
            Method::GET,
            200,
            lease("them", "2026-01-01T00:00:00.000000Z", 3),
        )
        .await;
        // Same record after the lease duration: taken over with a PUT carrying the resourceVersion.
        answer(
            &mut handle,
            Method::GET,
            200,
            lease("them", "2026-01-01T00:00:00.000000Z", 3),
        )
        .await;
        let replaced = answer(
            &mut handle,
            Method::PUT,
            200,
            lease("me", "2026-01-01T00:01:00.000000Z", 4),
        )
        .await;
        assert_eq!(replaced["spec"]["holderIdentity"], "me");
        assert_eq!(replaced["spec"]["leaseTransitions"], 4);
        assert_eq!(replaced["metadata"]["resourceVersion"], "7");
        assert_eq!(task.await.unwrap(), (true, true));
    }

    #[tokio::test]
    async fn a_concurrent_take_over_loses_on_conflict() {
        let (api, mut handle) = api();
        let settings = settings(Duration::ZERO);
        let attempt = tokio::spawn(async move {
            try_hold(&api, &settings, &mut fresh())
                .await
                .map(|a| matches!(a, Attempt::HeldByOther(_)))
        });
        answer(
            &mut handle,
            Method::GET,
            200,
            lease("them", "2026-01-01T00:00:00.000000Z", 1),
        )
        .await;
        answer(&mut handle, Method::PUT, 409, Value::Null).await;
        assert!(attempt.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn our_own_lease_is_renewed_without_a_transition() {
        let (api, mut handle) = api();
        let settings = settings(Duration::from_secs(15));
        let attempt = tokio::spawn(async move {
            try_hold(&api, &settings, &mut fresh())
                .await
                .map(|a| matches!(a, Attempt::Held))
        });
        answer(
            &mut handle,
            Method::GET,
            200,
            lease("me", "2026-01-01T00:00:00.000000Z", 2),
        )
        .await;
        let renewed = answer(
            &mut handle,
            Method::PUT,
            200,
            lease("me", "2026-01-01T00:00:05.000000Z", 2),
        )
        .await;
        assert_eq!(renewed["spec"]["leaseTransitions"], 2);
        assert_ne!(renewed["spec"]["renewTime"], "2026-01-01T00:00:00.000000Z");
        assert!(attempt.await.unwrap().unwrap());
    }

    /// Leadership taken by creating the Lease (none existed), and the API server's handle.
    async fn lead_with_a_new_lease() -> (Leadership, Handle<Request<Body>, Response<Body>>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "ops");
        let acquiring = tokio::spawn(acquire(client, settings(Duration::from_secs(15)), |_| {}));
        answer(&mut handle, Method::GET, 404, Value::Null).await;
        answer(
            &mut handle,
            Method::POST,
            201,
            lease("me", "2026-01-01T00:00:00.000000Z", 0),
        )
        .await;
        (acquiring.await.unwrap().unwrap(), handle)
    }

    #[tokio::test]
    async fn leadership_ends_when_another_replica_takes_the_lease() {
        let (leadership, mut handle) = lead_with_a_new_lease().await;
        // The next renewal finds another holder (an operator edited it, or our lease lapsed).
        answer(
            &mut handle,
            Method::GET,
            200,
            lease("them", "2026-01-01T00:00:09.000000Z", 1),
        )
        .await;
        tokio::time::timeout(Duration::from_secs(5), leadership.lost())
            .await
            .expect("leadership is reported lost");
    }

    #[tokio::test]
    async fn release_clears_the_holder() {
        let (leadership, mut handle) = lead_with_a_new_lease().await;
        let releasing = tokio::spawn(leadership.release());
        // Renewals may come first; the release is the PUT without a holder.
        loop {
            let (request, respond) = handle.next_request().await.expect("a request");
            let method = request.method().clone();
            let sent = request.into_body().collect_bytes().await.unwrap();
            let reply = if method == Method::GET {
                lease("me", "2026-01-01T00:00:00.000000Z", 0)
            } else {
                serde_json::from_slice(&sent).unwrap()
            };
            respond.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
            if method == Method::PUT
                && reply["spec"]
                    .get("holderIdentity")
                    .is_none_or(Value::is_null)
            {
                break;
            }
        }
        releasing.await.unwrap();
    }

    #[tokio::test]
    async fn a_candidate_reports_standby_retries_errors_and_stops_on_refusal() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "ops");
        let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
        let acquiring = tokio::spawn(acquire(
            client,
            settings(Duration::from_secs(15)),
            move |candidacy| {
                let _ = reports.send(candidacy);
            },
        ));
        answer(
            &mut handle,
            Method::GET,
            200,
            lease("them", "2026-01-01T00:00:00.000000Z", 1),
        )
        .await;
        assert_eq!(reported.recv().await, Some(Candidacy::Standby));
        // A server error is retried, and the candidate says it cannot reach the lease meanwhile.
        answer(&mut handle, Method::GET, 500, Value::Null).await;
        assert_eq!(reported.recv().await, Some(Candidacy::LeaseUnreachable));
        answer(
            &mut handle,
            Method::GET,
            200,
            lease("them", "2026-01-01T00:00:01.000000Z", 1),
        )
        .await;
        assert_eq!(reported.recv().await, Some(Candidacy::Standby));
        // A refusal (no RBAC for leases) ends the wait with an error that says what to grant.
        answer(&mut handle, Method::GET, 403, Value::Null).await;
        let error = match acquiring.await.unwrap() {
            Ok(_) => panic!("a refused candidate does not become the leader"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("get, create and update leases"), "{error}");
        assert!(reported.try_recv().is_err(), "no report after the refusal");
    }
}
