//! Carry out a plan: every blob, then every manifest (deepest first), then the referrers
//! (signatures, attestations, SBOMs; their subjects now exist; registry to registry), then the
//! index under the destination tag. What to do with each blob is the destination's
//! (`WriteEnd::receive_blob`: a registry skips, mounts or streams; a layout skips or writes).

use std::collections::BTreeMap;

use futures_util::{StreamExt, TryStreamExt};

use super::ends::{ReadEnd, WriteEnd, Writing};
use super::plan::{ClosureManifest, Plan};
use super::progress::Progress;
use super::referrers::{self, FoundReferrer, Generation, IndexUpdate};
use crate::bundle::OCI_INDEX;
use crate::error::{CopyError, Side};
use crate::registry::{BlobRef, Presence, Registry};

/// Manifests pushed at once within one level.
const MANIFEST_CONCURRENCY: usize = 8;
/// Blob checks at the destination ahead of the transfers, per blob transferred at once.
const CHECKS_AHEAD_PER_TRANSFER: usize = 4;

/// A blob, with what the destination said of it before the transfer.
type Checked = (BlobRef, Presence);

/// Move every blob of the plan, `concurrency` at once, largest first. The destination is asked
/// which blobs it holds ahead of the transfers (a registry's HEADs, pipelined alongside them),
/// so that a transfer starts with its GET at the source instead of waiting for its HEAD.
pub async fn transfer_blobs<S: ReadEnd, D: WriteEnd>(
    src: &S,
    dst: &D,
    plan: &Plan,
    concurrency: usize,
    progress: &Progress,
) -> Result<(), CopyError> {
    let concurrency = concurrency.max(1);
    let ahead = concurrency * CHECKS_AHEAD_PER_TRANSFER;
    let (checked, to_transfer) = tokio::sync::mpsc::channel(ahead);
    // Two named functions joined, not two async blocks: with blocks the compiler could not
    // prove the operator's reconcile future `Send` for every lifetime.
    futures_util::future::try_join(
        check_blobs(dst, plan.blob_order(), ahead, checked),
        transfer_checked(src, dst, progress, concurrency, to_transfer),
    )
    .await?;
    Ok(())
}

/// Ask the destination about each blob, `ahead` at once, and pass each on in order with the
/// answer; stops early when the transfers have stopped.
async fn check_blobs<D: WriteEnd>(
    dst: &D,
    blobs: Vec<BlobRef>,
    ahead: usize,
    checked: tokio::sync::mpsc::Sender<Checked>,
) -> Result<(), CopyError> {
    let mut checks = futures_util::stream::iter(blobs)
        .map(|blob| check_blob(dst, blob))
        .buffered(ahead);
    while let Some(blob) = checks.next().await {
        if checked.send(blob?).await.is_err() {
            break;
        }
    }
    Ok(())
}

async fn check_blob<D: WriteEnd>(dst: &D, blob: BlobRef) -> Result<Checked, CopyError> {
    let presence = dst.check_blob(&blob).await?;
    Ok((blob, presence))
}

/// Transfer the blobs `check_blobs` passes on, `concurrency` at once.
async fn transfer_checked<S: ReadEnd, D: WriteEnd>(
    src: &S,
    dst: &D,
    progress: &Progress,
    concurrency: usize,
    checked: tokio::sync::mpsc::Receiver<Checked>,
) -> Result<(), CopyError> {
    futures_util::stream::unfold(checked, next_checked)
        .map(Ok::<_, CopyError>)
        .try_for_each_concurrent(concurrency, |(blob, presence)| {
            transfer_blob(src, dst, progress, blob, presence)
        })
        .await
}

async fn next_checked(
    mut checked: tokio::sync::mpsc::Receiver<Checked>,
) -> Option<(Checked, tokio::sync::mpsc::Receiver<Checked>)> {
    let next = checked.recv().await?;
    Some((next, checked))
}

