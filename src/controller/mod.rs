//! The BundleCopy controller: watches BundleCopies (and the Secrets they name), reconciles
//! each with the copy engine and reports in its status. See DESIGN.md section 3.

pub mod api_client;
pub mod decide;
pub mod leader;
pub mod reconcile;
pub mod secrets;
pub mod status;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{Semaphore, watch};

use crate::api::{BundleCopy, BundleCopyStatus, FIELD_MANAGER};
use crate::copy::EngineSettings;
use crate::http::{Readiness, Role};
use crate::metrics::Metrics;

pub use reconcile::reconcile;

/// `bundlecopy controller`: run the operator against the current kubeconfig or in-cluster
/// service account.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Watch only this namespace (repeatable, or comma-separated in the env var); all namespaces
    /// when not given.
    #[arg(
        long = "namespace",
        value_name = "NS",
        env = "BUNDLECOPY_NAMESPACE",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,

    /// Copies that may run at the same time.
    #[arg(long, value_name = "N",
        env = "BUNDLECOPY_MAX_CONCURRENT_COPIES", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_copies: u16,

    /// Address of the /healthz, /readyz and /metrics server.
    #[arg(
        long,
        value_name = "ADDR",
        env = "BUNDLECOPY_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_addr: SocketAddr,

    /// Log line format.
    #[arg(long, env = "BUNDLECOPY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, as an EnvFilter directive (e.g. `info` or `info,bundlecopy=debug`).
    #[arg(
        long,
        value_name = "LEVEL",
        env = "BUNDLECOPY_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,

    /// Reconcile only while holding a coordination.k8s.io Lease (for more than one replica).
    #[arg(long, env = "BUNDLECOPY_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Namespace of the Lease; defaults to $POD_NAMESPACE, else `default`.
    #[arg(long, value_name = "NS", env = "BUNDLECOPY_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the Lease.
    #[arg(
        long,
        value_name = "NAME",
        env = "BUNDLECOPY_LEADER_ELECTION_LEASE_NAME",
        default_value = "bundlecopy-operator"
    )]
    pub leader_election_lease_name: String,

    /// Identity written into the Lease; defaults to $POD_NAME, else the host name.
    #[arg(long, value_name = "ID", env = "BUNDLECOPY_LEADER_ELECTION_IDENTITY")]
    pub leader_election_identity: Option<String>,

    /// How long a Lease whose holder stopped renewing stays held before a standby takes it.
    #[arg(long, value_name = "DURATION", env = "BUNDLECOPY_LEADER_ELECTION_LEASE_DURATION",
          default_value = "15s", value_parser = parse_flag_duration)]
    pub leader_election_lease_duration: Duration,

    /// The leader stops reconciling, writing status and Events when it has not renewed the Lease
    /// for this long (shorter than the lease duration).
    #[arg(long, value_name = "DURATION", env = "BUNDLECOPY_LEADER_ELECTION_RENEW_DEADLINE",
          default_value = "10s", value_parser = parse_flag_duration)]
    pub leader_election_renew_deadline: Duration,

    /// Time between attempts to take or renew the Lease; one attempt gets no longer.
    #[arg(long, value_name = "DURATION", env = "BUNDLECOPY_LEADER_ELECTION_RETRY_PERIOD",
          default_value = "2s", value_parser = parse_flag_duration)]
    pub leader_election_retry_period: Duration,

    /// PEM bundle of CA certificates trusted for every HTTPS registry (e.g. a corporate CA).
    #[arg(long, value_name = "PATH", env = "BUNDLECOPY_EXTRA_CA_FILE")]
    pub extra_ca_file: Option<PathBuf>,
}

fn parse_flag_duration(text: &str) -> Result<Duration, String> {
    decide::parse_duration(text).map_err(|error| error.to_string())
}

