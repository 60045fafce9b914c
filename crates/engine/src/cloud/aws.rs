//! `provider: aws`: AWS credentials from the pod's identity, then ECR's `GetAuthorizationToken`
//! for the registry's region; the registry is then sent `AWS` and the token with Basic
//! authentication, as `docker login` does with `aws ecr get-login-password`.
//!
//! Credentials, in the order of the SDKs' default chain (without their shared config files):
//! 1. `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
//! 2. IRSA: `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE` → STS `AssumeRoleWithWebIdentity`
//!    (an unsigned call);
//! 3. EKS Pod Identity / ECS: `AWS_CONTAINER_CREDENTIALS_FULL_URI` (or `…_RELATIVE_URI`) with
//!    the token of `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (or `…_TOKEN`);
//! 4. the instance role from IMDSv2, unless `AWS_EC2_METADATA_DISABLED=true`.
//!
//! Endpoints: `AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL_ECR`, else `AWS_ENDPOINT_URL`, else the
//! region's; `AWS_EC2_METADATA_SERVICE_ENDPOINT` for IMDS.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use url::Url;

use super::common::{
    CloudEnvironment, CloudHttp, Login, Problem, body_text, cached, host_of, post_form,
    read_token_file, refusal, unreachable,
};
use super::sigv4::{self, SigningKey};
use super::time::{amz_date, from_unix_seconds};
use crate::credentials::Credential;
use crate::reference::is_loopback_host;

/// Where each way of getting credentials is set up, for the message when none is.
const NO_IDENTITY: &str = "no AWS identity in this pod: for IRSA annotate the pod's \
    ServiceAccount with eks.amazonaws.com/role-arn (which sets AWS_ROLE_ARN and \
    AWS_WEB_IDENTITY_TOKEN_FILE); for EKS Pod Identity create a pod identity association for the \
    ServiceAccount (which sets AWS_CONTAINER_CREDENTIALS_FULL_URI); the role needs \
    ecr:GetAuthorizationToken and pull (or push) rights on the repository";

/// How long IMDS and the Pod Identity agent may take to connect.
const METADATA_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Temporary or long-term AWS credentials.
struct AwsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

/// What an ECR host name says: `ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn]`.
#[derive(Debug, PartialEq, Eq)]
struct EcrHost {
    account: String,
    region: String,
}

fn parse_ecr_host(registry: &str) -> Option<EcrHost> {
    let host = host_of(registry);
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let (account, rest) = rest.split_once('.')?;
    let region = rest
        .strip_prefix("dkr.ecr.")
        .or_else(|| rest.strip_prefix("dkr.ecr-fips."))?;
    let valid_region = !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    (account.len() == 12 && account.chars().all(|c| c.is_ascii_digit()) && valid_region).then(
        || EcrHost {
            account: account.to_string(),
            region: region.to_string(),
        },
    )
}

/// The DNS suffix of a region's endpoints.
fn partition_suffix(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    }
}

/// A service's endpoint: its own override, the global one, or the region's.
fn endpoint(
    env: &CloudEnvironment,
    service_variable: &str,
    service_host: &str,
    region: &str,
) -> String {
    env.get(service_variable)
        .or_else(|| env.get("AWS_ENDPOINT_URL"))
        .map(|url| url.trim_end_matches('/').to_string())
        .unwrap_or_else(|| {
            format!(
                "https://{service_host}.{region}.{}",
                partition_suffix(region)
            )
        })
}

pub(super) async fn registry_credential(
    http: &CloudHttp<'_>,
    env: &CloudEnvironment,
    registry: &str,
) -> Result<Credential, Problem> {
    let ecr = parse_ecr_host(registry);
    if ecr.is_none() && !is_loopback_host(registry) {
        return Err(Problem::setup(format!(
            "{registry} is not an ECR registry (ACCOUNT.dkr.ecr.REGION.amazonaws.com); ECR \
             credentials are only sent to ECR"
        )));
    }
    let region = match (
        &ecr,
        env.get("AWS_REGION")
            .or_else(|| env.get("AWS_DEFAULT_REGION")),
    ) {
        (Some(ecr), _) => ecr.region.clone(),
        (None, Some(region)) => region.to_string(),
        (None, None) => {
            return Err(Problem::setup(format!(
                "{registry} does not name its region (ACCOUNT.dkr.ecr.REGION.amazonaws.com); set \
                 AWS_REGION"
            )));
        }
    };
    let identity = identity_of(env);
    let key = format!("aws|{identity}|{region}|{registry}");
    cached(key, async {
        let credentials = credentials(http, env, &region).await?;
        authorization_token(http, env, &credentials, &region).await
    })
    .await
}

