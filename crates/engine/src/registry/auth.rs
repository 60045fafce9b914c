//! The authentication layer of the registry client: it learns how the registry authenticates
//! (ping), picks a working credential, gets bearer tokens for the one scope this client needs and
//! attaches them, only ever to the registry's own origin. The operations above it (`manifests`,
//! `blobs`) never see a scope or a token.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode, Url};

use super::http::Endpoint;
use super::response::{error_detail, read_limited};
use super::retry::RetryPolicy;
use super::transport::Transport;
use crate::credentials::Credential;
use crate::error::CopyError;

/// What a client may do in its repository; it decides the token scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Read only (a copy's source, inspect).
    Pull,
    /// Read and write; `mount_from` names a repository of the same registry whose blobs are
    /// mounted, so the token also needs pull access there.
    Push { mount_from: Option<String> },
}

impl Access {
    /// The token scope of this access to `repository`, as token servers expect it.
    pub fn scope(&self, repository: &str) -> String {
        match self {
            Access::Pull => format!("repository:{repository}:pull"),
            Access::Push { mount_from: None } => format!("repository:{repository}:pull,push"),
            Access::Push {
                mount_from: Some(from),
            } => format!("repository:{repository}:pull,push repository:{from}:pull"),
        }
    }
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    basic: Option<HeaderValue>,
    tokens: HashMap<String, HeaderValue>,
    /// The credential candidate that last worked (refused ones are not tried again first).
    preferred: usize,
}

/// An endpoint with credentials: every request through `send` is authenticated for `scope`.
pub struct Authenticated {
    pub endpoint: Endpoint,
    candidates: Vec<Credential>,
    scope: String,
    state: Mutex<AuthState>,
}

impl Authenticated {
    pub fn new(endpoint: Endpoint, candidates: Vec<Credential>, scope: String) -> Authenticated {
        Authenticated {
            endpoint,
            candidates,
            scope,
            state: Mutex::new(AuthState::default()),
        }
    }

