//! The cluster as the coordinator last saw it, in memory: the checks (the
//! reachability matrix and the Swarm view), the database, each host's
//! configuration report, provider facts, and whether the images containers
//! need are loaded. Rounds and sessions write it; the admin API reads it.
//! Nothing here does I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, RwLock};

use apiary_api::database::TablesHealth;
use apiary_api::reach::{Cell, Matrix, PortSpec};

/// What one node looks like in the swarm, as the first manager sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSwarm {
    pub role: String,
    pub status: String,
    pub availability: String,
    pub leader: bool,
    pub overlay_attached: bool,
}

/// Which checks the matrix holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CheckPhase {
    /// No round has finished yet.
    #[default]
    None,
    /// Cluster ports probed before Swarm took them.
    PreSwarm,
    /// Swarm's ports and the overlay, end to end.
    Swarm,
}

impl CheckPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckPhase::None => "none",
            CheckPhase::PreSwarm => "pre-swarm",
            CheckPhase::Swarm => "swarm",
        }
    }
}

/// The latest matrix and Swarm view, shown by `ctl checks` and `ctl status`.
#[derive(Debug, Clone, Default)]
pub struct ChecksState {
    pub phase: CheckPhase,
    pub at_unix_ms: u64,
    pub cells: Vec<Cell>,
    /// Why the last round stopped before the end ("" when it did not).
    pub swarm_error: String,
    pub hosts: u32,
    /// Enrolled hosts whose agent was not connected for the round: none of
    /// their paths were checked, so the checks cannot pass.
    pub down: Vec<String>,
    pub swarm: HashMap<String, NodeSwarm>,
    /// Pre-swarm matrix, kept for reference once Swarm runs.
    pub pre_swarm: Vec<Cell>,
    /// The database on the overlay, when `[database]` is configured.
    pub database: Option<DatabaseState>,
}

impl ChecksState {
    /// The Swarm leader as the last round saw it.
    pub fn leader(&self) -> Option<&str> {
        self.swarm
            .iter()
            .find(|(_, n)| n.leader)
            .map(|(name, _)| name.as_str())
    }

    pub fn matrix(&self) -> Matrix {
        let mut m = Matrix::new();
        m.extend(self.cells.iter().cloned());
        m
    }

    /// Each failing path ("src -> dst port/proto") and its cause: what the
    /// events compare between two rounds.
    pub fn failing_paths(&self) -> BTreeMap<String, String> {
        self.matrix()
            .failures()
            .into_iter()
            .map(|f| {
                let spec = PortSpec {
                    port: f.port,
                    proto: f.proto,
                };
                (format!("{} -> {} {spec}", f.src, f.dst), f.cause)
            })
            .collect()
    }

    pub fn to_wire(&self) -> apiary_proto::ChecksResponse {
        let failures = self
            .matrix()
            .failures()
            .into_iter()
            .map(|f| apiary_proto::CheckFailure {
                src: f.src,
                dst: f.dst,
                port: f.port.into(),
                proto: f.proto.to_string(),
                check: format!("{:?}", f.check).to_lowercase(),
                outcome: f
                    .outcome
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "no result".into()),
                cause: f.cause,
            })
            .chain(self.down.iter().map(|host| apiary_proto::CheckFailure {
                src: host.clone(),
                dst: String::new(),
                port: 0,
                proto: "host".into(),
                check: "session".into(),
                outcome: "down".into(),
                cause: "its agent is not connected, so none of its paths were checked (`ctl status` shows since when)".into(),
            }))
            .collect();
        apiary_proto::ChecksResponse {
            phase: self.phase.as_str().into(),
            at_unix_ms: self.at_unix_ms,
            cells_json: cells_json(&self.cells),
            failures,
            swarm_error: self.swarm_error.clone(),
            hosts: self.hosts,
            pre_swarm_cells_json: cells_json(&self.pre_swarm),
        }
    }
}

/// Cells as JSON for the wire. Cells are plain data (strings, numbers,
/// enums), so this cannot fail; an empty list is what a failure would mean.
fn cells_json(cells: &[Cell]) -> String {
    serde_json::to_string(cells).unwrap_or_else(|_| "[]".into())
}

/// One database server, as the agent on its host reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseServer {
    pub name: String,
    pub host: String,
    pub running: bool,
    pub healthy: bool,
    pub error: String,
}

/// The database as the last round saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseState {
    pub kind: String,
    pub servers: Vec<DatabaseServer>,
    /// Servers answering a quorum read.
    pub connected: usize,
    /// Leader's server name ("" when none is known).
    pub leader: String,
    /// Why services could not be created, if so.
    pub error: String,
    /// The tables' readiness (RethinkDB); `None` for a database without
    /// tables, or when no server answered.
    pub tables: Option<TablesHealth>,
}

