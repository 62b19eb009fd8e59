//! Sysctl items: the ones Swarm needs plus the cluster config's extras.

use super::effects::HostEffects;
use super::report::{ItemReport, value_diff};
use apiary_api::hostconfig::{HostConfig, SysctlName, normalize_sysctl};

/// One report per sysctl ("sysctl net.ipv4.ip_forward"). Values compare
/// whitespace-normalized (the kernel prints ranges with a tab), and a
/// written value is read back because some sysctls clamp what they get.
pub fn apply_sysctls(
    config: &HostConfig,
    effects: &dyn HostEffects,
    dry_run: bool,
) -> Vec<ItemReport> {
    config
        .sysctls()
        .iter()
        .map(|(name, want)| apply_one(name, want, effects, dry_run))
        .collect()
}

fn apply_one(
    name: &SysctlName,
    want: &str,
    effects: &dyn HostEffects,
    dry_run: bool,
) -> ItemReport {
    let item = format!("sysctl {name}");
    let now = match effects.read_sysctl(name) {
        Ok(Some(v)) => v,
        Ok(None) => return ItemReport::failed(item, missing_advice(name)),
        Err(e) => return ItemReport::failed(item, format!("cannot read it: {e}")),
    };
    if normalize_sysctl(&now) == want {
        return ItemReport::ok(item);
    }
    let diff = value_diff(Some(&normalize_sysctl(&now)), want);
    if dry_run {
        return ItemReport::changed(item, diff);
    }
    if let Err(e) = effects.write_sysctl(name, want) {
        return ItemReport::failed(item, format!("cannot set it to {want}: {e}"))
            .with_diff(Some(diff));
    }
    match effects.read_sysctl(name) {
        Ok(Some(v)) if normalize_sysctl(&v) == want => ItemReport::changed(item, diff),
        Ok(v) => ItemReport::failed(
            item,
            format!(
                "wrote {want} but the kernel now reports {}; the kernel refuses or clamps this value: change it in the cluster config",
                v.as_deref().unwrap_or("nothing")
            ),
        )
        .with_diff(Some(diff)),
        Err(e) => ItemReport::failed(item, format!("set, but cannot read it back: {e}")),
    }
}

fn missing_advice(name: &SysctlName) -> String {
    if name.as_str().starts_with("net.bridge.") {
        format!(
            "no sysctl {name} on this host: the br_netfilter module is not loaded; load it (`modprobe br_netfilter`, or manage_modules = true)"
        )
    } else {
        format!(
            "no sysctl {name} on this host: check the name in the cluster config (or the kernel lacks the feature)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostconfig::memory::MemoryEffects;
    use crate::hostconfig::report::Outcome;
    use apiary_api::hostconfig::{HostConfigSpec, SysctlValue};

    fn config() -> HostConfig {
        let mut s = HostConfigSpec::new("10.231.0.0/24");
        s.sysctls
            .insert("vm.max_map_count".into(), SysctlValue::Int(262144));
        HostConfig::new(s).expect("valid")
    }

    fn outcomes(r: &[ItemReport]) -> Vec<Outcome> {
        r.iter().map(|r| r.outcome.clone()).collect()
    }

    #[test]
    fn first_apply_changes_second_is_a_no_op_drift_is_repaired() {
        let m = MemoryEffects::debian_host();
        let c = config();
        let first = apply_sysctls(&c, &m, false);
        assert_eq!(outcomes(&first), vec![Outcome::Changed; 4]);
        assert_eq!(
            first
                .iter()
                .find(|r| r.item == "sysctl vm.max_map_count")
                .and_then(|r| r.diff.as_deref()),
            Some("65530 -> 262144")
        );
        let writes = m.log().len();
        assert_eq!(
            outcomes(&apply_sysctls(&c, &m, false)),
            vec![Outcome::Ok; 4]
        );
        assert_eq!(m.log().len(), writes, "second apply wrote something");
        // Drift: forwarding turned off behind our back.
        m.state()
            .sysctls
            .insert("net.ipv4.ip_forward".into(), "0".into());
        let repaired = apply_sysctls(&c, &m, false);
        let fwd = repaired
            .iter()
            .find(|r| r.item == "sysctl net.ipv4.ip_forward")
            .expect("item");
        assert_eq!(
            (&fwd.outcome, fwd.diff.as_deref()),
            (&Outcome::Changed, Some("0 -> 1"))
        );
        assert_eq!(m.state().sysctls["net.ipv4.ip_forward"], "1");
    }

    #[test]
    fn dry_run_changes_nothing() {
        let m = MemoryEffects::debian_host();
        let before = m.state().clone();
        let dry = apply_sysctls(&config(), &m, true);
        assert_eq!(outcomes(&dry), vec![Outcome::Changed; 4]);
        assert!(dry.iter().all(|r| r.diff.is_some()));
        assert_eq!(*m.state(), before);
    }

    #[test]
    fn whitespace_does_not_count_as_drift() {
        let m = MemoryEffects::debian_host();
        let mut s = HostConfigSpec::new("10.231.0.0/24");
        s.sysctls.insert(
            "net.ipv4.ip_local_port_range".into(),
            SysctlValue::Text("32768 60999".into()),
        );
        m.state()
            .sysctls
            .insert("net.ipv4.ip_local_port_range".into(), "32768\t60999".into());
        let r = apply_sysctls(&HostConfig::new(s).expect("valid"), &m, false);
        assert!(
            r.iter()
                .any(|r| r.item.ends_with("port_range") && r.outcome == Outcome::Ok)
        );
    }

    #[test]
    fn failures_carry_their_reason() {
        let m = MemoryEffects::debian_host();
        m.state()
            .sysctls
            .remove("net.bridge.bridge-nf-call-iptables");
        m.fail("write_sysctl net.ipv4.ip_forward", "read-only file system");
        let r = apply_sysctls(&config(), &m, false);
        let why = |item: &str| match &r.iter().find(|r| r.item == item).expect("item").outcome {
            Outcome::Failed(w) => w.clone(),
            o => panic!("{item}: {o:?}"),
        };
        assert!(why("sysctl net.bridge.bridge-nf-call-iptables").contains("modprobe br_netfilter"));
        assert!(why("sysctl net.ipv4.ip_forward").contains("read-only file system"));
        // The others still applied: one item's failure does not stop another.
        assert_eq!(m.state().sysctls["vm.max_map_count"], "262144");
    }
}
