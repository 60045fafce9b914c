//! The Dockerfile, checked by reading it (no Docker engine runs here): pinned bases on one Debian release, a
//! locked release build, a non-root runtime, and an entrypoint and command that match the binary, the chart
//! and the controller's real command line.

use std::path::Path;
use std::process::Command;

use crate::chart::{ALL_TOGGLES, container_args, render};

/// The Rust release the project builds with; the builder image must be this version.
const RUST_VERSION: &str = "1.95";
const BUILDER_IMAGE: &str = "rust:1.95-bookworm";
const RUNTIME_IMAGE: &str = "gcr.io/distroless/cc-debian12:nonroot";
/// distroless's `nonroot` user and group.
const NONROOT_ID: u32 = 65532;

fn repository_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// One Dockerfile instruction: keyword in upper case, arguments with continuation lines joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    arguments: String,
}

fn instructions(dockerfile: &str) -> Vec<Instruction> {
    let mut result = Vec::new();
    let mut pending = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        if trimmed.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        pending.push_str(trimmed);
        let (keyword, arguments) = pending
            .split_once(char::is_whitespace)
            .unwrap_or((&pending, ""));
        result.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            arguments: arguments.trim().to_owned(),
        });
        pending.clear();
    }
    assert!(
        pending.is_empty(),
        "the Dockerfile ends inside a continued instruction"
    );
    result
}

/// The instructions of each stage, in order: (FROM arguments, the stage's other instructions).
fn stages(dockerfile: &str) -> Vec<(String, Vec<Instruction>)> {
    let mut result: Vec<(String, Vec<Instruction>)> = Vec::new();
    for instruction in instructions(dockerfile) {
        if instruction.keyword == "FROM" {
            result.push((instruction.arguments, Vec::new()));
        } else {
            let (_, stage) = result
                .last_mut()
                .unwrap_or_else(|| panic!("{instruction:?} comes before any FROM"));
            stage.push(instruction);
        }
    }
    result
}

fn exec_form(arguments: &str) -> Vec<String> {
    serde_json::from_str(arguments).unwrap_or_else(|error| {
        panic!("{arguments} is not the JSON exec form ({error}); the shell form needs a shell")
    })
}

fn last<'a>(stage: &'a [Instruction], keyword: &str) -> &'a Instruction {
    stage
        .iter()
        .rev()
        .find(|instruction| instruction.keyword == keyword)
        .unwrap_or_else(|| panic!("the runtime stage has no {keyword}"))
}

/// The name in Cargo.toml's one `[[bin]]` table. The project has no TOML parser, and that table is simple
/// enough to read line by line.
fn binary_name_from_cargo_toml() -> String {
    let manifest = repository_file("Cargo.toml");
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "name"
        {
            names.push(value.trim().trim_matches('"').to_owned());
        }
    }
    assert_eq!(names.len(), 1, "Cargo.toml declares one [[bin]]: {names:?}");
    names.remove(0)
}

fn major_minor(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|part| part.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => panic!("{version:?} is not MAJOR.MINOR[.PATCH]"),
    }
}

#[test]
fn builder_and_runtime_images_are_pinned_and_on_one_debian_release() {
    let dockerfile = repository_file("Dockerfile");
    let stages = stages(&dockerfile);
    assert_eq!(stages.len(), 2, "a builder stage and a runtime stage");
    assert_eq!(stages[0].0, format!("{BUILDER_IMAGE} AS builder"));
    assert_eq!(stages[1].0, RUNTIME_IMAGE);
    for (from, _) in &stages {
        let image = from.split_whitespace().next().unwrap_or_default();
        let tag = image
            .rsplit_once(':')
            .map(|(_, tag)| tag)
            .unwrap_or_default();
        assert!(
            !tag.is_empty() && tag != "latest" && !tag.contains('/'),
            "{image} is not pinned to a tag"
        );
    }
    // bookworm is Debian 12: the glibc the binary is linked against is the one it runs with.
    assert!(BUILDER_IMAGE.ends_with("-bookworm") && RUNTIME_IMAGE.contains("-debian12"));
}

