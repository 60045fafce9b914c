//! A copy, as a pipeline: read the source bundle, plan (`plan`), find its referrers
//! (`referrers`), execute (`execute`), verify the index the destination stored. Either end is a
//! registry, a layout directory or an archive, behind the traits of `ends`; referrers travel
//! between any two. The engine shared by the CLI and the operator.

pub mod ends;
mod execute;
pub mod plan;
mod progress;
pub mod referrers;
pub mod source;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bundle::BundleImage;
use crate::error::{CopyError, Side};
use crate::layout::archive::ArchiveWriter;
use crate::layout::dir::DirWriter;
use crate::layout::location::{LayoutKind, LayoutRef, Location};
use crate::layout::reader::LayoutReader;
use crate::reference::{Reference, derive_destination, is_bare_registry};
use crate::registry::{Access, Manifest, Registry};
use crate::settings::{EndpointOptions, EngineSettings, ReferrerSelection};
use ends::{LayoutWriter, ReadEnd, ReferrerUpdate, WriteEnd, Writing};
use plan::DestinationState;
pub use progress::{Progress, ProgressSnapshot};
pub use referrers::{FoundBy, Referrer};
use source::{SourceBundle, tag_or_digest};

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
    /// Accept `oci:DIR[:TAG]` and `oci-archive:FILE[:TAG]` (files on this machine) as either end:
    /// the CLI's, never the operator's (there `oci:name` is the Docker Hub image `oci`).
    pub layouts: bool,
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

/// Parse where a bundle is: with `layouts`, `oci:` and `oci-archive:` name local layouts.
pub fn parse_location(text: &str, layouts: bool) -> Result<Location, CopyError> {
    if layouts {
        Location::parse(text).map_err(spec_error)
    } else {
        parse_reference(text).map(Location::Registry)
    }
}

/// What a copy says about its two ends.
struct Names {
    source: String,
    /// The source repository (or layout), for messages of the closure walk.
    source_repository: String,
    destination: String,
    /// The destination registry (or layout), for messages.
    destination_name: String,
    /// Where the images are after the copy, for the relocation map (`WHERE@digest`).
    relocated_in: String,
    /// The tag the index goes under: none for a registry destination named by digest.
    tag: Option<String>,
    /// The digest a registry destination is pinned to.
    pinned: Option<String>,
}

/// Copy a bundle: read it, plan, find its referrers, execute, verify (docs/architecture.md,
/// "One copy"). A destination that holds the bundle already still receives the referrers it
/// misses (a signature added upstream later).
pub async fn copy_bundle(
    request: &CopyRequest,
    progress: &Progress,
) -> Result<CopyOutcome, CopyError> {
    let settings = &request.settings;
    match parse_location(&request.source, request.layouts)? {
        Location::Registry(source) => {
            let connect_source = Registry::connect(
                Side::Source,
                &source,
                Access::Pull,
                &request.source_endpoint,
                settings,
            );
            match destination_from_registry(request, &source)? {
                Location::Registry(destination) => {
                    let access = plan::destination_access(&source, &destination);
                    let (src, dst) = tokio::try_join!(
                        connect_source,
                        Registry::connect(
                            Side::Destination,
                            &destination,
                            access,
                            &request.destination_endpoint,
                            settings
                        ),
                    )?;
                    tracing::info!(source = %source, destination = %destination,
                        source_transport = src.transport().describe(), destination_transport = dst.transport().describe(),
                        "reading the bundle");
                    let names = Names::of(&source, &Location::Registry(destination));
                    run(request, progress, &src, tag_or_digest(&source), dst, names).await
                }
                Location::Layout(layout) => {
                    let (src, dst) = tokio::try_join!(connect_source, open_writer(&layout))?;
                    let names = Names::of(&source, &Location::Layout(layout));
                    run(request, progress, &src, tag_or_digest(&source), dst, names).await
                }
            }
        }
        Location::Layout(layout) => {
            let src = LayoutReader::open(&layout, Side::Source).await?;
            let reference = src.reference()?;
            let source_tag = crate::digest::validate(&reference)
                .is_err()
                .then_some(reference.as_str());
            let shown = match source_tag {
                Some(tag) => layout.with_tag(tag).to_string(),
                None => format!("{}@{reference}", layout.without_tag()),
            };
            let mut names = Names::of_layout(shown, &src);
            match destination_from_layout(request, source_tag)? {
                Location::Registry(destination) => {
                    let access = Access::Push { mount_from: None };
                    let dst = Registry::connect(
                        Side::Destination,
                        &destination,
                        access,
                        &request.destination_endpoint,
                        settings,
                    )
                    .await?;
                    names.destination_is(&Location::Registry(destination));
                    run(request, progress, &src, &reference, dst, names).await
                }
                Location::Layout(out) => {
                    let dst = open_writer(&out).await?;
                    names.destination_is(&Location::Layout(out));
                    run(request, progress, &src, &reference, dst, names).await
                }
            }
        }
    }
}

