//! The cluster round: a reconcile loop in kube-runtime's shape.
//!
//! Each round **observes** (the nodes, and each ready host's Swarm view
//! through its agent), **decides** without I/O ([`plan::decide`]: who takes
//! part in which role, whether the pre-Swarm matrix runs, init or adopt, who
//! joins), then **acts** through the agents:
//! 1. before any host is in a swarm: every agent listens on the cluster ports
//!    (2377/tcp on managers, 7946/tcp+udp, 4789/udp) and probes every peer
//!    (challenge/echo for UDP, so a silent drop is told from a closed port);
//!    the responders stop before Swarm needs the ports;
//! 2. Swarm: the first manager inits (advertising its private address) or is
//!    adopted; the others join with the right token (managers one at a time,
//!    workers together); labels from the config;
//! 3. the overlay: refused up front when encrypted and a host lacks ESP or
//!    the kernel pieces; else created or adopted on the first manager;
//! 4. the database ([`crate::database::converge`]) and, beside it, Swarm's
//!    TCP ports probed directly and the overlay end to end between probe
//!    containers on every host.
//!
//! A round returns an [`Action`] (requeue after the checks interval) or a
//! [`RoundError`] naming its phase and node; [`run`] backs off after errors
//! (2 s doubling up to the interval), requeues after success so missed
//! changes heal, runs each round in a span with its generation, and stops
//! when told. A coordinator restart in the middle finishes the job: every
//! step adopts what exists. A host whose agent or engine is down shows as
//! failing cells naming it; the others stay green.
//!
//! Everything goes through a [`ClusterContext`], so rounds run in unit tests
//! against fake agents ([`fake`]).

pub mod checks;
pub mod drain;
#[cfg(test)]
pub mod fake;
pub mod plan;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use apiary_api::ops::{
    EncryptionSupport, EnsureOverlay, ReadJoinTokens, ReadSwarm, SetLabels, SwarmInit, SwarmJoin,
    SwarmPromote, SwarmRemoveNode,
};
use apiary_api::reach::SWARM_MANAGER_PORT;
use apiary_api::swarm::{JoinTokens, OverlaySpec, ProbeEndpoint, SwarmView};
use futures::future::join_all;
use tracing::{Instrument, info, info_span, warn};

use crate::config::SwarmConfig;
use crate::context::{ClusterContext, NodeObservation};
use crate::events::EventKind;
use crate::progress::Progress;
use crate::sessions::{CallError, call};
use crate::state::{CheckPhase, ChecksState, ImagesError, NodeSwarm};
use crate::time::now_unix_ms;
use plan::{Decision, Host, Plan, SwarmStep};

/// What the loop does after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run again after this long.
    Requeue(Duration),
}

/// The step a round stopped at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Swarm,
    Encryption,
    Overlay,
    Images,
}

/// Why a round stopped early. Shown by `ctl checks` as the swarm error; the
/// next round tries again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RoundError {
    #[error("swarm: {0}")]
    Swarm(#[source] CallError),
    /// What is missing, and the ESP cells that show it.
    #[error("encrypted overlay refused: {}", .missing.join("; "))]
    Encryption {
        missing: Vec<String>,
        cells: Vec<apiary_api::reach::Cell>,
    },
    #[error("overlay {network}: {source}")]
    Overlay {
        network: String,
        #[source]
        source: CallError,
    },
    #[error("images: {0}")]
    Images(#[from] ImagesError),
}

impl RoundError {
    pub fn phase(&self) -> Phase {
        match self {
            RoundError::Swarm(_) => Phase::Swarm,
            RoundError::Encryption { .. } => Phase::Encryption,
            RoundError::Overlay { .. } => Phase::Overlay,
            RoundError::Images(_) => Phase::Images,
        }
    }

    /// The host the failing step ran on, if one.
    pub fn node(&self) -> Option<&str> {
        match self {
            RoundError::Swarm(e) | RoundError::Overlay { source: e, .. } => Some(e.node()),
            _ => None,
        }
    }
}

/// How long after a failed round the next one runs: 2 s, doubling per
/// failure in a row, never longer than the checks interval.
pub fn backoff(failures: u32, interval: Duration) -> Duration {
    Duration::from_secs(2)
        .saturating_mul(1 << failures.saturating_sub(1).min(10))
        .min(interval)
}

/// Where a round reports: bring-up progress (the first round only) and
/// lasting results.
pub struct Output<'a> {
    pub progress: &'a Progress,
    pub bring_up: bool,
}

