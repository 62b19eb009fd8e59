//! The command lines of `coordinator` and `ctl`, as clap definitions. They
//! live in the library so that the binaries, their completions and man pages,
//! and the tests that walk every subcommand all read the same tree; the
//! binaries only parse with them ([`parse`]) and act.

use std::process::ExitCode;

use crate::error::exit;

/// Parses this process's arguments as `T`. `--help` and `--version` print
/// on stdout and give exit 0; a usage error prints clap's message (which
/// names the offending argument) on stderr and gives exit 64, never clap's
/// own 2, which means "a check failed" here.
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

/// `coordinator`'s arguments.
pub mod coordinator {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use clap::{Parser, Subcommand};

    /// apiary's coordinator: owns a cluster's CA and desired state, makes hosts
    /// through a provider (manual, lab, digitalocean), enrolls their agents and
    /// serves the agent and admin APIs over mutual TLS.
    ///
    /// Exit codes: 0 ok, 1 failure, 2 a check failed (ctl checks), 64 usage or
    /// configuration error, 69 coordinator unreachable, 75 state directory in
    /// use by another coordinator, 77 refused (token, certificate, role,
    /// revocation).
    #[derive(Debug, Parser)]
    #[command(name = "coordinator", version)]
    pub struct Args {
        /// Log format: text (for people) or json (one JSON object per line
        /// on stderr, progress included, for journald and log shippers).
        #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
        pub log_format: String,
        #[command(subcommand)]
        pub command: Command,
    }

    #[derive(Debug, Subcommand)]
    pub enum Command {
        /// Run the coordinator: create the CA and admin.conf on first start, make
        /// the provider's hosts, enroll agents, serve until interrupted.
        ///
        /// Progress: on a terminal a line per host and a bar per phase; with
        /// --quiet, off a terminal or with NO_COLOR, plain timestamped lines;
        /// with --log-format json, JSON log events.
        Serve {
            /// The cluster spec (TOML; see deploy/examples/).
            #[arg(long)]
            config: PathBuf,
            /// Where the CA, the store and admin.conf live (created 0700).
            #[arg(long)]
            state_dir: PathBuf,
            /// Listen address, overriding coordinator.listen in the config.
            #[arg(long)]
            listen: Option<SocketAddr>,
            /// Progress as plain timestamped lines even on a terminal (no bars
            /// or spinners).
            #[arg(long)]
            quiet: bool,
            /// Lab only: a `docker save` archive (e.g. RethinkDB's image) loaded into
            /// every lab engine, for a [database] whose image cannot be built here.
            #[arg(long)]
            image_archive: Option<PathBuf>,
            /// Serve Prometheus metrics (default address: local-only 127.0.0.1:9464).
            #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
            metrics_listen: Option<SocketAddr>,
        },
        /// Remove everything the provider made for this cluster (lab: engines,
        /// agents, namespaces, links, bridges, data) and say what was removed.
        Teardown {
            /// The cluster spec the cluster was made from.
            #[arg(long)]
            config: PathBuf,
            /// The coordinator's state directory (as given to serve).
            #[arg(long)]
            state_dir: PathBuf,
        },
        /// Print the current join token (asks the running coordinator if there is one).
        Token {
            /// The coordinator's state directory (as given to serve).
            #[arg(long)]
            state_dir: PathBuf,
            /// Make a new token; the old one is refused for new enrollments.
            #[arg(long)]
            rotate: bool,
        },
        /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
        Completions {
            /// The shell to complete for.
            shell: clap_complete::Shell,
        },
        /// Write man pages for coordinator and every subcommand into DIR.
        Man {
            /// Directory to write the pages into (created if missing).
            dir: PathBuf,
        },
    }
}

/// `ctl`'s arguments.
pub mod ctl {
    use std::path::PathBuf;

    use clap::{Parser, Subcommand};

    /// Operate an apiary cluster over mutual TLS with an admin certificate.
    ///
    /// Credentials come from admin.conf (written by `coordinator serve` into its
    /// state directory): --config, or APIARY_CONFIG, or ~/.apiary/admin.conf.
    ///
    /// Exit codes: 0 ok, 1 failure, 2 a check failed (ctl checks), 64 usage or
    /// configuration error, 69 coordinator unreachable, 75 state directory in
    /// use by another coordinator, 77 refused (token, certificate, role,
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
            /// One JSON object per line (stable field names, see the README).
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
            /// Every cell and failure as JSON (stable field names, see the README).
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
        /// Scale a service: `database=N` adds or removes database servers (one
        /// per host, up to the host count) one at a time, keeping the cluster
        /// healthy (etcd: member add before a server starts, member remove
        /// before its service goes).
        Scale {
            /// `database=N`: the number of database servers wanted.
            #[arg(value_name = "database=N", value_parser = database_servers)]
            servers: u32,
        },
        /// Host configuration (firewall, sysctls, GRUB, daemon.json).
        Hosts {
            #[command(subcommand)]
            command: HostsCommand,
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

    /// `database=N` → N.
    fn database_servers(what: &str) -> Result<u32, String> {
        what.strip_prefix("database=")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| "write database=N (N servers)".to_string())
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
            /// Per host and item, the outcome as JSON (see the README).
            #[arg(long)]
            json: bool,
        },
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
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_lines_are_consistent() {
        super::ctl::Args::command().debug_assert();
        super::coordinator::Args::command().debug_assert();
    }

    #[test]
    fn scale_takes_database_equals_a_count() {
        use clap::Parser;
        let args = super::ctl::Args::try_parse_from(["ctl", "scale", "database=3"]).expect("parse");
        assert!(matches!(
            args.command,
            super::ctl::Command::Scale { servers: 3 }
        ));
        for bad in ["database=", "database=-1", "db=3", "3"] {
            let e = super::ctl::Args::try_parse_from(["ctl", "scale", bad]).expect_err(bad);
            assert!(e.to_string().contains("write database=N"), "{e}");
        }
    }
}
