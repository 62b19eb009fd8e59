//! Kernel items: the version Swarm's overlay needs, and the features
//! (modules) it relies on, loaded where the spec allows.

use super::effects::HostEffects;
use super::report::{FeatureState, HostFacts, ItemReport, Outcome};
use crate::facts::REQUIRED_FEATURES;

/// VXLAN overlay networking in Docker needs at least this kernel.
pub const MIN_KERNEL: (u32, u32) = (3, 16);

/// "6.18.44-fc-v669" → (6, 18); `None` when it does not start with numbers.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    Some((major, minor))
}

pub fn check_kernel_version(release: &str) -> ItemReport {
    const ITEM: &str = "kernel version";
    match parse_release(release) {
        Some(v) if v >= MIN_KERNEL => ItemReport::ok(ITEM),
        Some(_) => ItemReport::failed(
            ITEM,
            format!(
                "kernel {release} is older than {}.{}, which Docker's overlay networks need; upgrade the kernel and reboot",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        ),
        None => ItemReport::failed(
            ITEM,
            format!(
                "cannot read the kernel version from {release:?}; check that the agent reports `uname -r`"
            ),
        ),
    }
}

/// What losing a feature costs, so a failed check says why it matters.
fn consequence(module: &str) -> &'static str {
    match module {
        "vxlan" => "overlay networks cannot carry traffic between hosts",
        "overlay" => "Docker cannot use the overlay2 storage driver",
        "br_netfilter" => {
            "the net.bridge sysctls do not exist and bridged container traffic bypasses the firewall"
        }
        "ip_vs" => {
            "Swarm's routing mesh and virtual-IP services need it; without it, use --endpoint-mode dnsrr and host-mode publishing"
        }
        _ => "Swarm needs it",
    }
}

