//! The N×N×port matrix and who probes whom. Pure: no I/O, so the coordinator
//! (which gathers cells from every agent) and `ctl checks` can use it as is.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use super::{
    Cell, Check, Outcome, Peer, PortSpec, Proto, SWARM_GOSSIP_PORT, SWARM_MANAGER_PORT, Target,
    VXLAN_PORT,
};

/// A cluster host as the matrix sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub ip: Ipv4Addr,
    pub manager: bool,
}

/// Who probes whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Coverage {
    /// Every host probes every other: N·(N−1) pairs.
    Full,
    /// Every host probes all managers plus `k` random other peers per round:
    /// O(N·k) probes, a cut link found in about N/k rounds.
    Sampled { k: usize },
}

impl Coverage {
    /// Largest cluster probed in full each round.
    pub const FULL_UP_TO: usize = 64;
    /// Random peers per host per round beyond that.
    pub const SAMPLE_K: usize = 8;

    /// The coverage DESIGN.md plans for a cluster of `hosts`.
    pub fn for_cluster(hosts: usize) -> Coverage {
        if hosts <= Self::FULL_UP_TO {
            Coverage::Full
        } else {
            Coverage::Sampled { k: Self::SAMPLE_K }
        }
    }
}

/// The ports Swarm needs open towards a host: 2377/tcp only on managers
/// (workers never listen there), gossip and VXLAN everywhere.
pub fn cluster_ports(manager: bool) -> Vec<PortSpec> {
    let mut ports = Vec::with_capacity(4);
    if manager {
        ports.push(PortSpec::tcp(SWARM_MANAGER_PORT));
    }
    ports.extend([
        PortSpec::tcp(SWARM_GOSSIP_PORT),
        PortSpec::udp(SWARM_GOSSIP_PORT),
        PortSpec::udp(VXLAN_PORT),
    ]);
    ports
}

/// The peers `src` probes in round `round`, each with its [`cluster_ports`].
/// Sampling is seeded by `src` and `round`: the same plan is computed again
/// after a coordinator restart, and every round picks other peers.
pub fn targets(src: &str, members: &[Member], coverage: Coverage, round: u64) -> Vec<Target> {
    let others = members.iter().filter(|m| m.name != src);
    let chosen: Vec<&Member> = match coverage {
        Coverage::Full => others.collect(),
        Coverage::Sampled { k } => {
            let (managers, workers): (Vec<&Member>, Vec<&Member>) = others.partition(|m| m.manager);
            let mut rng = StdRng::seed_from_u64(
                fnv1a(src.as_bytes()) ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            let mut picked: Vec<&Member> = workers.choose_multiple(&mut rng, k).copied().collect();
            picked.sort_by(|a, b| a.name.cmp(&b.name));
            managers.into_iter().chain(picked).collect()
        }
    };
    chosen
        .into_iter()
        .map(|m| Target {
            peer: Peer {
                name: m.name.clone(),
                ip: m.ip,
            },
            ports: cluster_ports(m.manager),
        })
        .collect()
}

/// Stable across processes and Rust versions (std's hasher is not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Identifies one cell of the matrix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub src: String,
    pub dst: String,
    pub port: u16,
    pub proto: Proto,
    pub check: Check,
}

/// A path that is not open, or a planned probe nobody reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub src: String,
    pub dst: String,
    pub port: u16,
    pub proto: Proto,
    pub check: Check,
    /// `None` when the probe was planned but no result came back.
    pub outcome: Option<Outcome>,
    pub cause: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} → {} {}/{}",
            self.src, self.dst, self.port, self.proto
        )?;
        if self.check != Check::Direct {
            write!(f, " ({})", self.check)?;
        }
        match &self.outcome {
            Some(o) => write!(f, ": {o}")?,
            None => f.write_str(": no result")?,
        }
        write!(f, " — likely cause: {}", self.cause)
    }
}

/// Cells gathered from every agent, and the probes that were planned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matrix {
    expected: BTreeSet<Key>,
    cells: BTreeMap<Key, Cell>,
}

impl Matrix {
    pub fn new() -> Self {
        Self::default()
    }

