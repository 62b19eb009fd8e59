//! The probing half: one cell per peer and port.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

use super::{Cell, Check, Outcome, Peer, PortSpec, Proto, Target, challenge, is_echo};

/// How many times a UDP challenge is sent within the timeout: one lost
/// datagram must not read as a firewall.
const UDP_ATTEMPTS: u32 = 3;

/// Probes `peer` on one port from this host (named `src` in the cell and in
/// the challenge). Never fails: every way it can go wrong is an [`Outcome`].
pub async fn probe(src: &str, peer: &Peer, port: PortSpec, timeout: Duration) -> Cell {
    let addr = SocketAddr::from((peer.ip, port.port));
    let (outcome, rtt, detail) = match port.proto {
        Proto::Tcp => probe_tcp(src, addr, timeout).await,
        Proto::Udp => probe_udp(src, addr, timeout).await,
        Proto::Esp => super::esp::probe(src, peer.ip, timeout).await,
        Proto::Overlay => (
            Outcome::Error(
                "the overlay is probed from probe containers (swarm::overlay_probe)".into(),
            ),
            None,
            None,
        ),
    };
    Cell {
        src: src.to_string(),
        dst: peer.name.clone(),
        addr: peer.ip,
        port: port.port,
        proto: port.proto,
        check: Check::Direct,
        outcome,
        rtt,
        detail,
    }
}

/// Probes every target's ports, at most `concurrency` at a time (each probe
/// holds one socket until its answer or timeout). Cells come back sorted by
/// destination, port and protocol.
pub async fn probe_all(
    src: &str,
    targets: &[Target],
    timeout: Duration,
    concurrency: usize,
) -> Vec<Cell> {
    // Futures made up front, not in a stream closure over borrowed items:
    // such closures make the whole future non-`Send` (rustc's higher-ranked
    // lifetime limitation), and the agent runs this in a spawned task.
    let probes: Vec<_> = targets
        .iter()
        .flat_map(|t| {
            t.ports
                .iter()
                .map(move |p| probe(src, &t.peer, *p, timeout))
        })
        .collect();
    let mut cells: Vec<Cell> = futures::stream::iter(probes)
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    cells.sort_by(|a, b| (&a.dst, a.port, a.proto).cmp(&(&b.dst, b.port, b.proto)));
    cells
}

pub(super) type Probed = (Outcome, Option<Duration>, Option<String>);

async fn probe_tcp(src: &str, addr: SocketAddr, timeout: Duration) -> Probed {
    let start = Instant::now();
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return (Outcome::Dropped, None, None),
        Ok(Err(e)) => return (classify(&e), None, None),
        Ok(Ok(s)) => s,
    };
    // The handshake is the proof that the path is open; the echo only says who answered.
    let rtt = start.elapsed();
    let nonce = rand::random::<u64>();
    let echo_wait = timeout.saturating_sub(rtt).max(timeout / 2);
    let echoed = tokio::time::timeout(echo_wait, tcp_challenge(stream, src, nonce))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false);
    let detail = (!echoed).then(|| {
        "connected, but no apiary echo: another program holds the port (Swarm already running?)"
            .to_string()
    });
    (Outcome::Open, Some(rtt), detail)
}

async fn tcp_challenge(mut stream: TcpStream, src: &str, nonce: u64) -> io::Result<bool> {
    stream
        .write_all(format!("{}\n", challenge(src, nonce)).as_bytes())
        .await?;
    let mut line = Vec::new();
    BufReader::new((&mut stream).take(256))
        .read_until(b'\n', &mut line)
        .await?;
    Ok(is_echo(&line, src, nonce))
}

async fn probe_udp(src: &str, addr: SocketAddr, timeout: Duration) -> Probed {
    let sock = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await {
        Ok(s) => s,
        Err(e) => return (Outcome::Error(format!("udp socket: {e}")), None, None),
    };
    // Connected, so the kernel hands us ICMP port unreachable as ECONNREFUSED:
    // that is what tells "closed" from "dropped".
    if let Err(e) = sock.connect(addr).await {
        return (classify(&e), None, None);
    }
    let base = rand::random::<u64>();
    let start = Instant::now();
    let deadline = start + timeout;
    let mut sent_at = Vec::with_capacity(UDP_ATTEMPTS as usize);
    let mut buf = [0u8; 512];
    for attempt in 0..UDP_ATTEMPTS {
        // Each attempt has its own nonce, so the round trip is that of the
        // datagram actually answered, not inflated by a lost first one.
        let nonce = base.wrapping_add(u64::from(attempt));
        sent_at.push(Instant::now());
        if let Err(e) = sock.send(challenge(src, nonce).as_bytes()).await {
            return (classify(&e), None, None);
        }
        let until = if attempt + 1 == UDP_ATTEMPTS {
            deadline
        } else {
            start + timeout * (attempt + 1) / UDP_ATTEMPTS
        };
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, sock.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return (classify(&e), None, None),
                Ok(Ok(n)) => {
                    let answered = (0..=attempt)
                        .find(|a| is_echo(&buf[..n], src, base.wrapping_add(u64::from(*a))));
                    if let Some(a) = answered {
                        return (Outcome::Open, Some(sent_at[a as usize].elapsed()), None);
                    }
                    // Not our echo (a stray datagram): keep waiting.
                }
            }
        }
    }
    (Outcome::Dropped, None, None)
}

