//! The `BundleMirror` custom resource: keep every matching version of a repository's bundles
//! copied, one owned BundleCopy per selected tag. Doc comments on fields become
//! `kubectl explain` text, so they are written for users.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::operator::crd::{
    CaSecretReference, CloudProvider, Endpoint, Referrers, SecretReference,
};

/// Label on every BundleCopy a mirror owns: the mirror's name.
pub const MIRROR_LABEL: &str = "bundlecopy.dev/mirror";
/// Annotation on every BundleCopy a mirror owns: the source tag it copies (tags may hold
/// characters a label value may not).
pub const TAG_ANNOTATION: &str = "bundlecopy.dev/tag";
/// The field manager of the mirror controller's writes (children and status).
pub const MIRROR_FIELD_MANAGER: &str = "bundlecopy-mirror";

/// A CEL rule on `interval`: a Go-style duration of at least one minute.
const INTERVAL_IS_A_DURATION: &str = "duration(self) >= duration('1m')";
/// A CEL rule on a repository: no tag (`:tag` in the last path segment) and no digest.
const NO_TAG_OR_DIGEST: &str =
    "!self.contains('@') && !self.matches(':[^/]*$') || self.matches('^[^/]+:[0-9]+$')";

/// Keep every version of a Porter bundle that matches a selection copied from one repository to
/// another registry: the mirror lists the source repository's tags every `interval`, chooses
/// some, and owns one BundleCopy per chosen tag.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "bundlecopy.dev",
    version = "v1alpha1",
    kind = "BundleMirror",
    plural = "bundlemirrors",
    shortname = "bmirror",
    namespaced,
    status = "BundleMirrorStatus",
    derive = "PartialEq",
    doc = "BundleMirror keeps every matching version of a Porter bundle repository copied to another registry, through one BundleCopy per selected tag.",
    printcolumn(
        name = "Source",
        type_ = "string",
        json_path = ".spec.source.repository"
    ),
    printcolumn(
        name = "Destination",
        type_ = "string",
        json_path = ".spec.destination.reference"
    ),
    printcolumn(name = "Selected", type_ = "integer", json_path = ".status.selected"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.ready"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BundleMirrorSpec {
    /// The repository whose tags are mirrored, and how to reach it.
    pub source: MirrorSource,

    /// Where the bundles go: a registry (`registry.internal:5000`) or a registry and repository
    /// prefix (`registry.internal:5000/vendor`); the source's last path segment and each tag are
    /// appended, as for a BundleCopy. A tag or digest here is refused.
    #[x_kube(validation = Rule::new("!self.reference.contains('@') && (!self.reference.matches(':[^/]*$') || self.reference.matches('^[^/]+:[0-9]+$'))").message(
        "the destination of a mirror is a registry or a registry and repository prefix, without a tag or digest"
    ))]
    pub destination: Endpoint,

    /// Which tags to copy. At least one of `semver`, `include`, `exclude` or `latest`.
    pub tags: TagSelector,

    /// How often the source repository's tags are listed again (a duration such as `10m` or
    /// `1h`, at least `1m`). Each BundleCopy also re-resolves its tag this often.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(INTERVAL_IS_A_DURATION).message(
        "interval must be a duration of at least 1m, such as 10m, 1h or 1h30m"
    ))]
    pub interval: String,

    /// Stop mirroring: no tags are listed and every BundleCopy of this mirror is suspended.
    #[serde(default)]
    pub suspend: bool,

    /// Overwrite destination tags that hold a different bundle (passed to every BundleCopy).
    #[serde(default)]
    pub force: bool,

    /// Whether each bundle's signatures, attestations and SBOMs travel with it (passed to every
    /// BundleCopy): `All` (the default) or `None`.
    #[serde(default, skip_serializing_if = "Referrers::is_all")]
    pub referrers: Referrers,

    /// With `referrers: All`, copy only referrers of these artifact types (passed to every
    /// BundleCopy). Empty: every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 255)))]
    pub artifact_types: Vec<String>,
}

