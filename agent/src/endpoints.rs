//! The coordinator endpoints this agent knows, and which one it dials.
//!
//! The list is the configured `--coordinator` first, then what the
//! coordinator told it (each session's welcome, and `SetCoordinatorEndpoints`
//! when an operator changes the list), each once. What it was told replaces
//! what it was told before (the coordinator holds the cluster's list); the
//! configured endpoint is never dropped, because it is the one thing the
//! operator wrote on this host, and only the operator changes it.
//!
//! When a session cannot be had, the agent dials the next endpoint in the
//! list, round-robin; the session loop backs off only once every endpoint
//! failed in a row, so a moved coordinator is found within one cycle. A
//! session that works stays on its endpoint. The endpoint that last gave a
//! session is remembered, and a restarted agent starts there rather than at
//! the configured one: after a move, the configured address is usually the
//! dead one.
//!
//! Saved as `coordinators.json` in the state directory (0600, written to a
//! temporary file and renamed). A missing or unreadable file is not an
//! error: the agent starts from its configuration, as before it knew more.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use apiary_api::endpoints::{BadEndpoint, CoordinatorEndpoint};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::AgentConfig;

/// The file's name in the state directory.
pub const FILE: &str = "coordinators.json";

/// What `coordinators.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    /// What the coordinator told, in its order.
    #[serde(default)]
    pub told: Vec<CoordinatorEndpoint>,
    /// The endpoint that last gave a session.
    #[serde(default)]
    pub last_good: Option<CoordinatorEndpoint>,
}

