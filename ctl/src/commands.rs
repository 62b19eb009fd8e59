//! `ctl`'s commands: [`Ctl`], the admin API with one admin.conf's
//! credentials; [`CtlError`], why a command failed and its exit code; and
//! the output formats, tables for people and `--json` for scripts (stable
//! field names, documented in docs/json.md), as functions of the wire types
//! so they are tested without a coordinator.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apiary_api::exit;
use apiary_certs::{
    AdminConf, AdminConfError, COORDINATOR_SERVER_NAME, TlsRefusal, classify_tls_failure,
    mtls_client_config,
};
use apiary_proto::admin_client::AdminClient;
use apiary_proto::{
    JoinTokenRequest, NodeStatus, RemoveNodeRequest, StatusRequest, StatusResponse, dial,
};
use serde_json::json;
use tonic::transport::Channel;

use crate::text::shown;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Config(#[from] AdminConfError),
    #[error("credentials: {0}")]
    Cert(#[from] apiary_certs::CertError),
    #[error(
        "cannot reach the coordinator at {endpoint}: {reason} (is `coordinator serve` running?)"
    )]
    Unreachable { endpoint: String, reason: String },
    #[error("{0}")]
    Refused(#[from] TlsRefusal),
    #[error("the coordinator refused: {0}")]
    Denied(String),
    #[error("{0}")]
    Failed(String),
    #[error("checks failed: {0}")]
    CheckFailed(String),
    /// The command names something that does not exist (a tunnel target).
    #[error("{0}")]
    Usage(String),
    /// Nothing in the cluster that could serve the request answered (no
    /// Swarm manager's engine for `ctl docker`, a tunnel target down).
    #[error("{0}")]
    Unavailable(String),
}

impl CtlError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Config(_) | CtlError::Cert(_) | CtlError::Usage(_) => exit::USAGE,
            CtlError::Unreachable { .. } | CtlError::Unavailable(_) => exit::UNAVAILABLE,
            CtlError::Refused(_) | CtlError::Denied(_) => exit::REFUSED,
            CtlError::Failed(_) => exit::FAILURE,
            CtlError::CheckFailed(_) => exit::CHECK_FAILED,
        }
    }
}

/// A connection to the admin API with the credentials of one admin.conf.
pub struct Ctl {
    endpoint: String,
    tls: rustls::ClientConfig,
    client: AdminClient<Channel>,
}

impl Ctl {
    pub fn new(conf: &AdminConf) -> Result<Self, CtlError> {
        let id = conf.identity()?;
        let tls = mtls_client_config(&id.ca_der, &id.cert_der, &id.key_pem)?;
        let channel =
            dial::channel(&conf.endpoint, COORDINATOR_SERVER_NAME, tls.clone()).map_err(|e| {
                CtlError::Unreachable {
                    endpoint: conf.endpoint.clone(),
                    reason: e.to_string(),
                }
            })?;
        Ok(Ctl {
            endpoint: conf.endpoint.clone(),
            tls,
            client: AdminClient::new(channel),
        })
    }

