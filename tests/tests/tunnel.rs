//! `ctl tunnel` on loopback: an HTTP server behind an agent, fetched through
//! ctl ⇄ coordinator ⇄ agent byte for byte, many connections at once, the
//! refusals (agent certificate, target outside the allow-list, unknown node,
//! no database), the per-admin connection limit, an agent killed under a
//! transfer, and the methods called by a stock gRPC client. The database
//! targets (`database:admin`) are tested in the lab.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use apiary_certs::AdminConf;
use apiary_tests::*;

fn fetch(port: u16, n: usize) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET /{n} HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut all = Vec::with_capacity(n + 128);
    s.read_to_end(&mut all).map_err(|e| e.to_string())?;
    let head_end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header")?
        + 4;
    let body = &all[head_end..];
    if body.len() != n {
        return Err(format!("got {} bytes, expected {n}", body.len()));
    }
    if let Some(i) = body
        .iter()
        .enumerate()
        .position(|(i, b)| *b != body_byte(i))
    {
        return Err(format!("byte {i} differs"));
    }
    Ok(())
}

fn start_tunnel(c: &Coordinator, conf: &std::path::Path, target: &str) -> (Proc, u16) {
    let local = free_port();
    let mut cmd = Command::new(bin("ctl"));
    cmd.arg("--config").arg(conf).args([
        "tunnel",
        target,
        "--local",
        &format!("127.0.0.1:{local}"),
    ]);
    let p = Proc::spawn(cmd, &c.dir.path().join(format!("tunnel-{local}.log")));
    eventually("tunnel listening", Duration::from_secs(15), || {
        p.log_text().contains("forwarding").then_some(())
    });
    (p, local)
}

/// A coordinator (`extra` goes in its config), one ready agent `bee-1`, and
/// an HTTP server behind it reached through `ctl tunnel bee-1:PORT`.
struct Behind {
    c: Coordinator,
    agent: Agent,
    tunnel: Proc,
    /// `bee-1:PORT`
    target: String,
    local: u16,
}

fn server_behind_an_agent(extra: &str) -> Behind {
    let c = Coordinator::start(extra);
    let agent = c.ready_agent("bee-1");
    let target = format!("bee-1:{}", sized_http_server());
    let (tunnel, local) = start_tunnel(&c, &c.admin_conf(), &target);
    Behind {
        c,
        agent,
        tunnel,
        target,
        local,
    }
}

#[test]
fn http_through_the_tunnel_byte_for_byte_and_50_at_once() {
    let Behind { local, .. } = &server_behind_an_agent("");
    let local = *local;

    fetch(local, 1_000_000).expect("1 MB");
    fetch(local, 100_000_000).expect("100 MB");
    let handles: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || fetch(local, 1_000_000)))
        .collect();
    for h in handles {
        h.join().expect("thread").expect("concurrent fetch");
    }
}

#[test]
fn tunnels_are_refused_for_agents_outside_the_allow_list_and_to_unknown_nodes() {
    let c = Coordinator::start("");
    let token = c.token();
    let agent = c.agent("bee-1", Some(&token));
    c.wait_ready("bee-1", Duration::from_secs(15));

    let run = |conf: &std::path::Path, target: &str| {
        Command::new(bin("ctl"))
            .arg("--config")
            .arg(conf)
            .args(["tunnel", target])
            .output()
            .expect("ctl")
    };
    // Outside the agent's allow-list (loopback and the overlay).
    let out = run(&c.admin_conf(), "bee-1:198.18.0.1:80");
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(stderr(&out).contains("allow-list"), "{}", stderr(&out));
    // An agent given its own list (as the coordinator passes `[tunnel]
    // allow` to the hosts it creates) refuses loopback, which bee-1 allows.
    let server = sized_http_server();
    let narrow = Agent::start_with(
        &c.endpoint(),
        Some(&token),
        &c.dir.path().join("agent-bee-2"),
        "bee-2",
        &["--tunnel-allow", "10.232.0.0/16,10.50.0.0/16"],
    );
    c.wait_ready("bee-2", Duration::from_secs(15));
    let out = run(&c.admin_conf(), &format!("bee-2:{server}"));
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("outside this agent's tunnel allow-list (10.232.0.0/16, 10.50.0.0/16"),
        "{}",
        stderr(&out)
    );
    let (_open, local) = start_tunnel(&c, &c.admin_conf(), &format!("bee-1:{server}"));
    fetch(local, 1_000).expect("bee-1's default list allows loopback");
    drop(narrow);
    // Unknown node (nor a database server, nor a Swarm service).
    let out = run(&c.admin_conf(), "nobody:80");
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no node, database server or running Swarm service named \"nobody\""),
        "{}",
        stderr(&out)
    );
    let out = run(&c.admin_conf(), "nobody:10.232.0.2:80");
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("no node named"), "{}", stderr(&out));
    // No database on this cluster.
    let out = run(&c.admin_conf(), "database:admin");
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no database is deployed on this cluster"),
        "{}",
        stderr(&out)
    );
    // An agent certificate may not open tunnels.
    let admin = AdminConf::load(&c.admin_conf()).expect("admin.conf");
    let id = apiary_certs::Identity::load(&agent.state).expect("identity");
    let path = c.dir.path().join("agent-as-admin.conf");
    AdminConf {
        key: id.key_pem.clone(),
        cert: id.cert_pem(),
        ..admin
    }
    .save(&path)
    .expect("save");
    let out = run(&path, "bee-1:80");
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("admin certificates"),
        "{}",
        stderr(&out)
    );
}

