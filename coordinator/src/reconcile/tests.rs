//! Rounds against fake agents (see `fake`): formation, adoption, failures,
//! the ESP refusal and the database's decisions, without root.

use std::time::Duration;

use apiary_api::database::DatabaseKind;

use super::fake::{FakeCluster, roles};
use super::*;
use crate::config::DatabaseConfig;
use crate::events::EventKind;

fn config(database: Option<DatabaseKind>) -> SwarmConfig {
    SwarmConfig {
        managers: None,
        overlay: "apiary".into(),
        encrypted: false,
        mtu: None,
        checks_interval: Duration::from_secs(10),
        labels: Default::default(),
        default_addr_pool: vec![],
        database: database.map(|kind| DatabaseConfig {
            kind,
            image: "db:1".into(),
            servers: None,
            memory: "450m".into(),
            memory_bytes: 450 << 20,
            volume_prefix: kind.as_str().into(),
            client_port: 2379,
            peer_port: 2380,
            peer_tls: true,
            auth: true,
            spread_tables: false,
            image_archive: None,
        }),
    }
}

async fn round(
    cluster: &FakeCluster,
    config: &SwarmConfig,
    generation: u64,
) -> Result<Action, RoundError> {
    let progress = Progress::with_mode(crate::progress::Mode::Events);
    let output = Output {
        progress: &progress,
        bring_up: generation == 0,
    };
    reconcile(cluster, config, generation, &output).await
}

fn events_of(
    rx: &mut tokio::sync::broadcast::Receiver<crate::events::Event>,
) -> Vec<(EventKind, String)> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push((e.kind, e.node));
    }
    out
}

#[tokio::test]
async fn four_fresh_hosts_are_checked_then_form_a_swarm_with_three_managers() {
    let cluster = FakeCluster::new(4);
    let mut rx = cluster.events.subscribe();
    let config = config(None);
    assert_eq!(
        round(&cluster, &config, 0)
            .await
            .expect("the round forms the swarm"),
        Action::Requeue(config.checks_interval)
    );
    let roles = roles(&cluster.agents);
    assert_eq!(roles["h1"], (true, true));
    assert_eq!(roles["h2"], (true, true));
    assert_eq!(roles["h3"], (true, true));
    assert_eq!(roles["h4"], (true, false), "the fourth host is a worker");
    let state = cluster.view.checks();
    assert_eq!(state.phase, CheckPhase::Swarm);
    assert!(state.swarm_error.is_empty(), "{}", state.swarm_error);
    // 3 ports between 12 ordered pairs, and 2377/tcp to each of 3 managers from 3 peers.
    assert_eq!(state.pre_swarm.len(), 12 * 3 + 9);
    assert!(
        !cluster.saved_pre_swarm.lock().expect("lock").is_empty(),
        "kept for restarts"
    );
    assert!(state.matrix().failures().is_empty());
    assert_eq!(state.swarm.len(), 4);
    assert!(state.swarm.values().all(|n| n.overlay_attached));
    let events = events_of(&mut rx);
    assert_eq!(events[0], (EventKind::SwarmInitialised, "h1".to_string()));
    assert_eq!(
        events
            .iter()
            .filter(|(k, _)| *k == EventKind::SwarmJoined)
            .count(),
        3
    );

    // The next round adopts everything: no init, no join, no pre-Swarm matrix.
    let asked = cluster.agents.count("StartResponder");
    round(&cluster, &config, 1).await.expect("a steady round");
    assert_eq!(cluster.agents.count("SwarmInit"), 1);
    assert_eq!(cluster.agents.count("SwarmJoin"), 3);
    assert_eq!(cluster.agents.count("StartResponder"), asked);
}

#[tokio::test]
async fn a_host_that_cannot_join_stops_the_round_and_is_named() {
    let cluster = FakeCluster::new(4);
    cluster.agents.set("h4", |h| h.join_fails = true);
    let config = config(None);
    let err = round(&cluster, &config, 0)
        .await
        .expect_err("h4 cannot join");
    assert_eq!(err.phase(), Phase::Swarm);
    assert_eq!(err.node(), Some("h4"));
    let state = cluster.view.checks();
    assert!(
        state.swarm_error.starts_with("swarm: h4 cannot reach"),
        "{}",
        state.swarm_error
    );
    assert_eq!(
        cluster.agents.count("EnsureOverlay"),
        0,
        "nothing after Swarm runs"
    );
    // The managers joined; once the path is fixed only h4 joins.
    assert_eq!(roles(&cluster.agents)["h3"], (true, true));
    cluster.agents.set("h4", |h| h.join_fails = false);
    round(&cluster, &config, 1).await.expect("h4 joins now");
    assert_eq!(
        cluster.agents.count("SwarmJoin"),
        2 + 2,
        "h4 twice, h2 and h3 once"
    );
    assert!(cluster.view.checks().swarm_error.is_empty());
}

