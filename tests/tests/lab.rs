//! The lab provider end to end (root; real Docker engines in network
//! namespaces): bring-up, facts, reachability, self-healing, adoption after a
//! kill -9, and a teardown that leaves nothing behind.

use std::time::Duration;

use apiary_tests::*;

fn docker_name(socket: &str) -> Option<String> {
    let (ok, out) = sh(&[
        "docker",
        "-H",
        &format!("unix://{socket}"),
        "info",
        "--format",
        "{{.Name}}",
    ]);
    ok.then(|| out.trim().to_string())
}

#[test]
fn lab_of_four_comes_up_heals_and_tears_down_completely() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = LabCluster::new("labtest", 4, "");
    lab.start();
    let status = lab.wait_all_ready(Duration::from_secs(120));
    let nodes = status["nodes"].as_array().expect("nodes").clone();
    assert_eq!(nodes.len(), 4, "{status}");

    let mut pids = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let name = n["name"].as_str().expect("name");
        assert_eq!(n["hostname"], name, "each host has its own UTS name");
        assert!(!n["kernel"].as_str().unwrap_or("").is_empty());
        assert!(
            !n["docker_version"].as_str().unwrap_or("").is_empty(),
            "no Docker version for {name}: {n}"
        );
        // The lab-only fields of `ctl status --json` (docs/json.md).
        assert_eq!(n["provider"], "lab");
        assert_eq!(n["netns"], lab.netns(name));
        let root = n["root_prefix"].as_str().expect("root_prefix");
        assert!(std::path::Path::new(root).is_dir(), "root_prefix {root}");
        let socket = n["docker_socket"].as_str().expect("docker_socket");
        assert_eq!(
            docker_name(socket).as_deref(),
            Some(name),
            "engine of {name} answers on its own socket"
        );
        let idx = lab.hosts.iter().position(|h| h == name).expect("planned");
        assert_eq!(n["private_ip"], format!("10.231.0.{}", 11 + idx), "{i}");
        assert_eq!(n["public_ip"], format!("198.18.0.{}", 11 + idx));
        pids.push(lab.pid(name, "dockerd").expect("dockerd pid"));
        let agent = lab.pid(name, "agent").expect("agent pid");
        pids.push(agent);
        // The cluster's tunnel allow-list (default: loopback and the overlay
        // pool) is handed to every agent the lab starts.
        let argv = std::fs::read(format!("/proc/{agent}/cmdline")).expect("agent cmdline");
        let argv: Vec<&[u8]> = argv.split(|b| *b == 0).collect();
        assert!(
            argv.windows(2)
                .any(|w| w[0] == b"--tunnel-allow" && w[1] == b"127.0.0.0/8,::1/128,10.232.0.0/16"),
            "{name}'s agent runs without the cluster's tunnel allow-list"
        );
    }

    // The private network reaches every host from the first, and the public bridge reaches every host.
    let first = lab.netns(&lab.hosts[0]);
    for idx in 0..4 {
        let private = format!("10.231.0.{}", 11 + idx);
        assert!(
            sh(&[
                "ip", "netns", "exec", &first, "busybox", "ping", "-c1", "-W2", &private
            ])
            .0,
            "private {private} unreachable from {first}"
        );
        let public = format!("198.18.0.{}", 11 + idx);
        assert!(
            sh(&["busybox", "ping", "-c1", "-W2", &public]).0,
            "public {public} unreachable from the public bridge"
        );
    }

    // A killed engine is restarted and answers again.
    let host = lab.hosts[1].clone();
    let old = lab.pid(&host, "dockerd").expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill dockerd");
    let socket = lab.node(&host).expect("node")["docker_socket"]
        .as_str()
        .expect("socket")
        .to_string();
    eventually("engine restarted", Duration::from_secs(30), || {
        let new = lab.pid(&host, "dockerd")?;
        (new != old && alive(new) && docker_name(&socket).as_deref() == Some(host.as_str()))
            .then_some(())
    });
    eventually(
        "node ready with an engine again",
        Duration::from_secs(30),
        || {
            let n = lab.node(&host)?;
            (n["state"] == "ready" && !n["docker_version"].as_str()?.is_empty()).then_some(())
        },
    );
    pids.push(lab.pid(&host, "dockerd").expect("pid"));

    // A killed agent comes back with the same identity.
    let host = lab.hosts[2].clone();
    let serial = lab.node(&host).expect("node")["cert_serial"].clone();
    let old = lab.pid(&host, "agent").expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill agent");
    eventually("agent restarted and ready", Duration::from_secs(30), || {
        let new = lab.pid(&host, "agent")?;
        let n = lab.node(&host)?;
        (new != old && n["state"] == "ready").then_some(())
    });
    assert_eq!(
        lab.node(&host).expect("node")["cert_serial"],
        serial,
        "the restarted agent re-enrolled"
    );
    assert_eq!(
        lab.status().expect("status")["nodes"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    pids.push(lab.pid(&host, "agent").expect("pid"));

    // Stop the coordinator, then tear down: nothing is left.
    lab.stop();
    let out = lab.teardown();
    assert!(
        out.status.success(),
        "teardown: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("network namespaces (4)"), "{report}");
    let (_, netns) = sh(&["ip", "netns", "list"]);
    assert!(!netns.contains("labtest."), "namespaces left: {netns}");
    let (_, links) = sh(&["ip", "-o", "link"]);
    assert!(
        !links.contains("apiary-") && !links.contains("ap0-"),
        "links left: {links}"
    );
    for pid in pids {
        assert!(!alive(pid), "process {pid} left running");
    }
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(!mounts.contains("/run/apiary/labtest"), "mounts left");
    assert!(!std::path::Path::new("/run/apiary/labtest").exists());
    assert!(
        !lab.state.join("lab").exists(),
        "lab data left in the state directory"
    );
}

/// Every coordinator log of the lab's runs, oldest first.
fn coordinator_logs(lab: &LabCluster) -> String {
    let mut logs: Vec<_> = std::fs::read_dir(lab.dir.path())
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    logs.retain(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("coordinator-"))
    });
    logs.sort();
    logs.iter()
        .map(|p| {
            format!(
                "== {}\n{}",
                p.display(),
                std::fs::read_to_string(p).unwrap_or_default()
            )
        })
        .collect()
}

