//! The bundle's referrers: signatures, attestations and SBOMs that name one of its manifests as
//! their `subject`, found the three ways registries keep them, and the destination's
//! tag-schema index merged with what is already there. No transport here: discovery reads
//! through `ReferrerSource` (a registry, or an OCI layout, whose `index.json` lists every
//! referrer it holds), so it is tested without a registry, and the merge is pure.
//!
//! The three ways, for every digest of the bundle's closure and then for every referrer found
//! (a signature on an SBOM), up to `MAX_GENERATIONS` deep:
//! - the OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`); a 404 means the registry
//!   has no such API, so it is not asked again;
//! - the referrers tag schema: a tag `sha256-<hex>` holding an image index of the referrers;
//! - cosign's tags `sha256-<hex>.sig`, `.att` and `.sbom` (cosign before v3).
//!
//! Which tags exist comes from one listing of the repository's tags, so a bundle without
//! referrers costs the listing and one referrers-API request, not four per manifest.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::plan::ManifestSource;
use crate::bundle::{OCI_INDEX, is_index_type};
use crate::error::{CopyError, Side};
use crate::registry::{Manifest, Registry};
use crate::settings::ReferrerSelection;

/// Referrers of referrers are followed this deep (1: referrers of the bundle's manifests).
pub const MAX_GENERATIONS: usize = 8;
/// More referrers than this in one bundle is refused rather than copied.
pub const MAX_REFERRERS: usize = 1000;
/// cosign's tag suffixes: signatures, attestations, SBOMs.
pub const COSIGN_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];

/// Where discovery reads referrers from.
pub trait ReferrerSource: ManifestSource {
    /// The referrers API's image index for `digest` (one per page), `None` when the source has
    /// no referrers API.
    fn referrers(
        &self,
        digest: &str,
    ) -> impl Future<Output = Result<Option<Vec<Bytes>>, CopyError>> + Send;
    /// Every tag of the repository.
    fn tags(&self) -> impl Future<Output = Result<Vec<String>, CopyError>> + Send;
    /// How the referrers `referrers` lists are reported as found.
    fn listed_by(&self) -> FoundBy {
        FoundBy::ReferrersApi
    }
}

impl ReferrerSource for Registry {
    fn referrers(
        &self,
        digest: &str,
    ) -> impl Future<Output = Result<Option<Vec<Bytes>>, CopyError>> + Send {
        self.get_referrers(digest)
    }

    fn tags(&self) -> impl Future<Output = Result<Vec<String>, CopyError>> + Send {
        self.list_tags()
    }
}

/// How a referrer was found at the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FoundBy {
    /// The OCI 1.1 referrers API.
    #[serde(rename = "ReferrersAPI")]
    ReferrersApi,
    /// An image index under the tag `sha256-<hex>`.
    TagSchema,
    /// cosign's tag `sha256-<hex>.sig`, `.att` or `.sbom`.
    CosignTag,
    /// An entry of an OCI layout's `index.json` whose manifest names the subject (how layouts
    /// keep referrers; oras reads them so).
    LayoutIndex,
}

impl FoundBy {
    pub fn as_str(self) -> &'static str {
        match self {
            FoundBy::ReferrersApi => "ReferrersAPI",
            FoundBy::TagSchema => "TagSchema",
            FoundBy::CosignTag => "CosignTag",
            FoundBy::LayoutIndex => "LayoutIndex",
        }
    }
}

/// One referrer of the bundle, as reported.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Referrer {
    /// The digest it refers to: a manifest of the bundle, or another referrer.
    pub subject: String,
    pub digest: String,
    /// Its artifact type: the descriptor's or manifest's `artifactType`, else its config's media
    /// type; for cosign's tags, the media type of the first layer when the config is generic.
    pub artifact_type: String,
    pub found_by: FoundBy,
    /// cosign's tag, copied under the same name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// A referrer read from the source, ready to copy.
