//! Carry out a plan: every blob, then every manifest (deepest first), then the index under the
//! destination tag. What to do with each blob is the registry client's (`Registry::transfer_blob`).

use futures_util::TryStreamExt;

use super::plan::Plan;
use super::progress::Progress;
use crate::error::CopyError;
use crate::registry::Registry;

/// Manifests pushed at once within one level.
const MANIFEST_CONCURRENCY: usize = 8;

/// Move every blob of the plan, `concurrency` at once, largest first.
pub async fn transfer_blobs(
    src: &Registry,
    dst: &Registry,
    plan: &Plan,
    concurrency: usize,
    progress: &Progress,
) -> Result<(), CopyError> {
    futures_util::stream::iter(plan.blob_order().into_iter().map(Ok::<_, CopyError>))
        .try_for_each_concurrent(concurrency.max(1), |blob| async move {
            let action = dst
                .transfer_blob(src, &blob, progress.byte_counter())
                .await?;
            progress.blob_done(action);
            tracing::debug!(digest = %blob.digest, size = blob.size, ?action, "blob done");
            Ok(())
        })
        .await
}

/// Push the plan's manifests by digest, level by level, deepest first; one the destination
/// already holds is not pushed again.
pub async fn push_manifests(
    dst: &Registry,
    plan: &Plan,
    progress: &Progress,
) -> Result<(), CopyError> {
    for level in plan.push_levels() {
        futures_util::stream::iter(level.into_iter().map(Ok::<_, CopyError>))
            .try_for_each_concurrent(MANIFEST_CONCURRENCY, |m| async move {
                if dst.head_manifest(&m.digest).await?.as_deref() != Some(m.digest.as_str()) {
                    dst.put_manifest(&m.digest, m.bytes.clone(), &m.media_type)
                        .await?;
                }
                progress.manifest_pushed();
                Ok(())
            })
            .await?;
    }
    Ok(())
}
