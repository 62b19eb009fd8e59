//! `ctl docker`, `ctl docker-proxy`, `ctl docker-env`: the operator's own
//! Docker CLI against the swarm, with no Docker port on TCP and no SSH.
//!
//! A local unix socket (0600, in a 0700 directory of the user's runtime
//! directory) stands in for the engine's: every connection to it becomes one
//! tunnel stream ctl ⇄ coordinator ⇄ agent ⇄ the engine's socket on a host
//! (a Swarm manager's, chosen per connection by the coordinator, or
//! `--node`'s). The Docker CLI sees a plain engine at `DOCKER_HOST`, so
//! everything it does works unchanged: streams (`logs -f`, `events`),
//! hijacked connections (`exec -it`, `attach`: the tunnel carries bytes and
//! half-closes, not HTTP), uploads (`load`, build contexts).
//!
//! - `ctl docker [--node N] -- ARGS` serves a socket of its own for one run
//!   of `docker ARGS` and exits with docker's code (`kubectl exec` style).
//! - `ctl docker-proxy` serves a socket in the foreground (`kubectl proxy`).
//! - `ctl docker-env` is docker-machine's `env`: it starts a proxy in the
//!   background if none serves the cluster's socket, and prints the
//!   `export DOCKER_HOST=…` to `eval`; `--unset` undoes both.

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use apiary_certs::AdminConf;
use apiary_proto::tunnel::Target;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::UnixListener;

use crate::commands::CtlError;
use crate::tunnel::TunnelCtl;

/// Environment a child `docker` must not see: each would point it somewhere
/// else than the socket it is given (a context, TLS to a TCP engine).
const DOCKER_ENV_CLEARED: [&str; 4] = [
    "DOCKER_CONTEXT",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS",
];

/// The engine target: `node`'s engine, or (None) a manager's.
pub fn engine_target(node: Option<&str>) -> Target {
    Target {
        node: node.unwrap_or_default().to_string(),
        engine: true,
        session: session_id(),
        ..Default::default()
    }
}

/// Names this run in the coordinator's events: unique enough per machine
/// and moment; not a secret (the admin certificate is the credential).
fn session_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos:x}", std::process::id())
}

/// The directory ctl's sockets live in: `$XDG_RUNTIME_DIR/apiary`, else
/// `/tmp/apiary-UID`; created 0700, and refused if someone else owns it or
/// can enter it (the socket behind it is the swarm's root).
pub fn runtime_dir() -> Result<PathBuf, CtlError> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("apiary"),
        None => PathBuf::from(format!("/tmp/apiary-{}", nix::unistd::geteuid())),
    };
    private_dir(&dir)?;
    Ok(dir)
}

fn private_dir(dir: &Path) -> Result<(), CtlError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        // Exactly 0700 whatever the umask is (the mode above is masked by
        // it, and `bind_private` narrows the process's umask while it binds,
        // which another thread may be doing right now).
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| CtlError::Failed(format!("cannot make {} private: {e}", dir.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(CtlError::Failed(format!(
                "cannot create {}: {e}",
                dir.display()
            )));
        }
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| CtlError::Failed(format!("{}: {e}", dir.display())))?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o077 != 0 {
        return Err(CtlError::Failed(format!(
            "{} is not a private directory of this user (it must be a directory owned by uid {me}, mode 0700); remove it or set XDG_RUNTIME_DIR",
            dir.display()
        )));
    }
    Ok(())
}

/// A socket name for a cluster and node (`lab.sock`, `lab-bee-2.sock`).
pub fn socket_name(cluster: &str, node: Option<&str>) -> String {
    match node {
        Some(n) => format!("{cluster}-{n}.sock"),
        None => format!("{cluster}.sock"),
    }
}

