//! The composition root: one [`Coordinator`] holds the cluster's parts
//! (config, store, [`Pki`], [`Sessions`], the in-memory [`ClusterView`],
//! [`Events`]) and is what the API, the providers and the reconcile loop are
//! given. Behaviour lives in the parts; what is here is the glue between
//! them: the node list a round observes, facts and reports from sessions,
//! and the operations that touch several parts at once (remove a node,
//! apply host configuration).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use apiary_api::database::{AdminCredentials, DatabaseKind, PeerTls};
use apiary_api::reach::Cell;
use apiary_proto::{DatabaseContainerEvent, Facts, HostApplyResult, HostConfigReport, command};
use prost::Message;
use tracing::{debug, info, warn};

use crate::config::ClusterConfig;
use crate::context::{ClusterContext, NodeObservation, RecordError};
use crate::endpoints::Endpoints;
use crate::error::CoordinatorError;
use crate::events::{EventKind, Events};
use crate::pki::{Pki, PkiError};
use crate::sessions::{AgentCalls, CallError, Sessions, command_message};
use crate::state::{ClusterView, ContainerAction, ServerChange};
use crate::store::{DatabaseScaleRecord, Op, Store, StoreError};

/// How long `ctl hosts apply` waits for each host's report.
const HOST_APPLY_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Coordinator {
    config: ClusterConfig,
    pub store: Store,
    pub pki: Pki,
    pub sessions: Sessions,
    pub view: ClusterView,
    pub events: Events,
    /// The coordinator endpoints agents are told ([`crate::endpoints`]).
    pub endpoints: Endpoints,
    /// Heartbeat round trips as agents measure them (seconds), for metrics.
    pub heartbeat_rtt: prometheus_client::metrics::histogram::Histogram,
    /// The agent build `ctl hosts upgrade` is rolling out.
    pub agent_rollout: AgentRollout,
}

/// One agent rollout at a time, and the build it serves to the agents it
/// upgrades (`FetchAgent`): opened and hashed once when the rollout starts,
/// so every host gets the same bytes even if the file is replaced meanwhile.
#[derive(Debug, Default)]
pub struct AgentRollout {
    pub running: tokio::sync::Mutex<()>,
    build: std::sync::RwLock<Option<Arc<crate::artifacts::AgentBinary>>>,
}

impl AgentRollout {
    pub fn serve(&self, build: Option<Arc<crate::artifacts::AgentBinary>>) {
        *self.build.write().unwrap_or_else(|p| p.into_inner()) = build;
    }

    /// The build being rolled out, if one is.
    pub fn build(&self) -> Option<Arc<crate::artifacts::AgentBinary>> {
        self.build.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("cluster", &self.config.cluster_name)
            .finish_non_exhaustive()
    }
}

/// Why a node could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Drain(#[from] crate::database::DatabaseError),
}

/// What a database client needs ([`Coordinator::database_credentials`]).
pub struct DatabaseCredentials {
    pub kind: DatabaseKind,
    pub client_port: u16,
    pub secret: ClientSecret,
}

pub enum ClientSecret {
    Password(AdminCredentials),
    Certificate(crate::pki::ClientCertificate),
}

