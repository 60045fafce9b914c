//! The tar side of an archive (POSIX ustar, as `tar`, Go's archive/tar and skopeo read it):
//! scanning an archive's headers once to find each member's data by offset, and the header
//! blocks of the members an archive writer lays out before any data is known. Reading headers
//! (with their PAX and GNU extensions) is the `tar` crate's; what is written is plain ustar, with
//! a PAX `path` record when a name does not fit ustar's fields (sha512 blob names).

use std::collections::HashMap;
use std::fs::File;

use tar::{EntryType, Header};

/// A tar block; every header and every member's data is padded to it.
pub const BLOCK: u64 = 512;
/// Two zero blocks end an archive.
pub const END_OF_ARCHIVE: u64 = 2 * BLOCK;

/// `n` rounded up to whole blocks.
pub fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// Where a file member's data is in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub offset: u64,
    pub size: u64,
}

/// Read every header of the archive in `file` (of `len` bytes), seeking over the data, and map
/// each regular file's name (without a leading `./`) to its data. A later member of the same
/// name wins, as when the archive is unpacked. A member whose data runs past the end of the
/// file, or a file that ends without the end-of-archive blocks, is a truncated archive.
pub fn scan(file: &File, len: u64) -> Result<HashMap<String, Member>, String> {
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| format!("it cannot be read as a tar archive: {e}"))?;
    let mut members = HashMap::new();
    let mut end = 0;
    for entry in entries {
        let entry = entry.map_err(|e| {
            format!("its tar headers are damaged or cut short after byte {end}: {e}")
        })?;
        let offset = entry.raw_file_position();
        let size = entry.size();
        end = offset.saturating_add(padded(size));
        let path = entry
            .path()
            .map_err(|e| format!("a member name cannot be read: {e}"))?
            .to_string_lossy()
            .into_owned();
        let name = normalise(&path);
        if offset.saturating_add(size) > len {
            return Err(format!(
                "it is truncated: member {name} needs {size} bytes from byte {offset}, but the \
                 file ends at byte {len}"
            ));
        }
        if matches!(
            entry.header().entry_type(),
            EntryType::Regular | EntryType::Continuous
        ) {
            members.insert(name, Member { offset, size });
        }
    }
    if len < end.saturating_add(BLOCK) {
        return Err(format!(
            "it is truncated: it ends at byte {len} without the blocks that end a tar archive"
        ));
    }
    Ok(members)
}

fn normalise(path: &str) -> String {
    let mut name = path;
    while let Some(rest) = name.strip_prefix("./") {
        name = rest;
    }
    name.to_string()
}

/// The header blocks of a regular file member: mode 0644, owner 0, time 0 (so the same content
/// always makes the same archive).
pub fn file_header(name: &str, size: u64) -> Vec<u8> {
    member_header(name, size, EntryType::Regular, 0o644)
}

/// The header of a directory member (`name` ends with `/`).
pub fn directory_header(name: &str) -> Vec<u8> {
    member_header(name, 0, EntryType::Directory, 0o755)
}

fn member_header(name: &str, size: u64, kind: EntryType, mode: u32) -> Vec<u8> {
    let mut header = plain_header(size, kind, mode);
    let mut blocks = Vec::new();
    if header.set_path(name).is_err() {
        // Longer than ustar's name and prefix allow: a PAX record carries the whole name, and
        // the ustar header a shortened one for readers without PAX.
        let record = pax_record("path", name);
        let mut pax = plain_header(record.len() as u64, EntryType::XHeader, 0o644);
        let _ = pax.set_path("PaxHeader");
        pax.set_cksum();
        blocks.extend_from_slice(pax.as_bytes());
        blocks.extend_from_slice(&record);
        blocks.resize(padded(blocks.len() as u64) as usize, 0);
        let short: String = name.chars().rev().take(99).collect::<String>();
        let short: String = short.chars().rev().collect();
        let _ = header.set_path(short.trim_start_matches('/'));
    }
    header.set_cksum();
    blocks.extend_from_slice(header.as_bytes());
    blocks
}

fn plain_header(size: u64, kind: EntryType, mode: u32) -> Header {
    let mut header = Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    // Sizes of 8 GiB and more use the base-256 form, which GNU tar, Go and the tar crate read.
    header.set_size(size);
    header
}

/// One PAX extended-header record: `LENGTH KEY=VALUE\n`, where LENGTH counts itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut length = body.len() + 1;
    while (length.to_string().len() + body.len()) != length {
        length = length.to_string().len() + body.len();
    }
    format!("{length}{body}").into_bytes()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn archive_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in members {
            out.extend(file_header(name, data.len() as u64));
            out.extend_from_slice(data);
            out.resize(padded(out.len() as u64) as usize, 0);
        }
        out.extend(std::iter::repeat_n(0, END_OF_ARCHIVE as usize));
        out
    }

    fn scan_bytes(bytes: &[u8]) -> Result<HashMap<String, Member>, String> {
        let path = std::env::temp_dir().join(format!(
            "bundlecopy-tar-{}-{}",
            std::process::id(),
            bytes.len()
        ));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        let file = File::open(&path).unwrap();
        let result = scan(&file, bytes.len() as u64);
        let _ = std::fs::remove_file(path);
        result
    }

    #[test]
    fn members_are_found_by_offset_with_long_names_too() {
        let long = format!("blobs/sha512/{}", "a".repeat(128));
        let bytes = archive_of(&[
            ("oci-layout", b"{}"),
            (&long, b"long name"),
            ("./index.json", b"[1]"),
        ]);
        let members = scan_bytes(&bytes).unwrap();
        assert_eq!(members.len(), 3, "{members:?}");
        for (name, data) in [
            ("oci-layout", &b"{}"[..]),
            (long.as_str(), b"long name"),
            ("index.json", b"[1]"),
        ] {
            let member = members[name];
            let at = member.offset as usize;
            assert_eq!(&bytes[at..at + member.size as usize], data, "{name}");
        }
    }

    #[test]
    fn the_tar_crate_reads_what_the_headers_describe() {
        let long = format!("blobs/sha512/{}", "b".repeat(128));
        let bytes = archive_of(&[(&long, b"x")]);
        let mut archive = tar::Archive::new(&bytes[..]);
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some(long.as_str()));
        assert_eq!(entry.size(), 1);
        assert_eq!(pax_record("path", "x"), b"9 path=x\n");
        // 98 bytes after the length: two digits would make 100, which needs three: 101.
        let record = pax_record("p", &"v".repeat(94));
        assert_eq!(record.len(), 101);
        assert!(record.starts_with(b"101 p=v"));
    }

    #[test]
    fn a_cut_archive_is_truncated() {
        let bytes = archive_of(&[("a", &[7; 3000]), ("index.json", b"{}")]);
        for cut in [700, 2048, bytes.len() - END_OF_ARCHIVE as usize, 100] {
            let error = scan_bytes(&bytes[..cut]).unwrap_err();
            assert!(
                error.contains("truncated") || error.contains("cut short"),
                "cut at {cut}: {error}"
            );
        }
        assert!(scan_bytes(&bytes).is_ok());
    }
}
