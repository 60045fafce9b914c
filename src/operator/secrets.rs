//! Secrets referenced by a BundleCopy: registry credentials, CA certificates and HTTP proxies,
//! read only from the resource's own namespace. Parsing is pure; `read_endpoints` does the reads.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::crd::{BundleCopySpec, Endpoint};
use super::reason::Reason;
use bundlecopy_engine::credentials::DockerConfig;
use bundlecopy_engine::{EndpointOptions, ProxyOptions};

pub const TYPE_DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
pub const KEY_DOCKER_CONFIG_JSON: &str = ".dockerconfigjson";
pub const TYPE_DOCKERCFG: &str = "kubernetes.io/dockercfg";
pub const KEY_DOCKERCFG: &str = ".dockercfg";
/// Keys of a `proxySecretRef` Secret (as Flux's source-controller reads them).
pub const KEY_PROXY_ADDRESS: &str = "address";
pub const KEY_PROXY_USERNAME: &str = "username";
pub const KEY_PROXY_PASSWORD: &str = "password";

/// A Secret that is missing or unusable: only a change of the Secret or the spec helps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SecretProblem {
    /// `SecretNotFound` or `InvalidSecret`.
    pub reason: Reason,
    /// Names the Secret, the spec field that refers to it and what is wrong; never its data.
    pub message: String,
}

impl SecretProblem {
    fn invalid(field: &str, name: &str, what: impl std::fmt::Display) -> Self {
        SecretProblem {
            reason: Reason::InvalidSecret,
            message: format!("{field}: Secret {name:?} {what}"),
        }
    }
}

/// Registry credentials from a `kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg`
/// Secret. `field` names the spec field that refers to it, for the message.
pub fn registry_credentials(secret: &Secret, field: &str) -> Result<DockerConfig, SecretProblem> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    let (key, parse): (&str, fn(&[u8]) -> _) = match type_ {
        TYPE_DOCKER_CONFIG_JSON => (KEY_DOCKER_CONFIG_JSON, DockerConfig::parse_config_json),
        TYPE_DOCKERCFG => (KEY_DOCKERCFG, DockerConfig::parse_dockercfg),
        other => {
            return Err(SecretProblem::invalid(
                field,
                name,
                format_args!(
                    "has type {other}; registry credentials need type {TYPE_DOCKER_CONFIG_JSON} (key \
                     {KEY_DOCKER_CONFIG_JSON}) or {TYPE_DOCKERCFG} (key {KEY_DOCKERCFG}), as made by \
                     `kubectl create secret docker-registry`"
                ),
            ));
        }
    };
    let bytes = secret_value(secret, key).ok_or_else(|| {
        SecretProblem::invalid(
            field,
            name,
            format_args!(
                "of type {type_} has no key {key}; put the Docker config under {key}, as \
                 `kubectl create secret docker-registry` does"
            ),
        )
    })?;
    parse(bytes)
        .map_err(|error| SecretProblem::invalid(field, name, format_args!("key {key}: {error}")))
}

/// PEM CA certificates from `key` of a Secret of any type, checked to be X.509 certificates.
pub fn ca_certificates(secret: &Secret, key: &str, field: &str) -> Result<Vec<u8>, SecretProblem> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let fix = format!(
        "put the registry's CA certificates (PEM) under key {key}, or name another key in {field}.key"
    );
    let pem = secret_value(secret, key).ok_or_else(|| {
        SecretProblem::invalid(field, name, format_args!("has no key {key}; {fix}"))
    })?;
    bundlecopy_engine::validate_ca_pem(pem).map_err(|problem| {
        SecretProblem::invalid(field, name, format_args!("key {key}: {problem}; {fix}"))
    })?;
    Ok(pem.to_vec())
}

