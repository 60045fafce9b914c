//! The controller loop itself (`controller_stream`) against a mocked API server that streams
//! watch events: the initial lists and watches, a reconcile per BundleCopy, no reconcile for our
//! own status write (generation predicate), and a reconcile when a Secret the BundleCopy names
//! changes, none for other Secrets. `cargo test --test integration controller::watch`

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower_test::mock::Handle;

use bundlecopy::operator::context::Context;
use bundlecopy::operator::metrics::Metrics;
use bundlecopy::operator::watch::controller_stream;
use bundlecopy_engine::EngineSettings;

use crate::support::registry::free_port;

const NAMESPACE: &str = "team-a";

type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>;
type TestBody = StreamBody<FrameStream>;

fn full(status: StatusCode, body: &Value) -> Response<TestBody> {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap());
    let stream: FrameStream =
        Box::pin(futures_util::stream::once(
            async move { Ok(Frame::data(bytes)) },
        ));
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(stream))
        .unwrap()
}

/// A watch response that stays open; events are sent through the returned sender.
fn streaming() -> (Response<TestBody>, mpsc::UnboundedSender<Value>) {
    let (sender, receiver) = mpsc::unbounded_channel::<Value>();
    let stream: FrameStream = Box::pin(futures_util::stream::unfold(
        receiver,
        |mut receiver| async move {
            let event = receiver.recv().await?;
            let mut line = serde_json::to_vec(&event).unwrap();
            line.push(b'\n');
            Some((Ok(Frame::data(Bytes::from(line))), receiver))
        },
    ));
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(stream))
        .unwrap();
    (response, sender)
}

/// A request that is not part of the watch machinery: what a reconcile sent.
#[derive(Debug)]
struct Call {
    method: Method,
    path: String,
    body: Value,
}

/// Serves lists and watches on its own and hands every other request to the test.
struct FakeApiServer {
    handle: Handle<Request<Body>, Response<TestBody>>,
    bundle_copies: Vec<Value>,
    bundle_watch: Option<mpsc::UnboundedSender<Value>>,
    secret_watch: Option<mpsc::UnboundedSender<Value>>,
    /// Kept open: dropping a sender would end its watch.
    closed_watches: Vec<mpsc::UnboundedSender<Value>>,
}

impl FakeApiServer {
    /// The next reconcile request, answered by `answer`; lists and watches are served meanwhile.
    async fn next_call(
        &mut self,
        wait: Duration,
    ) -> Option<(Call, tower_test::mock::SendResponse<Response<TestBody>>)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.handle.next_request())
                .await
                .ok()??;
            let (request, respond) = next;
            let (parts, body) = request.into_parts();
            let path = parts.uri.path().to_string();
            let query = parts.uri.query().unwrap_or_default().to_string();
            let watching = query.contains("watch=true") || query.contains("watch=1");
            let bundle_copies =
                format!("/apis/bundlecopy.dev/v1alpha1/namespaces/{NAMESPACE}/bundlecopies");
            let secrets = format!("/api/v1/namespaces/{NAMESPACE}/secrets");
            if parts.method == Method::GET && path == bundle_copies {
                if watching {
                    let (response, sender) = streaming();
                    respond.send_response(response);
                    if let Some(old) = self.bundle_watch.replace(sender) {
                        self.closed_watches.push(old);
                    }
                } else {
                    let list = json!({"apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopyList",
                                      "metadata": {"resourceVersion": "10"}, "items": self.bundle_copies});
                    respond.send_response(full(StatusCode::OK, &list));
                }
                continue;
            }
            if parts.method == Method::GET && path == secrets {
                if watching {
                    let (response, sender) = streaming();
                    respond.send_response(response);
                    if let Some(old) = self.secret_watch.replace(sender) {
                        self.closed_watches.push(old);
                    }
                } else {
                    let list = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                                      "metadata": {"resourceVersion": "10"}, "items": []});
                    respond.send_response(full(StatusCode::OK, &list));
                }
                continue;
            }
            let bytes = body.collect_bytes().await.unwrap();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Some((
                Call {
                    method: parts.method,
                    path,
                    body,
                },
                respond,
            ));
        }
    }

    async fn expect_call(
        &mut self,
        method: Method,
        path_end: &str,
    ) -> (Call, tower_test::mock::SendResponse<Response<TestBody>>) {
        let (call, respond) = self
            .next_call(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("expected {method} …{path_end}, got nothing"));
        assert!(
            call.method == method && call.path.ends_with(path_end),
            "expected {method} …{path_end}, got {} {} {}",
            call.method,
            call.path,
            call.body
        );
        (call, respond)
    }

    async fn expect_no_call(&mut self, wait: Duration) {
        if let Some((call, _)) = self.next_call(wait).await {
            panic!("unexpected {} {} {}", call.method, call.path, call.body);
        }
    }
}

fn bundle_copy(
    generation: i64,
    resource_version: &str,
    registry: &str,
    status: Option<&Value>,
) -> Value {
    let mut object = json!({
        "apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopy",
        "metadata": {"name": "hello", "namespace": NAMESPACE, "uid": "0b0e0000-0000-4000-8000-000000000002",
                     "generation": generation, "resourceVersion": resource_version},
        "spec": {
            "source": {"reference": format!("{registry}/hello:v1"), "credentials": [{"name": "pull"}]},
            "destination": {"reference": format!("{registry}/mirror")},
        },
    });
    if let Some(status) = status {
        object["status"] = status.clone();
    }
    object
}