/// What identifies the credentials the chain will find (the cache key).
fn identity_of(env: &CloudEnvironment) -> String {
    env.get("AWS_ACCESS_KEY_ID")
        .map(|key| format!("key:{key}"))
        .or_else(|| env.get("AWS_ROLE_ARN").map(|arn| format!("role:{arn}")))
        .or_else(|| {
            env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
                .or_else(|| env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"))
                .map(|uri| format!("container:{uri}"))
        })
        .unwrap_or_else(|| "instance".to_string())
}

async fn credentials(
    http: &CloudHttp<'_>,
    env: &CloudEnvironment,
    region: &str,
) -> Result<AwsCredentials, Problem> {
    if let (Some(access_key_id), Some(secret_access_key)) = (
        env.get("AWS_ACCESS_KEY_ID"),
        env.get("AWS_SECRET_ACCESS_KEY"),
    ) {
        return Ok(AwsCredentials {
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret_access_key.to_string(),
            session_token: env.get("AWS_SESSION_TOKEN").map(str::to_string),
        });
    }
    if let Some(role_arn) = env.get("AWS_ROLE_ARN") {
        let file = env.get("AWS_WEB_IDENTITY_TOKEN_FILE").ok_or_else(|| {
            Problem::setup(
                "AWS_ROLE_ARN is set but AWS_WEB_IDENTITY_TOKEN_FILE is not: the IRSA webhook \
                 sets both; check that the pod runs with the annotated ServiceAccount",
            )
        })?;
        return assume_role_with_web_identity(http, env, role_arn, file, region).await;
    }
    if let Some(url) = container_credentials_url(env)? {
        return container_credentials(http, env, &url).await;
    }
    if env
        .get("AWS_EC2_METADATA_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Err(Problem::setup(format!(
            "{NO_IDENTITY} (the instance role is not asked: AWS_EC2_METADATA_DISABLED is true)"
        )));
    }
    instance_credentials(http, env).await
}

/// The first `<tag>…</tag>` of an XML document (STS answers are small and flat).
fn xml_value<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].trim())
}

async fn assume_role_with_web_identity(
    http: &CloudHttp<'_>,
    env: &CloudEnvironment,
    role_arn: &str,
    token_file: &str,
    region: &str,
) -> Result<AwsCredentials, Problem> {
    let token = read_token_file("AWS_WEB_IDENTITY_TOKEN_FILE", token_file)?;
    let session = env
        .get("AWS_ROLE_SESSION_NAME")
        .unwrap_or("bundlecopy")
        .to_string();
    let url = endpoint(env, "AWS_ENDPOINT_URL_STS", "sts", region);
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", "AssumeRoleWithWebIdentity")
        .append_pair("Version", "2011-06-15")
        .append_pair("RoleArn", role_arn)
        .append_pair("RoleSessionName", &session)
        .append_pair("WebIdentityToken", &token)
        .finish();
    let (status, body) = post_form(
        &http.api()?,
        &format!("{url}/"),
        form,
        &format!("AWS STS ({url})"),
    )
    .await?;
    if !status.is_success() {
        let code = xml_value(&body, "Code").unwrap_or_default();
        let message = xml_value(&body, "Message").unwrap_or_default();
        return Err(refusal(
            status,
            format!(
                "AWS STS refused AssumeRoleWithWebIdentity for {role_arn} ({status}: {code} {message}); \
                 check the role's trust policy for this cluster's OIDC provider and ServiceAccount"
            ),
        ));
    }
    let field = |tag: &str| {
        xml_value(&body, tag)
            .map(str::to_string)
            .ok_or_else(|| Problem::unreachable(format!("AWS STS answered without {tag}")))
    };
    Ok(AwsCredentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: Some(field("SessionToken")?),
    })
}

