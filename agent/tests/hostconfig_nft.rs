//! Root test: apiary's nftables table really blocks and allows what it says.
//!
//! Three network namespaces of our own, joined by veth pairs and nothing
//! else (no bridge, no route beyond the link subnets, nothing in the root
//! namespace, whose firewall is never touched):
//!
//! ```text
//!   hcfg-b (prober)                 hcfg-a (host under test)           hcfg-c ("container")
//!   hcfg-pb 198.18.0.242/30 ──────── hcfg-pa 198.18.0.241/30  public
//!   hcfg-qb 10.231.0.242/30 ──────── hcfg-qa 10.231.0.241/30  private
//!                                    hcfg-ca 198.18.0.245/30 ──────── hcfg-cc 198.18.0.246/30
//! ```
//!
//! A plays a Docker host: a table `ip hcfg_docker` DNATs published ports
//! 8080 → C:80 and 8081 → C:81 (and masquerades toward C, so C needs no
//! route), the way Docker publishes container ports. B probes A with real
//! sockets. Needs root and nftables.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use apiary_agent::hostconfig::firewall::{self, Interfaces};
use apiary_agent::hostconfig::{
    self, FeatureFact, FeatureState, HostConfig, HostConfigSpec, HostEffects, HostFacts, IfName,
    Outcome, RealEffects, RoundReason,
};

const A: &str = "hcfg-a";
const B: &str = "hcfg-b";
const C: &str = "hcfg-c";
const A_PUBLIC: &str = "198.18.0.241";
const A_PRIVATE: &str = "10.231.0.241";
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_in(ns: &str, args: &[&str]) -> String {
    let mut argv = vec!["ip", "netns", "exec", ns, "nft"];
    argv.extend_from_slice(args);
    run(&argv)
}

fn nft_script(ns: &str, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write");
    assert!(
        child.wait().expect("wait").success(),
        "nft -f failed:\n{script}"
    );
}

/// Runs `f` on a thread that has entered `ns`'s network namespace: sockets
/// it makes live there, processes it starts run there, and /proc/sys/net
/// is that namespace's.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = File::open(Path::new("/run/netns").join(ns)).expect("netns file");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// Our namespaces, removed on drop (also when an assertion fails), and the
/// listener threads, stopped first so nothing keeps a namespace alive.
struct Lab {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn delete_namespaces() {
    for ns in [A, B, C] {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        delete_namespaces();
    }
}

impl Lab {
    fn new() -> Lab {
        delete_namespaces(); // a previous run killed mid-way
        let lab = Lab {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for ns in [A, B, C] {
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        for (a_if, peer_ns, peer_if, a_addr, peer_addr) in [
            (
                "hcfg-pa",
                B,
                "hcfg-pb",
                "198.18.0.241/30",
                "198.18.0.242/30",
            ),
            (
                "hcfg-qa",
                B,
                "hcfg-qb",
                "10.231.0.241/30",
                "10.231.0.242/30",
            ),
            (
                "hcfg-ca",
                C,
                "hcfg-cc",
                "198.18.0.245/30",
                "198.18.0.246/30",
            ),
        ] {
            // Created inside A, so no interface ever exists in the root namespace.
            run(&[
                "ip", "-n", A, "link", "add", a_if, "type", "veth", "peer", "name", peer_if,
                "netns", peer_ns,
            ]);
            run(&["ip", "-n", A, "addr", "add", a_addr, "dev", a_if]);
            run(&[
                "ip", "-n", peer_ns, "addr", "add", peer_addr, "dev", peer_if,
            ]);
            run(&["ip", "-n", A, "link", "set", a_if, "up"]);
            run(&["ip", "-n", peer_ns, "link", "set", peer_if, "up"]);
        }
        lab
    }

    /// A TCP listener in `ns` that greets every connection with "hi".
    fn listen_tcp(&mut self, ns: &str, port: u16) {
        let l = in_netns(ns, || TcpListener::bind(("0.0.0.0", port))).expect("bind tcp");
        l.set_nonblocking(true).expect("nonblocking");
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(b"hi");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    /// A UDP echo in `ns`.
    fn listen_udp(&mut self, ns: &str, port: u16) {
        let sock = in_netns(ns, || UdpSocket::bind(("0.0.0.0", port))).expect("bind udp");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        }));
    }
}

/// Whether a TCP connection from `ns` to `ip:port` gets our listener's greeting.
fn tcp_open(ns: &str, ip: &str, port: u16) -> bool {
    let addr: SocketAddr = format!("{ip}:{port}").parse().expect("addr");
    in_netns(ns, || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).is_ok() && &buf == b"hi"
    })
}

