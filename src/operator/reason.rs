//! The reasons of the Ready condition (docs/operator.md lists them with their meaning). The
//! engine's failures map onto them (`From<ErrorKind>`); the others are the operator's own:
//! outcomes, suspension, and the Secrets the resource names.

use bundlecopy_engine::ErrorKind;

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
    ProxyUnreachable,
    ProxyRefused,
    ProxyAuthenticationFailed,
    Suspended,
}

impl Reason {
    pub const ALL: [Reason; 18] = [
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
        Reason::ProxyUnreachable,
        Reason::ProxyRefused,
        Reason::ProxyAuthenticationFailed,
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
            Reason::ProxyUnreachable => "ProxyUnreachable",
            Reason::ProxyRefused => "ProxyRefused",
            Reason::ProxyAuthenticationFailed => "ProxyAuthenticationFailed",
            Reason::Suspended => "Suspended",
        }
    }
}

impl From<ErrorKind> for Reason {
    fn from(kind: ErrorKind) -> Reason {
        match kind {
            ErrorKind::InvalidSpec => Reason::InvalidSpec,
            // The operator's credentials and CA certificates come from Secrets.
            ErrorKind::InvalidCredentials => Reason::InvalidSecret,
            ErrorKind::AuthenticationFailed => Reason::AuthenticationFailed,
            ErrorKind::Tls => Reason::TLSError,
            ErrorKind::Unreachable => Reason::Unreachable,
            ErrorKind::SourceNotFound => Reason::SourceNotFound,
            ErrorKind::NotABundle => Reason::NotABundle,
            ErrorKind::DestinationExists => Reason::DestinationExists,
            ErrorKind::DigestMismatch => Reason::DigestMismatch,
            ErrorKind::RateLimited => Reason::RateLimited,
            ErrorKind::RegistryError => Reason::RegistryError,
            ErrorKind::ProxyUnreachable => Reason::ProxyUnreachable,
            ErrorKind::ProxyRefused => Reason::ProxyRefused,
            ErrorKind::ProxyAuthenticationFailed => Reason::ProxyAuthenticationFailed,
            // Layouts and archives are the CLI's; a BundleCopy names registries only (validate.rs),
            // so this is a spec that should not have been accepted.
            ErrorKind::InvalidLayout => Reason::InvalidSpec,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
