//! The BundleCopy operator: watches BundleCopies (and the Secrets they name), reconciles each
//! with the copy engine and reports in its status. Its layers are in docs/architecture.md.

pub mod api_client;
pub mod args;
pub mod context;
pub mod crd;
pub mod decide;
pub mod duration;
pub mod failure;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod mirror;
pub mod process;
pub mod reason;
pub mod reconcile;
pub mod secrets;
pub mod status;
pub mod validate;
pub mod watch;

use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::sync::watch as signal;

use args::{API_REQUEST_TIMEOUT, ControllerArgs};
use bundlecopy_engine::EngineSettings;
use context::Context;
use crd::BundleCopy;
use health::{Readiness, Role};
use metrics::Metrics;
use process::{handle_signals, init_logging, until_set};

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
    shutdown: signal::Receiver<bool>,
}

impl Reconciling<'_> {
    /// Runs the controllers until a shutdown lets them finish. Dropping the future stops every
    /// reconcile at once, copies included. Each term starts with fresh per-object memory.
    /// The namespaces watched: each of `--namespace`, or all.
    fn scopes(&self) -> Vec<Option<String>> {
        if self.args.namespaces.is_empty() {
            vec![None]
        } else {
            self.args.namespaces.iter().cloned().map(Some).collect()
        }
    }

    async fn run(&self) {
        let ctx = Arc::new(
            Context::new(
                self.client.clone(),
                self.metrics.clone(),
                self.engine.clone(),
                usize::from(self.args.max_concurrent_copies),
            )
            .with_copies_per_registry(usize::from(self.args.max_copies_per_registry)),
        );
        let controllers = self.scopes().into_iter().map(|namespace| {
            watch::controller_stream(
                self.client.clone(),
                namespace,
                ctx.clone(),
                self.args.max_concurrent_copies,
                until_set(self.shutdown.clone()),
            )
            .boxed()
        });
        let mut streams: Vec<_> = controllers.collect();
        if self.args.mirrors {
            let mirror_ctx = Arc::new(mirror::reconcile::MirrorContext {
                client: self.client.clone(),
                engine: self.engine.clone(),
                min_interval: self.args.mirror_min_interval,
            });
            streams.extend(self.scopes().into_iter().map(|namespace| {
                mirror::watch::mirror_stream(
                    self.client.clone(),
                    namespace,
                    mirror_ctx.clone(),
                    until_set(self.shutdown.clone()),
                )
                .boxed()
            }));
        }
        tracing::info!(namespaces = ?self.args.namespaces, mirrors = self.args.mirrors,
            proxies = ?self.engine.proxy_environment, "controller started");
        futures_util::stream::select_all(streams)
            .for_each(|()| async {})
            .await;
    }
}

/// Engine settings from the flags.
fn engine_settings(args: &ControllerArgs) -> anyhow::Result<EngineSettings> {
    let mut engine = EngineSettings {
        proxy_environment: bundlecopy_engine::ProxyEnvironment::from_env().map_err(|problem| {
            anyhow::anyhow!(
                "the proxy environment variable {problem}; fix it, or unset it to connect directly"
            )
        })?,
        cloud_environment: bundlecopy_engine::CloudEnvironment::from_env(),
        ..EngineSettings::default()
    };
    if let Some(path) = &args.extra_ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading --extra-ca-file {}", path.display()))?;
        bundlecopy_engine::validate_ca_pem(&pem)
            .map_err(|problem| anyhow::anyhow!("--extra-ca-file {}: {problem}", path.display()))?;
        engine.extra_roots_pem = Some(pem);
    }
    Ok(engine)
}

