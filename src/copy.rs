//! The copy plan and its execution: the engine shared by the CLI and the controller.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use sha2::Digest as _;

use crate::bundle::{self, BundleImage, BundleIndex, BundleJson, Descriptor, Parsed};
use crate::credentials::DockerConfig;
use crate::error::{CopyError, Side};
use crate::reference::{Reference, derive_destination};
use crate::registry::auth::repository_scope;
pub use crate::registry::transport::validate_ca_pem;
use crate::registry::{Manifest, Mount, Registry};

/// How to reach one endpoint (source or destination) of a copy.
#[derive(Debug, Clone, Default)]
pub struct EndpointOptions {
    /// Allow plain HTTP or an unverified certificate for this endpoint.
    pub insecure: bool,
    /// PEM CA certificates to trust for this endpoint (HTTPS verified against the system roots
    /// plus these, on loopback too).
    pub ca_pem: Option<Vec<u8>>,
    /// Credentials for this endpoint, most specific match first.
    pub credentials: DockerConfig,
}

/// Process-wide knobs of the engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Blobs moved at once.
    pub max_concurrent_blobs: usize,
    pub connect_timeout: Duration,
    /// Longest wait for any single read or write on a connection.
    pub io_timeout: Duration,
    /// Attempts per request or blob before a transient error is reported.
    pub max_attempts: u32,
    /// Longest wait honoured from a `Retry-After` header before giving up with `RateLimited`.
    pub max_retry_after: Duration,
    /// Extra PEM CA certificates trusted for every HTTPS registry (does not change the
    /// transport choice of loopback registries).
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_concurrent_blobs: 8,
            connect_timeout: Duration::from_secs(15),
            io_timeout: Duration::from_secs(60),
            max_attempts: 5,
            max_retry_after: Duration::from_secs(60),
            extra_roots_pem: None,
        }
    }
}

/// One copy: `porter copy --source S --destination D`.
#[derive(Debug, Clone, Default)]
pub struct CopyRequest {
    /// Source bundle reference, by tag or digest.
    pub source: String,
    /// Destination: a registry, registry/org, or a full reference (Porter's derivation).
    pub destination: String,
    pub source_endpoint: EndpointOptions,
    pub destination_endpoint: EndpointOptions,
    /// Overwrite a destination tag that holds a different bundle.
    pub force: bool,
    pub settings: EngineSettings,
}

/// Live counters of a running copy; clone it to watch from another task.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    blobs: AtomicU64,
    copied: AtomicU64,
    mounted: AtomicU64,
    skipped: AtomicU64,
    bytes: AtomicU64,
    total_bytes: AtomicU64,
    manifests: AtomicU64,
    manifests_pushed: AtomicU64,
}

/// A point-in-time view of `Progress`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressSnapshot {
    /// Distinct blobs in the bundle's closure.
    pub blobs: u64,
    /// Blobs streamed from source to destination.
    pub copied: u64,
    /// Blobs mounted from another repository of the destination registry.
    pub mounted: u64,
    /// Blobs already present at the destination.
    pub skipped: u64,
    /// Blob bytes streamed so far.
    pub bytes: u64,
    /// Blob bytes in the closure.
    pub total_bytes: u64,
    /// Manifests in the closure (index included).
    pub manifests: u64,
    /// Manifests written to the destination.
    pub manifests_pushed: u64,
}

impl Progress {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        let c = &self.0;
        ProgressSnapshot {
            blobs: c.blobs.load(Ordering::Relaxed),
            copied: c.copied.load(Ordering::Relaxed),
            mounted: c.mounted.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            total_bytes: c.total_bytes.load(Ordering::Relaxed),
            manifests: c.manifests.load(Ordering::Relaxed),
            manifests_pushed: c.manifests_pushed.load(Ordering::Relaxed),
        }
    }
}

/// Name and version from bundle.json.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BundleInfo {
    pub name: String,
    pub version: String,
}

/// Where one image of bundle.json lives after the copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelocatedImage {
    /// `invocation` for the invocation image, else the key of bundle.json's `images` map.
    pub name: String,
    /// The image reference bundle.json names.
    pub image: String,
    /// `destination-repository@digest`.
    pub relocated: String,
    pub digest: String,
}

