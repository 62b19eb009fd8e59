//! Lab logic against an in-memory machine: which commands run, in which
//! order, and what is left alone — no root needed.

use super::*;
use crate::ops::{ProcInfo, Sig};
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
struct Machine {
    commands: Vec<String>,
    spawned: Vec<(String, PathBuf)>,
    procs: HashMap<u32, ProcInfo>,
    ns: HashMap<PathBuf, u64>,
    mounts: Vec<PathBuf>,
    root_links: String,
    netns_links: HashMap<String, String>,
    routes: String,
    hostname: HashMap<PathBuf, String>,
    signals: Vec<(u32, Sig)>,
    next_pid: u32,
}

#[derive(Debug, Default)]
struct FakeOps {
    m: Mutex<Machine>,
}

impl FakeOps {
    fn m(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.m.lock().expect("fake machine")
    }
}

impl HostOps for FakeOps {
    fn run(&self, cmd: &Cmd) -> std::io::Result<CmdOutput> {
        let mut m = self.m();
        let line = cmd.to_string();
        m.commands.push(line.clone());
        let a: Vec<&str> = cmd.args.iter().map(String::as_str).collect();
        Ok(match (cmd.program.as_str(), a.as_slice()) {
            ("ip", ["-j", "-4", "route", "show", "table", "all"]) => {
                CmdOutput::ok(m.routes.clone())
            }
            ("ip", ["-j", "-d", "addr", "show"]) => CmdOutput::ok(m.root_links.clone()),
            ("ip", ["-n", ns, "-j", "-d", "addr", "show"]) => {
                CmdOutput::ok(m.netns_links.get(*ns).cloned().unwrap_or_default())
            }
            ("ip", ["netns", "add", ns]) => {
                let n = m.ns.len() as u64 + 1000;
                m.ns.insert(Path::new("/run/netns").join(ns), n);
                CmdOutput::ok("")
            }
            ("unshare", [uts, "hostname", name]) => {
                let f = PathBuf::from(uts.trim_start_matches("--uts="));
                m.mounts.push(f.clone());
                m.hostname.insert(f, name.to_string());
                CmdOutput::ok("")
            }
            ("nsenter", [uts, "hostname"]) => {
                let f = PathBuf::from(uts.trim_start_matches("--uts="));
                CmdOutput::ok(format!(
                    "{}\n",
                    m.hostname.get(&f).cloned().unwrap_or_default()
                ))
            }
            _ => CmdOutput::ok(""),
        })
    }
    fn spawn_detached(&self, cmd: &Cmd, log: &Path) -> std::io::Result<u32> {
        let mut m = self.m();
        m.next_pid += 1;
        let pid = 5000 + m.next_pid;
        m.spawned.push((cmd.to_string(), log.to_path_buf()));
        m.procs.insert(
            pid,
            ProcInfo {
                pid,
                ppid: 1,
                state: 'S',
                start_time: 77,
                netns_inode: None,
                cmdline: cmd.args.join(" "),
            },
        );
        Ok(pid)
    }
    fn process(&self, pid: u32) -> Option<ProcInfo> {
        self.m().procs.get(&pid).cloned()
    }
    fn processes(&self) -> std::io::Result<Vec<ProcInfo>> {
        Ok(self.m().procs.values().cloned().collect())
    }
    fn signal(&self, pid: u32, sig: Sig) -> std::io::Result<()> {
        let mut m = self.m();
        m.signals.push((pid, sig));
        m.procs.remove(&pid);
        Ok(())
    }
    fn ns_inode(&self, path: &Path) -> Option<u64> {
        self.m().ns.get(path).copied()
    }
    fn mount_points(&self) -> std::io::Result<Vec<PathBuf>> {
        Ok(self.m().mounts.clone())
    }
    fn unmount(&self, path: &Path) -> std::io::Result<()> {
        self.m().mounts.retain(|p| p != path);
        self.m().commands.push(format!("umount {}", path.display()));
        Ok(())
    }
    fn is_root(&self) -> bool {
        true
    }
    fn has_program(&self, _: &str) -> bool {
        true
    }
}

const BRIDGES: &str = r#"[
  {"ifname":"apiary-pub","flags":["UP"],"ifalias":"apiary-lab cluster=bees","linkinfo":{"info_kind":"bridge"}},
  {"ifname":"apiary-priv","flags":["UP"],"ifalias":"apiary-lab cluster=bees","linkinfo":{"info_kind":"bridge"}}]"#;

struct Fixture {
    _dir: tempfile::TempDir,
    lab: Lab,
    ops: Arc<FakeOps>,
}

