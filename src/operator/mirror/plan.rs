//! The pure middle of a mirror's reconcile: is the spec usable, when to list the source's tags
//! again, which BundleCopies the chosen tags need (names, specs) and which to delete, and the
//! status that follows from the children. No I/O here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::operator::crd::{BundleCopy, BundleCopySpec, condition_types};
use crate::operator::duration::parse_duration;
use bundlecopy_engine::reference::Reference;
use bundlecopy_engine::tags::TagSelection;

use super::api::{BundleMirrorSpec, BundleMirrorStatus, MirroredTag, TAG_ANNOTATION};

/// Longest name of a BundleCopy a mirror owns: a DNS label, so it can also name a label value.
const CHILD_NAME_MAX: usize = 63;
/// Hex digits of the tag's hash at the end of every child name.
const CHILD_HASH_LEN: usize = 8;

/// The shortest `interval` a mirror may have (the CRD enforces it too).
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// A usable mirror spec: the compiled selection, the source repository and the interval.
#[derive(Debug)]
pub struct CheckedSpec {
    pub selection: TagSelection,
    pub repository: Reference,
    pub interval: Duration,
}

/// Checks what the API server cannot: the selection compiles, the source is a repository
/// without tag or digest, the destination is a registry or prefix, the interval parses. The
/// error names the field to fix.
pub fn check(spec: &BundleMirrorSpec, min_interval: Duration) -> Result<CheckedSpec, String> {
    let selection = spec.tags.filter().compile().map_err(|e| match e.field() {
        "" => format!("spec.tags: {e}"),
        field => format!("spec.tags.{field}: {e}"),
    })?;
    let repository = Reference::parse(&spec.source.repository)
        .map_err(|e| format!("spec.source.repository: {e}"))?;
    if repository.tag().is_some() || repository.digest().is_some() {
        return Err(format!(
            "spec.source.repository {:?} names a tag or digest; give the repository alone, e.g. {}",
            spec.source.repository,
            repository.name()
        ));
    }
    let tagged = Reference::parse(&format!("{}:0.0.0", repository.name()))
        .map_err(|e| format!("spec.source.repository: {e}"))?;
    let probe =
        bundlecopy_engine::reference::derive_destination(&tagged, &spec.destination.reference)
            .map_err(|e| format!("spec.destination.reference: {e}"))?;
    if probe.tag() != Some("0.0.0") {
        return Err(format!(
            "spec.destination.reference {:?} names a tag or digest; a mirror's destination is a \
             registry or a registry and repository prefix",
            spec.destination.reference
        ));
    }
    let interval = parse_duration(&spec.interval).map_err(|e| format!("spec.interval: {e}"))?;
    if interval < min_interval {
        return Err(format!(
            "spec.interval {:?} is shorter than {}",
            spec.interval,
            if min_interval == MIN_INTERVAL {
                "1m".to_string()
            } else {
                format!("{min_interval:?}")
            }
        ));
    }
    Ok(CheckedSpec {
        selection,
        repository,
        interval,
    })
}

/// Whether the source's tags must be listed now: the spec changed since the last listing, or
/// the interval has passed. Child status changes alone only refresh the status.
pub fn listing_due(
    status: Option<&BundleMirrorStatus>,
    generation: Option<i64>,
    interval: Duration,
    now: Timestamp,
) -> bool {
    let Some(status) = status else {
        return true;
    };
    if status.observed_generation != generation {
        return true;
    }
    match &status.last_sync_time {
        None => true,
        Some(Time(last)) => now
            .duration_since(*last)
            .try_into()
            .map_or(true, |since: Duration| since >= interval),
    }
}

/// The name of the BundleCopy that copies `tag` for mirror `mirror`: `MIRROR-TAG-HASH`, where
/// TAG is the tag in lower case with every other character `-`, HASH the first 8 hex digits of
/// the tag's SHA-256 (so `1.0.0` and `1-0-0` never share a child), cut to fit 63 characters.
pub fn child_name(mirror: &str, tag: &str) -> String {
    let digest = bundlecopy_engine::digest::compute(
        bundlecopy_engine::digest::Algorithm::Sha256,
        tag.as_bytes(),
    );
    let hex = digest.trim_start_matches("sha256:");
    let hash = hex.get(..CHILD_HASH_LEN).unwrap_or(hex);
    let mut readable = String::with_capacity(mirror.len() + tag.len() + 1);
    for character in format!("{mirror}-{tag}").chars() {
        let character = character.to_ascii_lowercase();
        let keep = character.is_ascii_lowercase() || character.is_ascii_digit();
        if keep {
            readable.push(character);
        } else if !readable.ends_with('-') {
            readable.push('-');
        }
    }
    let room = CHILD_NAME_MAX - CHILD_HASH_LEN - 1;
    let readable: String = readable.chars().take(room).collect();
    let readable = readable.trim_matches('-');
    format!("{readable}-{hash}")
}

