//! The cluster's identities: its CA, the join token, node certificates
//! (enroll, renew, revoke), the operator's `admin.conf`, and database peer
//! certificates.
//!
//! Every certificate the CA signs is recorded in the store; a revoked serial
//! goes into the in-memory [`RevocationSet`] the TLS verifier consults
//! *before* the store write, so a refusal holds from the next handshake on.
//! Nothing here speaks gRPC: refusals are [`PkiError`]s, which the API turns
//! into statuses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use apiary_api::database::{AdminCredentials, PeerTls};
use apiary_certs::{
    AdminConf, CertError, ClusterCa, JoinToken, PeerIdentity, RevocationSet, Role, server_config,
};
use tracing::info;

use crate::config::ClusterConfig;
use crate::events::{EventKind, Events};
use crate::store::{
    CertRecord, HostTokenRecord, NodeRecord, Op, RevocationRecord, Store, StoreError, TokenRecord,
};
use crate::time::{now_unix, unix};

/// How long a database server's peer certificate is valid (see
/// [`Pki::database_peer_tls`]): servers are not re-keyed while they run.
pub const DATABASE_PEER_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The operator's credentials file in the state directory.
pub const ADMIN_CONF: &str = "admin.conf";

/// Why an identity operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}")]
    MalformedToken(CertError),
    #[error(
        "join token refused: it was issued for another cluster's CA; get this cluster's token with `coordinator token`"
    )]
    ForeignToken,
    #[error(
        "join token refused: it expired at {at} (unix {unix}); make a new one with `coordinator token --rotate`"
    )]
    ExpiredToken { at: String, unix: u64 },
    #[error(
        "join token refused: it was rotated and is no longer valid; get the current one with `coordinator token`"
    )]
    RotatedToken,
    #[error(
        "join token refused: wrong secret for this cluster; get the current one with `coordinator token`"
    )]
    WrongSecret,
    #[error(
        "join token refused: this host token already enrolled node {node} at {at}; a host token enrolls once \
         (the coordinator makes a new one whenever it creates the host again)"
    )]
    HostTokenUsed { node: String, at: String },
    #[error(
        "join token refused: the host token of {node} expired at {at} (coordinator.host_token_ttl); \
         the coordinator makes a new one when it creates the host again"
    )]
    HostTokenExpired { node: String, at: String },
    #[error(
        "join token refused: this host token was made for host {token_node}, not {asked}; \
         each host enrolls under its own name"
    )]
    HostTokenOtherNode { token_node: String, asked: String },
    #[error("{0} (set it with --name)")]
    BadName(apiary_api::names::NameError),
    /// A CSR the CA will not sign (garbage, wrong key type, asks for rights).
    #[error("{0}")]
    BadCsr(CertError),
    #[error("node {node} is not a member of this cluster")]
    NotMember { node: String },
    #[error(
        "node {node} already has a live identity (certificate {serial}, valid until {until}); a join token cannot take a name over. \
         To replace the host, remove the old one first (`ctl nodes remove {node}`, which revokes its certificates); \
         this agent then enrolls by itself"
    )]
    NameTaken {
        node: String,
        serial: String,
        until: String,
    },
    #[error("no node named {node:?}; `ctl status` lists the nodes")]
    NoSuchNode { node: String },
    #[error("database peer certificate of {service}: cannot {what}: {reason}")]
    PeerCertificate {
        service: String,
        what: String,
        reason: String,
    },
    #[error("the database administrator's password ({path}): cannot {what}: {reason}")]
    AdminPassword {
        path: String,
        what: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error(transparent)]
    AdminConf(#[from] apiary_certs::AdminConfError),
}

/// A node that enrolled: its certificate, and whether it took over a name
/// that had an identity (whose session must then end).
#[derive(Debug)]
pub struct Enrolled {
    pub node: String,
    pub cert_der: Vec<u8>,
    pub ca_der: Vec<u8>,
    pub reenrolled: bool,
}

