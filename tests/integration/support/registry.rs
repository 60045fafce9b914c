//! Real registries: Debian's `docker-registry` (CNCF distribution 2.8) as a child process on a free
//! 127.0.0.1 port, with its storage, config, certificates and log in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::client::RegistryClient;
use super::process::{kill_and_reap, spawn_tied_to_test_process};
use super::token::TokenServer;

pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
pub const TEST_USERNAME: &str = "testuser";
pub const TEST_PASSWORD: &str = "testpass-Secret42";
pub const TOKEN_SERVICE: &str = "bundlecopy-test-registry";
pub const TOKEN_ISSUER: &str = "bundlecopy-test-issuer";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
const PORT_ATTEMPTS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryKind {
    /// HTTP, no auth.
    Plain,
    /// HTTPS with a leaf certificate from the throw-away test CA.
    Tls,
    /// HTTPS plus htpasswd Basic auth.
    TlsBasicAuth,
    /// HTTP plus bearer tokens from an in-process token server.
    Token,
}

impl RegistryKind {
    pub const ALL: [RegistryKind; 4] = [
        RegistryKind::Plain,
        RegistryKind::Tls,
        RegistryKind::TlsBasicAuth,
        RegistryKind::Token,
    ];

    pub fn uses_tls(self) -> bool {
        matches!(self, RegistryKind::Tls | RegistryKind::TlsBasicAuth)
    }

    pub fn requires_auth(self) -> bool {
        matches!(self, RegistryKind::TlsBasicAuth | RegistryKind::Token)
    }
}

/// The throw-away CA and one leaf for `localhost` + `127.0.0.1`, shared by every TLS registry of
/// the test process. (rustls rejects a CA certificate used as the server certificate, hence two.)
pub struct TestCa {
    pub ca_pem: String,
    pub leaf_cert_pem: String,
    pub leaf_key_pem: String,
}

pub fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let ca_key = rcgen::KeyPair::generate().expect("generate the CA key");
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bundlecopy test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        ca_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        ca_params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-sign the CA");

        let leaf_key = rcgen::KeyPair::generate().expect("generate the server key");
        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server certificate parameters");
        leaf_params.distinguished_name = rcgen::DistinguishedName::new();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        leaf_params.is_ca = rcgen::IsCa::ExplicitNoCa;
        leaf_params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        leaf_params.use_authority_key_identifier_extension = true;
        leaf_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        leaf_params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca)
            .expect("sign the server certificate");
        TestCa {
            ca_pem: ca.pem(),
            leaf_cert_pem: leaf.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
        }
    })
}

/// A running `docker-registry`; killed on drop.
pub struct TestRegistry {
    kind: RegistryKind,
    port: u16,
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
    token_server: Option<TokenServer>,
}