    /// Says why a call failed, in the user's terms.
    async fn judge(&self, status: tonic::Status) -> CtlError {
        match status.code() {
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                return CtlError::Denied(status.message().to_string());
            }
            tonic::Code::NotFound
            | tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition => {
                return CtlError::Failed(status.message().to_string());
            }
            _ => {}
        }
        if let Some(r) = classify_tls_failure(&status) {
            return r.into();
        }
        match dial::handshake(&self.endpoint, COORDINATOR_SERVER_NAME, self.tls.clone()).await {
            Err(e) => match classify_tls_failure(&e) {
                Some(r) => r.into(),
                None => CtlError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    reason: e.to_string(),
                },
            },
            Ok(()) => CtlError::Failed(status.message().to_string()),
        }
    }

    pub async fn status(&mut self) -> Result<StatusResponse, CtlError> {
        match self.client.status(StatusRequest {}).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.judge(s).await),
        }
    }

    pub async fn remove_node(
        &mut self,
        name: &str,
    ) -> Result<apiary_proto::RemoveNodeResponse, CtlError> {
        match self
            .client
            .remove_node(RemoveNodeRequest {
                name: name.to_string(),
            })
            .await
        {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.judge(s).await),
        }
    }

    /// Streams events until the coordinator goes away; `on_event` sees each.
    pub async fn events(
        &mut self,
        mut on_event: impl FnMut(&apiary_proto::Event),
    ) -> Result<(), CtlError> {
        let mut stream = match self.client.events(apiary_proto::EventsRequest {}).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(self.judge(s).await),
        };
        loop {
            match stream.message().await {
                Ok(Some(e)) => on_event(&e),
                Ok(None) => return Ok(()),
                Err(s) => return Err(self.judge(s).await),
            }
        }
    }

    pub async fn apply_hosts(
        &mut self,
        nodes: Vec<String>,
        dry_run: bool,
    ) -> Result<Vec<apiary_proto::HostApplyResult>, CtlError> {
        match self
            .client
            .apply_hosts(apiary_proto::ApplyHostsRequest { nodes, dry_run })
            .await
        {
            Ok(r) => Ok(r.into_inner().hosts),
            Err(s) => Err(self.judge(s).await),
        }
    }

    /// Scales the database to `servers` (answers once done).
    pub async fn scale_database(&mut self, servers: u32) -> Result<String, CtlError> {
        match self
            .client
            .scale_database(apiary_proto::ScaleDatabaseRequest { servers })
            .await
        {
            Ok(r) => Ok(r.into_inner().summary),
            Err(s) => Err(self.judge(s).await),
        }
    }

    /// Upgrades hosts' agents one at a time (answers once done or stopped).
    pub async fn upgrade_hosts(
        &mut self,
        nodes: Vec<String>,
        deadline: std::time::Duration,
    ) -> Result<apiary_proto::UpgradeHostsResponse, CtlError> {
        match self
            .client
            .upgrade_hosts(apiary_proto::UpgradeHostsRequest {
                nodes,
                deadline_ms: deadline.as_millis() as u64,
            })
            .await
        {
            Ok(r) => Ok(r.into_inner()),
            Err(s) if s.code() == tonic::Code::NotFound => {
                Err(CtlError::Usage(s.message().to_string()))
            }
            Err(s) => Err(self.judge(s).await),
        }
    }

    /// Reboots hosts one at a time (answers once done): one line per step.
    pub async fn reboot_hosts(
        &mut self,
        nodes: Vec<String>,
        needed: bool,
    ) -> Result<Vec<String>, CtlError> {
        match self
            .client
            .reboot_hosts(apiary_proto::RebootHostsRequest { nodes, needed })
            .await
        {
            Ok(r) => Ok(r.into_inner().steps),
            Err(s) if s.code() == tonic::Code::NotFound => {
                Err(CtlError::Usage(s.message().to_string()))
            }
            Err(s) => Err(self.judge(s).await),
        }
    }

    /// Scales the hosts to `hosts` (answers once made or removed).
    pub async fn scale_hosts(&mut self, hosts: u32) -> Result<String, CtlError> {
        match self
            .client
            .scale_hosts(apiary_proto::ScaleHostsRequest { hosts })
            .await
        {
            Ok(r) => Ok(r.into_inner().summary),
            // A count out of range is the command line's fault (64).
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                Err(CtlError::Usage(s.message().to_string()))
            }
            Err(s) => Err(self.judge(s).await),
        }
    }

    /// What keeps the cluster from being healthy now (empty: healthy):
    /// nodes not ready, not active in the swarm or off the overlay, failing
    /// checks, an unhealthy database.
    pub async fn unhealthy(&mut self) -> Result<Vec<String>, CtlError> {
        let status = self.status().await?;
        let checks = self.checks().await?;
        Ok(unhealthy_parts(&status, &checks))
    }

    pub async fn checks(&mut self) -> Result<apiary_proto::ChecksResponse, CtlError> {
        match self.client.checks(apiary_proto::ChecksRequest {}).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.judge(s).await),
        }
    }

    pub async fn join_token(&mut self, rotate: bool) -> Result<(String, u64), CtlError> {
        match self.client.join_token(JoinTokenRequest { rotate }).await {
            Ok(r) => {
                let r = r.into_inner();
                Ok((r.token, r.expires_unix))
            }
            Err(s) => Err(self.judge(s).await),
        }
    }

    /// What a database client needs (`ctl database credentials`).
    pub async fn database_credentials(
        &mut self,
    ) -> Result<apiary_proto::DatabaseCredentialsResponse, CtlError> {
        match self
            .client
            .database_credentials(apiary_proto::DatabaseCredentialsRequest {})
            .await
        {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.judge(s).await),
        }
    }

    /// The coordinator endpoints agents are told; with `add` or `remove`
    /// (empty: neither) the stored list changed first and handed to every
    /// connected agent.
    pub async fn coordinator_endpoints(
        &mut self,
        add: String,
        remove: String,
    ) -> Result<apiary_proto::CoordinatorEndpointsResponse, CtlError> {
        match self
            .client
            .coordinator_endpoints(apiary_proto::CoordinatorEndpointsRequest { add, remove })
            .await
        {
            Ok(r) => Ok(r.into_inner()),
            // Removing what is not stored names something that does not
            // exist, as a bad argument does (64).
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::NotFound | tonic::Code::InvalidArgument
                ) =>
            {
                Err(CtlError::Usage(s.message().to_string()))
            }
            Err(s) => Err(self.judge(s).await),
        }
    }

    /// The coordinator's store, read in one transaction (`coordinator
    /// backup` while serve runs).
    pub async fn store_snapshot(
        &mut self,
    ) -> Result<apiary_proto::StoreSnapshotResponse, CtlError> {
        // Facts make a record per node: a large cluster's store is past
        // tonic's 4 MiB default, and this caller asked for all of it.
        let mut client = self
            .client
            .clone()
            .max_decoding_message_size(STORE_SNAPSHOT_MAX);
        match client
            .store_snapshot(apiary_proto::StoreSnapshotRequest {})
            .await
        {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.judge(s).await),
        }
    }
}