/// The container credentials endpoint, when one is configured. A full URI must be HTTPS, or
/// HTTP to loopback or to the EKS/ECS agents' link-local addresses (as the SDKs require).
fn container_credentials_url(env: &CloudEnvironment) -> Result<Option<Url>, Problem> {
    let text = match (
        env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
    ) {
        (Some(relative), _) => format!("http://169.254.170.2{relative}"),
        (None, Some(full)) => full.to_string(),
        (None, None) => return Ok(None),
    };
    let url = Url::parse(&text).map_err(|error| {
        Problem::setup(format!(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI is not a URL ({error})"
        ))
    })?;
    let host = url.host_str().unwrap_or_default();
    let allowed = url.scheme() == "https"
        || (url.scheme() == "http"
            && (is_loopback_host(host)
                || ["169.254.170.2", "169.254.170.23", "[fd00:ec2::23]"].contains(&host)));
    if !allowed {
        return Err(Problem::setup(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI must be https://, or http:// to loopback or to the \
             EKS Pod Identity or ECS agent",
        ));
    }
    Ok(Some(url))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerCredentials {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    token: Option<String>,
}

async fn container_credentials(
    http: &CloudHttp<'_>,
    env: &CloudEnvironment,
    url: &Url,
) -> Result<AwsCredentials, Problem> {
    let token = match (
        env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
        env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
    ) {
        // Read each time: the agent's token is rotated.
        (Some(file), _) => Some(read_token_file(
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            file,
        )?),
        (None, token) => token.map(str::to_string),
    };
    let mut request = http
        .metadata()?
        .get(url.clone())
        .timeout(METADATA_CONNECT_TIMEOUT * 5);
    if let Some(token) = token {
        request = request.header(reqwest::header::AUTHORIZATION, token);
    }
    let what = format!(
        "the container credentials endpoint ({}://{}{})",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    );
    let response = request.send().await.map_err(|e| unreachable(&what, &e))?;
    let status = response.status();
    let body = body_text(response).await;
    if !status.is_success() {
        return Err(Problem::setup(format!(
            "{what} answered {status}; check the pod identity association of the pod's \
             ServiceAccount"
        )));
    }
    let parsed: ContainerCredentials = serde_json::from_str(&body)
        .map_err(|_| Problem::unreachable(format!("{what} answered without credentials")))?;
    Ok(AwsCredentials {
        access_key_id: parsed.access_key_id,
        secret_access_key: parsed.secret_access_key,
        session_token: parsed.token,
    })
}

/// The instance role's credentials from IMDSv2.
async fn instance_credentials(
    http: &CloudHttp<'_>,
    env: &CloudEnvironment,
) -> Result<AwsCredentials, Problem> {
    let base = env
        .get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .unwrap_or("http://169.254.169.254")
        .trim_end_matches('/')
        .to_string();
    let client = http.metadata()?;
    let no_identity = |why: String| Problem::setup(format!("{NO_IDENTITY} ({why})"));
    let token = client
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "300")
        .timeout(METADATA_CONNECT_TIMEOUT)
        .send()
        .await
        .map_err(|_| {
            no_identity(format!(
                "and the instance metadata service at {base} did not answer"
            ))
        })?;
    if !token.status().is_success() {
        return Err(no_identity(format!(
            "and the instance metadata service answered {}",
            token.status()
        )));
    }
    let token = body_text(token).await;
    let get = |path: String| {
        client
            .get(format!("{base}{path}"))
            .header("X-aws-ec2-metadata-token", token.clone())
            .timeout(METADATA_CONNECT_TIMEOUT * 5)
            .send()
    };
    let roles = get("/latest/meta-data/iam/security-credentials/".into())
        .await
        .map_err(|e| unreachable("the instance metadata service", &e))?;
    let role = body_text(roles).await;
    let role = role.lines().next().unwrap_or_default().trim().to_string();
    if role.is_empty() {
        return Err(no_identity(
            "and the instance has no role (instance profile)".to_string(),
        ));
    }
    let response = get(format!("/latest/meta-data/iam/security-credentials/{role}"))
        .await
        .map_err(|e| unreachable("the instance metadata service", &e))?;
    let parsed: ContainerCredentials =
        serde_json::from_str(&body_text(response).await).map_err(|_| {
            Problem::unreachable("the instance metadata service answered without credentials")
        })?;
    Ok(AwsCredentials {
        access_key_id: parsed.access_key_id,
        secret_access_key: parsed.secret_access_key,
        session_token: parsed.token,
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizationData {
    authorization_token: String,
    expires_at: f64,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizationAnswer {
    authorization_data: Vec<AuthorizationData>,
}

/// ECR's `GetAuthorizationToken` (JSON 1.1 protocol, SigV4-signed): `AWS` and a password valid
/// for 12 hours.
async fn authorization_token(
    http: &CloudHttp<'_>,
    env: &CloudEnvironment,
    credentials: &AwsCredentials,
    region: &str,
) -> Result<Login, Problem> {
    let base = endpoint(env, "AWS_ENDPOINT_URL_ECR", "api.ecr", region);
    let url = Url::parse(&format!("{base}/")).map_err(|error| {
        Problem::setup(format!("the ECR endpoint {base} is not a URL ({error})"))
    })?;
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let now = SystemTime::now();
    let date = amz_date(now);
    let body = b"{}";
    let target = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
    let content_type = "application/x-amz-json-1.1";
    let mut signed = vec![
        ("content-type", content_type),
        ("host", host.as_str()),
        ("x-amz-date", date.as_str()),
        ("x-amz-target", target),
    ];
    if let Some(token) = &credentials.session_token {
        signed.push(("x-amz-security-token", token.as_str()));
    }
    let authorization = sigv4::authorization(
        &sigv4::Request {
            method: "POST",
            url: &url,
            headers: &signed,
            body,
        },
        &SigningKey {
            access_key_id: &credentials.access_key_id,
            secret_access_key: &credentials.secret_access_key,
        },
        &sigv4::Scope {
            region,
            service: "ecr",
            amz_date: &date,
        },
    );
    let mut request = http
        .api()?
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .header("X-Amz-Date", &date)
        .header("X-Amz-Target", target)
        .header(reqwest::header::AUTHORIZATION, authorization)
        .body(body.to_vec());
    if let Some(token) = &credentials.session_token {
        request = request.header("X-Amz-Security-Token", token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| unreachable(&format!("the ECR API ({base})"), &e))?;
    let status = response.status();
    let text = body_text(response).await;
    if !status.is_success() {
        #[derive(serde::Deserialize, Default)]
        struct Fault {
            #[serde(default, rename = "__type")]
            kind: String,
            #[serde(default)]
            message: String,
        }
        let fault: Fault = serde_json::from_str(&text).unwrap_or_default();
        let kind = fault.kind.rsplit('#').next().unwrap_or_default();
        return Err(refusal(
            status,
            format!(
                "ECR refused GetAuthorizationToken ({status}: {kind} {}); the role needs \
                 ecr:GetAuthorizationToken",
                fault.message
            ),
        ));
    }
    let answer: AuthorizationAnswer = serde_json::from_str(&text)
        .map_err(|_| Problem::unreachable("ECR answered without an authorization token"))?;
    let data = answer
        .authorization_data
        .into_iter()
        .next()
        .ok_or_else(|| Problem::unreachable("ECR answered without an authorization token"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data.authorization_token.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| Problem::unreachable("ECR's authorization token is not base64 text"))?;
    let (username, password) = decoded
        .split_once(':')
        .ok_or_else(|| Problem::unreachable("ECR's authorization token is not USER:PASSWORD"))?;
    Ok(Login {
        credential: Credential::Basic {
            username: username.to_string(),
            password: password.to_string(),
        },
        expires_at: from_unix_seconds(data.expires_at).unwrap_or(now),
        fetched_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecr_hosts_name_their_account_and_region() {
        assert_eq!(
            parse_ecr_host("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            Some(EcrHost {
                account: "123456789012".into(),
                region: "eu-west-1".into()
            })
        );
        assert_eq!(
            parse_ecr_host("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com:443")
                .map(|h| h.region),
            Some("us-gov-west-1".into())
        );
        assert_eq!(
            parse_ecr_host("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn").map(|h| h.region),
            Some("cn-north-1".into())
        );
        for other in [
            "public.ecr.aws",
            "12345.dkr.ecr.eu-west-1.amazonaws.com",
            "123456789012.dkr.ecr..amazonaws.com",
            "123456789012.s3.eu-west-1.amazonaws.com",
            "ghcr.io",
        ] {
            assert_eq!(parse_ecr_host(other), None, "{other}");
        }
    }

    #[test]
    fn endpoints_follow_the_sdk_overrides() {
        let env = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            CloudEnvironment::from_variables(|name| {
                vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
        };
        assert_eq!(
            endpoint(&env(&[]), "AWS_ENDPOINT_URL_ECR", "api.ecr", "eu-west-1"),
            "https://api.ecr.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            endpoint(&env(&[]), "AWS_ENDPOINT_URL_STS", "sts", "cn-north-1"),
            "https://sts.cn-north-1.amazonaws.com.cn"
        );
        let overridden = env(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1/"),
            ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:2"),
        ]);
        assert_eq!(
            endpoint(&overridden, "AWS_ENDPOINT_URL_STS", "sts", "x"),
            "http://127.0.0.1:2"
        );
        assert_eq!(
            endpoint(&overridden, "AWS_ENDPOINT_URL_ECR", "api.ecr", "x"),
            "http://127.0.0.1:1"
        );
    }

    #[test]
    fn sts_answers_are_read() {
        let body = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult>\
            <Credentials><SessionToken>tok</SessionToken><SecretAccessKey>sec</SecretAccessKey>\
            <Expiration>2026-12-02T16:00:00Z</Expiration><AccessKeyId>ASIA1</AccessKeyId>\
            </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        assert_eq!(xml_value(body, "AccessKeyId"), Some("ASIA1"));
        assert_eq!(xml_value(body, "SessionToken"), Some("tok"));
        assert_eq!(xml_value(body, "Missing"), None);
    }
}