    pub fn credential_count(&self) -> usize {
        self.candidates.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AuthState> {
        // A poisoned lock only means another task panicked mid-update; the state is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Get ready for the first request. With credentials: ping, to choose the credential (Basic)
    /// or get the token before the first request (Bearer). Without: nothing, since the ping
    /// would only tell an anonymous challenge, which the first request's 401 tells as well (and
    /// `send` answers it); that saves a round trip on every copy from a public registry.
    pub async fn start(&self) -> Result<(), CopyError> {
        if self.candidates.is_empty() {
            return Ok(());
        }
        self.ping().await
    }

    /// GET `/v2/` to learn how the registry authenticates. For Basic authentication the
    /// credential candidates are tried in turn until one is accepted.
    async fn ping(&self) -> Result<(), CopyError> {
        let endpoint = &self.endpoint;
        let url = endpoint.url("v2/")?;
        let response = endpoint
            .send(&endpoint.policy, Method::GET, &url, HeaderMap::new(), None)
            .await?;
        match response.status() {
            s if s.is_success() => {
                self.lock().challenge = Some(Challenge::None);
                Ok(())
            }
            StatusCode::UNAUTHORIZED => {
                let challenge = challenge_of(&response).ok_or_else(|| {
                    endpoint.auth_error(
                        "the registry answered 401 without a Basic or Bearer challenge".into(),
                    )
                })?;
                self.lock().challenge = Some(challenge.clone());
                if challenge == Challenge::Basic {
                    self.choose_basic_credential(&url).await?;
                }
                Ok(())
            }
            // Some registries do not serve /v2/ itself; the first real request will tell.
            StatusCode::NOT_FOUND => Ok(()),
            // Go's TLS servers answer a plain-HTTP request with 400 "Client sent an HTTP
            // request to an HTTPS server".
            StatusCode::BAD_REQUEST if endpoint.transport == Transport::PlainHttp => {
                Err(self.https_port_error())
            }
            _ => Err(endpoint.status_error(response, "GET /v2/").await),
        }
    }

    fn https_port_error(&self) -> CopyError {
        CopyError::Tls {
            side: self.endpoint.side,
            registry: self.endpoint.name.clone(),
            detail:
                "the registry serves HTTPS, but it was contacted over plain HTTP (the default for \
                     loopback registries)"
                    .to_string(),
        }
    }

    /// The first answer of a registry that was not pinged: learn its challenge from it, and tell
    /// a 400 over plain HTTP that comes from an HTTPS port (as the ping would have) by asking
    /// `/v2/`, which no registry answers with 400.
    async fn first_answer(&self, response: &Response) -> Result<(), CopyError> {
        let endpoint = &self.endpoint;
        self.lock().challenge = Some(match response.status() {
            StatusCode::UNAUTHORIZED => match challenge_of(response) {
                Some(challenge) => challenge,
                None => return Ok(()),
            },
            _ => Challenge::None,
        });
        if response.status() == StatusCode::BAD_REQUEST
            && endpoint.transport == Transport::PlainHttp
        {
            let ping = endpoint
                .send(
                    &endpoint.policy,
                    Method::GET,
                    &endpoint.url("v2/")?,
                    HeaderMap::new(),
                    None,
                )
                .await?;
            if ping.status() == StatusCode::BAD_REQUEST {
                return Err(self.https_port_error());
            }
        }
        Ok(())
    }

    async fn choose_basic_credential(&self, ping_url: &Url) -> Result<(), CopyError> {
        let endpoint = &self.endpoint;
        let mut refused = 0;
        for credential in &self.candidates {
            let Credential::Basic { username, password } = credential else {
                continue;
            };
            let header = basic_header(username, password);
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, header.clone());
            let response = endpoint
                .send(&endpoint.policy, Method::GET, ping_url, headers, None)
                .await?;
            if response.status().is_success() {
                self.lock().basic = Some(header);
                return Ok(());
            }
            refused += 1;
        }
        Err(endpoint.auth_error(if refused == 0 {
            format!(
                "the registry requires a username and password and no credentials match {}; add an entry for it to the Docker config",
                endpoint.name
            )
        } else {
            format!("the registry refused the username and password ({refused} tried); check the credentials for {}", endpoint.name)
        }))
    }

    /// The `Authorization` value for a request to `url`: the cached bearer token or Basic header,
    /// never for another origin (a redirect target).
    pub fn authorization(&self, url: &Url) -> Option<HeaderValue> {
        if !self.endpoint.same_origin(url) {
            return None;
        }
        let state = self.lock();
        state
            .tokens
            .get(&self.scope)
            .cloned()
            .or_else(|| state.basic.clone())
    }

    /// A request with authentication: the cached Basic header or bearer token is attached (only
    /// when the URL is the registry's own origin); a 401 with a Bearer challenge fetches a token
    /// and sends the request once more. Transient failures are retried as `policy` says.
    pub async fn send(
        &self,
        policy: &RetryPolicy,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response, CopyError> {
        let endpoint = &self.endpoint;
        let own_origin = endpoint.same_origin(url);
        if own_origin {
            self.ensure_token().await?;
        }
        let mut refreshed = false;
        loop {
            let mut request_headers = headers.clone();
            if let Some(value) = self.authorization(url) {
                request_headers.insert(header::AUTHORIZATION, value);
            }
            let response = endpoint
                .send(policy, method.clone(), url, request_headers, body.clone())
                .await?;
            if own_origin && self.lock().challenge.is_none() {
                self.first_answer(&response).await?;
            }
            if response.status() != StatusCode::UNAUTHORIZED || !own_origin || refreshed {
                if response.status() == StatusCode::UNAUTHORIZED && own_origin {
                    return Err(self.denied(response).await);
                }
                return Ok(response);
            }
            refreshed = true;
            match challenge_of(&response) {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope: asked,
                }) => {
                    let wanted = merge_scopes(&self.scope, asked.as_deref());
                    let token = self
                        .fetch_token(&realm, service.as_deref(), &wanted)
                        .await?;
                    self.lock().tokens.insert(self.scope.clone(), token);
                }
                Some(Challenge::Basic) if self.lock().basic.is_none() => {
                    let ping = endpoint.url("v2/")?;
                    self.choose_basic_credential(&ping).await?;
                }
                _ => return Err(self.denied(response).await),
            }
        }
    }

    async fn denied(&self, response: Response) -> CopyError {
        let detail = error_detail(response).await;
        let endpoint = &self.endpoint;
        endpoint.auth_error(if self.candidates.is_empty() {
            format!(
                "access denied ({detail}) and no credentials match {}",
                endpoint.name
            )
        } else {
            format!(
                "access denied with the configured credentials ({detail}) for {}",
                self.scope
            )
        })
    }

    /// With a Bearer challenge known from the ping, get the scope's token before the first
    /// request instead of after its 401: one request per operation, not two.
    async fn ensure_token(&self) -> Result<(), CopyError> {
        let (realm, service) = {
            let state = self.lock();
            match &state.challenge {
                Some(Challenge::Bearer { realm, service, .. })
                    if !state.tokens.contains_key(&self.scope) =>
                {
                    (realm.clone(), service.clone())
                }
                _ => return Ok(()),
            }
        };
        let token = self
            .fetch_token(&realm, service.as_deref(), &self.scope)
            .await?;
        self.lock().tokens.insert(self.scope.clone(), token);
        Ok(())
    }

