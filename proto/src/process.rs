//! What apiary's programs (coordinator, agent, ctl) do alike at start and at
//! the end: parse their command line ([`parse`]: a usage error exits 64),
//! render it as completions and man pages ([`write_completions`],
//! [`write_man_pages`]), and, for the long-running ones, their log output
//! and the signals that stop them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use apiary_api::exit;
use tracing_subscriber::fmt::MakeWriter;

/// Parses this process's arguments as `T`. `--help` and `--version` print
/// on stdout and give exit 0; a usage error prints clap's message (which
/// names the offending argument) on stderr and gives exit 64
/// ([`exit::USAGE`]), never clap's own 2, which means "a check failed" here.
pub fn parse<T: clap::Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| {
        // Nothing more to say if even this cannot be written (`| head`).
        let _ = e.print();
        let code = if e.use_stderr() {
            exit::USAGE
        } else {
            exit::OK
        };
        ExitCode::from(u8::try_from(code).unwrap_or(1))
    })
}

/// Writes `name.1` and one page per subcommand (`name-sub.1`, recursively)
/// into `dir` (created if missing), from the same clap definition the
/// program parses with, so the pages cannot drift from the real flags.
pub fn write_man_pages(cmd: &clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    write_page(cmd.clone(), cmd.get_name().to_string(), dir, &mut written)?;
    Ok(written)
}

fn write_page(
    cmd: clap::Command,
    name: String,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let cmd = cmd.name(name.clone());
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, out)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_page(
            sub.clone(),
            format!("{name}-{}", sub.get_name()),
            dir,
            written,
        )?;
    }
    Ok(())
}

/// Completion script for `shell` on stdout-like `out`. Rendered first and
/// written once: `clap_complete::generate` panics when a write fails, and a
/// reader that stops early (`... | head`) is not an error, so a closed pipe
/// ends quietly; any other write error is returned.
pub fn write_completions(
    cmd: &mut clap::Command,
    shell: clap_complete::Shell,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, cmd, name, &mut script);
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> clap::Command {
        clap::Command::new("prog")
            .subcommand(clap::Command::new("run").subcommand(clap::Command::new("fast")))
            .subcommand(clap::Command::new("stop"))
    }

    #[test]
    fn man_pages_are_one_per_command_without_help() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pages = write_man_pages(&cmd(), &dir.path().join("man")).expect("write");
        let mut names: Vec<_> = pages
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["prog-run-fast.1", "prog-run.1", "prog-stop.1", "prog.1"]
        );
        assert!(pages.iter().all(|p| p.is_file()));
    }

    #[test]
    fn completions_name_the_program_and_a_closed_pipe_is_no_error() {
        let mut out = Vec::new();
        write_completions(&mut cmd(), clap_complete::Shell::Bash, &mut out).expect("write");
        let script = String::from_utf8(out).expect("utf-8");
        assert!(script.contains("complete -F _prog"), "{script}");

        struct Closed;
        impl std::io::Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        write_completions(&mut cmd(), clap_complete::Shell::Bash, &mut Closed).expect("quiet");
    }
}
