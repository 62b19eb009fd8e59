//! Replacing the agent's own binary (`ctl hosts upgrade`), and putting the
//! old one back when the new one does not come up.
//!
//! The steps, all on this host:
//! 1. [`install`]: the build the coordinator named is downloaded over the
//!    agent's mTLS identity (`FetchAgent`), its length and SHA-256 checked,
//!    written beside the running binary; the running binary is kept as
//!    `<binary>.previous` (a hard link: no copy, and never the same inode
//!    written twice); the upgrade is recorded in the state directory
//!    (`upgrade.json`); a *guard* is started from the previous binary; the
//!    new binary is renamed over the old name (atomic: the path always
//!    holds one whole binary).
//! 2. The agent answers, then `exec`s the new binary with the same
//!    arguments ([`RunEnd::Restart`](crate::RunEnd)): the same PID, so
//!    systemd and the lab's supervision see the same process, and the same
//!    identity and state directory.
//! 3. The new agent confirms ([`confirm`]) once the coordinator has
//!    acknowledged a heartbeat after its hello, i.e. it works with this
//!    version: `upgrade.json` is removed.
//! 4. The guard ([`guard`], `agent --upgrade-guard STATE_DIR`) waits for that.
//!    If the process dies first, or the deadline passes, it renames
//!    `<binary>.previous` back, records why in `upgrade-failed.json`, and
//!    kills the new agent if it still runs; the supervisor (systemd's
//!    `Restart=`, the lab's supervision) then starts the old binary, whose
//!    hello carries the failure ([`take_failure`]) so the coordinator stops
//!    the rollout and names the host and the reason.
//!
//! The guard runs the *old* build because the new one may not run at all.
//! Under systemd it must outlive the agent's main process: the unit sets
//! `KillMode=process`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apiary_api::ops::{UpgradeAgent, UpgradeStarted};
use apiary_proto::FetchAgentRequest;
use apiary_proto::agent_api_client::AgentApiClient;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tracing::{info, warn};

/// The upgrade in progress, in the state directory.
const PENDING: &str = "upgrade.json";
/// The last upgrade this host rolled back, until its hello has said so.
const FAILED: &str = "upgrade-failed.json";
/// The guard's own log (it has no session and no journal of its own).
const GUARD_LOG: &str = "upgrade-guard.log";

/// An upgrade the new agent has not confirmed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub from: String,
    pub to: String,
    /// The binary's path (the new build now, the old one after a rollback).
    pub exe: PathBuf,
    /// The old build, kept for the rollback.
    pub previous: PathBuf,
    /// The agent's process: the same across the `exec`.
    pub pid: u32,
    /// Its start time (clock ticks since boot, /proc/PID/stat field 22), so a
    /// PID reused by another process is not taken for the agent.
    pub pid_start: u64,
    pub started_unix_ms: u64,
    pub deadline_unix_ms: u64,
}

/// An upgrade this host gave up, as its old agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub from: String,
    pub to: String,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the upgrade to {} was rolled back to {}: {}",
            self.to, self.from, self.reason
        )
    }
}

/// Why an upgrade did not start (nothing was changed on the host).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("the coordinator did not send the build: {0}")]
    Fetch(String),
    #[error("the build downloaded is {got} bytes, the coordinator said {expected}")]
    Length { expected: u64, got: u64 },
    #[error("the build downloaded has SHA-256 {got}, the coordinator said {expected}")]
    Digest { expected: String, got: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("this agent cannot find its own binary: {0}")]
    NoExe(std::io::Error),
    #[error("cannot start the upgrade guard from {}: {source}", path.display())]
    Guard {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> UpgradeError + 'a {
    move |source| UpgradeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A process's start time (field 22 of /proc/PID/stat), `None` when it
/// does not exist (or is a zombie: it will never answer again).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after its last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), UpgradeError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| UpgradeError::Io {
        what: "cannot encode",
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    apiary_certs::write_private(path, &json).map_err(|e| UpgradeError::Io {
        what: "cannot write",
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "unreadable upgrade record; ignored");
            None
        }
    }
}

