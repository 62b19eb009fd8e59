//! [`RealEffects`]: the host-effects layer for a real host or a lab host.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::effects::{
    BootloaderUpdate, CmdOutput, EffectError, HostEffects, host_path, sysctl_path,
};
use apiary_api::hostconfig::SysctlName;

/// Host effects on a real machine. Every field is public so the caller (the
/// agent's main, the lab provider, a test) states where things are instead
/// of the code guessing.
///
/// - On a real host: [`RealEffects::host`].
/// - In a lab host: `root` is the host's root prefix (its daemon.json and
///   GRUB defaults live there), `sysctl_root` stays /proc/sys (the agent
///   runs inside the host's network namespace, and `net.*` sysctls are per
///   namespace; beware that other sysctls, vm.* for instance, are
///   machine-wide), `update_grub` is `None`, `engine_restart` is whatever
///   restarts that host's dockerd, and `docker_socket` is its socket.
/// - In a test that does not run inside the namespace: `nft` is
///   `["ip", "netns", "exec", NS, "nft"]`.
#[derive(Debug, Clone)]
pub struct RealEffects {
    /// Files are read and written below this prefix (`/` on a real host).
    pub root: PathBuf,
    /// Where sysctls live (`/proc/sys`).
    pub sysctl_root: PathBuf,
    /// Where loaded modules show (`/sys/module`).
    pub module_root: PathBuf,
    /// The nft program and whatever must precede it (a namespace entry).
    pub nft: Vec<String>,
    /// `modprobe`; `None` where modules cannot be loaded.
    pub modprobe: Option<Vec<String>>,
    /// Restarts the Docker engine (`systemctl restart docker`).
    pub engine_restart: Vec<String>,
    /// Regenerates GRUB's config (`update-grub`); `None` where apiary must
    /// not (a lab host shares the machine's bootloader).
    pub update_grub: Option<Vec<String>>,
    /// The engine's API socket, probed for readiness.
    pub docker_socket: PathBuf,
    /// How long the engine may take to come back after a restart.
    pub engine_ready_timeout: Duration,
    /// Time limit of any other command.
    pub command_timeout: Duration,
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

impl RealEffects {
    /// A real host managed by systemd.
    pub fn host() -> Self {
        RealEffects {
            root: PathBuf::from("/"),
            sysctl_root: PathBuf::from("/proc/sys"),
            module_root: PathBuf::from("/sys/module"),
            nft: argv(&["nft"]),
            modprobe: Some(argv(&["modprobe"])),
            engine_restart: argv(&["systemctl", "restart", "docker"]),
            update_grub: Some(argv(&["update-grub"])),
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            engine_ready_timeout: Duration::from_secs(60),
            command_timeout: Duration::from_secs(30),
        }
    }

    fn resolve(&self, path: &str) -> Result<PathBuf, EffectError> {
        let p = host_path(&self.root, path)?;
        self.contained(&p)?;
        Ok(p)
    }

    /// `host_path` is pure and cannot see symlinks; this checks that the
    /// deepest existing ancestor of `p` really is below the root.
    fn contained(&self, p: &Path) -> Result<(), EffectError> {
        if self.root == Path::new("/") {
            return Ok(());
        }
        let root = self
            .root
            .canonicalize()
            .map_err(|source| EffectError::NoRoot {
                root: self.root.clone(),
                source,
            })?;
        let mut probe = p;
        loop {
            match probe.canonicalize() {
                Ok(real) if real.starts_with(&root) => return Ok(()),
                Ok(_) => {
                    return Err(EffectError::Escape {
                        path: p.to_path_buf(),
                        root: self.root.clone(),
                    });
                }
                Err(_) => match probe.parent() {
                    Some(parent) => probe = parent,
                    None => return Ok(()),
                },
            }
        }
    }

    fn nft_cmd(&self, args: &[&str]) -> Vec<String> {
        let mut v = self.nft.clone();
        v.extend(args.iter().map(|a| a.to_string()));
        v
    }

