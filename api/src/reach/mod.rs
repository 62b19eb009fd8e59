//! Reachability cells: what one probe from one host to one peer found, and
//! the N×N×port [`Matrix`] the coordinator gathers them into. The agent
//! measures (its `reach` module: responders, probes); the coordinator and
//! `ctl checks` read. Pure data and logic: no I/O.

mod matrix;

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use matrix::{Coverage, Failure, Key, Matrix, Member, cluster_ports, targets};

/// Swarm's manager port (raft and the control API between nodes).
pub const SWARM_MANAGER_PORT: u16 = 2377;
/// Swarm's gossip port (memberlist), TCP and UDP.
pub const SWARM_GOSSIP_PORT: u16 = 7946;
/// The VXLAN data path port of Swarm's overlay networks.
pub const VXLAN_PORT: u16 = 4789;

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

#[cfg(test)]
mod tests {
    use super::*;

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