    /// A bearer token for `scope` from the token server at `realm`: each matching credential in
    /// turn (the one that last worked first), or anonymously when none matches.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<HeaderValue, CopyError> {
        let server = TokenServer::new(realm, service, scope).ok_or_else(|| {
            self.endpoint.auth_error(format!(
                "the registry's token realm {realm:?} is not an http(s) URL"
            ))
        })?;
        let preferred = self.lock().preferred;
        let count = self.candidates.len();
        let mut refused: Vec<String> = Vec::new();
        for index in (0..count).map(|i| (i + preferred) % count) {
            let exchanged;
            let credential = match &self.candidates[index] {
                // An Entra ID token is first exchanged for an ACR refresh token.
                Credential::EntraToken { token, tenant } => {
                    let at = crate::cloud::Exchange {
                        registry: &self.endpoint.name,
                        realm: &server.realm,
                        service,
                    };
                    match crate::cloud::acr_refresh_token(&self.endpoint.http, &at, token, tenant)
                        .await
                    {
                        Ok(refresh_token) => {
                            exchanged = Credential::IdentityToken(refresh_token);
                            &exchanged
                        }
                        Err(failure) if failure.transient => {
                            return Err(self.endpoint.registry_error(None, failure.detail));
                        }
                        Err(failure) => {
                            refused.push(format!("Azure Entra ID token: {}", failure.detail));
                            continue;
                        }
                    }
                }
                other => other,
            };
            let Some(request) = server.request(&self.endpoint.http, credential) else {
                // A registry token is the bearer token itself.
                self.lock().preferred = index;
                return credential
                    .bearer_token()
                    .and_then(bearer_header)
                    .ok_or_else(|| {
                        self.endpoint
                            .auth_error("the registry token is not a valid header value".into())
                    });
            };
            match self.token_request(request).await? {
                Some(token) => {
                    self.lock().preferred = index;
                    return Ok(token);
                }
                None => refused.push(credential.kind().to_string()),
            }
        }
        if count > 0 {
            return Err(self.endpoint.auth_error(format!(
                "the token server refused the credentials for {} ({}); check them",
                self.endpoint.name,
                refused.join(", ")
            )));
        }
        let anonymous = self.endpoint.http.get(server.get_url.clone());
        match self.token_request(anonymous).await? {
            Some(token) => Ok(token),
            None => Err(self.endpoint.auth_error(format!(
                "the registry requires authentication for {scope} and no credentials match {}; add an entry for it to the Docker config",
                self.endpoint.name
            ))),
        }
    }

    /// `Some(token)` when granted, `None` when the credentials were refused.
    async fn token_request(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<HeaderValue>, CopyError> {
        let response = request
            .send()
            .await
            .map_err(|e| self.endpoint.classify(&e))?;
        if let Some(refusal) = self.endpoint.proxy_refusal(&response) {
            return Err(refusal);
        }
        let status = response.status();
        if matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST
        ) {
            return Ok(None);
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(self.endpoint.rate_limited(&response));
        }
        if !status.is_success() {
            return Err(self.endpoint.registry_error(
                Some(status.as_u16()),
                format!("token server answered {status}"),
            ));
        }
        let body = read_limited(response, 1024 * 1024).await.map_err(|e| {
            self.endpoint
                .registry_error(None, format!("reading the token failed: {e}"))
        })?;
        let token = serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(TokenResponse::into_token)
            .ok_or_else(|| {
                self.endpoint.registry_error(
                    Some(status.as_u16()),
                    "the token server's answer holds no token".into(),
                )
            })?;
        bearer_header(&token).map(Some).ok_or_else(|| {
            self.endpoint.registry_error(
                None,
                "the token server returned a token that is not a valid header value".into(),
            )
        })
    }
}

/// Where and how to ask for a token: a GET with the scopes in the query (Basic credentials,
/// anonymous), or an OAuth2 refresh-token POST (identity tokens).
struct TokenServer<'a> {
    realm: Url,
    get_url: Url,
    service: Option<&'a str>,
    scope: &'a str,
}