fn fixture(hosts: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let ops = Arc::new(FakeOps::default());
    ops.m().root_links = BRIDGES.into();
    let opts = LabOptions {
        run_base: dir.path().join("run"),
        busybox: dir.path().join("busybox"),
        stop_grace: Duration::from_millis(200),
        dockerd_stop_grace: Duration::from_millis(200),
        ..LabOptions::default()
    };
    let lab = Lab::with_options(
        LabSpec {
            cluster: "bees".into(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            state_dir: dir.path().join("state"),
        },
        opts,
        ops.clone(),
    )
    .expect("lab");
    Fixture {
        _dir: dir,
        lab,
        ops,
    }
}

#[tokio::test]
async fn changing_the_machine_needs_the_lock() {
    let f = fixture(&["queenbee"]);
    let h = f.lab.hosts()[0].clone();
    assert!(matches!(
        f.lab.ensure_network().await,
        Err(LabError::NotLocked { .. })
    ));
    assert!(matches!(
        f.lab.ensure_host(&h).await,
        Err(LabError::NotLocked { .. })
    ));
    assert!(matches!(
        f.lab.teardown().await,
        Err(LabError::NotLocked { .. })
    ));
    assert!(matches!(
        f.lab.spawn_in_host(&h, "agent", &["agent".into()], &[]),
        Err(LabError::NotLocked { .. })
    ));
    assert!(
        f.ops.m().commands.is_empty(),
        "nothing ran without the lock"
    );
    let _lock = f.lab.lock().expect("lock");
    assert!(f.lab.ensure_network().await.is_ok());
}

#[tokio::test]
async fn network_checks_routes_first_and_refuses_collisions() {
    let f = fixture(&["queenbee"]);
    let _lock = f.lab.lock().expect("lock");
    f.ops.m().root_links = "[]".into();
    f.ops.m().routes = r#"[{"dst":"10.231.0.0/16","dev":"eth0","flags":[]}]"#.into();
    let err = f.lab.ensure_network().await.expect_err("collision");
    assert!(matches!(err, LabError::RouteCollision { .. }), "{err}");
    assert!(err.to_string().contains("10.231.0.0/16 dev eth0"), "{err}");
    assert_eq!(f.ops.m().commands, vec!["ip -j -4 route show table all"]);

    f.ops.m().routes =
        r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]}]"#.into();
    f.ops.m().commands.clear();
    let changes = f.lab.ensure_network().await.expect("network");
    assert_eq!(changes.len(), 8);
    let cmds = f.ops.m().commands.clone();
    assert_eq!(cmds[0], "ip -j -4 route show table all");
    assert_eq!(cmds[1], "ip -j -d addr show");
    assert_eq!(cmds[2], "ip link add name apiary-pub type bridge");
    assert!(
        !cmds.iter().any(|c| c.contains("default")),
        "never a default route"
    );
}

#[tokio::test]
async fn host_is_created_then_left_alone() {
    let f = fixture(&["queenbee", "workerbee-1"]);
    let _lock = f.lab.lock().expect("lock");
    let h = f.lab.hosts()[1].clone();
    let (changes, pid) = f.lab.ensure_host_sync(&h).expect("host");
    let m = f.ops.m();
    assert_eq!(m.commands[0], "ip -j -d addr show");
    assert!(
        m.commands
            .contains(&"ip netns add bees.workerbee-1".to_string())
    );
    assert!(m.commands.contains(&format!(
        "unshare --uts={} hostname workerbee-1",
        h.uts_file.display()
    )));
    assert!(
        changes.iter().any(|c| c.starts_with("dockerd started")),
        "{changes:?}"
    );
    assert_eq!(m.spawned.len(), 1);
    let (cmd, log) = &m.spawned[0];
    assert!(cmd.starts_with(
        "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 ip netns exec bees.workerbee-1 nsenter"
    ));
    assert_eq!(log, &h.log_dir.join("dockerd.log"));
    drop(m);
    // files the host needs
    assert_eq!(
        std::fs::read_to_string(h.daemon_json()).expect("daemon.json"),
        "{}\n"
    );
    assert_eq!(
        std::fs::read_to_string(h.wrapper()).expect("wrapper"),
        host::wrapper_script()
    );
    assert_eq!(
        std::fs::read_to_string(h.pid_file("dockerd")).expect("pidfile"),
        format!("{pid} 77\n")
    );
    assert!(h.data_root.is_dir() && h.log_dir.is_dir());
    assert_eq!(f.lab.process_pid(&h, "dockerd"), Some(pid));

    // The machine now looks complete: nothing changes, dockerd is not started twice.
    {
        let mut m = f.ops.m();
        m.root_links = r#"[{"ifname":"apiary-pub"},{"ifname":"apiary-priv"},
                {"ifname":"ap1-priv","flags":["UP"],"master":"apiary-priv"},
                {"ifname":"ap1-pub","flags":["UP"],"master":"apiary-pub"}]"#
            .into();
        m.netns_links.insert(
            h.netns.clone(),
            r#"[{"ifname":"lo","flags":["UP"]},
                {"ifname":"eth0","flags":["UP"],"addr_info":[{"family":"inet","local":"10.231.0.12","prefixlen":24}]},
                {"ifname":"eth1","flags":["UP"],"addr_info":[{"family":"inet","local":"198.18.0.12","prefixlen":24}]}]"#
                .into(),
        );
        m.commands.clear();
    }
    std::fs::write(h.daemon_json(), "{\"debug\":true}").expect("agent writes daemon.json");
    let (changes, again) = f.lab.ensure_host_sync(&h).expect("host");
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(again, pid);
    assert_eq!(f.ops.m().spawned.len(), 1);
    assert_eq!(
        std::fs::read_to_string(h.daemon_json()).expect("daemon.json"),
        "{\"debug\":true}",
        "the agent's daemon.json is kept"
    );

    // dockerd dies (or is a zombie): the next reconcile restarts it, and
    // first removes the pidfile dockerd itself left (it names the zombie,
    // which dockerd would take for a running daemon and refuse to start).
    f.ops.m().procs.get_mut(&pid).expect("proc").state = 'Z';
    std::fs::write(h.docker_pidfile(), pid.to_string()).expect("dockerd's pidfile");
    assert_eq!(f.lab.process_pid(&h, "dockerd"), None);
    let (changes, new_pid) = f.lab.ensure_host_sync(&h).expect("host");
    assert_ne!(new_pid, pid);
    assert_eq!(changes, vec![format!("dockerd restarted (pid {new_pid})")]);
    assert!(
        !h.docker_pidfile().exists(),
        "the dead dockerd's pidfile is left"
    );
}

