//! HTTP proxies: the environment's (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, upper
//! case first, read as reqwest reads them) and one endpoint's own (`--source-proxy`, a
//! `proxySecretRef` Secret). Which proxy a request goes through is decided here, for the HTTP
//! client (`Proxies::apply`) and for error messages (`Proxies::route`) alike, with hyper-util's
//! matcher — the one reqwest itself uses — so both always agree.
//!
//! A proxy URL's user name and password are never shown: `Debug`, `Display` and every message
//! use `scheme://host:port` only.

use hyper_util::client::proxy::matcher::Matcher;
use url::Url;

use crate::error::ProxyOrigin;

/// A proxy given for one endpoint: all of that endpoint's requests (the registry, its token
/// server, blob redirects) go through it, whatever `NO_PROXY` says.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProxyOptions {
    /// `scheme://[user[:password]@]host:port/`, user info percent-encoded.
    url: Url,
}

impl ProxyOptions {
    /// Parse a proxy address: `http://host:port`, `https://host:port`, or `host:port` (plain
    /// HTTP to the proxy), with optional `user:password@` (percent-encoded). The error never
    /// repeats the address, which may hold a password.
    pub fn parse(address: &str) -> Result<ProxyOptions, String> {
        parse_proxy_url(address).map(|url| ProxyOptions { url })
    }

    /// The same proxy with this user name and password (replacing any in the address).
    pub fn with_credentials(mut self, username: &str, password: Option<&str>) -> ProxyOptions {
        // Setting user info fails only for URLs that cannot have a host, which `parse` refused.
        let _ = self.url.set_username(username);
        let _ = self.url.set_password(password);
        self
    }

    /// Whether a user name (and maybe a password) is sent to the proxy.
    pub fn has_credentials(&self) -> bool {
        !self.url.username().is_empty() || self.url.password().is_some()
    }

    /// `scheme://host:port`, for messages.
    pub fn address(&self) -> String {
        without_credentials(&self.url)
    }
}

impl std::fmt::Debug for ProxyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ProxyOptions({}{})",
            self.address(),
            if self.has_credentials() {
                ", <credentials redacted>"
            } else {
                ""
            }
        )
    }
}

/// The proxy variables of the process environment, resolved as reqwest 0.13 resolves them
/// (through hyper-util's `Matcher::from_env`): for each variable the upper-case name is read
/// first and, only when it is not set at all, the lower-case one; an empty `HTTPS_PROXY` or
/// `HTTP_PROXY` falls back to `ALL_PROXY`; with `REQUEST_METHOD` set (a CGI process) no
/// variable is used. Unlike reqwest, a value that is not an HTTP(S) proxy URL is an error
/// instead of a silent direct connection.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ProxyEnvironment {
    /// For `http://` registries: `HTTP_PROXY`, else `ALL_PROXY`.
    http: Option<EnvironmentProxy>,
    /// For `https://` registries: `HTTPS_PROXY`, else `ALL_PROXY`.
    https: Option<EnvironmentProxy>,
    /// `NO_PROXY` as written.
    no_proxy: String,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct EnvironmentProxy {
    /// The variable it came from, as spelled in the environment (`https_proxy`).
    variable: &'static str,
    url: Url,
}

impl ProxyEnvironment {
    /// The proxy variables of this process.
    pub fn from_env() -> Result<ProxyEnvironment, String> {
        ProxyEnvironment::from_variables(|name| std::env::var(name).ok())
    }

