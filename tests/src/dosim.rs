//! A droplet simulator for root tests: every droplet the fake DigitalOcean
//! API makes "boots" here as a network namespace that runs its real
//! user_data, the way cloud-init and systemd would on a droplet.
//!
//! - **Network, two layouts.** Each droplet has its VPC address (the
//!   fake's, from the VPC's range) on `eth1`, on one bridge in the root
//!   namespace ([`BRIDGE`]), and its public address on `eth0`.
//!   - [`DropletSim::new`]: the root namespace is *inside the VPC*: the
//!     bridge holds the range's first address (where the test's coordinator
//!     listens), droplets route through it, and `eth0` is an unplugged link
//!     (the agent still sees a droplet's two interfaces).
//!   - [`DropletSim::laptop`]: the root namespace is *the operator's laptop
//!     behind NAT*, as `coordinator up` sees DigitalOcean. The VPC bridge
//!     holds no address here (and the VPC's range is unreachable from the
//!     root namespace), so the laptop reaches no VPC address; `eth0` is
//!     plugged into a public bridge ([`PUBLIC_BRIDGE`]) that holds the
//!     laptop's address (198.18.0.1/24 in the tests), with the droplets'
//!     public addresses from the fake's [`FakeOptions::public_range`]. An
//!     nftables table of the simulator's own ([`NFT_TABLE`]) drops every new
//!     connection that arrives from the public side, except to the ports
//!     [`DropletSim::allow_internet`] opened (the fake API, served on the
//!     laptop's address: it is "the internet", which a droplet reaches).
//!     Droplets have no default route: the public /24 and the VPC are all
//!     they can reach.
//! - **A private root.** Each droplet has its own mount namespace (kept in a
//!   file, as the lab keeps its UTS namespaces) in which `/etc`,
//!   `/usr/local`, `/var/lib` and `/root` are overlays whose writes land in
//!   the droplet's directory, and `/run` is a fresh tmpfs (so nothing on a
//!   droplet finds this machine's Docker socket). Nothing it writes touches
//!   this machine's files. `/etc/hostname` is the droplet's name.
//! - **cloud-init.** The user_data is checked with the real `cloud-init
//!   schema`; `ssh_keys` become the host keys (this machine's are deleted
//!   from the droplet's view first, as `ssh_deletekeys` does; with no
//!   `ssh_keys`, the `ssh_genkeytypes` are generated), `write_files` are
//!   written (with their modes) and `runcmd` run in the droplet; `packages`
//!   are taken as installed (curl and nftables are this machine's).
//! - **sshd**, as on DigitalOcean's images: this machine's `/usr/sbin/sshd`
//!   runs in the droplet under the unit `ssh.service` with a droplet-local
//!   config: root by key only (`authorized_keys` holds the public keys of
//!   the SSH keys the create named), no passwords, no PAM.
//! - **systemd.** `systemctl` is interpreted by the simulator, from runcmd,
//!   units, and any process in the droplet (its `/usr/bin/systemctl` is a
//!   shim that asks the simulator through a spool directory and waits for
//!   the answer): `daemon-reload`, `start`, `stop`, `restart`, `enable
//!   [--now]` and `is-active` on units from the droplet's
//!   `/etc/systemd/system`. A unit runs `ExecStart` with `Environment=` and
//!   `EnvironmentFile=` (read at each start), then for a oneshot that
//!   succeeded its `ExecStartPost`, with `Restart=always`/`on-failure` and
//!   `RestartSec` honoured; starting an active unit does nothing. Its main
//!   process is [`DropletSim::unit_pid`] (tests kill it to see it restarted).
//!   `docker.service` is the simulator's own, with `with_engine`.
//! - **What a droplet cannot do here**: change this machine's kernel modules
//!   or bootloader. The agent is started with `--no-modprobe
//!   --no-update-grub`, the flags the lab gives its agents, and that is the
//!   only change made to what the droplet asked for.
//!
//! Everything is torn down when the simulator is dropped: processes (by
//! the handles of the children it started, then any process left in a
//! droplet's network namespace, such as SSH sessions), overlays,
//! namespaces, links, the nftables table and the route.
//!
//! Limitations: a droplet's `/tmp` is this machine's (the simulator's
//! spool directories live under `dir`, which droplets must see, so `dir`
//! must not be under an overlaid directory).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(doc)]
use apiary_digitalocean::fake::FakeOptions;
use apiary_digitalocean::fake::{FakeApi, FakeDroplet};