#[test]
fn builder_rust_version_satisfies_the_crate_rust_version() {
    let builder_version = BUILDER_IMAGE
        .strip_prefix("rust:")
        .and_then(|tag| tag.strip_suffix("-bookworm"))
        .expect("rust:VERSION-bookworm");
    assert_eq!(
        builder_version, RUST_VERSION,
        "the builder runs the project's Rust release"
    );

    let manifest = repository_file("Cargo.toml");
    let rust_version = manifest
        .lines()
        .find_map(|line| line.trim().strip_prefix("rust-version"))
        .map(|value| {
            value
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"')
        })
        .expect("Cargo.toml sets rust-version");
    assert!(
        major_minor(builder_version) >= major_minor(rust_version),
        "the builder's Rust {builder_version} is older than Cargo.toml's rust-version {rust_version}"
    );

    // The toolchain that runs this test is the one the project builds with.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let output = Command::new(&rustc)
        .arg("--version")
        .output()
        .expect("run rustc --version");
    let printed = String::from_utf8_lossy(&output.stdout);
    let toolchain = printed.split_whitespace().nth(1).expect("rustc X.Y.Z");
    assert_eq!(
        major_minor(toolchain),
        major_minor(RUST_VERSION),
        "this machine builds with Rust {toolchain}, the Dockerfile with {RUST_VERSION}: update one of them"
    );
}

#[test]
fn build_is_locked_release_of_the_cargo_binary() {
    let binary = binary_name_from_cargo_toml();
    let dockerfile = repository_file("Dockerfile");
    let stages = stages(&dockerfile);
    let builds: Vec<&Instruction> = stages[0]
        .1
        .iter()
        .filter(|instruction| {
            instruction.keyword == "RUN" && instruction.arguments.contains("cargo build")
        })
        .collect();
    assert!(!builds.is_empty(), "the builder runs cargo build");
    for build in &builds {
        for required in ["--release", "--locked", &format!("--bin {binary}")] {
            assert!(
                build.arguments.contains(required),
                "{required} missing from: {}",
                build.arguments
            );
        }
    }
    assert!(
        builds.len() >= 2,
        "a dependency layer builds before the sources are copied, then the real build"
    );
    let copies_sources_at = stages[0]
        .1
        .iter()
        .position(|instruction| {
            instruction.keyword == "COPY" && instruction.arguments.starts_with("src ")
        })
        .expect("COPY src");
    let first_build_at = stages[0]
        .1
        .iter()
        .position(|instruction| {
            instruction.keyword == "RUN" && instruction.arguments.contains("cargo build")
        })
        .expect("cargo build");
    assert!(
        first_build_at < copies_sources_at,
        "dependencies build before the sources are copied"
    );

    // Only the binary crosses into the runtime stage.
    let runtime_copies: Vec<&Instruction> = stages[1]
        .1
        .iter()
        .filter(|instruction| matches!(instruction.keyword.as_str(), "COPY" | "ADD"))
        .collect();
    assert_eq!(runtime_copies.len(), 1, "the runtime stage copies one file");
    assert_eq!(
        runtime_copies[0].arguments,
        format!("--from=builder /{binary} /{binary}")
    );
}

#[test]
fn sources_need_nothing_outside_src_to_build() {
    // The image's build context holds only Cargo.toml, Cargo.lock, crates/ and src/ (.dockerignore); a
    // source that includes a file from elsewhere would build here and fail in `docker build`.
    fn visit(dir: &Path, offenders: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                visit(&path, offenders);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                for line in text.lines() {
                    if (line.contains("include_str!") || line.contains("include_bytes!"))
                        && line.contains("..")
                    {
                        offenders.push(format!("{}: {}", path.display(), line.trim()));
                    }
                }
            }
        }
    }
    let mut offenders = Vec::new();
    for sources in ["src", "crates"] {
        visit(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(sources),
            &mut offenders,
        );
    }
    // Every crate of the workspace is copied into the image.
    let dockerfile = repository_file("Dockerfile");
    assert!(
        dockerfile
            .lines()
            .any(|line| line.trim() == "COPY crates ./crates"),
        "the Dockerfile copies the workspace's crates"
    );
    assert!(
        offenders.is_empty(),
        "these includes reach outside src/, which the Docker build context lacks: {offenders:#?}"
    );
    let dockerignore = repository_file(".dockerignore");
    for ignored in ["/target", "/.git", "/.tools"] {
        assert!(
            dockerignore.lines().any(|line| line.trim() == ignored),
            ".dockerignore lacks {ignored}"
        );
    }
}

