//! One agent's session: the welcome, the host configuration it keeps
//! applied, and everything it sends (hello and facts, heartbeats, reports,
//! answers to operations); plus the two background tasks that watch all
//! sessions (liveness events, last-seen times in the store).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use apiary_proto::{
    AgentMessage, CoordinatorMessage, HeartbeatAck, Welcome, agent_message, coordinator_message,
};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use crate::core::Coordinator;
use crate::events::EventKind;
use crate::store::Op;

/// How often last-seen times are written to the store.
const FLUSH_LAST_SEEN: Duration = Duration::from_secs(15);

pub async fn run(
    coord: Arc<Coordinator>,
    node: String,
    mut inbound: Streaming<AgentMessage>,
    outbox: mpsc::Sender<Result<CoordinatorMessage, Status>>,
) {
    let registry = &coord.sessions.registry;
    let session = registry.connect(&node, outbox.clone(), None);
    let welcome = CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Welcome(Welcome {
            node_name: node.clone(),
            heartbeat_interval_ms: coord.config().heartbeat_interval.as_millis() as u64,
            coordinator_version: apiary_api::version::current().into(),
            agent_outdated: String::new(),
            hello_acknowledged: false,
            coordinator_endpoints: coord.endpoints.welcome_list(&coord.store),
        })),
    };
    if outbox.send(Ok(welcome)).await.is_err() {
        registry.disconnect(&node, session);
        return;
    }
    // Every session starts by (re)sending the host configuration: the
    // agent keeps it applied from then on, even while disconnected.
    if let Some((_, command)) = coord.host_command(false) {
        let _ = outbox.send(Ok(command)).await;
    }
    loop {
        let msg = match inbound.message().await {
            Ok(Some(AgentMessage { msg: Some(msg) })) => msg,
            Ok(Some(AgentMessage { msg: None })) => continue,
            Ok(None) => break,
            Err(e) => {
                debug!(error = %e, "session stream error");
                break;
            }
        };
        registry.seen(&node, session);
        if !handle(&coord, &node, session, msg, &outbox).await {
            break;
        }
    }
    registry.disconnect(&node, session);
    info!("node session ended");
    if registry.outbox(&node).is_none() {
        coord
            .events
            .emit(EventKind::NodeDown, &node, "session ended");
    }
}

