//! Write a bundle into an archive (`oci-archive:`): the OCI layout as one tar file, written once,
//! with no temporary copy of any blob. The plan gives every blob's size, so the whole tar is laid
//! out before the first byte moves: each member's header is written up front and each blob then
//! streams straight into its place, many at once. Into an existing archive, its other members
//! (other bundles) are carried over and the blobs this bundle shares with them are reused once
//! they hash to their names. Everything goes to a temporary file next to the target, synced and
//! renamed at the end: an interrupted write leaves no file under the archive's name, or the old
//! archive untouched. `index.json` is the last member and is written last.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::Stream;

use super::index::{
    BLOBS_DIR, INDEX_FILE, LAYOUT_FILE, LayoutIndex, MAX_INDEX_BYTES, NewEntry, blob_path,
    check_layout_file, layout_file,
};
use super::io::{blocking, write_at, write_stream};
use super::location::LayoutRef;
use super::reader::unusable;
use super::storage::{ReadError, Storage};
use super::tar::{END_OF_ARCHIVE, Member, directory_header, file_header, padded};
use crate::digest::{self, Hasher};
use crate::error::{CopyError, Side};

/// An archive being written.
pub struct ArchiveWriter {
    layout: LayoutRef,
    /// The archive already at the path, if any.
    existing: Option<Existing>,
    /// The new archive, once laid out (`prepare`).
    target: Option<Target>,
}

struct Existing {
    storage: Storage,
    index: LayoutIndex,
}

/// Where one blob or manifest goes in the new archive.
struct Slot {
    offset: u64,
    size: u64,
    /// Its bytes are in place and were checked against its digest.
    filled: AtomicBool,
}

