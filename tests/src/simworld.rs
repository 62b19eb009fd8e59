//! A simulated DigitalOcean for the laptop journey (root): the fake API and
//! the droplet simulator in laptop mode, wired as `coordinator up` meets
//! them, shared by `tests/tests/dosim_laptop.rs` and `apiary-bench up`.
//!
//! The laptop is this machine's root namespace at [`LAPTOP`], on the
//! droplets' public network (198.18.0.0/24, the fake's public range) and
//! behind NAT; the VPC is 10.231.0.0/24, which the laptop cannot reach.
//! The fake API listens on the laptop's loopback (what `up` dials) and on
//! [`LAPTOP`] (what each droplet's relay at its own 127.0.0.1 reaches), on
//! one port, the only one droplets may open a connection to.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apiary_digitalocean::fake::{FakeOptions, FakeServer};

use crate::dosim::{DropletSim, LaptopNet};

pub const LAPTOP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const VPC: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 231, 0, 0), 24);
/// The API token the simulated account takes.
pub const TOKEN: &str = "dop_v1_simulated";

/// The images a droplet would pull (busybox for the probes, the lab's
/// etcd), made the lab's way under `dir`.
pub fn images(dir: &Path) -> Vec<PathBuf> {
    let lab = apiary_lab::Lab::new(apiary_lab::LabSpec {
        cluster: "simimages".into(),
        hosts: vec![],
        state_dir: dir.to_path_buf(),
    })
    .expect("lab");
    vec![
        lab.busybox_archive().expect("busybox image").path,
        lab.etcd_archive().expect("etcd image").path,
    ]
}

/// The fake API and the simulator in laptop mode, droplets with engines
/// that have `images`.
pub struct LaptopWorld {
    pub rt: tokio::runtime::Runtime,
    pub fake: Option<FakeServer>,
    pub sim: Option<Arc<DropletSim>>,
}

impl LaptopWorld {
    pub fn start(droplets_dir: &Path, images: Vec<PathBuf>) -> LaptopWorld {
        let sim = DropletSim::laptop(
            droplets_dir,
            LaptopNet {
                laptop: LAPTOP,
                public_prefix: 24,
                vpc: VPC,
            },
        )
        .expect("simulator network")
        .with_engine(images);
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let fake = rt
            .block_on(FakeServer::start_on(
                FakeOptions {
                    public_range: Some(
                        Ipv4Addr::new(198, 18, 0, 100)..=Ipv4Addr::new(198, 18, 0, 254),
                    ),
                    ..Default::default()
                },
                &[
                    SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    SocketAddr::from((LAPTOP, 0)),
                ],
            ))
            .expect("fake");
        sim.allow_internet(fake.addr().port())
            .expect("the API is on the internet");
        sim.follow(fake.api().clone());
        LaptopWorld {
            rt,
            fake: Some(fake),
            sim: Some(sim),
        }
    }

    pub fn fake(&self) -> &FakeServer {
        self.fake.as_ref().expect("fake")
    }

    pub fn sim(&self) -> &Arc<DropletSim> {
        self.sim.as_ref().expect("sim")
    }

    /// A spec for `coordinator up`: `hosts` droplets, Swarm with quick
    /// checks, etcd on 3 of them; no listen, no advertise (derived).
    pub fn spec(&self, cluster: &str, hosts: usize) -> String {
        format!(
            "[cluster]\nname = \"{cluster}\"\n\n[coordinator]\nheartbeat_interval = \"1s\"\n\n[provider]\nkind = \"digitalocean\"\nhosts = {hosts}\n\n[digitalocean]\napi_url = \"{}\"\nregion = \"nyc3\"\npoll_interval = \"100ms\"\nvpc_ip_range = \"10.231.0.0/24\"\nfirewall = true\nadmin_cidrs = [\"{LAPTOP}/32\"]\n\n[swarm]\nchecks_interval = \"2s\"\n\n[database]\nkind = \"etcd\"\nimage = \"lab/etcd:1\"\nservers = 3\n",
            self.fake().url()
        )
    }

    /// `coordinator up` as the operator types it, from the laptop: the
    /// spec at `spec`, the laptop's files in `laptop`, the simulated
    /// account's token; `extra` arguments after.
    pub fn up(spec: &Path, laptop: &Path, extra: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(crate::bin("coordinator"));
        c.args([
            "up",
            "--quiet",
            "--admin-cidr",
            &format!("{LAPTOP}/32"),
            "--config",
        ])
        .arg(spec)
        .arg("--state-dir")
        .arg(laptop)
        .args(extra)
        .env(apiary_digitalocean::TOKEN_VAR, TOKEN);
        c
    }

    /// `coordinator teardown` of what [`LaptopWorld::up`] made.
    pub fn teardown(spec: &Path, laptop: &Path) -> std::process::Command {
        let mut c = std::process::Command::new(crate::bin("coordinator"));
        c.args(["teardown", "--config"])
            .arg(spec)
            .arg("--state-dir")
            .arg(laptop)
            .env(apiary_digitalocean::TOKEN_VAR, TOKEN);
        c
    }

    /// Nothing apiary made is left in the account: no droplet, firewall,
    /// VPC of its own or SSH key.
    pub fn assert_account_empty(&self) {
        let api = self.fake().api();
        assert!(api.droplets().is_empty(), "{:?}", api.droplets());
        assert!(api.firewalls().is_empty(), "{:?}", api.firewalls());
        assert!(api.vpcs().iter().all(|v| v.default), "{:?}", api.vpcs());
        assert!(api.ssh_key_count() == 0, "SSH keys left");
    }

    /// Everything stopped and removed (namespaces, links, rules, mounts).
    pub fn stop(mut self) {
        if let Some(sim) = self.sim.take() {
            sim.teardown();
        }
        if let Some(f) = self.fake.take() {
            self.rt.block_on(f.shutdown());
        }
    }
}

impl Drop for LaptopWorld {
    fn drop(&mut self) {
        if let Some(sim) = self.sim.take() {
            sim.teardown();
        }
        if let Some(f) = self.fake.take() {
            self.rt.block_on(f.shutdown());
        }
    }
}
