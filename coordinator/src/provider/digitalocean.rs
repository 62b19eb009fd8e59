//! The `digitalocean` provider: droplets tagged with the cluster's tag, booted
//! by cloud-init into a running agent (see the `apiary-digitalocean` crate for
//! the API client, reconcile and the user_data). The coordinator's part is to
//! turn the cluster spec into a target, render the bootstrap with the current
//! join token and the CA, drain surplus nodes before their droplets go, and
//! report what exists.

use std::collections::HashMap;
use std::net::SocketAddr;

use apiary_digitalocean::{
    AgentSource, Bootstrap, Client, ClusterTarget, DigitalOceanConfig, HostName, HostSpec, TagName,
    reconcile, remove, render_user_data, teardown,
};
use tracing::{info, warn};

use crate::config::DigitalOceanProviderConfig;
use crate::error::CoordinatorError;
use crate::progress::Progress;
use crate::server::Coordinator;

/// The agent unit from deploy/, pointed at where cloud-init installs the binary.
const AGENT_UNIT: &str = include_str!("../../../deploy/systemd/apiary-agent.service");

pub struct DigitalOceanProvider {
    client: Client,
    config: DigitalOceanConfig,
    tag: TagName,
    hosts: Vec<String>,
    /// The coordinator's artifact listener: the agent's URL and SHA-256
    /// (used when the config names no `agent_url`).
    coordinator_agent: Option<(url::Url, String)>,
}

fn provider_err(e: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Provider(format!("digitalocean: {e}"))
}

impl DigitalOceanProvider {
    /// Validates the settings against the environment (the token first: a
    /// missing `DIGITALOCEAN_ACCESS_TOKEN` is refused before anything else).
    pub fn new(
        cluster: &str,
        config: &DigitalOceanProviderConfig,
    ) -> Result<Self, CoordinatorError> {
        let validated = config
            .spec
            .validate_from_env()
            .map_err(|e| CoordinatorError::ProviderConfig(e.to_string()))?;
        let tag = TagName::parse(&format!("apiary-{cluster}"))
            .map_err(CoordinatorError::ProviderConfig)?;
        let client = Client::new(&validated).map_err(provider_err)?;
        Ok(DigitalOceanProvider {
            client,
            config: validated,
            tag,
            hosts: config.hosts.clone(),
            coordinator_agent: None,
        })
    }

    /// Hosts fetch the agent from the coordinator's artifact listener at
    /// `url`, and check it against `sha256`.
    pub fn with_coordinator_agent(mut self, url: url::Url, sha256: String) -> Self {
        self.coordinator_agent = Some((url, sha256));
        self
    }

    fn user_data(
        &self,
        coordinator: &Coordinator,
        advertise: SocketAddr,
    ) -> Result<String, CoordinatorError> {
        let source = match (&self.config.agent, &self.coordinator_agent) {
            (Some(_), _) => AgentSource::for_config(
                &self.config,
                "https://unused.invalid/".parse().map_err(provider_err)?,
                String::new(),
            ),
            (None, Some((url, sha256))) => {
                AgentSource::for_config(&self.config, url.clone(), sha256.clone())
            }
            // `serve` starts the listener whenever agent_url is absent.
            (None, None) => {
                return Err(CoordinatorError::ProviderConfig(
                    "digitalocean: hosts need the agent binary: set digitalocean.agent_url, or let the coordinator serve it (its artifact listener is not running)".into(),
                ));
            }
        };
        let mut bootstrap = Bootstrap::new(
            advertise.to_string(),
            coordinator.current_token().token,
            coordinator.ca().cert_pem(),
            source,
        );
        bootstrap.systemd_unit = Some(AGENT_UNIT.replace(
            "/usr/local/bin/agent",
            apiary_digitalocean::cloud_init::AGENT_BINARY_PATH,
        ));
        // No node name: each droplet's name is its hostname, which the agent
        // takes, so all hosts share one user_data and one create request per ten.
        render_user_data(&bootstrap).map_err(provider_err)
    }

    /// Makes the droplets match the spec: creates the missing, adopts what
    /// exists (a restarted coordinator never duplicates), drains and removes
    /// the surplus.
    pub async fn bring_up(
        &self,
        coordinator: &Coordinator,
        advertise: SocketAddr,
        progress: &Progress,
    ) -> Result<(), CoordinatorError> {
        let user_data = self.user_data(coordinator, advertise)?;
        let hosts = self
            .hosts
            .iter()
            .map(|h| {
                Ok(HostSpec {
                    name: HostName::parse(h).map_err(CoordinatorError::ProviderConfig)?,
                    user_data: user_data.clone(),
                })
            })
            .collect::<Result<Vec<_>, CoordinatorError>>()?;
        let phase = progress.phase("droplets", hosts.len());
        let report = reconcile(
            &self.client,
            &ClusterTarget::new(&self.config, self.tag.clone(), hosts),
        )
        .await
        .map_err(provider_err)?;
        let mut info = HashMap::new();
        for h in &report.hosts {
            phase.step(
                &h.name,
                &format!(
                    "droplet {} {} (private {})",
                    h.id,
                    h.status,
                    h.private_ipv4
                        .map(|ip| ip.to_string())
                        .unwrap_or_else(|| "-".into())
                ),
            );
            info.insert(
                h.name.clone(),
                HashMap::from([
                    ("provider".to_string(), "digitalocean".to_string()),
                    ("droplet_id".to_string(), h.id.to_string()),
                    ("region".to_string(), self.config.droplet.region.clone()),
                ]),
            );
        }
        coordinator.set_provider_info(info);
        phase.finish();
        info!(
            created = report.created.len(),
            adopted = report.adopted.len(),
            "droplets reconciled"
        );
        if !report.surplus.is_empty() {
            // Drain first (its database server, then Swarm), then the node
            // leaves the cluster (its certificate is revoked), then its
            // droplet is deleted.
            for h in &report.surplus {
                let name = &h.name;
                if let Err(e) = coordinator.drain_and_remove(name).await {
                    warn!(node = %name, error = %e.message(), "draining a surplus node");
                }
            }
            let names = report
                .surplus
                .iter()
                .filter_map(|h| HostName::parse(&h.name).ok())
                .collect::<Vec<_>>();
            let removed = remove(&self.client, &self.tag, &names)
                .await
                .map_err(provider_err)?;
            info!(%removed, "surplus droplets removed");
        }
        Ok(())
    }

    /// Deletes everything with the cluster's tag and says what.
    pub async fn teardown(&self) -> Result<String, CoordinatorError> {
        Ok(teardown(&self.client, &self.tag)
            .await
            .map_err(provider_err)?
            .to_string())
    }
}