/// Longest wait for the API server's whole answer to one request that is not a watch.
pub const API_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl ControllerArgs {
    /// Where the Lease lives, who this replica is, and the timing of the election.
    pub fn lease_settings(&self) -> leader::LeaseSettings {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        leader::LeaseSettings {
            name: self.leader_election_lease_name.clone(),
            namespace: self
                .leader_election_namespace
                .clone()
                .or_else(|| env("POD_NAMESPACE"))
                .unwrap_or_else(|| "default".to_string()),
            identity: self
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
            timing: leader::LeaseTiming {
                lease_duration: self.leader_election_lease_duration,
                renew_deadline: self.leader_election_renew_deadline,
                retry_period: self.leader_election_retry_period,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Errors that end a reconcile early; registry and Secret problems are not among them (they go
/// to the status).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("BundleCopy {0} has no namespace")]
    NoNamespace(String),
    #[error("writing the status failed: {0}")]
    PatchStatus(#[source] kube::Error),
    #[error("reading the BundleCopy failed: {0}")]
    ReadObject(#[source] kube::Error),
    #[error(transparent)]
    ReadSecret(Box<secrets::ReadError>),
    #[error("the controller is shutting down")]
    ShuttingDown,
}

/// Objects whose backoff and source-check times are remembered.
const MAX_REMEMBERED_OBJECTS: usize = 10_000;

/// Per-object memory that does not belong in the status.
#[derive(Debug, Default, Clone)]
struct ObjectMemory {
    /// Transient failures in a row, for the backoff.
    failures: u32,
    /// When the source was last resolved.
    last_source_check: Option<Timestamp>,
    /// The status this process last wrote, and the resourceVersion of the object it was
    /// computed from: a rerun that still sees that version in the cache (our own write's echo
    /// not yet arrived) starts from what was written, so it does not write it again.
    written: Option<(String, BundleCopyStatus)>,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub engine: EngineSettings,
    /// Bounds the copies that run at once (`--max-concurrent-copies`).
    pub copy_slots: Arc<Semaphore>,
    /// How often a running copy reports progress in the status.
    pub progress_every: Duration,
    memory: Mutex<HashMap<String, ObjectMemory>>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        engine: EngineSettings,
        max_concurrent_copies: usize,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            engine,
            copy_slots: Arc::new(Semaphore::new(max_concurrent_copies.max(1))),
            progress_every: Duration::from_secs(5),
            memory: Mutex::default(),
        }
    }

    fn with_memory<T>(&self, key: &str, f: impl FnOnce(&mut ObjectMemory) -> T) -> T {
        // A poisoned lock only means another reconcile panicked mid-update of plain counters.
        let mut memory = self
            .memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Entries of deleted objects are never removed one by one; bound the map instead (losing
        // a backoff count or a check time only costs one early retry or one extra HEAD).
        if memory.len() >= MAX_REMEMBERED_OBJECTS && !memory.contains_key(key) {
            memory.clear();
        }
        f(memory.entry(key.to_string()).or_default())
    }

    /// Counts a transient failure; returns the failures in a row.
    pub fn count_failure(&self, key: &str) -> u32 {
        self.with_memory(key, |m| {
            m.failures = m.failures.saturating_add(1);
            m.failures
        })
    }

    pub fn forget_failures(&self, key: &str) {
        self.with_memory(key, |m| m.failures = 0);
    }

    pub fn remember_source_check(&self, key: &str, at: Timestamp) {
        self.with_memory(key, |m| m.last_source_check = Some(at));
    }

    pub fn last_source_check(&self, key: &str) -> Option<Timestamp> {
        self.with_memory(key, |m| m.last_source_check)
    }

    pub fn remember_written(&self, key: &str, read_version: String, status: BundleCopyStatus) {
        self.with_memory(key, |m| m.written = Some((read_version, status)));
    }

    /// The status last written from the object at `read_version`, if that is the version seen
    /// now (the cache has not caught up with the write yet).
    pub fn written_since(&self, key: &str, read_version: &str) -> Option<BundleCopyStatus> {
        self.with_memory(key, |m| match &m.written {
            Some((version, status)) if version == read_version => Some(status.clone()),
            _ => None,
        })
    }
}

/// Identifies an object across reconciles (a re-created object starts afresh).
fn memory_key(object: &impl Resource) -> String {
    match object.uid() {
        Some(uid) => uid,
        None => format!(
            "{}/{}",
            object.namespace().unwrap_or_default(),
            object.name_any()
        ),
    }
}

/// After a failure to talk to the API server: back off like a transient registry error.
pub fn error_policy(
    object: Arc<DeserializeGuard<BundleCopy>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let failures = ctx.count_failure(&memory_key(object.as_ref()));
    let wait = decide::transient_backoff(failures, None);
    tracing::warn!(bundlecopy = %object.name_any(), %error, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// The BundleCopies in the Secret's namespace that name it (credentials or caSecretRef).
pub fn bundle_copies_using(
    store: &Store<DeserializeGuard<BundleCopy>>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<DeserializeGuard<BundleCopy>>> {
    let name = secret.name_any();
    let namespace = secret.namespace();
    store
        .state()
        .iter()
        .filter(|stored| {
            stored.namespace() == namespace
                && stored
                    .0
                    .as_ref()
                    .is_ok_and(|bundle| refers_to_secret(bundle, &name))
        })
        .map(|stored| ObjectRef::from_obj(stored.as_ref()))
        .collect()
}

pub fn refers_to_secret(bundle: &BundleCopy, secret: &str) -> bool {
    [&bundle.spec.source, &bundle.spec.destination]
        .iter()
        .any(|endpoint| {
            endpoint.credentials.iter().any(|c| c.name == secret)
                || endpoint
                    .ca_secret_ref
                    .as_ref()
                    .is_some_and(|r| r.name == secret)
        })
}

/// One controller: BundleCopies of one namespace (or all), re-triggered by their Secrets.
/// Status-only changes do not trigger it (generation predicate): our own status writes would
/// otherwise bypass the backoff after a failure.
pub fn controller_stream(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl futures_util::Stream<Item = ()> + Send {
    // Secrets are watched by metadata only: their data is never needed to map them.
    // Each BundleCopy is deserialized on its own: one that does not match the types (stored
    // under an older CRD) is reconciled as InvalidSpec instead of failing every list of the watch.
    let (bundles, secrets): (
        Api<DeserializeGuard<BundleCopy>>,
        Api<PartialObjectMeta<Secret>>,
    ) = match namespace.as_deref() {
        Some(namespace) => (
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client.clone(), namespace),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (reader, writer) = reflector::store();
    let bundle_stream = watcher(bundles, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let secret_stream = changed_objects(
        watcher(secrets, watcher::Config::default().any_semantic()).default_backoff(),
    );
    let store = reader.clone();
    let scope = namespace.unwrap_or_else(|| "all namespaces".to_string());
    Controller::for_stream(bundle_stream, reader)
        .watches_stream(secret_stream, move |secret| {
            bundle_copies_using(&store, &secret)
        })
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, error_policy, ctx)
        .map(move |result| match result {
            Ok((object, action)) => tracing::debug!(%object, ?action, "reconciled"),
            Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                tracing::debug!(%object, "object is gone")
            }
            Err(error) => tracing::warn!(scope = %scope, %error, "controller"),
        })
}

/// The objects a watch reports changed, without its first listing: at start-up every BundleCopy
/// is reconciled anyway, and a second trigger from its Secret would run a failed object twice in
/// a row. After a re-list, listed objects count as changed (the watch may have missed a change).
fn changed_objects<K>(
    events: impl futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
) -> impl futures_util::Stream<Item = Result<K, watcher::Error>> {
    let mut first_list_done = false;
    events.filter_map(move |event| {
        let changed = match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object)) => Some(Ok(object)),
            Ok(watcher::Event::InitApply(object)) if first_list_done => Some(Ok(object)),
            Ok(watcher::Event::InitDone) => {
                first_list_done = true;
                None
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
            Err(error) => Some(Err(error)),
        };
        std::future::ready(changed)
    })
}

fn init_logging(args: &ControllerArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level).with_context(|| {
        format!(
            "--log-level {:?} is not a valid filter such as `info` or `info,bundlecopy=debug`",
            args.log_level
        )
    })?;
    // Colours only on a terminal: container logs and files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // Another part of the program may already have installed a subscriber; keep it.
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// Resolves once `receiver` sees `true` (or its sender is gone).
async fn until_set(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|set| *set).await;
}

/// The cluster's connection settings, once the API server has answered that BundleCopies are
/// listable where this process watches them.
async fn connect(args: &ControllerArgs) -> anyhow::Result<kube::Config> {
    let config = kube::Config::infer().await.context(
        "connecting to Kubernetes (set KUBECONFIG or run in a pod with a service account)",
    )?;
    let client = api_client::build(config.clone(), API_REQUEST_TIMEOUT, None)
        .context("setting up the Kubernetes client")?;
    let probe: Api<BundleCopy> = match args.namespaces.first() {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    };
    probe.list_metadata(&ListParams::default().limit(1)).await.context(
        "listing BundleCopies failed; is the CRD installed? \
         (kubectl apply --server-side -f crds/bundlecopies.bundlecopy.dev.yaml) and may this account list them?",
    )?;
    Ok(config)
}

/// What the controller needs for one term of reconciling (all of the run without election).
struct Reconciling<'a> {
    args: &'a ControllerArgs,
    client: Client,
    metrics: Arc<Metrics>,
    engine: EngineSettings,
    shutdown: watch::Receiver<bool>,
}

impl Reconciling<'_> {
    /// Runs the controllers until a shutdown lets them finish. Dropping the future stops every
    /// reconcile at once, copies included. Each term starts with fresh per-object memory.
    async fn run(&self) {
        let ctx = Arc::new(Context::new(
            self.client.clone(),
            self.metrics.clone(),
            self.engine.clone(),
            usize::from(self.args.max_concurrent_copies),
        ));
        let scopes: Vec<Option<String>> = if self.args.namespaces.is_empty() {
            vec![None]
        } else {
            self.args.namespaces.iter().cloned().map(Some).collect()
        };
        let controllers = scopes.into_iter().map(|namespace| {
            controller_stream(
                self.client.clone(),
                namespace,
                ctx.clone(),
                self.args.max_concurrent_copies,
                until_set(self.shutdown.clone()),
            )
            .boxed()
        });
        tracing::info!(namespaces = ?self.args.namespaces, "controller started");
        futures_util::stream::select_all(controllers)
            .for_each(|()| async {})
            .await;
    }
}

/// Engine settings from the flags.
fn engine_settings(args: &ControllerArgs) -> anyhow::Result<EngineSettings> {
    let mut engine = EngineSettings::default();
    if let Some(path) = &args.extra_ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading --extra-ca-file {}", path.display()))?;
        crate::copy::validate_ca_pem(&pem)
            .map_err(|problem| anyhow::anyhow!("--extra-ca-file {}: {problem}", path.display()))?;
        engine.extra_roots_pem = Some(pem);
    }
    Ok(engine)
}

/// Sets the shutdown flag on SIGTERM/SIGINT; a second signal ends the process at once.
fn handle_signals(shutdown: watch::Sender<bool>, readiness: Readiness) {
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(
            "shutdown requested; finishing running copies (signal again to stop at once)"
        );
        readiness.set(Role::Stopping);
        let _ = shutdown.send(true);
        shutdown_signal().await;
        tracing::warn!("second signal: stopping without waiting for running copies");
        std::process::exit(130);
    });
}

/// Runs the controller until SIGTERM/SIGINT. With leader election it reconciles only while it
/// holds the Lease; a leader that loses it steps down and becomes a candidate again.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    init_logging(&args)?;
    crate::install_crypto_provider();
    let lease = args.lease_settings();
    if args.leader_election {
        lease.timing.validate().map_err(anyhow::Error::msg)?;
    }
    let engine = engine_settings(&args)?;

    // The HTTP server comes up first so that /healthz answers and /readyz says `starting` while
    // the API server, the CRD and the Lease are checked.
    let metrics = Arc::new(Metrics::new());
    // Only a leader writes: the fence closes at the renew deadline, before any take-over.
    let fence = if args.leader_election {
        leader::Fence::closed()
    } else {
        leader::Fence::always_open()
    };
    let readiness = Readiness::new(metrics.leader.clone()).with_fence(fence.clone());
    let (shutdown_sender, shutdown) = watch::channel(false);
    handle_signals(shutdown_sender.clone(), readiness.clone());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", args.metrics_addr))?;
    let server = tokio::spawn(crate::http::serve(
        listener,
        metrics.clone(),
        readiness.clone(),
        until_set(shutdown.clone()),
    ));

    // A shutdown while the API server is slow to answer must not wait for its timeouts.
    let config = tokio::select! {
        config = connect(&args) => Some(config?),
        () = until_set(shutdown.clone()) => None,
    };
    if let Some(config) = config {
        let reconciling = Reconciling {
            args: &args,
            client: api_client::build(config.clone(), API_REQUEST_TIMEOUT, Some(fence.clone()))
                .context("setting up the Kubernetes client")?,
            metrics,
            engine,
            shutdown: shutdown.clone(),
        };
        if args.leader_election {
            let lease_client = api_client::build(config, API_REQUEST_TIMEOUT, None)
                .context("setting up the Kubernetes client")?;
            lead_while_elected(&reconciling, lease_client, lease, fence, &readiness).await?;
        } else {
            readiness.set(Role::Running);
            reconciling.run().await;
        }
    }
    readiness.set(Role::Stopping);
    let _ = shutdown_sender.send(true);
    match server.await {
        Ok(result) => result.context("serving /healthz, /readyz and /metrics")?,
        Err(error) => tracing::warn!(%error, "the HTTP server task failed"),
    }
    tracing::info!("controller stopped");
    Ok(())
}

