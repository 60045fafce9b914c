//! What the clouds' identities share: the environment they read, why one gave no credential,
//! the cache of logins, the HTTP clients for cloud APIs and metadata endpoints, and which
//! registries may receive a cloud's credential.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use crate::credentials::Credential;
use crate::error::Side;
use crate::proxy::Proxies;
use crate::reference::is_loopback_host;
use crate::registry::transport::{Transport, build_client};
pub use crate::settings::CloudEnvironment;
use crate::settings::{EndpointOptions, EngineSettings};

/// Why a provider gave no credential: the step that is missing, or the cloud's own answer.
pub struct Problem {
    pub detail: String,
    /// A cloud endpoint that did not answer (retrying may help), rather than a set-up problem.
    pub transient: bool,
}

impl Problem {
    pub fn setup(detail: impl Into<String>) -> Problem {
        Problem {
            detail: detail.into(),
            transient: false,
        }
    }

    pub fn unreachable(detail: impl Into<String>) -> Problem {
        Problem {
            detail: detail.into(),
            transient: true,
        }
    }
}

/// A credential from a cloud and when it stops working.
#[derive(Clone)]
pub struct Login {
    pub credential: Credential,
    pub expires_at: SystemTime,
    /// When it was fetched, to refresh it well before it expires.
    pub fetched_at: SystemTime,
}

impl Login {
    /// Usable now for a request: more than a fifth of its lifetime (at most 5 minutes) left.
    fn is_fresh(&self, now: SystemTime) -> bool {
        let lifetime = self
            .expires_at
            .duration_since(self.fetched_at)
            .unwrap_or_default();
        let margin = (lifetime / 5).min(Duration::from_secs(300));
        now + margin < self.expires_at
    }
}

/// Cached logins by provider, identity and registry.
static LOGINS: OnceLock<Mutex<HashMap<String, Login>>> = OnceLock::new();

fn logins() -> std::sync::MutexGuard<'static, HashMap<String, Login>> {
    LOGINS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The cached login under `key`, or a new one from `fetch` (cached in turn).
pub async fn cached<F>(key: String, fetch: F) -> Result<Credential, Problem>
where
    F: Future<Output = Result<Login, Problem>>,
{
    let now = SystemTime::now();
    if let Some(login) = logins().get(&key).filter(|login| login.is_fresh(now)) {
        return Ok(login.credential.clone());
    }
    let login = fetch.await?;
    let credential = login.credential.clone();
    let mut all = logins();
    all.retain(|_, login| login.expires_at > now);
    all.insert(key, login);
    Ok(credential)
}

/// HTTP clients for cloud calls: the cloud APIs through the environment's proxies (as the
/// clouds' SDKs do), the pod's metadata endpoints always directly.
pub struct CloudHttp<'a> {
    pub side: Side,
    pub settings: &'a EngineSettings,
}

impl CloudHttp<'_> {
    fn client(&self, proxies: &Proxies) -> Result<reqwest::Client, Problem> {
        build_client(
            self.side,
            Transport::Https { verify: true },
            proxies,
            &EndpointOptions::default(),
            self.settings,
        )
        .map_err(|error| Problem::unreachable(error.to_string()))
    }

    /// For a cloud API (STS, ECR, Entra ID).
    pub fn api(&self) -> Result<reqwest::Client, Problem> {
        self.client(&Proxies::choose(None, &self.settings.proxy_environment))
    }

    /// For the pod's own metadata endpoints (instance metadata, Pod Identity agent, GKE
    /// metadata server), which a proxy could not reach.
    pub fn metadata(&self) -> Result<reqwest::Client, Problem> {
        self.client(&Proxies::Direct)
    }
}

