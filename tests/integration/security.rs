//! Security properties: credentials never reach the output, even at trace level and in the
//! errors of failing copies; TLS is verified unless an endpoint is marked insecure; and
//! `insecure` never turns off digest verification.
//! `cargo test --test integration security_`

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
use bundlecopy_engine::ErrorKind;
use bundlecopy_engine::{Progress, copy_bundle};
use reqwest::Method;

use crate::faults::{bounded, copy_request, direct, fast_settings, proxied};
use crate::support::check::run_cli_with;
use crate::support::{
    BundleSpec, DockerConfig, Fault, FaultProxy, ImageFormat, PathKind, RegistryKind, Rule,
    TestRegistry, assert_bundle_copied, push_bundle,
};

/// A password no log line could contain by accident.
const WRONG_PASSWORD: &str = "Wr0ng-Distinctive-Pw-7781";

/// Every form in which `user:password` or the password could leak.
pub(crate) fn secret_forms(user: &str, password: &str) -> Vec<String> {
    let pair = format!("{user}:{password}");
    vec![
        password.to_string(),
        STANDARD.encode(&pair),
        STANDARD_NO_PAD.encode(&pair),
        URL_SAFE.encode(&pair),
        STANDARD.encode(password),
        // Percent-encoded, as a form body or query string would carry it.
        url::form_urlencoded::byte_serialize(password.as_bytes()).collect(),
    ]
}

pub(crate) fn assert_no_secret(what: &str, output: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !output.contains(secret.as_str()),
            "{what}: the output contains the secret form {secret:?}:\n{output}"
        );
    }
    // Bearer tokens are JWTs: their header always starts with `eyJ` (base64 of `{"`).
    assert!(
        !output.contains("eyJ"),
        "{what}: the output contains a JWT:\n{output}"
    );
}

async fn cli_trace(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut full = vec!["--log-level".to_string(), "trace".to_string()];
        full.extend(args);
        let args: Vec<&str> = full.iter().map(String::as_str).collect();
        run_cli_with(&args, &[], std::time::Duration::from_secs(120))
    })
    .await
    .unwrap()
}

fn small_bundle() -> BundleSpec {
    BundleSpec::new("secret", "1.0.0")
        .with_component("db", ImageFormat::Oci, &[3000])
        .with_shared_layer(1000)
}

#[tokio::test(flavor = "multi_thread")]
async fn security_credentials_never_appear_in_trace_output_or_errors() {
    let basic = TestRegistry::start(RegistryKind::TlsBasicAuth).await;
    let token = TestRegistry::start(RegistryKind::Token).await;
    let pushed = push_bundle(&basic, "team/app", "v1", &small_bundle()).await;
    let ca = basic.ca_file().unwrap();
    let ca = ca.to_str().unwrap().to_string();
    let identity_token = token.token_server().unwrap().identity_token().to_string();
    let mut secrets = secret_forms(basic.username(), basic.password());
    secrets.push(identity_token.clone());

    // Basic source → token destination, username and password for both, at trace level.
    let both = DockerConfig::new()
        .with_registry(&basic)
        .with_registry(&token)
        .write_dir();
    let copy_args = |destination: String, config: &std::path::Path, extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "copy".into(),
            "--source".into(),
            pushed.reference.clone(),
            "--destination".into(),
            destination,
            "--docker-config".into(),
            config.to_str().unwrap().into(),
            "--source-ca-file".into(),
            ca.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let (code, stdout, stderr) = cli_trace(copy_args(
        format!("{}/mirror", token.host()),
        both.path(),
        &[],
    ))
    .await;
    assert_eq!(code, 0, "{stderr}");
    // Trace level really is on (so the check below searched verbose output).
    assert!(
        stderr.contains("TRACE") && stderr.len() > 10_000,
        "{stderr}"
    );
    assert_no_secret("basic → token copy", &format!("{stdout}{stderr}"), &secrets);
    assert_bundle_copied(
        &basic,
        "team/app",
        &token,
        "mirror/app",
        "v1",
        &pushed.index_digest,
    )
    .await;

    // Token destination with an identity token (an OAuth2 refresh token) instead.
    let identity = DockerConfig::new()
        .with_registry(&basic)
        .with_identity_token(&token.host(), &token)
        .write_dir();
    let (code, stdout, stderr) = cli_trace(copy_args(
        format!("{}/by-identity", token.host()),
        identity.path(),
        &[],
    ))
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_no_secret(
        "identity token copy",
        &format!("{stdout}{stderr}"),
        &secrets,
    );

    // Wrong passwords, for Basic and for token auth: the copy fails, and neither the wrong
    // password nor the right one shows in any output or in the engine's error.
    let mut wrong_secrets = secret_forms(basic.username(), WRONG_PASSWORD);
    wrong_secrets.extend(secrets.iter().cloned());
    for (what, target) in [("basic", &basic), ("token", &token)] {
        let wrong_json = format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            target.host(),
            STANDARD.encode(format!("{}:{WRONG_PASSWORD}", target.username()))
        );
        let wrong = tempfile::tempdir().unwrap();
        std::fs::write(wrong.path().join("config.json"), &wrong_json).unwrap();
        let mut args = vec![
            "copy".to_string(),
            "--source".into(),
            format!("{}/team/app:v1", target.host()),
            "--destination".into(),
            format!("{}/elsewhere", target.host()),
            "--docker-config".into(),
            wrong.path().to_str().unwrap().into(),
        ];
        if let Some(ca) = target.ca_file() {
            args.extend(["--source-ca-file".into(), ca.to_str().unwrap().into()]);
            args.extend(["--destination-ca-file".into(), ca.to_str().unwrap().into()]);
        }
        let (code, stdout, stderr) = cli_trace(args).await;
        assert_eq!(code, 1, "{what}: {stderr}");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("error:") && l.contains("credentials")),
            "{what}: {stderr}"
        );
        assert_no_secret(
            &format!("{what} wrong password (CLI)"),
            &format!("{stdout}{stderr}"),
            &wrong_secrets,
        );

        let mut endpoint = direct(target);
        endpoint.credentials =
            bundlecopy_engine::credentials::DockerConfig::parse_config_json(wrong_json.as_bytes())
                .unwrap();
        let request = copy_request(
            format!("{}/team/app:v1", target.host()),
            format!("{}/elsewhere", target.host()),
            endpoint.clone(),
            endpoint,
            fast_settings(),
        );
        let error = bounded(what, copy_bundle(&request, &Progress::default()))
            .await
            .unwrap_err();
        assert_eq!(
            error.kind(),
            ErrorKind::AuthenticationFailed,
            "{what}: {error}"
        );
        assert_no_secret(
            &format!("{what} wrong password (engine)"),
            &format!("{error} {error:?}"),
            &wrong_secrets,
        );
    }
}

