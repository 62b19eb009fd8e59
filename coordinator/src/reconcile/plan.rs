//! The round's decision, without I/O: from the nodes and the Swarm views
//! observed, which hosts take part and in which role, whether the pre-Swarm
//! matrix runs, and what Swarm needs (init or adopt, who joins).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use apiary_api::reach::{Member, SWARM_MANAGER_PORT};
use apiary_api::swarm::{SwarmState, SwarmView};

use crate::config::SwarmConfig;
use crate::context::NodeObservation;
use crate::database::placement_order;

/// A host that takes part in the round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    pub manager: bool,
}

impl Host {
    pub fn member(&self) -> Member {
        Member {
            name: self.name.clone(),
            ip: self.ip,
            manager: self.manager,
        }
    }
}

/// How the swarm comes to exist this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwarmStep {
    /// The first manager runs no swarm yet: it inits one.
    Init,
    /// The first manager is an active manager already: adopted as is.
    Adopt,
}

/// What a round does, decided before it does anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Ready hosts with a private address, in placement order, the first
    /// `manager_count` of them managers.
    pub hosts: Vec<Host>,
    /// Enrolled hosts not ready: none of their paths can be checked.
    pub down: Vec<String>,
    /// No host is in a swarm yet: measure the cluster ports first.
    pub pre_swarm_checks: bool,
    /// The first manager (the swarm's leader at creation).
    pub first: Host,
    pub swarm: SwarmStep,
    /// Hosts to join, in placement order (so managers first): each answered its engine and is not
    /// in the first manager's swarm yet. A host whose engine did not answer
    /// is left alone this round (its cells say so; joining it would only
    /// wait for a timeout).
    pub joins: Vec<Host>,
    /// Entries in the swarm's node list that no host is (see
    /// [`stale_nodes`]), removed once the joins are done.
    pub stale: Vec<StaleNode>,
    /// Hosts in the swarm as workers that the plan makes managers, with
    /// their node IDs: they joined while fewer hosts were ready (droplets
    /// enroll one by one; a scale from two hosts to three), so fewer
    /// managers were wanted then. Promoted one at a time, after the joins.
    pub promotions: Vec<(Host, String)>,
}

/// A node the swarm lists that is no host's current node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleNode {
    pub id: String,
    /// Empty for a join that never finished.
    pub hostname: String,
}

/// A round's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No host is ready: only say who is down.
    NothingReady {
        down: Vec<String>,
    },
    Converge(Plan),
}

/// How many managers: configured, else 3 from 3 hosts up (Raft needs 3 to
/// survive a loss), else 1.
pub fn manager_count(config: &SwarmConfig, hosts: usize) -> usize {
    config
        .managers
        .unwrap_or(if hosts >= 3 { 3 } else { 1 })
        .min(hosts)
        .max(1)
}

/// Ready hosts with a private address in placement order (names, numbers
/// compared as numbers), the first `manager_count` of them managers: the
/// same order the database places its servers in, so the highest-numbered
/// hosts, the ones a scale-down removes, are workers (`workerbee-10` is not
/// a manager before `workerbee-2`).
pub fn members(nodes: &[NodeObservation], config: &SwarmConfig) -> Vec<Host> {
    let mut hosts: Vec<(String, Ipv4Addr)> = nodes
        .iter()
        .filter(|n| n.ready)
        .filter_map(|n| Some((n.name.clone(), n.private_ip?)))
        .collect();
    hosts.sort_by(|a, b| placement_order(&a.0, &b.0));
    let managers = manager_count(config, hosts.len());
    hosts
        .into_iter()
        .enumerate()
        .map(|(i, (name, ip))| Host {
            name,
            ip,
            manager: i < managers,
        })
        .collect()
}