/// Why no database credentials can be given.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("this cluster has no [database] section: there is no database to connect to")]
    NoDatabase,
    #[error(
        "[database] auth = false in the cluster spec: the database takes clients without credentials \
         (set auth = true and recreate the database to require them)"
    )]
    NoAuth,
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Why host configuration cannot be applied at all.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "this cluster's spec has no [host] section, so apiary does not manage host configuration here"
    )]
    Unmanaged,
    #[error("no node named {node:?}; `ctl status` lists the nodes")]
    NoSuchNode { node: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Coordinator {
    /// Opens (or on first start creates) the state in `state_dir`: CA, store,
    /// join token. Does not listen yet.
    pub async fn open(
        config: ClusterConfig,
        state_dir: &Path,
    ) -> Result<Arc<Self>, CoordinatorError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| CoordinatorError::StateDir {
                path: state_dir.to_path_buf(),
                source,
            })?;
        let store = Store::open(&state_dir.join("state.redb"))?;
        let pki = Pki::open(&config, state_dir, &store).await?;
        let pre_swarm = store.pre_swarm_cells().unwrap_or_else(|e| {
            warn!(error = %e, "the last pre-Swarm matrix cannot be read; it is measured again before a new swarm");
            Vec::new()
        });
        Ok(Arc::new(Coordinator {
            config,
            store,
            pki,
            sessions: Sessions::default(),
            view: ClusterView::with_pre_swarm(pre_swarm),
            events: Events::default(),
            endpoints: Endpoints::default(),
            heartbeat_rtt: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
            ),
            agent_rollout: AgentRollout::default(),
        }))
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Writes `admin.conf` for `endpoint` (see [`Pki::write_admin_conf`]).
    pub fn write_admin_conf(&self, endpoint: SocketAddr) -> Result<PathBuf, CoordinatorError> {
        Ok(self.pki.write_admin_conf(endpoint)?)
    }

    /// The facts a node last reported: from its live session, else the store.
    pub fn facts(&self, node: &str) -> Option<Facts> {
        let live = self
            .sessions
            .registry
            .view(node, self.config.heartbeat_interval)
            .and_then(|l| l.facts);
        live.or_else(|| match self.store.facts(node) {
            Ok(bytes) => bytes.and_then(|b| Facts::decode(b.as_slice()).ok()),
            Err(e) => {
                warn!(node, error = %e, "cannot read the node's facts");
                None
            }
        })
    }

    /// Keeps a session's facts (live, and in the store for after a restart).
    pub async fn record_facts(&self, node: &str, session: u64, facts: Facts) {
        let encoded = facts.encode_to_vec();
        self.sessions.registry.set_facts(node, session, facts);
        let op = Op::PutFacts {
            node: node.to_string(),
            encoded,
        };
        if let Err(e) = self.store.apply(vec![op]).await {
            warn!(error = %e, "could not persist facts");
        }
    }

    /// `ctl scale database=N`: the database scaled one server at a time
    /// over the ready hosts (see [`crate::database::scale`]).
    pub async fn scale_database(&self, n: usize) -> Result<String, crate::database::DatabaseError> {
        let swarm = self
            .config
            .swarm
            .as_ref()
            .ok_or(crate::database::DatabaseError::NotConfigured)?;
        let hosts = crate::reconcile::plan::members(&self.nodes(), swarm);
        let first_manager = hosts.iter().find(|h| h.manager).map(|h| h.name.as_str());
        crate::database::scale(
            self,
            swarm.database.as_ref(),
            &swarm.overlay,
            hosts.len(),
            first_manager,
            n,
        )
        .await
    }

    /// What a database client needs (`ctl database credentials`): the
    /// administrator's password where the database has one, else (etcd) a
    /// new client certificate from the cluster CA.
    pub fn database_credentials(&self) -> Result<DatabaseCredentials, CredentialsError> {
        let db = self
            .config
            .swarm
            .as_ref()
            .and_then(|s| s.database.as_ref())
            .ok_or(CredentialsError::NoDatabase)?;
        if !db.auth {
            return Err(CredentialsError::NoAuth);
        }
        let secret = match crate::database::spec::flavor(db.kind).admin_user() {
            Some(user) => ClientSecret::Password(self.pki.database_admin(user)?),
            None => ClientSecret::Certificate(self.pki.database_client()?),
        };
        Ok(DatabaseCredentials {
            kind: db.kind,
            client_port: db.client_port,
            secret,
        })
    }

    /// A database server's container stopped or started on `node`, as its
    /// agent saw it: counted, and announced at once. Only a server the
    /// database has on that node is taken (what an agent sends is
    /// untrusted, and this keeps the records bounded by the servers).
    pub fn record_database_event(&self, node: &str, event: DatabaseContainerEvent) {
        let Some(action) = ContainerAction::parse(&event.action) else {
            debug!(node, "a database event with an unknown action; dropped");
            return;
        };
        let placed_here = self.view.database().is_some_and(|db| {
            db.servers
                .iter()
                .any(|s| s.name == event.service && s.host == node)
        });
        if !placed_here {
            debug!(
                node,
                "a container event for no database server of this node; dropped"
            );
            return;
        }
        let server = event.service.as_str();
        match self
            .view
            .record_server_event(server, action, event.exit_code, event.at_unix_ms)
        {
            Some(ServerChange::Failed(stop)) => {
                warn!(node, server, %stop, "database server stopped");
                self.events.emit(
                    EventKind::DatabaseServerFailed,
                    node,
                    format!("{server} stopped ({stop})"),
                );
            }
            Some(ServerChange::Restarted(n)) => {
                info!(node, server, restarts = n, "database server running again");
                self.events.emit(
                    EventKind::DatabaseServerRestarted,
                    node,
                    format!("{server} is running again (restart {n})"),
                );
            }
            None => {}
        }
    }

    /// A host-configuration report from a session: kept, announced, and
    /// handed to whoever asked for it.
    pub fn record_host_report(&self, node: &str, report: HostConfigReport) {
        if !report.repaired_drift.is_empty() {
            warn!(node, items = ?report.repaired_drift, "host configuration drifted and was repaired");
            self.events.emit(
                EventKind::DriftRepaired,
                node,
                report.repaired_drift.join(", "),
            );
        }
        for failed in report.items.iter().filter(|i| i.outcome == "failed") {
            debug!(node, item = %failed.item, reason = %failed.reason, "host configuration item failed");
        }
        if !report.dry_run {
            self.view.record_host_report(node, &report);
        }
        self.sessions.answer_host_report(report);
    }

    /// The host-configuration command (id, message), when the spec has `[host]`.
    pub fn host_command(&self, dry_run: bool) -> Option<(u64, apiary_proto::CoordinatorMessage)> {
        let host = self.config.host.as_ref()?;
        let spec_json = match serde_json::to_string(host.spec()) {
            Ok(json) => json,
            Err(e) => {
                warn!(error = %e, "the host configuration cannot be encoded");
                return None;
            }
        };
        let id = self.sessions.command_id();
        let apply = apiary_proto::ApplyHostConfig {
            spec_json,
            dry_run,
            recheck_interval_ms: self.config.host_recheck_interval.as_millis() as u64,
        };
        Some((
            id,
            command_message(id, command::Kind::ApplyHostConfig(apply)),
        ))
    }

    /// `ctl hosts apply [--dry-run]`: asks each node's agent and waits for its report.
    pub async fn apply_hosts(
        &self,
        nodes: Vec<String>,
        dry_run: bool,
    ) -> Result<Vec<HostApplyResult>, ApplyError> {
        if self.config.host.is_none() {
            return Err(ApplyError::Unmanaged);
        }
        let known: Vec<String> = self.store.nodes()?.into_iter().map(|n| n.name).collect();
        let targets = if nodes.is_empty() {
            known.clone()
        } else {
            nodes
        };
        if let Some(t) = targets.iter().find(|t| !known.contains(t)) {
            return Err(ApplyError::NoSuchNode { node: t.clone() });
        }
        let asks = targets.into_iter().map(|node| async move {
            let mut result = HostApplyResult {
                node: node.clone(),
                ..Default::default()
            };
            let Some((id, command)) = self.host_command(dry_run) else {
                result.error = "the host configuration cannot be encoded".into();
                return result;
            };
            match self
                .sessions
                .ask_host_config(&node, id, command, HOST_APPLY_TIMEOUT)
                .await
            {
                Ok(report) => {
                    result.took_us = report.took_us;
                    result.items = report.items;
                }
                Err(e) => result.error = host_apply_error(&e),
            }
            result
        });
        Ok(futures::future::join_all(asks).await)
    }

    /// Drains `name` (database server, Swarm) and then removes it: what the
    /// drain did, and the serials revoked. A drain that would break the
    /// database refuses, and nothing is removed.
    pub async fn drain_and_remove(
        &self,
        name: &str,
    ) -> Result<(Vec<String>, Vec<String>), RemoveError> {
        if self.store.node(name).map_err(PkiError::from)?.is_none() {
            return Err(PkiError::NoSuchNode {
                node: name.to_string(),
            }
            .into());
        }
        // Rounds leave it be meanwhile: one would join it to the swarm
        // again right after it left.
        let _leaving = self.view.leaving(name);
        let drained = match &self.config.swarm {
            Some(swarm) => crate::reconcile::drain::drain_node(self, swarm, name).await?,
            None => Vec::new(),
        };
        let serials = self.remove_node(name).await?;
        Ok((drained, serials))
    }

    /// Removes a node: every certificate it holds is refused from the next
    /// handshake on, and its live session is ended with the reason.
    pub async fn remove_node(&self, name: &str) -> Result<Vec<String>, PkiError> {
        let serials = self.pki.remove_node(&self.store, name).await?;
        self.sessions.registry.kick(
            name,
            tonic::Status::permission_denied(format!(
                "node {name} was removed from the cluster; its certificate is revoked"
            )),
        );
        info!(node = name, revoked = serials.len(), "node removed");
        self.events.emit(
            EventKind::NodeRemoved,
            name,
            format!("{} certificate(s) revoked", serials.len()),
        );
        Ok(serials)
    }
}