#[derive(Debug, Clone)]
pub struct FoundReferrer {
    pub referrer: Referrer,
    pub manifest: Manifest,
    /// Its descriptor as the source listed it (referrers API or tag-schema index), for the
    /// destination's tag-schema index; `None` for cosign's tags.
    pub entry: Option<serde_json::Value>,
    /// 1 for referrers of the bundle's manifests, 2 for referrers of those, …
    pub generation: usize,
}

/// One generation of referrers and the closure of their manifests (the referrers are its roots).
pub struct Generation<'a> {
    pub referrers: Vec<&'a FoundReferrer>,
    pub plan: super::plan::Plan,
}

/// What discovery found: the referrers, generation by generation, and the tag-schema indexes
/// the source holds (by subject), which a destination without any index receives unchanged.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub referrers: Vec<FoundReferrer>,
    pub tag_indexes: HashMap<String, Bytes>,
}

impl Discovery {
    /// The reports, in discovery order.
    pub fn reports(&self) -> Vec<Referrer> {
        self.referrers.iter().map(|r| r.referrer.clone()).collect()
    }
}

/// The tag of the referrers tag schema for a digest: `sha256:<hex>` → `sha256-<hex>`.
pub fn schema_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// What the source's referrers API says: unknown until the first answer.
struct ApiState(AtomicU8);

const API_UNKNOWN: u8 = 0;
const API_PRESENT: u8 = 1;
const API_ABSENT: u8 = 2;

/// A referrer listed for a subject, before its manifest is read (or, for a cosign tag, after).
struct Candidate {
    subject: String,
    digest: String,
    found_by: FoundBy,
    artifact_type: Option<String>,
    entry: Option<serde_json::Value>,
    tag: Option<String>,
    manifest: Option<Manifest>,
}

/// Find the referrers of `subjects` (the digests of the bundle's closure), recursively, as
/// `selection` asks. `repository` names the source in messages.
pub async fn discover(
    source: &impl ReferrerSource,
    repository: &str,
    subjects: &[String],
    selection: &ReferrerSelection,
    concurrency: usize,
) -> Result<Discovery, CopyError> {
    let mut discovery = Discovery::default();
    if !selection.copy {
        return Ok(discovery);
    }
    let listing = || format!("listing the tags of {repository} to find its referrers");
    let tags: HashSet<String> = source
        .tags()
        .await
        .map_err(|e| e.for_referrer(listing))?
        .into_iter()
        .filter(|tag| tag.starts_with("sha256-") || tag.starts_with("sha512-"))
        .collect();
    let api = ApiState(AtomicU8::new(API_UNKNOWN));
    let mut seen: HashSet<String> = subjects.iter().cloned().collect();
    let mut frontier: Vec<String> = subjects.to_vec();
    for generation in 1..=MAX_GENERATIONS {
        if frontier.is_empty() {
            break;
        }
        // Until the referrers API has answered once, ask it about one subject alone: a registry
        // without it then costs one 404, not one per subject in flight.
        let mut listed = Vec::new();
        let mut pending = frontier.as_slice();
        if api.0.load(Ordering::Relaxed) == API_UNKNOWN
            && let Some((first, rest)) = frontier.split_first()
        {
            listed.push(list_referrers(source, repository, first, &tags, &api).await?);
            pending = rest;
        }
        // Owned subjects: a closure taking a reference would make rustc unable to prove the
        // controller's reconcile future Send for every lifetime.
        let (tags, api) = (&tags, &api);
        let rest: Vec<Listed> =
            futures_util::stream::iter(pending.iter().cloned().map(|subject| async move {
                list_referrers(source, repository, &subject, tags, api).await
            }))
            .buffered(concurrency.max(1))
            .try_collect()
            .await?;
        listed.extend(rest);
        let mut candidates = Vec::new();
        for Listed {
            candidates: found,
            tag_index,
        } in listed
        {
            if let Some((subject, bytes)) = tag_index {
                discovery.tag_indexes.insert(subject, bytes);
            }
            for candidate in found {
                let wanted = candidate
                    .artifact_type
                    .as_deref()
                    .is_none_or(|t| selection.wants(t));
                if wanted && seen.insert(candidate.digest.clone()) {
                    candidates.push(candidate);
                }
            }
        }
        let read: Vec<FoundReferrer> = futures_util::stream::iter(
            candidates
                .into_iter()
                .map(|candidate| read_referrer(source, repository, candidate, generation)),
        )
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
        frontier.clear();
        for found in read {
            if !selection.wants(&found.referrer.artifact_type) {
                continue;
            }
            frontier.push(found.referrer.digest.clone());
            discovery.referrers.push(found);
        }
        if discovery.referrers.len() > MAX_REFERRERS {
            return Err(CopyError::Referrer {
                what: format!("the bundle in {repository} has more than {MAX_REFERRERS} referrers"),
                cause: Box::new(CopyError::InvalidSpec(
                    "choose the artifact types to copy".to_string(),
                )),
            });
        }
    }
    if !frontier.is_empty() {
        tracing::warn!(
            generations = MAX_GENERATIONS,
            "referrers nested deeper than this are not copied"
        );
    }
    Ok(discovery)
}