/// The spec of the BundleCopy that copies `tag`: the source repository at that tag, the
/// mirror's destination (the repository's last segment and the tag are appended to it), and
/// the mirror's access settings, interval, suspend and force.
pub fn child_spec(spec: &BundleMirrorSpec, tag: &str) -> BundleCopySpec {
    BundleCopySpec {
        source: spec
            .source
            .endpoint(format!("{}:{tag}", spec.source.repository)),
        destination: spec.destination.clone(),
        force: spec.force,
        // A BundleCopy's interval is at least 1m (its CRD says so); only tests go below.
        interval: Some(match parse_duration(&spec.interval) {
            Ok(interval) if interval >= MIN_INTERVAL => spec.interval.clone(),
            _ => "1m".to_string(),
        }),
        suspend: spec.suspend,
        referrers: spec.referrers,
        artifact_types: spec.artifact_types.clone(),
    }
}

/// The tag a child copies, from its annotation.
pub fn child_tag(child: &BundleCopy) -> Option<&str> {
    child
        .metadata
        .annotations
        .as_ref()?
        .get(TAG_ANNOTATION)
        .map(String::as_str)
}

/// Children whose tag is no longer selected (or that carry no tag): to delete. Deleting a
/// BundleCopy never touches the destination registry.
pub fn stale_children<'a>(children: &'a [BundleCopy], selected: &[String]) -> Vec<&'a str> {
    let wanted: BTreeSet<&str> = selected.iter().map(String::as_str).collect();
    children
        .iter()
        .filter(|child| child_tag(child).is_none_or(|tag| !wanted.contains(tag)))
        .filter_map(|child| child.metadata.name.as_deref())
        .collect()
}

/// Ready reasons of a BundleCopy that mean "in progress", not "failed".
const IN_PROGRESS_REASONS: [&str; 1] = [crate::operator::status::REASON_COPYING];

/// How the selected tags' copies stand, from the children's status.
pub fn mirrored_tags(
    mirror: &str,
    selected: &[String],
    children: &[BundleCopy],
) -> Vec<MirroredTag> {
    let by_tag: BTreeMap<&str, &BundleCopy> = children
        .iter()
        .filter_map(|child| Some((child_tag(child)?, child)))
        .collect();
    selected
        .iter()
        .map(|tag| {
            let child = by_tag.get(tag.as_str());
            let status = child.and_then(|child| child.status.as_ref());
            let ready = status.and_then(|s| s.condition(condition_types::READY));
            MirroredTag {
                tag: tag.clone(),
                child: child
                    .and_then(|c| c.metadata.name.clone())
                    .unwrap_or_else(|| child_name(mirror, tag)),
                digest: status.and_then(|s| s.source_digest.clone()),
                ready: ready.map_or_else(|| "Unknown".to_string(), |c| c.status.clone()),
                reason: ready.map(|c| c.reason.clone()),
            }
        })
        .collect()
}

/// Why a mirror is not Ready, or what it did; the status message and conditions follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorState {
    /// The spec cannot be used: Stalled, Ready False InvalidSpec.
    InvalidSpec(String),
    /// `spec.suspend`: Ready False Suspended.
    Suspended,
    /// Listing the source's tags failed; `permanent` when retrying alone will not help.
    ListingFailed {
        reason: String,
        message: String,
        permanent: bool,
    },
    /// The children stand as `tags` say.
    Mirroring,
}

/// How many selected tags stand where.
#[derive(Clone, Copy)]
struct Counts {
    selected: usize,
    ready: usize,
    failed: usize,
}

impl Counts {
    fn of(tags: &[MirroredTag]) -> Counts {
        Counts {
            selected: tags.len(),
            ready: tags.iter().filter(|t| t.ready == "True").count(),
            failed: tags
                .iter()
                .filter(|t| {
                    t.ready == "False"
                        && t.reason
                            .as_deref()
                            .is_some_and(|r| !IN_PROGRESS_REASONS.contains(&r))
                })
                .count(),
        }
    }
}

/// The three conditions a state gives: Ready (status, reason, message), Reconciling (status,
/// reason) and Stalled (status, reason; its message is Ready's when True).
type ConditionRow<'a> = (
    (&'a str, &'a str, String),
    (&'a str, &'a str),
    (&'a str, &'a str),
);

