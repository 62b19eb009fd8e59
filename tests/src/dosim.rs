//! A droplet simulator for root tests: every droplet the fake DigitalOcean
//! API makes "boots" here as a network namespace that runs its real
//! user_data, the way cloud-init and systemd would on a droplet.
//!
//! - **Network.** The droplet's VPC address (the fake's, from the VPC's
//!   range) on `eth1` in its own network namespace, on one bridge in the
//!   root namespace that holds the range's first address (where the test's
//!   coordinator listens, standing in for a coordinator inside the VPC).
//! - **A private root.** Each droplet has its own mount namespace (kept in a
//!   file, as the lab keeps its UTS namespaces) in which `/etc`,
//!   `/usr/local` and `/var/lib` are overlays whose writes land in the
//!   droplet's directory, and `/run` is a fresh tmpfs (so nothing on a
//!   droplet finds this machine's Docker socket). Nothing it writes touches
//!   this machine's files.
//! - **cloud-init.** The user_data is checked with the real `cloud-init
//!   schema`; `write_files` are written (with their modes) and `runcmd` run
//!   in the droplet; `packages` are taken as installed (curl and nftables
//!   are this machine's).
//! - **systemd.** `systemctl` in runcmd and in units is interpreted:
//!   `daemon-reload` does nothing, `start` and `enable --now` start a unit
//!   from the droplet's `/etc/systemd/system`: `ExecStart`, then for a
//!   oneshot that succeeded its `ExecStartPost`, with `Restart=on-failure`
//!   and `RestartSec` honoured. `docker.service` is the one unit it does not
//!   have: no engine runs on a simulated droplet yet.
//! - **What a droplet cannot do here**: change this machine's kernel modules
//!   or bootloader. The agent is started with `--no-modprobe
//!   --no-update-grub`, the flags the lab gives its agents, and that is the
//!   only change made to what the droplet asked for.
//!
//! Everything is torn down when the simulator is dropped: processes (by
//! the handles of the children it started), overlays, namespaces, links.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apiary_digitalocean::fake::{FakeApi, FakeDroplet};

/// The root namespace's bridge for the simulated VPC.
pub const BRIDGE: &str = "dosim-vpc";
/// Directories a droplet writes to, each an overlay over this machine's.
const OVERLAID: [&str; 3] = ["/etc", "/usr/local", "/var/lib"];

/// One booted droplet.
struct Booted {
    name: String,
    netns: String,
    veth: String,
    dir: PathBuf,
}

impl Booted {
    fn mount_ns(&self) -> PathBuf {
        self.dir.join("ns/mnt")
    }

    fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    fn uts_ns(&self) -> PathBuf {
        self.dir.join("ns/uts")
    }

    /// The engine's socket as this machine sees it (the droplet's own is
    /// /run/docker.sock, on its private /run).
    pub fn docker_socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// `argv` inside the droplet: its network and mount namespaces.
    fn command(&self, argv: &[String]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(format!("--mount={}", self.mount_ns().display()))
            .arg(format!("--uts={}", self.uts_ns().display()))
            .arg("--")
            .args(argv);
        c
    }

    fn log(&self, line: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.console())
        {
            let _ = writeln!(f, "[dosim] {line}");
        }
    }
}

pub struct DropletSim {
    dir: PathBuf,
    gateway: Ipv4Addr,
    prefix: u8,
    booted: Mutex<HashMap<u64, Arc<Booted>>>,
    children: Arc<Mutex<Vec<Child>>>,
    stop: Arc<AtomicBool>,
    /// Names whose next droplet boots with a broken download.
    broken_downloads: Mutex<std::collections::HashSet<String>>,
    /// `Some`: every droplet runs a Docker engine with these image archives
    /// loaded (the simulator's stand-in for a registry).
    engine: Option<Vec<PathBuf>>,
    /// Droplets whose boot failed (not tried again).
    failed: Mutex<std::collections::HashSet<u64>>,
}

