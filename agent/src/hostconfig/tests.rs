//! Whole-host tests of [`apply`] and [`keep_applied`] against [`MemoryEffects`].

use super::*;
use serde_json::json;

fn config() -> HostConfig {
    let mut s = HostConfigSpec::new("10.231.0.0/24");
    s.firewall.allow_public_tcp = vec![8080];
    s.sysctls
        .insert("vm.max_map_count".into(), SysctlValue::Int(262144));
    s.daemon_json
        .insert("log-driver".into(), json!("json-file"));
    s.daemon_json.insert(
        "log-opts".into(),
        json!({"max-size": "10m", "max-file": "3"}),
    );
    HostConfig::new(s).expect("valid")
}

fn facts() -> HostFacts {
    let feature = |name: &str, state| FeatureFact {
        name: name.into(),
        state,
        detail: String::new(),
    };
    HostFacts {
        kernel_release: "6.1.0-18-amd64".into(),
        cgroup_version: 1,
        memory_accounting: false,
        interfaces: vec![
            ("eth0".into(), vec!["10.231.0.11".parse().expect("ip")]),
            ("eth1".into(), vec!["198.18.0.11".parse().expect("ip")]),
        ],
        public_ip: Some("198.18.0.11".parse().expect("ip")),
        kernel_features: vec![
            feature("vxlan", FeatureState::Module),
            feature("overlay", FeatureState::Loaded),
            feature("br_netfilter", FeatureState::Module),
            feature("ip_vs", FeatureState::Module),
        ],
    }
}

fn summary(reports: &[ItemReport]) -> Vec<(String, Outcome)> {
    reports
        .iter()
        .map(|r| (r.item.clone(), r.outcome.clone()))
        .collect()
}

#[test]
fn a_fresh_host_is_configured_once_then_left_alone() {
    let m = MemoryEffects::debian_host();
    let first = apply(&config(), &m, &facts(), false);
    let items: Vec<&str> = first.iter().map(|r| r.item.as_str()).collect();
    assert_eq!(
        items,
        [
            "firewall",
            "kernel version",
            "kernel vxlan",
            "kernel overlay",
            "kernel br_netfilter",
            "kernel ip_vs",
            "sysctl net.bridge.bridge-nf-call-ip6tables",
            "sysctl net.bridge.bridge-nf-call-iptables",
            "sysctl net.ipv4.ip_forward",
            "sysctl vm.max_map_count",
            "grub",
            "daemon.json",
        ]
    );
    let unchanged = ["kernel version", "kernel overlay"];
    for r in &first {
        let want = match r.item.as_str() {
            i if unchanged.contains(&i) => Outcome::Ok,
            "grub" => Outcome::NeedsReboot,
            _ => Outcome::Changed,
        };
        assert_eq!(r.outcome, want, "{r:?}");
    }
    let writes = m.log().len();

    // The reboot happened: memory accounting is on now.
    let rebooted = HostFacts {
        memory_accounting: true,
        ..facts()
    };
    let second = apply(&config(), &m, &rebooted, false);
    assert!(
        second
            .iter()
            .all(|r| r.outcome == Outcome::Ok && r.diff.is_none()),
        "{:?}",
        summary(&second)
    );
    assert_eq!(m.log().len(), writes, "the second apply wrote something");
}

#[test]
fn dry_run_writes_nothing_and_shows_every_diff() {
    let m = MemoryEffects::debian_host();
    let before = m.state().clone();
    let dry = apply(&config(), &m, &facts(), true);
    assert_eq!(*m.state(), before);
    for r in dry.iter().filter(|r| r.outcome != Outcome::Ok) {
        assert!(r.diff.is_some(), "{r:?} has no diff");
    }
    let fw = dry.iter().find(|r| r.item == "firewall").expect("fw");
    assert!(
        fw.diff
            .as_deref()
            .is_some_and(|d| d.contains("proto-dst 8080 accept")),
        "{fw:?}"
    );
}

#[test]
fn one_failing_item_does_not_stop_the_others() {
    let m = MemoryEffects::debian_host();
    m.fail(
        "nft_apply",
        "Error: Could not process rule: No such file or directory",
    );
    m.fail(
        "write_file /etc/docker/daemon.json",
        "read-only file system",
    );
    let r = apply(&config(), &m, &facts(), false);
    let failed: Vec<&str> = r
        .iter()
        .filter(|r| r.is_failed())
        .map(|r| r.item.as_str())
        .collect();
    assert_eq!(failed, ["firewall", "daemon.json"]);
    assert_eq!(m.state().sysctls["net.ipv4.ip_forward"], "1");
}

