//! The agent's settings: from a TOML file (what systemd and cloud-init use),
//! overridden by command-line flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::facts::PrivateAddress;
use crate::hostconfig::Cidr;

#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    #[error("cannot read agent config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("tunnel_allow: {0}")]
    TunnelAllow(#[from] apiary_api::tunnel::BadCidr),
    #[error("{0} is required (flag --{0}, or `{0} = ...` in the agent config file)")]
    Missing(&'static str),
    #[error("private_cidr = {value:?}: {reason}")]
    PrivateCidr { value: String, reason: String },
    #[error(
        "private_interface = {interface:?} and private_cidr = {cidr:?} both choose the private \
         address; keep one (private_cidr names the VPC's range and survives interface renames)"
    )]
    PrivateChosenTwice { interface: String, cidr: String },
}

/// The file form; every key is optional so that flags can fill the rest.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub coordinator: Option<String>,
    /// `join_token` is what cloud-init writes (apiary-digitalocean).
    #[serde(alias = "join_token")]
    pub token: Option<String>,
    pub state_dir: Option<PathBuf>,
    #[serde(alias = "node_name")]
    pub name: Option<String>,
    /// The cluster CA as delivered out of band (cloud-init): if given, it must
    /// match the join token's digest, or the agent refuses to enroll.
    pub ca_cert: Option<PathBuf>,
    pub docker_socket: Option<PathBuf>,
    pub public_interface: Option<String>,
    /// The private address is the one on this interface.
    pub private_interface: Option<String>,
    /// The private address is the one inside this IPv4 range (the
    /// DigitalOcean provider writes its VPC's `ip_range`). Unset, and
    /// without `private_interface`: the first RFC 1918 address.
    pub private_cidr: Option<String>,
    /// Host files (daemon.json, GRUB defaults) are managed below this prefix
    /// (`/` on a real host; the lab gives each host its own).
    pub root_prefix: Option<PathBuf>,
    /// Shell command that restarts the Docker engine after daemon.json changed
    /// (default `systemctl restart docker`).
    pub engine_restart: Option<String>,
    /// Load missing kernel modules with modprobe (default true).
    pub modprobe: Option<bool>,
    /// Regenerate GRUB's config when the kernel command line changes (default true).
    pub update_grub: Option<bool>,
    /// CIDRs tunnels may reach on this host (default: loopback and the overlay).
    pub tunnel_allow: Option<Vec<String>>,
    /// Serve this host's Docker engine socket to admins through the
    /// coordinator (`ctl docker`). Default false: an agent installed by hand
    /// gives no one its engine unless asked to; the hosts apiary creates
    /// (lab, cloud-init) set it.
    pub engine_access: Option<bool>,
}

impl AgentFile {
    pub fn load(path: &Path) -> Result<Self, AgentConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AgentConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
            let before = &text[..offset];
            AgentConfigError::Invalid {
                path: path.to_path_buf(),
                line: before.matches('\n').count() + 1,
                column: before.rsplit('\n').next().map(str::len).unwrap_or(0) + 1,
                message: e.message().to_string(),
            }
        })
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// HOST:PORT of the coordinator.
    pub coordinator: String,
    /// Needed only until the agent holds a certificate.
    pub token: Option<String>,
    pub state_dir: PathBuf,
    pub name: String,
    pub ca_cert: Option<PathBuf>,
    pub root_prefix: PathBuf,
    pub engine_restart: Option<String>,
    pub modprobe: bool,
    pub update_grub: bool,
    pub tunnel_allow: crate::tunnel::AllowList,
    pub engine_access: bool,
    pub docker_socket: PathBuf,
    pub public_interface: Option<String>,
    pub private_address: PrivateAddress,
}