#[tokio::test]
async fn a_restarted_coordinator_finishes_a_half_formed_swarm_by_adopting_it() {
    let cluster = FakeCluster::new(4);
    cluster.agents.set("h4", |h| h.join_fails = true);
    let config = config(None);
    round(&cluster, &config, 0)
        .await
        .expect_err("stopped at h4");
    let cluster = cluster.restarted();
    cluster.agents.set("h4", |h| h.join_fails = false);
    round(&cluster, &config, 0)
        .await
        .expect("the new coordinator finishes");
    assert_eq!(
        cluster.agents.count("SwarmInit"),
        1,
        "the swarm is adopted, not made twice"
    );
    assert_eq!(
        cluster.agents.count("StartResponder"),
        4,
        "the matrix is not measured again"
    );
    assert!(
        !cluster.view.checks().pre_swarm.is_empty(),
        "the saved matrix is shown"
    );
    assert_eq!(roles(&cluster.agents)["h4"], (true, false));
}

#[tokio::test]
async fn an_encrypted_overlay_is_refused_before_it_is_made_when_a_kernel_lacks_esp() {
    let cluster = FakeCluster::new(3);
    cluster.agents.set("h2", |h| h.no_esp_kernel = true);
    let mut config = config(None);
    config.encrypted = true;
    let err = round(&cluster, &config, 0).await.expect_err("refused");
    assert_eq!(err.phase(), Phase::Encryption);
    assert!(
        err.to_string().contains("h2: the kernel lacks esp4"),
        "{err}"
    );
    assert_eq!(cluster.agents.count("EnsureOverlay"), 0);
    let state = cluster.view.checks();
    assert!(state.swarm_error.starts_with("encrypted overlay refused"));
    assert_eq!(state.cells.len(), 3 * 2, "the ESP cells are shown");
    // Unencrypted, the same cluster goes on.
    config.encrypted = false;
    round(&cluster, &config, 1).await.expect("plain overlay");
    assert_eq!(cluster.agents.count("EnsureOverlay"), 1);
}

#[tokio::test]
async fn no_ready_host_only_says_who_is_down() {
    let cluster = FakeCluster::new(2);
    cluster.agents.set("h1", |h| h.up = false);
    cluster.agents.set("h2", |h| h.up = false);
    round(&cluster, &config(None), 0)
        .await
        .expect("nothing to do");
    assert_eq!(cluster.view.checks().down, ["h1", "h2"]);
    assert_eq!(cluster.agents.count("SwarmInit"), 0);
}

#[tokio::test]
async fn rethinkdb_servers_start_first_then_the_rest_and_report_healthy() {
    let cluster = FakeCluster::new(4);
    let mut rx = cluster.events.subscribe();
    round(&cluster, &config(Some(DatabaseKind::Rethinkdb)), 0)
        .await
        .expect("formed");
    let services = cluster.agents.services();
    assert_eq!(services.len(), 4);
    assert_eq!(services["rethinkdb-4"], "h4");
    let db = cluster.view.database().expect("a database state");
    assert!(db.healthy(), "{}", db.summary());
    let created: Vec<String> = events_of(&mut rx)
        .into_iter()
        .filter(|(k, _)| *k == EventKind::DatabaseServiceCreated)
        .map(|(_, n)| n)
        .collect();
    assert_eq!(created[0], "h1", "the first server before the others");
    assert_eq!(created.len(), 4);
}

