//! Tunnels: an operator's TCP connection to a port on a cluster host, carried
//! ctl ⇄ coordinator ⇄ agent ⇄ target over the mTLS connections that already
//! exist, instead of SSH keys and open port 22 (the recipe's `ssh -L`).
//!
//! One gRPC stream per TCP connection on each leg, so connections are
//! independent and HTTP/2 flow control applies per connection: the relay
//! queues at most `[tunnel] max_bytes_in_flight_per_connection` bytes per
//! connection and direction, then stops reading from the sending leg, so a
//! slow reader never makes the coordinator buffer without bound. Half-close
//! and errors travel as frames. An agent that reconnects fails only the
//! connections that were in flight.
//!
//! The relay decodes only a stream's first frames (the target, unless the
//! request's headers carry it; the agent's attach id and verdict); after
//! that it forwards HTTP/2 chunks as they arrive (`apiary_proto::tunnel_wire`),
//! which is why `Open` and `Attach` are served by hand beside tonic's
//! generated services.
//!
//! Targets are a node's port, or a name the coordinator resolves to the host
//! that runs it: `database` (the database's leader, as the last health round
//! saw it), a database server (`etcd-2`), or any Swarm service (asked of each
//! connected agent in turn). `database:admin` is the database's admin port.
//!
//! Only admin certificates open tunnels, at most `[tunnel]
//! max_connections_per_admin` connections each; the agent decides which
//! targets are allowed (loopback and the overlay), so a compromised
//! coordinator cannot turn agents into a general proxy.
//!
//! `ctl docker` rides the same path to a Docker engine's socket: a node's
//! (`--node`), or a Swarm manager's, the leader first and each other
//! manager in turn when one does not answer ([`engine_candidates`]), so
//! `docker node ls` works with a manager lost. Each run of `ctl docker` (or
//! docker proxy) names a session; its first connection to a node is a
//! `docker_session` event saying who and where.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apiary_certs::{PeerIdentity, Role};
use apiary_proto::tunnel::tunnel_relay_server::{TunnelRelay, TunnelRelayServer};
use apiary_proto::tunnel::{Frame, ListenRequest, OpenRequest, Target, frame};
use apiary_proto::tunnel_wire::{self, WireReader};
use futures::Stream;
use prost::bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use super::require_role;
use crate::core::Coordinator;
use crate::events::EventKind;
use crate::state::NodeSwarm;

/// Chunks queued per direction and connection, whatever their size (the
/// byte budget bounds what they hold).
const QUEUE_CHUNKS: usize = 64;

/// What goes to one leg: relayed bytes, each holding its share of the
/// connection's byte budget until that leg takes it, or the end of the
/// stream with an error.
enum Out {
    Chunk(Bytes, Option<OwnedSemaphorePermit>),
    Fail(Status),
}

/// The agent's half of a connection, handed from `Attach` to the waiting `Open`.
struct AgentLeg {
    inbound: WireReader,
    outbound: mpsc::Sender<Out>,
}

#[derive(Default)]
pub struct TunnelHub {
    /// Agents listening for open requests, by node.
    listeners: Mutex<HashMap<String, mpsc::Sender<Result<OpenRequest, Status>>>>,
    pending: Mutex<HashMap<u64, (String, oneshot::Sender<AgentLeg>)>>,
    per_admin: Mutex<HashMap<String, usize>>,
    next: AtomicU64,
    /// Data bytes carried, both directions (for metrics and the benchmark).
    pub bytes: AtomicU64,
    /// Connections open now, tunnels and engines alike (a metric; tests
    /// count it before and after a client dies).
    pub open: AtomicU64,
    /// Docker sessions already announced, by (session, node), and when:
    /// one event per session and engine, not one per connection.
    docker_sessions: Mutex<HashMap<(String, String), Instant>>,
}

/// Docker sessions remembered at most, and for how long once that many are
/// held: enough that a session is announced once, bounded whatever clients
/// send.
const DOCKER_SESSIONS_KEPT: usize = 1024;
const DOCKER_SESSION_MEMORY: Duration = Duration::from_secs(3600);

