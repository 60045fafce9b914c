//! A real HTTP forward proxy: Debian's `squid` as a child process on a free 127.0.0.1 port, with
//! its config and logs in a temporary directory. Plain-HTTP registries are reached through it by
//! absolute-form requests (`GET http://127.0.0.1:PORT/v2/`), HTTPS ones through a
//! `CONNECT 127.0.0.1:PORT` tunnel; its access log names each, which is how tests prove that a
//! request really went through it (on loopback, nothing else would tell). Squid answers missing
//! and wrong proxy credentials alike with 407, as the HTTP specification says (tinyproxy answers
//! wrong ones with 401, which a client cannot tell from a refused tunnel).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::process::{kill_and_reap, spawn_tied_to_test_process};
use super::registry::free_port;

pub const SQUID_BINARY: &str = "/usr/sbin/squid";
const PASSWORD_HELPER: &str = "/usr/lib/squid/basic_ncsa_auth";
pub const PROXY_USERNAME: &str = "proxyuser";
/// A password no log line could contain by accident.
pub const PROXY_PASSWORD: &str = "Pr0xy-Distinctive-Pw-5521";

/// Every proxy variable a child process could inherit from the test's own environment.
pub const PROXY_VARIABLES: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
const PORT_ATTEMPTS: usize = 5;

/// How the proxy behaves.
#[derive(Debug, Clone, Default)]
pub struct ForwardProxyConfig {
    /// Require `Proxy-Authorization: Basic` with `PROXY_USERNAME`/`PROXY_PASSWORD` (407
    /// otherwise).
    pub basic_auth: bool,
    /// Ports CONNECT may reach; empty: every port. A CONNECT elsewhere is refused (403), as
    /// squid's stock `SSL_ports` rule does.
    pub connect_ports: Vec<u16>,
}

/// A running squid; killed on drop.
pub struct ForwardProxy {
    port: u16,
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
}

/// One request the proxy received, from its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyLogEntry {
    /// `GET`, `CONNECT`, ...
    pub method: String,
    /// `http://127.0.0.1:5000/v2/` (forwarded) or `127.0.0.1:5001` (CONNECT).
    pub target: String,
    /// What the proxy answered (407 for missing or wrong credentials, 403 for a refusal).
    pub status: u16,
}

