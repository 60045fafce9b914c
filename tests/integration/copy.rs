//! Copy scenarios against real registries: every transport, every kind of authentication, every
//! bundle shape, and the outcomes that must fail. Each success checks that the destination holds
//! every manifest and blob of the bundle under the source's digest.
//! `cargo test --test integration copy_`

use bundlecopy_engine::credentials::DockerConfig;
use bundlecopy_engine::{CopyError, ErrorKind, Side};
use bundlecopy_engine::{CopyOutcome, CopyRequest, EndpointOptions, Progress, copy_bundle};

use crate::support::bundle::ConfigManifestForm;
use crate::support::{
    BundleSpec, ImageFormat, PushedBundle, RegistryKind, TestRegistry, assert_bundle_copied,
    push_bundle, push_plain_image, run_cli, skopeo_inspect_raw,
};

/// How the engine reaches a test registry: its CA when it has TLS, its credentials when it needs them.
pub(crate) fn endpoint(registry: &TestRegistry) -> EndpointOptions {
    EndpointOptions {
        insecure: false,
        ca_pem: registry.ca_pem().map(|pem| pem.as_bytes().to_vec()),
        credentials: if registry.requires_auth() {
            DockerConfig::parse_config_json(registry.docker_config_json().as_bytes()).unwrap()
        } else {
            DockerConfig::default()
        },
        proxy: None,
        provider: Default::default(),
    }
}

pub(crate) fn request(
    source: String,
    destination: String,
    src: EndpointOptions,
    dst: EndpointOptions,
) -> CopyRequest {
    bundlecopy_engine::install_crypto_provider();
    CopyRequest {
        source,
        destination,
        source_endpoint: src,
        destination_endpoint: dst,
        ..CopyRequest::default()
    }
}

/// Run the CLI off the async runtime, so registries' token servers and clients keep running.
pub(crate) async fn cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

async fn copy(request: &CopyRequest) -> Result<CopyOutcome, CopyError> {
    copy_bundle(request, &Progress::default()).await
}

/// A small bundle with one component and a blob shared between its images.
pub(crate) fn small_bundle(name: &str) -> BundleSpec {
    BundleSpec::new(name, "0.1.0")
        .with_component("db", ImageFormat::Oci, &[3000, 7000])
        .with_shared_layer(5000)
}

