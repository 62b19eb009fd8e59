//! What an operator sees beyond `status`: the event stream, `--watch`, and
//! output with no terminal escapes when not on a terminal.

use std::process::Command;
use std::time::Duration;

use apiary_tests::*;

/// `ctl events --json` against `c`, returned once it is subscribed: a token
/// rotation (an event of our own making) has reached it.
fn subscribed_events(c: &Coordinator) -> Proc {
    let mut cmd = Command::new(bin("ctl"));
    cmd.arg("--config")
        .arg(c.admin_conf())
        .args(["events", "--json"]);
    let events = Proc::spawn(cmd, &c.dir.path().join("events.log"));
    eventually("events subscribed", Duration::from_secs(10), || {
        c.ctl(&["token", "--rotate"]);
        events.log_text().contains("token_rotated").then_some(())
    });
    events
}

#[test]
fn events_stream_joins_downs_and_removals_as_json_lines() {
    let c = Coordinator::start("heartbeat_interval = \"300ms\"");
    let events = subscribed_events(&c);
    let token = c.token();
    let mut a = c.agent("bee-1", Some(&token));
    c.wait_ready("bee-1", Duration::from_secs(15));
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
    let _a = c.ready_agent("bee-1");

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

/// Observations in histogram `name` (its `+Inf` bucket), checked against its
/// `_count` sample.
fn observations(scrape: &prometheus_parse::Scrape, name: &str) -> Option<f64> {
    let buckets = scrape.samples.iter().find_map(|s| match &s.value {
        prometheus_parse::Value::Histogram(b) if s.metric == name => Some(b),
        _ => None,
    })?;
    let all = buckets.iter().find(|b| b.less_than == f64::INFINITY)?.count;
    assert_eq!(
        value(scrape, &format!("{name}_count"), None),
        Some(all),
        "{name}: the +Inf bucket and _count disagree"
    );
    Some(all)
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
    // Heartbeat round trips as the agents measure them: a histogram that
    // grows with every heartbeat of the agent still up.
    let rtt = "apiary_heartbeat_rtt_seconds";
    let seen = eventually(
        "heartbeat round trips observed",
        Duration::from_secs(10),
        || observations(&scrape(port)?, rtt).filter(|n| *n > 0.0),
    );
    assert!(
        value(&s, &format!("{rtt}_sum"), None).is_some(),
        "{rtt}_sum missing"
    );
    eventually("more round trips observed", Duration::from_secs(10), || {
        let s = scrape(port)?;
        (observations(&s, rtt)? > seen && value(&s, &format!("{rtt}_sum"), None)? > 0.0)
            .then_some(())
    });
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

/// A coordinator whose output goes to a terminal (manual provider, loopback),
/// with extra `serve` arguments.
fn coordinator_on_terminal(env: &[(&str, &str)], args: &[&str]) -> (Coordinator, OnTerminal) {
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
        ip: std::net::Ipv4Addr::LOCALHOST,
        port: free_port(),
        dir,
        serve_args: Vec::new(),
    };
    let mut cmd = Command::new(bin("coordinator"));
    cmd.args(["serve", "--config"])
        .arg(&c.config)
        .arg("--state-dir")
        .arg(&c.state)
        .args(["--listen", &c.endpoint()])
        .args(args);
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
    let (c, serve) = coordinator_on_terminal(&[], &[]);
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
    let (c, serve) = coordinator_on_terminal(&[("NO_COLOR", "1")], &[]);
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

    // --quiet on a terminal (colour allowed): the plain timestamped lines,
    // no bars, spinners or cursor movement (log lines may still be coloured).
    let (q, serve) = coordinator_on_terminal(&[], &["--quiet"]);
    let token = q.token();
    let _b = q.agent("bee-2", Some(&token));
    let shown = eventually("bee-2's lines", Duration::from_secs(15), || {
        let t = serve.text();
        t.contains("bee-2: connected, ready").then_some(t)
    });
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with('[') && l.contains("hosts") && l.contains("bee-2: enrolled")),
        "no timestamped line for bee-2 with --quiet: {shown:?}"
    );
    let drawing: Vec<String> = escape_sequences(&shown)
        .into_iter()
        .filter(|e| !e.ends_with('m'))
        .collect();
    assert!(
        drawing.is_empty(),
        "--quiet drew on the terminal ({drawing:?}): {shown:?}"
    );
    assert!(
        !shown.contains("enrolled → connected"),
        "a host line with --quiet: {shown:?}"
    );
}

