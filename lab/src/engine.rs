//! Talking to a host's Docker engine on its unix socket (bollard).

use std::path::Path;
use std::time::Duration;

use bollard::{ClientVersion, Docker};
use bytes::Bytes;
use futures::StreamExt;

use crate::error::LabError;

/// docker.io 20.10 speaks API 1.41 and refuses newer clients, so pin it.
pub const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// A client for the engine at `socket`, requests timing out after `timeout`.
pub fn connect(host: &str, socket: &Path, timeout: Duration) -> Result<Docker, LabError> {
    Docker::connect_with_unix(
        &socket.to_string_lossy(),
        timeout.as_secs().max(1),
        &API_VERSION,
    )
    .map_err(|source| LabError::Docker {
        host: host.to_string(),
        action: "connect",
        source,
    })
}

/// The engine's version if it answers now.
pub async fn version(host: &str, socket: &Path, timeout: Duration) -> Result<String, LabError> {
    let docker = connect(host, socket, timeout)?;
    let v = tokio::time::timeout(timeout, docker.version())
        .await
        .map_err(|_| LabError::Docker {
            host: host.to_string(),
            action: "version",
            source: bollard::errors::Error::RequestTimeoutError,
        })?
        .map_err(|source| LabError::Docker {
            host: host.to_string(),
            action: "version",
            source,
        })?;
    Ok(v.version.unwrap_or_default())
}

/// Id of image `reference` in the engine, `None` if it has none.
pub async fn image_id(
    docker: &Docker,
    host: &str,
    reference: &str,
) -> Result<Option<String>, LabError> {
    match docker.inspect_image(reference).await {
        Ok(i) => Ok(i.id),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(source) => Err(LabError::Docker {
            host: host.to_string(),
            action: "inspect image",
            source,
        }),
    }
}

/// `docker load` of an archive held in memory.
pub async fn load(docker: &Docker, host: &str, archive: Bytes) -> Result<(), LabError> {
    let opts = bollard::query_parameters::ImportImageOptionsBuilder::default()
        .quiet(true)
        .build();
    let mut stream = docker.import_image(opts, bollard::body_full(archive), None);
    while let Some(item) = stream.next().await {
        item.map_err(|source| LabError::Docker {
            host: host.to_string(),
            action: "load image",
            source,
        })?;
    }
    Ok(())
}
