//! The agent's side of the operations the coordinator asks for
//! (`apiary_api::ops`): reachability responders and probes, and
//! Swarm/overlay/database work through the local engine. Each arm answers
//! with its operation's own reply type ([`reply`] checks it at compile time).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use apiary_api::ops::*;
use tokio::sync::Mutex;

use crate::database::Database;
use crate::endpoints::Endpoints;
use crate::reach::{PortSpec, Responder, cluster_ports, probe_all};
use crate::swarm::{KernelCrypto, ProbeOptions, SwarmClient, encryption_support};

/// The JSON of `O`'s reply: the one way every arm answers.
fn reply<O: Operation>(r: Result<O::Reply, String>) -> Result<String, String> {
    r.and_then(|v| encode_reply::<O>(&v).map_err(|e| format!("cannot encode the reply: {e}")))
}

/// The agent's side: one per agent, outliving sessions (a responder or a
/// Docker connection is not tied to one).
pub struct Ops {
    host: String,
    docker_socket: PathBuf,
    responder: Mutex<Option<Responder>>,
    esp_responder: Mutex<Option<Responder>>,
    endpoints: Arc<Endpoints>,
}

impl Ops {
    pub fn new(host: String, docker_socket: PathBuf, endpoints: Arc<Endpoints>) -> Self {
        Ops {
            host,
            docker_socket,
            responder: Mutex::new(None),
            esp_responder: Mutex::new(None),
            endpoints,
        }
    }

    /// The coordinator endpoints this agent knows (shared with the session
    /// loop, which dials them).
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
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

