//! What an applier says about one item, and what the host looks like to it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The result of applying (or, in a dry run, of checking) one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemReport {
    /// "firewall", "daemon.json", "grub", "kernel version",
    /// "kernel vxlan", "sysctl net.ipv4.ip_forward", ...
    pub item: String,
    pub outcome: Outcome,
    /// What changed, or in a dry run what would change: a unified diff for
    /// files and the firewall, "a -> b" for single values. `None` when
    /// nothing differs.
    pub diff: Option<String>,
}

/// How one item stands. In a dry run, `Changed` and `NeedsReboot` with a
/// diff mean "would change"; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "kebab-case")]
pub enum Outcome {
    /// Already as desired; nothing written.
    Ok,
    /// Was different and has been made right (drift repaired, or first apply).
    Changed,
    /// Could not be made right; the reason says what to do.
    Failed(String),
    /// Made right on disk, takes effect at the next boot.
    NeedsReboot,
}

impl ItemReport {
    pub fn ok(item: impl Into<String>) -> Self {
        Self::new(item, Outcome::Ok, None)
    }

    pub fn changed(item: impl Into<String>, diff: String) -> Self {
        Self::new(item, Outcome::Changed, Some(diff))
    }

    pub fn failed(item: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new(item, Outcome::Failed(reason.into()), None)
    }

    pub fn new(item: impl Into<String>, outcome: Outcome, diff: Option<String>) -> Self {
        ItemReport {
            item: item.into(),
            outcome,
            diff,
        }
    }

    pub fn with_diff(mut self, diff: Option<String>) -> Self {
        self.diff = diff;
        self
    }

    pub fn is_failed(&self) -> bool {
        matches!(self.outcome, Outcome::Failed(_))
    }
}

/// A unified diff of two texts, labelled with the file they are.
pub fn unified_diff(label: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{label} (now)"), &format!("{label} (desired)"))
        .to_string()
}

/// "a -> b" for single values; an absent value shows as "(none)".
pub fn value_diff(old: Option<&str>, new: &str) -> String {
    format!("{} -> {new}", old.unwrap_or("(none)"))
}

/// What the appliers need to know about the host, gathered by
/// [`crate::facts::FactsSource::gather`] (convert with `From<&Facts>`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    /// `uname -r`, e.g. "6.1.0-18-amd64".
    pub kernel_release: String,
    pub cgroup_version: u32,
    pub memory_accounting: bool,
    /// Interface name → its addresses.
    pub interfaces: Vec<(String, Vec<IpAddr>)>,
    /// The address the facts classified as public.
    pub public_ip: Option<IpAddr>,
    pub kernel_features: Vec<FeatureFact>,
}

/// One kernel feature Swarm needs, as the facts found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureFact {
    /// The module name: vxlan, overlay, br_netfilter, ip_vs.
    pub name: String,
    pub state: FeatureState,
    /// How it was found, or what to do.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureState {
    Loaded,
    BuiltIn,
    /// Available as a module that was not loaded when facts were gathered.
    Module,
    Missing,
}

impl From<&apiary_proto::KernelFeature> for FeatureFact {
    fn from(f: &apiary_proto::KernelFeature) -> Self {
        // facts::feature encodes how a feature was found only in its detail
        // text; the test below pins that coupling.
        let state = if !f.available {
            FeatureState::Missing
        } else if f.detail == "loaded" {
            FeatureState::Loaded
        } else if f.detail.starts_with("built into") {
            FeatureState::BuiltIn
        } else {
            FeatureState::Module
        };
        FeatureFact {
            name: f.name.clone(),
            state,
            detail: f.detail.clone(),
        }
    }
}

impl From<&apiary_proto::Facts> for HostFacts {
    fn from(f: &apiary_proto::Facts) -> Self {
        HostFacts {
            kernel_release: f.kernel_version.clone(),
            cgroup_version: f.cgroup_version,
            memory_accounting: f.memory_accounting,
            interfaces: f
                .interfaces
                .iter()
                .map(|i| {
                    (
                        i.name.clone(),
                        i.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                    )
                })
                .collect(),
            public_ip: f.public_ip.parse().ok(),
            kernel_features: f.kernel_features.iter().map(FeatureFact::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::feature;

    #[test]
    fn feature_states_follow_the_facts_detection() {
        let cfg = "CONFIG_VXLAN=y\nCONFIG_OVERLAY_FS=m\n";
        let state = |f| FeatureFact::from(&f).state;
        assert_eq!(
            state(feature("vxlan", "CONFIG_VXLAN", true, Some(cfg), "")),
            FeatureState::Loaded
        );
        assert_eq!(
            state(feature("vxlan", "CONFIG_VXLAN", false, Some(cfg), "")),
            FeatureState::BuiltIn
        );
        assert_eq!(
            state(feature(
                "overlay",
                "CONFIG_OVERLAY_FS",
                false,
                Some(cfg),
                ""
            )),
            FeatureState::Module
        );
        assert_eq!(
            state(feature("ip_vs", "CONFIG_IP_VS", false, Some(cfg), "")),
            FeatureState::Missing
        );
    }

    #[test]
    fn host_facts_from_the_wire_form() {
        let f = apiary_proto::Facts {
            kernel_version: "6.1.0".into(),
            cgroup_version: 1,
            memory_accounting: true,
            interfaces: vec![apiary_proto::Interface {
                name: "eth1".into(),
                addresses: vec!["198.18.0.11".into()],
            }],
            public_ip: "198.18.0.11".into(),
            private_ip: String::new(),
            ..Default::default()
        };
        let h = HostFacts::from(&f);
        assert_eq!(h.public_ip, Some("198.18.0.11".parse().expect("ip")));
        assert_eq!(h.interfaces[0].1.len(), 1);
    }

    #[test]
    fn reports_serialize_with_their_reason() {
        let r = ItemReport::failed("firewall", "no nft");
        let j = serde_json::to_value(&r).expect("json");
        assert_eq!(j["outcome"]["state"], "failed");
        assert_eq!(j["outcome"]["reason"], "no nft");
        let d = unified_diff("/etc/x", "a\nb\n", "a\nc\n");
        assert!(d.contains("-b\n+c\n"), "{d}");
    }
}
