//! Root test: reachability and Swarm on two real lab hosts (network
//! namespaces with their own dockerd, `apiary-lab`), torn down at the end
//! even when an assertion fails. Needs root, iproute2, nftables, docker.io
//! and busybox-static; holds the lab lock for the whole run (one lab per
//! machine).
//!
//! Reachability runs the real `Responder` and `probe_all` *inside* the hosts'
//! network namespaces: a dedicated thread enters the namespace with
//! `setns(CLONE_NEWNET)` and creates the sockets there (a socket stays in the
//! namespace it was made in, whichever thread later polls it). Swarm is
//! driven from the root namespace through each engine's unix socket, exactly
//! as an agent would through its own.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use apiary_agent::reach::{
    self, Cell, Check, Coverage, Matrix, Member, Outcome, Peer, PortSpec, PortState, Proto,
    Responder, Target,
};
use apiary_agent::swarm::{
    OverlaySpec, ProbeEndpoint, ProbeOptions, SwarmClient, SwarmError, SwarmState,
};
use apiary_lab::{HostPlan, Lab, LabSpec};

const CLUSTER: &str = "swarmit";
const NETWORK: &str = "apiary-net";
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

fn timing(what: &str, since: Instant) {
    eprintln!("TIMING {what}: {:.3}s", since.elapsed().as_secs_f64());
}

/// Runs `f` on a thread inside `netns` (a file under /run/netns).
fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = File::open(netns).expect("netns file");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// `probe_all` from inside `src`'s namespace, on a runtime of that thread.
async fn probe_from(src: &HostPlan, targets: Vec<Target>) -> Vec<Cell> {
    let (name, ns) = (src.name.clone(), src.netns_path());
    tokio::task::spawn_blocking(move || {
        in_netns(&ns, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(reach::probe_all(&name, &targets, PROBE_TIMEOUT, 16))
        })
    })
    .await
    .expect("probe thread")
}

/// A responder whose sockets live in `host`'s namespace, served by this runtime.
fn responder_in(host: &HostPlan, ports: &[PortSpec]) -> Responder {
    let rt = tokio::runtime::Handle::current();
    in_netns(&host.netns_path(), || {
        let _guard = rt.enter();
        Responder::start(host.private_ip, ports).expect("responder")
    })
}

