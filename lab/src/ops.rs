//! The one narrow layer through which the lab touches the machine beyond its
//! own directories: commands, detached processes, the process table, signals,
//! mounts. [`SystemOps`] is the real thing; tests use an in-memory fake.

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A command line, kept as data so command sequences can be compared in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// `ip <args>` parsed from a whitespace-separated string (no quoting needed for ip).
    pub fn ip(args: &str) -> Self {
        Cmd::new("ip").args(args.split_whitespace())
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.env {
            write!(f, "{k}={v} ")?;
        }
        write!(f, "{}", self.program)?;
        for a in &self.args {
            if a.is_empty() || a.contains(char::is_whitespace) {
                write!(f, " {a:?}")?;
            } else {
                write!(f, " {a}")?;
            }
        }
        Ok(())
    }
}

/// What a finished command said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdOutput {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn ok(stdout: impl Into<String>) -> Self {
        CmdOutput {
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }
    pub fn failed(code: i32, stderr: impl Into<String>) -> Self {
        CmdOutput {
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    pub fn status(&self) -> String {
        match self.code {
            Some(c) => format!("exit {c}"),
            None => "killed by a signal".to_string(),
        }
    }
}

/// One row of the process table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// The state letter of /proc/<pid>/stat: `Z` zombie, `X` dead.
    pub state: char,
    /// Start time in clock ticks since boot: with the pid, a process's identity.
    pub start_time: u64,
    /// Inode of the process's network namespace (`/proc/<pid>/ns/net`), if readable.
    pub netns_inode: Option<u64>,
    /// Command line with NULs replaced by spaces.
    pub cmdline: String,
}

impl ProcInfo {
    pub fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Signals the lab sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sig {
    Term,
    Kill,
    /// dockerd reloads the reloadable options of its daemon.json on SIGHUP.
    Hup,
}

/// The machine, as far as the lab touches it outside its own directories.
pub trait HostOps: Send + Sync + fmt::Debug + 'static {
    /// Runs a command to completion. `Err` only when it cannot be started.
    fn run(&self, cmd: &Cmd) -> io::Result<CmdOutput>;
    /// Starts `cmd` in a new session (setsid), stdin from /dev/null, stdout and
    /// stderr appended to `log`, and returns its pid. The process outlives the caller.
    fn spawn_detached(&self, cmd: &Cmd, log: &Path) -> io::Result<u32>;
    /// One process, `None` if there is no such pid.
    fn process(&self, pid: u32) -> Option<ProcInfo>;
    /// The whole process table.
    fn processes(&self) -> io::Result<Vec<ProcInfo>>;
    /// Sends a signal; a process that is already gone is not an error.
    fn signal(&self, pid: u32, sig: Sig) -> io::Result<()>;
    /// Inode of a namespace file such as /run/netns/<name>.
    fn ns_inode(&self, path: &Path) -> Option<u64>;
    /// Mount points of the caller's mount namespace.
    fn mount_points(&self) -> io::Result<Vec<PathBuf>>;
    /// Detaches the mount at `path`.
    fn unmount(&self, path: &Path) -> io::Result<()>;
    /// Whether the caller may do what the lab does (root).
    fn is_root(&self) -> bool;
    /// Whether `program` can be found on PATH (or is an existing absolute path).
    fn has_program(&self, program: &str) -> bool;
}

/// The real machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemOps;

const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// PATH for children: the caller's, with the system directories appended, so
/// `ip`, `dockerd`, `containerd`, `runc` and `iptables` are found under cron-like environments too.
fn child_path() -> String {
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{p}:{SYSTEM_PATH}"),
        _ => SYSTEM_PATH.to_string(),
    }
}

/// `program` with the rest of `cmd` (its program becomes the first argument
/// when `program` differs, as for `setsid`), and PATH unless `cmd` sets one.
fn command(program: &str, cmd: &Cmd) -> Command {
    let mut c = Command::new(program);
    if program != cmd.program {
        c.arg(&cmd.program);
    }
    c.args(&cmd.args);
    if !cmd.env.iter().any(|(k, _)| k == "PATH") {
        c.env("PATH", child_path());
    }
    c.envs(cmd.env.iter().map(|(k, v)| (k, v)));
    c
}

