//! Backup and restore on loopback, with the real binaries: a backup taken
//! while `serve` runs, the coordinator killed (-9) and its state directory
//! deleted, restored into a new one and served again on the same port, or
//! on another address that agents were told of beforehand.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use apiary_tests::*;
use serde_json::Value;

fn coordinator(args: &[&str], passphrase_env: Option<&str>) -> Output {
    let mut cmd = Command::new(bin("coordinator"));
    cmd.args(args).env_remove("APIARY_BACKUP_PASSPHRASE");
    if let Some(p) = passphrase_env {
        cmd.env("APIARY_BACKUP_PASSPHRASE", p);
    }
    cmd.output().expect("coordinator")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("json")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn a_restored_coordinator_serves_the_same_cluster() {
    let mut c = Coordinator::start("heartbeat_interval = \"500ms\"");
    let token = c.token();
    let mut agents: Vec<Agent> = ["bee-1", "bee-2", "bee-3"]
        .iter()
        .map(|n| c.agent(n, Some(&token)))
        .collect();
    for n in ["bee-1", "bee-2", "bee-3"] {
        c.wait_ready(n, Duration::from_secs(30));
    }
    let serials: Vec<Value> = ["bee-1", "bee-2"]
        .iter()
        .map(|n| c.node(n).expect("node")["cert_serial"].clone())
        .collect();
    let out = c.ctl(&["nodes", "remove", "bee-3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(agents[2].proc.wait_exit(Duration::from_secs(10)), 77);

    // Backups while serve runs: plain, and encrypted (passphrase from a file).
    let dir = c.dir.path().to_path_buf();
    let (plain, sealed) = (dir.join("plain.backup"), dir.join("sealed.backup"));
    let pass_file = dir.join("passphrase");
    std::fs::write(&pass_file, "correct horse battery staple\n").expect("passphrase");
    let report = json(&coordinator(
        &[
            "backup",
            "--state-dir",
            s(&c.state),
            "--out",
            s(&plain),
            "--json",
        ],
        None,
    ));
    assert_eq!(report["source"], "running_coordinator", "{report}");
    assert_eq!(report["nodes"], 2, "{report}");
    assert_eq!(report["revocations"], 1, "{report}");
    assert_eq!(report["encrypted"], false, "{report}");
    assert_eq!(report["cluster"], "test", "{report}");
    assert_eq!(mode(&plain), 0o600);
    let out = coordinator(
        &[
            "backup",
            "--state-dir",
            s(&c.state),
            "--out",
            s(&sealed),
            "--passphrase-file",
            s(&pass_file),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 node(s)"), "{text}");
    assert!(text.contains("encrypted with a passphrase"), "{text}");
    assert_eq!(mode(&sealed), 0o600);
    let sealed_bytes = std::fs::read(&sealed).expect("read");
    assert!(sealed_bytes.starts_with(b"apiary-backup 1 age\n"));

    // A node enrolled after the backup.
    agents.push(c.agent("bee-4", Some(&token)));
    c.wait_ready("bee-4", Duration::from_secs(15));

    // Disaster: the coordinator killed, its state directory gone.
    if let Some(mut p) = c.proc.take() {
        p.kill9();
    }
    std::fs::remove_dir_all(&c.state).expect("delete the state");
    let new = dir.join("restored");

    // Refusals write nothing: a wrong passphrase, a damaged file, a full
    // directory.
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "not the passphrase").expect("wrong");
    let out = coordinator(
        &[
            "restore",
            s(&sealed),
            "--state-dir",
            s(&new),
            "--passphrase-file",
            s(&wrong),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wrong passphrase or not an apiary backup"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains(s(&sealed)), "{}", stderr(&out));
    assert!(!new.exists(), "a refused restore wrote {}", new.display());
    let out = coordinator(&["restore", s(&sealed), "--state-dir", s(&new)], None);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("passphrase"), "{}", stderr(&out));
    let truncated = dir.join("truncated.backup");
    let plain_bytes = std::fs::read(&plain).expect("read");
    std::fs::write(&truncated, &plain_bytes[..plain_bytes.len() * 2 / 3]).expect("write");
    let out = coordinator(&["restore", s(&truncated), "--state-dir", s(&new)], None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("corrupt or truncated"),
        "{}",
        stderr(&out)
    );
    assert!(!new.exists());
    let full = dir.join("full");
    std::fs::create_dir(&full).expect("mkdir");
    std::fs::write(full.join("something"), "x").expect("write");
    let out = coordinator(&["restore", s(&plain), "--state-dir", s(&full)], None);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains(s(&full)), "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));

    // The encrypted backup, its passphrase from the environment.
    let out = coordinator(
        &["restore", s(&sealed), "--state-dir", s(&new), "--json"],
        Some("correct horse battery staple"),
    );
    let restored = json(&out);
    assert_eq!(restored["nodes"], 2, "{restored}");
    assert_eq!(mode(&new), 0o700);
    for f in ["pki/ca.key", "pki/ca.pem", "admin.conf", "state.redb"] {
        assert_eq!(mode(&new.join(f)), 0o600, "{f}");
    }

    // Served again on the same port from the restored directory.
    c.state = new;
    c.restart();
    // The remaining agents come back by themselves, with their certificates.
    for (i, n) in ["bee-1", "bee-2"].iter().enumerate() {
        c.wait_ready(n, Duration::from_secs(40));
        assert_eq!(
            c.node(n).expect("node")["cert_serial"],
            serials[i],
            "{n} re-enrolled instead of keeping its certificate"
        );
    }
    // The node removed before the backup stays refused.
    agents[2].restart(None);
    assert_eq!(agents[2].proc.wait_exit(Duration::from_secs(20)), 77);
    assert!(
        agents[2].proc.log_text().contains("revoked"),
        "{}",
        agents[2].proc.log_text()
    );
    assert!(c.node("bee-3").is_none());
    // The node enrolled after the backup is unknown: told so, it stops.
    assert_eq!(agents[3].proc.wait_exit(Duration::from_secs(40)), 77);
    let log = agents[3].proc.log_text();
    assert!(log.contains("not a member of this cluster"), "{log}");
    assert!(c.node("bee-4").is_none());
    // ...and it re-enrolls with a join token once its old identity is gone.
    for f in ["node.key", "node.pem"] {
        std::fs::remove_file(agents[3].state.join(f)).expect("remove identity");
    }
    agents[3].restart(Some(&c.token()));
    c.wait_ready("bee-4", Duration::from_secs(20));
    let status = c.status();
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
}

#[test]
fn backup_refuses_a_directory_without_state_and_an_empty_passphrase() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = coordinator(
        &[
            "backup",
            "--state-dir",
            s(tmp.path()),
            "--out",
            s(&tmp.path().join("b")),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no coordinator state"),
        "{}",
        stderr(&out)
    );
    assert!(!tmp.path().join("b").exists());

    let empty = tmp.path().join("empty");
    std::fs::write(&empty, "\n").expect("write");
    let out = coordinator(
        &[
            "backup",
            "--state-dir",
            s(tmp.path()),
            "--out",
            s(&tmp.path().join("b")),
            "--passphrase-file",
            s(&empty),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("is empty"), "{}", stderr(&out));
}

/// Issue #23's coordinator that moves: the new address is added to the
/// cluster's endpoint list while the old coordinator runs, the backup is
/// restored onto that address, and agents that were never restarted (still
/// configured with the old one) fail over to it with their certificates.
/// An agent restarted afterwards starts at the address that last worked.
#[test]
fn agents_follow_a_coordinator_restored_on_another_address() {
    let mut c = Coordinator::start("heartbeat_interval = \"500ms\"");
    let old = c.endpoint();
    let token = c.token();
    let mut agents: Vec<Agent> = ["bee-1", "bee-2"]
        .iter()
        .map(|n| c.agent(n, Some(&token)))
        .collect();
    for n in ["bee-1", "bee-2"] {
        c.wait_ready(n, Duration::from_secs(30));
    }
    let serials: Vec<Value> = ["bee-1", "bee-2"]
        .iter()
        .map(|n| c.node(n).expect("node")["cert_serial"].clone())
        .collect();

    // Bad input is refused before anything is asked, naming the argument.
    for bad in ["127.0.0.2", "127.0.0.2:0", "not a host:7443"] {
        let out = c.ctl(&["coordinator", "endpoints", "add", bad]);
        assert_eq!(out.status.code(), Some(64), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("HOST:PORT"), "{}", stderr(&out));
    }
    let out = c.ctl(&["coordinator", "endpoints", "remove", "127.0.0.9:7443"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not in the stored list"),
        "{}",
        stderr(&out)
    );

    // The new address, added while the old coordinator runs.
    let new_ip = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let new_port = free_port_on(new_ip);
    let new = format!("{new_ip}:{new_port}");
    let out = c.ctl(&["coordinator", "endpoints", "add", &new]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("stored {new}")), "{text}");
    assert!(
        text.contains("2 of 2 connected agent(s) acknowledged"),
        "{text}"
    );
    let list = json(&c.ctl(&["coordinator", "endpoints", "--json"]));
    assert_eq!(list["advertise"], old.as_str(), "{list}");
    assert_eq!(list["stored"], serde_json::json!([new]), "{list}");
    assert_eq!(list["told"], serde_json::json!([old, new]), "{list}");
    for a in &agents {
        let path = a.state.join("coordinators.json");
        let saved = std::fs::read_to_string(&path).expect("the agent saved its list");
        assert!(saved.contains(&new), "{saved}");
        assert_eq!(mode(&path), 0o600);
    }

    // The backup, then the old coordinator gone with its state.
    let dir = c.dir.path().to_path_buf();
    let backup = dir.join("move.backup");
    let out = coordinator(
        &["backup", "--state-dir", s(&c.state), "--out", s(&backup)],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    if let Some(mut p) = c.proc.take() {
        p.kill9();
    }
    std::fs::remove_dir_all(&c.state).expect("delete the state");
    let moved = dir.join("moved");
    let out = coordinator(&["restore", s(&backup), "--state-dir", s(&moved)], None);
    assert!(out.status.success(), "{}", stderr(&out));

    // Served on the new address only.
    c.state = moved;
    c.ip = new_ip;
    c.port = new_port;
    c.restart();
    eventually(
        "admin.conf names the new address",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(c.admin_conf())
                .ok()?
                .contains(&new)
                .then_some(())
        },
    );
    // The agents, never restarted and configured with the old address,
    // find it, with the certificates they had.
    for (i, n) in ["bee-1", "bee-2"].iter().enumerate() {
        c.wait_ready(n, Duration::from_secs(40));
        assert_eq!(
            c.node(n).expect("node")["cert_serial"],
            serials[i],
            "{n} re-enrolled instead of keeping its certificate"
        );
    }
    // The restored coordinator carries the list.
    let list = json(&c.ctl(&["coordinator", "endpoints", "--json"]));
    assert_eq!(list["advertise"], new.as_str(), "{list}");
    assert_eq!(list["stored"], serde_json::json!([new]), "{list}");

    // An agent restarted after the move, still with the old address in its
    // configuration, goes straight to the one that last worked.
    assert_eq!(agents[0].endpoint, old);
    agents[0].restart(None);
    let agent = &agents[0];
    eventually_or(
        "bee-1 restarted and in session",
        Duration::from_secs(20),
        || {
            agent
                .proc
                .log_text()
                .contains("session established")
                .then_some(())
        },
        || agent.proc.log_text(),
    );
    let log = agent.proc.log_text();
    assert!(
        log.contains("starting at the coordinator endpoint that last gave a session"),
        "{log}"
    );
    assert!(!log.contains("session failed"), "{log}");
    c.wait_ready("bee-1", Duration::from_secs(10));
    assert_eq!(c.node("bee-1").expect("node")["cert_serial"], serials[0]);
}
