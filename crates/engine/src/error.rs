//! One error type for the copy engine. Each variant has an `ErrorKind` (the operator turns it into
//! a reason of the Ready condition) and, where there is one, a `Remedy` that each front end phrases
//! in its own terms; messages say what failed and never carry a credential.

use std::time::Duration;

/// Which endpoint of a copy an error concerns. Front ends use it to phrase the fix
/// (`--destination-insecure` on the CLI, `spec.destination.insecure` in the resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of failure a `CopyError` is. Front ends map it to their own words: the operator to
/// a reason of the Ready condition (`operator::reason`), the CLI to a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidSpec,
    /// Credentials or CA certificates that cannot be parsed.
    InvalidCredentials,
    AuthenticationFailed,
    Tls,
    Unreachable,
    SourceNotFound,
    NotABundle,
    DestinationExists,
    DigestMismatch,
    RateLimited,
    RegistryError,
    /// No connection to the HTTP proxy on the way to a registry.
    ProxyUnreachable,
    /// The proxy would not open a tunnel (CONNECT) to the registry.
    ProxyRefused,
    /// The proxy answered 407: no or wrong proxy credentials.
    ProxyAuthenticationFailed,
    /// A local OCI layout or archive that cannot be read or written as asked.
    InvalidLayout,
}

impl ErrorKind {
    /// Whether retrying the same request later may succeed without any change of spec or
    /// credentials.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Unreachable
                | ErrorKind::ProxyUnreachable
                | ErrorKind::RateLimited
                | ErrorKind::RegistryError
                | ErrorKind::DigestMismatch
        )
    }
}

/// What the user can do about a failure, in no front end's words: the CLI names its flags, the
/// operator its resource's fields. One table (`CopyError::remedy`) for both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remedy {
    /// Trust the registry's CA, or allow the endpoint to be insecure.
    TrustCaOrAllowInsecure(Side),
    /// The CA certificates given for the endpoint are wrong.
    FixCa(Side),
    /// Give (working) credentials for the registry.
    FixCredentials { side: Side, registry: String },
    /// Start the registry or correct its address; plain HTTP off loopback needs insecure.
    CheckReachable(Side),
    /// Overwrite the destination's different bundle.
    Force,
    /// Wait: the registry is rate limiting.
    WaitAndRetry,
    /// The source is not there (yet).
    CheckSource,
    /// The Docker config cannot be parsed.
    FixDockerConfig,
    /// Start the proxy or correct its address, or bypass it for this registry.
    CheckProxy { side: Side, origin: ProxyOrigin },
    /// The proxy's policy forbids the tunnel: allow it there, or bypass the proxy.
    AllowAtProxy { side: Side, origin: ProxyOrigin },
    /// Give (working) credentials for the proxy.
    FixProxyCredentials { side: Side, origin: ProxyOrigin },
    /// Set up the pod's cloud identity for this provider (docs/cloud.md).
    SetUpCloudIdentity { side: Side, provider: String },
}

/// Where the proxy of a failed request was configured, so that a front end can name the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyOrigin {
    /// The endpoint's own proxy (`--source-proxy`, `proxySecretRef`).
    Endpoint,
    /// A variable of the process environment, as spelled there (`HTTPS_PROXY`, `https_proxy`).
    Environment(String),
}

impl std::fmt::Display for ProxyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyOrigin::Endpoint => f.write_str("set for this endpoint"),
            ProxyOrigin::Environment(variable) => write!(f, "from {variable}"),
        }
    }
}

