//! One `ctl` command from parsed arguments to printed output: what the
//! binary calls once it has parsed its command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use apiary_certs::AdminConf;
use clap::CommandFactory;

use crate::cli::{
    Args, Command, CoordinatorCommand, DatabaseCommand, EndpointsCommand, HostsCommand,
    NodesCommand, ScaleTarget,
};
use crate::commands::{
    Ctl, CtlError, apply_json, checks_json, colour_wanted, endpoints_json, event_line, print_apply,
    print_checks, print_endpoints, print_endpoints_change, print_status, status_json,
};
use crate::tunnel::{TunnelCtl, bind, parse_target};

/// `--config`, else `APIARY_CONFIG` (clap reads it into the flag), else
/// `~/.apiary/admin.conf`.
fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".apiary/admin.conf")
    })
}

/// Runs `args`' command until it is done (or, for the commands that stay,
/// until Ctrl-C), printing on stdout.
///
/// Ok is the exit code: 0, or what `ctl docker`'s docker exited with.
pub async fn run(args: Args) -> Result<i32, CtlError> {
    // These need no coordinator and no credentials.
    match &args.command {
        Command::Completions { shell } => {
            return apiary_proto::process::write_completions(
                &mut Args::command(),
                *shell,
                &mut std::io::stdout(),
            )
            .map(|()| 0)
            .map_err(|e| CtlError::Failed(format!("writing the completion script: {e}")));
        }
        Command::Man { dir } => {
            let pages =
                apiary_proto::process::write_man_pages(&Args::command(), dir).map_err(|e| {
                    CtlError::Failed(format!("writing man pages to {}: {e}", dir.display()))
                })?;
            println!("wrote {} man pages to {}", pages.len(), dir.display());
            return Ok(0);
        }
        _ => {}
    }
    let conf_path = config_path(args.config);
    let conf = AdminConf::load(&conf_path)?;
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
                let colour = colour_wanted(std::io::stdout().is_terminal());
                print_status(stdout, &status, colour).map_err(io)?;
            }
        }
        Command::Status {
            watch: true,
            interval,
            ..
        } => {
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
                    _ = tokio::signal::ctrl_c() => return Ok(0),
                }
            }
        }
        Command::Events { json } => {
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
            let tunnel = TunnelCtl::new(&conf, parse_target(&target)?)?;
            tunnel.check().await?;
            let listener = bind(local).await?;
            let addr = listener
                .local_addr()
                .map_err(|e| CtlError::Failed(e.to_string()))?;
            println!("forwarding {addr} -> {target} (Ctrl-C to stop)");
            let _ = std::io::stdout().flush();
            tokio::select! {
                r = tunnel.serve(listener) => r?,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Command::Docker { node, args } => {
            return crate::docker::run(&conf, node.as_deref(), &args).await;
        }
        Command::DockerProxy { node, socket } => {
            let socket = match socket {
                Some(s) => s,
                None => crate::docker::runtime_dir()?
                    .join(crate::docker::socket_name(&conf.cluster, node.as_deref())),
            };
            crate::docker::proxy(&conf, node.as_deref(), &socket).await?;
        }
        Command::DockerEnv { node, unset } => {
            let lines = crate::docker::env(&conf, &conf_path, node.as_deref(), unset).await?;
            print!("{lines}");
        }
        Command::Scale {
            target,
            wait,
            timeout,
        } => {
            let summary = match target {
                ScaleTarget::Hosts(n) => ctl.scale_hosts(n).await?,
                ScaleTarget::Database(n) => ctl.scale_database(n).await?,
            };
            println!("{summary}");
            if wait {
                wait_healthy(&mut ctl, timeout).await?;
            }
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
        Command::Hosts {
            command: HostsCommand::Reboot { nodes, needed },
        } => {
            for step in ctl.reboot_hosts(nodes, needed).await? {
                println!("{}", crate::text::shown(&step));
            }
        }
        Command::Hosts {
            command:
                HostsCommand::Upgrade {
                    nodes,
                    deadline,
                    json,
                },
        } => {
            let done = ctl.upgrade_hosts(nodes, deadline).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"version": done.version, "steps": done.steps})
                );
            } else {
                for step in &done.steps {
                    println!("{}", crate::text::shown(step));
                }
            }
        }
        Command::Database {
            command: DatabaseCommand::Credentials { out, json },
        } => {
            let creds = ctl.database_credentials().await?;
            let files = match &out {
                Some(dir) => crate::database::write_files(&creds, dir)?,
                None => Vec::new(),
            };
            if json {
                println!("{}", crate::database::credentials_json(&creds, &files));
            } else {
                print!("{}", crate::database::credentials_text(&creds, &files)?);
            }
        }
        Command::Coordinator {
            command: CoordinatorCommand::Endpoints { json, command },
        } => {
            let (verb, endpoint, json) = match command {
                None => ("", String::new(), json),
                Some(EndpointsCommand::Add { endpoint, json }) => ("add", endpoint.into(), json),
                Some(EndpointsCommand::Remove { endpoint, json }) => {
                    ("remove", endpoint.into(), json)
                }
            };
            let (add, remove) = match verb {
                "add" => (endpoint.clone(), String::new()),
                "remove" => (String::new(), endpoint.clone()),
                _ => (String::new(), String::new()),
            };
            let r = ctl.coordinator_endpoints(add, remove).await?;
            let change = !verb.is_empty();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&endpoints_json(&r, change)).unwrap_or_default()
                );
            } else if change {
                print_endpoints_change(stdout, verb, &endpoint, &r).map_err(io)?;
            } else {
                print_endpoints(stdout, &r).map_err(io)?;
            }
            // A move relies on every agent knowing the list: one that did
            // not take it is a failure the operator must see (it is stored,
            // and told at that agent's next session).
            if !r.not_acknowledged.is_empty() {
                return Err(CtlError::Failed(format!(
                    "{} connected agent(s) did not acknowledge the coordinator endpoints",
                    r.not_acknowledged.len()
                )));
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
    Ok(0)
}

/// `--wait`: polls until nothing keeps the cluster from being healthy,
/// printing what still does whenever it changes; exit 2 after `timeout`.
async fn wait_healthy(ctl: &mut Ctl, timeout: std::time::Duration) -> Result<(), CtlError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: Vec<String> = Vec::new();
    loop {
        let parts = ctl.unhealthy().await?;
        if parts.is_empty() {
            println!("cluster healthy");
            return Ok(());
        }
        if parts != last {
            println!("waiting: {}", crate::text::shown(&parts.join("; ")));
            let _ = std::io::stdout().flush();
            last = parts;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CtlError::CheckFailed(format!(
                "not healthy after {}: {}",
                humantime::format_duration(timeout),
                last.join("; ")
            )));
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
