//! What an operator sees beyond `status`: the event stream, `--watch`, and
//! output with no terminal escapes when not on a terminal.

use std::process::Command;
use std::time::Duration;

use apiary_tests::*;

#[test]
fn events_stream_joins_downs_and_removals_as_json_lines() {
    let c = Coordinator::start("heartbeat_interval = \"300ms\"");
    let mut cmd = Command::new(bin("ctl"));
    cmd.arg("--config")
        .arg(c.admin_conf())
        .args(["events", "--json"]);
    let events = Proc::spawn(cmd, &c.dir.path().join("events.log"));
    // The watcher is subscribed once it has connected; give it a moment by
    // waiting for its first byte of connection (a status call proves the server is up).
    eventually("events subscribed", Duration::from_secs(10), || {
        c.ctl(&["status"]).status.success().then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let token = c.token();
    let mut a = c.agent("bee-1", Some(&token));
    eventually("bee-1 ready", Duration::from_secs(15), || {
        (c.node_state("bee-1")? == "ready").then_some(())
    });
    a.proc.kill9();
    eventually("bee-1 down", Duration::from_secs(5), || {
        (c.node_state("bee-1")? == "down").then_some(())
    });
    assert!(c.ctl(&["nodes", "remove", "bee-1"]).status.success());

    let kinds = eventually("events seen", Duration::from_secs(10), || {
        let text = events.log_text();
        let kinds: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                (
                    v["kind"].as_str().unwrap_or("").to_string(),
                    v["node"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        kinds
            .iter()
            .any(|(k, _)| k == "node_removed")
            .then_some(kinds)
    });
    for want in [
        "node_enrolled",
        "node_connected",
        "node_down",
        "node_removed",
    ] {
        assert!(
            kinds.iter().any(|(k, n)| k == want && n == "bee-1"),
            "no {want} for bee-1 in {kinds:?}"
        );
    }
}

#[test]
fn watch_redraws_and_plain_output_has_no_escape_codes() {
    let c = Coordinator::start("heartbeat_interval = \"300ms\"");
    let token = c.token();
    let _a = c.agent("bee-1", Some(&token));
    eventually("bee-1 ready", Duration::from_secs(15), || {
        (c.node_state("bee-1")? == "ready").then_some(())
    });

    let mut cmd = Command::new(bin("ctl"));
    cmd.arg("--config")
        .arg(c.admin_conf())
        .args(["status", "--watch", "--interval", "200ms"]);
    let watch = Proc::spawn(cmd, &c.dir.path().join("watch.log"));
    let text = eventually("three frames", Duration::from_secs(10), || {
        let t = watch.log_text();
        (t.matches("nodes ready").count() >= 3).then_some(t)
    });
    assert!(text.contains("bee-1"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes written to a pipe: {text:?}"
    );

    // Logs written to a file carry no colour codes either.
    let log = c.proc.as_ref().expect("coordinator").log_text();
    assert!(log.contains("node enrolled"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a non-terminal log"
    );
}

fn scrape(port: u16) -> Option<prometheus_parse::Scrape> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split("\r\n\r\n").nth(1)?;
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).ok()
}

fn value(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    label: Option<(&str, &str)>,
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn metrics_parse_as_prometheus_text_and_follow_nodes_joining_and_leaving() {
    let port = free_port();
    let c = Coordinator::start_with(
        "heartbeat_interval = \"300ms\"",
        &["--metrics-listen", &format!("127.0.0.1:{port}")],
    );
    let first = eventually("metrics served", Duration::from_secs(10), || scrape(port));
    assert_eq!(
        value(&first, "apiary_nodes", Some(("state", "ready"))),
        Some(0.0)
    );
    let token = c.token();
    let mut a = c.agent("bee-1", Some(&token));
    let _b = c.agent("bee-2", Some(&token));
    eventually("two ready in metrics", Duration::from_secs(15), || {
        let s = scrape(port)?;
        (value(&s, "apiary_nodes", Some(("state", "ready")))? == 2.0
            && value(&s, "apiary_enrollments_total", None)? == 2.0)
            .then_some(())
    });
    a.proc.kill9();
    eventually("one down in metrics", Duration::from_secs(10), || {
        let s = scrape(port)?;
        (value(&s, "apiary_nodes", Some(("state", "down")))? == 1.0
            && value(&s, "apiary_nodes", Some(("state", "ready")))? == 1.0)
            .then_some(())
    });
    let s = scrape(port).expect("scrape");
    for name in [
        "apiary_sessions",
        "apiary_checks_failing",
        "apiary_tunnel_bytes_total",
        "apiary_heartbeat_interval_seconds",
    ] {
        assert!(s.samples.iter().any(|x| x.metric == name), "{name} missing");
    }
}

#[test]
fn completions_and_man_pages_cover_every_subcommand() {
    let subcommands = [
        "status",
        "events",
        "checks",
        "tunnel",
        "hosts",
        "nodes",
        "token",
        "completions",
        "man",
    ];
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin("ctl"))
            .args(["completions", shell])
            .output()
            .expect("ctl completions");
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in subcommands {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(bin("ctl"))
        .arg("man")
        .arg(dir.path())
        .output()
        .expect("ctl man");
    assert!(out.status.success(), "{}", stderr(&out));
    for page in [
        "ctl.1",
        "ctl-status.1",
        "ctl-checks.1",
        "ctl-tunnel.1",
        "ctl-hosts-apply.1",
        "ctl-nodes-remove.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH") && text.len() > 200, "{page} is empty");
    }
}

#[test]
fn token_json_holds_its_documented_fields() {
    let c = Coordinator::start("join_token_ttl = \"1h\"");
    let out = c.ctl(&["token", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        v["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("APIARY-1-")),
        "{v}"
    );
    assert!(v["expires_unix"].as_u64().is_some_and(|e| e > 0), "{v}");
}

/// A process whose stdin, stdout and stderr are a pseudo-terminal (120x40),
/// as when a person runs it; what it shows is collected. Killed (by PID) when
/// dropped.
struct OnTerminal {
    child: std::process::Child,
    shown: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl OnTerminal {
    /// `NO_COLOR` is removed from the environment unless `env` sets it.
    fn spawn(mut cmd: Command, env: &[(&str, &str)]) -> OnTerminal {
        use std::io::Read;
        use std::process::Stdio;
        let size = nix::pty::Winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let slave = |fd: &std::os::fd::OwnedFd| Stdio::from(fd.try_clone().expect("dup pty"));
        cmd.stdin(slave(&pty.slave))
            .stdout(slave(&pty.slave))
            .stderr(slave(&pty.slave))
            .env("TERM", "xterm-256color")
            .env_remove("NO_COLOR")
            .envs(env.iter().copied());
        let child = cmd.spawn().expect("spawn on a pty");
        // Only the child holds the terminal now: reading ends when it exits.
        drop(cmd);
        drop(pty.slave);
        let shown = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = shown.clone();
        let mut master = std::fs::File::from(pty.master);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // Ends with EIO once the child (the terminal's last user) is gone.
            while let Ok(n @ 1..) = master.read(&mut buf) {
                sink.lock().expect("sink").extend_from_slice(&buf[..n]);
            }
        });
        OnTerminal {
            child,
            shown,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.shown.lock().expect("shown")).into_owned()
    }

    /// Waits for the exit and everything shown until then.
    fn finish(mut self) -> (i32, String) {
        let status = eventually("exit", Duration::from_secs(20), || {
            self.child.try_wait().ok().flatten()
        });
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status.code().unwrap_or(-1), self.text())
    }
}

impl Drop for OnTerminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctl_on_terminal(c: &Coordinator, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(bin("ctl"));
    cmd.arg("--config").arg(c.admin_conf()).args(args);
    OnTerminal::spawn(cmd, env).finish()
}

/// A coordinator whose output goes to a terminal (manual provider, loopback).
fn coordinator_on_terminal(env: &[(&str, &str)]) -> (Coordinator, OnTerminal) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        "[cluster]\nname = \"test\"\n\n[coordinator]\nheartbeat_interval = \"300ms\"\n\n[provider]\nkind = \"manual\"\n",
    )
    .expect("write config");
    let c = Coordinator {
        state: dir.path().join("state"),
        config,
        proc: None,
        port: free_port(),
        dir,
        serve_args: Vec::new(),
    };
    let mut cmd = Command::new(bin("coordinator"));
    cmd.args(["serve", "--config"])
        .arg(&c.config)
        .arg("--state-dir")
        .arg(&c.state)
        .args(["--listen", &c.endpoint()]);
    let serve = OnTerminal::spawn(cmd, env);
    eventually("coordinator listening", Duration::from_secs(20), || {
        (c.admin_conf().exists() && std::net::TcpStream::connect(c.endpoint()).is_ok())
            .then_some(())
    });
    (c, serve)
}

#[test]
fn serve_draws_a_line_per_host_on_a_terminal_and_plain_lines_elsewhere() {
    // On a terminal: the host's line, redrawn in place as it moves on.
    let (c, serve) = coordinator_on_terminal(&[]);
    let token = c.token();
    let _a = c.agent("bee-1", Some(&token));
    let shown = eventually("bee-1's line", Duration::from_secs(15), || {
        let t = serve.text();
        t.contains("enrolled → connected, ready").then_some(t)
    });
    assert!(shown.contains("bee-1"), "{shown:?}");
    assert!(
        shown.contains("\u{1b}[") && shown.contains('\r'),
        "no terminal redraw codes on a terminal: {shown:?}"
    );

    // Not on a terminal: one timestamped line per host event, no redraws.
    let c = Coordinator::start("heartbeat_interval = \"300ms\"");
    let token = c.token();
    let _a = c.agent("bee-1", Some(&token));
    let log = eventually("bee-1's lines", Duration::from_secs(15), || {
        let t = c.proc.as_ref().expect("coordinator").log_text();
        t.contains("bee-1: connected, ready").then_some(t)
    });
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("bee-1: ")).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('[') && l.contains("bee-1: enrolled")),
        "{log}"
    );
    assert!(
        !log.contains('\r') && !log.contains('\u{1b}'),
        "progress-bar control characters in a non-terminal log: {log:?}"
    );

    // A terminal with NO_COLOR: the plain lines, no escape codes at all.
    let (c, serve) = coordinator_on_terminal(&[("NO_COLOR", "1")]);
    let token = c.token();
    let _a = c.agent("bee-3", Some(&token));
    let shown = eventually("bee-3's lines", Duration::from_secs(15), || {
        let t = serve.text();
        t.contains("bee-3: connected, ready").then_some(t)
    });
    assert!(
        !shown.contains('\u{1b}'),
        "escape codes on a terminal with NO_COLOR: {shown:?}"
    );

    // --quiet: no progress at all.
    let q = Coordinator::start_with("heartbeat_interval = \"300ms\"", &["--quiet"]);
    let token = q.token();
    let _b = q.agent("bee-2", Some(&token));
    eventually("bee-2 ready", Duration::from_secs(15), || {
        (q.node_state("bee-2")? == "ready").then_some(())
    });
    let log = q.proc.as_ref().expect("coordinator").log_text();
    assert!(!log.contains("bee-2: enrolled"), "{log}");
}

