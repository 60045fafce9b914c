//! What to do about a failed copy, phrased with this CLI's flags (the engine says what the remedy
//! is, `CopyError::remedy`; the operator phrases the same remedies in its resource's fields).

use bundlecopy_engine::{CopyError, Remedy, Side};

fn flag(side: Side) -> &'static str {
    match side {
        Side::Source => "source",
        Side::Destination => "destination",
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
        None => String::new(),
    };
    if hint.is_empty() || e.to_string().contains(&hint) {
        e.to_string()
    } else {
        format!("{e}; {hint}")
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
    }
}