fn run(argv: &[&str]) -> Result<(), String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| format!("{argv:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl DropletSim {
    /// The VPC's bridge with `gateway/prefix` (e.g. 10.231.0.1/24, the lab's
    /// range): where the coordinator listens. Droplets' files live under
    /// `dir`.
    pub fn new(dir: &Path, gateway: Ipv4Addr, prefix: u8) -> Result<Arc<DropletSim>, String> {
        let _ = run(&["ip", "link", "del", BRIDGE]);
        run(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{gateway}/{prefix}"),
            "dev",
            BRIDGE,
        ])?;
        run(&["ip", "link", "set", BRIDGE, "up"])?;
        Ok(Arc::new(DropletSim {
            dir: dir.to_path_buf(),
            gateway,
            prefix,
            booted: Mutex::new(HashMap::new()),
            children: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            broken_downloads: Mutex::new(Default::default()),
            engine: None,
            failed: Mutex::new(Default::default()),
        }))
    }

    /// Boots every active droplet of `api` not booted yet, and shuts down
    /// those the API no longer has, every 200 ms until dropped.
    pub fn follow(self: &Arc<Self>, api: FakeApi) {
        let sim = Arc::downgrade(self);
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Some(sim) = sim.upgrade() else { return };
                sim.sync(&api.droplets());
                drop(sim);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    }

    /// Droplets run a Docker engine (started at boot, as the distribution's
    /// package does; restarted when it exits, as its unit does) with
    /// `images` (`docker save` archives) loaded. Call before [`Self::follow`].
    pub fn with_engine(self: Arc<Self>, images: Vec<PathBuf>) -> Arc<Self> {
        let mut sim = Arc::try_unwrap(self).unwrap_or_else(|_| panic!("with_engine before follow"));
        sim.engine = Some(images);
        Arc::new(sim)
    }

    /// A fault: the next droplet named `name` to boot cannot reach the
    /// coordinator (a blackhole route to it), so its install unit's
    /// download fails, again and again, as a broken download would. Its
    /// replacement boots normally.
    pub fn break_next_download(&self, name: &str) {
        self.broken_downloads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
    }

    /// A booted droplet's network namespace and its engine's socket (as
    /// this machine sees it), by name.
    pub fn droplet(&self, name: &str) -> Option<(String, PathBuf)> {
        let booted = self.booted.lock().unwrap_or_else(|p| p.into_inner());
        booted
            .values()
            .find(|b| b.name == name)
            .map(|b| (b.netns.clone(), b.docker_socket()))
    }

    /// What each droplet's console says (the simulator's own lines and its
    /// processes' output), for failure messages.
    pub fn consoles(&self) -> String {
        let booted = self.booted.lock().unwrap_or_else(|p| p.into_inner());
        booted
            .values()
            .map(|b| {
                format!(
                    "== {}\n{}",
                    b.name,
                    std::fs::read_to_string(b.console()).unwrap_or_default()
                )
            })
            .collect()
    }

    fn sync(&self, droplets: &[FakeDroplet]) {
        let gone: Vec<Arc<Booted>> = {
            let mut booted = self.booted.lock().unwrap_or_else(|p| p.into_inner());
            let ids: Vec<u64> = booted
                .keys()
                .filter(|id| !droplets.iter().any(|d| d.id == **id))
                .copied()
                .collect();
            ids.iter().filter_map(|id| booted.remove(id)).collect()
        };
        for b in gone {
            self.shut_down(&b);
        }
        for d in droplets {
            if d.powered_off
                || self
                    .booted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&d.id)
                || self
                    .failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&d.id)
            {
                continue;
            }
            let Some(user_data) = d.user_data.clone() else {
                continue;
            };
            match self.boot(d, &user_data) {
                Ok(b) => {
                    self.booted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(d.id, b);
                }
                Err(e) => {
                    // Once: a droplet that failed to boot stays failed, as
                    // a real one would (its console says why).
                    eprintln!("dosim: droplet {} ({}) did not boot: {e}", d.id, d.name);
                    self.failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(d.id);
                }
            }
        }
    }

    fn boot(&self, d: &FakeDroplet, user_data: &str) -> Result<Arc<Booted>, String> {
        let dir = self.dir.join(format!("{}-{}", d.name, d.id));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let b = Arc::new(Booted {
            name: d.name.clone(),
            netns: format!("dosim.{}", d.id),
            veth: format!("dsv{}", d.id % 100_000),
            dir,
        });
        match self.boot_into(&b, d, user_data) {
            Ok(()) => Ok(b),
            Err(e) => {
                b.log(&format!("boot failed: {e}"));
                // What it made so far goes: a failed boot leaves nothing.
                self.shut_down(&b);
                Err(e)
            }
        }
    }

    fn boot_into(&self, b: &Arc<Booted>, d: &FakeDroplet, user_data: &str) -> Result<(), String> {
        b.log(&format!("booting droplet {} at {}", d.id, d.private_ipv4));
        // cloud-init's own check of the document, as on a droplet.
        let file = b.dir.join("user_data");
        std::fs::write(&file, user_data).map_err(|e| e.to_string())?;
        let schema = Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(&file)
            .output()
            .map_err(|e| format!("cloud-init schema: {e}"))?;
        if !schema.status.success() {
            return Err(format!(
                "cloud-init schema refused the user_data: {}{}",
                String::from_utf8_lossy(&schema.stdout),
                String::from_utf8_lossy(&schema.stderr)
            ));
        }
        let doc: serde_norway::Value =
            serde_norway::from_str(user_data).map_err(|e| format!("user_data: {e}"))?;
        self.network(b, d.private_ipv4, d.public_ipv4)?;
        let broken = self
            .broken_downloads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&d.name);
        if broken {
            run(&[
                "ip",
                "netns",
                "exec",
                &b.netns,
                "ip",
                "route",
                "add",
                "blackhole",
                &format!("{}/32", self.gateway),
            ])?;
            b.log("fault: the coordinator is unreachable from this droplet (broken download)");
        }
        self.private_root(b)?;
        for f in doc["write_files"].as_sequence().into_iter().flatten() {
            let path = f["path"]
                .as_str()
                .ok_or("write_files entry without a path")?;
            let mode = f["permissions"].as_str().unwrap_or("0644");
            let content = f["content"].as_str().unwrap_or("");
            self.write_file(b, path, mode, content)?;
        }
        if let Some(images) = &self.engine {
            self.start_engine(b, images.clone())?;
        }
        let b2 = b.clone();
        let children = self.children.clone();
        let stop = self.stop.clone();
        let runcmd: Vec<Vec<String>> = doc["runcmd"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|c| {
                c.as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect()
            })
            .collect();
        std::thread::spawn(move || {
            for argv in runcmd {
                run_in(&b2, &argv, &children, &stop);
            }
        });
        Ok(())
    }

    /// `eth1` on the VPC's bridge with the VPC address; `eth0` holds the
    /// public address on an unplugged link: it answers nothing and routes
    /// nowhere (the laptop side is not simulated yet), but the agent sees a
    /// droplet's two interfaces and its firewall tells them apart.
    fn network(&self, b: &Booted, ip: Ipv4Addr, public: Ipv4Addr) -> Result<(), String> {
        let _ = run(&["ip", "netns", "del", &b.netns]);
        run(&["ip", "netns", "add", &b.netns])?;
        run(&[
            "ip", "link", "add", &b.veth, "type", "veth", "peer", "name", "eth1", "netns", &b.netns,
        ])?;
        run(&["ip", "link", "set", &b.veth, "master", BRIDGE, "up"])?;
        let inside = |args: &[&str]| {
            let mut argv = vec!["ip", "netns", "exec", b.netns.as_str(), "ip"];
            argv.extend_from_slice(args);
            run(&argv)
        };
        inside(&[
            "addr",
            "add",
            &format!("{ip}/{}", self.prefix),
            "dev",
            "eth1",
        ])?;
        inside(&["link", "set", "eth1", "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        inside(&["route", "add", "default", "via", &self.gateway.to_string()])?;
        // A veth whose peer stays in the namespace, unplugged (this kernel
        // has no dummy links).
        inside(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0-peer",
        ])?;
        inside(&["addr", "add", &format!("{public}/32"), "dev", "eth0"])?;
        inside(&["link", "set", "eth0", "up"])?;
        Ok(())
    }

    fn private_root(&self, b: &Booted) -> Result<(), String> {
        let ns_dir = b.dir.join("ns");
        std::fs::create_dir_all(&ns_dir).map_err(|e| e.to_string())?;
        let ns = ns_dir.display().to_string();
        // A mount namespace can be kept in a file only on a private mount.
        run(&["mount", "--bind", &ns, &ns])?;
        run(&["mount", "--make-private", &ns])?;
        std::fs::write(b.mount_ns(), "").map_err(|e| e.to_string())?;
        let mnt = b.mount_ns().display().to_string();
        run(&[
            "unshare",
            &format!("--mount={mnt}"),
            "--propagation",
            "private",
            "true",
        ])?;
        let enter = |args: &[&str]| {
            let mut argv = vec!["nsenter".to_string(), format!("--mount={mnt}"), "--".into()];
            argv.extend(args.iter().map(|s| s.to_string()));
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            run(&argv)
        };
        for dir in OVERLAID {
            let key = dir.trim_start_matches('/').replace('/', "-");
            let upper = b.dir.join("upper").join(&key);
            let work = b.dir.join("work").join(&key);
            std::fs::create_dir_all(&upper).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
            enter(&[
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                &format!(
                    "lowerdir={dir},upperdir={},workdir={}",
                    upper.display(),
                    work.display()
                ),
                dir,
            ])?;
        }
        enter(&["mount", "-t", "tmpfs", "tmpfs", "/run"])?;
        // sysfs as the droplet's network namespace shows it (what `ip
        // netns exec` does), for the engine.
        run(&[
            "nsenter",
            &format!("--net=/run/netns/{}", b.netns),
            &format!("--mount={mnt}"),
            "--",
            "mount",
            "-t",
            "sysfs",
            "sysfs",
            "/sys",
        ])?;
        // Its own hostname: cloud-init sets it from the droplet's name.
        std::fs::write(b.uts_ns(), "").map_err(|e| e.to_string())?;
        run(&[
            "unshare",
            &format!("--uts={}", b.uts_ns().display()),
            "hostname",
            &b.name,
        ])?;
        Ok(())
    }

    /// dockerd in the droplet under a unit of the simulator's (restarted
    /// when it exits; each start in a mount namespace of its own, as `ip
    /// netns exec` gives the lab's engines, so the cgroup mounts of one
    /// engine's life do not pile up under the next), a `systemctl` for the droplet's own processes (the
    /// agent restarts the engine with `systemctl restart docker`), and the
    /// images loaded once the engine answers.
    fn start_engine(&self, b: &Arc<Booted>, images: Vec<PathBuf>) -> Result<(), String> {
        self.write_file(b, "/usr/local/bin/systemctl", "0755", SYSTEMCTL_SHIM)?;
        self.write_file(
            b,
            "/usr/local/lib/dosim/cgroups",
            "0755",
            &apiary_lab::host::wrapper_script(),
        )?;
        let data_root = b.dir.join("docker");
        std::fs::create_dir_all(&data_root).map_err(|e| e.to_string())?;
        let unit = format!(
            "[Service]\nExecStart=/usr/bin/unshare --mount --propagation private /bin/sh /usr/local/lib/dosim/cgroups /usr/bin/env DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 dockerd --data-root {} -H unix:///run/docker.sock -H unix://{} --pidfile /run/docker.pid\nRestart=always\nRestartSec=1\n",
            data_root.display(),
            b.docker_socket().display()
        );
        self.write_file(b, "/etc/systemd/system/docker.service", "0644", &unit)?;
        start_unit(b, "docker.service", &self.children, &self.stop);
        let b = b.clone();
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            let socket = format!("unix://{}", b.docker_socket().display());
            for _ in 0..600 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let up = Command::new("docker")
                    .args(["-H", &socket, "version"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if up {
                    for image in &images {
                        let out = Command::new("docker")
                            .args(["-H", &socket, "load", "-i"])
                            .arg(image)
                            .output();
                        b.log(&format!(
                            "image {} loaded: {:?}",
                            image.display(),
                            out.map(|o| o.status)
                        ));
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            b.log("the engine never answered");
        });
        Ok(())
    }

    fn write_file(&self, b: &Booted, path: &str, mode: &str, content: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = b
            .command(&[
                "/bin/sh".into(),
                "-c".into(),
                "mkdir -p \"$(dirname \"$1\")\" && cat > \"$1\" && chmod \"$2\" \"$1\"".into(),
                "sh".into(),
                path.into(),
                mode.into(),
            ])
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(content.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let status = child.wait().map_err(|e| e.to_string())?;
        if status.success() {
            b.log(&format!("wrote {path} ({mode})"));
            Ok(())
        } else {
            Err(format!("write_files {path}: {status}"))
        }
    }

    fn shut_down(&self, b: &Booted) {
        b.log("shutting down");
        // The children of this droplet: those whose command names its namespace.
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        let marker = format!("--net=/run/netns/{}", b.netns);
        children.retain_mut(|c| {
            let ours = std::fs::read_to_string(format!("/proc/{}/cmdline", c.id()))
                .map(|cmd| cmd.replace('\0', " ").contains(&marker))
                .unwrap_or(false);
            if ours {
                let _ = c.kill();
                let _ = c.wait();
            }
            !ours
        });
        drop(children);
        let mnt = b.mount_ns().display().to_string();
        let _ = run(&["umount", &mnt]);
        let _ = run(&["umount", &b.dir.join("ns").display().to_string()]);
        let _ = run(&["ip", "netns", "del", &b.netns]);
        let _ = run(&["ip", "link", "del", &b.veth]);
    }
}

impl Drop for DropletSim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let booted: Vec<Arc<Booted>> = self
            .booted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, b)| b)
            .collect();
        for b in booted {
            self.shut_down(&b);
        }
        for mut c in self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = run(&["ip", "link", "del", BRIDGE]);
    }
}

