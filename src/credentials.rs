//! Docker config credentials. (STUB: being implemented.)

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct CredentialsError(pub String);

#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic { username: String, password: String },
    IdentityToken(String),
    RegistryToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Credential::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {}

impl DockerConfig {
    pub fn parse_config_json(_bytes: &[u8]) -> Result<DockerConfig, CredentialsError> {
        todo!()
    }
    pub fn parse_dockercfg(_bytes: &[u8]) -> Result<DockerConfig, CredentialsError> {
        todo!()
    }
    pub fn merge(_configs: impl IntoIterator<Item = DockerConfig>) -> DockerConfig {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        todo!()
    }
    pub fn lookup(&self, _registry: &str, _repository: &str) -> Vec<Credential> {
        todo!()
    }
}
