//! ESP (IP protocol 50) between hosts: what an encrypted overlay needs and
//! what cloud firewalls most often forget (they tend to allow TCP, UDP and
//! ICMP only). There are no ports, so the challenge/echo of [`super`] rides
//! in raw IP packets of protocol 50 shaped like ESP: a security parameter
//! index, a sequence number, then the challenge text.
//!
//! No security association uses [`PROBE_SPI`], so a kernel with IPsec loaded
//! drops these packets after raw sockets have seen their copy; a kernel
//! without ESP support delivers them to raw sockets alone. Either way the
//! probe needs no IPsec state and leaves none.
//!
//! Hand-written on top of socket2 because no crate offers an async raw
//! socket for an arbitrary IP protocol; the packet format is 8 bytes.
//!
//! The raw socket is driven through tokio's `UdpSocket`: `sendto` and
//! `recvfrom` are the same system calls for any datagram-like socket, and
//! the conversion is safe, where registering the descriptor with tokio's
//! `AsyncFd` directly would need `unsafe` (which the workspace denies). The
//! port of the addresses is ignored by raw IPv4 sockets.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::UdpSocket;
use tracing::debug;

use super::{Outcome, challenge, echo_for, is_echo};

/// IANA's protocol number for ESP.
pub const ESP_PROTOCOL: i32 = 50;
/// The SPI our probes carry ("APIY"): no real security association uses it.
pub const PROBE_SPI: u32 = 0x4150_4959;
/// ESP header: SPI and sequence number.
const HEADER: usize = 8;
/// Challenges are sent this many times within the timeout, as for UDP.
const ATTEMPTS: u32 = 3;

/// A non-blocking raw socket for protocol 50, bound to `local` when given
/// (a responder then sees only packets addressed to its private address).
pub(super) fn raw_socket(local: Option<Ipv4Addr>) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(ESP_PROTOCOL)))?;
    s.set_nonblocking(true)?;
    if let Some(ip) = local {
        s.bind(&SockAddr::from(SocketAddrV4::new(ip, 0)))?;
    }
    UdpSocket::from_std(std::net::UdpSocket::from(s))
}

/// One received packet: its source and its ESP payload after the header.
/// Packets that are not ours (another SPI, too short) are `None`.
pub fn parse(packet: &[u8]) -> Option<(Ipv4Addr, &[u8])> {
    // An IPv4 raw socket receives the IP header too.
    let ihl = usize::from(*packet.first()? & 0x0f) * 4;
    if ihl < 20 || packet.len() < ihl + HEADER {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let esp = &packet[ihl..];
    let spi = u32::from_be_bytes([esp[0], esp[1], esp[2], esp[3]]);
    (spi == PROBE_SPI).then_some((src, &esp[HEADER..]))
}

fn packet(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(HEADER + payload.len());
    p.extend_from_slice(&PROBE_SPI.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

async fn recv(fd: &UdpSocket, buf: &mut [u8]) -> io::Result<usize> {
    fd.recv_from(buf).await.map(|(n, _)| n)
}

async fn send_to(fd: &UdpSocket, to: Ipv4Addr, bytes: &[u8]) -> io::Result<()> {
    fd.send_to(bytes, SocketAddr::from((to, 0)))
        .await
        .map(|_| ())
}

/// Answers well-formed challenges addressed to the socket's address, until
/// the task is aborted. The echo is shorter than the challenge and goes
/// back to its source only.
pub(super) async fn serve(fd: UdpSocket) {
    let mut buf = vec![0u8; 2048];
    loop {
        match recv(&fd, &mut buf).await {
            Ok(n) => {
                let Some((from, payload)) = parse(&buf[..n]) else {
                    continue;
                };
                if let Some(echo) = echo_for(payload) {
                    let reply = packet(0, &echo);
                    if let Err(e) = send_to(&fd, from, &reply).await {
                        debug!(%from, error = %e, "esp echo not sent");
                    }
                }
            }
            Err(e) => {
                debug!(error = %e, "esp receive");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Probes `peer` over ESP: open when its responder echoes our challenge,
/// dropped on silence. (A host without a responder also reads as dropped:
/// the kernel answers an unknown protocol with ICMP, but raw sockets do not
/// surface that as an error, and a peer's agent always answers.)
pub(super) async fn probe(src: &str, peer: Ipv4Addr, timeout: Duration) -> super::probe::Probed {
    let fd = match raw_socket(None) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return (
                Outcome::Error(
                    "raw ESP socket refused: the agent needs CAP_NET_RAW to probe ESP".into(),
                ),
                None,
                None,
            );
        }
        Err(e) => return (Outcome::Error(format!("raw ESP socket: {e}")), None, None),
    };
    let base = rand::random::<u64>();
    let start = Instant::now();
    let mut sent_at = Vec::with_capacity(ATTEMPTS as usize);
    let mut buf = vec![0u8; 2048];
    for attempt in 0..ATTEMPTS {
        let nonce = base.wrapping_add(u64::from(attempt));
        sent_at.push(Instant::now());
        if let Err(e) = send_to(
            &fd,
            peer,
            &packet(attempt + 1, challenge(src, nonce).as_bytes()),
        )
        .await
        {
            return (super::probe::classify(&e), None, None);
        }
        let until = start + timeout * (attempt + 1) / ATTEMPTS;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, recv(&fd, &mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return (super::probe::classify(&e), None, None),
                Ok(Ok(n)) => {
                    // Every ESP packet on this host reaches a raw socket:
                    // keep only the echo of our own challenge, from the peer.
                    let Some((from, payload)) = parse(&buf[..n]) else {
                        continue;
                    };
                    if from != peer {
                        continue;
                    }
                    let answered = (0..=attempt)
                        .find(|a| is_echo(payload, src, base.wrapping_add(u64::from(*a))));
                    if let Some(a) = answered {
                        return (Outcome::Open, Some(sent_at[a as usize].elapsed()), None);
                    }
                }
            }
        }
    }
    (Outcome::Dropped, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_probe_packets_are_parsed() {
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 50, 0, 0, 10, 231, 0, 11, 10, 231, 0, 12,
        ];
        ip.extend(packet(7, b"hello"));
        assert_eq!(
            parse(&ip),
            Some((Ipv4Addr::new(10, 231, 0, 11), &b"hello"[..]))
        );
        // another SPI: a real security association's traffic, not ours
        let mut other = ip.clone();
        other[20] = 0;
        assert_eq!(parse(&other), None);
        // truncated, or a header length that is not IPv4's
        assert_eq!(parse(&ip[..25]), None);
        let mut bad = ip.clone();
        bad[0] = 0x44;
        assert_eq!(parse(&bad), None);
        assert_eq!(parse(&[]), None);
    }
}
