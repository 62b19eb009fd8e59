//! The cluster spec (`cluster.toml`): raw serde structs that refuse unknown keys,
//! turned by [`ClusterConfig::load`] into the validated type the rest of the
//! coordinator accepts. Every error names the file, line, column and key.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use apiary_api::database::DatabaseKind;
use apiary_api::hostconfig::{HostConfig, HostConfigSpec};
use serde::Deserialize;
use toml::Spanned;

/// A config file the coordinator cannot use. Exit code 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: RawCluster,
    #[serde(default)]
    coordinator: RawCoordinator,
    provider: Spanned<RawProvider>,
    /// Settings of the digitalocean provider (its own section, so its keys are
    /// checked by its own type).
    digitalocean: Option<Spanned<apiary_digitalocean::DigitalOceanSpec>>,
    /// The host configuration every agent applies and keeps applied.
    host: Option<Spanned<HostConfigSpec>>,
    swarm: Option<Spanned<RawSwarm>>,
    database: Option<Spanned<RawDatabase>>,
    tunnel: Option<RawTunnel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    max_connections_per_admin: Option<Spanned<i64>>,
    max_bytes_in_flight_per_connection: Option<Spanned<toml::Value>>,
    allow: Option<Spanned<Vec<String>>>,
}

/// Limits on `ctl tunnel` (`[tunnel]`), enforced by the coordinator's relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelLimits {
    /// Tunnel connections one admin certificate may have open at once.
    pub max_connections_per_admin: usize,
    /// Bytes the relay queues per connection and direction before it stops
    /// reading from the sending side (HTTP/2 flow control then holds it back).
    pub max_bytes_in_flight_per_connection: usize,
}

