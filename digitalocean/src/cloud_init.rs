//! The droplet's bootstrap: cloud-init user_data that installs Docker and
//! nftables from the distribution, writes the agent's config with the join
//! token, turns SSH password logins off, and starts one systemd unit,
//! [`INSTALL_UNIT_NAME`], which downloads the agent binary over verified
//! HTTPS, checks its digest, and only then enables and starts the agent.
//! Nothing else: everything after enrollment arrives over the agent's mTLS
//! session.
//!
//! # A bootstrap that recovers
//!
//! The coordinator may come up after the droplet, or its listener may blink:
//! the install unit is a `Type=oneshot` with `Restart=on-failure` and
//! `StartLimitIntervalSec=0`, so systemd retries it every
//! [`INSTALL_RETRY_SEC`] seconds for as long as it takes, never giving up on
//! its start rate limit. The agent unit is enabled by the install unit's
//! `ExecStartPost`, which systemd runs only once `ExecStart` (download,
//! digest, move into place) succeeded: the agent unit is never enabled
//! without its binary, and runcmd does nothing but enable and start the
//! install unit (enabled, so a reboot before the download got through
//! tries again; `ConditionPathExists` skips it once the binary is in).
//!
//! The document is built as data and serialised (YAML, TOML), never by
//! pasting strings into a template, so no value can break out of its field.

use serde::Serialize;
use url::Url;

use crate::config::{DigitalOceanConfig, HostName, Ipv4Cidr};
use crate::model::MAX_USER_DATA_BYTES;

/// Where the files go on the host.
pub const CA_PATH: &str = "/etc/apiary/ca.pem";
pub const AGENT_CONFIG_PATH: &str = "/etc/apiary/agent.toml";
pub const AGENT_BINARY_PATH: &str = "/usr/local/bin/apiary-agent";
pub const UNIT_NAME: &str = "apiary-agent.service";
pub const UNIT_PATH: &str = "/etc/systemd/system/apiary-agent.service";
pub const INSTALLER_PATH: &str = "/usr/local/lib/apiary/install-agent";
/// The oneshot unit that runs the installer until it succeeds, then enables
/// and starts [`UNIT_NAME`].
pub const INSTALL_UNIT_NAME: &str = "apiary-agent-install.service";
pub const INSTALL_UNIT_PATH: &str = "/etc/systemd/system/apiary-agent-install.service";
/// Seconds between two tries of the install unit.
pub const INSTALL_RETRY_SEC: u32 = 15;
/// sshd settings: no password or keyboard-interactive logins, root by key
/// only (break-glass SSH uses the account's keys, never a password).
pub const SSHD_DROP_IN_PATH: &str = "/etc/ssh/sshd_config.d/50-apiary.conf";
pub const SSHD_DROP_IN: &str = "\
# Written by cloud-init for apiary: SSH by key only (break-glass access).
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
";
/// The packages every host needs: Docker from the distribution, nftables
/// for the host firewall the agent manages, curl and the CA bundle for the
/// one download.
pub const PACKAGES: &[&str] = &["docker.io", "nftables", "curl", "ca-certificates"];
pub const DEFAULT_STATE_DIR: &str = "/var/lib/apiary";

/// A minimal unit, used when the caller passes none (the coordinator should
/// pass `deploy/systemd/apiary-agent.service`).
pub const DEFAULT_UNIT: &str = "\
[Unit]
Description=apiary agent
Wants=network-online.target docker.service
After=network-online.target docker.service

[Service]
ExecStart=/usr/local/bin/apiary-agent --config /etc/apiary/agent.toml
Restart=always
RestartSec=5
# The upgrade guard (`ctl hosts upgrade`) must outlive a new agent that dies.
KillMode=process

[Install]
WantedBy=multi-user.target
";

