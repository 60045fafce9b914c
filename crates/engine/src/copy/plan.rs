//! The copy plan: what to move and in which order, decided from the bundle alone. No transport,
//! authentication or retry here: the walk reads manifests through `ManifestSource`, so the plan
//! is tested without a registry.

use std::collections::HashSet;
use std::future::Future;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use crate::bundle::{BundleIndex, Descriptor, Parsed};
use crate::error::{CopyError, Side};
use crate::reference::Reference;
use crate::registry::{Access, BlobRef, Manifest, Registry};

/// Where the walk reads child manifests from.
pub trait ManifestSource: Sync {
    /// The manifest with this digest (or tag), `None` when the source does not have it.
    fn fetch(
        &self,
        digest: &str,
    ) -> impl Future<Output = Result<Option<Manifest>, CopyError>> + Send;
    /// The registry's name, for messages.
    fn name(&self) -> &str;
}

impl ManifestSource for Registry {
    fn fetch(
        &self,
        digest: &str,
    ) -> impl Future<Output = Result<Option<Manifest>, CopyError>> + Send {
        self.get_manifest(digest)
    }

    fn name(&self) -> &str {
        Registry::name(self)
    }
}

/// A manifest of the closure, ready to push.
#[derive(Debug, Clone)]
pub struct ClosureManifest {
    pub digest: String,
    pub media_type: String,
    pub bytes: Bytes,
    /// Distance from the index: deeper ones are pushed first.
    pub depth: usize,
}

/// Everything reachable from the bundle index, each item once, in discovery order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub manifests: Vec<ClosureManifest>,
    pub blobs: Vec<BlobRef>,
}

impl Plan {
    pub fn total_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }

    /// Blobs largest first, so the long transfers overlap with everything else.
    pub fn blob_order(&self) -> Vec<BlobRef> {
        let mut blobs = self.blobs.clone();
        blobs.sort_by_key(|b| std::cmp::Reverse(b.size));
        blobs
    }

    /// Manifests in levels, deepest first, so a registry only ever sees a manifest whose
    /// children are already there. Each level may be pushed concurrently.
    pub fn push_levels(&self) -> Vec<Vec<&ClosureManifest>> {
        self.push_levels_down_to(1)
    }

    /// `push_levels` without the levels above `depth` (a walk's roots are at depth 1).
    pub fn push_levels_down_to(&self, depth: usize) -> Vec<Vec<&ClosureManifest>> {
        let deepest = self.manifests.iter().map(|m| m.depth).max().unwrap_or(0);
        (depth.max(1)..=deepest)
            .rev()
            .map(|depth| self.manifests.iter().filter(|m| m.depth == depth).collect())
            .collect()
    }

    /// This plan's blobs and `other`'s, each once.
    pub fn with_blobs_of<'a>(mut self, others: impl IntoIterator<Item = &'a Plan>) -> Plan {
        let mut seen: HashSet<String> = self.blobs.iter().map(|b| b.digest.clone()).collect();
        for other in others {
            self.blobs.extend(
                other
                    .blobs
                    .iter()
                    .filter(|b| seen.insert(b.digest.clone()))
                    .cloned(),
            );
        }
        self
    }
}

/// A manifest of `json`, keyed by its sha256 digest (for tests that keep manifests in memory).
#[cfg(test)]
pub(crate) fn test_manifest(media_type: &str, json: String) -> Manifest {
    let bytes = Bytes::from(json);
    let digest = crate::digest::sha256(&bytes);
    Manifest {
        bytes,
        media_type: media_type.to_string(),
        digest,
    }
}

/// How the destination is accessed: a repository of the source's own registry mounts blobs
/// from the source repository instead of streaming them.
pub fn destination_access(source: &Reference, destination: &Reference) -> Access {
    let same_registry = source.api_host() == destination.api_host();
    let mount = same_registry && source.repository() != destination.repository();
    Access::Push {
        mount_from: mount.then(|| source.repository().to_string()),
    }
}

