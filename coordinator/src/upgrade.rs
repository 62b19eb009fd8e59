//! `ctl hosts upgrade [NODE...]`: the agents moved to the build this
//! coordinator serves, one host at a time, with no SSH.
//!
//! The build is the file at [`crate::artifacts::agent_path`] (the one
//! booting droplets download), opened and hashed once when the rollout
//! starts; its version is its stamp (`apiary_api::version`). For each host,
//! in placement order with the Swarm leader last: the `UpgradeAgent`
//! operation (the agent downloads the build over its own mTLS session,
//! checks it, keeps its old binary and restarts into the new one; see the
//! agent's `upgrade` module), then a wait until the host's agent is
//! connected on the new version, ready, and its host configuration ok. A
//! host that gives up the new agent puts the old one back by itself and
//! says why in its next hello: the rollout stops there and names the host
//! and the reason; hosts after it are not touched.
//!
//! An agent's session ends only on the host being upgraded, so the others'
//! heartbeats, Swarm and the database carry on (Docker does not restart
//! with its agent).
//!
//! Which agent versions this coordinator works with is [`outdated`]'s rule
//! (`apiary_api::version::compatibility`): an agent outside it is told so
//! in its welcome, gets no cluster work, and is upgraded like any other.
//! The order and the refusals are decided without I/O ([`upgrade_order`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_api::ops::UpgradeAgent;
use apiary_api::version::{Compatibility, OLDEST_AGENT, compatibility};
use tracing::{info, warn};

use crate::artifacts::AgentBinary;
use crate::context::ClusterContext;
use crate::core::Coordinator;
use crate::events::EventKind;
use crate::sessions::{CallError, call};
use crate::state::ConfigState;

/// How long a host's new agent has to be acknowledged before the host rolls
/// it back, unless the request says otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// Beyond the host's deadline: time for its old agent to be started again
/// and say why in its hello.
const REPORT_MARGIN: Duration = Duration::from_secs(30);

/// Why a rollout did not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "cannot roll out the agent build at {path}: {reason}; put the new agent binary there (or set [coordinator] agent_binary) and try again"
    )]
    NoBuild { path: String, reason: String },
    #[error("no node named {0:?}; `ctl status` lists the nodes")]
    NoSuchNode(String),
    #[error(
        "an agent rollout is already running; wait for it (`ctl events` shows each host as it is done)"
    )]
    Busy,
    #[error(
        "{} not connected, so {} cannot be upgraded now; start {} or name the other hosts",
        nodes.join(", "),
        if nodes.len() == 1 { "it" } else { "they" },
        if nodes.len() == 1 { "its agent" } else { "their agents" }
    )]
    NotConnected { nodes: Vec<String> },
    #[error(
        "{node}: the upgrade to {version} did not start: {reason}; the hosts after it were not upgraded"
    )]
    Step {
        node: String,
        version: String,
        reason: String,
    },
    #[error(
        "{node} rolled back to its old agent: {reason}; the rollout stopped, the hosts after it were not upgraded"
    )]
    RolledBack { node: String, reason: String },
    #[error(
        "{node} is not back on agent {version} after {} s ({waiting}); its agent rolls itself back if the new one never connects; the hosts after it were not upgraded",
        waited.as_secs()
    )]
    NotBack {
        node: String,
        version: String,
        waited: Duration,
        waiting: String,
    },
}

/// Why `node`'s agent of `version` gets no cluster work, or `None` when
/// this coordinator works with it.
pub fn outdated(node: &str, version: &str) -> Option<String> {
    let me = apiary_api::version::current();
    match compatibility(me, OLDEST_AGENT, version) {
        Compatibility::Compatible => None,
        Compatibility::TooOld { oldest } => Some(format!(
            "agent {version} on {node} is older than {oldest}, the oldest this coordinator ({me}) works with: run `ctl hosts upgrade {node}`"
        )),
        Compatibility::TooNew { coordinator } => Some(format!(
            "agent {version} on {node} is of a newer series than this coordinator ({coordinator}): upgrade the coordinator first"
        )),
        Compatibility::Unreadable => Some(format!(
            "the agent on {node} reports no version this coordinator can read ({version}): run `ctl hosts upgrade {node}`"
        )),
    }
}

/// A node and the agent version its session reported (`None`: no session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAgent {
    pub name: String,
    pub version: Option<String>,
}