fn assert_outcome_matches(outcome: &CopyOutcome, pushed: &PushedBundle, destination: &str) {
    assert_eq!(outcome.source_digest, pushed.index_digest);
    assert_eq!(outcome.destination_digest, pushed.index_digest);
    assert_eq!(outcome.destination, destination);
    let repository = destination.split(':').collect::<Vec<_>>();
    let repository =
        destination[..destination.len() - repository.last().unwrap().len() - 1].to_string();
    // The relocation map names every image of bundle.json, relocated into the destination repository.
    assert_eq!(
        outcome.relocation_map.len(),
        pushed.original_image_refs.len()
    );
    for image in &outcome.images {
        assert!(
            image
                .relocated
                .starts_with(&format!("{repository}@sha256:")),
            "{} relocated to {}",
            image.image,
            image.relocated
        );
        assert_eq!(outcome.relocation_map[&image.image], image.relocated);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_http_to_http_with_the_cli_and_skopeo_reads_the_copy() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_bundle(&src, "team/hello", "v1", &small_bundle("hello")).await;

    let destination = format!("{}/mirror", dst.host());
    let (code, stdout, stderr) = cli(&[
        "copy",
        "--source",
        &pushed.reference,
        "--destination",
        &destination,
    ])
    .await;
    assert_eq!(code, 0, "stderr: {stderr}");
    // Porter's derivation: registry/org + the source's last path segment and tag.
    let expected = format!("{}/mirror/hello:v1@{}", dst.host(), pushed.index_digest);
    assert_eq!(stdout.trim(), expected);
    assert!(stderr.contains("Copied hello 0.1.0"), "{stderr}");
    // Not a terminal: plain progress lines, the last one with the final counts.
    let last_progress = stderr
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with("blobs: "))
        .unwrap_or_else(|| panic!("no progress line: {stderr}"));
    let counts = |prefix: &str| {
        let rest = &last_progress[last_progress.find(prefix).unwrap() + prefix.len()..];
        let fraction = rest.split([' ', ',']).next().unwrap().to_string();
        let (done, all) = fraction.split_once('/').unwrap();
        (done.to_string(), all.to_string())
    };
    for prefix in ["blobs: ", "manifests: "] {
        let (done, all) = counts(prefix);
        assert_eq!(done, all, "{prefix}in the last progress line: {stderr}");
    }
    assert_bundle_copied(
        &src,
        "team/hello",
        &dst,
        "mirror/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;

    // An independent reader sees the same index bytes.
    let raw = tokio::task::spawn_blocking({
        let dst_ref = "mirror/hello:v1".to_string();
        move || skopeo_inspect_raw(&dst, &dst_ref)
    })
    .await
    .unwrap();
    assert_eq!(raw, pushed.index_bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_http_to_tls_with_insecure_registry_flag() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Tls).await;
    let pushed = push_bundle(&src, "hello", "v1", &small_bundle("hello")).await;
    let (source, destination) = (
        pushed.reference.clone(),
        format!("{}/tls/hello:v2", dst.host()),
    );
    let (code, stdout, stderr) = cli(&[
        "copy",
        "--source",
        &source,
        "--destination",
        &destination,
        "--insecure-registry",
    ])
    .await;
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(stdout.contains(&pushed.index_digest));
    assert_bundle_copied(&src, "hello", &dst, "tls/hello", "v2", &pushed.index_digest).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_http_to_tls_with_destination_ca_file_verifies_on_loopback() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Tls).await;
    let pushed = push_bundle(&src, "hello", "v1", &small_bundle("hello")).await;
    let ca = dst.ca_file().unwrap();
    let (source, destination) = (
        pushed.reference.clone(),
        format!("localhost:{}/verified", dst.port()),
    );
    let (code, _, stderr) = cli(&[
        "copy",
        "--source",
        &source,
        "--destination",
        &destination,
        "--destination-ca-file",
        ca.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_bundle_copied(
        &src,
        "hello",
        &dst,
        "verified/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_to_tls_with_basic_auth_from_docker_config() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::TlsBasicAuth).await;
    let pushed = push_bundle(&src, "hello", "v1", &small_bundle("hello")).await;
    let ca = dst.ca_file().unwrap();
    let config_dir = dst.docker_config_dir();
    let (source, destination) = (pushed.reference.clone(), format!("{}/private", dst.host()));
    let (code, _, stderr) = cli(&[
        "copy",
        "--source",
        &source,
        "--destination",
        &destination,
        "--destination-ca-file",
        ca.to_str().unwrap(),
        "--docker-config",
        config_dir.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_bundle_copied(
        &src,
        "hello",
        &dst,
        "private/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_to_token_auth_registry_with_password_and_with_identity_token() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Token).await;
    let pushed = push_bundle(&src, "hello", "v1", &small_bundle("hello")).await;

    let outcome = copy(&request(
        pushed.reference.clone(),
        format!("{}/tok", dst.host()),
        endpoint(&src),
        endpoint(&dst),
    ))
    .await
    .unwrap();
    let destination = format!("{}/tok/hello:v1", dst.host());
    assert_outcome_matches(&outcome, &pushed, &destination);
    assert_bundle_copied(&src, "hello", &dst, "tok/hello", "v1", &pushed.index_digest).await;
    // Tokens are cached per scope: far fewer token requests than registry requests.
    let token_requests = dst.token_server().unwrap().request_count();
    assert!(
        token_requests <= 6,
        "{token_requests} token requests for one copy"
    );

    // An identity token (OAuth2 refresh token) works as well, through the POST flow.
    let mut with_identity = endpoint(&dst);
    with_identity.credentials =
        DockerConfig::parse_config_json(dst.docker_config_json_with_identity_token().as_bytes())
            .unwrap();
    let outcome = copy(&request(
        pushed.reference.clone(),
        format!("{}/oauth", dst.host()),
        endpoint(&src),
        with_identity,
    ))
    .await
    .unwrap();
    assert!(!outcome.up_to_date);
    assert_bundle_copied(
        &src,
        "hello",
        &dst,
        "oauth/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_from_tls_source_with_insecure_to_http() {
    let src = TestRegistry::start(RegistryKind::Tls).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_bundle(&src, "hello", "v1", &small_bundle("hello")).await;
    let mut insecure = endpoint(&src);
    insecure.insecure = true;
    insecure.ca_pem = None;
    let outcome = copy(&request(
        pushed.reference.clone(),
        dst.host(),
        insecure,
        endpoint(&dst),
    ))
    .await
    .unwrap();
    // Our rule: a bare host:port destination is a registry (Porter would read Docker Hub library/host).
    assert_outcome_matches(&outcome, &pushed, &format!("{}/hello:v1", dst.host()));
    assert_bundle_copied(&src, "hello", &dst, "hello", "v1", &pushed.index_digest).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_within_one_registry_mounts_every_blob() {
    let registry = TestRegistry::start(RegistryKind::Token).await;
    let pushed = push_bundle(&registry, "source/hello", "v1", &small_bundle("hello")).await;
    let progress = Progress::default();
    let outcome = copy_bundle(
        &request(
            pushed.reference.clone(),
            format!("{}/other", registry.host()),
            endpoint(&registry),
            endpoint(&registry),
        ),
        &progress,
    )
    .await
    .unwrap();
    let p = outcome.progress;
    assert_eq!(p.blobs, pushed.blobs.len() as u64);
    assert_eq!((p.mounted, p.copied, p.bytes), (p.blobs, 0, 0), "{p:?}");
    assert_bundle_copied(
        &registry,
        "source/hello",
        &registry,
        "other/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_repeated_is_up_to_date_and_moves_nothing() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_bundle(&src, "hello", "v1", &small_bundle("hello")).await;
    let req = request(
        pushed.reference.clone(),
        format!("{}/again", dst.host()),
        endpoint(&src),
        endpoint(&dst),
    );
    let first = copy(&req).await.unwrap();
    assert!(!first.up_to_date);
    assert_eq!(first.progress.copied, pushed.blobs.len() as u64);
    assert_eq!(
        first.progress.bytes,
        pushed.blobs.iter().map(|b| b.1).sum::<u64>()
    );
    let second = copy(&req).await.unwrap();
    assert!(second.up_to_date);
    assert_eq!((second.progress.copied, second.progress.bytes), (0, 0));
    assert_eq!(second.destination_digest, pushed.index_digest);
    assert_eq!(second.relocation_map, first.relocation_map);
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_refuses_a_different_bundle_at_the_tag_unless_forced() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    let first = push_bundle(&src, "hello", "v1", &small_bundle("hello")).await;
    let second = push_bundle(&src, "hello", "v2", &small_bundle("hello").with_seed(7)).await;
    assert_ne!(first.index_digest, second.index_digest);
    let destination = format!("{}/mirror/hello:stable", dst.host());
    copy(&request(
        first.reference.clone(),
        destination.clone(),
        endpoint(&src),
        endpoint(&dst),
    ))
    .await
    .unwrap();

    let mut req = request(
        second.reference.clone(),
        destination.clone(),
        endpoint(&src),
        endpoint(&dst),
    );
    let error = copy(&req).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DestinationExists, "{error}");
    assert!(error.to_string().contains(&first.index_digest), "{error}");
    // Nothing changed at the destination.
    assert_bundle_copied(
        &src,
        "hello",
        &dst,
        "mirror/hello",
        "stable",
        &first.index_digest,
    )
    .await;

    req.force = true;
    let outcome = copy(&req).await.unwrap();
    assert_eq!(outcome.destination_digest, second.index_digest);
    assert_bundle_copied(
        &src,
        "hello",
        &dst,
        "mirror/hello",
        "stable",
        &second.index_digest,
    )
    .await;

    // The CLI says what to do.
    let (source, destination) = (first.reference.clone(), destination.clone());
    let (code, _, stderr) =
        cli(&["copy", "--source", &source, "--destination", &destination]).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--force") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

/// Every bundle shape the copy must keep byte for byte, by name.
pub(crate) fn bundle_shapes() -> [(&'static str, BundleSpec); 6] {
    [
        (
            "multiarch",
            BundleSpec::new("multiarch", "1.0.0")
                .with_multi_arch_invocation(ImageFormat::Oci, &[2000, 4000]),
        ),
        (
            "mixed",
            BundleSpec::new("mixed", "1.0.0")
                .with_invocation(ImageFormat::Docker, &[1000])
                .with_component("docker-one", ImageFormat::Docker, &[1500])
                .with_component("oci-one", ImageFormat::Oci, &[2500])
                .with_multi_arch_component("multi", ImageFormat::Docker, &[800])
                .with_shared_layer(9000),
        ),
        (
            "listindex",
            BundleSpec::new("listindex", "1.0.0").with_index_as_docker_manifest_list(),
        ),
        (
            "schema2config",
            BundleSpec::new("schema2config", "1.0.0")
                .with_config_manifest_form(ConfigManifestForm::DockerSchema2),
        ),
        (
            "ociconfig",
            BundleSpec::new("ociconfig", "1.0.0")
                .with_config_manifest_form(ConfigManifestForm::OciImageConfig),
        ),
        (
            "porter",
            BundleSpec::new("porter", "1.0.0").with_porter_stamp(false),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_every_bundle_shape_keeps_every_digest() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    for (name, spec) in bundle_shapes() {
        let pushed = push_bundle(&src, &format!("shapes/{name}"), "v1", &spec).await;
        let outcome = copy(&request(
            pushed.reference.clone(),
            format!("{}/copied", dst.host()),
            endpoint(&src),
            endpoint(&dst),
        ))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_outcome_matches(
            &outcome,
            &pushed,
            &format!("{}/copied/{name}:v1", dst.host()),
        );
        assert_eq!(outcome.bundle.name, name);
        assert_bundle_copied(
            &src,
            &format!("shapes/{name}"),
            &dst,
            &format!("copied/{name}"),
            "v1",
            &pushed.index_digest,
        )
        .await;
        // The index keeps its media type (OCI index or Docker manifest list).
        let (_, media_type, _) = dst
            .client()
            .get_manifest(&format!("copied/{name}"), "v1")
            .await
            .unwrap();
        assert_eq!(media_type, pushed.index_media_type, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_by_digest_needs_a_tagged_destination() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_bundle(&src, "hello", "v1", &small_bundle("hello")).await;
    let by_digest = format!("{}/hello@{}", src.host(), pushed.index_digest);
    let error = copy(&request(
        by_digest.clone(),
        format!("{}/org", dst.host()),
        endpoint(&src),
        endpoint(&dst),
    ))
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidSpec, "{error}");
    assert!(error.to_string().contains("tag"), "{error}");
    copy(&request(
        by_digest,
        format!("{}/org/hello:pinned", dst.host()),
        endpoint(&src),
        endpoint(&dst),
    ))
    .await
    .unwrap();
    assert_bundle_copied(
        &src,
        "hello",
        &dst,
        "org/hello",
        "pinned",
        &pushed.index_digest,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_failures_have_their_reasons() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let tls = TestRegistry::start(RegistryKind::Tls).await;
    let auth = TestRegistry::start(RegistryKind::TlsBasicAuth).await;
    let token = TestRegistry::start(RegistryKind::Token).await;
    let pushed = push_bundle(&src, "hello", "v1", &small_bundle("hello")).await;
    let image = push_plain_image(&src, "plain/image", "v1").await;

    // A plain image is not a bundle.
    let error = copy(&request(
        image.reference.clone(),
        format!("{}/x", tls.host()),
        endpoint(&src),
        endpoint(&tls),
    ))
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotABundle, "{error}");

    // A missing tag.
    let error = copy(&request(
        format!("{}/hello:nope", src.host()),
        format!("{}/x", tls.host()),
        endpoint(&src),
        endpoint(&tls),
    ))
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::SourceNotFound, "{error}");
    assert_eq!(error.side(), Some(Side::Source));

    // A wrong password, for Basic and for token auth; the password never shows.
    for registry in [&auth, &token] {
        let mut wrong = endpoint(registry);
        wrong.credentials = DockerConfig::parse_config_json(
            format!(
                r#"{{"auths":{{"{}":{{"username":"{}","password":"Wrong-Pa55word"}}}}}}"#,
                registry.host(),
                registry.username()
            )
            .as_bytes(),
        )
        .unwrap();
        let error = copy(&request(
            pushed.reference.clone(),
            format!("{}/x", registry.host()),
            endpoint(&src),
            wrong,
        ))
        .await
        .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::AuthenticationFailed, "{error}");
        assert_eq!(error.side(), Some(Side::Destination));
        assert!(!error.to_string().contains("Wrong-Pa55word"), "{error}");
    }
    // No credentials at all.
    let mut none = endpoint(&auth);
    none.credentials = DockerConfig::default();
    let error = copy(&request(
        pushed.reference.clone(),
        format!("{}/x", auth.host()),
        endpoint(&src),
        none,
    ))
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::AuthenticationFailed, "{error}");

    // An untrusted certificate: a CA that did not sign it, and a TLS registry reached as loopback
    // plain HTTP without insecure or a CA.
    let mut wrong_ca = endpoint(&tls);
    wrong_ca.ca_pem = Some(
        std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_else(|_| {
            rcgen::generate_simple_self_signed(vec!["other".into()])
                .unwrap()
                .cert
                .pem()
                .into_bytes()
        }),
    );
    let error = copy(&request(
        pushed.reference.clone(),
        format!("localhost:{}/x", tls.port()),
        endpoint(&src),
        wrong_ca,
    ))
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Tls, "{error}");
    assert!(error.to_string().contains("not trusted"), "{error}");
    let mut no_ca = endpoint(&tls);
    no_ca.ca_pem = None;
    let error = copy(&request(
        pushed.reference.clone(),
        format!("{}/x", tls.host()),
        endpoint(&src),
        no_ca,
    ))
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Tls, "{error}");

    // Nothing listening.
    let error = copy(&request(
        pushed.reference.clone(),
        "127.0.0.1:1/x".into(),
        endpoint(&src),
        EndpointOptions::default(),
    ))
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unreachable, "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_cli_errors_are_one_line_with_the_fix() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let tls = TestRegistry::start(RegistryKind::Tls).await;
    let pushed = push_bundle(&src, "hello", "v1", &small_bundle("hello")).await;
    let (source, destination) = (pushed.reference.clone(), format!("{}/x", tls.host()));
    let (code, stdout, stderr) =
        cli(&["copy", "--source", &source, "--destination", &destination]).await;
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    let error_lines: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "{stderr}");
    assert!(
        error_lines[0].contains("--destination-ca-file")
            && error_lines[0].contains("--destination-insecure"),
        "{stderr}"
    );

    let (code, _, stderr) = cli(&["copy", "--source", "Not/A Ref", "--destination", "x"]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("invalid reference"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_reports_the_bundle_and_cnab_to_oci_relocation_map() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_bundle(&src, "team/hello", "v1", &small_bundle("hello")).await;
    let reference = pushed.reference.clone();
    let (code, stdout, stderr) = cli(&["inspect", &reference, "--output", "json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["digest"], pushed.index_digest);
    assert_eq!(report["bundle"]["name"], "hello");
    assert_eq!(report["bundle"]["version"], "0.1.0");
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0]["name"], "invocation");
    let map = report["relocationMap"].as_object().unwrap();
    for (name, original) in &pushed.original_image_refs {
        let relocated = map[original].as_str().unwrap();
        let expected = if name == "invocation" {
            &pushed.invocation_image_ref
        } else {
            &pushed.image_refs[name]
        };
        assert_eq!(relocated, expected, "{name}");
    }
}
