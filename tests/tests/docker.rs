//! `ctl docker` on loopback, with a stand-in engine behind the agent (a unix
//! socket answering HTTP, as dockerd's does): the bytes reach it through
//! ctl ⇄ coordinator ⇄ agent, hijacked-style streams end cleanly when ctl is
//! killed, and every refusal says which node and which setting. The stock
//! Docker CLI against real engines and a real swarm is in the lab test
//! (`tests/lab.rs`, `the_docker_cli_runs_against_the_swarm`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use apiary_certs::AdminConf;
use apiary_tests::*;

/// A stand-in engine at `path`: `GET /_ping` answers `OK`; `GET /events`
/// sends a line every 100 ms until the client goes. `open` counts the
/// connections it holds.
fn fake_engine(path: &Path) -> Arc<AtomicUsize> {
    let listener = UnixListener::bind(path).expect("bind fake engine");
    let open = Arc::new(AtomicUsize::new(0));
    let counter = open.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let open = counter.clone();
            open.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = serve_one(conn);
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    open
}

fn serve_one(conn: UnixStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let mut w = conn;
    if first.starts_with("GET /events") {
        w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")?;
        loop {
            w.write_all(b"{\"status\":\"tick\"}\n")?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nApi-Version: 1.49\r\n\r\nOK")?;
    Ok(())
}

fn ping(socket: &Path) -> Result<String, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut all = String::new();
    s.read_to_string(&mut all).map_err(|e| e.to_string())?;
    Ok(all)
}

fn scrape_open(port: u16) -> Option<f64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("apiary_tunnel_connections_open "))
        .and_then(|v| v.trim().parse().ok())
}

/// Sockets the process `pid` holds.
fn sockets_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|t| t.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

struct Setup {
    c: Coordinator,
    agent: Agent,
    engine: PathBuf,
    open: Arc<AtomicUsize>,
    metrics: u16,
}

/// A coordinator and `bee-1`, whose agent serves a stand-in engine.
fn setup() -> Setup {
    let metrics = free_port();
    let c = Coordinator::start_with("", &["--metrics-listen", &format!("127.0.0.1:{metrics}")]);
    let engine = c.dir.path().join("engine.sock");
    let open = fake_engine(&engine);
    let agent = Agent::start_with(
        &c.endpoint(),
        Some(&c.token()),
        &c.dir.path().join("agent-bee-1"),
        "bee-1",
        &[
            "--engine-access",
            "--docker-socket",
            engine.to_str().expect("utf-8"),
        ],
    );
    c.wait_ready("bee-1", Duration::from_secs(15));
    Setup {
        c,
        agent,
        engine,
        open,
        metrics,
    }
}

fn start_proxy(c: &Coordinator, conf: &Path, node: &str) -> (Proc, PathBuf) {
    let socket = c.dir.path().join(format!("proxy-{node}.sock"));
    let mut cmd = Command::new(bin("ctl"));
    cmd.arg("--config")
        .arg(conf)
        .args(["docker-proxy", "--node", node, "--socket"]);
    cmd.arg(&socket);
    let mut p = Proc::spawn(cmd, &c.dir.path().join(format!("proxy-{node}.log")));
    eventually("proxy serving", Duration::from_secs(15), || {
        if let Some(code) = p.try_exit() {
            panic!("the proxy exited with {code}: {}", p.log_text());
        }
        p.log_text().contains("export DOCKER_HOST=").then_some(())
    });
    (p, socket)
}

#[test]
fn the_engine_api_travels_through_the_proxy_and_a_killed_ctl_leaves_nothing_open() {
    let Setup {
        c,
        agent,
        engine: _engine,
        open,
        metrics,
    } = &setup();
    let mut events = {
        let mut cmd = Command::new(bin("ctl"));
        cmd.arg("--config")
            .arg(c.admin_conf())
            .args(["events", "--json"]);
        Proc::spawn(cmd, &c.dir.path().join("events.log"))
    };
    std::thread::sleep(Duration::from_millis(500));
    let (mut proxy, socket) = start_proxy(c, &c.admin_conf(), "bee-1");
    let mode = std::fs::metadata(&socket).expect("socket").permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        mode.mode() & 0o777,
        0o600,
        "the endpoint is the user's alone"
    );

    let answer = ping(&socket).expect("ping through the proxy");
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("OK"),
        "{answer}"
    );

    // The session is an event: who and which node.
    let line = eventually("docker_session event", Duration::from_secs(10), || {
        events
            .log_text()
            .lines()
            .find(|l| l.contains("docker_session"))
            .map(str::to_string)
    });
    let event: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(event["node"], "bee-1", "{line}");
    assert!(
        event["message"].as_str().unwrap_or("").contains("admin"),
        "the event names the admin: {line}"
    );
    events.kill9();

    // A stream held open (as `docker events` does), then ctl killed under
    // it: the coordinator's and the agent's ends close, the engine's too.
    let baseline = sockets_of(agent.proc.pid());
    let mut held = UnixStream::connect(&socket).expect("connect");
    held.write_all(b"GET /events HTTP/1.1\r\nHost: docker\r\n\r\n")
        .expect("request");
    let mut head = [0u8; 15];
    held.read_exact(&mut head).expect("streaming");
    assert_eq!(&head, b"HTTP/1.1 200 OK");
    eventually(
        "one open connection counted",
        Duration::from_secs(10),
        || (scrape_open(*metrics) == Some(1.0)).then_some(()),
    );
    assert_eq!(
        open.load(Ordering::SeqCst),
        1,
        "the engine holds the stream"
    );
    proxy.kill9();
    eventually(
        "the coordinator's count back to 0",
        Duration::from_secs(15),
        || (scrape_open(*metrics) == Some(0.0)).then_some(()),
    );
    eventually(
        "the engine's connection closed",
        Duration::from_secs(15),
        || (open.load(Ordering::SeqCst) == 0).then_some(()),
    );
    eventually(
        "the agent's sockets back to before",
        Duration::from_secs(15),
        || (sockets_of(agent.proc.pid()) <= baseline).then_some(()),
    );
}

