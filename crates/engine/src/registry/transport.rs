//! Transport choice for one endpoint (plain HTTP, verified HTTPS, HTTPS without verification)
//! and the translation of transport failures into `CopyError`s.

use std::error::Error as _;

use crate::error::{CopyError, ProxyProblem, Side};
use crate::proxy::{Proxies, ProxyRoute};
use crate::reference::is_loopback_host;
use crate::settings::{EndpointOptions, EngineSettings};

/// How requests reach a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    PlainHttp,
    Https { verify: bool },
}

impl Transport {
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::PlainHttp => "http",
            Transport::Https { .. } => "https",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Transport::PlainHttp => "plain HTTP",
            Transport::Https { verify: true } => "HTTPS",
            Transport::Https { verify: false } => "HTTPS without certificate verification",
        }
    }
}

const USER_AGENT: &str = concat!("bundlecopy/", env!("CARGO_PKG_VERSION"));

/// Check that PEM bytes hold at least one X.509 certificate, each block valid; the error says
/// which block is wrong and why, never the bytes. Returns how many certificates there are.
pub fn validate_ca_pem(pem: &[u8]) -> Result<usize, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for (index, certificate) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let certificate = certificate
            .map_err(|error| format!("certificate {} is not valid PEM ({error})", index + 1))?;
        roots.add(certificate).map_err(|error| {
            format!(
                "certificate {} is not a valid X.509 certificate ({error})",
                index + 1
            )
        })?;
    }
    if roots.is_empty() {
        return Err("no PEM certificate found (expected -----BEGIN CERTIFICATE-----)".to_string());
    }
    Ok(roots.len())
}

/// Parse PEM CA certificates for an endpoint.
pub fn parse_ca(side: Side, pem: &[u8]) -> Result<Vec<reqwest::Certificate>, CopyError> {
    let invalid = |detail: String| CopyError::InvalidCa { side, detail };
    // reqwest parses lazily for rustls and then only says "builder error": validate first so the
    // message tells the user what to fix.
    validate_ca_pem(pem).map_err(invalid)?;
    reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| invalid(format!("not a PEM certificate bundle: {}", e.without_url())))
}

/// What makes two HTTP clients interchangeable. Credentials are not part of a client (they are
/// attached per request), so endpoints with the same transport and roots share one.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    transport: Transport,
    ca_pem: Option<Vec<u8>>,
    extra_roots_pem: Option<Vec<u8>>,
    connect_timeout: std::time::Duration,
    io_timeout: std::time::Duration,
    /// Proxy credentials are part of the key: clients with different ones are different.
    proxies: Proxies,
}

/// Built clients, shared by every copy in the process: building one loads and parses the system
/// roots (most of the CPU of a cheap reconcile), and sharing keeps connections pooled.
static CLIENTS: std::sync::OnceLock<
    std::sync::Mutex<std::collections::HashMap<ClientKey, reqwest::Client>>,
> = std::sync::OnceLock::new();

/// Distinct client configurations kept; more (many resources with their own CA) start over.
const MAX_CACHED_CLIENTS: usize = 64;

/// The proxies an endpoint's requests go through: its own, else the environment's.
pub fn proxies_for(endpoint: &EndpointOptions, settings: &EngineSettings) -> Proxies {
    Proxies::choose(endpoint.proxy.as_ref(), &settings.proxy_environment)
}