/// Downloads, checks and puts the new build in place, with the guard
/// watching; the caller answers the coordinator and then restarts into
/// `exe` (the path returned with the answer).
pub async fn install(
    state_dir: &Path,
    mut client: AgentApiClient<Channel>,
    op: &UpgradeAgent,
) -> Result<(UpgradeStarted, PathBuf), UpgradeError> {
    let exe = std::env::current_exe().map_err(UpgradeError::NoExe)?;
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "agent".into());
    let new = exe.with_file_name(format!(".{name}.new"));
    let previous = exe.with_file_name(format!("{name}.previous"));

    // 1. The build, to a file beside the binary (same filesystem: the
    // rename is atomic), checked before anything else changes.
    let mut stream = client
        .fetch_agent(FetchAgentRequest {
            sha256: op.sha256.clone(),
        })
        .await
        .map_err(|s| UpgradeError::Fetch(s.message().to_string()))?
        .into_inner();
    let _ = std::fs::remove_file(&new);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&new)
        .map_err(io("cannot create", &new))?;
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    let written: Result<(), UpgradeError> = async {
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| UpgradeError::Fetch(s.message().to_string()))?
        {
            got += chunk.data.len() as u64;
            if got > op.size {
                return Err(UpgradeError::Length {
                    expected: op.size,
                    got,
                });
            }
            hasher.update(&chunk.data);
            file.write_all(&chunk.data)
                .map_err(io("cannot write", &new))?;
        }
        if got != op.size {
            return Err(UpgradeError::Length {
                expected: op.size,
                got,
            });
        }
        let digest = hex::encode(hasher.finalize());
        if digest != op.sha256 {
            return Err(UpgradeError::Digest {
                expected: op.sha256.clone(),
                got: digest,
            });
        }
        file.sync_all().map_err(io("cannot sync", &new))?;
        // The mode again: a umask may have narrowed the one asked at create.
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755))
            .map_err(io("cannot make executable", &new))?;
        Ok(())
    }
    .await;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&new);
        return Err(e);
    }

    // 2. The running build kept for the rollback.
    let _ = std::fs::remove_file(&previous);
    if std::fs::hard_link(&exe, &previous).is_err() {
        std::fs::copy(&exe, &previous).map_err(io("cannot keep the old binary as", &previous))?;
    }

    // 3. Recorded, then watched, then swapped: whatever happens after the
    // swap, the guard knows what to put back.
    let pid = std::process::id();
    let pending = Pending {
        from: apiary_api::version::current().to_string(),
        to: op.version.clone(),
        exe: exe.clone(),
        previous: previous.clone(),
        pid,
        pid_start: process_start(pid).unwrap_or(0),
        started_unix_ms: now_ms(),
        deadline_unix_ms: now_ms() + op.deadline_ms,
    };
    let _ = std::fs::remove_file(state_dir.join(FAILED));
    write_json(&state_dir.join(PENDING), &pending)?;
    if let Err(e) = start_guard(&previous, state_dir) {
        let _ = std::fs::remove_file(state_dir.join(PENDING));
        let _ = std::fs::remove_file(&new);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&new, &exe) {
        // The guard sees the record gone and stops.
        let _ = std::fs::remove_file(state_dir.join(PENDING));
        let _ = std::fs::remove_file(&new);
        return Err(io("cannot put the new binary at", &exe)(e));
    }
    info!(from = %pending.from, to = %pending.to, exe = %exe.display(), "new agent binary in place; restarting into it");
    Ok((
        UpgradeStarted {
            from: pending.from,
            previous: previous.display().to_string(),
        },
        exe,
    ))
}

