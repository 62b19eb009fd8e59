//! What an independent, hostile client tried against `coordinator serve`,
//! and what must hold: bounded memory and time for callers without a
//! certificate, host-reported text that cannot drive the operator's
//! terminal, and identities a join token cannot take over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_certs::{
    AdminConf, COORDINATOR_SERVER_NAME, Identity, JoinToken, enrollment_client_config,
    mtls_client_config, new_key_and_csr,
};
use apiary_proto::agent_api_client::AgentApiClient;
use apiary_proto::enrollment_client::EnrollmentClient;
use apiary_proto::{AgentMessage, EnrollRequest, Facts, Hello, RenewRequest, agent_message, dial};
use apiary_tests::{Coordinator, eventually, stderr};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Enrolls `name` with `token` as an agent would; the identity, or the refusal.
async fn enroll(endpoint: &str, token: &str, name: &str) -> Result<Identity, tonic::Status> {
    let parsed: JoinToken = token.parse().expect("a join token");
    let tls = enrollment_client_config(parsed.ca_digest).expect("tls");
    let (key, csr) = new_key_and_csr(name).expect("csr");
    let channel = dial::channel(endpoint, COORDINATOR_SERVER_NAME, tls).expect("channel");
    let resp = EnrollmentClient::new(channel)
        .enroll(EnrollRequest {
            token: token.to_string(),
            node_name: name.to_string(),
            csr_der: csr,
        })
        .await?
        .into_inner();
    Ok(Identity {
        key_pem: key.serialize_pem(),
        cert_der: resp.cert_der,
        ca_der: resp.ca_der,
    })
}

fn agent_client(endpoint: &str, id: &Identity) -> AgentApiClient<tonic::transport::Channel> {
    let tls = mtls_client_config(&id.ca_der, &id.cert_der, &id.key_pem).expect("tls");
    AgentApiClient::new(dial::channel(endpoint, COORDINATOR_SERVER_NAME, tls).expect("channel"))
}

/// Whether the coordinator lets `id` through the TLS handshake: any answer
/// from the service, refusal or not, means it did; a transport failure
/// means the handshake refused the certificate (with TLS 1.3 the client
/// learns it only when it uses the connection: a broken pipe).
async fn accepted(endpoint: &str, id: &Identity) -> Result<(), String> {
    let (_, csr) = new_key_and_csr("probe").expect("csr");
    match agent_client(endpoint, id)
        .renew(RenewRequest { csr_der: csr })
        .await
    {
        Ok(_) => Ok(()),
        // The connection failed (unavailable, a broken pipe, closed under
        // the call): the status comes from the transport, not the service.
        Err(s)
            if s.code() == tonic::Code::Unavailable
                || std::error::Error::source(&s)
                    .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some()) =>
        {
            Err(s.to_string())
        }
        Err(_) => Ok(()),
    }
}

