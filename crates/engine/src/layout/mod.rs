//! Bundles outside a registry: an OCI image layout directory (`oci:DIR[:TAG]`) or the same layout
//! as one tar archive (`oci-archive:FILE[:TAG]`), as the OCI image-spec defines it (`oci-layout`,
//! `index.json`, `blobs/<alg>/<hex>`) and skopeo names it. What carries a bundle across an air gap
//! with every digest intact.
//!
//! Modules, bottom first: `location` (the names), `index` (`oci-layout` and `index.json`, pure),
//! `tar` (archive headers), `io` (positioned file I/O on the blocking pool), `storage` (a layout's
//! files in a directory or archive), `reader` (read a bundle), `dir` and `archive` (write one).

pub mod archive;
pub mod dir;
pub mod index;
pub mod io;
pub mod location;
pub mod reader;
pub mod storage;
pub mod tar;