#[test]
fn host_needs_the_network_first() {
    let f = fixture(&["queenbee"]);
    f.ops.m().root_links = "[]".into();
    let h = f.lab.hosts()[0].clone();
    let err = f.lab.ensure_host_sync(&h).expect_err("no bridges");
    assert!(matches!(err, LabError::NetworkNotReady { .. }), "{err}");
    assert!(err.to_string().contains("ensure_network"), "{err}");
    assert!(f.ops.m().spawned.is_empty());
}

#[test]
fn dockerd_without_pidfile_is_adopted_not_doubled() {
    let f = fixture(&["queenbee"]);
    let h = f.lab.hosts()[0].clone();
    let cmdline = host::dockerd(&h).args.join(" ");
    f.ops.m().procs.insert(
        4300,
        ProcInfo {
            pid: 4300,
            ppid: 1,
            state: 'S',
            start_time: 9,
            netns_inode: None,
            cmdline,
        },
    );
    let (changes, pid) = f.lab.ensure_host_sync(&h).expect("host");
    assert_eq!(pid, 4300);
    assert!(
        changes.iter().any(|c| c.starts_with("dockerd adopted")),
        "{changes:?}"
    );
    assert!(f.ops.m().spawned.is_empty());
    assert_eq!(f.lab.process_pid(&h, "dockerd"), Some(4300));
}

#[tokio::test]
async fn recycled_pid_is_not_ours() {
    let f = fixture(&["queenbee"]);
    let h = f.lab.hosts()[0].clone();
    std::fs::create_dir_all(h.pid_dir()).expect("dir");
    std::fs::write(h.pid_file("agent"), "4242 10\n").expect("pidfile");
    f.ops.m().procs.insert(
        4242,
        ProcInfo {
            pid: 4242,
            ppid: 1,
            state: 'S',
            start_time: 11,
            netns_inode: None,
            cmdline: "something else".into(),
        },
    );
    assert_eq!(f.lab.process_pid(&h, "agent"), None);
    f.ops.m().procs.get_mut(&4242).expect("p").start_time = 10;
    assert_eq!(f.lab.process_pid(&h, "agent"), Some(4242));
}

#[tokio::test]
async fn spawn_needs_a_ready_host_and_is_idempotent() {
    let f = fixture(&["queenbee"]);
    let _lock = f.lab.lock().expect("lock");
    let h = f.lab.hosts()[0].clone();
    let argv = vec![
        "/usr/bin/agent".to_string(),
        "--coordinator".into(),
        "10.231.0.1:7443".into(),
    ];
    let env = vec![("RUST_LOG".to_string(), "info".to_string())];
    assert!(matches!(
        f.lab.spawn_in_host(&h, "agent", &argv, &env),
        Err(LabError::HostNotReady { .. })
    ));
    for bad in ["../agent", "dockerd"] {
        assert!(matches!(
            f.lab.spawn_in_host(&h, bad, &argv, &env),
            Err(LabError::InvalidProcessName(_))
        ));
    }
    f.lab.ensure_host_sync(&h).expect("host");
    let pid = f
        .lab
        .spawn_in_host(&h, "agent", &argv, &env)
        .expect("spawn");
    assert_eq!(
        f.lab
            .spawn_in_host(&h, "agent", &argv, &env)
            .expect("again"),
        pid
    );
    let m = f.ops.m();
    let (cmd, log) = m.spawned.last().expect("spawned");
    assert_eq!(
        cmd,
        &format!(
            "RUST_LOG=info ip netns exec bees.queenbee nsenter --uts={} -- /bin/sh {} /usr/bin/agent --coordinator 10.231.0.1:7443",
            h.uts_file.display(),
            h.wrapper().display()
        )
    );
    assert_eq!(log, &h.log_file("agent"));
    assert_eq!(m.spawned.len(), 2, "dockerd and one agent");
}