/// Installs the agent binary: downloads to a temporary file, checks the
/// digest when one is given, then moves it into place, so a half-written
/// binary is never started. `cluster-ca` trust means curl trusts only the
/// cluster CA written by cloud-init (`--cacert` replaces the system bundle).
/// `APIARY_INSTALL_ROOT` (unset on hosts) prefixes every path, so tests run
/// the very script a droplet runs without touching this machine's files.
pub const INSTALLER: &str = r#"#!/bin/sh
# apiary: install the agent binary. Usage: install-agent URL TRUST [SHA256]
# TRUST is "cluster-ca" (only /etc/apiary/ca.pem is trusted) or "system".
set -eu
url="$1"
trust="$2"
sum="${3:-}"
root="${APIARY_INSTALL_ROOT:-}"
tmp="$(mktemp "$root/usr/local/bin/.apiary-agent.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
if [ "$trust" = cluster-ca ]; then
  set -- --cacert "$root/etc/apiary/ca.pem"
else
  set --
fi
# A few quick retries for a blip; systemd runs this again (Restart=on-failure)
# until it succeeds, however late the coordinator comes up.
curl --proto '=https' --tlsv1.2 --fail --silent --show-error --location \
  --retry 2 --retry-delay 2 --retry-all-errors --connect-timeout 10 --max-time 300 \
  "$@" --output "$tmp" "$url"
if [ -n "$sum" ]; then
  echo "$sum  $tmp" | sha256sum --check --status
fi
chmod 0755 "$tmp"
mv -f "$tmp" "$root/usr/local/bin/apiary-agent"
trap - EXIT
"#;

/// Errors in what would go into user_data; each names the input.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("bootstrap.{field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },

    #[error(
        "bootstrap.ca_cert_pem contains a private key; pass only the CA certificate: user_data is \
         readable by every process on the droplet through the metadata service"
    )]
    PrivateKeyInCa,

    #[error(
        "the rendered user_data is {bytes} bytes, over the API's limit of {MAX_USER_DATA_BYTES}; \
         shorten the systemd unit or the CA chain"
    )]
    TooLarge { bytes: usize },

    #[error("could not serialise the {what}: {reason}")]
    Serialise { what: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RenderError {
    RenderError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Where the host gets the agent binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentSource {
    /// Served by the coordinator over HTTPS; the server must present a
    /// certificate from the cluster CA (the one in user_data), and the bytes
    /// must have this SHA-256 (hex), which the coordinator computed when it
    /// started: TLS proves who served the file, the digest proves which.
    Coordinator { url: Url, sha256: String },
    /// An HTTPS URL from the config, verified against the system's trust
    /// store, and against `sha256` when given.
    Url { url: Url, sha256: Option<String> },
}

impl AgentSource {
    /// The config's `agent_url` if set, else the coordinator's URL and the
    /// digest of the binary it serves.
    pub fn for_config(
        config: &DigitalOceanConfig,
        coordinator_url: Url,
        coordinator_sha256: String,
    ) -> AgentSource {
        match &config.agent {
            Some(a) => AgentSource::Url {
                url: a.url.clone(),
                sha256: a.sha256.clone(),
            },
            None => AgentSource::Coordinator {
                url: coordinator_url,
                sha256: coordinator_sha256,
            },
        }
    }

    /// The command that installs the agent (argv, no shell; the install
    /// unit's `ExecStart`): the installer at [`INSTALLER_PATH`] with the
    /// URL, the trust and the digest.
    pub fn install_command(&self) -> Vec<String> {
        let (url, trust, sum) = self.parts();
        let mut cmd = vec![INSTALLER_PATH.to_owned(), url.to_string(), trust.to_owned()];
        if let Some(sum) = sum {
            cmd.push(sum.to_ascii_lowercase());
        }
        cmd
    }

    fn parts(&self) -> (&Url, &'static str, Option<&str>) {
        match self {
            AgentSource::Coordinator { url, sha256 } => (url, "cluster-ca", Some(sha256)),
            AgentSource::Url { url, sha256 } => (url, "system", sha256.as_deref()),
        }
    }
}

/// Everything the host needs to join.
#[derive(Clone)]
pub struct Bootstrap {
    /// `host:port` the agent dials (the coordinator's private address).
    pub coordinator_addr: String,
    /// The join token: the only secret in user_data.
    pub join_token: String,
    /// The cluster CA certificate (PEM), pinned for the agent download.
    pub ca_cert_pem: String,
    pub agent_source: AgentSource,
    /// `None`: the agent takes the hostname, which the droplet's name sets.
    /// Leave it `None` to let hosts share one user_data (and one create
    /// request for up to ten of them).
    pub node_name: Option<HostName>,
    pub state_dir: String,
    /// The systemd unit's text; `None` for [`DEFAULT_UNIT`].
    pub systemd_unit: Option<String>,
    /// The VPC's range, written as the agent's `private_cidr`: the agent's
    /// private address (what Swarm advertises) is the one inside it. `None`
    /// leaves the agent's default, the first RFC 1918 address, which on a
    /// droplet may be eth0's 10.x anchor address instead of the VPC's.
    pub private_cidr: Option<Ipv4Cidr>,
    /// The CIDRs tunnels may reach on the host (the agent's `tunnel_allow`);
    /// `None`: the agent's default, loopback and the overlay.
    pub tunnel_allow: Option<Vec<String>>,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap")
            .field("coordinator_addr", &self.coordinator_addr)
            .field("join_token", &"***")
            .field("agent_source", &self.agent_source)
            .field("node_name", &self.node_name)
            .field("state_dir", &self.state_dir)
            .field("private_cidr", &self.private_cidr)
            .finish_non_exhaustive()
    }
}

impl Bootstrap {
    pub fn new(
        coordinator_addr: impl Into<String>,
        join_token: impl Into<String>,
        ca_cert_pem: impl Into<String>,
        agent_source: AgentSource,
    ) -> Bootstrap {
        Bootstrap {
            coordinator_addr: coordinator_addr.into(),
            join_token: join_token.into(),
            ca_cert_pem: ca_cert_pem.into(),
            agent_source,
            node_name: None,
            state_dir: DEFAULT_STATE_DIR.to_owned(),
            systemd_unit: None,
            private_cidr: None,
            tunnel_allow: None,
        }
    }
}

/// `/etc/apiary/agent.toml` as written on the host.
#[derive(Serialize)]
struct AgentFile<'a> {
    coordinator: &'a str,
    join_token: &'a str,
    ca_cert: &'a str,
    state_dir: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    private_cidr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_allow: Option<&'a [String]>,
    /// Hosts apiary creates serve their engine to admins (`ctl docker`).
    engine_access: bool,
}