/// The HTTP client for one transport, using exactly `proxies` (never reqwest's own reading of
/// the environment). Redirects are never followed automatically, so credentials cannot leak to
/// another host.
pub fn build_client(
    side: Side,
    transport: Transport,
    proxies: &Proxies,
    endpoint: &EndpointOptions,
    settings: &EngineSettings,
) -> Result<reqwest::Client, CopyError> {
    let verify = transport == Transport::Https { verify: true };
    let key = ClientKey {
        transport,
        ca_pem: endpoint.ca_pem.clone().filter(|_| verify),
        extra_roots_pem: settings.extra_roots_pem.clone().filter(|_| verify),
        connect_timeout: settings.connect_timeout,
        io_timeout: settings.io_timeout,
        proxies: proxies.clone(),
    };
    let cache = CLIENTS.get_or_init(Default::default);
    if let Some(client) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(client.clone());
    }
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(settings.connect_timeout)
        .read_timeout(settings.io_timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .tcp_nodelay(true)
        .http1_only();
    if let Transport::Https { verify } = transport {
        if verify {
            let mut roots = Vec::new();
            if let Some(pem) = &key.ca_pem {
                roots.extend(parse_ca(side, pem)?);
            }
            if let Some(pem) = &key.extra_roots_pem {
                roots.extend(parse_ca(side, pem)?);
            }
            builder = builder.tls_certs_merge(roots);
        } else {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
    }
    let cannot_build = |e: reqwest::Error| CopyError::Registry {
        side,
        registry: String::new(),
        status: None,
        detail: format!("cannot build an HTTP client: {}", error_chain(&e)),
    };
    let client = proxies
        .apply(builder)
        .and_then(reqwest::ClientBuilder::build)
        .map_err(cannot_build)?;
    let mut cached = cache.lock().unwrap_or_else(|p| p.into_inner());
    if cached.len() >= MAX_CACHED_CLIENTS {
        cached.clear();
    }
    cached.insert(key, client.clone());
    Ok(client)
}

/// Pick the transport for an endpoint (docs/architecture.md, "One copy", step 2). `insecure` probes
/// `https://host/v2/` without verification: any HTTP answer means HTTPS, a failure means HTTP
/// (but a failure at the proxy is reported as such, not taken for an answer about the registry).
pub async fn choose_transport(
    side: Side,
    host: &str,
    proxies: &Proxies,
    endpoint: &EndpointOptions,
    settings: &EngineSettings,
) -> Result<Transport, CopyError> {
    if endpoint.insecure {
        let transport = Transport::Https { verify: false };
        let client = build_client(side, transport, proxies, endpoint, settings)?;
        let probe = client
            .get(format!("https://{host}/v2/"))
            .timeout(settings.connect_timeout)
            .send()
            .await;
        return Ok(match probe {
            Ok(_) => transport,
            Err(e) => {
                if let Some(failure) = proxy_failure(side, host, proxies, &e) {
                    return Err(failure);
                }
                tracing::debug!(%host, error = %error_chain(&e), "HTTPS probe failed; using plain HTTP");
                Transport::PlainHttp
            }
        });
    }
    if endpoint.ca_pem.is_some() {
        return Ok(Transport::Https { verify: true });
    }
    if is_loopback_host(host) {
        return Ok(Transport::PlainHttp);
    }
    Ok(Transport::Https { verify: true })
}

/// The error and its sources, joined, without the URL (which may carry upload state).
pub fn error_chain(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

fn find_source<T: std::error::Error + 'static>(e: &reqwest::Error) -> Option<&T> {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(found) = s.downcast_ref::<T>() {
            return Some(found);
        }
        // io::Error's `source()` skips the error it wraps; look inside it.
        if let Some(inner) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(found) = inner.downcast_ref::<T>()
        {
            return Some(found);
        }
        source = s.source();
    }
    None
}

