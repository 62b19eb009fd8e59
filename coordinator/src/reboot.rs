//! `ctl hosts reboot [NODE...] [--needed]`: rolling maintenance, one host at
//! a time, the recipe's `docker-machine restart` of every host without
//! taking the cluster down: the database must be healthy before each host
//! (so never two of its servers down at once), the host is drained in
//! Swarm, power-cycled by its provider, waited for (agent back, host config
//! ok, Swarm node ready, database healthy again, as a round after the cycle
//! saw them), made active again, then the next.
//!
//! The host being rebooted is recorded in the store first: a coordinator
//! killed in the middle finishes that host when it starts again (waits for
//! it, makes it active) and says the rest was not done, so no host stays
//! drained unsaid (`ctl status` shows a drained node's availability too).
//!
//! The order and the refusals are decided without I/O ([`reboot_order`]).

use std::sync::Arc;
use std::time::Duration;

use apiary_api::ops::{ReadSwarm, SwarmAvailability};
use tracing::{info, warn};

use crate::context::{ClusterContext, NodeObservation};
use crate::core::Coordinator;
use crate::events::EventKind;
use crate::scale::HostControl;
use crate::sessions::call;
use crate::state::ConfigState;
use crate::store::{Op, RebootRecord};

/// How long a rebooted host has to be back (agent, config, Swarm, database).
pub const BACK_WITHIN: Duration = Duration::from_secs(300);

/// Why a rolling reboot did not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RebootError {
    #[error(
        "provider {provider} makes no hosts, so apiary cannot reboot them: reboot your hosts yourself, one at a time"
    )]
    NotSupported { provider: &'static str },
    #[error("no node named {0:?}; `ctl status` lists the nodes")]
    NoSuchNode(String),
    #[error(
        "a scale of the hosts or a rolling reboot is already running; wait for it (`ctl status` shows its progress)"
    )]
    Busy,
    #[error(
        "the database is not healthy ({summary}): rebooting {node} now could take a second server down; `ctl status` says what is wrong"
    )]
    DatabaseDegraded { node: String, summary: String },
    #[error("{node}: {reason}")]
    Step { node: String, reason: String },
    #[error(
        "{node} was power-cycled but is not back after {} s: {waiting}{}; the hosts after it were not rebooted",
        BACK_WITHIN.as_secs(),
        if *drained { "; it stays drained in the swarm (`ctl status`)" } else { "" }
    )]
    NotBack {
        node: String,
        waiting: String,
        /// Still drained in the swarm (it had not been made active yet).
        drained: bool,
    },
    #[error("could not record the reboot: {0}")]
    Record(String),
}

/// The hosts to reboot, in order: the ones named (each must be a node), or
/// every node; with `needed`, only those whose host configuration reports
/// `needs-reboot`. Placement order, the Swarm leader last (one election,
/// not one per manager).
pub fn reboot_order(
    requested: &[String],
    needed: bool,
    nodes: &[NodeObservation],
    needs_reboot: impl Fn(&str) -> bool,
    leader: Option<&str>,
) -> Result<Vec<String>, RebootError> {
    for name in requested {
        if !nodes.iter().any(|n| n.name == *name) {
            return Err(RebootError::NoSuchNode(name.clone()));
        }
    }
    let mut names: Vec<String> = nodes
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| requested.is_empty() || requested.contains(n))
        .filter(|n| !needed || needs_reboot(n))
        .collect();
    names.sort_by(|a, b| crate::database::placement_order(a, b));
    names.sort_by_key(|n| Some(n.as_str()) == leader);
    Ok(names)
}