/// The destination of a copy from a registry: a layout gets the source's tag when it names
/// none; a registry follows Porter's derivation.
fn destination_from_registry(
    request: &CopyRequest,
    source: &Reference,
) -> Result<Location, CopyError> {
    let text = request.destination.trim();
    if request.layouts
        && let Some(layout) = LayoutRef::parse(text)
    {
        let layout = layout.map_err(spec_error)?;
        let tag = layout
            .tag
            .clone()
            .or_else(|| source.tag().map(str::to_string))
            .ok_or_else(|| {
                spec_error(format!(
                    "the source {source} names no tag, so the destination needs one: {}:TAG",
                    layout.without_tag()
                ))
            })?;
        return Ok(Location::Layout(layout.with_tag(&tag)));
    }
    derive_destination(source, text)
        .map(Location::Registry)
        .map_err(spec_error)
}

/// The destination of a copy from a layout: a layout or a registry repository gets the source's
/// tag when it names none. (No Porter derivation: a layout has no repository name to append.)
fn destination_from_layout(
    request: &CopyRequest,
    source_tag: Option<&str>,
) -> Result<Location, CopyError> {
    let text = request.destination.trim();
    let needs_tag = |what: String| {
        spec_error(format!(
            "the source names no tag (its image is untagged), so the destination needs one: {what}"
        ))
    };
    match Location::parse(text).map_err(spec_error)? {
        Location::Layout(layout) => match (&layout.tag, source_tag) {
            (Some(_), _) => Ok(Location::Layout(layout)),
            (None, Some(tag)) => Ok(Location::Layout(layout.with_tag(tag))),
            (None, None) => Err(needs_tag(format!("{}:TAG", layout.without_tag()))),
        },
        Location::Registry(_) if is_bare_registry(text) => Err(spec_error(format!(
            "the destination {text} names a registry; from a layout, name the repository too: \
             {text}/REPOSITORY[:TAG]"
        ))),
        Location::Registry(reference)
            if reference.tag().is_some() || reference.digest().is_some() =>
        {
            Ok(Location::Registry(reference))
        }
        Location::Registry(reference) => match source_tag {
            Some(tag) => {
                parse_reference(&format!("{}:{tag}", reference.name())).map(Location::Registry)
            }
            None => Err(needs_tag(format!("{}:TAG", reference.name()))),
        },
    }
}

/// Open a layout directory or archive for writing.
async fn open_writer(layout: &LayoutRef) -> Result<LayoutWriter, CopyError> {
    Ok(match layout.kind {
        LayoutKind::Directory => LayoutWriter::Directory(DirWriter::open(layout).await?),
        LayoutKind::Archive => LayoutWriter::Archive(ArchiveWriter::open(layout).await?),
    })
}

impl Names {
    fn of(source: &Reference, destination: &Location) -> Names {
        let mut names = Names {
            source: source.to_string(),
            source_repository: source.repository().to_string(),
            destination: String::new(),
            destination_name: String::new(),
            relocated_in: String::new(),
            tag: None,
            pinned: None,
        };
        names.destination_is(destination);
        names
    }

    fn of_layout(source: String, reader: &LayoutReader) -> Names {
        Names {
            source,
            source_repository: reader.name().to_string(),
            destination: String::new(),
            destination_name: String::new(),
            relocated_in: String::new(),
            tag: None,
            pinned: None,
        }
    }

    fn destination_is(&mut self, destination: &Location) {
        self.destination = destination.to_string();
        match destination {
            Location::Registry(reference) => {
                self.destination_name = reference.registry().to_string();
                self.relocated_in = reference.name();
                self.tag = reference.tag().map(str::to_string);
                self.pinned = reference.digest().map(str::to_string);
            }
            Location::Layout(layout) => {
                self.destination_name = layout.without_tag();
                self.relocated_in = layout.without_tag();
                self.tag = layout.tag.clone();
                self.pinned = None;
            }
        }
    }
}