/// Why the list could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error(transparent)]
    Bad(#[from] BadEndpoint),
    #[error("cannot save the coordinator endpoints: {0}")]
    Save(#[from] apiary_certs::CertError),
    #[error("cannot encode the coordinator endpoints: {0}")]
    Encode(#[from] serde_json::Error),
}

#[derive(Debug)]
struct State {
    saved: Saved,
    /// The endpoint being dialled, or whose session is up.
    current: String,
    /// Where the failures since the last session began: back there, every
    /// endpoint has failed once (a position, not a count, so that a list
    /// changed meanwhile still ends its round).
    round_start: Option<String>,
}

/// The agent's list; shared by the session loop and the operation handler.
#[derive(Debug)]
pub struct Endpoints {
    configured: String,
    path: PathBuf,
    state: Mutex<State>,
}

impl Endpoints {
    /// The list for `configured`, with what `state_dir` saved.
    pub fn load(configured: &str, state_dir: &Path) -> Self {
        let path = state_dir.join(FILE);
        let saved = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(path = %path.display(), error = %e, "the saved coordinator endpoints cannot be read; starting from the configured one");
                Saved::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "the saved coordinator endpoints cannot be read; starting from the configured one");
                Saved::default()
            }
        };
        let list = order(configured, &saved.told);
        let current = start(&list, saved.last_good.as_ref());
        if current != configured {
            info!(coordinator = %current, configured, "starting at the coordinator endpoint that last gave a session");
        }
        Endpoints {
            configured: configured.to_string(),
            path,
            state: Mutex::new(State {
                saved,
                current,
                round_start: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `config` with the endpoint to dial now as its coordinator.
    pub fn config_for(&self, config: &AgentConfig) -> AgentConfig {
        AgentConfig {
            coordinator: self.current(),
            ..config.clone()
        }
    }

    /// The endpoint to dial now.
    pub fn current(&self) -> String {
        self.lock().current.clone()
    }

    /// Every endpoint, in the order they are tried.
    pub fn list(&self) -> Vec<String> {
        order(&self.configured, &self.lock().saved.told)
    }

    /// A session could not be had on the current endpoint: the next one is
    /// current now. True when every endpoint has failed in a row since the
    /// last session (then the caller backs off before the next round).
    pub fn failed(&self) -> bool {
        let mut s = self.lock();
        let list = order(&self.configured, &s.saved.told);
        // A round starts at the first failure, or again when the endpoint
        // it started at has left the list (it would never come round).
        let start = match &s.round_start {
            Some(start) if list.contains(start) => start.clone(),
            _ => s.current.clone(),
        };
        s.current = next(&list, &s.current);
        s.round_start = Some(start.clone());
        s.current == start
    }

    /// The coordinator welcomed this agent on the current endpoint, telling
    /// it `told`: remembered as the one to start at, and the list taken.
    /// An endpoint in `told` that is not one is dropped with a warning (the
    /// session goes on: it works, whatever the list says).
    pub fn welcomed(&self, told: &[String]) {
        let told: Vec<CoordinatorEndpoint> = told
            .iter()
            .filter_map(|t| match CoordinatorEndpoint::parse(t) {
                Ok(e) => Some(e),
                Err(e) => {
                    warn!(error = %e, "the coordinator told an endpoint that is not one; ignored");
                    None
                }
            })
            .collect();
        let mut s = self.lock();
        s.round_start = None;
        let mut saved = s.saved.clone();
        saved.told = told;
        saved.last_good = CoordinatorEndpoint::parse(&s.current).ok();
        if let Err(e) = self.keep(&mut s, saved) {
            warn!(error = %e, "the coordinator endpoints are used but not saved; a restarted agent starts from its configuration");
        }
    }

    /// `SetCoordinatorEndpoints`: the list replaced and saved; true if it
    /// changed.
    pub fn set(&self, told: Vec<CoordinatorEndpoint>) -> Result<bool, EndpointsError> {
        let mut s = self.lock();
        let saved = Saved {
            told,
            ..s.saved.clone()
        };
        self.keep(&mut s, saved)
    }

    /// Takes `saved` and writes it if it differs from what is saved.
    fn keep(&self, s: &mut State, saved: Saved) -> Result<bool, EndpointsError> {
        if saved == s.saved {
            return Ok(false);
        }
        let json = serde_json::to_vec_pretty(&saved)?;
        apiary_certs::write_private(&self.path, &json)?;
        info!(endpoints = ?order(&self.configured, &saved.told), "coordinator endpoints saved");
        s.saved = saved;
        Ok(true)
    }
}

/// The configured endpoint, then what the coordinator told, each once. A
/// configured endpoint that is not a valid one (a name the agent resolves
/// at dial time, as before) still comes first, as written.
pub fn order(configured: &str, told: &[CoordinatorEndpoint]) -> Vec<String> {
    let first = CoordinatorEndpoint::parse(configured)
        .map(String::from)
        .unwrap_or_else(|_| configured.to_string());
    let mut out = vec![first];
    for e in told {
        if !out.iter().any(|o| o == e.as_str()) {
            out.push(e.to_string());
        }
    }
    out
}

/// Where to start: the endpoint that last gave a session, if the list still
/// holds it, else the configured one.
pub fn start(list: &[String], last_good: Option<&CoordinatorEndpoint>) -> String {
    last_good
        .and_then(|g| list.iter().find(|e| *e == g.as_str()))
        .or_else(|| list.first())
        .cloned()
        .unwrap_or_default()
}

/// The endpoint after `current`, round-robin; the first when `current` has
/// left the list.
pub fn next(list: &[String], current: &str) -> String {
    let at = list.iter().position(|e| e == current);
    let i = at.map_or(0, |i| (i + 1) % list.len().max(1));
    list.get(i).cloned().unwrap_or_else(|| current.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn ep(s: &str) -> CoordinatorEndpoint {
        CoordinatorEndpoint::parse(s).expect(s)
    }

    #[test]
    fn the_configured_endpoint_comes_first_and_each_endpoint_once() {
        let told = [
            ep("10.0.0.1:7443"),
            ep("10.0.0.2:7443"),
            ep("10.0.0.3:7443"),
        ];
        assert_eq!(
            order("10.0.0.2:7443", &told),
            ["10.0.0.2:7443", "10.0.0.1:7443", "10.0.0.3:7443"]
        );
        // Spelt otherwise, still one endpoint.
        assert_eq!(
            order("Kvstore:7443", &[ep("kvstore:7443")]),
            ["kvstore:7443"]
        );
        assert_eq!(order("10.0.0.1:7443", &[]), ["10.0.0.1:7443"]);
    }

    #[test]
    fn failover_goes_round_robin_and_starts_where_a_session_last_worked() {
        let list: Vec<String> = ["a:1", "b:1", "c:1"].map(String::from).to_vec();
        assert_eq!(next(&list, "a:1"), "b:1");
        assert_eq!(next(&list, "c:1"), "a:1");
        assert_eq!(next(&list, "gone:1"), "a:1");
        assert_eq!(next(&["a:1".to_string()], "a:1"), "a:1");
        assert_eq!(start(&list, Some(&ep("c:1"))), "c:1");
        assert_eq!(start(&list, Some(&ep("gone:1"))), "a:1");
        assert_eq!(start(&list, None), "a:1");
    }

    #[test]
    fn a_full_cycle_of_failures_asks_for_backoff_and_a_session_resets_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = Endpoints::load("a:1", dir.path());
        assert!(e.failed(), "one endpoint: every failure is a full cycle");
        e.set(vec![ep("b:1"), ep("c:1")]).expect("set");
        assert_eq!(e.list(), ["a:1", "b:1", "c:1"]);
        assert_eq!(e.current(), "a:1");
        assert!(!e.failed());
        assert_eq!(e.current(), "b:1");
        assert!(!e.failed());
        assert_eq!(e.current(), "c:1");
        assert!(e.failed(), "a, b and c all failed");
        assert_eq!(e.current(), "a:1");
        assert!(!e.failed());
        // A session on b resets the count.
        e.welcomed(&["b:1".into(), "c:1".into()]);
        assert!(!e.failed());
        assert!(!e.failed());
        assert!(e.failed());
        // The round's first endpoint removed meanwhile: a new round, never
        // an endless one.
        assert_eq!(e.current(), "b:1");
        assert!(!e.failed());
        e.set(vec![ep("c:1")]).expect("set");
        assert_eq!(e.list(), ["a:1", "c:1"]);
        assert!(!e.failed(), "c failed: a round starts at c");
        assert!(e.failed(), "a failed: back at c");
    }

    #[test]
    fn the_list_is_saved_0600_and_a_restart_starts_at_the_last_good_endpoint() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = Endpoints::load("10.0.0.1:7443", dir.path());
        assert_eq!(e.current(), "10.0.0.1:7443");
        e.welcomed(&["10.0.0.1:7443".into(), "10.0.0.2:7443".into()]);
        assert!(!e.failed(), "two endpoints: one failure is not a cycle");
        assert_eq!(e.current(), "10.0.0.2:7443");
        e.welcomed(&["10.0.0.2:7443".into(), "bad".into()]);
        let path = dir.path().join(FILE);
        let mode = std::fs::metadata(&path)
            .expect("saved")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);

        // Restarted with the old address configured: it starts at the new.
        let again = Endpoints::load("10.0.0.1:7443", dir.path());
        assert_eq!(again.current(), "10.0.0.2:7443");
        assert_eq!(again.list(), ["10.0.0.1:7443", "10.0.0.2:7443"]);
        // Told the same again: nothing to write.
        assert!(!again.set(vec![ep("10.0.0.2:7443")]).expect("set"));
        assert!(again.set(vec![]).expect("set"));
        assert_eq!(again.list(), ["10.0.0.1:7443"]);

        // A damaged file: the configured endpoint, as before any list.
        std::fs::write(&path, "{not json").expect("write");
        let damaged = Endpoints::load("10.0.0.1:7443", dir.path());
        assert_eq!(damaged.list(), ["10.0.0.1:7443"]);
        assert_eq!(damaged.current(), "10.0.0.1:7443");
    }
}