/// An nftables table of our own in the host's namespace (never the root's).
fn nft(host: &HostPlan, script: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("rules.nft");
    std::fs::write(&file, script).expect("write rules");
    let out = Command::new("ip")
        .args(["netns", "exec", &host.netns, "nft", "-f"])
        .arg(&file)
        .output()
        .expect("nft");
    assert!(
        out.status.success(),
        "nft in {}: {}\n{script}",
        host.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn drop_rules(table: &str, rule: &str) -> String {
    format!(
        "table inet {table} {{\n\
           chain in  {{ type filter hook input  priority -300; policy accept; {rule} drop; }}\n\
           chain out {{ type filter hook output priority -300; policy accept; {rule} drop; }}\n\
         }}\n"
    )
}

fn member(h: &HostPlan, manager: bool) -> Member {
    Member {
        name: h.name.clone(),
        ip: h.private_ip,
        manager,
    }
}

fn failing_pairs(cells: &[Cell]) -> BTreeSet<(String, String, Check)> {
    cells
        .iter()
        .filter(|c| !c.outcome.is_open())
        .map(|c| (c.src.clone(), c.dst.clone(), c.check))
        .collect()
}

async fn reachability(a: &HostPlan, b: &HostPlan) {
    let members = [member(a, true), member(b, false)];
    let ra = responder_in(a, &reach::cluster_ports(true));
    let rb = responder_in(b, &reach::cluster_ports(false));
    for r in [&ra, &rb] {
        assert!(
            r.ports()
                .iter()
                .all(|p| matches!(p.state, PortState::Listening(_))),
            "{:?}",
            r.ports()
        );
    }

    // the full matrix, both ways, all open
    let (mut matrix, plan) = Matrix::planned(&members, Coverage::for_cluster(2), 0);
    let t = Instant::now();
    let (ca, cb) = tokio::join!(
        probe_from(a, plan[&a.name].clone()),
        probe_from(b, plan[&b.name].clone())
    );
    timing("probe matrix, 2 hosts, 7 cells, both ways at once", t);
    assert_eq!(ca.len() + cb.len(), 3 + 4, "{ca:?} {cb:?}");
    matrix.extend(ca.into_iter().chain(cb));
    assert!(matrix.ok(), "{:#?}\n{}", matrix.failures(), matrix.render());
    assert!(matrix.cells().all(|c| c.detail.is_none()), "all echoed");
    eprintln!("{}", matrix.render());

    // closed: a worker does not listen on 2377, nothing on 4790/udp
    let b_peer = Peer {
        name: b.name.clone(),
        ip: b.private_ip,
    };
    let closed = probe_from(
        a,
        vec![Target {
            peer: b_peer.clone(),
            ports: vec![PortSpec::tcp(2377), PortSpec::udp(4790)],
        }],
    )
    .await;
    assert!(
        closed.iter().all(|c| c.outcome == Outcome::Closed),
        "{closed:?}"
    );

    // dropped: gossip UDP blocked on b's input: exactly a → b 7946/udp fails
    nft(
        b,
        "table inet apiary_reachtest {\n\
           chain in { type filter hook input priority -300; policy accept; udp dport 7946 drop; }\n\
         }\n",
    );
    let (ca, cb) = tokio::join!(
        probe_from(a, plan[&a.name].clone()),
        probe_from(b, plan[&b.name].clone())
    );
    let mut m = Matrix::planned(&members, Coverage::Full, 0).0;
    m.extend(ca.into_iter().chain(cb));
    let f = m.failures();
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(
        (
            f[0].src.as_str(),
            f[0].dst.as_str(),
            f[0].port,
            f[0].proto,
            f[0].outcome.clone()
        ),
        (
            a.name.as_str(),
            b.name.as_str(),
            7946,
            Proto::Udp,
            Some(Outcome::Dropped)
        )
    );
    assert!(f[0].cause.starts_with("firewall"), "{}", f[0]);
    eprintln!("{}\n{}", m.render(), f[0]);
    nft(b, "delete table inet apiary_reachtest\n");

    // stop releases the ports before Swarm needs them
    ra.stop().await;
    rb.stop().await;
}

async fn overlay_round(
    clients: &[&SwarmClient],
    ends: &[ProbeEndpoint],
    opts: &ProbeOptions,
) -> Vec<Cell> {
    let runs = clients
        .iter()
        .zip(ends)
        .map(|(c, local)| c.overlay_probe(local, ends, opts));
    futures::future::join_all(runs)
        .await
        .into_iter()
        .flat_map(|r| r.expect("overlay probe"))
        .collect()
}

/// Probes until the failing (src, dst, check) set is `want`, or panics after `within`.
async fn overlay_until(
    clients: &[&SwarmClient],
    ends: &[ProbeEndpoint],
    opts: &ProbeOptions,
    want: &BTreeSet<(String, String, Check)>,
    within: Duration,
) -> Vec<Cell> {
    let deadline = Instant::now() + within;
    loop {
        let cells = overlay_round(clients, ends, opts).await;
        if failing_pairs(&cells) == *want {
            return cells;
        }
        assert!(
            Instant::now() < deadline,
            "overlay not as expected within {within:?}: want failing {want:?}, got:\n{}",
            cells
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn swarm_and_overlay(a: &HostPlan, b: &HostPlan) {
    let sa = SwarmClient::connect(&a.name, &a.docker_socket)
        .await
        .expect("engine a");
    let sb = SwarmClient::connect(&b.name, &b.docker_socket)
        .await
        .expect("engine b");
    assert_eq!(sa.view().await.expect("view").state, SwarmState::Inactive);
    assert_eq!(a.private_ip, Ipv4Addr::new(10, 231, 0, 11));

    let pool = vec!["10.232.0.0/16".to_string()];
    let t_all = Instant::now();
    let t = Instant::now();
    let va = sa.init(a.private_ip, &pool).await.expect("init");
    timing("swarm init", t);
    assert!(va.manager && va.state == SwarmState::Active, "{va:?}");
    assert_eq!(va.node_addr, "10.231.0.11");
    let cluster = va
        .cluster_id
        .clone()
        .expect("a manager knows the cluster id");

    // init again: the same swarm, nothing new
    let again = sa.init(a.private_ip, &pool).await.expect("re-init");
    assert_eq!(
        (again.node_id.as_str(), again.cluster_id.as_deref()),
        (va.node_id.as_str(), Some(cluster.as_str()))
    );

    let tokens = sa.join_tokens().await.expect("tokens");
    assert!(tokens.worker.starts_with("SWMTKN-1-"));
    let manager_addr = SocketAddr::from((a.private_ip, 2377));
    let t = Instant::now();
    let vb = sb
        .join(manager_addr, &tokens.worker, b.private_ip)
        .await
        .expect("join");
    timing("swarm join (1 worker)", t);
    assert!(!vb.manager && vb.state == SwarmState::Active, "{vb:?}");
    assert!(vb.knows_manager(&manager_addr));
    // join again: already in that swarm
    let vb2 = sb
        .join(manager_addr, &tokens.worker, b.private_ip)
        .await
        .expect("re-join");
    assert_eq!(vb2.node_id, vb.node_id);
    // a worker never makes a second swarm; a wrong manager address is another swarm
    let e = sb.init(b.private_ip, &pool).await.expect_err("worker init");
    assert!(matches!(e, SwarmError::WorkerCannotInit { .. }), "{e}");
    let e = sb
        .join(
            SocketAddr::from((Ipv4Addr::new(10, 231, 0, 13), 2377)),
            &tokens.worker,
            b.private_ip,
        )
        .await
        .expect_err("other swarm");
    assert!(matches!(e, SwarmError::OtherSwarm { .. }), "{e}");
    // a worker cannot list or label nodes
    assert!(matches!(
        sb.set_labels(&b.name, &BTreeMap::new()).await,
        Err(SwarmError::NotManager { .. })
    ));

    // the manager sees both nodes ready; labels set once
    let deadline = Instant::now() + Duration::from_secs(20);
    let view = loop {
        let v = sa.view().await.expect("view");
        if v.nodes.len() == 2 && v.nodes.iter().all(|n| n.status == "ready") {
            break v;
        }
        assert!(Instant::now() < deadline, "nodes not ready: {:?}", v.nodes);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let roles: BTreeMap<&str, &str> = view
        .nodes
        .iter()
        .map(|n| (n.hostname.as_str(), n.role.as_str()))
        .collect();
    assert_eq!(
        roles,
        BTreeMap::from([(a.name.as_str(), "manager"), (b.name.as_str(), "worker")])
    );
    let labels = BTreeMap::from([("io.apiary.db".to_string(), "etcd".to_string())]);
    assert!(sa.set_labels(&b.name, &labels).await.expect("labels"));
    assert!(!sa.set_labels(&b.name, &labels).await.expect("labels again"));
    let view = sa.view().await.expect("view");
    let nb = view
        .nodes
        .iter()
        .find(|n| n.hostname == b.name)
        .expect("node b");
    assert_eq!(nb.labels, labels);
    let e = sa
        .set_labels("no-such-node", &labels)
        .await
        .expect_err("unknown node");
    assert!(matches!(e, SwarmError::NoSuchNode { .. }), "{e}");

    // Swarm now holds 2377 on a: a responder reports it, it does not fail
    let late = responder_in(a, &[PortSpec::tcp(2377)]);
    assert_eq!(late.ports()[0].state, PortState::InUse);
    late.stop().await;

    // an encrypted overlay is refused on this kernel before anything is created
    let encrypted = OverlaySpec {
        encrypted: true,
        ..OverlaySpec::attachable("apiary-secret")
    };
    match sa.ensure_overlay(&encrypted).await {
        Err(SwarmError::EncryptionUnsupported(m)) => {
            assert_eq!(m.host, a.name);
            assert!(
                m.pieces.iter().any(|p| p.symbol == "CONFIG_INET_ESP"),
                "{m}"
            );
            eprintln!("refused as intended: {m}");
        }
        other => panic!("an encrypted overlay must be refused on this kernel: {other:?}"),
    }
    let nets = sa.docker().list_networks(None).await.expect("networks");
    assert!(
        !nets
            .iter()
            .any(|n| n.name.as_deref() == Some("apiary-secret"))
    );

    let t = Instant::now();
    let spec = OverlaySpec::attachable(NETWORK);
    let net = sa.ensure_overlay(&spec).await.expect("overlay");
    timing("overlay create", t);
    assert!(net.created);
    assert!(
        net.subnets.iter().all(|s| s.starts_with("10.232.")),
        "{net:?}"
    );
    let adopted = sa.ensure_overlay(&spec).await.expect("adopt");
    assert!(!adopted.created);
    assert_eq!(adopted.id, net.id);
    let other = OverlaySpec {
        mtu: Some(1400),
        ..spec.clone()
    };
    let e = sa.ensure_overlay(&other).await.expect_err("mismatch");
    assert!(
        matches!(&e, SwarmError::OverlayMismatch { differences, .. } if differences.contains("mtu")),
        "{e}"
    );
    assert!(matches!(
        sb.ensure_overlay(&spec).await,
        Err(SwarmError::NotManager { .. })
    ));

    // probe containers on both hosts, then the data path end to end
    let opts = ProbeOptions::default();
    let t = Instant::now();
    let (pa, pb) = tokio::join!(
        sa.ensure_probe(NETWORK, &opts),
        sb.ensure_probe(NETWORK, &opts)
    );
    let ends = vec![pa.expect("probe a"), pb.expect("probe b")];
    timing("probe containers (2, in parallel)", t);
    assert!(ends.iter().all(|e| e.mtu == 1450), "{ends:?}");
    // reused, not recreated
    assert_eq!(
        sa.ensure_probe(NETWORK, &opts).await.expect("reuse"),
        ends[0]
    );
    let clients = [&sa, &sb];
    let t = Instant::now();
    let cells = overlay_until(
        &clients,
        &ends,
        &opts,
        &BTreeSet::new(),
        Duration::from_secs(20),
    )
    .await;
    timing("overlay data path all open (first success)", t);
    timing("swarm + overlay ready (init → overlay probed)", t_all);
    assert_eq!(cells.len(), 2 * 5, "{cells:?}");
    assert!(
        cells
            .iter()
            .all(|c| c.proto == Proto::Overlay && c.port == 4789)
    );
    assert!(cells.iter().any(|c| c.check == Check::Mtu(1422)));
    let t = Instant::now();
    overlay_round(&clients, &ends, &opts).await;
    timing("overlay probe round, 2 hosts both ways (10 checks)", t);

    // VXLAN dropped in b: every check of both pairs through b fails, as a firewall
    nft(b, &drop_rules("apiary_vxlantest", "udp dport 4789"));
    let through_b: BTreeSet<(String, String, Check)> = cells
        .iter()
        .map(|c| (c.src.clone(), c.dst.clone(), c.check))
        .collect();
    let t = Instant::now();
    let broken = overlay_until(&clients, &ends, &opts, &through_b, Duration::from_secs(20)).await;
    timing("overlay fault detected", t);
    let mut m = Matrix::new();
    m.extend(broken);
    let f = m.failures();
    assert_eq!(f.len(), 10);
    for x in &f {
        assert!(x.src == b.name || x.dst == b.name, "{x}");
        assert_eq!((x.port, x.proto), (4789, Proto::Overlay), "{x}");
        assert_eq!(x.outcome, Some(Outcome::Dropped), "{x}");
        // the full-size ping fails too, and is not blamed on the MTU
        assert!(
            x.cause.starts_with("firewall") && x.cause.contains("udp/4789"),
            "{x}"
        );
    }
    eprintln!("{}\n{}", m.render(), f[0]);

    // and clears when the rule goes
    nft(b, "delete table inet apiary_vxlantest\n");
    let t = Instant::now();
    overlay_until(
        &clients,
        &ends,
        &opts,
        &BTreeSet::new(),
        Duration::from_secs(20),
    )
    .await;
    timing("overlay healed after the drop was removed", t);

    // clean up what we made (teardown would too, slower)
    for c in clients {
        assert!(c.remove_probe().await.expect("remove probe"));
        assert!(!c.remove_probe().await.expect("again"));
    }
    assert!(sb.leave(false).await.expect("worker leaves"));
    assert!(sa.leave(true).await.expect("manager leaves"));
    assert!(!sa.leave(true).await.expect("already out"));
}

async fn body(lab: Lab) {
    let hosts: Vec<HostPlan> = lab.hosts().to_vec();
    let (a, b) = (&hosts[0], &hosts[1]);
    lab.check_safety()
        .expect("no route collides with the lab ranges");
    let t = Instant::now();
    lab.ensure_network().await.expect("network");
    let (ha, hb) = tokio::join!(lab.ensure_host(a), lab.ensure_host(b));
    ha.expect("host a");
    hb.expect("host b");
    lab.ensure_images(&[a, b]).await.expect("images");
    timing("lab up (2 hosts, engines, images)", t);

    reachability(a, b).await;
    swarm_and_overlay(a, b).await;
}

/// The cluster owning the lab's bridges, if any (their alias names it).
fn bridge_owner() -> Option<String> {
    let out = Command::new("ip")
        .args(["-d", "link", "show", apiary_lab::PUBLIC_BRIDGE])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let alias = text.lines().find_map(|l| l.trim().strip_prefix("alias "))?;
    alias
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cluster="))
        .map(str::to_string)
}

/// The lab lock, taken when no other cluster's lab stands: a lab whose
/// coordinator is restarting holds no lock for a moment, and must not be
/// raced (we let go at once and wait for it to finish).
async fn lock_when_free(lab: &Lab) -> apiary_lab::LabLock {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let l = lab.clone();
        let lock = tokio::task::spawn_blocking(move || l.lock())
            .await
            .expect("join")
            .expect("lab lock");
        match bridge_owner() {
            Some(owner) if owner != CLUSTER => {
                drop(lock);
                assert!(
                    Instant::now() < deadline,
                    "another lab ({owner}) stayed up for 15 minutes"
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            _ => return lock,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reach_swarm_and_overlay_on_two_lab_hosts() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the lab test needs root (network namespaces, dockerd, nftables)"
    );
    let state = tempfile::tempdir().expect("tmp");
    let state_dir: PathBuf = state.path().join("state");
    let lab = Lab::new(LabSpec {
        cluster: CLUSTER.into(),
        hosts: vec!["queenbee".into(), "workerbee-1".into()],
        state_dir,
    })
    .expect("plan");
    let _lock = lock_when_free(&lab).await;
    let pre = lab.teardown().await.expect("pre-clean");
    if !pre.is_empty() {
        eprintln!("cleaned up an earlier run: {pre}");
    }

    let result = tokio::spawn(body(lab.clone())).await;

    let t = Instant::now();
    let report = lab.teardown().await;
    timing("teardown", t);
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
    let report = report.expect("teardown");
    assert_eq!(report.netns.len(), 2, "{report}");
}
