//! `ctl scale hosts=N` on a running cluster: the count is recorded first (a
//! restarted coordinator keeps it; the spec's `provider.hosts` is only the
//! starting point, as `database=N` already works), then the provider makes
//! the new hosts and waits until their agents are enrolled and ready (the
//! reconcile rounds then configure them, check them, join them to Swarm and
//! the overlay and give them a database server where `servers` allows), or
//! drains the surplus one host at a time, highest-numbered first (database
//! server out through the database's API, Swarm node drained and removed,
//! certificates revoked) before removing the host itself.
//!
//! What is decided here is pure ([`scaled_names`]); the provider does the
//! making and removing behind [`HostProvider`].

use std::sync::{Arc, OnceLock};

use tracing::info;

use crate::core::Coordinator;
use crate::store::{HostScaleRecord, Op};

/// Why hosts could not be scaled.
#[derive(Debug, thiserror::Error)]
pub enum ScaleHostsError {
    #[error(
        "provider {provider} makes no hosts, so apiary cannot scale them: start or stop agents on your hosts instead (`ctl nodes remove NAME` takes one out)"
    )]
    NotSupported { provider: &'static str },
    #[error("hosts={wanted}: {reason}")]
    BadCount { wanted: usize, reason: String },
    #[error(
        "a scale of the hosts is already running; wait for it (`ctl status` shows its progress)"
    )]
    Busy,
    #[error("could not record the new host count: {0}")]
    Record(String),
    #[error("{0}")]
    Provider(String),
}

/// The most hosts `ctl scale hosts=N` asks for (the config's own limit).
pub const MAX_HOSTS: usize = 200;

/// The host names for `n` hosts, from the current ones (in placement order):
/// the first `n` when shrinking, so the highest-numbered go; when growing,
/// the current ones then `workerbee-K` for the next unused numbers.
pub fn scaled_names(current: &[String], n: usize) -> Result<Vec<String>, ScaleHostsError> {
    if n == 0 || n > MAX_HOSTS {
        return Err(ScaleHostsError::BadCount {
            wanted: n,
            reason: format!("a cluster has between 1 and {MAX_HOSTS} hosts"),
        });
    }
    let mut names: Vec<String> = current.iter().take(n).cloned().collect();
    let mut k = 1;
    while names.len() < n {
        let name = format!("workerbee-{k}");
        if !names.contains(&name) {
            names.push(name);
        }
        k += 1;
    }
    Ok(names)
}

/// What a provider that makes hosts does for `ctl scale hosts=N` and
/// `ctl hosts reboot`.
#[tonic::async_trait]
pub trait HostProvider: Send + Sync {
    /// The hosts planned now, in placement order.
    fn planned(&self) -> Vec<String>;
    /// Plans `names` (the current hosts and more), makes the new hosts and
    /// starts their agents; returns once each is enrolled and ready.
    async fn grow(&self, coordinator: &Arc<Coordinator>, names: Vec<String>) -> Result<(), String>;
    /// Plans `names` (the first of the current hosts), then drains and
    /// removes each of the others, the highest-numbered first; one line
    /// per step.
    async fn shrink(
        &self,
        coordinator: &Arc<Coordinator>,
        names: Vec<String>,
    ) -> Result<Vec<String>, String>;
    /// Restarts `node`'s host as a power cycle would (everything on it
    /// stops at once; it starts again from its disk); returns once it is
    /// starting again, not once it is back.
    async fn power_cycle(&self, coordinator: &Arc<Coordinator>, node: &str) -> Result<(), String>;
}

/// Before new hosts come in: the database keeps its server count while
/// they do (a round would otherwise give each new host a server as though
/// the database were being made, and etcd takes new members one at a time,
/// `member add` first). True when the spec wants a server per host and no
/// `ctl scale database=N` said otherwise: the database is then grown onto
/// the new hosts once they are ready.
async fn hold_database(coordinator: &Coordinator) -> Result<bool, ScaleHostsError> {
    use crate::context::ClusterContext;
    let Some(db) = coordinator
        .config()
        .swarm
        .as_ref()
        .and_then(|s| s.database.as_ref())
    else {
        return Ok(false);
    };
    if coordinator.database_scale().is_some() {
        return Ok(false);
    }
    let servers = match db.servers {
        Some(n) => n,
        None => coordinator.nodes().len(),
    };
    coordinator
        .set_database_scale(servers)
        .await
        .map_err(|e| ScaleHostsError::Record(e.to_string()))?;
    Ok(db.servers.is_none())
}

/// How long new hosts have to be ready in the swarm before the database
/// grows onto them.
const SWARM_JOIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(300);

