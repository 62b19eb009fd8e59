//! Tunnels: an operator's TCP connection to a port on a cluster host, carried
//! ctl ⇄ coordinator ⇄ agent ⇄ target over the mTLS connections that already
//! exist, instead of SSH keys and open port 22 (the recipe's `ssh -L`).
//!
//! One gRPC stream per TCP connection on each leg, so connections are
//! independent and HTTP/2 flow control applies per connection: the relay
//! forwards a frame only when the other leg accepted the previous ones
//! (bounded channels), so a slow reader never makes the coordinator buffer
//! without bound. Half-close and errors travel as frames. An agent that
//! reconnects fails only the connections that were in flight.
//!
//! Only admin certificates open tunnels; the agent decides which targets are
//! allowed (loopback and the overlay), so a compromised coordinator cannot
//! turn agents into a general proxy.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use apiary_certs::Role;
use apiary_proto::tunnel::tunnel_relay_server::TunnelRelay;
use apiary_proto::tunnel::tunnel_server::Tunnel;
use apiary_proto::tunnel::{Frame, ListenRequest, OpenRequest, frame};
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use crate::server::{Coordinator, require_role};

/// Frames in flight per direction and connection (each ≤ 64 KiB): the
/// coordinator's buffer per tunnel connection is bounded by this.
pub const FRAMES_IN_FLIGHT: usize = 8;
/// Tunnel connections one admin may hold open at once.
pub const MAX_PER_ADMIN: usize = 256;

type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send>>;

/// The agent's half of a connection, handed from `Attach` to the waiting `Open`.
struct AgentLeg {
    inbound: Streaming<Frame>,
    outbound: mpsc::Sender<Result<Frame, Status>>,
}

#[derive(Default)]
pub struct TunnelHub {
    /// Agents listening for open requests, by node.
    listeners: Mutex<HashMap<String, mpsc::Sender<Result<OpenRequest, Status>>>>,
    pending: Mutex<HashMap<u64, (String, oneshot::Sender<AgentLeg>)>>,
    per_admin: Mutex<HashMap<String, usize>>,
    next: AtomicU64,
    /// Bytes carried, both directions (for metrics and the benchmark).
    pub bytes: AtomicU64,
}

impl TunnelHub {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Releases an admin's connection slot when the connection ends.
struct Slot {
    coord: Arc<Coordinator>,
    admin: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(n) = TunnelHub::lock(&self.coord.tunnels.per_admin).get_mut(&self.admin) {
            *n = n.saturating_sub(1);
        }
    }
}

#[derive(Clone)]
pub struct TunnelSvc(pub Arc<Coordinator>);

fn frame(kind: frame::Kind) -> Frame {
    Frame { kind: Some(kind) }
}

