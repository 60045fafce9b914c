//! Read a bundle at the source: its index, config manifest and bundle.json, checked to be a CNAB
//! bundle (docs/architecture.md, "One copy").

use super::ends::ReadEnd;
use crate::bundle::{self, BundleImage, BundleIndex, BundleJson};
use crate::error::CopyError;
use crate::reference::Reference;
use crate::registry::Manifest;

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

/// The tag or digest a reference names (`latest` when it names neither).
pub fn tag_or_digest(reference: &Reference) -> &str {
    reference.digest().or(reference.tag()).unwrap_or("latest")
}

/// Resolve `reference` (a tag or digest) at the source, named `source` in messages, and check
/// that it is a bundle.
pub async fn read_bundle(
    src: &impl ReadEnd,
    source: &str,
    reference: &str,
) -> Result<SourceBundle, CopyError> {
    let not_a_bundle = |detail: String| CopyError::NotABundle {
        reference: source.to_string(),
        detail,
    };
    let index = src
        .get_manifest(reference)
        .await?
        .ok_or_else(|| CopyError::SourceNotFound {
            reference: source.to_string(),
            detail: src.missing(reference),
        })?;
    let bundle_index =
        BundleIndex::parse(&index.bytes, &index.media_type).map_err(|e| not_a_bundle(e.0))?;
    let config = bundle_index.config_descriptor();
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
    let images = bundle::bundle_images(&bundle_index, &bundle).map_err(|e| not_a_bundle(e.0))?;
    Ok(SourceBundle {
        index,
        bundle_index,
        config_manifest,
        bundle,
        images,
    })
}
