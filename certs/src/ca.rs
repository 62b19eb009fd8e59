use std::path::Path;
use std::time::{Duration, SystemTime};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;

use crate::files::{read, write_private};
use crate::{COORDINATOR_SERVER_NAME, CaDigest, CertError, Role};

/// A certificate the CA issued, with what the coordinator records about it.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub der: Vec<u8>,
    pub pem: String,
    /// Lower-case hex, no separators: the key of the revocation set.
    pub serial: String,
    pub not_after: SystemTime,
}

/// The cluster's certificate authority. Only the coordinator holds one.
pub struct ClusterCa {
    cert_der: Vec<u8>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterCa({})", self.digest())
    }
}

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";

impl ClusterCa {
    /// A fresh CA for `cluster`, valid ten years.
    pub fn generate(cluster: &str) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("apiary CA for {cluster}"), None);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA from `dir`, or creates it there (key 0600) on first start.
    /// Returns whether it was created.
    pub fn load_or_create(dir: &Path, cluster: &str) -> Result<(Self, bool), CertError> {
        if dir.join(CA_KEY_FILE).exists() {
            return Ok((Self::load(dir)?, false));
        }
        let ca = Self::generate(cluster)?;
        // Key first: a CA certificate without its key would be unusable.
        write_private(
            &dir.join(CA_KEY_FILE),
            ca.issuer.key().serialize_pem().as_bytes(),
        )?;
        write_private(&dir.join(CA_CERT_FILE), ca.cert_pem.as_bytes())?;
        Ok((ca, true))
    }

    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| CertError::Invalid {
            path: key_path.clone(),
            what: "CA private key",
            reason: e.to_string(),
        })?;
        let cert_pem = read(&cert_path)?;
        let cert_der = pem_to_der(&cert_pem).ok_or_else(|| CertError::Invalid {
            path: cert_path.clone(),
            what: "CA certificate",
            reason: "no PEM certificate block".into(),
        })?;
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.clone()), key)
            .map_err(|e| CertError::Invalid {
                path: cert_path,
                what: "CA certificate",
                reason: e.to_string(),
            })?;
        Ok(ClusterCa {
            cert_der,
            cert_pem,
            issuer,
        })
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn digest(&self) -> CaDigest {
        CaDigest::of(&self.cert_der)
    }

    fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Signs an agent's CSR. Only the public key is taken from the request: the
    /// name and the role are the coordinator's decision, never the requester's.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        node: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<IssuedCert, CertError> {
        let now = SystemTime::now();
        self.sign_csr_valid(csr_der, node, role, now - backdate(ttl), now + ttl)
    }

    /// As [`Self::sign_csr`] with an explicit validity window (tests make expired certificates with it).
    pub fn sign_csr_valid(
        &self,
        csr_der: &[u8],
        node: &str,
        role: Role,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, CertError> {
        let mut csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| CertError::BadCsr(e.to_string()))?;
        csr.params = leaf_params(node, role, not_before, not_after)?;
        let cert = csr.signed_by(self.issuer())?;
        issued(cert.der().to_vec(), cert.pem(), &csr.params)
    }

    /// Issues a certificate together with a new key (for the coordinator's own
    /// server certificate and for admin identities, which are made on this host).
    pub fn issue_with_key(
        &self,
        node: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<(IssuedCert, String), CertError> {
        self.issue_new_key(node, role, None, ttl)
    }

    /// A coordinator server certificate (and a new key) valid for `names`:
    /// IP addresses and DNS names as written (an IP becomes an IP SAN). For
    /// listeners that clients reach by address with ordinary hostname
    /// checks, such as curl on a booting host fetching the agent binary.
    pub fn issue_server_with_key(
        &self,
        names: &[String],
        ttl: Duration,
    ) -> Result<(IssuedCert, String), CertError> {
        self.issue_new_key("coordinator", Role::Coordinator, Some(names), ttl)
    }

    /// A database server's peer certificate (and a new key): valid for
    /// `names` (the server's names on the overlay) as DNS names, for
    /// serving and for dialing, common name [`DATABASE_PEER_CN`], role
    /// `database`.
    pub fn issue_database_peer(
        &self,
        names: &[String],
        ttl: Duration,
    ) -> Result<(IssuedCert, String), CertError> {
        self.issue_new_key(DATABASE_PEER_CN, Role::Database, Some(names), ttl)
    }

    /// A database client's certificate (and a new key), for an operator or
    /// an application talking to a database that checks client
    /// certificates (etcd's `--client-cert-auth`): common name
    /// [`DATABASE_CLIENT_CN`], which a peer's check (`--peer-cert-allowed-cn`)
    /// refuses, and role `database`, which the coordinator's APIs refuse.
    pub fn issue_database_client(&self, ttl: Duration) -> Result<(IssuedCert, String), CertError> {
        let names = [DATABASE_CLIENT_CN.replace(' ', "-")];
        self.issue_new_key(DATABASE_CLIENT_CN, Role::Database, Some(&names), ttl)
    }

    /// A certificate with a new P-256 key, valid from now (less the
    /// backdate) for `ttl`; `names` replace the role's default SANs.
    fn issue_new_key(
        &self,
        common_name: &str,
        role: Role,
        names: Option<&[String]>,
        ttl: Duration,
    ) -> Result<(IssuedCert, String), CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = SystemTime::now();
        let mut params = leaf_params(common_name, role, now - backdate(ttl), now + ttl)?;
        if let Some(names) = names {
            params.subject_alt_names = CertificateParams::new(names.to_vec())?.subject_alt_names;
        }
        let cert = params.signed_by(&key, self.issuer())?;
        Ok((
            issued(cert.der().to_vec(), cert.pem(), &params)?,
            key.serialize_pem(),
        ))
    }
}