impl Output<'_> {
    fn phases(&self) -> Option<&Progress> {
        self.bring_up.then_some(self.progress)
    }
}

/// One round (see the module docs).
pub async fn reconcile(
    ctx: &dyn ClusterContext,
    config: &SwarmConfig,
    generation: u64,
    output: &Output<'_>,
) -> Result<Action, RoundError> {
    let requeue = Action::Requeue(config.checks_interval);
    // A node being drained out (a scale-down, a removal) is not the round's
    // to place: it would join the swarm again right after it left.
    let mut nodes = ctx.nodes();
    nodes.retain(|n| !ctx.view().is_leaving(&n.name));
    let views = observe_swarm(ctx, &nodes).await;
    let plan = match plan::decide(config, &nodes, &views) {
        Decision::NothingReady { down } => {
            // Every host down: say so rather than show the last round as current.
            ctx.view().update_checks(|state| {
                if !down.is_empty() {
                    state.down = down;
                }
            });
            return Ok(requeue);
        }
        Decision::Converge(plan) => plan,
    };
    let mut state = ctx.view().checks();
    state.hosts = plan.hosts.len() as u32;
    state.down = plan.down.clone();
    if plan.pre_swarm_checks {
        measure_pre_swarm(ctx, &plan, generation, output, &mut state).await;
    }
    let esp = match form(ctx, config, &plan, output).await {
        Ok(esp) => esp,
        Err(e) => {
            state.swarm_error = e.to_string();
            if let RoundError::Encryption { cells, .. } = &e {
                state.cells = cells.clone();
                state.at_unix_ms = now_unix_ms();
            }
            ctx.view().set_checks(state);
            return Err(e);
        }
    };
    state.swarm_error.clear();
    let (endpoints, mut cells) = check_and_run_database(ctx, config, &plan, output).await;
    cells.extend(esp);
    publish(ctx, &plan, state, cells, &endpoints).await;
    Ok(requeue)
}

/// Each ready host's Swarm view, from those whose engine answered.
async fn observe_swarm(
    ctx: &dyn ClusterContext,
    nodes: &[NodeObservation],
) -> HashMap<String, SwarmView> {
    join_all(nodes.iter().filter(|n| n.ready).map(|n| async move {
        (
            n.name.clone(),
            call(ctx.agents(), &n.name, ReadSwarm {}).await,
        )
    }))
    .await
    .into_iter()
    .filter_map(|(n, v)| v.ok().map(|v| (n, v)))
    .collect()
}

async fn measure_pre_swarm(
    ctx: &dyn ClusterContext,
    plan: &Plan,
    generation: u64,
    output: &Output<'_>,
    state: &mut ChecksState,
) {
    let phase = output.phases().map(|p| p.phase("checks", plan.hosts.len()));
    let cells = checks::pre_swarm(ctx.agents(), &plan.hosts, generation).await;
    state.cells = cells.clone();
    if let Some(phase) = phase {
        let failing = state.matrix().failures().len();
        phase.step(
            "matrix",
            &format!("{} paths, {failing} failing", cells.len()),
        );
        phase.finish();
    }
    ctx.save_pre_swarm(&cells).await;
    state.pre_swarm = cells;
    state.phase = CheckPhase::PreSwarm;
    state.at_unix_ms = now_unix_ms();
    ctx.view().set_checks(state.clone());
}

