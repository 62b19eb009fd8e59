//! [`MemoryEffects`]: an in-memory host for unit tests and simulated agents.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use super::effects::{BootloaderUpdate, CmdOutput, EffectError, HostEffects, host_path};
use apiary_api::hostconfig::SysctlName;

/// Decides whether the simulated engine starts with a daemon.json (its text,
/// or `None` when there is none): `Some(reason)` means it refuses.
pub type EngineCheck = Box<dyn Fn(Option<&str>) -> Option<String> + Send + Sync>;

/// Everything a [`MemoryEffects`] host holds; tests read and change it
/// through [`MemoryEffects::state`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemState {
    /// Host path ("/etc/docker/daemon.json") → contents.
    pub files: BTreeMap<String, String>,
    /// Sysctl name → value; a name absent here does not exist on the host.
    pub sysctls: BTreeMap<String, String>,
    /// "FAMILY NAME" → the table as `nft list table` prints it.
    pub nft_tables: BTreeMap<String, String>,
    pub modules_loaded: BTreeSet<String>,
    /// Modules modprobe can load.
    pub modules_available: BTreeSet<String>,
    /// Every call that changed something, in order ("write_file /etc/...").
    pub log: Vec<String>,
    /// Operation ("write_sysctl net.ipv4.ip_forward", "nft_apply",
    /// "restart_engine", "load_module vxlan", "update_bootloader",
    /// "write_file /etc/docker/daemon.json", "nft_list_table", ...) → the
    /// reason it fails with. See [`MemoryEffects::fail`].
    pub failures: BTreeMap<String, String>,
    pub engine_up: bool,
    pub update_grub_installed: bool,
    /// Bumped on every nft transaction, like nft's handles.
    pub nft_generation: u64,
}

/// In-memory host effects with injectable failures.
pub struct MemoryEffects {
    state: Mutex<MemState>,
    engine_check: Mutex<Option<EngineCheck>>,
}

impl Default for MemoryEffects {
    fn default() -> Self {
        MemoryEffects {
            state: Mutex::new(MemState {
                engine_up: true,
                update_grub_installed: true,
                ..MemState::default()
            }),
            engine_check: Mutex::new(None),
        }
    }
}

/// GRUB defaults as Debian ships them.
pub const DEBIAN_GRUB_DEFAULTS: &str = "# If you change this file, run 'update-grub' afterwards.\n\
GRUB_DEFAULT=0\n\
GRUB_TIMEOUT=5\n\
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\n\
GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n\
GRUB_CMDLINE_LINUX=\"console=ttyS0\"\n";

impl MemoryEffects {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh Debian-like host nobody configured: forwarding off, bridge
    /// netfilter sysctls off, Debian's GRUB defaults, overlay loaded and the
    /// other Swarm modules loadable, no daemon.json, no nftables tables.
    pub fn debian_host() -> Self {
        let m = Self::new();
        {
            let mut s = m.state();
            for name in [
                "net.ipv4.ip_forward",
                "net.bridge.bridge-nf-call-iptables",
                "net.bridge.bridge-nf-call-ip6tables",
            ] {
                s.sysctls.insert(name.into(), "0".into());
            }
            s.sysctls.insert("vm.max_map_count".into(), "65530".into());
            s.files
                .insert("/etc/default/grub".into(), DEBIAN_GRUB_DEFAULTS.into());
            s.modules_loaded.insert("overlay".into());
            for m in ["overlay", "vxlan", "br_netfilter", "ip_vs"] {
                s.modules_available.insert(m.into());
            }
        }
        m
    }

    /// The host's state, to read or change (simulated drift) in a test.
    pub fn state(&self) -> MutexGuard<'_, MemState> {
        // A test that panicked while holding the lock has already failed;
        // the state is still usable for its report.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `op` fail with `reason` until [`MemoryEffects::heal`].
    pub fn fail(&self, op: &str, reason: &str) {
        self.state().failures.insert(op.into(), reason.into());
    }

    pub fn heal(&self, op: &str) {
        self.state().failures.remove(op);
    }

    /// How the simulated engine judges daemon.json when it (re)starts.
    pub fn set_engine_check(&self, check: EngineCheck) {
        *self.engine_check.lock().unwrap_or_else(|p| p.into_inner()) = Some(check);
    }

    /// Simulated drift: removes the rules of `family name` whose line contains `needle`.
    pub fn nft_delete_rules(&self, table: &str, needle: &str) -> usize {
        let mut s = self.state();
        let Some(text) = s.nft_tables.get_mut(table) else {
            return 0;
        };
        let before = text.lines().count();
        *text = text
            .lines()
            .filter(|l| !l.contains(needle))
            .map(|l| format!("{l}\n"))
            .collect();
        before - text.lines().count()
    }

