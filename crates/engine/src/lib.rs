//! bundlecopy's engine: copy a Porter (CNAB) bundle and every image it references from one OCI
//! registry to another, byte for byte, or read one (`inspect`). It knows nothing of Kubernetes or
//! of a command line; the `bundlecopy` binary's CLI and operator are its two front ends.
//!
//! Layers, bottom first (each uses only those below it; docs/architecture.md):
//! `error`, `digest`, `proxy` → `settings` → `reference`, `credentials`, `bundle`, `verify` →
//! `registry` (transport, authentication and retries as layers of one client) and `layout` (OCI
//! layouts and archives) → `copy` (plan → execute → verify) and `inspect`.

pub mod bundle;
pub mod cloud;
pub mod copy;
pub mod credentials;
pub mod digest;
pub mod error;
pub mod inspect;
pub mod layout;
pub mod proxy;
pub mod reference;
pub mod registry;
pub mod settings;
pub mod tags;
pub mod verify;

pub use copy::{
    BundleInfo, CopyOutcome, CopyRequest, FoundBy, Progress, ProgressSnapshot, Referrer,
    RelocatedImage, copy_bundle,
};
pub use error::{CopyError, ErrorKind, LayoutProblem, ProxyOrigin, Remedy, Side};
pub use inspect::{
    InspectImage, InspectReport, VerifyReport, inspect_bundle, list_referrers, list_tags,
    resolve_digest, verify_bundle,
};
pub use proxy::{ProxyEnvironment, ProxyOptions};
pub use registry::transport::validate_ca_pem;
pub use settings::{
    CloudEnvironment, EndpointOptions, EngineSettings, Provider, ReferrerSelection,
};

/// Install ring as the process-wide rustls crypto provider. Every TLS client in this process
/// (registry and Kubernetes) uses it; calling twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