/// Reboots `requested` (or every node) one at a time; one line per step.
pub async fn rolling_reboot(
    coordinator: &Arc<Coordinator>,
    control: &HostControl,
    requested: &[String],
    needed: bool,
) -> Result<Vec<String>, RebootError> {
    let provider_kind = coordinator.config().provider.kind();
    let (provider, _busy) = match control.exclusive() {
        None => {
            return Err(RebootError::NotSupported {
                provider: provider_kind,
            });
        }
        Some(Err(())) => return Err(RebootError::Busy),
        Some(Ok(p)) => p,
    };
    let managed = coordinator.config().host.is_some();
    let checks = coordinator.view.checks();
    let leader = checks.leader();
    let order = reboot_order(
        requested,
        needed,
        &coordinator.nodes(),
        |n| coordinator.view.config_state(n, managed) == ConfigState::NeedsReboot,
        leader,
    )?;
    if order.is_empty() {
        return Ok(vec!["no host needs a reboot".into()]);
    }
    let mut steps = Vec::new();
    for node in order {
        if let Some(db) = coordinator.view.database()
            && !db.healthy()
        {
            return Err(RebootError::DatabaseDegraded {
                node,
                summary: db.summary(),
            });
        }
        let started = std::time::Instant::now();
        coordinator
            .store
            .apply(vec![Op::PutReboot(Some(RebootRecord {
                node: node.clone(),
                started_unix: crate::time::now_unix(),
            }))])
            .await
            .map_err(|e| RebootError::Record(e.to_string()))?;
        let in_swarm = set_availability(coordinator, &node, false).await?;
        if in_swarm {
            steps.push(format!("{node}: drained in the swarm"));
        }
        let cycled_at = crate::time::now_unix_ms();
        provider
            .power_cycle(coordinator, &node)
            .await
            .map_err(|reason| RebootError::Step {
                node: node.clone(),
                reason: format!("power cycle failed: {reason}; it stays drained (`ctl status`)"),
            })?;
        steps.push(format!("{node}: power-cycled"));
        wait_back(coordinator, &node, cycled_at, Until::HostBack).await?;
        // Active before the database is waited for: its server on this
        // host is a task pinned here, which Swarm runs only on an active node.
        if in_swarm {
            set_availability(coordinator, &node, true).await?;
        }
        let activated_at = crate::time::now_unix_ms();
        wait_back(coordinator, &node, activated_at, Until::DatabaseHealthy).await?;
        coordinator
            .store
            .apply(vec![Op::PutReboot(None)])
            .await
            .map_err(|e| RebootError::Record(e.to_string()))?;
        let took = started.elapsed().as_secs_f64();
        info!(node, took_s = took, "host rebooted");
        coordinator.events.emit(
            EventKind::HostRebooted,
            &node,
            format!("rebooted and back in {took:.1} s"),
        );
        steps.push(format!(
            "{node}: back (agent, host config, swarm{}) and active in {took:.1} s",
            if coordinator.view.database().is_some() {
                ", database healthy"
            } else {
                ""
            }
        ));
    }
    Ok(steps)
}

/// Sets `node`'s Swarm availability through a ready manager (another one
/// when there is, since `node` itself may be the one going down). False
/// when the cluster runs no swarm or `node` is not in it.
async fn set_availability(
    coordinator: &Coordinator,
    node: &str,
    active: bool,
) -> Result<bool, RebootError> {
    let Some(config) = coordinator.config().swarm.as_ref() else {
        return Ok(false);
    };
    // Managers as the last round saw them, then as the plan places them
    // (a round may not have read the swarm since a restart); `node` last.
    let cached = coordinator.view.checks().swarm;
    let mut managers: Vec<String> = cached
        .iter()
        .filter(|(_, n)| n.role == "manager" && n.status == "ready")
        .map(|(name, _)| name.clone())
        .collect();
    for h in crate::reconcile::plan::members(&coordinator.nodes(), config) {
        if h.manager && !managers.contains(&h.name) {
            managers.push(h.name);
        }
    }
    managers.sort_by_key(|m| m == node);
    let mut last = String::from("no ready manager");
    for manager in &managers {
        // Asked of the manager now, not read from the last round.
        let in_swarm = match call(coordinator.agents(), manager, ReadSwarm {}).await {
            Ok(view) if view.manager => view.nodes.iter().any(|n| n.hostname == node),
            Ok(_) => continue,
            Err(e) => {
                last = format!("{manager}: {e}");
                continue;
            }
        };
        if !in_swarm {
            return Ok(false);
        }
        let op = SwarmAvailability {
            node: node.to_string(),
            active,
        };
        match call(coordinator.agents(), manager, op).await {
            Ok(_) => return Ok(true),
            Err(e) => last = format!("{manager}: {e}"),
        }
    }
    Err(RebootError::Step {
        node: node.to_string(),
        reason: format!(
            "could not make it {} in the swarm ({last})",
            if active { "active" } else { "drain" }
        ),
    })
}

/// What [`wait_back`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Agent, host configuration, Swarm node.
    HostBack,
    /// The database healthy (after the node is active again).
    DatabaseHealthy,
}