/// Terms of leadership until shutdown: stand by until the Lease is ours, reconcile while it is,
/// and after losing it stand by again (the in-flight reconciles are dropped, and the fence has
/// already closed the API client to writes).
async fn lead_while_elected(
    reconciling: &Reconciling<'_>,
    lease_client: Client,
    lease: leader::LeaseSettings,
    fence: leader::Fence,
    readiness: &Readiness,
) -> anyhow::Result<()> {
    tracing::info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity,
        timing = ?lease.timing, "waiting for leadership");
    loop {
        // A standby is ready (rollouts must complete while the old leader still holds the lease),
        // but not while it cannot reach the lease and so could not take over.
        let candidate_readiness = readiness.clone();
        let report = move |candidacy| {
            candidate_readiness.set(match candidacy {
                leader::Candidacy::Standby => Role::Standby,
                leader::Candidacy::LeaseUnreachable => Role::Starting,
            })
        };
        let elected = tokio::select! {
            elected = leader::acquire(lease_client.clone(), lease.clone(), fence.clone(), report) => elected?,
            () = until_set(reconciling.shutdown.clone()) => {
                tracing::info!("stopped while standing by");
                return Ok(());
            }
        };
        readiness.set(Role::Leader);
        let lost = tokio::select! {
            () = reconciling.run() => false,
            () = elected.lost() => true,
        };
        if !lost {
            // Shutdown: the running copies finished; hand the Lease over at once.
            elected.release().await;
            return Ok(());
        }
        readiness.set(Role::Standby);
        tracing::warn!("lost the leader Lease; stopped reconciling, standing by to lead again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    #[test]
    fn flags_and_defaults() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert!(cli.args.namespaces.is_empty());
        assert_eq!(cli.args.max_concurrent_copies, 4);
        assert_eq!(cli.args.metrics_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(cli.args.log_format, LogFormat::Text);
        assert_eq!(cli.args.log_level, "info");
        assert!(!cli.args.leader_election);
        assert_eq!(cli.args.leader_election_lease_name, "bundlecopy-operator");

        let cli = Cli::try_parse_from([
            "x",
            "--namespace",
            "a",
            "--namespace",
            "b",
            "--max-concurrent-copies",
            "2",
            "--log-format",
            "json",
            "--leader-election",
            "--extra-ca-file",
            "/etc/ca.pem",
        ])
        .unwrap();
        assert_eq!(cli.args.namespaces, ["a", "b"]);
        assert_eq!(cli.args.max_concurrent_copies, 2);
        assert_eq!(cli.args.log_format, LogFormat::Json);
        assert!(cli.args.leader_election);
        assert!(Cli::try_parse_from(["x", "--max-concurrent-copies", "0"]).is_err());
    }

    #[tokio::test]
    async fn bad_startup_settings_are_refused_with_the_flag_named() {
        let args = |extra: &[&str]| {
            let mut argv = vec!["x", "--metrics-addr", "127.0.0.1:0"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().args
        };
        let error = run(args(&["--log-level", "info,[broken"]))
            .await
            .unwrap_err();
        assert!(format!("{error:#}").contains("--log-level"), "{error:#}");

        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("ca.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let error = run(args(&["--extra-ca-file", garbage.to_str().unwrap()]))
            .await
            .unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains("--extra-ca-file") && message.contains("no PEM certificate"),
            "{message}"
        );

        let missing = dir.path().join("absent.pem");
        let error = run(args(&["--extra-ca-file", missing.to_str().unwrap()]))
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("reading --extra-ca-file"),
            "{error:#}"
        );
    }

    fn bundle(namespace: &str, source_secret: &str, ca: Option<&str>) -> BundleCopy {
        let mut bundle: BundleCopy = serde_json::from_value(serde_json::json!({
            "apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopy",
            "metadata": {"name": format!("b-{source_secret}"), "namespace": namespace},
            "spec": {
                "source": {"reference": "localhost:5001/a:v1", "credentials": [{"name": source_secret}]},
                "destination": {"reference": "localhost:5002/team"},
            }
        }))
        .unwrap();
        if let Some(ca) = ca {
            bundle.spec.destination.ca_secret_ref = Some(crate::api::CaSecretReference {
                name: ca.into(),
                key: "ca.crt".into(),
            });
        }
        bundle
    }

    #[test]
    fn secrets_map_to_the_bundle_copies_that_name_them() {
        let (reader, mut writer) = reflector::store::<DeserializeGuard<BundleCopy>>();
        for object in [
            bundle("team-a", "pull", None),
            bundle("team-a", "other", Some("corp-ca")),
            bundle("team-b", "pull", None),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(object))));
        }
        // An object that does not deserialize names no Secret we can know of.
        let malformed: DeserializeGuard<BundleCopy> = serde_json::from_value(serde_json::json!({
            "apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopy",
            "metadata": {"name": "broken", "namespace": "team-a"},
            "spec": {"source": {"reference": 5, "credentials": [{"name": "pull"}]}}
        }))
        .unwrap();
        assert!(malformed.0.is_err());
        writer.apply_watcher_event(&watcher::Event::Apply(malformed));
        let secret = |namespace: &str, name: &str| PartialObjectMeta::<Secret> {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let names = |refs: Vec<ObjectRef<DeserializeGuard<BundleCopy>>>| {
            let mut names: Vec<String> = refs
                .iter()
                .map(|r| format!("{}/{}", r.namespace.clone().unwrap_or_default(), r.name))
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            names(bundle_copies_using(&reader, &secret("team-a", "pull"))),
            ["team-a/b-pull"]
        );
        assert_eq!(
            names(bundle_copies_using(&reader, &secret("team-a", "corp-ca"))),
            ["team-a/b-other"]
        );
        assert!(bundle_copies_using(&reader, &secret("team-c", "pull")).is_empty());
        assert!(bundle_copies_using(&reader, &secret("team-a", "unrelated")).is_empty());
    }

    /// A Secret watch's first listing triggers nothing (every BundleCopy is reconciled at
    /// start-up anyway; a second trigger ran a failed object twice in a row); changes, deletions
    /// and later re-listings do.
    #[tokio::test]
    async fn the_first_listing_of_a_watch_is_not_a_change() {
        let named = |name: &str| PartialObjectMeta::<Secret> {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let events = vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(named("listed-at-start"))),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Apply(named("changed"))),
            Ok(watcher::Event::Delete(named("deleted"))),
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(named("listed-again"))),
            Ok(watcher::Event::InitDone),
        ];
        let changed: Vec<String> = changed_objects(futures_util::stream::iter(events))
            .map(|object| object.map(|o| o.metadata.name.unwrap_or_default()))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(changed, ["changed", "deleted", "listed-again"]);
    }
}