    /// The proxy variables `lookup` returns (`None`: not set).
    pub fn from_variables(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ProxyEnvironment, String> {
        if lookup("REQUEST_METHOD").is_some() {
            return Ok(ProxyEnvironment::default());
        }
        let first = |names: [&'static str; 2]| {
            names
                .into_iter()
                .find_map(|name| lookup(name).map(|value| (name, value)))
                .filter(|(_, value)| !value.trim().is_empty())
        };
        let parse = |found: Option<(&'static str, String)>| {
            found
                .map(|(variable, value)| {
                    parse_proxy_url(&value)
                        .map(|url| EnvironmentProxy { variable, url })
                        .map_err(|problem| format!("{variable}: {problem}"))
                })
                .transpose()
        };
        let all = parse(first(["ALL_PROXY", "all_proxy"]))?;
        let http = parse(first(["HTTP_PROXY", "http_proxy"]))?.or_else(|| all.clone());
        let https = parse(first(["HTTPS_PROXY", "https_proxy"]))?.or(all);
        let no_proxy = ["NO_PROXY", "no_proxy"]
            .into_iter()
            .find_map(&lookup)
            .unwrap_or_default();
        Ok(ProxyEnvironment {
            http,
            https,
            no_proxy,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.http.is_none() && self.https.is_none()
    }

    fn matcher(&self) -> Matcher {
        let url = |proxy: &Option<EnvironmentProxy>| {
            proxy
                .as_ref()
                .map(|p| p.url.to_string())
                .unwrap_or_default()
        };
        Matcher::builder()
            .http(url(&self.http))
            .https(url(&self.https))
            .no(self.no_proxy.clone())
            .build()
    }

    fn for_scheme(&self, scheme: &str) -> Option<&EnvironmentProxy> {
        match scheme {
            "http" => self.http.as_ref(),
            "https" => self.https.as_ref(),
            _ => None,
        }
    }
}

impl std::fmt::Debug for ProxyEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |proxy: &Option<EnvironmentProxy>| {
            proxy
                .as_ref()
                .map(|p| format!("{} from {}", without_credentials(&p.url), p.variable))
        };
        f.debug_struct("ProxyEnvironment")
            .field("http", &show(&self.http))
            .field("https", &show(&self.https))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// The proxies the requests of one endpoint may go through.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Proxies {
    /// Every request goes straight to its host.
    #[default]
    Direct,
    /// The endpoint's own proxy, for every request.
    Endpoint(ProxyOptions),
    /// The environment's, per request (scheme and `NO_PROXY`).
    Environment(ProxyEnvironment),
}

/// The proxy one request goes through, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRoute {
    /// `scheme://host:port`, without credentials.
    pub address: String,
    pub origin: ProxyOrigin,
    /// Whether credentials are sent to it.
    pub has_credentials: bool,
}

impl Proxies {
    /// An endpoint's own proxy wins over the environment's.
    pub fn choose(endpoint: Option<&ProxyOptions>, environment: &ProxyEnvironment) -> Proxies {
        match endpoint {
            Some(proxy) => Proxies::Endpoint(proxy.clone()),
            None if environment.is_empty() => Proxies::Direct,
            None => Proxies::Environment(environment.clone()),
        }
    }

    /// The proxy a request to `url` goes through, if any: the same decision the HTTP client
    /// makes.
    pub fn route(&self, url: &Url) -> Option<ProxyRoute> {
        match self {
            Proxies::Direct => None,
            Proxies::Endpoint(proxy) => Some(ProxyRoute {
                address: proxy.address(),
                origin: ProxyOrigin::Endpoint,
                has_credentials: proxy.has_credentials(),
            }),
            Proxies::Environment(environment) => {
                let uri: http::Uri = url.as_str().parse().ok()?;
                environment.matcher().intercept(&uri)?;
                let proxy = environment.for_scheme(url.scheme())?;
                Some(ProxyRoute {
                    address: without_credentials(&proxy.url),
                    origin: ProxyOrigin::Environment(proxy.variable.to_string()),
                    has_credentials: !proxy.url.username().is_empty()
                        || proxy.url.password().is_some(),
                })
            }
        }
    }