/// What a copy did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyOutcome {
    pub source: String,
    pub source_digest: String,
    pub destination: String,
    pub destination_digest: String,
    /// The destination already held this bundle: nothing was written.
    pub up_to_date: bool,
    pub bundle: BundleInfo,
    pub images: Vec<RelocatedImage>,
    /// bundle.json image → relocated reference (the cnab-spec relocation mapping).
    pub relocation_map: BTreeMap<String, String>,
    pub progress: ProgressSnapshot,
}

/// Where the bundle came from and what it holds.
struct SourceBundle {
    index: Manifest,
    /// The parsed index; its media type is what the copy pushes the index with.
    bundle_index: BundleIndex,
    /// The config manifest, already read (the closure walk does not fetch it again).
    config_manifest: Manifest,
    bundle: BundleJson,
    images: Vec<BundleImage>,
}

/// A manifest of the closure, ready to push.
struct ClosureManifest {
    digest: String,
    media_type: String,
    bytes: Bytes,
    /// Distance from the index: deeper ones are pushed first.
    depth: usize,
}

#[derive(Debug, Clone)]
struct ClosureBlob {
    digest: String,
    size: u64,
}

/// Everything reachable from the bundle index, each item once.
struct Closure {
    manifests: Vec<ClosureManifest>,
    blobs: Vec<ClosureBlob>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobAction {
    Copied,
    Mounted,
    Skipped,
}

fn spec_error(e: impl std::fmt::Display) -> CopyError {
    CopyError::InvalidSpec(e.to_string())
}

/// Copy a bundle. See DESIGN.md section 2.
pub async fn copy_bundle(
    request: &CopyRequest,
    progress: &Progress,
) -> Result<CopyOutcome, CopyError> {
    let source = Reference::parse(request.source.trim()).map_err(spec_error)?;
    let destination =
        derive_destination(&source, request.destination.trim()).map_err(spec_error)?;
    let settings = &request.settings;
    let same_registry = source.api_host() == destination.api_host();
    let src_scope = repository_scope(source.repository(), false);
    let mut dst_scope = repository_scope(destination.repository(), true);
    if same_registry && source.repository() != destination.repository() {
        // Mounting needs pull access to the source repository in the same token.
        dst_scope = format!(
            "{dst_scope} {}",
            repository_scope(source.repository(), false)
        );
    }

    let (src, dst) = tokio::try_join!(
        Registry::connect(Side::Source, &source, &request.source_endpoint, settings),
        Registry::connect(
            Side::Destination,
            &destination,
            &request.destination_endpoint,
            settings
        ),
    )?;
    tracing::info!(source = %source, destination = %destination,
        source_transport = src.transport().describe(), destination_transport = dst.transport().describe(),
        "reading the bundle");
    let bundle = read_bundle(&src, &source, &src_scope).await?;
    let source_digest = bundle.index.digest.clone();
    let dst_reference = destination
        .tag()
        .map(str::to_string)
        .unwrap_or_else(|| source_digest.clone());
    if let Some(wanted) = destination.digest()
        && wanted != source_digest
    {
        return Err(CopyError::InvalidSpec(format!(
            "destination {destination} names digest {wanted}, but the source bundle is {source_digest}"
        )));
    }

    let outcome = |up_to_date: bool, progress: ProgressSnapshot| {
        let images = relocated_images(&bundle.images, &destination.name());
        CopyOutcome {
            source: source.to_string(),
            source_digest: source_digest.clone(),
            destination: destination.to_string(),
            destination_digest: source_digest.clone(),
            up_to_date,
            bundle: BundleInfo {
                name: bundle.bundle.name.clone(),
                version: bundle.bundle.version.clone(),
            },
            relocation_map: images
                .iter()
                .map(|i| (i.image.clone(), i.relocated.clone()))
                .collect(),
            images,
            progress,
        }
    };

    match dst
        .head_manifest(destination.repository(), &dst_reference, &dst_scope)
        .await?
    {
        Some(existing) if existing == source_digest => {
            tracing::info!(destination = %destination, digest = %source_digest, "destination is up to date");
            return Ok(outcome(true, progress.snapshot()));
        }
        Some(existing) if !request.force => {
            return Err(CopyError::DestinationExists {
                reference: destination.to_string(),
                existing,
            });
        }
        Some(existing) => {
            tracing::info!(destination = %destination, %existing, "overwriting a different bundle (force)");
        }
        None => {}
    }

    let closure = walk_closure(&src, source.repository(), &bundle, &src_scope, settings).await?;
    Progress::add(&progress.0.blobs, closure.blobs.len() as u64);
    Progress::add(
        &progress.0.total_bytes,
        closure.blobs.iter().map(|b| b.size).sum(),
    );
    Progress::add(&progress.0.manifests, closure.manifests.len() as u64 + 1);
    tracing::info!(
        blobs = closure.blobs.len(),
        manifests = closure.manifests.len() + 1,
        bytes = closure.blobs.iter().map(|b| b.size).sum::<u64>(),
        "copying"
    );

    let blob_copy = BlobCopy {
        src: &src,
        dst: &dst,
        src_repository: source.repository(),
        dst_repository: destination.repository(),
        src_scope: &src_scope,
        dst_scope: &dst_scope,
        mount: same_registry && source.repository() != destination.repository(),
        progress,
        settings,
    };
    let mut blobs = closure.blobs.clone();
    // Largest first, so the long transfers overlap with everything else.
    blobs.sort_by_key(|b| std::cmp::Reverse(b.size));
    futures_util::stream::iter(blobs.into_iter().map(Ok::<_, CopyError>))
        .try_for_each_concurrent(settings.max_concurrent_blobs.max(1), |blob| {
            let blob_copy = &blob_copy;
            async move {
                let action = blob_copy.copy_with_retries(&blob).await?;
                let counter = match action {
                    BlobAction::Copied => &progress.0.copied,
                    BlobAction::Mounted => &progress.0.mounted,
                    BlobAction::Skipped => &progress.0.skipped,
                };
                Progress::add(counter, 1);
                tracing::debug!(digest = %blob.digest, size = blob.size, ?action, "blob done");
                Ok(())
            }
        })
        .await?;

    push_manifests(
        &dst,
        destination.repository(),
        &closure.manifests,
        &dst_scope,
        progress,
    )
    .await?;
    let pushed = dst
        .put_manifest(
            destination.repository(),
            &dst_reference,
            bundle.index.bytes.clone(),
            &bundle.bundle_index.media_type,
            &dst_scope,
        )
        .await?;
    Progress::add(&progress.0.manifests_pushed, 1);
    if let Some(pushed) = pushed.filter(|d| *d != source_digest) {
        return Err(CopyError::DigestMismatch {
            side: Side::Destination,
            registry: destination.registry().to_string(),
            digest: source_digest,
            detail: format!("the destination stored the index as {pushed}"),
        });
    }
    tracing::info!(destination = %destination, digest = %source_digest, "bundle copied");
    Ok(outcome(false, progress.snapshot()))
}

fn relocated_images(images: &[BundleImage], repository: &str) -> Vec<RelocatedImage> {
    images
        .iter()
        .map(|i| RelocatedImage {
            name: i.name.clone(),
            image: i.image.clone(),
            relocated: format!("{repository}@{}", i.digest),
            digest: i.digest.clone(),
        })
        .collect()
}

/// Resolve the source and check that it is a bundle (DESIGN.md section 2, step 4).
async fn read_bundle(
    src: &Registry,
    source: &Reference,
    scope: &str,
) -> Result<SourceBundle, CopyError> {
    let reference = source.digest().or(source.tag()).unwrap_or("latest");
    let not_a_bundle = |detail: String| CopyError::NotABundle {
        reference: source.to_string(),
        detail,
    };
    let index = src
        .get_manifest(source.repository(), reference, scope)
        .await?
        .ok_or_else(|| CopyError::SourceNotFound {
            reference: source.to_string(),
            detail: format!(
                "the registry has no manifest {reference} in {}",
                source.repository()
            ),
        })?;
    let bundle_index =
        BundleIndex::parse(&index.bytes, &index.media_type).map_err(|e| not_a_bundle(e.0))?;
    let config = bundle_index.config_descriptor();
    let config_manifest = src
        .get_manifest(source.repository(), &config.digest, scope)
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
        .read_blob(
            source.repository(),
            &blob.digest,
            bundle::MAX_BUNDLE_JSON_BYTES,
            scope,
        )
        .await?;
    let bundle = BundleJson::parse(&bundle_bytes).map_err(|e| not_a_bundle(e.0))?;
    let images = bundle::bundle_images(&bundle_index, &bundle).map_err(|e| not_a_bundle(e.0))?;
    Ok(SourceBundle {
        index,
        bundle_index,
        config_manifest,
        bundle,
        images,
    })
}

/// Fetch every manifest reachable from the index (level by level, concurrently) and collect
/// the blobs they name, each once.
async fn walk_closure(
    src: &Registry,
    repository: &str,
    bundle: &SourceBundle,
    scope: &str,
    settings: &EngineSettings,
) -> Result<Closure, CopyError> {
    let mut seen_manifests = HashSet::new();
    let mut seen_blobs = HashSet::new();
    let mut manifests = Vec::new();
    let mut blobs = Vec::new();
    let mut level: Vec<Descriptor> = bundle
        .bundle_index
        .manifests
        .iter()
        .filter(|d| seen_manifests.insert(d.digest.clone()))
        .cloned()
        .collect();
    let mut depth = 1;
    while !level.is_empty() {
        let fetched: Vec<(Descriptor, Manifest)> =
            futures_util::stream::iter(level.into_iter().map(|d| async move {
                if d.digest == bundle.config_manifest.digest {
                    return Ok((d, bundle.config_manifest.clone()));
                }
                let manifest = src
                    .get_manifest(repository, &d.digest, scope)
                    .await?
                    .ok_or_else(|| CopyError::Registry {
                        side: Side::Source,
                        registry: src.name().to_string(),
                        status: Some(404),
                        detail: format!(
                            "manifest {} named by the bundle is missing from {repository}",
                            d.digest
                        ),
                    })?;
                Ok::<_, CopyError>((d, manifest))
            }))
            .buffer_unordered(settings.max_concurrent_blobs.max(1))
            .try_collect()
            .await?;
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
                Parsed::Index {
                    manifests: children,
                } => {
                    next.extend(
                        children
                            .into_iter()
                            .filter(|d| seen_manifests.insert(d.digest.clone())),
                    );
                }
                Parsed::Manifest { config, layers } => {
                    for blob in std::iter::once(config).chain(layers) {
                        if blob.is_foreign() {
                            continue;
                        }
                        if seen_blobs.insert(blob.digest.clone()) {
                            blobs.push(ClosureBlob {
                                digest: blob.digest,
                                size: blob.size,
                            });
                        }
                    }
                }
            }
            manifests.push(ClosureManifest {
                digest: manifest.digest,
                media_type,
                bytes: manifest.bytes,
                depth,
            });
        }
        level = next;
        depth += 1;
    }
    Ok(Closure { manifests, blobs })
}

