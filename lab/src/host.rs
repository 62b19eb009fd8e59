//! Command lines that enter a lab host, built without I/O.

use crate::ops::Cmd;
use crate::plan::HostPlan;

/// The cgroup v1 controllers the wrapper mounts (what this machine's root namespace has).
pub const CGROUP_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "none,name=systemd",
];

/// The start wrapper every long-running host process goes through.
///
/// `ip netns exec` gives the process a mount namespace of its own with a
/// fresh /sys (so /sys/class/net shows the host's interfaces), and that hides
/// the cgroup v1 mounts dockerd and runc need; the wrapper mounts a tmpfs on
/// /sys/fs/cgroup and the v1 controllers again, then execs its arguments (so
/// the pid stays the program's). The mounts live and die with that mount namespace.
pub fn wrapper_script() -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         # apiary lab: run a host process with the cgroup v1 controllers that `ip netns exec` hides.\n\
         set -e\n\
         mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup\n\
         for c in",
    );
    for c in CGROUP_CONTROLLERS {
        s.push(' ');
        s.push_str(c);
    }
    s.push_str(
        "; do\n  d=${c#none,name=}\n  mkdir -p /sys/fs/cgroup/$d\n  mount -t cgroup -o $c cgroup /sys/fs/cgroup/$d\ndone\n\
         exec \"$@\"\n",
    );
    s
}

/// `argv` run inside the host: its network namespace (through `ip netns exec`,
/// which also remounts /sys for it) and its UTS namespace (hostname), through
/// the cgroup wrapper when `wrapped`.
pub fn in_host(host: &HostPlan, wrapped: bool, argv: &[String]) -> Cmd {
    let mut c = Cmd::new("ip")
        .args(["netns", "exec", host.netns.as_str(), "nsenter"])
        .arg(format!("--uts={}", host.uts_file.display()))
        .arg("--");
    if wrapped {
        c = c.arg("/bin/sh").arg(host.wrapper().display().to_string());
    }
    c.args(argv.iter().cloned())
}

/// The host's dockerd: its own data root, exec root, pidfile, socket, and the
/// daemon.json under the host's root prefix (which the agent manages).
pub fn dockerd(host: &HostPlan) -> Cmd {
    let argv: Vec<String> = vec![
        "dockerd".into(),
        "--data-root".into(),
        host.data_root.display().to_string(),
        "--exec-root".into(),
        host.exec_root.display().to_string(),
        "--pidfile".into(),
        host.docker_pidfile().display().to_string(),
        "-H".into(),
        format!("unix://{}", host.docker_socket.display()),
        "--config-file".into(),
        host.daemon_json().display().to_string(),
    ];
    // Swarm tasks must use the images loaded into the engine: there is no registry.
    in_host(host, true, &argv).env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
}

/// Creates the persistent UTS namespace bound to the host's UTS file and names it.
pub fn create_uts(host: &HostPlan) -> Cmd {
    Cmd::new("unshare")
        .arg(format!("--uts={}", host.uts_file.display()))
        .args(["hostname", host.name.as_str()])
}

/// Reads (no `name`) or sets the hostname in the host's UTS namespace.
pub fn uts_hostname(host: &HostPlan, name: Option<&str>) -> Cmd {
    Cmd::new("nsenter")
        .arg(format!("--uts={}", host.uts_file.display()))
        .arg("hostname")
        .args(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan_host;
    use std::path::Path;

    fn host() -> HostPlan {
        plan_host(
            "bees",
            "queenbee",
            0,
            Path::new("/s"),
            Path::new("/run/apiary"),
        )
    }

    #[test]
    fn dockerd_command_line() {
        assert_eq!(
            dockerd(&host()).to_string(),
            "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 ip netns exec bees.queenbee nsenter \
             --uts=/run/apiary/bees/queenbee/uts -- /bin/sh /run/apiary/bees/queenbee/in-host.sh \
             dockerd --data-root /s/lab/queenbee/docker --exec-root /run/apiary/bees/queenbee/exec \
             --pidfile /run/apiary/bees/queenbee/docker.pid -H unix:///run/apiary/bees/queenbee/docker.sock \
             --config-file /s/lab/queenbee/root/etc/docker/daemon.json"
        );
    }

    #[test]
    fn uts_commands() {
        assert_eq!(
            create_uts(&host()).to_string(),
            "unshare --uts=/run/apiary/bees/queenbee/uts hostname queenbee"
        );
        assert_eq!(
            uts_hostname(&host(), None).to_string(),
            "nsenter --uts=/run/apiary/bees/queenbee/uts hostname"
        );
    }

    #[test]
    fn wrapper_mounts_every_controller_then_execs() {
        let s = wrapper_script();
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup\n"));
        assert!(s.contains(
            "for c in cpu cpuacct cpuset memory devices freezer blkio pids none,name=systemd; do"
        ));
        assert!(s.trim_end().ends_with("exec \"$@\""));
    }
}
