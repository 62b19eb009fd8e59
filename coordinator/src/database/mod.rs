//! The clustered database on the overlay: what runs ([`spec`]: one
//! [`spec::Flavor`] per kind turns `[database]` and the hosts into Swarm
//! service definitions), how servers join and leave a running cluster
//! ([`membership`]), and the control that drives both through the agents:
//! [`converge`] (a round's database step), [`scale`] (`ctl scale
//! database=N`), [`leave`] (a node's server before the node goes).
//!
//! The control never looks at the kind: it asks the flavour. Decisions that
//! need no I/O ([`state_of`], [`to_create`], [`endpoint_mode_for`]) are
//! plain functions with unit tests; the rest runs against a
//! [`ClusterContext`], which tests fake.
//!
//! Membership changes (scale, a node's server leaving) hold
//! `ClusterView::database_membership`; a round creates no server while it is
//! held, so the two never race.

pub mod membership;
pub mod spec;
pub mod tables;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use apiary_api::database::{AdminCredentials, EndpointMode, PeerTls, ServerHealth};
use apiary_api::ops::{DatabaseHealth, EnsureService, RemoveService};
use futures::future::join_all;
use tracing::{info, warn};

pub use spec::{Server, placement_order};

use crate::config::DatabaseConfig;
use crate::context::{ClusterContext, NodeObservation, RecordError};
use crate::events::EventKind;
use crate::progress::Progress;
use crate::sessions::{CallError, call};
use crate::state::{DatabaseServer, DatabaseState};

/// How long a membership change waits for the database to be healthy again.
const SETTLE: Duration = Duration::from_secs(90);

/// Why a database step failed; each says what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DatabaseError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("`{command}` in {server} on {host} failed: {output}")]
    Etcdctl {
        command: String,
        server: String,
        host: String,
        output: String,
        failure: membership::EtcdctlFailure,
    },
    #[error("member add did not print the cluster: {output}")]
    UnexpectedMemberAdd { output: String },
    #[error("this database ({kind}) cannot scale yet")]
    CannotScale { kind: &'static str },
    #[error("no server to add")]
    NothingToAdd,
    #[error("a database scale is already running")]
    Busy,
    #[error("this cluster has no [database] section")]
    NotConfigured,
    #[error("database={asked}: between 1 and {hosts} (one server per ready host)")]
    OutOfRange { asked: usize, hosts: usize },
    #[error("no Swarm manager is ready")]
    NoManager,
    #[error("database not healthy after {within:?}: {summary} ({detail})")]
    NotHealthy {
        within: Duration,
        summary: String,
        detail: String,
    },
    #[error("not scaling an unhealthy database: {0}")]
    Unhealthy(Box<DatabaseError>),
    #[error(
        "{node} runs database server {server}; only the last server ({last} on {last_host}) can leave without moving \
         the others: remove {last_host} first, or lower the server count with `ctl scale database=N`"
    )]
    NotLast {
        node: String,
        server: String,
        last: String,
        last_host: String,
    },
    #[error("{node} runs the only database server ({server}): removing it would lose the database")]
    OnlyServer { node: String, server: String },
    #[error(transparent)]
    Placement(#[from] tables::PlacementError),
    #[error(
        "the tables were not all ready within {within:?} after moving replicas for {server}: still waiting for \
         {waiting}; the server was not removed (RethinkDB goes on moving them: retry once `ctl status` shows every \
         table ready)"
    )]
    TablesNotMoved {
        server: String,
        within: Duration,
        waiting: String,
    },
    #[error("{node}'s database server {server} cannot leave: {reason}")]
    CannotLeave {
        node: String,
        server: String,
        reason: Box<DatabaseError>,
    },
}

/// Every enrolled host, ready or not, by name: server N stays on the N-th
/// host while another host is down (placement never shifts).
pub fn hosts(nodes: &[NodeObservation]) -> Vec<String> {
    let mut names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    names.sort();
    names
}

