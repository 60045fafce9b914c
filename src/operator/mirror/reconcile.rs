//! One BundleMirror reconcile: check the spec, list the source's tags when due, own one
//! BundleCopy per selected tag (server-side apply), delete those whose tag left the selection,
//! and report in the status. The decisions are in `plan`; this is the I/O around them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};

use super::api::{
    BundleMirror, BundleMirrorStatus, MIRROR_FIELD_MANAGER, MIRROR_LABEL, MirroredTag,
    TAG_ANNOTATION,
};
use super::plan::{self, MirrorState};
use crate::operator::crd::BundleCopy;
use crate::operator::decide;
use crate::operator::failure::Failure;
use crate::operator::secrets;
use bundlecopy_engine::EngineSettings;
use bundlecopy_engine::tags::TagSelection;

/// What every mirror reconcile shares.
pub struct MirrorContext {
    pub client: Client,
    pub engine: EngineSettings,
    /// Shortest `interval` accepted (1m; lower only in tests).
    pub min_interval: Duration,
}

/// Errors that end a mirror reconcile early (API server trouble); registry and Secret problems
/// go to the status instead.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("BundleMirror {0} has no namespace")]
    NoNamespace(String),
    #[error("{what} failed: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> MirrorError {
    let what = what.into();
    move |source| MirrorError::Api { what, source }
}

/// After a failure to talk to the API server: try again in a while.
pub fn error_policy(
    mirror: Arc<BundleMirror>,
    error: &MirrorError,
    _ctx: Arc<MirrorContext>,
) -> Action {
    tracing::warn!(bundlemirror = %mirror.name_any(), %error, "mirror reconcile failed");
    Action::requeue(decide::TRANSIENT_BACKOFF_BASE)
}

/// One mirror reconcile, as steps: check the spec, then suspend, or select the tags (listing
/// them when due), bring the children in line, and report.
pub async fn reconcile(
    mirror: Arc<BundleMirror>,
    ctx: Arc<MirrorContext>,
) -> Result<Action, MirrorError> {
    let run = MirrorRun::new(&mirror, &ctx)?;
    let checked = match plan::check(&mirror.spec, ctx.min_interval) {
        Ok(checked) => checked,
        Err(message) => {
            run.report(&MirrorState::InvalidSpec(message), vec![], None)
                .await?;
            return Ok(Action::await_change());
        }
    };
    let children = run.owned_children().await?;
    if mirror.spec.suspend {
        run.suspend(&children).await?;
        return Ok(Action::await_change());
    }
    let listing_due = plan::listing_due(run.previous, run.generation, checked.interval, run.now);
    let selection = if listing_due {
        run.select(&checked.selection).await?
    } else {
        Selection::unchanged(run.previous)
    };
    let changed = run
        .sync_children(&children, &selection, listing_due)
        .await?;
    // Read the children again only when this reconcile changed them.
    let children = if changed {
        run.owned_children().await?
    } else {
        children
    };
    let tags = plan::mirrored_tags(&run.name, &selection.tags, &children);
    let status = run
        .report(&selection.state, tags, selection.sync_time)
        .await?;
    Ok(match selection.state {
        MirrorState::ListingFailed {
            permanent: false, ..
        } => Action::requeue(decide::TRANSIENT_BACKOFF_BASE.max(Duration::from_secs(30))),
        _ => Action::requeue(next_listing_in(&status, checked.interval, run.now)),
    })
}

/// The tags a reconcile works with, and how it came by them.
struct Selection {
    tags: Vec<String>,
    state: MirrorState,
    /// Set when the tags were listed in this reconcile.
    sync_time: Option<Time>,
}

impl Selection {
    /// No listing due: the tags the status chose last time.
    fn unchanged(previous: Option<&BundleMirrorStatus>) -> Selection {
        Selection {
            tags: previous_tags(previous),
            state: MirrorState::Mirroring,
            sync_time: None,
        }
    }
}

/// One reconcile of one mirror: what its steps share.
struct MirrorRun<'a> {
    mirror: &'a BundleMirror,
    ctx: &'a MirrorContext,
    name: String,
    namespace: String,
    mirrors: Api<BundleMirror>,
    copies: Api<BundleCopy>,
    previous: Option<&'a BundleMirrorStatus>,
    generation: Option<i64>,
    now: Timestamp,
}

