//! A small raw registry client for tests: it speaks the distribution API directly (with reqwest),
//! handles Basic and Bearer (token) challenges itself, and panics with the server's answer when
//! anything unexpected comes back. It is an independent reader and writer, not bundlecopy's own
//! registry code.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use super::sha256_digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Distribution answers 404 to OCI content unless the OCI types are accepted explicitly.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

pub struct RegistryClient {
    http: reqwest::Client,
    url_base: String,
    credentials: Option<(String, String)>,
    /// Authorization header per repository ("" for requests outside a repository).
    authorizations: Mutex<HashMap<String, HeaderValue>>,
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub scheme: String,
    pub params: HashMap<String, String>,
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Challenge> {
        let (scheme, rest) = header.trim().split_once(' ')?;
        let mut params = HashMap::new();
        let mut remaining = rest.trim();
        while !remaining.is_empty() {
            let (key, after_key) = remaining.split_once('=')?;
            let after_key = after_key.trim_start();
            let (value, after_value) = if let Some(quoted) = after_key.strip_prefix('"') {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            } else {
                let end = after_key.find(',').unwrap_or(after_key.len());
                (&after_key[..end], &after_key[end..])
            };
            params.insert(key.trim().to_ascii_lowercase(), value.to_owned());
            remaining = after_value.trim_start_matches([',', ' ']);
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }
}

impl RegistryClient {
    /// A client for `url_base` (`http(s)://host:port`), trusting only `ca_pem` for HTTPS, and
    /// authenticating with `credentials` when challenged.
    pub fn new(
        url_base: &str,
        ca_pem: Option<&str>,
        credentials: Option<(&str, &str)>,
    ) -> RegistryClient {
        bundlecopy_engine::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .no_proxy();
        if let Some(pem) = ca_pem {
            let ca = reqwest::Certificate::from_pem(pem.as_bytes()).expect("parse the test CA");
            builder = builder.tls_certs_only([ca]);
        }
        RegistryClient {
            http: builder.build().expect("build the test registry client"),
            url_base: url_base.trim_end_matches('/').to_owned(),
            credentials: credentials.map(|(user, pass)| (user.to_owned(), pass.to_owned())),
            authorizations: Mutex::new(HashMap::new()),
        }
    }

    pub fn url_base(&self) -> &str {
        &self.url_base
    }