/// Starts `agent --upgrade-guard` from the previous binary, detached: its
/// own process group (a signal to the agent's group does not reach it) and
/// reparented away from the agent (the child started here only starts the
/// guard and exits, so it is reaped here and leaves no zombie behind the
/// `exec`).
fn start_guard(previous: &Path, state_dir: &Path) -> Result<(), UpgradeError> {
    use std::os::unix::process::CommandExt;
    let guard_err = |source| UpgradeError::Guard {
        path: previous.to_path_buf(),
        source,
    };
    let log_path = state_dir.join(GUARD_LOG);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(io("cannot open", &log_path))?;
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(r#""$0" --upgrade-guard "$1" </dev/null & exit 0"#)
        .arg(previous)
        .arg(state_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(guard_err)?)
        .stderr(log)
        .process_group(0)
        .status()
        .map_err(guard_err)?;
    if !status.success() {
        return Err(guard_err(std::io::Error::other(format!(
            "the shell starting it exited with {status}"
        ))));
    }
    Ok(())
}

/// What this agent finds at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtStart {
    Normal,
    /// This is the new build of an upgrade not yet confirmed.
    OnProbation(Pending),
    /// This build was rolled back (a supervisor started it again before
    /// the old binary was back): it must not run.
    RolledBack(Failure),
}

/// Reads the upgrade records at start.
pub fn at_start(state_dir: &Path) -> AtStart {
    let me = apiary_api::version::current();
    if let Some(pending) = read_json::<Pending>(&state_dir.join(PENDING)) {
        if pending.to == me {
            return AtStart::OnProbation(pending);
        }
        // A record of an upgrade to another build, which this is not:
        // left by an upgrade cut short before its swap.
        warn!(to = %pending.to, "a stale upgrade record; removed");
        let _ = std::fs::remove_file(state_dir.join(PENDING));
    }
    if let Some(failure) = read_json::<Failure>(&state_dir.join(FAILED))
        && failure.to == me
        && failure.from != me
    {
        return AtStart::RolledBack(failure);
    }
    AtStart::Normal
}

/// The new agent works with the coordinator: the guard stands down.
pub fn confirm(state_dir: &Path, pending: &Pending) {
    match std::fs::remove_file(state_dir.join(PENDING)) {
        Ok(()) => info!(from = %pending.from, to = %pending.to, "upgrade confirmed"),
        Err(e) => warn!(error = %e, "cannot remove the upgrade record; the guard may roll back"),
    }
}

/// The failure to report in the hello, if this host rolled one back.
pub fn failure(state_dir: &Path) -> Option<Failure> {
    read_json::<Failure>(&state_dir.join(FAILED))
}

/// The failure was reported (the coordinator acknowledged the session).
pub fn take_failure(state_dir: &Path) {
    let _ = std::fs::remove_file(state_dir.join(FAILED));
}

/// The guard (`agent --upgrade-guard STATE_DIR`, run from the previous
/// binary): waits for the new agent to confirm, or rolls it back. Returns
/// what it did, for its log.
pub fn guard(state_dir: &Path) -> String {
    let Some(pending) = read_json::<Pending>(&state_dir.join(PENDING)) else {
        return "no upgrade pending; nothing to watch".into();
    };
    loop {
        std::thread::sleep(Duration::from_millis(100));
        match read_json::<Pending>(&state_dir.join(PENDING)) {
            None => return format!("the upgrade to {} was confirmed", pending.to),
            Some(p) if p != pending => {
                return "another upgrade replaced the one watched; it has its own guard".into();
            }
            Some(_) => {}
        }
        let alive = process_start(pending.pid) == Some(pending.pid_start);
        let ran = Duration::from_millis(now_ms().saturating_sub(pending.started_unix_ms));
        if !alive {
            return roll_back(
                state_dir,
                &pending,
                format!(
                    "the new agent stopped {:.1} s after it was started, before the coordinator acknowledged it",
                    ran.as_secs_f64()
                ),
                false,
            );
        }
        if now_ms() > pending.deadline_unix_ms {
            return roll_back(
                state_dir,
                &pending,
                format!(
                    "the new agent was not acknowledged by the coordinator within {:.0} s",
                    Duration::from_millis(pending.deadline_unix_ms - pending.started_unix_ms)
                        .as_secs_f64()
                ),
                true,
            );
        }
    }
}

