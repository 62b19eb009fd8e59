//! # apiary-lab: the host plumbing of the `lab` provider
//!
//! The lab turns this one machine into a small fleet of "hosts" so apiary can
//! be run and tested for real without a cloud: real Docker engines, real
//! Swarm, real VXLAN, real nftables — minus the hypervisor. The coordinator's
//! lab provider drives this crate; nothing here knows about enrollment,
//! certificates or gRPC.
//!
//! ## Model
//!
//! - **Network.** Two bridges in the root namespace: `apiary-pub`
//!   (198.18.0.1/24, the "public" network, RFC 2544 benchmark range) and
//!   `apiary-priv` (10.231.0.1/24, the private network; the coordinator
//!   listens on [`Lab::coordinator_ip`]). No default route anywhere: nothing
//!   can leave the lab's ranges. The bridges carry an alias naming the cluster
//!   that owns them, so a second lab is refused instead of merged.
//! - **Hosts.** Host number `i` (its position in [`LabSpec::hosts`]) is the
//!   network namespace `<cluster>.<host>` with `eth0` = 10.231.0.(11+i)/24 on the
//!   private bridge and `eth1` = 198.18.0.(11+i)/24 on the public one (root-side
//!   veth ends `ap<i>-priv`, `ap<i>-pub`), `lo` up, and a persistent UTS
//!   namespace (a bind-mounted namespace file, like `ip netns` does for
//!   network namespaces) whose hostname is the host's name.
//! - **Engines.** Each host runs its own `dockerd`, started detached (own
//!   session) inside the host's namespaces through a wrapper that mounts the
//!   cgroup v1 controllers `ip netns exec` hides. Its data root, root prefix
//!   (where the agent writes `etc/docker/daemon.json`, GRUB defaults, ...)
//!   and logs live under `state_dir/lab/<host>`; its socket, exec root and
//!   pidfiles under the short `/run/apiary/<cluster>/<host>` (unix socket
//!   paths may have at most 107 bytes). See [`HostPlan`].
//! - **Processes.** [`Lab::spawn_in_host`] starts any program (the agent)
//!   the same way; every process the lab starts has a pidfile holding its pid
//!   and start time, so a recycled pid is never mistaken for ours, and a
//!   restarted coordinator adopts what runs ([`Lab::discover`]).
//! - **Images.** No registry: [`Lab::ensure_images`] writes a one-layer
//!   `docker load` archive of Debian's busybox-static (`lab/busybox:1`)
//!   directly with `tar` + `sha2`, caches it under `state_dir/lab/images`,
//!   and loads it into the engines that lack it, in parallel.
//! - **One lab per machine.** Bridge names and ranges are fixed, so every
//!   operation that creates or removes something requires the exclusive lock
//!   `/run/apiary/lab.lock` ([`Lab::lock`]) to be held by the calling process.
//! - **Side effects** go through [`ops::HostOps`] (commands, detached
//!   processes, the process table, signals, mounts); decisions are pure
//!   functions ([`net::plan_network`], [`net::plan_host_links`],
//!   [`procs::host_processes`], [`host::dockerd`]) tested without root.
//!
//! ```no_run
//! # async fn demo() -> Result<(), apiary_lab::LabError> {
//! use apiary_lab::{Lab, LabSpec};
//! let lab = Lab::new(LabSpec {
//!     cluster: "bees".into(),
//!     hosts: vec!["queenbee".into(), "workerbee-1".into()],
//!     state_dir: "/var/lib/apiary".into(),
//! })?;
//! let _lock = lab.lock()?; // blocks while another lab exists on this machine
//! lab.ensure_network().await?;
//! for h in lab.hosts() {
//!     lab.ensure_host(h).await?;
//! }
//! lab.ensure_images(&lab.hosts().iter().collect::<Vec<_>>()).await?;
//! let agent = vec!["/usr/local/bin/agent".to_string()];
//! lab.spawn_in_host(&lab.hosts()[0], "agent", &agent, &[])?;
//! println!("{}", lab.teardown().await?);
//! # Ok(()) }
//! ```
//!
//! ## Limitations
//!
//! - Needs root, iproute2, util-linux (`nsenter`, `unshare`, `setsid`),
//!   Debian's docker.io (20.10, API 1.41) and busybox-static. Never starts a
//!   dockerd in the root namespace.
//! - Written for cgroup v1 hosts (the wrapper mounts the v1 controllers); on a
//!   cgroup v2-only machine the wrapper would need a cgroup2 mount instead.
//! - Kernel facts of this machine, not of the lab: no IPVS (Swarm services
//!   need `--endpoint-mode dnsrr`, no routing mesh; host-mode publishing
//!   works) and no ESP/GCM (an encrypted overlay passes no traffic).
//! - The host's daemon.json must not set `hosts`, `data-root`, `exec-root` or
//!   `pidfile`: dockerd refuses options given both as flags and in the file.
//! - dockerd is restarted by [`Lab::ensure_host`] (the coordinator's
//!   reconcile loop) or by the in-process [`Lab::supervise_engines`] task;
//!   there is no supervisor outside the coordinator, so while no coordinator
//!   runs a dead engine stays dead.
//! - A coordinator killed between starting a process and writing its pidfile
//!   (a few microseconds) leaves it untracked: dockerd is then found by its
//!   command line and adopted; another process (the agent) would be started twice.
//! - At most [`plan::MAX_HOSTS`] hosts; one lab per machine.

pub mod engine;
mod error;
pub mod host;
pub mod image;
mod lock;
pub mod net;
pub mod ops;
pub mod plan;
pub mod procs;

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

pub use error::LabError;
pub use image::{BUSYBOX_IMAGE, ETCD_IMAGE, ImageArchive};
pub use lock::LabLock;
pub use ops::{Cmd, CmdOutput, HostOps, SystemOps};
pub use plan::{HostPlan, LabSpec, PRIVATE_BRIDGE, PUBLIC_BRIDGE};

const DOCKERD: &str = "dockerd";

/// Knobs with sensible defaults; tests point `run_base` at a temp dir.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Where sockets, exec roots, pidfiles and the lock live: keep it short.
    pub run_base: PathBuf,
    /// The statically linked busybox the lab image is made of.
    pub busybox: PathBuf,
    /// How long a starting dockerd may take to answer.
    pub engine_start_timeout: Duration,
    /// How long dockerd gets to stop its containers on teardown before SIGKILL.
    pub dockerd_stop_grace: Duration,
    /// How long other processes get between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            run_base: PathBuf::from(plan::DEFAULT_RUN_BASE),
            busybox: PathBuf::from("/bin/busybox"),
            engine_start_timeout: Duration::from_secs(60),
            dockerd_stop_grace: Duration::from_secs(40),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// What [`Lab::ensure_host`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostStatus {
    pub host: String,
    /// What had to be created or repaired; empty when the host was complete.
    pub changes: Vec<String>,
    pub dockerd_pid: u32,
    /// The engine's version as it answered.
    pub docker_version: String,
}

