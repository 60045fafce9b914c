//! `provider: azure`: Azure Workload Identity. The federated service account token
//! (`AZURE_FEDERATED_TOKEN_FILE`) is exchanged at Entra ID (`AZURE_AUTHORITY_HOST`, default
//! `https://login.microsoftonline.com/`) for an access token of `AZURE_CLIENT_ID` in
//! `AZURE_TENANT_ID` (client-credentials grant with a JWT assertion); the registry's token server
//! exchanges that for an ACR refresh token (`POST /oauth2/exchange`), which then gets access
//! tokens like any Docker identity token (`registry::auth`).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use sha2::Digest as _;
use url::Url;

use super::common::{
    CloudEnvironment, CloudHttp, Login, Problem, cached, host_of, is_cloud_registry, post_form,
    read_token_file, refusal,
};
use crate::credentials::Credential;
use crate::reference::is_loopback_host;

const NO_IDENTITY: &str = "no Azure workload identity in this pod: label the pod \
    azure.workload.identity/use: \"true\" and annotate its ServiceAccount with \
    azure.workload.identity/client-id (the webhook then sets AZURE_CLIENT_ID, AZURE_TENANT_ID and \
    AZURE_FEDERATED_TOKEN_FILE); the identity needs a federated credential for the ServiceAccount \
    and the AcrPull (or AcrPush) role on the registry";

/// The ARM scope of the Entra token ACR exchanges, by cloud (from the registry's domain).
fn scope_for(registry: &str) -> &'static str {
    let host = host_of(registry);
    if host.ends_with(".azurecr.cn") {
        "https://management.chinacloudapi.cn/.default"
    } else if host.ends_with(".azurecr.us") {
        "https://management.usgovcloudapi.net/.default"
    } else {
        "https://management.azure.com/.default"
    }
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(serde::Deserialize, Default)]
struct ErrorAnswer {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// The Entra ID access token for `registry` (the credential `registry::auth` exchanges at the
/// registry's token server).
pub(super) async fn registry_credential(
    http: &CloudHttp<'_>,
    env: &CloudEnvironment,
    registry: &str,
) -> Result<Credential, Problem> {
    if !is_cloud_registry(
        registry,
        &[],
        &[".azurecr.io", ".azurecr.cn", ".azurecr.us", ".azurecr.de"],
    ) {
        return Err(Problem::setup(format!(
            "{registry} is not an Azure Container Registry (NAME.azurecr.io); Azure tokens are \
             only sent to ACR"
        )));
    }
    let (Some(client_id), Some(tenant_id), Some(token_file)) = (
        env.get("AZURE_CLIENT_ID"),
        env.get("AZURE_TENANT_ID"),
        env.get("AZURE_FEDERATED_TOKEN_FILE"),
    ) else {
        return Err(Problem::setup(NO_IDENTITY));
    };
    let authority = env
        .get("AZURE_AUTHORITY_HOST")
        .unwrap_or("https://login.microsoftonline.com/")
        .trim_end_matches('/')
        .to_string();
    let scope = scope_for(registry);
    let key = format!("azure|{authority}|{tenant_id}|{client_id}|{scope}");
    cached(key, async {
        let assertion = read_token_file("AZURE_FEDERATED_TOKEN_FILE", token_file)?;
        let url = format!("{authority}/{tenant_id}/oauth2/v2.0/token");
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", client_id)
            .append_pair("grant_type", "client_credentials")
            .append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .append_pair("client_assertion", &assertion)
            .append_pair("scope", scope)
            .finish();
        let now = SystemTime::now();
        let (status, body) =
            post_form(&http.api()?, &url, form, &format!("Entra ID ({authority})")).await?;
        if !status.is_success() {
            let answer: ErrorAnswer = serde_json::from_str(&body).unwrap_or_default();
            let description = answer.error_description.lines().next().unwrap_or_default();
            return Err(refusal(
                status,
                format!(
                    "Entra ID refused a token for client {client_id} ({status}: {} {description}); \
                     check the identity's federated credential for this cluster's issuer and \
                     ServiceAccount",
                    answer.error
                ),
            ));
        }
        let answer: TokenAnswer = serde_json::from_str(&body)
            .map_err(|_| Problem::unreachable("Entra ID answered without an access token"))?;
        Ok(Login {
            credential: Credential::EntraToken {
                token: answer.access_token,
                tenant: tenant_id.to_string(),
            },
            expires_at: now + Duration::from_secs(answer.expires_in.unwrap_or(300)),
            fetched_at: now,
        })
    })
    .await
}

/// Seconds-since-epoch `exp` of a JWT, without checking it (only to know when to refresh).
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
}