impl Default for TunnelLimits {
    fn default() -> Self {
        TunnelLimits {
            max_connections_per_admin: 256,
            max_bytes_in_flight_per_connection: 1 << 20,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    /// `false`: no database (on DigitalOcean, where one runs by default).
    #[serde(default = "yes")]
    enabled: bool,
    /// Required, except on DigitalOcean (default `rethinkdb`).
    kind: Option<DatabaseKind>,
    image: Option<String>,
    servers: Option<usize>,
    memory: Option<String>,
    volume_prefix: Option<String>,
    client_port: Option<u16>,
    peer_port: Option<u16>,
    image_archive: Option<PathBuf>,
    peer_tls: Option<bool>,
    auth: Option<bool>,
    spread_tables: Option<bool>,
}

/// The clustered database on the overlay (`[database]`): one server per host
/// by default, as Swarm services (see `crate::database`).
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseConfig {
    pub kind: DatabaseKind,
    /// Default: `lab/etcd:1` (built by the lab; required on DigitalOcean,
    /// where droplets pull) for etcd, `rethinkdb:2.4`.
    pub image: String,
    /// `None`: one per host.
    pub servers: Option<usize>,
    /// Memory limit of each server, as written (default "450m").
    pub memory: String,
    pub memory_bytes: i64,
    /// Volumes are named `<prefix>-N-data` (default: the kind).
    pub volume_prefix: String,
    /// Client port (etcd 2379, RethinkDB driver 28015) and peer port (etcd
    /// 2380, RethinkDB cluster 29015), on the overlay only.
    pub client_port: u16,
    pub peer_port: u16,
    /// TLS between the servers, with certificates from the cluster CA
    /// (default on). Clients on the client port are not affected.
    pub peer_tls: bool,
    /// Clients must authenticate (default on): RethinkDB's `admin` gets a
    /// password apiary generates (`ctl database credentials` shows it), so
    /// a container on the overlay without it gets nothing.
    pub auth: bool,
    /// RethinkDB: when a server joins, move table replicas onto it until it
    /// holds about as many as the others (primaries stay; default off:
    /// where tables live is the operator's call).
    pub spread_tables: bool,
    /// Lab: a `docker save` archive of `image` loaded into every engine
    /// (relative to the config file).
    pub image_archive: Option<PathBuf>,
}

/// "450m", "1g", "512k", "1048576": bytes (units of 1024, like Docker).
pub fn parse_memory(v: &str) -> Option<i64> {
    let v = v.trim().to_ascii_lowercase();
    let v = v.strip_suffix('b').unwrap_or(&v);
    let (num, mul) = match v.chars().last()? {
        'k' => (&v[..v.len() - 1], 1i64 << 10),
        'm' => (&v[..v.len() - 1], 1 << 20),
        'g' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    let n: i64 = num.trim().parse().ok()?;
    n.checked_mul(mul).filter(|b| *b > 0)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSwarm {
    #[serde(default = "yes")]
    enabled: bool,
    managers: Option<usize>,
    #[serde(default = "default_overlay")]
    overlay: String,
    #[serde(default)]
    encrypted: bool,
    mtu: Option<u32>,
    checks_interval: Option<String>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    #[serde(default = "default_pool")]
    default_addr_pool: Vec<String>,
}

fn yes() -> bool {
    true
}

fn default_overlay() -> String {
    "apiary".into()
}

fn default_pool() -> Vec<String> {
    // Clear of the lab's ranges and of Docker's default 10.0.0.0/8 collisions
    // with private networks such as DigitalOcean VPCs.
    vec!["10.232.0.0/16".into()]
}

/// Swarm and the overlay, as the coordinator drives them.
#[derive(Debug, Clone, PartialEq)]
pub struct SwarmConfig {
    /// Managers: the first hosts by name, numbers compared as numbers
    /// (default 1, or 3 from 3 hosts up).
    pub managers: Option<usize>,
    pub overlay: String,
    pub encrypted: bool,
    pub mtu: Option<u32>,
    /// How often reachability and the overlay data path are re-checked.
    pub checks_interval: Duration,
    pub labels: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    pub default_addr_pool: Vec<String>,
    /// `[database]`: the database run on the overlay, if any.
    pub database: Option<DatabaseConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordinator {
    listen: Option<Spanned<String>>,
    advertise: Option<Spanned<String>>,
    heartbeat_interval: Option<Spanned<String>>,
    node_cert_ttl: Option<Spanned<String>>,
    admin_cert_ttl: Option<Spanned<String>>,
    join_token_ttl: Option<Spanned<String>>,
    host_token_ttl: Option<Spanned<String>>,
    host_recheck_interval: Option<Spanned<String>>,
    agent_binary: Option<Spanned<String>>,
    artifacts_listen: Option<Spanned<String>>,
    #[serde(default)]
    agent_auto_upgrade: bool,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum RawProvider {
    /// Hosts join by themselves (`agent --coordinator ... --token ...`).
    Manual {},
    /// Network-namespace hosts on this machine.
    Lab {
        hosts: Option<usize>,
        names: Option<Vec<String>>,
        #[serde(default)]
        teardown_on_exit: bool,
        agent_binary: Option<PathBuf>,
    },
    /// DigitalOcean droplets (see `deploy/examples/digitalocean.toml`); the
    /// droplet settings live in the `[digitalocean]` section.
    Digitalocean {
        hosts: Option<usize>,
        names: Option<Vec<String>>,
    },
}

/// The validated cluster spec.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub path: PathBuf,
    pub cluster_name: String,
    pub listen: SocketAddr,
    /// The address hosts dial (for cloud-init); default: `listen` when it is a
    /// specific address.
    pub advertise: Option<SocketAddr>,
    pub heartbeat_interval: Duration,
    pub node_cert_ttl: Duration,
    pub admin_cert_ttl: Duration,
    /// `None`: the join token does not expire (until rotated).
    pub join_token_ttl: Option<Duration>,
    /// How long a host token (one per host apiary creates, single-use) may
    /// wait for its host to enroll.
    pub host_token_ttl: Duration,
    pub provider: ProviderConfig,
    /// What every host must look like (firewall, sysctls, GRUB, daemon.json);
    /// `None`: apiary does not manage host configuration. The lab manages it by
    /// default, with its private network.
    pub host: Option<HostConfig>,
    pub host_recheck_interval: Duration,
    /// `None`: apiary does not make a swarm (manual without a `[swarm]`
    /// section, or `enabled = false`). The lab and digitalocean make one by
    /// default; on digitalocean it carries RethinkDB (`rethinkdb:2.4`) unless
    /// `[database]` says otherwise.
    pub swarm: Option<SwarmConfig>,
    /// `[tunnel]`: limits on `ctl tunnel`.
    pub tunnel: TunnelLimits,
    /// `[tunnel] allow`: the CIDRs tunnels may reach on a host, written into
    /// the agent configuration of the hosts apiary creates (the agent
    /// enforces its own copy: a coordinator cannot widen it later). Default:
    /// loopback and the overlay's address pool.
    pub tunnel_allow: Vec<String>,
    /// The agent binary the artifact listener serves (relative paths from the
    /// config file); `None`: the `agent` file beside the running coordinator.
    pub agent_binary: Option<PathBuf>,
    /// Roll the served agent build out without an operator (as `ctl hosts
    /// upgrade` would) whenever a connected agent runs another version.
    pub agent_auto_upgrade: bool,
    /// Where the artifact listener binds (see `crate::artifacts`); `None`:
    /// only when a provider needs it, on `listen`'s IP and port + 1.
    pub artifacts_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProviderConfig {
    Manual,
    Lab(LabProviderConfig),
    // Boxed: its spec is several times the size of the others.
    DigitalOcean(Box<DigitalOceanProviderConfig>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DigitalOceanProviderConfig {
    pub hosts: Vec<String>,
    /// Validated (token from the environment) when `serve` starts, not here:
    /// parsing a config file must not depend on the environment.
    pub spec: apiary_digitalocean::DigitalOceanSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LabProviderConfig {
    pub hosts: Vec<String>,
    /// Tear the lab down when `coordinator serve` stops (default: keep it, so
    /// a restarted coordinator adopts it).
    pub teardown_on_exit: bool,
    /// The agent started in each host (default: `agent` beside the coordinator).
    pub agent_binary: Option<PathBuf>,
    /// Build and load the lab's etcd image (`[database] kind = "etcd"` with
    /// image `lab/etcd:1`).
    pub etcd_image: bool,
    /// `docker save` archives loaded into every engine (`[database] image_archive`).
    pub image_archives: Vec<PathBuf>,
}

impl ProviderConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Manual => "manual",
            ProviderConfig::Lab(_) => "lab",
            ProviderConfig::DigitalOcean(_) => "digitalocean",
        }
    }
}

pub const DEFAULT_PORT: u16 = 7443;
/// The lab's private network (DESIGN.md "Lab addresses").
pub const LAB_PRIVATE_CIDR: &str = "10.231.0.0/24";
/// The recipe's hosts: one queen, three workers.
pub const DEFAULT_LAB_NAMES: [&str; 4] = ["queenbee", "workerbee-1", "workerbee-2", "workerbee-3"];

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_with(path, text, None)
    }

    /// For `coordinator teardown`, which dials no host: the spec as `up`
    /// or `serve` took it, without the address hosts dial (derived when
    /// the cluster was made, not written in the spec).
    pub fn load_for_teardown(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_inner(path, &text, None, false)
    }

    /// As [`ClusterConfig::load`], with `coordinator.advertise` derived by
    /// the caller (`coordinator up`: the coordinator droplet's VPC
    /// address; `serve --advertise`): a spec that sets it too is refused,
    /// naming the key, since an address typed by hand is one the hosts may
    /// not reach.
    pub fn load_with(path: &Path, advertise: Option<SocketAddr>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_with(path, &text, advertise)
    }

    pub fn parse_with(
        path: &Path,
        text: &str,
        derived_advertise: Option<SocketAddr>,
    ) -> Result<Self, ConfigError> {
        Self::parse_inner(path, text, derived_advertise, true)
    }

    fn parse_inner(
        path: &Path,
        text: &str,
        derived_advertise: Option<SocketAddr>,
        hosts_dial: bool,
    ) -> Result<Self, ConfigError> {
        let src = ConfigText { path, text };
        let raw = src.deserialize()?;
        // Sections are checked in this order so that a file with several
        // mistakes always reports the same one first.
        let cluster_name = src.cluster_name(raw.cluster.name)?;
        let c = raw.coordinator;
        let times = src.coordinator_times(&c)?;
        let provider_span = raw.provider.span();
        let digitalocean_span = raw.digitalocean.as_ref().map(Spanned::span);
        let swarm_span = raw.swarm.as_ref().map(Spanned::span);
        let mut provider = src.provider(raw.provider, raw.digitalocean)?;
        let listen = src.listen(&c.listen, &provider)?;
        let host_recheck_interval = src.duration(
            &c.host_recheck_interval,
            "coordinator.host_recheck_interval",
            Duration::from_secs(60),
            Duration::from_secs(1),
        )?;
        let host = src.host(raw.host, &provider)?;
        let mut swarm = src.swarm(raw.swarm, &provider)?;
        match raw.database {
            Some(db) => src.database(db, &mut swarm, &mut provider)?,
            None => src.default_database(&mut swarm, &provider)?,
        }
        let advertise = match (derived_advertise, &c.advertise) {
            (Some(_), Some(typed)) => {
                return Err(src.at(
                    Some(typed.span()),
                    "coordinator.advertise",
                    "coordinator.advertise is derived (`coordinator up`: the coordinator droplet's VPC address; `serve --advertise`): remove it from the spec".into(),
                ));
            }
            (Some(derived), None) => Some(derived),
            (None, _) => src.advertise(&c.advertise, listen)?,
        };
        let (tunnel, tunnel_allow) = src.tunnel(raw.tunnel, swarm.as_ref())?;
        let (agent_binary, artifacts_listen) = src.artifacts(&c)?;
        src.check_firewall(&provider, swarm.as_ref(), digitalocean_span, swarm_span)?;
        if hosts_dial {
            src.check_advertise(&provider, advertise, provider_span)?;
        }
        Ok(ClusterConfig {
            path: path.to_path_buf(),
            cluster_name,
            listen,
            advertise,
            heartbeat_interval: times.heartbeat_interval,
            node_cert_ttl: times.node_cert_ttl,
            admin_cert_ttl: times.admin_cert_ttl,
            join_token_ttl: times.join_token_ttl,
            host_token_ttl: times.host_token_ttl,
            provider,
            host,
            host_recheck_interval,
            swarm,
            tunnel,
            tunnel_allow,
            agent_binary,
            agent_auto_upgrade: c.agent_auto_upgrade,
            artifacts_listen,
        })
    }
}

/// The file being parsed, so every error can name its path, line and column.
struct ConfigText<'a> {
    path: &'a Path,
    text: &'a str,
}

/// The `[coordinator]` durations that are checked before the provider section.
struct CoordinatorTimes {
    heartbeat_interval: Duration,
    node_cert_ttl: Duration,
    admin_cert_ttl: Duration,
    join_token_ttl: Option<Duration>,
    host_token_ttl: Duration,
}

impl ConfigText<'_> {
    fn at(&self, span: Option<Range<usize>>, key: &str, message: String) -> ConfigError {
        let (line, column) = line_col(self.text, span.map(|s| s.start).unwrap_or(0));
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message,
        }
    }

    fn deserialize(&self) -> Result<RawConfig, ConfigError> {
        toml::from_str(self.text).map_err(|e| {
            let message = e.message().to_string();
            let key = message
                .split('`')
                .nth(1)
                .map(str::to_string)
                .unwrap_or_default();
            self.at(e.span(), &key, message)
        })
    }

    fn cluster_name(&self, name: Spanned<String>) -> Result<String, ConfigError> {
        match apiary_api::names::ClusterName::parse(name.get_ref()) {
            Ok(valid) => Ok(valid.into_inner()),
            Err(e) => Err(self.at(
                Some(name.span()),
                "cluster.name",
                format!(
                    "cluster.name {:?}: {} (it names hosts, tags and namespaces)",
                    name.get_ref(),
                    e.reason
                ),
            )),
        }
    }

    fn duration(
        &self,
        field: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
        min: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(v) = field else { return Ok(default) };
        let d = humantime::parse_duration(v.get_ref()).map_err(|e| {
            self.at(
                Some(v.span()),
                key,
                format!(
                    "{key} = {:?}: {e} (write e.g. \"5s\", \"24h\")",
                    v.get_ref()
                ),
            )
        })?;
        if d < min {
            return Err(self.at(
                Some(v.span()),
                key,
                format!("{key} must be at least {}", humantime::format_duration(min)),
            ));
        }
        Ok(d)
    }

    fn coordinator_times(&self, c: &RawCoordinator) -> Result<CoordinatorTimes, ConfigError> {
        let heartbeat_interval = self.duration(
            &c.heartbeat_interval,
            "coordinator.heartbeat_interval",
            Duration::from_secs(5),
            Duration::from_millis(100),
        )?;
        let node_cert_ttl = self.duration(
            &c.node_cert_ttl,
            "coordinator.node_cert_ttl",
            Duration::from_secs(24 * 3600),
            Duration::from_secs(3),
        )?;
        let admin_cert_ttl = self.duration(
            &c.admin_cert_ttl,
            "coordinator.admin_cert_ttl",
            Duration::from_secs(365 * 24 * 3600),
            Duration::from_secs(60),
        )?;
        let join_token_ttl = match &c.join_token_ttl {
            Some(v) if v.get_ref() == "never" => None,
            Some(_) => Some(self.duration(
                &c.join_token_ttl,
                "coordinator.join_token_ttl",
                Duration::ZERO,
                Duration::from_secs(1),
            )?),
            None => None,
        };
        let host_token_ttl = self.duration(
            &c.host_token_ttl,
            "coordinator.host_token_ttl",
            Duration::from_secs(3600),
            Duration::from_secs(1),
        )?;
        Ok(CoordinatorTimes {
            heartbeat_interval,
            node_cert_ttl,
            admin_cert_ttl,
            join_token_ttl,
            host_token_ttl,
        })
    }

    fn provider(
        &self,
        raw: Spanned<RawProvider>,
        digitalocean: Option<Spanned<apiary_digitalocean::DigitalOceanSpec>>,
    ) -> Result<ProviderConfig, ConfigError> {
        let provider_span = raw.span();
        Ok(match raw.into_inner() {
            RawProvider::Manual {} => ProviderConfig::Manual,
            RawProvider::Lab {
                hosts,
                names,
                teardown_on_exit,
                agent_binary,
            } => {
                let names = host_names(hosts, names)
                    .map_err(|(key, m)| self.at(Some(provider_span.clone()), key, m))?;
                ProviderConfig::Lab(LabProviderConfig {
                    hosts: names,
                    teardown_on_exit,
                    agent_binary,
                    etcd_image: false,
                    image_archives: Vec::new(),
                })
            }
            RawProvider::Digitalocean { hosts, names } => {
                let names = host_names(hosts, names)
                    .map_err(|(key, m)| self.at(Some(provider_span.clone()), key, m))?;
                // `new()`, not `Default`: an empty [digitalocean] section means
                // the documented defaults (timeouts, ports), not zeros.
                #[allow(clippy::unwrap_or_default)]
                let spec = digitalocean
                    .map(Spanned::into_inner)
                    .unwrap_or_else(apiary_digitalocean::DigitalOceanSpec::new);
                ProviderConfig::DigitalOcean(Box::new(DigitalOceanProviderConfig {
                    hosts: names,
                    spec,
                }))
            }
        })
    }

    fn listen(
        &self,
        listen: &Option<Spanned<String>>,
        provider: &ProviderConfig,
    ) -> Result<SocketAddr, ConfigError> {
        let default_listen = match provider {
            ProviderConfig::Lab(_) => format!("10.231.0.1:{DEFAULT_PORT}"),
            _ => format!("0.0.0.0:{DEFAULT_PORT}"),
        };
        match listen {
            Some(v) => v.get_ref().parse().map_err(|e| {
                self.at(
                    Some(v.span()),
                    "coordinator.listen",
                    format!(
                        "coordinator.listen = {:?}: {e} (write IP:PORT)",
                        v.get_ref()
                    ),
                )
            }),
            None => default_listen
                .parse()
                .map_err(|e| self.at(None, "coordinator.listen", format!("{e}"))),
        }
    }

    fn advertise(
        &self,
        advertise: &Option<Spanned<String>>,
        listen: SocketAddr,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        Ok(match advertise {
            Some(v) => Some(v.get_ref().parse().map_err(|e| {
                self.at(
                    Some(v.span()),
                    "coordinator.advertise",
                    format!(
                        "coordinator.advertise = {:?}: {e} (write IP:PORT)",
                        v.get_ref()
                    ),
                )
            })?),
            None => (!listen.ip().is_unspecified()).then_some(listen),
        })
    }

    fn host(
        &self,
        host: Option<Spanned<HostConfigSpec>>,
        provider: &ProviderConfig,
    ) -> Result<Option<HostConfig>, ConfigError> {
        Ok(match host {
            Some(spec) => {
                let span = spec.span();
                Some(HostConfig::new(spec.into_inner()).map_err(|e| {
                    // Point at the offending key inside [host] when it can be found.
                    let key = e.key();
                    let leaf = key
                        .rsplit('.')
                        .next()
                        .unwrap_or(&key)
                        .trim_matches('"')
                        .split('[')
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let offset = self.text[span.start..]
                        .find(&leaf)
                        .map(|o| span.start + o)
                        .unwrap_or(span.start);
                    self.at(
                        Some(offset..offset),
                        &format!("host.{key}"),
                        format!("host.{e}"),
                    )
                })?)
            }
            None => match provider {
                ProviderConfig::Lab(_) => {
                    HostConfig::new(HostConfigSpec::new(LAB_PRIVATE_CIDR)).ok()
                }
                // Droplets are managed by default when the VPC's range is
                // known from the spec: their firewall needs it (Swarm's
                // ports only from the VPC), and it is what keeps containers
                // away from the metadata service that serves user_data. A
                // VPC whose range DigitalOcean picks is only known at run
                // time; then `[host]` must be written out.
                ProviderConfig::DigitalOcean(d) => match &d.spec.vpc_ip_range {
                    Some(range) => HostConfig::new(HostConfigSpec::new(range)).ok(),
                    None => None,
                },
                ProviderConfig::Manual => None,
            },
        })
    }

    fn swarm(
        &self,
        swarm: Option<Spanned<RawSwarm>>,
        provider: &ProviderConfig,
    ) -> Result<Option<SwarmConfig>, ConfigError> {
        Ok(match swarm {
            Some(sw) => {
                let span = sw.span();
                let sw = sw.into_inner();
                let checks_interval = match &sw.checks_interval {
                    Some(v) => humantime::parse_duration(v).map_err(|e| {
                        self.at(
                            Some(span.clone()),
                            "swarm.checks_interval",
                            format!("swarm.checks_interval = {v:?}: {e}"),
                        )
                    })?,
                    None => Duration::from_secs(10),
                };
                if let Some(m) = sw.mtu
                    && !(576..=9000).contains(&m)
                {
                    return Err(self.at(
                        Some(span),
                        "swarm.mtu",
                        format!("swarm.mtu = {m}: must be between 576 and 9000"),
                    ));
                }
                if sw.managers == Some(0) {
                    return Err(self.at(
                        Some(span),
                        "swarm.managers",
                        "swarm.managers must be at least 1".into(),
                    ));
                }
                // Swarm cuts overlay subnets from these, and every agent's
                // tunnel allow-list carries them: both need CIDRs.
                for pool in &sw.default_addr_pool {
                    if let Err(e) = apiary_api::tunnel::AllowList::parse(std::slice::from_ref(pool))
                    {
                        return Err(self.at(
                            Some(span),
                            "swarm.default_addr_pool",
                            format!("swarm.default_addr_pool: {e}; write ADDR/LEN, e.g. \"10.232.0.0/16\""),
                        ));
                    }
                }
                sw.enabled.then_some(SwarmConfig {
                    managers: sw.managers,
                    overlay: sw.overlay,
                    encrypted: sw.encrypted,
                    mtu: sw.mtu,
                    checks_interval,
                    labels: sw.labels,
                    default_addr_pool: sw.default_addr_pool,
                    database: None,
                })
            }
            // The providers that make their hosts make the swarm too.
            None => match provider {
                ProviderConfig::Lab(_) | ProviderConfig::DigitalOcean(_) => Some(SwarmConfig {
                    managers: None,
                    overlay: default_overlay(),
                    encrypted: false,
                    mtu: None,
                    checks_interval: Duration::from_secs(10),
                    labels: Default::default(),
                    default_addr_pool: default_pool(),
                    database: None,
                }),
                _ => None,
            },
        })
    }

    /// Without a `[database]` section: on DigitalOcean (with its default
    /// swarm), RethinkDB from Docker Hub's `rethinkdb:2.4`, which droplets
    /// pull; elsewhere none.
    fn default_database(
        &self,
        swarm: &mut Option<SwarmConfig>,
        provider: &ProviderConfig,
    ) -> Result<(), ConfigError> {
        if let (ProviderConfig::DigitalOcean(_), Some(sw)) = (provider, swarm.as_mut()) {
            let raw = RawDatabase {
                enabled: true,
                kind: Some(DatabaseKind::Rethinkdb),
                image: None,
                servers: None,
                memory: None,
                volume_prefix: None,
                client_port: None,
                peer_port: None,
                image_archive: None,
                peer_tls: None,
                auth: None,
                spread_tables: None,
            };
            sw.database = Some(self.database_config(raw, 0..0, provider)?);
        }
        Ok(())
    }

    /// The lab loads the database image into its engines itself (other
    /// hosts pull it), so it learns here which image and archive that is.
    fn database(
        &self,
        db: Spanned<RawDatabase>,
        swarm: &mut Option<SwarmConfig>,
        provider: &mut ProviderConfig,
    ) -> Result<(), ConfigError> {
        let span = db.span();
        let db = db.into_inner();
        if !db.enabled {
            return Ok(());
        }
        let Some(sw) = swarm.as_mut() else {
            return Err(self.at(
                Some(span),
                "database",
                "[database] needs Swarm and the overlay: add a [swarm] section (or remove enabled = false)".into(),
            ));
        };
        let cfg = self.database_config(db, span.clone(), provider)?;
        if let Some(a) = &cfg.image_archive {
            if !matches!(provider, ProviderConfig::Lab(_)) {
                return Err(self.at(
                    Some(span),
                    "database.image_archive",
                    "database.image_archive is for the lab (other hosts pull the image)".into(),
                ));
            }
            if !a.is_file() {
                return Err(self.at(
                    Some(span),
                    "database.image_archive",
                    format!(
                        "database.image_archive = {:?}: no such file (make one with `docker save {} -o FILE`)",
                        a.display().to_string(),
                        cfg.image
                    ),
                ));
            }
        }
        if let ProviderConfig::Lab(lab) = provider {
            lab.etcd_image = cfg.kind == DatabaseKind::Etcd
                && cfg.image == "lab/etcd:1"
                && cfg.image_archive.is_none();
            lab.image_archives.extend(cfg.image_archive.clone());
        }
        sw.database = Some(cfg);
        Ok(())
    }

    fn database_config(
        &self,
        db: RawDatabase,
        span: Range<usize>,
        provider: &ProviderConfig,
    ) -> Result<DatabaseConfig, ConfigError> {
        let digitalocean = matches!(provider, ProviderConfig::DigitalOcean(_));
        let kind = match db.kind {
            Some(kind) => kind,
            None if digitalocean => DatabaseKind::Rethinkdb,
            None => {
                return Err(self.at(
                    Some(span),
                    "database.kind",
                    "database.kind is required: \"etcd\" or \"rethinkdb\" (or enabled = false)"
                        .into(),
                ));
            }
        };
        // The lab builds lab/etcd:1 into its own engines; a droplet pulls its
        // image from a registry, where no such image exists.
        if digitalocean && kind == DatabaseKind::Etcd && db.image.is_none() {
            return Err(self.at(
                Some(span),
                "database.image",
                "database.image is required for etcd on DigitalOcean: the default etcd image \
                 (lab/etcd:1) is built by the lab and no droplet can pull it; name an etcd image \
                 your droplets can pull, or use kind = \"rethinkdb\" (rethinkdb:2.4, the default)"
                    .into(),
            ));
        }
        let memory = db.memory.unwrap_or_else(|| "450m".into());
        let memory_bytes = parse_memory(&memory).ok_or_else(|| {
            self.at(
                Some(span.clone()),
                "database.memory",
                format!("database.memory = {memory:?}: write a size such as \"450m\" or \"1g\""),
            )
        })?;
        if memory_bytes < 64 << 20 {
            return Err(self.at(
                Some(span),
                "database.memory",
                format!("database.memory = {memory:?}: at least 64m"),
            ));
        }
        if db.servers == Some(0) {
            return Err(self.at(
                Some(span),
                "database.servers",
                "database.servers must be at least 1".into(),
            ));
        }
        let (image, client, peer) = match kind {
            DatabaseKind::Etcd => ("lab/etcd:1", 2379, 2380),
            DatabaseKind::Rethinkdb => ("rethinkdb:2.4", 28015, 29015),
        };
        let cfg = DatabaseConfig {
            kind,
            image: db.image.unwrap_or_else(|| image.into()),
            servers: db.servers,
            memory,
            memory_bytes,
            volume_prefix: db.volume_prefix.unwrap_or_else(|| kind.as_str().into()),
            client_port: db.client_port.unwrap_or(client),
            peer_port: db.peer_port.unwrap_or(peer),
            peer_tls: db.peer_tls.unwrap_or(true),
            auth: db.auth.unwrap_or(true),
            spread_tables: db.spread_tables.unwrap_or(false),
            image_archive: db.image_archive.map(|a| {
                if a.is_relative() {
                    self.path.parent().unwrap_or(Path::new(".")).join(a)
                } else {
                    a
                }
            }),
        };
        if cfg.client_port == cfg.peer_port {
            return Err(self.at(
                Some(span),
                "database.peer_port",
                format!(
                    "database.client_port and database.peer_port are both {}",
                    cfg.peer_port
                ),
            ));
        }
        Ok(cfg)
    }

    /// `[tunnel]`: the relay's limits and the CIDRs agents let tunnels reach.
    fn tunnel(
        &self,
        tunnel: Option<RawTunnel>,
        swarm: Option<&SwarmConfig>,
    ) -> Result<(TunnelLimits, Vec<String>), ConfigError> {
        let mut limits = TunnelLimits::default();
        let mut allow = ["127.0.0.0/8", "::1/128"].map(String::from).to_vec();
        allow.extend(
            swarm
                .map(|s| s.default_addr_pool.clone())
                .unwrap_or_else(default_pool),
        );
        let Some(t) = tunnel else {
            return Ok((limits, allow));
        };
        if let Some(v) = t.allow {
            let key = "tunnel.allow";
            apiary_api::tunnel::AllowList::parse(v.get_ref()).map_err(|e| {
                self.at(
                    Some(v.span()),
                    key,
                    format!("{key}: {e}; write CIDRs such as \"127.0.0.0/8\""),
                )
            })?;
            allow = v.into_inner();
        }
        if let Some(v) = t.max_connections_per_admin {
            let key = "tunnel.max_connections_per_admin";
            limits.max_connections_per_admin = usize::try_from(*v.get_ref())
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| {
                    self.at(
                        Some(v.span()),
                        key,
                        format!("{key} = {}: write a count from 1 to 1000000", v.get_ref()),
                    )
                })?;
        }
        if let Some(v) = t.max_bytes_in_flight_per_connection {
            let key = "tunnel.max_bytes_in_flight_per_connection";
            let bytes = match v.get_ref() {
                toml::Value::Integer(n) => Some(*n),
                toml::Value::String(s) => parse_memory(s),
                _ => None,
            };
            limits.max_bytes_in_flight_per_connection = bytes
                .and_then(|b| usize::try_from(b).ok())
                .filter(|b| (MIN_TUNNEL_BYTES..=1 << 30).contains(b))
                .ok_or_else(|| {
                    self.at(
                        Some(v.span()),
                        key,
                        format!(
                            "{key} = {}: write a size from \"64k\" to \"1g\" (or bytes)",
                            v.get_ref()
                        ),
                    )
                })?;
        }
        Ok((limits, allow))
    }

