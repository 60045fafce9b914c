//! bundlecopy: copy Porter (CNAB) bundles between OCI registries. The copy engine is its own
//! crate (`bundlecopy-engine`, in crates/engine) and knows nothing of Kubernetes or a command
//! line; this crate holds its two front ends: the CLI (`cli`) and the operator (`operator`).
//! docs/architecture.md describes the layers.

pub mod cli;
pub mod operator;
