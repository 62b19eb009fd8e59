//! `coordinator up`: from an operator's laptop, which nothing can connect
//! to, to a cluster on DigitalOcean, in one command.
//!
//! The coordinator cannot run on the laptop: hosts enroll and keep their
//! sessions by connecting to it, and a laptop behind NAT takes no
//! connections. So `up` makes the coordinator a droplet of its own in the
//! cluster's VPC (as the recipe's `kvstore` machine), installs it there,
//! and leaves the laptop with a `ctl` that talks to it:
//!
//! 1. **Checks, before anything exists**: the spec (DigitalOcean only;
//!    `coordinator.advertise` is derived, so a spec that sets it is
//!    refused), `--admin-cidr` (the only sources of SSH and of `ctl`'s
//!    port; never `/0`), the API token, and the account's preflight for
//!    the hosts plus the coordinator droplet.
//! 2. **Keys, on the laptop** (`STATE_DIR/ssh/`, 0600): a per-cluster SSH
//!    key (registered with the API; every droplet gets it, so DigitalOcean
//!    mails no root password) and the coordinator droplet's SSH *host* key,
//!    made here and put in its user_data, so the laptop pins it before the
//!    droplet exists: nothing is trusted on first use.
//! 3. **The VPC, then the coordinator droplet** in it, with its own tag
//!    and Cloud Firewall: SSH and the gRPC port from `--admin-cidr` only,
//!    the gRPC and artifact ports from the VPC.
//! 4. **One SSH session** (the system's OpenSSH client, host key checked
//!    against the pinned one) streams a tar: the coordinator and agent
//!    binaries with their SHA-256 (checked there before anything is
//!    installed), the spec, the API token in a root-only `EnvironmentFile`
//!    (never user_data, a command line, a log or the store), the systemd
//!    unit; and runs the install, which starts `coordinator serve` with
//!    `--advertise` its VPC address.
//! 5. **admin.conf**: read back over SSH once serve wrote it, its endpoint
//!    made the droplet's public address, written to `STATE_DIR/admin.conf`.
//!    From there on it is `ctl`'s mutual TLS, no SSH: `up` follows the
//!    cluster (`ctl status`) until every host is ready and the database
//!    healthy.
//!
//! `coordinator teardown --state-dir STATE_DIR` (the same directory)
//! removes the coordinator droplet, its firewall and the SSH key as well
//! ([`teardown`]).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apiary_api::exit;
use apiary_certs::AdminConf;
use apiary_digitalocean::cloud_init::render_coordinator_user_data;
use apiary_digitalocean::{
    ClusterTarget, DropletSettings, FirewallSettings, HostName, HostSpec, HostState,
    PreflightTarget, SshKeyRef, TagName, VpcSettings, ensure_vpc, preflight, reconcile,
};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::config::{ClusterConfig, DEFAULT_PORT, ProviderConfig};
use crate::error::CoordinatorError;
use crate::progress::Progress;
use crate::provider::digitalocean::DigitalOceanProvider;

/// The coordinator droplet's size: the smallest, like the recipe's
/// `kvstore` machine (the coordinator needs tens of MiB).
pub const COORDINATOR_SIZE: &str = "s-1vcpu-1gb";
/// Where the coordinator keeps its state on its droplet.
pub const REMOTE_STATE_DIR: &str = "/var/lib/apiary-coordinator";
const UNIT: &str = include_str!("../../deploy/systemd/apiary-coordinator.service");

/// What `coordinator up` is asked for.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub admin_cidrs: Vec<String>,
    /// Run the coordinator on this host's droplet (one of the spec's
    /// hosts) instead of a droplet of its own.
    pub on_host: Option<String>,
    /// How long the cluster may take to be healthy once the coordinator runs.
    pub timeout: Duration,
    pub progress: Progress,
}

/// Why `coordinator up` stopped; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    #[error(
        "{config}: provider {provider}: `coordinator up` makes clusters on DigitalOcean (provider.kind = \"digitalocean\"); run `coordinator serve` for the others"
    )]
    NotDigitalOcean {
        config: PathBuf,
        provider: &'static str,
    },
    #[error(
        "give --admin-cidr CIDR (repeatable): the networks you administer from, the only sources of SSH and of ctl's port; apiary cannot tell which address this machine is seen from"
    )]
    NoAdminCidr,
    #[error("--admin-cidr {cidr}: {reason}")]
    BadAdminCidr { cidr: String, reason: String },
    #[error(
        "{config}: coordinator.listen = {listen}: the coordinator droplet listens on all its addresses ({DEFAULT_PORT} by default); remove coordinator.listen or give a port with 0.0.0.0"
    )]
    BadListen { config: PathBuf, listen: SocketAddr },
    #[error(
        "--on-host {name}: not one of the spec's hosts ({}); name one of them, or leave it out for a coordinator droplet of its own",
        hosts.join(", ")
    )]
    NotAHost { name: String, hosts: Vec<String> },
    #[error(
        "cannot run {tool}: {reason} (install OpenSSH's client: apt-get install openssh-client)"
    )]
    Tool { tool: &'static str, reason: String },
    #[error("{what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the coordinator droplet {name} has no {which} address (the API did not report one)")]
    NoAddress { name: String, which: &'static str },
    #[error("ssh to the coordinator droplet ({host}) {step}: {reason}")]
    Ssh {
        host: Ipv4Addr,
        step: &'static str,
        reason: String,
    },
    #[error(
        "the cluster is not healthy after {}: waiting for {waiting}; the coordinator runs on its droplet and goes on (`ctl --config {} status`)",
        humantime::format_duration(*waited),
        admin_conf.display()
    )]
    NotHealthy {
        waited: Duration,
        waiting: String,
        admin_conf: PathBuf,
    },
}

