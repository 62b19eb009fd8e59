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
    assert!(
        std::process::Command::new("kill")
            .args(["-0", &second.to_string()])
            .output()
            .is_ok_and(|o| !o.status.success()),
        "the unit's process outlived its droplet"
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