/// The cluster's CA and what it has issued.
pub struct Pki {
    ca: ClusterCa,
    dir: PathBuf,
    revoked: RevocationSet,
    token: RwLock<TokenRecord>,
    server_tls: Arc<rustls::ServerConfig>,
    cluster: String,
    join_token_ttl: Option<Duration>,
    host_token_ttl: Duration,
    node_cert_ttl: Duration,
    admin_cert_ttl: Duration,
    /// Enrollments one at a time: checking a token (or a name) and
    /// recording its use must not interleave, or one single-use host token
    /// could enroll twice.
    enrolling: tokio::sync::Mutex<()>,
}

/// Which token an enrollment presented.
enum TokenUse {
    /// The cluster's join token (manual hosts, `coordinator token`).
    Cluster,
    /// A host token, to be marked used with the enrollment.
    Host(HostTokenRecord),
}

impl Pki {
    /// Loads (or on first start creates) the CA under `state_dir/pki`, the
    /// revocations and the join token from `store`, and makes this run's
    /// server certificate.
    pub async fn open(
        config: &ClusterConfig,
        state_dir: &Path,
        store: &Store,
    ) -> Result<Self, PkiError> {
        let (ca, created) =
            ClusterCa::load_or_create(&state_dir.join("pki"), &config.cluster_name)?;
        if created {
            info!(digest = %ca.digest(), "created the cluster CA");
        }
        let revoked = RevocationSet::default();
        for r in store.revocations()? {
            revoked.insert(&r.serial);
        }
        let token = match store.token()? {
            Some(t) => t,
            None => {
                let t = new_token_record(&ca, config.join_token_ttl, Vec::new());
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
        Ok(Pki {
            ca,
            dir: state_dir.to_path_buf(),
            revoked,
            token: RwLock::new(token),
            server_tls,
            cluster: config.cluster_name.clone(),
            join_token_ttl: config.join_token_ttl,
            host_token_ttl: config.host_token_ttl,
            node_cert_ttl: config.node_cert_ttl,
            admin_cert_ttl: config.admin_cert_ttl,
            enrolling: tokio::sync::Mutex::new(()),
        })
    }

    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }

    pub fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        self.server_tls.clone()
    }