/// The source of a mirror: a repository without a tag, and how to reach its registry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirrorSource {
    /// A repository in the Docker grammar without tag or digest, e.g.
    /// `ghcr.io/getporter/examples/porter-hello`. A name without a registry means Docker Hub.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new(NO_TAG_OR_DIGEST).message(
        "the source of a mirror is a repository without a tag or digest, e.g. ghcr.io/org/bundle"
    ))]
    pub repository: String,

    /// Allow plain HTTP or an HTTPS certificate that cannot be verified for this registry. Use
    /// `caSecretRef` instead when you can: it keeps the connection verified.
    #[serde(default)]
    pub insecure: bool,

    /// A Secret in this namespace holding a PEM CA certificate to trust for this registry, in
    /// addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretReference>,

    /// Secrets in this namespace with registry credentials (as for a BundleCopy); they must
    /// allow listing the repository's tags and pulling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<SecretReference>,

    /// A Secret in this namespace naming an HTTP proxy for this registry (as for a
    /// BundleCopy): key `address`, optional keys `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_secret_ref: Option<SecretReference>,

    /// Where registry credentials come from besides `credentials` (as for a BundleCopy):
    /// `generic`, `aws`, `azure` or `gcp`.
    #[serde(default, skip_serializing_if = "CloudProvider::is_generic")]
    pub provider: CloudProvider,
}

impl MirrorSource {
    /// The BundleCopy endpoint reading `reference` (the repository, or one tag of it) with this
    /// source's access settings: the one place they are carried over.
    pub fn endpoint(&self, reference: String) -> Endpoint {
        Endpoint {
            reference,
            insecure: self.insecure,
            ca_secret_ref: self.ca_secret_ref.clone(),
            credentials: self.credentials.clone(),
            proxy_secret_ref: self.proxy_secret_ref.clone(),
            provider: self.provider,
        }
    }
}

/// Which tags of the source repository a mirror copies. A tag is chosen when it matches
/// `include`, does not match `exclude`, and names a version in `semver`; then `latest` keeps
/// the highest versions.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TagSelector {
    /// A semver range, e.g. `>=1.0.0 <2.0.0` or `^1.2`. Tags such as `1.2.3` and `v1.2.3` name
    /// versions; pre-releases are chosen only when the range names a pre-release of the same
    /// version (`>=1.2.0-rc.0`). Tags that are not versions are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub semver: Option<String>,

    /// A regular expression a tag must match (anywhere in the tag; anchor with `^…$`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub include: Option<String>,

    /// A regular expression; tags that match it are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub exclude: Option<String>,

    /// Keep only this many of the highest versions (tags that are not versions are left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub latest: Option<u32>,
}

impl TagSelector {
    /// The selection as the engine's filter.
    pub fn filter(&self) -> bundlecopy_engine::tags::TagFilter {
        bundlecopy_engine::tags::TagFilter {
            semver: self.semver.clone(),
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            latest: self.latest,
        }
    }
}

/// What the mirror observed: the tags it chose and how their copies stand.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleMirrorStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready (every selected tag's BundleCopy is Ready), Reconciling (copies are running) and
    /// Stalled (only a change of the spec or a Secret can help).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// How many tags the selection chose.
    #[serde(default)]
    pub selected: i64,

    /// How many of their BundleCopies are Ready.
    #[serde(default)]
    pub ready: i64,

    /// How many of their BundleCopies failed (Ready False for a reason other than a copy in
    /// progress).
    #[serde(default)]
    pub failed: i64,

    /// Each selected tag, highest version first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<MirroredTag>,

    /// When the source repository's tags were last listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
}

/// One selected tag and its BundleCopy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirroredTag {
    /// The source tag.
    pub tag: String,

    /// The BundleCopy that copies it.
    pub child: String,

    /// The bundle digest its BundleCopy copied, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,

    /// Its BundleCopy's Ready condition: `True`, `False` or `Unknown`.
    pub ready: String,

    /// Its BundleCopy's Ready reason, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl BundleMirrorStatus {
    /// The condition of type `type_`, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// The CustomResourceDefinition of `BundleMirror` as YAML, as committed in
/// `crds/bundlemirrors.bundlecopy.dev.yaml`.
pub fn crd_yaml() -> String {
    crate::operator::crd::yaml_of(&crate::operator::crd::reflowed::<BundleMirror>())
}
