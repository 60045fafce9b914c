//! Pure status computation: the three conditions, copy facts, and the no-op test that keeps
//! the controller from patching a status that would not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::crd::{
    BundleCopyStatus, BundleIdentity, CopyProgress, ReferrerItem, ReferrersStatus, RelocatedImage,
    condition_types,
};
use super::reason::Reason;
use bundlecopy_engine::{CopyOutcome, Referrer};

/// Referrers listed one by one in the status; beyond this only the count says how many.
pub const MAX_STATUS_REFERRERS: usize = 100;

/// Reason of Reconciling (True) and Stalled (False) while a copy runs.
pub const REASON_COPYING: &str = "Copying";

/// What happened in this reconcile, as far as the status is concerned.
#[derive(Debug, Clone)]
pub enum Phase<'a> {
    /// A copy is running.
    Copying {
        progress: CopyProgress,
        cause: &'a str,
    },
    /// A copy finished (or found the destination already holding the bundle).
    Copied { outcome: &'a CopyOutcome },
    /// The copy of this generation is still in place; nothing changes.
    Verified,
    /// Something failed. `stalled`: only a change of spec or Secret can help.
    Failed {
        reason: Reason,
        message: &'a str,
        stalled: bool,
    },
    /// `spec.suspend` is set.
    Suspended,
}

/// The status after `phase`, starting from `current`. `destination` is the resolved destination
/// when the spec could be resolved; copy facts about another destination are dropped.
pub fn next_status(
    current: &BundleCopyStatus,
    generation: i64,
    destination: Option<&str>,
    phase: Phase<'_>,
    now: Timestamp,
) -> BundleCopyStatus {
    let now = Time(round_to_seconds(now));
    let mut next = start_from(current, generation, destination);
    let conditions = Conditions::of(&phase, &next);
    record_facts(&mut next, phase, &now);
    next.conditions = conditions.build(current.conditions.as_slice(), generation, &now);
    next
}

/// The owned part of `current` for this generation, without the copy facts when the destination
/// changed.
fn start_from(
    current: &BundleCopyStatus,
    generation: i64,
    destination: Option<&str>,
) -> BundleCopyStatus {
    let mut next = owned_view(current);
    next.observed_generation = Some(generation);
    match destination {
        Some(destination) if next.destination.as_deref() != Some(destination) => BundleCopyStatus {
            observed_generation: next.observed_generation,
            conditions: next.conditions,
            destination: Some(destination.to_string()),
            ..Default::default()
        },
        _ => next,
    }
}

/// One condition's status, reason and message.
struct Said {
    status: bool,
    reason: String,
    message: String,
}

fn said(status: bool, reason: &str, message: impl Into<String>) -> Said {
    Said {
        status,
        reason: reason.to_string(),
        message: message.into(),
    }
}

/// What a phase says in the three conditions: the table of phases → conditions.
struct Conditions {
    /// `None`: Ready keeps what it said (`kept`), e.g. the previous copy is still in place while
    /// a new one runs.
    ready: Option<Said>,
    kept: Option<Condition>,
    reconciling: Said,
    stalled: Said,
}

impl Conditions {
    fn of(phase: &Phase<'_>, next: &BundleCopyStatus) -> Conditions {
        let kept = next.condition(condition_types::READY).cloned();
        let settled = |ready: Option<Said>, reason: &str, stalled: Said| Conditions {
            ready,
            kept: kept.clone(),
            reconciling: said(false, reason, ""),
            stalled,
        };
        match phase {
            Phase::Copying { cause, .. } => Conditions {
                ready: None,
                kept: kept.clone(),
                reconciling: said(
                    true,
                    REASON_COPYING,
                    format!(
                        "copying to {} because {cause}",
                        next.destination.as_deref().unwrap_or("the destination")
                    ),
                ),
                stalled: said(false, REASON_COPYING, ""),
            },
            Phase::Copied { outcome } => {
                let (reason, message) = copied_message(outcome);
                let reason = reason.as_str();
                settled(
                    Some(said(true, reason, message)),
                    reason,
                    said(false, reason, ""),
                )
            }
            Phase::Verified => {
                let reason = kept
                    .as_ref()
                    .map_or(Reason::UpToDate.as_str(), |ready| ready.reason.as_str())
                    .to_string();
                settled(None, &reason, said(false, &reason, ""))
            }
            Phase::Failed {
                reason,
                message,
                stalled,
            } => {
                let reason = reason.as_str();
                let why = if *stalled {
                    "only a change of the spec or of a Secret can fix this; see the Ready condition"
                } else {
                    "the error may be temporary; retrying with backoff"
                };
                settled(
                    Some(said(false, reason, *message)),
                    reason,
                    said(*stalled, reason, why),
                )
            }
            Phase::Suspended => {
                let reason = Reason::Suspended.as_str();
                let message = "spec.suspend is true: no registry is contacted; set it to false to \
                               resume copying";
                settled(
                    Some(said(false, reason, message)),
                    reason,
                    said(false, reason, ""),
                )
            }
        }
    }

