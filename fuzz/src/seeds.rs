//! The seeds that are made, not written: anything holding keys,
//! certificates, protobuf, gRPC framing or a computed SCRAM signature.
//! `apiary-fuzz seeds` writes them into `corpus/<target>/gen-*` (the
//! key material is a throwaway CA's, made for this and nothing else);
//! the text seeds beside them are written by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use apiary_api::hostconfig::HostConfigSpec;
use apiary_api::ops::{self, OpRequest};
use apiary_api::reach::{Cell, Check, Outcome, Peer, Proto, Target as ReachTarget};
use apiary_api::swarm::{ManagerPeer, NodeView, OverlaySpec, SwarmState, SwarmView};
use apiary_certs::{AdminConf, CaDigest, ClusterCa, JoinToken, Role};
use apiary_proto::tunnel::{Frame, Target as TunnelTarget, frame};
use apiary_proto::{
    AgentMessage, AgentOp, ApplyHostConfig, Command, CoordinatorMessage, EnrollRequest, Facts,
    Hello, HostConfigReport, Interface, ItemReport, KernelFeature, OpResult, RenewRequest, Welcome,
    agent_message, command, coordinator_message,
};
use prost::Message;

use crate::targets::database::CLIENT_NONCE;

/// One seed: the target, a file name, its bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Every generated seed.
pub fn all() -> Result<Vec<Seed>, String> {
    let mut out = Vec::new();
    out.extend(certs()?);
    out.extend(tunnel());
    out.extend(session());
    out.extend(rethinkdb());
    Ok(out)
}

fn seed(target: &'static str, name: &str, data: impl Into<Vec<u8>>) -> Seed {
    (target, format!("gen-{name}"), data.into())
}

fn certs() -> Result<Vec<Seed>, String> {
    let e = |e: apiary_certs::CertError| e.to_string();
    let ca = ClusterCa::generate("bees").map_err(e)?;
    let token = JoinToken::generate(ca.digest()).to_string();
    let other = JoinToken::generate(CaDigest::of(b"another cluster")).to_string();
    let (admin, key) = ca
        .issue_with_key("admin", Role::Admin, Duration::from_secs(3650 * 86400))
        .map_err(e)?;
    let conf = AdminConf {
        cluster: "bees".into(),
        endpoint: "10.231.0.1:7443".into(),
        ca: ca.cert_pem().to_string(),
        cert: admin.pem.clone(),
        key,
    };
    let conf = toml::to_string(&conf).map_err(|e| e.to_string())?;
    let (_, csr) = apiary_certs::new_key_and_csr("workerbee-1").map_err(e)?;
    let enroll = |token: &str, name: &str, csr: &[u8]| {
        let mut b = vec![0u8];
        b.extend(
            EnrollRequest {
                token: token.into(),
                node_name: name.into(),
                csr_der: csr.to_vec(),
            }
            .encode_to_vec(),
        );
        b
    };
    let mut renew = vec![1u8];
    renew.extend(
        RenewRequest {
            csr_der: csr.clone(),
        }
        .encode_to_vec(),
    );
    Ok(vec![
        seed("join_token", "token", token.clone()),
        seed("join_token", "token-newline", format!("  {token}\n")),
        seed("join_token", "other-cluster", other),
        seed("admin_conf", "admin.conf", conf),
        seed("csr_sign", "p256.csr", csr.clone()),
        seed("enroll", "ok", enroll("{TOKEN}", "workerbee-1", &csr)),
        seed("enroll", "new-name", enroll("{TOKEN}", "workerbee-9", &csr)),
        seed(
            "enroll",
            "wrong-secret",
            enroll("APIARY-1-{DIGEST}-0123456789abcdef0123", "w2", &csr),
        ),
        seed("enroll", "foreign", enroll(&token, "workerbee-2", &csr)),
        seed("enroll", "bad-name", enroll("{TOKEN}", "Bad_Name", &csr)),
        seed("enroll", "renew", renew),
    ])
}