/// The decision (see the module docs). `views` holds the Swarm view of each
/// host whose engine answered.
pub fn decide(
    config: &SwarmConfig,
    nodes: &[NodeObservation],
    views: &HashMap<String, SwarmView>,
) -> Decision {
    let hosts = members(nodes, config);
    let down: Vec<String> = nodes
        .iter()
        .filter(|n| !n.ready)
        .map(|n| n.name.clone())
        .collect();
    // `members` makes at least one manager of a non-empty list.
    let Some(first) = hosts.iter().find(|h| h.manager).cloned() else {
        return Decision::NothingReady { down };
    };
    let active = |v: &SwarmView| v.state == SwarmState::Active;
    let swarm = match views.get(&first.name) {
        Some(v) if active(v) && v.manager => SwarmStep::Adopt,
        _ => SwarmStep::Init,
    };
    let remote = SocketAddr::new(first.ip.into(), SWARM_MANAGER_PORT);
    let joins: Vec<Host> = hosts
        .iter()
        .filter(|h| h.name != first.name)
        .filter(|h| {
            views
                .get(&h.name)
                .is_some_and(|v| !(active(v) && v.knows_manager(&remote)))
        })
        .cloned()
        .collect();
    let promotions = hosts
        .iter()
        .filter(|h| h.manager && h.name != first.name)
        .filter_map(|h| {
            let v = views.get(&h.name)?;
            (active(v) && v.knows_manager(&remote) && !v.manager && !v.node_id.is_empty())
                .then(|| (h.clone(), v.node_id.clone()))
        })
        .collect();
    let stale = match (&swarm, views.get(&first.name)) {
        (SwarmStep::Adopt, Some(manager)) => stale_nodes(manager, views),
        _ => Vec::new(),
    };
    Decision::Converge(Plan {
        pre_swarm_checks: !views.values().any(active),
        hosts,
        down,
        first,
        swarm,
        joins,
        stale,
        promotions,
    })
}

