//! Tests of the harness itself: the registries, the token server, the bundle builder's wire
//! format, the closure check and the fault proxy. `cargo test --test integration harness`

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::FutureExt;
use reqwest::StatusCode;

use crate::support::bundle::{
    ConfigManifestForm, IndexDescriptor, cnab_index_bytes, config_manifest_bytes, push_bundle_with,
};
use crate::support::check::run_with_timeout;
use crate::support::client::{DOCKER_MANIFEST_LIST, OCI_INDEX};
use crate::support::token::jwt_claims;
use crate::support::{
    BundleSpec, ImageFormat, PushedBundle, RegistryClient, RegistryKind, TestRegistry, TokenServer,
    assert_bundle_copied, push_bundle, push_plain_image, sha256_digest, skopeo_inspect_raw,
};
use crate::support::{DockerConfig, Fault, FaultProxy, PathKind, Rule};

#[tokio::test]
async fn harness_every_registry_kind_starts_and_answers() {
    for kind in RegistryKind::ALL {
        let registry = TestRegistry::start(kind).await;
        let expected_scheme = if kind.uses_tls() {
            "https://"
        } else {
            "http://"
        };
        assert_eq!(
            registry.url_base(),
            format!("{expected_scheme}127.0.0.1:{}", registry.port())
        );

        let anonymous = registry
            .anonymous_client()
            .http()
            .get(format!("{}/v2/", registry.url_base()))
            .send()
            .await
            .unwrap();
        let challenge = anonymous
            .headers()
            .get("www-authenticate")
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        match kind {
            RegistryKind::Plain | RegistryKind::Tls => {
                assert_eq!(anonymous.status(), StatusCode::OK, "{kind:?}")
            }
            RegistryKind::TlsBasicAuth => {
                assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
                assert!(challenge.starts_with("Basic "), "{challenge}");
            }
            RegistryKind::Token => {
                assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
                let realm = registry.token_server().unwrap().realm();
                assert!(
                    challenge.starts_with(&format!("Bearer realm=\"{realm}\"")),
                    "{challenge}"
                );
            }
        }
        assert_eq!(registry.client().ping().await, StatusCode::OK, "{kind:?}");

        // TLS is real: without the test CA the handshake fails.
        if kind.uses_tls() {
            let untrusting = RegistryClient::new(&registry.url_base(), None, None);
            let refused = untrusting
                .http()
                .get(format!("{}/v2/", registry.url_base()))
                .send()
                .await;
            assert!(refused.is_err(), "{kind:?} accepted without the CA");
            let ca_file = std::fs::read_to_string(registry.ca_file().unwrap()).unwrap();
            assert_eq!(ca_file, registry.ca_pem().unwrap());
            assert!(registry.cert_dir().unwrap().join("ca.crt").exists());
        } else {
            assert!(registry.ca_pem().is_none() && registry.ca_file().is_none());
        }

        // Docker config: the right auth for host(), nothing for registries without auth.
        let config_path = registry.docker_config_dir().join("config.json");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(config_path).unwrap()).unwrap();
        let entry = &config["auths"][registry.host()];
        if kind.requires_auth() {
            let decoded = STANDARD.decode(entry["auth"].as_str().unwrap()).unwrap();
            assert_eq!(
                String::from_utf8(decoded).unwrap(),
                format!("{}:{}", registry.username(), registry.password())
            );
        } else {
            assert!(entry.is_null(), "{config}");
        }
    }
}