/// Push manifests by digest, deepest first, so a registry only ever sees a manifest whose
/// children are already there.
async fn push_manifests(
    dst: &Registry,
    repository: &str,
    manifests: &[ClosureManifest],
    scope: &str,
    progress: &Progress,
) -> Result<(), CopyError> {
    let max_depth = manifests.iter().map(|m| m.depth).max().unwrap_or(0);
    for depth in (1..=max_depth).rev() {
        futures_util::stream::iter(
            manifests
                .iter()
                .filter(|m| m.depth == depth)
                .map(Ok::<_, CopyError>),
        )
        .try_for_each_concurrent(8, |m| async move {
            if dst
                .head_manifest(repository, &m.digest, scope)
                .await?
                .as_deref()
                != Some(m.digest.as_str())
            {
                dst.put_manifest(repository, &m.digest, m.bytes.clone(), &m.media_type, scope)
                    .await?;
            }
            Progress::add(&progress.0.manifests_pushed, 1);
            Ok(())
        })
        .await?;
    }
    Ok(())
}

struct BlobCopy<'a> {
    src: &'a Registry,
    dst: &'a Registry,
    src_repository: &'a str,
    dst_repository: &'a str,
    src_scope: &'a str,
    dst_scope: &'a str,
    /// Source and destination are repositories of one registry: try a cross-repository mount.
    mount: bool,
    progress: &'a Progress,
    settings: &'a EngineSettings,
}