/// Binds `path` 0600. A stale socket (nothing answers) is replaced; a live
/// one is someone else's endpoint and is refused.
pub async fn bind_private(path: &Path) -> Result<UnixListener, CtlError> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(CtlError::Failed(format!(
                "{} is already served (another `ctl docker-proxy`?); stop it first (`eval $(ctl docker-env --unset)`) or choose another --socket",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| CtlError::Failed(format!("removing stale {}: {e}", path.display())))?;
    }
    // Created 0600 (not chmod-ed after the fact: in between, another user
    // could connect). The umask is the process's, but nothing else in ctl
    // creates files while this runs.
    use nix::sys::stat::{Mode, umask};
    let before = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(before);
    let listener =
        bound.map_err(|e| CtlError::Failed(format!("cannot listen on {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| CtlError::Failed(format!("chmod 0600 {}: {e}", path.display())))?;
    Ok(listener)
}

/// The operator's `docker` on PATH.
pub fn docker_cli() -> Result<PathBuf, CtlError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("docker"))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .ok_or_else(|| {
            CtlError::Unavailable(
                "no `docker` on PATH: ctl docker runs your own Docker CLI (install Docker's CLI, e.g. the docker-ce-cli or docker.io package); or serve the API with `ctl docker-proxy` for any client"
                    .into(),
            )
        })
}

/// Removes a socket file when dropped (the endpoint's lifetime).
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `ctl docker [--node N] -- ARGS`: docker's exit code, or 128 + the signal
/// that ended it, as a shell reports it.
pub async fn run(conf: &AdminConf, node: Option<&str>, args: &[OsString]) -> Result<i32, CtlError> {
    let docker = docker_cli()?;
    let tunnel = TunnelCtl::new(conf, engine_target(node))?;
    // One connection first, so that a refusal (no manager answers, engine
    // access off) is ctl's clear error rather than docker's "Cannot connect
    // to the Docker daemon".
    tunnel.check().await?;
    let path = runtime_dir()?.join(format!("docker-{}.sock", std::process::id()));
    let listener = bind_private(&path).await?;
    let _unlink = Unlink(path.clone());
    let serving = tokio::spawn(tunnel.serve_unix(listener));
    let mut cmd = tokio::process::Command::new(&docker);
    cmd.args(args)
        .env("DOCKER_HOST", format!("unix://{}", path.display()))
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    for var in DOCKER_ENV_CLEARED {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| CtlError::Failed(format!("cannot run {}: {e}", docker.display())))?;
    let status = wait_forwarding_signals(&mut child).await?;
    serving.abort();
    Ok(exit_code_of(status))
}

/// Waits for `child`. Ctrl-C reaches docker from the terminal (same process
/// group) and docker decides what it means (`logs -f` stops, `exec -it`
/// passes it on), so ctl only keeps serving; SIGTERM and SIGHUP, sent to ctl
/// alone, are passed to docker.
async fn wait_forwarding_signals(
    child: &mut tokio::process::Child,
) -> Result<std::process::ExitStatus, CtlError> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |kind| {
        signal(kind).map_err(|e| CtlError::Failed(format!("installing a signal handler: {e}")))
    };
    let (mut int, mut term, mut hup) = (
        sig(SignalKind::interrupt())?,
        sig(SignalKind::terminate())?,
        sig(SignalKind::hangup())?,
    );
    let pid = child.id().map(|p| Pid::from_raw(p as i32));
    loop {
        tokio::select! {
            status = child.wait() => {
                return status.map_err(|e| CtlError::Failed(format!("waiting for docker: {e}")));
            }
            _ = int.recv() => {}
            _ = term.recv() => forward(pid, Signal::SIGTERM),
            _ = hup.recv() => forward(pid, Signal::SIGHUP),
        }
    }
}

fn forward(pid: Option<Pid>, signal: Signal) {
    if let Some(pid) = pid {
        let _ = kill(pid, signal);
    }
}

fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// `ctl docker-proxy`: serves `path` until interrupted, then removes it.
pub async fn proxy(conf: &AdminConf, node: Option<&str>, path: &Path) -> Result<(), CtlError> {
    let tunnel = TunnelCtl::new(conf, engine_target(node))?;
    tunnel.check().await?;
    let listener = bind_private(path).await?;
    let _unlink = Unlink(path.to_path_buf());
    let pidfile = PidFile::write(path)?;
    println!("export DOCKER_HOST=unix://{}", path.display());
    eprintln!(
        "ctl: serving the {} Docker API on {} (Ctrl-C to stop)",
        match node {
            Some(n) => format!("{n}'s"),
            None => "swarm's".into(),
        },
        path.display()
    );
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CtlError::Failed(format!("installing a signal handler: {e}")))?;
    let served = tokio::select! {
        r = tunnel.serve_unix(listener) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    };
    drop(pidfile);
    served
}

/// `SOCKET.pid`, naming the proxy serving SOCKET (for `docker-env --unset`).
struct PidFile(PathBuf);

impl PidFile {
    fn path(socket: &Path) -> PathBuf {
        let mut p = socket.as_os_str().to_owned();
        p.push(".pid");
        PathBuf::from(p)
    }