/// The bundle builder reproduces cnab-to-oci's bytes exactly (vectors from cnab-to-oci v0.6.1
/// push_test.go, and the derived fallback forms; see porter-copy-spec §3 and vectors/README.md).
#[test]
fn harness_wire_format_matches_cnab_to_oci_vectors() {
    const EXPECTED_INDEX: &str = r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:122a5dc186ec285488de9d25e99c96a11d3f7ff71c6e05a06c98e8627472a920","size":189,"annotations":{"io.cnab.manifest.type":"config"}},{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"sha256:d59a1aa7866258751a261bae525a1842c7ff0662d4f34a355d5f36826abc0343","size":506,"annotations":{"io.cnab.manifest.type":"invocation"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:d59a1aa7866258751a261bae525a1842c7ff0662d4f34a355d5f36826abc0342","size":507,"annotations":{"io.cnab.component.name":"another-image","io.cnab.manifest.type":"component"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:d59a1aa7866258751a261bae525a1842c7ff0662d4f34a355d5f36826abc0341","size":507,"annotations":{"io.cnab.component.name":"image-1","io.cnab.manifest.type":"component"}}],"annotations":{"io.cnab.keywords":"[\"keyword1\",\"keyword2\"]","io.cnab.runtime_version":"v1.0.0","org.opencontainers.artifactType":"application/vnd.cnab.manifest.v1","org.opencontainers.image.authors":"[{\"name\":\"docker\",\"email\":\"docker@docker.com\",\"url\":\"docker.com\"}]","org.opencontainers.image.description":"description","org.opencontainers.image.title":"my-app","org.opencontainers.image.version":"0.1.0"}}"#;
    const EXPECTED_CONFIG_MANIFEST: &str = r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.cnab.config.v1+json","digest":"sha256:dbe3480b9cb300f389e8d02e4a682f9107772468feb6845f912dc8deed6d76fd","size":1596},"layers":null}"#;
    const EXPECTED_SCHEMA2_CONFIG_MANIFEST: &str = "{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"application/vnd.docker.distribution.manifest.v2+json\",\n   \"config\": {\n      \"mediaType\": \"application/vnd.docker.container.image.v1+json\",\n      \"size\": 1596,\n      \"digest\": \"sha256:dbe3480b9cb300f389e8d02e4a682f9107772468feb6845f912dc8deed6d76fd\"\n   },\n   \"layers\": [\n      {\n         \"mediaType\": \"application/vnd.docker.container.image.v1+json\",\n         \"size\": 1596,\n         \"digest\": \"sha256:dbe3480b9cb300f389e8d02e4a682f9107772468feb6845f912dc8deed6d76fd\"\n      }\n   ]\n}";
    // The embedded copies are the published vectors, byte for byte.
    assert_eq!(
        sha256_digest(EXPECTED_INDEX.as_bytes()),
        "sha256:00043ca96c3c9470fc0f647c67613ddf500941556d1ecc14d75bc9b2834f66c3"
    );
    assert_eq!(
        sha256_digest(EXPECTED_CONFIG_MANIFEST.as_bytes()),
        "sha256:122a5dc186ec285488de9d25e99c96a11d3f7ff71c6e05a06c98e8627472a920"
    );
    assert_eq!(
        sha256_digest(EXPECTED_SCHEMA2_CONFIG_MANIFEST.as_bytes()),
        "sha256:2e1d4789d0a80f5a28aa8c3e53d4698d6d8c2495af9360d69d6394de50cc13d9"
    );

    let bundle_digest = "sha256:dbe3480b9cb300f389e8d02e4a682f9107772468feb6845f912dc8deed6d76fd";
    let (config, config_type) =
        config_manifest_bytes(ConfigManifestForm::OciCnabConfig, bundle_digest, 1596);
    assert_eq!(String::from_utf8(config).unwrap(), EXPECTED_CONFIG_MANIFEST);
    assert_eq!(config_type, "application/vnd.oci.image.manifest.v1+json");
    let (schema2, schema2_type) =
        config_manifest_bytes(ConfigManifestForm::DockerSchema2, bundle_digest, 1596);
    assert_eq!(
        String::from_utf8(schema2).unwrap(),
        EXPECTED_SCHEMA2_CONFIG_MANIFEST
    );
    assert_eq!(
        schema2_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let (oci_image_config, _) =
        config_manifest_bytes(ConfigManifestForm::OciImageConfig, bundle_digest, 1596);
    assert_eq!(
        sha256_digest(&oci_image_config),
        "sha256:a8226bab57a5c40e38c7fc0472085645b1282d7e83af317cc38232ad84df8a74"
    );

    // Rebuild the index from its parsed content through the builder's serializer.
    let parsed: serde_json::Value = serde_json::from_str(EXPECTED_INDEX).unwrap();
    let descriptors: Vec<IndexDescriptor> = parsed["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|descriptor| IndexDescriptor {
            media_type: descriptor["mediaType"].as_str().unwrap().to_owned(),
            digest: descriptor["digest"].as_str().unwrap().to_owned(),
            size: descriptor["size"].as_u64().unwrap(),
            annotations: serde_json::from_value(descriptor["annotations"].clone()).unwrap(),
        })
        .collect();
    let annotations: BTreeMap<String, String> =
        serde_json::from_value(parsed["annotations"].clone()).unwrap();
    let index = cnab_index_bytes(&descriptors, &annotations, false);
    assert_eq!(String::from_utf8(index).unwrap(), EXPECTED_INDEX);
    let docker_list = cnab_index_bytes(&descriptors, &annotations, true);
    assert_eq!(
        sha256_digest(&docker_list),
        "sha256:a519b50f6162e2c7191b3fbfeb8bc5a920eb1d40012317f627aa5d5187314db1",
        "{}",
        String::from_utf8_lossy(&docker_list)
    );
}

