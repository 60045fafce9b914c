//! The `bundlecopy copy`, `inspect`, `verify` and `tags` commands: flags, Docker config loading,
//! progress on stderr, the result on stdout, and one-line errors that say what to do.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use bundlecopy_engine::credentials::DockerConfig;
use bundlecopy_engine::tags::{TagFilter, tag_version};
use bundlecopy_engine::{
    CloudEnvironment, CopyError, CopyOutcome, CopyRequest, EndpointOptions, EngineSettings,
    Progress, ProgressSnapshot, Provider, ProxyEnvironment, ProxyOptions, Referrer,
    ReferrerSelection, copy_bundle, inspect_bundle, list_tags, verify_bundle,
};

mod hints;
pub use hints::with_hint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

/// Where an endpoint's registry credentials come from (docs/cloud.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ProviderArg {
    /// The Docker config only
    #[default]
    Generic,
    /// ECR, with this machine's or pod's AWS identity
    Aws,
    /// ACR, with the pod's Azure workload identity
    Azure,
    /// Artifact Registry or gcr.io, with the metadata server's Google identity
    Gcp,
}

impl From<ProviderArg> for Provider {
    fn from(provider: ProviderArg) -> Provider {
        match provider {
            ProviderArg::Generic => Provider::Generic,
            ProviderArg::Aws => Provider::Aws,
            ProviderArg::Azure => Provider::Azure,
            ProviderArg::Gcp => Provider::Gcp,
        }
    }
}

/// Flags shared by the commands that talk to registries.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Directory holding the Docker `config.json` with registry credentials
    /// [default: $DOCKER_CONFIG, else ~/.docker]
    #[arg(long, value_name = "DIR")]
    pub docker_config: Option<PathBuf>,

    /// Seconds to wait for any single network read or write before giving up on it
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,

    /// Output format of the result on stdout
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Log filter for stderr (e.g. `info`, `bundlecopy=debug`) [default: warn, or $RUST_LOG]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// How the commands use HTTP proxies, for their `--help`: the rules of reqwest's proxy matcher
/// (docs/operator.md, "HTTP proxies", says the same at length).
pub const PROXY_HELP: &str = "\
HTTP proxies:
  A registry is reached through the proxy given for its endpoint (--source-proxy,
  --destination-proxy, --proxy), else through the one in the environment: HTTPS_PROXY for
  https:// registries, HTTP_PROXY for http:// ones (loopback registries are http:// unless given
  a CA or found to speak TLS), else ALL_PROXY. The upper-case name is read first; the lower-case
  one only when the upper-case one is not set at all. NO_PROXY (or no_proxy) lists what is
  reached directly, comma-separated: a host name also matches its subdomains (a leading dot
  changes nothing); an IP address or CIDR range (10.0.0.0/8) matches hosts written as addresses
  only, names are not resolved; * matches everything; an entry with a port never matches.
  Loopback hosts (localhost, 127.0.0.1) are proxied too unless NO_PROXY lists them. NO_PROXY
  does not apply to a proxy given with a flag. A proxy is http://[USER:PASSWORD@]HOST:PORT
  (https:// for TLS to the proxy; without a scheme http://; without a port 80, or 443 for
  https://); SOCKS proxies are not supported. Proxy credentials are never printed, but a
  password in a flag is visible to other users of this machine in the process list: prefer
  the environment.";

/// How the commands that read one registry (`inspect`, `tags`) reach it.
#[derive(Debug, Clone, Args)]
pub struct OneRegistryArgs {
    /// Allow plain HTTP or an unverified certificate
    #[arg(long)]
    pub insecure_registry: bool,

    /// Trust the CA certificates in this PEM file (verified HTTPS, on loopback too)
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// Reach the registry through this HTTP proxy (http://[USER:PASSWORD@]HOST:PORT) instead of
    /// the environment's HTTPS_PROXY/HTTP_PROXY
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,

    /// Registry credentials from this cloud identity, before the Docker config's
    #[arg(long, value_enum, default_value_t = ProviderArg::Generic)]
    pub provider: ProviderArg,

    #[command(flatten)]
    pub connection: ConnectionArgs,
}

impl OneRegistryArgs {
    /// The endpoint's options: insecure, CA and the Docker config's credentials.
    fn endpoint(&self) -> Result<EndpointOptions, CliError> {
        Ok(EndpointOptions {
            insecure: self.insecure_registry,
            ca_pem: read_ca(self.ca_file.as_deref())?,
            credentials: load_docker_config(self.connection.docker_config.as_deref())?,
            proxy: parse_proxy("--proxy", self.proxy.as_deref())?,
            provider: self.provider.into(),
        })
    }
}

/// Whether the bundle's referrers travel with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ReferrersMode {
    /// Every signature, attestation and SBOM (or those of `--referrer-type`)
    #[default]
    All,
    /// None: the bundle alone
    None,
}