/// What `ctl hosts apply` shows for a host that gave no report.
fn host_apply_error(e: &CallError) -> String {
    match e {
        CallError::NoSession { .. } => "the node is down (no session): start its agent".into(),
        CallError::SessionEnded { .. } => "the node's session ended while asking".into(),
        CallError::NoAnswer { .. } => "the node's session ended before it answered".into(),
        CallError::Timeout { timeout, .. } => format!("no answer within {} s", timeout.as_secs()),
        other => other.to_string(),
    }
}

#[tonic::async_trait]
impl ClusterContext for Coordinator {
    fn agents(&self) -> &dyn AgentCalls {
        &self.sessions
    }

    fn nodes(&self) -> Vec<NodeObservation> {
        let records = match self.store.nodes() {
            Ok(records) => records,
            Err(e) => {
                warn!(error = %e, "cannot read the nodes from the store");
                return Vec::new();
            }
        };
        records
            .into_iter()
            .map(|n| {
                let ready = self
                    .sessions
                    .registry
                    .view(&n.name, self.config.heartbeat_interval)
                    .is_some_and(|l| l.connected_and_fresh);
                let facts = self.facts(&n.name);
                NodeObservation {
                    private_ip: facts.as_ref().and_then(|f| f.private_ip.parse().ok()),
                    ip_vs: facts.as_ref().map(|f| {
                        f.kernel_features
                            .iter()
                            .any(|k| k.name == "ip_vs" && k.available)
                    }),
                    name: n.name,
                    ready,
                }
            })
            .collect()
    }

