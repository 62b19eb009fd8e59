//! The coordinator's errors, and the one place they become exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;

use apiary_certs::AdminConfError;

use crate::config::ConfigError;
use crate::pki::PkiError;
use crate::store::StoreError;

/// Exit codes shared by every program (documented in the README).
pub use apiary_api::exit;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cert(#[from] apiary_certs::CertError),
    #[error(transparent)]
    AdminConf(#[from] AdminConfError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("cannot use state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr}: {source} (is another coordinator running? choose another address with --listen)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(String),
    #[error("lab: {0}")]
    Lab(#[from] apiary_lab::LabError),
    #[error("{0}")]
    Provider(String),
    /// Provider settings that cannot work (a missing token, a bad region): exit 64.
    #[error("{0}")]
    ProviderConfig(String),
    /// The DigitalOcean preflight, run before anything is created: a
    /// refusal (the account, the droplet limit, the region, size, image or
    /// SSH keys) is a setting to change, exit 64; an API that failed to
    /// answer is not.
    #[error("digitalocean preflight: {0}; nothing was created")]
    DigitalOceanPreflight(#[source] apiary_digitalocean::ProviderError),
    /// The artifact listener (the agent binary for booting hosts).
    #[error(transparent)]
    Artifacts(#[from] crate::artifacts::ArtifactError),
    #[error("cannot write man pages to {dir}: {source}")]
    ManPages {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the completion script: {0}")]
    Completions(std::io::Error),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
}

impl CoordinatorError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CoordinatorError::Config(_) | CoordinatorError::ProviderConfig(_) => exit::USAGE,
            CoordinatorError::Artifacts(e) if e.is_config() => exit::USAGE,
            CoordinatorError::DigitalOceanPreflight(e) if e.is_refusal() => exit::USAGE,
            CoordinatorError::Store(StoreError::InUse { .. }) => exit::IN_USE,
            CoordinatorError::Backup(e) => e.exit_code(),
            _ => exit::FAILURE,
        }
    }
}
