//! The copy plan and its execution: the engine shared by the CLI and the controller.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::credentials::DockerConfig;
use crate::error::{CopyError, Side};

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

/// Copy a bundle. See DESIGN.md section 2.
pub async fn copy_bundle(
    _request: &CopyRequest,
    _progress: &Progress,
) -> Result<CopyOutcome, CopyError> {
    todo!()
}

/// The digest a reference (tag or digest) resolves to, `None` when the registry has no such
/// manifest. One HEAD (plus authentication).
pub async fn resolve_digest(
    _reference: &str,
    _endpoint: &EndpointOptions,
    _side: Side,
    _settings: &EngineSettings,
) -> Result<Option<String>, CopyError> {
    todo!()
}