/// Which signatures, attestations and SBOMs (OCI referrers and cosign's tags) go with the bundle.
#[derive(Debug, Clone, Args)]
pub struct ReferrerArgs {
    /// Signatures, attestations and SBOMs of the bundle's manifests (OCI 1.1 referrers, the
    /// `sha256-<hex>` tag schema, cosign's `.sig`/`.att`/`.sbom` tags): `all` or `none`
    #[arg(long, value_enum, value_name = "all|none", default_value_t = ReferrersMode::All)]
    pub referrers: ReferrersMode,

    /// Only referrers of this artifact type, e.g. application/vnd.cncf.notary.signature (repeatable)
    #[arg(long = "referrer-type", value_name = "TYPE")]
    pub referrer_types: Vec<String>,
}

impl ReferrerArgs {
    pub fn selection(&self) -> ReferrerSelection {
        ReferrerSelection {
            copy: self.referrers == ReferrersMode::All,
            artifact_types: self.referrer_types.clone(),
        }
    }
}

/// `bundlecopy copy`: the equivalent of `porter copy`.
#[derive(Debug, Clone, Args)]
pub struct CopyArgs {
    /// The bundle to copy, by tag or digest (REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST),
    /// or in an OCI layout directory (oci:DIR[:TAG]) or archive (oci-archive:FILE[:TAG])
    #[arg(long, value_name = "REFERENCE")]
    pub source: String,

    /// Where to copy it: a registry (host:port), a registry and organisation, a full tagged reference,
    /// or an OCI layout directory (oci:DIR[:TAG]) or archive (oci-archive:FILE[:TAG])
    #[arg(long, value_name = "REFERENCE")]
    pub destination: String,

    /// Allow plain HTTP or an unverified certificate for both endpoints (as `porter copy --insecure-registry`)
    #[arg(long)]
    pub insecure_registry: bool,

    /// Allow plain HTTP or an unverified certificate for the source only
    #[arg(long)]
    pub source_insecure: bool,

    /// Allow plain HTTP or an unverified certificate for the destination only
    #[arg(long)]
    pub destination_insecure: bool,

    /// Trust the CA certificates in this PEM file for the source (verified HTTPS, on loopback too)
    #[arg(long, value_name = "PEM")]
    pub source_ca_file: Option<PathBuf>,

    /// Trust the CA certificates in this PEM file for the destination (verified HTTPS, on loopback too)
    #[arg(long, value_name = "PEM")]
    pub destination_ca_file: Option<PathBuf>,

    /// Reach the source through this HTTP proxy (http://[USER:PASSWORD@]HOST:PORT) instead of the
    /// environment's HTTPS_PROXY/HTTP_PROXY
    #[arg(long, value_name = "URL")]
    pub source_proxy: Option<String>,

    /// Reach the destination through this HTTP proxy (http://[USER:PASSWORD@]HOST:PORT) instead
    /// of the environment's HTTPS_PROXY/HTTP_PROXY
    #[arg(long, value_name = "URL")]
    pub destination_proxy: Option<String>,