/// A CA that signed nothing the test registries serve.
fn unrelated_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "unrelated test CA");
    params.self_signed(&key).unwrap().pem()
}

#[tokio::test(flavor = "multi_thread")]
async fn security_tls_is_verified_unless_the_endpoint_is_insecure() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let tls = TestRegistry::start(RegistryKind::Tls).await;
    let pushed = push_bundle(&src, "team/app", "v1", &small_bundle()).await;
    let unrelated = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(unrelated.path(), unrelated_ca_pem()).unwrap();

    // Engine: HTTPS to `localhost` (a name in the certificate) with a CA that did not sign it.
    let mut untrusted = direct(&tls);
    untrusted.ca_pem = Some(std::fs::read(unrelated.path()).unwrap());
    let destination = format!("localhost:{}/mirror", tls.port());
    let request = copy_request(
        pushed.reference.clone(),
        destination.clone(),
        direct(&src),
        untrusted.clone(),
        fast_settings(),
    );
    let error = bounded("untrusted", copy_bundle(&request, &Progress::default()))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Tls, "{error}");
    assert!(error.to_string().contains("not trusted"), "{error}");
    assert!(
        tls.client()
            .head_manifest("mirror/app", "v1")
            .await
            .is_none()
    );

    // The same endpoint marked insecure: no verification, the copy goes through.
    let mut insecure = untrusted;
    insecure.insecure = true;
    insecure.ca_pem = None;
    let request = copy_request(
        pushed.reference.clone(),
        destination.clone(),
        direct(&src),
        insecure,
        fast_settings(),
    );
    bounded("insecure", copy_bundle(&request, &Progress::default()))
        .await
        .unwrap();
    assert_bundle_copied(
        &src,
        "team/app",
        &tls,
        "mirror/app",
        "v1",
        &pushed.index_digest,
    )
    .await;

    // The CLI: the unrelated CA fails with TLSError's message, --destination-insecure works.
    let run = |extra: Vec<String>| {
        let mut args = vec![
            "copy".to_string(),
            "--source".into(),
            pushed.reference.clone(),
            "--destination".into(),
            format!("localhost:{}/cli/app:v1", tls.port()),
        ];
        args.extend(extra);
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cli_with(&args, &[], std::time::Duration::from_secs(60))
        })
    };
    let (code, _, stderr) = run(vec![
        "--destination-ca-file".into(),
        unrelated.path().to_str().unwrap().into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("error:")
            && stderr.contains("TLS failed")
            && stderr.contains("not trusted"),
        "{stderr}"
    );
    let (code, _, stderr) = run(vec!["--destination-insecure".into()]).await.unwrap();
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn security_insecure_endpoints_still_verify_digests() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Tls).await;
    let pushed = push_bundle(&src, "team/app", "v1", &small_bundle()).await;
    let proxy = FaultProxy::start(&src);
    let (layer, _) = pushed
        .blobs
        .iter()
        .find(|(_, size)| *size == 3000)
        .cloned()
        .unwrap();
    proxy.add_rule(
        Rule::new(Fault::Corrupt { at: 7 })
            .method(Method::GET)
            .kind(PathKind::Blob)
            .path_contains(&layer),
    );
    let mut source = proxied(&proxy, &src);
    source.insecure = true;
    let mut destination = direct(&dst);
    destination.insecure = true;
    destination.ca_pem = None;
    let request = copy_request(
        format!("{}/team/app:v1", proxy.host()),
        format!("{}/mirror", dst.host()),
        source,
        destination,
        fast_settings(),
    );
    let error = bounded("corrupt", copy_bundle(&request, &Progress::default()))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DigestMismatch, "{error}");
    assert!(
        dst.client()
            .head_manifest("mirror/app", "v1")
            .await
            .is_none()
    );
    assert!(!dst.client().head_blob("mirror/app", &layer).await);
}
