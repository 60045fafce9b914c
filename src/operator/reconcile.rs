//! One reconcile of a BundleCopy: validate → Secrets → decide → (check | copy) → status.
//! Orchestration and I/O only; validation, decisions, failures and status live in `validate`,
//! `decide`, `failure` and `status`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject};
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::Deserialize as _;

use super::context::{Context, Error, memory_key};
use super::crd::{BundleCopy, BundleCopySpec, BundleCopyStatus, FIELD_MANAGER, condition_types};
use super::decide::{self, CopyCause, Plan, Verdict};
use super::failure::Failure;
use super::reason::Reason;
use super::secrets::{self, ReadError};
use super::status::{self, Phase};
use super::validate::{ValidSpec, validate};
use bundlecopy_engine::reference::Reference;
use bundlecopy_engine::{
    CopyError, CopyOutcome, CopyRequest, EndpointOptions, Progress, Side, copy_bundle,
    list_referrers, resolve_digest,
};

/// Event reasons (shown by `kubectl describe`).
pub mod event_reasons {
    pub const COPY_STARTED: &str = "CopyStarted";
    pub const COPIED: &str = "Copied";
    pub const COPY_FAILED: &str = "CopyFailed";
}

/// Longest condition message written.
const MAX_MESSAGE_BYTES: usize = 4096;

/// The per-reconcile state: the object, its API and the status as last written.
struct Run {
    ctx: Arc<Context>,
    object: Arc<DeserializeGuard<BundleCopy>>,
    /// The spec, or what makes it unreadable (a message for InvalidSpec).
    spec: Result<BundleCopySpec, String>,
    /// Typed through the guard: the API server answers a status patch with the whole object,
    /// which may be one that does not deserialize.
    api: Api<DeserializeGuard<BundleCopy>>,
    key: String,
    generation: i64,
    current: BundleCopyStatus,
}

/// Reconcile one BundleCopy as the watch delivered it. Registry and Secret problems end in the
/// status and an `Ok` requeue; only failures to talk to the API server are errors (handled by
/// `error_policy`). An object that does not deserialize (stored while an older CRD, or none,
/// let anything through) is reported as InvalidSpec on its own instead of stopping the watch.
pub async fn reconcile(
    object: Arc<DeserializeGuard<BundleCopy>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let name = object.name_any();
    let namespace = object
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let (spec, current) = match &object.0 {
        Ok(bundle) => (
            Ok(bundle.spec.clone()),
            bundle.status.clone().unwrap_or_default(),
        ),
        Err(_) => match read_untyped(&ctx.client, &namespace, &name).await? {
            Some(stored) => stored,
            // Deleted since the watch saw it.
            None => return Ok(Action::await_change()),
        },
    };
    let key = memory_key(object.as_ref());
    let read_version = object.meta().resource_version.clone().unwrap_or_default();
    let current = ctx.written_since(&key, &read_version).unwrap_or(current);
    let run = Run {
        api: Api::namespaced(ctx.client.clone(), &namespace),
        key,
        generation: object.meta().generation.unwrap_or_default(),
        spec,
        current,
        ctx,
        object,
    };
    let span = tracing::info_span!("reconcile", bundlecopy = %format!("{namespace}/{name}"), generation = run.generation);
    tracing::Instrument::instrument(run.reconcile(namespace), span).await
}

/// Reads an object that did not deserialize again, untyped: its spec, or the path and problem
/// that make it unreadable, and its status (none when that does not parse), so that an
/// unchanged failure is not written again. `None` when the object is gone.
async fn read_untyped(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<(Result<BundleCopySpec, String>, BundleCopyStatus)>, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource::erase::<BundleCopy>(&()),
    );
    let Some(stored) = api.get_opt(name).await.map_err(Error::ReadObject)? else {
        return Ok(None);
    };
    let spec = match stored.data.get("spec") {
        Some(spec) => serde_path_to_error::deserialize(spec).map_err(|error| {
            let path = error.path().to_string();
            let field = if path == "." {
                "spec".to_string()
            } else {
                format!("spec.{path}")
            };
            format!(
                "{field}: {}; see kubectl explain bundlecopy.spec, and update the CRD \
                 (kubectl apply --server-side -f crds/bundlecopies.bundlecopy.dev.yaml) so that \
                 the API server checks BundleCopies",
                error.inner()
            )
        }),
        None => Err("spec is missing; see kubectl explain bundlecopy.spec".to_string()),
    };
    let status = stored
        .data
        .get("status")
        .and_then(|status| BundleCopyStatus::deserialize(status).ok())
        .unwrap_or_default();
    Ok(Some((spec, status)))
}

