//! `provider: gcp`: the access token of the pod's Google service account from the metadata
//! server (GKE Workload Identity's, or a VM's), sent to Artifact Registry and Container Registry
//! as the password of the user `oauth2accesstoken`. The metadata server is
//! `GCE_METADATA_HOST` (as Google's client libraries read it), else `metadata.google.internal`;
//! it is always reached directly, never through a proxy.

use std::time::{Duration, SystemTime};

use super::common::{
    CloudEnvironment, CloudHttp, Login, Problem, body_text, cached, is_cloud_registry,
};
use crate::credentials::Credential;

pub const TOKEN_USER: &str = "oauth2accesstoken";

const NO_IDENTITY: &str = "enable Workload Identity on the cluster and node pool, and annotate the \
    pod's ServiceAccount with iam.gke.io/gcp-service-account (the Google service account needs \
    roles/iam.workloadIdentityUser for the ServiceAccount, and Artifact Registry reader or writer \
    rights)";

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

pub(super) async fn registry_credential(
    http: &CloudHttp<'_>,
    env: &CloudEnvironment,
    registry: &str,
) -> Result<Credential, Problem> {
    if !is_cloud_registry(registry, &["gcr.io"], &[".gcr.io", "-docker.pkg.dev"]) {
        return Err(Problem::setup(format!(
            "{registry} is not an Artifact Registry (REGION-docker.pkg.dev) or Container Registry \
             (gcr.io) host; Google tokens are only sent there"
        )));
    }
    let host = env
        .get("GCE_METADATA_HOST")
        .unwrap_or("metadata.google.internal")
        .to_string();
    let key = format!("gcp|{host}");
    cached(key, async {
        let url =
            format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token");
        let now = SystemTime::now();
        let response = http
            .metadata()?
            .get(&url)
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .map_err(|error| {
                Problem::setup(format!(
                    "no metadata server answered at {host} ({}): run on GKE with Workload \
                     Identity, or on a Google Cloud VM; {NO_IDENTITY}",
                    crate::registry::transport::error_chain(&error)
                ))
            })?;
        let status = response.status();
        let flavored = response
            .headers()
            .get("metadata-flavor")
            .is_some_and(|v| v == "Google");
        let body = body_text(response).await;
        if status.as_u16() == 404 {
            return Err(Problem::setup(format!(
                "the metadata server has no service account for this pod: {NO_IDENTITY}"
            )));
        }
        if !status.is_success() || !flavored {
            return Err(Problem::unreachable(format!(
                "the metadata server at {host} answered {status}{}",
                if flavored {
                    ""
                } else {
                    " without Metadata-Flavor: Google (not a metadata server?)"
                }
            )));
        }
        let answer: TokenAnswer = serde_json::from_str(&body).map_err(|_| {
            Problem::unreachable("the metadata server answered without an access token")
        })?;
        Ok(Login {
            credential: Credential::Basic {
                username: TOKEN_USER.to_string(),
                password: answer.access_token,
            },
            expires_at: now + Duration::from_secs(answer.expires_in.unwrap_or(300)),
            fetched_at: now,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_tokens_go_to_google_registries_only() {
        let google = |r: &str| is_cloud_registry(r, &["gcr.io"], &[".gcr.io", "-docker.pkg.dev"]);
        assert!(google("gcr.io"));
        assert!(google("eu.gcr.io"));
        assert!(google("europe-west1-docker.pkg.dev"));
        assert!(google("127.0.0.1:5000"));
        assert!(!google("ghcr.io"));
        assert!(!google("gcr.io.evil.example"));
    }
}
