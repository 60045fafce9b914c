//! Docker config credentials (`kubernetes.io/dockerconfigjson`, legacy `kubernetes.io/dockercfg`,
//! `~/.docker/config.json`) and kubelet-style matching of a registry and repository to them.
//!
//! Keys are normalised (scheme and a trailing `/v1/` or `/v2/` dropped; Docker Hub's aliases are
//! one registry), may carry a repository path prefix (`host/team`) or a `*.domain` glob, and the
//! most specific match comes first. Error messages name the entry key, never a secret.

use std::fmt;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::reference::DOCKER_HUB;

/// Host names that all mean Docker Hub.
const DOCKER_HUB_ALIASES: [&str; 3] = [DOCKER_HUB, "index.docker.io", "registry-1.docker.io"];

/// Standard alphabet; docker requires padding, but a missing `=` is a harmless slip to accept.
const AUTH_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const AUTH_FORM: &str = "it must be the base64 encoding of USERNAME:PASSWORD";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct CredentialsError(pub String);

#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic {
        username: String,
        password: String,
    },
    IdentityToken(String),
    RegistryToken(String),
    /// An Entra ID access token (`provider: azure`), exchanged at the registry's token server
    /// for an ACR refresh token before use.
    EntraToken {
        token: String,
        tenant: String,
    },
}

impl Credential {
    /// What kind of credential this is, for messages (never its value).
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Basic { .. } => "username/password",
            Credential::IdentityToken(_) => "identity token",
            Credential::RegistryToken(_) => "registry token",
            Credential::EntraToken { .. } => "Azure Entra ID token",
        }
    }

    /// The bearer token a registry token is.
    pub fn bearer_token(&self) -> Option<&str> {
        match self {
            Credential::RegistryToken(token) => Some(token),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Credential::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
            Credential::EntraToken { tenant, .. } => write!(f, "EntraToken({tenant}, <redacted>)"),
        }
    }
}

/// One usable `auths` entry with its key already normalised for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AuthEntry {
    /// The key as written, for messages.
    key: String,
    /// Lowercase host without port (`docker.io` for Docker Hub); may contain `*` globs.
    host: String,
    port: Option<String>,
    /// Repository path prefix without leading or trailing `/`; empty for the whole registry.
    path: String,
    credential: Credential,
}

impl AuthEntry {
    fn is_glob(&self) -> bool {
        self.host.contains('*')
    }

