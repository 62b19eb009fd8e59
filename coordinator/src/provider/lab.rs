//! The `lab` provider: hosts are network namespaces on this machine, each with
//! its own Docker engine and agent (see the `apiary-lab` crate for the
//! plumbing). The agent enrolls through the private bridge with the join token
//! like on any other host; the lab only starts it.
//!
//! Reconcile, not script: [`LabProvider::bring_up`] and the supervision loop
//! both call idempotent `ensure_*` steps, so a coordinator killed at any point
//! and started again completes what exists (adopts engines and agents by
//! pidfile) and never makes a second set.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use apiary_lab::{HostPlan, Lab, LabLock, LabSpec};
use futures::future::try_join_all;
use tracing::{info, warn};

use crate::config::LabProviderConfig;
use crate::core::Coordinator;
use crate::error::CoordinatorError;
use crate::progress::Progress;
use crate::state::Images;

pub const AGENT: &str = "agent";

pub struct LabProvider {
    /// The lab as planned now: replaced whole when `ctl scale hosts=N`
    /// changes the host list (a plan is cheap; the machine's lab lock, held
    /// below, is what guards the hosts themselves).
    lab: std::sync::RwLock<Lab>,
    _lock: LabLock,
    agent_binary: PathBuf,
    teardown_on_exit: bool,
    /// Load `lab/etcd:1` too (`[database] kind = "etcd"`).
    etcd_image: bool,
    /// User-supplied `docker save` archives (`[database] image_archive`).
    image_archives: Vec<PathBuf>,
    /// `[tunnel] allow`, passed to every agent.
    tunnel_allow: Vec<String>,
}

impl LabProvider {
    pub fn lab_for(
        cluster: &str,
        config: &LabProviderConfig,
        state_dir: &std::path::Path,
    ) -> Result<Lab, CoordinatorError> {
        Ok(Lab::new(LabSpec {
            cluster: cluster.to_string(),
            hosts: config.hosts.clone(),
            state_dir: state_dir.to_path_buf(),
        })?)
    }

