//! Registry credentials from the pod's cloud identity instead of static Secrets (an endpoint's
//! `provider`): AWS (IRSA, EKS Pod Identity, access keys or the instance role → ECR
//! `GetAuthorizationToken`), Azure (workload identity → Entra ID token, exchanged at the
//! registry's token server for an ACR refresh token) and GCP (the metadata server's access token,
//! as `oauth2accesstoken`). Each cloud is a small direct HTTP client (docs/architecture.md says
//! why no cloud SDK). A credential is cached per identity and registry and fetched again before
//! it expires.
//!
//! A cloud credential only ever goes to that cloud's registries (ECR, ACR, GCR/Artifact Registry
//! host names) or to a loopback registry (a local mirror or port-forward, and the tests).

mod aws;
mod azure;
mod common;
mod gcp;
mod sigv4;
mod time;

use crate::credentials::Credential;
use crate::error::{CopyError, Side};
use crate::settings::{EngineSettings, Provider};

pub use azure::{Exchange, ExchangeFailure, acr_refresh_token};
use common::CloudHttp;

/// The credential for `registry` from `provider`'s identity (none for `Generic`): cached per
/// identity and registry, fetched again when a fifth of its lifetime (at most 5 minutes) is
/// left.
pub async fn registry_credential(
    provider: Provider,
    side: Side,
    registry: &str,
    settings: &EngineSettings,
) -> Result<Option<Credential>, CopyError> {
    let http = CloudHttp { side, settings };
    let env = &settings.cloud_environment;
    let result = match provider {
        Provider::Generic => return Ok(None),
        Provider::Aws => aws::registry_credential(&http, env, registry).await,
        Provider::Azure => azure::registry_credential(&http, env, registry).await,
        Provider::Gcp => gcp::registry_credential(&http, env, registry).await,
    };
    result
        .map(Some)
        .map_err(|problem| CopyError::CloudIdentity {
            side,
            registry: registry.to_string(),
            provider: provider.as_str().to_string(),
            detail: problem.detail,
            transient: problem.transient,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_parse() {
        for provider in [
            Provider::Generic,
            Provider::Aws,
            Provider::Azure,
            Provider::Gcp,
        ] {
            assert_eq!(Provider::parse(provider.as_str()), Some(provider));
        }
        assert_eq!(Provider::parse("AWS"), None);
    }
}