    /// `nft list table` that maps "no such table" to `None`.
    fn nft_list(&self, args: &[&str]) -> Result<Option<String>, EffectError> {
        let cmd = self.nft_cmd(args);
        let out = run_argv(&cmd, None, self.command_timeout)?;
        // nft's own "no such table" (not `ip netns exec`'s "Cannot open
        // network namespace ...: No such file or directory", which is an error).
        if !out.success() && out.stderr.contains("Error: No such file or directory") {
            return Ok(None);
        }
        Ok(Some(out.check(&cmd)?.stdout))
    }
}

impl HostEffects for RealEffects {
    fn read_file(&self, path: &str) -> Result<Option<String>, EffectError> {
        let p = self.resolve(path)?;
        match std::fs::read_to_string(&p) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(EffectError::Read { path: p, source }),
        }
    }

    fn write_file(&self, path: &str, contents: &str) -> Result<(), EffectError> {
        let p = self.resolve(path)?;
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EffectError::Write { path, source }
        };
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return Err(EffectError::BadPath {
                path: path.to_string(),
                why: "it has no parent directory",
            });
        };
        std::fs::create_dir_all(parent).map_err(write_err(parent))?;
        // Created directories could not have been symlinks, but an existing
        // component could: check again now that the parent exists.
        self.contained(parent)?;
        // A sibling + rename, so a crash never leaves a half-written
        // daemon.json or GRUB file behind.
        let tmp = parent.join(format!(".{}.apiary-tmp", name.to_string_lossy()));
        let mut f = std::fs::File::create(&tmp).map_err(write_err(&tmp))?;
        f.write_all(contents.as_bytes()).map_err(write_err(&tmp))?;
        f.sync_all().map_err(write_err(&tmp))?;
        if let Ok(meta) = std::fs::metadata(&p) {
            std::fs::set_permissions(&tmp, meta.permissions()).map_err(write_err(&tmp))?;
        }
        std::fs::rename(&tmp, &p).map_err(write_err(&p))
    }

    fn remove_file(&self, path: &str) -> Result<(), EffectError> {
        let p = self.resolve(path)?;
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(EffectError::Write { path: p, source: e })
            }
            _ => Ok(()),
        }
    }

    fn run(&self, argv: &[String]) -> Result<CmdOutput, EffectError> {
        run_argv(argv, None, self.command_timeout)
    }

    fn read_sysctl(&self, name: &SysctlName) -> Result<Option<String>, EffectError> {
        let p = sysctl_path(&self.sysctl_root, name);
        match std::fs::read_to_string(&p) {
            Ok(t) => Ok(Some(t.trim_end_matches('\n').to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(EffectError::Read { path: p, source }),
        }
    }

    fn write_sysctl(&self, name: &SysctlName, value: &str) -> Result<(), EffectError> {
        let p = sysctl_path(&self.sysctl_root, name);
        // No O_CREAT: a sysctl that does not exist must not be invented as
        // a plain file (which a fixture root would silently accept).
        let mut f = match std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&p)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(EffectError::NoSysctl {
                    name: name.to_string(),
                    path: p,
                });
            }
            Err(source) => return Err(EffectError::Write { path: p, source }),
        };
        f.write_all(format!("{value}\n").as_bytes())
            .map_err(|source| EffectError::Write { path: p, source })
    }

    fn nft_apply(&self, script: &str) -> Result<(), EffectError> {
        let cmd = self.nft_cmd(&["-f", "-"]);
        run_argv(&cmd, Some(script), self.command_timeout)?.check(&cmd)?;
        Ok(())
    }

    fn nft_list_table(&self, family: &str, name: &str) -> Result<Option<String>, EffectError> {
        self.nft_list(&["list", "table", family, name])
    }

    fn nft_list_table_json(
        &self,
        family: &str,
        name: &str,
    ) -> Result<Option<serde_json::Value>, EffectError> {
        let Some(text) = self.nft_list(&["-j", "list", "table", family, name])? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| EffectError::Command {
                command: self
                    .nft_cmd(&["-j", "list", "table", family, name])
                    .join(" "),
                status: "unreadable output".into(),
                stderr: e.to_string(),
            })
    }

    fn module_loaded(&self, module: &str) -> Result<bool, EffectError> {
        Ok(self.module_root.join(module_dir(module)?).exists())
    }

    fn load_module(&self, module: &str) -> Result<(), EffectError> {
        let Some(modprobe) = &self.modprobe else {
            return Err(EffectError::NotConfigured {
                what: "loading kernel modules",
                field: "modprobe",
            });
        };
        let mut cmd = modprobe.clone();
        cmd.push(module_dir(module)?.to_string());
        run_argv(&cmd, None, self.command_timeout)?.check(&cmd)?;
        Ok(())
    }

    fn restart_engine(&self) -> Result<(), EffectError> {
        run_argv(&self.engine_restart, None, self.engine_ready_timeout)?
            .check(&self.engine_restart)?;
        Ok(())
    }

    fn engine_ready(&self) -> Result<(), EffectError> {
        let deadline = Instant::now() + self.engine_ready_timeout;
        loop {
            let reason = match ping(&self.docker_socket) {
                Ok(()) => return Ok(()),
                Err(reason) => reason,
            };
            if Instant::now() >= deadline {
                return Err(EffectError::EngineNotReady {
                    socket: self.docker_socket.clone(),
                    waited: self.engine_ready_timeout,
                    reason,
                });
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn update_bootloader(&self) -> Result<BootloaderUpdate, EffectError> {
        let Some(cmd) = &self.update_grub else {
            return Ok(BootloaderUpdate::NotInstalled);
        };
        match run_argv(cmd, None, Duration::from_secs(300)) {
            Err(EffectError::Spawn { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(BootloaderUpdate::NotInstalled)
            }
            Err(e) => Err(e),
            Ok(out) => {
                out.check(cmd)?;
                Ok(BootloaderUpdate::Ran)
            }
        }
    }
}

/// Module names become a path component and a modprobe argument: keep them plain.
fn module_dir(module: &str) -> Result<&str, EffectError> {
    if !module.is_empty()
        && module
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(module)
    } else {
        Err(EffectError::BadPath {
            path: module.to_string(),
            why: "not a kernel module name",
        })
    }
}

/// One `GET /_ping` on the engine's unix socket.
fn ping(socket: &Path) -> Result<(), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    let limit = Some(Duration::from_secs(2));
    s.set_read_timeout(limit).map_err(|e| e.to_string())?;
    s.set_write_timeout(limit).map_err(|e| e.to_string())?;
    s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    let status = reply.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(format!("answered {status:?}"))
    }
}