    /// Source registry credentials from this cloud identity, before the Docker config's
    #[arg(long, value_enum, default_value_t = ProviderArg::Generic)]
    pub source_provider: ProviderArg,

    /// Destination registry credentials from this cloud identity, before the Docker config's
    #[arg(long, value_enum, default_value_t = ProviderArg::Generic)]
    pub destination_provider: ProviderArg,

    /// Overwrite a destination tag that holds a different bundle
    #[arg(long)]
    pub force: bool,

    /// Blobs copied at once
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub concurrency: usize,

    #[command(flatten)]
    pub referrers: ReferrerArgs,

    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// `bundlecopy inspect`: what a bundle holds.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The bundle to inspect, by tag or digest, or oci:DIR[:TAG] or oci-archive:FILE[:TAG]
    #[arg(value_name = "REFERENCE")]
    pub reference: String,

    #[command(flatten)]
    pub referrers: ReferrerArgs,

    #[command(flatten)]
    pub registry: OneRegistryArgs,
}

/// `bundlecopy verify`: read every manifest and blob of a bundle and check each digest.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The bundle to check, by tag or digest, or oci:DIR[:TAG] or oci-archive:FILE[:TAG]
    #[arg(value_name = "REFERENCE")]
    pub reference: String,

    /// Blobs read at once
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub concurrency: usize,

    #[command(flatten)]
    pub referrers: ReferrerArgs,

    #[command(flatten)]
    pub registry: OneRegistryArgs,
}

/// `bundlecopy tags`: a repository's tags, or those a BundleMirror with the same selection
/// would copy.
#[derive(Debug, Clone, Args)]
pub struct TagsArgs {
    /// The repository, without tag or digest (REGISTRY/REPOSITORY)
    #[arg(value_name = "REPOSITORY")]
    pub repository: String,

    /// Only versions in this semver range, e.g. ">=1.0.0 <2.0.0" or "^1.2" (tags 1.2.3 and v1.2.3 are versions)
    #[arg(long, value_name = "RANGE")]
    pub semver: Option<String>,

    /// Only tags that match this regular expression (anywhere; anchor with ^…$)
    #[arg(long, value_name = "REGEX")]
    pub include: Option<String>,

    /// Leave out tags that match this regular expression
    #[arg(long, value_name = "REGEX")]
    pub exclude: Option<String>,

    /// Only the N highest versions
    #[arg(long, value_name = "N")]
    pub latest: Option<u32>,

    #[command(flatten)]
    pub registry: OneRegistryArgs,
}

/// A CLI failure: the message (one line) and the process exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
}

impl From<CopyError> for CliError {
    fn from(e: CopyError) -> Self {
        CliError {
            message: with_hint(&e),
        }
    }
}

/// The Docker config to use: `--docker-config DIR`, else `$DOCKER_CONFIG`, else `~/.docker`.
/// A missing file means no credentials.
pub fn load_docker_config(dir: Option<&Path>) -> Result<DockerConfig, CliError> {
    let dir = dir
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("DOCKER_CONFIG").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
    let Some(dir) = dir else {
        return Ok(DockerConfig::default());
    };
    let path = dir.join("config.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let config = DockerConfig::parse_config_json(&bytes).map_err(|e| CliError {
                message: format!("Docker config {}: {e}", path.display()),
            })?;
            for helper in config.ignored_helpers() {
                tracing::warn!(
                    "Docker config {} names credential helper {helper:?}, which bundlecopy does not run; \
                     put the credentials in `auths` instead",
                    path.display()
                );
            }
            Ok(config)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerConfig::default()),
        Err(e) => Err(CliError {
            message: format!("cannot read Docker config {}: {e}", path.display()),
        }),
    }
}

fn read_ca(path: Option<&Path>) -> Result<Option<Vec<u8>>, CliError> {
    path.map(|p| {
        std::fs::read(p).map_err(|e| CliError {
            message: format!("cannot read CA file {}: {e}", p.display()),
        })
    })
    .transpose()
}