#[test]
fn a_full_recheck_is_cheap() {
    let m = MemoryEffects::debian_host();
    let f = HostFacts {
        memory_accounting: true,
        ..facts()
    };
    apply(&config(), &m, &f, false);
    let started = Instant::now();
    let r = apply(&config(), &m, &f, false);
    assert!(r.iter().all(|r| r.outcome == Outcome::Ok));
    // The logic itself, without the host's I/O: far below the 200 ms budget.
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
}

type Rounds = tokio::sync::mpsc::UnboundedReceiver<Round>;

struct Harness {
    host: Arc<MemoryEffects>,
    config: watch::Sender<Arc<HostConfig>>,
    recheck: Arc<Notify>,
    rounds: Rounds,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the loop on a MemoryEffects host whose reboot already happened.
fn start(interval: Duration) -> Harness {
    let m = Arc::new(MemoryEffects::debian_host());
    let f = Arc::new(HostFacts {
        memory_accounting: true,
        ..facts()
    });
    let (tx, rx) = watch::channel(Arc::new(config()));
    let recheck = Arc::new(Notify::new());
    let (rounds_tx, rounds) = tokio::sync::mpsc::unbounded_channel();
    let effects: Arc<dyn HostEffects> = m.clone();
    let task = tokio::spawn(keep_applied(
        rx,
        effects,
        f,
        interval,
        recheck.clone(),
        move |round| {
            let _ = rounds_tx.send(round);
        },
    ));
    Harness {
        host: m,
        config: tx,
        recheck,
        rounds,
        task,
    }
}

async fn next(rounds: &mut Rounds) -> Round {
    tokio::time::timeout(Duration::from_secs(10), rounds.recv())
        .await
        .expect("a round within 10 s")
        .expect("loop alive")
}

#[tokio::test]
async fn keep_applied_repairs_drift_on_request_and_applies_new_config_at_once() {
    let Harness {
        host: m,
        config: tx,
        recheck,
        mut rounds,
        task,
    } = start(DEFAULT_INTERVAL);
    let first = next(&mut rounds).await;
    assert_eq!(first.reason, RoundReason::First);
    assert!(first.repaired_drift().is_empty());
    assert!(first.reports.iter().any(|r| r.outcome == Outcome::Changed));

    // A deleted firewall rule, found at once on request.
    m.nft_delete_rules("inet apiary", "comment \"ssh\"");
    recheck.notify_one();
    let round = next(&mut rounds).await;
    assert_eq!(round.reason, RoundReason::Requested);
    let repaired: Vec<&str> = round
        .repaired_drift()
        .iter()
        .map(|r| r.item.as_str())
        .collect();
    assert_eq!(repaired, ["firewall"]);

    // A new config applies at once; its changes are not drift.
    let mut s = config().spec().clone();
    s.firewall.allow_public_tcp = vec![8080, 9090];
    tx.send(Arc::new(HostConfig::new(s).expect("valid")))
        .expect("send");
    let round = next(&mut rounds).await;
    assert_eq!(round.reason, RoundReason::SpecChanged);
    assert!(round.repaired_drift().is_empty());
    assert!(
        round
            .reports
            .iter()
            .any(|r| r.item == "firewall" && r.outcome == Outcome::Changed)
    );

    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("loop ends when the config sender is gone")
        .expect("no panic");
}

#[tokio::test]
async fn keep_applied_repairs_drift_on_the_interval() {
    let Harness {
        host: m,
        config: _tx,
        mut rounds,
        task,
        ..
    } = start(Duration::from_millis(20));
    assert_eq!(next(&mut rounds).await.reason, RoundReason::First);
    m.state()
        .sysctls
        .insert("net.ipv4.ip_forward".into(), "0".into());
    // Rounds before the drift was made report nothing; one after repairs it.
    loop {
        let round = next(&mut rounds).await;
        assert_eq!(round.reason, RoundReason::Interval);
        if let Some(r) = round.repaired_drift().first() {
            assert_eq!(r.item, "sysctl net.ipv4.ip_forward");
            assert_eq!(r.diff.as_deref(), Some("0 -> 1"));
            break;
        }
    }
    assert_eq!(m.state().sysctls["net.ipv4.ip_forward"], "1");
    task.abort();
}