#[test]
fn coordinator_killed_during_host_creation_is_adopted_without_duplicates() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = LabCluster::new("labkill", 4, "");
    lab.start();
    // Kill it as soon as the first host exists, mid-creation.
    eventually("first host created", Duration::from_secs(60), || {
        let (_, netns) = sh(&["ip", "netns", "list"]);
        netns.contains("labkill.").then_some(())
    });
    if let Some(p) = lab.coordinator.as_mut() {
        p.kill9();
    }
    lab.start();
    let status = lab.wait_all_ready(Duration::from_secs(120));
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(4),
        "{status}"
    );
    let (_, netns) = sh(&["ip", "netns", "list"]);
    assert_eq!(netns.matches("labkill.").count(), 4, "{netns}");
    // One live engine and agent per host. A process the kill left half
    // started may have died since; supervision restarts it within a second
    // or two, so its pidfile is waited on, not read once.
    for h in &lab.hosts {
        for name in ["dockerd", "agent"] {
            let started = std::time::Instant::now();
            while !lab.pid(h, name).is_some_and(alive) {
                if started.elapsed() > Duration::from_secs(15) {
                    panic!(
                        "{h}: {name} from its pidfile ({:?}) is not running after 15 s\n{name} log:\n{}\n{}",
                        lab.pid(h, name),
                        std::fs::read_to_string(
                            lab.state
                                .join("lab")
                                .join(h)
                                .join("logs")
                                .join(format!("{name}.log"))
                        )
                        .unwrap_or_else(|e| e.to_string()),
                        coordinator_logs(&lab)
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let (_, ps) = sh(&["ps", "-eo", "args"]);
    let agents = ps
        .lines()
        .filter(|l| l.contains("--coordinator") && l.contains(&lab.state.display().to_string()))
        .count();
    assert_eq!(
        agents,
        4,
        "duplicate agents:\n{ps}\n{}",
        coordinator_logs(&lab)
    );
    lab.stop();
}

/// A metadata service stand-in beside one lab host, reached from the host
/// the way a droplet reaches 169.254.169.254: through an interface, so a
/// container's packets to it are forwarded by the host (not delivered to
/// it). Made in a namespace of its own, torn down when dropped.
struct MetadataStandIn {
    netns: String,
    server: Option<std::process::Child>,
}

impl MetadataStandIn {
    fn beside(host_netns: &str) -> MetadataStandIn {
        let netns = "labmeta".to_string();
        let _ = sh(&["ip", "netns", "del", &netns]);
        let run = |argv: &[&str]| assert!(sh(argv).0, "{argv:?}");
        run(&["ip", "netns", "add", &netns]);
        run(&[
            "ip", "link", "add", "labmeta0", "netns", host_netns, "type", "veth", "peer", "name",
            "labmeta1", "netns", &netns,
        ]);
        let host = |args: &[&str]| {
            let mut argv = vec!["ip", "netns", "exec", host_netns, "ip"];
            argv.extend_from_slice(args);
            run(&argv);
        };
        host(&["addr", "add", "169.254.0.1/16", "dev", "labmeta0"]);
        host(&["link", "set", "labmeta0", "up"]);
        let meta = |args: &[&str]| {
            let mut argv = vec!["ip", "netns", "exec", netns.as_str(), "ip"];
            argv.extend_from_slice(args);
            run(&argv);
        };
        // .254 is the metadata address; .253, on the same wire and the same
        // server, is the control: forwarded the same way, not blocked.
        meta(&["addr", "add", "169.254.169.254/16", "dev", "labmeta1"]);
        meta(&["addr", "add", "169.254.169.253/16", "dev", "labmeta1"]);
        meta(&["link", "set", "labmeta1", "up"]);
        meta(&["link", "set", "lo", "up"]);
        let server = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns,
                "python3",
                "-m",
                "http.server",
                "80",
                "--bind",
                "0.0.0.0",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 http.server");
        MetadataStandIn {
            netns,
            server: Some(server),
        }
    }
}

impl Drop for MetadataStandIn {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        // Deleting the namespace deletes the veth pair with it.
        let _ = sh(&["ip", "netns", "del", &self.netns]);
    }
}

const METADATA: &str = "169.254.169.254";

/// The host firewall's metadata rule: the host reaches 169.254.169.254,
/// a container on it does not, and the same container reaches the control
/// address beside it (so routing and NAT work: the rule is what stops it).
fn containers_cannot_reach_the_metadata_address(lab: &LabCluster, host: &str) {
    let socket = lab.node(host).expect("node")["docker_socket"]
        .as_str()
        .expect("socket")
        .to_string();
    containers_on_cannot_reach_the_metadata_address(host, &lab.netns(host), &socket);
}

/// As [`containers_cannot_reach_the_metadata_address`], for any host: its
/// network namespace and its engine's socket.
fn containers_on_cannot_reach_the_metadata_address(host: &str, host_netns: &str, socket: &str) {
    let host_netns = host_netns.to_string();
    let _meta = MetadataStandIn::beside(&host_netns);
    let from_host = |url: &str| {
        sh(&[
            "ip",
            "netns",
            "exec",
            &host_netns,
            "curl",
            "-sf",
            "-m",
            "3",
            url,
        ])
        .0
    };
    eventually(
        "the stand-in answers the host",
        Duration::from_secs(20),
        || from_host(&format!("http://{METADATA}/")).then_some(()),
    );
    eventually("busybox loaded", Duration::from_secs(120), || {
        docker(socket, &["image", "inspect", "lab/busybox:1"])
            .0
            .then_some(())
    });
    // busybox's nc, not its wget: the static busybox's wget crashes
    // (SIGSEGV) in these engines before it sends anything.
    let from_container = |ip: &str| {
        let out = std::process::Command::new("docker")
            .args(["-H", &format!("unix://{socket}")])
            .args(["run", "--rm", "lab/busybox:1", "sh", "-c"])
            .arg(format!(
                "(printf 'GET / HTTP/1.0\\r\\n\\r\\n'; sleep 1) | nc -w 3 {ip} 80"
            ))
            .output()
            .expect("docker run");
        let answered = String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.0 200");
        (answered, stderr(&out))
    };
    let (reached, why) = from_container("169.254.169.253");
    assert!(
        reached,
        "a container on {host} cannot reach the control address: the test's path is broken, not the rule: {why}\nroutes: {}\nnat: {}",
        sh(&["ip", "netns", "exec", &host_netns, "ip", "route"]).1,
        sh(&[
            "ip",
            "netns",
            "exec",
            &host_netns,
            "iptables",
            "-t",
            "nat",
            "-S"
        ])
        .1,
    );
    let (reached, why) = from_container(METADATA);
    assert!(
        !reached,
        "a container on {host} reached the metadata address"
    );
    assert!(why.contains("timed out"), "{why}");
}

#[test]
fn host_configuration_is_applied_dry_run_changes_nothing_and_drift_is_repaired() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = LabCluster::new("labcfg", 2, "host_recheck_interval = \"2s\"");
    lab.start();
    lab.wait_all_ready(Duration::from_secs(120));
    let netns = lab.netns(&lab.hosts[1]);
    let tables = |ns: &str| sh(&["ip", "netns", "exec", ns, "nft", "list", "tables"]).1;
    eventually(
        "configuration applied everywhere",
        Duration::from_secs(60),
        || {
            let s = lab.status()?;
            s["nodes"]
                .as_array()?
                .iter()
                .all(|n| n["config_state"] == "ok")
                .then_some(())
        },
    );
    for h in lab.hosts.clone() {
        let t = tables(&lab.netns(&h));
        assert!(t.contains("table inet apiary"), "{h}: {t}");
        // Docker's own tables are untouched.
        assert!(
            t.contains("table ip nat") && t.contains("table ip filter"),
            "{h}: {t}"
        );
    }
    containers_cannot_reach_the_metadata_address(&lab, &lab.hosts[0]);
    let node = lab.node(&lab.hosts[1]).expect("node");
    let items: Vec<&str> = node["config_items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["item"].as_str())
        .collect();
    for want in [
        "firewall",
        "kernel version",
        "sysctl net.ipv4.ip_forward",
        "grub",
        "daemon.json",
    ] {
        assert!(items.contains(&want), "{want} not reported: {items:?}");
    }

    // Drift: the table is deleted by hand. A dry run shows the diff and changes nothing.
    assert!(
        sh(&[
            "ip", "netns", "exec", &netns, "nft", "delete", "table", "inet", "apiary"
        ])
        .0
    );
    let out = ctl_with(
        &lab.admin_conf(),
        &["hosts", "apply", "--dry-run", "--json", &lab.hosts[1]],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let dry: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let firewall = dry["hosts"][0]["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["item"] == "firewall")
        .cloned()
        .expect("firewall item");
    assert_eq!(firewall["outcome"], "changed", "{firewall}");
    assert!(
        firewall["diff"]
            .as_str()
            .unwrap_or("")
            .contains("+table inet apiary"),
        "{firewall}"
    );
    assert!(
        !tables(&netns).contains("inet apiary"),
        "a dry run changed the host"
    );

    // Within one re-check interval the agent puts it back and says so.
    eventually("drift repaired", Duration::from_secs(10), || {
        tables(&netns).contains("inet apiary").then_some(())
    });
    let node = eventually("drift reported", Duration::from_secs(10), || {
        let n = lab.node(&lab.hosts[1])?;
        n["last_drift_items"]
            .as_array()?
            .iter()
            .any(|i| i == "firewall")
            .then_some(n)
    });
    assert!(node["last_drift_repaired_unix_ms"].as_u64().unwrap_or(0) > 0);
    lab.stop();
}

#[test]
fn a_bad_image_archive_is_named_and_loaded_once_replaced_without_a_restart() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = LabCluster::new("labimages", 2, "\n[swarm]\nchecks_interval = \"2s\"\n");
    let archive = lab.dir.path().join("extra.tar");
    std::fs::write(&archive, b"not a docker save archive").expect("write");
    lab.start_with(&["--image-archive", &archive.display().to_string()]);
    let status = lab.wait_all_ready(Duration::from_secs(900));

    // The overlay checks wait on the images, and each round says why.
    let (code, c) = eventually("checks name the archive", Duration::from_secs(120), || {
        let (code, c) = checks(&lab)?;
        c["swarm_error"]
            .as_str()?
            .contains("extra.tar")
            .then_some((code, c))
    });
    assert_eq!(code, 2, "{c}");
    assert!(
        c["swarm_error"]
            .as_str()
            .unwrap_or("")
            .starts_with("images: "),
        "{c}"
    );

    // The operator replaces the file: the next attempt loads it into every
    // engine and the checks go on, with the same coordinator process.
    let layer = apiary_lab::image::layer_tar(&[apiary_lab::image::LayerEntry::File {
        path: "hello".into(),
        mode: 0o644,
        data: b"hello from an archive\n".to_vec(),
    }])
    .expect("layer");
    let staged = lab.dir.path().join("extra.tar.new");
    apiary_lab::image::write_image_archive(
        "lab/extra:1",
        &apiary_lab::image::busybox_config(),
        &layer,
        std::fs::File::create(&staged).expect("create"),
    )
    .expect("archive");
    std::fs::rename(&staged, &archive).expect("replace");
    eventually(
        "checks pass after the replacement",
        Duration::from_secs(120),
        || {
            let (code, c) = checks(&lab)?;
            (code == 0 && c["swarm_error"] == "").then_some(())
        },
    );
    for n in status["nodes"].as_array().expect("nodes") {
        let socket = n["docker_socket"].as_str().expect("docker_socket");
        let (ok, out) = docker(socket, &["image", "inspect", "lab/extra:1"]);
        assert!(ok, "{}: {out}", n["name"]);
    }
    assert!(
        lab.coordinator
            .as_mut()
            .is_some_and(|p| p.try_exit().is_none()),
        "the same coordinator, never restarted"
    );
    lab.stop();
}

fn checks(lab: &LabCluster) -> Option<(i32, serde_json::Value)> {
    let out = ctl_with(&lab.admin_conf(), &["checks", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((out.status.code().unwrap_or(-1), v))
}

/// A fault inside one lab host: an nftables table of the test's own
/// (`labfault`, never the agent's) applying `rule` to input, and to output
/// too when `both_ways`.
fn fault(lab: &LabCluster, host: &str, rule: &str, both_ways: bool) {
    let out_chain = if both_ways {
        format!(" chain out {{ type filter hook output priority -300; policy accept; {rule} }}\n")
    } else {
        String::new()
    };
    let rules = format!(
        "table inet labfault {{\n chain in {{ type filter hook input priority -300; policy accept; {rule} }}\n{out_chain}}}\n"
    );
    let file = lab.dir.path().join("fault.nft");
    std::fs::write(&file, rules).expect("write");
    let ns = lab.netns(host);
    let path = file.display().to_string();
    assert!(sh(&["ip", "netns", "exec", &ns, "nft", "-f", &path]).0);
}

fn clear_fault(lab: &LabCluster, host: &str) {
    let ns = lab.netns(host);
    assert!(
        sh(&[
            "ip", "netns", "exec", &ns, "nft", "delete", "table", "inet", "labfault"
        ])
        .0
    );
}

/// `docker` against one lab host's engine, by its unix socket.
fn docker(socket: &str, args: &[&str]) -> (bool, String) {
    let host = format!("unix://{socket}");
    let mut argv = vec!["docker", "-H", &host];
    argv.extend_from_slice(args);
    sh(&argv)
}

/// Each host's `docker info` Swarm section, from its own engine.
fn swarm_infos(sockets: &[(String, String)]) -> Vec<(String, serde_json::Value)> {
    sockets
        .iter()
        .map(|(host, socket)| {
            let (_, out) = docker(socket, &["info", "--format", "{{json .Swarm}}"]);
            (
                host.clone(),
                serde_json::from_str(out.trim()).unwrap_or_default(),
            )
        })
        .collect()
}

/// One swarm across the hosts: every host active in it, every manager
/// reporting the same cluster ID (workers' engines do not report one), and
/// every host's own node ID listed by the first manager under its hostname,
/// once. Returns the cluster ID and each host's node ID.
fn one_swarm(sockets: &[(String, String)]) -> (String, Vec<(String, String)>) {
    let infos = swarm_infos(sockets);
    let (_, ls) = docker(
        &sockets[0].1,
        &["node", "ls", "--format", "{{.ID}} {{.Hostname}}"],
    );
    let listed: Vec<&str> = ls.lines().collect();
    assert_eq!(listed.len(), sockets.len(), "swarm nodes: {ls}");
    let id = infos[0].1["Cluster"]["ID"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        !id.is_empty(),
        "no cluster ID on the first manager: {infos:?}"
    );
    let mut nodes = Vec::new();
    for (host, info) in &infos {
        assert_eq!(info["LocalNodeState"], "active", "{host}: {info}");
        if info["ControlAvailable"] == true {
            assert_eq!(
                info["Cluster"]["ID"],
                id.as_str(),
                "{host} is in another swarm"
            );
        }
        let node = info["NodeID"].as_str().unwrap_or("").to_string();
        assert!(
            listed.contains(&format!("{node} {host}").as_str()),
            "{host}'s node {node} is not the swarm's {host}: {ls}"
        );
        nodes.push((host.clone(), node));
    }
    (id, nodes)
}

/// `ctl events --json` lines seen so far, parsed.
fn events_in(file: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn swarm_and_overlay_form_checks_pass_and_a_vxlan_drop_names_exactly_its_pairs() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = LabCluster::new(
        "labswarm",
        4,
        "\n[swarm]\nchecks_interval = \"2s\"\nmtu = 1400\n\
         [swarm.labels.queenbee]\nzone = \"hive\"\nrole = \"queen\"\n\
         [swarm.labels.workerbee-3]\nzone = \"field\"\n",
    );
    lab.start();
    // Events from the start: the swarm's init is where the coordinator is killed.
    // (Long: another lab on this machine holds the lab lock until it is torn down.)
    eventually(
        "coordinator answering (or the lab lock)",
        Duration::from_secs(900),
        || lab.status().map(|_| ()),
    );
    let events_file = lab.dir.path().join("swarm-events.jsonl");
    let mut cmd = std::process::Command::new(bin("ctl"));
    cmd.arg("--config")
        .arg(lab.admin_conf())
        .args(["events", "--json"]);
    let events = Proc::spawn(cmd, &events_file);
    let status = lab.wait_all_ready(Duration::from_secs(120));
    let sockets: Vec<(String, String)> = lab
        .hosts
        .iter()
        .map(|h| {
            let n = status["nodes"]
                .as_array()
                .and_then(|a| a.iter().find(|n| n["name"] == h.as_str()))
                .expect("node");
            (
                h.clone(),
                n["docker_socket"].as_str().expect("socket").into(),
            )
        })
        .collect();

    // Before Swarm takes the ports, every cluster port is probed between
    // every ordered pair: N·(N−1) cells each for 7946/tcp, 7946/udp and
    // 4789/udp, and 2377/tcp only towards the 3 managers (the first hosts by
    // name). The coordinator is killed below: the restarted one shows the
    // same matrix from its store.
    let c = eventually("the pre-Swarm matrix", Duration::from_secs(120), || {
        let (_, c) = checks(&lab)?;
        (!c["pre_swarm_cells"].as_array()?.is_empty()).then_some(c)
    });
    assert_eq!(c["hosts"], 4, "{c}");
    let managers = &lab.hosts[..3];
    let mut want = std::collections::BTreeSet::new();
    for src in &lab.hosts {
        for dst in lab.hosts.iter().filter(|d| *d != src) {
            for (port, proto) in [(7946, "tcp"), (7946, "udp"), (4789, "udp")] {
                want.insert((src.clone(), dst.clone(), port, proto.to_string()));
            }
            if managers.contains(dst) {
                want.insert((src.clone(), dst.clone(), 2377, "tcp".to_string()));
            }
        }
    }
    assert_eq!(want.len(), 4 * 3 * 3 + 3 * 3);
    let pre = c["pre_swarm_cells"].as_array().expect("pre-swarm cells");
    let mut seen = std::collections::BTreeSet::new();
    for x in pre {
        assert_eq!(x["outcome"], "open", "pre-Swarm cell not open: {x}");
        let key = (
            x["src"].as_str().unwrap_or("").to_string(),
            x["dst"].as_str().unwrap_or("").to_string(),
            x["port"].as_u64().unwrap_or(0) as u16,
            x["proto"].as_str().unwrap_or("").to_string(),
        );
        assert!(seen.insert(key.clone()), "duplicate pre-Swarm cell {key:?}");
    }
    assert_eq!(
        seen,
        want,
        "pre-Swarm cells: missing {:?}, unexpected {:?}",
        want.difference(&seen).collect::<Vec<_>>(),
        seen.difference(&want).collect::<Vec<_>>()
    );

    // A coordinator killed in the middle of Swarm formation: as soon as the
    // first manager has initialised the swarm (joins run one after another
    // from then on). The restarted one, on the same state directory, finishes
    // the job: one swarm, the one first made, every host in it once.
    let init = eventually("swarm initialised", Duration::from_secs(120), || {
        events_in(&events_file)
            .into_iter()
            .find(|e| e["kind"] == "swarm_initialised")
    });
    if let Some(p) = lab.coordinator.as_mut() {
        p.kill9();
    }
    drop(events);
    let swarm_id = init["message"]
        .as_str()
        .and_then(|m| m.split_whitespace().nth(1))
        .expect("cluster ID in the event")
        .to_string();
    let active: Vec<String> = swarm_infos(&sockets)
        .into_iter()
        .filter(|(_, i)| i["LocalNodeState"] == "active")
        .map(|(h, _)| h)
        .collect();
    eprintln!(
        "coordinator killed after swarm {swarm_id} was initialised; hosts active in a swarm then: {}/4 {active:?}",
        active.len()
    );
    lab.start();

    // `hosts` too: a round counts only the hosts whose agents are connected,
    // and after the restart they come back one by one.
    let (code, c) = eventually(
        "swarm formed and all paths open",
        Duration::from_secs(120),
        || {
            let (code, c) = checks(&lab)?;
            (c["phase"] == "swarm" && c["ok"] == true && c["hosts"] == 4).then_some((code, c))
        },
    );
    assert_eq!(code, 0);
    // A join the kill cut short left an entry with no hostname in the node
    // list; the round after the host joined again removes it.
    eventually(
        "no swarm node entry beyond the hosts'",
        Duration::from_secs(60),
        || {
            let (_, ls) = docker(&sockets[0].1, &["node", "ls", "-q"]);
            (ls.lines().count() == sockets.len()).then_some(())
        },
    );
    let (id, swarm_nodes) = one_swarm(&sockets);
    assert_eq!(id, swarm_id, "the swarm was made again");
    // The pre-Swarm matrix cannot be measured again once Swarm holds the
    // ports: the restarted coordinator shows the one it saved.
    assert_eq!(
        c["pre_swarm_cells"].as_array().map(Vec::len),
        Some(want.len()),
        "{c}"
    );

    // Node labels from [swarm.labels], as Swarm holds them.
    let labels = |host: &str| -> serde_json::Value {
        let (ok, out) = docker(
            &sockets[0].1,
            &["node", "inspect", host, "--format", "{{json .Spec.Labels}}"],
        );
        assert!(ok, "node inspect {host}: {out}");
        serde_json::from_str(out.trim()).expect("labels json")
    };
    assert_eq!(
        labels("queenbee"),
        serde_json::json!({"zone": "hive", "role": "queen"})
    );
    assert_eq!(labels("workerbee-3"), serde_json::json!({"zone": "field"}));
    let none = labels("workerbee-1");
    assert!(
        none.is_null() || none == serde_json::json!({}),
        "labels on an unlabelled node: {none}"
    );

    // The overlay: attachable, with the configured MTU.
    let (ok, net) = docker(
        &sockets[0].1,
        &["network", "inspect", "apiary", "--format", "{{json .}}"],
    );
    assert!(ok, "{net}");
    let net: serde_json::Value = serde_json::from_str(net.trim()).expect("network json");
    assert_eq!(net["Driver"], "overlay", "{net}");
    assert_eq!(net["Attachable"], true, "{net}");
    assert_eq!(
        net["Options"]["com.docker.network.driver.mtu"], "1400",
        "{net}"
    );
    // No routing mesh: nothing is published, and the ingress network was
    // removed when the swarm was made (see `Swarm::remove_ingress`), on
    // every node.
    for (host, socket) in &sockets {
        let (ok, nets) = docker(socket, &["network", "ls", "--format", "{{.Name}}"]);
        assert!(ok, "{nets}");
        assert!(
            !nets.lines().any(|l| l == "ingress"),
            "{host} still has an ingress network: {nets}"
        );
    }

    // After: the overlay end to end between every pair, by name and address,
    // and full-size packets for that MTU: the option is the path's MTU
    // between hosts, containers get 50 bytes less (VXLAN's header), and a
    // full ping carries 28 bytes less than that (IP and ICMP headers).
    let cells = c["cells"].as_array().expect("cells");
    let overlay = cells.iter().filter(|x| x["proto"] == "overlay").count();
    assert_eq!(overlay, 4 * 3 * 5, "5 overlay checks per ordered pair");
    let mtu: Vec<&serde_json::Value> = cells
        .iter()
        .filter(|x| x["proto"] == "overlay" && x["check"].get("mtu").is_some())
        .collect();
    assert_eq!(mtu.len(), 4 * 3, "{mtu:?}");
    for x in &mtu {
        assert_eq!(x["check"]["mtu"], 1400 - 50 - 28, "{x}");
        assert_eq!(x["outcome"], "open", "{x}");
    }

    let status = lab.status().expect("status");
    let nodes = status["nodes"].as_array().expect("nodes");
    let managers = nodes
        .iter()
        .filter(|n| n["swarm_role"] == "manager")
        .count();
    assert_eq!(managers, 3, "3 managers from 3 hosts up: {status}");
    assert_eq!(
        nodes.iter().filter(|n| n["swarm_leader"] == true).count(),
        1
    );
    assert!(
        nodes.iter().all(|n| n["swarm_status"] == "ready"
            && n["swarm_availability"] == "active"
            && n["overlay_attached"] == true),
        "{status}"
    );
    // The table shows the same: role/status/availability, and the overlay.
    let out = ctl_with(&lab.admin_conf(), &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    for h in &lab.hosts {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{h} ")))
            .unwrap_or_else(|| panic!("no row for {h}: {table}"));
        assert!(
            row.contains("/ready/active") && row.trim_end().ends_with("attached"),
            "{row}"
        );
    }
    let leader = nodes
        .iter()
        .find(|n| n["swarm_leader"] == true)
        .expect("leader")["name"]
        .clone();

    // Drop VXLAN inside one host: exactly the pairs through it fail, on the overlay.
    // How long detection takes is printed, not asserted (one check interval
    // is 2 s here, plus the round's own probes).
    let victim = lab.hosts[2].clone();
    fault(&lab, &victim, "udp dport 4789 drop;", true);
    let dropped = std::time::Instant::now();
    let (code, c) = eventually("the drop is seen", Duration::from_secs(30), || {
        let (code, c) = checks(&lab)?;
        (c["failures"].as_array()?.len() >= 30).then_some((code, c))
    });
    eprintln!(
        "udp/4789 dropped on {victim} -> ctl checks fails: {:.1} s (checks_interval 2 s)",
        dropped.elapsed().as_secs_f64()
    );
    assert_eq!(code, 2, "ctl checks exits 2 when a path fails");
    let failures = c["failures"].as_array().expect("failures");
    assert_eq!(
        failures.len(),
        6 * 5,
        "6 ordered pairs through {victim}, 5 checks each: {failures:?}"
    );
    for f in failures {
        assert!(
            f["src"] == victim.as_str() || f["dst"] == victim.as_str(),
            "{f}"
        );
        assert_eq!(f["proto"], "overlay");
        assert!(f["cause"].as_str().unwrap_or("").contains("4789"), "{f}");
    }
    clear_fault(&lab, &victim);
    eventually("the drop clears", Duration::from_secs(30), || {
        let (code, c) = checks(&lab)?;
        (code == 0 && c["failures"].as_array()?.is_empty()).then_some(())
    });

    // An agent killed and restarted: Swarm is reported again, no re-init, no second join.
    let host = lab.hosts[1].clone();
    let old = lab.pid(&host, "agent").expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    eventually("agent back", Duration::from_secs(30), || {
        let new = lab.pid(&host, "agent")?;
        (new != old && lab.node(&host)?["state"] == "ready").then_some(())
    });
    let (_, c) = eventually("checks green again", Duration::from_secs(30), || {
        let (code, c) = checks(&lab)?;
        (code == 0 && c["at_unix_ms"].as_u64()? > 0).then_some((code, c))
    });
    assert_eq!(c["phase"], "swarm");
    let status = lab.status().expect("status");
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(
        nodes
            .iter()
            .filter(|n| n["swarm_role"] == "manager")
            .count(),
        3
    );
    assert_eq!(
        nodes
            .iter()
            .find(|n| n["swarm_leader"] == true)
            .expect("leader")["name"],
        leader,
        "the swarm was re-initialised"
    );
    let socket = lab.node(&lab.hosts[0]).expect("node")["docker_socket"]
        .as_str()
        .expect("socket")
        .to_string();
    let (_, ls) = sh(&[
        "docker",
        "-H",
        &format!("unix://{socket}"),
        "node",
        "ls",
        "--format",
        "{{.Hostname}}",
    ]);
    assert_eq!(ls.lines().count(), 4, "duplicate swarm nodes: {ls}");
    let (id, nodes_after) = one_swarm(&sockets);
    assert_eq!(
        id, swarm_id,
        "the swarm was re-initialised after the agent's restart"
    );
    assert_eq!(
        nodes_after, swarm_nodes,
        "a host joined again after the agent's restart"
    );

    // A stopped engine (frozen, so supervision does not replace it): that
    // host's Swarm state and checks show down, every other path stays green.
    let worker = lab.hosts[3].clone();
    let dockerd = lab.pid(&worker, "dockerd").expect("dockerd pid");
    let pid = nix::unistd::Pid::from_raw(dockerd);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("stop dockerd");
    struct Thaw(nix::unistd::Pid);
    impl Drop for Thaw {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
        }
    }
    let thaw = Thaw(pid);
    let (code, c) = eventually(
        "the stopped engine is seen",
        Duration::from_secs(120),
        || {
            let (code, c) = checks(&lab)?;
            let node = lab.node(&worker)?;
            (node["swarm_status"] == "down" && !c["failures"].as_array()?.is_empty())
                .then_some((code, c))
        },
    );
    assert_eq!(code, 2);
    for f in c["failures"].as_array().expect("failures") {
        assert!(
            f["src"] == worker.as_str() || f["dst"] == worker.as_str(),
            "a path not through {worker} failed: {f}"
        );
    }
    drop(thaw);
    eventually(
        "the engine is back and every path green",
        Duration::from_secs(120),
        || {
            let (code, _) = checks(&lab)?;
            (code == 0 && lab.node(&worker)?["swarm_status"] == "ready").then_some(())
        },
    );
    lab.stop();
}

#[test]
fn an_encrypted_overlay_is_refused_on_a_kernel_without_esp_and_an_esp_drop_names_its_pairs() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = LabCluster::new(
        "labcrypt",
        3,
        "\n[swarm]\nencrypted = true\nchecks_interval = \"2s\"\n",
    );
    lab.start();
    lab.wait_all_ready(Duration::from_secs(120));
    let esp_cells = |c: &serde_json::Value| -> Vec<serde_json::Value> {
        c["cells"]
            .as_array()
            .map(|a| a.iter().filter(|x| x["proto"] == "esp").cloned().collect())
            .unwrap_or_default()
    };
    let (code, c) = eventually("refusal reported", Duration::from_secs(90), || {
        let (code, c) = checks(&lab)?;
        (!c["swarm_error"].as_str()?.is_empty() && esp_cells(&c).len() == 6).then_some((code, c))
    });
    assert_eq!(code, 2);
    let err = c["swarm_error"].as_str().unwrap_or("");
    assert!(err.contains("encrypted overlay refused"), "{err}");
    assert!(
        err.contains("queenbee") && err.contains("ESP"),
        "names host and piece: {err}"
    );
    // ESP itself crosses between the namespaces: every ordered pair was
    // probed with protocol 50 and answered; only the kernel is missing pieces.
    for cell in esp_cells(&c) {
        assert_eq!(cell["outcome"], "open", "{cell}");
    }
    assert!(!err.contains("IP protocol 50"), "{err}");

    // ESP dropped on one host (a cloud firewall that allows only TCP/UDP):
    // exactly the pairs through it fail, named as ESP, and the refusal says so.
    let victim = lab.hosts[2].clone();
    fault(&lab, &victim, "meta l4proto esp drop;", false);
    let (code, c) = eventually("the ESP drop is seen", Duration::from_secs(60), || {
        let (code, c) = checks(&lab)?;
        let failing = c["failures"]
            .as_array()?
            .iter()
            .filter(|f| f["proto"] == "esp")
            .count();
        (failing == 4).then_some((code, c))
    });
    assert_eq!(code, 2);
    for f in c["failures"].as_array().expect("failures") {
        assert_eq!(f["proto"], "esp", "{f}");
        assert!(
            f["src"] == victim.as_str() || f["dst"] == victim.as_str(),
            "a pair not through {victim}: {f}"
        );
        assert!(
            f["cause"].as_str().unwrap_or("").contains("IP protocol 50"),
            "{f}"
        );
    }
    let err = c["swarm_error"].as_str().unwrap_or("");
    assert!(
        err.contains(&format!("ESP (IP protocol 50) from queenbee to {victim}")),
        "{err}"
    );
    clear_fault(&lab, &victim);
    eventually("the ESP drop clears", Duration::from_secs(60), || {
        let (_, c) = checks(&lab)?;
        let cells = esp_cells(&c);
        (cells.len() == 6 && cells.iter().all(|x| x["outcome"] == "open")).then_some(())
    });

    // Docker was not asked to make a network that would drop all traffic.
    let socket = lab.node("queenbee").expect("node")["docker_socket"]
        .as_str()
        .expect("socket")
        .to_string();
    let (_, nets) = sh(&[
        "docker",
        "-H",
        &format!("unix://{socket}"),
        "network",
        "ls",
        "--format",
        "{{.Name}}",
    ]);
    assert!(
        !nets.lines().any(|l| l == "apiary"),
        "overlay created anyway: {nets}"
    );
    lab.stop();
}

/// An HTTP/1.0 GET on 127.0.0.1:`port`: the body of a 200 answer.
/// `ctl tunnel TARGET` on a free local port, once it says it is forwarding:
/// the process (the tunnel lasts as long as it) and the port.
fn lab_tunnel(lab: &LabCluster, target: &str) -> (Proc, u16) {
    ctl_tunnel(&lab.admin_conf(), target, lab.dir.path())
}

fn http_get(port: u16, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut all = String::new();
    s.read_to_string(&mut all).map_err(|e| e.to_string())?;
    let (head, body) = all.split_once("\r\n\r\n").ok_or("no HTTP header")?;
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        return Err(format!("answer: {head}"));
    }
    Ok(body.to_string())
}

/// The running container of a database service on a lab host, by its engine's socket.
fn service_container(socket: &str, service: &str) -> Option<String> {
    let (ok, out) = sh(&[
        "docker",
        "-H",
        &format!("unix://{socket}"),
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
    ]);
    ok.then(|| out.lines().next().map(str::to_string))?
}

fn etcdctl(socket: &str, container: &str, args: &[&str]) -> (bool, String) {
    let mut argv = vec![
        "docker", "-H", socket, "exec", container,
        // The endpoint and client certificate from the container's
        // ETCDCTL_* environment.
        "etcdctl",
    ];
    argv.extend_from_slice(args);
    let sock = format!("unix://{socket}");
    argv[2] = &sock;
    sh(&argv)
}

#[test]
fn etcd_forms_on_four_hosts_serves_a_key_across_them_and_heals_a_killed_server() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = LabCluster::new(
        "labdb",
        4,
        "\n[swarm]\nchecks_interval = \"3s\"\n\n[database]\nkind = \"etcd\"\n",
    );
    let started = std::time::Instant::now();
    lab.start();
    let status = eventually("etcd 4/4 healthy", Duration::from_secs(180), || {
        let s = lab.status()?;
        (s["database"]["healthy"] == true).then_some(s)
    });
    eprintln!(
        "serve -> database 4/4 healthy: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let db = &status["database"];
    assert_eq!(db["kind"], "etcd");
    assert_eq!(
        (db["servers"].clone(), db["connected"].clone()),
        (4.into(), 4.into()),
        "{db}"
    );
    assert_eq!(db["peer_tls"], true, "{db}");
    assert!(
        db["leader"]
            .as_str()
            .is_some_and(|l| l.starts_with("etcd-")),
        "{db}"
    );
    let mut hosts: Vec<String> = db["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["host"].as_str().unwrap_or("").to_string())
        .collect();
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 4, "4 servers on 4 different hosts: {db}");
    assert!(
        lab.log()
            .contains("database etcd healthy: 4/4 servers connected")
    );

    // Endpoint mode follows the kernels the facts report: VIP only when
    // every host has ip_vs (this machine's kernel has none: dnsrr).
    let ip_vs: Vec<bool> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["kernel_features"]["ip_vs"]["available"] == true)
        .collect();
    let want = if ip_vs.iter().all(|a| *a) {
        "vip"
    } else {
        "dnsrr"
    };
    eprintln!("ip_vs per host: {ip_vs:?}; endpoint mode expected: {want}");
    let manager_socket = lab.node(&lab.hosts[0]).expect("node")["docker_socket"]
        .as_str()
        .expect("docker_socket")
        .to_string();
    for n in 1..=4 {
        let (ok, mode) = docker(
            &manager_socket,
            &[
                "service",
                "inspect",
                &format!("etcd-{n}"),
                "--format",
                "{{.Spec.EndpointSpec.Mode}}",
            ],
        );
        assert!(ok, "etcd-{n}: {mode}");
        assert_eq!(mode.trim(), want, "etcd-{n}'s endpoint mode");
    }

    // `ctl tunnel database:admin` reaches etcd's HTTP endpoints on the
    // leader's host, inside its container (the port exists only on the
    // overlay): `/version` is etcd's, and `/metrics` says it is the leader.
    // `ctl tunnel etcd-N:2379` reaches a named server the same way. etcd
    // wants a client certificate (`[database] auth`, the default): the one
    // `ctl database credentials` writes is served, none is refused.
    assert_eq!(db["auth"], true, "{db}");
    let creds = lab.dir.path().join("etcd-creds");
    let out = lab.ctl(&[
        "database",
        "credentials",
        "--out",
        creds.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let leader = db["leader"].as_str().unwrap_or("").to_string();
    let other = (1..=4)
        .map(|i| format!("etcd-{i}"))
        .find(|s| *s != leader)
        .unwrap_or_default();
    for (target, expect) in [
        ("database:admin".to_string(), "etcd_server_is_leader 1"),
        (format!("{other}:2379"), "etcd_server_is_leader 0"),
    ] {
        let (_tunnel, local) = lab_tunnel(&lab, &target);
        let version = etcd_get(&creds, local, "/version").expect("GET /version through the tunnel");
        assert!(
            version.contains("\"etcdserver\":\"3.") && version.contains("\"etcdcluster\""),
            "{target}: {version}"
        );
        let metrics = etcd_get(&creds, local, "/metrics").expect("GET /metrics through the tunnel");
        assert!(
            metrics.contains(expect),
            "{target}: no {expect:?} in /metrics"
        );
        let (ok, out) = sh_err(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            creds.join("ca.pem").to_str().expect("utf-8"),
            &format!("https://127.0.0.1:{local}/version"),
        ]);
        assert!(!ok, "served without a client certificate: {out}");
    }

    let socket = |host: &str| -> String {
        lab.node(host).expect("node")["docker_socket"]
            .as_str()
            .expect("docker_socket")
            .to_string()
    };
    let server_of = |host: &str| -> String {
        lab.node(host).expect("node")["database_server"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let (h1, h4) = (lab.hosts[0].clone(), lab.hosts[3].clone());
    let (s1, s4) = (socket(&h1), socket(&h4));
    let c1 = service_container(&s1, &server_of(&h1)).expect("server on host 1");
    let c4 = service_container(&s4, &server_of(&h4)).expect("server on host 4");
    // 4 started members, seen through host 1's server.
    let (ok, members) = etcdctl(&s1, &c1, &["member", "list"]);
    assert!(ok, "{members}");
    assert_eq!(
        members.lines().filter(|l| l.contains("started")).count(),
        4,
        "{members}"
    );
    // Peers talk TLS (the default `[database] peer_tls`): every member's
    // peer URL is https, and etcd-2's peer port refuses plain HTTP from
    // host 1's server while its client port on the same path answers.
    assert!(
        members.lines().filter(|l| l.contains("started")).all(|l| l
            .split(", ")
            .nth(3)
            .is_some_and(|peer| peer.starts_with("https://etcd-"))),
        "{members}"
    );
    // A plain HTTP request with busybox's nc (its wget crashes in this
    // static image) to etcd-2's address from Docker's DNS, stdin open until
    // the answer is in. etcd answers `/version` on both ports; on the peer
    // port only inside TLS now.
    let plain_get = |port: u16| {
        sh(&[
            "docker",
            "-H",
            &format!("unix://{s1}"),
            "exec",
            &c1,
            "sh",
            "-c",
            &format!(
                "ip=$(nslookup etcd-2 | awk '/^Address/ {{a=$NF}} END {{print a}}'); (printf 'GET /version HTTP/1.0\\r\\n\\r\\n'; sleep 1) | nc -w 5 $ip {port}"
            ),
        ])
        .1
    };
    // The client port speaks TLS only too (`[database] auth`).
    let out = plain_get(2379);
    assert!(
        !out.contains("etcdserver"),
        "the client port answered plain HTTP: {out}"
    );
    // Over the overlay, host 1's server reaches etcd-2's client port with
    // its certificate (its ETCDCTL_* environment), and the same request
    // without a certificate gets nothing.
    let health_of_etcd2 = |with_certificate: bool| {
        let unset = if with_certificate {
            ""
        } else {
            "unset ETCDCTL_CERT ETCDCTL_KEY; "
        };
        sh_err(&[
            "docker",
            "-H",
            &format!("unix://{s1}"),
            "exec",
            &c1,
            "sh",
            "-c",
            &format!(
                "{unset}ETCDCTL_ENDPOINTS=https://etcd-2:2379 etcdctl --dial-timeout=3s --command-timeout=5s endpoint health -w json"
            ),
        ])
    };
    let (ok, out) = health_of_etcd2(true);
    assert!(ok && out.contains("\"health\":true"), "{out}");
    let (ok, out) = health_of_etcd2(false);
    assert!(
        !ok && !out.contains("\"health\":true"),
        "etcd served a client without a certificate: {out}"
    );
    eprintln!("etcd to a client without a certificate: {}", out.trim());
    // The same from a container of its own on the overlay (apiary's probe
    // container on host 1, entered by its network namespace) with no
    // certificate at all: nothing.
    let h2 = lab.hosts[1].clone();
    let s2 = socket(&h2);
    let (ok, etcd2_ip) = sh(&[
        "docker",
        "-H",
        &format!("unix://{s2}"),
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        &service_container(&s2, &server_of(&h2)).expect("etcd-2's container"),
    ]);
    let etcd2_ip = etcd2_ip.split_whitespace().next().unwrap_or("").to_string();
    assert!(ok && !etcd2_ip.is_empty(), "etcd-2's overlay address");
    let (ok, probe_pid) = sh(&[
        "docker",
        "-H",
        &format!("unix://{s1}"),
        "inspect",
        "-f",
        "{{.State.Pid}}",
        &format!("apiary-probe-{h1}"),
    ]);
    assert!(ok, "the probe container on {h1}");
    let (ok, out) = sh_err(&[
        "nsenter",
        "-t",
        probe_pid.trim(),
        "-n",
        "etcdctl",
        &format!("--endpoints=https://{etcd2_ip}:2379"),
        "--insecure-skip-tls-verify",
        "--dial-timeout=3s",
        "--command-timeout=5s",
        "get",
        "bees/queen",
    ]);
    assert!(
        !ok,
        "a container on the overlay read etcd without a certificate: {out}"
    );
    let out = plain_get(2380);
    assert!(
        !out.contains("etcdserver"),
        "the peer port answered plain HTTP: {out}"
    );
    // The certificate and key come as Swarm secrets, the key for root only.
    let (ok, out) = sh(&[
        "docker",
        "-H",
        &format!("unix://{s1}"),
        "exec",
        &c1,
        "stat",
        "-c",
        "%n %a",
        "/run/secrets/apiary-peer-ca.pem",
        "/run/secrets/apiary-peer.pem",
        "/run/secrets/apiary-peer.key",
    ]);
    assert!(
        ok && out.contains("/run/secrets/apiary-peer.key 400"),
        "{out}"
    );
    // Written through host 1, read through host 4.
    let (ok, out) = etcdctl(&s1, &c1, &["put", "bees/queen", "alive"]);
    assert!(ok && out.contains("OK"), "{out}");
    let (ok, out) = etcdctl(&s4, &c4, &["get", "bees/queen", "--print-value-only"]);
    assert!(ok && out.trim() == "alive", "{out}");

    // Kill one server's container: 3/4 within a check interval or so, then
    // Swarm restarts it and health is 4/4 again, the key still there.
    let h3 = lab.hosts[2].clone();
    let s3 = socket(&h3);
    let c3 = service_container(&s3, &server_of(&h3)).expect("server on host 3");
    let (mut events, events_file) = ctl_events_to_file(&lab);
    std::thread::sleep(Duration::from_millis(500));
    let killed = std::time::Instant::now();
    assert!(sh(&["docker", "-H", &format!("unix://{s3}"), "kill", &c3]).0);
    // Reported by the host's agent as it happens, not at the next round.
    let failed = eventually("database_server_failed", Duration::from_secs(10), || {
        std::fs::read_to_string(&events_file)
            .ok()?
            .lines()
            .find(|l| l.contains("database_server_failed"))
            .map(str::to_string)
    });
    let to_event = killed.elapsed();
    eprintln!(
        "kill -> database_server_failed: {:.3} s",
        to_event.as_secs_f64()
    );
    assert!(
        to_event < Duration::from_secs(2),
        "database_server_failed came {to_event:?} after the kill"
    );
    let failed: serde_json::Value = serde_json::from_str(&failed).expect("event json");
    assert_eq!(failed["node"], h3.as_str(), "{failed}");
    let message = failed["message"].as_str().unwrap_or("");
    assert!(
        message.contains(&server_of(&h3)) && message.contains("exit 137"),
        "{failed}"
    );
    eventually("database 3/4", Duration::from_secs(10), || {
        let s = lab.status()?;
        (s["database"]["connected"] == 3).then_some(())
    });
    let to_degraded = killed.elapsed();
    eventually("database 4/4 again", Duration::from_secs(60), || {
        let s = lab.status()?;
        (s["database"]["healthy"] == true).then_some(())
    });
    eprintln!(
        "kill -> 3/4 seen: {:.1} s; kill -> 4/4 again: {:.1} s",
        to_degraded.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    // `ctl events` streams what happened; the event may reach it a moment
    // after `ctl status` shows the state.
    let seen = eventually(
        "the database_healthy event",
        Duration::from_secs(10),
        || {
            let seen = std::fs::read_to_string(&events_file).unwrap_or_default();
            seen.contains("database_healthy").then_some(seen)
        },
    );
    let _ = events.kill();
    let _ = events.wait();
    let degraded = seen
        .find("database_degraded")
        .unwrap_or_else(|| panic!("no database_degraded event: {seen}"));
    let healthy = seen
        .rfind("database_healthy")
        .unwrap_or_else(|| panic!("no database_healthy event: {seen}"));
    assert!(degraded < healthy, "{seen}");
    // Swarm started the server again: seen too, and counted.
    assert!(seen.contains("database_server_restarted"), "{seen}");
    let node = lab.node(&h3).expect("host 3");
    assert_eq!(
        (
            node["database_failures"].as_u64(),
            node["database_restarts"].as_u64()
        ),
        (Some(1), Some(1)),
        "{node}"
    );
    assert_eq!(node["database_last_failure"]["exit_code"], 137, "{node}");
    assert_eq!(node["database_last_failure"]["oom"], false, "{node}");
    let c3b = service_container(&s3, &server_of(&h3)).expect("server on host 3 again");
    assert_ne!(c3, c3b, "Swarm started a new task");
    let (ok, out) = etcdctl(&s3, &c3b, &["get", "bees/queen", "--print-value-only"]);
    assert!(ok && out.trim() == "alive", "{out}");

    // A server past its memory limit (450m): the kernel's OOM killer takes
    // etcd (made its first choice), and apiary says so.
    eventually(
        "database 4/4 before the OOM",
        Duration::from_secs(60),
        || {
            let s = lab.status()?;
            (s["database"]["healthy"] == true).then_some(())
        },
    );
    let h2 = lab.hosts[1].clone();
    let s2 = socket(&h2);
    let c2 = service_container(&s2, &server_of(&h2)).expect("server on host 2");
    let (ok, out) = sh_err(&[
        "docker",
        "-H",
        &format!("unix://{s2}"),
        "exec",
        &c2,
        "sh",
        "-c",
        // etcd is PID 1 of its container: the OOM killer's first choice; a
        // shell holding 600 MB in a variable takes the cgroup past 450m.
        "echo 1000 > /proc/1/oom_score_adj && a=$(head -c 600000000 /dev/zero | tr '\\0' x); echo ${#a}",
    ]);
    eprintln!("memory hog: ok={ok} {}", out.trim());
    let node = eventually(
        "an OOM-killed server reported",
        Duration::from_secs(60),
        || {
            let n = lab.node(&h2)?;
            (n["database_last_failure"]["oom"] == true).then_some(n)
        },
    );
    assert_eq!(node["database_last_failure"]["exit_code"], 137, "{node}");
    let out = ctl_with(&lab.admin_conf(), &["status"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains("OOM killed"), "{table}");
    eventually(
        "the OOM-killed server restarted and the database 4/4",
        Duration::from_secs(90),
        || {
            // Swarm starts it again after its 10 s delay: restarted, then
            // healthy (a status from before the kill would pass at once).
            let s = lab.status()?;
            let n = s["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["name"] == h2.as_str())?
                .clone();
            (n["database_restarts"].as_u64() >= Some(1)
                && n["database_healthy"] == true
                && s["database"]["healthy"] == true)
                .then_some(())
        },
    );

    // Scale to 3 then back to 4: healthy servers never below quorum (3 of 4,
    // 2 of 3) while it runs, the key kept.
    let conf = lab.admin_conf();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (conf, stop) = (conf.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let out = ctl_with(&conf, &["status", "--json"]);
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                    let d = &v["database"];
                    seen.push((
                        d["connected"].as_u64().unwrap_or(0),
                        d["servers"].as_u64().unwrap_or(0),
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            seen
        })
    };
    let scaled = std::time::Instant::now();
    let out = ctl_with(&conf, &["scale", "database=3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3/3 servers connected"),
        "{out:?}"
    );
    let to3 = scaled.elapsed();
    let (ok, members) = etcdctl(&s1, &c1, &["member", "list"]);
    assert!(ok && members.lines().count() == 3, "{members}");
    assert!(
        service_container(&socket(&h4), "etcd-4").is_none(),
        "etcd-4's service is gone"
    );
    // Its peer certificate's secrets went with it (Swarm keeps secrets
    // cluster-wide; host 1 is a manager).
    let secrets_of = |server: &str| {
        let (ok, out) = docker(
            &s1,
            &[
                "secret",
                "ls",
                "-q",
                "--filter",
                &format!("label=io.apiary.database.server={server}"),
            ],
        );
        assert!(ok, "{out}");
        out.lines().count()
    };
    assert_eq!(secrets_of("etcd-4"), 0, "etcd-4's secrets are gone");
    assert_eq!(secrets_of("etcd-3"), 3, "etcd-3 keeps its secrets");
    let out = ctl_with(&conf, &["scale", "database=4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4/4 servers connected"),
        "{out:?}"
    );
    assert_eq!(secrets_of("etcd-4"), 3, "etcd-4's secrets are back");
    eprintln!(
        "scale 4->3: {:.1} s; 3->4: {:.1} s",
        to3.as_secs_f64(),
        (scaled.elapsed() - to3).as_secs_f64()
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = watcher.join().expect("watcher");
    assert!(
        seen.iter().all(|(c, n)| *n > 0 && *c > *n / 2),
        "below quorum while scaling: {seen:?}"
    );
    let c4b = service_container(&s4, "etcd-4").expect("etcd-4 again");
    let (ok, out) = etcdctl(&s4, &c4b, &["get", "bees/queen", "--print-value-only"]);
    assert!(ok && out.trim() == "alive", "{out}");
    let (ok, members) = etcdctl(&s1, &c1, &["member", "list"]);
    assert_eq!(
        members.lines().filter(|l| l.contains("started")).count(),
        4,
        "{ok} {members}"
    );

    // A restarted coordinator adopts the services: no second set, healthy.
    lab.stop();
    lab.start();
    eventually(
        "database healthy after a coordinator restart",
        Duration::from_secs(60),
        || {
            let s = lab.status()?;
            (s["database"]["healthy"] == true).then_some(())
        },
    );
    let (ok, services) = sh(&[
        "docker",
        "-H",
        &format!("unix://{s1}"),
        "service",
        "ls",
        "--format",
        "{{.Name}}",
    ]);
    let mut services: Vec<&str> = services
        .lines()
        .filter(|l| l.starts_with("etcd-"))
        .collect();
    services.sort();
    assert!(ok);
    assert_eq!(services, ["etcd-1", "etcd-2", "etcd-3", "etcd-4"]);

    // Removing a host drains it first: its database server leaves through
    // etcd's member API, then Swarm drains, demotes and forgets the node.
    let out = ctl_with(&conf, &["nodes", "remove", &h4]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for step in [
        "database: etcd-4 left",
        "drained and demoted",
        "left the swarm",
        "removed from the node list",
        "revoked",
    ] {
        assert!(text.contains(step), "no {step:?} in: {text}");
    }
    let (ok, members) = etcdctl(&s1, &c1, &["member", "list"]);
    assert!(ok && members.lines().count() == 3, "{members}");
    let (_, ls) = sh(&[
        "docker",
        "-H",
        &format!("unix://{s1}"),
        "node",
        "ls",
        "--format",
        "{{.Hostname}}",
    ]);
    assert!(
        !ls.lines().any(|l| l == h4),
        "{h4} still in the swarm: {ls}"
    );
    eventually(
        "3/3 healthy without the removed host",
        Duration::from_secs(60),
        || {
            let s = lab.status()?;
            (s["database"]["healthy"] == true && s["nodes"].as_array()?.len() == 3).then_some(())
        },
    );
    let (ok, out) = etcdctl(&s1, &c1, &["get", "bees/queen", "--print-value-only"]);
    assert!(ok && out.trim() == "alive", "{out}");
    lab.stop();
}

/// RethinkDB across 4 lab hosts, from a `docker save` archive of
/// `rethinkdb:2.4` in APIARY_RETHINKDB_IMAGE_ARCHIVE (no registry is
/// reachable from this machine). Ignored unless asked for, so that a run
/// without the archive does not count it as passed:
/// `APIARY_RETHINKDB_IMAGE_ARCHIVE=... cargo test -p apiary-tests --test lab -- --ignored rethinkdb`.
#[test]
#[ignore = "needs APIARY_RETHINKDB_IMAGE_ARCHIVE (a `docker save rethinkdb:2.4` archive); run with --ignored"]
fn rethinkdb_forms_on_four_hosts_when_an_image_archive_is_supplied() {
    let archive = std::env::var("APIARY_RETHINKDB_IMAGE_ARCHIVE").unwrap_or_else(|_| {
        panic!("set APIARY_RETHINKDB_IMAGE_ARCHIVE to a `docker save rethinkdb:2.4` archive")
    });
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = LabCluster::new(
        "labrdb",
        4,
        &format!(
            "\n[swarm]\nchecks_interval = \"3s\"\n\n[database]\nkind = \"rethinkdb\"\nimage_archive = \"{archive}\"\nspread_tables = true\n"
        ),
    );
    let started = std::time::Instant::now();
    lab.start();
    let status = eventually("rethinkdb 4/4 healthy", Duration::from_secs(240), || {
        let s = lab.status()?;
        (s["database"]["healthy"] == true).then_some(s)
    });
    eprintln!(
        "serve -> rethinkdb 4/4 healthy: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let db = &status["database"];
    assert_eq!(
        (db["servers"].clone(), db["connected"].clone()),
        (4.into(), 4.into()),
        "{db}"
    );
    let q = lab.node(&lab.hosts[0]).expect("node");
    let sock = format!("unix://{}", q["docker_socket"].as_str().expect("socket"));
    for n in 1..=4 {
        let (ok, args) = sh(&[
            "docker",
            "-H",
            &sock,
            "service",
            "inspect",
            &format!("rethinkdb-{n}"),
            "--format",
            "{{json .Spec.TaskTemplate.ContainerSpec.Command}} {{json .Spec.EndpointSpec}}",
        ]);
        assert!(ok, "{args}");
        assert_eq!(
            args.contains("--join rethinkdb-1:29015")
                || args.contains("\"--join\",\"rethinkdb-1:29015\""),
            n > 1,
            "{args}"
        );
        assert!(!args.contains("Ports"), "nothing published: {args}");
    }
    // The leader is named by its service (RethinkDB calls it rethinkdb_N),
    // and `ctl tunnel database:admin` opens its admin UI.
    let leader = db["leader"].as_str().unwrap_or("").to_string();
    assert!(
        (1..=4).any(|n| leader == format!("rethinkdb-{n}")),
        "leader {leader:?}: {db}"
    );
    let (tunnel, local) = lab_tunnel(&lab, "database:admin");
    let page = http_get(local, "/").expect("GET / of the admin UI through the tunnel");
    assert!(
        page.to_lowercase().contains("rethinkdb"),
        "not the admin UI: {page:.300}"
    );
    // A real browser renders the dashboard: "Servers: 4 connected".
    let ui = admin_ui_text(local);
    assert!(ui.contains("4 connected"), "the dashboard: {ui:.2000}");
    drop(tunnel);

    rethinkdb_is_authenticated_and_keeps_its_tables(&lab);
    lab.stop();
}

/// The RethinkDB lab's second half: credentials, tables through scale-down
/// and a killed server, and what a container on the overlay can reach.
fn rethinkdb_is_authenticated_and_keeps_its_tables(lab: &LabCluster) {
    let status = lab.status().expect("status");
    let db = &status["database"];
    assert_eq!(db["auth"], true, "{db}");
    // The operator's credentials: a password, shown or written 0600.
    let out = lab.ctl(&["database", "credentials", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let creds: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let password = creds["password"].as_str().expect("password").to_string();
    assert_eq!(creds["user"], "admin");
    assert!(password.len() >= 32, "{creds}");
    let dir = lab.dir.path().join("db-creds");
    let out = lab.ctl(&[
        "database",
        "credentials",
        "--out",
        dir.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    {
        use std::os::unix::fs::PermissionsExt;
        let file = dir.join("password");
        assert_eq!(std::fs::read_to_string(&file).expect("written"), password);
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The password is in no service's spec.
    let q = lab.node(&lab.hosts[0]).expect("node");
    let sock = format!("unix://{}", q["docker_socket"].as_str().expect("socket"));
    let (ok, spec) = sh(&["docker", "-H", &sock, "service", "inspect", "rethinkdb-2"]);
    assert!(
        ok && !spec.contains(&password),
        "the password in the service spec"
    );

    // Through `ctl tunnel`: the driver is refused without the password and
    // served with it.
    let (_t1, driver) = lab_tunnel(lab, "rethinkdb-1:28015");
    let (ok, out) = rethinkdb_client("127.0.0.1", driver, "", &["connect"]);
    assert!(!ok && out.contains("Wrong password"), "{out}");
    let (ok, out) = rethinkdb_client("127.0.0.1", driver, &password, &["connect"]);
    assert!(ok && out.starts_with("ok rethinkdb_1"), "{out}");

    // A table of 2 shards and 3 replicas with 1,000 documents: ctl status
    // counts it ready.
    let (ok, out) = rethinkdb_client(
        "127.0.0.1",
        driver,
        &password,
        &["setup", "docs", "2", "3", "1000"],
    );
    assert!(ok, "{out}");
    eventually("1/1 tables ready", Duration::from_secs(60), || {
        let t = lab.status()?["database"]["tables"].clone();
        (t["total"] == 1 && t["ready"] == 1).then_some(())
    });

    // database=3 then =4 while a reader reads the table (majority reads)
    // through rethinkdb-1 every 200 ms, retrying a failed read as an
    // application would: RethinkDB serves reads from a shard's primary, and
    // moving a primary off the leaving server makes that shard unavailable
    // for a moment (upstream documents this for every reconfigure); never
    // longer than 3 s, and 1,000 documents at the end.
    let stop = lab.dir.path().join("reader.stop");
    let reader = {
        let stop = stop.clone();
        let password = password.clone();
        std::thread::spawn(move || {
            rethinkdb_client(
                "127.0.0.1",
                driver,
                &password,
                &["read-until", stop.to_str().expect("utf-8"), "docs"],
            )
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    for n in ["3", "4"] {
        let out = lab.ctl(&["scale", &format!("database={n}")]);
        assert!(out.status.success(), "database={n}: {}", stderr(&out));
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            said.contains(&format!("{n}/{n} servers connected")),
            "{said}"
        );
        assert!(said.contains("tables 1/1 ready"), "{said}");
    }
    std::fs::write(&stop, b"").expect("stop file");
    // Scaled back up with `spread_tables`: rethinkdb-4 holds replicas again.
    let (ok, holders) = rethinkdb_client("127.0.0.1", driver, &password, &["replicas", "docs"]);
    assert!(ok && holders.contains("rethinkdb_4"), "{holders}");
    let (ok, reads) = reader.join().expect("reader");
    assert!(ok, "{reads}");
    eprintln!("reads through database=3 and =4: {reads}");
    let gap: u64 = reads
        .split_whitespace()
        .skip_while(|w| *w != "longest-gap-ms")
        .nth(1)
        .and_then(|g| g.parse().ok())
        .expect("the reader's longest gap");
    assert!(gap < 3000, "the table was unreadable for {gap} ms: {reads}");
    let (ok, count) = rethinkdb_client("127.0.0.1", driver, &password, &["count", "docs"]);
    assert_eq!((ok, count.trim()), (true, "1000"));

    // A table on every server: database=3 is refused, naming it, and nothing
    // changes.
    let (ok, out) = rethinkdb_client(
        "127.0.0.1",
        driver,
        &password,
        &["setup", "everywhere", "1", "4", "10"],
    );
    assert!(ok, "{out}");
    let out = lab.ctl(&["scale", "database=3"]);
    assert!(!out.status.success());
    let why = stderr(&out);
    assert!(
        why.contains("test.everywhere") && why.contains("replicas"),
        "{why}"
    );
    // Nothing changed: 4 servers, healthy (the next health round also
    // sees the new table ready).
    eventually("4 servers, healthy", Duration::from_secs(30), || {
        let db = lab.status()?["database"].clone();
        (db["servers"] == 4 && db["healthy"] == true).then_some(())
    });
    let (ok, out) = rethinkdb_client("127.0.0.1", driver, &password, &["drop", "everywhere"]);
    assert!(ok, "{out}");

    // A server killed: ctl status shows it (servers and tables), the table
    // stays readable, Swarm restarts it, 4/4 and every table ready again.
    let h2 = lab.hosts[1].clone();
    let s2 = lab.node(&h2).expect("node")["docker_socket"]
        .as_str()
        .expect("socket")
        .to_string();
    let c2 = service_container(&s2, "rethinkdb-2").expect("rethinkdb-2's container");
    assert!(sh(&["docker", "-H", &format!("unix://{s2}"), "kill", &c2]).0);
    let seen = eventually(
        "ctl status shows rethinkdb-2 down",
        Duration::from_secs(60),
        || {
            // Not healthy, with the server or its tables named: how many the
            // others count as connected in that moment depends on when
            // RethinkDB drops the dead server from their server_status.
            let db = lab.status()?["database"].clone();
            let error = db["error"].as_str().unwrap_or("").to_string();
            (db["healthy"] == false
                && (error.contains("rethinkdb-2") || error.contains("test.docs")))
            .then_some(db)
        },
    );
    eprintln!("while rethinkdb-2 is down: {seen}");
    let (ok, count) = rethinkdb_client("127.0.0.1", driver, &password, &["count", "docs"]);
    assert_eq!(
        (ok, count.trim()),
        (true, "1000"),
        "readable with a server down"
    );
    eventually(
        "4/4 and every table ready again",
        Duration::from_secs(120),
        || {
            let db = lab.status()?["database"].clone();
            (db["healthy"] == true && db["tables"]["ready"] == db["tables"]["total"]).then_some(())
        },
    );
    let (tunnel, local) = lab_tunnel(lab, "database:admin");
    let ui = admin_ui_text(local);
    assert!(ui.contains("4 connected"), "healed: {ui:.2000}");
    drop(tunnel);

    // From a container on the overlay without the password (apiary's probe
    // container, entered by its network namespace): the driver is refused,
    // the web UI is not there at all, and the cluster port speaks TLS only.
    let (ok, target) = sh(&[
        "docker",
        "-H",
        &format!("unix://{s2}"),
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        &service_container(&s2, "rethinkdb-2").expect("rethinkdb-2 again"),
    ]);
    assert!(ok, "{target}");
    let target = target
        .split_whitespace()
        .next()
        .expect("an overlay address")
        .to_string();
    let h1 = lab.hosts[0].clone();
    let s1 = lab.node(&h1).expect("node")["docker_socket"]
        .as_str()
        .expect("socket")
        .to_string();
    let (ok, pid) = sh(&[
        "docker",
        "-H",
        &format!("unix://{s1}"),
        "inspect",
        "-f",
        "{{.State.Pid}}",
        &format!("apiary-probe-{h1}"),
    ]);
    assert!(ok, "{pid}");
    let pid = pid.trim().to_string();
    let script = rethinkdb_script();
    let (ok, out) = sh(&[
        "nsenter", "-t", &pid, "-n", "python3", &script, &target, "28015", "", "connect",
    ]);
    assert!(!ok, "connected without the password: {out}");
    let (_, out) = sh_err(&[
        "nsenter", "-t", &pid, "-n", "python3", &script, &target, "28015", "", "connect",
    ]);
    assert!(out.contains("Wrong password"), "{out}");
    let (ok, out) = sh(&[
        "nsenter", "-t", &pid, "-n", "busybox", "nc", "-w", "3", &target, "8080",
    ]);
    assert!(!ok, "the web UI answered on the overlay: {out}");
    // The cluster port: a plain connection that sends RethinkDB's cluster
    // header gets no header back (the port wants a TLS handshake first).
    let (_, out) = sh(&[
        "nsenter",
        "-t",
        &pid,
        "-n",
        "sh",
        "-c",
        &format!(
            "(printf 'RethinkDB cluster\\n'; sleep 2) | busybox nc -w 3 {target} 29015 | head -c 200"
        ),
    ]);
    assert!(
        !out.contains("RethinkDB"),
        "a plain cluster handshake: {out}"
    );
}

/// The lab tests' RethinkDB client script (RethinkDB's Python driver).
fn rethinkdb_script() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("py/rethinkdb_client.py")
        .display()
        .to_string()
}

/// Runs the RethinkDB client script: (success, stdout, or stderr on failure).
fn rethinkdb_client(host: &str, port: u16, password: &str, args: &[&str]) -> (bool, String) {
    let script = rethinkdb_script();
    let port = port.to_string();
    let mut argv = vec!["python3", script.as_str(), host, port.as_str(), password];
    argv.extend_from_slice(args);
    let (ok, out) = sh_err(&argv);
    (ok, out)
}

/// Runs `argv`: (success, stdout when it succeeded, else stdout and stderr).
fn sh_err(argv: &[&str]) -> (bool, String) {
    match std::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
    {
        Ok(o) if o.status.success() => (true, String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => (
            false,
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, format!("{}: {e}", argv[0])),
    }
}

/// The admin UI's dashboard as headless Chromium renders it (Debian's
/// `chromium`, JavaScript run for up to 20 s of virtual time), its text
/// with the tags taken out and spaces collapsed.
fn admin_ui_text(port: u16) -> String {
    let profile = tempfile::tempdir().expect("a browser profile");
    let (ok, dom) = sh_err(&[
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        &format!("--user-data-dir={}", profile.path().display()),
        "--virtual-time-budget=20000",
        "--dump-dom",
        &format!("http://127.0.0.1:{port}/"),
    ]);
    assert!(ok, "chromium: {dom:.2000}");
    let mut text = String::with_capacity(dom.len());
    let mut in_tag = false;
    for c in dom.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A 4-host lab with etcd and a 2 s check interval, started and waited for
/// until the database is healthy (the caller holds `LAB_SERIAL`).
fn etcd_lab_up(name: &str) -> LabCluster {
    let mut lab = LabCluster::new(
        name,
        4,
        "\n[swarm]\nchecks_interval = \"2s\"\n\n[database]\nkind = \"etcd\"\n",
    );
    lab.start();
    eventually("etcd 4/4 healthy", Duration::from_secs(900), || {
        let s = lab.status()?;
        (s["database"]["healthy"] == true).then_some(())
    });
    lab
}

/// `ctl events --json` into a file in the lab's directory: the process
/// (kill it when done) and the file.
fn ctl_events_to_file(lab: &LabCluster) -> (std::process::Child, std::path::PathBuf) {
    let file = lab.dir.path().join("events.jsonl");
    let child = std::process::Command::new(bin("ctl"))
        .arg("--config")
        .arg(lab.admin_conf())
        .args(["events", "--json"])
        .stdout(std::fs::File::create(&file).expect("events file"))
        .spawn()
        .expect("ctl events");
    (child, file)
}

/// `ctl docker ARGS` with the lab's admin.conf: (exit code, stdout, stderr).
fn ctl_docker(lab: &LabCluster, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin("ctl"))
        .arg("--config")
        .arg(lab.admin_conf())
        .arg("docker")
        .args(args)
        .output()
        .expect("ctl docker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    )
}

/// Runs `cmd` on a fresh pty (its stdin, stdout and stderr), types `input`,
/// and returns what it printed once `until` shows up (or after 60 s).
fn in_pty(mut cmd: std::process::Command, input: &str, until: &str) -> String {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = || std::process::Stdio::from(pty.slave.as_fd().try_clone_to_owned().expect("dup"));
    let mut child = cmd
        .stdin(slave())
        .stdout(slave())
        .stderr(slave())
        .spawn()
        .expect("spawn on the pty");
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().expect("dup master");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // Give the remote shell a moment to start before typing.
    std::thread::sleep(Duration::from_secs(1));
    master.write_all(input.as_bytes()).expect("type");
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.extend(chunk);
        }
        if String::from_utf8_lossy(&seen).contains(until) {
            break;
        }
    }
    let _ = child.wait();
    String::from_utf8_lossy(&seen).into_owned()
}

/// Moves a lab host's engine socket aside (its engine keeps running): to
/// its agent, the engine stops answering.
fn hide_socket(socket: &str) {
    std::fs::rename(socket, format!("{socket}.hidden")).expect("hide the engine socket");
}

fn unhide_socket(socket: &str) {
    std::fs::rename(format!("{socket}.hidden"), socket).expect("restore the engine socket");
}

#[test]
fn the_docker_cli_runs_against_the_swarm_through_ctl() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = LabCluster::new("labdocker", 4, "\n[swarm]\nchecks_interval = \"2s\"\n");
    lab.start();
    let status = lab.wait_all_ready(Duration::from_secs(900));
    let socket_of = |host: &str| -> String {
        status["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == host))
            .and_then(|n| n["docker_socket"].as_str())
            .expect("docker_socket")
            .to_string()
    };
    let events_file = lab.dir.path().join("docker-events.jsonl");
    let mut cmd = std::process::Command::new(bin("ctl"));
    cmd.arg("--config")
        .arg(lab.admin_conf())
        .args(["events", "--json"]);
    let _events = Proc::spawn(cmd, &events_file);

    // The stock docker CLI, through ctl: the swarm's 4 nodes.
    let nodes = eventually(
        "docker node ls shows 4 nodes",
        Duration::from_secs(180),
        || {
            let (code, out, _) =
                ctl_docker(&lab, &["--", "node", "ls", "--format", "{{.Hostname}}"]);
            let mut names: Vec<String> = out.lines().map(str::to_string).collect();
            names.sort();
            (code == 0 && names == lab.hosts).then_some(names)
        },
    );
    assert_eq!(nodes, lab.hosts, "docker node ls");
    // Docker's own exit code comes through.
    let (code, _, err) = ctl_docker(&lab, &["--", "service", "inspect", "no-such-service"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no-such-service"), "{err}");

    // The overlay must be checked before the stack attaches to it.
    eventually("overlay checked", Duration::from_secs(180), || {
        let (code, c) = checks(&lab)?;
        (code == 0 && c["phase"] == "swarm").then_some(())
    });
    let stack = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/stack.yml");
    let (code, out, err) = ctl_docker(
        &lab,
        &[
            "--",
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            stack,
            "demo",
        ],
    );
    assert_eq!(code, 0, "stack deploy: {out}{err}");
    let (code, out, err) = ctl_docker(&lab, &["--", "service", "scale", "--detach", "demo_web=4"]);
    assert_eq!(code, 0, "scale: {out}{err}");
    let spread = eventually("web on 4 different hosts", Duration::from_secs(120), || {
        let (_, out, _) = ctl_docker(
            &lab,
            &[
                "--",
                "service",
                "ps",
                "demo_web",
                "--filter",
                "desired-state=running",
                "--format",
                "{{.Node}} {{.CurrentState}}",
            ],
        );
        let running: std::collections::BTreeSet<&str> = out
            .lines()
            .filter(|l| l.contains("Running"))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        (running.len() == 4).then(|| running.into_iter().map(str::to_string).collect::<Vec<_>>())
    });
    assert_eq!(spread, lab.hosts);

    // The client reaches the web service by name over the overlay, and
    // `service logs -f` streams it (killed once the line shows).
    let mut follow = std::process::Command::new(bin("ctl"));
    follow.arg("--config").arg(lab.admin_conf()).args([
        "docker",
        "--",
        "service",
        "logs",
        "-f",
        "demo_client",
    ]);
    let logs_file = lab.dir.path().join("client-logs.txt");
    let mut logs = Proc::spawn(follow, &logs_file);
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&logs_file)
        .unwrap_or_default()
        .contains("got: hello-from-lab")
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the client never got the page by name: {}\n{}",
            std::fs::read_to_string(&logs_file).unwrap_or_default(),
            ctl_docker(&lab, &["--", "service", "ps", "--no-trunc", "demo_client"]).1
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        logs.try_exit().is_none(),
        "service logs -f ended on its own"
    );
    logs.signal(nix::sys::signal::Signal::SIGTERM);
    logs.wait_exit(Duration::from_secs(15));

    // A worker's own engine (`--node`), and `exec -it` into its web task
    // through a pty.
    let worker = "workerbee-3";
    let (code, id, err) = ctl_docker(
        &lab,
        &[
            "--node",
            worker,
            "--",
            "ps",
            "-q",
            "--filter",
            "label=com.docker.swarm.service.name=demo_web",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let id = id
        .lines()
        .next()
        .expect("a web task on the worker")
        .to_string();
    let mut exec = std::process::Command::new(bin("ctl"));
    exec.arg("--config")
        .arg(lab.admin_conf())
        .args(["docker", "--node", worker, "--", "exec", "-it", &id, "sh"]);
    let seen = in_pty(
        exec,
        "echo marker-$((6*7)) on $(hostname)\nexit\n",
        "marker-42 on ",
    );
    assert!(
        seen.contains("marker-42 on "),
        "exec -it through a pty: {seen:?}"
    );
    // A worker asked for a swarm command: Docker's own error, unchanged.
    let (code, _, err) = ctl_docker(&lab, &["--node", worker, "--", "node", "ls"]);
    assert_ne!(code, 0);
    assert!(err.contains("not a swarm manager"), "{err}");

    // Uploads: `docker load` of an archive `docker save` wrote (both through
    // ctl), and a build context sent to the worker's engine, then run there
    // (`run` attaches to the container's output).
    let archive = lab.dir.path().join("saved.tar");
    let archive_arg = archive.to_str().expect("utf-8");
    for args in [
        &["tag", "lab/busybox:1", "demo/saved:1"][..],
        &["save", "-o", archive_arg, "demo/saved:1"],
        &["rmi", "demo/saved:1"],
        &["load", "-i", archive_arg],
        &["image", "inspect", "demo/saved:1"],
    ] {
        let argv: Vec<&str> = ["--node", worker, "--"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let (code, out, err) = ctl_docker(&lab, &argv);
        assert_eq!(code, 0, "docker {args:?}: {out}{err}");
    }
    let context = lab.dir.path().join("build-context");
    std::fs::create_dir(&context).expect("context dir");
    std::fs::write(
        context.join("Dockerfile"),
        "FROM lab/busybox:1\nCOPY hello.txt /hello.txt\n",
    )
    .expect("Dockerfile");
    std::fs::write(context.join("hello.txt"), "built-through-apiary\n").expect("hello.txt");
    // The classic builder: it takes the context as one uploaded tar, and
    // needs no BuildKit plugin on the operator's machine.
    let out = std::process::Command::new(bin("ctl"))
        .arg("--config")
        .arg(lab.admin_conf())
        .args([
            "docker",
            "--node",
            worker,
            "--",
            "build",
            "-q",
            "-t",
            "demo/built:1",
        ])
        .arg(&context)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("ctl docker build");
    assert!(out.status.success(), "build: {}", stderr(&out));
    let (code, out, err) = ctl_docker(
        &lab,
        &[
            "--node",
            worker,
            "--",
            "run",
            "--rm",
            "demo/built:1",
            "cat",
            "/hello.txt",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "built-through-apiary\n"), "{err}");

    // `ctl tunnel` reaches the web service from the laptop.
    let (tunnel, local) = lab_tunnel(&lab, "demo_web:8080");
    let page = http_get(local, "/").expect("GET / through the tunnel");
    assert!(page.contains("hello-from-lab"), "{page}");
    drop(tunnel);

    // The leader's engine unreachable: the next manager answers, and the
    // session event names it.
    let leader = eventually("the leader", Duration::from_secs(30), || {
        let (_, out, _) = ctl_docker(
            &lab,
            &[
                "--",
                "node",
                "ls",
                "--filter",
                "role=manager",
                "--format",
                "{{.Hostname}} {{.ManagerStatus}}",
            ],
        );
        out.lines()
            .find(|l| l.ends_with(" Leader"))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string)
    });
    hide_socket(&socket_of(&leader));
    let (code, out, err) = ctl_docker(&lab, &["--", "node", "ls", "--format", "{{.Hostname}}"]);
    unhide_socket(&socket_of(&leader));
    assert_eq!(code, 0, "node ls with the leader's engine gone: {err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    let served: Vec<String> = events_in(&events_file)
        .into_iter()
        .filter(|e| e["kind"] == "docker_session")
        .filter_map(|e| e["node"].as_str().map(str::to_string))
        .collect();
    assert!(
        served
            .last()
            .is_some_and(|n| *n != leader && lab.hosts[..3].contains(n)),
        "the last session should be on another manager than {leader}: {served:?}"
    );
    // The leader's engine killed outright: still answered within seconds
    // (another manager, once Swarm has a leader again, or the restarted one).
    let pid = lab.pid(&leader, "dockerd").expect("leader's dockerd");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let killed = std::time::Instant::now();
    eventually(
        "node ls with the leader's engine killed",
        Duration::from_secs(60),
        || {
            let (code, out, _) = ctl_docker(&lab, &["--", "node", "ls", "-q"]);
            (code == 0 && out.lines().count() == 4).then_some(())
        },
    );
    eprintln!(
        "docker node ls answered {:.1} s after the leader's engine was killed",
        killed.elapsed().as_secs_f64()
    );
    // No manager's engine answers: one line naming each and why, exit 69.
    let managers: Vec<String> = lab.hosts[..3].to_vec();
    eventually("every engine back", Duration::from_secs(60), || {
        managers
            .iter()
            .all(|m| std::path::Path::new(&socket_of(m)).exists())
            .then_some(())
    });
    for m in &managers {
        hide_socket(&socket_of(m));
    }
    let (code, _, err) = ctl_docker(&lab, &["--", "node", "ls"]);
    for m in &managers {
        unhide_socket(&socket_of(m));
    }
    assert_eq!(code, 69, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("no Swarm manager's Docker engine answered"),
        "{err}"
    );
    for m in &managers {
        assert!(
            err.contains(&format!("{m}: the Docker engine on {m} does not answer")),
            "{err}"
        );
    }

    // `stack rm` removes it all.
    let (code, _, err) = ctl_docker(&lab, &["--", "stack", "rm", "demo"]);
    assert_eq!(code, 0, "{err}");
    eventually("the stack's services gone", Duration::from_secs(60), || {
        let (code, out, _) = ctl_docker(
            &lab,
            &[
                "--",
                "service",
                "ls",
                "-q",
                "--filter",
                "label=com.docker.stack.namespace=demo",
            ],
        );
        (code == 0 && out.trim().is_empty()).then_some(())
    });
}

#[test]
fn hosts_scale_up_and_down_live_with_the_database() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let lab = etcd_lab_up("labscale");
    let scale = |args: &[&str]| {
        let out = ctl_with(&lab.admin_conf(), args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr(&out),
        )
    };

    // 4 -> 6: the two new hosts made, enrolled, in the swarm, on the
    // overlay, checked; `--wait` returns once all of it holds.
    let started = std::time::Instant::now();
    let (code, out, err) = scale(&["scale", "hosts=6", "--wait", "--timeout", "5m"]);
    assert_eq!(code, 0, "scale hosts=6: {out}{err}");
    eprintln!(
        "scale hosts=4->6 --wait: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(out.contains("workerbee-4, workerbee-5 made"), "{out}");
    assert!(out.contains("cluster healthy"), "{out}");
    let status = lab.status().expect("status");
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 6, "{status}");
    for n in nodes {
        assert_eq!(n["state"], "ready", "{n}");
        assert_eq!(n["swarm_availability"], "active", "{n}");
        assert_eq!(n["overlay_attached"], true, "{n}");
    }
    let (code, c) = checks(&lab).expect("checks");
    assert_eq!((code, c["hosts"].as_u64()), (0, Some(6)), "{c}");
    assert_eq!(status["database"]["healthy"], true, "{status}");

    // 6 -> 4: the highest-numbered go, workerbee-5 first, each drained
    // (database server out first, Swarm node removed), revoked, removed.
    let (code, out, err) = scale(&["scale", "hosts=4", "--wait", "--timeout", "5m"]);
    assert_eq!(code, 0, "scale hosts=4: {out}{err}");
    let out_down = out.clone();
    let five = out
        .find("workerbee-5: host removed")
        .unwrap_or_else(|| panic!("{out}"));
    let four = out
        .find("workerbee-4: host removed")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(five < four, "workerbee-5 goes first: {out}");
    assert!(
        out.contains("workerbee-5: removed from the cluster"),
        "{out}"
    );
    let status = lab.status().expect("status");
    let names: Vec<&str> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["queenbee", "workerbee-1", "workerbee-2", "workerbee-3"]
    );
    assert_eq!(status["database"]["healthy"], true, "{status}");
    // Nothing left of them: namespaces, run directories, Swarm nodes.
    let (_, netns) = sh(&["ip", "netns", "list"]);
    for gone in ["workerbee-4", "workerbee-5"] {
        assert!(!netns.contains(&format!("labscale.{gone}")), "{netns}");
        assert!(!lab.run_dir(gone).exists(), "{gone}'s run directory");
    }
    let out = ctl_with(
        &lab.admin_conf(),
        &["docker", "--", "node", "ls", "--format", "{{.Hostname}}"],
    );
    let swarm_nodes = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        swarm_nodes.lines().count(),
        4,
        "{swarm_nodes}\nscale output: {out_down}"
    );
    // The count is kept: a restarted coordinator plans 4, not the spec's.
    let (code, out, _) = scale(&["scale", "hosts=4"]);
    assert_eq!((code, out.trim()), (0, "hosts: already 4"));
}

/// POSTs `body` (JSON) to `path` of etcd through a tunnel at `port`, with
/// the client certificate in `creds` (`ctl database credentials --out`).
fn etcd_post(creds: &std::path::Path, port: u16, path: &str, body: &str) -> Result<String, String> {
    let file = |f: &str| creds.join(f).display().to_string();
    let (ok, out) = sh_err(&[
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "5",
        "--cacert",
        &file("ca.pem"),
        "--cert",
        &file("client.pem"),
        "--key",
        &file("client.key"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
        &format!("https://127.0.0.1:{port}{path}"),
    ]);
    if ok { Ok(out) } else { Err(out) }
}

/// Standard base64 of ASCII `s` (etcd's JSON gateway takes keys and values so).
fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn a_coordinator_killed_mid_reboot_finishes_the_host_at_hand_and_reboots_no_other() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = etcd_lab_up("labrebootkill");
    let (first, second) = (lab.hosts[1].clone(), lab.hosts[2].clone());
    let (mut events, events_file) = ctl_events_to_file(&lab);
    std::thread::sleep(Duration::from_millis(500));
    let mut reboot = std::process::Command::new(bin("ctl"));
    reboot
        .arg("--config")
        .arg(lab.admin_conf())
        .args(["hosts", "reboot", &first, &second]);
    let mut reboot = Proc::spawn(reboot, &lab.dir.path().join("reboot.log"));
    // The first host is drained and power-cycled: its agent is gone.
    eventually(
        &format!("{first} down in the reboot"),
        Duration::from_secs(120),
        || {
            std::fs::read_to_string(&events_file)
                .ok()?
                .lines()
                .find(|l| l.contains("\"node_down\"") && l.contains(&format!("\"{first}\"")))
                .map(|_| ())
        },
    );
    lab.kill_coordinator();
    let _ = events.kill();
    let _ = events.wait();
    // The operator's command says the coordinator went away.
    let code = reboot.wait_exit(Duration::from_secs(30));
    assert_ne!(code, 0, "ctl hosts reboot with its coordinator killed");
    // Until the restart, `ctl status` cannot answer; after it, the host at
    // hand is shown drained until the restarted coordinator finishes it.
    lab.start();
    let status = eventually(
        &format!("{first} back and active after the restart"),
        Duration::from_secs(300),
        || {
            let s = lab.status()?;
            let n = s["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["name"] == first.as_str())?
                .clone();
            (n["state"] == "ready"
                && n["swarm_status"] == "ready"
                && n["swarm_availability"] == "active"
                && s["database"]["healthy"] == true)
                .then_some(s)
        },
    );
    let log = lab.log();
    assert!(
        log.contains(&format!(
            "the rolling reboot interrupted at {first} was finished for {first}"
        )),
        "{log}"
    );
    // The host after it was not rebooted, and every host is active.
    for n in status["nodes"].as_array().expect("nodes") {
        assert_eq!(n["swarm_availability"], "active", "{n}");
    }
    let rebooted_second = std::fs::read_to_string(&events_file)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("\"node_down\"") && l.contains(&format!("\"{second}\"")));
    assert!(!rebooted_second, "{second} was rebooted too");
    // A second `ctl hosts reboot` is accepted: nothing is left in flight.
    let out = lab.ctl(&["hosts", "reboot", &second]);
    assert!(out.status.success(), "{}", stderr(&out));
    lab.stop();
}

#[test]
fn hosts_reboot_one_at_a_time_keeping_the_database_and_every_acknowledged_write() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let lab = etcd_lab_up("labreboot");
    // A writer outside apiary: a key every 100 ms through `ctl tunnel
    // database:admin` (etcd's JSON gateway, with the client certificate
    // from `ctl database credentials`), counting what etcd acknowledged.
    let creds = lab.dir.path().join("etcd-creds");
    let out = lab.ctl(&[
        "database",
        "credentials",
        "--out",
        creds.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (tunnel, local) = lab_tunnel(&lab, "database:admin");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, creds) = (stop.clone(), creds.clone());
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let key = format!("reboot/{i:06}");
                let body = format!(r#"{{"key":"{}","value":"{}"}}"#, b64(&key), b64("v"));
                if etcd_post(&creds, local, "/v3/kv/put", &body)
                    .is_ok_and(|b| b.contains("revision"))
                {
                    acked.push(key);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (acked, i)
        })
    };
    // Quorum watched throughout: never fewer than 3 of 4 connected.
    let watcher = {
        let (conf, stop) = (lab.admin_conf(), stop.clone());
        std::thread::spawn(move || {
            let mut lowest = 4;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let out = ctl_with(&conf, &["status", "--json"]);
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    && let Some(c) = v["database"]["connected"].as_u64()
                {
                    lowest = lowest.min(c);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            lowest
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let started = std::time::Instant::now();
    let out = ctl_with(&lab.admin_conf(), &["hosts", "reboot"]);
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "hosts reboot: {text}{}", stderr(&out));
    eprintln!(
        "rolling reboot of 4 hosts: {:.1} s\n{text}",
        took.as_secs_f64()
    );
    for h in &lab.hosts {
        assert!(
            text.contains(&format!("{h}: drained in the swarm")),
            "{text}"
        );
        assert!(text.contains(&format!("{h}: power-cycled")), "{text}");
        assert!(text.contains(&format!("{h}: back (agent")), "{text}");
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (acked, tried) = writer.join().expect("writer");
    let lowest = watcher.join().expect("watcher");
    assert!(lowest >= 3, "the database fell to {lowest}/4 connected");
    assert!(
        acked.len() > 10,
        "only {} of {tried} writes acknowledged",
        acked.len()
    );
    // Every acknowledged write is there.
    let range = format!(
        r#"{{"key":"{}","range_end":"{}","keys_only":true}}"#,
        b64("reboot/"),
        b64("reboot0")
    );
    let listed = eventually("range read", Duration::from_secs(30), || {
        etcd_post(&creds, local, "/v3/kv/range", &range).ok()
    });
    for key in &acked {
        assert!(listed.contains(&b64(key)), "acknowledged {key} is gone");
    }
    eprintln!("writes: {} acknowledged of {tried}", acked.len());
    // Every host back: ready, config ok, active in the swarm.
    let status = lab.status().expect("status");
    for n in status["nodes"].as_array().expect("nodes") {
        assert_eq!(n["state"], "ready", "{n}");
        assert_eq!(n["config_state"], "ok", "{n}");
        assert_eq!(n["swarm_availability"], "active", "{n}");
    }
    assert_eq!(status["database"]["healthy"], true, "{status}");

    // Refused while the database is degraded, saying why.
    let h3 = &lab.hosts[2];
    let socket = status["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == h3.as_str()))
        .and_then(|n| n["docker_socket"].as_str())
        .expect("socket")
        .to_string();
    let db3 = status["database"]["hosts"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["host"] == h3.as_str()))
        .and_then(|s| s["server"].as_str())
        .expect("server on host 3")
        .to_string();
    let c3 = service_container(&socket, &db3).expect("container");
    // Stopped for longer than a restart: its service scaled to 0 is not
    // apiary's; pausing the container keeps it down until unpaused.
    assert!(sh(&["docker", "-H", &format!("unix://{socket}"), "pause", &c3]).0);
    eventually("database degraded", Duration::from_secs(60), || {
        let s = lab.status()?;
        (s["database"]["healthy"] == false).then_some(())
    });
    let out = ctl_with(&lab.admin_conf(), &["hosts", "reboot", "queenbee"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the database is not healthy"),
        "{}",
        stderr(&out)
    );
    assert!(sh(&["docker", "-H", &format!("unix://{socket}"), "unpause", &c3]).0);
    // An unknown node: usage error.
    let out = ctl_with(&lab.admin_conf(), &["hosts", "reboot", "nobody"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    drop(tunnel);
}

/// A coordinator serving the DigitalOcean provider against the fake API,
/// whose droplets the simulator boots. The coordinator listens on the VPC's
/// bridge (10.231.0.1), standing in for one inside the VPC.
struct SimCluster {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    rt: tokio::runtime::Runtime,
    fake: Option<apiary_digitalocean::fake::FakeServer>,
    sim: Option<std::sync::Arc<apiary_tests::dosim::DropletSim>>,
    serve: Option<Proc>,
}

impl SimCluster {
    /// `images`: `Some` runs an engine per droplet with them loaded.
    /// `prepare` runs before the simulator follows the API (faults).
    /// `digitalocean` and `rest` are appended to the `[digitalocean]`
    /// section and after it.
    fn start(
        hosts: usize,
        images: Option<Vec<std::path::PathBuf>>,
        prepare: impl FnOnce(&apiary_tests::dosim::DropletSim),
        digitalocean: &str,
        rest: &str,
    ) -> SimCluster {
        Self::start_with(
            hosts,
            images,
            prepare,
            Default::default(),
            digitalocean,
            rest,
        )
    }

    /// As [`SimCluster::start`], with the fake API's options (faults).
    fn start_with(
        hosts: usize,
        images: Option<Vec<std::path::PathBuf>>,
        prepare: impl FnOnce(&apiary_tests::dosim::DropletSim),
        options: apiary_digitalocean::fake::FakeOptions,
        digitalocean: &str,
        rest: &str,
    ) -> SimCluster {
        require_root();
        let dir = tempfile::tempdir().expect("tmp");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let fake = rt
            .block_on(apiary_digitalocean::fake::FakeServer::start(options))
            .expect("fake");
        let mut sim = apiary_tests::dosim::DropletSim::new(
            &dir.path().join("droplets"),
            std::net::Ipv4Addr::new(10, 231, 0, 1),
            24,
        )
        .expect("simulator network");
        if let Some(images) = images {
            sim = sim.with_engine(images);
        }
        prepare(&sim);
        sim.follow(fake.api().clone());
        let (port, artifacts) = (free_port(), free_port());
        let config = dir.path().join("do.toml");
        std::fs::write(
            &config,
            format!(
                "[cluster]\nname = \"sim\"\n\n[coordinator]\nlisten = \"10.231.0.1:{port}\"\nadvertise = \"10.231.0.1:{port}\"\nartifacts_listen = \"10.231.0.1:{artifacts}\"\nheartbeat_interval = \"1s\"\n\n[provider]\nkind = \"digitalocean\"\nhosts = {hosts}\n\n[digitalocean]\napi_url = \"{}\"\nregion = \"nyc3\"\npoll_interval = \"100ms\"\nvpc_ip_range = \"10.231.0.0/24\"\n{digitalocean}\n{rest}",
                fake.url()
            ),
        )
        .expect("config");
        let mut c = SimCluster {
            dir,
            config,
            rt,
            fake: Some(fake),
            sim: Some(sim),
            serve: None,
        };
        c.restart();
        c
    }

    /// Starts the coordinator, after a kill -9 of the running one if any
    /// (same spec, same state directory). Each run logs to its own file.
    fn restart(&mut self) {
        if let Some(mut p) = self.serve.take() {
            p.kill9();
        }
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let mut cmd = std::process::Command::new(bin("coordinator"));
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .env("DIGITALOCEAN_ACCESS_TOKEN", "dop_v1_simulated");
        self.serve = Some(Proc::spawn(
            cmd,
            &self.dir.path().join(format!("serve-{n}.log")),
        ));
    }

    fn fake(&self) -> &apiary_digitalocean::fake::FakeServer {
        self.fake.as_ref().expect("fake")
    }

    fn sim(&self) -> &apiary_tests::dosim::DropletSim {
        self.sim.as_ref().expect("sim")
    }

    fn log(&self) -> String {
        self.serve.as_ref().map(Proc::log_text).unwrap_or_default()
    }

    fn admin(&self) -> std::path::PathBuf {
        self.dir.path().join("state/admin.conf")
    }

    /// Waits for `status --json` to satisfy `done`; fails with the
    /// coordinator's log and every droplet's console.
    fn wait(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        eventually_or(
            what,
            within,
            || {
                let out = ctl_with(&self.admin(), &["status", "--json"]);
                let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                done(&s).then_some(s)
            },
            || {
                let status = ctl_with(&self.admin(), &["status"]);
                format!(
                    "{}\n{}\n{}",
                    String::from_utf8_lossy(&status.stdout),
                    self.log(),
                    self.sim().consoles()
                )
            },
        )
    }

    /// Stops everything and checks the simulator left nothing behind.
    fn stop(mut self) {
        self.serve.take();
        if let Some(sim) = self.sim.take() {
            sim.teardown();
        }
        if let Some(f) = self.fake.take() {
            self.rt.block_on(f.shutdown());
        }
        let (_, netns) = sh(&["ip", "netns", "list"]);
        assert!(!netns.contains("dosim."), "namespaces left: {netns}");
        let (_, links) = sh(&["ip", "-o", "link"]);
        assert!(
            !links.contains(apiary_tests::dosim::BRIDGE),
            "bridge left: {links}"
        );
    }
}

/// Every node listed is ready, and there are `n`.
fn all_ready(s: &serde_json::Value, n: usize) -> bool {
    s["nodes"]
        .as_array()
        .is_some_and(|nodes| nodes.len() == n && nodes.iter().all(|x| x["state"] == "ready"))
}

/// DigitalOcean on simulated droplets (`apiary_tests::dosim`): the fake API
/// makes the droplets, each boots as a namespace that runs its real
/// user_data (checked by cloud-init's schema, files written, runcmd run,
/// units started as systemd would): the install unit downloads the agent
/// from the coordinator's artifact listener trusting only the cluster CA and
/// checks its digest, then enables the agent, which enrolls with the host
/// token of its own droplet.
#[test]
fn simulated_droplets_run_their_user_data_and_enroll_with_their_own_host_tokens() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // The droplets' files stay in their private roots.
    let machine_has_apiary_etc = std::path::Path::new("/etc/apiary").exists();
    let c = SimCluster::start(2, None, |_| {}, "", "[swarm]\nenabled = false\n");
    let status = c.wait(
        "both droplets enrolled and ready",
        Duration::from_secs(120),
        |s| all_ready(s, 2),
    );
    let names: Vec<&str> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, ["queenbee", "workerbee-1"], "{status}");
    let consoles = c.sim().consoles();
    for want in [
        "wrote /etc/apiary/agent.toml (0600)",
        "systemctl enable --now --no-block apiary-agent-install.service",
        "systemctl enable --now --no-block docker.service apiary-agent.service",
    ] {
        assert!(consoles.contains(want), "{want} not in:\n{consoles}");
    }
    // Each agent enrolled with its own droplet's host token.
    let log = c.log();
    assert_eq!(log.matches("node enrolled").count(), 2, "{log}");
    c.stop();
    assert_eq!(
        std::path::Path::new("/etc/apiary").exists(),
        machine_has_apiary_etc,
        "a droplet wrote to this machine's /etc"
    );
}

/// A droplet whose bootstrap fails (its download never gets through) is
/// deleted after `digitalocean.enroll_timeout` and made again with a new
/// host token; the new one boots and enrolls, and the cluster comes up.
#[test]
fn a_simulated_droplet_whose_download_fails_is_replaced_and_the_cluster_comes_up() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let c = SimCluster::start(
        2,
        None,
        |sim| sim.break_next_download("workerbee-1"),
        "enroll_timeout = \"5s\"\n",
        "[swarm]\nenabled = false\n",
    );
    let droplet_of = |name: &str| {
        c.fake()
            .api()
            .droplets()
            .into_iter()
            .find(|d| d.name == name)
            .map(|d| d.id)
    };
    let broken = eventually(
        "workerbee-1's droplet made",
        Duration::from_secs(30),
        || droplet_of("workerbee-1"),
    );
    c.wait(
        "both hosts ready, workerbee-1 on its second droplet",
        Duration::from_secs(120),
        |s| all_ready(s, 2),
    );
    let log = c.log();
    assert!(
        log.contains(&format!(
            "droplet {broken} never enrolled within 5s of booting; deleted, made again with a new host token (replacement 1 of 3)"
        )),
        "{log}"
    );
    assert_ne!(
        droplet_of("workerbee-1"),
        Some(broken),
        "the broken droplet is gone"
    );
    assert_eq!(c.fake().api().droplets().len(), 2);
    let (_, netns) = sh(&["ip", "netns", "list"]);
    assert!(!netns.contains(&format!("dosim.{broken}")), "{netns}");
    c.stop();
}

/// Simulated droplets with engines: three droplets boot from their
/// user_data and enroll one by one; once all are in, the coordinator forms
/// Swarm (three managers), checks the overlay and runs etcd on them, as on
/// DigitalOcean; a container on a droplet cannot reach the metadata address.
#[test]
fn simulated_droplets_with_engines_form_swarm_the_overlay_and_etcd() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let images_dir = tempfile::tempdir().expect("tmp");
    // The images a droplet would pull, made the lab's way.
    let images = apiary_lab::Lab::new(apiary_lab::LabSpec {
        cluster: "simimages".into(),
        hosts: vec![],
        state_dir: images_dir.path().to_path_buf(),
    })
    .expect("lab");
    let archives = vec![
        images.busybox_archive().expect("busybox image").path,
        images.etcd_archive().expect("etcd image").path,
    ];
    let c = SimCluster::start(
        3,
        Some(archives),
        |_| {},
        "",
        "[swarm]\nchecks_interval = \"2s\"\n\n[database]\nkind = \"etcd\"\nimage = \"lab/etcd:1\"\nservers = 3\n",
    );
    c.wait(
        "3 droplets ready, all managers, etcd healthy",
        Duration::from_secs(300),
        |s| {
            let managers = s["nodes"].as_array().map_or(0, |nodes| {
                nodes
                    .iter()
                    .filter(|n| n["swarm_role"] == "manager")
                    .count()
            });
            all_ready(s, 3) && managers == 3 && s["database"]["healthy"] == true
        },
    );
    let checks = eventually_or(
        "the overlay checked",
        Duration::from_secs(120),
        || {
            let out = ctl_with(&c.admin(), &["checks", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["phase"] == "swarm" && v["ok"] == true).then_some(v)
        },
        || c.log(),
    );
    assert!(
        checks["cells"].as_array().is_some_and(|c| !c.is_empty()),
        "{checks}"
    );
    // The droplet's own firewall keeps its containers from the metadata
    // service (a stand-in beside the droplet, reached through it).
    let (netns, socket) = c.sim().droplet("workerbee-1").expect("workerbee-1 booted");
    containers_on_cannot_reach_the_metadata_address(
        "workerbee-1",
        &netns,
        &socket.display().to_string(),
    );
    c.stop();
}

/// The API failing under the coordinator (429s, 500s, creates whose answer
/// is lost after they happened) and the coordinator killed (-9) once the
/// first droplet has enrolled: the restarted one adopts what exists, makes
/// what is missing, and every host comes up on exactly one droplet.
#[test]
fn simulated_droplets_come_up_once_through_api_faults_and_a_killed_coordinator() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let options = apiary_digitalocean::fake::FakeOptions {
        random: Some(apiary_digitalocean::fake::RandomFaults {
            rate_limit: 0.1,
            server_error: 0.1,
            server_error_after_apply: true,
            seed: 20261206,
        }),
        ..Default::default()
    };
    let mut c = SimCluster::start_with(4, None, |_| {}, options, "", "[swarm]\nenabled = false\n");
    c.wait("a first droplet enrolled", Duration::from_secs(120), |s| {
        s["nodes"].as_array().is_some_and(|n| !n.is_empty())
    });
    c.restart();
    let status = c.wait(
        "all four enrolled and ready",
        Duration::from_secs(180),
        |s| all_ready(s, 4),
    );
    let mut names: Vec<String> = c
        .fake()
        .api()
        .droplets()
        .into_iter()
        .map(|d| d.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["queenbee", "workerbee-1", "workerbee-2", "workerbee-3"],
        "one droplet per host, none doubled: {status}"
    );
    let faults = c
        .fake()
        .api()
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert!(faults > 0, "the API never failed: the test proves nothing");
    assert!(
        c.fake().api().violations().is_empty(),
        "{:?}",
        c.fake().api().violations()
    );
    c.stop();
}