impl UpError {
    pub fn exit_code(&self) -> i32 {
        match self {
            UpError::Coordinator(e) => e.exit_code(),
            UpError::NotDigitalOcean { .. }
            | UpError::NoAdminCidr
            | UpError::BadAdminCidr { .. }
            | UpError::BadListen { .. }
            | UpError::NotAHost { .. }
            | UpError::Tool { .. } => exit::USAGE,
            UpError::Ssh { .. } => exit::UNAVAILABLE,
            UpError::File { .. } | UpError::NoAddress { .. } | UpError::NotHealthy { .. } => {
                exit::FAILURE
            }
        }
    }
}

/// The names `up` gives what it makes for cluster `cluster`.
#[derive(Debug, Clone)]
pub struct Names {
    pub droplet: String,
    pub tag: TagName,
    pub ssh_key: String,
    /// The alias the pinned host key is filed under (`HostKeyAlias`), so the
    /// droplet's address does not matter to the check.
    pub host_alias: String,
}

impl Names {
    /// With `on_host`, the coordinator's droplet is that host's.
    fn placed(cluster: &str, on_host: Option<&str>) -> Result<Names, CoordinatorError> {
        let mut names = Names::of(cluster)?;
        if let Some(host) = on_host {
            names.droplet = host.to_string();
        }
        Ok(names)
    }

    pub fn of(cluster: &str) -> Result<Names, CoordinatorError> {
        Ok(Names {
            droplet: format!("{cluster}-coordinator"),
            tag: TagName::parse(&format!("apiary-{cluster}-coordinator"))
                .map_err(CoordinatorError::ProviderConfig)?,
            ssh_key: format!("apiary-{cluster}"),
            host_alias: format!("apiary-{cluster}-coordinator"),
        })
    }
}

/// `--admin-cidr`s as the Cloud Firewall takes them (network form).
pub fn admin_cidrs(given: &[String]) -> Result<Vec<String>, UpError> {
    if given.is_empty() {
        return Err(UpError::NoAdminCidr);
    }
    let mut out = Vec::new();
    for raw in given {
        let bad = |reason: &str| UpError::BadAdminCidr {
            cidr: raw.clone(),
            reason: reason.to_string(),
        };
        let (ip, len) = raw.split_once('/').unwrap_or((raw, "32"));
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| bad("expected an IPv4 address or network, e.g. 203.0.113.7/32"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| bad("the prefix length is 0 to 32"))?;
        if len == 0 {
            return Err(bad(
                "that is the whole internet: give the networks you administer from",
            ));
        }
        let mask = u32::MAX << (32 - u32::from(len));
        let network = Ipv4Addr::from(u32::from(ip) & mask);
        out.push(format!("{network}/{len}"));
    }
    out.dedup();
    Ok(out)
}

/// The laptop's files for one cluster, under `STATE_DIR`.
struct Local {
    dir: PathBuf,
}

impl Local {
    fn ssh_dir(&self) -> PathBuf {
        self.dir.join("ssh")
    }
    fn key(&self) -> PathBuf {
        self.ssh_dir().join("id_ed25519")
    }
    fn host_key(&self) -> PathBuf {
        self.ssh_dir().join("coordinator_host_ed25519")
    }
    fn known_hosts(&self) -> PathBuf {
        self.ssh_dir().join("known_hosts")
    }
    fn admin_conf(&self) -> PathBuf {
        self.dir.join("admin.conf")
    }