/// Swarm and the overlay; the ESP cells when encrypted.
async fn form(
    ctx: &dyn ClusterContext,
    config: &SwarmConfig,
    plan: &Plan,
    output: &Output<'_>,
) -> Result<Vec<apiary_api::reach::Cell>, RoundError> {
    let phase = output.phases().map(|p| p.phase("swarm", plan.hosts.len()));
    if let Err(e) = ensure_swarm(ctx, config, plan).await {
        warn!(node = %e.node(), error = %e, "swarm not formed");
        return Err(RoundError::Swarm(e));
    }
    if let Some(phase) = phase {
        for h in &plan.hosts {
            phase.host(
                &h.name,
                if h.manager {
                    "swarm manager"
                } else {
                    "swarm worker"
                },
            );
        }
        let managers = plan.hosts.iter().filter(|h| h.manager).count();
        let workers = plan.hosts.len() - managers;
        phase.step("all", &format!("{managers} managers, {workers} workers"));
        phase.finish();
    }
    let esp = if config.encrypted {
        encryption_ready(ctx, &plan.hosts).await?
    } else {
        Vec::new()
    };
    let spec = OverlaySpec {
        name: config.overlay.clone(),
        attachable: true,
        encrypted: config.encrypted,
        mtu: config.mtu,
    };
    call(ctx.agents(), &plan.first.name, EnsureOverlay { spec })
        .await
        .map_err(|source| RoundError::Overlay {
            network: config.overlay.clone(),
            source,
        })?;
    // Probe and database containers need their images on every host; the
    // lab may still be loading them (it does so while Swarm forms).
    ctx.view().images_ready().await?;
    Ok(esp)
}

/// An encrypted overlay needs ESP between every pair and the kernel pieces
/// on every host; Docker would create it anyway and then drop all traffic,
/// so both are checked each round and the overlay refused first.
async fn encryption_ready(
    ctx: &dyn ClusterContext,
    hosts: &[Host],
) -> Result<Vec<apiary_api::reach::Cell>, RoundError> {
    let (cells, kernel) = futures::join!(
        checks::esp(ctx.agents(), hosts),
        join_all(
            hosts
                .iter()
                .map(|h| call(ctx.agents(), &h.name, EncryptionSupport {}))
        )
    );
    let mut missing: Vec<String> = kernel
        .into_iter()
        .filter_map(Result::err)
        .map(|e| e.to_string())
        .collect();
    missing.extend(cells.iter().filter(|c| !c.outcome.is_open()).map(|c| {
        format!(
            "ESP (IP protocol 50) from {} to {}: {}",
            c.src, c.dst, c.outcome
        )
    }));
    if missing.is_empty() {
        Ok(cells)
    } else {
        let e = RoundError::Encryption { missing, cells };
        warn!(error = %e, "encrypted overlay refused");
        Err(e)
    }
}

/// Makes the swarm the plan asks for: init on the first manager (or adopt),
/// join the rest, set the labels.
async fn ensure_swarm(
    ctx: &dyn ClusterContext,
    config: &SwarmConfig,
    plan: &Plan,
) -> Result<(), CallError> {
    let first = &plan.first;
    if plan.swarm == SwarmStep::Init {
        info!(node = %first.name, "initialising the swarm");
        let op = SwarmInit {
            advertise_ip: first.ip,
            default_addr_pool: config.default_addr_pool.clone(),
        };
        let view = call(ctx.agents(), &first.name, op).await?;
        let id = view.cluster_id.as_deref().unwrap_or("(no id yet)");
        ctx.events().emit(
            EventKind::SwarmInitialised,
            &first.name,
            format!("swarm {id} on {}", first.ip),
        );
    }
    if !plan.joins.is_empty() {
        let tokens = call(ctx.agents(), &first.name, ReadJoinTokens {}).await?;
        join_all_hosts(ctx, plan, &tokens).await?;
    }
    // One at a time: each is a Raft membership change.
    for (host, node) in &plan.promotions {
        info!(node = %host.name, "promoting to manager (it joined when fewer hosts were ready)");
        let op = SwarmPromote { node: node.clone() };
        call(ctx.agents(), &first.name, op).await?;
        ctx.events()
            .emit(EventKind::SwarmJoined, &host.name, "promoted to manager");
    }
    for stale in &plan.stale {
        // Not fatal to the round: the entry only clutters `docker node ls`.
        let op = SwarmRemoveNode {
            node: stale.id.clone(),
        };
        match call(ctx.agents(), &first.name, op).await {
            Ok(_) => info!(
                node = %stale.id,
                hostname = %stale.hostname,
                "removed a swarm node entry no host is (a join cut short, or a host's earlier incarnation)"
            ),
            Err(e) => {
                warn!(node = %stale.id, error = %e, "could not remove a stale swarm node entry")
            }
        }
    }
    for (node, labels) in &config.labels {
        let op = SetLabels {
            node: node.clone(),
            labels: labels.clone(),
        };
        call(ctx.agents(), &first.name, op).await?;
    }
    Ok(())
}