    pub fn current_token(&self) -> TokenRecord {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the join token; the old one is refused for new enrollments.
    pub async fn rotate_token(
        &self,
        store: &Store,
        events: &Events,
    ) -> Result<TokenRecord, PkiError> {
        let old = self.current_token();
        let mut rotated = old.rotated_hashes.clone();
        if let Ok(t) = old.token.parse::<JoinToken>() {
            rotated.push(t.secret_hash());
        }
        let keep = rotated.len().saturating_sub(32);
        let record = new_token_record(&self.ca, self.join_token_ttl, rotated.split_off(keep));
        store.apply(vec![Op::PutToken(record.clone())]).await?;
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = record.clone();
        info!("join token rotated");
        events.emit(
            EventKind::TokenRotated,
            "",
            "the previous join token is refused from now on",
        );
        Ok(record)
    }

    /// A join token for one host the coordinator is about to create (a
    /// droplet's user_data, a lab host's agent): it enrolls `node` once,
    /// within `coordinator.host_token_ttl`. Unlike the cluster token, a copy
    /// read later (from a droplet's metadata service, say) is worth nothing:
    /// it is used, expired, or for a name that is taken. Tokens long
    /// expired or used are forgotten on the way.
    pub async fn issue_host_token(&self, store: &Store, node: &str) -> Result<String, PkiError> {
        let token = JoinToken::generate(self.ca.digest());
        let now = now_unix();
        const FORGET_AFTER: u64 = 24 * 3600;
        let mut ops: Vec<Op> = store
            .host_tokens()?
            .into_iter()
            .filter(|t| {
                t.expires_unix + FORGET_AFTER < now
                    || t.used_unix.is_some_and(|u| u + FORGET_AFTER < now)
            })
            .map(|t| Op::DeleteHostToken(t.secret_hash))
            .collect();
        ops.push(Op::PutHostToken(HostTokenRecord {
            secret_hash: token.secret_hash(),
            node: node.to_string(),
            created_unix: now,
            expires_unix: now + self.host_token_ttl.as_secs(),
            used_unix: None,
        }));
        store.apply(ops).await?;
        Ok(token.to_string())
    }

    /// Whether `token` is this cluster's current, unexpired join token.
    fn check_cluster_token(&self, token: &JoinToken) -> Result<(), PkiError> {
        if token.ca_digest != self.ca.digest() {
            return Err(PkiError::ForeignToken);
        }
        let current = self.current_token();
        let hash = token.secret_hash();
        let current_hash = current
            .token
            .parse::<JoinToken>()
            .ok()
            .map(|t| t.secret_hash());
        if current_hash.as_ref() == Some(&hash) {
            if let Some(exp) = current.expires_unix
                && now_unix() >= exp
            {
                return Err(PkiError::ExpiredToken {
                    at: rfc3339(exp),
                    unix: exp,
                });
            }
            return Ok(());
        }
        if current.rotated_hashes.contains(&hash) {
            return Err(PkiError::RotatedToken);
        }
        Err(PkiError::WrongSecret)
    }

    /// The cluster token, or a host token that may enroll `name` now.
    fn check_enrollment_token(
        &self,
        store: &Store,
        presented: &str,
        name: &str,
    ) -> Result<TokenUse, PkiError> {
        let token: JoinToken = presented.parse().map_err(PkiError::MalformedToken)?;
        if token.ca_digest != self.ca.digest() {
            return Err(PkiError::ForeignToken);
        }
        let Some(host) = store.host_token(&token.secret_hash())? else {
            return self.check_cluster_token(&token).map(|()| TokenUse::Cluster);
        };
        if let Some(used) = host.used_unix {
            return Err(PkiError::HostTokenUsed {
                node: host.node,
                at: rfc3339(used),
            });
        }
        if now_unix() >= host.expires_unix {
            return Err(PkiError::HostTokenExpired {
                node: host.node,
                at: rfc3339(host.expires_unix),
            });
        }
        if host.node != name {
            return Err(PkiError::HostTokenOtherNode {
                token_node: host.node,
                asked: name.to_string(),
            });
        }
        Ok(TokenUse::Host(host))
    }

    /// Signs a node's CSR after checking its join token. A name whose node
    /// still holds a valid certificate is refused: replacing a node is the
    /// operator's act (`ctl nodes remove`), never a token holder's. A name
    /// whose certificates have all run out or been revoked may enroll again,
    /// and every certificate it ever had is revoked then, so none can come
    /// back beside the new identity.
    pub async fn enroll(
        &self,
        store: &Store,
        token: &str,
        name: &str,
        csr_der: &[u8],
    ) -> Result<Enrolled, PkiError> {
        let _one_at_a_time = self.enrolling.lock().await;
        let token_use = self.check_enrollment_token(store, token, name)?;
        let name = apiary_api::names::NodeName::parse(name).map_err(PkiError::BadName)?;
        let name = name.as_str();
        let cert = self
            .ca
            .sign_csr(csr_der, name, Role::Agent, self.node_cert_ttl)
            .map_err(PkiError::BadCsr)?;
        let previous = store.node(name)?;
        let now = now_unix();
        let earlier: Vec<CertRecord> = match &previous {
            Some(_) => store
                .certs()?
                .into_iter()
                .filter(|c| c.node == name && c.role == Role::Agent.as_str())
                .collect(),
            None => Vec::new(),
        };
        if let Some(live) = earlier
            .iter()
            .filter(|c| c.not_after_unix >= now && !self.revoked.contains(&c.serial))
            .max_by_key(|c| c.not_after_unix)
        {
            return Err(PkiError::NameTaken {
                node: name.to_string(),
                serial: live.serial.clone(),
                until: humantime::format_rfc3339_seconds(
                    UNIX_EPOCH + Duration::from_secs(live.not_after_unix),
                )
                .to_string(),
            });
        }
        let mut ops = vec![
            Op::PutCert(CertRecord {
                serial: cert.serial.clone(),
                node: name.to_string(),
                role: Role::Agent.as_str().into(),
                issued_unix: now,
                not_after_unix: unix(cert.not_after),
            }),
            Op::PutNode(NodeRecord {
                name: name.to_string(),
                enrolled_unix: previous.as_ref().map_or(now, |p| p.enrolled_unix),
                cert_serial: cert.serial.clone(),
                cert_not_after_unix: unix(cert.not_after),
                last_seen_unix_ms: previous.as_ref().map_or(0, |p| p.last_seen_unix_ms),
                provider_id: previous
                    .as_ref()
                    .map(|p| p.provider_id.clone())
                    .unwrap_or_default(),
            }),
        ];
        if let TokenUse::Host(host) = token_use {
            ops.push(Op::PutHostToken(HostTokenRecord {
                used_unix: Some(now),
                ..host
            }));
        }
        for old in earlier.iter().filter(|c| !self.revoked.contains(&c.serial)) {
            self.revoked.insert(&old.serial);
            ops.push(Op::Revoke(RevocationRecord {
                serial: old.serial.clone(),
                node: name.to_string(),
                revoked_unix: now,
            }));
        }
        store.apply(ops).await?;
        info!(node = %name, serial = %cert.serial, reenrolled = previous.is_some(), "node enrolled");
        Ok(Enrolled {
            node: name.to_string(),
            cert_der: cert.der,
            ca_der: self.ca.cert_der().to_vec(),
            reenrolled: previous.is_some(),
        })
    }

    /// A fresh certificate for a connected node (`peer`); the old one runs out.
    pub async fn renew(
        &self,
        store: &Store,
        peer: &PeerIdentity,
        csr: &[u8],
    ) -> Result<(Vec<u8>, String), PkiError> {
        let Some(mut node) = store.node(&peer.node)? else {
            return Err(PkiError::NotMember {
                node: peer.node.clone(),
            });
        };
        let cert = self
            .ca
            .sign_csr(csr, &peer.node, Role::Agent, self.node_cert_ttl)
            .map_err(PkiError::BadCsr)?;
        node.cert_serial = cert.serial.clone();
        node.cert_not_after_unix = unix(cert.not_after);
        store
            .apply(vec![
                Op::PutCert(CertRecord {
                    serial: cert.serial.clone(),
                    node: peer.node.clone(),
                    role: Role::Agent.as_str().into(),
                    issued_unix: now_unix(),
                    not_after_unix: unix(cert.not_after),
                }),
                Op::PutNode(node),
            ])
            .await?;
        info!(node = %peer.node, serial = %cert.serial, "certificate renewed");
        Ok((cert.der, cert.serial))
    }

    /// Records a member's certificate the store has no record of, presented
    /// at a session's start: after a restore, an agent that renewed after the
    /// backup holds a serial the restored store never saw. Recorded, it is
    /// revoked with the rest by [`Self::remove_node`] (which revokes the
    /// serials it knows), and `ctl status` shows the serial in use. Whether
    /// it was unknown.
    pub async fn record_presented(
        &self,
        store: &Store,
        peer: &PeerIdentity,
    ) -> Result<bool, PkiError> {
        if peer.role != Role::Agent || store.cert(&peer.serial)?.is_some() {
            return Ok(false);
        }
        let Some(mut node) = store.node(&peer.node)? else {
            return Ok(false);
        };
        let not_after = unix(peer.not_after);
        let mut ops = vec![Op::PutCert(CertRecord {
            serial: peer.serial.clone(),
            node: peer.node.clone(),
            role: Role::Agent.as_str().into(),
            issued_unix: unix(peer.not_before),
            not_after_unix: not_after,
        })];
        if not_after > node.cert_not_after_unix {
            node.cert_serial = peer.serial.clone();
            node.cert_not_after_unix = not_after;
            ops.push(Op::PutNode(node));
        }
        store.apply(ops).await?;
        info!(node = %peer.node, serial = %peer.serial, "recorded a certificate this store had no record of (issued after the backup it was restored from)");
        Ok(true)
    }

    /// Revokes every unexpired agent certificate of `name` and deletes the
    /// node: the serials revoked.
    pub async fn remove_node(&self, store: &Store, name: &str) -> Result<Vec<String>, PkiError> {
        if store.node(name)?.is_none() {
            return Err(PkiError::NoSuchNode {
                node: name.to_string(),
            });
        }
        let now = now_unix();
        let serials: Vec<String> = store
            .certs()?
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
        store.apply(ops).await?;
        Ok(serials)
    }

    /// Writes `state_dir/admin.conf` on first start; later starts only update
    /// its endpoint (the admin certificate stays).
    pub fn write_admin_conf(&self, endpoint: SocketAddr) -> Result<PathBuf, PkiError> {
        let path = self.dir.join(ADMIN_CONF);
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
                        .issue_with_key("admin", Role::Admin, self.admin_cert_ttl)?;
                AdminConf {
                    cluster: self.cluster.clone(),
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

    /// The peer certificate of database server `service` (DNS `names`),
    /// issued by the cluster CA on first use and kept in
    /// `state_dir/pki/database/` (the key 0600), so every round asks Swarm
    /// for the same secrets and the service's spec stays the same across
    /// restarts; one that does not cover every name in `names` is issued
    /// again. Valid for [`DATABASE_PEER_TTL`].
    pub fn database_peer_tls(&self, service: &str, names: &[String]) -> Result<PeerTls, PkiError> {
        let dir = self.dir.join("pki").join("database");
        let (cert_path, key_path) = (
            dir.join(format!("{service}.pem")),
            dir.join(format!("{service}.key")),
        );
        let fail = |what: &str, e: &dyn std::fmt::Display| PkiError::PeerCertificate {
            service: service.to_string(),
            what: what.to_string(),
            reason: e.to_string(),
        };
        let kept = std::fs::read_to_string(&cert_path)
            .and_then(|c| Ok((c, std::fs::read_to_string(&key_path)?)));
        // A certificate kept from an earlier version may lack a name this
        // one needs (127.0.0.1, for etcd's clients inside the container):
        // such a one is issued again, as if it were not there.
        let kept = kept.and_then(|(cert, key)| {
            let covers = apiary_certs::certificate_names(&cert)
                .is_some_and(|has| names.iter().all(|n| has.contains(n)));
            if covers {
                Ok((cert, key))
            } else {
                Err(std::io::Error::from(std::io::ErrorKind::NotFound))
            }
        });
        let (cert_pem, key_pem) = match kept {
            Ok(kept) => kept,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (cert, key) = self
                    .ca
                    .issue_database_peer(names, DATABASE_PEER_TTL)
                    .map_err(|e| fail("issue it", &e))?;
                std::fs::create_dir_all(&dir).map_err(|e| fail("create its directory", &e))?;
                apiary_certs::write_private(&key_path, key.as_bytes())
                    .map_err(|e| fail("write its key", &e))?;
                std::fs::write(&cert_path, &cert.pem).map_err(|e| fail("write it", &e))?;
                (cert.pem, key)
            }
            Err(e) => return Err(fail(&format!("read {}", cert_path.display()), &e)),
        };
        Ok(PeerTls {
            ca_pem: self.ca.cert_pem().to_string(),
            cert_pem,
            key_pem,
        })
    }
}

/// The database administrator's password file under the state directory:
/// beside the peer keys, so a backup carries it like them.
pub const DATABASE_ADMIN_PASSWORD: &str = "pki/database/admin-password.key";

/// How long a database client certificate is valid: etcd cannot revoke
/// one, so an operator gets a short-lived one and asks again.
pub const DATABASE_CLIENT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A database client's certificate, its key and the CA.
pub struct ClientCertificate {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after_unix: u64,
}

impl Pki {
    /// A new database client certificate ([`DATABASE_CLIENT_TTL`]).
    pub fn database_client(&self) -> Result<ClientCertificate, PkiError> {
        let (cert, key_pem) = self.ca.issue_database_client(DATABASE_CLIENT_TTL)?;
        Ok(ClientCertificate {
            ca_pem: self.ca.cert_pem().to_string(),
            cert_pem: cert.pem,
            key_pem,
            not_after_unix: unix(cert.not_after),
        })
    }

    /// The database administrator's credentials: the password is made on
    /// first use (32 letters and digits from the OS's random source, ~190
    /// bits) and kept 0600 in [`DATABASE_ADMIN_PASSWORD`], so every round
    /// and every restart uses the same one.
    pub fn database_admin(&self, user: &str) -> Result<AdminCredentials, PkiError> {
        let path = self.dir.join(DATABASE_ADMIN_PASSWORD);
        let fail = |what: &'static str, e: &dyn std::fmt::Display| PkiError::AdminPassword {
            path: path.display().to_string(),
            what,
            reason: e.to_string(),
        };
        let password = match std::fs::read_to_string(&path) {
            Ok(kept) => kept.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use rand::Rng;
                // ThreadRng: a CSPRNG reseeded from the OS.
                let password: String = rand::rng()
                    .sample_iter(&rand::distr::Alphanumeric)
                    .take(32)
                    .map(char::from)
                    .collect();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| fail("create its directory", &e))?;
                }
                apiary_certs::write_private(&path, password.as_bytes())
                    .map_err(|e| fail("write it", &e))?;
                password
            }
            Err(e) => return Err(fail("read it", &e)),
        };
        if password.is_empty() {
            return Err(fail(
                "use it",
                &"the file is empty: delete it and restart the coordinator only if the database was never started with it",
            ));
        }
        Ok(AdminCredentials {
            user: user.to_string(),
            password,
        })
    }
}

