//! Pure planning: names, addresses and paths of a lab. No I/O here.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use apiary_api::names::{ClusterName, NodeName};
use serde::{Deserialize, Serialize};

use crate::error::LabError;

/// Bridge of the lab's "public" network (198.18.0.0/24, RFC 2544 benchmark range).
pub const PUBLIC_BRIDGE: &str = "apiary-pub";
/// Bridge of the lab's private network (10.231.0.0/24); the coordinator listens here.
pub const PRIVATE_BRIDGE: &str = "apiary-priv";
/// The public network: 198.18.0.0/24.
pub const PUBLIC_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// The private network: 10.231.0.0/24.
pub const PRIVATE_NET: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 0);
/// Prefix length of both lab networks.
pub const PREFIX_LEN: u8 = 24;
/// Most hosts one lab may have (addresses .11 to .210 of each /24).
pub const MAX_HOSTS: usize = 200;
/// Where sockets, exec roots and pidfiles live by default: short, because a
/// unix socket path may have at most 107 bytes.
pub const DEFAULT_RUN_BASE: &str = "/run/apiary";
/// Longest unix socket path the kernel accepts (sun_path is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// Longest socket dockerd creates below its exec root (its containerd's debug socket).
const LONGEST_EXEC_SOCKET: &str = "containerd/containerd-debug.sock";
/// Names of the interfaces inside each host.
pub const PRIVATE_IFACE: &str = "eth0";
pub const PUBLIC_IFACE: &str = "eth1";

/// What the coordinator asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    /// Cluster name, e.g. "bees": names the namespaces and run directories.
    pub cluster: String,
    /// Host names in order, e.g. queenbee, workerbee-1, ...; the index gives the addresses.
    pub hosts: Vec<String>,
    /// The coordinator's state directory; the lab keeps its data under `state_dir/lab`.
    pub state_dir: PathBuf,
}

/// Everything about one lab host that can be known without looking at the machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    pub name: String,
    pub index: usize,
    /// Network namespace name: `<cluster>.<host>` (dots never occur in either name,
    /// so the split is unambiguous).
    pub netns: String,
    /// 198.18.0.(11+index) on `eth1`.
    pub public_ip: Ipv4Addr,
    /// 10.231.0.(11+index) on `eth0`.
    pub private_ip: Ipv4Addr,
    /// The host's root prefix: the agent writes etc/docker/daemon.json, etc/default/grub, ... below it.
    pub root_prefix: PathBuf,
    pub docker_socket: PathBuf,
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    pub log_dir: PathBuf,
    /// The host's data directory: `state_dir/lab/<host>` (root prefix, data root, logs).
    pub host_dir: PathBuf,
    /// The host's run directory: `<run base>/<cluster>/<host>` (socket, exec root, pidfiles, UTS file).
    pub run_dir: PathBuf,
    /// Bind mount that keeps the host's UTS namespace (its hostname) alive.
    pub uts_file: PathBuf,
    /// Root-namespace ends of the veth pairs (eth0 and eth1 inside).
    pub veth_private: String,
    pub veth_public: String,
}

impl HostPlan {
    /// dockerd's own configuration file, read with `--config-file`.
    pub fn daemon_json(&self) -> PathBuf {
        self.root_prefix.join("etc/docker/daemon.json")
    }
    /// dockerd's own pidfile (`--pidfile`); apiary keeps its own in [`HostPlan::pid_file`].
    pub fn docker_pidfile(&self) -> PathBuf {
        self.run_dir.join("docker.pid")
    }
    /// Start wrapper that mounts the cgroup v1 controllers and execs its arguments.
    pub fn wrapper(&self) -> PathBuf {
        self.run_dir.join("in-host.sh")
    }
    pub fn pid_dir(&self) -> PathBuf {
        self.run_dir.join("pids")
    }
    /// apiary's pidfile for process `name` started in this host.
    pub fn pid_file(&self, name: &str) -> PathBuf {
        self.pid_dir().join(format!("{name}.pid"))
    }
    /// stdout and stderr of process `name`.
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }
    /// `/run/netns/<netns>`, the file `ip netns` keeps the namespace alive with.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
}

/// Address `.(11+index)` in `net`.
pub fn host_addr(net: Ipv4Addr, index: usize) -> Ipv4Addr {
    let o = net.octets();
    // index < MAX_HOSTS is checked by the planner, so this stays inside the /24.
    Ipv4Addr::new(o[0], o[1], o[2], (10 + index + 1) as u8)
}

/// The bridge address, `.1`, of `net`.
pub fn bridge_addr(net: Ipv4Addr) -> Ipv4Addr {
    let o = net.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 1)
}