impl ForwardProxy {
    pub async fn start(config: ForwardProxyConfig) -> ForwardProxy {
        assert!(
            Path::new(SQUID_BINARY).exists(),
            "install squid: apt-get install squid (scripts/install-test-deps.sh)"
        );
        let dir = tempfile::Builder::new()
            .prefix("bundlecopy-squid-")
            .tempdir()
            .expect("create the proxy temp dir");
        // Started as root, squid works as the user `proxy`: its logs must be writable for it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("open the proxy temp dir to squid's user");
        let mut proxy = ForwardProxy {
            port: 0,
            dir,
            child: Mutex::new(None),
        };
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            proxy.port = free_port();
            proxy.write_config(&config);
            match proxy.launch_and_wait().await {
                Ok(()) => return proxy,
                Err(log) => last_log = log,
            }
        }
        panic!("squid did not start in {PORT_ATTEMPTS} attempts; log:\n{last_log}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://USER:PASSWORD@127.0.0.1:PORT`
    pub fn url_with(&self, username: &str, password: &str) -> String {
        format!("http://{username}:{password}@127.0.0.1:{}", self.port)
    }

    /// The proxy's access log: one line per request.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Every request the proxy received, in order (squid's native access log format: `TIME
    /// ELAPSED CLIENT CODE/STATUS BYTES METHOD TARGET USER HIERARCHY TYPE`).
    pub fn requests(&self) -> Vec<ProxyLogEntry> {
        self.log()
            .lines()
            .filter_map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let status = words.get(3)?.rsplit('/').next()?.parse().ok()?;
                Some(ProxyLogEntry {
                    method: words.get(5)?.to_string(),
                    target: words.get(6)?.to_string(),
                    status,
                })
            })
            .collect()
    }

    /// Waits (10 s at most) until the logged requests satisfy `done`: squid logs a request when
    /// it ends, a CONNECT tunnel when its connection closes. Panics with the log otherwise.
    pub async fn wait_for_log(&self, what: &str, done: impl Fn(&[ProxyLogEntry]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&self.requests()) {
            assert!(
                Instant::now() < deadline,
                "{what}: not in the proxy's access log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for a GET forwarded to `host` (a plain-HTTP registry) whose URL contains `path`,
    /// answered 200.
    pub async fn wait_for_forwarded_get(&self, host: &str, path: &str) {
        let prefix = format!("http://{host}/");
        self.wait_for_log(&format!("a GET of {prefix}…{path}…"), |log| {
            log.iter().any(|r| {
                r.method == "GET"
                    && r.status == 200
                    && r.target.starts_with(&prefix)
                    && r.target.contains(path)
            })
        })
        .await;
    }

    /// Waits for a CONNECT tunnel to `host` (an HTTPS registry) that the proxy opened.
    pub async fn wait_for_tunnel(&self, host: &str) {
        self.wait_for_log(&format!("a CONNECT to {host}"), |log| {
            log.iter()
                .any(|r| r.method == "CONNECT" && r.target == host && r.status == 200)
        })
        .await;
    }

    /// The requests whose target names `host` (`127.0.0.1:PORT`).
    pub fn requests_to(&self, host: &str) -> Vec<ProxyLogEntry> {
        self.requests()
            .into_iter()
            .filter(|request| {
                request.target == host || request.target.starts_with(&format!("http://{host}/"))
            })
            .collect()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    fn write_config(&self, config: &ForwardProxyConfig) {
        let dir = self.dir.path().display();
        let mut text = format!(
            "http_port 127.0.0.1:{port}\n\
             pid_filename {dir}/squid.pid\n\
             cache_log {dir}/cache.log\n\
             access_log stdio:{dir}/access.log\n\
             coredump_dir {dir}\n\
             cache deny all\n\
             pinger_enable off\n\
             shutdown_lifetime 0 seconds\n\
             forwarded_for delete\n\
             via off\n\
             acl CONNECT method CONNECT\n",
            port = self.port,
        );
        if !config.connect_ports.is_empty() {
            let ports: Vec<String> = config.connect_ports.iter().map(u16::to_string).collect();
            text.push_str(&format!(
                "acl allowed_ports port {}\nhttp_access deny CONNECT !allowed_ports\n",
                ports.join(" ")
            ));
        }
        if config.basic_auth {
            let passwords = self.dir.path().join("passwords");
            // Squid's helper reads Apache's MD5 crypt; bcrypt is not among its forms.
            let hash = std::process::Command::new("openssl")
                .args(["passwd", "-apr1", PROXY_PASSWORD])
                .output()
                .expect("run openssl passwd");
            let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
            std::fs::write(&passwords, format!("{PROXY_USERNAME}:{hash}\n"))
                .expect("write the proxy's password file");
            text.push_str(&format!(
                "auth_param basic program {PASSWORD_HELPER} {}\n\
                 auth_param basic children 2 startup=1 idle=1\n\
                 auth_param basic realm bundlecopy-test-proxy\n\
                 acl authenticated proxy_auth REQUIRED\n\
                 http_access allow authenticated\n\
                 http_access deny all\n",
                passwords.display()
            ));
        } else {
            text.push_str("http_access allow all\n");
        }
        std::fs::write(self.dir.path().join("squid.conf"), text).expect("write the squid config");
    }

    async fn launch_and_wait(&self) -> Result<(), String> {
        let _ = std::fs::remove_file(self.log_path());
        let mut command = Command::new(SQUID_BINARY);
        command
            // -N: stay in the foreground, so the process is ours to stop.
            .arg("-N")
            .arg("-f")
            .arg(self.dir.path().join("squid.conf"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_tied_to_test_process(command)
            .unwrap_or_else(|error| panic!("cannot run {SQUID_BINARY}: {error}"));
        *self.child.lock().expect("proxy child lock") = Some(child);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if self.exited() {
                let log = self.cache_log();
                self.stop();
                return Err(log);
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // A proxy that lost the port to another process exits at once.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if !self.exited() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let log = self.cache_log();
                self.stop();
                return Err(format!("no answer within {STARTUP_TIMEOUT:?}\n{log}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Squid's own log (start-up, errors).
    pub fn cache_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cache.log")).unwrap_or_default()
    }

    fn exited(&self) -> bool {
        let mut child = self.child.lock().expect("proxy child lock");
        match child.as_mut() {
            Some(running) => running.try_wait().ok().flatten().is_some(),
            None => true,
        }
    }

    pub fn stop(&self) {
        if let Ok(mut child) = self.child.lock()
            && let Some(mut running) = child.take()
        {
            kill_and_reap(&mut running);
        }
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        self.stop();
    }
}