/// A proxy flag's URL; the message names the flag and never repeats the URL (it may hold a
/// password).
fn parse_proxy(flag: &str, url: Option<&str>) -> Result<Option<ProxyOptions>, CliError> {
    url.map(|url| {
        ProxyOptions::parse(url).map_err(|problem| CliError {
            message: format!("{flag}: {problem}"),
        })
    })
    .transpose()
}

fn settings(connection: &ConnectionArgs, concurrency: usize) -> Result<EngineSettings, CliError> {
    let proxy_environment = ProxyEnvironment::from_env().map_err(|problem| CliError {
        message: format!(
            "the proxy environment variable {problem}; fix it, or unset it to connect directly"
        ),
    })?;
    Ok(EngineSettings {
        max_concurrent_blobs: concurrency.max(1),
        io_timeout: Duration::from_secs(connection.timeout.max(1)),
        proxy_environment,
        cloud_environment: CloudEnvironment::from_env(),
        ..EngineSettings::default()
    })
}

/// Build the engine request from the flags.
pub fn copy_request(args: &CopyArgs) -> Result<CopyRequest, CliError> {
    let credentials = load_docker_config(args.connection.docker_config.as_deref())?;
    Ok(CopyRequest {
        source: args.source.clone(),
        destination: args.destination.clone(),
        source_endpoint: EndpointOptions {
            insecure: args.insecure_registry || args.source_insecure,
            ca_pem: read_ca(args.source_ca_file.as_deref())?,
            credentials: credentials.clone(),
            proxy: parse_proxy("--source-proxy", args.source_proxy.as_deref())?,
            provider: args.source_provider.into(),
        },
        destination_endpoint: EndpointOptions {
            insecure: args.insecure_registry || args.destination_insecure,
            ca_pem: read_ca(args.destination_ca_file.as_deref())?,
            credentials,
            proxy: parse_proxy("--destination-proxy", args.destination_proxy.as_deref())?,
            provider: args.destination_provider.into(),
        },
        force: args.force,
        referrers: args.referrers.selection(),
        settings: settings(&args.connection, args.concurrency)?,
        layouts: true,
    })
}

pub async fn run_copy(args: CopyArgs) -> Result<(), CliError> {
    let request = copy_request(&args)?;
    let progress = Progress::default();
    let started = Instant::now();
    let reporter = ProgressReporter::start(progress.clone());
    let result = copy_bundle(&request, &progress).await;
    reporter.finish().await;
    let outcome = result?;
    print_outcome(&outcome, args.connection.output, started.elapsed())
}

/// " and N signatures/attestations", or nothing for none.
fn and_referrers(count: usize) -> String {
    match count {
        0 => String::new(),
        n => format!(" and {n} signatures/attestations"),
    }
}

fn print_outcome(
    outcome: &CopyOutcome,
    format: OutputFormat,
    elapsed: Duration,
) -> Result<(), CliError> {
    let p = outcome.progress;
    let mut stderr = std::io::stderr();
    let referrers = and_referrers(outcome.referrers.as_ref().map_or(0, Vec::len));
    if outcome.up_to_date && p.manifests_pushed == 0 {
        let _ = writeln!(
            stderr,
            "{} already holds this bundle{referrers}: nothing else to copy",
            outcome.destination
        );
    } else if outcome.up_to_date {
        // Signatures added at the source since the last copy: the bundle stayed, they moved.
        let _ = writeln!(
            stderr,
            "{} already held this bundle; added the signatures/attestations it lacked in {:.1}s \
             ({} manifests, {} blobs, {} moved): it now holds the bundle{referrers}",
            outcome.destination,
            elapsed.as_secs_f64(),
            p.manifests_pushed,
            p.copied + p.mounted,
            human_bytes(p.bytes),
        );
    } else {
        let _ = writeln!(
            stderr,
            "Copied {} {} in {:.1}s: {} blobs ({} copied, {} mounted, {} skipped), {} moved, {} manifests{referrers}",
            display_name(&outcome.bundle.name),
            outcome.bundle.version,
            elapsed.as_secs_f64(),
            p.blobs,
            p.copied,
            p.mounted,
            p.skipped,
            human_bytes(p.bytes),
            p.manifests,
        );
    }
    let mut stdout = std::io::stdout();
    let written = match format {
        OutputFormat::Text => writeln!(
            stdout,
            "{}@{}",
            without_digest(&outcome.destination),
            outcome.destination_digest
        ),
        OutputFormat::Json => serde_json::to_string_pretty(outcome)
            .map_err(std::io::Error::other)
            .and_then(|json| writeln!(stdout, "{json}")),
    };
    written.map_err(|e| CliError {
        message: format!("cannot write the result: {e}"),
    })
}

