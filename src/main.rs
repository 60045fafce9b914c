//! `bundlecopy`: copy Porter bundles between registries (`copy`, `inspect`), or run the operator
//! (`controller`, `crd`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use bundlecopy::cli::{self, CopyArgs, InspectArgs};

#[derive(Debug, Parser)]
#[command(
    name = "bundlecopy",
    version,
    about = "Copy Porter (CNAB) bundles between OCI registries"
)]
struct Cli {
    /// Log filter for stderr (e.g. `info`, `bundlecopy=debug`) [default: warn; $RUST_LOG]
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy a bundle and every image it references to another registry (like `porter copy`)
    Copy(CopyArgs),
    /// Show a bundle's name, version, digest, images and relocation map
    Inspect(InspectArgs),
}

fn init_logging(filter: Option<&str>) {
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
    bundlecopy::install_crypto_provider();
    init_logging(args.log_level.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match args.command {
            Command::Copy(copy) => cli::run_copy(copy).await,
            Command::Inspect(inspect) => cli::run_inspect(inspect).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::FAILURE
        }
    }
}
