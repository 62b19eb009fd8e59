//! The desired host configuration: the raw serde form the coordinator reads
//! from its cluster file and sends to agents ([`HostConfigSpec`]), and the
//! validated form the appliers accept ([`HostConfig`]). Validation runs on
//! both sides: the coordinator refuses a bad cluster file before sending
//! anything, and the agent refuses a bad message instead of half-applying it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Sysctls every Swarm host needs, with the value Swarm needs. The spec may
/// repeat them (with the same value) but never change them.
pub const REQUIRED_SYSCTLS: [(&str, &str, &str); 3] = [
    (
        "net.ipv4.ip_forward",
        "1",
        "containers and the overlay network need forwarding",
    ),
    (
        "net.bridge.bridge-nf-call-iptables",
        "1",
        "Docker's and apiary's filtering of bridged container traffic needs it",
    ),
    (
        "net.bridge.bridge-nf-call-ip6tables",
        "1",
        "Docker's and apiary's filtering of bridged container traffic needs it",
    ),
];

/// Top-level directories of /proc/sys: a name outside them cannot exist.
const SYSCTL_TOPS: [&str; 10] = [
    "abi", "crypto", "debug", "dev", "fs", "kernel", "net", "sunrpc", "user", "vm",
];

/// Sysctls operators commonly set. Used only to catch typos ("did you
/// mean"): a name that is close to one of these but not equal is refused,
/// any other well-formed name is accepted and checked on the host.
const KNOWN_SYSCTLS: [&str; 24] = [
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.neigh.default.gc_thresh1",
    "net.ipv4.neigh.default.gc_thresh2",
    "net.ipv4.neigh.default.gc_thresh3",
    "net.ipv6.conf.all.forwarding",
    "net.ipv6.conf.all.disable_ipv6",
    "net.core.somaxconn",
    "net.netfilter.nf_conntrack_max",
    "vm.max_map_count",
    "vm.swappiness",
    "vm.overcommit_memory",
    "fs.file-max",
    "fs.inotify.max_user_watches",
    "fs.inotify.max_user_instances",
];

/// daemon.json keys apiary refuses, and why (the message is shown to the operator).
const FORBIDDEN_DAEMON_KEYS: [(&str, &str); 6] = [
    (
        "hosts",
        "apiary never lets the engine listen on TCP and manages its socket itself; the coordinator reaches the engine through the host's agent",
    ),
    (
        "metrics-addr",
        "it opens a plaintext TCP listener; apiary never lets the engine listen on TCP",
    ),
    (
        "data-root",
        "set by the engine's service (the lab passes it as a flag and dockerd refuses an option given twice)",
    ),
    (
        "graph",
        "the old name of data-root, which is set by the engine's service",
    ),
    (
        "exec-root",
        "set by the engine's service (the lab passes it as a flag and dockerd refuses an option given twice)",
    ),
    (
        "pidfile",
        "set by the engine's service (the lab passes it as a flag and dockerd refuses an option given twice)",
    ),
];

/// dockerd options, used only to catch typos like the sysctl list above:
/// dockerd itself refuses unknown keys, and the applier rolls back then.
const KNOWN_DAEMON_KEYS: [&str; 40] = [
    "log-driver",
    "log-opts",
    "log-level",
    "mtu",
    "bip",
    "default-address-pools",
    "dns",
    "dns-opts",
    "dns-search",
    "debug",
    "experimental",
    "features",
    "insecure-registries",
    "registry-mirrors",
    "live-restore",
    "storage-driver",
    "storage-opts",
    "max-concurrent-downloads",
    "max-concurrent-uploads",
    "default-ulimits",
    "default-runtime",
    "runtimes",
    "labels",
    "ipv6",
    "fixed-cidr",
    "fixed-cidr-v6",
    "iptables",
    "ip6tables",
    "ip-forward",
    "ip-masq",
    "icc",
    "userland-proxy",
    "userns-remap",
    "shutdown-timeout",
    "default-shm-size",
    "exec-opts",
    "cgroup-parent",
    "no-new-privileges",
    "selinux-enabled",
    "swarm-default-advertise-addr",
];

