//! Agents' live sessions and the calls the coordinator makes over them.
//!
//! [`Registry`] knows who is connected; [`Sessions`] adds the one
//! request/reply mechanism the coordinator uses for every command it sends
//! down a session ([`Waiters`]: an id, a oneshot, a deadline, removal on
//! every path). [`AgentCalls`] is the seam the reconcile loop and the
//! database control call through: [`Sessions`] implements it over real
//! sessions, tests implement it with fake agents.

mod registry;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use apiary_api::ops::{OpRequest, Operation, decode_reply};
use apiary_proto::{
    AgentOp, Command, CoordinatorMessage, HostConfigReport, OpResult, command, coordinator_message,
};
use tokio::sync::oneshot;

pub use registry::{AgentInfo, LiveView, Outbox, Registry};

/// Why a call to an agent got no usable answer. The agent's own refusal
/// ([`CallError::Refused`]) is its sentence as is: it already names what
/// failed on the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("{node} has no session (agent down)")]
    NoSession { node: String },
    #[error("{node}'s session ended")]
    SessionEnded { node: String },
    #[error("{node}'s session ended before it answered")]
    NoAnswer { node: String },
    #[error("{node} did not answer within {timeout:?}")]
    Timeout { node: String, timeout: Duration },
    #[error("{message}")]
    Refused {
        node: String,
        op: &'static str,
        message: String,
    },
    #[error("{node} answered {op} with something unexpected: {reason}")]
    BadReply {
        node: String,
        op: &'static str,
        reason: String,
    },
    #[error("cannot encode {op} for {node}: {reason}")]
    Encode {
        node: String,
        op: &'static str,
        reason: String,
    },
}

impl CallError {
    /// The node the call was for.
    pub fn node(&self) -> &str {
        match self {
            CallError::NoSession { node }
            | CallError::SessionEnded { node }
            | CallError::NoAnswer { node }
            | CallError::Timeout { node, .. }
            | CallError::Refused { node, .. }
            | CallError::BadReply { node, .. }
            | CallError::Encode { node, .. } => node,
        }
    }
}

/// Runs operations on agents: the one seam between deciding and the hosts.
#[tonic::async_trait]
pub trait AgentCalls: Send + Sync {
    /// Runs `req` on `node`'s agent; the reply's JSON.
    async fn call_json(&self, node: &str, req: OpRequest) -> Result<String, CallError>;
}

/// Runs `op` on `node`'s agent and reads the reply as `O::Reply`.
pub async fn call<O: Operation>(
    agents: &dyn AgentCalls,
    node: &str,
    op: O,
) -> Result<O::Reply, CallError> {
    let req: OpRequest = op.into();
    let name = req.name();
    let json = agents.call_json(node, req).await?;
    decode_reply::<O>(&json).map_err(|e| CallError::BadReply {
        node: node.to_string(),
        op: name,
        reason: e.to_string(),
    })
}

/// Callers waiting for the answer to a command they sent, by command id.
pub struct Waiters<T> {
    waiting: Mutex<HashMap<u64, oneshot::Sender<T>>>,
}

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Waiters {
            waiting: Mutex::default(),
        }
    }
}

impl<T> Waiters<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<T>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `answer` to whoever waits for `id`; false if nobody does (it
    /// gave up, or the id is not ours).
    pub fn answer(&self, id: u64, answer: T) -> bool {
        match self.lock().remove(&id) {
            Some(waiter) => waiter.send(answer).is_ok(),
            None => false,
        }
    }

    /// How many callers wait now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends `msg` (command `id`) to `node` and waits up to `timeout` for its
    /// answer. The waiter is removed on every path, answered or not.
    pub async fn ask(
        &self,
        outbox: Option<Outbox>,
        node: &str,
        id: u64,
        msg: CoordinatorMessage,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let node_s = || node.to_string();
        let outbox = outbox.ok_or_else(|| CallError::NoSession { node: node_s() })?;
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        let answer = async {
            outbox
                .send(Ok(msg))
                .await
                .map_err(|_| CallError::SessionEnded { node: node_s() })?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(_)) => Err(CallError::NoAnswer { node: node_s() }),
                Err(_) => Err(CallError::Timeout {
                    node: node_s(),
                    timeout,
                }),
            }
        }
        .await;
        self.lock().remove(&id);
        answer
    }
}

