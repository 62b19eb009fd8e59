//! The addresses agents may reach their coordinator at: one rule for what a
//! coordinator endpoint is, shared by `ctl` (which refuses bad input before
//! any connection), the coordinator (which stores the cluster's list) and
//! the agent (which keeps the list it is told and fails over along it).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Why a string is not a coordinator endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a coordinator endpoint: {reason}")]
pub struct BadEndpoint {
    pub value: String,
    pub reason: &'static str,
}

/// `HOST:PORT` an agent can dial: an IP address (IPv6 in brackets) or a DNS
/// name, and a port other than 0. Kept in a canonical form (addresses as the
/// standard library prints them, names in lowercase) so that one endpoint
/// written two ways is one entry in a list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CoordinatorEndpoint(String);

impl CoordinatorEndpoint {
    pub fn parse(value: &str) -> Result<Self, BadEndpoint> {
        let bad = |reason| BadEndpoint {
            value: value.to_string(),
            reason,
        };
        if let Ok(addr) = value.parse::<SocketAddr>() {
            return Self::from_socket_addr(addr).map_err(|e| bad(e.reason));
        }
        let (host, port) = value
            .rsplit_once(':')
            .ok_or_else(|| bad("write HOST:PORT (e.g. 10.0.0.2:7443)"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("port 0 cannot be dialled"));
        }
        // An address that did not parse with its port (a bare IPv6 address,
        // an IPv4 address with a stray character) is not a name either.
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return Err(bad("write an IPv6 address in brackets: [ADDRESS]:PORT"));
        }
        if !is_dns_name(host) {
            return Err(bad(
                "the host is neither an IP address nor a DNS name (letters, digits, '-' and '.')",
            ));
        }
        Ok(CoordinatorEndpoint(format!(
            "{}:{port}",
            host.to_ascii_lowercase()
        )))
    }

    /// A bound or advertised socket address; refused when it cannot be
    /// dialled (unspecified, port 0).
    pub fn from_socket_addr(addr: SocketAddr) -> Result<Self, BadEndpoint> {
        let bad = |reason| BadEndpoint {
            value: addr.to_string(),
            reason,
        };
        if addr.port() == 0 {
            return Err(bad("port 0 cannot be dialled"));
        }
        if addr.ip().is_unspecified() {
            return Err(bad(
                "an unspecified address (0.0.0.0, [::]) names no host to dial",
            ));
        }
        Ok(CoordinatorEndpoint(addr.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // An all-digit last label is an IPv4 address written wrong
        // (10.0.0.256), not a name.
        && !host
            .trim_end_matches('.')
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
}

impl fmt::Display for CoordinatorEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for CoordinatorEndpoint {
    type Err = BadEndpoint;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for CoordinatorEndpoint {
    type Error = BadEndpoint;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<CoordinatorEndpoint> for String {
    fn from(e: CoordinatorEndpoint) -> String {
        e.0
    }
}

/// `list` parsed, in order, each endpoint once (the first place it appears).
pub fn parse_list<S: AsRef<str>>(list: &[S]) -> Result<Vec<CoordinatorEndpoint>, BadEndpoint> {
    let mut out: Vec<CoordinatorEndpoint> = Vec::with_capacity(list.len());
    for s in list {
        let e = CoordinatorEndpoint::parse(s.as_ref())?;
        if !out.contains(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_are_endpoints_in_one_canonical_form() {
        let ok = |s: &str| CoordinatorEndpoint::parse(s).expect(s).to_string();
        assert_eq!(ok("10.0.0.2:7443"), "10.0.0.2:7443");
        assert_eq!(ok("[fd00::0:1]:7443"), "[fd00::1]:7443");
        assert_eq!(
            ok("Coordinator.Example.com:7443"),
            "coordinator.example.com:7443"
        );
        assert_eq!(ok("kvstore:1"), "kvstore:1");
        assert_eq!(ok("127.0.0.2:65535"), "127.0.0.2:65535");
    }

    #[test]
    fn what_cannot_be_dialled_is_refused_saying_why() {
        let reason = |s: &str| CoordinatorEndpoint::parse(s).expect_err(s).reason;
        assert!(reason("10.0.0.2").contains("HOST:PORT"));
        assert!(reason("10.0.0.2:0").contains("port 0"));
        assert!(reason("host:0").contains("port 0"));
        assert!(reason("host:65536").contains("port"));
        assert!(reason("host:").contains("port"));
        assert!(reason("0.0.0.0:7443").contains("unspecified"));
        assert!(reason("[::]:7443").contains("unspecified"));
        assert!(reason("fd00::1:7443").contains("brackets"));
        assert!(reason("10.0.0.256:7443").contains("neither"));
        assert!(reason("-bad-.example:7443").contains("neither"));
        assert!(reason("a b:7443").contains("neither"));
        assert!(reason(":7443").contains("neither"));
        let e = CoordinatorEndpoint::parse("nope").expect_err("no port");
        assert!(e.to_string().contains("\"nope\""), "{e}");
    }

    #[test]
    fn a_list_keeps_its_order_and_each_endpoint_once() {
        let list = parse_list(&["b:1", "a:1", "B:1", "[fd00::1]:2", "[fd00:0::1]:2"]).expect("ok");
        let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["b:1", "a:1", "[fd00::1]:2"]);
        assert!(parse_list(&["a:1", "a:0"]).is_err());
        // Through serde, as the agent's file and the operation carry them.
        let back: Vec<CoordinatorEndpoint> =
            serde_json::from_str(r#"["10.0.0.2:7443"]"#).expect("json");
        assert_eq!(back[0].as_str(), "10.0.0.2:7443");
        assert!(serde_json::from_str::<Vec<CoordinatorEndpoint>>(r#"["x"]"#).is_err());
    }
}