/// What the destination tag holds, against the bundle to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationState {
    /// It holds this bundle already: nothing to write.
    UpToDate,
    /// It is empty, or holds another bundle that `force` lets us overwrite.
    Write,
}

/// Decide from the digest at the destination tag (if any) whether to write.
pub fn destination_state(
    existing: Option<String>,
    source_digest: &str,
    force: bool,
    destination: &impl std::fmt::Display,
) -> Result<DestinationState, CopyError> {
    match existing {
        Some(existing) if existing == source_digest => Ok(DestinationState::UpToDate),
        Some(existing) if !force => Err(CopyError::DestinationExists {
            reference: destination.to_string(),
            existing,
        }),
        Some(existing) => {
            tracing::info!(destination = %destination, %existing, "overwriting a different bundle (force)");
            Ok(DestinationState::Write)
        }
        None => Ok(DestinationState::Write),
    }
}

/// Fetch every manifest reachable from the index (level by level, `concurrency` at once) and
/// collect the blobs they name, each once. `config` is the config manifest, already read.
pub async fn walk_closure(
    source: &impl ManifestSource,
    repository: &str,
    index: &BundleIndex,
    config: &Manifest,
    concurrency: usize,
) -> Result<Plan, CopyError> {
    walk(
        source,
        repository,
        index.manifests.clone(),
        std::slice::from_ref(config),
        concurrency,
    )
    .await
}

/// The same closure with nothing read yet: the config manifest comes through `source` like
/// every other manifest (a copy reads it for bundle.json at the same time, through a source
/// that reads it once).
pub async fn walk_index(
    source: &impl ManifestSource,
    repository: &str,
    index: &BundleIndex,
    concurrency: usize,
) -> Result<Plan, CopyError> {
    walk(
        source,
        repository,
        index.manifests.clone(),
        &[],
        concurrency,
    )
    .await
}

/// Everything reachable from manifests already read (referrers): each is a root at depth 1,
/// pushed after its children.
pub async fn walk_from(
    source: &impl ManifestSource,
    repository: &str,
    roots: &[Manifest],
    concurrency: usize,
) -> Result<Plan, CopyError> {
    let first = roots
        .iter()
        .map(|m| Descriptor {
            media_type: m.media_type.clone(),
            digest: m.digest.clone(),
            size: m.bytes.len() as u64,
            annotations: Default::default(),
            urls: None,
        })
        .collect();
    walk(source, repository, first, roots, concurrency).await
}

/// The closure of `first`, level by level; `known` manifests are not read again.
async fn walk(
    source: &impl ManifestSource,
    repository: &str,
    first: Vec<Descriptor>,
    known: &[Manifest],
    concurrency: usize,
) -> Result<Plan, CopyError> {
    let mut seen_manifests = HashSet::new();
    let mut seen_blobs = HashSet::new();
    let mut plan = Plan::default();
    let mut level: Vec<Descriptor> = first
        .into_iter()
        .filter(|d| seen_manifests.insert(d.digest.clone()))
        .collect();
    let mut depth = 1;
    while !level.is_empty() {
        let fetched = fetch_level(source, repository, level, known, concurrency).await?;
        let mut next = Vec::new();
        for (descriptor, manifest) in fetched {
            let media_type = if descriptor.media_type.is_empty() {
                manifest.media_type.clone()
            } else {
                descriptor.media_type.clone()
            };
            let parsed =
                Parsed::parse(&manifest.bytes, &media_type).map_err(|e| CopyError::NotABundle {
                    reference: format!("{repository}@{}", descriptor.digest),
                    detail: e.0,
                })?;
            match parsed {
                Parsed::Index { manifests } => next.extend(
                    manifests
                        .into_iter()
                        .filter(|d| seen_manifests.insert(d.digest.clone())),
                ),
                Parsed::Manifest { config, layers } => plan.blobs.extend(
                    std::iter::once(config)
                        .chain(layers)
                        .filter(|blob| !blob.is_foreign())
                        .filter(|blob| seen_blobs.insert(blob.digest.clone()))
                        .map(|blob| BlobRef {
                            digest: blob.digest,
                            size: blob.size,
                        }),
                ),
            }
            plan.manifests.push(ClosureManifest {
                digest: manifest.digest,
                media_type,
                bytes: manifest.bytes,
                depth,
            });
        }
        level = next;
        depth += 1;
    }
    Ok(plan)
}

