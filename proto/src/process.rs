//! What the long-running programs (coordinator, agent) do alike at start
//! and at the end: their log output and the signals that stop them.

use tracing_subscriber::fmt::MakeWriter;

/// Logs to `writer` at `RUST_LOG`'s filter (default `info`): JSON objects,
/// one per line, when `format` is `json`, text otherwise; coloured only
/// for a person at a terminal, and never with `NO_COLOR`.
pub fn init_tracing<W>(format: &str, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        );
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on Ctrl-C or SIGTERM (systemd's stop); never, if SIGTERM
/// cannot be watched (Ctrl-C still works then).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
