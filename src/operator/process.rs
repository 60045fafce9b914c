//! The operator as a process: logging and signals.

use anyhow::Context as _;
use tokio::sync::watch;

use super::args::{ControllerArgs, LogFormat};
use super::health::{Readiness, Role};

pub fn init_logging(args: &ControllerArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level).with_context(|| {
        format!(
            "--log-level {:?} is not a valid filter such as `info` or `info,bundlecopy=debug`",
            args.log_level
        )
    })?;
    // Colours only on a terminal: container logs and files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // Another part of the program may already have installed a subscriber; keep it.
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// Resolves once `receiver` sees `true` (or its sender is gone).
pub async fn until_set(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|set| *set).await;
}

/// Sets the shutdown flag on SIGTERM/SIGINT; a second signal ends the process at once.
pub fn handle_signals(shutdown: watch::Sender<bool>, readiness: Readiness) {
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(
            "shutdown requested; finishing running copies (signal again to stop at once)"
        );
        readiness.set(Role::Stopping);
        let _ = shutdown.send(true);
        shutdown_signal().await;
        tracing::warn!("second signal: stopping without waiting for running copies");
        std::process::exit(130);
    });
}
