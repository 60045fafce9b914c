//! The pure middle of a reconcile: whether to copy, check or do nothing, how long to wait
//! before the next attempt. No I/O here.

use std::time::Duration;

use super::crd::{BundleCopyStatus, ReferrersStatus, condition_types};
use bundlecopy_engine::{CopyError, ErrorKind};

/// First wait after a transient failure; doubles with each further failure.
pub const TRANSIENT_BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest wait between attempts after transient failures.
pub const TRANSIENT_BACKOFF_CAP: Duration = Duration::from_secs(5 * 60);
/// Slow retry after a permanent failure, in case something outside the spec changed
/// (a registry came back with the bundle, a credential was granted rights).
pub const PERMANENT_RETRY: Duration = Duration::from_secs(10 * 60);
/// Longest registry-requested wait (`Retry-After`) that is honoured as given.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(60 * 60);

/// Why a copy is started; shown in the CopyStarted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyCause {
    /// The spec changed (or was never handled).
    NewGeneration,
    /// The last attempt at this generation did not finish with Ready True.
    Retry,
    /// The status describes a different destination.
    NewDestination,
    /// The destination no longer holds the copied digest.
    DestinationChanged,
    /// The source tag now resolves to a different digest (or to nothing).
    SourceMoved,
    /// The source holds signatures, attestations or SBOMs that were not copied.
    NewReferrers,
}

impl CopyCause {
    pub fn describe(self) -> &'static str {
        match self {
            CopyCause::NewGeneration => "the spec changed",
            CopyCause::Retry => "the last attempt did not finish",
            CopyCause::NewDestination => "the destination changed",
            CopyCause::DestinationChanged => "the destination no longer holds the copied bundle",
            CopyCause::SourceMoved => "the source tag moved",
            CopyCause::NewReferrers => {
                "the source has signatures, attestations or SBOMs that were not copied"
            }
        }
    }
}

/// The first decision, from the resource alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Copy without looking first.
    Copy(CopyCause),
    /// A copy of this generation finished: check (one HEAD each) that the destination still holds
    /// it and, when `recheck_source`, that the source tag has not moved.
    Verify { recheck_source: bool },
}

/// Decide from the spec's generation, the current status and the resolved destination.
/// (`spec.suspend` is handled before: a suspended resource touches no registry.)
pub fn plan(
    generation: i64,
    status: &BundleCopyStatus,
    destination: &str,
    source_check_due: bool,
) -> Plan {
    if status.observed_generation != Some(generation) {
        return Plan::Copy(CopyCause::NewGeneration);
    }
    let ready_now = status
        .condition(condition_types::READY)
        .is_some_and(|ready| {
            ready.status == "True" && ready.observed_generation == Some(generation)
        });
    if !ready_now {
        return Plan::Copy(CopyCause::Retry);
    }
    if status.destination.as_deref() != Some(destination)
        || status.destination_digest.is_none()
        || status.source_digest.is_none()
    {
        return Plan::Copy(CopyCause::NewDestination);
    }
    Plan::Verify {
        recheck_source: source_check_due,
    }
}

/// The decision after the checks of `Plan::Verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    UpToDate,
    Copy(CopyCause),
}

/// `destination_digest`: what the destination tag resolves to now. `source_digest`: what the
/// source resolves to now, when it was re-resolved.
pub fn after_verify(
    status: &BundleCopyStatus,
    destination_digest: Option<&str>,
    source_digest: Option<Option<&str>>,
) -> Verdict {
    if destination_digest.is_none() || destination_digest != status.destination_digest.as_deref() {
        return Verdict::Copy(CopyCause::DestinationChanged);
    }
    match source_digest {
        Some(now) if now != status.source_digest.as_deref() => {
            Verdict::Copy(CopyCause::SourceMoved)
        }
        _ => Verdict::UpToDate,
    }
}

/// After an up-to-date verdict with the source re-resolved: the referrers at the source now
/// (as the status would list them) against those the status lists.
pub fn after_referrer_check(status: &BundleCopyStatus, at_source: &ReferrersStatus) -> Verdict {
    if status.referrers.as_ref() == Some(at_source) {
        Verdict::UpToDate
    } else {
        Verdict::Copy(CopyCause::NewReferrers)
    }
}

