//! # Host configuration: the agent applies, and keeps applying, what a
//! cluster host needs
//!
//! The coordinator sends a [`HostConfigSpec`]; the agent validates it into a
//! [`HostConfig`] ("parse, don't check": the coordinator runs the same
//! validation on its cluster file first and refuses a bad one, naming the
//! key, before anything is sent) and applies it item by item with
//! [`apply`]. Every item reads the host, compares with what is wanted,
//! writes only if different, and reports an [`ItemReport`]: `ok`,
//! `changed` (with a diff), `failed` (with a reason that says what to do)
//! or `needs-reboot`. A dry run (`ctl hosts apply --dry-run`) is the same
//! call with `dry_run = true`: nothing is written and the reports carry the
//! diffs that would be applied. [`keep_applied`] re-applies on an interval
//! (default [`DEFAULT_INTERVAL`]) so drift is repaired and reported.
//!
//! ## Items, in the order they are applied
//!
//! | item | what | module |
//! | --- | --- | --- |
//! | `firewall` | the nftables table `inet apiary` (see below) | [`firewall`] |
//! | `kernel version` | ≥ 3.16 | [`kernel`] |
//! | `kernel vxlan`, `kernel overlay`, `kernel br_netfilter`, `kernel ip_vs` | available; loaded with modprobe when `manage_modules` | [`kernel`] |
//! | `sysctl NAME` | `net.ipv4.ip_forward=1`, `net.bridge.bridge-nf-call-ip{,6}tables=1`, plus the spec's | [`sysctls`] |
//! | `grub` | `cgroup_enable=memory swapaccount=1` on cgroup v1 hosts without memory accounting → `needs-reboot` | [`grub`] |
//! | `daemon.json` | the spec's keys merged into `/etc/docker/daemon.json`; engine restarted on change; rolled back if it does not come back | [`daemon_json`] |
//!
//! The firewall goes first: it is what protects the host, and it depends on
//! nothing else. Kernel modules go before sysctls because the bridge
//! sysctls exist only once br_netfilter is loaded.
//!
//! **Which failures are fatal.** None stops the other items: each item is
//! independent, and skipping the firewall because, say, the kernel lacks
//! ip_vs would leave a host open for a reason unrelated to its firewall.
//! Within an item, a failure ends that item only, and the next round tries
//! again, with two deliberate exceptions: a daemon.json the engine refused
//! is not retried until the desired file changes (see
//! [`daemon_json::REFUSED`]: retrying would restart a healthy engine every
//! interval), and an existing daemon.json that is not valid JSON is never
//! overwritten (it is someone's). Invalid configuration cannot reach the
//! appliers at all: they only accept a validated [`HostConfig`].
//!
//! ## The firewall
//!
//! One table, `inet apiary`, replaced as a whole in one `nft -f`
//! transaction (`table inet apiary {}` + `delete table inet apiary` + the
//! definition). apiary never flushes the ruleset or touches another table.
//! Both chains have policy accept and priority `filter - 10`: our drops
//! are final, our accepts only mean "not dropped by apiary". Rendered for a
//! host whose public interface is eth1 and private eth0 (private network
//! 10.231.0.0/24, port 8080 published to the public side, encrypted
//! overlay; nft's tabs shown as spaces):
//!
//! ```text
//! table inet apiary {
//!     comment "apiary spec=<hash of the rules> live=<hash of nft's listing>"
//!     chain input {
//!         type filter hook input priority filter - 10; policy accept;
//!         iifname "lo" accept comment "loopback"
//!         ct state established,related accept comment "replies"
//!         meta l4proto { icmp, ipv6-icmp } accept comment "icmp"
//!         iifname "eth1" tcp dport 22 accept comment "ssh"
//!         iifname "eth1" tcp dport 7443 accept comment "coordinator"
//!         iifname "eth1" drop comment "public side closed"
//!         iifname "eth0" ip saddr 10.231.0.0/24 tcp dport { 2377, 7946 } accept comment "swarm tcp from the private network"
//!         iifname "eth0" ip saddr 10.231.0.0/24 udp dport { 4789, 7946 } accept comment "swarm udp from the private network"
//!         iifname "eth0" ip saddr 10.231.0.0/24 meta l4proto esp accept comment "encrypted overlay from the private network"
//!         tcp dport { 2377, 7946 } drop comment "swarm tcp only from the private network"
//!         udp dport { 4789, 7946 } drop comment "swarm udp only from the private network"
//!         meta l4proto esp drop comment "esp only from the private network"
//!     }
//!
//!     chain forward {
//!         type filter hook forward priority filter - 10; policy accept;
//!         ip daddr 169.254.169.254 drop comment "containers never reach the metadata service"
//!         iifname "eth1" ct state established,related accept comment "replies to containers"
//!         iifname "eth1" meta l4proto tcp ct status dnat ct original proto-dst 8080 accept comment "published port 8080 allowed"
//!         iifname "eth1" drop comment "published ports closed to the public side"
//!     }
//! }
//! ```
//!
//! The forward chain is the DOCKER-USER path: why it catches published
//! ports, and how drift is detected (the comment's two hashes), is
//! explained in [`firewall`].
//!
//! ## Side effects
//!
//! Everything goes through [`HostEffects`]: files below a root prefix
//! ([`host_path`] refuses `..`; absolute paths are the host's, below the
//! prefix), commands, sysctls, nftables, modules, the engine's restart and
//! readiness, the bootloader. [`RealEffects`] does it for real (fields say
//! where: [`RealEffects::host`] for a systemd host; the lab sets its host's
//! root prefix, its engine restart command and socket, and no update-grub);
//! [`MemoryEffects`] is an in-memory host with injectable failures for unit
//! tests and simulated agents.
//!
//! ```no_run
//! # use apiary_agent::hostconfig::*;
//! # fn demo(facts: &apiary_proto::Facts) -> Result<(), SpecError> {
//! let mut spec = HostConfigSpec::new("10.231.0.0/24");
//! spec.firewall.allow_public_tcp = vec![8080];
//! let config = HostConfig::new(spec)?; // the error names the key
//! let effects = RealEffects::host();
//! for r in apply(&config, &effects, &HostFacts::from(facts), true) {
//!     println!("{}: {:?}\n{}", r.item, r.outcome, r.diff.unwrap_or_default());
//! }
//! # Ok(()) }
//! ```
//!
//! ## Limitations
//!
//! - Kernel features come from the facts given (gathered at agent start);
//!   only whether a module is still loaded is checked live.
//! - `allow_public_tcp` covers TCP; published UDP ports stay closed to the
//!   public side.
//! - No pre-validation of daemon.json with the engine (`dockerd
//!   --validate` needs Docker 23; Debian 12 ships 20.10): a bad file is
//!   found by restarting and rolled back.
//! - In the lab, non-`net.*` sysctls under `/proc/sys` are machine-wide.
//! - The nftables table lives in the kernel only: after a reboot the host
//!   is open until the agent starts and applies it again (first round of
//!   [`keep_applied`]).
//! - The public side accepts only what the policy says: a host that renews
//!   its public address by broadcast DHCP would need a rule for it.

