//! Reachability between cluster hosts, checked before Swarm takes its ports.
//!
//! Swarm needs 2377/tcp (managers), 7946/tcp+udp (gossip) and 4789/udp
//! (VXLAN) open between the private addresses of every pair of hosts. When
//! one of them is blocked, Docker says nothing: the node joins and the
//! overlay silently carries no traffic. So each agent first listens on those
//! ports itself ([`Responder`]) and probes every peer ([`probe`],
//! [`probe_all`]); the coordinator gathers the cells into a [`Matrix`] whose
//! [`Matrix::failures`] name the source, destination, port, protocol and the
//! likely cause.
//!
//! ## Model
//!
//! - **TCP**: a completed handshake proves the path; the responder then
//!   echoes a challenge line so we also know it was an apiary responder (a
//!   port held by something else is reported as open, with a note).
//! - **UDP** has no handshake, so a datagram that gets no answer could be a
//!   closed port or a silent drop. The prober sends `APIARY-PROBE <node>
//!   <nonce>` on a *connected* socket and the responder answers `APIARY-ECHO
//!   <node> <nonce>`: an echo means open, an ICMP port unreachable surfaces as
//!   `ECONNREFUSED` (closed: the host is there, nothing listens), and silence
//!   until the deadline means dropped (a firewall, host or cloud).
//! - The echo is never larger than the challenge and goes only to a
//!   well-formed challenge, so a responder cannot be used to amplify traffic.
//! - **Growth**: up to [`Coverage::FULL_UP_TO`] hosts every host probes every
//!   other; beyond, every host probes all managers plus [`Coverage::SAMPLE_K`]
//!   random peers per round ([`targets`]), DESIGN.md "Growth past one machine".
//!
//! ## Limitations
//!
//! - Probes run before Swarm: once Swarm holds 7946/udp and 4789/udp its own
//!   daemons ignore our challenges, so UDP cells then read as dropped. After
//!   Swarm, the overlay data path is probed end to end instead
//!   (`crate::swarm::overlay_probe`, cells with [`Proto::Overlay`]).
//! - **ESP** (IP protocol 50, needed by encrypted overlays) has no ports: the
//!   same challenge/echo travels in raw protocol-50 packets ([`esp`]), probed
//!   only when the overlay is encrypted, and before and after Swarm alike
//!   (Swarm never holds protocol 50).

mod esp;
mod probe;
mod responder;

use std::net::Ipv4Addr;

/// The contract types (cells, ports, the matrix) live in `apiary-api`; the agent measures them.
pub use apiary_api::reach::*;
pub use esp::parse as parse_esp;
pub use probe::{probe, probe_all};
pub use responder::{PortState, PortStatus, Responder};

/// Why reachability could not be set up. Probing itself never fails: an
/// unreachable peer is a cell, not an error.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error(
        "cannot listen on {ip}: the address is not on this host; check the private address in the agent's config (private_cidr or private_interface) and `ip addr`"
    )]
    AddressNotLocal { ip: Ipv4Addr },
    #[error("Responder::start must run inside a tokio runtime (it spawns its listeners as tasks)")]
    NoRuntime,
}

/// The challenge a prober sends (a TCP prober adds a newline).
pub fn challenge(node: &str, nonce: u64) -> String {
    format!("APIARY-PROBE {node} {nonce:016x}")
}

/// The echo a responder sends for a well-formed challenge; `None` for
/// anything else (so strangers get no answer). Trailing `\r\n` is ignored.
pub fn echo_for(challenge: &[u8]) -> Option<Vec<u8>> {
    let (node, nonce) = parse(challenge, "APIARY-PROBE")?;
    Some(format!("APIARY-ECHO {node} {nonce:016x}").into_bytes())
}

/// Whether `reply` is the echo of our challenge (`node`, `nonce`).
pub fn is_echo(reply: &[u8], node: &str, nonce: u64) -> bool {
    parse(reply, "APIARY-ECHO").is_some_and(|(n, x)| n == node && x == nonce)
}

/// Longest node name a challenge may carry: keeps messages in one small datagram.
const MAX_NODE: usize = 64;

fn parse<'a>(msg: &'a [u8], verb: &str) -> Option<(&'a str, u64)> {
    let text = std::str::from_utf8(msg)
        .ok()?
        .trim_end_matches(['\r', '\n']);
    let mut words = text.split(' ');
    if words.next()? != verb {
        return None;
    }
    let node = words.next()?;
    let nonce = words.next()?;
    if words.next().is_some()
        || node.is_empty()
        || node.len() > MAX_NODE
        || !node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || nonce.len() != 16
    {
        return None;
    }
    Some((node, u64::from_str_radix(nonce, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_answers_only_well_formed_challenges() {
        let c = challenge("queenbee", 0xdead_beef);
        assert_eq!(c, "APIARY-PROBE queenbee 00000000deadbeef");
        let e = echo_for(c.as_bytes()).expect("echo");
        assert_eq!(e, b"APIARY-ECHO queenbee 00000000deadbeef");
        assert!(e.len() < c.len(), "never amplifies");
        assert!(is_echo(&e, "queenbee", 0xdead_beef));
        assert!(!is_echo(&e, "queenbee", 0xdead_beee), "other nonce");
        assert!(!is_echo(&e, "workerbee", 0xdead_beef), "other node");
        assert_eq!(
            echo_for(format!("{c}\r\n").as_bytes()),
            Some(e.clone()),
            "a TCP line"
        );
        for bad in [
            "APIARY-ECHO queenbee 00000000deadbeef",
            "APIARY-PROBE queenbee",
            "APIARY-PROBE queenbee 00000000deadbeef extra",
            "APIARY-PROBE queen;bee 00000000deadbeef",
            "APIARY-PROBE queenbee xyz0000000000000",
            "APIARY-PROBE queenbee deadbeef",
            "GET / HTTP/1.0",
            "",
        ] {
            assert_eq!(echo_for(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(echo_for(&[0xff, 0xfe]), None);
        let long = challenge(&"a".repeat(65), 1);
        assert_eq!(echo_for(long.as_bytes()), None);
    }
}
