//! `ctl`: the operator's CLI. Parses arguments, calls [`apiary_coordinator::ctl`],
//! prints, and maps errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use apiary_coordinator::admin_conf::AdminConf;
use apiary_coordinator::ctl::{Ctl, CtlError, print_status, status_json};
use clap::{Parser, Subcommand};

/// Operate an apiary cluster over mutual TLS with an admin certificate.
///
/// Credentials come from admin.conf (written by `coordinator serve` into its
/// state directory): --config, or APIARY_CONFIG, or ~/.apiary/admin.conf.
///
/// Exit codes: 0 ok, 1 failure, 64 usage or config error, 69 coordinator
/// unreachable, 77 refused (revoked, expired or foreign certificate).
#[derive(Debug, Parser)]
#[command(name = "ctl", version)]
struct Args {
    /// admin.conf to use.
    #[arg(long, global = true, env = "APIARY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Nodes at a glance: state (ready/down), addresses, last seen, kernel, Docker.
    Status {
        /// Machine-readable output (stable field names, see the README).
        #[arg(long)]
        json: bool,
    },
    /// Manage nodes.
    Nodes {
        #[command(subcommand)]
        command: NodesCommand,
    },
    /// Print (or rotate) the join token new hosts enroll with.
    Token {
        #[arg(long)]
        rotate: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum NodesCommand {
    /// Remove a node: its certificate is refused from the next handshake on.
    Remove { name: String },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ctl: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctl: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".apiary/admin.conf")
    })
}

async fn run(args: Args) -> Result<(), CtlError> {
    let conf = AdminConf::load(&config_path(args.config))?;
    let mut ctl = Ctl::new(&conf)?;
    let stdout = &mut std::io::stdout();
    let io = |e: std::io::Error| CtlError::Failed(format!("writing output: {e}"));
    match args.command {
        Command::Status { json } => {
            let status = ctl.status().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status_json(&status)).unwrap_or_default()
                );
            } else {
                print_status(stdout, &status).map_err(io)?;
            }
        }
        Command::Nodes {
            command: NodesCommand::Remove { name },
        } => {
            let serials = ctl.remove_node(&name).await?;
            println!(
                "removed node {name}; revoked {} certificate(s)",
                serials.len()
            );
        }
        Command::Token { rotate, json } => {
            let (token, expires) = ctl.join_token(rotate).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"token": token, "expires_unix": expires})
                );
            } else {
                println!("{token}");
            }
        }
    }
    Ok(())
}