pub mod daemon_json;
mod effects;
pub mod firewall;
pub mod grub;
pub mod kernel;
mod memory;
mod real;
mod report;

pub mod sysctls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

pub use apiary_api::hostconfig::{
    Cidr, FirewallPolicy, FirewallSpec, GrubMode, HostConfig, HostConfigSpec, IfName,
    REQUIRED_SYSCTLS, SpecError, SysctlName, SysctlValue,
};
pub use effects::{BootloaderUpdate, CmdOutput, EffectError, HostEffects, host_path, sysctl_path};
pub use memory::{DEBIAN_GRUB_DEFAULTS, EngineCheck, MemState, MemoryEffects};
pub use real::RealEffects;
pub use report::{
    FeatureFact, FeatureState, HostFacts, ItemReport, Outcome, unified_diff, value_diff,
};

/// How often [`keep_applied`] re-checks when nothing asks it to.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Applies every item (or, with `dry_run`, only reports what it would
/// change) and returns one report per item, in the order of the table in
/// the module docs. Blocking: run it on a blocking thread from async code.
pub fn apply(
    config: &HostConfig,
    effects: &dyn HostEffects,
    facts: &HostFacts,
    dry_run: bool,
) -> Vec<ItemReport> {
    let mut reports = vec![firewall::apply_firewall(
        config.firewall(),
        facts,
        effects,
        dry_run,
    )];
    reports.push(kernel::check_kernel_version(&facts.kernel_release));
    reports.extend(kernel::apply_kernel_features(
        facts,
        effects,
        config.manage_modules(),
        dry_run,
    ));
    reports.extend(sysctls::apply_sysctls(config, effects, dry_run));
    reports.push(grub::apply_grub(config.grub(), facts, effects, dry_run));
    reports.push(daemon_json::apply_daemon_json(
        config.daemon_json(),
        effects,
        dry_run,
    ));
    reports
}

