//! `admin.conf`: everything `ctl` needs to reach a cluster (endpoint, CA, admin
//! certificate and key), 0600, like kubeadm's admin.conf.

use std::path::{Path, PathBuf};

use crate::{CertError, Identity, write_private};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum AdminConfError {
    #[error(
        "cannot read {path}: {source} (pass --config, set APIARY_CONFIG, or copy admin.conf from the coordinator's state directory)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(transparent)]
    Cert(#[from] CertError),
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConf {
    pub cluster: String,
    /// HOST:PORT of the coordinator.
    pub endpoint: String,
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for AdminConf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConf")
            .field("cluster", &self.cluster)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl AdminConf {
    pub fn load(path: &Path) -> Result<Self, AdminConfError> {
        let text = std::fs::read_to_string(path).map_err(|source| AdminConfError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| AdminConfError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), AdminConfError> {
        let text = toml::to_string(self).map_err(|e| AdminConfError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(write_private(path, text.as_bytes())?)
    }

    pub fn identity(&self) -> Result<Identity, CertError> {
        Identity::from_pems(&self.key, &self.cert, &self.ca)
    }
}