impl TestRegistry {
    /// Start a registry of `kind` on a free loopback port and wait until `/v2/` answers.
    pub async fn start(kind: RegistryKind) -> TestRegistry {
        assert!(
            Path::new(REGISTRY_BINARY).exists(),
            "install docker-registry: apt-get install docker-registry"
        );
        let dir = tempfile::Builder::new()
            .prefix("bundlecopy-registry-")
            .tempdir()
            .expect("create the registry temp dir");
        let token_server = (kind == RegistryKind::Token)
            .then(|| TokenServer::start(TEST_USERNAME, TEST_PASSWORD, TOKEN_SERVICE, TOKEN_ISSUER));
        write_static_files(dir.path(), kind, token_server.as_ref());
        let mut registry = TestRegistry {
            kind,
            port: 0,
            dir,
            child: Mutex::new(None),
            token_server,
        };
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            registry.port = free_port();
            registry.write_config();
            match registry.launch_and_wait().await {
                Ok(()) => return registry,
                Err(LaunchFailure::PortTaken(log)) => last_failure = log,
                Err(LaunchFailure::Other(message)) => panic!("{message}"),
            }
        }
        panic!(
            "docker-registry lost the race for a free port {PORT_ATTEMPTS} times; log:\n{last_failure}"
        );
    }

    pub fn kind(&self) -> RegistryKind {
        self.kind
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`
    pub fn url_base(&self) -> String {
        let scheme = if self.kind.uses_tls() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.host())
    }

    /// PEM of the CA that signed this registry's certificate (TLS kinds only).
    pub fn ca_pem(&self) -> Option<&'static str> {
        self.kind.uses_tls().then(|| test_ca().ca_pem.as_str())
    }

    /// A PEM file holding the CA (TLS kinds only).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.kind
            .uses_tls()
            .then(|| self.dir.path().join("certs/ca.pem"))
    }

    /// A directory holding `ca.crt` (skopeo's and containers' `--cert-dir` layout; TLS kinds only).
    pub fn cert_dir(&self) -> Option<PathBuf> {
        self.kind
            .uses_tls()
            .then(|| self.dir.path().join("certs/certs.d"))
    }

    pub fn username(&self) -> &'static str {
        TEST_USERNAME
    }

    pub fn password(&self) -> &'static str {
        TEST_PASSWORD
    }

    pub fn requires_auth(&self) -> bool {
        self.kind.requires_auth()
    }

    /// The token server of a `Token` registry.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token_server.as_ref()
    }

    /// `{"auths":{"127.0.0.1:PORT":{"auth":base64(user:pass)}}}`, or `{"auths":{}}` for registries
    /// without auth.
    pub fn docker_config_json(&self) -> String {
        DockerConfig::new().with_registry(self).json()
    }

    /// A Docker config whose entry carries the token server's identity token (Docker's
    /// `identitytoken`, used as an OAuth2 refresh token), as `docker login` stores it for
    /// registries that hand out identity tokens. Token registries only.
    pub fn docker_config_json_with_identity_token(&self) -> String {
        DockerConfig::new()
            .with_identity_token(&self.host(), self)
            .json()
    }

    /// A directory holding `config.json` = `docker_config_json()` (for `--docker-config`).
    pub fn docker_config_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("docker-config");
        std::fs::create_dir_all(&dir).expect("create the docker config dir");
        std::fs::write(dir.join("config.json"), self.docker_config_json())
            .expect("write config.json");
        dir
    }

    /// A raw test client with this registry's CA and credentials.
    pub fn client(&self) -> RegistryClient {
        let credentials = self
            .requires_auth()
            .then_some((TEST_USERNAME, TEST_PASSWORD));
        RegistryClient::new(&self.url_base(), self.ca_pem(), credentials)
    }

    /// A raw test client that trusts the CA but sends no credentials.
    pub fn anonymous_client(&self) -> RegistryClient {
        RegistryClient::new(&self.url_base(), self.ca_pem(), None)
    }

    /// The last `lines` lines of the registry's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kill the registry process (storage stays). Connections in flight are cut.
    pub fn stop(&self) {
        if let Ok(mut child) = self.child.lock()
            && let Some(mut running) = child.take()
        {
            kill_and_reap(&mut running);
        }
    }

    pub fn is_running(&self) -> bool {
        self.child
            .lock()
            .map(|child| child.is_some())
            .unwrap_or(false)
    }

    /// Start the registry again on the same port with the same storage.
    pub async fn start_again(&self) {
        assert!(
            !self.is_running(),
            "start_again: the registry is still running"
        );
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match self.launch_and_wait().await {
                Ok(()) => return,
                // The old socket may linger briefly; anyone else taking the port is fatal.
                Err(LaunchFailure::PortTaken(log)) if Instant::now() < deadline => {
                    let _ = log;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(LaunchFailure::PortTaken(log)) => {
                    panic!(
                        "start_again: port {} is taken by another process; log:\n{log}",
                        self.port
                    )
                }
                Err(LaunchFailure::Other(message)) => panic!("{message}"),
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    fn write_config(&self) {
        let dir = self.dir.path().display();
        let mut config = format!(
            "version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {dir}/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: bundlecopy-harness-fixed-secret
",
            port = self.port
        );
        if self.kind.uses_tls() {
            config.push_str(&format!(
                "  tls:\n    certificate: {dir}/certs/server.pem\n    key: {dir}/certs/server.key\n"
            ));
        }
        match self.kind {
            RegistryKind::TlsBasicAuth => config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: bundlecopy-test\n    path: {dir}/htpasswd\n"
            )),
            RegistryKind::Token => {
                let token_server = self.token_server.as_ref().expect("token server");
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {dir}/token-signer.pem\n",
                    realm = token_server.realm()
                ));
            }
            RegistryKind::Plain | RegistryKind::Tls => {}
        }
        std::fs::write(self.config_path(), config).expect("write the registry config");
    }

    async fn launch_and_wait(&self) -> Result<(), LaunchFailure> {
        let log = std::fs::File::create(self.log_path()).expect("create the registry log");
        let log_for_stderr = log.try_clone().expect("clone the registry log handle");
        let mut command = Command::new(REGISTRY_BINARY);
        command
            .arg("serve")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr);
        // REGISTRY_* variables override the config file (even the listen address).
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("REGISTRY_") {
                command.env_remove(name);
            }
        }
        let child = spawn_tied_to_test_process(command).map_err(|error| {
            LaunchFailure::Other(format!("cannot run {REGISTRY_BINARY}: {error}"))
        })?;
        *self.child.lock().expect("registry child lock") = Some(child);

        let probe = RegistryClient::new(&self.url_base(), self.ca_pem(), None);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.exit_status() {
                let log = self.log_tail(40);
                self.stop();
                if log.contains("address already in use") {
                    return Err(LaunchFailure::PortTaken(log));
                }
                return Err(LaunchFailure::Other(format!(
                    "docker-registry ({:?}) exited with {status} on port {}; log:\n{log}",
                    self.kind, self.port
                )));
            }
            let answered = probe
                .http()
                .get(format!("{}/v2/", self.url_base()))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(response) = answered {
                let status = response.status().as_u16();
                // A registry that lost the port to another process exits at once; make sure the
                // answer came from ours.
                if (status == 200 || status == 401) && self.still_running_after_a_moment().await {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let log = self.log_tail(40);
                self.stop();
                return Err(LaunchFailure::Other(format!(
                    "docker-registry ({:?}) on port {} did not answer GET /v2/ within {STARTUP_TIMEOUT:?}; log:\n{log}",
                    self.kind, self.port
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn still_running_after_a_moment(&self) -> bool {
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.exit_status().is_none()
    }

    fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().ok()?;
        child.as_mut()?.try_wait().ok().flatten()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

enum LaunchFailure {
    PortTaken(String),
    Other(String),
}

/// One Docker `config.json` for several registries, and for proxies standing in for them: a copy
/// between two auth registries needs both entries in one file.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    auths: serde_json::Map<String, serde_json::Value>,
}

impl DockerConfig {
    pub fn new() -> DockerConfig {
        DockerConfig::default()
    }

    /// An entry for `registry.host()` (nothing for registries without auth).
    pub fn with_registry(self, registry: &TestRegistry) -> DockerConfig {
        let host = registry.host();
        self.with_host_as(&host, registry)
    }

    /// `registry`'s credentials under another key (a proxy's `host()`, `localhost:PORT`, a URL).
    pub fn with_host_as(mut self, key: &str, registry: &TestRegistry) -> DockerConfig {
        if registry.requires_auth() {
            let auth = STANDARD.encode(format!("{TEST_USERNAME}:{TEST_PASSWORD}"));
            self.auths
                .insert(key.to_owned(), serde_json::json!({ "auth": auth }));
        }
        self
    }

    /// An identity-token entry (`auth` = base64("user:"), `identitytoken`) for a Token registry.
    pub fn with_identity_token(mut self, key: &str, registry: &TestRegistry) -> DockerConfig {
        let token_server = registry
            .token_server()
            .expect("identity tokens need a Token registry");
        let auth = STANDARD.encode(format!("{TEST_USERNAME}:"));
        self.auths.insert(
            key.to_owned(),
            serde_json::json!({ "auth": auth, "identitytoken": token_server.identity_token() }),
        );
        self
    }

    pub fn json(&self) -> String {
        serde_json::json!({ "auths": self.auths }).to_string()
    }

    /// A new temporary directory holding `config.json` (for `--docker-config` / `DOCKER_CONFIG`).
    pub fn write_dir(&self) -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix("bundlecopy-docker-config-")
            .tempdir()
            .expect("create a docker config dir");
        std::fs::write(dir.path().join("config.json"), self.json()).expect("write config.json");
        dir
    }
}

/// A port that was free a moment ago (the registry may still lose it to someone else: the
/// caller retries).
/// Never hands out the same port twice in one test process, so parallel tests cannot pick the
/// same one.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("bind 127.0.0.1:0 to find a free port");
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

fn write_static_files(dir: &Path, kind: RegistryKind, token_server: Option<&TokenServer>) {
    std::fs::create_dir_all(dir.join("data")).expect("create registry storage");
    if kind.uses_tls() {
        let ca = test_ca();
        let certs = dir.join("certs");
        std::fs::create_dir_all(certs.join("certs.d")).expect("create the certs dir");
        std::fs::write(certs.join("ca.pem"), &ca.ca_pem).expect("write ca.pem");
        std::fs::write(certs.join("certs.d/ca.crt"), &ca.ca_pem).expect("write ca.crt");
        std::fs::write(certs.join("server.pem"), &ca.leaf_cert_pem).expect("write server.pem");
        std::fs::write(certs.join("server.key"), &ca.leaf_key_pem).expect("write server.key");
    }
    if kind == RegistryKind::TlsBasicAuth {
        // Cost 5 keeps each auth check fast; distribution accepts only bcrypt entries.
        let hash = bcrypt::hash(TEST_PASSWORD, 5).expect("bcrypt the test password");
        std::fs::write(dir.join("htpasswd"), format!("{TEST_USERNAME}:{hash}\n"))
            .expect("write htpasswd");
    }
    if let Some(token_server) = token_server {
        std::fs::write(
            dir.join("token-signer.pem"),
            token_server.signing_cert_pem(),
        )
        .expect("write the token signing certificate");
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
