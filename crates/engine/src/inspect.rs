//! Read a bundle without copying it (`bundlecopy inspect`), check every byte of one
//! (`bundlecopy verify`), resolve a reference to a digest (the operator's check of a tag), list
//! a bundle's referrers (the operator's check for signatures added later) and a repository's
//! tags (what a mirror chooses from).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::TryStreamExt;
use serde::Serialize;

use crate::bundle;
use crate::copy::ends::{AnySource, ReadEnd};
use crate::copy::plan::walk_from;
use crate::copy::referrers::Referrer;
use crate::copy::source::{SourceBundle, read_bundle, tag_or_digest};
use crate::copy::{BundleInfo, closure_and_referrers, parse_location, parse_reference};
use crate::error::{CopyError, Side};
use crate::layout::location::Location;
use crate::layout::reader::LayoutReader;
use crate::registry::{Access, Manifest, Registry};
use crate::settings::{EndpointOptions, EngineSettings, ReferrerSelection};
use crate::verify;

/// The digest a reference (tag or digest) resolves to, `None` when the registry has no such
/// manifest. One HEAD (plus authentication).
pub async fn resolve_digest(
    reference: &str,
    endpoint: &EndpointOptions,
    side: Side,
    settings: &EngineSettings,
) -> Result<Option<String>, CopyError> {
    let reference = parse_reference(reference)?;
    let registry = Registry::connect(side, &reference, Access::Pull, endpoint, settings).await?;
    registry.head_manifest(tag_or_digest(&reference)).await
}

/// Every tag of a repository (`registry/name`, no tag or digest), following the registry's
/// pages. A repository the registry does not know is `SourceNotFound`.
pub async fn list_tags(
    repository: &str,
    endpoint: &EndpointOptions,
    settings: &EngineSettings,
) -> Result<Vec<String>, CopyError> {
    let reference = parse_reference(repository)?;
    if reference.tag().is_some() || reference.digest().is_some() {
        return Err(CopyError::InvalidSpec(format!(
            "{repository:?} names a tag or digest; give the repository alone, e.g. {}",
            reference.name()
        )));
    }
    let registry =
        Registry::connect(Side::Source, &reference, Access::Pull, endpoint, settings).await?;
    registry.list_tags().await
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
    /// Signatures, attestations and SBOMs of the bundle's manifests (and of each other).
    pub referrers: Vec<Referrer>,
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

/// A source opened for reading, with what the reports call it.
struct Opened {
    source: AnySource,
    /// The location with its tag (or digest).
    name: String,
    /// The repository or layout, for messages and the relocation map.
    repository: String,
    /// The tag or digest to read.
    reference: String,
    /// The repository's name in the relocation map as cnab-to-oci computes it on pull.
    relocated_in: String,
}

/// Open a registry reference or a layout (`oci:`, `oci-archive:`) for reading.
async fn open(
    reference: &str,
    endpoint: &EndpointOptions,
    settings: &EngineSettings,
) -> Result<Opened, CopyError> {
    match parse_location(reference, true)? {
        Location::Registry(reference) => {
            let registry =
                Registry::connect(Side::Source, &reference, Access::Pull, endpoint, settings)
                    .await?;
            Ok(Opened {
                source: AnySource::Registry(Box::new(registry)),
                name: reference.to_string(),
                repository: reference.repository().to_string(),
                reference: tag_or_digest(&reference).to_string(),
                relocated_in: reference.familiar_name(),
            })
        }
        Location::Layout(layout) => {
            let reader = LayoutReader::open(&layout, Side::Source).await?;
            let tag = reader.reference()?;
            let repository = reader.name().to_string();
            Ok(Opened {
                name: layout.with_tag(&tag).to_string(),
                relocated_in: repository.clone(),
                repository,
                reference: tag,
                source: AnySource::Layout(Box::new(reader)),
            })
        }
    }
}

/// Read a bundle without copying it, from a registry or a layout (`oci:`, `oci-archive:`), with
/// the referrers `selection` asks for.
pub async fn inspect_bundle(
    reference: &str,
    endpoint: &EndpointOptions,
    settings: &EngineSettings,
    selection: &ReferrerSelection,
) -> Result<InspectReport, CopyError> {
    let opened = open(reference, endpoint, settings).await?;
    let bundle = read_bundle(&opened.source, &opened.name, &opened.reference).await?;
    let referrers = bundle_referrers(
        &opened.source,
        &opened.repository,
        &bundle,
        settings,
        selection,
    )
    .await?;
    Ok(report(
        opened.name,
        &bundle,
        &opened.relocated_in,
        referrers,
    ))
}

fn report(
    reference: String,
    bundle: &SourceBundle,
    repository: &str,
    referrers: Vec<Referrer>,
) -> InspectReport {
    InspectReport {
        reference,
        digest: bundle.index.digest.clone(),
        media_type: bundle.bundle_index.media_type.clone(),
        bundle: BundleInfo::of(bundle),
        relocation_map: bundle::relocation_map(&bundle.images, repository),
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
        referrers,
    }
}

/// What `bundlecopy verify` checked.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub reference: String,
    pub digest: String,
    pub bundle: BundleInfo,
    /// Manifests read and checked, the index included.
    pub manifests: u64,
    /// Blobs read whole and checked.
    pub blobs: u64,
    pub bytes: u64,
    /// The signatures, attestations and SBOMs checked with the bundle (their manifests and
    /// blobs are counted above).
    pub referrers: Vec<Referrer>,
}