/// Sends a GET for a body far larger than will be read and waits for the
/// response header: the connection is then open end to end and stays open
/// (the server blocks once the buffers on the way are full).
/// With `half_close`, the client shuts its sending side once the request is
/// out (as `curl` and `nc -N` do) and only reads from then on.
fn hold(port: u16, half_close: bool) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET /100000000000 HTTP/1.0\r\n\r\n").ok()?;
    if half_close {
        s.shutdown(std::net::Shutdown::Write).ok()?;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    head.starts_with(b"HTTP/1.0 200").then_some(s)
}

#[test]
fn connections_per_admin_are_limited_by_the_cluster_config() {
    let Behind {
        c,
        tunnel,
        target,
        local,
        ..
    } = &server_behind_an_agent("\n[tunnel]\nmax_connections_per_admin = 2\n");
    let (target, local) = (target.as_str(), *local);

    // Two connections held open (ctl's start-up check releases its slot as
    // soon as the coordinator sees it closed, hence `eventually`). The
    // second has half-closed: it still downloads, so it still counts.
    let first = eventually("first connection", Duration::from_secs(15), || {
        hold(local, false)
    });
    let _second = eventually("second connection", Duration::from_secs(15), || {
        hold(local, true)
    });
    // A third is refused: its socket closes with nothing read, and ctl says why.
    let mut third = TcpStream::connect(("127.0.0.1", local)).expect("connect");
    third
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let _ = write!(third, "GET /10 HTTP/1.0\r\n\r\n");
    let mut got = Vec::new();
    let _ = third.read_to_end(&mut got);
    assert!(
        got.is_empty(),
        "the third connection got {} bytes",
        got.len()
    );
    eventually("ctl names the limit", Duration::from_secs(15), || {
        tunnel
            .log_text()
            .contains(
                "2 tunnel connections open, the most allowed ([tunnel] max_connections_per_admin",
            )
            .then_some(())
    });
    // A second `ctl tunnel` by the same admin fails at start with the reason.
    let out = Command::new(bin("ctl"))
        .arg("--config")
        .arg(c.admin_conf())
        .args(["tunnel", target])
        .output()
        .expect("ctl");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("max_connections_per_admin"),
        "{}",
        stderr(&out)
    );
    // Closing one frees its slot.
    drop(first);
    eventually(
        "a connection after one closed",
        Duration::from_secs(15),
        || fetch(local, 1000).ok(),
    );
}

#[test]
fn an_agent_killed_under_a_transfer_fails_only_that_connection() {
    // Bound whole: a `..` pattern on the temporary would drop (and kill)
    // the coordinator and the tunnel at once.
    let mut behind = server_behind_an_agent("");
    let local = behind.local;
    let long = transfer_in_flight(local);

    behind.agent.proc.kill9();
    behind.agent = Agent::start(
        &behind.agent.endpoint.clone(),
        None,
        &behind.agent.state.clone(),
        "bee-1",
    );

    // The transfer in flight fails, and the same `ctl tunnel` carries new
    // connections through the restarted agent's session.
    fails_short(long);
    carries_new_connections(local);
    drop(behind);
}

/// A long transfer, in flight: its header and first megabyte are read.
fn transfer_in_flight(local: u16) -> TcpStream {
    let mut long = eventually("a long transfer", Duration::from_secs(15), || {
        hold(local, false)
    });
    let mut first = vec![0u8; 1 << 20];
    long.read_exact(&mut first).expect("the first megabyte");
    long
}

/// The transfer fails: reset or cut short, never a body that looks whole.
fn fails_short(mut long: TcpStream) {
    let mut rest = Vec::new();
    let outcome = long.read_to_end(&mut rest);
    assert!(
        outcome.is_err() || rest.len() + (1 << 20) < 100_000_000_000,
        "the transfer in flight must fail, not look complete: {outcome:?}"
    );
}

fn carries_new_connections(local: u16) {
    eventually(
        "a new connection after the restart",
        Duration::from_secs(30),
        || fetch(local, 1_000_000).ok(),
    );
    fetch(local, 10_000_000).expect("10 MB after the restart");
}