/// Whether a datagram from `ns` to `ip:port` comes back.
fn udp_echoes(ns: &str, ip: &str, port: u16) -> bool {
    in_netns(ns, || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(PROBE_TIMEOUT)).expect("timeout");
        s.send_to(b"ping", format!("{ip}:{port}")).expect("send");
        let mut buf = [0u8; 8];
        matches!(s.recv_from(&mut buf), Ok((4, _)))
    })
}

/// Everything nftables holds in A except apiary's table.
fn others(ns: &str) -> String {
    let tables = nft_in(ns, &["list", "tables"]);
    tables
        .lines()
        .filter(|l| l.trim() != "table inet apiary")
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            nft_in(ns, &["list", "table", words[1], words[2]])
        })
        .collect()
}

fn config() -> HostConfig {
    let mut s = HostConfigSpec::new("10.231.0.240/30");
    s.firewall.allow_public_tcp = vec![8080];
    HostConfig::new(s).expect("valid")
}

/// A as the agent's facts would describe it.
fn facts() -> HostFacts {
    let ip = |s: &str| s.parse().expect("ip");
    HostFacts {
        kernel_release: nix::sys::utsname::uname()
            .expect("uname")
            .release()
            .to_string_lossy()
            .into_owned(),
        cgroup_version: 1,
        memory_accounting: true,
        interfaces: vec![
            ("hcfg-pa".into(), vec![ip(A_PUBLIC)]),
            ("hcfg-qa".into(), vec![ip(A_PRIVATE)]),
            ("hcfg-ca".into(), vec![ip("198.18.0.245")]),
        ],
        public_ip: Some(ip(A_PUBLIC)),
        kernel_features: ["vxlan", "overlay", "br_netfilter", "ip_vs"]
            .into_iter()
            .map(|name| FeatureFact {
                name: name.into(),
                state: FeatureState::Loaded,
                detail: "loaded".into(),
            })
            .collect(),
    }
}

/// Effects for A from outside it: nft through `ip netns exec`, files and
/// sysctls in a fixture tree (so nothing of this machine is written).
fn effects_from_outside(tmp: &Path) -> RealEffects {
    std::fs::create_dir_all(tmp.join("root")).expect("root prefix");
    let sysctls = tmp.join("proc-sys");
    for (name, _, _) in hostconfig::REQUIRED_SYSCTLS {
        let p = hostconfig::sysctl_path(
            &sysctls,
            &hostconfig::SysctlName::parse(name).expect("sysctl name"),
        );
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, "1\n").expect("seed sysctl");
    }
    RealEffects {
        root: tmp.join("root"),
        sysctl_root: sysctls,
        module_root: tmp.join("sys-module"),
        nft: ["ip", "netns", "exec", A, "nft"].map(String::from).to_vec(),
        modprobe: None,
        engine_restart: vec!["false".into()],
        update_grub: None,
        docker_socket: tmp.join("docker.sock"),
        engine_ready_timeout: Duration::from_secs(1),
        command_timeout: Duration::from_secs(10),
    }
}

/// Effects as the agent has them when it runs inside A: plain `nft` and
/// the real /proc/sys (A's, for net.*), used only from an `in_netns(A)` thread.
fn effects_inside(tmp: &Path) -> RealEffects {
    RealEffects {
        sysctl_root: "/proc/sys".into(),
        nft: vec!["nft".into()],
        ..effects_from_outside(tmp)
    }
}

fn rule_handle(comment: &str) -> String {
    let listing = nft_in(A, &["-a", "list", "chain", "inet", "apiary", "input"]);
    let line = listing
        .lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))
        .unwrap_or_else(|| panic!("no rule {comment:?} in\n{listing}"));
    line.rsplit("# handle ")
        .next()
        .expect("handle")
        .trim()
        .to_string()
}