/// The largest store snapshot `coordinator backup` accepts from the
/// coordinator (10,000 nodes' records are about 20 MB).
const STORE_SNAPSHOT_MAX: usize = 1 << 30;

/// `ctl coordinator endpoints --json` (and the outcome of `add`/`remove`).
pub fn endpoints_json(
    r: &apiary_proto::CoordinatorEndpointsResponse,
    change: bool,
) -> serde_json::Value {
    let mut v = json!({
        "advertise": (!r.advertise.is_empty()).then_some(&r.advertise),
        "stored": r.stored,
        "told": r.told,
    });
    if change {
        v["changed"] = json!(r.changed);
        v["acknowledged"] = json!(r.acknowledged);
        v["not_acknowledged"] = r
            .not_acknowledged
            .iter()
            .map(|n| json!({"node": n.node, "error": n.error}))
            .collect();
    }
    v
}

/// `ctl coordinator endpoints`: what agents are told, one per line, each
/// saying where it comes from.
pub fn print_endpoints(
    out: &mut dyn Write,
    r: &apiary_proto::CoordinatorEndpointsResponse,
) -> std::io::Result<()> {
    if r.told.is_empty() {
        writeln!(
            out,
            "agents are told no endpoint besides their own configuration (this coordinator \
             listens on an unspecified address without advertise, and none was added)"
        )?;
    }
    for e in &r.told {
        let from = match (*e == r.advertise, r.stored.contains(e)) {
            (true, true) => "this coordinator (advertise), also stored",
            (true, false) => "this coordinator (advertise)",
            (false, _) => "stored",
        };
        writeln!(out, "{:<40} {from}", shown(e))?;
    }
    Ok(())
}

/// The outcome of `add`/`remove`: what changed, then who acknowledged.
pub fn print_endpoints_change(
    out: &mut dyn Write,
    verb: &str,
    endpoint: &str,
    r: &apiary_proto::CoordinatorEndpointsResponse,
) -> std::io::Result<()> {
    let endpoint = shown(endpoint);
    match (r.changed, verb) {
        (true, "add") => writeln!(out, "stored {endpoint}")?,
        (true, _) => writeln!(out, "removed {endpoint}")?,
        (false, _) => writeln!(out, "{endpoint} was already stored; the list is sent again")?,
    }
    let (acked, total) = (
        r.acknowledged.len(),
        r.acknowledged.len() + r.not_acknowledged.len(),
    );
    writeln!(out, "{acked} of {total} connected agent(s) acknowledged")?;
    for n in &r.not_acknowledged {
        writeln!(
            out,
            "  {} did not: {} (it is told when its next session starts)",
            shown(&n.node),
            shown(&n.error)
        )?;
    }
    writeln!(out, "agents are told: {}", shown(&r.told.join(", ")))
}

/// One event as a line (`--json`: one JSON object per line).
pub fn event_line(e: &apiary_proto::Event, json: bool) -> String {
    if json {
        return json!({"at_unix_ms": e.at_unix_ms, "kind": e.kind, "node": e.node, "message": e.message}).to_string();
    }
    let at = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(e.at_unix_ms));
    // Events carry what hosts reported (names, versions, addresses).
    format!(
        "{at}  {:<20} {:<14} {}",
        shown(&e.kind),
        if e.node.is_empty() {
            "-".to_string()
        } else {
            shown(&e.node)
        },
        shown(&e.message)
    )
}