/// Cluster names: apiary's one name rule (`apiary_api::names`), and the
/// lab's own budget on top: at most 16 characters, starting with a letter,
/// because the name prefixes the lab's bridges and interface names (15
/// bytes at most in Linux).
pub fn validate_cluster(name: &str) -> Result<(), LabError> {
    let bad = |reason: &str| LabError::InvalidName {
        what: "cluster",
        name: name.to_string(),
        reason: reason.to_string(),
    };
    ClusterName::parse(name).map_err(|e| bad(e.reason))?;
    if name.len() > 16 {
        return Err(bad(
            "use 1 to 16 characters (the lab's bridge names carry it)",
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(bad("start with a lowercase letter"));
    }
    Ok(())
}

/// Host names: apiary's one name rule (`apiary_api::names`: a hostname
/// label of `a-z 0-9 -`), and the lab's own budget on top: at most 32
/// characters, since a host's name is a path component and part of its
/// processes' names.
pub fn validate_host(name: &str) -> Result<(), LabError> {
    let bad = |reason: &str| LabError::InvalidName {
        what: "host",
        name: name.to_string(),
        reason: reason.to_string(),
    };
    NodeName::parse(name).map_err(|e| bad(e.reason))?;
    if name.len() > 32 {
        return Err(bad(
            "use 1 to 32 characters (the lab's paths and process names carry it)",
        ));
    }
    Ok(())
}

/// Names of processes started in a host (pidfile and log names).
pub fn validate_process_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(LabError::InvalidProcessName(name.to_string()))
    }
}

/// The lab's data directory under the coordinator's state directory.
pub fn lab_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("lab")
}

/// The cluster's run directory, `<run base>/<cluster>`.
pub fn cluster_run_dir(run_base: &Path, cluster: &str) -> PathBuf {
    run_base.join(cluster)
}

/// Plans one host. `index` must be below [`MAX_HOSTS`]; names must be valid.
pub fn plan_host(
    cluster: &str,
    name: &str,
    index: usize,
    state_dir: &Path,
    run_base: &Path,
) -> HostPlan {
    let host_dir = lab_dir(state_dir).join(name);
    let run_dir = cluster_run_dir(run_base, cluster).join(name);
    HostPlan {
        name: name.to_string(),
        index,
        netns: format!("{cluster}.{name}"),
        public_ip: host_addr(PUBLIC_NET, index),
        private_ip: host_addr(PRIVATE_NET, index),
        root_prefix: host_dir.join("root"),
        docker_socket: run_dir.join("docker.sock"),
        data_root: host_dir.join("docker"),
        exec_root: run_dir.join("exec"),
        log_dir: host_dir.join("logs"),
        uts_file: run_dir.join("uts"),
        veth_private: format!("ap{index}-priv"),
        veth_public: format!("ap{index}-pub"),
        host_dir,
        run_dir,
    }
}

/// Validates a spec and plans every host.
pub fn plan(spec: &LabSpec, run_base: &Path) -> Result<Vec<HostPlan>, LabError> {
    validate_cluster(&spec.cluster)?;
    if spec.hosts.len() > MAX_HOSTS {
        return Err(LabError::TooManyHosts {
            count: spec.hosts.len(),
            max: MAX_HOSTS,
        });
    }
    let mut hosts: Vec<HostPlan> = Vec::with_capacity(spec.hosts.len());
    for (index, name) in spec.hosts.iter().enumerate() {
        validate_host(name)?;
        if hosts.iter().any(|h| &h.name == name) {
            return Err(LabError::DuplicateHost(name.clone()));
        }
        let host = plan_host(&spec.cluster, name, index, &spec.state_dir, run_base);
        check_socket_len(&host)?;
        hosts.push(host);
    }
    Ok(hosts)
}

fn check_socket_len(host: &HostPlan) -> Result<(), LabError> {
    for path in [
        host.docker_socket.clone(),
        host.exec_root.join(LONGEST_EXEC_SOCKET),
    ] {
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(LabError::PathTooLong {
                path,
                len,
                max: MAX_SOCKET_PATH,
            });
        }
    }
    Ok(())
}