impl TunnelHub {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Releases an admin's connection slot when the connection ends.
struct Slot {
    hub: Arc<TunnelHub>,
    admin: String,
}

impl Slot {
    fn new(hub: Arc<TunnelHub>, admin: String) -> Self {
        hub.open.fetch_add(1, Ordering::Relaxed);
        Slot { hub, admin }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.hub.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(n) = TunnelHub::lock(&self.hub.per_admin).get_mut(&self.admin) {
            *n = n.saturating_sub(1);
        }
    }
}

impl TunnelHub {
    /// True the first time `session` reaches `node` (an unnamed session:
    /// every time).
    fn first_docker_connection(&self, session: &str, node: &str, now: Instant) -> bool {
        if session.is_empty() {
            return true;
        }
        let mut seen = Self::lock(&self.docker_sessions);
        if seen.len() >= DOCKER_SESSIONS_KEPT {
            seen.retain(|_, at| now.duration_since(*at) < DOCKER_SESSION_MEMORY);
            if seen.len() >= DOCKER_SESSIONS_KEPT {
                seen.clear();
            }
        }
        seen.insert((session.to_string(), node.to_string()), now)
            .is_none()
    }
}

/// The tunnel services: the coordinator (targets, limits) and the hub of
/// connections in flight.
#[derive(Clone)]
pub struct TunnelSvc {
    pub coord: Arc<Coordinator>,
    pub hub: Arc<TunnelHub>,
}

/// A queue toward one leg, bounded to `budget` bytes.
fn queue(budget: usize) -> (Sender, mpsc::Receiver<Out>) {
    let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
    (Sender::new(tx, budget), rx)
}

struct Sender {
    tx: mpsc::Sender<Out>,
    budget: Arc<Semaphore>,
    max: usize,
}

impl Sender {
    fn new(tx: mpsc::Sender<Out>, budget: usize) -> Self {
        Sender {
            tx,
            budget: Arc::new(Semaphore::new(budget)),
            max: budget,
        }
    }

    /// Waits for room in the byte budget, then queues `chunk`. False when
    /// the other leg is gone.
    async fn send(&self, chunk: Bytes) -> bool {
        // A chunk larger than the whole budget takes all of it.
        let n = chunk.len().min(self.max) as u32;
        let permit = if n == 0 {
            None
        } else {
            match self.budget.clone().acquire_many_owned(n).await {
                Ok(p) => Some(p),
                Err(_) => return false,
            }
        };
        self.tx.send(Out::Chunk(chunk, permit)).await.is_ok()
    }

    /// Queues an error frame outside the budget: a leg whose reader has
    /// stalled still learns that the connection failed once it reads on.
    async fn error(&self, why: String) {
        let _ = self
            .tx
            .send(Out::Chunk(tunnel_wire::error(why), None))
            .await;
    }

