//! Read a bundle from a layout directory or an archive: check `oci-layout`, resolve a tag through
//! `index.json`, and serve manifests (checked against their digests) and blob streams.

use std::collections::HashMap;
use std::io;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::index::{
    INDEX_FILE, LAYOUT_FILE, LayoutIndex, MAX_INDEX_BYTES, blob_path, check_layout_file,
    missing_tag,
};
use super::location::{LayoutKind, LayoutRef};
use super::storage::{ReadError, Storage};
use crate::bundle::{MAX_MANIFEST_BYTES, OCI_INDEX, OCI_MANIFEST};
use crate::digest::{self, Algorithm};
use crate::error::{CopyError, LayoutProblem, Side};
use crate::registry::Manifest;
use crate::verify::{BlobStream, StreamProblem};

/// An opened layout or archive, read-only.
#[derive(Debug)]
pub struct LayoutReader {
    layout: LayoutRef,
    /// The layout without its tag, for messages.
    name: String,
    side: Side,
    storage: Storage,
    index: LayoutIndex,
    /// `index.json`'s entries by the subject their manifests name, read once (`referrers`).
    by_subject: OnceCell<HashMap<String, Vec<Value>>>,
}

/// The error for a layout that cannot be used as asked.
pub fn unusable(side: Side, layout: &LayoutRef, detail: String) -> CopyError {
    CopyError::Layout {
        side,
        location: layout.without_tag(),
        problem: LayoutProblem::Unusable,
        detail,
    }
}

