//! The foundation, end to end on loopback: a real coordinator, five real agent
//! processes and `ctl`, asserting what a user sees.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use apiary_certs::{AdminConf, ClusterCa, Role, new_key_and_csr};
use apiary_tests::*;
use nix::sys::signal::Signal;

const NAMES: [&str; 5] = ["bee-1", "bee-2", "bee-3", "bee-4", "bee-5"];

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn all_ready(c: &Coordinator, names: &[&str]) {
    eventually("all agents ready", Duration::from_secs(30), || {
        let s = c.status();
        let nodes = s["nodes"].as_array()?;
        names
            .iter()
            .all(|n| {
                nodes
                    .iter()
                    .any(|x| x["name"] == *n && x["state"] == "ready")
            })
            .then_some(())
    });
}

#[test]
fn five_agents_enroll_hold_sessions_and_show_in_status() {
    let c = Coordinator::start("heartbeat_interval = \"500ms\"");
    let token = c.token();
    assert!(token.starts_with("APIARY-1-"), "{token}");
    let agents: Vec<Agent> = NAMES.iter().map(|n| c.agent(n, Some(&token))).collect();
    all_ready(&c, &NAMES);

    let status = c.status();
    assert_eq!(status["cluster"], "test");
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 5);
    for n in nodes {
        assert_eq!(n["state"], "ready");
        for field in [
            "public_ip",
            "private_ip",
            "kernel",
            "docker_version",
            "hostname",
            "cgroup_version",
            "memory_accounting",
        ] {
            assert!(n.get(field).is_some(), "field {field} missing in {n}");
        }
        assert!(!n["kernel"].as_str().unwrap_or("").is_empty());
        let features = n["kernel_features"].as_object().expect("features");
        for f in ["vxlan", "overlay", "br_netfilter", "ip_vs"] {
            assert!(features.contains_key(f), "{f} not reported");
        }
    }

    // The table form names every node.
    let out = c.ctl(&["status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("5/5 nodes ready"), "{table}");
    for n in NAMES {
        assert!(table.contains(n), "{table}");
    }

    // Keys and certificates are the owner's only.
    for a in &agents {
        for f in ["node.key", "node.pem", "ca.pem"] {
            assert_eq!(mode(&a.state.join(f)), 0o600, "{f} of {}", a.name);
        }
    }
    assert_eq!(mode(&c.admin_conf()), 0o600);
    assert_eq!(mode(&c.state.join("pki/ca.key")), 0o600);
    assert_eq!(mode(&c.state), 0o700);
}

#[test]
fn a_silent_or_dead_agent_is_down_within_three_heartbeats_and_returns() {
    let c = Coordinator::start("heartbeat_interval = \"300ms\"");
    let token = c.token();
    let mut agents: Vec<Agent> = NAMES[..3]
        .iter()
        .map(|n| c.agent(n, Some(&token)))
        .collect();
    all_ready(&c, &NAMES[..3]);

    // Heartbeats stop (process frozen, connection still open).
    agents[0].proc.signal(Signal::SIGSTOP);
    eventually(
        "frozen agent down",
        Duration::from_millis(900 + 1500),
        || (c.node_state("bee-1")? == "down").then_some(()),
    );
    assert_eq!(c.node_state("bee-2").as_deref(), Some("ready"));
    agents[0].proc.signal(Signal::SIGCONT);
    c.wait_ready("bee-1", Duration::from_secs(10));

    // Session drops (process killed).
    agents[1].proc.kill9();
    eventually("killed agent down", Duration::from_secs(3), || {
        (c.node_state("bee-2")? == "down").then_some(())
    });

    // Restarted without a token: same identity, no duplicate node.
    let serial_before = c.node("bee-2").expect("bee-2")["cert_serial"].clone();
    agents[1].restart(None);
    c.wait_ready("bee-2", Duration::from_secs(15));
    let status = c.status();
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        c.node("bee-2").expect("bee-2")["cert_serial"],
        serial_before,
        "agent re-enrolled instead of keeping its identity"
    );
}