    /// Configure a client to use these proxies, and no other (reqwest would read the
    /// environment itself otherwise).
    pub fn apply(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, reqwest::Error> {
        let builder = builder.no_proxy();
        Ok(match self {
            Proxies::Direct => builder,
            Proxies::Endpoint(proxy) => builder.proxy(reqwest::Proxy::all(proxy.url.as_str())?),
            Proxies::Environment(environment) => {
                let no_proxy = || reqwest::NoProxy::from_string(&environment.no_proxy);
                let mut builder = builder;
                if let Some(proxy) = &environment.http {
                    builder = builder
                        .proxy(reqwest::Proxy::http(proxy.url.as_str())?.no_proxy(no_proxy()));
                }
                if let Some(proxy) = &environment.https {
                    builder = builder
                        .proxy(reqwest::Proxy::https(proxy.url.as_str())?.no_proxy(no_proxy()));
                }
                builder
            }
        })
    }
}

/// `scheme://host:port` of a proxy URL.
fn without_credentials(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port_or_known_default() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// A proxy URL: http or https, a host, no path. Errors never contain the text (it may hold a
/// password).
fn parse_proxy_url(text: &str) -> Result<Url, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the proxy address is empty".to_string());
    }
    let with_scheme = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let url = Url::parse(&with_scheme)
        .map_err(|error| format!("not a proxy URL such as http://proxy.example:3128 ({error})"))?;
    match url.scheme() {
        "http" | "https" => {}
        scheme if scheme.starts_with("socks") => {
            return Err(format!(
                "{scheme} proxies are not supported; give an HTTP proxy, such as http://proxy.example:3128"
            ));
        }
        scheme => {
            return Err(format!(
                "the scheme {scheme}:// is not a proxy protocol; use http:// or https://"
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the proxy URL has no host".to_string());
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(
            "a proxy URL is scheme://host:port, without a path, query or fragment".to_string(),
        );
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn environment(variables: &[(&str, &str)]) -> Result<ProxyEnvironment, String> {
        let map: HashMap<String, String> = variables
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxyEnvironment::from_variables(|name| map.get(name).cloned())
    }

    fn routed(proxies: &Proxies, url: &str) -> Option<String> {
        proxies
            .route(&Url::parse(url).unwrap())
            .map(|route| match route.origin {
                ProxyOrigin::Endpoint => route.address,
                ProxyOrigin::Environment(variable) => format!("{} ({variable})", route.address),
            })
    }

    #[test]
    fn proxy_addresses_parse_and_never_show_their_password() {
        let proxy = ProxyOptions::parse("http://alice:s3cr%40t@proxy.corp:3128").unwrap();
        assert_eq!(proxy.address(), "http://proxy.corp:3128");
        assert!(proxy.has_credentials());
        assert!(!format!("{proxy:?}").contains("s3cr"), "{proxy:?}");
        let bare = ProxyOptions::parse("proxy.corp:8080").unwrap();
        assert_eq!(bare.address(), "http://proxy.corp:8080");
        assert!(!bare.has_credentials());
        assert_eq!(
            ProxyOptions::parse("https://proxy.corp").unwrap().address(),
            "https://proxy.corp:443"
        );
        let with = bare.with_credentials("bob", Some("p@ss word"));
        assert!(with.has_credentials());
        assert_eq!(with.address(), "http://proxy.corp:8080");
        assert!(
            with.url.as_str().contains("bob:p%40ss%20word@"),
            "{}",
            with.url
        );
    }

    #[test]
    fn bad_proxy_addresses_are_refused_without_repeating_them() {
        for (address, expected) in [
            ("", "empty"),
            (
                "socks5://user:hunter2@proxy:1080",
                "socks5 proxies are not supported",
            ),
            ("ftp://user:hunter2@proxy:21", "not a proxy protocol"),
            ("http://user:hunter2@proxy:3128/path", "without a path"),
            ("http://user:hunter2@proxy:99999", "not a proxy URL"),
            ("http://user:hunter2@", "not a proxy URL"),
        ] {
            let problem = ProxyOptions::parse(address).unwrap_err();
            assert!(problem.contains(expected), "{address}: {problem}");
            assert!(!problem.contains("hunter2"), "{address}: {problem}");
        }
    }

    #[test]
    fn the_environment_is_read_as_reqwest_reads_it() {
        // Upper case first; lower case only when the upper-case name is not set at all.
        let env = environment(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:2"),
            ("http_proxy", "http://lower-http:3"),
        ])
        .unwrap();
        let proxies = Proxies::choose(None, &env);
        assert_eq!(
            routed(&proxies, "https://registry.example/v2/").as_deref(),
            Some("http://upper:1 (HTTPS_PROXY)")
        );
        assert_eq!(
            routed(&proxies, "http://registry.example/v2/").as_deref(),
            Some("http://lower-http:3 (http_proxy)")
        );
        // ALL_PROXY serves a scheme without its own variable, also when that one is empty.
        let env = environment(&[("ALL_PROXY", "proxy:9"), ("HTTP_PROXY", "")]).unwrap();
        let proxies = Proxies::choose(None, &env);
        assert_eq!(
            routed(&proxies, "http://r.example/").as_deref(),
            Some("http://proxy:9 (ALL_PROXY)")
        );
        assert_eq!(
            routed(&proxies, "https://r.example/").as_deref(),
            Some("http://proxy:9 (ALL_PROXY)")
        );
        // A CGI process ignores them all (httpoxy).
        let env = environment(&[("HTTPS_PROXY", "http://p:1"), ("REQUEST_METHOD", "GET")]).unwrap();
        assert_eq!(Proxies::choose(None, &env), Proxies::Direct);
        // Nothing set: direct.
        assert_eq!(
            Proxies::choose(None, &environment(&[]).unwrap()),
            Proxies::Direct
        );
        // A value that is no proxy URL is an error naming the variable, not a direct connection.
        let problem = environment(&[("https_proxy", "socks5://u:hunter2@p:1")]).unwrap_err();
        assert!(problem.starts_with("https_proxy: "), "{problem}");
        assert!(!problem.contains("hunter2"), "{problem}");
    }

    #[test]
    fn no_proxy_matches_names_suffixes_and_addresses_but_not_loopback_by_default() {
        let env = environment(&[
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("HTTP_PROXY", "http://proxy:3128"),
            (
                "NO_PROXY",
                "internal.corp, .svc.cluster.local,10.0.0.0/8, 192.168.1.7,::1,registry:5000",
            ),
        ])
        .unwrap();
        let proxies = Proxies::choose(None, &env);
        let bypassed = |url: &str| routed(&proxies, url).is_none();
        assert!(bypassed("https://internal.corp/v2/"));
        assert!(bypassed("https://registry.internal.corp/v2/"));
        assert!(bypassed("https://INTERNAL.corp:5000/v2/"));
        assert!(!bypassed("https://notinternal.corp/v2/"));
        assert!(bypassed("http://harbor.svc.cluster.local/v2/"));
        assert!(bypassed("http://svc.cluster.local/v2/"));
        assert!(bypassed("http://10.1.2.3:5000/v2/"));
        assert!(!bypassed("http://11.1.2.3:5000/v2/"));
        assert!(bypassed("http://192.168.1.7/v2/"));
        assert!(bypassed("http://[::1]:5000/v2/"));
        // CIDRs match addresses only: names are not resolved.
        assert!(!bypassed("http://ten.example/v2/"));
        // An entry with a port never matches.
        assert!(!bypassed("http://registry:5000/v2/"));
        // Loopback is proxied unless listed.
        assert!(!bypassed("http://127.0.0.1:5000/v2/"));
        assert!(!bypassed("http://localhost:5000/v2/"));
        // `*` bypasses everything.
        let env = environment(&[("HTTPS_PROXY", "http://proxy:3128"), ("no_proxy", "*")]).unwrap();
        assert!(routed(&Proxies::choose(None, &env), "https://a.example/").is_none());
    }

    #[test]
    fn an_endpoint_proxy_wins_and_ignores_no_proxy() {
        let env = environment(&[("HTTPS_PROXY", "http://env:1"), ("NO_PROXY", "*")]).unwrap();
        let own = ProxyOptions::parse("http://u:p@own:2").unwrap();
        let proxies = Proxies::choose(Some(&own), &env);
        assert_eq!(
            routed(&proxies, "https://anything.example/").as_deref(),
            Some("http://own:2")
        );
        let route = proxies
            .route(&Url::parse("http://127.0.0.1/").unwrap())
            .unwrap();
        assert!(route.has_credentials);
        assert!(!format!("{proxies:?}").contains(":p@"), "{proxies:?}");
    }
}
