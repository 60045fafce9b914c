//! The CRD's CEL rules, on one table of specs: a CEL interpreter evaluates the rules of the
//! generated CRD (in CI; no API server runs there), the controller's own validation must agree
//! with them, and `e2e_api_server_enforces_the_crd_rules` sends the same table to a real API
//! server as dry-run creates.
//! `cargo test --test integration crd_rules`

use bundlecopy::operator::crd::BundleCopySpec;
use bundlecopy::operator::validate::validate;
use serde_json::{Value, json};

/// One spec and whether the API server admits it (by the CRD's CEL rules).
pub struct RuleCase {
    pub what: String,
    pub spec: Value,
    pub admitted: bool,
    /// The field the API server names when it refuses.
    pub field: &'static str,
    /// The rule's message, when it refuses because the rule is false; a rule that cannot be
    /// evaluated (`duration("banana")`) is refused with the evaluation error instead.
    pub message: Option<&'static str>,
}

const DIGEST_NEEDS_TAG: &str = "needs a destination with a tag";
const INTERVAL_TOO_SHORT: &str = "interval must be a duration of at least 1m";

pub fn rule_cases() -> Vec<RuleCase> {
    let by_digest = format!("registry.example.com/team/hello@sha256:{}", "a".repeat(64));
    let spec = |source: &str, destination: &str| json!({"source": {"reference": source}, "destination": {"reference": destination}});
    let mut cases = Vec::new();
    for (source, destination, admitted) in [
        ("localhost:5000/hello:v1", "localhost:5001/team", true),
        (
            "localhost:5000/hello:v1",
            "localhost:5001/team/hello:v2",
            true,
        ),
        (by_digest.as_str(), "localhost:5001/team/hello:v1", true),
        (by_digest.as_str(), "registry.internal:5000/hello:v1", true),
        (by_digest.as_str(), "localhost:5001/team", false),
        (by_digest.as_str(), "registry.internal:5000/hello", false),
        (
            by_digest.as_str(),
            "registry.internal:5000/hello:v1/more",
            false,
        ),
    ] {
        cases.push(RuleCase {
            what: format!("{source} -> {destination}"),
            spec: spec(source, destination),
            admitted,
            field: "spec",
            message: Some(DIGEST_NEEDS_TAG),
        });
    }
    // (interval, admitted, evaluates: false for what is not a duration at all)
    for (interval, admitted, evaluates) in [
        ("1m", true, true),
        ("10m", true, true),
        ("90s", true, true),
        ("1h30m", true, true),
        ("1.5h", true, true),
        ("24h", true, true),
        ("59s", false, true),
        ("30s", false, true),
        ("0", false, true),
        ("-5m", false, true),
        ("banana", false, false),
        ("10", false, false),
        ("", false, false),
    ] {
        let mut spec = spec("localhost:5000/hello:v1", "localhost:5001/team");
        spec["interval"] = Value::from(interval);
        cases.push(RuleCase {
            what: format!("interval {interval:?}"),
            spec,
            admitted,
            field: "spec.interval",
            message: evaluates.then_some(INTERVAL_TOO_SHORT),
        });
    }
    cases
}

/// `(rule)` of the generated CRD at `spec` and at `spec.interval`, with where each applies.
fn cel_rules() -> Vec<(&'static str, String)> {
    let crd = serde_json::to_value(bundlecopy::operator::crd::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let at = |path: &'static str, schema: &Value| {
        schema["x-kubernetes-validations"]
            .as_array()
            .unwrap_or_else(|| panic!("no CEL rules at {path}"))
            .iter()
            .map(|rule| (path, rule["rule"].as_str().unwrap().to_string()))
            .collect::<Vec<_>>()
    };
    let mut rules = at("spec", spec);
    rules.extend(at("spec.interval", &spec["properties"]["interval"]));
    rules
}

/// Whether every rule holds for `spec`. A rule that fails to evaluate (`duration("banana")`)
/// refuses, as it does in Kubernetes.
fn cel_admits(rules: &[(&str, String)], spec: &Value) -> bool {
    rules.iter().all(|(path, rule)| {
        let target = match *path {
            "spec" => spec.clone(),
            _ => match spec.get("interval") {
                Some(interval) => interval.clone(),
                // Rules of an absent field do not run.
                None => return true,
            },
        };
        let program = cel::Program::compile(rule)
            .unwrap_or_else(|error| panic!("CEL rule {rule:?} does not compile: {error}"));
        let mut context = cel::Context::default();
        context.add_variable("self", target).unwrap();
        matches!(program.execute(&context), Ok(cel::Value::Bool(true)))
    })
}

#[test]
fn crd_rules_admit_exactly_what_the_controller_accepts() {
    let rules = cel_rules();
    assert_eq!(rules.len(), 2, "{rules:?}");
    for case in rule_cases() {
        assert_eq!(
            cel_admits(&rules, &case.spec),
            case.admitted,
            "{}: {rules:?}",
            case.what
        );
        // Nothing the API server admits is refused later by the controller, and nothing it
        // refuses would have been copied.
        let spec: BundleCopySpec = serde_json::from_value(case.spec.clone()).unwrap();
        assert_eq!(validate(&spec).is_ok(), case.admitted, "{}", case.what);
    }
}
