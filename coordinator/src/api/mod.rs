//! The coordinator's gRPC services on one TLS listener: `Enrollment` (join
//! token, no certificate), `AgentApi` (agents' sessions and renewals),
//! `Admin` (ctl), and the tunnel relay ([`tunnel`]).
//!
//! Nothing here listens in plaintext: [`serve`] takes a bound TCP listener
//! and only hands tonic connections that completed a TLS handshake. Which
//! service a caller may use is decided from the role in its verified
//! certificate, in [`require_role`], and nowhere else. This is the only
//! place the coordinator's errors become `tonic::Status` ([`status_of`]
//! and the `From` conversions below).

pub mod limits;
mod session;
pub mod status;
pub mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use apiary_certs::{PeerIdentity, Role};
use apiary_proto::admin_server::{Admin, AdminServer};
use apiary_proto::agent_api_server::{AgentApi, AgentApiServer};
use apiary_proto::enrollment_server::{Enrollment, EnrollmentServer};
use apiary_proto::{
    AgentMessage, CoordinatorMessage, EnrollRequest, EnrollResponse, JoinTokenRequest,
    JoinTokenResponse, RemoveNodeRequest, RemoveNodeResponse, RenewRequest, RenewResponse,
    StatusRequest, StatusResponse,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::core::{ApplyError, ClientSecret, Coordinator, CredentialsError, RemoveError};
use crate::database::DatabaseError;
use crate::endpoints::{Change, EndpointsError};
use crate::error::CoordinatorError;
use crate::events::EventKind;
use crate::pki::PkiError;
use crate::reboot::RebootError;
use crate::scale::{HostControl, ScaleHostsError};
use crate::store::StoreError;
use crate::upgrade::UpgradeError;
use limits::{Conn, Sources};
use tunnel::{TunnelHub, TunnelRelayRoutes, TunnelRoutes, TunnelSvc};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
        let article = match peer.role {
            Role::Agent | Role::Admin => "an",
            Role::Coordinator | Role::Database => "a",
        };
        return Err(Status::permission_denied(format!(
            "this API is for {role} certificates; the caller presented {article} {} certificate ({})",
            peer.role, peer.node
        )));
    }
    Ok(peer)
}

impl From<RebootError> for Status {
    fn from(e: RebootError) -> Status {
        let message = e.to_string();
        match e {
            RebootError::NotSupported { .. } | RebootError::DatabaseDegraded { .. } => {
                Status::failed_precondition(message)
            }
            RebootError::NoSuchNode(_) => Status::not_found(message),
            RebootError::Busy => Status::aborted(message),
            RebootError::Record(_) => Status::internal(message),
            RebootError::Step { .. } | RebootError::NotBack { .. } => Status::unavailable(message),
        }
    }
}

impl From<UpgradeError> for Status {
    fn from(e: UpgradeError) -> Status {
        let message = e.to_string();
        match e {
            UpgradeError::NoBuild { .. } | UpgradeError::NotConnected { .. } => {
                Status::failed_precondition(message)
            }
            UpgradeError::NoSuchNode(_) => Status::not_found(message),
            UpgradeError::Busy => Status::aborted(message),
            UpgradeError::Step { .. }
            | UpgradeError::RolledBack { .. }
            | UpgradeError::NotBack { .. } => Status::unavailable(message),
        }
    }
}

impl From<ScaleHostsError> for Status {
    fn from(e: ScaleHostsError) -> Status {
        let message = e.to_string();
        match e {
            ScaleHostsError::NotSupported { .. } => Status::failed_precondition(message),
            ScaleHostsError::BadCount { .. } => Status::invalid_argument(message),
            ScaleHostsError::Busy => Status::aborted(message),
            ScaleHostsError::Record(_) => Status::internal(message),
            ScaleHostsError::Provider(_) => Status::unavailable(message),
        }
    }
}