#[test]
fn ctl_colours_states_on_a_terminal_and_never_with_no_color() {
    let c = Coordinator::start("heartbeat_interval = \"300ms\"");
    let token = c.token();
    let _a = c.agent("bee-1", Some(&token));
    eventually("bee-1 ready", Duration::from_secs(15), || {
        (c.node_state("bee-1")? == "ready").then_some(())
    });

    let (code, shown) = ctl_on_terminal(&c, &["status"], &[]);
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains("\u{1b}[32mready"),
        "ready is not green on a terminal: {shown:?}"
    );

    for env in [[("NO_COLOR", "1")], [("NO_COLOR", "yes")]] {
        let (code, shown) = ctl_on_terminal(&c, &["status"], &env);
        assert_eq!(code, 0, "{shown}");
        assert!(
            shown.contains("bee-1") && shown.contains("ready"),
            "{shown}"
        );
        assert!(
            !shown.contains('\u{1b}'),
            "escape codes with NO_COLOR on a terminal: {shown:?}"
        );
    }
    // `ctl checks` (nothing to check on a manual cluster without Swarm) says
    // so on a terminal without any escape codes under NO_COLOR either.
    let (code, shown) = ctl_on_terminal(&c, &["checks"], &[("NO_COLOR", "1")]);
    assert_eq!(code, 2, "{shown}");
    assert!(shown.contains("no checks yet"), "{shown}");
    assert!(!shown.contains('\u{1b}'), "{shown:?}");

    // A pipe: no colour even without NO_COLOR.
    let out = c.ctl(&["status"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains('\u{1b}'));
}