#[tokio::test]
async fn scaling_the_database_down_and_up_moves_only_the_last_server() {
    let cluster = FakeCluster::new(4);
    let config = config(Some(DatabaseKind::Rethinkdb));
    round(&cluster, &config, 0).await.expect("formed");
    let db = config.database.as_ref();
    let summary = crate::database::scale(&cluster, db, "apiary", 4, Some("h1"), 3)
        .await
        .expect("scaled down");
    assert!(summary.contains("3/3 servers connected"), "{summary}");
    assert!(!cluster.agents.services().contains_key("rethinkdb-4"));
    assert_eq!(
        *cluster.scale.lock().expect("lock"),
        Some(3),
        "kept for restarts"
    );
    // A round after the scale does not bring the server back.
    round(&cluster, &config, 1).await.expect("steady");
    assert_eq!(cluster.agents.services().len(), 3);
    crate::database::scale(&cluster, db, "apiary", 4, Some("h1"), 4)
        .await
        .expect("scaled up");
    assert_eq!(cluster.agents.services()["rethinkdb-4"], "h4");
    // Out of range, and a second scale while one runs, are refused.
    let err = crate::database::scale(&cluster, db, "apiary", 4, Some("h1"), 5)
        .await
        .expect_err("5 > 4 hosts");
    assert!(
        matches!(err, crate::database::DatabaseError::OutOfRange { .. }),
        "{err}"
    );
    let _held = cluster.view.database_membership.lock().await;
    let err = crate::database::scale(&cluster, db, "apiary", 4, Some("h1"), 3)
        .await
        .expect_err("busy");
    assert!(matches!(err, crate::database::DatabaseError::Busy), "{err}");
}

fn table(name: &str, replicas: &[&str]) -> apiary_api::database::TableConfig {
    apiary_api::database::TableConfig {
        id: format!("id-{name}"),
        db: "test".into(),
        name: name.into(),
        shards: vec![apiary_api::database::ShardConfig {
            primary_replica: replicas[0].into(),
            replicas: replicas.iter().map(|r| r.to_string()).collect(),
            nonvoting_replicas: vec![],
        }],
        ready: true,
        status_servers: replicas.iter().map(|r| r.to_string()).collect(),
    }
}

#[tokio::test]
async fn a_leaving_rethinkdb_server_hands_its_tables_over_before_its_service_goes() {
    let cluster = FakeCluster::new(4);
    let config = config(Some(DatabaseKind::Rethinkdb));
    round(&cluster, &config, 0).await.expect("formed");
    *cluster.agents.tables.lock().expect("lock") = vec![
        table("docs", &["rethinkdb_4", "rethinkdb_1", "rethinkdb_2"]),
        table("away", &["rethinkdb_1"]),
    ];
    let db = config.database.as_ref();
    crate::database::scale(&cluster, db, "apiary", 4, Some("h1"), 3)
        .await
        .expect("scaled down");
    let tables = cluster.agents.tables.lock().expect("lock").clone();
    let docs = &tables[0].shards[0];
    assert_eq!(docs.replicas, ["rethinkdb_3", "rethinkdb_1", "rethinkdb_2"]);
    assert_eq!(docs.primary_replica, "rethinkdb_1");
    assert_eq!(tables[1].shards[0].replicas, ["rethinkdb_1"], "untouched");
    let asked = cluster.agents.asked.lock().expect("lock").clone();
    let placed = asked
        .iter()
        .position(|(_, op)| *op == "RethinkdbPlaceTable");
    let removed = asked.iter().position(|(_, op)| *op == "RemoveService");
    assert!(
        placed < removed,
        "tables move before the service goes: {asked:?}"
    );
    // apiary's connections authenticate with its generated password.
    let admins = cluster.agents.admins_seen.lock().expect("lock").clone();
    assert!(
        admins
            .iter()
            .all(|a| a.as_ref().is_some_and(|a| a.user == "admin"))
    );
}

#[tokio::test]
async fn with_spread_tables_a_joining_rethinkdb_server_takes_replicas_and_without_it_none() {
    for spread in [false, true] {
        let cluster = FakeCluster::new(4);
        let mut config = config(Some(DatabaseKind::Rethinkdb));
        if let Some(db) = config.database.as_mut() {
            db.servers = Some(3);
            db.spread_tables = spread;
        }
        round(&cluster, &config, 0).await.expect("formed");
        *cluster.agents.tables.lock().expect("lock") = vec![
            table("a", &["rethinkdb_1", "rethinkdb_2", "rethinkdb_3"]),
            table("b", &["rethinkdb_2", "rethinkdb_3", "rethinkdb_1"]),
            table("c", &["rethinkdb_3", "rethinkdb_1", "rethinkdb_2"]),
        ];
        crate::database::scale(
            &cluster,
            config.database.as_ref(),
            "apiary",
            4,
            Some("h1"),
            4,
        )
        .await
        .expect("scaled up");
        let on_new = cluster
            .agents
            .tables
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|t| t.shards[0].replicas.clone())
            .filter(|r| r == "rethinkdb_4")
            .count();
        if spread {
            assert!(on_new >= 2, "the new server holds {on_new} replicas");
        } else {
            assert_eq!(on_new, 0, "tables stay where they are unless asked");
        }
    }
}

