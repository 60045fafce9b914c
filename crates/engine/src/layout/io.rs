//! File I/O for layouts and archives, off the async runtime: every read and write runs on tokio's
//! blocking pool, positioned (`pread`/`pwrite`), so many blobs share one archive file at once and
//! a slow disk never stalls the network streams. A blob passes in chunks of `CHUNK` bytes: memory
//! stays flat whatever its size.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use crate::digest::Hasher;
use crate::verify::BlobStream;

/// Bytes read or written at once.
pub const CHUNK: usize = 256 * 1024;

/// Run blocking file work on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io::Error::other(format!("file task failed: {e}")))?
}

/// Read `len` bytes at `offset`, whole (small files: manifests, `index.json`).
pub async fn read_at(file: Arc<File>, offset: u64, len: u64) -> io::Result<Bytes> {
    blocking(move || {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let mut buffer = vec![0; len];
        file.read_exact_at(&mut buffer, offset)?;
        Ok(Bytes::from(buffer))
    })
    .await
}

/// The bytes `offset..offset + len` of `file` as a stream of chunks.
pub fn stream_range(file: Arc<File>, offset: u64, len: u64) -> BlobStream {
    let end = offset + len;
    Box::pin(futures_util::stream::try_unfold(offset, move |at| {
        let file = file.clone();
        async move {
            if at >= end {
                return Ok(None);
            }
            let take = (end - at).min(CHUNK as u64);
            let chunk = read_at(file, at, take).await?;
            Ok(Some((chunk, at + take)))
        }
    }))
}

/// Whether `file[offset..offset + len]` hashes to `digest`.
pub async fn range_has_digest(
    file: Arc<File>,
    offset: u64,
    len: u64,
    digest: &str,
) -> io::Result<bool> {
    let digest = digest.to_string();
    blocking(move || {
        let mut hasher = Hasher::for_digest(&digest);
        let mut buffer = vec![0; CHUNK];
        let mut at = 0;
        while at < len {
            let take = (len - at).min(CHUNK as u64) as usize;
            file.read_exact_at(&mut buffer[..take], offset + at)?;
            hasher.update(&buffer[..take]);
            at += take as u64;
        }
        Ok(hasher.finish() == digest)
    })
    .await
}

/// Write `bytes` at `offset`.
pub async fn write_at(file: Arc<File>, offset: u64, bytes: Bytes) -> io::Result<()> {
    blocking(move || file.write_all_at(&bytes, offset)).await
}

/// Write a stream at `offset` onwards, gathering small chunks into writes of about `CHUNK`
/// bytes; the stream's first error ends it. Returns the number of bytes written.
pub async fn write_stream(
    file: Arc<File>,
    offset: u64,
    mut stream: impl Stream<Item = io::Result<Bytes>> + Unpin,
) -> io::Result<u64> {
    let mut at = offset;
    let mut pending = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if pending.is_empty() && chunk.len() >= CHUNK {
            let len = chunk.len() as u64;
            write_at(file.clone(), at, chunk).await?;
            at += len;
            continue;
        }
        pending.extend_from_slice(&chunk);
        if pending.len() >= CHUNK {
            let full = pending.split().freeze();
            let len = full.len() as u64;
            write_at(file.clone(), at, full).await?;
            at += len;
        }
    }
    if !pending.is_empty() {
        let rest = pending.split().freeze();
        let len = rest.len() as u64;
        write_at(file, at, rest).await?;
        at += len;
    }
    Ok(at - offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest;

    fn scratch(name: &str) -> (std::path::PathBuf, Arc<File>) {
        let path =
            std::env::temp_dir().join(format!("bundlecopy-io-{name}-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (path, Arc::new(file))
    }

    #[tokio::test]
    async fn a_stream_written_at_an_offset_reads_back_in_chunks() {
        let (path, file) = scratch("roundtrip");
        let data: Vec<u8> = (0..(CHUNK * 2 + 1000)).map(|i| (i % 251) as u8).collect();
        let pieces: Vec<io::Result<Bytes>> = data
            .chunks(7000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .chain(std::iter::once(Ok(Bytes::copy_from_slice(&data[..CHUNK]))))
            .collect();
        let written = write_stream(file.clone(), 100, futures_util::stream::iter(pieces))
            .await
            .unwrap();
        assert_eq!(written, (data.len() + CHUNK) as u64);
        let mut read = Vec::new();
        let mut stream = stream_range(file.clone(), 100, data.len() as u64);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= CHUNK);
            read.extend_from_slice(&chunk);
        }
        assert_eq!(read, data);
        let digest = digest::sha256(&data);
        assert!(
            range_has_digest(file.clone(), 100, data.len() as u64, &digest)
                .await
                .unwrap()
        );
        assert!(
            !range_has_digest(file, 101, data.len() as u64 - 1, &digest)
                .await
                .unwrap()
        );
        let _ = std::fs::remove_file(path);
    }
}