/// The hosts to upgrade, in order: the ones named (each must be a node), or
/// every node; those already on `target` are left out. Every host left must
/// be connected (an agent that is down cannot be told). Placement order,
/// the Swarm leader last.
pub fn upgrade_order(
    requested: &[String],
    hosts: &[HostAgent],
    target: &str,
    leader: Option<&str>,
) -> Result<Vec<String>, UpgradeError> {
    for name in requested {
        if !hosts.iter().any(|h| h.name == *name) {
            return Err(UpgradeError::NoSuchNode(name.clone()));
        }
    }
    let chosen: Vec<&HostAgent> = hosts
        .iter()
        .filter(|h| requested.is_empty() || requested.contains(&h.name))
        .filter(|h| h.version.as_deref() != Some(target))
        .collect();
    let down: Vec<String> = chosen
        .iter()
        .filter(|h| h.version.is_none())
        .map(|h| h.name.clone())
        .collect();
    if !down.is_empty() {
        return Err(UpgradeError::NotConnected { nodes: down });
    }
    let mut names: Vec<String> = chosen.into_iter().map(|h| h.name.clone()).collect();
    names.sort_by(|a, b| crate::database::placement_order(a, b));
    names.sort_by_key(|n| Some(n.as_str()) == leader);
    Ok(names)
}

/// What a rollout did.
#[derive(Debug, Clone, Default)]
pub struct Rollout {
    pub version: String,
    pub steps: Vec<String>,
}

/// Upgrades `requested` (or every node) to the served build, one at a time.
pub async fn rolling_upgrade(
    coordinator: &Arc<Coordinator>,
    requested: &[String],
    deadline: Duration,
) -> Result<Rollout, UpgradeError> {
    let build = open_build(coordinator).await?;
    roll_out(coordinator, build, requested, deadline).await
}

/// Rolls `build` out to `requested` (or every node).
async fn roll_out(
    coordinator: &Arc<Coordinator>,
    build: Arc<AgentBinary>,
    requested: &[String],
    deadline: Duration,
) -> Result<Rollout, UpgradeError> {
    let Ok(_running) = coordinator.agent_rollout.running.try_lock() else {
        return Err(UpgradeError::Busy);
    };
    let version = build
        .version()
        .map_err(|e| UpgradeError::NoBuild {
            path: build.path().display().to_string(),
            reason: e.to_string(),
        })?
        .to_string();
    let hosts = host_agents(coordinator);
    let checks = coordinator.view.checks();
    let leader = checks.leader();
    let order = upgrade_order(requested, &hosts, &version, leader)?;
    let mut rollout = Rollout {
        version: version.clone(),
        steps: Vec::new(),
    };
    if order.is_empty() {
        rollout
            .steps
            .push(format!("every host named runs agent {version} already"));
        return Ok(rollout);
    }
    info!(version, sha256 = build.sha256(), hosts = ?order, "agent rollout starting");
    coordinator.agent_rollout.serve(Some(build.clone()));
    let result = upgrade_each(
        coordinator,
        &build,
        &version,
        &order,
        deadline,
        &mut rollout,
    )
    .await;
    coordinator.agent_rollout.serve(None);
    result.map(|()| rollout)
}

/// Every node and the agent version its session reported.
fn host_agents(coordinator: &Coordinator) -> Vec<HostAgent> {
    coordinator
        .nodes()
        .into_iter()
        .map(|n| HostAgent {
            version: coordinator
                .sessions
                .registry
                .view(&n.name, coordinator.config().heartbeat_interval)
                .and_then(|l| l.agent)
                .map(|a| a.version),
            name: n.name,
        })
        .collect()
}

/// How often `[coordinator] agent_auto_upgrade` looks at the served build.
const AUTO_EVERY: Duration = Duration::from_secs(60);

