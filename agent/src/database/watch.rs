//! Database servers' container events, reported the moment the engine sees
//! them: a server that crashes is restarted by Swarm within seconds, so the
//! coordinator's health round (every `checks_interval`) can miss the whole
//! failure. The agent follows its engine's event stream for the containers
//! apiary made for the database (label [`DATABASE_LABEL`] on the container)
//! and sends each `die`, `oom` and `start` over its session at once.
//!
//! Only what happens while a session is up is reported: the stream starts
//! with the session (events during a reconnect are not replayed; the next
//! health round still sees the server's state).

use std::path::PathBuf;
use std::time::Duration;

use apiary_proto::{AgentMessage, DatabaseContainerEvent, agent_message};
use bollard::Docker;
use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::EventsOptionsBuilder;
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::DATABASE_LABEL;

/// The label Swarm puts on a task's container: its service's name.
const SERVICE_NAME_LABEL: &str = "com.docker.swarm.service.name";

/// How long to wait before following the stream again after the engine
/// closed it or did not answer.
const RETRY: Duration = Duration::from_secs(2);

/// The event to report for one engine event, if it is about a database
/// server's container (pure: the engine's message in, the report out).
pub fn database_event(msg: &EventMessage) -> Option<DatabaseContainerEvent> {
    if msg.typ != Some(EventMessageTypeEnum::CONTAINER) {
        return None;
    }
    let action = msg.action.as_deref()?;
    // `die`, `oom`, `start`; the engine may add details after a colon
    // (`health_status: unhealthy`), which are not reported.
    if !matches!(action, "die" | "oom" | "start") {
        return None;
    }
    let attributes = msg.actor.as_ref()?.attributes.as_ref()?;
    attributes.get(DATABASE_LABEL)?;
    let service = attributes.get(SERVICE_NAME_LABEL)?.clone();
    let exit_code = attributes
        .get("exitCode")
        .and_then(|c| c.parse().ok())
        .unwrap_or_default();
    let at_unix_ms = msg
        .time_nano
        .map(|ns| (ns / 1_000_000).max(0) as u64)
        .or_else(|| msg.time.map(|s| (s.max(0) as u64).saturating_mul(1000)))
        .unwrap_or_default();
    Some(DatabaseContainerEvent {
        service,
        action: action.to_string(),
        exit_code,
        at_unix_ms,
    })
}

/// Follows the engine's events and sends the database's on `tx` until the
/// session (the receiver) is gone; an engine that is down or restarts is
/// connected to again.
pub async fn watch(host: String, socket: PathBuf, tx: mpsc::Sender<AgentMessage>) {
    while !tx.is_closed() {
        match crate::swarm::SwarmClient::connect(&host, &socket).await {
            Ok(engine) => follow(engine.docker(), &tx).await,
            Err(e) => debug!(error = %e, "no engine to follow yet"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One event stream, until it ends or fails.
async fn follow(docker: &Docker, tx: &mpsc::Sender<AgentMessage>) {
    let filters = std::collections::HashMap::from([
        ("type", vec!["container"]),
        ("event", vec!["die", "oom", "start"]),
        ("label", vec![DATABASE_LABEL]),
    ]);
    let mut events = docker.events(Some(EventsOptionsBuilder::new().filters(&filters).build()));
    while let Some(next) = events.next().await {
        match next {
            Ok(msg) => {
                let Some(event) = database_event(&msg) else {
                    continue;
                };
                debug!(service = %event.service, action = %event.action, "database container event");
                let report = AgentMessage {
                    msg: Some(agent_message::Msg::DatabaseEvent(event)),
                };
                if tx.send(report).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "the engine's event stream failed; following it again");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::EventActor;

    use super::*;

    fn msg(action: &str, labels: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("c0ffee".into()),
                attributes: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<HashMap<_, _>>(),
                ),
            }),
            time_nano: Some(1_700_000_000_123_456_789),
            ..Default::default()
        }
    }

    #[test]
    fn a_database_servers_die_oom_and_start_are_reported_and_nothing_else() {
        let db = [
            (DATABASE_LABEL, "etcd"),
            (SERVICE_NAME_LABEL, "etcd-2"),
            ("exitCode", "137"),
        ];
        let e = database_event(&msg("die", &db)).expect("die");
        assert_eq!(
            (
                e.service.as_str(),
                e.action.as_str(),
                e.exit_code,
                e.at_unix_ms
            ),
            ("etcd-2", "die", 137, 1_700_000_000_123)
        );
        assert_eq!(database_event(&msg("oom", &db)).expect("oom").action, "oom");
        assert_eq!(
            database_event(&msg("start", &db)).expect("start").exit_code,
            137
        );
        // Not a database container, not a reported action, not a container.
        assert!(database_event(&msg("die", &[(SERVICE_NAME_LABEL, "web")])).is_none());
        assert!(database_event(&msg("exec_start: sh", &db)).is_none());
        assert!(database_event(&msg("health_status: unhealthy", &db)).is_none());
        let mut network = msg("die", &db);
        network.typ = Some(EventMessageTypeEnum::NETWORK);
        assert!(database_event(&network).is_none());
        // A database label without a Swarm service (a stray container).
        assert!(database_event(&msg("die", &[(DATABASE_LABEL, "etcd")])).is_none());
    }
}
