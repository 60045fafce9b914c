//! Read a bundle at the source: its index, config manifest and bundle.json, checked to be a CNAB
//! bundle (docs/architecture.md, "One copy"). `read_bundle` reads the three in turn. A copy
//! reads the index first (`read_index`), then the config manifest and bundle.json
//! (`read_bundle_json`) while the closure walk runs, both through `Remembering`, which reads the
//! config manifest and bundle.json once for everyone.

use bytes::Bytes;
use tokio::sync::OnceCell;

use super::ends::ReadEnd;
use super::plan::ManifestSource;
use super::referrers::{FoundBy, ReferrerSource};
use crate::bundle::{self, BundleImage, BundleIndex, BundleJson};
use crate::error::CopyError;
use crate::reference::Reference;
use crate::registry::{BlobRef, Manifest, Registry, RetryPolicy};
use crate::verify::{BlobStream, StreamProblem};

/// Where the bundle came from and what it holds.
pub struct SourceBundle {
    pub index: Manifest,
    /// The parsed index; its media type is what the copy pushes the index with.
    pub bundle_index: BundleIndex,
    /// The config manifest, already read (the closure walk does not fetch it again).
    pub config_manifest: Manifest,
    pub bundle: BundleJson,
    pub images: Vec<BundleImage>,
}

/// The bundle index as the source serves it, checked to be a bundle's.
pub struct SourceIndex {
    pub index: Manifest,
    pub bundle_index: BundleIndex,
}

/// The tag or digest a reference names (`latest` when it names neither).
pub fn tag_or_digest(reference: &Reference) -> &str {
    reference.digest().or(reference.tag()).unwrap_or("latest")
}

fn not_a_bundle(source: &str, detail: String) -> CopyError {
    CopyError::NotABundle {
        reference: source.to_string(),
        detail,
    }
}

/// Resolve `reference` (a tag or digest) at the source, named `source` in messages, and check
/// that it is a bundle.
pub async fn read_bundle(
    src: &impl ReadEnd,
    source: &str,
    reference: &str,
) -> Result<SourceBundle, CopyError> {
    let index = read_index(src, source, reference).await?;
    read_bundle_json(src, source, &index).await
}

/// Resolve `reference` at the source to its index, checked to be a bundle's.
pub async fn read_index(
    src: &impl ReadEnd,
    source: &str,
    reference: &str,
) -> Result<SourceIndex, CopyError> {
    let index = src
        .get_manifest(reference)
        .await?
        .ok_or_else(|| CopyError::SourceNotFound {
            reference: source.to_string(),
            detail: src.missing(reference),
        })?;
    let bundle_index = BundleIndex::parse(&index.bytes, &index.media_type)
        .map_err(|e| not_a_bundle(source, e.0))?;
    Ok(SourceIndex {
        index,
        bundle_index,
    })
}

/// Read the config manifest and bundle.json of `index` and check that they make a bundle.
pub async fn read_bundle_json(
    src: &impl ReadEnd,
    source: &str,
    index: &SourceIndex,
) -> Result<SourceBundle, CopyError> {
    let not_a_bundle = |detail: String| not_a_bundle(source, detail);
    let config = index.bundle_index.config_descriptor();
    let config_manifest = src
        .get_manifest(&config.digest)
        .await?
        .ok_or_else(|| not_a_bundle(format!("its config manifest {} is missing", config.digest)))?;
    let blob = bundle::bundle_json_descriptor(&config_manifest.bytes, &config.media_type)
        .map_err(|e| not_a_bundle(format!("its config manifest is unreadable: {e}")))?;
    if blob.size > bundle::MAX_BUNDLE_JSON_BYTES as u64 {
        return Err(not_a_bundle(format!(
            "its bundle.json is {} bytes, more than the limit",
            blob.size
        )));
    }
    let bundle_bytes = src
        .read_blob(&blob.digest, bundle::MAX_BUNDLE_JSON_BYTES)
        .await?;
    let bundle = BundleJson::parse(&bundle_bytes).map_err(|e| not_a_bundle(e.0))?;
    let images =
        bundle::bundle_images(&index.bundle_index, &bundle).map_err(|e| not_a_bundle(e.0))?;
    Ok(SourceBundle {
        index: index.index.clone(),
        bundle_index: index.bundle_index.clone(),
        config_manifest,
        bundle,
        images,
    })
}

