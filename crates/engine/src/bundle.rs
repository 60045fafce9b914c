//! CNAB-in-OCI (cnab-to-oci's layout): parse the bundle index, find the config, read bundle.json,
//! check the bundle the way cnab-to-oci's reader does, and compute the relocation map.
//!
//! Everything here is pure: bytes in, typed values or a `BundleError` out.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The Accept header for manifest reads: distribution hides OCI types from `*/*`.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

pub const ANNOTATION_MANIFEST_TYPE: &str = "io.cnab.manifest.type";
pub const ANNOTATION_COMPONENT_NAME: &str = "io.cnab.component.name";

/// Largest manifest we read; bigger ones are refused (registries cap manifests at 4 MiB too).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest bundle.json we read.
pub const MAX_BUNDLE_JSON_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BundleError(pub String);

fn err(message: impl Into<String>) -> BundleError {
    BundleError(message.into())
}

/// Whether a media type names an index (OCI index or Docker manifest list).
pub fn is_index_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// Whether a media type names a manifest (OCI image manifest or Docker schema2 manifest).
pub fn is_manifest_type(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// An OCI content descriptor (only the members a copy needs; others are kept in the raw bytes).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Foreign (non-distributable) layers carry URLs; they are not copied.
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

impl Descriptor {
    fn check(&self, what: &str) -> Result<(), BundleError> {
        crate::digest::validate(&self.digest)
            .map(|_| ())
            .map_err(|e| err(format!("{what}: {e}")))
    }

    pub fn is_foreign(&self) -> bool {
        self.urls.as_ref().is_some_and(|u| !u.is_empty())
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RawIndex {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawManifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// A parsed manifest or index: the children a copy must move before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An index or manifest list: child manifests.
    Index { manifests: Vec<Descriptor> },
    /// An image manifest: its config and layers (blobs).
    Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

impl Parsed {
    /// Parse manifest bytes. `media_type` is what the registry (or the parent descriptor) said;
    /// when it is missing or generic, the JSON decides.
    pub fn parse(bytes: &[u8], media_type: &str) -> Result<Parsed, BundleError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(err(format!(
                "manifest is {} bytes, more than the {} byte limit",
                bytes.len(),
                MAX_MANIFEST_BYTES
            )));
        }
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| err(format!("manifest is not valid JSON: {e}")))?;
        let declared = value
            .get("mediaType")
            .and_then(|m| m.as_str())
            .unwrap_or_default();
        let looks_like_index = is_index_type(media_type)
            || (!is_manifest_type(media_type)
                && (is_index_type(declared) || value.get("manifests").is_some()));
        if looks_like_index {
            let raw: RawIndex = serde_json::from_value(value)
                .map_err(|e| err(format!("index is malformed: {e}")))?;
            if raw.config.is_some() {
                return Err(err("index has a `config` member: it is an image manifest"));
            }
            let manifests = raw.manifests.unwrap_or_default();
            for (i, d) in manifests.iter().enumerate() {
                d.check(&format!("index entry {i}"))?;
            }
            let _ = raw.media_type;
            Ok(Parsed::Index { manifests })
        } else {
            let raw: RawManifest = serde_json::from_value(value)
                .map_err(|e| err(format!("manifest is malformed: {e}")))?;
            raw.config.check("manifest config")?;
            let layers = raw.layers.unwrap_or_default();
            for (i, d) in layers.iter().enumerate() {
                d.check(&format!("manifest layer {i}"))?;
            }
            let _ = raw.media_type;
            Ok(Parsed::Manifest {
                config: raw.config,
                layers,
            })
        }
    }
}

/// The role of an index entry, from its `io.cnab.manifest.type` annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Config,
    Invocation,
    Component(String),
}

/// A bundle index checked against cnab-to-oci's reader rules.
#[derive(Debug, Clone)]
pub struct BundleIndex {
    /// OCI index or Docker manifest list: the registry's Content-Type, or the document's own
    /// `mediaType` when the registry answered a generic type.
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
    pub roles: Vec<Role>,
    /// Position of the first config entry in `manifests`.
    pub config: usize,
}

