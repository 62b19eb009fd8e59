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
mod matrix;
mod probe;
mod responder;

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use matrix::{Coverage, Failure, Key, Matrix, Member, cluster_ports, targets};
pub use probe::{probe, probe_all};
pub use responder::{PortState, PortStatus, Responder};

/// Swarm's manager port (raft and the control API between nodes).
pub const SWARM_MANAGER_PORT: u16 = 2377;
/// Swarm's gossip port (memberlist), TCP and UDP.
pub const SWARM_GOSSIP_PORT: u16 = 7946;
/// The VXLAN data path port of Swarm's overlay networks.
pub const VXLAN_PORT: u16 = 4789;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    /// The overlay data path, end to end between probe containers.
    Overlay,
    /// IP protocol 50, which carries an encrypted overlay (no port: 0).
    Esp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Overlay => "overlay",
            Proto::Esp => "esp",
        })
    }
}

/// One port and protocol, e.g. 7946/udp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    pub port: u16,
    pub proto: Proto,
}

impl PortSpec {
    pub const fn tcp(port: u16) -> Self {
        PortSpec {
            port,
            proto: Proto::Tcp,
        }
    }

    pub const fn udp(port: u16) -> Self {
        PortSpec {
            port,
            proto: Proto::Udp,
        }
    }

    /// ESP between the hosts' private addresses (port 0: it has none).
    pub const fn esp() -> Self {
        PortSpec {
            port: 0,
            proto: Proto::Esp,
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            Proto::Esp => f.write_str("esp"),
            _ => write!(f, "{}/{}", self.port, self.proto),
        }
    }
}

/// A host to probe: its name (for the report) and private address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub ip: Ipv4Addr,
}

/// A peer and the ports to probe on it (2377/tcp only on managers: see
/// [`cluster_ports`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub peer: Peer,
    pub ports: Vec<PortSpec>,
}

/// What a cell checked. Direct probes between private addresses are
/// [`Check::Direct`]; the overlay checks run between probe containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Direct,
    PingName,
    PingAddress,
    TcpName,
    TcpAddress,
    /// A ping of this many bytes of ICMP payload: a full-size packet for the overlay's MTU.
    Mtu(u32),
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Direct => Ok(()),
            Check::PingName => f.write_str("ping by name"),
            Check::PingAddress => f.write_str("ping by address"),
            Check::TcpName => f.write_str("tcp by name"),
            Check::TcpAddress => f.write_str("tcp by address"),
            Check::Mtu(size) => write!(f, "full-size ping, {size} bytes"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// TCP handshake completed, or the UDP challenge was echoed.
    Open,
    /// Refused: a TCP RST, or ICMP port unreachable (seen by a connected UDP
    /// socket as ECONNREFUSED). The host is there; nothing listens.
    Closed,
    /// No answer within the timeout: something drops packets silently.
    Dropped,
    /// No route, or the address does not answer ARP (EHOSTUNREACH, ENETUNREACH).
    Unreachable,
    /// The probe itself failed (socket error, name not resolved, exec failed).
    Error(String),
}

impl Outcome {
    pub fn is_open(&self) -> bool {
        matches!(self, Outcome::Open)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Open => f.write_str("open"),
            Outcome::Closed => f.write_str("closed (refused)"),
            Outcome::Dropped => f.write_str("dropped (no answer)"),
            Outcome::Unreachable => f.write_str("unreachable (no route to host)"),
            Outcome::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// One probe's result: from `src` to `dst` (at `addr`) on `port`/`proto`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    pub src: String,
    pub dst: String,
    /// The address probed: the peer's private address, or its probe
    /// container's overlay address for overlay checks.
    pub addr: Ipv4Addr,
    /// For overlay checks, the VXLAN port that carries them.
    pub port: u16,
    pub proto: Proto,
    pub check: Check,
    pub outcome: Outcome,
    /// Handshake or echo round trip, when open.
    pub rtt: Option<Duration>,
    /// Anything else worth showing (e.g. "no apiary echo: another program holds the port").
    pub detail: Option<String>,
}

impl Cell {
    pub fn key(&self) -> Key {
        Key {
            src: self.src.clone(),
            dst: self.dst.clone(),
            port: self.port,
            proto: self.proto,
            check: self.check,
        }
    }

