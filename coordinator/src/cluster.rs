//! Swarm, the overlay, and the reachability matrix, driven through the agents
//! (Docker's API is never reached over the network: each engine is driven by
//! its own host's agent on the local socket).
//!
//! One idempotent round, repeated every `swarm.checks_interval`:
//! 1. before any host is in a swarm: every agent listens on the cluster ports
//!    (2377/tcp on managers, 7946/tcp+udp, 4789/udp) and probes every peer
//!    (challenge/echo for UDP, so a silent drop is told from a closed port);
//!    the responders stop before Swarm needs the ports;
//! 2. Swarm: the first manager inits (advertising its private address) or is
//!    adopted; the others join with the right token unless they are in already;
//!    labels from the config;
//! 3. the overlay: refused up front when encrypted and a host lacks the kernel
//!    pieces; else created or adopted on the first manager;
//! 4. after Swarm: Swarm's TCP ports probed directly, and the overlay data path
//!    end to end between probe containers on every host (by name, by address,
//!    full-size packets).
//!
//! A coordinator restart in the middle finishes the job: every step adopts
//! what exists. A host whose agent or engine is down shows as failing cells
//! naming it; the others stay green.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use apiary_agent::database::EndpointMode;
use apiary_agent::ops::OpRequest;
use apiary_agent::reach::{
    Cell, Check, Coverage, Matrix, Member, Outcome, PortSpec, Proto, Target, targets,
};
use apiary_agent::swarm::{OverlaySpec, ProbeEndpoint, SwarmState, SwarmView};
use futures::future::join_all;
use tracing::{info, warn};

use crate::config::{DatabaseConfig, SwarmConfig};
use crate::progress::Progress;
use crate::registry::now_unix_ms;
use crate::server::Coordinator;

/// What one node looks like in the swarm, as the first manager sees it.
#[derive(Debug, Clone, Default)]
pub struct NodeSwarm {
    pub role: String,
    pub status: String,
    pub availability: String,
    pub leader: bool,
    pub overlay_attached: bool,
}

/// The latest matrix and Swarm view, shown by `ctl checks` and `ctl status`.
#[derive(Debug, Clone, Default)]
pub struct ChecksState {
    pub phase: String,
    pub at_unix_ms: u64,
    pub cells: Vec<Cell>,
    pub swarm_error: String,
    pub hosts: u32,
    /// Enrolled hosts whose agent was not connected for the round: none of
    /// their paths were checked, so the checks cannot pass.
    pub down: Vec<String>,
    pub swarm: HashMap<String, NodeSwarm>,
    /// Pre-swarm matrix, kept for reference once Swarm runs.
    pub pre_swarm: Vec<Cell>,
    /// The database on the overlay, when `[database]` is configured.
    pub database: Option<DatabaseState>,
}

/// One database server, as the agent on its host reads it.
#[derive(Debug, Clone, Default)]
pub struct DatabaseServer {
    pub name: String,
    pub host: String,
    pub running: bool,
    pub healthy: bool,
    pub error: String,
}

/// The database as the last round saw it.
#[derive(Debug, Clone, Default)]
pub struct DatabaseState {
    pub kind: String,
    pub servers: Vec<DatabaseServer>,
    /// Servers answering a quorum read.
    pub connected: usize,
    /// Leader's server name ("" when none is known).
    pub leader: String,
    /// Why services could not be created, if so.
    pub error: String,
}

impl DatabaseState {
    pub fn healthy(&self) -> bool {
        !self.servers.is_empty() && self.connected == self.servers.len() && !self.leader.is_empty()
    }

    pub fn summary(&self) -> String {
        format!(
            "{}/{} servers connected, leader {}",
            self.connected,
            self.servers.len(),
            if self.leader.is_empty() {
                "none"
            } else {
                &self.leader
            }
        )
    }
}

impl ChecksState {
    fn matrix(&self) -> Matrix {
        let mut m = Matrix::new();
        m.extend(self.cells.iter().cloned());
        m
    }

    pub fn to_wire(&self) -> apiary_proto::ChecksResponse {
        let failures = self
            .matrix()
            .failures()
            .into_iter()
            .map(|f| apiary_proto::CheckFailure {
                src: f.src,
                dst: f.dst,
                port: f.port.into(),
                proto: f.proto.to_string(),
                check: format!("{:?}", f.check).to_lowercase(),
                outcome: f
                    .outcome
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "no result".into()),
                cause: f.cause,
            })
            .chain(self.down.iter().map(|host| apiary_proto::CheckFailure {
                src: host.clone(),
                dst: String::new(),
                port: 0,
                proto: "host".into(),
                check: "session".into(),
                outcome: "down".into(),
                cause: "its agent is not connected, so none of its paths were checked (`ctl status` shows since when)".into(),
            }))
            .collect();
        apiary_proto::ChecksResponse {
            phase: if self.phase.is_empty() {
                "none".into()
            } else {
                self.phase.clone()
            },
            at_unix_ms: self.at_unix_ms,
            cells_json: serde_json::to_string(&self.cells).unwrap_or_default(),
            failures,
            swarm_error: self.swarm_error.clone(),
            hosts: self.hosts,
            pre_swarm_cells_json: serde_json::to_string(&self.pre_swarm).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone)]
struct Host {
    name: String,
    ip: Ipv4Addr,
    manager: bool,
}

/// How many managers: configured, else 3 from 3 hosts up (Raft needs 3 to
/// survive a loss), else 1.
fn manager_count(config: &SwarmConfig, hosts: usize) -> usize {
    config
        .managers
        .unwrap_or(if hosts >= 3 { 3 } else { 1 })
        .min(hosts)
        .max(1)
}

/// The ready hosts with a private address, managers first by name.
fn members(coord: &Coordinator, config: &SwarmConfig) -> Vec<Host> {
    coord
        .status()
        .map(|s| members_of(&s.nodes, config))
        .unwrap_or_default()
}

fn members_of(nodes: &[apiary_proto::NodeStatus], config: &SwarmConfig) -> Vec<Host> {
    let hosts: Vec<(String, Ipv4Addr)> = nodes
        .iter()
        .filter(|n| n.state == "ready")
        .filter_map(|n| Some((n.name.clone(), n.private_ip.parse().ok()?)))
        .collect();
    with_roles(hosts, config)
}