impl From<PkiError> for Status {
    fn from(e: PkiError) -> Status {
        let message = e.to_string();
        match e {
            PkiError::MalformedToken(_) | PkiError::BadName(_) | PkiError::BadCsr(_) => {
                Status::invalid_argument(message)
            }
            PkiError::ForeignToken
            | PkiError::ExpiredToken { .. }
            | PkiError::RotatedToken
            | PkiError::WrongSecret
            | PkiError::HostTokenUsed { .. }
            | PkiError::HostTokenExpired { .. }
            | PkiError::HostTokenOtherNode { .. }
            | PkiError::NotMember { .. } => Status::permission_denied(message),
            PkiError::NoSuchNode { .. } => Status::not_found(message),
            // Not the caller's fault, and not final: the agent retries, and
            // enrolls once the operator has removed the old node.
            PkiError::NameTaken { .. } => Status::already_exists(message),
            PkiError::PeerCertificate { .. }
            | PkiError::AdminPassword { .. }
            | PkiError::Store(_)
            | PkiError::Cert(_)
            | PkiError::AdminConf(_) => Status::internal(message),
        }
    }
}

impl From<CredentialsError> for Status {
    fn from(e: CredentialsError) -> Status {
        match e {
            CredentialsError::NoDatabase | CredentialsError::NoAuth => {
                Status::failed_precondition(e.to_string())
            }
            CredentialsError::Pki(e) => e.into(),
        }
    }
}

impl From<DatabaseError> for Status {
    /// A database step that cannot go on is a precondition the operator can
    /// change (scale, heal a server), never the caller's fault.
    fn from(e: DatabaseError) -> Status {
        Status::failed_precondition(e.to_string())
    }
}

impl From<RemoveError> for Status {
    fn from(e: RemoveError) -> Status {
        match e {
            RemoveError::Pki(e) => e.into(),
            RemoveError::Drain(e) => e.into(),
        }
    }
}

impl From<ApplyError> for Status {
    fn from(e: ApplyError) -> Status {
        let message = e.to_string();
        match e {
            ApplyError::Unmanaged => Status::failed_precondition(message),
            ApplyError::NoSuchNode { .. } => Status::not_found(message),
            ApplyError::Store(_) => Status::internal(message),
        }
    }
}

impl From<EndpointsError> for Status {
    fn from(e: EndpointsError) -> Status {
        let message = e.to_string();
        match e {
            EndpointsError::Bad(_) => Status::invalid_argument(message),
            EndpointsError::Own { .. } | EndpointsError::NotStored { .. } => {
                Status::not_found(message)
            }
            EndpointsError::Store(_) => Status::internal(message),
        }
    }
}

fn internal(e: StoreError) -> Status {
    Status::internal(e.to_string())
}