impl<'a> TokenServer<'a> {
    fn new(realm: &str, service: Option<&'a str>, scope: &'a str) -> Option<TokenServer<'a>> {
        let realm = Url::parse(realm)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))?;
        let mut get_url = realm.clone();
        {
            let mut query = get_url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            for s in scope.split(' ').filter(|s| !s.is_empty()) {
                query.append_pair("scope", s);
            }
        }
        Some(TokenServer {
            realm,
            get_url,
            service,
            scope,
        })
    }

    /// The token request for a Basic credential or an identity token; `None` for a registry
    /// token, which needs none.
    fn request(
        &self,
        http: &reqwest::Client,
        credential: &Credential,
    ) -> Option<reqwest::RequestBuilder> {
        Some(match credential {
            Credential::IdentityToken(token) => {
                let mut form: Vec<(&str, &str)> = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token),
                    ("client_id", "bundlecopy"),
                ];
                if let Some(service) = self.service {
                    form.push(("service", service));
                }
                // OAuth2 takes one space-separated scope parameter.
                form.push(("scope", self.scope));
                http.post(self.realm.clone())
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form_encode(&form))
            }
            Credential::Basic { username, password } => http
                .get(self.get_url.clone())
                .basic_auth(username, Some(password)),
            Credential::RegistryToken(_) | Credential::EntraToken { .. } => return None,
        })
    }
}

fn challenge_of(response: &Response) -> Option<Challenge> {
    response
        .headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(parse_challenge)
        // Prefer Bearer when a registry offers both.
        .max_by_key(|c| matches!(c, Challenge::Bearer { .. }))
}

/// Scopes we need plus the one the registry named, without duplicates.
fn merge_scopes(ours: &str, asked: Option<&str>) -> String {
    let mut scopes: Vec<&str> = ours.split(' ').filter(|s| !s.is_empty()).collect();
    if let Some(asked) = asked {
        for s in asked.split(' ').filter(|s| !s.is_empty()) {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
    }
    scopes.join(" ")
}

fn basic_header(username: &str, password: &str) -> HeaderValue {
    use base64::Engine as _;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

fn bearer_header(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// What a registry asked for in its `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// No authentication needed (the registry answered `/v2/` with 200).
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        /// The scope the registry said the refused request needs, if it said.
        scope: Option<String>,
    },
}

/// Parse a `WWW-Authenticate` header value (`Bearer realm="...",service="...",scope="..."` or
/// `Basic realm="..."`). Unknown schemes give `None`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.split_once(char::is_whitespace) {
        Some((scheme, rest)) => (scheme, rest),
        None => (header, ""),
    };
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let realm = params.get("realm")?.clone();
    if realm.is_empty() {
        return None;
    }
    Some(Challenge::Bearer {
        realm,
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    })
}

/// `key="value", key2=value2` → map (keys lowercased; quoted values may contain commas and `\"`).
fn parse_params(input: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    let mut chars = input.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => break,
                        other => value.push(other),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        let key = key.trim().to_ascii_lowercase();
        if !key.is_empty() {
            params.insert(key, value.trim().to_string());
        }
        if chars.peek().is_none() {
            break;
        }
    }
    params
}

/// The token a token server returned (`token`, or the OAuth2 `access_token`).
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
}

impl TokenResponse {
    pub fn into_token(self) -> Option<String> {
        self.token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_the_access() {
        assert_eq!(Access::Pull.scope("a/b"), "repository:a/b:pull");
        assert_eq!(
            Access::Push { mount_from: None }.scope("a/b"),
            "repository:a/b:pull,push"
        );
        assert_eq!(
            Access::Push {
                mount_from: Some("c".into())
            }
            .scope("a/b"),
            "repository:a/b:pull,push repository:c:pull"
        );
    }

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/ubuntu:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=http://127.0.0.1:1/token, service="a \"b\"""#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: Some("a \"b\"".into()),
                scope: None
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(""), None);
        assert_eq!(
            parse_challenge("Bearer realm=\"unterminated"),
            Some(Challenge::Bearer {
                realm: "unterminated".into(),
                service: None,
                scope: None
            })
        );
    }

    #[test]
    fn token_response_prefers_token() {
        let t: TokenResponse = serde_json::from_str(r#"{"token":"a","access_token":"b"}"#).unwrap();
        assert_eq!(t.into_token().as_deref(), Some("a"));
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"b"}"#).unwrap();
        assert_eq!(t.into_token().as_deref(), Some("b"));
        let t: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert_eq!(t.into_token(), None);
    }

    #[test]
    fn scopes_merge_without_duplicates() {
        assert_eq!(
            merge_scopes("repository:a:pull", Some("repository:a:pull")),
            "repository:a:pull"
        );
        assert_eq!(
            merge_scopes(
                "repository:a:pull,push repository:b:pull",
                Some("repository:c:pull")
            ),
            "repository:a:pull,push repository:b:pull repository:c:pull"
        );
    }

    #[test]
    fn auth_headers_are_sensitive() {
        assert!(basic_header("u", "p").is_sensitive());
        assert!(bearer_header("t").unwrap().is_sensitive());
        assert!(bearer_header("bad\ntoken").is_none());
    }
}
