//! Docker Swarm and the overlay network, driven through the local engine.
//!
//! The agent talks to its own engine on the unix socket (bollard); Docker's
//! API is never on TCP, and the coordinator reaches an engine only through
//! that host's agent. Every operation is idempotent so the coordinator can
//! repeat a whole bring-up after a restart: [`SwarmClient::init`] on a node
//! that already manages a swarm returns that swarm (never a second one),
//! [`SwarmClient::join`] on a node already in *that* swarm is a no-op,
//! [`SwarmClient::ensure_overlay`] adopts a network with the same options.
//!
//! After Swarm, the overlay data path is checked end to end: each host runs a
//! small probe container on the overlay ([`SwarmClient::ensure_probe`]) and
//! from it pings and connects to every other host's by name and by address,
//! plus a full-size ping for the MTU ([`SwarmClient::overlay_probe`]). The
//! results are [`crate::reach::Cell`]s with [`crate::reach::Proto::Overlay`].
//!
//! ## Limitations
//!
//! - The MTU check sends full-size packets for the overlay's MTU, but busybox
//!   `ping` cannot set DF (`-M do`): a path that fragments the outer VXLAN
//!   packets passes; one that drops fragments (or anything of that size) fails.
//! - An encrypted overlay is refused unless this host's kernel has ESP, xfrm
//!   and AES-GCM ([`encryption_support`]); whether ESP (IP protocol 50)
//!   crosses the network between hosts is not probed yet.
//! - Probe containers are plain containers on an attachable overlay, not a
//!   service: kernels without IPVS (the lab) cannot give services a VIP.
//! - Role changes of an existing node (promote/demote) are not done here.

mod crypto;
mod overlay;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::models::{
    LocalNodeState, Node, NodeSpec, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, SwarmInitRequest,
    SwarmJoinRequest,
};
use bollard::query_parameters::{DeleteNodeOptions, LeaveSwarmOptions, UpdateNodeOptions};
use bollard::{API_DEFAULT_VERSION, ClientVersion, Docker};
use tracing::{info, warn};

/// The contract types (views, specs, tokens) live in `apiary-api`.
pub use apiary_api::swarm::{
    JoinTokens, ManagerPeer, NodeView, OverlaySpec, OverlayStatus, ProbeEndpoint, SwarmState,
    SwarmView,
};
pub use crypto::{KernelCrypto, Missing, MissingPiece, encryption_support};
pub use overlay::{
    PROBE_IMAGE, ProbeOptions, nc_outcome, overlay_differences, ping_outcome, probe_container_name,
};

/// How long a node may stay `pending` (joining) before we give up.
const SETTLE_WAIT: Duration = Duration::from_secs(30);
/// Request timeout on the engine's socket: init and join take seconds.
const ENGINE_TIMEOUT_SECS: u64 = 60;
/// Prefix length of each overlay subnet cut from the default address pool.
const SUBNET_SIZE: u32 = 24;
/// The oldest API we speak: Debian's docker.io 20.10, which refuses newer clients.
const OLDEST_API: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// What went wrong, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error(
        "cannot reach the Docker engine of {host} at {socket}: {source}; is dockerd running, and is docker_socket in the agent's config right?"
    )]
    Connect {
        host: String,
        socket: PathBuf,
        source: bollard::errors::Error,
    },
    #[error("the Docker engine of {host} failed to {action}: {source}")]
    Docker {
        host: String,
        action: &'static str,
        source: bollard::errors::Error,
    },
    #[error("{action} needs a Swarm manager and {host} is not one: ask a manager's agent")]
    NotManager { host: String, action: &'static str },
    #[error("{host} is not in a swarm: init or join first")]
    NotInSwarm { host: String },
    #[error(
        "{host} already belongs to another swarm (managers: {managers}); apiary never moves a node between swarms: if that swarm is stale, leave it first (`docker swarm leave --force` on {host})"
    )]
    OtherSwarm { host: String, managers: String },
    #[error(
        "{host} is a worker of a swarm (managers: {managers}) and cannot init one: init on a manager, or leave that swarm first"
    )]
    WorkerCannotInit { host: String, managers: String },
    #[error(
        "the swarm on {host} is locked (autolock): unlock it with `docker swarm unlock` and its unlock key"
    )]
    Locked { host: String },
    #[error("Swarm on {host} is in error: {message}; `docker info` on {host} says more")]
    StateError { host: String, message: String },
    #[error("{host}: {what} did not happen within {after:?}")]
    Timeout {
        host: String,
        what: String,
        after: Duration,
    },
    #[error(
        "no node {node} in the swarm seen from {host}; `docker node ls` on a manager lists them"
    )]
    NoSuchNode { host: String, node: String },
    #[error(
        "network {name} exists with other options ({differences}); remove it (`docker network rm {name}` once no container uses it) or change the cluster config to match"
    )]
    OverlayMismatch { name: String, differences: String },
    #[error(
        "{count} networks are named {name}; remove the extra ones (`docker network ls`) so that one is used"
    )]
    DuplicateNetworks { name: String, count: usize },
    #[error(transparent)]
    EncryptionUnsupported(#[from] Missing),
    #[error(
        "image {image} is not in {host}'s engine: load it first (lab: Lab::ensure_images; elsewhere `docker pull {image}`)"
    )]
    ImageMissing { host: String, image: String },
    #[error("probe container {container} on {host}: {reason}")]
    Probe {
        host: String,
        container: String,
        reason: String,
    },
}