/// Shapes every bundle test may need; each is checked below.
fn every_bundle_shape() -> Vec<(&'static str, BundleSpec)> {
    vec![
        ("default", BundleSpec::new("default", "0.1.0")),
        (
            "rich",
            BundleSpec::new("rich", "1.2.3")
                .with_seed(2)
                .with_multi_arch_invocation(ImageFormat::Oci, &[5000, 7000])
                .with_component("db", ImageFormat::Docker, &[3000])
                .with_component("api", ImageFormat::Oci, &[6000, 100])
                .with_shared_layer(9000)
                .with_porter_stamp(true),
        ),
        (
            "docker-lists",
            BundleSpec::new("docker-lists", "2.0.0")
                .with_seed(3)
                .with_multi_arch_invocation(ImageFormat::Docker, &[4000])
                .with_multi_arch_component("web", ImageFormat::Oci, &[2000]),
        ),
        (
            "fallback",
            BundleSpec::new("fallback", "0.0.1")
                .with_seed(4)
                .with_component("cache", ImageFormat::Oci, &[1000])
                .with_index_as_docker_manifest_list()
                .with_config_manifest_form(ConfigManifestForm::DockerSchema2),
        ),
        (
            "oci-image-config",
            BundleSpec::new("oci-image-config", "0.0.2")
                .with_seed(5)
                .with_config_manifest_form(ConfigManifestForm::OciImageConfig),
        ),
        (
            "ghost-component",
            BundleSpec::new("ghost-component", "0.0.3")
                .with_seed(6)
                .with_component("real", ImageFormat::Oci, &[1000])
                .with_component_missing_from_bundle_json("ghost"),
        ),
        (
            // Over the in-memory limit: hashed, then streamed.
            "big-layer",
            BundleSpec::new("big-layer", "0.0.4")
                .with_seed(7)
                .with_invocation(ImageFormat::Oci, &[9 << 20, 10]),
        ),
    ]
}