/// Runs a command with a time limit, feeding `stdin` if given. Output is
/// drained on threads so a chatty command cannot block on a full pipe.
pub(crate) fn run_argv(
    argv: &[String],
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<CmdOutput, EffectError> {
    let command = argv.join(" ");
    let Some((program, args)) = argv.split_first() else {
        return Err(EffectError::Spawn {
            command,
            source: io::Error::new(io::ErrorKind::InvalidInput, "empty command"),
        });
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| EffectError::Spawn {
            command: command.clone(),
            source,
        })?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => {
            let input = input.to_string();
            // Dropping the pipe at the end of the thread closes it: EOF for nft.
            Some(thread::spawn(move || pipe.write_all(input.as_bytes())))
        }
        _ => None,
    };
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                // A read error only truncates the diagnostic output.
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_micros(200);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                // Killing our own child (not a pid looked up by name).
                let _ = child.kill();
                let _ = child.wait();
                return Err(EffectError::Timeout {
                    command,
                    waited: timeout,
                });
            }
            Ok(None) => {
                thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(20));
            }
            Err(source) => return Err(EffectError::Spawn { command, source }),
        }
    };
    if let Some(w) = writer {
        // A command that exits without reading its input (nft on a bad
        // option) breaks the pipe; its status and stderr say why.
        let _ = w.join();
    }
    Ok(CmdOutput {
        status: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (tempfile::TempDir, RealEffects) {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).expect("mkdir");
        let fx = RealEffects {
            root,
            sysctl_root: dir.path().join("proc-sys"),
            module_root: dir.path().join("sys-module"),
            nft: argv(&["false"]),
            modprobe: None,
            engine_restart: argv(&["true"]),
            update_grub: None,
            docker_socket: dir.path().join("docker.sock"),
            engine_ready_timeout: Duration::from_millis(300),
            command_timeout: Duration::from_secs(5),
        };
        (dir, fx)
    }

    #[test]
    fn files_round_trip_below_the_root_and_keep_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, fx) = fixture();
        assert_eq!(fx.read_file("/etc/docker/daemon.json").expect("read"), None);
        fx.write_file("/etc/docker/daemon.json", "{}\n")
            .expect("write");
        let p = fx.root.join("etc/docker/daemon.json");
        assert_eq!(std::fs::read_to_string(&p).expect("on disk"), "{}\n");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        fx.write_file("/etc/docker/daemon.json", "{\"a\":1}\n")
            .expect("rewrite");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fx.remove_file("/etc/docker/daemon.json").expect("rm");
        fx.remove_file("/etc/docker/daemon.json").expect("rm twice");
        assert!(fx.read_file("/etc/../x").is_err());
    }

    #[test]
    fn a_symlink_out_of_the_root_is_refused() {
        let (d, fx) = fixture();
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, fx.root.join("etc")).expect("symlink");
        let e = fx.write_file("/etc/default/grub", "x").expect_err("escape");
        assert!(matches!(e, EffectError::Escape { .. }), "{e}");
        assert!(!outside.join("default/grub").exists());
    }

    #[test]
    fn sysctls_are_never_invented() {
        let (_d, fx) = fixture();
        let fwd = SysctlName::parse("net.ipv4.ip_forward").expect("name");
        assert_eq!(fx.read_sysctl(&fwd).expect("read"), None);
        assert!(matches!(
            fx.write_sysctl(&fwd, "1"),
            Err(EffectError::NoSysctl { .. })
        ));
        let p = sysctl_path(&fx.sysctl_root, &fwd);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, "0\n").expect("seed");
        fx.write_sysctl(&fwd, "1").expect("write");
        assert_eq!(fx.read_sysctl(&fwd).expect("read").as_deref(), Some("1"));
    }

    #[test]
    fn commands_report_status_output_and_time_limits() {
        let out = run_argv(
            &argv(&["sh", "-c", "cat; echo oops >&2; exit 3"]),
            Some("hello"),
            Duration::from_secs(5),
        )
        .expect("ran");
        assert_eq!(
            (out.status, out.stdout.as_str(), out.stderr.as_str()),
            (Some(3), "hello", "oops\n")
        );
        let e = run_argv(&argv(&["sleep", "5"]), None, Duration::from_millis(100))
            .expect_err("timeout");
        assert!(matches!(e, EffectError::Timeout { .. }), "{e}");
        let e = run_argv(
            &argv(&["/nonexistent/apiary-x"]),
            None,
            Duration::from_secs(1),
        )
        .expect_err("spawn");
        assert!(e.to_string().contains("is it installed"), "{e}");
    }

    #[test]
    fn engine_readiness_names_the_socket_and_modules_need_modprobe() {
        let (_d, fx) = fixture();
        let e = fx.engine_ready().expect_err("no engine");
        assert!(e.to_string().contains("docker.sock"), "{e}");
        assert!(matches!(
            fx.load_module("vxlan"),
            Err(EffectError::NotConfigured { .. })
        ));
        assert!(fx.module_loaded("../etc").is_err());
        assert_eq!(
            fx.update_bootloader().expect("none"),
            BootloaderUpdate::NotInstalled
        );
        let lost = RealEffects {
            root: fx.root.join("missing"),
            ..fx
        };
        let e = lost.read_file("/etc/default/grub").expect_err("no root");
        assert!(matches!(e, EffectError::NoRoot { .. }), "{e}");
    }

    #[test]
    fn engine_ping_over_a_unix_socket() {
        let (_d, fx) = fixture();
        let listener = std::os::unix::net::UnixListener::bind(&fx.docker_socket).expect("bind");
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).expect("read");
            s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                .expect("reply");
        });
        fx.engine_ready().expect("ready");
        server.join().expect("server");
    }
}