    /// Ends the leg's stream with `status` (outside the budget, likewise).
    async fn fail(&self, status: Status) {
        let _ = self.tx.send(Out::Fail(status)).await;
    }
}

/// The response body toward one leg: the queued chunks, then gRPC's
/// trailers (OK when the queue's senders are gone, else the failure).
struct Outgoing {
    rx: mpsc::Receiver<Out>,
    done: bool,
}

impl http_body::Body for Outgoing {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let status = match std::task::ready!(self.rx.poll_recv(cx)) {
            // The permit goes as the chunk leaves the queue: the budget
            // bounds what waits here, HTTP/2 flow control what is in flight.
            Some(Out::Chunk(chunk, _permit)) => {
                return Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
            }
            Some(Out::Fail(status)) => status,
            None => Status::ok(""),
        };
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(e) = status.add_header(&mut trailers) {
            let _ = e.add_header(&mut trailers);
        }
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// A streaming gRPC response whose body is what `rx` receives.
fn streaming_response(rx: mpsc::Receiver<Out>) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(Outgoing { rx, done: false }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// Moves one leg's bytes to the other, as they arrive, until either side
/// ends; counts the data carried. A failure between two frames goes on as an
/// error frame; inside one (the bytes sent so far end mid-frame), as the
/// stream's error status. Either way the far end resets its connection.
async fn pump(mut from: WireReader, to: Sender, hub: Arc<TunnelHub>) {
    let mut counted = 0;
    loop {
        let got = from.chunk().await;
        let carried = from.bounds().data_bytes;
        hub.bytes.fetch_add(carried - counted, Ordering::Relaxed);
        counted = carried;
        match got {
            Ok(Some(chunk)) => {
                if !to.send(chunk).await {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let why = format!("the other side failed: {}", e.message());
                if from.bounds().at_boundary() {
                    to.error(why).await;
                } else {
                    to.fail(Status::unavailable(why)).await;
                }
                return;
            }
        }
    }
}

/// Where a target resolved to: a node, and on it an address or a service's
/// container.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Address {
        node: String,
        host: String,
    },
    Service {
        node: String,
        service: String,
    },
    /// A Swarm service whose host is not known here: the agents are asked.
    AnyHost {
        service: String,
    },
    /// A Docker engine's socket: the first of `nodes` whose agent reaches
    /// it (one node with `--node`; else the managers, leader first).
    Engine {
        nodes: Vec<String>,
        any_manager: bool,
    },
}

/// The managers whose engines `ctl docker` tries, in order: the leader,
/// then managers Swarm reports ready, then the rest (the view may be a
/// round old, so none is left out), each group by name.
pub fn engine_candidates(swarm: &HashMap<String, NodeSwarm>) -> Vec<String> {
    let mut managers: Vec<(&String, &NodeSwarm)> =
        swarm.iter().filter(|(_, n)| n.role == "manager").collect();
    managers.sort_by_key(|(name, n)| (!n.leader, n.status != "ready", name.as_str()));
    managers.into_iter().map(|(name, _)| name.clone()).collect()
}

/// Resolves an engine target: `--node`'s, or the swarm's managers.
fn resolve_engine(coord: &Coordinator, target: &Target) -> Result<Place, Status> {
    if !target.node.is_empty() {
        let known = coord
            .store
            .node(&target.node)
            .map_err(|e| Status::internal(e.to_string()))?
            .is_some();
        if !known {
            return Err(Status::not_found(format!(
                "no node named {:?}; `ctl status` lists the nodes",
                target.node
            )));
        }
        return Ok(Place::Engine {
            nodes: vec![target.node.clone()],
            any_manager: false,
        });
    }
    let mut nodes = engine_candidates(&coord.view.checks().swarm);
    if nodes.is_empty()
        && let Some(swarm) = coord.config().swarm.as_ref()
    {
        // The last round could not read the swarm (say, the leader's
        // engine was just lost): the managers the plan places, so that the
        // operator is not refused for the coordinator's want of a view.
        use crate::context::ClusterContext;
        nodes = crate::reconcile::plan::members(&coord.nodes(), swarm)
            .into_iter()
            .filter(|h| h.manager)
            .map(|h| h.name)
            .collect();
    }
    if coord.config().swarm.is_none() {
        return Err(Status::failed_precondition(
            "this cluster runs no swarm (cluster.toml has no [swarm] section); `ctl docker --node NODE` reaches one node's engine",
        ));
    }
    if nodes.is_empty() {
        return Err(Status::failed_precondition(
            "the swarm has no manager yet (`ctl status` shows the bring-up's progress); `ctl docker --node NODE` reaches one node's engine",
        ));
    }
    Ok(Place::Engine {
        nodes,
        any_manager: true,
    })
}

/// Resolves `target` against the nodes and the database as last seen.
fn resolve(coord: &Coordinator, target: &Target) -> Result<(Place, u16), Status> {
    if target.engine {
        return Ok((resolve_engine(coord, target)?, 0));
    }
    let name = target.node.as_str();
    let is_node = coord
        .store
        .node(name)
        .map_err(|e| Status::internal(e.to_string()))?
        .is_some();
    let port = u16::try_from(target.port)
        .ok()
        .filter(|p| *p > 0 || target.admin)
        .ok_or_else(|| Status::invalid_argument(format!("{} is not a TCP port", target.port)))?;
    if is_node && !target.admin {
        let host = if target.host.is_empty() {
            "127.0.0.1".to_string()
        } else {
            target.host.clone()
        };
        return Ok((
            Place::Address {
                node: name.to_string(),
                host,
            },
            port,
        ));
    }
    if !target.host.is_empty() {
        return Err(Status::not_found(format!(
            "no node named {name:?}; `ctl status` lists the nodes"
        )));
    }
    let db_cfg = coord
        .config()
        .swarm
        .as_ref()
        .and_then(|s| s.database.as_ref());
    let db_state = || coord.view.database();
    // `database` and the database's server names.
    let server = if name == "database" {
        let Some(cfg) = db_cfg else {
            return Err(no_database());
        };
        let state = db_state().ok_or_else(|| {
            Status::unavailable(format!(
                "the {} database has not been read yet (it starts once the overlay is checked); `ctl status` shows its progress",
                cfg.kind.as_str()
            ))
        })?;
        let leader = state
            .servers
            .iter()
            .find(|s| !state.leader.is_empty() && s.name == state.leader)
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "the {} database has no leader right now ({}); `ctl status` shows why",
                    cfg.kind.as_str(),
                    state.summary()
                ))
            })?;
        Some((leader.name.clone(), leader.host.clone()))
    } else {
        db_state().and_then(|d| {
            d.servers
                .iter()
                .find(|s| s.name == name)
                .map(|s| (s.name.clone(), s.host.clone()))
        })
    };
    if target.admin {
        let Some(cfg) = db_cfg else {
            return Err(no_database());
        };
        let Some((service, node)) = server else {
            return Err(Status::not_found(format!(
                "{name}:admin: `admin` is the database's admin port; write database:admin (the leader) or SERVER:admin with a server `ctl status` lists"
            )));
        };
        let port = crate::database::spec::flavor(cfg.kind).admin_port(cfg);
        return Ok((Place::Service { node, service }, port));
    }
    Ok(match server {
        Some((service, node)) => (Place::Service { node, service }, port),
        None => (
            Place::AnyHost {
                service: name.to_string(),
            },
            port,
        ),
    })
}

