//! Fake agents and a fake cluster for unit tests of the round and the
//! database control: each host is a small state machine standing in for an
//! engine (Swarm membership, overlay, services, probes), answering the same
//! JSON the real agents answer. Faults are switches on a host.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use apiary_api::database::{
    AdminCredentials, MemberView, PeerTls, ServerHealth, ServiceState, TableConfig, TablesHealth,
};
use apiary_api::ops::*;
use apiary_api::reach::{Cell, Check, Outcome};
use apiary_api::swarm::{
    JoinTokens, ManagerPeer, NodeView, OverlayStatus, ProbeEndpoint, SwarmState, SwarmView,
};

use crate::context::{ClusterContext, NodeObservation, RecordError};
use crate::events::Events;
use crate::sessions::{AgentCalls, CallError};
use crate::state::ClusterView;

/// One fake host.
#[derive(Debug, Clone, Default)]
pub struct FakeHost {
    pub ip: Option<Ipv4Addr>,
    /// Connected (its agent has a session).
    pub up: bool,
    /// In the swarm, and as a manager.
    pub in_swarm: bool,
    pub manager: bool,
    /// Refuses to join (a firewall between it and the managers).
    pub join_fails: bool,
    /// Lacks the kernel pieces for an encrypted overlay.
    pub no_esp_kernel: bool,
    /// Database services created through this host (a manager), by name → node.
    pub services: BTreeMap<String, String>,
}