fn check_bundle_shape(label: &str, spec: &BundleSpec, pushed: &PushedBundle) {
    let index: serde_json::Value = serde_json::from_slice(&pushed.index_bytes).unwrap();
    let keys: Vec<&String> = index.as_object().unwrap().keys().collect();
    if spec.index_as_docker_manifest_list {
        assert_eq!(pushed.index_media_type, DOCKER_MANIFEST_LIST);
        assert!(
            pushed.index_bytes.ends_with(
                br#"},"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json"}"#
            ),
            "{label}: mediaType must be the last member"
        );
    } else {
        assert_eq!(pushed.index_media_type, OCI_INDEX);
        assert!(
            pushed
                .index_bytes
                .starts_with(br#"{"schemaVersion":2,"manifests":[{"#),
            "{label}"
        );
        assert!(
            !keys.contains(&&"mediaType".to_owned()),
            "{label}: {keys:?}"
        );
    }
    let descriptors = index["manifests"].as_array().unwrap();
    let types: Vec<&str> = descriptors
        .iter()
        .map(|descriptor| {
            descriptor["annotations"]["io.cnab.manifest.type"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(types[0], "config", "{label}");
    assert_eq!(types[1], "invocation", "{label}");
    assert!(
        types[2..].iter().all(|kind| *kind == "component"),
        "{label}"
    );
    let component_names: Vec<&str> = descriptors[2..]
        .iter()
        .map(|descriptor| {
            descriptor["annotations"]["io.cnab.component.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    let mut sorted = component_names.clone();
    sorted.sort();
    assert_eq!(
        component_names, sorted,
        "{label}: components sorted by name"
    );
    assert_eq!(
        index["annotations"]["org.opencontainers.artifactType"],
        "application/vnd.cnab.manifest.v1"
    );
    assert_eq!(
        index["annotations"]["org.opencontainers.image.title"],
        spec.name
    );
    assert_eq!(
        index["annotations"]["org.opencontainers.image.version"],
        spec.version
    );

    let bundle: serde_json::Value = serde_json::from_slice(&pushed.bundle_json).unwrap();
    assert_eq!(
        pushed.bundle_json,
        serde_json::to_vec(&bundle).unwrap(),
        "{label}: bundle.json is compact with sorted keys"
    );
    assert_eq!(
        bundle["invocationImages"][0]["contentDigest"], descriptors[1]["digest"],
        "{label}"
    );
    assert_eq!(
        bundle["invocationImages"][0]["size"],
        descriptors[1]["size"]
    );
    assert_eq!(
        bundle["invocationImages"][0]["mediaType"],
        descriptors[1]["mediaType"]
    );
    for (descriptor, name) in descriptors[2..].iter().zip(&component_names) {
        let image = &bundle["images"][*name];
        if spec.component_missing_from_bundle_json.as_deref() == Some(*name) {
            assert!(
                image.is_null(),
                "{label}: {name} must be missing from bundle.json"
            );
        } else {
            assert_eq!(
                image["contentDigest"], descriptor["digest"],
                "{label} {name}"
            );
            assert_eq!(
                image["mediaType"], descriptor["mediaType"],
                "{label} {name}"
            );
            assert!(image["description"].is_string());
        }
    }
    assert_eq!(
        bundle["custom"]["sh.porter"]["preserveTags"].as_bool(),
        spec.porter_stamp,
        "{label}"
    );
    assert_eq!(sha256_digest(&pushed.index_bytes), pushed.index_digest);
}

#[tokio::test]
async fn harness_every_bundle_shape_pushes_and_is_closed() {
    let registry = TestRegistry::start(RegistryKind::Plain).await;
    let client = registry.client();
    for (label, spec) in every_bundle_shape() {
        let repo = format!("shapes/{label}");
        let pushed = push_bundle(&registry, &repo, "v1", &spec).await;
        check_bundle_shape(label, &spec, &pushed);
        let (bytes, content_type, digest) = client.get_manifest(&repo, "v1").await.unwrap();
        assert_eq!(bytes, pushed.index_bytes, "{label}");
        assert_eq!(content_type, pushed.index_media_type, "{label}");
        assert_eq!(digest, pushed.index_digest, "{label}");
        assert_bundle_copied(
            &registry,
            &repo,
            &registry,
            &repo,
            "v1",
            &pushed.index_digest,
        )
        .await;
        for (manifest_digest, media_type) in &pushed.manifests {
            let (_, served_type, _) = client.get_manifest(&repo, manifest_digest).await.unwrap();
            assert_eq!(&served_type, media_type, "{label} {manifest_digest}");
        }
        for (blob_digest, size) in &pushed.blobs {
            assert_eq!(
                client.blob_size(&repo, blob_digest).await,
                Some(*size),
                "{label}"
            );
        }
    }

    // The shared layer really is one blob in several images.
    let spec = BundleSpec::new("shared", "1.0.0")
        .with_seed(11)
        .with_multi_arch_invocation(ImageFormat::Oci, &[100])
        .with_component("one", ImageFormat::Docker, &[200])
        .with_shared_layer(12_345);
    let pushed = push_bundle(&registry, "shapes/shared", "v1", &spec).await;
    let shared: Vec<&(String, u64)> = pushed
        .blobs
        .iter()
        .filter(|(_, size)| *size == 12_345)
        .collect();
    assert_eq!(shared.len(), 1, "{:?}", pushed.blobs);
    let mut manifests_with_shared = 0;
    for (digest, _) in &pushed.manifests {
        let (bytes, _, _) = client.get_manifest("shapes/shared", digest).await.unwrap();
        if String::from_utf8_lossy(&bytes).contains(&shared[0].0) {
            manifests_with_shared += 1;
        }
    }
    assert_eq!(manifests_with_shared, 3, "amd64 + arm64 + component");

    // Same spec, seed and repository, same digests; another seed, other digests. (The
    // invocation image's original ref in bundle.json names the repository.)
    let again = push_bundle(&registry, "shapes/shared", "again", &spec).await;
    assert_eq!(again.index_digest, pushed.index_digest);
    let reseeded = push_bundle(
        &registry,
        "shapes/shared",
        "reseeded",
        &spec.clone().with_seed(12),
    )
    .await;
    assert_ne!(reseeded.index_digest, pushed.index_digest);

    // A plain image is not a bundle.
    let image = push_plain_image(&registry, "plain/app", "1.0").await;
    let (bytes, content_type, digest) = client.get_manifest("plain/app", "1.0").await.unwrap();
    assert_eq!(
        (bytes, content_type, digest),
        (image.manifest_bytes, image.media_type, image.digest)
    );
}

#[tokio::test]
async fn harness_bundle_check_detects_a_missing_blob_and_a_wrong_tag() {
    let registry = TestRegistry::start(RegistryKind::Plain).await;
    let spec = BundleSpec::new("broken", "1.0.0").with_component("c", ImageFormat::Oci, &[4096]);
    let pushed = push_bundle(&registry, "check/broken", "v1", &spec).await;
    let other = push_bundle(&registry, "check/other", "v1", &spec.clone().with_seed(99)).await;

    let wrong_digest = AssertUnwindSafe(assert_bundle_copied(
        &registry,
        "check/broken",
        &registry,
        "check/broken",
        "v1",
        &other.index_digest,
    ))
    .catch_unwind()
    .await;
    let message = panic_message(wrong_digest.expect_err("a wrong index digest must fail"));
    assert!(message.contains("resolves to"), "{message}");

    let layer = pushed
        .blobs
        .iter()
        .find(|(_, size)| *size == 4096)
        .unwrap()
        .0
        .clone();
    registry.client().delete_blob("check/broken", &layer).await;
    let missing = AssertUnwindSafe(assert_bundle_copied(
        &registry,
        "check/broken",
        &registry,
        "check/broken",
        "v1",
        &pushed.index_digest,
    ))
    .catch_unwind()
    .await;
    let message = panic_message(missing.expect_err("a missing layer must fail"));
    assert!(
        message.contains(&layer) && message.contains("missing"),
        "{message}"
    );
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|text| text.to_string()))
        .unwrap_or_default()
}

#[tokio::test]
async fn harness_skopeo_reads_the_pushed_index_byte_for_byte() {
    for kind in RegistryKind::ALL {
        let registry = TestRegistry::start(kind).await;
        let spec = BundleSpec::new("skopeo", "1.0.0")
            .with_component("one", ImageFormat::Oci, &[1000])
            .with_porter_stamp(false);
        let pushed = push_bundle(&registry, "peer/skopeo", "v1", &spec).await;
        let raw = skopeo_inspect_raw(&registry, "peer/skopeo:v1");
        assert_eq!(raw, pushed.index_bytes, "{kind:?}");
        let by_digest = skopeo_inspect_raw(
            &registry,
            &format!("peer/skopeo@{}", pushed.config_manifest_digest),
        );
        assert_eq!(by_digest, pushed.config_manifest_bytes, "{kind:?}");
    }
}

#[tokio::test]
async fn harness_token_registry_refuses_anonymous_pushes_and_accepts_tokens() {
    let registry = TestRegistry::start(RegistryKind::Token).await;
    let token_server = registry.token_server().unwrap();
    let upload_url = format!("{}/v2/tokens/app/blobs/uploads/", registry.url_base());
    let http = registry.anonymous_client().http().clone();

    // Anonymous: a Bearer challenge naming the push scope, and no token without credentials.
    let anonymous = http.post(&upload_url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let challenge = anonymous.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    // Distribution lists the actions in Go map order: either order is right.
    assert!(
        challenge.contains("scope=\"repository:tokens/app:pull,push\"")
            || challenge.contains("scope=\"repository:tokens/app:push,pull\""),
        "{challenge}"
    );
    let token_url = format!(
        "{}?service={}&scope=repository:tokens/app:pull,push",
        token_server.realm(),
        token_server.service()
    );
    let no_credentials = http.get(&token_url).send().await.unwrap();
    assert_eq!(no_credentials.status(), StatusCode::UNAUTHORIZED);
    let wrong_password = http
        .get(&token_url)
        .basic_auth(registry.username(), Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_password.status(), StatusCode::UNAUTHORIZED);
    let anonymous_client = registry.anonymous_client();
    let refused = AssertUnwindSafe(anonymous_client.send(
        reqwest::Method::POST,
        "/v2/tokens/app/blobs/uploads/",
        "tokens/app",
        Default::default(),
        None,
    ))
    .catch_unwind()
    .await;
    assert!(refused.is_err(), "an anonymous client must not get a token");

    // With the harness credentials: a real push, then token reuse for the same repository.
    let issued_before = token_server.tokens_issued();
    let client = registry.client();
    let digest = client
        .put_blob("tokens/app", b"hello through a token")
        .await;
    assert!(client.head_blob("tokens/app", &digest).await);
    assert_eq!(
        client.get_blob("tokens/app", &digest).await,
        b"hello through a token"
    );
    let issued_after_first = token_server.tokens_issued();
    assert!(issued_after_first > issued_before);
    client.put_blob("tokens/app", b"second blob").await;
    assert_eq!(
        token_server.tokens_issued(),
        issued_after_first,
        "token reused"
    );
    let scopes = token_server.requested_scopes();
    assert!(
        scopes
            .iter()
            .any(|scope| scope == "repository:tokens/app:pull,push"
                || scope == "repository:tokens/app:push,pull"),
        "{scopes:?}"
    );

    // The registry really checks the JWT: scope, and signer.
    let bearer = |token: String| format!("Bearer {token}");
    let pull_only = http
        .post(&upload_url)
        .header(
            "authorization",
            bearer(token_server.issue_token(&["repository:tokens/app:pull"])),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        pull_only.status(),
        StatusCode::UNAUTHORIZED,
        "pull-only token pushed"
    );
    let stranger = TokenServer::start("x", "y", token_server.service(), token_server.issuer());
    let forged = http
        .post(&upload_url)
        .header(
            "authorization",
            bearer(stranger.issue_token(&["repository:tokens/app:pull,push"])),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        forged.status(),
        StatusCode::UNAUTHORIZED,
        "token from an unknown signer accepted"
    );
    let good = http
        .post(&upload_url)
        .header(
            "authorization",
            bearer(token_server.issue_token(&["repository:tokens/app:pull,push"])),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), StatusCode::ACCEPTED);

    // OAuth2 POST forms, as Docker Hub accepts: password grant, then refresh with the identity
    // token; a wrong refresh token is refused.
    let form = |pairs: &[(&str, &str)]| {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    };
    let post_form = |body: String| {
        http.post(token_server.realm())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let scope = "repository:tokens/app:pull,push";
    let password_grant = post_form(form(&[
        ("grant_type", "password"),
        ("username", registry.username()),
        ("password", registry.password()),
        ("service", token_server.service()),
        ("scope", scope),
        ("client_id", "bundlecopy-test"),
    ]))
    .await
    .unwrap();
    assert_eq!(password_grant.status(), StatusCode::OK);
    let answer: serde_json::Value =
        serde_json::from_slice(&password_grant.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["refresh_token"], token_server.identity_token());
    let identity_token = token_server.identity_token();
    let refresh_grant = post_form(form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", identity_token.as_str()),
        ("service", token_server.service()),
        ("scope", scope),
        ("client_id", "bundlecopy-test"),
    ]))
    .await
    .unwrap();
    assert_eq!(refresh_grant.status(), StatusCode::OK);
    let answer: serde_json::Value =
        serde_json::from_slice(&refresh_grant.bytes().await.unwrap()).unwrap();
    let access_token = answer["access_token"].as_str().unwrap().to_owned();
    let claims = jwt_claims(&access_token);
    assert_eq!(claims["aud"], token_server.service());
    assert_eq!(claims["access"][0]["name"], "tokens/app");
    let with_refreshed = http
        .post(&upload_url)
        .header("authorization", bearer(access_token))
        .send()
        .await
        .unwrap();
    assert_eq!(with_refreshed.status(), StatusCode::ACCEPTED);
    let bad_refresh = post_form(form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", "not-the-identity-token"),
        ("service", token_server.service()),
    ]))
    .await
    .unwrap();
    assert_eq!(bad_refresh.status(), StatusCode::UNAUTHORIZED);

    // A copy between two auth registries, one behind a proxy, needs one config with all three.
    let basic = TestRegistry::start(RegistryKind::TlsBasicAuth).await;
    let proxy = FaultProxy::start(&basic);
    let combined = DockerConfig::new()
        .with_registry(&registry)
        .with_registry(&basic)
        .with_host_as(&proxy.host(), &basic)
        .write_dir();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(combined.path().join("config.json")).unwrap())
            .unwrap();
    let auths = config["auths"].as_object().unwrap();
    assert_eq!(auths.len(), 3, "{config}");
    for host in [registry.host(), basic.host(), proxy.host()] {
        let decoded = STANDARD
            .decode(auths[&host]["auth"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, b"testuser:testpass-Secret42");
    }
    assert_eq!(proxy.client(&basic).ping().await, StatusCode::OK);

    // The identity-token Docker config names this registry.
    let config: serde_json::Value =
        serde_json::from_str(&registry.docker_config_json_with_identity_token()).unwrap();
    assert_eq!(
        config["auths"][registry.host()]["identitytoken"],
        token_server.identity_token()
    );
}

#[tokio::test]
async fn harness_stop_and_start_again_keep_port_and_data() {
    for kind in [RegistryKind::Plain, RegistryKind::TlsBasicAuth] {
        let registry = TestRegistry::start(kind).await;
        let spec =
            BundleSpec::new("restart", "1.0.0").with_component("c", ImageFormat::Docker, &[500]);
        let pushed = push_bundle(&registry, "restart/bundle", "v1", &spec).await;
        let port = registry.port();

        registry.stop();
        assert!(!registry.is_running());
        let down = registry
            .client()
            .http()
            .get(format!("{}/v2/", registry.url_base()))
            .send()
            .await;
        assert!(down.is_err(), "{kind:?}: still answering after stop()");

        registry.start_again().await;
        assert_eq!(registry.port(), port);
        assert_eq!(registry.client().ping().await, StatusCode::OK);
        assert_bundle_copied(
            &registry,
            "restart/bundle",
            &registry,
            "restart/bundle",
            "v1",
            &pushed.index_digest,
        )
        .await;
    }
}

#[test]
fn harness_run_with_timeout_captures_output_and_kills_at_the_timeout() {
    let mut command = std::process::Command::new("sh");
    command.args(["-c", "echo out; echo err >&2; exit 3"]);
    let output = run_with_timeout(command, std::time::Duration::from_secs(10));
    assert_eq!(output.code, 3);
    assert_eq!(output.stdout, b"out\n");
    assert_eq!(output.stderr, b"err\n");

    let started = std::time::Instant::now();
    let mut sleeper = std::process::Command::new("sleep");
    sleeper.arg("30");
    let output = run_with_timeout(sleeper, std::time::Duration::from_millis(300));
    assert_eq!(output.code, -1);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&output.stderr).contains("killed after"));
    assert!(crate::support::bundlecopy_bin().exists());
}