/// The common name of every database peer certificate. Database servers
/// admit a peer only with this name (etcd's `--peer-cert-allowed-cn`), so
/// an agent's or an admin's certificate, from the same CA, cannot join the
/// database's peer network. It holds spaces, which no host name can.
pub const DATABASE_PEER_CN: &str = "apiary database peer";
/// The common name of database client certificates
/// ([`ClusterCa::issue_database_client`]).
pub const DATABASE_CLIENT_CN: &str = "apiary database client";

/// Certificates start a little in the past to tolerate clock skew between
/// hosts, but never by more than a tenth of their life: holders plan renewal
/// from not_before, and a large backdate on a short life would make them renew
/// at once.
fn backdate(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_secs(60))
}

fn issued(der: Vec<u8>, pem: String, params: &CertificateParams) -> Result<IssuedCert, CertError> {
    let serial = params
        .serial_number
        .as_ref()
        .map(|s| hex::encode(s.to_bytes()))
        .unwrap_or_default();
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(params.not_after.unix_timestamp().max(0) as u64);
    Ok(IssuedCert {
        der,
        pem,
        serial,
        not_after,
    })
}

fn leaf_params(
    node: &str,
    role: Role,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, CertError> {
    let sans = match role {
        Role::Coordinator => vec![COORDINATOR_SERVER_NAME.to_string()],
        Role::Agent | Role::Admin | Role::Database => vec![],
    };
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name = name(node, Some(role));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Coordinator => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Role::Agent | Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
        // A database server presents one certificate both ways: listening
        // for its peers and dialing them.
        Role::Database => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    params.not_before = to_offset(not_before);
    params.not_after = to_offset(not_after);
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn name(common_name: &str, role: Option<Role>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "apiary");
    if let Some(role) = role {
        dn.push(DnType::OrganizationalUnitName, role.as_str());
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // no leading zero byte, so the hex form is canonical
    SerialNumber::from_slice(&bytes)
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// First CERTIFICATE block of a PEM text, as DER.
pub(crate) fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

/// The DNS names and IP addresses a PEM certificate is valid for (its
/// subject alternative names, IPs written as text); `None` when it does not
/// parse.
pub fn certificate_names(pem: &str) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let der = pem_to_der(pem)?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der).ok()?;
    let Ok(Some(san)) = x509.subject_alternative_name() else {
        return Some(Vec::new());
    };
    Some(
        san.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                    16 => <[u8; 16]>::try_from(*b)
                        .ok()
                        .map(|a| std::net::Ipv6Addr::from(a).to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PeerIdentity, new_key_and_csr};

    #[test]
    fn signs_csr_with_coordinator_chosen_name_and_role() {
        let ca = ClusterCa::generate("t").expect("ca");
        let (_key, csr) = new_key_and_csr("evil-requested-name").expect("csr");
        let cert = ca
            .sign_csr(&csr, "node-1", Role::Agent, Duration::from_secs(3600))
            .expect("sign");
        let peer = PeerIdentity::from_der(&cert.der).expect("parse");
        assert_eq!(peer.node, "node-1");
        assert_eq!(peer.role, Role::Agent);
        assert_eq!(peer.serial, cert.serial);
        let life = cert
            .not_after
            .duration_since(SystemTime::now())
            .expect("future");
        assert!(life <= Duration::from_secs(3600) && life > Duration::from_secs(3500));
    }

    #[test]
    fn garbage_csr_is_refused() {
        let ca = ClusterCa::generate("t").expect("ca");
        let err = ca
            .sign_csr(b"nope", "n", Role::Agent, Duration::from_secs(1))
            .expect_err("garbage");
        assert!(matches!(err, CertError::BadCsr(_)));
    }

    #[test]
    fn load_or_create_persists_key_0600_and_reloads_same_ca() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, created) = ClusterCa::load_or_create(dir.path(), "t").expect("create");
        assert!(created);
        let (again, created) = ClusterCa::load_or_create(dir.path(), "t").expect("load");
        assert!(!created);
        assert_eq!(ca.digest(), again.digest());
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The reloaded CA still signs certificates that chain to the same root.
        let (_k, csr) = new_key_and_csr("x").expect("csr");
        again
            .sign_csr(&csr, "x", Role::Agent, Duration::from_secs(60))
            .expect("sign after reload");
    }

    #[test]
    fn a_database_peer_certificate_serves_and_dials_under_its_names_only() {
        let ca = ClusterCa::generate("t").expect("ca");
        let names = ["etcd-2".to_string(), "tasks.etcd-2".to_string()];
        let (cert, key) = ca
            .issue_database_peer(&names, Duration::from_secs(3600))
            .expect("issue");
        assert!(key.contains("PRIVATE KEY"));
        let peer = PeerIdentity::from_der(&cert.der).expect("parse");
        assert_eq!(
            (peer.node.as_str(), peer.role),
            (DATABASE_PEER_CN, Role::Database)
        );
        let (_, x509) = x509_parser::parse_x509_certificate(&cert.der).expect("x509");
        let eku = x509
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(eku.server_auth && eku.client_auth, "{eku:?}");
        let sans: Vec<String> = x509
            .subject_alternative_name()
            .expect("san")
            .expect("present")
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(sans, ["DNSName(etcd-2)", "DNSName(tasks.etcd-2)"]);
        assert_eq!(
            certificate_names(&cert.pem).expect("parses"),
            ["etcd-2", "tasks.etcd-2"]
        );
        let (with_ip, _) = ca
            .issue_database_peer(
                &["etcd-2".into(), "127.0.0.1".into()],
                Duration::from_secs(60),
            )
            .expect("issue");
        assert_eq!(
            certificate_names(&with_ip.pem).expect("parses"),
            ["etcd-2", "127.0.0.1"]
        );
        // An agent's certificate from the same CA never has that name.
        let (_k, csr) = new_key_and_csr("x").expect("csr");
        let agent = ca
            .sign_csr(&csr, "etcd-2", Role::Agent, Duration::from_secs(60))
            .expect("sign");
        assert_ne!(
            PeerIdentity::from_der(&agent.der).expect("parse").node,
            DATABASE_PEER_CN
        );
    }
}