/// Frames as a stream: a chunking header (two chunk lengths, no
/// trailers), then the frames.
fn frames(kinds: &[frame::Kind], head: &[u8]) -> Vec<u8> {
    let mut out = head.to_vec();
    for k in kinds {
        out.extend_from_slice(&apiary_proto::tunnel_wire::encode(&Frame {
            kind: Some(k.clone()),
        }));
    }
    out
}

fn tunnel() -> Vec<Seed> {
    let target = TunnelTarget {
        node: "workerbee-1".into(),
        host: "127.0.0.1".into(),
        port: 2379,
        ..Default::default()
    };
    let engine = TunnelTarget {
        engine: true,
        session: "4242-18b2c1d0e".into(),
        ..Default::default()
    };
    let admin = TunnelTarget {
        node: "database".into(),
        admin: true,
        ..Default::default()
    };
    let data = |s: &str| frame::Kind::Data(s.as_bytes().to_vec().into());
    let ctl = frames(
        &[
            frame::Kind::Target(target.clone()),
            data("GET / HTTP/1.1\r\n\r\n"),
            data(""),
            frame::Kind::HalfClose(true),
        ],
        &[2, 3, 40],
    );
    let agent = frames(
        &[
            frame::Kind::Attach(42),
            frame::Kind::Opened(true),
            data("hello"),
            frame::Kind::Error("connection reset".into()),
            frame::Kind::Denied("engine access is off".into()),
        ],
        &[0x81, 0, 0],
    );
    let header = |t: &TunnelTarget| {
        apiary_proto::tunnel_wire::target_metadata(t)
            .into_headers()
            .get(apiary_proto::tunnel_wire::TARGET_HEADER)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default()
    };
    vec![
        seed("tunnel_frames", "ctl-stream", ctl.clone()),
        seed("tunnel_frames", "agent-stream", agent.clone()),
        seed("tunnel_relay", "ctl-stream", ctl),
        seed("tunnel_relay", "agent-stream", [agent, vec![0x40]].concat()),
        seed("tunnel_target", "header", header(&target)),
        seed("tunnel_target", "header-admin", header(&admin)),
        seed("tunnel_target", "header-engine", header(&engine)),
    ]
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn requests() -> Vec<(&'static str, OpRequest)> {
    let ip = std::net::Ipv4Addr::new(10, 231, 0, 11);
    vec![
        (
            "start-responder",
            ops::StartResponder { manager: true }.into(),
        ),
        ("swarm-view", ops::ReadSwarm {}.into()),
        (
            "swarm-init",
            ops::SwarmInit {
                advertise_ip: ip,
                default_addr_pool: vec!["10.232.0.0/16".into()],
            }
            .into(),
        ),
        (
            "swarm-join",
            ops::SwarmJoin {
                remote: (ip, 2377).into(),
                token: "SWMTKN-1-abc".into(),
                advertise_ip: ip,
            }
            .into(),
        ),
        (
            "set-coordinator-endpoints",
            ops::SetCoordinatorEndpoints {
                endpoints: serde_json::from_str(r#"["10.0.0.2:7443", "[fd00::2]:7443"]"#)
                    .unwrap_or_default(),
            }
            .into(),
        ),
        (
            "set-labels",
            ops::SetLabels {
                node: "workerbee-1".into(),
                labels: BTreeMap::from([("apiary.db".into(), "etcd-1".into())]),
            }
            .into(),
        ),
        (
            "probe",
            ops::Probe {
                targets: vec![ReachTarget {
                    peer: Peer {
                        name: "workerbee-2".into(),
                        ip,
                    },
                    ports: apiary_api::reach::cluster_ports(true),
                }],
                timeout_ms: 2000,
            }
            .into(),
        ),
        (
            "ensure-overlay",
            ops::EnsureOverlay {
                spec: OverlaySpec::attachable("apiary"),
            }
            .into(),
        ),
        (
            "ensure-service",
            ops::EnsureService {
                spec: Box::new(apiary_api::database::ServiceSpec {
                    name: "etcd-1".into(),
                    kind: apiary_api::database::DatabaseKind::Etcd,
                    image: "lab/etcd:1".into(),
                    node: "queenbee".into(),
                    network: "apiary".into(),
                    command: vec!["etcd".into(), "--name=etcd-1".into()],
                    env: vec!["ETCDCTL_API=3".into()],
                    memory_bytes: 450 << 20,
                    volume: "bees-etcd-1-data".into(),
                    data_dir: "/var/lib/etcd".into(),
                    restart_delay: Duration::from_secs(5),
                    endpoint_mode: Default::default(),
                    peer_tls: None,
                    admin: None,
                }),
            }
            .into(),
        ),
        (
            "database-exec",
            ops::DatabaseExec {
                service: "etcd-1".into(),
                command: vec!["etcdctl".into(), "member".into(), "list".into()],
            }
            .into(),
        ),
    ]
}

fn swarm_view() -> SwarmView {
    SwarmView {
        node_id: "n1".into(),
        state: SwarmState::Active,
        manager: true,
        node_addr: "10.231.0.11".into(),
        cluster_id: Some("c1".into()),
        managers: vec![ManagerPeer {
            node_id: "n1".into(),
            addr: "10.231.0.11:2377".into(),
        }],
        nodes: vec![NodeView {
            id: "n1".into(),
            hostname: "queenbee".into(),
            role: "manager".into(),
            availability: "active".into(),
            status: "ready".into(),
            addr: "10.231.0.11".into(),
            leader: true,
            reachability: Some("reachable".into()),
            labels: BTreeMap::new(),
        }],
        error: None,
    }
}

fn cells() -> Vec<Cell> {
    vec![Cell {
        src: "queenbee".into(),
        dst: "workerbee-1".into(),
        addr: [10, 231, 0, 12].into(),
        port: 7946,
        proto: Proto::Udp,
        check: Check::Direct,
        outcome: Outcome::Open,
        rtt: Some(Duration::from_micros(412)),
        detail: None,
    }]
}

fn facts() -> Facts {
    Facts {
        hostname: "workerbee-1".into(),
        kernel_version: "6.1.0-18-amd64".into(),
        cgroup_version: 1,
        memory_accounting: true,
        interfaces: vec![Interface {
            name: "eth1".into(),
            addresses: vec!["10.231.0.12/24".into(), "fe80::1/64".into()],
        }],
        public_ip: "198.18.0.12".into(),
        private_ip: "10.231.0.12".into(),
        docker_version: "20.10.24+dfsg1".into(),
        kernel_features: vec![KernelFeature {
            name: "ip_vs".into(),
            available: false,
            detail: "modprobe ip_vs failed".into(),
        }],
    }
}

fn session() -> Vec<Seed> {
    let mut out = Vec::new();
    for (name, req) in requests() {
        let text = json(&req);
        out.push(seed("op_request", name, text.clone()));
        let cmd = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Command(Command {
                id: 7,
                kind: Some(command::Kind::Op(AgentOp { request_json: text })),
            })),
        };
        out.push(seed("coordinator_message", name, cmd.encode_to_vec()));
    }
    let spec = HostConfigSpec::new("10.231.0.0/24");
    let spec_json = json(&spec);
    out.push(seed("host_config", "default", spec_json.clone()));
    let apply = CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Command(Command {
            id: 8,
            kind: Some(command::Kind::ApplyHostConfig(ApplyHostConfig {
                spec_json,
                dry_run: true,
                recheck_interval_ms: 60_000,
            })),
        })),
    };
    out.push(seed(
        "coordinator_message",
        "apply-host-config",
        apply.encode_to_vec(),
    ));
    let welcome = CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Welcome(Welcome {
            node_name: "workerbee-1".into(),
            heartbeat_interval_ms: 2000,
            coordinator_endpoints: vec!["10.0.0.2:7443".into(), "kvstore.example:7443".into()],
            ..Default::default()
        })),
    };
    out.push(seed(
        "coordinator_message",
        "welcome",
        welcome.encode_to_vec(),
    ));
    let replies = [
        ("swarm-view", json(&swarm_view())),
        ("cells", json(&cells())),
        ("changed", json(&ops::Changed { changed: true })),
        (
            "exec",
            json(&ops::ExecOutput {
                code: 0,
                output: "ok\n".into(),
            }),
        ),
        ("null", "null".to_string()),
    ];
    for (name, reply) in &replies {
        out.push(seed("op_reply", name, reply.clone()));
        let m = AgentMessage {
            msg: Some(agent_message::Msg::OpResult(OpResult {
                command_id: 7,
                ok: true,
                error: String::new(),
                result_json: reply.clone(),
            })),
        };
        out.push(seed(
            "agent_message",
            &format!("op-result-{name}"),
            m.encode_to_vec(),
        ));
    }
    let hello = AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            agent_version: "0.1.0".into(),
            facts: Some(facts()),
            ..Default::default()
        })),
    };
    out.push(seed("agent_message", "hello", hello.encode_to_vec()));
    let report = AgentMessage {
        msg: Some(agent_message::Msg::HostConfig(HostConfigReport {
            command_id: 8,
            dry_run: false,
            reason: "first".into(),
            items: vec![ItemReport {
                item: "grub".into(),
                outcome: "needs-reboot".into(),
                reason: String::new(),
                diff: "-a\n+b\n".into(),
            }],
            took_us: 1200,
            repaired_drift: vec!["firewall".into()],
        })),
    };
    out.push(seed("agent_message", "host-report", report.encode_to_vec()));
    out
}

