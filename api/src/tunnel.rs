//! The addresses an agent lets a tunnel reach. The allow-list is the agent's
//! own (written into its configuration when apiary creates the host); the
//! coordinator only reads the cluster's `[tunnel] allow` to write it there.

use std::net::IpAddr;

/// An allow-list entry that is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?}: {reason}")]
pub struct BadCidr {
    pub entry: String,
    pub reason: String,
}

/// Targets the agent agrees to connect to: loopback, and the overlay's address
/// pool (Swarm's default pool in apiary, 10.232.0.0/16).
pub const DEFAULT_ALLOW: [&str; 3] = ["127.0.0.0/8", "::1/128", "10.232.0.0/16"];

#[derive(Debug, Clone)]
pub struct AllowList(Vec<(IpAddr, u8)>);

impl std::fmt::Display for AllowList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("empty");
        }
        for (i, (ip, len)) in self.0.iter().enumerate() {
            write!(f, "{}{ip}/{len}", if i > 0 { ", " } else { "" })?;
        }
        Ok(())
    }
}

impl AllowList {
    pub fn parse(cidrs: &[String]) -> Result<Self, BadCidr> {
        cidrs
            .iter()
            .map(|c| {
                let bad = |reason: String| BadCidr {
                    entry: c.clone(),
                    reason,
                };
                let (ip, len) = c
                    .split_once('/')
                    .ok_or_else(|| bad("not a CIDR (ADDR/LEN)".into()))?;
                let ip: IpAddr = ip.parse().map_err(|e| bad(format!("{e}")))?;
                let len: u8 = len.parse().map_err(|e| bad(format!("{e}")))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                if len > max {
                    return Err(bad(format!("prefix length {len} is over {max}")));
                }
                Ok((ip, len))
            })
            .collect::<Result<Vec<_>, BadCidr>>()
            .map(AllowList)
    }

    pub fn default_list() -> Self {
        Self::parse(
            &DEFAULT_ALLOW
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .unwrap_or(AllowList(Vec::new()))
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|(net, len)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if *len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from((*len).min(32)))
                };
                u32::from(*n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if *len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from((*len).min(128)))
                };
                u128::from(*n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }
}
