//! What to do about a failed copy, phrased with this CLI's flags (the engine says what the remedy
//! is, `CopyError::remedy`; the operator phrases the same remedies in its resource's fields).

use bundlecopy_engine::{CopyError, ProxyOrigin, Remedy, Side};

fn flag(side: Side) -> &'static str {
    match side {
        Side::Source => "source",
        Side::Destination => "destination",
    }
}

/// The setting that named the proxy, in this CLI's terms.
fn proxy_setting(side: Side, origin: &ProxyOrigin) -> String {
    match origin {
        ProxyOrigin::Endpoint => format!("--{}-proxy", flag(side)),
        ProxyOrigin::Environment(variable) => format!("${variable}"),
    }
}

/// The error plus what to do about it.
pub fn with_hint(e: &CopyError) -> String {
    let hint = match e.remedy() {
        Some(Remedy::TrustCaOrAllowInsecure(side)) => {
            return format!(
                "{e}; trust the registry's CA with --{0}-ca-file PEM, or allow it with \
                 --{0}-insecure (--insecure-registry for both)",
                flag(side)
            );
        }
        Some(Remedy::Force) => {
            if let CopyError::DestinationExists {
                reference,
                existing,
            } = e
            {
                return format!(
                    "destination {reference} already holds a different bundle ({existing}); repeat with --force to overwrite it"
                );
            }
            String::new()
        }
        Some(Remedy::FixCa(side)) => format!("check the file given to --{}-ca-file", flag(side)),
        Some(Remedy::FixCredentials { registry, .. }) => format!(
            "check the credentials for {registry} in the Docker config (--docker-config, $DOCKER_CONFIG or ~/.docker/config.json)"
        ),
        Some(Remedy::CheckReachable(side)) => format!(
            "check that the registry is running and the address is right; a plain-HTTP registry off loopback needs --{}-insecure",
            flag(side)
        ),
        Some(Remedy::WaitAndRetry) => "wait and try again later".to_string(),
        Some(Remedy::CheckSource) => "check the source reference and its tag".to_string(),
        Some(Remedy::FixDockerConfig) => "fix the Docker config file".to_string(),
        Some(Remedy::CheckProxy { side, origin }) => match &origin {
            ProxyOrigin::Endpoint => format!(
                "check that the proxy given with --{}-proxy is running and its address is right",
                flag(side)
            ),
            ProxyOrigin::Environment(_) => format!(
                "check that the proxy in {} is running and its address is right, or list the registry in NO_PROXY to reach it directly",
                proxy_setting(side, &origin)
            ),
        },
        Some(Remedy::AllowAtProxy { side, origin }) => format!(
            "the proxy's rules do not allow this registry: have it allowed there (CONNECT to its host and port), or reach it another way ({})",
            match origin {
                ProxyOrigin::Endpoint => format!("another --{}-proxy", flag(side)),
                ProxyOrigin::Environment(_) =>
                    "NO_PROXY, or --source-proxy/--destination-proxy".to_string(),
            }
        ),
        Some(Remedy::SetUpCloudIdentity { side, provider }) => format!(
            "set up this machine's or pod's {provider} identity (docs/cloud.md), or leave out --{}-provider to use the Docker config only",
            flag(side)
        ),
        Some(Remedy::FixProxyCredentials { side, origin }) => format!(
            "give the proxy's user name and password in {} as http://USER:PASSWORD@HOST:PORT",
            proxy_setting(side, &origin)
        ),
        None => String::new(),
    };
    let message = if hint.is_empty() || e.to_string().contains(&hint) {
        e.to_string()
    } else {
        format!("{e}; {hint}")
    };
    if e.concerns_referrers() {
        format!(
            "{message}; or copy the bundle without its signatures and attestations with --referrers none"
        )
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_flags_of_the_failing_side() {
        let e = CopyError::Tls {
            side: Side::Destination,
            registry: "r:1".into(),
            detail: "UnknownIssuer".into(),
        };
        let text = with_hint(&e);
        assert!(
            text.contains("--destination-ca-file") && text.contains("--destination-insecure"),
            "{text}"
        );
        assert!(!text.contains('\n'));
        let e = CopyError::DestinationExists {
            reference: "r/x:1".into(),
            existing: "sha256:1".into(),
        };
        assert!(with_hint(&e).contains("--force"));
        let e = CopyError::Registry {
            side: Side::Source,
            registry: "r:1".into(),
            status: Some(500),
            detail: "broken".into(),
        }
        .for_referrer(|| "reading referrer sha256:1".into());
        let text = with_hint(&e);
        assert!(
            text.starts_with("reading referrer sha256:1: source registry r:1")
                && text.ends_with("--referrers none"),
            "{text}"
        );
    }

    #[test]
    fn proxy_hints_name_the_setting_that_gave_the_proxy() {
        let failure = |problem, origin| CopyError::Proxy {
            side: Side::Source,
            registry: "r:1".into(),
            proxy: "http://proxy:3128".into(),
            origin,
            problem,
            detail: "…".into(),
        };
        use bundlecopy_engine::error::ProxyProblem;
        let env = || ProxyOrigin::Environment("https_proxy".into());
        let text = with_hint(&failure(ProxyProblem::AuthenticationFailed, env()));
        assert!(text.contains("$https_proxy"), "{text}");
        let text = with_hint(&failure(
            ProxyProblem::AuthenticationFailed,
            ProxyOrigin::Endpoint,
        ));
        assert!(text.contains("--source-proxy"), "{text}");
        let text = with_hint(&failure(ProxyProblem::Unreachable, env()));
        assert!(text.contains("NO_PROXY"), "{text}");
        let text = with_hint(&failure(ProxyProblem::TunnelRefused, ProxyOrigin::Endpoint));
        assert!(text.contains("CONNECT"), "{text}");
    }

    #[test]
    fn a_missing_cloud_identity_points_at_the_set_up_and_the_flag() {
        let e = CopyError::CloudIdentity {
            side: Side::Destination,
            registry: "1.dkr.ecr.eu-west-1.amazonaws.com".into(),
            provider: "aws".into(),
            detail: "no AWS identity in this pod".into(),
            transient: false,
        };
        assert_eq!(e.kind(), bundlecopy_engine::ErrorKind::AuthenticationFailed);
        let text = with_hint(&e);
        assert!(
            text.contains("docs/cloud.md") && text.contains("--destination-provider"),
            "{text}"
        );
        let unreachable = CopyError::CloudIdentity {
            side: Side::Destination,
            registry: "1.dkr.ecr.eu-west-1.amazonaws.com".into(),
            provider: "aws".into(),
            detail: "the ECR API did not answer".into(),
            transient: true,
        };
        assert_eq!(
            unreachable.kind(),
            bundlecopy_engine::ErrorKind::Unreachable
        );
        assert!(unreachable.is_transient());
    }
}
