//! Air-gapped transfer: bundles exported from a real registry to an OCI layout directory
//! (`oci:`) or archive (`oci-archive:`) and imported into another registry keep every digest.
//! skopeo is the independent peer both ways; GNU tar lists what the archives hold.
//! `cargo nextest run -E 'test(/^airgap::/)'`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bundlecopy_engine::{CopyOutcome, ErrorKind, Progress, copy_bundle};

use crate::copy::{bundle_shapes, cli, endpoint, request, small_bundle};
use crate::support::check::{CLI_TIMEOUT, run_with_timeout, skopeo};
use crate::support::process::spawn_tied_to_test_process;
use crate::support::referrers::{
    Subject, add_to_tag_index, push_notation_signature, tag_index_digests,
};
use crate::support::{
    BundleSpec, Fault, FaultProxy, ImageFormat, PathKind, PushedBundle, RegistryKind, Rule,
    TestRegistry, assert_bundle_copied, bundlecopy_bin, push_bundle, sha256_digest,
};

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("a scratch directory")
}

fn text(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// `bundlecopy copy --source S --destination D`, which must succeed; its stdout.
async fn copy_ok(source: &str, destination: &str) -> String {
    let (code, stdout, stderr) =
        cli(&["copy", "--source", source, "--destination", destination]).await;
    assert_eq!(code, 0, "copy {source} -> {destination}: {stderr}");
    stdout
}

/// `bundlecopy ARGS`, which must fail with one `error:` line; that line.
async fn fails(args: &[&str]) -> String {
    let (code, stdout, stderr) = cli(args).await;
    assert_eq!(code, 1, "{args:?} should fail: {stdout} {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
    errors[0].to_string()
}

/// `bundlecopy copy --source S --destination D`, which must fail with one `error:` line; that line.
async fn copy_fails(source: &str, destination: &str) -> String {
    fails(&["copy", "--source", source, "--destination", destination]).await
}

/// A bundle pushed to `src` and exported with the CLI to an archive and a layout directory, both
/// under the tag `v1`.
struct Exported {
    pushed: PushedBundle,
    /// Holds the archive and the layout; removed on drop.
    dir: tempfile::TempDir,
    archive: PathBuf,
    layout: PathBuf,
}

async fn export(src: &TestRegistry, repository: &str, spec: &BundleSpec) -> Exported {
    let pushed = push_bundle(src, repository, "v1", spec).await;
    let dir = scratch();
    let archive = dir.path().join("bundle.tar");
    let layout = dir.path().join("layout");
    copy_ok(
        &pushed.reference,
        &format!("oci-archive:{}:v1", text(&archive)),
    )
    .await;
    copy_ok(&pushed.reference, &format!("oci:{}:v1", text(&layout))).await;
    Exported {
        pushed,
        dir,
        archive,
        layout,
    }
}

/// The engine's copy with local layouts allowed.
async fn engine_copy(source: String, destination: String, src: &TestRegistry) -> CopyOutcome {
    let mut req = request(source, destination, endpoint(src), endpoint(src));
    req.layouts = true;
    copy_bundle(&req, &Progress::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The member names of an archive, as GNU tar lists them.
fn tar_members(archive: &Path) -> Vec<String> {
    let mut command = Command::new("tar");
    command.arg("-tf").arg(archive);
    let output = run_with_timeout(command, CLI_TIMEOUT);
    assert_eq!(
        output.code,
        0,
        "tar -tf: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn index_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
        .expect("index.json is JSON")
}

/// The file of the blob `digest` in a layout directory.
fn blob_file(dir: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').expect("a digest");
    dir.join("blobs").join(algorithm).join(hex)
}

/// Flip one byte in the middle of the blob `digest` inside an archive (its member name is a
/// plain ustar name, so its data starts at the block after the header holding the name).
fn corrupt_blob_in_archive(archive: &Path, digest: &str, size: u64) {
    let mut bytes = std::fs::read(archive).expect("read the archive");
    let name = format!("blobs/sha256/{}", &digest["sha256:".len()..]);
    let at = bytes
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .expect("the blob's header");
    assert_eq!(at % 512, 0, "the name starts a header block");
    let data = at + 512 + (size / 2) as usize;
    bytes[data] ^= 0xff;
    std::fs::write(archive, bytes).expect("write the archive");
}

#[tokio::test(flavor = "multi_thread")]
async fn airgap_round_trip_through_one_archive_keeps_every_digest_of_every_shape() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    let dir = scratch();
    let archive = dir.path().join("bundles.tar");
    let mut exported = Vec::new();
    let client = src.client();
    // Every shape, signed, into the same archive, one tag each: the archive grows, nothing is
    // dropped.
    for (name, spec) in bundle_shapes() {
        let repo = format!("shapes/{name}");
        let pushed = push_bundle(&src, &repo, "v1", &spec).await;
        let subject = Subject::new(
            &pushed.index_media_type,
            &pushed.index_digest,
            &pushed.index_bytes,
        );
        let signature = push_notation_signature(&client, &repo, &subject, name).await;
        add_to_tag_index(&client, &repo, &pushed.index_digest, &[&signature]).await;
        let destination = format!("oci-archive:{}:{name}", text(&archive));
        let stdout = copy_ok(&pushed.reference, &destination).await;
        assert_eq!(
            stdout.trim(),
            format!("{destination}@{}", pushed.index_digest)
        );
        exported.push((name, pushed, signature));
    }
    let members = tar_members(&archive);
    assert_eq!(
        members.last().map(String::as_str),
        Some("index.json"),
        "{members:?}"
    );
    let blob_members = members
        .iter()
        .filter(|m| m.starts_with("blobs/sha256/") && m.len() > 14);
    let unique: std::collections::BTreeSet<&String> = blob_members.clone().collect();
    assert_eq!(
        unique.len(),
        blob_members.count(),
        "each blob once: {members:?}"
    );

    for (name, pushed, signature) in &exported {
        let source = format!("oci-archive:{}:{name}", text(&archive));
        let (code, stdout, stderr) = cli(&["inspect", &source, "--output", "json"]).await;
        assert_eq!(code, 0, "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
        assert_eq!(report["digest"], pushed.index_digest.as_str(), "{name}");
        assert_eq!(report["bundle"]["name"], *name);

        copy_ok(&source, &format!("{}/imported/{name}", dst.host())).await;
        assert_bundle_copied(
            &src,
            &format!("shapes/{name}"),
            &dst,
            &format!("imported/{name}"),
            name,
            &pushed.index_digest,
        )
        .await;
        let (_, media_type, _) = dst
            .client()
            .get_manifest(&format!("imported/{name}"), name)
            .await
            .expect("the imported tag");
        assert_eq!(media_type, pushed.index_media_type, "{name}");
        let imported = format!("imported/{name}");
        let (bytes, _, _) = dst
            .client()
            .get_manifest(&imported, &signature.digest)
            .await
            .unwrap_or_else(|| panic!("{name}: the signature did not arrive"));
        assert_eq!(bytes, signature.bytes, "{name}");
        assert_eq!(
            tag_index_digests(&dst.client(), &imported, &pushed.index_digest).await,
            [signature.digest.as_str()],
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn airgap_layout_directory_to_archive_to_registry() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::TlsBasicAuth).await;
    let pushed = push_bundle(&src, "team/hello", "v1", &small_bundle("hello")).await;
    let dir = scratch();
    let layout = dir.path().join("layout");
    let archive = dir.path().join("hello.tar");
    // No tag on the destinations: the source's tag carries over.
    copy_ok(&pushed.reference, &format!("oci:{}", text(&layout))).await;
    assert_eq!(
        std::fs::read_to_string(layout.join("oci-layout")).expect("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index = index_json(&layout);
    assert_eq!(
        index["manifests"][0]["digest"],
        pushed.index_digest.as_str()
    );
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "v1"
    );
    assert_eq!(
        index["manifests"][0]["size"],
        pushed.index_bytes.len() as u64
    );
    let manifests = pushed.manifests.iter().map(|(digest, _)| digest);
    for digest in manifests.chain(pushed.blobs.iter().map(|(digest, _)| digest)) {
        let bytes = std::fs::read(blob_file(&layout, digest)).expect("a blob of the layout");
        assert_eq!(sha256_digest(&bytes), *digest);
    }

    copy_ok(
        &format!("oci:{}", text(&layout)),
        &format!("oci-archive:{}", text(&archive)),
    )
    .await;
    let ca = dst.ca_file().expect("the TLS registry's CA");
    let config = dst.docker_config_dir();
    let destination = format!("{}/private/hello", dst.host());
    let (code, stdout, stderr) = cli(&[
        "copy",
        "--source",
        &format!("oci-archive:{}", text(&archive)),
        "--destination",
        &destination,
        "--destination-ca-file",
        text(&ca),
        "--docker-config",
        text(&config),
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("{destination}:v1@{}", pushed.index_digest)
    );
    assert_bundle_copied(
        &src,
        "team/hello",
        &dst,
        "private/hello",
        "v1",
        &pushed.index_digest,
    )
    .await;

    // verify reads every byte wherever the bundle is.
    for reference in [
        format!("oci:{}", text(&layout)),
        format!("oci-archive:{}:v1", text(&archive)),
        pushed.reference.clone(),
    ] {
        let (code, stdout, stderr) = cli(&["verify", &reference]).await;
        assert_eq!(code, 0, "{reference}: {stderr}");
        assert!(stdout.contains(&pushed.index_digest), "{stdout}");
        assert!(
            stdout.contains(&format!("{} blobs", pushed.blobs.len())),
            "{stdout}"
        );
    }
}

/// What skopeo 1.9.3 (Debian bookworm) cannot do with a layout, by bundle shape: it stops at an
/// index inside the bundle index ("Unexpectedly received a manifest list instead of a manifest
/// for a single image"), and its layout reader passes over `index.json` entries typed as Docker
/// manifest lists ("no descriptor found for reference"). There `inspect --raw` is what it can do,
/// or nothing.
const SKOPEO_CANNOT_COPY: [&str; 3] = ["multiarch", "mixed", "listindex"];
const SKOPEO_CANNOT_READ: [&str; 1] = ["listindex"];

/// The bundle of shape `name` (pushed as `shapes/NAME:v1`) is at `dst`'s `repo:v1`, every digest kept.
async fn assert_shape_copied(
    src: &TestRegistry,
    name: &str,
    dst: &TestRegistry,
    repo: &str,
    digest: &str,
) {
    assert_bundle_copied(src, &format!("shapes/{name}"), dst, repo, "v1", digest).await;
}

/// `skopeo copy --all --preserve-digests FROM TO` (plain HTTP registries), off the runtime.
async fn skopeo_copy(from: String, to: String) {
    let args: Vec<String> = vec![
        "--insecure-policy".into(),
        "copy".into(),
        "--all".into(),
        "--preserve-digests".into(),
        "--quiet".into(),
        "--src-tls-verify=false".into(),
        "--dest-tls-verify=false".into(),
        from,
        to,
    ];
    tokio::task::spawn_blocking(move || skopeo(&args))
        .await
        .expect("skopeo");
}

#[tokio::test(flavor = "multi_thread")]
async fn airgap_skopeo_reads_what_we_write() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    for (name, spec) in bundle_shapes() {
        let exported = export(&src, &format!("shapes/{name}"), &spec).await;
        let pushed = &exported.pushed;
        let ends = [
            (format!("oci:{}:v1", text(&exported.layout)), "layout"),
            (
                format!("oci-archive:{}:v1", text(&exported.archive)),
                "archive",
            ),
        ];
        if SKOPEO_CANNOT_READ.contains(&name) {
            continue;
        }
        for (from, _) in &ends {
            let args: Vec<String> = vec!["inspect".into(), "--raw".into(), from.clone()];
            let raw = tokio::task::spawn_blocking(move || skopeo(&args))
                .await
                .expect("skopeo");
            assert_eq!(
                raw, pushed.index_bytes,
                "{name}: skopeo inspect --raw {from}"
            );
        }
        if SKOPEO_CANNOT_COPY.contains(&name) {
            continue;
        }
        for (from, kind) in ends {
            let repo = format!("by-skopeo/{name}-from-{kind}");
            skopeo_copy(from, format!("docker://{}/{repo}:v1", dst.host())).await;
            assert_shape_copied(&src, name, &dst, &repo, &pushed.index_digest).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn airgap_we_read_what_skopeo_writes() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    let dir = scratch();
    for (name, spec) in bundle_shapes() {
        if SKOPEO_CANNOT_COPY.contains(&name) {
            continue;
        }
        let pushed = push_bundle(&src, &format!("shapes/{name}"), "v1", &spec).await;
        let layout = dir.path().join(format!("{name}-by-skopeo"));
        let archive = dir.path().join(format!("{name}-by-skopeo.tar"));
        for (to, kind) in [
            (format!("oci:{}:v1", text(&layout)), "layout"),
            (format!("oci-archive:{}:v1", text(&archive)), "archive"),
        ] {
            skopeo_copy(format!("docker://{}", pushed.reference), to.clone()).await;
            let repo = format!("from-skopeo/{name}-{kind}");
            let stdout = copy_ok(&to, &format!("{}/{repo}", dst.host())).await;
            assert!(stdout.contains(&pushed.index_digest), "{stdout}");
            assert_shape_copied(&src, name, &dst, &repo, &pushed.index_digest).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn airgap_bundles_share_one_archive_and_a_tag_is_replaced_not_dropped() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let first = push_bundle(&src, "one", "v1", &small_bundle("one")).await;
    let second = push_bundle(&src, "two", "v1", &small_bundle("two").with_seed(9)).await;
    let dir = scratch();
    let archive = dir.path().join("shared.tar");
    let at = |tag: &str| format!("oci-archive:{}:{tag}", text(&archive));
    engine_copy(first.reference.clone(), at("a"), &src).await;
    let blobs_after_one = tar_members(&archive).len();
    // The same bundle under a second tag: one more index.json entry, not one more blob.
    let again = engine_copy(first.reference.clone(), at("also"), &src).await;
    assert_eq!(again.progress.copied, 0, "{:?}", again.progress);
    assert_eq!(tar_members(&archive).len(), blobs_after_one);
    engine_copy(second.reference.clone(), at("b"), &src).await;

    // A different bundle at an existing tag needs --force, and then replaces only that entry.
    let refused = copy_fails(&second.reference, &at("a")).await;
    assert!(refused.contains("--force"), "{refused}");
    let (code, _, stderr) = cli(&[
        "copy",
        "--source",
        &second.reference,
        "--destination",
        &at("a"),
        "--force",
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    for (tag, digest) in [
        ("a", &second.index_digest),
        ("also", &first.index_digest),
        ("b", &second.index_digest),
    ] {
        let (code, stdout, stderr) = cli(&["verify", &at(tag)]).await;
        assert_eq!(code, 0, "{tag}: {stderr}");
        assert!(stdout.contains(digest.as_str()), "{tag}: {stdout}");
    }
    let members = tar_members(&archive);
    let unique: std::collections::BTreeSet<&String> = members.iter().collect();
    assert_eq!(unique.len(), members.len(), "{members:?}");
    // A layout of several bundles needs a tag.
    let untagged = fails(&["inspect", &format!("oci-archive:{}", text(&archive))]).await;
    assert!(
        untagged.contains("a, also, b") || untagged.contains("TAG"),
        "{untagged}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn airgap_a_copy_into_a_layout_resumes_and_skips_blobs_already_there() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_bundle(&src, "team/hello", "v1", &small_bundle("hello")).await;
    let dir = scratch();
    let layout = dir.path().join("layout");
    let destination = format!("oci:{}:v1", text(&layout));
    engine_copy(pushed.reference.clone(), destination.clone(), &src).await;

    // As if the first copy had stopped early: no index.json yet, a blob missing, another damaged.
    std::fs::remove_file(layout.join("index.json")).expect("remove index.json");
    let (missing, _) = pushed.largest_blob();
    std::fs::remove_file(blob_file(&layout, &missing)).expect("remove a blob");
    let damaged = pushed
        .blobs
        .iter()
        .find(|(d, _)| *d != missing)
        .map(|(d, _)| d.clone())
        .expect("a second blob");
    let mut bytes = std::fs::read(blob_file(&layout, &damaged)).expect("a blob");
    bytes[0] ^= 0xff;
    std::fs::write(blob_file(&layout, &damaged), bytes).expect("damage a blob");

    let resumed = engine_copy(pushed.reference.clone(), destination.clone(), &src).await;
    let p = resumed.progress;
    assert_eq!(p.blobs, pushed.blobs.len() as u64);
    assert_eq!((p.copied, p.skipped), (2, p.blobs - 2), "{p:?}");
    assert_eq!(
        index_json(&layout)["manifests"][0]["digest"],
        pushed.index_digest.as_str()
    );
    let (code, _, stderr) = cli(&["verify", &destination]).await;
    assert_eq!(code, 0, "{stderr}");
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&layout)
        .expect("the layout")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn airgap_bad_layouts_are_one_clear_line_and_nothing_lands() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let dst = TestRegistry::start(RegistryKind::Plain).await;
    let Exported {
        pushed,
        dir,
        archive,
        layout,
    } = export(&src, "team/hello", &small_bundle("hello")).await;
    let destination = format!("{}/imported/hello:v1", dst.host());
    let nothing_landed = || async {
        assert!(
            dst.client()
                .get_manifest("imported/hello", "v1")
                .await
                .is_none(),
            "the destination tag was written"
        );
    };

    // A tag the archive does not have: the tags it has are named.
    let error = copy_fails(&format!("oci-archive:{}:v2", text(&archive)), &destination).await;
    assert!(error.contains("\"v2\"") && error.contains("v1"), "{error}");
    nothing_landed().await;

    // A truncated archive.
    let truncated = dir.path().join("truncated.tar");
    let bytes = std::fs::read(&archive).expect("the archive");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let error = copy_fails(
        &format!("oci-archive:{}:v1", text(&truncated)),
        &destination,
    )
    .await;
    assert!(error.contains("truncated"), "{error}");
    nothing_landed().await;

    // A blob whose bytes do not match its digest: copy and verify both name it.
    let (largest, size) = pushed.largest_blob();
    let corrupted = dir.path().join("corrupted.tar");
    std::fs::copy(&archive, &corrupted).expect("copy the archive");
    corrupt_blob_in_archive(&corrupted, &largest, size);
    let corrupted_ref = format!("oci-archive:{}:v1", text(&corrupted));
    let error = copy_fails(&corrupted_ref, &destination).await;
    assert!(
        error.contains(&largest) && error.contains("does not match its digest"),
        "{error}"
    );
    nothing_landed().await;
    let error = fails(&["verify", &corrupted_ref]).await;
    assert!(error.contains(&largest), "{error}");
    // The same through the engine: the kind the operator would see.
    let mut req = request(
        corrupted_ref.clone(),
        destination.clone(),
        endpoint(&src),
        endpoint(&dst),
    );
    req.layouts = true;
    let error = copy_bundle(&req, &Progress::default()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DigestMismatch, "{error}");

    // A layout of a version this does not know.
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"9.9.9"}"#,
    )
    .expect("write");
    let error = copy_fails(&format!("oci:{}:v1", text(&layout)), &destination).await;
    assert!(error.contains("\"9.9.9\""), "{error}");
    let error = fails(&["inspect", &format!("oci:{}", text(&layout))]).await;
    assert!(error.contains("9.9.9"), "{error}");
    nothing_landed().await;

    // Writing into a directory that is not a layout is refused before anything is written.
    let stranger = dir.path().join("stranger");
    std::fs::create_dir(&stranger).expect("mkdir");
    std::fs::write(stranger.join("notes.txt"), "mine").expect("write");
    let error = copy_fails(&pushed.reference, &format!("oci:{}", text(&stranger))).await;
    assert!(error.contains("not an OCI image layout"), "{error}");
    assert_eq!(std::fs::read_dir(&stranger).expect("dir").count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn airgap_a_failed_or_interrupted_archive_write_leaves_no_archive() {
    let src = TestRegistry::start(RegistryKind::Plain).await;
    let pushed = push_bundle(
        &src,
        "team/big",
        "v1",
        &BundleSpec::new("big", "1.0.0").with_invocation(ImageFormat::Oci, &[4 << 20, 1000]),
    )
    .await;
    let dir = scratch();
    let archive = dir.path().join("big.tar");
    let files = || -> Vec<String> {
        std::fs::read_dir(dir.path())
            .expect("the scratch directory")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };

    // Every GET of the big layer corrupted: the copy fails, and neither the archive nor a
    // temporary file is left.
    let proxy = FaultProxy::start(&src);
    let (big, _) = pushed.largest_blob();
    proxy.add_rule(
        Rule::new(Fault::Corrupt { at: 1000 })
            .kind(PathKind::Blob)
            .path_contains(&big),
    );
    let through_proxy = format!("{}/team/big:v1", proxy.host());
    let error = copy_fails(&through_proxy, &format!("oci-archive:{}", text(&archive))).await;
    assert!(error.contains("does not match its digest"), "{error}");
    assert!(files().is_empty(), "{:?}", files());

    // Killed while the big layer is on its way: only the temporary file exists, never the archive.
    proxy.clear_rules();
    proxy.add_rule(
        Rule::new(Fault::StallBodyAfter {
            bytes: 1 << 20,
            duration: Duration::from_secs(60),
        })
        .kind(PathKind::Blob)
        .path_contains(&big),
    );
    let mut command = Command::new(bundlecopy_bin());
    command.args([
        "copy",
        "--source",
        &through_proxy,
        "--destination",
        &format!("oci-archive:{}", text(&archive)),
    ]);
    let mut child = spawn_tied_to_test_process(command).expect("start bundlecopy");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !files().iter().any(|f| f.contains("partial")) {
        assert!(
            Instant::now() < deadline,
            "no temporary file appeared: {:?}",
            files()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().expect("kill bundlecopy");
    let _ = child.wait();
    assert!(!archive.exists(), "{:?}", files());
    // The next copy succeeds beside the leftover temporary file.
    proxy.clear_rules();
    copy_ok(&through_proxy, &format!("oci-archive:{}", text(&archive))).await;
    let (code, _, stderr) = cli(&["verify", &format!("oci-archive:{}", text(&archive))]).await;
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn airgap_the_operator_never_reads_layouts() {
    use bundlecopy::operator::crd::BundleCopySpec;
    let spec: BundleCopySpec = serde_json::from_value(serde_json::json!({
        "source": {"reference": "oci-archive:/etc/passwd:v1"},
        "destination": {"reference": "registry.example/team"}
    }))
    .expect("a spec");
    let error = bundlecopy::operator::validate::validate(&spec).unwrap_err();
    assert!(error.contains("spec.source.reference"), "{error}");
}
