//! The two ends of a copy, behind two small traits: `ReadEnd` (resolve a tag, manifests by
//! digest, blob streams) and `WriteEnd` (blobs, manifests, the tag last). A registry is both; a
//! layout directory or archive is read by `LayoutReader` and written by `LayoutWriter`. The copy
//! pipeline (`copy_bundle`, `execute`) and `inspect` see only the traits.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::plan::{ClosureManifest, ManifestSource, Plan};
use super::referrers::{Discovery, FoundBy, FoundReferrer, Generation, ReferrerSource};
use crate::error::CopyError;
use crate::layout::archive::{ArchiveWriter, Contents};
use crate::layout::dir::DirWriter;
use crate::layout::index::NewEntry;
use crate::layout::reader::LayoutReader;
use crate::registry::{BlobAction, BlobRef, Manifest, Presence, Registry, RetryPolicy};
use crate::verify::{BlobStream, StreamProblem, Verification, VerifyingStream};

/// Where a bundle is read from, with its referrers.
pub trait ReadEnd: ReferrerSource {
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

/// What a copy writes, known before the first write.
pub struct Writing<'a> {
    /// The bundle's closure; `None` when the destination holds the bundle and takes only
    /// referrers.
    pub bundle: Option<&'a Plan>,
    /// Every blob to bring: the bundle's (when it is written) and the referrers'.
    pub blobs: &'a Plan,
    /// The referrers, generation by generation, each with the closure of its manifests.
    pub generations: &'a [Generation<'a>],
    pub discovery: &'a Discovery,
    /// The tag the index goes under.
    pub tag: &'a str,
    pub index: &'a Manifest,
}

/// What an end must write to gain the referrers it lacks of a bundle it holds already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferrerUpdate {
    /// Nothing: it holds every one.
    Nothing,
    /// The referrers alone.
    Referrers,
    /// The bundle again with its referrers (an archive is written whole).
    Everything,
}