/// One referrer on one line: what it is, which digest it refers to, how it was found.
fn referrer_line(referrer: &Referrer) -> String {
    let found = match &referrer.tag {
        Some(tag) => format!("{} {tag}", referrer.found_by.as_str()),
        None => referrer.found_by.as_str().to_string(),
    };
    let artifact_type = if referrer.artifact_type.is_empty() {
        "(no artifact type)"
    } else {
        &referrer.artifact_type
    };
    format!(
        "{}  {artifact_type}  of {}  ({found})",
        referrer.digest, referrer.subject
    )
}

fn display_name(name: &str) -> &str {
    if name.is_empty() { "bundle" } else { name }
}

fn without_digest(reference: &str) -> &str {
    reference.split('@').next().unwrap_or(reference)
}

pub async fn run_inspect(args: InspectArgs) -> Result<(), CliError> {
    let endpoint = args.registry.endpoint()?;
    let report = inspect_bundle(
        &args.reference,
        &endpoint,
        &settings(&args.registry.connection, 8)?,
        &args.referrers.selection(),
    )
    .await?;
    let mut out = String::new();
    match args.registry.connection.output {
        OutputFormat::Json => {
            out = serde_json::to_string_pretty(&report).map_err(|e| CliError {
                message: format!("cannot render the report: {e}"),
            })?;
            out.push('\n');
        }
        OutputFormat::Text => {
            use std::fmt::Write as _;
            let _ = writeln!(
                out,
                "Bundle:     {} {}",
                display_name(&report.bundle.name),
                report.bundle.version
            );
            let _ = writeln!(out, "Reference:  {}", report.reference);
            let _ = writeln!(out, "Digest:     {}", report.digest);
            let _ = writeln!(out, "Media type: {}", report.media_type);
            let _ = writeln!(out, "Images:");
            for image in &report.images {
                let _ = writeln!(
                    out,
                    "  {:<20} {}  {}",
                    image.name, image.image, image.digest
                );
            }
            let _ = writeln!(out, "Relocation map:");
            for (image, relocated) in &report.relocation_map {
                let _ = writeln!(out, "  {image} -> {relocated}");
            }
            let _ = writeln!(out, "Referrers:  {}", report.referrers.len());
            for referrer in &report.referrers {
                let _ = writeln!(out, "  {}", referrer_line(referrer));
            }
        }
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| CliError {
            message: format!("cannot write the report: {e}"),
        })
}