    /// The plan of one round: every member's targets (send each agent its
    /// own) and a matrix expecting all of those cells.
    pub fn planned(
        members: &[Member],
        coverage: Coverage,
        round: u64,
    ) -> (Matrix, BTreeMap<String, Vec<Target>>) {
        let mut m = Matrix::new();
        let mut plan = BTreeMap::new();
        for src in members {
            let t = targets(&src.name, members, coverage, round);
            m.expect(&src.name, &t);
            plan.insert(src.name.clone(), t);
        }
        (m, plan)
    }

    /// Expects a direct cell from `src` for every target port.
    pub fn expect(&mut self, src: &str, targets: &[Target]) {
        for t in targets {
            for p in &t.ports {
                self.expected.insert(Key {
                    src: src.to_string(),
                    dst: t.peer.name.clone(),
                    port: p.port,
                    proto: p.proto,
                    check: Check::Direct,
                });
            }
        }
    }

    /// Expects one cell of any kind (overlay checks, for instance).
    pub fn expect_key(&mut self, key: Key) {
        self.expected.insert(key);
    }

    /// Records a result; a newer cell for the same key replaces the older.
    pub fn record(&mut self, cell: Cell) {
        self.cells.insert(cell.key(), cell);
    }

    pub fn extend(&mut self, cells: impl IntoIterator<Item = Cell>) {
        for c in cells {
            self.record(c);
        }
    }

    pub fn cells(&self) -> impl Iterator<Item = &Cell> {
        self.cells.values()
    }

    pub fn get(&self, key: &Key) -> Option<&Cell> {
        self.cells.get(key)
    }

    /// Every path that is not open, and every planned probe without a
    /// result, in (src, dst, port, proto, check) order.
    pub fn failures(&self) -> Vec<Failure> {
        let missing = self
            .expected
            .iter()
            .filter(|k| !self.cells.contains_key(k))
            .map(|k| Failure {
                src: k.src.clone(),
                dst: k.dst.clone(),
                port: k.port,
                proto: k.proto,
                check: k.check,
                outcome: None,
                cause: format!(
                    "{}'s agent did not report this probe (agent down, disconnected, or still probing)",
                    k.src
                ),
            });
        let failed = self.cells.values().filter_map(|c| {
            c.likely_cause().map(|cause| Failure {
                cause: self.refine(c).unwrap_or(cause),
                src: c.src.clone(),
                dst: c.dst.clone(),
                port: c.port,
                proto: c.proto,
                check: c.check,
                outcome: Some(c.outcome.clone()),
            })
        });
        let mut all: Vec<Failure> = missing.chain(failed).collect();
        all.sort_by(|a, b| {
            (&a.src, &a.dst, a.port, a.proto, a.check)
                .cmp(&(&b.src, &b.dst, b.port, b.proto, b.check))
        });
        all
    }

    /// A cause that needs more than one cell: a full-size ping that fails
    /// along with the small ping to the same address says nothing about the
    /// MTU; the small ping's cause is the real one.
    fn refine(&self, c: &Cell) -> Option<String> {
        if !matches!(c.check, Check::Mtu(_)) {
            return None;
        }
        let small = self.cells.get(&Key {
            check: Check::PingAddress,
            ..c.key()
        })?;
        small.likely_cause().map(|cause| {
            format!("{cause} (full-size packets fail along with small ones, so not the MTU)")
        })
    }

    /// Whether every planned probe reported and every cell is open.
    pub fn ok(&self) -> bool {
        self.failures().is_empty()
    }