/// A source that reads the bundle's config manifest and the blobs read whole (bundle.json)
/// once: the closure walk and the read of bundle.json both need the config manifest, and run
/// at the same time; bundle.json, once read, is served from memory to the transfer that copies
/// it, instead of being fetched a second time.
pub struct Remembering<'a, S> {
    inner: &'a S,
    config_digest: String,
    config: OnceCell<Option<Manifest>>,
    read_whole: OnceCell<(String, Bytes)>,
}

impl<'a, S: ReadEnd> Remembering<'a, S> {
    pub fn new(inner: &'a S, index: &SourceIndex) -> Remembering<'a, S> {
        Remembering {
            inner,
            config_digest: index.bundle_index.config_descriptor().digest.clone(),
            config: OnceCell::new(),
            read_whole: OnceCell::new(),
        }
    }

    fn remembered(&self, digest: &str) -> Option<&Bytes> {
        self.read_whole
            .get()
            .filter(|(read, _)| read == digest)
            .map(|(_, bytes)| bytes)
    }
}

impl<S: ReadEnd> ManifestSource for Remembering<'_, S> {
    async fn fetch(&self, digest: &str) -> Result<Option<Manifest>, CopyError> {
        ReadEnd::get_manifest(self, digest).await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

impl<S: ReadEnd> ReferrerSource for Remembering<'_, S> {
    async fn referrers(&self, digest: &str) -> Result<Option<Vec<Bytes>>, CopyError> {
        self.inner.referrers(digest).await
    }

    async fn tags(&self) -> Result<Vec<String>, CopyError> {
        self.inner.tags().await
    }

    fn listed_by(&self) -> FoundBy {
        self.inner.listed_by()
    }
}

impl<S: ReadEnd> ReadEnd for Remembering<'_, S> {
    async fn get_manifest(&self, reference: &str) -> Result<Option<Manifest>, CopyError> {
        if reference != self.config_digest {
            return self.inner.get_manifest(reference).await;
        }
        self.config
            .get_or_try_init(|| self.inner.get_manifest(reference))
            .await
            .cloned()
    }

    fn missing(&self, reference: &str) -> String {
        self.inner.missing(reference)
    }

    async fn read_blob(&self, digest: &str, limit: usize) -> Result<Bytes, CopyError> {
        if let Some(bytes) = self.remembered(digest) {
            return Ok(bytes.clone());
        }
        let bytes = self.inner.read_blob(digest, limit).await?;
        // Only the first blob read whole is kept (a copy reads one: bundle.json).
        let _ = self.read_whole.set((digest.to_string(), bytes.clone()));
        Ok(bytes)
    }

    async fn open_blob(&self, blob: &BlobRef) -> Result<BlobStream, CopyError> {
        match self.remembered(&blob.digest) {
            Some(bytes) => {
                let bytes = bytes.clone();
                Ok(Box::pin(futures_util::stream::once(
                    async move { Ok(bytes) },
                )))
            }
            None => self.inner.open_blob(blob).await,
        }
    }

    fn held(&self, digest: &str) -> bool {
        self.remembered(digest).is_some()
    }

    fn stream_problem(&self, digest: &str, problem: StreamProblem) -> CopyError {
        self.inner.stream_problem(digest, problem)
    }

    fn policy(&self) -> RetryPolicy {
        self.inner.policy()
    }

    fn as_registry(&self) -> Option<&Registry> {
        self.inner.as_registry()
    }
}