/// Runs one command of runcmd or of a unit in the droplet, `systemctl`
/// interpreted; waits for it. Whether it succeeded.
fn run_in(
    b: &Arc<Booted>,
    argv: &[String],
    children: &Arc<Mutex<Vec<Child>>>,
    stop: &Arc<AtomicBool>,
) -> bool {
    let program = argv
        .first()
        .map(|p| p.rsplit('/').next().unwrap_or(p))
        .unwrap_or("");
    if program == "systemctl" {
        return systemctl(b, &argv[1..], children, stop);
    }
    b.log(&format!("run {argv:?}"));
    match spawn(b, argv).and_then(|mut c| c.wait().map_err(|e| e.to_string())) {
        Ok(status) => {
            b.log(&format!("{argv:?}: {status}"));
            status.success()
        }
        Err(e) => {
            b.log(&format!("{argv:?}: {e}"));
            false
        }
    }
}

fn spawn(b: &Booted, argv: &[String]) -> Result<Child, String> {
    let console = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(b.console())
        .map_err(|e| e.to_string())?;
    let err = console.try_clone().map_err(|e| e.to_string())?;
    b.command(argv)
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{argv:?}: {e}"))
}

fn systemctl(
    b: &Arc<Booted>,
    args: &[String],
    children: &Arc<Mutex<Vec<Child>>>,
    stop: &Arc<AtomicBool>,
) -> bool {
    b.log(&format!("systemctl {}", args.join(" ")));
    let Some(verb) = args.first() else {
        return false;
    };
    let units: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with("--")).collect();
    match verb.as_str() {
        "daemon-reload" => true,
        "start" => units.iter().all(|u| start_unit(b, u, children, stop)),
        "enable" if args.iter().any(|a| a == "--now") => {
            units.iter().all(|u| start_unit(b, u, children, stop))
        }
        "enable" => true,
        _ => false,
    }
}

