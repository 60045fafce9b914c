//! The `BundleCopy` custom resource (docs/operator.md, "The resource"): spec, status, condition and reason
//! names. Doc comments on fields become `kubectl explain` text, so they are written for users.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "bundlecopy.dev";
/// API version of the resource.
pub const VERSION: &str = "v1alpha1";
/// The field manager of every status write (server-side apply).
pub const FIELD_MANAGER: &str = "bundlecopy-operator";
/// Key of the CA certificate in a `caSecretRef` Secret when none is given.
pub const DEFAULT_CA_KEY: &str = "ca.crt";

/// Condition types set on every BundleCopy.
pub mod condition_types {
    /// True when the destination holds the source bundle.
    pub const READY: &str = "Ready";
    /// True while a copy runs.
    pub const RECONCILING: &str = "Reconciling";
    /// True when only a change of spec or Secret can help.
    pub const STALLED: &str = "Stalled";
}

/// A CEL rule on the spec: a digest source gives the destination no tag to derive, so the
/// destination must name one (`:tag` in its last path segment).
const DIGEST_SOURCE_NEEDS_TAGGED_DESTINATION: &str = "!self.source.reference.contains('@') || self.destination.reference.matches('/[^/@:]+:[^/@:]+$')";

/// A CEL rule on `interval`: a Go-style duration of at least one minute.
const INTERVAL_IS_A_DURATION: &str = "duration(self) >= duration('1m')";

/// Copy a Porter (CNAB) bundle — the bundle index, bundle.json, the invocation image and every
/// component image — from one OCI registry to another, like `porter copy`, and keep it copied.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
// Each printcolumn(...) repeats `type_`, which this lint mistakes for a duplicate attribute.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "bundlecopy.dev",
    version = "v1alpha1",
    kind = "BundleCopy",
    plural = "bundlecopies",
    shortname = "bcopy",
    namespaced,
    status = "BundleCopyStatus",
    derive = "PartialEq",
    doc = "BundleCopy copies a Porter (CNAB) bundle from one OCI registry to another and reports what it copied in its status.",
    printcolumn(
        name = "Source",
        type_ = "string",
        json_path = ".spec.source.reference"
    ),
    printcolumn(
        name = "Destination",
        type_ = "string",
        json_path = ".status.destination"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Digest", type_ = "string", json_path = ".status.shortDigest"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(DIGEST_SOURCE_NEEDS_TAGGED_DESTINATION).message(
    "a source given by digest (name@sha256:...) needs a destination with a tag, e.g. registry.example.com/team/hello:v1"
))]
#[serde(rename_all = "camelCase")]
pub struct BundleCopySpec {
    /// Where the bundle is read from. `reference` names the bundle by tag
    /// (`ghcr.io/getporter/examples/porter-hello:v0.2.0`) or by digest (`...@sha256:...`).
    pub source: Endpoint,

    /// Where the bundle is written. `reference` is a registry (`registry.internal:5000`), a
    /// registry and repository prefix (`registry.internal:5000/porter`) — the source's last path
    /// segment and tag are then appended, as `porter copy` does — or a full reference with a tag.
    pub destination: Endpoint,

    /// Overwrite a destination tag that already holds a different bundle. Without it the copy
    /// stops with reason DestinationExists.
    #[serde(default)]
    pub force: bool,