/// Live sessions and the commands in flight on them.
#[derive(Default)]
pub struct Sessions {
    pub registry: Registry,
    next_command: AtomicU64,
    ops: Waiters<OpResult>,
    host_reports: Waiters<HostConfigReport>,
}

impl Sessions {
    /// A fresh command id (ids start at 1: 0 means "no command").
    pub fn command_id(&self) -> u64 {
        self.next_command.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// An agent's answer to an operation.
    pub fn answer_op(&self, result: OpResult) {
        self.ops.answer(result.command_id, result);
    }

    /// An agent's host-configuration report; true if a caller waited for it.
    pub fn answer_host_report(&self, report: HostConfigReport) -> bool {
        report.command_id != 0 && self.host_reports.answer(report.command_id, report)
    }

    /// Sends host-configuration command `msg` (id `id`) and waits for the report.
    pub async fn ask_host_config(
        &self,
        node: &str,
        id: u64,
        msg: CoordinatorMessage,
        timeout: Duration,
    ) -> Result<HostConfigReport, CallError> {
        self.host_reports
            .ask(self.registry.outbox(node), node, id, msg, timeout)
            .await
    }

    /// Commands waiting for an answer now (operations, host reports).
    pub fn in_flight(&self) -> usize {
        self.ops.len() + self.host_reports.len()
    }
}

/// A session message carrying `cmd` as command `id`.
pub fn command_message(id: u64, kind: command::Kind) -> CoordinatorMessage {
    CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Command(Command {
            id,
            kind: Some(kind),
        })),
    }
}

#[tonic::async_trait]
impl AgentCalls for Sessions {
    async fn call_json(&self, node: &str, req: OpRequest) -> Result<String, CallError> {
        let (op, timeout) = (req.name(), req.timeout());
        let request_json = serde_json::to_string(&req).map_err(|e| CallError::Encode {
            node: node.to_string(),
            op,
            reason: e.to_string(),
        })?;
        let id = self.command_id();
        let msg = command_message(id, command::Kind::Op(AgentOp { request_json }));
        let result = self
            .ops
            .ask(self.registry.outbox(node), node, id, msg, timeout)
            .await?;
        if result.ok {
            Ok(result.result_json)
        } else {
            Err(CallError::Refused {
                node: node.to_string(),
                op,
                message: result.error,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> CoordinatorMessage {
        CoordinatorMessage { msg: None }
    }

    #[tokio::test]
    async fn a_waiter_is_answered_once_and_always_removed() {
        let waiters = Waiters::<u32>::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let ask = waiters.ask(Some(tx.clone()), "n1", 7, hello(), Duration::from_secs(5));
        let answer = async {
            let _sent = rx.recv().await.expect("the command went out");
            assert!(waiters.answer(7, 42));
            assert!(!waiters.answer(7, 43), "answered twice");
        };
        let (got, ()) = tokio::join!(ask, answer);
        assert_eq!(got, Ok(42));
        assert!(waiters.is_empty());

        // No answer: a timeout naming the node, and nothing left behind.
        let err = waiters
            .ask(Some(tx), "n1", 8, hello(), Duration::from_millis(20))
            .await
            .expect_err("nobody answers");
        assert!(matches!(err, CallError::Timeout { .. }), "{err}");
        assert!(waiters.is_empty());

        // No session at all.
        let err = waiters
            .ask(None, "n2", 9, hello(), Duration::from_secs(1))
            .await
            .expect_err("no outbox");
        assert_eq!(err.to_string(), "n2 has no session (agent down)");
    }

    #[tokio::test]
    async fn a_closed_session_is_not_a_timeout() {
        let waiters = Waiters::<u32>::default();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        drop(rx);
        let err = waiters
            .ask(Some(tx), "n1", 1, hello(), Duration::from_secs(5))
            .await
            .expect_err("session gone");
        assert_eq!(err, CallError::SessionEnded { node: "n1".into() });
    }
}
