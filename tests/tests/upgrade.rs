//! Agent versions on loopback (no root): an agent this coordinator does not
//! work with is told so and upgraded by `ctl hosts upgrade`; the opt-in
//! automatic mode rolls a new build out by itself. Each agent runs from its
//! own copy of the binary, as on a host: an upgrade replaces that copy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use apiary_tests::*;

/// Writes the agent, stamped `version`, to `path` (executable).
fn agent_build(path: &Path, version: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mut bytes = std::fs::read(bin("agent")).expect("read agent");
    apiary_api::version::restamp(&mut bytes, version).expect("restamp");
    let aside = path.with_extension("new");
    std::fs::write(&aside, bytes).expect("write");
    std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&aside, path).expect("install");
}

/// An agent started from `binary` (its own copy), enrolling with `token`.
fn agent_from(binary: &Path, c: &Coordinator, token: &str, name: &str) -> (Proc, PathBuf) {
    let dir = c.dir.path().join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let state = dir.join("state");
    let mut cmd = Command::new(binary);
    cmd.args([
        "--coordinator",
        &c.endpoint(),
        "--name",
        name,
        "--state-dir",
    ])
    .arg(&state)
    .env("APIARY_JOIN_TOKEN", token);
    (Proc::spawn(cmd, &dir.join("agent.log")), state)
}

fn version_of(c: &Coordinator, name: &str) -> Option<String> {
    c.node(name)?["agent_version"].as_str().map(str::to_string)
}

#[test]
fn an_agent_too_old_for_the_coordinator_is_told_so_and_upgraded_without_ssh() {
    let tmp = tempfile::tempdir().expect("tmp");
    let served = tmp.path().join("served-agent");
    let current = apiary_api::version::current().to_string();
    agent_build(&served, &current);
    let mut c = Coordinator::start(&format!(
        "heartbeat_interval = \"500ms\"\nagent_binary = \"{}\"",
        served.display()
    ));
    let token = c.token();
    let host_binary = tmp.path().join("host-agent");
    agent_build(&host_binary, "0.0.9");
    let (mut agent, _state) = agent_from(&host_binary, &c, &token, "old-1");
    // Connected, told to upgrade, given no work: `ctl status` says so.
    let node = eventually("old-1 listed as outdated", Duration::from_secs(30), || {
        c.node("old-1").filter(|n| n["state"] == "outdated")
    });
    assert_eq!(node["agent_version"], "0.0.9", "{node}");
    let why = node["agent_outdated"].as_str().expect("why");
    assert!(why.contains("ctl hosts upgrade old-1"), "{why}");
    let text = String::from_utf8_lossy(&c.ctl(&["status"]).stdout).to_string();
    assert!(text.contains("outdated"), "{text}");
    let log = eventually("the agent logs what to do", Duration::from_secs(10), || {
        let log = agent.log_text();
        log.contains("ctl hosts upgrade old-1").then_some(log)
    });
    assert!(log.contains("older than"), "{log}");

    // Refusals first: a node that does not exist, then a build that is not one.
    let out = c.ctl(&["hosts", "upgrade", "drone-9"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("drone-9"), "{}", stderr(&out));
    std::fs::write(&served, "#!/bin/sh\nexit 0\n").expect("not a build");
    let out = c.ctl(&["hosts", "upgrade"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&served.display().to_string()),
        "{}",
        stderr(&out)
    );
    assert_eq!(version_of(&c, "old-1").as_deref(), Some("0.0.9"));

    // The upgrade: the same process (exec in place), the new version, ready.
    agent_build(&served, &current);
    let pid = agent.pid();
    let out = c.ctl(&["hosts", "upgrade", "old-1"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        stderr(&out),
        agent.log_text()
    );
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains(&format!("old-1: back on agent {current}")),
        "{said}"
    );
    let node = c.node("old-1").expect("node");
    assert_eq!(node["state"], "ready", "{node}");
    assert_eq!(node["agent_version"], current.as_str(), "{node}");
    assert_eq!(node["agent_outdated"], "", "{node}");
    assert!(
        agent.try_exit().is_none(),
        "the agent exited: {}",
        agent.log_text()
    );
    assert_eq!(agent.pid(), pid);
    // The host's copy is the served build; the old one kept beside it.
    assert_eq!(
        std::fs::read(&host_binary).expect("read"),
        std::fs::read(&served).expect("read")
    );
    assert!(tmp.path().join("host-agent.previous").exists());
    // Nothing left to do.
    let out = c.ctl(&["hosts", "upgrade", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["version"], current.as_str(), "{report}");
    c.restart();
    c.wait_ready("old-1", Duration::from_secs(30));
}

#[test]
fn the_automatic_mode_rolls_a_new_build_out_by_itself() {
    let tmp = tempfile::tempdir().expect("tmp");
    let served = tmp.path().join("served-agent");
    let current = apiary_api::version::current().to_string();
    agent_build(&served, &current);
    let c = Coordinator::start(&format!(
        "heartbeat_interval = \"500ms\"\nagent_binary = \"{}\"\nagent_auto_upgrade = true",
        served.display()
    ));
    let token = c.token();
    let older = format!("{current}-old.1");
    let mut agents = Vec::new();
    for name in ["auto-1", "auto-2"] {
        let binary = tmp.path().join(format!("{name}-agent"));
        agent_build(&binary, &older);
        agents.push(agent_from(&binary, &c, &token, name));
    }
    for name in ["auto-1", "auto-2"] {
        c.wait_ready(name, Duration::from_secs(30));
    }
    // Within a minute or two (it looks every minute), with no command.
    eventually_or(
        "both agents on the served build",
        Duration::from_secs(150),
        || {
            (["auto-1", "auto-2"]
                .iter()
                .all(|n| version_of(&c, n).as_deref() == Some(current.as_str())))
            .then_some(())
        },
        || c.proc.as_ref().map(Proc::log_text).unwrap_or_default(),
    );
    for (p, _) in &mut agents {
        assert!(p.try_exit().is_none(), "{}", p.log_text());
    }
}
