//! Root integration test: a real two-host lab on this machine (network
//! namespaces, bridges, one dockerd per host), then a teardown that must
//! leave nothing behind. Needs root, iproute2, docker.io and busybox-static.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apiary_lab::{HostPlan, Lab, LabSpec, engine};
use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder};
use futures::StreamExt;

const CLUSTER: &str = "labit";

fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f.first() != Some(&"Z")).then(|| f.get(19).map(|s| s.to_string()))?
}

/// Polls `f` every 100 ms until it is true or `within` has passed.
async fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn docker(h: &HostPlan) -> Docker {
    engine::connect(&h.name, &h.docker_socket, Duration::from_secs(60)).expect("connect")
}

/// Pids of everything the lab runs for our cluster, with their start times.
fn lab_pids(lab: &Lab) -> BTreeSet<(u32, String)> {
    let marker = format!("{}/", lab.run_dir().display());
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .contains(&marker);
        if let Some(t) = start_time(pid).filter(|_| ours) {
            out.insert((pid, t));
        }
    }
    out
}

async fn body(lab: Lab) -> Vec<(u32, String)> {
    let hosts: Vec<HostPlan> = lab.hosts().to_vec();
    let (a, b) = (&hosts[0], &hosts[1]);
    lab.check_safety()
        .expect("no route collides with the lab ranges");

    let t = Instant::now();
    let changes = lab.ensure_network().await.expect("network");
    assert_eq!(changes.len(), 8, "{changes:?}");
    eprintln!("TIMING network: {:.2}s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let (sa, sb) = tokio::join!(lab.ensure_host(a), lab.ensure_host(b));
    let (sa, sb) = (sa.expect("host a"), sb.expect("host b"));
    eprintln!(
        "TIMING engines up (2 hosts): {:.2}s",
        t.elapsed().as_secs_f64()
    );
    assert!(sa.changed() && sb.changed());
    assert!(
        sa.docker_version.starts_with("20.10"),
        "{}",
        sa.docker_version
    );

    // each engine answers on its own socket, named after its host
    for h in [a, b] {
        let info = docker(h).info().await.expect("info");
        assert_eq!(
            info.name.as_deref(),
            Some(h.name.as_str()),
            "engine name of {}",
            h.name
        );
        assert_eq!(
            info.docker_root_dir.as_deref(),
            Some(h.data_root.to_str().expect("utf8"))
        );
        assert!(h.daemon_json().is_file());
    }

    // the hosts reach each other and the coordinator over the private bridge, and the public one
    let bb = |args: &[&str]| -> Vec<String> {
        std::iter::once("/bin/busybox".to_string())
            .chain(args.iter().map(|s| s.to_string()))
            .collect()
    };
    for (from, to) in [
        (a, b.private_ip),
        (b, a.private_ip),
        (a, Lab::coordinator_ip()),
        (b, a.public_ip),
    ] {
        let out = lab
            .run_in_host(from, &bb(&["ping", "-c", "1", "-W", "2", &to.to_string()]))
            .await
            .expect("ping");
        assert!(
            out.success(),
            "{} cannot ping {to}: {}{}",
            from.name,
            out.stdout,
            out.stderr
        );
    }
    // and nothing else: no default route inside a host
    let routes = lab
        .run_in_host(a, &["ip".into(), "route".into()])
        .await
        .expect("ip route");
    assert!(!routes.stdout.contains("default"), "{}", routes.stdout);

    // idempotent: nothing to do the second time, same engine
    let again = lab.ensure_host(a).await.expect("again");
    assert!(!again.changed(), "{:?}", again.changes);
    assert_eq!(again.dockerd_pid, sa.dockerd_pid);
    assert_eq!(
        lab.ensure_network().await.expect("network again"),
        Vec::<String>::new()
    );

    // a host missing a piece (as after an interrupted creation) is completed, engine kept
    sh(&format!("ip -n {} link del eth1", a.netns));
    let fixed = lab.ensure_host(a).await.expect("repair");
    assert!(
        fixed
            .changes
            .iter()
            .any(|c| c.contains("veth peer name eth1")),
        "{:?}",
        fixed.changes
    );
    assert_eq!(fixed.dockerd_pid, sa.dockerd_pid);
    let out = lab
        .run_in_host(
            a,
            &bb(&["ping", "-c", "1", "-W", "2", &b.public_ip.to_string()]),
        )
        .await
        .expect("ping");
    assert!(
        out.success(),
        "public network after repair: {}{}",
        out.stdout,
        out.stderr
    );

    // a killed dockerd is restarted by the next ensure_host
    let old = sb.dockerd_pid;
    sh(&format!("kill -9 {old}"));
    eventually(Duration::from_secs(10), "dockerd gone", || {
        lab.process_pid(b, "dockerd").is_none()
    })
    .await;
    let t = Instant::now();
    let restarted = lab.ensure_host(b).await.expect("restart");
    eprintln!("TIMING dockerd restart: {:.2}s", t.elapsed().as_secs_f64());
    assert_ne!(restarted.dockerd_pid, old);
    assert!(
        restarted
            .changes
            .iter()
            .any(|c| c.starts_with("dockerd restarted")),
        "{:?}",
        restarted.changes
    );
    assert_eq!(
        docker(b).info().await.expect("info").name.as_deref(),
        Some(b.name.as_str())
    );

    // the in-process supervisor restarts a killed engine by itself
    let supervisor = lab.supervise_engines(Duration::from_millis(200));
    sh(&format!("kill -9 {}", restarted.dockerd_pid));
    eventually(
        Duration::from_secs(30),
        "supervisor restarts dockerd",
        || {
            lab.process_pid(b, "dockerd")
                .is_some_and(|p| p != restarted.dockerd_pid)
        },
    )
    .await;
    supervisor.abort();
    let supervised = lab.ensure_host(b).await.expect("engine answers again");
    assert!(!supervised.changed(), "{:?}", supervised.changes);

    // reload (SIGHUP) keeps the engine; restart replaces it
    assert_eq!(lab.reload_engine(a).expect("reload"), sa.dockerd_pid);
    let t = Instant::now();
    let restarted = lab.restart_engine(b).await.expect("restart engine");
    eprintln!(
        "TIMING engine stop + start: {:.2}s",
        t.elapsed().as_secs_f64()
    );
    assert_ne!(restarted.dockerd_pid, supervised.dockerd_pid);
    assert_eq!(
        lab.ensure_host(a).await.expect("a").dockerd_pid,
        sa.dockerd_pid
    );

    // images: built once, loaded in parallel, then nothing to do
    let t = Instant::now();
    lab.ensure_images(&[a, b]).await.expect("images");
    eprintln!(
        "TIMING image build + load (2 hosts): {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let archive = lab.busybox_archive().expect("cached");
    let t = Instant::now();
    let loaded = lab.load_image(&[a, b], &archive).await.expect("again");
    assert!(loaded.is_empty(), "{loaded:?}");
    eprintln!(
        "TIMING image check, already loaded: {:.3}s",
        t.elapsed().as_secs_f64()
    );
    for h in [a, b] {
        let img = docker(h)
            .inspect_image(apiary_lab::BUSYBOX_IMAGE)
            .await
            .expect("image");
        assert_eq!(img.id.as_deref(), Some(archive.id.as_str()));
    }

    // a container runs on host a (cgroups work inside the namespace)
    let d = docker(a);
    let opts = CreateContainerOptionsBuilder::default()
        .name("probe")
        .build();
    let body = ContainerCreateBody {
        image: Some(apiary_lab::BUSYBOX_IMAGE.into()),
        cmd: Some(vec![
            "sh".into(),
            "-c".into(),
            "trap 'exit 0' TERM; cat /var/www/index.html; while :; do sleep 1 & wait $!; done"
                .into(),
        ]),
        ..Default::default()
    };
    d.create_container(Some(opts), body).await.expect("create");
    d.start_container("probe", None).await.expect("start");
    let mut logs = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logs.contains("hello-from-lab") && Instant::now() < deadline {
        let o = LogsOptionsBuilder::default().stdout(true).build();
        let mut s = d.logs("probe", Some(o));
        logs.clear();
        while let Some(Ok(l)) = s.next().await {
            logs.push_str(&l.to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logs.contains("hello-from-lab"), "container logs: {logs:?}");
    let cpid = d
        .inspect_container("probe", None)
        .await
        .expect("inspect")
        .state
        .and_then(|s| s.pid)
        .expect("container pid") as u32;

    // a process in the host sees the host's name and is tracked by pidfile
    let argv: Vec<String> = [
        "/bin/sh",
        "-c",
        "echo \"name=$(hostname) var=$LABVAR\"; exec sleep 600",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let env = vec![("LABVAR".to_string(), "42".to_string())];
    let agent = lab.spawn_in_host(a, "agent", &argv, &env).expect("spawn");
    assert_eq!(
        lab.spawn_in_host(a, "agent", &argv, &env).expect("again"),
        agent
    );
    let log = a.log_file("agent");
    eventually(Duration::from_secs(10), "agent log", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("name="))
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&log).expect("log").trim(),
        format!("name={} var=42", a.name)
    );
    assert_eq!(lab.process_pid(a, "agent"), Some(agent));

    // discover sees both hosts, their engines and processes: what a restarted
    // coordinator (a new Lab from the same spec) adopts
    let adopted = Lab::new(lab.spec().clone()).expect("same plan");
    let found = adopted.discover().await.expect("discover");
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|h| h.complete()), "{found:?}");
    assert!(found[0].processes.contains(&("agent".to_string(), agent)));
    assert_eq!(found[1].dockerd_pid, Some(restarted.dockerd_pid));

    // everything that must be gone after teardown
    let mut pids: Vec<(u32, String)> = lab_pids(&lab).into_iter().collect();
    for p in [agent, cpid, sa.dockerd_pid, restarted.dockerd_pid] {
        if let Some(t) = start_time(p) {
            pids.push((p, t));
        }
    }
    assert!(
        pids.len() >= 6,
        "dockerd, containerd x2, shim, container, agent: {pids:?}"
    );
    pids
}

fn assert_nothing_left(lab: &Lab, state_dir: &Path, pids: &[(u32, String)]) {
    let netns = sh("ip netns list");
    assert!(
        !netns.contains(&format!("{CLUSTER}.")),
        "namespaces left: {netns}"
    );
    let links = sh("ip -o link show");
    for l in ["apiary-pub", "apiary-priv", "ap0-", "ap1-"] {
        assert!(!links.contains(l), "link {l} left: {links}");
    }
    for (pid, t) in pids {
        assert_ne!(
            start_time(*pid).as_ref(),
            Some(t),
            "process {pid} still runs"
        );
    }
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    for m in [
        lab.run_dir().display().to_string(),
        state_dir.display().to_string(),
        format!("/run/netns/{CLUSTER}."),
    ] {
        assert!(!mounts.contains(&m), "mount under {m} left:\n{mounts}");
    }
    for d in [lab.lab_dir(), lab.run_dir()] {
        assert!(!d.exists(), "directory {} left", d.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_lab_up_and_down() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the lab test needs root (network namespaces, dockerd)"
    );
    let state = tempfile::tempdir().expect("tmp");
    let state_dir: PathBuf = state.path().join("coordinator-state");
    let lab = Lab::new(LabSpec {
        cluster: CLUSTER.into(),
        hosts: vec!["queenbee".into(), "workerbee-1".into()],
        state_dir: state_dir.clone(),
    })
    .expect("plan");
    let l = lab.clone();
    let _lock = tokio::task::spawn_blocking(move || l.lock())
        .await
        .expect("join")
        .expect("lab lock");
    // leftovers of an earlier run of this test that died
    let pre = lab.teardown().await.expect("pre-clean");
    if !pre.is_empty() {
        eprintln!("cleaned up an earlier run: {pre}");
    }

    let result = tokio::spawn(body(lab.clone())).await;

    let t = Instant::now();
    let report = lab.teardown().await;
    eprintln!("TIMING teardown: {:.2}s", t.elapsed().as_secs_f64());
    let pids = match result {
        Ok(pids) => pids,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let report = report.expect("teardown");
    eprintln!("{report}");
    assert!(report.netns.len() == 2, "{report}");
    assert!(report.links.iter().any(|l| l == "apiary-pub"), "{report}");
    assert_nothing_left(&lab, &state_dir, &pids);
    // a second teardown finds nothing
    assert!(lab.teardown().await.expect("again").is_empty());
}