impl<'a> MirrorRun<'a> {
    fn new(mirror: &'a BundleMirror, ctx: &'a MirrorContext) -> Result<Self, MirrorError> {
        let name = mirror.name_any();
        let namespace = mirror
            .namespace()
            .ok_or_else(|| MirrorError::NoNamespace(name.clone()))?;
        Ok(MirrorRun {
            mirror,
            ctx,
            mirrors: Api::namespaced(ctx.client.clone(), &namespace),
            copies: Api::namespaced(ctx.client.clone(), &namespace),
            name,
            namespace,
            previous: mirror.status.as_ref(),
            generation: mirror.metadata.generation,
            now: Timestamp::now(),
        })
    }

    /// `spec.suspend`: existing children are suspended too; nothing is listed.
    async fn suspend(&self, children: &[BundleCopy]) -> Result<(), MirrorError> {
        let kept: Vec<String> = children
            .iter()
            .filter_map(|c| plan::child_tag(c).map(str::to_string))
            .collect();
        for tag in &kept {
            apply_child(&self.copies, self.mirror, tag).await?;
        }
        let tags = plan::mirrored_tags(&self.name, &kept, children);
        self.report(&MirrorState::Suspended, tags, None).await?;
        Ok(())
    }

    /// Lists the source's tags and selects; when listing fails, keeps what was chosen before (a
    /// registry outage must not delete children).
    async fn select(&self, selection: &TagSelection) -> Result<Selection, MirrorError> {
        Ok(
            match list_source_tags(self.ctx, &self.namespace, self.mirror).await? {
                Ok(tags) => Selection {
                    tags: selection
                        .select(tags.iter().map(String::as_str))
                        .into_iter()
                        .map(|s| s.tag)
                        .collect(),
                    state: MirrorState::Mirroring,
                    sync_time: Some(Time(self.now)),
                },
                Err(failure) => Selection {
                    tags: previous_tags(self.previous),
                    state: MirrorState::ListingFailed {
                        reason: failure.reason.as_str().to_string(),
                        message: format!(
                            "listing the tags of {}: {}",
                            self.mirror.spec.source.repository, failure.message
                        ),
                        permanent: !failure.transient,
                    },
                    sync_time: None,
                },
            },
        )
    }

    /// Applies the children of the selected tags (all of them after a listing, so that a spec
    /// change reaches them; else only missing ones) and deletes those whose tag left the
    /// selection. Whether anything changed.
    async fn sync_children(
        &self,
        children: &[BundleCopy],
        selection: &Selection,
        listing_due: bool,
    ) -> Result<bool, MirrorError> {
        let existing: Vec<&str> = children.iter().filter_map(plan::child_tag).collect();
        let mut changed = false;
        for tag in &selection.tags {
            if listing_due || !existing.contains(&tag.as_str()) {
                apply_child(&self.copies, self.mirror, tag).await?;
                changed = true;
            }
        }
        if !matches!(selection.state, MirrorState::Mirroring) {
            return Ok(changed);
        }
        for stale in plan::stale_children(children, &selection.tags) {
            tracing::info!(bundlemirror = %self.name, bundlecopy = %stale, "tag left the selection; deleting its BundleCopy (the destination is left as it is)");
            changed = true;
            match self.copies.delete(stale, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(api_error(format!("deleting BundleCopy {stale}"))(error)),
            }
        }
        Ok(changed)
    }

    /// The BundleCopies this mirror owns.
    async fn owned_children(&self) -> Result<Vec<BundleCopy>, MirrorError> {
        owned_children(&self.copies, self.mirror).await
    }

    /// Computes the status for `state` and writes it (unless unchanged).
    async fn report(
        &self,
        state: &MirrorState,
        tags: Vec<MirroredTag>,
        sync_time: Option<Time>,
    ) -> Result<BundleMirrorStatus, MirrorError> {
        let status = plan::next_status(
            self.previous,
            self.generation,
            state,
            tags,
            sync_time,
            self.now,
        );
        write_status(&self.mirrors, &self.name, self.previous, status.clone()).await?;
        Ok(status)
    }
}

/// The tags the status says were chosen last time.
fn previous_tags(previous: Option<&BundleMirrorStatus>) -> Vec<String> {
    previous
        .map(|status| status.tags.iter().map(|t| t.tag.clone()).collect())
        .unwrap_or_default()
}