#[test]
fn runtime_runs_the_binary_as_nonroot_with_the_controller_command() {
    let binary = binary_name_from_cargo_toml();
    let dockerfile = repository_file("Dockerfile");
    let stages = stages(&dockerfile);
    let runtime = &stages[1].1;

    let user = &last(runtime, "USER").arguments;
    assert!(
        user == "nonroot:nonroot" || user == &format!("{NONROOT_ID}:{NONROOT_ID}"),
        "runtime USER is {user:?}, not distroless's nonroot"
    );
    assert_eq!(
        exec_form(&last(runtime, "ENTRYPOINT").arguments),
        [format!("/{binary}")]
    );
    let command = exec_form(&last(runtime, "CMD").arguments);
    assert_eq!(command, ["controller"]);

    // The chart replaces CMD with its args: they must start with the same subcommand, and the uid the
    // chart runs as must be the image's nonroot user.
    let objects = render(&[]);
    assert_eq!(
        container_args(&objects).first(),
        command.first(),
        "chart args start with the subcommand"
    );
    let pod_security = &objects
        .iter()
        .find(|object| object["kind"] == "Deployment")
        .expect("Deployment")["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(
        pod_security["runAsUser"],
        serde_yaml::Value::from(NONROOT_ID)
    );
    assert_eq!(
        pod_security["runAsGroup"],
        serde_yaml::Value::from(NONROOT_ID)
    );

    // EXPOSE documents the default metrics port, which is the chart's default too.
    assert_eq!(last(runtime, "EXPOSE").arguments, "8080");
    assert!(container_args(&objects).contains(&"--metrics-addr=0.0.0.0:8080".to_owned()));
}

#[test]
fn every_flag_the_chart_passes_exists_in_controller_help() {
    let output = Command::new(env!("CARGO_BIN_EXE_bundlecopy"))
        .args(["controller", "--help"])
        .output()
        .expect("run bundlecopy controller --help");
    let help = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    let subcommand_missing = (help.trim().is_empty() && errors.trim().is_empty())
        || errors.contains("unrecognized subcommand")
        || errors.contains("unexpected argument 'controller'");
    if subcommand_missing {
        eprintln!(
            "SKIPPED every_flag_the_chart_passes_exists_in_controller_help: `bundlecopy controller` is not wired \
             into src/main.rs yet, so its flags cannot be compared with the chart's"
        );
        return;
    }
    assert!(
        output.status.success(),
        "bundlecopy controller --help failed: {errors}"
    );

    let mut flags: Vec<String> = render(&[])
        .iter()
        .chain(render(ALL_TOGGLES).iter())
        .flat_map(|object| {
            if object["kind"] == "Deployment" {
                container_args(std::slice::from_ref(object))
            } else {
                Vec::new()
            }
        })
        .filter(|argument| argument.starts_with("--"))
        .map(|argument| argument.split('=').next().unwrap_or_default().to_owned())
        .collect();
    flags.sort();
    flags.dedup();
    assert!(
        flags.len() >= 8,
        "expected the chart's full flag set, got {flags:?}"
    );
    for flag in &flags {
        let documented = help
            .split(|character: char| {
                character.is_whitespace() || character == ',' || character == '='
            })
            .any(|word| word == flag);
        assert!(
            documented,
            "the chart passes {flag}, which `bundlecopy controller --help` does not list:\n{help}"
        );
    }
}