/// A failure at the proxy a request went through, if that is what `e` is. A tunnelled (HTTPS)
/// request fails at the proxy when the CONNECT does (hyper-util's tunnel errors, matched by
/// their stable text: the type is private); a forwarded (plain HTTP) one when the connection
/// to the proxy does.
fn proxy_failure(
    side: Side,
    registry: &str,
    proxies: &Proxies,
    e: &reqwest::Error,
) -> Option<CopyError> {
    let url = e.url()?;
    let route = proxies.route(url)?;
    let chain = error_chain(e);
    let tunnelled = url.scheme() == "https";
    let (problem, detail) = if chain.contains("proxy authorization required") {
        (
            ProxyProblem::AuthenticationFailed,
            proxy_authentication_detail(&route),
        )
    } else if chain.contains("tunnel error: unsuccessful")
        || chain.contains("proxy response headers too long")
    {
        let target = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or(443)
        );
        (
            ProxyProblem::TunnelRefused,
            format!(
                "refused to open a tunnel (CONNECT) to {target}: the proxy answered with an error status"
            ),
        )
    } else if chain.contains("tunnel error") || (e.is_connect() && (!tunnelled || e.is_timeout())) {
        let detail = if e.is_timeout() {
            format!("timed out connecting through it: {chain}")
        } else {
            chain
        };
        (
            ProxyProblem::Unreachable,
            format!("is unreachable: {detail}"),
        )
    } else {
        return None;
    };
    Some(CopyError::Proxy {
        side,
        registry: registry.to_string(),
        proxy: route.address,
        origin: route.origin,
        problem,
        detail,
    })
}

/// What a 407 from the proxy means, depending on whether credentials were sent.
pub fn proxy_authentication_detail(route: &ProxyRoute) -> String {
    if route.has_credentials {
        "refused the proxy user name and password (407 Proxy Authentication Required)".to_string()
    } else {
        "requires a user name and password (407 Proxy Authentication Required), and none were given"
            .to_string()
    }
}

/// Translate a failed request into the engine's error taxonomy.
pub fn classify(
    side: Side,
    registry: &str,
    transport: Transport,
    proxies: &Proxies,
    e: &reqwest::Error,
) -> CopyError {
    if let Some(failure) = proxy_failure(side, registry, proxies, e) {
        return failure;
    }
    let registry = registry.to_string();
    if let Some(tls) = find_source::<rustls::Error>(e) {
        let detail = match tls {
            rustls::Error::InvalidMessage(_) => {
                format!(
                    "{tls} (the registry does not seem to speak TLS on this port: is it plain HTTP?)"
                )
            }
            rustls::Error::InvalidCertificate(_) => {
                format!("the registry's certificate is not trusted: {tls}")
            }
            _ => tls.to_string(),
        };
        return CopyError::Tls {
            side,
            registry,
            detail,
        };
    }
    let chain = error_chain(e);
    // Some layers box the rustls error so it cannot be downcast; its Display text is stable.
    if transport != Transport::PlainHttp {
        if let Some(at) = chain.find("invalid peer certificate") {
            let detail = format!(
                "the registry's certificate is not trusted: {}",
                &chain[at..]
            );
            return CopyError::Tls {
                side,
                registry,
                detail,
            };
        }
        if chain.contains("received corrupt message") || chain.contains("invalid HTTP version") {
            let detail = format!(
                "{} (the registry does not seem to speak TLS on this port: is it plain HTTP?)",
                tls_part(&chain)
            );
            return CopyError::Tls {
                side,
                registry,
                detail,
            };
        }
    }
    if e.is_timeout() {
        return CopyError::Unreachable {
            side,
            registry,
            detail: format!("timed out: {}", error_chain(e)),
        };
    }
    CopyError::Unreachable {
        side,
        registry,
        detail: chain,
    }
}

/// The innermost part of an error chain (the TLS library's own words).
fn tls_part(chain: &str) -> &str {
    chain.rsplit(": ").next().unwrap_or(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_ca_is_refused_with_a_clear_error() {
        for (pem, expected) in [
            (&b"not a certificate"[..], "no PEM certificate found"),
            (
                b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                "certificate",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
                "certificate",
            ),
        ] {
            let e = parse_ca(Side::Destination, pem).unwrap_err();
            assert!(e.to_string().contains(expected), "{e}");
            assert!(matches!(
                e,
                CopyError::InvalidCa {
                    side: Side::Destination,
                    ..
                }
            ));
        }
    }
}