#[test]
fn engine_access_refusals_name_the_node_the_setting_and_the_certificate() {
    let Setup { c, agent, .. } = &setup();
    // A hand-installed agent: engine access is off unless set.
    let other_engine = c.dir.path().join("engine-2.sock");
    let _open = fake_engine(&other_engine);
    let _bee2 = Agent::start_with(
        &c.endpoint(),
        Some(&c.token()),
        &c.dir.path().join("agent-bee-2"),
        "bee-2",
        &["--docker-socket", other_engine.to_str().expect("utf-8")],
    );
    c.wait_ready("bee-2", Duration::from_secs(15));
    let docker = |conf: &Path, args: &[&str]| {
        Command::new(bin("ctl"))
            .arg("--config")
            .arg(conf)
            .arg("docker")
            .args(args)
            .output()
            .expect("ctl")
    };
    let out = docker(&c.admin_conf(), &["--node", "bee-2", "--", "version"]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("engine access is off on bee-2")
            && stderr(&out).contains("engine_access = true"),
        "{}",
        stderr(&out)
    );
    // The proxy refuses at start, with the same reason.
    let out = Command::new(bin("ctl"))
        .arg("--config")
        .arg(c.admin_conf())
        .args(["docker-proxy", "--node", "bee-2", "--socket"])
        .arg(c.dir.path().join("p.sock"))
        .output()
        .expect("ctl");
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("engine access is off on bee-2"),
        "{}",
        stderr(&out)
    );

    // No such node.
    let out = docker(&c.admin_conf(), &["--node", "nobody", "--", "ps"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no node named \"nobody\""),
        "{}",
        stderr(&out)
    );

    // No swarm here (manual provider, no [swarm]): no manager to choose.
    let out = docker(&c.admin_conf(), &["--", "ps"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("this cluster runs no swarm") && stderr(&out).contains("--node"),
        "{}",
        stderr(&out)
    );

    // The engine is down: unavailable, saying where it was looked for.
    let stopped = c.dir.path().join("engine-gone.sock");
    let _bee3 = Agent::start_with(
        &c.endpoint(),
        Some(&c.token()),
        &c.dir.path().join("agent-bee-3"),
        "bee-3",
        &[
            "--engine-access",
            "--docker-socket",
            stopped.to_str().expect("utf-8"),
        ],
    );
    c.wait_ready("bee-3", Duration::from_secs(15));
    let out = docker(&c.admin_conf(), &["--node", "bee-3", "--", "ps"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the Docker engine on bee-3 does not answer at"),
        "{}",
        stderr(&out)
    );

    // An agent's certificate is refused at the coordinator, which says so.
    let admin = AdminConf::load(&c.admin_conf()).expect("admin.conf");
    let id = apiary_certs::Identity::load(&agent.state).expect("identity");
    let as_agent = c.dir.path().join("agent-as-admin.conf");
    AdminConf {
        key: id.key_pem.clone(),
        cert: id.cert_pem(),
        ..admin
    }
    .save(&as_agent)
    .expect("save");
    let out = docker(&as_agent, &["--node", "bee-1", "--", "ps"]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("admin certificates") && stderr(&out).contains("agent"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn docker_env_starts_a_background_proxy_and_unset_stops_it() {
    let Setup { c, .. } = &setup();
    let runtime = c.dir.path().join("run");
    std::fs::create_dir(&runtime).expect("runtime dir");
    let env = |args: &[&str]| {
        Command::new(bin("ctl"))
            .arg("--config")
            .arg(c.admin_conf())
            .arg("docker-env")
            .args(args)
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .expect("ctl")
    };
    let out = env(&["--node", "bee-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let socket = runtime.join("apiary/test-bee-1.sock");
    assert!(
        text.starts_with(&format!(
            "export DOCKER_HOST=\"unix://{}\"\n",
            socket.display()
        )),
        "{text}"
    );
    assert!(text.contains("# eval $(ctl docker-env)"), "{text}");
    let answer = ping(&socket).expect("the background proxy answers");
    assert!(answer.ends_with("OK"), "{answer}");
    // A second call reuses the running proxy.
    let again = env(&["--node", "bee-1"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let pid: i32 = std::fs::read_to_string(runtime.join("apiary/test-bee-1.sock.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert!(alive(pid));
    let out = env(&["--node", "bee-1", "--unset"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("unset DOCKER_HOST\n"));
    eventually("the proxy stopped", Duration::from_secs(10), || {
        (!alive(pid)).then_some(())
    });
    assert!(!socket.exists(), "the socket is removed with its proxy");
}
