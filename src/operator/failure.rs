//! Why a reconcile could not reach Ready True, with what to do phrased in the resource's fields.

use std::time::Duration;

use super::crd::BundleCopySpec;
use super::decide;
use super::reason::Reason;
use bundlecopy_engine::{CopyError, ProxyOrigin, Remedy, Side};

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
        let mut hint = error
            .remedy()
            .and_then(|remedy| phrase(&remedy, spec))
            .unwrap_or_default();
        if error.concerns_referrers() {
            hint.push_str(
                "; or set spec.referrers: None to copy the bundle without its signatures and \
                 attestations",
            );
        }
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

/// Where the proxy came from, in the resource's terms: its `proxySecretRef` Secret, or the
/// controller's environment.
fn proxy_setting(side: Side, origin: &ProxyOrigin, spec: Option<&BundleCopySpec>) -> String {
    match origin {
        ProxyOrigin::Endpoint => {
            let field = format!("{}.proxySecretRef", field(side));
            let name = spec.and_then(|spec| {
                let endpoint = match side {
                    Side::Source => &spec.source,
                    Side::Destination => &spec.destination,
                };
                endpoint.proxy_secret_ref.as_ref().map(|r| r.name.clone())
            });
            match name {
                Some(name) => format!("the Secret {name:?} named by {field}"),
                None => format!("the Secret named by {field}"),
            }
        }
        ProxyOrigin::Environment(variable) => {
            format!("the controller's environment variable {variable} (the chart's proxy values)")
        }
    }
}

/// A remedy in the resource's terms; `None` for those that have no field to point at.
fn phrase(remedy: &Remedy, spec: Option<&BundleCopySpec>) -> Option<String> {
    Some(match remedy {
        Remedy::SetUpCloudIdentity { side, provider } => format!(
            "; set up the {provider} workload identity of the controller's pod (docs/cloud.md), or set {}.provider: generic and list Secrets in {}.credentials",
            field(*side),
            field(*side)
        ),
        Remedy::CheckProxy { side, origin } => {
            let (what, bypass) = match origin {
                ProxyOrigin::Endpoint => ("the address in ", ""),
                ProxyOrigin::Environment(_) => (
                    "",
                    ", or list the registry in NO_PROXY to reach it directly",
                ),
            };
            format!(
                "; check that the proxy is running and that {what}{} is right{bypass}",
                proxy_setting(*side, origin, spec)
            )
        }
        Remedy::AllowAtProxy { side, origin } => format!(
            "; the proxy's rules do not allow this registry: have CONNECT to its host and port allowed there, or reach it another way (a proxy in {}.proxySecretRef{})",
            field(*side),
            match origin {
                ProxyOrigin::Endpoint => "",
                ProxyOrigin::Environment(_) => ", or NO_PROXY",
            }
        ),
        Remedy::FixProxyCredentials { side, origin } => {
            let setting = proxy_setting(*side, origin, spec);
            match origin {
                ProxyOrigin::Endpoint => {
                    format!("; check the keys username and password of {setting}")
                }
                ProxyOrigin::Environment(_) => format!(
                    "; put the proxy's user name and password in {setting} as http://USER:PASSWORD@HOST:PORT"
                ),
            }
        }
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

    #[test]
    fn a_missing_cloud_identity_is_authentication_failed_with_the_set_up_to_do() {
        let error = CopyError::CloudIdentity {
            side: Side::Source,
            registry: "team.azurecr.io".into(),
            provider: "azure".into(),
            detail: "no Azure workload identity in this pod".into(),
            transient: false,
        };
        let failure = Failure::from_copy_error_in(&error, None);
        assert_eq!(failure.reason, Reason::AuthenticationFailed);
        assert!(!failure.transient);
        assert!(
            failure.message.contains("docs/cloud.md")
                && failure.message.contains("spec.source.provider: generic"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn proxy_failures_have_their_own_reasons_and_name_where_the_proxy_came_from() {
        use bundlecopy_engine::error::ProxyProblem;
        let failure = |problem, origin| CopyError::Proxy {
            side: Side::Destination,
            registry: "r:1".into(),
            proxy: "http://proxy:3128".into(),
            origin,
            problem,
            detail: "…".into(),
        };
        let mut spec: BundleCopySpec = serde_json::from_value(serde_json::json!({
            "source": {"reference": "a/b:1"},
            "destination": {"reference": "r:1/team", "proxySecretRef": {"name": "corp-proxy"}},
        }))
        .unwrap();
        let unreachable = Failure::from_copy_error_in(
            &failure(ProxyProblem::Unreachable, ProxyOrigin::Endpoint),
            Some(&spec),
        );
        assert_eq!(unreachable.reason, Reason::ProxyUnreachable);
        assert!(unreachable.transient);
        assert!(
            unreachable
                .message
                .contains("\"corp-proxy\" named by spec.destination.proxySecretRef"),
            "{}",
            unreachable.message
        );
        let denied = Failure::from_copy_error_in(
            &failure(ProxyProblem::AuthenticationFailed, ProxyOrigin::Endpoint),
            Some(&spec),
        );
        assert_eq!(denied.reason, Reason::ProxyAuthenticationFailed);
        assert!(!denied.transient);
        assert!(
            denied.message.contains("username and password"),
            "{}",
            denied.message
        );
        spec.destination.proxy_secret_ref = None;
        let refused = Failure::from_copy_error_in(
            &failure(
                ProxyProblem::TunnelRefused,
                ProxyOrigin::Environment("HTTPS_PROXY".into()),
            ),
            Some(&spec),
        );
        assert_eq!(refused.reason, Reason::ProxyRefused);
        assert!(!refused.transient);
        assert!(refused.message.contains("NO_PROXY"), "{}", refused.message);
        let environment = Failure::from_copy_error_in(
            &failure(
                ProxyProblem::AuthenticationFailed,
                ProxyOrigin::Environment("HTTPS_PROXY".into()),
            ),
            None,
        );
        assert!(
            environment
                .message
                .contains("environment variable HTTPS_PROXY"),
            "{}",
            environment.message
        );
    }
}