/// Managers join one at a time: each is a Raft membership change, and Raft
/// takes those one after another. Workers change no membership and join all
/// at once beside them (the hand recipe joins all in a row).
async fn join_all_hosts(
    ctx: &dyn ClusterContext,
    plan: &Plan,
    tokens: &JoinTokens,
) -> Result<(), CallError> {
    let remote = SocketAddr::new(plan.first.ip.into(), SWARM_MANAGER_PORT);
    let managers = async {
        for h in plan.joins.iter().filter(|h| h.manager) {
            join(ctx, h, remote, &tokens.manager).await?;
        }
        Ok::<_, CallError>(())
    };
    let workers = futures::future::try_join_all(
        plan.joins
            .iter()
            .filter(|h| !h.manager)
            .map(|h| join(ctx, h, remote, &tokens.worker)),
    );
    futures::future::try_join(managers, workers).await?;
    Ok(())
}

async fn join(
    ctx: &dyn ClusterContext,
    h: &Host,
    remote: SocketAddr,
    token: &str,
) -> Result<(), CallError> {
    info!(node = %h.name, manager = h.manager, "joining the swarm");
    let op = SwarmJoin {
        remote,
        token: token.to_string(),
        advertise_ip: h.ip,
    };
    call(ctx.agents(), &h.name, op).await?;
    let role = if h.manager {
        "joined as manager"
    } else {
        "joined as worker"
    };
    ctx.events().emit(EventKind::SwarmJoined, &h.name, role);
    Ok(())
}

/// The database and the overlay checks, at once, except that the probe
/// containers wait until the database's are running (15 s at most): on two
/// cores, eight containers joining the overlay together took each about
/// twice as long to start as four, and the database is what the bring-up
/// waits for; in later rounds everything is running already.
async fn check_and_run_database(
    ctx: &dyn ClusterContext,
    config: &SwarmConfig,
    plan: &Plan,
    output: &Output<'_>,
) -> (
    Vec<(Host, Result<ProbeEndpoint, CallError>)>,
    Vec<apiary_api::reach::Cell>,
) {
    let phase = output
        .phases()
        .map(|p| p.phase("overlay", plan.hosts.len()));
    let (db_running, mut db_running_rx) = tokio::sync::watch::channel(config.database.is_none());
    let database = async {
        if let Some(db) = &config.database {
            let network = &config.overlay;
            let state = crate::database::converge(
                ctx,
                db,
                network,
                &plan.first.name,
                output.phases(),
                &db_running,
            )
            .await;
            db_running.send_replace(true);
            crate::database::report(ctx, db, state, output.progress, output.phases());
        }
    };
    let checks = async {
        let _ = tokio::time::timeout(
            Duration::from_secs(15),
            db_running_rx.wait_for(|running| *running),
        )
        .await;
        let endpoints = checks::probe_containers(ctx.agents(), &plan.hosts, &config.overlay).await;
        if let Some(phase) = phase {
            for (h, e) in &endpoints {
                let line = match e {
                    Ok(e) => format!("probe container at {}", e.address),
                    Err(err) => format!("no probe container: {err}"),
                };
                phase.step(&h.name, &line);
            }
            phase.finish();
        }
        let (direct, overlay) = futures::join!(
            checks::swarm_ports(ctx.agents(), &plan.hosts),
            checks::overlay(ctx.agents(), &plan.hosts, &endpoints)
        );
        (endpoints, direct.into_iter().chain(overlay).collect())
    };
    let ((), result) = futures::join!(database, checks);
    result
}