async fn transfer_blob<S: ReadEnd, D: WriteEnd>(
    src: &S,
    dst: &D,
    progress: &Progress,
    blob: BlobRef,
    presence: Presence,
) -> Result<(), CopyError> {
    let action = dst
        .receive_blob(src, &blob, presence, progress.byte_counter())
        .await?;
    progress.blob_done(action);
    tracing::debug!(digest = %blob.digest, size = blob.size, ?action, "blob done");
    Ok(())
}

/// Push the plan's manifests by digest, level by level, deepest first; one the destination
/// already holds is not pushed again.
pub async fn push_manifests<D: WriteEnd>(
    dst: &D,
    plan: &Plan,
    progress: &Progress,
) -> Result<(), CopyError> {
    push_levels(dst, plan.push_levels(), progress).await
}

async fn push_levels<D: WriteEnd>(
    dst: &D,
    levels: Vec<Vec<&ClosureManifest>>,
    progress: &Progress,
) -> Result<(), CopyError> {
    for level in levels {
        futures_util::stream::iter(level.into_iter().map(Ok::<_, CopyError>))
            .try_for_each_concurrent(MANIFEST_CONCURRENCY, |m| async move {
                dst.store_manifest(m).await?;
                progress.manifest_pushed();
                Ok(())
            })
            .await?;
    }
    Ok(())
}

/// How a referrer reached the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Landed {
    /// Under cosign's tag name (`written`: the tag was absent or named something else).
    Tagged { written: bool },
    /// Pushed, and the registry indexed it as a referrer of its subject (`OCI-Subject`).
    Indexed,
    /// Pushed, and the registry said nothing of its subject: the tag schema must list it.
    NotIndexed,
    /// The destination held it already.
    Present,
}

impl Landed {
    /// Whether the referrer's manifest was written (progress counts written manifests).
    fn written(self) -> bool {
        !matches!(self, Landed::Present | Landed::Tagged { written: false })
    }
}

/// Whether the destination has the referrers API: unknown until a push or a query tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DestinationApi {
    Unknown,
    Present,
    Absent,
}

/// Write the referrers, their closures' blobs already there: after the bundle's manifests,
/// before its tag moves, so a tag never names a bundle whose signatures are still on their way.
/// A registry takes them as `push_referrers` writes them; any other end stores their manifests
/// and then lists them (`WriteEnd::index_referrers`).
pub async fn store_referrers<D: WriteEnd>(
    dst: &D,
    writing: &Writing<'_>,
    progress: &Progress,
) -> Result<(), CopyError> {
    let Some(registry) = dst.as_registry() else {
        for generation in writing.generations {
            push_manifests(dst, &generation.plan, progress).await?;
        }
        return dst.index_referrers(writing).await;
    };
    if writing.generations.is_empty() {
        return Ok(());
    }
    if writing.bundle.is_some() {
        // Referrers of the index need it there first (by digest); its tag moves last.
        let index = writing.index;
        registry
            .put_manifest(&index.digest, index.bytes.clone(), &index.media_type)
            .await?;
    }
    let tag_indexes = &writing.discovery.tag_indexes;
    push_referrers(registry, writing.generations, tag_indexes, progress).await
}