#[derive(Serialize)]
struct CloudConfig<'a> {
    package_update: bool,
    packages: Vec<&'a str>,
    /// `PasswordAuthentication no` through cloud-init's own module.
    ssh_pwauth: bool,
    write_files: Vec<WriteFile>,
    runcmd: Vec<Vec<String>>,
}

/// One argument of an `Exec*=` line: double-quoted, with systemd's
/// specifier (`%`) and variable (`$`) characters escaped, so a URL reaches
/// the installer byte for byte.
fn systemd_quote(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    for c in arg.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The install unit: runs [`AgentSource::install_command`] until it
/// succeeds (every [`INSTALL_RETRY_SEC`] s, with no start limit), then
/// enables and starts Docker and the agent.
pub fn install_unit(source: &AgentSource) -> String {
    let exec: Vec<String> = source
        .install_command()
        .iter()
        .map(|a| systemd_quote(a))
        .collect();
    format!(
        "\
[Unit]
Description=apiary: install the agent (download, check its digest, then start it)
Wants=network-online.target
After=network-online.target
# Retry for as long as it takes: never stop on the start rate limit.
StartLimitIntervalSec=0
# Enabled, so a droplet rebooted before the download got through tries
# again at boot (runcmd runs once per instance); once the binary is in,
# boots skip it.
ConditionPathExists=!{AGENT_BINARY_PATH}

[Service]
Type=oneshot
ExecStart={exec}
# Runs only when ExecStart succeeded: the agent is never enabled without
# its verified binary.
ExecStartPost=/usr/bin/systemctl enable --now --no-block docker.service {UNIT_NAME}
Restart=on-failure
RestartSec={INSTALL_RETRY_SEC}

[Install]
WantedBy=multi-user.target
",
        exec = exec.join(" ")
    )
}

/// The argv of the install unit's `ExecStart=` line, unquoted again (for
/// tests and tools that run the installer as the unit would).
pub fn install_unit_command(unit: &str) -> Option<Vec<String>> {
    let line = unit.lines().find_map(|l| l.strip_prefix("ExecStart="))?;
    let mut args = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ').is_some() {}
        match chars.next() {
            None => return Some(args),
            Some('"') => {
                let mut arg = String::new();
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => arg.push(chars.next()?),
                        '%' => arg.push(chars.next().filter(|c| *c == '%')?),
                        '$' => arg.push(chars.next().filter(|c| *c == '$')?),
                        c => arg.push(c),
                    }
                }
                args.push(arg);
            }
            Some(c) => {
                let mut arg = String::from(c);
                while let Some(c) = chars.next_if(|c| *c != ' ') {
                    arg.push(c);
                }
                args.push(arg);
            }
        }
    }
}