impl AgentConfig {
    /// `flags` wins over `file`, field by field.
    pub fn merge(flags: AgentFile, file: AgentFile) -> Result<Self, AgentConfigError> {
        let coordinator = flags
            .coordinator
            .or(file.coordinator)
            .ok_or(AgentConfigError::Missing("coordinator"))?;
        let state_dir = flags
            .state_dir
            .or(file.state_dir)
            .ok_or(AgentConfigError::Missing("state-dir"))?;
        let name = match flags.name.or(file.name) {
            Some(n) => n,
            None => nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .map_err(|_| AgentConfigError::Missing("name"))?,
        };
        let private_address = match (
            flags.private_interface.or(file.private_interface),
            flags.private_cidr.or(file.private_cidr),
        ) {
            (None, None) => PrivateAddress::FirstRfc1918,
            (Some(interface), None) => PrivateAddress::Interface(interface),
            (None, Some(cidr)) => {
                let range = Cidr::parse(&cidr).map_err(|reason| AgentConfigError::PrivateCidr {
                    value: cidr.clone(),
                    reason,
                })?;
                if !range.is_ipv4() {
                    return Err(AgentConfigError::PrivateCidr {
                        value: cidr,
                        reason: "write an IPv4 range (the private address is IPv4)".into(),
                    });
                }
                PrivateAddress::InRange(range)
            }
            (Some(interface), Some(cidr)) => {
                return Err(AgentConfigError::PrivateChosenTwice { interface, cidr });
            }
        };
        Ok(AgentConfig {
            coordinator,
            token: flags.token.or(file.token),
            ca_cert: flags.ca_cert.or(file.ca_cert),
            root_prefix: flags
                .root_prefix
                .or(file.root_prefix)
                .unwrap_or_else(|| PathBuf::from("/")),
            engine_restart: flags.engine_restart.or(file.engine_restart),
            modprobe: flags.modprobe.or(file.modprobe).unwrap_or(true),
            update_grub: flags.update_grub.or(file.update_grub).unwrap_or(true),
            tunnel_allow: match flags.tunnel_allow.or(file.tunnel_allow) {
                Some(list) => {
                    crate::tunnel::AllowList::parse(&list).map_err(AgentConfigError::TunnelAllow)?
                }
                None => crate::tunnel::AllowList::default_list(),
            },
            engine_access: flags.engine_access.or(file.engine_access).unwrap_or(false),
            state_dir,
            name,
            docker_socket: flags
                .docker_socket
                .or(file.docker_socket)
                .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock")),
            public_interface: flags.public_interface.or(file.public_interface),
            private_address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_unknown_keys_name_the_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "coordinator = \"10.0.0.1:7443\"\nstate_dir = \"/var/lib/apiary\"\nname = \"a\"\n",
        )
        .expect("write");
        let file = AgentFile::load(&path).expect("load");
        let flags = AgentFile {
            name: Some("b".into()),
            ..Default::default()
        };
        let c = AgentConfig::merge(flags, file).expect("merge");
        assert_eq!(
            (c.coordinator.as_str(), c.name.as_str()),
            ("10.0.0.1:7443", "b")
        );

        std::fs::write(&path, "coordinator = \"x\"\ntokn = \"y\"\n").expect("write");
        let err = AgentFile::load(&path).expect_err("unknown key").to_string();
        assert!(
            err.contains("agent.toml:2:") && err.contains("tokn"),
            "{err}"
        );
    }

    #[test]
    fn the_private_address_is_chosen_by_range_or_interface_never_both() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("agent.toml");
        let base = "coordinator = \"10.0.0.1:7443\"\nstate_dir = \"/s\"\nname = \"a\"\n";
        let merged = |extra: &str| {
            std::fs::write(&path, format!("{base}{extra}")).expect("write");
            AgentConfig::merge(AgentFile::default(), AgentFile::load(&path).expect("load"))
        };
        assert_eq!(
            merged("").expect("default").private_address,
            PrivateAddress::FirstRfc1918
        );
        assert_eq!(
            merged("private_cidr = \"10.124.0.0/20\"\n")
                .expect("cidr")
                .private_address,
            PrivateAddress::InRange(Cidr::parse("10.124.0.0/20").expect("cidr"))
        );
        assert_eq!(
            merged("private_interface = \"eth1\"\n")
                .expect("interface")
                .private_address,
            PrivateAddress::Interface("eth1".into())
        );
        let err = merged("private_cidr = \"10.124.0.0\"\n")
            .expect_err("no length")
            .to_string();
        assert!(
            err.contains("private_cidr") && err.contains("10.124.0.0"),
            "{err}"
        );
        let err = merged("private_cidr = \"fd00::/64\"\n")
            .expect_err("v6")
            .to_string();
        assert!(err.contains("IPv4"), "{err}");
        let err = merged("private_cidr = \"10.124.0.0/20\"\nprivate_interface = \"eth1\"\n")
            .expect_err("both")
            .to_string();
        assert!(
            err.contains("private_interface") && err.contains("private_cidr"),
            "{err}"
        );
    }

    #[test]
    fn missing_coordinator_is_named() {
        let err =
            AgentConfig::merge(AgentFile::default(), AgentFile::default()).expect_err("missing");
        assert!(err.to_string().contains("coordinator"));
    }
}
