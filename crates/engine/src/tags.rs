//! Which tags of a repository a mirror copies: a semver range, include and exclude patterns, and
//! "the latest N versions". Pure: the same code answers `bundlecopy tags` and the BundleMirror
//! controller, so what the CLI prints is what a mirror would copy.

use std::cmp::Ordering;

use regex::Regex;
use semver::{Version, VersionReq};

/// A tag selection as a user writes it (BundleMirror `spec.tags`, or the `bundlecopy tags` flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagFilter {
    /// A semver range such as `>=1.0.0 <2.0.0` or `^1.2`.
    pub semver: Option<String>,
    /// A regular expression a tag must match (anywhere; anchor with `^…$`).
    pub include: Option<String>,
    /// A regular expression; tags that match are left out.
    pub exclude: Option<String>,
    /// Keep only this many of the highest versions.
    pub latest: Option<u32>,
}

/// What is wrong with a [`TagFilter`]; [`TagFilterError::field`] names the field, which each
/// front end spells its own way (`spec.tags.semver`, `--semver`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagFilterError {
    #[error("give at least one of semver, include, exclude or latest")]
    Empty,
    #[error("{range:?} is not a semver range ({problem}); e.g. \">=1.0.0 <2.0.0\" or \"^1.2\"")]
    Semver { range: String, problem: String },
    #[error("{pattern:?} is not a valid regular expression: {problem}")]
    Pattern {
        field: &'static str,
        pattern: String,
        problem: String,
    },
    #[error("must be at least 1")]
    LatestZero,
}

impl TagFilterError {
    /// The field at fault: `semver`, `include`, `exclude` or `latest`; empty for [`Self::Empty`].
    pub fn field(&self) -> &'static str {
        match self {
            TagFilterError::Empty => "",
            TagFilterError::Semver { .. } => "semver",
            TagFilterError::Pattern { field, .. } => field,
            TagFilterError::LatestZero => "latest",
        }
    }
}

/// A [`TagFilter`] checked and compiled.
#[derive(Debug, Clone)]
pub struct TagSelection {
    semver: Option<VersionReq>,
    include: Option<Regex>,
    exclude: Option<Regex>,
    latest: Option<usize>,
}

/// One tag chosen, with its version when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedTag {
    pub tag: String,
    pub version: Option<Version>,
}

/// Patterns longer than this are refused: a mirror's spec is not a place for a program.
const PATTERN_SIZE_LIMIT: usize = 1 << 16;

impl TagFilter {
    /// Checks every field; the error names the one to fix.
    pub fn compile(&self) -> Result<TagSelection, TagFilterError> {
        if self.semver.is_none()
            && self.include.is_none()
            && self.exclude.is_none()
            && self.latest.is_none()
        {
            return Err(TagFilterError::Empty);
        }
        let semver = self
            .semver
            .as_deref()
            .map(|range| {
                VersionReq::parse(&comma_separated(range)).map_err(|error| TagFilterError::Semver {
                    range: range.to_string(),
                    problem: error.to_string(),
                })
            })
            .transpose()?;
        let pattern = |field: &'static str, pattern: &Option<String>| {
            pattern
                .as_deref()
                .map(|text| {
                    regex::RegexBuilder::new(text)
                        .size_limit(PATTERN_SIZE_LIMIT * 16)
                        .build()
                        .map_err(|error| TagFilterError::Pattern {
                            field,
                            pattern: text.to_string(),
                            problem: one_line(&error),
                        })
                })
                .transpose()
        };
        let include = pattern("include", &self.include)?;
        let exclude = pattern("exclude", &self.exclude)?;
        let latest = match self.latest {
            Some(0) => return Err(TagFilterError::LatestZero),
            Some(count) => Some(usize::try_from(count).unwrap_or(usize::MAX)),
            None => None,
        };
        Ok(TagSelection {
            semver,
            include,
            exclude,
            latest,
        })
    }
}