/// The root namespace's bridge for the simulated VPC.
pub const BRIDGE: &str = "dosim-vpc";
/// The root namespace's bridge for the public side (laptop mode).
pub const PUBLIC_BRIDGE: &str = "dosim-pub";
/// The simulator's nftables table (laptop mode): the NAT in front of the
/// laptop.
pub const NFT_TABLE: &str = "apiary-dosim";
/// Directories a droplet writes to, each an overlay over this machine's.
const OVERLAID: [&str; 4] = ["/etc", "/usr/local", "/var/lib", "/root"];
/// Route metric of the laptop's "no route into the VPC": above anything a
/// lab bridge holding the same range would have.
const UNREACHABLE_METRIC: &str = "4242";

/// How the simulated network is laid out.
#[derive(Clone, Debug)]
enum Layout {
    /// The root namespace is in the VPC, at `gateway`.
    InVpc { gateway: Ipv4Addr },
    /// The root namespace is a laptop at `laptop/public_prefix` on the
    /// public bridge; `vpc` is the VPC's range (unreachable from it).
    Laptop {
        laptop: Ipv4Addr,
        public_prefix: u8,
        vpc: (Ipv4Addr, u8),
    },
}

/// The laptop-mode network: see [`DropletSim::laptop`].
#[derive(Clone, Debug)]
pub struct LaptopNet {
    /// The laptop's address on the public bridge (e.g. 198.18.0.1).
    pub laptop: Ipv4Addr,
    /// The public side's prefix length (e.g. 24).
    pub public_prefix: u8,
    /// The VPC's network address and prefix (e.g. 10.231.0.0/24), as the
    /// cluster spec's `vpc_ip_range` says.
    pub vpc: (Ipv4Addr, u8),
}

/// A unit the simulator runs for a droplet.
#[derive(Default)]
struct UnitRun {
    /// The main process while it runs.
    pid: Mutex<Option<u32>>,
    /// Stopped (or finished): its loop starts nothing more.
    stopped: AtomicBool,
}

/// One booted droplet.
struct Booted {
    name: String,
    netns: String,
    veth: String,
    /// The public side's host end (laptop mode).
    public_veth: String,
    dir: PathBuf,
    units: Mutex<HashMap<String, Arc<UnitRun>>>,
    /// Shut down: unit loops and the systemctl spool stop.
    down: AtomicBool,
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

    /// Where the droplet's `systemctl` leaves its requests (a path both
    /// the droplet and this machine see).
    fn spool(&self) -> PathBuf {
        self.dir.join("systemctl")
    }

    fn gone(&self, stop: &AtomicBool) -> bool {
        stop.load(Ordering::SeqCst) || self.down.load(Ordering::SeqCst)
    }