    /// `coordinator.agent_binary` and `coordinator.artifacts_listen`.
    fn artifacts(
        &self,
        c: &RawCoordinator,
    ) -> Result<(Option<PathBuf>, Option<SocketAddr>), ConfigError> {
        let agent_binary = match &c.agent_binary {
            Some(v) if v.get_ref().trim().is_empty() => {
                return Err(self.at(
                    Some(v.span()),
                    "coordinator.agent_binary",
                    "coordinator.agent_binary is empty: write the path of the agent binary to serve, or remove the key for the `agent` beside the coordinator".into(),
                ));
            }
            Some(v) => Some(
                self.path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(v.get_ref()),
            ),
            None => None,
        };
        let artifacts_listen = match &c.artifacts_listen {
            Some(v) => Some(v.get_ref().parse::<SocketAddr>().map_err(|e| {
                self.at(
                    Some(v.span()),
                    "coordinator.artifacts_listen",
                    format!(
                        "coordinator.artifacts_listen = {:?}: {e} (write IP:PORT)",
                        v.get_ref()
                    ),
                )
            })?),
            None => None,
        };
        Ok((agent_binary, artifacts_listen))
    }

    fn check_firewall(
        &self,
        provider: &ProviderConfig,
        swarm: Option<&SwarmConfig>,
        digitalocean_span: Option<Range<usize>>,
        swarm_span: Option<Range<usize>>,
    ) -> Result<(), ConfigError> {
        // A Cloud Firewall's rules name tcp, udp or icmp only (the API's
        // enum): it would drop ESP, the encrypted overlay's data path, and
        // the overlay would look up while carrying nothing. Refused here,
        // where both settings are known, rather than found in production.
        if let ProviderConfig::DigitalOcean(d) = provider
            && d.spec.firewall
            && swarm.is_some_and(|s| s.encrypted)
        {
            let offset = key_offset(self.text, digitalocean_span, "firewall")
                .or_else(|| key_offset(self.text, swarm_span, "encrypted"));
            return Err(self.at(
                offset.map(|o| o..o),
                "digitalocean.firewall",
                "digitalocean.firewall = true and swarm.encrypted = true cannot go together: a \
                 DigitalOcean Cloud Firewall allows only tcp, udp and icmp, so it would drop ESP \
                 (IP protocol 50), which carries the encrypted overlay; set digitalocean.firewall \
                 = false (each droplet's host firewall still admits ESP only from the VPC) or \
                 swarm.encrypted = false"
                    .into(),
            ));
        }
        Ok(())
    }