impl BundleIndex {
    /// Parse the top-level bundle index. `media_type` is the Content-Type the registry reported.
    pub fn parse(bytes: &[u8], media_type: &str) -> Result<BundleIndex, BundleError> {
        let declared_type = if is_index_type(media_type) {
            media_type.to_string()
        } else {
            // Some registries answer a generic type; fall back to the document's own mediaType.
            serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .and_then(|v| {
                    v.get("mediaType")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| media_type.to_string())
        };
        if !is_index_type(&declared_type) {
            return Err(err(format!(
                "its manifest is {} (a bundle is an OCI image index or Docker manifest list)",
                if declared_type.is_empty() {
                    "of unknown type".to_string()
                } else {
                    format!("a {declared_type}")
                }
            )));
        }
        let manifests = match Parsed::parse(bytes, &declared_type)? {
            Parsed::Index { manifests } => manifests,
            Parsed::Manifest { .. } => return Err(err("its index is an image manifest")),
        };
        let mut roles = Vec::with_capacity(manifests.len());
        for (i, d) in manifests.iter().enumerate() {
            if !is_index_type(&d.media_type) && !is_manifest_type(&d.media_type) {
                return Err(err(format!(
                    "index entry {i} ({}) has unsupported media type {:?}",
                    d.digest, d.media_type
                )));
            }
            let role = match d
                .annotations
                .get(ANNOTATION_MANIFEST_TYPE)
                .map(String::as_str)
            {
                Some("config") => Role::Config,
                Some("invocation") => Role::Invocation,
                Some("component") => match d.annotations.get(ANNOTATION_COMPONENT_NAME) {
                    Some(name) if !name.is_empty() => Role::Component(name.clone()),
                    _ => {
                        return Err(err(format!(
                            "index entry {i} ({}) is a component without an {ANNOTATION_COMPONENT_NAME} annotation",
                            d.digest
                        )));
                    }
                },
                Some(other) => {
                    return Err(err(format!(
                        "index entry {i} ({}) has unknown {ANNOTATION_MANIFEST_TYPE} {other:?} \
                         (expected config, invocation or component)",
                        d.digest
                    )));
                }
                None => {
                    return Err(err(format!(
                        "index entry {i} ({}) has no {ANNOTATION_MANIFEST_TYPE} annotation",
                        d.digest
                    )));
                }
            };
            roles.push(role);
        }
        let config = roles
            .iter()
            .position(|r| *r == Role::Config)
            .ok_or_else(|| {
                err(format!(
                    "its index has no entry annotated {ANNOTATION_MANIFEST_TYPE}=config"
                ))
            })?;
        Ok(BundleIndex {
            media_type: declared_type,
            manifests,
            roles,
            config,
        })
    }

    pub fn config_descriptor(&self) -> &Descriptor {
        &self.manifests[self.config]
    }
}

/// The config manifest's bundle.json blob descriptor (any of cnab-to-oci's three config forms).
pub fn bundle_json_descriptor(
    config_manifest: &[u8],
    media_type: &str,
) -> Result<Descriptor, BundleError> {
    match Parsed::parse(config_manifest, media_type)? {
        Parsed::Manifest { config, .. } => Ok(config),
        Parsed::Index { .. } => Err(err("its config entry is an index, not a manifest")),
    }
}

/// What a copy needs from bundle.json.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BundleJson {
    pub name: String,
    pub version: String,
    /// `image` of each invocation image, in order.
    pub invocation_images: Vec<String>,
    /// `images` map: component name → image reference.
    pub images: BTreeMap<String, String>,
}