fn no_database() -> Status {
    Status::failed_precondition(
        "no database is deployed on this cluster (cluster.toml has no [database] section); `ctl tunnel NODE:PORT` reaches a port on a node",
    )
}

impl TunnelSvc {
    /// Asks `node`'s agent to connect to the target; the agent's leg once
    /// it has attached, its verdict on the target still to come.
    async fn ask_agent(&self, node: &str, ask: OpenRequest) -> Result<AgentLeg, Status> {
        let hub = &self.hub;
        let listener = TunnelHub::lock(&hub.listeners)
            .get(node)
            .cloned()
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "{node} has no agent session that carries tunnels (is it down?)"
                ))
            })?;
        let conn_id = ask.conn_id;
        let (tx, rx) = oneshot::channel();
        TunnelHub::lock(&hub.pending).insert(conn_id, (node.to_string(), tx));
        let agent = async {
            listener
                .send(Ok(ask))
                .await
                .map_err(|_| Status::unavailable(format!("{node}'s session ended")))?;
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "{node} did not answer the tunnel request within 10 s"
                    ))
                })?
                .map_err(|_| Status::unavailable(format!("{node}'s session ended")))
        }
        .await;
        TunnelHub::lock(&hub.pending).remove(&conn_id);
        agent
    }

    /// The agent's verdict on the target, the first frame of its leg:
    /// opened, or why not.
    async fn verdict(node: &str, leg: &mut WireReader) -> Result<(), Status> {
        match leg.message().await? {
            Some(Frame {
                kind: Some(frame::Kind::Opened(true)),
            }) => Ok(()),
            Some(Frame {
                kind: Some(frame::Kind::Denied(e)),
            }) => Err(Status::permission_denied(format!("{node}: {e}"))),
            Some(Frame {
                kind: Some(frame::Kind::Error(e)),
            }) => Err(Status::unavailable(format!("{node}: {e}"))),
            _ => Err(Status::unavailable(format!(
                "{node} closed the tunnel before opening it"
            ))),
        }
    }

    /// Opens the agent's leg toward `place`, and says whether the agent's
    /// verdict has been read. For a service of unknown host, each connected
    /// agent is asked in turn (by name) until one runs it, so there it has.
    async fn open_agent(
        &self,
        place: &Place,
        port: u16,
    ) -> Result<(String, AgentLeg, bool), Status> {
        let hub = &self.hub;
        let ask = |host: &str, service: &str| OpenRequest {
            conn_id: hub.next.fetch_add(1, Ordering::Relaxed) + 1,
            host: host.to_string(),
            port: port.into(),
            service: service.to_string(),
            engine: false,
        };
        match place {
            Place::Address { node, host } => Ok((
                node.clone(),
                self.ask_agent(node, ask(host, "")).await?,
                false,
            )),
            Place::Service { node, service } => Ok((
                node.clone(),
                self.ask_agent(node, ask("", service)).await?,
                false,
            )),
            Place::AnyHost { service } => {
                let mut nodes: Vec<String> =
                    TunnelHub::lock(&hub.listeners).keys().cloned().collect();
                nodes.sort();
                for node in nodes {
                    let asked = match self.ask_agent(&node, ask("", service)).await {
                        Ok(mut leg) => Self::verdict(&node, &mut leg.inbound).await.map(|_| leg),
                        Err(e) => Err(e),
                    };
                    match asked {
                        Ok(leg) => return Ok((node, leg, true)),
                        Err(e) => debug!(%node, %service, error = %e.message(), "not here"),
                    }
                }
                Err(Status::not_found(format!(
                    "no node, database server or running Swarm service named {service:?}; `ctl status` lists nodes and database servers"
                )))
            }
            Place::Engine { nodes, any_manager } => {
                let mut failures = Vec::new();
                for node in nodes {
                    let engine = OpenRequest {
                        engine: true,
                        ..ask("", "")
                    };
                    let asked = match self.ask_agent(node, engine).await {
                        Ok(mut leg) => Self::verdict(node, &mut leg.inbound).await.map(|_| leg),
                        Err(e) => Err(e),
                    };
                    match asked {
                        Ok(leg) => return Ok((node.clone(), leg, true)),
                        // `--node`: that node's answer, as it gave it.
                        Err(e) if !any_manager => return Err(e),
                        Err(e) => failures.push(e.message().to_string()),
                    }
                }
                Err(Status::unavailable(format!(
                    "no Swarm manager's Docker engine answered; tried {}",
                    failures.join("; ")
                )))
            }
        }
    }
}

