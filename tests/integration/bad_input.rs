//! Bad input, table-driven, through the engine API and the CLI: malformed references (source and
//! destination), broken Docker configs, garbage CA files, sources that are not bundles. Each row
//! must give its reason (engine) and exit code 1 with exactly one `error:` line naming the key
//! fact (CLI), quickly (no hot loop), and never a panic.
//! `cargo test --test integration bad_input`

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bundlecopy::copy::{EndpointOptions, Progress, copy_bundle};
use bundlecopy::credentials::DockerConfig as EngineDockerConfig;
use bundlecopy::{CopyError, Reason};

use crate::faults::{bounded, copy_request, direct, fast_settings};
use crate::support::check::run_cli_with;
use crate::support::{
    BundleSpec, ImageFormat, RegistryKind, TestRegistry, push_bundle, push_plain_image,
};

/// A CLI run must end well within this; a row that reaches it loops or hangs.
const CLI_BOUND: Duration = Duration::from_secs(30);

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// One malformed reference: which side it is on, the text, and a fragment the message must hold.
struct BadReference {
    side: &'static str,
    input: String,
    fact: &'static str,
}

fn bad_references() -> Vec<BadReference> {
    let source = |input: &str, fact| BadReference {
        side: "source",
        input: input.to_string(),
        fact,
    };
    let destination = |input: &str, fact| BadReference {
        side: "destination",
        input: input.to_string(),
        fact,
    };
    vec![
        source("", "empty"),
        source("   ", "empty"),
        source("127.0.0.1:5000/App:v1", "lowercase"),
        source("127.0.0.1:5000/app:", "tag"),
        source("127.0.0.1:5000/app:-v1", "tag"),
        source(&format!("127.0.0.1:5000/app:{}", "t".repeat(129)), "tag"),
        source("127.0.0.1:5000/app@sha256:abc", "digest"),
        source(
            &format!("127.0.0.1:5000/app@md5:{}", "0".repeat(32)),
            "digest",
        ),
        source(
            &format!("127.0.0.1:5000/app@sha256:{}", "G".repeat(64)),
            "digest",
        ),
        source("127.0.0.1:5000//app:v1", "repository"),
        source("127.0.0.1:5000/app/:v1", "repository"),
        source("127.0.0.1:5000/a___b:v1", "repository"),
        source("127.0.0.1:port/app:v1", "port"),
        source("https://127.0.0.1:5000/app:v1", "invalid reference"),
        source("127.0.0.1:5000/app:v1:v2", "invalid reference"),
        source("127.0.0.1:5000/app v1", "invalid reference"),
        source("127.0.0.1:5000/äpp:v1", "invalid reference"),
        source(
            &format!("127.0.0.1:5000/{}:v1", "a".repeat(300)),
            "characters",
        ),
        source(&"0123456789abcdef".repeat(4), "image ID"),
        // Nothing to derive a destination tag from.
        source("127.0.0.1:5000/app", "neither a tag nor a digest"),
        source(&format!("127.0.0.1:5000/app@{DIGEST}"), "tagged reference"),
        destination("", "empty"),
        destination("127.0.0.1:5000/Mirror", "lowercase"),
        destination("127.0.0.1:5000/mirror/app:", "tag"),
        destination("https://127.0.0.1:5000/mirror", "invalid reference"),
        destination("127.0.0.1:5000/mirror/app@sha256:short", "digest"),
        destination("127.0.0.1:5000/mirror/", "repository"),
        destination("127.0.0.1:5000/mir..ror", "repository"),
        destination(
            &format!("127.0.0.1:5000/{}", "org/".repeat(62) + "o"),
            "characters",
        ),
    ]
}

/// The one `error:` line of a failed CLI run; asserts exit code 1, no panic, a single line.
fn single_error_line(what: &str, code: i32, stderr: &str) -> String {
    assert!(!stderr.contains("panicked"), "{what}: panic: {stderr}");
    assert_eq!(code, 1, "{what}: exit code {code}; stderr: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{what}: not one error line: {stderr}");
    errors[0].to_string()
}

/// Run `bundlecopy ARGS` in a blocking task; returns `(code, stdout, stderr, elapsed)`.
async fn cli(args: Vec<String>) -> (i32, String, String, Duration) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = run_cli_with(&args, &[], CLI_BOUND);
        (code, stdout, stderr, started.elapsed())
    })
    .await
    .unwrap()
}

fn copy_args(source: &str, destination: &str, config_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "copy",
        "--source",
        source,
        "--destination",
        destination,
        "--docker-config",
        config_dir.to_str().unwrap(),
        "--timeout",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn config_dir(json: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), json).unwrap();
    dir
}