/// Runs the controller until SIGTERM/SIGINT. With leader election it reconciles only while it
/// holds the Lease; a leader that loses it steps down and becomes a candidate again.
///
/// Start-up in named steps: settings from the flags, the health server and signal handling,
/// the connection to the API server, then reconciling (with or without election) until a
/// shutdown, and last the health server's end.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let settings = Settings::from_flags(&args)?;
    let process = Process::start(&args, &settings.fence).await?;
    // A shutdown while the API server is slow to answer must not wait for its timeouts.
    let config = tokio::select! {
        config = connect(&args) => Some(config?),
        () = until_set(process.shutdown.clone()) => None,
    };
    if let Some(config) = config {
        reconcile_until_shutdown(&args, settings, &process, config).await?;
    }
    process.stop().await
}

/// What the flags decide before anything starts.
struct Settings {
    lease: leader::LeaseSettings,
    engine: EngineSettings,
    /// Only a leader writes: the fence closes at the renew deadline, before any take-over.
    fence: leader::Fence,
}

impl Settings {
    fn from_flags(args: &ControllerArgs) -> anyhow::Result<Settings> {
        init_logging(args)?;
        bundlecopy_engine::install_crypto_provider();
        let lease = args.lease_settings();
        if args.leader_election {
            lease.timing.validate().map_err(anyhow::Error::msg)?;
        }
        Ok(Settings {
            lease,
            engine: engine_settings(args)?,
            fence: if args.leader_election {
                leader::Fence::closed()
            } else {
                leader::Fence::always_open()
            },
        })
    }
}

/// The process around the controllers: metrics, readiness, the shutdown flag set by signals,
/// and the /healthz, /readyz and /metrics server.
struct Process {
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown_sender: signal::Sender<bool>,
    shutdown: signal::Receiver<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Process {
    /// The HTTP server comes up first so that /healthz answers and /readyz says `starting`
    /// while the API server, the CRD and the Lease are checked.
    async fn start(args: &ControllerArgs, fence: &leader::Fence) -> anyhow::Result<Process> {
        let metrics = Arc::new(Metrics::new());
        let readiness = Readiness::new(metrics.leader.clone()).with_fence(fence.clone());
        let (shutdown_sender, shutdown) = signal::channel(false);
        handle_signals(shutdown_sender.clone(), readiness.clone());
        let listener = tokio::net::TcpListener::bind(args.metrics_addr)
            .await
            .with_context(|| format!("binding --metrics-addr {}", args.metrics_addr))?;
        let server = tokio::spawn(health::serve(
            listener,
            metrics.clone(),
            readiness.clone(),
            until_set(shutdown.clone()),
        ));
        Ok(Process {
            metrics,
            readiness,
            shutdown_sender,
            shutdown,
            server,
        })
    }

    /// Stop serving and wait for the server to end.
    async fn stop(self) -> anyhow::Result<()> {
        self.readiness.set(Role::Stopping);
        let _ = self.shutdown_sender.send(true);
        match self.server.await {
            Ok(result) => result.context("serving /healthz, /readyz and /metrics")?,
            Err(error) => tracing::warn!(%error, "the HTTP server task failed"),
        }
        tracing::info!("controller stopped");
        Ok(())
    }
}

/// Reconcile, as the leader or alone, until a shutdown.
async fn reconcile_until_shutdown(
    args: &ControllerArgs,
    settings: Settings,
    process: &Process,
    config: kube::Config,
) -> anyhow::Result<()> {
    let reconciling = Reconciling {
        args,
        client: api_client::build(
            config.clone(),
            API_REQUEST_TIMEOUT,
            Some(settings.fence.clone()),
        )
        .context("setting up the Kubernetes client")?,
        metrics: process.metrics.clone(),
        engine: settings.engine,
        shutdown: process.shutdown.clone(),
    };
    if args.leader_election {
        let lease_client = api_client::build(config, API_REQUEST_TIMEOUT, None)
            .context("setting up the Kubernetes client")?;
        lead_while_elected(
            &reconciling,
            lease_client,
            settings.lease,
            settings.fence,
            &process.readiness,
        )
        .await
    } else {
        process.readiness.set(Role::Running);
        reconciling.run().await;
        Ok(())
    }
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
    use crate::operator::args::tests::Cli;
    use clap::Parser;

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
}
