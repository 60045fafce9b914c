//! A TCP link that can go silent: a plain byte relay between a client and a server on loopback
//! that, while frozen, keeps every connection open but delivers nothing in either direction —
//! what a client sees when a network drops its packets without a reset. New connections are
//! accepted and go silent too.
//!
//! What a client sends while frozen is read (so that its arrival time can be logged), then
//! dropped. When the freeze ends, every connection that lived through it is closed: the bytes
//! lost in between have broken its stream. Connections made afterwards relay normally.
//!
//! For HTTP/1.1 clients the relay logs the request line of every chunk that starts one, with its
//! arrival time, so a test can tell which requests a client still sent while cut off.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A request line as the client sent it through the link.
#[derive(Debug, Clone)]
pub struct SentRequest {
    pub at: Instant,
    /// For example `PATCH /apis/.../status HTTP/1.1`.
    pub line: String,
    /// Sent while the link was frozen (so it never arrived).
    pub dropped: bool,
}

impl SentRequest {
    /// A request that changes something (not GET or HEAD).
    pub fn is_write(&self) -> bool {
        !(self.line.starts_with("GET ") || self.line.starts_with("HEAD "))
    }
}

pub struct FrozenLink {
    address: std::net::SocketAddr,
    frozen: watch::Sender<bool>,
    sent: Arc<Mutex<Vec<SentRequest>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl FrozenLink {
    /// Relays connections on a new loopback port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> FrozenLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (frozen, _) = watch::channel(false);
        let sent = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_string();
        let accepting = {
            let frozen = frozen.clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    tokio::spawn(relay(client, server, frozen.subscribe(), sent.clone()));
                }
            })
        };
        FrozenLink {
            address,
            frozen,
            sent,
            accepting,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// From now on nothing gets through. Returns when the freeze began.
    pub fn freeze(&self) -> Instant {
        self.frozen.send_replace(true);
        Instant::now()
    }

    /// Connections that lived through the freeze are closed; new ones relay again.
    pub fn unfreeze(&self) {
        self.frozen.send_replace(false);
    }

    /// Every request line the client sent, in order.
    pub fn sent(&self) -> Vec<SentRequest> {
        self.sent.lock().unwrap().clone()
    }
}

impl Drop for FrozenLink {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Relays both ways until either side closes, or the freeze this connection lived through ends.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    frozen: watch::Receiver<bool>,
    sent: Arc<Mutex<Vec<SentRequest>>>,
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Whichever direction ends first ends the other: dropping the halves closes both sockets.
    tokio::select! {
        () = pump(client_read, server_write, frozen.clone(), Some(sent)) => {}
        () = pump(server_read, client_write, frozen, None) => {}
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
    log: Option<Arc<Mutex<Vec<SentRequest>>>>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut lived_through_a_freeze = *frozen.borrow();
    loop {
        tokio::select! {
            read = from.read(&mut buffer) => {
                let count = match read {
                    Ok(0) | Err(_) => return,
                    Ok(count) => count,
                };
                let is_frozen = *frozen.borrow();
                if let Some(log) = &log {
                    record_request_line(log, &buffer[..count], is_frozen);
                }
                if is_frozen {
                    lived_through_a_freeze = true;
                    continue;
                }
                if lived_through_a_freeze || to.write_all(&buffer[..count]).await.is_err() {
                    return;
                }
            }
            changed = frozen.changed() => {
                if changed.is_err() {
                    return;
                }
                if *frozen.borrow() {
                    lived_through_a_freeze = true;
                } else if lived_through_a_freeze {
                    return;
                }
            }
        }
    }
}

fn record_request_line(log: &Mutex<Vec<SentRequest>>, chunk: &[u8], dropped: bool) {
    const METHODS: [&str; 6] = ["GET ", "HEAD ", "POST ", "PUT ", "PATCH ", "DELETE "];
    let line_end = chunk
        .iter()
        .position(|&byte| byte == b'\r')
        .unwrap_or(chunk.len());
    let Ok(line) = std::str::from_utf8(&chunk[..line_end]) else {
        return;
    };
    if METHODS.iter().any(|method| line.starts_with(method)) && line.ends_with("HTTP/1.1") {
        log.lock().unwrap().push(SentRequest {
            at: Instant::now(),
            line: line.to_string(),
            dropped,
        });
    }
}
