//! Live counters of a running copy, readable from another task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::registry::BlobAction;

/// Live counters of a running copy; clone it to watch from another task.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    blobs: AtomicU64,
    copied: AtomicU64,
    mounted: AtomicU64,
    skipped: AtomicU64,
    /// Shared with the registry client's blob transfers, which count as bytes pass.
    bytes: Arc<AtomicU64>,
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

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
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

    /// The plan is known: how much there is to do.
    pub(super) fn planned(&self, blobs: u64, total_bytes: u64, manifests: u64) {
        add(&self.0.blobs, blobs);
        add(&self.0.total_bytes, total_bytes);
        add(&self.0.manifests, manifests);
    }

    pub(super) fn blob_done(&self, action: BlobAction) {
        add(
            match action {
                BlobAction::Copied => &self.0.copied,
                BlobAction::Mounted => &self.0.mounted,
                BlobAction::Skipped => &self.0.skipped,
            },
            1,
        );
    }

    pub(super) fn manifest_pushed(&self) {
        add(&self.0.manifests_pushed, 1);
    }

    /// The byte counter blob transfers add to.
    pub(super) fn byte_counter(&self) -> &Arc<AtomicU64> {
        &self.0.bytes
    }
}