/// What went wrong at an HTTP proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProblem {
    /// No connection to the proxy (refused, DNS, timeout, closed).
    Unreachable,
    /// The proxy answered CONNECT with an error status.
    TunnelRefused,
    /// The proxy answered 407 Proxy Authentication Required.
    AuthenticationFailed,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A reference, option or destination that cannot be used as given.
    #[error("{0}")]
    InvalidSpec(String),

    /// Credentials (a Docker config) that cannot be parsed.
    #[error("{0}")]
    InvalidCredentials(String),

    /// A CA certificate that cannot be parsed.
    #[error("{side} CA certificate: {detail}")]
    InvalidCa { side: Side, detail: String },

    #[error("{side} registry {registry}: {detail}")]
    AuthenticationFailed {
        side: Side,
        registry: String,
        detail: String,
    },

    /// The fix (trust a CA, or allow an insecure endpoint) is added by the front end, in its
    /// own terms.
    #[error("{side} registry {registry}: TLS failed: {detail}")]
    Tls {
        side: Side,
        registry: String,
        detail: String,
    },

    #[error("{side} registry {registry} is unreachable: {detail}")]
    Unreachable {
        side: Side,
        registry: String,
        detail: String,
    },

    #[error("source {reference} was not found: {detail}")]
    SourceNotFound { reference: String, detail: String },

    #[error("{reference} is not a CNAB bundle: {detail}")]
    NotABundle { reference: String, detail: String },

    #[error(
        "destination {reference} already holds a different bundle ({existing}); set force to overwrite it"
    )]
    DestinationExists { reference: String, existing: String },

    #[error(
        "content of {digest} from {side} registry {registry} does not match its digest: {detail}"
    )]
    DigestMismatch {
        side: Side,
        registry: String,
        digest: String,
        detail: String,
    },

    #[error("{side} registry {registry} is rate limiting requests{}", retry_hint(*.retry_after))]
    RateLimited {
        side: Side,
        registry: String,
        retry_after: Option<Duration>,
    },

    /// A failure at the HTTP proxy between bundlecopy and the registry; `detail` says what
    /// the proxy did.
    #[error("{side} registry {registry}: the proxy {proxy} ({origin}) {detail}")]
    Proxy {
        side: Side,
        registry: String,
        /// `scheme://host:port`, never with credentials.
        proxy: String,
        origin: ProxyOrigin,
        problem: ProxyProblem,
        detail: String,
    },

    /// The pod's cloud identity (`provider`) gave no registry credential; `detail` names the
    /// missing set-up step, or the cloud endpoint that did not answer (`transient`).
    #[error("{side} registry {registry}: provider {provider}: {detail}")]
    CloudIdentity {
        side: Side,
        registry: String,
        provider: String,
        detail: String,
        transient: bool,
    },

    #[error("{side} registry {registry}: {detail}")]
    Registry {
        side: Side,
        registry: String,
        status: Option<u16>,
        detail: String,
    },

    /// A referrer (signature, attestation, SBOM) of the bundle could not be read or written. Its
    /// kind, side and remedy are the cause's; front ends add that the bundle can be copied
    /// without its referrers (`CopyError::concerns_referrers`).
    #[error("{what}: {cause}")]
    Referrer { what: String, cause: Box<CopyError> },

    /// A local OCI image layout (`oci:`) or archive (`oci-archive:`) that cannot be read or
    /// written as asked: a truncated tar, an unknown layout version, a file that cannot be
    /// written, or (`problem` `Mismatch`) bytes that are not what their digest names.
    #[error("{side} {location}: {detail}")]
    Layout {
        side: Side,
        location: String,
        problem: LayoutProblem,
        detail: String,
    },
}

/// What is wrong with a layout or archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutProblem {
    /// It cannot be read or written (missing, damaged, of an unknown version, a file system error).
    Unusable,
    /// A blob or manifest whose bytes do not match its digest or size.
    Mismatch,
}

fn retry_hint(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(" (retry after {}s)", d.as_secs().max(1)),
        None => String::new(),
    }
}

