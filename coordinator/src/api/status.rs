//! `ctl status`: the cluster at a glance, built from the store (who is
//! enrolled), the sessions (who is live, their facts) and the view (checks,
//! database, host configuration).

use apiary_proto::{DatabaseTables, NodeStatus, StatusResponse};

use crate::core::Coordinator;
use crate::state::ChecksState;
use crate::store::{NodeRecord, StoreError};

/// The cluster as `ctl status` shows it.
pub fn status(coord: &Coordinator) -> Result<StatusResponse, StoreError> {
    let nodes = coord.store.nodes()?;
    // One snapshot of the matrix and Swarm view for every node.
    let checks = coord.view.checks();
    let nodes = nodes
        .into_iter()
        .map(|n| node_status(coord, n, &checks))
        .collect();
    let config = coord.config();
    let db = checks.database.unwrap_or_default();
    Ok(StatusResponse {
        cluster: config.cluster_name.clone(),
        nodes,
        heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
        database_kind: db.kind.clone(),
        database_servers: db.servers.len() as u32,
        database_connected: db.connected as u32,
        database_leader: db.leader.clone(),
        database_error: if db.healthy() {
            String::new()
        } else {
            db.detail()
        },
        database_peer_tls: config
            .swarm
            .as_ref()
            .and_then(|s| s.database.as_ref())
            .is_some_and(|d| d.peer_tls),
        database_tables: db.tables.as_ref().map(|t| DatabaseTables {
            total: t.total as u32,
            ready: t.ready as u32,
            first_unavailable: t.unavailable.first().cloned().unwrap_or_default(),
        }),
        database_auth: config
            .swarm
            .as_ref()
            .and_then(|s| s.database.as_ref())
            .is_some_and(|d| d.auth),
    })
}

fn node_status(coord: &Coordinator, n: NodeRecord, checks: &ChecksState) -> NodeStatus {
    let swarm = checks.swarm.get(&n.name).cloned().unwrap_or_default();
    let db_server = checks
        .database
        .as_ref()
        .and_then(|d| d.servers.iter().find(|s| s.host == n.name));
    let host = coord.view.host_state(&n.name).unwrap_or_default();
    let live = coord
        .sessions
        .registry
        .view(&n.name, coord.config().heartbeat_interval);
    let facts = coord.facts(&n.name);
    let ready = live.as_ref().is_some_and(|l| l.connected_and_fresh);
    let managed = coord.config().host.is_some();
    let failures = db_server
        .map(|s| coord.view.server_failures(&s.name))
        .unwrap_or_default();
    let last_stop = failures.last.unwrap_or_default();
    let agent = live
        .as_ref()
        .and_then(|l| l.agent.clone())
        .unwrap_or_default();
    let outdated = agent.outdated.clone().unwrap_or_default();
    NodeStatus {
        // Connected but of a version the coordinator does not work with:
        // neither ready nor down, and `ctl hosts upgrade` is the way out.
        state: if ready {
            "ready"
        } else if !outdated.is_empty() {
            "outdated"
        } else {
            "down"
        }
        .to_string(),
        agent_version: agent.version,
        agent_outdated: outdated,
        agent_upgrade_failure: coord
            .sessions
            .registry
            .upgrade_failure(&n.name)
            .unwrap_or_default(),
        public_ip: facts
            .as_ref()
            .map(|f| f.public_ip.clone())
            .unwrap_or_default(),
        private_ip: facts
            .as_ref()
            .map(|f| f.private_ip.clone())
            .unwrap_or_default(),
        last_seen_unix_ms: live.map_or(n.last_seen_unix_ms, |l| l.last_seen_unix_ms),
        facts,
        cert_serial: n.cert_serial,
        cert_not_after_unix: n.cert_not_after_unix,
        enrolled_unix: n.enrolled_unix,
        provider_id: n.provider_id,
        provider_info: coord.view.provider_info(&n.name),
        swarm_role: swarm.role,
        swarm_status: swarm.status,
        swarm_availability: swarm.availability,
        swarm_leader: swarm.leader,
        overlay_attached: swarm.overlay_attached,
        database_server: db_server.map(|s| s.name.clone()).unwrap_or_default(),
        database_healthy: db_server.is_some_and(|s| s.healthy),
        database_restarts: failures.restarts,
        database_failures: failures.failures,
        database_last_failure_unix_ms: last_stop.at_unix_ms,
        database_last_exit_code: last_stop.exit_code,
        database_last_oom: last_stop.oom,
        config_state: coord
            .view
            .config_state(&n.name, managed)
            .as_str()
            .to_string(),
        config_items: host.items,
        last_drift_repaired_unix_ms: host.last_drift_unix_ms,
        last_drift_items: host.last_drift_items,
        name: n.name,
    }
}