    fn check_advertise(
        &self,
        provider: &ProviderConfig,
        advertise: Option<SocketAddr>,
        provider_span: Range<usize>,
    ) -> Result<(), ConfigError> {
        if let ProviderConfig::DigitalOcean(_) = provider
            && advertise.is_none()
        {
            return Err(self.at(Some(provider_span), "coordinator.advertise", "the digitalocean provider needs the IP:PORT droplets dial: run `coordinator up`, which derives it (the coordinator droplet's VPC address), or give `serve --advertise IP:PORT` where the coordinator runs inside the VPC".into()));
        }
        Ok(())
    }
}

/// The smallest per-connection budget: one full tunnel frame.
pub const MIN_TUNNEL_BYTES: usize = 64 << 10;

/// The most hosts a provider makes for one cluster.
const MAX_HOSTS: usize = 200;

/// Host names from `hosts = N` and/or `names = [...]`: the recipe's queenbee and
/// workerbees by default.
fn host_names(
    hosts: Option<usize>,
    names: Option<Vec<String>>,
) -> Result<Vec<String>, (&'static str, String)> {
    // Before any name is made: a count far past the limit must not be
    // allocated first.
    if hosts.is_some_and(|n| n == 0 || n > MAX_HOSTS) {
        return Err((
            "provider.hosts",
            format!("a cluster needs between 1 and {MAX_HOSTS} hosts"),
        ));
    }
    let list: Vec<String> = match (hosts, names) {
        (_, Some(names)) => names,
        (Some(n), None) => std::iter::once("queenbee".to_string())
            .chain((1..n).map(|i| format!("workerbee-{i}")))
            .collect(),
        (None, None) => DEFAULT_LAB_NAMES.iter().map(|s| s.to_string()).collect(),
    };
    if let Some(n) = hosts
        && n != list.len()
    {
        return Err((
            "provider.hosts",
            format!(
                "provider.hosts = {n} but provider.names lists {} hosts",
                list.len()
            ),
        ));
    }
    if list.is_empty() || list.len() > MAX_HOSTS {
        return Err((
            "provider.hosts",
            format!("a cluster needs between 1 and {MAX_HOSTS} hosts"),
        ));
    }
    for n in &list {
        apiary_api::names::NodeName::parse(n).map_err(|e| ("provider.names", e.to_string()))?;
    }
    let mut sorted = list.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != list.len() {
        return Err(("provider.names", "host names must be unique".into()));
    }
    Ok(list)
}