    fn view(&self) -> &ClusterView {
        &self.view
    }

    fn events(&self) -> &Events {
        &self.events
    }

    fn cluster_name(&self) -> &str {
        &self.config.cluster_name
    }

    fn database_scale(&self) -> Option<usize> {
        match self.store.database_scale() {
            Ok(d) => d.map(|d| d.servers),
            Err(e) => {
                warn!(error = %e, "cannot read the database scale; using the config's count");
                None
            }
        }
    }

    async fn set_database_scale(&self, servers: usize) -> Result<(), RecordError> {
        let record = DatabaseScaleRecord {
            servers,
            set_unix: crate::time::now_unix(),
        };
        self.store
            .apply(vec![Op::PutDatabaseScale(record)])
            .await
            .map_err(|e| RecordError {
                what: "could not record the new server count",
                reason: e.to_string(),
            })
    }

    async fn save_pre_swarm(&self, cells: &[Cell]) {
        if let Err(e) = self
            .store
            .apply(vec![Op::PutPreSwarmCells(cells.to_vec())])
            .await
        {
            warn!(error = %e, "the pre-Swarm matrix is not saved; a restarted coordinator will not show it");
        }
    }

    fn database_peer_tls(&self, service: &str) -> Result<PeerTls, RecordError> {
        self.pki
            .database_peer_tls(service, &crate::database::spec::peer_names(service))
            .map_err(|e| RecordError {
                what: "database peer certificate",
                reason: e.to_string(),
            })
    }

    fn database_admin(&self, user: &str) -> Result<AdminCredentials, RecordError> {
        self.pki.database_admin(user).map_err(|e| RecordError {
            what: "database administrator's password",
            reason: e.to_string(),
        })
    }
}