/// Read a response body of at most 1 MiB as text.
pub async fn body_text(response: reqwest::Response) -> String {
    crate::registry::response::read_limited(response, 1 << 20)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// POST a form to a cloud endpoint (`what` names it in messages): its status and body.
pub async fn post_form(
    client: &reqwest::Client,
    url: &str,
    form: String,
    what: &str,
) -> Result<(reqwest::StatusCode, String), Problem> {
    let response = client
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(form)
        .send()
        .await
        .map_err(|e| unreachable(what, &e))?;
    let status = response.status();
    Ok((status, body_text(response).await))
}

/// A cloud's refusal: its own fault (5xx, worth retrying) or the set-up's.
pub fn refusal(status: reqwest::StatusCode, problem: String) -> Problem {
    if status.is_server_error() {
        Problem::unreachable(problem)
    } else {
        Problem::setup(problem)
    }
}

/// A failed request to a cloud endpoint (`what` names it), without the URL's query.
pub fn unreachable(what: &str, error: &reqwest::Error) -> Problem {
    Problem::unreachable(format!(
        "{what} did not answer: {}",
        crate::registry::transport::error_chain(error)
    ))
}

/// A file a cloud's identity webhook mounted (a projected service account token).
pub fn read_token_file(variable: &str, path: &str) -> Result<String, Problem> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_string())
        .map_err(|error| {
            Problem::setup(format!(
                "cannot read {variable} ({path}): {error}; is the projected token volume mounted?"
            ))
        })
}

/// The registry host without its port, lower case.
pub fn host_of(registry: &str) -> String {
    let host = if let Some(inner) = registry.strip_prefix('[') {
        inner.split(']').next().unwrap_or(inner)
    } else {
        registry.split(':').next().unwrap_or(registry)
    };
    host.to_ascii_lowercase()
}

/// Whether `registry` may receive `provider`'s credentials: one of the cloud's registry hosts
/// (`suffixes`, matched on a dot boundary, or a whole name in `exact`), or loopback.
pub fn is_cloud_registry(registry: &str, exact: &[&str], suffixes: &[&str]) -> bool {
    let host = host_of(registry);
    is_loopback_host(registry)
        || exact.contains(&host.as_str())
        || suffixes
            .iter()
            .any(|suffix| host.ends_with(suffix) && host.len() > suffix.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_are_refreshed_before_they_expire() {
        let fetched_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let login = |lifetime: u64| Login {
            credential: Credential::RegistryToken("t".into()),
            expires_at: fetched_at + Duration::from_secs(lifetime),
            fetched_at,
        };
        // 12 hours (ECR): fresh until 5 minutes before the end.
        let ecr = login(12 * 3600);
        assert!(ecr.is_fresh(fetched_at + Duration::from_secs(12 * 3600 - 301)));
        assert!(!ecr.is_fresh(fetched_at + Duration::from_secs(12 * 3600 - 299)));
        // 10 seconds: fresh for the first 8.
        let short = login(10);
        assert!(short.is_fresh(fetched_at + Duration::from_secs(7)));
        assert!(!short.is_fresh(fetched_at + Duration::from_secs(8)));
        assert!(!login(0).is_fresh(fetched_at));
    }

    #[test]
    fn the_environment_shows_names_only() {
        let env = CloudEnvironment::from_variables(|name| {
            (name == "AWS_SECRET_ACCESS_KEY").then(|| "s3cret-key".to_string())
        });
        assert_eq!(env.get("AWS_SECRET_ACCESS_KEY"), Some("s3cret-key"));
        assert_eq!(format!("{env:?}"), "[\"AWS_SECRET_ACCESS_KEY\"]");
        let blank = CloudEnvironment::from_variables(|_| Some("  ".into()));
        assert_eq!(blank.get("AWS_REGION"), None);
    }

    #[test]
    fn cloud_credentials_go_to_that_clouds_registries_only() {
        let ecr = ["amazonaws.com"];
        assert!(is_cloud_registry("127.0.0.1:5000", &[], &ecr));
        assert!(is_cloud_registry("localhost:5000", &[], &ecr));
        assert!(is_cloud_registry(
            "1.dkr.ecr.eu-west-1.amazonaws.com",
            &[],
            &[".amazonaws.com"]
        ));
        assert!(!is_cloud_registry(
            "amazonaws.com.evil.example",
            &[],
            &[".amazonaws.com"]
        ));
        assert!(!is_cloud_registry(
            ".amazonaws.com",
            &[],
            &[".amazonaws.com"]
        ));
        assert!(is_cloud_registry("gcr.io", &["gcr.io"], &[".gcr.io"]));
        assert_eq!(host_of("Registry.Example:5000"), "registry.example");
        assert_eq!(host_of("[::1]:5000"), "::1");
    }
}
