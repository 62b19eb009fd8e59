//! The droplet simulator's laptop mode (`apiary_tests::dosim`), what
//! `coordinator up` stands on: the root namespace is the operator's laptop
//! behind NAT; droplets have public addresses it reaches and VPC addresses
//! it does not; a droplet runs sshd with the host key its user_data carried
//! and root's key from the API, and systemd units that a test can kill.
//! Root: run as `flock /tmp/apiary-root-tests.lock cargo test -j1 --test dosim_laptop`.

// Tests panic on the unexpected by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use apiary_digitalocean::fake::{FakeOptions, FakeServer};
use apiary_digitalocean::model::{DropletCreate, ImageValue, SshKeyValue};
use apiary_digitalocean::{Client, DigitalOceanSpec, TOKEN_VAR};
use apiary_tests::dosim::{self, DropletSim, LaptopNet};
use apiary_tests::{LAB_SERIAL, eventually_or, require_root};

const LAPTOP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dosim-test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "{}", text(&out));
    std::fs::read_to_string(path.with_extension("pub"))
        .expect("public key")
        .trim()
        .to_string()
}

/// `ssh root@ip ARGS` with the laptop's options: only the pinned host key.
fn ssh(dir: &Path, ip: Ipv4Addr, extra: &[&str], command: &str) -> Output {
    Command::new("ssh")
        .args(["-F", "/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            dir.join("known_hosts").display()
        ))
        .args(["-o", "ConnectTimeout=5"])
        .args(extra)
        .arg(format!("root@{ip}"))
        .arg(command)
        .output()
        .expect("ssh")
}

fn in_droplet(sim: &DropletSim, name: &str, argv: &[&str]) -> Output {
    sim.command(name, argv)
        .expect("droplet booted")
        .output()
        .expect("run in droplet")
}