    /// The underlying reqwest client (trusting the test CA), for hand-made requests.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn absolute(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}{}", self.url_base, path_or_url)
        }
    }

    fn cached_authorization(&self, repo: &str) -> Option<HeaderValue> {
        let cache = self.authorizations.lock().ok()?;
        cache.get(repo).or_else(|| cache.get("*")).cloned()
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        let (user, pass) = self.credentials.as_ref()?;
        let encoded = STANDARD.encode(format!("{user}:{pass}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).ok()
    }

    /// Fetch a bearer token for a challenge (Basic credentials if we have them, else anonymous).
    pub async fn fetch_token(&self, challenge: &Challenge, fallback_scope: &str) -> String {
        let realm = challenge
            .params
            .get("realm")
            .expect("bearer challenge without realm");
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(service) = challenge.params.get("service") {
            query.push(("service", service));
        }
        let scope = challenge
            .params
            .get("scope")
            .map(String::as_str)
            .unwrap_or(fallback_scope);
        if !scope.is_empty() {
            query.push(("scope", scope));
        }
        let url = url::Url::parse_with_params(realm, &query).expect("token realm is a URL");
        let mut request = self.http.get(url);
        if let Some(basic) = self.basic_header() {
            request = request.header(header::AUTHORIZATION, basic);
        }
        let response = request.send().await.expect("reach the token server");
        let status = response.status();
        let body = response.bytes().await.expect("read the token response");
        assert!(
            status.is_success(),
            "token server refused {scope:?}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        let json: serde_json::Value = serde_json::from_slice(&body).expect("token JSON");
        json.get("token")
            .or_else(|| json.get("access_token"))
            .and_then(|token| token.as_str())
            .expect("token response has a token")
            .to_owned()
    }

    /// Send a request, answering one auth challenge. `repo` keys the token cache and the
    /// fallback scope. The body is re-sent on the retry, so it must be in memory.
    pub async fn send(
        &self,
        method: Method,
        path_or_url: &str,
        repo: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> reqwest::Response {
        let url = self.absolute(path_or_url);
        let build = |authorization: Option<HeaderValue>| {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .headers(headers.clone());
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            if let Some(bytes) = &body {
                request = request.body(bytes.clone());
            }
            request
        };
        let first = build(self.cached_authorization(repo))
            .send()
            .await
            .unwrap_or_else(|error| panic!("{method} {url}: {error:?}"));
        if first.status() != StatusCode::UNAUTHORIZED {
            return first;
        }
        let Some(authorization) = self.answer_challenge(&first, repo).await else {
            return first;
        };
        build(Some(authorization))
            .send()
            .await
            .unwrap_or_else(|error| panic!("{method} {url} (authenticated): {error:?}"))
    }

    /// Work out (and cache) the Authorization header a 401 asks for; None if we cannot answer.
    async fn answer_challenge(
        &self,
        response: &reqwest::Response,
        repo: &str,
    ) -> Option<HeaderValue> {
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|value| value.to_str().ok())
            .and_then(Challenge::parse)?;
        let (key, value) = match challenge.scheme.as_str() {
            "basic" => ("*".to_owned(), self.basic_header()?),
            "bearer" => {
                let fallback_scope = if repo.is_empty() {
                    String::new()
                } else {
                    format!("repository:{repo}:pull,push")
                };
                let token = self.fetch_token(&challenge, &fallback_scope).await;
                let value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
                (repo.to_owned(), value)
            }
            _ => return None,
        };
        if let Ok(mut cache) = self.authorizations.lock() {
            cache.insert(key, value.clone());
        }
        Some(value)
    }

    /// Make sure the token cache holds push access to `repo` (before a streamed upload, whose
    /// body cannot be sent twice).
    pub async fn authorize_push(&self, repo: &str) {
        let response = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                repo,
                HeaderMap::new(),
                None,
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "upload session for {repo}"
        );
    }

    /// `GET /v2/`: the status after answering any challenge.
    pub async fn ping(&self) -> StatusCode {
        self.send(Method::GET, "/v2/", "", HeaderMap::new(), None)
            .await
            .status()
    }

    fn manifest_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        headers
    }

    /// `(bytes, Content-Type, digest)` of a manifest, or None on 404.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Option<(Vec<u8>, String, String)> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let response = self
            .send(Method::GET, &path, repo, Self::manifest_headers(), None)
            .await;
        if response.status() == StatusCode::NOT_FOUND {
            return None;
        }
        let status = response.status();
        let content_type = header_string(response.headers(), header::CONTENT_TYPE.as_str());
        let digest_header = header_string(response.headers(), "docker-content-digest");
        let bytes = response.bytes().await.expect("read manifest body").to_vec();
        assert_eq!(
            status,
            StatusCode::OK,
            "GET {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let digest = if digest_header.is_empty() {
            sha256_digest(&bytes)
        } else {
            digest_header
        };
        Some((bytes, content_type, digest))
    }

    /// `(Content-Type, digest, size)` from a manifest HEAD, or None on 404.
    pub async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Option<(String, String, u64)> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let response = self
            .send(Method::HEAD, &path, repo, Self::manifest_headers(), None)
            .await;
        if response.status() == StatusCode::NOT_FOUND {
            return None;
        }
        assert_eq!(response.status(), StatusCode::OK, "HEAD {path}");
        let headers = response.headers();
        Some((
            header_string(headers, header::CONTENT_TYPE.as_str()),
            header_string(headers, "docker-content-digest"),
            header_string(headers, header::CONTENT_LENGTH.as_str())
                .parse()
                .unwrap_or(0),
        ))
    }

    /// Size of a blob from HEAD, or None on 404. A HEAD that races the registry's commit of the
    /// same blob (an upload finishing meanwhile) can get a 500 from distribution's filesystem
    /// storage: asked again a few times before it counts.
    pub async fn blob_size(&self, repo: &str, digest: &str) -> Option<u64> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let mut response = self
            .send(Method::HEAD, &path, repo, HeaderMap::new(), None)
            .await;
        for _ in 0..5 {
            if !response.status().is_server_error() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            response = self
                .send(Method::HEAD, &path, repo, HeaderMap::new(), None)
                .await;
        }
        if response.status() == StatusCode::NOT_FOUND {
            return None;
        }
        assert_eq!(response.status(), StatusCode::OK, "HEAD {path}");
        header_string(response.headers(), header::CONTENT_LENGTH.as_str())
            .parse()
            .ok()
    }

    pub async fn head_blob(&self, repo: &str, digest: &str) -> bool {
        self.blob_size(repo, digest).await.is_some()
    }

    /// The bytes of a blob (follows redirects); panics if it is missing.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let response = self
            .send(Method::GET, &path, repo, HeaderMap::new(), None)
            .await;
        let status = response.status();
        let bytes = response.bytes().await.expect("read blob body").to_vec();
        assert_eq!(
            status,
            StatusCode::OK,
            "GET {path}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
        );
        bytes
    }

    /// Open an upload session; returns the absolute upload URL.
    async fn start_upload(&self, repo: &str) -> String {
        let path = format!("/v2/{repo}/blobs/uploads/");
        let response = self
            .send(Method::POST, &path, repo, HeaderMap::new(), None)
            .await;
        let status = response.status();
        let location = header_string(response.headers(), header::LOCATION.as_str());
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::ACCEPTED, "POST {path}: {body}");
        assert!(!location.is_empty(), "POST {path}: no Location header");
        // Distribution sends absolute URLs; other registries may send relative ones.
        self.absolute(&location)
    }

    fn with_digest(upload_url: &str, digest: &str) -> String {
        let separator = if upload_url.contains('?') { '&' } else { '?' };
        format!("{upload_url}{separator}digest={digest}")
    }

    /// Upload a blob (POST, then one monolithic PUT); returns its digest.
    pub async fn put_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let upload_url = self.start_upload(repo).await;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let url = Self::with_digest(&upload_url, &digest);
        let response = self
            .send(
                Method::PUT,
                &url,
                repo,
                headers,
                Some(Bytes::copy_from_slice(bytes)),
            )
            .await;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::CREATED, "PUT blob {digest}: {body}");
        digest
    }

    /// Upload a blob whose bytes come from a stream of known length and digest (for layers too
    /// big to hold in memory).
    pub async fn put_blob_stream(&self, repo: &str, digest: &str, size: u64, body: reqwest::Body) {
        let upload_url = self.start_upload(repo).await;
        let url = Self::with_digest(&upload_url, digest);
        let mut request = self
            .http
            .put(&url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size)
            .body(body);
        if let Some(authorization) = self.cached_authorization(repo) {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let response = request.send().await.expect("streamed blob upload");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::CREATED, "PUT blob {digest}: {text}");
    }

    /// PUT a manifest with `media_type` as Content-Type; returns the digest the registry reports
    /// (checked against the sha256 of the bytes).
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> String {
        let response = self
            .try_put_manifest(repo, reference, bytes, media_type)
            .await;
        let status = response.status();
        let digest = header_string(response.headers(), "docker-content-digest");
        let body = response.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "PUT manifest {repo}:{reference}: {body}"
        );
        let expected = sha256_digest(bytes);
        assert_eq!(
            digest, expected,
            "registry digest of {repo}:{reference} differs from sha256 of the bytes"
        );
        expected
    }

    /// PUT a manifest and return the raw response (for tests that expect a refusal).
    pub async fn try_put_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> reqwest::Response {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(media_type).expect("media type is a header value"),
        );
        self.send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            repo,
            headers,
            Some(Bytes::copy_from_slice(bytes)),
        )
        .await
    }

    pub async fn delete_manifest(&self, repo: &str, digest: &str) {
        let path = format!("/v2/{repo}/manifests/{digest}");
        let response = self
            .send(Method::DELETE, &path, repo, HeaderMap::new(), None)
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "DELETE {path}");
    }

    pub async fn delete_blob(&self, repo: &str, digest: &str) {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let response = self
            .send(Method::DELETE, &path, repo, HeaderMap::new(), None)
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "DELETE {path}");
    }

    /// Tags of a repository (empty if the repository does not exist).
    pub async fn list_tags(&self, repo: &str) -> Vec<String> {
        let path = format!("/v2/{repo}/tags/list");
        let response = self
            .send(Method::GET, &path, repo, HeaderMap::new(), None)
            .await;
        if response.status() == StatusCode::NOT_FOUND {
            return Vec::new();
        }
        let json: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.expect("tags body")).expect("tags JSON");
        let mut tags: Vec<String> = json["tags"]
            .as_array()
            .map(|tags| {
                tags.iter()
                    .filter_map(|tag| tag.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        tags.sort();
        tags
    }
}

fn header_string(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned()
}
