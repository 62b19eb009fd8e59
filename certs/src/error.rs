use std::path::PathBuf;

/// Everything that can go wrong with trust material. Each variant says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid {what}: {reason}")]
    Invalid {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("certificate is not valid: {0}")]
    BadCertificate(String),
    #[error("certificate signing request is not valid: {0}")]
    BadCsr(String),
    #[error(
        "malformed join token: {0} (expected APIARY-1-<64 hex digits>-<secret>; print the current one with `coordinator token`)"
    )]
    MalformedToken(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}