/// Entries of the manager's node list that are not ready and are no host's
/// current node: a join cut short (a coordinator killed while a host was
/// joining leaves an entry with no hostname; the host joins again under a
/// new ID), or an earlier incarnation of a host now active under another
/// ID. Each would stay `down` in `docker node ls` forever. A node whose
/// host is not observed (down, engine not answering) is never stale: that
/// host may come back as it was.
pub fn stale_nodes(manager: &SwarmView, views: &HashMap<String, SwarmView>) -> Vec<StaleNode> {
    let current = |host: &str| {
        views
            .get(host)
            .filter(|v| v.state == SwarmState::Active && !v.node_id.is_empty())
            .map(|v| v.node_id.as_str())
    };
    let is_current = |id: &str| views.values().any(|v| v.node_id == id);
    manager
        .nodes
        .iter()
        .filter(|n| n.status != "ready" && n.id != manager.node_id && !is_current(&n.id))
        .filter(|n| n.hostname.is_empty() || current(&n.hostname).is_some_and(|id| id != n.id))
        .map(|n| StaleNode {
            id: n.id.clone(),
            hostname: n.hostname.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_api::swarm::ManagerPeer;
    use std::time::Duration;

    pub fn cfg(managers: Option<usize>) -> SwarmConfig {
        SwarmConfig {
            managers,
            overlay: "apiary".into(),
            encrypted: false,
            mtu: None,
            checks_interval: Duration::from_secs(10),
            labels: Default::default(),
            default_addr_pool: vec![],
            database: None,
        }
    }

    fn node(name: &str, last: u8, ready: bool) -> NodeObservation {
        NodeObservation {
            name: name.into(),
            ready,
            private_ip: Some(Ipv4Addr::new(10, 231, 0, last)),
            ip_vs: Some(false),
        }
    }

    fn view(state: SwarmState, manager: bool, knows: Option<&str>) -> SwarmView {
        SwarmView {
            node_id: String::new(),
            state,
            manager,
            node_addr: String::new(),
            cluster_id: None,
            managers: knows
                .map(|a| {
                    vec![ManagerPeer {
                        node_id: "m".into(),
                        addr: a.into(),
                    }]
                })
                .unwrap_or_default(),
            nodes: vec![],
            error: None,
        }
    }

    #[test]
    fn managers_are_the_first_hosts_with_numbers_compared_as_numbers() {
        let nodes: Vec<NodeObservation> = [
            "workerbee-10",
            "workerbee-2",
            "queenbee",
            "workerbee-1",
            "workerbee-9",
        ]
        .iter()
        .enumerate()
        .map(|(i, n)| node(n, 10 + i as u8, true))
        .collect();
        let roles: Vec<(String, bool)> = members(&nodes, &cfg(None))
            .into_iter()
            .map(|h| (h.name, h.manager))
            .collect();
        let expect = [
            ("queenbee", true),
            ("workerbee-1", true),
            ("workerbee-2", true),
            ("workerbee-9", false),
            ("workerbee-10", false),
        ]
        .map(|(n, m)| (n.to_string(), m));
        assert_eq!(roles, expect);
    }

    #[test]
    fn one_manager_below_three_hosts_three_from_three_up_unless_configured() {
        assert_eq!(manager_count(&cfg(None), 1), 1);
        assert_eq!(manager_count(&cfg(None), 2), 1);
        assert_eq!(manager_count(&cfg(None), 4), 3);
        assert_eq!(manager_count(&cfg(Some(1)), 4), 1);
        assert_eq!(manager_count(&cfg(Some(5)), 4), 4);
    }

    #[test]
    fn a_new_cluster_is_checked_then_initialised_and_everyone_joins_managers_first() {
        let nodes = [
            node("h4", 14, true),
            node("h1", 11, true),
            node("h2", 12, true),
            node("h3", 13, true),
        ];
        let views: HashMap<String, SwarmView> = ["h1", "h2", "h3", "h4"]
            .iter()
            .map(|n| (n.to_string(), view(SwarmState::Inactive, false, None)))
            .collect();
        let Decision::Converge(plan) = decide(&cfg(None), &nodes, &views) else {
            panic!("hosts are ready");
        };
        assert!(plan.pre_swarm_checks);
        assert_eq!(plan.swarm, SwarmStep::Init);
        assert_eq!(plan.first.name, "h1");
        let joins: Vec<(&str, bool)> = plan
            .joins
            .iter()
            .map(|h| (h.name.as_str(), h.manager))
            .collect();
        assert_eq!(joins, [("h2", true), ("h3", true), ("h4", false)]);
    }

    /// A host that joined as a worker while fewer hosts were ready is
    /// promoted once the plan makes it a manager; a worker the plan keeps a
    /// worker, and a manager, are left alone.
    #[test]
    fn workers_the_plan_makes_managers_are_promoted() {
        let leader = "10.231.0.11:2377";
        let in_swarm = |id: &str, manager: bool| SwarmView {
            node_id: id.into(),
            ..view(SwarmState::Active, manager, Some(leader))
        };
        let nodes = [
            node("h1", 11, true),
            node("h2", 12, true),
            node("h3", 13, true),
            node("h4", 14, true),
        ];
        let views = HashMap::from([
            ("h1".to_string(), in_swarm("n1", true)),
            ("h2".to_string(), in_swarm("n2", false)),
            ("h3".to_string(), in_swarm("n3", true)),
            ("h4".to_string(), in_swarm("n4", false)),
        ]);
        let Decision::Converge(plan) = decide(&cfg(None), &nodes, &views) else {
            panic!("hosts are ready");
        };
        let promoted: Vec<(&str, &str)> = plan
            .promotions
            .iter()
            .map(|(h, id)| (h.name.as_str(), id.as_str()))
            .collect();
        assert_eq!(promoted, [("h2", "n2")]);
        assert!(plan.joins.is_empty());
    }

    /// A join cut short (no hostname) and a host's earlier incarnation are
    /// stale; a down node whose host is not observed, the manager itself and
    /// every host's current node are not.
    #[test]
    fn entries_no_host_is_are_stale_and_unobserved_hosts_keep_theirs() {
        use apiary_api::swarm::NodeView;
        let listed = |id: &str, hostname: &str, status: &str| NodeView {
            id: id.into(),
            hostname: hostname.into(),
            role: "worker".into(),
            availability: "active".into(),
            status: status.into(),
            addr: String::new(),
            leader: false,
            reachability: None,
            labels: Default::default(),
        };
        let active = |id: &str, manager: bool| SwarmView {
            node_id: id.into(),
            ..view(SwarmState::Active, manager, Some("10.231.0.11:2377"))
        };
        let mut manager = active("m1", true);
        manager.nodes = vec![
            listed("m1", "h1", "ready"),
            listed("n2", "h2", "ready"),
            listed("ghost", "", "unknown"),
            listed("old3", "h3", "down"),
            listed("n3", "h3", "ready"),
            // h4's engine did not answer this round: its node may come back.
            listed("n4", "h4", "down"),
            // h2's current node, down for a moment: never stale.
            listed("n2b", "h2", "down"),
        ];
        let views = HashMap::from([
            ("h1".to_string(), manager.clone()),
            ("h2".to_string(), active("n2b", false)),
            ("h3".to_string(), active("n3", false)),
        ]);
        let stale: Vec<(String, String)> = stale_nodes(&manager, &views)
            .into_iter()
            .map(|n| (n.id, n.hostname))
            .collect();
        assert_eq!(
            stale,
            [
                ("ghost".to_string(), String::new()),
                ("old3".to_string(), "h3".to_string()),
            ]
        );
        // Through decide: only when the swarm is adopted.
        let nodes = [
            node("h1", 11, true),
            node("h2", 12, true),
            node("h3", 13, true),
        ];
        let Decision::Converge(plan) = decide(&cfg(None), &nodes, &views) else {
            panic!("hosts are ready");
        };
        assert_eq!(plan.stale.len(), 2, "{:?}", plan.stale);
    }

    #[test]
    fn a_formed_swarm_is_adopted_and_only_strangers_join() {
        let nodes = [
            node("h1", 11, true),
            node("h2", 12, true),
            node("h3", 13, false),
        ];
        let leader = "10.231.0.11:2377";
        let views = HashMap::from([
            (
                "h1".to_string(),
                view(SwarmState::Active, true, Some(leader)),
            ),
            (
                "h2".to_string(),
                view(SwarmState::Active, false, Some(leader)),
            ),
        ]);
        let Decision::Converge(plan) = decide(&cfg(None), &nodes, &views) else {
            panic!("hosts are ready");
        };
        assert!(!plan.pre_swarm_checks, "Swarm holds the ports now");
        assert_eq!(plan.swarm, SwarmStep::Adopt);
        assert!(plan.joins.is_empty(), "{:?}", plan.joins);
        assert_eq!(plan.down, ["h3"]);
        // A host in another swarm (it does not know our manager) joins ours.
        let views = HashMap::from([
            (
                "h1".to_string(),
                view(SwarmState::Active, true, Some(leader)),
            ),
            (
                "h2".to_string(),
                view(SwarmState::Active, true, Some("10.9.9.9:2377")),
            ),
        ]);
        let Decision::Converge(plan) = decide(&cfg(None), &nodes, &views) else {
            panic!("hosts are ready");
        };
        assert_eq!(plan.joins.len(), 1);
    }

    #[test]
    fn a_host_whose_engine_did_not_answer_is_left_alone() {
        let nodes = [node("h1", 11, true), node("h2", 12, true)];
        let views = HashMap::from([("h1".to_string(), view(SwarmState::Inactive, false, None))]);
        let Decision::Converge(plan) = decide(&cfg(None), &nodes, &views) else {
            panic!("hosts are ready");
        };
        assert!(plan.joins.is_empty());
    }

    #[test]
    fn nothing_ready_only_says_who_is_down() {
        let nodes = [node("h1", 11, false)];
        assert_eq!(
            decide(&cfg(None), &nodes, &HashMap::new()),
            Decision::NothingReady {
                down: vec!["h1".into()]
            }
        );
        // A ready host without a private address takes no part either.
        let mut n = node("h2", 12, true);
        n.private_ip = None;
        assert!(matches!(
            decide(&cfg(None), &[n], &HashMap::new()),
            Decision::NothingReady { .. }
        ));
    }
}
