//! Write a bundle into a layout directory. Every blob and manifest goes to a temporary file that
//! is renamed to `blobs/<alg>/<hex>` once complete and synced, so a name always holds complete
//! content; a blob already there is kept when it hashes to its name (a copy that was interrupted
//! resumes where it stopped). `index.json` changes last, under a lock on `oci-layout`, and only
//! the entry of the copied tag changes.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::Stream;

use super::index::{
    INDEX_FILE, LAYOUT_FILE, LayoutIndex, MAX_INDEX_BYTES, NewEntry, blob_path, check_layout_file,
    layout_file,
};
use super::io::{blocking, range_has_digest, write_stream};
use super::location::LayoutRef;
use super::reader::unusable;
use crate::digest::{self, Algorithm};
use crate::error::{CopyError, Side};

/// A layout directory being written.
pub struct DirWriter {
    layout: LayoutRef,
    /// `index.json` as it was when the copy started (empty for a new layout).
    index: LayoutIndex,
    /// Numbers the temporary files of this process.
    next_temporary: AtomicU64,
}

impl DirWriter {
    /// Open (or plan to create) a layout directory. An existing directory must be a layout of
    /// version 1.0.0, or empty; nothing is written yet.
    pub async fn open(layout: &LayoutRef) -> Result<DirWriter, CopyError> {
        let root = layout.path.clone();
        let read = blocking(move || read_existing(&root)).await;
        let index = read
            .map_err(|e| e.to_string())
            .and_then(|found| found)
            .map_err(|detail| unusable(Side::Destination, layout, detail))?;
        Ok(DirWriter {
            layout: layout.clone(),
            index,
            next_temporary: AtomicU64::new(0),
        })
    }

    fn root(&self) -> &Path {
        &self.layout.path
    }

    fn fail(&self, detail: String) -> CopyError {
        unusable(Side::Destination, &self.layout, detail)
    }

    /// The digest the tag names in the layout, if any.
    pub fn tagged(&self, tag: &str) -> Option<String> {
        self.index.find(tag).map(|d| d.digest)
    }

    /// Whether `index.json` had the entry when the copy started.
    pub fn holds(&self, entry: &NewEntry) -> bool {
        self.index.holds(entry)
    }

    /// Create the directory, `blobs/` and `oci-layout` when they are missing.
    pub async fn prepare(&self) -> Result<(), CopyError> {
        let root = self.root().to_path_buf();
        blocking(move || {
            fs::create_dir_all(root.join(super::index::BLOBS_DIR))?;
            let marker = root.join(LAYOUT_FILE);
            if !marker.exists() {
                write_synced(&root, &marker, &layout_file())?;
            }
            Ok(())
        })
        .await
        .map_err(|e| self.fail(format!("cannot create the layout: {e}")))
    }

    /// Whether the layout holds `digest` with `size` bytes that hash to it. A damaged blob is
    /// not there: it will be written again.
    pub async fn has_blob(&self, digest: &str, size: u64) -> Result<bool, CopyError> {
        let path = self.blob_file(digest)?;
        let opened = {
            let path = path.clone();
            blocking(move || {
                let file = File::open(&path)?;
                let len = file.metadata()?.len();
                Ok((Arc::new(file), len))
            })
            .await
        };
        let (file, len) = match opened {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(self.fail(format!("cannot read {}: {e}", path.display()))),
        };
        if len != size {
            tracing::warn!(%digest, len, size, "a blob of the layout has the wrong size; writing it again");
            return Ok(false);
        }
        let good = range_has_digest(file, 0, size, digest)
            .await
            .map_err(|e| self.fail(format!("cannot read {}: {e}", path.display())))?;
        if !good {
            tracing::warn!(%digest, "a blob of the layout does not match its digest; writing it again");
        }
        Ok(good)
    }

    fn blob_file(&self, digest: &str) -> Result<PathBuf, CopyError> {
        Ok(self
            .root()
            .join(blob_path(digest).map_err(|e| self.fail(e))?))
    }