    /// The conditions, each keeping its `lastTransitionTime` from `previous` when its status
    /// did not change.
    fn build(self, previous: &[Condition], generation: i64, now: &Time) -> Vec<Condition> {
        let condition = |type_: &str, said: Said| {
            make_condition(
                previous,
                type_,
                said.status,
                &said.reason,
                said.message,
                generation,
                now,
            )
        };
        let ready = match self.ready {
            Some(ready) => Some(condition(condition_types::READY, ready)),
            None => self.kept,
        };
        ready
            .into_iter()
            .chain([
                condition(condition_types::RECONCILING, self.reconciling),
                condition(condition_types::STALLED, self.stalled),
            ])
            .collect()
    }
}

/// Ready's reason and message after a copy.
fn copied_message(outcome: &CopyOutcome) -> (Reason, String) {
    let referrers = referrers_note(outcome);
    if outcome.up_to_date {
        let message = format!(
            "{} already holds {} from {}{referrers}",
            outcome.destination, outcome.destination_digest, outcome.source
        );
        (Reason::UpToDate, message)
    } else {
        let message = format!(
            "copied {} to {} ({}){referrers}",
            outcome.source, outcome.destination, outcome.destination_digest
        );
        (Reason::Copied, message)
    }
}

/// " and N signatures/attestations", when the copy carried any.
pub fn referrers_note(outcome: &CopyOutcome) -> String {
    match outcome.referrers.as_ref().map_or(0, Vec::len) {
        0 => String::new(),
        n => format!(" and {n} signatures/attestations"),
    }
}

/// The status's account of referrers: the count, and the first `MAX_STATUS_REFERRERS` by
/// subject and digest (so the same referrers always give the same status).
pub fn referrers_status(found: &[Referrer]) -> ReferrersStatus {
    let mut sorted: Vec<&Referrer> = found.iter().collect();
    sorted.sort();
    ReferrersStatus {
        count: i64::try_from(found.len()).unwrap_or(i64::MAX),
        items: sorted
            .into_iter()
            .take(MAX_STATUS_REFERRERS)
            .map(|r| ReferrerItem {
                subject: r.subject.clone(),
                digest: r.digest.clone(),
                artifact_type: r.artifact_type.clone(),
                found_by: r.found_by.as_str().to_string(),
                tag: r.tag.clone(),
            })
            .collect(),
    }
}

/// The facts a phase adds: progress while copying, what was copied after a copy.
fn record_facts(next: &mut BundleCopyStatus, phase: Phase<'_>, now: &Time) {
    match phase {
        Phase::Copying { progress, .. } => next.progress = Some(progress),
        Phase::Copied { outcome } => {
            next.source_digest = Some(outcome.source_digest.clone());
            // The resolved destination of the spec stays the key that later reconciles compare.
            next.destination
                .get_or_insert_with(|| outcome.destination.clone());
            next.destination_digest = Some(outcome.destination_digest.clone());
            next.short_digest = Some(short_digest(&outcome.destination_digest));
            next.bundle = Some(BundleIdentity {
                name: outcome.bundle.name.clone(),
                version: outcome.bundle.version.clone(),
            });
            next.images = outcome
                .images
                .iter()
                .map(|image| RelocatedImage {
                    name: image.name.clone(),
                    image: image.image.clone(),
                    relocated: image.relocated.clone(),
                })
                .collect();
            next.referrers = outcome.referrers.as_deref().map(referrers_status);
            next.progress = Some(outcome.progress.into());
            next.last_copy_time = Some(now.clone());
        }
        Phase::Verified | Phase::Failed { .. } | Phase::Suspended => {}
    }
}