/// Serves until `shutdown` completes. Takes a bound listener so tests can
/// bind port 0 and run the real server in-process.
pub async fn serve(
    coord: Arc<Coordinator>,
    hub: Arc<TunnelHub>,
    scaling: Arc<HostControl>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordinatorError> {
    let acceptor = TlsAcceptor::from(coord.pki.server_tls());
    let (conn_tx, conn_rx) = mpsc::channel(1024);
    let sources = Sources::default();
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
            let (acceptor, conn_tx, sources) = (acceptor.clone(), conn_tx.clone(), sources.clone());
            tokio::spawn(async move {
                let tcp = apiary_proto::dial::BufferedTcp::new(tcp);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let conn = if Conn::has_certificate(&tls) {
                            Conn::authenticated(tls)
                        } else {
                            match sources.admit(peer.ip()) {
                                Ok(slot) => Conn::unauthenticated(tls, slot),
                                Err(first) => {
                                    if first {
                                        warn!(%peer, limit = limits::MAX_UNAUTHENTICATED_PER_SOURCE, "refusing connections without a client certificate from this address: it holds the most allowed");
                                    }
                                    return;
                                }
                            }
                        };
                        let _ = conn_tx.send(Ok::<_, std::io::Error>(conn)).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    let flusher = tokio::spawn(session::flush_last_seen(coord.clone()));
    let liveness = tokio::spawn(session::watch_liveness(coord.clone()));
    let svc = Svc(coord.clone(), scaling);
    // Agent sessions are streams that never end by themselves, so a
    // graceful stop first ends them (agents read "shutting down" and
    // reconnect with backoff), then gives in-flight calls a few seconds.
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signal = {
        let (coord, stopping) = (coord.clone(), stopping.clone());
        async move {
            shutdown.await;
            coord
                .sessions
                .registry
                .kick_all(Status::unavailable("coordinator shutting down"));
            stopping.notify_one();
        }
    };
    let tunnels = TunnelSvc {
        coord: coord.clone(),
        hub,
    };
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .initial_stream_window_size(Some(apiary_proto::dial::STREAM_WINDOW))
        .initial_connection_window_size(Some(apiary_proto::dial::CONNECTION_WINDOW))
        .max_frame_size(Some(apiary_proto::dial::MAX_FRAME))
        .max_concurrent_streams(Some(limits::MAX_CONCURRENT_STREAMS))
        .add_service(
            EnrollmentServer::new(svc.clone())
                .max_decoding_message_size(limits::ENROLL_MAX_MESSAGE),
        )
        .add_service(AgentApiServer::new(svc.clone()))
        .add_service(AdminServer::new(svc))
        .add_service(TunnelRoutes(tunnels.clone()))
        .add_service(TunnelRelayRoutes::new(tunnels))
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

/// The services: the coordinator, and the host scaler its provider
/// registered (`ctl scale hosts=N`).
#[derive(Clone)]
struct Svc(Arc<Coordinator>, Arc<HostControl>);

#[tonic::async_trait]
impl Enrollment for Svc {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let req = req.into_inner();
        let span = info_span!("enroll", node = %req.node_name);
        let coord = &self.0;
        let enrolled = coord
            .pki
            .enroll(&coord.store, &req.token, &req.node_name, &req.csr_der)
            .instrument(span)
            .await?;
        if enrolled.reenrolled {
            coord.sessions.registry.kick(
                &enrolled.node,
                Status::aborted("this node re-enrolled with a new identity"),
            );
        }
        coord.events.emit(
            EventKind::NodeEnrolled,
            &enrolled.node,
            if enrolled.reenrolled {
                "re-enrolled with a new identity"
            } else {
                "enrolled"
            },
        );
        Ok(Response::new(EnrollResponse {
            cert_der: enrolled.cert_der,
            ca_der: enrolled.ca_der,
            node_name: enrolled.node,
        }))
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
            // A certificate from this CA, unrevoked, for a node the store does
            // not hold: after a restore, a node enrolled after the backup.
            warn!(node = %peer.node, serial = %peer.serial, "a certificate of this cluster's CA for a node this coordinator does not know (enrolled after the backup it was restored from?); refused");
            return Err(Status::permission_denied(format!(
                "node {} is not a member of this cluster (this coordinator has no record of it, e.g. it enrolled after the backup the coordinator was restored from); \
                 to re-enroll, delete node.key and node.pem from the agent's state directory and start it with a join token",
                peer.node
            )));
        }
        if let Err(e) = self.0.pki.record_presented(&self.0.store, &peer).await {
            warn!(node = %peer.node, error = %e, "cannot record the node's certificate");
        }
        let (tx, rx) = mpsc::channel(64);
        let span = info_span!("session", node = %peer.node);
        tokio::spawn(
            session::run(self.0.clone(), peer.node, req.into_inner(), tx).instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let peer = require_role(&req, Role::Agent)?;
        let coord = &self.0;
        let (cert_der, serial) = coord
            .pki
            .renew(&coord.store, &peer, &req.into_inner().csr_der)
            .await?;
        coord.events.emit(
            EventKind::CertificateRenewed,
            &peer.node,
            format!("new serial {serial}"),
        );
        Ok(Response::new(RenewResponse { cert_der }))
    }

    type FetchAgentStream = ReceiverStream<Result<apiary_proto::AgentChunk, Status>>;

    async fn fetch_agent(
        &self,
        req: Request<apiary_proto::FetchAgentRequest>,
    ) -> Result<Response<Self::FetchAgentStream>, Status> {
        let peer = require_role(&req, Role::Agent)?;
        let want = req.into_inner().sha256;
        let Some(build) = self.0.agent_rollout.build() else {
            return Err(Status::failed_precondition(
                "no agent rollout is running (`ctl hosts upgrade` starts one)",
            ));
        };
        if build.sha256() != want {
            return Err(Status::failed_precondition(format!(
                "the build being rolled out is {}, not {want}",
                build.sha256()
            )));
        }
        info!(node = %peer.node, sha256 = %want, bytes = build.len(), "agent build requested");
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            const CHUNK: usize = 256 * 1024;
            let mut at = 0u64;
            while at < build.len() {
                let b = build.clone();
                let chunk = tokio::task::spawn_blocking(move || b.read_chunk(at, CHUNK)).await;
                let data = match chunk {
                    Ok(Ok(data)) if !data.is_empty() => data,
                    Ok(Ok(_)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(
                                "the agent build shrank while being sent",
                            )))
                            .await;
                        return;
                    }
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                at += data.len() as u64;
                if tx
                    .send(Ok(apiary_proto::AgentChunk { data }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl Admin for Svc {
    async fn checks(
        &self,
        req: Request<apiary_proto::ChecksRequest>,
    ) -> Result<Response<apiary_proto::ChecksResponse>, Status> {
        require_role(&req, Role::Admin)?;
        Ok(Response::new(self.0.view.checks().to_wire()))
    }

    async fn scale_hosts(
        &self,
        req: Request<apiary_proto::ScaleHostsRequest>,
    ) -> Result<Response<apiary_proto::ScaleHostsResponse>, Status> {
        let admin = require_role(&req, Role::Admin)?;
        let n = req.into_inner().hosts as usize;
        info!(admin = %admin.node, hosts = n, "host scale requested");
        let summary = self.1.scale(&self.0, n).await?;
        Ok(Response::new(apiary_proto::ScaleHostsResponse { summary }))
    }

    async fn reboot_hosts(
        &self,
        req: Request<apiary_proto::RebootHostsRequest>,
    ) -> Result<Response<apiary_proto::RebootHostsResponse>, Status> {
        let admin = require_role(&req, Role::Admin)?;
        let req = req.into_inner();
        info!(admin = %admin.node, nodes = ?req.nodes, needed = req.needed, "rolling reboot requested");
        let steps = crate::reboot::rolling_reboot(&self.0, &self.1, &req.nodes, req.needed).await?;
        Ok(Response::new(apiary_proto::RebootHostsResponse { steps }))
    }

    async fn upgrade_hosts(
        &self,
        req: Request<apiary_proto::UpgradeHostsRequest>,
    ) -> Result<Response<apiary_proto::UpgradeHostsResponse>, Status> {
        let admin = require_role(&req, Role::Admin)?;
        let req = req.into_inner();
        let deadline = match req.deadline_ms {
            0 => crate::upgrade::DEFAULT_DEADLINE,
            ms => Duration::from_millis(ms),
        };
        info!(admin = %admin.node, nodes = ?req.nodes, "agent rollout requested");
        let rollout = crate::upgrade::rolling_upgrade(&self.0, &req.nodes, deadline).await?;
        Ok(Response::new(apiary_proto::UpgradeHostsResponse {
            steps: rollout.steps,
            version: rollout.version,
        }))
    }

    async fn scale_database(
        &self,
        req: Request<apiary_proto::ScaleDatabaseRequest>,
    ) -> Result<Response<apiary_proto::ScaleDatabaseResponse>, Status> {
        let admin = require_role(&req, Role::Admin)?;
        let n = req.into_inner().servers as usize;
        info!(admin = %admin.node, servers = n, "database scale requested");
        let summary = self.0.scale_database(n).await?;
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
        let rx = self.0.events.subscribe();
        let stream =
            tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|item| match item {
                Ok(event) => Some(Ok(event.to_wire())),
                // A watcher too slow for the event rate misses some; it is told.
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    Some(Ok(apiary_proto::Event {
                        at_unix_ms: crate::time::now_unix_ms(),
                        kind: EventKind::EventsLost.as_str().into(),
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
        status::status(&self.0).map(Response::new).map_err(internal)
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

    async fn store_snapshot(
        &self,
        req: Request<apiary_proto::StoreSnapshotRequest>,
    ) -> Result<Response<apiary_proto::StoreSnapshotResponse>, Status> {
        let admin = require_role(&req, Role::Admin)?;
        info!(admin = %admin.node, "store snapshot requested (coordinator backup)");
        // redb reads are blocking file I/O: off the runtime's workers.
        let store = self.0.store.clone();
        let snapshot = tokio::task::spawn_blocking(move || store.snapshot())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(internal)?;
        let tables = snapshot
            .tables
            .into_iter()
            .map(|t| apiary_proto::StoreTable {
                name: t.name,
                entries: t
                    .entries
                    .into_iter()
                    .map(|e| apiary_proto::StoreEntry {
                        key: e.key,
                        value: e.value,
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(apiary_proto::StoreSnapshotResponse {
            tables,
        }))
    }

    async fn database_credentials(
        &self,
        req: Request<apiary_proto::DatabaseCredentialsRequest>,
    ) -> Result<Response<apiary_proto::DatabaseCredentialsResponse>, Status> {
        let admin = require_role(&req, Role::Admin)?;
        // Who read the database's credentials, for the audit trail.
        info!(admin = %admin.node, "database credentials requested");
        let creds = self.0.database_credentials()?;
        let mut answer = apiary_proto::DatabaseCredentialsResponse {
            kind: creds.kind.as_str().to_string(),
            client_port: creds.client_port.into(),
            ..Default::default()
        };
        match creds.secret {
            ClientSecret::Password(admin) => {
                answer.user = admin.user;
                answer.password = admin.password;
            }
            ClientSecret::Certificate(cert) => {
                answer.ca_pem = cert.ca_pem;
                answer.cert_pem = cert.cert_pem;
                answer.key_pem = cert.key_pem;
                answer.not_after_unix = cert.not_after_unix;
            }
        }
        Ok(Response::new(answer))
    }

    async fn join_token(
        &self,
        req: Request<JoinTokenRequest>,
    ) -> Result<Response<JoinTokenResponse>, Status> {
        require_role(&req, Role::Admin)?;
        let coord = &self.0;
        let record = if req.into_inner().rotate {
            coord.pki.rotate_token(&coord.store, &coord.events).await?
        } else {
            coord.pki.current_token()
        };
        Ok(Response::new(JoinTokenResponse {
            token: record.token,
            expires_unix: record.expires_unix.unwrap_or(0),
        }))
    }

    async fn coordinator_endpoints(
        &self,
        req: Request<apiary_proto::CoordinatorEndpointsRequest>,
    ) -> Result<Response<apiary_proto::CoordinatorEndpointsResponse>, Status> {
        let admin = require_role(&req, Role::Admin)?;
        let coord = &self.0;
        let apiary_proto::CoordinatorEndpointsRequest { add, remove } = req.into_inner();
        let change = match (add.is_empty(), remove.is_empty()) {
            (true, true) => None,
            (false, true) => {
                info!(admin = %admin.node, endpoint = %add, "coordinator endpoint added");
                Some(
                    coord
                        .endpoints
                        .add(&coord.store, &coord.sessions, &add)
                        .await?,
                )
            }
            (true, false) => {
                info!(admin = %admin.node, endpoint = %remove, "coordinator endpoint removed");
                Some(
                    coord
                        .endpoints
                        .remove(&coord.store, &coord.sessions, &remove)
                        .await?,
                )
            }
            (false, false) => {
                return Err(Status::invalid_argument(
                    "add or remove one endpoint at a time",
                ));
            }
        };
        let listing = match &change {
            Some(c) => c.listing.clone(),
            None => coord.endpoints.listing(&coord.store).map_err(internal)?,
        };
        let strings = |l: &[apiary_api::endpoints::CoordinatorEndpoint]| {
            l.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        let (acknowledged, not_acknowledged, changed) = match change {
            Some(Change {
                acknowledged,
                not_acknowledged,
                changed,
                ..
            }) => (acknowledged, not_acknowledged, changed),
            None => (Vec::new(), Vec::new(), false),
        };
        Ok(Response::new(apiary_proto::CoordinatorEndpointsResponse {
            advertise: listing
                .advertise
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            stored: strings(&listing.stored),
            told: strings(&listing.told),
            acknowledged,
            not_acknowledged: not_acknowledged
                .into_iter()
                .map(|(node, error)| apiary_proto::EndpointsNotAcknowledged { node, error })
                .collect(),
            changed,
        }))
    }
}