#[test]
fn coordinator_killed_with_sigkill_keeps_nodes_certificates_and_revocations() {
    let mut c = Coordinator::start("heartbeat_interval = \"500ms\"");
    let token = c.token();
    let mut agents: Vec<Agent> = NAMES.iter().map(|n| c.agent(n, Some(&token))).collect();
    all_ready(&c, &NAMES);
    let serials: Vec<_> = NAMES
        .iter()
        .map(|n| c.node(n).expect("node")["cert_serial"].clone())
        .collect();

    let out = c.ctl(&["nodes", "remove", "bee-5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let code = agents[4].proc.wait_exit(Duration::from_secs(10));
    assert_eq!(
        code,
        77,
        "removed agent must stop with EX_NOPERM: {}",
        agents[4].proc.log_text()
    );
    assert!(
        agents[4].proc.log_text().contains("removed"),
        "{}",
        agents[4].proc.log_text()
    );

    c.restart(); // kill -9, then start again on the same port and state
    all_ready(&c, &NAMES[..4]);
    let status = c.status();
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(4),
        "{status}"
    );
    for (i, n) in NAMES[..4].iter().enumerate() {
        assert_eq!(
            c.node(n).expect("node")["cert_serial"],
            serials[i],
            "{n} re-enrolled after the restart"
        );
    }
    // The revocation survived: the removed node's certificate is still refused.
    agents[4].restart(None);
    assert_eq!(agents[4].proc.wait_exit(Duration::from_secs(15)), 77);
    assert!(
        agents[4].proc.log_text().contains("revoked"),
        "{}",
        agents[4].proc.log_text()
    );
    assert!(c.node("bee-5").is_none());
}

#[test]
fn join_token_refusals_say_which() {
    let c = Coordinator::start("join_token_ttl = \"2s\"");
    let token = c.token();

    // Wrong secret.
    let wrong = format!("{}{}", &token[..token.len() - 4], "abcd");
    let mut a = c.agent("wrong", Some(&wrong));
    assert_eq!(a.proc.wait_exit(Duration::from_secs(15)), 77);
    assert!(
        a.proc.log_text().contains("wrong secret"),
        "{}",
        a.proc.log_text()
    );

    // A token pinning another CA: refused by the agent before it sends its CSR.
    let other = ClusterCa::generate("other").expect("ca");
    let foreign = format!(
        "APIARY-1-{}-{}",
        other.digest(),
        token.rsplit('-').next().expect("secret")
    );
    let mut a = c.agent("foreign", Some(&foreign));
    assert_eq!(a.proc.wait_exit(Duration::from_secs(15)), 77);
    let log = a.proc.log_text();
    assert!(log.contains("does not match the join token"), "{log}");
    assert!(
        !a.state.join("node.key").exists(),
        "a key was made for a coordinator that was refused"
    );

    // Rotated: the old token is refused, the new one works.
    let new = c.rotate_token();
    assert_ne!(new, token);
    let mut a = c.agent("old", Some(&token));
    assert_eq!(a.proc.wait_exit(Duration::from_secs(15)), 77);
    assert!(
        a.proc.log_text().contains("rotated"),
        "{}",
        a.proc.log_text()
    );
    let _ok = c.agent("fresh", Some(&new));
    c.wait_ready("fresh", Duration::from_secs(15));

    // Expired (ttl 2 s).
    std::thread::sleep(Duration::from_millis(2200));
    let mut a = c.agent("late", Some(&new));
    assert_eq!(a.proc.wait_exit(Duration::from_secs(15)), 77);
    assert!(
        a.proc.log_text().contains("expired"),
        "{}",
        a.proc.log_text()
    );

    // Malformed.
    let mut a = c.agent("garbled", Some("SWMTKN-1-nope"));
    assert_ne!(a.proc.wait_exit(Duration::from_secs(15)), 0);
    assert!(
        a.proc.log_text().contains("malformed join token"),
        "{}",
        a.proc.log_text()
    );

    let nodes = c.status()["nodes"].as_array().map(|n| n.len());
    assert_eq!(
        nodes,
        Some(1),
        "only the enrollment with the current token may succeed"
    );
}

/// Writes an admin.conf with the given credentials, pointing at `c`.
fn conf_with(c: &Coordinator, name: &str, key: &str, cert: &str, ca: &str) -> std::path::PathBuf {
    let path = c.dir.path().join(name);
    AdminConf {
        cluster: "test".into(),
        endpoint: c.endpoint(),
        ca: ca.into(),
        cert: cert.into(),
        key: key.into(),
    }
    .save(&path)
    .expect("save conf");
    path
}

#[test]
fn certificates_are_refused_by_role_ca_expiry_revocation_and_plaintext() {
    let c = Coordinator::start("");
    let agent = c.ready_agent("bee-1");
    let admin = AdminConf::load(&c.admin_conf()).expect("admin.conf");

    // An agent certificate on the admin API.
    let id = apiary_certs::Identity::load(&agent.state).expect("agent identity");
    let as_agent = conf_with(
        &c,
        "agent-as-admin.conf",
        &id.key_pem,
        &id.cert_pem(),
        &admin.ca,
    );
    let out = ctl_with(&as_agent, &["status"]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("admin certificates"),
        "{}",
        stderr(&out)
    );

    // An admin certificate on the agent API.
    let admin_state = c.dir.path().join("admin-as-agent");
    let admin_id = admin.identity().expect("admin identity");
    admin_id.save(&admin_state).expect("save");
    let mut a = Agent::start(&c.endpoint(), None, &admin_state, "admin");
    assert_eq!(a.proc.wait_exit(Duration::from_secs(15)), 77);
    assert!(
        a.proc.log_text().contains("agent certificates"),
        "{}",
        a.proc.log_text()
    );

    // A certificate from another CA (the server is trusted, the client is not).
    let other = ClusterCa::generate("other").expect("ca");
    let (foreign, foreign_key) = other
        .issue_with_key("mallory", Role::Admin, Duration::from_secs(3600))
        .expect("issue");
    let path = conf_with(&c, "foreign.conf", &foreign_key, &foreign.pem, &admin.ca);
    let out = ctl_with(&path, &["status"]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not issued by this cluster's CA"),
        "{}",
        stderr(&out)
    );

    // A coordinator from another CA is not trusted by ctl either.
    let path = conf_with(
        &c,
        "wrong-ca.conf",
        &admin.key,
        &admin.cert,
        other.cert_pem(),
    );
    let out = ctl_with(&path, &["status"]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not signed by the CA"),
        "{}",
        stderr(&out)
    );

    // An expired certificate of this cluster's CA.
    let ca = ClusterCa::load(&c.state.join("pki")).expect("load ca");
    let (key, csr) = new_key_and_csr("old-admin").expect("csr");
    let now = SystemTime::now();
    let expired = ca
        .sign_csr_valid(
            &csr,
            "old-admin",
            Role::Admin,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .expect("sign");
    let path = conf_with(
        &c,
        "expired.conf",
        &key.serialize_pem(),
        &expired.pem,
        &admin.ca,
    );
    let out = ctl_with(&path, &["status"]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    // A database server's peer certificate, from this cluster's CA: valid
    // for TLS, refused by the admin API by its role.
    let (peer, peer_key) = ca
        .issue_database_peer(&["etcd-1".to_string()], Duration::from_secs(3600))
        .expect("issue");
    let path = conf_with(&c, "database.conf", &peer_key, &peer.pem, &admin.ca);
    let out = ctl_with(&path, &["status"]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("admin certificates; the caller presented a database certificate"),
        "{}",
        stderr(&out)
    );

    // Plaintext HTTP/2 (gRPC without TLS) gets nothing.
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let endpoint = c.endpoint();
    let plaintext = rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(3))
            .connect()
            .await;
        match channel {
            Err(e) => Err(e.to_string()),
            Ok(ch) => apiary_proto::admin_client::AdminClient::new(ch)
                .status(apiary_proto::StatusRequest {})
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    });
    assert!(plaintext.is_err(), "a plaintext call was answered");

    // Unreachable coordinator: exit 69.
    let path = c.dir.path().join("unreachable.conf");
    AdminConf {
        endpoint: format!("127.0.0.1:{}", free_port()),
        ..admin
    }
    .save(&path)
    .expect("save");
    let out = ctl_with(&path, &["status"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
}

#[test]
fn agents_renew_their_certificate_before_expiry_without_restarting() {
    let c = Coordinator::start("node_cert_ttl = \"6s\"\nheartbeat_interval = \"500ms\"");
    let token = c.token();
    let mut agent = c.agent("bee-1", Some(&token));
    c.wait_ready("bee-1", Duration::from_secs(15));
    let first = c.node("bee-1").expect("node")["cert_serial"].clone();
    // Two thirds of 6 s is 4 s; allow for the slack of the clock and the poll.
    let second = eventually("certificate renewed", Duration::from_secs(10), || {
        let s = c.node("bee-1")?["cert_serial"].clone();
        (s != first).then_some(s)
    });
    // Past the first certificate's expiry the agent is still connected, same process.
    eventually(
        "still ready after the first certificate expired",
        Duration::from_secs(10),
        || {
            let n = c.node("bee-1")?;
            (n["state"] == "ready" && n["cert_serial"] != first).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.node_state("bee-1").as_deref(), Some("ready"));
    assert!(
        agent.proc.try_exit().is_none(),
        "agent exited: {}",
        agent.proc.log_text()
    );
    assert_ne!(second, first);
}

#[test]
fn malformed_config_names_file_line_and_key_with_exit_64() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[cluster]\nname = \"bees\"\n\n[coordinator]\nlisten = \"127.0.0.1:0\"\nheartbeat = \"5s\"\n\n[provider]\nkind = \"manual\"\n").expect("write");
    let out = std::process::Command::new(bin("coordinator"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:6:", config.display())), "{err}");
    assert!(err.contains("heartbeat"), "{err}");
    assert!(
        !dir.path().join("state").exists(),
        "a bad config must not create state"
    );
}

#[test]
fn image_archive_is_refused_outside_the_lab_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("manual.toml");
    std::fs::write(&config, "[cluster]\nname = \"bees\"\n[coordinator]\nlisten = \"127.0.0.1:0\"\n[provider]\nkind = \"manual\"\n").expect("write");
    let out = std::process::Command::new(bin("coordinator"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--image-archive", "/nonexistent.tar"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--image-archive is for the lab"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("state").exists());
}