/// The local Docker engine, for Swarm and overlay operations.
#[derive(Clone, Debug)]
pub struct SwarmClient {
    docker: Docker,
    host: String,
    /// Where /proc and /sys are read for the encryption preflight.
    root: PathBuf,
}

impl SwarmClient {
    /// Connects to the engine on `socket` (named `host` in messages) and
    /// settles on an API version both sides speak: the newest the engine
    /// allows, and never above what bollard knows.
    pub async fn connect(host: &str, socket: &Path) -> Result<SwarmClient, SwarmError> {
        let connect_err = |source| SwarmError::Connect {
            host: host.to_string(),
            socket: socket.to_path_buf(),
            source,
        };
        let path = socket.to_string_lossy();
        // Newer engines refuse old API versions and older ones refuse new
        // versions (even on /version), so try ours first, then the oldest we support.
        let newest = Docker::connect_with_unix(&path, ENGINE_TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(connect_err)?;
        let docker = match newest.negotiate_version().await {
            Ok(d) => d,
            Err(first) => {
                let oldest = Docker::connect_with_unix(&path, ENGINE_TIMEOUT_SECS, &OLDEST_API)
                    .map_err(connect_err)?;
                oldest.negotiate_version().await.map_err(|e| {
                    warn!(host, error = %first, "newest API version refused");
                    connect_err(e)
                })?
            }
        };
        Ok(SwarmClient {
            docker,
            host: host.to_string(),
            root: PathBuf::from("/"),
        })
    }

    /// Reads kernel facts (the encryption preflight) under `root` instead of `/`.
    pub fn with_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = root.into();
        self
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn docker_err(&self, action: &'static str, source: bollard::errors::Error) -> SwarmError {
        match server_message(&source) {
            Some((_, m)) if m.contains("not a swarm manager") => SwarmError::NotManager {
                host: self.host.clone(),
                action,
            },
            Some((_, m)) if m.contains("not part of a swarm") => SwarmError::NotInSwarm {
                host: self.host.clone(),
            },
            _ => SwarmError::Docker {
                host: self.host.clone(),
                action,
                source,
            },
        }
    }

    /// The local node's Swarm state, and the node list when it is a manager.
    pub async fn view(&self) -> Result<SwarmView, SwarmError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| self.docker_err("read info", e))?;
        let swarm = info.swarm.unwrap_or_default();
        let state = match swarm.local_node_state.unwrap_or_default() {
            LocalNodeState::ACTIVE => SwarmState::Active,
            LocalNodeState::PENDING => SwarmState::Pending,
            LocalNodeState::ERROR => SwarmState::Error,
            LocalNodeState::LOCKED => SwarmState::Locked,
            LocalNodeState::INACTIVE | LocalNodeState::EMPTY => SwarmState::Inactive,
        };
        let manager = swarm.control_available.unwrap_or(false);
        let mut view = SwarmView {
            node_id: swarm.node_id.unwrap_or_default(),
            state,
            manager,
            node_addr: swarm.node_addr.unwrap_or_default(),
            cluster_id: swarm.cluster.and_then(|c| c.id),
            managers: swarm
                .remote_managers
                .unwrap_or_default()
                .into_iter()
                .map(|p| ManagerPeer {
                    node_id: p.node_id.unwrap_or_default(),
                    addr: p.addr.unwrap_or_default(),
                })
                .collect(),
            nodes: Vec::new(),
            error: swarm.error.filter(|e| !e.is_empty()),
        };
        if state == SwarmState::Active && manager {
            let nodes = self
                .docker
                .list_nodes(None)
                .await
                .map_err(|e| self.docker_err("list nodes", e))?;
            view.nodes = nodes.into_iter().map(node_view).collect();
            view.nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        }
        Ok(view)
    }

    /// The view once the node is no longer `pending` (a join in progress).
    async fn settled_view(&self) -> Result<SwarmView, SwarmError> {
        let deadline = Instant::now() + SETTLE_WAIT;
        loop {
            let v = self.view().await?;
            if v.state != SwarmState::Pending {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(SwarmError::Timeout {
                    host: self.host.clone(),
                    what: "leaving the pending (joining) Swarm state".into(),
                    after: SETTLE_WAIT,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn refuse_unusable(&self, v: &SwarmView) -> Result<(), SwarmError> {
        match v.state {
            SwarmState::Locked => Err(SwarmError::Locked {
                host: self.host.clone(),
            }),
            SwarmState::Error => Err(SwarmError::StateError {
                host: self.host.clone(),
                message: v.error.clone().unwrap_or_else(|| "no message".into()),
            }),
            _ => Ok(()),
        }
    }

    /// Makes this node the first manager of a new swarm advertising
    /// `advertise_ip` (Swarm's control, gossip and data path all on it), with
    /// overlay subnets (/24 each) from `default_addr_pool` (CIDRs; empty:
    /// Docker's 10.0.0.0/8, which may collide with a private network).
    ///
    /// Idempotent: a node that already manages a swarm returns that swarm's
    /// view and nothing is created; a worker is refused (never a second swarm).
    pub async fn init(
        &self,
        advertise_ip: Ipv4Addr,
        default_addr_pool: &[String],
    ) -> Result<SwarmView, SwarmError> {
        let v = self.settled_view().await?;
        self.refuse_unusable(&v)?;
        if v.state == SwarmState::Active {
            if !v.manager {
                return Err(SwarmError::WorkerCannotInit {
                    host: self.host.clone(),
                    managers: v.manager_list(),
                });
            }
            if !v.node_addr.is_empty() && v.node_addr != advertise_ip.to_string() {
                warn!(host = %self.host, advertised = %v.node_addr, wanted = %advertise_ip,
                    "swarm adopted; it advertises another address than the one asked for");
            }
            info!(host = %self.host, cluster = ?v.cluster_id, "already a swarm manager; adopted");
            return Ok(v);
        }
        let ip = advertise_ip.to_string();
        let req = SwarmInitRequest {
            // Listen only on the private address: 2377 must not face the public side.
            listen_addr: Some(format!("{ip}:{}", crate::reach::SWARM_MANAGER_PORT)),
            advertise_addr: Some(ip.clone()),
            data_path_addr: Some(ip),
            default_addr_pool: (!default_addr_pool.is_empty()).then(|| default_addr_pool.to_vec()),
            // With a pool but no size, swarmkit's allocator never allocates a
            // network (attaching times out); the CLI always sends 24.
            subnet_size: (!default_addr_pool.is_empty()).then_some(SUBNET_SIZE),
            ..Default::default()
        };
        match self.docker.init_swarm(req).await {
            Ok(node) => info!(host = %self.host, node = %node, "swarm initialised"),
            // Another init won a race (a retried command): adopt what it made.
            Err(e) if already_in_swarm(&e) => {}
            Err(e) => return Err(self.docker_err("init swarm", e)),
        }
        let v = self.wait_active("swarm init").await?;
        if !v.manager {
            return Err(SwarmError::WorkerCannotInit {
                host: self.host.clone(),
                managers: v.manager_list(),
            });
        }
        self.remove_ingress().await;
        Ok(v)
    }

    /// Removes the swarm's `ingress` network (the routing mesh) from a new
    /// swarm. apiary publishes no port, so the mesh would carry nothing; and
    /// with it, every node that joins sets up an ingress sandbox and the
    /// overlay's at about the same time when its first task arrives, and
    /// Docker's network database then sometimes starts two bulk syncs with
    /// one peer at once, loses one (moby/moby#51701) and holds the task for
    /// its 30 s timeout. Swarm does not make it again. Best effort: a swarm
    /// that keeps it works as before.
    async fn remove_ingress(&self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.docker.inspect_network("ingress", None).await {
                Ok(n) => {
                    let id = n.id.unwrap_or_else(|| "ingress".into());
                    match self.docker.remove_network(&id).await {
                        Ok(()) => {
                            info!(host = %self.host, "ingress network removed: no routing mesh")
                        }
                        Err(e) => {
                            warn!(host = %self.host, error = %e, "could not remove the ingress network; Swarm keeps its routing mesh")
                        }
                    }
                    return;
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    warn!(host = %self.host, error = %e, "no ingress network to remove");
                    return;
                }
            }
        }
    }

    async fn wait_active(&self, what: &str) -> Result<SwarmView, SwarmError> {
        let deadline = Instant::now() + SETTLE_WAIT;
        loop {
            let v = self.view().await?;
            self.refuse_unusable(&v)?;
            if v.state == SwarmState::Active {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(SwarmError::Timeout {
                    host: self.host.clone(),
                    what: format!("{what} to reach the active state (now {})", v.state),
                    after: SETTLE_WAIT,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The swarm's join tokens (manager only).
    pub async fn join_tokens(&self) -> Result<JoinTokens, SwarmError> {
        let s = self
            .docker
            .inspect_swarm()
            .await
            .map_err(|e| self.docker_err("read the join tokens", e))?;
        let t = s.join_tokens.unwrap_or_default();
        Ok(JoinTokens {
            worker: t.worker.unwrap_or_default(),
            manager: t.manager.unwrap_or_default(),
        })
    }

    /// Joins the swarm whose manager listens at `remote_manager`, with the
    /// role the token gives, advertising `advertise_ip`.
    ///
    /// Idempotent: a node already in the swarm that knows `remote_manager` as
    /// one of its managers returns its view; a node of another swarm is refused.
    pub async fn join(
        &self,
        remote_manager: SocketAddr,
        token: &str,
        advertise_ip: Ipv4Addr,
    ) -> Result<SwarmView, SwarmError> {
        let v = self.settled_view().await?;
        self.refuse_unusable(&v)?;
        if v.state == SwarmState::Active {
            if v.knows_manager(&remote_manager) {
                info!(host = %self.host, manager = %remote_manager, "already in that swarm");
                return Ok(v);
            }
            return Err(SwarmError::OtherSwarm {
                host: self.host.clone(),
                managers: v.manager_list(),
            });
        }
        let ip = advertise_ip.to_string();
        let req = SwarmJoinRequest {
            listen_addr: Some(format!("{ip}:{}", crate::reach::SWARM_MANAGER_PORT)),
            advertise_addr: Some(ip.clone()),
            data_path_addr: Some(ip),
            remote_addrs: Some(vec![remote_manager.to_string()]),
            join_token: Some(token.to_string()),
        };
        match self.docker.join_swarm(req).await {
            Ok(()) => {}
            Err(e) if already_in_swarm(&e) => {}
            // Docker gives up waiting but keeps joining in the background.
            Err(e)
                if server_message(&e)
                    .is_some_and(|(_, m)| m.contains("continue in the background")) => {}
            Err(e) => return Err(self.docker_err("join the swarm", e)),
        }
        let v = self.wait_active("swarm join").await?;
        info!(host = %self.host, manager = %remote_manager, node = %v.node_id, "joined the swarm");
        Ok(v)
    }

    /// Makes `labels` present on `node` (id or hostname), leaving other
    /// labels alone; returns whether anything changed. Manager only.
    pub async fn set_labels(
        &self,
        node: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, SwarmError> {
        let changed = self
            .update_node(node, "update a node's labels", |spec| {
                let current = spec.labels.get_or_insert_with(Default::default);
                if labels.iter().all(|(k, v)| current.get(k) == Some(v)) {
                    return false;
                }
                current.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                true
            })
            .await?;
        if changed {
            info!(host = %self.host, node, ?labels, "node labels set");
        }
        Ok(changed)
    }

    /// Drains `node` before it leaves: no tasks scheduled there, and a
    /// manager demoted to worker (so its departure does not leave the Raft
    /// group counting a member that is gone). Whether anything changed.
    /// Manager only.
    pub async fn drain(&self, node: &str) -> Result<bool, SwarmError> {
        let changed = self
            .update_node(node, "drain a node", |spec| {
                let drained = spec.availability == Some(NodeSpecAvailabilityEnum::DRAIN)
                    && spec.role == Some(NodeSpecRoleEnum::WORKER);
                spec.availability = Some(NodeSpecAvailabilityEnum::DRAIN);
                spec.role = Some(NodeSpecRoleEnum::WORKER);
                !drained
            })
            .await?;
        if changed {
            info!(host = %self.host, node, "node drained and demoted");
        }
        Ok(changed)
    }

    /// Makes `node` a manager; false when it already was one. Manager only.
    pub async fn promote(&self, node: &str) -> Result<bool, SwarmError> {
        let changed = self
            .update_node(node, "promote a node", |spec| {
                let manager = spec.role == Some(NodeSpecRoleEnum::MANAGER);
                spec.role = Some(NodeSpecRoleEnum::MANAGER);
                !manager
            })
            .await?;
        if changed {
            info!(host = %self.host, node, "node promoted to manager");
        }
        Ok(changed)
    }

    /// Drains `node` for maintenance (`active` false: its tasks move away,
    /// its role stays) or makes it take tasks again; false when it already
    /// was so.
    pub async fn set_availability(&self, node: &str, active: bool) -> Result<bool, SwarmError> {
        let want = if active {
            NodeSpecAvailabilityEnum::ACTIVE
        } else {
            NodeSpecAvailabilityEnum::DRAIN
        };
        let changed = self
            .update_node(node, "set a node's availability", |spec| {
                let same = spec.availability == Some(want);
                spec.availability = Some(want);
                !same
            })
            .await?;
        if changed {
            info!(host = %self.host, node, active, "node availability set");
        }
        Ok(changed)
    }

    /// Removes `node` from the swarm's node list (after it left, or for
    /// good when its host is gone); false when there is no such node.
    /// Manager only.
    pub async fn remove_node(&self, node: &str) -> Result<bool, SwarmError> {
        match self
            .docker
            .delete_node(node, Some(DeleteNodeOptions { force: true }))
            .await
        {
            Ok(()) => {
                info!(host = %self.host, node, "node removed from the swarm");
                Ok(true)
            }
            Err(e) if server_message(&e).is_some_and(|(s, _)| s == 404) => Ok(false),
            Err(e) => Err(self.docker_err("remove a node from the swarm", e)),
        }
    }

    /// Applies `change` to `node`'s spec (it says whether it changed
    /// anything), retrying when a concurrent update bumps the version.
    async fn update_node(
        &self,
        node: &str,
        what: &'static str,
        change: impl Fn(&mut NodeSpec) -> bool,
    ) -> Result<bool, SwarmError> {
        for _ in 0..3 {
            let n = match self.docker.inspect_node(node).await {
                Ok(n) => n,
                Err(e) if server_message(&e).is_some_and(|(s, _)| s == 404) => {
                    return Err(SwarmError::NoSuchNode {
                        host: self.host.clone(),
                        node: node.to_string(),
                    });
                }
                Err(e) => return Err(self.docker_err("inspect a node", e)),
            };
            let mut spec = n.spec.unwrap_or_default();
            if !change(&mut spec) {
                return Ok(false);
            }
            let version = n.version.and_then(|v| v.index).unwrap_or(0);
            let opts = UpdateNodeOptions {
                version: i64::try_from(version).unwrap_or(i64::MAX),
            };
            let id = n.id.unwrap_or_else(|| node.to_string());
            match self.docker.update_node(&id, spec, opts).await {
                Ok(()) => return Ok(true),
                Err(e)
                    if server_message(&e).is_some_and(|(_, m)| m.contains("out of sequence")) =>
                {
                    continue;
                }
                Err(e) => return Err(self.docker_err(what, e)),
            }
        }
        Err(SwarmError::Timeout {
            host: self.host.clone(),
            what: format!("{what} ({node}) without concurrent changes"),
            after: Duration::ZERO,
        })
    }

    /// Leaves the swarm; returns false if the node was in none. A manager
    /// needs `force` (leaving may cost the swarm its quorum).
    pub async fn leave(&self, force: bool) -> Result<bool, SwarmError> {
        let v = self.view().await?;
        if v.state == SwarmState::Inactive {
            return Ok(false);
        }
        match self
            .docker
            .leave_swarm(Some(LeaveSwarmOptions { force }))
            .await
        {
            Ok(()) => {
                info!(host = %self.host, force, "left the swarm");
                Ok(true)
            }
            Err(e)
                if server_message(&e).is_some_and(|(_, m)| m.contains("not part of a swarm")) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.docker_err("leave the swarm", e)),
        }
    }
}

pub fn node_view(n: Node) -> NodeView {
    let spec = n.spec.unwrap_or_default();
    let status = n.status.unwrap_or_default();
    let ms = n.manager_status;
    NodeView {
        id: n.id.unwrap_or_default(),
        hostname: n.description.and_then(|d| d.hostname).unwrap_or_default(),
        role: spec.role.map(|r| r.to_string()).unwrap_or_default(),
        availability: spec.availability.map(|a| a.to_string()).unwrap_or_default(),
        status: status.state.map(|s| s.to_string()).unwrap_or_default(),
        addr: status.addr.unwrap_or_default(),
        leader: ms.as_ref().and_then(|m| m.leader).unwrap_or(false),
        reachability: ms.and_then(|m| m.reachability).map(|r| r.to_string()),
        labels: spec.labels.unwrap_or_default().into_iter().collect(),
    }
}

/// The engine's status code and message, when it answered with an error.
fn server_message(e: &bollard::errors::Error) -> Option<(u16, &str)> {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => Some((*status_code, message.as_str())),
        _ => None,
    }
}

fn already_in_swarm(e: &bollard::errors::Error) -> bool {
    server_message(e).is_some_and(|(_, m)| m.contains("already part of a swarm"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ManagerStatus, NodeDescription, NodeSpec, NodeSpecRoleEnum, NodeState, NodeStatus,
        Reachability,
    };
    use std::collections::HashMap;

    #[test]
    fn node_view_from_docker_node() {
        let n = Node {
            id: Some("abc".into()),
            spec: Some(NodeSpec {
                role: Some(NodeSpecRoleEnum::MANAGER),
                labels: Some(HashMap::from([("zone".to_string(), "a".to_string())])),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: Some("queenbee".into()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: Some(NodeState::READY),
                addr: Some("10.231.0.11".into()),
                ..Default::default()
            }),
            manager_status: Some(ManagerStatus {
                leader: Some(true),
                reachability: Some(Reachability::REACHABLE),
                addr: Some("10.231.0.11:2377".into()),
            }),
            ..Default::default()
        };
        let v = node_view(n);
        assert_eq!(v.hostname, "queenbee");
        assert_eq!(v.role, "manager");
        assert_eq!(v.status, "ready");
        assert!(v.leader);
        assert_eq!(v.reachability.as_deref(), Some("reachable"));
        assert_eq!(v.labels.get("zone").map(String::as_str), Some("a"));
    }

    #[test]
    fn join_tokens_never_print() {
        let t = JoinTokens {
            worker: "SWMTKN-1-secret-w".into(),
            manager: "SWMTKN-1-secret-m".into(),
        };
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn knows_manager_compares_ip_and_port() {
        let v = SwarmView {
            node_id: "n".into(),
            state: SwarmState::Active,
            manager: false,
            node_addr: "10.231.0.12".into(),
            cluster_id: None,
            managers: vec![ManagerPeer {
                node_id: "m".into(),
                addr: "10.231.0.11:2377".into(),
            }],
            nodes: vec![],
            error: None,
        };
        assert!(v.knows_manager(&"10.231.0.11:2377".parse().expect("addr")));
        assert!(!v.knows_manager(&"10.231.0.13:2377".parse().expect("addr")));
    }
}