/// Why the registry gave no refresh token for an Entra token.
#[derive(Debug)]
pub struct ExchangeFailure {
    /// The exchange did not answer (retrying may help), rather than refused.
    pub transient: bool,
    pub detail: String,
}

/// Where the exchange happens and for what: the registry's token server (`realm`, the origin
/// of its challenge, which for ACR is the registry itself) and the challenge's `service`.
pub struct Exchange<'a> {
    pub registry: &'a str,
    pub realm: &'a Url,
    pub service: Option<&'a str>,
}

/// The ACR refresh token for an Entra token: `POST /oauth2/exchange` at the registry's token
/// server, cached per token server and Entra token.
pub async fn acr_refresh_token(
    http: &reqwest::Client,
    at: &Exchange<'_>,
    entra_token: &str,
    tenant: &str,
) -> Result<String, ExchangeFailure> {
    let Exchange {
        registry,
        realm,
        service,
    } = at;
    // The Entra token goes to the registry's own host only (or loopback, for a local mirror).
    let realm_host = realm.host_str().unwrap_or_default();
    if !(host_of(registry) == realm_host.to_ascii_lowercase()
        || (is_loopback_host(realm_host) && is_loopback_host(registry)))
    {
        return Err(ExchangeFailure {
            transient: false,
            detail: format!(
                "the registry's token server {realm_host} is not the registry itself; the Azure \
                 token is not sent there"
            ),
        });
    }
    let mut url: Url = (*realm).clone();
    url.set_path("/oauth2/exchange");
    url.set_query(None);
    let fingerprint = hex::encode(&sha2::Sha256::digest(entra_token.as_bytes())[..8]);
    let key = format!("acr|{url}|{fingerprint}");
    let exchange = async {
        // Built before any await: the serializer is not Send.
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "access_token")
            .append_pair("service", service.unwrap_or(registry))
            .append_pair("tenant", tenant)
            .append_pair("access_token", entra_token)
            .finish();
        let now = SystemTime::now();
        let (status, body) =
            post_form(http, url.as_str(), form, "the registry's token exchange").await?;
        if matches!(status.as_u16(), 400 | 401 | 403) {
            return Err(Problem::setup(format!(
                "the registry refused the Azure token at /oauth2/exchange ({status}); the identity \
                 needs the AcrPull (or AcrPush) role on the registry"
            )));
        }
        if !status.is_success() {
            return Err(Problem::unreachable(format!(
                "the registry's /oauth2/exchange answered {status}"
            )));
        }
        #[derive(serde::Deserialize)]
        struct Exchanged {
            refresh_token: String,
        }
        let answer: Exchanged = serde_json::from_str(&body).map_err(|_| {
            Problem::unreachable("the registry's /oauth2/exchange answered without a refresh token")
        })?;
        Ok(Login {
            expires_at: jwt_expiry(&answer.refresh_token)
                .unwrap_or(now + Duration::from_secs(3600)),
            credential: Credential::IdentityToken(answer.refresh_token),
            fetched_at: now,
        })
    };
    match cached(key, exchange).await {
        Ok(Credential::IdentityToken(token)) => Ok(token),
        Ok(_) => Err(ExchangeFailure {
            transient: false,
            detail: "the exchange gave no refresh token".into(),
        }),
        Err(problem) => Err(ExchangeFailure {
            transient: problem.transient,
            detail: problem.detail,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_follows_the_registrys_cloud() {
        assert_eq!(
            scope_for("team.azurecr.io"),
            "https://management.azure.com/.default"
        );
        assert_eq!(
            scope_for("team.azurecr.cn"),
            "https://management.chinacloudapi.cn/.default"
        );
    }

    #[test]
    fn jwt_expiry_is_read_without_checking() {
        let claims =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":2000000000}"#);
        assert_eq!(
            jwt_expiry(&format!("h.{claims}.s")),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_expiry("opaque-token"), None);
    }
}
