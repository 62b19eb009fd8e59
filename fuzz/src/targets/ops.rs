//! The coordinator–agent session: operation requests (JSON) and their
//! replies, and the protobuf messages that carry them both ways.

use std::net::SocketAddr;

use apiary_api::ops::*;
use apiary_api::reach::Matrix;
use apiary_coordinator::state::ClusterView;
use apiary_proto::{AgentMessage, CoordinatorMessage, agent_message, command, coordinator_message};
use prost::Message;

use super::Target;

const OP_DICT: &[&str] = &[
    "\"op\"",
    "\"start_responder\"",
    "\"stop_responder\"",
    "\"probe\"",
    "\"swarm_view\"",
    "\"swarm_init\"",
    "\"join_tokens\"",
    "\"swarm_join\"",
    "\"set_labels\"",
    "\"ensure_overlay\"",
    "\"ensure_probe\"",
    "\"overlay_probe\"",
    "\"ensure_service\"",
    "\"database_health\"",
    "\"database_exec\"",
    "\"secs\"",
    "\"nanos\"",
    "\"10.231.0.11\"",
    "\"10.231.0.11:2377\"",
];

pub const OP_REQUEST: Target = Target {
    name: "op_request",
    covers: "agent/src/session.rs: serde_json::from_str::<OpRequest> (api/src/ops.rs), OpRequest::name/timeout; agent/src/database/mod.rs: to_docker for ensure_service",
    run: op_request,
    dict: OP_DICT,
    max_len: 32 << 10,
    test_mutations: 3000,
    known: None,
};

fn op_request(data: &[u8]) {
    if let Ok(json) = std::str::from_utf8(data) {
        request_json(json);
    }
}

/// A request the agent accepts encodes back to the same request, and
/// what the agent builds from it (a Docker service spec) builds.
fn request_json(json: &str) {
    let Ok(req) = serde_json::from_str::<OpRequest>(json) else {
        return;
    };
    let _ = (req.name(), req.timeout());
    let again = serde_json::to_string(&req)
        .unwrap_or_else(|e| panic!("an accepted request does not encode: {e}"));
    let back: OpRequest = serde_json::from_str(&again)
        .unwrap_or_else(|e| panic!("a request does not survive encoding: {e}"));
    assert!(back == req, "a request changed through encoding");
    if let OpRequest::EnsureService(op) = &req {
        let _ = apiary_agent::database::to_docker(&op.spec, &[]);
        let _ = op.spec.digest();
    }
}

pub const OP_REPLY: Target = Target {
    name: "op_reply",
    covers: "coordinator/src/sessions/mod.rs: call → api/src/ops.rs: decode_reply::<O> for every operation O; api/src/reach: Matrix::record/failures/render on probe cells",
    run: op_reply,
    dict: &[
        "\"ports\"",
        "\"changed\"",
        "\"left\"",
        "\"removed\"",
        "\"code\"",
        "\"output\"",
        "\"node_id\"",
        "\"state\"",
        "\"manager\"",
        "\"managers\"",
        "\"nodes\"",
        "\"worker\"",
        "\"src\"",
        "\"dst\"",
        "\"outcome\"",
        "\"rtt\"",
        "\"healthy\"",
        "\"members\"",
        "\"Open\"",
        "\"Dropped\"",
        "null",
    ],
    max_len: 32 << 10,
    test_mutations: 3000,
    known: None,
};

fn op_reply(data: &[u8]) {
    if let Ok(json) = std::str::from_utf8(data) {
        replies(json);
    }
}

/// A reply that decodes as `O`'s encodes back to the same reply.
fn reply<O: Operation>(json: &str) -> Option<O::Reply>
where
    O::Reply: PartialEq,
{
    let r = decode_reply::<O>(json).ok()?;
    let again =
        encode_reply::<O>(&r).unwrap_or_else(|e| panic!("an accepted reply does not encode: {e}"));
    let back = decode_reply::<O>(&again)
        .unwrap_or_else(|e| panic!("a reply does not survive encoding: {e}"));
    assert!(back == r, "a reply changed through encoding");
    Some(r)
}