fn secret_metadata(name: &str, resource_version: &str) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
           "metadata": {"name": name, "namespace": NAMESPACE, "resourceVersion": resource_version}})
}

fn not_found(name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": format!("secrets \"{name}\" not found")})
}

#[tokio::test]
async fn controller_loop_reconciles_on_spec_and_secret_changes_only() {
    bundlecopy_engine::install_crypto_provider();
    // A registry address where nothing listens: copies fail fast with Unreachable.
    let registry = format!("127.0.0.1:{}", free_port());
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<TestBody>>();
    let client = Client::new(service, NAMESPACE);
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
        client.clone(),
        Some(NAMESPACE.to_string()),
        context,
        2,
        shutdown_future,
    );
    let mut driver = tokio::spawn(controller.for_each(|()| async {}));
    let mut api = FakeApiServer {
        handle,
        bundle_copies: vec![bundle_copy(1, "11", &registry, None)],
        bundle_watch: None,
        secret_watch: None,
        closed_watches: Vec::new(),
    };

    // The listed BundleCopy is reconciled: its Secret is missing.
    let (_, respond) = api.expect_call(Method::GET, "/secrets/pull").await;
    respond.send_response(full(StatusCode::NOT_FOUND, &not_found("pull")));
    let (patch, respond) = api
        .expect_call(Method::PATCH, "/bundlecopies/hello/status")
        .await;
    let status = patch.body["status"].clone();
    assert_eq!(status["conditions"][0]["reason"], "SecretNotFound");
    respond.send_response(full(
        StatusCode::OK,
        &bundle_copy(1, "12", &registry, Some(&status)),
    ));
    let (_, respond) = api.expect_call(Method::POST, "/events").await;
    respond.send_response(full(StatusCode::CREATED, &json!({})));

    // Our own status write comes back as a watch event: same generation, no reconcile. Nor
    // does a Secret the BundleCopy does not name trigger one.
    api.bundle_watch
        .as_ref()
        .expect("the controller watches BundleCopies")
        .send(json!({"type": "MODIFIED", "object": bundle_copy(1, "12", &registry, Some(&status))}))
        .unwrap();
    api.secret_watch
        .as_ref()
        .expect("the controller watches Secrets")
        .send(json!({"type": "ADDED", "object": secret_metadata("unrelated", "13")}))
        .unwrap();
    api.expect_no_call(Duration::from_secs(2)).await;

    // The named Secret appears: the BundleCopy is reconciled at once, reads it and copies.
    api.secret_watch
        .as_ref()
        .unwrap()
        .send(json!({"type": "ADDED", "object": secret_metadata("pull", "14")}))
        .unwrap();
    let (_, respond) = api.expect_call(Method::GET, "/secrets/pull").await;
    let config = json!({"auths": {registry.clone(): {"auth": STANDARD.encode("u:p")}}}).to_string();
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": "pull", "namespace": NAMESPACE, "resourceVersion": "14"},
                        "type": "kubernetes.io/dockerconfigjson",
                        "data": {".dockerconfigjson": STANDARD.encode(config)}});
    respond.send_response(full(StatusCode::OK, &secret));
    let (patch, respond) = api
        .expect_call(Method::PATCH, "/bundlecopies/hello/status")
        .await;
    let copying = patch.body["status"].clone();
    respond.send_response(full(
        StatusCode::OK,
        &bundle_copy(1, "15", &registry, Some(&copying)),
    ));
    let (_, respond) = api.expect_call(Method::POST, "/events").await;
    respond.send_response(full(StatusCode::CREATED, &json!({})));
    let (patch, respond) = api
        .expect_call(Method::PATCH, "/bundlecopies/hello/status")
        .await;
    let failed = patch.body["status"].clone();
    let ready = failed["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["reason"], "Unreachable", "{failed}");
    respond.send_response(full(
        StatusCode::OK,
        &bundle_copy(1, "16", &registry, Some(&failed)),
    ));
    let (_, respond) = api.expect_call(Method::POST, "/events").await;
    respond.send_response(full(StatusCode::CREATED, &json!({})));

    // A spec change (new generation) is reconciled again.
    api.bundle_watch
        .as_ref()
        .unwrap()
        .send(json!({"type": "MODIFIED", "object": bundle_copy(2, "17", &registry, Some(&failed))}))
        .unwrap();
    let (_, respond) = api.expect_call(Method::GET, "/secrets/pull").await;
    respond.send_response(full(StatusCode::NOT_FOUND, &not_found("pull")));
    let (patch, respond) = api
        .expect_call(Method::PATCH, "/bundlecopies/hello/status")
        .await;
    assert_eq!(patch.body["status"]["observedGeneration"], 2);
    respond.send_response(full(
        StatusCode::OK,
        &bundle_copy(2, "18", &registry, Some(&patch.body["status"])),
    ));
    // The same failure as at first: the Recorder counts it in the first Event's series.
    let (repeat, respond) = api.expect_call(Method::PATCH, "").await;
    assert!(repeat.path.contains("/events/hello."), "{}", repeat.path);
    assert_eq!(repeat.body["series"]["count"], 2);
    respond.send_response(full(StatusCode::OK, &repeat.body));

    // Graceful shutdown: the stream ends although a retry is scheduled minutes ahead.
    shutdown.send(true).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            tokio::select! {
                result = &mut driver => break result,
                // Keep serving: the watches may be re-established while shutting down.
                _ = api.next_call(Duration::from_millis(100)) => {}
            }
        }
    })
    .await;
    assert!(
        matches!(ended, Ok(Ok(()))),
        "the controller did not stop after the shutdown signal"
    );
}