/// Why a host configuration was refused. Each names the offending key the
/// way the cluster file spells it ([`SpecError::key`]) and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("sysctls.\"{name}\": {why}")]
    Sysctl { name: String, why: String },
    #[error("firewall.{field}: {why}")]
    Firewall { field: String, why: String },
    #[error("daemon_json.{key}: {why}")]
    DaemonJson { key: String, why: String },
}

impl SpecError {
    /// The offending key as a path from the host configuration's root,
    /// e.g. `sysctls."net.ipv4.ip_forwrd"`, `daemon_json.hosts`,
    /// `firewall.allow_public_tcp[1]`; the coordinator maps it to a file line.
    pub fn key(&self) -> String {
        match self {
            SpecError::Sysctl { name, .. } => format!("sysctls.\"{name}\""),
            SpecError::Firewall { field, .. } => format!("firewall.{field}"),
            SpecError::DaemonJson { key, .. } => format!("daemon_json.{key}"),
        }
    }
}

/// The raw, unvalidated host configuration (a `[host]` table in the cluster
/// file, or the message the coordinator sends). Turn it into a
/// [`HostConfig`] with [`HostConfig::new`]; nothing else accepts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfigSpec {
    /// Extra sysctls (name → value) on top of [`REQUIRED_SYSCTLS`].
    #[serde(default)]
    pub sysctls: BTreeMap<String, SysctlValue>,
    pub firewall: FirewallSpec,
    /// Keys merged into the engine's daemon.json (top-level keys replace
    /// the file's; the file's other keys are kept).
    #[serde(default)]
    pub daemon_json: Map<String, Value>,
    /// Whether the agent may edit GRUB's kernel command line to turn on
    /// cgroup v1 memory accounting (`"auto"`/`true`) or not (`"off"`/`false`).
    #[serde(default)]
    pub grub: GrubMode,
    /// Load missing kernel modules with modprobe.
    #[serde(default = "yes")]
    pub manage_modules: bool,
}

fn yes() -> bool {
    true
}

/// A sysctl value as written in the cluster file: `"1"` or `1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SysctlValue {
    Int(i64),
    Text(String),
}

impl fmt::Display for SysctlValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SysctlValue::Int(i) => write!(f, "{i}"),
            SysctlValue::Text(s) => f.write_str(s),
        }
    }
}

/// The raw firewall policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallSpec {
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,
    #[serde(default = "default_coordinator_port")]
    pub coordinator_port: u16,
    /// Interface names; when absent they are detected from the host's facts
    /// (the public one holds the public address, the private one an
    /// address inside `private_cidr`).
    #[serde(default)]
    pub public_interface: Option<String>,
    #[serde(default)]
    pub private_interface: Option<String>,
    /// The private network cluster traffic comes from, e.g. "10.231.0.0/24".
    /// Required: guessing it wrong would either break Swarm or open the
    /// cluster ports to strangers.
    pub private_cidr: String,
    /// Published container ports (host side, TCP) reachable from the public side.
    #[serde(default)]
    pub allow_public_tcp: Vec<u16>,
    /// Accept ESP (IP protocol 50) from the private network, for an
    /// encrypted overlay.
    #[serde(default)]
    pub encrypted_overlay: bool,
}

fn default_ssh_port() -> u16 {
    22
}

fn default_coordinator_port() -> u16 {
    7443
}

impl FirewallSpec {
    /// Defaults for everything but the private network.
    pub fn new(private_cidr: &str) -> Self {
        FirewallSpec {
            ssh_port: default_ssh_port(),
            coordinator_port: default_coordinator_port(),
            public_interface: None,
            private_interface: None,
            private_cidr: private_cidr.to_string(),
            allow_public_tcp: Vec::new(),
            encrypted_overlay: false,
        }
    }
}

impl HostConfigSpec {
    /// Defaults for everything but the private network.
    pub fn new(private_cidr: &str) -> Self {
        HostConfigSpec {
            sysctls: BTreeMap::new(),
            firewall: FirewallSpec::new(private_cidr),
            daemon_json: Map::new(),
            grub: GrubMode::Auto,
            manage_modules: true,
        }
    }
}