/// `[coordinator] agent_auto_upgrade`: every minute, the connected agents
/// that run another version than the served build are rolled out to it, as
/// `ctl hosts upgrade` would. A build whose rollout stopped (a host rolled
/// it back, or did not come back) is not tried again until the file
/// changes; the file is hashed again only when its size or mtime changed.
pub async fn auto(coordinator: Arc<Coordinator>) {
    let mut given_up: Option<String> = None;
    let mut known: Option<(std::time::SystemTime, u64, Arc<AgentBinary>)> = None;
    let mut tick = tokio::time::interval(AUTO_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(path) = crate::artifacts::agent_path(coordinator.config()) else {
            continue;
        };
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
        let build = match &known {
            Some((m, l, b)) if (*m, *l) == stamp => b.clone(),
            _ => match open_build(&coordinator).await {
                Ok(b) => {
                    known = Some((stamp.0, stamp.1, b.clone()));
                    b
                }
                Err(e) => {
                    warn!(error = %e, "automatic agent upgrade: no build to roll out");
                    continue;
                }
            },
        };
        if given_up.as_deref() == Some(build.sha256()) {
            continue;
        }
        let Ok(version) = build.version() else {
            continue;
        };
        let behind: Vec<String> = host_agents(&coordinator)
            .into_iter()
            .filter(|h| h.version.as_deref().is_some_and(|v| v != version))
            .map(|h| h.name)
            .collect();
        if behind.is_empty() {
            continue;
        }
        info!(version, hosts = ?behind, "automatic agent upgrade");
        match roll_out(&coordinator, build.clone(), &behind, DEFAULT_DEADLINE).await {
            Ok(rollout) => info!(steps = ?rollout.steps, "automatic agent upgrade done"),
            Err(UpgradeError::Busy) => {}
            Err(e) => {
                warn!(error = %e, sha256 = build.sha256(), "automatic agent upgrade stopped; this build is not tried again until it is replaced");
                given_up = Some(build.sha256().to_string());
            }
        }
    }
}

