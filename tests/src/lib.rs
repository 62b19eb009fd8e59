//! Support for apiary's end-to-end tests: run the real `coordinator`, `agent`
//! and `ctl` binaries as processes, on loopback or in the lab, and read what a
//! user would read (`ctl status --json`, exit codes, stderr).
//!
//! Every process started here is remembered by PID and killed when its handle
//! drops; nothing is ever killed by name.

pub mod dosim;
pub mod simworld;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Directory holding the workspace's binaries (next to the test executable's `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`)",
        path.display()
    );
    path
}

/// Polls `f` until it returns Some or the deadline passes (never a bare sleep).
pub fn eventually<T>(what: &str, within: Duration, f: impl FnMut() -> Option<T>) -> T {
    eventually_or(what, within, f, String::new)
}

/// As [`eventually`], with `context` (logs, say) in the failure message.
pub fn eventually_or<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= within {
            panic!(
                "timed out after {within:?} waiting for: {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed (SIGKILL, by PID) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: &Path) -> Proc {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("dup log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn");
        Proc {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Exit code if it has exited.
    pub fn try_exit(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .map(|s| s.code().unwrap_or(-1))
    }

    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        eventually("process exit", within, || self.try_exit())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A coordinator (real binary) with its own state directory on loopback.
pub struct Coordinator {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub state: PathBuf,
    pub proc: Option<Proc>,
    /// Where `serve` listens: 127.0.0.1 unless a test moves it (any
    /// address in 127/8 is loopback on Linux).
    pub ip: std::net::Ipv4Addr,
    pub port: u16,
    pub serve_args: Vec<String>,
}

pub fn free_port() -> u16 {
    free_port_on(std::net::Ipv4Addr::LOCALHOST)
}

/// A port free on `ip` now.
pub fn free_port_on(ip: std::net::Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Coordinator {
    /// `extra` is appended to the [coordinator] section.
    pub fn start(extra: &str) -> Coordinator {
        Self::start_with(extra, &[])
    }

    /// As [`Coordinator::start`], with extra `serve` arguments.
    pub fn start_with(extra: &str, serve_args: &[&str]) -> Coordinator {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("cluster.toml");
        std::fs::write(
            &config,
            format!("[cluster]\nname = \"test\"\n\n[coordinator]\n{extra}\n\n[provider]\nkind = \"manual\"\n"),
        )
        .expect("write config");
        let state = dir.path().join("state");
        let mut c = Coordinator {
            config,
            state,
            proc: None,
            ip: std::net::Ipv4Addr::LOCALHOST,
            port: free_port(),
            dir,
            serve_args: serve_args.iter().map(|s| s.to_string()).collect(),
        };
        c.restart();
        c
    }

    pub fn restart(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
        let mut cmd = Command::new(bin("coordinator"));
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state);
        cmd.args(["--listen", &self.endpoint()]);
        cmd.args(&self.serve_args);
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        self.proc = Some(Proc::spawn(
            cmd,
            &self.dir.path().join(format!("coordinator-{n}.log")),
        ));
        let (ip, port) = (self.ip, self.port);
        eventually("coordinator listening", Duration::from_secs(20), || {
            (self.admin_conf().exists() && std::net::TcpStream::connect((ip, port)).is_ok())
                .then_some(())
        });
    }

    pub fn admin_conf(&self) -> PathBuf {
        self.state.join("admin.conf")
    }

    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn token(&self) -> String {
        let out = Command::new(bin("coordinator"))
            .args(["token", "--state-dir"])
            .arg(&self.state)
            .output()
            .expect("token");
        assert!(
            out.status.success(),
            "coordinator token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn rotate_token(&self) -> String {
        let out = Command::new(bin("coordinator"))
            .args(["token", "--rotate", "--state-dir"])
            .arg(&self.state)
            .output()
            .expect("token");
        assert!(
            out.status.success(),
            "coordinator token --rotate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl_with(&self.admin_conf(), args)
    }

    /// `ctl status --json`, parsed.
    pub fn status(&self) -> Value {
        let out = self.ctl(&["status", "--json"]);
        assert!(
            out.status.success(),
            "ctl status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.status()["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
    }

    pub fn node_state(&self, name: &str) -> Option<String> {
        self.node(name)
            .and_then(|n| n["state"].as_str().map(str::to_string))
    }

    pub fn agent(&self, name: &str, token: Option<&str>) -> Agent {
        let state = self.dir.path().join(format!("agent-{name}"));
        Agent::start(&self.endpoint(), token, &state, name)
    }

    /// Waits until `name`'s agent has a live session (`ready` in `ctl status`).
    pub fn wait_ready(&self, name: &str, within: Duration) {
        eventually(&format!("{name} ready"), within, || {
            (self.node_state(name)? == "ready").then_some(())
        });
    }

    /// An agent enrolled with the current join token, once it is ready.
    pub fn ready_agent(&self, name: &str) -> Agent {
        let agent = self.agent(name, Some(&self.token()));
        self.wait_ready(name, Duration::from_secs(15));
        agent
    }
}

/// `ctl tunnel TARGET` with `conf` on a free local port, once it says it
/// is forwarding: the process (dropped: stopped) and the port. Its log goes
/// into `log_dir`.
pub fn ctl_tunnel(conf: &Path, target: &str, log_dir: &Path) -> (Proc, u16) {
    let local = free_port();
    let mut cmd = Command::new(bin("ctl"));
    cmd.arg("--config").arg(conf).args([
        "tunnel",
        target,
        "--local",
        &format!("127.0.0.1:{local}"),
    ]);
    let tunnel = Proc::spawn(cmd, &log_dir.join(format!("tunnel-{local}.log")));
    eventually(
        &format!("ctl tunnel {target} forwarding"),
        Duration::from_secs(30),
        || tunnel.log_text().contains("forwarding").then_some(()),
    );
    (tunnel, local)
}

/// GET `path` from etcd through a tunnel at `port`, with the client
/// certificate `ctl database credentials --out DIR` wrote into `creds`:
/// the body, or curl's own words.
pub fn etcd_get(creds: &Path, port: u16, path: &str) -> Result<String, String> {
    let file = |f: &str| creds.join(f).display().to_string();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--max-time",
            "30",
            "--cacert",
            &file("ca.pem"),
        ])
        .args(["--cert", &file("client.pem"), "--key", &file("client.key")])
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn ctl_with(conf: &Path, args: &[&str]) -> Output {
    Command::new(bin("ctl"))
        .arg("--config")
        .arg(conf)
        .args(args)
        .output()
        .expect("ctl")
}

/// An agent process with its own state directory.
pub struct Agent {
    pub name: String,
    pub state: PathBuf,
    pub endpoint: String,
    pub proc: Proc,
}

impl Agent {
    pub fn start(endpoint: &str, token: Option<&str>, state: &Path, name: &str) -> Agent {
        Self::start_with(endpoint, token, state, name, &[])
    }

    /// As [`Agent::start`], with extra command-line arguments.
    pub fn start_with(
        endpoint: &str,
        token: Option<&str>,
        state: &Path,
        name: &str,
        extra: &[&str],
    ) -> Agent {
        let mut cmd = Command::new(bin("agent"));
        cmd.args(["--coordinator", endpoint, "--name", name, "--state-dir"])
            .arg(state)
            .args(extra);
        cmd.env("APIARY_JOIN_TOKEN", token.unwrap_or(""));
        if token.is_none() {
            cmd.env_remove("APIARY_JOIN_TOKEN");
        }
        let parent = state.parent().expect("parent");
        let n = std::fs::read_dir(parent).map(|d| d.count()).unwrap_or(0);
        let proc = Proc::spawn(cmd, &parent.join(format!("agent-{name}-{n}.log")));
        Agent {
            name: name.to_string(),
            state: state.to_path_buf(),
            endpoint: endpoint.to_string(),
            proc,
        }
    }

    pub fn restart(&mut self, token: Option<&str>) {
        self.proc.kill9();
        *self = Agent::start(
            &self.endpoint.clone(),
            token,
            &self.state.clone(),
            &self.name.clone(),
        );
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A lab cluster run by the real `coordinator serve` (root only): network
/// namespace hosts with their own Docker engines and agents. Torn down with
/// `coordinator teardown` when dropped, even if the test failed.
pub struct LabCluster {
    pub dir: tempfile::TempDir,
    pub cluster: String,
    pub config: PathBuf,
    pub state: PathBuf,
    pub hosts: Vec<String>,
    pub coordinator: Option<Proc>,
}

/// Only one lab can exist on a machine (fixed bridges and ranges): lab tests
/// in one binary take this lock, and labs in other processes wait on the lab
/// crate's own file lock.
pub static LAB_SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "lab tests need root (they make network namespaces and run Docker engines): run the README's test command as root"
    );
}

impl LabCluster {
    /// Writes the config; `extra_coordinator` goes into [coordinator].
    pub fn new(cluster: &str, hosts: usize, extra_coordinator: &str) -> LabCluster {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("lab.toml");
        std::fs::write(
            &config,
            format!(
                "[cluster]\nname = \"{cluster}\"\n\n[coordinator]\nheartbeat_interval = \"1s\"\n{extra_coordinator}\n\n[provider]\nkind = \"lab\"\nhosts = {hosts}\nagent_binary = \"{}\"\n",
                bin("agent").display()
            ),
        )
        .expect("write config");
        let state = dir.path().join("state");
        let names: Vec<String> = ["queenbee".to_string()]
            .into_iter()
            .chain((1..hosts).map(|i| format!("workerbee-{i}")))
            .collect();
        let lab = LabCluster {
            dir,
            cluster: cluster.to_string(),
            config,
            state,
            hosts: names,
            coordinator: None,
        };
        // A lab left by an earlier, killed run would be adopted; start clean.
        lab.teardown();
        lab
    }

    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// As [`LabCluster::start`], with extra `serve` arguments.
    pub fn start_with(&mut self, serve_args: &[&str]) {
        let mut cmd = Command::new(bin("coordinator"));
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .args(serve_args);
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        self.coordinator = Some(Proc::spawn(
            cmd,
            &self.dir.path().join(format!("coordinator-{n}.log")),
        ));
    }

    pub fn log(&self) -> String {
        self.coordinator
            .as_ref()
            .map(Proc::log_text)
            .unwrap_or_default()
    }

    pub fn admin_conf(&self) -> PathBuf {
        self.state.join("admin.conf")
    }

    /// `ctl ARGS` with this lab's admin.conf.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl_with(&self.admin_conf(), args)
    }

    /// `ctl status --json`, or None while the coordinator is not answering.
    pub fn status(&self) -> Option<Value> {
        if !self.admin_conf().exists() {
            return None;
        }
        let out = ctl_with(&self.admin_conf(), &["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.status()?["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
    }

    pub fn wait_all_ready(&self, within: Duration) -> Value {
        eventually(
            &format!("all {} lab hosts ready", self.hosts.len()),
            within,
            || {
                let s = self.status()?;
                let nodes = s["nodes"].as_array()?;
                (self.hosts.iter().all(|h| {
                    nodes
                        .iter()
                        .any(|n| n["name"] == *h && n["state"] == "ready")
                }))
                .then_some(s)
            },
        )
    }

    pub fn run_dir(&self, host: &str) -> PathBuf {
        PathBuf::from(format!("/run/apiary/{}/{host}", self.cluster))
    }

    /// PID of a lab process (dockerd, agent) of `host` from its pidfile.
    pub fn pid(&self, host: &str, name: &str) -> Option<i32> {
        let text =
            std::fs::read_to_string(self.run_dir(host).join("pids").join(format!("{name}.pid")))
                .ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    pub fn netns(&self, host: &str) -> String {
        format!("{}.{host}", self.cluster)
    }

    pub fn teardown(&self) -> Output {
        Command::new(bin("coordinator"))
            .args(["teardown", "--config"])
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .output()
            .expect("teardown")
    }

    /// Kills the coordinator with SIGKILL (by its PID), as a crash would.
    pub fn kill_coordinator(&mut self) {
        if let Some(mut p) = self.coordinator.take() {
            p.kill9();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.coordinator.take() {
            p.signal(nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while p.try_exit().is_none() {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "coordinator did not stop on SIGTERM:\n{}",
                    p.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for LabCluster {
    fn drop(&mut self) {
        if let Some(mut p) = self.coordinator.take() {
            p.kill9();
        }
        let _ = self.teardown();
    }
}

/// Runs a command and returns (success, stdout).
pub fn sh(argv: &[&str]) -> (bool, String) {
    match Command::new(argv[0]).args(&argv[1..]).output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        ),
        Err(_) => (false, String::new()),
    }
}

pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Byte `i` of every body [`sized_http_server`] sends: a pattern with a
/// prime period, so a dropped, repeated or shifted chunk shows.
pub fn body_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// Serves `GET /N` with N bytes of [`body_byte`], HTTP/1.0, a thread per
/// connection; the port on 127.0.0.1. Bodies are written from one block
/// built once (a whole number of periods, so blocks follow each other
/// without a seam): fast enough to measure a tunnel, exact enough to check
/// one byte for byte.
pub fn sized_http_server() -> u16 {
    use std::io::{Read, Write};
    const PERIODS: usize = 4177; // 4177 × 251 bytes ≈ 1 MiB
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let block: std::sync::Arc<Vec<u8>> =
        std::sync::Arc::new((0..251 * PERIODS).map(body_byte).collect());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let block = block.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let _ = conn.set_nodelay(true);
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req);
                let n: usize = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.trim_start_matches('/').parse().ok())
                    .unwrap_or(0);
                let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {n}\r\n\r\n");
                let mut sent = 0;
                while sent < n {
                    let k = (n - sent).min(block.len());
                    if conn.write_all(&block[..k]).is_err() {
                        return;
                    }
                    sent += k;
                }
            });
        }
    });
    port
}
