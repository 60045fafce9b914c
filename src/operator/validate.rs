//! What the API server cannot check in a spec: the reference grammar, the destination derivation
//! and the interval. Pure.

use std::time::Duration;

use super::crd::BundleCopySpec;
use super::duration::parse_duration;
use bundlecopy_engine::reference::{Reference, derive_destination};

/// Shortest interval honoured, whatever the API server let through.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// A spec that parses: what the rest of the reconcile needs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSpec {
    /// The resolved destination reference (`status.destination`).
    pub destination: String,
    pub source_is_digest: bool,
    pub interval: Option<Duration>,
}

/// Checks what the API server cannot: the reference grammar, destination derivation and the
/// interval. The error is a message for the Ready condition (reason InvalidSpec).
pub fn validate(spec: &BundleCopySpec) -> Result<ValidSpec, String> {
    let source = Reference::parse(&spec.source.reference)
        .map_err(|error| format!("spec.source.reference: {error}"))?;
    let destination = derive_destination(&source, &spec.destination.reference)
        .map_err(|error| format!("spec.destination.reference: {error}"))?;
    if destination.registry() == source.registry()
        && destination.repository() == source.repository()
        && destination.tag().is_some()
        && destination.tag() == source.tag()
    {
        return Err(format!(
            "spec.destination.reference: {destination} is the source itself; copy to another repository or tag"
        ));
    }
    let interval = match spec.interval.as_deref() {
        Some(text) => {
            let interval =
                parse_duration(text).map_err(|error| format!("spec.interval: {error}"))?;
            if interval < MIN_INTERVAL {
                return Err(format!(
                    "spec.interval: {text} is shorter than the minimum of 1m; use 1m or more"
                ));
            }
            Some(interval)
        }
        None => None,
    };
    Ok(ValidSpec {
        destination: destination.to_string(),
        source_is_digest: source.digest().is_some(),
        interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(source: &str, destination: &str, interval: Option<&str>) -> BundleCopySpec {
        serde_json::from_value(serde_json::json!({
            "source": {"reference": source},
            "destination": {"reference": destination},
            "interval": interval,
        }))
        .unwrap()
    }

    #[test]
    fn validation_resolves_the_destination_and_interval() {
        let valid = validate(&spec(
            "localhost:5001/examples/hello:v1",
            "localhost:5002/team",
            Some("10m"),
        ))
        .unwrap();
        assert_eq!(valid.destination, "localhost:5002/team/hello:v1");
        assert!(!valid.source_is_digest);
        assert_eq!(valid.interval, Some(Duration::from_secs(600)));

        let digest = format!("localhost:5001/hello@sha256:{}", "a".repeat(64));
        let valid = validate(&spec(&digest, "localhost:5002/team/hello:v2", None)).unwrap();
        assert!(valid.source_is_digest);
        assert_eq!(valid.destination, "localhost:5002/team/hello:v2");
    }

    #[test]
    fn validation_names_the_field_at_fault() {
        let cases = [
            (
                spec("Not A Reference", "localhost:5002/team", None),
                "spec.source.reference",
            ),
            (
                spec(
                    &format!("localhost:5001/hello@sha256:{}", "a".repeat(64)),
                    "localhost:5002/team",
                    None,
                ),
                "spec.destination.reference",
            ),
            (
                spec("localhost:5001/hello:v1", "localhost:5001/hello:v1", None),
                "is the source itself",
            ),
            (
                spec(
                    "localhost:5001/hello:v1",
                    "localhost:5002/team",
                    Some("soon"),
                ),
                "spec.interval",
            ),
            (
                spec(
                    "localhost:5001/hello:v1",
                    "localhost:5002/team",
                    Some("10s"),
                ),
                "shorter than the minimum",
            ),
        ];
        for (spec, expected) in cases {
            let message = validate(&spec).unwrap_err();
            assert!(
                message.contains(expected),
                "{expected:?} not in {message:?}"
            );
        }
    }
}
