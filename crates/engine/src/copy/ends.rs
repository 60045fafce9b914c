//! The two ends of a copy, behind two small traits: `ReadEnd` (resolve a tag, manifests by
//! digest, blob streams) and `WriteEnd` (blobs, manifests, the tag last). A registry is both; a
//! layout directory or archive is read by `LayoutReader` and written by `LayoutWriter`. The copy
//! pipeline (`copy_bundle`, `execute`) and `inspect` see only the traits.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;

use super::plan::{ClosureManifest, ManifestSource, Plan};
use crate::error::CopyError;
use crate::layout::archive::{ArchiveWriter, Contents};
use crate::layout::dir::DirWriter;
use crate::layout::reader::LayoutReader;
use crate::registry::{BlobAction, BlobRef, Manifest, Presence, Registry, RetryPolicy};
use crate::verify::{BlobStream, StreamProblem, Verification, VerifyingStream};

/// Where a bundle is read from.
pub trait ReadEnd: ManifestSource {
    /// The manifest a tag or digest names, checked against its digest; `None` when absent.
    fn get_manifest(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Option<Manifest>, CopyError>> + Send;
    /// Why `reference` is not there, for the `SourceNotFound` message.
    fn missing(&self, reference: &str) -> String;
    /// A small blob read whole and checked (bundle.json).
    fn read_blob(
        &self,
        digest: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Bytes, CopyError>> + Send;
    /// A blob's bytes, once; whoever reads them checks them (`verify`).
    fn open_blob(
        &self,
        blob: &BlobRef,
    ) -> impl Future<Output = Result<BlobStream, CopyError>> + Send;
    /// Whether this end serves the blob from bytes already read (`open_blob` then costs
    /// nothing): a registry destination uploads those rather than streaming from the source.
    fn held(&self, _digest: &str) -> bool {
        false
    }
    /// What a check of one of this end's blobs found wrong, in this end's terms.
    fn stream_problem(&self, digest: &str, problem: StreamProblem) -> CopyError;
    /// How often a blob read from here is tried.
    fn policy(&self) -> RetryPolicy;
    /// The registry, when this end is one (registry to registry copies mount and stream
    /// between the two clients).
    fn as_registry(&self) -> Option<&Registry> {
        None
    }
}

/// Where a bundle is written: blobs, then manifests, then the index under its tag, then
/// `commit`.
pub trait WriteEnd: Sync {
    /// The digest the tag names here, if any.
    fn tagged(&self, tag: &str) -> impl Future<Output = Result<Option<String>, CopyError>> + Send;
    /// Called once the plan is known, before any write.
    fn prepare(
        &mut self,
        plan: &Plan,
        tag: &str,
        index: &Manifest,
    ) -> impl Future<Output = Result<(), CopyError>> + Send;
    /// What this end can tell of a blob before `receive_blob` (a registry: one HEAD, sent
    /// ahead of the transfers).
    fn check_blob(
        &self,
        _blob: &BlobRef,
    ) -> impl Future<Output = Result<Presence, CopyError>> + Send {
        async { Ok(Presence::Unknown) }
    }
    /// Bring one blob from `source`, or nothing when it is here already (asked unless
    /// `presence` says).
    fn receive_blob<S: ReadEnd>(
        &self,
        source: &S,
        blob: &BlobRef,
        presence: Presence,
        bytes: &Arc<AtomicU64>,
    ) -> impl Future<Output = Result<BlobAction, CopyError>> + Send;
    /// Store a manifest of the closure by its digest, unless it is here already.
    fn store_manifest(
        &self,
        manifest: &ClosureManifest,
    ) -> impl Future<Output = Result<(), CopyError>> + Send;
    /// Store the index under `tag`, last; the digest this end reports for it.
    fn tag_index(
        &self,
        tag: &str,
        index: &Manifest,
    ) -> impl Future<Output = Result<Option<String>, CopyError>> + Send;
    /// Make the copy visible (an archive is renamed to its name).
    fn commit(&self) -> impl Future<Output = Result<(), CopyError>> + Send;
    /// The registry, when this end is one (referrers are written to registries only, so far).
    fn as_registry(&self) -> Option<&Registry> {
        None
    }
}

impl ReadEnd for Registry {
    async fn get_manifest(&self, reference: &str) -> Result<Option<Manifest>, CopyError> {
        Registry::get_manifest(self, reference).await
    }

    fn missing(&self, reference: &str) -> String {
        format!(
            "the registry has no manifest {reference} in {}",
            self.repository()
        )
    }

    async fn read_blob(&self, digest: &str, limit: usize) -> Result<Bytes, CopyError> {
        Registry::read_blob(self, digest, limit).await
    }

    async fn open_blob(&self, blob: &BlobRef) -> Result<BlobStream, CopyError> {
        Registry::open_blob(self, blob).await
    }

    fn stream_problem(&self, digest: &str, problem: StreamProblem) -> CopyError {
        Registry::stream_problem(self, digest, problem)
    }

    fn policy(&self) -> RetryPolicy {
        *Registry::policy(self)
    }

    fn as_registry(&self) -> Option<&Registry> {
        Some(self)
    }
}

impl WriteEnd for Registry {
    async fn tagged(&self, tag: &str) -> Result<Option<String>, CopyError> {
        self.head_manifest(tag).await
    }

    async fn prepare(&mut self, _: &Plan, _: &str, _: &Manifest) -> Result<(), CopyError> {
        Ok(())
    }

    async fn check_blob(&self, blob: &BlobRef) -> Result<Presence, CopyError> {
        Ok(if self.holds_blob(&blob.digest).await? {
            Presence::Present
        } else {
            Presence::Absent
        })
    }

    async fn receive_blob<S: ReadEnd>(
        &self,
        source: &S,
        blob: &BlobRef,
        presence: Presence,
        bytes: &Arc<AtomicU64>,
    ) -> Result<BlobAction, CopyError> {
        // Bytes already read are uploaded rather than fetched again, unless a mount (no bytes
        // at all) can bring them.
        let stream_from_source = !source.held(&blob.digest) || self.mounts();
        match source.as_registry().filter(|_| stream_from_source) {
            Some(registry) => self.transfer_blob(registry, blob, presence, bytes).await,
            None => {
                self.upload_blob(
                    blob,
                    presence,
                    || source.open_blob(blob),
                    |problem| source.stream_problem(&blob.digest, problem),
                    bytes,
                )
                .await
            }
        }
    }

    async fn store_manifest(&self, m: &ClosureManifest) -> Result<(), CopyError> {
        if self.head_manifest(&m.digest).await?.as_deref() != Some(m.digest.as_str()) {
            self.put_manifest(&m.digest, m.bytes.clone(), &m.media_type)
                .await?;
        }
        Ok(())
    }

    async fn tag_index(&self, tag: &str, index: &Manifest) -> Result<Option<String>, CopyError> {
        self.put_manifest(tag, index.bytes.clone(), &index.media_type)
            .await
    }

    async fn commit(&self) -> Result<(), CopyError> {
        Ok(())
    }

    fn as_registry(&self) -> Option<&Registry> {
        Some(self)
    }
}

impl ManifestSource for LayoutReader {
    fn fetch(
        &self,
        digest: &str,
    ) -> impl Future<Output = Result<Option<Manifest>, CopyError>> + Send {
        LayoutReader::get_manifest(self, digest)
    }

    fn name(&self) -> &str {
        LayoutReader::name(self)
    }
}

impl ReadEnd for LayoutReader {
    async fn get_manifest(&self, reference: &str) -> Result<Option<Manifest>, CopyError> {
        LayoutReader::get_manifest(self, reference).await
    }

    fn missing(&self, reference: &str) -> String {
        LayoutReader::missing(self, reference)
    }

    async fn read_blob(&self, digest: &str, limit: usize) -> Result<Bytes, CopyError> {
        LayoutReader::read_blob(self, digest, limit).await
    }

    async fn open_blob(&self, blob: &BlobRef) -> Result<BlobStream, CopyError> {
        LayoutReader::open_blob(self, &blob.digest, blob.size).await
    }

    fn stream_problem(&self, digest: &str, problem: StreamProblem) -> CopyError {
        LayoutReader::stream_problem(self, digest, problem)
    }

    fn policy(&self) -> RetryPolicy {
        // A file reads the same the next time.
        RetryPolicy::ONCE
    }
}

/// A source of either kind (what `inspect` and `verify` read).
pub enum AnySource {
    Registry(Box<Registry>),
    Layout(LayoutReader),
}

impl ManifestSource for AnySource {
    async fn fetch(&self, digest: &str) -> Result<Option<Manifest>, CopyError> {
        ReadEnd::get_manifest(self, digest).await
    }

    fn name(&self) -> &str {
        match self {
            AnySource::Registry(registry) => Registry::name(registry),
            AnySource::Layout(layout) => LayoutReader::name(layout),
        }
    }
}

impl ReadEnd for AnySource {
    async fn get_manifest(&self, reference: &str) -> Result<Option<Manifest>, CopyError> {
        match self {
            AnySource::Registry(registry) => ReadEnd::get_manifest(&**registry, reference).await,
            AnySource::Layout(layout) => ReadEnd::get_manifest(layout, reference).await,
        }
    }

    fn missing(&self, reference: &str) -> String {
        match self {
            AnySource::Registry(registry) => ReadEnd::missing(&**registry, reference),
            AnySource::Layout(layout) => ReadEnd::missing(layout, reference),
        }
    }

    async fn read_blob(&self, digest: &str, limit: usize) -> Result<Bytes, CopyError> {
        match self {
            AnySource::Registry(registry) => ReadEnd::read_blob(&**registry, digest, limit).await,
            AnySource::Layout(layout) => ReadEnd::read_blob(layout, digest, limit).await,
        }
    }

    async fn open_blob(&self, blob: &BlobRef) -> Result<BlobStream, CopyError> {
        match self {
            AnySource::Registry(registry) => ReadEnd::open_blob(&**registry, blob).await,
            AnySource::Layout(layout) => ReadEnd::open_blob(layout, blob).await,
        }
    }

    fn stream_problem(&self, digest: &str, problem: StreamProblem) -> CopyError {
        match self {
            AnySource::Registry(registry) => ReadEnd::stream_problem(&**registry, digest, problem),
            AnySource::Layout(layout) => ReadEnd::stream_problem(layout, digest, problem),
        }
    }

    fn policy(&self) -> RetryPolicy {
        match self {
            AnySource::Registry(registry) => ReadEnd::policy(&**registry),
            AnySource::Layout(layout) => ReadEnd::policy(layout),
        }
    }

    fn as_registry(&self) -> Option<&Registry> {
        match self {
            AnySource::Registry(registry) => Some(registry),
            AnySource::Layout(_) => None,
        }
    }
}

/// A layout directory or an archive being written.
pub enum LayoutWriter {
    Directory(DirWriter),
    Archive(ArchiveWriter),
}

impl WriteEnd for LayoutWriter {
    async fn tagged(&self, tag: &str) -> Result<Option<String>, CopyError> {
        Ok(match self {
            LayoutWriter::Directory(dir) => dir.tagged(tag),
            LayoutWriter::Archive(archive) => archive.tagged(tag),
        })
    }

    async fn prepare(&mut self, plan: &Plan, tag: &str, index: &Manifest) -> Result<(), CopyError> {
        match self {
            LayoutWriter::Directory(dir) => dir.prepare().await,
            LayoutWriter::Archive(archive) => {
                let contents = Contents {
                    blobs: plan
                        .blobs
                        .iter()
                        .map(|b| (b.digest.as_str(), b.size))
                        .collect(),
                    manifests: plan
                        .manifests
                        .iter()
                        .map(|m| (m.digest.as_str(), m.bytes.len() as u64))
                        .chain([(index.digest.as_str(), index.bytes.len() as u64)])
                        .collect(),
                    tag,
                    index_digest: &index.digest,
                    index_media_type: &index.media_type,
                    index_size: index.bytes.len() as u64,
                };
                archive.prepare(&contents).await
            }
        }
    }

    async fn receive_blob<S: ReadEnd>(
        &self,
        source: &S,
        blob: &BlobRef,
        _: Presence,
        bytes: &Arc<AtomicU64>,
    ) -> Result<BlobAction, CopyError> {
        let present = match self {
            LayoutWriter::Directory(dir) => dir.has_blob(&blob.digest, blob.size).await?,
            LayoutWriter::Archive(archive) => archive.has_blob(&blob.digest)?,
        };
        if present {
            return Ok(BlobAction::Skipped);
        }
        let write = |stream: VerifyingStream| async move {
            match self {
                LayoutWriter::Directory(dir) => dir.write_blob(&blob.digest, stream).await,
                LayoutWriter::Archive(archive) => archive.write_blob(&blob.digest, stream).await,
            }
        };
        let write = &write;
        source
            .policy()
            .run(&format!("copying blob {}", blob.digest), |_| async move {
                let stream = source.open_blob(blob).await?;
                let (stream, verification) =
                    Verification::start(stream, &blob.digest, blob.size, bytes);
                let written = write(stream).await;
                verification.finish(written, |problem| {
                    source.stream_problem(&blob.digest, problem)
                })
            })
            .await
            .map(|()| BlobAction::Copied)
    }

    async fn store_manifest(&self, m: &ClosureManifest) -> Result<(), CopyError> {
        match self {
            LayoutWriter::Directory(dir) => dir
                .put_manifest(&m.digest, m.bytes.clone(), &m.media_type)
                .await
                .map(drop),
            LayoutWriter::Archive(archive) => archive
                .put_manifest(&m.digest, m.bytes.clone())
                .await
                .map(drop),
        }
    }

    async fn tag_index(&self, tag: &str, index: &Manifest) -> Result<Option<String>, CopyError> {
        let digest = match self {
            LayoutWriter::Directory(dir) => {
                dir.put_manifest(tag, index.bytes.clone(), &index.media_type)
                    .await?
            }
            LayoutWriter::Archive(archive) => {
                archive.put_manifest(tag, index.bytes.clone()).await?
            }
        };
        Ok(Some(digest))
    }

    async fn commit(&self) -> Result<(), CopyError> {
        match self {
            LayoutWriter::Directory(_) => Ok(()),
            LayoutWriter::Archive(archive) => archive.commit().await,
        }
    }
}