    /// Re-resolve the source tag this often (a duration such as `10m` or `1h`, at least `1m`) and
    /// copy again when it moved. Without it the bundle is copied once per change of this spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(INTERVAL_IS_A_DURATION).message(
        "interval must be a duration of at least 1m, such as 10m, 1h or 1h30m"
    ))]
    pub interval: Option<String>,

    /// Stop copying. The resource reports Ready False with reason Suspended and the controller
    /// contacts no registry until this is false again.
    #[serde(default)]
    pub suspend: bool,

    /// Whether the bundle's signatures, attestations and SBOMs travel with it: `All` (the
    /// default) copies every referrer of every manifest of the bundle — found through the OCI
    /// referrers API, the `sha256-<hex>` tag schema or cosign's `.sig`, `.att` and `.sbom` tags —
    /// and their own referrers; `None` copies the bundle alone. With `interval`, referrers added
    /// at the source later are copied at the next check.
    #[serde(default, skip_serializing_if = "Referrers::is_all")]
    pub referrers: Referrers,

    /// With `referrers: All`, copy only referrers of these artifact types (e.g.
    /// `application/vnd.cncf.notary.signature`); a referrer left out takes its own referrers
    /// with it. Empty: every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 255)))]
    pub artifact_types: Vec<String>,
}

/// Which referrers (signatures, attestations, SBOMs) travel with the bundle.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Referrers {
    /// Every referrer, or those of `artifactTypes`.
    #[default]
    All,
    /// None: the bundle alone.
    None,
}

impl Referrers {
    pub fn is_all(&self) -> bool {
        *self == Referrers::All
    }

    /// What the engine is asked to copy.
    pub fn selection(self, artifact_types: &[String]) -> bundlecopy_engine::ReferrerSelection {
        bundlecopy_engine::ReferrerSelection {
            copy: self == Referrers::All,
            artifact_types: artifact_types.to_vec(),
        }
    }
}

/// One side of a copy: a registry reference and how to reach it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// An OCI reference in the Docker grammar, e.g. `ghcr.io/org/bundle:v1`,
    /// `registry.internal:5000/porter` or `localhost:5000/hello@sha256:...`. A name without a
    /// registry means Docker Hub.
    #[schemars(length(min = 1, max = 1024))]
    pub reference: String,

    /// Allow plain HTTP or an HTTPS certificate that cannot be verified for this registry. Use
    /// `caSecretRef` instead when you can: it keeps the connection verified.
    #[serde(default)]
    pub insecure: bool,

    /// A Secret in this namespace holding a PEM CA certificate to trust for this registry, in
    /// addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretReference>,

    /// Secrets in this namespace with registry credentials, of type
    /// `kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg` (as made by
    /// `kubectl create secret docker-registry`). When several match a registry the most specific
    /// entry wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<SecretReference>,

    /// A Secret in this namespace naming an HTTP proxy for every request to this registry (and
    /// its token server): key `address` (`http://proxy.example:3128`, or `https://` for TLS to
    /// the proxy), optional keys `username` and `password`. Without it the controller's
    /// HTTPS_PROXY, HTTP_PROXY and NO_PROXY environment applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_secret_ref: Option<SecretReference>,

    /// Where registry credentials come from besides `credentials`: `generic` (only the Secrets
    /// in `credentials`), or the controller pod's cloud identity, tried first: `aws` (ECR, with
    /// IRSA or EKS Pod Identity), `azure` (ACR, with Azure Workload Identity) or `gcp` (Artifact
    /// Registry and gcr.io, with GKE Workload Identity). docs/cloud.md sets each up.
    #[serde(default, skip_serializing_if = "CloudProvider::is_generic")]
    pub provider: CloudProvider,
}

/// Where registry credentials come from besides `credentials`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CloudProvider {
    #[default]
    Generic,
    Aws,
    Azure,
    Gcp,
}

impl CloudProvider {
    pub fn is_generic(&self) -> bool {
        *self == CloudProvider::Generic
    }

    /// The engine's name for it.
    pub fn engine(self) -> bundlecopy_engine::Provider {
        match self {
            CloudProvider::Generic => bundlecopy_engine::Provider::Generic,
            CloudProvider::Aws => bundlecopy_engine::Provider::Aws,
            CloudProvider::Azure => bundlecopy_engine::Provider::Azure,
            CloudProvider::Gcp => bundlecopy_engine::Provider::Gcp,
        }
    }
}

