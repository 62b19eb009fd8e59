//! What a host is: kernel, cgroups, addresses, Docker, kernel features. Read
//! through a root prefix (`/` on a real host) so the parsing is tested on
//! fixture trees without root.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use apiary_proto::{Facts, Interface, KernelFeature};

/// Kernel features Swarm's overlay needs, with the kernel config symbol of each.
pub const REQUIRED_FEATURES: [(&str, &str); 4] = [
    ("vxlan", "CONFIG_VXLAN"),
    ("overlay", "CONFIG_OVERLAY_FS"),
    ("br_netfilter", "CONFIG_BRIDGE_NETFILTER"),
    ("ip_vs", "CONFIG_IP_VS"),
];

#[derive(Debug, Clone)]
pub struct FactsSource {
    /// Where /proc, /sys and /lib/modules are read from.
    pub root: PathBuf,
    pub docker_socket: PathBuf,
    /// Interface names that override address classification.
    pub public_interface: Option<String>,
    pub private_interface: Option<String>,
}

impl FactsSource {
    pub fn host(docker_socket: PathBuf) -> Self {
        FactsSource {
            root: PathBuf::from("/"),
            docker_socket,
            public_interface: None,
            private_interface: None,
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
        let (public_ip, private_ip) = classify(
            &interfaces,
            self.public_interface.as_deref(),
            self.private_interface.as_deref(),
        );
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

/// The private address is the first RFC 1918 one, the public the first other
/// routable one, unless an interface is named for either. Docker's own bridges
/// (docker0, docker_gwbridge, br-*, veth*) never count.
pub fn classify(
    interfaces: &[(String, Vec<Ipv4Addr>)],
    public_if: Option<&str>,
    private_if: Option<&str>,
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
    let private = match private_if {
        Some(want) => first(&|n, _| n == want),
        None => first(&|_, ip| ip.is_private()),
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
        assert_eq!(
            classify(&ifs, None, None),
            (
                Some(Ipv4Addr::new(198, 18, 0, 11)),
                Some(Ipv4Addr::new(10, 231, 0, 11))
            )
        );
        assert_eq!(
            classify(&ifs, Some("eth0"), Some("eth1")).0,
            Some(Ipv4Addr::new(10, 231, 0, 11))
        );
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
            private_interface: None,
        };
        let f = src.kernel_features("1.2.3");
        assert!(f.iter().any(|k| k.name == "vxlan" && k.available));
        assert!(f.iter().any(|k| k.name == "ip_vs" && !k.available));
    }
}