pub(super) fn classify(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Outcome::Closed,
        io::ErrorKind::TimedOut => Outcome::Dropped,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Outcome::Unreachable,
        _ => Outcome::Error(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reach::{PortState, ReachError, Responder};

    // Each test owns a loopback address, so the fixed cluster ports can be
    // used without colliding with each other or with anything on 127.0.0.1.
    fn lo(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 0, last)
    }

    fn peer(name: &str, ip: Ipv4Addr) -> Peer {
        Peer {
            name: name.into(),
            ip,
        }
    }

    const T: Duration = Duration::from_millis(600);

    #[tokio::test]
    async fn responder_answers_tcp_and_udp() {
        let ip = lo(61);
        let ports = crate::reach::cluster_ports(true);
        let r = Responder::start(ip, &ports).expect("start");
        assert!(
            r.ports()
                .iter()
                .all(|p| matches!(p.state, PortState::Listening(_))),
            "{:?}",
            r.ports()
        );
        let target = Target {
            peer: peer("bee", ip),
            ports: ports.clone(),
        };
        let cells = probe_all("me", &[target], T, 8).await;
        assert_eq!(cells.len(), 4);
        for c in &cells {
            assert_eq!(c.outcome, Outcome::Open, "{c}");
            assert_eq!(c.detail, None, "echoed: {c}");
            assert!(c.rtt.is_some_and(|r| r < T), "{c}");
            assert_eq!((c.src.as_str(), c.dst.as_str()), ("me", "bee"));
        }
        assert_eq!(
            cells.iter().map(|c| c.port).collect::<Vec<_>>(),
            vec![2377, 4789, 7946, 7946]
        );
        r.stop().await;
        // stop released the ports: they can be bound again at once
        let again = Responder::start(ip, &ports).expect("again");
        assert!(
            again
                .ports()
                .iter()
                .all(|p| matches!(p.state, PortState::Listening(_)))
        );
    }

    #[tokio::test]
    async fn esp_is_echoed_by_a_responder_and_silence_reads_as_dropped() {
        let ip = lo(63);
        let r = Responder::start(ip, &[PortSpec::esp()]).expect("start");
        assert!(
            matches!(r.ports()[0].state, PortState::Listening(_)),
            "a raw ESP socket (needs root, as the agent runs): {:?}",
            r.ports()
        );
        let open = probe("me", &peer("bee", ip), PortSpec::esp(), T).await;
        assert_eq!(open.outcome, Outcome::Open, "{open}");
        assert_eq!((open.port, open.proto), (0, Proto::Esp));
        assert_eq!(open.to_string().split(':').next(), Some("me → bee esp"));
        // No responder there: the challenge is seen by nobody who answers.
        let silent = probe("me", &peer("wasp", lo(64)), PortSpec::esp(), T).await;
        assert_eq!(silent.outcome, Outcome::Dropped, "{silent}");
        assert!(
            silent
                .likely_cause()
                .is_some_and(|c| c.contains("IP protocol 50")),
            "{silent:?}"
        );
        r.stop().await;
        let after = probe("me", &peer("bee", ip), PortSpec::esp(), T).await;
        assert_eq!(after.outcome, Outcome::Dropped, "stopped: {after}");
    }

    #[tokio::test]
    async fn open_closed_and_dropped_are_told_apart() {
        let ip = lo(62);
        let r = Responder::start(ip, &[PortSpec::tcp(0), PortSpec::udp(0)]).expect("start");
        let tcp = r.local_addr(PortSpec::tcp(0)).expect("tcp");
        let udp = r.local_addr(PortSpec::udp(0)).expect("udp");
        // A UDP socket that reads and never answers: a silent drop, as a firewall does.
        let sink = std::net::UdpSocket::bind((ip, 0)).expect("sink");
        let sink_port = sink.local_addr().expect("addr").port();
        // A port nothing listens on: bind, note it, close.
        let closed_udp = std::net::UdpSocket::bind((ip, 0))
            .expect("tmp")
            .local_addr()
            .expect("addr")
            .port();
        let closed_tcp = std::net::TcpListener::bind((ip, 0))
            .expect("tmp")
            .local_addr()
            .expect("addr")
            .port();
        let p = peer("bee", ip);
        let t0 = Instant::now();
        let (open_t, open_u, closed_t, closed_u, dropped_u) = tokio::join!(
            probe("me", &p, PortSpec::tcp(tcp.port()), T),
            probe("me", &p, PortSpec::udp(udp.port()), T),
            probe("me", &p, PortSpec::tcp(closed_tcp), T),
            probe("me", &p, PortSpec::udp(closed_udp), T),
            probe("me", &p, PortSpec::udp(sink_port), T),
        );
        assert_eq!(open_t.outcome, Outcome::Open);
        assert_eq!(open_u.outcome, Outcome::Open);
        assert_eq!(closed_t.outcome, Outcome::Closed);
        assert_eq!(closed_u.outcome, Outcome::Closed);
        assert_eq!(dropped_u.outcome, Outcome::Dropped);
        assert!(t0.elapsed() < T * 2, "a drop costs one timeout");
        // the sink saw every attempt: the prober retried before calling it a drop
        sink.set_nonblocking(true).expect("nb");
        let mut n = 0;
        let mut buf = [0u8; 128];
        while sink.recv(&mut buf).is_ok() {
            n += 1;
        }
        assert_eq!(n, UDP_ATTEMPTS);
        assert!(
            dropped_u
                .likely_cause()
                .expect("cause")
                .starts_with("firewall")
        );
        assert!(
            closed_u
                .likely_cause()
                .expect("cause")
                .starts_with("nothing listening")
        );
    }

    #[tokio::test]
    async fn tcp_syn_dropped_reads_as_dropped() {
        // A listener that never accepts, with its accept queue full: Linux
        // then drops further SYNs silently, exactly what a DROP rule does.
        let ip = lo(63);
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.bind(&SocketAddr::from((ip, 0)).into()).expect("bind");
        sock.listen(0).expect("listen");
        let port = sock
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet")
            .port();
        let p = peer("bee", ip);
        // Each completed probe stays queued (never accepted), filling the queue.
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            let c = probe("me", &p, PortSpec::tcp(port), Duration::from_millis(300)).await;
            outcomes.push(c.outcome);
            if outcomes.last() != Some(&Outcome::Open) {
                break;
            }
        }
        assert_eq!(outcomes.first(), Some(&Outcome::Open), "{outcomes:?}");
        assert_eq!(outcomes.last(), Some(&Outcome::Dropped), "{outcomes:?}");
    }

    #[tokio::test]
    async fn something_else_on_the_port_is_open_with_a_note() {
        let ip = lo(64);
        let other = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
        let port = other.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = other.accept().await {
                let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n").await;
            }
        });
        let c = probe("me", &peer("bee", ip), PortSpec::tcp(port), T).await;
        assert_eq!(c.outcome, Outcome::Open);
        assert!(c.detail.expect("note").contains("no apiary echo"));
    }

    #[tokio::test]
    async fn port_in_use_is_reported_not_fatal() {
        let ip = lo(65);
        let holder = std::net::UdpSocket::bind((ip, 7946)).expect("hold 7946/udp");
        let r = Responder::start(ip, &[PortSpec::tcp(7946), PortSpec::udp(7946)]).expect("start");
        assert!(matches!(r.ports()[0].state, PortState::Listening(_)));
        assert_eq!(r.ports()[1].state, PortState::InUse);
        drop(holder);
        // an address that is not ours is a configuration error
        let err = Responder::start(Ipv4Addr::new(10, 231, 0, 250), &[PortSpec::tcp(7946)])
            .expect_err("not local");
        assert!(matches!(err, ReachError::AddressNotLocal { .. }), "{err}");
    }

    #[tokio::test]
    async fn wrong_nonce_or_node_is_not_an_echo() {
        // A responder that answers with someone else's nonce: not proof of a path.
        let ip = lo(66);
        let liar = tokio::net::UdpSocket::bind((ip, 0)).await.expect("bind");
        let port = liar.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let mut buf = [0u8; 128];
            while let Ok((_, from)) = liar.recv_from(&mut buf).await {
                let _ = liar.send_to(b"APIARY-ECHO me 0000000000000001", from).await;
            }
        });
        let c = probe("me", &peer("bee", ip), PortSpec::udp(port), T).await;
        assert_eq!(c.outcome, Outcome::Dropped);
    }
}