/// Whether the source should be checked again now: only with an interval, only when something
/// there can change (`fixed`: a digest whose referrers are not copied never does), and only once
/// `interval` has passed since the last check.
pub fn source_check_due(
    interval: Option<Duration>,
    fixed: bool,
    since_last_check: Option<Duration>,
) -> bool {
    match (interval, fixed) {
        (Some(interval), false) => since_last_check.is_none_or(|elapsed| elapsed >= interval),
        _ => false,
    }
}

/// When to look again after a successful reconcile: at the next source check, or never.
pub fn requeue_after_success(
    interval: Option<Duration>,
    since_last_check: Option<Duration>,
) -> Option<Duration> {
    let interval = interval?;
    let elapsed = since_last_check.unwrap_or_default();
    Some(interval.saturating_sub(elapsed).max(Duration::from_secs(1)))
}

/// Whether the controller retries a failed copy with the transient backoff (Ready False, not
/// Stalled) rather than the slow retry of a permanent failure. A missing source is transient
/// here: with GitOps a BundleCopy is often applied before its bundle is published.
pub fn is_transient(error: &CopyError) -> bool {
    error.is_transient() || error.kind() == ErrorKind::SourceNotFound
}

/// Wait before the next attempt after the `failures`-th transient failure in a row (1-based):
/// 5 s doubling to 5 min, or longer when the registry asked for it.
pub fn transient_backoff(failures: u32, retry_after: Option<Duration>) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let backoff = TRANSIENT_BACKOFF_BASE
        .saturating_mul(1u32 << doublings)
        .min(TRANSIENT_BACKOFF_CAP);
    match retry_after {
        Some(asked) => backoff.max(asked.min(RETRY_AFTER_CAP)),
        None => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    const DEST: &str = "localhost:5002/team/hello:v1";

    fn ready(status: &str, generation: i64) -> Condition {
        Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: if status == "True" {
                "Copied"
            } else {
                "Unreachable"
            }
            .into(),
            message: String::new(),
            observed_generation: Some(generation),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    fn copied(generation: i64) -> BundleCopyStatus {
        BundleCopyStatus {
            observed_generation: Some(generation),
            conditions: vec![ready("True", generation)],
            source_digest: Some("sha256:aaa".into()),
            destination: Some(DEST.into()),
            destination_digest: Some("sha256:aaa".into()),
            ..Default::default()
        }
    }

    #[test]
    fn plan_table() {
        let fresh = BundleCopyStatus::default();
        let failed = BundleCopyStatus {
            conditions: vec![ready("False", 2)],
            ..copied(2)
        };
        let ready_for_old_generation = BundleCopyStatus {
            conditions: vec![ready("True", 1)],
            ..copied(2)
        };
        let other_destination = BundleCopyStatus {
            destination: Some("localhost:5002/other:v1".into()),
            ..copied(2)
        };
        let no_digest = BundleCopyStatus {
            destination_digest: None,
            ..copied(2)
        };
        let cases: [(&str, &BundleCopyStatus, bool, Plan); 7] = [
            (
                "never reconciled",
                &fresh,
                false,
                Plan::Copy(CopyCause::NewGeneration),
            ),
            (
                "spec changed",
                &copied(1),
                false,
                Plan::Copy(CopyCause::NewGeneration),
            ),
            (
                "last attempt failed",
                &failed,
                false,
                Plan::Copy(CopyCause::Retry),
            ),
            (
                "Ready from an older generation",
                &ready_for_old_generation,
                false,
                Plan::Copy(CopyCause::Retry),
            ),
            (
                "destination moved",
                &other_destination,
                false,
                Plan::Copy(CopyCause::NewDestination),
            ),
            (
                "digest missing",
                &no_digest,
                false,
                Plan::Copy(CopyCause::NewDestination),
            ),
            (
                "finished, interval due",
                &copied(2),
                true,
                Plan::Verify {
                    recheck_source: true,
                },
            ),
        ];
        for (name, status, due, expected) in cases {
            assert_eq!(plan(2, status, DEST, due), expected, "{name}");
        }
        assert_eq!(
            plan(2, &copied(2), DEST, false),
            Plan::Verify {
                recheck_source: false
            }
        );
    }

    #[test]
    fn verdict_table() {
        let status = copied(2);
        assert_eq!(
            after_verify(&status, Some("sha256:aaa"), None),
            Verdict::UpToDate
        );
        assert_eq!(
            after_verify(&status, Some("sha256:aaa"), Some(Some("sha256:aaa"))),
            Verdict::UpToDate
        );
        assert_eq!(
            after_verify(&status, Some("sha256:aaa"), Some(Some("sha256:bbb"))),
            Verdict::Copy(CopyCause::SourceMoved)
        );
        assert_eq!(
            after_verify(&status, Some("sha256:aaa"), Some(None)),
            Verdict::Copy(CopyCause::SourceMoved),
            "a vanished source tag is reported by the copy (SourceNotFound)"
        );
        assert_eq!(
            after_verify(&status, None, None),
            Verdict::Copy(CopyCause::DestinationChanged)
        );
        assert_eq!(
            after_verify(&status, Some("sha256:ccc"), Some(Some("sha256:aaa"))),
            Verdict::Copy(CopyCause::DestinationChanged)
        );
    }

    #[test]
    fn referrers_not_in_the_status_make_a_copy() {
        use crate::operator::crd::ReferrerItem;
        let item = |digest: &str| ReferrerItem {
            subject: "sha256:aaa".into(),
            digest: digest.into(),
            artifact_type: "application/spdx+json".into(),
            found_by: "TagSchema".into(),
            tag: None,
        };
        let one = ReferrersStatus {
            count: 1,
            items: vec![item("sha256:1")],
        };
        let two = ReferrersStatus {
            count: 2,
            items: vec![item("sha256:1"), item("sha256:2")],
        };
        let status = BundleCopyStatus {
            referrers: Some(one.clone()),
            ..copied(2)
        };
        assert_eq!(after_referrer_check(&status, &one), Verdict::UpToDate);
        assert_eq!(
            after_referrer_check(&status, &two),
            Verdict::Copy(CopyCause::NewReferrers)
        );
        assert_eq!(
            after_referrer_check(&copied(2), &ReferrersStatus::default()),
            Verdict::Copy(CopyCause::NewReferrers),
            "a status from before referrers were copied"
        );
    }

    #[test]
    fn source_checks_only_for_tags_with_an_interval() {
        let ten_minutes = Some(Duration::from_secs(600));
        assert!(!source_check_due(None, false, None));
        assert!(
            !source_check_due(ten_minutes, true, None),
            "a digest never moves"
        );
        assert!(source_check_due(ten_minutes, false, None));
        assert!(!source_check_due(
            ten_minutes,
            false,
            Some(Duration::from_secs(599))
        ));
        assert!(source_check_due(
            ten_minutes,
            false,
            Some(Duration::from_secs(600))
        ));
    }

    #[test]
    fn requeue_waits_for_the_rest_of_the_interval() {
        let ten_minutes = Some(Duration::from_secs(600));
        assert_eq!(
            requeue_after_success(None, Some(Duration::from_secs(5))),
            None
        );
        assert_eq!(requeue_after_success(ten_minutes, None), ten_minutes);
        assert_eq!(
            requeue_after_success(ten_minutes, Some(Duration::from_secs(200))),
            Some(Duration::from_secs(400))
        );
        assert_eq!(
            requeue_after_success(ten_minutes, Some(Duration::from_secs(900))),
            Some(Duration::from_secs(1)),
            "never a zero requeue (hot loop)"
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_honours_retry_after() {
        let secs = |n| Duration::from_secs(n);
        assert_eq!(transient_backoff(0, None), secs(5));
        assert_eq!(transient_backoff(1, None), secs(5));
        assert_eq!(transient_backoff(2, None), secs(10));
        assert_eq!(transient_backoff(3, None), secs(20));
        assert_eq!(transient_backoff(7, None), secs(300));
        assert_eq!(transient_backoff(u32::MAX, None), secs(300));
        assert_eq!(transient_backoff(1, Some(secs(42))), secs(42));
        assert_eq!(transient_backoff(4, Some(secs(1))), secs(40));
        assert_eq!(transient_backoff(1, Some(secs(1_000_000))), RETRY_AFTER_CAP);
    }
}