#[derive(Serialize)]
struct WriteFile {
    path: &'static str,
    owner: &'static str,
    permissions: &'static str,
    content: String,
}

/// Renders the `#cloud-config` user_data for one host (or, with no
/// `node_name`, for any number of hosts).
pub fn render_user_data(b: &Bootstrap) -> Result<String, RenderError> {
    check_token(&b.join_token)?;
    let ca = check_ca(&b.ca_cert_pem)?;
    check_addr(&b.coordinator_addr)?;
    if !b.state_dir.starts_with('/') || b.state_dir.chars().any(char::is_control) {
        return Err(invalid("state_dir", "expected an absolute path"));
    }
    let (url, _, sum) = b.agent_source.parts();
    if url.scheme() != "https" {
        return Err(invalid(
            "agent_source",
            "the agent binary must come over https",
        ));
    }
    if let Some(sum) = sum
        && (sum.len() != 64 || !sum.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(invalid(
            "agent_source.sha256",
            "expected 64 hexadecimal digits",
        ));
    }
    let unit = b.systemd_unit.as_deref().unwrap_or(DEFAULT_UNIT);
    if unit.contains("PRIVATE KEY") || unit.contains(&b.join_token) {
        return Err(invalid(
            "systemd_unit",
            "the unit must not carry keys or the join token (they belong in agent.toml)",
        ));
    }

    let agent = toml::to_string(&AgentFile {
        coordinator: &b.coordinator_addr,
        join_token: &b.join_token,
        ca_cert: CA_PATH,
        state_dir: &b.state_dir,
        node_name: b.node_name.as_ref().map(HostName::as_str),
        private_cidr: b.private_cidr.map(|c| c.to_string()),
        tunnel_allow: b.tunnel_allow.as_deref(),
        engine_access: true,
    })
    .map_err(|e| RenderError::Serialise {
        what: "agent config",
        reason: e.to_string(),
    })?;
    let agent = format!(
        "# Written by cloud-init for apiary. The join token is single-use: enrollment\n\
         # replaces it with the node's own certificate.\n{agent}"
    );

    let cmd = |args: &[&str]| args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let doc = CloudConfig {
        package_update: true,
        packages: PACKAGES.to_vec(),
        ssh_pwauth: false,
        write_files: vec![
            WriteFile {
                path: CA_PATH,
                owner: "root:root",
                permissions: "0644",
                content: ca,
            },
            WriteFile {
                path: AGENT_CONFIG_PATH,
                owner: "root:root",
                // The join token is in it.
                permissions: "0600",
                content: agent,
            },
            WriteFile {
                path: UNIT_PATH,
                owner: "root:root",
                permissions: "0644",
                content: unit.to_owned(),
            },
            WriteFile {
                path: INSTALLER_PATH,
                owner: "root:root",
                permissions: "0755",
                content: INSTALLER.to_owned(),
            },
            WriteFile {
                path: INSTALL_UNIT_PATH,
                owner: "root:root",
                permissions: "0644",
                content: install_unit(&b.agent_source),
            },
            WriteFile {
                path: SSHD_DROP_IN_PATH,
                owner: "root:root",
                permissions: "0644",
                content: SSHD_DROP_IN.to_owned(),
            },
        ],
        // Only the install unit is enabled and started (without waiting:
        // it may retry for a while); it enables the agent itself once the
        // binary is in.
        runcmd: vec![
            cmd(&["systemctl", "daemon-reload"]),
            cmd(&[
                "systemctl",
                "enable",
                "--now",
                "--no-block",
                INSTALL_UNIT_NAME,
            ]),
        ],
    };
    let yaml = serde_norway::to_string(&doc).map_err(|e| RenderError::Serialise {
        what: "cloud-config",
        reason: e.to_string(),
    })?;
    let out = format!("#cloud-config\n# apiary agent bootstrap (apiary-digitalocean)\n{yaml}");
    if out.len() > MAX_USER_DATA_BYTES {
        return Err(RenderError::TooLarge { bytes: out.len() });
    }
    Ok(out)
}