impl HostOps for SystemOps {
    fn run(&self, cmd: &Cmd) -> io::Result<CmdOutput> {
        let out = command(&cmd.program, cmd).stdin(Stdio::null()).output()?;
        Ok(CmdOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn spawn_detached(&self, cmd: &Cmd, log: &Path) -> io::Result<u32> {
        let out = OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        // `setsid` (util-linux) gives the child its own session without unsafe
        // pre_exec code: as a non-leader it calls setsid() and execs, so the pid
        // we get is the pid of the final program (ip netns exec, nsenter and the
        // wrapper all exec too).
        let mut child = command("setsid", cmd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        let pid = child.id();
        // Reap it when it exits so it does not linger as a zombie while we run;
        // if we die first it is re-parented and keeps running.
        std::thread::Builder::new()
            .name(format!("lab-reap-{pid}"))
            .spawn(move || {
                let _ = child.wait();
            })?;
        Ok(pid)
    }

    fn process(&self, pid: u32) -> Option<ProcInfo> {
        read_proc(Path::new("/proc"), pid)
    }

    fn processes(&self) -> io::Result<Vec<ProcInfo>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc")? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(p) = read_proc(Path::new("/proc"), pid) {
                out.push(p);
            }
        }
        Ok(out)
    }

    fn signal(&self, pid: u32, sig: Sig) -> io::Result<()> {
        use nix::sys::signal::{Signal, kill};
        let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
        if pid <= 1 {
            return Err(io::Error::other("refusing to signal pid <= 1"));
        }
        let s = match sig {
            Sig::Term => Signal::SIGTERM,
            Sig::Kill => Signal::SIGKILL,
            Sig::Hup => Signal::SIGHUP,
        };
        match kill(nix::unistd::Pid::from_raw(pid), s) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    fn ns_inode(&self, path: &Path) -> Option<u64> {
        std::fs::metadata(path).ok().map(|m| m.ino())
    }

    fn mount_points(&self) -> io::Result<Vec<PathBuf>> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        Ok(parse_mountinfo(&text))
    }

    fn unmount(&self, path: &Path) -> io::Result<()> {
        nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
    }

    fn is_root(&self) -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn has_program(&self, program: &str) -> bool {
        if program.starts_with('/') {
            return Path::new(program).is_file();
        }
        child_path()
            .split(':')
            .any(|d| Path::new(d).join(program).is_file())
    }
}

/// Reads /proc/<pid>/stat, cmdline and ns/net under `proc`.
pub(crate) fn read_proc(proc: &Path, pid: u32) -> Option<ProcInfo> {
    let dir = proc.join(pid.to_string());
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let (state, ppid, start_time) = parse_stat(&stat)?;
    let cmdline = std::fs::read(dir.join("cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default();
    let netns_inode = std::fs::metadata(dir.join("ns/net")).ok().map(|m| m.ino());
    Some(ProcInfo {
        pid,
        ppid,
        state,
        start_time,
        netns_inode,
        cmdline,
    })
}

/// (state, ppid, starttime) from the text of /proc/<pid>/stat. The command
/// name may contain spaces and parentheses, so fields are counted after the last ')'.
pub(crate) fn parse_stat(stat: &str) -> Option<(char, u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); ppid is field 4; starttime is field 22.
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, ppid, start_time))
}

/// Mount points (field 5) of /proc/<pid>/mountinfo, with octal escapes decoded.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_counts_after_the_command_name() {
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(stat), Some(('S', 1, 987654)));
        assert_eq!(parse_stat("garbage"), None);
        let zombie = "7 (dockerd) Z 6 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert_eq!(parse_stat(zombie), Some(('Z', 6, 55)));
    }

    #[test]
    fn mountinfo_mount_points_are_unescaped() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    40 25 0:4 net:[4026532178] /run/netns/bees.queenbee rw shared:5 - nsfs nsfs rw\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                PathBuf::from("/mnt/with space"),
                PathBuf::from("/run/netns/bees.queenbee")
            ]
        );
    }

    #[test]
    fn cmd_display_quotes_spaces() {
        let c = Cmd::new("sh").arg("-c").arg("echo hi").env("A", "1");
        assert_eq!(c.to_string(), "A=1 sh -c \"echo hi\"");
        assert_eq!(
            Cmd::ip("link set lo up").args,
            vec!["link", "set", "lo", "up"]
        );
    }

    #[test]
    fn reads_our_own_process() {
        let me = SystemOps.process(std::process::id()).expect("self");
        assert!(me.alive());
        assert!(me.start_time > 0);
    }
}