/// Read one level of the closure, concurrently; `known` manifests (the config manifest, read
/// referrers) are not read again.
async fn fetch_level(
    source: &impl ManifestSource,
    repository: &str,
    level: Vec<Descriptor>,
    known: &[Manifest],
    concurrency: usize,
) -> Result<Vec<(Descriptor, Manifest)>, CopyError> {
    futures_util::stream::iter(level.into_iter().map(|d| async move {
        if let Some(manifest) = known.iter().find(|m| m.digest == d.digest) {
            return Ok((d, manifest.clone()));
        }
        let manifest = source
            .fetch(&d.digest)
            .await?
            .ok_or_else(|| CopyError::Registry {
                side: Side::Source,
                registry: source.name().to_string(),
                status: Some(404),
                detail: format!(
                    "manifest {} named by the bundle is missing from {repository}",
                    d.digest
                ),
            })?;
        Ok::<_, CopyError>((d, manifest))
    }))
    .buffer_unordered(concurrency.max(1))
    .try_collect()
    .await
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::bundle::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
    use crate::digest;

    /// Manifests in memory, by digest.
    #[derive(Default)]
    struct Memory(HashMap<String, Manifest>);

    impl Memory {
        fn put(&mut self, media_type: &str, json: String) -> String {
            let manifest = test_manifest(media_type, json);
            let digest = manifest.digest.clone();
            self.0.insert(digest.clone(), manifest);
            digest
        }
    }

    impl ManifestSource for Memory {
        fn fetch(
            &self,
            digest: &str,
        ) -> impl Future<Output = Result<Option<Manifest>, CopyError>> + Send {
            let found = self.0.get(digest).cloned();
            async move { Ok(found) }
        }

        fn name(&self) -> &str {
            "memory"
        }
    }

    fn blob(n: u8) -> String {
        digest::sha256(&[n])
    }

    fn image(memory: &mut Memory, config: u8, layers: &[(u8, u64)]) -> String {
        let layers: Vec<String> = layers
            .iter()
            .map(|(n, size)| {
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{size}}}"#,
                    blob(*n)
                )
            })
            .collect();
        memory.put(
            OCI_MANIFEST,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":1}},"layers":[{}]}}"#,
                blob(config),
                layers.join(",")
            ),
        )
    }

    fn entry(media_type: &str, digest: &str, kind: &str) -> String {
        let name = if kind == "component" {
            r#","io.cnab.component.name":"web""#
        } else {
            ""
        };
        format!(
            r#"{{"mediaType":"{media_type}","digest":"{digest}","size":1,"annotations":{{"io.cnab.manifest.type":"{kind}"{name}}}}}"#
        )
    }

    /// A bundle: config manifest, an invocation image, and a component that is itself an index
    /// of one image (depth 2). Blob 1 is shared by all images.
    fn bundle(memory: &mut Memory) -> (BundleIndex, Manifest) {
        let config = image(memory, 9, &[(8, 5)]);
        let invocation = image(memory, 1, &[(2, 300), (3, 10)]);
        let inner = image(memory, 1, &[(4, 7000), (2, 300)]);
        let component = memory.put(
            OCI_INDEX,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
                entry(DOCKER_MANIFEST, &inner, "component")
            ),
        );
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{},{},{}]}}"#,
            entry(OCI_MANIFEST, &config, "config"),
            entry(OCI_MANIFEST, &invocation, "invocation"),
            entry(OCI_INDEX, &component, "component"),
        );
        let index = BundleIndex::parse(index.as_bytes(), OCI_INDEX).unwrap();
        let config = memory.0[&config].clone();
        (index, config)
    }

    async fn plan_of(memory: &Memory, index: &BundleIndex, config: &Manifest) -> Plan {
        walk_closure(memory, "repo", index, config, 4)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_walk_finds_every_manifest_and_each_blob_once() {
        let mut memory = Memory::default();
        let (index, config) = bundle(&mut memory);
        let plan = plan_of(&memory, &index, &config).await;
        assert_eq!(
            plan.manifests.len(),
            4,
            "config, invocation, component index, its image"
        );
        let mut digests: Vec<&str> = plan.blobs.iter().map(|b| b.digest.as_str()).collect();
        digests.sort();
        let mut expected = [blob(9), blob(8), blob(1), blob(2), blob(3), blob(4)];
        expected.sort();
        assert_eq!(
            digests,
            expected.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert_eq!(plan.total_bytes(), 1 + 5 + 1 + 300 + 10 + 7000);
        let depths: Vec<usize> = plan.manifests.iter().map(|m| m.depth).collect();
        assert_eq!(depths.iter().filter(|d| **d == 2).count(), 1);
    }

    #[tokio::test]
    async fn blobs_go_largest_first_and_manifests_deepest_first() {
        let mut memory = Memory::default();
        let (index, config) = bundle(&mut memory);
        let plan = plan_of(&memory, &index, &config).await;
        let sizes: Vec<u64> = plan.blob_order().iter().map(|b| b.size).collect();
        assert_eq!(sizes[0], 7000);
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
        let levels = plan.push_levels();
        assert_eq!(levels.len(), 2);
        assert!(levels[0].iter().all(|m| m.depth == 2));
        assert!(levels[1].iter().all(|m| m.depth == 1));
        assert_eq!(levels[0].len() + levels[1].len(), plan.manifests.len());
    }

    #[tokio::test]
    async fn a_missing_child_manifest_is_a_registry_error() {
        let mut memory = Memory::default();
        let (index, config) = bundle(&mut memory);
        memory.0.retain(|digest, _| *digest == config.digest);
        let error = walk_closure(&memory, "repo", &index, &config, 2)
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                CopyError::Registry {
                    status: Some(404),
                    ..
                }
            ),
            "{error}"
        );
    }

    fn reference(text: &str) -> Reference {
        Reference::parse(text).unwrap()
    }

    #[test]
    fn blobs_are_mounted_only_across_repositories_of_one_registry() {
        let source = reference("registry.example/a/bundle:v1");
        let mount = |destination: &str| match destination_access(&source, &reference(destination)) {
            Access::Push { mount_from } => mount_from,
            Access::Pull => panic!("the destination is written"),
        };
        assert_eq!(
            mount("registry.example/b/bundle:v1").as_deref(),
            Some("a/bundle")
        );
        assert_eq!(
            mount("registry.example/a/bundle:v2"),
            None,
            "same repository"
        );
        assert_eq!(mount("other.example/a/bundle:v1"), None, "another registry");
    }

    #[test]
    fn the_destination_is_written_unless_up_to_date_or_protected() {
        let destination = reference("registry.example/a/bundle:v1");
        let source = blob(1);
        let state = |existing: Option<String>, force| {
            destination_state(existing, &source, force, &destination)
        };
        assert_eq!(state(None, false).unwrap(), DestinationState::Write);
        assert_eq!(
            state(Some(blob(1)), false).unwrap(),
            DestinationState::UpToDate
        );
        assert!(matches!(
            state(Some(blob(2)), false),
            Err(CopyError::DestinationExists { .. })
        ));
        assert_eq!(state(Some(blob(2)), true).unwrap(), DestinationState::Write);
    }
}
