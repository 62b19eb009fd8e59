//! The coordinator's errors, and the one place they become exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::admin_conf::AdminConfError;
use crate::config::ConfigError;
use crate::store::StoreError;

/// Exit codes shared by `coordinator` and `ctl` (documented in the README).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILURE: i32 = 1;
    /// A check failed (`ctl checks`).
    pub const CHECK_FAILED: i32 = 2;
    /// Usage or configuration error (sysexits EX_USAGE).
    pub const USAGE: i32 = 64;
    /// The coordinator cannot be reached (EX_UNAVAILABLE).
    pub const UNAVAILABLE: i32 = 69;
    /// The state directory is in use by another coordinator (EX_TEMPFAIL).
    pub const IN_USE: i32 = 75;
    /// Refused: credentials revoked, expired, from another CA, wrong role (EX_NOPERM).
    pub const REFUSED: i32 = 77;
}

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
}

impl CoordinatorError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CoordinatorError::Config(_) | CoordinatorError::ProviderConfig(_) => exit::USAGE,
            CoordinatorError::Artifacts(e) if e.is_config() => exit::USAGE,
            CoordinatorError::Store(StoreError::InUse { .. }) => exit::IN_USE,
            _ => exit::FAILURE,
        }
    }
}
