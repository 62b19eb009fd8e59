//! Adding and removing servers of a running database, per flavour: etcd
//! changes its membership through its API (through `etcdctl` in a running
//! server's container, on that server's host); RethinkDB has no membership,
//! but its tables move off a server before it leaves ([`super::tables`]).

use std::time::{Duration, Instant};

use apiary_api::database::TableConfig;
use apiary_api::ops::{DatabaseExec, RethinkdbPlaceTable, RethinkdbTables};
use tracing::info;

use super::DatabaseError;
use super::spec::{self, Server};
use crate::config::DatabaseConfig;
use crate::context::ClusterContext;
use crate::sessions::call;

/// A flavour's membership changes.
#[tonic::async_trait]
pub trait Membership: Send + Sync {
    /// Prepares `new` to join through `via` (a running server); the command
    /// line the new server starts with. `joined` are the servers that will
    /// be members once it has joined, itself last.
    async fn add(
        &self,
        ctx: &dyn ClusterContext,
        db: &DatabaseConfig,
        via: &Server,
        joined: &[Server],
    ) -> Result<Vec<String>, DatabaseError>;

    /// After `new` joined and the database is healthy with it: whatever
    /// the flavour does for a newcomer (RethinkDB with `spread_tables`:
    /// move replicas onto it). `all` are the members, `new` among them.
    async fn after_join(
        &self,
        _ctx: &dyn ClusterContext,
        _db: &DatabaseConfig,
        _via: &Server,
        _new: &Server,
        _all: &[Server],
    ) -> Result<(), DatabaseError> {
        Ok(())
    }

    /// Takes `gone` out of the membership through `via`, before its service
    /// is removed; `stay` are the servers that remain.
    async fn remove(
        &self,
        ctx: &dyn ClusterContext,
        db: &DatabaseConfig,
        via: &Server,
        gone: &Server,
        stay: &[Server],
    ) -> Result<(), DatabaseError>;
}

/// How long tables get to move off a leaving server: RethinkDB copies a
/// table's data to its new replicas first.
const TABLES_MOVE: Duration = Duration::from_secs(300);

pub struct EtcdMembership;
pub struct RethinkdbMembership;

/// What `etcdctl` said, where it matters to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdctlFailure {
    /// etcd refuses a member add until the member asked has been connected
    /// to a quorum for 5 s (just after a restart or a removal): retry.
    UnhealthyCluster,
    Other,
}

impl EtcdctlFailure {
    /// Classifies etcdctl's own output (its text is etcd's interface here:
    /// `etcdctl` exits 1 for every error and says which in words).
    pub fn of(output: &str) -> Self {
        if output.contains("unhealthy cluster") {
            EtcdctlFailure::UnhealthyCluster
        } else {
            EtcdctlFailure::Other
        }
    }
}

/// Runs etcdctl in `via`'s container, on its host.
async fn etcdctl(
    ctx: &dyn ClusterContext,
    via: &Server,
    args: &[&str],
) -> Result<String, DatabaseError> {
    // The endpoint and client certificate come from the container's
    // environment (`ETCDCTL_*`, see the etcd flavour's `env`).
    let mut command = vec!["etcdctl".to_string(), "--command-timeout=10s".to_string()];
    command.extend(args.iter().map(|a| a.to_string()));
    let out = call(
        ctx.agents(),
        &via.host,
        DatabaseExec {
            service: via.name.clone(),
            command: command.clone(),
        },
    )
    .await?;
    if out.code != 0 {
        return Err(DatabaseError::Etcdctl {
            command: command.join(" "),
            server: via.name.clone(),
            host: via.host.clone(),
            output: out.output.trim().to_string(),
            failure: EtcdctlFailure::of(&out.output),
        });
    }
    Ok(out.output)
}