/// Why a reconcile ends before a copy.
enum Stop {
    /// A failure for the status (`destination` when the spec could be resolved).
    Failed {
        destination: Option<String>,
        failure: Failure,
    },
    Suspended(ValidSpec),
    /// The copy of this generation is in place; the source was checked this long ago.
    UpToDate(ValidSpec, Option<Duration>),
    /// The API server failed: the error policy's backoff applies.
    Api(Error),
}

impl Stop {
    fn failed(destination: Option<&str>, failure: Failure) -> Stop {
        Stop::Failed {
            destination: destination.map(str::to_string),
            failure,
        }
    }
}

/// What a copy needs once the reconcile decided on one.
struct CopyJob {
    spec: BundleCopySpec,
    valid: ValidSpec,
    cause: CopyCause,
    source: EndpointOptions,
    destination: EndpointOptions,
}

impl Run {
    /// validate → Secrets → decide (verifying with one HEAD each when a copy is in place) →
    /// copy → status. Each step is a method below; a step that ends the reconcile returns a
    /// `Stop`, which `stop` turns into the status and the requeue.
    async fn reconcile(self, namespace: String) -> Result<Action, Error> {
        match self.decide(&namespace).await {
            Ok(job) => self.copy(job).await,
            Err(stop) => self.stop(stop).await,
        }
    }

    async fn decide(&self, namespace: &str) -> Result<CopyJob, Stop> {
        let (spec, valid) = self.validated()?;
        if spec.suspend {
            return Err(Stop::Suspended(valid));
        }
        let (source, destination) = self.endpoints(namespace, &spec, &valid).await?;
        let cause = self
            .copy_cause(&spec, &valid, &source, &destination)
            .await?;
        Ok(CopyJob {
            spec,
            valid,
            cause,
            source,
            destination,
        })
    }

    /// Step 1: a spec that parses and validates.
    fn validated(&self) -> Result<(BundleCopySpec, ValidSpec), Stop> {
        let invalid =
            |message: String| Stop::failed(None, Failure::permanent(Reason::InvalidSpec, message));
        let spec = self.spec.clone().map_err(invalid)?;
        let valid = validate(&spec).map_err(invalid)?;
        Ok((spec, valid))
    }