/// The copy from one end to the other, once both are open.
async fn run<S: ReadEnd, D: WriteEnd>(
    request: &CopyRequest,
    progress: &Progress,
    src: &S,
    reference: &str,
    mut dst: D,
    names: Names,
) -> Result<CopyOutcome, CopyError> {
    let index = source::read_index(src, &names.source, reference).await?;
    let dst_reference = destination_reference(&names, &index.index.digest)?;
    let existing = dst.tagged(&dst_reference).await?;
    let state = plan::destination_state(
        existing,
        &index.index.digest,
        request.force,
        &names.destination,
    )?;
    let up_to_date = state == DestinationState::UpToDate;
    let with_referrers = request.referrers.copy;
    let src = &source::Remembering::new(src, &index);
    if up_to_date && !with_referrers {
        let bundle = source::read_bundle_json(src, &names.source, &index).await?;
        tracing::info!(destination = %names.destination, digest = %bundle.index.digest, "destination is up to date");
        return Ok(outcome(&names, &bundle, true, None, progress.snapshot()));
    }
    let concurrency = request.settings.max_concurrent_blobs;
    let selection = with_referrers.then_some(&request.referrers);
    // The walk and the search for referrers only read the source, so they run while bundle.json
    // is read: nothing is written before all are done. When both fail, the bundle.json read's
    // error says more (the walk meets a broken config manifest too, as a manifest it cannot
    // read).
    let (closure, bundle) = tokio::join!(
        closure_of(
            src,
            &names.source_repository,
            &index,
            selection,
            concurrency
        ),
        source::read_bundle_json(src, &names.source, &index)
    );
    let bundle = bundle?;
    let (plan, discovery) = closure?;
    let update = match up_to_date {
        true => dst.referrer_update(&discovery.referrers),
        false => ReferrerUpdate::Everything,
    };
    if update == ReferrerUpdate::Nothing {
        tracing::info!(destination = %names.destination, digest = %bundle.index.digest,
            referrers = discovery.referrers.len(), "destination is up to date");
        let referrers = with_referrers.then(|| discovery.reports());
        return Ok(outcome(
            &names,
            &bundle,
            true,
            referrers,
            progress.snapshot(),
        ));
    }
    let generations =
        referrer_generations(src, &names.source_repository, &discovery, concurrency).await?;
    let work = Work {
        bundle: (update == ReferrerUpdate::Everything).then_some(&plan),
        generations: &generations,
        discovery: &discovery,
    };
    execute(
        src,
        &mut dst,
        &bundle,
        work,
        &dst_reference,
        &names,
        request,
        progress,
    )
    .await?;
    tracing::info!(destination = %names.destination, digest = %bundle.index.digest,
        referrers = discovery.referrers.len(), up_to_date, "bundle copied");
    Ok(outcome(
        &names,
        &bundle,
        up_to_date,
        with_referrers.then(|| discovery.reports()),
        progress.snapshot(),
    ))
}

/// The bundle's closure, and the referrers of every digest in it (the index's too).
pub(crate) async fn closure_and_referrers(
    src: &impl ReadEnd,
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
    let discovery = find_referrers(
        src,
        repository,
        &bundle.index,
        &plan,
        selection,
        concurrency,
    )
    .await?;
    Ok((plan, discovery))
}

/// The closure of the index as a copy walks it, with nothing read but the index, and the
/// referrers `selection` asks for (none without one).
async fn closure_of<S: ReadEnd>(
    src: &source::Remembering<'_, S>,
    repository: &str,
    index: &source::SourceIndex,
    selection: Option<&ReferrerSelection>,
    concurrency: usize,
) -> Result<(plan::Plan, referrers::Discovery), CopyError> {
    let plan = plan::walk_index(src, repository, &index.bundle_index, concurrency).await?;
    let discovery = match selection {
        Some(selection) => {
            find_referrers(src, repository, &index.index, &plan, selection, concurrency).await?
        }
        None => referrers::Discovery::default(),
    };
    Ok((plan, discovery))
}

