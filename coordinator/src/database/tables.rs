//! Moving RethinkDB's tables off a server before it leaves (pure).
//!
//! RethinkDB has no "remove server" step, but its tables do: a table whose
//! replicas or primary live on a server that goes loses availability, and
//! data where it has one replica. Upstream's way out is to reconfigure the
//! tables first; [`without`] plans that: every shard keeps its replica
//! count, the leaving server's place taken by the remaining server that
//! holds the fewest replicas (by name on a tie), its primary role by
//! another replica already holding the data. A table that cannot keep its
//! replica count (replicas = 4 with 3 servers left) refuses the whole plan
//! before anything changes.

use std::collections::BTreeMap;

use apiary_api::database::{ShardConfig, TableConfig};

/// Why the tables cannot be moved off a server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "table {table} keeps {replicas} replicas per shard and only {servers} servers would be left: \
         lower its replicas first (r.db(\"{db}\").table(\"{name}\").reconfigure(shards=..., replicas={servers})), \
         or keep {servers_plus_one} servers"
    )]
    TooManyReplicas {
        table: String,
        db: String,
        name: String,
        replicas: usize,
        servers: usize,
        servers_plus_one: usize,
    },
}

/// A table's new shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub table_id: String,
    /// `db.table`.
    pub table: String,
    pub shards: Vec<ShardConfig>,
}

/// The tables that hold a replica on `leaving`, placed on `remaining`
/// instead (servers by RethinkDB name). Tables not on `leaving` are left
/// alone.
pub fn without(
    tables: &[TableConfig],
    leaving: &str,
    remaining: &[String],
) -> Result<Vec<Placement>, PlacementError> {
    let mut load: BTreeMap<&str, usize> = remaining.iter().map(|s| (s.as_str(), 0)).collect();
    for shard in tables.iter().flat_map(|t| &t.shards) {
        for r in shard.replicas.iter().chain(&shard.nonvoting_replicas) {
            if let Some(n) = load.get_mut(r.as_str()) {
                *n += 1;
            }
        }
    }
    let mut plan = Vec::new();
    for t in tables {
        let on_leaving = |s: &ShardConfig| {
            s.replicas
                .iter()
                .chain(&s.nonvoting_replicas)
                .any(|r| r == leaving)
        };
        if !t.shards.iter().any(on_leaving) {
            continue;
        }
        let mut shards = Vec::with_capacity(t.shards.len());
        for shard in &t.shards {
            if !on_leaving(shard) {
                shards.push(shard.clone());
                continue;
            }
            if shard.replicas.len() > remaining.len() {
                return Err(PlacementError::TooManyReplicas {
                    table: t.full_name(),
                    db: t.db.clone(),
                    name: t.name.clone(),
                    replicas: shard.replicas.len(),
                    servers: remaining.len(),
                    servers_plus_one: remaining.len() + 1,
                });
            }
            shards.push(replace(shard, leaving, &mut load));
        }
        plan.push(Placement {
            table_id: t.id.clone(),
            table: t.full_name(),
            shards,
        });
    }
    Ok(plan)
}

/// `shard` with `leaving` replaced by the least loaded server not in it
/// (a non-voting replica with no server left to take it is dropped).
fn replace(shard: &ShardConfig, leaving: &str, load: &mut BTreeMap<&str, usize>) -> ShardConfig {
    let mut taken: Vec<String> = shard
        .replicas
        .iter()
        .chain(&shard.nonvoting_replicas)
        .cloned()
        .collect();
    let mut pick = |taken: &mut Vec<String>| -> Option<String> {
        let (name, n) = load
            .iter_mut()
            .filter(|(name, _)| !taken.iter().any(|t| t == **name))
            .min_by_key(|(name, n)| (**n, **name))?;
        *n += 1;
        taken.push(name.to_string());
        Some(name.to_string())
    };
    let mut replicas = Vec::with_capacity(shard.replicas.len());
    for r in &shard.replicas {
        if r == leaving {
            // Enough servers remain (checked by the caller).
            replicas.extend(pick(&mut taken));
        } else {
            replicas.push(r.clone());
        }
    }
    let mut nonvoting_replicas = Vec::new();
    for r in &shard.nonvoting_replicas {
        if r == leaving {
            nonvoting_replicas.extend(pick(&mut taken));
        } else {
            nonvoting_replicas.push(r.clone());
        }
    }
    // The primary moves to a replica that already holds the data; only a
    // one-replica shard hands it to the newcomer (RethinkDB copies the data
    // over before the old server lets go).
    let primary_replica = if shard.primary_replica == leaving {
        shard
            .replicas
            .iter()
            .find(|r| *r != leaving)
            .or(replicas.first())
            .cloned()
            .unwrap_or_default()
    } else {
        shard.primary_replica.clone()
    };
    ShardConfig {
        primary_replica,
        replicas,
        nonvoting_replicas,
    }
}

