//! `proxySecretRef` through the whole `bundlecopy controller` process, against the fake API
//! server and a real forward proxy (squid with basic auth) in front of real registries: a
//! BundleCopy whose endpoints name a proxy Secret is copied through that proxy (its log shows
//! the source's GETs and the CONNECT to the HTTPS destination); a proxy Secret without
//! `address` ends `InvalidSecret` naming the field, and fixing it re-triggers the copy (the
//! Secret watch maps proxy Secrets to the BundleCopies naming them); a wrong proxy password ends
//! `ProxyAuthenticationFailed`. The proxy password is in no log line (debug level), status or
//! Event. Also the other way of reaching an enterprise registry: `provider: gcp`, with the
//! controller's cloud identity from its environment.
//! `cargo test --test integration controller::proxy`

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::security::{assert_no_secret, secret_forms};
use crate::support::fake_api::{ApiState, ControllerProcess, FakeApiServer, bundle_copy_object};
use crate::support::forward_proxy::{
    ForwardProxy, ForwardProxyConfig, PROXY_PASSWORD, PROXY_USERNAME,
};
use crate::support::{BundleSpec, RegistryKind, TestRegistry, assert_bundle_copied, push_bundle};

const NAMESPACE: &str = "bc-proxy";
const WRONG_PASSWORD: &str = "Wr0ng-Pr0xy-Secret-8812";

/// An Opaque Secret holding `data` (values base64-encoded as the API server serves them).
fn secret(name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(key, value)| (key.to_string(), json!(STANDARD.encode(value))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": NAMESPACE, "resourceVersion": "1"},
           "type": "Opaque", "data": data})
}

