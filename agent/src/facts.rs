//! What a host is: kernel, cgroups, addresses, Docker, kernel features. Read
//! through a root prefix (`/` on a real host) so the parsing is tested on
//! fixture trees without root.

use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use apiary_proto::{Facts, Interface, KernelFeature};
use tracing::warn;

use crate::hostconfig::Cidr;

/// Kernel features Swarm's overlay needs, with the kernel config symbol of each.
pub const REQUIRED_FEATURES: [(&str, &str); 4] = [
    ("vxlan", "CONFIG_VXLAN"),
    ("overlay", "CONFIG_OVERLAY_FS"),
    ("br_netfilter", "CONFIG_BRIDGE_NETFILTER"),
    ("ip_vs", "CONFIG_IP_VS"),
];

/// How the host's private address (the one Swarm advertises and listens on,
/// and the probes use) is chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PrivateAddress {
    /// The first RFC 1918 address: right where a host has one private
    /// network (the lab, most hosts).
    #[default]
    FirstRfc1918,
    /// The first IPv4 address on this interface (`private_interface`).
    Interface(String),
    /// The first address inside this range (`private_cidr`). What the
    /// DigitalOcean provider writes: a droplet's eth0 carries a 10.x
    /// "anchor" address beside its public one, so "the first RFC 1918
    /// address" may be the anchor instead of the VPC address on eth1.
    InRange(Cidr),
}

impl fmt::Display for PrivateAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivateAddress::FirstRfc1918 => f.write_str("the first RFC 1918 address"),
            PrivateAddress::Interface(i) => write!(f, "the address on {i} (private_interface)"),
            PrivateAddress::InRange(c) => write!(f, "an address in {c} (private_cidr)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FactsSource {
    /// Where /proc, /sys and /lib/modules are read from.
    pub root: PathBuf,
    pub docker_socket: PathBuf,
    /// An interface name that overrides the public address's detection.
    pub public_interface: Option<String>,
    pub private: PrivateAddress,
}

impl FactsSource {
    pub fn host(docker_socket: PathBuf) -> Self {
        FactsSource {
            root: PathBuf::from("/"),
            docker_socket,
            public_interface: None,
            private: PrivateAddress::default(),
        }
    }

    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(rel)).ok()
    }

    pub async fn gather(&self) -> Facts {
        let uts = nix::sys::utsname::uname().ok();
        let kernel_version = uts
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let interfaces = interfaces();
        let (public_ip, private_ip) =
            classify(&interfaces, self.public_interface.as_deref(), &self.private);
        if private_ip.is_none() {
            warn!(choice = %self.private, "no private address on this host: Swarm and the probes cannot start until one appears");
        }
        let cgroup_version = if self.root.join("sys/fs/cgroup/cgroup.controllers").exists() {
            2
        } else {
            1
        };
        let memory_accounting = memory_accounting(
            cgroup_version,
            self.read("sys/fs/cgroup/cgroup.controllers").as_deref(),
            self.read("proc/cgroups").as_deref(),
        );
        let kernel_features = self.kernel_features(&kernel_version);
        Facts {
            hostname,
            kernel_version,
            cgroup_version,
            memory_accounting,
            interfaces: interfaces
                .into_iter()
                .map(|(name, addrs)| Interface {
                    name,
                    addresses: addrs.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            public_ip: public_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            private_ip: private_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            docker_version: docker_version(&self.docker_socket)
                .await
                .unwrap_or_default(),
            kernel_features,
        }
    }

    fn kernel_features(&self, release: &str) -> Vec<KernelFeature> {
        let config = self.kernel_config();
        let modules_dir = format!("lib/modules/{release}");
        let modules = [
            self.read(&format!("{modules_dir}/modules.builtin")),
            self.read(&format!("{modules_dir}/modules.dep")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n");
        REQUIRED_FEATURES
            .iter()
            .map(|(module, symbol)| {
                let loaded = self.root.join("sys/module").join(module).exists();
                feature(module, symbol, loaded, config.as_deref(), &modules)
            })
            .collect()
    }

    fn kernel_config(&self) -> Option<String> {
        let file = std::fs::File::open(self.root.join("proc/config.gz")).ok()?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .ok()?;
        Some(text)
    }
}

/// Decides one feature from what the kernel exposes: a loaded module, the
/// kernel's own config, or the module lists shipped with it.
pub fn feature(
    module: &str,
    symbol: &str,
    loaded: bool,
    kernel_config: Option<&str>,
    module_lists: &str,
) -> KernelFeature {
    let in_config = kernel_config.and_then(|c| {
        c.lines().find_map(|l| {
            l.strip_prefix(symbol)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_string)
        })
    });
    let ko = format!("/{module}.ko");
    let listed = module_lists.lines().any(|l| l.contains(&ko));
    let (available, detail) = if loaded {
        (true, "loaded".to_string())
    } else if in_config.as_deref() == Some("y") {
        (true, format!("built into the kernel ({symbol}=y)"))
    } else if in_config.as_deref() == Some("m") || listed {
        (
            true,
            format!("available as a module; load it with `modprobe {module}`"),
        )
    } else {
        (
            false,
            format!("not in this kernel ({symbol} is not set); use a kernel built with {symbol}"),
        )
    };
    KernelFeature {
        name: module.to_string(),
        available,
        detail,
    }
}

pub fn memory_accounting(
    cgroup_version: u32,
    controllers: Option<&str>,
    proc_cgroups: Option<&str>,
) -> bool {
    if cgroup_version == 2 {
        return controllers.is_some_and(|c| c.split_whitespace().any(|x| x == "memory"));
    }
    // /proc/cgroups: "#subsys_name hierarchy num_cgroups enabled"
    proc_cgroups.is_some_and(|t| {
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&"memory") && f.get(3) == Some(&"1")
        })
    })
}