/// Starts `unit` in the background (systemd's `--no-block`, which is how
/// everything here starts units).
fn start_unit(
    b: &Arc<Booted>,
    unit: &str,
    children: &Arc<Mutex<Vec<Child>>>,
    stop: &Arc<AtomicBool>,
) -> bool {
    let path = format!("/etc/systemd/system/{unit}");
    let text = match b
        .command(&["cat".into(), path.clone()])
        .output()
        .map_err(|e| e.to_string())
        .and_then(|o| {
            if o.status.success() {
                Ok(String::from_utf8_lossy(&o.stdout).into_owned())
            } else {
                Err(format!("no unit {path}"))
            }
        }) {
        Ok(t) => t,
        // The distribution's docker.service, which a droplet has from its
        // packages: here only when the simulator runs engines.
        Err(_) if unit == "docker.service" => {
            b.log("docker.service: no engine on this simulated droplet");
            return true;
        }
        Err(e) => {
            b.log(&e);
            return false;
        }
    };
    let values = |key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .collect()
    };
    let oneshot = values("Type").first().is_some_and(|t| t == "oneshot");
    let restart = values("Restart").first().cloned().unwrap_or_default();
    let restart_sec = values("RestartSec")
        .first()
        .and_then(|s| {
            humantime::parse_duration(s)
                .ok()
                .or_else(|| s.parse().ok().map(Duration::from_secs))
        })
        .unwrap_or(Duration::from_millis(100));
    let Some(exec) = values("ExecStart").first().and_then(|l| unquote(l)) else {
        b.log(&format!("{unit}: no ExecStart"));
        return false;
    };
    let exec = adapt(exec);
    let post: Vec<Vec<String>> = values("ExecStartPost")
        .iter()
        .filter_map(|l| unquote(l))
        .collect();
    let (b, children, stop, unit) = (b.clone(), children.clone(), stop.clone(), unit.to_string());
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            b.log(&format!("{unit}: starting {exec:?}"));
            let status = match spawn(&b, &exec) {
                Ok(child) => {
                    let pid = child.id();
                    children
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(child);
                    wait_for(&children, pid, &stop)
                }
                Err(e) => {
                    b.log(&e);
                    None
                }
            };
            b.log(&format!("{unit}: exited {status:?}"));
            if status == Some(0) && oneshot {
                for argv in &post {
                    run_in(&b, argv, &children, &stop);
                }
                return;
            }
            let again = match restart.as_str() {
                "always" => true,
                "on-failure" => status != Some(0),
                _ => false,
            };
            if !again {
                return;
            }
            std::thread::sleep(restart_sec);
        }
    });
    true
}

