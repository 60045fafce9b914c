//! Docker reference grammar and Porter's destination derivation. (STUB: being implemented.)

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid reference {input:?}: {reason}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

/// A normalised reference: `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    pub fn parse(_input: &str) -> Result<Reference, ReferenceError> {
        todo!()
    }
    pub fn registry(&self) -> &str {
        &self.registry
    }
    pub fn repository(&self) -> &str {
        &self.repository
    }
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
    pub fn api_host(&self) -> &str {
        todo!()
    }
    pub fn name(&self) -> String {
        todo!()
    }
    pub fn with_digest(&self, _digest: &str) -> Reference {
        todo!()
    }
    pub fn with_tag(&self, _tag: &str) -> Reference {
        todo!()
    }
    pub fn familiar(&self) -> String {
        todo!()
    }
    pub fn familiar_name(&self) -> String {
        todo!()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

pub fn derive_destination(_source: &Reference, _destination: &str) -> Result<Reference, ReferenceError> {
    todo!()
}

pub fn is_loopback_host(_host: &str) -> bool {
    todo!()
}
