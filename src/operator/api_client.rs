//! The controller's clients for the Kubernetes API server, with two guarantees the plain kube
//! client does not give:
//!
//! - **Every request ends in bounded time.** A request that is not a watch must be answered —
//!   headers and whole body — within `request_timeout`; a network that silently drops packets
//!   otherwise leaves it hanging for as long as TCP retransmits. Watches are bounded by the
//!   server's `timeoutSeconds` and kube-runtime's idle timeout, and are restarted by the watcher.
//! - **Only a leader writes.** Every write (POST, PUT, PATCH, DELETE) is refused before it is sent
//!   unless the leader [`Fence`] is open, so a replica past its renew deadline cannot write a
//!   status or an Event, whatever its reconciles are doing. The Lease client has no fence: it is
//!   how leadership is won and renewed.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use kube::client::{Body, ClientBuilder};
use kube::{Client, Config};
use tokio::time::{Instant, Sleep};

use super::leader::Fence;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Refused before sending: this replica does not hold the Lease (or its renew deadline passed).
#[derive(Debug, thiserror::Error)]
#[error(
    "not sent: this replica is not the leader (its Lease renew deadline passed or it stepped down)"
)]
pub struct NotLeader;

/// The API server did not answer within the request timeout.
#[derive(Debug, thiserror::Error)]
#[error("the API server did not answer within {0:?}")]
pub struct TimedOut(Duration);

/// A client whose requests are bounded by `request_timeout`, and whose writes need `fence` open
/// (`None`: no fence, for the Lease).
pub fn build(
    config: Config,
    request_timeout: Duration,
    fence: Option<Fence>,
) -> kube::Result<Client> {
    let layer = GuardLayer {
        request_timeout,
        fence,
    };
    Ok(ClientBuilder::try_from(config)?.with_layer(&layer).build())
}

#[derive(Clone)]
struct GuardLayer {
    request_timeout: Duration,
    fence: Option<Fence>,
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            request_timeout: self.request_timeout,
            fence: self.fence.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    request_timeout: Duration,
    fence: Option<Fence>,
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn is_watch<B>(request: &Request<B>) -> bool {
    request.uri().query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    })
}

impl<S, B> tower::Service<Request<Body>> for Guard<S>
where
    S: tower::Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<BoundedBody<B>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // Checked as late as the client allows: right before the request goes to the connection.
        if is_write(request.method()) && self.fence.as_ref().is_some_and(|fence| !fence.is_open()) {
            return Box::pin(std::future::ready(Err(NotLeader.into())));
        }
        let deadline = (!is_watch(&request)).then(|| Instant::now() + self.request_timeout);
        let timeout = self.request_timeout;
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, response)
                    .await
                    .map_err(|_| TimedOut(timeout))?,
                None => response.await,
            }
            .map_err(Into::into)?;
            Ok(response.map(|body| BoundedBody {
                body: Box::pin(body),
                deadline: deadline.map(|at| (Box::pin(tokio::time::sleep_until(at)), timeout)),
            }))
        })
    }
}

/// A response body that fails once the request's deadline passes (none for watches).
pub struct BoundedBody<B> {
    body: Pin<Box<B>>,
    deadline: Option<(Pin<Box<Sleep>>, Duration)>,
}

impl<B> HttpBody for BoundedBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some((sleep, timeout)) = self.deadline.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            let timeout = *timeout;
            return Poll::Ready(Some(Err(TimedOut(timeout).into())));
        }
        self.body.as_mut().poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that reads requests and answers `GET /fast` at once, and nothing else ever.
    async fn half_silent_server() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0; 4096];
                    let Ok(read) = stream.read(&mut buffer).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buffer[..read]).to_string();
                    let line = head.lines().next().unwrap_or_default().to_string();
                    let _ = seen.send(line.clone());
                    if line.starts_with("GET /fast") {
                        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Success"}"#;
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(answer.as_bytes()).await;
                    } else if line.starts_with("GET /slow-body") {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{")
                            .await;
                    }
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                });
            }
        });
        (url, requests)
    }

    fn client(url: &str, fence: Option<Fence>) -> Client {
        let config = Config::new(url.parse().unwrap());
        build(config, Duration::from_millis(300), fence).unwrap()
    }

    async fn send(client: &Client, method: Method, path: &str) -> Result<StatusCode, String> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Vec::new())
            .unwrap();
        match client.send(request.map(Body::from)).await {
            Ok(response) => {
                let status = response.status();
                // Read the body to the end, as kube does.
                http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .map_err(|error| error.to_string())?;
                Ok(status)
            }
            Err(error) => Err(error.to_string()),
        }
    }

    #[tokio::test]
    async fn requests_that_hang_end_at_the_request_timeout() {
        let (url, _) = half_silent_server().await;
        let client = client(&url, None);
        assert_eq!(
            send(&client, Method::GET, "/fast").await,
            Ok(StatusCode::OK)
        );
        for path in ["/hang", "/slow-body"] {
            let started = std::time::Instant::now();
            let error = send(&client, Method::GET, path).await.unwrap_err();
            assert!(error.contains("did not answer within"), "{path}: {error}");
            assert!(started.elapsed() < Duration::from_secs(5), "{path}");
        }
    }

    #[tokio::test]
    async fn watches_are_not_cut_by_the_request_timeout() {
        let (url, _) = half_silent_server().await;
        let client = client(&url, None);
        let watch = send(&client, Method::GET, "/hang?watch=true&timeoutSeconds=290");
        let waited = tokio::time::timeout(Duration::from_secs(1), watch).await;
        assert!(waited.is_err(), "a quiet watch stays open: {waited:?}");
    }

    #[tokio::test]
    async fn writes_need_an_open_fence_and_reads_do_not() {
        let (url, mut seen) = half_silent_server().await;
        let fence = Fence::closed();
        let client = client(&url, Some(fence.clone()));
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let error = send(&client, method.clone(), "/write").await.unwrap_err();
            assert!(error.contains("not the leader"), "{method}: {error}");
        }
        assert_eq!(
            send(&client, Method::GET, "/fast").await,
            Ok(StatusCode::OK)
        );
        assert_eq!(seen.recv().await.unwrap(), "GET /fast HTTP/1.1");
        assert!(
            seen.try_recv().is_err(),
            "no refused write reached the server"
        );

        // Open (without election): writes go out (and time out here, unanswered).
        let client = self::client(&url, Some(Fence::always_open()));
        let error = send(&client, Method::PATCH, "/write").await.unwrap_err();
        assert!(error.contains("did not answer"), "{error}");
        assert_eq!(seen.recv().await.unwrap(), "PATCH /write HTTP/1.1");
    }
}