impl DatabaseState {
    /// Every server connected, a leader, and every table ready: RethinkDB's
    /// users watch tables, not servers.
    pub fn healthy(&self) -> bool {
        !self.servers.is_empty()
            && self.connected == self.servers.len()
            && !self.leader.is_empty()
            && self.tables.as_ref().is_none_or(|t| t.ready == t.total)
    }

    pub fn summary(&self) -> String {
        let tables = match &self.tables {
            Some(t) => format!(", tables {}/{} ready", t.ready, t.total),
            None => String::new(),
        };
        format!(
            "{}/{} servers connected, leader {}{tables}",
            self.connected,
            self.servers.len(),
            if self.leader.is_empty() {
                "none"
            } else {
                &self.leader
            }
        )
    }

    /// What is wrong, server by server.
    pub fn detail(&self) -> String {
        let mut parts: Vec<String> = self
            .servers
            .iter()
            .filter(|s| !s.healthy)
            .map(|s| format!("{} on {}: {}", s.name, s.host, s.error))
            .collect();
        if let Some(t) = self.tables.as_ref().filter(|t| !t.unavailable.is_empty()) {
            parts.push(format!("tables not ready: {}", t.unavailable.join(", ")));
        }
        if !self.error.is_empty() {
            parts.push(self.error.clone());
        }
        parts.join("; ")
    }
}

/// How a database server's container stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStop {
    pub at_unix_ms: u64,
    pub exit_code: i64,
    /// The kernel's OOM killer acted in the container just before.
    pub oom: bool,
}

/// A database server's container stops and starts as its host's engine
/// reported them (since this coordinator started).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFailures {
    pub failures: u32,
    pub restarts: u32,
    pub last: Option<ServerStop>,
    /// Stopped, and not started since.
    down: bool,
    /// An `oom` came, and its `die` has not yet.
    oom_pending: bool,
}

/// What one container event of a database server means for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerChange {
    Failed(ServerStop),
    /// Started again after a failure; the restarts so far.
    Restarted(u32),
}

/// The container actions agents report for database servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerAction {
    Die,
    Oom,
    Start,
}

impl ContainerAction {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "die" => Some(ContainerAction::Die),
            "oom" => Some(ContainerAction::Oom),
            "start" => Some(ContainerAction::Start),
            _ => None,
        }
    }
}

impl ServerFailures {
    /// Folds one event in (pure). A first `start` (the server created) is
    /// no restart; an `oom` marks the `die` that follows it.
    pub fn apply(
        &mut self,
        action: ContainerAction,
        exit_code: i64,
        at_unix_ms: u64,
    ) -> Option<ServerChange> {
        match action {
            ContainerAction::Oom => {
                self.oom_pending = true;
                None
            }
            ContainerAction::Die => {
                let stop = ServerStop {
                    at_unix_ms,
                    exit_code,
                    oom: std::mem::take(&mut self.oom_pending),
                };
                self.failures += 1;
                self.last = Some(stop);
                self.down = true;
                Some(ServerChange::Failed(stop))
            }
            ContainerAction::Start if self.down => {
                self.down = false;
                self.restarts += 1;
                Some(ServerChange::Restarted(self.restarts))
            }
            ContainerAction::Start => None,
        }
    }
}

impl std::fmt::Display for ServerStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.exit_code)?;
        if self.oom {
            f.write_str(", OOM killed")?;
        }
        Ok(())
    }
}

/// What the coordinator knows of one host's configuration.
#[derive(Debug, Clone, Default)]
pub struct HostState {
    pub items: Vec<apiary_proto::ItemReport>,
    pub last_drift_unix_ms: u64,
    pub last_drift_items: Vec<String>,
}

/// One word for a host's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigState {
    /// The spec has no `[host]` section.
    Unmanaged,
    /// No report yet.
    Pending,
    Failed,
    NeedsReboot,
    Ok,
}

impl ConfigState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigState::Unmanaged => "unmanaged",
            ConfigState::Pending => "pending",
            ConfigState::Failed => "failed",
            ConfigState::NeedsReboot => "needs-reboot",
            ConfigState::Ok => "ok",
        }
    }
}

/// Whether the images the cluster's containers need (probe, database) are on
/// every host. The lab loads them while agents enroll and Swarm forms, and
/// only the work that starts containers waits for them; providers whose hosts
/// pull or already hold their images leave it `Ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Images {
    Loading,
    Ready,
    Failed(String),
}