/// Every escape sequence in `text`: `ESC [ ... m` sets a colour (SGR); the
/// others move the cursor, clear or hide it.
fn escape_sequences(text: &str) -> Vec<String> {
    text.split('\u{1b}')
        .skip(1)
        .map(|s| match s.strip_prefix('[') {
            Some(csi) => match csi.find(|c: char| ('@'..='~').contains(&c)) {
                Some(end) => format!("ESC[{}", &csi[..=end]),
                None => format!("ESC[{csi}"),
            },
            None => format!("ESC{}", s.chars().next().unwrap_or(' ')),
        })
        .collect()
}

#[test]
fn watch_on_a_terminal_redraws_in_place_and_colours_only_without_no_color() {
    let c = Coordinator::start("heartbeat_interval = \"300ms\"");
    let _a = c.ready_agent("bee-1");
    for (env, colour) in [(&[][..], true), (&[("NO_COLOR", "1")][..], false)] {
        let mut cmd = Command::new(bin("ctl"));
        cmd.arg("--config")
            .arg(c.admin_conf())
            .args(["status", "--watch", "--interval", "200ms"]);
        let watch = OnTerminal::spawn(cmd, env);
        eventually("two frames", Duration::from_secs(10), || {
            (watch.text().matches("nodes ready").count() >= 2).then_some(())
        });
        // Ctrl-C ends it cleanly.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(watch.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let (code, shown) = watch.finish();
        assert_eq!(code, 0, "{shown:?}");
        assert!(
            shown.matches("\u{1b}[H\u{1b}[2J").count() >= 2,
            "not redrawn in place: {shown:?}"
        );
        let colours: Vec<String> = escape_sequences(&shown)
            .into_iter()
            .filter(|e| e.ends_with('m'))
            .collect();
        if colour {
            assert!(
                shown.contains("\u{1b}[32mready"),
                "ready is not green on a terminal: {shown:?}"
            );
        } else {
            assert!(
                colours.is_empty(),
                "colour codes with NO_COLOR: {colours:?} in {shown:?}"
            );
        }
    }
}

#[test]
fn ctl_colours_states_on_a_terminal_and_never_with_no_color() {
    let c = Coordinator::start("heartbeat_interval = \"300ms\"");
    let _a = c.ready_agent("bee-1");

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

/// The three programs with the clap definitions they parse with.
fn programs() -> [(&'static str, clap::Command); 3] {
    use clap::CommandFactory;
    [
        ("ctl", apiary_ctl::cli::Args::command()),
        (
            "coordinator",
            apiary_coordinator::cli::coordinator::Args::command(),
        ),
        ("agent", apiary_agent::cli::Args::command()),
    ]
}

/// `cmd` and every subcommand below it, each with its path of names from
/// the root (the root's path is empty).
fn command_tree(cmd: &clap::Command) -> Vec<(Vec<String>, clap::Command)> {
    let mut tree = vec![(Vec::new(), cmd.clone())];
    let mut i = 0;
    while i < tree.len() {
        let (path, c) = tree[i].clone();
        for sub in c.get_subcommands() {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            tree.push((p, sub.clone()));
        }
        i += 1;
    }
    tree
}

/// The long flags `--help` shows for `cmd` itself.
fn visible_long_flags(cmd: &clap::Command) -> Vec<String> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

/// Runs a program, returning (exit code, stdout, stderr).
fn run(program: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin(program))
        .args(args)
        .env_remove("APIARY_CONFIG")
        .env_remove("APIARY_AGENT_CONFIG")
        .env_remove("APIARY_JOIN_TOKEN")
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    )
}