impl BundleJson {
    pub fn parse(bytes: &[u8]) -> Result<BundleJson, BundleError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| err(format!("bundle.json is not valid JSON: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| err("bundle.json is not a JSON object"))?;
        let text = |key: &str| {
            object
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let mut invocation_images = Vec::new();
        if let Some(list) = object.get("invocationImages").and_then(|v| v.as_array()) {
            for (i, item) in list.iter().enumerate() {
                let image = item.get("image").and_then(|v| v.as_str()).ok_or_else(|| {
                    err(format!(
                        "bundle.json invocationImages[{i}] has no image reference"
                    ))
                })?;
                invocation_images.push(image.to_string());
            }
        }
        let mut images = BTreeMap::new();
        if let Some(map) = object.get("images").and_then(|v| v.as_object()) {
            for (name, item) in map {
                let image = item.get("image").and_then(|v| v.as_str()).ok_or_else(|| {
                    err(format!(
                        "bundle.json images[{name:?}] has no image reference"
                    ))
                })?;
                images.insert(name.clone(), image.to_string());
            }
        }
        Ok(BundleJson {
            name: text("name"),
            version: text("version"),
            invocation_images,
            images,
        })
    }
}

/// One image of the bundle as the index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleImage {
    /// `invocation`, or the component name.
    pub name: String,
    /// The reference bundle.json gives the image.
    pub image: String,
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

/// Match the index's invocation and component entries to bundle.json (cnab-to-oci's
/// `GenerateRelocationMap` rules): the first invocation entry is `invocationImages[0]`; each
/// component entry must name a key of `images`.
pub fn bundle_images(
    index: &BundleIndex,
    bundle: &BundleJson,
) -> Result<Vec<BundleImage>, BundleError> {
    let mut images = Vec::new();
    let mut seen = BTreeSet::new();
    for (d, role) in index.manifests.iter().zip(&index.roles) {
        let (name, image) = match role {
            Role::Config => continue,
            Role::Invocation => {
                let image = bundle.invocation_images.first().ok_or_else(|| {
                    err("the index has an invocation image but bundle.json lists no invocationImages")
                })?;
                ("invocation".to_string(), image.clone())
            }
            Role::Component(name) => {
                let image = bundle.images.get(name).ok_or_else(|| {
                    err(format!(
                        "the index names component {name:?}, which bundle.json's images map does not contain"
                    ))
                })?;
                (name.clone(), image.clone())
            }
        };
        if !seen.insert(name.clone()) {
            continue;
        }
        images.push(BundleImage {
            name,
            image,
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
            size: d.size,
        });
    }
    Ok(images)
}

/// The relocation map: bundle.json image → `repository@digest`.
pub fn relocation_map(images: &[BundleImage], repository: &str) -> BTreeMap<String, String> {
    images
        .iter()
        .map(|i| (i.image.clone(), format!("{repository}@{}", i.digest)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn vectors() -> Option<PathBuf> {
        // The test vectors sit next to the workspace, not in it (crates/engine is two levels down).
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors");
        if dir.is_dir() {
            Some(dir)
        } else {
            eprintln!("skipped: ../shared/vectors does not exist on this machine");
            None
        }
    }

    fn read(dir: &std::path::Path, name: &str) -> Vec<u8> {
        std::fs::read(dir.join(name)).unwrap()
    }

    fn sha(bytes: &[u8]) -> String {
        crate::digest::sha256(bytes)
    }

    #[test]
    fn vector_digests_match_the_readme() {
        let Some(dir) = vectors() else { return };
        let table = [
            (
                "cnab-to-oci.remotes.push_test.expectedBundleManifest.compact.json",
                "00043ca96c3c9470fc0f647c67613ddf500941556d1ecc14d75bc9b2834f66c3",
                1360,
            ),
            (
                "cnab-to-oci.remotes.pull_test.ExamplePull.bundle.canonical.json",
                "dbe3480b9cb300f389e8d02e4a682f9107772468feb6845f912dc8deed6d76fd",
                1596,
            ),
            (
                "cnab-to-oci.remotes.push_test.expectedConfigManifest.docker-schema2-fallback.json",
                "2e1d4789d0a80f5a28aa8c3e53d4698d6d8c2495af9360d69d6394de50cc13d9",
                522,
            ),
            (
                "derived/config-manifest.cnab-config-mediatype.json",
                "122a5dc186ec285488de9d25e99c96a11d3f7ff71c6e05a06c98e8627472a920",
                189,
            ),
            (
                "derived/config-manifest.oci-image-config-fallback.json",
                "a8226bab57a5c40e38c7fc0472085645b1282d7e83af317cc38232ad84df8a74",
                194,
            ),
            (
                "derived/index.docker-manifest-list-fallback.json",
                "a519b50f6162e2c7191b3fbfeb8bc5a920eb1d40012317f627aa5d5187314db1",
                1432,
            ),
            (
                "derived/cnab-spec-helloworld.bundle.canonical.json",
                "e91b9dfcbbb3b88bac94726f276b89de46e4460b55f6e6d6f876e666b150ec5b",
                498,
            ),
            (
                "derived/cnab-spec-helloworld.config-manifest.json",
                "6ec4fd695cace0e3d4305838fdf9fcd646798d3fea42b3abb28c117f903a6a5f",
                188,
            ),
            (
                "derived/cnab-spec-helloworld.index.compact.json",
                "55c6da48fe8553696bf3e2c940ea667e2d2fda3d55614a19dbd7d084780c0807",
                926,
            ),
        ];
        for (file, digest, size) in table {
            let bytes = read(&dir, file);
            assert_eq!(bytes.len(), size, "{file}");
            assert_eq!(sha(&bytes), format!("sha256:{digest}"), "{file}");
        }
    }

    /// The verified chain: index → config manifest → bundle.json, each digest naming the next.
    #[test]
    fn cnab_to_oci_test_bundle_chain() {
        let Some(dir) = vectors() else { return };
        let index_bytes = read(
            &dir,
            "cnab-to-oci.remotes.push_test.expectedBundleManifest.compact.json",
        );
        let index = BundleIndex::parse(&index_bytes, OCI_INDEX).unwrap();
        assert_eq!(index.manifests.len(), 4);
        let config = index.config_descriptor();
        let config_bytes = read(&dir, "derived/config-manifest.cnab-config-mediatype.json");
        assert_eq!(config.digest, sha(&config_bytes));
        assert_eq!(config.size as usize, config_bytes.len());
        let blob = bundle_json_descriptor(&config_bytes, &config.media_type).unwrap();
        let bundle_bytes = read(
            &dir,
            "cnab-to-oci.remotes.pull_test.ExamplePull.bundle.canonical.json",
        );
        assert_eq!(blob.digest, sha(&bundle_bytes));
        assert_eq!(blob.media_type, "application/vnd.cnab.config.v1+json");
        let bundle = BundleJson::parse(&bundle_bytes).unwrap();
        assert_eq!(bundle.name, "my-app");
        assert_eq!(bundle.version, "0.1.0");
        let images = bundle_images(&index, &bundle).unwrap();
        let names: Vec<_> = images.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["invocation", "another-image", "image-1"]);
        assert_eq!(images[0].media_type, DOCKER_MANIFEST);
        let map = relocation_map(&images, "my.registry/namespace/my-app");
        assert_eq!(
            map["my.registry/namespace/another-image"],
            "my.registry/namespace/my-app@sha256:d59a1aa7866258751a261bae525a1842c7ff0662d4f34a355d5f36826abc0342"
        );
    }

    #[test]
    fn relocation_map_matches_cnab_to_oci_pull_example() {
        let Some(dir) = vectors() else { return };
        let index = BundleIndex::parse(
            &read(&dir, "cnab-to-oci.remotes.pull_test.bufBundleManifest.json"),
            OCI_INDEX,
        )
        .unwrap();
        // The pull example's bundle: the canonical test bundle (its invocation image is my-app-invoc).
        let bundle = BundleJson::parse(&read(
            &dir,
            "cnab-to-oci.remotes.pull_test.ExamplePull.bundle.canonical.json",
        ))
        .unwrap();
        let images = bundle_images(&index, &bundle).unwrap();
        let map = relocation_map(&images, "my.registry/namespace/my-app");
        let expected: BTreeMap<String, String> = serde_json::from_slice(&read(
            &dir,
            "cnab-to-oci.remotes.pull_test.ExamplePull.relocation-map.json",
        ))
        .unwrap();
        assert_eq!(map, expected);
    }

    #[test]
    fn fallback_forms_parse() {
        let Some(dir) = vectors() else { return };
        // Docker manifest list index, mediaType last.
        let list = read(&dir, "derived/index.docker-manifest-list-fallback.json");
        let index = BundleIndex::parse(&list, DOCKER_MANIFEST_LIST).unwrap();
        assert_eq!(index.manifests.len(), 4);
        // A registry that reports a generic type: the document's mediaType decides.
        assert!(BundleIndex::parse(&list, "application/json").is_ok());
        // Docker schema2 config manifest: config blob also listed as a layer.
        let schema2 = read(
            &dir,
            "cnab-to-oci.remotes.push_test.expectedConfigManifest.docker-schema2-fallback.json",
        );
        let config = bundle_json_descriptor(&schema2, DOCKER_MANIFEST).unwrap();
        assert_eq!(
            config.digest,
            "sha256:dbe3480b9cb300f389e8d02e4a682f9107772468feb6845f912dc8deed6d76fd"
        );
        let Parsed::Manifest { layers, .. } = Parsed::parse(&schema2, DOCKER_MANIFEST).unwrap()
        else {
            panic!("schema2 config manifest parsed as an index")
        };
        assert_eq!(layers.len(), 1);
        // `"layers": null` is accepted.
        let oci_fallback = read(
            &dir,
            "derived/config-manifest.oci-image-config-fallback.json",
        );
        assert_eq!(
            bundle_json_descriptor(&oci_fallback, OCI_MANIFEST)
                .unwrap()
                .media_type,
            "application/vnd.oci.image.config.v1+json"
        );
        let pull_docker = read(
            &dir,
            "cnab-to-oci.remotes.pull_test.TestPull.dockerConfigManifest.json",
        );
        assert!(bundle_json_descriptor(&pull_docker, DOCKER_MANIFEST).is_ok());
    }

    #[test]
    fn every_index_vector_parses_as_a_bundle() {
        let Some(dir) = vectors() else { return };
        for file in [
            "cnab-spec.201.example-index.json",
            "derived/cnab-spec-helloworld.index.compact.json",
            "porter.docs.oci-bundle-format.legacy-index.json",
            "cnab-to-oci.README.example-index.json",
            "cnab-to-oci.remotes.push_test.expectedBundleManifest.pretty.json",
        ] {
            let index = BundleIndex::parse(&read(&dir, file), OCI_INDEX)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(index.roles[index.config], Role::Config, "{file}");
        }
        for file in [
            "cnab-spec.201.example-config-manifest.json",
            "cnab-to-oci.README.example-config-manifest.json",
            "porter.docs.oci-bundle-format.legacy-config-manifest.json",
            "cnab-to-oci.remotes.pull_test.bundleConfigManifestDescriptor.json",
        ] {
            bundle_json_descriptor(&read(&dir, file), OCI_MANIFEST)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        for file in [
            "cnab-spec.201.example-bundle.noncanonical.json",
            "cnab-to-oci.examples.helloworld-cnab.bundle.json",
            "cnab-to-oci.examples.helloworld-cnab.complete.bundle.json",
            "porter.pkg.cnab.config-adapter.testdata.mybuns-depsv1.bundle.json",
            "derived/cnab-spec-helloworld.bundle.canonical.json",
        ] {
            let bundle =
                BundleJson::parse(&read(&dir, file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!bundle.name.is_empty(), "{file}");
        }
        // The pre-1.0 layout has no name; it still parses.
        assert!(
            BundleJson::parse(&read(
                &dir,
                "porter.docs.oci-bundle-format.legacy-config-blob.json"
            ))
            .is_ok()
        );
        let porter = BundleJson::parse(&read(
            &dir,
            "porter.pkg.cnab.config-adapter.testdata.mybuns-depsv1.bundle.json",
        ))
        .unwrap();
        assert_eq!(porter.invocation_images.len(), 1);
    }

    fn index_with(entries: &str) -> Vec<u8> {
        format!(r#"{{"schemaVersion":2,"manifests":[{entries}]}}"#).into_bytes()
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn entry(media_type: &str, annotations: &str) -> String {
        format!(
            r#"{{"mediaType":"{media_type}","digest":"{D1}","size":10,"annotations":{{{annotations}}}}}"#
        )
    }

    #[test]
    fn reader_rules_refuse_what_cnab_to_oci_refuses() {
        let cases = [
            (
                index_with(&entry(
                    OCI_MANIFEST,
                    r#""io.cnab.manifest.type":"invocation""#,
                )),
                "config",
            ),
            (
                index_with(&entry(OCI_MANIFEST, "")),
                "no io.cnab.manifest.type",
            ),
            (
                index_with(&entry("text/plain", r#""io.cnab.manifest.type":"config""#)),
                "unsupported media type",
            ),
            (
                index_with(&entry(OCI_MANIFEST, r#""io.cnab.manifest.type":"sidecar""#)),
                "unknown",
            ),
            (
                index_with(&format!(
                    "{},{}",
                    entry(OCI_MANIFEST, r#""io.cnab.manifest.type":"config""#),
                    entry(OCI_MANIFEST, r#""io.cnab.manifest.type":"component""#)
                )),
                "without an io.cnab.component.name",
            ),
            (b"{not json".to_vec(), "not valid JSON"),
            (
                index_with(
                    r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../x","size":1,"annotations":{"io.cnab.manifest.type":"config"}}"#,
                ),
                "invalid digest",
            ),
        ];
        for (bytes, expected) in cases {
            let e = BundleIndex::parse(&bytes, OCI_INDEX).unwrap_err();
            assert!(e.0.contains(expected), "{e} should mention {expected:?}");
        }
        let plain_manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{D1}","size":1}},"layers":[]}}"#
        );
        let e = BundleIndex::parse(plain_manifest.as_bytes(), OCI_MANIFEST).unwrap_err();
        assert!(
            e.0.contains("is a application/vnd.oci.image.manifest.v1+json"),
            "{e}"
        );
    }

    #[test]
    fn component_missing_from_bundle_json_is_refused() {
        let bytes = index_with(&format!(
            "{},{}",
            entry(OCI_MANIFEST, r#""io.cnab.manifest.type":"config""#),
            entry(
                OCI_MANIFEST,
                r#""io.cnab.manifest.type":"component","io.cnab.component.name":"db""#
            )
        ));
        let index = BundleIndex::parse(&bytes, OCI_INDEX).unwrap();
        let bundle =
            BundleJson::parse(br#"{"name":"b","version":"1","invocationImages":[]}"#).unwrap();
        let e = bundle_images(&index, &bundle).unwrap_err();
        assert!(e.0.contains("\"db\""), "{e}");
    }

    #[test]
    fn oversized_and_deeply_nested_manifests_are_refused() {
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(
            Parsed::parse(&big, OCI_MANIFEST)
                .unwrap_err()
                .0
                .contains("limit")
        );
        let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(
            Parsed::parse(nested.as_bytes(), OCI_MANIFEST)
                .unwrap_err()
                .0
                .contains("not valid JSON")
        );
    }

    #[test]
    fn digests_are_validated() {
        assert!(crate::digest::validate(D1).is_ok());
        for bad in [
            "",
            "sha256:",
            "sha256:ABC",
            "md5:1234",
            "sha256:../x",
            &format!("{D1}0"),
        ] {
            assert!(crate::digest::validate(bad).is_err(), "{bad}");
        }
    }

    /// JSON shaped like bundle indexes, manifests and bundle.json: the member names and values
    /// the parsers look for, mixed with arbitrary ones, nested a few levels.
    fn bundle_shaped_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::from(D1)),
            Just(serde_json::Value::from(OCI_INDEX)),
            Just(serde_json::Value::from(OCI_MANIFEST)),
            Just(serde_json::Value::from(DOCKER_MANIFEST_LIST)),
            Just(serde_json::Value::from("config")),
            Just(serde_json::Value::from("invocation")),
            Just(serde_json::Value::from("component")),
            "[a-z0-9:./-]{0,16}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("mediaType".to_string()),
                        Just("manifests".to_string()),
                        Just("config".to_string()),
                        Just("layers".to_string()),
                        Just("digest".to_string()),
                        Just("size".to_string()),
                        Just("annotations".to_string()),
                        Just("urls".to_string()),
                        Just(ANNOTATION_MANIFEST_TYPE.to_string()),
                        Just(ANNOTATION_COMPONENT_NAME.to_string()),
                        Just("invocationImages".to_string()),
                        Just("images".to_string()),
                        Just("image".to_string()),
                        Just("name".to_string()),
                        "[a-zA-Z]{0,8}",
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    const MEDIA_TYPES: [&str; 6] = [
        OCI_INDEX,
        DOCKER_MANIFEST_LIST,
        OCI_MANIFEST,
        DOCKER_MANIFEST,
        "application/json",
        "",
    ];

    /// Every parser over one document; none may panic, whatever the input.
    fn parse_everything(bytes: &[u8], media_type: &str) {
        let _ = Parsed::parse(bytes, media_type);
        let _ = bundle_json_descriptor(bytes, media_type);
        let bundle = BundleJson::parse(bytes);
        if let Ok(index) = BundleIndex::parse(bytes, media_type) {
            assert_eq!(index.manifests.len(), index.roles.len());
            assert_eq!(index.roles[index.config], Role::Config);
            let bundle = bundle.unwrap_or_default();
            if let Ok(images) = bundle_images(&index, &bundle) {
                let _ = relocation_map(&images, "registry.example.com/app");
            }
        }
    }

    proptest::proptest! {
        // Few cases: CI runs these on every change; the fuzz targets in fuzz/ go deep.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        #[test]
        fn parsers_never_panic_on_arbitrary_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            media_type in 0..MEDIA_TYPES.len(),
        ) {
            parse_everything(&bytes, MEDIA_TYPES[media_type]);
        }

        #[test]
        fn parsers_never_panic_on_bundle_shaped_json(
            document in bundle_shaped_json(),
            media_type in 0..MEDIA_TYPES.len(),
        ) {
            parse_everything(document.to_string().as_bytes(), MEDIA_TYPES[media_type]);
        }
    }
}