impl HostStatus {
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

/// A planned host found on the machine (see [`Lab::discover`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingHost {
    pub host: HostPlan,
    /// The network namespace exists.
    pub netns: bool,
    /// The UTS namespace (hostname) exists.
    pub uts: bool,
    pub dockerd_pid: Option<u32>,
    /// The engine answered `version` on its socket.
    pub engine_answers: bool,
    /// Live processes started through the lab, by name (dockerd included).
    pub processes: Vec<(String, u32)>,
}

impl ExistingHost {
    /// Whether nothing is missing for the host to be used (processes aside from dockerd).
    pub fn complete(&self) -> bool {
        self.netns && self.uts && self.engine_answers
    }
}

/// What [`Lab::teardown`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TeardownReport {
    /// "<host>: <name> pid <pid>" for processes stopped by pidfile, "<host>: pid <pid> (<cmd>)" for others.
    pub processes: Vec<String>,
    pub mounts: Vec<PathBuf>,
    pub netns: Vec<String>,
    pub links: Vec<String>,
    pub dirs: Vec<PathBuf>,
}

impl TeardownReport {
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
            && self.mounts.is_empty()
            && self.netns.is_empty()
            && self.links.is_empty()
            && self.dirs.is_empty()
    }

    fn merge(&mut self, other: TeardownReport) {
        self.processes.extend(other.processes);
        self.mounts.extend(other.mounts);
        self.netns.extend(other.netns);
        self.links.extend(other.links);
        self.dirs.extend(other.dirs);
    }
}

impl fmt::Display for TeardownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "lab teardown: nothing to remove");
        }
        writeln!(f, "lab teardown removed:")?;
        let mut section = |title: &str, items: Vec<String>| -> fmt::Result {
            if items.is_empty() {
                return Ok(());
            }
            writeln!(f, "  {title} ({}):", items.len())?;
            for i in items {
                writeln!(f, "    {i}")?;
            }
            Ok(())
        };
        section("processes stopped", self.processes.clone())?;
        section(
            "mounts",
            self.mounts
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        )?;
        section("network namespaces", self.netns.clone())?;
        section("links", self.links.clone())?;
        section(
            "directories",
            self.dirs.iter().map(|p| p.display().to_string()).collect(),
        )
    }
}

struct Inner {
    spec: LabSpec,
    hosts: Vec<HostPlan>,
    opts: LabOptions,
    ops: Arc<dyn HostOps>,
    /// Serializes root-namespace link changes (`ip netns add` sets up /run/netns on first use).
    net: tokio::sync::Mutex<()>,
}

/// A planned lab on this machine. Cheap to clone.
#[derive(Clone)]
pub struct Lab {
    inner: Arc<Inner>,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("cluster", &self.inner.spec.cluster)
            .field("hosts", &self.inner.hosts.len())
            .field("state_dir", &self.inner.spec.state_dir)
            .finish()
    }
}

/// Which package provides a program, for advice.
fn package_of(program: &str) -> &'static str {
    match program {
        "ip" => "iproute2",
        "dockerd" | "containerd" | "runc" => "docker.io",
        "busybox" => "busybox-static",
        "nft" => "nftables",
        _ => "util-linux",
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn remove_dir(path: &Path, removed: &mut Vec<PathBuf>, leftovers: &mut Vec<String>) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => removed.push(path.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => leftovers.push(format!("directory {}: {e}", path.display())),
    }
}

impl Lab {
    /// Validates the spec and plans every host; touches nothing.
    pub fn new(spec: LabSpec) -> Result<Lab, LabError> {
        Lab::with_options(spec, LabOptions::default(), Arc::new(SystemOps))
    }