#[test]
fn a_join_token_cannot_take_over_a_live_name_and_old_certificates_stay_revoked() {
    let coord = Coordinator::start("");
    let (endpoint, token) = (coord.endpoint(), coord.token());
    let rt = runtime();
    rt.block_on(async {
        let first = enroll(&endpoint, &token, "target").await.expect("enrolls");
        // A renewal: the certificate before it stays valid until it runs out.
        let (key, csr) = new_key_and_csr("target").expect("csr");
        let renewed = agent_client(&endpoint, &first)
            .renew(RenewRequest { csr_der: csr })
            .await
            .expect("renews")
            .into_inner();
        let second = Identity {
            key_pem: key.serialize_pem(),
            cert_der: renewed.cert_der,
            ca_der: first.ca_der.clone(),
        };
        assert!(accepted(&endpoint, &first).await.is_ok());
        // The join token cannot take the name over: refused, naming the node
        // and what to do.
        let refusal = enroll(&endpoint, &token, "target")
            .await
            .expect_err("a live name");
        assert_eq!(refusal.code(), tonic::Code::AlreadyExists);
        let message = refusal.message();
        assert!(
            message.contains("node target already has a live identity"),
            "{message}"
        );
        assert!(message.contains("ctl nodes remove target"), "{message}");
        // The operator replaces the node: then the name enrolls again, and
        // neither earlier certificate comes back.
        let out = coord.ctl(&["nodes", "remove", "target"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let third = enroll(&endpoint, &token, "target")
            .await
            .expect("enrolls after removal");
        assert!(accepted(&endpoint, &third).await.is_ok());
        // Both certificates the node had before (the renewed one and the
        // one from before the renewal) are refused at the handshake.
        for (what, old) in [("before the renewal", &first), ("renewed", &second)] {
            assert!(
                accepted(&endpoint, old).await.is_err(),
                "the certificate {what} still works"
            );
        }
    });
}

#[test]
fn facts_that_would_drive_a_terminal_never_reach_ctl() {
    let coord = Coordinator::start("");
    let (endpoint, token) = (coord.endpoint(), coord.token());
    let rt = runtime();
    let (tx, rx) = mpsc::channel(4);
    let session = rt.block_on(async {
        let id = enroll(&endpoint, &token, "evil").await.expect("enrolls");
        tx.send(AgentMessage {
            msg: Some(agent_message::Msg::Hello(Hello {
                agent_version: "1.0\x1b]0;owned\x07".into(),
                facts: Some(Facts {
                    hostname: "evil\x1b[2J".into(),
                    kernel_version: "6.1\r\nfake-node  ready  198.18.0.66".into(),
                    private_ip: "10.231.0.66\x07".into(),
                    public_ip: "198.18.0.66".into(),
                    docker_version: "\x1b[31m20.10".into(),
                    ..Default::default()
                }),
                upgrade_failure: "rolled\x1b[2J back\r\nfake-node  ready".into(),
            })),
        })
        .await
        .expect("queued");
        agent_client(&endpoint, &id)
            .session(ReceiverStream::new(rx))
            .await
            .expect("a session")
            .into_inner()
    });
    eventually("evil listed", Duration::from_secs(10), || {
        coord.node("evil")
    });
    let text = String::from_utf8_lossy(&coord.ctl(&["status"]).stdout).to_string();
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    assert!(
        !text.lines().any(|l| l.starts_with("fake-node")),
        "a forged line from the upgrade failure:\n{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("fake-node")),
        "a forged row:\n{text}"
    );
    let node = coord.node("evil").expect("listed");
    // Dropped at the coordinator: the JSON says exactly what it kept.
    assert_eq!(node["kernel"], "", "{node}");
    assert_eq!(node["hostname"], "", "{node}");
    assert_eq!(node["docker_version"], "", "{node}");
    assert_eq!(node["private_ip"], "", "{node}");
    assert_eq!(
        node["public_ip"], "198.18.0.66",
        "well-formed facts are kept: {node}"
    );
    drop(session);
    drop(tx);
}

/// The coordinator's resident memory, from /proc.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// An HTTP/2 connection over TLS with no client certificate, as an
/// unauthenticated caller has.
/// `None` when the coordinator dropped it (past the per-source cap).
async fn anonymous_h2(
    endpoint: &str,
    token: &str,
) -> Option<(
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
)> {
    let parsed: JoinToken = token.parse().expect("a join token");
    let tls = Arc::new(enrollment_client_config(parsed.ca_digest).expect("tls"));
    let tcp = tokio::net::TcpStream::connect(endpoint).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from(COORDINATOR_SERVER_NAME).expect("name");
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .ok()?;
    let (send, conn) = h2::client::handshake(stream).await.ok()?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Some((send, driver))
}

/// One Enroll stream that announces a 4 MiB message, sends 1 KiB of it and
/// stalls; resolves when the server answers or ends the stream.
async fn stalled_enroll(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
) -> Option<h2::client::ResponseFuture> {
    let req = http::Request::post(format!(
        "https://{COORDINATOR_SERVER_NAME}/apiary.v1.Enrollment/Enroll"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .expect("request");
    let mut ready = send.clone().ready().await.ok()?;
    let (response, mut body) = ready.send_request(req, false).ok()?;
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(4u32 * 1024 * 1024 - 1024).to_be_bytes());
    frame.extend(std::iter::repeat_n(b'x', 1024));
    body.send_data(bytes::Bytes::from(frame), false).ok()?;
    // Keep the send half open: the stream stays stalled from our side.
    std::mem::forget(body);
    Some(response)
}

#[test]
fn stalled_unauthenticated_streams_hold_little_and_are_closed_soon() {
    let coord = Coordinator::start("");
    let (endpoint, token) = (coord.endpoint(), coord.token());
    let pid = coord.proc.as_ref().expect("running").pid();
    let rt = runtime();
    rt.block_on(async {
        let before = rss_kib(pid);
        // 48 stalled streams over 4 connections.
        let mut responses = Vec::new();
        let mut drivers = Vec::new();
        for _ in 0..4 {
            let (mut send, driver) = anonymous_h2(&endpoint, &token)
                .await
                .expect("under the cap");
            drivers.push(driver);
            for _ in 0..12 {
                if let Some(r) = stalled_enroll(&mut send).await {
                    responses.push(r);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let grown = rss_kib(pid).saturating_sub(before);
        // Bound: 16 KiB per message at most, plus connection buffers: far
        // under the ~195 MiB 48 such streams once held.
        assert!(
            grown < 24 * 1024,
            "the coordinator grew by {grown} KiB for 48 stalled streams"
        );
        // Each stream is refused (message too large) or the connection is
        // closed within the unauthenticated lifetime (15 s).
        let start = Instant::now();
        assert_eq!(responses.len(), 48);
        for r in responses {
            // Answered (the message is over the limit) or reset with its
            // connection: either way not held.
            let answered = tokio::time::timeout(Duration::from_secs(20), r).await;
            assert!(
                answered.is_ok(),
                "a stalled stream was still open after 20 s"
            );
        }
        for d in drivers {
            tokio::time::timeout(Duration::from_secs(20), d)
                .await
                .expect("every unauthenticated connection is closed within its lifetime")
                .expect("driver");
        }
        assert!(start.elapsed() < Duration::from_secs(20));
    });
}

#[test]
fn ctl_is_answered_at_once_while_unauthenticated_callers_hold_connections() {
    let coord = Coordinator::start("");
    let (endpoint, token) = (coord.endpoint(), coord.token());
    let conf = AdminConf::load(&coord.admin_conf()).expect("admin.conf");
    let rt = runtime();
    rt.block_on(async {
        // 50 connections without a certificate that stall an Enroll stream
        // each (past the per-source cap the coordinator drops them), and 450
        // more that never even finish their TLS handshake.
        let mut held = Vec::new();
        for _ in 0..50 {
            if let Some((mut send, driver)) = anonymous_h2(&endpoint, &token).await {
                let stream = stalled_enroll(&mut send).await;
                held.push((send, driver, stream));
            }
        }
        let mut silent = Vec::new();
        for _ in 0..450 {
            if let Ok(tcp) = tokio::net::TcpStream::connect(&endpoint).await {
                silent.push(tcp);
            }
        }
        let mut ctl = apiary_ctl::Ctl::new(&conf).expect("ctl");
        ctl.status()
            .await
            .expect("the first call, with its handshake");
        for _ in 0..10 {
            let start = Instant::now();
            let status = ctl.status().await.expect("status");
            let took = start.elapsed();
            assert!(took < Duration::from_millis(50), "ctl status took {took:?}");
            assert_eq!(status.cluster, "test");
        }
        // `ctl events`: an event reaches a watcher at once too.
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let mut watcher = apiary_ctl::Ctl::new(&conf).expect("ctl");
        let watching = tokio::spawn(async move {
            let _ = watcher
                .events(|e| {
                    let _ = seen_tx.send((e.kind.clone(), Instant::now()));
                })
                .await;
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let asked = Instant::now();
        ctl.join_token(true).await.expect("rotate: an event");
        let (kind, at) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("an event within 5 s")
            .expect("the watcher runs");
        assert_eq!(kind, "token_rotated");
        let took = at.duration_since(asked);
        assert!(took < Duration::from_millis(50), "the event took {took:?}");
        watching.abort();
        drop((held, silent));
    });
}