/// The table of states → conditions.
fn condition_row<'a>(
    state: &'a MirrorState,
    counts: &Counts,
    tags: &[MirroredTag],
) -> ConditionRow<'a> {
    let Counts {
        selected,
        ready,
        failed,
    } = *counts;
    match state {
        MirrorState::InvalidSpec(message) => (
            ("False", "InvalidSpec", message.clone()),
            ("False", "InvalidSpec"),
            ("True", "InvalidSpec"),
        ),
        MirrorState::Suspended => (
            ("False", "Suspended", "spec.suspend is true: no tags are listed and every BundleCopy of this mirror is suspended".to_string()),
            ("False", "Suspended"),
            ("False", "Suspended"),
        ),
        MirrorState::ListingFailed {
            reason,
            message,
            permanent,
        } => (
            ("False", reason.as_str(), message.clone()),
            ("False", reason.as_str()),
            (if *permanent { "True" } else { "False" }, reason.as_str()),
        ),
        MirrorState::Mirroring if selected == 0 => (
            ("True", "NothingSelected", "no tag of the source repository matches spec.tags yet".to_string()),
            ("False", "NothingSelected"),
            ("False", "NothingSelected"),
        ),
        MirrorState::Mirroring if ready == selected => (
            ("True", "Mirrored", format!("all {selected} selected tags are copied")),
            ("False", "Mirrored"),
            ("False", "Mirrored"),
        ),
        MirrorState::Mirroring if failed > 0 => (
            ("False", "CopyFailed", format!(
                "{ready} of {selected} selected tags are copied; {failed} failed: {}",
                failed_list(tags)
            )),
            ("True", "Copying"),
            ("False", "CopyFailed"),
        ),
        MirrorState::Mirroring => (
            ("False", "Copying", format!("{ready} of {selected} selected tags are copied")),
            ("True", "Copying"),
            ("False", "Copying"),
        ),
    }
}

/// The status for `state`: counts from `tags`, and the three conditions. Conditions keep their
/// `lastTransitionTime` when their status does not change.
pub fn next_status(
    previous: Option<&BundleMirrorStatus>,
    generation: Option<i64>,
    state: &MirrorState,
    tags: Vec<MirroredTag>,
    last_sync_time: Option<Time>,
    now: Timestamp,
) -> BundleMirrorStatus {
    let counts = Counts::of(&tags);
    let (ready, reconciling, stalled) = condition_row(state, &counts, &tags);
    let reconciling_message = match reconciling.0 {
        "True" => format!(
            "{} of {} copies still to finish",
            counts.selected - counts.ready,
            counts.selected
        ),
        _ => String::new(),
    };
    let stalled_message = if stalled.0 == "True" {
        ready.2.as_str()
    } else {
        ""
    };
    let make = |kind, (status, reason): (&str, &str), message: &str| {
        condition(previous, kind, status, reason, message, generation, now)
    };
    let conditions = vec![
        make(condition_types::READY, (ready.0, ready.1), &ready.2),
        make(
            condition_types::RECONCILING,
            reconciling,
            &reconciling_message,
        ),
        make(condition_types::STALLED, stalled, stalled_message),
    ];
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    BundleMirrorStatus {
        observed_generation: generation,
        conditions,
        selected: count(counts.selected),
        ready: count(counts.ready),
        failed: count(counts.failed),
        tags,
        last_sync_time: last_sync_time.or_else(|| previous.and_then(|p| p.last_sync_time.clone())),
    }
}

/// Up to five failed tags with their reasons, for the Ready message.
fn failed_list(tags: &[MirroredTag]) -> String {
    let failed: Vec<String> = tags
        .iter()
        .filter(|t| t.ready == "False")
        .filter_map(|t| Some(format!("{} ({})", t.tag, t.reason.as_deref()?)))
        .take(5)
        .collect();
    failed.join(", ")
}