#[test]
fn a_laptop_reaches_droplets_by_ssh_with_pinned_keys_and_is_behind_nat() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_root();
    let dir = tempfile::tempdir().expect("tmp");
    let droplets_dir = dir.path().join("droplets");
    let sim = DropletSim::laptop(
        &droplets_dir,
        LaptopNet {
            laptop: LAPTOP,
            public_prefix: 24,
            vpc: (Ipv4Addr::new(10, 231, 0, 0), 24),
        },
    )
    .expect("simulator network");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let options = FakeOptions {
        public_range: Some(Ipv4Addr::new(198, 18, 0, 100)..=Ipv4Addr::new(198, 18, 0, 254)),
        ..Default::default()
    };
    let fake = rt
        .block_on(FakeServer::start_on(
            options,
            &[
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                SocketAddr::from((LAPTOP, 0)),
            ],
        ))
        .expect("fake");
    let port = fake.addr().port();
    sim.allow_internet(port)
        .expect("the API is on the internet");
    sim.follow(fake.api().clone());

    // The operator's key through the API, and a host key the laptop knows
    // before the droplet exists.
    let user_key = keygen(&dir.path().join("id_ed25519"));
    let host_key_path = dir.path().join("host_ed25519");
    let host_public = keygen(&host_key_path);
    let host_private = std::fs::read_to_string(&host_key_path).expect("host key");
    let mut spec = DigitalOceanSpec::new();
    spec.api_url = Some(fake.url());
    let config = spec
        .validate(|k| (k == TOKEN_VAR).then(|| "dop_v1_simulated".to_string()))
        .expect("config");
    let client = Client::new(&config).expect("client");
    let key = rt
        .block_on(client.create_ssh_key("laptop", &user_key))
        .expect("sshKeys_create");
    let vpc = rt
        .block_on(client.create_vpc("dosim-laptop", "nyc3", "", Some("10.231.0.0/24")))
        .expect("vpc");
    let user_data = serde_norway::to_string(&serde_json::json!({
        "ssh_keys": {
            "ed25519_private": host_private,
            "ed25519_public": host_public,
        },
    }))
    .expect("yaml");
    let user_data = format!("#cloud-config\n{user_data}");
    let created = rt
        .block_on(client.create_droplets(&DropletCreate {
            name: Some("coordinator".into()),
            names: None,
            region: "nyc3".into(),
            size: "s-1vcpu-1gb".into(),
            image: ImageValue::Slug("ubuntu-24-04-x64".into()),
            ssh_keys: vec![SshKeyValue::Id(key.id.expect("key id"))],
            tags: vec!["dosim".into()],
            user_data: Some(user_data),
            vpc_uuid: Some(vpc.id.clone()),
        }))
        .expect("droplets_create");
    let id = created[0].id;
    let droplet = fake
        .api()
        .droplets()
        .into_iter()
        .find(|d| d.id == id)
        .expect("droplet");
    let (public, private) = (droplet.public_ipv4, droplet.private_ipv4);
    assert!(public.octets()[..3] == [198, 18, 0], "{public}");
    std::fs::write(
        dir.path().join("known_hosts"),
        format!("{public} {host_public}\n"),
    )
    .expect("known_hosts");
    let key_arg = dir.path().join("id_ed25519").display().to_string();
    let consoles = || sim.consoles();

    // ssh as coordinator up runs it: the pinned host key and the key the
    // API was given.
    let out = eventually_or(
        "ssh into the droplet with the pinned host key",
        Duration::from_secs(60),
        || {
            let out = ssh(dir.path(), public, &["-i", &key_arg], "cat /etc/hostname");
            out.status.success().then_some(out)
        },
        consoles,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "coordinator");
    // No password: the server offers only keys.
    let out = ssh(
        dir.path(),
        public,
        &[
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ],
        "true",
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied (publickey)"),
        "{}",
        text(&out)
    );
    // Another host key than the pinned one is refused by the client.
    let other = dir.path().join("other_ed25519");
    let other_public = keygen(&other);
    std::fs::write(
        dir.path().join("known_hosts"),
        format!("{public} {other_public}\n"),
    )
    .expect("known_hosts");
    let out = ssh(dir.path(), public, &["-i", &key_arg], "true");
    assert!(!out.status.success(), "{}", text(&out));
    std::fs::write(
        dir.path().join("known_hosts"),
        format!("{public} {host_public}\n"),
    )
    .expect("known_hosts");

    // The laptop holds no VPC address and reaches none.
    let (_, addrs) = apiary_tests::sh(&["ip", "-o", "addr"]);
    assert!(!addrs.contains("10.231.0."), "{addrs}");
    let reach = std::net::TcpStream::connect_timeout(
        &SocketAddr::from((private, 22)),
        Duration::from_secs(2),
    );
    assert!(reach.is_err(), "the laptop reached {private}:22");

    // NAT: the droplet reaches the API (the internet), through its public
    // side and on its own loopback, but not a port the laptop listens on.
    let listener = TcpListener::bind((LAPTOP, 0)).expect("laptop listener");
    let closed = listener.local_addr().expect("addr").port();
    let curl = |url: String| {
        in_droplet(
            &sim,
            "coordinator",
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "3",
                "-H",
                "Authorization: Bearer dop_v1_simulated",
                &url,
            ],
        )
    };
    let out = curl(format!("http://{LAPTOP}:{port}/v2/account"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        text(&out)
    );
    let out = curl(format!("http://127.0.0.1:{port}/v2/account"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        text(&out)
    );
    let out = curl(format!("http://{LAPTOP}:{closed}/"));
    assert!(!out.status.success(), "{}", text(&out));
    drop(listener);

    // A Type=simple unit installed over that SSH session, as coordinator
    // up installs its own: EnvironmentFile read, restarted after kill -9.
    let install = "set -e
umask 077
mkdir -p /etc/apiary
printf 'DIGITALOCEAN_ACCESS_TOKEN=dop_v1_from_env_file\\n# comment\\n' > /etc/apiary/digitalocean.env
cat > /usr/local/bin/stand-in <<'EOF'
#!/bin/sh
echo \"$$ $DIGITALOCEAN_ACCESS_TOKEN\" >> /var/lib/stand-in.log
exec sleep 1000
EOF
chmod 0755 /usr/local/bin/stand-in
cat > /etc/systemd/system/apiary-coordinator.service <<'EOF'
[Unit]
Description=stand-in for the coordinator
[Service]
Type=simple
EnvironmentFile=/etc/apiary/digitalocean.env
ExecStart=/usr/local/bin/stand-in
Restart=always
RestartSec=1
[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable --now apiary-coordinator
";
    let out = ssh(dir.path(), public, &["-i", &key_arg], install);
    assert!(out.status.success(), "{}\n{}", text(&out), consoles());
    let first = eventually_or(
        "the unit running",
        Duration::from_secs(20),
        || sim.unit_pid("coordinator", "apiary-coordinator"),
        consoles,
    );
    let log = || {
        let out = ssh(
            dir.path(),
            public,
            &["-i", &key_arg],
            "cat /var/lib/stand-in.log",
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually_or(
        "the unit saw its EnvironmentFile",
        Duration::from_secs(20),
        || {
            log()
                .contains(&format!("{first} dop_v1_from_env_file"))
                .then_some(())
        },
        consoles,
    );
    let out = ssh(
        dir.path(),
        public,
        &["-i", &key_arg],
        "systemctl is-active apiary-coordinator",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "active",
        "{}",
        text(&out)
    );
    // The token is root's only.
    let out = in_droplet(
        &sim,
        "coordinator",
        &["stat", "-c", "%a", "/etc/apiary/digitalocean.env"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "600");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    let second = eventually_or(
        "the unit restarted",
        Duration::from_secs(20),
        || {
            sim.unit_pid("coordinator", "apiary-coordinator")
                .filter(|p| *p != first)
        },
        consoles,
    );
    eventually_or(
        "the restarted unit saw its EnvironmentFile",
        Duration::from_secs(20),
        || {
            log()
                .contains(&format!("{second} dop_v1_from_env_file"))
                .then_some(())
        },
        consoles,
    );

    // Teardown leaves nothing: droplet gone from the API, then the
    // simulator dropped.
    rt.block_on(client.delete_droplet(id)).expect("delete");
    eventually_or(
        "the droplet shut down",
        Duration::from_secs(20),
        || {
            let (_, netns) = apiary_tests::sh(&["ip", "netns", "list"]);
            (!netns.contains("dosim.")).then_some(())
        },
        consoles,
    );
    // Gone, or a zombie on its way (this machine's PID 1 may not reap
    // it at once): not running.
    let running = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
    };
    eventually_or(
        "the unit's process ended with its droplet",
        Duration::from_secs(10),
        || (!running(second)).then_some(()),
        consoles,
    );
    sim.teardown();
    rt.block_on(fake.shutdown());
    let (_, links) = apiary_tests::sh(&["ip", "-o", "link"]);
    for link in [dosim::BRIDGE, dosim::PUBLIC_BRIDGE, "dsv", "dsp"] {
        assert!(!links.contains(link), "{link} left: {links}");
    }
    let (_, tables) = apiary_tests::sh(&["nft", "list", "tables"]);
    assert!(!tables.contains(dosim::NFT_TABLE), "{tables}");
    let (_, routes) = apiary_tests::sh(&["ip", "route"]);
    assert!(!routes.contains("10.231.0.0/24"), "{routes}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&droplets_dir.display().to_string()),
        "{mounts}"
    );
}

/// The whole journey from a laptop behind NAT: `coordinator up` makes the
/// coordinator's droplet, installs it over one pinned SSH session, and the
/// coordinator there makes 4 host droplets that form Swarm, check the
/// overlay and run etcd; the coordinator is killed (-9) on its droplet
/// mid-bring-up and adopts everything; the laptop's `ctl` reaches it over
/// mutual TLS (status, checks, a tunnel to the database); `coordinator
/// teardown` leaves no droplet, firewall, VPC, SSH key or namespace.
#[test]
fn coordinator_up_from_a_laptop_behind_nat_brings_the_cluster_up_and_teardown_removes_it_all() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_root();
    use apiary_tests::simworld::{self, LaptopWorld};
    use apiary_tests::{Proc, ctl_with, eventually};
    let dir = tempfile::tempdir().expect("tmp");
    let world = LaptopWorld::start(
        &dir.path().join("droplets"),
        simworld::images(&dir.path().join("images")),
    );
    let (sim, fake) = (world.sim(), world.fake());
    let spec = dir.path().join("cluster.toml");
    std::fs::write(&spec, world.spec("bees", 4)).expect("spec");
    let laptop = dir.path().join("laptop");
    let up = LaptopWorld::up(&spec, &laptop, &["--timeout", "15m"]);
    let up_log = dir.path().join("up.log");
    let mut up = Proc::spawn(up, &up_log);
    let consoles = || {
        format!(
            "coordinator up:\n{}\n{}",
            std::fs::read_to_string(&up_log).unwrap_or_default(),
            sim.consoles()
        )
    };

    // The coordinator on its droplet, killed (-9) once it has made a host
    // droplet: systemd starts it again, and it adopts what exists.
    let coordinator_pid = eventually_or(
        "a host droplet made by the coordinator droplet",
        Duration::from_secs(300),
        || {
            let hosts = fake
                .api()
                .droplets()
                .into_iter()
                .filter(|d| d.tags.iter().any(|t| t == "apiary-bees"))
                .count();
            (hosts > 0)
                .then(|| sim.unit_pid("bees-coordinator", "apiary-coordinator"))
                .flatten()
        },
        consoles,
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(coordinator_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the coordinator on its droplet");
    eventually_or(
        "the coordinator started again on its droplet",
        Duration::from_secs(30),
        || {
            sim.unit_pid("bees-coordinator", "apiary-coordinator")
                .filter(|p| *p != coordinator_pid)
        },
        consoles,
    );

    let code = up.wait_exit(Duration::from_secs(900));
    let said = std::fs::read_to_string(&up_log).unwrap_or_default();
    assert_eq!(code, 0, "{}", consoles());
    assert!(said.contains("cluster up"), "{said}");
    assert!(said.contains("phases: "), "{said}");
    eprintln!(
        "{}",
        said.lines()
            .filter(|l| l.starts_with("phases"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // From the laptop: admin.conf points at the droplet's public address.
    let admin = laptop.join("admin.conf");
    let conf = std::fs::read_to_string(&admin).expect("admin.conf");
    assert!(conf.contains("198.18.0."), "{conf}");
    let out = ctl_with(&admin, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 4, "{status}");
    assert!(nodes.iter().all(|n| n["state"] == "ready"), "{status}");
    assert_eq!(status["database"]["healthy"], true, "{status}");
    // One droplet per host, and the coordinator's: nothing twice.
    let mut names: Vec<String> = fake.api().droplets().into_iter().map(|d| d.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bees-coordinator",
            "queenbee",
            "workerbee-1",
            "workerbee-2",
            "workerbee-3"
        ],
        "{}",
        consoles()
    );
    let checks = eventually_or(
        "the overlay checked",
        Duration::from_secs(120),
        || {
            let out = ctl_with(&admin, &["checks", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["phase"] == "swarm" && v["ok"] == true).then_some(v)
        },
        consoles,
    );
    assert!(
        checks["cells"].as_array().is_some_and(|c| !c.is_empty()),
        "{checks}"
    );
    // A tunnel to the database from the laptop: etcd answers through it.
    let creds = dir.path().join("creds");
    let out = ctl_with(
        &admin,
        &[
            "database",
            "credentials",
            "--out",
            &creds.display().to_string(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let (tunnel, local) = apiary_tests::ctl_tunnel(&admin, "database:admin", dir.path());
    let health = apiary_tests::etcd_get(&creds, local, "/health");
    assert!(
        health.as_ref().is_ok_and(|body| body.contains("true")),
        "{health:?}"
    );
    drop(tunnel);
    // The API token reached the droplet only as a root-only file.
    let env = in_droplet(
        sim,
        "bees-coordinator",
        &["stat", "-c", "%a %U", "/etc/apiary/digitalocean.env"],
    );
    assert_eq!(
        String::from_utf8_lossy(&env.stdout).trim(),
        "600 root",
        "{}",
        text(&env)
    );
    let user_data: String = fake
        .api()
        .droplets()
        .into_iter()
        .filter_map(|d| d.user_data)
        .collect();
    assert!(
        !user_data.contains("dop_v1_simulated"),
        "the token is in a user_data"
    );

    // Teardown from the laptop: nothing left.
    let out = LaptopWorld::teardown(&spec, &laptop)
        .output()
        .expect("teardown");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    for part in [
        "coordinator droplet bees-coordinator",
        "SSH key apiary-bees",
        "deleted VPC",
    ] {
        assert!(said.contains(part), "{part:?} not in:\n{said}");
    }
    world.assert_account_empty();
    eventually(
        "every droplet's namespace gone",
        Duration::from_secs(60),
        || {
            let (_, netns) = apiary_tests::sh(&["ip", "netns", "list"]);
            (!netns.contains("dosim.")).then_some(())
        },
    );
    world.stop();
}

/// `coordinator up --on-host queenbee`: no droplet of its own; the
/// coordinator runs on the first host's droplet, whose agent is installed
/// beside it, and the cluster is the same four droplets.
#[test]
fn coordinator_up_on_one_of_the_hosts_makes_no_droplet_of_its_own() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_root();
    use apiary_tests::ctl_with;
    use apiary_tests::simworld::{self, LaptopWorld};
    let dir = tempfile::tempdir().expect("tmp");
    let world = LaptopWorld::start(
        &dir.path().join("droplets"),
        simworld::images(&dir.path().join("images")),
    );
    let spec = dir.path().join("cluster.toml");
    std::fs::write(&spec, world.spec("hive", 4)).expect("spec");
    let laptop = dir.path().join("laptop");
    let up = |extra: &[&str]| LaptopWorld::up(&spec, &laptop, extra).output().expect("up");
    // Not a host of the spec: refused, nothing made.
    let out = up(&["--on-host", "drone-7"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        text(&out).contains("drone-7") && text(&out).contains("queenbee"),
        "{}",
        text(&out)
    );
    assert!(world.fake().api().droplets().is_empty());

    let out = up(&["--on-host", "queenbee", "--timeout", "15m"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out),
        world.sim().consoles()
    );
    let admin = laptop.join("admin.conf");
    let out = ctl_with(&admin, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 4, "{status}");
    assert!(nodes.iter().all(|n| n["state"] == "ready"), "{status}");
    assert_eq!(status["database"]["healthy"], true, "{status}");
    let droplets = world.fake().api().droplets();
    let mut names: Vec<&str> = droplets.iter().map(|d| d.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["queenbee", "workerbee-1", "workerbee-2", "workerbee-3"]
    );
    let queen = droplets
        .iter()
        .find(|d| d.name == "queenbee")
        .expect("queenbee");
    for tag in ["apiary-hive", "apiary-hive-coordinator"] {
        assert!(queen.tags.iter().any(|t| t == tag), "{:?}", queen.tags);
    }

    let out = LaptopWorld::teardown(&spec, &laptop)
        .output()
        .expect("teardown");
    assert!(out.status.success(), "{}", text(&out));
    world.assert_account_empty();
    world.stop();
}