    /// Like [`Lab::new`] with other options or another [`HostOps`] (tests).
    pub fn with_options(
        mut spec: LabSpec,
        opts: LabOptions,
        ops: Arc<dyn HostOps>,
    ) -> Result<Lab, LabError> {
        // Absolute paths: they end up in command lines that teardown matches on.
        spec.state_dir = std::path::absolute(&spec.state_dir)
            .map_err(|e| LabError::io("resolve", &spec.state_dir, e))?;
        let hosts = plan::plan(&spec, &opts.run_base)?;
        Ok(Lab {
            inner: Arc::new(Inner {
                spec,
                hosts,
                opts,
                ops,
                net: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn spec(&self) -> &LabSpec {
        &self.inner.spec
    }

    pub fn hosts(&self) -> &[HostPlan] {
        &self.inner.hosts
    }

    pub fn host(&self, name: &str) -> Option<&HostPlan> {
        self.inner.hosts.iter().find(|h| h.name == name)
    }

    /// The private bridge's address: the coordinator listens here.
    pub fn coordinator_ip() -> Ipv4Addr {
        plan::bridge_addr(plan::PRIVATE_NET)
    }

    /// The public bridge's address (the machine as seen from the public network).
    pub fn public_bridge_ip() -> Ipv4Addr {
        plan::bridge_addr(plan::PUBLIC_NET)
    }

    /// `state_dir/lab`.
    pub fn lab_dir(&self) -> PathBuf {
        plan::lab_dir(&self.inner.spec.state_dir)
    }

    /// `<run base>/<cluster>`.
    pub fn run_dir(&self) -> PathBuf {
        plan::cluster_run_dir(&self.inner.opts.run_base, &self.inner.spec.cluster)
    }

    pub fn lock_path(&self) -> PathBuf {
        self.inner.opts.run_base.join("lab.lock")
    }

    /// Takes the machine's lab lock, waiting as long as another process holds
    /// it (blocking: from async code call it in `spawn_blocking`). Held until
    /// the guard and its clones are dropped.
    pub fn lock(&self) -> Result<LabLock, LabError> {
        lock::acquire(&self.lock_path(), None)
    }

    /// Like [`Lab::lock`], giving up after `wait`.
    pub fn lock_timeout(&self, wait: Duration) -> Result<LabLock, LabError> {
        lock::acquire(&self.lock_path(), Some(wait))
    }

    fn require_lock(&self) -> Result<(), LabError> {
        let path = self.lock_path();
        if lock::is_held(&path) {
            Ok(())
        } else {
            Err(LabError::NotLocked { path })
        }
    }

    fn require_root(&self, action: &'static str) -> Result<(), LabError> {
        if self.inner.ops.is_root() {
            Ok(())
        } else {
            Err(LabError::NotRoot { action })
        }
    }

    fn require_tools(&self, tools: &[&str]) -> Result<(), LabError> {
        for t in tools {
            if !self.inner.ops.has_program(t) {
                return Err(LabError::ToolMissing {
                    tool: t.to_string(),
                    package: package_of(t),
                });
            }
        }
        Ok(())
    }

    fn planned(&self, host: &HostPlan) -> Result<(), LabError> {
        match self.host(&host.name) {
            Some(h) if h == host => Ok(()),
            _ => Err(LabError::UnknownHost(host.name.clone())),
        }
    }

    /// Runs a command; its output whatever the exit code.
    fn run_raw(&self, cmd: &Cmd) -> Result<CmdOutput, LabError> {
        debug!(command = %cmd, "run");
        self.inner.ops.run(cmd).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LabError::ToolMissing {
                    tool: cmd.program.clone(),
                    package: package_of(&cmd.program),
                }
            } else {
                LabError::Command {
                    host: None,
                    command: cmd.to_string(),
                    status: "could not start".into(),
                    stderr: e.to_string(),
                }
            }
        })
    }

    /// Runs a command that must succeed.
    fn run(&self, host: Option<&str>, cmd: &Cmd) -> Result<CmdOutput, LabError> {
        let out = self.run_raw(cmd)?;
        if out.success() {
            Ok(out)
        } else {
            Err(LabError::Command {
                host: host.map(str::to_string),
                command: cmd.to_string(),
                status: out.status(),
                stderr: out.stderr.trim().to_string(),
            })
        }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, LabError>
    where
        T: Send + 'static,
        F: FnOnce(&Lab) -> Result<T, LabError> + Send + 'static,
    {
        let lab = self.clone();
        tokio::task::spawn_blocking(move || f(&lab))
            .await
            .map_err(|e| LabError::Join(e.to_string()))?
    }

    fn root_links(&self) -> Result<Vec<net::Link>, LabError> {
        let cmd = Cmd::ip("-j -d addr show");
        let out = self.run(None, &cmd)?;
        net::parse_links(&out.stdout).map_err(|e| LabError::Command {
            host: None,
            command: cmd.to_string(),
            status: "unreadable output".into(),
            stderr: e.to_string(),
        })
    }

    /// Links inside the host's namespace; `None` if the namespace does not exist.
    fn netns_links(&self, host: &HostPlan) -> Result<Option<Vec<net::Link>>, LabError> {
        if self.inner.ops.ns_inode(&host.netns_path()).is_none() {
            return Ok(None);
        }
        let cmd = Cmd::ip(&format!("-n {} -j -d addr show", host.netns));
        let out = self.run_raw(&cmd)?;
        if !out.success() {
            // A namespace file without a namespace behind it (interrupted `ip netns add`): start over.
            warn!(host = %host.name, stderr = %out.stderr.trim(), "broken netns file, recreating");
            let _ = self.run_raw(&Cmd::ip(&format!("netns del {}", host.netns)));
            return Ok(None);
        }
        net::parse_links(&out.stdout)
            .map(Some)
            .map_err(|e| LabError::Command {
                host: Some(host.name.clone()),
                command: cmd.to_string(),
                status: "unreadable output".into(),
                stderr: e.to_string(),
            })
    }

    /// Refuses when 198.18.0.0/24 or 10.231.0.0/24 overlap a route of this
    /// machine that is not on the lab's own bridges.
    pub fn check_safety(&self) -> Result<(), LabError> {
        let cmd = Cmd::ip("-j -4 route show table all");
        let out = self.run(None, &cmd)?;
        let routes = net::parse_routes(&out.stdout).map_err(|e| LabError::Command {
            host: None,
            command: cmd.to_string(),
            status: "unreadable output".into(),
            stderr: e.to_string(),
        })?;
        match net::route_collisions(&routes).into_iter().next() {
            Some((range, route)) => Err(LabError::RouteCollision { range, route }),
            None => Ok(()),
        }
    }

    /// Creates or completes the two bridges. Returns what it changed.
    pub async fn ensure_network(&self) -> Result<Vec<String>, LabError> {
        self.require_lock()?;
        self.require_root("create bridges")?;
        self.require_tools(&["ip"])?;
        let _net = self.inner.net.lock().await;
        self.blocking(|lab| {
            lab.check_safety()?;
            let cmds = net::plan_network(&lab.inner.spec.cluster, &lab.root_links()?)?;
            for c in &cmds {
                lab.run(None, c)?;
            }
            if !cmds.is_empty() {
                info!(cluster = %lab.inner.spec.cluster, changes = cmds.len(), "lab network ready");
            }
            Ok(cmds.iter().map(|c| c.to_string()).collect())
        })
        .await
    }

    fn write_if_different(path: &Path, content: &str, mode: Option<u32>) -> Result<bool, LabError> {
        if std::fs::read_to_string(path).is_ok_and(|c| c == content) {
            return Ok(false);
        }
        std::fs::write(path, content).map_err(|e| LabError::io("write", path, e))?;
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| LabError::io("chmod", path, e))?;
        }
        Ok(true)
    }

    /// Directories and files of a host: its root prefix with a daemon.json
    /// (`{}` unless the agent wrote one), data root, logs, run dir, wrapper.
    fn prepare_dirs(&self, host: &HostPlan) -> Result<(), LabError> {
        let etc_docker = host.root_prefix.join("etc/docker");
        for d in [
            &etc_docker,
            &host.data_root,
            &host.log_dir,
            &host.run_dir,
            &host.pid_dir(),
        ] {
            std::fs::create_dir_all(d).map_err(|e| LabError::io("create", d, e))?;
        }
        let dj = host.daemon_json();
        if !dj.exists() {
            Self::write_if_different(&dj, "{}\n", None)?;
        }
        Self::write_if_different(&host.wrapper(), &host::wrapper_script(), Some(0o755))?;
        Ok(())
    }

    fn mount_points(&self) -> Result<Vec<PathBuf>, LabError> {
        self.inner
            .ops
            .mount_points()
            .map_err(|e| LabError::io("read", "/proc/self/mountinfo", e))
    }

    /// The persistent UTS namespace and its hostname.
    fn ensure_uts(&self, host: &HostPlan, changes: &mut Vec<String>) -> Result<(), LabError> {
        if !self.mount_points()?.contains(&host.uts_file) {
            std::fs::write(&host.uts_file, b"")
                .map_err(|e| LabError::io("create", &host.uts_file, e))?;
            self.run(Some(&host.name), &host::create_uts(host))?;
            changes.push(format!(
                "uts namespace {} (hostname {})",
                host.uts_file.display(),
                host.name
            ));
        }
        let out = self.run(Some(&host.name), &host::uts_hostname(host, None))?;
        if out.stdout.trim() != host.name {
            self.run(
                Some(&host.name),
                &host::uts_hostname(host, Some(&host.name)),
            )?;
            changes.push(format!(
                "hostname {} (was {})",
                host.name,
                out.stdout.trim()
            ));
        }
        Ok(())
    }

    fn write_pidfile(&self, host: &HostPlan, name: &str, pid: u32) -> Result<(), LabError> {
        let start = self
            .inner
            .ops
            .process(pid)
            .map(|p| p.start_time)
            .unwrap_or(0);
        // Written aside and renamed: a reader (supervision, a second
        // coordinator, a test) sees the old pidfile or the new one, never an
        // empty file it would take for a dead process.
        let path = host.pid_file(name);
        let tmp = path.with_extension("pid.tmp");
        std::fs::write(&tmp, procs::format_pidfile(pid, start))
            .map_err(|e| LabError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| LabError::io("rename", &path, e))
    }

    fn spawn(&self, host: &HostPlan, name: &str, cmd: &Cmd) -> Result<u32, LabError> {
        let log = host.log_file(name);
        let pid = self
            .inner
            .ops
            .spawn_detached(cmd, &log)
            .map_err(|e| LabError::Command {
                host: Some(host.name.clone()),
                command: cmd.to_string(),
                status: "could not start".into(),
                stderr: e.to_string(),
            })?;
        self.write_pidfile(host, name, pid)?;
        info!(host = %host.name, process = name, pid, log = %log.display(), "started");
        Ok(pid)
    }

    /// Kills a containerd left by a dead dockerd of this host and removes its
    /// pidfile, so the new dockerd starts its own instead of waiting on it.
    fn clear_stale_containerd(
        &self,
        host: &HostPlan,
        table: &[ops::ProcInfo],
    ) -> Result<(), LabError> {
        let stale = procs::stale_containerd(table, &host.exec_root.display().to_string());
        for &pid in &stale {
            warn!(host = %host.name, pid, "killing containerd left by a dead dockerd");
            let _ = self.inner.ops.signal(pid, ops::Sig::Kill);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while stale
            .iter()
            .any(|&p| self.inner.ops.process(p).is_some_and(|p| p.alive()))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let pidfile = host.exec_root.join("containerd/containerd.pid");
        match std::fs::remove_file(&pidfile) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(LabError::io("remove", &pidfile, e))
            }
            _ => Ok(()),
        }
    }