/// Publishes the round: the swarm as the first manager sees it, the cells,
/// and events for paths that started or stopped failing.
async fn publish(
    ctx: &dyn ClusterContext,
    plan: &Plan,
    mut state: ChecksState,
    cells: Vec<apiary_api::reach::Cell>,
    endpoints: &[(Host, Result<ProbeEndpoint, CallError>)],
) {
    let attached = |host: &str| endpoints.iter().any(|(h, e)| h.name == host && e.is_ok());
    let mut swarm_nodes = HashMap::new();
    if let Ok(view) = call(ctx.agents(), &plan.first.name, ReadSwarm {}).await {
        for n in view.nodes {
            let overlay_attached = attached(&n.hostname);
            swarm_nodes.insert(
                n.hostname.clone(),
                NodeSwarm {
                    role: n.role,
                    status: n.status,
                    availability: n.availability,
                    leader: n.leader,
                    overlay_attached,
                },
            );
        }
    }
    let before = ctx.view().checks().failing_paths();
    state.cells = cells;
    state.phase = CheckPhase::Swarm;
    state.at_unix_ms = now_unix_ms();
    state.swarm = swarm_nodes;
    let after = state.failing_paths();
    let node_of = |path: &str| path.split(' ').next().unwrap_or("").to_string();
    for (path, cause) in &after {
        if !before.contains_key(path) {
            warn!(node = %node_of(path), path = %path, %cause, "check failed");
            ctx.events().emit(
                EventKind::CheckFailed,
                &node_of(path),
                format!("{path}: {cause}"),
            );
        }
    }
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        ctx.events()
            .emit(EventKind::CheckRecovered, &node_of(path), path.clone());
    }
    // The database was published as soon as it converged (see
    // `database::report`): this round's older copy must not put it back.
    ctx.view().update_checks(|current| {
        state.database = current.database.take();
        *current = state;
    });
}

/// Says how the bring-up round ended, on the progress output.
fn report_bring_up(ctx: &dyn ClusterContext, config: &SwarmConfig, progress: &Progress) {
    let state = ctx.view().checks();
    let failing = state.matrix().failures().len();
    if state.swarm_error.is_empty() {
        info!(
            paths = state.cells.len(),
            failing, "swarm and overlay checked"
        );
        progress.println(format!(
            "swarm and overlay {}: {} paths checked, {failing} failing (ctl checks)",
            config.overlay,
            state.cells.len()
        ));
    } else {
        progress.println(format!(
            "swarm and overlay not ready: {} (ctl checks)",
            state.swarm_error
        ));
    }
    progress.finish();
}

/// Runs rounds until `shutdown` completes: requeued after success, backed
/// off after errors ([`backoff`]), one span per round with its generation.
pub async fn run(
    ctx: &dyn ClusterContext,
    config: &SwarmConfig,
    progress: Progress,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut failures = 0u32;
    for generation in 0u64.. {
        let output = Output {
            progress: &progress,
            bring_up: generation == 0,
        };
        let span = info_span!("round", generation);
        let result = reconcile(ctx, config, generation, &output)
            .instrument(span)
            .await;
        if generation == 0 {
            report_bring_up(ctx, config, &progress);
        }
        let wait = match result {
            Ok(Action::Requeue(after)) => {
                failures = 0;
                after
            }
            Err(e) => {
                failures += 1;
                let wait = backoff(failures, config.checks_interval);
                warn!(generation, phase = ?e.phase(), node = e.node().unwrap_or(""), error = %e, retry_in = ?wait, "round failed");
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => return,
        }
    }
}