impl CopyError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CopyError::InvalidSpec(_) => ErrorKind::InvalidSpec,
            CopyError::InvalidCredentials(_) | CopyError::InvalidCa { .. } => {
                ErrorKind::InvalidCredentials
            }
            CopyError::AuthenticationFailed { .. } => ErrorKind::AuthenticationFailed,
            CopyError::Tls { .. } => ErrorKind::Tls,
            CopyError::Unreachable { .. } => ErrorKind::Unreachable,
            CopyError::SourceNotFound { .. } => ErrorKind::SourceNotFound,
            CopyError::NotABundle { .. } => ErrorKind::NotABundle,
            CopyError::DestinationExists { .. } => ErrorKind::DestinationExists,
            CopyError::DigestMismatch { .. } => ErrorKind::DigestMismatch,
            CopyError::RateLimited { .. } => ErrorKind::RateLimited,
            CopyError::Registry { .. } => ErrorKind::RegistryError,
            CopyError::CloudIdentity { transient, .. } => {
                if *transient {
                    ErrorKind::Unreachable
                } else {
                    ErrorKind::AuthenticationFailed
                }
            }
            CopyError::Proxy { problem, .. } => match problem {
                ProxyProblem::Unreachable => ErrorKind::ProxyUnreachable,
                ProxyProblem::TunnelRefused => ErrorKind::ProxyRefused,
                ProxyProblem::AuthenticationFailed => ErrorKind::ProxyAuthenticationFailed,
            },
            CopyError::Layout { problem, .. } => match problem {
                LayoutProblem::Unusable => ErrorKind::InvalidLayout,
                LayoutProblem::Mismatch => ErrorKind::DigestMismatch,
            },
            CopyError::Referrer { cause, .. } => cause.kind(),
        }
    }

    /// Whether the failure concerns the bundle's referrers (signatures, attestations, SBOMs):
    /// the bundle itself could be copied without them.
    pub fn concerns_referrers(&self) -> bool {
        matches!(self, CopyError::Referrer { .. })
    }

    /// This error as the failure of a referrer (`what` says which), unless it already is one.
    pub fn for_referrer(self, what: impl FnOnce() -> String) -> CopyError {
        match self {
            referrer @ CopyError::Referrer { .. } => referrer,
            cause => CopyError::Referrer {
                what: what(),
                cause: Box::new(cause),
            },
        }
    }

    /// What the user can do about this error, when there is something.
    pub fn remedy(&self) -> Option<Remedy> {
        Some(match self {
            CopyError::Tls { side, .. } => Remedy::TrustCaOrAllowInsecure(*side),
            CopyError::InvalidCa { side, .. } => Remedy::FixCa(*side),
            CopyError::AuthenticationFailed { side, registry, .. } => Remedy::FixCredentials {
                side: *side,
                registry: registry.clone(),
            },
            CopyError::Unreachable { side, .. } => Remedy::CheckReachable(*side),
            CopyError::DestinationExists { .. } => Remedy::Force,
            CopyError::RateLimited { .. } => Remedy::WaitAndRetry,
            CopyError::SourceNotFound { .. } => Remedy::CheckSource,
            CopyError::InvalidCredentials(_) => Remedy::FixDockerConfig,
            CopyError::CloudIdentity {
                side,
                provider,
                transient: false,
                ..
            } => Remedy::SetUpCloudIdentity {
                side: *side,
                provider: provider.clone(),
            },
            CopyError::Proxy {
                side,
                origin,
                problem,
                ..
            } => {
                let (side, origin) = (*side, origin.clone());
                match problem {
                    ProxyProblem::Unreachable => Remedy::CheckProxy { side, origin },
                    ProxyProblem::TunnelRefused => Remedy::AllowAtProxy { side, origin },
                    ProxyProblem::AuthenticationFailed => {
                        Remedy::FixProxyCredentials { side, origin }
                    }
                }
            }
            CopyError::Referrer { cause, .. } => return cause.remedy(),
            _ => return None,
        })
    }

    /// The endpoint the error concerns, when there is one.
    pub fn side(&self) -> Option<Side> {
        match self {
            CopyError::InvalidCa { side, .. }
            | CopyError::AuthenticationFailed { side, .. }
            | CopyError::Tls { side, .. }
            | CopyError::Unreachable { side, .. }
            | CopyError::DigestMismatch { side, .. }
            | CopyError::RateLimited { side, .. }
            | CopyError::Proxy { side, .. }
            | CopyError::CloudIdentity { side, .. }
            | CopyError::Registry { side, .. }
            | CopyError::Layout { side, .. } => Some(*side),
            CopyError::SourceNotFound { .. } | CopyError::NotABundle { .. } => Some(Side::Source),
            CopyError::DestinationExists { .. } => Some(Side::Destination),
            CopyError::InvalidSpec(_) | CopyError::InvalidCredentials(_) => None,
            CopyError::Referrer { cause, .. } => cause.side(),
        }
    }

    /// How long the registry asked us to wait, for `RateLimited`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CopyError::RateLimited { retry_after, .. } => *retry_after,
            CopyError::Referrer { cause, .. } => cause.retry_after(),
            _ => None,
        }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            CopyError::Registry { status, .. } => status.is_none_or(|s| s >= 500 || s == 408),
            CopyError::Referrer { cause, .. } => cause.is_transient(),
            // A file reads the same the next time.
            CopyError::Layout { .. } => false,
            other => other.kind().is_transient(),
        }
    }
}