/// Hosts in placement order (names, numbers compared as numbers), the first
/// `manager_count` of them managers: the same order the database places its
/// servers in, so the highest-numbered hosts, the ones a scale-down removes,
/// are workers (`workerbee-10` is not a manager before `workerbee-2`).
fn with_roles(mut hosts: Vec<(String, Ipv4Addr)>, config: &SwarmConfig) -> Vec<Host> {
    hosts.sort_by(|a, b| crate::database::placement_order(&a.0, &b.0));
    let managers = manager_count(config, hosts.len());
    hosts
        .into_iter()
        .enumerate()
        .map(|(i, (name, ip))| Host {
            name,
            ip,
            manager: i < managers,
        })
        .collect()
}

fn as_members(hosts: &[Host]) -> Vec<Member> {
    hosts
        .iter()
        .map(|h| Member {
            name: h.name.clone(),
            ip: h.ip,
            manager: h.manager,
        })
        .collect()
}

/// A cell saying a whole check could not run from or to a host.
fn unavailable(src: &str, dst: &str, addr: Ipv4Addr, proto: Proto, port: u16, why: &str) -> Cell {
    Cell {
        src: src.into(),
        dst: dst.into(),
        addr,
        port,
        proto,
        check: if proto == Proto::Overlay {
            Check::PingName
        } else {
            Check::Direct
        },
        outcome: Outcome::Error(why.into()),
        rtt: None,
        detail: Some(why.into()),
    }
}

async fn call<T: serde::de::DeserializeOwned>(
    coord: &Coordinator,
    node: &str,
    req: &OpRequest,
) -> Result<T, String> {
    let v = coord.call(node, req).await?;
    serde_json::from_value(v).map_err(|e| format!("{node} answered something unexpected: {e}"))
}

