//! What a caller tells the engine: how to reach each endpoint and the process-wide knobs. The
//! bottom of the engine: every other module may use these types, they use none of the others but
//! the credentials, proxies and cloud settings they carry.

use std::collections::BTreeMap;
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
    /// Where registry credentials come from besides `credentials`: the pod's cloud identity
    /// (`Aws`, `Azure`, `Gcp`; tried first), or nothing more (`Generic`).
    pub provider: Provider,
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
    /// The cloud identity variables of the environment (`CloudEnvironment::from_env`), for
    /// endpoints with a cloud `provider`. The default is none: a front end reads the environment.
    pub cloud_environment: CloudEnvironment,
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
            cloud_environment: CloudEnvironment::default(),
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

/// Where an endpoint's registry credentials come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Provider {
    /// The endpoint's Docker config credentials (Secrets, `--docker-config`) only.
    #[default]
    Generic,
    Aws,
    Azure,
    Gcp,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Generic => "generic",
            Provider::Aws => "aws",
            Provider::Azure => "azure",
            Provider::Gcp => "gcp",
        }
    }

    pub fn parse(text: &str) -> Option<Provider> {
        Some(match text {
            "generic" => Provider::Generic,
            "aws" => Provider::Aws,
            "azure" => Provider::Azure,
            "gcp" => Provider::Gcp,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The variables of the process environment that the clouds' identities use (and the endpoint
/// overrides their SDKs honour), read once by a front end. `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CloudEnvironment {
    variables: BTreeMap<&'static str, String>,
}

impl CloudEnvironment {
    /// Every variable read.
    pub const VARIABLES: [&'static str; 22] = [
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_SESSION_NAME",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_EC2_METADATA_DISABLED",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_STS",
        "AWS_ENDPOINT_URL_ECR",
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_AUTHORITY_HOST",
        "GCE_METADATA_HOST",
    ];

    pub fn from_env() -> CloudEnvironment {
        CloudEnvironment::from_variables(|name| std::env::var(name).ok())
    }

    pub fn from_variables(lookup: impl Fn(&str) -> Option<String>) -> CloudEnvironment {
        CloudEnvironment {
            variables: Self::VARIABLES
                .iter()
                .filter_map(|name| {
                    lookup(name)
                        .map(|value| value.trim().to_string())
                        .filter(|value| !value.is_empty())
                        .map(|value| (*name, value))
                })
                .collect(),
        }
    }

    /// A variable's value, when set and not blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.variables.get(name).map(String::as_str)
    }
}

impl std::fmt::Debug for CloudEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.variables.keys()).finish()
    }
}
