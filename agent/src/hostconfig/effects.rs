//! The narrow layer every host side effect of host configuration goes
//! through ([`HostEffects`]), and the pure path building it relies on.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use apiary_api::hostconfig::SysctlName;

/// What went wrong touching the host. Each variant names the thing (path,
/// command, sysctl, socket) and reads as advice.
#[derive(Debug, thiserror::Error)]
pub enum EffectError {
    #[error("refusing host path {path:?}: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("{path} leads outside the root prefix {root} (through a symlink?); fix the host tree")]
    Escape { path: PathBuf, root: PathBuf },
    #[error(
        "the root prefix {root} is not usable ({source}); check where the agent was told the host's files are"
    )]
    NoRoot { root: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot run `{command}`: {source} (is it installed and on PATH?)")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` did not finish within {waited:?}; it was killed")]
    Timeout { command: String, waited: Duration },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("no sysctl {name} on this host ({path} does not exist)")]
    NoSysctl { name: String, path: PathBuf },
    #[error("the Docker engine did not answer on {socket} within {waited:?}: {reason}")]
    EngineNotReady {
        socket: PathBuf,
        waited: Duration,
        reason: String,
    },
    #[error("{what} is not configured on this host (RealEffects::{field} is None)")]
    NotConfigured {
        what: &'static str,
        field: &'static str,
    },
    /// Only [`super::MemoryEffects`] makes these: a failure a test asked for.
    #[error("{op}: {reason}")]
    Injected { op: String, reason: String },
}

/// Output of a finished command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CmdOutput {
    /// The exit code; `None` when a signal ended the command.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// `Ok(self)` when the command succeeded, else an error naming it.
    pub fn check(self, argv: &[String]) -> Result<CmdOutput, EffectError> {
        if self.success() {
            return Ok(self);
        }
        Err(EffectError::Command {
            command: argv.join(" "),
            status: match self.status {
                Some(c) => format!("exit status {c}"),
                None => "killed by a signal".into(),
            },
            stderr: self.stderr.trim().to_string(),
        })
    }
}

/// Whether the bootloader configuration could be regenerated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootloaderUpdate {
    Ran,
    /// No update-grub on this host (or none configured, as in the lab).
    NotInstalled,
}

/// Everything host configuration does to a host. Paths are host paths
/// ("/etc/docker/daemon.json"); an implementation resolves them below its
/// root prefix with [`host_path`], never outside it.
///
/// The methods are synchronous and may block (a command, an engine restart
/// waiting for readiness): async callers run [`super::apply`] on a blocking
/// thread ([`super::keep_applied`] does).
pub trait HostEffects: Send + Sync {
    /// The file's text, or `None` when it does not exist.
    fn read_file(&self, path: &str) -> Result<Option<String>, EffectError>;
    /// Replaces the file atomically (write a sibling, then rename), creating
    /// parent directories and keeping an existing file's permissions.
    fn write_file(&self, path: &str, contents: &str) -> Result<(), EffectError>;
    /// Removes the file; a missing file is not an error.
    fn remove_file(&self, path: &str) -> Result<(), EffectError>;
    /// Runs `argv` to completion (with a time limit). A non-zero exit is
    /// not an error here: callers decide with [`CmdOutput::check`].
    fn run(&self, argv: &[String]) -> Result<CmdOutput, EffectError>;
    /// The sysctl's current value, or `None` when the kernel has no such sysctl.
    fn read_sysctl(&self, name: &SysctlName) -> Result<Option<String>, EffectError>;
    fn write_sysctl(&self, name: &SysctlName, value: &str) -> Result<(), EffectError>;
    /// Applies an nftables script in one transaction (`nft -f -`): all of it
    /// or nothing.
    fn nft_apply(&self, script: &str) -> Result<(), EffectError>;
    /// `nft list table FAMILY NAME` (text, no handles), or `None` when the
    /// table does not exist.
    fn nft_list_table(&self, family: &str, name: &str) -> Result<Option<String>, EffectError>;
    /// `nft -j list table FAMILY NAME`, or `None` when it does not exist.
    fn nft_list_table_json(
        &self,
        family: &str,
        name: &str,
    ) -> Result<Option<serde_json::Value>, EffectError>;
    /// Whether the kernel module is loaded now.
    fn module_loaded(&self, module: &str) -> Result<bool, EffectError>;
    /// Loads a kernel module (modprobe).
    fn load_module(&self, module: &str) -> Result<(), EffectError>;
    /// Restarts the Docker engine so it reads daemon.json again. Returns once
    /// the old engine is gone (as `systemctl restart` does); readiness is
    /// [`HostEffects::engine_ready`]'s business.
    fn restart_engine(&self) -> Result<(), EffectError>;
    /// Waits up to the implementation's time limit for the engine to answer.
    fn engine_ready(&self) -> Result<(), EffectError>;
    /// Regenerates the bootloader configuration from /etc/default/grub.
    fn update_bootloader(&self) -> Result<BootloaderUpdate, EffectError>;
}