impl BlobCopy<'_> {
    async fn copy_with_retries(&self, blob: &ClosureBlob) -> Result<BlobAction, CopyError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.copy_once(blob).await {
                Ok(action) => return Ok(action),
                Err(e) if e.is_transient() && attempt < self.settings.max_attempts => {
                    let wait = e
                        .retry_after()
                        .filter(|w| *w <= self.settings.max_retry_after)
                        .unwrap_or_else(|| crate::registry::backoff(attempt));
                    tracing::warn!(digest = %blob.digest, error = %e, attempt, ?wait, "blob copy failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn copy_once(&self, blob: &ClosureBlob) -> Result<BlobAction, CopyError> {
        if self
            .dst
            .has_blob(self.dst_repository, &blob.digest, self.dst_scope)
            .await?
        {
            return Ok(BlobAction::Skipped);
        }
        let (location, response) = if self.mount {
            let location = match self
                .dst
                .mount_blob(
                    self.dst_repository,
                    &blob.digest,
                    self.src_repository,
                    self.dst_scope,
                )
                .await
            {
                Ok(Mount::Mounted) => return Ok(BlobAction::Mounted),
                Ok(Mount::Upload(location)) => location,
                // Credentials that may push here but not read the source repository cannot
                // mount: upload instead.
                Err(CopyError::AuthenticationFailed { .. }) => {
                    self.dst
                        .start_upload(self.dst_repository, self.dst_scope)
                        .await?
                }
                Err(e) => return Err(e),
            };
            let response = self
                .src
                .get_blob(self.src_repository, &blob.digest, self.src_scope)
                .await?;
            (location, response)
        } else {
            // Open the upload and start reading the source at once: one round trip less per
            // blob, which is most of the cost of small blobs.
            tokio::try_join!(
                self.dst.start_upload(self.dst_repository, self.dst_scope),
                self.src
                    .get_blob(self.src_repository, &blob.digest, self.src_scope),
            )?
        };
        if let Some(length) = response.content_length().filter(|l| *l != blob.size) {
            return Err(self.mismatch(
                blob,
                format!(
                    "the source sent {length} bytes where the manifest says {}",
                    blob.size
                ),
            ));
        }
        let verdict = Arc::new(Mutex::new(None));
        let counted = Arc::new(AtomicU64::new(0));
        let stream = VerifyingStream {
            inner: Box::pin(response.bytes_stream()),
            hasher: BlobHasher::for_digest(&blob.digest),
            expected: blob.digest.clone(),
            size: blob.size,
            seen: 0,
            held: None,
            progress: self.progress.clone(),
            counted: counted.clone(),
            verdict: verdict.clone(),
            done: false,
        };
        let result = self
            .dst
            .finish_upload(
                &location,
                &blob.digest,
                blob.size,
                reqwest::Body::wrap_stream(stream),
                self.dst_scope,
            )
            .await;
        let problem = verdict.lock().unwrap_or_else(|p| p.into_inner()).take();
        if result.is_err() || problem.is_some() {
            // The blob will be sent again (or not at all): take back what this attempt counted.
            self.progress
                .0
                .bytes
                .fetch_sub(counted.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        match (result, problem) {
            (_, Some(StreamProblem::Mismatch(detail))) => Err(self.mismatch(blob, detail)),
            (_, Some(StreamProblem::Source(detail))) => Err(CopyError::Unreachable {
                side: Side::Source,
                registry: self.src.name().to_string(),
                detail: format!("reading blob {} failed: {detail}", blob.digest),
            }),
            (Ok(()), None) => Ok(BlobAction::Copied),
            (Err(e), None) => Err(e),
        }
    }

    fn mismatch(&self, blob: &ClosureBlob, detail: String) -> CopyError {
        CopyError::DigestMismatch {
            side: Side::Source,
            registry: self.src.name().to_string(),
            digest: blob.digest.clone(),
            detail,
        }
    }
}

enum StreamProblem {
    Mismatch(String),
    Source(String),
}

enum BlobHasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl BlobHasher {
    fn for_digest(digest: &str) -> BlobHasher {
        if digest.starts_with("sha512:") {
            BlobHasher::Sha512(sha2::Sha512::new())
        } else {
            BlobHasher::Sha256(sha2::Sha256::new())
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            BlobHasher::Sha256(h) => h.update(bytes),
            BlobHasher::Sha512(h) => h.update(bytes),
        }
    }

    fn finish(&mut self) -> String {
        match self {
            BlobHasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize_reset())),
            BlobHasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize_reset())),
        }
    }
}