/// `json` read as the reply of every operation, as the coordinator reads
/// each, and the probe cells folded into a matrix.
fn replies(json: &str) {
    reply::<StartResponder>(json);
    reply::<StopResponder>(json);
    reply::<StartEspResponder>(json);
    let probe = reply::<Probe>(json);
    let views = [
        reply::<ReadSwarm>(json),
        reply::<SwarmInit>(json),
        reply::<SwarmJoin>(json),
    ];
    reply::<ReadJoinTokens>(json);
    reply::<SetLabels>(json);
    reply::<SwarmDrain>(json);
    reply::<SwarmLeave>(json);
    reply::<SwarmRemoveNode>(json);
    reply::<EnsureOverlay>(json);
    reply::<EnsureProbe>(json);
    let overlay = reply::<OverlayProbe>(json);
    reply::<EncryptionSupport>(json);
    reply::<EnsureService>(json);
    reply::<RemoveService>(json);
    reply::<DatabaseHealth>(json);
    reply::<DatabaseExec>(json);
    for cells in [probe, overlay].into_iter().flatten() {
        let mut m = Matrix::new();
        for c in cells {
            let _ = (c.likely_cause(), c.to_string(), c.outcome.is_open());
            m.record(c);
        }
        let _ = (m.failures(), m.render(), m.ok());
    }
    let addr: SocketAddr = ([10, 231, 0, 11], 2377).into();
    for v in views.into_iter().flatten() {
        let _ = (v.manager_list(), v.knows_manager(&addr));
    }
}

pub const COORDINATOR_MESSAGE: Target = Target {
    name: "coordinator_message",
    covers: "agent/src/session.rs: CoordinatorMessage (prost decode) → AgentOp.request_json as OpRequest, ApplyHostConfig.spec_json as HostConfigSpec → HostConfig::new (agent/src/host_runner.rs)",
    run: coordinator_message,
    dict: &[
        "\x1a",
        "\x0a",
        "\x12",
        "{\"op\":\"swarm_view\"}",
        "{\"firewall\":{}}",
    ],
    max_len: 32 << 10,
    test_mutations: 3000,
    known: None,
};

/// What an agent reads from its session.
fn coordinator_message(data: &[u8]) {
    let Ok(m) = CoordinatorMessage::decode(data) else {
        return;
    };
    let Some(coordinator_message::Msg::Command(cmd)) = m.msg else {
        return;
    };
    match cmd.kind {
        Some(command::Kind::Op(op)) => request_json(&op.request_json),
        Some(command::Kind::ApplyHostConfig(apply)) => {
            if let Ok(spec) =
                serde_json::from_str::<apiary_agent::hostconfig::HostConfigSpec>(&apply.spec_json)
            {
                let _ = apiary_agent::hostconfig::HostConfig::new(spec);
            }
        }
        None => {}
    }
}

pub const AGENT_MESSAGE: Target = Target {
    name: "agent_message",
    covers: "coordinator/src/api/session.rs: AgentMessage (prost decode) → untrusted.rs: version, check_facts; sessions: the OpResult's reply for every operation; state.rs: ClusterView::record_host_report, config_state",
    run: agent_message,
    dict: &[
        "\x0a",
        "\x12",
        "\x1a",
        "\x22",
        "\x2a",
        "eth0",
        "10.231.0.12/24",
    ],
    max_len: 32 << 10,
    test_mutations: 3000,
    known: None,
};

/// What the coordinator reads from an agent (any host can send anything).
/// Facts held to their shapes are a fixed point: checked again, nothing
/// more is dropped.
fn agent_message(data: &[u8]) {
    let Ok(m) = AgentMessage::decode(data) else {
        return;
    };
    let facts = match m.msg {
        Some(agent_message::Msg::Hello(hello)) => {
            let _ = apiary_coordinator::untrusted::version(&hello.agent_version);
            hello.facts
        }
        Some(agent_message::Msg::Facts(f)) => Some(f),
        Some(agent_message::Msg::OpResult(r)) => {
            replies(&r.result_json);
            None
        }
        Some(agent_message::Msg::HostConfig(report)) => {
            let view = ClusterView::default();
            view.record_host_report("fuzz-node", &report);
            let _ = view.config_state("fuzz-node", true);
            None
        }
        Some(agent_message::Msg::DatabaseEvent(e)) => {
            // Any sequence of stops and starts folds into a record whose
            // counts never go backwards and restarts never pass failures.
            let view = ClusterView::default();
            let mut last = view.server_failures(&e.service);
            for step in 0..3 {
                if let Some(action) = apiary_coordinator::state::ContainerAction::parse(&e.action) {
                    let _ = view.record_server_event(
                        &e.service,
                        action,
                        e.exit_code,
                        e.at_unix_ms.saturating_add(step),
                    );
                }
                let now = view.server_failures(&e.service);
                assert!(now.failures >= last.failures && now.restarts >= last.restarts);
                assert!(now.restarts <= now.failures, "{now:?}");
                last = now;
            }
            None
        }
        Some(agent_message::Msg::Heartbeat(_)) | None => None,
    };
    if let Some(mut facts) = facts {
        let _ = apiary_coordinator::untrusted::check_facts(&mut facts);
        let kept = facts.clone();
        let again = apiary_coordinator::untrusted::check_facts(&mut facts);
        assert!(
            again.is_empty() && facts == kept,
            "facts held to their shape are not a fixed point: {again:?}"
        );
        let _ = apiary_agent::hostconfig::HostFacts::from(&facts);
    }
}
