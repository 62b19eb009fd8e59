//! `coordinator serve`: open the state, listen, hand out admin credentials, and
//! run the provider that makes hosts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::info;

use crate::config::{ClusterConfig, ProviderConfig};
use crate::error::CoordinatorError;
use crate::server::Coordinator;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config: ClusterConfig,
    pub state_dir: PathBuf,
    pub listen: Option<SocketAddr>,
}

/// Binds, writes admin.conf, and serves until `shutdown`.
pub async fn serve(
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordinatorError> {
    let addr = opts.listen.unwrap_or(opts.config.listen);
    if let ProviderConfig::DigitalOcean(_) = opts.config.provider {
        return Err(CoordinatorError::Provider(
            "provider digitalocean is not wired into `coordinator serve` yet (see the DigitalOcean issue); use kind = \"manual\" or \"lab\"".into(),
        ));
    }
    let coordinator = Coordinator::open(opts.config.clone(), &opts.state_dir).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| CoordinatorError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| CoordinatorError::Bind { addr, source })?;
    let admin_conf = coordinator.write_admin_conf(local)?;
    info!(listen = %local, admin_conf = %admin_conf.display(), cluster = %opts.config.cluster_name, provider = opts.config.provider.kind(), "coordinator ready");
    run_with(coordinator, listener, shutdown).await
}

async fn run_with(
    coordinator: Arc<Coordinator>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordinatorError> {
    coordinator.serve(listener, shutdown).await
}