/// Read every manifest and every blob of a bundle, wherever it is, and of the referrers
/// `selection` asks for, and check each against its digest and size; the first mismatch is the
/// error.
pub async fn verify_bundle(
    reference: &str,
    endpoint: &EndpointOptions,
    settings: &EngineSettings,
    selection: &ReferrerSelection,
) -> Result<VerifyReport, CopyError> {
    let Opened {
        source: src,
        name,
        repository,
        reference,
        ..
    } = open(reference, endpoint, settings).await?;
    let src = &src;
    let bundle = read_bundle(src, &name, &reference).await?;
    let concurrency = settings.max_concurrent_blobs.max(1);
    let (bundle_plan, discovery) =
        closure_and_referrers(src, &repository, &bundle, selection, concurrency).await?;
    let roots: Vec<Manifest> = discovery
        .referrers
        .iter()
        .map(|r| r.manifest.clone())
        .collect();
    let referrer_plan = walk_from(src, &repository, &roots, concurrency)
        .await
        .map_err(|e| e.for_referrer(|| "reading the manifests of the referrers".into()))?;
    let manifests = bundle_plan.manifests.len() + 1 + referrer_plan.manifests.len();
    let plan = bundle_plan.with_blobs_of([&referrer_plan]);
    let bytes = Arc::new(AtomicU64::new(0));
    futures_util::stream::iter(plan.blob_order().into_iter().map(Ok::<_, CopyError>))
        .try_for_each_concurrent(concurrency, |blob| {
            let bytes = bytes.clone();
            async move {
                let stream = src.open_blob(&blob).await?;
                verify::check(stream, &blob.digest, blob.size, &bytes)
                    .await
                    .map_err(|problem| src.stream_problem(&blob.digest, problem))
            }
        })
        .await?;
    Ok(VerifyReport {
        reference: name,
        digest: bundle.index.digest.clone(),
        bundle: BundleInfo::of(&bundle),
        manifests: manifests as u64,
        blobs: plan.blobs.len() as u64,
        bytes: bytes.load(Ordering::Relaxed),
        referrers: discovery.reports(),
    })
}

/// The referrers of the bundle at `reference` that `selection` asks for, as a copy would find
/// them (sorted by subject and digest).
pub async fn list_referrers(
    reference: &str,
    endpoint: &EndpointOptions,
    side: Side,
    settings: &EngineSettings,
    selection: &ReferrerSelection,
) -> Result<Vec<Referrer>, CopyError> {
    let reference = parse_reference(reference)?;
    let registry = Registry::connect(side, &reference, Access::Pull, endpoint, settings).await?;
    let bundle = read_bundle(&registry, &reference.to_string(), tag_or_digest(&reference)).await?;
    let repository = reference.repository();
    let mut found = bundle_referrers(&registry, repository, &bundle, settings, selection).await?;
    found.sort();
    Ok(found)
}

async fn bundle_referrers(
    src: &impl ReadEnd,
    repository: &str,
    bundle: &SourceBundle,
    settings: &EngineSettings,
    selection: &ReferrerSelection,
) -> Result<Vec<Referrer>, CopyError> {
    if !selection.copy {
        return Ok(Vec::new());
    }
    let (_, discovery) = closure_and_referrers(
        src,
        repository,
        bundle,
        selection,
        settings.max_concurrent_blobs,
    )
    .await?;
    Ok(discovery.reports())
}
