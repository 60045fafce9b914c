//! `provider: aws | azure | gcp`: registry credentials from the pod's cloud identity, against
//! in-test fakes of each cloud's token endpoints (`support::fake_cloud`) reached through the
//! override its SDKs honour, in front of a REAL registry whose token server accepts only what
//! the fake just issued (`TokenServer::accept`). Each fake checks the request shape the cloud
//! documents. Also: a cached credential is reused, an expiring one is fetched again before use,
//! and a pod without the identity ends `AuthenticationFailed` naming the missing step.
//! `cargo test --test integration cloud_`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bundlecopy_engine::{
    CloudEnvironment, CopyError, EngineSettings, ErrorKind, Progress, Provider, copy_bundle,
};

use crate::faults::{bounded, copy_request, direct, fast_settings};
use crate::security::assert_no_secret;
use crate::support::check::run_cli_with;
use crate::support::fake_cloud::{FakeCloud, Recorded, Reply};
use crate::support::forward_proxy::PROXY_VARIABLES;
use crate::support::token::AcceptHandle;
use crate::support::{
    BundleSpec, ImageFormat, PushedBundle, RegistryKind, TestRegistry, assert_bundle_copied,
    push_bundle,
};

/// A plain source holding a bundle, and a destination behind a token server that accepts
/// nothing the engine has yet (copies here are given no Docker credentials).
async fn registries() -> (TestRegistry, TestRegistry, PushedBundle, AcceptHandle) {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Token)
    );
    let spec = BundleSpec::new("cloudy", "1.0.0").with_component("db", ImageFormat::Oci, &[2048]);
    let pushed = push_bundle(&source, "team/app", "v1", &spec).await;
    let accept = destination.token_server().unwrap().accept();
    accept.refresh_token("nothing-issued-yet");
    (source, destination, pushed, accept)
}