#[tokio::test]
async fn a_table_on_every_server_refuses_the_scale_down_and_nothing_changes() {
    let cluster = FakeCluster::new(4);
    let config = config(Some(DatabaseKind::Rethinkdb));
    round(&cluster, &config, 0).await.expect("formed");
    let everywhere = table(
        "everywhere",
        &["rethinkdb_1", "rethinkdb_2", "rethinkdb_3", "rethinkdb_4"],
    );
    *cluster.agents.tables.lock().expect("lock") = vec![everywhere.clone()];
    let db = config.database.as_ref();
    let err = crate::database::scale(&cluster, db, "apiary", 4, Some("h1"), 3)
        .await
        .expect_err("4 replicas cannot live on 3 servers");
    assert!(
        matches!(err, crate::database::DatabaseError::Placement(_)),
        "{err}"
    );
    assert!(err.to_string().contains("test.everywhere"), "{err}");
    assert_eq!(cluster.agents.services().len(), 4, "no server removed");
    assert_eq!(
        *cluster.scale.lock().expect("lock"),
        Some(4),
        "count restored"
    );
    assert_eq!(cluster.agents.tables.lock().expect("lock")[0], everywhere);
}

#[tokio::test]
async fn a_table_not_ready_makes_the_database_unhealthy_and_names_it() {
    let cluster = FakeCluster::new(3);
    let config = config(Some(DatabaseKind::Rethinkdb));
    round(&cluster, &config, 0).await.expect("formed");
    let mut docs = table("docs", &["rethinkdb_1"]);
    docs.ready = false;
    *cluster.agents.tables.lock().expect("lock") = vec![docs, table("ok", &["rethinkdb_2"])];
    round(&cluster, &config, 1).await.expect("steady");
    let db = cluster.view.database().expect("a database state");
    assert!(!db.healthy(), "{}", db.summary());
    assert!(
        db.summary().ends_with("tables 1/2 ready"),
        "{}",
        db.summary()
    );
}

#[tokio::test]
async fn a_round_creates_no_server_while_the_membership_is_held() {
    let cluster = FakeCluster::new(2);
    let _held = cluster.view.database_membership.lock().await;
    round(&cluster, &config(Some(DatabaseKind::Etcd)), 0)
        .await
        .expect("formed");
    assert!(cluster.agents.services().is_empty());
}

#[tokio::test]
async fn only_the_last_database_server_may_leave_with_its_node() {
    let cluster = FakeCluster::new(3);
    let config = config(Some(DatabaseKind::Rethinkdb));
    round(&cluster, &config, 0).await.expect("formed");
    let err = drain::drain_node(&cluster, &config, "h2")
        .await
        .expect_err("h2 holds rethinkdb-2");
    assert!(
        err.to_string()
            .contains("only the last server (rethinkdb-3 on h3)"),
        "{err}"
    );
    let steps = drain::drain_node(&cluster, &config, "h3")
        .await
        .expect("drained");
    assert!(
        steps[0].starts_with("database: rethinkdb-3 left the cluster"),
        "{steps:?}"
    );
    assert!(
        steps.iter().any(|s| s == "swarm: h3 left the swarm"),
        "{steps:?}"
    );
}

#[test]
fn errors_back_off_from_two_seconds_to_the_interval() {
    let interval = Duration::from_secs(10);
    assert_eq!(backoff(1, interval), Duration::from_secs(2));
    assert_eq!(backoff(2, interval), Duration::from_secs(4));
    assert_eq!(backoff(3, interval), Duration::from_secs(8));
    assert_eq!(backoff(4, interval), interval);
    assert_eq!(backoff(u32::MAX, interval), interval);
}

#[tokio::test]
async fn run_stops_when_told() {
    let cluster = FakeCluster::new(1);
    let config = config(None);
    tokio::time::timeout(
        Duration::from_secs(10),
        run(
            &cluster,
            &config,
            Progress::with_mode(crate::progress::Mode::Events),
            async {},
        ),
    )
    .await
    .expect("run returns once shutdown completes");
}