fn interfaces() -> Vec<(String, Vec<Ipv4Addr>)> {
    let mut out: Vec<(String, Vec<Ipv4Addr>)> = Vec::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for ifa in addrs {
        let Some(ip) = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|s| s.ip())
        else {
            continue;
        };
        if ip.is_loopback() {
            continue;
        }
        match out.iter_mut().find(|(n, _)| *n == ifa.interface_name) {
            Some((_, v)) => v.push(ip),
            None => out.push((ifa.interface_name.clone(), vec![ip])),
        }
    }
    out
}

/// The private address as `private` says (by default the first RFC 1918
/// one), the public the first other routable one unless an interface is
/// named for it. Docker's own bridges (docker0, docker_gwbridge, br-*,
/// veth*) never count.
pub fn classify(
    interfaces: &[(String, Vec<Ipv4Addr>)],
    public_if: Option<&str>,
    private: &PrivateAddress,
) -> (Option<Ipv4Addr>, Option<Ipv4Addr>) {
    let ours = |name: &str| {
        !(name.starts_with("docker") || name.starts_with("br-") || name.starts_with("veth"))
    };
    let first = |want: &dyn Fn(&str, &Ipv4Addr) -> bool| {
        interfaces
            .iter()
            .filter(|(n, _)| ours(n))
            .flat_map(|(n, a)| a.iter().map(move |ip| (n, ip)))
            .find(|(n, ip)| want(n, ip))
            .map(|(_, ip)| *ip)
    };
    let private = match private {
        PrivateAddress::FirstRfc1918 => first(&|_, ip| ip.is_private()),
        PrivateAddress::Interface(want) => first(&|n, _| n == want),
        PrivateAddress::InRange(range) => first(&|_, ip| range.contains(IpAddr::V4(*ip))),
    };
    let public = match public_if {
        Some(want) => first(&|n, _| n == want),
        None => first(&|_, ip| !ip.is_private() && !ip.is_link_local()),
    };
    (public, private)
}

