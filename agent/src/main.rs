//! `agent`: thin wrapper over [`apiary_agent::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use apiary_agent::cli::Args;
use apiary_agent::config::{AgentConfig, AgentFile};

fn main() -> ExitCode {
    apiary_proto::malloc::tune_for_streaming();
    let args = match apiary_agent::cli::parse() {
        Ok(args) => args,
        Err(code) => return code,
    };
    if let Some(shell) = args.generate_completions {
        use clap::CommandFactory;
        let written = apiary_proto::process::write_completions(
            &mut Args::command(),
            shell,
            &mut std::io::stdout(),
        );
        return match written {
            Err(e) => {
                eprintln!("agent: cannot write the completion script: {e}");
                ExitCode::FAILURE
            }
            Ok(()) => ExitCode::SUCCESS,
        };
    }
    if let Some(dir) = &args.generate_man {
        return match write_man_page(dir) {
            Ok(path) => {
                println!("wrote {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("agent: cannot write the man page to {}: {e}", dir.display());
                ExitCode::from(1)
            }
        };
    }
    if let Some(state_dir) = &args.upgrade_guard {
        // Started by an agent that is upgrading itself (see
        // `apiary_agent::upgrade`); no runtime, no session, one log line.
        let said = apiary_agent::upgrade::guard(state_dir);
        eprintln!("agent upgrade guard ({}): {said}", state_dir.display());
        return ExitCode::SUCCESS;
    }
    apiary_proto::process::init_tracing(&args.log_format, std::io::stderr);
    let file = match &args.config {
        Some(path) => match AgentFile::load(path) {
            Ok(f) => f,
            Err(e) => return fail(&e, apiary_agent::cli::EXIT_USAGE),
        },
        None => AgentFile::default(),
    };
    let flags = AgentFile {
        coordinator: args.coordinator,
        token: args.token,
        state_dir: args.state_dir,
        name: args.name,
        docker_socket: args.docker_socket,
        public_interface: None,
        private_interface: None,
        private_cidr: None,
        ca_cert: None,
        root_prefix: args.root_prefix,
        engine_restart: args.engine_restart,
        modprobe: args.no_modprobe.then_some(false),
        update_grub: args.no_update_grub.then_some(false),
        tunnel_allow: args.tunnel_allow,
        engine_access: args.engine_access.then_some(true),
    };
    let config = match AgentConfig::merge(flags, file) {
        Ok(c) => c,
        Err(e) => return fail(&e, apiary_agent::cli::EXIT_USAGE),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e, 1),
    };
    let ended = runtime.block_on(apiary_agent::run(
        config,
        apiary_proto::process::shutdown_signal(),
    ));
    // Tasks stopped before an exec: nothing of this process's runtime is
    // half-way through a write when the image is replaced.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match ended {
        Ok(apiary_agent::RunEnd::Shutdown) => ExitCode::SUCCESS,
        Ok(apiary_agent::RunEnd::Restart(exe)) => restart_into(&exe),
        Err(e) => fail(&e, u8::try_from(e.exit_code()).unwrap_or(1)),
    }
}

/// Replaces this process with the upgraded binary, same arguments and
/// environment: the PID stays, so the supervisor (systemd, the lab) keeps
/// tracking the agent. Returns only when the exec failed; exiting 1 then
/// lets the supervisor start the agent again (the upgrade guard puts the old
/// binary back when the new one does not come up).
fn restart_into(exe: &std::path::Path) -> ExitCode {
    use std::os::unix::process::CommandExt;
    tracing::info!(exe = %exe.display(), "restarting into the upgraded binary");
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec();
    fail(
        &format!("cannot start the upgraded binary {}: {err}", exe.display()),
        1,
    )
}

/// `agent.1`, from the same clap definition the agent parses with (the
/// packaging flags themselves are hidden from it; the agent has no
/// subcommands, so this is its only page).
fn write_man_page(dir: &std::path::Path) -> std::io::Result<PathBuf> {
    use clap::CommandFactory;
    let pages = apiary_proto::process::write_man_pages(&Args::command(), dir)?;
    Ok(pages
        .into_iter()
        .next()
        .unwrap_or_else(|| dir.join("agent.1")))
}

fn fail(e: &dyn std::fmt::Display, code: u8) -> ExitCode {
    tracing::error!("{e}");
    eprintln!("agent: {e}");
    ExitCode::from(code)
}
