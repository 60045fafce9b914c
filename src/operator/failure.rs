//! Why a reconcile could not reach Ready True, with what to do phrased in the resource's fields.

use std::time::Duration;

use super::crd::BundleCopySpec;
use super::decide;
use super::reason::Reason;
use bundlecopy_engine::{CopyError, Remedy, Side};

/// Why a reconcile could not reach Ready True.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
    pub transient: bool,
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn permanent(reason: Reason, message: String) -> Self {
        Failure {
            reason,
            message,
            transient: false,
            retry_after: None,
        }
    }

    /// The engine's error with its remedy phrased in this resource's fields, naming the
    /// credential Secrets of `spec` when they were refused.
    pub fn from_copy_error_in(error: &CopyError, spec: Option<&BundleCopySpec>) -> Self {
        let hint = error
            .remedy()
            .and_then(|remedy| phrase(&remedy, spec))
            .unwrap_or_default();
        Failure {
            reason: error.kind().into(),
            message: format!("{error}{hint}"),
            transient: decide::is_transient(error),
            retry_after: error.retry_after(),
        }
    }
}

fn field(side: Side) -> &'static str {
    match side {
        Side::Source => "spec.source",
        Side::Destination => "spec.destination",
    }
}

/// A remedy in the resource's terms; `None` for those that have no field to point at.
fn phrase(remedy: &Remedy, spec: Option<&BundleCopySpec>) -> Option<String> {
    Some(match remedy {
        Remedy::FixCredentials { side, .. } => {
            let field = field(*side);
            let endpoint = spec.map(|spec| match side {
                Side::Source => &spec.source,
                Side::Destination => &spec.destination,
            });
            match endpoint.filter(|endpoint| !endpoint.credentials.is_empty()) {
                Some(endpoint) => {
                    let names: Vec<String> = endpoint
                        .credentials
                        .iter()
                        .map(|c| format!("{:?}", c.name))
                        .collect();
                    format!(
                        "; check that the Secrets listed in {field}.credentials ({}) hold a working \
                         username and password for this registry",
                        names.join(", ")
                    )
                }
                None => format!(
                    "; list a Secret with credentials for this registry in {field}.credentials"
                ),
            }
        }
        Remedy::TrustCaOrAllowInsecure(side) => {
            let field = field(*side);
            format!(
                "; trust the registry's CA with {field}.caSecretRef, or set {field}.insecure: true"
            )
        }
        Remedy::CheckSource => {
            "; the copy starts when it appears (checked again with a backoff of up to 5 minutes)"
                .to_string()
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_from_the_engine_keep_reason_and_transience() {
        let error = CopyError::Tls {
            side: Side::Destination,
            registry: "localhost:5002".into(),
            detail: "unknown issuer".into(),
        };
        let failure = Failure::from_copy_error_in(&error, None);
        assert_eq!(failure.reason, Reason::TLSError);
        assert!(!failure.transient);
        assert!(
            failure.message.contains("spec.destination.caSecretRef"),
            "{}",
            failure.message
        );

        let limited = CopyError::RateLimited {
            side: Side::Source,
            registry: "r".into(),
            retry_after: Some(Duration::from_secs(30)),
        };
        let failure = Failure::from_copy_error_in(&limited, None);
        assert!(failure.transient);
        assert_eq!(failure.retry_after, Some(Duration::from_secs(30)));

        let denied = CopyError::AuthenticationFailed {
            side: Side::Source,
            registry: "r".into(),
            detail: "401".into(),
        };
        assert!(
            Failure::from_copy_error_in(&denied, None)
                .message
                .contains("spec.source.credentials")
        );
    }
}