/// Replicas moved onto `joined` (a server that just joined) until it holds
/// about as many as the others: each step takes a shard without it and
/// hands it the replica of the most loaded server there that is not the
/// shard's primary (a primary move would make the shard unavailable for a
/// moment), while that server holds at least two more than `joined`. Replica
/// counts and primaries stay as they are.
pub fn onto(tables: &[TableConfig], joined: &str, servers: &[String]) -> Vec<Placement> {
    let mut load: BTreeMap<&str, usize> = servers.iter().map(|s| (s.as_str(), 0)).collect();
    for shard in tables.iter().flat_map(|t| &t.shards) {
        for r in shard.replicas.iter().chain(&shard.nonvoting_replicas) {
            if let Some(n) = load.get_mut(r.as_str()) {
                *n += 1;
            }
        }
    }
    let mut plan = Vec::new();
    for t in tables {
        let mut shards = t.shards.clone();
        let mut changed = false;
        for shard in &mut shards {
            if shard
                .replicas
                .iter()
                .chain(&shard.nonvoting_replicas)
                .any(|r| r == joined)
            {
                continue;
            }
            let here = load.get(joined).copied().unwrap_or(0);
            let donor = shard
                .replicas
                .iter()
                .filter(|r| **r != shard.primary_replica)
                .filter_map(|r| load.get(r.as_str()).map(|n| (*n, r.clone())))
                .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
            let Some((n, donor)) = donor else { continue };
            if n < here + 2 {
                continue;
            }
            for r in &mut shard.replicas {
                if *r == donor {
                    *r = joined.to_string();
                }
            }
            if let Some(n) = load.get_mut(donor.as_str()) {
                *n -= 1;
            }
            if let Some(n) = load.get_mut(joined) {
                *n += 1;
            }
            changed = true;
        }
        if changed {
            plan.push(Placement {
                table_id: t.id.clone(),
                table: t.full_name(),
                shards,
            });
        }
    }
    plan
}

