//! Test harness: real `docker-registry` processes on loopback, an in-process token server, a
//! bundle builder that writes cnab-to-oci's exact wire format, closure checks, and a
//! fault-injecting proxy.
//!
//! Every server the harness starts binds 127.0.0.1 only. Child processes die with the test
//! process (see `process`), so an interrupted run leaves nothing behind.

// Each test module uses a different slice of the harness.
#![allow(dead_code, unused_imports)]

pub mod bundle;
pub mod check;
pub mod client;
pub mod process;
pub mod proxy;
pub mod registry;
pub mod token;

pub use bundle::{
    BundleSpec, ImageFormat, PushedBundle, PushedImage, push_bundle, push_plain_image,
};
pub use check::{assert_bundle_copied, bundlecopy_bin, run_cli, run_cli_with, skopeo_inspect_raw};
pub use client::RegistryClient;
pub use proxy::{Fault, FaultProxy, PathKind, Rule};
pub use registry::{RegistryKind, TestRegistry};
pub use token::TokenServer;

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
