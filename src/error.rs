//! One error type for the copy engine. Each variant maps to a `Reason` that the operator reports
//! in the Ready condition; messages say what failed and what to do, and never carry a credential.

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

/// The reasons of the Ready condition (DESIGN.md section 1), shared by the CLI and the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Copied,
    UpToDate,
    InvalidSpec,
    SecretNotFound,
    InvalidSecret,
    AuthenticationFailed,
    TLSError,
    Unreachable,
    SourceNotFound,
    NotABundle,
    DestinationExists,
    DigestMismatch,
    RateLimited,
    RegistryError,
    Suspended,
}

impl Reason {
    pub const ALL: [Reason; 15] = [
        Reason::Copied,
        Reason::UpToDate,
        Reason::InvalidSpec,
        Reason::SecretNotFound,
        Reason::InvalidSecret,
        Reason::AuthenticationFailed,
        Reason::TLSError,
        Reason::Unreachable,
        Reason::SourceNotFound,
        Reason::NotABundle,
        Reason::DestinationExists,
        Reason::DigestMismatch,
        Reason::RateLimited,
        Reason::RegistryError,
        Reason::Suspended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Copied => "Copied",
            Reason::UpToDate => "UpToDate",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::InvalidSecret => "InvalidSecret",
            Reason::AuthenticationFailed => "AuthenticationFailed",
            Reason::TLSError => "TLSError",
            Reason::Unreachable => "Unreachable",
            Reason::SourceNotFound => "SourceNotFound",
            Reason::NotABundle => "NotABundle",
            Reason::DestinationExists => "DestinationExists",
            Reason::DigestMismatch => "DigestMismatch",
            Reason::RateLimited => "RateLimited",
            Reason::RegistryError => "RegistryError",
            Reason::Suspended => "Suspended",
        }
    }

    /// Whether retrying the same request later may succeed without any change of spec or Secret.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Reason::Unreachable
                | Reason::RateLimited
                | Reason::RegistryError
                | Reason::DigestMismatch
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

    #[error("{side} registry {registry}: {detail}")]
    Registry {
        side: Side,
        registry: String,
        status: Option<u16>,
        detail: String,
    },
}

fn retry_hint(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(" (retry after {}s)", d.as_secs().max(1)),
        None => String::new(),
    }
}

impl CopyError {
    pub fn reason(&self) -> Reason {
        match self {
            CopyError::InvalidSpec(_) => Reason::InvalidSpec,
            CopyError::InvalidCredentials(_) | CopyError::InvalidCa { .. } => Reason::InvalidSecret,
            CopyError::AuthenticationFailed { .. } => Reason::AuthenticationFailed,
            CopyError::Tls { .. } => Reason::TLSError,
            CopyError::Unreachable { .. } => Reason::Unreachable,
            CopyError::SourceNotFound { .. } => Reason::SourceNotFound,
            CopyError::NotABundle { .. } => Reason::NotABundle,
            CopyError::DestinationExists { .. } => Reason::DestinationExists,
            CopyError::DigestMismatch { .. } => Reason::DigestMismatch,
            CopyError::RateLimited { .. } => Reason::RateLimited,
            CopyError::Registry { .. } => Reason::RegistryError,
        }
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
            | CopyError::Registry { side, .. } => Some(*side),
            CopyError::SourceNotFound { .. } | CopyError::NotABundle { .. } => Some(Side::Source),
            CopyError::DestinationExists { .. } => Some(Side::Destination),
            CopyError::InvalidSpec(_) | CopyError::InvalidCredentials(_) => None,
        }
    }

    /// How long the registry asked us to wait, for `RateLimited`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CopyError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            CopyError::Registry { status, .. } => status.is_none_or(|s| s >= 500 || s == 408),
            other => other.reason().is_transient(),
        }
    }
}