/// Whitespace collapsed (help text is wrapped to the terminal's width).
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn usage_errors_exit_64_naming_the_argument_and_help_and_version_exit_0() {
    for (program, _) in programs() {
        let (code, out, err) = run(program, &["--no-such-flag"]);
        assert_eq!(code, 64, "{program} --no-such-flag: {err}");
        assert!(err.contains("--no-such-flag"), "{program}: {err}");
        assert!(out.is_empty(), "{program}: usage error on stdout: {out}");

        for flag in ["--help", "-h", "--version"] {
            let (code, out, err) = run(program, &[flag]);
            assert_eq!(code, 0, "{program} {flag}: {err}");
            assert!(
                out.contains(program) && err.is_empty(),
                "{program} {flag}: stdout {out:?}, stderr {err:?}"
            );
        }
    }
    // A value that does not parse, a missing subcommand or argument: usage
    // errors too, never clap's 2 (which `ctl checks` uses for a failed check).
    for (program, args, names) in [
        ("ctl", &["status", "--interval", "soon"][..], "soon"),
        ("ctl", &[][..], "Usage"),
        ("ctl", &["nodes", "remove"][..], "<NAME>"),
        ("ctl", &["completions", "tcsh"][..], "tcsh"),
        ("ctl", &["scale", "database=many"][..], "database=N"),
        ("coordinator", &["serve"][..], "--config"),
        (
            "coordinator",
            &["--log-format", "xml", "man", "/tmp"][..],
            "xml",
        ),
        ("agent", &["--log-format", "xml"][..], "xml"),
    ] {
        let (code, _, err) = run(program, args);
        assert_eq!(code, 64, "{program} {args:?}: {err}");
        assert!(err.contains(names), "{program} {args:?}: {err}");
    }
}

#[test]
fn every_subcommand_and_argument_explains_itself_in_help() {
    for (program, root) in programs() {
        for (path, cmd) in command_tree(&root) {
            let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(
                !about.trim().is_empty(),
                "{program} {path:?} has no help text"
            );
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                assert!(
                    arg.get_help()
                        .is_some_and(|h| !h.to_string().trim().is_empty()),
                    "{program} {path:?}: argument {} has no help text",
                    arg.get_id()
                );
            }
            // What the user reads: the real binary's --help for that path.
            let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
            args.push("--help");
            let (code, out, err) = run(program, &args);
            assert_eq!(code, 0, "{program} {args:?}: {err}");
            let long = cmd
                .get_long_about()
                .map(|a| a.to_string())
                .unwrap_or(about.clone());
            assert!(
                words(&out).contains(&words(&long)),
                "{program} {args:?} does not show its help text {long:?}:\n{out}"
            );
            for flag in visible_long_flags(&cmd) {
                assert!(
                    out.contains(&format!("--{flag}")),
                    "{program} {args:?} lacks --{flag}:\n{out}"
                );
            }
        }
    }
}

