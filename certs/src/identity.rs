use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

use crate::ca::pem_to_der;
use crate::files::{read, write_private};
use crate::{CaDigest, CertError, PeerIdentity};

/// A private key and a CSR for `node`. The key never leaves the host that made it.
pub fn new_key_and_csr(node: &str) -> Result<(KeyPair, Vec<u8>), CertError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let csr = csr_for(&key, node)?;
    Ok((key, csr))
}

pub(crate) fn csr_for(key: &KeyPair, node: &str) -> Result<Vec<u8>, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    params.distinguished_name = dn;
    Ok(params.serialize_request(key)?.der().to_vec())
}

/// A node's (or an operator's) credentials: key, certificate and the cluster CA,
/// kept as three 0600 files in a directory.
#[derive(Clone)]
pub struct Identity {
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub ca_der: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("peer", &self.peer().ok())
            .finish_non_exhaustive()
    }
}

const KEY_FILE: &str = "node.key";
const CERT_FILE: &str = "node.pem";
const CA_FILE: &str = "ca.pem";

impl Identity {
    pub fn peer(&self) -> Result<PeerIdentity, CertError> {
        PeerIdentity::from_der(&self.cert_der)
    }

    pub fn ca_digest(&self) -> CaDigest {
        CaDigest::of(&self.ca_der)
    }

    pub fn key_der(&self) -> Result<Vec<u8>, CertError> {
        KeyPair::from_pem(&self.key_pem)
            .map(|k| k.serialize_der())
            .map_err(|e| CertError::BadCertificate(format!("private key: {e}")))
    }

    /// A CSR for a renewed certificate with the same key and name.
    pub fn renewal_csr(&self) -> Result<Vec<u8>, CertError> {
        let key = KeyPair::from_pem(&self.key_pem)
            .map_err(|e| CertError::BadCertificate(format!("private key: {e}")))?;
        csr_for(&key, &self.peer()?.node)
    }

    /// Fraction of the certificate's life used so far, given when it was issued
    /// (not_before is not needed: renewal is planned from the issue time kept by the holder).
    pub fn expires_at(&self) -> Result<SystemTime, CertError> {
        Ok(self.peer()?.not_after)
    }

    pub fn exists(dir: &Path) -> bool {
        dir.join(KEY_FILE).exists() && dir.join(CERT_FILE).exists() && dir.join(CA_FILE).exists()
    }

    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let der = |file: &str, what: &'static str| -> Result<Vec<u8>, CertError> {
            let path: PathBuf = dir.join(file);
            pem_to_der(&read(&path)?).ok_or(CertError::Invalid {
                path,
                what,
                reason: "no PEM certificate block".into(),
            })
        };
        Ok(Identity {
            key_pem: read(&dir.join(KEY_FILE))?,
            cert_der: der(CERT_FILE, "certificate")?,
            ca_der: der(CA_FILE, "CA certificate")?,
        })
    }

    /// Saves all three files (0600). The certificate is written last, so a crash
    /// in between leaves the previous, still matching, pair in place.
    pub fn save(&self, dir: &Path) -> Result<(), CertError> {
        write_private(&dir.join(CA_FILE), der_to_pem(&self.ca_der).as_bytes())?;
        write_private(&dir.join(KEY_FILE), self.key_pem.as_bytes())?;
        write_private(&dir.join(CERT_FILE), der_to_pem(&self.cert_der).as_bytes())
    }

    pub fn cert_pem(&self) -> String {
        der_to_pem(&self.cert_der)
    }

    pub fn ca_pem(&self) -> String {
        der_to_pem(&self.ca_der)
    }

    pub fn from_pems(key_pem: &str, cert_pem: &str, ca_pem: &str) -> Result<Self, CertError> {
        let bad =
            |what: &str| CertError::BadCertificate(format!("{what}: no PEM certificate block"));
        Ok(Identity {
            key_pem: key_pem.to_string(),
            cert_der: pem_to_der(cert_pem).ok_or_else(|| bad("certificate"))?,
            ca_der: pem_to_der(ca_pem).ok_or_else(|| bad("CA certificate"))?,
        })
    }
}

pub(crate) fn der_to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())).replace("\r\n", "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClusterCa, Role};
    use std::time::Duration;

    #[test]
    fn identity_round_trips_through_files() {
        let ca = ClusterCa::generate("t").expect("ca");
        let (key, csr) = new_key_and_csr("n1").expect("csr");
        let cert = ca
            .sign_csr(&csr, "n1", Role::Agent, Duration::from_secs(60))
            .expect("sign");
        let id = Identity {
            key_pem: key.serialize_pem(),
            cert_der: cert.der,
            ca_der: ca.cert_der().to_vec(),
        };
        let dir = tempfile::tempdir().expect("tmp");
        id.save(dir.path()).expect("save");
        let back = Identity::load(dir.path()).expect("load");
        assert_eq!(back.cert_der, id.cert_der);
        assert_eq!(back.ca_digest(), ca.digest());
        assert_eq!(back.peer().expect("peer").node, "n1");
        // PEM written by hand matches what rcgen writes.
        assert_eq!(
            der_to_pem(ca.cert_der()).trim(),
            ca.cert_pem().trim().replace("\r\n", "\n")
        );
    }
}