/// Where a bundle is written: blobs, then manifests, then the referrers, then the index under
/// its tag, then `commit`.
pub trait WriteEnd: Sync {
    /// The digest the tag names here, if any.
    fn tagged(&self, tag: &str) -> impl Future<Output = Result<Option<String>, CopyError>> + Send;
    /// What this end must write to hold `referrers` too, when it holds the bundle (a registry
    /// checks each referrer as it writes it).
    fn referrer_update(&self, _referrers: &[FoundReferrer]) -> ReferrerUpdate {
        ReferrerUpdate::Referrers
    }
    /// Called once the plan is known, before any write.
    fn prepare(
        &mut self,
        writing: &Writing<'_>,
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
    /// Make the referrers, their manifests stored, findable by their subjects (a layout's
    /// `index.json` entries). A registry is written through `as_registry` instead.
    fn index_referrers(
        &self,
        _writing: &Writing<'_>,
    ) -> impl Future<Output = Result<(), CopyError>> + Send {
        async { Ok(()) }
    }
    /// Store the index under `tag`, last; the digest this end reports for it.
    fn tag_index(
        &self,
        tag: &str,
        index: &Manifest,
    ) -> impl Future<Output = Result<Option<String>, CopyError>> + Send;
    /// Make the copy visible (an archive is renamed to its name).
    fn commit(&self) -> impl Future<Output = Result<(), CopyError>> + Send;
    /// The registry, when this end is one (it takes referrers as it is sent them, through the
    /// referrers API or the tag schema).
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

    async fn prepare(&mut self, _: &Writing<'_>) -> Result<(), CopyError> {
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

impl ReferrerSource for LayoutReader {
    async fn referrers(&self, digest: &str) -> Result<Option<Vec<Bytes>>, CopyError> {
        LayoutReader::referrers(self, digest).await.map(Some)
    }

    async fn tags(&self) -> Result<Vec<String>, CopyError> {
        Ok(self.index().tags())
    }

    fn listed_by(&self) -> FoundBy {
        FoundBy::LayoutIndex
    }
}

/// A source of either kind (what `inspect` and `verify` read).
pub enum AnySource {
    Registry(Box<Registry>),
    Layout(Box<LayoutReader>),
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

impl ReferrerSource for AnySource {
    async fn referrers(&self, digest: &str) -> Result<Option<Vec<Bytes>>, CopyError> {
        match self {
            AnySource::Registry(registry) => ReferrerSource::referrers(&**registry, digest).await,
            AnySource::Layout(layout) => ReferrerSource::referrers(&**layout, digest).await,
        }
    }

    async fn tags(&self) -> Result<Vec<String>, CopyError> {
        match self {
            AnySource::Registry(registry) => ReferrerSource::tags(&**registry).await,
            AnySource::Layout(layout) => ReferrerSource::tags(&**layout).await,
        }
    }

    fn listed_by(&self) -> FoundBy {
        match self {
            AnySource::Registry(registry) => ReferrerSource::listed_by(&**registry),
            AnySource::Layout(layout) => ReferrerSource::listed_by(&**layout),
        }
    }
}

impl ReadEnd for AnySource {
    async fn get_manifest(&self, reference: &str) -> Result<Option<Manifest>, CopyError> {
        match self {
            AnySource::Registry(registry) => ReadEnd::get_manifest(&**registry, reference).await,
            AnySource::Layout(layout) => ReadEnd::get_manifest(&**layout, reference).await,
        }
    }

    fn missing(&self, reference: &str) -> String {
        match self {
            AnySource::Registry(registry) => ReadEnd::missing(&**registry, reference),
            AnySource::Layout(layout) => ReadEnd::missing(&**layout, reference),
        }
    }

    async fn read_blob(&self, digest: &str, limit: usize) -> Result<Bytes, CopyError> {
        match self {
            AnySource::Registry(registry) => ReadEnd::read_blob(&**registry, digest, limit).await,
            AnySource::Layout(layout) => ReadEnd::read_blob(&**layout, digest, limit).await,
        }
    }

    async fn open_blob(&self, blob: &BlobRef) -> Result<BlobStream, CopyError> {
        match self {
            AnySource::Registry(registry) => ReadEnd::open_blob(&**registry, blob).await,
            AnySource::Layout(layout) => ReadEnd::open_blob(&**layout, blob).await,
        }
    }

    fn stream_problem(&self, digest: &str, problem: StreamProblem) -> CopyError {
        match self {
            AnySource::Registry(registry) => ReadEnd::stream_problem(&**registry, digest, problem),
            AnySource::Layout(layout) => ReadEnd::stream_problem(&**layout, digest, problem),
        }
    }

    fn policy(&self) -> RetryPolicy {
        match self {
            AnySource::Registry(registry) => ReadEnd::policy(&**registry),
            AnySource::Layout(layout) => ReadEnd::policy(&**layout),
        }
    }

    fn as_registry(&self) -> Option<&Registry> {
        match self {
            AnySource::Registry(registry) => Some(registry),
            AnySource::Layout(_) => None,
        }
    }
}

/// How a layout lists a referrer in `index.json`: under cosign's tag when it has one; else with
/// no tag, as the source listed it (`artifactType`, `annotations`), to be found again by the
/// subject its manifest names.
fn layout_entry(found: &FoundReferrer) -> NewEntry {
    let manifest = &found.manifest;
    let mut descriptor = match &found.entry {
        Some(Value::Object(listed)) => listed.clone(),
        _ => Map::new(),
    };
    descriptor.insert(
        "mediaType".into(),
        Value::from(manifest.media_type.as_str()),
    );
    descriptor.insert("digest".into(), Value::from(manifest.digest.as_str()));
    descriptor.insert("size".into(), Value::from(manifest.bytes.len() as u64));
    if found.referrer.tag.is_none() && !descriptor.contains_key("artifactType") {
        let artifact_type = found.referrer.artifact_type.as_str();
        descriptor.insert("artifactType".into(), Value::from(artifact_type));
    }
    NewEntry::from_descriptor(found.referrer.tag.as_deref(), descriptor)
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

    fn referrer_update(&self, referrers: &[FoundReferrer]) -> ReferrerUpdate {
        let held = |entry: NewEntry| match self {
            LayoutWriter::Directory(dir) => dir.holds(&entry),
            LayoutWriter::Archive(archive) => archive.holds(&entry),
        };
        if referrers.iter().map(layout_entry).all(held) {
            ReferrerUpdate::Nothing
        } else if matches!(self, LayoutWriter::Archive(_)) {
            ReferrerUpdate::Everything
        } else {
            ReferrerUpdate::Referrers
        }
    }

    async fn prepare(&mut self, writing: &Writing<'_>) -> Result<(), CopyError> {
        match self {
            LayoutWriter::Directory(dir) => dir.prepare().await,
            LayoutWriter::Archive(archive) => {
                let index = writing.index;
                let referrer_manifests = writing.generations.iter().flat_map(|g| &g.plan.manifests);
                let bundle_manifests = writing.bundle.iter().flat_map(|p| &p.manifests);
                let mut entries: Vec<NewEntry> = writing
                    .discovery
                    .referrers
                    .iter()
                    .map(layout_entry)
                    .collect();
                entries.push(NewEntry::tagged(
                    writing.tag,
                    &index.media_type,
                    &index.digest,
                    index.bytes.len() as u64,
                ));
                let contents = Contents {
                    blobs: writing
                        .blobs
                        .blobs
                        .iter()
                        .map(|b| (b.digest.as_str(), b.size))
                        .collect(),
                    manifests: bundle_manifests
                        .chain(referrer_manifests)
                        .map(|m| (m.digest.as_str(), m.bytes.len() as u64))
                        .chain([(index.digest.as_str(), index.bytes.len() as u64)])
                        .collect(),
                    entries,
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

    async fn index_referrers(&self, writing: &Writing<'_>) -> Result<(), CopyError> {
        match self {
            LayoutWriter::Directory(dir) => {
                let entries = writing.discovery.referrers.iter().map(layout_entry);
                dir.add_entries(entries.collect()).await
            }
            // Its index.json, laid out with the referrers' entries, is written with the tag.
            LayoutWriter::Archive(_) => Ok(()),
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