/// A Secret in the resource's namespace, by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key of a Secret in the resource's namespace that holds PEM CA certificates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct CaSecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key in the Secret's data that holds the PEM certificates.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    DEFAULT_CA_KEY.to_string()
}

/// What the controller observed and did. Copy facts (digests, bundle, images, progress,
/// lastCopyTime) describe the last successful copy to `destination`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleCopyStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready (the destination holds the bundle), Reconciling (a copy is running) and Stalled (only
    /// a change of spec or Secret can help). Each carries the generation it describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Digest of the source bundle index that was copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<String>,

    /// The resolved destination reference (registry/repository:tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,

    /// Digest of the bundle index at the destination; always equal to sourceDigest, since bytes
    /// are never rewritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_digest: Option<String>,

    /// The first 12 hex digits of destinationDigest, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_digest: Option<String>,

    /// Name and version from the bundle's bundle.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleIdentity>,

    /// The relocation map: where each image of bundle.json now lives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<RelocatedImage>,

    /// The signatures, attestations and SBOMs copied with the bundle (with `referrers: All`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrers: Option<ReferrersStatus>,

    /// Blob counts of the running or last copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<CopyProgress>,

    /// When the last copy finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_copy_time: Option<Time>,
}

/// Name and version of a bundle, from its bundle.json.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct BundleIdentity {
    /// The bundle's name.
    pub name: String,
    /// The bundle's version.
    pub version: String,
}

/// One image of bundle.json and where it was copied to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct RelocatedImage {
    /// `invocation` for the invocation image, else the image's key in bundle.json.
    pub name: String,
    /// The image reference bundle.json names.
    pub image: String,
    /// Where the image now lives: `destination-repository@digest`.
    pub relocated: String,
}

/// The referrers the destination holds with the bundle.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ReferrersStatus {
    /// How many there are.
    pub count: i64,
    /// Each of them (the first 100, by subject and digest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ReferrerItem>,
}

/// One signature, attestation or SBOM copied with the bundle.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReferrerItem {
    /// The digest it refers to: a manifest of the bundle, or another referrer.
    pub subject: String,
    /// Its own digest.
    pub digest: String,
    /// What it is, e.g. `application/vnd.cncf.notary.signature`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub artifact_type: String,
    /// How it was found at the source: `ReferrersAPI`, `TagSchema` or `CosignTag`.
    pub found_by: String,
    /// cosign's tag, for those found by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// Blob counts of a copy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyProgress {
    /// Distinct blobs in the bundle.
    pub blobs: i64,
    /// Blobs streamed from the source to the destination.
    pub copied: i64,
    /// Blobs mounted from another repository of the destination registry.
    pub mounted: i64,
    /// Blobs the destination already held.
    pub skipped: i64,
    /// Bytes streamed so far.
    pub bytes: i64,
    /// Bytes of all blobs of the bundle.
    pub total_bytes: i64,
}

impl From<bundlecopy_engine::ProgressSnapshot> for CopyProgress {
    fn from(snapshot: bundlecopy_engine::ProgressSnapshot) -> Self {
        // Kubernetes integers are int64; counts beyond that cannot occur in practice.
        let int = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        CopyProgress {
            blobs: int(snapshot.blobs),
            copied: int(snapshot.copied),
            mounted: int(snapshot.mounted),
            skipped: int(snapshot.skipped),
            bytes: int(snapshot.bytes),
            total_bytes: int(snapshot.total_bytes),
        }
    }
}