#[derive(Default)]
pub struct FakeAgents {
    pub hosts: Mutex<BTreeMap<String, FakeHost>>,
    /// Every operation asked, in order: (node, op name).
    pub asked: Mutex<Vec<(String, &'static str)>>,
    overlay_created: Mutex<bool>,
    /// RethinkDB's tables (`table_config`, with readiness); a placement
    /// takes effect at once.
    pub tables: Mutex<Vec<TableConfig>>,
    /// The admin credentials each RethinkDB call came with.
    pub admins_seen: Mutex<Vec<Option<AdminCredentials>>>,
}

fn refused(node: &str, op: &'static str, message: &str) -> CallError {
    CallError::Refused {
        node: node.to_string(),
        op,
        message: message.to_string(),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, CallError> {
    Ok(serde_json::to_string(v).expect("fake replies serialize"))
}

impl FakeAgents {
    pub fn with_hosts(n: usize) -> Self {
        let agents = FakeAgents::default();
        {
            let mut hosts = agents.hosts.lock().expect("lock");
            for i in 1..=n {
                hosts.insert(
                    format!("h{i}"),
                    FakeHost {
                        ip: Some(Ipv4Addr::new(10, 231, 0, 10 + i as u8)),
                        up: true,
                        ..Default::default()
                    },
                );
            }
        }
        agents
    }

    pub fn host(&self, name: &str) -> FakeHost {
        self.hosts.lock().expect("lock")[name].clone()
    }

    pub fn set(&self, name: &str, change: impl FnOnce(&mut FakeHost)) {
        change(
            self.hosts
                .lock()
                .expect("lock")
                .get_mut(name)
                .expect("a fake host"),
        );
    }

    /// How many times `op` was asked of anyone.
    pub fn count(&self, op: &str) -> usize {
        self.asked
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, o)| *o == op)
            .count()
    }

    /// Every service any manager created, by name → node.
    pub fn services(&self) -> BTreeMap<String, String> {
        let hosts = self.hosts.lock().expect("lock");
        hosts.values().flat_map(|h| h.services.clone()).collect()
    }

    fn view(hosts: &BTreeMap<String, FakeHost>, name: &str) -> SwarmView {
        let me = &hosts[name];
        let leader_addr = hosts
            .values()
            .find(|h| h.in_swarm && h.manager)
            .and_then(|h| h.ip)
            .map(|ip| format!("{ip}:2377"));
        SwarmView {
            node_id: if me.in_swarm {
                format!("id-{name}")
            } else {
                String::new()
            },
            state: if me.in_swarm {
                SwarmState::Active
            } else {
                SwarmState::Inactive
            },
            manager: me.in_swarm && me.manager,
            node_addr: String::new(),
            cluster_id: me.in_swarm.then(|| "fake-swarm".to_string()),
            managers: match (&leader_addr, me.in_swarm) {
                (Some(a), true) => vec![ManagerPeer {
                    node_id: "m".into(),
                    addr: a.clone(),
                }],
                _ => vec![],
            },
            nodes: if me.in_swarm && me.manager {
                hosts
                    .iter()
                    .filter(|(_, h)| h.in_swarm)
                    .map(|(n, h)| NodeView {
                        id: format!("id-{n}"),
                        hostname: n.clone(),
                        role: if h.manager { "manager" } else { "worker" }.into(),
                        availability: "active".into(),
                        status: if h.up { "ready" } else { "down" }.into(),
                        addr: String::new(),
                        leader: false,
                        reachability: None,
                        labels: Default::default(),
                    })
                    .collect()
            } else {
                vec![]
            },
            error: None,
        }
    }

    fn open_cells(node: &str, targets: &[apiary_api::reach::Target]) -> Vec<Cell> {
        targets
            .iter()
            .flat_map(|t| {
                t.ports.iter().map(|p| Cell {
                    src: node.to_string(),
                    dst: t.peer.name.clone(),
                    addr: t.peer.ip,
                    port: p.port,
                    proto: p.proto,
                    check: Check::Direct,
                    outcome: Outcome::Open,
                    rtt: None,
                    detail: None,
                })
            })
            .collect()
    }

    fn health(hosts: &BTreeMap<String, FakeHost>, node: &str, service: &str) -> ServerHealth {
        let all: BTreeMap<String, String> =
            hosts.values().flat_map(|h| h.services.clone()).collect();
        let running = all.get(service).is_some_and(|n| n == node) && hosts[node].up;
        let members: Vec<MemberView> = all
            .keys()
            .map(|s| MemberView {
                id: s.clone(),
                // As each database names its members: RethinkDB allows no '-'.
                name: if s.starts_with("rethinkdb") {
                    s.replace('-', "_")
                } else {
                    s.clone()
                },
            })
            .collect();
        ServerHealth {
            host: node.to_string(),
            service: service.to_string(),
            running,
            healthy: running,
            member_id: service.to_string(),
            leader_id: all.keys().next().cloned().unwrap_or_default(),
            members,
            error: (!running).then(|| "not running".to_string()),
            tables: None,
        }
    }

    /// The database's operations: services on the fake hosts, health from
    /// them, RethinkDB's tables from [`FakeAgents::tables`].
    fn database_op(
        &self,
        hosts: &mut BTreeMap<String, FakeHost>,
        node: &str,
        req: OpRequest,
    ) -> Result<String, CallError> {
        match req {
            OpRequest::EnsureService(s) => {
                let exists = hosts
                    .values()
                    .any(|h| h.services.contains_key(&s.spec.name));
                if !exists {
                    let h = hosts.get_mut(node).expect("checked");
                    h.services.insert(s.spec.name.clone(), s.spec.node.clone());
                }
                json(&ServiceState {
                    name: s.spec.name.clone(),
                    created: !exists,
                    matches: true,
                })
            }
            OpRequest::RemoveService(r) => {
                let mut removed = false;
                for h in hosts.values_mut() {
                    removed |= h.services.remove(&r.name).is_some();
                }
                json(&Removed { removed })
            }
            OpRequest::DatabaseHealth(d) => {
                let mut health = Self::health(hosts, node, &d.service);
                if d.service.starts_with("rethinkdb") && health.healthy {
                    let tables = self.tables.lock().expect("lock");
                    health.tables = Some(TablesHealth {
                        total: tables.len(),
                        ready: tables.iter().filter(|t| t.ready).count(),
                        unavailable: vec![],
                    });
                }
                json(&health)
            }
            OpRequest::RethinkdbTables(_) | OpRequest::RethinkdbPlaceTable(_) => {
                self.tables_op(req)
            }
            OpRequest::DatabaseExec(_) => json(&ExecOutput {
                code: 0,
                output: r#"{"members":[]}"#.into(),
            }),
            _ => unreachable!("only database operations"),
        }
    }

    /// RethinkDB's table operations against [`FakeAgents::tables`].
    fn tables_op(&self, req: OpRequest) -> Result<String, CallError> {
        let mut tables = self.tables.lock().expect("lock");
        match req {
            OpRequest::RethinkdbTables(t) => {
                self.admins_seen.lock().expect("lock").push(t.admin);
                json(&*tables)
            }
            OpRequest::RethinkdbPlaceTable(p) => {
                self.admins_seen.lock().expect("lock").push(p.admin);
                let t = tables
                    .iter_mut()
                    .find(|t| t.id == p.table_id)
                    .expect("placed tables exist");
                t.status_servers = p.shards.iter().flat_map(|s| s.replicas.clone()).collect();
                t.status_servers.sort();
                t.status_servers.dedup();
                t.shards = p.shards;
                json(&())
            }
            _ => unreachable!("only table operations"),
        }
    }
}

#[tonic::async_trait]
impl AgentCalls for FakeAgents {
    async fn call_json(&self, node: &str, req: OpRequest) -> Result<String, CallError> {
        let op = req.name();
        self.asked
            .lock()
            .expect("lock")
            .push((node.to_string(), op));
        let mut hosts = self.hosts.lock().expect("lock");
        match hosts.get(node) {
            Some(h) if h.up => {}
            _ => {
                return Err(CallError::NoSession {
                    node: node.to_string(),
                });
            }
        }
        match req {
            OpRequest::StartResponder(_) => json(&ResponderPorts::default()),
            OpRequest::StopResponder(_) | OpRequest::StartEspResponder(_) => json(&()),
            OpRequest::SetCoordinatorEndpoints(_) => json(&Changed { changed: true }),
            OpRequest::EncryptionSupport(_) => {
                if hosts[node].no_esp_kernel {
                    Err(refused(node, op, &format!("{node}: the kernel lacks esp4")))
                } else {
                    json(&())
                }
            }
            OpRequest::Probe(p) => json(&Self::open_cells(node, &p.targets)),
            OpRequest::ReadSwarm(_) => json(&Self::view(&hosts, node)),
            OpRequest::SwarmInit(_) => {
                let h = hosts.get_mut(node).expect("checked");
                h.in_swarm = true;
                h.manager = true;
                json(&Self::view(&hosts, node))
            }
            OpRequest::ReadJoinTokens(_) => json(&JoinTokens {
                worker: "SWMTKN-worker".into(),
                manager: "SWMTKN-manager".into(),
            }),
            OpRequest::SwarmJoin(j) => {
                let h = hosts.get_mut(node).expect("checked");
                if h.join_fails {
                    return Err(refused(
                        node,
                        op,
                        &format!("{node} cannot reach {}: connection refused", j.remote),
                    ));
                }
                h.in_swarm = true;
                h.manager = j.token == "SWMTKN-manager";
                json(&Self::view(&hosts, node))
            }
            OpRequest::SetLabels(_) => json(&Changed { changed: false }),
            OpRequest::SwarmDrain(_)
            | OpRequest::SwarmAvailability(_)
            | OpRequest::SwarmPromote(_) => json(&Changed { changed: true }),
            OpRequest::SwarmLeave(_) => {
                let h = hosts.get_mut(node).expect("checked");
                let left = h.in_swarm;
                h.in_swarm = false;
                h.manager = false;
                json(&Left { left })
            }
            OpRequest::SwarmRemoveNode(_) => json(&Removed { removed: true }),
            OpRequest::UpgradeAgent(_) => {
                return Err(refused(node, op, "the fake agents do not upgrade"));
            }
            OpRequest::EnsureOverlay(o) => {
                let mut created = self.overlay_created.lock().expect("lock");
                let status = OverlayStatus {
                    id: "net".into(),
                    name: o.spec.name,
                    created: !*created,
                    subnets: vec![],
                };
                *created = true;
                json(&status)
            }
            OpRequest::EnsureProbe(_) => {
                let ip = hosts[node].ip.unwrap_or(Ipv4Addr::LOCALHOST).octets();
                json(&ProbeEndpoint {
                    host: node.to_string(),
                    container: format!("probe-{node}"),
                    address: Ipv4Addr::new(10, 232, 0, ip[3]),
                    mtu: 1450,
                })
            }
            OpRequest::OverlayProbe(p) => {
                let targets: Vec<apiary_api::reach::Target> = p
                    .peers
                    .iter()
                    .filter(|e| e.host != node)
                    .map(|e| apiary_api::reach::Target {
                        peer: apiary_api::reach::Peer {
                            name: e.host.clone(),
                            ip: e.address,
                        },
                        ports: vec![apiary_api::reach::PortSpec {
                            port: 4789,
                            proto: apiary_api::reach::Proto::Overlay,
                        }],
                    })
                    .collect();
                json(&Self::open_cells(node, &targets))
            }
            OpRequest::EnsureService(_)
            | OpRequest::RemoveService(_)
            | OpRequest::DatabaseHealth(_)
            | OpRequest::DatabaseExec(_)
            | OpRequest::RethinkdbTables(_)
            | OpRequest::RethinkdbPlaceTable(_) => self.database_op(&mut hosts, node, req),
        }
    }
}

/// A cluster of fake hosts behind a real in-memory view and event channel.
pub struct FakeCluster {
    pub agents: FakeAgents,
    pub view: ClusterView,
    pub events: Events,
    pub scale: Mutex<Option<usize>>,
    pub saved_pre_swarm: Mutex<Vec<Cell>>,
}

impl FakeCluster {
    pub fn new(hosts: usize) -> Self {
        FakeCluster {
            agents: FakeAgents::with_hosts(hosts),
            view: ClusterView::default(),
            events: Events::default(),
            scale: Mutex::new(None),
            saved_pre_swarm: Mutex::new(Vec::new()),
        }
    }

