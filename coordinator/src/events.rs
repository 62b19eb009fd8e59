//! What happens in the cluster, as `ctl events` streams it: one broadcast
//! channel, typed kinds ([`EventKind`]), turned into the wire's strings only
//! at the API.

use std::fmt;

use tokio::sync::broadcast;

/// Every kind of event the coordinator publishes. The wire name
/// ([`EventKind::as_str`]) is stable: scripts filter `ctl events` on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    NodeEnrolled,
    NodeConnected,
    NodeDown,
    NodeReady,
    NodeRemoved,
    CertificateRenewed,
    TokenRotated,
    DriftRepaired,
    SwarmInitialised,
    SwarmJoined,
    CheckFailed,
    CheckRecovered,
    DatabaseHealthy,
    DatabaseDegraded,
    DatabaseScaled,
    DatabaseServiceCreated,
    DrainFailed,
    /// A database server's container stopped (its host's engine said so).
    DatabaseServerFailed,
    /// A database server's container started again after a failure.
    DatabaseServerRestarted,
    /// A host came back from `ctl hosts reboot` (or a reboot a stop
    /// interrupted was finished).
    HostRebooted,
    /// An admin's `ctl docker` reached a node's engine (once per session
    /// and node).
    DockerSession,
    /// A droplet's agent did not enroll in time: the droplet was made
    /// again, or (after the last try) kept for the operator to look at.
    DropletNotEnrolled,
    /// A host's agent runs a version this coordinator does not work with.
    AgentOutdated,
    /// A host's agent is on the new build (`ctl hosts upgrade`).
    AgentUpgraded,
    /// A host rolled an agent upgrade back (its old agent says why).
    AgentUpgradeFailed,
    /// A watcher fell behind and missed events (made by the API, per watcher).
    EventsLost,
}

impl EventKind {
    pub const ALL: [EventKind; 26] = [
        EventKind::NodeEnrolled,
        EventKind::NodeConnected,
        EventKind::NodeDown,
        EventKind::NodeReady,
        EventKind::NodeRemoved,
        EventKind::CertificateRenewed,
        EventKind::TokenRotated,
        EventKind::DriftRepaired,
        EventKind::SwarmInitialised,
        EventKind::SwarmJoined,
        EventKind::CheckFailed,
        EventKind::CheckRecovered,
        EventKind::DatabaseHealthy,
        EventKind::DatabaseDegraded,
        EventKind::DatabaseScaled,
        EventKind::DatabaseServiceCreated,
        EventKind::DrainFailed,
        EventKind::DatabaseServerFailed,
        EventKind::DatabaseServerRestarted,
        EventKind::HostRebooted,
        EventKind::DockerSession,
        EventKind::DropletNotEnrolled,
        EventKind::AgentOutdated,
        EventKind::AgentUpgraded,
        EventKind::AgentUpgradeFailed,
        EventKind::EventsLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::NodeEnrolled => "node_enrolled",
            EventKind::NodeConnected => "node_connected",
            EventKind::NodeDown => "node_down",
            EventKind::NodeReady => "node_ready",
            EventKind::NodeRemoved => "node_removed",
            EventKind::CertificateRenewed => "certificate_renewed",
            EventKind::TokenRotated => "token_rotated",
            EventKind::DriftRepaired => "drift_repaired",
            EventKind::SwarmInitialised => "swarm_initialised",
            EventKind::SwarmJoined => "swarm_joined",
            EventKind::CheckFailed => "check_failed",
            EventKind::CheckRecovered => "check_recovered",
            EventKind::DatabaseHealthy => "database_healthy",
            EventKind::DatabaseDegraded => "database_degraded",
            EventKind::DatabaseScaled => "database_scaled",
            EventKind::DatabaseServiceCreated => "database_service_created",
            EventKind::DrainFailed => "drain_failed",
            EventKind::DatabaseServerFailed => "database_server_failed",
            EventKind::DatabaseServerRestarted => "database_server_restarted",
            EventKind::HostRebooted => "host_rebooted",
            EventKind::DockerSession => "docker_session",
            EventKind::DropletNotEnrolled => "droplet_not_enrolled",
            EventKind::AgentOutdated => "agent_outdated",
            EventKind::AgentUpgraded => "agent_upgraded",
            EventKind::AgentUpgradeFailed => "agent_upgrade_failed",
            EventKind::EventsLost => "events_lost",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event, as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at_unix_ms: u64,
    pub kind: EventKind,
    /// The node it is about ("" for the cluster as a whole).
    pub node: String,
    pub message: String,
}

impl Event {
    pub fn to_wire(&self) -> apiary_proto::Event {
        apiary_proto::Event {
            at_unix_ms: self.at_unix_ms,
            kind: self.kind.as_str().to_string(),
            node: self.node.clone(),
            message: self.message.clone(),
        }
    }
}

/// The coordinator's event channel.
#[derive(Debug, Clone)]
pub struct Events(broadcast::Sender<Event>);

impl Default for Events {
    fn default() -> Self {
        Events(broadcast::channel(1024).0)
    }
}

impl Events {
    /// Publishes an event to whoever watches (nobody watching is fine).
    pub fn emit(&self, kind: EventKind, node: &str, message: impl Into<String>) {
        let _ = self.0.send(Event {
            at_unix_ms: crate::time::now_unix_ms(),
            kind,
            node: node.to_string(),
            message: message.into(),
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_unique_and_snake_case() {
        let names: std::collections::BTreeSet<&str> =
            EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), EventKind::ALL.len());
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
    }

    #[tokio::test]
    async fn watchers_get_typed_events() {
        let events = Events::default();
        let mut rx = events.subscribe();
        events.emit(EventKind::SwarmJoined, "w1", "joined as worker");
        let e = rx.recv().await.expect("an event");
        assert_eq!(e.kind, EventKind::SwarmJoined);
        assert_eq!(e.to_wire().kind, "swarm_joined");
    }
}
