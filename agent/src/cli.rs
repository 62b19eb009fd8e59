//! The agent's command line, as a clap definition in the library so that its
//! man page, completions and the tests that walk it read the same one the
//! binary parses with.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Usage or configuration error (sysexits EX_USAGE), as for `coordinator` and `ctl`.
pub const EXIT_USAGE: u8 = 64;

/// apiary's host agent: enrolls this host into a cluster with a join token, then
/// keeps one mutual-TLS session to the coordinator (heartbeats, facts,
/// commands). Settings come from --config (as written by cloud-init or the
/// lab) and are overridden by flags.
///
/// Exit codes: 0 ok, 1 failure, 2 a check failed (ctl checks), 64 usage or
/// configuration error, 69 unavailable (the coordinator unreachable, or
/// no Swarm manager's engine answers ctl docker), 75 state directory in use
/// by another coordinator, 77 refused (token, certificate, role,
/// revocation).
///
/// The agent itself stops with 0, 1, 64 or 77 (refused: a bad or rotated
/// token, a revoked or expired certificate, a CA mismatch).
#[derive(Debug, Parser)]
#[command(name = "agent", version = apiary_api::version::current())]
pub struct Args {
    /// Agent config file (TOML: coordinator, token, state_dir, name, docker_socket, ...).
    #[arg(long, env = "APIARY_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Watch an upgrade of the agent in this state directory and roll it
    /// back if the new agent does not come up (started by the agent itself
    /// while it upgrades; not for operators).
    #[arg(long, hide = true, value_name = "STATE_DIR")]
    pub upgrade_guard: Option<PathBuf>,
    /// Coordinator address, HOST:PORT.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// Join token (APIARY-1-...); only needed until this host holds a certificate.
    #[arg(long, env = "APIARY_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where the key, certificate and CA are kept (0600).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Node name (default: the hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// The local Docker engine's socket.
    #[arg(long)]
    pub docker_socket: Option<PathBuf>,
    /// Manage host files (daemon.json, GRUB defaults) below this prefix.
    #[arg(long)]
    pub root_prefix: Option<PathBuf>,
    /// Shell command restarting the Docker engine after daemon.json changed.
    #[arg(long)]
    pub engine_restart: Option<String>,
    /// Never load kernel modules (report them instead).
    #[arg(long)]
    pub no_modprobe: bool,
    /// Never regenerate GRUB's config (report needs-reboot only).
    #[arg(long)]
    pub no_update_grub: bool,
    /// CIDRs tunnels may reach on this host, comma-separated (default:
    /// loopback and the overlay, 127.0.0.0/8,::1/128,10.232.0.0/16). The
    /// coordinator writes the cluster's `[tunnel] allow` here for the hosts
    /// it creates; the agent refuses every other target.
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub tunnel_allow: Option<Vec<String>>,
    /// Let admins reach this host's Docker engine through the coordinator
    /// (`ctl docker`). Off unless set here or by `engine_access = true` in
    /// the config file; the coordinator sets it on the hosts it creates.
    #[arg(long)]
    pub engine_access: bool,
    /// Log format: text or json (one JSON object per line, for journald and
    /// log shippers).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Write the agent's man page (agent.1) into DIR and exit (for packagers).
    #[arg(long, value_name = "DIR", hide = true)]
    pub generate_man: Option<PathBuf>,
    /// Print a shell completion script (bash, zsh, fish, ...) and exit.
    #[arg(long, value_name = "SHELL", hide = true)]
    pub generate_completions: Option<clap_complete::Shell>,
}

/// Parses this process's arguments. `--help` and `--version` print on stdout
/// and give exit 0; a usage error prints clap's message (naming the offending
/// argument) on stderr and gives exit 64, never clap's own 2 (one
/// implementation for every program: [`apiary_proto::process::parse`]).
pub fn parse() -> Result<Args, ExitCode> {
    apiary_proto::process::parse()
}