/// What a copy puts into the archive: its blobs, its manifests and its `index.json` entries.
pub struct Contents<'a> {
    /// Blobs, each with its size.
    pub blobs: Vec<(&'a str, u64)>,
    /// Manifests (the tagged index among them), each with its size.
    pub manifests: Vec<(&'a str, u64)>,
    /// The entries `index.json` gains: the referrers', then the bundle's tag.
    pub entries: Vec<NewEntry>,
}

struct Target {
    temporary: PathBuf,
    file: Arc<File>,
    slots: HashMap<String, Slot>,
    /// Where `index.json`'s header goes, and its bytes (header and content) to write last.
    index_at: u64,
    index_member: Bytes,
    committed: AtomicBool,
}

impl Drop for Target {
    fn drop(&mut self) {
        if !self.committed.load(Ordering::Relaxed) {
            let _ = fs::remove_file(&self.temporary);
        }
    }
}

impl ArchiveWriter {
    /// Open the archive at the path when there is one (it must be a complete layout of version
    /// 1.0.0); nothing is written yet.
    pub async fn open(layout: &LayoutRef) -> Result<ArchiveWriter, CopyError> {
        let fail = |detail: String| unusable(Side::Destination, layout, detail);
        let existing = match fs::metadata(&layout.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(fail(format!("it cannot be read: {e}"))),
            Ok(m) if m.is_dir() => {
                return Err(fail(
                    "it is a directory; write a layout directory with oci:".into(),
                ));
            }
            Ok(_) => {
                let storage = Storage::open_archive(&layout.path).await.map_err(|e| {
                    fail(format!(
                        "the file there is not an archive this can add to ({e}); remove it or \
                         name another file"
                    ))
                })?;
                let read = async |name: &str| match storage.read(name, MAX_INDEX_BYTES).await {
                    Ok(bytes) => Ok(bytes),
                    Err(ReadError::Missing) => Err(format!(
                        "the file there is not an OCI archive (it has no {name}); remove it or \
                         name another file"
                    )),
                    Err(ReadError::Failed(detail)) => Err(detail),
                };
                check_layout_file(&read(LAYOUT_FILE).await.map_err(fail)?).map_err(fail)?;
                let index =
                    LayoutIndex::parse(&read(INDEX_FILE).await.map_err(fail)?).map_err(fail)?;
                Some(Existing { storage, index })
            }
        };
        if existing.is_none() {
            let parent = parent_dir(&layout.path);
            if !parent.is_dir() {
                return Err(fail(format!(
                    "its directory {} does not exist",
                    parent.display()
                )));
            }
        }
        Ok(ArchiveWriter {
            layout: layout.clone(),
            existing,
            target: None,
        })
    }

    fn fail(&self, detail: String) -> CopyError {
        unusable(Side::Destination, &self.layout, detail)
    }

    /// The digest the tag names in the existing archive, if any.
    pub fn tagged(&self, tag: &str) -> Option<String> {
        self.existing
            .as_ref()
            .and_then(|e| e.index.find(tag))
            .map(|d| d.digest)
    }

    /// Whether the existing archive's `index.json` has the entry.
    pub fn holds(&self, entry: &NewEntry) -> bool {
        self.existing.as_ref().is_some_and(|e| e.index.holds(entry))
    }

    /// Lay the new archive out and write everything known before the blobs move: headers,
    /// `oci-layout`, the existing archive's other members, and the blobs it already holds
    /// (checked against their digests; one that fails is fetched again).
    pub async fn prepare(&mut self, contents: &Contents<'_>) -> Result<(), CopyError> {
        let plan = self.lay_out(contents)?;
        let temporary = temporary_path(&self.layout.path);
        let created = {
            let temporary = temporary.clone();
            blocking(move || {
                File::options()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&temporary)
            })
            .await
        };
        let file = created.map_err(|e| {
            self.fail(format!(
                "cannot create the temporary file {}: {e}",
                temporary.display()
            ))
        })?;
        let target = Target {
            temporary,
            file: Arc::new(file),
            slots: plan.slots,
            index_at: plan.index_at,
            index_member: plan.index_member,
            committed: AtomicBool::new(false),
        };
        let file = target.file.clone();
        let (total, fixed, carried) = (plan.total, plan.fixed, plan.carried);
        let old = self
            .existing
            .as_ref()
            .and_then(|e| e.storage.archive_file());
        let reused = plan.reused;
        // From here on the temporary file is removed if anything fails (Target's drop).
        self.target = Some(target);
        let checked = blocking(move || {
            file.set_len(total)?;
            for (at, bytes) in fixed {
                std::os::unix::fs::FileExt::write_all_at(&*file, &bytes, at)?;
            }
            let mut good = Vec::new();
            if let Some(old) = old {
                for (from, to, len) in carried {
                    copy_range(&old, from, &file, to, len)?;
                }
                for reuse in reused {
                    if copy_checked(&old, &file, &reuse)? {
                        good.push(reuse.digest);
                    }
                }
            }
            Ok(good)
        })
        .await
        .map_err(|e| self.fail(format!("cannot write the archive: {e}")))?;
        if let Some(target) = &self.target {
            for digest in checked {
                if let Some(slot) = target.slots.get(&digest) {
                    slot.filled.store(true, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    fn lay_out(&self, contents: &Contents<'_>) -> Result<Layout, CopyError> {
        let mut out = Layout::default();
        let mut at = 0;
        let marker = layout_file();
        let header = file_header(LAYOUT_FILE, marker.len() as u64);
        let len = header.len() as u64;
        out.fixed.push((at, Bytes::from(header)));
        at += len;
        out.fixed.push((at, Bytes::from(marker.clone())));
        at += padded(marker.len() as u64);

        let mut ours: Vec<(String, String, u64)> = Vec::new();
        for (digest, size) in contents.blobs.iter().chain(&contents.manifests) {
            let name = blob_path(digest).map_err(|e| self.fail(e))?;
            if !ours.iter().any(|(d, _, _)| d == digest) {
                ours.push((digest.to_string(), name, *size));
            }
        }
        ours.sort();
        let algorithms: BTreeSet<&str> = ours
            .iter()
            .filter_map(|(d, _, _)| d.split_once(':').map(|(a, _)| a))
            .collect();
        let mut directories = vec![format!("{BLOBS_DIR}/")];
        directories.extend(algorithms.iter().map(|a| format!("{BLOBS_DIR}/{a}/")));
        let old_members = self
            .existing
            .as_ref()
            .map(|e| e.storage.members())
            .unwrap_or_default();
        for (name, _) in &old_members {
            if let Some(rest) = name.strip_prefix(&format!("{BLOBS_DIR}/"))
                && let Some((algorithm, _)) = rest.split_once('/')
            {
                let directory = format!("{BLOBS_DIR}/{algorithm}/");
                if !directories.contains(&directory) {
                    directories.push(directory);
                }
            }
        }
        for directory in &directories {
            let header = directory_header(directory);
            let len = header.len() as u64;
            out.fixed.push((at, Bytes::from(header)));
            at += len;
        }

        // The existing archive's other members, as they are.
        let mut old_by_name: HashMap<&str, Member> = HashMap::new();
        for (name, member) in &old_members {
            old_by_name.insert(name, *member);
            let ours_too = ours.iter().any(|(_, n, _)| n == name);
            if ours_too || name == LAYOUT_FILE || name == INDEX_FILE {
                continue;
            }
            let header = file_header(name, member.size);
            let len = header.len() as u64;
            out.fixed.push((at, Bytes::from(header)));
            at += len;
            out.carried.push((member.offset, at, member.size));
            at += padded(member.size);
        }

        // This bundle's blobs and manifests, each in its slot.
        for (digest, name, size) in &ours {
            let header = file_header(name, *size);
            let len = header.len() as u64;
            out.fixed.push((at, Bytes::from(header)));
            at += len;
            if let Some(old) = old_by_name.get(name.as_str())
                && old.size == *size
            {
                out.reused.push(Reuse {
                    digest: digest.clone(),
                    from: old.offset,
                    to: at,
                    size: *size,
                });
            }
            out.slots.insert(
                digest.clone(),
                Slot {
                    offset: at,
                    size: *size,
                    filled: AtomicBool::new(false),
                },
            );
            at += padded(*size);
        }

        // index.json: the existing entries with this copy's added (its tag's replaced).
        let index = self
            .existing
            .as_ref()
            .map(|e| e.index.clone())
            .unwrap_or_default()
            .with_entries(&contents.entries)
            .to_bytes();
        let mut member = file_header(INDEX_FILE, index.len() as u64);
        member.extend_from_slice(&index);
        member.resize(padded(member.len() as u64) as usize, 0);
        out.index_at = at;
        at += member.len() as u64;
        out.index_member = Bytes::from(member);
        out.total = at + END_OF_ARCHIVE;
        Ok(out)
    }

    fn target(&self) -> Result<&Target, CopyError> {
        self.target
            .as_ref()
            .ok_or_else(|| self.fail("the archive was written to before it was laid out".into()))
    }

    fn slot(&self, digest: &str) -> Result<(&Target, &Slot), CopyError> {
        let target = self.target()?;
        let slot = target.slots.get(digest).ok_or_else(|| {
            self.fail(format!("{digest} is not part of the bundle being written"))
        })?;
        Ok((target, slot))
    }

    /// Whether the new archive holds the blob already (reused from the existing archive).
    pub fn has_blob(&self, digest: &str) -> Result<bool, CopyError> {
        Ok(self.slot(digest)?.1.filled.load(Ordering::Relaxed))
    }

    /// Stream a blob into its place (the stream checks it); the size must be the plan's.
    pub async fn write_blob(
        &self,
        digest: &str,
        stream: impl Stream<Item = io::Result<Bytes>> + Unpin,
    ) -> Result<(), CopyError> {
        let (target, slot) = self.slot(digest)?;
        let written = write_stream(target.file.clone(), slot.offset, stream)
            .await
            .map_err(|e| self.fail(format!("cannot write blob {digest}: {e}")))?;
        if written != slot.size {
            return Err(self.fail(format!(
                "blob {digest} was {written} bytes where {} were laid out",
                slot.size
            )));
        }
        slot.filled.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Write a manifest into its place; for the tag, also `index.json`, the archive's last
    /// member. Returns the manifest's digest.
    pub async fn put_manifest(&self, reference: &str, bytes: Bytes) -> Result<String, CopyError> {
        let digest = if digest::validate(reference).is_ok() {
            reference.to_string()
        } else {
            digest::sha256(&bytes)
        };
        let (target, slot) = self.slot(&digest)?;
        if !slot.filled.load(Ordering::Relaxed) {
            if bytes.len() as u64 != slot.size {
                return Err(self.fail(format!(
                    "manifest {digest} is {} bytes where {} were laid out",
                    bytes.len(),
                    slot.size
                )));
            }
            write_at(target.file.clone(), slot.offset, bytes)
                .await
                .map_err(|e| self.fail(format!("cannot write manifest {digest}: {e}")))?;
            slot.filled.store(true, Ordering::Relaxed);
        }
        if digest::validate(reference).is_err() {
            if let Some((missing, _)) = target
                .slots
                .iter()
                .find(|(_, slot)| !slot.filled.load(Ordering::Relaxed))
            {
                return Err(self.fail(format!(
                    "{missing} was not written, so the archive cannot be finished"
                )));
            }
            write_at(
                target.file.clone(),
                target.index_at,
                target.index_member.clone(),
            )
            .await
            .map_err(|e| self.fail(format!("cannot write {INDEX_FILE}: {e}")))?;
        }
        Ok(digest)
    }

    /// Sync the new archive and rename it to the archive's name.
    pub async fn commit(&self) -> Result<(), CopyError> {
        let target = self.target()?;
        let (file, temporary, path) = (
            target.file.clone(),
            target.temporary.clone(),
            self.layout.path.clone(),
        );
        blocking(move || {
            file.sync_all()?;
            fs::rename(&temporary, &path)?;
            File::open(parent_dir(&path))?.sync_all()
        })
        .await
        .map_err(|e| self.fail(format!("cannot finish the archive: {e}")))?;
        target.committed.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Everything `lay_out` decided.
#[derive(Default)]
struct Layout {
    /// Bytes known up front (headers, `oci-layout`) and where they go.
    fixed: Vec<(u64, Bytes)>,
    /// Existing members copied as they are: (from, to, length).
    carried: Vec<(u64, u64, u64)>,
    /// This bundle's blobs the existing archive holds, checked as they are copied.
    reused: Vec<Reuse>,
    slots: HashMap<String, Slot>,
    index_at: u64,
    index_member: Bytes,
    total: u64,
}

/// A blob of this bundle found in the existing archive.
struct Reuse {
    digest: String,
    from: u64,
    to: u64,
    size: u64,
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `NAME.partial-PID` next to the archive: never the archive's own name, so an interrupted write
/// never looks complete.
fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "archive".into());
    parent_dir(path).join(format!("{name}.partial-{}", std::process::id()))
}

/// Copy `len` bytes between files, in the kernel where it can (`copy_file_range`).
fn copy_range(from: &File, from_at: u64, to: &File, to_at: u64, len: u64) -> io::Result<()> {
    let mut source = from.try_clone()?;
    let mut sink = to.try_clone()?;
    source.seek(SeekFrom::Start(from_at))?;
    sink.seek(SeekFrom::Start(to_at))?;
    let copied = io::copy(&mut io::Read::take(&mut source, len), &mut sink)?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the existing archive ended early",
        ));
    }
    Ok(())
}

/// Copy a blob from the existing archive, hashing it on the way: whether it matched.
fn copy_checked(from: &File, to: &File, reuse: &Reuse) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut hasher = Hasher::for_digest(&reuse.digest);
    let mut buffer = vec![0; super::io::CHUNK];
    let mut done = 0;
    while done < reuse.size {
        let take = (reuse.size - done).min(buffer.len() as u64) as usize;
        from.read_exact_at(&mut buffer[..take], reuse.from + done)?;
        hasher.update(&buffer[..take]);
        to.write_all_at(&buffer[..take], reuse.to + done)?;
        done += take as u64;
    }
    Ok(hasher.finish() == reuse.digest)
}