    /// The same hosts (their engines' state survives) behind a fresh
    /// coordinator: what a restart looks like to the round.
    pub fn restarted(self) -> Self {
        let saved = self.saved_pre_swarm.lock().expect("lock").clone();
        FakeCluster {
            view: ClusterView::with_pre_swarm(saved),
            events: Events::default(),
            ..self
        }
    }
}

#[tonic::async_trait]
impl ClusterContext for FakeCluster {
    fn agents(&self) -> &dyn AgentCalls {
        &self.agents
    }

    fn nodes(&self) -> Vec<NodeObservation> {
        let hosts = self.agents.hosts.lock().expect("lock");
        hosts
            .iter()
            .map(|(name, h)| NodeObservation {
                name: name.clone(),
                ready: h.up,
                private_ip: h.ip,
                ip_vs: Some(false),
            })
            .collect()
    }

    fn view(&self) -> &ClusterView {
        &self.view
    }

    fn events(&self) -> &Events {
        &self.events
    }

    fn cluster_name(&self) -> &str {
        "bees"
    }

    fn database_scale(&self) -> Option<usize> {
        *self.scale.lock().expect("lock")
    }

    async fn set_database_scale(&self, servers: usize) -> Result<(), RecordError> {
        *self.scale.lock().expect("lock") = Some(servers);
        Ok(())
    }

    async fn save_pre_swarm(&self, cells: &[Cell]) {
        *self.saved_pre_swarm.lock().expect("lock") = cells.to_vec();
    }

    fn database_admin(&self, user: &str) -> Result<AdminCredentials, RecordError> {
        Ok(AdminCredentials {
            user: user.to_string(),
            password: "fake-password".into(),
        })
    }

    fn database_peer_tls(&self, service: &str) -> Result<PeerTls, RecordError> {
        Ok(PeerTls {
            ca_pem: "ca".into(),
            cert_pem: format!("cert of {service}"),
            key_pem: format!("key of {service}"),
        })
    }
}

/// Hosts as the fakes hold them, for assertions: name → (in swarm, manager).
pub fn roles(agents: &FakeAgents) -> HashMap<String, (bool, bool)> {
    agents
        .hosts
        .lock()
        .expect("lock")
        .iter()
        .map(|(n, h)| (n.clone(), (h.in_swarm, h.manager)))
        .collect()
}