/// A unix time as RFC 3339, for messages.
fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

fn new_token_record(
    ca: &ClusterCa,
    ttl: Option<Duration>,
    rotated_hashes: Vec<String>,
) -> TokenRecord {
    let now = now_unix();
    TokenRecord {
        token: JoinToken::generate(ca.digest()).to_string(),
        created_unix: now,
        expires_unix: ttl.map(|ttl| now + ttl.as_secs()),
        rotated_hashes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new state directory (kept alive by the returned handle), its store
    /// and a `Pki` with a new CA.
    async fn fresh_pki() -> (tempfile::TempDir, Store, Pki) {
        let dir = tempfile::tempdir().expect("tmp");
        let config = ClusterConfig::parse(
            Path::new("cluster.toml"),
            "[cluster]\nname = \"t\"\n[provider]\nkind = \"manual\"\n",
        )
        .expect("config");
        let store = Store::open(&dir.path().join("state.redb")).expect("store");
        let pki = Pki::open(&config, dir.path(), &store).await.expect("pki");
        (dir, store, pki)
    }

    /// A host token enrolls its own host once: not another name, not twice
    /// (not even after the node is removed), not after it expires; the
    /// cluster token is untouched by any of it.
    #[tokio::test]
    async fn a_host_token_enrolls_its_host_once_and_nothing_else() {
        let (_dir, store, pki) = fresh_pki().await;
        let token = pki.issue_host_token(&store, "bee-1").await.expect("issue");
        let csr = |name: &str| apiary_certs::new_key_and_csr(name).expect("csr").1;

        let other = pki.enroll(&store, &token, "bee-2", &csr("bee-2")).await;
        assert!(
            matches!(&other, Err(PkiError::HostTokenOtherNode { token_node, asked }) if token_node == "bee-1" && asked == "bee-2"),
            "{other:?}"
        );
        pki.enroll(&store, &token, "bee-1", &csr("bee-1"))
            .await
            .expect("its own host enrolls");
        pki.remove_node(&store, "bee-1").await.expect("removed");
        let again = pki.enroll(&store, &token, "bee-1", &csr("bee-1")).await;
        assert!(
            matches!(&again, Err(PkiError::HostTokenUsed { node, .. }) if node == "bee-1"),
            "{again:?}"
        );
        // A second token for the same host is its own single use.
        let second = pki.issue_host_token(&store, "bee-1").await.expect("issue");
        pki.enroll(&store, &second, "bee-1", &csr("bee-1"))
            .await
            .expect("a new token for the host enrolls it");

        // Expired: the record is aged by hand (the TTL is at least 1 s).
        let late = pki.issue_host_token(&store, "bee-3").await.expect("issue");
        let hash = late.parse::<JoinToken>().expect("parse").secret_hash();
        let mut record = store.host_token(&hash).expect("read").expect("recorded");
        record.expires_unix = now_unix() - 1;
        store
            .apply(vec![Op::PutHostToken(record)])
            .await
            .expect("age");
        let expired = pki.enroll(&store, &late, "bee-3", &csr("bee-3")).await;
        assert!(
            matches!(&expired, Err(PkiError::HostTokenExpired { node, .. }) if node == "bee-3"),
            "{expired:?}"
        );
        // Each refusal is final for the agent (permission denied), and
        // the cluster token still enrolls.
        for e in [other, again, expired] {
            let status = tonic::Status::from(e.expect_err("refused"));
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
        }
        pki.enroll(&store, &pki.current_token().token, "bee-3", &csr("bee-3"))
            .await
            .expect("the cluster token enrolls");
        // The token itself is never stored, only its hash.
        let snapshot = serde_json::to_string(&store.snapshot().expect("snapshot")).expect("json");
        for t in [&token, &second, &late] {
            let secret = t.rsplit('-').next().expect("secret");
            assert!(!snapshot.contains(secret) && !snapshot.contains(&hex::encode(secret)));
        }
    }

    /// Two agents racing with the same host token: one enrolls, the other is
    /// refused as used (the check and the use are one step).
    #[tokio::test]
    async fn a_host_token_presented_twice_at_once_enrolls_once() {
        let (_dir, store, pki) = fresh_pki().await;
        let token = pki.issue_host_token(&store, "bee-1").await.expect("issue");
        let (_, a) = apiary_certs::new_key_and_csr("bee-1").expect("csr");
        let (_, b) = apiary_certs::new_key_and_csr("bee-1").expect("csr");
        let (ra, rb) = tokio::join!(
            pki.enroll(&store, &token, "bee-1", &a),
            pki.enroll(&store, &token, "bee-1", &b)
        );
        let ok = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "{ra:?} {rb:?}");
        assert!(
            [ra, rb]
                .into_iter()
                .any(|r| matches!(r, Err(PkiError::HostTokenUsed { .. })))
        );
    }

    /// Kept peer certificates are reused, unless an earlier version issued
    /// one without a name this one needs; the admin password is kept too.
    #[tokio::test]
    async fn database_material_is_kept_and_a_certificate_missing_a_name_is_issued_again() {
        let (dir, _store, pki) = fresh_pki().await;
        let old_names = ["etcd-1".to_string(), "tasks.etcd-1".to_string()];
        let old = pki.database_peer_tls("etcd-1", &old_names).expect("issue");
        assert_eq!(
            pki.database_peer_tls("etcd-1", &old_names).expect("kept"),
            old
        );
        let names = crate::database::spec::peer_names("etcd-1");
        let new = pki
            .database_peer_tls("etcd-1", &names)
            .expect("issued again");
        assert_ne!(new.cert_pem, old.cert_pem);
        let has = apiary_certs::certificate_names(&new.cert_pem).expect("parses");
        assert!(has.contains(&"127.0.0.1".to_string()), "{has:?}");
        assert_eq!(pki.database_peer_tls("etcd-1", &names).expect("kept"), new);

        let admin = pki.database_admin("admin").expect("made");
        assert_eq!(pki.database_admin("admin").expect("kept"), admin);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(DATABASE_ADMIN_PASSWORD))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// After a restore, a node's agent may hold a certificate renewed after
    /// the backup: recorded at its session's start, it is revoked with the
    /// rest when the node is removed.
    #[tokio::test]
    async fn a_certificate_the_store_never_saw_is_recorded_and_revoked_on_removal() {
        let (_dir, store, pki) = fresh_pki().await;
        let token = pki.current_token().token;
        let (_, csr) = apiary_certs::new_key_and_csr("bee-1").expect("csr");
        let enrolled = pki
            .enroll(&store, &token, "bee-1", &csr)
            .await
            .expect("enroll");
        let first = PeerIdentity::from_der(&enrolled.cert_der).expect("peer");
        assert!(!pki.record_presented(&store, &first).await.expect("known"));

        // Signed by the same CA, unknown to this store (a renewal after the backup).
        let later = pki
            .ca
            .sign_csr(&csr, "bee-1", Role::Agent, Duration::from_secs(2 * 86400))
            .expect("sign");
        let later = PeerIdentity::from_der(&later.der).expect("peer");
        assert!(pki.record_presented(&store, &later).await.expect("record"));
        assert!(!pki.record_presented(&store, &later).await.expect("again"));
        assert_eq!(
            store
                .node("bee-1")
                .expect("node")
                .expect("bee-1")
                .cert_serial,
            later.serial
        );

        let revoked = pki.remove_node(&store, "bee-1").await.expect("remove");
        assert!(revoked.contains(&first.serial) && revoked.contains(&later.serial));
        assert!(pki.revoked.contains(&later.serial));
    }
}