fn ago(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "never".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let secs = now.saturating_sub(unix_ms) / 1000;
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

/// Every server connected, a leader known and every table ready.
fn database_healthy(s: &StatusResponse) -> bool {
    s.database_servers > 0
        && s.database_connected == s.database_servers
        && !s.database_leader.is_empty()
        && s.database_tables
            .as_ref()
            .is_none_or(|t| t.ready == t.total)
}

/// `, tables 2/3 ready (first unavailable: test.docs)`; "" without tables.
fn tables_text(s: &StatusResponse) -> String {
    match &s.database_tables {
        None => String::new(),
        Some(t) if t.first_unavailable.is_empty() => {
            format!(", tables {}/{} ready", t.ready, t.total)
        }
        Some(t) => format!(
            ", tables {}/{} ready (first unavailable: {})",
            t.ready,
            t.total,
            shown(&t.first_unavailable)
        ),
    }
}

/// What keeps a cluster from being healthy (pure; see [`Ctl::unhealthy`]).
pub fn unhealthy_parts(
    status: &StatusResponse,
    checks: &apiary_proto::ChecksResponse,
) -> Vec<String> {
    let mut parts = Vec::new();
    let swarm = checks.phase != "none" || status.nodes.iter().any(|n| !n.swarm_role.is_empty());
    for n in &status.nodes {
        if n.state != "ready" {
            parts.push(format!("{} is {}", n.name, n.state));
        } else if swarm && (n.swarm_status != "ready" || n.swarm_availability != "active") {
            parts.push(format!(
                "{} is not active in the swarm ({}/{})",
                n.name,
                dash(&n.swarm_status),
                dash(&n.swarm_availability)
            ));
        } else if swarm && !n.overlay_attached {
            parts.push(format!("{} is not on the overlay yet", n.name));
        }
    }
    if swarm && checks.phase != "swarm" {
        parts.push(format!("checks: {} round so far", checks.phase));
    }
    if !checks.failures.is_empty() {
        parts.push(format!("{} check(s) failing", checks.failures.len()));
    }
    if swarm && checks.phase == "swarm" && checks.hosts as usize != status.nodes.len() {
        parts.push(format!(
            "checks: the last round covered {} of {} hosts",
            checks.hosts,
            status.nodes.len()
        ));
    }
    if !checks.swarm_error.is_empty() {
        parts.push(checks.swarm_error.clone());
    }
    if !status.database_kind.is_empty() && !database_healthy(status) {
        parts.push(format!(
            "database {}/{} connected{}",
            status.database_connected,
            status.database_servers,
            tables_text(status)
        ));
    }
    parts
}

/// The JSON form of `ctl status` (field names are documented in docs/json.md
/// and stay stable; later features add fields, never rename them).
pub fn status_json(s: &StatusResponse) -> serde_json::Value {
    let nodes: Vec<_> = s.nodes.iter().map(node_json).collect();
    let mut v = json!({ "cluster": s.cluster, "heartbeat_interval_ms": s.heartbeat_interval_ms, "nodes": nodes });
    if !s.database_kind.is_empty()
        && let Some(obj) = v.as_object_mut()
    {
        obj.insert(
            "database".into(),
            json!({
                "kind": s.database_kind,
                "servers": s.database_servers,
                "connected": s.database_connected,
                "leader": s.database_leader,
                "healthy": database_healthy(s),
                "error": s.database_error,
                "peer_tls": s.database_peer_tls,
                "auth": s.database_auth,
                "tables": s.database_tables.as_ref().map(|t| json!({"total": t.total, "ready": t.ready, "first_unavailable": t.first_unavailable})),
                "hosts": s.nodes.iter().filter(|n| !n.database_server.is_empty()).map(|n| json!({"server": n.database_server, "host": n.name, "healthy": n.database_healthy, "restarts": n.database_restarts})).collect::<Vec<_>>(),
            }),
        );
    }
    v
}

/// The last stop of the node's database server: `{}` when none was seen.
fn last_failure_json(n: &NodeStatus) -> serde_json::Value {
    if n.database_last_failure_unix_ms == 0 {
        return json!({});
    }
    json!({
        "at_unix_ms": n.database_last_failure_unix_ms,
        "exit_code": n.database_last_exit_code,
        "oom": n.database_last_oom,
    })
}

/// `, 2 restarts (last stop: exit 137, OOM killed)` for the status table.
fn failures_text(n: &NodeStatus) -> String {
    if n.database_failures == 0 {
        return String::new();
    }
    let restarts = match n.database_restarts {
        1 => "1 restart".to_string(),
        r => format!("{r} restarts"),
    };
    format!(
        ", {restarts} (last stop: exit {}{})",
        n.database_last_exit_code,
        if n.database_last_oom {
            ", OOM killed"
        } else {
            ""
        }
    )
}

fn node_json(n: &NodeStatus) -> serde_json::Value {
    let f = n.facts.clone().unwrap_or_default();
    let features: serde_json::Map<String, serde_json::Value> = f
        .kernel_features
        .iter()
        .map(|k| {
            (
                k.name.clone(),
                json!({"available": k.available, "detail": k.detail}),
            )
        })
        .collect();
    let mut v = json!({
        "name": n.name,
        "state": n.state,
        "public_ip": n.public_ip,
        "private_ip": n.private_ip,
        "last_seen_unix_ms": n.last_seen_unix_ms,
        "hostname": f.hostname,
        "kernel": f.kernel_version,
        "docker_version": f.docker_version,
        "cgroup_version": f.cgroup_version,
        "memory_accounting": f.memory_accounting,
        "kernel_features": features,
        "interfaces": f.interfaces.iter().map(|i| json!({"name": i.name, "addresses": i.addresses})).collect::<Vec<_>>(),
        "cert_serial": n.cert_serial,
        "cert_not_after_unix": n.cert_not_after_unix,
        "enrolled_unix": n.enrolled_unix,
        "swarm_role": n.swarm_role,
        "swarm_status": n.swarm_status,
        "swarm_availability": n.swarm_availability,
        "swarm_leader": n.swarm_leader,
        "overlay_attached": n.overlay_attached,
        "database_server": n.database_server,
        "database_healthy": n.database_healthy,
        "database_failures": n.database_failures,
        "database_restarts": n.database_restarts,
        "database_last_failure": last_failure_json(n),
        "config_state": n.config_state,
        "config_items": n.config_items.iter().map(item_json).collect::<Vec<_>>(),
        "last_drift_repaired_unix_ms": n.last_drift_repaired_unix_ms,
        "last_drift_items": n.last_drift_items,
        "agent_version": n.agent_version,
        "agent_outdated": n.agent_outdated,
        "agent_upgrade_failure": n.agent_upgrade_failure,
    });
    if let Some(obj) = v.as_object_mut() {
        for (k, val) in &n.provider_info {
            obj.insert(k.clone(), json!(val));
        }
    }
    v
}

fn item_json(i: &apiary_proto::ItemReport) -> serde_json::Value {
    json!({"item": i.item, "outcome": i.outcome, "reason": i.reason, "diff": i.diff})
}

/// `ctl hosts apply --json`.
pub fn apply_json(hosts: &[apiary_proto::HostApplyResult], dry_run: bool) -> serde_json::Value {
    json!({
        "dry_run": dry_run,
        "hosts": hosts.iter().map(|h| json!({"node": h.node, "error": h.error, "took_us": h.took_us, "items": h.items.iter().map(item_json).collect::<Vec<_>>()})).collect::<Vec<_>>(),
    })
}

/// `ctl hosts apply`: per host and item, the outcome and (for changes) the diff.
pub fn print_apply(
    out: &mut dyn Write,
    hosts: &[apiary_proto::HostApplyResult],
    dry_run: bool,
) -> std::io::Result<()> {
    for h in hosts {
        if !h.error.is_empty() {
            writeln!(out, "{}: not applied: {}", shown(&h.node), shown(&h.error))?;
            continue;
        }
        let changed = h.items.iter().filter(|i| i.outcome != "ok").count();
        let verb = if dry_run {
            "would change"
        } else {
            "changed or failed"
        };
        writeln!(
            out,
            "{}: {} item(s), {changed} {verb}",
            shown(&h.node),
            h.items.len()
        )?;
        for i in &h.items {
            let outcome = if dry_run && i.outcome == "changed" {
                "would change"
            } else {
                i.outcome.as_str()
            };
            writeln!(
                out,
                "  {:<40} {}{}",
                shown(&i.item),
                shown(outcome),
                if i.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", shown(&i.reason))
                }
            )?;
            if !i.diff.is_empty() && i.outcome != "ok" {
                for line in i.diff.lines() {
                    writeln!(out, "      {}", shown(line))?;
                }
            }
        }
    }
    Ok(())
}