/// The referrers listed for one subject, and the source's tag-schema index of it (by subject).
struct Listed {
    candidates: Vec<Candidate>,
    tag_index: Option<(String, Bytes)>,
}

/// The referrers of one subject, the three ways, and the source's tag-schema index of it.
async fn list_referrers(
    source: &impl ReferrerSource,
    repository: &str,
    subject: &str,
    tags: &HashSet<String>,
    api: &ApiState,
) -> Result<Listed, CopyError> {
    let context = |how: &str| format!("reading the referrers of {repository}@{subject} ({how})");
    let mut candidates = Vec::new();
    if api.0.load(Ordering::Relaxed) != API_ABSENT {
        match source
            .referrers(subject)
            .await
            .map_err(|e| e.for_referrer(|| context("referrers API")))?
        {
            Some(pages) => {
                api.0.store(API_PRESENT, Ordering::Relaxed);
                for page in pages {
                    let entries = index_entries(&page).map_err(|detail| {
                        bad_listing(source, &context("referrers API"), &detail)
                    })?;
                    candidates.extend(
                        entries
                            .into_iter()
                            .map(|entry| entry.candidate(subject, source.listed_by())),
                    );
                }
            }
            None => api.0.store(API_ABSENT, Ordering::Relaxed),
        }
    }
    let schema = schema_tag(subject);
    let mut tag_index = None;
    if tags.contains(&schema) {
        let read = source
            .fetch(&schema)
            .await
            .map_err(|e| e.for_referrer(|| context(&format!("tag {schema}"))))?;
        // A registry that resolves `sha256-<hex>` to the digest itself (GitLab) serves the
        // subject, not an index of its referrers.
        if let Some(index) = read.filter(|m| m.digest != subject && is_index_type(&m.media_type)) {
            let entries = index_entries(&index.bytes).map_err(|detail| {
                bad_listing(source, &context(&format!("tag {schema}")), &detail)
            })?;
            candidates.extend(
                entries
                    .into_iter()
                    .map(|entry| entry.candidate(subject, FoundBy::TagSchema)),
            );
            tag_index = Some((subject.to_string(), index.bytes));
        }
    }
    for suffix in COSIGN_SUFFIXES {
        let tag = format!("{schema}.{suffix}");
        if !tags.contains(&tag) {
            continue;
        }
        let Some(manifest) = source
            .fetch(&tag)
            .await
            .map_err(|e| e.for_referrer(|| context(&format!("cosign tag {tag}"))))?
        else {
            continue;
        };
        candidates.push(Candidate {
            subject: subject.to_string(),
            digest: manifest.digest.clone(),
            found_by: FoundBy::CosignTag,
            artifact_type: Some(artifact_type(&manifest, true)),
            entry: None,
            tag: Some(tag),
            manifest: Some(manifest),
        });
    }
    Ok(Listed {
        candidates,
        tag_index,
    })
}

