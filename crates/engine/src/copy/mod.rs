//! A copy, as a pipeline: read the source bundle, plan (`plan`), find its referrers
//! (`referrers`), execute (`execute`), verify the index the destination stored. The engine
//! shared by the CLI and the operator.

mod execute;
pub mod plan;
mod progress;
pub mod referrers;
pub mod source;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bundle::BundleImage;
use crate::error::{CopyError, Side};
use crate::reference::{Reference, derive_destination};
use crate::registry::{Access, Registry};
use crate::settings::{EndpointOptions, EngineSettings, ReferrerSelection};
use plan::DestinationState;
pub use progress::{Progress, ProgressSnapshot};
pub use referrers::{FoundBy, Referrer};
use source::SourceBundle;

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
    /// Which signatures, attestations and SBOMs travel with the bundle (default: all).
    pub referrers: ReferrerSelection,
    pub settings: EngineSettings,
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
    /// The referrers (signatures, attestations, SBOMs) the destination now holds with the
    /// bundle, as found at the source; absent when the request asked for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrers: Option<Vec<Referrer>>,
    pub progress: ProgressSnapshot,
}

fn spec_error(e: impl std::fmt::Display) -> CopyError {
    CopyError::InvalidSpec(e.to_string())
}

/// Parse a reference as given by a user.
pub fn parse_reference(text: &str) -> Result<Reference, CopyError> {
    Reference::parse(text.trim()).map_err(spec_error)
}

/// The two ends of a copy, connected.
struct Ends {
    source: Reference,
    destination: Reference,
    src: Registry,
    dst: Registry,
}

/// Copy a bundle: read it, plan, find its referrers, execute, verify (docs/architecture.md,
/// "One copy"). A destination that holds the bundle already still receives the referrers it
/// misses (a signature added upstream later).
pub async fn copy_bundle(
    request: &CopyRequest,
    progress: &Progress,
) -> Result<CopyOutcome, CopyError> {
    let ends = connect(request).await?;
    tracing::info!(source = %ends.source, destination = %ends.destination,
        source_transport = ends.src.transport().describe(), destination_transport = ends.dst.transport().describe(),
        "reading the bundle");
    let bundle = source::read_bundle(&ends.src, &ends.source).await?;
    let dst_reference = destination_reference(&ends.destination, &bundle)?;
    let existing = ends.dst.head_manifest(&dst_reference).await?;
    let state = plan::destination_state(
        existing,
        &bundle.index.digest,
        request.force,
        &ends.destination,
    )?;
    let up_to_date = state == DestinationState::UpToDate;
    if up_to_date && !request.referrers.copy {
        tracing::info!(destination = %ends.destination, digest = %bundle.index.digest, "destination is up to date");
        return Ok(outcome(&ends, &bundle, true, None, progress.snapshot()));
    }
    let concurrency = request.settings.max_concurrent_blobs;
    let (plan, discovery) = closure_and_referrers(
        &ends.src,
        ends.source.repository(),
        &bundle,
        &request.referrers,
        concurrency,
    )
    .await?;
    let generations = referrer_generations(&ends, &discovery, concurrency).await?;
    let work = Work {
        bundle: (!up_to_date).then_some(&plan),
        generations: &generations,
        discovery: &discovery,
    };
    execute(&ends, &bundle, work, &dst_reference, request, progress).await?;
    tracing::info!(destination = %ends.destination, digest = %bundle.index.digest,
        referrers = discovery.referrers.len(), up_to_date, "bundle copied");
    Ok(outcome(
        &ends,
        &bundle,
        up_to_date,
        request.referrers.copy.then(|| discovery.reports()),
        progress.snapshot(),
    ))
}

/// The bundle's closure, and the referrers of every digest in it (the index's too).
pub(crate) async fn closure_and_referrers(
    src: &Registry,
    repository: &str,
    bundle: &SourceBundle,
    selection: &ReferrerSelection,
    concurrency: usize,
) -> Result<(plan::Plan, referrers::Discovery), CopyError> {
    let plan = plan::walk_closure(
        src,
        repository,
        &bundle.bundle_index,
        &bundle.config_manifest,
        concurrency,
    )
    .await?;
    let subjects: Vec<String> = std::iter::once(bundle.index.digest.clone())
        .chain(plan.manifests.iter().map(|m| m.digest.clone()))
        .collect();
    let discovery = referrers::discover(src, repository, &subjects, selection, concurrency).await?;
    Ok((plan, discovery))
}

/// The referrers found, generation by generation, each with the closure of its manifests.
async fn referrer_generations<'a>(
    ends: &Ends,
    discovery: &'a referrers::Discovery,
    concurrency: usize,
) -> Result<Vec<execute::Generation<'a>>, CopyError> {
    let deepest = discovery
        .referrers
        .iter()
        .map(|r| r.generation)
        .max()
        .unwrap_or(0);
    let mut generations = Vec::with_capacity(deepest);
    for generation in 1..=deepest {
        let referrers: Vec<&referrers::FoundReferrer> = discovery
            .referrers
            .iter()
            .filter(|r| r.generation == generation)
            .collect();
        let roots: Vec<crate::registry::Manifest> =
            referrers.iter().map(|r| r.manifest.clone()).collect();
        let plan = plan::walk_from(&ends.src, ends.source.repository(), &roots, concurrency)
            .await
            .map_err(|e| e.for_referrer(|| "reading the manifests of the referrers".into()))?;
        generations.push(execute::Generation { referrers, plan });
    }
    Ok(generations)
}