    /// Removes dockerd's own pidfile, left by a dockerd that was killed (a
    /// power cycle, a crash). Called only when no live dockerd of this host
    /// exists. dockerd refuses to start while the pid in that file "exists"
    /// to kill(pid, 0), and a dead dockerd's pid still does when it is a
    /// zombie not yet reaped (an orphan under a PID 1 that does not reap),
    /// or when the pid was given to another process: pid_max is 32768 on
    /// some machines, and a CI run goes through that many pids in minutes.
    fn clear_stale_docker_pidfile(&self, host: &HostPlan) -> Result<(), LabError> {
        let path = host.docker_pidfile();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                warn!(host = %host.name, path = %path.display(), "removed the pidfile of a dead dockerd");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LabError::io("remove", &path, e)),
        }
    }

    /// The host without its engine: namespace, veths and addresses, UTS
    /// namespace and hostname. What it changed.
    fn ensure_host_network_sync(&self, host: &HostPlan) -> Result<Vec<String>, LabError> {
        let mut changes = Vec::new();
        self.prepare_dirs(host)?;
        let root = self.root_links()?;
        for bridge in [PRIVATE_BRIDGE, PUBLIC_BRIDGE] {
            if !root.iter().any(|l| l.name == bridge) {
                return Err(LabError::NetworkNotReady {
                    bridge: bridge.to_string(),
                });
            }
        }
        let inner = self.netns_links(host)?;
        let cmds = net::plan_host_links(host, &root, inner.as_deref());
        for c in &cmds {
            self.run(Some(&host.name), c)?;
            changes.push(c.to_string());
        }
        self.ensure_uts(host, &mut changes)?;
        Ok(changes)
    }

    /// The synchronous part of ensure_host: everything up to a started dockerd.
    fn ensure_host_sync(&self, host: &HostPlan) -> Result<(Vec<String>, u32), LabError> {
        let mut changes = self.ensure_host_network_sync(host)?;
        let pid = match self.process_pid(host, DOCKERD) {
            Some(pid) => pid,
            None => {
                let table = self
                    .inner
                    .ops
                    .processes()
                    .map_err(|e| LabError::io("read", "/proc", e))?;
                if let Some(pid) =
                    procs::find_dockerd(&table, &host.exec_root.display().to_string())
                {
                    self.write_pidfile(host, DOCKERD, pid)?;
                    changes.push(format!("dockerd adopted (pid {pid}, had no pidfile)"));
                    pid
                } else {
                    let was = host.pid_file(DOCKERD).exists();
                    self.clear_stale_containerd(host, &table)?;
                    self.clear_stale_docker_pidfile(host)?;
                    let pid = self.spawn(host, DOCKERD, &host::dockerd(host))?;
                    changes.push(format!(
                        "dockerd {} (pid {pid})",
                        if was { "restarted" } else { "started" }
                    ));
                    pid
                }
            }
        };
        Ok((changes, pid))
    }

    /// The host's network only, with no Docker engine: for probe-only hosts
    /// (the reachability benchmark at N = 32 and more, where 32 engines would
    /// not fit this machine). Tears down like any other host.
    pub async fn ensure_host_network(&self, host: &HostPlan) -> Result<Vec<String>, LabError> {
        self.require_lock()?;
        self.planned(host)?;
        self.require_root("create network namespaces")?;
        self.require_tools(&["ip", "nsenter", "unshare"])?;
        let _net = self.inner.net.lock().await;
        let h = host.clone();
        self.blocking(move |lab| lab.ensure_host_network_sync(&h))
            .await
    }

    /// Makes the host whole and running: namespace, veths and addresses, UTS
    /// namespace and hostname, and its dockerd (started if not running, e.g.
    /// after it died). Completes a half-created host. Returns when the engine
    /// answers on its socket, with what had to change.
    pub async fn ensure_host(&self, host: &HostPlan) -> Result<HostStatus, LabError> {
        self.require_lock()?;
        self.planned(host)?;
        self.require_root("create network namespaces")?;
        self.require_tools(&["ip", "nsenter", "unshare", "setsid", DOCKERD])?;
        let (changes, pid) = {
            let _net = self.inner.net.lock().await;
            let h = host.clone();
            self.blocking(move |lab| lab.ensure_host_sync(&h)).await?
        };
        let docker_version = self.wait_engine(host, pid).await?;
        Ok(HostStatus {
            host: host.name.clone(),
            changes,
            dockerd_pid: pid,
            docker_version,
        })
    }

    /// Polls the engine until it answers, the process dies, or the deadline passes.
    async fn wait_engine(&self, host: &HostPlan, pid: u32) -> Result<String, LabError> {
        let timeout = self.inner.opts.engine_start_timeout;
        let deadline = Instant::now() + timeout;
        let log = host.log_file(DOCKERD);
        loop {
            if let Ok(v) =
                engine::version(&host.name, &host.docker_socket, Duration::from_secs(2)).await
            {
                return Ok(v);
            }
            if self.process_pid(host, DOCKERD) != Some(pid) {
                return Err(LabError::EngineExited {
                    host: host.name.clone(),
                    tail: tail(&log, 20),
                    log,
                });
            }
            if Instant::now() >= deadline {
                return Err(LabError::EngineTimeout {
                    host: host.name.clone(),
                    socket: host.docker_socket.clone(),
                    waited_s: timeout.as_secs(),
                    tail: tail(&log, 20),
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The busybox image archive, built once and cached under `state_dir/lab/images` (blocking).
    pub fn busybox_archive(&self) -> Result<ImageArchive, LabError> {
        let busybox = self.inner.opts.busybox.clone();
        image::ensure_busybox_archive(&busybox, &self.lab_dir().join("images"), || {
            let cmd = Cmd::new(busybox.display().to_string()).arg("--list-full");
            Ok(self.run(None, &cmd)?.stdout)
        })
    }

    /// Loads `lab/busybox:1` into each engine that lacks it.
    pub async fn ensure_images(&self, hosts: &[&HostPlan]) -> Result<(), LabError> {
        let archive = self.blocking(|lab| lab.busybox_archive()).await?;
        self.load_image(hosts, &archive).await.map(|_| ())
    }

    /// The etcd image archive `lab/etcd:1` (blocking): busybox plus Debian's
    /// etcd and etcdctl and the libraries `ldd` names for them. The binaries
    /// come from the installed etcd-server/etcd-client packages when present,
    /// else from `apt-get download` + `dpkg-deb -x` into a cache under
    /// `state_dir/lab/images/etcd-debs` (nothing installed, no service started).
    pub fn etcd_archive(&self) -> Result<ImageArchive, LabError> {
        let images = self.lab_dir().join("images");
        let installed = [
            PathBuf::from("/usr/bin/etcd"),
            PathBuf::from("/usr/bin/etcdctl"),
        ];
        let bins = if installed.iter().all(|p| p.is_file()) {
            installed.to_vec()
        } else {
            let debs = images.join("etcd-debs");
            let root = debs.join("root");
            let bins = vec![root.join("usr/bin/etcd"), root.join("usr/bin/etcdctl")];
            if !bins.iter().all(|p| p.is_file()) {
                std::fs::create_dir_all(&debs).map_err(|e| LabError::io("create", &debs, e))?;
                let script = format!(
                    "cd '{}' && apt-get download etcd-server etcd-client && for d in etcd-server_*.deb etcd-client_*.deb; do dpkg-deb -x \"$d\" root; done",
                    debs.display()
                );
                self.run(None, &Cmd::new("sh").arg("-c").arg(script))?;
                if let Some(missing) = bins.iter().find(|p| !p.is_file()) {
                    return Err(LabError::ToolMissing {
                        tool: missing.display().to_string(),
                        package: "etcd-server etcd-client",
                    });
                }
            }
            bins
        };
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for b in &bins {
            let name = b
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            files.push((format!("usr/bin/{name}"), b.clone()));
            let ldd = self.run(None, &Cmd::new("ldd").arg(b.display().to_string()))?;
            for lib in image::ldd_paths(&ldd.stdout) {
                if !files.iter().any(|(d, _)| d == &lib) {
                    files.push((lib.clone(), PathBuf::from(&lib)));
                }
            }
        }
        let busybox = self.inner.opts.busybox.clone();
        image::ensure_etcd_archive(&busybox, &images, &files, || {
            let cmd = Cmd::new(busybox.display().to_string()).arg("--list-full");
            Ok(self.run(None, &cmd)?.stdout)
        })
    }

    /// Loads a user-supplied `docker save` archive into each engine that
    /// lacks its image (e.g. RethinkDB's, since no registry is reachable).
    pub async fn load_archive(&self, hosts: &[&HostPlan], path: &Path) -> Result<String, LabError> {
        let p = path.to_path_buf();
        let archive = self.blocking(move |_| image::archive_info(&p)).await?;
        self.load_image(hosts, &archive).await?;
        Ok(archive.reference)
    }

    /// Loads `lab/etcd:1` into each engine that lacks it.
    pub async fn ensure_etcd_image(&self, hosts: &[&HostPlan]) -> Result<(), LabError> {
        let archive = self.blocking(|lab| lab.etcd_archive()).await?;
        self.load_image(hosts, &archive).await.map(|_| ())
    }

    /// Loads a `docker load` archive into each engine whose image `archive.reference`
    /// is not `archive.id`, in parallel. Returns the hosts it loaded into.
    pub async fn load_image(
        &self,
        hosts: &[&HostPlan],
        archive: &ImageArchive,
    ) -> Result<Vec<String>, LabError> {
        self.require_lock()?;
        for h in hosts {
            self.planned(h)?;
        }
        let bytes = Bytes::from(
            tokio::fs::read(&archive.path)
                .await
                .map_err(|e| LabError::io("read", &archive.path, e))?,
        );
        let loads = hosts.iter().map(|h| {
            let bytes = bytes.clone();
            async move {
                let docker = engine::connect(&h.name, &h.docker_socket, Duration::from_secs(300))?;
                if engine::image_id(&docker, &h.name, &archive.reference)
                    .await?
                    .as_deref()
                    == Some(archive.id.as_str())
                {
                    return Ok(None);
                }
                engine::load(&docker, &h.name, bytes).await?;
                let got = engine::image_id(&docker, &h.name, &archive.reference)
                    .await?
                    .unwrap_or_default();
                if got != archive.id {
                    return Err(LabError::ImageMismatch {
                        host: h.name.clone(),
                        reference: archive.reference.clone(),
                        expected: archive.id.clone(),
                        got,
                    });
                }
                info!(host = %h.name, image = %archive.reference, "image loaded");
                Ok(Some(h.name.clone()))
            }
        });
        let results = futures::future::join_all(loads).await;
        let mut loaded = Vec::new();
        for r in results {
            if let Some(h) = r? {
                loaded.push(h);
            }
        }
        Ok(loaded)
    }

    /// The command that runs `argv` inside the host (its network and UTS
    /// namespaces, /sys of its own), without the cgroup wrapper: for short
    /// commands such as `ping` or `nft` run to completion.
    pub fn host_command(&self, host: &HostPlan, argv: &[String]) -> Cmd {
        host::in_host(host, false, argv)
    }

    /// Runs `argv` inside the host to completion; the output whatever the exit code.
    pub async fn run_in_host(
        &self,
        host: &HostPlan,
        argv: &[String],
    ) -> Result<CmdOutput, LabError> {
        self.planned(host)?;
        let cmd = self.host_command(host, argv);
        self.blocking(move |lab| lab.run_raw(&cmd)).await
    }

    /// Starts `argv` detached (own session) inside the host's network and UTS
    /// namespaces (`hostname` says the host's name), with the cgroup v1
    /// controllers mounted, `env` added, stdout and stderr appended to
    /// `log_dir/<name>.log`, and a pidfile. If a process of that name is
    /// already alive, returns its pid and starts nothing.
    pub fn spawn_in_host(
        &self,
        host: &HostPlan,
        name: &str,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<u32, LabError> {
        self.require_lock()?;
        self.planned(host)?;
        plan::validate_process_name(name)?;
        if name == DOCKERD {
            return Err(LabError::InvalidProcessName(name.to_string()));
        }
        if argv.is_empty() {
            return Err(LabError::InvalidProcessName(format!(
                "{name} (empty command line)"
            )));
        }
        if let Some(pid) = self.process_pid(host, name) {
            return Ok(pid);
        }
        if self.inner.ops.ns_inode(&host.netns_path()).is_none() {
            return Err(LabError::HostNotReady {
                host: host.name.clone(),
                what: format!("no network namespace {}", host.netns),
            });
        }
        if !self.mount_points()?.contains(&host.uts_file) {
            return Err(LabError::HostNotReady {
                host: host.name.clone(),
                what: format!("no UTS namespace at {}", host.uts_file.display()),
            });
        }
        // A coordinator killed between starting this process and writing its
        // pidfile left it running without one: adopt it (its command line is
        // unique to the host, the state directory is in it) rather than start
        // a second copy.
        let table = self
            .inner
            .ops
            .processes()
            .map_err(|e| LabError::io("read", "/proc", e))?;
        let wanted = argv.join(" ");
        if let Some(pid) = table
            .iter()
            .filter(|p| p.alive() && p.cmdline.contains(&wanted))
            .map(|p| p.pid)
            .min()
        {
            self.write_pidfile(host, name, pid)?;
            info!(host = %host.name, process = name, pid, "adopted (it had no pidfile)");
            return Ok(pid);
        }
        self.prepare_dirs(host)?;
        let mut cmd = host::in_host(host, true, argv);
        cmd.env.extend(env.iter().cloned());
        self.spawn(host, name, &cmd)
    }

    /// The pid of process `name` started in the host, if it is alive (not a
    /// zombie, and the same process: its start time matches the pidfile).
    pub fn process_pid(&self, host: &HostPlan, name: &str) -> Option<u32> {
        let text = std::fs::read_to_string(host.pid_file(name)).ok()?;
        let (pid, start) = procs::parse_pidfile(&text)?;
        procs::is_same_live_process(self.inner.ops.process(pid).as_ref(), start).then_some(pid)
    }

    /// Names of the processes with a pidfile in the host, alive or not.
    fn pidfile_names(&self, host: &HostPlan) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(host.pid_dir())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_suffix(".pid")
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    async fn wait_gone(&self, pids: &[(u32, u64)], deadline: Instant) -> bool {
        loop {
            let alive = pids.iter().any(|&(pid, start)| {
                self.inner
                    .ops
                    .process(pid)
                    .is_some_and(|p| p.alive() && p.start_time == start)
            });
            if !alive {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops process `name` of the host: SIGTERM, then SIGKILL after `grace`.
    /// Returns the pid it stopped, `None` if it was not running.
    pub async fn stop_process(
        &self,
        host: &HostPlan,
        name: &str,
        grace: Duration,
    ) -> Result<Option<u32>, LabError> {
        self.require_lock()?;
        let Some(pid) = self.process_pid(host, name) else {
            let _ = std::fs::remove_file(host.pid_file(name));
            return Ok(None);
        };
        let start = self
            .inner
            .ops
            .process(pid)
            .map(|p| p.start_time)
            .unwrap_or(0);
        let signal = |sig| {
            self.inner
                .ops
                .signal(pid, sig)
                .map_err(|e| LabError::Command {
                    host: Some(host.name.clone()),
                    command: format!("kill -{sig:?} {pid} ({name})"),
                    status: "failed".into(),
                    stderr: e.to_string(),
                })
        };
        signal(ops::Sig::Term)?;
        if !self
            .wait_gone(&[(pid, start)], Instant::now() + grace)
            .await
        {
            warn!(host = %host.name, process = name, pid, "did not stop in time, killing");
            signal(ops::Sig::Kill)?;
            self.wait_gone(&[(pid, start)], Instant::now() + Duration::from_secs(10))
                .await;
        }
        let _ = std::fs::remove_file(host.pid_file(name));
        info!(host = %host.name, process = name, pid, "stopped");
        Ok(Some(pid))
    }

    /// Asks the host's dockerd to reload its daemon.json (SIGHUP; only the
    /// options dockerd documents as reloadable take effect). Returns its pid.
    pub fn reload_engine(&self, host: &HostPlan) -> Result<u32, LabError> {
        self.require_lock()?;
        self.planned(host)?;
        let pid = self
            .process_pid(host, DOCKERD)
            .ok_or_else(|| LabError::HostNotReady {
                host: host.name.clone(),
                what: "dockerd is not running".into(),
            })?;
        self.inner
            .ops
            .signal(pid, ops::Sig::Hup)
            .map_err(|e| LabError::Command {
                host: Some(host.name.clone()),
                command: format!("kill -HUP {pid} (dockerd)"),
                status: "failed".into(),
                stderr: e.to_string(),
            })?;
        Ok(pid)
    }

    /// Stops the host's dockerd (it stops its containers) and starts it again,
    /// e.g. after the agent changed daemon.json options that need a restart.
    pub async fn restart_engine(&self, host: &HostPlan) -> Result<HostStatus, LabError> {
        self.planned(host)?;
        self.stop_process(host, DOCKERD, self.inner.opts.dockerd_stop_grace)
            .await?;
        self.ensure_host(host).await
    }

    /// Keeps the engines running: every `interval`, each planned host whose
    /// network namespace exists but whose dockerd is dead gets
    /// [`Lab::ensure_host`]. Failures are logged and retried on the next
    /// tick. Runs until the returned task is aborted; the caller must keep
    /// holding the lab lock.
    pub fn supervise_engines(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let lab = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for h in lab.hosts() {
                    if lab.inner.ops.ns_inode(&h.netns_path()).is_none()
                        || lab.process_pid(h, DOCKERD).is_some()
                    {
                        continue;
                    }
                    warn!(host = %h.name, "dockerd is not running, restarting it");
                    match lab.ensure_host(h).await {
                        Ok(s) => info!(host = %h.name, pid = s.dockerd_pid, "dockerd restarted"),
                        Err(e) => warn!(host = %h.name, error = %e, "dockerd restart failed"),
                    }
                }
            }
        })
    }

    /// Which planned hosts exist on the machine, and what runs in them: for
    /// adopting a lab after a coordinator restart. Hosts with no trace at all
    /// are left out.
    pub async fn discover(&self) -> Result<Vec<ExistingHost>, LabError> {
        let mounts = self.mount_points()?;
        let mut out = Vec::new();
        for h in self.hosts() {
            let netns = self.inner.ops.ns_inode(&h.netns_path()).is_some()
                && mounts.contains(&h.netns_path());
            let uts = mounts.contains(&h.uts_file);
            if !netns && !uts && !h.run_dir.exists() && !h.host_dir.exists() {
                continue;
            }
            let processes: Vec<(String, u32)> = self
                .pidfile_names(h)
                .into_iter()
                .filter_map(|n| self.process_pid(h, &n).map(|p| (n, p)))
                .collect();
            let dockerd_pid = processes
                .iter()
                .find(|(n, _)| n == DOCKERD)
                .map(|&(_, p)| p);
            let engine_answers = dockerd_pid.is_some()
                && engine::version(&h.name, &h.docker_socket, Duration::from_secs(3))
                    .await
                    .is_ok();
            out.push(ExistingHost {
                host: h.clone(),
                netns,
                uts,
                dockerd_pid,
                engine_answers,
                processes,
            });
        }
        Ok(out)
    }

    /// Names of every host of this cluster that has a trace on the machine:
    /// planned ones, and others left by an earlier plan (run dirs, data dirs, namespaces).
    fn hosts_to_remove(&self) -> Vec<HostPlan> {
        let mut names: BTreeSet<String> = self.hosts().iter().map(|h| h.name.clone()).collect();
        let dir_names = |dir: PathBuf| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| e.path().is_dir())
                        .filter_map(|e| e.file_name().to_str().map(str::to_string))
                        .filter(|n| plan::validate_host(n).is_ok() && n != "images")
                        .collect()
                })
                .unwrap_or_default()
        };
        names.extend(dir_names(self.run_dir()));
        names.extend(dir_names(self.lab_dir()));
        if let Ok(rd) = std::fs::read_dir("/run/netns") {
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name();
                let parsed = name.to_str().and_then(plan::parse_netns);
                if let Some((c, h)) = parsed.filter(|(c, _)| *c == self.inner.spec.cluster) {
                    debug!(cluster = c, host = h, "netns of this cluster found");
                    names.insert(h.to_string());
                }
            }
        }
        names
            .into_iter()
            .map(|n| match self.host(&n) {
                Some(h) => h.clone(),
                None => {
                    // Not in the plan: its veths are found through the bridges instead.
                    let mut h = plan::plan_host(
                        &self.inner.spec.cluster,
                        &n,
                        0,
                        &self.inner.spec.state_dir,
                        &self.inner.opts.run_base,
                    );
                    h.veth_private.clear();
                    h.veth_public.clear();
                    h
                }
            })
            .collect()
    }

    /// Removes one host entirely: stops its processes (the agent and others
    /// first, then dockerd, which stops its containers), kills whatever is
    /// left in its namespace or names its directories, unmounts, deletes the
    /// namespace, veths and directories.
    async fn teardown_host(&self, host: &HostPlan) -> (TeardownReport, Vec<String>) {
        let mut report = TeardownReport::default();
        let mut leftovers = Vec::new();
        let grace = self.inner.opts.stop_grace;
        let mut names = self.pidfile_names(host);
        // dockerd last: the agent may be using it
        names.sort_by_key(|n| n == DOCKERD);
        for name in names {
            let g = if name == DOCKERD {
                self.inner.opts.dockerd_stop_grace
            } else {
                grace
            };
            match self.stop_process(host, &name, g).await {
                Ok(Some(pid)) => report
                    .processes
                    .push(format!("{}: {name} pid {pid}", host.name)),
                Ok(None) => {}
                Err(e) => leftovers.push(e.to_string()),
            }
        }
        // Sweep: containerd, shims, containers, anything else started in the host.
        self.kill_all(host, &mut report, &mut leftovers).await;
        let h = host.clone();
        let sync = self
            .blocking(move |lab| {
                let mut report = TeardownReport::default();
                let mut leftovers = Vec::new();
                lab.teardown_host_sync(&h, &mut report, &mut leftovers);
                Ok((report, leftovers))
            })
            .await;
        match sync {
            Ok((r, l)) => {
                report.merge(r);
                leftovers.extend(l);
            }
            Err(e) => leftovers.push(e.to_string()),
        }
        (report, leftovers)
    }

    /// Kills every process of `host` at once (SIGKILL): those in its
    /// namespace and those naming its directories.
    async fn kill_all(
        &self,
        host: &HostPlan,
        report: &mut TeardownReport,
        leftovers: &mut Vec<String>,
    ) {
        let markers = [
            format!("{}/", host.run_dir.display()),
            format!("{}/", host.host_dir.display()),
        ];
        let ns_inode = self.inner.ops.ns_inode(&host.netns_path());
        for _round in 0..3 {
            let table = match self.inner.ops.processes() {
                Ok(t) => t,
                Err(e) => {
                    leftovers.push(format!("process table: {e}"));
                    break;
                }
            };
            let pids = procs::host_processes(&table, ns_inode, &markers, &[], std::process::id());
            if pids.is_empty() {
                break;
            }
            let mut ids = Vec::new();
            for p in table.iter().filter(|p| pids.contains(&p.pid)) {
                let _ = self.inner.ops.signal(p.pid, ops::Sig::Kill);
                let cmd: String = p.cmdline.chars().take(60).collect();
                report
                    .processes
                    .push(format!("{}: pid {} ({cmd})", host.name, p.pid));
                ids.push((p.pid, p.start_time));
            }
            self.wait_gone(&ids, Instant::now() + Duration::from_secs(10))
                .await;
        }
    }

    /// A power cycle of one host (`ctl hosts reboot` in the lab): every
    /// process in it killed at once, as a power cut would (agent, engine,
    /// containerd, containers), its disk state kept (namespace, links,
    /// data directories), then its engine started again from that state.
    /// Starting the agent is the caller's (it holds the agent's settings).
    pub async fn power_cycle(&self, host: &HostPlan) -> Result<HostStatus, LabError> {
        self.require_lock()?;
        self.require_root("power-cycle a lab host")?;
        let mut report = TeardownReport::default();
        let mut leftovers = Vec::new();
        self.kill_all(host, &mut report, &mut leftovers).await;
        if !leftovers.is_empty() {
            return Err(LabError::TeardownIncomplete { leftovers });
        }
        for name in self.pidfile_names(host) {
            let _ = std::fs::remove_file(host.pid_file(&name));
        }
        info!(host = %host.name, killed = report.processes.len(), "lab host power-cycled");
        self.ensure_host(host).await
    }

    fn teardown_host_sync(
        &self,
        host: &HostPlan,
        report: &mut TeardownReport,
        leftovers: &mut Vec<String>,
    ) {
        // Mounts under the host's directories, deepest first (the UTS namespace file).
        match self.mount_points() {
            Ok(points) => {
                let mut ours: Vec<PathBuf> = points
                    .into_iter()
                    .filter(|p| p.starts_with(&host.run_dir) || p.starts_with(&host.host_dir))
                    .collect();
                ours.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
                ours.dedup();
                for p in ours {
                    match self.inner.ops.unmount(&p) {
                        Ok(()) => report.mounts.push(p),
                        Err(e) => leftovers.push(format!("mount {}: {e}", p.display())),
                    }
                }
            }
            Err(e) => leftovers.push(e.to_string()),
        }
        if self.inner.ops.ns_inode(&host.netns_path()).is_some() {
            match self.run(
                Some(&host.name),
                &Cmd::ip(&format!("netns del {}", host.netns)),
            ) {
                Ok(_) => report.netns.push(host.netns.clone()),
                Err(e) => leftovers.push(e.to_string()),
            }
        }
        // Deleting the namespace deletes the veth pairs; a root end whose peer was elsewhere stays.
        if let Ok(links) = self.root_links() {
            for v in [&host.veth_private, &host.veth_public] {
                if !v.is_empty() && links.iter().any(|l| &l.name == v) {
                    match self.del_link(v) {
                        Ok(true) => report.links.push(v.clone()),
                        Ok(false) => {}
                        Err(e) => leftovers.push(e.to_string()),
                    }
                }
            }
        }
        remove_dir(&host.run_dir, &mut report.dirs, leftovers);
        remove_dir(&host.host_dir, &mut report.dirs, leftovers);
    }

    /// Removes one host of the lab (a scale-down: its processes, namespace,
    /// links and directories; the bridges stay for the others). Says what it
    /// removed; fails with the list of leftovers if anything could not be.
    pub async fn remove_host(&self, host: &HostPlan) -> Result<TeardownReport, LabError> {
        self.require_lock()?;
        self.require_root("remove a network namespace")?;
        let (report, leftovers) = self.teardown_host(host).await;
        if leftovers.is_empty() {
            info!(host = %host.name, "lab host removed");
            Ok(report)
        } else {
            Err(LabError::TeardownIncomplete { leftovers })
        }
    }

    /// The same lab with another list of hosts (`ctl scale hosts=N`): a new
    /// plan, the same options and host operations. Hosts both plans share
    /// keep their addresses (a host's index is its place in the list).
    pub fn with_hosts(&self, hosts: Vec<String>) -> Result<Lab, LabError> {
        let spec = LabSpec {
            hosts,
            ..self.inner.spec.clone()
        };
        Lab::with_options(spec, self.inner.opts.clone(), self.inner.ops.clone())
    }

    /// Removes the whole lab: every host of this cluster (planned or left over
    /// from an earlier plan), then the bridges and the lab's directories
    /// (`state_dir/lab`, `<run base>/<cluster>`). Says what it removed; fails
    /// with the list of leftovers if anything could not be removed.
    pub async fn teardown(&self) -> Result<TeardownReport, LabError> {
        self.require_lock()?;
        self.require_root("remove network namespaces")?;
        let hosts = self.hosts_to_remove();
        let results = futures::future::join_all(hosts.iter().map(|h| self.teardown_host(h))).await;
        let mut report = TeardownReport::default();
        let mut leftovers = Vec::new();
        for (r, l) in results {
            report.merge(r);
            leftovers.extend(l);
        }
        let _net = self.inner.net.lock().await;
        let (r, l) = self
            .blocking(|lab| {
                let mut report = TeardownReport::default();
                let mut leftovers = Vec::new();
                lab.teardown_network(&mut report, &mut leftovers);
                remove_dir(&lab.run_dir(), &mut report.dirs, &mut leftovers);
                remove_dir(&lab.lab_dir(), &mut report.dirs, &mut leftovers);
                Ok((report, leftovers))
            })
            .await?;
        report.merge(r);
        leftovers.extend(l);
        if leftovers.is_empty() {
            info!(cluster = %self.inner.spec.cluster, "lab torn down");
            Ok(report)
        } else {
            Err(LabError::TeardownIncomplete { leftovers })
        }
    }

    /// Deletes a root-namespace link; `false` if it was already gone (the
    /// kernel removes a veth pair asynchronously when its namespace is deleted).
    fn del_link(&self, name: &str) -> Result<bool, LabError> {
        let cmd = Cmd::ip(&format!("link del {name}"));
        let out = self.run_raw(&cmd)?;
        if out.success() {
            return Ok(true);
        }
        let still = self.run_raw(&Cmd::ip(&format!("link show {name}")))?;
        if still.success() {
            Err(LabError::Command {
                host: None,
                command: cmd.to_string(),
                status: out.status(),
                stderr: out.stderr.trim().to_string(),
            })
        } else {
            Ok(false)
        }
    }

    fn teardown_network(&self, report: &mut TeardownReport, leftovers: &mut Vec<String>) {
        let links = match self.root_links() {
            Ok(l) => l,
            Err(e) => {
                leftovers.push(e.to_string());
                return;
            }
        };
        let alias = net::bridge_alias(&self.inner.spec.cluster);
        let ours = |name: &str| {
            links.iter().find(|l| l.name == name).is_some_and(|l| {
                l.kind.as_deref() == Some("bridge") && l.alias.as_deref().is_none_or(|a| a == alias)
            })
        };
        let (ports, bridges) = net::lab_links(&links);
        for b in &bridges {
            if !ours(b) {
                leftovers.push(format!("bridge {b} belongs to another lab; left in place"));
            }
        }
        let bridges: Vec<String> = bridges.into_iter().filter(|b| ours(b)).collect();
        let ports: Vec<String> = ports
            .into_iter()
            .filter(|p| {
                links
                    .iter()
                    .find(|l| &l.name == p)
                    .and_then(|l| l.master.as_deref())
                    .is_some_and(|m| bridges.iter().any(|b| b == m))
            })
            .collect();
        for l in ports.iter().chain(bridges.iter()) {
            match self.del_link(l) {
                Ok(true) => report.links.push(l.clone()),
                Ok(false) => {}
                Err(e) => leftovers.push(e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests;