/// Push the referrers generation by generation (a signature on an SBOM after the SBOM), each
/// after its own children; cosign's tags under their names; and, where the destination has no
/// referrers API, each subject's `sha256-<hex>` index merged with what is there.
async fn push_referrers(
    dst: &Registry,
    generations: &[Generation<'_>],
    tag_indexes: &std::collections::HashMap<String, bytes::Bytes>,
    progress: &Progress,
) -> Result<(), CopyError> {
    let mut api = DestinationApi::Unknown;
    for generation in generations {
        push_levels(dst, generation.plan.push_levels_down_to(2), progress)
            .await
            .map_err(|e| e.for_referrer(|| "writing the manifests of the referrers".to_string()))?;
        // By index: a closure taking a reference would make rustc unable to prove the
        // controller's reconcile future Send for every lifetime.
        let referrers = generation.referrers.as_slice();
        let landed: Vec<(&FoundReferrer, Landed)> = futures_util::stream::iter(0..referrers.len())
            .map(|i| async move {
                let found = referrers[i];
                let landed = push_referrer(dst, found).await.map_err(|e| {
                    e.for_referrer(|| {
                        format!(
                            "writing referrer {} of {}",
                            found.referrer.digest, found.referrer.subject
                        )
                    })
                })?;
                if landed.written() {
                    progress.manifest_pushed();
                }
                Ok::<_, CopyError>((found, landed))
            })
            .buffered(MANIFEST_CONCURRENCY)
            .try_collect()
            .await?;
        if landed.iter().any(|(_, l)| *l == Landed::Indexed) {
            api = DestinationApi::Present;
        }
        let mut by_subject: BTreeMap<&str, Vec<(&FoundReferrer, Landed)>> = BTreeMap::new();
        for (found, how) in landed {
            if !matches!(how, Landed::Tagged { .. }) {
                by_subject
                    .entry(found.referrer.subject.as_str())
                    .or_default()
                    .push((found, how));
            }
        }
        for (subject, referrers) in by_subject {
            let needs_index = referrers.iter().any(|(_, how)| *how == Landed::NotIndexed);
            let all_present = referrers.iter().all(|(_, how)| *how == Landed::Present);
            if all_present && api == DestinationApi::Unknown {
                // Only the registry can say whether it indexes them itself.
                api = match dst.get_referrers(subject).await.map_err(|e| {
                    e.for_referrer(|| format!("reading the destination's referrers of {subject}"))
                })? {
                    Some(_) => DestinationApi::Present,
                    None => DestinationApi::Absent,
                };
            }
            let write_index = needs_index || (all_present && api == DestinationApi::Absent);
            if write_index {
                let entries = referrers::entries_by_subject(referrers.iter().map(|(f, _)| *f));
                let ours = entries.get(subject).map(Vec::as_slice).unwrap_or_default();
                update_tag_index(dst, subject, ours, tag_indexes.get(subject)).await?;
            }
        }
    }
    Ok(())
}

/// One referrer's manifest at the destination.
async fn push_referrer(dst: &Registry, found: &FoundReferrer) -> Result<Landed, CopyError> {
    let manifest = &found.manifest;
    if let Some(tag) = &found.referrer.tag {
        let written = dst.head_manifest(tag).await?.as_deref() != Some(manifest.digest.as_str());
        if written {
            dst.put_manifest(tag, manifest.bytes.clone(), &manifest.media_type)
                .await?;
        }
        return Ok(Landed::Tagged { written });
    }
    if dst.head_manifest(&manifest.digest).await?.as_deref() == Some(manifest.digest.as_str()) {
        return Ok(Landed::Present);
    }
    let pushed = dst
        .put_referrer(
            &manifest.digest,
            manifest.bytes.clone(),
            &manifest.media_type,
        )
        .await?;
    Ok(
        if pushed.subject.as_deref() == Some(found.referrer.subject.as_str()) {
            Landed::Indexed
        } else {
            Landed::NotIndexed
        },
    )
}

/// The destination's `sha256-<hex>` index of `subject`, with `ours` added.
async fn update_tag_index(
    dst: &Registry,
    subject: &str,
    ours: &[serde_json::Value],
    source_index: Option<&bytes::Bytes>,
) -> Result<(), CopyError> {
    let tag = referrers::schema_tag(subject);
    let what = || format!("updating the destination's referrers index {tag}");
    let existing = dst
        .get_manifest(&tag)
        .await
        .map_err(|e| e.for_referrer(what))?;
    let update = referrers::merge_tag_index(
        existing.as_ref().map(|m| m.bytes.as_ref()),
        source_index.map(|b| b.as_ref()),
        ours,
    )
    .map_err(|detail| CopyError::Referrer {
        what: what(),
        cause: Box::new(CopyError::Registry {
            side: Side::Destination,
            registry: dst.name().to_string(),
            status: None,
            detail: format!("its tag {tag}: {detail}; it is left as it is"),
        }),
    })?;
    if let IndexUpdate::Write(bytes) = update {
        dst.put_manifest(&tag, bytes, OCI_INDEX)
            .await
            .map_err(|e| e.for_referrer(what))?;
    }
    Ok(())
}
