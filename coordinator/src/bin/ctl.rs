//! `ctl`: the operator's CLI. Parses arguments, calls [`apiary_coordinator::ctl`],
//! prints, and maps errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use apiary_coordinator::admin_conf::AdminConf;
use apiary_coordinator::ctl::{
    Ctl, CtlError, apply_json, checks_json, colour_wanted, event_line, print_apply, print_checks,
    print_status, status_json,
};
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
        /// Redraw in place until interrupted (Ctrl-C).
        #[arg(long, conflicts_with = "json")]
        watch: bool,
        /// How often --watch redraws.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
    },
    /// Stream what happens (node joined, down, back, removed; certificate
    /// renewed; token rotated) until interrupted.
    Events {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Manage nodes.
    Nodes {
        #[command(subcommand)]
        command: NodesCommand,
    },
    /// The reachability matrix: before Swarm every cluster port between every
    /// pair of hosts, after it Swarm's ports and the overlay data path end to
    /// end. Exit 2 when a required path fails.
    Checks {
        #[arg(long)]
        json: bool,
    },
    /// Forward a local port to a port on a cluster host through the
    /// coordinator and the host's agent (no SSH, no public port). TARGET is
    /// NODE:PORT (the node's loopback), NODE:HOST:PORT (HOST on the node:
    /// loopback or the overlay), SERVICE:PORT (a database server such as
    /// etcd-2, or a Swarm service: inside its container, wherever it runs) or
    /// database:admin (the database's admin port on its leader). Stays in the
    /// foreground until Ctrl-C.
    Tunnel {
        target: String,
        /// Local address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        local: std::net::SocketAddr,
    },
    /// Scale a service: `database=N` adds or removes database servers (one
    /// per host, up to the host count) one at a time, keeping the cluster
    /// healthy (etcd: member add before a server starts, member remove
    /// before its service goes).
    Scale {
        /// `database=N`.
        what: String,
    },
    /// Host configuration (firewall, sysctls, GRUB, daemon.json).
    Hosts {
        #[command(subcommand)]
        command: HostsCommand,
    },
    /// Print (or rotate) the join token new hosts enroll with.
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write man pages for ctl and every subcommand into DIR.
    Man { dir: PathBuf },
    Token {
        #[arg(long)]
        rotate: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum HostsCommand {
    /// Apply the cluster's host configuration now; with --dry-run, print per
    /// host and item the diff that would be applied, changing nothing.
    Apply {
        /// Nodes to apply to (default: all).
        nodes: Vec<String>,
        #[arg(long)]
        dry_run: bool,
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
    // Two workers: `ctl tunnel` moves bulk data both ways at once.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
    // These need no coordinator and no credentials.
    match &args.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            return apiary_coordinator::docs::write_completions(
                &mut Args::command(),
                *shell,
                &mut std::io::stdout(),
            )
            .map_err(|e| CtlError::Failed(format!("writing the completion script: {e}")));
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            let pages =
                apiary_coordinator::docs::write_man_pages(&Args::command(), dir).map_err(|e| {
                    CtlError::Failed(format!("writing man pages to {}: {e}", dir.display()))
                })?;
            println!("wrote {} man pages to {}", pages.len(), dir.display());
            return Ok(());
        }
        _ => {}
    }
    let conf = AdminConf::load(&config_path(args.config))?;
    let mut ctl = Ctl::new(&conf)?;
    let stdout = &mut std::io::stdout();
    let io = |e: std::io::Error| CtlError::Failed(format!("writing output: {e}"));
    match args.command {
        // Handled above, before any connection is made.
        Command::Completions { .. } | Command::Man { .. } => {}
        Command::Status {
            json, watch: false, ..
        } => {
            let status = ctl.status().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status_json(&status)).unwrap_or_default()
                );
            } else {
                let colour = colour_wanted(std::io::IsTerminal::is_terminal(&std::io::stdout()));
                print_status(stdout, &status, colour).map_err(io)?;
            }
        }
        Command::Status {
            watch: true,
            interval,
            ..
        } => {
            use std::io::{IsTerminal, Write};
            let tty = std::io::stdout().is_terminal();
            loop {
                let status = ctl.status().await?;
                let mut frame = Vec::new();
                print_status(&mut frame, &status, colour_wanted(tty)).map_err(io)?;
                if tty {
                    // Home the cursor and clear: redraw in place.
                    print!("\x1b[H\x1b[2J");
                } else {
                    println!("---");
                }
                stdout.write_all(&frame).map_err(io)?;
                stdout.flush().map_err(io)?;
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
        Command::Events { json } => {
            use std::io::Write;
            tokio::select! {
                r = ctl.events(|e| {
                    println!("{}", event_line(e, json));
                    let _ = std::io::stdout().flush();
                }) => r?,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Command::Nodes {
            command: NodesCommand::Remove { name },
        } => {
            let r = ctl.remove_node(&name).await?;
            for step in &r.drained {
                println!("  {step}");
            }
            println!(
                "removed node {name}; revoked {} certificate(s)",
                r.revoked_serials.len()
            );
        }
        Command::Tunnel { target, local } => {
            use apiary_coordinator::tunnel_client::{TunnelCtl, bind, parse_target};
            let tunnel = TunnelCtl::new(&conf, parse_target(&target)?)?;
            tunnel.check().await?;
            let listener = bind(local).await?;
            let addr = listener
                .local_addr()
                .map_err(|e| CtlError::Failed(e.to_string()))?;
            println!("forwarding {addr} -> {target} (Ctrl-C to stop)");
            use std::io::Write;
            let _ = std::io::stdout().flush();
            tokio::select! {
                r = tunnel.serve(listener) => r?,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Command::Scale { what } => {
            let n = what
                .strip_prefix("database=")
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| {
                    CtlError::Failed(format!("scale {what}: write database=N (N servers)"))
                })?;
            let summary = ctl.scale_database(n).await?;
            println!("{summary}");
        }
        Command::Checks { json } => {
            let checks = ctl.checks().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&checks_json(&checks)).unwrap_or_default()
                );
            } else {
                print_checks(stdout, &checks).map_err(io)?;
            }
            if !checks.failures.is_empty()
                || !checks.swarm_error.is_empty()
                || checks.phase == "none"
            {
                return Err(CtlError::CheckFailed(format!(
                    "{} failing path(s){}",
                    checks.failures.len(),
                    if checks.swarm_error.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", checks.swarm_error)
                    }
                )));
            }
        }
        Command::Hosts {
            command:
                HostsCommand::Apply {
                    nodes,
                    dry_run,
                    json,
                },
        } => {
            let hosts = ctl.apply_hosts(nodes, dry_run).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&apply_json(&hosts, dry_run)).unwrap_or_default()
                );
            } else {
                print_apply(stdout, &hosts, dry_run).map_err(io)?;
            }
            let failed = hosts
                .iter()
                .any(|h| !h.error.is_empty() || h.items.iter().any(|i| i.outcome == "failed"));
            if failed {
                return Err(CtlError::Failed(
                    "some hosts or items failed (see above)".into(),
                ));
            }
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
