//! The two files that make a directory an OCI image layout (image-spec, image-layout.md):
//! `oci-layout`, which names the layout version, and `index.json`, an image index whose entries
//! name their tag in the `org.opencontainers.image.ref.name` annotation. Pure: bytes in, bytes out.

use serde_json::{Map, Value};

use crate::bundle::{Descriptor, OCI_INDEX};
use crate::digest;

pub const LAYOUT_FILE: &str = "oci-layout";
pub const INDEX_FILE: &str = "index.json";
pub const BLOBS_DIR: &str = "blobs";
/// The one layout version there is (and the only one this reads and writes).
pub const LAYOUT_VERSION: &str = "1.0.0";
/// The annotation of an `index.json` entry that holds its tag.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Largest `index.json` or `oci-layout` read.
pub const MAX_INDEX_BYTES: usize = 4 * 1024 * 1024;

/// The `oci-layout` file this writes.
pub fn layout_file() -> Vec<u8> {
    format!(r#"{{"imageLayoutVersion":"{LAYOUT_VERSION}"}}"#).into_bytes()
}

/// Check an `oci-layout` file: a JSON object naming version 1.0.0.
pub fn check_layout_file(bytes: &[u8]) -> Result<(), String> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("its {LAYOUT_FILE} file is not JSON: {e}"))?;
    match value.get("imageLayoutVersion").and_then(Value::as_str) {
        Some(LAYOUT_VERSION) => Ok(()),
        Some(other) => Err(format!(
            "it is an OCI image layout of version {other:?}, which this bundlecopy does not know \
             (it reads and writes {LAYOUT_VERSION})"
        )),
        None => Err(format!("its {LAYOUT_FILE} file has no imageLayoutVersion")),
    }
}

/// The path of a blob inside a layout: `blobs/<algorithm>/<hex>`. The digest must be valid
/// (checked here), so the path never leaves the layout.
pub fn blob_path(digest: &str) -> Result<String, String> {
    digest::validate(digest).map_err(|e| e.to_string())?;
    let (algorithm, hex) = digest.split_once(':').unwrap_or_default();
    Ok(format!("{BLOBS_DIR}/{algorithm}/{hex}"))
}

/// An `index.json` entry that names a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedEntry {
    pub tag: String,
    pub descriptor: Descriptor,
}

/// `index.json`, kept as the JSON it was read from so that adding a tag loses nothing another
/// tool wrote (other entries, their platforms and annotations, the index's own annotations).
#[derive(Debug, Clone, PartialEq)]
pub struct LayoutIndex {
    document: Map<String, Value>,
}

impl Default for LayoutIndex {
    fn default() -> Self {
        let mut document = Map::new();
        document.insert("schemaVersion".into(), Value::from(2));
        document.insert("mediaType".into(), Value::from(OCI_INDEX));
        document.insert("manifests".into(), Value::Array(Vec::new()));
        LayoutIndex { document }
    }
}

impl LayoutIndex {
    pub fn parse(bytes: &[u8]) -> Result<LayoutIndex, String> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("its {INDEX_FILE} is not JSON: {e}"))?;
        let Value::Object(document) = value else {
            return Err(format!("its {INDEX_FILE} is not a JSON object"));
        };
        let index = LayoutIndex { document };
        for (at, entry) in index.raw_entries().iter().enumerate() {
            let descriptor: Descriptor = serde_json::from_value(entry.clone())
                .map_err(|e| format!("entry {at} of its {INDEX_FILE} is malformed: {e}"))?;
            digest::validate(&descriptor.digest)
                .map_err(|e| format!("entry {at} of its {INDEX_FILE}: {e}"))?;
        }
        Ok(index)
    }

    fn raw_entries(&self) -> &[Value] {
        self.document
            .get("manifests")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// Every entry, in order (each checked to be a descriptor by `parse`).
    pub fn entries(&self) -> Vec<Descriptor> {
        self.raw_entries()
            .iter()
            .filter_map(|entry| serde_json::from_value(entry.clone()).ok())
            .collect()
    }

    /// The entries that name a tag.
    pub fn tagged(&self) -> Vec<TaggedEntry> {
        self.entries()
            .into_iter()
            .filter_map(|descriptor| {
                let tag = descriptor.annotations.get(REF_NAME)?.clone();
                Some(TaggedEntry { tag, descriptor })
            })
            .collect()
    }

    /// The entry tagged `tag`; the last one when a tool wrote the tag twice.
    pub fn find(&self, tag: &str) -> Option<Descriptor> {
        self.tagged()
            .into_iter()
            .rev()
            .find(|entry| entry.tag == tag)
            .map(|entry| entry.descriptor)
    }

    /// The tags, in order, for messages.
    pub fn tags(&self) -> Vec<String> {
        self.tagged().into_iter().map(|entry| entry.tag).collect()
    }

    /// This index with `tag` naming the given manifest: an entry that held the tag before is
    /// replaced in place, every other entry is kept as it was.
    pub fn with_entry(&self, tag: &str, media_type: &str, digest: &str, size: u64) -> LayoutIndex {
        let mut annotations = Map::new();
        annotations.insert(REF_NAME.into(), Value::from(tag));
        let mut entry = Map::new();
        entry.insert("mediaType".into(), Value::from(media_type));
        entry.insert("digest".into(), Value::from(digest));
        entry.insert("size".into(), Value::from(size));
        entry.insert("annotations".into(), Value::Object(annotations));
        let names_tag = |value: &Value| {
            value
                .get("annotations")
                .and_then(|a| a.get(REF_NAME))
                .and_then(Value::as_str)
                == Some(tag)
        };
        let mut entries: Vec<Value> = Vec::new();
        let mut placed = false;
        for old in self.raw_entries() {
            if names_tag(old) {
                if !placed {
                    entries.push(Value::Object(entry.clone()));
                    placed = true;
                }
            } else {
                entries.push(old.clone());
            }
        }
        if !placed {
            entries.push(Value::Object(entry));
        }
        let mut document = self.document.clone();
        document.insert("manifests".into(), Value::Array(entries));
        document
            .entry("schemaVersion")
            .or_insert_with(|| Value::from(2));
        LayoutIndex { document }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.document).unwrap_or_default()
    }
}

