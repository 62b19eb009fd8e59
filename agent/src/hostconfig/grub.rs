//! The GRUB item: cgroup v1 memory accounting through the kernel command
//! line (`cgroup_enable=memory swapaccount=1`).

use super::effects::{BootloaderUpdate, HostEffects};
use super::report::{HostFacts, ItemReport, Outcome, unified_diff};
use apiary_api::hostconfig::GrubMode;

pub const GRUB_DEFAULTS: &str = "/etc/default/grub";
/// Where update-grub writes (Debian) or grub2-mkconfig (Fedora family).
const GENERATED: [&str; 2] = ["/boot/grub/grub.cfg", "/boot/grub2/grub.cfg"];
const REQUIRED_ARGS: [&str; 2] = ["cgroup_enable=memory", "swapaccount=1"];
const ITEM: &str = "grub";

/// The words of GRUB_CMDLINE_LINUX (its last assignment wins, as in the shell).
pub fn cmdline_args(grub: &str) -> Option<String> {
    grub.lines()
        .filter_map(cmdline_value)
        .next_back()
        .map(|(_, v)| v.to_string())
}

/// `(quote, value)` of a `GRUB_CMDLINE_LINUX=` line.
fn cmdline_value(line: &str) -> Option<(Option<char>, &str)> {
    let rest = line.trim_start().strip_prefix("GRUB_CMDLINE_LINUX=")?;
    let rest = rest.trim_end();
    for q in ['"', '\''] {
        if let Some(inner) = rest.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return Some((Some(q), inner));
        }
    }
    Some((None, rest))
}

/// The GRUB defaults with the memory accounting arguments ensured on
/// GRUB_CMDLINE_LINUX, every other argument kept in place; `None` when
/// nothing needs to change.
pub fn ensure_args(grub: &str) -> Option<String> {
    let last = grub
        .lines()
        .enumerate()
        .filter(|(_, l)| cmdline_value(l).is_some())
        .map(|(i, _)| i)
        .last();
    let fixed = |value: &str| -> Option<String> {
        let mut args: Vec<String> = value
            .split_whitespace()
            // cgroup_disable=memory would win over cgroup_enable.
            .filter(|a| *a != "cgroup_disable=memory")
            .map(|a| {
                if a.starts_with("swapaccount=") {
                    "swapaccount=1".to_string()
                } else {
                    a.to_string()
                }
            })
            .collect();
        for want in REQUIRED_ARGS {
            if !args.iter().any(|a| a == want) {
                args.push(want.to_string());
            }
        }
        let new = args.join(" ");
        (new != value.split_whitespace().collect::<Vec<_>>().join(" ")).then_some(new)
    };
    let Some(index) = last else {
        let mut out = grub.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!(
            "GRUB_CMDLINE_LINUX=\"{}\"\n",
            REQUIRED_ARGS.join(" ")
        ));
        return Some(out);
    };
    let mut lines: Vec<String> = grub.lines().map(str::to_string).collect();
    let (quote, value) = cmdline_value(&lines[index])?;
    let new = fixed(value)?;
    let q = quote.unwrap_or('"');
    lines[index] = format!("GRUB_CMDLINE_LINUX={q}{new}{q}");
    let mut out = lines.join("\n");
    if grub.ends_with('\n') {
        out.push('\n');
    }
    Some(out)
}