/// The regex crate's message without the drawing of the pattern it puts before it: the last
/// line, e.g. "unclosed group".
fn one_line(error: &regex::Error) -> String {
    let text = error.to_string();
    let last = text.lines().last().unwrap_or_default().trim();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

/// A range as people write it (`>=1.0.0 <2.0.0`, npm and regsync style; `>= 1.0.0, < 2.0.0`) in
/// the comma-separated form the semver crate parses (`>=1.0.0, <2.0.0`).
fn comma_separated(range: &str) -> String {
    let mut comparators: Vec<String> = Vec::new();
    let mut pending_operator = String::new();
    for token in range.split([',', ' ', '\t']).filter(|t| !t.is_empty()) {
        if token.chars().all(|c| "<>=~^".contains(c)) {
            pending_operator.push_str(token);
        } else {
            comparators.push(format!("{pending_operator}{token}"));
            pending_operator.clear();
        }
    }
    if !pending_operator.is_empty() {
        comparators.push(pending_operator);
    }
    comparators.join(", ")
}

/// The version a tag names: `1.2.3`, `v1.2.3`, `1.2.3-rc.1`, `v2.0.0+build.5`. Anything else
/// (`latest`, `1.2`, `stable`) has none.
pub fn tag_version(tag: &str) -> Option<Version> {
    let text = tag.strip_prefix('v').unwrap_or(tag);
    Version::parse(text).ok()
}

impl TagSelection {
    /// The tags chosen from `tags`: those that match `include`, do not match `exclude`, and
    /// (with `semver`) name a version in the range — pre-releases only when the range names a
    /// pre-release of the same major.minor.patch, as semver's rules say; then, with `latest`,
    /// the N highest versions (tags without a version cannot be ordered and are left out).
    ///
    /// Ordered highest version first, then tags without a version by name. Duplicates count once.
    pub fn select<'a>(&self, tags: impl IntoIterator<Item = &'a str>) -> Vec<SelectedTag> {
        let mut chosen: Vec<SelectedTag> = tags
            .into_iter()
            .filter(|tag| self.include.as_ref().is_none_or(|re| re.is_match(tag)))
            .filter(|tag| !self.exclude.as_ref().is_some_and(|re| re.is_match(tag)))
            .map(|tag| SelectedTag {
                tag: tag.to_string(),
                version: tag_version(tag),
            })
            .filter(|selected| match (&self.semver, &selected.version) {
                (Some(range), Some(version)) => range.matches(version),
                (Some(_), None) => false,
                (None, _) => true,
            })
            .collect();
        chosen.sort_by(highest_first);
        chosen.dedup_by(|a, b| a.tag == b.tag);
        if let Some(count) = self.latest {
            chosen.retain(|selected| selected.version.is_some());
            chosen.truncate(count);
        }
        chosen
    }
}