/// Why containers cannot start yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImagesError {
    #[error("{0}")]
    Failed(String),
    #[error("the coordinator is shutting down")]
    ShuttingDown,
}

/// A node marked as leaving, until dropped.
pub struct Leaving<'a> {
    view: &'a ClusterView,
    node: String,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        lock(&self.view.leaving).remove(&self.node);
    }
}

/// Marks a node's agent as restarting on purpose (an upgrade) until it drops.
pub struct AgentRestart<'a> {
    view: &'a ClusterView,
    node: String,
}

impl Drop for AgentRestart<'_> {
    fn drop(&mut self) {
        lock(&self.view.agent_restarting).remove(&self.node);
    }
}

/// The in-memory cluster view (see the module docs).
pub struct ClusterView {
    checks: Mutex<ChecksState>,
    host_state: Mutex<HashMap<String, HostState>>,
    provider_info: RwLock<HashMap<String, HashMap<String, String>>>,
    images: tokio::sync::watch::Sender<Images>,
    /// Database servers' stops and starts, by server (service) name.
    server_failures: Mutex<HashMap<String, ServerFailures>>,
    /// Nodes being drained out of the cluster: rounds leave them be.
    leaving: Mutex<std::collections::HashSet<String>>,
    /// Nodes whose agent a rollout is restarting: what is read through that
    /// agent is, for that moment, as last measured.
    agent_restarting: Mutex<std::collections::HashSet<String>>,
    /// Held while the database's membership changes (`ctl scale
    /// database=N`, a node's drain): rounds create no server meanwhile.
    pub database_membership: tokio::sync::Mutex<()>,
}