#[test]
fn exit_codes_are_the_same_in_the_readme_and_every_programs_help() {
    use apiary_api::exit;
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .expect("README.md");
    let section = readme
        .split("### Exit codes (all three programs)")
        .nth(1)
        .expect("README has an exit codes section");
    let documented = words(
        &section
            .trim_start()
            .split("\n\n")
            .next()
            .unwrap_or("")
            .replace('`', ""),
    );
    // Every code the programs use, with its meaning.
    for (code, meaning) in [
        (exit::OK, "ok"),
        (exit::FAILURE, "failure"),
        (exit::CHECK_FAILED, "a check failed"),
        (exit::USAGE, "usage or configuration error"),
        (
            exit::UNAVAILABLE,
            "unavailable (the coordinator unreachable",
        ),
        (exit::IN_USE, "state directory in use"),
        (exit::REFUSED, "refused"),
    ] {
        assert!(
            documented.contains(&format!("{code} {meaning}")),
            "README's exit codes lack {code} {meaning}: {documented}"
        );
    }
    assert_eq!(i32::from(apiary_agent::cli::EXIT_USAGE), exit::USAGE);
    for (program, _) in programs() {
        let (code, out, _) = run(program, &["--help"]);
        assert_eq!(code, 0);
        let help = words(&out);
        let listed = help
            .split("Exit codes: ")
            .nth(1)
            .and_then(|t| t.split_inclusive(". ").next())
            .unwrap_or_else(|| panic!("{program} --help has no exit codes: {out}"));
        assert_eq!(listed.trim(), documented, "{program} --help vs README");
    }
}

/// The lines of a completion script that complete subcommand `path` of
/// `program`, per shell (as clap_complete writes them).
fn completes_subcommand(shell: &str, program: &str, path: &[String], script: &str) -> bool {
    let name = path.last().map(String::as_str).unwrap_or(program);
    match shell {
        // clap_complete names a bash case after the path, a hyphen inside a
        // name written like a separator (`docker-env`: `docker__subcmd__env`).
        "bash" => script.contains(&format!(
            "cmd=\"{program}__subcmd__{}\"",
            path.join("__subcmd__").replace('-', "__subcmd__")
        )),
        "zsh" => script.contains(&format!("'{name}:")),
        "fish" => script.contains(&format!("-a \"{name}\"")),
        _ => unreachable!(),
    }
}

fn completes_flag(shell: &str, flag: &str, script: &str) -> bool {
    match shell {
        "bash" => script.contains(&format!("--{flag}")),
        // `'--json[...]'`, `'--interval=[...]'`, `'(--json)--watch[...]'`
        "zsh" => script.contains(&format!("--{flag}[")) || script.contains(&format!("--{flag}=[")),
        "fish" => script.contains(&format!("-l {flag}")),
        _ => unreachable!(),
    }
}

#[test]
fn completions_and_man_pages_cover_every_subcommand_of_every_program() {
    for (program, root) in programs() {
        let tree = command_tree(&root);
        let dir = tempfile::tempdir().expect("tmp");
        let dir_arg = dir.path().to_str().expect("utf-8 path");
        let (code, _, err) = match program {
            "agent" => run(program, &["--generate-man", dir_arg]),
            _ => run(program, &["man", dir_arg]),
        };
        assert_eq!(code, 0, "{program} man: {err}");
        let pages: Vec<String> = std::fs::read_dir(dir.path())
            .expect("man dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            pages.len(),
            tree.len(),
            "{program}: one page per command expected, got {pages:?}"
        );
        for (path, cmd) in &tree {
            let title = std::iter::once(program.to_string())
                .chain(path.iter().cloned())
                .collect::<Vec<_>>()
                .join("-");
            let page = std::fs::read_to_string(dir.path().join(format!("{title}.1")))
                .unwrap_or_else(|e| panic!("{title}.1: {e}"));
            // roff writes a hyphen as `\-`.
            let text = page.replace("\\-", "-");
            assert!(
                text.contains(&format!(".TH {title} 1")) && page.len() > 200,
                "{title}.1 is empty or names another command:\n{page}"
            );
            for flag in visible_long_flags(cmd) {
                assert!(
                    text.contains(&format!("--{flag}")),
                    "{title}.1 lacks --{flag}"
                );
            }
        }

        for shell in ["bash", "zsh", "fish"] {
            let (code, script, err) = match program {
                "agent" => run(program, &["--generate-completions", shell]),
                _ => run(program, &["completions", shell]),
            };
            assert_eq!(code, 0, "{program} completions {shell}: {err}");
            assert!(!script.is_empty(), "{program}: empty {shell} completions");
            for (path, cmd) in &tree {
                assert!(
                    path.is_empty() || completes_subcommand(shell, program, path, &script),
                    "{program}'s {shell} completions lack {path:?}"
                );
                for flag in visible_long_flags(cmd) {
                    assert!(
                        completes_flag(shell, &flag, &script),
                        "{program}'s {shell} completions lack {path:?} --{flag}"
                    );
                }
            }
        }
    }
}