/// The referrers of the index and of every manifest of its closure.
async fn find_referrers(
    src: &impl ReadEnd,
    repository: &str,
    index: &Manifest,
    plan: &plan::Plan,
    selection: &ReferrerSelection,
    concurrency: usize,
) -> Result<referrers::Discovery, CopyError> {
    let subjects: Vec<String> = std::iter::once(index.digest.clone())
        .chain(plan.manifests.iter().map(|m| m.digest.clone()))
        .collect();
    referrers::discover(src, repository, &subjects, selection, concurrency).await
}

/// The referrers found, generation by generation, each with the closure of its manifests.
async fn referrer_generations<'a>(
    src: &impl ReadEnd,
    repository: &str,
    discovery: &'a referrers::Discovery,
    concurrency: usize,
) -> Result<Vec<referrers::Generation<'a>>, CopyError> {
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
        let roots: Vec<Manifest> = referrers.iter().map(|r| r.manifest.clone()).collect();
        let plan = plan::walk_from(src, repository, &roots, concurrency)
            .await
            .map_err(|e| e.for_referrer(|| "reading the manifests of the referrers".into()))?;
        generations.push(referrers::Generation { referrers, plan });
    }
    Ok(generations)
}

/// The tag the index is written under (the source digest when the destination names none); a
/// destination pinned to another digest cannot receive this bundle.
fn destination_reference(names: &Names, source_digest: &str) -> Result<String, CopyError> {
    if let Some(wanted) = &names.pinned
        && wanted != source_digest
    {
        return Err(CopyError::InvalidSpec(format!(
            "destination {} names digest {wanted}, but the source bundle is {source_digest}",
            names.destination
        )));
    }
    Ok(names
        .tag
        .clone()
        .unwrap_or_else(|| source_digest.to_string()))
}

/// What a copy writes: the bundle's closure (unless the destination holds it already) and the
/// referrers.
struct Work<'a> {
    bundle: Option<&'a plan::Plan>,
    generations: &'a [referrers::Generation<'a>],
    discovery: &'a referrers::Discovery,
}

/// Blobs, manifests, the referrers, then the index under its tag, last: when the tag moves,
/// its signatures are already there. The destination must store the index under the source's
/// digest before the copy is made visible (`commit`).
#[allow(clippy::too_many_arguments)]
async fn execute<S: ReadEnd, D: WriteEnd>(
    src: &S,
    dst: &mut D,
    bundle: &SourceBundle,
    work: Work<'_>,
    dst_reference: &str,
    names: &Names,
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
    let index = Manifest {
        bytes: bundle.index.bytes.clone(),
        media_type: bundle.bundle_index.media_type.clone(),
        digest: bundle.index.digest.clone(),
    };
    let writing = Writing {
        bundle: work.bundle,
        blobs: &blobs,
        generations: work.generations,
        discovery: work.discovery,
        tag: dst_reference,
        index: &index,
    };
    dst.prepare(&writing).await?;
    let dst = &*dst;
    let concurrency = request.settings.max_concurrent_blobs;
    execute::transfer_blobs(src, dst, &blobs, concurrency, progress).await?;
    if let Some(plan) = work.bundle {
        execute::push_manifests(dst, plan, progress).await?;
    }
    execute::store_referrers(dst, &writing, progress).await?;
    if work.bundle.is_none() {
        return Ok(());
    }
    let pushed = dst.tag_index(dst_reference, &index).await?;
    progress.manifest_pushed();
    verify(&names.destination_name, &index.digest, pushed)?;
    dst.commit().await
}

/// The digest the destination reports for the pushed index must be the source's.
fn verify(destination: &str, source_digest: &str, pushed: Option<String>) -> Result<(), CopyError> {
    match pushed.filter(|d| d != source_digest) {
        Some(pushed) => Err(CopyError::DigestMismatch {
            side: Side::Destination,
            registry: destination.to_string(),
            digest: source_digest.to_string(),
            detail: format!("the destination stored the index as {pushed}"),
        }),
        None => Ok(()),
    }
}

fn outcome(
    names: &Names,
    bundle: &SourceBundle,
    up_to_date: bool,
    referrers: Option<Vec<Referrer>>,
    progress: ProgressSnapshot,
) -> CopyOutcome {
    let images = relocated_images(&bundle.images, &names.relocated_in);
    let digest = bundle.index.digest.clone();
    CopyOutcome {
        source: names.source.clone(),
        source_digest: digest.clone(),
        destination: names.destination.clone(),
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