/// The caller of a hand-served method, checked to hold `role`; the
/// request's headers; its body, to read.
fn caller(
    req: http::Request<Body>,
    role: Role,
) -> Result<(PeerIdentity, http::HeaderMap, WireReader), Status> {
    let (parts, body) = req.into_parts();
    let request = Request::from_http(http::Request::from_parts(parts, ()));
    let peer = require_role(&request, role)?;
    let (metadata, _, ()) = request.into_parts();
    Ok((peer, metadata.into_headers(), WireReader::new(body)))
}

impl TunnelSvc {
    /// `Tunnel.Open`: one operator connection. Its headers or its first
    /// frame name the target; once the agent has reached it, bytes flow
    /// both ways.
    async fn open(&self, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
        let (admin, headers, mut inbound) = caller(req, Role::Admin)?;
        let target = match tunnel_wire::target_from_headers(&headers)? {
            Some(t) => t,
            None => match inbound.message().await? {
                Some(Frame {
                    kind: Some(frame::Kind::Target(t)),
                }) => t,
                _ => {
                    return Err(Status::invalid_argument(
                        "a tunnel starts with its target (header apiary-target-bin or the first frame)",
                    ));
                }
            },
        };
        let coord = self.coord.clone();
        let limits = coord.config().tunnel;
        let (place, port) = resolve(&coord, &target)?;
        {
            let mut counts = TunnelHub::lock(&self.hub.per_admin);
            let n = counts.entry(admin.node.clone()).or_default();
            if *n >= limits.max_connections_per_admin {
                return Err(Status::resource_exhausted(format!(
                    "{} already has {n} tunnel connections open, the most allowed ([tunnel] max_connections_per_admin in cluster.toml); close some or raise the limit",
                    admin.node
                )));
            }
            *n += 1;
        }
        let slot = Slot::new(self.hub.clone(), admin.node.clone());
        // On failure the slot is released as `slot` drops.
        let (node, agent, decided) = self.open_agent(&place, port).await?;
        let AgentLeg {
            inbound: mut from_agent,
            outbound,
        } = agent;
        // The connection counts against the admin's limit until both
        // directions end: a client that half-closes at once must not free
        // its slot while the download goes on.
        let slot = Arc::new(slot);
        // The client's first bytes go on to the agent while it dials, and
        // wait there rather than here for the target to answer: the agent
        // writes them as soon as it is connected. A refusing agent drops
        // them with its leg.
        let to_agent = Sender::new(outbound, limits.max_bytes_in_flight_per_connection);
        let from_ctl = {
            let (hub, slot, node) = (self.hub.clone(), slot.clone(), node.clone());
            tokio::spawn(async move {
                pump(inbound, to_agent, hub).await;
                drop(slot);
                debug!(%node, "tunnel connection from ctl ended");
            })
        };
        if !decided && let Err(e) = Self::verdict(&node, &mut from_agent).await {
            from_ctl.abort();
            return Err(e);
        }
        if target.engine
            && self
                .hub
                .first_docker_connection(&target.session, &node, Instant::now())
        {
            let how = if target.node.is_empty() {
                "a manager's engine, chosen by the coordinator"
            } else {
                "the engine asked for"
            };
            coord.events.emit(
                EventKind::DockerSession,
                &node,
                format!("{} opened a docker session on {node} ({how})", admin.node),
            );
        }
        let (to_ctl, from_agent_rx) = queue(limits.max_bytes_in_flight_per_connection);
        to_ctl
            .send(tunnel_wire::encode(&Frame {
                kind: Some(frame::Kind::Opened(true)),
            }))
            .await;
        let hub = self.hub.clone();
        tokio::spawn(async move {
            // Logged here, beside the answer rather than before it: the
            // line costs a write to the log that the connection need not
            // wait for.
            info!(admin = %admin.node, %node, place = ?place, port, "tunnel connection opened");
            pump(from_agent, to_ctl, hub).await;
            drop(slot);
        });
        Ok(streaming_response(from_agent_rx))
    }