/// Time until the next listing is due.
fn next_listing_in(status: &BundleMirrorStatus, interval: Duration, now: Timestamp) -> Duration {
    let Some(Time(last)) = &status.last_sync_time else {
        return interval;
    };
    let since: Duration = now
        .duration_since(*last)
        .try_into()
        .unwrap_or(Duration::ZERO);
    interval.saturating_sub(since).max(Duration::from_secs(1))
}

/// Reads the source's Secrets and lists its tags: the tags, or why not (in the status).
async fn list_source_tags(
    ctx: &MirrorContext,
    namespace: &str,
    mirror: &BundleMirror,
) -> Result<Result<Vec<String>, Failure>, MirrorError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let source = &mirror.spec.source;
    let endpoint = source.endpoint(source.repository.clone());
    let options = match secrets::read_one_endpoint(&secrets, &endpoint, "spec.source").await {
        Ok(options) => options,
        Err(secrets::ReadError::Problem(problem)) => {
            return Ok(Err(Failure::permanent(problem.reason, problem.message)));
        }
        Err(secrets::ReadError::Api { name, source }) => {
            return Err(MirrorError::Api {
                what: format!("reading Secret {name}"),
                source,
            });
        }
    };
    Ok(
        bundlecopy_engine::list_tags(&source.repository, &options, &ctx.engine)
            .await
            .map_err(|error| Failure::from_copy_error_in(&error, None)),
    )
}

/// The BundleCopies this mirror owns (by label, then by owner reference).
async fn owned_children(
    copies: &Api<BundleCopy>,
    mirror: &BundleMirror,
) -> Result<Vec<BundleCopy>, MirrorError> {
    let selector = format!("{MIRROR_LABEL}={}", mirror.name_any());
    let uid = mirror.uid();
    let listed = copies
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api_error(format!(
            "listing the BundleCopies of {}",
            mirror.name_any()
        )))?;
    Ok(listed
        .items
        .into_iter()
        .filter(|child| {
            child
                .owner_references()
                .iter()
                .any(|owner| Some(&owner.uid) == uid.as_ref())
        })
        .collect())
}

/// Creates or updates the BundleCopy of `tag` by server-side apply: owned by the mirror (so
/// deleting the mirror deletes it), labelled with the mirror's name, annotated with its tag.
async fn apply_child(
    copies: &Api<BundleCopy>,
    mirror: &BundleMirror,
    tag: &str,
) -> Result<(), MirrorError> {
    let name = plan::child_name(&mirror.name_any(), tag);
    let owner = OwnerReference {
        api_version: BundleMirror::api_version(&()).to_string(),
        kind: BundleMirror::kind(&()).to_string(),
        name: mirror.name_any(),
        uid: mirror.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let child = BundleCopy {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([(MIRROR_LABEL.to_string(), mirror.name_any())].into()),
            annotations: Some([(TAG_ANNOTATION.to_string(), tag.to_string())].into()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: plan::child_spec(&mirror.spec, tag),
        status: None,
    };
    let mut patch = serde_json::to_value(&child).map_err(|e| MirrorError::Api {
        what: format!("serialising BundleCopy {name}"),
        source: kube::Error::SerdeError(e),
    })?;
    patch["apiVersion"] = BundleCopy::api_version(&()).as_ref().into();
    patch["kind"] = BundleCopy::kind(&()).as_ref().into();
    copies
        .patch(
            &name,
            &PatchParams::apply(MIRROR_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(api_error(format!("applying BundleCopy {name}")))?;
    Ok(())
}

/// Writes the status by server-side apply, unless it is what the object already says.
async fn write_status(
    mirrors: &Api<BundleMirror>,
    name: &str,
    previous: Option<&BundleMirrorStatus>,
    status: BundleMirrorStatus,
) -> Result<(), MirrorError> {
    if previous == Some(&status) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": BundleMirror::api_version(&()),
        "kind": BundleMirror::kind(&()),
        "status": status,
    });
    mirrors
        .patch_status(
            name,
            &PatchParams::apply(MIRROR_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(api_error(format!(
            "writing the status of BundleMirror {name}"
        )))?;
    Ok(())
}