/// One report per required feature ("kernel vxlan", ...). A feature that is
/// available as a module but not loaded is loaded with modprobe when
/// `manage_modules` is set; otherwise it is left to load on demand (the
/// kernel does for most of them) and reported ok, since it *is* available.
pub fn apply_kernel_features(
    facts: &HostFacts,
    effects: &dyn HostEffects,
    manage_modules: bool,
    dry_run: bool,
) -> Vec<ItemReport> {
    REQUIRED_FEATURES
        .iter()
        .map(|(module, _)| {
            let item = format!("kernel {module}");
            let Some(fact) = facts.kernel_features.iter().find(|f| f.name == *module) else {
                return ItemReport::failed(
                    item,
                    format!("the agent's facts say nothing about {module}; re-gather facts"),
                );
            };
            match fact.state {
                FeatureState::Loaded | FeatureState::BuiltIn => ItemReport::ok(item),
                // ip_vs is optional: without it apiary runs Swarm services
                // with DNS round robin and host-mode publishing (the lab's
                // kernel has no IPVS), so its absence is reported, not failed.
                FeatureState::Missing if *module == "ip_vs" => ItemReport::new(
                    item,
                    Outcome::Ok,
                    Some(format!("absent ({}): {}", fact.detail, consequence(module))),
                ),
                FeatureState::Missing => ItemReport::failed(
                    item,
                    format!("{}: {}", fact.detail, consequence(module)),
                ),
                FeatureState::Module => match effects.module_loaded(module) {
                    Ok(true) => ItemReport::ok(item),
                    Ok(false) if !manage_modules => ItemReport::ok(item),
                    Ok(false) if dry_run => ItemReport::changed(item, "not loaded -> loaded".into()),
                    Ok(false) => match effects.load_module(module) {
                        Ok(()) => ItemReport::changed(item, "not loaded -> loaded".into()),
                        Err(e) => ItemReport::failed(
                            item,
                            format!(
                                "{module} is available but could not be loaded ({e}); load it by hand with `modprobe {module}`, or {}",
                                consequence(module)
                            ),
                        ),
                    },
                    Err(e) => ItemReport::new(
                        item,
                        Outcome::Failed(format!("cannot tell whether {module} is loaded: {e}")),
                        None,
                    ),
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostconfig::memory::MemoryEffects;
    use crate::hostconfig::report::FeatureFact;

    fn facts(states: [FeatureState; 4]) -> HostFacts {
        HostFacts {
            kernel_release: "6.1.0-18-amd64".into(),
            kernel_features: REQUIRED_FEATURES
                .iter()
                .zip(states)
                .map(|((name, symbol), state)| FeatureFact {
                    name: name.to_string(),
                    state,
                    detail: match state {
                        FeatureState::Missing => {
                            format!("not in this kernel ({symbol} is not set); use a kernel built with {symbol}")
                        }
                        _ => "x".into(),
                    },
                })
                .collect(),
            ..HostFacts::default()
        }
    }

    #[test]
    fn versions() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("3.16.0-4-amd64"), Some((3, 16)));
        assert_eq!(parse_release("4.9+"), Some((4, 9)));
        assert_eq!(parse_release("banana"), None);
        assert_eq!(check_kernel_version("3.16.0").outcome, Outcome::Ok);
        let old = check_kernel_version("3.13.0-24-generic");
        assert!(
            matches!(&old.outcome, Outcome::Failed(r) if r.contains("upgrade the kernel")),
            "{old:?}"
        );
        assert!(check_kernel_version("").is_failed());
    }

    #[test]
    fn modules_load_once_then_stay_ok() {
        use FeatureState::*;
        let m = MemoryEffects::debian_host();
        let f = facts([Module, Loaded, Module, BuiltIn]);
        // Dry run: says what it would do, loads nothing.
        let dry = apply_kernel_features(&f, &m, true, true);
        assert_eq!(dry[0].outcome, Outcome::Changed);
        assert!(m.log().is_empty());
        // First apply loads vxlan (module), leaves the rest.
        let first = apply_kernel_features(&f, &m, true, false);
        let outcomes: Vec<_> = first.iter().map(|r| r.outcome.clone()).collect();
        assert_eq!(
            outcomes,
            [Outcome::Changed, Outcome::Ok, Outcome::Changed, Outcome::Ok]
        );
        assert_eq!(m.log(), ["load_module vxlan", "load_module br_netfilter"]);
        // Second apply: nothing to do, even though the facts are stale.
        let second = apply_kernel_features(&f, &m, true, false);
        assert!(
            second.iter().all(|r| r.outcome == Outcome::Ok),
            "{second:?}"
        );
        // Drift: someone unloads vxlan; the next apply loads it again.
        m.state().modules_loaded.remove("vxlan");
        let again = apply_kernel_features(&f, &m, true, false);
        assert_eq!(again[0].outcome, Outcome::Changed);
    }

    #[test]
    fn failures_say_what_to_do() {
        use FeatureState::*;
        let m = MemoryEffects::debian_host();
        m.fail("load_module vxlan", "operation not permitted");
        let f = facts([Module, Loaded, Loaded, Missing]);
        let r = apply_kernel_features(&f, &m, true, false);
        assert!(
            matches!(&r[0].outcome, Outcome::Failed(why) if why.contains("operation not permitted") && why.contains("modprobe vxlan")),
            "{:?}",
            r[0]
        );
        // ip_vs is optional: reported with what apiary does instead, not failed.
        assert_eq!(r[3].outcome, Outcome::Ok, "{:?}", r[3]);
        assert!(
            r[3].diff.as_deref().is_some_and(|d| d.contains("dnsrr")),
            "{:?}",
            r[3]
        );
        let no_vxlan = facts([Missing, Loaded, Loaded, Loaded]);
        let r = apply_kernel_features(&no_vxlan, &m, true, false);
        assert!(
            matches!(&r[0].outcome, Outcome::Failed(why) if why.contains("overlay networks")),
            "{:?}",
            r[0]
        );
        // Not allowed to load modules: available is enough.
        let hands_off = apply_kernel_features(&f, &m, false, false);
        assert_eq!(hands_off[0].outcome, Outcome::Ok);
    }
}