    /// `argv` inside the droplet; whether it succeeded is an error naming
    /// its output otherwise.
    fn exec(&self, argv: &[&str]) -> Result<String, String> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let out = self
            .command(&argv)
            .output()
            .map_err(|e| format!("{argv:?}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{argv:?} in the droplet: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
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
    layout: Layout,
    /// The VPC's prefix length.
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
    /// Laptop mode: the laptop's ports droplets may connect to.
    internet: Mutex<Vec<u16>>,
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
        let sim = Self::empty(dir, Layout::InVpc { gateway }, prefix);
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
        Ok(Arc::new(sim))
    }

    /// Laptop mode: the root namespace is the operator's laptop at
    /// `net.laptop` on the public bridge, behind NAT (no droplet can open a
    /// connection to it but to the ports [`Self::allow_internet`] opens),
    /// with no way into the VPC, whose bridge holds no address here. The
    /// fake must hand out public addresses in `net.laptop`'s network
    /// ([`FakeOptions::public_range`]).
    pub fn laptop(dir: &Path, net: LaptopNet) -> Result<Arc<DropletSim>, String> {
        let LaptopNet {
            laptop,
            public_prefix,
            vpc,
        } = net;
        // Built first so that a failure below tears down what was made.
        let sim = Self::empty(
            dir,
            Layout::Laptop {
                laptop,
                public_prefix,
                vpc,
            },
            vpc.1,
        );
        // What a run killed mid-way left behind.
        let _ = run(&["ip", "link", "del", BRIDGE]);
        let _ = run(&["ip", "link", "del", PUBLIC_BRIDGE]);
        let _ = run(&["nft", "delete", "table", "inet", NFT_TABLE]);
        let vpc_range = format!("{}/{}", vpc.0, vpc.1);
        let _ = run(&[
            "ip",
            "route",
            "del",
            "unreachable",
            &vpc_range,
            "metric",
            UNREACHABLE_METRIC,
        ]);
        run(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
        run(&["ip", "link", "set", BRIDGE, "up"])?;
        run(&["ip", "link", "add", PUBLIC_BRIDGE, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{laptop}/{public_prefix}"),
            "dev",
            PUBLIC_BRIDGE,
        ])?;
        run(&["ip", "link", "set", PUBLIC_BRIDGE, "up"])?;
        // A laptop has no route into a VPC: its packets for one would go
        // out by its default route and die on the internet. Here they
        // would go out by this machine's, so they stop on this machine.
        run(&[
            "ip",
            "route",
            "add",
            "unreachable",
            &vpc_range,
            "metric",
            UNREACHABLE_METRIC,
        ])?;
        // The NAT: replies to the laptop's own connections come back, new
        // connections from the public side are dropped unless to a port of
        // "the internet"; nothing from the public side is forwarded
        // anywhere else.
        let rules = format!(
            "table inet {NFT_TABLE} {{\n\
             \tset internet {{ type inet_service; }}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tiifname \"{PUBLIC_BRIDGE}\" ct state established,related accept\n\
             \t\tiifname \"{PUBLIC_BRIDGE}\" ip daddr {laptop} tcp dport @internet accept\n\
             \t\tiifname \"{PUBLIC_BRIDGE}\" drop\n\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tiifname \"{PUBLIC_BRIDGE}\" oifname != \"{PUBLIC_BRIDGE}\" drop\n\
             \t}}\n\
             }}\n"
        );
        nft_apply(&rules)?;
        Ok(Arc::new(sim))
    }

    fn empty(dir: &Path, layout: Layout, prefix: u8) -> DropletSim {
        DropletSim {
            dir: dir.to_path_buf(),
            layout,
            prefix,
            booted: Mutex::new(HashMap::new()),
            children: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            broken_downloads: Mutex::new(Default::default()),
            engine: None,
            failed: Mutex::new(Default::default()),
            internet: Mutex::new(Vec::new()),
        }
    }

    /// Laptop mode: droplets may open connections to the laptop's `port`
    /// (where the fake API listens: the internet a droplet reaches), and
    /// each droplet booted after this call finds it on its own loopback
    /// too: a relay carries 127.0.0.1:`port` in the droplet over its public
    /// side to the laptop's `port`. So the fake's loopback URL works on the
    /// laptop and on a droplet alike (as api.digitalocean.com does), and
    /// the client's rule (plain http only on loopback) needs no exception.
    pub fn allow_internet(&self, port: u16) -> Result<(), String> {
        self.internet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(port);
        run(&[
            "nft",
            "add",
            "element",
            "inet",
            NFT_TABLE,
            "internet",
            &format!("{{ {port} }}"),
        ])
    }

    /// Laptop mode: the laptop's address on the public side.
    pub fn laptop_address(&self) -> Option<Ipv4Addr> {
        match &self.layout {
            Layout::Laptop { laptop, .. } => Some(*laptop),
            Layout::InVpc { .. } => None,
        }
    }

    /// The main process of `unit` (`apiary-coordinator` or with its
    /// `.service`) on the droplet named `name`, while it runs.
    pub fn unit_pid(&self, name: &str, unit: &str) -> Option<u32> {
        let b = self.booted_named(name)?;
        let units = b.units.lock().unwrap_or_else(|p| p.into_inner());
        let run = units.get(&unit_name(unit))?;
        *run.pid.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `argv` to run in the droplet named `name` (its network, mount and
    /// UTS namespaces), as a process of the droplet would run.
    pub fn command(&self, name: &str, argv: &[&str]) -> Option<Command> {
        let b = self.booted_named(name)?;
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        Some(b.command(&argv))
    }

    fn booted_named(&self, name: &str) -> Option<Arc<Booted>> {
        let booted = self.booted.lock().unwrap_or_else(|p| p.into_inner());
        booted.values().find(|b| b.name == name).cloned()
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

    /// Tears everything down now, in this thread: stops following the
    /// API, waits for the follower to let go of its reference (it holds one
    /// for each pass, at most 200 ms and a pass), then drops. Merely
    /// dropping an `Arc` the follower holds at that moment would leave the
    /// teardown to its thread, after the caller has moved on.
    pub fn teardown(self: Arc<Self>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut sim = self;
        for _ in 0..600 {
            match Arc::try_unwrap(sim) {
                Ok(alone) => {
                    drop(alone);
                    return;
                }
                Err(shared) => sim = shared,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "dosim: the simulator is still shared after 30 s; its teardown is left to the last holder"
        );
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
            match self.boot(d, &user_data, droplets) {
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

    fn boot(
        &self,
        d: &FakeDroplet,
        user_data: &str,
        droplets: &[FakeDroplet],
    ) -> Result<Arc<Booted>, String> {
        let dir = self.dir.join(format!("{}-{}", d.name, d.id));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let b = Arc::new(Booted {
            name: d.name.clone(),
            netns: format!("dosim.{}", d.id),
            veth: format!("dsv{}", d.id % 100_000),
            public_veth: format!("dsp{}", d.id % 100_000),
            dir,
            units: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
        });
        match self.boot_into(&b, d, user_data, droplets) {
            Ok(()) => Ok(b),
            Err(e) => {
                b.log(&format!("boot failed: {e}"));
                // What it made so far goes: a failed boot leaves nothing.
                self.shut_down(&b);
                Err(e)
            }
        }
    }

    fn boot_into(
        &self,
        b: &Arc<Booted>,
        d: &FakeDroplet,
        user_data: &str,
        droplets: &[FakeDroplet],
    ) -> Result<(), String> {
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
            for source in self.download_sources(d, droplets) {
                run(&[
                    "ip",
                    "netns",
                    "exec",
                    &b.netns,
                    "ip",
                    "route",
                    "add",
                    "blackhole",
                    &format!("{source}/32"),
                ])?;
            }
            b.log("fault: the coordinator is unreachable from this droplet (broken download)");
        }
        if let Layout::Laptop { laptop, .. } = &self.layout {
            let ports = self
                .internet
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for port in ports {
                relay(b.clone(), port, (*laptop, port).into(), self.stop.clone())?;
            }
        }
        self.private_root(b)?;
        self.systemd(b)?;
        // cloud-init's order: host keys (init stage), files, then sshd is
        // up before runcmd (final stage) runs.
        self.ssh_host_keys(b, &doc)?;
        for f in doc["write_files"].as_sequence().into_iter().flatten() {
            let path = f["path"]
                .as_str()
                .ok_or("write_files entry without a path")?;
            let mode = f["permissions"].as_str().unwrap_or("0644");
            let content = f["content"].as_str().unwrap_or("");
            self.write_file(b, path, mode, content)?;
        }
        self.sshd(b, &d.ssh_keys)?;
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

    /// Where a droplet's install unit downloads the agent from, which a
    /// broken download cannot reach: the coordinator in the VPC (the root
    /// namespace), or in laptop mode every other droplet's VPC address
    /// (the coordinator's droplet among them).
    fn download_sources(&self, d: &FakeDroplet, droplets: &[FakeDroplet]) -> Vec<Ipv4Addr> {
        match &self.layout {
            Layout::InVpc { gateway } => vec![*gateway],
            Layout::Laptop { .. } => droplets
                .iter()
                .filter(|o| o.id != d.id)
                .map(|o| o.private_ipv4)
                .collect(),
        }
    }

    /// `eth1` on the VPC's bridge with the VPC address. `eth0` holds the
    /// public address: in laptop mode on the public bridge (no default
    /// route: the public network and the VPC are all a droplet reaches);
    /// otherwise on an unplugged link that answers nothing and routes
    /// nowhere, but the agent sees a droplet's two interfaces and its
    /// firewall tells them apart.
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
        match &self.layout {
            Layout::InVpc { gateway } => {
                inside(&["route", "add", "default", "via", &gateway.to_string()])?;
                // A veth whose peer stays in the namespace, unplugged (this
                // kernel has no dummy links).
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
            }
            Layout::Laptop { public_prefix, .. } => {
                run(&[
                    "ip",
                    "link",
                    "add",
                    &b.public_veth,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    &b.netns,
                ])?;
                run(&[
                    "ip",
                    "link",
                    "set",
                    &b.public_veth,
                    "master",
                    PUBLIC_BRIDGE,
                    "up",
                ])?;
                inside(&[
                    "addr",
                    "add",
                    &format!("{public}/{public_prefix}"),
                    "dev",
                    "eth0",
                ])?;
            }
        }
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
            // The merged directory takes the upper one's mode: /root stays
            // 0700, as sshd's StrictModes expects of a home.
            let mode = std::fs::metadata(dir).map_err(|e| format!("{dir}: {e}"))?;
            std::fs::set_permissions(&upper, mode.permissions()).map_err(|e| e.to_string())?;
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
        enter(&[
            "/bin/sh",
            "-c",
            "printf '%s\\n' \"$1\" > /etc/hostname",
            "sh",
            &b.name,
        ])?;
        std::fs::write(b.uts_ns(), "").map_err(|e| e.to_string())?;
        run(&[
            "unshare",
            &format!("--uts={}", b.uts_ns().display()),
            "hostname",
            &b.name,
        ])?;
        Ok(())
    }

    /// The droplet's systemd: `/usr/bin/systemctl` a shim that asks the
    /// simulator (bound over this machine's in the droplet's mount
    /// namespace, so a script calling it by any path finds the shim), and
    /// the simulator's end of it, which answers each request in the spool.
    fn systemd(&self, b: &Arc<Booted>) -> Result<(), String> {
        std::fs::create_dir_all(b.spool()).map_err(|e| e.to_string())?;
        let shim = SYSTEMCTL_SHIM.replace("@SPOOL@", &b.spool().display().to_string());
        self.write_file(b, "/usr/local/lib/dosim/systemctl", "0755", &shim)?;
        b.exec(&[
            "mount",
            "--bind",
            "/usr/local/lib/dosim/systemctl",
            "/usr/bin/systemctl",
        ])?;
        let (b, children, stop) = (b.clone(), self.children.clone(), self.stop.clone());
        std::thread::spawn(move || {
            while !b.gone(&stop) {
                answer_systemctl(&b, &children, &stop);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Ok(())
    }

    /// cloud-init's `ssh` module: this machine's host keys are gone from
    /// the droplet's view (`ssh_deletekeys`, as on a fresh image); the
    /// user_data's `ssh_keys` are written (a private key without its public
    /// one gets it derived), or with none the `ssh_genkeytypes` are made.
    fn ssh_host_keys(&self, b: &Booted, doc: &serde_norway::Value) -> Result<(), String> {
        if doc["ssh_deletekeys"].as_bool() != Some(false) {
            b.exec(&["/bin/sh", "-c", "rm -f /etc/ssh/ssh_host_*key*"])?;
        }
        if let Some(keys) = doc["ssh_keys"].as_mapping() {
            for (key, value) in keys {
                let (Some(key), Some(value)) = (key.as_str(), value.as_str()) else {
                    continue;
                };
                let Some((kind, part)) = key.split_once('_') else {
                    continue;
                };
                if !["rsa", "ecdsa", "ed25519"].contains(&kind) {
                    b.log(&format!("ssh_keys: skipping {key}"));
                    continue;
                }
                let (path, mode) = match part {
                    "private" => (format!("/etc/ssh/ssh_host_{kind}_key"), "0600"),
                    "public" => (format!("/etc/ssh/ssh_host_{kind}_key.pub"), "0644"),
                    "certificate" => (format!("/etc/ssh/ssh_host_{kind}_key-cert.pub"), "0644"),
                    _ => {
                        b.log(&format!("ssh_keys: skipping {key}"));
                        continue;
                    }
                };
                self.write_file(b, &path, mode, value)?;
            }
            for kind in ["rsa", "ecdsa", "ed25519"] {
                let (private, public) = (format!("{kind}_private"), format!("{kind}_public"));
                if keys.contains_key(private.as_str()) && !keys.contains_key(public.as_str()) {
                    let key = format!("/etc/ssh/ssh_host_{kind}_key");
                    b.exec(&[
                        "/bin/sh",
                        "-c",
                        "ssh-keygen -y -f \"$1\" > \"$1.pub\"",
                        "sh",
                        &key,
                    ])?;
                }
            }
        } else {
            let kinds: Vec<String> = match doc["ssh_genkeytypes"].as_sequence() {
                Some(list) => list
                    .iter()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect(),
                None => vec!["rsa".into(), "ecdsa".into(), "ed25519".into()],
            };
            for kind in kinds {
                let key = format!("/etc/ssh/ssh_host_{kind}_key");
                b.exec(&[
                    "/bin/sh",
                    "-c",
                    "[ -e \"$2\" ] || ssh-keygen -q -t \"$1\" -N '' -f \"$2\"",
                    "sh",
                    &kind,
                    &key,
                ])?;
            }
        }
        b.log("ssh host keys in place");
        Ok(())
    }

    /// sshd as on DigitalOcean's images: root's `authorized_keys` from the
    /// create's SSH keys, a droplet-local config (keys only, no PAM, none
    /// of this machine's settings), and `ssh.service` started.
    fn sshd(&self, b: &Arc<Booted>, authorized: &[String]) -> Result<(), String> {
        let mut keys = authorized.join("\n");
        if !keys.is_empty() {
            keys.push('\n');
        }
        self.write_file(b, "/root/.ssh/authorized_keys", "0600", &keys)?;
        b.exec(&["chmod", "0700", "/root/.ssh"])?;
        self.write_file(b, "/etc/ssh/sshd_config", "0644", SSHD_CONFIG)?;
        // The host keys there are, and sshd's privilege separation
        // directory on the droplet's own /run.
        b.exec(&[
            "/bin/sh",
            "-c",
            "for k in /etc/ssh/ssh_host_*_key; do [ -e \"$k\" ] && echo \"HostKey $k\"; done >> /etc/ssh/sshd_config; \
             for c in /etc/ssh/ssh_host_*_key-cert.pub; do [ -e \"$c\" ] && echo \"HostCertificate $c\"; done >> /etc/ssh/sshd_config; \
             mkdir -p -m 0755 /run/sshd && /usr/sbin/sshd -t",
        ])?;
        self.write_file(
            b,
            "/etc/systemd/system/ssh.service",
            "0644",
            "[Service]\nExecStart=/usr/sbin/sshd -D -e\nRestart=on-failure\nRestartSec=1\n",
        )?;
        if start_unit(b, "ssh.service", &self.children, &self.stop) {
            Ok(())
        } else {
            Err("ssh.service did not start".into())
        }
    }

    /// dockerd in the droplet under a unit of the simulator's (restarted
    /// when it exits; each start in a mount namespace of its own, as `ip
    /// netns exec` gives the lab's engines, so the cgroup mounts of one
    /// engine's life do not pile up under the next), and the images loaded
    /// once the engine answers.
    fn start_engine(&self, b: &Arc<Booted>, images: Vec<PathBuf>) -> Result<(), String> {
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
                if b.gone(&stop) {
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
        b.down.store(true, Ordering::SeqCst);
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
        // What is left in its network namespace is the droplet's too (SSH
        // sessions and what they started, children of an sshd now gone).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &b.netns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let mnt = b.mount_ns().display().to_string();
        let _ = run(&["umount", &mnt]);
        // The UTS namespace's file is mounted on the `ns` bind too: it
        // goes first, or that one stays busy.
        let _ = run(&["umount", &b.uts_ns().display().to_string()]);
        let _ = run(&["umount", &b.dir.join("ns").display().to_string()]);
        let _ = run(&["ip", "netns", "del", &b.netns]);
        let _ = run(&["ip", "link", "del", &b.veth]);
        let _ = run(&["ip", "link", "del", &b.public_veth]);
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
        if let Layout::Laptop { vpc, .. } = &self.layout {
            let _ = run(&["ip", "link", "del", PUBLIC_BRIDGE]);
            let _ = run(&["nft", "delete", "table", "inet", NFT_TABLE]);
            let _ = run(&[
                "ip",
                "route",
                "del",
                "unreachable",
                &format!("{}/{}", vpc.0, vpc.1),
                "metric",
                UNREACHABLE_METRIC,
            ]);
        }
    }
}

/// Listens on 127.0.0.1:`port` in the droplet's network namespace and
/// carries each connection to `to` from there (out of its `eth0`, through
/// the NAT). Threads of this process, in the droplet's namespace: the
/// listener ends when the droplet is shut down.
fn relay(
    b: Arc<Booted>,
    port: u16,
    to: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let ns = std::fs::File::open(format!("/run/netns/{}", b.netns))
        .map_err(|e| format!("{}: {e}", b.netns))?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let listener = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns {}: {e}", b.netns))
            .and_then(|()| {
                std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|e| format!("relay on 127.0.0.1:{port}: {e}"))
            });
        let listener = match listener {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        while !b.gone(&stop) {
            let Ok((inbound, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            // Threads inherit this one's network namespace: the outbound
            // connection leaves from the droplet.
            std::thread::spawn(move || {
                let _ = inbound.set_nonblocking(false);
                let Ok(outbound) =
                    std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
                else {
                    return;
                };
                let (Ok(mut in_read), Ok(mut out_write)) =
                    (inbound.try_clone(), outbound.try_clone())
                else {
                    return;
                };
                let back = std::thread::spawn(move || {
                    let (mut out_read, mut in_write) = (outbound, inbound);
                    let _ = std::io::copy(&mut out_read, &mut in_write);
                    let _ = in_write.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut in_read, &mut out_write);
                let _ = out_write.shutdown(std::net::Shutdown::Write);
                let _ = back.join();
            });
        }
    });
    ready_rx
        .recv()
        .map_err(|e| format!("relay: {e}"))
        .and_then(|r| r)
}

/// Loads an nftables ruleset from text.
fn nft_apply(rules: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft -f: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `name` as a unit's file name (`ssh` is `ssh.service`).
fn unit_name(name: &str) -> String {
    if name.contains('.') {
        name.to_string()
    } else {
        format!("{name}.service")
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
    match spawn(b, argv, &[]).and_then(|mut c| c.wait().map_err(|e| e.to_string())) {
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

fn spawn(b: &Booted, argv: &[String], env: &[(String, String)]) -> Result<Child, String> {
    let console = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(b.console())
        .map_err(|e| e.to_string())?;
    let err = console.try_clone().map_err(|e| e.to_string())?;
    b.command(argv)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{argv:?}: {e}"))
}

/// `systemctl ARGS` as systemd would answer it: whether it succeeded, and
/// what it prints.
fn systemctl(
    b: &Arc<Booted>,
    args: &[String],
    children: &Arc<Mutex<Vec<Child>>>,
    stop: &Arc<AtomicBool>,
) -> bool {
    systemctl_out(b, args, children, stop).0
}

fn systemctl_out(
    b: &Arc<Booted>,
    args: &[String],
    children: &Arc<Mutex<Vec<Child>>>,
    stop: &Arc<AtomicBool>,
) -> (bool, String) {
    b.log(&format!("systemctl {}", args.join(" ")));
    let Some(verb) = args.first() else {
        return (false, String::new());
    };
    let units: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with("--")).collect();
    match verb.as_str() {
        "daemon-reload" => (true, String::new()),
        "start" => (
            units.iter().all(|u| start_unit(b, u, children, stop)),
            String::new(),
        ),
        "enable" if args.iter().any(|a| a == "--now") => (
            units.iter().all(|u| start_unit(b, u, children, stop)),
            String::new(),
        ),
        "enable" => (true, String::new()),
        "stop" => {
            for u in &units {
                stop_unit(b, u);
            }
            (true, String::new())
        }
        "restart" => {
            for u in &units {
                stop_unit(b, u);
            }
            (
                units.iter().all(|u| start_unit(b, u, children, stop)),
                String::new(),
            )
        }
        "is-active" => {
            let active: Vec<bool> = units.iter().map(|u| unit_active(b, u)).collect();
            let out = active
                .iter()
                .map(|a| if *a { "active\n" } else { "inactive\n" })
                .collect();
            (active.iter().all(|a| *a), out)
        }
        other => {
            b.log(&format!("systemctl {other}: not simulated"));
            (false, format!("systemctl {other}: not simulated here\n"))
        }
    }
}

/// Answers the requests the droplet's `systemctl` shim left in the spool:
/// `ID.req` (one argument a line) gets `ID.out` (what it prints) and then
/// `ID.done` (its exit code), each written whole by a rename.
fn answer_systemctl(b: &Arc<Booted>, children: &Arc<Mutex<Vec<Child>>>, stop: &Arc<AtomicBool>) {
    let Ok(entries) = std::fs::read_dir(b.spool()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "req") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let _ = std::fs::remove_file(&path);
        let args: Vec<String> = text.lines().map(str::to_string).collect();
        let (ok, out) = systemctl_out(b, &args, children, stop);
        let write = |ext: &str, content: &str| {
            let tmp = path.with_extension(format!("{ext}.tmp"));
            let _ = std::fs::write(&tmp, content);
            let _ = std::fs::rename(&tmp, path.with_extension(ext));
        };
        write("out", &out);
        write("done", if ok { "0" } else { "1" });
    }
}

fn unit_active(b: &Booted, unit: &str) -> bool {
    let units = b.units.lock().unwrap_or_else(|p| p.into_inner());
    units
        .get(&unit_name(unit))
        .is_some_and(|r| !r.stopped.load(Ordering::SeqCst))
}

/// Stops `unit`: no more restarts, SIGTERM to its main process (as
/// systemd's default `KillMode` starts), and waits up to 10 s for it.
fn stop_unit(b: &Booted, unit: &str) {
    let run = {
        let units = b.units.lock().unwrap_or_else(|p| p.into_inner());
        units.get(&unit_name(unit)).cloned()
    };
    let Some(run) = run else { return };
    run.stopped.store(true, Ordering::SeqCst);
    let pid = *run.pid.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..100 {
            if run.pid.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The environment a unit's process starts with: `Environment=` and the
/// `KEY=VALUE` lines of each `EnvironmentFile=` (one with a `-` may be
/// missing), read from the droplet at each start, as systemd does.
fn unit_environment(
    b: &Booted,
    environment: &[String],
    files: &[String],
) -> Result<Vec<(String, String)>, String> {
    let mut env = Vec::new();
    for line in environment {
        env.extend(unquote(line).unwrap_or_default().iter().filter_map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        }));
    }
    for file in files {
        let (optional, path) = match file.strip_prefix('-') {
            Some(p) => (true, p),
            None => (false, file.as_str()),
        };
        let text = match b.exec(&["cat", path]) {
            Ok(t) => t,
            Err(_) if optional => continue,
            Err(e) => return Err(format!("EnvironmentFile={path}: {e}")),
        };
        env.extend(parse_environment_file(&text));
    }
    Ok(env)
}

/// `KEY=VALUE` lines as systemd reads an `EnvironmentFile=`: blank lines
/// and `#`/`;` comments skipped, a value in matching quotes unquoted.
fn parse_environment_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = ['"', '\'']
                .iter()
                .find_map(|q| v.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

/// Starts `unit` in the background (systemd's `--no-block`, which is how
/// everything here starts units); an active unit is left as it is.
fn start_unit(
    b: &Arc<Booted>,
    unit: &str,
    children: &Arc<Mutex<Vec<Child>>>,
    stop: &Arc<AtomicBool>,
) -> bool {
    let unit = unit_name(unit);
    if unit_active(b, &unit) {
        return true;
    }
    let path = format!("/etc/systemd/system/{unit}");
    let text = match b.exec(&["cat", &path]) {
        Ok(t) => t,
        // The distribution's docker.service, which a droplet has from its
        // packages: here only when the simulator runs engines.
        Err(_) if unit == "docker.service" => {
            b.log("docker.service: no engine on this simulated droplet");
            return true;
        }
        Err(_) => {
            b.log(&format!("no unit {path}"));
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
    let (environment, env_files) = (values("Environment"), values("EnvironmentFile"));
    let run = Arc::new(UnitRun::default());
    {
        let mut units = b.units.lock().unwrap_or_else(|p| p.into_inner());
        // Started by another request meanwhile: that one runs it.
        if units
            .get(&unit)
            .is_some_and(|r| !r.stopped.load(Ordering::SeqCst))
        {
            return true;
        }
        units.insert(unit.clone(), run.clone());
    }
    let (b, children, stop) = (b.clone(), children.clone(), stop.clone());
    std::thread::spawn(move || {
        while !b.gone(&stop) && !run.stopped.load(Ordering::SeqCst) {
            b.log(&format!("{unit}: starting {exec:?}"));
            let status = match unit_environment(&b, &environment, &env_files)
                .and_then(|env| spawn(&b, &exec, &env))
            {
                Ok(child) => {
                    let pid = child.id();
                    children
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(child);
                    *run.pid.lock().unwrap_or_else(|p| p.into_inner()) = Some(pid);
                    let status = wait_for(&b, &children, pid, &stop);
                    *run.pid.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    status
                }
                Err(e) => {
                    b.log(&e);
                    Some(1)
                }
            };
            b.log(&format!("{unit}: exited {status:?}"));
            if status == Some(0) && oneshot {
                for argv in &post {
                    run_in(&b, argv, &children, &stop);
                }
                break;
            }
            let again = match restart.as_str() {
                "always" => true,
                "on-failure" => status != Some(0),
                _ => false,
            };
            if !again {
                break;
            }
            std::thread::sleep(restart_sec);
        }
        // Inactive: a later start runs it again.
        run.stopped.store(true, Ordering::SeqCst);
    });
    true
}

/// Waits for our child `pid` to exit (polling, so the list stays shared);
/// its exit code, `None` when killed or stopped.
fn wait_for(
    b: &Booted,
    children: &Arc<Mutex<Vec<Child>>>,
    pid: u32,
    stop: &Arc<AtomicBool>,
) -> Option<i32> {
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
        if b.gone(stop) {
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

/// The droplet's `systemctl` (bound over `/usr/bin/systemctl` in it): asks
/// the simulator, which plays systemd, through the spool (`@SPOOL@`) and
/// waits for its answer. `restart docker` it does itself, as before: stops
/// the engine, whose unit starts it again, and waits for the new one.
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
spool=@SPOOL@
id="$spool/$$-$(date +%s%N)"
printf '%s\n' "$@" > "$id.tmp" && mv "$id.tmp" "$id.req" || exit 1
i=0
while [ ! -e "$id.done" ]; do
  i=$((i + 1))
  [ "$i" -gt 1200 ] && { echo "systemctl: the simulator did not answer" >&2; exit 1; }
  sleep 0.1
done
cat "$id.out" 2>/dev/null
code=$(cat "$id.done")
rm -f "$id.out" "$id.done"
exit "$code"
"#;

/// A simulated droplet's sshd_config (its `HostKey` lines are added at
/// boot): what DigitalOcean's images and cloud-init leave, root by key
/// only and no passwords. No PAM: it would consult this machine's
/// session setup, which a droplet does not share.
const SSHD_CONFIG: &str = "# dosim: a simulated droplet's sshd.
Port 22
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
UsePAM no
PidFile /run/sshd.pid
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_files_read_as_systemd_reads_them() {
        let text = "# the API token\nDIGITALOCEAN_ACCESS_TOKEN=dop_v1_x\n\n; old\nQUOTED=\"a b\"\nSINGLE='c'\n  SPACED = d \nnot a pair\n";
        assert_eq!(
            parse_environment_file(text),
            [
                (
                    "DIGITALOCEAN_ACCESS_TOKEN".to_string(),
                    "dop_v1_x".to_string()
                ),
                ("QUOTED".into(), "a b".into()),
                ("SINGLE".into(), "c".into()),
                ("SPACED".into(), "d".into()),
            ]
        );
    }

    #[test]
    fn unit_names_get_their_suffix() {
        assert_eq!(
            unit_name("apiary-coordinator"),
            "apiary-coordinator.service"
        );
        assert_eq!(unit_name("docker.service"), "docker.service");
    }
}