fn bad_listing(source: &impl ManifestSource, what: &str, detail: &str) -> CopyError {
    CopyError::Referrer {
        what: what.to_string(),
        cause: Box::new(CopyError::Registry {
            side: Side::Source,
            registry: source.name().to_string(),
            status: None,
            detail: format!("its list of referrers is not an image index: {detail}"),
        }),
    }
}

/// Read a listed referrer's manifest (a cosign tag's is read already).
async fn read_referrer(
    source: &impl ReferrerSource,
    repository: &str,
    candidate: Candidate,
    generation: usize,
) -> Result<FoundReferrer, CopyError> {
    let what = || {
        format!(
            "reading referrer {} of {repository}@{}",
            candidate.digest, candidate.subject
        )
    };
    let manifest = match candidate.manifest {
        Some(manifest) => manifest,
        None => source
            .fetch(&candidate.digest)
            .await
            .map_err(|e| e.for_referrer(what))?
            .ok_or_else(|| CopyError::Referrer {
                what: what(),
                cause: Box::new(CopyError::Registry {
                    side: Side::Source,
                    registry: source.name().to_string(),
                    status: Some(404),
                    detail: format!(
                        "it is listed as a referrer ({}), but the registry does not have it",
                        candidate.found_by.as_str()
                    ),
                }),
            })?,
    };
    let artifact_type = candidate
        .artifact_type
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| artifact_type(&manifest, false));
    Ok(FoundReferrer {
        referrer: Referrer {
            subject: candidate.subject,
            digest: manifest.digest.clone(),
            artifact_type,
            found_by: candidate.found_by,
            tag: candidate.tag,
        },
        manifest,
        entry: candidate.entry,
        generation,
    })
}

/// One entry of a referrers index.
struct Entry {
    digest: String,
    artifact_type: Option<String>,
    raw: serde_json::Value,
}

impl Entry {
    fn candidate(self, subject: &str, found_by: FoundBy) -> Candidate {
        Candidate {
            subject: subject.to_string(),
            digest: self.digest,
            found_by,
            artifact_type: self.artifact_type,
            entry: Some(self.raw),
            tag: None,
            manifest: None,
        }
    }
}

/// The entries of an image index of referrers, each with a valid digest.
fn index_entries(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let manifests = match value.get("manifests") {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::Array(manifests)) => manifests,
        Some(_) => return Err("its `manifests` is not a list".into()),
    };
    manifests
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let digest = raw
                .get("digest")
                .and_then(|d| d.as_str())
                .ok_or_else(|| format!("entry {i} has no digest"))?;
            crate::digest::validate(digest).map_err(|e| format!("entry {i}: {e}"))?;
            Ok(Entry {
                digest: digest.to_string(),
                artifact_type: raw
                    .get("artifactType")
                    .and_then(|t| t.as_str())
                    .filter(|t| !t.is_empty())
                    .map(str::to_string),
                raw: raw.clone(),
            })
        })
        .collect()
}

/// Config media types that say nothing about what an artifact is.
const GENERIC_CONFIGS: [&str; 3] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.oci.empty.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// A manifest's artifact type: `artifactType`, else its config's media type (the image spec's
/// rule); for cosign's tags, whose config is a generic image config, the first layer's media
/// type (`application/vnd.dev.cosign.simplesigning.v1+json` for a signature).
pub fn artifact_type(manifest: &Manifest, cosign: bool) -> String {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&manifest.bytes) else {
        return String::new();
    };
    let text = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
    };
    if let Some(declared) = text(value.get("artifactType")) {
        return declared;
    }
    let config = text(value.pointer("/config/mediaType"));
    if cosign
        && config
            .as_deref()
            .is_none_or(|c| GENERIC_CONFIGS.contains(&c))
        && let Some(layer) = text(value.pointer("/layers/0/mediaType"))
    {
        return layer;
    }
    config.unwrap_or_default()
}

/// What the destination's tag-schema index of one subject needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexUpdate {
    /// It lists every referrer already.
    Unchanged,
    /// Write this index under the tag.
    Write(Bytes),
}