/// Why a round of [`keep_applied`] ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundReason {
    /// The first round, with the config the loop started with.
    First,
    /// The coordinator sent a new config.
    SpecChanged,
    /// The interval elapsed: a `changed` item here is repaired drift.
    Interval,
    /// Someone asked for a re-check (the coordinator's request).
    Requested,
}

/// One round of [`keep_applied`].
#[derive(Debug, Clone)]
pub struct Round {
    pub reason: RoundReason,
    pub reports: Vec<ItemReport>,
    /// How long the round took (a full re-check of an applied host is a
    /// few nft/file reads: milliseconds).
    pub took: Duration,
}

impl Round {
    /// Items found drifted and repaired: `changed` in a round that no
    /// config change caused.
    pub fn repaired_drift(&self) -> Vec<&ItemReport> {
        match self.reason {
            RoundReason::Interval | RoundReason::Requested => self
                .reports
                .iter()
                .filter(|r| r.outcome == Outcome::Changed)
                .collect(),
            RoundReason::First | RoundReason::SpecChanged => Vec::new(),
        }
    }
}

/// Applies `config` now, then again whenever it changes, `recheck` is
/// notified, or `interval` passes since the last round (so a missed event
/// still heals). Each round is reported to `on_round`. Returns when the
/// config's sender is dropped (the session ended).
///
/// Rounds run on tokio's blocking pool: an engine restart can block for
/// up to the readiness timeout and must not stall the session's task.
///
/// Route every real apply of a host through this one loop (a new config
/// through the watch channel, "apply now" through `recheck`): two applies
/// racing would each replace the firewall table and could each see the
/// other's write as drift. Dry runs ([`apply`] with `dry_run`) write
/// nothing and may run at any time beside it.
pub async fn keep_applied(
    mut config: watch::Receiver<Arc<HostConfig>>,
    effects: Arc<dyn HostEffects>,
    facts: Arc<HostFacts>,
    interval: Duration,
    recheck: Arc<Notify>,
    mut on_round: impl FnMut(Round),
) {
    let mut reason = RoundReason::First;
    loop {
        let current = config.borrow_and_update().clone();
        let (e, f) = (effects.clone(), facts.clone());
        let started = Instant::now();
        let reports = tokio::task::spawn_blocking(move || apply(&current, e.as_ref(), &f, false))
            .await
            .unwrap_or_else(|panic| {
                vec![ItemReport::failed(
                    "host configuration",
                    format!("the appliers panicked ({panic}); this is a bug in the agent"),
                )]
            });
        on_round(Round {
            reason,
            reports,
            took: started.elapsed(),
        });
        reason = tokio::select! {
            changed = config.changed() => match changed {
                Ok(()) => RoundReason::SpecChanged,
                Err(_) => return,
            },
            () = recheck.notified() => RoundReason::Requested,
            () = tokio::time::sleep(interval) => RoundReason::Interval,
        };
    }
}

#[cfg(test)]
mod tests;