/// Resolves a host path below `root`.
///
/// Host paths are written as on the host ("/etc/docker/daemon.json"); a
/// leading `/` means the root prefix, never the real `/`: the path is
/// rebuilt component by component instead of `Path::join`ed (which would
/// let an absolute path replace the root). `..` is refused outright rather
/// than resolved: no legitimate host path needs it.
pub fn host_path(root: &Path, path: &str) -> Result<PathBuf, EffectError> {
    let refuse = |why| EffectError::BadPath {
        path: path.to_string(),
        why,
    };
    if path.contains('\0') {
        return Err(refuse("it contains a NUL byte"));
    }
    let mut out = root.to_path_buf();
    let mut depth = 0;
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => {
                out.push(part);
                depth += 1;
            }
            Component::ParentDir => return Err(refuse("`..` could leave the root prefix")),
            Component::Prefix(_) => return Err(refuse("not a Unix path")),
        }
    }
    if depth == 0 {
        return Err(refuse("it names the root prefix itself, not a file"));
    }
    Ok(out)
}

/// The file of a sysctl below `sysctl_root` (/proc/sys on a host). The name
/// is already validated, so it cannot climb out.
pub fn sysctl_path(sysctl_root: &Path, name: &SysctlName) -> PathBuf {
    let mut p = sysctl_root.to_path_buf();
    for part in name.path_components() {
        p.push(part);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_stay_under_the_root() {
        let root = Path::new("/var/lib/apiary/lab/queenbee/root");
        assert_eq!(
            host_path(root, "/etc/docker/daemon.json").expect("abs"),
            root.join("etc/docker/daemon.json")
        );
        // An absolute path is the host's, i.e. below the prefix: no escape.
        assert_eq!(
            host_path(root, "/etc/passwd").expect("abs"),
            root.join("etc/passwd")
        );
        assert_eq!(
            host_path(root, "etc/default/./grub").expect("rel"),
            root.join("etc/default/grub")
        );
        assert_eq!(
            host_path(root, "//etc//grub").expect("slashes"),
            root.join("etc/grub")
        );
        assert_eq!(
            host_path(Path::new("/"), "/etc/default/grub").expect("real"),
            Path::new("/etc/default/grub")
        );
        for bad in [
            "/etc/../../../etc/shadow",
            "../x",
            "etc/docker/..",
            "/",
            "",
            ".",
            "a\0b",
        ] {
            assert!(
                matches!(host_path(root, bad), Err(EffectError::BadPath { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn sysctl_paths_map_dots_and_slashes() {
        let n = SysctlName::parse("net.ipv4.conf.eth0/100.rp_filter").expect("name");
        assert_eq!(
            sysctl_path(Path::new("/proc/sys"), &n),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        let n = SysctlName::parse("net.bridge.bridge-nf-call-iptables").expect("name");
        assert_eq!(
            sysctl_path(Path::new("/tmp/lab/proc-sys"), &n),
            Path::new("/tmp/lab/proc-sys/net/bridge/bridge-nf-call-iptables")
        );
    }

    #[test]
    fn failed_commands_name_themselves() {
        let out = CmdOutput {
            status: Some(1),
            stdout: String::new(),
            stderr: "Error: syntax error\n".into(),
        };
        let e = out
            .check(&["nft".into(), "-f".into(), "-".into()])
            .expect_err("failed");
        assert_eq!(
            e.to_string(),
            "`nft -f -` failed (exit status 1): Error: syntax error"
        );
    }
}
