//! The provider's configuration: the raw serde spec from the cluster file and
//! the validated [`DigitalOceanConfig`] the rest of the crate accepts.
//!
//! Precedence for every setting that has an environment variable: the value
//! in the cluster file, else the variable (the names docker-machine's
//! DigitalOcean driver used), else the built-in default. The API token is the
//! exception: it is read only from `DIGITALOCEAN_ACCESS_TOKEN`, so it never
//! lands in a file, in the coordinator's state, or in a log.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

/// The only place the API token is read from.
pub const TOKEN_VAR: &str = "DIGITALOCEAN_ACCESS_TOKEN";
/// Default region when the cluster file names none.
pub const REGION_VAR: &str = "DIGITALOCEAN_REGION";
/// Default droplet size when the cluster file names none.
pub const SIZE_VAR: &str = "DIGITALOCEAN_SIZE";
/// Default image when the cluster file names none.
pub const IMAGE_VAR: &str = "DIGITALOCEAN_IMAGE";
/// Default API base URL when the cluster file names none.
pub const API_URL_VAR: &str = "DIGITALOCEAN_API_URL";

pub const DEFAULT_REGION: &str = "nyc3";
pub const DEFAULT_SIZE: &str = "s-2vcpu-4gb";
pub const DEFAULT_IMAGE: &str = "debian-12-x64";
pub const DEFAULT_API_URL: &str = "https://api.digitalocean.com";

/// Errors in the provider's configuration. Each names the setting and says
/// what would be accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "the DigitalOcean API token is missing: set {var} to a personal access token \
         (scopes: droplet, tag, vpc, firewall, ssh_key read); it is read only from the \
         environment, never from the cluster file"
    )]
    MissingToken { var: &'static str },

    #[error("{var} is set but unusable: {reason}")]
    InvalidToken {
        var: &'static str,
        reason: &'static str,
    },

    #[error("digitalocean.{field} = {value:?} is invalid: {reason}")]
    InvalidField {
        field: &'static str,
        value: String,
        reason: String,
    },
}

fn invalid(
    field: &'static str,
    value: impl Into<String>,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::InvalidField {
        field,
        value: value.into(),
        reason: reason.into(),
    }
}

