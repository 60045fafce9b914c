//! `bundlecopy`: copy Porter bundles between registries and OCI layouts (`copy`, `inspect`,
//! `verify`, `tags`), or run the operator (`controller`, `crd`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use bundlecopy::cli::{self, CopyArgs, InspectArgs, TagsArgs, VerifyArgs};
use bundlecopy::operator::{self, args::ControllerArgs};

#[derive(Debug, Parser)]
#[command(
    name = "bundlecopy",
    version,
    about = "Copy Porter (CNAB) bundles between OCI registries"
)]
struct Cli {
    /// Log filter for stderr of `copy`, `inspect`, `verify` and `tags` (also accepted after the subcommand)
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy a bundle and every image it references to another registry (like `porter copy`), or
    /// to and from an OCI layout directory or archive
    #[command(after_help = cli::PROXY_HELP)]
    Copy(CopyArgs),
    /// Show a bundle's name, version, digest, images and relocation map
    #[command(after_help = cli::PROXY_HELP)]
    Inspect(InspectArgs),
    /// Read every manifest and blob of a bundle and check each against its digest
    #[command(after_help = cli::PROXY_HELP)]
    Verify(VerifyArgs),
    /// List a repository's tags, or those a BundleMirror with the same selection would copy
    #[command(after_help = cli::PROXY_HELP)]
    Tags(TagsArgs),
    /// Run the BundleCopy operator against the current Kubernetes cluster
    Controller(ControllerArgs),
    /// Print a CustomResourceDefinition (YAML): BundleCopy, or BundleMirror with `bundlemirror`
    Crd {
        /// `bundlecopy` or `bundlemirror`
        #[arg(value_name = "KIND", default_value = "bundlecopy", value_parser = ["bundlecopy", "bundlemirror"])]
        kind: String,
    },
}

fn init_cli_logging(filter: Option<&str>) {
    let filter = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "warn".to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let args = Cli::parse();
    if let Command::Crd { kind } = &args.command {
        match kind.as_str() {
            "bundlemirror" => print!("{}", bundlecopy::operator::mirror::api::crd_yaml()),
            _ => print!("{}", bundlecopy::operator::crd::crd_yaml()),
        }
        return ExitCode::SUCCESS;
    }
    bundlecopy_engine::install_crypto_provider();
    // A copy is I/O and hashing on a handful of streams: one thread does it with less CPU than a
    // pool whose threads compete with the registries; the controller serves many objects at once.
    let mut builder = match args.command {
        Command::Controller(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match args.command {
            Command::Copy(copy) => {
                init_cli_logging(
                    copy.connection
                        .log_level
                        .as_deref()
                        .or(args.log_level.as_deref()),
                );
                cli::run_copy(copy).await.map_err(|e| e.message)
            }
            Command::Inspect(inspect) => {
                init_cli_logging(
                    inspect
                        .registry
                        .connection
                        .log_level
                        .as_deref()
                        .or(args.log_level.as_deref()),
                );
                cli::run_inspect(inspect).await.map_err(|e| e.message)
            }
            Command::Verify(verify) => {
                init_cli_logging(
                    verify
                        .registry
                        .connection
                        .log_level
                        .as_deref()
                        .or(args.log_level.as_deref()),
                );
                cli::run_verify(verify).await.map_err(|e| e.message)
            }
            Command::Tags(tags) => {
                init_cli_logging(
                    tags.registry
                        .connection
                        .log_level
                        .as_deref()
                        .or(args.log_level.as_deref()),
                );
                cli::run_tags(tags).await.map_err(|e| e.message)
            }
            // The controller sets up its own logging (text or JSON).
            Command::Controller(controller) => operator::run(controller)
                .await
                .map_err(|e| format!("{e:#}")),
            Command::Crd { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