    /// Takes the machine's lab lock and makes the two bridges: the coordinator
    /// listens on the private one, so this comes before binding.
    pub async fn prepare(
        cluster: &str,
        config: &LabProviderConfig,
        state_dir: &std::path::Path,
    ) -> Result<Self, CoordinatorError> {
        let lab = Self::lab_for(cluster, config, state_dir)?;
        let locking = lab.clone();
        let lock =
            tokio::task::spawn_blocking(move || locking.lock_timeout(Duration::from_secs(5)))
                .await
                .map_err(|e| CoordinatorError::Provider(e.to_string()))??;
        let changes = lab.ensure_network().await?;
        if !changes.is_empty() {
            info!(changes = ?changes, "lab network ready");
        }
        let agent_binary = match &config.agent_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join("agent")))
                .ok_or_else(|| CoordinatorError::Provider("cannot find the agent binary next to the coordinator; set provider.agent_binary".into()))?,
        };
        if !agent_binary.exists() {
            return Err(CoordinatorError::Provider(format!(
                "agent binary {} not found: build it (cargo build --release) or set provider.agent_binary",
                agent_binary.display()
            )));
        }
        Ok(LabProvider {
            lab: std::sync::RwLock::new(lab),
            _lock: lock,
            agent_binary,
            teardown_on_exit: config.teardown_on_exit,
            etcd_image: config.etcd_image,
            image_archives: config.image_archives.clone(),
            tunnel_allow: Vec::new(),
        })
    }

    /// The CIDRs every agent of the lab lets tunnels reach (`[tunnel] allow`).
    pub fn with_tunnel_allow(mut self, cidrs: Vec<String>) -> Self {
        self.tunnel_allow = cidrs;
        self
    }

    pub fn teardown_on_exit(&self) -> bool {
        self.teardown_on_exit
    }

    /// The lab as planned now (a cheap handle).
    pub fn lab(&self) -> Lab {
        self.lab.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What `ctl status --json` shows for each lab host beside the facts.
    pub fn provider_info(&self) -> HashMap<String, HashMap<String, String>> {
        self.lab()
            .hosts()
            .iter()
            .map(|h| {
                let info = HashMap::from([
                    ("provider".to_string(), "lab".to_string()),
                    ("netns".to_string(), h.netns.clone()),
                    (
                        "docker_socket".to_string(),
                        h.docker_socket.display().to_string(),
                    ),
                    (
                        "root_prefix".to_string(),
                        h.root_prefix.display().to_string(),
                    ),
                ]);
                (h.name.clone(), info)
            })
            .collect()
    }

    /// Where `host`'s own agent binary lives: each host has its copy, as
    /// each droplet has its `/usr/local/bin`, so `ctl hosts upgrade` replaces
    /// one host's agent at a time and a rebuilt `agent` reaches running lab
    /// hosts only through it.
    fn host_agent_binary(host: &HostPlan) -> std::path::PathBuf {
        host.host_dir.join("bin").join("agent")
    }

    /// Copies the lab's agent build into `host` unless the host has one
    /// (written aside and renamed: a reader never sees half a binary).
    fn install_agent_binary(&self, host: &HostPlan) -> Result<(), CoordinatorError> {
        let target = Self::host_agent_binary(host);
        if target.exists() {
            return Ok(());
        }
        let failed = |what: &str, e: std::io::Error| {
            CoordinatorError::Provider(format!(
                "cannot {what} the agent binary for {} ({}): {e}",
                host.name,
                target.display()
            ))
        };
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| failed("make a directory for", e))?;
        }
        let aside = target.with_file_name(".agent.installing");
        std::fs::copy(&self.agent_binary, &aside).map_err(|e| failed("copy", e))?;
        std::fs::rename(&aside, &target).map_err(|e| failed("install", e))?;
        Ok(())
    }

    fn agent_argv(&self, host: &HostPlan, endpoint: SocketAddr) -> Vec<String> {
        let mut argv = vec![
            Self::host_agent_binary(host).display().to_string(),
            "--coordinator".into(),
            endpoint.to_string(),
            "--name".into(),
            host.name.clone(),
            "--state-dir".into(),
            host.host_dir.join("agent").display().to_string(),
            "--docker-socket".into(),
            host.docker_socket.display().to_string(),
            // Host configuration: this host's files live under its root
            // prefix; the machine's modules and bootloader are not the lab's
            // to change; a restarted engine is brought back by supervision.
            "--root-prefix".into(),
            host.root_prefix.display().to_string(),
            "--no-modprobe".into(),
            "--no-update-grub".into(),
            // Hosts apiary creates serve their engine to admins (`ctl docker`).
            "--engine-access".into(),
            "--engine-restart".into(),
            format!(
                "pid=$(cat {pidfile}) && kill $pid && while kill -0 $pid 2>/dev/null; do sleep 0.1; done",
                pidfile = host.docker_pidfile().display()
            ),
        ];
        if !self.tunnel_allow.is_empty() {
            argv.extend(["--tunnel-allow".into(), self.tunnel_allow.join(",")]);
        }
        argv
    }

    /// Starts `host`'s agent unless it runs. A new agent gets a host token
    /// of its own (single-use, bound to the host's name, expiring): the lab
    /// enrolls the way a cloud host does, and a token read from a lab
    /// agent's environment enrolls nothing else. An agent that already has
    /// its identity ignores the token.
    async fn start_agent(
        &self,
        coordinator: &Coordinator,
        host: &HostPlan,
        endpoint: SocketAddr,
    ) -> Result<u32, CoordinatorError> {
        let lab = self.lab();
        if let Some(pid) = lab.process_pid(host, AGENT) {
            return Ok(pid);
        }
        let token = coordinator
            .pki
            .issue_host_token(&coordinator.store, &host.name)
            .await?;
        self.install_agent_binary(host)?;
        let env = [
            ("APIARY_JOIN_TOKEN".to_string(), token),
            ("RUST_LOG".to_string(), "info".to_string()),
        ];
        Ok(lab.spawn_in_host(host, AGENT, &self.agent_argv(host, endpoint), &env)?)
    }

    /// A host the lab made afresh (its agent has no identity yet) under the
    /// name of a node the cluster still knows (a lab torn down and brought
    /// up again on the same state): the lab, which made the new host, says
    /// the old one is gone, so its identity is revoked and the new agent
    /// can enroll. A join token alone never takes over a live name.
    async fn forget_replaced(
        &self,
        coordinator: &Coordinator,
        host: &HostPlan,
    ) -> Result<(), CoordinatorError> {
        let fresh = !apiary_certs::Identity::exists(&host.host_dir.join("agent"));
        if fresh && coordinator.store.node(&host.name)?.is_some() {
            info!(node = %host.name, "the lab made this host afresh; the old node's identity is revoked");
            coordinator.remove_node(&host.name).await?;
        }
        Ok(())
    }

    /// Hosts, engines and agents, then waits until every host is enrolled
    /// and ready; images go on loading in the background (see [`Images`]).
    pub async fn bring_up(
        &self,
        coordinator: &Arc<Coordinator>,
        endpoint: SocketAddr,
        progress: &Progress,
    ) -> Result<(), CoordinatorError> {
        let lab = self.lab();
        let hosts = lab.hosts();
        coordinator.view.set_provider_info(self.provider_info());
        progress.hosts(hosts.iter().map(|h| h.name.as_str()));
        self.ensure_engines(progress).await?;
        self.start_loading_images(coordinator, progress);
        self.start_agents(coordinator, endpoint, progress).await?;
        self.wait_for_enrollment(coordinator, progress).await?;
        // Host configuration: each agent applies it on its first session.
        if coordinator.config().host.is_some() {
            self.wait_for_host_config(coordinator, progress).await;
        }
        Ok(())
    }

    async fn ensure_engines(&self, progress: &Progress) -> Result<(), CoordinatorError> {
        let lab = self.lab();
        let hosts = lab.hosts();
        let phase = progress.phase("engines", hosts.len());
        try_join_all(hosts.iter().map(|h| async {
            let status = lab.ensure_host(h).await?;
            let what = if status.changed() {
                format!("engine up (docker {})", status.docker_version)
            } else {
                "engine adopted".into()
            };
            phase.step(&h.name, &what);
            Ok::<_, CoordinatorError>(())
        }))
        .await?;
        phase.finish();
        Ok(())
    }

    fn start_loading_images(&self, coordinator: &Arc<Coordinator>, progress: &Progress) {
        // Images load while agents enroll and Swarm forms (neither needs
        // them); the probe containers and the database wait on the gate.
        // Measured on 4 hosts: loading lab/etcd:1 takes about as long as
        // enrollment, host config, the port matrix and Swarm together.
        coordinator.view.set_images(Images::Loading);
        let phase = progress.phase("images", 1);
        let (lab, etcd_image, archives, gate) = (
            self.lab(),
            self.etcd_image,
            self.image_archives.clone(),
            coordinator.clone(),
        );
        tokio::spawn(async move {
            let hosts: Vec<&HostPlan> = lab.hosts().iter().collect();
            // A failed load is tried again (engines that have an image skip
            // it), so a replaced archive or an engine back from a restart
            // opens the gate without restarting the coordinator; meanwhile
            // each checks round names the failure.
            let mut phase = Some(phase);
            let mut retry = Duration::from_secs(2);
            loop {
                let step = |what: &str| {
                    if let Some(p) = &phase {
                        p.step("all", what);
                    }
                };
                let loaded = async {
                    lab.ensure_images(&hosts).await?;
                    step("lab/busybox:1 loaded");
                    if etcd_image {
                        lab.ensure_etcd_image(&hosts).await?;
                        step("lab/etcd:1 loaded");
                    }
                    for archive in &archives {
                        let reference = lab.load_archive(&hosts, archive).await?;
                        step(&format!("{reference} loaded from {}", archive.display()));
                    }
                    Ok::<_, apiary_lab::LabError>(())
                }
                .await;
                if let Some(p) = phase.take() {
                    p.finish();
                }
                match loaded {
                    Ok(()) => {
                        gate.view.set_images(Images::Ready);
                        info!("images loaded on every host");
                        return;
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?retry, "images not loaded; trying again");
                        gate.view.set_images(Images::Failed(format!(
                            "{e} (trying again in {} s)",
                            retry.as_secs()
                        )));
                    }
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(30));
            }
        });
    }

    async fn start_agents(
        &self,
        coordinator: &Arc<Coordinator>,
        endpoint: SocketAddr,
        progress: &Progress,
    ) -> Result<(), CoordinatorError> {
        let lab = self.lab();
        let hosts = lab.hosts();
        let phase = progress.phase("agents", hosts.len());
        // Identities first, then every agent in one tight loop: a
        // coordinator killed among the spawns leaves as few half-started
        // agents as possible for the next one to adopt.
        for h in hosts {
            self.forget_replaced(coordinator, h).await?;
        }
        for h in hosts {
            let pid = self.start_agent(coordinator, h, endpoint).await?;
            phase.step(&h.name, &format!("agent started (pid {pid})"));
        }
        phase.finish();
        Ok(())
    }

    async fn wait_for_enrollment(
        &self,
        coordinator: &Arc<Coordinator>,
        progress: &Progress,
    ) -> Result<(), CoordinatorError> {
        let lab = self.lab();
        self.wait_ready(coordinator, lab.hosts(), progress).await
    }

    /// Waits until each of `hosts` is enrolled and ready (120 s at most).
    async fn wait_ready(
        &self,
        coordinator: &Arc<Coordinator>,
        hosts: &[HostPlan],
        progress: &Progress,
    ) -> Result<(), CoordinatorError> {
        let phase = progress.phase("enrollment", hosts.len());
        let mut pending: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !pending.is_empty() {
            let nodes = crate::context::ClusterContext::nodes(coordinator.as_ref());
            pending.retain(|name| {
                let ready = nodes.iter().any(|n| n.name == *name && n.ready);
                if ready {
                    phase.step(name, "enrolled, ready");
                }
                !ready
            });
            if tokio::time::Instant::now() > deadline {
                return Err(CoordinatorError::Provider(format!(
                    "hosts not ready after 120 s: {}; see their agent logs under {}",
                    pending.join(", "),
                    self.lab().lab_dir().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        phase.finish();
        Ok(())
    }

    async fn wait_for_host_config(&self, coordinator: &Arc<Coordinator>, progress: &Progress) {
        let lab = self.lab();
        let hosts = lab.hosts();
        let phase = progress.phase("host config", hosts.len());
        let mut pending: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !pending.is_empty() && tokio::time::Instant::now() < deadline {
            pending.retain(|name| match coordinator.view.config_state(name, true) {
                crate::state::ConfigState::Pending => true,
                state => {
                    phase.step(name, &format!("host config {}", state.as_str()));
                    false
                }
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for name in pending {
            phase.step(name, "no report yet (see ctl status)");
        }
        phase.finish();
    }

    /// Keeps engines and agents running: a dead dockerd is restarted, a dead
    /// agent started again (it keeps its identity from its state directory).
    pub async fn supervise(self: Arc<Self>, coordinator: Arc<Coordinator>, endpoint: SocketAddr) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let lab = self.lab();
            for h in lab.hosts() {
                if lab.process_pid(h, "dockerd").is_none() {
                    warn!(node = %h.name, "engine is down; restarting it");
                    match lab.ensure_host(h).await {
                        Ok(s) => info!(node = %h.name, pid = s.dockerd_pid, "engine restarted"),
                        Err(e) => warn!(node = %h.name, error = %e, "engine restart failed"),
                    }
                }
                if lab.process_pid(h, AGENT).is_none() {
                    warn!(node = %h.name, "agent is down; restarting it");
                    match self.start_agent(&coordinator, h, endpoint).await {
                        Ok(pid) => info!(node = %h.name, pid, "agent restarted"),
                        Err(e) => warn!(node = %h.name, error = %e, "agent restart failed"),
                    }
                }
            }
        }
    }
}

/// `ctl scale hosts=N` on the lab: new hosts are planned, made and started
/// like the first ones; surplus hosts are drained and removed one by one.
pub struct LabScaler {
    pub provider: Arc<LabProvider>,
    pub endpoint: SocketAddr,
    pub progress: Progress,
}

impl LabProvider {
    /// Replaces the plan (what supervision keeps running).
    fn replan(&self, coordinator: &Coordinator, lab: Lab) {
        *self.lab.write().unwrap_or_else(|p| p.into_inner()) = lab;
        coordinator.view.set_provider_info(self.provider_info());
    }

    /// Makes `added`'s engines, loads the images they need, starts their
    /// agents and waits until each is enrolled and ready.
    async fn add_hosts(
        &self,
        coordinator: &Arc<Coordinator>,
        endpoint: SocketAddr,
        added: &[HostPlan],
        progress: &Progress,
    ) -> Result<(), CoordinatorError> {
        let lab = self.lab();
        let phase = progress.phase("engines", added.len());
        try_join_all(added.iter().map(|h| async {
            let status = lab.ensure_host(h).await?;
            phase.step(
                &h.name,
                &format!("engine up (docker {})", status.docker_version),
            );
            Ok::<_, CoordinatorError>(())
        }))
        .await?;
        phase.finish();
        let refs: Vec<&HostPlan> = added.iter().collect();
        lab.ensure_images(&refs).await?;
        if self.etcd_image {
            lab.ensure_etcd_image(&refs).await?;
        }
        for archive in &self.image_archives {
            lab.load_archive(&refs, archive).await?;
        }
        for h in added {
            self.forget_replaced(coordinator, h).await?;
        }
        let phase = progress.phase("agents", added.len());
        for h in added {
            let pid = self.start_agent(coordinator, h, endpoint).await?;
            phase.step(&h.name, &format!("agent started (pid {pid})"));
        }
        phase.finish();
        self.wait_ready(coordinator, added, progress).await
    }
}

#[tonic::async_trait]
impl crate::scale::HostProvider for LabScaler {
    fn planned(&self) -> Vec<String> {
        self.provider.lab().spec().hosts.clone()
    }

    /// Every process of the lab host killed at once, its engine started
    /// again from its disk, then its agent (same identity, same state).
    async fn power_cycle(&self, coordinator: &Arc<Coordinator>, node: &str) -> Result<(), String> {
        let p = &self.provider;
        let lab = p.lab();
        let host = lab
            .host(node)
            .cloned()
            .ok_or_else(|| format!("{node} is not one of the lab's hosts"))?;
        lab.power_cycle(&host).await.map_err(|e| e.to_string())?;
        p.start_agent(coordinator, &host, self.endpoint)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn grow(&self, coordinator: &Arc<Coordinator>, names: Vec<String>) -> Result<(), String> {
        let p = &self.provider;
        let old = p.lab();
        let new = old.with_hosts(names).map_err(|e| e.to_string())?;
        let added: Vec<HostPlan> = new
            .hosts()
            .iter()
            .filter(|h| !old.hosts().iter().any(|o| o.name == h.name))
            .cloned()
            .collect();
        p.replan(coordinator, new);
        self.progress.hosts(added.iter().map(|h| h.name.as_str()));
        p.add_hosts(coordinator, self.endpoint, &added, &self.progress)
            .await
            .map_err(|e| e.to_string())
    }

    async fn shrink(
        &self,
        coordinator: &Arc<Coordinator>,
        names: Vec<String>,
    ) -> Result<Vec<String>, String> {
        let p = &self.provider;
        let mut steps = Vec::new();
        // One host at a time, the last planned (highest-numbered) first:
        // out of the plan (supervision lets it be), drained and removed
        // from the cluster, then its namespace, engine and data removed.
        loop {
            let current = p.lab();
            let Some(host) = current
                .hosts()
                .last()
                .filter(|h| !names.contains(&h.name))
                .cloned()
            else {
                break;
            };
            let keep: Vec<String> = current.spec().hosts[..current.hosts().len() - 1].to_vec();
            p.replan(
                coordinator,
                current.with_hosts(keep).map_err(|e| e.to_string())?,
            );
            if coordinator
                .store
                .node(&host.name)
                .map_err(|e| e.to_string())?
                .is_some()
            {
                match coordinator.drain_and_remove(&host.name).await {
                    Ok((drained, serials)) => {
                        steps.extend(drained.into_iter().map(|s| format!("{}: {s}", host.name)));
                        steps.push(format!(
                            "{}: removed from the cluster, {} certificate(s) revoked",
                            host.name,
                            serials.len()
                        ));
                    }
                    Err(e) => {
                        // Kept, and supervised again: never a host drained
                        // half-way and forgotten.
                        p.replan(coordinator, current);
                        return Err(format!(
                            "{}: {e}; the host is kept (`ctl status` shows it); the scale stopped here",
                            host.name
                        ));
                    }
                }
            }
            let report = current
                .remove_host(&host)
                .await
                .map_err(|e| e.to_string())?;
            steps.push(format!(
                "{}: host removed ({} processes stopped, namespace {})",
                host.name,
                report.processes.len(),
                report.netns.join(", ")
            ));
        }
        Ok(steps)
    }
}
