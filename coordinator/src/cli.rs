//! The command line of `coordinator`, as a clap definition. It lives in the
//! library so that the binary, its completions and man pages, and the tests
//! that walk every subcommand all read the same tree; the binary only parses
//! with it ([`parse`]) and acts. `ctl`'s is in `apiary_ctl::cli`.

/// Parses this process's arguments as `T`, a usage error giving exit 64
/// (one implementation for every program, in [`apiary_proto::process`]).
pub use apiary_proto::process::parse;

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
    /// configuration error, 69 unavailable (the coordinator unreachable, or
    /// no Swarm manager's engine answers ctl docker), 75 state directory in use
    /// by another coordinator, 77 refused (token, certificate, role,
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
            /// The IP:PORT hosts dial, derived by whoever starts serve
            /// (`coordinator up` passes the coordinator droplet's VPC
            /// address); a spec that sets coordinator.advertise too is
            /// refused.
            #[arg(long, value_name = "IP:PORT")]
            advertise: Option<SocketAddr>,
            /// DigitalOcean: also give every droplet this SSH key (its id or
            /// fingerprint), beside digitalocean.ssh_keys (`coordinator up`
            /// passes its per-cluster key). Repeatable.
            #[arg(long = "ssh-key", value_name = "ID|FINGERPRINT")]
            ssh_keys: Vec<String>,
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
        /// From your laptop to a cluster on DigitalOcean, in one command:
        /// the VPC, a coordinator droplet in it (its SSH host key made here
        /// and pinned, reached once over SSH to install and start the
        /// coordinator, the API token in a root-only file there), then the
        /// hosts, Swarm, the overlay and the database, made by that
        /// coordinator. Leaves DIR/admin.conf for `ctl --config
        /// DIR/admin.conf ...`, which reaches the coordinator's public
        /// address over mutual TLS, opened by the Cloud Firewall to
        /// --admin-cidr only. Needs DIGITALOCEAN_ACCESS_TOKEN and OpenSSH's
        /// client. Undo with `coordinator teardown --config FILE --state-dir
        /// DIR`.
        Up {
            /// The cluster spec (provider.kind = "digitalocean"; see
            /// deploy/examples/digitalocean.toml). No coordinator.advertise:
            /// it is derived.
            #[arg(long)]
            config: PathBuf,
            /// Where this machine keeps the cluster's SSH keys, the pinned
            /// host key and admin.conf (created 0700).
            #[arg(long, default_value = "apiary")]
            state_dir: PathBuf,
            /// A network you administer from (IPv4, e.g. 203.0.113.7/32):
            /// the only source of SSH and of ctl's port. Repeatable;
            /// required (never 0.0.0.0/0).
            #[arg(long = "admin-cidr", value_name = "CIDR")]
            admin_cidrs: Vec<String>,
            /// Run the coordinator on this host's droplet (one of the
            /// spec's hosts; its agent is installed beside it once the
            /// coordinator runs) instead of a small droplet of its own.
            #[arg(long, value_name = "HOST")]
            on_host: Option<String>,
            /// How long the hosts and the database may take once the
            /// coordinator runs.
            #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
            timeout: std::time::Duration,
            /// Progress as plain timestamped lines even on a terminal.
            #[arg(long)]
            quiet: bool,
        },
        /// Remove everything the provider made for this cluster (lab: engines,
        /// agents, namespaces, links, bridges, data; DigitalOcean: the
        /// droplets, firewalls and VPC, and what `coordinator up` made: its
        /// coordinator droplet and SSH key) and say what was removed.
        Teardown {
            /// The cluster spec the cluster was made from.
            #[arg(long)]
            config: PathBuf,
            /// The coordinator's state directory (as given to serve, or to
            /// `coordinator up`).
            #[arg(long)]
            state_dir: PathBuf,
            /// DigitalOcean: keep the coordinator droplet (its coordinator
            /// is stopped, so it makes no host again) and its SSH key.
            #[arg(long)]
            keep_coordinator: bool,
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
        /// Save the coordinator's state (the store, the CA and its key, database
        /// peer keys, the join token, admin.conf) into one file, while `serve`
        /// runs or not; `restore` makes a state directory from it.
        ///
        /// With serve running, the store comes from it over the admin API
        /// (one consistent read), with the admin certificate of DIR/admin.conf;
        /// otherwise it is read from DIR (which a serve started meanwhile then
        /// finds in use, exit 75). FILE is written 0600, atomically. Without a
        /// passphrase it is not encrypted, and it holds the cluster's CA key:
        /// keep it like one.
        Backup {
            /// The coordinator's state directory (as given to serve).
            #[arg(long, value_name = "DIR")]
            state_dir: PathBuf,
            /// The backup file to write (replaced whole if it exists).
            #[arg(long, value_name = "FILE")]
            out: PathBuf,
            /// Encrypt with the passphrase in this file (age, scrypt); without
            /// it, APIARY_BACKUP_PASSPHRASE is used if set.
            #[arg(long, value_name = "FILE")]
            passphrase_file: Option<PathBuf>,
            /// Print what the backup holds as JSON (docs/json.md).
            #[arg(long)]
            json: bool,
        },
        /// Make a new state directory from a backup; `coordinator serve
        /// --state-dir DIR` then serves the same cluster (agents keep their
        /// certificates; nodes enrolled after the backup re-enroll with a
        /// join token).
        ///
        /// Refuses a directory that is not empty (exit 64), and a wrong
        /// passphrase (exit 77), writing nothing.
        Restore {
            /// The backup file (from `coordinator backup`).
            #[arg(value_name = "FILE")]
            file: PathBuf,
            /// The new state directory: missing or empty (created 0700).
            #[arg(long, value_name = "DIR")]
            state_dir: PathBuf,
            /// The backup's passphrase, in this file; without it,
            /// APIARY_BACKUP_PASSPHRASE is used if set.
            #[arg(long, value_name = "FILE")]
            passphrase_file: Option<PathBuf>,
            /// Print what was restored as JSON.
            #[arg(long)]
            json: bool,
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::coordinator::Args::command().debug_assert();
    }
}