#[test]
fn every_binary_has_man_pages_and_completions_for_every_subcommand() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(bin("coordinator"))
        .arg("man")
        .arg(dir.path())
        .output()
        .expect("coordinator man");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new(bin("agent"))
        .arg("--generate-man")
        .arg(dir.path())
        .output()
        .expect("agent --generate-man");
    assert!(out.status.success(), "{}", stderr(&out));
    for page in [
        "coordinator.1",
        "coordinator-serve.1",
        "coordinator-teardown.1",
        "coordinator-token.1",
        "coordinator-completions.1",
        "coordinator-man.1",
        "agent.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH") && text.len() > 200, "{page} is empty");
    }
    let serve = std::fs::read_to_string(dir.path().join("coordinator-serve.1")).expect("page");
    assert!(
        serve.contains("quiet") && serve.contains("metrics"),
        "{serve}"
    );
    let agent = std::fs::read_to_string(dir.path().join("agent.1")).expect("page");
    assert!(
        agent.contains("coordinator") && agent.contains("token"),
        "{agent}"
    );

    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin("coordinator"))
            .args(["completions", shell])
            .output()
            .expect("coordinator completions");
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in ["serve", "teardown", "token", "man"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
        let out = Command::new(bin("agent"))
            .args(["--generate-completions", shell])
            .output()
            .expect("agent completions");
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("coordinator") && text.contains("state-dir"),
            "{shell}: {text}"
        );
    }
}