/// The `digitalocean` section of a cluster file, as written.
///
/// Unknown keys are refused (a typo must not silently fall back to a
/// default). Turn it into a [`DigitalOceanConfig`] with
/// [`DigitalOceanSpec::validate_from_env`] before use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigitalOceanSpec {
    /// Region slug. Default: `$DIGITALOCEAN_REGION`, else `nyc3`.
    #[serde(default)]
    pub region: Option<String>,
    /// Droplet size slug. Default: `$DIGITALOCEAN_SIZE`, else `s-2vcpu-4gb`.
    #[serde(default)]
    pub size: Option<String>,
    /// Image slug or numeric image id. Default: `$DIGITALOCEAN_IMAGE`, else
    /// `debian-12-x64`.
    #[serde(default)]
    pub image: Option<String>,
    /// Name of the VPC the droplets join; created if absent. Default: derived
    /// from the cluster tag (`<tag>-vpc`, with characters VPC names refuse
    /// replaced by `-`).
    #[serde(default)]
    pub vpc: Option<String>,
    /// RFC 1918 range for a VPC this provider creates (`/16` to `/28`).
    /// Default: the API picks a free `/20`. Ignored when the VPC exists.
    #[serde(default)]
    pub vpc_ip_range: Option<String>,
    /// Extra tags on every droplet, besides the cluster tag.
    #[serde(default)]
    pub tags: Vec<String>,
    /// SSH keys (numeric ids or fingerprints) for break-glass access only; the
    /// cluster itself never uses SSH.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Create a Cloud Firewall that mirrors the host policy: SSH (22/tcp)
    /// only from `admin_cidrs`, `public_tcp_ports` open to the world, the
    /// cluster ports (2377/tcp, 7946/tcp+udp, 4789/udp) and ICMP only from
    /// the VPC range. Default: false (the agent's nftables policy still
    /// applies on the hosts). Cloud Firewall rules can name only tcp, udp
    /// and icmp, so ESP (the encrypted overlay's data path) cannot pass
    /// one: the coordinator refuses this with `swarm.encrypted = true`.
    #[serde(default)]
    pub firewall: bool,
    /// The operator's networks (CIDRs, IPv4 or IPv6, e.g.
    /// `"203.0.113.7/32"`) the Cloud Firewall opens SSH (22/tcp) to, for
    /// break-glass access. Default: none, so SSH is closed. Never the whole
    /// internet: a `/0` is refused.
    #[serde(default)]
    pub admin_cidrs: Vec<String>,
    /// TCP ports the Cloud Firewall opens to everyone. Default: none. Add
    /// the coordinator's port when the coordinator runs on a droplet. Not
    /// 22: SSH is opened only to `admin_cidrs`.
    #[serde(default)]
    pub public_tcp_ports: Vec<u16>,
    /// API base URL. Default: `$DIGITALOCEAN_API_URL`, else
    /// `https://api.digitalocean.com`. Plain `http` is accepted only for a
    /// loopback host (a test fake), so the token never crosses a network in
    /// clear text.
    #[serde(default)]
    pub api_url: Option<String>,
    /// HTTPS URL to install the agent binary from (verified against the
    /// system's trust store). Default: none, the agent is fetched from the
    /// coordinator, verified against the cluster CA pinned in user_data.
    #[serde(default)]
    pub agent_url: Option<String>,
    /// SHA-256 (hex) of the binary at `agent_url`, checked on the host.
    #[serde(default)]
    pub agent_sha256: Option<String>,
    /// Timeout of one API request. Default: 30s.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a new droplet may stay `new` before reconcile reports it as
    /// stuck. Default: 10m.
    #[serde(default = "default_boot_timeout", with = "humantime_serde")]
    pub boot_timeout: Duration,
    /// Interval between listings while waiting for droplets to become
    /// `active`. Default: 5s.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long an `active` droplet may go without its agent enrolling
    /// before the coordinator deletes it and makes it again (with a new
    /// host token). Default: 10m.
    #[serde(default = "default_enroll_timeout", with = "humantime_serde")]
    pub enroll_timeout: Duration,
}

/// SSH's port: opened by the firewall only to `admin_cidrs`.
pub const SSH_PORT: u16 = 22;

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_boot_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_enroll_timeout() -> Duration {
    Duration::from_secs(600)
}

impl DigitalOceanSpec {
    /// A spec with every default, as an empty `[digitalocean]` section gives.
    pub fn new() -> Self {
        DigitalOceanSpec {
            request_timeout: default_request_timeout(),
            boot_timeout: default_boot_timeout(),
            poll_interval: default_poll_interval(),
            enroll_timeout: default_enroll_timeout(),
            ..Default::default()
        }
    }

    /// Validates against the process environment.
    pub fn validate_from_env(&self) -> Result<DigitalOceanConfig, ConfigError> {
        self.validate(|name| std::env::var(name).ok())
    }