/// The database services' endpoint mode from the nodes' facts: a VIP is
/// balanced by IPVS in the resolving container's own host, so it needs
/// `ip_vs` on every host; one host without it (or facts not yet reported)
/// means dnsrr.
pub fn endpoint_mode_for(nodes: &[NodeObservation]) -> EndpointMode {
    EndpointMode::for_kernels(!nodes.is_empty() && nodes.iter().all(|n| n.ip_vs == Some(true)))
}

/// The administrator's credentials apiary's own connections use: when the
/// flavour has an administrator and `[database] auth` is on.
pub fn admin(
    ctx: &dyn ClusterContext,
    db: &DatabaseConfig,
) -> Result<Option<AdminCredentials>, RecordError> {
    match spec::flavor(db.kind).admin_user() {
        Some(user) if db.auth => ctx.database_admin(user).map(Some),
        _ => Ok(None),
    }
}

/// Reads every server's health through the agent on its host.
pub async fn health(
    ctx: &dyn ClusterContext,
    db: &DatabaseConfig,
    servers: &[Server],
) -> Vec<ServerHealth> {
    let admin = match admin(ctx, db) {
        Ok(admin) => admin,
        Err(e) => {
            return servers
                .iter()
                .map(|s| ServerHealth {
                    host: s.host.clone(),
                    service: s.name.clone(),
                    error: Some(e.to_string()),
                    ..Default::default()
                })
                .collect();
        }
    };
    let kind = db.kind;
    let admin = &admin;
    join_all(servers.iter().map(|s| async move {
        let op = DatabaseHealth {
            kind,
            service: s.name.clone(),
            admin: admin.clone(),
        };
        match call(ctx.agents(), &s.host, op).await {
            Ok(health) => health,
            // Its agent is being restarted by a rollout (the server itself
            // is not): as last measured, rather than a degraded database
            // for a moment nothing happened to.
            Err(_) if ctx.view().is_agent_restarting(&s.host) => last_measured(ctx, s)
                .unwrap_or_else(|| ServerHealth {
                    host: s.host.clone(),
                    service: s.name.clone(),
                    error: Some(format!("{}'s agent is restarting (upgrade)", s.host)),
                    ..Default::default()
                }),
            Err(e) => ServerHealth {
                host: s.host.clone(),
                service: s.name.clone(),
                error: Some(e.to_string()),
                ..Default::default()
            },
        }
    }))
    .await
}

/// `s`'s health as the last round published it (running and healthy; its
/// view of members and tables is the other servers' to give).
fn last_measured(ctx: &dyn ClusterContext, s: &Server) -> Option<ServerHealth> {
    let db = ctx.view().database()?;
    let last = db.servers.iter().find(|l| l.name == s.name)?;
    Some(ServerHealth {
        host: s.host.clone(),
        service: s.name.clone(),
        running: last.running,
        healthy: last.healthy,
        error: (!last.error.is_empty()).then(|| last.error.clone()),
        ..Default::default()
    })
}

/// The database from its servers' answers (pure).
pub fn state_of(
    flavor: &dyn spec::Flavor,
    servers: &[Server],
    health: &[ServerHealth],
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
    // The leader as the healthy servers see it (they agree once it is
    // elected), by its service name: `ctl status` and `ctl tunnel
    // database:admin` speak of services, the database of its own members.
    let leader = health
        .iter()
        .filter(|h| h.healthy && !h.leader_id.is_empty() && h.leader_id != "0")
        .find_map(|h| names.get(&h.leader_id))
        .and_then(|member| servers.iter().find(|s| flavor.member_name(s) == *member))
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let servers: Vec<DatabaseServer> = servers
        .iter()
        .zip(health)
        .map(|(s, h)| {
            let apart = flavor.not_joined(h, servers.len());
            DatabaseServer {
                name: s.name.clone(),
                host: s.host.clone(),
                running: h.running,
                healthy: h.healthy && apart.is_none(),
                error: apart.unwrap_or_else(|| h.error.clone().unwrap_or_default()),
            }
        })
        .collect();
    // Every server sees the same tables; the first that answered speaks.
    let tables = health
        .iter()
        .filter(|h| h.healthy)
        .find_map(|h| h.tables.clone());
    DatabaseState {
        kind: flavor.kind().as_str().to_string(),
        connected: servers.iter().filter(|s| s.healthy).count(),
        servers,
        leader,
        error,
        tables,
    }
}