/// Splits a netns name back into (cluster, host) if it is one of ours.
pub fn parse_netns(netns: &str) -> Option<(&str, &str)> {
    let (cluster, host) = netns.split_once('.')?;
    (validate_cluster(cluster).is_ok() && validate_host(host).is_ok()).then_some((cluster, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hosts: &[&str]) -> LabSpec {
        LabSpec {
            cluster: "bees".into(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            state_dir: PathBuf::from("/var/lib/apiary"),
        }
    }

    #[test]
    fn addresses_follow_the_index() {
        let hosts = plan(
            &spec(&["queenbee", "workerbee-1", "workerbee-2"]),
            Path::new(DEFAULT_RUN_BASE),
        )
        .expect("valid");
        assert_eq!(hosts[0].public_ip, Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(hosts[0].private_ip, Ipv4Addr::new(10, 231, 0, 11));
        assert_eq!(hosts[2].private_ip, Ipv4Addr::new(10, 231, 0, 13));
        assert_eq!(bridge_addr(PRIVATE_NET), Ipv4Addr::new(10, 231, 0, 1));
        assert_eq!(
            host_addr(PRIVATE_NET, MAX_HOSTS - 1),
            Ipv4Addr::new(10, 231, 0, 210)
        );
    }

    #[test]
    fn paths_and_names() {
        let h = &plan(
            &spec(&["queenbee", "workerbee-1"]),
            Path::new("/run/apiary"),
        )
        .expect("valid")[1];
        assert_eq!(h.netns, "bees.workerbee-1");
        assert_eq!(h.veth_private, "ap1-priv");
        assert_eq!(h.veth_public, "ap1-pub");
        assert_eq!(h.run_dir, Path::new("/run/apiary/bees/workerbee-1"));
        assert_eq!(
            h.docker_socket,
            Path::new("/run/apiary/bees/workerbee-1/docker.sock")
        );
        assert_eq!(h.exec_root, Path::new("/run/apiary/bees/workerbee-1/exec"));
        assert_eq!(h.uts_file, Path::new("/run/apiary/bees/workerbee-1/uts"));
        assert_eq!(h.host_dir, Path::new("/var/lib/apiary/lab/workerbee-1"));
        assert_eq!(
            h.daemon_json(),
            Path::new("/var/lib/apiary/lab/workerbee-1/root/etc/docker/daemon.json")
        );
        assert_eq!(
            h.data_root,
            Path::new("/var/lib/apiary/lab/workerbee-1/docker")
        );
        assert_eq!(
            h.pid_file("agent"),
            Path::new("/run/apiary/bees/workerbee-1/pids/agent.pid")
        );
        assert_eq!(
            h.log_file("agent"),
            Path::new("/var/lib/apiary/lab/workerbee-1/logs/agent.log")
        );
        assert_eq!(parse_netns(&h.netns), Some(("bees", "workerbee-1")));
        assert_eq!(parse_netns("other"), None);
        assert_eq!(parse_netns("Bad.x"), None);
    }

    #[test]
    fn long_state_dirs_do_not_reach_socket_paths() {
        let mut s = spec(&["queenbee"]);
        s.state_dir = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
        let h = &plan(&s, Path::new(DEFAULT_RUN_BASE)).expect("valid")[0];
        assert!(h.docker_socket.as_os_str().len() < 60);
    }

    #[test]
    fn refuses_bad_names() {
        for bad in [
            "",
            "../etc",
            "a/b",
            "Queen",
            "-a",
            "a-",
            "a.b",
            "a b",
            &"x".repeat(33),
        ] {
            assert!(
                matches!(
                    plan(&spec(&[bad]), Path::new(DEFAULT_RUN_BASE)),
                    Err(LabError::InvalidName { what: "host", .. })
                ),
                "{bad:?} accepted"
            );
        }
        for bad in ["", "1bees", "bees.x", "bees/x", "..", &"b".repeat(17)] {
            let mut s = spec(&["a"]);
            s.cluster = bad.to_string();
            assert!(
                matches!(
                    plan(&s, Path::new(DEFAULT_RUN_BASE)),
                    Err(LabError::InvalidName {
                        what: "cluster",
                        ..
                    })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            plan(&spec(&["a", "b", "a"]), Path::new(DEFAULT_RUN_BASE)),
            Err(LabError::DuplicateHost(h)) if h == "a"
        ));
        let many: Vec<String> = (0..=MAX_HOSTS).map(|i| format!("h{i}")).collect();
        let s = LabSpec {
            hosts: many,
            ..spec(&[])
        };
        assert!(matches!(
            plan(&s, Path::new(DEFAULT_RUN_BASE)),
            Err(LabError::TooManyHosts {
                count: 201,
                max: 200
            })
        ));
        assert!(validate_process_name("agent").is_ok());
        assert!(validate_process_name("../x").is_err());
    }

    #[test]
    fn refuses_socket_paths_that_are_too_long() {
        let base = PathBuf::from(format!("/run/{}", "r".repeat(60)));
        let s = spec(&[&"h".repeat(32)]);
        assert!(matches!(plan(&s, &base), Err(LabError::PathTooLong { .. })));
        // the longest names fit under the default base
        let mut s = spec(&[&"h".repeat(32)]);
        s.cluster = "c".repeat(16);
        assert!(plan(&s, Path::new(DEFAULT_RUN_BASE)).is_ok());
    }
}
