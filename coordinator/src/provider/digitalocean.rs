//! The `digitalocean` provider: droplets tagged with the cluster's tag, booted
//! by cloud-init into a running agent (see the `apiary-digitalocean` crate for
//! the API client, reconcile and the user_data). The coordinator's part is to
//! turn the cluster spec into a target, render the bootstrap with the current
//! join token, the CA and the VPC's range, drain surplus nodes before their
//! droplets go, and report what exists.
//!
//! Surplus droplets are drained one at a time, highest-numbered first
//! ([`next_surplus_step`] decides, without I/O). A droplet whose node cannot
//! be drained is kept, with an event and a log line naming the node and the
//! reason, and tried again at the next reconcile: deleting it anyway could
//! take a live etcd member (and the quorum it counts in) down with it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use apiary_digitalocean::{
    AgentSource, Bootstrap, Client, ClusterTarget, DigitalOceanConfig, HostName, HostSpec,
    Ipv4Cidr, PreflightReport, PreflightTarget, TagName, ensure_vpc, preflight, reconcile, remove,
    render_user_data, teardown,
};
use tracing::{info, warn};

use crate::config::DigitalOceanProviderConfig;
use crate::core::Coordinator;
use crate::error::CoordinatorError;
use crate::events::EventKind;
use crate::progress::Progress;

/// The agent unit from deploy/, pointed at where cloud-init installs the binary.
const AGENT_UNIT: &str = include_str!("../../../deploy/systemd/apiary-agent.service");