/// `ctl checks --json`: every cell and every failure.
pub fn checks_json(c: &apiary_proto::ChecksResponse) -> serde_json::Value {
    let cells: serde_json::Value =
        serde_json::from_str(&c.cells_json).unwrap_or(serde_json::Value::Null);
    json!({
        "phase": c.phase,
        "at_unix_ms": c.at_unix_ms,
        "hosts": c.hosts,
        "ok": c.failures.is_empty() && c.swarm_error.is_empty() && c.phase != "none",
        "swarm_error": c.swarm_error,
        "failures": c.failures.iter().map(|f| json!({"src": f.src, "dst": f.dst, "port": f.port, "proto": f.proto, "check": f.check, "outcome": f.outcome, "cause": f.cause})).collect::<Vec<_>>(),
        "cells": cells,
        "pre_swarm_cells": serde_json::from_str::<serde_json::Value>(&c.pre_swarm_cells_json).unwrap_or(serde_json::Value::Null),
    })
}

/// `ctl checks`: a summary per protocol, then every failing path with its cause.
pub fn print_checks(out: &mut dyn Write, c: &apiary_proto::ChecksResponse) -> std::io::Result<()> {
    if c.phase == "none" {
        return writeln!(out, "no checks yet: they run once the hosts are up");
    }
    let cells: Vec<apiary_api::reach::Cell> = match serde_json::from_str(&c.cells_json) {
        Ok(cells) => cells,
        // A coordinator of another version: the failures below still say
        // what is broken; only the per-port summary is lost.
        Err(e) => {
            writeln!(
                out,
                "(the per-port summary is not shown: this ctl cannot read the coordinator's cells: {e})"
            )?;
            Vec::new()
        }
    };
    let mut by_kind: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for cell in &cells {
        let proto = cell.proto.to_string();
        let kind = match cell.proto {
            apiary_api::reach::Proto::Overlay | apiary_api::reach::Proto::Esp => proto,
            _ => format!("{}/{proto}", cell.port),
        };
        let entry = by_kind.entry(kind).or_default();
        entry.0 += 1;
        if cell.outcome.is_open() {
            entry.1 += 1;
        }
    }
    writeln!(out, "checks ({}, {} hosts):", c.phase, c.hosts)?;
    for (kind, (total, open)) in &by_kind {
        writeln!(out, "  {kind:<10} {open}/{total} open")?;
    }
    if !c.swarm_error.is_empty() {
        writeln!(out, "swarm/overlay: {}", shown(&c.swarm_error))?;
    }
    if c.failures.is_empty() {
        writeln!(out, "all paths open")?;
    } else {
        writeln!(out, "{} failing:", c.failures.len())?;
        for f in &c.failures {
            if f.proto == "host" {
                writeln!(
                    out,
                    "  {}: {} — {}",
                    shown(&f.src),
                    shown(&f.outcome),
                    shown(&f.cause)
                )?;
                continue;
            }
            let path = match f.proto.as_str() {
                "esp" => "esp".to_string(),
                proto => format!("{}/{proto}", f.port),
            };
            writeln!(
                out,
                "  {} -> {} {path} ({}): {} — likely {}",
                shown(&f.src),
                shown(&f.dst),
                shown(&f.check),
                shown(&f.outcome),
                shown(&f.cause)
            )?;
        }
    }
    Ok(())
}