async fn open_build(coordinator: &Coordinator) -> Result<Arc<AgentBinary>, UpgradeError> {
    let path =
        crate::artifacts::agent_path(coordinator.config()).map_err(|e| UpgradeError::NoBuild {
            path: "(the agent beside the coordinator)".into(),
            reason: e.to_string(),
        })?;
    let shown = path.display().to_string();
    let opened = tokio::task::spawn_blocking(move || AgentBinary::open(&path))
        .await
        .map_err(|e| UpgradeError::NoBuild {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    opened.map(Arc::new).map_err(|e| UpgradeError::NoBuild {
        path: shown,
        reason: e.to_string(),
    })
}

async fn upgrade_each(
    coordinator: &Arc<Coordinator>,
    build: &AgentBinary,
    version: &str,
    order: &[String],
    deadline: Duration,
    rollout: &mut Rollout,
) -> Result<(), UpgradeError> {
    for node in order {
        let started = Instant::now();
        let _restarting = coordinator.view.agent_restarting(node);
        let failure_before = coordinator.sessions.registry.upgrade_failure(node);
        let op = UpgradeAgent {
            version: version.to_string(),
            sha256: build.sha256().to_string(),
            size: build.len(),
            deadline_ms: deadline.as_millis() as u64,
        };
        match call(coordinator.agents(), node, op).await {
            Ok(started) => rollout.steps.push(format!(
                "{node}: agent {} replaced by {version}, restarting",
                started.from
            )),
            // The agent restarts right after it answers: an answer lost with
            // the session is no refusal; what comes back tells.
            Err(CallError::SessionEnded { .. } | CallError::NoAnswer { .. }) => {
                warn!(
                    node,
                    "the session ended before the agent answered the upgrade; waiting for it"
                );
            }
            Err(e) => {
                return Err(UpgradeError::Step {
                    node: node.clone(),
                    version: version.to_string(),
                    reason: e.to_string(),
                });
            }
        }
        wait_back(
            coordinator,
            node,
            version,
            deadline + REPORT_MARGIN,
            failure_before,
        )
        .await?;
        let took = started.elapsed().as_secs_f64();
        info!(node, version, took_s = took, "agent upgraded");
        coordinator.events.emit(
            EventKind::AgentUpgraded,
            node,
            format!("agent {version}, back in {took:.1} s"),
        );
        rollout
            .steps
            .push(format!("{node}: back on agent {version} in {took:.1} s"));
    }
    Ok(())
}

/// What `node` still lacks to count as upgraded (empty: nothing).
fn still_waiting(coordinator: &Coordinator, node: &str, version: &str) -> Vec<&'static str> {
    let live = coordinator
        .sessions
        .registry
        .view(node, coordinator.config().heartbeat_interval);
    let Some(live) = live else {
        return vec!["its agent to connect"];
    };
    if live.agent.as_ref().map(|a| a.version.as_str()) != Some(version) {
        return vec!["its agent on the new version"];
    }
    let mut waiting = Vec::new();
    if !live.connected_and_fresh {
        waiting.push("its agent to be ready");
    }
    // The agent stands its rollback guard down on the welcome that answers
    // its hello, then sends a heartbeat at once: one heartbeat in this
    // session says it has (the first timed one comes an interval after the
    // first welcome, later than that).
    if live.heartbeats < 1 {
        waiting.push("the new agent's first heartbeat");
    }
    let managed = coordinator.config().host.is_some();
    if !matches!(
        coordinator.view.config_state(node, managed),
        ConfigState::Ok | ConfigState::Unmanaged | ConfigState::NeedsReboot
    ) {
        waiting.push("its host configuration");
    }
    waiting
}

async fn wait_back(
    coordinator: &Coordinator,
    node: &str,
    version: &str,
    within: Duration,
    failure_before: Option<String>,
) -> Result<(), UpgradeError> {
    let started = Instant::now();
    loop {
        let failure = coordinator.sessions.registry.upgrade_failure(node);
        if failure.is_some() && failure != failure_before {
            return Err(UpgradeError::RolledBack {
                node: node.to_string(),
                reason: failure.unwrap_or_default(),
            });
        }
        let waiting = still_waiting(coordinator, node, version);
        if waiting.is_empty() {
            return Ok(());
        }
        if started.elapsed() > within {
            return Err(UpgradeError::NotBack {
                node: node.to_string(),
                version: version.to_string(),
                waited: within,
                waiting: format!("waiting for {}", waiting.join(", ")),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[(&str, Option<&str>)]) -> Vec<HostAgent> {
        list.iter()
            .map(|(n, v)| HostAgent {
                name: n.to_string(),
                version: v.map(str::to_string),
            })
            .collect()
    }

    #[test]
    fn hosts_on_the_build_are_skipped_and_the_leader_goes_last() {
        let h = hosts(&[
            ("queenbee", Some("0.1.0")),
            ("workerbee-1", Some("0.1.0")),
            ("workerbee-2", Some("0.1.1")),
            ("workerbee-3", Some("0.1.0")),
        ]);
        let order = upgrade_order(&[], &h, "0.1.1", Some("queenbee")).expect("order");
        assert_eq!(order, ["workerbee-1", "workerbee-3", "queenbee"]);
        let named = upgrade_order(&["workerbee-3".into()], &h, "0.1.1", None).expect("order");
        assert_eq!(named, ["workerbee-3"]);
        assert!(
            upgrade_order(&[], &h, "0.1.0", None)
                .expect("order")
                .contains(&"workerbee-2".to_string()),
            "a downgrade is a rollout too"
        );
        let none = upgrade_order(&["workerbee-2".into()], &h, "0.1.1", None).expect("order");
        assert!(none.is_empty());
    }

    #[test]
    fn refusals_name_the_node() {
        let h = hosts(&[("queenbee", Some("0.1.0")), ("workerbee-1", None)]);
        match upgrade_order(&["drone".into()], &h, "0.1.1", None) {
            Err(UpgradeError::NoSuchNode(n)) => assert_eq!(n, "drone"),
            other => panic!("{other:?}"),
        }
        let err = upgrade_order(&[], &h, "0.1.1", None).expect_err("down host");
        assert!(matches!(&err, UpgradeError::NotConnected { nodes } if nodes == &["workerbee-1"]));
        assert!(
            err.to_string().contains("workerbee-1 not connected"),
            "{err}"
        );
        // Naming only the connected one is fine.
        assert_eq!(
            upgrade_order(&["queenbee".into()], &h, "0.1.1", None).expect("order"),
            ["queenbee"]
        );
    }

    #[test]
    fn an_agent_outside_the_rule_is_told_what_to_do() {
        assert_eq!(outdated("h1", apiary_api::version::current()), None);
        let old = outdated("h1", "0.0.9").expect("too old");
        assert!(old.contains("ctl hosts upgrade h1"), "{old}");
        let new = outdated("h1", "99.0.0").expect("too new");
        assert!(new.contains("upgrade the coordinator"), "{new}");
        assert!(outdated("h1", "(unknown)").is_some());
    }
}