/// Which servers a round creates now (pure): those not running, except
/// that a flavour whose first server must be healthy before the others
/// (RethinkDB's joins) creates only the first until it is.
pub fn to_create(flavor: &dyn spec::Flavor, health: &[ServerHealth]) -> Vec<usize> {
    let first_healthy = health.first().is_some_and(|h| h.healthy);
    health
        .iter()
        .enumerate()
        .filter(|(i, h)| !h.running && (*i == 0 || !flavor.first_before_others() || first_healthy))
        .map(|(i, _)| i)
        .collect()
}

/// Each server's certificate, by service name, when the flavour needs one
/// (`[database] peer_tls`, and etcd's client TLS with `auth`).
fn peer_tls(
    ctx: &dyn ClusterContext,
    db: &DatabaseConfig,
    servers: &[Server],
) -> Result<HashMap<String, PeerTls>, RecordError> {
    if !spec::flavor(db.kind).needs_certificates(db) {
        return Ok(HashMap::new());
    }
    servers
        .iter()
        .map(|s| Ok((s.name.clone(), ctx.database_peer_tls(&s.name)?)))
        .collect()
}

/// Creates the missing database services on the first manager (existing ones
/// are adopted), then reads every server's health. When this round created
/// services, it waits (up to 90 s) for them to become healthy, creating the
/// rest once the first is healthy when the kind needs that order.
/// `all_running` is told as soon as every server runs.
pub async fn converge(
    ctx: &dyn ClusterContext,
    base: &DatabaseConfig,
    network: &str,
    first_manager: &str,
    progress: Option<&Progress>,
    all_running: &tokio::sync::watch::Sender<bool>,
) -> DatabaseState {
    let db = &spec::effective(base, ctx.database_scale());
    let flavor = spec::flavor(db.kind);
    let nodes = ctx.nodes();
    let servers = spec::servers(db, &hosts(&nodes));
    let mut health = health(ctx, db, &servers).await;
    let (tls, admin) = match (peer_tls(ctx, db, &servers), admin(ctx, db)) {
        (Ok(tls), Ok(admin)) => (tls, admin),
        // No service without its secrets: its command expects them.
        (Err(e), _) | (_, Err(e)) => {
            return state_of(flavor.as_ref(), &servers, &health, e.to_string());
        }
    };
    let specs = spec::specs(
        db,
        ctx.cluster_name(),
        network,
        &servers,
        endpoint_mode_for(&nodes),
        &|s| tls.get(&s.name).cloned(),
        admin.as_ref(),
    );
    let phase = progress.map(|p| p.phase("database", servers.len()));
    let started = Instant::now();
    let mut created_any = false;
    loop {
        if health.iter().all(|h| h.running) {
            all_running.send_replace(true);
        }
        let mut error = String::new();
        // `ctl scale` adds and removes servers itself, in its order: while
        // it holds the membership, this round creates nothing.
        if let Ok(_membership) = ctx.view().database_membership.try_lock() {
            for i in to_create(flavor.as_ref(), &health) {
                let spec = &specs[i];
                let op = EnsureService {
                    spec: Box::new(spec.clone()),
                };
                match call(ctx.agents(), first_manager, op).await {
                    Ok(s) if s.created => {
                        created_any = true;
                        info!(service = %s.name, node = %spec.node, "database service created");
                        ctx.events().emit(
                            EventKind::DatabaseServiceCreated,
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
        }
        let state = state_of(flavor.as_ref(), &servers, &health, error);
        if state.healthy() || !created_any || started.elapsed() > SETTLE {
            if let Some(phase) = phase {
                for s in &state.servers {
                    let line = if s.healthy {
                        format!("{} healthy", s.name)
                    } else {
                        format!("{}: {}", s.name, s.error)
                    };
                    phase.step(&s.host, &line);
                }
                phase.finish();
            }
            return state;
        }
        // Health rounds are cheap (one short `etcdctl` per server); a
        // tighter poll is seen healthy sooner.
        tokio::time::sleep(Duration::from_millis(250)).await;
        health = self::health(ctx, db, &servers).await;
    }
}

/// Logs, announces and publishes a database state the moment it is known:
/// `ctl status` shows a healthy database without waiting for the overlay
/// checks of the same round.
pub fn report(
    ctx: &dyn ClusterContext,
    db: &DatabaseConfig,
    d: DatabaseState,
    output: &Progress,
    progress: Option<&Progress>,
) {
    let before = ctx.view().database();
    let was = before.as_ref().is_some_and(DatabaseState::healthy);
    if d.healthy() && !was {
        info!(summary = %d.summary(), "database healthy");
        ctx.events()
            .emit(EventKind::DatabaseHealthy, "", d.summary());
        output.println(format!(
            "database {} healthy: {}",
            db.kind.as_str(),
            d.summary()
        ));
    } else if !d.healthy() && (was || before.is_none()) {
        let detail = d.detail();
        warn!(summary = %d.summary(), %detail, "database degraded");
        if was {
            ctx.events().emit(
                EventKind::DatabaseDegraded,
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
    ctx.view().update_checks(|checks| checks.database = Some(d));
}

/// Waits until `servers` all answer healthy with a leader.
async fn wait_healthy(
    ctx: &dyn ClusterContext,
    db: &DatabaseConfig,
    servers: &[Server],
    within: Duration,
) -> Result<DatabaseState, DatabaseError> {
    let flavor = spec::flavor(db.kind);
    let start = Instant::now();
    loop {
        let health = health(ctx, db, servers).await;
        let state = state_of(flavor.as_ref(), servers, &health, String::new());
        if state.healthy() {
            return Ok(state);
        }
        if start.elapsed() > within {
            return Err(DatabaseError::NotHealthy {
                within,
                summary: state.summary(),
                detail: state.detail(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `ctl scale database=N`: one server at a time, the cluster healthy before
/// and after each step. A new member joins through the flavour's membership
/// before its server starts; a member leaves through it before its service
/// is removed. Servers are added on the next host by name and removed from
/// the last. `ready_hosts` and `first_manager` come from the caller's view
/// of the swarm.
pub async fn scale(
    ctx: &dyn ClusterContext,
    base: Option<&DatabaseConfig>,
    network: &str,
    ready_hosts: usize,
    first_manager: Option<&str>,
    n: usize,
) -> Result<String, DatabaseError> {
    let _membership = ctx
        .view()
        .database_membership
        .try_lock()
        .map_err(|_| DatabaseError::Busy)?;
    let base = base.ok_or(DatabaseError::NotConfigured)?;
    if n == 0 || n > ready_hosts {
        return Err(DatabaseError::OutOfRange {
            asked: n,
            hosts: ready_hosts,
        });
    }
    let first_manager = first_manager.ok_or(DatabaseError::NoManager)?;
    let nodes = ctx.nodes();
    let names = hosts(&nodes);
    let db = spec::effective(base, ctx.database_scale());
    let current = spec::servers(&db, &names);
    let membership = spec::flavor(db.kind).membership();
    let admin = admin(ctx, &db)?;
    let mut all = db.clone();
    all.servers = Some(names.len());
    let possible = spec::servers(&all, &names);
    wait_healthy(ctx, &db, &current, Duration::from_secs(5))
        .await
        .map_err(|e| DatabaseError::Unhealthy(Box::new(e)))?;
    let mut count = current.len();
    while count < n {
        let new = &possible[count];
        let command = membership
            .add(ctx, &db, &possible[0], &possible[..=count])
            .await?;
        let tls = peer_tls(ctx, &db, std::slice::from_ref(new))?;
        let spec = spec::spec_with(
            &db,
            network,
            new,
            command,
            endpoint_mode_for(&nodes),
            tls.get(&new.name).cloned(),
            admin.as_ref(),
        );
        let op = EnsureService {
            spec: Box::new(spec),
        };
        call(ctx.agents(), first_manager, op).await?;
        count += 1;
        ctx.set_database_scale(count).await?;
        ctx.events().emit(
            EventKind::DatabaseScaled,
            &new.host,
            format!("{} added on {}", new.name, new.host),
        );
        wait_healthy(ctx, &db, &possible[..count], SETTLE).await?;
        membership
            .after_join(ctx, &db, &possible[0], new, &possible[..count])
            .await?;
    }
    while count > n {
        let gone = &possible[count - 1];
        // Rounds stop looking after it first.
        ctx.set_database_scale(count - 1).await?;
        let stay = &possible[..count - 1];
        if let Err(e) = membership.remove(ctx, &db, &possible[0], gone, stay).await {
            // Still a member: keep looking after its server.
            ctx.set_database_scale(count).await?;
            return Err(e);
        }
        let op = RemoveService {
            name: gone.name.clone(),
        };
        call(ctx.agents(), first_manager, op).await?;
        count -= 1;
        ctx.events().emit(
            EventKind::DatabaseScaled,
            &gone.host,
            format!("{} removed from {}", gone.name, gone.host),
        );
        wait_healthy(ctx, &db, &possible[..count], SETTLE).await?;
    }
    let state = wait_healthy(ctx, &db, &possible[..count], SETTLE).await?;
    Ok(format!("database: {}", state.summary()))
}

/// Takes `node`'s database server out before the node goes: only the last
/// server can leave (servers are named and placed by position, so removing
/// another would rename or move every later one), and never the only one.
/// `None` when `node` runs no server.
pub async fn leave(
    ctx: &dyn ClusterContext,
    base: &DatabaseConfig,
    network: &str,
    ready_hosts: usize,
    first_manager: Option<&str>,
    node: &str,
) -> Result<Option<String>, DatabaseError> {
    let db = spec::effective(base, ctx.database_scale());
    let servers = spec::servers(&db, &hosts(&ctx.nodes()));
    let Some(pos) = servers.iter().position(|s| s.host == node) else {
        return Ok(None);
    };
    let last = &servers[servers.len() - 1];
    if pos + 1 != servers.len() {
        return Err(DatabaseError::NotLast {
            node: node.to_string(),
            server: servers[pos].name.clone(),
            last: last.name.clone(),
            last_host: last.host.clone(),
        });
    }
    if servers.len() == 1 {
        return Err(DatabaseError::OnlyServer {
            node: node.to_string(),
            server: last.name.clone(),
        });
    }
    let summary = scale(
        ctx,
        Some(base),
        network,
        ready_hosts,
        first_manager,
        servers.len() - 1,
    )
    .await
    .map_err(|e| DatabaseError::CannotLeave {
        node: node.to_string(),
        server: last.name.clone(),
        reason: Box::new(e),
    })?;
    Ok(Some(format!(
        "database: {} left the cluster ({summary})",
        last.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_api::database::{DatabaseKind, MemberView};

    fn obs(name: &str, ip_vs: Option<bool>) -> NodeObservation {
        NodeObservation {
            name: name.into(),
            ready: true,
            private_ip: None,
            ip_vs,
        }
    }

    #[test]
    fn endpoint_mode_is_vip_only_when_every_node_reports_ip_vs() {
        let all = [obs("a", Some(true)), obs("b", Some(true))];
        assert_eq!(endpoint_mode_for(&all), EndpointMode::Vip);
        // Mixed kernels: one host without IPVS would resolve a VIP that carries nothing.
        let mixed = [obs("a", Some(true)), obs("b", Some(false))];
        assert_eq!(endpoint_mode_for(&mixed), EndpointMode::Dnsrr);
        // A host that has not reported facts yet is not assumed to have it.
        let unknown = [obs("a", Some(true)), obs("b", None)];
        assert_eq!(endpoint_mode_for(&unknown), EndpointMode::Dnsrr);
        assert_eq!(
            endpoint_mode_for(&[]),
            EndpointMode::Dnsrr,
            "no nodes known"
        );
    }

    fn servers(kind: &str) -> Vec<Server> {
        (1..=2)
            .map(|i| Server {
                index: i,
                name: format!("{kind}-{i}"),
                host: format!("h{i}"),
            })
            .collect()
    }

    fn health(running: bool, healthy: bool, members: &[&str]) -> ServerHealth {
        ServerHealth {
            running,
            healthy,
            members: members
                .iter()
                .map(|n| MemberView {
                    id: n.to_string(),
                    name: n.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_rethinkdb_server_that_sees_only_itself_is_not_connected() {
        let flavor = spec::flavor(DatabaseKind::Rethinkdb);
        let both = ["rethinkdb_1", "rethinkdb_2"];
        let joined = state_of(
            flavor.as_ref(),
            &servers("rethinkdb"),
            &[health(true, true, &both), health(true, true, &both)],
            String::new(),
        );
        assert_eq!(joined.connected, 2);
        let apart = state_of(
            flavor.as_ref(),
            &servers("rethinkdb"),
            &[
                health(true, true, &["rethinkdb_1"]),
                health(true, true, &["rethinkdb_2"]),
            ],
            String::new(),
        );
        assert_eq!(apart.connected, 0);
        assert!(
            apart.servers[1].error.contains("sees 1 of 2 servers"),
            "{}",
            apart.servers[1].error
        );
        // One of three down: the other two still see each other and count.
        let three: &Vec<Server> = &(1..=3)
            .map(|i| Server {
                index: i,
                name: format!("rethinkdb-{i}"),
                host: format!("h{i}"),
            })
            .collect();
        let pair = ["rethinkdb_1", "rethinkdb_2"];
        let one_down = state_of(
            flavor.as_ref(),
            three,
            &[
                health(true, true, &pair),
                health(true, true, &pair),
                health(false, false, &[]),
            ],
            String::new(),
        );
        assert_eq!(one_down.connected, 2, "{:?}", one_down.servers);
        // etcd's health is a quorum read already: no such rule.
        let etcd = state_of(
            spec::flavor(DatabaseKind::Etcd).as_ref(),
            &servers("etcd"),
            &[health(true, true, &[]), health(true, true, &[])],
            String::new(),
        );
        assert_eq!(etcd.connected, 2);
    }

    #[test]
    fn the_leader_is_named_by_its_service_whatever_the_database_calls_it() {
        let leading = |members: &[&str], leader: &str| ServerHealth {
            leader_id: leader.into(),
            ..health(true, true, members)
        };
        let both = ["rethinkdb_1", "rethinkdb_2"];
        let state = state_of(
            spec::flavor(DatabaseKind::Rethinkdb).as_ref(),
            &servers("rethinkdb"),
            &[leading(&both, "rethinkdb_2"), leading(&both, "rethinkdb_2")],
            String::new(),
        );
        assert_eq!(
            state.leader, "rethinkdb-2",
            "the service, as ctl tunnel looks it up"
        );
        let state = state_of(
            spec::flavor(DatabaseKind::Etcd).as_ref(),
            &servers("etcd"),
            &[leading(&["etcd-1", "etcd-2"], "etcd-1"), leading(&[], "")],
            String::new(),
        );
        assert_eq!(state.leader, "etcd-1");
    }

    #[test]
    fn rethinkdb_creates_the_first_server_before_the_others_etcd_all_at_once() {
        let down = || health(false, false, &[]);
        let rethinkdb = spec::flavor(DatabaseKind::Rethinkdb);
        let etcd = spec::flavor(DatabaseKind::Etcd);
        assert_eq!(
            to_create(rethinkdb.as_ref(), &[down(), down(), down()]),
            vec![0]
        );
        assert_eq!(
            to_create(
                rethinkdb.as_ref(),
                &[health(true, true, &[]), down(), down()]
            ),
            vec![1, 2]
        );
        assert_eq!(
            to_create(rethinkdb.as_ref(), &[health(true, false, &[]), down()]),
            Vec::<usize>::new(),
            "the first runs but is not healthy yet"
        );
        assert_eq!(
            to_create(etcd.as_ref(), &[down(), down(), down()]),
            vec![0, 1, 2]
        );
        assert_eq!(
            to_create(etcd.as_ref(), &[health(true, true, &[]), down()]),
            vec![1]
        );
    }
}
