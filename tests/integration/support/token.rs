//! An in-process Docker token server (the `auth.token` protocol of distribution) for the
//! `Token` registry kind.
//!
//! `GET /token?service=..&scope=..` with Basic credentials, and `POST /token` with an OAuth2 form
//! (`grant_type=password` or `grant_type=refresh_token`, as Docker Hub accepts) both return an
//! ES256 JWT granting every requested scope. The signing certificate travels in the JWT's `x5c`
//! header and is the registry's `rootcertbundle`. While it runs, a fake cloud can make it accept
//! one more username and password, or replace its refresh token (`TokenServer::accept`), so that
//! a client given no credentials gets in only with what the fake just issued (the harness's own
//! test credentials, which such a client is never given, keep working for the checks); and
//! `POST /oauth2/exchange` plays ACR's exchange of an Entra ID token for a refresh token.
//!
//! The server runs on its own thread with its own runtime, so it keeps answering while a test
//! blocks (for example on `run_cli`) or after the runtime that started it has gone.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

/// Lifetime of the issued tokens, in seconds.
pub const TOKEN_LIFETIME_SECONDS: u64 = 300;

struct TokenState {
    accepted: Mutex<Accepted>,
    /// ACR's exchange: the Entra token it takes, and the tenant it must name.
    exchange: Mutex<Option<(String, String)>>,
    service: String,
    issuer: String,
    signing_key: EcdsaKeyPair,
    signing_cert_der: Vec<u8>,
    rng: SystemRandom,
    requests: AtomicUsize,
    tokens_issued: AtomicUsize,
    requested_scopes: Mutex<Vec<String>>,
}

