//! Operations the coordinator asks an agent to run on its host: reachability
//! responders and probes, and Swarm/overlay work through the local engine.
//! Requests and results travel as JSON inside the session's `AgentOp` /
//! `OpResult` messages; the types here are the contract, shared with the
//! coordinator (which depends on this crate for them).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::database::{Database, DatabaseKind, ServiceSpec};
use crate::reach::{PortSpec, Responder, Target, cluster_ports, probe_all};
use crate::swarm::{
    KernelCrypto, OverlaySpec, ProbeEndpoint, ProbeOptions, SwarmClient, encryption_support,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpRequest {
    /// Listen on the cluster ports (2377/tcp for managers) to be probed,
    /// before Swarm takes them.
    StartResponder {
        manager: bool,
    },
    StopResponder,
    /// Answer ESP (IP protocol 50) probes on the private address, for an
    /// encrypted overlay; idempotent, and kept through Swarm (which never
    /// holds protocol 50), unlike the port responder.
    StartEspResponder,
    Probe {
        targets: Vec<Target>,
        timeout_ms: u64,
    },
    SwarmView,
    SwarmInit {
        advertise_ip: Ipv4Addr,
        default_addr_pool: Vec<String>,
    },
    /// Answers `{"worker": ..., "manager": ...}`.
    JoinTokens,
    SwarmJoin {
        remote: SocketAddr,
        token: String,
        advertise_ip: Ipv4Addr,
    },
    SetLabels {
        node: String,
        labels: BTreeMap<String, String>,
    },
    /// Drain and demote `node` (a manager's agent): answers `{"changed": bool}`.
    SwarmDrain {
        node: String,
    },
    /// This host leaves the swarm: answers `{"left": bool}`.
    SwarmLeave,
    /// Remove `node` from the node list (a manager's agent): `{"removed": bool}`.
    SwarmRemoveNode {
        node: String,
    },
    EnsureOverlay {
        spec: OverlaySpec,
    },
    EnsureProbe {
        network: String,
    },
    OverlayProbe {
        local: ProbeEndpoint,
        peers: Vec<ProbeEndpoint>,
    },
    /// Ok, or the missing kernel pieces for an encrypted overlay.
    EncryptionSupport,
    /// Creates a database server's service unless it exists (a manager's
    /// agent); answers a [`ServiceState`].
    EnsureService {
        /// Boxed: with its certificate it is the largest request by far.
        spec: Box<ServiceSpec>,
    },
    /// Removes a service; answers `{"removed": bool}`.
    RemoveService {
        name: String,
    },
    /// How the database server of `service` on this host answers over the
    /// database's own protocol; answers a [`ServerHealth`].
    DatabaseHealth {
        kind: DatabaseKind,
        service: String,
    },
    /// Runs a command in the running container of `service` on this host
    /// (etcd member add/remove through etcdctl); answers `{"code", "output"}`.
    DatabaseExec {
        service: String,
        command: Vec<String>,
    },
}

impl OpRequest {
    /// How long the coordinator should wait for an answer.
    pub fn timeout(&self) -> Duration {
        match self {
            OpRequest::SwarmJoin { .. } | OpRequest::SwarmInit { .. } => Duration::from_secs(60),
            // Quick questions to the local engine: an engine that does not
            // answer them in seconds is down, and a check round must not wait
            // a minute to say so.
            OpRequest::SwarmView => Duration::from_secs(5),
            OpRequest::EnsureProbe { .. } => Duration::from_secs(20),
            OpRequest::OverlayProbe { .. }
            | OpRequest::Probe { .. }
            | OpRequest::DatabaseHealth { .. }
            | OpRequest::DatabaseExec { .. } => Duration::from_secs(30),
            _ => Duration::from_secs(15),
        }
    }
}

/// The agent's side: one per agent, outliving sessions (a responder or a
/// Docker connection is not tied to one).
pub struct Ops {
    host: String,
    docker_socket: PathBuf,
    responder: Mutex<Option<Responder>>,
    esp_responder: Mutex<Option<Responder>>,
}

impl Ops {
    pub fn new(host: String, docker_socket: PathBuf) -> Self {
        Ops {
            host,
            docker_socket,
            responder: Mutex::new(None),
            esp_responder: Mutex::new(None),
        }
    }

    async fn swarm(&self) -> Result<SwarmClient, String> {
        SwarmClient::connect(&self.host, &self.docker_socket)
            .await
            .map_err(|e| e.to_string())
    }

    async fn database(&self) -> Result<Database, String> {
        Ok(Database::new(
            self.swarm().await?.docker().clone(),
            &self.host,
        ))
    }

    /// Runs one request; the error is a sentence for the operator.
    pub async fn run(
        &self,
        req: OpRequest,
        private_ip: Option<Ipv4Addr>,
    ) -> Result<serde_json::Value, String> {
        let json = |v: &dyn erased::Json| v.to_value();
        match req {
            OpRequest::StartResponder { manager } => {
                let ip = private_ip.ok_or("this host has no private address to listen on")?;
                let mut slot = self.responder.lock().await;
                if let Some(old) = slot.take() {
                    old.stop().await;
                }
                let ports: Vec<PortSpec> = cluster_ports(manager);
                let r = Responder::start(ip, &ports).map_err(|e| e.to_string())?;
                let states: Vec<String> = r.ports().iter().map(|p| format!("{p:?}")).collect();
                *slot = Some(r);
                Ok(serde_json::json!({ "ports": states }))
            }
            OpRequest::StartEspResponder => {
                let ip = private_ip.ok_or("this host has no private address to listen on")?;
                let mut slot = self.esp_responder.lock().await;
                let running = slot
                    .as_ref()
                    .is_some_and(|r| r.ip() == ip && r.local_addr(PortSpec::esp()).is_some());
                if !running {
                    if let Some(old) = slot.take() {
                        old.stop().await;
                    }
                    let r = Responder::start(ip, &[PortSpec::esp()]).map_err(|e| e.to_string())?;
                    if let Some(p) = r.ports().first()
                        && let crate::reach::PortState::Failed(e) = &p.state
                    {
                        return Err(format!("cannot answer ESP probes: {e}"));
                    }
                    *slot = Some(r);
                }
                Ok(serde_json::Value::Null)
            }
            OpRequest::StopResponder => {
                if let Some(r) = self.responder.lock().await.take() {
                    r.stop().await;
                }
                Ok(serde_json::Value::Null)
            }
            OpRequest::Probe {
                targets,
                timeout_ms,
            } => {
                let cells =
                    probe_all(&self.host, &targets, Duration::from_millis(timeout_ms), 32).await;
                Ok(json(&cells))
            }
            OpRequest::SwarmView => Ok(json(
                &self
                    .swarm()
                    .await?
                    .view()
                    .await
                    .map_err(|e| e.to_string())?,
            )),
            OpRequest::SwarmInit {
                advertise_ip,
                default_addr_pool,
            } => {
                let v = self
                    .swarm()
                    .await?
                    .init(advertise_ip, &default_addr_pool)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(json(&v))
            }
            OpRequest::JoinTokens => {
                let t = self
                    .swarm()
                    .await?
                    .join_tokens()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(serde_json::json!({ "worker": t.worker, "manager": t.manager }))
            }
            OpRequest::SwarmJoin {
                remote,
                token,
                advertise_ip,
            } => {
                let v = self
                    .swarm()
                    .await?
                    .join(remote, &token, advertise_ip)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(json(&v))
            }
            OpRequest::SetLabels { node, labels } => {
                let changed = self
                    .swarm()
                    .await?
                    .set_labels(&node, &labels)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(serde_json::json!({ "changed": changed }))
            }
            OpRequest::SwarmDrain { node } => {
                let changed = self
                    .swarm()
                    .await?
                    .drain(&node)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(serde_json::json!({ "changed": changed }))
            }
            OpRequest::SwarmLeave => {
                // Drained and demoted by the coordinator first, so a plain
                // leave: force only matters for a manager, which it no longer is.
                let left = self
                    .swarm()
                    .await?
                    .leave(false)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(serde_json::json!({ "left": left }))
            }
            OpRequest::SwarmRemoveNode { node } => {
                let removed = self
                    .swarm()
                    .await?
                    .remove_node(&node)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(serde_json::json!({ "removed": removed }))
            }
            OpRequest::EnsureOverlay { spec } => {
                let s = self
                    .swarm()
                    .await?
                    .ensure_overlay(&spec)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(json(&s))
            }
            OpRequest::EnsureProbe { network } => {
                let e = self
                    .swarm()
                    .await?
                    .ensure_probe(&network, &ProbeOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(json(&e))
            }
            OpRequest::OverlayProbe { local, peers } => {
                let cells = self
                    .swarm()
                    .await?
                    .overlay_probe(&local, &peers, &ProbeOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(json(&cells))
            }
            OpRequest::EncryptionSupport => {
                let k = KernelCrypto::read(std::path::Path::new("/"));
                encryption_support(&self.host, &k).map_err(|m| m.to_string())?;
                Ok(serde_json::Value::Null)
            }
            OpRequest::EnsureService { spec } => {
                Ok(json(&self.database().await?.ensure_service(&spec).await?))
            }
            OpRequest::RemoveService { name } => {
                let removed = self.database().await?.remove_service(&name).await?;
                Ok(serde_json::json!({ "removed": removed }))
            }
            OpRequest::DatabaseHealth { kind, service } => {
                Ok(json(&self.database().await?.health(kind, &service).await))
            }
            OpRequest::DatabaseExec { service, command } => {
                let (code, output) = self.database().await?.exec_in(&service, command).await?;
                Ok(serde_json::json!({ "code": code, "output": output }))
            }
        }
    }
}

/// A tiny adapter so every result is turned into JSON the same way.
mod erased {
    pub trait Json {
        fn to_value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
    }
}