    /// What most likely broke this path, in words an operator can act on;
    /// `None` when the cell is open.
    pub fn likely_cause(&self) -> Option<String> {
        let (src, dst, addr, port, proto) =
            (&self.src, &self.dst, self.addr, self.port, self.proto);
        let overlay = proto == Proto::Overlay;
        Some(match (&self.outcome, self.check) {
            (Outcome::Open, _) => return None,
            (Outcome::Dropped, Check::Mtu(size)) => format!(
                "MTU: full-size packets ({size} bytes of payload) do not cross the overlay while small ones do; \
                 the path between {src} and {dst} carries less than the overlay MTU + 50 bytes of VXLAN header \
                 (or drops fragments): lower the overlay's MTU"
            ),
            (Outcome::Error(e), Check::PingName | Check::TcpName) => format!(
                "name resolution: {src} could not resolve {dst}'s probe container ({e}); Docker's embedded DNS \
                 learns names by gossip on 7946/tcp+udp: check those ports, and that the container is attached"
            ),
            (Outcome::Dropped, _) if overlay => format!(
                "firewall: the overlay between {src} and {dst} carries nothing, so VXLAN (udp/{port}) is blocked \
                 between their private addresses (host nftables/iptables or a cloud firewall); open udp/{port} \
                 from the private network (and ESP, IP protocol 50, for an encrypted overlay)"
            ),
            (Outcome::Dropped, _) if proto == Proto::Esp => format!(
                "firewall: ESP (IP protocol 50) from {src} to {dst} ({addr}) is dropped; an encrypted overlay \
                 carries nothing without it. Cloud firewalls and security groups often allow only TCP, UDP and \
                 ICMP: allow IP protocol 50 between the private addresses (or turn overlay encryption off)"
            ),
            (Outcome::Closed, _) if overlay => format!(
                "nothing listens in {dst}'s probe container at {addr}: the container is not running its server"
            ),
            (Outcome::Dropped, _) => format!(
                "firewall: {proto}/{port} to {dst} ({addr}) is silently dropped (host nftables/iptables on \
                 either side, or a cloud firewall or security group between them); allow {proto}/{port} from \
                 the private network"
            ),
            (Outcome::Closed, _) => format!(
                "nothing listening: {dst} ({addr}) refused {proto}/{port} (no responder or service on that port, \
                 or a firewall rule that rejects instead of dropping)"
            ),
            (Outcome::Unreachable, _) => format!(
                "address: {addr} cannot be reached from {src} (wrong private address for {dst}, host down, \
                 different network or VPC, or a firewall answering host-prohibited)"
            ),
            (Outcome::Error(e), _) => format!("the probe could not run on {src}: {e}"),
        })
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = PortSpec {
            port: self.port,
            proto: self.proto,
        };
        write!(f, "{} → {} {spec}", self.src, self.dst)?;
        if self.check != Check::Direct {
            write!(f, " ({}, {})", self.check, self.addr)?;
        }
        write!(f, ": {}", self.outcome)?;
        if let Some(rtt) = self.rtt {
            write!(f, " in {:.1} ms", rtt.as_secs_f64() * 1000.0)?;
        }
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
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

    fn cell(outcome: Outcome, proto: Proto, check: Check) -> Cell {
        Cell {
            src: "h1".into(),
            dst: "h2".into(),
            addr: Ipv4Addr::new(10, 231, 0, 12),
            port: 4789,
            proto,
            check,
            outcome,
            rtt: None,
            detail: None,
        }
    }

    #[test]
    fn likely_causes_read_as_advice() {
        assert_eq!(
            cell(Outcome::Open, Proto::Udp, Check::Direct).likely_cause(),
            None
        );
        let cause = |o, p, c| cell(o, p, c).likely_cause().expect("a cause");
        assert!(cause(Outcome::Dropped, Proto::Udp, Check::Direct).starts_with("firewall"));
        assert!(cause(Outcome::Closed, Proto::Tcp, Check::Direct).starts_with("nothing listening"));
        assert!(cause(Outcome::Unreachable, Proto::Tcp, Check::Direct).starts_with("address"));
        let vx = cause(Outcome::Dropped, Proto::Overlay, Check::PingAddress);
        assert!(
            vx.starts_with("firewall") && vx.contains("udp/4789"),
            "{vx}"
        );
        assert!(cause(Outcome::Dropped, Proto::Overlay, Check::Mtu(1422)).starts_with("MTU"));
        assert!(
            cause(
                Outcome::Error("bad address".into()),
                Proto::Overlay,
                Check::PingName
            )
            .starts_with("name resolution")
        );
        assert_eq!(
            cell(Outcome::Dropped, Proto::Overlay, Check::Mtu(1422)).to_string(),
            "h1 → h2 4789/overlay (full-size ping, 1422 bytes, 10.231.0.12): dropped (no answer)"
        );
    }
}
