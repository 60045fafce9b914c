//! bundlecopy: copy Porter (CNAB) bundles between OCI registries.
//!
//! The copy engine (`reference`, `credentials`, `registry`, `bundle`, `copy`) knows nothing of
//! Kubernetes; the operator (`api`, `controller`) knows nothing of HTTP.

pub mod api;
pub mod bundle;
pub mod cli;
pub mod controller;
pub mod copy;
pub mod credentials;
pub mod error;
pub mod http;
pub mod metrics;
pub mod reference;
pub mod registry;

pub use copy::{CopyOutcome, CopyRequest, EndpointOptions, Progress, ProgressSnapshot};
pub use error::{CopyError, Reason, Side};

/// Install ring as the process-wide rustls crypto provider. Every TLS client in this process
/// (registry and Kubernetes) uses it; calling twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