/// Passes a blob from source to destination, hashing and counting on the way. It holds back the
/// last chunk until the whole blob is verified, so the destination never receives all the bytes
/// of a blob whose digest does not match.
struct VerifyingStream {
    inner: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>,
    hasher: BlobHasher,
    expected: String,
    size: u64,
    seen: u64,
    held: Option<Bytes>,
    progress: Progress,
    /// Bytes this stream added to `progress`, to take back if the attempt fails.
    counted: Arc<AtomicU64>,
    verdict: Arc<Mutex<Option<StreamProblem>>>,
    done: bool,
}

impl VerifyingStream {
    fn fail(
        &mut self,
        problem: StreamProblem,
    ) -> std::task::Poll<Option<Result<Bytes, std::io::Error>>> {
        let message = match &problem {
            StreamProblem::Mismatch(m) | StreamProblem::Source(m) => m.clone(),
        };
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(problem);
        self.done = true;
        self.held = None;
        std::task::Poll::Ready(Some(Err(std::io::Error::other(message))))
    }
}

impl futures_util::Stream for VerifyingStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match self.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    let detail = crate::registry::transport::error_chain(&e);
                    return self.fail(StreamProblem::Source(detail));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    self.seen += chunk.len() as u64;
                    if self.seen > self.size {
                        let detail = format!(
                            "the source sent more than the {} bytes the manifest names",
                            self.size
                        );
                        return self.fail(StreamProblem::Mismatch(detail));
                    }
                    self.hasher.update(&chunk);
                    Progress::add(&self.progress.0.bytes, chunk.len() as u64);
                    self.counted
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    if let Some(previous) = self.held.replace(chunk) {
                        return Poll::Ready(Some(Ok(previous)));
                    }
                }
                Poll::Ready(None) => {
                    if self.seen != self.size {
                        let detail =
                            format!("the source sent {} of {} bytes", self.seen, self.size);
                        return self.fail(StreamProblem::Mismatch(detail));
                    }
                    let actual = self.hasher.finish();
                    if actual != self.expected {
                        let detail = format!("the bytes hash to {actual}");
                        return self.fail(StreamProblem::Mismatch(detail));
                    }
                    self.done = true;
                    return Poll::Ready(self.held.take().map(Ok));
                }
            }
        }
    }
}

