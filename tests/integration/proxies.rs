//! HTTP proxies, through a real forward proxy (Debian's squid, `support::forward_proxy`) in
//! front of real registries on loopback. On loopback a client could reach a registry directly
//! while claiming to use a proxy, so every test reads the proxy's own log: a copy that should go
//! through it left its requests there (`GET http://…` for a plain-HTTP registry, `CONNECT` for
//! an HTTPS one), a bypassed one left none.
//! `cargo test --test integration proxies_`

use std::process::Command;

use bundlecopy_engine::{
    EngineSettings, ErrorKind, Progress, ProxyEnvironment, ProxyOptions, copy_bundle,
};

use crate::faults::{bounded, copy_request, direct, fast_settings};
use crate::security::{assert_no_secret, secret_forms};
use crate::support::check::{CLI_TIMEOUT, run_with_timeout};
use crate::support::forward_proxy::{
    ForwardProxy, ForwardProxyConfig, PROXY_PASSWORD, PROXY_USERNAME, PROXY_VARIABLES,
};
use crate::support::registry::free_port;
use crate::support::{
    BundleSpec, ImageFormat, PushedBundle, RegistryKind, TestRegistry, assert_bundle_copied,
    bundlecopy_bin, push_bundle,
};

const WRONG_PROXY_PASSWORD: &str = "Wr0ng-Pr0xy-Pw-3390";

/// Runs `bundlecopy ARGS` with exactly the proxy variables in `env` (none inherited), off the
/// async runtime so the registries keep serving: `(exit code, stdout + stderr)`.
async fn cli(args: Vec<String>, env: Vec<(&'static str, String)>) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(bundlecopy_bin());
        command.args(&args);
        for variable in PROXY_VARIABLES {
            command.env_remove(variable);
        }
        command.envs(env);
        let output = run_with_timeout(command, CLI_TIMEOUT);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.code, text)
    })
    .await
    .unwrap()
}

fn copy_args(source: &str, destination: String, extra: &[String]) -> Vec<String> {
    let mut args = vec![
        "copy".to_string(),
        "--source".into(),
        source.to_string(),
        "--destination".into(),
        destination,
    ];
    args.extend(extra.iter().cloned());
    args
}

fn bundle() -> BundleSpec {
    BundleSpec::new("proxied", "1.0.0")
        .with_component("db", ImageFormat::Oci, &[4096, 2048])
        .with_shared_layer(1000)
}

/// A plain-HTTP source holding the bundle and an HTTPS destination (verified against its CA).
async fn registries() -> (TestRegistry, TestRegistry, PushedBundle) {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Tls)
    );
    let pushed = push_bundle(&source, "team/app", "v1", &bundle()).await;
    (source, destination, pushed)
}

fn ca_flag(destination: &TestRegistry) -> Vec<String> {
    vec![
        "--destination-ca-file".into(),
        destination.ca_file().unwrap().to_str().unwrap().to_string(),
    ]
}