    /// Validates with `env` standing in for the environment (tests pass a
    /// map instead of mutating the process environment).
    ///
    /// The token is checked first, so a missing token is the error a user
    /// sees whatever else is wrong.
    pub fn validate(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<DigitalOceanConfig, ConfigError> {
        let token = Token::from_var(env(TOKEN_VAR))?;
        let pick = |value: &Option<String>, var: &str, default: &str| -> String {
            value
                .clone()
                .or_else(|| env(var).filter(|v| !v.trim().is_empty()))
                .unwrap_or_else(|| default.to_owned())
        };

        let region = pick(&self.region, REGION_VAR, DEFAULT_REGION);
        check_slug("region", &region)?;
        let size = pick(&self.size, SIZE_VAR, DEFAULT_SIZE);
        check_slug("size", &size)?;
        let image = ImageRef::parse(&pick(&self.image, IMAGE_VAR, DEFAULT_IMAGE))?;
        let api_url = parse_api_url(&pick(&self.api_url, API_URL_VAR, DEFAULT_API_URL))?;

        let extra_tags = self
            .tags
            .iter()
            .map(|t| TagName::parse(t).map_err(|reason| invalid("tags", t, reason)))
            .collect::<Result<Vec<_>, _>>()?;
        let ssh_keys = self
            .ssh_keys
            .iter()
            .map(|k| SshKeyRef::parse(k))
            .collect::<Result<Vec<_>, _>>()?;

        if let Some(name) = &self.vpc {
            check_vpc_name(name).map_err(|reason| invalid("vpc", name, reason))?;
        }
        let vpc_ip_range = match &self.vpc_ip_range {
            Some(range) => Some(
                Ipv4Cidr::parse(range)
                    .and_then(Ipv4Cidr::check_vpc_range)
                    .map_err(|reason| invalid("vpc_ip_range", range, reason))?,
            ),
            None => None,
        };

        let admin_cidrs = self
            .admin_cidrs
            .iter()
            .map(|c| check_admin_cidr(c).map_err(|reason| invalid("admin_cidrs", c, reason)))
            .collect::<Result<Vec<_>, _>>()?;
        let firewall = if self.firewall {
            if self.public_tcp_ports.contains(&0) {
                return Err(invalid(
                    "public_tcp_ports",
                    format!("{:?}", self.public_tcp_ports),
                    "port 0 would open every port; list the ports instead",
                ));
            }
            if self.public_tcp_ports.contains(&SSH_PORT) {
                return Err(invalid(
                    "public_tcp_ports",
                    format!("{:?}", self.public_tcp_ports),
                    "port 22 (SSH) is never open to the world; remove it, and list the networks \
                     you administer from in digitalocean.admin_cidrs (e.g. [\"203.0.113.7/32\"])",
                ));
            }
            let mut ports = self.public_tcp_ports.clone();
            ports.sort_unstable();
            ports.dedup();
            let mut admin = admin_cidrs;
            admin.dedup();
            Some(FirewallSettings {
                public_tcp_ports: ports,
                admin_cidrs: admin,
                ..FirewallSettings::default()
            })
        } else {
            if let Some(first) = self.admin_cidrs.first() {
                return Err(invalid(
                    "admin_cidrs",
                    first,
                    "admin_cidrs opens SSH in the Cloud Firewall, and there is none: set \
                     digitalocean.firewall = true, or remove admin_cidrs",
                ));
            }
            None
        };

        let agent = match &self.agent_url {
            Some(raw) => {
                let url = Url::parse(raw).map_err(|e| invalid("agent_url", raw, e.to_string()))?;
                if url.scheme() != "https" {
                    return Err(invalid(
                        "agent_url",
                        raw,
                        "the agent binary must come over https",
                    ));
                }
                let sha256 = match &self.agent_sha256 {
                    Some(h) => Some(check_sha256(h).map_err(|r| invalid("agent_sha256", h, r))?),
                    None => None,
                };
                Some(AgentDownload { url, sha256 })
            }
            None => {
                if let Some(h) = &self.agent_sha256 {
                    return Err(invalid(
                        "agent_sha256",
                        h,
                        "set only together with agent_url",
                    ));
                }
                None
            }
        };

        for (field, value) in [
            ("request_timeout", self.request_timeout),
            ("boot_timeout", self.boot_timeout),
            ("poll_interval", self.poll_interval),
            ("enroll_timeout", self.enroll_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(
                    field,
                    humantime_serde::re::humantime::format_duration(value).to_string(),
                    "must be longer than zero",
                ));
            }
        }

        Ok(DigitalOceanConfig {
            token,
            api_url,
            droplet: DropletSettings {
                region,
                size,
                image,
                ssh_keys,
                extra_tags,
            },
            vpc: VpcSettings {
                name: self.vpc.clone(),
                ip_range: vpc_ip_range,
            },
            firewall,
            agent,
            timeouts: Timeouts {
                request: self.request_timeout,
                boot: self.boot_timeout,
                poll_interval: self.poll_interval,
                enroll: self.enroll_timeout,
            },
        })
    }
}

