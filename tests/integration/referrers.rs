//! Signed bundles stay verifiable: signatures, attestations and SBOMs (referrers) travel with
//! the bundle, byte for byte, and are found again at the destination the way they were found at
//! the source. Real registries throughout: distribution 2.8 has no referrers API, so it keeps
//! referrers with the `sha256-<hex>` tag schema; the registries "with the referrers API" are
//! distribution 2.8 behind the test proxy, which serves that API from the registry's own
//! storage (no registry with the API can be installed here: Debian, PyPI, npm and crates.io
//! offer none ready to run).
//! `cargo test --test integration referrers_`

use bundlecopy_engine::{CopyOutcome, CopyRequest, FoundBy, Progress, ReferrerSelection};
use reqwest::Method;
use serde_json::Value;

use crate::faults::{bounded, copy_request, direct, fast_settings, proxied};
use crate::support::check::skopeo;
use crate::support::referrers::{
    NOTARY_SIGNATURE, OCI_INDEX, PushedArtifact, SPDX_SBOM, Subject, add_to_tag_index,
    push_notation_signature, push_sbom, schema_tag, tag_index_digests,
};
use crate::support::{
    BundleSpec, Fault, FaultProxy, ImageFormat, PathKind, PushedBundle, RegistryClient,
    RegistryKind, Rule, TestRegistry, assert_bundle_copied, push_bundle, run_cli,
};

/// Two plain registries, the hello bundle at the first as `team/hello:v1`.
async fn hello_at_a_source() -> (TestRegistry, TestRegistry, PushedBundle) {
    let (src, dst) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    let pushed = push_bundle(&src, "team/hello", "v1", &hello()).await;
    (src, dst, pushed)
}

/// `bundlecopy copy --source SOURCE --destination DESTINATION EXTRA…`, run like `cli`.
async fn cli_copy(source: &str, destination: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args: Vec<String> = ["copy", "--source", source, "--destination", destination]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    cli(args).await
}

/// Run the CLI off the async runtime, so the proxies keep serving.
async fn cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