    /// `TunnelRelay.Attach`: the agent's leg of one connection, handed to
    /// the `open` waiting for it.
    async fn attach(&self, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
        let (agent, _, mut inbound) = caller(req, Role::Agent)?;
        let conn_id = match inbound.message().await? {
            Some(Frame {
                kind: Some(frame::Kind::Attach(id)),
            }) => id,
            _ => {
                return Err(Status::invalid_argument(
                    "an attach stream starts with its connection id",
                ));
            }
        };
        let waiting = TunnelHub::lock(&self.hub.pending).remove(&conn_id);
        let Some((node, handoff)) = waiting else {
            return Err(Status::not_found(format!(
                "no tunnel connection {conn_id} is waiting"
            )));
        };
        if node != agent.node {
            return Err(Status::permission_denied(format!(
                "connection {conn_id} is for {node}, not {}",
                agent.node
            )));
        }
        // The byte budget of this direction is the opener's (it knows the
        // limits); the queue itself only carries chunks.
        let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
        handoff
            .send(AgentLeg {
                inbound,
                outbound: tx,
            })
            .map_err(|_| Status::cancelled("the operator's side went away"))?;
        Ok(streaming_response(rx))
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

/// The `Tunnel` service, served by hand rather than through tonic's codec so
/// that the relay forwards bytes without decoding them (see
/// [`apiary_proto::tunnel_wire`]).
#[derive(Clone)]
pub struct TunnelRoutes(pub TunnelSvc);

impl NamedService for TunnelRoutes {
    const NAME: &'static str = apiary_proto::tunnel::tunnel_server::SERVICE_NAME;
}

impl tower::Service<http::Request<Body>> for TunnelRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> BoxFuture {
        let svc = self.0.clone();
        Box::pin(async move {
            let answer = if req.uri().path() == "/apiary.tunnel.v1.Tunnel/Open" {
                svc.open(req).await
            } else {
                Err(Status::unimplemented(format!(
                    "no method {}",
                    req.uri().path()
                )))
            };
            Ok(answer.unwrap_or_else(Status::into_http))
        })
    }
}

/// The `TunnelRelay` service: `Attach` by hand like `Open`, `Listen` through
/// tonic.
#[derive(Clone)]
pub struct TunnelRelayRoutes {
    svc: TunnelSvc,
    generated: TunnelRelayServer<TunnelSvc>,
}

impl TunnelRelayRoutes {
    pub fn new(svc: TunnelSvc) -> Self {
        TunnelRelayRoutes {
            generated: TunnelRelayServer::new(svc.clone()),
            svc,
        }
    }
}

impl NamedService for TunnelRelayRoutes {
    const NAME: &'static str = apiary_proto::tunnel::tunnel_relay_server::SERVICE_NAME;
}

impl tower::Service<http::Request<Body>> for TunnelRelayRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> BoxFuture {
        if req.uri().path() == "/apiary.tunnel.v1.TunnelRelay/Attach" {
            let svc = self.svc.clone();
            Box::pin(async move { Ok(svc.attach(req).await.unwrap_or_else(Status::into_http)) })
        } else {
            Box::pin(self.generated.call(req))
        }
    }
}

