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

    /// Every entry as written, with whatever fields the tool that wrote it gave.
    pub fn raw_entries(&self) -> &[Value] {
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

    /// This index with `entries` added: a tagged entry replaces, in place, the entry that held
    /// its tag before; an untagged one is added unless the index lists its digest already. Every
    /// other entry is kept as it was.
    pub fn with_entries(&self, entries: &[NewEntry]) -> LayoutIndex {
        let mut kept: Vec<Value> = self.raw_entries().to_vec();
        for new in entries {
            match &new.tag {
                Some(tag) => {
                    let names_tag = |value: &Value| {
                        value
                            .get("annotations")
                            .and_then(|a| a.get(REF_NAME))
                            .and_then(Value::as_str)
                            == Some(tag.as_str())
                    };
                    let mut placed = false;
                    kept = kept
                        .into_iter()
                        .filter_map(|value| match (names_tag(&value), placed) {
                            (false, _) => Some(value),
                            (true, false) => {
                                placed = true;
                                Some(new.to_value())
                            }
                            (true, true) => None,
                        })
                        .collect();
                    if !placed {
                        kept.push(new.to_value());
                    }
                }
                None => {
                    if !kept
                        .iter()
                        .any(|value| entry_digest(value) == Some(new.digest()))
                    {
                        kept.push(new.to_value());
                    }
                }
            }
        }
        let mut document = self.document.clone();
        document.insert("manifests".into(), Value::Array(kept));
        document
            .entry("schemaVersion")
            .or_insert_with(|| Value::from(2));
        LayoutIndex { document }
    }

    /// Whether the index has `entry` already: its tag naming its digest, or (untagged) its
    /// digest listed.
    pub fn holds(&self, entry: &NewEntry) -> bool {
        match &entry.tag {
            Some(tag) => self.find(tag).is_some_and(|d| d.digest == entry.digest()),
            None => self
                .raw_entries()
                .iter()
                .any(|value| entry_digest(value) == Some(entry.digest())),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.document).unwrap_or_default()
    }
}

fn entry_digest(value: &Value) -> Option<&str> {
    value.get("digest").and_then(Value::as_str)
}

/// An entry to add to `index.json`: a manifest under a tag, or, with no tag, one listed so that
/// tools find it (a referrer, found through the `subject` its manifest names).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    pub tag: Option<String>,
    /// Its descriptor: `mediaType`, `digest`, `size`, and what else the source listed
    /// (`artifactType`, `annotations`); never a tag of its own.
    descriptor: Map<String, Value>,
}

impl NewEntry {
    pub fn tagged(tag: &str, media_type: &str, digest: &str, size: u64) -> NewEntry {
        let mut descriptor = Map::new();
        descriptor.insert("mediaType".into(), Value::from(media_type));
        descriptor.insert("digest".into(), Value::from(digest));
        descriptor.insert("size".into(), Value::from(size));
        NewEntry {
            tag: Some(tag.to_string()),
            descriptor,
        }
    }

    /// An entry from a descriptor (`tag`: the name it goes under, if any); a tag the descriptor
    /// carried in its annotations is dropped.
    pub fn from_descriptor(tag: Option<&str>, mut descriptor: Map<String, Value>) -> NewEntry {
        if let Some(Value::Object(annotations)) = descriptor.get_mut("annotations") {
            annotations.remove(REF_NAME);
            if annotations.is_empty() {
                descriptor.remove("annotations");
            }
        }
        NewEntry {
            tag: tag.map(str::to_string),
            descriptor,
        }
    }

    pub fn digest(&self) -> &str {
        self.descriptor
            .get("digest")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The descriptor alone, without its tag.
    pub fn descriptor(&self) -> Value {
        Value::Object(self.descriptor.clone())
    }

    fn to_value(&self) -> Value {
        let mut descriptor = self.descriptor.clone();
        if let Some(tag) = &self.tag {
            let annotations = descriptor
                .entry("annotations")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(annotations) = annotations {
                annotations.insert(REF_NAME.into(), Value::from(tag.as_str()));
            }
        }
        Value::Object(descriptor)
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
        let added = index.with_entries(&[NewEntry::tagged("v2", OCI_INDEX, &digest_of(3), 30)]);
        assert_eq!(added.tags(), ["v1", "v2"]);
        assert_eq!(added.entries().len(), 3);
        let replaced = added.with_entries(&[NewEntry::tagged("v1", OCI_INDEX, &digest_of(4), 40)]);
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
    fn untagged_entries_are_added_once_and_carry_no_tag() {
        let bundle = NewEntry::tagged("v1", OCI_INDEX, &digest_of(1), 10);
        let index = LayoutIndex::default().with_entries(std::slice::from_ref(&bundle));
        let descriptor = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest_of(2),
            "size": 5,
            "artifactType": "application/vnd.cncf.notary.signature",
            "annotations": {REF_NAME: "sha256-abc", "created": "today"},
        });
        let Value::Object(descriptor) = descriptor else {
            unreachable!()
        };
        let referrer = NewEntry::from_descriptor(None, descriptor);
        assert!(!index.holds(&referrer));
        let once = index.with_entries(std::slice::from_ref(&referrer));
        assert_eq!(once.with_entries(std::slice::from_ref(&referrer)), once);
        assert!(once.holds(&referrer) && once.holds(&bundle));
        assert!(!once.holds(&NewEntry::tagged("v1", OCI_INDEX, &digest_of(3), 10)));
        assert_eq!(once.tags(), ["v1"], "the referrer's entry names no tag");
        assert_eq!(once.entries().len(), 2);
        let text = String::from_utf8(once.to_bytes()).unwrap();
        assert!(
            text.contains(r#""artifactType":"application/vnd.cncf.notary.signature""#)
                && text.contains(r#""created":"today""#)
                && !text.contains("sha256-abc"),
            "{text}"
        );
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
