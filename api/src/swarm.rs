//! Swarm as the coordinator asks for it and as an agent's engine reports
//! it: the local node's view, the overlay the cluster wants, the probe
//! containers the overlay check runs between.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Swarm state of the local node, as Docker names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwarmState {
    Inactive,
    Pending,
    Active,
    Error,
    Locked,
}

impl fmt::Display for SwarmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwarmState::Inactive => "inactive",
            SwarmState::Pending => "pending",
            SwarmState::Active => "active",
            SwarmState::Error => "error",
            SwarmState::Locked => "locked",
        })
    }
}

/// A manager as the local node knows it (`RemoteManagers` of `docker info`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerPeer {
    pub node_id: String,
    /// "ip:port" of its 2377 listener.
    pub addr: String,
}

/// One node of the swarm, as a manager lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    /// "manager" or "worker".
    pub role: String,
    /// "active", "pause" or "drain".
    pub availability: String,
    /// "ready", "down", "disconnected" or "unknown".
    pub status: String,
    pub addr: String,
    pub leader: bool,
    /// Manager reachability ("reachable", "unreachable"), for managers.
    pub reachability: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// The local node's view of Swarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmView {
    /// Empty while inactive.
    pub node_id: String,
    pub state: SwarmState,
    /// Whether this node is a manager (Docker's `ControlAvailable`).
    pub manager: bool,
    /// The address this node advertises; empty while inactive.
    pub node_addr: String,
    /// Only managers know it.
    pub cluster_id: Option<String>,
    pub managers: Vec<ManagerPeer>,
    /// Every node, when this node is a manager; empty otherwise.
    pub nodes: Vec<NodeView>,
    /// Docker's error text when `state` is error.
    pub error: Option<String>,
}

impl SwarmView {
    /// Whether `addr` ("ip:port") is one of the managers this node knows.
    pub fn knows_manager(&self, addr: &SocketAddr) -> bool {
        let want = addr.to_string();
        self.managers.iter().any(|m| m.addr == want)
    }

    /// The managers this node knows, for messages ("unknown" when none).
    pub fn manager_list(&self) -> String {
        if self.managers.is_empty() {
            return "unknown".into();
        }
        self.managers
            .iter()
            .map(|m| m.addr.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The swarm's join tokens. Secrets: `Debug` does not print them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokens {
    pub worker: String,
    pub manager: String,
}

impl fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinTokens { worker: <redacted>, manager: <redacted> }")
    }
}

/// The overlay network the cluster config asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlaySpec {
    pub name: String,
    /// Standalone containers may attach (the probe containers and a `docker
    /// run --network` database need it).
    pub attachable: bool,
    /// IPsec between hosts; refused where the kernel cannot do it.
    pub encrypted: bool,
    /// Docker's `com.docker.network.driver.mtu`: the MTU of the path between
    /// hosts. Containers on the overlay get 50 bytes less (VXLAN's header);
    /// unset means 1500 (containers: 1450).
    pub mtu: Option<u32>,
}

impl OverlaySpec {
    pub fn attachable(name: &str) -> Self {
        OverlaySpec {
            name: name.to_string(),
            attachable: true,
            encrypted: false,
            mtu: None,
        }
    }
}

/// The network an agent's `ensure_overlay` created or adopted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayStatus {
    pub id: String,
    pub name: String,
    /// False when an existing network with the same options was adopted.
    pub created: bool,
    /// The subnets Docker chose from the default address pool.
    pub subnets: Vec<String>,
}

/// A running probe container: what peers need to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeEndpoint {
    pub host: String,
    pub container: String,
    /// Its address on the overlay.
    pub address: Ipv4Addr,
    /// The MTU of its overlay interface.
    pub mtu: u32,
}