#[test]
fn the_apiary_table_blocks_and_allows_what_it_says_and_heals() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, nftables)"
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let mut lab = Lab::new();

    // Someone else's tables in A: a filter table and a Docker-like NAT.
    nft_script(
        A,
        "table inet other {\n\tchain input {\n\t\ttype filter hook input priority 50; policy accept;\n\t\ttcp dport 65000 accept comment \"not ours\"\n\t}\n}\n\
         table ip hcfg_docker {\n\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tiifname \"hcfg-pa\" tcp dport 8080 dnat to 198.18.0.246:80\n\
         \t\tiifname \"hcfg-pa\" tcp dport 8081 dnat to 198.18.0.246:81\n\t}\n\
         \tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\toifname \"hcfg-ca\" masquerade\n\t}\n}\n",
    );
    let others_before = others(A);
    for port in [22, 7443, 2377, 7946, 5555] {
        lab.listen_tcp(A, port);
    }
    lab.listen_udp(A, 7946);
    lab.listen_tcp(C, 80);
    lab.listen_tcp(C, 81);

    let config = config();
    let outside = effects_from_outside(tmp.path());
    let inside = effects_inside(tmp.path());
    let facts = facts();

    // Before apiary: the cluster port is open to the public side.
    assert!(
        tcp_open(B, A_PUBLIC, 7946),
        "baseline: 7946 open before the firewall"
    );

    // Dry run: a diff, and no table.
    let dry = firewall::apply_firewall(config.firewall(), &facts, &outside, true);
    assert_eq!(dry.outcome, Outcome::Changed);
    assert!(
        dry.diff
            .as_deref()
            .is_some_and(|d| d.contains("+\t\tiifname \"hcfg-pa\" tcp dport 22 accept"))
    );
    assert_eq!(
        outside.nft_list_table("inet", "apiary").expect("list"),
        None
    );

    // Apply through `ip netns exec A nft`.
    let first = firewall::apply_firewall(config.firewall(), &facts, &outside, false);
    assert_eq!(first.outcome, Outcome::Changed, "{first:?}");
    let listing = outside
        .nft_list_table("inet", "apiary")
        .expect("list")
        .expect("table exists");
    // Our rendering is nft's own printing (so diffs show only real changes).
    let ifs = Interfaces {
        public: IfName::parse("hcfg-pa").expect("if"),
        private: Some(IfName::parse("hcfg-qa").expect("if")),
    };
    let rendered = firewall::render_table(config.firewall(), &ifs, None);
    let printed: String = listing
        .lines()
        .filter(|l| !l.contains("comment \"apiary spec="))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(printed, rendered);
    let json = outside
        .nft_list_table_json("inet", "apiary")
        .expect("json")
        .expect("table");
    let rules = json["nftables"]
        .as_array()
        .expect("array")
        .iter()
        .filter(|o| o.get("rule").is_some())
        .count();
    assert_eq!(rules, rendered.matches(" comment \"").count());

    // The whole host item by item, from inside A as the agent runs: the
    // firewall is already right, the sysctls are A's own (forwarding on).
    let full = in_netns(A, || hostconfig::apply(&config, &inside, &facts, false));
    let outcome = |item: &str| {
        full.iter()
            .find(|r| r.item == item)
            .map(|r| r.outcome.clone())
            .unwrap_or_else(|| panic!("no {item} in {full:?}"))
    };
    assert!(full.iter().all(|r| !r.is_failed()), "{full:?}");
    assert_eq!(outcome("firewall"), Outcome::Ok);
    assert_eq!(outcome("sysctl net.ipv4.ip_forward"), Outcome::Changed);
    assert_eq!(
        in_netns(A, || std::fs::read_to_string(
            "/proc/sys/net/ipv4/ip_forward"
        ))
        .expect("fwd"),
        "1\n"
    );
    // One full re-check, as the drift loop does it (best of 5).
    let took = (0..5)
        .map(|_| {
            in_netns(A, || {
                let t = Instant::now();
                let r = hostconfig::apply(&config, &inside, &facts, false);
                assert!(r.iter().all(|r| r.outcome == Outcome::Ok), "{r:?}");
                t.elapsed()
            })
        })
        .min()
        .expect("runs");
    println!("one full re-check of host A: {took:?}");
    assert!(took < Duration::from_millis(200), "re-check took {took:?}");

    // Public side: SSH and the coordinator only.
    assert!(tcp_open(B, A_PUBLIC, 22), "ssh from public");
    assert!(tcp_open(B, A_PUBLIC, 7443), "coordinator from public");
    for port in [7946, 2377, 5555] {
        assert!(
            !tcp_open(B, A_PUBLIC, port),
            "{port}/tcp open on the public side"
        );
    }
    assert!(
        !udp_echoes(B, A_PUBLIC, 7946),
        "7946/udp open on the public side"
    );
    // Private side: the cluster ports.
    for port in [7946, 2377] {
        assert!(
            tcp_open(B, A_PRIVATE, port),
            "{port}/tcp from the private network"
        );
    }
    assert!(
        udp_echoes(B, A_PRIVATE, 7946),
        "7946/udp from the private network"
    );
    // Published container ports: only the allowed one passes the forward chain.
    assert!(tcp_open(B, A_PUBLIC, 8080), "published 8080 is allowed");
    assert!(
        !tcp_open(B, A_PUBLIC, 8081),
        "published 8081 must be dropped"
    );

    // Second apply: nothing to do, nothing written.
    let again = firewall::apply_firewall(config.firewall(), &facts, &outside, false);
    assert_eq!((again.outcome, again.diff), (Outcome::Ok, None));
    assert_eq!(
        outside
            .nft_list_table("inet", "apiary")
            .expect("list")
            .as_deref(),
        Some(listing.as_str())
    );

    // Drift: someone deletes the SSH rule; SSH from public is then closed.
    nft_in(
        A,
        &[
            "delete",
            "rule",
            "inet",
            "apiary",
            "input",
            "handle",
            &rule_handle("ssh"),
        ],
    );
    assert!(!tcp_open(B, A_PUBLIC, 22), "the rule deletion took effect");
    let repaired = firewall::apply_firewall(config.firewall(), &facts, &outside, false);
    assert_eq!(repaired.outcome, Outcome::Changed);
    assert!(
        repaired.diff.as_deref().is_some_and(
            |d| d.contains("+\t\tiifname \"hcfg-pa\" tcp dport 22 accept comment \"ssh\"")
        ),
        "{repaired:?}"
    );
    assert!(tcp_open(B, A_PUBLIC, 22), "ssh restored");

    // The same through the drift loop: a deleted rule comes back within one interval.
    nft_in(
        A,
        &[
            "delete",
            "rule",
            "inet",
            "apiary",
            "input",
            "handle",
            &rule_handle("coordinator"),
        ],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let interval = Duration::from_millis(300);
    let healed_after = rt.block_on(async {
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(config.clone()));
        let (rounds_tx, mut rounds) = tokio::sync::mpsc::unbounded_channel();
        let effects: Arc<dyn HostEffects> = Arc::new(outside.clone());
        let task = tokio::spawn(hostconfig::keep_applied(
            rx,
            effects,
            Arc::new(facts.clone()),
            interval,
            Arc::new(tokio::sync::Notify::new()),
            move |round| {
                let _ = rounds_tx.send(round);
            },
        ));
        let first = rounds.recv().await.expect("round");
        assert_eq!(first.reason, RoundReason::First);
        assert!(
            first
                .reports
                .iter()
                .any(|r| r.item == "firewall" && r.outcome == Outcome::Changed)
        );
        // Delete again while the loop runs: the interval round repairs it.
        nft_in(
            A,
            &[
                "delete",
                "rule",
                "inet",
                "apiary",
                "input",
                "handle",
                &rule_handle("ssh"),
            ],
        );
        let deleted_at = Instant::now();
        loop {
            let round = tokio::time::timeout(Duration::from_secs(10), rounds.recv())
                .await
                .expect("a round within 10 s")
                .expect("loop alive");
            if round.repaired_drift().iter().any(|r| r.item == "firewall") {
                task.abort();
                return deleted_at.elapsed();
            }
        }
    });
    assert!(
        healed_after <= interval + Duration::from_millis(500),
        "healed after {healed_after:?}"
    );
    assert!(tcp_open(B, A_PUBLIC, 22), "ssh restored by the loop");
    assert!(
        tcp_open(B, A_PUBLIC, 7443),
        "coordinator restored by the loop"
    );

    // Nothing outside apiary's table was touched.
    assert_eq!(others(A), others_before);
    drop(lab);
    assert!(!Path::new("/run/netns").join(A).exists());
}