pub struct DigitalOceanProvider {
    client: Client,
    config: DigitalOceanConfig,
    tag: TagName,
    /// The droplets wanted: the spec's, until `ctl scale hosts=N` changes them.
    hosts: std::sync::RwLock<Vec<String>>,
    /// One reconcile at a time (the periodic one and a scale's): two at
    /// once could each create the same missing droplet.
    reconciling: tokio::sync::Mutex<()>,
    /// The coordinator's artifact listener: the agent's URL and SHA-256
    /// (used when the config names no `agent_url`).
    coordinator_agent: Option<(url::Url, String)>,
    /// The most hosts a passed preflight was run for (0: none passed yet).
    /// A reconcile that wants more runs it again before creating anything.
    preflighted: std::sync::atomic::AtomicUsize,
    /// How many times each host's droplet was replaced for not enrolling
    /// (this run; see [`overdue_droplets`]).
    replaced: std::sync::Mutex<HashMap<String, u32>>,
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
            hosts: std::sync::RwLock::new(config.hosts.clone()),
            reconciling: tokio::sync::Mutex::new(()),
            coordinator_agent: None,
            preflighted: std::sync::atomic::AtomicUsize::new(0),
            replaced: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The API client (`coordinator up` makes the coordinator droplet with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The validated droplet, VPC and firewall settings.
    pub fn settings(&self) -> &DigitalOceanConfig {
        &self.config
    }

    /// The cluster tag every host droplet carries.
    pub fn tag(&self) -> &TagName {
        &self.tag
    }

    /// The droplets wanted now.
    pub fn planned(&self) -> Vec<String> {
        self.hosts.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wants `names` from now on (the next reconcile makes or drains).
    pub fn replan(&self, names: Vec<String>) {
        *self.hosts.write().unwrap_or_else(|p| p.into_inner()) = names;
    }

    /// Checks the account against the droplets wanted now, reading only:
    /// active, room under the droplet limit for the droplets still to
    /// make, region, size, image, SSH keys. `serve` runs it before any
    /// state or resource exists (a refusal exits 64 with nothing created);
    /// [`Self::bring_up`] runs it again before creating when more hosts are
    /// wanted than it last passed for (`ctl scale hosts=N`, a recorded count).
    pub async fn preflight(&self) -> Result<PreflightReport, CoordinatorError> {
        let hosts = self
            .planned()
            .iter()
            .map(|h| {
                HostName::parse(h).map_err(|e| CoordinatorError::ProviderConfig(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let report = preflight(
            &self.client,
            &PreflightTarget {
                droplet: &self.config.droplet,
                tag: &self.tag,
                hosts: &hosts,
            },
        )
        .await
        .map_err(CoordinatorError::DigitalOceanPreflight)?;
        self.preflighted
            .fetch_max(hosts.len(), std::sync::atomic::Ordering::SeqCst);
        Ok(report)
    }

    /// Hosts fetch the agent from the coordinator's artifact listener at
    /// `url`, and check it against `sha256`.
    pub fn with_coordinator_agent(mut self, url: url::Url, sha256: String) -> Self {
        self.coordinator_agent = Some((url, sha256));
        self
    }

    async fn user_data(
        &self,
        coordinator: &Coordinator,
        advertise: SocketAddr,
        vpc_range: Ipv4Cidr,
        host: &HostName,
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
        // A host token: single-use, for this droplet's name, expiring. The
        // droplet's metadata service serves user_data to whoever asks on
        // the droplet for as long as it lives; once the agent has enrolled,
        // the copy there enrolls nothing.
        let token = coordinator
            .pki
            .issue_host_token(&coordinator.store, host.as_str())
            .await?;
        let mut bootstrap = Bootstrap::new(
            advertise.to_string(),
            token,
            coordinator.pki.ca().cert_pem(),
            source,
        );
        bootstrap.systemd_unit = Some(AGENT_UNIT.replace(
            "/usr/local/bin/agent",
            apiary_digitalocean::cloud_init::AGENT_BINARY_PATH,
        ));
        // The agent's private address (what Swarm advertises) is its VPC
        // address: eth0 holds a 10.x anchor address too, which "the first
        // RFC 1918 address" could pick.
        bootstrap.private_cidr = Some(vpc_range);
        bootstrap.tunnel_allow = Some(coordinator.config().tunnel_allow.clone());
        // The node name the token is bound to (also the droplet's name and
        // hostname): one user_data, and one create request, per droplet.
        bootstrap.node_name = Some(host.clone());
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
        let _one_at_a_time = self.reconciling.lock().await;
        // Nothing is created for more hosts than a preflight passed for.
        if self.planned().len() > self.preflighted.load(std::sync::atomic::Ordering::SeqCst) {
            self.preflight().await?;
        }
        let mut target = ClusterTarget::new(&self.config, self.tag.clone(), Vec::new());
        // The VPC first: its range goes into the user_data.
        let vpc = ensure_vpc(&self.client, &target)
            .await
            .map_err(provider_err)?;
        let range = vpc
            .ip_range
            .as_deref()
            .map(Ipv4Cidr::parse)
            .transpose()
            .map_err(|e| provider_err(format!("VPC {} has an unusable ip_range: {e}", vpc.name)))?
            .ok_or_else(|| provider_err(format!("VPC {} has no ip_range", vpc.name)))?;
        // user_data (and its single-use token) only for the droplets that
        // do not exist: the others are adopted, and a token made for them
        // would never be used.
        let listed = self
            .client
            .list_droplets_by_tag(self.tag.as_str())
            .await
            .map_err(provider_err)?;
        // Droplets up for a while whose agent never enrolled are deleted
        // here, and so made again below, with a new token.
        let listed = self.replace_overdue(coordinator, listed).await?;
        let existing: std::collections::HashSet<String> =
            listed.into_iter().map(|d| d.name).collect();
        for h in self.planned() {
            let name =
                HostName::parse(&h).map_err(|e| CoordinatorError::ProviderConfig(e.to_string()))?;
            let user_data = if existing.contains(&h) {
                None
            } else {
                Some(self.user_data(coordinator, advertise, range, &name).await?)
            };
            target.hosts.push(HostSpec { name, user_data });
        }
        // The identities the cluster knows before any droplet is made: what
        // a droplet made anew may replace (see below).
        let known: HashMap<String, String> = coordinator
            .store
            .nodes()?
            .into_iter()
            .map(|n| (n.name, n.cert_serial))
            .collect();
        let phase = progress.phase("droplets", target.hosts.len());
        let report = reconcile(&self.client, &target)
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
        coordinator.view.set_provider_info(info);
        phase.finish();
        info!(
            created = report.created.len(),
            adopted = report.adopted.len(),
            "droplets reconciled"
        );
        // A droplet made anew under a name the cluster knew before (the old
        // one was deleted behind apiary's back): apiary made the new one, so
        // it says the old one is gone; a join token alone never takes over
        // a live name. Only the identity known before is revoked: the new
        // droplet's agent may have enrolled already (when the old identity
        // had run out), and otherwise it is refused until now and enrolls on
        // its retry.
        for name in report.created.iter().chain(&report.recovered) {
            let Some(old_serial) = known.get(name) else {
                continue;
            };
            let still_old = coordinator
                .store
                .node(name)?
                .is_some_and(|n| n.cert_serial == *old_serial);
            if still_old {
                info!(node = %name, "droplet made anew; the old node's identity is revoked");
                coordinator.remove_node(name).await?;
            }
        }
        if !report.surplus.is_empty() {
            self.remove_surplus(coordinator, &report.surplus).await?;
        }
        Ok(())
    }

    /// How long a droplet may take to enroll (`digitalocean.enroll_timeout`).
    pub fn enroll_timeout(&self) -> Duration {
        self.config.timeouts.enroll
    }

    /// How long between two reconciles: a minute, or less when the enroll
    /// timeout is shorter (a droplet is replaced within about one interval
    /// of its deadline).
    pub fn reconcile_interval(&self) -> Duration {
        (self.config.timeouts.enroll / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Deletes the droplets [`overdue_droplets`] says to replace, says
    /// (log, event) which it gave up on, and returns the listing without
    /// the deleted ones.
    async fn replace_overdue(
        &self,
        coordinator: &Coordinator,
        listed: Vec<apiary_digitalocean::model::Droplet>,
    ) -> Result<Vec<apiary_digitalocean::model::Droplet>, CoordinatorError> {
        let enrolled: std::collections::HashSet<String> = coordinator
            .store
            .nodes()?
            .into_iter()
            .map(|n| n.name)
            .collect();
        let now = std::time::SystemTime::now();
        // The coordinator's own droplet (`coordinator up --on-host`) is
        // never replaced: that would delete the coordinator.
        let own = format!("{}-coordinator", self.tag.as_str());
        let booted: Vec<BootedDroplet> = listed
            .iter()
            .filter(|d| d.status == apiary_digitalocean::model::DropletStatus::Active)
            .filter(|d| !d.tags.iter().any(|t| t.eq_ignore_ascii_case(&own)))
            .map(|d| BootedDroplet {
                name: d.name.clone(),
                id: d.id,
                up_for: d
                    .created_at
                    .as_deref()
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
                    .and_then(|t| now.duration_since(t).ok())
                    .unwrap_or_default(),
            })
            .collect();
        let decision = {
            let replaced = self.replaced.lock().unwrap_or_else(|p| p.into_inner());
            overdue_droplets(
                &booted,
                &enrolled,
                self.config.timeouts.enroll,
                &replaced,
                MAX_DROPLET_REPLACEMENTS,
            )
        };
        for d in &decision.given_up {
            let message = self.never_enrolled(d);
            warn!(node = %d.name, droplet = d.id, "{message}");
            coordinator
                .events
                .emit(EventKind::DropletNotEnrolled, &d.name, message);
            // Said once: past `max`, the host is neither replaced nor
            // reported again.
            *self
                .replaced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(d.name.clone())
                .or_default() += 1;
        }
        let mut deleted = Vec::new();
        for d in &decision.replace {
            self.client
                .delete_droplet(d.id)
                .await
                .map_err(provider_err)?;
            let attempt = {
                let mut replaced = self.replaced.lock().unwrap_or_else(|p| p.into_inner());
                let n = replaced.entry(d.name.clone()).or_default();
                *n += 1;
                *n
            };
            let message = format!(
                "droplet {} never enrolled within {} of booting; deleted, made again with a new host token (replacement {attempt} of {MAX_DROPLET_REPLACEMENTS})",
                d.id,
                humantime::format_duration(self.config.timeouts.enroll)
            );
            warn!(node = %d.name, droplet = d.id, "{message}");
            coordinator
                .events
                .emit(EventKind::DropletNotEnrolled, &d.name, message);
            deleted.push(d.id);
        }
        Ok(listed
            .into_iter()
            .filter(|d| !deleted.contains(&d.id))
            .collect())
    }

    /// Why a host was given up on, and where to look: an agent that never
    /// connected told the coordinator nothing, so the droplet's own logs
    /// are the place.
    fn never_enrolled(&self, d: &BootedDroplet) -> String {
        format!(
            "droplet {} (host {}) has not enrolled after {MAX_DROPLET_REPLACEMENTS} replacements; kept for you to look at: \
             its agent never connected, so read /var/log/cloud-init-output.log and `journalctl -u apiary-agent-install -u apiary-agent` \
             on its console (https://cloud.digitalocean.com/droplets/{}/console), then delete it to have it made again",
            d.id, d.name, d.id
        )
    }

    /// Drains the surplus nodes one at a time (database server, then Swarm;
    /// then the node leaves the cluster and its certificate is revoked) and
    /// deletes the droplets of those drained; the others stay until a later
    /// reconcile drains them.
    async fn remove_surplus(
        &self,
        coordinator: &Coordinator,
        surplus: &[apiary_digitalocean::HostState],
    ) -> Result<(), CoordinatorError> {
        let names: Vec<String> = surplus.iter().map(|h| h.name.clone()).collect();
        let mut done = Vec::new();
        let (delete, keep) = loop {
            match next_surplus_step(&names, &done) {
                SurplusStep::Drain(name) => {
                    let outcome = match coordinator.drain_and_remove(&name).await {
                        Ok((steps, _)) => {
                            info!(node = %name, steps = %steps.join("; "), "surplus node drained");
                            DrainOutcome::Drained
                        }
                        Err(crate::core::RemoveError::Pki(crate::pki::PkiError::NoSuchNode {
                            ..
                        })) => DrainOutcome::NotEnrolled,
                        Err(e) => DrainOutcome::Failed(e.to_string()),
                    };
                    done.push((name, outcome));
                }
                SurplusStep::Finish { delete, keep } => break (delete, keep),
            }
        };
        for (name, reason) in &keep {
            warn!(node = %name, %reason, "surplus droplet kept: its node could not be drained; trying again at the next reconcile");
            coordinator.events.emit(
                EventKind::DrainFailed,
                name,
                format!("droplet kept, drain retried at the next reconcile: {reason}"),
            );
        }
        if delete.is_empty() {
            return Ok(());
        }
        let delete = delete
            .iter()
            .map(|n| HostName::parse(n).map_err(provider_err))
            .collect::<Result<Vec<_>, _>>()?;
        let removed = remove(&self.client, &self.tag, &delete)
            .await
            .map_err(provider_err)?;
        info!(%removed, "surplus droplets removed");
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

/// How many times a host's droplet is made again for not enrolling before
/// the coordinator gives up on it (and keeps it, for the operator to read).
pub const MAX_DROPLET_REPLACEMENTS: u32 = 3;

/// An `active` droplet, and for how long it has been up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootedDroplet {
    pub name: String,
    pub id: u64,
    pub up_for: Duration,
}

/// What to do with droplets whose agent has not enrolled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverdueDecision {
    /// Delete (the reconcile makes them again, with a new host token).
    pub replace: Vec<BootedDroplet>,
    /// Replaced `max` times already: kept and reported (once: the caller
    /// counts the report as one more, and past `max` a host is left alone).
    pub given_up: Vec<BootedDroplet>,
}

/// Which droplets to replace: up for longer than `enroll_timeout` with no
/// node of their name enrolled. A host whose droplet was replaced `max`
/// times is given up on: one whose bootstrap always fails (a bad image, an
/// agent URL that does not answer) would otherwise be made and deleted
/// forever. Decided without I/O.
pub fn overdue_droplets(
    booted: &[BootedDroplet],
    enrolled: &std::collections::HashSet<String>,
    enroll_timeout: Duration,
    replaced: &HashMap<String, u32>,
    max: u32,
) -> OverdueDecision {
    let mut out = OverdueDecision::default();
    for d in booted
        .iter()
        .filter(|d| !enrolled.contains(&d.name) && d.up_for > enroll_timeout)
    {
        match replaced.get(&d.name).copied().unwrap_or(0) {
            n if n < max => out.replace.push(d.clone()),
            n if n == max => out.given_up.push(d.clone()),
            _ => {}
        }
    }
    out
}

/// What draining one surplus node came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Drained and removed from the cluster: its droplet can go.
    Drained,
    /// No node by that name: it never enrolled, or an earlier reconcile
    /// drained it and then failed to delete the droplet. Nothing to drain.
    NotEnrolled,
    /// The drain refused or failed, saying why: the droplet stays.
    Failed(String),
}

/// The next thing to do with the surplus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SurplusStep {
    /// Drain this node (and report its [`DrainOutcome`]).
    Drain(String),
    /// Every surplus node was tried: delete these droplets; keep these,
    /// each with the reason its node could not be drained.
    Finish {
        delete: Vec<String>,
        keep: Vec<(String, String)>,
    },
}

/// Decides, from the surplus droplets' names and the drains done so far,
/// what comes next: one drain at a time, highest-numbered host first (the
/// reverse of the database's [`placement_order`]).
///
/// Why this order and not "remove any database server while quorum holds":
/// servers are named and placed by position (`etcd-N` on the N-th host,
/// its volume `etcd-N-data`), so only the last one can leave without every
/// later server changing name, host or data. Going from the highest-numbered
/// host down, each surplus server is the last one when its turn comes, and
/// `cluster::drain_node` removes it as an etcd member (one membership change
/// at a time, each waited for) before its host goes. A surplus host in the
/// middle of the order (a name removed from `names = [...]`) is refused by
/// `drain_node` with the server to remove first, and its droplet kept.
///
/// A failed drain does not stop the others: each drain judges the cluster
/// as it then is, and refuses what would break the database by itself.
///
/// [`placement_order`]: crate::database::placement_order
pub fn next_surplus_step(surplus: &[String], done: &[(String, DrainOutcome)]) -> SurplusStep {
    let mut order: Vec<&String> = surplus.iter().collect();
    order.sort_by(|a, b| crate::database::placement_order(b, a));
    order.dedup();
    if let Some(next) = order
        .iter()
        .find(|name| !done.iter().any(|(d, _)| d == **name))
    {
        return SurplusStep::Drain((*next).clone());
    }
    let mut delete = Vec::new();
    let mut keep = Vec::new();
    for name in order {
        match done.iter().find(|(d, _)| d == name).map(|(_, o)| o) {
            Some(DrainOutcome::Drained | DrainOutcome::NotEnrolled) => delete.push(name.clone()),
            Some(DrainOutcome::Failed(reason)) => keep.push((name.clone(), reason.clone())),
            None => {}
        }
    }
    SurplusStep::Finish { delete, keep }
}

/// `ctl scale hosts=N` on DigitalOcean: the wanted droplets change and one
/// reconcile runs at once, creating the new droplets (their agents enroll
/// as they boot) or draining the surplus, highest-numbered first, and
/// deleting the droplets of those drained.
pub struct DropletScaler {
    pub provider: std::sync::Arc<DigitalOceanProvider>,
    pub advertise: SocketAddr,
    pub progress: Progress,
}

#[tonic::async_trait]
impl crate::scale::HostProvider for DropletScaler {
    fn planned(&self) -> Vec<String> {
        self.provider.planned()
    }

    async fn grow(
        &self,
        coordinator: &std::sync::Arc<Coordinator>,
        names: Vec<String>,
    ) -> Result<(), String> {
        self.provider.replan(names);
        self.provider
            .bring_up(coordinator, self.advertise, &self.progress)
            .await
            .map_err(|e| e.to_string())
    }

    async fn shrink(
        &self,
        coordinator: &std::sync::Arc<Coordinator>,
        names: Vec<String>,
    ) -> Result<Vec<String>, String> {
        let before = self.provider.planned();
        self.provider.replan(names.clone());
        self.provider
            .bring_up(coordinator, self.advertise, &self.progress)
            .await
            .map_err(|e| e.to_string())?;
        Ok(before
            .iter()
            .filter(|n| !names.contains(n))
            .rev()
            .map(|n| {
                if coordinator.store.node(n).ok().flatten().is_some() {
                    format!("{n}: kept, its node could not be drained (`ctl events` says why; retried at the next reconcile)")
                } else {
                    format!("{n}: drained, removed from the cluster, droplet deleted")
                }
            })
            .collect())
    }

    /// DigitalOcean's `reboot` droplet action (a clean reboot, as
    /// `docker-machine restart` did).
    async fn power_cycle(
        &self,
        _coordinator: &std::sync::Arc<Coordinator>,
        node: &str,
    ) -> Result<(), String> {
        let p = &self.provider;
        let droplets = p
            .client
            .list_droplets_by_tag(p.tag.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let droplet = droplets.iter().find(|d| d.name == node).ok_or_else(|| {
            format!(
                "no droplet named {node} with the cluster's tag {}",
                p.tag.as_str()
            )
        })?;
        p.client
            .droplet_action(
                droplet.id,
                apiary_digitalocean::model::DropletActionType::Reboot,
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn droplets_not_enrolled_in_time_are_replaced_a_bounded_number_of_times() {
        let booted = |name: &str, id: u64, secs: u64| BootedDroplet {
            name: name.into(),
            id,
            up_for: Duration::from_secs(secs),
        };
        let all = [
            booted("queenbee", 1, 900),
            booted("workerbee-1", 2, 900),
            booted("workerbee-2", 3, 60),
            booted("workerbee-3", 4, 900),
        ];
        let enrolled = std::collections::HashSet::from(["queenbee".to_string()]);
        let replaced = HashMap::from([("workerbee-3".to_string(), 3)]);
        let d = overdue_droplets(&all, &enrolled, Duration::from_secs(600), &replaced, 3);
        // Enrolled: kept. Within its time: kept. Past it: replaced, unless
        // replaced `max` times already: given up on, kept.
        assert_eq!(d.replace, [all[1].clone()]);
        assert_eq!(d.given_up, [all[3].clone()]);
        // Reported already (one past `max`): left alone.
        let reported = HashMap::from([("workerbee-3".to_string(), 4)]);
        let d = overdue_droplets(&all, &enrolled, Duration::from_secs(600), &reported, 3);
        assert!(d.given_up.is_empty(), "{d:?}");
        // Nothing booted for long: nothing to do.
        let d = overdue_droplets(
            &all[2..3],
            &enrolled,
            Duration::from_secs(600),
            &HashMap::new(),
            3,
        );
        assert_eq!(d, OverdueDecision::default());
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Runs the decision with `drain` standing in for the coordinator,
    /// returning the drains in the order asked and the final step.
    fn run(
        surplus: &[&str],
        drain: impl Fn(&str, &[(String, DrainOutcome)]) -> DrainOutcome,
    ) -> (Vec<String>, SurplusStep) {
        let surplus = names(surplus);
        let mut done = Vec::new();
        let mut asked = Vec::new();
        loop {
            match next_surplus_step(&surplus, &done) {
                SurplusStep::Drain(name) => {
                    assert!(asked.len() <= surplus.len(), "drains without end");
                    let o = drain(&name, &done);
                    asked.push(name.clone());
                    done.push((name, o));
                }
                finish => return (asked, finish),
            }
        }
    }

    #[test]
    fn surplus_is_drained_highest_numbered_first_and_deleted_once_drained() {
        // 12 hosts down to 9: workerbee-9, -10 and -11 go, -11 first (in
        // string order -10 and -11 would come before -2).
        let (asked, finish) = run(&["workerbee-9", "workerbee-10", "workerbee-11"], |_, _| {
            DrainOutcome::Drained
        });
        assert_eq!(asked, ["workerbee-11", "workerbee-10", "workerbee-9"]);
        assert_eq!(
            finish,
            SurplusStep::Finish {
                delete: names(&["workerbee-11", "workerbee-10", "workerbee-9"]),
                keep: vec![],
            }
        );
    }

    #[test]
    fn a_failed_drain_keeps_that_droplet_and_names_why() {
        // The last database server cannot leave (say the database is
        // unhealthy); the next one down is then refused too, as drain_node
        // refuses any server but the last. Only the host that never
        // enrolled is deleted.
        let (asked, finish) = run(&["workerbee-3", "workerbee-4", "workerbee-5"], |name, _| {
            match name {
                "workerbee-5" => DrainOutcome::Failed(
                    "workerbee-5's database server etcd-6 cannot leave: not scaling an unhealthy database".into(),
                ),
                "workerbee-4" => DrainOutcome::Failed(
                    "workerbee-4 runs database server etcd-5; only the last server (etcd-6 on workerbee-5) can leave".into(),
                ),
                _ => DrainOutcome::NotEnrolled,
            }
        });
        assert_eq!(asked, ["workerbee-5", "workerbee-4", "workerbee-3"]);
        let SurplusStep::Finish { delete, keep } = finish else {
            panic!("not finished")
        };
        assert_eq!(delete, names(&["workerbee-3"]));
        assert_eq!(
            keep.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["workerbee-5", "workerbee-4"]
        );
        assert!(keep[0].1.contains("unhealthy"), "{keep:?}");
        assert!(keep[1].1.contains("etcd-6 on workerbee-5"), "{keep:?}");
    }

    #[test]
    fn nothing_surplus_means_nothing_to_do() {
        assert_eq!(
            next_surplus_step(&[], &[]),
            SurplusStep::Finish {
                delete: vec![],
                keep: vec![]
            }
        );
    }
}