/// A JSON value's kind, for checking documented field types.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Str,
    /// A non-negative integer.
    Uint,
    Bool,
    Array,
    Object,
}

fn kind_of(v: &serde_json::Value) -> Option<Kind> {
    match v {
        serde_json::Value::String(_) => Some(Kind::Str),
        serde_json::Value::Number(n) if n.is_u64() => Some(Kind::Uint),
        serde_json::Value::Bool(_) => Some(Kind::Bool),
        serde_json::Value::Array(_) => Some(Kind::Array),
        serde_json::Value::Object(_) => Some(Kind::Object),
        _ => None,
    }
}

/// `v` is an object with exactly the fields `fields`, each of its kind.
fn assert_fields(what: &str, v: &serde_json::Value, fields: &[(&str, Kind)]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {v}"));
    for (name, kind) in fields {
        let field = obj
            .get(*name)
            .unwrap_or_else(|| panic!("{what} lacks documented field {name}: {v}"));
        assert_eq!(kind_of(field), Some(*kind), "{what}.{name}: {field}");
    }
    for key in obj.keys() {
        assert!(
            fields.iter().any(|(name, _)| name == key),
            "{what} has field {key}, which docs/json.md does not document: {v}"
        );
    }
}

/// docs/json.md, where the `--json` fields are documented.
fn json_doc() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/json.md"),
    )
    .expect("docs/json.md")
}

/// The section of `doc` (docs/json.md) that starts with heading `### title`.
fn doc_section(doc: &str, title: &str) -> String {
    let start = doc
        .find(&format!("### {title}\n"))
        .unwrap_or_else(|| panic!("docs/json.md has no section {title}"));
    let body = &doc[start + title.len() + 5..];
    body[..body.find("\n### ").unwrap_or(body.len())].to_string()
}

/// Every `"key":` in docs/json.md's example JSON of `ctl status --json`.
fn doc_status_keys(section: &str) -> std::collections::BTreeSet<String> {
    let block = section
        .split("```json")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a json block in the status section");
    block
        .split('"')
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[1].trim_start().starts_with(':'))
        .map(|w| w[0].to_string())
        .collect()
}