/// The validated configuration. Only [`DigitalOceanSpec::validate`] builds
/// one, so holding it means the token is present and every field is usable.
#[derive(Clone, Debug)]
pub struct DigitalOceanConfig {
    pub(crate) token: Token,
    pub api_url: Url,
    pub droplet: DropletSettings,
    pub vpc: VpcSettings,
    pub firewall: Option<FirewallSettings>,
    pub agent: Option<AgentDownload>,
    pub timeouts: Timeouts,
}

/// What every droplet of the cluster is created with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropletSettings {
    pub region: String,
    pub size: String,
    pub image: ImageRef,
    pub ssh_keys: Vec<SshKeyRef>,
    pub extra_tags: Vec<TagName>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpcSettings {
    /// `None`: derived from the cluster tag.
    pub name: Option<String>,
    pub ip_range: Option<Ipv4Cidr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FirewallSettings {
    /// Open to the world; never 22.
    pub public_tcp_ports: Vec<u16>,
    /// The only sources of SSH (22/tcp), as the API takes them (network
    /// form, e.g. `203.0.113.7/32`); empty: SSH closed.
    pub admin_cidrs: Vec<String>,
    /// More TCP ports open to `admin_cidrs` only (the coordinator droplet's
    /// gRPC, for `ctl` on the operator's laptop).
    pub admin_tcp_ports: Vec<u16>,
    /// TCP ports open to the VPC (the coordinator droplet's gRPC and
    /// artifact listener, for the hosts).
    pub vpc_tcp_ports: Vec<u16>,
}

/// Where hosts install the agent from when the coordinator does not serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentDownload {
    pub url: Url,
    pub sha256: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Duration,
    pub boot: Duration,
    pub poll_interval: Duration,
    /// From `active` to the agent enrolled; past it the droplet is replaced.
    pub enroll: Duration,
}

/// The API token. It has no `Display` and a redacted `Debug`, so it cannot
/// end up in a log line or an error message by accident.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    fn from_var(value: Option<String>) -> Result<Token, ConfigError> {
        let value = value.ok_or(ConfigError::MissingToken { var: TOKEN_VAR })?;
        let value = value.trim();
        if value.is_empty() {
            return Err(ConfigError::MissingToken { var: TOKEN_VAR });
        }
        // It goes into an HTTP header: anything outside visible ASCII would be
        // refused there anyway, with an error that could echo the value.
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::InvalidToken {
                var: TOKEN_VAR,
                reason: "it contains spaces or non-ASCII characters",
            });
        }
        Ok(Token(Arc::from(value)))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// An image slug (`debian-12-x64`) or numeric id (a snapshot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    Slug(String),
    Id(u64),
}

impl ImageRef {
    fn parse(raw: &str) -> Result<ImageRef, ConfigError> {
        if let Ok(id) = raw.parse::<u64>() {
            return Ok(ImageRef::Id(id));
        }
        check_slug("image", raw)?;
        Ok(ImageRef::Slug(raw.to_owned()))
    }
}

/// An SSH key as the API accepts it: numeric id or fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SshKeyRef {
    Id(u64),
    Fingerprint(String),
}

impl SshKeyRef {
    fn parse(raw: &str) -> Result<SshKeyRef, ConfigError> {
        if let Ok(id) = raw.parse::<u64>() {
            return Ok(SshKeyRef::Id(id));
        }
        let is_md5_fingerprint = raw.split(':').count() == 16
            && raw
                .split(':')
                .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
        if is_md5_fingerprint {
            Ok(SshKeyRef::Fingerprint(raw.to_ascii_lowercase()))
        } else {
            Err(invalid(
                "ssh_keys",
                raw,
                "expected a numeric key id or an MD5 fingerprint like 3b:16:bf:...:fa \
                 (see `doctl compute ssh-key list`)",
            ))
        }
    }
}