/// The last Ready condition written for `name`: `(status, reason, message)`.
fn ready(api: &FakeApiServer, name: &str) -> Option<(String, String, String)> {
    let state = api.state.lock().unwrap();
    let status = state.patches_of(name).last().cloned()?.clone();
    status["conditions"].as_array()?.iter().find_map(|c| {
        (c["type"] == "Ready").then(|| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_copies_through_the_proxy_of_a_proxy_secret_and_reports_bad_ones() {
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Tls)
    );
    let proxy = ForwardProxy::start(ForwardProxyConfig {
        basic_auth: true,
        ..Default::default()
    })
    .await;
    let pushed = push_bundle(&source, "hello", "v1", &BundleSpec::new("hello", "0.1.0")).await;
    let address = proxy.url();

    // Both endpoints through the proxy; the destination is HTTPS, verified with its CA.
    let spec = |repository: &str, source_proxy: &str, destination_proxy: &str| {
        json!({"source": {"reference": pushed.reference,
                          "proxySecretRef": {"name": source_proxy}},
               "destination": {"reference": format!("{}/{repository}", destination.host()),
                               "caSecretRef": {"name": "registry-ca"},
                               "proxySecretRef": {"name": destination_proxy}}})
    };
    let objects = [
        ("through-proxy", spec("through", "corp-proxy", "corp-proxy")),
        ("no-address", spec("fixed", "broken-proxy", "corp-proxy")),
        ("wrong-password", spec("wrong", "corp-proxy", "wrong-proxy")),
    ];
    let mut state = ApiState::default();
    for (index, (name, spec)) in objects.iter().enumerate() {
        state.objects.insert(
            name.to_string(),
            bundle_copy_object(NAMESPACE, name, index as u32 + 1, spec.clone(), None),
        );
    }
    let good = [
        ("address", address.as_str()),
        ("username", PROXY_USERNAME),
        ("password", PROXY_PASSWORD),
    ];
    for secret in [
        secret("corp-proxy", &good),
        secret(
            "broken-proxy",
            &[("username", PROXY_USERNAME), ("password", PROXY_PASSWORD)],
        ),
        secret(
            "wrong-proxy",
            // Another user name: squid re-checks a user whose password changes, and a copy with
            // the right password running at the same moment could then meet a 407 too.
            &[
                ("address", address.as_str()),
                ("username", "not-a-proxy-user"),
                ("password", WRONG_PASSWORD),
            ],
        ),
        secret("registry-ca", &[("ca.crt", destination.ca_pem().unwrap())]),
    ] {
        let name = secret["metadata"]["name"].as_str().unwrap().to_string();
        state.secrets.insert(name, secret);
    }
    let api = FakeApiServer::start(NAMESPACE, state).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());
    let mut controller = ControllerProcess::start(
        &kubeconfig,
        NAMESPACE,
        dir.path(),
        "controller.log",
        &["--log-level", "debug"],
    );
    controller.wait_ready(Duration::from_secs(60)).await;

    let expected = [
        ("through-proxy", "True", "Copied"),
        ("no-address", "False", "InvalidSecret"),
        ("wrong-password", "False", "ProxyAuthenticationFailed"),
    ];
    let reasons = || {
        expected
            .iter()
            .map(|(name, _, _)| {
                ready(&api, name)
                    .map(|(status, reason, _)| (status, reason))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
    };
    let wanted: Vec<(String, String)> = expected
        .iter()
        .map(|(_, status, reason)| (status.to_string(), reason.to_string()))
        .collect();
    controller
        .wait_until(
            Duration::from_secs(90),
            || reasons() == wanted,
            || format!("Ready {:?}, expected {wanted:?}", reasons()),
        )
        .await;

    assert_bundle_copied(
        &source,
        "hello",
        &destination,
        "through/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;

    // The bad Secrets are named, with what to fix.
    let (_, _, message) = ready(&api, "no-address").unwrap();
    assert!(
        message.contains("spec.source.proxySecretRef: Secret \"broken-proxy\" has no key address"),
        "{message}"
    );
    let (_, _, message) = ready(&api, "wrong-password").unwrap();
    assert!(
        message.contains(&format!(
            "the proxy {address} (set for this endpoint) refused the proxy user name and password (407 Proxy Authentication Required)"
        )) && message.contains("\"wrong-proxy\" named by spec.destination.proxySecretRef"),
        "{message}"
    );

    // Fixing the Secret re-triggers the BundleCopy that names it.
    api.put_secret(secret("broken-proxy", &good));
    controller
        .wait_until(
            Duration::from_secs(60),
            || {
                ready(&api, "no-address").map(|(status, reason, _)| (status, reason))
                    == Some(("True".into(), "Copied".into()))
            },
            || format!("no-address after the fix: {:?}", ready(&api, "no-address")),
        )
        .await;
    assert_bundle_copied(
        &source,
        "hello",
        &destination,
        "fixed/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;

    controller.stop(Duration::from_secs(20)).await;
    // The copies went through the proxy, both ways (squid logs a tunnel when it closes, so after
    // the controller's connections have).
    proxy
        .wait_for_forwarded_get(&source.host(), "/blobs/")
        .await;
    proxy.wait_for_tunnel(&destination.host()).await;
    let mut secrets = secret_forms(PROXY_USERNAME, PROXY_PASSWORD);
    secrets.extend(secret_forms("not-a-proxy-user", WRONG_PASSWORD));
    let log = controller.log();
    assert!(log.contains("DEBUG"), "debug logging is on:\n{log}");
    assert_no_secret("controller log", &log, &secrets);
    let state = api.state.lock().unwrap();
    let written = format!(
        "{}\n{}",
        serde_json::to_string(&state.status_patches).unwrap(),
        serde_json::to_string(&state.events).unwrap()
    );
    assert_no_secret("status patches and Events", &written, &secrets);
    assert!(
        state.unexpected.is_empty(),
        "unexpected requests: {:?}",
        state.unexpected
    );
}

/// `provider: gcp` through the whole controller: the CRD field reaches the engine, and the
/// controller reads the cloud identity's variables (`GCE_METADATA_HOST`) from its environment.
#[tokio::test(flavor = "multi_thread")]
async fn controller_copies_with_the_cloud_identity_a_provider_names() {
    use crate::support::fake_cloud::{FakeCloud, Reply};
    let (source, destination) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Token)
    );
    let pushed = push_bundle(&source, "hello", "v1", &BundleSpec::new("hello", "0.1.0")).await;
    let accept = destination.token_server().unwrap().accept();
    let metadata = FakeCloud::start(move |request| {
        if request.header("metadata-flavor") != Some("Google") {
            return Reply::text(403, "text/plain", "Missing Metadata-Flavor:Google header.");
        }
        accept.basic("oauth2accesstoken", "ya29.controller-token");
        Reply::json(
            200,
            json!({"access_token": "ya29.controller-token", "expires_in": 3599, "token_type": "Bearer"}),
        )
        .with_header("Metadata-Flavor", "Google")
    });
    let mut state = ApiState::default();
    state.objects.insert(
        "from-gcp".into(),
        bundle_copy_object(
            NAMESPACE,
            "from-gcp",
            1,
            json!({"source": {"reference": pushed.reference},
                   "destination": {"reference": format!("{}/gcp", destination.host()),
                                   "provider": "gcp"}}),
            None,
        ),
    );
    let api = FakeApiServer::start(NAMESPACE, state).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());
    let host = metadata.host();
    let mut controller = ControllerProcess::start_with_env(
        &kubeconfig,
        NAMESPACE,
        dir.path(),
        "controller.log",
        &[],
        &[("GCE_METADATA_HOST", host.as_str())],
    );
    controller.wait_ready(Duration::from_secs(60)).await;
    controller
        .wait_until(
            Duration::from_secs(60),
            || {
                ready(&api, "from-gcp").map(|(status, reason, _)| (status, reason))
                    == Some(("True".into(), "Copied".into()))
            },
            || format!("from-gcp: {:?}", ready(&api, "from-gcp")),
        )
        .await;
    assert_bundle_copied(
        &source,
        "hello",
        &destination,
        "gcp/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
    assert!(!metadata.requests().is_empty());
    controller.stop(Duration::from_secs(20)).await;
    assert_no_secret(
        "controller log",
        &controller.log(),
        &["ya29.controller-token".to_string()],
    );
}