/// Whether the agent manages GRUB's kernel command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GrubMode {
    /// Add `cgroup_enable=memory swapaccount=1` where (and only where) a
    /// cgroup v1 host lacks memory accounting.
    #[default]
    Auto,
    /// Never touch GRUB; a host without memory accounting is reported failed.
    Off,
}

impl Serialize for GrubMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            GrubMode::Auto => "auto",
            GrubMode::Off => "off",
        })
    }
}

impl<'de> Deserialize<'de> for GrubMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(GrubMode::Auto),
            Raw::Bool(false) => Ok(GrubMode::Off),
            Raw::Text(t) if t == "auto" => Ok(GrubMode::Auto),
            Raw::Text(t) if t == "off" => Ok(GrubMode::Off),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "grub must be \"auto\", \"off\", true or false, not {t:?}"
            ))),
        }
    }
}

/// A sysctl name that is well formed (`net.ipv4.ip_forward`), so it maps to
/// exactly one file below /proc/sys and can never climb out of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SysctlName(String);

impl SysctlName {
    pub fn parse(name: &str) -> Result<Self, SpecError> {
        let refuse = |why: String| SpecError::Sysctl {
            name: name.to_string(),
            why,
        };
        if name.is_empty() || name.len() > 256 {
            return Err(refuse("a sysctl name has 1 to 256 characters".into()));
        }
        let segments: Vec<&str> = name.split('.').collect();
        if segments.len() < 2 {
            return Err(refuse(
                "not a sysctl name: expected dotted segments like net.ipv4.ip_forward".into(),
            ));
        }
        for seg in &segments {
            // '/' stands for a '.' inside one segment (an interface like
            // eth0.100 is written eth0/100, as sysctl(8) does); a segment
            // needs one ordinary character so it never maps to "." or "..".
            let ok_chars = seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/'));
            let has_plain = seg
                .chars()
                .any(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
            if !ok_chars || !has_plain {
                return Err(refuse(format!(
                    "segment {seg:?} is not valid: sysctl names use letters, digits, '_', '-' and '.'"
                )));
            }
        }
        if !SYSCTL_TOPS.contains(&segments[0]) {
            return Err(refuse(format!(
                "unknown sysctl: /proc/sys has no {:?} (it has {})",
                segments[0],
                SYSCTL_TOPS.join(", ")
            )));
        }
        if let Some(near) = near_miss(name, &KNOWN_SYSCTLS) {
            return Err(refuse(format!("unknown sysctl; did you mean {near}?")));
        }
        Ok(SysctlName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file below /proc/sys, as relative path components.
    pub fn path_components(&self) -> impl Iterator<Item = String> + '_ {
        self.0.split('.').map(|s| s.replace('/', "."))
    }
}

impl fmt::Display for SysctlName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A network interface name safe to put inside an nftables rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfName(String);

impl IfName {
    /// Linux allows 15 bytes and no '/' or whitespace; apiary also keeps
    /// quotes and other punctuation out because the name ends up quoted in
    /// nftables text.
    pub fn parse(name: &str) -> Result<Self, String> {
        let ok = !name.is_empty()
            && name.len() <= 15
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@' | ':'));
        if ok {
            Ok(IfName(name.to_string()))
        } else {
            Err(format!(
                "{name:?} is not an interface name (1 to 15 of letters, digits, '_', '-', '.', '@', ':')"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IPv4 or IPv6 network in CIDR form, with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) = text.split_once('/').ok_or_else(|| {
            format!("{text:?} is not a network: write it as ADDRESS/LENGTH, e.g. 10.231.0.0/24")
        })?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} in {text:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("prefix length {len:?} in {text:?} must be 0 to {max}"))?;
        let cidr = Cidr { addr, len };
        let network = cidr.network();
        if network != addr {
            return Err(format!(
                "{text} has host bits set; did you mean {network}/{len}?"
            ));
        }
        if len == 0 {
            return Err(format!(
                "{text} is every address: the cluster ports would be open to anyone"
            ));
        }
        Ok(cidr)
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let other = Cidr {
            addr: ip,
            len: self.len,
        };
        self.addr.is_ipv4() == ip.is_ipv4() && other.network() == self.addr
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The validated firewall policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallPolicy {
    pub(crate) ssh_port: u16,
    pub(crate) coordinator_port: u16,
    pub(crate) public_interface: Option<IfName>,
    pub(crate) private_interface: Option<IfName>,
    pub(crate) private_cidr: Cidr,
    pub(crate) allow_public_tcp: BTreeSet<u16>,
    pub(crate) encrypted_overlay: bool,
}

impl FirewallPolicy {
    pub fn new(raw: &FirewallSpec) -> Result<Self, SpecError> {
        let refuse = |field: &str, why: String| SpecError::Firewall {
            field: field.to_string(),
            why,
        };
        for (field, port) in [
            ("ssh_port", raw.ssh_port),
            ("coordinator_port", raw.coordinator_port),
        ] {
            if port == 0 {
                return Err(refuse(field, "0 is not a port (1 to 65535)".into()));
            }
        }
        for (i, port) in raw.allow_public_tcp.iter().enumerate() {
            if *port == 0 {
                return Err(refuse(
                    &format!("allow_public_tcp[{i}]"),
                    "0 is not a port (1 to 65535)".into(),
                ));
            }
        }
        let iface = |field: &str, name: &Option<String>| {
            name.as_deref()
                .map(IfName::parse)
                .transpose()
                .map_err(|why| refuse(field, why))
        };
        let public_interface = iface("public_interface", &raw.public_interface)?;
        let private_interface = iface("private_interface", &raw.private_interface)?;
        if public_interface.is_some() && public_interface == private_interface {
            return Err(refuse(
                "private_interface",
                "the same interface cannot be both public and private".into(),
            ));
        }
        let private_cidr =
            Cidr::parse(&raw.private_cidr).map_err(|why| refuse("private_cidr", why))?;
        Ok(FirewallPolicy {
            ssh_port: raw.ssh_port,
            coordinator_port: raw.coordinator_port,
            public_interface,
            private_interface,
            private_cidr,
            allow_public_tcp: raw.allow_public_tcp.iter().copied().collect(),
            encrypted_overlay: raw.encrypted_overlay,
        })
    }

    pub fn ssh_port(&self) -> u16 {
        self.ssh_port
    }

    pub fn coordinator_port(&self) -> u16 {
        self.coordinator_port
    }

    pub fn public_interface(&self) -> Option<&IfName> {
        self.public_interface.as_ref()
    }

    pub fn private_interface(&self) -> Option<&IfName> {
        self.private_interface.as_ref()
    }

    pub fn allow_public_tcp(&self) -> &BTreeSet<u16> {
        &self.allow_public_tcp
    }

    pub fn encrypted_overlay(&self) -> bool {
        self.encrypted_overlay
    }

    pub fn private_cidr(&self) -> Cidr {
        self.private_cidr
    }
}

/// A validated host configuration: the only form the appliers accept.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    spec: HostConfigSpec,
    pub(crate) sysctls: BTreeMap<SysctlName, String>,
    pub(crate) firewall: FirewallPolicy,
    pub(crate) daemon_json: Map<String, Value>,
    pub(crate) grub: GrubMode,
    pub(crate) manage_modules: bool,
}

impl HostConfig {
    /// Validates `spec`; the error names the first offending key.
    pub fn new(spec: HostConfigSpec) -> Result<Self, SpecError> {
        let mut sysctls = BTreeMap::new();
        for (name, want, _) in REQUIRED_SYSCTLS {
            sysctls.insert(SysctlName(name.to_string()), want.to_string());
        }
        for (name, value) in &spec.sysctls {
            let parsed = SysctlName::parse(name)?;
            let value = value.to_string();
            let normalized = normalize_sysctl(&value);
            if normalized.is_empty()
                || value.len() > 4096
                || value
                    .chars()
                    .any(|c| c.is_control() && c != ' ' && c != '\t')
            {
                return Err(SpecError::Sysctl {
                    name: name.clone(),
                    why: format!("{value:?} is not a sysctl value (one line, not empty)"),
                });
            }
            if let Some((_, want, why)) = REQUIRED_SYSCTLS.iter().find(|(n, _, _)| n == name)
                && normalized != *want
            {
                return Err(SpecError::Sysctl {
                    name: name.clone(),
                    why: format!("must be {want}: {why}"),
                });
            }
            sysctls.insert(parsed, normalized);
        }
        let firewall = FirewallPolicy::new(&spec.firewall)?;
        validate_daemon_json(&spec.daemon_json)?;
        Ok(HostConfig {
            sysctls,
            firewall,
            daemon_json: spec.daemon_json.clone(),
            grub: spec.grub,
            manage_modules: spec.manage_modules,
            spec,
        })
    }

    /// The raw form this was made from (what the coordinator sends).
    pub fn spec(&self) -> &HostConfigSpec {
        &self.spec
    }

    /// Every sysctl the host should have: the required ones plus the spec's.
    pub fn sysctls(&self) -> &BTreeMap<SysctlName, String> {
        &self.sysctls
    }

    pub fn firewall(&self) -> &FirewallPolicy {
        &self.firewall
    }

    pub fn daemon_json(&self) -> &Map<String, Value> {
        &self.daemon_json
    }

    pub fn grub(&self) -> GrubMode {
        self.grub
    }

    pub fn manage_modules(&self) -> bool {
        self.manage_modules
    }
}

/// The kernel prints multi-value sysctls with tabs; compare on single spaces.
pub fn normalize_sysctl(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A number in `value` that does not read back as written (JSON reads
/// floats to within one unit in the last place), which would make the
/// written daemon.json differ from the wanted one at every check.
fn drifting_number(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) if n.is_f64() => {
            let text = n.to_string();
            (serde_json::from_str::<Value>(&text).ok().as_ref() != Some(value)).then_some(text)
        }
        Value::Array(items) => items.iter().find_map(drifting_number),
        Value::Object(map) => map.values().find_map(drifting_number),
        _ => None,
    }
}

fn validate_daemon_json(map: &Map<String, Value>) -> Result<(), SpecError> {
    let refuse = |key: &str, why: String| SpecError::DaemonJson {
        key: key.to_string(),
        why,
    };
    for (key, value) in map {
        if let Some((_, why)) = FORBIDDEN_DAEMON_KEYS.iter().find(|(k, _)| k == key) {
            return Err(refuse(key, format!("forbidden: {why}")));
        }
        if key.is_empty() {
            return Err(refuse(key, "empty key".into()));
        }
        if !KNOWN_DAEMON_KEYS.contains(&key.as_str())
            && let Some(near) = near_miss(key, &KNOWN_DAEMON_KEYS)
        {
            return Err(refuse(key, format!("unknown option; did you mean {near}?")));
        }
        if let Some(number) = drifting_number(value) {
            return Err(refuse(
                key,
                format!(
                    "the number {number} cannot be kept as written (it reads back as another): \
                     daemon.json would differ at every check; write it exactly, or as an integer"
                ),
            ));
        }
        if let Some(path) = tcp_listener(key, value) {
            return Err(refuse(
                &path,
                "forbidden: a tcp:// address; apiary never lets the engine listen on TCP".into(),
            ));
        }
        match key.as_str() {
            "mtu" if !value.as_u64().is_some_and(|m| (68..=65535).contains(&m)) => {
                return Err(refuse(
                    key,
                    format!("{value} is not an MTU: a number from 68 to 65535"),
                ));
            }
            "log-driver" if !value.is_string() => {
                return Err(refuse(key, "must be a string, e.g. \"json-file\"".into()));
            }
            "log-opts" => {
                let Some(opts) = value.as_object() else {
                    return Err(refuse(
                        key,
                        "must be a table of strings, e.g. { max-size = \"10m\" }".into(),
                    ));
                };
                for (k, v) in opts {
                    if !v.is_string() {
                        return Err(refuse(
                            &format!("log-opts.{k}"),
                            format!(
                                "must be a string (write \"{}\"): dockerd refuses other types here",
                                v.to_string().trim_matches('"')
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The path of the first string value that is a TCP listener address.
fn tcp_listener(path: &str, value: &Value) -> Option<String> {
    match value {
        Value::String(s) if s.trim().to_ascii_lowercase().starts_with("tcp://") => {
            Some(path.to_string())
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| tcp_listener(&format!("{path}[{i}]"), v)),
        Value::Object(map) => map
            .iter()
            .find_map(|(k, v)| tcp_listener(&format!("{path}.{k}"), v)),
        _ => None,
    }
}

/// A known name within two edits of `name` (but not `name` itself).
fn near_miss(name: &str, known: &[&'static str]) -> Option<&'static str> {
    if known.contains(&name) {
        return None;
    }
    known
        .iter()
        .copied()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> HostConfigSpec {
        HostConfigSpec::new("10.231.0.0/24")
    }

    fn refused(s: HostConfigSpec) -> SpecError {
        HostConfig::new(s).expect_err("should be refused")
    }

    #[test]
    fn defaults_are_valid_and_include_the_required_sysctls() {
        let c = HostConfig::new(spec()).expect("valid");
        assert_eq!(c.firewall.ssh_port, 22);
        assert_eq!(c.firewall.coordinator_port, 7443);
        assert_eq!(c.sysctls.len(), 3);
        assert_eq!(c.grub, GrubMode::Auto);
        assert!(c.manage_modules);
    }

    #[test]
    fn parses_from_toml_with_defaults_and_refuses_unknown_fields() {
        let text = r#"
            grub = false
            [sysctls]
            "vm.max_map_count" = 262144
            [firewall]
            private_cidr = "10.231.0.0/24"
            allow_public_tcp = [8080]
            [daemon_json]
            log-driver = "json-file"
            log-opts = { max-size = "10m", max-file = "3" }
        "#;
        let s: HostConfigSpec = toml::from_str(text).expect("parse");
        let c = HostConfig::new(s.clone()).expect("valid");
        assert_eq!(c.grub, GrubMode::Off);
        assert_eq!(
            c.sysctls
                .get(&SysctlName::parse("vm.max_map_count").expect("name"))
                .map(String::as_str),
            Some("262144")
        );
        assert_eq!(c.daemon_json["log-opts"]["max-file"], json!("3"));
        // Round trip through JSON (the wire) keeps everything.
        let wire = serde_json::to_string(&s).expect("ser");
        assert_eq!(
            serde_json::from_str::<HostConfigSpec>(&wire).expect("de"),
            s
        );
        let err = toml::from_str::<HostConfigSpec>(
            "[firewall]\nprivate_cidr = \"10.0.0.0/8\"\nssh_prot = 22\n",
        )
        .expect_err("unknown field");
        assert!(err.to_string().contains("ssh_prot"), "{err}");
    }

    #[test]
    fn sysctl_names_are_checked_and_typos_named() {
        let mut s = spec();
        s.sysctls
            .insert("net.ipv4.ip_forwrd".into(), SysctlValue::Int(1));
        let e = refused(s);
        assert_eq!(e.key(), "sysctls.\"net.ipv4.ip_forwrd\"");
        assert!(
            e.to_string().contains("did you mean net.ipv4.ip_forward"),
            "{e}"
        );

        for bad in [
            "ip_forward",
            "net..ipv4",
            "net.ipv4./",
            "net.ipv4.../x",
            "net/../../etc.passwd",
            "proc.x",
            "net.ipv4.ip forward",
            "",
        ] {
            assert!(SysctlName::parse(bad).is_err(), "{bad:?} accepted");
        }
        let vlan = SysctlName::parse("net.ipv4.conf.eth0/100.rp_filter").expect("vlan");
        assert_eq!(
            vlan.path_components().collect::<Vec<_>>(),
            ["net", "ipv4", "conf", "eth0.100", "rp_filter"]
        );
    }

    #[test]
    fn required_sysctls_cannot_be_turned_off_and_values_are_one_line() {
        let mut s = spec();
        s.sysctls
            .insert("net.ipv4.ip_forward".into(), SysctlValue::Text("0".into()));
        let e = refused(s);
        assert!(e.to_string().contains("must be 1"), "{e}");
        let mut s = spec();
        s.sysctls
            .insert("vm.swappiness".into(), SysctlValue::Text("1\n2".into()));
        assert_eq!(refused(s).key(), "sysctls.\"vm.swappiness\"");
        let mut s = spec();
        s.sysctls.insert(
            "net.ipv4.ip_local_port_range".into(),
            SysctlValue::Text("32768\t60999".into()),
        );
        let c = HostConfig::new(s).expect("valid");
        assert!(c.sysctls.values().any(|v| v == "32768 60999"));
    }

    #[test]
    fn daemon_json_refuses_listeners_and_lab_flags_naming_the_key() {
        for (key, value) in [
            ("hosts", json!(["unix:///var/run/docker.sock"])),
            ("data-root", json!("/srv/docker")),
            ("exec-root", json!("/run/x")),
            ("pidfile", json!("/run/docker.pid")),
            ("metrics-addr", json!("0.0.0.0:9323")),
        ] {
            let mut s = spec();
            s.daemon_json.insert(key.into(), value);
            let e = refused(s);
            assert_eq!(e.key(), format!("daemon_json.{key}"));
            assert!(e.to_string().contains("forbidden"), "{e}");
        }
        let mut s = spec();
        s.daemon_json.insert(
            "registry-mirrors".into(),
            json!(["https://m.example", "TCP://0.0.0.0:2375"]),
        );
        assert_eq!(refused(s).key(), "daemon_json.registry-mirrors[1]");
    }

    #[test]
    fn daemon_json_types_and_typos() {
        let mut s = spec();
        s.daemon_json.insert("mtu".into(), json!(9));
        assert_eq!(refused(s).key(), "daemon_json.mtu");
        let mut s = spec();
        s.daemon_json
            .insert("log-opts".into(), json!({"max-file": 3}));
        let e = refused(s);
        assert_eq!(e.key(), "daemon_json.log-opts.max-file");
        assert!(e.to_string().contains("write \"3\""), "{e}");
        let mut s = spec();
        s.daemon_json.insert("log-drvier".into(), json!("local"));
        assert!(refused(s).to_string().contains("did you mean log-driver"));
        let mut s = spec();
        s.daemon_json.insert("mtu".into(), json!(1450));
        s.daemon_json
            .insert("some-future-option".into(), json!(true));
        HostConfig::new(s).expect("valid");
    }

    #[test]
    fn firewall_ports_interfaces_and_networks() {
        let mut s = spec();
        s.firewall.allow_public_tcp = vec![8080, 0];
        assert_eq!(refused(s).key(), "firewall.allow_public_tcp[1]");
        let mut s = spec();
        s.firewall.ssh_port = 0;
        assert_eq!(refused(s).key(), "firewall.ssh_port");
        let mut s = spec();
        s.firewall.public_interface = Some("eth1\" accept".into());
        assert_eq!(refused(s).key(), "firewall.public_interface");
        let mut s = spec();
        s.firewall.public_interface = Some("eth0".into());
        s.firewall.private_interface = Some("eth0".into());
        assert_eq!(refused(s).key(), "firewall.private_interface");
        for (bad, hint) in [
            ("10.231.0.5/24", "did you mean 10.231.0.0/24"),
            ("10.231.0.0", "ADDRESS/LENGTH"),
            ("10.231.0.0/33", "0 to 32"),
            ("0.0.0.0/0", "every address"),
            ("banana/8", "not an IP"),
        ] {
            let mut s = spec();
            s.firewall.private_cidr = bad.into();
            let e = refused(s);
            assert_eq!(e.key(), "firewall.private_cidr");
            assert!(e.to_string().contains(hint), "{e}");
        }
        let v6 = Cidr::parse("fd00:1::/64").expect("v6");
        assert!(v6.contains("fd00:1::5".parse().expect("ip")));
        assert!(!v6.contains("10.0.0.1".parse().expect("ip")));
        let v4 = Cidr::parse("10.231.0.0/24").expect("v4");
        assert!(v4.contains("10.231.0.77".parse().expect("ip")));
        assert!(!v4.contains("10.231.1.1".parse().expect("ip")));
    }

    #[test]
    fn grub_mode_accepts_bools_and_words() {
        for (text, want) in [
            ("true", GrubMode::Auto),
            ("false", GrubMode::Off),
            ("\"auto\"", GrubMode::Auto),
            ("\"off\"", GrubMode::Off),
        ] {
            let g: GrubMode = serde_json::from_str(text).expect("grub");
            assert_eq!(g, want);
        }
        assert!(serde_json::from_str::<GrubMode>("\"on\"").is_err());
    }
}