/// The tables still waiting for their data to move off `leaving`, or to
/// become ready: `db.table` names.
pub fn still_moving(tables: &[TableConfig], leaving: &str) -> Vec<String> {
    tables
        .iter()
        .filter(|t| !t.ready || t.status_servers.iter().any(|s| s == leaving))
        .map(TableConfig::full_name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(primary: &str, replicas: &[&str]) -> ShardConfig {
        ShardConfig {
            primary_replica: primary.into(),
            replicas: replicas.iter().map(|s| s.to_string()).collect(),
            nonvoting_replicas: vec![],
        }
    }

    fn table(name: &str, shards: Vec<ShardConfig>) -> TableConfig {
        TableConfig {
            id: format!("id-{name}"),
            db: "test".into(),
            name: name.into(),
            shards,
            ready: true,
            status_servers: vec![],
        }
    }

    fn servers(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("r{i}")).collect()
    }

    #[test]
    fn a_leaving_servers_replicas_go_to_the_least_loaded_others_and_keep_their_count() {
        let tables = [
            // 2 shards x 3 replicas over r1..r4, r4 in both.
            table(
                "docs",
                vec![
                    shard("r4", &["r4", "r1", "r2"]),
                    shard("r3", &["r3", "r4", "r1"]),
                ],
            ),
            table("away", vec![shard("r1", &["r1", "r2"])]),
        ];
        let plan = without(&tables, "r4", &servers(3)).expect("3 servers hold 3 replicas");
        assert_eq!(plan.len(), 1, "only the table on r4 changes: {plan:?}");
        let docs = &plan[0];
        assert_eq!(docs.table, "test.docs");
        // Loads before: r1 3, r2 2, r3 1: r3 takes shard 0's place (not in
        // it), r2 shard 1's (r3 and r1 are in it).
        assert_eq!(docs.shards[0], shard("r1", &["r3", "r1", "r2"]));
        assert_eq!(docs.shards[1], shard("r3", &["r3", "r2", "r1"]));
        for s in &docs.shards {
            assert_eq!(s.replicas.len(), 3);
            assert!(s.replicas.contains(&s.primary_replica));
            assert!(!s.replicas.iter().any(|r| r == "r4"));
        }
    }

    #[test]
    fn a_one_replica_table_moves_whole_to_another_server() {
        let tables = [table("solo", vec![shard("r2", &["r2"])])];
        let plan = without(&tables, "r2", &["r1".to_string()]).expect("moves");
        assert_eq!(plan[0].shards, vec![shard("r1", &["r1"])]);
    }

    #[test]
    fn replicas_on_every_server_refuse_with_the_tables_name_and_change_nothing() {
        let tables = [
            table("fine", vec![shard("r4", &["r4", "r1"])]),
            table("everywhere", vec![shard("r1", &["r1", "r2", "r3", "r4"])]),
        ];
        let e = without(&tables, "r4", &servers(3)).expect_err("4 replicas on 3 servers");
        assert!(matches!(
            e,
            PlacementError::TooManyReplicas {
                replicas: 4,
                servers: 3,
                ..
            }
        ));
        let text = e.to_string();
        assert!(
            text.contains("test.everywhere") && text.contains("replicas=3"),
            "{text}"
        );
    }

    #[test]
    fn non_voting_replicas_move_or_are_dropped_when_no_server_is_free() {
        let mut s = shard("r1", &["r1", "r2"]);
        s.nonvoting_replicas = vec!["r3".into()];
        let plan = without(&[table("nv", vec![s.clone()])], "r3", &servers(2)).expect("plan");
        assert_eq!(plan[0].shards[0], shard("r1", &["r1", "r2"]));
        let others = ["r1".to_string(), "r2".to_string(), "r4".to_string()];
        let plan = without(&[table("nv", vec![s])], "r3", &others).expect("plan");
        assert_eq!(plan[0].shards[0].nonvoting_replicas, ["r4"]);
    }

    #[test]
    fn a_joined_server_takes_replicas_from_the_most_loaded_never_a_primary() {
        // 3 tables of one shard x 3 replicas on r1..r3 (3 each); r4 joins.
        let tables = [
            table("a", vec![shard("r1", &["r1", "r2", "r3"])]),
            table("b", vec![shard("r2", &["r2", "r3", "r1"])]),
            table("c", vec![shard("r3", &["r3", "r1", "r2"])]),
        ];
        let plan = onto(&tables, "r4", &servers(4));
        let mut load = BTreeMap::new();
        for (i, t) in tables.iter().enumerate() {
            let shards = plan
                .iter()
                .find(|p| p.table_id == t.id)
                .map_or(&t.shards, |p| &p.shards);
            for s in shards {
                assert_eq!(s.replicas.len(), 3, "the replica count stays");
                assert_eq!(
                    s.primary_replica, t.shards[0].primary_replica,
                    "primaries stay"
                );
                assert!(s.replicas.contains(&s.primary_replica));
                for r in &s.replicas {
                    *load.entry(r.clone()).or_insert(0) += 1;
                }
            }
            let _ = i;
        }
        // 9 replicas over 4 servers: none holds more than 3 or fewer than 2.
        assert!(load.values().all(|n| (2..=3).contains(n)), "{load:?}");
        assert!(load["r4"] >= 2, "{load:?}");
        // Already balanced: nothing moves.
        let even = [table("a", vec![shard("r1", &["r1", "r2"])])];
        assert!(onto(&even, "r3", &servers(3)).is_empty());
    }

    #[test]
    fn a_table_is_still_moving_while_not_ready_or_still_held_by_the_leaving_server() {
        let mut t = table("docs", vec![shard("r1", &["r1"])]);
        assert!(still_moving(std::slice::from_ref(&t), "r4").is_empty());
        t.status_servers = vec!["r1".into(), "r4".into()];
        assert_eq!(still_moving(std::slice::from_ref(&t), "r4"), ["test.docs"]);
        t.status_servers = vec!["r1".into()];
        t.ready = false;
        assert_eq!(still_moving(&[t], "r4"), ["test.docs"]);
    }
}