impl Default for ClusterView {
    fn default() -> Self {
        ClusterView {
            checks: Mutex::default(),
            host_state: Mutex::default(),
            provider_info: RwLock::default(),
            images: tokio::sync::watch::channel(Images::Ready).0,
            server_failures: Mutex::default(),
            leaving: Mutex::default(),
            agent_restarting: Mutex::default(),
            database_membership: tokio::sync::Mutex::new(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClusterView {
    /// A view that starts with the pre-Swarm matrix a previous run saved.
    pub fn with_pre_swarm(pre_swarm: Vec<Cell>) -> Self {
        let view = ClusterView::default();
        lock(&view.checks).pre_swarm = pre_swarm;
        view
    }

    pub fn checks(&self) -> ChecksState {
        lock(&self.checks).clone()
    }

    pub fn set_checks(&self, state: ChecksState) {
        *lock(&self.checks) = state;
    }

    /// Changes the checks state in place, under its lock: for a part that
    /// is published apart from the round (the database), without copying
    /// the whole matrix or racing another writer.
    pub fn update_checks<R>(&self, change: impl FnOnce(&mut ChecksState) -> R) -> R {
        change(&mut lock(&self.checks))
    }

    pub fn database(&self) -> Option<DatabaseState> {
        lock(&self.checks).database.clone()
    }

    /// Marks `node` as leaving until the guard drops (its drain is over,
    /// done or failed).
    pub fn leaving(&self, node: &str) -> Leaving<'_> {
        lock(&self.leaving).insert(node.to_string());
        Leaving {
            view: self,
            node: node.to_string(),
        }
    }

    pub fn is_leaving(&self, node: &str) -> bool {
        lock(&self.leaving).contains(node)
    }

    /// Marks `node`'s agent as restarting until the guard drops.
    pub fn agent_restarting(&self, node: &str) -> AgentRestart<'_> {
        lock(&self.agent_restarting).insert(node.to_string());
        AgentRestart {
            view: self,
            node: node.to_string(),
        }
    }

    pub fn is_agent_restarting(&self, node: &str) -> bool {
        lock(&self.agent_restarting).contains(node)
    }

    /// Folds a database server's container event into its record.
    pub fn record_server_event(
        &self,
        server: &str,
        action: ContainerAction,
        exit_code: i64,
        at_unix_ms: u64,
    ) -> Option<ServerChange> {
        lock(&self.server_failures)
            .entry(server.to_string())
            .or_default()
            .apply(action, exit_code, at_unix_ms)
    }

    pub fn server_failures(&self, server: &str) -> ServerFailures {
        lock(&self.server_failures)
            .get(server)
            .cloned()
            .unwrap_or_default()
    }

    pub fn host_state(&self, node: &str) -> Option<HostState> {
        lock(&self.host_state).get(node).cloned()
    }

    /// Keeps a (non dry-run) host report: its items, and its drift repairs.
    pub fn record_host_report(&self, node: &str, report: &apiary_proto::HostConfigReport) {
        let mut map = lock(&self.host_state);
        let state = map.entry(node.to_string()).or_default();
        if !report.repaired_drift.is_empty() {
            state.last_drift_unix_ms = crate::time::now_unix_ms();
            state.last_drift_items = report.repaired_drift.clone();
        }
        state.items = report.items.clone();
    }

    /// One word for `node`'s configuration (`managed`: the spec has `[host]`).
    pub fn config_state(&self, node: &str, managed: bool) -> ConfigState {
        if !managed {
            return ConfigState::Unmanaged;
        }
        let Some(state) = self.host_state(node) else {
            return ConfigState::Pending;
        };
        let has = |o: &str| state.items.iter().any(|i| i.outcome == o);
        if has("failed") {
            ConfigState::Failed
        } else if has("needs-reboot") {
            ConfigState::NeedsReboot
        } else {
            ConfigState::Ok
        }
    }

    pub fn set_provider_info(&self, info: HashMap<String, HashMap<String, String>>) {
        *self
            .provider_info
            .write()
            .unwrap_or_else(|p| p.into_inner()) = info;
    }

    pub fn provider_info(&self, node: &str) -> HashMap<String, String> {
        self.provider_info
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
            .unwrap_or_default()
    }

    /// Says whether the hosts hold the images containers need.
    pub fn set_images(&self, images: Images) {
        self.images.send_replace(images);
    }

    /// Waits until the images are loaded; the error says why they are not.
    pub async fn images_ready(&self) -> Result<(), ImagesError> {
        let mut rx = self.images.subscribe();
        let seen = rx
            .wait_for(|i| *i != Images::Loading)
            .await
            .map_err(|_| ImagesError::ShuttingDown)?;
        match &*seen {
            Images::Failed(why) => Err(ImagesError::Failed(why.clone())),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_dies_and_starts_again_counts_one_failure_and_one_restart() {
        use ContainerAction::*;
        let mut f = ServerFailures::default();
        // Created: started once, no restart.
        assert_eq!(f.apply(Start, 0, 1), None);
        let stop = ServerStop {
            at_unix_ms: 2,
            exit_code: 137,
            oom: false,
        };
        assert_eq!(f.apply(Die, 137, 2), Some(ServerChange::Failed(stop)));
        assert_eq!(f.apply(Start, 0, 3), Some(ServerChange::Restarted(1)));
        assert_eq!(
            f.apply(Start, 0, 4),
            None,
            "a start without a stop is no restart"
        );
        // An OOM marks the stop that follows it, and only that one.
        assert_eq!(f.apply(Oom, 0, 5), None);
        let Some(ServerChange::Failed(oom)) = f.apply(Die, 137, 6) else {
            panic!("die after oom");
        };
        assert!(oom.oom);
        assert_eq!(oom.to_string(), "exit 137, OOM killed");
        assert_eq!(f.apply(Start, 0, 7), Some(ServerChange::Restarted(2)));
        let Some(ServerChange::Failed(plain)) = f.apply(Die, 1, 8) else {
            panic!("die");
        };
        assert!(!plain.oom);
        assert_eq!((f.failures, f.restarts), (3, 2));
        assert_eq!(f.last, Some(plain));
        assert_eq!(ContainerAction::parse("kill"), None);
    }

    fn report(outcomes: &[&str]) -> apiary_proto::HostConfigReport {
        apiary_proto::HostConfigReport {
            items: outcomes
                .iter()
                .map(|o| apiary_proto::ItemReport {
                    outcome: o.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn config_state_is_the_worst_item() {
        let view = ClusterView::default();
        assert_eq!(view.config_state("h1", false), ConfigState::Unmanaged);
        assert_eq!(view.config_state("h1", true), ConfigState::Pending);
        view.record_host_report("h1", &report(&["ok", "needs-reboot"]));
        assert_eq!(view.config_state("h1", true), ConfigState::NeedsReboot);
        view.record_host_report("h1", &report(&["failed", "needs-reboot"]));
        assert_eq!(view.config_state("h1", true), ConfigState::Failed);
        view.record_host_report("h1", &report(&["ok", "changed"]));
        assert_eq!(view.config_state("h1", true).as_str(), "ok");
    }

    #[tokio::test]
    async fn the_images_gate_opens_or_says_why() {
        let view = ClusterView::default();
        assert_eq!(view.images_ready().await, Ok(()));
        view.set_images(Images::Failed("no archive".into()));
        assert_eq!(
            view.images_ready().await,
            Err(ImagesError::Failed("no archive".into()))
        );
    }
}