    /// Write a blob from a stream (which checks it): into a temporary file, synced, then renamed
    /// to its name. On any failure the temporary file is removed.
    pub async fn write_blob(
        &self,
        digest: &str,
        stream: impl Stream<Item = io::Result<Bytes>> + Unpin,
    ) -> Result<(), CopyError> {
        let target = self.blob_file(digest)?;
        let temporary = self.root().join(format!(
            ".bundlecopy-{}-{}.partial",
            std::process::id(),
            self.next_temporary.fetch_add(1, Ordering::Relaxed)
        ));
        let created = {
            let temporary = temporary.clone();
            blocking(move || {
                File::options()
                    .write(true)
                    .create_new(true)
                    .open(&temporary)
            })
            .await
        };
        let file = Arc::new(created.map_err(|e| self.fail(format!("cannot create a file: {e}")))?);
        let written = write_stream(file.clone(), 0, stream).await;
        let finished = match written {
            Ok(_) => {
                let (temporary, target) = (temporary.clone(), target.clone());
                blocking(move || {
                    file.sync_all()?;
                    drop(file);
                    if let Some(parent) = target.parent() {
                        fs::create_dir_all(parent)?;
                    }
                    fs::rename(&temporary, &target)
                })
                .await
                .map_err(|e| self.fail(format!("cannot write blob {digest}: {e}")))
            }
            Err(e) => Err(self.fail(format!("cannot write blob {digest}: {e}"))),
        };
        if finished.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        finished
    }

    /// Store a manifest by digest, or (for a tag) store it and then point the tag's
    /// `index.json` entry at it. Returns its digest.
    pub async fn put_manifest(
        &self,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<String, CopyError> {
        let by_digest = digest::validate(reference).is_ok();
        let digest = if by_digest {
            reference.to_string()
        } else {
            digest::compute(Algorithm::Sha256, &bytes)
        };
        let size = bytes.len() as u64;
        if !self.has_blob(&digest, size).await? {
            let chunk = futures_util::stream::iter([Ok::<_, io::Error>(bytes)]);
            self.write_blob(&digest, chunk).await?;
        }
        if !by_digest {
            let entry = NewEntry::tagged(reference, media_type, &digest, size);
            self.add_entries(vec![entry]).await?;
        }
        Ok(digest)
    }

    /// Add entries to `index.json` (a tag, the referrers): re-read, changed and replaced while
    /// `oci-layout` is locked, so that copies of other tags into the same layout do not lose
    /// each other's.
    pub async fn add_entries(&self, entries: Vec<NewEntry>) -> Result<(), CopyError> {
        if entries.is_empty() {
            return Ok(());
        }
        let root = self.root().to_path_buf();
        blocking(move || {
            let lock = File::open(root.join(LAYOUT_FILE))?;
            lock.lock()?;
            let index = match fs::read(root.join(INDEX_FILE)) {
                Ok(bytes) => LayoutIndex::parse(&bytes).map_err(io::Error::other)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => LayoutIndex::default(),
                Err(e) => return Err(e),
            };
            let updated = index.with_entries(&entries);
            write_synced(&root, &root.join(INDEX_FILE), &updated.to_bytes())?;
            File::open(&root)?.sync_all()
        })
        .await
        .map_err(|e| self.fail(format!("cannot update its {INDEX_FILE}: {e}")))
    }
}

/// The index of an existing layout at `root`, an empty one for a new or empty directory.
fn read_existing(root: &Path) -> io::Result<Result<LayoutIndex, String>> {
    let metadata = match fs::metadata(root) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ok(LayoutIndex::default())),
        Err(e) => return Err(e),
    };
    if !metadata.is_dir() {
        return Ok(Err(
            "it is a file, not a directory; write an archive with oci-archive:".into(),
        ));
    }
    let marker = match fs::read(root.join(LAYOUT_FILE)) {
        Ok(marker) => marker,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if fs::read_dir(root)?.next().is_some() {
                return Ok(Err(format!(
                    "the directory is not empty and is not an OCI image layout (it has no \
                     {LAYOUT_FILE} file); name a new or empty directory"
                )));
            }
            return Ok(Ok(LayoutIndex::default()));
        }
        Err(e) => return Err(e),
    };
    if let Err(problem) = check_layout_file(&marker) {
        return Ok(Err(problem));
    }
    match fs::read(root.join(INDEX_FILE)) {
        Ok(bytes) if bytes.len() > MAX_INDEX_BYTES => Ok(Err(format!(
            "its {INDEX_FILE} is more than {MAX_INDEX_BYTES} bytes"
        ))),
        Ok(bytes) => Ok(LayoutIndex::parse(&bytes)),
        // A copy into a new layout that stopped before its end leaves blobs and no index yet.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Ok(LayoutIndex::default())),
        Err(e) => Err(e),
    }
}

/// Write a small file through a temporary name in `dir`, synced, then renamed to `path`.
fn write_synced(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{name}.{}.partial", std::process::id()));
    let result = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}
