//! Read a bundle without copying it (`bundlecopy inspect`), resolve a reference to a digest
//! (the operator's check of a tag), list a bundle's referrers (the operator's check for
//! signatures added later) and a repository's tags (what a mirror chooses from).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bundle;
use crate::copy::referrers::Referrer;
use crate::copy::source::{SourceBundle, read_bundle, tag_or_digest};
use crate::copy::{BundleInfo, closure_and_referrers, parse_reference};
use crate::error::{CopyError, Side};
use crate::reference::Reference;
use crate::registry::{Access, Registry};
use crate::settings::{EndpointOptions, EngineSettings, ReferrerSelection};

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

/// Read a bundle without copying it, with the referrers `selection` asks for.
pub async fn inspect_bundle(
    reference: &str,
    endpoint: &EndpointOptions,
    settings: &EngineSettings,
    selection: &ReferrerSelection,
) -> Result<InspectReport, CopyError> {
    let reference = parse_reference(reference)?;
    let registry =
        Registry::connect(Side::Source, &reference, Access::Pull, endpoint, settings).await?;
    let bundle = read_bundle(&registry, &reference).await?;
    let referrers = bundle_referrers(&registry, &reference, &bundle, settings, selection).await?;
    Ok(InspectReport {
        reference: reference.to_string(),
        digest: bundle.index.digest.clone(),
        media_type: bundle.bundle_index.media_type.clone(),
        bundle: BundleInfo::of(&bundle),
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
        referrers,
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
    let bundle = read_bundle(&registry, &reference).await?;
    let mut found = bundle_referrers(&registry, &reference, &bundle, settings, selection).await?;
    found.sort();
    Ok(found)
}

async fn bundle_referrers(
    registry: &Registry,
    reference: &Reference,
    bundle: &SourceBundle,
    settings: &EngineSettings,
    selection: &ReferrerSelection,
) -> Result<Vec<Referrer>, CopyError> {
    if !selection.copy {
        return Ok(Vec::new());
    }
    let (_, discovery) = closure_and_referrers(
        registry,
        reference.repository(),
        bundle,
        selection,
        settings.max_concurrent_blobs,
    )
    .await?;
    Ok(discovery.reports())
}
