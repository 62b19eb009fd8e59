//! What the reconcile loop and the database control need from the
//! coordinator, as one trait: the agents to call, the nodes, the in-memory
//! view, events, and the few durable records they keep. `core::Coordinator`
//! implements it over the real store and sessions; unit tests implement it
//! with fake agents (see `reconcile::fake`), so rounds run without root.

use std::net::Ipv4Addr;

use apiary_api::database::{AdminCredentials, PeerTls};
use apiary_api::reach::Cell;

use crate::events::Events;
use crate::sessions::AgentCalls;
use crate::state::ClusterView;

/// One enrolled node as a round sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeObservation {
    pub name: String,
    /// Connected with fresh heartbeats.
    pub ready: bool,
    /// Its private address, once its facts said it.
    pub private_ip: Option<Ipv4Addr>,
    /// Whether its kernel has `ip_vs`; `None` before its facts arrived.
    pub ip_vs: Option<bool>,
}

/// A durable record could not be written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct RecordError {
    pub what: &'static str,
    pub reason: String,
}

#[tonic::async_trait]
pub trait ClusterContext: Send + Sync {
    fn agents(&self) -> &dyn AgentCalls;
    /// Every enrolled node, ready or not, by name.
    fn nodes(&self) -> Vec<NodeObservation>;
    fn view(&self) -> &ClusterView;
    fn events(&self) -> &Events;
    fn cluster_name(&self) -> &str;
    /// The server count `ctl scale database=N` set, if any: it outlives
    /// coordinator restarts, so a restart does not undo a scale.
    fn database_scale(&self) -> Option<usize>;
    async fn set_database_scale(&self, servers: usize) -> Result<(), RecordError>;
    /// Keeps the pre-Swarm matrix across restarts (Swarm holds its ports
    /// once formed, so it cannot be measured again).
    async fn save_pre_swarm(&self, cells: &[Cell]);
    /// The peer certificate of database server `service`.
    fn database_peer_tls(&self, service: &str) -> Result<PeerTls, RecordError>;
    /// The database administrator's credentials (`user` and apiary's
    /// generated password).
    fn database_admin(&self, user: &str) -> Result<AdminCredentials, RecordError>;
}
