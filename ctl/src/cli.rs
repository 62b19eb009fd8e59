//! `ctl`'s command line, as a clap definition. It lives in the library so
//! that the binary, its completions and man pages, and the tests that walk
//! every subcommand all read the same tree; the binary only parses with it
//! ([`apiary_proto::process::parse`]: a usage error exits 64) and acts.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Operate an apiary cluster over mutual TLS with an admin certificate.
///
/// Credentials come from admin.conf (written by `coordinator serve` into its
/// state directory): --config, or APIARY_CONFIG, or ~/.apiary/admin.conf.
///
/// Exit codes: 0 ok, 1 failure, 2 a check failed (ctl checks), 64 usage or
/// configuration error, 69 unavailable (the coordinator unreachable, or
/// no Swarm manager's engine answers ctl docker), 75 state directory in use
/// by another coordinator, 77 refused (token, certificate, role,
/// revocation).
#[derive(Debug, Parser)]
#[command(name = "ctl", version)]
pub struct Args {
    /// admin.conf to use.
    #[arg(long, global = true, env = "APIARY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Nodes at a glance: state (ready/down), addresses, last seen, kernel, Docker.
    Status {
        /// Machine-readable output (stable field names, see docs/json.md).
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
        /// One JSON object per line (stable field names, see docs/json.md).
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
        /// Every cell and failure as JSON (stable field names, see docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Forward a local port to a port on a cluster host through the
    /// coordinator and the host's agent (no SSH, no public port). Stays in
    /// the foreground until Ctrl-C.
    Tunnel {
        /// NODE:PORT (the node's loopback), NODE:HOST:PORT (HOST on the
        /// node: loopback or the overlay), SERVICE:PORT (a database server
        /// such as etcd-2, or a Swarm service: inside its container,
        /// wherever it runs) or database:admin (the database's admin port
        /// on its leader).
        target: String,
        /// Local address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        local: std::net::SocketAddr,
    },
    /// Run your own `docker` CLI against the swarm: `ctl docker -- service ls`.
    ///
    /// Docker's API travels over apiary's mutual TLS (ctl, coordinator,
    /// the host's agent, its engine's socket): no Docker port on TCP, no SSH.
    /// Without --node it reaches a Swarm manager's engine, the leader first
    /// and another manager when one does not answer. Everything docker does
    /// works: `stack deploy`, `service logs -f`, `exec -it`, `load`. Exits
    /// with docker's exit code.
    Docker {
        /// One node's engine instead of a manager's (e.g. a worker's `ps`).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// Arguments for docker, after `--`.
        #[arg(
            value_name = "ARGS",
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true
        )]
        args: Vec<std::ffi::OsString>,
    },
    /// Serve the swarm's Docker API on a local unix socket (0600) until
    /// Ctrl-C, for any Docker client: prints the `export DOCKER_HOST=...`.
    DockerProxy {
        /// One node's engine instead of a manager's.
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// The socket to serve (default: CLUSTER.sock in
        /// $XDG_RUNTIME_DIR/apiary, or /tmp/apiary-UID).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// docker-machine's `env`: start a background docker proxy for this
    /// cluster (if none runs) and print the shell lines that point docker
    /// at it. Use: eval $(ctl docker-env)
    DockerEnv {
        /// One node's engine instead of a manager's.
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// Stop the background proxy and print `unset DOCKER_HOST`.
        #[arg(long)]
        unset: bool,
    },
    /// Scale the cluster: `hosts=N` makes or removes hosts, `database=N`
    /// database servers.
    ///
    /// `hosts=N` (providers that make hosts: lab): new hosts are made,
    /// enrolled, configured, checked, joined to Swarm and the overlay, and
    /// get a database server where the database's count allows; surplus
    /// hosts are drained first, the highest-numbered first (database server
    /// out through the database's API, Swarm node drained and removed,
    /// certificates revoked), then removed. The count is kept: a restarted
    /// coordinator keeps it. `database=N` adds or removes database servers
    /// (one per host, up to the host count) one at a time, keeping the
    /// database healthy (etcd: member add before a server starts, member
    /// remove before its service goes).
    Scale {
        /// `hosts=N` or `database=N`.
        #[arg(value_name = "hosts=N|database=N", value_parser = scale_target)]
        target: ScaleTarget,
        /// Then wait until the cluster is healthy again: every node ready,
        /// in the swarm and on the overlay, the checks passing, the database
        /// healthy. Exit 2 if it is not within --timeout.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, requires = "wait")]
        timeout: std::time::Duration,
    },
    /// The clustered database ([database]).
    Database {
        #[command(subcommand)]
        command: DatabaseCommand,
    },
    /// Host configuration (firewall, sysctls, GRUB, daemon.json).
    Hosts {
        #[command(subcommand)]
        command: HostsCommand,
    },
    /// The coordinator itself: the endpoints agents may reach it at.
    Coordinator {
        #[command(subcommand)]
        command: CoordinatorCommand,
    },
    /// Print (or rotate) the join token new hosts enroll with.
    Token {
        /// Make a new token first; the old one is refused for new enrollments.
        #[arg(long)]
        rotate: bool,
        /// The token and its expiry as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write man pages for ctl and every subcommand into DIR.
    Man {
        /// Directory to write the pages into (created if missing).
        dir: PathBuf,
    },
}

/// What `ctl scale` changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleTarget {
    /// `hosts=N`
    Hosts(u32),
    /// `database=N`
    Database(u32),
}