    /// A text grid: one row per (source, destination), one column per
    /// port/protocol/check; `ok`, `CLOSED`, `DROP`, `UNREACH`, `ERR`, `?`
    /// (planned, no result) or blank (not probed).
    pub fn render(&self) -> String {
        let keys = self.expected.iter().chain(self.cells.keys());
        let mut columns: BTreeSet<(u16, Proto, Check)> = BTreeSet::new();
        let mut rows: BTreeSet<(String, String)> = BTreeSet::new();
        for k in keys {
            columns.insert((k.port, k.proto, k.check));
            rows.insert((k.src.clone(), k.dst.clone()));
        }
        let heads: Vec<String> = columns
            .iter()
            .map(|(port, proto, check)| match check {
                Check::Direct => PortSpec {
                    port: *port,
                    proto: *proto,
                }
                .to_string(),
                Check::PingName => "ov:ping-name".into(),
                Check::PingAddress => "ov:ping-addr".into(),
                Check::TcpName => "ov:tcp-name".into(),
                Check::TcpAddress => "ov:tcp-addr".into(),
                Check::Mtu(_) => "ov:mtu".into(),
            })
            .collect();
        let pair_w = rows
            .iter()
            .map(|(s, d)| s.chars().count() + d.chars().count() + 3)
            .max()
            .unwrap_or(0)
            .max("path".len());
        let mut out = format!("{:pair_w$}", "path");
        for h in &heads {
            out.push_str(&format!("  {h:>9}"));
        }
        out.push('\n');
        for (src, dst) in &rows {
            out.push_str(&format!("{:pair_w$}", format!("{src} → {dst}")));
            for ((port, proto, check), h) in columns.iter().zip(&heads) {
                let key = Key {
                    src: src.clone(),
                    dst: dst.clone(),
                    port: *port,
                    proto: *proto,
                    check: *check,
                };
                let mark = match self.cells.get(&key).map(|c| &c.outcome) {
                    Some(Outcome::Open) => "ok",
                    Some(Outcome::Closed) => "CLOSED",
                    Some(Outcome::Dropped) => "DROP",
                    Some(Outcome::Unreachable) => "UNREACH",
                    Some(Outcome::Error(_)) => "ERR",
                    None if self.expected.contains(&key) => "?",
                    None => "",
                };
                out.push_str(&format!("  {mark:>w$}", w = h.len().max(9)));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn members(n: usize, managers: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                name: format!("h{i:03}"),
                ip: Ipv4Addr::new(10, 231, (i / 250) as u8, (i % 250) as u8 + 1),
                manager: i < managers,
            })
            .collect()
    }

    fn cell(src: &str, dst: &str, port: PortSpec, outcome: Outcome) -> Cell {
        Cell {
            src: src.into(),
            dst: dst.into(),
            addr: Ipv4Addr::new(10, 231, 0, 12),
            port: port.port,
            proto: port.proto,
            check: Check::Direct,
            outcome,
            rtt: Some(Duration::from_micros(80)),
            detail: None,
        }
    }

    #[test]
    fn full_plan_probes_managers_on_2377_only() {
        let ms = members(3, 1);
        let t = targets("h001", &ms, Coverage::Full, 0);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].peer.name, "h000");
        assert_eq!(t[0].ports.len(), 4, "the manager gets 2377/tcp too");
        assert_eq!(t[1].ports, cluster_ports(false));
        assert!(!t[1].ports.contains(&PortSpec::tcp(2377)));
        let (m, plan) = Matrix::planned(&ms, Coverage::Full, 0);
        assert_eq!(plan.len(), 3);
        // 2 peers → manager: 2×4; others: 4 pairs × 3 ports
        assert_eq!(m.failures().len(), 8 + 12, "all missing until reported");
    }

    #[test]
    fn failures_name_src_dst_port_proto_and_cause() {
        let ms = members(2, 1);
        let (mut m, plan) = Matrix::planned(&ms, Coverage::Full, 0);
        for (src, targets) in &plan {
            for t in targets {
                for p in &t.ports {
                    let o = if src == "h000" && *p == PortSpec::udp(4789) {
                        Outcome::Dropped
                    } else {
                        Outcome::Open
                    };
                    m.record(cell(src, &t.peer.name, *p, o));
                }
            }
        }
        // one result came back twice: the newer wins
        m.record(cell("h001", "h000", PortSpec::tcp(2377), Outcome::Closed));
        let f = m.failures();
        assert_eq!(f.len(), 2, "{f:#?}");
        assert_eq!(
            (f[0].src.as_str(), f[0].dst.as_str(), f[0].port, f[0].proto),
            ("h000", "h001", 4789, Proto::Udp)
        );
        assert!(f[0].cause.starts_with("firewall"), "{}", f[0].cause);
        assert_eq!(
            (f[1].src.as_str(), f[1].dst.as_str(), f[1].port, f[1].proto),
            ("h001", "h000", 2377, Proto::Tcp)
        );
        assert!(
            f[0].to_string()
                .starts_with("h000 → h001 4789/udp: dropped (no answer) — likely cause: firewall"),
            "{}",
            f[0]
        );
        assert!(!m.ok());
        let grid = m.render();
        assert!(grid.contains("h000 → h001"), "{grid}");
        assert!(grid.contains("DROP") && grid.contains("CLOSED"), "{grid}");

        // a cell that never came back is a failure too
        let mut partial = Matrix::new();
        partial.expect("h000", &plan["h000"]);
        partial.record(cell("h000", "h001", PortSpec::tcp(7946), Outcome::Open));
        let f = partial.failures();
        assert_eq!(f.len(), 2);
        assert!(
            f.iter()
                .all(|x| x.outcome.is_none() && x.cause.contains("h000's agent"))
        );
        assert!(partial.render().contains('?'));
    }

    #[test]
    fn overlay_cells_are_reported_with_their_check() {
        let mut m = Matrix::new();
        let mut c = cell("h1", "h2", PortSpec::udp(4789), Outcome::Dropped);
        c.proto = Proto::Overlay;
        c.check = Check::PingName;
        m.record(c.clone());
        c.check = Check::Mtu(1422);
        m.record(c.clone());
        // the full-size ping alone failing is the MTU; with the small one, it is not
        let mtu_cause = |m: &Matrix| {
            m.failures()
                .into_iter()
                .find(|f| matches!(f.check, Check::Mtu(_)))
                .map(|f| f.cause)
        };
        let mut small = c.clone();
        small.check = Check::PingAddress;
        small.outcome = Outcome::Open;
        m.record(small.clone());
        assert!(mtu_cause(&m).expect("mtu").starts_with("MTU"));
        small.outcome = Outcome::Dropped;
        m.record(small);
        let cause = mtu_cause(&m).expect("mtu");
        assert!(
            cause.starts_with("firewall") && cause.contains("not the MTU"),
            "{cause}"
        );
        let mut m = Matrix::new();
        m.record(Cell {
            check: Check::PingName,
            ..c.clone()
        });
        c.outcome = Outcome::Open;
        m.record(c);
        let f = m.failures();
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].to_string().split(" — ").next(),
            Some("h1 → h2 4789/overlay (ping by name): dropped (no answer)")
        );
        assert!(m.render().contains("ov:ping-name"));
    }

    #[test]
    fn large_clusters_probe_managers_plus_k_random_peers() {
        assert_eq!(Coverage::for_cluster(64), Coverage::Full);
        let cov = Coverage::for_cluster(200);
        assert_eq!(cov, Coverage::Sampled { k: 8 });
        let ms = members(200, 3);
        let t = targets("h100", &ms, cov, 7);
        assert_eq!(t.len(), 3 + 8);
        assert!(
            t[..3].iter().all(|x| x.ports.len() == 4),
            "managers first, with 2377"
        );
        assert!(t.iter().all(|x| x.peer.name != "h100"), "never itself");
        let names: BTreeSet<&str> = t.iter().map(|x| x.peer.name.as_str()).collect();
        assert_eq!(names.len(), t.len(), "no duplicates");
        // deterministic per (src, round), different across rounds and sources
        assert_eq!(targets("h100", &ms, cov, 7), t);
        assert_ne!(targets("h100", &ms, cov, 8), t);
        assert_ne!(targets("h101", &ms, cov, 7)[3..], t[3..]);
        // a manager probes managers and k workers too
        assert_eq!(targets("h000", &ms, cov, 7).len(), 2 + 8);
        // O(N·k) probes per round instead of O(N²)
        let (m, _) = Matrix::planned(&ms, cov, 0);
        assert!(m.failures().len() < 200 * 11 * 4);
        // a given link is covered within a few N/k rounds
        let covered = (0..200u64).find(|r| {
            targets("h150", &ms, cov, *r)
                .iter()
                .any(|x| x.peer.name == "h042")
        });
        assert!(covered.is_some_and(|r| r < 4 * 200 / 8), "{covered:?}");
    }
}