/// Colour for a person at a terminal, and never with `NO_COLOR` set
/// (<https://no-color.org>: any non-empty value).
pub fn colour_wanted(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `text` in green (good) or red (bad) when `colour`, as is otherwise.
fn paint(text: &str, good: bool, colour: bool) -> String {
    match (colour, good) {
        (false, _) => text.to_string(),
        (true, true) => format!("\x1b[32m{text}\x1b[0m"),
        (true, false) => format!("\x1b[31m{text}\x1b[0m"),
    }
}

/// The table form of `ctl status`; node states and database servers in
/// colour when `colour`.
pub fn print_status(out: &mut dyn Write, s: &StatusResponse, colour: bool) -> std::io::Result<()> {
    let ready = s.nodes.iter().filter(|n| n.state == "ready").count();
    writeln!(
        out,
        "cluster {}: {}/{} nodes ready",
        shown(&s.cluster),
        ready,
        s.nodes.len()
    )?;
    let rows: Vec<[String; 11]> = s
        .nodes
        .iter()
        .map(|n| {
            let f = n.facts.clone().unwrap_or_default();
            [
                n.name.clone(),
                n.state.clone(),
                dash(&n.public_ip),
                dash(&n.private_ip),
                ago(n.last_seen_unix_ms),
                dash(&n.agent_version),
                dash(&f.kernel_version),
                dash(&f.docker_version),
                dash(&n.config_state),
                // role (* for the leader) / node status / availability
                if n.swarm_role.is_empty() {
                    "-".into()
                } else {
                    format!(
                        "{}{}/{}/{}",
                        n.swarm_role,
                        if n.swarm_leader { "*" } else { "" },
                        dash(&n.swarm_status),
                        dash(&n.swarm_availability)
                    )
                },
                match (n.swarm_role.is_empty(), n.overlay_attached) {
                    (true, _) => "-".into(),
                    (false, true) => "attached".into(),
                    (false, false) => "no".into(),
                },
            ]
        })
        .collect();
    // Every cell may hold what a host reported: shown escaped.
    let rows: Vec<[String; 11]> = rows.into_iter().map(|r| r.map(|c| shown(&c))).collect();
    let header = [
        "NAME",
        "STATE",
        "PUBLIC",
        "PRIVATE",
        "LAST SEEN",
        "AGENT",
        "KERNEL",
        "DOCKER",
        "CONFIG",
        "SWARM",
        "OVERLAY",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for (i, r) in std::iter::once(&header).chain(rows.iter()).enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(col, (c, w))| {
                let cell = format!("{c:<w$}");
                // Column 1 is STATE; row 0 the header.
                if col == 1 && i > 0 {
                    paint(&cell, c == "ready", colour)
                } else {
                    cell
                }
            })
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    for n in &s.nodes {
        if !n.agent_outdated.is_empty() {
            writeln!(out, "{}: {}", shown(&n.name), shown(&n.agent_outdated))?;
        }
        if !n.agent_upgrade_failure.is_empty() {
            writeln!(
                out,
                "{}: {}",
                shown(&n.name),
                shown(&n.agent_upgrade_failure)
            )?;
        }
    }
    if !s.database_kind.is_empty() {
        writeln!(
            out,
            "database: {}/{} servers connected, leader {}{} ({}, {}{})",
            s.database_connected,
            s.database_servers,
            if s.database_leader.is_empty() {
                "none".to_string()
            } else {
                shown(&s.database_leader)
            },
            tables_text(s),
            shown(&s.database_kind),
            if s.database_peer_tls {
                "peers over TLS"
            } else {
                "peers in plain text"
            },
            if s.database_auth {
                ", clients authenticate"
            } else {
                ""
            }
        )?;
        for n in s.nodes.iter().filter(|n| !n.database_server.is_empty()) {
            writeln!(
                out,
                "  {} on {}: {}{}",
                shown(&n.database_server),
                shown(&n.name),
                paint(
                    if n.database_healthy {
                        "connected"
                    } else {
                        "not connected"
                    },
                    n.database_healthy,
                    colour
                ),
                failures_text(n)
            )?;
        }
        if !s.database_error.is_empty() {
            writeln!(out, "  {}", shown(&s.database_error))?;
        }
    }
    Ok(())
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_say_where_each_comes_from_and_who_did_not_acknowledge() {
        let r = apiary_proto::CoordinatorEndpointsResponse {
            advertise: "10.0.0.1:7443".into(),
            stored: vec!["10.0.0.2:7443".into()],
            told: vec!["10.0.0.1:7443".into(), "10.0.0.2:7443".into()],
            acknowledged: vec!["bee-1".into()],
            not_acknowledged: vec![apiary_proto::EndpointsNotAcknowledged {
                node: "bee-2".into(),
                error: "bee-2 did not answer within 5s".into(),
            }],
            changed: true,
        };
        let mut out = Vec::new();
        print_endpoints(&mut out, &r).expect("print");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.contains("10.0.0.1:7443") && text.contains("this coordinator (advertise)"),
            "{text}"
        );
        assert!(
            text.lines().nth(1).is_some_and(|l| l.ends_with("stored")),
            "{text}"
        );
        let mut out = Vec::new();
        print_endpoints_change(&mut out, "add", "10.0.0.2:7443", &r).expect("print");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("stored 10.0.0.2:7443"), "{text}");
        assert!(
            text.contains("1 of 2 connected agent(s) acknowledged"),
            "{text}"
        );
        assert!(text.contains("bee-2 did not"), "{text}");
        let v = endpoints_json(&r, true);
        assert_eq!(v["advertise"], "10.0.0.1:7443");
        assert_eq!(v["not_acknowledged"][0]["node"], "bee-2");
        let listed = endpoints_json(
            &apiary_proto::CoordinatorEndpointsResponse::default(),
            false,
        );
        assert_eq!(listed, json!({"advertise": null, "stored": [], "told": []}));
    }

    /// What the coordinator answers after a round in phase `overlay` on 3
    /// hosts with every probed path open and the agents of `down` not
    /// connected: no cells, and one `host` failure per such agent.
    fn checks_with_down(down: &[&str]) -> apiary_proto::ChecksResponse {
        apiary_proto::ChecksResponse {
            phase: "overlay".into(),
            at_unix_ms: 0,
            cells_json: "[]".into(),
            failures: down
                .iter()
                .map(|host| apiary_proto::CheckFailure {
                    src: (*host).into(),
                    dst: String::new(),
                    port: 0,
                    proto: "host".into(),
                    check: "session".into(),
                    outcome: "down".into(),
                    cause: "its agent is not connected, so none of its paths were checked \
                            (`ctl status` shows since when)"
                        .into(),
                })
                .collect(),
            swarm_error: String::new(),
            hosts: 3,
            pre_swarm_cells_json: "[]".into(),
        }
    }

    #[test]
    fn a_host_whose_agent_is_down_fails_the_checks_by_name() {
        let wire = checks_with_down(&["workerbee-2"]);
        let json = checks_json(&wire);
        assert_eq!(json["ok"], false, "{json}");
        assert_eq!(json["failures"][0]["src"], "workerbee-2");
        assert_eq!(json["failures"][0]["proto"], "host");
        assert_eq!(json["failures"][0]["outcome"], "down");
        assert_eq!(json["cells"], json!([]), "{json}");
        let mut text = Vec::new();
        print_checks(&mut text, &wire).expect("print");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(
            text.contains("1 failing:\n  workerbee-2: down — its agent is not connected"),
            "{text}"
        );
        // Back: nothing is failing any more.
        assert_eq!(checks_json(&checks_with_down(&[]))["ok"], true);
    }

    fn node(
        name: &str,
        role: &str,
        leader: bool,
        availability: &str,
        attached: bool,
    ) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            state: "ready".into(),
            swarm_role: role.into(),
            swarm_status: if role.is_empty() { "" } else { "ready" }.into(),
            swarm_availability: availability.into(),
            swarm_leader: leader,
            overlay_attached: attached,
            ..Default::default()
        }
    }

    #[test]
    fn the_status_table_shows_swarm_availability_and_the_overlay() {
        let s = StatusResponse {
            cluster: "bees".into(),
            nodes: vec![
                node("queenbee", "manager", true, "active", true),
                node("workerbee-1", "worker", false, "drain", false),
                node("workerbee-2", "", false, "", false),
            ],
            ..Default::default()
        };
        let mut out = Vec::new();
        print_status(&mut out, &s, false).expect("print");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains("SWARM") && lines[1].ends_with("OVERLAY"),
            "{text}"
        );
        let cols = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let q = cols(lines[2]);
        assert_eq!(
            q[q.len() - 2..],
            ["manager*/ready/active", "attached"],
            "{text}"
        );
        let w = cols(lines[3]);
        assert_eq!(w[w.len() - 2..], ["worker/ready/drain", "no"], "{text}");
        let none = cols(lines[4]);
        assert_eq!(none[none.len() - 2..], ["-", "-"], "{text}");
    }

    #[test]
    fn the_database_line_says_whether_peers_talk_tls() {
        for (peer_tls, said) in [(true, "peers over TLS"), (false, "peers in plain text")] {
            let s = StatusResponse {
                cluster: "bees".into(),
                database_kind: "etcd".into(),
                database_servers: 4,
                database_connected: 4,
                database_leader: "etcd-2".into(),
                database_peer_tls: peer_tls,
                ..Default::default()
            };
            let mut out = Vec::new();
            print_status(&mut out, &s, false).expect("print");
            let text = String::from_utf8(out).expect("utf-8");
            assert!(
                text.contains(&format!(
                    "database: 4/4 servers connected, leader etcd-2 (etcd, {said})"
                )),
                "{text}"
            );
            assert_eq!(status_json(&s)["database"]["peer_tls"], peer_tls);
        }
    }
}