fn condition(
    previous: Option<&BundleMirrorStatus>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let last_transition_time = previous
        .and_then(|p| p.condition(type_))
        .filter(|c| c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{BundleCopyStatus, Endpoint};
    use crate::operator::mirror::api::{MirrorSource, TagSelector};
    use kube::api::ObjectMeta;

    fn spec() -> BundleMirrorSpec {
        BundleMirrorSpec {
            source: MirrorSource {
                repository: "ghcr.io/vendor/app".into(),
                insecure: false,
                ca_secret_ref: None,
                credentials: vec![crate::operator::crd::SecretReference {
                    name: "pull".into(),
                }],
                proxy_secret_ref: Some(crate::operator::crd::SecretReference {
                    name: "corp-proxy".into(),
                }),
                provider: crate::operator::crd::CloudProvider::Aws,
            },
            destination: Endpoint {
                reference: "registry.internal:5000/mirror".into(),
                insecure: true,
                ca_secret_ref: None,
                credentials: vec![],
                proxy_secret_ref: None,
                provider: Default::default(),
            },
            tags: TagSelector {
                semver: Some(">=1.0.0 <2.0.0".into()),
                ..Default::default()
            },
            interval: "10m".into(),
            suspend: false,
            force: true,
            referrers: crate::operator::crd::Referrers::All,
            artifact_types: vec!["application/vnd.cncf.notary.signature".into()],
        }
    }

    #[test]
    fn child_names_are_dns_labels_distinct_per_tag_and_stable() {
        let name = child_name("app-mirror", "v1.2.0");
        assert_eq!(name, child_name("app-mirror", "v1.2.0"));
        assert!(name.starts_with("app-mirror-v1-2-0-"), "{name}");
        assert_ne!(child_name("m", "1.0.0"), child_name("m", "1-0-0"));
        assert_ne!(child_name("m", "V1"), child_name("m", "v1"));
        let long = child_name(&"a".repeat(63), &format!("{}_x", "Z".repeat(120)));
        for name in [name, long, child_name("m", "___"), child_name("m", "1.0.0")] {
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(!name.starts_with('-') && !name.ends_with('-'), "{name}");
            assert!(!name.contains("--"), "{name}");
        }
    }

    #[test]
    fn a_child_inherits_the_mirror_settings_for_its_tag() {
        let child = child_spec(&spec(), "1.2.0");
        assert_eq!(child.source.reference, "ghcr.io/vendor/app:1.2.0");
        assert_eq!(child.source.credentials[0].name, "pull");
        assert_eq!(
            child
                .source
                .proxy_secret_ref
                .as_ref()
                .map(|r| r.name.as_str()),
            Some("corp-proxy")
        );
        assert_eq!(
            child.source.provider,
            crate::operator::crd::CloudProvider::Aws
        );
        assert_eq!(child.destination, spec().destination);
        assert_eq!(child.interval.as_deref(), Some("10m"));
        assert!(child.force && !child.suspend);
        assert_eq!(child.referrers, crate::operator::crd::Referrers::All);
        assert_eq!(
            child.artifact_types,
            ["application/vnd.cncf.notary.signature"]
        );
        let without = BundleMirrorSpec {
            referrers: crate::operator::crd::Referrers::None,
            ..spec()
        };
        assert_eq!(
            child_spec(&without, "1.2.0").referrers,
            crate::operator::crd::Referrers::None
        );
    }

    #[test]
    fn specs_that_cannot_work_are_refused_naming_the_field() {
        assert!(check(&spec(), MIN_INTERVAL).is_ok());
        let with = |change: &dyn Fn(&mut BundleMirrorSpec)| {
            let mut spec = spec();
            change(&mut spec);
            check(&spec, MIN_INTERVAL).unwrap_err()
        };
        type Change<'a> = &'a dyn Fn(&mut BundleMirrorSpec);
        let cases: [(Change, &str); 6] = [
            (
                &|s| s.tags = TagSelector::default(),
                "spec.tags: give at least one",
            ),
            (&|s| s.tags.include = Some("(".into()), "spec.tags.include"),
            (
                &|s| s.source.repository = "ghcr.io/vendor/app:v1".into(),
                "spec.source.repository",
            ),
            (
                &|s| s.destination.reference = "registry.internal:5000/x:v1".into(),
                "spec.destination.reference",
            ),
            (
                &|s| s.interval = "30s".into(),
                "spec.interval \"30s\" is shorter than 1m",
            ),
            (&|s| s.interval = "soon".into(), "spec.interval"),
        ];
        for (change, expected) in cases {
            let error = with(change);
            assert!(error.contains(expected), "{error}");
        }
        let mut bare_registry = spec();
        bare_registry.destination.reference = "registry.internal:5000".into();
        assert!(check(&bare_registry, MIN_INTERVAL).is_ok());
    }

    #[test]
    fn tags_are_listed_on_a_new_spec_and_then_every_interval() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let synced = |ago: i64, generation| BundleMirrorStatus {
            observed_generation: Some(generation),
            last_sync_time: Some(Time(Timestamp::from_second(1_800_000_000 - ago).unwrap())),
            ..Default::default()
        };
        let interval = Duration::from_secs(600);
        assert!(listing_due(None, Some(1), interval, now));
        assert!(listing_due(Some(&synced(10, 1)), Some(2), interval, now));
        assert!(!listing_due(Some(&synced(10, 1)), Some(1), interval, now));
        assert!(listing_due(Some(&synced(600, 1)), Some(1), interval, now));
    }

    fn child(tag: &str, ready: Option<(&str, &str)>) -> BundleCopy {
        let mut child = BundleCopy::new(&child_name("m", tag), child_spec(&spec(), tag));
        child.metadata = ObjectMeta {
            name: Some(child_name("m", tag)),
            annotations: Some([(TAG_ANNOTATION.to_string(), tag.to_string())].into()),
            ..Default::default()
        };
        child.status = ready.map(|(status, reason)| BundleCopyStatus {
            source_digest: Some(format!("sha256:{tag}")),
            conditions: vec![Condition {
                type_: condition_types::READY.into(),
                status: status.into(),
                reason: reason.into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        });
        child
    }

    #[test]
    fn children_of_tags_that_left_the_selection_are_deleted() {
        let children = [
            child("1.0.0", None),
            child("1.1.0", None),
            child("0.9.0", None),
        ];
        let selected = ["1.1.0".to_string()];
        let mut untagged = child("x", None);
        untagged.metadata.annotations = None;
        let mut all = children.to_vec();
        all.push(untagged);
        assert_eq!(
            stale_children(&all, &selected),
            [
                child_name("m", "1.0.0"),
                child_name("m", "0.9.0"),
                child_name("m", "x")
            ]
        );
    }

    #[test]
    fn the_status_follows_the_children() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let children = [
            child("1.2.0", Some(("True", "Copied"))),
            child("1.1.0", Some(("False", "Copying"))),
            child("1.0.0", Some(("False", "AuthenticationFailed"))),
        ];
        let selected: Vec<String> = ["1.2.0", "1.1.0", "1.0.0", "0.1.0"]
            .map(String::from)
            .to_vec();
        let tags = mirrored_tags("m", &selected, &children);
        assert_eq!(tags[0].digest.as_deref(), Some("sha256:1.2.0"));
        assert_eq!(tags[3].ready, "Unknown");
        assert_eq!(tags[3].child, child_name("m", "0.1.0"));
        let status = next_status(None, Some(3), &MirrorState::Mirroring, tags, None, now);
        assert_eq!((status.selected, status.ready, status.failed), (4, 1, 1));
        let ready = status.condition("Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "CopyFailed")
        );
        assert!(
            ready.message.contains("1.0.0 (AuthenticationFailed)"),
            "{}",
            ready.message
        );
        assert_eq!(status.condition("Reconciling").unwrap().status, "True");
        assert_eq!(status.condition("Stalled").unwrap().status, "False");
        assert_eq!(status.observed_generation, Some(3));

        let all_ready = mirrored_tags("m", &selected[..1], &children);
        let done = next_status(
            Some(&status),
            Some(3),
            &MirrorState::Mirroring,
            all_ready,
            Some(Time(now)),
            now,
        );
        let ready = done.condition("Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Mirrored")
        );
        assert_eq!(done.last_sync_time, Some(Time(now)));

        let invalid = next_status(
            Some(&done),
            Some(4),
            &MirrorState::InvalidSpec("spec.tags.include: bad".into()),
            vec![],
            None,
            now,
        );
        assert_eq!(invalid.condition("Stalled").unwrap().status, "True");
        assert_eq!(invalid.condition("Ready").unwrap().reason, "InvalidSpec");
        assert_eq!(
            invalid.last_sync_time, done.last_sync_time,
            "kept from before"
        );

        let nothing = next_status(None, Some(1), &MirrorState::Mirroring, vec![], None, now);
        assert_eq!(
            nothing.condition("Ready").unwrap().reason,
            "NothingSelected"
        );
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let then = Timestamp::from_second(1_700_000_000).unwrap();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let first = next_status(None, Some(1), &MirrorState::Suspended, vec![], None, then);
        let second = next_status(
            Some(&first),
            Some(1),
            &MirrorState::Suspended,
            vec![],
            None,
            now,
        );
        assert_eq!(
            second.condition("Ready").unwrap().last_transition_time,
            Time(then)
        );
        let moved = next_status(
            Some(&first),
            Some(1),
            &MirrorState::Mirroring,
            vec![],
            None,
            now,
        );
        assert_eq!(
            moved.condition("Ready").unwrap().last_transition_time,
            Time(now)
        );
    }
}