/// Reads every manifest and blob of the bundle and prints what was checked; the first mismatch
/// is the error.
pub async fn run_verify(args: VerifyArgs) -> Result<(), CliError> {
    let endpoint = args.registry.endpoint()?;
    let started = Instant::now();
    let report = verify_bundle(
        &args.reference,
        &endpoint,
        &settings(&args.registry.connection, args.concurrency)?,
        &args.referrers.selection(),
    )
    .await?;
    let out = match args.registry.connection.output {
        OutputFormat::Json => {
            let mut out = serde_json::to_string_pretty(&report).map_err(|e| CliError {
                message: format!("cannot render the report: {e}"),
            })?;
            out.push('\n');
            out
        }
        OutputFormat::Text => format!(
            "Verified {} {}{} in {:.1}s: {} manifests and {} blobs ({}) match their digests\n{}@{}\n",
            display_name(&report.bundle.name),
            report.bundle.version,
            and_referrers(report.referrers.len()),
            started.elapsed().as_secs_f64(),
            report.manifests,
            report.blobs,
            human_bytes(report.bytes),
            without_digest(&report.reference),
            report.digest,
        ),
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| CliError {
            message: format!("cannot write the report: {e}"),
        })
}

/// Lists the repository's tags and prints the selected ones (all of them without a selection
/// flag), highest version first: the same selection code as a BundleMirror's.
pub async fn run_tags(args: TagsArgs) -> Result<(), CliError> {
    let filter = TagFilter {
        semver: args.semver.clone(),
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        latest: args.latest,
    };
    let selection = if filter == TagFilter::default() {
        None
    } else {
        Some(filter.compile().map_err(|e| CliError {
            message: format!("--{}: {e}", e.field()),
        })?)
    };
    let endpoint = args.registry.endpoint()?;
    let tags = list_tags(
        &args.repository,
        &endpoint,
        &settings(&args.registry.connection, 1)?,
    )
    .await?;
    let chosen: Vec<(String, Option<String>)> = match &selection {
        Some(selection) => selection
            .select(tags.iter().map(String::as_str))
            .into_iter()
            .map(|s| (s.tag, s.version.map(|v| v.to_string())))
            .collect(),
        None => tags
            .into_iter()
            .map(|tag| {
                let version = tag_version(&tag).map(|v| v.to_string());
                (tag, version)
            })
            .collect(),
    };
    let out = match args.registry.connection.output {
        OutputFormat::Json => {
            let items: Vec<serde_json::Value> = chosen
                .iter()
                .map(|(tag, version)| serde_json::json!({"tag": tag, "version": version}))
                .collect();
            let mut out = serde_json::to_string_pretty(&items).map_err(|e| CliError {
                message: format!("cannot render the tags: {e}"),
            })?;
            out.push('\n');
            out
        }
        OutputFormat::Text => chosen.iter().map(|(tag, _)| format!("{tag}\n")).collect(),
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| CliError {
            message: format!("cannot write the tags: {e}"),
        })
}

/// Progress on stderr: a live bar on a terminal, plain lines (when counts change) otherwise.
struct ProgressReporter {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressReporter {
    fn start(progress: Progress) -> ProgressReporter {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let terminal = std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let bar = terminal.then(|| {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar
            });
            let mut last = ProgressSnapshot::default();
            let mut stopping = false;
            loop {
                let now = progress.snapshot();
                if let Some(bar) = &bar {
                    bar.set_length(now.total_bytes);
                    bar.set_position(now.bytes);
                    bar.set_message(blob_line(&now));
                } else if now.blobs > 0 && blob_line(&now) != blob_line(&last) {
                    eprintln!(
                        "  {} ({}/{})",
                        blob_line(&now),
                        human_bytes(now.bytes),
                        human_bytes(now.total_bytes)
                    );
                }
                last = now;
                if stopping {
                    break;
                }
                // One more pass after the stop, so the last plain line shows the final counts.
                tokio::select! {
                    _ = &mut stopped => stopping = true,
                    _ = tokio::time::sleep(Duration::from_millis(if terminal { 100 } else { 500 })) => {}
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        });
        ProgressReporter { stop, task }
    }

    async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn blob_line(p: &ProgressSnapshot) -> String {
    format!(
        "blobs: {}/{} done ({} copied, {} mounted, {} skipped), manifests: {}/{}",
        p.copied + p.mounted + p.skipped,
        p.blobs,
        p.copied,
        p.mounted,
        p.skipped,
        p.manifests_pushed,
        p.manifests
    )
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