fn roll_back(state_dir: &Path, pending: &Pending, reason: String, kill: bool) -> String {
    // The old binary back first: whatever starts the agent next starts it.
    if let Err(e) = std::fs::rename(&pending.previous, &pending.exe) {
        return format!(
            "cannot put {} back at {}: {e}; the host needs the old agent put back by hand",
            pending.previous.display(),
            pending.exe.display()
        );
    }
    let failure = Failure {
        from: pending.from.clone(),
        to: pending.to.clone(),
        reason,
    };
    let recorded = write_json(&state_dir.join(FAILED), &failure);
    let _ = std::fs::remove_file(state_dir.join(PENDING));
    if kill && process_start(pending.pid) == Some(pending.pid_start) {
        // SIGKILL, not TERM: the unconfirmed agent has nothing to save, and
        // a killed process counts as a failure to systemd's Restart=.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pending.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    match recorded {
        Ok(()) => format!("{failure}"),
        Err(e) => format!("{failure} (but the record could not be written: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(dir: &Path, pid: u32, deadline_ms: u64) -> Pending {
        let exe = dir.join("agent");
        let previous = dir.join("agent.previous");
        std::fs::write(&exe, "new").expect("write");
        std::fs::write(&previous, "old").expect("write");
        Pending {
            from: "0.1.0".into(),
            to: "0.1.1".into(),
            exe,
            previous,
            pid,
            pid_start: process_start(pid).unwrap_or(0),
            started_unix_ms: now_ms(),
            deadline_unix_ms: now_ms() + deadline_ms,
        }
    }

    #[test]
    fn a_dead_new_agent_is_rolled_back_at_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        let p = pending(dir.path(), pid, 60_000);
        child.wait().expect("wait");
        write_json(&dir.path().join(PENDING), &p).expect("write");
        let said = guard(dir.path());
        assert!(said.contains("stopped"), "{said}");
        assert_eq!(std::fs::read_to_string(&p.exe).expect("read"), "old");
        assert!(!p.previous.exists());
        assert!(!dir.path().join(PENDING).exists());
        let failure = failure(dir.path()).expect("recorded");
        assert_eq!(
            (failure.from.as_str(), failure.to.as_str()),
            ("0.1.0", "0.1.1")
        );
        assert!(
            failure.to_string().contains("rolled back to 0.1.0"),
            "{failure}"
        );
    }

    #[test]
    fn a_silent_new_agent_is_killed_and_rolled_back_at_the_deadline() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn");
        let p = pending(dir.path(), child.id(), 300);
        write_json(&dir.path().join(PENDING), &p).expect("write");
        let said = guard(dir.path());
        assert!(said.contains("within"), "{said}");
        let status = child.wait().expect("wait");
        assert!(!status.success(), "the new agent was not killed");
        assert_eq!(std::fs::read_to_string(&p.exe).expect("read"), "old");
    }

    #[test]
    fn a_confirmed_upgrade_is_left_alone() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = pending(dir.path(), std::process::id(), 60_000);
        write_json(&dir.path().join(PENDING), &p).expect("write");
        let confirmer = {
            let (dir, p) = (dir.path().to_path_buf(), p.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                confirm(&dir, &p);
            })
        };
        let said = guard(dir.path());
        confirmer.join().expect("join");
        assert!(said.contains("confirmed"), "{said}");
        assert_eq!(std::fs::read_to_string(&p.exe).expect("read"), "new");
        assert!(failure(dir.path()).is_none());
    }

    #[test]
    fn at_start_tells_the_new_build_from_a_rolled_back_one() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(at_start(dir.path()), AtStart::Normal);
        let me = apiary_api::version::current().to_string();
        let mut p = pending(dir.path(), std::process::id(), 60_000);
        p.to = me.clone();
        write_json(&dir.path().join(PENDING), &p).expect("write");
        assert_eq!(at_start(dir.path()), AtStart::OnProbation(p.clone()));
        // A record for another build is stale (an upgrade cut short).
        p.to = "9.9.9".into();
        write_json(&dir.path().join(PENDING), &p).expect("write");
        assert_eq!(at_start(dir.path()), AtStart::Normal);
        assert!(!dir.path().join(PENDING).exists());
        // This build was rolled back: it must not run.
        let f = Failure {
            from: "0.0.1".into(),
            to: me,
            reason: "x".into(),
        };
        write_json(&dir.path().join(FAILED), &f).expect("write");
        assert_eq!(at_start(dir.path()), AtStart::RolledBack(f));
    }
}