    /// The mutating calls so far.
    pub fn log(&self) -> Vec<String> {
        self.state().log.clone()
    }

    fn check(s: &MemState, op: &str) -> Result<(), EffectError> {
        match s.failures.get(op) {
            Some(reason) => Err(EffectError::Injected {
                op: op.to_string(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }
}

fn key(path: &str) -> Result<String, EffectError> {
    Ok(host_path(Path::new("/"), path)?.display().to_string())
}

/// Applies an nft script the way our renderer writes them: `table F N {}`,
/// `delete table F N`, and `table F N {` ... `}` blocks. All or nothing.
fn nft_transaction(
    tables: &BTreeMap<String, String>,
    script: &str,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = tables.clone();
    let mut lines = script.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(rest) = t.strip_prefix("delete table ") {
            if out.remove(rest.trim()).is_none() {
                return Err(format!("line {}: No such file or directory", n + 1));
            }
        } else if let Some(name) = t.strip_prefix("table ").and_then(|r| r.strip_suffix("{}")) {
            out.entry(name.trim().to_string()).or_default();
        } else if let Some(name) = t.strip_prefix("table ").and_then(|r| r.strip_suffix('{')) {
            let mut block = format!("{line}\n");
            loop {
                let Some((_, l)) = lines.next() else {
                    return Err("syntax error, unexpected end of file".into());
                };
                block.push_str(l);
                block.push('\n');
                if l == "}" {
                    break;
                }
            }
            out.insert(name.trim().to_string(), block);
        } else {
            return Err(format!("line {}: syntax error: {t}", n + 1));
        }
    }
    Ok(out)
}

impl HostEffects for MemoryEffects {
    fn read_file(&self, path: &str) -> Result<Option<String>, EffectError> {
        let k = key(path)?;
        let s = self.state();
        Self::check(&s, &format!("read_file {k}"))?;
        Ok(s.files.get(&k).cloned())
    }

    fn write_file(&self, path: &str, contents: &str) -> Result<(), EffectError> {
        let k = key(path)?;
        let mut s = self.state();
        Self::check(&s, &format!("write_file {k}"))?;
        s.log.push(format!("write_file {k}"));
        s.files.insert(k, contents.to_string());
        Ok(())
    }

    fn remove_file(&self, path: &str) -> Result<(), EffectError> {
        let k = key(path)?;
        let mut s = self.state();
        Self::check(&s, &format!("remove_file {k}"))?;
        if s.files.remove(&k).is_some() {
            s.log.push(format!("remove_file {k}"));
        }
        Ok(())
    }

    fn run(&self, argv: &[String]) -> Result<CmdOutput, EffectError> {
        let cmd = argv.join(" ");
        let mut s = self.state();
        Self::check(&s, &format!("run {cmd}"))?;
        s.log.push(format!("run {cmd}"));
        Ok(CmdOutput {
            status: Some(0),
            ..CmdOutput::default()
        })
    }

    fn read_sysctl(&self, name: &SysctlName) -> Result<Option<String>, EffectError> {
        let s = self.state();
        Self::check(&s, &format!("read_sysctl {name}"))?;
        Ok(s.sysctls.get(name.as_str()).cloned())
    }

    fn write_sysctl(&self, name: &SysctlName, value: &str) -> Result<(), EffectError> {
        let mut s = self.state();
        Self::check(&s, &format!("write_sysctl {name}"))?;
        let Some(slot) = s.sysctls.get_mut(name.as_str()) else {
            return Err(EffectError::NoSysctl {
                name: name.to_string(),
                path: super::effects::sysctl_path(Path::new("/proc/sys"), name),
            });
        };
        *slot = value.to_string();
        s.log.push(format!("write_sysctl {name}={value}"));
        Ok(())
    }

    fn nft_apply(&self, script: &str) -> Result<(), EffectError> {
        let mut s = self.state();
        Self::check(&s, "nft_apply")?;
        let tables = nft_transaction(&s.nft_tables, script).map_err(|e| EffectError::Command {
            command: "nft -f -".into(),
            status: "exit status 1".into(),
            stderr: e,
        })?;
        s.nft_tables = tables;
        s.nft_generation += 1;
        s.log.push("nft_apply".into());
        Ok(())
    }

    fn nft_list_table(&self, family: &str, name: &str) -> Result<Option<String>, EffectError> {
        let s = self.state();
        Self::check(&s, "nft_list_table")?;
        Ok(s.nft_tables.get(&format!("{family} {name}")).cloned())
    }

    fn nft_list_table_json(
        &self,
        family: &str,
        name: &str,
    ) -> Result<Option<serde_json::Value>, EffectError> {
        let s = self.state();
        Self::check(&s, "nft_list_table")?;
        let Some(text) = s.nft_tables.get(&format!("{family} {name}")) else {
            return Ok(None);
        };
        // Not nft's schema in detail: one object per line, enough for a
        // caller that counts rules or looks for a comment.
        let mut items = vec![
            serde_json::json!({"metainfo": {"json_schema_version": 1}}),
            serde_json::json!({"table": {"family": family, "name": name, "handle": s.nft_generation}}),
        ];
        items.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| l.contains(" comment \""))
                .map(|l| serde_json::json!({"rule": {"family": family, "table": name, "text": l}})),
        );
        Ok(Some(serde_json::json!({ "nftables": items })))
    }

    fn module_loaded(&self, module: &str) -> Result<bool, EffectError> {
        Ok(self.state().modules_loaded.contains(module))
    }

    fn load_module(&self, module: &str) -> Result<(), EffectError> {
        let mut s = self.state();
        Self::check(&s, &format!("load_module {module}"))?;
        if !s.modules_available.contains(module) {
            return Err(EffectError::Command {
                command: format!("modprobe {module}"),
                status: "exit status 1".into(),
                stderr: format!("modprobe: FATAL: Module {module} not found"),
            });
        }
        s.modules_loaded.insert(module.to_string());
        s.log.push(format!("load_module {module}"));
        Ok(())
    }

    fn restart_engine(&self) -> Result<(), EffectError> {
        let mut s = self.state();
        Self::check(&s, "restart_engine")?;
        s.log.push("restart_engine".into());
        let daemon = s.files.get("/etc/docker/daemon.json").map(String::as_str);
        let check = self.engine_check.lock().unwrap_or_else(|p| p.into_inner());
        s.engine_up = check.as_ref().and_then(|c| c(daemon)).is_none();
        Ok(())
    }

    fn engine_ready(&self) -> Result<(), EffectError> {
        let s = self.state();
        Self::check(&s, "engine_ready")?;
        if s.engine_up {
            return Ok(());
        }
        let daemon = s.files.get("/etc/docker/daemon.json").map(String::as_str);
        let check = self.engine_check.lock().unwrap_or_else(|p| p.into_inner());
        Err(EffectError::EngineNotReady {
            socket: "/var/run/docker.sock".into(),
            waited: std::time::Duration::from_secs(60),
            reason: check
                .as_ref()
                .and_then(|c| c(daemon))
                .unwrap_or_else(|| "the engine is down".into()),
        })
    }

    fn update_bootloader(&self) -> Result<BootloaderUpdate, EffectError> {
        let mut s = self.state();
        Self::check(&s, "update_bootloader")?;
        if !s.update_grub_installed {
            return Ok(BootloaderUpdate::NotInstalled);
        }
        s.log.push("update_bootloader".into());
        // What update-grub does: the generated config picks up the cmdline.
        let cmdline = s
            .files
            .get("/etc/default/grub")
            .and_then(|g| super::grub::cmdline_args(g))
            .unwrap_or_default();
        s.files.insert(
            "/boot/grub/grub.cfg".into(),
            format!("linux /vmlinuz root=/dev/vda1 {cmdline}\n"),
        );
        Ok(BootloaderUpdate::Ran)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_transactions_are_all_or_nothing() {
        let m = MemoryEffects::new();
        m.nft_apply("table inet apiary {}\ndelete table inet apiary\ntable inet apiary {\n\tchain input {\n\t}\n}\n")
            .expect("apply");
        assert!(m.nft_list_table("inet", "apiary").expect("list").is_some());
        let before = m.state().nft_tables.clone();
        assert!(m.nft_apply("delete table inet apiary\nbogus\n").is_err());
        assert_eq!(m.state().nft_tables, before);
        assert!(m.nft_list_table("inet", "other").expect("list").is_none());
    }

    #[test]
    fn failures_are_injected_per_operation() {
        let m = MemoryEffects::debian_host();
        let fwd = SysctlName::parse("net.ipv4.ip_forward").expect("name");
        m.fail("write_sysctl net.ipv4.ip_forward", "read-only file system");
        let e = m.write_sysctl(&fwd, "1").expect_err("injected");
        assert_eq!(
            e.to_string(),
            "write_sysctl net.ipv4.ip_forward: read-only file system"
        );
        m.heal("write_sysctl net.ipv4.ip_forward");
        m.write_sysctl(&fwd, "1").expect("healed");
        assert!(m.load_module("nonexistent").is_err());
        assert_eq!(m.log(), ["write_sysctl net.ipv4.ip_forward=1"]);
    }
}
