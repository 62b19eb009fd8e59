//! apiary's trust material: the cluster CA, join tokens, node identities and the
//! rustls configurations every connection in the cluster uses.
//!
//! Model (SwarmKit's, see DESIGN.md "Trust model"):
//! - one CA per cluster (ECDSA P-256, rcgen), its key 0600 in the coordinator's
//!   state directory and nowhere else;
//! - a join token `APIARY-1-<sha256 of the CA certificate>-<secret>` lets a new
//!   agent verify the coordinator *before* it sends anything, and lets the
//!   coordinator verify the agent;
//! - every certificate names its holder (CN) and its role (OU: `agent`,
//!   `admin` or `coordinator`); the coordinator decides what a caller may do
//!   from that role alone;
//! - revocation is a set of serials the coordinator's TLS verifier consults on
//!   every handshake, so a removed node is refused from its next handshake on.
//!
//! Limitations: no CRL/OCSP distribution (only the coordinator verifies client
//! certificates, so an in-memory set is enough); no CA rotation yet.

mod admin_conf;
mod ca;
mod error;
mod files;
mod identity;
mod peer;
mod tls;
mod token;

pub use admin_conf::{AdminConf, AdminConfError};
pub use ca::{ClusterCa, DATABASE_CLIENT_CN, DATABASE_PEER_CN, IssuedCert, certificate_names};
pub use error::CertError;
pub use files::write_private;
pub use identity::{Identity, new_key_and_csr};
pub use peer::{PeerIdentity, Role};
pub use tls::{
    RevocationSet, TlsRefusal, classify_tls_failure, enrollment_client_config, https_server_config,
    mtls_client_config, server_config,
};
pub use token::{CaDigest, JoinToken};

/// The name every coordinator certificate carries and every client asks for,
/// whatever address it dials (SwarmKit does the same with "swarm-manager"):
/// agents reach the coordinator by IP on private networks, where DNS names are
/// not worth depending on.
pub const COORDINATOR_SERVER_NAME: &str = "coordinator.apiary.internal";