/// SCRAM-SHA-256 as RFC 7677 has it, for user `admin` with the empty
/// password (what the agent's health check logs in as).
fn rethinkdb() -> Vec<Seed> {
    use apiary_agent::database::rethinkdb::{b64encode, hi, hmac_sha256};
    let exchange = |iterations: u32, rows: &str| {
        let nonce = format!("{CLIENT_NONCE}serverpart");
        let salt = b"apiary-fuzz-salt";
        let server_first = format!("r={nonce},s={},i={iterations}", b64encode(salt));
        let salted = hi(b"", salt, iterations);
        let auth = format!("n=admin,r={CLIENT_NONCE},{server_first},c=biws,r={nonce}");
        let server_key = hmac_sha256(&salted, b"Server Key");
        let signature = b64encode(&hmac_sha256(&server_key, auth.as_bytes()));
        let mut out = vec![0xff];
        for m in [
            serde_json::json!({"success": true, "min_protocol_version": 0, "max_protocol_version": 0, "server_version": "2.4.4"}),
            serde_json::json!({"success": true, "authentication": server_first}),
            serde_json::json!({"success": true, "authentication": format!("v={signature}")}),
        ] {
            out.extend(json(&m).into_bytes());
            out.push(0);
        }
        let body = format!(r#"{{"t":2,"r":[{rows}],"n":[]}}"#);
        out.extend(1u64.to_le_bytes());
        out.extend((body.len() as u32).to_le_bytes());
        out.extend(body.into_bytes());
        out
    };
    let rows = r#"[{"name":"rethinkdb_1","id":"a"},{"name":"rethinkdb_2","id":"b"}]"#;
    vec![
        seed("rethinkdb", "ok-i1", exchange(1, rows)),
        seed("rethinkdb", "ok-i16", exchange(16, rows)),
        seed("rethinkdb", "ok-i64-empty", exchange(64, "[]")),
        seed(
            "rethinkdb",
            "refused",
            [
                &[0u8][..],
                br#"{"success":false,"error":"Received an unsupported protocol version."}"#,
                &[0],
            ]
            .concat(),
        ),
    ]
}