/// Highest version first; equal versions (`1.0.0` and `v1.0.0`) by tag; unversioned tags last,
/// by name.
fn highest_first(a: &SelectedTag, b: &SelectedTag) -> Ordering {
    match (&a.version, &b.version) {
        (Some(x), Some(y)) => y.cmp(x).then_with(|| a.tag.cmp(&b.tag)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.tag.cmp(&b.tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAGS: &[&str] = &[
        "0.9.0",
        "1.0.0",
        "v1.1.0",
        "1.2.0-rc.1",
        "1.2.0",
        "1.10.0",
        "2.0.0-beta.1",
        "2.0.0",
        "latest",
        "1.2",
        "stable",
        "v3.0.0+build.7",
    ];

    fn select(filter: TagFilter) -> Vec<String> {
        filter
            .compile()
            .unwrap()
            .select(TAGS.iter().copied())
            .into_iter()
            .map(|selected| selected.tag)
            .collect()
    }

    fn semver(range: &str) -> TagFilter {
        TagFilter {
            semver: Some(range.into()),
            ..Default::default()
        }
    }

    #[test]
    fn semver_ranges_choose_released_versions_in_range() {
        assert_eq!(
            select(semver(">=1.0.0 <2.0.0")),
            ["1.10.0", "1.2.0", "v1.1.0", "1.0.0"]
        );
        assert_eq!(select(semver("^1.2")), ["1.10.0", "1.2.0"]);
        assert_eq!(select(semver("*")).len(), 7, "{:?}", select(semver("*")));
    }

    #[test]
    fn pre_releases_only_when_the_range_names_one() {
        assert_eq!(
            select(semver(">=1.2.0-rc.0 <1.3.0")),
            ["1.2.0", "1.2.0-rc.1"]
        );
        assert_eq!(
            select(semver(">=2.0.0-alpha")),
            ["v3.0.0+build.7", "2.0.0", "2.0.0-beta.1"]
        );
        assert!(!select(semver(">=1.0.0")).contains(&"2.0.0-beta.1".to_string()));
    }

    #[test]
    fn latest_keeps_the_highest_versions_and_drops_unversioned_tags() {
        let latest = |count, range: Option<&str>| TagFilter {
            latest: Some(count),
            semver: range.map(String::from),
            ..Default::default()
        };
        assert_eq!(
            select(latest(3, None)),
            ["v3.0.0+build.7", "2.0.0", "2.0.0-beta.1"]
        );
        assert_eq!(select(latest(2, Some("<2.0.0"))), ["1.10.0", "1.2.0"]);
        assert_eq!(select(latest(100, Some("^0.9"))), ["0.9.0"]);
    }

    #[test]
    fn include_and_exclude_patterns() {
        let filter = TagFilter {
            include: Some(r"^v?1\.".into()),
            exclude: Some("rc".into()),
            ..Default::default()
        };
        assert_eq!(
            select(filter),
            ["1.10.0", "1.2.0", "v1.1.0", "1.0.0", "1.2"]
        );
        let only_names = TagFilter {
            include: Some("^(latest|stable)$".into()),
            ..Default::default()
        };
        assert_eq!(select(only_names), ["latest", "stable"]);
        let everything_but = TagFilter {
            exclude: Some("^v".into()),
            semver: Some("^1".into()),
            ..Default::default()
        };
        assert_eq!(select(everything_but), ["1.10.0", "1.2.0", "1.0.0"]);
    }

    #[test]
    fn bad_filters_name_the_field() {
        let cases = [
            (TagFilter::default(), "at least one"),
            (semver("banana"), "tags.semver: \"banana\""),
            (
                TagFilter {
                    include: Some("(".into()),
                    ..Default::default()
                },
                "tags.include: \"(\" is not a valid regular expression: unclosed group",
            ),
            (
                TagFilter {
                    exclude: Some("[z-a]".into()),
                    ..Default::default()
                },
                "tags.exclude",
            ),
            (
                TagFilter {
                    latest: Some(0),
                    ..Default::default()
                },
                "tags.latest: must be at least 1",
            ),
        ];
        for (filter, expected) in cases {
            let error = filter.compile().unwrap_err();
            let error = format!("tags.{}: {error}", error.field());
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn ranges_may_be_written_with_spaces_or_commas() {
        for range in [">=1.0.0 <2.0.0", ">= 1.0.0, < 2.0.0", ">=1.0.0,<2.0.0"] {
            assert_eq!(
                select(semver(range)),
                ["1.10.0", "1.2.0", "v1.1.0", "1.0.0"],
                "{range}"
            );
        }
    }

    #[test]
    fn versions_from_tags() {
        assert_eq!(tag_version("v1.2.3"), Some(Version::new(1, 2, 3)));
        assert_eq!(tag_version("1.2.3"), Some(Version::new(1, 2, 3)));
        assert_eq!(tag_version("1.2"), None);
        assert_eq!(tag_version("vv1.2.3"), None);
        assert_eq!(tag_version("latest"), None);
    }

    #[test]
    fn equal_versions_and_duplicates() {
        let selection = semver("1.0.0").compile().unwrap();
        let chosen: Vec<String> = selection
            .select(["v1.0.0", "1.0.0", "1.0.0"])
            .into_iter()
            .map(|s| s.tag)
            .collect();
        assert_eq!(chosen, ["1.0.0", "v1.0.0"]);
    }
}