/// What a layout's index says about a tag that it does not hold, for the message.
pub fn missing_tag(tag: &str, index: &LayoutIndex) -> String {
    let tags = index.tags();
    if tags.is_empty() {
        format!("its {INDEX_FILE} names no tag {tag:?} (it names no tags at all)")
    } else {
        format!(
            "its {INDEX_FILE} names no tag {tag:?}; it has {}",
            tags.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(n: u8) -> String {
        digest::sha256(&[n])
    }

    #[test]
    fn the_layout_file_names_its_version() {
        check_layout_file(&layout_file()).unwrap();
        check_layout_file(br#"{"imageLayoutVersion": "1.0.0", "extra": 1}"#).unwrap();
        let error = check_layout_file(br#"{"imageLayoutVersion":"2.0.0"}"#).unwrap_err();
        assert!(error.contains("\"2.0.0\""), "{error}");
        assert!(check_layout_file(b"{}").is_err());
        assert!(check_layout_file(b"[").is_err());
    }

    #[test]
    fn blob_paths_come_only_from_valid_digests() {
        let digest = digest_of(1);
        assert_eq!(
            blob_path(&digest).unwrap(),
            format!("blobs/sha256/{}", &digest[7..])
        );
        assert!(blob_path("sha256:../../etc/passwd").is_err());
    }

    #[test]
    fn a_tag_replaces_its_own_entry_and_keeps_every_other() {
        let foreign = format!(
            r#"{{"schemaVersion":2,"annotations":{{"x":"y"}},"manifests":[
                {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":7,
                  "platform":{{"architecture":"arm64","os":"linux"}},
                  "annotations":{{"{REF_NAME}":"v1"}}}},
                {{"mediaType":"application/xml","digest":"{}","size":3}}]}}"#,
            digest_of(1),
            digest_of(2)
        );
        let index = LayoutIndex::parse(foreign.as_bytes()).unwrap();
        assert_eq!(index.tags(), ["v1"]);
        let added = index.with_entry("v2", OCI_INDEX, &digest_of(3), 30);
        assert_eq!(added.tags(), ["v1", "v2"]);
        assert_eq!(added.entries().len(), 3);
        let replaced = added.with_entry("v1", OCI_INDEX, &digest_of(4), 40);
        assert_eq!(replaced.tags(), ["v1", "v2"]);
        assert_eq!(replaced.find("v1").unwrap().digest, digest_of(4));
        assert_eq!(replaced.find("v2").unwrap().digest, digest_of(3));
        let reread = LayoutIndex::parse(&replaced.to_bytes()).unwrap();
        assert_eq!(reread, replaced);
        let text = String::from_utf8(replaced.to_bytes()).unwrap();
        assert!(
            text.contains("application/xml") && text.contains(r#""x":"y""#),
            "{text}"
        );
        assert!(missing_tag("v9", &reread).contains("v1, v2"));
    }

    #[test]
    fn malformed_indexes_say_why() {
        for (bytes, why) in [
            (&b"[]"[..], "not a JSON object"),
            (
                br#"{"manifests":[{"digest":"sha256:1","size":1}]}"#,
                "entry 0",
            ),
            (br#"{"manifests":[{"size":1}]}"#, "malformed"),
        ] {
            let error = LayoutIndex::parse(bytes).unwrap_err();
            assert!(error.contains(why), "{error}");
        }
        assert!(
            LayoutIndex::parse(br#"{"schemaVersion":2}"#)
                .unwrap()
                .entries()
                .is_empty()
        );
    }
}