async fn docker_version(socket: &Path) -> Option<String> {
    if !socket.exists() {
        return None;
    }
    let docker = bollard::Docker::connect_with_unix(
        &socket.to_string_lossy(),
        3,
        bollard::API_DEFAULT_VERSION,
    )
    .ok()?;
    let version = tokio::time::timeout(Duration::from_secs(3), docker.version())
        .await
        .ok()?
        .ok()?;
    version.version
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_from_loaded_config_and_module_lists() {
        let cfg = "CONFIG_VXLAN=y\nCONFIG_OVERLAY_FS=m\n# CONFIG_IP_VS is not set\n";
        assert!(
            feature("vxlan", "CONFIG_VXLAN", false, Some(cfg), "")
                .detail
                .contains("built into")
        );
        let overlay = feature("overlay", "CONFIG_OVERLAY_FS", false, Some(cfg), "");
        assert!(overlay.available && overlay.detail.contains("modprobe overlay"));
        let ipvs = feature("ip_vs", "CONFIG_IP_VS", false, Some(cfg), "");
        assert!(!ipvs.available && ipvs.detail.contains("CONFIG_IP_VS"));
        let listed = feature(
            "ip_vs",
            "CONFIG_IP_VS",
            false,
            None,
            "kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko",
        );
        assert!(listed.available);
        assert_eq!(
            feature("br_netfilter", "CONFIG_BRIDGE_NETFILTER", true, None, "").detail,
            "loaded"
        );
    }

    #[test]
    fn memory_accounting_v1_and_v2() {
        assert!(memory_accounting(
            1,
            None,
            Some("#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t5\t80\t1\n")
        ));
        assert!(!memory_accounting(1, None, Some("memory\t0\t1\t0\n")));
        assert!(memory_accounting(
            2,
            Some("cpuset cpu io memory pids"),
            None
        ));
        assert!(!memory_accounting(2, Some("cpu io"), None));
    }

    #[test]
    fn classifies_public_and_private_addresses() {
        let ifs = vec![
            ("docker0".to_string(), vec![Ipv4Addr::new(172, 17, 0, 1)]),
            ("eth0".to_string(), vec![Ipv4Addr::new(10, 231, 0, 11)]),
            ("eth1".to_string(), vec![Ipv4Addr::new(198, 18, 0, 11)]),
        ];
        // The lab's default: unchanged by the explicit choices below.
        assert_eq!(
            classify(&ifs, None, &PrivateAddress::default()),
            (
                Some(Ipv4Addr::new(198, 18, 0, 11)),
                Some(Ipv4Addr::new(10, 231, 0, 11))
            )
        );
        assert_eq!(
            classify(
                &ifs,
                Some("eth0"),
                &PrivateAddress::Interface("eth1".into())
            ),
            (
                Some(Ipv4Addr::new(10, 231, 0, 11)),
                Some(Ipv4Addr::new(198, 18, 0, 11))
            )
        );
    }

    /// A DigitalOcean droplet: eth0 has the public address and a 10.x
    /// anchor address (for reserved IPs), eth1 the VPC address, docker0 a
    /// 172.17 bridge. Swarm must get the VPC address.
    fn droplet() -> Vec<(String, Vec<Ipv4Addr>)> {
        vec![
            (
                "eth0".to_string(),
                vec![Ipv4Addr::new(203, 0, 113, 7), Ipv4Addr::new(10, 17, 0, 5)],
            ),
            ("eth1".to_string(), vec![Ipv4Addr::new(10, 124, 0, 2)]),
            ("docker0".to_string(), vec![Ipv4Addr::new(172, 17, 0, 1)]),
        ]
    }

    #[test]
    fn a_droplet_advertises_its_vpc_address_when_told_the_vpc_range() {
        let ifs = droplet();
        let vpc = PrivateAddress::InRange(Cidr::parse("10.124.0.0/20").expect("cidr"));
        assert_eq!(
            classify(&ifs, None, &vpc),
            (
                Some(Ipv4Addr::new(203, 0, 113, 7)),
                Some(Ipv4Addr::new(10, 124, 0, 2))
            )
        );
        assert_eq!(
            classify(&ifs, None, &PrivateAddress::Interface("eth1".into())).1,
            Some(Ipv4Addr::new(10, 124, 0, 2))
        );
        // Why the choice must be explicit there: the default takes the anchor.
        assert_eq!(
            classify(&ifs, None, &PrivateAddress::default()).1,
            Some(Ipv4Addr::new(10, 17, 0, 5))
        );
        // A range no interface is in gives no private address, not a guess.
        let elsewhere = PrivateAddress::InRange(Cidr::parse("10.200.0.0/20").expect("cidr"));
        assert_eq!(classify(&ifs, None, &elsewhere).1, None);
    }

    #[test]
    fn reads_fixture_tree_through_root_prefix() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("sys/module/vxlan")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("proc")).expect("mkdir");
        std::fs::write(dir.path().join("proc/cgroups"), "memory 3 1 1\n").expect("write");
        let src = FactsSource {
            root: dir.path().to_path_buf(),
            docker_socket: dir.path().join("none.sock"),
            public_interface: None,
            private: PrivateAddress::default(),
        };
        let f = src.kernel_features("1.2.3");
        assert!(f.iter().any(|k| k.name == "vxlan" && k.available));
        assert!(f.iter().any(|k| k.name == "ip_vs" && !k.available));
    }
}