#[test]
fn a_coordinator_restart_fails_the_transfer_in_flight_and_the_same_agent_and_tunnel_carry_on() {
    let mut behind = server_behind_an_agent("");
    let local = behind.local;
    let long = transfer_in_flight(local);

    // Both legs' connections go down at once; the agent and `ctl tunnel`
    // processes stay up and reconnect on their own.
    behind.c.restart();

    fails_short(long);
    behind.c.wait_ready("bee-1", Duration::from_secs(30));
    carries_new_connections(local);
    assert!(
        behind.agent.proc.try_exit().is_none() && behind.tunnel.try_exit().is_none(),
        "the agent and ctl tunnel kept running through the restart"
    );
    drop(behind);
}

#[test]
fn tunnels_stalled_behind_slow_readers_leave_the_session_and_other_tunnels_flowing() {
    let Behind { c, local, .. } = &server_behind_an_agent("heartbeat_interval = \"1s\"");
    let local = *local;

    // Twelve downloads that read their header and then nothing: every
    // buffer on their way fills (each stream's window, the relay's queue).
    let stalled: Vec<TcpStream> = (0..12)
        .map(|i| {
            eventually(
                &format!("stalled connection {i}"),
                Duration::from_secs(15),
                || hold(local, false),
            )
        })
        .collect();
    // Enough time for them to fill up, seen from the outside: a fresh
    // transfer still goes through at once, byte for byte...
    fetch(local, 10_000_000).expect("10 MB beside twelve stalled transfers");
    // ...and the agent's session keeps its heartbeats (its last-seen time
    // moves on) while they stay stalled.
    let seen = |c: &Coordinator| c.node("bee-1")?["last_seen_unix_ms"].as_u64();
    let before = eventually("last seen", Duration::from_secs(15), || seen(c));
    eventually(
        "a heartbeat after the stall",
        Duration::from_secs(30),
        || (seen(c)? > before).then_some(()),
    );
    assert_eq!(c.node_state("bee-1").as_deref(), Some("ready"));
    drop(stalled);
}

/// The coordinator serves the tunnel methods by hand (no protobuf codec on
/// the relay), so nothing but this test holds them to the gRPC contract: a
/// stock tonic client, with the generated code and codec, opens a connection
/// and gets the server's bytes in order, its verdict first and a half-close
/// last.
#[test]
fn the_tunnel_methods_stay_plain_grpc_to_a_generated_client() {
    use apiary_proto::tunnel::tunnel_client::TunnelClient;
    use apiary_proto::tunnel::{Frame, Target, frame};
    let c = Coordinator::start("");
    let _agent = c.ready_agent("bee-1");
    let server = sized_http_server();
    let conf = AdminConf::load(&c.admin_conf()).expect("admin.conf");
    let id = conf.identity().expect("identity");
    let tls = apiary_certs::mtls_client_config(&id.ca_der, &id.cert_der, &id.key_pem)
        .expect("tls config");
    let n = 3_000_000;
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let (first, body, last) = rt.block_on(async move {
        let channel =
            apiary_proto::dial::channel(&conf.endpoint, apiary_certs::COORDINATOR_SERVER_NAME, tls)
                .expect("channel");
        let request = [
            Frame {
                kind: Some(frame::Kind::Target(Target {
                    node: "bee-1".into(),
                    port: server.into(),
                    ..Default::default()
                })),
            },
            Frame {
                kind: Some(frame::Kind::Data(
                    format!("GET /{n} HTTP/1.0\r\n\r\n").into_bytes().into(),
                )),
            },
        ];
        // The request stream stays open (no half-close) until the answer has
        // ended, as a client that is still reading would.
        let (hold, held) = tokio::sync::oneshot::channel::<()>();
        let outbound = tokio_stream::StreamExt::chain(
            tokio_stream::iter(request),
            futures::stream::once(async move {
                let _ = held.await;
                Frame {
                    kind: Some(frame::Kind::HalfClose(true)),
                }
            }),
        );
        let mut inbound = TunnelClient::new(channel)
            .open(outbound)
            .await
            .expect("open")
            .into_inner();
        let first = inbound.message().await.expect("first frame");
        let mut body = Vec::new();
        let last = loop {
            match inbound.message().await.expect("frame") {
                Some(Frame {
                    kind: Some(frame::Kind::Data(d)),
                }) => body.extend_from_slice(&d),
                other => break other,
            }
        };
        drop(hold);
        (first, body, last)
    });
    assert_eq!(
        first.and_then(|f| f.kind),
        Some(frame::Kind::Opened(true)),
        "the agent's verdict comes first"
    );
    let head_end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP header")
        + 4;
    assert_eq!(body.len() - head_end, n, "every byte of the body");
    assert!(
        body[head_end..]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == body_byte(i)),
        "the body byte for byte"
    );
    assert_eq!(
        last.and_then(|f| f.kind),
        Some(frame::Kind::HalfClose(true)),
        "the server's close arrives as a half-close"
    );
}