/// Copies frames from one leg to the other until either side ends; counts bytes.
async fn pump(
    mut from: Streaming<Frame>,
    to: mpsc::Sender<Result<Frame, Status>>,
    hub: Arc<Coordinator>,
) {
    loop {
        match from.message().await {
            Ok(Some(f)) => {
                if let Some(frame::Kind::Data(d)) = &f.kind {
                    hub.tunnels
                        .bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                if to.send(Ok(f)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = to
                    .send(Ok(frame(frame::Kind::Error(format!(
                        "the other side failed: {}",
                        e.message()
                    )))))
                    .await;
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl Tunnel for TunnelSvc {
    type OpenStream = FrameStream;

    async fn open(
        &self,
        req: Request<Streaming<Frame>>,
    ) -> Result<Response<Self::OpenStream>, Status> {
        let admin = require_role(&req, Role::Admin)?;
        let mut inbound = req.into_inner();
        let target = match inbound.message().await? {
            Some(Frame {
                kind: Some(frame::Kind::Target(t)),
            }) => t,
            _ => return Err(Status::invalid_argument("a tunnel starts with its target")),
        };
        let coord = self.0.clone();
        let hub = &self.0.tunnels;
        if coord
            .store()
            .node(&target.node)
            .map_err(|e| Status::internal(e.to_string()))?
            .is_none()
        {
            return Err(Status::not_found(format!(
                "no node named {:?}; `ctl status` lists the nodes",
                target.node
            )));
        }
        let listener = TunnelHub::lock(&hub.listeners)
            .get(&target.node)
            .cloned()
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "{} has no agent session that carries tunnels (is it down?)",
                    target.node
                ))
            })?;
        {
            let mut counts = TunnelHub::lock(&hub.per_admin);
            let n = counts.entry(admin.node.clone()).or_default();
            if *n >= MAX_PER_ADMIN {
                return Err(Status::resource_exhausted(format!(
                    "{} tunnel connections already open for {}",
                    n, admin.node
                )));
            }
            *n += 1;
        }
        let conn_id = hub.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        TunnelHub::lock(&hub.pending).insert(conn_id, (target.node.clone(), tx));
        let host = if target.host.is_empty() {
            "127.0.0.1".to_string()
        } else {
            target.host.clone()
        };
        let ask = OpenRequest {
            conn_id,
            host: host.clone(),
            port: target.port,
        };
        let agent = async {
            listener
                .send(Ok(ask))
                .await
                .map_err(|_| Status::unavailable(format!("{}'s session ended", target.node)))?;
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "{} did not answer the tunnel request within 10 s",
                        target.node
                    ))
                })?
                .map_err(|_| Status::unavailable(format!("{}'s session ended", target.node)))
        }
        .await;
        TunnelHub::lock(&hub.pending).remove(&conn_id);
        let slot = Slot {
            coord: coord.clone(),
            admin: admin.node.clone(),
        };
        let mut agent = match agent {
            Ok(a) => a,
            Err(e) => {
                drop(slot);
                return Err(e);
            }
        };
        // The agent's verdict on the target comes first: opened, or why not.
        match agent.inbound.message().await? {
            Some(Frame {
                kind: Some(frame::Kind::Opened(true)),
            }) => {}
            Some(Frame {
                kind: Some(frame::Kind::Error(e)),
            }) => {
                drop(slot);
                return Err(Status::permission_denied(format!("{}: {e}", target.node)));
            }
            _ => {
                drop(slot);
                return Err(Status::unavailable(format!(
                    "{} closed the tunnel before opening it",
                    target.node
                )));
            }
        }
        info!(admin = %admin.node, node = %target.node, %host, port = target.port, conn_id, "tunnel connection opened");
        let (to_ctl, from_agent_rx) = mpsc::channel(FRAMES_IN_FLIGHT);
        let _ = to_ctl.send(Ok(frame(frame::Kind::Opened(true)))).await;
        tokio::spawn(pump(agent.inbound, to_ctl, coord.clone()));
        tokio::spawn(async move {
            pump(inbound, agent.outbound, coord.clone()).await;
            drop(slot);
            debug!(conn_id, "tunnel connection from ctl ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(from_agent_rx))))
    }
}

#[tonic::async_trait]
impl TunnelRelay for TunnelSvc {
    type ListenStream = Pin<Box<dyn Stream<Item = Result<OpenRequest, Status>> + Send>>;
    type AttachStream = FrameStream;

    async fn listen(
        &self,
        req: Request<ListenRequest>,
    ) -> Result<Response<Self::ListenStream>, Status> {
        let agent = require_role(&req, Role::Agent)?;
        let (tx, rx) = mpsc::channel(64);
        // A newer listener replaces an older one: connections that were being
        // opened through the old session fail, new ones go to the new session.
        TunnelHub::lock(&self.0.tunnels.listeners).insert(agent.node.clone(), tx);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn attach(
        &self,
        req: Request<Streaming<Frame>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let agent = require_role(&req, Role::Agent)?;
        let mut inbound = req.into_inner();
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
        let waiting = TunnelHub::lock(&self.0.tunnels.pending).remove(&conn_id);
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
        let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
        handoff
            .send(AgentLeg {
                inbound,
                outbound: tx,
            })
            .map_err(|_| Status::cancelled("the operator's side went away"))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