    fn write(socket: &Path) -> Result<Self, CtlError> {
        let path = Self::path(socket);
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .map_err(|e| CtlError::Failed(format!("writing {}: {e}", path.display())))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What `docker-env` prints for `shell`-style eval.
pub fn env_lines(socket: &Path, unset: bool) -> String {
    if unset {
        "unset DOCKER_HOST\n# Run this command to configure your shell:\n# eval $(ctl docker-env --unset)\n"
            .to_string()
    } else {
        format!(
            "export DOCKER_HOST=\"unix://{}\"\n# Run this command to configure your shell:\n# eval $(ctl docker-env)\n",
            socket.display()
        )
    }
}

/// `ctl docker-env`: makes sure a background proxy serves the cluster's
/// socket, then prints the lines to eval. `--unset`: stops that proxy.
pub async fn env(
    conf: &AdminConf,
    config_path: &Path,
    node: Option<&str>,
    unset: bool,
) -> Result<String, CtlError> {
    let socket = runtime_dir()?.join(socket_name(&conf.cluster, node));
    if unset {
        stop_proxy(&socket)?;
        return Ok(env_lines(&socket, true));
    }
    if tokio::net::UnixStream::connect(&socket).await.is_err() {
        start_proxy(config_path, node, &socket).await?;
    }
    Ok(env_lines(&socket, false))
}

/// Starts `ctl docker-proxy` for `socket` in its own process group (the
/// terminal's Ctrl-C is not for it), logging beside the socket, and waits
/// until the socket answers.
async fn start_proxy(
    config_path: &Path,
    node: Option<&str>,
    socket: &Path,
) -> Result<(), CtlError> {
    let me = std::env::current_exe()
        .map_err(|e| CtlError::Failed(format!("finding ctl's own binary: {e}")))?;
    let mut log_path = socket.as_os_str().to_owned();
    log_path.push(".log");
    let log_path = PathBuf::from(log_path);
    let log = std::fs::File::create(&log_path)
        .map_err(|e| CtlError::Failed(format!("creating {}: {e}", log_path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(|e| CtlError::Failed(format!("{}: {e}", log_path.display())))?;
    let mut cmd = std::process::Command::new(me);
    cmd.arg("--config")
        .arg(config_path)
        .arg("docker-proxy")
        .arg("--socket")
        .arg(socket);
    if let Some(n) = node {
        cmd.args(["--node", n]);
    }
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| CtlError::Failed(format!("starting ctl docker-proxy: {e}")))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(_)) = child.try_wait() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let why = text
                .lines()
                .rev()
                .find(|l| l.starts_with("ctl:"))
                .unwrap_or("it exited")
                .trim_start_matches("ctl: ");
            return Err(CtlError::Failed(format!(
                "the docker proxy did not start: {why} (log: {})",
                log_path.display()
            )));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CtlError::Failed(format!(
                "the docker proxy did not start serving {} within 30 s (log: {})",
                socket.display(),
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops the proxy serving `socket`, if one does: the PID its pid file
/// names, and only if that process is a `ctl docker-proxy` for this very
/// socket (a PID may have been reused since).
fn stop_proxy(socket: &Path) -> Result<(), CtlError> {
    let pidfile = PidFile::path(socket);
    let Ok(text) = std::fs::read_to_string(&pidfile) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Ok(());
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args.iter().any(|a| *a == b"docker-proxy")
        && args.contains(&socket.as_os_str().as_encoded_bytes());
    if ours {
        kill(Pid::from_raw(pid), Signal::SIGTERM)
            .map_err(|e| CtlError::Failed(format!("stopping the docker proxy (PID {pid}): {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_targets_name_a_session_and_optionally_a_node() {
        let t = engine_target(None);
        assert!(t.engine && t.node.is_empty() && !t.session.is_empty());
        assert_eq!(engine_target(Some("bee-2")).node, "bee-2");
    }

    #[test]
    fn socket_names_follow_cluster_and_node() {
        assert_eq!(socket_name("lab", None), "lab.sock");
        assert_eq!(socket_name("lab", Some("bee-2")), "lab-bee-2.sock");
    }

    #[test]
    fn env_lines_export_or_unset_docker_host() {
        let s = env_lines(Path::new("/run/user/0/apiary/lab.sock"), false);
        assert!(s.starts_with("export DOCKER_HOST=\"unix:///run/user/0/apiary/lab.sock\"\n"));
        assert!(env_lines(Path::new("/x"), true).starts_with("unset DOCKER_HOST\n"));
    }

    #[test]
    fn private_dirs_are_created_0700_and_others_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("apiary");
        private_dir(&dir).expect("created");
        let mode = std::fs::metadata(&dir).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let e = private_dir(&dir).expect_err("open to others");
        assert!(e.to_string().contains("not a private directory"), "{e}");
    }

    #[tokio::test]
    async fn a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("s.sock");
        let live = bind_private(&path).await.expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = bind_private(&path).await.expect_err("live");
        assert!(e.to_string().contains("already served"), "{e}");
        drop(live);
        bind_private(&path).await.expect("stale socket replaced");
    }

    #[test]
    fn exit_codes_pass_through_and_signals_are_128_plus() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code_of(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code_of(std::process::ExitStatus::from_raw(9)), 137);
    }
}
