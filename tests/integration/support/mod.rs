//! Test harness: real `docker-registry` processes on loopback, an in-process token server, a
//! bundle builder that writes cnab-to-oci's exact wire format, closure checks, a
//! fault-injecting proxy in front of a registry, and a real HTTP forward proxy (squid).
//!
//! Every server the harness starts binds 127.0.0.1 only. Child processes die with the test
//! process (see `process`), so an interrupted run leaves nothing behind.
//!
//! A typical copy test:
//!
//! ```ignore
//! let src = TestRegistry::start(RegistryKind::Plain).await;
//! let dst = TestRegistry::start(RegistryKind::TlsBasicAuth).await;
//! let spec = BundleSpec::new("app", "1.0.0")
//!     .with_multi_arch_invocation(ImageFormat::Oci, &[4096])
//!     .with_component("db", ImageFormat::Docker, &[8192])
//!     .with_shared_layer(1000)
//!     .with_porter_stamp(false);
//! let pushed = push_bundle(&src, "team/app", "v1", &spec).await;
//! let config = DockerConfig::new().with_registry(&dst).write_dir();
//! let ca = dst.ca_file().unwrap();
//! let (code, stdout, stderr) = run_cli(&["copy", /* source, destination, flags naming
//!     config.path() and ca */]);
//! assert_eq!(code, 0, "{stderr}");
//! assert_bundle_copied(&src, "team/app", &dst, "team/app", "v1", &pushed.index_digest).await;
//! ```
//!
//! Faults: put a `FaultProxy::start(&registry)` in front of a registry, point the client at
//! `proxy.host()`, and `proxy.add_rule(Rule::new(Fault::rate_limited()).kind(PathKind::Blob)
//! .times(2))`. The token server, proxy and registries keep serving while a test blocks on
//! `run_cli`.

// Each test module uses a different slice of the harness.
#![allow(dead_code, unused_imports)]

pub mod bundle;
pub mod check;
pub mod client;
pub mod fake_api;
pub mod fake_cloud;
pub mod forward_proxy;
pub mod frozen_link;
pub mod process;
pub mod proxy;
pub mod referrers;
pub mod registry;
pub mod token;

pub use bundle::{
    BundleSpec, ImageFormat, PushedBundle, PushedImage, push_bundle, push_plain_image,
};
pub use check::{assert_bundle_copied, bundlecopy_bin, run_cli, run_cli_with, skopeo_inspect_raw};
pub use client::RegistryClient;
pub use proxy::{Fault, FaultProxy, PathKind, ProxiedRequest, Rule, copies_in_flight};
pub use registry::{DockerConfig, RegistryKind, TestRegistry};
pub use token::TokenServer;

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
