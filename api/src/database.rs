//! The clustered database as the coordinator specifies it and as an agent
//! reports it: one [`ServiceSpec`] per server (a Swarm service pinned to one
//! host), its peer TLS material, and the health a server answers over its
//! own protocol.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    Etcd,
    Rethinkdb,
}

impl DatabaseKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            DatabaseKind::Etcd => "etcd",
            DatabaseKind::Rethinkdb => "rethinkdb",
        }
    }
}

/// The upstream resolver database containers get: their own loopback,
/// where nothing answers DNS (the agent's Swarm service definition).
pub const NO_UPSTREAM_DNS: &str = "127.0.0.1";

/// One database server as a Swarm service: pinned to one node, on the
/// overlay, with its own named volume, memory-limited. There is no field for
/// published ports: a server is reachable only on the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Service name, also the container's hostname and its DNS name on the overlay.
    pub name: String,
    pub kind: DatabaseKind,
    pub image: String,
    /// The Swarm node (hostname) it is pinned to.
    pub node: String,
    pub network: String,
    /// The whole command line (executable first).
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub memory_bytes: i64,
    /// Named volume and where it is mounted.
    pub volume: String,
    pub data_dir: String,
    pub restart_delay: Duration,
    /// How the service name resolves on the overlay.
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// The server's peer certificate, its key and the CA, mounted as Swarm
    /// secrets at [`PeerTls::CA_FILE`], [`PeerTls::CERT_FILE`] and
    /// [`PeerTls::KEY_FILE`]; `None`: peers talk in plain text.
    #[serde(default)]
    pub peer_tls: Option<PeerTls>,
}

/// What a database server needs for TLS between peers, issued by the
/// cluster CA (the coordinator keeps them; they travel to the first
/// manager's agent over its mTLS session, and on as Swarm secrets: kept
/// encrypted in Swarm's Raft log, mounted on a tmpfs in the one container).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls { key: <redacted> }")
    }
}

impl PeerTls {
    pub const CA_FILE: &str = "/run/secrets/apiary-peer-ca.pem";
    pub const CERT_FILE: &str = "/run/secrets/apiary-peer.pem";
    pub const KEY_FILE: &str = "/run/secrets/apiary-peer.key";

    /// A mounted file's name under `/run/secrets`, as Swarm wants it.
    pub fn file_name(path: &str) -> &str {
        path.rsplit('/').next().unwrap_or(path)
    }

    /// (secret name, file in the container, content) for `service`. A name
    /// carries a digest of its content: Swarm secrets cannot change, so new
    /// content is a new secret and an unchanged one is found again.
    pub fn secrets(&self, service: &str) -> [(String, &'static str, &str); 3] {
        fn named<'a>(
            service: &str,
            file: &'static str,
            content: &'a str,
        ) -> (String, &'static str, &'a str) {
            let digest = hex::encode(&Sha256::digest(content.as_bytes())[..6]);
            (
                format!("{service}-{}-{digest}", PeerTls::file_name(file)),
                file,
                content,
            )
        }
        [
            named(service, Self::CA_FILE, &self.ca_pem),
            named(service, Self::CERT_FILE, &self.cert_pem),
            named(service, Self::KEY_FILE, &self.key_pem),
        ]
    }
}

/// How a Swarm service's name resolves: Docker's default, a virtual IP
/// balanced by the kernel's IPVS, needs `ip_vs` on every host; without it
/// the service's VIP silently carries nothing, so apiary falls back to
/// `dnsrr` (the name resolves to the task's own address) there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    Vip,
    #[default]
    Dnsrr,
}

impl EndpointMode {
    /// VIP when every host's kernel has `ip_vs`, else dnsrr.
    pub fn for_kernels(all_have_ip_vs: bool) -> Self {
        if all_have_ip_vs {
            EndpointMode::Vip
        } else {
            EndpointMode::Dnsrr
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        }
    }
}

impl ServiceSpec {
    /// A short digest of the spec, kept as a label to tell drift.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..8])
    }
}

/// What an agent's `ensure_service` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    pub name: String,
    pub created: bool,
    /// False when an existing service was made from another spec.
    pub matches: bool,
}

/// One member as the database lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: String,
    /// Empty while a member added through the API has not started.
    pub name: String,
}

/// The server on this host, as it answers over its own protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHealth {
    pub host: String,
    pub service: String,
    /// Whether a container of the service runs on this host.
    pub running: bool,
    /// Whether it answered a quorum read.
    pub healthy: bool,
    pub member_id: String,
    pub leader_id: String,
    pub members: Vec<MemberView>,
    pub error: Option<String>,
}