/// `hosts=N` or `database=N`.
fn scale_target(what: &str) -> Result<ScaleTarget, String> {
    let count = |n: &str| n.parse::<u32>().ok();
    if let Some(n) = what.strip_prefix("hosts=").and_then(count) {
        return Ok(ScaleTarget::Hosts(n));
    }
    if let Some(n) = what.strip_prefix("database=").and_then(count) {
        return Ok(ScaleTarget::Database(n));
    }
    Err("write hosts=N (N hosts) or database=N (N servers)".to_string())
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// Apply the cluster's host configuration now; with --dry-run, print per
    /// host and item the diff that would be applied, changing nothing.
    Apply {
        /// Nodes to apply to (default: all).
        nodes: Vec<String>,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Per host and item, the outcome as JSON (see docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Reboot hosts one at a time, keeping the cluster up: each is drained
    /// in Swarm, rebooted by its provider (lab: a power cycle; DigitalOcean:
    /// the droplet's reboot action), waited for until its agent is back, its
    /// host configuration ok, its Swarm node ready and the database healthy,
    /// then made active again. Refused while the database is degraded (a
    /// reboot would take a second server down).
    Reboot {
        /// Nodes to reboot (default: all), in the order the cluster places
        /// them, the Swarm leader last.
        nodes: Vec<String>,
        /// Only the hosts whose host configuration reports needs-reboot.
        #[arg(long)]
        needed: bool,
    },
    /// Upgrade hosts' agents to the build the coordinator serves (the
    /// `agent` binary beside it, or `[coordinator] agent_binary`), one host
    /// at a time and without SSH: each agent downloads the build over its
    /// mTLS session, checks its SHA-256, keeps its old binary and restarts
    /// into the new one; the next host starts once this one is connected on
    /// the new version, ready and its host configuration ok. A new agent
    /// that is not acknowledged within --deadline (or exits at start) is
    /// rolled back by its host, and the rollout stops there, naming the host
    /// and why (exit 1). Hosts already on the build are skipped; `ctl
    /// status` shows each host's agent version. Docker, Swarm and the
    /// database keep running while an agent restarts.
    Upgrade {
        /// Nodes to upgrade (default: all), in the order the cluster places
        /// them, the Swarm leader last.
        nodes: Vec<String>,
        /// How long each new agent has to connect before its host rolls it
        /// back.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// The version and steps as JSON (see docs/json.md).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DatabaseCommand {
    /// What a client needs to connect when `[database] auth` is on
    /// (the default): RethinkDB's admin user and password; for etcd a
    /// client certificate and key from the cluster CA (new on every call,
    /// valid 30 days) and the CA. Clients reach a server through `ctl
    /// tunnel SERVER:PORT`; containers you deploy get them only if you give
    /// them (e.g. `ctl database credentials --out DIR`, then `ctl docker --
    /// secret create db-password DIR/password` and mount the secret).
    Credentials {
        /// Write them into DIR (created if missing), each file 0600:
        /// `password`, or `ca.pem`, `client.pem` and `client.key`.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Print them as JSON (see docs/json.md).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CoordinatorCommand {
    /// The endpoints (HOST:PORT) agents may reach the coordinator at: its
    /// own address, then those added here. Agents save the list and, when
    /// no session can be had, try the next one, so a coordinator moved to
    /// another address is found without touching any host.
    ///
    /// Moving the coordinator: first `ctl coordinator endpoints add
    /// NEW:PORT` while it still runs (every connected agent must
    /// acknowledge), then `coordinator backup`, stop it, `coordinator
    /// restore` on the new host and `coordinator serve` there, listening on
    /// NEW:PORT (or advertising it). Agents that were never told the new
    /// address cannot find it: add it before the move, or keep the old
    /// address (move the IP with the coordinator). Without a subcommand,
    /// lists them.
    #[command(args_conflicts_with_subcommands = true)]
    Endpoints {
        /// The list as JSON (see docs/json.md).
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<EndpointsCommand>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EndpointsCommand {
    /// Store HOST:PORT in the cluster's list (kept in the store, so in
    /// backups) and hand the list to every connected agent. Prints how many
    /// acknowledged and which did not; exit 1 if any did not (they are told
    /// when their next session starts).
    Add {
        /// An IP address ([ADDRESS] for IPv6) or DNS name, and a port.
        #[arg(value_name = "HOST:PORT", value_parser = endpoint)]
        endpoint: apiary_api::endpoints::CoordinatorEndpoint,
        /// The outcome as JSON (see docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Remove HOST:PORT from the stored list and hand the list to every
    /// connected agent (the coordinator's own address cannot be removed:
    /// agents are always told it).
    Remove {
        /// The stored endpoint, as `ctl coordinator endpoints` lists it.
        #[arg(value_name = "HOST:PORT", value_parser = endpoint)]
        endpoint: apiary_api::endpoints::CoordinatorEndpoint,
        /// The outcome as JSON (see docs/json.md).
        #[arg(long)]
        json: bool,
    },
}

/// `HOST:PORT`, refused (exit 64) with the reason.
fn endpoint(s: &str) -> Result<apiary_api::endpoints::CoordinatorEndpoint, String> {
    apiary_api::endpoints::CoordinatorEndpoint::parse(s).map_err(|e| e.reason.to_string())
}

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// Remove a node: drain it, then refuse its certificate from the next
    /// handshake on.
    Remove {
        /// The node's name (as in `ctl status`).
        name: String,
    },
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Args, Command, ScaleTarget};

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn scale_takes_hosts_or_database_equals_a_count() {
        let args = Args::try_parse_from(["ctl", "scale", "database=3"]).expect("parse");
        assert!(matches!(
            args.command,
            Command::Scale {
                target: ScaleTarget::Database(3),
                wait: false,
                ..
            }
        ));
        let args = Args::try_parse_from(["ctl", "scale", "hosts=6", "--wait"]).expect("parse");
        assert!(matches!(
            args.command,
            Command::Scale {
                target: ScaleTarget::Hosts(6),
                wait: true,
                ..
            }
        ));
        for bad in ["database=", "database=-1", "db=3", "3", "hosts=x"] {
            let e = Args::try_parse_from(["ctl", "scale", bad]).expect_err(bad);
            assert!(e.to_string().contains("write hosts=N"), "{e}");
        }
    }

    #[test]
    fn coordinator_endpoints_take_host_port_and_refuse_the_rest_naming_the_argument() {
        use super::{CoordinatorCommand, EndpointsCommand};
        let args =
            Args::try_parse_from(["ctl", "coordinator", "endpoints", "--json"]).expect("list");
        assert!(matches!(
            args.command,
            Command::Coordinator {
                command: CoordinatorCommand::Endpoints {
                    json: true,
                    command: None
                }
            }
        ));
        let args =
            Args::try_parse_from(["ctl", "coordinator", "endpoints", "add", "10.0.0.2:7443"])
                .expect("add");
        let Command::Coordinator {
            command:
                CoordinatorCommand::Endpoints {
                    command: Some(EndpointsCommand::Add { endpoint, .. }),
                    ..
                },
        } = args.command
        else {
            panic!("not an add: {:?}", args.command);
        };
        assert_eq!(endpoint.as_str(), "10.0.0.2:7443");
        for (bad, why) in [
            ("10.0.0.2", "HOST:PORT"),
            ("10.0.0.2:0", "port 0"),
            ("x y:1", "neither"),
        ] {
            for verb in ["add", "remove"] {
                let e = Args::try_parse_from(["ctl", "coordinator", "endpoints", verb, bad])
                    .expect_err(bad);
                let text = e.to_string();
                assert!(text.contains("<HOST:PORT>") && text.contains(why), "{text}");
            }
        }
    }
}