/// Ensures memory accounting where (and only where) a cgroup v1 host lacks
/// it. A host that has it, or a cgroup v2 host, is never touched.
pub fn apply_grub(
    mode: GrubMode,
    facts: &HostFacts,
    effects: &dyn HostEffects,
    dry_run: bool,
) -> ItemReport {
    if facts.memory_accounting {
        return ItemReport::ok(ITEM);
    }
    if facts.cgroup_version >= 2 {
        return ItemReport::failed(
            ITEM,
            "cgroup v2 without the memory controller: remove cgroup_disable=memory from the kernel command line and reboot (GRUB left alone)",
        );
    }
    if mode == GrubMode::Off {
        return ItemReport::failed(
            ITEM,
            "memory accounting is off and grub = \"off\": add cgroup_enable=memory swapaccount=1 to the kernel command line and reboot, or set grub = \"auto\"",
        );
    }
    let now = match effects.read_file(GRUB_DEFAULTS) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return ItemReport::failed(
                ITEM,
                format!(
                    "memory accounting is off and there is no {GRUB_DEFAULTS} (not booted by GRUB?): add cgroup_enable=memory swapaccount=1 to the kernel command line by hand and reboot"
                ),
            );
        }
        Err(e) => return ItemReport::failed(ITEM, format!("cannot read it: {e}")),
    };
    let new = ensure_args(&now);
    let generated = GENERATED.iter().any(|p| {
        effects
            .read_file(p)
            .ok()
            .flatten()
            .is_some_and(|cfg| REQUIRED_ARGS.iter().all(|a| cfg.contains(a)))
    });
    let diff = new.as_ref().map(|n| unified_diff(GRUB_DEFAULTS, &now, n));
    if new.is_none() && generated {
        // Done earlier; only the reboot is missing.
        return ItemReport::new(ITEM, Outcome::NeedsReboot, None);
    }
    if dry_run {
        return ItemReport::new(
            ITEM,
            Outcome::NeedsReboot,
            Some(diff.unwrap_or_else(|| "would run update-grub".into())),
        );
    }
    if let Some(n) = &new
        && let Err(e) = effects.write_file(GRUB_DEFAULTS, n)
    {
        return ItemReport::failed(ITEM, format!("cannot update it: {e}")).with_diff(diff);
    }
    match effects.update_bootloader() {
        Ok(BootloaderUpdate::Ran) => ItemReport::new(ITEM, Outcome::NeedsReboot, diff),
        Ok(BootloaderUpdate::NotInstalled) => ItemReport::failed(
            ITEM,
            format!(
                "{GRUB_DEFAULTS} has cgroup_enable=memory swapaccount=1 but there is no update-grub here: regenerate GRUB's config (grub-mkconfig -o /boot/grub/grub.cfg) and reboot"
            ),
        )
        .with_diff(diff),
        Err(e) => ItemReport::failed(
            ITEM,
            format!("{GRUB_DEFAULTS} is updated but regenerating GRUB's config failed: {e}; run update-grub by hand and reboot"),
        )
        .with_diff(diff),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostconfig::memory::{DEBIAN_GRUB_DEFAULTS, MemoryEffects};

    fn v1_without_accounting() -> HostFacts {
        HostFacts {
            cgroup_version: 1,
            memory_accounting: false,
            ..HostFacts::default()
        }
    }

    #[test]
    fn cmdline_editing_keeps_other_args() {
        let new = ensure_args(DEBIAN_GRUB_DEFAULTS).expect("changes");
        assert!(
            new.contains(
                "GRUB_CMDLINE_LINUX=\"console=ttyS0 cgroup_enable=memory swapaccount=1\"\n"
            )
        );
        assert!(new.contains("GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n"));
        assert_eq!(ensure_args(&new), None, "idempotent");
        assert_eq!(
            ensure_args("GRUB_CMDLINE_LINUX='a swapaccount=0 cgroup_disable=memory b'\n")
                .as_deref(),
            Some("GRUB_CMDLINE_LINUX='a swapaccount=1 b cgroup_enable=memory'\n")
        );
        assert_eq!(
            ensure_args("GRUB_TIMEOUT=5").as_deref(),
            Some("GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX=\"cgroup_enable=memory swapaccount=1\"\n")
        );
        assert_eq!(
            cmdline_args("GRUB_CMDLINE_LINUX=\"a\"\nGRUB_CMDLINE_LINUX=\"b c\"\n").as_deref(),
            Some("b c")
        );
    }

    #[test]
    fn v1_without_accounting_needs_reboot_once_then_waits() {
        let m = MemoryEffects::debian_host();
        let f = v1_without_accounting();
        let first = apply_grub(GrubMode::Auto, &f, &m, false);
        assert_eq!(first.outcome, Outcome::NeedsReboot);
        assert!(
            first.diff.as_deref().is_some_and(|d| d.contains(
                "+GRUB_CMDLINE_LINUX=\"console=ttyS0 cgroup_enable=memory swapaccount=1\""
            )),
            "{first:?}"
        );
        assert_eq!(
            m.log(),
            ["write_file /etc/default/grub", "update_bootloader"]
        );
        // Until the reboot: still needs it, nothing written again.
        let second = apply_grub(GrubMode::Auto, &f, &m, false);
        assert_eq!((second.outcome, second.diff), (Outcome::NeedsReboot, None));
        assert_eq!(m.log().len(), 2);
        // Drift: someone edits the args away; they come back.
        m.state()
            .files
            .insert(GRUB_DEFAULTS.into(), DEBIAN_GRUB_DEFAULTS.into());
        let third = apply_grub(GrubMode::Auto, &f, &m, false);
        assert!(third.diff.is_some());
        assert_eq!(m.log().len(), 4);
        // After the reboot the facts say accounting is on: ok, untouched.
        let on = HostFacts {
            memory_accounting: true,
            ..f
        };
        assert_eq!(
            apply_grub(GrubMode::Auto, &on, &m, false).outcome,
            Outcome::Ok
        );
        assert_eq!(m.log().len(), 4);
    }

    #[test]
    fn cgroup_v2_and_accounting_hosts_are_not_touched() {
        let m = MemoryEffects::debian_host();
        let v2 = HostFacts {
            cgroup_version: 2,
            memory_accounting: true,
            ..HostFacts::default()
        };
        assert_eq!(
            apply_grub(GrubMode::Auto, &v2, &m, false).outcome,
            Outcome::Ok
        );
        let v2_off = HostFacts {
            memory_accounting: false,
            ..v2
        };
        assert!(apply_grub(GrubMode::Auto, &v2_off, &m, false).is_failed());
        assert!(m.log().is_empty());
    }

    #[test]
    fn dry_run_and_failures() {
        let m = MemoryEffects::debian_host();
        let f = v1_without_accounting();
        let before = m.state().clone();
        let dry = apply_grub(GrubMode::Auto, &f, &m, true);
        assert_eq!(dry.outcome, Outcome::NeedsReboot);
        assert!(dry.diff.is_some());
        assert_eq!(*m.state(), before);

        let off = apply_grub(GrubMode::Off, &f, &m, false);
        assert!(matches!(off.outcome, Outcome::Failed(ref w) if w.contains("grub = \"auto\"")));

        m.fail(
            "update_bootloader",
            "grub-probe: error: failed to get canonical path",
        );
        let r = apply_grub(GrubMode::Auto, &f, &m, false);
        assert!(
            matches!(&r.outcome, Outcome::Failed(w) if w.contains("canonical path") && w.contains("update-grub by hand")),
            "{r:?}"
        );
        m.heal("update_bootloader");
        m.state().update_grub_installed = false;
        let r = apply_grub(GrubMode::Auto, &f, &m, false);
        assert!(
            matches!(&r.outcome, Outcome::Failed(w) if w.contains("grub-mkconfig")),
            "{r:?}"
        );

        let none = MemoryEffects::new();
        let r = apply_grub(GrubMode::Auto, &f, &none, false);
        assert!(
            matches!(&r.outcome, Outcome::Failed(w) if w.contains("by hand")),
            "{r:?}"
        );
    }
}