#[test]
fn status_events_and_checks_json_hold_every_documented_field() {
    use Kind::*;
    let c = Coordinator::start("heartbeat_interval = \"300ms\"");
    let events = subscribed_events(&c);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    let _a = c.ready_agent("bee-1");
    let status = eventually(
        "bee-1 seen after a heartbeat",
        Duration::from_secs(10),
        || {
            let s = c.status();
            (s["nodes"][0]["last_seen_unix_ms"].as_u64()? > 0).then_some(s)
        },
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");

    // `ctl status --json`: every field docs/json.md shows, of its type, and no
    // other. Lab-only fields (provider, netns, docker_socket, root_prefix)
    // and `database` are absent on a manual cluster without [database].
    let node_fields = [
        ("name", Str),
        ("state", Str),
        ("public_ip", Str),
        ("private_ip", Str),
        ("last_seen_unix_ms", Uint),
        ("hostname", Str),
        ("kernel", Str),
        ("docker_version", Str),
        ("cgroup_version", Uint),
        ("memory_accounting", Bool),
        ("kernel_features", Object),
        ("interfaces", Array),
        ("cert_serial", Str),
        ("cert_not_after_unix", Uint),
        ("enrolled_unix", Uint),
        ("swarm_role", Str),
        ("swarm_status", Str),
        ("swarm_availability", Str),
        ("swarm_leader", Bool),
        ("overlay_attached", Bool),
        ("database_server", Str),
        ("database_healthy", Bool),
        ("database_failures", Uint),
        ("database_restarts", Uint),
        ("database_last_failure", Object),
        ("config_state", Str),
        ("config_items", Array),
        ("last_drift_repaired_unix_ms", Uint),
        ("last_drift_items", Array),
        ("agent_version", Str),
        ("agent_outdated", Str),
        ("agent_upgrade_failure", Str),
    ];
    let top_fields = [
        ("cluster", Str),
        ("heartbeat_interval_ms", Uint),
        ("nodes", Array),
    ];
    let lab_only = ["provider", "netns", "docker_socket", "root_prefix"];
    let database_fields = [
        "database",
        "kind",
        "servers",
        "connected",
        "leader",
        "healthy",
        "error",
        "peer_tls",
        "auth",
        "tables",
        "hosts",
        "server",
        "host",
        "restarts",
        "at_unix_ms",
        "exit_code",
        "oom",
    ];
    let feature_fields = [("available", Bool), ("detail", Str)];
    let interface_fields = [("name", Str), ("addresses", Array)];
    let item_fields = ["item", "outcome", "reason", "diff"];
    let features = ["vxlan", "overlay", "br_netfilter", "ip_vs"];

    // The test's lists and docs/json.md's example name the same fields.
    let text = json_doc();
    let documented = doc_status_keys(&doc_section(&text, "`ctl status --json`"));
    let listed: std::collections::BTreeSet<String> = top_fields
        .iter()
        .chain(&node_fields)
        .chain(&feature_fields)
        .chain(&interface_fields)
        .map(|(n, _)| *n)
        .chain(lab_only)
        .chain(database_fields)
        .chain(item_fields)
        .chain(features)
        .map(str::to_string)
        .collect();
    assert_eq!(documented, listed, "docs/json.md, ctl status --json");

    assert_fields("status", &status, &top_fields);
    assert_eq!(status["heartbeat_interval_ms"], 300);
    assert_eq!(status["cluster"], "test");
    let node = &status["nodes"][0];
    assert_fields("node", node, &node_fields);
    assert_eq!(
        (&node["name"], &node["state"]),
        (&"bee-1".into(), &"ready".into())
    );
    let last_seen = node["last_seen_unix_ms"].as_u64().expect("u64");
    assert!(
        (before.as_millis() as u64..=now.as_millis() as u64).contains(&last_seen),
        "last_seen_unix_ms {last_seen} not between {before:?} and {now:?}"
    );
    let enrolled = node["enrolled_unix"].as_u64().expect("u64");
    assert!(
        (before.as_secs()..=now.as_secs()).contains(&enrolled),
        "enrolled_unix {enrolled}"
    );
    assert!(
        node["cert_not_after_unix"].as_u64().expect("u64") > now.as_secs(),
        "{node}"
    );
    assert!(!node["cert_serial"].as_str().expect("str").is_empty());
    assert!(!node["kernel"].as_str().expect("str").is_empty());
    assert_eq!(node["config_state"], "unmanaged", "no [host] section");
    let kernel_features = node["kernel_features"].as_object().expect("object");
    assert_eq!(
        kernel_features.keys().collect::<Vec<_>>().len(),
        features.len(),
        "{node}"
    );
    for f in features {
        assert_fields(
            &format!("kernel_features.{f}"),
            &kernel_features[f],
            &feature_fields,
        );
    }
    let interfaces = node["interfaces"].as_array().expect("array");
    assert!(!interfaces.is_empty(), "no interfaces: {node}");
    for i in interfaces {
        assert_fields("interface", i, &interface_fields);
        for a in i["addresses"].as_array().expect("array") {
            a.as_str()
                .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                .unwrap_or_else(|| panic!("not an address: {a}"));
        }
    }

    // `ctl events --json`: one object per line with docs/json.md's fields.
    let section = doc_section(&text, "JSON output of the other read commands");
    for field in ["at_unix_ms", "kind", "node", "message"] {
        assert!(
            section
                .lines()
                .any(|l| l.contains("`ctl events --json`") && l.contains(&format!("`{field}`"))),
            "docs/json.md does not document events' {field}"
        );
    }
    let lines = eventually("bee-1's events", Duration::from_secs(10), || {
        let text = events.log_text();
        text.contains("node_connected").then_some(text)
    });
    let mut kinds = Vec::new();
    for line in lines.lines() {
        let e: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert_fields(
            "event",
            &e,
            &[
                ("at_unix_ms", Uint),
                ("kind", Str),
                ("node", Str),
                ("message", Str),
            ],
        );
        let at = e["at_unix_ms"].as_u64().expect("u64");
        assert!(
            at > 1_600_000_000_000 && at <= now.as_millis() as u64 + 1000,
            "{e}"
        );
        kinds.push((
            e["kind"].as_str().unwrap_or("").to_string(),
            e["node"].clone(),
        ));
    }
    for kind in ["node_enrolled", "node_connected"] {
        assert!(
            kinds.iter().any(|(k, n)| k == kind && n == "bee-1"),
            "no {kind} for bee-1: {kinds:?}"
        );
    }
    assert!(
        lines
            .lines()
            .any(|l| l.contains("node_enrolled") && !l.contains("\"message\":\"\"")),
        "events carry a message: {lines}"
    );

    // `ctl checks --json` (no checks yet on a manual cluster without Swarm).
    let out = c.ctl(&["checks", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("checks json");
    let check_fields = [
        ("phase", Str),
        ("at_unix_ms", Uint),
        ("hosts", Uint),
        ("ok", Bool),
        ("swarm_error", Str),
        ("failures", Array),
        ("cells", Array),
        ("pre_swarm_cells", Array),
    ];
    for (field, kind) in check_fields {
        let doc = if kind == Array {
            format!("`{field}[]`")
        } else {
            format!("`{field}`")
        };
        assert!(
            section.contains(&doc),
            "docs/json.md does not document checks' {doc}"
        );
    }
    assert_fields("checks", &checks, &check_fields);
    assert_eq!(
        (&checks["phase"], &checks["ok"]),
        (&"none".into(), &false.into())
    );
}

#[test]
fn json_logs_are_one_object_per_line_and_lines_about_a_host_name_it() {
    let c = Coordinator::start_with("heartbeat_interval = \"300ms\"", &["--log-format", "json"]);
    let token = c.token();
    let mut agent_cmd = Command::new(bin("agent"));
    agent_cmd
        .args([
            "--coordinator",
            &c.endpoint(),
            "--name",
            "bee-1",
            "--state-dir",
        ])
        .arg(c.dir.path().join("agent-bee-1"))
        .args(["--log-format", "json"])
        .env("APIARY_JOIN_TOKEN", &token);
    let agent = Proc::spawn(agent_cmd, &c.dir.path().join("agent.log"));
    c.wait_ready("bee-1", Duration::from_secs(15));
    // A frozen agent keeps its session but stops heartbeating: a warning
    // about the host, then (thawed) its recovery.
    agent.signal(nix::sys::signal::Signal::SIGSTOP);
    let coordinator = c.proc.as_ref().expect("coordinator");
    eventually("the down warning logged", Duration::from_secs(10), || {
        coordinator.log_text().contains("node down").then_some(())
    });
    agent.signal(nix::sys::signal::Signal::SIGCONT);
    let log = eventually("bee-1 ready again", Duration::from_secs(10), || {
        let t = coordinator.log_text();
        t.contains("node ready again").then_some(t)
    });

    let parse = |log: &str, program: &str| -> Vec<serde_json::Value> {
        log.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{program}: not a JSON line ({e}): {l:?}"));
                assert!(
                    v["timestamp"].is_string()
                        && v["level"].is_string()
                        && v["fields"]["message"].is_string(),
                    "{program}: no timestamp, level or message: {l}"
                );
                v
            })
            .collect()
    };
    let lines = parse(&log, "coordinator");
    let names_bee = |v: &serde_json::Value| {
        v["fields"]["node"] == "bee-1"
            || v["span"]["node"] == "bee-1"
            || v["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["node"] == "bee-1"))
    };
    // Every line about bee-1 names it in a field (not only in its text).
    for v in lines.iter().filter(|v| v.to_string().contains("bee-1")) {
        assert!(names_bee(v), "a line about bee-1 without a node field: {v}");
    }
    let with = |message: &str| {
        lines
            .iter()
            .find(|v| v["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {log}"))
    };
    let enrolled = with("node enrolled");
    assert_eq!(enrolled["fields"]["node"], "bee-1", "{enrolled}");
    assert_eq!(enrolled["level"], "INFO");
    let down = lines
        .iter()
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("node down"))
        })
        .expect("node down line");
    assert_eq!(
        (&down["fields"]["node"], &down["level"]),
        (&"bee-1".into(), &"WARN".into())
    );
    assert_eq!(with("node ready again")["fields"]["node"], "bee-1");
    // Progress is a log event too: the host's line, with phase and node.
    assert!(
        lines.iter().any(|v| v["fields"]["phase"] == "hosts"
            && v["fields"]["node"] == "bee-1"
            && v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("enrolled"))),
        "no progress event for bee-1: {log}"
    );
    assert!(!log.contains("[  "), "a plain progress line: {log}");

    // The agent's own log: JSON too, its enrollment naming the node.
    let agent_lines = parse(&agent.log_text(), "agent");
    assert!(
        agent_lines
            .iter()
            .any(|v| v["fields"]["message"] == "enrolled" && v["fields"]["node"] == "bee-1"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn database_credentials_are_a_password_or_a_short_lived_certificate_and_refused_without_a_database()
{
    // RethinkDB: the generated admin password, the same on every call and
    // across a restart, written 0600 with --out.
    let mut c = Coordinator::start("\n[swarm]\n[database]\nkind = \"rethinkdb\"");
    let out = c.ctl(&["database", "credentials", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (v["kind"].as_str(), v["user"].as_str()),
        (Some("rethinkdb"), Some("admin"))
    );
    let password = v["password"].as_str().expect("password").to_string();
    assert!(password.len() == 32 && password.chars().all(|ch| ch.is_ascii_alphanumeric()));
    c.restart();
    let out = c.ctl(&["database", "credentials"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with(&format!("user: admin\npassword: {password}\n")),
        "{text}"
    );

    // etcd: a client certificate from the cluster CA, new on every call;
    // without --out (or --json) the command says how to get it.
    let c = Coordinator::start("\n[swarm]\n[database]\nkind = \"etcd\"");
    let out = c.ctl(&["database", "credentials"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("--out DIR"), "{}", stderr(&out));
    let dir = c.dir.path().join("creds");
    let out = c.ctl(&[
        "database",
        "credentials",
        "--out",
        dir.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pem = std::fs::read_to_string(dir.join("client.pem")).expect("client.pem");
    let names = apiary_certs::certificate_names(&pem).expect("a certificate");
    assert_eq!(
        names,
        ["apiary-database-client"],
        "the client certificate's name"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("client.key"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = c.ctl(&["database", "credentials", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
    let first = std::fs::read_to_string(dir.join("client.pem")).expect("cert");
    assert_ne!(
        v["cert_pem"].as_str(),
        Some(first.as_str()),
        "a new certificate per call"
    );

    // No database, or auth turned off: refused (exit 1), saying why.
    for (extra, why) in [
        ("", "no [database] section"),
        (
            "\n[swarm]\n[database]\nkind = \"etcd\"\nauth = false",
            "auth = false",
        ),
    ] {
        let c = Coordinator::start(extra);
        let out = c.ctl(&["database", "credentials"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
    }
}
