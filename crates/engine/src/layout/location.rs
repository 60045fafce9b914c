//! Where a bundle is, as a user names it: a registry reference, an OCI image layout directory
//! (`oci:DIR[:TAG]`) or the same layout as one tar file (`oci-archive:FILE[:TAG]`). The layout
//! names follow skopeo's transports: the path ends at the first `:` after the transport name, and
//! what follows is the tag (the `org.opencontainers.image.ref.name` of an `index.json` entry).

use std::fmt;
use std::path::PathBuf;

use crate::reference::{Reference, ReferenceError};

/// The transport names, as skopeo spells them.
pub const LAYOUT_TRANSPORT: &str = "oci";
pub const ARCHIVE_TRANSPORT: &str = "oci-archive";
/// An explicit registry transport, accepted and dropped (skopeo's spelling).
const REGISTRY_TRANSPORT: &str = "docker://";

/// A layout directory or an archive file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    Directory,
    Archive,
}

/// A bundle in a layout or archive: the path and, when given, the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    pub kind: LayoutKind,
    pub path: PathBuf,
    pub tag: Option<String>,
}

/// Where a bundle is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Registry(Reference),
    Layout(LayoutRef),
}

/// Why a location cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("invalid {transport}: location {input:?}: {reason}")]
    Layout {
        transport: &'static str,
        input: String,
        reason: String,
    },
}

impl Location {
    /// Parse a location: `oci:…` and `oci-archive:…` name local layouts, anything else (with or
    /// without `docker://`) a registry reference. A Docker Hub image called `oci` is then
    /// `docker.io/library/oci:TAG`.
    pub fn parse(input: &str) -> Result<Location, LocationError> {
        let input = input.trim();
        if let Some(layout) = LayoutRef::parse(input) {
            return Ok(Location::Layout(layout?));
        }
        let reference = input.strip_prefix(REGISTRY_TRANSPORT).unwrap_or(input);
        Ok(Location::Registry(Reference::parse(reference)?))
    }
}

impl LayoutRef {
    /// `None` when `input` names no layout transport; else the parsed layout or why it is wrong.
    pub fn parse(input: &str) -> Option<Result<LayoutRef, LocationError>> {
        let (kind, transport, rest) = if let Some(rest) = input
            .strip_prefix(ARCHIVE_TRANSPORT)
            .and_then(|r| r.strip_prefix(':'))
        {
            (LayoutKind::Archive, ARCHIVE_TRANSPORT, rest)
        } else if let Some(rest) = input
            .strip_prefix(LAYOUT_TRANSPORT)
            .and_then(|r| r.strip_prefix(':'))
        {
            (LayoutKind::Directory, LAYOUT_TRANSPORT, rest)
        } else {
            return None;
        };
        let fail = |reason: String| LocationError::Layout {
            transport,
            input: input.to_string(),
            reason,
        };
        let (path, tag) = match rest.split_once(':') {
            Some((path, tag)) => (path, Some(tag)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Some(Err(fail(format!(
                "the path is empty; expected {transport}:PATH[:TAG]"
            ))));
        }
        if let Some(tag) = tag
            && let Err(reason) = validate_tag(tag)
        {
            return Some(Err(fail(reason)));
        }
        Some(Ok(LayoutRef {
            kind,
            path: PathBuf::from(path),
            tag: tag.map(str::to_string),
        }))
    }

    pub fn transport(&self) -> &'static str {
        match self.kind {
            LayoutKind::Directory => LAYOUT_TRANSPORT,
            LayoutKind::Archive => ARCHIVE_TRANSPORT,
        }
    }

    /// The same layout, naming `tag`.
    pub fn with_tag(&self, tag: &str) -> LayoutRef {
        LayoutRef {
            tag: Some(tag.to_string()),
            ..self.clone()
        }
    }

    /// `oci:PATH` or `oci-archive:PATH`, without the tag.
    pub fn without_tag(&self) -> String {
        format!("{}:{}", self.transport(), self.path.display())
    }
}

impl fmt::Display for LayoutRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.without_tag())?;
        match &self.tag {
            Some(tag) => write!(f, ":{tag}"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Registry(reference) => reference.fmt(f),
            Location::Layout(layout) => layout.fmt(f),
        }
    }
}

/// A tag as the image-spec's annotations define `org.opencontainers.image.ref.name`: components
/// of `[A-Za-z0-9]+` joined by `-`, `.`, `_`, `:`, `@`, `+` or `--`, separated by `/`.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let wrong = || {
        format!(
            "tag {tag:?} is not a valid reference name: letters and digits, separated by one of \
             - . _ : @ + (or --) and /"
        )
    };
    if tag.is_empty() {
        return Err("the tag after the path is empty; drop the ':' or name a tag".into());
    }
    for component in tag.split('/') {
        let bytes = component.as_bytes();
        let mut at = 0;
        let mut expect_alphanumeric = true;
        while at < bytes.len() {
            if bytes[at].is_ascii_alphanumeric() {
                expect_alphanumeric = false;
                at += 1;
                continue;
            }
            if expect_alphanumeric {
                return Err(wrong());
            }
            let separator = if bytes[at..].starts_with(b"--") {
                2
            } else if b"-._:@+".contains(&bytes[at]) {
                1
            } else {
                return Err(wrong());
            };
            at += separator;
            expect_alphanumeric = true;
        }
        if expect_alphanumeric {
            return Err(wrong());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(input: &str) -> LayoutRef {
        match Location::parse(input).unwrap() {
            Location::Layout(layout) => layout,
            Location::Registry(r) => panic!("{input} parsed as the registry reference {r}"),
        }
    }

    #[test]
    fn layouts_split_at_the_first_colon_after_the_transport() {
        let dir = layout("oci:/tmp/bundles:v1.2.0");
        assert_eq!(dir.kind, LayoutKind::Directory);
        assert_eq!(dir.path, PathBuf::from("/tmp/bundles"));
        assert_eq!(dir.tag.as_deref(), Some("v1.2.0"));
        assert_eq!(dir.to_string(), "oci:/tmp/bundles:v1.2.0");
        let archive = layout("oci-archive:hello.tar");
        assert_eq!(archive.kind, LayoutKind::Archive);
        assert_eq!(archive.tag, None);
        assert_eq!(archive.without_tag(), "oci-archive:hello.tar");
        // Everything after the first ':' is the tag, which may itself hold ':'.
        assert_eq!(layout("oci:dir:a:b").tag.as_deref(), Some("a:b"));
        assert_eq!(
            layout("oci:dir:team/app:1.0").tag.as_deref(),
            Some("team/app:1.0")
        );
    }

    #[test]
    fn anything_else_is_a_registry_reference() {
        for input in [
            "registry.example/team/app:v1",
            "docker://registry.example/team/app:v1",
            "ocifoo:v1",
        ] {
            assert!(
                matches!(Location::parse(input), Ok(Location::Registry(_))),
                "{input}"
            );
        }
    }

    #[test]
    fn bad_layout_names_say_what_is_wrong() {
        for (input, why) in [
            ("oci:", "path is empty"),
            ("oci-archive::v1", "path is empty"),
            ("oci:dir:", "tag after the path is empty"),
            ("oci:dir:v1 beta", "not a valid reference name"),
            ("oci:dir:-v1", "not a valid reference name"),
            ("oci:dir:v1.", "not a valid reference name"),
            ("oci:dir:a//b", "not a valid reference name"),
        ] {
            let error = Location::parse(input).unwrap_err().to_string();
            assert!(error.contains(why), "{input}: {error}");
        }
        assert!(validate_tag("1.0--rc_1+build@x").is_ok());
    }
}
