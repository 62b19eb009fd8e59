use std::time::{Duration, SystemTime};

use x509_parser::prelude::*;

use crate::CertError;

/// What a certificate says about its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Admin,
    Coordinator,
    /// A database server's peer certificate (see
    /// [`ClusterCa::issue_database_peer`](crate::ClusterCa::issue_database_peer)):
    /// the coordinator's APIs refuse it, they accept only agents and admins.
    Database,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::Coordinator => "coordinator",
            Role::Database => "database",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "agent" => Some(Role::Agent),
            "admin" => Some(Role::Admin),
            "coordinator" => Some(Role::Coordinator),
            "database" => Some(Role::Database),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity read from a verified peer certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node: String,
    pub role: Role,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl PeerIdentity {
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| CertError::BadCertificate(e.to_string()))?;
        let subject = cert.subject();
        let first = |it: &mut dyn Iterator<Item = &AttributeTypeAndValue>| {
            it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
        };
        let node = first(&mut subject.iter_common_name())
            .ok_or_else(|| CertError::BadCertificate("no common name".into()))?;
        let role = first(&mut subject.iter_organizational_unit())
            .and_then(|r| Role::parse(&r))
            .ok_or_else(|| {
                CertError::BadCertificate("no apiary role (OU) in the certificate".into())
            })?;
        let serial = hex::encode(cert.raw_serial());
        let at = |t: &ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
        };
        Ok(PeerIdentity {
            node,
            role,
            serial,
            not_before: at(&cert.validity().not_before),
            not_after: at(&cert.validity().not_after),
        })
    }

    /// Serial of a DER certificate, in the same form as [`PeerIdentity::serial`].
    pub fn serial_of(der: &[u8]) -> Option<String> {
        X509Certificate::from_der(der)
            .ok()
            .map(|(_, c)| hex::encode(c.raw_serial()))
    }
}