    /// Step 2: credentials and CA certificates from the Secrets the spec names.
    async fn endpoints(
        &self,
        namespace: &str,
        spec: &BundleCopySpec,
        valid: &ValidSpec,
    ) -> Result<(EndpointOptions, EndpointOptions), Stop> {
        let secret_api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), namespace);
        secrets::read_endpoints(&secret_api, spec)
            .await
            .map_err(|error| match error {
                ReadError::Problem(problem) => Stop::failed(
                    Some(&valid.destination),
                    Failure::permanent(problem.reason, problem.message),
                ),
                error @ ReadError::Api { .. } => Stop::Api(Error::ReadSecret(Box::new(error))),
            })
    }

    /// Step 3: why to copy, or why not (`decide::plan`, then `verify` when a copy is in place).
    async fn copy_cause(
        &self,
        spec: &BundleCopySpec,
        valid: &ValidSpec,
        source: &EndpointOptions,
        destination: &EndpointOptions,
    ) -> Result<CopyCause, Stop> {
        let since_source_check = self.since_source_check();
        // A digest never moves, but its signatures may be added to.
        let fixed = valid.source_is_digest && !spec.referrers.is_all();
        let check_due = decide::source_check_due(valid.interval, fixed, since_source_check);
        let recheck_source = match decide::plan(
            self.generation,
            &self.current,
            &valid.destination,
            check_due,
        ) {
            Plan::Copy(cause) => return Ok(cause),
            Plan::Verify { recheck_source } => recheck_source,
        };
        match self
            .verify(spec, valid, source, destination, recheck_source)
            .await
        {
            Ok(Verdict::Copy(cause)) => Ok(cause),
            Ok(Verdict::UpToDate) => {
                let since = if recheck_source {
                    Some(Duration::ZERO)
                } else {
                    since_source_check
                };
                Err(Stop::UpToDate(valid.clone(), since))
            }
            Err(error) => Err(Stop::failed(
                Some(&valid.destination),
                Failure::from_copy_error_in(&error, Some(spec)),
            )),
        }
    }

    /// The status and requeue of a reconcile that ends without a copy.
    async fn stop(self, stop: Stop) -> Result<Action, Error> {
        match stop {
            Stop::Failed {
                destination,
                failure,
            } => self.fail(destination.as_deref(), failure, false).await,
            Stop::Suspended(valid) => self.suspended(&valid).await,
            Stop::UpToDate(valid, since) => self.up_to_date(&valid, since).await,
            Stop::Api(error) => Err(error),
        }
    }

    /// One HEAD at the destination and, when due, one at the source.
    async fn verify(
        &self,
        spec: &BundleCopySpec,
        valid: &ValidSpec,
        source_endpoint: &EndpointOptions,
        destination_endpoint: &EndpointOptions,
        recheck_source: bool,
    ) -> Result<Verdict, CopyError> {
        let settings = &self.ctx.engine;
        let at_destination = resolve_digest(
            &valid.destination,
            destination_endpoint,
            Side::Destination,
            settings,
        )
        .await?;
        let at_source = if recheck_source {
            let digest = resolve_digest(
                &spec.source.reference,
                source_endpoint,
                Side::Source,
                settings,
            )
            .await?;
            self.ctx.remember_source_check(&self.key, Timestamp::now());
            Some(digest)
        } else {
            None
        };
        let mut verdict = decide::after_verify(
            &self.current,
            at_destination.as_deref(),
            at_source.as_ref().map(Option::as_deref),
        );
        if recheck_source && verdict == Verdict::UpToDate && spec.referrers.is_all() {
            // The bundle did not move; signatures or SBOMs may have been added to it.
            let found = list_referrers(
                &spec.source.reference,
                source_endpoint,
                Side::Source,
                settings,
                &spec.referrers.selection(&spec.artifact_types),
            )
            .await?;
            verdict =
                decide::after_referrer_check(&self.current, &status::referrers_status(&found));
        }
        tracing::debug!(
            ?verdict,
            ?at_destination,
            ?at_source,
            "checked the registries"
        );
        Ok(verdict)
    }

    /// Step 4: the copy, in a slot of its source's and its destination's registry and a copy
    /// slot, its progress written every few seconds.
    async fn copy(mut self, job: CopyJob) -> Result<Action, Error> {
        let hosts = [&job.spec.source.reference, &job.valid.destination].map(|reference| {
            Reference::parse(reference.trim())
                .map(|r| r.api_host().to_string())
                .unwrap_or_else(|_| reference.clone())
        });
        // Registry slots first: a copy waiting for a busy registry holds no copy slot that a copy
        // to another registry could use.
        let _registry_slots = self
            .ctx
            .registry_slots
            .acquire(&[&hosts[0], &hosts[1]])
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let _slot = self
            .ctx
            .copy_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let CopyJob {
            spec,
            valid,
            cause,
            source,
            destination,
        } = job;
        let request = CopyRequest {
            source: spec.source.reference.clone(),
            destination: spec.destination.reference.clone(),
            source_endpoint: source,
            destination_endpoint: destination,
            // A moved source tag is only acted on after a HEAD showed the destination still holds
            // our own last copy: replacing it is what `interval` asks for, not a clobber.
            force: spec.force || cause == CopyCause::SourceMoved,
            referrers: spec.referrers.selection(&spec.artifact_types),
            settings: self.ctx.engine.clone(),
            // A BundleCopy names registries; the controller never touches files.
            layouts: false,
        };
        let progress = Progress::default();
        self.copy_started(&spec, &valid, cause, &progress).await?;
        self.ctx.metrics.copies_in_flight.inc();
        let started = Instant::now();
        let result = self
            .copy_reporting_progress(&request, &valid, cause, &progress)
            .await;
        self.ctx.metrics.copies_in_flight.dec();
        self.ctx
            .metrics
            .record_copy(started.elapsed().as_secs_f64(), &progress.snapshot());
        match result {
            Ok(outcome) => self.copied(&valid, &outcome).await,
            Err(error) => {
                tracing::warn!(%error, "copy failed");
                let failure = Failure::from_copy_error_in(&error, Some(&spec));
                self.fail(Some(&valid.destination), failure, true).await
            }
        }
    }

    /// The status says Copying, and a CopyStarted event says why.
    async fn copy_started(
        &mut self,
        spec: &BundleCopySpec,
        valid: &ValidSpec,
        cause: CopyCause,
        progress: &Progress,
    ) -> Result<(), Error> {
        let copying = Phase::Copying {
            progress: progress.snapshot().into(),
            cause: cause.describe(),
        };
        self.write(Some(&valid.destination), copying).await?;
        let started_note = format!(
            "copying {} to {} because {}",
            spec.source.reference,
            valid.destination,
            cause.describe()
        );
        self.publish(
            EventType::Normal,
            event_reasons::COPY_STARTED,
            "Copy",
            started_note,
        )
        .await;
        tracing::info!(cause = cause.describe(), "copy started");
        Ok(())
    }

    /// Runs the copy; meanwhile its progress goes to the status every `progress_every`.
    async fn copy_reporting_progress(
        &mut self,
        request: &CopyRequest,
        valid: &ValidSpec,
        cause: CopyCause,
        progress: &Progress,
    ) -> Result<CopyOutcome, CopyError> {
        let copy = copy_bundle(request, progress);
        tokio::pin!(copy);
        let every = self.ctx.progress_every;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // A slow API server must not cause a burst of catch-up patches.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                result = &mut copy => return result,
                _ = ticker.tick() => {
                    let copying = Phase::Copying {
                        progress: progress.snapshot().into(),
                        cause: cause.describe(),
                    };
                    // Progress is best effort: a failed patch must not abort the copy.
                    if let Err(error) = self.write(Some(&valid.destination), copying).await {
                        tracing::warn!(%error, "could not report copy progress");
                    }
                }
            }
        }
    }

    async fn copied(mut self, valid: &ValidSpec, outcome: &CopyOutcome) -> Result<Action, Error> {
        self.ctx.forget_failures(&self.key);
        self.ctx.remember_source_check(&self.key, Timestamp::now());
        self.write(Some(&valid.destination), Phase::Copied { outcome })
            .await?;
        let p = &outcome.progress;
        let note = if outcome.up_to_date {
            format!(
                "{} already holds {}{}",
                outcome.destination,
                outcome.destination_digest,
                status::referrers_note(outcome)
            )
        } else {
            format!(
                "copied {} to {} ({}){}: {} blobs copied, {} mounted, {} already present, {} bytes",
                outcome.source,
                outcome.destination,
                outcome.destination_digest,
                status::referrers_note(outcome),
                p.copied,
                p.mounted,
                p.skipped,
                p.bytes
            )
        };
        tracing::info!(digest = %outcome.destination_digest, up_to_date = outcome.up_to_date, "copy finished");
        self.publish(EventType::Normal, event_reasons::COPIED, "Copy", note)
            .await;
        Ok(requeue(decide::requeue_after_success(
            valid.interval,
            Some(Duration::ZERO),
        )))
    }

    async fn up_to_date(
        mut self,
        valid: &ValidSpec,
        since_source_check: Option<Duration>,
    ) -> Result<Action, Error> {
        self.ctx.forget_failures(&self.key);
        self.write(Some(&valid.destination), Phase::Verified)
            .await?;
        Ok(requeue(decide::requeue_after_success(
            valid.interval,
            since_source_check,
        )))
    }

    async fn suspended(mut self, valid: &ValidSpec) -> Result<Action, Error> {
        self.ctx.forget_failures(&self.key);
        self.write(Some(&valid.destination), Phase::Suspended)
            .await?;
        Ok(Action::await_change())
    }

    /// Reports a failure; `copy_attempted` makes a CopyFailed event certain (a CopyStarted
    /// preceded it), otherwise one is sent only when the Ready condition changes.
    async fn fail(
        mut self,
        destination: Option<&str>,
        failure: Failure,
        copy_attempted: bool,
    ) -> Result<Action, Error> {
        // Condition messages are bounded by the API; keep well inside it.
        let failure = Failure {
            message: truncate(failure.message, MAX_MESSAGE_BYTES),
            ..failure
        };
        self.ctx.metrics.record_failure(failure.reason);
        let before = self.current.condition(condition_types::READY).cloned();
        self.write(
            destination,
            Phase::Failed {
                reason: failure.reason,
                message: &failure.message,
                stalled: !failure.transient,
            },
        )
        .await?;
        let after = self.current.condition(condition_types::READY).cloned();
        let ready_changed = before.map(|c| (c.status, c.reason, c.message))
            != after.map(|c| (c.status, c.reason, c.message));
        if copy_attempted || ready_changed {
            let note = format!("{}: {}", failure.reason, failure.message);
            self.publish(
                EventType::Warning,
                event_reasons::COPY_FAILED,
                failure.reason.as_str(),
                note,
            )
            .await;
        }
        let wait = if failure.transient {
            let failures = self.ctx.count_failure(&self.key);
            decide::transient_backoff(failures, failure.retry_after)
        } else {
            decide::PERMANENT_RETRY
        };
        tracing::info!(reason = %failure.reason, transient = failure.transient, retry_in = ?wait, "not ready: {}", failure.message);
        Ok(Action::requeue(wait))
    }

    /// Applies the status after `phase` unless it equals the current one.
    async fn write(&mut self, destination: Option<&str>, phase: Phase<'_>) -> Result<(), Error> {
        let next = status::next_status(
            &self.current,
            self.generation,
            destination,
            phase,
            Timestamp::now(),
        );
        if status::is_unchanged(&self.current, &next) {
            return Ok(());
        }
        let patch = serde_json::json!({
            "apiVersion": BundleCopy::api_version(&()),
            "kind": BundleCopy::kind(&()),
            "status": next,
        });
        self.api
            .patch_status(
                &self.object.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(Error::PatchStatus)?;
        if let Some(version) = &self.object.meta().resource_version {
            self.ctx
                .remember_written(&self.key, version.clone(), next.clone());
        }
        self.current = next;
        Ok(())
    }

    /// `action` is part of the Recorder's de-duplication key: repeats of one event within minutes
    /// become one Event series (keeping the first note), so failures use their Ready reason here.
    async fn publish(&self, type_: EventType, reason: &str, action: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(truncate(note, 1000)),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(error) = self
            .ctx
            .recorder
            .publish(&event, &self.object.object_ref(&()))
            .await
        {
            tracing::warn!(%error, reason, "could not publish an event");
        }
    }

    /// Time since the source was last resolved: remembered in this process, else lastCopyTime.
    fn since_source_check(&self) -> Option<Duration> {
        let last_copy = self.current.last_copy_time.as_ref().map(|time| time.0);
        let last = match (self.ctx.last_source_check(&self.key), last_copy) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }?;
        let elapsed = Timestamp::now().duration_since(last);
        Some(Duration::try_from(elapsed).unwrap_or(Duration::ZERO))
    }
}

fn requeue(after: Option<Duration>) -> Action {
    after.map_or_else(Action::await_change, Action::requeue)
}

/// Event notes are limited to 1 kB.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_truncated_on_a_char_boundary() {
        assert_eq!(truncate("é".repeat(600), 1000).len(), 1000);
        assert_eq!(truncate("abc".into(), 1000), "abc");
        assert_eq!(truncate("aé".into(), 2), "a");
    }
}