#[tokio::test]
async fn harness_proxy_passes_through_and_rewrites_locations() {
    let registry = TestRegistry::start(RegistryKind::Plain).await;
    let proxy = FaultProxy::start(&registry);
    let via_proxy = RegistryClient::new(&proxy.url_base(), None, None);

    // The registry answers with absolute upload URLs naming itself; the client sees the proxy.
    let started = via_proxy
        .http()
        .post(format!(
            "{}/v2/through/proxy/blobs/uploads/",
            proxy.url_base()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let location = started.headers()["location"].to_str().unwrap();
    assert!(location.starts_with(&proxy.url_base()), "{location}");

    let spec = BundleSpec::new("proxied", "1.0.0")
        .with_component("c", ImageFormat::Oci, &[70_000])
        .with_shared_layer(5000);
    let pushed = push_bundle_with(&via_proxy, &proxy.host(), "through/proxy", "v1", &spec).await;
    assert_bundle_copied(
        &registry,
        "through/proxy",
        &registry,
        "through/proxy",
        "v1",
        &pushed.index_digest,
    )
    .await;
    let blob_count = pushed.blobs.len();
    assert_eq!(
        proxy.count(&reqwest::Method::PUT, PathKind::Upload),
        blob_count
    );
    assert_eq!(
        proxy.count(&reqwest::Method::POST, PathKind::Upload),
        blob_count + 1
    );
    assert_eq!(
        proxy.count(&reqwest::Method::PUT, PathKind::Manifest),
        pushed.manifests.len() + 1
    );
    assert_eq!(proxy.counts()["PUT Manifest"], pushed.manifests.len() + 1);
    assert_eq!(proxy.faults_injected(), 0);
}

#[tokio::test]
async fn harness_proxy_injects_status_reset_corruption_truncation_stall_and_disconnect() {
    let registry = TestRegistry::start(RegistryKind::Plain).await;
    let blob = crate::support::bundle::GeneratedBlob::new(42, 300_000).bytes();
    let digest = registry.client().put_blob("faults/blob", &blob).await;
    let proxy = FaultProxy::start(&registry);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let blob_url = format!("{}/v2/faults/blob/blobs/{digest}", proxy.url_base());

    // 429 with Retry-After, twice, then through.
    proxy.add_rule(
        Rule::new(Fault::rate_limited())
            .kind(PathKind::Blob)
            .times(2),
    );
    for _ in 0..2 {
        let limited = http.get(&blob_url).send().await.unwrap();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()["retry-after"], "1");
    }
    let through = http.get(&blob_url).send().await.unwrap();
    assert_eq!(through.status(), StatusCode::OK);
    assert_eq!(through.bytes().await.unwrap(), blob);
    assert_eq!(proxy.remaining_rule_counts(), vec![Some(0)]);
    proxy.clear_rules();

    // 503 once, only for HEAD.
    proxy.add_rule(
        Rule::new(Fault::status(503))
            .method(reqwest::Method::HEAD)
            .once(),
    );
    assert_eq!(
        http.get(&blob_url).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        http.head(&blob_url).send().await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        http.head(&blob_url).send().await.unwrap().status(),
        StatusCode::OK
    );
    proxy.clear_rules();

    // Reset after 100 000 bytes: headers promise the whole blob, the body breaks off.
    proxy.add_rule(
        Rule::new(Fault::ResetAfter { bytes: 100_000 })
            .kind(PathKind::Blob)
            .once(),
    );
    let cut = http.get(&blob_url).send().await.unwrap();
    assert_eq!(cut.status(), StatusCode::OK);
    assert_eq!(cut.content_length(), Some(blob.len() as u64));
    assert!(cut.bytes().await.is_err(), "a reset body must fail to read");
    assert_eq!(
        http.get(&blob_url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        blob
    );

    // Corruption: same length, one byte flipped.
    proxy.add_rule(
        Rule::new(Fault::Corrupt { at: 150_000 })
            .kind(PathKind::Blob)
            .once(),
    );
    let corrupted = http
        .get(&blob_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(corrupted.len(), blob.len());
    assert_eq!(corrupted[150_000], blob[150_000] ^ 0xff);
    assert_ne!(sha256_digest(&corrupted), digest);

    // Truncation: a clean but short body.
    proxy.add_rule(
        Rule::new(Fault::Truncate { keep: 1000 })
            .kind(PathKind::Blob)
            .once(),
    );
    let short = http.get(&blob_url).send().await.unwrap();
    assert_eq!(short.content_length(), Some(1000));
    assert_eq!(short.bytes().await.unwrap(), blob[..1000]);

    // A stalled response trips a client timeout.
    proxy.add_rule(
        Rule::new(Fault::Stall {
            duration: std::time::Duration::from_millis(1500),
        })
        .kind(PathKind::Blob)
        .once(),
    );
    let stalled = http
        .get(&blob_url)
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    assert!(stalled.unwrap_err().is_timeout());
    // A body stalled midway: the headers arrive, the rest comes late.
    proxy.add_rule(
        Rule::new(Fault::StallBodyAfter {
            bytes: 1000,
            duration: std::time::Duration::from_millis(400),
        })
        .kind(PathKind::Blob)
        .once(),
    );
    let started = std::time::Instant::now();
    let slow = http
        .get(&blob_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(slow, blob);
    assert!(started.elapsed() >= std::time::Duration::from_millis(400));

    // A dropped connection: no response at all.
    proxy.add_rule(
        Rule::new(Fault::Disconnect)
            .path_contains("/manifests/")
            .once(),
    );
    let dropped = http
        .get(format!(
            "{}/v2/faults/blob/manifests/latest",
            proxy.url_base()
        ))
        .send()
        .await;
    assert!(dropped.is_err(), "{dropped:?}");

    assert_eq!(proxy.faults_injected(), 2 + 1 + 1 + 1 + 1 + 1 + 1 + 1);
    assert!(proxy.counts()["GET Blob"] >= 10, "{:?}", proxy.counts());
}

#[tokio::test]
async fn harness_proxy_redirects_blob_gets_to_a_storage_host_that_records_authorization() {
    let registry = TestRegistry::start(RegistryKind::TlsBasicAuth).await;
    let blob = b"served from blob storage".to_vec();
    let digest = registry.client().put_blob("redirect/app", &blob).await;
    let proxy = FaultProxy::start(&registry);
    proxy.add_rule(
        Rule::new(Fault::RedirectToStorage)
            .kind(PathKind::Blob)
            .method(reqwest::Method::GET),
    );

    // The test client follows the 307 and drops Authorization for the other port.
    let via_proxy = RegistryClient::new(
        &proxy.url_base(),
        None,
        Some((registry.username(), registry.password())),
    );
    assert_eq!(via_proxy.get_blob("redirect/app", &digest).await, blob);
    let storage = proxy.storage_requests();
    assert_eq!(storage.len(), 1, "{storage:?}");
    assert!(!storage[0].had_authorization);
    assert!(storage[0].path.starts_with(&format!("/storage/{digest}")));

    // The recording works both ways: a client that does send credentials is seen doing it.
    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = no_redirects
        .get(format!(
            "{}/v2/redirect/app/blobs/{digest}",
            proxy.url_base()
        ))
        .basic_auth(registry.username(), Some(registry.password()))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&proxy.storage_url_base()),
        "{location}"
    );
    let leaked = no_redirects
        .get(&location)
        .basic_auth(registry.username(), Some(registry.password()))
        .send()
        .await
        .unwrap();
    assert_eq!(leaked.bytes().await.unwrap(), blob);
    assert!(proxy.storage_requests()[1].had_authorization);
    // A signature serves once.
    let replay = no_redirects.get(&location).send().await.unwrap();
    assert_eq!(replay.status(), StatusCode::FORBIDDEN);
}