/// The destination's tag-schema index for one subject: `existing` (what the tag holds there, if
/// anything) with `ours` (the descriptors of the referrers copied) added, never dropping an
/// entry someone else wrote. When the destination has no index and the source's
/// (`source_index`) lists exactly the referrers copied, it is written unchanged, byte for byte.
pub fn merge_tag_index(
    existing: Option<&[u8]>,
    source_index: Option<&[u8]>,
    ours: &[serde_json::Value],
) -> Result<IndexUpdate, String> {
    let digest_of = |entry: &serde_json::Value| {
        entry
            .get("digest")
            .and_then(|d| d.as_str())
            .map(str::to_string)
    };
    let mut wanted: Vec<&serde_json::Value> = Vec::new();
    let mut wanted_digests = HashSet::new();
    for entry in ours {
        if let Some(digest) = digest_of(entry)
            && wanted_digests.insert(digest)
        {
            wanted.push(entry);
        }
    }
    let Some(existing) = existing else {
        if let Some(source_index) = source_index
            && let Ok(entries) = index_entries(source_index)
        {
            let listed: HashSet<String> = entries.into_iter().map(|e| e.digest).collect();
            if listed == wanted_digests {
                return Ok(IndexUpdate::Write(Bytes::copy_from_slice(source_index)));
            }
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": wanted,
        });
        return Ok(IndexUpdate::Write(Bytes::from(index.to_string())));
    };
    let mut index: serde_json::Value = serde_json::from_slice(existing)
        .map_err(|e| format!("it holds something that is not JSON: {e}"))?;
    let object = index
        .as_object_mut()
        .ok_or("it holds JSON that is not an image index")?;
    if object.contains_key("config") || object.contains_key("layers") {
        return Err("it holds an image manifest, not an index of referrers".into());
    }
    let manifests = object
        .entry("manifests")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    let list = manifests
        .as_array_mut()
        .ok_or("its `manifests` is not a list")?;
    let present: HashSet<String> = list.iter().filter_map(digest_of).collect();
    let missing: Vec<serde_json::Value> = wanted
        .into_iter()
        .filter(|entry| digest_of(entry).is_some_and(|d| !present.contains(&d)))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(IndexUpdate::Unchanged);
    }
    list.extend(missing);
    Ok(IndexUpdate::Write(Bytes::from(index.to_string())))
}