async fn wait_in_swarm(coordinator: &Coordinator, added: &[String]) -> Result<(), ScaleHostsError> {
    let deadline = tokio::time::Instant::now() + SWARM_JOIN_WITHIN;
    loop {
        let swarm = coordinator.view.checks().swarm;
        let missing: Vec<&str> = added
            .iter()
            .filter(|n| swarm.get(*n).is_none_or(|s| s.status != "ready"))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ScaleHostsError::Provider(format!(
                "the new hosts are enrolled, but {} did not join the swarm within {} s, so the database was not grown onto them; `ctl status` and `ctl checks` say why",
                missing.join(", "),
                SWARM_JOIN_WITHIN.as_secs()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// The provider, held with the one-at-a-time guard.
pub type Exclusive<'a> = (Arc<dyn HostProvider>, tokio::sync::MutexGuard<'a, ()>);

/// The provider that makes hosts, as it registered, and the lock that
/// lets one scale or rolling reboot run at a time.
#[derive(Default)]
pub struct HostControl {
    scaler: OnceLock<Arc<dyn HostProvider>>,
    busy: tokio::sync::Mutex<()>,
}

impl HostControl {
    /// Called once by the provider that makes hosts.
    pub fn register(&self, scaler: Arc<dyn HostProvider>) {
        let _ = self.scaler.set(scaler);
    }

    /// The registered provider and the one-at-a-time guard, for a rolling
    /// reboot (`None` when no provider makes hosts; `Err` when busy).
    pub fn exclusive(&self) -> Option<Result<Exclusive<'_>, ()>> {
        let provider = self.scaler.get()?.clone();
        Some(self.busy.try_lock().map(|g| (provider, g)).map_err(|_| ()))
    }

    /// Scales to `n` hosts; says what changed.
    pub async fn scale(
        &self,
        coordinator: &Arc<Coordinator>,
        n: usize,
    ) -> Result<String, ScaleHostsError> {
        let scaler = self.scaler.get().ok_or(ScaleHostsError::NotSupported {
            provider: coordinator.config().provider.kind(),
        })?;
        let _busy = self.busy.try_lock().map_err(|_| ScaleHostsError::Busy)?;
        let current = scaler.planned();
        let names = scaled_names(&current, n)?;
        // Recorded first: a coordinator killed in the middle goes on toward
        // the new count when it starts again.
        coordinator
            .store
            .apply(vec![Op::PutHostScale(HostScaleRecord {
                hosts: n,
                set_unix: crate::time::now_unix(),
            })])
            .await
            .map_err(|e| ScaleHostsError::Record(e.to_string()))?;
        let from = current.len();
        info!(from, to = n, "scaling hosts");
        if n > from {
            let added = names[from..].join(", ");
            let grow_database = hold_database(coordinator).await?;
            scaler
                .grow(coordinator, names.clone())
                .await
                .map_err(ScaleHostsError::Provider)?;
            let mut summary = format!(
                "hosts: {from} -> {n}: {added} made; the next rounds configure and check them and join them to Swarm and the overlay once they are enrolled (`ctl status`, or `ctl scale hosts={n} --wait`)"
            );
            if grow_database {
                // One server per host: the new hosts' servers join the
                // way `ctl scale database=N` adds them, one at a time, once
                // the rounds have the hosts in the swarm (a server is a
                // service pinned to its host).
                wait_in_swarm(coordinator, &names[from..]).await?;
                let db = coordinator.scale_database(n).await.map_err(|e| {
                    ScaleHostsError::Provider(format!(
                        "the hosts are in, but the database did not grow onto them: {e}"
                    ))
                })?;
                summary.push_str(&format!("\n  {db}"));
            }
            Ok(summary)
        } else if n < from {
            let steps = scaler
                .shrink(coordinator, names)
                .await
                .map_err(ScaleHostsError::Provider)?;
            Ok(format!("hosts: {from} -> {n}\n  {}", steps.join("\n  ")))
        } else {
            Ok(format!("hosts: already {n}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shrinking_keeps_the_first_hosts_and_growing_adds_the_next_workerbees() {
        let four = names(&["queenbee", "workerbee-1", "workerbee-2", "workerbee-3"]);
        assert_eq!(
            scaled_names(&four, 6).expect("grow"),
            names(&[
                "queenbee",
                "workerbee-1",
                "workerbee-2",
                "workerbee-3",
                "workerbee-4",
                "workerbee-5"
            ])
        );
        assert_eq!(
            scaled_names(&four, 2).expect("shrink"),
            names(&["queenbee", "workerbee-1"])
        );
        // Custom names: new hosts take workerbee numbers not in use.
        let custom = names(&["a", "workerbee-1"]);
        assert_eq!(
            scaled_names(&custom, 4).expect("grow"),
            names(&["a", "workerbee-1", "workerbee-2", "workerbee-3"])
        );
        for bad in [0, MAX_HOSTS + 1] {
            let e = scaled_names(&four, bad).expect_err("out of range");
            assert!(e.to_string().contains("between 1 and 200"), "{e}");
        }
    }
}