/// A tag name as the API accepts it (`^[a-zA-Z0-9_\-:]+$`, at most 255).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagName(String);

impl TagName {
    pub fn parse(raw: &str) -> Result<TagName, String> {
        if raw.is_empty() || raw.len() > 255 {
            return Err("a tag has 1 to 255 characters".into());
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b':')
        {
            return Err("a tag may contain only letters, digits, '_', '-' and ':'".into());
        }
        Ok(TagName(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Tags are "case stable" upstream: the first spelling is canonical.
    pub fn eq_ignore_case(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }

    /// A name derived from the tag for resources whose names refuse `_` and
    /// `:` (VPCs, firewalls): those become `-`.
    pub(crate) fn resource_name(&self, suffix: &str) -> String {
        let base: String = self
            .0
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let base = base.trim_start_matches('-');
        let base = if base.is_empty() { "apiary" } else { base };
        format!("{base}-{suffix}")
    }
}

impl fmt::Display for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A droplet name. It becomes the host's hostname and the agent's node
/// name, so it follows apiary's one node-name rule (`apiary_api::names`: a
/// lowercase hostname label), which the API's own pattern also accepts.
pub type HostName = apiary_api::names::NodeName;

/// An IPv4 network in CIDR notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn parse(raw: &str) -> Result<Ipv4Cidr, String> {
        let (addr, prefix) = raw
            .split_once('/')
            .ok_or_else(|| "expected an address/prefix like 10.20.0.0/20".to_owned())?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{prefix:?} is not a prefix length 0..=32"))?;
        let cidr = Ipv4Cidr { addr, prefix };
        if cidr.network() != addr {
            return Err(format!(
                "host bits are set; the network is {}/{prefix}",
                cidr.network()
            ));
        }
        Ok(cidr)
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// The API refuses VPC ranges outside RFC 1918 or outside /16..=/28.
    fn check_vpc_range(self) -> Result<Ipv4Cidr, String> {
        if !(16..=28).contains(&self.prefix) {
            return Err("a VPC range is between /16 and /28".into());
        }
        let rfc1918 = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];
        let inside = rfc1918.iter().any(|r| {
            Ipv4Cidr::parse(r)
                .map(|net| net.contains(self.addr) && net.prefix <= self.prefix)
                .unwrap_or(false)
        });
        if !inside {
            return Err("a VPC range must be inside 10/8, 172.16/12 or 192.168/16".into());
        }
        Ok(self)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn check_slug(field: &'static str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            value,
            "expected a slug of lowercase letters, digits and '-' (see `doctl compute region list`, \
             `size list`, `image list-distribution`)",
        ))
    }
}

fn check_vpc_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("a VPC name has 1 to 255 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err("a VPC name may contain only letters, digits, '-' and '.'".into());
    }
    Ok(())
}

/// One `admin_cidrs` entry: an IPv4 or IPv6 network in CIDR form, host
/// bits clear, never a `/0` (the whole internet).
fn check_admin_cidr(raw: &str) -> Result<String, String> {
    let (addr, prefix) = raw
        .split_once('/')
        .ok_or_else(|| "expected a network like 203.0.113.7/32 or 2001:db8::/48".to_owned())?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv4 or IPv6 address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("{prefix:?} is not a prefix length 0..={max}"))?;
    if prefix == 0 {
        return Err(
            "a /0 opens SSH to the whole internet; list the networks you administer from".into(),
        );
    }
    let host_bits_clear = match addr {
        IpAddr::V4(a) => u32::from(a) & !(u32::MAX << (32 - u32::from(prefix))) == 0,
        IpAddr::V6(a) => {
            prefix == 128 || u128::from(a) & !(u128::MAX << (128 - u32::from(prefix))) == 0
        }
    };
    if !host_bits_clear {
        return Err(format!(
            "host bits are set after /{prefix}; write the network address"
        ));
    }
    Ok(format!("{addr}/{prefix}"))
}

fn check_sha256(hex: &str) -> Result<String, String> {
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err("expected 64 hexadecimal digits (`sha256sum apiary-agent`)".into())
    }
}