/// Waits for our child `pid` to exit (polling, so the list stays shared);
/// its exit code, `None` when killed or stopped.
fn wait_for(children: &Arc<Mutex<Vec<Child>>>, pid: u32, stop: &Arc<AtomicBool>) -> Option<i32> {
    loop {
        {
            let mut list = children.lock().unwrap_or_else(|p| p.into_inner());
            let i = list.iter().position(|c| c.id() == pid)?;
            if let Ok(Some(status)) = list[i].try_wait() {
                // Reaped already; wait() returns the same status at once.
                let _ = list.remove(i).wait();
                return status.code();
            }
        }
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An `ExecStart=` value as argv: systemd's quoting, as the crate that
/// writes the units reads it back (`-`/`@`/`+`/`!` prefixes dropped).
fn unquote(line: &str) -> Option<Vec<String>> {
    let line = line.trim_start_matches(['-', '@', '+', '!']);
    apiary_digitalocean::cloud_init::install_unit_command(&format!("ExecStart={line}"))
}

/// What a simulated droplet cannot do on this machine: load kernel modules
/// or rewrite its bootloader. The agent gets the flags the lab gives its own.
fn adapt(mut exec: Vec<String>) -> Vec<String> {
    if exec
        .first()
        .is_some_and(|p| p.ends_with("/apiary-agent") || p.ends_with("/agent"))
    {
        exec.extend(["--no-modprobe".into(), "--no-update-grub".into()]);
    }
    exec
}

/// The droplet's `systemctl` for its own processes (runcmd and units are
/// interpreted by the simulator): `restart docker` stops the engine, whose
/// unit starts it again; the rest succeed without doing anything.
const SYSTEMCTL_SHIM: &str = r#"#!/bin/sh
# dosim: systemctl on a simulated droplet.
case "$1 $2" in
  "restart docker"|"restart docker.service")
    pid=$(cat /run/docker.pid 2>/dev/null) || exit 0
    kill "$pid" 2>/dev/null
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    # The unit starts it again within a second; wait for its socket.
    for i in $(seq 1 100); do [ -S /run/docker.sock ] && [ -s /run/docker.pid ] && [ "$(cat /run/docker.pid)" != "$pid" ] && exit 0; sleep 0.1; done
    exit 1;;
esac
exit 0
"#;
