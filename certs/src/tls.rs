//! rustls configurations for every connection in the cluster.
//!
//! One server configuration (the coordinator's listener) and two client ones:
//! the enrollment client, which trusts only a CA whose SHA-256 matches the join
//! token, and the mTLS client, which trusts the cluster CA it saved at
//! enrollment and presents its own certificate. TLS 1.3 only: both ends are ours.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName,
    OtherError, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::{CaDigest, CertError, PeerIdentity};

/// ring's suites with AES-128-GCM first: as strong for this use (128-bit
/// security, like the P-256 keys) and about a third cheaper per byte than
/// AES-256-GCM, which the tunnel pays twice per byte and hop. Clients
/// propose in this order and servers follow the client's order.
fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        _ => 3,
    });
    Arc::new(p)
}

fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>, CertError> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec()))?;
    Ok(Arc::new(roots))
}

fn key_from_pem(key_pem: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| CertError::BadCertificate(format!("private key: {e}")))
}

/// Serials the coordinator refuses, shared between its store and its TLS verifier.
#[derive(Debug, Clone, Default)]
pub struct RevocationSet(Arc<RwLock<HashSet<String>>>);

impl RevocationSet {
    pub fn insert(&self, serial: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(serial.to_string());
    }

    pub fn contains(&self, serial: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(serial)
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// webpki's verifier, plus the revocation set. Client certificates are optional
/// at the TLS layer because enrollment happens before a node has one; every
/// other service checks the verified peer's role itself.
#[derive(Debug)]
struct RevokingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: RevocationSet,
}

impl ClientCertVerifier for RevokingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match PeerIdentity::serial_of(end_entity) {
            Some(serial) if self.revoked.contains(&serial) => {
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
            Some(_) => Ok(verified),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The coordinator's listener: presents `[server cert, CA]` (the CA in the chain
/// is what a joining agent pins), verifies client certificates against the CA
/// and the revocation set.
pub fn server_config(
    ca_der: &[u8],
    server_cert_der: &[u8],
    server_key_pem: &str,
    revoked: RevocationSet,
) -> Result<ServerConfig, CertError> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| CertError::Tls(rustls::Error::General(e.to_string())))?;
    let verifier = Arc::new(RevokingClientVerifier { inner, revoked });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![
                CertificateDer::from(server_cert_der.to_vec()),
                CertificateDer::from(ca_der.to_vec()),
            ],
            key_from_pem(server_key_pem)?,
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A plain HTTPS listener (the coordinator's artifact server, fetched by
/// curl on a booting host): presents `[server cert, CA]`, asks for no client
/// certificate, speaks HTTP/1.1 over TLS 1.3 or 1.2 (the host's curl may be
/// older than ours; both versions only with ring's AEAD suites).
pub fn https_server_config(
    ca_der: &[u8],
    server_cert_der: &[u8],
    server_key_pem: &str,
) -> Result<ServerConfig, CertError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(
            vec![
                CertificateDer::from(server_cert_der.to_vec()),
                CertificateDer::from(ca_der.to_vec()),
            ],
            key_from_pem(server_key_pem)?,
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Why the pinned verifier refused a coordinator.
#[derive(Debug)]
struct PinMismatch {
    expected: CaDigest,
    presented: Vec<CaDigest>,
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let presented: Vec<String> = self.presented.iter().map(ToString::to_string).collect();
        write!(
            f,
            "CA sha256 {} expected by the join token, coordinator presented [{}]",
            self.expected,
            presented.join(", ")
        )
    }
}

impl std::error::Error for PinMismatch {}

/// Trusts a coordinator only if its chain contains a CA whose SHA-256 is the
/// token's digest, and its certificate verifies against that CA.
#[derive(Debug)]
struct PinnedCaVerifier {
    digest: CaDigest,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| CaDigest::of(c) == self.digest)
            .ok_or_else(|| {
                let presented = intermediates.iter().map(|c| CaDigest::of(c)).collect();
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    PinMismatch {
                        expected: self.digest,
                        presented,
                    },
                ))))
            })?;
        let roots = roots(ca).map_err(|e| rustls::Error::General(e.to_string()))?;
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// For enrollment: no client certificate, and the coordinator is trusted only
/// through the CA digest pinned in the join token.
pub fn enrollment_client_config(digest: CaDigest) -> Result<ClientConfig, CertError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier { digest }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// For every call after enrollment: trust the cluster CA, present our certificate.
pub fn mtls_client_config(
    ca_der: &[u8],
    cert_der: &[u8],
    key_pem: &str,
) -> Result<ClientConfig, CertError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_der)?)
        .with_client_auth_cert(
            vec![CertificateDer::from(cert_der.to_vec())],
            key_from_pem(key_pem)?,
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A TLS-level refusal, told apart so that users read which one it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsRefusal {
    #[error(
        "the coordinator's CA does not match the join token ({0}); refusing to send anything to it. Check the coordinator address and get the token from this cluster's `coordinator token`"
    )]
    CaMismatch(String),
    #[error(
        "the coordinator refused this certificate: it was revoked (the node was removed with `ctl nodes remove`); re-enroll with a new join token"
    )]
    Revoked,
    #[error(
        "the coordinator refused this certificate: it has expired; re-enroll with a join token (agents) or fetch a new admin.conf (operators)"
    )]
    Expired,
    #[error("the coordinator refused this certificate: it was not issued by this cluster's CA")]
    UnknownCa,
    #[error(
        "the coordinator's certificate is not signed by the CA in our credentials (a different cluster, or its CA was recreated)"
    )]
    ServerUntrusted,
    #[error("TLS handshake failed: {0}")]
    Other(String),
}

/// Finds the TLS error in an error chain (tonic → hyper → io → rustls) and says
/// which refusal it was. `None` when the failure was not a TLS one.
pub fn classify_tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<TlsRefusal> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(from_rustls(r));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(from_rustls(r));
        }
        current = e.source();
    }
    // Some layers flatten the source into text; fall back to the alert names.
    let text = format!("{err:?}");
    for (needle, refusal) in [
        ("CertificateRevoked", TlsRefusal::Revoked),
        ("CertificateExpired", TlsRefusal::Expired),
        ("UnknownCA", TlsRefusal::UnknownCa),
        ("UnknownIssuer", TlsRefusal::ServerUntrusted),
    ] {
        if text.contains(needle) {
            return Some(refusal);
        }
    }
    None
}

fn from_rustls(e: &rustls::Error) -> TlsRefusal {
    match e {
        rustls::Error::AlertReceived(AlertDescription::CertificateRevoked) => TlsRefusal::Revoked,
        rustls::Error::AlertReceived(AlertDescription::CertificateExpired) => TlsRefusal::Expired,
        rustls::Error::AlertReceived(
            AlertDescription::UnknownCA | AlertDescription::BadCertificate,
        ) => TlsRefusal::UnknownCa,
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<PinMismatch>() {
                Some(pin) => TlsRefusal::CaMismatch(pin.to_string()),
                None => TlsRefusal::Other(e.to_string()),
            }
        }
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => TlsRefusal::ServerUntrusted,
        other => TlsRefusal::Other(other.to_string()),
    }
}