/// A row of the report table printed at the end (`--nocapture` shows it).
fn report(rows: &mut Vec<String>, input: &str, reason: Option<Reason>, message: &str) {
    let shown: String = input.chars().take(60).collect();
    let reason = reason.map_or("-".to_string(), |r| r.to_string());
    rows.push(format!("| `{shown:?}` | {reason} | {message} |"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gives_a_reason_and_one_clear_error_line_never_a_panic() {
    let plain = TestRegistry::start(RegistryKind::Plain).await;
    let auth = TestRegistry::start(RegistryKind::TlsBasicAuth).await;
    let pushed = push_bundle(
        &plain,
        "good/app",
        "v1",
        &BundleSpec::new("good", "1.0.0").with_component("db", ImageFormat::Oci, &[2000]),
    )
    .await;
    let image = push_plain_image(&plain, "plain/image", "v1").await;
    let ghost = push_bundle(
        &plain,
        "ghost/app",
        "v1",
        &BundleSpec::new("ghost", "1.0.0")
            .with_component("db", ImageFormat::Oci, &[2000])
            .with_component_missing_from_bundle_json("ghost-component"),
    )
    .await;
    let empty_config = config_dir("{}");
    let mut rows = Vec::new();

    // Malformed references: the engine says InvalidSpec before touching the network.
    let references = bad_references();
    assert!(references.len() >= 20);
    for row in &references {
        let (source, destination) = match row.side {
            "source" => (row.input.clone(), "127.0.0.1:1/mirror".to_string()),
            _ => (pushed.reference.clone(), row.input.clone()),
        };
        let what = format!("{} {:?}", row.side, row.input);
        let request = copy_request(
            source.clone(),
            destination.clone(),
            EndpointOptions::default(),
            EndpointOptions::default(),
            fast_settings(),
        );
        let error = bounded(&what, copy_bundle(&request, &Progress::default()))
            .await
            .unwrap_err();
        assert_eq!(error.reason(), Reason::InvalidSpec, "{what}: {error}");
        assert!(error.to_string().contains(row.fact), "{what}: {error}");

        let (code, stdout, stderr, elapsed) =
            cli(copy_args(&source, &destination, empty_config.path(), &[])).await;
        let line = single_error_line(&what, code, &stderr);
        assert!(line.contains(row.fact), "{what}: {line}");
        assert!(stdout.is_empty(), "{what}: {stdout}");
        assert!(
            elapsed < Duration::from_secs(10),
            "{what}: took {elapsed:?}"
        );
        report(
            &mut rows,
            &format!("{}: {}", row.side, row.input),
            Some(error.reason()),
            &line,
        );
    }

    // Docker configs that cannot be used: refused when loaded, naming the problem but never
    // quoting the (possibly secret) value.
    let host = auth.host();
    let secretish = "Bad!Base64*Value";
    let configs = [
        ("invalid JSON", "{\"auths\": {".to_string(), "JSON"),
        ("a JSON array", "[1, 2]".to_string(), "not a JSON object"),
        (
            "invalid base64 in auth",
            format!(r#"{{"auths":{{"{host}":{{"auth":"{secretish}"}}}}}}"#),
            "base64",
        ),
        (
            "auth without a colon",
            format!(
                r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
                STANDARD.encode("no-colon-here")
            ),
            "USERNAME:PASSWORD",
        ),
        (
            "an empty username",
            format!(r#"{{"auths":{{"{host}":{{"username":"","password":"pw-{secretish}"}}}}}}"#),
            "empty username",
        ),
        (
            "a number as password",
            format!(r#"{{"auths":{{"{host}":{{"username":"u","password":12345}}}}}}"#),
            "must be a string",
        ),
    ];
    for (what, json, fact) in &configs {
        let parsed = EngineDockerConfig::parse_config_json(json.as_bytes())
            .expect_err(&format!("{what}: accepted"));
        let error = CopyError::InvalidCredentials(parsed.to_string());
        assert_eq!(error.reason(), Reason::InvalidSecret);
        assert!(error.to_string().contains(fact), "{what}: {error}");
        assert!(!error.to_string().contains(secretish), "{what}: {error}");

        let dir = config_dir(json);
        let (code, _, stderr, _) = cli(copy_args(
            &pushed.reference,
            &format!("{}/mirror", plain.host()),
            dir.path(),
            &[],
        ))
        .await;
        let line = single_error_line(what, code, &stderr);
        assert!(
            line.contains(fact) && line.contains("config.json"),
            "{what}: {line}"
        );
        assert!(!line.contains(secretish), "{what}: {line}");
        report(&mut rows, what, Some(error.reason()), &line);
    }

    // Credentials only for other hosts, against a registry that needs them.
    let others = format!(
        r#"{{"auths":{{"other.example.com":{{"auth":"{0}"}},"127.0.0.1:1":{{"auth":"{0}"}}}}}}"#,
        STANDARD.encode(format!("{}:{}", auth.username(), auth.password()))
    );
    let ca = auth.ca_file().unwrap();
    let destination = format!("{}/mirror", auth.host());
    let mut endpoint = direct(&auth);
    endpoint.credentials = EngineDockerConfig::parse_config_json(others.as_bytes()).unwrap();
    let request = copy_request(
        pushed.reference.clone(),
        destination.clone(),
        direct(&plain),
        endpoint,
        fast_settings(),
    );
    let error = bounded("others", copy_bundle(&request, &Progress::default()))
        .await
        .unwrap_err();
    assert_eq!(error.reason(), Reason::AuthenticationFailed, "{error}");
    let dir = config_dir(&others);
    let (code, _, stderr, _) = cli(copy_args(
        &pushed.reference,
        &destination,
        dir.path(),
        &["--destination-ca-file", ca.to_str().unwrap()],
    ))
    .await;
    let line = single_error_line("credentials for other hosts", code, &stderr);
    assert!(
        line.contains("no credentials match") && line.contains(&auth.host()),
        "{line}"
    );
    report(
        &mut rows,
        "credentials only for other hosts",
        Some(error.reason()),
        &line,
    );

    // CA files that are not certificates.
    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        garbage.path(),
        "-----BEGIN CERTIFICATE-----\nthis is not base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let not_pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_pem.path(), [0u8, 159, 146, 150, 1, 2, 3]).unwrap();
    for (what, path, fact) in [
        ("garbage PEM CA", garbage.path(), "certificate 1 is not valid PEM"),
        ("binary CA file", not_pem.path(), "PEM"),
    ] {
        let mut endpoint = direct(&auth);
        endpoint.ca_pem = Some(std::fs::read(path).unwrap());
        let request = copy_request(
            pushed.reference.clone(),
            destination.clone(),
            direct(&plain),
            endpoint,
            fast_settings(),
        );
        let error = bounded(what, copy_bundle(&request, &Progress::default()))
            .await
            .unwrap_err();
        assert_eq!(error.reason(), Reason::InvalidSecret, "{what}: {error}");
        let config = auth.docker_config_dir();
        let (code, _, stderr, _) = cli(copy_args(
            &pushed.reference,
            &destination,
            &config,
            &["--destination-ca-file", path.to_str().unwrap()],
        ))
        .await;
        let line = single_error_line(what, code, &stderr);
        assert!(
            line.contains(fact) && line.contains("--destination-ca-file"),
            "{what}: {line}"
        );
        report(&mut rows, what, Some(error.reason()), &line);
    }
    let (code, _, stderr, _) = cli(copy_args(
        &pushed.reference,
        &destination,
        empty_config.path(),
        &["--destination-ca-file", "/nonexistent/ca.pem"],
    ))
    .await;
    let line = single_error_line("missing CA file", code, &stderr);
    assert!(line.contains("/nonexistent/ca.pem"), "{line}");
    report(&mut rows, "missing CA file", None, &line);

    // Sources that are not (valid) bundles.
    let sources = [
        (
            "a plain image",
            image.reference.clone(),
            "not a CNAB bundle",
        ),
        (
            "an index naming a component missing from bundle.json",
            ghost.reference.clone(),
            "ghost-component",
        ),
    ];
    for (what, source, fact) in sources {
        let request = copy_request(
            source.clone(),
            format!("{}/mirror", plain.host()),
            direct(&plain),
            direct(&plain),
            fast_settings(),
        );
        let error = bounded(what, copy_bundle(&request, &Progress::default()))
            .await
            .unwrap_err();
        assert_eq!(error.reason(), Reason::NotABundle, "{what}: {error}");
        assert!(error.to_string().contains(fact), "{what}: {error}");
        let (code, _, stderr, _) = cli(copy_args(
            &source,
            &format!("{}/mirror", plain.host()),
            empty_config.path(),
            &[],
        ))
        .await;
        let line = single_error_line(what, code, &stderr);
        assert!(line.contains(fact), "{what}: {line}");
        report(&mut rows, what, Some(error.reason()), &line);
    }
    // Nothing was written by any of the failures.
    assert!(
        plain
            .client()
            .head_manifest("mirror/app", "v1")
            .await
            .is_none()
    );

    eprintln!("| input | reason | CLI error line |\n|---|---|---|");
    for row in rows {
        eprintln!("{row}");
    }
}
