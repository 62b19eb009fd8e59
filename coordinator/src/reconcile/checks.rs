//! The reachability checks a round runs through the agents: the pre-Swarm
//! port matrix, ESP between every pair (encrypted overlays), and after
//! Swarm its TCP ports directly and the overlay end to end between probe
//! containers. A check that cannot run is a failing cell naming why, never
//! an error: the matrix says what is broken, host by host.

use std::net::Ipv4Addr;

use apiary_api::ops::{
    EnsureProbe, OverlayProbe, Probe, StartEspResponder, StartResponder, StopResponder,
};
use apiary_api::reach::{
    Cell, Check, Coverage, Member, Outcome, Peer, PortSpec, Proto, SWARM_GOSSIP_PORT,
    SWARM_MANAGER_PORT, Target, VXLAN_PORT, targets,
};
use apiary_api::swarm::ProbeEndpoint;
use futures::future::join_all;
use tracing::warn;

use super::plan::Host;
use crate::sessions::{AgentCalls, CallError, call};

/// A cell saying a whole check could not run from or to a host.
pub fn unavailable(
    src: &str,
    dst: &str,
    addr: Ipv4Addr,
    proto: Proto,
    port: u16,
    why: &str,
) -> Cell {
    Cell {
        src: src.into(),
        dst: dst.into(),
        addr,
        port,
        proto,
        check: if proto == Proto::Overlay {
            Check::PingName
        } else {
            Check::Direct
        },
        outcome: Outcome::Error(why.into()),
        rtt: None,
        detail: Some(why.into()),
    }
}

/// Probes `targets_of` from every host at once.
async fn probe_round(
    agents: &dyn AgentCalls,
    hosts: &[Host],
    targets_of: impl Fn(&Host) -> Vec<Target>,
) -> Vec<Cell> {
    let rounds = hosts.iter().map(|h| {
        let targets = targets_of(h);
        async move {
            let op = Probe {
                targets: targets.clone(),
                timeout_ms: 1000,
            };
            match call(agents, &h.name, op).await {
                Ok(cells) => cells,
                Err(e) => targets
                    .iter()
                    .flat_map(|t| {
                        t.ports.iter().map(|p| {
                            unavailable(
                                &h.name,
                                &t.peer.name,
                                t.peer.ip,
                                p.proto,
                                p.port,
                                &e.to_string(),
                            )
                        })
                    })
                    .collect(),
            }
        }
    });
    join_all(rounds).await.into_iter().flatten().collect()
}

/// Before Swarm: responders everywhere, the full port matrix, responders off.
pub async fn pre_swarm(agents: &dyn AgentCalls, hosts: &[Host], round: u64) -> Vec<Cell> {
    join_all(hosts.iter().map(|h| async move {
        if let Err(e) = call(agents, &h.name, StartResponder { manager: h.manager }).await {
            warn!(node = %h.name, error = %e, "responder did not start");
        }
    }))
    .await;
    let members: Vec<Member> = hosts.iter().map(Host::member).collect();
    let coverage = Coverage::for_cluster(hosts.len());
    let cells = probe_round(agents, hosts, |h| {
        targets(&h.name, &members, coverage, round)
    })
    .await;
    join_all(hosts.iter().map(|h| async move {
        // A responder that is not stopped is stopped by Swarm's own
        // listeners failing; nothing to do but log it.
        if let Err(e) = call(agents, &h.name, StopResponder {}).await {
            warn!(node = %h.name, error = %e, "responder did not stop");
        }
    }))
    .await;
    cells
}

/// ESP between every pair of hosts (for an encrypted overlay): responders
/// (idempotent, kept across rounds) and one probe per ordered pair.
pub async fn esp(agents: &dyn AgentCalls, hosts: &[Host]) -> Vec<Cell> {
    join_all(hosts.iter().map(|h| async move {
        if let Err(e) = call(agents, &h.name, StartEspResponder {}).await {
            warn!(node = %h.name, error = %e, "ESP responder did not start");
        }
    }))
    .await;
    probe_round(agents, hosts, |h| {
        peers_of(hosts, h, |_| vec![PortSpec::esp()])
    })
    .await
}

/// Every host but `me` as a probe target, on the ports `ports_of` gives it.
fn peers_of(hosts: &[Host], me: &Host, ports_of: impl Fn(&Host) -> Vec<PortSpec>) -> Vec<Target> {
    hosts
        .iter()
        .filter(|p| p.name != me.name)
        .map(|p| Target {
            peer: Peer {
                name: p.name.clone(),
                ip: p.ip,
            },
            ports: ports_of(p),
        })
        .collect()
}

/// The probe containers, one per host, on `network`.
pub async fn probe_containers(
    agents: &dyn AgentCalls,
    hosts: &[Host],
    network: &str,
) -> Vec<(Host, Result<ProbeEndpoint, CallError>)> {
    join_all(hosts.iter().map(|h| async move {
        let op = EnsureProbe {
            network: network.to_string(),
        };
        let endpoint = call(agents, &h.name, op).await;
        (h.clone(), endpoint)
    }))
    .await
}

/// After Swarm: its TCP ports between every pair, directly.
pub async fn swarm_ports(agents: &dyn AgentCalls, hosts: &[Host]) -> Vec<Cell> {
    probe_round(agents, hosts, |h| {
        peers_of(hosts, h, |m| {
            if m.manager {
                vec![
                    PortSpec::tcp(SWARM_MANAGER_PORT),
                    PortSpec::tcp(SWARM_GOSSIP_PORT),
                ]
            } else {
                vec![PortSpec::tcp(SWARM_GOSSIP_PORT)]
            }
        })
    })
    .await
}

/// The overlay end to end: each probe container reaches every other by
/// name, by address and with full-size packets.
pub async fn overlay(
    agents: &dyn AgentCalls,
    hosts: &[Host],
    endpoints: &[(Host, Result<ProbeEndpoint, CallError>)],
) -> Vec<Cell> {
    let up: Vec<ProbeEndpoint> = endpoints
        .iter()
        .filter_map(|(_, e)| e.as_ref().ok().cloned())
        .collect();
    join_all(endpoints.iter().map(|(h, e)| {
        let up = up.clone();
        async move {
            let peers_down = |why: &str| -> Vec<Cell> {
                hosts
                    .iter()
                    .filter(|p| p.name != h.name)
                    .map(|p| unavailable(&h.name, &p.name, p.ip, Proto::Overlay, VXLAN_PORT, why))
                    .collect()
            };
            let local = match e {
                Ok(l) => l.clone(),
                Err(err) => return peers_down(&format!("no probe container on {}: {err}", h.name)),
            };
            let op = OverlayProbe {
                local,
                peers: up.clone(),
            };
            let mut cells = match call(agents, &h.name, op).await {
                Ok(c) => c,
                Err(err) => return peers_down(&err.to_string()),
            };
            // Peers without a probe container cannot be reached on the overlay at all.
            for p in hosts
                .iter()
                .filter(|p| p.name != h.name && !up.iter().any(|u| u.host == p.name))
            {
                cells.push(unavailable(
                    &h.name,
                    &p.name,
                    p.ip,
                    Proto::Overlay,
                    VXLAN_PORT,
                    &format!("{} has no probe container (engine or agent down?)", p.name),
                ));
            }
            cells
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect()
}