fn parse_api_url(raw: &str) -> Result<Url, ConfigError> {
    let mut url = Url::parse(raw).map_err(|e| invalid("api_url", raw, e.to_string()))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(invalid(
                "api_url",
                raw,
                "plain http is accepted only on loopback; the token must not cross a network in clear text",
            ));
        }
        _ => return Err(invalid("api_url", raw, "expected an https URL")),
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(invalid(
            "api_url",
            raw,
            "expected a base URL without credentials, query or fragment",
        ));
    }
    // `Url::join` replaces the last segment unless the path ends with '/'.
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn missing_token_is_refused_first_and_named() {
        let mut spec = DigitalOceanSpec::new();
        spec.region = Some("NOT A SLUG".into());
        let err = spec.validate(env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::MissingToken { .. }));
        assert!(err.to_string().contains(TOKEN_VAR));
        let err = spec.validate(env(&[(TOKEN_VAR, "  ")])).unwrap_err();
        assert!(matches!(err, ConfigError::MissingToken { .. }));
    }

    #[test]
    fn defaults_follow_file_then_env_then_builtin() {
        let spec = DigitalOceanSpec::new();
        let cfg = spec.validate(env(&[(TOKEN_VAR, "dop_v1_x")])).unwrap();
        assert_eq!(cfg.droplet.region, "nyc3");
        assert_eq!(cfg.droplet.size, "s-2vcpu-4gb");
        assert_eq!(cfg.droplet.image, ImageRef::Slug("debian-12-x64".into()));
        assert_eq!(cfg.api_url.as_str(), "https://api.digitalocean.com/");

        let cfg = spec
            .validate(env(&[
                (TOKEN_VAR, "dop_v1_x"),
                (REGION_VAR, "fra1"),
                (IMAGE_VAR, "12345"),
                (API_URL_VAR, "http://127.0.0.1:8080"),
            ]))
            .unwrap();
        assert_eq!(cfg.droplet.region, "fra1");
        assert_eq!(cfg.droplet.image, ImageRef::Id(12345));
        assert_eq!(cfg.api_url.as_str(), "http://127.0.0.1:8080/");

        let mut spec = DigitalOceanSpec::new();
        spec.region = Some("ams3".into());
        let cfg = spec
            .validate(env(&[(TOKEN_VAR, "dop_v1_x"), (REGION_VAR, "fra1")]))
            .unwrap();
        assert_eq!(cfg.droplet.region, "ams3");
    }

    #[test]
    fn token_never_shows_in_debug() {
        let cfg = DigitalOceanSpec::new()
            .validate(env(&[(TOKEN_VAR, "dop_v1_supersecret")]))
            .unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("supersecret"), "{dbg}");
        assert!(dbg.contains("Token(***)"));
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let mut spec = DigitalOceanSpec::new();
        spec.api_url = Some("http://api.example.com".into());
        let err = spec.validate(env(&[(TOKEN_VAR, "t")])).unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        spec.api_url = Some("http://[::1]:9/prefix".into());
        let cfg = spec.validate(env(&[(TOKEN_VAR, "t")])).unwrap();
        assert_eq!(
            cfg.api_url.join("v2/droplets").unwrap().path(),
            "/prefix/v2/droplets"
        );
    }

    #[test]
    fn toml_refuses_unknown_fields_and_reads_durations() {
        let spec: DigitalOceanSpec =
            toml::from_str("region = \"sfo3\"\nboot_timeout = \"2m\"\nfirewall = true\n").unwrap();
        assert_eq!(spec.boot_timeout, Duration::from_secs(120));
        assert!(spec.public_tcp_ports.is_empty() && spec.admin_cidrs.is_empty());
        let err = toml::from_str::<DigitalOceanSpec>("regoin = \"sfo3\"\n").unwrap_err();
        assert!(err.to_string().contains("regoin"), "{err}");
    }

    #[test]
    fn field_errors_name_the_field() {
        let mut spec = DigitalOceanSpec::new();
        spec.vpc_ip_range = Some("8.8.8.0/24".into());
        let err = spec.validate(env(&[(TOKEN_VAR, "t")])).unwrap_err();
        assert!(
            err.to_string().starts_with("digitalocean.vpc_ip_range"),
            "{err}"
        );
        let mut spec = DigitalOceanSpec::new();
        spec.ssh_keys = vec!["my laptop".into()];
        let err = spec.validate(env(&[(TOKEN_VAR, "t")])).unwrap_err();
        assert!(err.to_string().contains("ssh_keys"), "{err}");
        let mut spec = DigitalOceanSpec::new();
        spec.agent_url = Some("http://example.com/agent".into());
        assert!(spec.validate(env(&[(TOKEN_VAR, "t")])).is_err());
    }

    #[test]
    fn admin_cidrs_are_checked_and_name_the_key_and_the_entry() {
        let with = |cidrs: &[&str], firewall: bool| {
            let mut spec = DigitalOceanSpec::new();
            spec.firewall = firewall;
            spec.admin_cidrs = cidrs.iter().map(|c| (*c).to_owned()).collect();
            spec.validate(env(&[(TOKEN_VAR, "t")]))
        };
        let cfg = with(&["203.0.113.7/32", "2001:db8::/48"], true).unwrap();
        assert_eq!(
            cfg.firewall.unwrap().admin_cidrs,
            ["203.0.113.7/32", "2001:db8::/48"]
        );
        assert!(
            with(&[], true)
                .unwrap()
                .firewall
                .unwrap()
                .admin_cidrs
                .is_empty()
        );
        for bad in [
            "0.0.0.0/0",
            "::/0",
            "203.0.113.7",
            "203.0.113.7/33",
            "203.0.113.7/24",
            "my-laptop/32",
            "2001:db8::1/48",
        ] {
            let err = with(&["198.51.100.0/24", bad], true).unwrap_err();
            let ConfigError::InvalidField { field, value, .. } = &err else {
                panic!("{bad}: {err}")
            };
            assert_eq!((*field, value.as_str()), ("admin_cidrs", bad));
            let text = err.to_string();
            assert!(
                text.starts_with("digitalocean.admin_cidrs") && text.contains(bad),
                "{text}"
            );
        }
        // Without a Cloud Firewall nothing would apply them: refused.
        let err = with(&["203.0.113.7/32"], false).unwrap_err();
        assert!(
            matches!(
                &err,
                ConfigError::InvalidField {
                    field: "admin_cidrs",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("firewall = true"), "{err}");
    }

    #[test]
    fn ssh_is_never_a_public_port() {
        let mut spec = DigitalOceanSpec::new();
        spec.firewall = true;
        spec.public_tcp_ports = vec![443, 22];
        let err = spec.validate(env(&[(TOKEN_VAR, "t")])).unwrap_err();
        assert!(
            matches!(
                &err,
                ConfigError::InvalidField {
                    field: "public_tcp_ports",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("admin_cidrs"), "{err}");
        spec.public_tcp_ports = vec![7443, 443, 7443];
        let fw = spec
            .validate(env(&[(TOKEN_VAR, "t")]))
            .unwrap()
            .firewall
            .unwrap();
        assert_eq!(fw.public_tcp_ports, [443, 7443]);
    }

    #[test]
    fn names() {
        assert!(HostName::parse("node-1").is_ok());
        assert!(HostName::parse("node_1").is_err());
        assert!(HostName::parse("-node").is_err());
        assert!(TagName::parse("apiary:prod_1").is_ok());
        assert!(TagName::parse("a b").is_err());
        let tag = TagName::parse("apiary:prod_1").unwrap();
        assert_eq!(tag.resource_name("vpc"), "apiary-prod-1-vpc");
        assert!(
            Ipv4Cidr::parse("10.20.0.0/20")
                .unwrap()
                .contains("10.20.15.1".parse().unwrap())
        );
        assert!(Ipv4Cidr::parse("10.20.0.1/20").is_err());
    }
}
