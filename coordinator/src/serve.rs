//! `coordinator serve` and `coordinator teardown`: open the state, make the
//! provider's hosts, listen, hand out admin credentials.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::{ClusterConfig, ProviderConfig, SwarmConfig};
use crate::core::Coordinator;
use crate::error::CoordinatorError;
use crate::events::EventKind;
use crate::progress::Progress;
use crate::provider::digitalocean::{DigitalOceanProvider, DropletScaler};
use crate::provider::lab::{LabProvider, LabScaler};
use crate::scale::HostControl;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config: ClusterConfig,
    pub state_dir: PathBuf,
    pub listen: Option<SocketAddr>,
    /// Where Prometheus metrics are served (`None`: not at all).
    pub metrics_listen: Option<SocketAddr>,
    /// `--quiet`: progress as plain timestamped lines even on a terminal.
    pub quiet: bool,
    /// Logs are JSON: progress as JSON log events too, never bars or text.
    pub json_logs: bool,
}

/// Binds, writes admin.conf, brings the provider's hosts up, and serves until
/// `shutdown`.
pub async fn serve(
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordinatorError> {
    let addr = opts.listen.unwrap_or(opts.config.listen);
    let progress = Progress::for_serve(opts.quiet, opts.json_logs);
    let (lab, droplets) = prepare_provider(&opts, &progress).await?;
    let Opened {
        coordinator,
        listener,
        local,
        admin_conf,
        artifacts,
        droplets,
    } = open_state(&opts, addr, droplets).await?;
    let tunnels = Arc::new(crate::api::tunnel::TunnelHub::default());
    let scaling = Arc::new(HostControl::default());
    let (server, metrics) = start_listeners(
        &coordinator,
        &tunnels,
        &scaling,
        listener,
        opts.metrics_listen,
        shutdown,
    );
    let serving = Serving {
        coordinator: &coordinator,
        scaling: &scaling,
        local,
        admin_conf: &admin_conf,
    };
    let work = start_provider_work(&opts.config, &serving, lab.as_ref(), droplets, &progress);
    let tasks = [
        work.lab,
        work.droplets,
        work.swarm,
        metrics,
        work.joining,
        artifacts,
    ];
    wait_and_stop(server, tasks, lab, &progress).await
}

/// The lab's bridges are made first: the coordinator listens on one of them.
async fn prepare_provider(
    opts: &ServeOptions,
    progress: &Progress,
) -> Result<(Option<Arc<LabProvider>>, Option<DigitalOceanProvider>), CoordinatorError> {
    let lab = match &opts.config.provider {
        ProviderConfig::Manual => None,
        ProviderConfig::Lab(lab) => {
            let phase = progress.phase("network", 1);
            let provider = LabProvider::prepare(&opts.config.cluster_name, lab, &opts.state_dir)
                .await?
                .with_tunnel_allow(opts.config.tunnel_allow.clone());
            phase.step(
                "bridges",
                "apiary-pub 198.18.0.1/24, apiary-priv 10.231.0.1/24",
            );
            phase.finish();
            Some(Arc::new(provider))
        }
        ProviderConfig::DigitalOcean(_) => None,
    };
    let droplets = match &opts.config.provider {
        ProviderConfig::DigitalOcean(d) => {
            let provider = DigitalOceanProvider::new(&opts.config.cluster_name, d)?;
            digitalocean_preflight(&provider, progress).await?;
            Some(provider)
        }
        _ => None,
    };
    Ok((lab, droplets))
}

/// The account checked before any state, tag, VPC, firewall or droplet
/// exists: a refusal ends `serve` (exit 64) with nothing created. An API
/// that does not answer does not: the bring-up runs the preflight again
/// before it creates anything, and retries as it always does.
async fn digitalocean_preflight(
    provider: &DigitalOceanProvider,
    progress: &Progress,
) -> Result<(), CoordinatorError> {
    let phase = progress.phase("preflight", 1);
    match provider.preflight().await {
        Ok(report) => {
            phase.step(
                "account",
                &format!(
                    "{} droplet(s) to create, {} in the account, limit {}",
                    report.droplets_to_create,
                    report.droplets_in_account,
                    report
                        .droplet_limit
                        .map_or_else(|| "unknown".to_owned(), |l| l.to_string())
                ),
            );
            phase.finish();
            Ok(())
        }
        Err(CoordinatorError::DigitalOceanPreflight(e)) if !e.is_refusal() => {
            warn!(error = %e, "digitalocean preflight could not finish; the bring-up runs it again before creating anything");
            phase.finish();
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// What [`open_state`] leaves ready for serving.
struct Opened {
    coordinator: Arc<Coordinator>,
    listener: TcpListener,
    local: SocketAddr,
    admin_conf: PathBuf,
    artifacts: Option<JoinHandle<()>>,
    droplets: Option<Arc<DigitalOceanProvider>>,
}

/// Opens the state, binds the API port and the artifact listener, and writes
/// admin.conf.
async fn open_state(
    opts: &ServeOptions,
    addr: SocketAddr,
    droplets: Option<DigitalOceanProvider>,
) -> Result<Opened, CoordinatorError> {
    // The agent binary is checked before any state exists: a missing one is
    // a configuration error, refused as early as a missing API token.
    let agent_binary = match crate::artifacts::needed(&opts.config) {
        true => Some(open_agent_binary(&opts.config).await?),
        false => None,
    };
    let coordinator = Coordinator::open(opts.config.clone(), &opts.state_dir).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| CoordinatorError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| CoordinatorError::Bind { addr, source })?;
    let (artifacts, droplets) = match agent_binary {
        Some(agent) => {
            let (server, url) =
                artifact_server(&opts.config, &coordinator, local, agent.clone()).await?;
            let droplets =
                droplets.map(|d| d.with_coordinator_agent(url, agent.sha256().to_string()));
            (Some(server), droplets)
        }
        None => (None, droplets),
    };
    let droplets = droplets.map(Arc::new);
    coordinator
        .endpoints
        .set_advertise(opts.config.advertise.unwrap_or(local));
    let admin_conf = coordinator.write_admin_conf(local)?;
    info!(listen = %local, admin_conf = %admin_conf.display(), cluster = %opts.config.cluster_name, provider = opts.config.provider.kind(), "coordinator ready");
    Ok(Opened {
        coordinator,
        listener,
        local,
        admin_conf,
        artifacts,
        droplets,
    })
}

/// Starts the API server and, when asked for, the metrics listener.
fn start_listeners(
    coordinator: &Arc<Coordinator>,
    tunnels: &Arc<crate::api::tunnel::TunnelHub>,
    scaling: &Arc<HostControl>,
    listener: TcpListener,
    metrics_listen: Option<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (
    JoinHandle<Result<(), CoordinatorError>>,
    Option<JoinHandle<()>>,
) {
    let metrics = metrics_listen.map(|addr| {
        tokio::spawn(crate::metrics::serve(
            addr,
            coordinator.clone(),
            tunnels.clone(),
        ))
    });
    let server = tokio::spawn(crate::api::serve(
        coordinator.clone(),
        tunnels.clone(),
        scaling.clone(),
        listener,
        shutdown,
    ));
    (server, metrics)
}

/// The tasks beside the server that make the hosts, follow them and form
/// Swarm.
struct ProviderWork {
    lab: Option<JoinHandle<()>>,
    droplets: Option<JoinHandle<()>>,
    joining: Option<JoinHandle<()>>,
    swarm: Option<JoinHandle<()>>,
}

/// What the providers' work needs of the running server.
struct Serving<'a> {
    coordinator: &'a Arc<Coordinator>,
    scaling: &'a Arc<HostControl>,
    /// The address agents reach the coordinator at.
    local: SocketAddr,
    admin_conf: &'a Path,
}

fn start_provider_work(
    config: &ClusterConfig,
    serving: &Serving<'_>,
    lab: Option<&Arc<LabProvider>>,
    droplets: Option<Arc<DigitalOceanProvider>>,
    progress: &Progress,
) -> ProviderWork {
    let (coordinator, local) = (serving.coordinator, serving.local);
    // Bring-up and supervision run beside the server and stop with it: a
    // shutdown in the middle of bring-up must not wait for bring-up to end.
    let lab_work = lab.cloned().map(|lab| {
        serving.scaling.register(Arc::new(LabScaler {
            provider: lab.clone(),
            endpoint: local,
            progress: progress.clone(),
        }));
        spawn_lab_work(lab, config, serving, progress)
    });
    let droplet_provider = droplets.clone();
    let droplet_work = droplets.map(|droplets| {
        let advertise = config.advertise.unwrap_or(local);
        // A count `ctl scale hosts=N` recorded wins over the spec's.
        if let Ok(Some(recorded)) = coordinator.store.host_scale()
            && let Ok(names) = crate::scale::scaled_names(&droplets.planned(), recorded.hosts)
        {
            droplets.replan(names);
        }
        serving.scaling.register(Arc::new(DropletScaler {
            provider: droplets.clone(),
            advertise,
            progress: progress.clone(),
        }));
        spawn_droplet_work(droplets, coordinator, advertise, progress)
    });
    // A rolling reboot a stop interrupted: that host is finished.
    tokio::spawn(crate::reboot::resume(coordinator.clone()));
    if coordinator.config().agent_auto_upgrade {
        tokio::spawn(crate::upgrade::auto(coordinator.clone()));
    }
    // Hosts that join by themselves: each one's line follows its events.
    let joining = matches!(config.provider, ProviderConfig::Manual).then(|| {
        tokio::spawn(follow_hosts(
            coordinator.events.subscribe(),
            progress.clone(),
        ))
    });
    // Without a provider that makes the hosts, Swarm work starts at once and
    // takes in hosts as they become ready.
    let swarm_work = match (lab, &config.swarm, droplet_provider) {
        // Droplets enroll one by one over minutes: Swarm and the database
        // are first formed once every planned droplet is in (as the lab
        // forms them after its bring-up), not on whichever came first.
        (None, Some(cfg), Some(droplets)) => {
            let (coordinator, cfg, progress) = (coordinator.clone(), cfg.clone(), progress.clone());
            Some(tokio::spawn(async move {
                wait_for_planned_droplets(&coordinator, &droplets).await;
                crate::reconcile::run(coordinator.as_ref(), &cfg, progress, std::future::pending())
                    .await
            }))
        }
        (None, Some(cfg), None) => Some(spawn_reconcile(coordinator, cfg.clone(), progress)),
        _ => None,
    };
    ProviderWork {
        lab: lab_work,
        droplets: droplet_work,
        joining,
        swarm: swarm_work,
    }
}

fn spawn_lab_work(
    lab: Arc<LabProvider>,
    config: &ClusterConfig,
    serving: &Serving<'_>,
    progress: &Progress,
) -> JoinHandle<()> {
    let swarm_config = config.swarm.clone();
    let local = serving.local;
    let (coordinator, admin_conf, cluster, progress, scaling) = (
        serving.coordinator.clone(),
        serving.admin_conf.to_path_buf(),
        config.cluster_name.clone(),
        progress.clone(),
        serving.scaling.clone(),
    );
    tokio::spawn(async move {
        match lab.bring_up(&coordinator, local, &progress).await {
            Ok(()) => {
                info!(
                    hosts = lab.lab().hosts().len(),
                    "cluster up: every host enrolled and ready"
                );
                progress.println(format!(
                    "cluster {cluster} is up. Try: ctl --config {} status",
                    admin_conf.display()
                ));
            }
            // Keep serving: the hosts that came up are usable, and
            // supervision keeps trying the others.
            Err(e) => error!(error = %e, "bring-up incomplete"),
        }
        if swarm_config.is_none() {
            progress.finish();
        }
        // Swarm, overlay and checks once every host is in; supervision
        // keeps engines and agents up meanwhile.
        let swarm = swarm_config.map(|cfg| spawn_reconcile(&coordinator, cfg, &progress));
        // A host count set by `ctl scale hosts=N` wins over the spec's: a
        // scale that a stop interrupted goes on to its end.
        resume_host_scale(&coordinator, &scaling, lab.lab().hosts().len()).await;
        lab.supervise(coordinator, local).await;
        if let Some(s) = swarm {
            s.abort();
        }
    })
}

/// Scales to the recorded host count when it differs from the plan.
async fn resume_host_scale(coordinator: &Arc<Coordinator>, scaling: &HostControl, planned: usize) {
    let recorded = match coordinator.store.host_scale() {
        Ok(Some(r)) => r.hosts,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %e, "cannot read the recorded host count; keeping the spec's");
            return;
        }
    };
    if recorded == planned {
        return;
    }
    info!(
        planned,
        recorded, "scaling to the host count `ctl scale hosts=N` recorded"
    );
    match scaling.scale(coordinator, recorded).await {
        Ok(summary) => info!(%summary, "host count restored"),
        Err(e) => error!(error = %e, "could not scale to the recorded host count"),
    }
}

fn spawn_droplet_work(
    droplets: Arc<DigitalOceanProvider>,
    coordinator: &Arc<Coordinator>,
    advertise: SocketAddr,
    progress: &Progress,
) -> JoinHandle<()> {
    let (coordinator, progress) = (coordinator.clone(), progress.clone());
    tokio::spawn(async move {
        // Reconcile now and then: a droplet deleted behind apiary's back
        // is made again.
        loop {
            match droplets.bring_up(&coordinator, advertise, &progress).await {
                Ok(()) => info!("droplets match the spec"),
                Err(e) => error!(error = %e, "droplet reconcile failed; retrying"),
            }
            // Later reconciles print lines; bars are for the bring-up.
            progress.finish();
            tokio::time::sleep(droplets.reconcile_interval()).await;
        }
    })
}

/// Until every droplet the provider plans has an enrolled, ready node, or
/// `digitalocean.enroll_timeout` has passed (then the cluster forms on the
/// hosts that are in, and takes the others in as they come).
async fn wait_for_planned_droplets(
    coordinator: &Arc<Coordinator>,
    droplets: &DigitalOceanProvider,
) {
    let deadline = tokio::time::Instant::now() + droplets.enroll_timeout();
    loop {
        let nodes = crate::context::ClusterContext::nodes(coordinator.as_ref());
        let missing: Vec<String> = droplets
            .planned()
            .into_iter()
            .filter(|name| !nodes.iter().any(|n| n.name == *name && n.ready))
            .collect();
        if missing.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(missing = %missing.join(", "), "not every droplet enrolled in time; forming the cluster on those that did");
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn spawn_reconcile(
    coordinator: &Arc<Coordinator>,
    cfg: SwarmConfig,
    progress: &Progress,
) -> JoinHandle<()> {
    let (coordinator, progress) = (coordinator.clone(), progress.clone());
    tokio::spawn(async move {
        crate::reconcile::run(coordinator.as_ref(), &cfg, progress, std::future::pending()).await
    })
}

/// Waits for the server to stop, then stops everything beside it.
async fn wait_and_stop(
    server: JoinHandle<Result<(), CoordinatorError>>,
    tasks: [Option<JoinHandle<()>>; 6],
    lab: Option<Arc<LabProvider>>,
    progress: &Progress,
) -> Result<(), CoordinatorError> {
    let result = server
        .await
        .map_err(|e| CoordinatorError::Serve(e.to_string()))?;
    for work in tasks.into_iter().flatten() {
        work.abort();
    }
    if let Some(lab) = lab
        && lab.teardown_on_exit()
    {
        let report = lab.lab().teardown().await?;
        progress.println(report.to_string());
    }
    result
}

/// Opens and hashes the agent binary hosts fetch (off the runtime: a debug
/// build is a few hundred megabytes).
async fn open_agent_binary(
    config: &ClusterConfig,
) -> Result<Arc<crate::artifacts::AgentBinary>, CoordinatorError> {
    let path = crate::artifacts::agent_path(config)?;
    let agent = tokio::task::spawn_blocking(move || crate::artifacts::AgentBinary::open(&path))
        .await
        .map_err(|e| CoordinatorError::Serve(e.to_string()))??;
    Ok(Arc::new(agent))
}

/// Binds the artifact listener and starts it; returns its task and the URL
/// hosts fetch the agent from.
async fn artifact_server(
    config: &ClusterConfig,
    coordinator: &Arc<Coordinator>,
    grpc: SocketAddr,
    agent: Arc<crate::artifacts::AgentBinary>,
) -> Result<(tokio::task::JoinHandle<()>, url::Url), CoordinatorError> {
    use crate::artifacts::{
        ArtifactError, ArtifactServer, Limits, agent_url, cert_names, listen_addr, tls_from_ca,
    };
    let addr = listen_addr(config, grpc)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ArtifactError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ArtifactError::Bind { addr, source })?;
    let advertise = config.advertise.map_or(grpc.ip(), |a| a.ip());
    let url = agent_url(advertise, bound)?;
    let names = cert_names(advertise, bound);
    let ca_holder = coordinator.clone();
    let server = ArtifactServer::new(
        agent.clone(),
        Box::new(move || tls_from_ca(ca_holder.pki.ca(), &names)),
        Limits::default(),
    )?;
    info!(listen = %bound, %url, sha256 = %agent.sha256(), agent = %agent.path().display(), "serving the agent binary to hosts");
    Ok((
        tokio::spawn(server.run(listener, std::future::pending())),
        url,
    ))
}

/// Shows hosts joining, connecting and going down on their progress lines
/// (until the bring-up is over).
async fn follow_hosts(
    mut events: tokio::sync::broadcast::Receiver<crate::events::Event>,
    progress: Progress,
) {
    loop {
        match events.recv().await {
            Ok(e) => {
                let what = match e.kind {
                    EventKind::NodeEnrolled => "enrolled".to_string(),
                    // The agent's hello: the node is ready from here on.
                    EventKind::NodeConnected => "connected, ready".to_string(),
                    EventKind::NodeReady => "ready again".to_string(),
                    EventKind::NodeDown => format!("down ({})", e.message),
                    EventKind::NodeRemoved => "removed".to_string(),
                    _ => continue,
                };
                progress.host(&e.node, &what);
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Removes everything the provider made for this cluster and says what.
pub async fn teardown(
    config: &ClusterConfig,
    state_dir: &std::path::Path,
    keep_coordinator: bool,
) -> Result<String, crate::up::UpError> {
    match &config.provider {
        ProviderConfig::Manual => {
            Ok("provider manual: apiary made no hosts, so there is nothing to tear down".into())
        }
        ProviderConfig::Lab(lab_config) => {
            let lab = LabProvider::lab_for(&config.cluster_name, lab_config, state_dir)?;
            let locking = lab.clone();
            let _lock =
                tokio::task::spawn_blocking(move || locking.lock_timeout(Duration::from_secs(3)))
                    .await
                    .map_err(|e| CoordinatorError::Provider(e.to_string()))?
                    .map_err(|e| {
                        CoordinatorError::Provider(format!(
                            "{e} (a running `coordinator serve` holds the lab: stop it first)"
                        ))
                    })?;
            let report = lab.teardown().await.map_err(CoordinatorError::from)?;
            Ok(if report.is_empty() {
                "nothing to remove: the lab was not there".into()
            } else {
                report.to_string()
            })
        }
        ProviderConfig::DigitalOcean(d) => {
            let provider = DigitalOceanProvider::new(&config.cluster_name, d)?;
            let mut lines = crate::up::teardown_coordinator(
                &provider,
                &config.cluster_name,
                state_dir,
                keep_coordinator,
            )
            .await?;
            lines.push(provider.teardown().await?);
            Ok(lines.join("\n"))
        }
    }
}