#[tonic::async_trait]
impl TunnelRelay for TunnelSvc {
    type ListenStream = Pin<Box<dyn Stream<Item = Result<OpenRequest, Status>> + Send>>;
    type AttachStream = Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send>>;

    async fn listen(
        &self,
        req: Request<ListenRequest>,
    ) -> Result<Response<Self::ListenStream>, Status> {
        let agent = require_role(&req, Role::Agent)?;
        let (tx, rx) = mpsc::channel(64);
        // A newer listener replaces an older one: connections that were being
        // opened through the old session fail, new ones go to the new session.
        TunnelHub::lock(&self.hub.listeners).insert(agent.node.clone(), tx);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Never called: [`TunnelRelayRoutes`] serves `Attach` before tonic
    /// would route it here.
    async fn attach(
        &self,
        _: Request<Streaming<Frame>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        Err(Status::internal("Attach is served by TunnelRelayRoutes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(role: &str, status: &str, leader: bool) -> NodeSwarm {
        NodeSwarm {
            role: role.into(),
            status: status.into(),
            leader,
            ..Default::default()
        }
    }

    #[test]
    fn engines_are_tried_leader_first_then_ready_managers_then_the_rest() {
        let swarm: HashMap<String, NodeSwarm> = [
            ("bee-1", node("manager", "down", false)),
            ("bee-2", node("manager", "ready", false)),
            ("bee-3", node("manager", "ready", true)),
            ("bee-4", node("worker", "ready", false)),
            ("bee-0", node("manager", "ready", false)),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect();
        assert_eq!(
            engine_candidates(&swarm),
            ["bee-3", "bee-0", "bee-2", "bee-1"]
        );
        assert!(engine_candidates(&HashMap::new()).is_empty());
    }

    #[test]
    fn a_docker_session_is_announced_once_per_node_and_memory_is_bounded() {
        let hub = TunnelHub::default();
        let now = Instant::now();
        assert!(hub.first_docker_connection("s1", "bee-1", now));
        assert!(!hub.first_docker_connection("s1", "bee-1", now));
        assert!(hub.first_docker_connection("s1", "bee-2", now));
        assert!(hub.first_docker_connection("", "bee-1", now));
        assert!(hub.first_docker_connection("", "bee-1", now));
        for i in 0..5 * DOCKER_SESSIONS_KEPT {
            hub.first_docker_connection(&format!("s{i}"), "bee-1", now);
        }
        assert!(TunnelHub::lock(&hub.docker_sessions).len() <= DOCKER_SESSIONS_KEPT);
    }
}