/// The cloud-config of the coordinator droplet `coordinator up` makes:
/// its SSH host key, made by apiary on the operator's machine, so the one
/// SSH session that installs the coordinator trusts exactly that key
/// (nothing on first use); password logins off. No secret of the cluster
/// is in it: the API token and the binaries go over that SSH session.
///
/// `host_key_private` is the OpenSSH private key (ed25519), and
/// `host_key_public` its `ssh-ed25519 AAAA... comment` line.
/// With `host`, the droplet is one of the cluster's hosts as well
/// (`coordinator up --on-host`): it gets a host's packages (Docker,
/// nftables); its agent is installed once the coordinator can enroll it.
pub fn render_coordinator_user_data(
    host_key_private: &str,
    host_key_public: &str,
    host: bool,
) -> Result<String, RenderError> {
    if !host_key_private.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        return Err(invalid(
            "host_key_private",
            "expected an OpenSSH private key (ssh-keygen -t ed25519)",
        ));
    }
    let host_key_public = host_key_public.trim();
    if !host_key_public.starts_with("ssh-ed25519 ") || host_key_public.contains('\n') {
        return Err(invalid(
            "host_key_public",
            "expected one `ssh-ed25519 AAAA...` line",
        ));
    }
    #[derive(Serialize)]
    struct HostKeys<'a> {
        ed25519_private: &'a str,
        ed25519_public: &'a str,
    }
    #[derive(Serialize)]
    struct CoordinatorConfig<'a> {
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        package_update: bool,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        packages: Vec<&'a str>,
        ssh_pwauth: bool,
        /// The image's own keys deleted; of the types below only the one
        /// given here exists (cloud-init makes a type only when it is
        /// missing), so the host has exactly the key the laptop pins.
        ssh_deletekeys: bool,
        ssh_genkeytypes: Vec<&'a str>,
        ssh_keys: HostKeys<'a>,
        write_files: Vec<WriteFile>,
    }
    let doc = CoordinatorConfig {
        package_update: host,
        packages: if host { PACKAGES.to_vec() } else { Vec::new() },
        ssh_pwauth: false,
        ssh_deletekeys: true,
        ssh_genkeytypes: vec!["ed25519"],
        ssh_keys: HostKeys {
            ed25519_private: host_key_private,
            ed25519_public: host_key_public,
        },
        write_files: vec![WriteFile {
            path: SSHD_DROP_IN_PATH,
            owner: "root:root",
            permissions: "0644",
            content: SSHD_DROP_IN.to_owned(),
        }],
    };
    let yaml = serde_norway::to_string(&doc).map_err(|e| RenderError::Serialise {
        what: "cloud-config",
        reason: e.to_string(),
    })?;
    let out = format!("#cloud-config\n# apiary coordinator droplet (apiary-digitalocean)\n{yaml}");
    if out.len() > MAX_USER_DATA_BYTES {
        return Err(RenderError::TooLarge { bytes: out.len() });
    }
    Ok(out)
}

fn check_token(token: &str) -> Result<(), RenderError> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "join_token",
            "expected a non-empty token of visible ASCII characters",
        ));
    }
    Ok(())
}

fn check_ca(pem: &str) -> Result<String, RenderError> {
    if pem.contains("PRIVATE KEY") {
        return Err(RenderError::PrivateKeyInCa);
    }
    let begin = pem.matches("-----BEGIN CERTIFICATE-----").count();
    let end = pem.matches("-----END CERTIFICATE-----").count();
    if begin == 0 || begin != end {
        return Err(invalid(
            "ca_cert_pem",
            "expected one or more PEM certificates (-----BEGIN CERTIFICATE-----)",
        ));
    }
    let mut out = pem.trim().replace("\r\n", "\n");
    out.push('\n');
    Ok(out)
}

