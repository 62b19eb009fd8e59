//! Upgrade and recover in the lab (root; real engines, Swarm and etcd):
//! `ctl hosts upgrade` one host at a time with a host that rolls a broken
//! build back by itself, and a coordinator restored from a backup after its
//! state directory was lost.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apiary_tests::*;
use serde_json::Value;

fn etcd_lab(name: &str, agent_build: Option<&Path>) -> LabCluster {
    let mut lab = LabCluster::new(
        name,
        4,
        "\n[swarm]\nchecks_interval = \"2s\"\n\n[database]\nkind = \"etcd\"\n",
    );
    if let Some(build) = agent_build {
        let config = std::fs::read_to_string(&lab.config).expect("config");
        let ours = config.replace(
            &bin("agent").display().to_string(),
            &build.display().to_string(),
        );
        assert_ne!(config, ours, "the lab config names the agent binary");
        std::fs::write(&lab.config, ours).expect("config");
    }
    lab.start();
    eventually_or(
        "etcd 4/4 healthy",
        Duration::from_secs(900),
        || {
            let s = lab.status()?;
            (s["database"]["healthy"] == true).then_some(())
        },
        || lab.log(),
    );
    lab
}

/// Writes `bytes` as an executable at `path`, aside then renamed (as an
/// operator replacing a build in place should).
fn install(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let aside = path.with_extension("new");
    std::fs::write(&aside, bytes).expect("write build");
    std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&aside, path).expect("install build");
}

/// The agent, with another version stamped into it: a second build of the
/// same source, as a release would make.
fn agent_stamped(version: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(bin("agent")).expect("read agent");
    apiary_api::version::restamp(&mut bytes, version).expect("restamp");
    bytes
}

/// A build that exits at start (`/bin/false`, an x86-64 ELF) carrying a
/// version stamp, so the coordinator serves it like any build.
fn broken_build(version: &str) -> Vec<u8> {
    let mut bytes = std::fs::read("/bin/false").expect("read /bin/false");
    let mut stamp = format!("apiary-version:{version}").into_bytes();
    stamp.resize(apiary_api::version::STAMP_LEN, 0);
    bytes.extend_from_slice(&stamp);
    bytes
}