impl LayoutReader {
    /// Open a layout: it must exist, name layout version 1.0.0 and have an `index.json`.
    pub async fn open(layout: &LayoutRef, side: Side) -> Result<LayoutReader, CopyError> {
        let fail = |detail: String| unusable(side, layout, detail);
        let storage = match layout.kind {
            LayoutKind::Directory => {
                let path = layout.path.clone();
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_dir() => Storage::Directory(path),
                    Ok(_) => {
                        return Err(fail(
                            "it is a file, not a directory; name an archive with oci-archive:"
                                .into(),
                        ));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(fail("there is no such directory".into()));
                    }
                    Err(e) => return Err(fail(format!("it cannot be read: {e}"))),
                }
            }
            LayoutKind::Archive => {
                if !layout.path.exists() {
                    return Err(fail("there is no such file".into()));
                }
                if layout.path.is_dir() {
                    return Err(fail(
                        "it is a directory, not an archive; name a layout directory with oci:"
                            .into(),
                    ));
                }
                Storage::open_archive(&layout.path).await.map_err(fail)?
            }
        };
        let read = |name: &'static str| {
            let storage = &storage;
            async move {
                storage
                    .read(name, MAX_INDEX_BYTES)
                    .await
                    .map_err(|e| match e {
                        ReadError::Missing => format!(
                            "it is not an OCI image layout: it has no {name} file{}",
                            if layout.kind == LayoutKind::Archive {
                                " (is the archive complete?)"
                            } else {
                                ""
                            }
                        ),
                        ReadError::Failed(detail) => detail,
                    })
            }
        };
        check_layout_file(&read(LAYOUT_FILE).await.map_err(fail)?).map_err(fail)?;
        let index = LayoutIndex::parse(&read(INDEX_FILE).await.map_err(fail)?).map_err(fail)?;
        Ok(LayoutReader {
            layout: layout.clone(),
            name: layout.without_tag(),
            side,
            storage,
            index,
            by_subject: OnceCell::new(),
        })
    }

    /// The layout, without a tag (for messages and relocation maps).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn index(&self) -> &LayoutIndex {
        &self.index
    }

    /// What the location names: its tag, else the layout's one image (by its tag, or by digest
    /// when untagged). Signatures and other referrers listed beside it do not count (cosign's
    /// `sha256-<hex>.sig` tags, untagged referrers); a layout of several images needs a tag.
    pub fn reference(&self) -> Result<String, CopyError> {
        if let Some(tag) = &self.layout.tag {
            return Ok(tag.clone());
        }
        let entries = self.index.entries();
        let images: Vec<String> = self
            .index
            .tagged()
            .into_iter()
            .map(|entry| entry.tag)
            .filter(|tag| !tag.starts_with("sha256-") && !tag.starts_with("sha512-"))
            .collect();
        match (entries.as_slice(), images.as_slice()) {
            ([only], _) => Ok(only
                .annotations
                .get(super::index::REF_NAME)
                .cloned()
                .unwrap_or_else(|| only.digest.clone())),
            (_, [tag]) => Ok(tag.clone()),
            ([], _) => Err(self.unusable(format!("its {INDEX_FILE} lists no image"))),
            _ => Err(self.unusable(format!(
                "it holds {} images; name one as {}:TAG (its tags: {})",
                if images.is_empty() {
                    entries.len()
                } else {
                    images.len()
                },
                self.layout.without_tag(),
                self.index.tags().join(", ")
            ))),
        }
    }

    /// Why `reference` was not found, for `SourceNotFound`.
    pub fn missing(&self, reference: &str) -> String {
        missing_tag(reference, &self.index)
    }

    pub fn unusable(&self, detail: String) -> CopyError {
        unusable(self.side, &self.layout, detail)
    }

    pub fn mismatch(&self, detail: String) -> CopyError {
        CopyError::Layout {
            side: self.side,
            location: self.name.clone(),
            problem: LayoutProblem::Mismatch,
            detail,
        }
    }

    /// A problem a verified stream of blob `digest` found.
    pub fn stream_problem(&self, digest: &str, problem: StreamProblem) -> CopyError {
        match problem {
            StreamProblem::Mismatch(detail) => {
                self.mismatch(format!("blob {digest} does not match its digest: {detail}"))
            }
            StreamProblem::Source(detail) => {
                self.unusable(format!("reading blob {digest} failed: {detail}"))
            }
        }
    }

    /// The manifest a tag or digest names, checked against its digest (and, through a tag, the
    /// size its entry gives); `None` when the layout has no such tag or blob.
    pub async fn get_manifest(&self, reference: &str) -> Result<Option<Manifest>, CopyError> {
        let (digest, entry) = if digest::validate(reference).is_ok() {
            let entry = self
                .index
                .entries()
                .into_iter()
                .find(|d| d.digest == reference);
            (reference.to_string(), entry)
        } else {
            match self.index.find(reference) {
                Some(entry) => (entry.digest.clone(), Some(entry)),
                None => return Ok(None),
            }
        };
        let bytes = match self.read_file(&digest, MAX_MANIFEST_BYTES).await {
            Ok(bytes) => bytes,
            Err(ReadError::Missing) if entry.is_none() => return Ok(None),
            Err(ReadError::Missing) => {
                return Err(self.unusable(format!(
                    "its {INDEX_FILE} names manifest {digest}, which is not in the layout"
                )));
            }
            Err(ReadError::Failed(detail)) => return Err(self.unusable(detail)),
        };
        self.check_digest(&digest, &bytes, "manifest")?;
        if let Some(entry) = &entry
            && entry.size != bytes.len() as u64
        {
            return Err(self.mismatch(format!(
                "manifest {digest} is {} bytes, its {INDEX_FILE} entry says {}",
                bytes.len(),
                entry.size
            )));
        }
        let declared = entry.map(|e| e.media_type).unwrap_or_default();
        let media_type = if declared.is_empty() {
            declared_media_type(&bytes)
        } else {
            declared
        };
        Ok(Some(Manifest {
            bytes,
            media_type,
            digest,
        }))
    }

    /// The referrers of `subject` the layout holds, as one image index: the entries of its
    /// `index.json` whose manifests name `subject` as theirs. A layout has no referrers API, but
    /// this is how OCI layouts keep referrers (tagged or not, every manifest is listed in
    /// `index.json`), and how oras reads them.
    pub async fn referrers(&self, subject: &str) -> Result<Vec<Bytes>, CopyError> {
        let by_subject = self
            .by_subject
            .get_or_try_init(|| self.read_subjects())
            .await?;
        let page = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": by_subject.get(subject).cloned().unwrap_or_default(),
        });
        Ok(vec![Bytes::from(page.to_string())])
    }

    /// Every image manifest and index `index.json` lists (the only kinds that can name a
    /// subject), grouped by the subject they name; their entries without a tag.
    async fn read_subjects(&self) -> Result<HashMap<String, Vec<Value>>, CopyError> {
        let mut by_subject: HashMap<String, Vec<Value>> = HashMap::new();
        for entry in self.index.raw_entries() {
            let (Some(digest), media_type) = (
                entry.get("digest").and_then(Value::as_str),
                entry.get("mediaType").and_then(Value::as_str).unwrap_or(""),
            ) else {
                continue;
            };
            if ![OCI_MANIFEST, OCI_INDEX, ""].contains(&media_type) {
                continue;
            }
            let Some(manifest) = self.get_manifest(digest).await? else {
                continue;
            };
            let subject = serde_json::from_slice::<Value>(&manifest.bytes)
                .ok()
                .and_then(|m| Some(m.get("subject")?.get("digest")?.as_str()?.to_string()));
            if let (Some(subject), Value::Object(descriptor)) = (subject, entry) {
                let listed = super::index::NewEntry::from_descriptor(None, descriptor.clone());
                by_subject
                    .entry(subject)
                    .or_default()
                    .push(listed.descriptor());
            }
        }
        Ok(by_subject)
    }

    /// A small blob read whole (bundle.json), checked against its digest.
    pub async fn read_blob(&self, digest: &str, limit: usize) -> Result<Bytes, CopyError> {
        let bytes = self
            .read_file(digest, limit)
            .await
            .map_err(|e| self.read_error(digest, e))?;
        self.check_digest(digest, &bytes, "blob")?;
        Ok(bytes)
    }

    /// A blob's bytes as a stream, after checking its size; the reader checks the digest.
    pub async fn open_blob(&self, digest: &str, size: u64) -> Result<BlobStream, CopyError> {
        let path = blob_path(digest).map_err(|e| self.unusable(e))?;
        let (stream, actual) = self
            .storage
            .stream(&path)
            .await
            .map_err(|e| self.read_error(digest, e))?;
        if actual != size {
            return Err(self.mismatch(format!(
                "blob {digest} is {actual} bytes where its manifest says {size}"
            )));
        }
        Ok(stream)
    }

    async fn read_file(&self, digest: &str, limit: usize) -> Result<Bytes, ReadError> {
        let path = blob_path(digest).map_err(ReadError::Failed)?;
        self.storage.read(&path, limit).await
    }

    fn read_error(&self, digest: &str, error: ReadError) -> CopyError {
        match error {
            ReadError::Missing => self.unusable(format!("blob {digest} is missing from it")),
            ReadError::Failed(detail) => self.unusable(detail),
        }
    }

    fn check_digest(&self, digest: &str, bytes: &[u8], what: &str) -> Result<(), CopyError> {
        let actual = digest::compute(Algorithm::of(digest), bytes);
        if actual == digest {
            Ok(())
        } else {
            Err(self.mismatch(format!(
                "{what} {digest} does not match its digest: the bytes hash to {actual}"
            )))
        }
    }
}

/// The `mediaType` a manifest declares itself, or nothing.
fn declared_media_type(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
        .unwrap_or_default()
}