/// What the proxy log must show for a copy from `source` to `destination` through it: the
/// source's blobs fetched by absolute-form GETs (a forwarded plain-HTTP request) and at least
/// one CONNECT tunnel to the HTTPS destination.
async fn assert_copy_went_through(
    proxy: &ForwardProxy,
    source: &TestRegistry,
    destination: &TestRegistry,
    pushed: &PushedBundle,
) {
    for (digest, _) in &pushed.blobs {
        proxy
            .wait_for_forwarded_get(&source.host(), &format!("/blobs/{digest}"))
            .await;
    }
    proxy.wait_for_tunnel(&destination.host()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn proxies_the_environment_proxy_carries_the_copy_and_no_proxy_bypasses_it() {
    let (source, destination, pushed) = registries().await;
    let open = ForwardProxy::start(ForwardProxyConfig::default()).await;
    // Upper case for one scheme, lower case for the other: both are read.
    let (code, output) = cli(
        copy_args(
            &pushed.reference,
            format!("{}/through/app:v1", destination.host()),
            &ca_flag(&destination),
        ),
        vec![("HTTP_PROXY", open.url()), ("https_proxy", open.url())],
    )
    .await;
    assert_eq!(code, 0, "{output}");
    assert_copy_went_through(&open, &source, &destination, &pushed).await;
    assert_bundle_copied(
        &source,
        "team/app",
        &destination,
        "through/app",
        "v1",
        &pushed.index_digest,
    )
    .await;

    // A proxy that refuses everyone without credentials: any request sent through it fails.
    let closed = ForwardProxy::start(ForwardProxyConfig {
        basic_auth: true,
        ..Default::default()
    })
    .await;
    let through_closed = |no_proxy: &str| {
        vec![
            ("HTTP_PROXY", closed.url()),
            ("HTTPS_PROXY", closed.url()),
            ("NO_PROXY", no_proxy.to_string()),
        ]
    };
    // Without NO_PROXY the copy is refused by the proxy, with a message that names it (only the
    // plain-HTTP source goes through it here, so that the error is the source's).
    let (code, output) = cli(
        copy_args(
            &pushed.reference,
            format!("{}/refused/app:v1", destination.host()),
            &ca_flag(&destination),
        ),
        vec![("HTTP_PROXY", closed.url())],
    )
    .await;
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(&format!(
            "source registry {}: the proxy {} (from HTTP_PROXY) requires a user name and password (407 Proxy Authentication Required), and none were given",
            source.host(),
            closed.url()
        )) && output.contains("give the proxy's user name and password in $HTTP_PROXY"),
        "{output}"
    );
    closed
        .wait_for_log("the refused GET from the source", |log| {
            log.iter().any(|r| r.status == 407)
        })
        .await;

    // A CIDR in NO_PROXY: straight to both registries, nothing more in the proxy's log.
    let seen = closed.requests().len();
    let (code, output) = cli(
        copy_args(
            &pushed.reference,
            format!("{}/direct/app:v1", destination.host()),
            &ca_flag(&destination),
        ),
        through_closed("10.0.0.0/8, 127.0.0.0/8"),
    )
    .await;
    assert_eq!(code, 0, "{output}");
    assert_eq!(closed.requests().len(), seen, "{}", closed.log());

    // A host name in no_proxy (lower case), for registries named `localhost`.
    let (code, output) = cli(
        copy_args(
            &format!("localhost:{}/team/app:v1", source.port()),
            format!("localhost:{}/by-name/app:v1", destination.port()),
            &ca_flag(&destination),
        ),
        vec![
            ("HTTP_PROXY", closed.url()),
            ("HTTPS_PROXY", closed.url()),
            ("no_proxy", "example.com,localhost".to_string()),
        ],
    )
    .await;
    assert_eq!(code, 0, "{output}");
    assert_eq!(closed.requests().len(), seen, "{}", closed.log());
    assert_bundle_copied(
        &source,
        "team/app",
        &destination,
        "by-name/app",
        "v1",
        &pushed.index_digest,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn proxies_an_endpoint_proxy_with_basic_auth_wins_and_its_password_is_never_printed() {
    let (source, destination, pushed) = registries().await;
    let proxy = ForwardProxy::start(ForwardProxyConfig {
        basic_auth: true,
        ..Default::default()
    })
    .await;
    let mut secrets = secret_forms(PROXY_USERNAME, PROXY_PASSWORD);
    secrets.extend(secret_forms(PROXY_USERNAME, WRONG_PROXY_PASSWORD));
    let good = proxy.url_with(PROXY_USERNAME, PROXY_PASSWORD);
    let wrong = proxy.url_with(PROXY_USERNAME, WRONG_PROXY_PASSWORD);
    let flags = |source_proxy: &str, destination_proxy: &str| {
        let mut flags = vec![
            "--log-level".to_string(),
            "trace".into(),
            "--source-proxy".into(),
            source_proxy.to_string(),
            "--destination-proxy".into(),
            destination_proxy.to_string(),
        ];
        flags.extend(ca_flag(&destination));
        flags
    };
    // The environment names a proxy nobody listens on: the flags must win over it.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let environment = || vec![("HTTP_PROXY", dead.clone()), ("HTTPS_PROXY", dead.clone())];

    let (code, output) = cli(
        copy_args(
            &pushed.reference,
            format!("{}/authed/app:v1", destination.host()),
            &flags(&good, &good),
        ),
        environment(),
    )
    .await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("TRACE") && output.len() > 10_000,
        "{output}"
    );
    assert_no_secret("proxied copy at trace level", &output, &secrets);
    assert_copy_went_through(&proxy, &source, &destination, &pushed).await;
    assert_bundle_copied(
        &source,
        "team/app",
        &destination,
        "authed/app",
        "v1",
        &pushed.index_digest,
    )
    .await;

    // A wrong password, for each endpoint: the proxy answers the HTTPS destination's CONNECT,
    // and the plain-HTTP source's forwarded GET, with 407.
    for (side, registry, flags) in [
        ("destination", destination.host(), flags(&good, &wrong)),
        ("source", source.host(), flags(&wrong, &good)),
    ] {
        let (code, output) = cli(
            copy_args(
                &pushed.reference,
                format!("{}/wrong/app:v1", destination.host()),
                &flags,
            ),
            environment(),
        )
        .await;
        assert_eq!(code, 1, "{output}");
        assert_eq!(
            output.lines().last().unwrap_or_default(),
            format!(
                "error: {side} registry {registry}: the proxy {} (set for this endpoint) refused the proxy user name and password (407 Proxy Authentication Required); give the proxy's user name and password in --{side}-proxy as http://USER:PASSWORD@HOST:PORT",
                proxy.url()
            )
        );
        assert_no_secret(&format!("wrong {side} proxy password"), &output, &secrets);
    }
}

/// The engine, in process: its error for each proxy failure.
async fn copy_error(
    source: &TestRegistry,
    destination: &TestRegistry,
    pushed: &PushedBundle,
    proxy: Option<&str>,
    settings: EngineSettings,
) -> bundlecopy_engine::CopyError {
    let mut destination_endpoint = direct(destination);
    destination_endpoint.proxy = proxy.map(|url| ProxyOptions::parse(url).unwrap());
    let request = copy_request(
        pushed.reference.clone(),
        format!("{}/failing/app:v1", destination.host()),
        direct(source),
        destination_endpoint,
        settings,
    );
    bounded("a copy through a failing proxy", async {
        copy_bundle(&request, &Progress::default()).await
    })
    .await
    .expect_err("the copy must fail at the proxy")
}

#[tokio::test(flavor = "multi_thread")]
async fn proxies_an_unreachable_proxy_and_a_refused_connect_each_have_their_own_error() {
    let (source, destination, pushed) = registries().await;
    let nobody = format!("http://127.0.0.1:{}", free_port());

    // Nobody listens: ProxyUnreachable, naming the proxy and where it was set.
    let error = copy_error(
        &source,
        &destination,
        &pushed,
        Some(&nobody),
        fast_settings(),
    )
    .await;
    assert_eq!(error.kind(), ErrorKind::ProxyUnreachable, "{error}");
    assert!(error.is_transient());
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "destination registry {}: the proxy {nobody} (set for this endpoint) is unreachable: ",
            destination.host()
        )) && text.contains("onnection refused"),
        "{text}"
    );

    // The same proxy from the environment (HTTPS_PROXY, the destination being HTTPS).
    let settings = EngineSettings {
        proxy_environment: ProxyEnvironment::from_variables(|name| {
            (name == "HTTPS_PROXY").then(|| nobody.clone())
        })
        .unwrap(),
        ..fast_settings()
    };
    let error = copy_error(&source, &destination, &pushed, None, settings).await;
    assert_eq!(error.kind(), ErrorKind::ProxyUnreachable, "{error}");
    assert!(
        error.to_string().contains(&format!(
            "the proxy {nobody} (from HTTPS_PROXY) is unreachable"
        )),
        "{error}"
    );

    // An insecure endpoint probes HTTPS first; a dead proxy must not pass for "no TLS here".
    let mut insecure = direct(&destination);
    insecure.ca_pem = None;
    insecure.insecure = true;
    insecure.proxy = Some(ProxyOptions::parse(&nobody).unwrap());
    let request = copy_request(
        pushed.reference.clone(),
        format!("{}/failing/app:v1", destination.host()),
        direct(&source),
        insecure,
        fast_settings(),
    );
    let error = bounded("an insecure copy through a dead proxy", async {
        copy_bundle(&request, &Progress::default()).await
    })
    .await
    .expect_err("the copy must fail at the proxy");
    assert_eq!(error.kind(), ErrorKind::ProxyUnreachable, "{error}");

    // A proxy whose rules allow CONNECT to port 443 only refuses the tunnel to the registry.
    let strict = ForwardProxy::start(ForwardProxyConfig {
        connect_ports: vec![443],
        ..Default::default()
    })
    .await;
    let error = copy_error(
        &source,
        &destination,
        &pushed,
        Some(&strict.url()),
        fast_settings(),
    )
    .await;
    assert_eq!(error.kind(), ErrorKind::ProxyRefused, "{error}");
    assert!(!error.is_transient());
    assert_eq!(
        error.to_string(),
        format!(
            "destination registry {host}: the proxy {proxy} (set for this endpoint) refused to open a tunnel (CONNECT) to {host}: the proxy answered with an error status",
            host = destination.host(),
            proxy = strict.url()
        )
    );
    strict
        .wait_for_log("the refused CONNECT", |log| {
            log.iter().any(|r| r.method == "CONNECT" && r.status == 403)
        })
        .await;
    assert_eq!(
        strict.requests_to(&destination.host()).len(),
        1,
        "refused once, not retried: {}",
        strict.log()
    );
}