/// An HTTP proxy from a Secret of any type: `address`, optional `username` and `password`.
/// Messages name the keys, never their values.
pub fn proxy(secret: &Secret, field: &str) -> Result<ProxyOptions, SecretProblem> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let text = |key: &str| -> Result<Option<&str>, SecretProblem> {
        secret_value(secret, key)
            .map(|bytes| {
                std::str::from_utf8(bytes).map_err(|_| {
                    SecretProblem::invalid(field, name, format_args!("key {key} is not UTF-8 text"))
                })
            })
            .transpose()
    };
    let address = text(KEY_PROXY_ADDRESS)?.ok_or_else(|| {
        SecretProblem::invalid(
            field,
            name,
            format_args!(
                "has no key {KEY_PROXY_ADDRESS}; put the proxy's URL there                  (http://proxy.example:3128), and optionally {KEY_PROXY_USERNAME} and {KEY_PROXY_PASSWORD}"
            ),
        )
    })?;
    let proxy = ProxyOptions::parse(address).map_err(|problem| {
        SecretProblem::invalid(
            field,
            name,
            format_args!("key {KEY_PROXY_ADDRESS}: {problem}"),
        )
    })?;
    match (text(KEY_PROXY_USERNAME)?, text(KEY_PROXY_PASSWORD)?) {
        (Some(username), password) if !username.is_empty() => {
            Ok(proxy.with_credentials(username, password))
        }
        (_, Some(_)) => Err(SecretProblem::invalid(
            field,
            name,
            format_args!(
                "has a {KEY_PROXY_PASSWORD} but no {KEY_PROXY_USERNAME}; add the user name under key {KEY_PROXY_USERNAME}"
            ),
        )),
        _ => Ok(proxy),
    }
}

fn secret_value<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|value| value.0.as_slice())
}

/// Why the Secrets of a spec could not be turned into endpoint options.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Problem(#[from] SecretProblem),
    /// The API request itself failed (not a missing Secret); worth retrying.
    #[error("reading Secret {name:?}: {source}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Reads every Secret the spec refers to (each once, in spec order: source credentials, source
/// CA, source proxy, then the same for the destination) and builds both endpoints' options.
pub async fn read_endpoints(
    secrets: &Api<Secret>,
    spec: &BundleCopySpec,
) -> Result<(EndpointOptions, EndpointOptions), ReadError> {
    let mut cache: HashMap<String, Secret> = HashMap::new();
    let source = read_endpoint(secrets, &spec.source, "spec.source", &mut cache).await?;
    let destination =
        read_endpoint(secrets, &spec.destination, "spec.destination", &mut cache).await?;
    Ok((source, destination))
}

/// Reads the Secrets of one endpoint (a mirror's source) and builds its options; `field` names
/// it in messages (`spec.source`).
pub async fn read_one_endpoint(
    secrets: &Api<Secret>,
    endpoint: &Endpoint,
    field: &str,
) -> Result<EndpointOptions, ReadError> {
    read_endpoint(secrets, endpoint, field, &mut HashMap::new()).await
}

async fn read_endpoint(
    secrets: &Api<Secret>,
    endpoint: &Endpoint,
    field: &str,
    cache: &mut HashMap<String, Secret>,
) -> Result<EndpointOptions, ReadError> {
    let mut configs = Vec::with_capacity(endpoint.credentials.len());
    for reference in &endpoint.credentials {
        let field = format!("{field}.credentials");
        let secret = fetch(secrets, &reference.name, &field, cache).await?;
        configs.push(registry_credentials(secret, &field)?);
    }
    let ca_pem = match &endpoint.ca_secret_ref {
        Some(reference) => {
            let field = format!("{field}.caSecretRef");
            let secret = fetch(secrets, &reference.name, &field, cache).await?;
            Some(ca_certificates(secret, &reference.key, &field)?)
        }
        None => None,
    };
    let proxy = match &endpoint.proxy_secret_ref {
        Some(reference) => {
            let field = format!("{field}.proxySecretRef");
            let secret = fetch(secrets, &reference.name, &field, cache).await?;
            Some(proxy(secret, &field)?)
        }
        None => None,
    };
    Ok(EndpointOptions {
        insecure: endpoint.insecure,
        ca_pem,
        proxy,
        provider: endpoint.provider.engine(),
        credentials: if configs.is_empty() {
            DockerConfig::default()
        } else {
            DockerConfig::merge(configs)
        },
    })
}