    /// Runs one request and answers its reply's JSON; the error is a
    /// sentence for the operator.
    pub async fn run(
        &self,
        req: OpRequest,
        private_ip: Option<Ipv4Addr>,
    ) -> Result<String, String> {
        let no_ip = || "this host has no private address to listen on".to_string();
        match req {
            OpRequest::StartResponder(op) => reply::<StartResponder>(
                async {
                    let ip = private_ip.ok_or_else(no_ip)?;
                    let mut slot = self.responder.lock().await;
                    if let Some(old) = slot.take() {
                        old.stop().await;
                    }
                    let ports: Vec<PortSpec> = cluster_ports(op.manager);
                    let r = Responder::start(ip, &ports).map_err(|e| e.to_string())?;
                    let ports = r.ports().iter().map(|p| format!("{p:?}")).collect();
                    *slot = Some(r);
                    Ok(ResponderPorts { ports })
                }
                .await,
            ),
            OpRequest::StartEspResponder(_) => reply::<StartEspResponder>(
                async {
                    let ip = private_ip.ok_or_else(no_ip)?;
                    let mut slot = self.esp_responder.lock().await;
                    let running = slot
                        .as_ref()
                        .is_some_and(|r| r.ip() == ip && r.local_addr(PortSpec::esp()).is_some());
                    if !running {
                        if let Some(old) = slot.take() {
                            old.stop().await;
                        }
                        let r =
                            Responder::start(ip, &[PortSpec::esp()]).map_err(|e| e.to_string())?;
                        if let Some(p) = r.ports().first()
                            && let crate::reach::PortState::Failed(e) = &p.state
                        {
                            return Err(format!("cannot answer ESP probes: {e}"));
                        }
                        *slot = Some(r);
                    }
                    Ok(())
                }
                .await,
            ),
            OpRequest::StopResponder(_) => {
                if let Some(r) = self.responder.lock().await.take() {
                    r.stop().await;
                }
                reply::<StopResponder>(Ok(()))
            }
            OpRequest::Probe(op) => reply::<Probe>(Ok(probe_all(
                &self.host,
                &op.targets,
                Duration::from_millis(op.timeout_ms),
                32,
            )
            .await)),
            OpRequest::ReadSwarm(_) => reply::<ReadSwarm>(
                async { self.swarm().await?.view().await.map_err(|e| e.to_string()) }.await,
            ),
            OpRequest::SwarmInit(op) => reply::<SwarmInit>(
                async {
                    self.swarm()
                        .await?
                        .init(op.advertise_ip, &op.default_addr_pool)
                        .await
                        .map_err(|e| e.to_string())
                }
                .await,
            ),
            OpRequest::ReadJoinTokens(_) => reply::<ReadJoinTokens>(
                async {
                    self.swarm()
                        .await?
                        .join_tokens()
                        .await
                        .map_err(|e| e.to_string())
                }
                .await,
            ),
            OpRequest::SwarmJoin(op) => reply::<SwarmJoin>(
                async {
                    self.swarm()
                        .await?
                        .join(op.remote, &op.token, op.advertise_ip)
                        .await
                        .map_err(|e| e.to_string())
                }
                .await,
            ),
            OpRequest::SetLabels(op) => reply::<SetLabels>(
                async {
                    let changed = self
                        .swarm()
                        .await?
                        .set_labels(&op.node, &op.labels)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Changed { changed })
                }
                .await,
            ),
            OpRequest::SwarmDrain(op) => reply::<SwarmDrain>(
                async {
                    let changed = self
                        .swarm()
                        .await?
                        .drain(&op.node)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Changed { changed })
                }
                .await,
            ),
            OpRequest::SwarmPromote(op) => reply::<SwarmPromote>(
                async {
                    let changed = self
                        .swarm()
                        .await?
                        .promote(&op.node)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Changed { changed })
                }
                .await,
            ),
            OpRequest::SwarmAvailability(op) => reply::<SwarmAvailability>(
                async {
                    let changed = self
                        .swarm()
                        .await?
                        .set_availability(&op.node, op.active)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Changed { changed })
                }
                .await,
            ),
            // Drained and demoted by the coordinator first, so a plain
            // leave: force only matters for a manager, which it no longer is.
            OpRequest::SwarmLeave(_) => reply::<SwarmLeave>(
                async {
                    let left = self
                        .swarm()
                        .await?
                        .leave(false)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Left { left })
                }
                .await,
            ),
            OpRequest::SwarmRemoveNode(op) => reply::<SwarmRemoveNode>(
                async {
                    let removed = self
                        .swarm()
                        .await?
                        .remove_node(&op.node)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Removed { removed })
                }
                .await,
            ),
            OpRequest::EnsureOverlay(op) => reply::<EnsureOverlay>(
                async {
                    self.swarm()
                        .await?
                        .ensure_overlay(&op.spec)
                        .await
                        .map_err(|e| e.to_string())
                }
                .await,
            ),
            OpRequest::EnsureProbe(op) => reply::<EnsureProbe>(
                async {
                    self.swarm()
                        .await?
                        .ensure_probe(&op.network, &ProbeOptions::default())
                        .await
                        .map_err(|e| e.to_string())
                }
                .await,
            ),
            OpRequest::OverlayProbe(op) => reply::<OverlayProbe>(
                async {
                    self.swarm()
                        .await?
                        .overlay_probe(&op.local, &op.peers, &ProbeOptions::default())
                        .await
                        .map_err(|e| e.to_string())
                }
                .await,
            ),
            OpRequest::EncryptionSupport(_) => {
                let k = KernelCrypto::read(std::path::Path::new("/"));
                reply::<EncryptionSupport>(
                    encryption_support(&self.host, &k).map_err(|m| m.to_string()),
                )
            }
            OpRequest::EnsureService(op) => reply::<EnsureService>(
                async { self.database().await?.ensure_service(&op.spec).await }.await,
            ),
            OpRequest::RemoveService(op) => reply::<RemoveService>(
                async {
                    let removed = self.database().await?.remove_service(&op.name).await?;
                    Ok(Removed { removed })
                }
                .await,
            ),
            OpRequest::DatabaseHealth(op) => reply::<DatabaseHealth>(
                async {
                    let db = self.database().await?;
                    Ok(db.health(op.kind, &op.service, op.admin.as_ref()).await)
                }
                .await,
            ),
            OpRequest::RethinkdbTables(op) => reply::<RethinkdbTables>(
                async {
                    let db = self.database().await?;
                    db.rethinkdb_tables(&op.service, op.admin.as_ref()).await
                }
                .await,
            ),
            OpRequest::RethinkdbPlaceTable(op) => reply::<RethinkdbPlaceTable>(
                async {
                    let db = self.database().await?;
                    db.rethinkdb_place_table(
                        &op.service,
                        op.admin.as_ref(),
                        &op.table_id,
                        &op.shards,
                    )
                    .await
                }
                .await,
            ),
            OpRequest::DatabaseExec(op) => reply::<DatabaseExec>(
                async {
                    let (code, output) = self
                        .database()
                        .await?
                        .exec_in(&op.service, op.command)
                        .await?;
                    Ok(ExecOutput { code, output })
                }
                .await,
            ),
            // Needs the session's client to download the build: the session
            // runs it (`session::upgrade`), never this dispatcher.
            OpRequest::UpgradeAgent(_) => {
                Err("an upgrade is run by the session, not as a host operation".into())
            }
            OpRequest::SetCoordinatorEndpoints(op) => reply::<SetCoordinatorEndpoints>(
                self.endpoints
                    .set(op.endpoints)
                    .map(|changed| Changed { changed })
                    .map_err(|e| e.to_string()),
            ),
        }
    }
}