/// Where `key = ...` starts in the table whose header is at `span` (serde
/// gives a table's span as its `[header]` only), else the header itself:
/// for errors about a key whose own span is gone.
fn key_offset(text: &str, span: Option<Range<usize>>, key: &str) -> Option<usize> {
    let span = span?;
    let body = span.end + text.get(span.end..)?.find('\n')? + 1;
    let mut start = body;
    for line in text.get(body..)?.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            break;
        }
        if let Some(value) = trimmed.strip_prefix(key)
            && value.trim_start().starts_with('=')
        {
            return Some(start + (line.len() - trimmed.len()));
        }
        start += line.len();
    }
    Some(span.start)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::parse(Path::new("cluster.toml"), text)
    }

    #[test]
    fn tunnel_allow_list_defaults_to_loopback_and_the_overlay_pool() {
        let base = "[cluster]\nname = \"bees\"\n[provider]\nkind = \"manual\"\n";
        let lo = ["127.0.0.0/8", "::1/128"];
        assert_eq!(
            parse(base).expect("valid").tunnel_allow,
            [&lo[..], &["10.232.0.0/16"]].concat()
        );
        // The overlay's pool follows `[swarm] default_addr_pool`.
        let c = parse(&format!(
            "{base}[swarm]\ndefault_addr_pool = [\"10.50.0.0/16\"]\n"
        ))
        .expect("valid");
        assert_eq!(c.tunnel_allow, [&lo[..], &["10.50.0.0/16"]].concat());
        let c = parse(&format!("{base}[tunnel]\nallow = [\"127.0.0.1/32\"]\n")).expect("valid");
        assert_eq!(c.tunnel_allow, ["127.0.0.1/32"]);
    }

    #[test]
    fn tunnel_limits_have_defaults_and_bad_values_name_line_and_key() {
        let base = "[cluster]\nname = \"bees\"\n[provider]\nkind = \"manual\"\n";
        assert_eq!(parse(base).expect("valid").tunnel, TunnelLimits::default());
        let c = parse(&format!(
            "{base}[tunnel]\nmax_connections_per_admin = 3\nmax_bytes_in_flight_per_connection = \"256k\"\n"
        ))
        .expect("valid");
        assert_eq!(
            c.tunnel,
            TunnelLimits {
                max_connections_per_admin: 3,
                max_bytes_in_flight_per_connection: 256 << 10
            }
        );
        for (text, line, key) in [
            (
                "max_connections_per_admin = 0",
                6,
                "tunnel.max_connections_per_admin",
            ),
            (
                "max_bytes_in_flight_per_connection = \"1k\"",
                6,
                "tunnel.max_bytes_in_flight_per_connection",
            ),
            (
                "max_bytes_in_flight_per_connection = \"lots\"",
                6,
                "tunnel.max_bytes_in_flight_per_connection",
            ),
            ("max_tunnels = 3", 6, "max_tunnels"),
            ("allow = [\"10.0.0.0\"]", 6, "tunnel.allow"),
            ("allow = [\"10.0.0.300/8\"]", 6, "tunnel.allow"),
        ] {
            match parse(&format!("{base}[tunnel]\n{text}\n")) {
                Err(ConfigError::Invalid {
                    line: l, key: k, ..
                }) => {
                    assert_eq!((l, k.as_str()), (line, key), "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn artifact_settings_resolve_paths_and_name_bad_values() {
        let base = "[cluster]\nname = \"bees\"\n[provider]\nkind = \"manual\"\n";
        let c = parse(base).expect("valid");
        assert_eq!((c.agent_binary, c.artifacts_listen), (None, None));
        let c = ClusterConfig::parse(
            Path::new("/etc/apiary/cluster.toml"),
            &format!("{base}[coordinator]\nagent_binary = \"bin/agent\"\nartifacts_listen = \"10.0.0.2:7444\"\n"),
        )
        .expect("valid");
        assert_eq!(c.agent_binary, Some(PathBuf::from("/etc/apiary/bin/agent")));
        assert_eq!(
            c.artifacts_listen,
            Some("10.0.0.2:7444".parse().expect("addr"))
        );
        for (text, key) in [
            (
                "artifacts_listen = \"7444\"",
                "coordinator.artifacts_listen",
            ),
            ("agent_binary = \" \"", "coordinator.agent_binary"),
        ] {
            match parse(&format!("{base}[coordinator]\n{text}\n")) {
                Err(ConfigError::Invalid { line, key: k, .. }) => {
                    assert_eq!((line, k.as_str()), (6, key), "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn minimal_manual_config_gets_defaults() {
        let c =
            parse("[cluster]\nname = \"bees\"\n[provider]\nkind = \"manual\"\n").expect("valid");
        assert_eq!(c.cluster_name, "bees");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.node_cert_ttl, Duration::from_secs(86400));
        assert_eq!(c.listen.port(), DEFAULT_PORT);
        assert_eq!(c.provider, ProviderConfig::Manual);
        assert_eq!(c.join_token_ttl, None);
    }

    #[test]
    fn lab_defaults_to_the_recipes_four_hosts_on_the_private_bridge() {
        let c = parse("[cluster]\nname = \"bees\"\n[provider]\nkind = \"lab\"\n").expect("valid");
        let ProviderConfig::Lab(lab) = c.provider else {
            panic!("lab expected")
        };
        assert_eq!(lab.hosts, DEFAULT_LAB_NAMES);
        assert_eq!(c.listen.to_string(), "10.231.0.1:7443");
        let c = parse("[cluster]\nname = \"bees\"\n[provider]\nkind = \"lab\"\nhosts = 6\n")
            .expect("valid");
        let ProviderConfig::Lab(lab) = c.provider else {
            panic!("lab expected")
        };
        assert_eq!(lab.hosts.last().map(String::as_str), Some("workerbee-5"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("[cluster]\nname = \"bees\"\n[coordinator]\nlisten = \"127.0.0.1:1\"\nheartbeat = \"5s\"\n[provider]\nkind = \"manual\"\n")
            .expect_err("unknown key");
        let ConfigError::Invalid { line, key, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(*line, 5, "{err}");
        assert_eq!(key, "heartbeat");
        assert!(err.to_string().starts_with("cluster.toml:5:"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key_and_line() {
        for (text, line, key) in [
            (
                "[cluster]\nname = \"Bees!\"\n[provider]\nkind = \"manual\"\n",
                2,
                "cluster.name",
            ),
            (
                "[cluster]\nname = \"b\"\n[coordinator]\nheartbeat_interval = \"soon\"\n[provider]\nkind = \"manual\"\n",
                4,
                "coordinator.heartbeat_interval",
            ),
            (
                "[cluster]\nname = \"b\"\n[coordinator]\nlisten = \"nowhere\"\n[provider]\nkind = \"manual\"\n",
                4,
                "coordinator.listen",
            ),
            (
                "[cluster]\nname = \"b\"\n[provider]\nkind = \"vmware\"\n",
                4,
                "vmware",
            ),
        ] {
            let err = parse(text).expect_err(text);
            let ConfigError::Invalid {
                line: l, key: k, ..
            } = &err
            else {
                panic!("{err}")
            };
            assert_eq!((*l, k.as_str()), (line, key), "{err}");
        }
    }

    #[test]
    fn host_section_is_validated_naming_the_key_and_line() {
        let text = "[cluster]\nname = \"b\"\n[provider]\nkind = \"manual\"\n[host]\nfirewall = { private_cidr = \"10.0.0.0/8\" }\n[host.sysctls]\n\"net.ipv4.ip_forwrd\" = 1\n";
        let err = parse(text).expect_err("typo in a sysctl");
        let ConfigError::Invalid { line, key, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(*line, 8, "{err}");
        assert!(key.contains("ip_forwrd"), "{key}");
        let text = "[cluster]\nname = \"b\"\n[provider]\nkind = \"manual\"\n[host]\nfirewall = { private_cidr = \"10.0.0.0/8\" }\ndaemon_json = { hosts = [\"tcp://0.0.0.0:2375\"] }\n";
        let err = parse(text).expect_err("a TCP listener");
        assert!(err.to_string().contains("daemon_json.hosts"), "{err}");
        let ok = parse("[cluster]\nname = \"b\"\n[provider]\nkind = \"lab\"\n").expect("lab");
        assert!(
            ok.host.is_some(),
            "the lab manages host configuration by default"
        );
    }

    #[test]
    fn missing_section_is_reported() {
        let err = parse("[provider]\nkind = \"manual\"\n").expect_err("no cluster");
        assert!(err.to_string().contains("cluster"), "{err}");
    }

    #[test]
    fn database_section_gets_defaults_per_kind_and_loads_the_lab_etcd_image() {
        let c = parse(
            "[cluster]\nname = \"bees\"\n[provider]\nkind = \"lab\"\n[database]\nkind = \"etcd\"\n",
        )
        .expect("valid");
        let db = c
            .swarm
            .as_ref()
            .and_then(|s| s.database.clone())
            .expect("database");
        assert_eq!(db.kind, DatabaseKind::Etcd);
        assert_eq!(db.image, "lab/etcd:1");
        assert_eq!(db.memory_bytes, 450 << 20);
        assert_eq!((db.client_port, db.peer_port), (2379, 2380));
        assert_eq!(db.volume_prefix, "etcd");
        assert_eq!(db.servers, None);
        assert!(db.peer_tls, "peers talk TLS unless told otherwise");
        let ProviderConfig::Lab(lab) = c.provider else {
            panic!("lab expected")
        };
        assert!(lab.etcd_image);
        let c = parse("[cluster]\nname = \"bees\"\n[provider]\nkind = \"lab\"\n[database]\nkind = \"rethinkdb\"\nservers = 3\nmemory = \"1g\"\npeer_tls = false\n")
            .expect("valid");
        let db = c
            .swarm
            .as_ref()
            .and_then(|s| s.database.clone())
            .expect("database");
        assert_eq!(db.image, "rethinkdb:2.4");
        assert_eq!((db.client_port, db.peer_port), (28015, 29015));
        assert_eq!(db.memory_bytes, 1 << 30);
        assert_eq!(db.servers, Some(3));
        assert!(!db.peer_tls);
        let c = parse("[cluster]\nname = \"bees\"\n[provider]\nkind = \"lab\"\n").expect("valid");
        assert!(
            c.swarm.expect("swarm").database.is_none(),
            "no database unless [database]"
        );
    }

    #[test]
    fn bad_database_keys_name_their_line_and_key() {
        for (text, line, key) in [
            (
                "[cluster]\nname = \"b\"\n[provider]\nkind = \"lab\"\n[database]\nkind = \"mysql\"\n",
                6,
                "mysql",
            ),
            (
                "[cluster]\nname = \"b\"\n[provider]\nkind = \"lab\"\n[database]\nkind = \"etcd\"\nreplicas = 3\n",
                7,
                "replicas",
            ),
            (
                "[cluster]\nname = \"b\"\n[provider]\nkind = \"lab\"\n[database]\nkind = \"etcd\"\nmemory = \"lots\"\n",
                5,
                "database.memory",
            ),
        ] {
            let err = parse(text).expect_err(text);
            let ConfigError::Invalid {
                line: l, key: k, ..
            } = &err
            else {
                panic!("{err}")
            };
            assert_eq!((*l, k.as_str()), (line, key), "{err}");
        }
        assert_eq!(parse_memory("450m"), Some(450 << 20));
        assert_eq!(parse_memory("0"), None);
    }

    #[test]
    fn a_database_image_archive_must_exist_and_is_loaded_by_the_lab() {
        let dir = tempfile::tempdir().expect("tmp");
        let archive = dir.path().join("rethinkdb.tar");
        std::fs::write(&archive, b"x").expect("write");
        let text = format!(
            "[cluster]\nname = \"b\"\n[provider]\nkind = \"lab\"\n[database]\nkind = \"rethinkdb\"\nimage_archive = \"{}\"\n",
            archive.display()
        );
        let c = parse(&text).expect("valid");
        let ProviderConfig::Lab(lab) = c.provider else {
            panic!("lab expected")
        };
        assert_eq!(lab.image_archives, vec![archive.clone()]);
        assert!(!lab.etcd_image);
        let err = parse(&text.replace("rethinkdb.tar", "missing.tar")).expect_err("missing");
        let ConfigError::Invalid { key, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(key, "database.image_archive", "{err}");
    }
    #[test]
    fn a_cloud_firewall_with_an_encrypted_overlay_is_refused_naming_both() {
        let base = "[cluster]\nname = \"b\"\n[coordinator]\nadvertise = \"10.0.0.2:7443\"\n[provider]\nkind = \"digitalocean\"\n[digitalocean]\nregion = \"nyc3\"\nfirewall = true\n";
        let err = parse(&format!("{base}[swarm]\nencrypted = true\n")).expect_err("refused");
        let ConfigError::Invalid { line, key, .. } = &err else {
            panic!("{err}")
        };
        // Line 9 is `firewall = true`.
        assert_eq!((*line, key.as_str()), (9, "digitalocean.firewall"), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("cluster.toml:9:1")
                && text.contains("digitalocean.firewall = true")
                && text.contains("swarm.encrypted = true")
                && text.contains("ESP"),
            "{text}"
        );
        // Either alone is fine.
        parse(&format!("{base}[swarm]\nencrypted = false\n")).expect("plain overlay");
        parse(&format!(
            "{}[swarm]\nencrypted = true\n",
            base.replace("firewall = true", "firewall = false")
        ))
        .expect("no cloud firewall");
    }

    #[test]
    fn digitalocean_defaults_to_swarm_the_overlay_and_rethinkdb() {
        let base = "[cluster]\nname = \"b\"\n[coordinator]\nadvertise = \"10.0.0.2:7443\"\n[provider]\nkind = \"digitalocean\"\n";
        let c = parse(base).expect("valid");
        let sw = c.swarm.expect("Swarm on by default, as for the lab");
        assert_eq!(sw.overlay, "apiary");
        assert!(!sw.encrypted);
        let db = sw.database.expect("a database by default");
        assert_eq!(db.kind, DatabaseKind::Rethinkdb);
        assert_eq!(db.image, "rethinkdb:2.4", "an image droplets can pull");
        assert_eq!((db.client_port, db.peer_port), (28015, 29015));
        assert!(db.peer_tls && db.auth);

        // [database] without a kind is RethinkDB there, with its keys kept.
        let c = parse(&format!("{base}[database]\nservers = 3\n")).expect("valid");
        let db = c.swarm.expect("swarm").database.expect("database");
        assert_eq!((db.kind, db.servers), (DatabaseKind::Rethinkdb, Some(3)));
        // Opting out: no database, or no swarm (and so no database).
        let c = parse(&format!("{base}[database]\nenabled = false\n")).expect("valid");
        assert!(c.swarm.expect("swarm").database.is_none());
        let c = parse(&format!("{base}[swarm]\nenabled = false\n")).expect("valid");
        assert!(c.swarm.is_none());

        // etcd there needs an image droplets can pull: lab/etcd:1 is the lab's.
        let err = parse(&format!("{base}[database]\nkind = \"etcd\"\n")).expect_err("refused");
        let ConfigError::Invalid { key, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(key, "database.image", "{err}");
        assert!(err.to_string().contains("lab/etcd:1"), "{err}");
        let c = parse(&format!(
            "{base}[database]\nkind = \"etcd\"\nimage = \"registry.example.com/etcd:3.5\"\n"
        ))
        .expect("valid");
        assert_eq!(
            c.swarm.expect("swarm").database.expect("database").kind,
            DatabaseKind::Etcd
        );
    }

    /// Droplets' host configuration is managed by default when the VPC's
    /// range is in the spec (the firewall's private network), and not when
    /// DigitalOcean picks it; `[host]` written out always wins.
    #[test]
    fn droplets_are_managed_by_default_with_the_vpc_range_as_private_network() {
        let base = "[cluster]\nname = \"b\"\n[coordinator]\nadvertise = \"10.0.0.2:7443\"\n[provider]\nkind = \"digitalocean\"\n[digitalocean]\nregion = \"nyc3\"\n";
        assert!(parse(base).expect("valid").host.is_none());
        let c = parse(&format!("{base}vpc_ip_range = \"10.10.0.0/20\"\n")).expect("valid");
        let host = c.host.expect("managed");
        assert_eq!(host.spec().firewall.private_cidr, "10.10.0.0/20");
    }

    #[test]
    fn other_providers_keep_their_database_defaults() {
        // Manual: no swarm, no database unless asked for.
        let manual = "[cluster]\nname = \"b\"\n[provider]\nkind = \"manual\"\n";
        assert!(parse(manual).expect("valid").swarm.is_none());
        // The lab: Swarm, no database by default; etcd is lab/etcd:1.
        let lab = "[cluster]\nname = \"b\"\n[provider]\nkind = \"lab\"\n";
        assert!(
            parse(lab)
                .expect("valid")
                .swarm
                .expect("swarm")
                .database
                .is_none()
        );
        let c = parse(&format!("{lab}[database]\nkind = \"etcd\"\n")).expect("valid");
        assert_eq!(
            c.swarm.expect("swarm").database.expect("database").image,
            "lab/etcd:1"
        );
        // Elsewhere the kind must be said.
        let err = parse(&format!("{lab}[database]\nservers = 3\n")).expect_err("no kind");
        let ConfigError::Invalid { key, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(key, "database.kind", "{err}");
    }
}