async fn fetch<'a>(
    secrets: &Api<Secret>,
    name: &str,
    field: &str,
    cache: &'a mut HashMap<String, Secret>,
) -> Result<&'a Secret, ReadError> {
    if !cache.contains_key(name) {
        let secret = secrets
            .get_opt(name)
            .await
            .map_err(|source| ReadError::Api {
                name: name.to_string(),
                source,
            })?
            .ok_or_else(|| SecretProblem {
                reason: Reason::SecretNotFound,
                message: format!(
                    "{field}: Secret {name:?} was not found in this namespace; create it or fix the name"
                ),
            })?;
        cache.insert(name.to_string(), secret);
    }
    // Inserted just above when absent.
    cache.get(name).ok_or_else(|| {
        ReadError::Problem(SecretProblem {
            reason: Reason::SecretNotFound,
            message: format!("{field}: Secret {name:?} was not found"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

    const FIELD: &str = "spec.destination.credentials";

    fn secret(type_: Option<&str>, data: &[(&str, &[u8])]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("push".into()),
                ..Default::default()
            },
            type_: type_.map(str::to_string),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    fn problem(result: Result<DockerConfig, SecretProblem>) -> SecretProblem {
        result.expect_err("expected a problem")
    }

    // "user:s3cret-pass" in base64.
    const GOOD_JSON: &[u8] = br#"{"auths":{"localhost:5003":{"auth":"dXNlcjpzM2NyZXQtcGFzcw=="}}}"#;

    #[test]
    fn dockerconfigjson_is_read_from_its_key() {
        let config = registry_credentials(
            &secret(
                Some(TYPE_DOCKER_CONFIG_JSON),
                &[(KEY_DOCKER_CONFIG_JSON, GOOD_JSON)],
            ),
            FIELD,
        )
        .unwrap();
        assert!(!config.is_empty());
        assert_eq!(config.lookup("localhost:5003", "team/hello").len(), 1);
    }

    #[test]
    fn dockercfg_is_read_from_its_key() {
        let legacy: &[u8] = br#"{"localhost:5003":{"auth":"dXNlcjpzM2NyZXQtcGFzcw=="}}"#;
        let config = registry_credentials(
            &secret(Some(TYPE_DOCKERCFG), &[(KEY_DOCKERCFG, legacy)]),
            FIELD,
        )
        .unwrap();
        assert_eq!(config.lookup("localhost:5003", "team/hello").len(), 1);
    }

    #[test]
    fn wrong_type_is_named_with_the_fix() {
        for type_ in [None, Some("Opaque"), Some("kubernetes.io/basic-auth")] {
            let found = problem(registry_credentials(
                &secret(type_, &[(KEY_DOCKER_CONFIG_JSON, GOOD_JSON)]),
                FIELD,
            ));
            assert_eq!(found.reason, Reason::InvalidSecret);
            let shown = type_.unwrap_or("Opaque");
            assert!(
                found.message.contains(&format!("has type {shown}")),
                "{}",
                found.message
            );
            assert!(
                found.message.contains("\"push\"") && found.message.contains(FIELD),
                "{}",
                found.message
            );
            assert!(found.message.contains(TYPE_DOCKER_CONFIG_JSON));
        }
    }

    #[test]
    fn missing_key_is_named() {
        let found = problem(registry_credentials(
            &secret(Some(TYPE_DOCKER_CONFIG_JSON), &[(KEY_DOCKERCFG, GOOD_JSON)]),
            FIELD,
        ));
        assert_eq!(found.reason, Reason::InvalidSecret);
        assert!(
            found.message.contains("has no key .dockerconfigjson"),
            "{}",
            found.message
        );
        let no_data = Secret {
            data: None,
            ..secret(Some(TYPE_DOCKERCFG), &[])
        };
        assert!(
            problem(registry_credentials(&no_data, FIELD))
                .message
                .contains("has no key .dockercfg")
        );
    }

    #[test]
    fn bad_contents_are_invalid_without_leaking_them() {
        let cases: [(&str, &[u8]); 3] = [
            ("bad JSON", b"{\"auths\": {\"localhost:5003\": s3cret-pass"),
            (
                "bad base64",
                br#"{"auths":{"localhost:5003":{"auth":"%%%s3cret-pass%%%"}}}"#,
            ),
            // "user:" — an empty password is allowed, an empty user name is not: ":s3cret-pass"
            (
                "empty username",
                br#"{"auths":{"localhost:5003":{"auth":"OnMzY3JldC1wYXNz"}}}"#,
            ),
        ];
        for (name, data) in cases {
            let found = problem(registry_credentials(
                &secret(
                    Some(TYPE_DOCKER_CONFIG_JSON),
                    &[(KEY_DOCKER_CONFIG_JSON, data)],
                ),
                FIELD,
            ));
            assert_eq!(found.reason, Reason::InvalidSecret, "{name}");
            assert!(
                found.message.contains("key .dockerconfigjson"),
                "{name}: {}",
                found.message
            );
            assert!(
                !found.message.contains("s3cret"),
                "{name} leaks the secret: {}",
                found.message
            );
        }
    }

    #[test]
    fn proxy_secrets_give_an_address_and_optional_credentials() {
        const FIELD: &str = "spec.source.proxySecretRef";
        let plain = proxy(
            &secret(None, &[("address", b"http://proxy.corp:3128")]),
            FIELD,
        )
        .unwrap();
        assert_eq!(plain.address(), "http://proxy.corp:3128");
        assert!(!plain.has_credentials());
        let with = proxy(
            &secret(
                Some("Opaque"),
                &[
                    ("address", b"proxy.corp:3128"),
                    ("username", b"alice"),
                    ("password", b"s3cret-proxy-pass"),
                ],
            ),
            FIELD,
        )
        .unwrap();
        assert!(with.has_credentials());
        assert!(!format!("{with:?}").contains("s3cret"), "{with:?}");

        for (data, expected) in [
            (&[("username", &b"alice"[..])][..], "has no key address"),
            (
                &[("address", &b"socks5://alice:s3cret-proxy-pass@p:1"[..])][..],
                "socks5 proxies are not supported",
            ),
            (
                &[("address", &b"http://p:1/path?s3cret-proxy-pass"[..])][..],
                "without a path",
            ),
            (
                &[
                    ("address", &b"http://p:1"[..]),
                    ("password", b"s3cret-proxy-pass"),
                ][..],
                "no username",
            ),
            (
                &[("address", &b"\xff\xfe"[..])][..],
                "key address is not UTF-8",
            ),
        ] {
            let found = proxy(&secret(None, data), FIELD).unwrap_err();
            assert_eq!(found.reason, Reason::InvalidSecret);
            assert!(
                found.message.contains(expected) && found.message.contains(FIELD),
                "{}",
                found.message
            );
            assert!(!found.message.contains("s3cret"), "{}", found.message);
        }
    }

    #[test]
    fn ca_pem_must_hold_certificates() {
        let garbage = secret(Some("Opaque"), &[("ca.crt", b"not a certificate at all")]);
        let found =
            ca_certificates(&garbage, "ca.crt", "spec.destination.caSecretRef").unwrap_err();
        assert_eq!(found.reason, Reason::InvalidSecret);
        assert!(
            found.message.contains("key ca.crt") && found.message.contains("no PEM certificate"),
            "{}",
            found.message
        );

        let broken_der = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let found =
            ca_certificates(&secret(None, &[("ca.crt", broken_der)]), "ca.crt", "f").unwrap_err();
        assert!(
            found.message.contains("not a valid X.509 certificate"),
            "{}",
            found.message
        );

        let missing = ca_certificates(&garbage, "tls.crt", "f").unwrap_err();
        assert!(
            missing.message.contains("has no key tls.crt"),
            "{}",
            missing.message
        );

        let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let pem = ca.cert.pem();
        let good = secret(Some("kubernetes.io/tls"), &[("ca.crt", pem.as_bytes())]);
        assert_eq!(
            ca_certificates(&good, "ca.crt", "f").unwrap(),
            pem.as_bytes()
        );
    }
}