/// The digest a reference (tag or digest) resolves to, `None` when the registry has no such
/// manifest. One HEAD (plus authentication).
pub async fn resolve_digest(
    reference: &str,
    endpoint: &EndpointOptions,
    side: Side,
    settings: &EngineSettings,
) -> Result<Option<String>, CopyError> {
    let reference = Reference::parse(reference.trim()).map_err(spec_error)?;
    let registry = Registry::connect(side, &reference, endpoint, settings).await?;
    let tag_or_digest = reference.digest().or(reference.tag()).unwrap_or("latest");
    registry
        .head_manifest(
            reference.repository(),
            tag_or_digest,
            &repository_scope(reference.repository(), false),
        )
        .await
}

/// What `bundlecopy inspect` reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InspectReport {
    pub reference: String,
    pub digest: String,
    pub media_type: String,
    pub bundle: BundleInfo,
    /// Each invocation and component image with the digest the index gives it.
    pub images: Vec<InspectImage>,
    /// The relocation map as cnab-to-oci computes it on pull (familiar names).
    pub relocation_map: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InspectImage {
    pub name: String,
    pub image: String,
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

/// Read a bundle without copying it.
pub async fn inspect_bundle(
    reference: &str,
    endpoint: &EndpointOptions,
    settings: &EngineSettings,
) -> Result<InspectReport, CopyError> {
    let reference = Reference::parse(reference.trim()).map_err(spec_error)?;
    let registry = Registry::connect(Side::Source, &reference, endpoint, settings).await?;
    let scope = repository_scope(reference.repository(), false);
    let bundle = read_bundle(&registry, &reference, &scope).await?;
    Ok(InspectReport {
        reference: reference.to_string(),
        digest: bundle.index.digest.clone(),
        media_type: bundle.bundle_index.media_type.clone(),
        bundle: BundleInfo {
            name: bundle.bundle.name.clone(),
            version: bundle.bundle.version.clone(),
        },
        relocation_map: bundle::relocation_map(&bundle.images, &reference.familiar_name()),
        images: bundle
            .images
            .iter()
            .map(|i| InspectImage {
                name: i.name.clone(),
                image: i.image.clone(),
                digest: i.digest.clone(),
                media_type: i.media_type.clone(),
                size: i.size,
            })
            .collect(),
    })
}