#[tokio::test]
async fn teardown_stops_sweeps_unmounts_and_removes() {
    let f = fixture(&["queenbee"]);
    let _lock = f.lab.lock().expect("lock");
    let h = f.lab.hosts()[0].clone();
    f.lab.ensure_network().await.expect("network");
    f.lab.ensure_host_sync(&h).expect("host");
    let agent = f
        .lab
        .spawn_in_host(&h, "agent", &["agent".into()], &[])
        .expect("spawn");
    let dockerd = f.lab.process_pid(&h, "dockerd").expect("dockerd");
    // a container shim found by its command line, and an unrelated process
    let inode = f.ops.ns_inode(&h.netns_path());
    {
        let mut m = f.ops.m();
        let shim = format!(
            "containerd-shim-runc-v2 -address {}/containerd/containerd.sock",
            h.exec_root.display()
        );
        for (pid, cmd, ns) in [
            (900, shim.as_str(), None),
            (901, "sshd", Some(1)),
            (902, "dhclient", inode),
        ] {
            m.procs.insert(
                pid,
                ProcInfo {
                    pid,
                    ppid: 1,
                    state: 'S',
                    start_time: 1,
                    netns_inode: ns,
                    cmdline: cmd.into(),
                },
            );
        }
        m.root_links = r#"[
          {"ifname":"apiary-pub","flags":["UP"],"ifalias":"apiary-lab cluster=bees","linkinfo":{"info_kind":"bridge"}},
          {"ifname":"apiary-priv","flags":["UP"],"ifalias":"apiary-lab cluster=bees","linkinfo":{"info_kind":"bridge"}},
          {"ifname":"ap0-priv","flags":["UP"],"master":"apiary-priv"},
          {"ifname":"eth0","flags":["UP"]}]"#
            .into();
        m.commands.clear();
    }
    let report = f.lab.teardown().await;
    let m = f.ops.m();
    let report = report.expect("teardown");
    assert!(
        report
            .processes
            .iter()
            .any(|p| p == &format!("queenbee: agent pid {agent}"))
    );
    assert!(
        report
            .processes
            .iter()
            .any(|p| p == &format!("queenbee: dockerd pid {dockerd}"))
    );
    assert!(report.processes.iter().any(|p| p.contains("pid 900")));
    assert!(report.processes.iter().any(|p| p.contains("pid 902")));
    assert!(m.procs.contains_key(&901), "unrelated process left alone");
    // agent before dockerd, each SIGTERM first
    let agent_at = m
        .signals
        .iter()
        .position(|s| *s == (agent, Sig::Term))
        .expect("agent term");
    let dockerd_at = m
        .signals
        .iter()
        .position(|s| *s == (dockerd, Sig::Term))
        .expect("dockerd term");
    assert!(agent_at < dockerd_at);
    assert_eq!(report.mounts, vec![h.uts_file.clone()]);
    assert!(
        m.commands
            .contains(&"ip netns del bees.queenbee".to_string())
    );
    assert_eq!(report.netns, vec!["bees.queenbee".to_string()]);
    assert!(m.commands.contains(&"ip link del ap0-priv".to_string()));
    assert!(m.commands.contains(&"ip link del apiary-pub".to_string()));
    assert!(!m.commands.contains(&"ip link del eth0".to_string()));
    assert!(!h.host_dir.exists() && !h.run_dir.exists() && !f.lab.lab_dir().exists());
    let text = report.to_string();
    assert!(text.starts_with("lab teardown removed:"), "{text}");
    assert!(text.contains("directories"), "{text}");
}

#[test]
fn unknown_hosts_are_refused() {
    let f = fixture(&["queenbee"]);
    let other = fixture(&["queenbee", "drone"]);
    let stranger = other.lab.hosts()[1].clone();
    assert!(matches!(f.lab.planned(&stranger), Err(LabError::UnknownHost(h)) if h == "drone"));
    assert_eq!(Lab::coordinator_ip(), Ipv4Addr::new(10, 231, 0, 1));
}

#[test]
fn empty_report_says_so() {
    assert_eq!(
        TeardownReport::default().to_string(),
        "lab teardown: nothing to remove"
    );
}