fn environment(variables: &[(&str, String)]) -> CloudEnvironment {
    let variables: Vec<(String, String)> = variables
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    CloudEnvironment::from_variables(|name| {
        variables
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
}

/// Copy the bundle to `tag` at the destination, whose credentials come from `provider`.
async fn copy_to(
    source: &TestRegistry,
    destination: &TestRegistry,
    pushed: &PushedBundle,
    tag: &str,
    provider: Provider,
    cloud: &CloudEnvironment,
) -> Result<(), CopyError> {
    let mut destination_endpoint = direct(destination);
    destination_endpoint.credentials = Default::default();
    destination_endpoint.provider = provider;
    let settings = EngineSettings {
        cloud_environment: cloud.clone(),
        ..fast_settings()
    };
    let request = copy_request(
        pushed.reference.clone(),
        format!("{}/mirror/app:{tag}", destination.host()),
        direct(source),
        destination_endpoint,
        settings,
    );
    bounded("a copy with cloud credentials", async {
        copy_bundle(&request, &Progress::default()).await
    })
    .await
    .map(|_| ())
}

/// `copy_to`, which must succeed, and the check that the destination holds the bundle.
async fn copied_to(
    source: &TestRegistry,
    destination: &TestRegistry,
    pushed: &PushedBundle,
    tag: &str,
    provider: Provider,
    cloud: &CloudEnvironment,
) {
    if let Err(error) = copy_to(source, destination, pushed, tag, provider, cloud).await {
        panic!("the copy with provider {provider} failed: {error}");
    }
    assert_bundle_copied(
        source,
        "team/app",
        destination,
        "mirror/app",
        tag,
        &pushed.index_digest,
    )
    .await;
}

fn token_file(dir: &tempfile::TempDir, name: &str, content: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_string()
}

/// Seconds since the epoch, now.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The failures a fake's handler found in the requests it received (checked at the end, since
/// a handler cannot fail the test itself).
#[derive(Clone, Default)]
struct Problems(Arc<std::sync::Mutex<Vec<String>>>);

impl Problems {
    fn check(&self, ok: bool, what: impl Into<String>) -> bool {
        if !ok {
            self.0.lock().unwrap().push(what.into());
        }
        ok
    }

    fn assert_none(&self) {
        let problems = self.0.lock().unwrap();
        assert!(
            problems.is_empty(),
            "requests not shaped as the cloud documents: {problems:?}"
        );
    }
}

/// A fake ECR `GetAuthorizationToken`: checks the JSON 1.1 protocol and the SigV4 header shape
/// for `access_key` (and the session token, when given), issues `AWS:ecr-password-N` valid for
/// `lifetime` seconds, and makes the token server accept only that.
fn fake_ecr(
    problems: &Problems,
    accept: AcceptHandle,
    access_key: &'static str,
    session_token: Option<&'static str>,
    lifetime: Arc<AtomicU64>,
) -> (FakeCloud, Arc<AtomicUsize>) {
    let issued = Arc::new(AtomicUsize::new(0));
    let (problems, count) = (problems.clone(), issued.clone());
    let fake = FakeCloud::start(move |request: &Recorded| {
        let authorization = request.header("authorization").unwrap_or_default();
        let date = request.header("x-amz-date").unwrap_or_default().to_string();
        let scope = format!(
            "Credential={access_key}/{}/us-west-2/ecr/aws4_request",
            date.get(..8).unwrap_or_default()
        );
        let signed_headers = if session_token.is_some() {
            "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target,"
        } else {
            "SignedHeaders=content-type;host;x-amz-date;x-amz-target,"
        };
        let signature = authorization
            .rsplit("Signature=")
            .next()
            .unwrap_or_default();
        let shaped = problems.check(
            request.method == "POST" && request.path == "/",
            format!("ECR: {} {}", request.method, request.path),
        ) & problems.check(
            request.header("x-amz-target")
                == Some("AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"),
            "ECR: X-Amz-Target",
        ) & problems.check(
            request.header("content-type") == Some("application/x-amz-json-1.1"),
            "ECR: Content-Type",
        ) & problems.check(request.body == "{}", "ECR: body")
            & problems.check(
                request.header("x-amz-security-token") == session_token,
                "ECR: X-Amz-Security-Token",
            )
            & problems.check(
                authorization.starts_with(&format!(
                    "AWS4-HMAC-SHA256 {scope}, {signed_headers} Signature="
                )) && signature.len() == 64
                    && signature.chars().all(|c| c.is_ascii_hexdigit()),
                format!("ECR: Authorization {authorization:?}"),
            )
            & problems.check(date.len() == 16 && date.ends_with('Z'), "ECR: X-Amz-Date");
        if !shaped {
            return Reply::json(
                400,
                serde_json::json!({"__type": "InvalidSignatureException", "message": "bad request shape"}),
            );
        }
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let password = format!("ecr-password-{n}");
        accept.basic("AWS", &password);
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
        Reply::json(
            200,
            serde_json::json!({"authorizationData": [{
                "authorizationToken": token,
                "expiresAt": (now() + lifetime.load(Ordering::SeqCst)) as f64,
                "proxyEndpoint": "https://123456789012.dkr.ecr.us-west-2.amazonaws.com"}]}),
        )
    });
    (fake, issued)
}

#[tokio::test(flavor = "multi_thread")]
async fn cloud_aws_irsa_gets_an_ecr_token_caches_it_and_refreshes_it_before_it_expires() {
    let (source, destination, pushed, accept) = registries().await;
    let dir = tempfile::tempdir().unwrap();
    let web_identity = token_file(&dir, "eks-token", "eks-oidc-token-for-bundlecopy");
    let problems = Problems::default();
    let sts_problems = problems.clone();
    let role = "arn:aws:iam::123456789012:role/bundlecopy-irsa";
    let sts = FakeCloud::start(move |request: &Recorded| {
        let form = |name: &str| request.form_field(name);
        sts_problems.check(
            request.method == "POST" && request.path == "/",
            "STS: POST /",
        );
        sts_problems.check(
            request.header("content-type") == Some("application/x-www-form-urlencoded"),
            "STS: form body",
        );
        sts_problems.check(
            request.header("authorization").is_none(),
            "STS: AssumeRoleWithWebIdentity is unsigned",
        );
        let shaped = form("Action").as_deref() == Some("AssumeRoleWithWebIdentity")
            && form("Version").as_deref() == Some("2011-06-15")
            && form("RoleArn").as_deref() == Some(role)
            && form("RoleSessionName").is_some_and(|s| !s.is_empty())
            && form("WebIdentityToken").as_deref() == Some("eks-oidc-token-for-bundlecopy");
        if !sts_problems.check(shaped, format!("STS form: {:?}", request.form())) {
            return Reply::text(
                400,
                "text/xml",
                "<ErrorResponse><Error><Code>InvalidParameterValue</Code><Message>bad</Message></Error></ErrorResponse>",
            );
        }
        Reply::text(
            200,
            "text/xml",
            "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
            <AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIAFAKEIRSA</AccessKeyId>\
            <SecretAccessKey>fake-secret-irsa</SecretAccessKey><SessionToken>fake-session-irsa</SessionToken>\
            <Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult>\
            </AssumeRoleWithWebIdentityResponse>",
        )
    });
    let lifetime = Arc::new(AtomicU64::new(12 * 3600));
    let (ecr, issued) = fake_ecr(
        &problems,
        accept,
        "ASIAFAKEIRSA",
        Some("fake-session-irsa"),
        lifetime.clone(),
    );
    let cloud = environment(&[
        ("AWS_ROLE_ARN", role.into()),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", web_identity),
        ("AWS_REGION", "us-west-2".into()),
        ("AWS_ENDPOINT_URL_STS", sts.url()),
        ("AWS_ENDPOINT_URL_ECR", ecr.url()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]);

    copied_to(&source, &destination, &pushed, "v1", Provider::Aws, &cloud).await;
    assert_eq!(
        (sts.requests().len(), issued.load(Ordering::SeqCst)),
        (1, 1)
    );

    // A second copy reuses the cached ECR token: no call to the cloud.
    copy_to(&source, &destination, &pushed, "v2", Provider::Aws, &cloud)
        .await
        .unwrap();
    assert_eq!(
        (sts.requests().len(), issued.load(Ordering::SeqCst)),
        (1, 1)
    );
    problems.assert_none();
}

#[tokio::test(flavor = "multi_thread")]
async fn cloud_aws_pod_identity_refreshes_an_expiring_token_before_use() {
    let (source, destination, pushed, accept) = registries().await;
    let dir = tempfile::tempdir().unwrap();
    let agent_token = token_file(&dir, "eks-pod-identity-token", "pod-identity-agent-token");
    let problems = Problems::default();
    let agent_problems = problems.clone();
    let agent = FakeCloud::start(move |request: &Recorded| {
        let shaped = agent_problems.check(
            request.method == "GET" && request.path == "/v1/credentials",
            format!("Pod Identity agent: {} {}", request.method, request.path),
        ) & agent_problems.check(
            request.header("authorization") == Some("pod-identity-agent-token"),
            "Pod Identity agent: Authorization is the token file's content",
        );
        if !shaped {
            return Reply::json(401, serde_json::json!({"message": "unauthorized"}));
        }
        Reply::json(
            200,
            serde_json::json!({"AccessKeyId": "ASIAFAKEPODID", "SecretAccessKey": "fake-secret-podid",
                               "Token": "fake-session-podid", "AccountId": "123456789012",
                               "Expiration": "2099-01-01T00:00:00Z"}),
        )
    });
    // Each ECR token lives 6 s: it is used for its first 4.8 s only.
    let lifetime = Arc::new(AtomicU64::new(6));
    let (ecr, issued) = fake_ecr(
        &problems,
        accept,
        "ASIAFAKEPODID",
        Some("fake-session-podid"),
        lifetime,
    );
    let cloud = environment(&[
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{}/v1/credentials", agent.url()),
        ),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", agent_token),
        ("AWS_REGION", "us-west-2".into()),
        ("AWS_ENDPOINT_URL", ecr.url()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]);
    let started = std::time::Instant::now();
    copied_to(&source, &destination, &pushed, "v1", Provider::Aws, &cloud).await;
    copied_to(&source, &destination, &pushed, "v2", Provider::Aws, &cloud).await;
    if started.elapsed() < Duration::from_secs(4) {
        assert_eq!(issued.load(Ordering::SeqCst), 1, "a fresh token is reused");
    }
    // Past four fifths of its life: fetched again before use. The token server accepts only the
    // newest password, so this copy succeeds only with the new token.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = issued.load(Ordering::SeqCst);
    copied_to(&source, &destination, &pushed, "v3", Provider::Aws, &cloud).await;
    assert_eq!(
        issued.load(Ordering::SeqCst),
        before + 1,
        "the expiring token was fetched again"
    );
    assert!(agent.requests().len() >= 2);
    problems.assert_none();
}

#[tokio::test(flavor = "multi_thread")]
async fn cloud_azure_workload_identity_exchanges_an_entra_token_for_an_acr_refresh_token() {
    let (source, destination, pushed, accept) = registries().await;
    let dir = tempfile::tempdir().unwrap();
    let federated = token_file(&dir, "azure-identity-token", "aks-federated-sa-token");
    let problems = Problems::default();
    let entra_problems = problems.clone();
    let tenant = "72f988bf-0000-4000-8000-000000000001";
    let client = "0f1e2d3c-0000-4000-8000-000000000002";
    let issued = Arc::new(AtomicUsize::new(0));
    let count = issued.clone();
    let entra = FakeCloud::start(move |request: &Recorded| {
        let form = |name: &str| request.form_field(name);
        let shaped = entra_problems.check(
            request.method == "POST" && request.path == format!("/{tenant}/oauth2/v2.0/token"),
            format!("Entra ID: {} {}", request.method, request.path),
        ) & entra_problems.check(
            form("grant_type").as_deref() == Some("client_credentials")
                && form("client_id").as_deref() == Some(client)
                && form("client_assertion_type").as_deref()
                    == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                && form("client_assertion").as_deref() == Some("aks-federated-sa-token")
                && form("scope").is_some_and(|scope| scope.ends_with("/.default")),
            format!("Entra ID form: {:?}", request.form()),
        );
        if !shaped {
            return Reply::json(
                400,
                serde_json::json!({"error": "invalid_request", "error_description": "AADSTS900144: bad request shape"}),
            );
        }
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("entra-access-token-{n}");
        accept.exchange(&token, tenant);
        Reply::json(
            200,
            serde_json::json!({"token_type": "Bearer", "expires_in": 3599, "access_token": token}),
        )
    });
    let cloud = environment(&[
        ("AZURE_CLIENT_ID", client.into()),
        ("AZURE_TENANT_ID", tenant.into()),
        ("AZURE_FEDERATED_TOKEN_FILE", federated),
        ("AZURE_AUTHORITY_HOST", format!("{}/", entra.url())),
    ]);
    copied_to(
        &source,
        &destination,
        &pushed,
        "v1",
        Provider::Azure,
        &cloud,
    )
    .await;
    assert_eq!(issued.load(Ordering::SeqCst), 1);
    copy_to(
        &source,
        &destination,
        &pushed,
        "v2",
        Provider::Azure,
        &cloud,
    )
    .await
    .unwrap();
    assert_eq!(
        issued.load(Ordering::SeqCst),
        1,
        "the Entra token is cached"
    );
    problems.assert_none();
}

#[tokio::test(flavor = "multi_thread")]
async fn cloud_gcp_uses_the_metadata_servers_token_as_oauth2accesstoken() {
    let (source, destination, pushed, accept) = registries().await;
    let problems = Problems::default();
    let metadata_problems = problems.clone();
    let metadata = FakeCloud::start(move |request: &Recorded| {
        let shaped = metadata_problems.check(
            request.method == "GET"
                && request.path == "/computeMetadata/v1/instance/service-accounts/default/token",
            format!("metadata: {} {}", request.method, request.path),
        ) & metadata_problems.check(
            request.header("metadata-flavor") == Some("Google"),
            "metadata: Metadata-Flavor: Google",
        );
        if !shaped {
            return Reply::text(403, "text/plain", "Missing Metadata-Flavor:Google header.");
        }
        accept.basic("oauth2accesstoken", "ya29.fake-gke-access-token");
        Reply::json(200, serde_json::json!({"access_token": "ya29.fake-gke-access-token", "expires_in": 3599, "token_type": "Bearer"}))
            .with_header("Metadata-Flavor", "Google")
    });
    let cloud = environment(&[("GCE_METADATA_HOST", metadata.host())]);
    copied_to(&source, &destination, &pushed, "v1", Provider::Gcp, &cloud).await;
    assert_eq!(metadata.requests().len(), 1);
    problems.assert_none();

    // The CLI reads the real environment: --destination-provider gcp with GCE_METADATA_HOST, at
    // trace level, and the token is printed nowhere.
    let destination_ref = format!("{}/from-cli/app:v1", destination.host());
    let host = metadata.host();
    let (code, output) = tokio::task::spawn_blocking({
        let source_ref = pushed.reference.clone();
        move || {
            let mut env: Vec<(&str, &str)> = PROXY_VARIABLES.iter().map(|v| (*v, "")).collect();
            env.push(("GCE_METADATA_HOST", host.as_str()));
            let (code, stdout, stderr) = run_cli_with(
                &[
                    "copy",
                    "--source",
                    &source_ref,
                    "--destination",
                    &destination_ref,
                    "--destination-provider",
                    "gcp",
                    "--log-level",
                    "trace",
                ],
                &env,
                Duration::from_secs(120),
            );
            (code, format!("{stdout}{stderr}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{output}");
    assert_no_secret(
        "gcp copy at trace level",
        &output,
        &["ya29.fake-gke-access-token".to_string()],
    );
    assert_bundle_copied(
        &source,
        "team/app",
        &destination,
        "from-cli/app",
        "v1",
        &pushed.index_digest,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cloud_a_pod_without_the_identity_is_told_which_set_up_step_is_missing() {
    let (source, destination, pushed, _accept) = registries().await;
    // The instance metadata service is asked last; here it is a closed loopback port.
    let closed = format!("http://127.0.0.1:{}", crate::support::registry::free_port());
    for (provider, cloud, expected) in [
        (
            Provider::Aws,
            environment(&[
                ("AWS_REGION", "us-west-2".into()),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", closed.clone()),
            ]),
            "eks.amazonaws.com/role-arn",
        ),
        (
            Provider::Azure,
            environment(&[]),
            "azure.workload.identity/use",
        ),
        (
            Provider::Gcp,
            environment(&[(
                "GCE_METADATA_HOST",
                closed.trim_start_matches("http://").to_string(),
            )]),
            "iam.gke.io/gcp-service-account",
        ),
    ] {
        let error = copy_to(&source, &destination, &pushed, "v1", provider, &cloud)
            .await
            .expect_err("no identity, no copy");
        assert_eq!(
            error.kind(),
            ErrorKind::AuthenticationFailed,
            "{provider}: {error}"
        );
        let text = error.to_string();
        assert!(
            text.starts_with(&format!(
                "destination registry {}: provider {provider}: ",
                destination.host()
            )) && text.contains(expected),
            "{text}"
        );
    }
    // A cloud's credentials never go to another cloud's (or any other) registry.
    let error = bundlecopy_engine::resolve_digest(
        "ghcr.io/vendor/app:v1",
        &bundlecopy_engine::EndpointOptions {
            provider: Provider::Aws,
            ..Default::default()
        },
        bundlecopy_engine::Side::Source,
        &fast_settings(),
    )
    .await
    .expect_err("ghcr.io is no ECR");
    assert!(
        error.to_string().contains("is not an ECR registry"),
        "{error}"
    );
}