fn versions(status: &Value) -> BTreeMap<String, String> {
    status["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| {
                    (
                        n["name"].as_str().unwrap_or_default().to_string(),
                        n["agent_version"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `ctl status --json` every 250 ms until stopped: what the rollout looked
/// like from the operator's side.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(u64, Value)>>>,
}

impl Watcher {
    fn start(admin_conf: std::path::PathBuf) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let out = ctl_with(&admin_conf, &["status", "--json"]);
                if out.status.success()
                    && let Ok(v) = serde_json::from_slice::<Value>(&out.stdout)
                {
                    samples.push((now_ms(), v));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            samples
        });
        Watcher {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(u64, Value)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

#[test]
fn agents_upgrade_one_host_at_a_time_and_a_broken_build_rolls_back_on_its_host() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().expect("tmp");
    let build = tmp.path().join("agent");
    install(&build, &std::fs::read(bin("agent")).expect("read agent"));
    let lab = etcd_lab("labupgrade", Some(&build));
    let before = lab.status().expect("status");
    let old = versions(&before);
    let first = old.values().next().cloned().expect("a version");
    assert!(old.values().all(|v| *v == first), "{old:?}");
    let heartbeat_ms = before["heartbeat_interval_ms"].as_u64().expect("interval");

    // Nothing to do while every host runs the served build.
    let out = lab.ctl(&["hosts", "upgrade"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("runs agent"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A new build in place; the rollout, watched from the operator's side.
    let next = format!("{first}-upgrade.1");
    install(&build, &agent_stamped(&next));
    let pids_before: BTreeMap<String, i32> = lab
        .hosts
        .iter()
        .map(|h| (h.clone(), lab.pid(h, "agent").expect("agent pid")))
        .collect();
    let watcher = Watcher::start(lab.admin_conf());
    let started = std::time::Instant::now();
    let out = lab.ctl(&["hosts", "upgrade", "--json"]);
    let took = started.elapsed();
    let samples = watcher.finish();
    assert!(out.status.success(), "{}\n{}", stderr(&out), lab.log());
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["version"], next.as_str(), "{report}");
    let steps: Vec<String> = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    for host in &lab.hosts {
        assert!(
            steps
                .iter()
                .any(|s| s.starts_with(&format!("{host}: back on agent {next}"))),
            "{host} not upgraded: {steps:?}"
        );
    }
    eprintln!("4 hosts upgraded in {:.1} s: {steps:?}", took.as_secs_f64());
    let after = lab.status().expect("status");
    assert!(versions(&after).values().all(|v| *v == next), "{after}");
    // The same processes (an exec in place) with the same identities.
    for (host, pid) in &pids_before {
        assert_eq!(
            lab.pid(host, "agent"),
            Some(*pid),
            "{host}'s agent pid changed"
        );
        assert_eq!(
            lab.node(host).expect("node")["cert_serial"],
            before["nodes"]
                .as_array()
                .and_then(|n| n.iter().find(|n| n["name"] == host.as_str()))
                .expect("node before")["cert_serial"],
            "{host} re-enrolled"
        );
    }
    // Throughout: mixed versions visible; at most the host at hand without
    // heartbeats for 3 intervals; Swarm and the database healthy.
    assert!(samples.len() > 5, "only {} samples", samples.len());
    assert!(
        samples.iter().any(|(_, s)| {
            let v: BTreeSet<String> = versions(s).into_values().collect();
            v.len() > 1
        }),
        "no sample showed mixed versions"
    );
    for (at, s) in &samples {
        let quiet: Vec<String> = s["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter(|n| {
                at.saturating_sub(n["last_seen_unix_ms"].as_u64().unwrap_or(0)) > 3 * heartbeat_ms
            })
            .map(|n| n["name"].as_str().unwrap_or_default().to_string())
            .collect();
        assert!(
            quiet.len() <= 1,
            "heartbeats missing on {quiet:?} at once: {s}"
        );
        assert_eq!(s["database"]["healthy"], true, "database not healthy: {s}");
        for n in s["nodes"].as_array().expect("nodes") {
            assert_eq!(n["swarm_status"], "ready", "swarm node not ready: {n}");
        }
    }

    // A broken build: the first host rolls back by itself, the rollout
    // stops naming it, the others are not touched.
    let broken = format!("{first}-broken.1");
    install(&build, &broken_build(&broken));
    let pids_before: BTreeMap<String, i32> = lab
        .hosts
        .iter()
        .map(|h| (h.clone(), lab.pid(h, "agent").expect("agent pid")))
        .collect();
    let out = lab.ctl(&["hosts", "upgrade", "--deadline", "20s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let rolled: Vec<&String> = lab
        .hosts
        .iter()
        .filter(|h| err.contains(&format!("{h} rolled back to its old agent")))
        .collect();
    assert_eq!(rolled.len(), 1, "{err}");
    let victim = rolled[0].clone();
    assert!(
        err.contains(&format!(
            "the upgrade to {broken} was rolled back to {next}"
        )),
        "{err}"
    );
    assert!(err.contains("stopped"), "{err}");
    assert!(
        err.contains("the hosts after it were not upgraded"),
        "{err}"
    );
    let s = eventually(
        "every host ready on the previous build",
        Duration::from_secs(60),
        || {
            let s = lab.status()?;
            let all = s["nodes"]
                .as_array()?
                .iter()
                .all(|n| n["state"] == "ready" && n["agent_version"] == next.as_str());
            all.then_some(s)
        },
    );
    let node = s["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == victim.as_str()))
        .expect("victim");
    assert!(
        node["agent_upgrade_failure"]
            .as_str()
            .is_some_and(|f| f.contains(&broken)),
        "{node}"
    );
    for host in lab.hosts.iter().filter(|h| **h != victim) {
        assert_eq!(
            lab.pid(host, "agent"),
            Some(pids_before[host]),
            "{host} was touched"
        );
    }
    let text = String::from_utf8_lossy(&lab.ctl(&["status"]).stdout).to_string();
    assert!(text.contains("AGENT"), "{text}");
    assert!(
        text.contains(&format!("{victim}: the upgrade to {broken}")),
        "{text}"
    );
}

#[test]
fn a_lab_coordinator_restored_on_another_address_gets_every_host_back_without_re_enrolling() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = etcd_lab("labrestore", None);
    let before = lab.status().expect("status");
    let serial = |s: &Value, host: &str| {
        s["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == host))
            .map(|n| n["cert_serial"].clone())
            .expect("node")
    };
    // The address the coordinator will move to, handed to every agent first.
    let moved = "10.231.0.250:7443";
    let out = lab.ctl(&["coordinator", "endpoints", "add", moved]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4 of 4"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // An encrypted backup while serve runs.
    let backup = lab.dir.path().join("cluster.backup");
    let pass = lab.dir.path().join("passphrase");
    std::fs::write(&pass, "lab passphrase\n").expect("passphrase");
    let out = std::process::Command::new(bin("coordinator"))
        .args(["backup", "--state-dir"])
        .arg(&lab.state)
        .arg("--out")
        .arg(&backup)
        .arg("--passphrase-file")
        .arg(&pass)
        .output()
        .expect("backup");
    assert!(out.status.success(), "{}", stderr(&out));

    // Disaster: the coordinator killed and its own files gone. (The hosts'
    // disks, which the lab keeps under STATE_DIR/lab, are other machines'
    // and stay.)
    lose_the_coordinator(&mut lab);
    let restored = lab.dir.path().join("restored");
    let wrong = lab.dir.path().join("wrong");
    std::fs::write(&wrong, "not it").expect("wrong");
    let restore = |passphrase: &Path| {
        std::process::Command::new(bin("coordinator"))
            .arg("restore")
            .arg(&backup)
            .arg("--state-dir")
            .arg(&restored)
            .arg("--passphrase-file")
            .arg(passphrase)
            .output()
            .expect("restore")
    };
    let out = restore(&wrong);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wrong passphrase"),
        "{}",
        stderr(&out)
    );
    assert!(!restored.exists(), "a refused restore wrote something");
    let started = std::time::Instant::now();
    let out = restore(&pass);
    assert!(out.status.success(), "{}", stderr(&out));
    let restore_took = started.elapsed();
    // The hosts' disks where the restored coordinator looks for them.
    std::os::unix::fs::symlink(lab.state.join("lab"), restored.join("lab")).expect("symlink");
    // From here the lab is the restored directory's (teardown included).
    lab.state = restored;
    // Served on another address of the lab's private network: the old one
    // answers nothing any more.
    let (ok, bridge) = sh(&["ip", "-o", "-4", "addr", "show", "to", "10.231.0.1/32"]);
    let bridge = bridge
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(ok && !bridge.is_empty(), "no lab bridge holds 10.231.0.1");
    let (ok, why) = sh(&["ip", "addr", "add", "10.231.0.250/24", "dev", &bridge]);
    assert!(ok, "{why}");
    let started = std::time::Instant::now();
    lab.start_with(&["--listen", moved]);
    let after = eventually_or(
        "every host back with the restored coordinator",
        Duration::from_secs(120),
        || {
            let s = lab.status()?;
            let nodes = s["nodes"].as_array()?;
            (nodes.len() == 4 && nodes.iter().all(|n| n["state"] == "ready")).then_some(s)
        },
        || lab.log(),
    );
    eprintln!(
        "restore {:.2} s, every agent back {:.1} s after serve started",
        restore_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for host in &lab.hosts {
        assert_eq!(
            serial(&after, host),
            serial(&before, host),
            "{host} re-enrolled"
        );
    }
    assert!(
        std::fs::read_to_string(lab.admin_conf())
            .expect("admin.conf")
            .contains(moved),
        "admin.conf does not name the new address"
    );
    eventually_or(
        "etcd healthy under the restored coordinator",
        Duration::from_secs(120),
        || {
            let s = lab.status()?;
            (s["database"]["healthy"] == true).then_some(())
        },
        || lab.log(),
    );
    lab.stop();
}

/// The coordinator killed (-9) and its own files deleted; the hosts'
/// disks, which the lab keeps under `STATE_DIR/lab`, are other machines'
/// and stay.
fn lose_the_coordinator(lab: &mut LabCluster) {
    lab.kill_coordinator();
    for entry in std::fs::read_dir(&lab.state).expect("state") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|n| n == "lab") {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("remove");
        } else {
            std::fs::remove_file(&path).expect("remove");
        }
    }
}

/// The lab host `host`'s agent log (its disk is under the lab's state).
fn agent_log(lab: &LabCluster, host: &str) -> String {
    let dir =
        std::fs::canonicalize(lab.state.join("lab").join(host).join("logs")).unwrap_or_default();
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("agent"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect::<String>()
        })
        .unwrap_or_default()
}

fn listed(lab: &LabCluster, host: &str) -> Option<Value> {
    lab.status()?["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == host)
        .cloned()
}

/// What a backup does not hold, with lab hosts: a node removed before it
/// stays refused after the restore, and a node enrolled after it is
/// unknown (refused, not listed) until its old identity is deleted and it
/// enrolls again with a new token.
#[test]
fn after_a_lab_restore_a_removed_node_stays_refused_and_a_later_one_enrolls_again() {
    let _serial = LAB_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = etcd_lab("labrestore2", None);
    let ready = |lab: &LabCluster, host: &str| {
        eventually_or(
            &format!("{host} ready"),
            Duration::from_secs(300),
            || listed(lab, host).filter(|n| n["state"] == "ready"),
            || lab.log(),
        )
    };
    // A fifth host, then removed: revoked before the backup.
    let out = lab.ctl(&["scale", "hosts=5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    ready(&lab, "workerbee-4");
    let out = lab.ctl(&["nodes", "remove", "workerbee-4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(
        "workerbee-4 gone from status",
        Duration::from_secs(60),
        || listed(&lab, "workerbee-4").is_none().then_some(()),
    );
    let backup = lab.dir.path().join("plain.backup");
    let out = std::process::Command::new(bin("coordinator"))
        .args(["backup", "--state-dir"])
        .arg(&lab.state)
        .arg("--out")
        .arg(&backup)
        .output()
        .expect("backup");
    assert!(out.status.success(), "{}", stderr(&out));
    // A sixth host after the backup.
    let out = lab.ctl(&["scale", "hosts=6"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let later = ready(&lab, "workerbee-5");

    // The coordinator lost; restored into a new directory.
    lose_the_coordinator(&mut lab);
    let restored = lab.dir.path().join("restored");
    let out = std::process::Command::new(bin("coordinator"))
        .arg("restore")
        .arg(&backup)
        .arg("--state-dir")
        .arg(&restored)
        .output()
        .expect("restore");
    assert!(out.status.success(), "{}", stderr(&out));
    std::os::unix::fs::symlink(lab.state.join("lab"), restored.join("lab")).expect("symlink");
    lab.state = restored;
    lab.start();
    for host in ["queenbee", "workerbee-1", "workerbee-2", "workerbee-3"] {
        ready(&lab, host);
    }
    // Removed before the backup: still refused, not listed.
    eventually_or(
        "workerbee-4's agent refused as revoked by the restored coordinator",
        Duration::from_secs(60),
        || {
            agent_log(&lab, "workerbee-4")
                .contains("revoked")
                .then_some(())
        },
        || agent_log(&lab, "workerbee-4"),
    );
    // Enrolled after the backup: unknown to the restored coordinator.
    eventually_or(
        "workerbee-5's agent told it is not a member",
        Duration::from_secs(60),
        || {
            agent_log(&lab, "workerbee-5")
                .contains("not a member of this cluster")
                .then_some(())
        },
        || agent_log(&lab, "workerbee-5"),
    );
    assert!(listed(&lab, "workerbee-4").is_none());
    assert!(listed(&lab, "workerbee-5").is_none());
    // It enrolls again once its old identity is gone: the operator's step
    // (delete node.key and node.pem), then the host started with a token
    // (the lab gives each host it starts its own).
    let agent_dir = lab.state.join("lab/workerbee-5/agent");
    for f in ["node.key", "node.pem"] {
        std::fs::remove_file(agent_dir.join(f)).expect("remove the old identity");
    }
    // The restored count is the backup's, so the scale starts both hosts
    // after the fourth again: workerbee-5 enrolls anew, and workerbee-4,
    // removed before the backup, is refused again (revoked), which the
    // scale reports, naming it.
    let out = lab.ctl(&["scale", "hosts=6"]);
    assert!(!out.status.success(), "workerbee-4 was let back in");
    assert!(stderr(&out).contains("workerbee-4"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("workerbee-5"), "{}", stderr(&out));
    let again = ready(&lab, "workerbee-5");
    assert_ne!(again["cert_serial"], later["cert_serial"], "a new identity");
    assert!(
        listed(&lab, "workerbee-4").is_none(),
        "the removed node came back"
    );
    lab.stop();
}