#[cfg(test)]
mod terminal_tests {
    use super::*;

    const HOSTILE: &str = "6.1\x1b]0;owned\x07\r\nfake-node  ready";

    #[test]
    fn host_text_is_escaped_in_tables_and_exact_in_json() {
        let s = StatusResponse {
            cluster: "bees".into(),
            nodes: vec![NodeStatus {
                name: "h1".into(),
                state: "ready".into(),
                private_ip: "10.231.0.11\x07".into(),
                facts: Some(apiary_proto::Facts {
                    kernel_version: HOSTILE.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut out = Vec::new();
        print_status(&mut out, &s, false).expect("prints");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            !text.contains('\x1b') && !text.contains('\x07') && !text.contains('\r'),
            "{text:?}"
        );
        assert!(!text.lines().any(|l| l.starts_with("fake-node")), "{text}");
        assert!(
            text.contains("6.1\\x1b]0;owned\\x07\\r\\nfake-node"),
            "{text}"
        );
        let json = status_json(&s);
        assert_eq!(
            json["nodes"][0]["kernel"], HOSTILE,
            "JSON keeps the exact text"
        );
    }

    #[test]
    fn event_lines_are_escaped_and_json_lines_exact() {
        let e = apiary_proto::Event {
            at_unix_ms: 1,
            kind: "node_connected".into(),
            node: "h1".into(),
            message: format!("agent {HOSTILE}"),
        };
        let line = event_line(&e, false);
        assert!(
            !line.contains('\x1b') && !line.contains('\n') && !line.contains('\r'),
            "{line:?}"
        );
        let json: serde_json::Value = serde_json::from_str(&event_line(&e, true)).expect("json");
        assert_eq!(json["message"], format!("agent {HOSTILE}"));
    }
}