/// Probes `targets_of` from every host at once.
async fn probe_round(
    coord: &Coordinator,
    hosts: &[Host],
    targets_of: impl Fn(&Host) -> Vec<Target>,
) -> Vec<Cell> {
    let rounds = hosts.iter().map(|h| {
        let t = targets_of(h);
        async move {
            let req = OpRequest::Probe {
                targets: t.clone(),
                timeout_ms: 1000,
            };
            match call::<Vec<Cell>>(coord, &h.name, &req).await {
                Ok(cells) => cells,
                Err(e) => t
                    .iter()
                    .flat_map(|tg| {
                        tg.ports
                            .iter()
                            .map(|p| {
                                unavailable(&h.name, &tg.peer.name, tg.peer.ip, p.proto, p.port, &e)
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect(),
            }
        }
    });
    join_all(rounds).await.into_iter().flatten().collect()
}

/// Before Swarm: responders everywhere, the full port matrix, responders off.
async fn pre_swarm_checks(coord: &Coordinator, hosts: &[Host], round: u64) -> Vec<Cell> {
    join_all(hosts.iter().map(|h| async move {
        if let Err(e) = call::<serde_json::Value>(
            coord,
            &h.name,
            &OpRequest::StartResponder { manager: h.manager },
        )
        .await
        {
            warn!(node = %h.name, error = %e, "responder did not start");
        }
    }))
    .await;
    let members = as_members(hosts);
    let coverage = Coverage::for_cluster(hosts.len());
    let cells = probe_round(coord, hosts, |h| {
        targets(&h.name, &members, coverage, round)
    })
    .await;
    join_all(hosts.iter().map(|h| async move {
        call::<serde_json::Value>(coord, &h.name, &OpRequest::StopResponder).await
    }))
    .await;
    cells
}

/// ESP between every pair of hosts (for an encrypted overlay): responders
/// (idempotent, kept across rounds) and one probe per ordered pair.
async fn esp_checks(coord: &Coordinator, hosts: &[Host]) -> Vec<Cell> {
    let started: Vec<(String, Result<serde_json::Value, String>)> =
        join_all(hosts.iter().map(|h| async move {
            (
                h.name.clone(),
                call::<serde_json::Value>(coord, &h.name, &OpRequest::StartEspResponder).await,
            )
        }))
        .await;
    for (node, r) in &started {
        if let Err(e) = r {
            warn!(node = %node, error = %e, "ESP responder did not start");
        }
    }
    probe_round(coord, hosts, |h| {
        hosts
            .iter()
            .filter(|p| p.name != h.name)
            .map(|p| Target {
                peer: apiary_agent::reach::Peer {
                    name: p.name.clone(),
                    ip: p.ip,
                },
                ports: vec![PortSpec::esp()],
            })
            .collect()
    })
    .await
}

/// Why the swarm did not form this round: what failed, on which host.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct SwarmError {
    /// The host the failing step ran on (empty: none, as with no manager).
    node: String,
    message: String,
}

impl SwarmError {
    fn on(node: &str) -> impl FnOnce(String) -> SwarmError + '_ {
        move |message| SwarmError {
            node: node.to_string(),
            message,
        }
    }
}

/// Makes the swarm: init on the first manager (or adopt), join the rest.
async fn ensure_swarm(
    coord: &Coordinator,
    config: &SwarmConfig,
    hosts: &[Host],
    views: &HashMap<String, SwarmView>,
) -> Result<SwarmView, SwarmError> {
    let first = hosts
        .iter()
        .find(|h| h.manager)
        .ok_or_else(|| SwarmError::on("")("no manager".into()))?;
    let leader_view = match views.get(&first.name) {
        Some(v) if v.state == SwarmState::Active && v.manager => v.clone(),
        _ => {
            info!(node = %first.name, "initialising the swarm");
            let view = call::<SwarmView>(
                coord,
                &first.name,
                &OpRequest::SwarmInit {
                    advertise_ip: first.ip,
                    default_addr_pool: config.default_addr_pool.clone(),
                },
            )
            .await
            .map_err(SwarmError::on(&first.name))?;
            coord.emit(
                "swarm_initialised",
                &first.name,
                format!(
                    "swarm {} on {}",
                    view.cluster_id.as_deref().unwrap_or("(no id yet)"),
                    first.ip
                ),
            );
            view
        }
    };
    let remote = SocketAddr::new(first.ip.into(), 2377);
    // A host whose engine did not answer is left alone this round: its cells
    // say so, and joining it would only wait for a timeout.
    let joining: Vec<&Host> = hosts
        .iter()
        .filter(|h| h.name != first.name)
        .filter(|h| {
            views.get(&h.name).is_some_and(|view| {
                !(view.state == SwarmState::Active && view.knows_manager(&remote))
            })
        })
        .collect();
    if joining.is_empty() {
        return Ok(leader_view);
    }
    let tokens: serde_json::Value = call(coord, &first.name, &OpRequest::JoinTokens)
        .await
        .map_err(SwarmError::on(&first.name))?;
    let token = |h: &Host| {
        tokens[if h.manager { "manager" } else { "worker" }]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // Managers join one at a time: each is a Raft membership change, and
    // Raft takes those one after another. Workers change no membership and
    // join all at once beside them (the hand recipe joins all in a row).
    let managers = async {
        for h in joining.iter().filter(|h| h.manager) {
            join_swarm(coord, h, remote, token(h)).await?;
        }
        Ok::<_, SwarmError>(())
    };
    let workers = futures::future::try_join_all(
        joining
            .iter()
            .filter(|h| !h.manager)
            .map(|h| join_swarm(coord, h, remote, token(h))),
    );
    futures::future::try_join(managers, workers).await?;
    for (node, labels) in &config.labels {
        call::<serde_json::Value>(
            coord,
            &first.name,
            &OpRequest::SetLabels {
                node: node.clone(),
                labels: labels.clone(),
            },
        )
        .await
        .map_err(SwarmError::on(&first.name))?;
    }
    Ok(leader_view)
}

async fn join_swarm(
    coord: &Coordinator,
    h: &Host,
    remote: SocketAddr,
    token: String,
) -> Result<(), SwarmError> {
    info!(node = %h.name, manager = h.manager, "joining the swarm");
    call::<SwarmView>(
        coord,
        &h.name,
        &OpRequest::SwarmJoin {
            remote,
            token,
            advertise_ip: h.ip,
        },
    )
    .await
    .map_err(SwarmError::on(&h.name))?;
    coord.emit(
        "swarm_joined",
        &h.name,
        if h.manager {
            "joined as manager"
        } else {
            "joined as worker"
        },
    );
    Ok(())
}

/// One round: see the module docs. Errors end the round early and are shown
/// by `ctl checks`; the next round tries again. Phases are shown only for the
/// `bring_up` round; results (the database turning healthy) in every round.
pub async fn converge(
    coord: &Coordinator,
    config: &SwarmConfig,
    round: u64,
    output: &Progress,
    bring_up: bool,
) {
    let progress = bring_up.then_some(output);
    // One read of the nodes serves both: who is checked, and who is down.
    let nodes = coord.status().map(|s| s.nodes).unwrap_or_default();
    let hosts = members_of(&nodes, config);
    let down: Vec<String> = nodes
        .iter()
        .filter(|n| n.state != "ready")
        .map(|n| n.name.clone())
        .collect();
    let mut state = coord.checks();
    if hosts.is_empty() {
        // Every host down: say so rather than show the last round as current.
        if !down.is_empty() && state.down != down {
            state.down = down;
            coord.set_checks(state);
        }
        return;
    }
    state.hosts = hosts.len() as u32;
    state.down = down;
    let views: HashMap<String, SwarmView> = join_all(hosts.iter().map(|h| async move {
        (
            h.name.clone(),
            call::<SwarmView>(coord, &h.name, &OpRequest::SwarmView).await,
        )
    }))
    .await
    .into_iter()
    .filter_map(|(n, v)| v.ok().map(|v| (n, v)))
    .collect();

    if !views.values().any(|v| v.state == SwarmState::Active) {
        let phase = progress.map(|p| p.phase("checks", hosts.len()));
        let cells = pre_swarm_checks(coord, &hosts, round).await;
        let mut m = Matrix::new();
        m.extend(cells.iter().cloned());
        if let Some(phase) = phase {
            phase.step(
                "matrix",
                &format!("{} paths, {} failing", cells.len(), m.failures().len()),
            );
            phase.finish();
        }
        coord.save_pre_swarm(&cells).await;
        state.pre_swarm = cells.clone();
        state.cells = cells;
        state.phase = "pre-swarm".into();
        state.at_unix_ms = now_unix_ms();
        coord.set_checks(state.clone());
    }

    let phase = progress.map(|p| p.phase("swarm", hosts.len()));
    let swarm = ensure_swarm(coord, config, &hosts, &views).await;
    if let Err(e) = &swarm {
        warn!(node = %e.node, error = %e, "swarm not formed");
        state.swarm_error = format!("swarm: {e}");
        coord.set_checks(state);
        return;
    }
    if let Some(phase) = phase {
        hosts.iter().for_each(|h| {
            phase.host(
                &h.name,
                if h.manager {
                    "swarm manager"
                } else {
                    "swarm worker"
                },
            )
        });
        phase.step(
            "all",
            &format!(
                "{} managers, {} workers",
                hosts.iter().filter(|h| h.manager).count(),
                hosts.iter().filter(|h| !h.manager).count()
            ),
        );
        phase.finish();
    }
    let first = hosts
        .iter()
        .find(|h| h.manager)
        .map(|h| h.name.clone())
        .unwrap_or_default();

    let phase = progress.map(|p| p.phase("overlay", hosts.len()));
    // An encrypted overlay needs ESP between every pair and the kernel
    // pieces on every host; Docker would create it anyway and then drop all
    // traffic, so both are checked each round and the overlay refused first.
    let esp = if config.encrypted {
        let (cells, kernel) = futures::join!(
            esp_checks(coord, &hosts),
            join_all(hosts.iter().map(|h| async move {
                call::<serde_json::Value>(coord, &h.name, &OpRequest::EncryptionSupport).await
            }))
        );
        let mut missing: Vec<String> = kernel.into_iter().filter_map(Result::err).collect();
        missing.extend(cells.iter().filter(|c| !c.outcome.is_open()).map(|c| {
            format!(
                "ESP (IP protocol 50) from {} to {}: {}",
                c.src, c.dst, c.outcome
            )
        }));
        if !missing.is_empty() {
            state.swarm_error = format!("encrypted overlay refused: {}", missing.join("; "));
            warn!(error = %state.swarm_error, "encrypted overlay refused");
            state.cells = cells;
            state.at_unix_ms = now_unix_ms();
            coord.set_checks(state);
            return;
        }
        cells
    } else {
        Vec::new()
    };
    let spec = OverlaySpec {
        name: config.overlay.clone(),
        attachable: true,
        encrypted: config.encrypted,
        mtu: config.mtu,
    };
    if let Err(e) =
        call::<serde_json::Value>(coord, &first, &OpRequest::EnsureOverlay { spec }).await
    {
        state.swarm_error = format!("overlay {}: {e}", config.overlay);
        coord.set_checks(state);
        return;
    }
    // Probe and database containers need their images on every host; the
    // lab may still be loading them (it does so while Swarm forms).
    if let Err(e) = coord.images_ready().await {
        state.swarm_error = format!("images: {e}");
        coord.set_checks(state);
        return;
    }
    state.swarm_error.clear();
    // The database needs only the overlay, and the overlay check needs only
    // the probe containers: both go on at once, except that the probe
    // containers wait until the database's are running (15 s at most). On
    // two cores, eight containers joining the overlay together took each
    // about twice as long to start as four, and the database is what the
    // bring-up waits for; in later rounds everything is running already.
    let (db_running, mut db_running_rx) = tokio::sync::watch::channel(config.database.is_none());
    let database_work = async {
        if let Some(db) = &config.database {
            let names = database_hosts(coord);
            let state = converge_database(
                coord,
                db,
                &config.overlay,
                &first,
                &names,
                progress,
                &db_running,
            )
            .await;
            db_running.send_replace(true);
            report_database(coord, db, state, output, progress);
        }
    };
    let checks_work = async {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(15),
            db_running_rx.wait_for(|running| *running),
        )
        .await;
        // Probe containers, one per host, on the overlay.
        let endpoints: Vec<(Host, Result<ProbeEndpoint, String>)> =
            join_all(hosts.iter().map(|h| async move {
                (
                    h.clone(),
                    call::<ProbeEndpoint>(
                        coord,
                        &h.name,
                        &OpRequest::EnsureProbe {
                            network: config.overlay.clone(),
                        },
                    )
                    .await,
                )
            }))
            .await;
        if let Some(phase) = phase {
            for (h, e) in &endpoints {
                phase.step(
                    &h.name,
                    &match e {
                        Ok(e) => format!("probe container at {}", e.address),
                        Err(err) => format!("no probe container: {err}"),
                    },
                );
            }
            phase.finish();
        }
        let up: Vec<ProbeEndpoint> = endpoints
            .iter()
            .filter_map(|(_, e)| e.as_ref().ok().cloned())
            .collect();

        // After Swarm: its TCP ports directly, and the overlay end to end.
        let members = as_members(&hosts);
        let direct = probe_round(coord, &hosts, |h| {
            members
                .iter()
                .filter(|m| m.name != h.name)
                .map(|m| Target {
                    peer: apiary_agent::reach::Peer {
                        name: m.name.clone(),
                        ip: m.ip,
                    },
                    ports: if m.manager {
                        vec![PortSpec::tcp(2377), PortSpec::tcp(7946)]
                    } else {
                        vec![PortSpec::tcp(7946)]
                    },
                })
                .collect()
        })
        .await;
        let overlay: Vec<Cell> = join_all(endpoints.iter().map(|(h, e)| {
            let up = up.clone();
            let hosts = hosts.clone();
            async move {
                let peers_down = |why: &str| -> Vec<Cell> {
                    hosts
                        .iter()
                        .filter(|p| p.name != h.name)
                        .map(|p| unavailable(&h.name, &p.name, p.ip, Proto::Overlay, 4789, why))
                        .collect()
                };
                let local = match e {
                    Ok(l) => l.clone(),
                    Err(err) => {
                        return peers_down(&format!("no probe container on {}: {err}", h.name));
                    }
                };
                let mut cells = match call::<Vec<Cell>>(
                    coord,
                    &h.name,
                    &OpRequest::OverlayProbe {
                        local,
                        peers: up.clone(),
                    },
                )
                .await
                {
                    Ok(c) => c,
                    Err(err) => return peers_down(&err),
                };
                // Peers without a probe container cannot be reached on the overlay at all.
                for p in hosts
                    .iter()
                    .filter(|p| p.name != h.name && !up.iter().any(|u| u.host == p.name))
                {
                    cells.push(unavailable(
                        &h.name,
                        &p.name,
                        p.ip,
                        Proto::Overlay,
                        4789,
                        &format!("{} has no probe container (engine or agent down?)", p.name),
                    ));
                }
                cells
            }
        }))
        .await
        .into_iter()
        .flatten()
        .collect();
        (up, direct, overlay)
    };
    let ((), (up, direct, overlay)) = futures::join!(database_work, checks_work);

    // The swarm as the first manager sees it.
    let mut swarm_nodes = HashMap::new();
    if let Ok(view) = call::<SwarmView>(coord, &first, &OpRequest::SwarmView).await {
        for n in view.nodes {
            swarm_nodes.insert(
                n.hostname.clone(),
                NodeSwarm {
                    role: n.role,
                    status: n.status,
                    availability: n.availability,
                    leader: n.leader,
                    overlay_attached: up.iter().any(|u| u.host == n.hostname),
                },
            );
        }
    }
    let before = failing_paths(&coord.checks().matrix());
    state.cells = direct.into_iter().chain(overlay).chain(esp).collect();
    state.phase = "swarm".into();
    state.at_unix_ms = now_unix_ms();
    state.swarm = swarm_nodes;
    let after = failing_paths(&state.matrix());
    for (path, cause) in &after {
        if !before.contains_key(path) {
            let node = path.split(' ').next().unwrap_or("");
            warn!(node, path = %path, %cause, "check failed");
            coord.emit("check_failed", node, format!("{path}: {cause}"));
        }
    }
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        coord.emit(
            "check_recovered",
            path.split(' ').next().unwrap_or(""),
            path.clone(),
        );
    }
    // The database was published as soon as it converged (see
    // `report_database`): this round's older copy must not put it back.
    coord.update_checks(|current| {
        state.database = current.database.take();
        *current = state;
    });
}

/// Logs, announces and publishes a database state the moment it is known:
/// `ctl status` shows a healthy database without waiting for the overlay
/// checks of the same round.
fn report_database(
    coord: &Coordinator,
    db: &DatabaseConfig,
    d: DatabaseState,
    output: &Progress,
    progress: Option<&Progress>,
) {
    let mut before = None;
    coord.update_checks(|checks| before = checks.database.clone());
    let was = before.as_ref().is_some_and(DatabaseState::healthy);
    if d.healthy() && !was {
        info!(summary = %d.summary(), "database healthy");
        coord.emit("database_healthy", "", d.summary());
        output.println(format!(
            "database {} healthy: {}",
            db.kind.as_str(),
            d.summary()
        ));
    } else if !d.healthy() && (was || before.is_none()) {
        let detail = database_detail(&d);
        warn!(summary = %d.summary(), %detail, "database degraded");
        if was {
            coord.emit(
                "database_degraded",
                "",
                format!("{}: {detail}", d.summary()),
            );
        }
        if let Some(progress) = progress {
            progress.println(format!(
                "database {} not ready: {} ({detail}); ctl status shows it",
                db.kind.as_str(),
                d.summary()
            ));
        }
    }
    coord.update_checks(|checks| checks.database = Some(d));
}

pub fn database_detail(d: &DatabaseState) -> String {
    let mut parts: Vec<String> = d
        .servers
        .iter()
        .filter(|s| !s.healthy)
        .map(|s| format!("{} on {}: {}", s.name, s.host, s.error))
        .collect();
    if !d.error.is_empty() {
        parts.push(d.error.clone());
    }
    parts.join("; ")
}

/// Each failing path ("src -> dst port/proto") and its cause: what the
/// events compare between two rounds.
fn failing_paths(m: &Matrix) -> BTreeMap<String, String> {
    m.failures()
        .into_iter()
        .map(|f| {
            let spec = PortSpec {
                port: f.port,
                proto: f.proto,
            };
            (format!("{} -> {} {spec}", f.src, f.dst), f.cause)
        })
        .collect()
}

/// Reads every server's health through the agent on its host.
async fn database_health(
    coord: &Coordinator,
    kind: apiary_agent::database::DatabaseKind,
    servers: &[crate::database::Server],
) -> Vec<apiary_agent::database::ServerHealth> {
    join_all(servers.iter().map(|s| async move {
        let req = OpRequest::DatabaseHealth {
            kind,
            service: s.name.clone(),
        };
        match call::<apiary_agent::database::ServerHealth>(coord, &s.host, &req).await {
            Ok(h) => h,
            Err(e) => apiary_agent::database::ServerHealth {
                host: s.host.clone(),
                service: s.name.clone(),
                error: Some(e),
                ..Default::default()
            },
        }
    }))
    .await
}

fn database_state(
    kind: &str,
    servers: &[crate::database::Server],
    health: &[apiary_agent::database::ServerHealth],
    error: String,
) -> DatabaseState {
    let mut names = BTreeMap::new();
    for h in health {
        for m in &h.members {
            if !m.name.is_empty() {
                names.insert(m.id.clone(), m.name.clone());
            }
        }
    }
    // The leader as the healthy servers see it (they agree once it is elected).
    let leader = health
        .iter()
        .filter(|h| h.healthy && !h.leader_id.is_empty() && h.leader_id != "0")
        .find_map(|h| names.get(&h.leader_id).cloned())
        .unwrap_or_default();
    let expected = servers.len();
    let servers: Vec<DatabaseServer> = servers
        .iter()
        .zip(health)
        .map(|(s, h)| {
            // A RethinkDB server answers its own queries whether or not it
            // joined the others: it counts only when its `server_status`
            // lists all of them. (etcd's health is a quorum read already.)
            let alone = kind == "rethinkdb" && h.healthy && h.members.len() < expected;
            DatabaseServer {
                name: s.name.clone(),
                host: s.host.clone(),
                running: h.running,
                healthy: h.healthy && !alone,
                error: if alone {
                    format!(
                        "sees {} of {expected} servers in server_status (not joined to the others?)",
                        h.members.len()
                    )
                } else {
                    h.error.clone().unwrap_or_default()
                },
            }
        })
        .collect();
    DatabaseState {
        kind: kind.to_string(),
        connected: servers.iter().filter(|s| s.healthy).count(),
        servers,
        leader,
        error,
    }
}

/// Creates the missing database services on the first manager (existing ones
/// are adopted), then reads every server's health. When this round created
/// services, it waits (up to 90 s) for them to become healthy, creating the
/// rest once the first is healthy when the kind needs that order.
async fn converge_database(
    coord: &Coordinator,
    db: &DatabaseConfig,
    network: &str,
    first_manager: &str,
    hosts: &[String],
    progress: Option<&Progress>,
    all_running: &tokio::sync::watch::Sender<bool>,
) -> DatabaseState {
    let db = &crate::database::effective(db, coord.database_scale());
    let flavor = crate::database::flavor(db.kind);
    let servers = crate::database::servers(db, hosts);
    let mut health = database_health(coord, db.kind, &servers).await;
    let tls = match peer_tls(coord, db, &servers) {
        Ok(tls) => tls,
        // No service without its certificate: its command expects one.
        Err(e) => return database_state(db.kind.as_str(), &servers, &health, e),
    };
    let specs = crate::database::specs(
        db,
        &coord_cluster(coord),
        network,
        &servers,
        endpoint_mode(coord),
        &|s| tls.get(&s.name).cloned(),
    );
    let phase = progress.map(|p| p.phase("database", servers.len()));
    let started = std::time::Instant::now();
    let mut created_any = false;
    loop {
        if health.iter().all(|h| h.running) {
            all_running.send_replace(true);
        }
        let mut error = String::new();
        let first_healthy = health.first().is_some_and(|h| h.healthy);
        for (i, spec) in specs.iter().enumerate() {
            if health[i].running {
                continue;
            }
            if i > 0 && flavor.first_before_others() && !first_healthy {
                continue;
            }
            // `ctl scale` adds and removes servers itself, in its order.
            if SCALING.try_lock().is_err() {
                continue;
            }
            match call::<apiary_agent::database::ServiceState>(
                coord,
                first_manager,
                &OpRequest::EnsureService {
                    spec: Box::new(spec.clone()),
                },
            )
            .await
            {
                Ok(s) if s.created => {
                    created_any = true;
                    info!(service = %s.name, node = %spec.node, "database service created");
                    coord.emit(
                        "database_service_created",
                        &spec.node,
                        format!("{} on {}", s.name, spec.node),
                    );
                }
                Ok(s) if !s.matches => {
                    warn!(service = %s.name, "database service exists with another spec; adopted as it is");
                }
                Ok(_) => {}
                Err(e) => error = format!("service {}: {e}", spec.name),
            }
        }
        let state = database_state(db.kind.as_str(), &servers, &health, error);
        if state.healthy() || !created_any || started.elapsed() > std::time::Duration::from_secs(90)
        {
            if let Some(phase) = phase {
                for s in &state.servers {
                    phase.step(
                        &s.host,
                        &if s.healthy {
                            format!("{} healthy", s.name)
                        } else {
                            format!("{}: {}", s.name, s.error)
                        },
                    );
                }
                phase.finish();
            }
            return state;
        }
        // Health rounds are cheap (one short `etcdctl` per server); a
        // tighter poll is seen healthy sooner.
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        health = database_health(coord, db.kind, &servers).await;
    }
}

/// Each server's peer certificate, by service name, when `[database]
/// peer_tls` is on (none when off).
fn peer_tls(
    coord: &Coordinator,
    db: &DatabaseConfig,
    servers: &[crate::database::Server],
) -> Result<HashMap<String, apiary_agent::database::PeerTls>, String> {
    if !db.peer_tls {
        return Ok(HashMap::new());
    }
    servers
        .iter()
        .map(|s| Ok((s.name.clone(), coord.database_peer_tls(&s.name)?)))
        .collect()
}

fn endpoint_mode(coord: &Coordinator) -> EndpointMode {
    endpoint_mode_for(&coord.status().map(|s| s.nodes).unwrap_or_default())
}

/// The database services' endpoint mode from the nodes' facts: a VIP is
/// balanced by IPVS in the resolving container's own host, so it needs
/// `ip_vs` on every host; one host without it (or facts not yet reported)
/// means dnsrr.
fn endpoint_mode_for(nodes: &[apiary_proto::NodeStatus]) -> EndpointMode {
    EndpointMode::for_kernels(
        !nodes.is_empty()
            && nodes.iter().all(|n| {
                n.facts.as_ref().is_some_and(|f| {
                    f.kernel_features
                        .iter()
                        .any(|k| k.name == "ip_vs" && k.available)
                })
            }),
    )
}

/// Every enrolled host, ready or not, by name: server N stays on the N-th
/// host while another host is down (placement never shifts).
fn database_hosts(coord: &Coordinator) -> Vec<String> {
    let mut names: Vec<String> = coord
        .status()
        .map(|s| s.nodes.into_iter().map(|n| n.name).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Takes `node` out of the database and Swarm before it is removed (its
/// certificate revoked, its droplet deleted), the way an operator would:
/// its database server leaves through the database's own API (the last
/// server only: servers are named and placed by position, so removing
/// another would rename or move every later one; the DigitalOcean
/// scale-down drains highest-numbered first so each is the last), then a manager
/// drains and demotes it, it leaves, and a manager drops it from the node
/// list. Returns one sentence per step. Swarm steps that cannot run (the
/// host is already gone) are reported and skipped, so a dead host can still
/// be removed; a database that cannot let its server go refuses the drain.
pub async fn drain_node(
    coord: &Coordinator,
    config: &SwarmConfig,
    node: &str,
) -> Result<Vec<String>, String> {
    let mut steps = Vec::new();
    if let Some(base) = &config.database {
        let db = crate::database::effective(base, coord.database_scale());
        let servers = crate::database::servers(&db, &database_hosts(coord));
        if let Some(pos) = servers.iter().position(|s| s.host == node) {
            let last = &servers[servers.len() - 1];
            if pos + 1 != servers.len() {
                return Err(format!(
                    "{node} runs database server {}; only the last server ({} on {}) can leave without moving \
                     the others: remove {} first, or lower the server count with `ctl scale database=N`",
                    servers[pos].name, last.name, last.host, last.host
                ));
            }
            if servers.len() == 1 {
                return Err(format!(
                    "{node} runs the only database server ({}): removing it would lose the database",
                    last.name
                ));
            }
            let summary = scale_database(coord, config, servers.len() - 1)
                .await
                .map_err(|e| format!("{node}'s database server {} cannot leave: {e}", last.name))?;
            steps.push(format!(
                "database: {} left the cluster ({summary})",
                last.name
            ));
        }
    }
    // Asked of a manager now, not read from the last round: right after a
    // coordinator restart no round has finished yet.
    let cached = coord.checks().swarm;
    let mut manager = None;
    let mut in_swarm = cached.contains_key(node);
    for h in members(coord, config)
        .into_iter()
        .filter(|h| h.name != node)
    {
        if !(h.manager || cached.get(&h.name).is_some_and(|n| n.role == "manager")) {
            continue;
        }
        if let Ok(view) = call::<SwarmView>(coord, &h.name, &OpRequest::SwarmView).await
            && view.manager
        {
            in_swarm = view.nodes.iter().any(|n| n.hostname == node);
            manager = Some(h.name);
            break;
        }
    }
    if !in_swarm {
        steps.push(format!("swarm: {node} is not a swarm node"));
        return Ok(steps);
    }
    let Some(manager) = manager else {
        steps.push(
            "swarm: no other manager is ready; the swarm keeps its entry for this node".into(),
        );
        return Ok(steps);
    };
    let drain = OpRequest::SwarmDrain {
        node: node.to_string(),
    };
    steps.push(
        match call::<serde_json::Value>(coord, &manager, &drain).await {
            Ok(_) => format!("swarm: {node} drained and demoted (by {manager})"),
            Err(e) => format!("swarm: could not drain {node}: {e}"),
        },
    );
    steps.push(
        match call::<serde_json::Value>(coord, node, &OpRequest::SwarmLeave).await {
            Ok(_) => format!("swarm: {node} left the swarm"),
            Err(e) => {
                format!("swarm: {node} could not leave ({e}); removed from the node list instead")
            }
        },
    );
    let remove = OpRequest::SwarmRemoveNode {
        node: node.to_string(),
    };
    steps.push(
        match call::<serde_json::Value>(coord, &manager, &remove).await {
            Ok(_) => format!("swarm: {node} removed from the node list"),
            Err(e) => format!("swarm: could not remove {node} from the node list: {e}"),
        },
    );
    for s in &steps {
        info!(node, step = %s, "drain");
    }
    Ok(steps)
}

/// Serialises `ctl scale database=N` requests.
static SCALING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until `servers` all answer healthy with a leader.
async fn wait_database_healthy(
    coord: &Coordinator,
    db: &DatabaseConfig,
    servers: &[crate::database::Server],
    within: std::time::Duration,
) -> Result<DatabaseState, String> {
    let start = std::time::Instant::now();
    loop {
        let health = database_health(coord, db.kind, servers).await;
        let state = database_state(db.kind.as_str(), servers, &health, String::new());
        if state.healthy() {
            return Ok(state);
        }
        if start.elapsed() > within {
            return Err(format!(
                "database not healthy after {within:?}: {} ({})",
                state.summary(),
                database_detail(&state)
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Runs etcdctl in `via`'s container, on its host.
async fn etcdctl(
    coord: &Coordinator,
    db: &DatabaseConfig,
    via: &crate::database::Server,
    args: &[String],
) -> Result<String, String> {
    let mut command = vec![
        "etcdctl".to_string(),
        format!("--endpoints=http://127.0.0.1:{}", db.client_port),
        "--command-timeout=10s".to_string(),
    ];
    command.extend(args.iter().cloned());
    let v: serde_json::Value = call(
        coord,
        &via.host,
        &OpRequest::DatabaseExec {
            service: via.name.clone(),
            command: command.clone(),
        },
    )
    .await?;
    let out = v["output"].as_str().unwrap_or_default().to_string();
    if v["code"].as_i64() != Some(0) {
        return Err(format!(
            "`{}` in {} on {} failed: {}",
            command.join(" "),
            via.name,
            via.host,
            out.trim()
        ));
    }
    Ok(out)
}

/// Removes the etcd member whose peer URL is `peer_url`, if there is one,
/// asking through the server `via`.
async fn etcd_remove_member(
    coord: &Coordinator,
    db: &DatabaseConfig,
    via: &crate::database::Server,
    peer_url: &str,
) -> Result<(), String> {
    let list = etcdctl(
        coord,
        db,
        via,
        &["member".into(), "list".into(), "-w".into(), "json".into()],
    )
    .await?;
    if let Some(id) = etcd_member_id(&list, peer_url) {
        etcdctl(coord, db, via, &["member".into(), "remove".into(), id]).await?;
    }
    Ok(())
}

/// The member id (hex) of the member with peer URL `peer`, from `member list -w json`.
fn etcd_member_id(list_json: &str, peer: &str) -> Option<String> {
    let start = list_json.find('{')?;
    let v: serde_json::Value = serde_json::from_str(&list_json[start..]).ok()?;
    v["members"].as_array()?.iter().find_map(|m| {
        m["peerURLs"]
            .as_array()?
            .iter()
            .any(|u| u == peer)
            .then(|| m["ID"].as_u64().map(|n| format!("{n:x}")))?
    })
}

/// `ctl scale database=N`: one server at a time, the cluster healthy before
/// and after each step. etcd: a new member is added through the membership
/// API before its server starts (joining as `existing`); a member is removed
/// through the API before its service is removed. Servers are added on the
/// next host by name and removed from the last.
pub async fn scale_database(
    coord: &Coordinator,
    config: &SwarmConfig,
    n: usize,
) -> Result<String, String> {
    let _one = SCALING
        .try_lock()
        .map_err(|_| "a database scale is already running".to_string())?;
    let base = config
        .database
        .as_ref()
        .ok_or("this cluster has no [database] section")?;
    let hosts = members(coord, config);
    if n == 0 || n > hosts.len() {
        return Err(format!(
            "database={n}: between 1 and {} (one server per ready host)",
            hosts.len()
        ));
    }
    let first_manager = hosts
        .iter()
        .find(|h| h.manager)
        .map(|h| h.name.clone())
        .ok_or("no Swarm manager is ready")?;
    let names = database_hosts(coord);
    let db = crate::database::effective(base, coord.database_scale());
    let current = crate::database::servers(&db, &names);
    let flavor = crate::database::flavor(db.kind);
    let mut all = db.clone();
    all.servers = Some(names.len());
    let possible = crate::database::servers(&all, &names);
    let within = std::time::Duration::from_secs(90);
    wait_database_healthy(coord, &db, &current, std::time::Duration::from_secs(5))
        .await
        .map_err(|e| format!("not scaling an unhealthy database: {e}"))?;
    let peer = |s: &crate::database::Server| crate::database::peer_url(&db, s);
    let mut count = current.len();
    while count < n {
        let new = &possible[count];
        let via = &possible[0];
        let generation = crate::registry::now_unix_ms();
        let command = match db.kind {
            apiary_agent::database::DatabaseKind::Etcd => {
                // A member left over by a failed attempt is removed first.
                etcd_remove_member(coord, &db, via, &peer(new)).await?;
                // etcd refuses a member add ("unhealthy cluster") until the
                // member asked has been connected to a quorum for 5 s, e.g.
                // just after a restart or a removal: retry for a while.
                let add = [
                    "member".to_string(),
                    "add".into(),
                    new.name.clone(),
                    format!("--peer-urls={}", peer(new)),
                ];
                let start = std::time::Instant::now();
                let out = loop {
                    match etcdctl(coord, &db, via, &add).await {
                        Ok(out) => break out,
                        Err(e)
                            if e.contains("unhealthy cluster")
                                && start.elapsed() < std::time::Duration::from_secs(30) =>
                        {
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                        Err(e) => return Err(e),
                    }
                };
                let initial = crate::database::etcd_initial_cluster(&out)
                    .ok_or_else(|| format!("member add did not print the cluster: {out}"))?;
                flavor
                    .join_command(&db, &coord_cluster(coord), new, &initial, generation)
                    .ok_or("this database cannot scale yet")?
            }
            // A new RethinkDB server joins the first by name, as every
            // non-first server does at bring-up.
            apiary_agent::database::DatabaseKind::Rethinkdb => {
                flavor.command(&db, &coord_cluster(coord), new, &possible[..=count])
            }
        };
        let tls = peer_tls(coord, &db, std::slice::from_ref(new))?;
        let spec = crate::database::spec_with(
            &db,
            &config.overlay,
            new,
            command,
            endpoint_mode(coord),
            tls.get(&new.name).cloned(),
        );
        call::<apiary_agent::database::ServiceState>(
            coord,
            &first_manager,
            &OpRequest::EnsureService {
                spec: Box::new(spec),
            },
        )
        .await?;
        count += 1;
        coord.set_database_scale(count).await?;
        coord.emit(
            "database_scaled",
            &new.host,
            format!("{} added on {}", new.name, new.host),
        );
        wait_database_healthy(coord, &db, &possible[..count], within).await?;
    }
    while count > n {
        let gone = &possible[count - 1];
        let via = &possible[0];
        // Converge rounds stop looking after it first.
        coord.set_database_scale(count - 1).await?;
        if db.kind == apiary_agent::database::DatabaseKind::Etcd
            && let Err(e) = etcd_remove_member(coord, &db, via, &peer(gone)).await
        {
            // Still a member: keep looking after its server.
            coord.set_database_scale(count).await?;
            return Err(e);
        }
        // RethinkDB needs nothing before: a server that leaves is dropped
        // from `server_status`; tables with replicas on it are reconfigured
        // by the operator (`r.db(..).table(..).reconfigure`), as upstream
        // documents for removing a server.
        call::<serde_json::Value>(
            coord,
            &first_manager,
            &OpRequest::RemoveService {
                name: gone.name.clone(),
            },
        )
        .await?;
        count -= 1;
        coord.emit(
            "database_scaled",
            &gone.host,
            format!("{} removed from {}", gone.name, gone.host),
        );
        wait_database_healthy(coord, &db, &possible[..count], within).await?;
    }
    let state = wait_database_healthy(coord, &db, &possible[..count], within).await?;
    Ok(format!("database: {}", state.summary()))
}

fn coord_cluster(coord: &Coordinator) -> String {
    coord.status().map(|s| s.cluster).unwrap_or_default()
}

/// Repeats [`converge`] every `checks_interval`, forever.
pub async fn run(coord: Arc<Coordinator>, config: SwarmConfig, progress: Progress) {
    let mut round = 0u64;
    loop {
        converge(&coord, &config, round, &progress, round == 0).await;
        if round == 0 {
            let state = coord.checks();
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
        round += 1;
        tokio::time::sleep(config.checks_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(managers: Option<usize>) -> SwarmConfig {
        SwarmConfig {
            managers,
            overlay: "apiary".into(),
            encrypted: false,
            mtu: None,
            checks_interval: Duration::from_secs(10),
            labels: Default::default(),
            default_addr_pool: vec![],
            database: None,
        }
    }

    #[test]
    fn managers_are_the_first_hosts_with_numbers_compared_as_numbers() {
        let hosts = [
            "workerbee-10",
            "workerbee-2",
            "queenbee",
            "workerbee-1",
            "workerbee-9",
        ]
        .map(|n| (n.to_string(), Ipv4Addr::new(10, 231, 0, 11)))
        .to_vec();
        let roles: Vec<(String, bool)> = with_roles(hosts, &cfg(None))
            .into_iter()
            .map(|h| (h.name, h.manager))
            .collect();
        let expect = [
            ("queenbee", true),
            ("workerbee-1", true),
            ("workerbee-2", true),
            ("workerbee-9", false),
            ("workerbee-10", false),
        ]
        .map(|(n, m)| (n.to_string(), m));
        assert_eq!(roles, expect);
    }

    /// A node whose facts list `ip_vs` as available or not; `None`: no facts yet.
    fn node(name: &str, ip_vs: Option<bool>) -> apiary_proto::NodeStatus {
        apiary_proto::NodeStatus {
            name: name.into(),
            facts: ip_vs.map(|available| apiary_proto::Facts {
                kernel_features: vec![
                    apiary_proto::KernelFeature {
                        name: "vxlan".into(),
                        available: true,
                        detail: String::new(),
                    },
                    apiary_proto::KernelFeature {
                        name: "ip_vs".into(),
                        available,
                        detail: String::new(),
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn endpoint_mode_is_vip_only_when_every_node_reports_ip_vs() {
        let all = [
            node("a", Some(true)),
            node("b", Some(true)),
            node("c", Some(true)),
        ];
        assert_eq!(endpoint_mode_for(&all), EndpointMode::Vip);
        // Mixed kernels: one host without IPVS would resolve a VIP that carries nothing.
        let mixed = [
            node("a", Some(true)),
            node("b", Some(false)),
            node("c", Some(true)),
        ];
        assert_eq!(endpoint_mode_for(&mixed), EndpointMode::Dnsrr);
        let none = [node("a", Some(false)), node("b", Some(false))];
        assert_eq!(endpoint_mode_for(&none), EndpointMode::Dnsrr);
        // A host that has not reported facts yet is not assumed to have it.
        let unknown = [node("a", Some(true)), node("b", None)];
        assert_eq!(endpoint_mode_for(&unknown), EndpointMode::Dnsrr);
        // A kernel that does not list ip_vs at all lacks it.
        let mut missing = node("b", Some(true));
        if let Some(f) = missing.facts.as_mut() {
            f.kernel_features.retain(|k| k.name != "ip_vs");
        }
        assert_eq!(
            endpoint_mode_for(&[node("a", Some(true)), missing]),
            EndpointMode::Dnsrr
        );
        assert_eq!(
            endpoint_mode_for(&[]),
            EndpointMode::Dnsrr,
            "no nodes known"
        );
    }

    #[test]
    fn a_rethinkdb_server_that_sees_only_itself_is_not_connected() {
        use apiary_agent::database::{MemberView, ServerHealth};
        let servers: Vec<crate::database::Server> = (1..=2)
            .map(|i| crate::database::Server {
                index: i,
                name: format!("rethinkdb-{i}"),
                host: format!("h{i}"),
            })
            .collect();
        let member = |n: &str| MemberView {
            id: n.into(),
            name: n.into(),
        };
        let health = |members: Vec<MemberView>| ServerHealth {
            running: true,
            healthy: true,
            members,
            ..Default::default()
        };
        let joined = database_state(
            "rethinkdb",
            &servers,
            &[
                health(vec![member("rethinkdb_1"), member("rethinkdb_2")]),
                health(vec![member("rethinkdb_1"), member("rethinkdb_2")]),
            ],
            String::new(),
        );
        assert_eq!(joined.connected, 2);
        let apart = database_state(
            "rethinkdb",
            &servers,
            &[
                health(vec![member("rethinkdb_1")]),
                health(vec![member("rethinkdb_2")]),
            ],
            String::new(),
        );
        assert_eq!(apart.connected, 0);
        assert!(
            apart.servers[1].error.contains("sees 1 of 2 servers"),
            "{}",
            apart.servers[1].error
        );
    }

    #[test]
    fn one_manager_below_three_hosts_three_from_three_up_unless_configured() {
        assert_eq!(manager_count(&cfg(None), 1), 1);
        assert_eq!(manager_count(&cfg(None), 2), 1);
        assert_eq!(manager_count(&cfg(None), 4), 3);
        assert_eq!(manager_count(&cfg(Some(1)), 4), 1);
        assert_eq!(manager_count(&cfg(Some(5)), 4), 4);
    }
}