/// A running token server; stops when dropped.
pub struct TokenServer {
    address: SocketAddr,
    signing_cert_pem: String,
    state: Arc<TokenState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Start a token server on a free 127.0.0.1 port that accepts `username`/`password` and the
    /// fixed identity token, and signs tokens for `service` as `issuer`.
    pub fn start(username: &str, password: &str, service: &str, issuer: &str) -> TokenServer {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate the token signing key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("token signing certificate parameters");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bundlecopy test token signer");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let cert = params
            .self_signed(&key_pair)
            .expect("self-sign the token signing certificate");
        let rng = SystemRandom::new();
        let signing_key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &rng,
        )
        .expect("load the token signing key into ring");
        let state = Arc::new(TokenState {
            accepted: Mutex::new(Accepted {
                username: username.to_owned(),
                password: password.to_owned(),
                issued: None,
                identity_token: format!("bundlecopy-test-identity-token-{}", std::process::id()),
            }),
            exchange: Mutex::new(None),
            service: service.to_owned(),
            issuer: issuer.to_owned(),
            signing_key,
            signing_cert_der: cert.der().to_vec(),
            rng,
            requests: AtomicUsize::new(0),
            tokens_issued: AtomicUsize::new(0),
            requested_scopes: Mutex::new(Vec::new()),
        });

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        listener
            .set_nonblocking(true)
            .expect("make the token server socket non-blocking");
        let address = listener.local_addr().expect("token server address");
        let (shutdown, shutdown_requested) = tokio::sync::oneshot::channel::<()>();
        let serving_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("harness-token-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("token server runtime");
                runtime.block_on(serve(listener, serving_state, shutdown_requested));
            })
            .expect("start the token server thread");
        TokenServer {
            address,
            signing_cert_pem: cert.pem(),
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The realm the registry sends clients to: `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.address)
    }

    pub fn service(&self) -> &str {
        &self.state.service
    }

    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// PEM of the certificate that signs the tokens (the registry's `rootcertbundle`).
    pub fn signing_cert_pem(&self) -> &str {
        &self.signing_cert_pem
    }

    /// The refresh token (Docker's `identitytoken`) this server accepts with
    /// `grant_type=refresh_token`.
    pub fn identity_token(&self) -> String {
        self.state.accepted().identity_token
    }

    /// A handle that replaces what this server accepts, for a fake cloud to hold.
    pub fn accept(&self) -> AcceptHandle {
        AcceptHandle(self.state.clone())
    }

    /// Every HTTP request received, good or bad.
    pub fn request_count(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Tokens handed out (successful requests only).
    pub fn tokens_issued(&self) -> usize {
        self.state.tokens_issued.load(Ordering::SeqCst)
    }

    /// Every scope requested so far, in arrival order (`repository:NAME:ACTIONS`).
    pub fn requested_scopes(&self) -> Vec<String> {
        self.state
            .requested_scopes
            .lock()
            .map(|scopes| scopes.clone())
            .unwrap_or_default()
    }

    /// Sign a token for `scopes` directly, bypassing HTTP: for tests that need a token with
    /// chosen (for example, too narrow) access.
    pub fn issue_token(&self, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|scope| scope.to_string()).collect();
        make_jwt(&self.state, &scopes)
    }
}

/// What the server accepts: the harness's username and password, one more pair issued by a
/// fake cloud, one refresh token.
#[derive(Clone)]
struct Accepted {
    username: String,
    password: String,
    issued: Option<(String, String)>,
    identity_token: String,
}

impl Accepted {
    fn basic(&self, username: &str, password: &str) -> bool {
        (username == self.username && password == self.password)
            || self
                .issued
                .as_ref()
                .is_some_and(|(u, p)| u == username && p == password)
    }
}

impl TokenState {
    fn accepted(&self) -> Accepted {
        self.accepted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Replaces what a running token server accepts.
#[derive(Clone)]
pub struct AcceptHandle(Arc<TokenState>);

impl AcceptHandle {
    /// Accept this username and password (and the harness's own) from now on, and no pair
    /// issued before.
    pub fn basic(&self, username: &str, password: &str) {
        let mut accepted = self.0.accepted.lock().unwrap_or_else(|p| p.into_inner());
        accepted.issued = Some((username.to_owned(), password.to_owned()));
    }

    /// Accept only this refresh token from now on.
    pub fn refresh_token(&self, token: &str) {
        let mut accepted = self.0.accepted.lock().unwrap_or_else(|p| p.into_inner());
        accepted.identity_token = token.to_owned();
    }

    /// Serve ACR's `POST /oauth2/exchange`: for `access_token` in `tenant`, a new refresh token
    /// (which is then the only one accepted).
    pub fn exchange(&self, access_token: &str, tenant: &str) {
        *self.0.exchange.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((access_token.to_owned(), tenant.to_owned()));
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<TokenState>,
    mut shutdown_requested: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("token server: cannot use its socket: {error}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut shutdown_requested => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        handle(state.clone(), request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn unauthorized(reason: &str) -> Response<Full<Bytes>> {
    let mut response = json_response(
        StatusCode::UNAUTHORIZED,
        serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": reason}]}),
    );
    response.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Basic realm=\"bundlecopy-test-token\""),
    );
    response
}

fn form_pairs(text: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(text.as_bytes())
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect()
}

/// Scope parameters may repeat and each may hold several space-separated scopes.
fn scopes_of(pairs: &[(String, String)]) -> Vec<String> {
    pairs
        .iter()
        .filter(|(key, _)| key == "scope")
        .flat_map(|(_, value)| value.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter(|scope| !scope.is_empty())
        .collect()
}

fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

fn basic_credentials(request: &Request<Incoming>) -> Option<(String, String)> {
    let header = request
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

async fn handle(
    state: Arc<TokenState>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    if request.uri().path() == "/oauth2/exchange" && request.method() == Method::POST {
        return Ok(handle_exchange(&state, request).await);
    }
    if request.uri().path() != "/token" {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "only /token is served here"}),
        ));
    }
    let response = match *request.method() {
        Method::GET => handle_get(&state, request),
        Method::POST => handle_post(&state, request).await,
        _ => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "use GET or POST"}),
        ),
    };
    Ok(response)
}

fn handle_get(state: &TokenState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let pairs = form_pairs(request.uri().query().unwrap_or(""));
    let Some((user, password)) = basic_credentials(&request) else {
        return unauthorized("credentials required");
    };
    let accepted = state.accepted();
    if !accepted.basic(&user, &password) {
        return unauthorized("invalid username or password");
    }
    let scopes = scopes_of(&pairs);
    let token = grant(state, &scopes);
    let mut body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": TOKEN_LIFETIME_SECONDS,
    });
    if first(&pairs, "offline_token") == Some("true") {
        body["refresh_token"] = serde_json::Value::from(accepted.identity_token.clone());
    }
    json_response(StatusCode::OK, body)
}

async fn handle_post(state: &TokenState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return unauthorized("unreadable form body"),
    };
    let pairs = form_pairs(&String::from_utf8_lossy(&body));
    let accepted = state.accepted();
    let authenticated = match first(&pairs, "grant_type") {
        Some("password") => accepted.basic(
            first(&pairs, "username").unwrap_or_default(),
            first(&pairs, "password").unwrap_or_default(),
        ),
        Some("refresh_token") => {
            first(&pairs, "refresh_token") == Some(accepted.identity_token.as_str())
        }
        _ => {
            return json_response(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "unsupported_grant_type"}),
            );
        }
    };
    if !authenticated {
        return unauthorized("invalid grant");
    }
    let scopes = scopes_of(&pairs);
    let token = grant(state, &scopes);
    json_response(
        StatusCode::OK,
        serde_json::json!({
            "access_token": token,
            "refresh_token": accepted.identity_token,
            "expires_in": TOKEN_LIFETIME_SECONDS,
            "scope": scopes.join(" "),
            "token_type": "Bearer",
        }),
    )
}

/// ACR's `POST /oauth2/exchange` (`grant_type=access_token`, `service`, `tenant`,
/// `access_token`): a fresh refresh token for the one Entra token it was told to take.
async fn handle_exchange(state: &TokenState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return unauthorized("unreadable form body"),
    };
    let pairs = form_pairs(&String::from_utf8_lossy(&body));
    let expected = state
        .exchange
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let Some((access_token, tenant)) = expected else {
        return unauthorized("no exchange is served here");
    };
    let shaped = first(&pairs, "grant_type") == Some("access_token")
        && first(&pairs, "service") == Some(state.service.as_str())
        && first(&pairs, "tenant") == Some(tenant.as_str());
    if !shaped {
        return json_response(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"errors": [{"code": "BAD_REQUEST", "message": "grant_type=access_token, service and tenant are required"}]}),
        );
    }
    if first(&pairs, "access_token") != Some(access_token.as_str()) {
        return unauthorized("the access token was not issued by the fake Entra ID");
    }
    let refresh_token = format!(
        "acr-refresh-{}",
        state.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1
    );
    state
        .accepted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .identity_token = refresh_token.clone();
    json_response(
        StatusCode::OK,
        serde_json::json!({"refresh_token": refresh_token}),
    )
}

fn grant(state: &TokenState, scopes: &[String]) -> String {
    if let Ok(mut requested) = state.requested_scopes.lock() {
        requested.extend(scopes.iter().cloned());
    }
    state.tokens_issued.fetch_add(1, Ordering::SeqCst);
    make_jwt(state, scopes)
}

fn make_jwt(state: &TokenState, scopes: &[String]) -> String {
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|scope| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [STANDARD.encode(&state.signing_cert_der)],
    });
    let mut jti = [0u8; 12];
    ring::rand::SecureRandom::fill(&state.rng, &mut jti).expect("random jti");
    let claims = serde_json::json!({
        "iss": state.issuer,
        "sub": state.accepted().username,
        "aud": state.service,
        "exp": now + TOKEN_LIFETIME_SECONDS,
        "nbf": now - 10,
        "iat": now,
        "jti": URL_SAFE_NO_PAD.encode(jti),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = state
        .signing_key
        .sign(&state.rng, signing_input.as_bytes())
        .expect("sign the token");
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    )
}

/// Decode a JWT's claims without checking the signature (tests inspect what was granted).
pub fn jwt_claims(token: &str) -> BTreeMap<String, serde_json::Value> {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .expect("JWT payload is base64url");
    serde_json::from_slice(&bytes).expect("JWT payload is a JSON object")
}
