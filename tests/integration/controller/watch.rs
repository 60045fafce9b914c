//! The controller loop itself (`controller_stream`) against the shared fake API server, which
//! streams watch events: the initial lists and watches, a reconcile per BundleCopy, no reconcile
//! for our own status write (the server echoes it as a MODIFIED event of the same generation),
//! a reconcile when a Secret the BundleCopy names appears, none for other Secrets, and one for a
//! spec change. `cargo test --test integration controller::watch`

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use http::Method;
use serde_json::{Value, json};

use bundlecopy::operator::context::Context;
use bundlecopy::operator::metrics::Metrics;
use bundlecopy::operator::watch::controller_stream;
use bundlecopy_engine::EngineSettings;

use crate::support::fake_api::{
    ApiState, FakeApiServer, SeenRequest, bundle_copy_object, condition_of,
};
use crate::support::registry::free_port;

const NAMESPACE: &str = "team-a";

/// The requests a reconcile sends, in order, from the server's log: lists and watches (GETs of
/// the collections) are the controller's machinery and are skipped.
struct Calls {
    api: FakeApiServer,
    next: usize,
}

impl Calls {
    fn is_machinery(request: &SeenRequest) -> bool {
        request.method == Method::GET
            && (request.path.ends_with("/bundlecopies") || request.path.ends_with("/secrets"))
    }

    async fn next_call(&mut self, wait: Duration) -> Option<SeenRequest> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            {
                let state = self.api.state.lock().unwrap();
                while let Some(request) = state.requests.get(self.next) {
                    self.next += 1;
                    if !Self::is_machinery(request) {
                        return Some(request.clone());
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn expect_call(&mut self, method: Method, path_end: &str) -> SeenRequest {
        let call = self
            .next_call(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("expected {method} …{path_end}, got nothing"));
        assert!(
            call.method == method && call.path.ends_with(path_end),
            "expected {method} …{path_end}, got {call} {}",
            call.body
        );
        call
    }

    async fn expect_no_call(&mut self, wait: Duration) {
        if let Some(call) = self.next_call(wait).await {
            panic!("unexpected {call} {}", call.body);
        }
    }
}

fn spec(registry: &str) -> Value {
    json!({
        "source": {"reference": format!("{registry}/hello:v1"), "credentials": [{"name": "pull"}]},
        "destination": {"reference": format!("{registry}/mirror")},
    })
}

fn reason_of(status: &Value, type_: &str) -> String {
    condition_of(status, type_)
        .map(|(_, reason, _)| reason)
        .unwrap_or_default()
}

#[tokio::test]
async fn controller_loop_reconciles_on_spec_and_secret_changes_only() {
    // A registry address where nothing listens: copies fail fast with Unreachable.
    let registry = format!("127.0.0.1:{}", free_port());
    let mut state = ApiState::default();
    state.objects.insert(
        "hello".to_string(),
        bundle_copy_object(NAMESPACE, "hello", 2, spec(&registry), None),
    );
    let api = FakeApiServer::start(NAMESPACE, state).await;
    let client = api.client();
    let engine = EngineSettings {
        max_attempts: 1,
        connect_timeout: Duration::from_secs(2),
        ..EngineSettings::default()
    };
    let context = Arc::new(Context::new(
        client.clone(),
        Arc::new(Metrics::new()),
        engine,
        2,
    ));
    let (shutdown, mut shutdown_requested) = tokio::sync::watch::channel(false);
    let shutdown_future = async move {
        let _ = shutdown_requested.wait_for(|requested| *requested).await;
    };
    let controller = controller_stream(
        client,
        Some(NAMESPACE.to_string()),
        context,
        2,
        shutdown_future,
    );
    let driver = tokio::spawn(controller.for_each(|()| async {}));
    let mut calls = Calls { api, next: 0 };

    // The listed BundleCopy is reconciled: its Secret is missing.
    calls.expect_call(Method::GET, "/secrets/pull").await;
    let patch = calls
        .expect_call(Method::PATCH, "/bundlecopies/hello/status")
        .await;
    assert_eq!(reason_of(&patch.body["status"], "Ready"), "SecretNotFound");
    calls.expect_call(Method::POST, "/events").await;

    // Our own status write came back as a watch event (the server echoes every status patch:
    // same generation, no reconcile). Nor does a Secret the BundleCopy does not name trigger one.
    calls.api.put_secret(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                "metadata": {"name": "unrelated", "namespace": NAMESPACE}}),
    );
    calls.expect_no_call(Duration::from_secs(2)).await;
    assert!(
        calls.api.state.lock().unwrap().echoes_delivered >= 1,
        "the status write was echoed to the controller's watch"
    );

    // The named Secret appears: the BundleCopy is reconciled at once, reads it and copies.
    let config = json!({"auths": {registry.clone(): {"auth": STANDARD.encode("u:p")}}}).to_string();
    calls
        .api
        .put_secret(json!({"apiVersion": "v1", "kind": "Secret",
                                "metadata": {"name": "pull", "namespace": NAMESPACE},
                                "type": "kubernetes.io/dockerconfigjson",
                                "data": {".dockerconfigjson": STANDARD.encode(config)}}));
    calls.expect_call(Method::GET, "/secrets/pull").await;
    calls
        .expect_call(Method::PATCH, "/bundlecopies/hello/status")
        .await;
    calls.expect_call(Method::POST, "/events").await;
    let patch = calls
        .expect_call(Method::PATCH, "/bundlecopies/hello/status")
        .await;
    assert_eq!(
        reason_of(&patch.body["status"], "Ready"),
        "Unreachable",
        "{}",
        patch.body
    );
    calls.expect_call(Method::POST, "/events").await;
    calls.expect_no_call(Duration::from_secs(1)).await;

    // A spec change (new generation) is reconciled again: it copies again, and the Recorder
    // counts the repeated Event in the first one's series.
    calls.api.put_spec("hello", spec(&registry));
    calls.expect_call(Method::GET, "/secrets/pull").await;
    let patch = calls
        .expect_call(Method::PATCH, "/bundlecopies/hello/status")
        .await;
    assert_eq!(patch.body["status"]["observedGeneration"], 2);
    let repeat = calls.expect_call(Method::PATCH, "").await;
    assert!(repeat.path.contains("/events/hello."), "{}", repeat.path);
    assert_eq!(repeat.body["series"]["count"], 2, "{}", repeat.body);

    // Graceful shutdown: the stream ends although a retry is scheduled minutes ahead.
    shutdown.send(true).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(
        matches!(ended, Ok(Ok(()))),
        "the controller did not stop after the shutdown signal"
    );
}
