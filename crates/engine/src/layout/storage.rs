//! The files of a layout, wherever they are: files under a directory, or members of a tar
//! archive found by one scan of its headers (then read by offset, never unpacked). Readers and
//! the archive writer (which carries an existing archive's members over) see the same calls.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::io::{blocking, read_at, stream_range};
use super::tar::{Member, scan};
use crate::verify::BlobStream;

/// Where a layout's files are.
#[derive(Debug)]
pub enum Storage {
    Directory(PathBuf),
    Archive {
        file: Arc<File>,
        members: HashMap<String, Member>,
    },
}

/// Why a file of the layout cannot be read: absent, or another reason.
pub enum ReadError {
    Missing,
    Failed(String),
}

impl Storage {
    /// Open an archive and scan its headers (blocking work, on the blocking pool).
    pub async fn open_archive(path: &Path) -> Result<Storage, String> {
        let path = path.to_path_buf();
        blocking(move || {
            let file = File::open(&path)?;
            let len = file.metadata()?.len();
            Ok(scan(&file, len).map(|members| Storage::Archive {
                file: Arc::new(file),
                members,
            }))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The open file and the byte range of the layout file `name`.
    pub async fn locate(&self, name: &str) -> Result<(Arc<File>, Member), ReadError> {
        match self {
            Storage::Archive { file, members } => members
                .get(name)
                .map(|member| (file.clone(), *member))
                .ok_or(ReadError::Missing),
            Storage::Directory(root) => {
                let path = root.join(name);
                let opened = blocking(move || {
                    let file = File::open(&path)?;
                    let metadata = file.metadata()?;
                    if !metadata.is_file() {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            "not a regular file",
                        ));
                    }
                    Ok((file, metadata.len()))
                })
                .await;
                match opened {
                    Ok((file, size)) => Ok((Arc::new(file), Member { offset: 0, size })),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ReadError::Missing),
                    Err(e) => Err(ReadError::Failed(format!("cannot read {name}: {e}"))),
                }
            }
        }
    }

    /// A small file read whole; more than `limit` bytes is an error.
    pub async fn read(&self, name: &str, limit: usize) -> Result<Bytes, ReadError> {
        let (file, member) = self.locate(name).await?;
        if member.size > limit as u64 {
            return Err(ReadError::Failed(format!(
                "{name} is {} bytes, more than the limit of {limit}",
                member.size
            )));
        }
        read_at(file, member.offset, member.size)
            .await
            .map_err(|e| ReadError::Failed(format!("cannot read {name}: {e}")))
    }

    /// A file as a stream, with its size.
    pub async fn stream(&self, name: &str) -> Result<(BlobStream, u64), ReadError> {
        let (file, member) = self.locate(name).await?;
        Ok((stream_range(file, member.offset, member.size), member.size))
    }

    /// The members of an archive, for carrying them into a new one (none for a directory).
    pub fn members(&self) -> Vec<(String, Member)> {
        match self {
            Storage::Archive { members, .. } => {
                let mut all: Vec<(String, Member)> =
                    members.iter().map(|(n, m)| (n.clone(), *m)).collect();
                all.sort_by_key(|(_, member)| member.offset);
                all
            }
            Storage::Directory(_) => Vec::new(),
        }
    }

    /// The archive's file (none for a directory).
    pub fn archive_file(&self) -> Option<Arc<File>> {
        match self {
            Storage::Archive { file, .. } => Some(file.clone()),
            Storage::Directory(_) => None,
        }
    }
}