impl BundleCopyStatus {
    /// The condition of the given type, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// The CustomResourceDefinition of `BundleCopy`: the schema derived from the types, with each
/// description reflowed (see `reflow`) so that `kubectl explain` prints whole sentences.
pub fn crd() -> CustomResourceDefinition {
    reflowed::<BundleCopy>()
}

/// The CustomResourceDefinition of a kind of this operator, descriptions reflowed.
pub fn reflowed<K: CustomResourceExt>() -> CustomResourceDefinition {
    let generated = K::crd();
    let Ok(mut value) = serde_json::to_value(&generated) else {
        return generated;
    };
    reflow_descriptions(&mut value);
    serde_json::from_value(value).unwrap_or(generated)
}

/// The CustomResourceDefinition of `BundleCopy` as YAML, as committed in
/// `crds/bundlecopies.bundlecopy.dev.yaml`.
pub fn crd_yaml() -> String {
    yaml_of(&crd())
}

/// A CustomResourceDefinition as YAML.
pub fn yaml_of(crd: &CustomResourceDefinition) -> String {
    // Serialising a CRD built from typed structs cannot fail; fall back to an empty document
    // rather than panic if it ever did.
    serde_yaml::to_string(crd).unwrap_or_default()
}

fn reflow_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = reflow(text);
                    }
                    _ => reflow_descriptions(child),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(reflow_descriptions),
        _ => {}
    }
}

