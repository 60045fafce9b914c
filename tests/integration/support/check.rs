//! Checks on what ended up in a registry, skopeo as an independent reader, and running the CLI.

use std::collections::HashSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{kill_and_reap, spawn_tied_to_test_process};
use super::registry::TestRegistry;
use super::sha256_digest;

/// Blobs smaller than this are downloaded and hashed; bigger ones are checked by HEAD (size).
const HASHED_BLOB_LIMIT: u64 = 1 << 20;
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// Assert that `dst_repo:dst_tag` holds exactly the bundle at `src_repo@expected_index_digest`:
/// the tag resolves to that digest, every manifest reachable from the index (nested indexes too)
/// is in `dst_repo` with identical bytes and Content-Type, and every blob (configs and layers)
/// is in `dst_repo`, with content hashed for blobs under 1 MiB.
pub async fn assert_bundle_copied(
    src: &TestRegistry,
    src_repo: &str,
    dst: &TestRegistry,
    dst_repo: &str,
    dst_tag: &str,
    expected_index_digest: &str,
) {
    let src_client = src.client();
    let dst_client = dst.client();
    let dst_name = format!("{}/{dst_repo}", dst.host());
    let src_name = format!("{}/{src_repo}", src.host());

    let Some((_, _, tag_digest)) = dst_client.get_manifest(dst_repo, dst_tag).await else {
        panic!("{dst_name}:{dst_tag} does not exist");
    };
    assert_eq!(
        tag_digest, expected_index_digest,
        "{dst_name}:{dst_tag} resolves to {tag_digest}, expected the source index {expected_index_digest}"
    );

    let mut pending = vec![expected_index_digest.to_owned()];
    let mut seen_manifests = HashSet::new();
    let mut blobs: Vec<(String, Option<u64>)> = Vec::new();
    while let Some(digest) = pending.pop() {
        if !seen_manifests.insert(digest.clone()) {
            continue;
        }
        let Some((src_bytes, src_type, _)) = src_client.get_manifest(src_repo, &digest).await
        else {
            panic!("manifest {digest} is missing from the source {src_name}");
        };
        let Some((dst_bytes, dst_type, dst_digest)) =
            dst_client.get_manifest(dst_repo, &digest).await
        else {
            panic!("manifest {digest} is missing from {dst_name}");
        };
        assert_eq!(
            dst_digest, digest,
            "{dst_name}@{digest} is served under digest {dst_digest}"
        );
        assert_eq!(
            sha256_digest(&dst_bytes),
            digest,
            "{dst_name}@{digest}: the bytes do not hash to the digest"
        );
        assert!(
            dst_bytes == src_bytes,
            "{dst_name}@{digest}: bytes differ from the source ({} vs {} bytes)",
            dst_bytes.len(),
            src_bytes.len()
        );
        assert_eq!(
            dst_type, src_type,
            "{dst_name}@{digest}: Content-Type differs from the source"
        );
        let manifest: serde_json::Value = serde_json::from_slice(&dst_bytes)
            .unwrap_or_else(|error| panic!("{dst_name}@{digest} is not JSON: {error}"));
        if let Some(children) = manifest["manifests"].as_array() {
            for child in children {
                let child_digest = child["digest"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{dst_name}@{digest}: a child without digest"));
                pending.push(child_digest.to_owned());
            }
        }
        let config = manifest.get("config").into_iter();
        let layers = manifest["layers"].as_array().into_iter().flatten();
        for descriptor in config.chain(layers) {
            let blob_digest = descriptor["digest"]
                .as_str()
                .unwrap_or_else(|| panic!("{dst_name}@{digest}: a blob descriptor without digest"));
            blobs.push((blob_digest.to_owned(), descriptor["size"].as_u64()));
        }
    }

    let mut seen_blobs = HashSet::new();
    for (digest, declared_size) in blobs {
        if !seen_blobs.insert(digest.clone()) {
            continue;
        }
        let Some(size) = dst_client.blob_size(dst_repo, &digest).await else {
            panic!("blob {digest} is missing from {dst_name}");
        };
        if let Some(declared) = declared_size {
            assert_eq!(
                size, declared,
                "blob {digest} in {dst_name} has {size} bytes, its descriptor says {declared}"
            );
        }
        if size < HASHED_BLOB_LIMIT {
            let bytes = dst_client.get_blob(dst_repo, &digest).await;
            assert_eq!(
                sha256_digest(&bytes),
                digest,
                "blob {digest} in {dst_name}: content does not hash to its digest"
            );
        }
    }
}

/// `skopeo inspect --raw docker://HOST/REFERENCE` (reference = `repo:tag` or `repo@digest`),
/// trusting the registry's CA and using its credentials; returns stdout.
pub fn skopeo_inspect_raw(registry: &TestRegistry, reference: &str) -> Vec<u8> {
    let mut args: Vec<String> = vec!["inspect".into(), "--raw".into()];
    match registry.cert_dir() {
        Some(cert_dir) => args.push(format!("--cert-dir={}", cert_dir.display())),
        None => args.push("--tls-verify=false".into()),
    }
    if registry.requires_auth() {
        args.push(format!(
            "--creds={}:{}",
            registry.username(),
            registry.password()
        ));
    }
    args.push(format!("docker://{}/{reference}", registry.host()));
    skopeo(&args)
}

/// `skopeo ARGS` (timeout 120 s), which must succeed; its stdout.
pub fn skopeo(args: &[String]) -> Vec<u8> {
    let mut command = Command::new("skopeo");
    command.args(args);
    let output = run_with_timeout(command, CLI_TIMEOUT);
    assert_eq!(
        output.code,
        0,
        "skopeo {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The bundlecopy binary built for these tests.
pub fn bundlecopy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bundlecopy"))
}

/// Run `bundlecopy ARGS` (timeout 120 s): `(exit code, stdout, stderr)`.
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    run_cli_with(args, &[], CLI_TIMEOUT)
}

/// Run `bundlecopy ARGS` with extra environment variables and a timeout. The process is killed
/// at the timeout (exit code -1 and a note in stderr). Blocking: from async tests, call it in
/// `tokio::task::spawn_blocking` if something on the same runtime must keep serving.
pub fn run_cli_with(
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> (i32, String, String) {
    let mut command = Command::new(bundlecopy_bin());
    command.args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = run_with_timeout(command, timeout);
    (
        output.code,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub struct CommandOutput {
    /// Exit code; -1 if killed (timeout or signal).
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Run a command, reading both pipes while it runs, and kill it at `timeout`.
pub fn run_with_timeout(mut command: Command, timeout: Duration) -> CommandOutput {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let program = format!("{:?}", command.get_program());
    let mut child = spawn_tied_to_test_process(command)
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    let read_all = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read_all(
        child
            .stdout
            .take()
            .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
    );
    let stderr = read_all(
        child
            .stderr
            .take()
            .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            timed_out = true;
            kill_and_reap(&mut child);
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let mut stderr = stderr.join().unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(
            format!("\n[harness] {program} killed after {timeout:?}\n").as_bytes(),
        );
    }
    CommandOutput {
        code: status.and_then(|status| status.code()).unwrap_or(-1),
        stdout,
        stderr,
    }
}
