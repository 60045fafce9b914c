//! Leader election on a coordination.k8s.io/v1 Lease with client-go's timing model:
//!
//! - a candidate takes the Lease over only after its record (holder, renew time) has not changed
//!   for a whole *lease duration* as seen by its own monotonic clock, so clock skew between
//!   replicas does not matter;
//! - the holder tries to renew every *retry period*, each attempt bounded in time, and steps down
//!   as soon as a *renew deadline* (shorter than the lease duration) has passed since the start of
//!   its last successful renewal — measured on the monotonic clock, even while a request hangs.
//!
//! The right to write is a [`Fence`]: it is open until the renew deadline of the last successful
//! renewal and is checked by the API client before every write (see `api_client`), so nothing
//! this process sends after its deadline can be a status patch or an Event, whatever the rest of
//! the program is doing. A deposed leader becomes a candidate again (see docs/operator.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

/// client-go's defaults (kube-controller-manager, kube-scheduler).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// The three durations of leader election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// A holder whose record has not changed for this long is presumed gone.
    pub lease_duration: Duration,
    /// The holder steps down when it has not renewed for this long.
    pub renew_deadline: Duration,
    /// Time between attempts to take or renew the lease; also the bound of one attempt.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }
}

impl LeaseTiming {
    /// The ordering that makes two leaders impossible: the old leader stops writing (renew
    /// deadline) before a candidate may take over (lease duration), and several attempts fit into
    /// the renew deadline. The message names the flags.
    pub fn validate(&self) -> Result<(), String> {
        if self.retry_period.is_zero() {
            return Err("--leader-election-retry-period must be more than 0".into());
        }
        if self.renew_deadline.as_secs_f64() <= 1.2 * self.retry_period.as_secs_f64() {
            return Err(format!(
                "--leader-election-renew-deadline ({:?}) must be more than 1.2 × --leader-election-retry-period ({:?})",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(format!(
                "--leader-election-lease-duration ({:?}) must be longer than --leader-election-renew-deadline ({:?}), \
                 so that a leader stops before another may take over",
                self.lease_duration, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// Where the lease lives, who we are, and the timing.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub timing: LeaseTiming,
}

/// Until when this process may write to the API server as the leader, on the monotonic clock.
/// Cheap to clone; all clones share one state.
#[derive(Debug, Clone)]
pub struct Fence(Arc<FenceState>);

#[derive(Debug)]
struct FenceState {
    origin: Instant,
    /// Nanoseconds after `origin` until which writes are allowed; 0 means closed.
    open_until: AtomicU64,
}

impl Fence {
    fn with(open_until: u64) -> Fence {
        Fence(Arc::new(FenceState {
            origin: Instant::now(),
            open_until: AtomicU64::new(open_until),
        }))
    }

    /// Always open: a controller without leader election.
    pub fn always_open() -> Fence {
        Fence::with(u64::MAX)
    }

    /// Closed until a leadership opens it.
    pub fn closed() -> Fence {
        Fence::with(0)
    }

    pub fn is_open(&self) -> bool {
        let now = u64::try_from(self.0.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        now < self.0.open_until.load(Ordering::SeqCst)
    }

    fn open_until(&self, until: Instant) {
        let nanos = until.saturating_duration_since(self.0.origin).as_nanos();
        self.0.open_until.store(
            u64::try_from(nanos).unwrap_or(u64::MAX - 1).max(1),
            Ordering::SeqCst,
        );
    }

    fn close(&self) {
        self.0.open_until.store(0, Ordering::SeqCst);
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

/// Holding the lease. Renewal runs in the background until `release`, until another replica
/// holds the lease, or until the renew deadline passes without a renewal.
pub struct Leadership {
    lost: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    renewal: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Resolves when leadership ends (the fence is closed by then).
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

#[derive(Debug)]
enum Attempt {
    Held,
    HeldByOther(String),
    /// Someone wrote the lease between our read and our write: read again.
    Conflict,
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

/// One attempt to take or renew the lease, bounded by `until`: `None` when it did not finish.
async fn attempt_until(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Observation,
    until: Instant,
) -> Option<Result<Attempt, LeaderError>> {
    tokio::time::timeout_at(until, try_hold(api, settings, observed))
        .await
        .ok()
}

/// Waits until this process holds the lease, telling `report` after each failed attempt whether
/// it stands by or cannot reach the lease. Transient API errors and attempts that hang are
/// retried; only a refusal (401, 403) ends the wait with an error. While held, `fence` is open
/// until the renew deadline of the last renewal.
pub async fn acquire(
    client: Client,
    settings: LeaseSettings,
    fence: Fence,
    report: impl FnMut(Candidacy) + Send,
) -> Result<Leadership, LeaderError> {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut observed = Observation {
        record: None,
        changed_at: Instant::now(),
    };
    let renewed_at = wait_until_held(&api, &settings, &mut observed, report).await?;
    fence.open_until(renewed_at + settings.timing.renew_deadline);
    tracing::info!(lease = %settings.name, identity = %settings.identity, "became the leader");
    let (lost_sender, lost) = watch::channel(false);
    let (stop, stopped) = watch::channel(false);
    let held = Held {
        api,
        settings,
        observed,
        fence,
        renewed_at,
    };
    let renewal = tokio::spawn(held.keep_renewing(lost_sender, stopped));
    Ok(Leadership {
        lost,
        stop,
        renewal,
    })
}

/// Attempts to take the lease every retry period (and the moment the holder's lease runs out)
/// until one succeeds: when that attempt started.
async fn wait_until_held(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Observation,
    mut report: impl FnMut(Candidacy) + Send,
) -> Result<Instant, LeaderError> {
    let timing = settings.timing;
    loop {
        let started = Instant::now();
        let mut next_attempt = started + timing.retry_period;
        match attempt_until(api, settings, observed, next_attempt).await {
            Some(Ok(Attempt::Held)) => return Ok(started),
            Some(Ok(Attempt::HeldByOther(holder))) => {
                tracing::debug!(%holder, "lease held by another replica");
                report(Candidacy::Standby);
                // Look again the moment the holder's lease runs out, not up to a retry period
                // later: a take-over then comes within lease duration + retry period of the
                // holder's last renewal being seen.
                next_attempt = next_attempt.min(observed.changed_at + timing.lease_duration);
            }
            Some(Ok(Attempt::Conflict)) => report(Candidacy::Standby),
            Some(Err(error)) if is_permanent(&error) => return Err(error),
            Some(Err(error)) => {
                tracing::warn!(%error, "reading the lease failed; retrying");
                report(Candidacy::LeaseUnreachable);
            }
            None => {
                tracing::warn!(timeout = ?timing.retry_period, "the API server did not answer about the lease in time; retrying");
                report(Candidacy::LeaseUnreachable);
            }
        }
        tokio::time::sleep_until(next_attempt).await;
    }
}

/// The lease while this process holds it.
struct Held {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Observation,
    fence: Fence,
    /// When the last successful renewal started.
    renewed_at: Instant,
}

impl Held {
    /// Renews the lease every retry period. Ends when asked to stop (closing the fence and giving
    /// the lease up), or by stepping down — the fence closes and `lost` is told — when the lease
    /// was not renewed within the renew deadline or another replica holds it.
    async fn keep_renewing(mut self, lost: watch::Sender<bool>, stopped: watch::Receiver<bool>) {
        let timing = self.settings.timing;
        let stop_requested = || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let mut next_attempt = self.renewed_at + timing.retry_period;
        loop {
            let deadline = self.renewed_at + timing.renew_deadline;
            // Never sleep past the deadline: stepping down must not wait for the next attempt.
            tokio::select! {
                () = tokio::time::sleep_until(next_attempt.min(deadline)) => {}
                () = stop_requested() => return self.give_up().await,
            }
            let started = Instant::now();
            if started >= deadline {
                return self
                    .step_down(&lost, "the lease was not renewed within the renew deadline");
            }
            // A hung attempt is abandoned after one retry period (or at the deadline), so that a
            // connection the network silently dropped cannot outlast a short outage.
            let attempt_end = (started + timing.retry_period).min(deadline);
            let outcome = tokio::select! {
                outcome = attempt_until(&self.api, &self.settings, &mut self.observed, attempt_end) => outcome,
                () = stop_requested() => return self.give_up().await,
            };
            next_attempt = match outcome {
                Some(Ok(Attempt::Held)) => {
                    self.renewed_at = started;
                    self.fence.open_until(started + timing.renew_deadline);
                    started + timing.retry_period
                }
                Some(Ok(Attempt::HeldByOther(holder))) => {
                    return self.step_down(
                        &lost,
                        &format!("another replica ({holder}) holds the lease"),
                    );
                }
                // Possibly our own earlier write that timed out on its way: read again now.
                Some(Ok(Attempt::Conflict)) => Instant::now(),
                Some(Err(error)) => {
                    tracing::warn!(%error, "renewing the lease failed; retrying");
                    started + timing.retry_period
                }
                None => {
                    tracing::warn!(
                        timeout = ?(attempt_end - started),
                        "renewing the lease got no answer in time; retrying on a new request"
                    );
                    Instant::now()
                }
            };
        }
    }

    fn step_down(&self, lost: &watch::Sender<bool>, why: &str) {
        self.fence.close();
        tracing::error!(lease = %self.settings.name, "{why}; stepped down: no more reconciles, status or Events from this replica");
        let _ = lost.send(true);
    }

    async fn give_up(&self) {
        self.fence.close();
        give_up(&self.api, &self.settings).await;
    }
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
    let duration_seconds =
        i32::try_from(settings.timing.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
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
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
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
    let expired = observed.changed_at.elapsed() >= settings.timing.lease_duration;
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
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
        Err(error) => Err(api_error(error)),
    }
}

/// Clears the holder so that a standby replica need not wait for the lease to expire. Bounded by
/// one retry period: a shutdown must not wait on an API server that does not answer.
async fn give_up(api: &Api<Lease>, settings: &LeaseSettings) {
    let release = async {
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
            Err(error) => {
                tracing::warn!(%error, "could not release the lease; it expires on its own")
            }
        }
    };
    if tokio::time::timeout(settings.timing.retry_period, release)
        .await
        .is_err()
    {
        tracing::warn!("releasing the lease got no answer in time; it expires on its own");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock::Handle;

    fn settings(lease_duration: Duration) -> LeaseSettings {
        LeaseSettings {
            name: "bundlecopy-operator".into(),
            namespace: "ops".into(),
            identity: "me".into(),
            timing: LeaseTiming {
                lease_duration,
                renew_deadline: Duration::from_secs(10),
                retry_period: Duration::from_millis(10),
            },
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
                .map(|a| matches!(a, Attempt::Conflict))
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
        lead_with(patient_settings(), Fence::closed()).await
    }

    /// A retry period (the bound of each attempt) long enough for a test to answer on a loaded
    /// machine: an attempt abandoned before its answer would send the test requests it does not
    /// expect.
    fn patient_settings() -> LeaseSettings {
        let settings = settings(Duration::from_secs(15));
        LeaseSettings {
            timing: LeaseTiming {
                retry_period: Duration::from_millis(500),
                ..settings.timing
            },
            ..settings
        }
    }

    async fn lead_with(
        settings: LeaseSettings,
        fence: Fence,
    ) -> (Leadership, Handle<Request<Body>, Response<Body>>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "ops");
        let acquiring = tokio::spawn(acquire(client, settings, fence, |_| {}));
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

    fn production_timing() -> LeaseSettings {
        LeaseSettings {
            timing: LeaseTiming::default(),
            ..settings(Duration::from_secs(15))
        }
    }

    /// Answers renewals like an API server, except that requests arriving while `frozen` says
    /// so are held unanswered (a silent network: the connection stays open, nothing comes back).
    /// Returns the arrival times of the held requests.
    fn serve_renewals(
        mut handle: Handle<Request<Body>, Response<Body>>,
        frozen: impl Fn(Instant) -> bool + Send + 'static,
    ) -> tokio::task::JoinHandle<Vec<Instant>> {
        tokio::spawn(async move {
            let mut held = Vec::new();
            let mut hung = Vec::new();
            while let Some((request, respond)) = handle.next_request().await {
                let now = Instant::now();
                if frozen(now) {
                    held.push(now);
                    hung.push(respond);
                    continue;
                }
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
            }
            held
        })
    }

    /// A holder that stops renewing is replaced when its lease runs out as this replica saw it,
    /// not at the next multiple of the retry period.
    #[tokio::test(start_paused = true)]
    async fn a_candidate_takes_over_when_the_lease_runs_out() {
        let settings = LeaseSettings {
            timing: LeaseTiming::default(),
            ..settings(Duration::from_secs(15))
        };
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "ops");
        let started = Instant::now();
        let acquiring = tokio::spawn(acquire(client, settings, Fence::closed(), |_| {}));
        let stale = lease("them", "2026-01-01T00:00:00.000000Z", 3);
        // Looks at 0, 2, …, 14 s: held. At 15 s it has run out: taken over.
        for _ in 0..9 {
            answer(&mut handle, Method::GET, 200, stale.clone()).await;
        }
        let taken_at = started.elapsed();
        answer(
            &mut handle,
            Method::PUT,
            200,
            lease("me", "2026-01-01T00:00:15.000000Z", 4),
        )
        .await;
        assert!(acquiring.await.unwrap().is_ok());
        assert_eq!(taken_at, Duration::from_secs(15));
    }

    #[test]
    fn the_fence_is_open_only_until_its_deadline() {
        assert!(Fence::always_open().is_open());
        assert!(!Fence::closed().is_open());
        let fence = Fence::closed();
        fence.open_until(Instant::now() + Duration::from_secs(60));
        assert!(fence.is_open());
        fence.open_until(Instant::now());
        assert!(!fence.is_open(), "a deadline that has passed closes it");
        fence.open_until(Instant::now() + Duration::from_secs(60));
        fence.close();
        assert!(!fence.is_open());
    }

    #[test]
    fn timing_must_let_the_leader_stop_before_a_take_over() {
        assert_eq!(LeaseTiming::default().validate(), Ok(()));
        let timing = |lease, deadline, retry| LeaseTiming {
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(deadline),
            retry_period: Duration::from_secs(retry),
        };
        let error = timing(10, 10, 2).validate().unwrap_err();
        assert!(
            error.contains("--leader-election-lease-duration"),
            "{error}"
        );
        let error = timing(15, 2, 2).validate().unwrap_err();
        assert!(
            error.contains("--leader-election-renew-deadline"),
            "{error}"
        );
        let error = timing(15, 10, 0).validate().unwrap_err();
        assert!(error.contains("--leader-election-retry-period"), "{error}");
    }

    /// The API server stops answering (requests hang, nothing is refused): the leader keeps
    /// trying on new requests every retry period and steps down exactly at the renew deadline,
    /// counted from the start of its last successful renewal, with the fence closed by then.
    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_renewals_hang_steps_down_at_the_renew_deadline() {
        let fence = Fence::closed();
        let started = Instant::now();
        let (leadership, handle) = lead_with(production_timing(), fence.clone()).await;
        assert!(fence.is_open());
        let held = serve_renewals(handle, |_| true);
        leadership.lost().await;
        let stepped_down = started.elapsed();
        assert!(!fence.is_open());
        assert!(
            stepped_down >= DEFAULT_RENEW_DEADLINE
                && stepped_down < DEFAULT_RENEW_DEADLINE + Duration::from_millis(100),
            "stepped down after {stepped_down:?}"
        );
        drop(leadership);
        let held = held.await.unwrap();
        // Attempts at 2, 4, 6 and 8 s, each abandoned after one retry period.
        assert_eq!(held.len(), 4, "{held:?}");
    }

    /// An outage shorter than the renew deadline (5 s of silence) changes nothing: the hung
    /// attempts are abandoned, a new one succeeds once the server answers, the fence stays open.
    #[tokio::test(start_paused = true)]
    async fn a_short_outage_keeps_the_leader() {
        let fence = Fence::closed();
        let started = Instant::now();
        let (leadership, handle) = lead_with(production_timing(), fence.clone()).await;
        let outage = (
            started + Duration::from_secs(3),
            started + Duration::from_secs(8),
        );
        let held = serve_renewals(handle, move |now| now >= outage.0 && now < outage.1);
        let lost = leadership.lost();
        tokio::pin!(lost);
        for _ in 0..30 {
            tokio::select! {
                () = &mut lost => panic!("stepped down after {:?}", started.elapsed()),
                () = tokio::time::sleep(Duration::from_secs(1)) => assert!(fence.is_open()),
            }
        }
        leadership.release().await;
        assert!(!fence.is_open(), "a released leadership closes the fence");
        assert!(!held.await.unwrap().is_empty(), "the outage held requests");
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
            patient_settings(),
            Fence::closed(),
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