/// Parse both references and connect to both registries at once.
async fn connect(request: &CopyRequest) -> Result<Ends, CopyError> {
    let source = parse_reference(&request.source)?;
    let destination =
        derive_destination(&source, request.destination.trim()).map_err(spec_error)?;
    let settings = &request.settings;
    let access = plan::destination_access(&source, &destination);
    let (src, dst) = tokio::try_join!(
        Registry::connect(
            Side::Source,
            &source,
            Access::Pull,
            &request.source_endpoint,
            settings
        ),
        Registry::connect(
            Side::Destination,
            &destination,
            access,
            &request.destination_endpoint,
            settings
        ),
    )?;
    Ok(Ends {
        source,
        destination,
        src,
        dst,
    })
}

/// The tag the index is written under (the source digest when the destination names none); a
/// destination pinned to another digest cannot receive this bundle.
fn destination_reference(
    destination: &Reference,
    bundle: &SourceBundle,
) -> Result<String, CopyError> {
    let source_digest = &bundle.index.digest;
    if let Some(wanted) = destination.digest()
        && wanted != source_digest
    {
        return Err(CopyError::InvalidSpec(format!(
            "destination {destination} names digest {wanted}, but the source bundle is {source_digest}"
        )));
    }
    Ok(destination
        .tag()
        .map_or_else(|| source_digest.clone(), str::to_string))
}

/// What a copy writes: the bundle's closure (unless the destination holds it already) and the
/// referrers.
struct Work<'a> {
    bundle: Option<&'a plan::Plan>,
    generations: &'a [execute::Generation<'a>],
    discovery: &'a referrers::Discovery,
}

/// Blobs, manifests, the referrers, then the index under its tag, last: when the tag moves,
/// its signatures are already there. The destination must store the index under the source's
/// digest.
async fn execute(
    ends: &Ends,
    bundle: &SourceBundle,
    work: Work<'_>,
    dst_reference: &str,
    request: &CopyRequest,
    progress: &Progress,
) -> Result<(), CopyError> {
    let referrer_plans = work.generations.iter().map(|g| &g.plan);
    let blobs = work
        .bundle
        .cloned()
        .unwrap_or_default()
        .with_blobs_of(referrer_plans.clone());
    let bundle_manifests = work.bundle.map_or(0, |p| p.manifests.len() as u64 + 1);
    let referrer_manifests: u64 = referrer_plans.map(|p| p.manifests.len() as u64).sum();
    progress.planned(
        blobs.blobs.len() as u64,
        blobs.total_bytes(),
        bundle_manifests + referrer_manifests,
    );
    tracing::info!(
        blobs = blobs.blobs.len(),
        manifests = bundle_manifests + referrer_manifests,
        referrers = work.discovery.referrers.len(),
        bytes = blobs.total_bytes(),
        "copying"
    );
    let concurrency = request.settings.max_concurrent_blobs;
    execute::transfer_blobs(&ends.src, &ends.dst, &blobs, concurrency, progress).await?;
    let index = &bundle.index;
    let media_type = &bundle.bundle_index.media_type;
    if let Some(plan) = work.bundle {
        execute::push_manifests(&ends.dst, plan, progress).await?;
        if !work.discovery.referrers.is_empty() {
            // Referrers of the index need it there first; its tag moves last.
            ends.dst
                .put_manifest(&index.digest, index.bytes.clone(), media_type)
                .await?;
        }
    }
    execute::push_referrers(
        &ends.dst,
        work.generations,
        &work.discovery.tag_indexes,
        progress,
    )
    .await?;
    if work.bundle.is_none() {
        return Ok(());
    }
    let pushed = ends
        .dst
        .put_manifest(dst_reference, index.bytes.clone(), media_type)
        .await?;
    progress.manifest_pushed();
    verify(&ends.destination, &index.digest, pushed)
}

/// The digest the destination reports for the pushed index must be the source's.
fn verify(
    destination: &Reference,
    source_digest: &str,
    pushed: Option<String>,
) -> Result<(), CopyError> {
    match pushed.filter(|d| d != source_digest) {
        Some(pushed) => Err(CopyError::DigestMismatch {
            side: Side::Destination,
            registry: destination.registry().to_string(),
            digest: source_digest.to_string(),
            detail: format!("the destination stored the index as {pushed}"),
        }),
        None => Ok(()),
    }
}

fn outcome(
    ends: &Ends,
    bundle: &SourceBundle,
    up_to_date: bool,
    referrers: Option<Vec<Referrer>>,
    progress: ProgressSnapshot,
) -> CopyOutcome {
    let images = relocated_images(&bundle.images, &ends.destination.name());
    let digest = bundle.index.digest.clone();
    CopyOutcome {
        source: ends.source.to_string(),
        source_digest: digest.clone(),
        destination: ends.destination.to_string(),
        destination_digest: digest,
        up_to_date,
        bundle: BundleInfo::of(bundle),
        relocation_map: images
            .iter()
            .map(|i| (i.image.clone(), i.relocated.clone()))
            .collect(),
        images,
        referrers,
        progress,
    }
}

impl BundleInfo {
    pub(crate) fn of(bundle: &SourceBundle) -> BundleInfo {
        BundleInfo {
            name: bundle.bundle.name.clone(),
            version: bundle.bundle.version.clone(),
        }
    }
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