/// Doc comments are wrapped at 100 columns; a description keeps line breaks only between
/// paragraphs and before list items (`- `, `* `, `1. `).
fn reflow(text: &str) -> String {
    let is_item = |line: &str| {
        line.starts_with("- ")
            || line.starts_with("* ")
            || line
                .split_once(". ")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    text.split("\n\n")
        .map(|paragraph| {
            let mut joined = String::new();
            for line in paragraph.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if !joined.is_empty() {
                    joined.push(if is_item(line) { '\n' } else { ' ' });
                }
                joined.push_str(line);
            }
            joined
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn schema() -> Value {
        schema_of(crd())
    }

    fn schema_of(crd: CustomResourceDefinition) -> Value {
        let crd = serde_json::to_value(crd).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    /// The schema of every kind of this operator.
    fn every_schema() -> [(&'static str, Value); 2] {
        [
            ("BundleCopy", schema()),
            (
                "BundleMirror",
                schema_of(reflowed::<crate::operator::mirror::api::BundleMirror>()),
            ),
        ]
    }

    #[test]
    fn committed_crd_matches_the_generated_one() {
        let committed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crds/bundlecopies.bundlecopy.dev.yaml"
        ))
        .unwrap_or_default();
        assert!(
            committed == crd_yaml(),
            "crds/bundlecopies.bundlecopy.dev.yaml is out of date; regenerate it with \
             `cargo run -- crd > crds/bundlecopies.bundlecopy.dev.yaml`"
        );
    }

    #[test]
    fn committed_mirror_crd_matches_the_generated_one() {
        let committed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crds/bundlemirrors.bundlecopy.dev.yaml"
        ))
        .unwrap_or_default();
        assert!(
            committed == crate::operator::mirror::api::crd_yaml(),
            "crds/bundlemirrors.bundlecopy.dev.yaml is out of date; regenerate it with `make crd`"
        );
    }

    #[test]
    fn descriptions_are_flowing_paragraphs() {
        assert_eq!(
            reflow("One sentence\nwrapped.\n\nA list:\n- one\n  continued\n- two\n1. three"),
            "One sentence wrapped.\n\nA list:\n- one continued\n- two\n1. three"
        );
        let yaml = crd_yaml();
        assert!(
            yaml.contains("the invocation image and every component image"),
            "the spec's description is one paragraph"
        );
    }

    #[test]
    fn crd_names_and_scope() {
        let crd = crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("bundlecopies.bundlecopy.dev")
        );
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "BundleCopy");
        assert_eq!(crd.spec.names.short_names, Some(vec!["bcopy".to_string()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, VERSION);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["Source", "Destination", "Ready", "Reason", "Digest", "Age"]
        );
    }

    #[test]
    fn cel_rules_are_in_the_schema() {
        let schema = schema();
        let spec_rules = &schema["properties"]["spec"]["x-kubernetes-validations"];
        assert_eq!(
            spec_rules[0]["rule"],
            DIGEST_SOURCE_NEEDS_TAGGED_DESTINATION
        );
        assert!(
            spec_rules[0]["message"]
                .as_str()
                .unwrap()
                .contains("needs a destination with a tag")
        );
        let interval_rules =
            schema["properties"]["spec"]["properties"]["interval"]["x-kubernetes-validations"]
                .to_string();
        assert!(
            interval_rules.contains("duration(self)"),
            "{interval_rules}"
        );
    }

    #[test]
    fn conditions_are_a_map_list_keyed_by_type() {
        let conditions = &schema()["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
        assert_eq!(
            conditions["items"]["required"],
            serde_json::json!(["lastTransitionTime", "message", "reason", "status", "type"])
        );
    }

    /// A structural schema types every node; `x-kubernetes-preserve-unknown-fields` would let
    /// anything through.
    #[test]
    fn schema_is_structural() {
        fn walk(path: &str, node: &Value, problems: &mut Vec<String>) {
            let Some(object) = node.as_object() else {
                return;
            };
            if object.contains_key("x-kubernetes-preserve-unknown-fields") {
                problems.push(format!("{path}: x-kubernetes-preserve-unknown-fields"));
            }
            let is_int_or_string =
                object.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
            if !object.contains_key("type") && !is_int_or_string {
                problems.push(format!("{path}: no type"));
            }
            for key in ["anyOf", "oneOf", "allOf", "not"] {
                if object.contains_key(key) {
                    problems.push(format!("{path}: {key}"));
                }
            }
            if let Some(properties) = object.get("properties").and_then(Value::as_object) {
                for (name, child) in properties {
                    walk(&format!("{path}.{name}"), child, problems);
                }
            }
            if let Some(items) = object.get("items") {
                walk(&format!("{path}[]"), items, problems);
            }
            if let Some(additional) = object.get("additionalProperties") {
                walk(&format!("{path}{{}}"), additional, problems);
            }
        }
        for (kind, schema) in every_schema() {
            let mut problems = Vec::new();
            walk("", &schema, &mut problems);
            assert!(problems.is_empty(), "{kind}: {problems:#?}");
        }
    }

    #[test]
    fn every_field_has_a_description() {
        fn walk(path: &str, node: &Value, missing: &mut Vec<String>) {
            if let Some(properties) = node.get("properties").and_then(Value::as_object) {
                for (name, child) in properties {
                    let child_path = format!("{path}.{name}");
                    // metadata/apiVersion/kind come from Kubernetes; conditions' items from k8s-openapi.
                    let ours =
                        !matches!(child_path.as_str(), ".apiVersion" | ".kind" | ".metadata");
                    if ours
                        && child
                            .get("description")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                    {
                        missing.push(child_path.clone());
                    }
                    if ours && !child_path.starts_with(".status.conditions") {
                        walk(&child_path, child, missing);
                        if let Some(items) = child.get("items") {
                            walk(&format!("{child_path}[]"), items, missing);
                        }
                    }
                }
            }
        }
        for (kind, schema) in every_schema() {
            let mut missing = Vec::new();
            walk("", &schema, &mut missing);
            assert!(
                missing.is_empty(),
                "{kind}: fields without a description: {missing:?}"
            );
        }
    }

    #[test]
    fn spec_defaults_and_round_trip() {
        let spec: BundleCopySpec = serde_json::from_value(serde_json::json!({
            "source": {"reference": "localhost:5001/hello:v1"},
            "destination": {"reference": "localhost:5002/team", "caSecretRef": {"name": "ca"}},
        }))
        .unwrap();
        assert!(!spec.force && !spec.suspend && spec.interval.is_none());
        assert_eq!(
            spec.destination.ca_secret_ref.as_ref().unwrap().key,
            "ca.crt"
        );
        assert!(spec.source.credentials.is_empty());
        let back = serde_json::to_value(&spec).unwrap();
        assert!(back["source"].get("credentials").is_none());
        assert!(back.get("interval").is_none());
    }
}