/// A condition that keeps its `lastTransitionTime` when its status did not change.
fn make_condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: i64,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: Some(generation),
        last_transition_time,
    }
}

/// `sha256:0123456789ab` from a full digest.
pub fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) => format!("{algorithm}:{}", hex.get(..12).unwrap_or(hex)),
        None => digest.get(..12).unwrap_or(digest).to_string(),
    }
}

/// The part of a status this controller owns: conditions of other types belong to other field
/// managers and are neither sent nor compared.
fn owned_view(status: &BundleCopyStatus) -> BundleCopyStatus {
    let mut owned = status.clone();
    owned.conditions.retain(|c| is_owned_condition(&c.type_));
    owned
}

fn is_owned_condition(type_: &str) -> bool {
    [
        condition_types::READY,
        condition_types::RECONCILING,
        condition_types::STALLED,
    ]
    .contains(&type_)
}

/// Whether applying `next` would change nothing in `current` (condition order ignored).
pub fn is_unchanged(current: &BundleCopyStatus, next: &BundleCopyStatus) -> bool {
    let sorted = |status: &BundleCopyStatus| {
        let mut view = owned_view(status);
        view.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        view
    };
    sorted(current) == sorted(next)
}

/// Timestamps are compared for no-op detection; the API server may keep only whole seconds.
fn round_to_seconds(now: Timestamp) -> Timestamp {
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bundlecopy_engine::{BundleInfo, ProgressSnapshot, RelocatedImage as EngineImage};
    use std::collections::BTreeMap;

    const DEST: &str = "localhost:5002/team/hello:v1";

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn outcome(up_to_date: bool) -> CopyOutcome {
        CopyOutcome {
            source: "localhost:5001/hello:v1".into(),
            source_digest: "sha256:0123456789abcdef".into(),
            destination: DEST.into(),
            destination_digest: "sha256:0123456789abcdef".into(),
            up_to_date,
            bundle: BundleInfo {
                name: "hello".into(),
                version: "0.1.0".into(),
            },
            images: vec![EngineImage {
                name: "invocation".into(),
                image: "localhost:5001/hello-installer:v1".into(),
                relocated: "localhost:5002/team/hello@sha256:feed".into(),
                digest: "sha256:feed".into(),
            }],
            relocation_map: BTreeMap::new(),
            referrers: None,
            progress: ProgressSnapshot {
                blobs: 3,
                copied: 2,
                skipped: 1,
                bytes: 100,
                total_bytes: 120,
                ..Default::default()
            },
        }
    }

    fn referrer(subject: &str, digest: &str) -> Referrer {
        Referrer {
            subject: subject.into(),
            digest: digest.into(),
            artifact_type: "application/vnd.cncf.notary.signature".into(),
            found_by: bundlecopy_engine::FoundBy::TagSchema,
            tag: None,
        }
    }

    #[test]
    fn referrers_are_counted_listed_in_order_and_named_in_ready() {
        let mut copied = outcome(false);
        copied.referrers = Some(vec![
            referrer("sha256:b", "sha256:2"),
            referrer("sha256:a", "sha256:9"),
        ]);
        let status = next_status(
            &Default::default(),
            1,
            Some(DEST),
            Phase::Copied { outcome: &copied },
            at(0),
        );
        let referrers = status.referrers.clone().unwrap();
        assert_eq!(referrers.count, 2);
        let digests: Vec<&str> = referrers.items.iter().map(|i| i.digest.as_str()).collect();
        assert_eq!(digests, ["sha256:9", "sha256:2"], "by subject, then digest");
        assert_eq!(referrers.items[0].found_by, "TagSchema");
        let ready = find(&status, "Ready");
        assert!(
            ready.message.ends_with("and 2 signatures/attestations"),
            "{}",
            ready.message
        );
        let many: Vec<Referrer> = (0..MAX_STATUS_REFERRERS + 5)
            .map(|n| referrer("sha256:a", &format!("sha256:{n:04}")))
            .collect();
        let listed = referrers_status(&many);
        assert_eq!(listed.count, (MAX_STATUS_REFERRERS + 5) as i64);
        assert_eq!(listed.items.len(), MAX_STATUS_REFERRERS);
        let without = next_status(
            &Default::default(),
            1,
            Some(DEST),
            Phase::Copied {
                outcome: &outcome(false),
            },
            at(0),
        );
        assert_eq!(without.referrers, None, "none asked for: none reported");
    }

    fn find<'a>(status: &'a BundleCopyStatus, type_: &str) -> &'a Condition {
        status
            .condition(type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"))
    }

    #[test]
    fn a_copy_sets_facts_and_three_conditions_with_the_generation() {
        let copied = outcome(false);
        let status = next_status(
            &Default::default(),
            4,
            Some(DEST),
            Phase::Copied { outcome: &copied },
            at(0),
        );
        assert_eq!(status.observed_generation, Some(4));
        let ready = find(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Copied")
        );
        assert!(ready.message.contains(DEST), "{}", ready.message);
        for type_ in ["Ready", "Reconciling", "Stalled"] {
            assert_eq!(find(&status, type_).observed_generation, Some(4), "{type_}");
        }
        assert_eq!(find(&status, "Reconciling").status, "False");
        assert_eq!(find(&status, "Stalled").status, "False");
        assert_eq!(
            status.source_digest.as_deref(),
            Some("sha256:0123456789abcdef")
        );
        assert_eq!(
            status.destination_digest.as_deref(),
            Some("sha256:0123456789abcdef")
        );
        assert_eq!(status.short_digest.as_deref(), Some("sha256:0123456789ab"));
        assert_eq!(status.destination.as_deref(), Some(DEST));
        assert_eq!(
            status.bundle,
            Some(BundleIdentity {
                name: "hello".into(),
                version: "0.1.0".into()
            })
        );
        assert_eq!(
            status.images[0].relocated,
            "localhost:5002/team/hello@sha256:feed"
        );
        assert_eq!(
            status.progress,
            Some(CopyProgress {
                blobs: 3,
                copied: 2,
                mounted: 0,
                skipped: 1,
                bytes: 100,
                total_bytes: 120
            })
        );
        assert_eq!(status.last_copy_time, Some(Time(at(0))));

        let up_to_date = outcome(true);
        let status = next_status(
            &Default::default(),
            4,
            Some(DEST),
            Phase::Copied {
                outcome: &up_to_date,
            },
            at(0),
        );
        assert_eq!(find(&status, "Ready").reason, "UpToDate");
    }

    #[test]
    fn last_transition_time_moves_only_when_the_status_flips() {
        let failed = next_status(
            &Default::default(),
            1,
            Some(DEST),
            Phase::Failed {
                reason: Reason::Unreachable,
                message: "registry down",
                stalled: false,
            },
            at(0),
        );
        // Same status (False), other reason and message: the transition time stays.
        let failed_again = next_status(
            &failed,
            1,
            Some(DEST),
            Phase::Failed {
                reason: Reason::AuthenticationFailed,
                message: "refused",
                stalled: true,
            },
            at(30),
        );
        assert_eq!(
            find(&failed_again, "Ready").last_transition_time,
            Time(at(0))
        );
        assert_eq!(find(&failed_again, "Ready").reason, "AuthenticationFailed");
        assert_eq!(find(&failed_again, "Stalled").status, "True");
        assert_eq!(
            find(&failed_again, "Stalled").last_transition_time,
            Time(at(30)),
            "Stalled flipped"
        );
        let copied = outcome(false);
        let recovered = next_status(
            &failed_again,
            2,
            Some(DEST),
            Phase::Copied { outcome: &copied },
            at(60),
        );
        assert_eq!(find(&recovered, "Ready").last_transition_time, Time(at(60)));
        assert_eq!(
            find(&recovered, "Reconciling").last_transition_time,
            Time(at(0)),
            "False all along"
        );
        assert_eq!(find(&recovered, "Ready").observed_generation, Some(2));
    }

    #[test]
    fn verifying_a_finished_copy_changes_nothing() {
        let copied = outcome(false);
        let status = next_status(
            &Default::default(),
            3,
            Some(DEST),
            Phase::Copied { outcome: &copied },
            at(0),
        );
        let verified = next_status(&status, 3, Some(DEST), Phase::Verified, at(500));
        assert!(
            is_unchanged(&status, &verified),
            "{status:#?}\n{verified:#?}"
        );
        assert_eq!(verified, status);
    }

    #[test]
    fn repeating_a_failure_is_a_no_op() {
        let phase = || Phase::Failed {
            reason: Reason::SecretNotFound,
            message: "Secret x not found",
            stalled: true,
        };
        let first = next_status(&Default::default(), 1, Some(DEST), phase(), at(0));
        let second = next_status(&first, 1, Some(DEST), phase(), at(99));
        assert!(is_unchanged(&first, &second));
        let third = next_status(&first, 2, Some(DEST), phase(), at(99));
        assert!(
            !is_unchanged(&first, &third),
            "a new generation must be reported"
        );
        assert_eq!(find(&third, "Ready").observed_generation, Some(2));
    }

    #[test]
    fn copying_keeps_ready_and_reports_progress() {
        let copied = outcome(false);
        let done = next_status(
            &Default::default(),
            1,
            Some(DEST),
            Phase::Copied { outcome: &copied },
            at(0),
        );
        let progress = CopyProgress {
            blobs: 9,
            copied: 1,
            ..Default::default()
        };
        let copying = next_status(
            &done,
            2,
            Some(DEST),
            Phase::Copying {
                progress,
                cause: "the source tag moved",
            },
            at(10),
        );
        let ready = find(&copying, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.observed_generation),
            ("True", Some(1)),
            "old Ready kept, old generation"
        );
        let reconciling = find(&copying, "Reconciling");
        assert_eq!(
            (reconciling.status.as_str(), reconciling.reason.as_str()),
            ("True", "Copying")
        );
        assert!(reconciling.message.contains("source tag moved"));
        assert_eq!(copying.progress, Some(progress));
        assert_eq!(
            copying.source_digest, done.source_digest,
            "facts of the last copy stay"
        );

        let first = next_status(
            &Default::default(),
            1,
            Some(DEST),
            Phase::Copying {
                progress,
                cause: "x",
            },
            at(0),
        );
        assert!(
            first.condition("Ready").is_none(),
            "no Ready before the first copy ends"
        );
    }

    #[test]
    fn a_new_destination_drops_old_facts() {
        let copied = outcome(false);
        let done = next_status(
            &Default::default(),
            1,
            Some(DEST),
            Phase::Copied { outcome: &copied },
            at(0),
        );
        let moved = next_status(
            &done,
            2,
            Some("localhost:5002/elsewhere:v1"),
            Phase::Failed {
                reason: Reason::Unreachable,
                message: "down",
                stalled: false,
            },
            at(5),
        );
        assert_eq!(
            moved.destination.as_deref(),
            Some("localhost:5002/elsewhere:v1")
        );
        assert_eq!(
            (
                moved.source_digest.as_ref(),
                moved.bundle.as_ref(),
                moved.images.len()
            ),
            (None, None, 0)
        );
        let invalid = next_status(
            &done,
            2,
            None,
            Phase::Failed {
                reason: Reason::InvalidSpec,
                message: "bad",
                stalled: true,
            },
            at(5),
        );
        assert_eq!(
            invalid.source_digest, done.source_digest,
            "an unresolvable spec keeps what is known"
        );
    }

    #[test]
    fn suspended_is_ready_false_and_not_stalled() {
        let status = next_status(&Default::default(), 1, Some(DEST), Phase::Suspended, at(0));
        let ready = find(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Suspended")
        );
        assert_eq!(find(&status, "Stalled").status, "False");
    }

    #[test]
    fn conditions_of_other_managers_are_left_alone() {
        let mut current = next_status(&Default::default(), 1, Some(DEST), Phase::Suspended, at(0));
        let foreign = Condition {
            type_: "example.com/Audited".into(),
            status: "True".into(),
            reason: "Checked".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(at(0)),
        };
        current.conditions.insert(0, foreign);
        let next = next_status(&current, 1, Some(DEST), Phase::Suspended, at(10));
        assert!(
            next.condition("example.com/Audited").is_none(),
            "not ours to apply"
        );
        assert!(is_unchanged(&current, &next));
    }

    #[test]
    fn short_digests() {
        assert_eq!(
            short_digest("sha256:0123456789abcdef0123"),
            "sha256:0123456789ab"
        );
        assert_eq!(short_digest("sha256:abc"), "sha256:abc");
        assert_eq!(short_digest("odd"), "odd");
    }
}
