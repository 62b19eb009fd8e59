//! The coordinator proper: its CA, store and live sessions, and the three gRPC
//! services on one TLS listener.
//!
//! Nothing here listens in plaintext: [`Coordinator::serve`] takes a bound TCP
//! listener and only hands tonic connections that completed a TLS handshake.
//! Which service a caller may use is decided from the role in its verified
//! certificate, in [`require_role`], and nowhere else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apiary_certs::{
    COORDINATOR_SERVER_NAME, ClusterCa, JoinToken, PeerIdentity, RevocationSet, Role, server_config,
};
use apiary_proto::admin_server::{Admin, AdminServer};
use apiary_proto::agent_api_server::{AgentApi, AgentApiServer};
use apiary_proto::enrollment_server::{Enrollment, EnrollmentServer};
use apiary_proto::{
    AgentMessage, CoordinatorMessage, EnrollRequest, EnrollResponse, Facts, HeartbeatAck,
    JoinTokenRequest, JoinTokenResponse, NodeStatus, RemoveNodeRequest, RemoveNodeResponse,
    RenewRequest, RenewResponse, StatusRequest, StatusResponse, Welcome, agent_message,
    coordinator_message,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::admin_conf::AdminConf;
use crate::config::ClusterConfig;
use crate::error::CoordinatorError;
use crate::registry::Registry;
use crate::store::{CertRecord, NodeRecord, Op, RevocationRecord, Store, TokenRecord};

/// How long a database server's peer certificate is valid (see
/// [`Coordinator::database_peer_tls`]).
pub const DATABASE_PEER_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub struct Coordinator {
    config: ClusterConfig,
    state_dir: PathBuf,
    ca: ClusterCa,
    store: Store,
    registry: Registry,
    revoked: RevocationSet,
    token: RwLock<TokenRecord>,
    server_tls: Arc<rustls::ServerConfig>,
    events: tokio::sync::broadcast::Sender<apiary_proto::Event>,
    /// Latest host-configuration report per node (in memory: agents re-report
    /// on every session).
    host_state: std::sync::Mutex<HashMap<String, HostState>>,
    /// Callers waiting for the answer to a command, by command id.
    waiters: std::sync::Mutex<
        HashMap<u64, tokio::sync::oneshot::Sender<apiary_proto::HostConfigReport>>,
    >,
    next_command: std::sync::atomic::AtomicU64,
    op_waiters:
        std::sync::Mutex<HashMap<u64, tokio::sync::oneshot::Sender<apiary_proto::OpResult>>>,
    /// Heartbeat round trips as agents measure them (seconds), for metrics.
    pub(crate) heartbeat_rtt: prometheus_client::metrics::histogram::Histogram,
    /// Tunnels in flight and agents ready to open them (see `tunnel`).
    pub(crate) tunnels: crate::tunnel::TunnelHub,
    /// The latest reachability matrix and Swarm view (see `cluster`).
    checks: std::sync::Mutex<crate::cluster::ChecksState>,
    /// Provider-specific facts per node (lab: netns, Docker socket), shown by `ctl status --json`.
    provider_info: RwLock<HashMap<String, HashMap<String, String>>>,
    /// Whether the images containers need are on every host (see [`Images`]).
    images: tokio::sync::watch::Sender<Images>,
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

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("cluster", &self.config.cluster_name)
            .finish_non_exhaustive()
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub const ADMIN_CONF: &str = "admin.conf";

impl Coordinator {
    /// Opens (or on first start creates) the state in `state_dir`: CA, store,
    /// join token. Does not listen yet.
    pub async fn open(
        config: ClusterConfig,
        state_dir: &Path,
    ) -> Result<Arc<Self>, CoordinatorError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir_err = |source| CoordinatorError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(dir_err)?;

        let (ca, created) =
            ClusterCa::load_or_create(&state_dir.join("pki"), &config.cluster_name)?;
        if created {
            info!(digest = %ca.digest(), "created the cluster CA");
        }
        let store = Store::open(&state_dir.join("state.redb"))?;
        let revoked = RevocationSet::default();
        for r in store.revocations()? {
            revoked.insert(&r.serial);
        }
        let token = match store.token()? {
            Some(t) => t,
            None => {
                let t = new_token_record(&ca, &config, Vec::new());
                store.apply(vec![Op::PutToken(t.clone())]).await?;
                t
            }
        };
        // The server certificate is made afresh at every start: nothing pins it
        // but its CA, and a short life limits what a stolen copy is worth.
        let (server_cert, server_key) = ca.issue_with_key(
            "coordinator",
            Role::Coordinator,
            Duration::from_secs(30 * 86400),
        )?;
        let server_tls = Arc::new(server_config(
            ca.cert_der(),
            &server_cert.der,
            &server_key,
            revoked.clone(),
        )?);
        let pre_swarm = store.pre_swarm_cells().unwrap_or_else(|e| {
            warn!(error = %e, "the last pre-Swarm matrix cannot be read; it is measured again before a new swarm");
            Vec::new()
        });
        Ok(Arc::new(Coordinator {
            config,
            state_dir: state_dir.to_path_buf(),
            ca,
            store,
            registry: Registry::default(),
            revoked,
            token: RwLock::new(token),
            server_tls,
            provider_info: RwLock::default(),
            events: tokio::sync::broadcast::channel(1024).0,
            host_state: Default::default(),
            waiters: Default::default(),
            next_command: std::sync::atomic::AtomicU64::new(1),
            op_waiters: Default::default(),
            tunnels: Default::default(),
            heartbeat_rtt: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
            ),
            checks: std::sync::Mutex::new(crate::cluster::ChecksState {
                pre_swarm,
                ..Default::default()
            }),
            images: tokio::sync::watch::channel(Images::Ready).0,
        }))
    }

    /// Says whether the hosts hold the images containers need.
    pub fn set_images(&self, images: Images) {
        self.images.send_replace(images);
    }

    /// Waits until the images are loaded; the error says why they are not.
    pub async fn images_ready(&self) -> Result<(), String> {
        let mut rx = self.images.subscribe();
        let seen = rx
            .wait_for(|i| *i != Images::Loading)
            .await
            .map_err(|_| "the coordinator is shutting down".to_string())?;
        match &*seen {
            Images::Failed(why) => Err(why.clone()),
            _ => Ok(()),
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }

    /// The peer certificate of database server `service`, issued by the
    /// cluster CA on first use and kept in `state_dir/pki/database/`
    /// (the key 0600), so every round asks Swarm for the same secrets and
    /// the service's spec stays the same across restarts. Valid for
    /// [`DATABASE_PEER_TTL`]: servers are not re-keyed while they run.
    pub fn database_peer_tls(
        &self,
        service: &str,
    ) -> Result<apiary_agent::database::PeerTls, String> {
        let dir = self.state_dir.join("pki").join("database");
        let (cert_path, key_path) = (
            dir.join(format!("{service}.pem")),
            dir.join(format!("{service}.key")),
        );
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            format!("database peer certificate of {service}: cannot {what}: {e}")
        };
        let kept = std::fs::read_to_string(&cert_path)
            .and_then(|c| Ok((c, std::fs::read_to_string(&key_path)?)));
        let (cert_pem, key_pem) = match kept {
            Ok(kept) => kept,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (cert, key) = self
                    .ca
                    .issue_database_peer(&crate::database::peer_names(service), DATABASE_PEER_TTL)
                    .map_err(|e| fail("issue it", &e))?;
                std::fs::create_dir_all(&dir).map_err(|e| fail("create its directory", &e))?;
                apiary_certs::write_private(&key_path, key.as_bytes())
                    .map_err(|e| fail("write its key", &e))?;
                std::fs::write(&cert_path, &cert.pem).map_err(|e| fail("write it", &e))?;
                (cert.pem, key)
            }
            Err(e) => return Err(fail(&format!("read {}", cert_path.display()), &e)),
        };
        Ok(apiary_agent::database::PeerTls {
            ca_pem: self.ca.cert_pem().to_string(),
            cert_pem,
            key_pem,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Publishes an event to `ctl events` watchers (and the log).
    pub fn emit(&self, kind: &str, node: &str, message: impl Into<String>) {
        let event = apiary_proto::Event {
            at_unix_ms: crate::registry::now_unix_ms(),
            kind: kind.into(),
            node: node.into(),
            message: message.into(),
        };
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<apiary_proto::Event> {
        self.events.subscribe()
    }

    /// Turns heartbeat silence into `node_down` / `node_ready` events; a
    /// node's state in `ctl status` is computed on demand, this only notices
    /// the transitions.
    async fn watch_liveness(self: Arc<Self>) {
        let mut down: std::collections::HashSet<String> = Default::default();
        let mut tick = tokio::time::interval(self.config.heartbeat_interval / 2);
        loop {
            tick.tick().await;
            for name in self.registry.nodes() {
                let fresh = self
                    .registry
                    .view(&name, self.config.heartbeat_interval)
                    .is_some_and(|v| v.connected_and_fresh);
                if !fresh && down.insert(name.clone()) {
                    warn!(node = %name, "node down: no heartbeat for 3 intervals");
                    self.emit("node_down", &name, "no heartbeat for 3 intervals");
                } else if fresh && down.remove(&name) {
                    info!(node = %name, "node ready again");
                    self.emit("node_ready", &name, "heartbeats resumed");
                }
            }
        }
    }

    pub fn set_provider_info(&self, info: HashMap<String, HashMap<String, String>>) {
        *self
            .provider_info
            .write()
            .unwrap_or_else(|p| p.into_inner()) = info;
    }

    pub fn current_token(&self) -> TokenRecord {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The database server count `ctl scale database=N` set, if any: it
    /// outlives coordinator restarts, so a restart does not undo a scale.
    pub fn database_scale(&self) -> Option<usize> {
        match self.store.database_scale() {
            Ok(d) => d.map(|d| d.servers),
            Err(e) => {
                warn!(error = %e, "cannot read the database scale; using the config's count");
                None
            }
        }
    }

    /// Keeps the pre-Swarm matrix across restarts (see `Op::PutPreSwarmCells`).
    pub async fn save_pre_swarm(&self, cells: &[apiary_agent::reach::Cell]) {
        if let Err(e) = self
            .store
            .apply(vec![Op::PutPreSwarmCells(cells.to_vec())])
            .await
        {
            warn!(error = %e, "the pre-Swarm matrix is not saved; a restarted coordinator will not show it");
        }
    }

    pub async fn set_database_scale(&self, servers: usize) -> Result<(), String> {
        self.store
            .apply(vec![Op::PutDatabaseScale(
                crate::store::DatabaseScaleRecord {
                    servers,
                    set_unix: crate::registry::now_unix_ms() / 1000,
                },
            )])
            .await
            .map_err(|e| format!("could not record the new server count: {e}"))
    }

    /// Replaces the join token; the old one is refused for new enrollments.
    pub async fn rotate_token(&self) -> Result<TokenRecord, CoordinatorError> {
        let old = self.current_token();
        let mut rotated = old.rotated_hashes.clone();
        if let Ok(t) = old.token.parse::<JoinToken>() {
            rotated.push(t.secret_hash());
        }
        let keep = rotated.len().saturating_sub(32);
        let record = new_token_record(&self.ca, &self.config, rotated.split_off(keep));
        self.store.apply(vec![Op::PutToken(record.clone())]).await?;
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = record.clone();
        info!("join token rotated");
        self.emit(
            "token_rotated",
            "",
            "the previous join token is refused from now on",
        );
        Ok(record)
    }

    /// Writes `state_dir/admin.conf` on first start; later starts only update
    /// its endpoint (the admin certificate stays).
    pub fn write_admin_conf(&self, endpoint: SocketAddr) -> Result<PathBuf, CoordinatorError> {
        let path = self.state_dir.join(ADMIN_CONF);
        let endpoint = if endpoint.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), endpoint.port())
        } else {
            endpoint
        };
        let conf = match AdminConf::load(&path) {
            Ok(mut conf) => {
                if conf.endpoint == endpoint.to_string() {
                    return Ok(path);
                }
                conf.endpoint = endpoint.to_string();
                conf
            }
            Err(_) => {
                let (cert, key) =
                    self.ca
                        .issue_with_key("admin", Role::Admin, self.config.admin_cert_ttl)?;
                AdminConf {
                    cluster: self.config.cluster_name.clone(),
                    endpoint: endpoint.to_string(),
                    ca: self.ca.cert_pem().to_string(),
                    cert: cert.pem,
                    key,
                }
            }
        };
        conf.save(&path)?;
        Ok(path)
    }

    /// Serves until `shutdown` completes. Takes a bound listener so tests can
    /// bind port 0 and run the real server in-process.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), CoordinatorError> {
        let acceptor = TlsAcceptor::from(self.server_tls.clone());
        let (conn_tx, conn_rx) = mpsc::channel(1024);
        let accept = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let conn_tx = conn_tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(apiary_proto::dial::BufferedTcp::new(tcp)),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => {
                            let _ = conn_tx.send(Ok::<_, std::io::Error>(tls)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake refused"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        let flusher = tokio::spawn(self.clone().flush_last_seen());
        let liveness = tokio::spawn(self.clone().watch_liveness());
        let svc = Svc(self.clone());
        // Agent sessions are streams that never end by themselves, so a
        // graceful stop first ends them (agents read "shutting down" and
        // reconnect with backoff), then gives in-flight calls a few seconds.
        let stopping = Arc::new(tokio::sync::Notify::new());
        let signal = {
            let (me, stopping) = (self.clone(), stopping.clone());
            async move {
                shutdown.await;
                me.registry
                    .kick_all(Status::unavailable("coordinator shutting down"));
                stopping.notify_one();
            }
        };
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .initial_stream_window_size(Some(apiary_proto::dial::STREAM_WINDOW))
            .initial_connection_window_size(Some(apiary_proto::dial::CONNECTION_WINDOW))
            .max_frame_size(Some(apiary_proto::dial::MAX_FRAME))
            .add_service(EnrollmentServer::new(svc.clone()))
            .add_service(AgentApiServer::new(svc.clone()))
            .add_service(AdminServer::new(svc))
            .add_service(crate::tunnel::TunnelRoutes(crate::tunnel::TunnelSvc(
                self.clone(),
            )))
            .add_service(crate::tunnel::TunnelRelayRoutes::new(
                crate::tunnel::TunnelSvc(self.clone()),
            ))
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), signal);
        let result = tokio::select! {
            r = server => r.map_err(|e| CoordinatorError::Serve(e.to_string())),
            _ = async { stopping.notified().await; tokio::time::sleep(Duration::from_secs(5)).await } => {
                warn!("connections still open 5 s after shutdown; closing them");
                Ok(())
            }
        };
        accept.abort();
        flusher.abort();
        liveness.abort();
        result
    }

    /// Persists last-seen times now and then, so `ctl status` after a restart
    /// still says when a node was last heard from. Heartbeats themselves stay in
    /// memory: writing each one would cost an fsync per node per interval.
    async fn flush_last_seen(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(15));
        loop {
            tick.tick().await;
            let seen = self.registry.last_seen();
            let ops: Vec<Op> = seen
                .into_iter()
                .filter_map(|(name, ms)| {
                    let mut n = self.store.node(&name).ok()??;
                    n.last_seen_unix_ms = ms;
                    Some(Op::PutNode(n))
                })
                .collect();
            if !ops.is_empty()
                && let Err(e) = self.store.apply(ops).await
            {
                warn!(error = %e, "could not persist last-seen times");
            }
        }
    }

    /// The cluster as `ctl status` shows it.
    pub fn status(&self) -> Result<StatusResponse, Status> {
        let nodes = self.store.nodes().map_err(internal)?;
        // One snapshot of the matrix and Swarm view for every node.
        let checks = self.checks();
        let nodes = nodes
            .into_iter()
            .map(|n| self.node_status(n, &checks))
            .collect();
        let db = checks.database.unwrap_or_default();
        Ok(StatusResponse {
            cluster: self.config.cluster_name.clone(),
            nodes,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
            database_kind: db.kind.clone(),
            database_servers: db.servers.len() as u32,
            database_connected: db.connected as u32,
            database_leader: db.leader.clone(),
            database_error: if db.healthy() {
                String::new()
            } else {
                crate::cluster::database_detail(&db)
            },
            database_peer_tls: self
                .config
                .swarm
                .as_ref()
                .and_then(|s| s.database.as_ref())
                .is_some_and(|d| d.peer_tls),
        })
    }

    fn node_status(&self, n: NodeRecord, checks: &crate::cluster::ChecksState) -> NodeStatus {
        let swarm = checks.swarm.get(&n.name).cloned().unwrap_or_default();
        let db_server = checks
            .database
            .as_ref()
            .and_then(|d| d.servers.iter().find(|s| s.host == n.name));
        let host = self.host_state(&n.name).unwrap_or_default();
        let live = self.registry.view(&n.name, self.config.heartbeat_interval);
        let facts = live.as_ref().and_then(|l| l.facts.clone()).or_else(|| {
            self.store
                .facts(&n.name)
                .ok()
                .flatten()
                .and_then(|b| Facts::decode(b.as_slice()).ok())
        });
        let ready = live.as_ref().is_some_and(|l| l.connected_and_fresh);
        NodeStatus {
            state: if ready { "ready" } else { "down" }.to_string(),
            public_ip: facts
                .as_ref()
                .map(|f| f.public_ip.clone())
                .unwrap_or_default(),
            private_ip: facts
                .as_ref()
                .map(|f| f.private_ip.clone())
                .unwrap_or_default(),
            last_seen_unix_ms: live
                .map(|l| l.last_seen_unix_ms)
                .unwrap_or(n.last_seen_unix_ms),
            facts,
            cert_serial: n.cert_serial,
            cert_not_after_unix: n.cert_not_after_unix,
            enrolled_unix: n.enrolled_unix,
            provider_id: n.provider_id,
            provider_info: self
                .provider_info
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&n.name)
                .cloned()
                .unwrap_or_default(),
            swarm_role: swarm.role,
            swarm_status: swarm.status,
            swarm_availability: swarm.availability,
            swarm_leader: swarm.leader,
            overlay_attached: swarm.overlay_attached,
            database_server: db_server.map(|s| s.name.clone()).unwrap_or_default(),
            database_healthy: db_server.is_some_and(|s| s.healthy),
            config_state: self.config_state(&n.name),
            config_items: host.items,
            last_drift_repaired_unix_ms: host.last_drift_unix_ms,
            last_drift_items: host.last_drift_items,
            name: n.name,
        }
    }

    fn host_state(&self, node: &str) -> Option<HostState> {
        self.host_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
    }

    /// One word for a host's configuration: unmanaged (no [host] section),
    /// pending (no report yet), failed, needs-reboot, or ok.
    fn config_state(&self, node: &str) -> String {
        if self.config.host.is_none() {
            return "unmanaged".into();
        }
        let Some(state) = self.host_state(node) else {
            return "pending".into();
        };
        let has = |o: &str| state.items.iter().any(|i| i.outcome == o);
        if has("failed") {
            "failed"
        } else if has("needs-reboot") {
            "needs-reboot"
        } else {
            "ok"
        }
        .into()
    }

    /// Runs `req` on `node`'s agent and waits for its answer.
    pub async fn call(
        &self,
        node: &str,
        req: &apiary_agent::ops::OpRequest,
    ) -> Result<serde_json::Value, String> {
        let outbox = self
            .registry
            .outbox(node)
            .ok_or_else(|| format!("{node} has no session (agent down)"))?;
        let id = self.command_id();
        let op = apiary_proto::AgentOp {
            request_json: serde_json::to_string(req).map_err(|e| e.to_string())?,
        };
        let msg = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Command(apiary_proto::Command {
                id,
                kind: Some(apiary_proto::command::Kind::Op(op)),
            })),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.op_waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let answer = async {
            outbox
                .send(Ok(msg))
                .await
                .map_err(|_| format!("{node}'s session ended"))?;
            match tokio::time::timeout(req.timeout(), rx).await {
                Ok(Ok(r)) if r.ok => {
                    serde_json::from_str(&r.result_json).map_err(|e| e.to_string())
                }
                Ok(Ok(r)) => Err(r.error),
                Ok(Err(_)) => Err(format!("{node}'s session ended before it answered")),
                Err(_) => Err(format!("{node} did not answer within {:?}", req.timeout())),
            }
        }
        .await;
        self.op_waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        answer
    }

    pub fn set_checks(&self, state: crate::cluster::ChecksState) {
        *self.checks.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Changes the checks state in place, under its lock: for a part that
    /// is published apart from the round (the database), without copying
    /// the whole matrix or racing another writer.
    pub fn update_checks(&self, change: impl FnOnce(&mut crate::cluster::ChecksState)) {
        change(&mut self.checks.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn checks(&self) -> crate::cluster::ChecksState {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn command_id(&self) -> u64 {
        self.next_command
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn host_command(&self, dry_run: bool) -> Option<(u64, CoordinatorMessage)> {
        let host = self.config.host.as_ref()?;
        let id = self.command_id();
        let apply = apiary_proto::ApplyHostConfig {
            spec_json: serde_json::to_string(host.spec()).ok()?,
            dry_run,
            recheck_interval_ms: self.config.host_recheck_interval.as_millis() as u64,
        };
        let command = apiary_proto::Command {
            id,
            kind: Some(apiary_proto::command::Kind::ApplyHostConfig(apply)),
        };
        Some((
            id,
            CoordinatorMessage {
                msg: Some(coordinator_message::Msg::Command(command)),
            },
        ))
    }

    fn record_host_report(&self, node: &str, report: apiary_proto::HostConfigReport) {
        if !report.repaired_drift.is_empty() {
            warn!(node, items = ?report.repaired_drift, "host configuration drifted and was repaired");
            self.emit("drift_repaired", node, report.repaired_drift.join(", "));
        }
        for failed in report.items.iter().filter(|i| i.outcome == "failed") {
            debug!(node, item = %failed.item, reason = %failed.reason, "host configuration item failed");
        }
        if !report.dry_run {
            let mut map = self.host_state.lock().unwrap_or_else(|p| p.into_inner());
            let state = map.entry(node.to_string()).or_default();
            if !report.repaired_drift.is_empty() {
                state.last_drift_unix_ms = crate::registry::now_unix_ms();
                state.last_drift_items = report.repaired_drift.clone();
            }
            state.items = report.items.clone();
        }
        if report.command_id != 0
            && let Some(waiter) = self
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&report.command_id)
        {
            let _ = waiter.send(report);
        }
    }

    /// `ctl hosts apply [--dry-run]`: asks each node's agent and waits for its report.
    pub async fn apply_hosts(
        &self,
        nodes: Vec<String>,
        dry_run: bool,
    ) -> Result<Vec<apiary_proto::HostApplyResult>, Status> {
        if self.config.host.is_none() {
            return Err(Status::failed_precondition(
                "this cluster's spec has no [host] section, so apiary does not manage host configuration here",
            ));
        }
        let known: Vec<String> = self
            .store
            .nodes()
            .map_err(internal)?
            .into_iter()
            .map(|n| n.name)
            .collect();
        let targets = if nodes.is_empty() {
            known.clone()
        } else {
            nodes
        };
        for t in &targets {
            if !known.contains(t) {
                return Err(Status::not_found(format!(
                    "no node named {t:?}; `ctl status` lists the nodes"
                )));
            }
        }
        let asks = targets.into_iter().map(|node| async move {
            let mut result = apiary_proto::HostApplyResult {
                node: node.clone(),
                ..Default::default()
            };
            let (Some(outbox), Some((id, command))) =
                (self.registry.outbox(&node), self.host_command(dry_run))
            else {
                result.error = "the node is down (no session): start its agent".into();
                return result;
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, tx);
            if outbox.send(Ok(command)).await.is_err() {
                result.error = "the node's session ended while asking".into();
            } else {
                match tokio::time::timeout(Duration::from_secs(120), rx).await {
                    Ok(Ok(report)) => {
                        result.took_us = report.took_us;
                        result.items = report.items;
                    }
                    Ok(Err(_)) => {
                        result.error = "the node's session ended before it answered".into()
                    }
                    Err(_) => result.error = "no answer within 120 s".into(),
                }
            }
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            result
        });
        Ok(futures::future::join_all(asks).await)
    }

    /// Removes a node: every certificate it holds is refused from the next
    /// handshake on, and its live session is ended with the reason.
    /// Drains `name` (database server, Swarm) and then removes it: what the
    /// drain did, and the serials revoked. A drain that would break the
    /// database refuses, and nothing is removed.
    pub async fn drain_and_remove(&self, name: &str) -> Result<(Vec<String>, Vec<String>), Status> {
        if self.store.node(name).map_err(internal)?.is_none() {
            return Err(Status::not_found(format!(
                "no node named {name:?}; `ctl status` lists the nodes"
            )));
        }
        let drained = match &self.config.swarm {
            Some(swarm) => crate::cluster::drain_node(self, swarm, name)
                .await
                .map_err(Status::failed_precondition)?,
            None => Vec::new(),
        };
        let serials = self.remove_node(name).await?;
        Ok((drained, serials))
    }

    pub async fn remove_node(&self, name: &str) -> Result<Vec<String>, Status> {
        if self.store.node(name).map_err(internal)?.is_none() {
            return Err(Status::not_found(format!(
                "no node named {name:?}; `ctl status` lists the nodes"
            )));
        }
        let now = unix_now();
        let serials: Vec<String> = self
            .store
            .certs()
            .map_err(internal)?
            .into_iter()
            .filter(|c| c.node == name && c.role == Role::Agent.as_str() && c.not_after_unix >= now)
            .map(|c| c.serial)
            .collect();
        // In memory first: the refusal must hold even before the write lands.
        for s in &serials {
            self.revoked.insert(s);
        }
        let mut ops: Vec<Op> = serials
            .iter()
            .map(|s| {
                Op::Revoke(RevocationRecord {
                    serial: s.clone(),
                    node: name.to_string(),
                    revoked_unix: now,
                })
            })
            .collect();
        ops.push(Op::DeleteNode(name.to_string()));
        self.store.apply(ops).await.map_err(internal)?;
        self.registry.kick(
            name,
            Status::permission_denied(format!(
                "node {name} was removed from the cluster; its certificate is revoked"
            )),
        );
        info!(node = name, revoked = serials.len(), "node removed");
        self.emit(
            "node_removed",
            name,
            format!("{} certificate(s) revoked", serials.len()),
        );
        Ok(serials)
    }

    fn check_token(&self, presented: &str) -> Result<(), Status> {
        let token: JoinToken = presented
            .parse()
            .map_err(|e: apiary_certs::CertError| Status::invalid_argument(e.to_string()))?;
        if token.ca_digest != self.ca.digest() {
            return Err(Status::permission_denied(
                "join token refused: it was issued for another cluster's CA; get this cluster's token with `coordinator token`",
            ));
        }
        let current = self.current_token();
        let current_hash = current
            .token
            .parse::<JoinToken>()
            .map(|t| t.secret_hash())
            .unwrap_or_default();
        let hash = token.secret_hash();
        if hash == current_hash {
            if let Some(exp) = current.expires_unix
                && unix_now() >= exp
            {
                return Err(Status::permission_denied(format!(
                    "join token refused: it expired at {} (unix {exp}); make a new one with `coordinator token --rotate`",
                    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(exp))
                )));
            }
            return Ok(());
        }
        if current.rotated_hashes.contains(&hash) {
            return Err(Status::permission_denied(
                "join token refused: it was rotated and is no longer valid; get the current one with `coordinator token`",
            ));
        }
        Err(Status::permission_denied(
            "join token refused: wrong secret for this cluster; get the current one with `coordinator token`",
        ))
    }

    pub async fn enroll(&self, req: EnrollRequest) -> Result<EnrollResponse, Status> {
        self.check_token(&req.token)?;
        let name = req.node_name;
        if name.is_empty()
            || name.len() > 63
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        {
            return Err(Status::invalid_argument(format!(
                "node name {name:?} must be 1-63 characters of letters, digits, '-', '.', '_' (set it with --name)"
            )));
        }
        let cert = self
            .ca
            .sign_csr(&req.csr_der, &name, Role::Agent, self.config.node_cert_ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let previous = self.store.node(&name).map_err(internal)?;
        let now = unix_now();
        let mut ops = vec![
            Op::PutCert(CertRecord {
                serial: cert.serial.clone(),
                node: name.clone(),
                role: Role::Agent.as_str().into(),
                issued_unix: now,
                not_after_unix: unix(cert.not_after),
            }),
            Op::PutNode(NodeRecord {
                name: name.clone(),
                enrolled_unix: previous.as_ref().map(|p| p.enrolled_unix).unwrap_or(now),
                cert_serial: cert.serial.clone(),
                cert_not_after_unix: unix(cert.not_after),
                last_seen_unix_ms: previous.as_ref().map(|p| p.last_seen_unix_ms).unwrap_or(0),
                provider_id: previous
                    .as_ref()
                    .map(|p| p.provider_id.clone())
                    .unwrap_or_default(),
            }),
        ];
        // Re-enrolling under a name that exists (a host whose state was wiped)
        // takes the name over: the old identity must not stay valid beside it.
        if let Some(p) = &previous {
            self.revoked.insert(&p.cert_serial);
            ops.push(Op::Revoke(RevocationRecord {
                serial: p.cert_serial.clone(),
                node: name.clone(),
                revoked_unix: now,
            }));
            self.registry.kick(
                &name,
                Status::aborted("this node re-enrolled with a new identity"),
            );
        }
        self.store.apply(ops).await.map_err(internal)?;
        info!(node = %name, serial = %cert.serial, reenrolled = previous.is_some(), "node enrolled");
        self.emit(
            "node_enrolled",
            &name,
            if previous.is_some() {
                "re-enrolled with a new identity"
            } else {
                "enrolled"
            },
        );
        Ok(EnrollResponse {
            cert_der: cert.der,
            ca_der: self.ca.cert_der().to_vec(),
            node_name: name,
        })
    }

    async fn renew(&self, peer: &PeerIdentity, csr: &[u8]) -> Result<RenewResponse, Status> {
        let Some(mut node) = self.store.node(&peer.node).map_err(internal)? else {
            return Err(Status::permission_denied(format!(
                "node {} is not a member of this cluster",
                peer.node
            )));
        };
        let cert = self
            .ca
            .sign_csr(csr, &peer.node, Role::Agent, self.config.node_cert_ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        node.cert_serial = cert.serial.clone();
        node.cert_not_after_unix = unix(cert.not_after);
        self.store
            .apply(vec![
                Op::PutCert(CertRecord {
                    serial: cert.serial.clone(),
                    node: peer.node.clone(),
                    role: Role::Agent.as_str().into(),
                    issued_unix: unix_now(),
                    not_after_unix: unix(cert.not_after),
                }),
                Op::PutNode(node),
            ])
            .await
            .map_err(internal)?;
        info!(node = %peer.node, serial = %cert.serial, "certificate renewed");
        self.emit(
            "certificate_renewed",
            &peer.node,
            format!("new serial {}", cert.serial),
        );
        Ok(RenewResponse { cert_der: cert.der })
    }

    async fn run_session(
        self: Arc<Self>,
        node: String,
        mut inbound: Streaming<AgentMessage>,
        outbox: mpsc::Sender<Result<CoordinatorMessage, Status>>,
    ) {
        let session = self.registry.connect(&node, outbox.clone(), None);
        let welcome = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Welcome(Welcome {
                node_name: node.clone(),
                heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
            })),
        };
        if outbox.send(Ok(welcome)).await.is_err() {
            self.registry.disconnect(&node, session);
            return;
        }
        // Every session starts by (re)sending the host configuration: the
        // agent keeps it applied from then on, even while disconnected.
        if let Some((_, command)) = self.host_command(false) {
            let _ = outbox.send(Ok(command)).await;
        }
        loop {
            match inbound.message().await {
                Ok(Some(AgentMessage { msg: Some(msg) })) => {
                    self.registry.seen(&node, session);
                    match msg {
                        agent_message::Msg::Hello(hello) => {
                            let facts = hello.facts.unwrap_or_default();
                            info!(version = %hello.agent_version, kernel = %facts.kernel_version, private_ip = %facts.private_ip, "node connected");
                            self.emit(
                                "node_connected",
                                &node,
                                format!("agent {} from {}", hello.agent_version, facts.private_ip),
                            );
                            self.record_facts(&node, session, facts).await;
                        }
                        agent_message::Msg::HostConfig(report) => {
                            self.record_host_report(&node, report)
                        }
                        agent_message::Msg::OpResult(result) => {
                            let waiter = self
                                .op_waiters
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&result.command_id);
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(result);
                            }
                        }
                        agent_message::Msg::Facts(facts) => {
                            self.record_facts(&node, session, facts).await
                        }
                        agent_message::Msg::Heartbeat(hb) => {
                            if hb.last_rtt_us > 0 {
                                self.heartbeat_rtt.observe(hb.last_rtt_us as f64 / 1e6);
                            }
                            let ack = CoordinatorMessage {
                                msg: Some(coordinator_message::Msg::HeartbeatAck(HeartbeatAck {
                                    seq: hb.seq,
                                })),
                            };
                            if outbox.send(Ok(ack)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                Ok(Some(AgentMessage { msg: None })) => {}
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "session stream error");
                    break;
                }
            }
        }
        self.registry.disconnect(&node, session);
        info!("node session ended");
        if self.registry.outbox(&node).is_none() {
            self.emit("node_down", &node, "session ended");
        }
    }

    async fn record_facts(&self, node: &str, session: u64, facts: Facts) {
        let encoded = facts.encode_to_vec();
        self.registry.set_facts(node, session, facts);
        if let Err(e) = self
            .store
            .apply(vec![Op::PutFacts {
                node: node.to_string(),
                encoded,
            }])
            .await
        {
            warn!(error = %e, "could not persist facts");
        }
    }
}

fn new_token_record(
    ca: &ClusterCa,
    config: &ClusterConfig,
    rotated_hashes: Vec<String>,
) -> TokenRecord {
    let now = unix_now();
    TokenRecord {
        token: JoinToken::generate(ca.digest()).to_string(),
        created_unix: now,
        expires_unix: config.join_token_ttl.map(|ttl| now + ttl.as_secs()),
        rotated_hashes,
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// The verified identity of the caller, which must hold `role`.
pub(crate) fn require_role<T>(req: &Request<T>, role: Role) -> Result<PeerIdentity, Status> {
    let cert = req
        .peer_certs()
        .and_then(|certs| certs.first().cloned())
        .ok_or_else(|| {
            Status::unauthenticated(format!(
                "this API needs a client certificate with role {role}; none was presented"
            ))
        })?;
    let peer = PeerIdentity::from_der(&cert).map_err(|e| Status::unauthenticated(e.to_string()))?;
    if peer.role != role {
        return Err(Status::permission_denied(format!(
            "this API is for {role} certificates; the caller presented a {} certificate ({})",
            peer.role, peer.node
        )));
    }
    Ok(peer)
}

#[derive(Clone)]
struct Svc(Arc<Coordinator>);

#[tonic::async_trait]
impl Enrollment for Svc {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let req = req.into_inner();
        let span = info_span!("enroll", node = %req.node_name);
        self.0.enroll(req).instrument(span).await.map(Response::new)
    }
}

#[tonic::async_trait]
impl AgentApi for Svc {
    type SessionStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = require_role(&req, Role::Agent)?;
        if self.0.store.node(&peer.node).map_err(internal)?.is_none() {
            return Err(Status::permission_denied(format!(
                "node {} is not a member of this cluster; re-enroll with a join token",
                peer.node
            )));
        }
        let (tx, rx) = mpsc::channel(64);
        let span = info_span!("session", node = %peer.node);
        tokio::spawn(
            self.0
                .clone()
                .run_session(peer.node, req.into_inner(), tx)
                .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let peer = require_role(&req, Role::Agent)?;
        self.0
            .renew(&peer, &req.into_inner().csr_der)
            .await
            .map(Response::new)
    }
}

/// What the coordinator knows of one host's configuration.
#[derive(Debug, Clone, Default)]
struct HostState {
    items: Vec<apiary_proto::ItemReport>,
    last_drift_unix_ms: u64,
    last_drift_items: Vec<String>,
}

#[tonic::async_trait]
impl Admin for Svc {
    async fn checks(
        &self,
        req: Request<apiary_proto::ChecksRequest>,
    ) -> Result<Response<apiary_proto::ChecksResponse>, Status> {
        require_role(&req, Role::Admin)?;
        Ok(Response::new(self.0.checks().to_wire()))
    }

    async fn scale_database(
        &self,
        req: Request<apiary_proto::ScaleDatabaseRequest>,
    ) -> Result<Response<apiary_proto::ScaleDatabaseResponse>, Status> {
        let admin = require_role(&req, Role::Admin)?;
        let n = req.into_inner().servers as usize;
        info!(admin = %admin.node, servers = n, "database scale requested");
        let swarm = self
            .0
            .config
            .swarm
            .clone()
            .ok_or_else(|| Status::failed_precondition("this cluster has no Swarm"))?;
        let summary = crate::cluster::scale_database(&self.0, &swarm, n)
            .await
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(apiary_proto::ScaleDatabaseResponse {
            summary,
        }))
    }

    async fn apply_hosts(
        &self,
        req: Request<apiary_proto::ApplyHostsRequest>,
    ) -> Result<Response<apiary_proto::ApplyHostsResponse>, Status> {
        let admin = require_role(&req, Role::Admin)?;
        let req = req.into_inner();
        info!(admin = %admin.node, dry_run = req.dry_run, nodes = ?req.nodes, "host configuration requested");
        let hosts = self.0.apply_hosts(req.nodes, req.dry_run).await?;
        Ok(Response::new(apiary_proto::ApplyHostsResponse { hosts }))
    }

    type EventsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<apiary_proto::Event, Status>> + Send>>;

    async fn events(
        &self,
        req: Request<apiary_proto::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        require_role(&req, Role::Admin)?;
        let rx = self.0.subscribe();
        let stream =
            tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|item| match item {
                Ok(event) => Some(Ok(event)),
                // A watcher too slow for the event rate misses some; it is told.
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    Some(Ok(apiary_proto::Event {
                        at_unix_ms: crate::registry::now_unix_ms(),
                        kind: "events_lost".into(),
                        node: String::new(),
                        message: format!(
                            "{n} events were dropped because this watcher fell behind"
                        ),
                    }))
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        require_role(&req, Role::Admin)?;
        self.0.status().map(Response::new)
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        let admin = require_role(&req, Role::Admin)?;
        let name = req.into_inner().name;
        info!(admin = %admin.node, node = %name, "remove node requested");
        let (drained, revoked_serials) = self.0.drain_and_remove(&name).await?;
        Ok(Response::new(RemoveNodeResponse {
            revoked_serials,
            drained,
        }))
    }

    async fn join_token(
        &self,
        req: Request<JoinTokenRequest>,
    ) -> Result<Response<JoinTokenResponse>, Status> {
        require_role(&req, Role::Admin)?;
        let record = if req.into_inner().rotate {
            self.0.rotate_token().await.map_err(internal)?
        } else {
            self.0.current_token()
        };
        Ok(Response::new(JoinTokenResponse {
            token: record.token,
            expires_unix: record.expires_unix.unwrap_or(0),
        }))
    }
}

pub const SERVER_NAME: &str = COORDINATOR_SERVER_NAME;