async fn copy(request: &CopyRequest) -> CopyOutcome {
    bounded(
        "the copy",
        bundlecopy_engine::copy_bundle(request, &Progress::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("copy failed: {e}"))
}

fn hello() -> BundleSpec {
    BundleSpec::new("hello", "0.1.0").with_component("db", ImageFormat::Oci, &[3000])
}

/// The bundle index as a subject.
fn index_subject(pushed: &PushedBundle) -> Subject {
    Subject::new(
        &pushed.index_media_type,
        &pushed.index_digest,
        &pushed.index_bytes,
    )
}

/// The `db` component's image manifest as a subject.
async fn component_subject(client: &RegistryClient, pushed: &PushedBundle) -> Subject {
    let digest = pushed.image_refs["db"]
        .split('@')
        .nth(1)
        .unwrap()
        .to_string();
    let (bytes, media_type, _) = client.get_manifest(&pushed.repo, &digest).await.unwrap();
    Subject::new(&media_type, &digest, &bytes)
}

/// A signed bundle: a Notation signature of the index, an SBOM of the `db` image, and a
/// signature of the SBOM (a referrer of a referrer).
struct Signed {
    signature: PushedArtifact,
    sbom: PushedArtifact,
    sbom_signature: PushedArtifact,
    db: Subject,
}

impl Signed {
    async fn push(client: &RegistryClient, pushed: &PushedBundle, tag_schema: bool) -> Signed {
        let repo = &pushed.repo;
        let db = component_subject(client, pushed).await;
        let signature =
            push_notation_signature(client, repo, &index_subject(pushed), "index").await;
        let sbom = push_sbom(client, repo, &db, "db").await;
        let sbom_signature =
            push_notation_signature(client, repo, &sbom.as_subject(), "sbom").await;
        if tag_schema {
            add_to_tag_index(client, repo, &pushed.index_digest, &[&signature]).await;
            add_to_tag_index(client, repo, &db.digest, &[&sbom]).await;
            add_to_tag_index(client, repo, &sbom.digest, &[&sbom_signature]).await;
        }
        Signed {
            signature,
            sbom,
            sbom_signature,
            db,
        }
    }

    fn all(&self) -> [&PushedArtifact; 3] {
        [&self.signature, &self.sbom, &self.sbom_signature]
    }
}

/// Each artifact is at the destination with the source's exact bytes.
async fn assert_artifacts_at(client: &RegistryClient, repo: &str, artifacts: &[&PushedArtifact]) {
    for artifact in artifacts {
        let (bytes, _, digest) = client
            .get_manifest(repo, &artifact.digest)
            .await
            .unwrap_or_else(|| panic!("{} is missing from {repo}", artifact.digest));
        assert_eq!(digest, artifact.digest);
        assert_eq!(bytes, artifact.bytes, "byte for byte");
    }
}

/// The referrers a report (CLI JSON) lists, as (digest, foundBy).
fn listed(report: &Value) -> Vec<(String, String)> {
    let mut listed: Vec<(String, String)> = report["referrers"]
        .as_array()
        .unwrap_or_else(|| panic!("no referrers in {report}"))
        .iter()
        .map(|r| {
            (
                r["digest"].as_str().unwrap().to_string(),
                r["foundBy"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    listed.sort();
    listed
}

/// `bundlecopy copy --source SOURCE --destination DESTINATION --output json`, which must
/// succeed: the referrers it reports, and its stderr.
async fn copy_listing(source: &str, destination: &str) -> (Vec<(String, String)>, String) {
    let (code, stdout, stderr) = cli_copy(source, destination, &["--output", "json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap();
    (listed(&result), stderr)
}

/// `bundlecopy inspect REFERENCE --output json`, which must succeed: the referrers it reports.
async fn inspect_listing(reference: &str) -> Vec<(String, String)> {
    let (code, stdout, stderr) = cli(vec![
        "inspect".into(),
        reference.into(),
        "--output".into(),
        "json".into(),
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    listed(&serde_json::from_str(&stdout).unwrap())
}

fn expected(artifacts: &[&PushedArtifact], found_by: &str) -> Vec<(String, String)> {
    let mut expected: Vec<(String, String)> = artifacts
        .iter()
        .map(|a| (a.digest.clone(), found_by.to_string()))
        .collect();
    expected.sort();
    expected
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_tag_schema_signatures_and_sbom_travel_and_are_found_again() {
    let (src, dst, pushed) = hello_at_a_source().await;
    let signed = Signed::push(&src.client(), &pushed, true).await;
    // Someone else's signature of the same bundle is already listed at the destination.
    let dst_client = dst.client();
    let foreign = push_notation_signature(
        &dst_client,
        "mirror/hello",
        &index_subject(&pushed),
        "theirs",
    )
    .await;
    add_to_tag_index(
        &dst_client,
        "mirror/hello",
        &pushed.index_digest,
        &[&foreign],
    )
    .await;
    let proxy = FaultProxy::start(&dst);

    let destination = format!("{}/mirror", proxy.host());
    let (listed_by_copy, stderr) = copy_listing(&pushed.reference, &destination).await;
    assert!(stderr.contains("and 3 signatures/attestations"), "{stderr}");
    assert_eq!(listed_by_copy, expected(&signed.all(), "TagSchema"));
    assert_bundle_copied(
        &src,
        "team/hello",
        &dst,
        "mirror/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
    assert_artifacts_at(&dst_client, "mirror/hello", &signed.all()).await;

    // The destination's index of the bundle keeps the foreign entry and gains ours; a subject
    // the destination had no index for gets the source's index, byte for byte.
    assert_eq!(
        tag_index_digests(&dst_client, "mirror/hello", &pushed.index_digest).await,
        [foreign.digest.clone(), signed.signature.digest.clone()]
    );
    let (source_index, _, _) = src
        .client()
        .get_manifest("team/hello", &schema_tag(&signed.db.digest))
        .await
        .unwrap();
    let (copied_index, _, _) = dst_client
        .get_manifest("mirror/hello", &schema_tag(&signed.db.digest))
        .await
        .unwrap();
    assert_eq!(copied_index, source_index);
    assert_eq!(
        tag_index_digests(&dst_client, "mirror/hello", &signed.sbom.digest).await,
        [signed.sbom_signature.digest.as_str()],
        "the referrer of the referrer is indexed too"
    );

    // Order: every referrer and index is written before the bundle's tag moves, which is last.
    let puts: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::PUT && r.kind == PathKind::Manifest)
        .map(|r| r.path_and_query)
        .collect();
    let tag_put = puts
        .iter()
        .position(|p| p.ends_with("/manifests/v1"))
        .unwrap_or_else(|| panic!("no PUT of the tag: {puts:?}"));
    assert_eq!(tag_put, puts.len() - 1, "the tag moves last: {puts:?}");
    let signature_put = puts
        .iter()
        .position(|p| p.ends_with(&signed.signature.digest))
        .unwrap();
    let index_put = puts
        .iter()
        .position(|p| p.ends_with(&pushed.index_digest))
        .unwrap_or_else(|| panic!("the index is pushed by digest before its referrers: {puts:?}"));
    assert!(index_put < signature_put, "{puts:?}");
    let sbom_put = puts
        .iter()
        .position(|p| p.ends_with(&signed.sbom.digest))
        .unwrap();
    let sbom_signature_put = puts
        .iter()
        .position(|p| p.ends_with(&signed.sbom_signature.digest))
        .unwrap();
    assert!(sbom_put < sbom_signature_put, "subject first: {puts:?}");

    // Found again at the destination the same way, with the foreign signature.
    let (code, stdout, stderr) = cli(vec![
        "inspect".into(),
        format!("{}/mirror/hello:v1", dst.host()),
        "--output".into(),
        "json".into(),
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let mut all = signed.all().to_vec();
    all.push(&foreign);
    assert_eq!(listed(&report), expected(&all, "TagSchema"));
    let (code, text, _) = cli(vec![
        "inspect".into(),
        format!("{}/mirror/hello:v1", dst.host()),
    ])
    .await;
    assert_eq!(code, 0);
    assert!(text.contains("Referrers:  4"), "{text}");
    assert!(
        text.contains(&format!(
            "{}  {SPDX_SBOM}  of {}  (TagSchema)",
            signed.sbom.digest, signed.db.digest
        )),
        "{text}"
    );

    // A repeat copy finds everything in place and writes nothing.
    let writes_before = proxy.count(&Method::PUT, PathKind::Manifest);
    let (code, _, stderr) = cli_copy(&pushed.reference, &destination, &[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("already holds this bundle and 3 signatures/attestations"),
        "{stderr}"
    );
    assert_eq!(
        proxy.count(&Method::PUT, PathKind::Manifest),
        writes_before,
        "nothing written again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_api_registries_list_them_without_tags() {
    let (src, dst, plain) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    let (src_proxy, dst_proxy) = (FaultProxy::start(&src), FaultProxy::start(&dst));
    src_proxy.serve_referrers_api(&src);
    dst_proxy.serve_referrers_api(&dst);
    let pushed = push_bundle(&src, "team/hello", "v1", &hello()).await;
    // Referrers pushed by digest only: the source lists them through its referrers API.
    let signed = Signed::push(&src.client(), &pushed, false).await;
    let source = format!("{}/team/hello:v1", src_proxy.host());

    let outcome = copy(&copy_request(
        source.clone(),
        format!("{}/mirror", dst_proxy.host()),
        proxied(&src_proxy, &src),
        proxied(&dst_proxy, &dst),
        fast_settings(),
    ))
    .await;
    let found = outcome.referrers.clone().unwrap();
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found.iter().all(|r| r.found_by == FoundBy::ReferrersApi));
    let dst_client = dst.client();
    assert_artifacts_at(&dst_client, "mirror/hello", &signed.all()).await;
    assert_eq!(
        dst_client.list_tags("mirror/hello").await,
        ["v1"],
        "a registry with the referrers API needs no tag-schema index"
    );
    assert!(
        dst_proxy.count(&Method::GET, PathKind::Referrers) == 0,
        "every push was acknowledged with OCI-Subject: the destination's API was never asked"
    );
    let listed = dst_proxy
        .client(&dst)
        .send(
            Method::GET,
            &format!("/v2/mirror/hello/referrers/{}", pushed.index_digest),
            "mirror/hello",
            Default::default(),
            None,
        )
        .await;
    let index: Value = serde_json::from_slice(&listed.bytes().await.unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"], signed.signature.digest,
        "{index}"
    );

    // From a registry with the API to one without: the tag schema lists them there.
    let outcome = copy(&copy_request(
        source,
        format!("{}/mirror", plain.host()),
        proxied(&src_proxy, &src),
        direct(&plain),
        fast_settings(),
    ))
    .await;
    assert_eq!(outcome.referrers.map(|r| r.len()), Some(3));
    let plain_client = plain.client();
    assert_artifacts_at(&plain_client, "mirror/hello", &signed.all()).await;
    assert_eq!(
        tag_index_digests(&plain_client, "mirror/hello", &pushed.index_digest).await,
        [signed.signature.digest.as_str()]
    );
    assert_eq!(
        tag_index_digests(&plain_client, "mirror/hello", &signed.sbom.digest).await,
        [signed.sbom_signature.digest.as_str()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_none_copies_none_and_types_select() {
    let (src, dst, pushed) = hello_at_a_source().await;
    let signed = Signed::push(&src.client(), &pushed, true).await;
    let copy_to = |repo: &str, extra: &'static [&'static str]| {
        let destination = format!("{}/{repo}/hello:v1", dst.host());
        let source = pushed.reference.clone();
        async move {
            let mut extra = extra.to_vec();
            extra.extend(["--output", "json"]);
            cli_copy(&source, &destination, &extra).await
        }
    };
    let dst_client = dst.client();

    let (code, stdout, stderr) = copy_to("none", &["--referrers", "none"]).await;
    assert_eq!(code, 0, "{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap();
    assert!(result.get("referrers").is_none(), "{result}");
    assert_eq!(dst_client.list_tags("none/hello").await, ["v1"]);
    for artifact in signed.all() {
        assert!(
            dst_client
                .head_manifest("none/hello", &artifact.digest)
                .await
                .is_none()
        );
    }

    let (code, stdout, stderr) =
        copy_to("signatures", &["--referrer-type", NOTARY_SIGNATURE]).await;
    assert_eq!(code, 0, "{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        listed(&result),
        expected(&[&signed.signature], "TagSchema"),
        "the SBOM is not a signature, and the signature on it stays with it"
    );
    assert!(
        dst_client
            .head_manifest("signatures/hello", &signed.sbom.digest)
            .await
            .is_none()
    );
    assert_eq!(
        tag_index_digests(&dst_client, "signatures/hello", &pushed.index_digest).await,
        [signed.signature.digest.as_str()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_added_at_the_source_later_arrive_with_the_next_copy() {
    let (src, dst, pushed) = hello_at_a_source().await;
    let client = src.client();
    let signature =
        push_notation_signature(&client, "team/hello", &index_subject(&pushed), "index").await;
    add_to_tag_index(&client, "team/hello", &pushed.index_digest, &[&signature]).await;
    let request = copy_request(
        pushed.reference.clone(),
        format!("{}/mirror", dst.host()),
        direct(&src),
        direct(&dst),
        fast_settings(),
    );
    let first = copy(&request).await;
    assert!(!first.up_to_date);
    assert_eq!(first.referrers.map(|r| r.len()), Some(1));

    // An SBOM attested after release.
    let db = component_subject(&client, &pushed).await;
    let sbom = push_sbom(&client, "team/hello", &db, "later").await;
    add_to_tag_index(&client, "team/hello", &db.digest, &[&sbom]).await;
    let second = copy(&request).await;
    assert!(second.up_to_date, "the bundle did not move");
    assert_eq!(second.referrers.map(|r| r.len()), Some(2));
    assert_eq!(
        second.progress.manifests_pushed, 1,
        "only the new SBOM is written; the signature already there is not counted"
    );
    assert_artifacts_at(&dst.client(), "mirror/hello", &[&signature, &sbom]).await;

    // Without referrers, an up-to-date bundle is not even walked.
    let bare = CopyRequest {
        referrers: ReferrerSelection::none(),
        ..request
    };
    let third = copy(&bare).await;
    assert!(third.up_to_date && third.referrers.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_one_that_cannot_be_read_fails_the_copy_and_names_the_way_out() {
    let (src, dst, pushed) = hello_at_a_source().await;
    let signed = Signed::push(&src.client(), &pushed, true).await;
    let proxy = FaultProxy::start(&src);
    proxy.add_rule(
        Rule::new(Fault::status(403))
            .method(Method::GET)
            .path_contains(&format!("/manifests/{}", signed.sbom.digest)),
    );
    let (source, destination) = (
        format!("{}/team/hello:v1", proxy.host()),
        format!("{}/mirror", dst.host()),
    );
    let (code, _, stderr) = cli_copy(&source, &destination, &[]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&signed.sbom.digest)
            && stderr.contains("referrer")
            && stderr.contains("--referrers none"),
        "{stderr}"
    );
    assert!(
        dst.client()
            .head_manifest("mirror/hello", "v1")
            .await
            .is_none(),
        "the tag does not move without its signatures"
    );
    let (code, _, stderr) = cli_copy(&source, &destination, &["--referrers", "none"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        dst.client()
            .head_manifest("mirror/hello", "v1")
            .await
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_a_destination_tag_that_is_no_index_is_left_alone() {
    let (src, dst, pushed) = hello_at_a_source().await;
    let client = src.client();
    let signature =
        push_notation_signature(&client, "team/hello", &index_subject(&pushed), "index").await;
    add_to_tag_index(&client, "team/hello", &pushed.index_digest, &[&signature]).await;
    // At the destination, the schema tag holds an image manifest (not an index).
    let dst_client = dst.client();
    let other = push_sbom(&dst_client, "mirror/hello", &index_subject(&pushed), "x").await;
    dst_client
        .put_manifest(
            "mirror/hello",
            &schema_tag(&pushed.index_digest),
            &other.bytes,
            crate::support::referrers::OCI_MANIFEST,
        )
        .await;
    let error = bounded(
        "the copy",
        bundlecopy_engine::copy_bundle(
            &copy_request(
                pushed.reference.clone(),
                format!("{}/mirror", dst.host()),
                direct(&src),
                direct(&dst),
                fast_settings(),
            ),
            &Progress::default(),
        ),
    )
    .await
    .unwrap_err();
    assert!(error.concerns_referrers(), "{error}");
    assert!(
        error
            .to_string()
            .contains(&schema_tag(&pushed.index_digest))
            && error.to_string().contains("not an index"),
        "{error}"
    );
    let (bytes, media_type, _) = dst_client
        .get_manifest("mirror/hello", &schema_tag(&pushed.index_digest))
        .await
        .unwrap();
    assert_eq!(bytes, other.bytes, "left as it was");
    assert_ne!(media_type, OCI_INDEX);
}

/// The entries of a layout directory's `index.json`, as (digest, tag, artifactType).
fn layout_entries(layout: &std::path::Path) -> Vec<(String, Option<String>, Option<String>)> {
    let bytes = std::fs::read(layout.join("index.json")).expect("the layout's index.json");
    let index: Value = serde_json::from_slice(&bytes).expect("index.json is JSON");
    let mut entries: Vec<_> = index["manifests"]
        .as_array()
        .expect("index.json lists manifests")
        .iter()
        .map(|entry| {
            let text = |v: &Value| v.as_str().map(str::to_string);
            (
                text(&entry["digest"]).expect("a digest"),
                text(&entry["annotations"]["org.opencontainers.image.ref.name"]),
                text(&entry["artifactType"]),
            )
        })
        .collect();
    entries.sort();
    entries
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_cross_an_air_gap_in_a_layout_and_an_archive() {
    let (src, dst, pushed) = hello_at_a_source().await;
    let client = src.client();
    let signed = Signed::push(&client, &pushed, true).await;
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let layout = scratch.path().join("layout");
    let archive = scratch.path().join("hello.tar");
    let layout_ref = format!("oci:{}:v1", layout.display());
    let archive_ref = format!("oci-archive:{}:v1", archive.display());

    // Registry → layout directory: each referrer is an untagged index.json entry, found again
    // through the subject its manifest names.
    let (listed_by_copy, stderr) = copy_listing(&pushed.reference, &layout_ref).await;
    assert!(stderr.contains("and 3 signatures/attestations"), "{stderr}");
    assert_eq!(listed_by_copy, expected(&signed.all(), "TagSchema"));
    let mut wanted: Vec<_> = signed
        .all()
        .iter()
        .map(|a| (a.digest.clone(), None, Some(a.artifact_type.clone())))
        .chain([(pushed.index_digest.clone(), Some("v1".to_string()), None)])
        .collect();
    wanted.sort();
    assert_eq!(layout_entries(&layout), wanted);
    for artifact in signed.all() {
        let (algorithm, hex) = artifact.digest.split_once(':').unwrap();
        let bytes = std::fs::read(layout.join("blobs").join(algorithm).join(hex)).unwrap();
        assert_eq!(bytes, artifact.bytes, "byte for byte");
    }
    assert_eq!(
        inspect_listing(&layout_ref).await,
        expected(&signed.all(), "LayoutIndex")
    );
    let untagged = format!("oci:{}", layout.display());
    let (code, stdout, stderr) = cli(vec!["verify".into(), untagged]).await;
    assert_eq!(
        code, 0,
        "the signatures beside it do not count as images: {stderr}"
    );
    assert!(stdout.contains(&pushed.index_digest), "{stdout}");

    // Layout → archive → a registry on the far side: every referrer and every subject's
    // tag-schema index arrive, the bundle's digest unchanged.
    let (code, _, stderr) = cli_copy(&layout_ref, &archive_ref, &[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("and 3 signatures/attestations"), "{stderr}");
    // The referrers' untagged entries do not hide the bundle from another reader: skopeo finds
    // its tag and serves its bytes.
    let args: Vec<String> = vec!["inspect".into(), "--raw".into(), archive_ref.clone()];
    let raw = tokio::task::spawn_blocking(move || skopeo(&args))
        .await
        .expect("skopeo ran");
    assert_eq!(
        raw, pushed.index_bytes,
        "skopeo inspect --raw {archive_ref}"
    );
    let (code, stdout, stderr) = cli(vec!["verify".into(), archive_ref.clone()]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("and 3 signatures/attestations"),
        "verify checks the referrers too: {stdout}"
    );
    let destination = format!("{}/private/hello", dst.host());
    let (listed_by_copy, _) = copy_listing(&archive_ref, &destination).await;
    assert_eq!(listed_by_copy, expected(&signed.all(), "LayoutIndex"));
    assert_bundle_copied(
        &src,
        "team/hello",
        &dst,
        "private/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;
    let dst_client = dst.client();
    assert_artifacts_at(&dst_client, "private/hello", &signed.all()).await;
    for (subject, referrer) in [
        (&pushed.index_digest, &signed.signature),
        (&signed.db.digest, &signed.sbom),
        (&signed.sbom.digest, &signed.sbom_signature),
    ] {
        assert_eq!(
            tag_index_digests(&dst_client, "private/hello", subject).await,
            [referrer.digest.as_str()],
            "{subject}"
        );
    }

    // A repeat export finds every referrer in the archive and leaves the file alone.
    let written = || {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(&archive).unwrap();
        (metadata.ino(), metadata.mtime_nsec(), metadata.len())
    };
    let before = written();
    let (code, _, stderr) = cli_copy(&pushed.reference, &archive_ref, &[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("already holds this bundle and 3 signatures/attestations"),
        "{stderr}"
    );
    assert_eq!(written(), before, "the archive was not written again");

    // A signature made after the export: the next export writes the archive again with it
    // (an archive is written whole), the bundle's digest unchanged.
    let later =
        push_notation_signature(&client, "team/hello", &index_subject(&pushed), "later").await;
    add_to_tag_index(&client, "team/hello", &pushed.index_digest, &[&later]).await;
    let (code, stdout, stderr) = cli_copy(&pushed.reference, &archive_ref, &[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("already held this bundle; added the signatures/attestations it lacked")
            && stderr.contains("it now holds the bundle and 4 signatures/attestations"),
        "{stderr}"
    );
    assert!(stdout.contains(&pushed.index_digest), "{stdout}");
    assert_ne!(
        written().0,
        before.0,
        "a new archive was renamed into place"
    );
    let mut all = signed.all().to_vec();
    all.push(&later);
    assert_eq!(
        inspect_listing(&archive_ref).await,
        expected(&all, "LayoutIndex")
    );
    // The layout directory takes the new signature alone.
    let (code, _, stderr) = cli_copy(&pushed.reference, &layout_ref, &[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        layout_entries(&layout)
            .iter()
            .any(|(d, tag, _)| *d == later.digest && tag.is_none())
    );
}