/// One message from the agent; false when the session is over.
async fn handle(
    coord: &Coordinator,
    node: &str,
    session: u64,
    msg: agent_message::Msg,
    outbox: &mpsc::Sender<Result<CoordinatorMessage, Status>>,
) -> bool {
    match msg {
        agent_message::Msg::Hello(hello) => {
            let mut facts = hello.facts.unwrap_or_default();
            let mut version = hello.agent_version;
            if !crate::untrusted::version(&version) {
                warn!(
                    len = version.len(),
                    "the agent's version is not a version; dropped"
                );
                version = "(unknown)".into();
            }
            refuse_bad_facts(node, &mut facts);
            info!(version = %version, kernel = %facts.kernel_version, private_ip = %facts.private_ip, "node connected");
            coord.events.emit(
                EventKind::NodeConnected,
                node,
                format!("agent {version} from {}", facts.private_ip),
            );
            let outdated = crate::upgrade::outdated(node, &version);
            if let Some(why) = &outdated {
                warn!(version = %version, "{why}");
                coord
                    .events
                    .emit(EventKind::AgentOutdated, node, why.clone());
            }
            // A second welcome with the verdict on the version: the first
            // went out before the hello told it.
            let verdict = CoordinatorMessage {
                msg: Some(coordinator_message::Msg::Welcome(Welcome {
                    node_name: node.to_string(),
                    heartbeat_interval_ms: coord.config().heartbeat_interval.as_millis() as u64,
                    coordinator_version: apiary_api::version::current().into(),
                    agent_outdated: outdated.clone().unwrap_or_default(),
                    hello_acknowledged: true,
                    // Every welcome carries the list: the agent takes each
                    // as the whole of it.
                    coordinator_endpoints: coord.endpoints.welcome_list(&coord.store),
                })),
            };
            if outbox.send(Ok(verdict)).await.is_err() {
                return false;
            }
            if !hello.upgrade_failure.is_empty() {
                let failure = crate::untrusted::line(&hello.upgrade_failure);
                warn!(version = %version, failure = %failure, "the agent rolled back an upgrade");
                coord
                    .events
                    .emit(EventKind::AgentUpgradeFailed, node, failure.clone());
                coord.sessions.registry.set_upgrade_failure(node, failure);
            }
            coord.sessions.registry.set_agent(
                node,
                session,
                crate::sessions::AgentInfo { version, outdated },
            );
            coord.record_facts(node, session, facts).await;
        }
        agent_message::Msg::HostConfig(report) => coord.record_host_report(node, report),
        agent_message::Msg::DatabaseEvent(event) => coord.record_database_event(node, event),
        agent_message::Msg::OpResult(result) => coord.sessions.answer_op(result),
        agent_message::Msg::Facts(mut facts) => {
            refuse_bad_facts(node, &mut facts);
            coord.record_facts(node, session, facts).await
        }
        agent_message::Msg::Heartbeat(hb) => {
            coord.sessions.registry.heartbeat(node, session);
            if hb.last_rtt_us > 0 {
                coord.heartbeat_rtt.observe(hb.last_rtt_us as f64 / 1e6);
            }
            let ack = CoordinatorMessage {
                msg: Some(coordinator_message::Msg::HeartbeatAck(HeartbeatAck {
                    seq: hb.seq,
                })),
            };
            return outbox.send(Ok(ack)).await.is_ok();
        }
    }
    true
}

/// Drops the fields of `facts` that are not what they claim to be, and
/// says which (once per report: a host sends facts at its hello and when
/// they change).
fn refuse_bad_facts(node: &str, facts: &mut apiary_proto::Facts) {
    let bad = crate::untrusted::check_facts(facts);
    if !bad.is_empty() {
        warn!(node, fields = ?bad, "facts that are not well-formed were dropped");
    }
}

/// Turns heartbeat silence into `node_down` / `node_ready` events; a
/// node's state in `ctl status` is computed on demand, this only notices
/// the transitions.
pub async fn watch_liveness(coord: Arc<Coordinator>) {
    let interval = coord.config().heartbeat_interval;
    let registry = &coord.sessions.registry;
    let mut down: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tick.tick().await;
        for name in registry.nodes() {
            let fresh = registry
                .view(&name, interval)
                .is_some_and(|v| v.connected_and_fresh);
            if !fresh && down.insert(name.clone()) {
                warn!(node = %name, "node down: no heartbeat for 3 intervals");
                coord
                    .events
                    .emit(EventKind::NodeDown, &name, "no heartbeat for 3 intervals");
            } else if fresh && down.remove(&name) {
                info!(node = %name, "node ready again");
                coord
                    .events
                    .emit(EventKind::NodeReady, &name, "heartbeats resumed");
            }
        }
    }
}

/// Persists last-seen times now and then, so `ctl status` after a restart
/// still says when a node was last heard from. Heartbeats themselves stay in
/// memory: writing each one would cost an fsync per node per interval.
pub async fn flush_last_seen(coord: Arc<Coordinator>) {
    let mut tick = tokio::time::interval(FLUSH_LAST_SEEN);
    loop {
        tick.tick().await;
        let ops: Vec<Op> = coord
            .sessions
            .registry
            .last_seen()
            .into_iter()
            .filter_map(|(name, ms)| {
                let mut n = coord.store.node(&name).ok()??;
                n.last_seen_unix_ms = ms;
                Some(Op::PutNode(n))
            })
            .collect();
        if !ops.is_empty()
            && let Err(e) = coord.store.apply(ops).await
        {
            warn!(error = %e, "could not persist last-seen times");
        }
    }
}
