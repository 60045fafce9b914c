//! `/healthz`, `/readyz`, `/leaderz` and `/metrics` on one port.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::gauge::Gauge;

use super::leader::Fence;
use super::metrics::Metrics;

/// What this process is doing now, as `/readyz` and `/leaderz` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Not yet able to work: the API server, the CRD or the Lease has not answered yet.
    Starting = 0,
    /// Reconciling, without leader election (the only controller).
    Running = 1,
    /// Holding the Lease and reconciling.
    Leader = 2,
    /// Contending for the Lease another replica holds; does not reconcile, takes over when it lapses.
    Standby = 3,
    /// The lease was lost or a shutdown began: no longer reconciling.
    Stopping = 4,
}

impl Role {
    fn from_u8(value: u8) -> Role {
        match value {
            1 => Role::Running,
            2 => Role::Leader,
            3 => Role::Standby,
            4 => Role::Stopping,
            _ => Role::Starting,
        }
    }

    /// The word `/readyz` answers with.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Running => "ready",
            Role::Leader => "leader",
            Role::Standby => "standby",
            Role::Stopping => "stopping",
        }
    }

    /// Ready for traffic and rollouts: a standby is, since it is healthy and takes over when needed.
    pub fn is_ready(self) -> bool {
        matches!(self, Role::Running | Role::Leader | Role::Standby)
    }

    /// Reconciling now: the leader, or the only controller when there is no election.
    pub fn is_active(self) -> bool {
        matches!(self, Role::Running | Role::Leader)
    }
}

/// The process's [`Role`], shared between the controller (which sets it) and the HTTP server;
/// it also drives the `bundlecopy_leader` gauge.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    role: Arc<AtomicU8>,
    leader_gauge: Gauge,
    /// A leader whose fence has closed (renew deadline passed) reports itself as a standby at
    /// once, before the controller has noticed.
    fence: Option<Fence>,
}

impl Readiness {
    /// Starts as [`Role::Starting`]; `leader_gauge` follows [`Role::is_active`].
    pub fn new(leader_gauge: Gauge) -> Self {
        Readiness {
            role: Arc::default(),
            leader_gauge,
            fence: None,
        }
    }

    /// Reports [`Role::Leader`] only while `fence` is open.
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    pub fn set(&self, role: Role) {
        self.role.store(role as u8, Ordering::SeqCst);
        self.leader_gauge.set(i64::from(role.is_active()));
    }

    pub fn role(&self) -> Role {
        match Role::from_u8(self.role.load(Ordering::SeqCst)) {
            Role::Leader if self.fence.as_ref().is_some_and(|fence| !fence.is_open()) => {
                Role::Standby
            }
            role => role,
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

pub fn router(metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/leaderz", get(leaderz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { metrics, readiness })
}

fn answer(ok: bool, role: Role) -> (StatusCode, String) {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{}\n", role.as_str()))
}

/// 200 while the process can do its job (leader, standby, or running without election).
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let role = state.readiness.role();
    answer(role.is_ready(), role)
}

/// 200 only on the process that reconciles now.
async fn leaderz(State(state): State<AppState>) -> impl IntoResponse {
    let role = state.readiness.role();
    answer(role.is_active(), role)
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    // A closed fence counts at once, even before the controller has set its role.
    state
        .readiness
        .leader_gauge
        .set(i64::from(state.readiness.role().is_active()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Serves on `listener` until `shutdown` resolves. Binding is left to the caller so that a
/// port already in use stops the program at start-up.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "serving /healthz, /readyz, /leaderz and /metrics");
    axum::serve(listener, router(metrics, readiness))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// Status code and body of a response.
    fn status_and_body(response: &str) -> (u16, &str) {
        let code = response
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        (code, body.trim_end())
    }

    fn leader_gauge(scraped: &str) -> Option<&str> {
        scraped
            .lines()
            .find_map(|line| line.strip_prefix("bundlecopy_leader "))
    }

    struct Server {
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        readiness: Readiness,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    async fn start() -> Server {
        let metrics = Arc::new(Metrics::new());
        let readiness = Readiness::new(metrics.leader.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, metrics.clone(), readiness.clone(), async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            metrics,
            readiness,
            stop,
            task,
        }
    }

    #[tokio::test]
    async fn endpoints_answer_and_the_server_stops_on_shutdown() {
        let server = start().await;
        let addr = server.addr;
        assert_eq!(status_and_body(&get(addr, "/healthz").await), (200, "ok"));
        server.metrics.reconciles.inc();
        let scraped = get(addr, "/metrics").await;
        assert!(
            scraped.contains("bundlecopy_reconciles_total 1"),
            "{scraped}"
        );
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        server.stop.send(()).unwrap();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), server.task).await;
        assert!(
            matches!(ended, Ok(Ok(Ok(())))),
            "the server stops on shutdown"
        );
    }

    /// Every role as the probes and the gauge see it: (role, /readyz, /leaderz, bundlecopy_leader).
    #[tokio::test]
    async fn readyz_leaderz_and_the_leader_gauge_follow_the_role() {
        let server = start().await;
        let addr = server.addr;
        let expected = [
            (None, (503, "starting"), (503, "starting"), "0"),
            (Some(Role::Standby), (200, "standby"), (503, "standby"), "0"),
            (Some(Role::Leader), (200, "leader"), (200, "leader"), "1"),
            (
                Some(Role::Stopping),
                (503, "stopping"),
                (503, "stopping"),
                "0",
            ),
            (Some(Role::Running), (200, "ready"), (200, "ready"), "1"),
            (
                Some(Role::Starting),
                (503, "starting"),
                (503, "starting"),
                "0",
            ),
        ];
        for (role, readyz, leaderz, gauge) in expected {
            if let Some(role) = role {
                server.readiness.set(role);
            }
            let shown = server.readiness.role();
            assert_eq!(
                status_and_body(&get(addr, "/readyz").await),
                readyz,
                "/readyz as {shown:?}"
            );
            assert_eq!(
                status_and_body(&get(addr, "/leaderz").await),
                leaderz,
                "/leaderz as {shown:?}"
            );
            let scraped = get(addr, "/metrics").await;
            assert_eq!(leader_gauge(&scraped), Some(gauge), "{shown:?}:\n{scraped}");
        }
    }

    /// At the renew deadline the fence closes: the probes and the gauge say standby at once,
    /// before the controller has set its role.
    #[tokio::test]
    async fn a_leader_whose_fence_closed_reads_as_a_standby() {
        let metrics = Arc::new(Metrics::new());
        let readiness = Readiness::new(metrics.leader.clone()).with_fence(Fence::closed());
        readiness.set(Role::Leader);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(
            listener,
            metrics,
            readiness,
            std::future::pending::<()>(),
        ));
        assert_eq!(
            status_and_body(&get(addr, "/leaderz").await),
            (503, "standby")
        );
        assert_eq!(
            status_and_body(&get(addr, "/readyz").await),
            (200, "standby")
        );
        let scraped = get(addr, "/metrics").await;
        assert_eq!(leader_gauge(&scraped), Some("0"), "{scraped}");
        task.abort();
    }

    #[test]
    fn roles_round_trip_through_their_stored_form() {
        for role in [
            Role::Starting,
            Role::Running,
            Role::Leader,
            Role::Standby,
            Role::Stopping,
        ] {
            assert_eq!(Role::from_u8(role as u8), role);
        }
        assert_eq!(Role::from_u8(200), Role::Starting);
    }
}
