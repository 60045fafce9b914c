//! The flags of `bundlecopy controller` (each also an environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::duration::parse_duration;
use super::leader;

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

    /// Copies that may run at the same time against one registry host, as source or
    /// destination, counted across all BundleCopies (within `--max-concurrent-copies`).
    #[arg(long, value_name = "N",
        env = "BUNDLECOPY_MAX_COPIES_PER_REGISTRY", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub max_copies_per_registry: u16,

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

    /// Run the BundleMirror controller too (needs the BundleMirror CRD); `false` runs BundleCopies only.
    #[arg(long, env = "BUNDLECOPY_MIRRORS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub mirrors: bool,

    /// Shortest mirror interval accepted (the CRD says 1m). Lowered only by tests, to see a
    /// mirror list its tags again without waiting minutes.
    #[arg(long, hide = true, value_name = "DURATION", default_value = "1m", value_parser = parse_flag_duration)]
    pub mirror_min_interval: Duration,

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
    parse_duration(text).map_err(|error| error.to_string())
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    pub(crate) struct Cli {
        #[command(flatten)]
        pub(crate) args: ControllerArgs,
    }

    #[test]
    fn flags_and_defaults() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert!(cli.args.namespaces.is_empty());
        assert_eq!(cli.args.max_concurrent_copies, 4);
        assert_eq!(cli.args.max_copies_per_registry, 2);
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
            "--max-copies-per-registry",
            "1",
            "--log-format",
            "json",
            "--leader-election",
            "--extra-ca-file",
            "/etc/ca.pem",
        ])
        .unwrap();
        assert_eq!(cli.args.namespaces, ["a", "b"]);
        assert_eq!(cli.args.max_concurrent_copies, 2);
        assert_eq!(cli.args.max_copies_per_registry, 1);
        assert!(Cli::try_parse_from(["x", "--max-copies-per-registry", "0"]).is_err());
        assert_eq!(cli.args.log_format, LogFormat::Json);
        assert!(cli.args.leader_election);
        assert!(Cli::try_parse_from(["x", "--max-concurrent-copies", "0"]).is_err());
    }
}