/// What `node` still lacks (empty: nothing). A round must have run since
/// `since_ms`, so a view from before the cycle does not count.
fn still_waiting(
    coordinator: &Coordinator,
    node: &str,
    since_ms: u64,
    until: Until,
) -> Vec<&'static str> {
    let mut waiting = Vec::new();
    if until == Until::DatabaseHealthy {
        let checks = coordinator.view.checks();
        if let Some(db) = checks.database
            && (checks.at_unix_ms <= since_ms || !db.healthy())
        {
            waiting.push("a healthy database");
        }
        return waiting;
    }
    let nodes = coordinator.nodes();
    if !nodes.iter().any(|n| n.name == node && n.ready) {
        waiting.push("its agent");
        return waiting;
    }
    let managed = coordinator.config().host.is_some();
    if !matches!(
        coordinator.view.config_state(node, managed),
        ConfigState::Ok | ConfigState::Unmanaged | ConfigState::NeedsReboot
    ) {
        waiting.push("its host configuration");
    }
    if coordinator.config().swarm.is_some() {
        let checks = coordinator.view.checks();
        let fresh = checks.at_unix_ms > since_ms;
        if !fresh || checks.swarm.get(node).is_none_or(|n| n.status != "ready") {
            waiting.push("its swarm node");
        }
    }
    waiting
}

async fn wait_back(
    coordinator: &Coordinator,
    node: &str,
    since_ms: u64,
    until: Until,
) -> Result<(), RebootError> {
    let deadline = tokio::time::Instant::now() + BACK_WITHIN;
    // The agent's session ends with the power cut; give it that moment, so
    // the session still open from before is not taken for "back".
    tokio::time::sleep(Duration::from_secs(1)).await;
    loop {
        let waiting = still_waiting(coordinator, node, since_ms, until);
        if waiting.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(RebootError::NotBack {
                node: node.to_string(),
                waiting: format!("waiting for {}", waiting.join(", ")),
                drained: until == Until::HostBack,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// At start: a rolling reboot a stop interrupted is finished for the host
/// it was at (waited for, made active again); the hosts after it are not
/// rebooted, and the log and an event say so.
pub async fn resume(coordinator: Arc<Coordinator>) {
    let coordinator = &coordinator;
    let record = match coordinator.store.reboot() {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %e, "cannot read the reboot record");
            return;
        }
    };
    let node = record.node;
    warn!(
        node,
        "a rolling reboot was interrupted at this host; finishing it"
    );
    let since = record.started_unix.saturating_mul(1000);
    let outcome = match wait_back(coordinator, &node, since, Until::HostBack).await {
        Ok(()) => set_availability(coordinator, &node, true).await.map(|_| ()),
        Err(e) => Err(e),
    };
    let message = match &outcome {
        Ok(()) => format!(
            "the rolling reboot interrupted at {node} was finished for {node} (back, active); the hosts after it were not rebooted: run `ctl hosts reboot` again"
        ),
        Err(e) => format!("the rolling reboot interrupted at {node} could not be finished: {e}"),
    };
    warn!(node, %message, "rolling reboot resumed");
    coordinator
        .events
        .emit(EventKind::HostRebooted, &node, message);
    if outcome.is_ok()
        && let Err(e) = coordinator.store.apply(vec![Op::PutReboot(None)]).await
    {
        warn!(error = %e, "could not clear the reboot record");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeObservation {
        NodeObservation {
            name: name.into(),
            ready: true,
            private_ip: None,
            ip_vs: None,
        }
    }

    #[test]
    fn every_node_in_placement_order_the_leader_last_or_the_named_or_the_needed() {
        let nodes = [
            node("workerbee-10"),
            node("queenbee"),
            node("workerbee-2"),
            node("workerbee-1"),
        ];
        let all = reboot_order(&[], false, &nodes, |_| false, Some("queenbee")).expect("all");
        assert_eq!(
            all,
            ["workerbee-1", "workerbee-2", "workerbee-10", "queenbee"]
        );
        let named = reboot_order(
            &["workerbee-2".into(), "queenbee".into()],
            false,
            &nodes,
            |_| false,
            None,
        )
        .expect("named");
        assert_eq!(named, ["queenbee", "workerbee-2"]);
        let needed =
            reboot_order(&[], true, &nodes, |n| n == "workerbee-10", None).expect("needed");
        assert_eq!(needed, ["workerbee-10"]);
        let e =
            reboot_order(&["nobody".into()], false, &nodes, |_| false, None).expect_err("unknown");
        assert!(e.to_string().contains("no node named \"nobody\""), "{e}");
    }
}
