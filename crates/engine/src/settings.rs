//! What a caller tells the engine: how to reach each endpoint and the process-wide knobs. The
//! bottom of the engine: every other module may use these types, they use none of the others but
//! the credentials and proxies they carry.

use std::time::Duration;

use crate::credentials::DockerConfig;
use crate::proxy::{ProxyEnvironment, ProxyOptions};

/// How to reach one endpoint (source or destination) of a copy.
#[derive(Debug, Clone, Default)]
pub struct EndpointOptions {
    /// Allow plain HTTP or an unverified certificate for this endpoint.
    pub insecure: bool,
    /// PEM CA certificates to trust for this endpoint (HTTPS verified against the system roots
    /// plus these, on loopback too).
    pub ca_pem: Option<Vec<u8>>,
    /// Credentials for this endpoint, most specific match first.
    pub credentials: DockerConfig,
    /// An HTTP proxy for every request of this endpoint; it wins over `EngineSettings::proxy_environment`.
    pub proxy: Option<ProxyOptions>,
}

/// Process-wide knobs of the engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Blobs moved at once.
    pub max_concurrent_blobs: usize,
    pub connect_timeout: Duration,
    /// Longest wait for any single read or write on a connection.
    pub io_timeout: Duration,
    /// Attempts per request, and per blob transfer, before a transient error is reported (the
    /// budget is described in `registry::retry`).
    pub max_attempts: u32,
    /// Longest wait honoured from a `Retry-After` header before giving up with `RateLimited`.
    pub max_retry_after: Duration,
    /// Extra PEM CA certificates trusted for every HTTPS registry (does not change the
    /// transport choice of loopback registries).
    pub extra_roots_pem: Option<Vec<u8>>,
    /// The proxy variables of the environment (`ProxyEnvironment::from_env`), used by endpoints
    /// without a proxy of their own. The default is none: a front end reads the environment.
    pub proxy_environment: ProxyEnvironment,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_concurrent_blobs: 8,
            connect_timeout: Duration::from_secs(15),
            io_timeout: Duration::from_secs(60),
            max_attempts: 5,
            max_retry_after: Duration::from_secs(60),
            extra_roots_pem: None,
            proxy_environment: ProxyEnvironment::default(),
        }
    }
}

/// Which referrers of the bundle (signatures, attestations, SBOMs: manifests whose `subject` is a
/// manifest of the bundle, and cosign's `sha256-<hex>.sig/.att/.sbom` tags) travel with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferrerSelection {
    /// Copy referrers at all (`false`: `--referrers none`, `spec.referrers: None`).
    pub copy: bool,
    /// Only referrers of these artifact types; empty means every type. A referrer left out is
    /// not followed either: its own referrers (a signature on an SBOM) stay behind with it.
    pub artifact_types: Vec<String>,
}

impl Default for ReferrerSelection {
    fn default() -> Self {
        ReferrerSelection {
            copy: true,
            artifact_types: Vec::new(),
        }
    }
}

impl ReferrerSelection {
    /// No referrers.
    pub fn none() -> Self {
        ReferrerSelection {
            copy: false,
            artifact_types: Vec::new(),
        }
    }

    /// Whether a referrer of this artifact type is copied.
    pub fn wants(&self, artifact_type: &str) -> bool {
        self.copy
            && (self.artifact_types.is_empty()
                || self.artifact_types.iter().any(|t| t == artifact_type))
    }
}