    fn matches(&self, host: &str, port: Option<&str>, repository: &str) -> bool {
        let host_matches = if self.is_glob() {
            host_matches_glob(&self.host, host)
        } else {
            self.host == host
        };
        host_matches
            && self.port.as_deref() == port
            && (self.path.is_empty()
                || repository == self.path
                || repository
                    .strip_prefix(self.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

/// Credentials from one or more Docker configs, in config order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    entries: Vec<AuthEntry>,
    /// `credsStore` / `credHelpers` settings found and ignored (a Pod cannot run helpers).
    ignored_helpers: Vec<String>,
}

impl DockerConfig {
    /// Parse a `config.json` / `.dockerconfigjson` document: `{"auths": {KEY: ENTRY}}`.
    pub fn parse_config_json(bytes: &[u8]) -> Result<DockerConfig, CredentialsError> {
        let members = match parse_json(bytes)? {
            JsonNode::Object(members) => members,
            other => {
                return Err(CredentialsError(format!(
                    "the Docker config is {}, not a JSON object; expected {{\"auths\": \
                     {{\"REGISTRY\": {{\"auth\": \"BASE64(USERNAME:PASSWORD)\"}}}}}}",
                    other.kind()
                )));
            }
        };
        let mut config = DockerConfig::default();
        // Go's encoding/json matches member names case-insensitively.
        for (name, value) in members {
            match name.to_lowercase().as_str() {
                "auths" => match value {
                    JsonNode::Object(auths) => config.add_entries(auths)?,
                    JsonNode::Null => {}
                    other => {
                        return Err(CredentialsError(format!(
                            "\"auths\" in the Docker config is {}; it must be an object mapping \
                             each registry to its credentials",
                            other.kind()
                        )));
                    }
                },
                "credsstore" => {
                    if let JsonNode::String(helper) = value {
                        config.ignored_helpers.push(format!("credsStore: {helper}"));
                    }
                }
                "credhelpers" => {
                    if let JsonNode::Object(helpers) = value {
                        for (registry, helper) in helpers {
                            if let JsonNode::String(helper) = helper {
                                config
                                    .ignored_helpers
                                    .push(format!("credHelpers[{registry}]: {helper}"));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(config)
    }

    /// Parse the legacy `.dockercfg` document: `{KEY: ENTRY}` without the `auths` wrapper.
    pub fn parse_dockercfg(bytes: &[u8]) -> Result<DockerConfig, CredentialsError> {
        match parse_json(bytes)? {
            JsonNode::Object(entries) => {
                let mut config = DockerConfig::default();
                config.add_entries(entries)?;
                Ok(config)
            }
            other => Err(CredentialsError(format!(
                "the legacy .dockercfg is {}, not a JSON object; expected {{\"REGISTRY\": \
                 {{\"auth\": \"BASE64(USERNAME:PASSWORD)\"}}}}",
                other.kind()
            ))),
        }
    }

    /// Concatenate configs in order; on equal specificity, earlier configs win.
    pub fn merge(configs: impl IntoIterator<Item = DockerConfig>) -> DockerConfig {
        let mut merged = DockerConfig::default();
        for config in configs {
            merged.entries.extend(config.entries);
            merged.ignored_helpers.extend(config.ignored_helpers);
        }
        merged
    }

    /// No usable credentials at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `credsStore` / `credHelpers` settings that were ignored, for a warning.
    pub fn ignored_helpers(&self) -> &[String] {
        &self.ignored_helpers
    }

    /// Every credential for `registry` (as `Reference::registry()`) and `repository`, most
    /// specific first: longer path prefix, then exact host before glob, then config order.
    pub fn lookup(&self, registry: &str, repository: &str) -> Vec<Credential> {
        let Some((host, port)) = normalise_authority(registry) else {
            return Vec::new();
        };
        let mut matches: Vec<&AuthEntry> = self
            .entries
            .iter()
            .filter(|entry| entry.matches(&host, port.as_deref(), repository))
            .collect();
        // A stable sort keeps config order among equally specific entries.
        matches.sort_by_key(|entry| (std::cmp::Reverse(entry.path.len()), entry.is_glob()));
        let mut credentials: Vec<Credential> = Vec::with_capacity(matches.len());
        for entry in matches {
            if !credentials.contains(&entry.credential) {
                credentials.push(entry.credential.clone());
            }
        }
        credentials
    }

    fn add_entries(&mut self, entries: Vec<(String, JsonNode)>) -> Result<(), CredentialsError> {
        for (key, value) in entries {
            let Some(credential) = decode_entry(&key, value)? else {
                continue; // nothing usable, e.g. an entry a credsStore fills in
            };
            let (host, port, path) = normalise_key(&key)?;
            self.entries.push(AuthEntry {
                key,
                host,
                port,
                path,
                credential,
            });
        }
        Ok(())
    }
}

/// Turn one entry into a credential; `None` when it holds nothing usable.
fn decode_entry(key: &str, value: JsonNode) -> Result<Option<Credential>, CredentialsError> {
    let members = match value {
        JsonNode::Object(members) => members,
        JsonNode::Null => return Ok(None),
        other => {
            return Err(CredentialsError(format!(
                "Docker config entry {key:?} is {}; it must be an object such as \
                 {{\"auth\": \"BASE64(USERNAME:PASSWORD)\"}}",
                other.kind()
            )));
        }
    };
    let mut auth = None;
    let mut username = None;
    let mut password = None;
    let mut identity_token = None;
    let mut registry_token = None;
    for (name, value) in members {
        let field = match name.to_lowercase().as_str() {
            "auth" => &mut auth,
            "username" => &mut username,
            "password" => &mut password,
            "identitytoken" => &mut identity_token,
            "registrytoken" => &mut registry_token,
            _ => continue, // email, serveraddress and unknown members are not needed
        };
        *field = match value {
            JsonNode::String(text) => Some(text),
            JsonNode::Null => None,
            // Never echo the value: it may be a secret typed in the wrong place.
            other => {
                return Err(CredentialsError(format!(
                    "Docker config entry {key:?}: {name:?} is {}; it must be a string",
                    other.kind()
                )));
            }
        };
    }

    // A non-empty `auth` overrides username and password, as docker does on load.
    if let Some(auth) = auth.filter(|auth| !auth.is_empty()) {
        let (decoded_username, decoded_password) = decode_auth(key, &auth)?;
        username = Some(decoded_username);
        password = Some(decoded_password);
    }
    let username = username.unwrap_or_default();
    let password = password.unwrap_or_default();

    if let Some(token) = registry_token.filter(|token| !token.is_empty()) {
        return Ok(Some(Credential::RegistryToken(token)));
    }
    if let Some(token) = identity_token.filter(|token| !token.is_empty()) {
        return Ok(Some(Credential::IdentityToken(token)));
    }
    if username.is_empty() {
        if password.is_empty() {
            return Ok(None);
        }
        return Err(CredentialsError(format!(
            "Docker config entry {key:?} has a password but an empty username; set \"username\" \
             or \"auth\" (base64 of USERNAME:PASSWORD)"
        )));
    }
    Ok(Some(Credential::Basic { username, password }))
}

/// `auth` = base64(`user:pass`); errors say what is wrong without quoting any of it.
fn decode_auth(key: &str, auth: &str) -> Result<(String, String), CredentialsError> {
    let invalid = |why: &str| {
        CredentialsError(format!(
            "Docker config entry {key:?}: \"auth\" {why}; {AUTH_FORM}"
        ))
    };
    // Go's decoder skips line breaks, so a wrapped `base64` output works with docker too.
    let unwrapped: String = auth.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    let bytes = AUTH_BASE64
        .decode(unwrapped)
        .map_err(|_| invalid("is not valid base64 (standard alphabet)"))?;
    let text = String::from_utf8(bytes).map_err(|_| invalid("does not decode to UTF-8 text"))?;
    let (username, password) = text
        .split_once(':')
        .ok_or_else(|| invalid("decodes to text without a ':'"))?;
    if username.is_empty() {
        return Err(invalid("has an empty username"));
    }
    Ok((
        username.to_string(),
        password.trim_matches('\0').to_string(),
    ))
}

/// Normalise an `auths` key into (host, port, path prefix).
fn normalise_key(key: &str) -> Result<(String, Option<String>, String), CredentialsError> {
    let trimmed = key.trim();
    let lowercase = trimmed.to_ascii_lowercase();
    let without_scheme = ["https://", "http://"]
        .iter()
        .find(|scheme| lowercase.starts_with(*scheme))
        .map_or(trimmed, |scheme| &trimmed[scheme.len()..]);
    let (authority, path) = without_scheme
        .split_once('/')
        .unwrap_or((without_scheme, ""));

    // `/v1/` and `/v2/` name the registry API, not a repository.
    let mut path = path.trim_matches('/');
    for api_version in ["v1", "v2"] {
        if path == api_version {
            path = "";
        } else if let Some(prefix) = path.strip_suffix(api_version)
            && let Some(prefix) = prefix.strip_suffix('/')
        {
            path = prefix.trim_end_matches('/');
        }
    }

    let (host, port) = normalise_authority(authority).ok_or_else(|| {
        CredentialsError(format!(
            "Docker config key {key:?} is not a registry; use HOST, HOST:PORT, HOST/PATH or \
             *.DOMAIN, optionally with https://"
        ))
    })?;
    Ok((host, port, path.to_string()))
}

/// `host[:port]` → lowercase host (Docker Hub aliases → `docker.io`) and port.
/// `None` when the host is empty or the port is not a number.
fn normalise_authority(authority: &str) -> Option<(String, Option<String>)> {
    let authority = authority.to_ascii_lowercase();
    let (host, port) = if authority.starts_with('[') {
        let close = authority.find(']')?;
        let (host, after) = authority.split_at(close + 1);
        match after.strip_prefix(':') {
            Some(port) => (host.to_string(), Some(port.to_string())),
            None if after.is_empty() => (host.to_string(), None),
            None => return None,
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host.to_string(), Some(port.to_string())),
            None => (authority.clone(), None),
        }
    };
    if host.is_empty() {
        return None;
    }
    if let Some(port) = &port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    if port.is_none() && DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        return Some((DOCKER_HUB.to_string(), None));
    }
    Some((host, port))
}

/// Kubelet semantics: same number of DNS labels, each label matched on its own, where `*`
/// stands for any run of characters inside one label.
fn host_matches_glob(pattern: &str, host: &str) -> bool {
    let pattern_labels: Vec<&str> = pattern.split('.').collect();
    let host_labels: Vec<&str> = host.split('.').collect();
    pattern_labels.len() == host_labels.len()
        && pattern_labels
            .iter()
            .zip(&host_labels)
            .all(|(pattern, label)| label_matches_glob(pattern, label))
}

fn label_matches_glob(pattern: &str, label: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = label.strip_prefix(first) else {
        return false;
    };
    let remaining: Vec<&str> = pieces.collect();
    let Some((last, middle)) = remaining.split_last() else {
        return rest.is_empty(); // no '*' at all: exact match
    };
    for piece in middle {
        match rest.find(piece) {
            Some(index) => rest = &rest[index + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A JSON document decoded just enough to read a Docker config: objects keep member order
/// (for a deterministic "config order"), and nothing but syntax can fail, so an error message
/// never quotes a value (which could be a secret).
enum JsonNode {
    Object(Vec<(String, JsonNode)>),
    String(String),
    Null,
    Other(&'static str),
}

impl JsonNode {
    fn kind(&self) -> &'static str {
        match self {
            JsonNode::Object(_) => "an object",
            JsonNode::String(_) => "a string",
            JsonNode::Null => "null",
            JsonNode::Other(kind) => kind,
        }
    }
}

fn parse_json(bytes: &[u8]) -> Result<JsonNode, CredentialsError> {
    serde_json::from_slice(bytes).map_err(|error| {
        let problem = match error.classify() {
            serde_json::error::Category::Eof => "ends early",
            serde_json::error::Category::Io => "cannot be read",
            _ => "is not valid JSON",
        };
        CredentialsError(format!(
            "the Docker config {problem} (line {}, column {}); fix the JSON syntax",
            error.line(),
            error.column()
        ))
    })
}

impl<'de> Deserialize<'de> for JsonNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonNodeVisitor)
    }
}

struct JsonNodeVisitor;

impl<'de> Visitor<'de> for JsonNodeVisitor {
    type Value = JsonNode;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<JsonNode, E> {
        Ok(JsonNode::Other("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<JsonNode, E> {
        Ok(JsonNode::Other("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<JsonNode, E> {
        Ok(JsonNode::Other("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<JsonNode, E> {
        Ok(JsonNode::Other("a number"))
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<JsonNode, E> {
        Ok(JsonNode::String(text.to_string()))
    }
    fn visit_string<E: de::Error>(self, text: String) -> Result<JsonNode, E> {
        Ok(JsonNode::String(text))
    }
    fn visit_unit<E: de::Error>(self) -> Result<JsonNode, E> {
        Ok(JsonNode::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<JsonNode, E> {
        Ok(JsonNode::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<JsonNode, A::Error> {
        while sequence.next_element::<IgnoredAny>()?.is_some() {}
        Ok(JsonNode::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonNode, A::Error> {
        let mut members = Vec::new();
        while let Some((name, value)) = map.next_entry::<String, JsonNode>()? {
            members.push((name, value));
        }
        Ok(JsonNode::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "s3cr3t-P4ss!word";

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    fn basic(username: &str, password: &str) -> Credential {
        Credential::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    /// A config with one `auth` entry per (key, username) pair, in this order; passwords are
    /// `pw-USERNAME`. Built by hand because serde_json's map would sort the keys.
    fn config_with(entries: &[(&str, &str)]) -> DockerConfig {
        let members: Vec<String> = entries
            .iter()
            .map(|(key, user)| {
                let key = serde_json::Value::from(*key);
                format!(
                    r#"{key}: {{"auth": "{}"}}"#,
                    b64(&format!("{user}:pw-{user}"))
                )
            })
            .collect();
        let document = format!(r#"{{"auths": {{{}}}}}"#, members.join(", "));
        DockerConfig::parse_config_json(document.as_bytes()).unwrap()
    }

    fn users(config: &DockerConfig, registry: &str, repository: &str) -> Vec<String> {
        config
            .lookup(registry, repository)
            .into_iter()
            .map(|credential| match credential {
                Credential::Basic { username, .. } => username,
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn key_normalisation_rules() {
        // (key, registry, repository, matches)
        let cases = [
            ("myreg:5000", "myreg:5000", "a/b", true),
            ("https://myreg:5000", "myreg:5000", "a/b", true),
            ("http://myreg:5000/v2/", "myreg:5000", "a/b", true),
            ("HTTPS://MyReg:5000/v1/", "myreg:5000", "a/b", true),
            ("myreg:5000/v2", "myreg:5000", "a/b", true),
            ("myreg:5000/v1", "myreg:5000", "a/b", true),
            ("myreg:5000/", "myreg:5000", "a/b", true),
            (" myreg:5000 ", "myreg:5000", "a/b", true),
            ("myreg:5000", "MYREG:5000", "a/b", true),
            ("myreg:5000/team/v2/", "myreg:5000", "team/app", true),
            ("myreg:5000/team/v2/", "myreg:5000", "other/app", false),
            ("myreg:5000", "myreg:5001", "a/b", false),
            ("myreg:5000", "myreg", "a/b", false),
            ("myreg", "myreg:5000", "a/b", false),
            ("myreg", "myreg", "a/b", true),
            ("otherreg", "myreg", "a/b", false),
            ("[::1]:5000", "[::1]:5000", "a", true),
            ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000", "a", true),
        ];
        for (key, registry, repository, expected) in cases {
            let found = !config_with(&[(key, "u")])
                .lookup(registry, repository)
                .is_empty();
            assert_eq!(found, expected, "key {key:?} for {registry}/{repository}");
        }
    }

    #[test]
    fn docker_hub_aliases_are_one_registry() {
        for key in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "https://index.docker.io/v1/",
            "https://registry-1.docker.io/v2/",
            "Docker.IO",
        ] {
            let config = config_with(&[(key, "hub")]);
            assert_eq!(
                users(&config, "docker.io", "library/ubuntu"),
                ["hub"],
                "{key}"
            );
            assert!(
                config.lookup("ghcr.io", "library/ubuntu").is_empty(),
                "{key}"
            );
        }
        // A lookup by any alias finds the same entry.
        let config = config_with(&[("https://index.docker.io/v1/", "hub")]);
        assert_eq!(users(&config, "index.docker.io", "a/b"), ["hub"]);
        assert_eq!(users(&config, "registry-1.docker.io", "a/b"), ["hub"]);
    }

    #[test]
    fn path_prefix_must_be_a_segment_prefix() {
        let config = config_with(&[("host/team", "team"), ("host/te", "te")]);
        assert_eq!(users(&config, "host", "team/x"), ["team"]);
        assert_eq!(users(&config, "host", "team"), ["team"]);
        assert_eq!(users(&config, "host", "te/x"), ["te"]);
        assert!(users(&config, "host", "teams/x").is_empty());
        assert!(users(&config, "host", "other/x").is_empty());
        let deep = config_with(&[("https://host:5000/org/team/", "deep")]);
        assert_eq!(users(&deep, "host:5000", "org/team/app"), ["deep"]);
        assert!(users(&deep, "host:5000", "org/app").is_empty());
    }

    #[test]
    fn glob_matches_exactly_one_label() {
        let config = config_with(&[("*.example.com", "glob")]);
        assert_eq!(users(&config, "a.example.com", "x"), ["glob"]);
        assert_eq!(users(&config, "A.Example.com", "x"), ["glob"]);
        assert!(users(&config, "example.com", "x").is_empty());
        assert!(users(&config, "a.b.example.com", "x").is_empty());
        assert!(users(&config, "a.example.org", "x").is_empty());
        assert!(users(&config, "a.example.com:5000", "x").is_empty());

        let inner = config_with(&[("reg-*.example.com:5000", "inner"), ("*.*.io", "two")]);
        assert_eq!(users(&inner, "reg-eu.example.com:5000", "x"), ["inner"]);
        assert!(users(&inner, "cache-eu.example.com:5000", "x").is_empty());
        assert_eq!(users(&inner, "a.b.io", "x"), ["two"]);
        assert!(users(&inner, "b.io", "x").is_empty());
    }

    #[test]
    fn label_glob_matching() {
        for (pattern, label, expected) in [
            ("*", "anything", true),
            ("*", "", true),
            ("a*", "abc", true),
            ("*c", "abc", true),
            ("a*c", "abc", true),
            ("a*c", "ac", true),
            ("a*b*c", "axbyc", true),
            ("a*b*c", "axyc", false),
            ("ab*ba", "aba", false),
            ("abc", "abc", true),
            ("abc", "abd", false),
        ] {
            assert_eq!(
                label_matches_glob(pattern, label),
                expected,
                "{pattern} {label}"
            );
        }
    }

    #[test]
    fn most_specific_first_then_exact_before_glob_then_config_order() {
        let first = config_with(&[
            ("*.example.com", "glob"),
            ("reg.example.com", "host"),
            ("reg.example.com/team", "team"),
            ("https://reg.example.com/v2/", "host-again"),
            ("reg.example.com/team/app", "app"),
        ]);
        let second = config_with(&[
            ("reg.example.com", "second"),
            ("*.example.com/team", "glob-team"),
        ]);
        let merged = DockerConfig::merge([first, second]);
        assert_eq!(
            users(&merged, "reg.example.com", "team/app"),
            [
                "app",
                "team",
                "glob-team",
                "host",
                "host-again",
                "second",
                "glob"
            ]
        );
        assert_eq!(
            users(&merged, "reg.example.com", "other"),
            ["host", "host-again", "second", "glob"]
        );
    }

    #[test]
    fn duplicate_credentials_are_returned_once() {
        let auth = b64("u:p");
        let document = format!(
            r#"{{"auths": {{"reg.io": {{"auth": "{auth}"}}, "https://reg.io/v1/": {{"auth": "{auth}"}}, "reg.io/x": {{"username": "u", "password": "p"}}}}}}"#
        );
        let config = DockerConfig::parse_config_json(document.as_bytes()).unwrap();
        assert_eq!(config.lookup("reg.io", "x/y"), [basic("u", "p")]);
    }

    #[test]
    fn json_order_decides_ties_within_one_config() {
        // "z" before "a" in the document: JSON order, not key order, is kept.
        let document = format!(
            r#"{{"auths": {{"https://reg.io": {{"auth": "{}"}}, "http://reg.io": {{"auth": "{}"}}}}}}"#,
            b64("zed:1"),
            b64("alpha:2")
        );
        let config = DockerConfig::parse_config_json(document.as_bytes()).unwrap();
        assert_eq!(users(&config, "reg.io", "r"), ["zed", "alpha"]);
    }

    #[test]
    fn auth_overrides_username_and_password_and_trims_nuls() {
        let document = format!(
            r#"{{"auths": {{"reg.io": {{"auth": "{}", "username": "ignored", "password": "ignored"}}}}}}"#,
            b64("real:pa:ss\0\0")
        );
        let config = DockerConfig::parse_config_json(document.as_bytes()).unwrap();
        assert_eq!(config.lookup("reg.io", "r"), [basic("real", "pa:ss")]);
    }

    #[test]
    fn auth_without_padding_is_accepted() {
        let padded = b64("user:pw"); // "dXNlcjpwdw=="
        assert!(padded.ends_with('='));
        let document = format!(
            r#"{{"auths": {{"reg.io": {{"auth": "{}"}}}}}}"#,
            padded.trim_end_matches('=')
        );
        let config = DockerConfig::parse_config_json(document.as_bytes()).unwrap();
        assert_eq!(config.lookup("reg.io", "r"), [basic("user", "pw")]);
    }

    #[test]
    fn auth_with_line_breaks_is_accepted() {
        let wrapped = b64("user:pw").replacen("cj", "c\\r\\nj", 1);
        assert!(wrapped.contains("\\n"));
        let document = format!(r#"{{"auths": {{"reg.io": {{"auth": "{wrapped}"}}}}}}"#);
        let config = DockerConfig::parse_config_json(document.as_bytes()).unwrap();
        assert_eq!(config.lookup("reg.io", "r"), [basic("user", "pw")]);
    }

    #[test]
    fn username_and_password_fields_without_auth() {
        let document =
            r#"{"auths": {"reg.io": {"username": "u", "password": "p", "email": "e@x"}}}"#;
        let config = DockerConfig::parse_config_json(document.as_bytes()).unwrap();
        assert_eq!(config.lookup("reg.io", "r"), [basic("u", "p")]);
    }

    #[test]
    fn member_names_are_case_insensitive() {
        let document = format!(
            r#"{{"AUTHS": {{"reg.io": {{"Auth": "{}"}}, "tok.io": {{"IdentityToken": "idt"}}, "bear.io": {{"RegistryToken": "rt"}}, "up.io": {{"UserName": "u", "PassWord": "p"}}}}}}"#,
            b64("u:p")
        );
        let config = DockerConfig::parse_config_json(document.as_bytes()).unwrap();
        assert_eq!(config.lookup("reg.io", "r"), [basic("u", "p")]);
        assert_eq!(
            config.lookup("tok.io", "r"),
            [Credential::IdentityToken("idt".into())]
        );
        assert_eq!(
            config.lookup("bear.io", "r"),
            [Credential::RegistryToken("rt".into())]
        );
        assert_eq!(config.lookup("up.io", "r"), [basic("u", "p")]);
    }

    #[test]
    fn identity_and_registry_tokens() {
        let document = format!(
            r#"{{"auths": {{
                "id.io": {{"auth": "{}", "identitytoken": "refresh"}},
                "rt.io": {{"registrytoken": "bearer", "identitytoken": "refresh", "username": "u", "password": "p"}},
                "only-id.io": {{"identitytoken": "refresh2"}},
                "empty-tokens.io": {{"identitytoken": "", "registrytoken": "", "username": "u", "password": "p"}}
            }}}}"#,
            b64("u:p")
        );
        let config = DockerConfig::parse_config_json(document.as_bytes()).unwrap();
        assert_eq!(
            config.lookup("id.io", "r"),
            [Credential::IdentityToken("refresh".into())]
        );
        assert_eq!(
            config.lookup("rt.io", "r"),
            [Credential::RegistryToken("bearer".into())]
        );
        assert_eq!(
            config.lookup("only-id.io", "r"),
            [Credential::IdentityToken("refresh2".into())]
        );
        assert_eq!(config.lookup("empty-tokens.io", "r"), [basic("u", "p")]);
    }

    #[test]
    fn entries_with_nothing_usable_are_skipped_and_helpers_ignored() {
        let document = r#"{
            "auths": {"https://index.docker.io/v1/": {}, "reg.io": {"auth": "", "email": "x"}, "n.io": null},
            "credsStore": "desktop",
            "credHelpers": {"gcr.io": "gcloud"},
            "HttpHeaders": {"User-Agent": "x"}
        }"#;
        let config = DockerConfig::parse_config_json(document.as_bytes()).unwrap();
        assert!(config.is_empty());
        assert!(config.lookup("docker.io", "library/ubuntu").is_empty());
        assert_eq!(
            config.ignored_helpers(),
            ["credsStore: desktop", "credHelpers[gcr.io]: gcloud"]
        );
        assert!(DockerConfig::parse_config_json(b"{}").unwrap().is_empty());
        assert!(!config_with(&[("reg.io", "u")]).is_empty());
    }

    #[test]
    fn legacy_dockercfg() {
        let document = format!(
            r#"{{"https://reg.io": {{"auth": "{}", "email": "a@b"}}, "other.io:5000": {{"username": "o", "password": "q"}}}}"#,
            b64("legacy:pw")
        );
        let config = DockerConfig::parse_dockercfg(document.as_bytes()).unwrap();
        assert_eq!(config.lookup("reg.io", "x"), [basic("legacy", "pw")]);
        assert_eq!(config.lookup("other.io:5000", "x"), [basic("o", "q")]);
        let error = DockerConfig::parse_dockercfg(b"[]").unwrap_err();
        assert!(error.0.contains("not a JSON object"), "{}", error.0);
        let error = DockerConfig::parse_dockercfg(br#"{"reg.io": {"auth": "!!"}}"#).unwrap_err();
        assert!(error.0.contains("\"reg.io\""), "{}", error.0);
    }

    /// Parse a config that must fail; the error must name the key and never leak the secret.
    fn expect_error(document: &str, expected: &[&str]) -> String {
        let error = DockerConfig::parse_config_json(document.as_bytes()).unwrap_err();
        for text in expected {
            assert!(
                error.0.contains(text),
                "{:?} should mention {text:?}",
                error.0
            );
        }
        assert!(!error.0.contains(SECRET), "secret leaked: {}", error.0);
        assert!(
            !error.0.contains(&b64(SECRET)),
            "secret leaked: {}",
            error.0
        );
        error.0
    }

    #[test]
    fn invalid_documents_fail_with_messages_that_never_contain_secrets() {
        let secret_auth = b64(&format!("user:{SECRET}"));
        // Bad base64: the secret plus characters outside the standard alphabet.
        expect_error(
            &format!(r#"{{"auths": {{"reg.io:5000": {{"auth": "{SECRET}#"}}}}}}"#),
            &["\"reg.io:5000\"", "not valid base64", "USERNAME:PASSWORD"],
        );
        // URL-safe alphabet is not the standard one.
        expect_error(
            r#"{"auths": {"reg.io": {"auth": "_-_-"}}}"#,
            &["\"reg.io\"", "not valid base64"],
        );
        expect_error(
            &format!(
                r#"{{"auths": {{"reg.io": {{"auth": "{}"}}}}}}"#,
                b64(SECRET)
            ),
            &["\"reg.io\"", "without a ':'"],
        );
        expect_error(
            &format!(
                r#"{{"auths": {{"reg.io": {{"auth": "{}"}}}}}}"#,
                b64(&format!(":{SECRET}"))
            ),
            &["\"reg.io\"", "empty username"],
        );
        expect_error(
            &format!(r#"{{"auths": {{"reg.io": {{"username": "", "password": "{SECRET}"}}}}}}"#),
            &["\"reg.io\"", "empty username"],
        );
        expect_error(
            &format!(r#"{{"auths": {{"reg.io": {{"auth": "{secret_auth}""#),
            &["ends early", "line 1"],
        );
        expect_error(
            &format!(r#"{{"auths": {{"reg.io": {{"password": "{SECRET}" "username": "u"}}}}}}"#),
            &["not valid JSON", "fix the JSON syntax"],
        );
        expect_error("", &["ends early"]);
        expect_error(
            &format!("\"{SECRET}\""),
            &["a string, not a JSON object", "auths"],
        );
        expect_error(r#"{"auths": ["x"]}"#, &["\"auths\"", "an array"]);
        expect_error(
            &format!(r#"{{"auths": {{"reg.io": "{SECRET}"}}}}"#),
            &["\"reg.io\"", "a string"],
        );
        expect_error(
            r#"{"auths": {"reg.io": {"username": "u", "password": 1234}}}"#,
            &["\"reg.io\"", "\"password\"", "must be a string"],
        );
        expect_error(
            &format!(r#"{{"auths": {{"https:///v2/": {{"auth": "{secret_auth}"}}}}}}"#),
            &["\"https:///v2/\"", "not a registry"],
        );
        expect_error(
            &format!(r#"{{"auths": {{"reg.io:http": {{"auth": "{secret_auth}"}}}}}}"#),
            &["\"reg.io:http\"", "HOST:PORT"],
        );
    }

    #[test]
    fn debug_output_is_redacted() {
        let config = config_with(&[("reg.io", "user")]);
        let rendered = format!("{config:?} {:?}", config.lookup("reg.io", "r"));
        assert!(rendered.contains("user"));
        assert!(!rendered.contains("pw-user"), "{rendered}");
        let tokens = format!(
            "{:?} {:?}",
            Credential::IdentityToken(SECRET.into()),
            Credential::RegistryToken(SECRET.into())
        );
        assert!(!tokens.contains(SECRET), "{tokens}");
    }

    fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-zA-Z0-9:=+/_ .*-]{0,12}".prop_map(serde_json::Value::from),
            // Valid base64 of "user:pass"-like text, so decoding paths are exercised.
            "[a-z:]{0,8}".prop_map(|text| serde_json::Value::from(b64(&text))),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("auths".to_string()),
                        Just("auth".to_string()),
                        Just("Username".to_string()),
                        Just("password".to_string()),
                        Just("identitytoken".to_string()),
                        Just("registrytoken".to_string()),
                        Just("credHelpers".to_string()),
                        "[a-z.:*/]{0,10}",
                    ],
                    inner,
                    0..5
                )
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn parsing_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = DockerConfig::parse_config_json(&bytes);
            let _ = DockerConfig::parse_dockercfg(&bytes);
        }

        #[test]
        fn parsing_never_panics_on_arbitrary_json(
            document in arbitrary_json(),
            registry in "[a-z.:*]{0,10}",
            repository in "[a-z/]{0,10}",
        ) {
            let bytes = document.to_string().into_bytes();
            if let Ok(config) = DockerConfig::parse_config_json(&bytes) {
                let _ = config.lookup(&registry, &repository);
            }
            if let Ok(config) = DockerConfig::parse_dockercfg(&bytes) {
                let _ = config.lookup(&registry, &repository);
            }
        }
    }
}
