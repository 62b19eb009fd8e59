//! Live agent sessions, in memory: who is connected, when each was last heard
//! from, and the channel to send it commands. Durable facts live in the store;
//! this is only what dies with the process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::time::now_unix_ms;

use apiary_proto::{CoordinatorMessage, Facts};
use tokio::sync::mpsc;
use tonic::Status;

pub type Outbox = mpsc::Sender<Result<CoordinatorMessage, Status>>;

#[derive(Debug)]
struct Live {
    session: u64,
    outbox: Outbox,
    last_seen: Instant,
    last_seen_unix_ms: u64,
    facts: Option<Facts>,
    agent: Option<AgentInfo>,
    heartbeats: u64,
}

/// The agent behind a session, as its hello said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentInfo {
    pub version: String,
    /// Why the coordinator does not work with this version (then the node
    /// gets no cluster work and is not ready); `None` when it does.
    pub outdated: Option<String>,
}

#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Live>>,
    next_session: AtomicU64,
    /// The last upgrade each node rolled back, and why; kept across its
    /// sessions (the agent says it once, in the hello after the rollback).
    upgrade_failures: Mutex<HashMap<String, String>>,
}

/// What the registry knows of one node right now.
#[derive(Debug, Clone)]
pub struct LiveView {
    pub connected_and_fresh: bool,
    pub last_seen_unix_ms: u64,
    pub facts: Option<Facts>,
    pub agent: Option<AgentInfo>,
    /// Heartbeats received in this session.
    pub heartbeats: u64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new session for `node`, replacing (and closing) an older one:
    /// one agent, one session.
    pub fn connect(&self, node: &str, outbox: Outbox, facts: Option<Facts>) -> u64 {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let live = Live {
            session,
            outbox,
            last_seen: Instant::now(),
            last_seen_unix_ms: now_unix_ms(),
            facts,
            agent: None,
            heartbeats: 0,
        };
        if let Some(old) = self.lock().insert(node.to_string(), live) {
            let _ = old.outbox.try_send(Err(Status::aborted(
                "replaced by a newer session from the same node",
            )));
        }
        session
    }

    pub fn disconnect(&self, node: &str, session: u64) {
        let mut map = self.lock();
        if map.get(node).is_some_and(|l| l.session == session) {
            map.remove(node);
        }
    }

    pub fn seen(&self, node: &str, session: u64) {
        if let Some(l) = self.lock().get_mut(node).filter(|l| l.session == session) {
            l.last_seen = Instant::now();
            l.last_seen_unix_ms = now_unix_ms();
        }
    }

    pub fn heartbeat(&self, node: &str, session: u64) {
        if let Some(l) = self.lock().get_mut(node).filter(|l| l.session == session) {
            l.heartbeats += 1;
        }
    }

    pub fn set_facts(&self, node: &str, session: u64, facts: Facts) {
        if let Some(l) = self.lock().get_mut(node).filter(|l| l.session == session) {
            l.facts = Some(facts);
        }
    }

    pub fn set_agent(&self, node: &str, session: u64, agent: AgentInfo) {
        if let Some(l) = self.lock().get_mut(node).filter(|l| l.session == session) {
            l.agent = Some(agent);
        }
    }

    pub fn set_upgrade_failure(&self, node: &str, failure: String) {
        self.upgrade_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), failure);
    }

    /// The last upgrade `node` rolled back, and why.
    pub fn upgrade_failure(&self, node: &str) -> Option<String> {
        self.upgrade_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
    }

    /// Ends `node`'s session with `status` (the agent reads it as the reason).
    pub fn kick(&self, node: &str, status: Status) {
        if let Some(l) = self.lock().remove(node) {
            let _ = l.outbox.try_send(Err(status));
        }
    }

    /// Ends every session (coordinator shutdown).
    pub fn kick_all(&self, status: Status) {
        for (_, l) in self.lock().drain() {
            let _ = l.outbox.try_send(Err(status.clone()));
        }
    }

    pub fn view(&self, node: &str, heartbeat: Duration) -> Option<LiveView> {
        self.lock().get(node).map(|l| LiveView {
            // Ready only once the agent said hello with its facts: a session
            // that has not yet is not a usable node; nor is an agent the
            // coordinator does not work with.
            connected_and_fresh: l.facts.is_some()
                && l.last_seen.elapsed() < heartbeat * 3
                && l.agent.as_ref().is_none_or(|a| a.outdated.is_none()),
            last_seen_unix_ms: l.last_seen_unix_ms,
            facts: l.facts.clone(),
            agent: l.agent.clone(),
            heartbeats: l.heartbeats,
        })
    }

    pub fn outbox(&self, node: &str) -> Option<Outbox> {
        self.lock().get(node).map(|l| l.outbox.clone())
    }

    pub fn nodes(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn connected(&self) -> usize {
        self.lock().len()
    }

    /// (node, last seen) of every session, for persisting last-seen times.
    pub fn last_seen(&self) -> Vec<(String, u64)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.last_seen_unix_ms))
            .collect()
    }
}