    fn prepare(&self) -> Result<(), UpError> {
        for dir in [&self.dir, &self.ssh_dir()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| UpError::File {
                    what: "cannot make",
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// An ed25519 key pair at `path` (and `path.pub`), made by ssh-keygen
    /// unless it is there: a second `up` keeps the keys of the first.
    fn ensure_key(path: &Path, comment: &str) -> Result<(String, String), UpError> {
        if !path.exists() {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(path)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| UpError::Tool {
                    tool: "ssh-keygen",
                    reason: e.to_string(),
                })?;
            if !out.status.success() {
                return Err(UpError::Tool {
                    tool: "ssh-keygen",
                    reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
        }
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|source| UpError::File {
                what: "cannot read",
                path: p,
                source,
            })
        };
        Ok((read(path.to_path_buf())?, read(path.with_extension("pub"))?))
    }

    fn write_private(path: &Path, content: &[u8]) -> Result<(), UpError> {
        let aside = path.with_extension("tmp");
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&aside)?;
            f.write_all(content)?;
            f.sync_all()?;
            std::fs::rename(&aside, path)
        })();
        written.map_err(|source| UpError::File {
            what: "cannot write",
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The one SSH identity and pinned host key `up` and `teardown` use.
pub struct Ssh {
    host: Ipv4Addr,
    key: PathBuf,
    known_hosts: PathBuf,
    alias: String,
}

impl Ssh {
    fn command(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(&self.key)
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .arg("-o")
            .arg(format!("HostKeyAlias={}", self.alias))
            .args(["-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15"])
            .args(["-o", "LogLevel=ERROR"])
            .arg(format!("root@{}", self.host))
            .arg(remote);
        c
    }

    /// Runs `remote` with `stdin`; its stdout, or why not.
    async fn run(
        &self,
        step: &'static str,
        remote: &str,
        stdin: Vec<u8>,
    ) -> Result<Vec<u8>, UpError> {
        let mut cmd = self.command(remote);
        let host = self.host;
        let out = tokio::task::spawn_blocking(move || -> std::io::Result<std::process::Output> {
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            if let Some(mut input) = child.stdin.take() {
                input.write_all(&stdin)?;
            }
            child.wait_with_output()
        })
        .await
        .map_err(|e| UpError::Ssh {
            host,
            step,
            reason: e.to_string(),
        })?
        .map_err(|e| UpError::Tool {
            tool: "ssh",
            reason: e.to_string(),
        })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(UpError::Ssh {
                host,
                step,
                reason: format!(
                    "{} ({})",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    out.status
                ),
            })
        }
    }
}

/// The tar stream the one SSH session carries.
fn install_bundle(files: &[(&str, u32, Vec<u8>)]) -> Result<Vec<u8>, std::io::Error> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut sums = String::new();
    for (name, mode, data) in files {
        if *mode & 0o111 != 0 {
            sums.push_str(&format!("{}  {name}\n", hex::encode(Sha256::digest(data))));
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_cksum();
        builder.append_data(&mut header, name, data.as_slice())?;
    }
    let mut header = tar::Header::new_gnu();
    header.set_size(sums.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "SHA256SUMS", sums.as_bytes())?;
    builder.into_inner()
}

/// Run on the coordinator droplet, as root, by the one SSH session: the
/// binaries are checked against the sums computed on the laptop before
/// anything is installed.
const INSTALL_SCRIPT: &str = r#"#!/bin/sh
# Written by `coordinator up` (apiary); run once over its SSH session.
set -eu
d="$1"
cd "$d"
sha256sum -c --quiet SHA256SUMS
install -d -m 0755 /usr/local/bin
for b in coordinator agent; do
  install -m 0755 "$b" "/usr/local/bin/.$b.new"
  mv -f "/usr/local/bin/.$b.new" "/usr/local/bin/$b"
done
install -d -m 0755 /etc/apiary
install -m 0644 cluster.toml /etc/apiary/cluster.toml
install -m 0600 digitalocean.env /etc/apiary/digitalocean.env
install -m 0644 apiary-coordinator.service /etc/systemd/system/apiary-coordinator.service
cd /
rm -rf "$d"
systemctl daemon-reload
systemctl enable --now apiary-coordinator.service
echo "apiary coordinator installed"
"#;

/// The coordinator's unit from deploy/, serving with the addresses `up`
/// derived, the per-cluster SSH key for the hosts, and the API token from
/// a root-only file (systemd reads it before the service's own user).
fn unit(listen: SocketAddr, advertise: SocketAddr, ssh_key_id: u64) -> String {
    let exec = format!(
        "ExecStart=/usr/local/bin/coordinator --log-format json serve --config /etc/apiary/cluster.toml --state-dir {REMOTE_STATE_DIR} --listen {listen} --advertise {advertise} --ssh-key {ssh_key_id}\nEnvironmentFile=/etc/apiary/digitalocean.env"
    );
    UNIT.lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                exec.clone()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// What `up` made or found.
#[derive(Debug, Clone)]
pub struct UpReport {
    pub coordinator: HostState,
    pub admin_conf: PathBuf,
    /// Phase name and how long it took: preflight, api, boot, install and
    /// coordinator one after the other; then enrollment, swarm, overlay and
    /// database, each counted from when the coordinator first answered.
    pub phases: Vec<(&'static str, Duration)>,
}

/// `coordinator up`.
pub async fn up(opts: UpOptions) -> Result<UpReport, UpError> {
    let started = Instant::now();
    let mut phases = Vec::new();
    let progress = opts.progress.clone();
    let local = Local {
        dir: opts.state_dir.clone(),
    };

    // 1. Checks, before anything exists.
    let admin = admin_cidrs(&opts.admin_cidrs)?;
    let text = std::fs::read_to_string(&opts.config).map_err(|source| UpError::File {
        what: "cannot read",
        path: opts.config.clone(),
        source,
    })?;
    // Validated with a stand-in for the VPC address (the real one is known
    // once the droplet exists); the droplet's serve validates again.
    let config = ClusterConfig::parse_with(
        &opts.config,
        &text,
        Some(SocketAddr::from(([10, 0, 0, 2], DEFAULT_PORT))),
    )
    .map_err(CoordinatorError::from)?;
    let ProviderConfig::DigitalOcean(d) = &config.provider else {
        return Err(UpError::NotDigitalOcean {
            config: opts.config.clone(),
            provider: config.provider.kind(),
        });
    };
    if !config.listen.ip().is_unspecified() {
        return Err(UpError::BadListen {
            config: opts.config.clone(),
            listen: config.listen,
        });
    }
    let port = config.listen.port();
    let artifacts_port = crate::artifacts::listen_addr(&config, config.listen)
        .map_err(CoordinatorError::from)?
        .port();
    let provider = DigitalOceanProvider::new(&config.cluster_name, d)?;
    if let Some(host) = &opts.on_host
        && !provider.planned().contains(host)
    {
        return Err(UpError::NotAHost {
            name: host.clone(),
            hosts: provider.planned(),
        });
    }
    let on_host = opts.on_host.is_some();
    let names = Names::placed(&config.cluster_name, opts.on_host.as_deref())?;
    let agent_binary = crate::artifacts::agent_path(&config).map_err(CoordinatorError::from)?;
    let read_binary = |p: &Path| {
        std::fs::read(p).map_err(|source| UpError::File {
            what: "cannot read the binary",
            path: p.to_path_buf(),
            source,
        })
    };
    let coordinator_exe = std::env::current_exe().map_err(|source| UpError::File {
        what: "cannot find this program's own binary",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let binaries = (read_binary(&coordinator_exe)?, read_binary(&agent_binary)?);
    let token = std::env::var(apiary_digitalocean::TOKEN_VAR).unwrap_or_default();

    let phase = progress.phase("preflight", 1);
    let mut hosts: Vec<HostName> = Vec::new();
    let own = (!on_host).then_some(&names.droplet);
    for h in provider.planned().iter().chain(own) {
        hosts
            .push(HostName::parse(h).map_err(|e| CoordinatorError::ProviderConfig(e.to_string()))?);
    }
    let report = preflight(
        provider.client(),
        &PreflightTarget {
            droplet: &provider.settings().droplet,
            tag: provider.tag(),
            hosts: &hosts,
        },
    )
    .await
    .map_err(CoordinatorError::DigitalOceanPreflight)?;
    phase.step(
        "account",
        &format!(
            "{} droplet(s) to create (the coordinator's included), {} in the account",
            report.droplets_to_create, report.droplets_in_account
        ),
    );
    phases.push(("preflight", phase.finish()));

    // 2. Keys, on the laptop.
    local.prepare()?;
    let (_, key_public) = Local::ensure_key(&local.key(), &names.ssh_key)?;
    let (host_private, host_public) =
        Local::ensure_key(&local.host_key(), &format!("{} host key", names.droplet))?;
    Local::write_private(
        &local.known_hosts(),
        format!("{} {}\n", names.host_alias, host_public.trim()).as_bytes(),
    )?;

    // 3. The VPC, the SSH key, the coordinator droplet.
    let phase = progress.phase("api", 3);
    let hosts_target = ClusterTarget::new(provider.settings(), provider.tag().clone(), Vec::new());
    let vpc = ensure_vpc(provider.client(), &hosts_target)
        .await
        .map_err(|e| CoordinatorError::Provider(format!("digitalocean: {e}")))?;
    phase.step("vpc", &vpc.name);
    let ssh_key = ensure_ssh_key(&provider, &names.ssh_key, key_public.trim()).await?;
    phase.step("ssh key", &names.ssh_key);
    let user_data = render_coordinator_user_data(&host_private, &host_public, on_host)
        .map_err(|e| CoordinatorError::Provider(format!("coordinator droplet user_data: {e}")))?;
    let settings = provider.settings();
    let mut ssh_keys = settings.droplet.ssh_keys.clone();
    ssh_keys.push(SshKeyRef::Id(ssh_key));
    let target = ClusterTarget {
        tag: names.tag.clone(),
        hosts: vec![HostSpec {
            name: HostName::parse(&names.droplet)
                .map_err(|e| CoordinatorError::ProviderConfig(e.to_string()))?,
            user_data: Some(user_data),
        }],
        droplet: if on_host {
            // One of the hosts: its size, and the cluster tag as well, so
            // the coordinator adopts it as that host.
            let mut extra_tags = settings.droplet.extra_tags.clone();
            extra_tags.push(provider.tag().clone());
            DropletSettings {
                ssh_keys,
                extra_tags,
                ..settings.droplet.clone()
            }
        } else {
            DropletSettings {
                size: COORDINATOR_SIZE.to_string(),
                ssh_keys,
                extra_tags: Vec::new(),
                ..settings.droplet.clone()
            }
        },
        vpc: VpcSettings {
            name: Some(vpc.name.clone()),
            ip_range: None,
        },
        firewall: Some(FirewallSettings {
            public_tcp_ports: Vec::new(),
            admin_cidrs: admin.clone(),
            admin_tcp_ports: vec![port],
            vpc_tcp_ports: vec![port, artifacts_port],
        }),
        boot_timeout: settings.timeouts.boot,
        poll_interval: settings.timeouts.poll_interval,
    };
    let made = reconcile(provider.client(), &target)
        .await
        .map_err(|e| CoordinatorError::Provider(format!("digitalocean: {e}")))?;
    let droplet = made
        .host(&names.droplet)
        .cloned()
        .ok_or_else(|| UpError::NoAddress {
            name: names.droplet.clone(),
            which: "droplet or",
        })?;
    phase.step(
        "droplet",
        &format!(
            "{} ({})",
            names.droplet,
            if made.created.is_empty() {
                "adopted"
            } else {
                "created"
            }
        ),
    );
    phases.push(("api", phase.finish()));
    let public = droplet.public_ipv4.ok_or_else(|| UpError::NoAddress {
        name: names.droplet.clone(),
        which: "public",
    })?;
    let private = droplet.private_ipv4.ok_or_else(|| UpError::NoAddress {
        name: names.droplet.clone(),
        which: "VPC",
    })?;
    info!(%public, %private, "coordinator droplet active");

    // 4. One SSH session: wait for sshd (the droplet boots), then install.
    let ssh = Ssh {
        host: public,
        key: local.key(),
        known_hosts: local.known_hosts(),
        alias: names.host_alias.clone(),
    };
    let phase = progress.phase("boot", 1);
    let deadline = Instant::now() + settings.timeouts.boot.max(Duration::from_secs(60));
    loop {
        match ssh.run("answering", "true", Vec::new()).await {
            Ok(_) => break,
            Err(UpError::Ssh { reason, .. }) if Instant::now() < deadline => {
                phase.step(
                    &names.droplet,
                    &format!("waiting for sshd ({})", first_line(&reason)),
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e),
        }
    }
    phases.push(("boot", phase.finish()));

    let phase = progress.phase("install", 1);
    let listen = SocketAddr::from(([0, 0, 0, 0], port));
    let advertise = SocketAddr::from((private, port));
    let mut env = format!("{}={token}\n", apiary_digitalocean::TOKEN_VAR);
    if let Ok(url) = std::env::var(apiary_digitalocean::API_URL_VAR) {
        env.push_str(&format!("{}={url}\n", apiary_digitalocean::API_URL_VAR));
    }
    let bundle = install_bundle(&[
        ("coordinator", 0o755, binaries.0),
        ("agent", 0o755, binaries.1),
        ("cluster.toml", 0o644, text.clone().into_bytes()),
        ("digitalocean.env", 0o600, env.into_bytes()),
        (
            "apiary-coordinator.service",
            0o644,
            unit(listen, advertise, ssh_key).into_bytes(),
        ),
        ("install.sh", 0o755, INSTALL_SCRIPT.as_bytes().to_vec()),
    ])
    .map_err(|source| UpError::File {
        what: "cannot build the install bundle in",
        path: std::env::temp_dir(),
        source,
    })?;
    let remote = "set -eu; umask 077; d=$(mktemp -d /root/.apiary-up.XXXXXX); tar -x -C \"$d\"; sh \"$d/install.sh\" \"$d\"";
    ssh.run("installing the coordinator", remote, bundle)
        .await?;
    phase.step(&names.droplet, "coordinator installed and started");
    phases.push(("install", phase.finish()));

    // 5. admin.conf, pointed at the droplet's public address.
    let phase = progress.phase("coordinator", 1);
    let deadline = Instant::now() + Duration::from_secs(120);
    let conf_text = loop {
        let read = ssh
            .run(
                "reading admin.conf",
                &format!("cat {REMOTE_STATE_DIR}/admin.conf"),
                Vec::new(),
            )
            .await;
        match read {
            Ok(text) if !text.is_empty() => break text,
            Ok(_) | Err(UpError::Ssh { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(_) => {
                return Err(UpError::Ssh {
                    host: public,
                    step: "reading admin.conf",
                    reason: "empty".into(),
                });
            }
            Err(e) => return Err(e),
        }
    };
    let fetched = local.dir.join(".admin.conf.fetched");
    Local::write_private(&fetched, &conf_text)?;
    let mut conf = AdminConf::load(&fetched).map_err(CoordinatorError::from)?;
    let _ = std::fs::remove_file(&fetched);
    conf.endpoint = SocketAddr::from((public, port)).to_string();
    conf.save(&local.admin_conf())
        .map_err(CoordinatorError::from)?;
    phase.step(
        &names.droplet,
        &format!("ctl reaches it at {}", conf.endpoint),
    );
    if on_host {
        install_agent(&ssh, &conf, &config, &names.droplet, advertise, &vpc).await?;
        phase.step(&names.droplet, "its agent installed and started");
    }
    phases.push(("coordinator", phase.finish()));

    // 6. The cluster, followed over ctl's mutual TLS.
    // Milestones are timed from here: how long after the coordinator
    // answered each was first seen.
    let phase = progress.phase("cluster", 1);
    let want = Want {
        hosts: provider.planned().len(),
        swarm: config.swarm.is_some(),
        database: config.swarm.as_ref().is_some_and(|s| s.database.is_some()),
    };
    let mut cluster = Vec::new();
    follow(
        &conf,
        &local.admin_conf(),
        want,
        opts.timeout,
        &phase,
        &mut cluster,
    )
    .await?;
    phase.finish();
    phases.extend(cluster);
    info!(took_s = started.elapsed().as_secs_f64(), "cluster up");
    Ok(UpReport {
        coordinator: droplet,
        admin_conf: local.admin_conf(),
        phases,
    })
}

/// The part of `coordinator teardown` that is `up`'s: the coordinator
/// droplet and its firewall (its own tag), then the per-cluster SSH key
/// (the one whose public key is `STATE_DIR/ssh/id_ed25519.pub`). With
/// `keep_coordinator` the droplet stays, its coordinator stopped (over the
/// pinned SSH) so it makes no host again, and so does the key it is
/// reached with. One line per thing removed or kept.
pub async fn teardown_coordinator(
    provider: &DigitalOceanProvider,
    cluster: &str,
    state_dir: &Path,
    keep_coordinator: bool,
) -> Result<Vec<String>, UpError> {
    let names = Names::of(cluster)?;
    let local = Local {
        dir: state_dir.to_path_buf(),
    };
    let api = |e: apiary_digitalocean::ApiError| {
        UpError::Coordinator(CoordinatorError::Provider(format!("digitalocean: {e}")))
    };
    let mut lines = Vec::new();
    let droplets = provider
        .client()
        .list_droplets_by_tag(names.tag.as_str())
        .await
        .map_err(api)?;
    if keep_coordinator {
        for d in &droplets {
            let Some(public) = d.public_ipv4() else {
                continue;
            };
            let ssh = Ssh {
                host: public,
                key: local.key(),
                known_hosts: local.known_hosts(),
                alias: names.host_alias.clone(),
            };
            ssh.run(
                "stopping the coordinator",
                "systemctl disable --now apiary-coordinator.service",
                Vec::new(),
            )
            .await?;
            lines.push(format!(
                "kept droplet {} (#{}), its coordinator stopped; the VPC stays while it is in it",
                d.name, d.id
            ));
        }
        return Ok(lines);
    }
    // The coordinator first: it would make the hosts deleted next again.
    let report = apiary_digitalocean::teardown(provider.client(), &names.tag)
        .await
        .map_err(|e| CoordinatorError::Provider(format!("digitalocean: {e}")))?;
    for d in &report.droplets {
        lines.push(format!(
            "deleted coordinator droplet {} (#{})",
            d.name, d.id
        ));
    }
    for f in &report.firewalls {
        lines.push(format!("deleted firewall {} ({})", f.name, f.id));
    }
    lines.extend(report.kept.iter().map(|k| format!("kept: {k}")));
    let ours = std::fs::read_to_string(local.key().with_extension("pub")).ok();
    for key in provider.client().list_ssh_keys().await.map_err(api)? {
        let matches = match &ours {
            Some(public) => key.public_key.as_deref().map(str::trim) == Some(public.trim()),
            None => key.name == names.ssh_key,
        };
        if let (true, Some(id)) = (matches, key.id) {
            provider.client().delete_ssh_key(id).await.map_err(api)?;
            lines.push(format!("deleted SSH key {} (#{id})", key.name));
        }
    }
    if droplets.is_empty() && lines.is_empty() {
        lines.push("no coordinator droplet and no SSH key of `coordinator up`".into());
    }
    Ok(lines)
}

/// `--on-host`: the coordinator's droplet is one of the hosts, and its
/// agent can only be installed once the coordinator runs (the CA and the
/// join token exist from then on): over the same pinned SSH, the agent's
/// config (the cluster CA from admin.conf; the join token asked of the
/// coordinator over mTLS, in a 0600 file) and the agent unit from
/// deploy/; the agent binary is beside the coordinator already.
async fn install_agent(
    ssh: &Ssh,
    conf: &AdminConf,
    config: &ClusterConfig,
    name: &str,
    advertise: SocketAddr,
    vpc: &apiary_digitalocean::VpcState,
) -> Result<(), UpError> {
    const AGENT_UNIT: &str = include_str!("../../deploy/systemd/apiary-agent.service");
    let asked = |e: apiary_ctl::CtlError| UpError::Ssh {
        host: ssh.host,
        step: "asking the coordinator for a join token",
        reason: e.to_string(),
    };
    let (token, _) = apiary_ctl::Ctl::new(conf)
        .map_err(asked)?
        .join_token(false)
        .await
        .map_err(asked)?;
    #[derive(serde::Serialize)]
    struct AgentToml<'a> {
        coordinator: String,
        token: &'a str,
        ca_cert: &'a str,
        state_dir: &'a str,
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        private_cidr: Option<&'a str>,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        tunnel_allow: &'a [String],
        engine_access: bool,
    }
    let agent = toml::to_string(&AgentToml {
        coordinator: advertise.to_string(),
        token: &token,
        ca_cert: "/etc/apiary/ca.pem",
        state_dir: "/var/lib/apiary",
        name,
        private_cidr: vpc.ip_range.as_deref(),
        tunnel_allow: &config.tunnel_allow,
        engine_access: true,
    })
    .map_err(|e| UpError::Ssh {
        host: ssh.host,
        step: "writing the agent's config",
        reason: e.to_string(),
    })?;
    let bundle = install_bundle(&[
        ("agent.toml", 0o600, agent.into_bytes()),
        ("ca.pem", 0o644, conf.ca.clone().into_bytes()),
        (
            "apiary-agent.service",
            0o644,
            AGENT_UNIT.as_bytes().to_vec(),
        ),
    ])
    .map_err(|source| UpError::File {
        what: "cannot build the agent bundle in",
        path: std::env::temp_dir(),
        source,
    })?;
    let remote = r#"set -eu; umask 077; d=$(mktemp -d /root/.apiary-agent.XXXXXX); tar -x -C "$d"
install -d -m 0755 /etc/apiary
install -m 0600 "$d/agent.toml" /etc/apiary/agent.toml
install -m 0644 "$d/ca.pem" /etc/apiary/ca.pem
install -m 0644 "$d/apiary-agent.service" /etc/systemd/system/apiary-agent.service
rm -rf "$d"
systemctl daemon-reload
systemctl enable --now docker.service apiary-agent.service"#;
    ssh.run(
        "installing the agent beside the coordinator",
        remote,
        bundle,
    )
    .await
    .map(|_| ())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// The per-cluster key registered with the API (found by its public key,
/// or made): its id.
async fn ensure_ssh_key(
    provider: &DigitalOceanProvider,
    name: &str,
    public_key: &str,
) -> Result<u64, UpError> {
    let api = |e: apiary_digitalocean::ApiError| {
        UpError::Coordinator(CoordinatorError::Provider(format!("digitalocean: {e}")))
    };
    let same = |k: &apiary_digitalocean::SshKey| {
        k.public_key.as_deref().map(str::trim) == Some(public_key)
    };
    if let Some(id) = provider
        .client()
        .list_ssh_keys()
        .await
        .map_err(api)?
        .iter()
        .find(|k| same(k))
        .and_then(|k| k.id)
    {
        return Ok(id);
    }
    let made = provider
        .client()
        .create_ssh_key(name, public_key)
        .await
        .map_err(api)?;
    made.id.ok_or_else(|| {
        UpError::Coordinator(CoordinatorError::Provider(
            "digitalocean: the SSH key was created without an id".into(),
        ))
    })
}

/// What the cluster must show before `up` is done, in the order it gets
/// there: each milestone's time goes into the report.
#[derive(Debug, Clone, Copy)]
struct Want {
    hosts: usize,
    swarm: bool,
    database: bool,
}

/// The milestones `status` shows met, and what is still awaited.
fn milestones(s: &apiary_proto::StatusResponse, want: Want) -> (Vec<&'static str>, Vec<String>) {
    let ready = s.nodes.iter().filter(|n| n.state == "ready").count();
    let mut met = Vec::new();
    let mut waiting = Vec::new();
    if ready >= want.hosts {
        met.push("enrollment");
    } else {
        waiting.push(format!("hosts ({ready}/{} ready)", want.hosts));
    }
    if want.swarm {
        let in_swarm = s.nodes.iter().filter(|n| n.swarm_status == "ready").count();
        if in_swarm >= want.hosts {
            met.push("swarm");
        } else {
            waiting.push(format!("swarm ({in_swarm}/{} nodes)", want.hosts));
        }
        let attached = s.nodes.iter().filter(|n| n.overlay_attached).count();
        if attached >= want.hosts {
            met.push("overlay");
        } else {
            waiting.push(format!("overlay ({attached}/{} attached)", want.hosts));
        }
    }
    if want.database {
        let healthy = !s.database_kind.is_empty()
            && s.database_error.is_empty()
            && !s.database_leader.is_empty()
            && s.database_connected == s.database_servers
            && s.database_servers > 0;
        if healthy {
            met.push("database");
        } else if s.database_error.is_empty() {
            waiting.push(format!(
                "the database ({}/{} servers)",
                s.database_connected, s.database_servers
            ));
        } else {
            waiting.push(format!("the database ({})", s.database_error));
        }
    }
    (met, waiting)
}

/// Polls `ctl status` until the cluster shows what `want` asks, saying
/// what changes; records when each milestone was first met.
async fn follow(
    conf: &AdminConf,
    conf_path: &Path,
    want: Want,
    timeout: Duration,
    phase: &crate::progress::Phase,
    phases: &mut Vec<(&'static str, Duration)>,
) -> Result<(), UpError> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let waiting = match apiary_ctl::Ctl::new(conf) {
            Ok(mut ctl) => match ctl.status().await {
                Ok(s) => {
                    let (met, waiting) = milestones(&s, want);
                    for m in met {
                        if !phases.iter().any(|(name, _)| *name == m) {
                            phase.step("cluster", &format!("{m} done"));
                            phases.push((m, started.elapsed()));
                        }
                    }
                    waiting.join(", ")
                }
                Err(e) => format!("the coordinator ({e})"),
            },
            Err(e) => format!("the coordinator ({e})"),
        };
        if waiting.is_empty() {
            return Ok(());
        }
        if waiting != last {
            phase.step("cluster", &format!("waiting for {waiting}"));
            last = waiting.clone();
        }
        if started.elapsed() > timeout {
            warn!(waiting, "the cluster is not healthy in time");
            return Err(UpError::NotHealthy {
                waited: timeout,
                waiting,
                admin_conf: conf_path.to_path_buf(),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_cidrs_are_required_networks_and_never_the_world() {
        assert!(matches!(admin_cidrs(&[]), Err(UpError::NoAdminCidr)));
        assert_eq!(
            admin_cidrs(&["198.18.0.77".into(), "10.1.2.3/24".into()]).expect("ok"),
            ["198.18.0.77/32", "10.1.2.0/24"]
        );
        for bad in ["0.0.0.0/0", "1.2.3.4/0", "1.2.3.4/33", "laptop", "::1/128"] {
            let err = admin_cidrs(&[bad.into()]).expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
            assert_eq!(err.exit_code(), exit::USAGE);
        }
    }

    #[test]
    fn the_bundle_carries_sums_of_the_binaries() {
        let bundle = install_bundle(&[
            ("coordinator", 0o755, b"c".to_vec()),
            ("cluster.toml", 0o644, b"x".to_vec()),
        ])
        .expect("bundle");
        let mut archive = tar::Archive::new(bundle.as_slice());
        let mut names = Vec::new();
        let mut sums = String::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").display().to_string();
            if name == "SHA256SUMS" {
                std::io::Read::read_to_string(&mut entry, &mut sums).expect("read");
            }
            names.push(name);
        }
        assert_eq!(names, ["coordinator", "cluster.toml", "SHA256SUMS"]);
        assert_eq!(
            sums,
            format!("{}  coordinator\n", hex::encode(Sha256::digest(b"c")))
        );
    }

    #[test]
    fn the_unit_serves_with_the_derived_addresses_and_the_token_file() {
        let u = unit(
            "0.0.0.0:7443".parse().expect("addr"),
            "10.10.0.5:7443".parse().expect("addr"),
            42,
        );
        let exec = u
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .expect("ExecStart");
        assert!(exec.contains("--advertise 10.10.0.5:7443"), "{exec}");
        assert!(exec.contains("--ssh-key 42"), "{exec}");
        assert!(u.contains("EnvironmentFile=/etc/apiary/digitalocean.env"));
        assert_eq!(u.matches("ExecStart=").count(), 1);
    }
}