/// The member id (hex) of the member with peer URL `peer`, from `member list -w json`.
pub fn etcd_member_id(list_json: &str, peer: &str) -> Option<String> {
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

/// Removes the etcd member whose peer URL is `peer_url`, if there is one.
async fn etcd_remove_member(
    ctx: &dyn ClusterContext,
    via: &Server,
    peer_url: &str,
) -> Result<(), DatabaseError> {
    let list = etcdctl(ctx, via, &["member", "list", "-w", "json"]).await?;
    if let Some(id) = etcd_member_id(&list, peer_url) {
        etcdctl(ctx, via, &["member", "remove", &id]).await?;
    }
    Ok(())
}

#[tonic::async_trait]
impl Membership for EtcdMembership {
    async fn add(
        &self,
        ctx: &dyn ClusterContext,
        db: &DatabaseConfig,
        via: &Server,
        joined: &[Server],
    ) -> Result<Vec<String>, DatabaseError> {
        let new = joined.last().ok_or(DatabaseError::NothingToAdd)?;
        let peer = spec::peer_url(db, new);
        // A member left over by a failed attempt is removed first.
        etcd_remove_member(ctx, via, &peer).await?;
        let peer_flag = format!("--peer-urls={peer}");
        let add = ["member", "add", new.name.as_str(), peer_flag.as_str()];
        let start = std::time::Instant::now();
        let out = loop {
            match etcdctl(ctx, via, &add).await {
                Ok(out) => break out,
                Err(DatabaseError::Etcdctl {
                    failure: EtcdctlFailure::UnhealthyCluster,
                    ..
                }) if start.elapsed() < std::time::Duration::from_secs(30) => {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let initial =
            spec::etcd_initial_cluster(&out).ok_or_else(|| DatabaseError::UnexpectedMemberAdd {
                output: out.clone(),
            })?;
        spec::flavor(db.kind)
            .join_command(
                db,
                ctx.cluster_name(),
                new,
                &initial,
                crate::time::now_unix_ms(),
            )
            .ok_or(DatabaseError::CannotScale {
                kind: db.kind.as_str(),
            })
    }

    async fn remove(
        &self,
        ctx: &dyn ClusterContext,
        db: &DatabaseConfig,
        via: &Server,
        gone: &Server,
        _stay: &[Server],
    ) -> Result<(), DatabaseError> {
        etcd_remove_member(ctx, via, &spec::peer_url(db, gone)).await
    }
}

#[tonic::async_trait]
impl Membership for RethinkdbMembership {
    /// A new RethinkDB server joins the first by name, as every non-first
    /// server does at bring-up.
    async fn add(
        &self,
        ctx: &dyn ClusterContext,
        db: &DatabaseConfig,
        _via: &Server,
        joined: &[Server],
    ) -> Result<Vec<String>, DatabaseError> {
        let new = joined.last().ok_or(DatabaseError::NothingToAdd)?;
        Ok(spec::flavor(db.kind).command(db, ctx.cluster_name(), new, joined))
    }

    /// With `spread_tables`: replicas moved onto `new` from the most loaded
    /// servers (never a primary), then waited for until every table is ready.
    async fn after_join(
        &self,
        ctx: &dyn ClusterContext,
        db: &DatabaseConfig,
        via: &Server,
        new: &Server,
        all: &[Server],
    ) -> Result<(), DatabaseError> {
        if !db.spread_tables {
            return Ok(());
        }
        let flavor = spec::flavor(db.kind);
        let tables = Tables::new(ctx, db, via)?;
        let names: Vec<String> = all.iter().map(|s| flavor.member_name(s)).collect();
        let plan = super::tables::onto(&tables.list().await?, &flavor.member_name(new), &names);
        tables
            .place(&plan, &new.name, "spreading a table onto a new server")
            .await?;
        tables.wait_moved(&new.name, "").await
    }

    /// Every table with a replica on `gone` is placed on the servers that
    /// stay (refused before any change when one cannot keep its replica
    /// count), then waited for until RethinkDB has moved its data and every
    /// table is ready: only then may the server go.
    async fn remove(
        &self,
        ctx: &dyn ClusterContext,
        db: &DatabaseConfig,
        via: &Server,
        gone: &Server,
        stay: &[Server],
    ) -> Result<(), DatabaseError> {
        let flavor = spec::flavor(db.kind);
        let tables = Tables::new(ctx, db, via)?;
        let leaving = flavor.member_name(gone);
        let staying: Vec<String> = stay.iter().map(|s| flavor.member_name(s)).collect();
        let plan = super::tables::without(&tables.list().await?, &leaving, &staying)?;
        tables
            .place(&plan, &gone.name, "moving a table off a leaving server")
            .await?;
        tables.wait_moved(&gone.name, &leaving).await
    }
}

/// RethinkDB's tables, read and placed through one server's agent.
struct Tables<'a> {
    ctx: &'a dyn ClusterContext,
    via: &'a Server,
    admin: Option<apiary_api::database::AdminCredentials>,
}

impl<'a> Tables<'a> {
    fn new(
        ctx: &'a dyn ClusterContext,
        db: &DatabaseConfig,
        via: &'a Server,
    ) -> Result<Self, DatabaseError> {
        Ok(Tables {
            ctx,
            via,
            admin: super::admin(ctx, db)?,
        })
    }

    async fn list(&self) -> Result<Vec<TableConfig>, DatabaseError> {
        let op = RethinkdbTables {
            service: self.via.name.clone(),
            admin: self.admin.clone(),
        };
        Ok(call(self.ctx.agents(), &self.via.host, op).await?)
    }

    async fn place(
        &self,
        plan: &[super::tables::Placement],
        server: &str,
        why: &str,
    ) -> Result<(), DatabaseError> {
        for p in plan {
            info!(table = %p.table, server, "{why}");
            let op = RethinkdbPlaceTable {
                service: self.via.name.clone(),
                admin: self.admin.clone(),
                table_id: p.table_id.clone(),
                shards: p.shards.clone(),
            };
            call(self.ctx.agents(), &self.via.host, op).await?;
        }
        Ok(())
    }

    /// Waits until every table is ready and none is held by `leaving`
    /// (a RethinkDB server name; "" when nothing leaves).
    async fn wait_moved(&self, server: &str, leaving: &str) -> Result<(), DatabaseError> {
        let start = Instant::now();
        loop {
            let waiting = super::tables::still_moving(&self.list().await?, leaving);
            if waiting.is_empty() {
                return Ok(());
            }
            if start.elapsed() > TABLES_MOVE {
                return Err(DatabaseError::TablesNotMoved {
                    server: server.to_string(),
                    within: TABLES_MOVE,
                    waiting: waiting.join(", "),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcdctl_failures_are_classified_once() {
        assert_eq!(
            EtcdctlFailure::of("Error: etcdserver: unhealthy cluster"),
            EtcdctlFailure::UnhealthyCluster
        );
        assert_eq!(
            EtcdctlFailure::of("Error: context deadline exceeded"),
            EtcdctlFailure::Other
        );
    }

    #[test]
    fn member_ids_are_found_by_peer_url() {
        let list = r#"{"header":{},"members":[{"ID":10501334649042878790,"name":"etcd-1","peerURLs":["https://etcd-1:2380"]},{"ID":255,"name":"etcd-2","peerURLs":["https://etcd-2:2380"]}]}"#;
        assert_eq!(
            etcd_member_id(list, "https://etcd-2:2380").as_deref(),
            Some("ff")
        );
        assert_eq!(etcd_member_id(list, "https://etcd-3:2380"), None);
        assert_eq!(etcd_member_id("garbage", "x"), None);
    }
}