fn check_addr(addr: &str) -> Result<(), RenderError> {
    let bad = || invalid("coordinator_addr", format!("{addr:?}: expected host:port"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    if !addr
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";

    fn bootstrap() -> Bootstrap {
        Bootstrap::new(
            "10.20.0.2:7443",
            "APIARY-1-abc-def",
            CA,
            AgentSource::Coordinator {
                url: Url::parse("https://10.20.0.2:7444/v1/agent/linux-x86_64").unwrap(),
                sha256: "ab".repeat(32),
            },
        )
    }

    #[test]
    fn refuses_a_private_key_as_ca() {
        let mut b = bootstrap();
        b.ca_cert_pem = format!("{CA}-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n");
        assert!(matches!(
            render_user_data(&b),
            Err(RenderError::PrivateKeyInCa)
        ));
    }

    #[test]
    fn refuses_bad_inputs() {
        let mut b = bootstrap();
        b.join_token = "a b".into();
        assert!(render_user_data(&b).is_err());
        let mut b = bootstrap();
        b.coordinator_addr = "10.0.0.1".into();
        assert!(render_user_data(&b).is_err());
        let mut b = bootstrap();
        b.agent_source = AgentSource::Url {
            url: Url::parse("http://example.com/agent").unwrap(),
            sha256: None,
        };
        assert!(render_user_data(&b).is_err());
        let mut b = bootstrap();
        b.systemd_unit = Some("ExecStart=/x APIARY-1-abc-def".into());
        assert!(render_user_data(&b).is_err());
        let mut b = bootstrap();
        b.agent_source = AgentSource::Coordinator {
            url: Url::parse("https://10.20.0.2:7444/v1/agent/linux-x86_64").unwrap(),
            sha256: "not-a-digest".into(),
        };
        assert!(render_user_data(&b).is_err());
    }

    #[test]
    fn too_large_is_refused() {
        let mut b = bootstrap();
        b.systemd_unit = Some("#".repeat(MAX_USER_DATA_BYTES));
        assert!(matches!(
            render_user_data(&b),
            Err(RenderError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_agent_config_names_the_vpc_range_when_given() {
        let agent_toml = |b: &Bootstrap| -> toml::Table {
            let doc: serde_norway::Value =
                serde_norway::from_str(&render_user_data(b).unwrap()).unwrap();
            let file = doc["write_files"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|f| f["path"].as_str() == Some(AGENT_CONFIG_PATH))
                .unwrap();
            toml::from_str(file["content"].as_str().unwrap()).unwrap()
        };
        assert!(!agent_toml(&bootstrap()).contains_key("private_cidr"));
        let mut b = bootstrap();
        b.private_cidr = Some(Ipv4Cidr::parse("10.124.0.0/20").unwrap());
        assert_eq!(
            agent_toml(&b)["private_cidr"].as_str(),
            Some("10.124.0.0/20")
        );
        assert!(!agent_toml(&b).contains_key("tunnel_allow"));
        b.tunnel_allow = Some(vec!["127.0.0.0/8".into(), "10.50.0.0/16".into()]);
        assert_eq!(
            agent_toml(&b)["tunnel_allow"],
            toml::Value::Array(vec!["127.0.0.0/8".into(), "10.50.0.0/16".into()])
        );
    }

    #[test]
    fn the_install_unit_quotes_its_arguments_for_systemd_and_reads_back() {
        for url in [
            "https://10.20.0.2:7444/v1/agent/linux-x86_64",
            "https://example.com/a%20b/$HOME/agent?x=%41",
        ] {
            let source = AgentSource::Url {
                url: Url::parse(url).unwrap(),
                sha256: Some("ab".repeat(32)),
            };
            let unit = install_unit(&source);
            let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
            // No bare specifier or variable reaches systemd.
            let rest = exec.replace("%%", "").replace("$$", "");
            assert!(!rest.contains('%') && !rest.contains('$'), "{exec}");
            assert_eq!(
                install_unit_command(&unit).unwrap(),
                source.install_command(),
                "{exec}"
            );
        }
    }

    #[test]
    fn debug_hides_the_token() {
        assert!(!format!("{:?}", bootstrap()).contains("abc-def"));
    }
}