/// The referrers of each subject that a tag-schema index lists, by subject, in a stable order.
pub fn entries_by_subject<'a>(
    referrers: impl IntoIterator<Item = &'a FoundReferrer>,
) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut by_subject: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for found in referrers {
        if let Some(entry) = &found.entry {
            by_subject
                .entry(found.referrer.subject.clone())
                .or_default()
                .push(entry.clone());
        }
    }
    by_subject
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::bundle::OCI_MANIFEST;
    use crate::digest;

    /// A registry in memory: manifests by digest and tag, and optionally a referrers API
    /// computed from the manifests' `subject`, counting what is asked.
    #[derive(Default)]
    struct Memory {
        manifests: HashMap<String, Manifest>,
        tags: HashMap<String, String>,
        api: bool,
        asked: Mutex<Vec<String>>,
    }

    impl Memory {
        fn put(&mut self, media_type: &str, json: String) -> String {
            let manifest = crate::copy::plan::test_manifest(media_type, json);
            let digest = manifest.digest.clone();
            self.manifests.insert(digest.clone(), manifest);
            digest
        }

        /// A subject with an SBOM and a signature in its tag-schema index, and a signature of
        /// the SBOM in the SBOM's: (subject, sbom, signature, signature of the sbom).
        fn signed(&mut self) -> [String; 4] {
            let subject = self.artifact("application/vnd.example.image", None, 0);
            let sbom = self.artifact(SBOM, Some(&subject), 1);
            let signature = self.artifact(NOTARY, Some(&subject), 2);
            let on_sbom = self.artifact(NOTARY, Some(&sbom), 3);
            self.tag_index(&subject, &[&sbom, &signature]);
            self.tag_index(&sbom, &[&on_sbom]);
            [subject, sbom, signature, on_sbom]
        }

        fn tag(&mut self, tag: &str, digest: &str) {
            self.tags.insert(tag.to_string(), digest.to_string());
        }

        fn asked(&self, prefix: &str) -> usize {
            self.asked
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.starts_with(prefix))
                .count()
        }

        /// An artifact manifest of `artifact_type` with `subject`.
        fn artifact(&mut self, artifact_type: &str, subject: Option<&str>, seed: u8) -> String {
            let subject = subject.map_or(String::new(), |s| {
                format!(r#","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{s}","size":1}}"#)
            });
            self.put(
                OCI_MANIFEST,
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{artifact_type}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/octet-stream","digest":"{}","size":1}}]{subject}}}"#,
                    digest::sha256(b"{}"),
                    digest::sha256(&[seed])
                ),
            )
        }

        fn descriptor(&self, digest: &str) -> serde_json::Value {
            let manifest = &self.manifests[digest];
            let value: serde_json::Value = serde_json::from_slice(&manifest.bytes).unwrap();
            serde_json::json!({
                "mediaType": manifest.media_type,
                "digest": digest,
                "size": manifest.bytes.len(),
                "artifactType": value["artifactType"],
            })
        }

        /// A tag-schema index for `subject` listing `referrers`.
        fn tag_index(&mut self, subject: &str, referrers: &[&str]) -> String {
            let entries: Vec<serde_json::Value> =
                referrers.iter().map(|d| self.descriptor(d)).collect();
            let index = self.put(
                OCI_INDEX,
                serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
                    .to_string(),
            );
            self.tag(&schema_tag(subject), &index);
            index
        }
    }

    impl ManifestSource for Memory {
        fn fetch(
            &self,
            reference: &str,
        ) -> impl Future<Output = Result<Option<Manifest>, CopyError>> + Send {
            self.asked
                .lock()
                .unwrap()
                .push(format!("manifest {reference}"));
            let digest = self
                .tags
                .get(reference)
                .cloned()
                .unwrap_or_else(|| reference.to_string());
            let found = self.manifests.get(&digest).cloned();
            async move { Ok(found) }
        }

        fn name(&self) -> &str {
            "memory"
        }
    }

    impl ReferrerSource for Memory {
        fn referrers(
            &self,
            digest: &str,
        ) -> impl Future<Output = Result<Option<Vec<Bytes>>, CopyError>> + Send {
            self.asked
                .lock()
                .unwrap()
                .push(format!("referrers {digest}"));
            let answer = self.api.then(|| {
                let entries: Vec<serde_json::Value> = self
                    .manifests
                    .values()
                    .filter(|m| {
                        serde_json::from_slice::<serde_json::Value>(&m.bytes)
                            .ok()
                            .and_then(|v| v.pointer("/subject/digest").cloned())
                            == Some(serde_json::Value::String(digest.to_string()))
                    })
                    .map(|m| self.descriptor(&m.digest))
                    .collect();
                vec![Bytes::from(
                    serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
                        .to_string(),
                )]
            });
            async move { Ok(answer) }
        }

        fn tags(&self) -> impl Future<Output = Result<Vec<String>, CopyError>> + Send {
            self.asked.lock().unwrap().push("tags".into());
            let tags = self.tags.keys().cloned().collect();
            async move { Ok(tags) }
        }
    }

    const NOTARY: &str = "application/vnd.cncf.notary.signature";
    const SBOM: &str = "application/spdx+json";

    async fn found(memory: &Memory, subjects: &[&str], selection: &ReferrerSelection) -> Discovery {
        let subjects: Vec<String> = subjects.iter().map(|s| s.to_string()).collect();
        discover(memory, "repo", &subjects, selection, 4)
            .await
            .unwrap()
    }

    fn digests(discovery: &Discovery) -> Vec<(String, FoundBy, usize)> {
        let mut all: Vec<_> = discovery
            .referrers
            .iter()
            .map(|f| (f.referrer.digest.clone(), f.referrer.found_by, f.generation))
            .collect();
        all.sort();
        all
    }

    #[tokio::test]
    async fn the_tag_schema_finds_referrers_and_referrers_of_referrers() {
        let mut memory = Memory::default();
        let [subject, sbom, signature, on_sbom] = memory.signed();
        let discovery = found(&memory, &[&subject], &ReferrerSelection::default()).await;
        let mut expected = vec![
            (sbom.clone(), FoundBy::TagSchema, 1),
            (signature.clone(), FoundBy::TagSchema, 1),
            (on_sbom.clone(), FoundBy::TagSchema, 2),
        ];
        expected.sort();
        assert_eq!(digests(&discovery), expected);
        assert_eq!(memory.asked("tags"), 1, "one listing of the tags");
        assert_eq!(
            memory.asked("referrers"),
            1,
            "the API is not asked again once it answered 404"
        );
        let report = &discovery
            .referrers
            .iter()
            .find(|f| f.referrer.digest == sbom)
            .unwrap()
            .referrer;
        assert_eq!(report.artifact_type, SBOM);
        assert_eq!(report.subject, subject);
        assert!(discovery.tag_indexes.contains_key(&subject));
    }

    #[tokio::test]
    async fn the_referrers_api_is_used_when_there_is_one() {
        let mut memory = Memory {
            api: true,
            ..Memory::default()
        };
        let subject = memory.artifact("application/vnd.example.image", None, 0);
        let sbom = memory.artifact(SBOM, Some(&subject), 1);
        let on_sbom = memory.artifact(NOTARY, Some(&sbom), 2);
        let discovery = found(&memory, &[&subject], &ReferrerSelection::default()).await;
        let mut expected = vec![
            (sbom.clone(), FoundBy::ReferrersApi, 1),
            (on_sbom, FoundBy::ReferrersApi, 2),
        ];
        expected.sort();
        assert_eq!(digests(&discovery), expected);
        assert_eq!(memory.asked("tags"), 1);
        assert!(
            discovery.referrers[0].entry.is_some(),
            "the API's descriptor is kept"
        );
    }

    #[tokio::test]
    async fn cosign_tags_are_found_by_their_names() {
        let mut memory = Memory::default();
        let subject = memory.artifact("application/vnd.example.image", None, 0);
        let signature = memory.put(
            OCI_MANIFEST,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"{}","size":1}}]}}"#,
                digest::sha256(b"c"),
                digest::sha256(b"s")
            ),
        );
        memory.tag(&format!("{}.sig", schema_tag(&subject)), &signature);
        memory.tag("v1", &subject);
        let discovery = found(&memory, &[&subject], &ReferrerSelection::default()).await;
        assert_eq!(discovery.referrers.len(), 1);
        let report = &discovery.referrers[0].referrer;
        assert_eq!(report.found_by, FoundBy::CosignTag);
        assert_eq!(report.digest, signature);
        assert_eq!(
            report.tag.as_deref(),
            Some(format!("{}.sig", schema_tag(&subject)).as_str())
        );
        assert_eq!(
            report.artifact_type,
            "application/vnd.dev.cosign.simplesigning.v1+json"
        );
        assert!(discovery.referrers[0].entry.is_none());
    }

    #[tokio::test]
    async fn artifact_types_select_and_none_reads_nothing() {
        let mut memory = Memory::default();
        let [subject, _, signature, _] = memory.signed();
        let notary_only = ReferrerSelection {
            copy: true,
            artifact_types: vec![NOTARY.into()],
        };
        let discovery = found(&memory, &[&subject], &notary_only).await;
        assert_eq!(
            digests(&discovery),
            vec![(signature, FoundBy::TagSchema, 1)],
            "the SBOM is left out, and so is the signature on it"
        );
        let before = memory.asked.lock().unwrap().len();
        let none = found(&memory, &[&subject], &ReferrerSelection::none()).await;
        assert!(none.referrers.is_empty());
        assert_eq!(memory.asked.lock().unwrap().len(), before, "nothing read");
    }

    #[tokio::test]
    async fn a_listed_referrer_that_is_missing_fails_naming_it() {
        let mut memory = Memory::default();
        let subject = memory.artifact("application/vnd.example.image", None, 0);
        let sbom = memory.artifact(SBOM, Some(&subject), 1);
        memory.tag_index(&subject, &[&sbom]);
        memory.manifests.remove(&sbom);
        let subjects = vec![subject.clone()];
        let error = discover(&memory, "repo", &subjects, &ReferrerSelection::default(), 2)
            .await
            .unwrap_err();
        assert!(error.concerns_referrers());
        let message = error.to_string();
        assert!(
            message.contains(&sbom) && message.contains("TagSchema"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_tag_that_resolves_to_the_subject_itself_is_no_index() {
        let mut memory = Memory::default();
        let subject = memory.put(
            OCI_INDEX,
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#),
        );
        memory.tag(&schema_tag(&subject), &subject);
        let discovery = found(&memory, &[&subject], &ReferrerSelection::default()).await;
        assert!(discovery.referrers.is_empty());
        assert!(discovery.tag_indexes.is_empty());
    }

    fn entry(n: u8) -> serde_json::Value {
        serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": digest::sha256(&[n]),
            "size": 10,
            "artifactType": NOTARY,
        })
    }

    fn written(update: IndexUpdate) -> serde_json::Value {
        match update {
            IndexUpdate::Write(bytes) => serde_json::from_slice(&bytes).unwrap(),
            IndexUpdate::Unchanged => panic!("expected a write"),
        }
    }

    #[test]
    fn the_merge_keeps_foreign_entries_and_adds_ours_once() {
        let foreign = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [entry(9), entry(1)],
            "annotations": {"written.by": "someone else"},
        })
        .to_string();
        let merged = written(
            merge_tag_index(
                Some(foreign.as_bytes()),
                None,
                &[entry(1), entry(2), entry(2)],
            )
            .unwrap(),
        );
        let digests: Vec<&str> = merged["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["digest"].as_str().unwrap())
            .collect();
        let (nine, one, two) = (
            digest::sha256(&[9]),
            digest::sha256(&[1]),
            digest::sha256(&[2]),
        );
        assert_eq!(digests, [nine.as_str(), one.as_str(), two.as_str()]);
        assert_eq!(merged["annotations"]["written.by"], "someone else");
        assert_eq!(
            merge_tag_index(Some(foreign.as_bytes()), None, &[entry(9)]).unwrap(),
            IndexUpdate::Unchanged,
            "nothing missing: no write"
        );
    }

    #[test]
    fn a_fresh_index_is_the_sources_bytes_when_it_lists_the_same_referrers() {
        let source = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [entry(1), entry(2)],
        })
        .to_string();
        assert_eq!(
            merge_tag_index(None, Some(source.as_bytes()), &[entry(2), entry(1)]).unwrap(),
            IndexUpdate::Write(Bytes::from(source.clone()))
        );
        let fresh = written(merge_tag_index(None, Some(source.as_bytes()), &[entry(1)]).unwrap());
        assert_eq!(fresh["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(fresh["mediaType"], OCI_INDEX);
        assert_eq!(fresh["schemaVersion"], 2);
    }

    #[test]
    fn the_merge_refuses_to_overwrite_what_is_not_an_index() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{}","size":1}},"layers":[]}}"#,
            digest::sha256(b"x")
        );
        assert!(merge_tag_index(Some(manifest.as_bytes()), None, &[entry(1)]).is_err());
        assert!(merge_tag_index(Some(b"not json"), None, &[entry(1)]).is_err());
    }

    #[test]
    fn schema_tags_replace_the_colon() {
        assert_eq!(schema_tag("sha256:abc"), "sha256-abc");
        assert_eq!(schema_tag("sha512:def"), "sha512-def");
    }
}
